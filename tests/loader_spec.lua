-- echohost.loader: the one policy that accepts or refuses a handler file (the
-- messages, exact), its environment, its require of sibling modules (fresh
-- on every load), and the calls that would stop the server (os.exit,
-- proc.exit, proc.fork), at load time and in a handler.
local loader = require "echohost.loader"
local harness = require "echohost.harness"
local util = require "helpers.util"

local dir

local function write(name, text)
  local path = dir .. "/" .. name
  util.spit(path, text)
  return path
end

local RETURNED = ": returned %s; a handler returns a function or a table with handle, "
  .. "on_open, on_data, on_close or on_datagram"
local BOTH = ": returned a table with both handle and %s: handle(conn) serves the whole "
  .. "connection, so the callbacks would never run"
local f = function() end

setup(function()
  dir = util.tmpdir("/tmp/echohost-loader.XXXXXX")
  assert(dir and dir:match("^/tmp/echohost%-loader%."))
  os.execute("mkdir -p '" .. dir .. "/pkg' '" .. dir .. "/sub'")
end)

teardown(function()
  if dir and not os.getenv("KEEP_TMP") then
    os.execute("rm -rf '" .. dir .. "'")
  end
end)

describe("loader.check", function()
  it("takes a bare function as kind fn, the function in on_data and on_datagram", function()
    local h = assert(loader.check(f, "x.lua"))
    assert.same({ "fn", f, nil, nil, nil, f },
      { h.kind, h.on_data, h.on_open, h.on_close, h.handle, h.on_datagram })
    assert.same({}, h.modules)
  end)

  it("takes on_datagram beside callbacks, beside handle, and alone (callbacks)", function()
    local g = function() end
    local h = assert(loader.check({ on_data = f, on_datagram = g }, "x.lua"))
    assert.same({ "callbacks", f, g }, { h.kind, h.on_data, h.on_datagram })
    h = assert(loader.check({ handle = f, on_datagram = g }, "x.lua"))
    assert.same({ "direct", f, g }, { h.kind, h.handle, h.on_datagram })
    h = assert(loader.check({ on_datagram = g }, "x.lua"))
    assert.same({ "callbacks", nil, nil, nil, g },
      { h.kind, h.on_open, h.on_data, h.on_close, h.on_datagram })
  end)

  it("takes a table of callbacks as kind callbacks", function()
    local g = function() end
    local h = assert(loader.check({ on_open = f, on_close = g }, "x.lua"))
    assert.same({ "callbacks", f, nil, g, nil },
      { h.kind, h.on_open, h.on_data, h.on_close, h.handle })
  end)

  it("takes a table with handle as kind direct", function()
    local h = assert(loader.check({ handle = f }, "x.lua"))
    assert.same({ "direct", f, nil }, { h.kind, h.handle, h.on_data })
  end)

  for _, v in ipairs({ { 42, "number" }, { "x", "string" }, { true, "boolean" } }) do
    it("refuses a " .. v[2] .. " value", function()
      assert.same({ nil, "x.lua" .. RETURNED:format(v[2]) }, { loader.check(v[1], "x.lua") })
    end)
  end

  it("refuses nil (a file without return) and names it 'handler' by default", function()
    assert.same({ nil, "handler" .. RETURNED:format("nil") }, { loader.check(nil) })
  end)

  for _, field in ipairs({ "handle", "on_open", "on_data", "on_close", "on_datagram" }) do
    it("refuses a " .. field .. " that is not a function", function()
      assert.same({ nil, "x.lua: " .. field .. " is a string, expected a function" },
        { loader.check({ [field] = "no" }, "x.lua") })
    end)
  end

  it("refuses a table without handle or callbacks", function()
    assert.same({ nil, "x.lua: returned a table without handle, on_open, on_data, on_close or "
      .. "on_datagram" },
      { loader.check({ data = f }, "x.lua") })
  end)

  it("refuses handle with callbacks, naming the first of on_open, on_data, on_close", function()
    assert.same({ nil, "x.lua" .. BOTH:format("on_open") },
      { loader.check({ handle = f, on_close = f, on_data = f, on_open = f }, "x.lua") })
    assert.same({ nil, "x.lua" .. BOTH:format("on_data") },
      { loader.check({ handle = f, on_close = f, on_data = f }, "x.lua") })
    assert.same({ nil, "x.lua" .. BOTH:format("on_close") },
      { loader.check({ handle = f, on_close = f }, "x.lua") })
  end)
end)

