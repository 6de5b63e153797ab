-- The finaliser holding a batch records its outcome, once: the final status (a batch
-- cancelled meanwhile ends cancelled), its files and errors. The batch leaves the active
-- set and, with its job list, expires `ttl` seconds from now.
-- KEYS: batch key, active set, batch jobs list
-- ARGV: token, status, now, output file id, error file id, errors json, ttl, batch id
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
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[7])
return status
