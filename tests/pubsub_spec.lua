-- echohost.pubsub and conn:subscribe across processes (README "Publish and
-- subscribe"): scripts/chat.lua across 2 workers and under --model fork,
-- a subscriber that reads too slowly losing the oldest messages, reader
-- slots of processes that ended taken again, subscriptions across a
-- handler swap, --pubsub-size. The contract of one process (what a handler
-- observes) is in tests/contract_spec.lua under the three interpreters.
local socket = require "socket"
local server = require "helpers.server"
local util = require "helpers.util"
local harness = require "echohost.harness"

local start, stop_all = server.start, server.stop_all

-- Reads lines from c until want returns true for the list so far, or
-- secs pass; the lines.
local function read_lines(c, want, secs)
  local lines, deadline = {}, socket.gettime() + (secs or 10)
  c:settimeout(0.2)
  while not want(lines) and socket.gettime() < deadline do
    local line, err = c:receive("*l")
    if line then
      lines[#lines + 1] = line
    elseif err ~= "timeout" then
      break
    end
  end
  return lines
end

-- Connects n clients to scripts/chat.lua, each joined (its own "join i"
-- came back, so it is subscribed); then each sends k lines and reads
-- until it has every client's; returns an error text or nil.
local function chat_round(srv, n, k)
  local cs = {}
  for i = 1, n do
    cs[i] = srv:connect(5)
    assert(cs[i]:send("join " .. i .. "\n"))
    local mine = "join " .. i
    local got = read_lines(cs[i], function(l) return l[#l] == mine end)
    if got[#got] ~= mine then
      return "client " .. i .. " did not see its join line"
    end
  end
  for i = 1, n do
    local lines = {}
    for j = 1, k do
      lines[j] = ("line %d.%d\n"):format(i, j)
    end
    assert(cs[i]:send(table.concat(lines)))
  end
  for i = 1, n do
    local seen, count = {}, 0
    read_lines(cs[i], function(l)
      local line = l[#l]
      local from, j = (line or ""):match("^line (%d+)%.(%d+)$")
      if from then
        from, j = tonumber(from), tonumber(j)
        if j ~= (seen[from] or 0) + 1 then
          error(("client %d got line %d.%d after %d.%d"):format(i, from, j, from, seen[from] or 0))
        end
        seen[from], count = j, count + 1
      end
      return count == n * k
    end)
    if count ~= n * k then
      return ("client %d got %d of %d lines"):format(i, count, n * k)
    end
  end
  for _, c in ipairs(cs) do
    c:close()
  end
  return nil
end

describe("scripts/chat.lua", function()
  after_each(stop_all)

  it("reaches every client on every worker: 20 clients x 10 lines on 2 workers", function()
    local srv = start({ "--workers", "2", "--handler", "scripts/chat.lua", "--access-log" })
    assert(srv:wait_children(2, 5))
    assert.is_nil(chat_round(srv, 20, 10))
    local served = {}
    assert(server.wait(function()   -- every connection's access line
      return select(2, srv:log():gsub("access: ", "")) >= 20
    end, 5), srv:log())
    for w in srv:log():gmatch("access: [^\n]* worker=(%d+)") do
      served[w] = true
    end
    assert.truthy(served["0"] and served["1"], srv:log())
    assert.is_nil(srv:log():match("error"), srv:log())
  end)

  it("reaches every client under --model fork (one process per client)", function()
    local srv = start({ "--model", "fork", "--handler", "scripts/chat.lua" })
    assert.is_nil(chat_round(srv, 8, 10))
  end)

  it("keeps its subscribers across a handler swap: old and new connections talk", function()
    local dir = util.tmpdir()
    local path = dir .. "/chat.lua"
    util.spit(path, util.slurp("scripts/chat.lua"))
    local srv = start({ "--workers", "1", "--handler", path })
    local a = srv:connect(5)
    assert(a:send("join a\n"))
    assert.same({ "join a" }, read_lines(a, function(l) return #l == 1 end))
    util.spit(path, util.slurp("scripts/chat.lua") .. "\n-- v2\n")
    assert(srv:signal("HUP"))
    assert(srv:wait_log("version 2 loaded", 5))
    local b = srv:connect(5)
    assert(b:send("join b\n"))
    assert.same({ "join b" }, read_lines(b, function(l) return #l == 1 end))
    assert.same({ "join b" }, read_lines(a, function(l) return #l == 1 end))
    assert(a:send("from v1\n"))
    assert.same({ "from v1" }, read_lines(b, function(l) return #l == 1 end))
    assert(b:send("from v2\n"))
    assert.same({ "from v1", "from v2" }, read_lines(a, function(l) return #l == 2 end))
    a:close()
    b:close()
  end)

  it("holds a bounded queue for a client that does not read: 20 MB of lines cost it no "
    .. "memory, and it gets the newest when it reads", function()
    local dir = util.tmpdir()
    local ctl = dir .. "/ctl.sock"
    local srv = start({ "--workers", "1", "--handler", "scripts/chat.lua", "--high-water", "16k",
      "--control", ctl })
    local worker = assert(srv:wait_children(1, 5))[1]
    local function lua_mem()       -- the worker's handler state, in bytes
      local out = util.pipe(server.quote(server.BIN) .. " --repl --connect "
        .. server.quote(ctl), "=stats().workers[1].lua_mem\n")
      return assert(tonumber(out), out)
    end
    local slow, fast = srv:connect(5), srv:connect(5)
    for name, c in pairs({ slow = slow, fast = fast }) do
      assert(c:send("join " .. name .. "\n"))
      read_lines(c, function(l) return l[#l] == "join " .. name end)
    end
    local base, base_lua = server.rss_kb(worker), lua_mem()
    local pad = ("x"):rep(490)
    for batch = 1, 400 do         -- 40,000 lines of 500 bytes, the echoes read
      local lines = {}
      for i = 1, 100 do
        lines[i] = ("%05d %s\n"):format((batch - 1) * 100 + i, pad)
      end
      assert(fast:send(table.concat(lines)))
      local last = ("%05d %s"):format(batch * 100, pad)
      local got = read_lines(fast, function(l) return l[#l] == last end)
      assert.equal(last, got[#got])
    end
    -- an unbounded queue would hold the 20 MB in the handler's state
    -- (under ASan freed memory waits in a quarantine: only the state's
    -- own count tells there)
    local grown, grown_lua = server.rss_kb(worker) - base, lua_mem() - base_lua
    assert.is_true(grown_lua < 4 * 1024 * 1024, "the Lua state grew by " .. grown_lua .. " bytes")
    if not os.getenv("ECHOHOST_ASAN") then
      assert.is_true(grown < 8 * 1024, "the worker grew by " .. grown .. " KiB")
    end
    local got = read_lines(slow, function(l) return (l[#l] or ""):match("^40000 ") end, 15)
    assert.truthy((got[#got] or ""):match("^40000 "), "the newest line is kept")
    assert.is_true(#got < 10000, #got .. " lines reached the slow client")
    slow:close()
    fast:close()
    os.execute("rm -rf " .. server.quote(dir))
  end)

  it("runs under the harness: the lines of one open reach the others sharing its bus", function()
    local bus = harness.bus()
    local a = harness.open("scripts/chat.lua", { bus = bus })
    local b = harness.open("scripts/chat.lua", { bus = bus, peer = "127.0.0.1:40001" })
    local c = harness.open("scripts/chat.lua", { peer = "127.0.0.1:40002" })  -- its own bus
    assert.equal("hi\n", a:input("hi\n"))
    assert.equal("hi\n", b:sent())
    assert.equal("yo\nhi\n", b:input("yo\nh") .. b:input("i\n"))
    assert.equal("hi\nyo\nhi\n", a:sent())
    assert.equal("", c:sent())
    assert.equal("eof", b:finish())
    assert.equal("more\n", a:input("more\n"))
    assert.equal("hi\nyo\nhi\n", b:sent())
  end)
end)

-- A handler that subscribes, blocks its process, and publishes in bulk.
local LAGGER = [[
local pubsub = require "echohost.pubsub"
return function(conn, data)
  local cmd, arg = data:match("^(%a+) ?(%S*)")
  if cmd == "sub" then
    conn:subscribe("c", function(c, m) c:send(m:sub(1, 4) .. "\n") end)
    return "ok\n"
  elseif cmd == "block" then
    local t0 = os.clock()
    while os.clock() - t0 < tonumber(arg) do end
    return "unblocked\n"
  elseif cmd == "pid" then
    return require("echohost.proc").getpid() .. "\n"
  elseif cmd == "pub" then
    for i = 1, tonumber(arg) do
      pubsub.publish("c", ("m%03d"):format(i) .. ("."):rep(96))
    end
    return "done\n"
  end
end
]]

-- s subscribes and blocks its process for 1 s while p publishes 300
-- messages; what s then gets ("unblocked", then the messages).
local function lag(s, p)
  assert(s:send("sub\n"))
  assert.same({ "ok" }, read_lines(s, function(l) return #l == 1 end))
  assert(s:send("block 1.0\n"))
  server.sleep(0.2)
  assert(p:send("pub 300\n"))
  assert.same({ "done" }, read_lines(p, function(l) return #l == 1 end))
  return read_lines(s, function(l) return l[#l] == "m300" end)
end

describe("echohost.pubsub across processes", function()
  after_each(stop_all)

  it("drops the oldest messages for a process that reads too slowly, keeps the newest, "
    .. "and logs it", function()
    local path = util.write_tmp(LAGGER, ".lua")
    local srv = start({ "--model", "fork", "--handler", path, "--pubsub-size", "4k",
      "--lua-budget", "0" })
    local s, p = srv:connect(5), srv:connect(5)
    local got = lag(s, p)
    assert.equal("unblocked", got[1])
    assert.equal("m300", got[#got])
    assert.is_true(#got > 2 and #got < 100, #got .. " lines")
    local last = 0
    for i = 2, #got do            -- in publishing order, the oldest gone
      local n = tonumber(got[i]:match("^m(%d+)$"))
      assert.is_true(n > last, got[i])
      last = n
    end
    assert.is_true(tonumber(got[2]:match("%d+")) > 1)
    assert.truthy(srv:wait_log("pubsub: %d+ messages lost", 3), srv:log())
    s:close()
    p:close()
  end)

  it("counts what a worker lost in stats() (pubsub_lost): one worker blocked while another "
    .. "publishes", function()
    local path = util.write_tmp(LAGGER, ".lua")
    local dir = util.tmpdir()
    local ctl = dir .. "/ctl.sock"
    local srv = start({ "--workers", "2", "--handler", path, "--pubsub-size", "4k",
      "--lua-budget", "0", "--control", ctl })
    assert(srv:wait_children(2, 5))
    local by_pid, s, p = {}, nil, nil
    for _ = 1, 64 do              -- one connection on each worker
      local c = srv:connect(5)
      assert(c:send("pid\n"))
      local pid = c:receive("*l")
      if not by_pid[pid] then by_pid[pid] = c else c:close() end
      local n = 0
      for k in pairs(by_pid) do n = n + 1; if n == 1 then s = by_pid[k] else p = by_pid[k] end end
      if n == 2 then break end
    end
    assert(s and p, "no connection landed on the second worker")
    local got = lag(s, p)
    assert.equal("m300", got[#got])
    local out = util.pipe(server.quote(server.BIN) .. " --repl --connect " .. server.quote(ctl),
      "local n = 0; for _, w in ipairs(stats().workers) do n = n + w.pubsub_lost end; print(n)\n")
    local lost = assert(tonumber(out), out)
    assert.equal(300 - (#got - 1), lost)   -- every message it did not get
    s:close()
    p:close()
    os.execute("rm -rf " .. server.quote(dir))
  end)

  it("takes again the reader slots of processes that ended (1100 subscribers in turn)", function()
    local path = util.write_tmp(LAGGER, ".lua")
    local srv = start({ "--model", "fork", "--handler", path })
    for i = 1, 1100 do
      local c = srv:connect(5)
      assert(c:send("sub\n"))
      local line = c:receive("*l")
      if line ~= "ok" then
        error(("subscriber %d: %s\n%s"):format(i, tostring(line), srv:log()))
      end
      c:close()
    end
    local s, p = srv:connect(5), srv:connect(5)
    assert(s:send("sub\n"))
    assert.same({ "ok" }, read_lines(s, function(l) return #l == 1 end))
    assert(p:send("pub 3\n"))
    assert.same({ "m001", "m002", "m003" }, read_lines(s, function(l) return #l == 3 end))
    assert.is_nil(srv:log():match("error"), srv:log())
  end)

  it("refuses a --pubsub-size outside 4k..1g", function()
    for _, bad in ipairs({ "1k", "2g", "x" }) do
      local code, err = server.run({ "--pubsub-size", bad })
      assert.equal(2, code)
      assert.truthy(err:find("--pubsub-size '" .. bad .. "'", 1, true), err)
    end
  end)
end)
