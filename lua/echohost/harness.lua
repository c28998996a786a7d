-- The in-memory interpreter of handlers: runs a handler file (or value)
-- against scripted input chunks and closes, with no sockets, and reports what
-- it sent and whether it closed. Same conn API and rules as the server.
--
--   local harness = require "echohost.harness"
--   local r = harness.run("scripts/upper.lua", {"ab", "c", harness.CLOSE})
--   assert(r.sent == "ABC" and r.closed)
--
-- Step by step: local h = harness.open(handler); h:input("x") returns what
-- the handler sent in reply; h:eof() (the client shuts down); h:timeout()
-- (time passes: a recv or send waiting with a timeout gets nil, "timeout").
local M = {}

local ETIMEDOUT = 110               -- Linux errno, as the server reports it

-- Scripted events in the inputs of run().
M.CLOSE = setmetatable({}, { __tostring = function() return "harness.CLOSE" end })
M.TIMEOUT = setmetatable({}, { __tostring = function() return "harness.TIMEOUT" end })

local WAIT = {}                     -- what a parked handle coroutine yields

-- Loads path as the server does: a fresh _ENV whose __index is _G.
function M.load(path)
  local env = setmetatable({}, { __index = _G })
  local chunk, err = loadfile(path, "t", env)
  if not chunk then
    return nil, err
  end
  local ok, value = pcall(chunk)
  if not ok then
    return nil, value
  end
  return value
end

local CALLBACKS = { "on_data", "on_open", "on_close" }

-- "fn", "callbacks" or "direct" for a handler value; nil, err otherwise.
function M.kind(h, name)
  name = name or "handler"
  if type(h) == "function" then
    return "fn"
  end
  if type(h) ~= "table" then
    return nil, ("%s: returned %s; a handler returns a function or a table "
      .. "with handle, on_open, on_data or on_close"):format(name, type(h))
  end
  for _, k in ipairs(CALLBACKS) do
    if h[k] ~= nil and type(h[k]) ~= "function" then
      return nil, ("%s: %s is a %s, expected a function"):format(name, k, type(h[k]))
    end
  end
  if type(h.handle) == "function" then
    return "direct"
  elseif h.handle ~= nil then
    return nil, ("%s: handle is a %s, expected a function"):format(name, type(h.handle))
  elseif not (h.on_data or h.on_open or h.on_close) then
    return nil, name .. ": returned a table without handle, on_open, on_data or on_close"
  end
  return "callbacks"
end

-- The conn object ------------------------------------------------------------

local Conn = {}                     -- methods
local conn_mt = {}

local function fail(msg, code)
  return nil, msg, code
end