describe("loader.load", function()
  it("loads a file and checks what it returned", function()
    local h = assert(loader.load("scripts/kv.lua"))
    assert.equal("callbacks", h.kind)
    assert.same({}, h.modules)
  end)

  it("names the file when its value is refused", function()
    local p = write("num.lua", "return 42\n")
    assert.same({ nil, p .. RETURNED:format("number") }, { loader.load(p) })
  end)

  it("reports a syntax error as file:line: message", function()
    local p = write("syntax.lua", "return function()\n  x = = 1\nend\n")
    assert.same({ nil, p .. ":2: unexpected symbol near '='" }, { loader.load(p) })
  end)

  it("keeps only the first line of an error raised while the file runs", function()
    local p = write("raise.lua", "\nerror('first\\nsecond')\n")
    assert.same({ nil, p .. ":2: first" }, { loader.load(p) })
  end)

  it("prefixes the file to a message that does not name it", function()
    local p = write("plain.lua", "error('instruction budget exceeded', 0)\n")
    assert.same({ nil, p .. ": instruction budget exceeded" }, { loader.load(p) })
  end)

  it("describes an error object that is not a string", function()
    local p = write("object.lua", "error({})\n")
    assert.same({ nil, p .. ": (error object is a table value)" }, { loader.load(p) })
  end)

  it("prefixes the file to a missing file's message", function()
    local p = dir .. "/missing.lua"
    assert.same({ nil, p .. ": cannot open " .. p .. ": No such file or directory" },
      { loader.load(p) })
  end)

  it("runs the file in a fresh environment that reads _G and writes only its own", function()
    local p = write("env.lua", "seen = type(print) .. ' ' .. tostring(seen)\n"
      .. "return function() return seen end\n")
    local h1 = assert(loader.load(p))
    local h2 = assert(loader.load(p))
    assert.is_nil(rawget(_G, "seen"))
    assert.equal("function nil", h1.on_data())
    assert.equal("function nil", h2.on_data())   -- not the first load's global
  end)

  it("is a pure Lua module: a stock lua5.4 without C modules loads handlers", function()
    local out, status = util.run("lua5.4 -e \"package.path = 'lua/?.lua'; package.cpath = ''; "
      .. "local l = require 'echohost.loader'; print(l.load('scripts/echo.lua').kind)\" 2>&1")
    assert.same({ "fn\n", 0 }, { out, status })
  end)
end)

