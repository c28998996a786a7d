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
-- loaded by loader.load (a failure: nil, message). In the child, conn wraps
-- the client socket with the conn API: conn:recv([max]), conn:send(data),
-- conn:close() ("flush, then close": a callback's reply is still sent),
-- conn:settimeout(secs), conn.id (the child's pid), conn.peer, conn.state;
-- other socket methods (conn:shutdown("send")) pass through. on_close(conn,
-- reason) gets "eof", "closed", "error" or "reset".
local socket = require "echohost.socket"
local proc = require "echohost.proc"
local glue = require "echohost.glue"
local loader = require "echohost.loader"

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

-- The conn of a child: the client socket under the conn API --------------

local Conn = {}

local function conn_state(self)
  return rawget(self, "_s")
end

-- nil, "closed", code once the connection is closed or gone.
local function gone(s)
  if s.closing then
    return nil, "closed", 0
  elseif s.reset then
    return nil, "closed", ECONNRESET
  end
end

function Conn:recv(max)
  local s = conn_state(self)
  if max ~= nil and (math.type(max) ~= "integer" or max < 0) then
    error("bad argument #1 to 'recv' (expected a positive size)", 2)
  end
  if s.closing or s.reset then
    return gone(s)
  elseif s.eof then
    return nil, "closed", 0
  end
  local data, err, code = s.sock:recv(max ~= 0 and max or nil)
  if not data and err == "closed" then
    if code == ECONNRESET then
      s.reset = true
    else
      s.eof = true
    end
  elseif not data and err ~= "timeout" then
    s.failed = err
  end
  return data, err, code
end

function Conn:send(data)
  local s = conn_state(self)
  if type(data) ~= "string" then
    error(("bad argument #1 to 'send' (string expected, got %s)"):format(type(data)), 2)
  end
  if s.closing or s.reset then
    return gone(s)
  end
  local n, err, code = s.sock:send(data)
  if not n and err == "closed" then
    s.reset = true                  -- EPIPE or ECONNRESET: the client is gone
    return nil, "closed", ECONNRESET
  elseif not n and err ~= "timeout" then
    s.failed = err
  end
  return n, err, code
end

function Conn:close()
  local s = conn_state(self)
  s.closing = true
  if not s.in_callback and not s.shut then  -- a callback's reply goes out first
    s.shut = true
    s.sock:close()
  end
  return true
end

function Conn:settimeout(t)
  if t ~= nil and (type(t) ~= "number" or t < 0) then
    error("bad argument #1 to 'settimeout' (expected seconds (>= 0) or nil)", 2)
  end
  conn_state(self).sock:settimeout(t)
  return true
end

local conn_mt = {}

function conn_mt.__index(self, k)
  local s = conn_state(self)
  if Conn[k] then
    return Conn[k]
  elseif k == "id" or k == "peer" or k == "state" then
    return s[k]
  end
  local method = s.sock[k]
  if type(method) == "function" then
    return function(_, ...) return method(s.sock, ...) end
  end
  return nil
end

function conn_mt.__newindex()
  error("echohost.conn fields are read-only (keep your data in conn.state)", 2)
end

function conn_mt.__tostring(self)
  local s = conn_state(self)
  return ("echohost.conn %d (%s)"):format(s.id, s.closing and "closed" or s.peer)
end

local function new_conn(sock)
  local host, port = sock:peername()
  local s = { sock = sock, id = proc.getpid(), state = {},
              peer = host and (host .. ":" .. tostring(port)) or "?" }
  return setmetatable({ _s = s }, conn_mt), s
end

-- Serving one connection in the child ---------------------------------------

-- Closes the client socket once.
local function shut(s)
  s.closing = true
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
  if r and #r > 0 and not (s.reset or s.shut) then
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
  elseif s.eof then
    return "eof"
  end
  return "closed"
end

-- Reaps every child that has ended, without waiting; returns how many.
local function reap(live)
  local n = 0
  while live.n > 0 do
    local how, _, pid = proc.waitpid(-1, "nohang")
    if how == nil or how == "running" then
      break
    end
    if live[pid] then
      live[pid] = nil
      live.n = live.n - 1
    end
    n = n + 1
  end
  return n
end

-- The child: serve one client, then exit (0, or 1 if the handler raised).
local function child(srv, client, h)
  srv:close()
  local conn, s = new_conn(client)
  local ok, err
  if h.kind == "direct" then
    ok, err = xpcall(h.handle, debug.traceback, conn)
  else
    ok, err = pcall(serve_callbacks, h, conn, s)
  end
  if not ok then
    io.stderr:write("tcp_srv: handler error: ", tostring(err), "\n")
  elseif s.failed then
    io.stderr:write("tcp_srv: ", s.failed, "\n")
  end
  local reason = reason_of(s, ok)
  shut(s)                           -- the output is out: sends are blocking
  if h.on_close then
    local cok, cerr = xpcall(h.on_close, debug.traceback, conn, reason)
    if not cok then
      io.stderr:write("tcp_srv: handler error: ", tostring(cerr), "\n")
      ok = false
    end
  end
  proc.exit(ok and 0 or 1)
end

-- Accepts one client and forks for it. true, or nil, message, errno when
-- accept failed in a way that is not a timeout.
local function accept_one(srv, h, live)
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
    Child = function() child(srv, client, h) end,
  })
  return true
end

-- Serves on srv, a listening socket, until opts.max_accepts connections
-- have been accepted (forever without it); then closes srv, waits for the
-- children and returns true. An accept failure returns nil, message, errno.
function M.serve(srv, handler, opts)
  local h = checked(handler, "serve", 2)
  local max = (opts or {}).max_accepts or math.huge
  local live, accepted = {n = 0}, 0
  srv:settimeout(M.reap_interval)
  while accepted < max do
    local ok, err, code = accept_one(srv, h, live)
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

-- tcp_srv(host, port, handler [, opts]): opens host:port, listens and
-- serves (see serve). opts.backlog is listen's backlog; opts.on_listen(srv)
-- is called once the socket listens (srv:sockname() tells the port when
-- port is 0). Failure to open or listen: nil, message, errno.
function M.tcp_srv(host, port, handler, opts)
  opts = opts or {}
  if type(handler) == "string" then
    local err
    handler, err = loader.load(handler)
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
