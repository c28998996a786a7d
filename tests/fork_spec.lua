-- The fork model (--model fork, no handler): a child per connection
-- echoing in C, reaped when it ends; --max-conns bounds live children.
local socket = require "socket"
local server = require "helpers.server"
local util = require "helpers.util"

-- Children of pid still alive (zombies count: they must not exist).
local function zombies(pid)
  local z = {}
  for _, k in ipairs(server.children_of(pid)) do
    if server.state(k) == "Z" then z[#z + 1] = k end
  end
  return z
end

describe("echohost --model fork", function()
  after_each(server.stop_all)

  it("serves sequential clients and leaves no zombies", function()
    local srv = server.start({ "--model", "fork" })
    assert.matches("fork model", srv:log())
    for i = 1, 10 do
      local data = server.pattern(1000 * i)
      local got, ended = server.echo(srv.host, srv.port, data,
        { half_close = true, timeout = 5 })
      assert.equal("closed", ended)
      assert.is_true(got == data)
    end
    assert.truthy(server.wait(function()
      return #server.children_of(srv.pid) == 0
    end, 5), "children left behind")
    assert.same({}, zombies(srv.pid))
  end)

  it("serves concurrent clients, one child each", function()
    local srv = server.start({ "--model", "fork" })
    local cs = {}
    finally(function() for _, c in ipairs(cs) do c:close() end end)
    for i = 1, 20 do
      cs[i] = srv:connect()
      assert(cs[i]:send("hello " .. i .. "\n"))
    end
    for i = 1, 20 do
      assert.equal("hello " .. i, cs[i]:receive("*l"))
    end
    assert.equal(20, #srv:children())
    -- a large echo through one child while the others stay open
    local data = server.pattern(4 * 1048576)
    local got = server.exchange(cs[7], data, { timeout = 20 })
    assert.is_true(got == data)
    for _, c in ipairs(cs) do c:close() end
    cs = {}
    assert.truthy(server.wait(function()
      return #server.children_of(srv.pid) == 0
    end, 5), "children left behind")
  end)

  it("bounds live children with --max-conns", function()
    local srv = server.start({ "--model", "fork", "--max-conns", "2" })
    local a, b = srv:connect(3), srv:connect(3)
    finally(function() a:close(); b:close() end)
    assert(a:send("a\n")); assert.equal("a", a:receive("*l"))
    assert(b:send("b\n")); assert.equal("b", b:receive("*l"))
    local extra = srv:connect(3)
    local d, err = extra:receive(1)
    extra:close()
    assert.is_nil(d)
    assert.matches("closed", err)
    assert.equal(2, #srv:children())
    a:close()
    assert.truthy(server.wait(function()
      return server.echo(srv.host, srv.port, "c", { timeout = 1 }) == "c"
    end, 5))
  end)

  it("closes a silent client after --idle-timeout", function()
    local srv = server.start({ "--model", "fork", "--idle-timeout", "0.3" })
    local c = srv:connect(3)
    finally(function() c:close() end)
    local t0 = socket.gettime()
    local d, err = c:receive(1)
    assert.is_nil(d)
    assert.equal("closed", err)
    assert.is_true(socket.gettime() - t0 < 2)
  end)

  it("drains on SIGTERM: a connected client finishes, exit 0", function()
    local srv = server.start({ "--model", "fork", "--drain-timeout", "5" })
    local c = srv:connect(3)
    finally(function() c:close() end)
    assert(c:send("before\n"))
    assert.equal("before", c:receive("*l"))
    srv:signal("TERM")
    assert.truthy(srv:wait_log("draining 1 children", 3))
    assert(c:send("during\n"))
    assert.equal("during", c:receive("*l"))
    c:close()
    assert.equal(0, srv:wait_exit(5))
    local report = srv:sanitizer_report()
    assert(report == nil, report)
  end)

  it("kills children left at the drain deadline", function()
    local srv = server.start({ "--model", "fork", "--drain-timeout", "0.3" })
    local c = srv:connect(3)
    finally(function() c:close() end)
    assert(c:send("x\n"))
    assert.equal("x", c:receive("*l"))
    local kid = srv:children()[1]
    srv:signal("TERM")
    local d, err = c:receive(1)
    assert.is_nil(d)
    assert.equal("closed", err)
    assert.equal(0, srv:wait_exit(5))
    assert.is_nil(server.state(kid))
  end)

  -- Each mapped library is areas a fork copies and an exit unmaps, per
  -- connection here: Lua is linked in (liblua5.4.a), and the prompts' line
  -- editing (libedit and what it pulls in) is loaded only by a prompt.
  it("maps no library but libc and libm, in the master and a child", function()
    local srv = server.start({ "--model", "fork" })
    local c = srv:connect(3)
    finally(function() c:close() end)
    assert(c:send("x\n"))
    assert.equal("x", c:receive("*l"))
    for _, pid in ipairs({ srv.pid, srv:children()[1] }) do
      local libs = {}
      for line in io.lines("/proc/" .. pid .. "/maps") do
        local lib = line:match("/([^/]+%.so[%.%d]*)$")
        if lib then libs[lib:match("^[^.]+")] = true end
      end
      libs["ld-linux-x86-64"] = nil
      if libs.libasan then        -- make asan-test: the sanitizers' runtimes
        for _, l in ipairs({ "libasan", "libubsan", "libgcc_s", "libstdc++" }) do
          libs[l] = nil
        end
      end
      assert.same({ libc = true, libm = true }, libs)
    end
  end)

  -- Each page a child writes is a copy-on-write fault and each page of code
  -- it runs a fault too: the C echo's child runs only its server's code
  -- and libc's, writes its stack, the read buffer and what fork and libc
  -- write (13-15 here, refecho -f's 10); the master copies its stack pages
  -- again after each fork. A guard: touching the handler state, freeing,
  -- stdio or the heap table of children would take far more.
  it("takes few page faults per connection, in a C echo child and in the master", function()
    local srv = server.start({ "--model", "fork" })
    local function faults()
      local f = {}
      for w in util.slurp("/proc/" .. srv.pid .. "/stat"):match("%) (.*)"):gmatch("%S+") do
        f[#f + 1] = w
      end
      return tonumber(f[8]), tonumber(f[9])     -- minflt, cminflt (reaped children)
    end
    local function conns(n)
      for i = 1, n do
        assert.equal("hello " .. i, server.echo(srv.host, srv.port, "hello " .. i))
      end
      assert.truthy(server.wait(function() return #srv:children() == 0 end, 5))
    end
    conns(20)                           -- the master's first pages
    local master0, children0 = faults()
    conns(200)
    local master1, children1 = faults()
    local per_child = (children1 - children0) / 200
    local per_master = (master1 - master0) / 200
    if os.getenv("ECHOHOST_ASAN") then  -- the sanitizers' shadow pages
      return
    end
    assert.is_true(per_child <= 18, ("%.2f faults per child"):format(per_child))
    assert.is_true(per_master <= 9, ("%.2f faults in the master per connection"):format(per_master))
  end)
end)
