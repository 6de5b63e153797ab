-- Count requests against their tenant's requests per minute, before anything else is done
-- for them (their bodies are not even read yet), or refuse them: a tenant flooding requests
-- that would be refused later (400s) pays for them in its own rate, not in everyone's CPU.
-- One call counts a burst: the requests of one tenant that arrived at an API process while
-- its previous call was out (berth/limits/counting.py).
-- KEYS[1], KEYS[2]: the tenant's request counts, previous and current minute
-- KEYS[3], KEYS[4]: its token counts, previous and current minute (only read, for headers)
-- ARGV[1]: how far into the current minute (0..1)  ARGV[2]: requests per minute (0: unlimited)
-- ARGV[3]: expiry of the count keys (s)  ARGV[4]: requests to count (the first ones fit)
-- Returns {admitted (0..ARGV[4]), requests previous, requests current, tokens previous,
-- tokens current}: the counts after counting the admitted ones (a refused request is not
-- counted).
local elapsed = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local asked = tonumber(ARGV[4])
local rp = tonumber(redis.call('GET', KEYS[1]) or '0')
local rc = tonumber(redis.call('GET', KEYS[2]) or '0')
local tp = tonumber(redis.call('GET', KEYS[3]) or '0')
local tc = tonumber(redis.call('GET', KEYS[4]) or '0')
local admitted = asked
if rpm > 0 then
  admitted = math.max(0, math.min(asked, rpm - (math.floor(rp * (1 - elapsed)) + rc)))
end
if admitted == 0 then
  return {0, rp, rc, tp, tc}
end
rc = redis.call('INCRBY', KEYS[2], admitted)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return {admitted, rp, rc, tp, tc}
