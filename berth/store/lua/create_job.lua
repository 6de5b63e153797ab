-- Create a job and queue it in one step, unless its idempotency key already names one.
-- KEYS: idempotency key ('' when none), job key, tenant index, ingress stream
-- ARGV: job id, created_at, ttl seconds, the ingress entry's field (store/queue.py owns the
--       entry's encoding), queued payload, then field/value pairs of the record
if KEYS[1] ~= '' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return existing end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[4], '*', ARGV[4], ARGV[5])
return ARGV[1]
