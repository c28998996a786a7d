-- The Lua twin of echohost.shared (src/lshared.c over src/shdict.c), for
-- the harness: the same methods, argument checks and messages, the same
-- cost of an entry and the same policy when full (README "The shared
-- dictionary"), on a clock the caller gives. tests/shared_spec.lua runs one
-- table of cases against both.
--
--   local dict = require "echohost.dict"
--   local d = dict.new(capacity [, clock])
--     capacity  the bytes the entries may cost: an integer 4096..1073741824
--               (the range of --shared-size); else raises
--               "bad argument #1 to 'new' (capacity of 4096..1073741824
--               bytes expected)"
--     clock     a function returning the time in seconds (any origin, never
--               going back), called on every operation; default os.time.
--               An entry stored with ttl at clock() = t has expired once
--               clock() >= t + ttl. Else raises "bad argument #2 to 'new'
--               (function expected, got <type>)".
--   d:get(key)                     the value, or nil
--   d:set(key, value [, ttl])      true, or nil, "no memory"; value nil deletes
--   d:add(key, value [, ttl])      true, false, "exists", or nil, "no memory"
--   d:incr(key, n [, init [, ttl]])  the new value, or nil, "not found" |
--                                  "not a number" | "no memory"
--   d:delete(key)                  true
--   d:ttl(key)                     seconds left (a float), 0 when it never
--                                  expires, nil when missing
--   d:flush_all()                  true
--   d:capacity(), d:free_space()   bytes (integers)
--   tostring(d)                    "echohost.shared (4096 bytes)"
-- Misuse raises as luaL_argerror does for a method call (d:get(...)), with
-- the caller's position: "file:1: bad argument #1 to 'get' (key of 1..250
-- bytes expected)". The object's type name (__name) is "echohost.shared".
local M = {}

local KEY_MAX, ENTRY = 250, 48
local CAP_MIN, CAP_MAX = 4096, 1024 * 1024 * 1024

local methods = {}
local meta = { __name = "echohost.shared", __index = methods }

function meta.__tostring(d)
  return ("echohost.shared (%d bytes)"):format(d.cap)
end

-- The type name luaL_typeerror gives: __name, else the type.
local function typename(n, ...)
  if select("#", ...) < n then
    return "no value"
  end
  local v = select(n, ...)
  local mt = debug.getmetatable(v)
  local name = mt and rawget(mt, "__name")
  return type(name) == "string" and name or type(v)
end

-- Raised from a check* function called by a method: level 4 is the
-- method's caller.
local function argerror(n, fname, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 4)
end

local function checkself(fname, self)
  if getmetatable(self) ~= meta then
    argerror(1, fname, "echohost.shared expected, got " .. typename(1, self))
  end
end

local function checkkey(fname, key)
  if type(key) ~= "string" or #key < 1 or #key > KEY_MAX then
    argerror(1, fname, "key of 1.." .. KEY_MAX .. " bytes expected")
  end
end

-- Argument #n of fname is a number; ... are the arguments from #2 on.
local function checknumber(fname, n, ...)
  if type((select(n - 1, ...))) ~= "number" then
    argerror(n, fname, "number expected, got " .. typename(n - 1, ...))
  end
end

local function checkvalue(fname, ...)
  local t = type((...))
  if select("#", ...) < 1 or (t ~= "string" and t ~= "number" and t ~= "boolean") then
    argerror(2, fname, "string, number or boolean expected, got " .. typename(1, ...))
  end
end

local function checkttl(fname, n, ttl)
  if ttl ~= nil and not (type(ttl) == "number" and ttl >= 0) then
    argerror(n, fname, "ttl of 0 or more seconds expected")
  end
end

