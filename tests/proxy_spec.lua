-- The PROXY protocol on ,proxy listeners: Debian's HAProxy in front of
-- echohost with send-proxy and send-proxy-v2 (a few MiB both ways and a
-- half-close through it, conn.peer, the access log and conns() naming the
-- real client, its LOCAL health checks), headers that are missing,
-- garbage, truncated, oversized, of a bad length or too slow, each closing
-- its connection only and counted, and several kinds of listener in one
-- server.
local server = require "helpers.server"
local util = require "helpers.util"
local socket = require "socket"
local unix = require "socket.unix"

local BIN = util.realpath(server.BIN)
local q = server.quote

local PEER = [[
return function(conn, data)
  if data:find("peer?\n", 1, true) then
    return conn.peer .. "\n"
  end
  return data
end
]]

local dir
before_each(function()
  dir = util.tmpdir()
end)

local haproxies = {}
local function stop_haproxy(h)
  if h.done then
    return
  end
  h.done = true
  os.execute("kill -TERM " .. h.pid .. " 2>/dev/null")
  if not server.wait(function()
    local st = server.state(h.pid)
    return st == nil or st == "Z"
  end, 5) then
    os.execute("kill -KILL " .. h.pid .. " 2>/dev/null")
  end
  h.proc:close()
end

after_each(function()
  for _, h in ipairs(haproxies) do
    stop_haproxy(h)
  end
  haproxies = {}
  server.stop_all()
  os.execute("rm -rf " .. q(dir))
end)

-- `echohost --repl --connect path` evaluating expr: its output.
local function ctl(path, expr)
  local out, err = util.pipe(q(BIN) .. " --repl --connect " .. q(path), expr .. "\n")
  assert.equal("", err)
  return out
end

-- stats().listeners[i] of the server behind control socket path, as a table.
local function lstats(path, i)
  local out = ctl(path, "local l = stats().listeners[" .. i .. "] "
    .. "local t = {} for k, v in pairs(l) do t[#t + 1] = k .. '=' .. string.format('%q', v) end "
    .. "print('{' .. table.concat(t, ',') .. '}')")
  return assert(load("return " .. out))()
end

-- The workers' pids, as stats() lists them (srv:children() would count the
-- operators' session processes too).
local function worker_pids(path)
  return ctl(path, "for _, w in ipairs(stats().workers) do print(w.pid) end")
end

local function port_of(srv, i)
  local _, _, port = server.split(srv.listeners[i])
  return port
end

