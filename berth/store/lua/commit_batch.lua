-- The finaliser holding a batch records its outcome, once: the final status (a batch
-- cancelled meanwhile ends cancelled), its files and errors. The batch leaves the active
-- set and, with its job list, expires `ttl` seconds from now.
-- KEYS: batch key, active set, batch jobs list, webhook outbox: due set, events hash, wake list
-- ARGV: token, status, now, output file id, error file id, errors json, ttl, batch id,
--       webhook event id
local s = redis.call('HMGET', KEYS[1], 'status', 'lock')
if not s[1] or s[2] ~= ARGV[1] then return '' end
local status = ARGV[2]
if s[1] == 'cancelling' then status = 'cancelled' end
redis.call('HSET', KEYS[1], 'status', status, status .. '_at', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'output_file_id', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error_file_id', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'errors', ARGV[6]) end
redis.call('HDEL', KEYS[1], 'lock', 'lock_at')
redis.call('SREM', KEYS[2], ARGV[8])
-- A batch with a webhook: its end event into the outbox in this same step, so no crash
-- between the two loses it (store/webhooks.py reads it back)
local url = redis.call('HGET', KEYS[1], 'webhook')
if url and url ~= '' then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[5], ARGV[9], cjson.encode({id = ARGV[9], type = 'batch.' .. status,
    created_at = ARGV[3], object = ARGV[8], url = url}))
  redis.call('ZADD', KEYS[4], t[1], ARGV[9])
  redis.call('LPUSH', KEYS[6], '1')
  redis.call('LTRIM', KEYS[6], 0, 0)
end
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[7])
return status
