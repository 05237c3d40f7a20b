-- tollgate: a policy of one fixed-window limit on its own: fixed_window.lua and decide.lua's
-- one-limit path written as one straight script (no closures, no calls, three arguments).
--
-- KEYS[1]   the bucket
-- ARGV[1]   the window in milliseconds
-- ARGV[2]   the capacity
-- ARGV[3]   the request's cost
--
-- The same arithmetic, clock-step guard, writes and reply as decide.lua for one fixed-window
-- limit: v + 1 when allowed, -1 - v when not, with v = current x w + e.
local time = redis.call('TIME')
local now_ms = math.floor((time[1] * 1000000 + time[2]) / 1000)
local format = string.format
local key, w, cost = KEYS[1], ARGV[1] + 0, ARGV[3]
local index = math.floor(now_ms / w)
local e = now_ms - index * w
local state = redis.call('HMGET', key, 'i', 'c')
local current, at = 0, state[1] and state[1] + 0
if at and at >= index then
  current = state[2] + 0
  if at > index then
    -- A later window than now's: the clock stepped back. What it counted counts in this
    -- window, which ends first.
    redis.call('HSET', key, 'i', format('%d', index))
    redis.call('PEXPIREAT', key, format('%d', (index + 1) * w))
  end
end
local v = current * w + e
if current + cost > ARGV[2] + 0 then
  return -1 - v
end
if current > 0 then
  redis.call('HINCRBY', key, 'c', cost)
else
  redis.call('HSET', key, 'i', format('%d', index), 'c', cost)
  redis.call('PEXPIREAT', key, format('%d', (index + 1) * w))
end
return v + 1
