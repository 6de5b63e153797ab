-- The schedulers sent prompts with these prefix blocks to one incarnation of a worker:
-- stamp each block with the server's clock (one clock for every replica, so a reader can
-- read only what is newer than what it has), keep the newest max blocks, renew the TTL.
-- KEYS: the worker's prefix index (keys.prefix_index)
-- ARGV: max blocks, TTL seconds, block hash...
-- returns: how many blocks were stamped
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local args = {}
for i = 3, #ARGV do
  args[#args + 1] = now
  args[#args + 1] = ARGV[i]
end
for i = 1, #args, 7998 do
  redis.call('ZADD', KEYS[1], unpack(args, i, math.min(i + 7997, #args)))
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[1]) + 1))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return #ARGV - 2
