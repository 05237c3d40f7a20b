-- tollgate: frees the slots a request held (Limiter::release, and the end of a response).
--
-- KEYS[i]   the bucket of concurrency limit i (all in one hash slot)
-- ARGV[i]   the name of the slot the request holds in it
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[i])
end
return 1
