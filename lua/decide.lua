-- tollgate: one call decides a request against all its limits, all or nothing.
--
-- Sent after an algorithm's script (or, for limits of different algorithms, all four and
-- mixed.lua), which names its two functions `observe` and `take`:
--   observe(code, key, now, a, b, c) -> allows, o1 [, o2 [, o3 [, o4]]]
--   take(code, key, now, a, b, c, o1, o2, o3, o4)
-- The first reads one bucket at `now`; the second takes the request's units from it, given
-- what the first observed (so it need not read again).
--
-- KEYS[i]                   the bucket of limit i (all in one hash slot)
-- ARGV[4i-3]                limit i's algorithm: t, f, s or l
-- ARGV[4i-2], ARGV[4i-1]    its time unit (see each algorithm) and capacity
-- ARGV[4i]                  the request's cost
--
-- The request passes only if every limit allows it, and then every limit takes it; otherwise
-- nothing is written. The reply carries what was observed of every limit before the request,
-- which src/algorithm turns into the decision:
--   {1 if it passed else 0, the observations of limit 1, of limit 2, ...}
-- except for one limit of the two cheapest algorithms, whose reply is one integer (an array
-- costs Redis more to send than the whole token-bucket decision): v + 1 when allowed, -1 - v
-- when not, with v = full_after (t) or current x w + e (f; below 2^53, checked when the limit
-- is built).
--
-- ARGV[4n+1]                (optional) present for a stamped take (Store::take): the reply is
--                           then {the reply above, the Redis time in microseconds}, the time
--                           a put-back needs to find what the take counted.
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local n = #KEYS
local stamped = ARGV[4 * n + 1]
if n == 1 then
  local code, key, a, b, c = ARGV[1], KEYS[1], ARGV[2], ARGV[3], ARGV[4]
  local ok, o1, o2, o3, o4 = observe(code, key, now, a, b, c)
  if ok then
    take(code, key, now, a, b, c, o1, o2, o3, o4)
  end
  if code ~= 't' and code ~= 'f' then
    if stamped then
      return {{ok and 1 or 0, o1, o2, o3, o4}, now}
    end
    return {ok and 1 or 0, o1, o2, o3, o4}
  end
  local v = o1
  if code == 'f' then
    v = o1 * a + o2
  end
  if ok then
    v = v + 1
  else
    v = -1 - v
  end
  if stamped then
    return {v, now}
  end
  return v
end
local reply, seen, all, at = {0}, {}, true, 1
for i = 1, n do
  local a = 4 * i - 3
  local ok, o1, o2, o3, o4 = observe(ARGV[a], KEYS[i], now, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
  all = all and ok
  seen[a], seen[a + 1], seen[a + 2], seen[a + 3] = o1, o2, o3, o4
  -- Only the observations the algorithm makes (the others are nil).
  at = at + 1
  reply[at] = o1
  if o2 then
    at = at + 1
    reply[at] = o2
    if o3 then
      at = at + 1
      reply[at] = o3
      if o4 then
        at = at + 1
        reply[at] = o4
      end
    end
  end
end
if not all then
  if stamped then
    return {reply, now}
  end
  return reply
end
for i = 1, n do
  local a = 4 * i - 3
  take(ARGV[a], KEYS[i], now, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    seen[a], seen[a + 1], seen[a + 2], seen[a + 3])
end
reply[1] = 1
if stamped then
  return {reply, now}
end
return reply