-- A port nobody listens on now (the kernel's pick, given back).
local function free_port(host)
  local s = assert(host:find(":") and socket.tcp6() or socket.tcp())
  assert(s:bind(host, 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- HAProxy on a config made by cfg(ports) from fresh ports, started by PID
-- (tried again on other ports if one was taken meanwhile); returns the
-- handle and the ports once every frontend accepts.
local function start_haproxy(nports, cfg)
  for _ = 1, 5 do
    local ports = {}
    for i = 1, nports do
      ports[i] = free_port("127.0.0.1")
    end
    local path, log = dir .. "/haproxy.cfg", dir .. "/haproxy.log"
    util.spit(path, cfg(ports))
    local p = io.popen("echo $$; exec env -u LD_PRELOAD haproxy -db -f " .. q(path)
      .. " >" .. q(log) .. " 2>&1 </dev/null")
    local h = { pid = tonumber(p:read("l")), proc = p, log = log }
    haproxies[#haproxies + 1] = h
    local up = server.wait(function()
      if server.state(h.pid) == nil or server.state(h.pid) == "Z" then
        return "gone"
      end
      for _, port in ipairs(ports) do
        local c = socket.tcp()
        c:settimeout(1)
        local ok = c:connect("127.0.0.1", port)
        c:close()
        if not ok then
          return nil
        end
      end
      return "up"
    end, 10)
    if up == "up" then
      return h, ports
    end
    stop_haproxy(h)
  end
  error("haproxy did not start: " .. util.slurp(dir .. "/haproxy.log"))
end

local HEAD = [[
global
    nbthread 1
    maxconn 200

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
]]

-- A frontend on 127.0.0.1:port forwarding to server address `to`.
local function pair(name, port, to, send, extra)
  return string.format([[

frontend %s
    bind 127.0.0.1:%d
    default_backend %s

backend %s
    server s %s %s%s
]], name, port, name, name, to, send, extra or "")
end

local function tcp(host, port)
  local c = assert(host:find(":") and socket.tcp6() or socket.tcp())
  c:settimeout(10)
  assert(c:connect(host, port))
  return c
end

-- "127.0.0.1:40000": c's own address, as the server should name it.
local function own_addr(c)
  local host, port = c:getsockname()
  return (host:find(":") and "[" .. host .. "]" or host) .. ":" .. port
end

local function ask_peer(c)
  assert(c:send("peer?\n"))
  return (c:receive("*l"))
end

for _, send in ipairs({ "send-proxy", "send-proxy-v2" }) do
  for _, model in ipairs({ "event", "fork" }) do
    describe("HAProxy " .. send .. " in front of echohost (" .. model .. " model)", function()
      it("carries 4 MiB both ways and a half-close, the C echo intact", function()
        local srv = server.start({ "--model", model, "--workers", "2", "--listen",
          "127.0.0.1:0,proxy" })
        local _, ports = start_haproxy(1, function(p)
          return HEAD .. pair("echo", p[1], "127.0.0.1:" .. srv.port, send)
        end)
        local data = server.pattern(4 * 1024 * 1024)
        for _ = 1, 2 do
          local got, ended = server.echo("127.0.0.1", ports[1], data,
            { half_close = true, timeout = 60 })
          assert.equal(#data, #got)
          assert.is_true(got == data)
          assert.equal("closed", ended)
        end
      end)

      it("makes conn.peer and the access log the client's real address", function()
        local h = dir .. "/peer.lua"
        util.spit(h, PEER)
        local path = dir .. "/peer.sock"
        local args = { "--model", model, "--handler", h, "--access-log", "--listen",
          "127.0.0.1:0,proxy", "--listen", "unix:" .. path .. ",proxy" }
        if model == "event" then
          args[#args + 1] = "--control"
          args[#args + 1] = dir .. "/ctl"
        end
        local srv = server.start(args)
        local _, ports = start_haproxy(2, function(p)
          return HEAD .. pair("tcp", p[1], "127.0.0.1:" .. srv.port, send)
            .. pair("unix", p[2], "unix@" .. path, send)
        end)
        local seen = {}
        for _, port in ipairs(ports) do
          local c = tcp("127.0.0.1", port)
          local me = own_addr(c)
          assert.equal(me, ask_peer(c))
          if model == "event" then      -- conns() names it while it is open
            local out = ctl(dir .. "/ctl", "for _, x in ipairs(conns()) do print(x.peer) end")
            assert.truthy(out:find(me .. "\n", 1, true), out)
          end
          c:close()
          seen[#seen + 1] = me
        end
        for _, me in ipairs(seen) do
          assert.truthy(srv:wait_log("access: id=%d+ peer=" .. me:gsub("%p", "%%%0") .. " ", 5),
            srv:log())
        end
      end)
    end)
  end

  -- HAProxy 2.6's checks send v2 LOCAL, and v1 lines with the check's own
  -- addresses (checked by dumping what they send): each is taken, and
  -- with "fall 1" a refused one would mark the server down at once.
  local kind = send == "send-proxy-v2" and "proxy_local" or "proxy_ok"
  describe("HAProxy " .. send .. " health checks", function()
    it("are accepted (" .. kind .. "), the server stays up", function()
      local cpath = dir .. "/ctl"
      local srv = server.start({ "--workers", "1", "--listen", "127.0.0.1:0,proxy",
        "--control", cpath })
      local _, ports = start_haproxy(1, function(p)
        return HEAD .. pair("checked", p[1], "127.0.0.1:" .. srv.port, send,
          " check check-send-proxy inter 100ms rise 1 fall 1")
      end)
      assert.truthy(server.wait(function() return lstats(cpath, 1)[kind] >= 5 end, 10))
      local st0 = lstats(cpath, 1)
      local got = server.echo("127.0.0.1", ports[1], "through\n", { half_close = true })
      assert.equal("through\n", got)
      local st = lstats(cpath, 1)
      assert.truthy(st.proxy_ok >= st0.proxy_ok + 1)
      assert.equal(0, st.proxy_missing + st.proxy_malformed + st.proxy_oversized
        + st.proxy_truncated + st.proxy_timeout)
      if kind == "proxy_local" then
        assert.equal(st0.proxy_ok + 1, st.proxy_ok)   -- the client's, not a check's
      end
    end)
  end)
end

-- Headers written straight to the listener.
local SIG = "\r\n\r\n\0\r\nQUIT\n"
local function v2(cmd, fam, body, len)
  return SIG .. string.char(0x20 | cmd, fam) .. string.pack(">I2", len or #body) .. body
end
local TCP4 = string.char(192, 0, 2, 1, 198, 51, 100, 2) .. string.pack(">I2I2", 4242, 443)

local bad = {
  { "missing", "hello, no header\n", "proxy_missing" },
  { "garbage", "\1\2\3\255\254 binary", "proxy_missing" },
  { "an HTTP request", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "proxy_missing" },
  { "a v1 line ended by LF", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nhello", "proxy_malformed" },
  { "a v1 bad address", "PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", "proxy_malformed" },
  { "a v1 bad port", "PROXY TCP6 ::1 ::2 1 65536\r\n", "proxy_malformed" },
  { "v2 with a bad length", v2(1, 0x11, TCP4:sub(1, 8)), "proxy_malformed" },
  { "v2 TCP6 with a TCP4 length", v2(1, 0x21, TCP4), "proxy_malformed" },
  { "v2 of version 1", SIG .. "\x11\x11\x00\x0c" .. TCP4, "proxy_malformed" },
  { "an oversized v1 line", "PROXY TCP4 " .. string.rep("9", 300) .. "\r\n", "proxy_oversized" },
  { "an oversized v2 header", v2(1, 0x11, TCP4, 65535) .. string.rep("x", 5000),
    "proxy_oversized" },
  { "a truncated v1 line", "PROXY TCP4 192.0.2.1 198.", "proxy_truncated", true },
  { "a truncated v2 header", v2(1, 0x11, TCP4):sub(1, 20), "proxy_truncated", true },
  { "a v2 signature only", SIG:sub(1, 9), "proxy_truncated", true },
  { "a header too slow", "PROXY TCP4 192.0.2.1", "proxy_timeout" },
}

local COUNTERS = { "proxy_ok", "proxy_local", "proxy_missing", "proxy_malformed",
  "proxy_oversized", "proxy_truncated", "proxy_timeout" }

-- Sends data (then EOF if shut) and reads until the server closes: what
-- came back and how it ended.
local function refused(port, data, shut)
  local c = tcp("127.0.0.1", port)
  c:settimeout(10)
  assert(c:send(data))
  if shut then
    c:shutdown("send")
  end
  local got, err, partial = c:receive("*a")
  c:close()
  return got or partial, got and "closed" or err
end

describe("a ,proxy listener refusing headers", function()
  it("closes each bad one only, counts it on its listener, leaves the rest", function()
    local cpath = dir .. "/ctl"
    local srv = server.start({ "--workers", "2", "--listen", "127.0.0.1:0,proxy",
      "--listen", "127.0.0.1:0", "--control", cpath, "--proxy-timeout", "0.3",
      "--access-log" })
    local port = port_of(srv, 1)
    local keep = tcp("127.0.0.1", port)         -- a good one, open throughout
    assert(keep:send("PROXY TCP4 192.0.2.9 198.51.100.2 999 80\r\nfirst\n"))
    assert.equal("first", keep:receive("*l"))
    local pids = worker_pids(cpath)
    local before = lstats(cpath, 1)
    for _, case in ipairs(bad) do
      local name, data, counter, shut = case[1], case[2], case[3], case[4]
      local got, ended = refused(port, data, shut)
      assert.equal("", got, name)
      assert.truthy(ended == "closed" or ended == "connection reset by peer", name .. ": "
        .. tostring(ended))
      local after
      assert.truthy(server.wait(function()
        after = lstats(cpath, 1)
        return after[counter] == before[counter] + 1
      end, 5), name .. ": " .. counter)
      for _, k in ipairs(COUNTERS) do
        if k ~= counter then
          assert.equal(before[k], after[k], name .. ": " .. k)
        end
      end
      before = after
    end
    assert(keep:send("still here\n"))            -- nothing else disturbed
    assert.equal("still here", keep:receive("*l"))
    keep:close()
    assert.same(pids, worker_pids(cpath))        -- no worker died
    assert.equal(1, before.proxy_ok)
    local other = lstats(cpath, 2)              -- the plain listener: no proxy fields
    assert.is_nil(other.proxy)
    assert.is_nil(other.proxy_missing)
    assert.equal("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", (server.echo("127.0.0.1", port_of(srv, 2),
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")))   -- no header expected there: echoed
    assert.truthy(srv:log():find("reason=proxy", 1, true))
    assert.truthy(srv:log():find("PROXY header: ", 1, true))
  end)

  it("in the fork model too: the child closes, the server goes on", function()
    local srv = server.start({ "--model", "fork", "--listen", "127.0.0.1:0,proxy",
      "--proxy-timeout", "0.3", "--access-log" })
    for _, case in ipairs(bad) do
      local got, ended = refused(srv.port, case[2], case[4])
      assert.equal("", got, case[1])
      assert.truthy(ended == "closed" or ended == "connection reset by peer", case[1])
    end
    local n
    assert.truthy(server.wait(function()
      n = select(2, srv:log():gsub("reason=proxy", ""))
      return n == #bad
    end, 5), n)
    assert.equal("ok\n", (server.echo("127.0.0.1", srv.port, "PROXY UNKNOWN\r\nok\n",
      { half_close = true })))
  end)

  it("takes a v2 LOCAL header: the socket's own peer stands", function()
    local h = dir .. "/peer.lua"
    util.spit(h, PEER)
    for _, model in ipairs({ "event", "fork" }) do
      local srv = server.start({ "--model", model, "--listen", "127.0.0.1:0,proxy",
        "--handler", h })
      for _, hdr in ipairs({ v2(0, 0x00, ""), v2(0, 0x11, TCP4), v2(1, 0x00, "tlv"),
        "PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n" }) do
        local c = tcp("127.0.0.1", srv.port)
        assert(c:send(hdr))
        assert.equal(own_addr(c), ask_peer(c))
        c:close()
      end
      local c = tcp("127.0.0.1", srv.port)
      assert(c:send(v2(1, 0x21, string.rep("\0", 15) .. "\1" .. string.rep("\0", 15) .. "\2"
        .. string.pack(">I2I2", 5555, 7))))
      assert.equal("[::1]:5555", ask_peer(c))
      c:close()
      srv:stop()
    end
  end)
end)

describe("a ,proxy listener", function()
  -- The header and what follows it in one segment, on a connection the
  -- server has accepted and found empty: one readiness for both, and the
  -- bytes after the header are not waited for.
  it("reads the bytes that came with the header at once", function()
    local h = dir .. "/peer.lua"
    util.spit(h, PEER)
    for _, model in ipairs({ "event", "fork" }) do
      for _, handler in ipairs({ false, true }) do
        local args = { "--model", model, "--listen", "127.0.0.1:0,proxy" }
        if handler then
          args[#args + 1] = "--handler"
          args[#args + 1] = h
        end
        local srv = server.start(args)
        for _, hdr in ipairs({ "PROXY TCP4 192.0.2.1 198.51.100.2 4242 443\r\n",
          v2(1, 0x11, TCP4) }) do
          local c = tcp("127.0.0.1", srv.port)
          c:settimeout(5)
          server.sleep(0.2)
          assert(c:send(hdr .. "one\ntwo\n"))
          local a1, e1 = c:receive("*l")
          local a2, e2 = c:receive("*l")
          assert.same({ "one", "two" }, { a1 or e1, a2 or e2 },
            model .. (handler and " with a handler" or " C echo"))
          c:close()
        end
        srv:stop()
      end
    end
  end)
end)

describe("several listeners in one server", function()
  for _, model in ipairs({ "event", "fork" }) do
    it("TCP, unix and ,proxy ones side by side (" .. model .. " model)", function()
      local h = dir .. "/peer.lua"
      util.spit(h, PEER)
      local upath, ppath = dir .. "/plain.sock", dir .. "/proxied.sock"
      local srv = server.start({ "--model", model, "--handler", h,
        "--listen", "127.0.0.1:0", "--listen", "unix:" .. upath,
        "--listen", "[::1]:0,proxy", "--listen", "unix:" .. ppath .. ",proxy",
        "--listen", "udp://127.0.0.1:0" })
      assert.equal(5, #srv.listeners)
      local c = tcp("127.0.0.1", port_of(srv, 1))
      assert.equal(own_addr(c), ask_peer(c))
      c:close()
      local u = assert(unix.stream())
      assert(u:connect(upath))
      assert.matches("^unix:pid=%d+,uid=%d+$", ask_peer(u))
      u:close()
      c = tcp("::1", port_of(srv, 3))
      assert(c:send("PROXY TCP4 203.0.113.7 192.0.2.1 61000 443\r\n"))
      assert.equal("203.0.113.7:61000", ask_peer(c))
      c:close()
      u = assert(unix.stream())
      assert(u:connect(ppath))
      assert(u:send(v2(1, 0x11, TCP4)))
      assert.equal("192.0.2.1:4242", ask_peer(u))
      u:close()
      local d = assert(socket.udp())
      local _, host, port = server.split(srv.listeners[5])
      assert(d:setpeername(host, port))
      d:settimeout(5)
      assert(d:send("dgram"))
      assert.equal("dgram", d:receive())
      d:close()
      assert.equal(0, srv:stop())
      assert.is_nil(io.open(upath))
      assert.is_nil(io.open(ppath))
    end)
  end
end)
