-- Count one request against its tenant's requests per minute, before anything else is done
-- for it (its body is not even read yet), or refuse it: a tenant flooding requests that
-- would be refused later (400s) pays for them in its own rate, not in everyone's CPU.
-- KEYS[1], KEYS[2]: the tenant's request counts, previous and current minute
-- KEYS[3], KEYS[4]: its token counts, previous and current minute (only read, for headers)
-- ARGV[1]: how far into the current minute (0..1)  ARGV[2]: requests per minute (0: unlimited)
-- ARGV[3]: expiry of the count keys (s)
-- Returns {allowed (1/0), requests previous, requests current, tokens previous, tokens
-- current}: the counts after counting this request, or those that refused it (a refused
-- request is not counted).
local elapsed = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local rp = tonumber(redis.call('GET', KEYS[1]) or '0')
local rc = tonumber(redis.call('GET', KEYS[2]) or '0')
local tp = tonumber(redis.call('GET', KEYS[3]) or '0')
local tc = tonumber(redis.call('GET', KEYS[4]) or '0')
if rpm > 0 and math.floor(rp * (1 - elapsed)) + rc + 1 > rpm then
  return {0, rp, rc, tp, tc}
end
rc = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return {1, rp, rc, tp, tc}
