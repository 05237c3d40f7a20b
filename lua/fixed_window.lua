-- Fixed window: at most `capacity` units per window. Windows are aligned to the Unix epoch of
-- the Redis clock (window i covers [i x w, (i + 1) x w) milliseconds), so every bucket and every
-- instance shares the same edges.
--
-- The bucket is a hash {i = window index, c = units counted in it} that expires when its window
-- ends. The window is read from the hash, not inferred from the key's expiry, so a script that
-- runs across an edge never counts into the window that just ended.
--
-- Arguments: w = window in milliseconds, capacity, cost (integers, as strings).
-- Observes: current (units counted in this window) and e (whole milliseconds since the window
-- began). Allows when current + cost <= capacity. src/algorithm/window.rs does the same.
local function fixed_window(_, key, now, w, capacity, cost)
  local now_ms = math.floor(now / 1000)
  local index = math.floor(now_ms / w)
  local state = redis.call('HMGET', key, 'i', 'c')
  local current, i = 0, state[1] and state[1] + 0
  if i and i >= index then
    current = state[2] + 0
    if i > index and not read_only then
      -- A later window than now's: the clock stepped back. What it counted counts in this
      -- window, which ends first.
      redis.call('HSET', key, 'i', string.format('%d', index))
      redis.call('PEXPIREAT', key, string.format('%d', (index + 1) * w))
    end
  end
  return current + cost <= capacity + 0, current, now_ms - index * w
end

-- A window that has counted anything has a count of at least 1: current > 0 means the hash
-- holds this window.
local function fixed_window_take(_, key, now, w, _, cost, current, e)
  if current > 0 then
    redis.call('HINCRBY', key, 'c', cost)
    return
  end
  local format = string.format
  local start = math.floor(now / 1000) - e
  redis.call('HSET', key, 'i', format('%d', start / w), 'c', cost)
  redis.call('PEXPIREAT', key, format('%d', start + w))
end

local observe, take = fixed_window, fixed_window_take
