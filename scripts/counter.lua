-- Counters and values shared by every connection and every worker
-- (echohost.shared), one command per line, one reply line each:
--   incr KEY [N]          -> the new value (a missing key counts from 0)
--   get KEY               -> the value, or nil
--   set KEY VALUE [TTL]   -> ok (a VALUE that reads as a number is one;
--                            it expires after TTL seconds)
--   del KEY               -> ok
-- Anything else gets "error: <why>" ("error: no memory" when the dictionary
-- is full). Lines may come many to a chunk or cut across chunks.
--   echohost --handler scripts/counter.lua --shared-size 16m
--   printf 'incr hits\nincr hits 10\nget hits\n' | nc -q1 127.0.0.1 8888
local shared = require "echohost.shared"

local MAX = 4096          -- bytes in a line

local function result(v, err)
  if v == nil then
    return "error: " .. err
  end
  return v == true and "ok" or tostring(v)
end

local commands = {}

function commands.incr(key, n)
  n = tonumber(n or 1)
  if not n then
    return "error: not a number"
  end
  return result(shared:incr(key, n, 0))
end

function commands.get(key)
  return tostring(shared:get(key))
end

function commands.set(key, value, ttl)
  if value == nil then
    return "error: set KEY VALUE [TTL]"
  end
  local secs = tonumber(ttl or 0)
  if not secs or secs < 0 then
    return "error: bad ttl"
  end
  return result(shared:set(key, tonumber(value) or value, secs))
end

function commands.del(key)
  return result(shared:delete(key))
end

local function command(line)
  local name, key, a, b = line:match("^(%S+)%s+(%S+)%s*(%S*)%s*(%S*)%s*$")
  local fn = commands[name]
  if not fn then
    return "error: unknown command"
  elseif #key > 250 then
    return "error: key too long"
  end
  return fn(key, a ~= "" and a or nil, b ~= "" and b or nil)
end

return function(conn, data)
  local buf = (conn.state.buf or "") .. data
  local out, start = {}, 1
  for line, after in buf:gmatch("([^\n]*)\n()") do
    out[#out + 1] = command((line:gsub("\r$", ""))) .. "\n"
    start = after
  end
  conn.state.buf = buf:sub(start)
  if #conn.state.buf > MAX then
    conn:close()
    out[#out + 1] = ("error: line too long (max %d bytes)\n"):format(MAX)
  end
  return table.concat(out)
end