describe("loader require", function()
  it("loads a sibling module next to the handler and records its path", function()
    write("greet.lua", "local name, path = ...\nreturn { prefix = name .. ' ' .. path }\n")
    local p = write("uses_greet.lua",
      "local g = require 'greet'\nreturn function(_, d) return g.prefix .. ':' .. d end\n")
    local h = assert(loader.load(p))
    assert.equal("greet " .. dir .. "/greet.lua:x", h.on_data(nil, "x"))
    assert.same({ dir .. "/greet.lua" }, h.modules)
  end)

  it("finds a.b as DIR/a/b.lua and a package as DIR/name/init.lua", function()
    write("sub/part.lua", "return 'part'\n")
    write("pkg/init.lua", "return 'pkg ' .. require('sub.part')\n")
    local p = write("uses_pkg.lua", "local v = require 'pkg'\nreturn function() return v end\n")
    local h = assert(loader.load(p))
    assert.equal("pkg part", h.on_data())
    assert.same({ dir .. "/pkg/init.lua", dir .. "/sub/part.lua" }, h.modules)
  end)

  it("reloads a module on every load of the handler", function()
    local m = write("version.lua", "return 1\n")
    local p = write("uses_version.lua", "local v = require 'version'\n"
      .. "return function() return 'version ' .. v end\n")
    assert.equal("version 1", assert(loader.load(p)).on_data())
    util.spit(m, "return 2\n")
    assert.equal("version 2", assert(loader.load(p)).on_data())
  end)

  it("loads a module required twice in one load once", function()
    write("counted.lua", "_G.counted_loads = (_G.counted_loads or 0) + 1\nreturn {}\n")
    write("also.lua", "return require 'counted'\n")
    local p = write("uses_counted.lua", "local a, b = require 'counted', require 'also'\n"
      .. "return function() return tostring(a == b) end\n")
    finally(function() _G.counted_loads = nil end)
    local h = assert(loader.load(p))
    assert.same({ "true", 1 }, { h.on_data(), _G.counted_loads })
    assert.same({ dir .. "/counted.lua", dir .. "/also.lua" }, h.modules)
  end)

  it("runs each module in its own environment", function()
    write("leaky.lua", "leaked = 'from the module'\nreturn true\n")
    local p = write("uses_leaky.lua", "local r = require 'leaky'\n"
      .. "return function() return tostring(r) .. ' ' .. tostring(leaked) end\n")
    assert.equal("true nil", assert(loader.load(p)).on_data())
  end)

  it("falls back to the ordinary require for other names", function()
    local p = write("uses_std.lua", "local pretty = require 'echohost.pretty'\n"
      .. "return function() return tostring(require('string') == string and "
      .. "pretty == package.loaded['echohost.pretty']) end\n")
    assert.equal("true", assert(loader.load(p)).on_data())
  end)

  it("names the directory searched when a module is nowhere", function()
    local p = write("uses_nothing.lua", "require 'no_such_module'\n")
    assert.same({ nil, p .. ":1: module 'no_such_module' not found (in " .. dir
      .. ", package.path or package.cpath)" }, { loader.load(p) })
  end)

  it("reports a module's syntax error naming both files", function()
    local m = write("broken.lua", "return )\n")
    local p = write("uses_broken.lua", "require 'broken'\n")
    assert.same({ nil, p .. ": " .. m .. ":1: unexpected symbol near ')'" }, { loader.load(p) })
  end)

  it("names the caller of os.exit even through a tail call", function()
    write("tail.lua", "return os.exit(0)\n")
    local p = write("uses_tail.lua", "local x = 1\nrequire 'tail'\n")
    assert.same({ nil, p .. ":2: " .. loader.OS_EXIT }, { loader.load(p) })
  end)

  it("refuses a require cycle", function()
    write("cycle_a.lua", "local b = require 'cycle_b'\nreturn b\n")
    write("cycle_b.lua", "local a = require 'cycle_a'\nreturn a\n")
    local p = write("uses_cycle.lua", "require 'cycle_a'\n")
    assert.same({ nil, p .. ": " .. dir .. "/cycle_b.lua:1: loop or previous error loading "
      .. "module 'cycle_a'" }, { loader.load(p) })
  end)
end)