local function cost(key, value)
  local t = type(value)
  local size = t == "string" and #value or t == "boolean" and 1 or 8
  return (ENTRY + #key + size + 7) // 8 * 8
end

local function expired(e, now)
  return e.expires ~= 0 and e.expires <= now
end

local function drop(d, key)
  d.used = d.used - d.entries[key].cost
  d.entries[key] = nil
end

-- key's entry if it has not expired (an expired one is dropped).
local function live(d, key, now)
  local e = d.entries[key]
  if e and expired(e, now) then
    drop(d, key)
    return nil
  end
  return e
end

-- Whether an entry of c bytes fits in place of a live one of old bytes,
-- once the expired entries are dropped if it takes that.
local function fits(d, c, old, now)
  if d.used - old + c <= d.cap then
    return true
  end
  for key, e in pairs(d.entries) do
    if expired(e, now) then
      drop(d, key)
    end
  end
  return d.used - old + c <= d.cap
end

local function insert(d, key, value, ttl, now)
  local old, c = d.entries[key], cost(key, value)
  d.used = d.used - (old and old.cost or 0) + c
  d.entries[key] = { value = value, cost = c,
                     expires = (ttl or 0) > 0 and now + ttl + 0.0 or 0 }
end

-- set and add (add true).
local function store(d, key, value, ttl, add)
  local now = d.clock()
  local e = live(d, key, now)
  if e and add then
    return false, "exists"
  elseif value == nil then
    if e then
      drop(d, key)
    end
    return true
  elseif not fits(d, cost(key, value), e and e.cost or 0, now) then
    return nil, "no memory"
  end
  insert(d, key, value, ttl, now)
  return true
end

function methods.get(self, key)
  checkself("get", self)
  checkkey("get", key)
  local e = live(self, key, self.clock())
  if e then
    return e.value
  end
  return nil
end

function methods.set(self, key, value, ttl)
  checkself("set", self)
  checkkey("set", key)
  if value ~= nil then
    checkvalue("set", value)
  end
  checkttl("set", 3, ttl)
  return store(self, key, value, ttl, false)
end

function methods.add(self, key, ...)
  checkself("add", self)
  checkkey("add", key)
  checkvalue("add", ...)
  local value, ttl = ...
  checkttl("add", 3, ttl)
  return store(self, key, value, ttl, true)
end

function methods.incr(self, key, ...)
  checkself("incr", self)
  checkkey("incr", key)
  checknumber("incr", 2, ...)
  local n, init, ttl = ...
  if init ~= nil then
    checknumber("incr", 3, ...)
  end
  checkttl("incr", 4, ttl)
  local now = self.clock()
  local e = live(self, key, now)
  if e == nil then
    if init == nil then
      return nil, "not found"
    end
    local v = init + n
    if not fits(self, cost(key, v), 0, now) then
      return nil, "no memory"
    end
    insert(self, key, v, ttl, now)
    return v
  elseif type(e.value) ~= "number" then
    return nil, "not a number"
  end
  e.value = e.value + n
  return e.value
end

function methods.delete(self, key)
  checkself("delete", self)
  checkkey("delete", key)
  if self.entries[key] then
    drop(self, key)
  end
  return true
end

function methods.ttl(self, key)
  checkself("ttl", self)
  checkkey("ttl", key)
  local now = self.clock()
  local e = live(self, key, now)
  if e == nil then
    return nil
  elseif e.expires == 0 then
    return 0
  end
  return e.expires - now
end

function methods.flush_all(self)
  checkself("flush_all", self)
  self.entries, self.used = {}, 0
  return true
end

function methods.capacity(self)
  checkself("capacity", self)
  return self.cap
end

function methods.free_space(self)
  checkself("free_space", self)
  local now, left = self.clock(), self.cap
  for _, e in pairs(self.entries) do
    if not expired(e, now) then
      left = left - e.cost
    end
  end
  return left
end

function M.new(capacity, clock)
  if math.type(capacity) ~= "integer" or capacity < CAP_MIN or capacity > CAP_MAX then
    error(("bad argument #1 to 'new' (capacity of %d..%d bytes expected)")
      :format(CAP_MIN, CAP_MAX), 2)
  end
  if clock ~= nil and type(clock) ~= "function" then
    error("bad argument #2 to 'new' (function expected, got " .. typename(1, clock) .. ")", 2)
  end
  return setmetatable({ cap = capacity, clock = clock or os.time, entries = {}, used = 0 },
    meta)
end

return M
