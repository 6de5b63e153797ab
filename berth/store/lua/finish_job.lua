-- End a job's attempt with a terminal status; a stale attempt (requeued meanwhile) is ignored,
-- so a job's result is written once. attempt '' ends any live attempt (cancel, expiry).
-- KEYS: job key, in-flight set, job events stream, webhook outbox: due set, events hash, wake list
-- ARGV: job id, attempt, status, result json, error json, now, ttl, terminal event json, maxlen,
--       webhook event id, webhook event type
local s = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not s[1] then return 0 end
if s[1] ~= 'queued' and s[1] ~= 'running' then return 0 end
if ARGV[2] ~= '' and tonumber(s[2]) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[6])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[8] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'e', ARGV[8])
end
-- A job with a webhook: its end event into the outbox in this same step, so no crash
-- between the two loses it (store/webhooks.py reads it back)
local url = redis.call('HGET', KEYS[1], 'webhook')
if url and url ~= '' then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[5], ARGV[10], cjson.encode({id = ARGV[10], type = ARGV[11],
    created_at = ARGV[6], object = ARGV[1], url = url}))
  redis.call('ZADD', KEYS[4], t[1], ARGV[10])
  redis.call('LPUSH', KEYS[6], '1')
  redis.call('LTRIM', KEYS[6], 0, 0)
end
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[7])
return 1
