-- A worker starts a job's attempt: only a queued job whose attempt matches is claimed,
-- so a duplicate delivery of the same attempt never runs twice.
-- KEYS: job key, in-flight set   ARGV: job id, attempt, worker id, now, worker incarnation
local s = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not s[1] or s[1] ~= 'queued' or tonumber(s[2]) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[3], 'started_at', ARGV[4],
  'incarnation', ARGV[5] or '')
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
