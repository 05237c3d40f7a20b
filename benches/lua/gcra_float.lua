-- For comparison only: a GCRA limiter in the style of go-redis/redis_rate's script, written
-- here from the algorithm: float seconds from TIME, one GET, float arithmetic, SET with EX, and
-- float values formatted as strings in the reply.
--
-- KEYS[1] key; ARGV: burst, rate, period (seconds), cost.
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])

local interval = period / rate
local increment = interval * cost
local tolerance = interval * burst

local clock = redis.call('TIME')
local now = (clock[1] - 1483228800) + clock[2] / 1000000

local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end

local new_tat = tat + increment
local diff = now - (new_tat - tolerance)
local remaining = diff / interval

if remaining < 0 then
  return {0, 0, tostring(-diff), tostring(tat - now)}
end

local reset_after = new_tat - now
if reset_after > 0 then
  redis.call('SET', KEYS[1], new_tat, 'EX', math.ceil(reset_after))
end
return {cost, remaining, tostring(-1), tostring(reset_after)}
