-- tollgate: a decision that also lends (a leased policy's hot key): takes the request's cost
-- from every limit, all or nothing, as decide.lua does, and when it passes takes up to `want`
-- more units from every limit for the calling instance to spend in process. The lent units
-- are taken here and now, so every other instance sees them as spent.
--
-- Sent after the algorithms' scripts and mixed.lua (token bucket, fixed and sliding window:
-- the algorithms a lease may hold).
--
-- KEYS[i]                   the bucket of limit i (all in one hash slot)
-- ARGV[4i-3]                limit i's algorithm: t, f or s
-- ARGV[4i-2], ARGV[4i-1]    t: one unit's worth and the burst, in microseconds; f, s: the
--                           window in milliseconds and the capacity
-- ARGV[4i]                  unused
-- ARGV[4n+1]                the request's cost
-- ARGV[4n+2]                want: the most units to lend
--
-- The lent units are the fewest of, over every limit: `want`, and half of what the limit
-- holds once the request's cost is taken (rounded down), so a lease never empties a bucket
-- and a nearly empty one lends nothing (a plain decision). Reply:
--   {1 if the request passed else 0, the units lent, the Redis time in microseconds,
--    the observations of limit 1 (before the request), of limit 2, ...}
-- Nothing is written when the request is refused.
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local n = #KEYS
local cost, want = ARGV[4 * n + 1] + 0, ARGV[4 * n + 2] + 0
local floor = math.floor
local reply, seen, all, at = {0, 0, now}, {}, true, 3
for i = 1, n do
  local a = 4 * i - 3
  local code, x, y = ARGV[a], ARGV[a + 1] + 0, ARGV[a + 2] + 0
  local ok, o1, o2, o3
  local free
  if code == 't' then
    -- o1: the microseconds until full; what is free is the burst not yet spent, in units.
    ok, o1 = observe(code, KEYS[i], now, x * cost, y, cost)
    free = floor((y - o1) / x) - cost
  elseif code == 'f' then
    -- o1: this window's count.
    ok, o1, o2 = observe(code, KEYS[i], now, x, y, cost)
    free = y - o1 - cost
  else
    -- o1, o2, o3: this window's count, the previous one's, the milliseconds into this one.
    ok, o1, o2, o3 = observe(code, KEYS[i], now, x, y, cost)
    free = floor((y * x - o2 * (x - o3)) / x) - o1 - cost
  end
  all = all and ok
  want = math.min(want, floor(free / 2))
  seen[i] = {o1, o2, o3}
  at = at + 1
  reply[at] = o1
  if o2 then
    at = at + 1
    reply[at] = o2
    if o3 then
      at = at + 1
      reply[at] = o3
    end
  end
end
if not all then
  return reply
end
if want < 0 then
  want = 0
end
local units = cost + want
for i = 1, n do
  local a = 4 * i - 3
  local code, x, y = ARGV[a], ARGV[a + 1] + 0, ARGV[a + 2] + 0
  local s = seen[i]
  if code == 't' then
    take(code, KEYS[i], now, x * units, y, units, s[1])
  else
    take(code, KEYS[i], now, x, y, units, s[1], s[2], s[3])
  end
end
reply[1], reply[2] = 1, want
return reply
