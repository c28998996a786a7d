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