describe("calls that would stop the server", function()
  -- A stand-in echohost.proc, so that these run without the C build.
  local real
  local fake = { getpid = function() return 4242 end,
                 exit = function() error("the real exit ran") end,
                 fork = function() error("the real fork ran") end }
  before_each(function()
    real = package.loaded["echohost.proc"]
    package.loaded["echohost.proc"] = fake
  end)
  after_each(function() package.loaded["echohost.proc"] = real end)

  it("os.exit raises at load time", function()
    local p = write("os_exit.lua", "os.exit(1)\n")
    assert.same({ nil, p .. ":1: " .. loader.OS_EXIT }, { loader.load(p) })
    assert.equal("os.exit is not available in a handler: it would end the server's other "
      .. "connections; close the connection instead", loader.OS_EXIT)
  end)

  it("proc.exit raises at load time", function()
    local p = write("proc_exit.lua", "local proc = require 'echohost.proc'\nproc.exit(0)\n")
    assert.same({ nil, p .. ":2: proc.exit is not available in a handler: it would end the "
      .. "server's other connections; close the connection instead" }, { loader.load(p) })
  end)

  it("proc.fork raises at load time", function()
    local p = write("proc_fork.lua", "require('echohost.proc').fork()\n")
    assert.same({ nil, p .. ":1: proc.fork is not available in a handler: a copy of the "
      .. "server would serve this connection twice" }, { loader.load(p) })
  end)

  it("os.exit raises in a module a handler requires", function()
    local m = write("exits.lua", "os.exit(0)\n")
    local p = write("uses_exits.lua", "require 'exits'\n")
    assert.same({ nil, p .. ": " .. m .. ":1: " .. loader.OS_EXIT }, { loader.load(p) })
  end)

  it("leaves the rest of os and echohost.proc usable", function()
    local p = write("uses_rest.lua", "local proc = require 'echohost.proc'\n"
      .. "return function() return type(os.time()) .. ' ' .. proc.getpid() .. ' ' .. "
      .. "tostring(require('os') == os) end\n")
    assert.equal("number 4242 true", assert(loader.load(p)).on_data())
  end)

  for _, call in ipairs({ { "os.exit", "os.exit(0)", loader.OS_EXIT },
                          { "proc.exit", "require('echohost.proc').exit(0)", loader.PROC_EXIT },
                          { "proc.fork", "require('echohost.proc').fork()", loader.PROC_FORK } }) do
    it(call[1] .. " raises in a handler: an error that closes that connection", function()
      local p = write("in_handler.lua", "return function(_, data)\n  " .. call[2]
        .. "\n  return data\nend\n")
      local r = harness.run(p, { "x" })
      assert.same({ "error", "" }, { r.reason, r.sent })
      assert.equal(p .. ":2: " .. call[3], r.error:match("^[^\n]*"))
    end)
  end
end)

describe("the default instruction budget", function()
  it("ends a handler that loops forever", function()
    local p = write("loop.lua", "return function()\n  while true do end\nend\n")
    local r = harness.run(p, { "x" })
    assert.equal("error", r.reason)
    assert.equal(p .. ":2: instruction budget exceeded", r.error:match("^[^\n]*"))
  end)

  it("ends a file that loops forever while it loads", function()
    local p = write("load_loop.lua", "while true do end\n")
    assert.same({ false, p .. ":1: instruction budget exceeded" }, { pcall(harness.open, p) })
  end)
end)

