-- echohost.proc: fork (glue identity values), waitpid, kill, getpid, exit.
local proc = require "echohost.proc"
local glue = require "echohost.glue"
local socket = require "echohost.socket"

local ECHILD, ESRCH = 10, 3
local util = require "helpers.util"
local BIN = require("helpers.server").BIN

-- Runs fn in a child that exits with fn's result (default 0; 99 if fn
-- raised); returns the child's pid.
local function spawn(fn)
  local id = assert(proc.fork())
  return glue.match(id, {
    Parent = function(pid) return pid end,
    Child = function()
      local ok, code = pcall(fn)
      proc.exit(ok and (code or 0) or 99)
    end,
  })
end

-- A child that waits (at most 10 s) for a connection that never comes.
local function spawn_blocked()
  local srv = assert(socket.open_socket("127.0.0.1", 0))
  assert(srv:listen())
  local pid = spawn(function()
    srv:settimeout(10)
    srv:accept_connection()
    return 0
  end)
  srv:close()
  return pid
end

-- Runs a Lua chunk with `echohost --script`; returns its stdout and how it
-- exited (as io.popen's close does).
local function run_script(code)
  local path = util.write_tmp(code)
  local p = assert(io.popen(BIN .. " --script " .. path .. " 2>&1"))
  local out = p:read("a")
  local _, how, status = p:close()
  os.remove(path)
  return out, how, status
end

describe("echohost.proc", function()
  describe("fork", function()
    it("returns (Parent pid) in the parent and Child in the child", function()
      local parent = proc.getpid()
      local id = assert(proc.fork())
      if glue.ctor(id) == "Child" then
        local ok = tostring(id) == "Child" and proc.getpid() ~= parent
        proc.exit(ok and 42 or 1)
      end
      local pid = glue.match(id, {Parent = function(p) return p end})
      assert.equal("Parent", glue.ctor(id))
      assert.equal(("(Parent %d)"):format(pid), tostring(id))
      assert.same({"exited", 42, pid}, {proc.waitpid(pid)})
    end)

    it("flushes buffered output first, so it is not written twice", function()
      local out, how, status = run_script([[
        local proc, glue = require "echohost.proc", require "echohost.glue"
        io.write("once ")
        local id = proc.fork()
        if glue.ctor(id) == "Child" then proc.exit(0) end
        proc.waitpid(glue.match(id, {Parent = function(p) return p end}))
        io.write("done")
      ]])
      assert.equal("once done", out)
      assert.same({"exit", 0}, {how, status})
    end)
  end)

  describe("waitpid", function()
    it("returns 'exited', the exit code and the pid", function()
      for _, code in ipairs({0, 3, 255}) do
        local pid = spawn(function() return code end)
        assert.same({"exited", code, pid}, {proc.waitpid(pid)})
      end
    end)

    it("returns 'signaled', the signal's name and the pid", function()
      local pid = spawn_blocked()
      assert.is_true(proc.kill(pid, "TERM"))
      assert.same({"signaled", "SIGTERM", pid}, {proc.waitpid(pid)})
      pid = spawn_blocked()
      assert.is_true(proc.kill(pid, 9))
      assert.same({"signaled", "SIGKILL", pid}, {proc.waitpid(pid)})
    end)

    it("with 'nohang' returns 'running' while the child runs", function()
      local pid = spawn_blocked()
      assert.same({"running", nil, pid}, {proc.waitpid(pid, "nohang")})
      proc.kill(pid, "SIGUSR1")
      assert.same({"signaled", "SIGUSR1", pid}, {proc.waitpid(pid)})
    end)

    it("with pid -1 reaps any child", function()
      local pid = spawn(function() return 7 end)
      assert.same({"exited", 7, pid}, {proc.waitpid(-1)})
    end)

    it("returns nil, message, ECHILD for a process that is not a child", function()
      local pid = spawn(function() return 0 end)
      proc.waitpid(pid)
      assert.same({nil, ("waitpid %d: No child processes"):format(pid), ECHILD},
        {proc.waitpid(pid)})
      assert.same({nil, ("waitpid %d: No child processes"):format(pid), ECHILD},
        {proc.waitpid(pid, "nohang")})
    end)

    it("raises on a bad pid or option", function()
      assert.has_error(function() proc.waitpid("me") end,
        "bad argument #1 to 'waitpid' (number expected, got string)")
      assert.has_error(function() proc.waitpid(1, "sometimes") end,
        "bad argument #2 to 'waitpid' (invalid option 'sometimes')")
      assert.has_error(function() proc.waitpid(2 ^ 40 // 1) end,
        "bad argument #1 to 'waitpid' (pid out of range)")
    end)
  end)

  describe("kill", function()
    it("returns true; signal 0 only checks the process exists", function()
      local pid = spawn_blocked()
      assert.is_true(proc.kill(pid, 0))
      assert.is_true(proc.kill(pid))          -- TERM by default
      assert.same({"signaled", "SIGTERM", pid}, {proc.waitpid(pid)})
    end)

    it("returns nil, message, ESRCH for a process that is gone", function()
      local pid = spawn(function() return 0 end)
      proc.waitpid(pid)
      assert.same({nil, ("kill %d: No such process"):format(pid), ESRCH},
        {proc.kill(pid, "TERM")})
    end)

    it("raises on an unknown signal", function()
      assert.has_error(function() proc.kill(1, "FOO") end,
        "bad argument #2 to 'kill' (unknown signal 'FOO')")
      assert.has_error(function() proc.kill(1, 999) end,
        "bad argument #2 to 'kill' (unknown signal)")
      assert.has_error(function() proc.kill(nil) end,
        "bad argument #1 to 'kill' (number expected, got nil)")
    end)
  end)

  describe("getpid", function()
    it("returns this process's id", function()
      local f = assert(io.open("/proc/self/stat"))
      local pid = tonumber(f:read("a"):match("^(%d+)"))
      f:close()
      assert.equal(pid, proc.getpid())
    end)
  end)

  describe("exit", function()
    it("ends the process with the code; true is 0, false is 1", function()
      local pid = spawn(function() proc.exit(true) end)
      assert.same({"exited", 0, pid}, {proc.waitpid(pid)})
      pid = spawn(function() proc.exit(false) end)
      assert.same({"exited", 1, pid}, {proc.waitpid(pid)})
      pid = spawn(function() proc.exit() end)
      assert.same({"exited", 0, pid}, {proc.waitpid(pid)})
    end)

    it("flushes buffered output", function()
      local out, how, status = run_script(
        'io.write("buffered"); require("echohost.proc").exit(4)')
      assert.equal("buffered", out)
      assert.same({"exit", 4}, {how, status})
    end)

    it("raises on a code out of range", function()
      assert.has_error(function() proc.exit(256) end,
        "bad argument #1 to 'exit' (code out of range 0..255)")
      assert.has_error(function() proc.exit(-1) end,
        "bad argument #1 to 'exit' (code out of range 0..255)")
    end)
  end)
end)
