-- tollgate: renews the leases of the slots this instance holds in one bucket, while their
-- requests run (RedisStore's renewal, every third of the lease).
--
-- KEYS[1]   the bucket of a concurrency limit
-- ARGV[1]   the lease in microseconds
-- ARGV[2..] the names of the slots held
-- A slot already gone (its lease ran out while this instance was cut off) is not added back:
-- another request may hold its place.
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local lease = ARGV[1] + 0
local format = string.format
local score = format('%d', now + lease)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', score, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], format('%d', (lease + 999) / 1000))
return 1
