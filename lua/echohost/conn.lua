-- The "echohost.conn" object of the Lua interpreters (echohost.harness and
-- echohost.tcp_srv): one implementation of README "The conn object" over an
-- operations table that each interpreter provides, as src/lconn.c is over
-- struct lconn_ops for the event and fork runtimes. It knows no runtime:
-- the receive buffer and its framing, the closed and ended states, the
-- argument checks and every message are here.
--
--   local conn = require "echohost.conn"
--   local c, core = conn.new(ops, { id = 1, peer = "127.0.0.1:40000" })
--   ...
--   conn.gone(core, 104)             -- the connection ended (a reset)
--
-- ops (each called only while the connection is open and the handler has
-- not closed or reset it; what is "recv", "receive" or "receiveuntil"):
--   recv(max, what)   up to max bytes (0: all there is), waiting (and
--                     honouring core.timeout) if nothing is there: the
--                     bytes, or nil, "closed", code (EOF: 0; a reset:
--                     104), nil, "timeout", 110, nil, message, errno; or
--                     false when it would have to wait where no coroutine
--                     of the connection runs (the conn raises
--                     M.would_wait("conn:<what>", true)), or false, message
--                     (the conn raises message: M.busy(...), ...)
--   send(data)        #data, or nil, message, code; false[, message] as recv
--                     (a send that would wait: M.would_wait("conn:send"))
--   sleep(secs)       true after secs; nil, "closed", code if the
--                     connection ended meanwhile; false[, message] as recv
--                     (M.would_wait("conn:sleep"))
--   close()           flush, then close
--   shutdown()        flush, then shut the sending side (FIN)
--   reset()           close at once (an RST where the interpreter can),
--                     queued output dropped
--   settimeout(secs)  optional: core.timeout changed (nil: none)
--   arm(t, secs)      schedule the timer record t (conn:after, conn:every)
--                     secs from now; false, message where the interpreter
--                     has no timers (the conn raises message)
--   disarm(t)         optional: t is cancelled before it fired
--   spawn(fn, ...)    conn:spawn: run fn(...) as a new coroutine of the
--                     connection, at once until it first waits or returns;
--                     true, or false, message (the conn raises message:
--                     M.too_many_tasks(), or "not available" where the
--                     interpreter has no coroutines)
--   subscribe(r)      conn:subscribe: the subscription record r (r.channel,
--                     r.fn, r.conn) gets the messages published on
--                     r.channel from now on; the interpreter calls
--                     r.fn(r.conn, message, channel) like a timer's function
--                     while r.core is set; true, or false, message (the conn
--                     raises message: no pubsub in this interpreter)
--   unsubscribe(r)    r is cancelled (conn:cancel, close, reset, the end)
--
-- Timers (README "Timers"): conn:after(secs, fn), conn:every(secs, fn) and
-- timer:cancel() are here, with their checks, the limit of M.TIMERS_MAX
-- armed timers and the cancelling of every timer at close, reset and the
-- end (M.gone). A timer record t has t.fn, t.period (every: secs; after:
-- 0) and t.conn; core.timers lists the armed records in arming order. The
-- interpreter keeps the clock: when t is due it calls t.fn(t.conn) like a
-- callback, then M.timer_done(t): true when t is to fire again, period
-- seconds later (an every that was not cancelled meanwhile), else t is
-- released (tostring: "cancelled").
--
-- Upstream sockets (README "Coroutines of a connection and upstream
-- sockets"): new(ops, { upstream = true, ... }) makes the conn object of an
-- upstream socket: the same verbs, but after, every and spawn raise
-- M.upstream_only(name) (after their argument checks). The handler-facing
-- "echohost.socket" of a Lua interpreter is M.socket_module(connect):
-- connect(host, port [, timeout]) checks its arguments (M.check_connect)
-- and calls connect(host, port, timeout, address) (address: M.address),
-- whose results it returns; every other function of echohost.socket raises
-- "echohost.socket.<name> is not available in a handler". The messages of
-- connect's misuse are M.CONNECT_AT_LOAD and M.would_wait(M.CONNECT), and
-- M.too_many_upstreams().
--
-- new(ops, opts) -> conn, core. opts: id, peer, state (default {}),
-- high_water (the longest frame of receive; default M.HIGH_WATER, the
-- server's --high-water default), upstream (see above). core is the
-- interpreter's view: its fields timeout, closed (conn:close() or
-- conn:reset()), wshut (conn:shutdown()), ended, code, buf (bytes read past
-- a frame), state, timers (the armed timer records, in arming order),
-- upstream.
local M = {}

M.HIGH_WATER = 256 * 1024
M.DELIM_MAX = 256
M.TIMERS_MAX = 64                   -- armed timers per connection
M.SUBS_MAX = 64                     -- subscriptions per connection
M.TASKS_MAX = 64                    -- coroutines per connection, handle included
M.UPSTREAMS_MAX = 64                -- open upstream sockets per connection
M.CONNECT_TIMEOUT = 60              -- seconds, socket.connect's default

-- The messages every interpreter shares ------------------------------------

M.WAIT_RULE = "only a coroutine of the connection (handle, conn:spawn) can wait"
M.CONNECT = "echohost.socket.connect"
M.CONNECT_AT_LOAD = "echohost.socket.connect is not available while a handler loads"

-- "conn:recv would wait: only a coroutine of the connection (handle,
-- conn:spawn) can wait for data" (what: "conn:recv"; for_data: the suffix).
function M.would_wait(what, for_data)
  return ("%s would wait: %s%s"):format(what, M.WAIT_RULE, for_data and " for data" or "")
