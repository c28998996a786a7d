-- The command line as a newcomer meets it (issue 16): the README's flag
-- table is `echohost --help`, flags that need another one say so, sizes,
-- start-up failures before "listening on", and the wording of the logs.
local server = require "helpers.server"
local util = require "helpers.util"

local function help()
  local code, _, out = server.run({ "--help" })
  assert.equal(0, code)
  return out
end

-- {["--listen"] = "ADDR:PORT", ["--watch"] = "", ...} from --help's lines
-- "  --flag ARG   text" and "  -h, --help", plus the usage lines' modes.
local function help_flags(out)
  local flags = {}
  for line in out:gmatch("[^\n]+") do
    local flag, rest = line:match("^  (%-%-[%w-]+)(.*)$")
    if not flag then
      flag, rest = line:match("^  %-%w, (%-%-[%w-]+)(.*)$")
    end
    if flag then
      flags[flag] = rest:match("^ (%S+)") or ""
    end
  end
  flags["--script"] = "[LUA-ARGS]"
  flags["--test"] = "[BUSTED-ARGS]"
  flags["--repl"] = ""
  return flags
end

-- The same from the README's table under "## Server".
local function readme_flags(readme)
  local section = readme:match("\n## Server\n(.-)\n## ")
  local flags = {}
  for cell in section:gmatch("\n| (.-) | ") do
    for flag, arg in cell:gmatch("`(%-%-[%w-]+) ?([^`]*)`") do
      flags[flag] = arg:gsub("\\|", "|")
    end
  end
  return flags, section
end

describe("echohost --help and README.md", function()
  it("list the same flags with the same arguments", function()
    local out = help()
    local want, section = readme_flags(util.slurp("README.md"))
    assert.same(help_flags(out), want)
    -- the synopsis is the usage lines
    local usage = out:match("^(usage:.-)\n\n")
    local synopsis = section:match("\n(    usage:.-)\n\n"):gsub("\n    ", "\n"):sub(5)
    assert.equal(usage, synopsis)
  end)

  it("say every BYTES flag takes k, m and g", function()
    local out = help()
    assert.matches("BYTES is a count, or one with a suffix k, m or g", out, 1, true)
    assert.is_nil(out:find("suffixes k, m)", 1, true))
  end)
end)

describe("echohost flags that need another one", function()
  local cases = {
    { { "--watch" }, "--watch needs --handler" },
    { { "--lua-budget", "1000" }, "--lua-budget needs --handler" },
    { { "--lua-mem", "8m" }, "--lua-mem needs --handler or --control" },
    { { "--model", "fork", "--watch" }, "--watch needs --handler" },
    { { "--repl", "--lua-mem", "8m" }, "--lua-mem needs --handler or --control" },
  }
  for _, case in ipairs(cases) do
    it("exit 2 naming the flag: " .. table.concat(case[1], " "), function()
      local code, err = server.run(case[1], 5)
      assert.equal(2, code)
      assert.equal("echohost: " .. case[2], err:match("^[^\n(]*"):gsub(" $", ""))
      assert.matches("Try 'echohost %-%-help'", err)
    end)
  end

  it("are accepted with it", function()
    local srv = server.start({ "--workers", "1", "--handler", "scripts/echo.lua", "--watch",
      "--lua-mem", "8m", "--lua-budget", "1000000" })
    local ctl
    finally(function()          -- busted keeps one finally() per test
      srv:stop()
      if ctl then ctl:stop() end
    end)
    assert.equal("ok", server.echo(srv.host, srv.port, "ok"))
    local sock = util.tmpname() .. ".sock"
    ctl = server.start({ "--workers", "1", "--control", sock, "--lua-mem", "8m" })
    assert.equal("ok", server.echo(ctl.host, ctl.port, "ok"))
  end)
end)

describe("echohost sizes", function()
  it("accept k, m and g", function()
    local srv = server.start({ "--workers", "1", "--high-water", "1g" })
    finally(function() srv:stop() end)
    assert.equal("big", server.echo(srv.host, srv.port, "big"))
  end)

  it("say a size is too large, with the maximum", function()
    for _, a in ipairs({ "5000000000000", "1025g", "99999999999999999999999" }) do
      local code, err = server.run({ "--high-water", a }, 5)
      assert.equal(2, code)
      assert.matches("^echohost: bad %-%-high%-water '" .. a
        .. "' %(too large: at most 1024g%)\n", err)
    end
    local code, err = server.run({ "--lua-mem", "2000g", "--handler", "scripts/echo.lua" }, 5)
    assert.equal(2, code)
    assert.matches("^echohost: bad %-%-lua%-mem '2000g' %(too large: at most 1024g%)", err)
  end)

  it("say what a malformed size should be", function()
    local code, err = server.run({ "--high-water", "1t" }, 5)
    assert.equal(2, code)
    assert.matches("^echohost: bad %-%-high%-water '1t' %(want bytes: a count, or with a "
      .. "suffix k, m or g%)", err)
  end)
end)

