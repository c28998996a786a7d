-- echohost.socket over real loopback sockets (127.0.0.1 and ::1, port 0).
local socket = require "echohost.socket"

-- Linux errno values the module returns.
local ETIMEDOUT, ECONNREFUSED, EADDRINUSE = 110, 111, 98
local EPIPE, ECONNRESET, ENOTCONN, EINVAL = 32, 104, 107, 22

-- A listening socket on host (default 127.0.0.1), port 0; returns it and
-- its port.
local function listener(host)
  local srv = assert(socket.open_socket(host or "127.0.0.1", 0))
  assert(srv:listen())
  local _, port = srv:sockname()
  return srv, port
end

-- A connected pair: client and the server's end of it (plus the listener).
local function pair(host)
  local srv, port = listener(host)
  local c = assert(socket.connect(host or "127.0.0.1", port, 5))
  local a = assert(srv:accept_connection())
  a:settimeout(5)
  return c, a, srv
end

local function close_all(...)
  for _, s in ipairs({...}) do
    if not tostring(s):find("closed", 1, true) then
      s:close()
    end
  end
end

-- A port nothing listens on: bound then closed.
local function dead_port()
  local s = assert(socket.open_socket("127.0.0.1", 0))
  local _, port = s:sockname()
  s:close()
  return port
end

