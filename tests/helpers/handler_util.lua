-- Helpers of the handler specs: start and stop an echohost server running a
-- handler, talk to it in steps, read its log, write handler files.
local socket = require "socket"

local M = {}

M.BIN = os.getenv("ECHOHOST_BIN") or "build/echohost"

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return ""
  end
  local s = f:read("a")
  f:close()
  return s
end
M.read_file = read_file

-- Writes text to path atomically (write a temporary file, rename it over
-- path), as editors do.
function M.write_file(path, text)
  local tmp = path .. ".tmp"
  local f = assert(io.open(tmp, "wb"))
  f:write(text)
  f:close()
  assert(os.rename(tmp, path))
end

function M.tmpdir()
  local p = io.popen("mktemp -d /tmp/echohost-handler.XXXXXX")
  local dir = p:read("l")
  p:close()
  return dir
end

function M.rmdir(dir)
  if os.getenv("KEEP_TMP") then return end
  if dir and dir:match("^/tmp/echohost%-handler%.") then
    sh("rm -rf '" .. dir .. "'")
  end
end

-- A port free right now (bound, then released).
local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function alive(pid)
  return sh("kill -0 " .. pid .. " 2>/dev/null")
end

-- Polls pred() every 10 ms until it is true or secs pass. Returns its value.
function M.wait_for(pred, secs)
  local deadline = socket.gettime() + (secs or 5)
  repeat
    local v = pred()
    if v then
      return v
    end
    socket.sleep(0.01)
  until socket.gettime() > deadline
  return pred()
end

-- Starts echohost with args (a list of strings) on a free port. Returns a
-- server: { pid, port, log = path, stop = function }.
function M.start(args, dir)
  local port = free_port()
  local log = dir .. "/server.log"
  local cmd = { "exec", M.BIN, "--listen", "127.0.0.1:" .. port }
  for _, a in ipairs(args) do
    cmd[#cmd + 1] = "'" .. a .. "'"
  end
  local p = io.popen(table.concat(cmd, " ") .. " >" .. log .. " 2>&1 & echo $!")
  local pid = assert(tonumber(p:read("l")))
  p:close()
  local srv = { pid = pid, port = port, log = log }
  function srv.stop()
    if alive(pid) then
      sh("kill -TERM " .. pid)
      if not M.wait_for(function() return not alive(pid) end, 5) then
        sh("kill -KILL " .. pid)
      end
    end
  end
  function srv.log_text()
    return read_file(log)
  end
  local up = M.wait_for(function()
    local c = socket.connect("127.0.0.1", port)
    if c then
      c:close()
      return true
    end
    return not alive(pid)
  end, 5)
  if not up or not alive(pid) then
    srv.stop()
    error("echohost did not start: " .. read_file(log))
  end
  -- event model with a handler: ready once every worker has loaded it
  local opt = {}
  for i = 1, #args - 1 do
    opt[args[i]] = args[i + 1]
  end
  if opt["--handler"] and opt["--model"] ~= "fork" then
    local workers = tonumber(opt["--workers"] or "1")
    if not M.wait_for(function() return M.count(srv, "version 1 loaded") >= workers end, 5) then
      srv.stop()
      error("echohost workers did not load the handler: " .. read_file(log))
    end
  end
  return srv
end

-- How many times pattern occurs in the server's log.
function M.count(srv, pattern)
  local n = 0
  for _ in srv.log_text():gmatch(pattern) do
    n = n + 1
  end
  return n
end

function M.connect(port)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(5)
  return c
end

-- Reads exactly n bytes (bounded by the socket's timeout).
function M.read_n(c, n)
  local data, err, partial = c:receive(n)
  return data or partial, err
end

-- Reads until the server closes; returns the bytes, or the bytes and an
-- error ("timeout") if it did not close.
function M.read_all(c)
  local data, err, partial = c:receive("*a")
  if err == "closed" then         -- LuaSocket says so when nothing came
    err = nil
  end
  return data or partial, err
end

return M
