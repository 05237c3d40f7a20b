-- tollgate: a policy of one token-bucket limit, the most common, on its own: token_bucket.lua
-- and decide.lua's one-limit path written as one straight script, without the driver's
-- function calls and per-limit arguments (what a decision costs Redis matters most here).
--
-- KEYS[1]   the bucket
-- ARGV[1]   inc: the request's cost x microseconds per token
-- ARGV[2]   burst: capacity x microseconds per token
--
-- The same arithmetic, the same clock-step guard and the same reply as decide.lua for one
-- token-bucket limit: full_after + 1 when allowed, -1 - full_after when not.
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local key, inc, burst = KEYS[1], ARGV[1] + 0, ARGV[2] + 0
local full_after = 0
local full_at = redis.call('GET', key)
local format = string.format
if full_at then
  full_after = full_at - now
  if full_after < 0 then
    full_after = 0
  elseif full_after > burst then
    -- The clock stepped back: empty now, never held longer than it takes to fill.
    full_after = burst
    redis.call('SET', key, format('%d', now + burst), 'PX', format('%d', (burst + 999) / 1000))
  end
end
local after = full_after + inc
if after > burst then
  return -1 - full_after
end
redis.call('SET', key, format('%d', now + after), 'PX', format('%d', (after + 999) / 1000))
return full_after + 1
