-- tollgate: takes units from every limit's bucket whatever it holds, down to empty at most
-- (Limiter::charge, and Limiter::settle of a cost above what was reserved). One call, so all
-- limits or none.
--
-- Sent after the four algorithms' scripts and mixed.lua; KEYS and ARGV as in decide.lua, with
-- the units to take as the cost.
--
-- Each bucket is observed as a decision would (a bucket a clock step left ahead of now is
-- brought back first), then: t: the full-at time moves ahead by the units' worth, at most one
-- whole bucket from now; f, s: the window counts the units, up to its capacity; l: one entry
-- per unit, up to the capacity. What would go below empty is not kept.
-- src/algorithm (Limit::charge) does the same.
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
for i = 1, #KEYS do
  local a = 4 * i - 3
  local code, key, x, y, units = ARGV[a], KEYS[i], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3] + 0
  local _, o1, o2, o3, o4 = observe(code, key, now, x, y, units)
  if code == 't' then
    -- x: the units' worth, y: the burst, o1: the wait until full, all in microseconds.
    local inc = math.min(x + 0, y - o1)
    if inc > 0 then
      take(code, key, now, inc, y, units, o1)
    end
  elseif code ~= 'c' then
    -- y: the capacity, o1: what the window or the log counts now. (Slots are taken by
    -- decisions only.)
    local k = math.min(units, y - o1)
    if k > 0 then
      take(code, key, now, x, y, k, o1, o2, o3, o4)
    end
  end
end
return 1
