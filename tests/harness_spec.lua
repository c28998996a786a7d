-- echohost.harness under the README contract: close reasons, the results of
-- recv and send in each situation, the steps and markers, errors and the
-- log, the budget and the memory cap. (The shipped scripts under the
-- harness and the servers: handler_spec.lua.)
local harness = require "echohost.harness"

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