describe("echohost.socket", function()
  describe("open_socket", function()
    it("binds 127.0.0.1 on a port the kernel picks", function()
      local s = assert(socket.open_socket("127.0.0.1", 0))
      finally(function() s:close() end)
      local host, port, family = s:sockname()
      assert.equal("127.0.0.1", host)
      assert.is_true(port > 0 and port <= 65535)
      assert.equal("inet", family)
    end)

    it("binds ::1 (IPv6)", function()
      local s = assert(socket.open_socket("::1", 0))
      finally(function() s:close() end)
      local host, port, family = s:sockname()
      assert.equal("::1", host)
      assert.is_true(port > 0)
      assert.equal("inet6", family)
    end)

    it("returns nil, message, EADDRINUSE when the port is taken", function()
      local srv, port = listener()
      finally(function() srv:close() end)
      local s, err, code = socket.open_socket("127.0.0.1", port)
      assert.is_nil(s)
      assert.equal(("bind 127.0.0.1:%d: Address already in use"):format(port), err)
      assert.equal(EADDRINUSE, code)
    end)

    it("raises on a port out of range", function()
      assert.has_error(function() socket.open_socket("127.0.0.1", 65536) end,
        "bad argument #2 to 'open_socket' (port out of range 0..65535)")
      assert.has_error(function() socket.open_socket("127.0.0.1", -1) end,
        "bad argument #2 to 'open_socket' (port out of range 0..65535)")
    end)

    it("raises on arguments of the wrong type", function()
      assert.has_error(function() socket.open_socket(nil, 0) end,
        "bad argument #1 to 'open_socket' (string expected, got nil)")
      assert.has_error(function() socket.open_socket("127.0.0.1", {}) end,
        "bad argument #2 to 'open_socket' (number expected, got table)")
      assert.has_error(function() socket.open_socket("127.0.0.1", 1.5) end,
        "bad argument #2 to 'open_socket' (number has no integer representation)")
    end)

    it("says 'got no value' for a missing argument", function()
      assert.has_error(function() socket.open_socket() end,
        "bad argument #1 to 'open_socket' (string expected, got no value)")
      assert.has_error(function() socket.open_socket("127.0.0.1") end,
        "bad argument #2 to 'open_socket' (number expected, got no value)")
      assert.has_error(function() socket.connect() end,
        "bad argument #1 to 'connect' (string expected, got no value)")
      assert.has_error(function() socket.connect("127.0.0.1") end,
        "bad argument #2 to 'connect' (number expected, got no value)")
    end)

    it("makes close-on-exec descriptors", function()
      local s = assert(socket.open_socket("127.0.0.1", 0))
      finally(function() s:close() end)
      local f = assert(io.open("/proc/self/fdinfo/" .. s:fileno()))
      local flags = f:read("a"):match("flags:%s*(%d+)")
      f:close()
      -- O_CLOEXEC is 02000000 (octal): digit 7 from the right is 2 or 3.
      local digit = tonumber(flags:sub(-7, -7))
      assert.is_true(digit == 2 or digit == 3, "flags " .. flags)
    end)
  end)

  describe("listen", function()
    it("returns true and accepts connections", function()
      local srv, port = listener()
      finally(function() srv:close() end)
      local c = assert(socket.connect("127.0.0.1", port))
      finally(function() c:close() end)
      assert.equal("127.0.0.1", (c:peername()))
    end)

    it("takes a backlog and raises when it is out of range", function()
      local s = assert(socket.open_socket("127.0.0.1", 0))
      finally(function() s:close() end)
      assert.has_error(function() s:listen(-1) end,
        "bad argument #1 to 'listen' (backlog out of range 0..65535)")
      assert.has_error(function() socket.listen(s, 70000) end,
        "bad argument #2 to 'listen' (backlog out of range 0..65535)")
      assert.is_true(socket.listen(s, 1))
    end)

    it("returns nil, message, EINVAL on a connected socket", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      local ok, err, code = c:listen()
      assert.is_nil(ok)
      assert.equal("listen: Invalid argument", err)
      assert.equal(EINVAL, code)
    end)
  end)

  describe("connect", function()
    it("connects over IPv4 and IPv6", function()
      for _, host in ipairs({"127.0.0.1", "::1"}) do
        local c, a, srv = pair(host)
        assert.equal(host, (c:peername()))
        assert.same({a:peername()}, {c:sockname()})
        close_all(c, a, srv)
      end
    end)

    it("returns nil, message, ECONNREFUSED when nothing listens", function()
      local port = dead_port()
      local c, err, code = socket.connect("127.0.0.1", port)
      assert.is_nil(c)
      assert.equal(("connect 127.0.0.1:%d: Connection refused"):format(port), err)
      assert.equal(ECONNREFUSED, code)
      c, err, code = socket.connect("::1", port, 2)
      assert.is_nil(c)
      assert.equal(("connect [::1]:%d: Connection refused"):format(port), err)
      assert.equal(ECONNREFUSED, code)
    end)

    it("raises on a bad port or timeout", function()
      assert.has_error(function() socket.connect("127.0.0.1", 0) end,
        "bad argument #2 to 'connect' (port out of range 1..65535)")
      assert.has_error(function() socket.connect("127.0.0.1", 80, 0 / 0) end,
        "bad argument #3 to 'connect' (timeout is NaN)")
    end)
  end)

  describe("accept_connection", function()
    it("returns the client's socket, also as s:accept()", function()
      local srv, port = listener()
      finally(function() srv:close() end)
      local c1 = assert(socket.connect("127.0.0.1", port))
      local c2 = assert(socket.connect("127.0.0.1", port))
      local a1 = assert(socket.accept_connection(srv))
      local a2 = assert(srv:accept())
      finally(function() close_all(c1, c2, a1, a2) end)
      assert.same({c1:sockname()}, {a1:peername()})
      assert.same({c2:sockname()}, {a2:peername()})
    end)

    it("returns nil, 'timeout', ETIMEDOUT when no client comes", function()
      local srv = listener()
      finally(function() srv:close() end)
      assert.is_true(srv:settimeout(0.05))
      local t0 = os.time()
      local a, err, code = srv:accept_connection()
      assert.is_nil(a)
      assert.equal("timeout", err)
      assert.equal(ETIMEDOUT, code)
      assert.is_true(os.time() - t0 <= 2)
    end)

    it("returns nil, message, errno on a socket that does not listen", function()
      local s = assert(socket.open_socket("127.0.0.1", 0))
      finally(function() s:close() end)
      local a, err, code = s:accept_connection()
      assert.is_nil(a)
      assert.equal("accept: Invalid argument", err)
      assert.equal(EINVAL, code)
    end)
  end)

  describe("recv", function()
    it("returns what the peer sent, at most max bytes", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      assert.equal(6, c:send("abcdef"))
      assert.equal("abc", a:recv(3))
      assert.equal("def", socket.recv(a))
    end)

    it("returns nil, 'closed', 0 after the peer closes", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      c:send("last")
      c:close()
      assert.equal("last", a:recv())
      local d, err, code = a:recv()
      assert.is_nil(d)
      assert.equal("closed", err)
      assert.equal(0, code)
    end)

    it("returns nil, 'closed', ECONNRESET after the peer resets", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      c:send("never read")      -- on loopback it is queued at a on return
      a:close()                 -- closing with unread data sends a reset
      local d, err, code = c:recv()
      assert.is_nil(d)
      assert.equal("closed", err)
      assert.equal(ECONNRESET, code)
    end)

    it("returns nil, 'timeout', ETIMEDOUT when nothing comes in time", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      a:settimeout(0.05)
      local d, err, code = a:recv()
      assert.is_nil(d)
      assert.equal("timeout", err)
      assert.equal(ETIMEDOUT, code)
      c:send("late")            -- the socket still works after a timeout
      assert.equal("late", a:recv())
    end)

    it("raises on a max out of range", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      assert.has_error(function() socket.recv(a, 0) end,
        "bad argument #2 to 'recv' (max out of range 1..67108864)")
      assert.has_error(function() a:recv(-5) end,
        "bad argument #1 to 'recv' (max out of range 1..67108864)")
    end)
  end)

  describe("send", function()
    it("sends all of the data and returns its length", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      local data = string.rep("0123456789abcdef", 4096)     -- 64 KiB
      assert.equal(#data, c:send(data))
      c:shutdown("send")
      local got = {}
      repeat
        local d = a:recv(65536)
        got[#got + 1] = d
      until not d
      assert.equal(data, table.concat(got))
    end)

    it("returns nil, 'timeout', ETIMEDOUT and the bytes sent when the peer does not read",
      function()
        local c, a, srv = pair()
        finally(function() close_all(c, a, srv) end)
        c:settimeout(0.1)
        local data = string.rep("x", 64 * 1024 * 1024)
        local n, err, code, sent = c:send(data)
        assert.is_nil(n)
        assert.equal("timeout", err)
        assert.equal(ETIMEDOUT, code)
        assert.is_true(sent > 0 and sent < #data, tostring(sent))
      end)

    it("returns nil, 'closed', EPIPE or ECONNRESET to a closed peer (no SIGPIPE)",
      function()
        local c, a, srv = pair()
        finally(function() close_all(c, a, srv) end)
        a:close()
        local n, err, code, sent
        for _ = 1, 10 do        -- the first send may still be accepted
          n, err, code, sent = c:send("hello?")
          if not n then break end
        end
        assert.is_nil(n)
        assert.equal("closed", err)
        assert.is_true(code == EPIPE or code == ECONNRESET, tostring(code))
        assert.equal(0, sent)
      end)

    it("raises when data is not a string, a number included (as conn:send does)", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      assert.has_error(function() socket.send(c, {}) end,
        "bad argument #2 to 'send' (string expected, got table)")
      assert.has_error(function() socket.send(c, 42) end,
        "bad argument #2 to 'send' (string expected, got number)")
      assert.has_error(function() c:send(42) end,
        "bad argument #1 to 'send' (string expected, got number)")
    end)
  end)

  describe("shutdown", function()
    it("closes one direction: the peer sees 'closed', the other still works", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      assert.is_true(c:shutdown("send"))
      local d, err, code = a:recv()
      assert.is_nil(d)
      assert.equal("closed", err)
      assert.equal(0, code)
      assert.equal(4, a:send("back"))
      assert.equal("back", c:recv())
      assert.is_true(socket.shutdown(a, "both"))
      assert.is_nil((c:recv()))
    end)

    it("raises on an unknown direction", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      assert.has_error(function() c:shutdown("sideways") end,
        "bad argument #1 to 'shutdown' (invalid option 'sideways')")
    end)

    it("returns nil, message, ENOTCONN on an unconnected socket", function()
      local s = assert(socket.open_socket("127.0.0.1", 0))
      finally(function() s:close() end)
      local ok, err, code = s:shutdown("recv")
      assert.is_nil(ok)
      assert.equal("shutdown: Transport endpoint is not connected", err)
      assert.equal(ENOTCONN, code)
    end)
  end)

  describe("settimeout", function()
    it("returns true; nil or a negative value blocks again", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      assert.is_true(a:settimeout(0.01))
      assert.equal("timeout", select(2, a:recv()))
      assert.is_true(a:settimeout(nil))
      assert.is_true(socket.settimeout(a, -1))
      c:send("x")
      assert.equal("x", a:recv())
    end)

    it("raises on NaN or a non-number", function()
      local s = assert(socket.open_socket("127.0.0.1", 0))
      finally(function() s:close() end)
      assert.has_error(function() socket.settimeout(s, 0 / 0) end,
        "bad argument #2 to 'settimeout' (timeout is NaN)")
      assert.has_error(function() socket.settimeout(s, "soon") end,
        "bad argument #2 to 'settimeout' (number expected, got string)")
    end)
  end)

  describe("peername and sockname", function()
    it("return host, port, family of each end", function()
      local c, a, srv = pair("::1")
      finally(function() close_all(c, a, srv) end)
      local h, p, f = socket.peername(c)
      assert.same({"::1", select(2, srv:sockname()), "inet6"}, {h, p, f})
      assert.same({socket.sockname(c)}, {a:peername()})
    end)

    it("peername returns nil, message, ENOTCONN on a listener", function()
      local srv = listener()
      finally(function() srv:close() end)
      local h, err, code = srv:peername()
      assert.is_nil(h)
      assert.equal("getpeername: Transport endpoint is not connected", err)
      assert.equal(ENOTCONN, code)
    end)
  end)

  describe("fileno", function()
    it("returns the descriptor", function()
      local c, a, srv = pair()
      finally(function() close_all(c, a, srv) end)
      local fc, fa = c:fileno(), socket.fileno(a)
      assert.is_true(math.type(fc) == "integer" and fc > 2)
      assert.not_equal(fc, fa)
    end)
  end)

  describe("closing", function()
    it("close_socket and close return true; tostring shows the state", function()
      local s = assert(socket.open_socket("127.0.0.1", 0))
      assert.equal(("echohost.socket (fd %d)"):format(s:fileno()), tostring(s))
      assert.is_true(socket.close_socket(s))
      assert.equal("echohost.socket (closed)", tostring(s))
      local t = assert(socket.open_socket("127.0.0.1", 0))
      assert.is_true(t:close())
      assert.equal("echohost.socket (closed)", tostring(t))
    end)

    it("raises 'attempt to use a closed socket' on every use after close", function()
      local s = assert(socket.open_socket("127.0.0.1", 0))
      s:close()
      local uses = {
        function() s:close() end, function() s:recv() end,
        function() s:send("x") end, function() s:listen() end,
        function() s:accept() end, function() s:shutdown() end,
        function() s:settimeout(1) end, function() s:peername() end,
        function() s:sockname() end, function() s:fileno() end,
        function() socket.close_socket(s) end,
        function() socket.accept_connection(s) end,
      }
      for _, use in ipairs(uses) do
        assert.has_error(use, "attempt to use a closed socket")
      end
    end)

    it("raises on something that is not a socket", function()
      assert.has_error(function() socket.recv(nil) end,
        "bad argument #1 to 'recv' (echohost.socket expected, got nil)")
      assert.has_error(function() socket.close_socket(io.stdout) end,
        "bad argument #1 to 'close_socket' (echohost.socket expected, got FILE*)")
    end)

    it("closes a to-be-closed socket when its scope ends", function()
      local kept, port
      do
        local s <close> = assert(socket.open_socket("127.0.0.1", 0))
        assert(s:listen())
        kept, port = s, select(2, s:sockname())
        assert.equal(("echohost.socket (fd %d)"):format(s:fileno()), tostring(s))
      end
      assert.equal("echohost.socket (closed)", tostring(kept))
      local c, err, code = socket.connect("127.0.0.1", port)
      assert.same({nil, ECONNREFUSED}, {c, code}, err)
    end)

    it("closes on garbage collection, releasing the port", function()
      local port
      do
        local s = assert(socket.open_socket("127.0.0.1", 0))
        assert(s:listen())
        port = select(2, s:sockname())
      end
      collectgarbage()
      collectgarbage()
      local s = assert(socket.open_socket("127.0.0.1", port))
      finally(function() s:close() end)
      assert.is_true(s:listen())
    end)
  end)
end)
