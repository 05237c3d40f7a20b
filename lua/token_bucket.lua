-- tollgate token bucket, one call per decision.
--
-- The bucket is kept as a single integer: its "full at" time (the GCRA
-- theoretical arrival time), in microseconds of the Redis clock. A bucket whose
-- full-at time has passed is full, so a missing key is a full bucket and the
-- key's TTL is exactly the time until it is full again.
--
-- KEYS[1]  bucket key
-- ARGV[1]  interval: microseconds to refill one token (integer, >= 1)
-- ARGV[2]  capacity: tokens in a full bucket (integer, >= 1)
-- ARGV[3]  cost: tokens this request takes (integer, >= 1; above the capacity it is
--          always denied)
--
-- Reply {allowed, remaining, full_after}: allowed is 1 or 0, remaining the
-- whole tokens left after the decision, full_after the microseconds until the
-- bucket is full again. Every value stays an integer below 2^53, so the
-- arithmetic is exact and nothing is formatted as a float.
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2]) * interval
local full_at = tonumber(redis.call('GET', KEYS[1])) or now
if full_at < now then
  full_at = now
elseif full_at > now + burst then
  -- The clock stepped back since this was written: count the bucket as empty.
  full_at = now + burst
end
local after = full_at + tonumber(ARGV[3]) * interval - now
if after > burst then
  -- Denied: nothing is written.
  return {0, math.floor((burst - (full_at - now)) / interval), full_at - now}
end
redis.call('SET', KEYS[1], now + after, 'PX', math.ceil(after / 1000))
return {1, math.floor((burst - after) / interval), after}
