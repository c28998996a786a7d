-- Helpers of the handler specs: start and stop an echohost server running a
-- handler, talk to it in steps, read its log, write handler files.
local server = require "helpers.server"
local util = require "helpers.util"

local M = {}

-- Servers and sockets a test opened: cleanup() (in after_each) closes and
-- stops them all. busted keeps only one finally() per test.
local open_servers, open_socks = {}, {}

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
  return util.tmpdir("/tmp/echohost-handler.XXXXXX")
end

function M.rmdir(dir)
  if os.getenv("KEEP_TMP") then
    return
  end
  if dir and dir:match("^/tmp/echohost%-handler%.") then
    os.execute("rm -rf '" .. dir .. "'")
  end
end

-- Polls pred() every 10 ms until it is true or secs pass: its value or nil.
M.wait_for = server.wait

-- Starts echohost with args (a list of strings) through the shared
-- helpers.server (port 0, learnt from the log). Returns a server:
-- { pid, port, log_text = function, stop = function }. stop fails the
-- test if the log holds a sanitizer report.
function M.start(args, opts)
  local s = server.start(args, opts)
  local srv = { pid = s.pid, port = s.port, server = s }
  open_servers[#open_servers + 1] = srv
  function srv.log_text()
    return s:log()
  end
  function srv.stop()
    local report = s:sanitizer_report()
    s:stop()
    assert(report == nil, report)
  end
  -- the server loads the handler once before it listens; workers and
  -- children start on that version
  return srv
end

-- Closes c (a LuaSocket object) in cleanup(); returns it.
function M.track(c)
  open_socks[#open_socks + 1] = c
  return c
end

-- Closes every tracked socket, then stops every server (a sanitizer report
-- in a server's log fails the test).
function M.cleanup()
  for _, c in ipairs(open_socks) do
    c:close()
  end
  open_socks = {}
  local servers = open_servers
  open_servers = {}
  for _, srv in ipairs(servers) do
    srv.stop()
  end
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
  local c = assert(require("socket").connect("127.0.0.1", port))
  c:settimeout(5)
  return M.track(c)
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