function Conn:recv(max)
  local s = rawget(self, "_s")
  if max ~= nil and (math.type(max) ~= "integer" or max < 0) then
    error("bad argument #1 to 'recv' (expected a positive size)", 2)
  end
  while #s.inbuf == 0 do
    if s.closed or s.eof then
      return fail("closed", 0)
    end
    if coroutine.running() ~= s.co then
      error("conn:recv would wait: only a handle(conn) coroutine can wait for data", 2)
    end
    if coroutine.yield(WAIT) == "timeout" and s.timeout then
      return fail("timeout", ETIMEDOUT)
    end
  end
  local n = (max and max > 0) and math.min(max, #s.inbuf) or #s.inbuf
  local data = s.inbuf:sub(1, n)
  s.inbuf = s.inbuf:sub(n + 1)
  return data
end

function Conn:send(data)
  local s = rawget(self, "_s")
  if type(data) ~= "string" then
    error(("bad argument #1 to 'send' (string expected, got %s)"):format(type(data)), 2)
  end
  if s.closed then
    return fail("closed", 0)
  end
  if #data > 0 then
    s.chunks[#s.chunks + 1] = data
  end
  return #data
end

function Conn:close()
  rawget(self, "_s").closed = true
  return true
end

function Conn:settimeout(t)
  if t ~= nil and (type(t) ~= "number" or t < 0) then
    error("bad argument #1 to 'settimeout' (expected seconds (>= 0) or nil)", 2)
  end
  rawget(self, "_s").timeout = t
  return true
end

function conn_mt.__index(self, k)
  local s = rawget(self, "_s")
  if Conn[k] then
    return Conn[k]
  elseif k == "id" then
    return s.id
  elseif k == "peer" then
    return s.peer
  elseif k == "state" then
    return s.state
  end
  return nil
end

function conn_mt.__newindex()
  error("echohost.conn fields are read-only (keep your data in conn.state)", 2)
end

function conn_mt.__tostring(self)
  local s = rawget(self, "_s")
  return ("echohost.conn %d (%s)"):format(s.id, s.closed and "closed" or s.peer)
end

-- A harness connection ------------------------------------------------------

local H = {}
H.__index = H

local next_id = 0

-- Runs fn(...) under the instruction budget; true or false, message.
local function call(self, fn, ...)
  local budget = self.budget
  if budget then
    debug.sethook(function() error("instruction budget exceeded", 2) end, "", budget)
  end
  local r = table.pack(xpcall(fn, debug.traceback, ...))
  if budget then
    debug.sethook()
  end
  return table.unpack(r, 1, r.n)
end

local function fault(self, err)
  self.error = err
  self.s.closed = true
end

local function reply(self, ok, r)
  if not ok then
    return fault(self, r)
  end
  if r ~= nil and type(r) ~= "string" then
    return fault(self, ("handler returned a %s (expected a string or nil)"):format(type(r)))
  end
  if r and #r > 0 and not self.s.closed then
    self.s.chunks[#self.s.chunks + 1] = r
  end
end

-- Resumes the handle coroutine with ...; records its end or fault.
local function resume(self, ...)
  local co = self.s.co
  if self.budget then
    debug.sethook(co, function() error("instruction budget exceeded", 2) end, "",
      self.budget)
  end
  local ok, what = coroutine.resume(co, ...)
  if not ok then
    return fault(self, debug.traceback(co, what))
  end
  if coroutine.status(co) == "dead" then
    self.s.closed = true              -- handle returned: the server closes
  elseif what ~= WAIT then
    fault(self, "handle yielded outside conn:recv/conn:send")
  end
end

local function take_sent(self, from)
  return table.concat(self.s.chunks, "", from)
end

-- Opens a connection to handler (a path or a value). opts: peer, budget.
function M.open(handler, opts)
  opts = opts or {}
  local name = type(handler) == "string" and handler or "handler"
  if type(handler) == "string" then
    local h, err = M.load(handler)
    if err then
      error(err, 2)
    end
    handler = h
  end
  local kind, err = M.kind(handler, name)
  if not kind then
    error(err, 2)
  end
  next_id = next_id + 1
  local s = { id = next_id, peer = opts.peer or "127.0.0.1:40000", state = {},
              inbuf = "", chunks = {}, closed = false, eof = false }
  local self = setmetatable({ handler = handler, kind = kind, s = s,
                              budget = opts.budget }, H)
  self.conn = setmetatable({ _s = s }, conn_mt)
  if kind == "direct" then
    s.co = coroutine.create(handler.handle)
    resume(self, self.conn)
  elseif kind == "callbacks" and handler.on_open then
    reply(self, call(self, handler.on_open, self.conn))
  end
  return self
end

-- The client sends data; returns what the handler sent in response.
function H:input(data)
  local s, from = self.s, #self.s.chunks + 1
  if s.closed or s.eof then
    return ""
  end
  if self.kind == "direct" then
    s.inbuf = s.inbuf .. data
    if coroutine.status(s.co) == "suspended" then
      resume(self)
    end
  else
    local fn = self.kind == "fn" and self.handler or self.handler.on_data
    if fn then
      reply(self, call(self, fn, self.conn, data))
    end
  end
  return take_sent(self, from)
end

-- The client shuts down its side; returns what the handler sent then.
function H:eof()
  local s, from = self.s, #self.s.chunks + 1
  s.eof = true
  if self.kind == "direct" then
    if coroutine.status(s.co) == "suspended" then
      resume(self)
    end
  else
    s.closed = true                   -- callbacks: nothing more will come
  end
  return take_sent(self, from)
end

-- Time passes: a recv waiting with a timeout returns nil, "timeout".
function H:timeout()
  local s, from = self.s, #self.s.chunks + 1
  if self.kind == "direct" and coroutine.status(s.co) == "suspended" then
    resume(self, "timeout")
  end
  return take_sent(self, from)
end

-- The connection goes away (reason as the server gives it): on_close.
function H:finish(reason)
  if self.finished then
    return
  end
  self.finished = true
  if not reason then
    reason = self.error and "error" or (self.s.eof and "eof") or "closed"
  end
  local s = self.s
  if self.kind == "callbacks" and self.handler.on_close then
    local ok, err = call(self, self.handler.on_close, self.conn, reason)
    if not ok then
      fault(self, err)
    end
  elseif self.kind == "direct" and coroutine.status(s.co) == "suspended" then
    s.closed = true
    resume(self, nil, "closed", 0)
  end
  s.closed = true
end

-- Everything sent so far, and whether the handler side has closed.
function H:sent()
  return table.concat(self.s.chunks)
end

function H:closed()
  return self.s.closed
end

-- Runs handler over inputs (strings, M.CLOSE, M.TIMEOUT) and returns
-- { sent = all bytes, chunks = each send, closed = bool, error = msg|nil }.
-- Inputs after the handler closed are not delivered.
function M.run(handler, inputs, opts)
  local h = M.open(handler, opts)
  for _, item in ipairs(inputs or {}) do
    if h.s.closed then
      break
    elseif item == M.CLOSE then
      h:eof()
    elseif item == M.TIMEOUT then
      h:timeout()
    else
      h:input(item)
    end
  end
  local closed = h.s.closed
  h:finish()
  return { sent = h:sent(), chunks = h.s.chunks, closed = closed, error = h.error,
           state = h.s.state }
end

return M
