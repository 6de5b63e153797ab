-- The scheduler sent a job's attempt to a worker: remember which, so its death is noticed.
-- KEYS: job key, in-flight set   ARGV: job id, attempt, worker id, now, worker incarnation
local s = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not s[1] or tonumber(s[2]) ~= tonumber(ARGV[2]) then return 0 end
if s[1] == 'queued' then
  redis.call('HSET', KEYS[1], 'worker', ARGV[3], 'incarnation', ARGV[5] or '')
elseif s[1] ~= 'running' then
  return 0
end
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[1])
return 1
