-- Concurrency: at most `capacity` requests in flight per key. The bucket is a sorted set of
-- slots, one member per request that holds one, scored by the end of its lease (microseconds
-- of the Redis clock). The instance holding a slot renews its lease while the request runs
-- (lua/renew.lua) and removes it when the request ends (lua/release.lua), so only the slots
-- of an instance that died run out on their own.
--
-- Arguments: lease in microseconds, capacity, and the slot's name (unique: the instance's id
-- and a counter).
-- Observes: in_use, the slots whose lease has not run out (a decision first removes the
-- others). Allows when in_use < capacity, whatever the request's cost; taking adds the slot
-- and makes the key live as long as its newest lease. src/algorithm/concurrency.rs counts the
-- same slots without leases.
local function concurrency(_, key, now, _, capacity)
  local format = string.format
  if not read_only then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', format('%d', now))
  end
  local in_use = redis.call('ZCOUNT', key, format('(%d', now), '+inf')
  return in_use < capacity + 0, in_use
end

local function concurrency_take(_, key, now, lease, _, slot)
  lease = lease + 0
  local format = string.format
  redis.call('ZADD', key, format('%d', now + lease), slot)
  redis.call('PEXPIRE', key, format('%d', (lease + 999) / 1000))
end

local observe, take = concurrency, concurrency_take