describe("echohost --listen", function()
  local bad = { "", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
    "127.0.0.1: 80", "127.0.0.1:+80", "127.0.0.1:80x", "[::1]80", "[::1", "udp://",
    "udp://127.0.0.1", "udp://127.0.0.1:", "udp://[::1]", "udp:/127.0.0.1:7",
    "tcp://127.0.0.1:7", "sctp://127.0.0.1:7", "unix:", ",proxy", "unix/tmp/x",
    "unix:/" .. string.rep("x", 107), "127.0.0.1:7 ,proxy" }
  for _, a in ipairs(bad) do
    it("refuses '" .. a .. "' with the forms it takes (exit 2)", function()
      local code, err = server.run({ "--listen", a }, 5)
      assert.equal(2, code)
      assert.equal("echohost: bad --listen '" .. a .. "' (want HOST:PORT, [IPv6]:PORT, "
        .. "*:PORT, udp://HOST:PORT or unix:PATH, port 0..65535)", err:match("^[^\n]*"))
      assert.matches("Try 'echohost %-%-help'", err)
    end)
  end

  it("refuses the same address given twice, and more than 16", function()
    local code, err = server.run({ "--listen", "udp://127.0.0.1:7000", "--listen",
      "127.0.0.1:7000", "--listen", "udp://127.0.0.1:7000" }, 5)
    assert.equal(2, code)
    assert.equal("echohost: --listen 'udp://127.0.0.1:7000' given twice", err:match("^[^\n]*"))
    local args = {}
    for _ = 1, 17 do
      args[#args + 1] = "--listen"
      args[#args + 1] = "127.0.0.1:0"
    end
    code, err = server.run(args, 5)
    assert.equal(2, code)
    assert.equal("echohost: too many --listen (at most 16)", err:match("^[^\n]*"))
  end)

  local bad_options = {
    ["udp://127.0.0.1:7,proxy"] = ",proxy needs a TCP or unix: listener",
    ["127.0.0.1:7,mode=0600"] = ",mode needs a unix: listener",
    ["unix:/tmp/x,mode=0800"] = "want ,mode=OCTAL, 0..0777",
    ["unix:/tmp/x,mode=1777"] = "want ,mode=OCTAL, 0..0777",
    ["unix:/tmp/x,mode="] = "unknown option: want ,proxy, or ,mode=OCTAL after unix:PATH",
    ["unix:/tmp/x,mode=-1"] = "want ,mode=OCTAL, 0..0777",
    ["unix:/tmp/x,mode=06x"] = "want ,mode=OCTAL, 0..0777",
    ["127.0.0.1:7,"] = "unknown option: want ,proxy, or ,mode=OCTAL after unix:PATH",
    ["127.0.0.1:7,proxy,"] = "unknown option: want ,proxy, or ,mode=OCTAL after unix:PATH",
    ["127.0.0.1:7,PROXY"] = "unknown option: want ,proxy, or ,mode=OCTAL after unix:PATH",
    ["[::1]:7,proxy=1"] = "unknown option: want ,proxy, or ,mode=OCTAL after unix:PATH",
  }
  for a, why in pairs(bad_options) do
    it("refuses the options of '" .. a .. "' saying why (exit 2)", function()
      local code, err = server.run({ "--listen", a }, 5)
      assert.equal(2, code)
      assert.equal("echohost: bad --listen '" .. a .. "' (" .. why .. ")", err:match("^[^\n]*"))
    end)
  end

  it("refuses one unix: path twice, and --control on a listener's path", function()
    local code, err = server.run({ "--listen", "unix:/tmp/x", "--listen", "unix:/tmp/x,proxy" }, 5)
    assert.equal(2, code)
    assert.equal("echohost: --listen 'unix:/tmp/x,proxy' given twice", err:match("^[^\n]*"))
    code, err = server.run({ "--listen", "127.0.0.1:7,proxy", "--listen", "127.0.0.1:7" }, 5)
    assert.equal(2, code)
    assert.equal("echohost: --listen '127.0.0.1:7' given twice", err:match("^[^\n]*"))
    code, err = server.run({ "--listen", "unix:/tmp/x", "--control", "/tmp/x" }, 5)
    assert.equal(2, code)
    assert.equal("echohost: --control '/tmp/x' is also a --listen unix: path",
      err:match("^[^\n]*"))
  end)

  it("refuses --proxy-timeout without a ,proxy listener, and a bad timeout", function()
    local code, err = server.run({ "--listen", "127.0.0.1:0", "--proxy-timeout", "1" }, 5)
    assert.equal(2, code)
    assert.matches("^echohost: %-%-proxy%-timeout needs a %-%-listen %.%.%.,proxy", err)
    for _, a in ipairs({ "0", "-1", "x", "3601", "" }) do
      code, err = server.run({ "--listen", "127.0.0.1:0,proxy", "--proxy-timeout", a }, 5)
      assert.equal(2, code)
      assert.equal("echohost: bad --proxy-timeout '" .. a .. "' (want seconds, 0.001..3600)",
        err:match("^[^\n]*"))
    end
  end)

  it("refuses --udp-rate without a UDP listener, and a bad rate", function()
    local code, err = server.run({ "--udp-rate", "10" }, 5)
    assert.equal(2, code)
    assert.matches("^echohost: %-%-udp%-rate needs a %-%-listen udp://HOST:PORT", err)
    for _, a in ipairs({ "-1", "x", "1.5", "100000001" }) do
      code, err = server.run({ "--listen", "udp://127.0.0.1:0", "--udp-rate", a }, 5)
      assert.equal(2, code)
      assert.equal("echohost: bad --udp-rate '" .. a .. "' (want datagrams/s 0..100000000, "
        .. "0=off)", err:match("^[^\n]*"))
    end
  end)

  it("refuses a bad --busy-poll, and it with --model fork, --repl or --script", function()
    for _, a in ipairs({ "-1", "x", "1.5", "100001" }) do
      local code, err = server.run({ "--busy-poll", a }, 5)
      assert.equal(2, code)
      assert.equal("echohost: bad --busy-poll '" .. a .. "' (want microseconds 0..100000, "
        .. "0=off)", err:match("^[^\n]*"))
    end
    local code, err = server.run({ "--busy-poll", "50", "--model", "fork" }, 5)
    assert.equal(2, code)
    assert.matches("^echohost: %-%-busy%-poll needs %-%-model event", err)
    for _, mode in ipairs({ "--repl", "--script" }) do
      code, err = server.run({ "--busy-poll", "50", mode }, 5)
      assert.equal(2, code)
      assert.matches("^echohost: %-%-busy%-poll is a server option", err)
    end
  end)

  it("a taken port among several: exit 1 naming it, before listening", function()
    local srv = server.start({ "--workers", "1", "--listen", "udp://127.0.0.1:0" })
    finally(function() srv:stop() end)
    local taken = "udp://127.0.0.1:" .. srv.port
    for _, model in ipairs({ "event", "fork" }) do
      local code, err = server.run({ "--model", model, "--listen", "127.0.0.1:0",
        "--listen", taken }, 5)
      assert.equal(1, code)
      assert.truthy(err:find("bind 127.0.0.1:" .. srv.port .. ": Address already in use", 1,
        true), err)
      assert.is_nil(err:find("listening on", 1, true))
    end
  end)
end)

describe("echohost start-up failures", function()
  it("a --handler directory: exit 1 with one clear line, before listening", function()
    local dir = util.tmpdir()
    finally(function() os.remove(dir) end)
    for _, model in ipairs({ "event", "fork" }) do
      local code, err = server.run({ "--listen", "127.0.0.1:0", "--model", model,
        "--handler", dir }, 5)
      assert.equal(1, code)
      assert.equal(1, select(2, err:gsub("\n", "")), err)
      assert.truthy(err:find("cannot load the handler: " .. dir, 1, true), err)
      assert.truthy(err:find("Is a directory", 1, true), err)
      assert.is_nil(err:find("listening on", 1, true))
    end
  end)
end)

describe("echohost log wording", function()
  after_each(server.stop_all)

  it("counts one worker in the singular", function()
    local file = util.write_tmp("return function(conn, data) return data end\n")
    finally(function() os.remove(file) end)
    local srv = server.start({ "--workers", "1", "--handler", file })
    assert.matches("listening on [^\n]* %(1 worker, ", srv:log())
    assert.truthy(srv:signal("HUP"))
    assert.truthy(srv:wait_log("SIGHUP: reloading the handler in (%d+ %a+)\n", 5))
    assert.equal("1 worker", srv:wait_log("SIGHUP: reloading the handler in (%d+ %a+)\n", 5))
    assert.is_nil(srv:log():find("1 workers", 1, true))
  end)

  it("does not log EAGAIN as an accept error when out of descriptors", function()
    local srv = server.start({ "--workers", "1" }, { nofile = 32 })
    assert(srv:wait_children(1, 5))
    local cs = {}
    finally(function() for _, c in ipairs(cs) do c:close() end end)
    for i = 1, 40 do
      cs[i] = srv:connect(3)
    end
    for _, c in ipairs(cs) do
      c:settimeout(1)
      c:send("x\n")
      c:receive("*l")
    end
    assert.matches("Too many open files: refusing connections", srv:log())
    assert.is_nil(srv:log():find("Resource temporarily unavailable", 1, true), srv:log())
  end)
end)
