-- Faults in a handler are contained: an erroring, a looping and a memory-
-- hungry handler each close their own connection (logged), the other
-- connections keep working, and the worker lives on.
local util = require "helpers.handler_util"

-- Echoes, except for three commands that misbehave.
local body = [[
  if data == "error\n" then
    error("deliberate failure")
  elseif data == "loop\n" then
    while true do end
  elseif data == "eat\n" then
    local t = {}
    while true do
      t[#t + 1] = string.rep("x", 4096) .. #t
    end
  end
]]

local forms = {
  ["per-message function"] = "return function(conn, data)\n" .. body .. "  return data\nend\n",
  ["direct-style coroutine"] = "return { handle = function(conn)\n  while true do\n"
    .. "    local data = conn:recv()\n    if not data then break end\n"
    .. body:gsub("\n  ", "\n      ") .. "    conn:send(data)\n  end\nend }\n",
}

local faults = {
  { cmd = "error\n", log = "deliberate failure", traceback = true },
  { cmd = "loop\n", log = "instruction budget exceeded", traceback = true },
  { cmd = "eat\n", log = "not enough memory" },
}

local function roundtrip(c, msg)
  assert(c:send(msg))
  return c:receive(#msg)
end

for name, source in pairs(forms) do
  for _, model in ipairs({ "event", "fork" }) do
    describe(name .. " under --model " .. model, function()
      local dir, file
      setup(function()
        dir = util.tmpdir()
        file = dir .. "/faulty.lua"
        util.write_file(file, source)
      end)
      teardown(function() util.rmdir(dir) end)
      after_each(util.cleanup)

      for _, f in ipairs(faults) do
        it("contains '" .. f.log .. "'", function()
          local srv = util.start({ "--model", model, "--workers", "1", "--lua-mem", "8m",
                                   "--lua-budget", "2000000", "--handler", file })
          local good = {}
          for i = 1, 3 do
            good[i] = util.connect(srv.port)
            assert.equal("hi " .. i, roundtrip(good[i], "hi " .. i))
          end
          for _ = 1, 2 do       -- twice: the first fault left nothing behind
            local bad = util.connect(srv.port)
            assert.equal("ok\n", roundtrip(bad, "ok\n"))
            assert(bad:send(f.cmd))
            local rest, err = util.read_all(bad)
            assert.equal("", rest)
            assert.is_nil(err)
            for i, c in ipairs(good) do
              assert.equal("still " .. i, roundtrip(c, "still " .. i))
            end
          end
          assert.truthy(util.wait_for(function()
            return srv.log_text():find(f.log, 1, true)
          end, 5))
          if f.traceback then
            assert.matches("stack traceback", srv.log_text())
          end
          local fresh = util.connect(srv.port)
          assert.equal("new", roundtrip(fresh, "new"))
        end)
      end
    end)
  end
end
