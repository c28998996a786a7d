-- echohost-bench, the load generator of `make bench`: it checks every echoed
-- byte (a corrupting server makes it exit 1), reports one sane JSON line
-- against refecho in each mode, bounds every run, and refuses targets that are
-- not loopback.
local socket = require "socket"
local util = require "helpers.util"
local read_file = require("helpers.handler_util").read_file   -- "" if none

local BENCH, REFECHO = util.tool("echohost-bench"), util.tool("refecho")

local function tmpname()
  return util.tmpname("/tmp/echohost-bench.XXXXXX")
end

local function alive(pid)
  return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
end

-- Starts cmd in the background; waits (bounded) for "listening on H:PORT" on
-- its output. Returns { pid, port, stop }.
local function start(cmd)
  local out = tmpname()
  local p = io.popen("exec " .. cmd .. " >" .. out .. " 2>&1 & echo $!")
  local pid = assert(tonumber(p:read("l")))
  p:close()
  local srv = { pid = pid }
  function srv.stop()
    if alive(pid) then os.execute("kill -TERM " .. pid) end
    local deadline = socket.gettime() + 3
    while alive(pid) and socket.gettime() < deadline do socket.sleep(0.01) end
    if alive(pid) then os.execute("kill -KILL " .. pid) end
    os.remove(out)
  end
  local deadline = socket.gettime() + 5
  repeat
    srv.port = tonumber(read_file(out):match("listening on [^%s]-:(%d+)"))
    if srv.port then return srv end
    socket.sleep(0.01)
  until socket.gettime() > deadline or not alive(pid)
  srv.stop()
  error("server did not start: " .. cmd)
end

-- Runs the load generator; returns exit code, the parsed JSON (or {}),
-- stderr and the wall time it took.
local function bench(args)
  local err = tmpname()
  local t0 = socket.gettime()
  local p = io.popen(BENCH .. " " .. args .. " 2>" .. err)
  local line = p:read("a")
  local _, _, code = p:close()
  local t = {}
  for k, v in line:gmatch('"([%w_]+)":("?[^,}"]*"?)') do
    if v:sub(1, 1) == '"' then t[k] = v:sub(2, -2) else t[k] = tonumber(v) end
  end
  local stderr = read_file(err)
  os.remove(err)
  return code, t, stderr, socket.gettime() - t0, line
end

