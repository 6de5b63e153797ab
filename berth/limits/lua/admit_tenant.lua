-- Admit one request against its tenant's limits, or say which limit refuses it; all
-- counted at once, so several API processes share the limits exactly. Requests per minute
-- are counted earlier, by count_request.lua, as soon as the tenant is known; here they are
-- only read, for the x-ratelimit-* headers.
-- KEYS[1], KEYS[2]: the tenant's request counts, previous and current minute
-- KEYS[3], KEYS[4]: the tenant's token counts, previous and current minute
-- KEYS[5]: the tenant's running requests (zset request id -> lease expiry)
-- KEYS[6]: the queue's leases (zset "tenant\nrequest id" -> lease expiry)
-- KEYS[7]: the queue's counts (hash tenant -> queued requests)
-- KEYS[8]: the ingress stream itself
-- ARGV[1]: now  ARGV[2]: how far into the current minute (0..1)  ARGV[3]: tenant
-- ARGV[4]: request id  ARGV[5]: the request's token cost
-- ARGV[6]: requests per minute (unused here)  ARGV[7]: tokens per minute  ARGV[8]: concurrent requests
-- ARGV[9]: queued requests (each 0: unlimited)  ARGV[10]: the queue's bound
-- ARGV[11]: the fair share's floor (at most the bound)  ARGV[12]: running lease expiry (0: not held)
-- ARGV[13]: queued lease expiry (0: not queued here)  ARGV[14]: expiry of the count keys (s)
-- ARGV[15]: the stream length at which every tenant is refused
-- Returns {allowed (1/0), refused limit ('' if allowed), requests previous, requests
-- current, tokens previous, tokens current, running, queued, queue share}; counts are
-- those after admission, or those that refused it.
local now = tonumber(ARGV[1])
local elapsed = tonumber(ARGV[2])
local tenant = ARGV[3]
local cost = tonumber(ARGV[5])
local tpm = tonumber(ARGV[7])
local max_running, max_queued = tonumber(ARGV[8]), tonumber(ARGV[9])
local bound, floor = tonumber(ARGV[10]), tonumber(ARGV[11])
local running_until, queued_until = tonumber(ARGV[12]), tonumber(ARGV[13])

local rp = tonumber(redis.call('GET', KEYS[1]) or '0')
local rc = tonumber(redis.call('GET', KEYS[2]) or '0')
local tp = tonumber(redis.call('GET', KEYS[3]) or '0')
local tc = tonumber(redis.call('GET', KEYS[4]) or '0')

-- leases past their expiry belong to requests whose API process died: drop them
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
local running = redis.call('ZCARD', KEYS[5])

local queued, share = 0, 0
if queued_until > 0 then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 256)
  for _, member in ipairs(expired) do
    redis.call('ZREM', KEYS[6], member)
    local owner = string.match(member, '^(.-)\n')
    if owner and redis.call('HINCRBY', KEYS[7], owner, -1) <= 0 then
      redis.call('HDEL', KEYS[7], owner)
    end
  end
  queued = tonumber(redis.call('HGET', KEYS[7], tenant) or '0')
  local active = redis.call('HLEN', KEYS[7])
  if queued == 0 then
    active = active + 1
  end
  share = math.max(math.floor(bound / active), math.min(floor, bound))
  if max_queued > 0 and max_queued < share then
    share = max_queued
  end
end

local function refuse(reason)
  return {0, reason, rp, rc, tp, tc, running, queued, share}
end

if tpm > 0 and math.floor(tp * (1 - elapsed)) + tc + cost > tpm then
  return refuse('tokens')
end
if running_until > 0 and max_running > 0 and running >= max_running then
  return refuse('concurrent')
end
if queued_until > 0 then
  if queued >= share then
    -- alone in the queue, the tenant's share is the whole queue: the queue is full
    return refuse(share >= bound and 'queue_full' or 'queued')
  end
  if redis.call('XLEN', KEYS[8]) >= tonumber(ARGV[15]) then
    return refuse('queue_full')
  end
end

local ttl = tonumber(ARGV[14])
tc = redis.call('INCRBY', KEYS[4], cost)
redis.call('EXPIRE', KEYS[4], ttl)
if running_until > 0 then
  redis.call('ZADD', KEYS[5], running_until, ARGV[4])
  redis.call('EXPIREAT', KEYS[5], math.ceil(running_until))
  running = running + 1
end
if queued_until > 0 then
  if redis.call('ZADD', KEYS[6], queued_until, tenant .. '\n' .. ARGV[4]) == 1 then
    queued = redis.call('HINCRBY', KEYS[7], tenant, 1)
  end
  redis.call('EXPIREAT', KEYS[6], math.ceil(queued_until))
  redis.call('EXPIREAT', KEYS[7], math.ceil(queued_until))
end
return {1, '', rp, rc, tp, tc, running, queued, share}
