-- Binary upgrade on SIGUSR2: the old master starts the binary it was
-- started as, hands over its sockets, and drains once the new one serves;
-- a new binary that fails leaves the old one serving. Each test serves
-- from a copy of the binary in a directory of its own, so the copy can be
-- replaced (by a script that fails, by the real binary again).
local server = require "helpers.server"
local util = require "helpers.util"
local socket = require "socket"

local q, slurp, spit, tmpdir = server.quote, util.slurp, util.spit, util.tmpdir

local gone, pid_in = server.gone, server.pid_in

-- Installs what as path the way a release is installed: a new file
-- renamed over the old one (a running binary cannot be written to).
local function install(what, path)
  assert(os.execute("cp " .. q(what) .. " " .. q(path .. ".new") .. " && chmod 755 "
    .. q(path .. ".new") .. " && mv -f " .. q(path .. ".new") .. " " .. q(path)))
end

local function install_script(text, path)
  spit(path .. ".sh", "#!/bin/sh\n" .. text .. "\n")
  install(path .. ".sh", path)
end

-- Starts the copy dir/echohost; every master it becomes is stopped by
-- stop_masters().
local masters = {}
local function start(dir, args, opts)
  local bin = dir .. "/echohost"
  install(server.BIN, bin)
  local saved = server.BIN
  server.BIN = bin
  local ok, srv = pcall(server.start, args, opts)
  server.BIN = saved
  assert(ok, srv)
  masters[#masters + 1] = srv.pid
  return srv, bin
end

local function stop_masters()
  for _, pid in ipairs(masters) do
    if not gone(pid) then
      os.execute("kill -TERM " .. pid .. " 2>/dev/null")
      if not server.wait(function() return gone(pid) end, 10) then
        os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      end
    end
  end
  masters = {}
  server.stop_all()
end

-- SIGUSR2 to the master the pid file names; once the pid file names
-- another one and the old one is gone: the new pid (nil on a timeout).
local function upgrade(pid_file, secs)
  local old = assert(pid_in(pid_file))
  assert(os.execute("kill -USR2 " .. old))
  local new = server.wait(function()
    local p = pid_in(pid_file)
    return p and p ~= old and gone(old) and p
  end, secs or 30)
  if new then
    masters[#masters + 1] = new
  end
  return new, old
end

-- The load: n clients, each sending a message, reading it back, checking
-- it, rounds times on one connection, then reconnecting; all at once, on
-- one thread (select). step() advances them; the counts are what the
-- tests assert.
local function load(host, port, n, rounds)
  local L = { exchanges = 0, connects = 0, refused = 0, dropped = 0, bad = 0,
              spanned = 0, errors = {} }
  local clients = {}
  for i = 1, n do
    clients[i] = { id = i, seq = 0 }
  end

  local function note(kind, what)
    L[kind] = L[kind] + 1
    if #L.errors < 10 then
      L.errors[#L.errors + 1] = kind .. ": " .. tostring(what)
    end
  end

  local function reset(cl)
    cl.c:close()
    cl.c, cl.msg, cl.marked = nil, nil, nil
  end

  local function connect(cl)
    local c = assert(socket.tcp())
    c:settimeout(5)
    local ok, err = c:connect(host, port)
    if not ok then
      c:close()
      note("refused", err)
      return
    end
    c:settimeout(0)
    L.connects = L.connects + 1
    cl.c, cl.rounds = c, 0
  end

  local function next_message(cl)
    cl.seq = cl.seq + 1
    local len = (cl.id * 7919 + cl.seq * 104729) % 3000 + 1
    cl.msg = string.format("%03d:%07d:", cl.id, cl.seq)
      .. string.rep(string.char(65 + (cl.id + cl.seq) % 26), len)
    cl.sent, cl.got = 0, {}
    cl.ngot = 0
  end

  local function send(cl)
    local last, err, partial = cl.c:send(cl.msg, cl.sent + 1)
    last = last or partial
    if last and last > cl.sent then
      cl.sent = last
    elseif err and err ~= "timeout" then
      note("dropped", "send: " .. err)
      reset(cl)
    end
  end

  local function finish_round(cl)
    if table.concat(cl.got) ~= cl.msg then
      note("bad", cl.msg:sub(1, 12))
    end
    L.exchanges = L.exchanges + 1
    cl.rounds, cl.msg = cl.rounds + 1, nil
    if cl.rounds == rounds then
      if cl.marked then
        L.spanned = L.spanned + 1     -- open at a SIGUSR2, served to the end
      end
      reset(cl)
    end
  end

  local function receive(cl)
    local d, err, partial = cl.c:receive(65536)
    d = d or partial
    if d and #d > 0 then
      cl.got[#cl.got + 1] = d
      cl.ngot = cl.ngot + #d
    end
    if err == "closed" or (err and err ~= "timeout") then
      note("dropped", "receive: " .. err)
      reset(cl)
    elseif cl.ngot >= #cl.msg then
      finish_round(cl)
    end
  end

  function L.step()
    local readers, by = {}, {}
    for _, cl in ipairs(clients) do
      if not cl.c then
        connect(cl)
      end
      if cl.c and not cl.msg then
        next_message(cl)
      end
      if cl.c and cl.sent < #cl.msg then
        send(cl)
      end
      if cl.c then
        readers[#readers + 1] = cl.c
        by[cl.c] = cl
      end
    end
    local r = socket.select(readers, nil, 0.005)
    for _, c in ipairs(r) do
      if by[c].c == c then
        receive(by[c])
      end
    end
  end

  -- Marks every open connection: it was open when a SIGUSR2 went out.
  function L.mark()
    for _, cl in ipairs(clients) do
      cl.marked = cl.marked or cl.c ~= nil
    end
  end

  function L.close()
    for _, cl in ipairs(clients) do
      if cl.c then
        reset(cl)
      end
    end
  end
  return L
end

-- 10 upgrades in a row under the load; returns the load's counts and the
-- masters in order.
local function upgrades_under_load(srv, pid_file, count)
  local L = load(srv.host, srv.port, 50, 20)
  local pids, state, next_at, old = { srv.pid }, "load", 300, nil
  local deadline = socket.gettime() + 240
  while socket.gettime() < deadline and #pids <= count do
    L.step()
    if state == "load" and L.exchanges >= next_at then
      old = pid_in(pid_file)
      L.mark()
      assert(os.execute("kill -USR2 " .. old))
      state = "upgrading"
    elseif state == "upgrading" then
      local p = pid_in(pid_file)
      if p and p ~= old and gone(old) then
        pids[#pids + 1] = p
        masters[#masters + 1] = p
        state, next_at = "load", L.exchanges + 200
      end
    end
  end
  for _ = 1, 200 do                     -- the last master serves too
    L.step()
  end
  L.close()
  return L, pids
end

describe("SIGUSR2 (binary upgrade)", function()
  local dir
  before_each(function() dir = util.realpath(tmpdir()) end)
  after_each(function()
    stop_masters()
    os.execute("rm -rf " .. q(dir))
  end)

  local models = {
    { name = "event model, 2 workers, a UDP listener, the control socket, --metrics",
      args = { "--workers", "2", "--listen", "127.0.0.1:0", "--listen", "udp://127.0.0.1:0",
               "--metrics", "127.0.0.1:0" },
      control = true },
    { name = "fork model", args = { "--model", "fork" } },
  }
  for _, m in ipairs(models) do
    it("under 50 connections of verified echoes, 10 upgrades in a row drop, refuse and "
      .. "corrupt nothing (" .. m.name .. ")", function()
      local pid_file, log, ctl = dir .. "/pid", dir .. "/log", dir .. "/ctl"
      local args = { "--pid-file", pid_file, "--log", log, "--drain-timeout", "30" }
      for _, a in ipairs(m.args) do
        args[#args + 1] = a
      end
      if m.control then
        args[#args + 1], args[#args + 2] = "--control", ctl
      end
      local srv = start(dir, args, { log = log })
      local L, pids = upgrades_under_load(srv, pid_file, 10)
      assert.equal(11, #pids, slurp(log))
      assert.same({}, L.errors)
      assert.equal(0, L.refused)
      assert.equal(0, L.dropped)
      assert.equal(0, L.bad)
      assert.truthy(L.spanned > 0)              -- connections lived through upgrades
      assert.truthy(L.connects > 11 * 50)       -- and new ones came all along
      local last = pids[#pids]
      assert.equal(last, pid_in(pid_file))
      for i = 2, #pids do                       -- each master started its successor
        assert.truthy(slurp(log):find("[" .. pids[i - 1] .. "] notice: upgrade: the new master "
          .. "(pid " .. pids[i] .. ") serves", 1, true))
      end
      assert.equal(0, srv:wait_exit(5))         -- the first one drained and exited 0
      assert.equal("after", server.echo(srv.host, srv.port, "after"))
      if m.control then
        local out = util.pipe(q(server.BIN) .. " --repl --connect " .. q(ctl), "stats().pid\n")
        assert.equal(tostring(last) .. "\n", out)
        local _, uhost, uport = server.split(srv.listeners[2])
        local u = assert(socket.udp())
        u:settimeout(5)
        assert(u:setpeername(uhost, uport))
        assert(u:send("datagram"))
        assert.equal("datagram", u:receive())
        u:close()
        local mhost, mport = srv:log():match("metrics on http://([%d.]+):(%d+)/metrics")
        local h = assert(socket.connect(mhost, tonumber(mport)))
        h:settimeout(5)
        h:send("GET /metrics HTTP/1.0\r\n\r\n")
        local page = h:receive("*a")
        h:close()
        assert.truthy(page:find("^HTTP/1%.[01] 200"), page)
        assert.truthy(page:find("\necho" .. "host_connections_accepted_total %d+\n"), page)
      end
      os.execute("kill -TERM " .. last)
      assert.truthy(server.wait(function() return gone(last) end, 10))
      assert.is_nil(io.open(pid_file))          -- the last master removed both
      assert.is_nil(io.open(ctl))
    end)
  end

  for _, model in ipairs({ "event", "fork" }) do
    it("a new binary that fails leaves the old one serving; a second SIGUSR2 meanwhile is "
      .. "refused (" .. model .. ")", function()
      local pid_file, log, ctl = dir .. "/pid", dir .. "/log", dir .. "/ctl"
      local args = { "--model", model, "--pid-file", pid_file, "--log", log,
                     "--upgrade-timeout", "1" }
      if model == "event" then
        args[#args + 1], args[#args + 2] = "--control", ctl
      end
      local srv, bin = start(dir, args, { log = log })
      local c = srv:connect()                 -- open through it all
      assert.equal("one", server.exchange(c, "one"))

      install_script("exit 1", bin)
      assert.is_true(srv:signal("USR2"))
      assert.truthy(srv:wait_log("error: upgrade failed: " .. bin:gsub("%p", "%%%0")
        .. " %(pid %d+%) exited with status 1 before it was ready; still serving as pid "
        .. srv.pid, 10), srv:log())
      assert.equal(srv.pid, pid_in(pid_file))
      assert.equal("still", server.echo(srv.host, srv.port, "still"))

      install_script("exec sleep 60", bin)    -- never ready
      assert.is_true(srv:signal("USR2"))
      local hung = server.wait(function()     -- the second one started
        local pids = {}
        for p in srv:log():gmatch("SIGUSR2: upgrading: started [^\n]* %(pid (%d+)%)\n") do
          pids[#pids + 1] = tonumber(p)
        end
        return pids[2]
      end, 5)
      assert.truthy(hung, srv:log())
      assert.is_true(srv:signal("USR2"))
      assert.truthy(srv:wait_log("warn: SIGUSR2: an upgrade is in progress %(new master pid "
        .. hung .. "%): this one is refused", 5), srv:log())
      assert.truthy(srv:wait_log("upgrade failed: [^\n]*%(pid " .. hung .. "%) was killed by "
        .. "signal 9 %(Killed%): not ready within %-%-upgrade%-timeout; still serving", 10))
      assert.truthy(server.wait(function() return gone(hung) end, 5))
      assert.equal(srv.pid, pid_in(pid_file))
      assert.equal("two", server.exchange(c, "two"))
      if model == "event" then
        local out = util.pipe(q(server.BIN) .. " --repl --connect " .. q(ctl), "stats().pid\n")
        assert.equal(srv.pid .. "\n", out)
      end

      c:close()
      install(server.BIN, bin)                -- a good binary again: it takes over
      local new = upgrade(pid_file)
      assert.truthy(new, srv:log())
      assert.equal("new", server.echo(srv.host, srv.port, "new"))
    end)
  end

  it("tells systemd (NOTIFY_SOCKET) the new master's MAINPID", function()
    local sdsim = util.realpath(util.tool("tests/sdsim"))
    local out, pid_file = dir .. "/notified", dir .. "/pid"
    start(dir, { "--workers", "1", "--pid-file", pid_file },
      { wrap = { sdsim, "--notify", dir .. "/notify.sock", out, "--" } })
    local new = assert(upgrade(pid_file))
    assert.truthy(server.wait(function()
      local f = io.open(out)
      return f and f:close() and slurp(out) == "READY=1\nMAINPID=" .. new .. "\n"
    end, 5), (io.open(out) and slurp(out) or "") .. slurp(dir .. "/pid"))
  end)

  it("runs the binary at the path it was started as: a link flipped to a release runs it",
    function()
      for _, v in ipairs({ "v1", "v2" }) do
        os.execute("mkdir " .. q(dir .. "/" .. v))
        install(server.BIN, dir .. "/" .. v .. "/echohost")
      end
      local cur = dir .. "/current"
      os.execute("mkdir " .. q(cur) .. " && ln -s ../v1/echohost " .. q(cur .. "/echohost"))
      local pid_file = dir .. "/pid"
      local saved = server.BIN
      server.BIN = cur .. "/echohost"
      local ok, srv = pcall(server.start, { "--workers", "1", "--pid-file", pid_file })
      server.BIN = saved
      assert(ok, srv)
      masters[#masters + 1] = srv.pid
      local function exe(pid)
        local p = io.popen("readlink /proc/" .. pid .. "/exe")
        local s = p:read("l")
        p:close()
        return s
      end
      assert.equal(dir .. "/v1/echohost", exe(srv.pid))
      os.execute("ln -sfn ../v2/echohost " .. q(cur .. "/echohost"))
      local new = assert(upgrade(pid_file))
      assert.equal(dir .. "/v2/echohost", exe(new))
      assert.equal("v2", server.echo(srv.host, srv.port, "v2"))
    end)

  local function uid_of(pid)
    local f = io.open("/proc/" .. pid .. "/status")
    local uid = f and f:read("a"):match("\nUid:%s*(%d+)")
    if f then
      f:close()
    end
    return uid
  end
  local it_root = uid_of("self") == "0" and it or pending
  it_root("with --user, the new master runs as that user and takes over", function()
    os.execute("chmod 777 " .. q(dir))          -- nobody writes the pid file and the log
    local pid_file, log, ctl = dir .. "/pid", dir .. "/log", dir .. "/ctl"
    spit(log, "")
    os.execute("chown nobody " .. q(log))
    local srv = start(dir, { "--workers", "2", "--user", "nobody", "--pid-file", pid_file,
      "--log", log, "--control", ctl }, { log = log })
    local c = srv:connect()
    assert.equal("before", server.exchange(c, "before"))
    assert.is_true(srv:signal("USR2"))
    local new = server.wait(function()
      local p = pid_in(pid_file)
      return p ~= srv.pid and p
    end, 10)
    assert.truthy(new, srv:log())
    masters[#masters + 1] = new
    assert.equal("65534", uid_of(new))
    assert.equal("after", server.echo(srv.host, srv.port, "after"))
    local out = util.pipe(q(server.BIN) .. " --repl --connect " .. q(ctl), "stats().pid\n")
    assert.equal(new .. "\n", out)
    assert.is_falsy(gone(srv.pid))              -- the old one drains: c is still served
    assert.equal("during", server.exchange(c, "during"))
    c:close()
    assert.equal(0, srv:wait_exit(10))
  end)

  it("rejects a bad --upgrade-timeout", function()
    for _, bad in ipairs({ "0", "-1", "soon" }) do
      local code, err = server.run({ "--upgrade-timeout", bad })
      assert.equal(2, code)
      assert.truthy(err:find("bad --upgrade-timeout '" .. bad .. "' (want seconds > 0)", 1,
        true), err)
    end
  end)
end)
