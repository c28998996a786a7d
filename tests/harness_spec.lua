-- echohost.harness under the README contract: close reasons, the results of
-- recv and send in each situation, the steps and markers, errors and the
-- log, the budget and the memory cap. (The shipped scripts under the
-- harness and the servers: handler_spec.lua.)
local harness = require "echohost.harness"

-- The waiting rule's message (a pattern): "conn:recv would wait: " .. this
-- .. " for data".
local WAIT_RULE = "only a coroutine of the connection %(handle, conn:spawn%) can wait"

-- A direct-style handler that records each recv and send result in
-- conn.state.log as "recv nil closed 104" / "send 1".
local function recorder(sends)
  return { handle = function(conn)
    local log = {}
    conn.state.log = log
    while true do
      local r = table.pack(conn:recv())
      log[#log + 1] = ("recv %s %s %s"):format(r[1], r[2], r[3])
      if sends then
        local s = table.pack(conn:send("x"))
        log[#log + 1] = ("send %s %s %s"):format(s[1], s[2], s[3])
      end
      if not r[1] then
        return
      end
    end
  end }
end

-- A scratch directory for the describe block that calls it (made in setup,
-- removed in teardown): write(name, text) -> path, and dir() -> its path.
local function scratch()
  local util = require "helpers.util"
  local dir
  setup(function()
    dir = util.tmpdir("/tmp/echohost-harness.XXXXXX")
    assert(dir and dir:match("^/tmp/echohost%-harness%."))
  end)
  teardown(function()
    if dir and not os.getenv("KEEP_TMP") then
      os.execute("rm -rf '" .. dir .. "'")
    end
  end)
  local function write(name, text)
    local path = dir .. "/" .. name
    util.spit(path, text)
    return path
  end
  return write, function() return dir end
end

describe("harness close reasons", function()
  local function on_close_reason(handler, inputs)
    local got
    handler.on_close = function(_, why) got = got and got .. "," .. why or why end
    local r = harness.run(handler, inputs)
    assert.equal(got, r.reason)                 -- called once, with r.reason
    return got
  end

  it("eof: the client shut its side down", function()
    assert.equal("eof", on_close_reason({ on_data = function(_, d) return d end },
      { "a", harness.CLOSE }))
  end)

  it("closed: the handler closed before any EOF", function()
    assert.equal("closed", on_close_reason({ on_data = function(c) c:close() end }, { "a" }))
  end)

  it("error: a callback raised", function()
    assert.equal("error", on_close_reason({ on_data = function() error("no") end }, { "a" }))
  end)

  it("error: a reply that is not a string", function()
    assert.equal("error", on_close_reason({ on_data = function() return 1 end }, { "a" }))
  end)

  it("reset: the client reset the connection", function()
    assert.equal("reset", on_close_reason({ on_data = function() end }, { harness.RESET }))
  end)

  it("timeout: the idle timeout", function()
    assert.equal("timeout", on_close_reason({ on_data = function() end }, { harness.IDLE }))
  end)

  it("shutdown: the drain deadline", function()
    assert.equal("shutdown", on_close_reason({ on_data = function() end }, { harness.SHUTDOWN }))
  end)

  it("is computed without on_close: handle returning is closed, after EOF eof", function()
    assert.equal("closed", harness.run("scripts/echo_once.lua", { "a" }).reason)
    assert.equal("eof", harness.run("scripts/echo_co.lua", { "a", harness.CLOSE }).reason)
  end)

  it("ends a connection still open at finish as an EOF", function()
    local r = harness.run("scripts/echo.lua", { "a" })
    assert.same({ false, "eof", "a" }, { r.closed, r.reason, r.sent })
  end)
end)

describe("harness recv and send results", function()
  it("after EOF: recv nil, closed, 0 and send still works", function()
    local r = harness.run(recorder(true), { "a", harness.CLOSE })
    assert.same({ "recv a nil nil", "send 1 nil nil", "recv nil closed 0", "send 1 nil nil" },
      r.state.log)
    assert.equal("xx", r.sent)
  end)

  it("after a reset: nil, closed, 104 for both", function()
    local r = harness.run(recorder(true), { harness.RESET })
    assert.same({ "recv nil closed 104", "send nil closed 104" }, r.state.log)
  end)

  it("after the idle timeout or the drain deadline: nil, closed, 0 for both", function()
    for _, m in ipairs({ harness.IDLE, harness.SHUTDOWN }) do
      local r = harness.run(recorder(true), { m })
      assert.same({ "recv nil closed 0", "send nil closed 0" }, r.state.log)
    end
  end)

  it("after conn:close(): nil, closed, 0 for both, data buffered or not", function()
    local r = harness.run({ handle = function(conn)
      local first = conn:recv(1)
      conn:close()
      conn.state.got = { first, conn:recv(), select(2, conn:recv()), select(3, conn:recv()),
                         select(3, conn:send("late")) }
    end }, { "abc" })
    assert.same({ "a", nil, "closed", 0, 0 }, r.state.got)
    assert.same({ "closed", "" }, { r.reason, r.sent })
  end)

  it("a settimeout wait that passes: nil, timeout, 110", function()
    local r = harness.run({ handle = function(conn)
      conn:settimeout(1)
      conn.state.got = { conn:recv() }
    end }, { harness.TIMEOUT })
    assert.same({ nil, "timeout", 110 }, r.state.got)
  end)

  it("without settimeout, a timeout step leaves recv waiting", function()
    local h = harness.open(recorder(false))
    h:timeout()
    assert.same({}, h.conn.state.log)
    h:input("a")
    assert.same({ "recv a nil nil" }, h.conn.state.log)
  end)
end)

describe("harness callbacks", function()
  it("sends the reply of a callback that called conn:close(), then closes", function()
    local h = harness.open({ on_data = function(conn, d)
      conn:close()
      return d:upper()
    end })
    assert.equal("AB", h:input("ab"))
    assert.same({ true, "closed", "" }, { h:closed(), h:reason(), h:input("more") })
  end)

  it("runs on_close when the connection ends, not later", function()
    local seen
    local h = harness.open({ on_close = function(_, why) seen = why end })
    h:eof()
    assert.equal("eof", seen)
    assert.equal("eof", h:finish())
  end)

  it("closes on an error in on_open and still runs on_close with error", function()
    local seen
    local r = harness.run({ on_open = function() error("open failed") end,
                            on_data = function(_, d) return d end,
                            on_close = function(_, why) seen = why end }, { "a" })
    assert.same({ "error", "error", "", true }, { seen, r.reason, r.sent, r.closed })
    assert.matches("open failed", r.error)
  end)

  it("logs an error in on_close too", function()
    local r = harness.run({ on_data = function() error("first") end,
                            on_close = function() error("second") end }, { "a" })
    assert.equal(2, #r.log)
    assert.matches("first", r.log[1])
    assert.matches("second", r.log[2])
    assert.equal(r.log[1], r.error)
  end)

  it("logs each error with its traceback", function()
    local r = harness.run(function() error("boom") end, { "a" })
    assert.equal(1, #r.log)
    assert.matches("boom\nstack traceback:", r.log[1])
  end)
end)

describe("harness limits", function()
  it("stops a loop in a handle coroutine with the budget", function()
    local r = harness.run({ handle = function(conn)
      conn:recv()
      while true do end
    end }, { "a" }, { budget = 10000 })
    assert.equal("error", r.reason)
    assert.matches("instruction budget exceeded", r.error)
  end)

  it("gives each callback its own budget", function()
    local n = 0
    local r = harness.run(function()
      for _ = 1, 2000 do n = n + 1 end
      return "ok"
    end, { "a", "b", "c" }, { budget = 20000 })
    assert.same({ "okokok", 6000 }, { r.sent, n })
  end)

  it("raises not enough memory past opts.mem, without a traceback", function()
    local r = harness.run(function()
      local t = {}
      while true do t[#t + 1] = string.rep("x", 4096) .. #t end
    end, { "a" }, { mem = 4 * 1024 * 1024 })
    assert.same({ "error", "not enough memory" }, { r.reason, r.error })
  end)

  it("has no limit with budget = 0", function()
    local r = harness.run(function()
      for _ = 1, 3000000 do end
      return "done"
    end, { "a" }, { budget = 0 })
    assert.equal("done", r.sent)
  end)
end)

describe("harness.open", function()
  it("raises the loader's message unchanged", function()
    local ok, err = pcall(harness.open, { handle = print, on_data = print })
    assert.same({ false, "handler: returned a table with both handle and on_data: "
      .. "handle(conn) serves the whole connection, so the callbacks would never run" },
      { ok, err })
  end)
end)

-- The new conn verbs (framed receive, shutdown, reset, sleep) ---------------

-- Every way to cut s into chunks, in order ("abc": {"abc"}, {"a", "bc"}, ...).
local function splits(s)
  local all = {}
  for mask = 0, (1 << (#s - 1)) - 1 do
    local parts, from = {}, 1
    for i = 1, #s - 1 do
      if mask & (1 << (i - 1)) ~= 0 then
        parts[#parts + 1] = s:sub(from, i)
        from = i + 1
      end
    end
    parts[#parts + 1] = s:sub(from)
    all[#all + 1] = parts
  end
  return all
end

-- A direct-style handler that reads frames with read(conn) until one fails
-- and keeps them in conn.state.got, then the failure.
local function framer(read)
  return { handle = function(conn)
    local got = {}
    conn.state.got = got
    while true do
      local r = table.pack(read(conn))
      if not r[1] then
        got[#got + 1] = { table.unpack(r, 1, r.n) }
        return
      end
      got[#got + 1] = r[1]
    end
  end }
end

local function run_split(handler, parts, opts)
  local inputs = {}
  for i, p in ipairs(parts) do inputs[i] = p end
  inputs[#inputs + 1] = harness.CLOSE
  return harness.run(handler, inputs, opts)
end

describe("harness framed receive", function()
  it("receive('*l') gives the same lines for every split of the input", function()
    local cuts = splits("ab\r\ncd\n")
    assert.equal(64, #cuts)
    for _, parts in ipairs(cuts) do
      local r = run_split(framer(function(c) return c:receive("*l") end), parts)
      assert.same({ "ab", "cd", { nil, "closed", 0, "" } }, r.state.got,
        table.concat(parts, "|"))
    end
  end)

  it("receive('l'), receive() and a lone CR: the CR stays unless right before the LF", function()
    local r = run_split(framer(function(c) return c:receive() end), { "a\rb\n\r\n" })
    assert.same({ "a\rb", "", { nil, "closed", 0, "" } }, r.state.got)
    r = run_split(framer(function(c) return c:receive("l") end), { "x\n", "y" })
    assert.same({ "x", { nil, "closed", 0, "y" } }, r.state.got)
  end)

  it("receive(n) and receiveuntil frame every split alike; a partial frame at EOF", function()
    for _, parts in ipairs(splits("abcde")) do
      local r = run_split(framer(function(c) return c:receive(2) end), parts)
      assert.same({ "ab", "cd", { nil, "closed", 0, "e" } }, r.state.got)
    end
    for _, parts in ipairs(splits("a--b---c")) do
      local r = run_split(framer(function(c) return c:receiveuntil("--") end), parts)
      assert.same({ "a", "b", { nil, "closed", 0, "-c" } }, r.state.got,
        table.concat(parts, "|"))
    end
  end)

  it("receive('*a') reads to EOF, '' when nothing is buffered", function()
    local r = harness.run({ handle = function(conn)
      conn.state.got = { conn:receive("*a"), conn:receive("a"), conn:recv() }
    end }, { "ab", "", "c", harness.CLOSE })
    assert.same({ { "abc", "", nil, "closed", 0 }, "eof" }, { r.state.got, r.reason })
  end)

  it("a frame over opts.high_water: nil, 'too long', 0, and recv takes the bytes", function()
    local r = harness.run({ handle = function(conn)
      conn.state.got = { { conn:receive("*l") }, conn:recv(), conn:recv(), { conn:receive(20) } }
    end }, { "abcdefghij" }, { high_water = 8 })
    assert.same({ { nil, "too long", 0 }, "abcdefgh", "ij" }, { table.unpack(r.state.got, 1, 3) })
    r = harness.run({ handle = function(conn)
      conn.state.got = { conn:receive(9) }
    end }, { "abcdefghij" }, { high_water = 8 })
    assert.same({ nil, "too long", 0 }, r.state.got)
  end)

  it("recv takes the bytes read past a frame first", function()
    local r = harness.run({ handle = function(conn)
      conn.state.got = { conn:receive(2), conn:recv(3), conn:recv(), conn:recv() }
    end }, { "abcdef", "gh" })
    assert.same({ "ab", "cde", "f", "gh" }, r.state.got)
  end)

  it("a settimeout wait: nil, 'timeout', 110, and the buffer stays", function()
    local h = harness.open({ handle = function(conn)
      conn:settimeout(1)
      conn.state.got = { { conn:receive("*l") } }
      conn.state.got[2] = conn:receive("*l")
    end })
    h:input("ab")
    h:timeout()
    h:input("c\n")
    assert.same({ { nil, "timeout", 110 }, "abc" }, h.conn.state.got)
  end)

  it("a reset: nil, 'closed', 104, partial", function()
    local r = harness.run(framer(function(c) return c:receive("*l") end),
      { "x\ny", harness.RESET })
    assert.same({ "x", { nil, "closed", 104, "y" } }, r.state.got)
  end)

  it("after conn:close(): nil, 'closed', 0, but a frame already buffered is returned", function()
    local r = harness.run({ handle = function(conn)
      local first = conn:receive(1)
      conn:close()
      conn.state.got = { first, conn:receive(1), { conn:receive(5) }, { conn:receiveuntil("z") } }
    end }, { "abc" })
    assert.same({ "a", "b", { nil, "closed", 0 }, { nil, "closed", 0 } }, r.state.got)
  end)

  it("raises in a callback when the frame is not buffered", function()
    for what, call in pairs({
      receive = function(c) return c:receive("*l") end,
      receiveuntil = function(c) return c:receiveuntil("\n") end,
    }) do
      local r = harness.run({ on_data = function(c) return call(c) end }, { "a\n" })
      assert.equal("error", r.reason)
      assert.matches("conn:" .. what .. " would wait: " .. WAIT_RULE .. " for data", r.error)
    end
  end)

  it("raises on misuse", function()
    local h = harness.open({ on_data = function() end })
    local c = h.conn
    local pattern = "bad argument #1 to 'receive' (expected \"*l\", \"*a\" or a count >= 1)"
    for _, bad in ipairs({ "x", "*x", 0, -1, 1.5, {} }) do
      assert.has_error(function() c:receive(bad) end, pattern)
    end
    for _, bad in ipairs({ "", string.rep("x", 257), 5 }) do
      assert.has_error(function() c:receiveuntil(bad) end,
        "bad argument #1 to 'receiveuntil' (expected a delimiter of 1..256 bytes)")
    end
    assert.has_error(function() c:shutdown("both") end,
      "bad argument #1 to 'shutdown' (invalid option 'both')")
    assert.has_error(function() c:sleep(-1) end,
      "bad argument #1 to 'sleep' (expected seconds (>= 0))")
    assert.has_error(function() c:sleep("1") end,
      "bad argument #1 to 'sleep' (number expected, got string)")
  end)
end)

describe("harness shutdown, reset and sleep", function()
  it("shutdown('send'): the client reads EOF, recv still works, send is closed", function()
    local h = harness.open({ handle = function(conn)
      conn:send("bye")
      local got = { conn:shutdown("send"), conn:shutdown(), { conn:send("x") } }
      conn.state.got = got
      got[4] = conn:recv()
      got[5] = { conn:recv() }
    end })
    assert.same({ "bye", "closed", false }, { h:sent(), h:ending(), h:closed() })
    assert.equal("", h:input("more"))
    h:eof()
    assert.same({ true, true, { nil, "closed", 0 }, "more", { nil, "closed", 0 } },
      h.conn.state.got)
    assert.same({ "eof", "bye" }, { h:reason(), h:sent() })
  end)

  it("shutdown after close does nothing; a callback's reply after shutdown is not sent", function()
    local r = harness.run({ on_data = function(conn, d)
      conn:shutdown()
      return d
    end }, { "a", "b" })
    assert.same({ "", false }, { r.sent, r.closed })
    local h = harness.open({ on_data = function(conn)
      conn:close()
      conn.state.sd = conn:shutdown()
    end })
    h:input("x")
    assert.same({ true, "closed", "closed" }, { h.conn.state.sd, h:reason(), h:ending() })
  end)

  it("reset(): the client sees a reset, reason closed, the reply is dropped", function()
    local h = harness.open({ on_data = function(conn)
      conn.state.got = { conn:reset(), conn:reset(), { conn:recv() }, { conn:send("x") } }
      return "dropped"
    end, on_close = function(conn, why) conn.state.why = why end })
    assert.equal("", h:input("a"))
    assert.same({ true, true, { nil, "closed", 0 }, { nil, "closed", 0 } }, h.conn.state.got)
    assert.same({ "reset", "closed", "closed" }, { h:ending(), h:reason(), h.conn.state.why })
    assert.equal("echohost.conn " .. h.conn.id .. " (closed)", tostring(h.conn))
  end)

  it("reset() in a handle after EOF is still reason closed", function()
    local r = harness.run({ handle = function(conn)
      conn:recv()
      conn:reset()
    end }, { harness.CLOSE })
    assert.equal("closed", r.reason)
  end)

  it("sleep advances the virtual clock and returns true at once", function()
    local h = harness.open({ handle = function(conn)
      conn.state.got = { conn:sleep(1.5), conn:sleep(0) }
      conn:send("late")
      conn:close()
    end })
    assert.same({ { true, true }, 1.5, "late", "closed" },
      { h.conn.state.got, h:clock(), h:sent(), h:reason() })
  end)

  it("a sleep past opts.shutdown_at or opts.idle_timeout ends the connection", function()
    local function sleeper(secs)
      return { handle = function(conn)
        conn.state.got = { conn:sleep(secs) }
        conn.state.sent = { conn:send("x") }
      end }
    end
    local h = harness.open(sleeper(5), { shutdown_at = 1 })
    assert.same({ { nil, "closed", 0 }, { nil, "closed", 0 }, 1, "shutdown", "" },
      { h.conn.state.got, h.conn.state.sent, h:clock(), h:reason(), h:sent() })
    h = harness.open(sleeper(5), { idle_timeout = 2 })
    assert.same({ { nil, "closed", 0 }, 2, "timeout" }, { h.conn.state.got, h:clock(), h:reason() })
    h = harness.open(sleeper(0.5), { idle_timeout = 2, shutdown_at = 1 })
    assert.same({ { true }, 0.5 }, { h.conn.state.got, h:clock() })
  end)

  it("sleep in a callback raises; after the end it returns nil, 'closed', 0", function()
    local r = harness.run({ on_data = function(conn) conn:sleep(1) end }, { "a" })
    assert.equal("error", r.reason)
    assert.matches("conn:sleep would wait: " .. WAIT_RULE, r.error)
    local h = harness.open({ on_data = function(conn)
      conn:close()
      conn.state.got = { conn:sleep(1) }
    end })
    h:input("a")
    assert.same({ nil, "closed", 0 }, h.conn.state.got)
  end)
end)

-- Handler settings and logging (echohost.settings, echohost.log) -----------

describe("harness settings and logs", function()
  local write, dir = scratch()

  it("gives the handler opts.settings, nil for a missing key, {} by default", function()
    local p = write("greet.lua", "local s = require 'echohost.settings'\n"
      .. "return function() return tostring(s.greeting) .. ' ' .. tostring(s.nope) end\n")
    assert.equal("hola nil", harness.run(p, { "x" }, { settings = { greeting = "hola" } }).sent)
    assert.equal("nil nil", harness.run(p, { "x" }).sent)
  end)

  it("gives each open a fresh copy: a change is seen neither by the caller nor by the next open",
    function()
      local p = write("changes.lua", "local s = require 'echohost.settings'\n"
        .. "return function(_, data)\n"
        .. "  local was = tostring(s.greeting)\n"
        .. "  s.greeting = data\n"
        .. "  return was\n"
        .. "end\n")
      local settings = { greeting = "hola" }
      local h1 = harness.open(p, { settings = settings })
      local h2 = harness.open(p, { settings = settings })
      assert.equal("hola", h1:input("first"))
      assert.equal("first", h1:input("second"))   -- its own copy changed
      assert.equal("hola", h2:input("x"))          -- the other open's did not
      assert.equal("hola", harness.run(p, { "y" }, { settings = settings }).sent)
      assert.same({ greeting = "hola" }, settings)
    end)

  it("raises on settings that are not a table of strings", function()
    local p = write("plain.lua", "return function() end\n")
    assert.has_error(function() harness.open(p, { settings = "greeting=hola" }) end,
      "bad option 'settings' to 'open' (table expected, got string)")
    assert.has_error(function() harness.open(p, { settings = { port = 8080 } }) end,
      "bad option 'settings' to 'open' (strings expected, got string port = number)")
  end)

  it("appends each echohost.log line to h.logs as '<level>: handler <file>:<line>: <msg>'",
    function()
      local p = write("logs.lua", "local log = require 'echohost.log'\n"
        .. "log.info('loaded')\n"
        .. "return function(_, data)\n"
        .. "  log.warn('saw %d bytes', #data)\n"
        .. "  log.error('%s', 'bad'); log.debug('50%')\n"
        .. "  return data\n"
        .. "end\n")
      local h = harness.open(p)
      assert.equal("abc", h:input("abc"))
      -- at load time no connection; in a call, the connection's id
      local id = h.conn.id
      assert.same({ "info: handler " .. p .. ":2: loaded",
                    "warn: handler " .. p .. ":4: conn " .. id .. ": saw 3 bytes",
                    "error: handler " .. p .. ":5: conn " .. id .. ": bad",
                    "debug: handler " .. p .. ":5: conn " .. id .. ": 50%" }, h.logs)
      assert.same({}, h.log)                       -- not errors of the connection
      assert.equal("open", h:ending())
      local r = harness.run(p, { "hi", harness.CLOSE })
      local at = r.logs[2] and r.logs[2]:match(": conn (%d+): ")
      assert.is_truthy(at, r.logs[2])
      assert.same({ "info: handler " .. p .. ":2: loaded",
                    "warn: handler " .. p .. ":4: conn " .. at .. ": saw 2 bytes",
                    "error: handler " .. p .. ":5: conn " .. at .. ": bad",
                    "debug: handler " .. p .. ":5: conn " .. at .. ": 50%" }, r.logs)
      assert.same({ {}, "eof" }, { r.log, r.reason })
    end)

  it("logs from a direct-style handler and from a module next to the handler", function()
    write("helper.lua", "local log = require 'echohost.log'\n"
      .. "return { note = function(s) log.info('note %s', s) end }\n")
    local p = write("direct.lua", "local helper = require 'helper'\n"
      .. "return { handle = function(conn)\n"
      .. "  helper.note(conn:recv())\n"
      .. "end }\n")
    local r = harness.run(p, { "x" })
    assert.equal(1, #r.logs)
    local at = dir():gsub("%p", "%%%0") .. "/helper.lua:2: "
    assert.matches("^info: handler " .. at .. "conn %d+: note x$", r.logs[1])
  end)

  it("raises on misuse: an error of the handler, logged in h.log, not h.logs", function()
    local p = write("misuse.lua", "local log = require 'echohost.log'\n"
      .. "return function(_, data)\n"
      .. "  log.info(data.nope)\n"
      .. "end\n")
    local r = harness.run(p, { "x" })
    assert.equal("error", r.reason)
    assert.equal(p .. ":3: bad argument #1 to 'info' (string expected, got nil)",
      r.error:match("^[^\n]*"))
    assert.same({}, r.logs)
    assert.equal(1, #r.log)
  end)
end)

-- Timers on the virtual clock (conn:after, conn:every) ----------------------

describe("harness timers", function()
  it("after fires once, at its virtual time", function()
    local h
    h = harness.open({ on_open = function(conn)
      conn.state.t = conn:after(0.5, function(c) c:send("at " .. tostring(h:clock())) end)
    end })
    assert.equal("echohost.timer (armed)", tostring(h.conn.state.t))
    assert.equal("", h:advance(0.4))
    assert.equal("at 0.5", h:advance(0.2))
    assert.equal("", h:advance(10))
    assert.same({ "echohost.timer (cancelled)", 10.6, "open" },
      { tostring(h.conn.state.t), h:clock(), h:ending() })
  end)

  it("every fires every period until cancelled; cancel is idempotent", function()
    local h = harness.open({ on_open = function(conn)
      local n = 0
      conn.state.t = conn:every(0.1, function(c)
        n = n + 1
        c:send("tick\n")
        if n == 3 then
          conn.state.got = { conn.state.t:cancel(), conn.state.t:cancel() }
        end
      end)
    end })
    assert.equal("tick\n", h:advance(0.1))
    assert.equal("tick\ntick\n", h:advance(0.2))   -- 0.3 exactly: no float drift
    assert.equal("", h:advance(1))
    assert.same({ { true, true }, "echohost.timer (cancelled)" },
      { h.conn.state.got, tostring(h.conn.state.t) })
  end)

  it("fires timers due at the same moment in arming order, others in due order", function()
    local h = harness.open({ on_open = function(conn)
      conn:after(0.3, function(c) c:send("a") end)
      conn:every(0.1, function(c) c:send("e") end)
      conn:after(0.3, function(c) c:send("b") end)
      conn:after(0.05, function(c) c:send("0") end)
      conn:after(0, function(c) c:send("z") end)
    end })
    assert.equal("z0eeaeb", h:advance(0.3))
  end)

  it("harness.advance(secs) is a marker for run", function()
    local r = harness.run({ on_open = function(conn)
      conn:after(0.2, function(c) c:send("late"); c:close() end)
    end }, { harness.advance(0.1), "x", harness.advance(0.1), "dropped" })
    assert.same({ "late", true, "closed" }, { r.sent, r.closed, r.reason })
    assert.equal("harness.advance(0.5)", tostring(harness.advance(0.5)))
  end)

  it("cancels every timer when the connection ends and at conn:close() or conn:reset()",
    function()
      local function armed()
        return { on_open = function(conn)
          conn.state.ts = { conn:after(1, function(c) c:send("x") end),
                            conn:every(1, function(c) c:send("y") end) }
        end, on_data = function(conn, data)
          if data == "close" then conn:close() elseif data == "reset" then conn:reset() end
        end }
      end
      local steps = { close = "close", reset = "reset", eof = "eof", rst = "reset",
                      idle = "idle", shutdown = "shutdown" }
      for step, method in pairs(steps) do
        local h = harness.open(armed())
        if step == "close" or step == "reset" then h:input(step) else h[method](h) end
        assert.equal("", h:advance(5))
        assert.same({ "echohost.timer (cancelled)", "echohost.timer (cancelled)" },
          { tostring(h.conn.state.ts[1]), tostring(h.conn.state.ts[2]) })
      end
      local h = harness.open(armed())
      h:finish()
      assert.same({ "", "echohost.timer (cancelled)" },
        { h:advance(5), tostring(h.conn.state.ts[1]) })
    end)

  it("after/every on a closed or ended connection give nil, 'closed', 0", function()
    local h = harness.open({ on_data = function(conn)
      conn:close()
      conn.state.got = { { conn:after(1, print) }, { conn:every(1, print) } }
    end })
    h:input("x")
    assert.same({ { nil, "closed", 0 }, { nil, "closed", 0 } }, h.conn.state.got)
    h = harness.open(function() end)
    h:eof()
    assert.same({ nil, "closed", 0 }, { h.conn:after(1, print) })
  end)

  it("raises at the 65th armed timer; fired and cancelled ones do not count", function()
    local h = harness.open({ on_open = function(conn)
      for _ = 1, 64 do conn:after(1, function() end) end
    end })
    assert.equal("open", h:ending())
    local ok, err = pcall(h.conn.after, h.conn, 1, print)
    assert.is_false(ok)
    assert.matches("too many timers on this connection %(at most 64%)", err)
    h:advance(1)
    local ts = {}
    for i = 1, 64 do ts[i] = h.conn:every(1, function() end) end
    ts[1]:cancel()
    assert.equal("echohost.timer (armed)", tostring(h.conn:after(0, print)))
    local r = harness.run({ on_open = function(conn)
      for _ = 1, 65 do conn:every(1, function() end) end
    end }, {})
    assert.equal("error", r.reason)
    assert.matches("too many timers on this connection %(at most 64%)", r.error)
  end)

  it("raises on misuse", function()
    local c = harness.open(function() end).conn
    local function msg(f, ...)
      local ok, err = pcall(f, c, ...)
      assert.is_false(ok)
      return (err:gsub("^[^:]*:%d+: ", ""))
    end
    local noop = function() end
    assert.equal("bad argument #1 to 'after' (expected seconds >= 0)", msg(c.after, -1, noop))
    assert.equal("bad argument #1 to 'after' (expected seconds >= 0)", msg(c.after, 0 / 0, noop))
    assert.equal("bad argument #1 to 'every' (expected seconds > 0)", msg(c.every, 0, noop))
    assert.equal("bad argument #1 to 'after' (number expected, got nil)", msg(c.after))
    assert.equal("bad argument #2 to 'after' (function expected, got nil)", msg(c.after, 1))
    assert.equal("bad argument #2 to 'every' (function expected, got string)",
      msg(c.every, 1, "f"))
    local t = c:after(1, noop)
    assert.has_error(function() t.cancel({}) end,
      "bad argument #1 to 'cancel' (echohost.timer expected, got table)")
    assert.has_error(function() t.x = 1 end)
  end)

  it("an error in a timer ends the connection with 'error', logged", function()
    local why
    local h = harness.open({ on_open = function(conn)
      conn:every(0.1, function(c) c:send("t"); if c.state.boom then error("boom") end end)
    end, on_close = function(_, reason) why = reason end })
    assert.equal("tt", h:advance(0.2))
    h.conn.state.boom = true
    assert.equal("t", h:advance(1))
    assert.same({ "error", "error", 1, "closed" }, { h:reason(), why, #h.log, h:ending() })
    assert.matches("boom\nstack traceback:", h.error)
  end)

  it("timers run under the budget and the memory cap", function()
    local r = harness.run({ on_open = function(conn)
      conn:after(1, function() while true do end end)
    end }, { harness.advance(2) }, { budget = 100000 })
    assert.same({ "error", true }, { r.reason, r.closed })
    assert.matches("instruction budget exceeded", r.error)
    r = harness.run({ on_open = function(conn)
      conn:after(1, function()
        conn.state.hog = {}
        for i = 1, 1e7 do conn.state.hog[i] = ("x"):rep(64) .. i end
      end)
    end }, { harness.advance(2) }, { mem = 4 * 1024 * 1024 })
    assert.same({ "error", "not enough memory" }, { r.reason, r.error })
  end)

  it("fires while a direct-style handler sleeps, before the sleep returns", function()
    local r = harness.run({ handle = function(conn)
      local t = conn:every(0.1, function(c) c:send("tick\n") end)
      local line = conn:receive()
      conn.state.slept = { conn:sleep(0.35) }
      t:cancel()
      conn:send(line .. "\n")
    end }, { "hi\n" })
    assert.same({ "tick\ntick\ntick\nhi\n", "closed", { true } },
      { r.sent, r.reason, r.state.slept })
  end)

  it("fires while a direct-style handler is parked in recv; it stays parked", function()
    local h = harness.open({ handle = function(conn)
      conn:every(0.1, function(c) c:send("t") end)
      conn:send("got " .. conn:recv())
      conn:close()
    end })
    assert.equal("ttt", h:advance(0.3))
    assert.equal("open", h:ending())
    assert.equal("got x", h:input("x"))
    assert.equal("closed", h:reason())
  end)

  it("a timer that closes the connection ends a sleep: nil, 'closed', 0", function()
    local h = harness.open({ handle = function(conn)
      conn:after(1, function(c) c:send("bye"); c:close() end)
      conn.state.slept = { conn:sleep(5) }
    end })
    assert.same({ { nil, "closed", 0 }, "bye", "closed", 1 },
      { h.conn.state.slept, h:sent(), h:reason(), h:clock() })
  end)

  it("a timer cannot wait: sleep and recv raise 'conn:X would wait'", function()
    for _, verb in ipairs({ "sleep", "recv", "receive" }) do
      local h = harness.open({ handle = function(conn)
        conn:after(0.1, function(c) c[verb](c, 1) end)
        conn:sleep(1)
        conn:send("after")
      end })
      assert.equal("error", h:reason())
      assert.matches("conn:" .. verb .. " would wait: " .. WAIT_RULE, h.error)
      assert.equal("", h:sent())
      h = harness.open({ on_open = function(conn)
        conn:after(0.1, function(c) c[verb](c, 1) end)
      end })
      h:advance(1)
      assert.equal("error", h:reason())
      assert.matches("conn:" .. verb .. " would wait", h.error)
    end
  end)
end)

-- Coroutines of a connection (conn:spawn) -----------------------------------

describe("harness coroutines", function()
  it("a spawned coroutine runs at once until it first waits, then its spawner goes on",
    function()
      local h = harness.open({ handle = function(conn)
        local log = {}
        conn.state.log = log
        log[#log + 1] = "handle"
        local ok = conn:spawn(function(a, b)
          log[#log + 1] = "spawned " .. a .. b
          local data = conn:recv()
          log[#log + 1] = "spawned got " .. data
        end, "x", "y")
        log[#log + 1] = "handle goes on " .. tostring(ok)
        conn:sleep(1)
        log[#log + 1] = "handle slept"
      end })
      -- the spawned one reads the client: the clock waits, and so does the sleep
      assert.same({ "handle", "spawned xy", "handle goes on true" }, h.conn.state.log)
      assert.same({ false, 0 }, { h:closed(), h:clock() })
      h:input("z")
      assert.same({ "spawned got z", "handle slept" }, { table.unpack(h.conn.state.log, 4) })
      assert.same({ true, "closed", 1 }, { h:closed(), h:reason(), h:clock() })
    end)

  it("runs what is runnable in FIFO order, sleeps by their deadline, equals in parking order",
    function()
      local h = harness.open({ handle = function(conn)
        for _, t in ipairs({ { "a", 2 }, { "b", 1 }, { "c", 1 }, { "d", 0 } }) do
          conn:spawn(function(name, secs)
            conn:sleep(secs)
            conn:send(name)
          end, t[1], t[2])
        end
        conn:send("h")
      end })
      assert.same({ "hdbca", 2, "closed" }, { h:sent(), h:clock(), h:reason() })
    end)

  it("every form may spawn: a callback, a per-message function, a timer", function()
    local h = harness.open(function(conn, data)
      conn:spawn(function()
        conn:sleep(0.5)
        conn:send(data:upper())
      end)
    end)
    assert.equal("", h:input("ab"))               -- on_data is how it waits for the client
    assert.equal("AB", h:advance(0.5))
    h = harness.open({ on_open = function(conn)
      conn:after(1, function(c)
        c:spawn(function() c:sleep(1); c:send("late") end)
      end)
    end })
    assert.same({ "", "late", 2 }, { h:advance(1.5), h:advance(0.5), h:clock() })
  end)

  it("a sleep moves the clock by itself only while nothing waits for the client", function()
    local h = harness.open({ handle = function(conn)
      conn:spawn(function()
        while true do
          conn:sleep(1)
          if not conn:send("t") then return end
        end
      end)
      conn:send("got " .. conn:recv())
      conn:close()
    end })
    assert.same({ "", 0 }, { h:sent(), h:clock() })  -- handle reads: the ticker waits
    assert.equal("ttt", h:advance(3.5))
    assert.equal("got x", h:input("x"))
    assert.same({ "closed", 3.5 }, { h:reason(), h:clock() })
  end)

  it("a step that would move the clock without end raises", function()
    local saved = harness.STEP_EVENTS
    harness.STEP_EVENTS = 50
    local ok, err = pcall(harness.open, { handle = function(conn)
      while true do conn:sleep(1) end
    end })
    harness.STEP_EVENTS = saved
    assert.is_false(ok)
    assert.matches("harness: a step moved the clock 50 times by itself", err)
  end)

  it("h:advance times a settimeout wait out at its deadline, the clock then at it", function()
    local h
    h = harness.open({ handle = function(conn)
      conn:settimeout(1)
      local r = { conn:recv() }
      conn:send(("%s %s %s at %s"):format(r[1], r[2], r[3], h and h:clock()))
    end })
    assert.equal("", h:advance(0.5))
    assert.equal("nil timeout 110 at 1.0", h:advance(0.7))
    assert.same({ "closed", 1.2 }, { h:reason(), h:clock() })
  end)

  it("allows 64 coroutines with handle, 64 spawned in callbacks; the 65th raises", function()
    local h = harness.open({ handle = function(conn)
      for _ = 1, 63 do conn:spawn(function() conn:sleep(10) end) end
      local ok, err = pcall(conn.spawn, conn, print)
      conn:send(tostring(ok) .. " " .. err:match("too many.*") .. "\n")
      conn:recv()                                 -- waits: the sleeps stay parked
      conn.state.again = conn:spawn(function() end)
    end })
    assert.equal("false too many coroutines on this connection (at most 64)\n", h:sent())
    h:advance(10)                                 -- 63 return: room again
    assert.equal("open", h:ending())
    h:input("x")
    assert.same({ true, "closed" }, { h.conn.state.again, h:reason() })
    local r = harness.run({ on_open = function(conn)
      for _ = 1, 65 do conn:spawn(function() conn:sleep(1) end) end
    end }, {})
    assert.equal("error", r.reason)
    assert.matches("too many coroutines on this connection %(at most 64%)", r.error)
  end)

  it("an error in a spawned coroutine ends the connection with 'error', logged", function()
    local why
    local h = harness.open({ on_open = function(conn)
      conn:spawn(function()
        conn:sleep(1)
        error("boom")
      end)
    end, on_close = function(_, reason) why = reason end })
    assert.equal("open", h:ending())
    h:advance(1)
    assert.same({ "error", "error", 1 }, { h:reason(), why, #h.log })
    assert.matches("boom\nstack traceback:", h.error)
  end)

  it("direct style closes once handle and every spawned coroutine returned", function()
    local h = harness.open({ handle = function(conn)
      conn:spawn(function() conn:send(conn:recv()) end)
    end })
    assert.same({ false, "a", "closed" }, { h:closed(), h:input("a"), h:reason() })
    h = harness.open({ handle = function(conn)
      conn:spawn(function() conn:recv(); conn:recv() end)
    end })
    h:input("a")
    h:eof()
    assert.equal("eof", h:reason())
  end)

  it("callbacks close after the client's EOF once every spawned coroutine returned", function()
    local h = harness.open({ on_data = function(conn, data)
      conn:spawn(function() conn:sleep(1); conn:send(data:upper()) end)
    end })
    assert.equal("", h:input("a"))
    assert.same({ "A", true, "eof", 1 }, { h:eof(), h:closed(), h:reason(), h:clock() })
  end)

  it("at the end, parked coroutines get nil, 'closed', code and run on; later waits too",
    function()
      local function parked()
        return { handle = function(conn)
          local got = {}
          conn.state.got = got
          conn:spawn(function()
            got.sleep = { conn:sleep(30) }
            got.again = { conn:sleep(1) }
          end)
          got.recv = { conn:recv() }
          got.after = { conn:receive("*l") }
        end }
      end
      local h = harness.open(parked())
      h:reset()
      assert.same({ sleep = { nil, "closed", 104 }, again = { nil, "closed", 104 },
                    recv = { nil, "closed", 104 }, after = { nil, "closed", 104 } },
        h.conn.state.got)
      h = harness.open(parked())
      h:shutdown()
      assert.same({ nil, "closed", 0 }, h.conn.state.got.sleep)
      assert.equal(0, h:clock())
    end)

  it("conn:close() by one coroutine wakes the others with nil, 'closed', 0", function()
    local h = harness.open({ handle = function(conn)
      conn:spawn(function() conn.state.sleep = { conn:sleep(30) } end)
      conn:spawn(function() conn.state.recv = { conn:recv() } end)
      conn:close()
    end })
    assert.same({ { nil, "closed", 0 }, { nil, "closed", 0 }, "closed" },
      { h.conn.state.sleep, h.conn.state.recv, h:reason() })
  end)

  it("one coroutine at a time reads the conn", function()
    local h = harness.open({ handle = function(conn)
      conn:spawn(function() conn:send("spawned got " .. conn:recv()) end)
      local ok, err = pcall(conn.recv, conn)
      conn:send(tostring(ok) .. " " .. err:match("conn:recv: .*") .. "\n")
    end })
    assert.equal("false conn:recv: another coroutine is waiting to read this connection\n",
      h:sent())
    assert.equal("spawned got x", h:input("x"))
  end)

  it("the waiting rule: a callback cannot wait; a coroutine of callbacks reads no conn data",
    function()
      local r = harness.run({ on_open = function(conn)
        conn:spawn(function() conn:recv() end)
      end }, {})
      assert.equal("error", r.reason)
      assert.matches("conn:recv: the data of this connection goes to on_data", r.error)
      r = harness.run(function(conn) conn:receive(3) end, { "ab" })
      assert.matches("conn:receive would wait: " .. WAIT_RULE .. " for data", r.error)
      local h = harness.open({ handle = function(conn)   -- a coroutine of its own
        conn.state.got = { coroutine.wrap(function() return pcall(conn.sleep, conn, 1) end)() }
      end })
      assert.is_false(h.conn.state.got[1])
      assert.matches("conn:sleep would wait: " .. WAIT_RULE .. "$", h.conn.state.got[2])
    end)

  it("spawn: misuse raises; on a closed connection nil, 'closed', 0", function()
    local c = harness.open(function() end).conn
    assert.has_error(function() c:spawn(42) end,
      "bad argument #1 to 'spawn' (function expected, got number)")
    local h = harness.open({ on_data = function(conn)
      conn:close()
      conn.state.got = { conn:spawn(print) }
    end })
    h:input("x")
    assert.same({ nil, "closed", 0 }, h.conn.state.got)
  end)

  it("a coroutine that yields outside a wait is a fault", function()
    local r = harness.run({ handle = function(conn)
      conn:spawn(function() coroutine.yield(1) end)
      conn:recv()
    end }, {})
    assert.same({ "error", "handle yielded outside conn:recv/conn:send" }, { r.reason, r.error })
  end)
end)

-- Upstream sockets (opts.upstreams, echohost.socket.connect) -------------------

describe("harness upstream sockets", function()
  local write, dir = scratch()

  -- README's proxy, to 127.0.0.1:7 (loaded from a path: echohost.socket is provided).
  local PROXY = [[
local socket = require "echohost.socket"
return { handle = function(conn)
  local up = assert(socket.connect("127.0.0.1", 7))
  conn:spawn(function()
    for data in function() return up:recv() end do conn:send(data) end
    conn:shutdown("send")
  end)
  for data in function() return conn:recv() end do up:send(data) end
  up:shutdown("send")
end }
]]

  -- A proxy that passes a reset on as a reset (scripts/proxy.lua's pump).
  local RESET_PROXY = [[
local socket = require "echohost.socket"
local function pump(from, to)
  while true do
    local data, _, code = from:recv()
    if not data then
      if code == 104 then to:reset() else to:shutdown("send") end
      return
    end
    to:send(data)
  end
end
return { handle = function(conn)
  local up = assert(socket.connect("127.0.0.1", 7))
  conn:spawn(pump, up, conn)
  pump(conn, up)
end }
]]

  local ECHO = function(_, data) return data end

  local function lines(text)
    local t = {}
    for l in (text .. "\n"):gmatch("(.-)\n") do t[#t + 1] = l end
    return t
  end

  it("a proxy passes bytes both ways, and the client's half-close reaches the upstream",
    function()
      local h = harness.open(write("proxy.lua", PROXY), { upstreams = { ["127.0.0.1:7"] = ECHO } })
      assert.equal(1, #h.upstreams)
      local inst = h.upstreams[1]
      assert.same({ "127.0.0.1:7", "127.0.0.1:50001", "fn", "127.0.0.1:7", h.conn.id },
        { inst.address, inst.conn.peer, inst.kind, inst.socket.peer, inst.socket.id })
      assert.equal("abc", h:input("abc"))
      assert.equal("de", h:input("de"))
      assert.same({ "abcde", "open" }, { inst:sent(), inst:ending() })
      assert.equal("", h:eof())
      assert.same({ "eof", "eof", "closed" }, { inst:reason(), h:reason(), h:ending() })
    end)

  it("the upstream's half-close reaches the client, which may still send", function()
    local up = { handle = function(conn)
      conn:send("hello")
      conn:shutdown("send")
      conn.state.got = conn:receive("*a")
    end }
    local h = harness.open(write("proxy.lua", PROXY), { upstreams = { ["127.0.0.1:7"] = up } })
    assert.same({ "hello", "closed", false }, { h:sent(), h:ending(), h:closed() })
    assert.equal("", h:input("more"))
    h:eof()
    assert.same({ "more", "eof", "eof" },
      { h.upstreams[1].conn.state.got, h.upstreams[1]:reason(), h:reason() })
  end)

  it("passes resets on: the upstream's to the client, the client's to the upstream", function()
    local resetter = { handle = function(conn) conn:recv(); conn:reset() end }
    local h = harness.open(write("rproxy.lua", RESET_PROXY),
      { upstreams = { ["127.0.0.1:7"] = resetter } })
    h:input("x")
    assert.same({ "reset", "closed", "reset" }, { h:ending(), h:reason(), h.upstreams[1]:ending() })
    -- the client's reset ends the connection: its upstream sockets close first (EOF)
    local recv
    local reader = { ["127.0.0.1:7"] = { handle = function(conn) recv = { conn:recv() } end } }
    h = harness.open(write("rproxy.lua", RESET_PROXY), { upstreams = reader })
    h:reset()
    assert.same({ "reset", "eof", { nil, "closed", 0 } },
      { h:reason(), h.upstreams[1]:reason(), recv })
    h = harness.open({ handle = function(conn)           -- up:reset(): the instance's reset
      local up = assert(harness.socket.connect("127.0.0.1", 7))
      conn:recv()
      up:reset()
      conn:recv()
    end }, { upstreams = reader })
    h:input("x")
    assert.same({ "reset", { nil, "closed", 104 }, "open" },
      { h.upstreams[1]:reason(), recv, h:ending() })
  end)

  it("gives a reset upstream's reader nil, 'closed', 104 for recv and send, bytes dropped",
    function()
      local p = write("rst.lua", [[
local socket = require "echohost.socket"
return { handle = function(conn)
  local up = assert(socket.connect("127.0.0.1", 7))
  up:send("go")
  local r, s = { up:recv() }, { up:send("x") }
  conn:send(table.concat({ tostring(r[1]), r[2], r[3], tostring(s[1]), s[2], s[3] }, " "))
end }
]])
      local h = harness.open(p, { upstreams = { ["127.0.0.1:7"] = function(conn)
        conn:send("dropped")
        conn:reset()
      end } })
      assert.equal("nil closed 104 nil closed 104", h:sent())
    end)

  it("a slow upstream: its sleep shows on the virtual clock", function()
    local slow = { handle = function(conn)
      for data in function() return conn:recv() end do
        conn:sleep(2)
        conn:send(data)
      end
    end }
    local h = harness.open(write("proxy.lua", PROXY), { upstreams = { ["127.0.0.1:7"] = slow } })
    assert.equal("", h:input("x"))                 -- the proxy's handle reads the client
    assert.equal("", h:advance(1.9))
    assert.same({ "x", 2 }, { h:advance(0.1), h:clock() })
    local ask = write("ask.lua", [[
local socket = require "echohost.socket"
return { handle = function(conn)
  local up = assert(socket.connect("127.0.0.1", 7))
  up:send(conn:receive("*l") .. "\n")
  conn:send("answer " .. up:receive("*l"))
end }
]])
    h = harness.open(ask, { upstreams = { ["127.0.0.1:7"] = slow } })
    assert.same({ "answer q", 2, "closed" }, { h:input("q\n"), h:clock(), h:reason() })
    assert.equal("eof", h.upstreams[1]:reason())   -- closed with its connection
  end)

  it("refuses an address not in opts.upstreams: nil, 'connect HOST:PORT: ...', 111", function()
    local p = write("refused.lua", [[
local socket = require "echohost.socket"
return { handle = function(conn)
  for _, a in ipairs({ { "127.0.0.1", 9 }, { "::1", 9 }, { "localhost", "9000" } }) do
    local up, msg, code = socket.connect(a[1], a[2], 1)
    conn:send(("%s %s %s\n"):format(up and up.peer, msg, code))
  end
end }
]])
    local r = harness.run(p, {}, { upstreams = { ["localhost:9000"] = ECHO } })
    assert.equal("nil connect 127.0.0.1:9: Connection refused 111\n"
      .. "nil connect [::1]:9: Connection refused 111\n"
      .. "localhost:9000 nil nil\n", r.sent)
    assert.equal("localhost:9000", r.upstreams[1].address)
  end)

  it("raises on misuse", function()
    local p = write("misuse.lua", [[
local socket = require "echohost.socket"
local function msg(f, ...)
  local ok, err = pcall(f, ...)
  return ok and "no error" or err:gsub("^[^:]*:%d+: ", "")
end
return { handle = function(conn)
  local up = assert(socket.connect("127.0.0.1", "7"))
  local out = {
    msg(socket.listen), msg(socket.open_socket, "127.0.0.1", 0),
    msg(up.after, up, 1, print), msg(up.every, up, 1, print), msg(up.spawn, up, print),
    msg(up.subscribe, up, "ch", print),
    msg(socket.connect, "127.0.0.1", 0), msg(socket.connect, "127.0.0.1", 1.5),
    msg(socket.connect, "127.0.0.1", "x"), msg(socket.connect, "127.0.0.1", 7, -1),
    msg(socket.connect, nil, 7),
  }
  conn:spawn(function() up:recv() end)
  out[#out + 1] = msg(up.recv, up)
  conn:send(table.concat(out, "\n"))
end }
]])
    local h = harness.open(p, { upstreams = { ["127.0.0.1:7"] = ECHO } })
    assert.same({
      "echohost.socket.listen is not available in a handler",
      "echohost.socket.open_socket is not available in a handler",
      "after is not available on an upstream socket: timers, coroutines and subscriptions "
        .. "belong to the client's conn",
      "every is not available on an upstream socket: timers, coroutines and subscriptions "
        .. "belong to the client's conn",
      "spawn is not available on an upstream socket: timers, coroutines and subscriptions "
        .. "belong to the client's conn",
      "subscribe is not available on an upstream socket: timers, coroutines and subscriptions "
        .. "belong to the client's conn",
      "bad argument #2 to 'connect' (port out of range 1..65535)",
      "bad argument #2 to 'connect' (number has no integer representation)",
      "bad argument #2 to 'connect' (number expected, got string)",
      "bad argument #3 to 'connect' (expected seconds (>= 0))",
      "bad argument #1 to 'connect' (string expected, got nil)",
      "conn:recv: another coroutine is waiting to read this upstream socket",
    }, lines(h:sent()))
  end)

  it("connect raises at load time and outside a coroutine of the connection", function()
    local ok, err = pcall(harness.open, write("atload.lua",
      "require('echohost.socket').connect('127.0.0.1', 7)\nreturn function() end\n"))
    assert.is_false(ok)
    assert.equal(dir() .. "/atload.lua:1: echohost.socket.connect is not available while a "
      .. "handler loads", err)
    local r = harness.run(write("cb.lua", [[
local socket = require "echohost.socket"
return { on_open = function(conn)
  conn:after(1, function() socket.connect("127.0.0.1", 7) end)
  socket.connect("127.0.0.1", 7)
end }
]]), {}, { upstreams = { ["127.0.0.1:7"] = ECHO } })
    assert.equal("error", r.reason)
    assert.matches("cb.lua:4: echohost.socket.connect would wait: only a coroutine of the "
      .. "connection %(handle, conn:spawn%) can wait", r.error)
  end)

  it("a callbacks handler connects from a spawned coroutine (harness.socket for values)",
    function()
      local h = harness.open({ on_data = function(conn, data)
        conn:spawn(function()
          local up = assert(harness.socket.connect("127.0.0.1", 7))
          up:send(data)
          conn:send("via upstream: " .. up:recv())
          up:close()
        end)
      end }, { upstreams = { ["127.0.0.1:7"] = function(_, d) return d:upper() end } })
      assert.equal("via upstream: HI", h:input("hi"))
      assert.same({ "eof", "open" }, { h.upstreams[1]:reason(), h:ending() })
    end)

  it("holds at most 64 upstream sockets; a closed one does not count", function()
    local h = harness.open({ handle = function(conn)
      local ups = {}
      for i = 1, 64 do ups[i] = assert(harness.socket.connect("127.0.0.1", 7)) end
      local ok, err = pcall(harness.socket.connect, "127.0.0.1", 7)
      conn:send(tostring(ok) .. " " .. err:match("too many.*") .. "\n")
      ups[1]:close()
      conn:send(tostring(harness.socket.connect("127.0.0.1", 7)))
    end }, { upstreams = { ["127.0.0.1:7"] = ECHO } })
    assert.equal("false too many upstream sockets on this connection (at most 64)\n"
      .. "echohost.conn " .. (h.conn.id) .. " (127.0.0.1:7)", h:sent())
    assert.equal(65, #h.upstreams)
    assert.equal("127.0.0.1:50065", h.upstreams[65].conn.peer)
  end)

  it("closes the upstream sockets when the connection ends: the instances see EOF", function()
    local seen = {}
    local up = { on_data = function() end, on_close = function(conn, why)
      seen[#seen + 1] = conn.peer .. " " .. why
    end }
    local h = harness.open({ handle = function(conn)
      local a = assert(harness.socket.connect("127.0.0.1", 7))
      assert(harness.socket.connect("127.0.0.1", 7))
      conn.state.a = a
      conn:spawn(function() conn.state.got = { a:recv() } end)
      conn:recv()
    end }, { upstreams = { ["127.0.0.1:7"] = up } })
    h:reset()
    assert.same({ "127.0.0.1:50001 eof", "127.0.0.1:50002 eof" }, seen)
    assert.same({ { nil, "closed", 104 }, { nil, "closed", 104 } },
      { h.conn.state.got, { h.conn.state.a:send("x") } })
  end)

  it("after up:close() the instance sees EOF; a send to an ended instance gives 104", function()
    local h = harness.open({ handle = function(conn)
      local up = assert(harness.socket.connect("127.0.0.1", 7))
      conn.state.r1 = { up:recv(), select(3, up:recv()) }   -- then its EOF
      conn.state.s1 = { up:send("x") }
      local up2 = assert(harness.socket.connect("127.0.0.1", 8))
      up2:close()
      conn.state.s2 = { up2:send("y") }
    end }, { upstreams = {
      ["127.0.0.1:7"] = { handle = function(conn) conn:send("bye") end },
      ["127.0.0.1:8"] = { handle = function(conn)
        conn.state.got = { conn:recv() }
        conn.state.sent = { conn:send("dropped") }
      end },
    } })
    assert.same({ { "bye", 0 }, { nil, "closed", 104 }, { nil, "closed", 0 } },
      { h.conn.state.r1, h.conn.state.s1, h.conn.state.s2 })
    local inst = h.upstreams[2]
    assert.same({ { nil, "closed", 0 }, { 7 }, "eof" },
      { inst.conn.state.got, inst.conn.state.sent, inst:reason() })
  end)

  it("an upstream handler is loaded in open: a refused one raises there", function()
    local ok, err = pcall(harness.open, ECHO,
      { upstreams = { ["127.0.0.1:7"] = { on_dat = print } } })
    assert.same({ false, "upstream 127.0.0.1:7: returned a table without handle, on_open, "
      .. "on_data, on_close or on_datagram" }, { ok, err })
    ok, err = pcall(harness.open, ECHO, { upstreams = { ["127.0.0.1:7"] = dir() .. "/nope.lua" } })
    assert.is_false(ok)
    assert.matches("^" .. dir():gsub("%p", "%%%0") .. "/nope.lua: cannot open", err)
    assert.has_error(function() harness.open(ECHO, { upstreams = "127.0.0.1:7" }) end,
      "bad option 'upstreams' to 'open' (table expected, got string)")
  end)

  it("an instance answers queries, keeps its address's log, and has no steps", function()
    local p = write("uplog.lua", "local log = require 'echohost.log'\nlog.info('up')\n"
      .. "return function(_, d) if d == 'boom' then error('boom') end return d end\n")
    local h = harness.open({ handle = function(conn)
      local up = assert(harness.socket.connect("127.0.0.1", 7))
      up:send(conn:recv())
      conn:recv()
    end }, { upstreams = { ["127.0.0.1:7"] = p } })
    h:input("boom")
    local inst = h.upstreams[1]
    assert.same({ "error", { "info: handler " .. p .. ":2: up" }, 1, {} },
      { inst:reason(), inst.logs, #inst.log, h.log })
    assert.matches("boom", inst.error)
    assert.has_error(function() inst:input("x") end,
      "bad self to 'input' (an upstream instance: its client is the handler's upstream socket)")
    assert.equal(inst:clock(), h:clock())
  end)
end)

-- The shared dictionary (echohost.shared, opts.shared) -----------------------

describe("harness shared dictionary", function()
  local util = require "helpers.util"
  local dir, counter
  setup(function()
    dir = util.tmpdir("/tmp/echohost-harness.XXXXXX")
    counter = dir .. "/counter.lua"
    util.spit(counter, [[
local shared = require "echohost.shared"
return function(conn, data)
  local cmd, key, ttl = data:match("^(%a+) (%w+) ?(%d*)$")
  if cmd == "incr" then
    return tostring(shared:incr(key, 1, 0, tonumber(ttl)))
  end
  return tostring(shared:get(key))
end
]])
  end)
  teardown(function()
    if dir and not os.getenv("KEEP_TMP") then
      os.execute("rm -rf '" .. dir .. "'")
    end
  end)

  it("two opens sharing opts.shared see each other's writes", function()
    local d = harness.shared(64 * 1024)
    local a, b = harness.open(counter, { shared = d }), harness.open(counter, { shared = d })
    assert.same({ "1", "2", "3", "3" },
      { a:input("incr n"), b:input("incr n"), a:input("incr n"), b:input("get n") })
    assert.same({ 3, d, 65536 }, { d:get("n"), a.shared, d:capacity() })
  end)

  it("gives each open a fresh 1 MiB dictionary by default", function()
    local a, b = harness.open(counter), harness.open(counter)
    assert.same({ "1", "1", 1048576 }, { a:input("incr n"), b:input("incr n"),
                                         a.shared:capacity() })
    assert.are_not.equal(a.shared, b.shared)
  end)

  it("TTLs follow the virtual clock: h:advance and sleeps of every open using it", function()
    local d = harness.shared()
    local a, b = harness.open(counter, { shared = d }), harness.open(counter, { shared = d })
    a:input("incr k 5")
    a:advance(4)
    assert.same({ "1", 1 }, { b:input("get k"), d:ttl("k") })
    b:advance(1)                                   -- the dictionary's clock is at 5 now
    assert.same({ "nil", 4, 1 }, { a:input("get k"), a:clock(), b:clock() })
    local h = harness.open({ handle = function(conn)
      d:set("s", "x", 2)
      conn:sleep(2)
      conn:send(tostring(d:get("s")))
    end }, { shared = d })
    assert.equal("nil", h:sent())
  end)

  it("the upstream instances of an open share its dictionary", function()
    local p = dir .. "/up.lua"
    util.spit(p, "local shared = require 'echohost.shared'\n"
      .. "return function(_, d) shared:set('seen', d) end\n")
    local h
    h = harness.open({ handle = function(conn)
      local up = assert(harness.socket.connect("127.0.0.1", 7))
      up:send(conn:recv())
      conn:recv()
      conn:send(tostring(h.shared:get("seen")))
    end }, { upstreams = { ["127.0.0.1:7"] = p } })
    h:input("hi")
    assert.equal("hi", h:input("again"))
  end)

  it("raises on a bad size or an opts.shared not made by harness.shared", function()
    assert.has_error(function() harness.shared("lots") end,
      "bad argument #1 to 'shared' (a size in bytes expected, got 'lots')")
    assert.equal(4096, harness.shared("4k"):capacity())
    assert.has_error(function() harness.open(print, { shared = {} }) end,
      "bad option 'shared' to 'open' (a dictionary of harness.shared expected, got table)")
  end)
end)

describe("harness output backpressure (a client that pauses)", function()
  local MiB = 1024 * 1024
  local HW = harness.HIGH_WATER

  -- handle spawns a writer of n chunks of size bytes that records each
  -- result in conn.state.log, after the client's first message.
  local function writer(n, size, timeout)
    return { handle = function(conn)
      local log = {}
      conn.state.log = log
      conn:recv()
      conn:settimeout(timeout)
      conn:spawn(function()
        for _ = 1, n do
          local r = table.pack(conn:send(("x"):rep(size)))
          log[#log + 1] = table.concat({ tostring(r[1]), tostring(r[2]), tostring(r[3]) }, " ")
          if not r[1] then
            return
          end
        end
      end)
      conn:sleep(0)
    end }
  end

  it("queues a send whole below high water, makes the next wait, and reads on h:read",
    function()
      local h = harness.open(writer(3, MiB), { paused = true })
      local log = h.conn.state.log
      assert.equal("", h:input("go"))            -- a paused client reads nothing
      assert.same({ MiB, { "1048576 nil nil" }, false }, { h:queued(), log, h:closed() })
      -- the second waits until the client read down to low water (HW / 4)
      assert.equal(MiB - HW // 4 - 1, #h:read(MiB - HW // 4 - 1))
      assert.same({ HW // 4 + 1, 1 }, { h:queued(), #log })
      assert.equal(1, #h:read(1))
      assert.same({ HW // 4 + MiB, 2 }, { h:queued(), #log })
      -- resume: the queue, then everything as it comes; the end after it
      assert.equal(HW // 4 + 2 * MiB, #h:resume())
      assert.same({ 0, 3, true, "closed" }, { h:queued(), #log, h:closed(), h:reason() })
      assert.equal(3 * MiB, #h:sent())
    end)

  it("opens paused (opts.paused, also for h:connect): on_open's reply waits in the queue",
    function()
      local h = harness.open({ on_open = function() return "hello" end }, { paused = true })
      local b = h:connect({ paused = true })
      assert.same({ "", 5, 5 }, { h:sent(), h:queued(), b:queued() })
      assert.same({ "hel", "lo", "" }, { h:read(3), h:read(), h:read() })
      assert.same({ "hello", "" }, { b:resume(), b:read() })
    end)

  it("raises from another send while one waits, and faults a reply", function()
    local h = harness.open({ handle = function(conn)
      conn:recv()
      conn:spawn(function() conn:send(("x"):rep(HW)); conn:send("y") end)
      local ok, err = pcall(conn.send, conn, "z")
      conn.state.send = { ok, err }
      conn:after(1, function() conn.state.timer = { pcall(conn.send, conn, "t") } end)
      conn:sleep(2)
    end }, { paused = true })
    h:input("go")
    assert.same({ false, "conn:send: another coroutine is waiting to write this connection" },
      h.conn.state.send)
    h:advance(1)
    assert.same({ false, "conn:send: another coroutine is waiting to write this connection" },
      h.conn.state.timer)

    local cb = harness.open({ on_data = function(conn, data)
      conn:spawn(function() conn:send(("x"):rep(HW)); conn:send("y") end)
      return data
    end })
    cb:pause()
    cb:input("go")
    assert.same({ true, "error" }, { cb:closed(), cb:reason() })
    assert.equal("conn:send: another coroutine is waiting to write this connection", cb.log[1])
    assert.equal(HW, #cb:resume())                -- what was queued before the fault
  end)

  it("ends a waiting send at its settimeout deadline, at h:timeout and at the end", function()
    local h = harness.open(writer(3, HW, 0.5), { paused = true })
    h:input("go")
    assert.same({ "262144 nil nil" }, h.conn.state.log)
    h:advance(0.4)
    assert.equal(1, #h.conn.state.log)
    h:advance(0.1)
    assert.same({ "262144 nil nil", "nil timeout 110" }, h.conn.state.log)

    h = harness.open(writer(3, HW), { paused = true })
    h:input("go")
    h:timeout()                                  -- no settimeout: it still waits
    assert.equal(1, #h.conn.state.log)
    h = harness.open(writer(3, HW, 9), { paused = true })
    h:input("go")
    h:timeout()
    assert.same({ "262144 nil nil", "nil timeout 110" }, h.conn.state.log)

    h = harness.open(writer(3, HW), { paused = true })
    h:input("go")
    h:reset()                                    -- what the client had not read is lost
    assert.same({ "262144 nil nil", "nil closed 104" }, h.conn.state.log)
    assert.same({ 0, "" }, { h:queued(), h:resume() })
  end)

  it("ends a closed connection once the client read its output", function()
    local h = harness.open(function(conn, data) conn:close(); return data:rep(3) end,
      { paused = true })
    h:input("ab")
    assert.same({ false, 6 }, { h:closed(), h:queued() })
    assert.same({ "abab", false }, { h:read(4), h:closed() })
    assert.same({ "ab", true, "closed" }, { h:read(), h:closed(), h:reason() })
  end)

  it("moves the clock by itself only while no send waits for the client", function()
    local h = harness.open({ handle = function(conn)
      conn:recv()
      conn:spawn(function() conn:send(("x"):rep(HW)); conn.state.second = conn:send("y") end)
      conn:sleep(5)
      conn.state.woke = true
    end }, { paused = true })
    h:input("go")
    assert.same({ 0.0, nil }, { h:clock(), h.conn.state.woke })
    h:advance(5)
    assert.same({ 5.0, true, nil }, { h:clock(), h.conn.state.woke, h.conn.state.second })
    h:resume()
    assert.same({ 1, true }, { h.conn.state.second, h:closed() })
  end)

  it("checks h:read's argument and refuses an upstream instance", function()
    local h = harness.open(function() end)
    assert.has_error(function() h:read(-1) end,
      "bad argument #1 to 'read' (expected a byte count (>= 0), got -1)")
    assert.has_error(function() h:read(1.5) end,
      "bad argument #1 to 'read' (expected a byte count (>= 0), got 1.5)")
  end)

  it("makes an upstream send wait while the instance has more than high water unread", function()
    local socket, events = harness.socket, {}
    local function add(e) events[#events + 1] = e end
    local h = harness.open({ handle = function(conn)
      local up = assert(socket.connect("127.0.0.1", 7))
      add("first " .. up:send(("x"):rep(HW)))   -- at high water: the kernel took it
      add("second " .. up:send("y"))            -- waits for the instance
      conn:recv()
    end }, { upstreams = { ["127.0.0.1:7"] = { handle = function(conn)
      conn:sleep(1)
      add("instance reads")
      add("got " .. #conn:recv())
    end } } })
    -- nothing waits for the client meanwhile: the clock moved by itself
    assert.same({ "first 262144", "instance reads", "got 262145", "second 1" }, events)
    assert.equal(1.0, h:clock())
  end)

  it("makes an instance's send wait while the handler leaves its socket unread", function()
    local socket = harness.socket
    local h = harness.open({ handle = function(conn)
      local up = assert(socket.connect("127.0.0.1", 7))
      up:send("go")
      conn:recv()                                -- the client's turn
      conn.state.got = #up:recv(HW)
      conn:recv()
    end }, { upstreams = { ["127.0.0.1:7"] = { handle = function(conn)
      conn:recv()
      conn.state.log = { conn:send(("x"):rep(HW)) }
      conn.state.log[2] = conn:send("y")
    end } } })
    local inst = h.upstreams[1]
    assert.same({ HW }, inst.conn.state.log)
    h:input("read")
    assert.same({ HW, { HW, 1 } }, { h.conn.state.got, inst.conn.state.log })
  end)
end)

describe("h:connect, several connections to one loaded handler", function()
  local write = scratch()

  it("shares the handler's module state, as a worker's connections do", function()
    local p = write("count.lua", "local n = 0\n"
      .. "return function(conn) n = n + 1; return conn.peer .. ' ' .. n .. '\\n' end\n")
    local a = harness.open(p)
    local b = a:connect()
    local c = a:connect({ peer = "10.0.0.1:5" })
    assert.equal("127.0.0.1:40000 1\n", a:input("x"))
    assert.equal("127.0.0.1:40001 2\n", b:input("y"))
    assert.equal("10.0.0.1:5 3\n", c:input("z"))
    assert.equal("127.0.0.1:40001 1\n", harness.open(p):connect():input("w"))  -- its own load
    assert.equal("127.0.0.1:40000 4\n", a:input("x"))
    assert.equal("eof", b:finish())
    assert.is_false(a:closed())
  end)

  it("runs every connection on one clock, dictionary and bus", function()
    local p = write("room.lua", [[
local pubsub = require "echohost.pubsub"
local shared = require "echohost.shared"
return {
  on_open = function(conn) conn:subscribe("room", function(c, m) c:send(m) end) end,
  on_data = function(conn, data)
    shared:incr("lines", 1, 0)
    conn:after(1, function() pubsub.publish("room", data) end)
  end,
}
]])
    local a = harness.open(p)
    local b = a:connect()
    assert.equal("", a:input("hi\n"))
    assert.equal("hi\n", b:advance(1))        -- a's timer, on the one clock
    assert.equal("hi\n", a:sent())
    assert.equal(1.0, a:clock())
    b:input("yo\n")
    assert.equal(2, a.shared:get("lines"))
    a:advance(1)
    assert.equal("hi\nyo\n", b:sent())
  end)

  it("moves the clock by itself only when no connection waits for its client", function()
    local p = write("nap.lua", [[
return { handle = function(conn)
  local line = conn:recv()
  conn:sleep(5)
  conn:send(line)
end }
]])
    local a = harness.open(p)
    local b = a:connect()
    assert.equal("", a:input("a"))       -- b's handle reads its client: the clock waits
    assert.equal(0, a:clock())
    assert.equal("a", a:advance(5))
    b:input("b")                          -- nothing else waits for a client now
    assert.equal("b", b:sent())
    assert.equal(10, b:clock())
  end)

  it("refuses bad options and upstream instances", function()
    local h = harness.open(function() end)
    assert.has_error(function() h:connect({ peer = 7 }) end,
      "bad option 'peer' to 'connect' (string expected, got number)")
  end)
end)

describe("harness datagrams", function()
  it("calls a bare function as fn(peer, data): the reply, nil, or an empty string", function()
    local h = harness.open(function(peer, data)
      if data == "quiet" then return nil end
      return type(peer) == "string" and peer .. " " .. data or "conn " .. data
    end, { peer = "127.0.0.1:5000" })
    assert.equal("127.0.0.1:5000 hi", h:datagram("hi"))
    assert.equal("[::1]:7000 v6", h:datagram("v6", "[::1]:7000"))
    assert.same({}, { h:datagram("quiet") })
    assert.equal("conn tcp", h:input("tcp"))        -- the same function serves TCP
    assert.same({}, h.log)
  end)

  it("runs on_datagram in the open's state, beside the connection, which goes on", function()
    local n = 0
    local h = harness.open({
      on_data = function(_, data) return ("%s %d"):format(data, n) end,
      on_datagram = function(_, data) n = n + 1; return data:upper() end,
    })
    assert.equal("A", h:datagram("a"))
    assert.equal("B", h:datagram("b", "10.0.0.1:2000"))
    assert.equal("x 2", h:input("x"))
    h:eof()
    assert.equal("eof", h:reason())
    assert.equal("C", h:datagram("c"))              -- the state outlives the connection
  end)

  it("echoes when the handler has no datagram function, as the server's C echo", function()
    local h = harness.open({ on_data = function() return "no" end })
    assert.equal("as is", h:datagram("as is"))
    assert.equal("", h:datagram(""))
  end)

  it("gives nil and the error for each fault, logs it, and serves the next datagram", function()
    local h = harness.open({ on_datagram = function(_, data)
      if data == "boom" then error("boom", 0) end
      if data == "loop" then while true do end end
      if data == "num" then return 42 end
      if data == "big" then return ("x"):rep(65508) end
      if data == "big6" then return ("x"):rep(65528) end
      if data == "max6" then return ("x"):rep(65527) end
      if data == "eat" then
        local t = {}
        for i = 1, 16384 do t[i] = ("x"):rep(4096) .. i end
        return "survived " .. #t
      end
      return data
    end }, { budget = 100000, mem = 8 * 1024 * 1024 })
    local r, err = h:datagram("boom")
    assert.is_nil(r)
    assert.matches("^boom\nstack traceback:", err)
    r, err = h:datagram("loop")
    assert.is_nil(r)
    assert.matches("instruction budget exceeded", err)
    assert.same({ nil, "not enough memory" }, { h:datagram("eat") })
    assert.same({ nil, "handler returned a number (expected a string or nil)" },
      { h:datagram("num") })
    assert.same({ nil, "reply of 65508 bytes is longer than a datagram can be (at most 65507 "
      .. "bytes over IPv4)" }, { h:datagram("big") })
    assert.same({ nil, "reply of 65528 bytes is longer than a datagram can be (at most 65527 "
      .. "bytes over IPv6)" }, { h:datagram("big6", "[::1]:9") })
    assert.equal(65527, #h:datagram("max6", "[::1]:9"))
    assert.equal("next", h:datagram("next"))
    assert.equal(6, #h.log)
    assert.is_false(h:closed())
    assert.is_nil(h.error)                          -- the connection had none
  end)

  it("may not wait: connect raises; echohost.log names no connection", function()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir " .. dir)
    finally(function() os.execute("rm -rf " .. dir) end)
    local f = assert(io.open(dir .. "/d.lua", "w"))
    f:write('local socket, log = require "echohost.socket", require "echohost.log"\n',
      'return function(_, data)\n  log.info("got %s", data)\n',
      '  return tostring(socket.connect("127.0.0.1", 7))\nend\n')
    f:close()
    local h = harness.open(dir .. "/d.lua")
    local r, err = h:datagram("x")
    assert.is_nil(r)
    assert.matches("d.lua:4: echohost.socket.connect would wait: " .. WAIT_RULE, err)
    assert.same({ "info: handler " .. dir .. "/d.lua:3: got x" }, h.logs)
  end)

  it("raises on misuse: data not a string or too long, a bad peer", function()
    local h = harness.open(function(_, d) return d end)
    assert.has_error(function() h:datagram(42) end,
      "bad argument #1 to 'datagram' (string expected, got number)")
    assert.has_error(function() h:datagram(("x"):rep(65508)) end,
      "bad argument #1 to 'datagram' (at most 65507 bytes over IPv4, got 65508)")
    assert.equal(65527, #h:datagram(("x"):rep(65527), "[::1]:1"))
    assert.has_error(function() h:datagram("x", "nowhere") end,
      "bad argument #2 to 'datagram' (\"HOST:PORT\" or \"[IPv6]:PORT\" expected, got 'nowhere')")
    assert.has_error(function() h:datagram("x", 7) end,
      "bad argument #2 to 'datagram' (\"HOST:PORT\" or \"[IPv6]:PORT\" expected, got number)")
  end)
end)
