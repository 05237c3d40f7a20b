-- Sliding window log: every unit taken is an entry of a sorted set, scored by the microsecond
-- it was taken; an entry counts until it is w old. Exact, and never more entries than the
-- capacity: entries that left the window are removed before new ones are added, and new ones
-- are added only when they fit.
--
-- Members are unique even for simultaneous requests: a request's entries are scored
-- base = max(now, newest score + 1), after every entry already there, and named 'base:j' for
-- its j-th unit.
--
-- Arguments: w = window in microseconds, capacity, cost (integers, as strings).
-- Observes: count (entries in the window), then the microseconds until entries leave it: the
-- oldest (only when the bucket is or becomes exhausted, else 0), the newest (0 when empty), and,
-- when denied, the one whose leaving makes room for `cost` units (else 0).
-- src/algorithm/sliding_log.rs does the same.

-- Microseconds until the n-th (from 0) entry of the window leaves it.
local function sliding_log_leaves(key, min, n, w, now)
  return redis.call('ZRANGEBYSCORE', key, min, '+inf', 'WITHSCORES', 'LIMIT', n, 1)[2] + w - now
end

local function sliding_log(_, key, now, w, capacity, cost)
  w, capacity, cost = w + 0, capacity + 0, cost + 0
  local min = string.format('(%d', now - w)
  local count = redis.call('ZCOUNT', key, min, '+inf')
  local newest = 0
  if count > 0 then
    newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2] + w - now
  end
  local oldest = 0
  if count + cost > capacity then
    if count >= capacity then
      oldest = sliding_log_leaves(key, min, 0, w, now)
    end
    local needed = newest
    local k = count + cost - capacity
    if k < count then
      needed = sliding_log_leaves(key, min, k - 1, w, now)
    end
    return false, count, oldest, newest, needed
  end
  if count > 0 and count + cost == capacity then
    oldest = sliding_log_leaves(key, min, 0, w, now)
  end
  return true, count, oldest, newest, 0
end

local function sliding_log_take(_, key, now, w, _, cost, count, _, newest)
  w, cost = w + 0, cost + 0
  local format = string.format
  redis.call('ZREMRANGEBYSCORE', key, '-inf', format('%d', now - w))
  -- The newest entry was taken at now + newest - w; entries that left the window are all
  -- older than now.
  local base = now
  if count > 0 and newest >= w then
    base = now + newest - w + 1
  end
  local score = format('%d', base)
  -- In chunks: Lua cannot unpack more than about 8,000 values into one call, and a take must
  -- never fail once every limit allowed (the other limits may have taken already).
  local j = 1
  while j <= cost do
    local entries, last = {}, math.min(j + 499, cost)
    for k = j, last do
      entries[2 * (k - j) + 1] = score
      entries[2 * (k - j) + 2] = score .. ':' .. k
    end
    redis.call('ZADD', key, unpack(entries))
    j = last + 1
  end
  redis.call('PEXPIRE', key, format('%d', (base + w - now + 999) / 1000))
end

local observe, take = sliding_log, sliding_log_take
