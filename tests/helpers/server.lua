-- Test helper: start build/echohost on a loopback port 0, learn the port
-- from its log, talk to it, stop it by PID. Shared by the server specs.
--
--   local server = require "helpers.server"
--   local srv = server.start({"--workers", "1"})   -- adds --listen 127.0.0.1:0
--   server.start(args, {nofile = 32, timeout = 10, env = {K = "v"}})
--                              -- ulimit -n, start wait, environment
--   server.start(args, {log = path})   the server logs to path (--log):
--                              log() and wait_log() read it, and stderr()
--                              what went to stderr
--   server.start(args, {wrap = {"tool", "--"}})   exec tool ... BIN args
--                              (a tool that execs echohost: the pid stays)
--   finally(function() srv:stop() end)
--   srv.pid, srv.host, srv.port, srv.addr ("127.0.0.1:40123"), srv.log_path
--                              (of the first --listen)
--   srv.listeners              every listener as the log names it, in
--                              --listen order: {"127.0.0.1:40123",
--                              "udp://[::1]:39000", ...}
--   server.split(name)         "udp://[::1]:7" -> "udp", "::1", 7;
--                              "unix:/run/x.sock" -> "unix", "/run/x.sock"
--   srv:log()                  stderr so far (a string)
--   srv:wait_log(pat, secs)    first capture of pat in the log, or nil
--   srv:children()             pids whose parent is the server (workers)
--   srv:wait_children(n, secs) the children once there are n, or nil
--   srv:signal("TERM")         kill -TERM pid; true if delivered
--   srv:wait_exit(secs)        exit code once it exited, or nil (timeout)
--   srv:stop()                 TERM, wait 8 s, then KILL; returns the code
--   srv:connect(timeout)       a connected LuaSocket tcp object
--   srv:sanitizer_report()     an ASan/UBSan report in the log, or nil
--   server.stop_all()          stops every server started and still up
--                              (busted keeps one finally() per test: use
--                              this in after_each / teardown)
--
--   server.run(args, secs)     run echohost to completion:
--                              code, stderr, stdout
--   server.exchange(c, data, opts)  on a connected socket: send data while
--                              reading the echo at the same time; returns
--                              what came back, and "closed" if the server
--                              closed (opts: half_close, timeout, from, want)
--   server.echo(host, port, data, opts)  connect, exchange, close
--   server.rss_kb(pid), server.ppid(pid), server.state(pid),
--   server.cpu_ticks(pid)      from /proc
--   server.wait(pred, secs)    poll pred every 10 ms; its value or nil
--   server.sleep(secs)
--   server.BIN                 ECHOHOST_BIN or "build/echohost"
--   server.quote(s)            s quoted for sh (single quotes)
local socket = require "socket"

local M = {}

M.BIN = os.getenv("ECHOHOST_BIN") or "build/echohost"

function M.sleep(secs)
  socket.sleep(secs)
end

function M.wait(pred, secs)
  local deadline = socket.gettime() + (secs or 5)
  repeat
    local v = pred()
    if v then
      return v
    end
    socket.sleep(0.01)
  until socket.gettime() > deadline
  return nil
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s
end

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = quote

