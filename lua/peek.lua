-- tollgate: reads every limit's bucket at the Redis clock and writes nothing (Limiter::peek).
--
-- Sent after `#!lua flags=no-writes`, `local read_only = true` (which keeps the algorithms'
-- observe functions from writing back a bucket the clock stepped back from), the four
-- algorithms and mixed.lua. KEYS and ARGV as in decide.lua, with the cost to peek for. The
-- reply is what decide.lua would observe of every limit, {observations of limit 1, of limit
-- 2, ...}, from which src/algorithm makes each limit's decision (Limit::peek).
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local reply, at = {}, 0
for i = 1, #KEYS do
  local a = 4 * i - 3
  local seen = {observe(ARGV[a], KEYS[i], now, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])}
  -- Past the verdict: the observations the algorithm makes.
  for j = 2, #seen do
    at = at + 1
    reply[at] = seen[j]
  end
end
return reply
