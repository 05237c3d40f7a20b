-- For a request whose limits use different algorithms, after token_bucket.lua,
-- fixed_window.lua, sliding_window.lua, sliding_log.lua and concurrency.lua: each limit runs
-- its own algorithm
-- (these two functions take the place of the ones the last script named).
local function observe(code, ...)
  if code == 't' then
    return token_bucket(code, ...)
  elseif code == 'f' then
    return fixed_window(code, ...)
  elseif code == 's' then
    return sliding_window(code, ...)
  elseif code == 'c' then
    return concurrency(code, ...)
  end
  return sliding_log(code, ...)
end

local function take(code, ...)
  if code == 't' then
    return token_bucket_take(code, ...)
  elseif code == 'f' then
    return fixed_window_take(code, ...)
  elseif code == 's' then
    return sliding_window_take(code, ...)
  elseif code == 'c' then
    return concurrency_take(code, ...)
  end
  return sliding_log_take(code, ...)
end