end

-- "conn:recv: another coroutine is waiting to read this connection" (dir:
-- "read" or "write"; obj: "connection" or "upstream socket").
function M.busy(what, dir, obj)
  return ("%s: another coroutine is waiting to %s this %s"):format(what, dir, obj)
end

-- A conn:recv of a callbacks (or per-message) handler's conn that would wait:
-- the data goes to on_data.
function M.to_on_data(what)
  return ("%s: the data of this connection goes to on_data"):format(what)
end

function M.too_many_tasks()
  return ("too many coroutines on this connection (at most %d)"):format(M.TASKS_MAX)
end

function M.too_many_upstreams()
  return ("too many upstream sockets on this connection (at most %d)"):format(M.UPSTREAMS_MAX)
end

-- name: "after", "every", "spawn".
function M.upstream_only(name)
  return ("%s is not available on an upstream socket: timers, coroutines and subscriptions "
    .. "belong to "
    .. "the client's conn"):format(name)
end

local WOULD_WAIT = {}               -- a frame read that may not wait

local Conn = {}
local conn_mt = {}

local function core_of(self)
  return rawget(self, "_c")
end

-- Whether the handler closed it or the connection ended.
local function done(c)
  return c.closed or c.ended
end

-- Timers ---------------------------------------------------------------------

local Timer = {}
local timer_mt = { __name = "echohost.timer", __index = Timer }

-- Takes the record t off its connection (once).
local function release(t)
  local c = t.core
  if not c then
    return
  end
  for i, u in ipairs(c.timers) do
    if u == t then
      table.remove(c.timers, i)
      break
    end
  end
  t.core = nil
end

local function cancel(t)
  if t.core then
    local disarm = t.core.ops.disarm
    if disarm and not done(t.core) then
      disarm(t)
    end
    release(t)
  end
end

local unsubscribe

-- Every timer and subscription of c: at close, reset and when the
-- connection ends.
local function cancel_all(c)
  while c.timers[1] do
    cancel(c.timers[1])
  end
  while c.subs[1] do
    unsubscribe(c.subs[1])
  end
end

function M.timer_done(t)
  local c = t.core
  if c and t.period > 0 and not done(c) then
    return true
  end
  release(t)
  return false
end

