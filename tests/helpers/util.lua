-- Test helper: small file, shell and temporary-file utilities the specs
-- share (shell quoting and the binary's path are in helpers.server).
--
--   local util = require "helpers.util"
--   util.slurp(path)           the whole file (raises if it cannot open it)
--   util.spit(path, s)         writes s as the whole file
--   util.write_tmp(s)          writes s to a new os.tmpname(); its path
--   util.tmpname(template)     mktemp [template]: a new empty file's path
--   util.tmpdir(template)      mktemp -d [template]: a new directory's path
--   util.realpath(path)        the absolute path (path if realpath fails)
--   util.tool(name)            ECHOHOST_BUILD/name if it exists, else
--                              build/name (a tool built beside echohost)
--   util.run(cmdline)          runs a shell command line: its output
--                              (stdout and stderr) and exit status
--   util.pipe(cmd, input)      runs `timeout 10 cmd` with input on stdin:
--                              stdout, stderr, exit status
local server = require "helpers.server"

local M = {}

local q = server.quote

function M.slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function M.spit(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

function M.write_tmp(s)
  local path = os.tmpname()
  M.spit(path, s)
  return path
end

local function first_line(cmd)
  local p = io.popen(cmd)
  local line = p:read("l")
  p:close()
  return line
end

function M.tmpname(template)
  return first_line("mktemp" .. (template and " " .. q(template) or ""))
end

function M.tmpdir(template)
  return first_line("mktemp -d" .. (template and " " .. q(template) or ""))
end

function M.realpath(path)
  return first_line("realpath " .. q(path)) or path
end

function M.tool(name)
  local build = os.getenv("ECHOHOST_BUILD") or "build"
  local f = io.open(build .. "/" .. name, "r")
  if f then
    f:close()
    return build .. "/" .. name
  end
  return "build/" .. name
end

function M.run(cmdline)
  local p = assert(io.popen(cmdline .. " 2>&1"))
  local out = p:read("a")
  local _, _, status = p:close()
  return out, status
end

function M.pipe(cmd, input)
  local inp, out, err = os.tmpname(), os.tmpname(), os.tmpname()
  M.spit(inp, input)
  local _, _, code = os.execute(string.format("timeout 10 %s < %s > %s 2> %s",
    cmd, q(inp), q(out), q(err)))
  local o, e = M.slurp(out), M.slurp(err)
  os.remove(inp); os.remove(out); os.remove(err)
  return o, e, code
end

return M