-- An echo server that flips one bit of the 100th byte of each connection's
-- stream; exits after 10 s whatever happens.
local CORRUPT = [[
local socket = require "socket"
local s = assert(socket.bind("127.0.0.1", 0))
local _, port = s:getsockname()
io.stdout:write("listening on 127.0.0.1:", port, "\n")
io.stdout:flush()
local stop = socket.gettime() + 10
s:settimeout(0.05)
local conns, seen = {}, {}
while socket.gettime() < stop do
  local c = s:accept()
  if c then c:settimeout(0); conns[#conns + 1] = c; seen[c] = 0 end
  for _, k in ipairs(conns) do
    local d, e, part = k:receive(65536)
    d = d or part
    if d and #d > 0 then
      local n = seen[k]
      if n < 100 and n + #d >= 100 then
        local i = 100 - n
        d = d:sub(1, i - 1) .. string.char(d:byte(i) ~ 1) .. d:sub(i + 1)
      end
      seen[k] = n + #d
      k:send(d)
    end
  end
  socket.sleep(0.001)
end
]]

-- A UDP echo that flips a byte of every 7th datagram (mode "flip") or drops
-- every 5th (mode "drop"); exits after 10 s whatever happens.
local BAD_UDP = [[
local socket = require "socket"
local u = assert(socket.udp())
assert(u:setsockname("127.0.0.1", 0))
local _, port = u:getsockname()
io.stdout:write("listening on 127.0.0.1:", port, "\n")
io.stdout:flush()
local stop, n = socket.gettime() + 10, 0
u:settimeout(0.05)
while socket.gettime() < stop do
  local d, ip, p = u:receivefrom(65536)
  if d then
    n = n + 1
    if arg[1] == "flip" and n % 7 == 0 then
      d = d:sub(1, 9) .. string.char(d:byte(10) ~ 1) .. d:sub(11)
    end
    if not (arg[1] == "drop" and n % 5 == 0) then u:sendto(d, ip, p) end
  end
end
]]

describe("echohost-bench", function()
  local ref
  setup(function() ref = start(REFECHO) end)
  teardown(function() if ref then ref.stop() end end)

  local function target() return "127.0.0.1:" .. ref.port end

  for _, mode in ipairs({ "rr", "stream", "connrate" }) do
    it("reports sane JSON in " .. mode .. " mode against refecho", function()
      local code, r, stderr = bench(string.format("-m %s -c 4 -s 512 -d 0.4 -W 0.1 -p %d -l t %s",
        mode, ref.pid, target()))
      assert.equal(0, code, stderr)
      assert.equal(mode, r.mode)
      assert.equal("t", r.label)
      assert.equal(0, r.mismatches)
      assert.equal(0, r.errors)
      assert.is_true(r.msgs > 100, "msgs " .. tostring(r.msgs))
      assert.near(r.msgs / r.duration_s, r.msgs_per_s, r.msgs_per_s * 0.01 + 1)
      assert.near(r.msgs_per_s * 512 / 1e6, r.mb_per_s, 0.01)
      assert.is_true(r.p50_us > 0)
      assert.is_true(r.p50_us <= r.p90_us and r.p90_us <= r.p99_us)
      assert.is_true(r.p99_us <= r.p999_us and r.p999_us <= r.max_us)
      assert.is_number(r.server_cpu_s)
      assert.is_true(r.server_cpu_s > 0, "the server did work")
    end)
  end

  it("reports sane JSON in udp mode against refecho's UDP echo", function()
    local uref = start(REFECHO .. " udp://127.0.0.1:0")
    finally(function() uref.stop() end)
    local code, r, stderr = bench("-m udp -c 4 -w 4 -s 100 -d 0.4 -W 0.1 -p " .. uref.pid
      .. " 127.0.0.1:" .. uref.port)
    assert.equal(0, code, stderr)
    assert.equal("udp", r.mode)
    assert.equal(4, r.window)
    assert.equal(0, r.mismatches)
    assert.equal(0, r.errors)
    assert.is_number(r.lost)
    assert.is_true(r.msgs > 100, "msgs " .. tostring(r.msgs))
    assert.near(r.msgs_per_s * 100 / 1e6, r.mb_per_s, 0.01)
    assert.is_true(r.server_cpu_s > 0, "the server did work")
  end)

  it("counts lost datagrams apart from corrupted ones in udp mode", function()
    local script = tmpname()
    util.spit(script, BAD_UDP)
    local bad
    finally(function()            -- busted keeps one finally() per test
      os.remove(script)
      if bad then bad.stop() end
    end)
    local lossy = start("lua5.4 " .. script .. " drop")
    local code, r, stderr = bench("-m udp -c 2 -s 64 -d 0.5 -W 0 127.0.0.1:" .. lossy.port)
    lossy.stop()
    assert.equal(0, code, stderr)
    assert.equal(0, r.mismatches)
    assert.is_true(r.lost >= 1 and r.msgs >= 1, "lost " .. tostring(r.lost))
    bad = start("lua5.4 " .. script .. " flip")
    code, r, stderr = bench("-m udp -c 2 -s 64 -d 0.5 -W 0 127.0.0.1:" .. bad.port)
    assert.equal(1, code, stderr)
    assert.is_true(r.mismatches >= 1)
    assert.matches("mismatch: datagram %d+ came back", stderr)
  end)

  it("measures the server's RSS over idle connections", function()
    local code, r, stderr = bench("-m idle -c 200 -p " .. ref.pid .. " " .. target())
    assert.equal(0, code, stderr)
    assert.equal(200, r.msgs)
    assert.is_true(r.rss_after_kb >= r.rss_before_kb and r.rss_before_kb > 0)
    assert.is_number(r.rss_per_conn_b)
  end)

  it("detects a corrupted echo and exits 1", function()
    local script = tmpname()
    util.spit(script, CORRUPT)
    local bad = start("lua5.4 " .. script)
    finally(function()
      bad.stop()
      os.remove(script)
    end)
    local code, r, stderr = bench("-m rr -c 2 -s 64 -d 0.5 -W 0 127.0.0.1:" .. bad.port)
    assert.equal(1, code, stderr)
    assert.is_true(r.mismatches >= 1)
    assert.matches("mismatch at stream offset 99: got 0x%x%x, want 0x%x%x", stderr)
  end)

  it("ends a run against a silent server within its time bound", function()
    local silent = socket.bind("127.0.0.1", 0)
    finally(function() silent:close() end)
    local _, port = silent:getsockname()
    local code, r, _, secs = bench("-m rr -c 2 -d 0.3 -W 0 127.0.0.1:" .. port)
    assert.equal(3, code)
    assert.equal(0, r.msgs)
    assert.is_true(secs < 3, "took " .. secs .. " s")
  end)

  it("times fork, _exit and waitpid without a target (-m fork)", function()
    local code, r, stderr = bench("-m fork -d 0.1")
    assert.equal(0, code, stderr)
    assert.equal("fork", r.mode)
    assert.is_true(r.forks >= 1 and r.us_per_fork > 0)
  end)

  it("refuses a target that is not a loopback address", function()
    for _, t in ipairs({ "192.0.2.1:7", "[2001:db8::1]:7" }) do
      local code, r, stderr = bench("-m rr -d 0.1 " .. t)
      assert.equal(2, code)
      assert.is_nil(r.mode)
      assert.matches("refusing non%-loopback target", stderr)
    end
  end)
end)
