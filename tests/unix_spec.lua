-- unix:PATH listeners in both models: echo through them (a few MiB both
-- ways, a half-close), the file's mode, conn.peer from SO_PEERCRED, a stale
-- socket taken over and a live one refused, the file removed at exit, and
-- their counters in stats().
local server = require "helpers.server"
local util = require "helpers.util"
local unix = require "socket.unix"
local proc = require "echohost.proc"

local BIN = util.realpath(server.BIN)
local q = server.quote

local dir
before_each(function()
  dir = util.tmpdir()
end)
after_each(function()
  server.stop_all()
  os.execute("rm -rf " .. q(dir))
end)

local function connect(path)
  local c = assert(unix.stream())
  c:settimeout(10)
  assert(c:connect(path))
  return c
end

-- "socket 600": the file's type and mode, as stat says them.
local function file_mode(path)
  local p = io.popen("stat -c '%F %a' " .. q(path) .. " 2>/dev/null")
  local what = p:read("l")
  p:close()
  return what
end

local function exists(path)
  return os.execute("test -e " .. q(path)) == true
end

local function uid()
  local p = io.popen("id -u")
  local u = p:read("l")
  p:close()
  return u
end

local PEER = "return function(conn, data) return conn.peer .. '\\n' end\n"

for _, model in ipairs({ "event", "fork" }) do
  describe("a unix: listener (" .. model .. " model)", function()
    it("echoes 4 MiB both ways and a half-close; 0600; removed at exit", function()
      local path = dir .. "/echo.sock"
      local srv = server.start({ "--model", model, "--workers", "2", "--listen",
        "unix:" .. path })
      assert.same({ "unix:" .. path }, srv.listeners)
      assert.equal("socket 600", file_mode(path))
      local data = server.pattern(4 * 1024 * 1024)
      local c = connect(path)
      local got, ended = server.exchange(c, data, { half_close = true, timeout = 30 })
      c:close()
      assert.equal(#data, #got)
      assert.is_true(got == data)
      assert.equal("closed", ended)           -- the server closed after the echo
      assert.equal(0, srv:stop())
      assert.is_false(exists(path))
    end)

    it("takes ,mode=0660 and reports conn.peer as the client's pid and uid", function()
      local path, h = dir .. "/peer.sock", dir .. "/peer.lua"
      util.spit(h, PEER)
      local srv = server.start({ "--model", model, "--listen", "unix:" .. path .. ",mode=0660",
        "--handler", h, "--access-log" })
      assert.equal("socket 660", file_mode(path))
      local c = connect(path)
      assert(c:send("x"))
      local peer = "unix:pid=" .. proc.getpid() .. ",uid=" .. uid()
      assert.equal(peer, (c:receive("*l")))
      c:close()
      assert.truthy(srv:wait_log("access: id=%d+ peer=(%S+) listener=unix:", 5))
      assert.equal(peer, srv:log():match("access: id=%d+ peer=(%S+) listener=unix:"))
    end)

    it("takes over a stale socket: one made and closed, and a killed server's", function()
      local path = dir .. "/stale.sock"
      local old = assert(unix.stream())
      assert(old:bind(path))
      assert(old:listen())
      old:close()                             -- the file stays, nobody accepts
      local srv = server.start({ "--model", model, "--listen", "unix:" .. path })
      assert.equal("hi", (server.exchange(connect(path), "hi")))
      srv:signal("KILL")
      srv:wait_exit(5)
      assert.truthy(server.wait(function()     -- its workers die with it
        local c = assert(unix.stream())
        local ok = c:connect(path)
        c:close()
        return not ok
      end, 5))
      assert.equal("socket 600", file_mode(path))   -- left behind
      local again = server.start({ "--model", model, "--listen", "unix:" .. path })
      assert.equal("again", (server.exchange(connect(path), "again")))
      assert.equal(0, again:stop())
      assert.is_false(exists(path))
    end)

    it("refuses a live socket and any other file: one line, exit 1", function()
      local path = dir .. "/live.sock"
      local srv = server.start({ "--model", model, "--listen", "unix:" .. path })
      local code, err = server.run({ "--model", model, "--listen", "127.0.0.1:0",
        "--listen", "unix:" .. path })
      assert.equal(1, code)
      assert.equal(1, select(2, err:gsub("\n", "")), err)
      assert.truthy(err:find("error: listen unix:" .. path .. ": in use by a running server",
        1, true), err)
      assert.equal("still", (server.exchange(connect(path), "still")))   -- untouched
      srv:stop()
      local file = dir .. "/file"
      util.spit(file, "precious")
      code, err = server.run({ "--model", model, "--listen", "unix:" .. file })
      assert.equal(1, code)
      assert.truthy(err:find("listen unix:" .. file .. ": path exists and is not a socket "
        .. "(refusing to replace it)", 1, true), err)
      assert.equal("precious", util.slurp(file))
      code, err = server.run({ "--model", model, "--listen", "unix:" .. dir .. "/no/such" })
      assert.equal(1, code)
      assert.truthy(err:find("listen unix:" .. dir .. "/no/such: bind: No such file or "
        .. "directory", 1, true), err)
    end)
  end)
end

describe("a unix: listener through a binary upgrade (SIGUSR2)", function()
  local gone, pid_in = server.gone, server.pid_in

  for _, model in ipairs({ "event", "fork" }) do
    it("stays with the new master, which removes it at exit (" .. model .. ")", function()
      local bin, path, pidf = dir .. "/echohost", dir .. "/up.sock", dir .. "/pid"
      assert(os.execute("cp " .. q(server.BIN) .. " " .. q(bin)))
      local saved = server.BIN
      server.BIN = bin
      local ok, srv = pcall(server.start, { "--model", model, "--workers", "2",
        "--pid-file", pidf, "--listen", "unix:" .. path, "--listen", "127.0.0.1:0" })
      server.BIN = saved
      assert(ok, srv)
      assert.equal("before", (server.exchange(connect(path), "before")))
      local old = srv.pid
      assert(os.execute("kill -USR2 " .. old))
      local new = server.wait(function()
        local p = pid_in(pidf)
        return p and p ~= old and gone(old) and p
      end, 30)
      finally(function()
        if new and not gone(new) then
          os.execute("kill -KILL " .. new)
        end
      end)
      assert.truthy(new, srv:log())
      assert.equal("socket 600", file_mode(path))   -- the old one left it
      assert.equal("after", (server.exchange(connect(path), "after")))
      assert(os.execute("kill -TERM " .. new))
      assert.truthy(server.wait(function() return gone(new) end, 10))
      assert.is_false(exists(path))                 -- the new one removed it
    end)
  end
end)

describe("a unix: listener with --user", function()
  local it_root = uid() == "0" and it or pending
  it_root("is given to that user, and removed by it at exit (both models)", function()
    os.execute("chmod 777 " .. q(dir))          -- nobody may remove it
    for _, model in ipairs({ "event", "fork" }) do
      local path = dir .. "/" .. model .. ".sock"
      local srv = server.start({ "--model", model, "--user", "nobody", "--listen",
        "unix:" .. path })
      assert.truthy(srv:wait_log("running as nobody", 5))
      local p = io.popen("stat -c '%u %a' " .. q(path))
      assert.equal("65534 600", p:read("l"))
      p:close()
      assert.equal("nobody's", (server.exchange(connect(path), "nobody's")))
      assert.equal(0, srv:stop())
      assert.is_false(exists(path))
    end
  end)
end)

describe("a unix: listener beside a TCP one", function()
  it("is served by every worker, counted in stats() as kind unix", function()
    local path, ctl = dir .. "/u.sock", dir .. "/ctl"
    local srv = server.start({ "--workers", "2", "--listen", "127.0.0.1:0", "--listen",
      "unix:" .. path, "--control", ctl })
    for i = 1, 20 do
      local c = connect(path)
      assert.equal("m" .. i, (server.exchange(c, "m" .. i)))
      c:close()
    end
    assert.equal("tcp", (server.exchange(srv:connect(), "tcp")))
    local out = util.pipe(q(BIN) .. " --repl --connect " .. q(ctl),
      "for _, l in ipairs(stats().listeners) do print(l.name, l.kind, l.accepted) end\n")
    assert.equal(srv.listeners[1] .. "\ttcp\t1\nunix:" .. path .. "\tunix\t20\n", out)
  end)
end)
