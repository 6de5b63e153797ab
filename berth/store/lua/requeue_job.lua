-- The worker running a job's attempt died: queue the next attempt, or fail the job when
-- its attempts are used up. Only the first replica to notice wins.
-- KEYS: job key, in-flight set, ingress stream, job events stream, webhook outbox: due set,
--       events hash, wake list
-- ARGV: job id, attempt, dead worker, max attempts, next payload, now, failure error json,
--       failure event json, requeue event json, maxlen, dead incarnation ('' : any),
--       the ingress entry's field (store/queue.py owns the entry's encoding), webhook event id,
--       the event type of a failed job
-- A job held by another incarnation of the same worker id than the dead one is left alone.
local s = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'worker', 'incarnation')
if not s[1] or (s[1] ~= 'queued' and s[1] ~= 'running') then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if tonumber(s[2]) ~= tonumber(ARGV[2]) or s[3] ~= ARGV[3] then return 0 end
if ARGV[11] and ARGV[11] ~= '' and s[4] and s[4] ~= ARGV[11] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
local next_attempt = tonumber(ARGV[2]) + 1
if next_attempt >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[6], 'error', ARGV[7])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[10], '*', 'e', ARGV[8])
  -- A job with a webhook: its end event into the outbox in this same step, so no crash
  -- between the two loses it (store/webhooks.py reads it back)
  local url = redis.call('HGET', KEYS[1], 'webhook')
  if url and url ~= '' then
    local t = redis.call('TIME')
    redis.call('HSET', KEYS[6], ARGV[13], cjson.encode({id = ARGV[13], type = ARGV[14],
      created_at = ARGV[6], object = ARGV[1], url = url}))
    redis.call('ZADD', KEYS[5], t[1], ARGV[13])
    redis.call('LPUSH', KEYS[7], '1')
    redis.call('LTRIM', KEYS[7], 0, 0)
  end
  return 2
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempt', next_attempt, 'worker', '',
  'incarnation', '')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[10], '*', 'e', ARGV[9])
redis.call('XADD', KEYS[3], '*', ARGV[12], ARGV[5])
return 1
