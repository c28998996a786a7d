-- The generic server of the original Coq echo server, in Lua: open, listen,
-- then loop: accept, fork; the parent closes its copy of the client and
-- accepts again, the child runs the handler on the client and exits.
--
--   local tcp_srv = require "echohost.tcp_srv"
--   tcp_srv.tcp_srv("127.0.0.1", 8888, dofile "scripts/echo_once.lua")
--
-- The handler follows the loader's rules (echohost.loader.check; README
-- "What a handler file may return"): a function(conn, data) called per
-- message (its string result is sent), a table of callbacks { on_open,
-- on_data, on_close }, or a direct-style table { handle = function(conn) }
-- that serves the whole connection with blocking calls. A string is a path,
-- loaded by loader.load (a failure: nil, message). In the child, conn is
-- echohost.conn (lua/echohost/conn.lua, the harness's too) over the client
-- socket: recv, receive, receiveuntil (frames of at most opts.high_water
-- bytes, default 256 KiB), send, pipe, close ("flush, then close": a callback's
-- reply is still sent), shutdown("send"), reset (a plain close here:
-- echohost.socket has no SO_LINGER, so the client sees a FIN, not an RST),
-- sleep (a poll on a socket of its own), settimeout, conn.id (the child's
-- pid), conn.peer, conn.state. on_close(conn, reason) gets "eof",
-- "closed", "error" or "reset". Timers are not implemented here: every wait
-- of the child is a plain blocking call, with no loop to fire them in, so
-- conn:after and conn:every raise "timers are not available under tcp_srv"
-- (after the same argument checks as elsewhere; on a closed connection they
-- still give nil, "closed", 0).
--
-- conn:spawn raises "conn:spawn is not available under tcp_srv" (after its
-- argument check; nil, "closed", 0 on a closed connection): the child has
-- one coroutine, its own. conn:subscribe raises "conn:subscribe is not
-- available under tcp_srv" the same way: no bus joins its processes.
--
-- A handler loaded from a path gets require("echohost.settings"), a copy
-- of opts.settings (a table of strings; default {}),
-- require("echohost.log"): error, warn, info, debug(fmt, ...), each writing
-- one line to stderr, "<level>: handler <file>:<line>: <message>" (the
-- harness's h.logs line; echohost.loader.logger), and
-- require("echohost.socket") with connect only (echohost.conn's
-- socket_module; the other functions raise "echohost.socket.listen is not
-- available in a handler"). connect(host, port [, timeout]) in handle(conn)
-- is echohost.socket.connect, blocking (its results on failure: nil,
-- "connect 127.0.0.1:9: Connection refused", 111, ...), and its socket the
-- echohost.conn of an upstream (peer "host:port", id the child's pid):
-- blocking recv, receive, receiveuntil, send (nil, "closed", 104 once the
-- upstream went away), shutdown("send"), close, reset (a plain close, as
-- for the conn), sleep, settimeout (none by default: connect's timeout
-- bounds the connect only); after, every and spawn raise. In a callback (or
-- a per-message function) connect raises "echohost.socket.connect would
-- wait: only a coroutine of the connection (handle, conn:spawn) can wait",
-- at load time "echohost.socket.connect is not available while a handler
-- loads"; at most 64 per connection. The child closes them when the
-- connection ends. (A handler value gets the ordinary echohost.socket.)
local socket = require "echohost.socket"
local proc = require "echohost.proc"
local glue = require "echohost.glue"
local loader = require "echohost.loader"
local conn_api = require "echohost.conn"

local M = {}

-- How often (seconds) an idle server wakes to reap children that ended.
M.reap_interval = 0.2

local ECONNRESET = 104

-- The loader's record of handler, or a raise naming the argument.
local function checked(handler, fname, argn)
  local h, err = loader.check(handler, "handler")
  if not h then
    error(("bad argument #%d to '%s' (%s)"):format(argn, fname, err), 3)
  end
  return h
end

-- The conn of a child: echohost.conn over the client socket ----------------

local RECV_MAX = 64 * 1024          -- the most one read of a frame asks for

-- A wait of secs seconds: an accept on a listening socket of its own that
-- no one connects to (echohost.socket has no sleep; its waits are polls).
local function pause(secs)
  if secs <= 0 then
    return true
  end
  local l, err, code = socket.open_socket("127.0.0.1", 0)
  if not l then
    return nil, err, code
  end
  local ok
  ok, err, code = l:listen(1)
  if ok then
    l:settimeout(secs)
    local c
    c, err, code = l:accept_connection()
    if c then                       -- a stray client of that port: not ours
      c:close()
    elseif err == "timeout" then
      ok = true
    else
      ok = nil
    end
  end
  l:close()
  if not ok then
    return nil, err, code
  end
  return true
end

-- The operations of echohost.conn (see lua/echohost/conn.lua) on s.sock,
-- blocking: the child has one connection. s records how it went: eof, reset
-- (by the client), failed (another socket error), closing, rst.
local function ops_of(s)
  local ops = {}
  function ops.recv(max)
    if s.eof then
      return nil, "closed", 0
    end
    local n = max ~= 0 and math.min(max, RECV_MAX) or nil
    local data, err, code
    if s.in_callback then           -- a callback may not wait: poll
      s.sock:settimeout(0)
      data, err, code = s.sock:recv(n)
      s.sock:settimeout(s.core.timeout)
      if not data and err == "timeout" then
        return false
      end
    else
      data, err, code = s.sock:recv(n)
    end
    if not data and err == "closed" then
      if code == ECONNRESET then
        s.reset = true
        conn_api.gone(s.core, ECONNRESET)
      else
        s.eof = true
      end
    elseif not data and err ~= "timeout" then
      s.failed = err
    end
    if data then
      return data
    end
    return nil, err, code
  end
  function ops.send(data)
    local n, err, code = s.sock:send(data)
    if not n and err == "closed" then
      s.reset = true                -- EPIPE or ECONNRESET: the client is gone
      conn_api.gone(s.core, ECONNRESET)
      return nil, "closed", ECONNRESET
    elseif not n and err ~= "timeout" then
      s.failed = err
    end
    if n then
      return n
    end
    return nil, err, code
  end
  function ops.close()
    s.closing = true
    if not s.in_callback and not s.shut then  -- a callback's reply goes out first
      s.shut = true
      s.sock:close()
    end
  end
  function ops.shutdown()
    s.sock:shutdown("send")         -- sends are blocking: what was queued is out
  end
  -- echohost.socket has no SO_LINGER: the reset is a plain close (a FIN)
  function ops.reset()
    s.rst = true
    ops.close()
  end
  function ops.sleep(secs)
    if s.in_callback then
      return false
    end
    return pause(secs)
  end
  function ops.settimeout(t)
    s.sock:settimeout(t)
  end
  function ops.arm()                -- no event loop here: see the header
    return false, "timers are not available under tcp_srv"
  end
  function ops.spawn()              -- nor a scheduler of coroutines
    return false, "conn:spawn is not available under tcp_srv"
  end
  function ops.subscribe()          -- nor a bus between its processes
    return false, "conn:subscribe is not available under tcp_srv"
  end
  return ops
end

-- The operations of an upstream socket u.sock (blocking, as the conn's).
local function up_ops(u)
  local ops = {}
  function ops.recv(max)
    if u.eof then
      return nil, "closed", 0
    end
    local data, err, code = u.sock:recv(max ~= 0 and math.min(max, RECV_MAX) or nil)
    if data then
      return data
    elseif err == "closed" and code == 0 then
      u.eof = true
    end
    return nil, err, code
  end
  function ops.send(data)
    local n, err, code = u.sock:send(data)
    if n then
      return n
    elseif err == "closed" then     -- EPIPE or ECONNRESET: the upstream is gone
      return nil, "closed", ECONNRESET
    end
    return nil, err, code
  end
  function ops.close()
    u.sock:close()
  end
  function ops.shutdown()
    u.sock:shutdown("send")
  end
  ops.reset = ops.close             -- no SO_LINGER: see the header
  function ops.sleep(secs)
    return pause(secs)
  end
  function ops.settimeout(t)
    u.sock:settimeout(t)
  end
  return ops
end

local CHILD                         -- the child's connection state (nil: no child)

-- The upstream sockets of s still open.
local function held(s)
  local n = 0
  for _, u in ipairs(s.ups) do
    if not conn_api.done(u.core) then
      n = n + 1
    end
  end
  return n
end

-- echohost.socket.connect in a handler (after conn_api.socket_module's checks).
local function connect(host, port, timeout, addr)
  local s = CHILD
  if not s then
    error(conn_api.CONNECT_AT_LOAD, 2)
  elseif s.in_callback or not s.direct then
    error(conn_api.would_wait(conn_api.CONNECT), 2)
  elseif conn_api.done(s.core) then
    return nil, "closed", s.core.code
  elseif held(s) >= conn_api.UPSTREAMS_MAX then
    error(conn_api.too_many_upstreams(), 2)
  end
  local sock, err, code = socket.connect(host, port, timeout)
  if not sock then
    return nil, err, code
  end
  sock:settimeout(nil)              -- the timeout bounded the connect only
  local u = { sock = sock, eof = false }
  u.conn, u.core = conn_api.new(up_ops(u), { id = s.core.id, peer = addr,
    high_water = s.core.high_water, upstream = true })
  s.ups[#s.ups + 1] = u
  return u.conn
end

local handler_socket = conn_api.socket_module(connect)

-- Closes the upstream sockets of s still open (the connection ended).
local function close_ups(s)
  for _, u in ipairs(s.ups) do
    if not conn_api.done(u.core) then
      conn_api.gone(u.core, 0)
      u.sock:close()
    end
  end
end

local function new_conn(sock, high_water)
  local host, port = sock:peername()
  local s = { sock = sock, ups = {} }
  local c
  c, s.core = conn_api.new(ops_of(s), { id = proc.getpid(), high_water = high_water,
    peer = host and (host .. ":" .. tostring(port)) or "?" })
  return c, s
end

-- Serving one connection in the child ---------------------------------------

-- Closes the client socket once.
local function shut(s)
  s.closing = true
  conn_api.gone(s.core, s.reset and ECONNRESET or 0)
  close_ups(s)
  if not s.shut then
    s.shut = true
    s.sock:close()
  end
end

-- Calls a callback of h; sends its reply, even after conn:close() (the
-- close waits for the reply).
local function callback(s, f, conn, ...)
  s.in_callback = true
  local ok, r = xpcall(f, debug.traceback, conn, ...)
  s.in_callback = false
  if not ok then
    error(r, 0)
  elseif r ~= nil and type(r) ~= "string" then
    error(("handler returned a %s (expected a string or nil)"):format(type(r)), 0)
  end
  if r and #r > 0 and not (s.reset or s.shut or s.rst or s.core.wshut) then
    local n, err = s.sock:send(r)
    if not n and err == "closed" then
      s.reset = true
    elseif not n then
      s.failed = err
    end
  end
  if s.closing then
    shut(s)
  end
end

-- Per message and callbacks: read, call, reply, until EOF, a close, a
-- reset or a socket error.
local function serve_callbacks(h, conn, s)
  if h.on_open then
    callback(s, h.on_open, conn)
  end
  while not (s.closing or s.reset or s.eof or s.failed) do
    local data = conn:recv()
    if data and h.on_data then
      callback(s, h.on_data, conn, data)
    end
  end
end

-- How the connection ended, for on_close.
local function reason_of(s, ok)
  if not ok or s.failed then
    return "error"
  elseif s.reset then
    return "reset"
  elseif s.rst then                 -- conn:reset(): the handler ended it
    return "closed"
  elseif s.eof then
    return "eof"
  end
  return "closed"
end

-- Reaps the children of live that have ended, without waiting; returns
-- how many. Only those: waitpid(-1) would also take a child the caller
-- forked itself, whose status its own waitpid then never sees.
local function reap(live)
  local n = 0
  for pid in pairs(live) do
    if pid ~= "n" and proc.waitpid(pid, "nohang") ~= "running" then
      live[pid] = nil             -- ended (or not ours any more)
      live.n = live.n - 1
      n = n + 1
    end
  end
  return n
end

-- The child: serve one client, then exit (0, or 1 if the handler raised).
local function child(srv, client, h, opts)
  srv:close()
  local c, s = new_conn(client, opts.high_water)
  s.direct, CHILD = h.kind == "direct", s
  local ok, err
  if h.kind == "direct" then
    ok, err = xpcall(h.handle, debug.traceback, c)
  else
    ok, err = pcall(serve_callbacks, h, c, s)
  end
  if not ok then
    io.stderr:write("tcp_srv: handler error: ", tostring(err), "\n")
  elseif s.failed then
    io.stderr:write("tcp_srv: ", s.failed, "\n")
  end
  local reason = reason_of(s, ok)
  shut(s)                           -- the output is out: sends are blocking
  if h.on_close then
    local cok, cerr = xpcall(h.on_close, debug.traceback, c, reason)
    if not cok then
      io.stderr:write("tcp_srv: handler error: ", tostring(cerr), "\n")
      ok = false
    end
  end
  proc.exit(ok and 0 or 1)
end

-- Accepts one client and forks for it. true, or nil, message, errno when
-- accept failed in a way that is not a timeout.
local function accept_one(srv, h, live, opts)
  local client, err, code = srv:accept_connection()
  if not client then
    if err == "timeout" then
      return false
    end
    return nil, err, code
  end
  local id, ferr = proc.fork()
  if not id then
    io.stderr:write("tcp_srv: ", ferr, "\n")
    client:close()
    return true
  end
  glue.match(id, {
    Parent = function(pid)
      live[pid] = true
      live.n = live.n + 1
      client:close()
    end,
    Child = function() child(srv, client, h, opts) end,
  })
  return true
end

-- Serves on srv, a listening socket, until opts.max_accepts connections
-- have been accepted (forever without it); then closes srv, waits for the
-- children and returns true. An accept failure returns nil, message, errno.
function M.serve(srv, handler, opts)
  local h = checked(handler, "serve", 2)
  opts = opts or {}
  local max = opts.max_accepts or math.huge
  local live, accepted = {n = 0}, 0
  srv:settimeout(M.reap_interval)
  while accepted < max do
    local ok, err, code = accept_one(srv, h, live, opts)
    if ok == nil then
      srv:close()
      return nil, err, code
    end
    if ok then
      accepted = accepted + 1
    end
    reap(live)
  end
  srv:close()
  for pid in pairs(live) do
    if pid ~= "n" then
      proc.waitpid(pid)
    end
  end
  return true
end

-- The modules a handler loaded from a path gets (see the header).
local function provided(settings)
  if settings ~= nil and type(settings) ~= "table" then
    error(("bad option 'settings' to 'tcp_srv' (table expected, got %s)"):format(type(settings)),
      3)
  end
  return { [loader.SETTINGS] = settings or {},
           ["echohost.log"] = loader.logger(function(_, line) io.stderr:write(line, "\n") end),
           ["echohost.socket"] = handler_socket }
end

-- tcp_srv(host, port, handler [, opts]): opens host:port, listens and
-- serves (see serve). opts.backlog is listen's backlog; opts.on_listen(srv)
-- is called once the socket listens (srv:sockname() tells the port when
-- port is 0); opts.settings: see the header. Failure to open or listen:
-- nil, message, errno.
function M.tcp_srv(host, port, handler, opts)
  opts = opts or {}
  if type(handler) == "string" then
    local err
    handler, err = loader.load(handler, provided(opts.settings))
    if not handler then
      return nil, err
    end
  else
    handler = checked(handler, "tcp_srv", 3)
  end
  local srv, err, code = socket.open_socket(host, port)
  if not srv then
    return nil, err, code
  end
  local ok
  ok, err, code = srv:listen(opts.backlog)
  if not ok then
    srv:close()
    return nil, err, code
  end
  if opts.on_listen then
    opts.on_listen(srv)
  end
  return M.serve(srv, handler, opts)
end

return M
