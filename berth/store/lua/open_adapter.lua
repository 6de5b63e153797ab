-- Open a LoRA adapter on a worker, for every scheduler replica at once.
-- KEYS[1]: the worker's hash of open adapters (adapter -> when its quantum starts)
-- ARGV[1]: adapter  ARGV[2]: its quantum start
-- ARGV[3]: the adapter it replaces ('' for none)  ARGV[4]: that one's start as read
-- ARGV[5]: the worker's max_loras (0: no limit)
-- Returns 1 when the adapter is open, 0 when the table changed since it was read
-- (another replica took the slot): the caller reads it again and retries.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 1
end
local open = redis.call('HLEN', KEYS[1])
if ARGV[3] ~= '' then
  local start = redis.call('HGET', KEYS[1], ARGV[3])
  if not start or math.abs(tonumber(start) - tonumber(ARGV[4])) > 0.001 then
    return 0
  end
  open = open - 1
end
local limit = tonumber(ARGV[5])
if limit > 0 and open >= limit then
  return 0
end
if ARGV[3] ~= '' then
  redis.call('HDEL', KEYS[1], ARGV[3])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
