-- The control socket (--control PATH) against a live server: the client
-- (echohost --repl --connect PATH), stats/conns/handler/reload, several
-- operators, broken operators, and paths that are refused.
local server = require "helpers.server"
local util = require "helpers.util"
local unix = require "socket.unix"
local socket = require "socket"

local BIN = util.realpath(server.BIN)               -- tests cd elsewhere
local q, slurp, spit, tmpdir = server.quote, util.slurp, util.spit, util.tmpdir

-- Runs `echohost --repl --connect path` with input piped: stdout, stderr, code.
local function ctl(path, input)
  return util.pipe(q(BIN) .. " --repl --connect " .. q(path), input)
end

-- A raw operator: frames "<type> <len>\n<payload>" until a prompt frame.
local Raw = {}
Raw.__index = Raw

local function raw(path)
  local c = assert(unix.stream())
  c:settimeout(5)
  assert(c:connect(path))
  local r = setmetatable({ c = c }, Raw)
  r:until_prompt()
  return r
end

-- Frames up to the next prompt: {o = "...", e = "...", prompt = "p" or "c"}.
function Raw:until_prompt()
  local got = { o = "", e = "", i = "" }
  while true do
    local head, err = self.c:receive("*l")
    if not head then
      return nil, err
    end
    local t, n = head:match("^(%a) (%d+)$")
    assert(t, "bad frame header: " .. head)
    local data = ""
    if tonumber(n) > 0 then
      data = assert(self.c:receive(tonumber(n)))
    end
    if t == "p" or t == "c" then
      got.prompt = t
      return got
    end
    got[t] = got[t] .. data
  end
end

function Raw:eval(line)
  assert(self.c:send(line .. "\n"))
  return self:until_prompt()
end

function Raw:close()
  self.c:close()
end

local function echo(srv, data)
  local c = srv:connect()
  local back = server.exchange(c, data)
  c:close()
  return back
end

describe("--control", function()
  local dir
  before_each(function()
    dir = tmpdir()
  end)
  after_each(function()
    os.execute("rm -rf " .. q(dir))
  end)

  it("listens on a Unix socket with mode 0600 and removes it on exit", function()
    local path = dir .. "/ctl.sock"
    local srv = server.start({ "--workers", "1", "--control", path })
    finally(function() srv:stop() end)
    local p = io.popen("stat -c '%F %a' " .. q(path))
    local what = p:read("l")
    p:close()
    assert.equal("socket 600", what)
    assert.equal(0, srv:stop())
    assert.is_nil(io.open(path))
  end)

  it("refuses a path that is not a socket: one clear line, exit 1", function()
    local path = dir .. "/file"
    spit(path, "precious")
    local code, err = server.run({ "--listen", "127.0.0.1:0", "--control", path })
    assert.equal(1, code)
    assert.truthy(err:find("control socket " .. path
      .. ": path exists and is not a socket (refusing to replace it)", 1, true), err)
    assert.equal(1, select(2, err:gsub("\n", "")))
    assert.equal("precious", slurp(path))
  end)

  it("refuses the socket of a server that is running", function()
    local path = dir .. "/ctl.sock"
    local srv = server.start({ "--workers", "1", "--control", path })
    finally(function() srv:stop() end)
    local code, err = server.run({ "--listen", "127.0.0.1:0", "--control", path })
    assert.equal(1, code)
    assert.truthy(err:find("control socket " .. path .. ": in use by a running server", 1, true),
      err)
    assert.equal("1\n", (ctl(path, "1\n")))      -- the first server still answers
  end)

  it("is refused with --model fork: one line, exit 2", function()
    local code, err = server.run({ "--model", "fork", "--control", dir .. "/ctl.sock" })
    assert.equal(2, code)
    assert.truthy(err:find("--control needs --model event", 1, true), err)
  end)

  it("stops an evaluation that runs too long; the server goes on", function()
    local path, log = dir .. "/ctl.sock", dir .. "/log"
    local p = io.popen(string.format("echo $$; exec env ECHOHOST_CONTROL_EVAL_MS=300 %s "
      .. "--listen 127.0.0.1:0 --workers 1 --control %s 2> %s", q(BIN), q(path), q(log)))
    local pid = tonumber(p:read("l"))
    finally(function()
      os.execute("kill " .. pid)
      p:close()
    end)
    assert.truthy(server.wait(function() return os.execute("test -S " .. q(path)) end, 10))
    local t0 = socket.gettime()
    local out, err = ctl(path, "while true do end\n=1 + 1\n")
    assert.equal("2\n", out)
    assert.truthy(err:find("^evaluation stopped: longer than 300 ms\n"), err)
    assert.is_true(socket.gettime() - t0 < 5)
  end)

  it("takes over a stale socket left by a server that died", function()
    local path = dir .. "/ctl.sock"
    local old = assert(unix.stream())
    assert(old:bind(path))
    assert(old:listen())
    old:close()                                   -- the path stays, nobody accepts
    local srv = server.start({ "--workers", "1", "--control", path })
    finally(function() srv:stop() end)
    assert.equal("2\n", (ctl(path, "1 + 1\n")))
  end)
end)

