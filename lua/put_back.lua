-- tollgate: puts back what one take counted (a settlement below the reservation, a refund, a
-- lease given back, a slot freed): only what is still owed, where it was counted. One call,
-- so all limits or none. The one put-back of RedisStore; src/algorithm (Limit::put_back)
-- does the same.
--
-- KEYS[i]        the bucket of limit i (all in one hash slot)
-- ARGV[4i-3]     limit i's algorithm: t, f, s, l or c
-- ARGV[4i-2..4i] t: the units' worth and the burst, in microseconds, and the time of the take
--                f, s: the window in milliseconds, the units, and the time of the take
--                l: the entries the take added, the units, and the time of its entries
--                c: the slot to free ('-' for none), unused, unused
-- Times are microseconds of the Redis clock, as the take's script read it.
--
-- t: their worth less the refill since the take (the bucket went on filling meanwhile, and
--    what its capacity cut off would have gone to them): the full-at time moves back by that
--    much, at most to now (then the key goes);
-- f: the count goes down, only while the bucket is the window of the take;
-- s: the same, or the previous count once the bucket is the window after;
-- l: the take's entries (named '<time>:<j>', j from 1) go, the last ones first;
-- c: the slot goes.
-- Nothing ever goes below zero, and a window that has ended is owed nothing.
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local format = string.format
for i = 1, #KEYS do
  local a = 4 * i - 3
  local code, key, x, y, at = ARGV[a], KEYS[i], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  if code == 't' then
    local owed = x - math.max(0, now - at)
    if owed > 0 then
      local full_at = redis.call('GET', key)
      if full_at then
        -- A clock step back never leaves a bucket more than one burst ahead.
        local back = math.min(full_at + 0, now + y) - owed
        if back > now then
          redis.call('SET', key, format('%d', back), 'PX', format('%d', (back - now + 999) / 1000))
        else
          redis.call('DEL', key)
        end
      end
    end
  elseif code == 'f' or code == 's' then
    local units = y + 0
    if units > 0 then
      local taken = math.floor(math.floor(at / 1000) / x)
      local state = redis.call('HMGET', key, 'i', 'c', 'p')
      if state[1] then
        -- (Never HINCRBY by -0, which Redis refuses.)
        local w, field, count = state[1] + 0, nil, 0
        if w == taken then
          field, count = 'c', state[2] + 0
        elseif code == 's' and w == taken + 1 and state[3] then
          field, count = 'p', state[3] + 0
        end
        if field and count > 0 then
          redis.call('HINCRBY', key, field, -math.min(units, count))
        end
      end
    end
  elseif code == 'l' then
    local left, j = y + 0, x + 0
    while left > 0 and j >= 1 do
      left = left - redis.call('ZREM', key, at .. ':' .. j)
      j = j - 1
    end
  elseif code == 'c' and x ~= '-' then
    redis.call('ZREM', key, x)
  end
end
return 1
