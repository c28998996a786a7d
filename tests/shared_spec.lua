-- echohost.shared (README "The shared dictionary"): one table of cases run
-- against the C dictionary (echohost --shared-size 4k --script) and its Lua
-- twin (echohost.dict on a fake clock), with the same results; then
-- scripts/counter.lua under both server models, across SIGHUP and a killed
-- worker; the values of --shared-size.
local socket = require "socket"
local server = require "helpers.server"
local util = require "helpers.util"
local dict = require "echohost.dict"

-- The cases: a chunk called with (d, sleep), returning one line per
-- operation: its name and what it returned or raised (floats of a
-- rounded case to 0.1 s: the C dictionary runs on the real clock). Loaded
-- as "=cases" on both sides, so that the raises name the same lines.
local CASES = [==[
local d, sleep = ...
local out = {}

local function show(v)
  if math.type(v) == "float" then
    return ("%.17g (float)"):format(v)
  elseif math.type(v) == "integer" then
    return v .. " (integer)"
  elseif type(v) == "string" then
    return ("%q"):format(v)
  end
  return tostring(v)
end

local function T(name, fn, rounded)
  local r = table.pack(pcall(fn))
  local parts = {}
  if not r[1] then
    parts[1] = "raised " .. tostring(r[2])
  end
  for i = 2, r[1] and r.n or 0 do
    local v = r[i]
    parts[#parts + 1] = rounded and math.type(v) == "float" and ("%.1f"):format(v) or show(v)
  end
  out[#out + 1] = name .. " -> " .. table.concat(parts, ", ")
end

local function fill(prefix, n, ttl)
  local stored = 0
  for i = 1, n do
    if d:set(("%s%03d"):format(prefix, i), i, ttl) then
      stored = stored + 1
    end
  end
  return stored
end

T("new", function() return d:capacity(), d:free_space(), tostring(d) end)
T("get missing", function() return d:get("nope") end)
T("string", function() return d:set("s", "hello"), d:get("s"), d:free_space() end)
T("integer", function() return d:set("i", 42), d:get("i"), d:free_space() end)
T("float", function() return d:set("f", 1.5), d:set("g", 2.0), d:get("f"), d:get("g") end)
T("booleans", function() return d:set("t", true), d:set("u", false), d:get("t"), d:get("u") end)
T("empty and binary", function()
  return d:set("e", ""), d:get("e"), d:set("b", "\0a\0"), d:get("b")
end)
T("key of 250 bytes", function() return d:set(("k"):rep(250), 1), d:get(("k"):rep(250)) end)
T("set nil deletes", function() return d:set("s", nil), d:get("s"), d:set("nope", nil) end)
T("add", function() return d:add("i", 1), d:get("i"), d:add("a", "x"), d:get("a") end)
T("delete", function() return d:delete("a"), d:get("a"), d:delete("a") end)
T("incr", function() return d:incr("i", 8), d:incr("i", -60), d:incr("i", 0.5), d:incr("i", 1) end)
T("incr missing", function() return d:incr("m", 1), d:incr("m", 2, 10), d:incr("m", 1, 99) end)
T("incr float init", function() return d:incr("n", 1, 0.5), d:get("n") end)
T("incr not a number", function() return d:incr("e", 1), d:incr("t", 1, 0), d:get("e") end)
T("incr wraps", function()
  return d:set("w", math.maxinteger), d:incr("w", 1), d:incr("w", -1), d:incr("w", 1.0)
end)
T("ttl", function() return d:ttl("i"), d:set("x", 1, 10), d:ttl("nope") end)
T("ttl left", function() return d:ttl("x") end, true)
T("ttl 0 never expires", function() return d:set("x", 1, 0), d:ttl("x") end)
T("expires", function() return d:set("x", 1, 0.2), d:add("y", 1, 0.2) end)
T("incr keeps a ttl", function() return d:incr("c", 1, 0, 0.2), d:incr("c", 1, 0, 100) end)
T("before", function() return d:get("x"), d:ttl("x"), d:ttl("c") end, true)
sleep(0.3)
T("after", function() return d:get("x"), d:ttl("x"), d:get("y"), d:incr("c", 1) end)
T("add over an expired key", function() return d:add("y", 2), d:get("y") end)
T("flush_all", function() return d:flush_all(), d:get("i"), d:free_space() end)

T("get('')", function() d:get("") end)
T("get(251 bytes)", function() d:get(("x"):rep(251)) end)
T("get(5)", function() d:get(5) end)
T("get()", function() d:get() end)
T("set(table)", function() d:set("k", {}) end)
T("set(function)", function() d:set("k", print) end)
T("set(the dict)", function() d:set("k", d) end)
T("set ttl -1", function() d:set("k", 1, -1) end)
T("set ttl '10'", function() d:set("k", 1, "10") end)
T("set ttl nan", function() d:set("k", 1, 0 / 0) end)
T("add()", function() d:add("k") end)
T("add(nil)", function() d:add("k", nil) end)
T("add ttl", function() d:add("k", 1, false) end)
T("incr()", function() d:incr("k") end)
T("incr('1')", function() d:incr("k", "1") end)
T("incr init '0'", function() d:incr("k", 1, "0") end)
T("incr ttl -1", function() d:incr("k", 1, 0, -1) end)
T("delete(1)", function() d:delete(1) end)
T("ttl({})", function() d:ttl({}) end)
T("d.get", function() d.get("k") end)

T("costs", function()
  local f = { d:free_space() }
  d:set("k1", 1)              -- 48 + 2 + 8 = 58: 64
  f[#f + 1] = d:free_space()
  d:set("k1", "abc")          -- 48 + 2 + 3 = 53: 56
  f[#f + 1] = d:free_space()
  d:set("k2", true)           -- 48 + 2 + 1 = 51: 56
  f[#f + 1] = d:free_space()
  d:set(("k"):rep(250), "")   -- 48 + 250 = 298: 304
  f[#f + 1] = d:free_space()
  d:flush_all()
  return table.unpack(f)
end)
T("full", function() return fill("f", 64), d:free_space(), d:set("g", 1) end)
T("full: add, incr of a new key", function() return d:add("g", 1), d:incr("g", 1, 0) end)
T("full: incr in place", function() return d:incr("f001", 1), d:incr("f002", 0.5) end)
T("full: a smaller value", function() return d:set("f004", true), d:free_space() end)
T("full: a larger value that fits", function()
  return d:set("f005", "1234567890123"), d:free_space()
end)
T("full: one that does not", function()
  return d:set("f006", "1234567890123"), d:get("f006"), d:free_space()
end)
T("full: delete makes room", function()
  return d:delete("f010"), d:free_space(), d:set("g", 1), d:free_space()
end)
T("holes are reused", function()
  for i = 11, 64, 2 do d:delete(("f%03d"):format(i)) end
  return d:free_space(), d:set("h", ("x"):rep(1672)), d:free_space(), #d:get("h"),
    d:get("f012"), d:get("f063")
end)
T("expired entries", function()
  d:flush_all()
  return fill("e", 64, 0.2), d:set("x", 1)
end)
sleep(0.3)
T("are not counted", function() return d:free_space() end)
T("and make room", function() return d:set("x", 1), d:free_space(), d:get("e001") end)
T("half expired", function()
  d:flush_all()
  return fill("p", 32), fill("q", 32, 0.2)
end)
sleep(0.3)
T("the other half stays", function()
  return d:free_space(), d:set("big", ("x"):rep(1997)), d:free_space(), d:set("y", 1),
    d:get("p001"), d:get("q001")
end)
T("one value as large as the capacity", function()
  d:flush_all()
  return d:set("v", ("x"):rep(4047)), d:free_space(), d:set("v", ("x"):rep(4048)),
    #d:get("v"), d:set("w", 1)
end)

-- a random mix, on the same seed on both sides
d:flush_all()
math.randomseed(7)
local keys = {}
for i = 1, 40 do
  keys[i] = ("r"):rep(math.random(1, 20)) .. i
end
local function value()
  local r = math.random(6)
  if r == 1 then
    return ("v"):rep(math.random(0, 300))
  elseif r == 2 then
    return math.random(-5, 5)
  elseif r == 3 then
    return math.random() * 10
  elseif r == 4 then
    return math.random(2) == 1
  elseif r == 5 then
    return ("w"):rep(math.random(0, 1500))
  end
  return nil
end
for i = 1, 2000 do
  local k, op = keys[math.random(#keys)], math.random(7)
  local v, init = value(), math.random(2) == 1 and math.random(0, 9) or nil
  local n = math.random(2) == 1 and math.random(-3, 3) or 0.25
  if op == 1 then
    T(i .. " set", function() return d:set(k, v), d:free_space() end)
  elseif op == 2 then
    T(i .. " add", function() return d:add(k, v or 1), d:free_space() end)
  elseif op == 3 then
    T(i .. " incr", function() return d:incr(k, n, init), d:free_space() end)
  elseif op == 4 then
    T(i .. " delete", function() return d:delete(k), d:free_space() end)
  elseif op == 5 then
    T(i .. " ttl", function() return d:ttl(k) end)
  else
    T(i .. " get", function() return d:get(k) end)
  end
end
return out
]==]

-- What the C dictionary gives: the cases in `echohost --script`.
local function run_c()
  local path = util.write_tmp(([[
local run = assert(load(%q, "=cases"))
local out = run(require "echohost.shared", function(secs) os.execute("sleep " .. secs) end)
io.write(table.concat(out, "\n"), "\n")
]]):format(CASES))
  local code, err, out = server.run({ "--shared-size", "4k", "--script", path }, 20)
  os.remove(path)
  assert.equal(0, code, err)
  local lines = {}
  for line in out:gmatch("[^\n]+") do
    lines[#lines + 1] = line
  end
  return lines
end

local function run_twin()
  local now = 1000.0
  local d = dict.new(4096, function() return now end)
  return assert(load(CASES, "=cases"))(d, function(secs) now = now + secs end)
end

-- The README's numbers, on a few of the lines (a raise's line as "N").
local EXPECT = {
  ["new"] = '4096 (integer), 4096 (integer), "echohost.shared (4096 bytes)"',
  ["string"] = 'true, "hello", 4040 (integer)',
  ["integer"] = "true, 42 (integer), 3976 (integer)",
  ["float"] = "true, true, 1.5 (float), 2 (float)",
  ["add"] = 'false, 42 (integer), true, "x"',
  ["incr"] = "50 (integer), -10 (integer), -9.5 (float), -8.5 (float)",
  ["incr missing"] = "nil, 12 (integer), 13 (integer)",
  ["incr not a number"] = 'nil, nil, ""',
  ["incr wraps"] = "true, -9223372036854775808 (integer), 9223372036854775807 (integer), "
    .. "9.2233720368547758e+18 (float)",
  ["ttl"] = "0 (integer), true, nil",
  ["ttl left"] = "10.0",
  ["ttl 0 never expires"] = "true, 0 (integer)",
  ["before"] = "1 (integer), 0.2, 0.2",
  ["after"] = 'nil, nil, nil, nil, "not found"',
  ["add over an expired key"] = "true, 2 (integer)",
  ["get('')"] = "raised cases:N: bad argument #1 to 'get' (key of 1..250 bytes expected)",
  ["get(5)"] = "raised cases:N: bad argument #1 to 'get' (key of 1..250 bytes expected)",
  ["set(table)"] = "raised cases:N: bad argument #2 to 'set' (string, number or boolean "
    .. "expected, got table)",
  ["set(the dict)"] = "raised cases:N: bad argument #2 to 'set' (string, number or boolean "
    .. "expected, got echohost.shared)",
  ["set ttl -1"] = "raised cases:N: bad argument #3 to 'set' (ttl of 0 or more seconds "
    .. "expected)",
  ["add()"] = "raised cases:N: bad argument #2 to 'add' (string, number or boolean expected, "
    .. "got no value)",
  ["incr('1')"] = "raised cases:N: bad argument #2 to 'incr' (number expected, got string)",
  ["incr ttl -1"] = "raised cases:N: bad argument #4 to 'incr' (ttl of 0 or more seconds "
    .. "expected)",
  ["d.get"] = "raised cases:N: bad argument #1 to 'get' (echohost.shared expected, got string)",
  ["costs"] = "4096 (integer), 4032 (integer), 4040 (integer), 3984 (integer), 3680 (integer)",
  ["full"] = '64 (integer), 0 (integer), nil, "no memory"',
  ["full: add, incr of a new key"] = 'nil, nil, "no memory"',
  ["full: incr in place"] = "2 (integer), 2.5 (float)",
  ["full: a smaller value"] = "true, 8 (integer)",
  ["full: a larger value that fits"] = "true, 0 (integer)",
  ["full: one that does not"] = "nil, 6 (integer), 0 (integer)",
  ["full: delete makes room"] = "true, 64 (integer), true, 0 (integer)",
  ["holes are reused"] = "1728 (integer), true, 0 (integer), 1672 (integer), 12 (integer), nil",
  ["expired entries"] = '64 (integer), nil, "no memory"',
  ["are not counted"] = "4096 (integer)",
  ["and make room"] = "true, 4032 (integer), nil",
  ["the other half stays"] = "2048 (integer), true, 0 (integer), nil, 1 (integer), nil",
  ["one value as large as the capacity"] = 'true, 0 (integer), nil, 4047 (integer), nil, '
    .. '"no memory"',
}

describe("echohost.shared and its twin echohost.dict", function()
  local c_lines, twin_lines

  setup(function()
    c_lines, twin_lines = run_c(), run_twin()
  end)

  it("give the same results, line by line", function()
    for i = 1, math.max(#c_lines, #twin_lines) do
      assert.equal(twin_lines[i], c_lines[i])
    end
    assert.is_true(#c_lines > 2000)
  end)

  it("count as the README says", function()
    local got = {}
    for _, line in ipairs(twin_lines) do
      local name, rest = line:match("^(.-) %-> (.*)$")
      got[name] = rest:gsub("^raised cases:%d+:", "raised cases:N:")
    end
    for name, want in pairs(EXPECT) do
      assert.equal(want, got[name], name)
    end
  end)

  it("check new's arguments", function()
    assert.has_error(function() dict.new(4095) end,
      "bad argument #1 to 'new' (capacity of 4096..1073741824 bytes expected)")
    assert.has_error(function() dict.new(4096.0) end,
      "bad argument #1 to 'new' (capacity of 4096..1073741824 bytes expected)")
    assert.has_error(function() dict.new(4096, 5) end,
      "bad argument #2 to 'new' (function expected, got number)")
  end)
end)

-- Connections sending their lines at once, each to the end (then a FIN),
-- read until the server closes: the number of reply lines of each.
local function pipeline(srv, nconns, data, secs)
  local conns, state, left = {}, {}, nconns
  for i = 1, nconns do
    conns[i] = srv:connect(5)
    conns[i]:settimeout(0)
    state[conns[i]] = { sent = 0, lines = 0 }
  end
  local deadline = socket.gettime() + secs
  while left > 0 and socket.gettime() < deadline do
    local r, w = {}, {}
    for _, c in ipairs(conns) do
      local st = state[c]
      if not st.done then
        r[#r + 1] = c
        if st.sent < #data then w[#w + 1] = c end
      end
    end
    local readable, writable = socket.select(r, w, 1)
    for _, c in ipairs(writable) do
      local st = state[c]
      local last, _, partial = c:send(data, st.sent + 1)
      st.sent = math.max(st.sent, last or partial or st.sent)
      if st.sent == #data then c:shutdown("send") end
    end
    for _, c in ipairs(readable) do
      local st = state[c]
      local got, err, partial = c:receive(65536)
      st.lines = st.lines + select(2, (got or partial or ""):gsub("\n", ""))
      if err == "closed" then
        st.done, left = true, left - 1
        c:close()
      end
    end
  end
  local lines = {}
  for i, c in ipairs(conns) do
    lines[i] = state[c].lines
    c:close()
  end
  return lines
end

-- One command line, one reply line, on a connection of its own.
local function ask(srv, line)
  local c = srv:connect(5)
  assert(c:send(line .. "\n"))
  local reply, err = c:receive("*l")
  c:close()
  return reply or err
end

local function all_equal(list, want)
  for i, v in ipairs(list) do
    if v ~= want then
      return ("connection %d: %s"):format(i, tostring(v))
    end
  end
  return nil
end

-- Servers of a test: after it, a sanitizer report in a log fails it.
local started = {}

local function start(args)
  local srv = server.start(args)
  started[#started + 1] = srv
  return srv
end

local function stop_all()
  local reports = {}
  for _, srv in ipairs(started) do
    reports[#reports + 1] = srv:sanitizer_report()
    srv:stop()
  end
  started = {}
  assert.same({}, reports)
end

describe("scripts/counter.lua", function()
  after_each(stop_all)

  it("counts 1,000,000 pipelined incr from 100 connections on 2 workers", function()
    local srv = start({ "--workers", "2", "--handler", "scripts/counter.lua",
      "--access-log" })
    assert(srv:wait_children(2, 5))
    local lines = pipeline(srv, 100, ("incr k\n"):rep(10000), 15)
    assert.is_nil(all_equal(lines, 10000))
    assert.equal("1000000", ask(srv, "get k"))
    local served = {}     -- both workers counted
    for w in srv:log():gmatch("access: [^\n]* worker=(%d+)") do
      served[w] = (served[w] or 0) + 1
    end
    assert.truthy(served["0"] and served["1"], srv:log())
  end)

  it("counts exactly under --model fork", function()
    local srv = start({ "--model", "fork", "--handler", "scripts/counter.lua" })
    local lines = pipeline(srv, 20, ("incr k 3\nincr j\n"):rep(500), 10)
    assert.is_nil(all_equal(lines, 1000))
    assert.equal("30000", ask(srv, "get k"))
    assert.equal("10000", ask(srv, "get j"))
  end)

  it("answers each command, a line cut across chunks too", function()
    local srv = start({ "--workers", "1", "--handler", "scripts/counter.lua" })
    local c = srv:connect(5)
    finally(function() c:close() end)
    assert(c:send("set a hello\nget a\nset n 41\nin"))
    socket.sleep(0.05)
    assert(c:send("cr n\nincr a\ndel a\nget a\nset t 1 -1\nhello\n"))
    local want = { "ok", "hello", "ok", "42", "error: not a number", "ok", "nil",
                   "error: bad ttl", "error: unknown command" }
    for _, w in ipairs(want) do
      assert.equal(w, c:receive("*l"))
    end
  end)

  it("keeps the dictionary across SIGHUP", function()
    local srv = start({ "--workers", "2", "--handler", "scripts/counter.lua" })
    assert.equal("ok", ask(srv, "set kept 7"))
    assert.truthy(srv:signal("HUP"))
    assert.truthy(server.wait(function()
      return select(2, srv:log():gsub("version 2 loaded", "")) == 2
    end, 5))
    for i = 1, 10 do
      assert.equal(tostring(7 + i), ask(srv, "incr kept"))
    end
  end)

  it("keeps the dictionary when a worker is killed", function()
    local srv = start({ "--workers", "1", "--handler", "scripts/counter.lua" })
    local victim = assert(srv:wait_children(1, 5))[1]
    assert.equal("ok", ask(srv, "set kept 7"))
    os.execute("kill -KILL " .. victim)
    assert.truthy(server.wait(function()
      local now = srv:children()
      return #now == 1 and now[1] ~= victim
    end, 5))
    assert.equal("7", ask(srv, "get kept"))     -- from the new worker
  end)

  it("is as large as --shared-size", function()
    local srv = start({ "--workers", "1", "--handler", "scripts/counter.lua",
      "--shared-size", "4k" })
    assert.equal("ok", ask(srv, "set v " .. ("x"):rep(4047)))    -- 48 + 1 + 4047
    assert.equal("error: no memory", ask(srv, "set w 1"))
    assert.equal("ok", ask(srv, "del v"))
    assert.equal("ok", ask(srv, "set w 1"))
  end)
end)

describe("echohost --shared-size", function()
  local cases = {
    { "1t", "want bytes: a count, or with a suffix k, m or g" },
    { "", "want bytes: a count, or with a suffix k, m or g" },
    { "4095", "want 4k..1g" },
    { "1025m", "want 4k..1g" },
    { "2000g", "too large: at most 1024g" },
  }
  for _, case in ipairs(cases) do
    it("refuses '" .. case[1] .. "' with exit 2", function()
      local code, err = server.run({ "--shared-size", case[1], "--workers", "1" }, 5)
      assert.equal(2, code)
      assert.equal(("echohost: bad --shared-size '%s' (%s)"):format(case[1], case[2]),
        err:match("^[^\n]*"))
      assert.matches("Try 'echohost %-%-help'", err)
    end)
  end

  it("sizes the dictionary of --script too", function()
    local path = util.write_tmp('print(require("echohost.shared"):capacity())')
    finally(function() os.remove(path) end)
    for size, want in pairs({ ["4k"] = "4096", ["1g"] = "1073741824", ["5000"] = "5000" }) do
      local code, err, out = server.run({ "--shared-size", size, "--script", path }, 5)
      assert.equal(0, code, err)
      assert.equal(want .. "\n", out)
    end
    local code, _, out = server.run({ "--script", path }, 5)
    assert.equal(0, code)
    assert.equal("1048576\n", out)
  end)
end)
