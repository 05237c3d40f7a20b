-- tollgate token bucket: one call decides a request against all its limits.
--
-- Each bucket is kept as a single integer: its "full at" time (the GCRA theoretical arrival
-- time), in microseconds of the Redis clock. A bucket whose full-at time has passed is full,
-- so a missing key is a full bucket and the key's TTL is exactly the time until it is full.
--
-- KEYS[i]      the bucket of limit i (all in one hash slot)
-- ARGV[2i-1]   increment of limit i: cost x microseconds per token (integer, >= 1)
-- ARGV[2i]     burst of limit i: capacity x microseconds per token (integer, >= 1)
--
-- All or nothing: the request passes only if every bucket holds the cost, and then every
-- bucket gives it; otherwise nothing is written. The caller turns the reply into tokens:
--   one limit:      after (> 0): allowed, the bucket is full again in `after` microseconds;
--                   -1 - full_after (< 0): denied, the bucket is full in `full_after`.
--   several limits: {after_1, ..., after_n} (all > 0): allowed;
--                   {-i, full_after_i}: denied; limit i has the longest wait (the first on a
--                   tie).
-- Every value stays an integer below 2^53, so the arithmetic is exact; the values written are
-- formatted as integers (%d), never through float formatting. src/limit.rs (decide_all) does
-- the same arithmetic.
--
-- Written for Redis' CPU: strings become numbers by arithmetic (no tonumber calls), and
-- '%d' truncates, so (after + 999) / 1000 formats as the ceiling in milliseconds.
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local n = #KEYS
if n == 1 then
  local burst = ARGV[2] + 0
  local full_at = redis.call('GET', KEYS[1])
  if not full_at then
    full_at = now
  else
    full_at = full_at + 0
    if full_at < now then
      full_at = now
    elseif full_at > now + burst then
      -- The clock stepped back since this was written: count the bucket as empty.
      full_at = now + burst
    end
  end
  local after = full_at - now + ARGV[1]
  if after > burst then
    return now - full_at - 1
  end
  local format = string.format
  redis.call('SET', KEYS[1], format('%d', now + after), 'PX', format('%d', (after + 999) / 1000))
  return after
end
local values = redis.call('MGET', unpack(KEYS))
local afters = {}
local worst, worst_wait, worst_full_after = 0, 0, 0
for i = 1, n do
  local burst = tonumber(ARGV[2 * i])
  local full_at = tonumber(values[i]) or now
  if full_at < now then
    full_at = now
  elseif full_at > now + burst then
    full_at = now + burst
  end
  local increment = ARGV[2 * i - 1] + 0
  if increment > burst then
    -- A cost above this capacity can never pass: this limit refuses, whatever the others say.
    return {-i, full_at - now}
  end
  local after = full_at - now + increment
  if after > burst and (worst == 0 or after - burst > worst_wait) then
    worst, worst_wait, worst_full_after = i, after - burst, full_at - now
  end
  afters[i] = after
end
if worst > 0 then
  return {-worst, worst_full_after}
end
for i = 1, n do
  local after = afters[i]
  redis.call('SET', KEYS[i], string.format('%d', now + after), 'PX',
    string.format('%d', (after + 999) / 1000))
end
return afters
