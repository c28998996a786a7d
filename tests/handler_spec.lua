-- Every shipped handler script, and the conn API, under the three
-- interpreters: the in-memory harness, the event server (--handler) and the
-- fork model (--model fork). The same steps must give the same bytes.
local harness = require "echohost.harness"
local util = require "helpers.handler_util"

-- A case is a handler and steps. A step sends data (send), shuts the
-- client's side down (eof) or lets time pass (wait: the harness's timeout),
-- then expects exactly `expect` back, and with closed = true that the
-- server closes the connection after it.
local LONG = string.rep("x", 1100)

local conn_api = [[
return {
  handle = function(conn)
    conn.state.n = 1
    local ok, err = pcall(function() return conn:send(42) end)
    conn:send((ok and "no error" or err:match("bad argument.*")) .. "\n")
    ok, err = pcall(function() conn.id = 1 end)
    conn:send((ok and "no error" or err:match("echohost.conn.*")) .. "\n")
    conn:send(("%s %s %s %d\n"):format(math.type(conn.id),
      conn.peer:match("^127%.0%.0%.1:%d+$") and "peer" or conn.peer,
      type(conn.state), conn.state.n))
    conn:settimeout(0.2)
    local data, msg, code = conn:recv()
    conn:send(("%s %s %s\n"):format(data, msg, code))
    conn:settimeout(nil)
    data = conn:recv(3)
    conn:send("[" .. data .. "]")
    data = conn:recv()
    conn:send("[" .. data .. "]")
    data, msg, code = conn:recv()
    conn:send(("%s %s %s\n"):format(data, msg, code))
    assert(conn:close() == true)
    data, msg = conn:send("late")
    assert(data == nil and msg == "closed")
  end,
}
]]

