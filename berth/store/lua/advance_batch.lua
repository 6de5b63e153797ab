-- Record how far a scan of a batch's jobs got: every job before `scanned` is terminal and
-- counted once. Compare-and-set on `scanned`, so replicas scanning at once never count a
-- job twice; the loser's scan is simply dropped.
-- KEYS: batch key
-- ARGV: scanned as read, scanned now, +succeeded, +failed, +expired,
--       succeeded and failed seen past the scan position (they replace the last figures)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local current = tonumber(redis.call('HGET', KEYS[1], 'scanned') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'scanned', ARGV[2], 'ahead_completed', ARGV[6], 'ahead_failed', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'done_completed', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'done_failed', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'done_expired', ARGV[5])
return 1
