-- The in-memory interpreter of handlers: runs a handler file (or value)
-- against scripted client events, with no sockets, under the contract of
-- README "Handlers" (the loader, the conn results, the close reasons, the
-- budget and the memory cap, the coroutines of a connection, upstream
-- sockets, the shared dictionary), and reports what it sent and how it
-- ended. It is the reference interpreter: deterministic, on a virtual clock.
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
--     upstreams  { ["127.0.0.1:9000"] = handler, ["[::1]:7"] = handler, ... }:
--             the servers echohost.socket.connect reaches (below); each
--             handler a path or a value, loaded (or checked) once, in open,
--             with the open's budget and memory cap (a refused one raises
--             the loader's message; a value is named 'upstream ADDRESS')
--     shared  the echohost.shared of this open: a dictionary made by
--             harness.shared(size), to share one between opens (default: a
--             fresh harness.shared(), 1 MiB, per open)
--     bus     the echohost.pubsub bus of this open: one made by
--             harness.bus(size), to share one between opens (default: a
--             fresh harness.bus(), 1 MiB, per open); see "The bus" below
--   A handler loaded from a path also gets require("echohost.log"): error,
--   warn, info, debug(fmt, ...) (string.format; fmt as is when alone), each
--   appending one line to h.logs, the server's log line without its
--   timestamp and pid: "<level>: handler <file>:<line>: <message>", file:line
--   the caller's ("warn: handler scripts/x.lua:4: saw 3 bytes"); every level
--   is kept (the server's --log-level does not apply). A fmt that is not a
--   string raises "file:line: bad argument #1 to 'warn' (string expected,
--   got nil)". It also gets require("echohost.socket") (harness.socket) and
--   require("echohost.shared") (h.shared) and require("echohost.pubsub")
--   (the bus's publish and message_max). A handler value was made outside
--   the loader: it gets none of these modules, and uses harness.socket and
--   a dictionary of its own (opts.shared) instead.
--   on_open runs (or handle starts) in open. The conn is echohost.conn
--   (lua/echohost/conn.lua) over the harness's operations.
--
-- Coroutines and the virtual clock. handle and every coroutine of
-- conn:spawn(fn, ...) are tasks of one scheduler per open, shared by the
-- connection and its upstream instances. A spawned task runs at once until
-- it first waits or returns (then its spawner goes on); a task waits in
-- recv, receive, receiveuntil (on the conn or an upstream socket) and in
-- sleep, and in a send under backpressure (below); connect never waits.
-- Each step runs
-- every runnable task, callback and delivery in FIFO order until none is
-- left, closes the connections whose close is due (conn:close(); handle and
-- every spawned task returned; the client's EOF and every spawned task
-- returned, for callbacks), and then, while some task sleeps and nothing
-- waits for the harness's client (the open's connection is ended, or got
-- the client's EOF, or is direct style with no task reading its conn: a
-- callbacks or per-message connection waits for the client through
-- on_data; a task waiting to write the conn waits for it too), moves the
-- clock to the earliest event and goes on; a step that
-- does so more than harness.STEP_EVENTS (100000) times raises "harness: a
-- step moved the clock 100000 times by itself ...". Events, in time order
-- (timers before waits at the same time; each kind in the order armed or
-- parked):
-- a timer of any connection (conn:after, conn:every: fn(conn) runs like a
-- callback: budget, memory cap, may not wait; an error ends the connection
-- with "error" and is logged in h.log), a sleep's end (true), a settimeout
-- deadline (the clock when the wait began plus the timeout: nil,
-- "timeout", 110), and an idle_timeout or shutdown_at deadline of a sleep.
-- So a lone handle that sleeps returns within the step, h:clock() moved,
-- while a task that sleeps beside one reading the client (or in a callbacks
-- handler) waits for h:advance: a server's client would be sending
-- meanwhile. A connection that ends wakes its parked tasks with nil,
-- "closed", code (its upstream sockets close first); they run on and their
-- later waits return the same at once; then on_close runs.
--
-- Upstream sockets. In a handler, echohost.socket.connect(host, port [,
-- timeout]) to an address of opts.upstreams ("host:port" as given; an IPv6
-- host in brackets; port an integer or a numeric string) succeeds at once,
-- with no virtual delay (timeout is checked, then unused): the result is an
-- upstream socket (an echohost.conn: peer "host:port", id the connection's),
-- and the harness runs an instance of that address's handler as another
-- connection of this open (its own conn, peer "127.0.0.1:" .. (50000 + n)
-- for the open's n-th instance, its own reason and on_close; the same
-- scheduler, clock and echohost.shared; no idle_timeout or shutdown_at).
-- Any other address gives nil, "connect HOST:PORT: Connection refused", 111
-- (names are not resolved). Bytes move at once, each send one chunk (a
-- callbacks instance gets one on_data per up:send), and in order with the
-- rest of that direction: up:send(d) returns #d and the instance gets d;
-- up:shutdown("send") and up:close() are the instance's client EOF (after a
-- close, what the instance sends is dropped: its sends still return #d);
-- up:reset() resets the instance (reason "reset"). What the instance sends
-- arrives at the socket at once; its conn:shutdown("send") and its end are
-- the socket's EOF (up:recv: nil, "closed", 0 once the bytes are read), its
-- conn:reset() a reset (recv and send: nil, "closed", 104; unread bytes
-- dropped), and a send after the instance ended gives nil, "closed", 104.
-- When the handler's connection ends, its upstream sockets are closed (the
-- instances see EOF). connect at load time raises "echohost.socket.connect
-- is not available while a handler loads", outside a task "echohost.socket.
-- connect would wait: only a coroutine of the connection (handle,
-- conn:spawn) can wait"; the 65th open socket of a connection raises "too
-- many upstream sockets on this connection (at most 64)". The other
-- functions of harness.socket raise "echohost.socket.listen is not
-- available in a handler" (each its own name).
--
-- The shared dictionary. harness.shared([size]) -> a dictionary
-- (lua/echohost/dict.lua, capacity size bytes: a number, or a string with
-- k, m or g; default harness.SHARED_SIZE = 1 MiB) with a virtual clock of
-- its own, starting at 0, that moves forward by as much as the clock of
-- every open using it moves: its TTLs follow h:advance and sleeps.
--
-- The bus. harness.bus([size]) -> the twin of the server's pubsub ring
-- (lua/echohost/bus.lua; size as --pubsub-size, default 1 MiB, which sets
-- the longest message). conn:subscribe(channel, fn) of any open using it
-- gets the messages published on channel afterwards by any of them: each
-- is a job of the subscriber's scheduler, fn(conn, message, channel) run
-- like a timer's function (skipped if cancelled meanwhile). The
-- publisher's own world runs it within the step; after the step, every
-- other world that got messages is run in turn, in the order they got
-- their first, until none has any left (more than harness.STEP_EVENTS
-- such runs raise). No message is ever lost.
--
-- h:connect([opts]) -> another connection to the handler h's open loaded,
-- sharing its module state (as the connections of one server worker do),
-- its clock, dictionary, bus, upstreams and log; opts.peer (default
-- "127.0.0.1:" .. (40000 + n) for the open's n-th). It answers every step
-- and query below. The clock moves by itself only while no connection of
-- the open waits for its client.
--
-- Output backpressure. The client reads everything at once until h:pause()
-- (opts.paused of open and connect: from the start); then what the
-- handler sends waits in its queue (h:queued() bytes) until h:read([n])
-- reads n bytes of it (nil: all) or h:resume() reads it all and goes back
-- to reading as it comes; meanwhile steps return (and h:sent() counts) only
-- what the client read. As under the event loop: a task's conn:send is
-- queued whole while less than high_water is queued, else the task waits
-- (its conn's writer) until the client read the queue down to low water (a
-- quarter of high_water, at least 1024), then its bytes are queued and it
-- gets #data; a callback's send is queued regardless; the wait ends with
-- nil, "timeout", 110 at its settimeout deadline or h:timeout(), and with
-- nil, "closed", code at the end. While a task waits to write, another send
-- raises "conn:send: another coroutine is waiting to write this
-- connection" and a callback's reply faults with that message. A
-- callbacks (or per-message) connection runs on_data for one chunk at a
-- time and reads none while its output is at high_water or more (the
-- server's reads pause), until it is down to low water: the client's
-- chunks and its EOF wait in order (an instance's, with the handler's
-- socket as its client, likewise); a direct-style one takes input
-- regardless. A connection closed by the handler (or done) ends once the queue is read;
-- the client's reset drops the queue. An upstream socket: a task's
-- up:send returns once the instance has at most high_water of the
-- socket's bytes unread (the kernel took it all), else waits until the
-- instance read down to that (a callback's never waits); an instance's
-- conn:send follows the conn's rule with the handler's socket as its
-- client (unread: the socket's bytes up:recv did not take). The writer
-- rule holds there too ("... this upstream socket").
--
-- Steps of h, each returning what the client read during it:
--   h:input(data)  the client sends data (ignored once the connection ended
--                  or after h:eof)
--   h:eof()        the client shuts its side down: a waiting recv gets
--                  nil, "closed", 0; a function or callbacks handler closes
--                  once no spawned task is left
--   h:timeout()    a settimeout passes: every read or send of the conn or
--                  of one of its upstream sockets that waits with a timeout
--                  gets nil, "timeout", 110, whatever its deadline
--   h:advance(secs)  the clock moves by secs (>= 0), the events due on the
--                  way happening in order (see above): timers fire, waits
--                  whose settimeout deadline passes time out; a task parked
--                  in recv without a timeout stays parked
--   h:reset()      the client resets (RST): reason "reset"; recv and send
--                  get nil, "closed", 104
--   h:idle()       the idle timeout: reason "timeout"; nil, "closed", 0
--   h:shutdown()   the server's drain deadline: reason "shutdown"; same
--   h:pause()      the client stops reading (see Output backpressure)
--   h:read([n])    the paused client reads n bytes of its queue (nil: all),
--                  the world running as it goes; returns them
--   h:resume()     the client reads its queue, then everything as it comes
--   h:finish([how]) ends the connection if it is still open, as the client
--                  would: how = "eof" (default), "reset", "timeout" (idle) or
--                  "shutdown"; returns the reason
--   h:datagram(data [, peer])  a datagram from peer (default: conn.peer;
--                  "HOST:PORT" or "[IPv6]:PORT"; data at most harness.UDP_MAX4
--                  = 65507 bytes, harness.UDP_MAX6 = 65527 for an IPv6 peer)
--                  reaches the handler's state, as a server's UDP listener
--                  hands it on: the datagram function (the
--                  table's on_datagram, or a bare function) runs as
--                  fn(peer, data), with no connection (echohost.log's lines
--                  name none), under the budget and the memory cap, and may
--                  not wait (socket.connect raises "would wait"). Returns the
--                  reply (a string; "" is an empty datagram), or nil when the
--                  function returned nil, or nil and the error when it failed:
--                  a raise, the budget, the memory cap, a reply that is not
--                  a string or nil ("handler returned a number (expected a
--                  string or nil)") or longer than a datagram to peer can be
--                  ("reply of 70000 bytes is longer than a datagram can be (at
--                  most 65507 bytes over IPv4)"); the error also goes to
--                  h.log, and the connection goes on. A handler without a
--                  datagram function returns data (the server echoes in C).
--                  The loop guard and the rate cap, which the server applies
--                  before the handler, are not the harness's.
-- (The steps other than advance raise on an upstream instance: its client
-- is the handler's socket.)
-- A connection ends once, with a reason of README's table ("eof", "closed",
-- "error", "reset", "timeout", "shutdown"); on_close(conn, reason) runs then.
-- Queries: h:sent() (all bytes the client read so far), h:queued() (the
-- bytes in its queue), h:closed() (whether it ended),
-- h:ending() (what the client's reads end with: "open", "closed" after the
-- end or the handler's conn:shutdown("send"), "reset" after conn:reset()),
-- h:clock() (the virtual seconds since open),
-- h:reason() (nil while open), h.error (the first error, with its
-- traceback), h.log (the errors the server would log, in order; not the
-- handler's own lines, which are h.logs, in order), h.conn,
-- h.kind ("fn", "callbacks", "direct"), h.modules (local modules loaded),
-- h.shared (the dictionary), h.upstreams (every upstream instance of this
-- open, in connect order). An instance answers the same queries (h:sent()
-- is what it sent to the socket), and has inst.address ("127.0.0.1:9000")
-- and inst.socket (the handler's upstream socket); inst.log and inst.logs
-- are its address's (one server's log, shared by its instances).
--
-- harness.run(handler, inputs [, opts]): open, then each input in turn
-- (a string: h:input; harness.CLOSE: h:eof; harness.TIMEOUT: h:timeout;
-- harness.advance(secs), a marker: h:advance(secs);
-- harness.RESET, harness.IDLE, harness.SHUTDOWN: h:reset, h:idle,
-- h:shutdown) until the connection ends, then h:finish(). Returns
-- { sent = all bytes, chunks = each send, closed = whether it ended before
-- finish, reason = how it ended, error = the first error or nil, log = the
-- errors logged, logs = the lines of echohost.log (h.logs), state =
-- conn.state, upstreams = h.upstreams }.
--
-- harness.explore(handler, input, check [, opts]): runs handler over the
-- ways TCP may cut the string input and end the connection, calling
-- check(result) after each run (result: what harness.run returns, plus
-- schedule, the inputs given to run; cuts, the byte offsets after which
-- the input was cut; event, how the client ended: "eof" after the whole
-- input, or "eof", "reset" or "timeout" at offset at; a timeout is
-- followed by the rest of the input and an EOF). A run fails when check
-- raises (assert) or returns false[, message]. The schedules, smallest
-- first: the whole input then EOF; at each offset 0..#input, an EOF, a
-- reset and a timeout, after the prefix in one chunk and again after it
-- byte by byte; then every set of cuts for an input of at most
-- opts.all_max (harness.EXPLORE_ALL = 12) bytes, else every single cut,
-- every double cut (a sample when they are too many: opts.max_runs,
-- harness.EXPLORE_RUNS = 10000, bounds the runs) and opts.random
-- (harness.EXPLORE_RANDOM = 200) random sets of cuts (seeded by opts.seed,
-- default 1, so a failure repeats). opts.open: the options of each
-- harness.run. Returns true, the number of runs; or false and a report:
-- how many runs failed, the smallest failing schedule (fewest inputs,
-- then the first generated) and check's message for it.
local conn = require "echohost.conn"
local loader = require "echohost.loader"

local M = {}

M.BUDGET = 100000000                -- the server's --lua-budget default
M.MEM = 64 * 1024 * 1024            -- the server's --lua-mem default
M.HIGH_WATER = conn.HIGH_WATER      -- the server's --high-water default
M.SHARED_SIZE = 1024 * 1024         -- the server's --shared-size default
M.PEER = "127.0.0.1:40000"          -- conn.peer by default
M.UPSTREAM_PORT = 50000             -- an instance's peer: 127.0.0.1:(this + n)
M.STEP_EVENTS = 100000              -- events a step may move the clock to by itself

local ECONNRESET, ETIMEDOUT, ECONNREFUSED = 104, 110, 111   -- Linux errnos
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

local WAIT = {}                     -- what a parking task yields
local deliver_message
local CURRENT                       -- the task running now (nil: none)
local LOADING = 0                   -- > 0 while a handler loads

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

-- The harness or upstream instance whose handler code runs now (its
-- conn's id goes into echohost.log's lines).
local ACTIVE

local function active_conn_id()
  return ACTIVE and ACTIVE.conn and ACTIVE.conn.id
end

-- pcall or xpcall(f, ...) under the hook of self; restores the caller's hook.
local function guarded(self, msgh, f, ...)
  local hook, step = make_hook(self)
  local old = table.pack(debug.gethook())
  if hook then
    debug.sethook(hook, "", step)
  end
  local r
  local outer = ACTIVE
  ACTIVE = self
  if msgh then
    r = table.pack(xpcall(f, msgh, ...))
  else
    r = table.pack(pcall(f, ...))
  end
  ACTIVE = outer
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

-- The scheduler: jobs, tasks, waits, the virtual clock ------------------------

-- Event times are integer nanoseconds, so that every(0.1) is due at 0.3
-- exactly as after(0.3) is; the clock itself is in seconds.
local function ns(secs)
  return math.floor(secs * 1e9 + 0.5)
end

local TIMER, WAITING = 0, 1         -- event classes: timers first at equal times

local function new_world()
  return { clock = 0.0, queue = {}, qhead = 1, qtail = 0, seq = 0, conns = {}, waits = {},
           instances = {}, servers = {}, nports = 0 }
end

local function next_seq(W)
  W.seq = W.seq + 1
  return W.seq
end

-- Jobs run in FIFO order: deliveries, callbacks, resumes of woken tasks.
local function enqueue(W, job)
  W.qtail = W.qtail + 1
  W.queue[W.qtail] = job
end

local function run_queue(W)
  while W.qhead <= W.qtail do
    local job = W.queue[W.qhead]
    W.queue[W.qhead] = nil
    W.qhead = W.qhead + 1
    job()
  end
end

-- Moves the clock forward to t (seconds), and a harness.shared clock by as much.
local function set_clock(W, t)
  if t > W.clock then
    if W.shared_clock then
      W.shared_clock.now = W.shared_clock.now + (t - W.clock)
    end
    W.clock = t
  end
end

-- Removes the first x from the list (order kept).
local function remove_value(list, x)
  for i, v in ipairs(list) do
    if v == x then
      table.remove(list, i)
      return
    end
  end
end

-- Takes the task t off its wait (the object it reads stays claimed by t
-- until it runs: see wait_for).
local function unpark(t)
  local w = t.wait
  if not w then
    return
  end
  t.wait = nil
  remove_value(t.self.world.waits, w)
end

local function task_end(t)
  remove_value(t.self.s.tasks, t)
  t.dead = true
  unpark(t)
  if t.claim and t.claim.reader == t then
    t.claim.reader = nil
  end
end

-- Resumes the task t with ...; records its fault.
local function resume_task(t, ...)
  if t.dead then
    return
  end
  local self, co = t.self, t.co
  local hook, step = make_hook(self)
  if hook then
    debug.sethook(co, hook, "", step)
  end
  local prev, outer = CURRENT, ACTIVE
  CURRENT, ACTIVE = t, self
  local ok, what = coroutine.resume(co, ...)
  CURRENT, ACTIVE = prev, outer
  if hook then
    debug.sethook(co)
  end
  if not ok then
    task_end(t)
    fault(self, traceback(what, co))
  elseif coroutine.status(co) == "dead" then
    task_end(t)
  elseif what ~= WAIT then
    task_end(t)
    fault(self, "handle yielded outside conn:recv/conn:send")
  end
end

-- A new task of self running fn (started by resume_task).
local function new_task(self, fn)
  local t = { self = self, co = coroutine.create(fn) }
  local tasks = self.s.tasks
  tasks[#tasks + 1] = t
  return t
end

-- conn:spawn: a new task, run at once until it first waits or returns.
local function spawn(self, fn, ...)
  if #self.s.tasks >= conn.TASKS_MAX then
    return false, conn.too_many_tasks()
  end
  resume_task(new_task(self, fn), ...)
  return true
end

-- Wakes the parked task t (nil: none): it resumes with why ("wake",
-- "timeout", "done", "gone") in a job.
local function wake(t, why)
  if t and t.wait then
    unpark(t)
    enqueue(t.self.world, function() resume_task(t, why) end)
  end
end

-- Parks the running task t on w = { obj = what it reads (nil: a sleep),
-- at = its deadline in seconds (nil: none), why = the reason a sleep's
-- deadline ends the connection with (nil: none) }; returns why it woke.
-- t claims obj (obj.reader) until it runs again.
local function wait_for(t, w)
  local W = t.self.world
  w.t, w.class, w.seq = t, WAITING, next_seq(W)
  if w.at then
    w.due = ns(w.at)
    W.waits[#W.waits + 1] = w
  end
  if w.obj then
    w.obj.reader, t.claim = t, w.obj
  end
  t.wait = w
  local why = coroutine.yield(WAIT)
  if w.obj and w.obj.reader == t then
    w.obj.reader, t.claim = nil, nil
  end
  return why
end

local function before(a, b)
  if a.due ~= b.due then
    return a.due < b.due
  elseif a.class ~= b.class then
    return a.class < b.class
  end
  return a.seq < b.seq
end

-- The earliest event of W (a timer record or a wait with a deadline), or nil.
local function next_event(W)
  local first
  for _, self in ipairs(W.conns) do
    for _, t in ipairs(self.s.core.timers) do
      if not first or before(t, first) then
        first = t
      end
    end
  end
  for _, w in ipairs(W.waits) do
    if not first or before(w, first) then
      first = w
    end
  end
  return first
end

-- Runs the timer t like a callback: the budget, the memory cap; an error
-- ends the connection with "error". It may not wait (no task runs it).
local function fire_timer(t)
  local self = t.owner
  local ok, err = call(self, t.fn, t.conn)
  if not ok then
    fault(self, err)
  end
  if conn.timer_done(t) then
    t.due = t.due + math.max(1, ns(t.period))
  end
end

-- A message for the subscription r of self: a job of self's world that
-- runs r.fn like a timer's (it is skipped if r was cancelled meanwhile);
-- the world is run after the publishing step (run_pending).
function deliver_message(self, r, msg, ch)
  local W = self.world
  enqueue(W, function()
    if r.core then
      local ok, err = call(self, r.fn, r.conn, msg, ch)
      if not ok then
        fault(self, err)
      end
    end
  end)
  local bus = W.bus
  if not bus.pending[W] then
    bus.pending[W] = true
    bus.pending[#bus.pending + 1] = W
  end
end

-- The clock moves to the event e, which happens.
local function fire(W, e)
  if e.class == TIMER then
    set_clock(W, e.due / 1e9)
    return fire_timer(e)
  end
  set_clock(W, e.at)
  if e.why then                     -- idle_timeout, shutdown_at: wakes e.t "gone"
    end_conn(e.t.self, e.why)
  else
    wake(e.t, (e.obj or e.wobj) and "timeout" or "done")
  end
end

local settle

-- Runs every job, then closes what is due, until nothing is left to run.
local function drain(W)
  repeat
    run_queue(W)
    for _, self in ipairs(W.conns) do
      settle(self)
    end
  until W.qhead > W.qtail
end

local function sleeping(W)
  for _, w in ipairs(W.waits) do
    if not (w.obj or w.wobj) then
      return true
    end
  end
  return false
end

-- Whether the open's connection waits for the harness's client: it is
-- open, and a task waits to write the conn (the client reads nothing), or
-- the client has not shut its side and a task reads the conn (direct
-- style) or on_data is how it waits (callbacks, per message).
local function client_waits(W)
  for _, self in ipairs(W.clients or {}) do
    local s = self.s
    if s and not s.reason and (s.writer or not s.eof and (self.kind ~= "direct"
        or s.reader ~= nil)) then
      return true
    end
  end
  return false
end

-- A step's end: runs W until nothing is left to run; while some task
-- sleeps and nothing waits for the client, the clock moves to each event
-- in turn (at most M.STEP_EVENTS times).
local function run_world(W)
  drain(W)
  local n = 0
  while sleeping(W) and not client_waits(W) do
    n = n + 1
    if n > M.STEP_EVENTS then
      error(("harness: a step moved the clock %d times by itself (a task that sleeps in a "
        .. "loop?); the clock stays at %s"):format(M.STEP_EVENTS, W.clock), 0)
    end
    fire(W, next_event(W))
    drain(W)
  end
end

-- h:advance: the clock moves by secs, each event due on the way happening.
local function advance_world(W, secs)
  local to = W.clock + secs
  local limit = ns(to)
  drain(W)
  while true do
    local e = next_event(W)
    if not e or e.due > limit then
      break
    end
    fire(W, e)
    drain(W)
  end
  set_clock(W, to)
  run_world(W)
end

-- Connections: output, input, the end --------------------------------------

-- The bytes a connection sends: to the harness's client (s.chunks; while
-- it pauses, s.queue until it reads them), and for an instance to the
-- handler's upstream socket too (dropped once the handler closed it).
local function output(self, data)
  local s = self.s
  local u = s.up
  if s.paused then
    s.queue[#s.queue + 1] = data
    s.queued = s.queued + #data
    return
  end
  s.chunks[#s.chunks + 1] = data
  if u and not conn.done(u.core) then
    u.inbuf = u.inbuf .. data
    wake(u.reader, "wake")
  end
end

-- Output backpressure. What self sent that its reader has not read: the
-- harness's client's queue (while it pauses), for an instance the bytes
-- the handler's upstream socket holds unread.
local function unread(self)
  local s = self.s
  if s.up then
    return conn.done(s.up.core) and 0 or #s.up.inbuf
  end
  return s.queued
end

-- Where a waiting send of a conn resumes: a quarter of high water, at
-- least 1024 bytes (the server's).
local function low_water(self)
  return math.max(1024, self.high_water // 4)
end

-- The reader of self read: once at most low water is unread, the send
-- that waits has its bytes queued and its task resumes, as under the
-- event loop.
local pump

local function drained(self)
  local s = self.s
  local t = s.writer
  if unread(self) > low_water(self) then
    return
  end
  if t then
    s.writer = nil
    output(self, t.wdata)
    t.wdata = nil
    wake(t, "wake")
  end
  if s.rpaused then
    s.rpaused = false
    pump(self)
  end
end

-- The instance of the upstream socket u took bytes the handler sent (n):
-- once at most high water of them is unread, the send that waits returns.
local function consumed(u, n)
  u.unread = u.unread - n
  local t = u.writer
  if t and u.unread <= u.owner.high_water then
    u.writer = nil
    wake(t, "wake")
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
    if self.s.writer then           -- it would go before that send's bytes
      return fault(self, conn.busy("conn:send", "write", "connection"))
    end
    output(self, r)
  end
end

-- The client sends data to self: a direct-style connection buffers it for
-- its readers, a callbacks one calls on_data (in a job, in order).
local client_eof

-- What a callbacks (or per-message) connection's client sent, in order:
-- on_data runs for one chunk at a time (a job), and none is read while
-- the connection's output is over high water, until it is down to low
-- water (as the server's reads pause): the chunks, and the EOF after them,
-- wait in s.held.
local EOF = {}

function pump(self)
  local s = self.s
  while s.held[1] ~= nil and not s.pumping do
    if unread(self) >= self.high_water then
      s.rpaused = true
    end
    if s.rpaused then
      return
    end
    local data = table.remove(s.held, 1)
    if data == EOF then
      client_eof(self, true)
    else
      if s.up then
        consumed(s.up, #data)
      end
      local on_data = self.h.on_data
      if on_data then
        s.pumping = true
        enqueue(self.world, function()
          s.pumping = false
          if not (s.reason or conn.done(s.core)) then
            reply(self, call(self, on_data, self.conn, data))
          end
          pump(self)
        end)
      end
    end
  end
end

-- The client sends data to self: a direct-style connection buffers it for
-- its readers, a callbacks one calls on_data (pump).
local function deliver(self, data)
  local s = self.s
  if s.reason or s.eof or s.held_eof then
    if s.up then
      consumed(s.up, #data)         -- dropped
    end
    return
  elseif self.kind == "direct" then
    s.inbuf = s.inbuf .. data
    return wake(s.reader, "wake")
  end
  s.held[#s.held + 1] = data
  pump(self)
end

-- The client shuts its side down (a callbacks connection: after what it
-- sent before, see pump).
function client_eof(self, now)
  local s = self.s
  if s.reason or s.eof or s.held_eof then
    return
  elseif not now and self.kind ~= "direct" and s.held[1] ~= nil then
    s.held_eof = true
    s.held[#s.held + 1] = EOF
    return
  end
  s.eof, s.held_eof = true, false
  wake(s.reader, "wake")
end

-- The handler's connection self ended: its upstream sockets close, each
-- instance sees EOF.
local function close_upstreams(self)
  local s = self.s
  for _, u in ipairs(s.ups) do
    if not conn.done(u.core) then
      conn.gone(u.core, s.code)
      wake(u.reader, "gone")
      enqueue(self.world, function() client_eof(u.inst) end)
    end
  end
end

-- An instance self ended: its client's socket reads EOF, or a reset.
local function tell_socket(self)
  local s, u = self.s, self.s.up
  if u then
    if s.rst then
      u.rst = true
    else
      u.eof = true
    end
    wake(u.reader, "wake")
    wake(u.writer, "gone")          -- bytes it did not read: a reset
  end
end

-- The connection ends (once): its timers go, its upstream sockets close,
-- its parked tasks wake with nil, "closed", code, then on_close runs.
function end_conn(self, reason)
  local s = self.s
  if s.reason then
    return
  end
  s.reason, s.code = reason, reason == "reset" and ECONNRESET or 0
  if reason == "reset" then         -- the client's: what it had not read is lost
    s.queue, s.queued = {}, 0
  end
  conn.gone(s.core, s.code)
  close_upstreams(self)
  tell_socket(self)
  for _, t in ipairs(s.tasks) do
    wake(t, "gone")
  end
  local on_close = self.kind == "callbacks" and self.h.on_close
  if on_close then
    enqueue(self.world, function()
      local ok, err = call(self, on_close, self.conn, reason)
      if not ok then
        record(self, err)
      end
    end)
  end
end

-- Between jobs: a close by the handler ends the connection once the output
-- is out (the client read its queue); so does the last task returning
-- (direct style), or the client's EOF once no spawned task is left
-- (callbacks, per message).
function settle(self)
  local s = self.s
  if s.reason or s.queued > 0 then
    return
  end
  if s.closing or (#s.tasks == 0 and (self.kind == "direct" or s.eof)) then
    end_conn(self, (s.eof and not s.rst) and "eof" or "closed")
  end
end

-- The conn object: echohost.conn over the harness's operations ------------

-- The running task if it is a coroutine of self that may wait now, else nil.
local function waiter(self)
  local t = CURRENT
  if t and t.self == self and coroutine.running() == t.co then
    return t
  end
  return nil
end

-- Takes up to max bytes (0: all) of obj.inbuf.
local function take(obj, max)
  local n = max > 0 and math.min(max, #obj.inbuf) or #obj.inbuf
  local data = obj.inbuf:sub(1, n)
  obj.inbuf = obj.inbuf:sub(n + 1)
  return data
end

-- The deadline of a wait with settimeout secs (nil: none).
local function timeout_at(self, secs)
  return secs and self.world.clock + secs or nil
end

-- The end of a sleep of secs begun now, in clock seconds, and the reason
-- it ends the connection with when opts.idle_timeout (from now) or
-- opts.shutdown_at comes first (nil: it returns true).
local function sleep_deadline(self, secs)
  local now = self.world.clock
  local at, why = now + secs, nil
  if self.idle_timeout and self.idle_timeout < secs then
    at, why = now + self.idle_timeout, "timeout"
  end
  if self.shutdown_at and self.shutdown_at < now + secs and (not why or self.shutdown_at < at) then
    at, why = math.max(now, self.shutdown_at), "shutdown"
  end
  return at, why
end

-- conn:sleep (and up:sleep, core: the upstream's) of a task of self.
local function sleep(self, core, secs)
  local t = waiter(self)
  if not t then
    return false
  end
  local at, why = sleep_deadline(self, secs)
  if wait_for(t, { at = at, why = why }) == "done" then
    return true
  end
  return nil, "closed", core.code
end

-- A read by what of the conn of self: what the client sent, up to max (0:
-- all); parks the task.
local function conn_recv(self, max, what)
  local s = self.s
  while true do
    if s.reason then
      return nil, "closed", s.code
    elseif #s.inbuf > 0 then
      local data = take(s, max)
      if s.up then
        consumed(s.up, #data)
      end
      return data
    elseif s.eof then
      return nil, "closed", 0
    end
    local t = waiter(self)
    if not t then
      return false
    elseif self.kind ~= "direct" then
      return false, conn.to_on_data("conn:" .. what)
    elseif s.reader and s.reader ~= t then
      return false, conn.busy("conn:" .. what, "read", "connection")
    end
    if wait_for(t, { obj = s, at = timeout_at(self, s.core.timeout) }) == "timeout" then
      return nil, "timeout", ETIMEDOUT
    end
  end
end

-- A send of the task t that waits on obj (its writer) until woken: #data,
-- or nil, "timeout", 110 at its settimeout deadline, or nil, "closed",
-- code (code: of the end that woke it).
local function send_wait(t, obj, data, timeout, code)
  local why = wait_for(t, { wobj = obj, at = timeout_at(t.self, timeout) })
  if obj.writer == t then
    obj.writer = nil
  end
  t.wdata = nil
  if why == "wake" then
    return #data
  elseif why == "timeout" then
    return nil, "timeout", ETIMEDOUT
  end
  return nil, "closed", code()
end

-- conn:send of self: queued whole while less than high water is unread
-- by its client; past it a coroutine waits (drained), a callback's bytes
-- are queued all the same. One writer: while one waits, a send raises.
local function conn_send(self, data)
  local s = self.s
  if s.writer then
    return false, conn.busy("conn:send", "write", "connection")
  end
  local t = #data > 0 and unread(self) >= self.high_water and waiter(self)
  if not t then
    if #data > 0 then
      output(self, data)
    end
    return #data
  end
  s.writer, t.wdata = t, data
  return send_wait(t, s, data, s.core.timeout, function() return s.code or 0 end)
end

local function ops_of(self)
  local s, W = self.s, self.world
  local ops = {}
  function ops.recv(max, what)
    return conn_recv(self, max, what)
  end
  function ops.send(data)
    return conn_send(self, data)
  end
  function ops.close()
    s.closing = true
  end
  function ops.shutdown()
    s.wshut = true                  -- the client reads EOF after what was sent
    if s.up then
      s.up.eof = true
      wake(s.up.reader, "wake")
    end
  end
  function ops.reset()               -- an instance's RST reaches the socket at once
    s.closing, s.rst = true, true
    s.queue, s.queued = {}, 0         -- what the client had not read is dropped
    if s.up then
      s.up.rst = true
      wake(s.up.reader, "wake")
    end
  end
  function ops.sleep(secs)
    return sleep(self, s.core, secs)
  end
  function ops.arm(t, secs)
    t.due, t.class, t.seq, t.owner = ns(W.clock) + ns(secs), TIMER, next_seq(W), self
  end
  function ops.spawn(fn, ...)
    return spawn(self, fn, ...)
  end
  function ops.subscribe(r)
    r.deliver = function(msg, ch) deliver_message(self, r, msg, ch) end
    W.bus:subscribe(r)
    return true
  end
  function ops.unsubscribe(r)
    W.bus:unsubscribe(r)
  end
  return ops
end

-- Upstream sockets -----------------------------------------------------------

-- u: the handler's side of a virtual TCP connection to an instance: owner
-- (the handler's connection), inst, inbuf (what the instance sent, unread),
-- eof, rst (the instance shut its side, reset), reader, core, conn.

-- A read by what of the upstream socket u.
local function up_recv(u, max, what)
  while true do
    local c = u.core
    if conn.done(c) then
      return nil, "closed", c.code
    elseif u.rst then
      return nil, "closed", ECONNRESET
    elseif #u.inbuf > 0 then
      local data = take(u, max)
      drained(u.inst)
      return data
    elseif u.eof then
      return nil, "closed", 0
    end
    local t = waiter(u.owner)
    if not t then
      return false
    elseif u.reader and u.reader ~= t then
      return false, conn.busy("conn:" .. what, "read", "upstream socket")
    end
    if wait_for(t, { obj = u, at = timeout_at(u.owner, c.timeout) }) == "timeout" then
      return nil, "timeout", ETIMEDOUT
    end
  end
end

-- Something reaches the instance, in a job (in order with the rest).
local function to_instance(u, fn)
  enqueue(u.owner.world, function() fn(u.inst) end)
end

-- up:send: the instance gets data at once; a coroutine's send returns once
-- at most high water of what it sent is unread by the instance (the kernel
-- took it all), else it waits (consumed); a callback's never waits. One
-- writer: while one waits, a send raises.
local function up_send(u, data)
  if u.rst or u.inst.s.reason then
    return nil, "closed", ECONNRESET
  elseif u.writer then
    return false, conn.busy("conn:send", "write", "upstream socket")
  end
  if #data > 0 then
    u.unread = u.unread + #data
    to_instance(u, function(inst) deliver(inst, data) end)
  end
  local t = u.unread > u.owner.high_water and waiter(u.owner)
  if not t then
    return #data
  end
  u.writer = t
  return send_wait(t, u, data, u.core.timeout, function()
    if conn.done(u.core) then       -- the handler closed or reset it
      return u.core.code or 0
    end
    return ECONNRESET               -- the instance went away with bytes unread
  end)
end

local function up_ops(u)
  local ops = {}
  function ops.recv(max, what)
    return up_recv(u, max, what)
  end
  function ops.send(data)
    return up_send(u, data)
  end
  function ops.close()
    to_instance(u, client_eof)
    wake(u.reader, "gone")
    wake(u.writer, "gone")
  end
  function ops.shutdown()
    to_instance(u, client_eof)
  end
  function ops.reset()
    to_instance(u, function(inst) end_conn(inst, "reset") end)
    wake(u.reader, "gone")
    wake(u.writer, "gone")
  end
  function ops.sleep(secs)
    return sleep(u.owner, u.core, secs)
  end
  return ops
end

-- The upstream sockets self holds (not closed).
local function held(self)
  local n = 0
  for _, u in ipairs(self.s.ups) do
    if not conn.done(u.core) then
      n = n + 1
    end
  end
  return n
end

local new_harness, attach, start

-- A new instance of the server srv (at addr) and the socket of self to it.
local function open_upstream(self, srv, addr)
  local W = self.world
  W.nports = W.nports + 1
  local inst = new_harness(W, self.cfg, srv)
  inst.address = addr
  local u = { owner = self, inst = inst, inbuf = "", eof = false, rst = false, unread = 0 }
  u.conn, u.core = conn.new(up_ops(u), { id = self.s.core.id, peer = addr,
    high_water = self.high_water, upstream = true })
  attach(inst, srv.h, ("127.0.0.1:%d"):format(M.UPSTREAM_PORT + W.nports))
  inst.s.up, inst.socket = u, u.conn
  self.s.ups[#self.s.ups + 1] = u
  W.instances[#W.instances + 1] = inst
  start(inst)
  return u.conn
end

-- echohost.socket.connect in a handler (after conn.socket_module's checks).
local function connect(_, _, _, addr)
  if LOADING > 0 then
    error(conn.CONNECT_AT_LOAD, 2)
  end
  local t = CURRENT
  if not t or coroutine.running() ~= t.co then
    error(conn.would_wait(conn.CONNECT), 2)
  end
  local self = t.self
  if self.s.reason or conn.done(self.s.core) then
    return nil, "closed", self.s.core.code
  elseif held(self) >= conn.UPSTREAMS_MAX then
    error(conn.too_many_upstreams(), 2)
  end
  local srv = self.world.servers[addr]
  if not srv then
    return nil, ("connect %s: Connection refused"):format(addr), ECONNREFUSED
  end
  return open_upstream(self, srv, addr)
end

-- The echohost.socket of handlers (provided to those loaded from a path).
M.socket = conn.socket_module(connect)

-- The shared dictionary ------------------------------------------------------

local CLOCKS = setmetatable({}, { __mode = "k" })   -- dictionary -> { now = seconds }

local SUFFIX = { k = 1024, m = 1024 * 1024, g = 1024 * 1024 * 1024 }

local function bytes(size, fname)
  if math.type(size) == "integer" then
    return size
  end
  local n, suffix = tostring(size):match("^(%d+)([kmgKMG]?)$")
  if type(size) ~= "string" or not n then
    error(("bad argument #1 to '%s' (a size in bytes expected, got %s)"):format(fname or "shared",
      type(size) == "string" and ("'" .. size .. "'") or type(size)), 3)
  end
  return math.tointeger(n) * (SUFFIX[suffix:lower()] or 1)
end

-- A dictionary of size bytes on a virtual clock of its own; see the header.
function M.shared(size)
  local capacity = bytes(size or M.SHARED_SIZE)
  local clock = { now = 0 }
  local d = require("echohost.dict").new(capacity, function() return clock.now end)
  CLOCKS[d] = clock
  return d
end

-- opts.shared, or a fresh dictionary (nil while lua/echohost/dict.lua is
-- missing: then handlers get no echohost.shared).
local function shared_of(d)
  if d == nil then
    local ok, got = pcall(M.shared)
    if ok then
      return got
    elseif tostring(got):find("module 'echohost.dict' not found", 1, true) then
      return nil
    end
    error(got, 0)
  elseif not CLOCKS[d] then
    error(("bad option 'shared' to 'open' (a dictionary of harness.shared expected, got %s)")
      :format(type(d)), 3)
  end
  return d
end

-- The message bus -----------------------------------------------------------

local BUSES = setmetatable({}, { __mode = "k" })    -- the buses of harness.bus

-- A bus of size bytes (the longest message follows from it); see the header.
function M.bus(size)
  local b = require("echohost.bus").new(size and bytes(size, "bus") or nil)
  b.pending = {}                    -- the worlds with deliveries to run
  BUSES[b] = true
  return b
end

-- opts.bus, or a fresh bus.
local function bus_of(b)
  if b == nil then
    return M.bus()
  elseif not BUSES[b] then
    error(("bad option 'bus' to 'open' (a bus of harness.bus expected, got %s)")
      :format(type(b)), 3)
  end
  return b
end

-- After a step of W: runs every world that got messages meanwhile, in the
-- order they got their first, until none has any left.
local function run_pending(W, run)
  local bus, n = W.bus, 0
  while bus and bus.pending[1] do
    local V = table.remove(bus.pending, 1)
    bus.pending[V] = nil
    n = n + 1
    if n > M.STEP_EVENTS then
      error(("harness: a step delivered messages to %d worlds in turn (handlers that "
        .. "publish to each other forever?)"):format(M.STEP_EVENTS), 0)
    end
    run(V)
  end
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

-- The modules the harness provides to a handler it loads (its lines go to logs).
local function provided(W, logs, settings)
  return { [loader.SETTINGS] = settings,
           ["echohost.log"] = loader.logger(function(_, line) logs[#logs + 1] = line end,
                                            active_conn_id),
           ["echohost.socket"] = M.socket,
           ["echohost.shared"] = W.shared,
           ["echohost.pubsub"] = W.bus and W.bus:module() }
end

-- The loaded handler (a path, loaded under self's limits, or a value named
-- name), or a raise with the loader's message.
local function load_handler(self, handler, name, modules)
  local h, err
  if type(handler) == "string" then
    local ok
    LOADING = LOADING + 1
    ok, h, err = guarded(self, nil, loader.load, handler, modules)
    LOADING = LOADING - 1
    if not ok then                  -- raised past the loader's pcall
      err = (type(h) == "string" and h or "error"):match("^[^\n]*")
      h = nil
      if err:sub(1, #handler) ~= handler then
        err = handler .. ": " .. err
      end
    end
  else
    h, err = loader.check(handler, name)
  end
  if not h then
    error(err, 0)
  end
  return h
end

-- opts.upstreams: each address's server { h, logs, log } in W.servers.
local function load_upstreams(self, upstreams)
  if upstreams == nil then
    return
  elseif type(upstreams) ~= "table" then
    error(("bad option 'upstreams' to 'open' (table expected, got %s)"):format(type(upstreams)), 3)
  end
  local W = self.world
  for addr, handler in pairs(upstreams) do
    if type(addr) ~= "string" then
      error(("bad option 'upstreams' to 'open' (\"host:port\" keys expected, got %s)")
        :format(type(addr)), 3)
    end
    local srv = { logs = {}, log = {} }
    srv.h = load_handler(self, handler, "upstream " .. addr, provided(W, srv.logs, {}))
    W.servers[addr] = srv
  end
end

-- A harness object of W (the client's, or an instance of the server srv).
function new_harness(W, cfg, srv)
  return setmetatable({ world = W, cfg = cfg, budget = limit(cfg.budget, M.BUDGET),
                        mem = limit(cfg.mem, M.MEM), high_water = cfg.high_water or M.HIGH_WATER,
                        idle_timeout = not srv and cfg.idle_timeout or nil,
                        shutdown_at = not srv and cfg.shutdown_at or nil,
                        base = collectgarbage("count") * 1024,
                        log = srv and srv.log or {}, logs = srv and srv.logs or {},
                        shared = W.shared, upstreams = W.instances }, H)
end

-- self serves a connection from peer with the loaded handler h.
function attach(self, h, peer)
  next_id = next_id + 1
  local s = { inbuf = "", chunks = {}, closing = false, eof = false, tasks = {}, ups = {},
              queue = {}, queued = 0, paused = false, held = {} }
  self.h, self.kind, self.modules, self.s = h, h.kind, h.modules, s
  self.conn, s.core = conn.new(ops_of(self), { id = next_id, peer = peer,
    high_water = self.high_water })
  s.state = s.core.state
  local conns = self.world.conns
  conns[#conns + 1] = self
end

-- The connection opens: handle starts, or on_open runs (in a job).
function start(self)
  local h = self.h
  if self.kind == "direct" then
    local t = new_task(self, h.handle)
    enqueue(self.world, function() resume_task(t, self.conn) end)
  elseif h.on_open then
    enqueue(self.world, function()
      if not self.s.reason then
        reply(self, call(self, h.on_open, self.conn))
      end
    end)
  end
end

-- Opens a connection to handler (a path or a value); see the header.
function M.open(handler, opts)
  opts = opts or {}
  local settings = settings_of(opts.settings)
  local W = new_world()
  W.shared = shared_of(opts.shared)
  W.shared_clock = W.shared and CLOCKS[W.shared]
  W.bus = bus_of(opts.bus)
  collectgarbage()
  local self = new_harness(W, opts)
  W.client, W.clients = self, { self }
  local h = load_handler(self, handler, "handler", provided(W, self.logs, settings))
  load_upstreams(self, opts.upstreams)
  attach(self, h, opts.peer or M.PEER)
  self.s.paused = opts.paused and true or false
  start(self)
  run_world(W)
  run_pending(W, run_world)
  return self
end

-- Another connection to the handler h:open loaded (the same module state,
-- as a worker's connections share it), in h's world: the same clock,
-- dictionary, bus, upstreams and log. opts: peer (default 127.0.0.1:(40000
-- + n) for the open's n-th connection).
function H:connect(opts)
  opts = opts or {}
  local W = self.world
  if self.s.up then
    error("bad self to 'connect' (an upstream instance: open connections from the client's "
      .. "harness)", 2)
  elseif opts.peer ~= nil and type(opts.peer) ~= "string" then
    error(("bad option 'peer' to 'connect' (string expected, got %s)"):format(type(opts.peer)), 2)
  end
  local first = W.client
  local c = new_harness(W, first.cfg, { log = first.log, logs = first.logs })
  c.idle_timeout, c.shutdown_at = first.idle_timeout, first.shutdown_at   -- a client's
  W.clients[#W.clients + 1] = c
  attach(c, first.h, opts.peer or ("127.0.0.1:" .. (40000 + #W.clients - 1)))
  c.s.paused = opts.paused and true or false
  start(c)
  run_world(W)
  run_pending(W, run_world)
  return c
end

-- Steps ----------------------------------------------------------------------

local function client_only(self, name)
  if self.s.up then
    error(("bad self to '%s' (an upstream instance: its client is the handler's upstream "
      .. "socket)"):format(name), 3)
  end
end

-- Runs fn(self, ...), then the world; returns what self sent meanwhile.
local function step(self, fn, ...)
  local from = #self.s.chunks + 1
  fn(self, ...)
  run_world(self.world)
  run_pending(self.world, run_world)
  return table.concat(self.s.chunks, "", from)
end

-- The client sends data; returns what the handler sent in response.
function H:input(data)
  if type(data) ~= "string" then
    error(("bad argument #1 to 'input' (string expected, got %s)"):format(type(data)), 2)
  end
  client_only(self, "input")
  return step(self, deliver, data)
end

-- The client shuts down its side; returns what the handler sent then.
function H:eof()
  client_only(self, "eof")
  return step(self, client_eof)
end

-- A settimeout passes: every read or send of the conn or of its upstream
-- sockets waiting with a timeout returns nil, "timeout", 110.
local function time_out(self)
  for _, t in ipairs(self.s.tasks) do
    local w = t.wait
    if w and (w.obj or w.wobj) and w.at then
      wake(t, "timeout")
    end
  end
end

function H:timeout()
  client_only(self, "timeout")
  return step(self, time_out)
end

-- The client reads up to n bytes (nil: until nothing is queued) of what
-- waits in its queue, the world running as it goes (a waiting send
-- resumes once the queue is down to low water).
local function client_read(self, n)
  local s = self.s
  local left = n or math.huge
  while left > 0 and s.queued > 0 do
    local data = table.remove(s.queue, 1)
    if #data > left then
      table.insert(s.queue, 1, data:sub(left + 1))
      data = data:sub(1, left)
    end
    s.queued, left = s.queued - #data, left - #data
    s.chunks[#s.chunks + 1] = data
    drained(self)
    run_world(self.world)
  end
end

-- The client stops reading: what the handler sends from now on waits in
-- its queue (h:read, h:resume).
function H:pause()
  client_only(self, "pause")
  self.s.paused = true
end

-- The paused client reads n bytes (nil: all it can); returns them.
function H:read(n)
  client_only(self, "read")
  if n ~= nil and (math.type(n) ~= "integer" or n < 0) then
    error(("bad argument #1 to 'read' (expected a byte count (>= 0), got %s)")
      :format(tostring(n)), 2)
  end
  return step(self, client_read, n)
end

-- The client reads again: its queue, then everything as it comes.
function H:resume()
  client_only(self, "resume")
  return step(self, function()
    client_read(self)
    self.s.paused = false
  end)
end

-- Time passes: the clock moves by secs, every event due on the way happens.
function H:advance(secs)
  check_secs(secs, "advance")
  return step(self, function() advance_world(self.world, secs) end)
end

local function ended_by(reason, name)
  return function(self)
    client_only(self, name)
    return step(self, end_conn, reason)
  end
end

H.reset = ended_by("reset", "reset")         -- the client resets the connection
H.idle = ended_by("timeout", "idle")         -- --idle-timeout passes
H.shutdown = ended_by("shutdown", "shutdown") -- the server's drain deadline

local FINISH = { eof = H.eof, reset = H.reset, timeout = H.idle, shutdown = H.shutdown }

-- Ends the connection if it is still open (how: see the header); returns
-- the reason it ended with.
function H:finish(how)
  local fn = FINISH[how or "eof"]
  if not fn then
    error(("bad argument #1 to 'finish' (eof, reset, timeout or shutdown expected, got %s)")
      :format(tostring(how)), 2)
  end
  client_only(self, "finish")
  if not self.s.reason then
    fn(self)
    step(self, end_conn, how or "eof")   -- a task that is still running
  end
  return self.s.reason
end

-- Datagrams ------------------------------------------------------------------

M.UDP_MAX4, M.UDP_MAX6 = 65507, 65527   -- the largest UDP payloads (udp.h)

-- The largest datagram to or from peer, and the family's name.
local function datagram_max(peer)
  if peer:sub(1, 1) == "[" then
    return M.UDP_MAX6, "IPv6"
  end
  return M.UDP_MAX4, "IPv4"
end

-- The reply r of a datagram function to peer (ok false: r is the error):
-- r, or nil and why there is none (nil: the function answered nothing).
local function datagram_reply(ok, r, peer)
  if not ok then
    return nil, r
  elseif r ~= nil and type(r) ~= "string" then
    return nil, ("handler returned a %s (expected a string or nil)"):format(type(r))
  end
  local max, family = datagram_max(peer)
  if r and #r > max then
    return nil, ("reply of %d bytes is longer than a datagram can be (at most %d bytes over %s)")
      :format(#r, max, family)
  end
  return r
end

-- A datagram from peer reaches the handler's state: see the header.
function H:datagram(data, peer)
  client_only(self, "datagram")
  peer = peer or self.s.core.peer
  if type(peer) ~= "string" or not (peer:match("^%[[%x:.]+%]:%d+$")
      or peer:match("^[^:%[%]]+:%d+$")) then
    error(("bad argument #2 to 'datagram' (\"HOST:PORT\" or \"[IPv6]:PORT\" expected, got %s)")
      :format(type(peer) == "string" and ("'" .. peer .. "'") or type(peer)), 2)
  end
  local max, family = datagram_max(peer)
  if type(data) ~= "string" then
    error(("bad argument #1 to 'datagram' (string expected, got %s)"):format(type(data)), 2)
  elseif #data > max then
    error(("bad argument #1 to 'datagram' (at most %d bytes over %s, got %d)")
      :format(max, family, #data), 2)
  end
  local f = self.h.on_datagram
  if not f then
    return data                     -- no datagram function: the C echo
  end
  -- no conn: echohost.log's lines name none
  local ctx = { budget = self.budget, mem = self.mem, base = self.base }
  local ok, res = guarded(ctx, traceback, f, peer, data)
  local r, err = datagram_reply(ok, res, peer)
  if err then
    self.log[#self.log + 1] = err
  end
  run_world(self.world)
  run_pending(self.world, run_world)
  if err then
    return nil, err
  end
  return r
end

-- Queries --------------------------------------------------------------------

-- Everything the client read so far.
function H:sent()
  return table.concat(self.s.chunks)
end

-- The bytes waiting in the paused client's queue.
function H:queued()
  return self.s.queued
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

-- The virtual clock: the seconds since open (sleeps, h:advance).
function H:clock()
  return self.world.clock
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
           error = h.error, log = h.log, logs = h.logs, state = h.s.state,
           upstreams = h.upstreams }
end

-- Exploring schedules ---------------------------------------------------------

M.EXPLORE_ALL = 12                  -- inputs of at most this many bytes: every cut
M.EXPLORE_RUNS = 10000              -- runs at most
M.EXPLORE_RANDOM = 200              -- random sets of cuts of a longer input

-- The chunks of s cut after each offset of cuts (sorted, 1 .. #s - 1).
local function cut(s, cuts, out)
  local from = 1
  for _, p in ipairs(cuts) do
    out[#out + 1] = s:sub(from, p)
    from = p + 1
  end
  if from <= #s then
    out[#out + 1] = s:sub(from)
  end
  return out
end

local function every_byte(n)
  local cuts = {}
  for p = 1, n - 1 do
    cuts[p] = p
  end
  return cuts
end

local EVENTS = { eof = M.CLOSE, reset = M.RESET }

-- The inputs of run() for the schedule sc over input.
local function schedule_inputs(input, sc)
  local items = cut(input:sub(1, sc.at), sc.cuts, {})
  if sc.event == "timeout" then
    items[#items + 1] = M.TIMEOUT
    if sc.at < #input then
      items[#items + 1] = input:sub(sc.at + 1)
    end
    items[#items + 1] = M.CLOSE
  else
    items[#items + 1] = EVENTS[sc.event]
  end
  return items
end

-- The k-subsets of 1..n, in lexicographic order, each passed to fn; stops
-- when fn returns false.
local function subsets(n, k, fn)
  local idx = {}
  for i = 1, k do
    idx[i] = i
  end
  while true do
    if fn(table.move(idx, 1, k, 1, {})) == false then
      return
    end
    local i = k
    while i >= 1 and idx[i] == n - k + i do
      i = i - 1
    end
    if i < 1 then
      return
    end
    idx[i] = idx[i] + 1
    for j = i + 1, k do
      idx[j] = idx[j - 1] + 1
    end
  end
end

-- The schedules of explore over an input of n bytes, smallest first.
local function schedules(n, opts)
  local out, max = {}, opts.max_runs or M.EXPLORE_RUNS
  local function add(sc)
    if #out < max then
      out[#out + 1] = sc
      return true
    end
    return false
  end
  local all = n <= (opts.all_max or M.EXPLORE_ALL)
  add({ cuts = {}, event = "eof", at = n })
  for _, bytewise in ipairs({ false, true }) do
    for at = 0, n do
      for _, event in ipairs({ "eof", "reset", "timeout" }) do
        -- the whole input then EOF: above, and byte by byte among all cuts
        if not (event == "eof" and at == n and (all or not bytewise)) then
          add({ cuts = bytewise and every_byte(at) or {}, event = event, at = at })
        end
      end
    end
  end
  for k = 1, all and n - 1 or 2 do
    local room = max - #out
    local count, stride = 0, 1
    if k == 2 and not all then     -- a sample of the double cuts, spread evenly
      local total = (n - 1) * (n - 2) // 2
      stride = math.max(1, math.ceil(total / math.max(1, room - (opts.random
        or M.EXPLORE_RANDOM))))
    end
    subsets(n - 1, k, function(cuts)
      count = count + 1
      if (count - 1) % stride == 0 then
        return add({ cuts = cuts, event = "eof", at = n })
      end
    end)
  end
  if not all then
    local rng = opts.seed or 1
    local function random(m)        -- a small LCG: the same on every Lua
      rng = (rng * 1103515245 + 12345) % 2147483648
      return rng % m + 1
    end
    for _ = 1, opts.random or M.EXPLORE_RANDOM do
      local set, cuts = {}, {}
      for _ = 1, random(math.min(n - 1, 16)) do
        set[random(n - 1)] = true
      end
      for p in pairs(set) do
        cuts[#cuts + 1] = p
      end
      table.sort(cuts)
      if not add({ cuts = cuts, event = "eof", at = n }) then
        break
      end
    end
  end
  return out
end

local function show_item(item)
  return type(item) == "string" and ("%q"):format(item):gsub("\\\n", "\\n") or tostring(item)
end

function M.explore(handler, input, check, opts)
  if type(input) ~= "string" then
    error(("bad argument #2 to 'explore' (string expected, got %s)"):format(type(input)), 2)
  elseif type(check) ~= "function" then
    error(("bad argument #3 to 'explore' (function expected, got %s)"):format(type(check)), 2)
  end
  opts = opts or {}
  local failed, smallest = 0, nil
  local list = schedules(#input, opts)
  for _, sc in ipairs(list) do
    local items = schedule_inputs(input, sc)
    local r = M.run(handler, items, opts.open)
    r.schedule, r.cuts, r.event, r.at = items, sc.cuts, sc.event, sc.at
    local ok, res, msg = pcall(check, r)
    if not ok or res == false then
      failed = failed + 1
      if not smallest or #items < #smallest.items then
        smallest = { items = items, msg = tostring(ok and (msg or "check returned false") or res) }
      end
    end
  end
  if failed == 0 then
    return true, #list
  end
  local shown = {}
  for i, item in ipairs(smallest.items) do
    shown[i] = show_item(item)
  end
  return false, ("explore: %d of %d runs failed; the smallest schedule: %s\n%s"):format(
    failed, #list, table.concat(shown, ", "), smallest.msg)
end

return M
