-- The event-model server (build/echohost with no handler): C echo over real
-- loopback sockets, limits, signals, workers. Servers start on port 0.
local socket = require "socket"
local server = require "helpers.server"
local util = require "helpers.util"

local function assert_clean(srv)
  local report = srv:sanitizer_report()
  assert(report == nil, report)
end

describe("echohost event model", function()
  local srv

  setup(function()
    srv = server.start({ "--workers", "2" })
  end)

  teardown(function()
    if srv then                 -- (not started when --filter skips them all)
      assert_clean(srv)
      assert.equal(0, srv:stop())
    end
    server.stop_all()
  end)

  it("logs the address it listens on", function()
    assert.matches("^127%.0%.0%.1:%d+$", srv.addr)
    assert.is_true(srv.port > 0)
  end)

  it("echoes 1 byte to 16 MiB intact while the client writes and reads", function()
    for _, n in ipairs({ 1, 2, 100, 4096, 65536, 65537, 1048576 + 7, 16 * 1048576 }) do
      local data = server.pattern(n)
      local got, closed = server.echo(srv.host, srv.port, data, { timeout = 30 })
      assert.is_nil(closed)
      assert.equal(#data, #got)
      assert.is_true(got == data, "echo of " .. n .. " bytes differs")
    end
  end)

  it("serves 200 concurrent clients", function()
    local clients = {}
    finally(function()
      for _, c in ipairs(clients) do c:close() end
    end)
    for i = 1, 200 do
      clients[i] = srv:connect()
    end
    for i, c in ipairs(clients) do
      assert(c:send(("client %d\n"):format(i)))
    end
    for i, c in ipairs(clients) do
      assert.equal(("client %d"):format(i), c:receive("*l"))
    end
  end)

  it("echoes everything pending after a half-close, then closes", function()
    local data = server.pattern(300000)
    local got, closed = server.echo(srv.host, srv.port, data,
      { half_close = true, timeout = 10 })
    assert.equal("closed", closed)
    assert.is_true(got == data)
  end)

  it("closes at once on a half-close with nothing pending", function()
    local c = srv:connect(3)
    finally(function() c:close() end)
    assert(c:shutdown("send"))
    local d, err = c:receive(1)
    assert.is_nil(d)
    assert.equal("closed", err)
  end)

  it("keeps serving after a client resets its connection", function()
    local c = srv:connect()
    c:setoption("linger", { on = true, timeout = 0 })
    assert(c:send(server.pattern(100000)))
    c:close()                                 -- RST with data in flight
    local got = server.echo(srv.host, srv.port, "still here")
    assert.equal("still here", got)
  end)

  it("serves IPv6 on [::1]", function()
    local s6 = socket.tcp6 and socket.tcp6()
    if not s6 or not s6:bind("::1", 0) then
      if s6 then s6:close() end
      pending("no IPv6 loopback here")
      return
    end
    s6:close()
    local v6 = server.start({ "--listen", "[::1]:0", "--workers", "1" })
    assert.matches("^%[::1%]:%d+$", v6.addr)
    assert.equal("hello six", server.echo("::1", v6.port, "hello six"))
  end)
end)

describe("echohost limits", function()
  after_each(server.stop_all)

  it("keeps a slow reader's memory bounded by --high-water", function()
    local srv = server.start({ "--workers", "1", "--high-water", "64k" })
    local worker = assert(srv:wait_children(1, 5))[1]
    -- warm up: touch the scratch buffer and the allocator
    assert.equal(65536, #server.echo(srv.host, srv.port, server.pattern(65536)))
    local before = server.rss_kb(worker)

    local c = srv:connect()
    finally(function() c:close() end)
    c:settimeout(0)
    local data = string.rep("x", 64 * 1048576)
    local sent, stalled = 0, nil
    local deadline = socket.gettime() + 10
    while socket.gettime() < deadline do
      local last, err, lastp = c:send(data, sent + 1, math.min(#data, sent + 1048576))
      last = last or lastp
      if last and last > sent then
        sent, stalled = last, nil
      elseif err == "timeout" then
        stalled = stalled or socket.gettime()
        if socket.gettime() - stalled > 0.3 then break end
        socket.select(nil, { c }, 0.05)
      else
        error(err)
      end
    end
    local after = server.rss_kb(worker)
    -- the kernel's socket buffers hold some, the worker at most 64k + 64k
    assert.is_true(sent < #data, "the client was never slowed down")
    assert.is_true(after - before < 8192,
      ("worker RSS grew %d kB while the client pushed %d kB"):format(
        after - before, sent // 1024))
    -- and what was accepted still comes back, in order
    c:settimeout(10)
    local got = assert(c:receive(sent))
    assert.is_true(got == data:sub(1, sent))
  end)

  it("closes connections idle for --idle-timeout, not busy ones", function()
    local srv = server.start({ "--workers", "1", "--idle-timeout", "0.5" })
    local idle, busy = srv:connect(3), srv:connect(3)
    finally(function() idle:close(); busy:close() end)
    local t0 = socket.gettime()
    for i = 1, 10 do                     -- 1 s of traffic, 0.1 s apart
      assert(busy:send("ping " .. i .. "\n"))
      assert.equal("ping " .. i, busy:receive("*l"))
      socket.sleep(0.1)
    end
    local d, err = idle:receive(1)
    assert.is_nil(d)
    assert.equal("closed", err)
    assert.is_true(socket.gettime() - t0 < 3)
    assert(busy:send("still\n"))
    assert.equal("still", busy:receive("*l"))
  end)

  it("closes connections over --max-conns at once and serves the rest", function()
    local srv = server.start({ "--workers", "1", "--max-conns", "3" })
    local cs = {}
    finally(function() for _, c in ipairs(cs) do c:close() end end)
    for i = 1, 3 do
      cs[i] = srv:connect(3)
      assert(cs[i]:send("hi " .. i .. "\n"))
      assert.equal("hi " .. i, cs[i]:receive("*l"))
    end
    local extra = srv:connect(3)
    local d, err = extra:receive(1)
    extra:close()
    assert.is_nil(d)
    assert.matches("closed", err)
    assert(cs[2]:send("again\n"))
    assert.equal("again", cs[2]:receive("*l"))
    -- a freed place is taken again
    cs[1]:close()
    local ok = server.wait(function()
      local got = server.echo(srv.host, srv.port, "new", { timeout = 1 })
      return got == "new"
    end, 5)
    assert.is_truthy(ok)
    assert.matches("max%-conns 3 reached", srv:log())
  end)
end)

describe("echohost out of descriptors", function()
  after_each(server.stop_all)

  it("closes what it cannot hold, does not spin, recovers", function()
    local srv = server.start({ "--workers", "1" }, { nofile = 32 })
    local worker = assert(srv:wait_children(1, 5))[1]
    local cs = {}
    finally(function() for _, c in ipairs(cs) do c:close() end end)
    for i = 1, 40 do
      cs[i] = srv:connect(3)
    end
    local served, refused = 0, 0
    for _, c in ipairs(cs) do
      local ok = c:send("x\n")
      local line, err = c:receive("*l")
      if ok and line == "x" then
        served = served + 1
      else
        assert.equal("closed", err)
        refused = refused + 1
      end
    end
    assert.is_true(served >= 16, "served " .. served)
    assert.is_true(refused >= 1, "nothing refused")
    assert.matches("refusing connections", srv:log())
    local t0 = server.cpu_ticks(worker)
    server.sleep(0.5)
    assert.is_true(server.cpu_ticks(worker) - t0 <= 5, "the worker spins")
    for _, c in ipairs(cs) do c:close() end
    cs = {}
    assert.truthy(server.wait(function()
      return server.echo(srv.host, srv.port, "back", { timeout = 1 }) == "back"
    end, 5))
  end)
end)

describe("echohost --busy-poll", function()
  after_each(server.stop_all)

  -- CPU ticks (10 ms) the worker takes in the half second after one echo
  local function ticks_after_echo(args)
    local srv = server.start(args)
    local worker = assert(srv:wait_children(1, 5))[1]
    assert.equal("warm", server.echo(srv.host, srv.port, "warm"))
    server.sleep(0.5)                   -- past any spin of the warm-up
    local t0 = server.cpu_ticks(worker)
    assert.equal("x", server.echo(srv.host, srv.port, "x"))
    server.sleep(0.5)
    return server.cpu_ticks(worker) - t0
  end

  it("keeps polling for the time it is given after an event, then sleeps", function()
    -- 100 ms of polling after the last event (the close): about 10 ticks;
    -- a spin without its bound would take the whole half second (50)
    local spun = ticks_after_echo({ "--workers", "1", "--idle-timeout", "0",
      "--busy-poll", "100000" })
    assert.is_true(spun >= 5 and spun <= 30, "ticks " .. spun)
    local slept = ticks_after_echo({ "--workers", "1", "--idle-timeout", "0" })
    assert.is_true(slept <= 3, "without --busy-poll: ticks " .. slept)
  end)

  it("serves 50 concurrent clients byte-exact while polling", function()
    local srv = server.start({ "--workers", "2", "--busy-poll", "50" })
    local cs = {}
    finally(function() for _, c in ipairs(cs) do c:close() end end)
    for i = 1, 50 do cs[i] = srv:connect(3) end
    for round = 1, 20 do
      for i, c in ipairs(cs) do assert(c:send(("%d:%d\n"):format(i, round))) end
      for i, c in ipairs(cs) do assert.equal(("%d:%d"):format(i, round), c:receive("*l")) end
    end
  end)
end)

describe("echohost command line", function()
  local bad = {
    { { "--workers", "0" }, "bad %-%-workers '0'" },
    { { "--workers", "many" }, "bad %-%-workers 'many'" },
    { { "--model", "thread" }, "bad %-%-model 'thread'" },
    { { "--max-conns", "0" }, "bad %-%-max%-conns '0'" },
    { { "--idle-timeout", "-1" }, "bad %-%-idle%-timeout '%-1'" },
    { { "--high-water", "10" }, "bad %-%-high%-water '10'" },
    { { "--high-water", "1x" }, "bad %-%-high%-water '1x'" },
    { { "--drain-timeout", "soon" }, "bad %-%-drain%-timeout 'soon'" },
    { { "--listen", "localhost" }, "bad %-%-listen 'localhost'" },
    { { "--listen", "127.0.0.1:65536" }, "bad %-%-listen '127%.0%.0%.1:65536'" },
    { { "--listen", "[::1:80" }, "bad %-%-listen '%[::1:80'" },
    { { "--log-level", "loud" }, "bad %-%-log%-level 'loud'" },
    { { "--lua-mem", "lots" }, "bad %-%-lua%-mem 'lots'" },
    { { "--lua-mem", "16k" },
      "bad %-%-lua%-mem '16k' %(a handler's Lua state needs at least 256k" },
    { { "--lua-budget", "-5" }, "bad %-%-lua%-budget '%-5'" },
    { { "--handler", "scripts/echo.lua", "--set", "nokey" },
      "bad %-%-set 'nokey' %(want KEY=VALUE%)" },
    { { "--handler", "scripts/echo.lua", "--set", "=v" }, "bad %-%-set '=v'" },
    { { "--set", "a=b" }, "%-%-set needs %-%-handler" },
    { { "--bogus" }, "unknown option '%-%-bogus'" },
    { { "--workers" }, "option '%-%-workers' needs an argument" },
    { { "stray" }, "unexpected argument 'stray'" },
  }
  for _, case in ipairs(bad) do
    local args, msg = case[1], case[2]
    it("exits 2 with a usage message on " .. table.concat(args, " "), function()
      local code, err = server.run(args, 5)
      assert.equal(2, code)
      assert.matches("^echohost: " .. msg, err)
      assert.matches("Try 'echohost %-%-help'", err)
    end)
  end

  it("prints help and the version, exit 0", function()
    local code, _, out = server.run({ "--help" })
    assert.equal(0, code)
    assert.matches("%-%-listen ADDR:PORT", out)
    code, _, out = server.run({ "--version" })
    assert.equal(0, code)
    assert.matches("^echohost %d+%.%d+", out)
  end)

  it("exits 1 with one clear line when the port is taken", function()
    local holder = assert(socket.bind("127.0.0.1", 0))
    finally(function() holder:close() end)
    local _, port = holder:getsockname()
    for _, model in ipairs({ "event", "fork" }) do
      local code, err = server.run({ "--listen", "127.0.0.1:" .. port,
        "--model", model, "--workers", "2" }, 5)
      assert.equal(1, code)
      local lines = select(2, err:gsub("\n", ""))
      assert.equal(1, lines, err)
      assert.matches("bind 127%.0%.0%.1:" .. port .. ": Address already in use", err)
    end
  end)

  it("logs the address it listens on at every log level", function()
    for _, model in ipairs({ "event", "fork" }) do
      local srv = server.start({ "--log-level", "error", "--model", model })
      finally(function() srv:stop() end)
      assert.matches("notice: listening on 127%.0%.0%.1:%d+", srv:log())
      assert.equal("quiet", server.echo(srv.host, srv.port, "quiet"))
      srv:stop()
    end
  end)

  for _, model in ipairs({ "event", "fork" }) do
    it("logs one access line per connection with --access-log (" .. model .. ")", function()
      local fault = util.write_tmp("return function(_, d)\n"
        .. "  if d == 'boom' then error('boom') end\n  return d\nend\n")
      local srv = server.start({ "--access-log", "--log-level", "error", "--model", model,
        "--workers", "1", "--handler", fault })
      finally(function()
        srv:stop()
        os.remove(fault)
      end)
      assert.equal("hello", server.echo(srv.host, srv.port, "hello", { half_close = true }))
      local c = srv:connect(5)
      c:send("boom")
      assert.is_nil((c:receive("*a")))
      c:close()
      local function line(bytes_in, bytes_out, reason)
        return srv:wait_log("(notice: access: id=%d+ peer=127%.0%.0%.1:%d+ [^\n]*in="
          .. bytes_in .. " out=" .. bytes_out .. " ms=%d+ reason=" .. reason .. ")", 5)
      end
      assert.truthy(line(5, 5, "eof"), srv:log())
      assert.truthy(line(4, 0, "error"), srv:log())
    end)
  end

  it("exits 1 when another echohost already serves the port", function()
    local first = server.start({ "--workers", "2" })
    finally(function() first:stop() end)
    for _, model in ipairs({ "event", "fork" }) do
      local code, err = server.run({ "--listen", "127.0.0.1:" .. first.port,
        "--model", model, "--workers", "2" }, 5)
      assert.equal(1, code)
      assert.matches("bind 127%.0%.0%.1:" .. first.port .. ": Address already in use", err)
    end
    assert.equal("still", server.echo(first.host, first.port, "still"))
  end)

  it("exits 1 with one line when the handler cannot be read", function()
    local code, err = server.run({ "--listen", "127.0.0.1:0",
      "--handler", "/nonexistent/handler.lua" }, 5)
    assert.equal(1, code)
    assert.equal(1, select(2, err:gsub("\n", "")), err)
    assert.matches("/nonexistent/handler%.lua: No such file", err)
  end)
end)

describe("echohost handler start-up", function()
  it("exits 1 before listening when the handler does not load", function()
    local path = util.write_tmp("return function(conn, data\n")
    finally(function() os.remove(path) end)
    local code, err = server.run({ "--listen", "127.0.0.1:0", "--workers", "2",
      "--handler", path }, 10)
    assert.equal(1, code)
    assert.matches(path:gsub("%p", "%%%0") .. ":%d+:", err)
    assert.matches("cannot load the handler: ", err, 1, true)
    assert.is_nil(err:find("listening on", 1, true))
  end)

  local hogs = {
    { "while true do end", { "--lua-budget", "100000" }, "instruction budget exceeded" },
    { "local t = {} for i = 1, 1e9 do t[i] = i end", { "--lua-mem", "1m" },
      "not enough memory" },
  }
  for _, case in ipairs(hogs) do
    it("names the handler file when loading it ends with " .. case[3], function()
      local path = util.write_tmp(case[1] .. "\nreturn function(_, d) return d end\n")
      finally(function() os.remove(path) end)
      local args = { "--listen", "127.0.0.1:0", "--handler", path }
      for _, a in ipairs(case[2]) do args[#args + 1] = a end
      local code, err = server.run(args, 20)
      assert.equal(1, code)
      assert.matches("cannot load the handler: " .. path .. ":?%d*: " .. case[3]:gsub("%p", "%%%0"),
        err)
    end)
  end

  local stoppers = {
    { "os.exit(0)", "os.exit is not available in a handler" },
    { "require('echohost.proc').exit(0)", "proc.exit is not available in a handler" },
    { "require('echohost.proc').fork()", "proc.fork is not available in a handler" },
  }
  for _, case in ipairs(stoppers) do
    for _, model in ipairs({ "event", "fork" }) do
      it("refuses a handler that calls " .. case[1] .. " at load (" .. model .. ")", function()
        local path = util.write_tmp(case[1] .. "\nreturn function(_, d) return d end\n")
        finally(function() os.remove(path) end)
        local code, err = server.run({ "--listen", "127.0.0.1:0", "--model", model,
          "--handler", path }, 10)
        assert.equal(1, code)
        assert.matches("cannot load the handler: " .. path .. ":1: " .. case[2], err, 1, true)
        assert.is_nil(err:find("listening on", 1, true))
      end)
    end
  end
end)

describe("echohost signals and workers", function()
  after_each(server.stop_all)

  it("drains on SIGTERM: in-flight data is delivered, then exit 0", function()
    local srv = server.start({ "--workers", "1", "--drain-timeout", "5" })
    local c = srv:connect()
    finally(function() c:close() end)
    local data = server.pattern(1048576)
    c:settimeout(0)
    local sent = 0
    -- push what the socket takes now, without reading
    while sent < #data do
      local last, _, lastp = c:send(data, sent + 1)
      last = last or lastp
      if not last or last <= sent then break end
      sent = last
    end
    local t0 = socket.gettime()
    assert.is_true(srv:signal("TERM"))
    assert.truthy(srv:wait_log("draining", 3))
    -- new connections are refused once the worker let go of the port
    assert.truthy(server.wait(function()
      local n = socket.tcp()
      n:settimeout(1)
      local ok = n:connect(srv.host, srv.port)
      n:close()
      return not ok
    end, 3))
    -- the rest of the data and its echo still flow
    local got, ended = server.exchange(c, data, { from = sent + 1 })
    assert.is_nil(ended)
    assert.is_true(got == data)
    c:close()
    assert.equal(0, srv:wait_exit(5))
    assert.is_true(socket.gettime() - t0 < 4, "waited for the deadline")
    assert_clean(srv)
  end)

  it("closes what is left at the drain deadline and exits 0", function()
    local srv = server.start({ "--workers", "2", "--drain-timeout", "0.5" })
    local c = srv:connect()
    finally(function() c:close() end)
    assert(c:send("x\n"))
    assert.equal("x", c:receive("*l"))
    local t0 = socket.gettime()
    srv:signal("TERM")
    local d, err = c:receive(1)
    assert.is_nil(d)
    assert.equal("closed", err)
    assert.equal(0, srv:wait_exit(5))
    assert.is_true(socket.gettime() - t0 < 3)
  end)

  it("stops at once on a second signal", function()
    local srv = server.start({ "--workers", "2", "--drain-timeout", "30" })
    local c = srv:connect()
    finally(function() c:close() end)
    assert(c:send("x\n"))
    assert.equal("x", c:receive("*l"))
    local t0 = socket.gettime()
    srv:signal("INT")
    assert.truthy(srv:wait_log("draining", 3))
    srv:signal("INT")
    assert.equal(0, srv:wait_exit(3))
    assert.is_true(socket.gettime() - t0 < 2)
    assert.same({}, server.children_of(srv.pid))
  end)

  it("replaces a killed worker and keeps serving the port", function()
    local srv = server.start({ "--workers", "2" })
    local kids = assert(srv:wait_children(2, 5))
    local victim = kids[1]
    assert.equal("ok", server.echo(srv.host, srv.port, "ok"))
    os.execute("kill -KILL " .. victim)
    assert.truthy(srv:wait_log("worker %d+ %(pid " .. victim .. "%) was killed by signal 9", 5))
    local now = assert(server.wait(function()
      local k = srv:children()
      if #k == 2 and k[1] ~= victim and k[2] ~= victim then return k end
    end, 5))
    assert.equal(2, #now)
    for i = 1, 40 do
      assert.equal("again " .. i, server.echo(srv.host, srv.port, "again " .. i, { timeout = 3 }))
    end
    assert_clean(srv)
  end)

  it("shares one socket with EPOLLEXCLUSIVE when asked", function()
    local srv = server.start({ "--workers", "2" },
      { env = { ECHOHOST_ACCEPT = "exclusive" } })
    local kids = assert(srv:wait_children(2, 5))
    for i = 1, 20 do
      assert.equal("x" .. i, server.echo(srv.host, srv.port, "x" .. i))
    end
    os.execute("kill -KILL " .. kids[2])
    assert.truthy(srv:wait_log("restarting", 5))
    for i = 1, 20 do
      assert.equal("y" .. i, server.echo(srv.host, srv.port, "y" .. i, { timeout = 3 }))
    end
    assert.truthy(srv:wait_children(2, 5))
    -- each worker holds the one listening socket, not its own
    local inodes = {}
    for _, k in ipairs(srv:children()) do
      local p = io.popen("env -u LD_PRELOAD ls -l /proc/" .. k .. "/fd")
      for ino in p:read("a"):gmatch("socket:%[(%d+)%]") do
        inodes[ino] = (inodes[ino] or 0) + 1
      end
      p:close()
    end
    local shared = 0
    for _, n in pairs(inodes) do
      if n == 2 then shared = shared + 1 end
    end
    assert.equal(1, shared)
  end)

  it("keeps serving across SIGHUP with no handler", function()
    local srv = server.start({ "--workers", "1" })
    local c = srv:connect()
    finally(function() c:close() end)
    srv:signal("HUP")
    assert.truthy(srv:wait_log("SIGHUP", 3) or srv:wait_log("Hangup", 1))
    assert(c:send("after hup\n"))
    assert.equal("after hup", c:receive("*l"))
  end)
end)
