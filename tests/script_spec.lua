-- echohost --script FILE.lua [ARGS...]: arg as lua sets it, the echohost
-- modules preloaded, errors with a traceback and exit status 1.
local util = require "helpers.util"

local BIN = require("helpers.server").BIN
local write_tmp, run = util.write_tmp, util.run

-- Runs code as a script file with the given argument string.
local function script(code, args)
  local path = write_tmp(code)
  local out, status = run(("%s --script %s %s"):format(BIN, path, args or ""))
  os.remove(path)
  return out, status, path
end

describe("echohost --script", function()
  it("sets arg as lua does and passes the arguments as varargs", function()
    local out, status, path = script([[
      io.write(arg[-2], "|", arg[-1], "|", arg[0], "|", arg[1], "|", arg[2], "|",
               tostring(arg[3]), "|", select("#", ...), "|", table.concat({...}, ","), "\n")
    ]], "one 'two words'")
    assert.equal(0, status)
    assert.equal(("%s|--script|%s|one|two words|nil|2|one,two words\n"):format(BIN, path), out)
  end)

  it("has the echohost modules preloaded, not loaded from a path", function()
    local out, status = script([[
      package.cpath = ""
      local socket, proc = require "echohost.socket", require "echohost.proc"
      local s <close> = assert(socket.open_socket("127.0.0.1", 0))
      io.write(tostring(s):match("^echohost.socket %(fd %d+%)$") and "ok " or "bad ",
               math.type(proc.getpid()))
    ]])
    assert.equal(0, status)
    assert.equal("ok integer", out)
  end)

  -- lhost.c keeps freed blocks of 1-4 KiB for reuse by size class: strings
  -- and tables that grow and shrink through the classes keep their bytes.
  it("keeps every string's and table's contents while its state reuses freed blocks", function()
    local out, status = script([[
      local function fill(n, seed)
        local t = {}
        for i = 1, n do t[i] = string.char(65 + (i * 7 + seed) % 26) end
        return table.concat(t)
      end
      local kept, bad = {}, 0
      for round = 1, 20 do
        local drop = {}
        for n = 1000, 4200, 37 do
          local s = fill(n, round + n)
          if n % 2 == 0 then kept[#kept + 1] = { s, n, round + n } else drop[#drop + 1] = s end
        end
        local t = {}
        for i = 1, 600 do t[i] = i * round end     -- array: 1 KiB ... 16 KiB
        for i = 600, 1, -1 do if t[i] ~= i * round then bad = bad + 1 end; t[i] = nil end
        drop, t = nil, nil
        collectgarbage()
      end
      for _, k in ipairs(kept) do
        if k[1] ~= fill(k[2], k[3]) then bad = bad + 1 end
      end
      io.write(#kept, " kept, ", bad, " bad")
    ]])
    assert.equal(0, status)
    assert.equal("880 kept, 0 bad", out)
  end)

  it("prints an error with a traceback and exits 1", function()
    local out, status, path = script("local x = nil\nerror('boom')\n")
    assert.equal(1, status)
    local head = ("echohost: %s:2: boom\nstack traceback:\n"):format(path)
    assert.equal(head, out:sub(1, #head))
    assert.truthy(out:find(path .. ":2: in main chunk", 1, true))
  end)

  it("reports an error object that is not a string", function()
    local out, status = script("error({})")
    assert.equal(1, status)
    assert.equal("echohost: (error object is a table value)\n",
      out:match("^[^\n]*\n"))
  end)

  it("reports a syntax error and exits 1", function()
    local out, status, path = script("x = = 1")
    assert.equal(1, status)
    assert.equal(("echohost: %s:1: unexpected symbol near '='\n"):format(path), out)
  end)

  it("reports a missing file and exits 1", function()
    local out, status = run(BIN .. " --script /nonexistent/none.lua")
    assert.equal(1, status)
    assert.equal("echohost: cannot open /nonexistent/none.lua: No such file or directory\n", out)
  end)

  it("exits with os.exit's status", function()
    local _, status = script("os.exit(3)")
    assert.equal(3, status)
  end)

  it("reads the script from stdin for '-'", function()
    local out, status = run(("echo 'print(arg[0], ...)' | %s --script - a b"):format(BIN))
    assert.equal(0, status)
    assert.equal("-\ta\tb\n", out)
  end)

  it("takes --script=FILE too", function()
    local path = write_tmp("print(arg[0], arg[-1] ~= nil)")
    local out, status = run(("%s --script=%s"):format(BIN, path))
    os.remove(path)
    assert.equal(0, status)
    assert.equal(path .. "\ttrue\n", out)
  end)
end)

-- echohost-lua: lua5.4's command line (Lua's own suite, tests/suites/lua_tests.sh,
-- runs it in full); here what echohost adds to it or must keep equal.
local LUA = util.realpath(util.tool("echohost-lua"))
local q = require("helpers.server").quote
local NOENV = "env -u LUA_INIT -u LUA_INIT_5_4 -u LUA_PATH -u LUA_PATH_5_4 -u LUA_CPATH "
  .. "-u LUA_CPATH_5_4 "

-- Runs the interpreter with the words of args (quoted) and stdin from input.
local function lua_run(bin, args, input)
  local words = {}
  for i, a in ipairs(args) do words[i] = q(a) end
  local stdin = write_tmp(input or "")
  local out, status = util.run(("%s%s %s <%s"):format(NOENV, bin, table.concat(words, " "),
    q(stdin)))
  os.remove(stdin)
  return out, status
end

describe("echohost-lua", function()
  it("is the program echohost --script runs", function()
    local cases = {
      {}, { "-v" }, { "-i" }, { "-e", "print(1, #arg, arg[0] == arg[-2])" }, { "-" },
      { "-", "x", "y" },
      { "-e", "warn'not shown'", "-W", "-e", "warn('sh', 'own')" },
      { "-l", "h=echohost.harness", "-e", "print(type(h.run))" },
      { "-e", "error('boom')" }, { "-x" }, { "-e" }, { "-l" }, { "--", "-" },
      { "-E", "-e", "print(package.path == " .. ("%q"):format(package.path) .. ")" },
    }
    for _, case in ipairs(cases) do
      local out, status = lua_run(LUA, case, "print(...)")
      local sout, sstatus = lua_run(BIN .. " --script", case, "print(...)")
      out = out:gsub(LUA:gsub("%p", "%%%0"), "P")
      sout = sout:gsub("echohost %-%-script", "P"):gsub("echohost:", "P:")
      assert.equal(out, sout, table.concat(case, " "))
      assert.equal(status, sstatus, table.concat(case, " "))
    end
  end)

  it("warns as lua5.4 does: off at first, @on and @off, 'Lua warning: '", function()
    local out, status = lua_run(LUA, { "-e", [[
      warn("a"); warn("@on"); warn("b", "c"); warn("@x"); warn("@off"); warn("d")
      warn("@on"); warn("@off", "e")]] })
    assert.equal(0, status)
    assert.equal("Lua warning: bc\nLua warning: @offe\n", out)
  end)

  it("raises 'interrupted!' at SIGINT, so __close and __gc run", function()
    local path = write_tmp([[
      setmetatable({}, { __gc = function() print("gc") end })
      local x <close> = setmetatable({}, { __close = function() print("closed") end })
      print(require("echohost.proc").getpid())        -- print flushes
      local t = os.time()
      while os.time() - t < 20 do end
      print("not interrupted")
    ]])
    local p = io.popen(("exec %s %s 2>&1"):format(LUA, path))
    local pid = p:read("l")
    assert.truthy(pid:match("^%d+$"), pid)
    assert.is_true(os.execute("kill -INT " .. pid))
    local rest = p:read("a")
    local _, _, status = p:close()
    os.remove(path)
    assert.equal(1, status)
    -- "path:line: " when SIGINT came in the chunk (not in a C function)
    local head = rest:match("^[^\n]*\n[^\n]*\n"):gsub(": [^ ]+:%d+: interrupted!",
      ": interrupted!")
    assert.equal(("closed\n%s: interrupted!\n"):format(LUA), head)
    assert.equal("gc\n", rest:sub(-3))
  end)

  it("runs LUA_INIT_5_4, else LUA_INIT, unless -E; so does echohost --script", function()
    for _, bin in ipairs({ LUA, BIN .. " --script" }) do
      local out = util.run(("env LUA_INIT='X=1' %s -e 'print(X)'"):format(bin))
      assert.equal("1\n", out)
      out = util.run(("env LUA_INIT='X=1' LUA_INIT_5_4='X=2' %s -e 'print(X)'"):format(bin))
      assert.equal("2\n", out)
      out = util.run(("env LUA_INIT='X=1' %s -E -e 'print(X)'"):format(bin))
      assert.equal("nil\n", out)
    end
  end)

  it("collects in generational mode", function()
    local out = lua_run(LUA, { "-e", "print(collectgarbage('incremental'))" })
    assert.equal("generational\n", out)
  end)

  local modules = [[
    for _, m in ipairs({ "socket", "proc", "glue", "shared", "log", "pubsub", "loader", "conn",
                         "dict", "harness", "tcp_srv", "pretty", "bus" }) do
      io.write(m, "=", type(require("echohost." .. m)), " ")
    end
    local h = require("echohost.harness").run(function(_, d) return d:upper() end, { "hi" })
    print(h.sent)
  ]]
  local want = "socket=table proc=table glue=table shared=userdata log=table pubsub=table "
    .. "loader=table conn=table dict=table harness=table tcp_srv=table pretty=table bus=table HI\n"

  it("finds every echohost module with no LUA_PATH, from the build tree", function()
    local out, status = util.run(("cd / && %s%s -e %s"):format(NOENV, LUA, q(modules)))
    assert.equal(0, status)
    assert.equal(want, out)
  end)

  it("is installed by make install, and finds the modules there too", function()
    local prefix = util.tmpdir()
    finally(function() os.execute("rm -rf " .. q(prefix)) end)
    local build = os.getenv("ECHOHOST_BUILD") or "build"
    -- -o all: install what this build holds, remaking nothing (the build
    -- may be build/asan/, made with other flags)
    local log, status = util.run(("make -s --no-print-directory -o all install PREFIX=%s BUILD=%s")
      :format(q(prefix), q(build)))
    assert.equal(0, status, log)
    local out
    out, status = util.run(("cd / && %s%s/bin/echohost-lua -e %s"):format(NOENV, q(prefix),
      q(modules)))
    assert.equal(0, status)
    assert.equal(want, out)
  end)
end)

describe("echohost --test", function()
  local spec = [[
    local harness = require "echohost.harness"
    describe("handler.lua", function()
      it("runs under Lua 5.4", function() assert.equal("Lua 5.4", _VERSION) end)
      it("upper-cases", function()
        assert.equal("HI", harness.run("handler.lua", { "hi" }).sent)
      end)
    end)
  ]]
  local failing = [[
    local harness = require "echohost.harness"
    it("fails on purpose", function()
      assert.equal("hi", harness.open("handler.lua"):input("hi"))
    end)
  ]]

  local bin = util.realpath(BIN)

  -- A user's folder: handler.lua and spec/, nothing else.
  local function project(specs)
    local dir = util.tmpdir()
    finally(function() os.execute("rm -rf " .. q(dir)) end)
    util.spit(dir .. "/handler.lua", "return function(conn, data) return data:upper() end\n")
    assert(os.execute("mkdir " .. q(dir .. "/spec")))
    for name, text in pairs(specs) do util.spit(dir .. "/spec/" .. name, text) end
    return dir
  end

  it("runs the folder's spec/ under Lua 5.4 with the echohost modules", function()
    local dir = project({ ["handler_spec.lua"] = spec })
    local out, status = util.run(("cd %s && %s --test"):format(q(dir), bin))
    assert.equal(0, status, out)
    assert.truthy(out:find("\n2 successes / 0 failures / 0 errors / 0 pending", 1, true), out)
  end)

  it("exits 1 when a spec fails, naming it; busted's arguments pass through", function()
    local dir = project({ ["handler_spec.lua"] = spec, ["fail_spec.lua"] = failing })
    local out, status = util.run(("cd %s && %s --test"):format(q(dir), bin))
    assert.equal(1, status, out)
    assert.truthy(out:find("\n2 successes / 1 failure / 0 errors / 0 pending", 1, true), out)
    assert.truthy(out:find("Failure -> spec/fail_spec.lua @ 2\nfails on purpose\n", 1, true), out)
    out, status = util.run(("cd %s && %s --test -o TAP --filter=upper"):format(q(dir), bin))
    assert.equal(0, status, out)
    assert.equal("ok 1 - handler.lua upper-cases\n1..1\n", out)
  end)

  it("ignores the lua of a .busted (no surprise Lua 5.1)", function()
    local dir = project({ ["handler_spec.lua"] = spec })
    util.spit(dir .. "/.busted", 'return { _all = { lua = "lua5.1" } }\n')
    local out, status = util.run(("cd %s && %s --test -o TAP"):format(q(dir), bin))
    assert.equal(0, status, out)
    assert.equal("ok 1 - handler.lua runs under Lua 5.4\nok 2 - handler.lua upper-cases\n1..2\n",
      out)
  end)

  it("says so when busted is not on PATH", function()
    local out, status = util.run(("PATH=/nonexistent %s --test"):format(bin))
    assert.equal(1, status)
    assert.equal("echohost: --test needs busted on PATH (Debian: apt-get install lua-busted)\n",
      out)
  end)
end)