local function command(args)
  local parts = { quote(M.BIN) }
  for _, a in ipairs(args) do
    parts[#parts + 1] = quote(a)
  end
  return table.concat(parts, " ")
end

-- /proc/<pid>/stat fields after the command name: state, ppid, ...
local function stat(pid)
  local s = read_file("/proc/" .. pid .. "/stat")
  if not s then
    return nil
  end
  local state, ppid = s:match("%) (%S) (%d+)")
  return state, tonumber(ppid)
end

function M.state(pid)
  return (stat(pid))
end

function M.ppid(pid)
  local _, ppid = stat(pid)
  return ppid
end

-- CPU time (user + system) of pid in clock ticks.
function M.cpu_ticks(pid)
  local s = read_file("/proc/" .. pid .. "/stat")
  if not s then
    return nil
  end
  local rest = s:match("%) (.*)")
  local f = {}
  for x in rest:gmatch("%S+") do
    f[#f + 1] = x
  end
  return tonumber(f[12]) + tonumber(f[13])   -- utime, stime (fields 14, 15)
end

function M.rss_kb(pid)
  local s = read_file("/proc/" .. pid .. "/status")
  return s and tonumber(s:match("VmRSS:%s*(%d+)"))
end

-- Pids whose parent is pid: /proc/<pid>/task/<pid>/children, else a scan
-- of /proc (no ps: under ASan's LD_PRELOAD it hangs).
-- Whether pid exited: gone, or a zombie (an old master's parent may be an
-- init that does not reap).
function M.gone(pid)
  local st = M.state(pid)
  return st == nil or st == "Z"
end

-- The pid a pid file holds ("PID\n"), or nil.
function M.pid_in(path)
  local f = io.open(path)
  local pid = f and tonumber(f:read("a"):match("^(%d+)\n$"))
  if f then
    f:close()
  end
  return pid
end

local function children_of(pid)
  local kids = {}
  if not read_file("/proc/" .. pid .. "/stat") then
    return kids
  end
  local s = read_file("/proc/" .. pid .. "/task/" .. pid .. "/children")
  if s then
    for k in s:gmatch("%d+") do
      kids[#kids + 1] = tonumber(k)
    end
    return kids
  end
  local p = io.popen("env -u LD_PRELOAD ls /proc")
  for name in p:lines() do
    if name:match("^%d+$") and M.ppid(name) == pid then
      kids[#kids + 1] = tonumber(name)
    end
  end
  p:close()
  return kids
end
M.children_of = children_of

local Server = {}
Server.__index = Server

local started = {}

-- Starts the server; the shell prints its pid then execs echohost, so the
-- pid is echohost's own. Waits (up to 10 s) for the "listening on" line.
function M.start(args, opts)
  opts = opts or {}
  args = args or {}
  local full = {}
  local has_listen = false
  for _, a in ipairs(args) do
    has_listen = has_listen or a == "--listen"
  end
  if not has_listen then
    full[1], full[2] = "--listen", "127.0.0.1:0"
  end
  for _, a in ipairs(args) do
    full[#full + 1] = a
  end
  local err_path = os.tmpname()
  local limit = opts.nofile and ("ulimit -n " .. opts.nofile .. "; ") or ""
  local env = ""
  for k, v in pairs(opts.env or {}) do
    env = env .. k .. "=" .. quote(v) .. " "
  end
  if env ~= "" then
    env = "env " .. env         -- env execs echohost: the pid stays
  end
  local wrap = ""
  for _, a in ipairs(opts.wrap or {}) do
    wrap = wrap .. quote(a) .. " "
  end
  local p = io.popen("echo $$; " .. limit .. "exec " .. env .. wrap .. command(full)
    .. " 2>" .. quote(err_path) .. " </dev/null")
  local pid = tonumber(p:read("l"))
  local srv = setmetatable({ pid = pid, proc = p, log_path = opts.log or err_path,
                             err_path = err_path }, Server)
  started[#started + 1] = srv
  local addr = srv:wait_log("listening on (%S+)", opts.timeout or 10)
  if not addr then
    local log = srv:log()
    srv:stop()
    error("echohost did not start: " .. log, 2)
  end
  srv.listeners = {}
  for name in srv:log():match("listening on (.-) %("):gmatch("%S+") do
    srv.listeners[#srv.listeners + 1] = name
  end
  srv.addr = addr
  local _
  _, srv.host, srv.port = M.split(addr)
  return srv
end

function M.split(name)
  if name:match("^unix:") then
    return "unix", name:sub(6)
  end
  local kind, rest = name:match("^(%a+)://(.*)$")
  local host, port = (rest or name):match("^%[?(.-)%]?:(%d+)$")
  return kind or "tcp", host, tonumber(port)
end

function Server:log()
  return read_file(self.log_path) or ""
end

function Server:stderr()
  return read_file(self.err_path) or ""
end

function Server:wait_log(pat, secs)
  return M.wait(function() return self:log():match(pat) end, secs)
end

function Server:children()
  return children_of(self.pid)
end

function Server:wait_children(n, secs)
  return M.wait(function()
    local kids = self:children()
    return #kids == n and kids
  end, secs)
end

function Server:signal(sig)
  if self.code then
    return false
  end
  return os.execute("kill -" .. sig .. " " .. self.pid .. " 2>/dev/null") == true
end

-- The exit code, once the process is a zombie (it is our child: popen).
function Server:wait_exit(secs)
  if self.code then
    return self.code
  end
  local done = M.wait(function()
    local st = M.state(self.pid)
    return st == nil or st == "Z"
  end, secs)
  if not done then
    return nil
  end
  local _, how, code = self.proc:close()
  self.code = how == "exit" and code or 128 + (code or 0)
  return self.code
end

-- TERM, up to 8 s for the drain (5 s by default), then KILL; the process
-- is always reaped (no zombie left for a later waitpid(-1) to find).
function Server:stop()
  if self.code then
    return self.code
  end
  self:signal("TERM")
  local code = self:wait_exit(8)
  if not code then
    self:signal("KILL")
    code = self:wait_exit(5)
  end
  if not code then
    local _, how, n = self.proc:close()
    code = how == "exit" and n or 128 + (n or 0)
    self.code = code
  end
  os.remove(self.err_path)
  return code
end

function M.stop_all()
  for _, srv in ipairs(started) do
    srv:stop()
  end
  started = {}
end

function Server:sanitizer_report()
  local log = self:log() .. (self.err_path ~= self.log_path and self:stderr() or "")
  return log:match("==%d+==ERROR: %w+Sanitizer.*") or log:match("[^\n]*runtime error:.*")
end

function Server:connect(timeout)
  local c = assert(socket.tcp())
  c:settimeout(timeout or 5)
  assert(c:connect(self.host, self.port))
  return c
end

-- Runs echohost with args to completion (bounded by secs): code, stderr,
-- stdout.
function M.run(args, secs)
  local err_path, out_path = os.tmpname(), os.tmpname()
  local cmd = "timeout -s KILL " .. (secs or 10) .. " " .. command(args)
    .. " >" .. quote(out_path) .. " 2>" .. quote(err_path) .. " </dev/null"
  local _, _, code = os.execute(cmd)
  local err, out = read_file(err_path), read_file(out_path)
  os.remove(err_path)
  os.remove(out_path)
  return code, err, out
end

-- On a connected socket c: sends data from byte from (default 1) and
-- reads the echo at the same time (non-blocking, select) until want bytes
-- (default #data) came back, the server closed, or opts.timeout (10) secs.
-- opts.half_close: shutdown the send side once everything is sent, then
-- read until the server closes. Returns what came back and "closed" (or
-- another error) when the connection ended.
function M.exchange(c, data, opts)
  opts = opts or {}
  c:settimeout(0)
  local sent, chunks, got, ended = (opts.from or 1) - 1, {}, 0, nil
  local want = opts.want or #data
  local deadline = socket.gettime() + (opts.timeout or 10)
  local shut = false
  while socket.gettime() < deadline do
    if sent == #data and opts.half_close and not shut then
      c:shutdown("send")
      shut = true
    end
    if got >= want and not opts.half_close then
      break
    end
    local r = socket.select({ c }, sent < #data and { c } or nil, 0.5)
    if r[c] then
      local d, e, partial = c:receive(65536)
      d = d or partial
      if d and #d > 0 then
        chunks[#chunks + 1] = d
        got = got + #d
      end
      if e == "closed" then
        ended = "closed"
        break
      end
    end
    if sent < #data then
      local last, e, lastp = c:send(data, sent + 1, math.min(#data, sent + 262144))
      last = last or lastp
      if last and last > sent then
        sent = last
      elseif e and e ~= "timeout" then
        ended = e
        break
      end
    end
  end
  return table.concat(chunks), ended
end

-- Connects to host:port and runs M.exchange; closes the connection.
-- Returns what came back and how it ended, or nil, err (connect).
function M.echo(host, port, data, opts)
  local c = assert(socket.tcp())
  c:settimeout((opts and opts.timeout) or 10)
  local ok, err = c:connect(host, port)
  if not ok then
    c:close()
    return nil, err
  end
  local got, ended = M.exchange(c, data, opts)
  c:close()
  return got, ended
end

-- Data whose every 16-byte line names its own offset: a byte lost,
-- doubled or moved shows in a comparison.
function M.pattern(n)
  local lines = {}
  for i = 1, n // 16 + 1 do
    lines[i] = string.format("%015d\n", i)
  end
  return table.concat(lines):sub(1, n)
end

return M
