-- Requests left a queue (dispatched, or ended there): drop their leases and counts.
-- KEYS[1]: the queue's leases (zset "tenant\nrequest id" -> lease expiry)
-- KEYS[2]: the queue's counts (hash tenant -> queued requests)
-- ARGV: the leases' members, "tenant\nrequest id" each
-- Returns how many leases were held (a lease already gone, expired or released, counts 0).
local released = 0
for _, member in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    released = released + 1
    local owner = string.match(member, '^(.-)\n')
    if redis.call('HINCRBY', KEYS[2], owner, -1) <= 0 then
      redis.call('HDEL', KEYS[2], owner)
    end
  end
end
return released
