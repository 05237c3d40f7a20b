-- tollgate: gives units back to every limit's bucket, as if that many fewer had been taken
-- (Limiter::refund). One call, so all limits or none.
--
-- KEYS[i]                   the bucket of limit i (all in one hash slot)
-- ARGV[4i-3]                limit i's algorithm: t, f, s or l
-- ARGV[4i-2], ARGV[4i-1]    as in decide.lua for a cost of `units`: t: the units' worth and
--                           the burst in microseconds; f, s: the window in milliseconds and
--                           the capacity; l: the window in microseconds and the capacity
-- ARGV[4i]                  the units to give back
-- ARGV[4n+1]                (optional) the Redis time in microseconds at which the units were
--                           taken: a lease given back. A token bucket then gets back their
--                           worth less the time since (see below); a window gets them back
--                           only from the window that counted them (f: if it is still the
--                           bucket's; s: the bucket's current or previous count), never from
--                           a later one, which did not count them.
--
-- A bucket a clock step left ahead of now is first brought back as decide.lua does. Then:
-- t: the full-at time moves back by the units' worth, at most to now (then the key goes);
-- f: this window's count goes down, never below zero (an ended window gets nothing back);
-- s: this window's count, then the previous one's; l: the newest entries in the window go;
-- c: nothing (slots are released, not refunded).
-- src/algorithm (Limit::refund) does the same.
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local format = string.format
local lent_at = ARGV[4 * #KEYS + 1]
for i = 1, #KEYS do
  local a = 4 * i - 3
  local code, key, x, y, units = ARGV[a], KEYS[i], ARGV[a + 1] + 0, ARGV[a + 2] + 0, ARGV[a + 3] + 0
  if code == 't' and lent_at then
    -- Units lent at lent_at and not spent: while they were out the bucket went on filling,
    -- and the part of that filling its capacity cut off would have gone to them. At most
    -- the time since is lost so, so what is owed is at least their worth less that time:
    -- only that much comes back (never more than if they had not been taken).
    x = math.max(0, x - math.max(0, now - lent_at))
  end
  if code == 't' and x > 0 then
    local full_at = redis.call('GET', key)
    if full_at then
      local back = math.min(full_at + 0, now + y) - x
      if back > now then
        redis.call('SET', key, format('%d', back), 'PX', format('%d', (back - now + 999) / 1000))
      else
        redis.call('DEL', key)
      end
    end
  elseif lent_at and (code == 'f' or code == 's') then
    local lent = math.floor(math.floor(lent_at / 1000) / x)
    local state = redis.call('HMGET', key, 'i', 'c', 'p')
    if state[1] then
      local w = state[1] + 0
      if w == lent then
        redis.call('HINCRBY', key, 'c', -math.min(units, state[2] + 0))
      elseif code == 's' and w == lent + 1 then
        redis.call('HINCRBY', key, 'p', -math.min(units, (state[3] or 0) + 0))
      end
    end
  elseif code == 'f' or code == 's' then
    local index = math.floor(math.floor(now / 1000) / x)
    local state = redis.call('HMGET', key, 'i', 'c', 'p')
    if state[1] then
      local w, c, p = state[1] + 0, state[2] + 0, (state[3] or 0) + 0
      if w > index then
        w = index
        local windows = (code == 's') and 2 or 1
        redis.call('HSET', key, 'i', format('%d', index))
        redis.call('PEXPIREAT', key, format('%d', (index + windows) * x))
      end
      if w == index then
        local back = math.min(units, c)
        if code == 's' then
          p = p - math.min(units - back, p)
          redis.call('HSET', key, 'c', format('%d', c - back), 'p', format('%d', p))
        else
          redis.call('HSET', key, 'c', format('%d', c - back))
        end
      elseif code == 's' and w == index - 1 then
        redis.call('HSET', key, 'c', format('%d', c - math.min(units, c)))
      end
    end
  elseif code == 'l' then
    local count = redis.call('ZCOUNT', key, format('(%d', now - x), '+inf')
    local k = math.min(units, count)
    if k > 0 then
      redis.call('ZREMRANGEBYRANK', key, -k, -1)
    end
  end
end
return 1
