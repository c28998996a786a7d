-- tests/deps.sh: what `make` runs first to install missing Debian packages.
local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)\n$"))
  return rc, out:gsub("rc=%d+\n$", "")
end

-- As user nobody, from /, reading the script on stdin: the checkout may sit
-- in a folder nobody cannot enter.
local function as_nobody(args)
  return "sh -c 'cd / && exec setpriv --reuid=65534 --regid=65534 --clear-groups"
    .. " sh -s -- " .. args .. "' < tests/deps.sh"
end

describe("tests/deps.sh", function()
  it("does nothing when every package is installed", function()
    local rc, out = run("sh tests/deps.sh lua5.4 lua-busted")
    assert.equal(0, rc)
    assert.equal("", out)
  end)

  it("names the missing packages in one line and fails when not root", function()
    local rc, out = run(as_nobody(
      "lua5.4 echohost-no-such-pkg-a echohost-no-such-pkg-b"))
    assert.equal(1, rc)
    assert.equal("echohost: missing Debian packages: echohost-no-such-pkg-a "
      .. "echohost-no-such-pkg-b (install them, or run make as root)\n", out)
  end)

  it("runs as a user that lacks nothing without asking for root", function()
    local rc, out = run(as_nobody("lua5.4"))
    assert.equal(0, rc)
    assert.equal("", out)
  end)
end)
