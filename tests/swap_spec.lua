-- Swapping the handler of a running server: under load (50 connections
-- doing request/response) by SIGHUP and by --watch, with no dropped
-- connection, no lost or reordered byte, every reply from one version; a
-- broken file keeps the old handler; a running coroutine keeps its code.
local socket = require "socket"
local util = require "helpers.handler_util"

local CLIENTS, SWAPS = 50, 20

-- A line handler: a request line straddling a swap is answered whole by
-- the version that sees its newline (the partial line lives in conn.state).
local function line_version(tag)
  return ([[
-- swap test handler, version %s
return function(conn, data)
  local buf = (conn.state.buf or "") .. data
  local out = {}
  for line in buf:gmatch("([^\n]*)\n") do
    out[#out + 1] = "%s " .. line .. "\n"
  end
  conn.state.buf = buf:match("[^\n]*$")
  return table.concat(out)
end
]]):format(tag, tag)
end

-- Direct style: every reply of one connection comes from the version the
-- connection started on.
local function direct_version(tag)
  return ([[
return {
  handle = function(conn)
    while true do
      local data = conn:recv()
      if not data then
        break
      end
      conn:send("%s" .. data)
    end
  end,
}
]]):format(tag)
end

-- How many workers logged loading version n. Version 1 is loaded once, by
-- the server before it listens, and every worker starts on it.
local function version_loaded(srv, n, workers)
  local count = util.count(srv, "version " .. n .. " loaded")
  if n == 1 and count == 1 then
    return workers or 1
  end
  return count
end

-- One client: sends a request line in two halves (two loop turns apart, so
-- the server reads it in two pieces), then reads the whole reply line.
local function new_client(port, i)
  local c = util.track(assert(socket.connect("127.0.0.1", port)))
  c:settimeout(0)
  return { sock = c, id = i, seq = 0, phase = "idle", got = "", seen = {},
           done = 0 }
end

local function step_client(cl, stats)
  local c = cl.sock
  if cl.phase == "idle" then
    cl.seq = cl.seq + 1
    local pad = string.rep(string.char(97 + (cl.seq + cl.id) % 26), (cl.seq * 37 + cl.id) % 900)
    cl.line = ("c%d r%d %s"):format(cl.id, cl.seq, pad)
    cl.cut = #cl.line // 2
    assert(c:send(cl.line:sub(1, cl.cut)) == cl.cut)
    cl.phase = "half"
  elseif cl.phase == "half" then
    local rest = cl.line:sub(cl.cut + 1) .. "\n"
    assert(c:send(rest) == #rest)
    cl.phase, cl.got = "reply", ""
  elseif cl.phase == "reply" then
    local data, err, partial = c:receive("*l")
    if not data then
      if err ~= "timeout" then
        stats.dropped = stats.dropped + 1
        cl.phase = "dead"
        return
      end
      cl.got = cl.got .. partial
      return
    end
    local reply = cl.got .. data
    local tag, body = reply:match("^(%u) (.*)$")
    if body ~= cl.line or (tag ~= "A" and tag ~= "B") then
      stats.bad = stats.bad + 1
      stats.last_bad = reply:sub(1, 60)
    end
    if tag then
      stats.seen[tag] = (stats.seen[tag] or 0) + 1
    end
    cl.done = cl.done + 1
    stats.replies = stats.replies + 1
    cl.phase = "idle"
  end
end

-- Runs CLIENTS clients against srv while swap(k) is called SWAPS times,
-- each after every worker has logged the previous version.
local function swap_under_load(srv, file, workers, swap)
  local clients, stats = {}, { dropped = 0, bad = 0, replies = 0, seen = {} }
  for i = 1, CLIENTS do
    clients[i] = new_client(srv.port, i)
  end
  local swaps, next_check = 0, 0
  local deadline = socket.gettime() + 30
  while socket.gettime() < deadline do
    local now = socket.gettime()
    if swaps < SWAPS and now >= next_check then
      next_check = now + 0.02
      -- the next swap once every worker runs the last one and traffic
      -- went on in between
      if version_loaded(srv, swaps + 1, workers) >= workers and stats.replies >= 15 * swaps then
        swaps = swaps + 1
        util.write_file(file, line_version(swaps % 2 == 1 and "B" or "A"))
        swap(srv)
      end
    end
    local socks = {}
    for _, cl in ipairs(clients) do
      if cl.phase == "reply" then
        socks[#socks + 1] = cl.sock
      end
    end
    if #socks > 0 then
      socket.select(socks, nil, 0.01)
    end
    local finished = swaps == SWAPS and version_loaded(srv, SWAPS + 1) >= workers
    local all_idle = true
    for _, cl in ipairs(clients) do
      if cl.phase ~= "dead" and not (finished and cl.phase == "idle" and cl.done >= 5) then
        step_client(cl, stats)
        all_idle = false
      end
    end
    if finished and all_idle then
      break
    end
  end
  assert.equal(SWAPS, swaps)
  assert.equal(workers, version_loaded(srv, SWAPS + 1))
  assert.equal(0, stats.dropped)
  assert.equal(0, stats.bad, stats.last_bad)
  assert.is_true(stats.seen.A > 0 and stats.seen.B > 0)
  for _, cl in ipairs(clients) do
    assert.is_true(cl.done >= 5)
    assert.equal("idle", cl.phase)
  end
  if os.getenv("SWAP_DEBUG") then
    print(("replies %d, A %d, B %d"):format(stats.replies, stats.seen.A, stats.seen.B))
  end
  -- every connection is still open and answering
  for _, cl in ipairs(clients) do
    cl.sock:settimeout(5)
    assert(cl.sock:send("last\n"))
    assert.matches("^%u last$", (cl.sock:receive("*l")))
  end
  return stats
end

describe("handler swap", function()
  local dir
  before_each(function() dir = util.tmpdir() end)
  after_each(function()
    util.cleanup()
    util.rmdir(dir)
  end)

  it("by SIGHUP to the master, under load, drops and garbles nothing", function()
    local file = dir .. "/swap.lua"
    util.write_file(file, line_version("A"))
    local srv = util.start({ "--workers", "2", "--handler", file })
    swap_under_load(srv, file, 2, function(s)
      os.execute("kill -HUP " .. s.pid)
    end)
  end)

  it("by --watch (rename over the file), under load, drops and garbles nothing", function()
    local file = dir .. "/swap.lua"
    util.write_file(file, line_version("A"))
    local srv = util.start({ "--workers", "2", "--watch", "--handler", file })
    swap_under_load(srv, file, 2, function() end)
  end)

  it("keeps the old handler when the new file is broken, and says where", function()
    local file = dir .. "/swap.lua"
    util.write_file(file, line_version("A"))
    local srv = util.start({ "--workers", "1", "--handler", file })
    local c = util.connect(srv.port)
    local broken = {
      { "return function(conn, data)\n  return data ..\nend\n",
        "swap%.lua:3: unexpected symbol near 'end'" },
      { "local x = nil\nreturn x.y\n", "swap%.lua:2: attempt to index" },
      { "return 42\n", "swap%.lua: returned number; a handler returns a function" },
      { "return { on_data = 'no' }\n", "swap%.lua: on_data is a string, expected a function" },
    }
    for i, b in ipairs(broken) do
      util.write_file(file, b[1])
      os.execute("kill -HUP " .. srv.pid)
      assert.truthy(util.wait_for(function() return srv.log_text():find(b[2]) end, 5))
      assert(c:send("still " .. i .. "\n"))
      assert.equal("A still " .. i, c:receive("*l"))
    end
    assert.equal(0, version_loaded(srv, 2))
    util.write_file(file, line_version("B"))
    os.execute("kill -HUP " .. srv.pid)
    assert.truthy(util.wait_for(function() return version_loaded(srv, 2) == 1 end, 5))
    assert(c:send("fixed\n"))
    assert.equal("B fixed", c:receive("*l"))
  end)

  it("restarts a crashed worker on the version it ran, not on a broken file", function()
    local file = dir .. "/swap.lua"
    util.write_file(file, line_version("A"))
    local srv = util.start({ "--workers", "1", "--handler", file })
    util.write_file(file, line_version("B"))
    os.execute("kill -HUP " .. srv.pid)
    assert.truthy(util.wait_for(function() return version_loaded(srv, 2) == 1 end, 5))
    util.write_file(file, "return function(conn, data\n")       -- broken on disk
    local worker = assert(srv.server:wait_children(1, 5))[1]
    os.execute("kill -KILL " .. worker)
    assert.truthy(util.wait_for(function()
      local kids = srv.server:children()
      return kids[1] and kids[1] ~= worker
    end, 5))
    local c = util.connect(srv.port)
    assert(c:send("after\n"))
    assert.equal("B after", c:receive("*l"))
    assert.is_nil(srv.log_text():find("not loaded", 1, true))
  end)

  it("under --model fork, loads once: a broken save changes nothing until a reload", function()
    local file = dir .. "/swap.lua"
    util.write_file(file, line_version("A"))
    local srv = util.start({ "--model", "fork", "--handler", file })
    util.write_file(file, "return function(conn, data\n")
    local c = util.connect(srv.port)
    assert(c:send("one\n"))
    assert.equal("A one", c:receive("*l"))
    os.execute("kill -HUP " .. srv.pid)
    assert.truthy(util.wait_for(function()
      return srv.log_text():find("handler " .. file .. ": SIGHUP reload failed, version 1 "
        .. "stays: " .. file .. ":2:", 1, true)
    end, 5))
    local d = util.connect(srv.port)
    assert(d:send("two\n"))
    assert.equal("A two", d:receive("*l"))
    util.write_file(file, line_version("B"))
    os.execute("kill -HUP " .. srv.pid)
    assert.truthy(util.wait_for(function() return version_loaded(srv, 2) == 1 end, 5))
    local e = util.connect(srv.port)
    assert(e:send("three\n"))
    assert.equal("B three", e:receive("*l"))
    assert(c:send("old\n"))
    assert.equal("A old", c:receive("*l"))    -- a running child keeps its version
  end)

  for _, model in ipairs({ "event", "fork" }) do
    it("by --watch of a module the handler requires (" .. model .. ")", function()
      local file, mod = dir .. "/main.lua", dir .. "/greet.lua"
      util.write_file(mod, "return 'v1'\n")
      util.write_file(file, "local greet = require 'greet'\n"
        .. "return function(conn, data) return greet .. ':' .. data end\n")
      local srv = util.start({ "--workers", "1", "--model", model, "--watch",
        "--handler", file })
      local c = util.connect(srv.port)
      assert(c:send("a\n"))
      assert.equal("v1:a", c:receive("*l"))
      c:close()
      util.write_file(mod, "return 'v2'\n")
      assert.truthy(util.wait_for(function() return version_loaded(srv, 2) >= 1 end, 5))
      local d = util.connect(srv.port)
      assert(d:send("b\n"))
      assert.equal("v2:b", d:receive("*l"))
    end)
  end

  it("lets a running coroutine finish on the code it started with", function()
    local file = dir .. "/direct.lua"
    util.write_file(file, direct_version("1:"))
    local srv = util.start({ "--workers", "1", "--watch", "--handler", file })
    local old = util.connect(srv.port)
    assert(old:send("x"))
    assert.equal("1:x", old:receive(3))
    util.write_file(file, direct_version("2:"))
    assert.truthy(util.wait_for(function() return version_loaded(srv, 2) == 1 end, 5))
    local new = util.connect(srv.port)
    assert(new:send("y"))
    assert.equal("2:y", new:receive(3))
    assert(old:send("z"))
    assert.equal("1:z", old:receive(3))
    -- a broken file seen by --watch keeps version 2
    util.write_file(file, "return {\n  handle = 1,\n}\n")
    assert.truthy(util.wait_for(function()
      return srv.log_text():find("handler " .. file .. ": --watch reload failed, "
        .. "version 2 stays: " .. file .. ": handle is a number, expected a function", 1, true)
    end, 5))
    local third = util.connect(srv.port)
    assert(third:send("w"))
    assert.equal("2:w", third:receive(3))
  end)
end)
