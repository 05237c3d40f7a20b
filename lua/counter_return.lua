-- Units a lease of an Envoy service counter did not spend, given back: taken off the counter
-- while it exists (once its window is over it may be gone: nothing to give back then), but
-- never below zero, as the memory store's counters: a counter that lost its value (a restart)
-- must not lend from below zero afterwards.
-- KEYS[1]: the counter. ARGV[1]: the units. Replies 1.
local raw = redis.call('GET', KEYS[1])
if raw then
  local units = math.min(tonumber(ARGV[1]), math.max(tonumber(raw) or 0, 0))
  if units > 0 then
    redis.call('DECRBY', KEYS[1], units)
  end
end
return 1
