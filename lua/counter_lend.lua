-- An Envoy service counter (envoyproxy/ratelimit's plain INCRBY integer) added to with a
-- lease: the request's hits always, as the peer counts them, and, when they fit within the
-- limit, up to `extra` more units that fit too, lent to the caller to spend without asking.
-- KEYS[1]: the counter. ARGV: hits, extra, limit, seconds until it expires.
-- Replies {value after, units lent}.
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local hits = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local lent = 0
if current + hits <= limit then
  lent = math.min(tonumber(ARGV[2]), limit - current - hits)
end
local value = redis.call('INCRBY', KEYS[1], hits + lent)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {value, lent}
