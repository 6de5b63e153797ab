-- Reserve a tenant's storage for one file, unless its file count or bytes would pass
-- their limits. Files that expired stop counting.
-- KEYS[1]: the tenant's stored files (zset file id -> expiry time)
-- KEYS[2]: their sizes (hash file id -> bytes)
-- ARGV[1]: now  ARGV[2]: file id  ARGV[3]: its bytes  ARGV[4]: its expiry time
-- ARGV[5]: most files  ARGV[6]: most bytes (each 0: unlimited)
-- Returns {allowed (1/0), files, bytes, earliest expiry (0: none)}: counts after the
-- reservation, or those that refused it.
local now = tonumber(ARGV[1])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', KEYS[1], gone)
  redis.call('HDEL', KEYS[2], gone)
end
local files = redis.call('ZCARD', KEYS[1])
local bytes = 0
for _, size in ipairs(redis.call('HVALS', KEYS[2])) do
  bytes = bytes + tonumber(size)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local earliest = first[2] and math.ceil(tonumber(first[2])) or 0
local size = tonumber(ARGV[3])
local most_files, most_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
if (most_files > 0 and files + 1 > most_files) or (most_bytes > 0 and bytes + size > most_bytes) then
  return {0, files, bytes, earliest}
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], size)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last[2])))
redis.call('EXPIREAT', KEYS[2], math.ceil(tonumber(last[2])))
return {1, files + 1, bytes + size, earliest}
