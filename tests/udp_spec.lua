-- UDP echo (RFC 862) and several listeners in one server: every size up
-- to the largest datagram, 100,000 datagrams from 8 sockets, the loop
-- guard, the rate cap, bad datagrams, TCP and UDP listeners together, and
-- handler swaps while datagrams flow.
local server = require "helpers.server"
local util = require "helpers.util"
local socket = require "socket"

local BIN = util.realpath(server.BIN)
local q = server.quote

-- `echohost --repl --connect path` evaluating expr: its output.
local function ctl(path, expr)
  local out, err = util.pipe(q(BIN) .. " --repl --connect " .. q(path), expr .. "\n")
  assert.equal("", err)
  return out
end

-- The server's listeners summed over its workers: stats().listeners as a
-- Lua table (the REPL prints it readably: load it back).
local function listeners(path)
  local out = ctl(path, "for _, l in ipairs(stats().listeners) do print(string.format("
    .. "'{name=%q,kind=%q,dg_in=%d,dg_out=%d,guard=%d,rate=%d,full=%d,errors=%d,"
    .. "polled=%d,accepted=%d,conns=%d}', l.name, l.kind, l.datagrams_in or 0,"
    .. " l.datagrams_out or 0, l.dropped_guard or 0, l.dropped_rate or 0,"
    .. " l.dropped_full or 0, l.errors or 0, l.polled or 0, l.accepted or 0, l.conns or 0))"
    .. " end")
  local t = {}
  for line in out:gmatch("[^\n]+") do
    t[#t + 1] = assert(load("return " .. line))()
  end
  return t
end

-- busted keeps one finally() per test: cleanup(fn) gathers a test's, run
-- in reverse order at its end.
local cleanups
local function cleanup(fn)
  if not cleanups then
    local list = {}
    cleanups = list
    finally(function()
      cleanups = nil
      for i = #list, 1, -1 do list[i]() end
    end)
  end
  cleanups[#cleanups + 1] = fn
end

local function control_path()
  local dir = util.tmpdir()
  cleanup(function() os.execute("rm -rf " .. q(dir)) end)
  return dir .. "/ctl"
end

-- A UDP socket of host's family, bound to bind_host:bind_port if given.
local function udp(host, bind_host, bind_port)
  local u = assert(host:find(":") and socket.udp6() or socket.udp())
  if bind_host then
    local ok, err = u:setsockname(bind_host, bind_port or 0)
    assert(ok, tostring(err) .. " binding " .. bind_host .. ":" .. tostring(bind_port))
  end
  return u
end

-- A loopback address of this run's own (127.X.Y.Z), for sockets bound to
-- fixed ports such as 7: another run of these specs at the same time (a
-- parallel checkout) binds the same ports on other addresses.
-- busted seeds math.random with the time: two runs started in the same
-- second would pick the same one, so this run's pid picks it.
local spare
do
  local pid = require("echohost.proc").getpid()
  spare = ("127.%d.%d.%d"):format(100 + pid % 150, (pid // 150) % 255, 1 + (pid // 38250) % 254)
end

-- The listener of srv named kind://host:port: host and port.
local function target(srv, i)
  local _, host, port = server.split(srv.listeners[i])
  return host, port
end

-- Data for datagram tag: its own text first, so a reply names its request.
local function payload(tag, n)
  local head = tag .. ":"
  local body = server.pattern(n)
  return (head .. body):sub(1, math.max(n, #head))
end

-- Sends each datagram of reqs (a list of strings) from the sockets of
-- socks (request i from socks[(i - 1) % #socks + 1]) to host:port, at most
-- window per socket in flight. A datagram not answered when nothing
-- arrives for a while is sent again (UDP may drop); a reply is checked
-- against its request (named by its text up to the first ":"). Returns
-- how many requests were answered, how many replies were wrong, how many
-- were sent again. Bounded: at most 100 rounds of resending. ok(req,
-- reply), if given, says whether reply answers req (default: equal).
local function exchange(socks, host, port, reqs, window, ok)
  ok = ok or function(req, reply) return req == reply end
  local by_tag, pending, next_req, answered, wrong, resent = {}, {}, {}, 0, 0, 0
  for i, r in ipairs(reqs) do
    by_tag[r:match("^[^:]*")] = i
  end
  for k, s in ipairs(socks) do
    s:settimeout(0)
    pending[k], next_req[k] = {}, k
  end
  local function send(k, i)
    assert(socks[k]:sendto(reqs[i], host, port))
    pending[k][i] = true
  end
  local rounds = 0
  while answered < #reqs do
    for k in ipairs(socks) do
      local n = 0
      for _ in pairs(pending[k]) do n = n + 1 end
      while n < window and next_req[k] <= #reqs do
        send(k, next_req[k])
        next_req[k], n = next_req[k] + #socks, n + 1
      end
    end
    local ready = socket.select(socks, nil, 0.3)
    if #ready == 0 then
      rounds = rounds + 1
      assert(rounds <= 100, "no progress after 100 rounds of resending")
      for k in ipairs(socks) do
        for i in pairs(pending[k]) do
          send(k, i)
          resent = resent + 1
        end
      end
    end
    for _, s in ipairs(ready) do
      local k
      for j, x in ipairs(socks) do
        if x == s then k = j end
      end
      while true do
        local d = s:receive(65536)
        if not d then break end
        local i = by_tag[d:match("^[^:]*")]
        if i == nil or not ok(reqs[i], d) then
          wrong = wrong + 1
        elseif pending[k][i] then
          pending[k][i] = nil
          answered = answered + 1
        end
      end
    end
  end
  return answered, wrong, resent
end

-- One request and its reply over u, sent again (bounded) if it is lost;
-- explain(): what to add to the error when none came (the server's log).
local function ask(u, host, port, data, explain)
  u:settimeout(0.5)
  for _ = 1, 20 do
    assert(u:sendto(data, host, port))
    local got, err = u:receivefrom(65536)
    if got then
      return got
    end
    assert.equal("timeout", err)
  end
  error("no reply to " .. ("%q"):format(data) .. " after 20 tries"
    .. (explain and "\n" .. explain() or ""))
end

-- A bare function handler: each datagram (and TCP chunk) upper-cased,
-- with " V<version>" after it.
local function version_src(v)
  return ("return function(_, data) return data:upper() .. ' V%d' end\n"):format(v)
end

-- rounds times: the handler file gets version round, the first datagrams
-- of 500 go out, swap(round) makes the server load it (and returns once
-- every process serving datagrams has), and the rest follow; every
-- datagram is answered by the version before or the new one, and then the
-- new one answers.
local function swap_rounds(srv, handler, rounds, swap)
  local host, port = target(srv, 1)
  local socks = {}
  for k = 1, 4 do socks[k] = udp(host) end
  cleanup(function() for _, s in ipairs(socks) do s:close() end end)
  for round = 1, rounds do
    util.spit(handler, version_src(round))
    local reqs = {}
    for i = 1, 500 do reqs[i] = payload(round .. "-" .. i, 30) end
    for _, s in ipairs(socks) do s:settimeout(0) end
    for k = 1, 4 do assert(socks[k]:sendto(reqs[k], host, port)) end
    swap(round)
    local answered, wrong = exchange(socks, host, port, reqs, 16, function(req, reply)
      return reply == req:upper() .. " V" .. (round - 1) or reply == req:upper() .. " V" .. round
    end)
    assert.equal(500, answered)
    assert.equal(0, wrong)
    local u = udp(host)
    assert.equal("PROBE V" .. round, ask(u, host, port, "probe"))
    u:close()
  end
end

describe("UDP echo", function()
  after_each(server.stop_all)

  for _, case in ipairs({ { "127.0.0.1", 65507 }, { "::1", 65527 } }) do
    local host, max = case[1], case[2]
    it("echoes every size from 1 byte to the largest datagram (" .. max .. " bytes) on "
      .. host, function()
      local srv = server.start({ "--workers", "2", "--listen",
        (host:find(":") and "udp://[::1]:0" or "udp://127.0.0.1:0") })
      local h, port = target(srv, 1)
      assert.equal(host, h)
      local u = udp(host)
      cleanup(function() u:close() end)
      local sizes = {}
      for n = 1, 64 do sizes[#sizes + 1] = n end
      for b = 7, 16 do
        sizes[#sizes + 1] = (1 << b) - 1
        sizes[#sizes + 1] = 1 << b
        sizes[#sizes + 1] = (1 << b) + 1
      end
      for _, n in ipairs({ 1472, 1473, 1500, 8972, 9000, 65000, max - 1, max }) do
        sizes[#sizes + 1] = n
      end
      for _, n in ipairs(sizes) do
        if n <= max then
          local data = server.pattern(n)
          local got = ask(u, host, port, data)
          assert(got == data, n .. " bytes: the reply differs (" .. #got .. " bytes back)")
        end
      end
      -- max is the largest there is: the kernel refuses one byte more
      local ok, err = u:sendto(server.pattern(max + 1), host, port)
      assert.is_nil(ok)
      assert.matches("too long", err)
    end)
  end

  it("answers 100,000 datagrams from 8 sockets, every reply checked", function()
    local path = control_path()
    local srv = server.start({ "--workers", "2", "--listen", "udp://127.0.0.1:0",
      "--udp-rate", "0", "--control", path })
    local host, port = target(srv, 1)
    local socks = {}
    for k = 1, 8 do socks[k] = udp(host) end
    cleanup(function() for _, s in ipairs(socks) do s:close() end end)
    local reqs = {}
    for i = 1, 100000 do
      reqs[i] = payload(tostring(i), 8 + i % 57)
    end
    local answered, wrong = exchange(socks, host, port, reqs, 16)
    assert.equal(100000, answered)
    assert.equal(0, wrong)
    local l = listeners(path)[1]
    assert.equal("udp", l.kind)
    assert.is_true(l.dg_in >= 100000 and l.dg_out >= 100000)
    assert.equal(0, l.guard)
    assert.equal(0, l.rate)                 -- --udp-rate 0: no cap
  end)

  it("answers a zero-length datagram with one, and goes on when peers close before "
    .. "their reply (ICMP port unreachable)", function()
    local path = control_path()
    local srv = server.start({ "--workers", "1", "--listen", "udp://127.0.0.1:0",
      "--control", path })
    local host, port = target(srv, 1)
    local u = udp(host)
    cleanup(function() u:close() end)
    assert.equal("", ask(u, host, port, ""))
    for i = 1, 50 do
      local gone = udp(host)
      assert(gone:sendto("bye " .. i, host, port))
      gone:close()
    end
    assert.equal("still here", ask(u, host, port, "still here"))
    assert.equal("", ask(u, host, port, ""))
    local l = listeners(path)[1]
    assert.is_true(l.dg_in >= 53)
    assert.equal(0, l.guard)
  end)

  it("polls a busy socket instead of waiting on it, serves TCP meanwhile, and sleeps "
    .. "again once the socket is empty", function()
    local path = control_path()
    local srv = server.start({ "--workers", "1", "--listen", "udp://127.0.0.1:0",
      "--listen", "127.0.0.1:0", "--udp-rate", "0", "--control", path })
    local host, port = target(srv, 1)
    local thost, tport = target(srv, 2)
    local worker = assert(srv:wait_children(1, 5))[1]
    -- the CPU ticks (10 ms) the worker takes in a second of no traffic: a
    -- socket left polled would take them all
    local function idle_ticks()
      server.sleep(0.3)
      local t0 = server.cpu_ticks(worker)
      server.sleep(1)
      return server.cpu_ticks(worker) - t0
    end
    -- 96 datagrams queued while the worker is stopped: its first wake-up
    -- reads a full batch, the socket leaves epoll, the rest are polled
    local socks = {}
    for k = 1, 4 do socks[k] = udp(host) end
    cleanup(function() for _, u in ipairs(socks) do u:close() end end)
    local reqs = {}
    for i = 1, 96 do reqs[i] = payload("p" .. i, 40) end
    assert(os.execute("kill -STOP " .. worker))
    cleanup(function() os.execute("kill -CONT " .. worker .. " 2>/dev/null") end)
    for i, r in ipairs(reqs) do assert(socks[(i - 1) % 4 + 1]:sendto(r, host, port)) end
    assert(os.execute("kill -CONT " .. worker))
    local got = {}
    for _, u in ipairs(socks) do
      u:settimeout(2)
      for _ = 1, 24 do got[assert(u:receivefrom(65536))] = true end
    end
    for _, r in ipairs(reqs) do assert.truthy(got[r], r:sub(1, 8) .. " unanswered") end
    local before = listeners(path)[1]
    assert.equal(96, before.dg_out)
    assert.is_true(before.polled >= 1, "never polled")
    local ticks = idle_ticks()
    assert.is_true(ticks <= 10, "the worker spins: " .. ticks .. " ticks")
    -- a flood of 1.5 s (16 sockets, 8 datagrams in flight each): TCP is
    -- answered meanwhile, and the worker sleeps once it stops
    local flood = io.popen(("%s -m udp -c 16 -w 8 -s 64 -d 1.5 -W 0 %s:%d 2>&1")
      :format(q(util.tool("echohost-bench")), host, port))
    server.sleep(0.2)
    for i = 1, 10 do
      assert.equal("tcp " .. i, server.echo(thost, tport, "tcp " .. i, { timeout = 2 }))
    end
    local report = flood:read("a")
    flood:close()
    local echoed = tonumber(report:match('"msgs":(%d+)'))
    assert(echoed and echoed > 1000, report)
    local after = listeners(path)[1]
    assert.is_true(after.polled > before.polled, "not polled under the flood")
    assert.is_true(after.dg_out >= before.dg_out + echoed)
    ticks = idle_ticks()
    assert.is_true(ticks <= 10, "the worker spins after the flood: " .. ticks .. " ticks")
  end)
end)

describe("the UDP loop guard", function()
  after_each(server.stop_all)

  it("drops datagrams from echo-like ports (7, 19, 37) and from the server's own UDP ports",
    function()
    local path = control_path()
    local srv = server.start({ "--workers", "1", "--listen", "udp://127.0.0.1:0",
      "--listen", "udp://127.0.0.1:0", "--control", path })
    local host, port = target(srv, 1)
    local _, own = target(srv, 2)
    local guarded = {}
    cleanup(function() for _, g in ipairs(guarded) do g:close() end end)
    -- as root: sockets on the echo, chargen and time ports and on the
    -- server's own ports of other loopback addresses
    for _, bind in ipairs({ { spare, 7 }, { spare, 19 }, { spare, 37 }, { "127.0.0.2", own },
                            { "127.0.0.2", port } }) do
      local g = udp(host, bind[1], bind[2])
      guarded[#guarded + 1] = g
      assert(g:sendto("loop? " .. bind[2], host, port))
    end
    -- one worker, one socket: once the probe is answered, the datagrams
    -- sent before it were served (or dropped)
    local probe = udp(host)
    cleanup(function() probe:close() end)
    assert.equal("probe", ask(probe, host, port, "probe"))
    for _, g in ipairs(guarded) do
      g:settimeout(0)
      local got, err = g:receive()
      assert.is_nil(got)
      assert.equal("timeout", err)
    end
    local l = listeners(path)
    assert.equal(5, l[1].guard)
    assert.equal(0, l[2].guard)
    assert.is_true(l[1].dg_out >= 1 and l[1].dg_out == l[1].dg_in - 5)
    assert.matches("udp://127%.0%.0%.1:" .. port .. ": dropping datagrams from "
      .. spare:gsub("%.", "%%.") .. ":7 "
      .. "%(loop guard%)", srv:log())
  end)

  it("answers at most --udp-rate datagrams per second from one source address", function()
    local path = control_path()
    local srv = server.start({ "--workers", "1", "--listen", "udp://127.0.0.1:0",
      "--udp-rate", "5", "--control", path })
    local host, port = target(srv, 1)
    local u = udp(host)
    local other = udp(host, "127.0.0.2")    -- another source: its own allowance
    cleanup(function() u:close(); other:close() end)
    local t0 = socket.gettime()
    for i = 1, 40 do
      assert(u:sendto("r" .. i, host, port))
    end
    assert.equal("probe", ask(other, host, port, "probe"))
    local elapsed = socket.gettime() - t0
    u:settimeout(0)
    local got = {}
    while true do
      local d = u:receive()
      if not d then break end
      got[#got + 1] = d
    end
    -- the first 5 (a full second's allowance), then 5 a second at most
    assert.is_true(#got >= 5, #got .. " replies")
    assert.is_true(#got <= 5 + math.ceil(5 * elapsed), #got .. " replies in " .. elapsed .. " s")
    for i = 1, 5 do
      assert.equal("r" .. i, got[i])
    end
    local l = listeners(path)[1]
    assert.equal(40 - #got, l.rate)
    assert.equal(#got + 1, l.dg_out)
  end)
end)

describe("several listeners", function()
  after_each(server.stop_all)

  it("serve TCP and UDP, IPv4 and IPv6, in one server, each named in the log, stats() and "
    .. "conns()", function()
    local path = control_path()
    local srv = server.start({ "--workers", "2", "--listen", "127.0.0.1:0", "--listen",
      "[::1]:0", "--listen", "udp://127.0.0.1:0", "--listen", "udp://[::1]:0",
      "--control", path, "--access-log" })
    assert.equal(4, #srv.listeners)
    assert.matches("^127%.0%.0%.1:%d+$", srv.listeners[1])
    assert.matches("^%[::1%]:%d+$", srv.listeners[2])
    assert.matches("^udp://127%.0%.0%.1:%d+$", srv.listeners[3])
    assert.matches("^udp://%[::1%]:%d+$", srv.listeners[4])
    local data = server.pattern(100000)
    for i = 1, 2 do
      local host, port = target(srv, i)
      assert.equal(data, (server.echo(host, port, data)))
    end
    for i = 3, 4 do
      local host, port = target(srv, i)
      local u = udp(host)
      assert.equal("hi " .. i, ask(u, host, port, "hi " .. i))
      u:close()
    end
    -- a connection held open on the second: conns() names it
    local host, port = target(srv, 2)
    local c = assert(socket.tcp6())
    cleanup(function() c:close() end)
    c:settimeout(5)
    assert(c:connect(host, port))
    assert(c:send("x"))
    assert.equal("x", c:receive(1))
    assert.truthy(server.wait(function() return ctl(path, "=#conns()") == "1\n" end, 5))
    assert.equal(srv.listeners[2] .. "\n", ctl(path, "print(conns()[1].listener)"))
    local l = listeners(path)
    for i = 1, 4 do
      assert.equal(srv.listeners[i], l[i].name)
      assert.equal(i <= 2 and "tcp" or "udp", l[i].kind)
    end
    assert.equal(1, l[1].accepted)
    assert.equal(2, l[2].accepted)
    assert.equal(1, l[2].conns)
    assert.is_true(l[3].dg_out >= 1 and l[4].dg_out >= 1)
    local name = srv.listeners[1]:gsub("%.", "%%.")
    assert.matches("access: id=%d+ peer=127%.0%.0%.1:%d+ listener=" .. name .. " worker=",
      srv:log())
  end)

  it("serve TCP and UDP under --model fork", function()
    local srv = server.start({ "--model", "fork", "--listen", "127.0.0.1:0", "--listen",
      "udp://127.0.0.1:0", "--listen", "127.0.0.1:0" })
    assert.equal(3, #srv.listeners)
    for _, i in ipairs({ 1, 3 }) do
      local host, port = target(srv, i)
      assert.equal("fork " .. i, (server.echo(host, port, "fork " .. i)))
    end
    local host, port = target(srv, 2)
    local u = udp(host)
    cleanup(function() u:close() end)
    assert.equal("fork udp", ask(u, host, port, "fork udp"))
  end)

  it("share a UDP socket among the workers with ECHOHOST_ACCEPT=exclusive", function()
    local srv = server.start({ "--workers", "2", "--listen", "udp://127.0.0.1:0",
      "--listen", "127.0.0.1:0", "--udp-rate", "0" }, { env = { ECHOHOST_ACCEPT = "exclusive" } })
    local host, port = target(srv, 1)
    local socks = { udp(host), udp(host) }
    cleanup(function() for _, s in ipairs(socks) do s:close() end end)
    local reqs = {}
    for i = 1, 2000 do reqs[i] = payload(tostring(i), 40) end
    local answered, wrong = exchange(socks, host, port, reqs, 16)
    assert.equal(2000, answered)
    assert.equal(0, wrong)
    host, port = target(srv, 2)
    assert.equal("tcp", (server.echo(host, port, "tcp")))
  end)

  it("lose none while the datagram handler is swapped by SIGHUP as datagrams flow", function()
    local dir = util.tmpdir()
    cleanup(function() os.execute("rm -rf " .. q(dir)) end)
    local handler = dir .. "/h.lua"
    util.spit(handler, version_src(0))
    local path = dir .. "/ctl"
    local srv = server.start({ "--workers", "2", "--handler", handler, "--listen",
      "udp://127.0.0.1:0", "--listen", "127.0.0.1:0", "--udp-rate", "0", "--control", path })
    local thost, tport = target(srv, 2)
    swap_rounds(srv, handler, 10, function(round)
      assert.is_true(srv:signal("HUP"))
      -- the master took this SIGHUP before the next (signals do not queue)
      assert.truthy(server.wait(function()
        local _, n = srv:log():gsub("SIGHUP: reloading the handler", "")
        return n == round
      end, 5))
      assert.truthy(server.wait(function()
        return ctl(path, "=stats().workers[1].reloads + stats().workers[2].reloads")
          == 2 * round .. "\n"
      end, 10))
      assert.equal("ROUND " .. round .. " V" .. round,
        (server.echo(thost, tport, "round " .. round)))   -- one function serves TCP too
    end)
    local l = listeners(path)
    assert.equal("udp", l[1].kind)
    assert.equal(10, l[2].accepted)
  end)
end)

describe("the datagram handler", function()
  after_each(server.stop_all)

  local function handler_file(src)
    local dir = util.tmpdir()
    cleanup(function() os.execute("rm -rf " .. q(dir)) end)
    util.spit(dir .. "/h.lua", src)
    return dir .. "/h.lua", dir .. "/ctl"
  end

  it("serves on_data and on_datagram of one file on a TCP+UDP server, IPv4 and IPv6 peers, "
    .. "with the worker's module state", function()
    local file = handler_file([[
local n = 0
return {
  on_data = function(_, data) return ("tcp %s after %d datagrams"):format(data, n) end,
  on_datagram = function(peer, data) n = n + 1; return peer .. " " .. data end,
}
]])
    local srv = server.start({ "--workers", "1", "--handler", file, "--listen", "127.0.0.1:0",
      "--listen", "udp://127.0.0.1:0", "--listen", "udp://[::1]:0" })
    for i = 2, 3 do
      local host, port = target(srv, i)
      local u = udp(host)
      cleanup(function() u:close() end)
      assert(u:setsockname(host, 0))
      local ip, p = u:getsockname()
      local peer = (i == 3 and "[" .. ip .. "]" or ip) .. ":" .. p
      assert.equal(peer .. " hello " .. i, ask(u, host, port, "hello " .. i))
    end
    local host, port = target(srv, 1)
    assert.equal("tcp x after 2 datagrams", (server.echo(host, port, "x", { want = 23 })))
  end)

  it("counts faults and nil replies, and the listener goes on; the loop guard and the rate "
    .. "cap come before the handler", function()
    local file, path = handler_file([[
local shared = require "echohost.shared"
return function(_, data)
  local calls = shared:incr("calls", 1, 0)
  if data == "count" then return tostring(calls) end
  if data == "boom" then error("boom") end
  if data == "quiet" then return nil end
  return data
end
]])
    local srv = server.start({ "--workers", "1", "--handler", file, "--udp-rate", "5",
      "--listen", "udp://127.0.0.1:0", "--listen", "udp://127.0.0.1:0", "--control", path })
    local host, port = target(srv, 1)
    local _, own = target(srv, 2)
    local socks = {}
    cleanup(function() for _, s in ipairs(socks) do s:close() end end)
    local function bound(h, p)
      local s = udp(host, h, p)
      socks[#socks + 1] = s
      return s
    end
    -- the loop guard: from the echo and chargen ports, and the server's own
    for _, b in ipairs({ { spare, 7 }, { spare, 19 }, { "127.0.0.2", own } }) do
      assert(bound(b[1], b[2]):sendto("guarded", host, port))
    end
    local probe = bound("127.0.0.3")
    local function explain()            -- should a reply never come (seen once on CI)
      return srv:log() .. "\n" .. ctl(path, "local l = stats().listeners[1]; print(l.guard, "
        .. "l.rate, l.faults, l.no_reply, l.datagrams_in, l.datagrams_out)")
    end
    local function ask_probe(data) return ask(probe, host, port, data, explain) end
    assert.equal("1", ask_probe("count"))               -- none reached the handler
    -- the rate cap: 20 at once from one address, at most 5 a second answered
    local burst = bound("127.0.0.4")
    for i = 1, 20 do assert(burst:sendto("r" .. i, host, port)) end
    local calls = tonumber(ask_probe("count"))
    burst:settimeout(0)
    local got = 0
    while burst:receive() do got = got + 1 end
    assert.is_true(got >= 5 and got < 20, got .. " answered")
    assert.equal(2 + got, calls)                      -- only those answered were called
    -- a fault and a nil reply: nothing comes back, the next is answered
    probe:settimeout(0.3)
    assert(probe:sendto("boom", host, port))
    assert(probe:sendto("quiet", host, port))
    assert.equal("after", ask_probe("after"))
    local l = listeners(path)[1]
    assert.equal(3, l.guard)
    assert.equal(20 - got, l.rate)
    local out = ctl(path, "local l = stats().listeners[1]; print(l.faults, l.no_reply, "
      .. "l.datagrams_in - l.datagrams_out - l.dropped_guard - l.dropped_rate)")
    assert.equal("1\t1\t2\n", out)
    assert.matches("error: handler " .. file:gsub("%p", "%%%0") .. ": datagram from "
      .. "127%.0%.0%.3:%d+ %(udp://127%.0%.0%.1:" .. port .. "%) not answered: "
      .. ".-h%.lua:5: boom\nstack traceback:", srv:log())
  end)

  it("logs one fault a second per listener and counts them all", function()
    local file, path = handler_file("return function() error('boom') end\n")
    local srv = server.start({ "--workers", "1", "--handler", file, "--udp-rate", "0",
      "--listen", "udp://127.0.0.1:0", "--control", path })
    local host, port = target(srv, 1)
    local u = udp(host)
    cleanup(function() u:close() end)
    local sent = 0
    for _ = 1, 30 do
      assert(u:sendto("x", host, port))
      sent = sent + 1
    end
    -- later faults, until one is logged with the count of those that were not
    assert.truthy(server.wait(function()
      assert(u:sendto("x", host, port))
      sent = sent + 1
      server.sleep(0.1)
      return srv:log():match("(%d+) more datagrams faulted, not logged")
    end, 10))
    local faults
    assert.truthy(server.wait(function()
      faults = tonumber(ctl(path, "=stats().listeners[1].faults"))
      return faults == sent
    end, 5), faults .. " faults counted, " .. sent .. " sent")
    local _, lines = srv:log():gsub("not answered", "")
    local unlogged = 0
    for n in srv:log():gmatch("(%d+) more datagrams faulted, not logged") do
      unlogged = unlogged + tonumber(n)
    end
    assert.is_true(lines >= 2 and lines + unlogged <= sent, lines .. " lines")
  end)

  it("lose none while --watch swaps the datagram handler as datagrams flow", function()
    local file, path = handler_file(version_src(0))
    local srv = server.start({ "--workers", "1", "--handler", file, "--watch", "--udp-rate", "0",
      "--listen", "udp://127.0.0.1:0", "--control", path })
    swap_rounds(srv, file, 5, function(round)   -- swap_rounds wrote the file
      assert.truthy(server.wait(function()
        return ctl(path, "=stats().workers[1].reloads") == round .. "\n"
      end, 10))
    end)
  end)

  it("lose none while reload() on the control socket swaps it as datagrams flow", function()
    local file, path = handler_file(version_src(0))
    local srv = server.start({ "--workers", "2", "--handler", file, "--udp-rate", "0",
      "--listen", "udp://127.0.0.1:0", "--control", path })
    swap_rounds(srv, file, 5, function()
      assert.equal("true\n", ctl(path, "=reload()"))
    end)
  end)

  it("runs in the fork server's own state under --model fork, swapped by SIGHUP as "
    .. "datagrams flow", function()
    local file = handler_file(version_src(0))
    local srv = server.start({ "--model", "fork", "--handler", file, "--udp-rate", "0",
      "--listen", "udp://127.0.0.1:0", "--listen", "127.0.0.1:0" })
    swap_rounds(srv, file, 5, function(round)
      assert.is_true(srv:signal("HUP"))
      assert.truthy(srv:wait_log("version " .. (round + 1) .. " loaded", 5))
    end)
    local host, port = target(srv, 2)                 -- children serve TCP with it
    assert.equal("TCP V5", (server.echo(host, port, "tcp", { want = 6 })))
  end)

  it("gives each fork child a copy of the server's state as it was at the fork", function()
    local file = handler_file([[
local n = 0
return {
  on_data = function(_, data) return ("%s %d\n"):format(data:match("%S+"), n) end,
  on_datagram = function(_, data) n = n + 1; return data .. " " .. n end,
}
]])
    local srv = server.start({ "--model", "fork", "--handler", file, "--listen",
      "udp://127.0.0.1:0", "--listen", "127.0.0.1:0" })
    local uhost, uport = target(srv, 1)
    local u = udp(uhost)
    cleanup(function() u:close() end)
    assert.equal("a 1", ask(u, uhost, uport, "a"))
    assert.equal("b 2", ask(u, uhost, uport, "b"))
    local host, port = target(srv, 2)
    local c = assert(socket.tcp())
    cleanup(function() c:close() end)
    c:settimeout(5)
    assert(c:connect(host, port))
    assert(c:send("x\n"))
    assert.equal("x 2", c:receive("*l"))
    assert.equal("c 3", ask(u, uhost, uport, "c"))    -- the server's state moves on
    assert(c:send("y\n"))
    assert.equal("y 2", c:receive("*l"))              -- the child's does not
    assert.equal("z 3\n", (server.echo(host, port, "z\n")))   -- a new child: a new copy
  end)
end)
