-- Sliding window counter (Cloudflare's): the units of the current fixed window plus those of
-- the previous one, weighted by the share of the previous window that the sliding window
-- ending now still covers (which assumes they were spread evenly over it). Windows are aligned
-- as in fixed_window.lua.
--
-- The bucket is a hash {i = window index, c = units in window i, p = units in window i - 1}
-- that expires when window i + 1 ends, when nothing of it can count any more.
--
-- Arguments: w = window in milliseconds, capacity, cost (integers, as strings).
-- Observes: current, previous, e (whole milliseconds since the current window began).
-- Allows when previous x (w - e) + (current + cost) x w <= capacity x w: integer arithmetic,
-- exact since (capacity + 1) x w < 2^53 (checked when the limit is built).
-- src/algorithm/window.rs does the same.
local function sliding_window(_, key, now, w, capacity, cost)
  local now_ms = math.floor(now / 1000)
  local index = math.floor(now_ms / w)
  local e = now_ms - index * w
  local state = redis.call('HMGET', key, 'i', 'c', 'p')
  local current, previous = 0, 0
  if state[1] then
    local i = state[1] + 0
    if i >= index then
      current, previous = state[2] + 0, (state[3] or 0) + 0
      if i > index and not read_only then
        -- A later window than now's: the clock stepped back. What it counted counts in this
        -- window, which ends first.
        redis.call('HSET', key, 'i', string.format('%d', index))
        redis.call('PEXPIREAT', key, string.format('%d', (index + 2) * w))
      end
    elseif i == index - 1 then
      previous = state[2] + 0
    end
  end
  return previous * (w - e) + (current + cost) * w <= capacity * w, current, previous, e
end

local function sliding_window_take(_, key, now, w, _, cost, current, previous, e)
  if current > 0 then
    redis.call('HINCRBY', key, 'c', cost)
    return
  end
  local format = string.format
  local start = math.floor(now / 1000) - e
  redis.call('HSET', key, 'i', format('%d', start / w), 'c', cost, 'p', format('%d', previous))
  redis.call('PEXPIREAT', key, format('%d', start + 2 * w))
end

local observe, take = sliding_window, sliding_window_take