local fault_fn = [[
return function(_, data)
  if data:find("boom") then
    error("boom at " .. #data)
  end
  return data
end
]]

local recv_outside = [[
return function(conn)
  local _, err = pcall(function() return conn:recv() end)
  return err:match("conn:recv.*") .. "\n"
end
]]

local cases = {
  { name = "echo.lua (per-message function)", script = "scripts/echo.lua",
    steps = {
      { send = "hello", expect = "hello" },
      { send = "x\0y\r\n", expect = "x\0y\r\n" },
      { eof = true, expect = "", closed = true },
    } },
  { name = "upper.lua", script = "scripts/upper.lua",
    steps = {
      { send = "Hello, World", expect = "HELLO, WORLD" },
      { eof = true, expect = "", closed = true },
    } },
  { name = "echo_once.lua (direct style)", script = "scripts/echo_once.lua",
    steps = {
      { send = "only once", expect = "only once", closed = true },
    } },
  { name = "echo_co.lua (direct style loop)", script = "scripts/echo_co.lua",
    steps = {
      { send = "one", expect = "one" },
      { send = "two", expect = "two" },
      { eof = true, expect = "", closed = true },
    } },
  { name = "lines.lua: complete lines only", script = "scripts/lines.lua",
    steps = {
      { send = "ab", expect = "" },
      { send = "c\nde", expect = "abc\n" },
      { send = "f\ng\nh", expect = "def\ng\n" },
      { send = "\n", expect = "h\n" },
      { eof = true, expect = "", closed = true },
    } },
  { name = "lines.lua: a line over the cap", script = "scripts/lines.lua",
    steps = {
      { send = "ok\n", expect = "ok\n" },
      { send = LONG, expect = "error: line too long (max 1024 bytes)\n",
        closed = true },
    } },
  { name = "delay.lua (direct style: receive a line, sleep, reply)",
    script = "scripts/delay.lua",
    steps = {
      { send = "one\ntw", expect = "one\n" },
      { send = "o\r\n", expect = "two\n" },
      { send = "last", expect = "" },
      { eof = true, expect = "last", closed = true },
    } },
  { name = "kv.lua (callbacks, per-connection state)", script = "scripts/kv.lua",
    steps = {
      { send = "SET a 1\nGET a\n", expect = "OK\n1\n" },
      { send = "GET b\nGE", expect = "NIL\n" },
      { send = "T a\nDEL a\nGET a\nPUT x\n", expect = "1\nOK\nNIL\nERR unknown command\n" },
      { eof = true, expect = "", closed = true },
    } },
  { name = "the conn API", source = conn_api,
    steps = {
      { send = "", expect = "bad argument #1 to 'send' (string expected, got number)\n"
          .. "echohost.conn fields are read-only (keep your data in conn.state)\n"
          .. "integer peer table 1\n" },
      { wait = true, expect = "nil timeout 110\n" },
      { send = "abcdef", expect = "[abc][def]" },
      { eof = true, expect = "nil closed 0\n", closed = true },
    } },
  { name = "recv outside a handle coroutine raises", source = recv_outside,
    steps = {
      { send = "x", expect = "conn:recv would wait: only a coroutine of the connection "
          .. "(handle, conn:spawn) can wait for data\n" },
      { eof = true, expect = "", closed = true },
    } },
  { name = "an error closes the connection", source = fault_fn,
    steps = {
      { send = "fine", expect = "fine" },
      { send = "boom", expect = "", closed = true },
    } },
}

-- Interpreter 1: the harness.
local function run_harness(file, steps)
  local h, pos = harness.open(file), 0
  for _, st in ipairs(steps) do
    if st.eof then
      h:eof()
    elseif st.wait then
      h:timeout()
    else
      h:input(st.send)
    end
    local sent = h:sent()           -- what was sent since the last step
    assert.equal(st.expect, sent:sub(pos + 1))
    pos = #sent
    assert.equal(st.closed or false, h:closed())
  end
  h:finish()
end

-- Interpreters 2 and 3: a server on loopback.
local function run_socket(port, steps)
  local c = util.connect(port)
  for _, st in ipairs(steps) do
    if st.eof then
      c:shutdown("send")
    elseif st.send and #st.send > 0 then
      assert(c:send(st.send))
    end
    if st.closed then
      local got, err = util.read_all(c)
      assert.equal(st.expect, got)
      assert.is_nil(err)
    elseif #st.expect > 0 then
      assert.equal(st.expect, (util.read_n(c, #st.expect)))
    end
  end
end

local dir = util.tmpdir()
local files = {}
for i, case in ipairs(cases) do
  if case.source then
    files[i] = dir .. "/case" .. i .. ".lua"
    util.write_file(files[i], case.source)
    files[case.source] = files[i]
  else
    files[i] = case.script
  end
end

describe("handler scripts under the harness", function()
  for i, case in ipairs(cases) do
    it(case.name, function() run_harness(files[i], case.steps) end)
  end
end)

for _, model in ipairs({ "event", "fork" }) do
  describe("handler scripts under --model " .. model, function()
    after_each(util.cleanup)
    for i, case in ipairs(cases) do
      it(case.name, function()
        local srv = util.start({ "--model", model, "--workers", "1",
                                 "--handler", files[i] })
        run_socket(srv.port, case.steps)
        -- a second connection works the same (and after a fault)
        run_socket(srv.port, case.steps)
      end)
    end
  end)
end

describe("harness", function()
  it("runs a list of inputs and reports what was sent and the close", function()
    local r = harness.run("scripts/upper.lua", { "ab", "c", harness.CLOSE })
    assert.equal("ABC", r.sent)
    assert.is_true(r.closed)
    assert.is_nil(r.error)
  end)

  it("reports a handler error with its traceback and closes", function()
    local r = harness.run(files[fault_fn], { "x", "boom", "y" })
    assert.equal("x", r.sent)
    assert.is_true(r.closed)
    assert.matches("boom at 4", r.error)
    assert.matches("stack traceback", r.error)
  end)

  it("stops a loop with the instruction budget", function()
    local r = harness.run(function() while true do end end, { "x" }, { budget = 10000 })
    assert.is_true(r.closed)
    assert.matches("instruction budget exceeded", r.error)
  end)

  it("refuses a file that returns the wrong kind of value", function()
    local bad = dir .. "/bad.lua"
    util.write_file(bad, "return 42\n")
    assert.has_error(function() harness.open(bad) end,
      bad .. ": returned number; a handler returns a function or a table "
        .. "with handle, on_open, on_data, on_close or on_datagram")
  end)

  it("calls on_close with the reason", function()
    local seen
    local h = harness.open({ on_close = function(_, why) seen = why end })
    h:eof()
    h:finish()
    assert.equal("eof", seen)
  end)
end)

teardown(function() util.rmdir(dir) end)

-- A direct-style send above the high-water mark waits (the coroutine
-- yields) until the client reads; with a timeout it gives up.
local flood = [[
return {
  handle = function(conn)
    local chunk, total = string.rep("0123456789abcdef", 4096), 0
    conn:settimeout(%s)
    for _ = 1, %d do
      local n, err = conn:send(chunk)
      if not n then
        io.stderr:write("flood stopped: ", err, " after ", total, "\n")
        break
      end
      total = total + n
    end
    conn:close()
  end,
}
]]

for _, model in ipairs({ "event", "fork" }) do
  describe("direct-style send under --model " .. model, function()
    after_each(util.cleanup)
    local fdir
    setup(function() fdir = util.tmpdir() end)
    teardown(function() util.rmdir(fdir) end)

    it("waits while the client does not read, and loses nothing", function()
      local file = fdir .. "/flood.lua"
      util.write_file(file, flood:format("nil", 64))         -- 4 MiB
      local srv = util.start({ "--model", model, "--workers", "1",
                               "--high-water", "64k", "--handler", file })
      local c = util.connect(srv.port)
      require("socket").sleep(0.2)    -- let the server hit the high-water mark
      local got = assert(util.read_all(c))
      assert.equal(64 * 65536, #got)
      assert.equal(string.rep("0123456789abcdef", 4096 * 64), got)
    end)

    it("returns nil, 'timeout' when the client never reads", function()
      local file = fdir .. "/flood_t.lua"
      util.write_file(file, flood:format("0.2", 1000000))
      local srv = util.start({ "--model", model, "--workers", "1",
                               "--high-water", "64k", "--handler", file })
      local c = util.connect(srv.port)
      local total = util.wait_for(function()
        return srv.log_text():match("flood stopped: timeout after (%d+)")
      end, 10)
      assert.truthy(total)
      local got = assert(util.read_all(c))
      total = tonumber(total)
      assert.is_true(#got >= total and #got < total + 65536)
      if model == "event" then
        assert.equal(total, #got)   -- a send that times out queued nothing
      end
    end)
  end)
end

describe("conn:sleep under the event loop", function()
  after_each(util.cleanup)

  it("lets the worker serve other connections while one sleeps", function()
    local socket = require "socket"
    local srv = util.start({ "--workers", "1", "--handler", "scripts/delay.lua",
                             "--set", "delay=1" })
    local cs = {}
    for i = 1, 5 do
      cs[i] = util.connect(srv.port)
      cs[i]:settimeout(5)
    end
    local t0 = socket.gettime()
    for i = 1, 5 do
      assert(cs[i]:send("n" .. i .. "\n"))
    end
    for i = 1, 5 do
      assert.equal("n" .. i, cs[i]:receive("*l"))
    end
    -- one at a time, five sleeps of 1 s would take 5 s
    local took = socket.gettime() - t0
    assert.is_true(took >= 0.9 and took < 4, ("took %.2f s"):format(took))
  end)
end)

describe("conn timers under the event loop", function()
  after_each(util.cleanup)

  it("are cancelled when their connections close: 20,000 of them leak nothing", function()
    local server = require "helpers.server"
    local socket = require "socket"
    local tdir = util.tmpdir()
    local file = tdir .. "/timers.lua"
    util.write_file(file, [[
return function(conn, data)
  conn:after(3600, function(c) c:send("never") end)
  conn:every(1800, function(c) c:send("never") end)
  return data
end
]])
    local ctl = tdir .. "/ctl.sock"
    local srv = util.start({ "--workers", "1", "--handler", file, "--control", ctl })
    local worker = assert(srv.server:wait_children(1, 5))[1]
    local function lua_mem()       -- the worker's handler state, in bytes
      local out = require("helpers.util").pipe(server.quote(server.BIN) .. " --repl --connect "
        .. server.quote(ctl), "=stats().workers[1].lua_mem\n")
      return assert(tonumber(out), out)
    end
    -- 20 rounds of 500 connections, each arming two timers, then closing
    local function round()
      local cs = {}
      for i = 1, 500 do
        local c = assert(socket.connect("127.0.0.1", srv.port))
        c:settimeout(5)
        assert(c:send("x"))
        cs[i] = c
      end
      for i = 1, 500 do
        assert.equal("x", cs[i]:receive(1))
        cs[i]:close()
      end
    end
    -- three rounds first, so the heap has reached the peak the garbage
    -- collector lets it reach between cycles before the baseline
    for _ = 1, 3 do
      round()
    end
    local base, base_lua = server.rss_kb(worker), lua_mem()
    for _ = 1, 37 do
      round()
    end
    -- the worker has seen every close once it answers a new connection
    local last = assert(socket.connect("127.0.0.1", srv.port))
    last:settimeout(5)
    assert(last:send("y"))
    assert.equal("y", last:receive(1))
    last:close()
    local after, after_lua = server.rss_kb(worker), lua_mem()
    util.rmdir(tdir)
    -- 18,500 more connections with two timers each: a leak of even 100
    -- bytes a timer would add 3.7 MB (under ASan freed memory waits in a
    -- quarantine, so only the Lua state's own count tells there)
    assert.is_true(after_lua - base_lua < 1024 * 1024,
      ("Lua state %d -> %d bytes"):format(base_lua, after_lua))
    if not os.getenv("ECHOHOST_ASAN") then
      assert.is_true(after - base < 2048, ("RSS %d KiB -> %d KiB"):format(base, after))
    end
  end)
end)

-- The C conn object's shared __index, called by hand with something else
-- than a conn (the harness's conn is Lua: its metatable is another).
local index_misuse = [[
return { handle = function(conn)
  local index = getmetatable(conn).__index
  local ok, err = pcall(index, 42, "recv")
  conn:send((ok and "no error" or err:match("bad argument.*")) .. "\n")
  ok, err = pcall(index, io.stdout, "recv")
  conn:send((ok and "no error" or err:match("bad argument.*")) .. "\n")
  conn:send(tostring(index(conn, "id") == conn.id) .. "\n")
  conn:close()
end }
]]

for _, model in ipairs({ "event", "fork" }) do
  describe("the conn's shared __index under --model " .. model, function()
    after_each(util.cleanup)
    it("raises for a value that is not a conn", function()
      local path = dir .. "/index_misuse.lua"
      util.write_file(path, index_misuse)
      local srv = util.start({ "--model", model, "--workers", "1", "--handler", path })
      local c = util.connect(srv.port)
      local got = util.read_all(c)
      assert.equal("bad argument #1 to '?' (echohost.conn expected, got number)\n"
        .. "bad argument #1 to '?' (echohost.conn expected, got FILE*)\n"
        .. "true\n", got)
    end)
  end)
end
