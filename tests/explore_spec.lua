-- harness.explore (README "Exploring schedules"): the shipped scripts
-- reply the same whatever the cuts of their input and wherever the client
-- ends, and explore reports the smallest schedule a handler fails on.
local harness = require "echohost.harness"

-- The complete lines of s (with their newline).
local function lines_of(s)
  return s:match("^(.*\n)") or ""
end

-- check for explore: after the whole input and an EOF the handler sent
-- want; after an EOF or a timeout at offset at, what the prefix's
-- handler run gives; no run logs an error.
local function same_as_unsplit(handler, input, reply)
  local function want(prefix)
    return reply and reply(prefix) or harness.run(handler, { prefix, harness.CLOSE }).sent
  end
  local memo = {}
  return function(r)
    assert(r.error == nil, r.error)
    local key = r.event == "timeout" and #input or r.at
    if r.event ~= "reset" then
      memo[key] = memo[key] or want(input:sub(1, key))
      assert(r.sent == memo[key], ("sent %q, want %q"):format(r.sent, memo[key]))
    end
  end
end

describe("harness.explore over the shipped scripts", function()
  it("scripts/lines.lua replies the same lines whatever the cuts", function()
    local input = "ab\ncd\r\n\nlast"
    assert(harness.explore("scripts/lines.lua", input, same_as_unsplit("scripts/lines.lua",
      input, lines_of)))
  end)

  it("scripts/upper.lua and scripts/echo.lua send the input back, upper-cased or not", function()
    local input = "Hello,\nworld!"
    assert(harness.explore("scripts/upper.lua", input, same_as_unsplit("scripts/upper.lua",
      input, string.upper)))
    assert(harness.explore("scripts/echo.lua", input, same_as_unsplit("scripts/echo.lua",
      input, function(s) return s end)))
    assert(harness.explore("scripts/echo_co.lua", input, same_as_unsplit("scripts/echo_co.lua",
      input, function(s) return s end)))
  end)

  it("scripts/kv.lua and scripts/counter.lua answer each command whatever the cuts", function()
    local kv = "SET a 1\nGET a\nDEL a\nGET a\n"
    assert(harness.explore("scripts/kv.lua", kv, same_as_unsplit("scripts/kv.lua", kv)))
    local counter = "incr k\nincr k 5\nget k\n"
    assert(harness.explore("scripts/counter.lua", counter,
      same_as_unsplit("scripts/counter.lua", counter)))
  end)

  it("scripts/delay.lua and scripts/chat.lua give back each line whatever the cuts", function()
    local input = "one\ntwo\nthree"
    assert(harness.explore("scripts/delay.lua", input, same_as_unsplit("scripts/delay.lua",
      input, function(s) return (s:gsub("\n", "\n")) end)))
    assert(harness.explore("scripts/chat.lua", input, same_as_unsplit("scripts/chat.lua",
      input, lines_of)))
  end)

  it("covers a long input with every single cut, double cuts and random ones", function()
    local input = ("line %d\n"):rep(3):format(1, 2, 3) .. ("x"):rep(40) .. "\n"
    local runs, cut_counts = 0, {}
    local ok, n = harness.explore("scripts/lines.lua", input, function(r)
      runs = runs + 1
      if r.event == "eof" and r.at == #input then
        cut_counts[#r.cuts] = (cut_counts[#r.cuts] or 0) + 1
        assert.equal(input, r.sent)
      end
    end, { max_runs = 3000, random = 100 })
    assert.is_true(ok, n)
    assert.equal(runs, n)
    assert.equal(#input - 1, cut_counts[1])            -- every single cut
    assert.equal((#input - 1) * (#input - 2) // 2, cut_counts[2])   -- every double one
    local more = 0
    for k, c in pairs(cut_counts) do
      if k > 2 then more = more + c end
    end
    assert.is_true(more > 50, "random schedules: " .. more)
  end)
end)

describe("harness.explore", function()
  -- replies with each chunk's complete lines only: right when unsplit
  local WHOLE_LINES = function(_, data) return data:match("^.*\n") end

  it("reports the smallest failing schedule and check's message", function()
    local ok, report = harness.explore(WHOLE_LINES, "a\nb\n", function(r)
      if r.event == "eof" and r.at == 4 then
        assert(r.sent == "a\nb\n", ("sent %q"):format(r.sent))
      end
    end)
    assert.is_false(ok)
    assert.equal('explore: 6 of 36 runs failed; the smallest schedule: "a", "\\nb\\n", '
      .. 'harness.CLOSE\n', report:match("^[^\n]*\n"))
    assert.truthy(report:find('sent "\\\nb\\\n"', 1, true), report)
  end)

  it("counts a check that returns false as a failure, with its message", function()
    local ok, report = harness.explore("scripts/echo.lua", "ab", function(r)
      return r.event ~= "reset", "reset at " .. r.at
    end)
    assert.is_false(ok)
    assert.truthy(report:find("^explore: 6 of %d+ runs failed; the smallest schedule: "
      .. "harness.RESET\nreset at 0$"), report)
  end)

  it("runs every way to cut a short input, each once", function()
    local seen = {}
    assert(harness.explore("scripts/echo.lua", "abcde", function(r)
      if r.event == "eof" and r.at == 5 then
        local key = table.concat(r.cuts, ",")
        assert.is_nil(seen[key])
        seen[key] = true
      end
    end))
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.equal(16, n)           -- 2^4 sets of cuts
  end)

  it("raises on misuse", function()
    assert.has_error(function() harness.explore("scripts/echo.lua", 42, print) end,
      "bad argument #2 to 'explore' (string expected, got number)")
    assert.has_error(function() harness.explore("scripts/echo.lua", "x") end,
      "bad argument #3 to 'explore' (function expected, got nil)")
  end)
end)
