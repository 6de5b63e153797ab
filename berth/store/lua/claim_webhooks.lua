-- Claim the webhook events that are due: each is pushed a lease ahead (by Redis's clock), so
-- no other deliverer takes it while this one tries, and it comes due again if this one dies.
-- KEYS: webhook due set, webhook events hash   ARGV: most to claim, lease seconds
-- returns: the claimed events' entries (an id whose entry is gone is dropped)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  local entry = redis.call('HGET', KEYS[2], id)
  if entry then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    out[#out + 1] = entry
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