describe("loader provided modules (settings and logging)", function()
  local SETTINGS = "echohost.settings"

  it("require returns a provided module, in the handler and in its modules", function()
    local log = { warn = f }
    write("asks.lua", "return require('echohost.log')\n")
    local p = write("uses_provided.lua", "local s = require 'echohost.settings'\n"
      .. "local log = require 'echohost.log'\n"
      .. "return function() return s.greeting, log, require('asks') end\n")
    local h = assert(loader.load(p, { [SETTINGS] = { greeting = "hola" }, ["echohost.log"] = log }))
    local greeting, got, via_module = h.on_data()
    assert.equal("hola", greeting)
    assert.equal(log, got)                    -- other provided values: as given
    assert.equal(log, via_module)
    assert.same({ dir .. "/asks.lua" }, h.modules)
  end)

  it("is not shadowed by a local file of the same name", function()
    os.execute("mkdir -p '" .. dir .. "/echohost'")
    write("echohost/settings.lua", "return { greeting = 'from the file' }\n")
    write("echohost/log.lua", "return 'the local log'\n")
    local p = write("shadow.lua", "local s = require 'echohost.settings'\n"
      .. "local log = require 'echohost.log'\n"
      .. "return function() return s.greeting .. ' ' .. type(log) end\n")
    local h = assert(loader.load(p, { [SETTINGS] = { greeting = "provided" },
                                      ["echohost.log"] = {} }))
    assert.equal("provided table", h.on_data())
    assert.same({}, h.modules)                -- the local files were not loaded
    -- without provided, the local files are what require finds
    h = assert(loader.load(p))
    assert.equal("from the file string", h.on_data())
  end)

  it("copies the settings for each load: a handler's changes stay in its copy", function()
    write("peeks.lua", "return require('echohost.settings')\n")
    local p = write("changes.lua", "local s = require 'echohost.settings'\n"
      .. "local before = tostring(s.greeting)\n"
      .. "s.greeting, s.added = 'changed', 'x'\n"
      .. "return function() return before, s, require('peeks') end\n")
    local settings = { greeting = "hola" }
    local provided = { [SETTINGS] = settings }
    local h1 = assert(loader.load(p, provided))
    local h2 = assert(loader.load(p, provided))
    local before1, s1, m1 = h1.on_data()
    local before2, s2 = h2.on_data()
    assert.same({ "hola", "hola" }, { before1, before2 })   -- the second load saw no change
    assert.not_equal(s1, s2)
    assert.not_equal(settings, s1)
    assert.equal(s1, m1)                      -- one copy per load, shared with its modules
    assert.same({ greeting = "hola" }, settings)
    assert.equal(settings, provided[SETTINGS])
    assert.same({ greeting = "changed", added = "x" }, s1)
  end)

  it("gives nil for a missing key", function()
    local p = write("missing_key.lua", "local s = require 'echohost.settings'\n"
      .. "return function() return tostring(s.nope) end\n")
    assert.equal("nil", assert(loader.load(p, { [SETTINGS] = {} })).on_data())
  end)

  it("raises when provided is not a table", function()
    local p = write("any.lua", "return function() end\n")
    assert.has_error(function() loader.load(p, 42) end,
      "bad argument #2 to 'load' (table expected, got number)")
    assert.has_error(function() loader.env(dir, {}, {}, "x") end,
      "bad argument #4 to 'env' (table expected, got string)")
  end)
end)

describe("loader.logger", function()
  local lines
  local log
  before_each(function()
    lines = {}
    log = loader.logger(function(level, line) lines[#lines + 1] = level .. "|" .. line end)
  end)

  it("writes '<level>: handler <file>:<line>: <message>' naming the caller", function()
    local p = write("logs.lua", "local log = require 'echohost.log'\n"
      .. "return function(_, data)\n"
      .. "  log.warn('saw %d bytes', #data)\n"
      .. "  log.error('e'); log.info('i %s', 'x')\n"
      .. "  log.debug('100%')\n"
      .. "end\n")
    local h = assert(loader.load(p, { ["echohost.log"] = log }))
    h.on_data(nil, "abc")
    assert.same({ "warn|warn: handler " .. p .. ":3: saw 3 bytes",
                  "error|error: handler " .. p .. ":4: e",
                  "info|info: handler " .. p .. ":4: i x",
                  "debug|debug: handler " .. p .. ":5: 100%" }, lines)
  end)

  it("takes a number as the message, as luaL_checkstring", function()
    log.info(42)
    assert.matches("^info|info: handler .*loader_spec%.lua:%d+: 42$", lines[1])
  end)

  it("raises on a message that is not a string, naming the caller", function()
    local p = write("misuse.lua", "local log = require 'echohost.log'\n"
      .. "return function(_, data)\n  log.info(data)\nend\n")
    local h = assert(loader.load(p, { ["echohost.log"] = log }))
    assert.same({ false, p .. ":3: bad argument #1 to 'info' (string expected, got nil)" },
      { pcall(h.on_data, nil, nil) })
    assert.same({ false, "bad argument #1 to 'warn' (string expected, got no value)" },
      { pcall(log.warn) })
    assert.has_error(function() log.debug("%d", "x") end)   -- string.format's own error
    assert.same({}, lines)
  end)
end)
