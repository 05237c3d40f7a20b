-- Token bucket (GCRA): units come back one at a time, continuously.
--
-- The bucket is one integer: its "full at" time (the GCRA theoretical arrival time) in
-- microseconds of the Redis clock. A bucket whose full-at time has passed is full, so a missing
-- key is a full bucket and the key's TTL is exactly the time until it is full again.
--
-- Arguments: inc = cost x microseconds per token, burst = capacity x microseconds per token
-- (integers >= 1, as strings), and an unused third.
-- Observes: full_after, the microseconds until the bucket is full, clamped to [0, burst]. A
-- full-at time further ahead than one whole bucket means the clock stepped back: the bucket is
-- rewritten as empty now, so it is never held for longer than it takes to fill.
-- Allows when full_after + inc <= burst; taking writes the new full-at time with a TTL
-- of the same wait rounded up to whole milliseconds. src/algorithm/token_bucket.rs does the
-- same arithmetic; every value stays an integer below 2^53, so it is exact.
local function token_bucket(_, key, now, inc, burst)
  burst = burst + 0
  local full_after = 0
  local full_at = redis.call('GET', key)
  if full_at then
    full_after = full_at - now
    if full_after < 0 then
      full_after = 0
    elseif full_after > burst then
      full_after = burst
      if not read_only then
        local format = string.format
        redis.call('SET', key, format('%d', now + burst), 'PX', format('%d', (burst + 999) / 1000))
      end
    end
  end
  return full_after + inc <= burst, full_after
end

local function token_bucket_take(_, key, now, inc, _, _, full_after)
  local after = full_after + inc
  local format = string.format
  -- Written as integers ('%d'), never through float formatting; '%d' truncates, so
  -- (after + 999) / 1000 formats as the ceiling in milliseconds.
  redis.call('SET', key, format('%d', now + after), 'PX', format('%d', (after + 999) / 1000))
end

local observe, take = token_bucket, token_bucket_take
