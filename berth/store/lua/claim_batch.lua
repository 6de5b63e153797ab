-- A finaliser takes a batch whose jobs are all terminal. One replica holds it at a time; a
-- holder that has not committed within `stale` seconds is presumed dead and replaced.
-- An in-progress batch shows as finalizing meanwhile.
-- KEYS: batch key   ARGV: token, now, stale seconds
local s = redis.call('HMGET', KEYS[1], 'status', 'lock', 'lock_at')
if not s[1] then return 0 end
if s[1] == 'completed' or s[1] == 'failed' or s[1] == 'expired' or s[1] == 'cancelled' then
  return 0
end
if s[2] and tonumber(ARGV[2]) - tonumber(s[3]) < tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'lock', ARGV[1], 'lock_at', ARGV[2])
if s[1] == 'in_progress' then
  redis.call('HSET', KEYS[1], 'status', 'finalizing', 'finalizing_at', ARGV[2])
end
return 1
