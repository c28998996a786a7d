-- Upstream sockets and coroutines under load (README "Coroutines of a
-- connection and upstream sockets"): scripts/proxy.lua in front of the C
-- echo, under the event loop and --model fork. What a handler observes is
-- specified once in tests/contract_spec.lua; this is the traffic.
local server = require "helpers.server"
local socket = require "socket"
local util = require "helpers.handler_util"

local PROXY = "scripts/proxy.lua"

local function start_pair(model, extra)
  local echo = util.start({ "--workers", "1" })
  local args = { "--workers", "1", "--model", model, "--handler", PROXY,
                 "--set", "upstream=127.0.0.1:" .. echo.port }
  for _, a in ipairs(extra or {}) do
    args[#args + 1] = a
  end
  return util.start(args), echo
end

-- Sends n pattern bytes through c while reading what comes back: reads of
-- at most read_max bytes, each followed by a pause of `pause` seconds (a
-- slow reader), and calls sample() now and then. Returns whether every byte
-- came back in order, how many did, and how it ended.
local function stream(c, n, opts)
  opts = opts or {}
  local B = 65521                     -- a prime: no shift hides in a wrap
  local block = server.pattern(B)
  local block6 = block:rep(6)
  local read_max, pause = opts.read_max or 65536, opts.pause or 0
  local sent, got, ok, ended = 0, 0, true, nil
  local deadline = socket.gettime() + (opts.timeout or 60)
  local last_sample = 0
  c:settimeout(0)
  while got < n and socket.gettime() < deadline do
    local r, w = socket.select({ c }, sent < n and { c } or nil, 0.5)
    if r[c] then
      local d, e, partial = c:receive(read_max)
      d = d or partial
      if d and #d > 0 then
        local off = got % B
        if d ~= block6:sub(off + 1, off + #d) then
          ok = false
        end
        got = got + #d
        if pause > 0 then
          socket.sleep(pause)
        end
      end
      if e == "closed" then
        ended = "closed"
        break
      end
    end
    if w[c] and sent < n then
      local off = sent % B
      local len = math.min(B - off, n - sent)
      local last, e, lastp = c:send(block, off + 1, off + len)
      last = last or lastp
      if last and last > off then
        sent = sent + (last - off)
      elseif e and e ~= "timeout" then
        ended = e
        break
      end
      if sent == n and opts.half_close then
        c:shutdown("send")
      end
    end
    if opts.sample and socket.gettime() - last_sample > 0.05 then
      opts.sample()
      last_sample = socket.gettime()
    end
  end
  return ok, got, ended
end

for _, model in ipairs({ "event", "fork" }) do
  describe("scripts/proxy.lua under --model " .. model, function()
    after_each(util.cleanup)

    -- conn:pipe (C under the event loop), and the same copy in a Lua loop
    for _, copy in ipairs({ "pipe", "lua" }) do
      it("carries 16 MiB both ways at once, byte for byte, then the half-close (copy="
        .. copy .. ")", function()
        local proxy = start_pair(model, { "--set", "copy=" .. copy })
        local c = (util.connect(proxy.port))
        local ok, got, ended = stream(c, 16 * 1024 * 1024, { half_close = true })
        assert.same({ true, 16 * 1024 * 1024 }, { ok, got })
        -- the client's FIN went upstream; the echo's FIN came back through
        if ended ~= "closed" then        -- LuaSocket: nil, "closed", "" at EOF
          c:settimeout(5)
          local data, err, partial = c:receive("*a")
          assert.same({ "", "closed" }, { data or partial, err or "closed" })
        end
      end)
    end

    it("closes a client whose upstream refuses, and logs why at warn", function()
      local proxy = util.start({ "--workers", "1", "--model", model, "--handler", PROXY,
                                 "--set", "upstream=127.0.0.1:1" })
      local c = (util.connect(proxy.port))
      c:settimeout(5)
      local data, _, partial = c:receive("*a")  -- closed with nothing sent
      assert.equal("", data or partial)
      assert.truthy(proxy.server:wait_log("warn: handler scripts/proxy%.lua:%d+: conn %d+: "
        .. "127%.0%.0%.1:%d+: upstream 127%.0%.0%.1:1: connect 127%.0%.0%.1:1: "
        .. "Connection refused", 5), proxy.log_text())
    end)

    -- One writer at a time: while a coroutine waits to write an object, a
    -- send to it raises (its bytes would land in the middle of that
    -- coroutine's), and so does a pipe into it, in C under the event loop
    -- and as M.pipe under the fork model. The bytes the pipe read are
    -- dropped with the raise, as a send that raises drops its data.
    local function busy_handler(dir, from, to, port)
      local file = dir .. "/busy.lua"
      util.write_file(file, ([[
local socket = require "echohost.socket"
local log = require "echohost.log"
return { handle = function(conn)
  local up = assert(socket.connect("127.0.0.1", %d))
  local from, to = %s, %s
  -- waits: the client, or the listener behind up, reads nothing (under the
  -- event loop a conn's send is queued whole below the high-water mark, so
  -- the second waits; the others wait in the first)
  local big = string.rep("x", 8 * 1024 * 1024)
  conn:spawn(function() to:send(big); to:send(big) end)
  local ok, err = pcall(to.send, to, "y")
  log.warn("send: " .. tostring(ok) .. " " .. tostring(err))
  if from == up then assert(up:send("ping")) end
  ok, err = pcall(from.pipe, from, to)
  log.warn("pipe: " .. tostring(ok) .. " " .. tostring(err))
  if to == up then up:reset() end
end }
]]):format(port, from, to))
      return file
    end

    local function busy_logged(srv, obj)
      for _, op in ipairs({ "send", "pipe" }) do
        assert.truthy(srv.server:wait_log(op .. ": false [^\n]*conn:send: another "
          .. "coroutine is waiting to write this " .. obj, 10), srv.log_text())
      end
    end

    it("raises from a send or a pipe into a connection another coroutine waits to write",
      function()
      local echo = util.start({ "--workers", "1" })
      local dir = util.tmpdir()
      local srv = util.start({ "--workers", "1", "--model", model,
                               "--handler", busy_handler(dir, "up", "conn", echo.port) })
      local c = (util.connect(srv.port))
      busy_logged(srv, "connection")
      -- the waiting send completes once the client reads; nothing else came
      c:settimeout(10)
      local data, err, partial = c:receive("*a")
      data = data or partial
      assert.same({ 16 * 1024 * 1024, true, nil }, { #data, not data:find("[^x]"), err })
      util.rmdir(dir)
    end)

    it("raises from a send or a pipe into an upstream another coroutine waits to write",
      function()
      local silent = assert(socket.bind("127.0.0.1", 0))   -- never accepts
      local _, port = silent:getsockname()
      local dir = util.tmpdir()
      local srv = util.start({ "--workers", "1", "--model", model,
                               "--handler", busy_handler(dir, "conn", "up", port) })
      local c = (util.connect(srv.port))
      assert(c:send("client bytes"))
      busy_logged(srv, "upstream socket")
      c:close()
      silent:close()
      util.rmdir(dir)
    end)

    it("keeps the client's connection open for reading after the client's half-close", function()
      local proxy = start_pair(model)
      local c = (util.connect(proxy.port))
      c:settimeout(5)
      assert(c:send("last words"))
      c:shutdown("send")
      local data, err = c:receive("*a")
      assert.same({ "last words", nil }, { data, err })
    end)
  end)
end

describe("scripts/proxy.lua under the event loop", function()
  after_each(util.cleanup)

  it("holds a slow reader's 256 MiB within the high-water marks of both sides", function()
    local dir = util.tmpdir()
    local ctl = dir .. "/ctl.sock"
    local proxy = start_pair("event", { "--high-water", "256k", "--control", ctl })
    local worker = assert(proxy.server:wait_children(1, 5))[1]
    local function lua_mem()       -- the worker's handler state, in bytes
      local out = require("helpers.util").pipe(server.quote(server.BIN) .. " --repl --connect "
        .. server.quote(ctl), "=stats().workers[1].lua_mem\n")
      return (assert(tonumber(out), out))
    end
    local c = util.connect(proxy.port)
    -- prime: let the state warm up, then measure from there
    assert.same({ true, 1024 * 1024 }, { stream(c, 1024 * 1024) })
    local base, peak = server.rss_kb(worker), 0
    local base_lua, peak_lua = lua_mem(), 0
    local total = 256 * 1024 * 1024
    local ok, got = stream(c, total, {
      read_max = 256 * 1024, pause = 0.0005, timeout = 120,
      sample = function()
        peak = math.max(peak, server.rss_kb(worker) or 0)
        peak_lua = math.max(peak_lua, lua_mem())
      end,
    })
    assert.same({ true, total }, { ok, got })
    util.rmdir(dir)
    -- a proxy that buffered the stream would grow by up to 256 MiB: the
    -- handler state holds a few chunks at a time (under ASan freed memory
    -- waits in a quarantine, so there only the Lua state's count tells)
    assert.is_true(peak_lua - base_lua < 8 * 1024 * 1024,
      ("the Lua state grew from %d to %d bytes"):format(base_lua, peak_lua))
    if not os.getenv("ECHOHOST_ASAN") then
      assert.is_true(peak - base < 16 * 1024,
        ("the proxy's worker grew by %d KiB"):format(peak - base))
    end
  end)

  it("serves other connections while one waits on a slow upstream", function()
    local slow = util.start({ "--workers", "1", "--handler", "scripts/delay.lua",
                              "--set", "delay=2" })
    local echo = util.start({ "--workers", "1" })
    local dir = util.tmpdir()
    local file = dir .. "/two.lua"
    -- "slow" lines go to the slow upstream, the others to the echo
    util.write_file(file, ([[
local socket = require "echohost.socket"
return { handle = function(conn)
  local slow = assert(socket.connect("127.0.0.1", %d))
  local fast = assert(socket.connect("127.0.0.1", %d))
  while true do
    local line = conn:receive("*l")
    if not line then return end
    local up = line == "slow" and slow or fast
    up:send(line .. "\n")
    conn:send(up:receive("*l") .. "\n")
  end
end }
]]):format(slow.port, echo.port))
    local proxy = util.start({ "--workers", "1", "--handler", file })
    local a = (util.connect(proxy.port))
    local b = (util.connect(proxy.port))
    a:settimeout(5)
    b:settimeout(5)
    assert(b:send("warm\n"))
    assert.equal("warm", b:receive("*l"))
    local t0 = socket.gettime()
    assert(a:send("slow\n"))            -- a's coroutine now waits 2 s upstream
    local times = {}
    for i = 1, 200 do
      local t = socket.gettime()
      assert(b:send("ping " .. i .. "\n"))
      assert.equal("ping " .. i, b:receive("*l"))
      times[#times + 1] = socket.gettime() - t
    end
    local during = socket.gettime() - t0
    table.sort(times)
    local p99 = times[math.ceil(#times * 0.99)]
    assert.equal("slow", a:receive("*l"))
    -- the 200 round trips ran while a waited (the worker did not block);
    -- a blocked worker would make one of them take the 2 s
    assert.is_true(during < 2, ("the round trips took %.3f s"):format(during))
    assert.is_true(p99 < 0.1, ("p99 %.1f ms"):format(p99 * 1000))
    print(("\n    other connection's p99 while one waits upstream: %.2f ms"):format(p99 * 1000))
    util.rmdir(dir)
  end)

  it("resolves a name without blocking the worker", function()
    local echo = util.start({ "--workers", "1" })
    local dir = util.tmpdir()
    local file = dir .. "/byname.lua"
    util.write_file(file, ([[
local socket = require "echohost.socket"
return { handle = function(conn)
  local up, err = socket.connect("localhost", %d)
  if not up then conn:send("error " .. err .. "\n") return end
  up:send("via name\n")
  conn:send(up:receive("*l") .. "\n")
  local none, msg = socket.connect("nosuch.invalid", 7, 5)
  conn:send(tostring(none) .. " " .. msg:match("^resolve nosuch.invalid: ") .. "\n")
end }
]]):format(echo.port))
    local proxy = util.start({ "--workers", "1", "--handler", file })
    local c = (util.connect(proxy.port))
    c:settimeout(10)
    assert.equal("via name", c:receive("*l"))
    assert.equal("nil resolve nosuch.invalid: ", c:receive("*l"))
    util.rmdir(dir)
  end)
end)
