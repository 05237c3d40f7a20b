-- tollgate: a policy of sliding-window limits alone (one or several), all or
-- nothing: sliding_window.lua and decide.lua's several-limit path written as one straight
-- script (no closures, no calls, three arguments per limit instead of four).
--
-- KEYS[i]          the bucket of limit i (all in one hash slot)
-- ARGV[3i-2]       limit i's window in milliseconds
-- ARGV[3i-1]       its capacity
-- ARGV[3i]         the request's cost
--
-- The same arithmetic, clock-step guard, writes and reply as decide.lua for these limits:
-- {1 if it passed else 0, current, previous and e of limit 1, of limit 2, ...}.
local time = redis.call('TIME')
local now_ms = math.floor((time[1] * 1000000 + time[2]) / 1000)
local format = string.format
local n = #KEYS
local reply, all = {0}, true
for i = 1, n do
  local key, w = KEYS[i], ARGV[3 * i - 2] + 0
  local index = math.floor(now_ms / w)
  local e = now_ms - index * w
  local state = redis.call('HMGET', key, 'i', 'c', 'p')
  local current, previous = 0, 0
  if state[1] then
    local at = state[1] + 0
    if at >= index then
      current, previous = state[2] + 0, (state[3] or 0) + 0
      if at > index then
        -- A later window than now's: the clock stepped back. What it counted counts in this
        -- window, which ends first.
        redis.call('HSET', key, 'i', format('%d', index))
        redis.call('PEXPIREAT', key, format('%d', (index + 2) * w))
      end
    elseif at == index - 1 then
      previous = state[2] + 0
    end
  end
  reply[3 * i - 1] = current
  reply[3 * i] = previous
  reply[3 * i + 1] = e
  all = all and previous * (w - e) + (current + ARGV[3 * i]) * w <= ARGV[3 * i - 1] * w
end
if not all then
  return reply
end
for i = 1, n do
  local key, w, cost = KEYS[i], ARGV[3 * i - 2] + 0, ARGV[3 * i]
  if reply[3 * i - 1] > 0 then
    redis.call('HINCRBY', key, 'c', cost)
  else
    local start = now_ms - reply[3 * i + 1]
    redis.call('HSET', key, 'i', format('%d', start / w), 'c', cost, 'p', format('%d', reply[3 * i]))
    redis.call('PEXPIREAT', key, format('%d', start + 2 * w))
  end
end
reply[1] = 1
return reply
