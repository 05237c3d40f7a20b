-- tollgate token bucket: one call decides a request against all its limits.
--
-- Each bucket is kept as a single integer: its "full at" time (the GCRA theoretical arrival
-- time), in microseconds of the Redis clock. A bucket whose full-at time has passed is full,
-- so a missing key is a full bucket and the key's TTL is exactly the time until it is full.
--
-- KEYS[i]      the bucket of limit i (all in one hash slot)
-- ARGV[1]      cost: tokens this request takes from every bucket (integer, >= 1)
-- ARGV[2i]     interval of limit i: microseconds to refill one token (integer, >= 1)
-- ARGV[2i+1]   capacity of limit i: tokens in a full bucket (integer, >= 1)
--
-- All or nothing: the request passes only if every bucket holds `cost` tokens, and then every
-- bucket gives them; otherwise nothing is written. Reply {allowed, index, remaining,
-- full_after} about one limit (index from 0): when denied, the one with the longest wait;
-- when allowed, the one with the fewest whole tokens left; the first on a tie. full_after is
-- that bucket's microseconds until full. Every value stays an integer below 2^53, so the
-- arithmetic is exact and nothing is formatted as a float. src/limit.rs (decide_all) does the
-- same arithmetic.
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local cost = tonumber(ARGV[1])
local n = #KEYS
local values = redis.call('MGET', unpack(KEYS))
local full_ats, afters = {}, {}
local worst, worst_wait = 0, 0
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1]) * interval
  local full_at = tonumber(values[i]) or now
  if full_at < now then
    full_at = now
  elseif full_at > now + burst then
    -- The clock stepped back since this was written: count the bucket as empty.
    full_at = now + burst
  end
  local after = full_at - now + cost * interval
  if after > burst and (worst == 0 or after - burst > worst_wait) then
    worst, worst_wait = i, after - burst
  end
  full_ats[i], afters[i] = full_at, after
end
if worst > 0 then
  local interval = tonumber(ARGV[2 * worst])
  local burst = tonumber(ARGV[2 * worst + 1]) * interval
  local full_after = full_ats[worst] - now
  return {0, worst - 1, math.floor((burst - full_after) / interval), full_after}
end
local best, best_remaining = 0, 0
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local after = afters[i]
  redis.call('SET', KEYS[i], now + after, 'PX', math.ceil(after / 1000))
  local remaining = math.floor((tonumber(ARGV[2 * i + 1]) * interval - after) / interval)
  if best == 0 or remaining < best_remaining then
    best, best_remaining = i, remaining
  end
end
return {1, best - 1, best_remaining, afters[best]}
