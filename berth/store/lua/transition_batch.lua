-- Move a batch to a new status if its status is one of those allowed, stamping when.
-- Returns the status it had ('' when there is no such batch), moved or not.
-- KEYS: batch key   ARGV: new status, timestamp field, now, allowed statuses...
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
for i = 4, #ARGV do
  if status == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[2], ARGV[3])
    return status
  end
end
return status
