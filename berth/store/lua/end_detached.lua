-- The resume grace of a stream whose client left is over: end it only if no client resumed
-- it since (a resume deletes the marker; a later departure sets a new token).
-- KEYS: detached key   ARGV: the token set when the client left
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
