-- echohost.tcp_srv: the generic fork-per-connection server of the original,
-- with the original echo_handler (scripts/echo_once.lua).
local socket = require "echohost.socket"
local proc = require "echohost.proc"
local glue = require "echohost.glue"
local tcp_srv = require "echohost.tcp_srv"

local echo_once = dofile("scripts/echo_once.lua")
local BIN = require("helpers.server").BIN
local ECHILD, EADDRINUSE = 10, 98

local function listener()
  local srv = assert(socket.open_socket("127.0.0.1", 0))
  assert(srv:listen())
  return srv, select(2, srv:sockname())
end

local function connect(port)
  return assert(socket.connect("127.0.0.1", port, 5))
end

-- Runs fn in a child process (exit 0, or 99 if it raised); returns the pid.
local function spawn(fn)
  return glue.match(assert(proc.fork()), {
    Parent = function(pid) return pid end,
    Child = function() proc.exit(pcall(fn) and 0 or 99) end,
  })
end

-- Waits about sec seconds (a bounded poll interval, not synchronisation).
local function pause(sec)
  local s <close> = assert(socket.open_socket("127.0.0.1", 0))
  s:listen()
  s:settimeout(sec)
  s:accept_connection()
end

-- The pids of pid's children, zombies included.
local function children(pid)
  local f = io.open(("/proc/%d/task/%d/children"):format(pid, pid))
  if not f then return {} end
  local list = {}
  for p in f:read("a"):gmatch("%d+") do list[#list + 1] = tonumber(p) end
  f:close()
  return list
end

-- Polls until pred() holds, at most 5 s; returns whether it did.
local function eventually(pred)
  for _ = 1, 250 do
    if pred() then return true end
    pause(0.02)
  end
  return pred()
end

-- Sends msg on c and checks the echo comes back, then that c is closed.
local function check_echo(c, msg)
  assert.equal(#msg, c:send(msg))
  assert.equal(msg, c:recv())
  assert.same({nil, "closed", 0}, {c:recv()})
end

describe("echohost.tcp_srv", function()
  it("serves 20 concurrent clients, each in its own child, and reaps them", function()
    local srv, port = listener()
    local pid = spawn(function() tcp_srv.serve(srv, echo_once) end)
    srv:close()
    finally(function()
      if proc.waitpid(pid, "nohang") == "running" then
        proc.kill(pid, "KILL")
        proc.waitpid(pid)
      end
    end)
    local clients = {}
    for i = 1, 20 do clients[i] = connect(port) end
    -- all 20 are being served at once: one live child per client
    assert.is_true(eventually(function() return #children(pid) == 20 end),
      "children: " .. #children(pid))
    for i = 20, 1, -1 do     -- the last accepted first: no one waits in line
      check_echo(clients[i], ("client %d says hello\n"):format(i))
      clients[i]:close()
    end
    assert.is_true(eventually(function() return #children(pid) == 0 end),
      "zombies left: " .. #children(pid))
    assert.is_true(proc.kill(pid, "TERM"))
    assert.same({"signaled", "SIGTERM", pid}, {proc.waitpid(pid)})
  end)

  it("serve stops after max_accepts connections and waits for its children", function()
    local srv, port = listener()
    local clients = {}
    for i = 1, 3 do           -- queued in the backlog before serve runs
      clients[i] = connect(port)
      clients[i]:send("msg " .. i)
    end
    assert.is_true(tcp_srv.serve(srv, echo_once, {max_accepts = 3}))
    assert.equal("echohost.socket (closed)", tostring(srv))
    for i = 1, 3 do
      assert.equal("msg " .. i, clients[i]:recv())
      assert.same({nil, "closed", 0}, {clients[i]:recv()})
      clients[i]:close()
    end
    assert.same({nil, "waitpid -1: No child processes", ECHILD},
      {proc.waitpid(-1, "nohang")})
  end)

  it("tcp_srv opens, listens and runs a per-message function handler", function()
    local clients = {}
    local upper = function(conn, data)   -- a reply after close is still sent
      conn:close()
      return data:upper()
    end
    local ok = tcp_srv.tcp_srv("127.0.0.1", 0, upper, {
      max_accepts = 2,
      on_listen = function(srv)
        local host, port = srv:sockname()
        assert.equal("127.0.0.1", host)
        for i = 1, 2 do
          clients[i] = connect(port)
          clients[i]:send("hello " .. i)
        end
      end,
    })
    assert.is_true(ok)
    for i = 1, 2 do
      assert.equal("HELLO " .. i, clients[i]:recv())
      clients[i]:close()
    end
  end)

  it("a handler that raises closes only its own connection", function()
    local srv, port = listener()
    local bad, good = connect(port), connect(port)
    bad:send("boom")
    good:send("fine")
    local handler = {handle = function(conn)
      local msg = conn:recv()
      if msg == "boom" then error("handler failed on purpose") end
      conn:send(msg)
      conn:close()
    end}
    assert.is_true(tcp_srv.serve(srv, handler, {max_accepts = 2}))
    assert.same({nil, "closed", 0}, {bad:recv()})
    assert.equal("fine", good:recv())
    bad:close()
    good:close()
  end)

  it("conn:pipe(conn) echoes until the client's EOF, then passes it on", function()
    local srv, port = listener()
    local c = connect(port)
    assert(c:send("abc"))
    assert(c:shutdown("send"))
    local out = os.tmpname()
    local handler = {handle = function(conn)
      local f = assert(io.open(out, "w"))     -- the child's result, for the parent
      f:write(table.concat({ tostring(conn:pipe(conn)), tostring(conn:send("late")) }, " "))
      f:close()
    end}
    assert.is_true(tcp_srv.serve(srv, handler, {max_accepts = 1}))
    assert.equal("abc", c:recv())
    assert.same({nil, "closed", 0}, {c:recv()})
    c:close()
    local f = assert(io.open(out))
    assert.equal("3 nil", f:read("a"))      -- the bytes moved; the conn was shut
    f:close()
    os.remove(out)
  end)

  it("serves callbacks and passes on_close how each connection ended", function()
    local srv, port = listener()
    local log = os.tmpname()
    finally(function() os.remove(log) end)
    local handler = {
      on_open = function(conn) conn.state.tag = "silent" end,
      on_data = function(conn, data)
        conn.state.tag = data
        if data == "close" then
          conn:close()
          return "bye"
        elseif data == "error" then
          error("on purpose")
        end
        return data
      end,
      on_close = function(conn, why)
        local f = assert(io.open(log, "a"))
        f:write(conn.state.tag, "=", why, "\n")
        f:close()
      end,
    }
    local eof, close, err = connect(port), connect(port), connect(port)
    eof:send("eof")
    eof:shutdown("send")
    close:send("close")
    err:send("error")
    local rst = assert(require("socket").connect("127.0.0.1", port))
    rst:setoption("linger", { on = true, timeout = 0 })
    rst:close()                              -- an RST
    assert.is_true(tcp_srv.serve(srv, handler, { max_accepts = 4 }))
    local lines = {}
    for line in io.lines(log) do lines[#lines + 1] = line end
    table.sort(lines)
    assert.same({ "close=closed", "eof=eof", "error=error", "silent=reset" }, lines)
    assert.equal("eof", eof:recv())
    assert.equal("bye", close:recv())
    assert.same({ nil, "closed", 0 }, { close:recv() })
    for _, c in ipairs({ eof, close, err }) do c:close() end
  end)

  it("has no timers and no bus: conn:after, conn:every and conn:subscribe raise, argument "
    .. "checks first", function()
    local srv, port = listener()
    local log = os.tmpname()
    finally(function() os.remove(log) end)
    local handler = { handle = function(conn)
      local got = {}
      for _, call in ipairs({ { "after", 1 }, { "every", 1 }, { "every", 0 } }) do
        local ok, err = pcall(conn[call[1]], conn, call[2], print)
        got[#got + 1] = ok and "no raise" or (tostring(err):gsub("^[^:]*:%d+: ", ""))
      end
      local ok, err = pcall(conn.subscribe, conn, "ch", print)
      got[#got + 1] = ok and "no raise" or (tostring(err):gsub("^[^:]*:%d+: ", ""))
      conn:close()
      local r = table.pack(conn:after(1, print))
      got[#got + 1] = ("%s %s %s"):format(r[1], r[2], r[3])
      r = table.pack(conn:subscribe("ch", print))
      got[#got + 1] = ("%s %s %s"):format(r[1], r[2], r[3])
      local f = assert(io.open(log, "w"))
      f:write(table.concat(got, "\n"))
      f:close()
    end }
    local c = connect(port)
    assert.is_true(tcp_srv.serve(srv, handler, { max_accepts = 1 }))
    assert.same({ nil, "closed", 0 }, { c:recv() })
    c:close()
    local f = assert(io.open(log))
    local text = f:read("a")
    f:close()
    assert.equal("timers are not available under tcp_srv\n"
      .. "timers are not available under tcp_srv\n"
      .. "bad argument #1 to 'every' (expected seconds > 0)\n"
      .. "conn:subscribe is not available under tcp_srv\n"
      .. "nil closed 0\n"
      .. "nil closed 0", text)
  end)

  it("loads a handler given as a path through the loader", function()
    assert.same({ nil, "no/such.lua: cannot open no/such.lua: No such file or directory" },
      { tcp_srv.tcp_srv("127.0.0.1", 0, "no/such.lua") })
  end)

  it("gives a handler loaded from a path a blocking upstream; conn:spawn raises there", function()
    local up, up_port = listener()
    local upstream = spawn(function()         -- one client: upper-cases one read
      local c = assert(up:accept_connection())
      c:send(assert(c:recv()):upper())
      c:close()
    end)
    up:close()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(([[
local socket = require "echohost.socket"
return { handle = function(conn)
  local up = assert(socket.connect("127.0.0.1", %d))
  up:send(conn:recv())
  local reply = up:receive("*a")
  local ok, err = pcall(conn.spawn, conn, function() end)
  conn:send(reply .. "|" .. tostring(ok) .. "|" .. tostring(err):match("conn:spawn.*"))
end }
]]):format(up_port))
    f:close()
    local client
    local ok = tcp_srv.tcp_srv("127.0.0.1", 0, path, {
      max_accepts = 1,
      on_listen = function(srv)
        client = connect(select(2, srv:sockname()))
        client:send("through")
      end,
    })
    os.remove(path)
    assert.is_true(ok)
    assert.equal("THROUGH|false|conn:spawn is not available under tcp_srv", client:recv())
    client:close()
    assert.same({ "exited", 0, upstream }, { proc.waitpid(upstream) })
  end)

  it("reaps only its own children: the caller's keep their status", function()
    local mine = spawn(function() end)        -- ends at once: a zombie of ours
    local function zombie()
      local f = io.open(("/proc/%d/stat"):format(mine))
      local st = f and f:read("a"):match("^%d+ %b() (%a)")
      if f then f:close() end
      return st == "Z"
    end
    assert.is_true(eventually(zombie))
    local client
    assert.is_true(tcp_srv.tcp_srv("127.0.0.1", 0, echo_once, {
      max_accepts = 2,                          -- two turns of the reaping loop
      on_listen = function(srv)
        local port = select(2, srv:sockname())
        client = { connect(port), connect(port) }
        for _, c in ipairs(client) do c:send("x") end
      end,
    }))
    for _, c in ipairs(client) do c:close() end
    assert.same({ "exited", 0, mine }, { proc.waitpid(mine) })
  end)

  it("returns nil, message, EADDRINUSE when the port is taken", function()
    local srv, port = listener()
    finally(function() srv:close() end)
    assert.same({nil, ("bind 127.0.0.1:%d: Address already in use"):format(port), EADDRINUSE},
      {tcp_srv.tcp_srv("127.0.0.1", port, echo_once)})
  end)

  it("raises on a handler the loader refuses, with the loader's message", function()
    assert.has_error(function() tcp_srv.tcp_srv("127.0.0.1", 0, 42) end,
      "bad argument #3 to 'tcp_srv' (handler: returned number; a handler returns a "
        .. "function or a table with handle, on_open, on_data, on_close or on_datagram)")
    assert.has_error(function() tcp_srv.serve(nil, {}) end,
      "bad argument #2 to 'serve' (handler: returned a table without handle, on_open, "
        .. "on_data, on_close or on_datagram)")
  end)

  it("scripts/tcp_echo.lua answers as the original's telnet session shows", function()
    local p = assert(io.popen(BIN .. " --script scripts/tcp_echo.lua 0 2>&1 & echo pid $!"))
    local pid, port
    for _ = 1, 2 do
      local line = p:read("l") or ""
      pid = pid or tonumber(line:match("^pid (%d+)"))
      port = port or tonumber(line:match("listening on 127%.0%.0%.1:(%d+)"))
    end
    finally(function()
      if pid then proc.kill(pid, "TERM") end
      p:close()
    end)
    assert.is_number(pid)
    assert.is_number(port)
    check_echo(connect(port), "hello, echo server!\r\n")
    check_echo(connect(port), "and again\r\n")
  end)
end)
