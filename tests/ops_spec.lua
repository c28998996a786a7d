-- Operating the server: --log (reopened on SIGUSR1) and --log-format,
-- --pid-file, --user, and systemd's conventions without systemd
-- (NOTIFY_SOCKET readiness, LISTEN_FDS socket activation).
local server = require "helpers.server"
local util = require "helpers.util"
local json = require "dkjson"

local q, slurp, spit, tmpdir = server.quote, util.slurp, util.spit, util.tmpdir

local function count(s, pat)
  return select(2, s:gsub(pat, ""))
end

-- The lines of s, without the newlines.
local function lines(s)
  local t = {}
  for l in s:gmatch("([^\n]*)\n") do
    t[#t + 1] = l
  end
  return t
end

-- One logfmt line as a table: key=value pairs, values bare or quoted
-- (\" \\ \n \xNN escapes); nil and where it failed when malformed.
local function logfmt(line)
  local t, i = {}, 1
  while i <= #line do
    local k, j = line:match("^([%w_]+)=()", i)
    if not k then
      return nil, "key at " .. i
    end
    if line:sub(j, j) == '"' then
      local v, p = {}, j + 1
      while true do
        local c = line:sub(p, p)
        if c == "" then
          return nil, "unterminated value of " .. k
        elseif c == '"' then
          break
        elseif c == "\\" then
          local e = line:sub(p + 1, p + 1)
          if e == "x" then
            v[#v + 1] = string.char(tonumber(line:sub(p + 2, p + 3), 16))
            p = p + 4
          else
            v[#v + 1] = ({ n = "\n", ['"'] = '"', ["\\"] = "\\" })[e]
            if not v[#v] then
              return nil, "bad escape in " .. k
            end
            p = p + 2
          end
        else
          v[#v + 1] = c
          p = p + 1
        end
      end
      t[k], i = table.concat(v), p + 1
    else
      local v, p = line:match("^([^%s\"]*)()", j)
      t[k], i = v, p
    end
    if i <= #line then
      if line:sub(i, i) ~= " " then
        return nil, "no space after " .. k
      end
      i = i + 1
    end
  end
  return t
end

describe("--log", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function()
    server.stop_all()
    os.execute("rm -rf " .. q(dir))
  end)

  it("appends to FILE; after a rename, SIGUSR1 reopens it in the master and every worker",
    function()
      local log = dir .. "/echohost.log"
      spit(log, "an older line\n")
      local srv = server.start({ "--workers", "2", "--access-log", "--log", log }, { log = log })
      assert.truthy(slurp(log):find("^an older line\n"))
      local sent = 0
      local function connect_once()
        sent = sent + 1
        assert.equal("x" .. sent, server.echo(srv.host, srv.port, "x" .. sent))
      end
      for _ = 1, 10 do connect_once() end
      assert.truthy(server.wait(function() return count(srv:log(), "access: ") == 10 end, 5))
      assert(os.rename(log, log .. ".1"))
      assert.is_true(srv:signal("USR1"))
      assert.truthy(srv:wait_log("SIGUSR1: log reopened", 5))
      -- until both workers have written an access line to the new file
      assert.truthy(server.wait(function()
        connect_once()
        local now = srv:log()
        return now:find("worker=0 ", 1, true) and now:find("worker=1 ", 1, true)
      end, 10))
      local total = 0
      assert.truthy(server.wait(function()
        total = count(slurp(log .. ".1"), "access: ") + count(srv:log(), "access: ")
        return total == sent
      end, 5))
      assert.equal(sent, total)                 -- every connection, once
      local ids = {}
      for id in (slurp(log .. ".1") .. srv:log()):gmatch("access: id=(%d+)") do
        assert.is_nil(ids[id])
        ids[id] = true
      end
      assert.equal(0, count(srv:log(), "older line"))
      assert.equal("", srv:stderr())            -- nothing went to stderr
      assert.equal(0, srv:stop())
      assert.truthy(srv:log():find("draining"))
    end)

  it("says on stderr, and exits 1, when FILE cannot be opened", function()
    local code, err = server.run({ "--listen", "127.0.0.1:0", "--log", dir .. "/no/such.log" })
    assert.equal(1, code)
    assert.equal(1, count(err, "\n"), err)
    assert.truthy(err:find("error: cannot open the log " .. dir
      .. "/no/such.log: No such file or directory", 1, true), err)
  end)

  it("writes start-up errors to FILE and to stderr", function()
    local log = dir .. "/e.log"
    local code, err = server.run({ "--listen", "127.0.0.1:0", "--log", log,
      "--handler", dir .. "/missing.lua" })
    assert.equal(1, code)
    assert.truthy(err:find("missing.lua: No such file", 1, true), err)
    assert.truthy(slurp(log):find("missing.lua: No such file", 1, true))
  end)

  it("is a server option: with --repl a usage error", function()
    local code, err = server.run({ "--log", dir .. "/x", "--repl" })
    assert.equal(2, code)
    assert.truthy(err:find("--log is a server option", 1, true), err)
  end)
end)

describe("--log-format", function()
  local dir, handler
  before_each(function()
    dir = tmpdir()
    handler = dir .. "/say.lua"
    spit(handler, 'local log = require "echohost.log"\n'
      .. 'return function(conn, data) log.info("got %s", data) return data end\n')
  end)
  after_each(function()
    server.stop_all()
    os.execute("rm -rf " .. q(dir))
  end)

  -- Starts a server logging in format, sends one tricky message through
  -- the handler, stops it; returns the log's lines, each parsed by parse.
  local function run(model, format, parse)
    local log = dir .. "/" .. format .. ".log"
    local srv = server.start({ "--workers", "1", "--model", model, "--access-log",
      "--log-format", format, "--log", log, "--handler", handler }, { log = log })
    local msg = 'a "quoted" \\ back\nslash \255'
    assert.equal(msg, server.echo(srv.host, srv.port, msg, { half_close = true }))
    assert.truthy(srv:wait_log("access: ", 5))
    assert.equal(0, srv:stop())
    local got = {}
    for _, l in ipairs(lines(slurp(log))) do
      local t, err = parse(l)
      assert.truthy(t, (err or "?") .. " in " .. l)
      got[#got + 1] = t
    end
    return got, srv.pid, msg
  end

  local function find(got, pat)
    for _, t in ipairs(got) do
      if tostring(t.msg):find(pat) then
        return t
      end
    end
  end

  local function check(got, master, msg, number)
    for _, t in ipairs(got) do
      assert.truthy(tostring(t.ts):match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), t.ts)
      assert.truthy(({ error = 1, warn = 1, info = 1, notice = 1, debug = 1 })[t.level])
      assert.truthy(number(t.pid) > 0)
    end
    local listening = find(got, "^listening on ")
    assert.equal("notice", listening.level)
    assert.equal(master, number(listening.pid))
    assert.is_nil(listening.worker)
    assert.is_nil(listening.conn)
    local access = find(got, "^access: id=")
    local said = find(got, "^handler .*say%.lua:2: got ")
    assert.truthy(said, "no handler line")
    assert.equal(number(access.conn), number(said.conn))
    assert.equal(number(access.conn), tonumber(access.msg:match("id=(%d+)")))
    assert.equal("info", said.level)
    return access, said, msg
  end

  for _, model in ipairs({ "event", "fork" }) do
    it("json: one object a line with ts, level, pid, worker, conn, msg (" .. model .. ")",
      function()
        local got, master, msg = run(model, "json", function(l)
          local t, _, err = json.decode(l)
          return type(t) == "table" and t, err
        end)
        local access, said = check(got, master, msg, function(v) return v end)
        assert.equal("integer", math.type(access.pid))
        if model == "event" then
          assert.equal(0, access.worker)
          assert.equal(0, said.worker)
        else
          assert.is_nil(access.worker)
        end
        -- the invalid byte became U+FFFD, the rest is as sent
        assert.equal("handler " .. handler .. ":2: got " .. msg:sub(1, -2) .. "\u{FFFD}",
          said.msg)
      end)

    it("logfmt: key=value pairs with ts, level, pid, worker, conn, msg (" .. model .. ")",
      function()
        local got, master, msg = run(model, "logfmt", logfmt)
        local access, said = check(got, master, msg, tonumber)
        if model == "event" then
          assert.equal("0", access.worker)
        else
          assert.is_nil(access.worker)
        end
        assert.equal("handler " .. handler .. ":2: got " .. msg, said.msg)
      end)
  end

  it("text stays the default: the message names the connection", function()
    local got = run("event", "text", function(l) return { msg = l } end)
    assert.truthy(find(got, "%] info: handler .*say%.lua:2: conn %d+: got "))
  end)

  it("refuses another format: usage error, exit 2", function()
    local code, err = server.run({ "--log-format", "xml" })
    assert.equal(2, code)
    assert.truthy(err:find("bad --log-format 'xml' (want text, logfmt or json)", 1, true), err)
  end)
end)

-- The pid of a process that has exited: nobody has it now.
local function dead_pid()
  local p = io.popen("sh -c 'echo $$'")
  local pid = tonumber(p:read("l"))
  p:close()
  return pid
end

local function status_field(pid, name)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s:match(name .. ":%s*(%d+)")
end

describe("--pid-file", function()
  local dir, pidf
  before_each(function()
    dir = tmpdir()
    pidf = dir .. "/echohost.pid"
  end)
  after_each(function()
    server.stop_all()
    os.execute("rm -rf " .. q(dir))
  end)

  for _, model in ipairs({ "event", "fork" }) do
    it("holds the master's pid while it serves and is removed at exit (" .. model .. ")",
      function()
        local srv = server.start({ "--model", model, "--workers", "1", "--pid-file", pidf })
        assert.equal(srv.pid .. "\n", slurp(pidf))
        assert.equal("up", server.echo(srv.host, srv.port, "up"))
        assert.equal(0, srv:stop())
        assert.is_nil(io.open(pidf))
      end)
  end

  it("refuses to start while the pid in it is alive: one line, exit 1", function()
    local first = server.start({ "--workers", "1", "--pid-file", pidf })
    local code, err = server.run({ "--listen", "127.0.0.1:0", "--pid-file", pidf })
    assert.equal(1, code)
    assert.equal(1, count(err, "\n"), err)
    assert.truthy(err:find("error: pid file " .. pidf .. ": process " .. first.pid
      .. " is running (another server?)", 1, true), err)
    assert.equal(first.pid .. "\n", slurp(pidf))  -- left alone
    assert.equal("first", server.echo(first.host, first.port, "first"))
  end)

  it("takes over a stale one", function()
    spit(pidf, dead_pid() .. "\n")
    local srv = server.start({ "--workers", "1", "--pid-file", pidf })
    assert.equal(srv.pid .. "\n", slurp(pidf))
  end)

  it("is written only once the port is bound", function()
    local holder = server.start({ "--workers", "1" })
    local code = server.run({ "--listen", holder.addr, "--pid-file", pidf })
    assert.equal(1, code)
    assert.is_nil(io.open(pidf))
  end)
end)

describe("--user", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function()
    server.stop_all()
    os.execute("rm -rf " .. q(dir))
  end)

  local root = status_field("self", "Uid") == "0"

  local it_root = root and it or pending
  it_root("drops root after binding: the master and the workers run as nobody", function()
    os.execute("chmod 777 " .. q(dir))          -- nobody removes the pid file
    local path, pidf = dir .. "/ctl.sock", dir .. "/pid"
    local srv = server.start({ "--workers", "2", "--user", "nobody", "--control", path,
      "--pid-file", pidf, "--listen", "127.0.0.1:0" })
    assert.truthy(srv:wait_log("running as nobody %(uid (%d+)%)", 5))
    local kids = assert(srv:wait_children(2, 5))
    for _, pid in ipairs({ srv.pid, kids[1], kids[2] }) do
      assert.equal("65534", status_field(pid, "Uid"))
      assert.equal("65534", status_field(pid, "Gid"))
    end
    assert.equal("as nobody", server.echo(srv.host, srv.port, "as nobody"))
    local p = io.popen("stat -c '%u %a' " .. q(path))
    assert.equal("65534 600", p:read("l"))
    p:close()
    -- root may still operate it; the session runs as nobody too
    local out = util.pipe(q(util.realpath(server.BIN)) .. " --repl --connect " .. q(path),
      "=stats().pid\n")
    assert.equal(srv.pid .. "\n", out)
    assert.equal(0, srv:stop())
    assert.is_nil(io.open(pidf))
  end)

  it("needs root, and a user that exists: one line, exit 1", function()
    local code, err = server.run({ "--listen", "127.0.0.1:0", "--user", "no-such-user-x" })
    assert.equal(1, code)
    assert.truthy(err:find("--user no-such-user-x: no such user", 1, true), err)
    if root then
      local _, e2, c2 = util.pipe("setpriv --reuid=65534 --regid=65534 --clear-groups "
        .. q(util.realpath(server.BIN)) .. " --listen 127.0.0.1:0 --user nobody", "")
      assert.equal(1, c2)
      assert.truthy(e2:find("--user nobody: only root can switch users (running as uid 65534)",
        1, true), e2)
    end
  end)
end)

describe("systemd conventions", function()
  local dir
  local sdsim = util.realpath(util.tool("tests/sdsim"))
  before_each(function() dir = tmpdir() end)
  after_each(function()
    server.stop_all()
    os.execute("rm -rf " .. q(dir))
  end)

  for _, name in ipairs({ "path", "abstract" }) do
    it("NOTIFY_SOCKET (" .. name .. "): READY=1 once listening, STOPPING=1 on stop", function()
      local out = dir .. "/notified"
      local addr = name == "path" and dir .. "/notify.sock"
        or "@echohost-test-" .. dir:match("[^/]+$")
      local srv = server.start({ "--workers", "2" },
        { wrap = { sdsim, "--notify", addr, out, "--" } })
      assert.truthy(server.wait(function()
        local f = io.open(out)
        return f and f:close() and slurp(out) == "READY=1\n"
      end, 5))
      assert.equal("ready", server.echo(srv.host, srv.port, "ready"))
      assert.is_true(srv:signal("TERM"))
      assert.truthy(server.wait(function() return slurp(out) == "READY=1\nSTOPPING=1\n" end, 5),
        slurp(out) .. srv:log())
      assert.equal(0, srv:stop())
    end)
  end

  it("NOTIFY_SOCKET that nobody reads: a warning, the server serves", function()
    local srv = server.start({ "--workers", "1" },
      { env = { NOTIFY_SOCKET = dir .. "/nobody.sock" } })
    assert.truthy(srv:wait_log("warn: NOTIFY_SOCKET [^\n]*nobody%.sock: No such file", 5))
    assert.equal("on", server.echo(srv.host, srv.port, "on"))
  end)

  for _, model in ipairs({ "event", "fork" }) do
    it("LISTEN_FDS: serves the socket passed as fd 3 instead of binding (" .. model .. ")",
      function()
        -- --listen names a port someone else holds: binding it would fail
        local holder = server.start({ "--workers", "1" })
        local handler = dir .. "/env.lua"
        spit(handler, "return function()\n"
          .. "  return (os.getenv('LISTEN_FDS') or 'unset') .. '\\n'\nend\n")
        local srv = server.start({ "--listen", holder.addr, "--model", model, "--workers", "2",
          "--handler", handler }, { wrap = { sdsim, "--listen", "127.0.0.1:0", "--" } })
        assert.truthy(srv:log():find("socket activation: serving the 1 socket passed from fd 3",
          1, true))
        assert.are_not.equal(holder.port, srv.port)
        for _ = 1, 6 do                           -- every worker: the variables are gone
          assert.equal("unset\n", server.echo(srv.host, srv.port, "x", { want = 6 }))
        end
        assert.equal(0, srv:stop())
      end)
  end

  it("LISTEN_FDS with fd 3 not a listening socket: one line, exit 1", function()
    local err, code = util.run("timeout 10 sh -c " .. q("export LISTEN_FDS=1 LISTEN_PID=$$; exec "
      .. q(server.BIN) .. " --listen 127.0.0.1:0 3</dev/null"))
    assert.equal(1, code)
    assert.truthy(err:find("LISTEN_FDS: fd 3 is not a listening stream socket", 1, true), err)
  end)

  it("LISTEN_FDS must pass one socket for each --listen: one line, exit 1", function()
    local err, code = util.run("timeout 10 " .. q(sdsim) .. " --listen 127.0.0.1:0 -- "
      .. q(server.BIN) .. " --listen 127.0.0.1:0 --listen 127.0.0.1:0")
    assert.equal(1, code)
    assert.truthy(err:find("LISTEN_FDS: 1 socket passed for 2 --listen (one for each, in their "
      .. "order)", 1, true), err)
  end)

  it("ignores LISTEN_FDS meant for another process (LISTEN_PID)", function()
    local srv = server.start({ "--workers", "1" },
      { env = { LISTEN_FDS = "1", LISTEN_PID = tostring(dead_pid()) } })
    assert.is_nil(srv:log():find("socket activation", 1, true))
    assert.equal("bound", server.echo(srv.host, srv.port, "bound"))
  end)
end)
