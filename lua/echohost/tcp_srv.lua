-- The generic server of the original Coq echo server, in Lua: open, listen,
-- then loop: accept, fork; the parent closes its copy of the client and
-- accepts again, the child runs the handler on the client and exits.
--
--   local tcp_srv = require "echohost.tcp_srv"
--   tcp_srv.tcp_srv("127.0.0.1", 8888, dofile "scripts/echo_once.lua")
--
-- The handler is a function(conn) or a direct-style table { handle =
-- function(conn) ... end }; conn is the client socket, which has the verbs
-- of the server's connections: conn:recv(), conn:send(data), conn:close().
local socket = require "echohost.socket"
local proc = require "echohost.proc"
local glue = require "echohost.glue"

local M = {}

-- How often (seconds) an idle server wakes to reap children that ended.
M.reap_interval = 0.2

local function handler_fn(handler, fname, argn)
  if type(handler) == "function" then
    return handler
  end
  if type(handler) == "table" and type(handler.handle) == "function" then
    return handler.handle
  end
  error(("bad argument #%d to '%s' (function or table with handle expected, got %s)")
    :format(argn, fname, type(handler)), 3)
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
local function child(srv, client, fn)
  srv:close()
  local ok, err = xpcall(fn, debug.traceback, client)
  if not ok then
    io.stderr:write("tcp_srv: handler error: ", tostring(err), "\n")
  end
  proc.exit(ok and 0 or 1)
end

-- Accepts one client and forks for it. true, or nil, message, errno when
-- accept failed in a way that is not a timeout.
local function accept_one(srv, fn, live)
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
    Child = function() child(srv, client, fn) end,
  })
  return true
end

-- Serves on srv, a listening socket, until opts.max_accepts connections
-- have been accepted (forever without it); then closes srv, waits for the
-- children and returns true. An accept failure returns nil, message, errno.
function M.serve(srv, handler, opts)
  local fn = handler_fn(handler, "serve", 2)
  local max = (opts or {}).max_accepts or math.huge
  local live, accepted = {n = 0}, 0
  srv:settimeout(M.reap_interval)
  while accepted < max do
    local ok, err, code = accept_one(srv, fn, live)
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
  handler_fn(handler, "tcp_srv", 3)
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
