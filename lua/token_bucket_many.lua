-- tollgate: a policy of several token-bucket limits (none of another algorithm), all or
-- nothing: token_bucket.lua and decide.lua's several-limit path written as one straight
-- script, every bucket read by one MGET.
--
-- KEYS[i]          the bucket of limit i (all in one hash slot)
-- ARGV[2i-1]       limit i's inc: the request's cost x microseconds per token
-- ARGV[2i]         limit i's burst: capacity x microseconds per token
--
-- The same arithmetic, clock-step guard and reply as decide.lua for these limits:
-- {1 if it passed else 0, full_after of limit 1, of limit 2, ...}.
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local n = #KEYS
local format = string.format
local values = redis.call('MGET', unpack(KEYS))
local reply, all = {0}, true
for i = 1, n do
  local burst = ARGV[2 * i] + 0
  local full_after = 0
  local full_at = values[i]
  if full_at then
    full_after = full_at - now
    if full_after < 0 then
      full_after = 0
    elseif full_after > burst then
      -- The clock stepped back: empty now, never held longer than it takes to fill.
      full_after = burst
      redis.call('SET', KEYS[i], format('%d', now + burst), 'PX', format('%d', (burst + 999) / 1000))
    end
  end
  reply[i + 1] = full_after
  all = all and full_after + ARGV[2 * i - 1] <= burst
end
if not all then
  return reply
end
for i = 1, n do
  local after = reply[i + 1] + ARGV[2 * i - 1]
  redis.call('SET', KEYS[i], format('%d', now + after), 'PX', format('%d', (after + 999) / 1000))
end
reply[1] = 1
return reply
