-- Units a lease of an Envoy service counter did not spend, given back: taken off the counter
-- while it exists (once its window is over it may be gone: nothing to give back then).
-- KEYS[1]: the counter. ARGV[1]: the units. Replies 1.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DECRBY', KEYS[1], ARGV[1])
end
return 1