function Timer:cancel()
  local t = getmetatable(self) == timer_mt and rawget(self, "_t")
  if not t then
    error(("bad argument #1 to 'cancel' (echohost.timer expected, got %s)"):format(type(self)), 2)
  end
  cancel(t)
  return true
end

function timer_mt.__tostring(self)
  return rawget(self, "_t").core and "echohost.timer (armed)" or "echohost.timer (cancelled)"
end

function timer_mt.__newindex()
  error("echohost.timer fields are read-only", 2)
end

-- conn:after and conn:every (what); raises at the handler's call.
local function arm(self, what, secs, fn)
  local c = core_of(self)
  if type(secs) ~= "number" then
    error(("bad argument #1 to '%s' (number expected, got %s)"):format(what, type(secs)), 3)
  elseif what == "every" and not (secs > 0 and secs <= 1e7) then
    error("bad argument #1 to 'every' (expected seconds > 0)", 3)
  elseif what == "after" and not (secs >= 0 and secs <= 1e7) then
    error("bad argument #1 to 'after' (expected seconds >= 0)", 3)
  elseif type(fn) ~= "function" then
    error(("bad argument #2 to '%s' (function expected, got %s)"):format(what, type(fn)), 3)
  elseif c.upstream then
    error(M.upstream_only(what), 3)
  end
  if done(c) then
    return nil, "closed", c.code
  elseif #c.timers >= M.TIMERS_MAX then
    error(("too many timers on this connection (at most %d)"):format(M.TIMERS_MAX), 3)
  end
  local t = { fn = fn, period = what == "every" and secs or 0, conn = self, core = c }
  local ok, err = c.ops.arm(t, secs)
  if ok == false then
    error(err, 3)
  end
  c.timers[#c.timers + 1] = t
  return setmetatable({ _t = t }, timer_mt)
end

function Conn:after(secs, fn)
  return arm(self, "after", secs, fn)
end

function Conn:every(secs, fn)
  return arm(self, "every", secs, fn)
end

-- Subscriptions --------------------------------------------------------------

local Sub = {}
local sub_mt = { __name = "echohost.subscription", __index = Sub }

function unsubscribe(r)
  local c = r.core
  if not c then
    return
  end
  for i, u in ipairs(c.subs) do
    if u == r then
      table.remove(c.subs, i)
      break
    end
  end
  r.core = nil
  c.ops.unsubscribe(r)
end

function Sub:cancel()
  local r = getmetatable(self) == sub_mt and rawget(self, "_r")
  if not r then
    error(("bad argument #1 to 'cancel' (echohost.subscription expected, got %s)")
      :format(type(self)), 2)
  end
  unsubscribe(r)
  return true
end

function sub_mt.__tostring(self)
  return rawget(self, "_r").core and "echohost.subscription (active)"
    or "echohost.subscription (cancelled)"
end

function sub_mt.__newindex()
  error("echohost.subscription fields are read-only", 2)
end

-- conn:subscribe(channel, fn): the subscription, or nil, "closed", code
-- once the connection is closed.
function Conn:subscribe(channel, fn)
  local c = core_of(self)
  if type(channel) ~= "string" or #channel < 1 or #channel > 250 then
    error("bad argument #1 to 'subscribe' (channel of 1..250 bytes expected)", 2)
  elseif type(fn) ~= "function" then
    error(("bad argument #2 to 'subscribe' (function expected, got %s)"):format(type(fn)), 2)
  elseif c.upstream then
    error(M.upstream_only("subscribe"), 2)
  elseif done(c) then
    return nil, "closed", c.code
  elseif #c.subs >= M.SUBS_MAX then
    error(("too many subscriptions on this connection (at most %d)"):format(M.SUBS_MAX), 2)
  end
  local r = { channel = channel, fn = fn, conn = self, core = c }
  local ok, err = c.ops.subscribe(r)
  if ok == false then
    error(err, 2)
  end
  c.subs[#c.subs + 1] = r
  return setmetatable({ _r = r }, sub_mt)
end

-- The connection ended (once): later calls report code (0, or 104 after a
-- reset), unless the handler had closed it (0). Its timers are cancelled.
function M.gone(c, code)
  cancel_all(c)
  c.ended = true
  if not c.closed then
    c.code = code or 0
  end
end

function M.done(c)
  return done(c) and true or false
end

local function closed(c)
  return nil, "closed", c.code
end

-- Takes n bytes off the buffer (and skip more after them).
local function take(c, n, skip)
  local data = c.buf:sub(1, n)
  c.buf = c.buf:sub(n + 1 + (skip or 0))
  return data
end

-- The frame if the buffer holds it, else nil. kind: "l", "a", "n", "u".
local function frame(c, kind, arg)
  local buf = c.buf
  if kind == "l" then
    local at = buf:find("\n", 1, true)
    if at then
      local n = (at > 1 and buf:byte(at - 1) == 13) and at - 2 or at - 1
      return take(c, n, at - n)
    end
  elseif kind == "n" then
    if #buf >= arg then
      return take(c, arg)
    end
  elseif kind == "u" then
    local at = buf:find(arg, 1, true)
    if at then
      return take(c, at - 1, #arg)
    end
  end
  return nil                        -- "a": complete at EOF only
end

-- Reads until the buffer holds the frame: its results, or WOULD_WAIT.
local function receive(c, kind, arg, what)
  while true do
    local f = frame(c, kind, arg)
    if f then
      return f
    elseif #c.buf >= c.high_water then
      return nil, "too long", 0
    elseif done(c) then
      return closed(c)
    end
    local data, err, code = c.ops.recv(c.high_water - #c.buf, what)
    if data == false then
      return WOULD_WAIT, err
    elseif data then
      c.buf = c.buf .. data
    elseif err == "closed" then
      local partial = take(c, #c.buf)
      if kind == "a" then
        return partial
      end
      return nil, "closed", code, partial
    else
      return nil, err, code         -- a timeout: the buffer stays
    end
  end
end

-- The message of an op that returned false (and maybe its message): what
-- ("recv") would wait.
local function wait_error(what, msg, for_data)
  return msg or M.would_wait("conn:" .. what, for_data)
end

-- The results of a frame read by what ("receive", "receiveuntil"); raises
-- at the handler's call when it would have to wait.
local function framed(c, kind, arg, what)
  local r = table.pack(receive(c, kind, arg, what))
  if r[1] == WOULD_WAIT then
    error(wait_error(what, r[2], true), 3)
  end
  return table.unpack(r, 1, r.n)
end

function Conn:recv(max)
  local c = core_of(self)
  if max ~= nil and (math.type(max) ~= "integer" or max < 0) then
    error("bad argument #1 to 'recv' (expected a positive size)", 2)
  end
  if #c.buf > 0 then                -- bytes a receive read past its frame
    return take(c, (max and max > 0) and math.min(max, #c.buf) or #c.buf)
  elseif done(c) then
    return closed(c)
  end
  local r = table.pack(c.ops.recv(max or 0, "recv"))
  if r[1] == false then
    error(wait_error("recv", r[2], true), 2)
  end
  return table.unpack(r, 1, r.n)
end

local BAD_PATTERN = "bad argument #1 to 'receive' (expected \"*l\", \"*a\" or a count >= 1)"

function Conn:receive(pattern)
  local c = core_of(self)
  if pattern == nil then
    pattern = "*l"
  end
  if math.type(pattern) == "integer" and pattern >= 1 then
    local r = table.pack(framed(c, "n", pattern, "receive"))
    return table.unpack(r, 1, r.n)
  elseif type(pattern) ~= "string" then
    error(BAD_PATTERN, 2)
  end
  local p = pattern:gsub("^%*", "", 1)
  if p ~= "l" and p ~= "a" then
    error(BAD_PATTERN, 2)
  end
  local r = table.pack(framed(c, p, nil, "receive"))
  return table.unpack(r, 1, r.n)
end

function Conn:receiveuntil(delim)
  if type(delim) ~= "string" or #delim == 0 or #delim > M.DELIM_MAX then
    error("bad argument #1 to 'receiveuntil' (expected a delimiter of 1..256 bytes)", 2)
  end
  local r = table.pack(framed(core_of(self), "u", delim, "receiveuntil"))
  return table.unpack(r, 1, r.n)
end

function Conn:send(data)
  local c = core_of(self)
  if type(data) ~= "string" then
    error(("bad argument #1 to 'send' (string expected, got %s)"):format(type(data)), 2)
  end
  if done(c) then
    return closed(c)
  elseif c.wshut then
    return nil, "closed", 0
  end
  local r = table.pack(c.ops.send(data))
  if r[1] == false then
    error(wait_error("send", r[2]), 2)
  end
  return table.unpack(r, 1, r.n)
end

-- close and reset: the handler ends the connection through ops[op], once.
local function finish(self, op)
  local c = core_of(self)
  if not done(c) then
    cancel_all(c)
    c.closed, c.code = true, 0
    c.ops[op]()
  end
  c.closed = true
  return true
end

function Conn:close()
  return finish(self, "close")
end

function Conn:shutdown(how)
  local c = core_of(self)
  if how ~= nil and type(how) ~= "string" then
    error(("bad argument #1 to 'shutdown' (string expected, got %s)"):format(type(how)), 2)
  elseif how ~= nil and how ~= "send" then
    error(("bad argument #1 to 'shutdown' (invalid option '%s')"):format(how), 2)
  end
  if not done(c) and not c.wshut then
    c.wshut = true
    c.ops.shutdown()
  end
  return true
end

function Conn:reset()
  return finish(self, "reset")
end

function Conn:sleep(secs)
  local c = core_of(self)
  if type(secs) ~= "number" then
    error(("bad argument #1 to 'sleep' (number expected, got %s)"):format(type(secs)), 2)
  elseif not (secs >= 0 and secs <= 1e7) then
    error("bad argument #1 to 'sleep' (expected seconds (>= 0))", 2)
  end
  if done(c) then
    return closed(c)
  end
  local r = table.pack(c.ops.sleep(secs))
  if r[1] == false then
    error(wait_error("sleep", r[2]), 2)
  end
  return table.unpack(r, 1, r.n)
end

function Conn:settimeout(t)
  if t ~= nil and (type(t) ~= "number" or t < 0) then
    error("bad argument #1 to 'settimeout' (expected seconds (>= 0) or nil)", 2)
  end
  local c = core_of(self)
  c.timeout = t
  if c.ops.settimeout then
    c.ops.settimeout(t)
  end
  return true
end

-- conn:spawn(fn, ...): true, or nil, "closed", code once the connection is
-- closed; the interpreter runs fn (ops.spawn).
function Conn:spawn(fn, ...)
  local c = core_of(self)
  if type(fn) ~= "function" then
    error(("bad argument #1 to 'spawn' (function expected, got %s)"):format(type(fn)), 2)
  elseif c.upstream then
    error(M.upstream_only("spawn"), 2)
  elseif done(c) then
    return closed(c)
  end
  local ok, err = c.ops.spawn(fn, ...)
  if ok == false then
    error(err, 2)
  end
  return true
end

-- conn:pipe(to): the definition of every interpreter's pipe (the event
-- runtime moves the bytes in C, with the same results and the same ends):
-- what from receives is sent to to until from ends; its end is passed on
-- (a reset as to:reset(), any other as to:shutdown("send")), and a send
-- that fails resets from. Returns the bytes moved after an EOF (or after
-- from was closed), else nil, message, code and the bytes moved.
function M.pipe(from, to)
  local moved = 0
  while true do
    local data, err, code = from:recv()
    if not data then
      if code == 104 then
        to:reset()
      else
        to:shutdown("send")
      end
      if err == "closed" and code == 0 then
        return moved
      end
      return nil, err, code, moved
    end
    local ok, serr, scode = to:send(data)
    if not ok then
      from:reset()
      return nil, serr, scode, moved
    end
    moved = moved + #data
  end
end

function Conn:pipe(to)
  if getmetatable(to) ~= conn_mt then
    error(("bad argument #1 to 'pipe' (echohost.conn expected, got %s)"):format(type(to)), 2)
  end
  return M.pipe(self, to)
end

function conn_mt.__index(self, k)
  local c = core_of(self)
  if Conn[k] then
    return Conn[k]
  elseif k == "id" or k == "peer" or k == "state" then
    return c[k]
  end
  return nil
end

function conn_mt.__newindex()
  error("echohost.conn fields are read-only (keep your data in conn.state)", 2)
end

function conn_mt.__tostring(self)
  local c = core_of(self)
  return ("echohost.conn %d (%s)"):format(c.id, done(c) and "closed" or c.peer)
end

conn_mt.__close = Conn.close

-- A conn object over ops; see the header.
function M.new(ops, opts)
  opts = opts or {}
  local c = { ops = ops, id = opts.id, peer = opts.peer, state = opts.state or {},
              high_water = opts.high_water or M.HIGH_WATER, buf = "",
              closed = false, wshut = false, ended = false, code = 0, timers = {}, subs = {},
              upstream = opts.upstream and true or false }
  return setmetatable({ _c = c }, conn_mt), c
end

-- The handler's echohost.socket ----------------------------------------------

-- "host:port", an IPv6 host in brackets ("[::1]:7").
function M.address(host, port)
  if host:find(":", 1, true) then
    return ("[%s]:%d"):format(host, port)
  end
  return ("%s:%d"):format(host, port)
end

-- connect's arguments, checked as luaL_check* does (a numeric string is a
-- number): host, port (an integer), timeout (seconds). Raises at the
-- handler's call (level: that of connect's caller, for error).
function M.check_connect(host, port, timeout, level)
  if type(host) ~= "string" and type(host) ~= "number" then
    error(("bad argument #1 to 'connect' (string expected, got %s)"):format(type(host)), level)
  end
  local p = tonumber(port)
  if type(port) ~= "number" and type(port) ~= "string" or not p then
    error(("bad argument #2 to 'connect' (number expected, got %s)"):format(type(port)), level)
  elseif not math.tointeger(p) then
    error("bad argument #2 to 'connect' (number has no integer representation)", level)
  end
  p = math.tointeger(p)
  if p < 1 or p > 65535 then
    error("bad argument #2 to 'connect' (port out of range 1..65535)", level)
  end
  local t = timeout
  if t == nil then
    t = M.CONNECT_TIMEOUT
  else
    t = tonumber(t)
    if not t then
      error(("bad argument #3 to 'connect' (number expected, got %s)"):format(type(timeout)), level)
    elseif not (t >= 0 and t <= 1e7) then
      error("bad argument #3 to 'connect' (expected seconds (>= 0))", level)
    end
  end
  return tostring(host), p, t
end

-- The functions of echohost.socket a handler may not call (they would block).
M.SOCKET_BLOCKING = { "accept", "accept_connection", "close", "close_socket", "fileno",
                      "listen", "open_socket", "peername", "recv", "send", "settimeout",
                      "shutdown", "sockname" }

-- The echohost.socket of a handler; see the header.
function M.socket_module(connect)
  local mod = {}
  function mod.connect(host, port, timeout)
    local h, p, t = M.check_connect(host, port, timeout, 3)
    return connect(h, p, t, M.address(h, p))
  end
  for _, name in ipairs(M.SOCKET_BLOCKING) do
    mod[name] = function()
      error(("echohost.socket.%s is not available in a handler"):format(name), 2)
    end
  end
  return mod
end

return M
