-- The in-memory interpreter of handlers: runs a handler file (or value)
-- against scripted client events, with no sockets, under the contract of
-- README "Handlers" (the loader, the conn results, the close reasons, the
-- budget and the memory cap), and reports what it sent and how it ended.
--
--   local harness = require "echohost.harness"
--   local r = harness.run("scripts/upper.lua", {"ab", "c", harness.CLOSE})
--   assert(r.sent == "ABC" and r.closed and r.reason == "eof")
--
-- harness.open(handler [, opts]) -> h. handler: a path (loaded by
--   echohost.loader, as the server loads it) or a handler value (checked by
--   loader.check). A handler that is refused raises the loader's message
--   unchanged ("path:3: unexpected symbol near 'end'"). opts:
--     peer    conn.peer (default "127.0.0.1:40000")
--     budget  VM instructions per callback, resume or load (default
--             harness.BUDGET = 100000000; 0 or false: no limit):
--             "instruction budget exceeded"
--     mem     bytes the handler may add to the Lua heap (default
--             harness.MEM = 64 MiB; 0 or false: no cap), checked every 1000
--             instructions after an emergency collection: "not enough memory"
--     high_water  the longest frame of conn:receive/receiveuntil (default
--             harness.HIGH_WATER = 256 KiB, the server's --high-water)
--     idle_timeout, shutdown_at  virtual deadlines for conn:sleep: a sleep
--             longer than idle_timeout ends the connection after
--             idle_timeout ("timeout"), one past the clock time shutdown_at
--             ends it then ("shutdown"); it returns nil, "closed", 0
--     settings  what require("echohost.settings") gives a handler loaded from
--             a path (the server's --set key=value): a table of strings,
--             string keys (default {}); each open loads a fresh copy, which
--             the handler may modify without the caller or another open
--             seeing it. Another key or value raises.
--   A handler loaded from a path also gets require("echohost.log"): error,
--   warn, info, debug(fmt, ...) (string.format; fmt as is when alone), each
--   appending one line to h.logs, the server's log line without its
--   timestamp and pid: "<level>: handler <file>:<line>: <message>", file:line
--   the caller's ("warn: handler scripts/x.lua:4: saw 3 bytes"); every level
--   is kept (the server's --log-level does not apply). A fmt that is not a
--   string raises "file:line: bad argument #1 to 'warn' (string expected,
--   got nil)". (A handler value was made outside the loader: it gets neither
--   module.)
--   on_open runs (or handle starts) in open. The conn is echohost.conn
--   (lua/echohost/conn.lua) over the harness's operations; conn:sleep is
--   virtual: it returns at once and advances h:clock(), firing the timers
--   (conn:after, conn:every) due on the way before it returns. A timer's
--   fn(conn) runs like a callback (budget, memory cap, may not wait; an
--   error ends the connection with "error" and is logged in h.log).
-- Steps of h, each returning what the handler sent during it:
--   h:input(data)  the client sends data (ignored once the connection ended)
--   h:eof()        the client shuts its side down: a waiting recv gets
--                  nil, "closed", 0; a function or callbacks handler closes
--   h:timeout()    a settimeout passes: a waiting recv gets nil, "timeout", 110
--   h:advance(secs)  the virtual clock moves by secs (>= 0), firing every
--                  timer due on the way, in due order (equals in arming
--                  order); a parked handle coroutine stays parked. The
--                  idle_timeout and shutdown_at deadlines apply to sleeps only
--   h:reset()      the client resets (RST): reason "reset"; recv and send
--                  get nil, "closed", 104
--   h:idle()       the idle timeout: reason "timeout"; nil, "closed", 0
--   h:shutdown()   the server's drain deadline: reason "shutdown"; same
--   h:finish([how]) ends the connection if it is still open, as the client
--                  would: how = "eof" (default), "reset", "timeout" (idle) or
--                  "shutdown"; returns the reason
-- A connection ends once, with a reason of README's table ("eof", "closed",
-- "error", "reset", "timeout", "shutdown"); on_close(conn, reason) runs then.
-- Queries: h:sent() (all bytes so far), h:closed() (whether it ended),
-- h:ending() (what the client's reads end with: "open", "closed" after the
-- end or the handler's conn:shutdown("send"), "reset" after conn:reset()),
-- h:clock() (the virtual seconds slept since open),
-- h:reason() (nil while open), h.error (the first error, with its
-- traceback), h.log (the errors the server would log, in order; not the
-- handler's own lines, which are h.logs, in order), h.conn,
-- h.kind ("fn", "callbacks", "direct"), h.modules (local modules loaded).
--
-- harness.run(handler, inputs [, opts]): open, then each input in turn
-- (a string: h:input; harness.CLOSE: h:eof; harness.TIMEOUT: h:timeout;
-- harness.advance(secs), a marker: h:advance(secs);
-- harness.RESET, harness.IDLE, harness.SHUTDOWN: h:reset, h:idle,
-- h:shutdown) until the connection ends, then h:finish(). Returns
-- { sent = all bytes, chunks = each send, closed = whether it ended before
-- finish, reason = how it ended, error = the first error or nil, log = the
-- errors logged, logs = the lines of echohost.log (h.logs), state =
-- conn.state }.
local conn = require "echohost.conn"
local loader = require "echohost.loader"

local M = {}

M.BUDGET = 100000000                -- the server's --lua-budget default
M.MEM = 64 * 1024 * 1024            -- the server's --lua-mem default
M.HIGH_WATER = conn.HIGH_WATER      -- the server's --high-water default

local ECONNRESET, ETIMEDOUT = 104, 110   -- Linux errnos, as the server reports them
local NOMEM = "not enough memory"

local function marker(name)
  return setmetatable({}, { __tostring = function() return "harness." .. name end })
end

-- Scripted events in the inputs of run().
M.CLOSE, M.TIMEOUT, M.RESET = marker("CLOSE"), marker("TIMEOUT"), marker("RESET")
M.IDLE, M.SHUTDOWN = marker("IDLE"), marker("SHUTDOWN")

local ADVANCE = { __tostring = function(m) return ("harness.advance(%s)"):format(m.secs) end }

local function check_secs(secs, fname)
  if type(secs) ~= "number" then
    error(("bad argument #1 to '%s' (number expected, got %s)"):format(fname, type(secs)), 3)
  elseif not (secs >= 0 and secs <= 1e7) then
    error(("bad argument #1 to '%s' (expected seconds >= 0)"):format(fname), 3)
  end
end

-- The marker of run() for h:advance(secs).
function M.advance(secs)
  check_secs(secs, "advance")
  return setmetatable({ secs = secs }, ADVANCE)
end

local WAIT = {}                     -- what a parked handle coroutine yields

-- Running handler code: the budget, the memory cap, errors -------------------

local H = {}
H.__index = H

local next_id = 0

-- A count hook enforcing self's budget and memory cap (nil: none needed),
-- and its count.
local function make_hook(self)
  local budget, mem, base = self.budget, self.mem, self.base
  if not budget and not mem then
    return nil
  end
  local step = budget and math.min(budget, 1000) or 1000
  local used = 0
  return function()
    used = used + step
    if budget and used >= budget then
      used = 0                      -- as a C count hook: again after budget more
      error("instruction budget exceeded", 2)
    end
    if mem and collectgarbage("count") * 1024 - base > mem then
      collectgarbage()              -- the emergency collection of the allocator
      if collectgarbage("count") * 1024 - base > mem then
        error(NOMEM, 0)
      end
    end
  end, step
end

-- The message of an error as the server logs it: with a traceback, except
-- for a memory error (Lua calls no message handler for those).
local function traceback(e, co)
  if type(e) ~= "string" then
    e = ("(error object is a %s value)"):format(type(e))
  end
  if e == NOMEM then
    collectgarbage()
    return e
  end
  if co then
    return debug.traceback(co, e)
  end
  return debug.traceback(e, 2)
end

-- pcall or xpcall(f, ...) under the hook of self; restores the caller's hook.
local function guarded(self, msgh, f, ...)
  local hook, step = make_hook(self)
  local old = table.pack(debug.gethook())
  if hook then
    debug.sethook(hook, "", step)
  end
  local r
  if msgh then
    r = table.pack(xpcall(f, msgh, ...))
  else
    r = table.pack(pcall(f, ...))
  end
  if hook and type(old[1]) == "function" then
    debug.sethook(table.unpack(old, 1, old.n))
  elseif hook then
    debug.sethook()
  end
  return table.unpack(r, 1, r.n)
end

local function call(self, f, ...)
  return guarded(self, traceback, f, ...)
end

-- Records an error the server would log.
local function record(self, err)
  self.log[#self.log + 1] = err
  self.error = self.error or err
end

local end_conn

-- A handler error: logged; the connection ends with "error" (after the
-- output queued so far).
local function fault(self, err)
  record(self, err)
  end_conn(self, "error")
end

-- Resumes a parked handle coroutine with why ("data", "eof", "timeout",
-- "gone"); records its fault.
local function resume(self, ...)
  local co = self.s.co
  if coroutine.status(co) ~= "suspended" then
    return
  end
  local hook, step = make_hook(self)
  if hook then
    debug.sethook(co, hook, "", step)
  end
  local ok, what = coroutine.resume(co, ...)
  if hook then
    debug.sethook(co)
  end
  if not ok then
    fault(self, traceback(what, co))
  elseif coroutine.status(co) == "suspended" and what ~= WAIT then
    fault(self, "handle yielded outside conn:recv/conn:send")
  end
end

-- The connection ends (once): a parked coroutine sees it, on_close runs.
function end_conn(self, reason)
  local s = self.s
  if s.reason then
    return
  end
  s.reason, s.code = reason, reason == "reset" and ECONNRESET or 0
  conn.gone(s.core, s.code)
  if self.kind == "direct" and s.parked then
    resume(self, "gone")
  elseif self.kind == "callbacks" and self.h.on_close then
    local ok, err = call(self, self.h.on_close, self.conn, reason)
    if not ok then
      record(self, err)
    end
  end
end

-- After each step: a close by the handler (or handle returning) ends the
-- connection once the step's output is out.
local function settle(self)
  local s = self.s
  if s.reason then
    return
  end
  if s.closing or (self.kind == "direct" and coroutine.status(s.co) == "dead") then
    end_conn(self, (s.eof and not s.rst) and "eof" or "closed")
  end
end

-- What a callback returned: a reply is sent, even after conn:close().
local function reply(self, ok, r)
  if not ok then
    return fault(self, r)
  end
  if r ~= nil and type(r) ~= "string" then
    return fault(self, ("handler returned a %s (expected a string or nil)"):format(type(r)))
  end
  if r and #r > 0 and not (self.s.reason or self.s.rst or self.s.core.wshut) then
    self.s.chunks[#self.s.chunks + 1] = r
  end
end

-- Timers on the virtual clock ------------------------------------------------

-- Timer times are integer nanoseconds, so that every(0.1) is due at 0.3
-- exactly as after(0.3) is.
local function ns(secs)
  return math.floor(secs * 1e9 + 0.5)
end

-- The armed timer of self due first (the first armed among equals), or nil.
local function earliest(self)
  local first
  for _, t in ipairs(self.s.core.timers) do
    if not first or t.due < first.due then
      first = t
    end
  end
  return first
end

-- Runs the timer t like a callback: the budget, the memory cap; an error
-- ends the connection with "error". It may not wait (s.in_timer).
local function fire(self, t)
  local s = self.s
  s.in_timer = true
  local ok, err = call(self, t.fn, t.conn)
  s.in_timer = false
  if not ok then
    fault(self, err)
  end
  if conn.timer_done(t) then
    t.due = t.due + math.max(1, ns(t.period))
  end
end

-- Moves the clock to `to` (seconds), firing on the way every timer due by
-- then, in due order, the clock at each one's time; stops at a timer that
-- closed or ended the connection.
local function advance_to(self, to)
  local s, limit = self.s, ns(to)
  while true do
    local t = earliest(self)
    if not t or t.due > limit then
      break
    end
    s.clock = math.max(s.clock, t.due / 1e9)
    fire(self, t)
    if conn.done(s.core) then
      return
    end
  end
  s.clock = math.max(s.clock, to)
end

-- The conn object: echohost.conn over the harness's operations ------------

-- The earliest virtual deadline of self within secs of now (opts.idle_timeout
-- from the sleep's start, opts.shutdown_at): its clock time and the reason
-- it ends the connection with, or nil.
local function deadline(self, secs)
  local s, t, why = self.s, nil, nil
  if self.idle_timeout and self.idle_timeout < secs then
    t, why = s.clock + self.idle_timeout, "timeout"
  end
  if self.shutdown_at and self.shutdown_at < s.clock + secs
      and (not t or self.shutdown_at < t) then
    t, why = math.max(s.clock, self.shutdown_at), "shutdown"
  end
  return t, why
end

local function ops_of(self)
  local s = self.s
  local ops = {}
  -- What the client sent, up to max (0: all); parks a handle coroutine.
  function ops.recv(max)
    while true do
      if s.reason then
        return nil, "closed", s.code
      elseif #s.inbuf > 0 then
        break
      elseif s.eof then
        return nil, "closed", 0
      elseif coroutine.running() ~= s.co or s.in_timer then
        return false
      end
      s.parked = true
      local why = coroutine.yield(WAIT)
      s.parked = false
      if why == "timeout" and s.core.timeout then
        return nil, "timeout", ETIMEDOUT
      end
    end
    local n = max > 0 and math.min(max, #s.inbuf) or #s.inbuf
    local data = s.inbuf:sub(1, n)
    s.inbuf = s.inbuf:sub(n + 1)
    return data
  end
  function ops.send(data)
    if #data > 0 then
      s.chunks[#s.chunks + 1] = data
    end
    return #data
  end
  function ops.close()
    s.closing = true
  end
  function ops.shutdown()
    s.wshut = true                  -- the client reads EOF after what was sent
  end
  function ops.reset()
    s.closing, s.rst = true, true
  end
  -- Virtual time: returns at once; the clock advances by secs, or to a
  -- deadline that ends the connection first, firing the timers due on the
  -- way (one that closes the connection ends the sleep: nil, "closed").
  function ops.sleep(secs)
    if coroutine.running() ~= s.co or s.in_timer then
      return false
    end
    local t, why = deadline(self, secs)
    advance_to(self, t or s.clock + secs)
    if conn.done(s.core) then
      return nil, "closed", s.core.code
    elseif t then
      s.clock = t
      end_conn(self, why)
      return nil, "closed", s.code
    end
    return true
  end
  function ops.arm(t, secs)
    t.due = ns(s.clock) + ns(secs)
  end
  return ops
end

-- A harness connection ------------------------------------------------------

local function limit(v, default)
  if v == nil then
    return default
  elseif v == false or v == 0 then
    return nil
  end
  return v
end

-- opts.settings, checked: a table of strings with string keys.
local function settings_of(settings)
  if settings == nil then
    return {}
  elseif type(settings) ~= "table" then
    error(("bad option 'settings' to 'open' (table expected, got %s)"):format(type(settings)), 3)
  end
  for k, v in pairs(settings) do
    if type(k) ~= "string" or type(v) ~= "string" then
      error(("bad option 'settings' to 'open' (strings expected, got %s %s = %s)")
        :format(type(k), tostring(k), type(v)), 3)
    end
  end
  return settings
end

-- The modules the harness provides to a handler it loads.
local function provided(self, settings)
  local logs = self.logs
  return { [loader.SETTINGS] = settings,
           ["echohost.log"] = loader.logger(function(_, line) logs[#logs + 1] = line end) }
end

-- Opens a connection to handler (a path or a value); see the header.
function M.open(handler, opts)
  opts = opts or {}
  local settings = settings_of(opts.settings)
  collectgarbage()
  local self = setmetatable({ budget = limit(opts.budget, M.BUDGET),
                              mem = limit(opts.mem, M.MEM),
                              idle_timeout = opts.idle_timeout, shutdown_at = opts.shutdown_at,
                              base = collectgarbage("count") * 1024, log = {}, logs = {} }, H)
  local h, err
  if type(handler) == "string" then
    local ok
    ok, h, err = guarded(self, nil, loader.load, handler, provided(self, settings))
    if not ok then                  -- raised past the loader's pcall
      err = (type(h) == "string" and h or "error"):match("^[^\n]*")
      h = nil
      if err:sub(1, #handler) ~= handler then
        err = handler .. ": " .. err
      end
    end
  else
    h, err = loader.check(handler, "handler")
  end
  if not h then
    error(err, 0)
  end
  next_id = next_id + 1
  local s = { inbuf = "", chunks = {}, closing = false, eof = false, parked = false,
              clock = 0 }
  self.h, self.kind, self.modules, self.s = h, h.kind, h.modules, s
  self.conn, s.core = conn.new(ops_of(self), { id = next_id,
    peer = opts.peer or "127.0.0.1:40000", high_water = opts.high_water or M.HIGH_WATER })
  s.state = s.core.state
  if h.kind == "direct" then
    s.co = coroutine.create(h.handle)
    resume(self, self.conn)
  elseif h.on_open then
    reply(self, call(self, h.on_open, self.conn))
  end
  settle(self)
  return self
end

local function take_sent(self, from)
  return table.concat(self.s.chunks, "", from)
end

-- The client sends data; returns what the handler sent in response.
function H:input(data)
  local s, from = self.s, #self.s.chunks + 1
  if type(data) ~= "string" then
    error(("bad argument #1 to 'input' (string expected, got %s)"):format(type(data)), 2)
  end
  if s.reason or s.eof then
    return ""
  end
  if self.kind == "direct" then
    s.inbuf = s.inbuf .. data
    if s.parked then
      resume(self, "data")
    end
  elseif self.h.on_data then
    reply(self, call(self, self.h.on_data, self.conn, data))
  end
  settle(self)
  return take_sent(self, from)
end

-- The client shuts down its side; returns what the handler sent then.
function H:eof()
  local s, from = self.s, #self.s.chunks + 1
  if s.reason or s.eof then
    return ""
  end
  s.eof = true
  if self.kind ~= "direct" then
    end_conn(self, "eof")             -- nothing more will come: close
  elseif s.parked then
    resume(self, "eof")
  end
  settle(self)
  return take_sent(self, from)
end

-- Time passes: a recv waiting with a timeout returns nil, "timeout", 110.
function H:timeout()
  local s, from = self.s, #self.s.chunks + 1
  if not s.reason and s.parked then
    resume(self, "timeout")
  end
  settle(self)
  return take_sent(self, from)
end

-- Time passes: the clock moves by secs, firing the timers due on the way
-- (in due order; those due at the same time in the order they were armed).
function H:advance(secs)
  check_secs(secs, "advance")
  local s, from = self.s, #self.s.chunks + 1
  local to = s.clock + secs
  advance_to(self, to)
  s.clock = math.max(s.clock, to)
  settle(self)
  return take_sent(self, from)
end

local function ended_by(reason)
  return function(self)
    local from = #self.s.chunks + 1
    end_conn(self, reason)
    return take_sent(self, from)
  end
end

H.reset = ended_by("reset")         -- the client resets the connection
H.idle = ended_by("timeout")        -- --idle-timeout passes
H.shutdown = ended_by("shutdown")   -- the server's drain deadline

local FINISH = { eof = H.eof, reset = H.reset, timeout = H.idle, shutdown = H.shutdown }

-- Ends the connection if it is still open (how: see the header); returns
-- the reason it ended with.
function H:finish(how)
  local step = FINISH[how or "eof"]
  if not step then
    error(("bad argument #1 to 'finish' (eof, reset, timeout or shutdown expected, got %s)")
      :format(tostring(how)), 2)
  end
  if not self.s.reason then
    step(self)
    end_conn(self, how or "eof")      -- a handle that is still running
  end
  return self.s.reason
end

-- Everything sent so far.
function H:sent()
  return table.concat(self.s.chunks)
end

-- Whether the connection has ended.
function H:closed()
  return self.s.reason ~= nil
end

-- How it ended ("eof", "closed", "error", "reset", "timeout", "shutdown"),
-- nil while it is open.
function H:reason()
  return self.s.reason
end

-- What the client's reads end with: "open" (they would wait), "closed"
-- (EOF: the connection ended or the handler shut its sending side) or
-- "reset" (the handler called conn:reset()).
function H:ending()
  local s = self.s
  if s.rst then
    return "reset"
  elseif s.reason or s.wshut then
    return "closed"
  end
  return "open"
end

-- The virtual clock: the seconds slept (conn:sleep) and advanced
-- (h:advance) since open.
function H:clock()
  return self.s.clock
end

local STEPS = { [M.CLOSE] = H.eof, [M.TIMEOUT] = H.timeout, [M.RESET] = H.reset,
                [M.IDLE] = H.idle, [M.SHUTDOWN] = H.shutdown }

-- Runs handler over inputs; see the header. Inputs after the connection
-- ended are not delivered.
function M.run(handler, inputs, opts)
  local h = M.open(handler, opts)
  for i, item in ipairs(inputs or {}) do
    if h:closed() then
      break
    elseif STEPS[item] then
      STEPS[item](h)
    elseif getmetatable(item) == ADVANCE then
      h:advance(item.secs)
    elseif type(item) == "string" then
      h:input(item)
    else
      error(("bad input #%d to 'run' (a string or a harness marker expected, got %s)")
        :format(i, type(item)), 2)
    end
  end
  local closed = h:closed()
  h:finish()
  return { sent = h:sent(), chunks = h.s.chunks, closed = closed, reason = h:reason(),
           error = h.error, log = h.log, logs = h.logs, state = h.s.state }
end

return M