describe("echohost --repl --connect", function()
  local dir, path, srv
  before_each(function()
    dir = tmpdir()
    path = dir .. "/ctl.sock"
    srv = server.start({ "--workers", "2", "--control", path, "--handler", "scripts/echo.lua" })
  end)
  after_each(function()
    local report = srv:sanitizer_report()
    srv:stop()
    os.execute("rm -rf " .. q(dir))
    assert.is_nil(report)
  end)

  it("evaluates like the local REPL: values, tables, errors, multi-line input", function()
    local out, err, code = ctl(path, table.concat({
      "1 + 1",
      '{b = 2, a = "x"}',
      'error("boom")',
      "function f(x)",
      "  return x * 2",
      "end",
      "f(21)",
      'print("printed")',
    }, "\n") .. "\n")
    assert.equal('2\n{a = "x", b = 2}\n42\nprinted\n', out)
    assert.equal(table.concat({
      "control:1: boom",
      "stack traceback:",
      "\t[C]: in function 'error'",
      "\tcontrol:1: in main chunk",
    }, "\n") .. "\n", err)
    assert.equal(0, code)
  end)

  it("stats() and conns() change when a client connects", function()
    local out = ctl(path, "=stats().conns\n=#stats().workers\n=#conns()\n")
    assert.equal("0\n2\n0\n", out)
    local c = srv:connect()
    finally(function() c:close() end)
    assert.equal("ping", server.exchange(c, "ping"))
    local _, lport = c:getsockname()
    out = ctl(path, table.concat({
      "s = stats()",
      "=s.conns, s.accepted, s.bytes_in, s.bytes_out",
      "=s.workers[1].handler_version, s.workers[2].handler_version",
      "l = conns()",
      "=#l, l[1].peer, l[1].bytes_in, l[1].bytes_out, l[1].age >= 0",
      "=l[1].worker == s.workers[1].pid or l[1].worker == s.workers[2].pid",
    }, "\n") .. "\n")
    assert.equal(table.concat({
      "1\t1\t4\t4",
      "1\t1",
      '1\t"127.0.0.1:' .. lport .. '"\t4\t4\ttrue',
      "true",
    }, "\n") .. "\n", out)
  end)

  it("stats() reads the figures where workers write them: stopped workers are listed", function()
    assert.equal("ping", echo(srv, "ping"))
    local pids = ctl(path, "=stats().workers[1].pid, stats().workers[2].pid\n")
    local p1, p2 = pids:match("^(%d+)\t(%d+)\n$")
    assert.truthy(p1, pids)
    finally(function() os.execute("kill -CONT " .. p1 .. " " .. p2) end)
    os.execute("kill -STOP " .. p1 .. " " .. p2)
    local out = ctl(path, "s = stats()\n=#s.workers, s.workers[1].error, s.workers[2].error, "
      .. "s.accepted, s.bytes_in, s.workers[1].accepted + s.workers[2].accepted\n")
    assert.equal("2\tnil\tnil\t1\t4\t1\n", out)
  end)

  it("handler(path) swaps the handler of every worker: clients get the new one", function()
    assert.equal("hello", echo(srv, "hello"))
    local out, err = ctl(path, 'handler("scripts/upper.lua")\n')
    assert.equal("", err)
    assert.equal("true\n", out)
    for _ = 1, 6 do                                  -- whichever worker accepts
      assert.equal("HELLO", echo(srv, "hello"))
    end
    out = ctl(path, "=stats().workers[1].handler_version, stats().workers[2].handler_version\n")
    assert.equal("2\t2\n", out)
    out = ctl(path, "reload()\n=stats().workers[1].handler_version\n")
    assert.equal("true\n3\n", out)
    -- SIGHUP reloads the current file: the one handler() set.
    assert.is_true(srv:signal("HUP"))
    assert.truthy(server.wait(function()
      return ctl(path, "=stats().workers[2].handler_version\n") == "4\n"
    end, 5))
    assert.equal("HELLO", echo(srv, "hello"))
  end)

  it("a worker restarted after handler() gets the new handler too", function()
    assert.equal("true\n", (ctl(path, 'handler("scripts/upper.lua")\n')))
    local old = ctl(path, "=stats().workers[1].pid, stats().workers[2].pid\n")
    local p1, p2 = old:match("^(%d+)\t(%d+)\n$")
    assert.truthy(p1, old)
    os.execute("kill -KILL " .. p1 .. " " .. p2)
    assert.truthy(server.wait(function()
      local now = ctl(path, "s = stats()\n=s.workers[1].pid, s.workers[2].pid, "
        .. "s.workers[1].handler_version, s.workers[2].handler_version\n")
      local n1, n2, v1, v2 = now:match("^(%d+)\t(%d+)\t(%d+)\t(%d+)\n$")
      return n1 and n1 ~= p1 and n2 ~= p2 and v1 == "2" and v2 == "2"
    end, 10))
    for _ = 1, 4 do
      assert.equal("HELLO", echo(srv, "hello"))
    end
  end)

  it("a handler that does not load is reported with file and line; the old one stays", function()
    local bad = dir .. "/bad.lua"
    spit(bad, "return function(_, data)\n  return data +\nend\n")
    local out = ctl(path, 'handler("' .. bad .. '")\n')
    assert.equal('nil\t"' .. bad .. ":3: unexpected symbol near 'end'\"\n", out)
    out = ctl(path, 'handler("' .. dir .. '/missing.lua")\n')
    assert.truthy(out:find("^nil\t\"[^\n]*missing.lua[^\n]*No such file or directory\"\n$"), out)
    assert.equal("still echo", echo(srv, "still echo"))
    out = ctl(path, "=stats().workers[1].handler_version\n")
    assert.equal("1\n", out)
  end)

  it("resolves a relative handler path against the operator's directory", function()
    spit(dir .. "/shout.lua", "return function(_, d) return d:upper() .. '!' end\n")
    local _, _, code = os.execute(string.format(
      "cd %s && echo 'handler(\"shout.lua\")' | %s --repl --connect ctl.sock > out 2>&1",
      q(dir), q(BIN)))
    assert.equal(0, code)
    assert.equal("true\n", slurp(dir .. "/out"))
    assert.equal("HI!", echo(srv, "hi"))
  end)

  it("serves several operators at once, each with its own state", function()
    local a, b = raw(path), raw(path)
    finally(function() a:close(); b:close() end)
    assert.equal("2\n", a:eval("=stats().operators").o)
    a:eval("x = 'a'")
    b:eval("x = 'b'")
    assert.equal('"a"\n', a:eval("x").o)
    assert.equal('"b"\n', b:eval("x").o)
    local r = b:eval("function g(")
    assert.equal("c", r.prompt)                      -- b is inside a chunk
    assert.equal("3\n", a:eval("=1 + 2").o)           -- a is not disturbed
  end)

  it("Ctrl-C (a \\3 byte) interrupts a running evaluation", function()
    local a = raw(path)
    finally(function() a:close() end)
    assert(a.c:send("while true do end\n"))
    socket.sleep(0.1)
    assert(a.c:send("\3"))
    local r = a:until_prompt()
    assert.equal("", r.o)
    assert.truthy(r.e:find("^interrupted!\nstack traceback:"), r.e)
    assert.equal("p", r.prompt)
    assert.equal("1\n", a:eval("1").o)
  end)

  it("a broken operator does not disturb the server or the others", function()
    local a = raw(path)
    finally(function() a:close() end)
    -- One leaves inside an endless loop: the loop is stopped when it goes.
    local b = raw(path)
    assert(b.c:send("while true do end\n"))
    b:close()
    -- One leaves in the middle of a chunk, one sends a line far too long.
    local c = raw(path)
    assert(c.c:send("function f(\n"))
    c:close()
    local d = raw(path)
    d.c:send(string.rep("x", 2 * 1024 * 1024))
    d:close()
    local t0 = socket.gettime()
    assert.equal("2\n", a:eval("=1 + 1").o)
    assert.is_true(socket.gettime() - t0 < 3)
    assert.equal("after", echo(srv, "after"))
    assert.truthy(server.wait(function()
      return a:eval("=stats().operators").o == "1\n"
    end, 5))
    assert.truthy(srv:wait_log("operator gone", 5))
  end)

  it("one busy operator delays neither the other operators nor the supervision", function()
    local busy, b = raw(path), raw(path)
    finally(function() busy:close(); b:close() end)
    assert(busy.c:send("while true do end\n"))      -- runs up to 10 s
    local function still_busy()                     -- busy got no frame yet
      busy.c:settimeout(0)
      local got, err = busy.c:receive(1)
      busy.c:settimeout(5)
      return got == nil and err == "timeout"
    end
    local function pids()
      local o = b:eval("=stats().workers[1].pid, stats().workers[2].pid").o
      return o:match("^(%d+)\t(%d+)\n$")
    end
    assert.equal(("%d\t2\n"):format(srv.pid), b:eval("=stats().pid, stats().operators").o)
    assert.equal("2\n", b:eval("=#stats().workers").o)
    assert.equal("0\n", b:eval("=#conns()").o)
    assert.equal("hi", echo(srv, "hi"))
    local p1, p2 = pids()
    assert.truthy(p1)
    os.execute("kill -KILL " .. p1)
    assert.truthy(server.wait(function()
      local n1, n2 = pids()
      return n1 and n1 ~= p1 and n2 == p2
    end, 5))
    assert.is_true(still_busy())                    -- all that while busy looped
    assert(busy.c:send("\3"))
    local r = busy:until_prompt()
    assert.truthy(r.e:find("^interrupted!"), r.e)
  end)

  it("passes Ctrl-C from the terminal to the server, Ctrl-D exits 0", function()
    local ptyrun = util.tool("tests/ptyrun")
    local script, out = dir .. "/script", dir .. "/pty.out"
    spit(script, table.concat({
      "expect > ", "sleep 100",
      "send while true do end\\r",
      "sleep 200",
      "send \\x03",
      "expect interrupted!",
      "expect > ", "sleep 100",
      "send 40 + 2\\r",
      "expect 42",
      "expect > ", "sleep 100",
      "send {1,\\r",
      "expect >> ", "sleep 100",
      "send \\x03",
      "expect > ", "sleep 100",
      "send 5 + 5\\r",
      "expect 10",
      "expect > ", "sleep 100",
      "send \\x04",
    }, "\n") .. "\n")
    local ok = os.execute(string.format("env TERM=xterm %s 10 %s -- %s --repl --connect %s "
      .. "--history %s > %s 2>&1", q(ptyrun), q(script), q(BIN), q(path), q(dir .. "/hist"),
      q(out)))
    local o = slurp(out)
    assert.is_true(ok, o)
    assert.truthy(o:find("[exit 0]", 1, true), o)
  end)

  it("refuses os.exit and proc.exit (they would end the server); io.write reaches the operator",
    function()
      local out, err = ctl(path, 'os.exit(3)\nproc.exit(1)\nio.write("a", 1, "\\n")\n=1\n')
      assert.equal("a1\n1\n", out)
      assert.truthy(err:find("^control:1: os.exit would end the server: not from a control "
        .. "session %(send SIGTERM to stop it%)\n"), err)
      assert.truthy(err:find("\ncontrol:1: proc.exit would end the server", 1, true), err)
      assert.equal("still here", echo(srv, "still here"))
    end)

  it("stats() counts handler faults as errors, and failed reloads", function()
    local file = dir .. "/faulty.lua"
    spit(file, "return function(_, d)\n  if d == 'boom' then error('boom') end\n"
      .. "  return d\nend\n")
    local p2 = dir .. "/ctl2.sock"
    local s2 = server.start({ "--workers", "1", "--control", p2, "--handler", file })
    finally(function() s2:stop() end)
    local c = s2:connect()
    c:send("boom")
    c:settimeout(5)
    assert.is_nil((c:receive("*a")))
    c:close()
    spit(dir .. "/broken.lua", "return function(\n")
    local op = raw(p2)
    local got = op:eval('=(handler("' .. dir .. '/broken.lua"))')
    assert.equal("nil\n", got.o)
    assert.truthy(s2:wait_log("(handler " .. file:gsub("%p", "%%%0") .. ": handler%(%) reload "
      .. "failed, version 1 stays: [^\n]*broken%.lua:2:)", 5), s2:log())
    spit(file, "return 42\n")
    os.execute("kill -HUP " .. s2.pid)
    assert.truthy(s2:wait_log("(SIGHUP reload failed)", 5))
    got = op:eval("local s = stats() return s.errors, s.faults, s.workers[1].faults, "
      .. "s.reload_failures")
    assert.equal("1\t1\t1\t2\n", got.o)
    op:close()
  end)

  it("refuses proc.fork (it would copy the master)", function()
    local _, err = ctl(path, "proc.fork()\n=1\n")
    assert.truthy(err:find("control:1: proc.fork would copy the server's master: not from a "
      .. "control session", 1, true), err)
    -- the two workers, no copy (the session's process leaves with it)
    assert.truthy(server.wait(function() return #srv:children() == 2 end, 5))
  end)

  it("refuses another user even when the socket's mode lets them in", function()
    os.execute("chmod 755 " .. q(dir) .. " && chmod 666 " .. q(path))
    local as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups "
    local _, err, code = util.pipe(as_nobody .. q(BIN) .. " --repl --connect " .. q(path),
      "stats()\n")
    assert.equal(1, code)
    assert.truthy(err:find("belongs to uid 0: only that user and root may operate it", 1,
      true), err)
    -- a client that does not check: the server refuses it all the same
    local script = util.write_tmp(([[
local unix = require "socket.unix"
local c = assert(unix.stream())
c:settimeout(5)
assert(c:connect(%q))
io.write(c:receive("*a") or "")
]]):format(path))
    os.execute("chmod 644 " .. q(script))
    util.pipe(as_nobody .. "lua5.4 " .. q(script), "")
    os.remove(script)
    assert.truthy(srv:wait_log("(control: uid 65534 may not operate this server)", 5),
      srv:log())
    assert.equal(0, select(2, srv:log():gsub("operator connected", "")))
  end)

  it("the client says so when the server closes the connection: exit 1", function()
    local fake = dir .. "/fake.sock"
    local l = assert(unix.stream())
    assert(l:bind(fake))
    assert(l:listen())
    finally(function() l:close() end)
    local p = io.popen(string.format("echo 1 | timeout 10 %s --repl --connect %s 2>&1; echo rc=$?",
      q(BIN), q(fake)))
    l:settimeout(5)
    local c = assert(l:accept())
    c:close()
    local out = p:read("a")
    p:close()
    assert.equal("echohost: control connection to " .. fake .. " closed\nrc=1\n", out)
  end)

  it("--connect to a path with no server: one clear line, exit 1", function()
    local out, err, code = ctl(dir .. "/nothing.sock", "1\n")
    assert.equal("", out)
    assert.equal("echohost: cannot connect to control socket " .. dir
      .. "/nothing.sock: No such file or directory\n", err)
    assert.equal(1, code)
  end)
end)
