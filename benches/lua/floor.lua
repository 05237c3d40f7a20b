-- The floor for any Lua limiter, for comparison only: read the clock, read one key, write it
-- with a TTL.
local t = redis.call('TIME')
redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], t[1], 'PX', 60000)
return 1
