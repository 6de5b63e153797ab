-- A webhook event's attempt failed: it is due again `delay` seconds from now (Redis's clock),
-- unless it left the outbox meanwhile (XX).
-- KEYS: webhook due set   ARGV: event id, delay seconds
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2])
return redis.call('ZADD', KEYS[1], 'XX', due, ARGV[1])
