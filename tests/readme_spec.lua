-- README.md's examples, run as printed. An example is the indented code
-- block right after a line "<!-- readme_spec: KIND [ARG] -->" (an HTML
-- comment: invisible on the rendered page). KIND:
--   lua         runs under `echohost --script` from the repository's root,
--               with LUA_PATH on lua/ as the README says. Each "--> text"
--               is one line of its output, in order: two or more spaces
--               stand for print's tab, a <word> in angle brackets for any
--               text, and a trailing "  -- note" is not part of it.
--   repl        "> line" is typed at `echohost --repl` (piped); the other
--               lines are its output ("$ " and the greeting excepted).
--   handlers [upstream HOST:PORT FILE]
--               each "return ..." (with the top-level "local" lines before
--               it) is a handler file: the harness runs it, with FILE as
--               the upstream at HOST:PORT.
--   serve H:P   runs the block as a server; a client gets "hi" echoed at H:P.
--   project     a session in a new folder: "$ cat FILE" and the lines after
--               it (to the next "$ ") make FILE there (folders too); each
--               other "$ command" runs there (echohost: the binary under
--               test) and prints the lines after it, a <word> in angle
--               brackets standing for any text.
-- An indented block that looks like Lua and has no marker fails the spec,
-- so a new example cannot go untested.
local socket = require "socket"
local server = require "helpers.server"
local util = require "helpers.util"
local harness = require "echohost.harness"

local q = server.quote
local README = util.slurp("README.md")

-- The README's indented code blocks: {kind, arg, text, line}.
local function blocks()
  local lines, out = {}, {}
  for l in (README .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = l end
  local i, kind, arg = 1, nil, nil
  while i <= #lines do
    local k, a = lines[i]:match("^<!%-%- readme_spec: (%S+)%s*(.-)%s*%-%->$")
    if k then
      kind, arg = k, a
      i = i + 1
    elseif lines[i]:match("^    ") and (i == 1 or lines[i - 1] == "") then
      local first, body = i, {}
      while i <= #lines and (lines[i]:match("^    ") or lines[i] == "") do
        body[#body + 1] = lines[i]:sub(5)
        i = i + 1
      end
      while body[#body] == "" do body[#body] = nil end
      out[#out + 1] = { kind = kind, arg = arg, text = table.concat(body, "\n") .. "\n",
        line = first }
      kind = nil
    else
      if lines[i] ~= "" then kind = nil end
      i = i + 1
    end
  end
  return out
end

-- "--> a  b  <pid>  -- note" -> a pattern for the line "a\tb\t1234".
local function expected_line(s)
  s = s:gsub("%s%s+%-%-%s.*$", ""):gsub("%s+$", "")
  local fields = {}
  for f in (s .. "  "):gmatch("(.-)%s%s+") do
    f = f:gsub("%p", "%%%0"):gsub("%%<[%w_ ]+%%>", "[^\t]+")
    fields[#fields + 1] = f
  end
  return "^" .. table.concat(fields, "\t") .. "$"
end

local function lines_of(s)
  local t = {}
  for l in s:gmatch("(.-)\n") do t[#t + 1] = l end
  return t
end

local function script_file(text)
  return util.write_tmp(text)
end

-- `echohost --script path` as the README runs it, from the root.
local function script_cmd(path)
  return "LUA_PATH='lua/?.lua;lua/?/init.lua;;' timeout 10 " .. q(server.BIN)
    .. " --script " .. q(path)
end

local function run_lua(text)
  local path = script_file(text)
  local err = os.tmpname()
  local p = io.popen(script_cmd(path) .. " 2>" .. q(err))
  local out = p:read("a")
  local _, _, code = p:close()
  local e = util.slurp(err)
  os.remove(path); os.remove(err)
  return out, e, code
end

local function looks_like_lua(text)
  return text:match("require%s*%(?%s*[\"']echohost") or text:match("^local ")
    or text:match("\nlocal ") or text:match("^return ")
end

local all = blocks()

describe("README.md examples", function()
  it("mark every block of Lua for this spec", function()
    local n = 0
    for _, b in ipairs(all) do
      if b.kind then
        n = n + 1
      elseif looks_like_lua(b.text) then
        error("README.md:" .. b.line .. ": a Lua example with no readme_spec marker:\n"
          .. b.text)
      end
    end
    assert.is_true(n >= 7, "only " .. n .. " marked examples")
  end)

  for _, b in ipairs(all) do
    if b.kind == "lua" then
      it("line " .. b.line .. " runs and prints what its --> comments say", function()
        local out, err, code = run_lua(b.text)
        assert.equal(0, code, err)
        local want = {}
        for note in b.text:gmatch("%-%->%s?([^\n]*)") do
          want[#want + 1] = expected_line(note)
        end
        local got = lines_of(out)
        assert.equal(#want, #got, "output:\n" .. out)
        for i = 1, #want do
          assert.matches(want[i], got[i])
        end
      end)
    elseif b.kind == "repl" then
      it("line " .. b.line .. " is what echohost --repl answers", function()
        local input, want = {}, {}
        for _, l in ipairs(lines_of(b.text)) do
          if l:match("^> ") then
            input[#input + 1] = l:sub(3)
          elseif not l:match("^%$ ") and not l:match("^echohost REPL") then
            want[#want + 1] = l
          end
        end
        local out, err, code = util.pipe(q(server.BIN) .. " --repl",
          table.concat(input, "\n") .. "\n")
        assert.equal(0, code, err)
        assert.equal(table.concat(want, "\n") .. "\n", out)
      end)
    elseif b.kind == "handlers" then
      it("line " .. b.line .. ": each handler loads and serves under the harness", function()
        -- a handler: a top-level "return", after the top-level locals
        -- before it (handler bodies are indented)
        local chunks, pending = {}, ""
        for _, l in ipairs(lines_of(b.text)) do
          if l:match("^return") then
            chunks[#chunks + 1], pending = pending, ""
          end
          if l:match("^local ") or #chunks == 0 then
            pending = pending .. l .. "\n"
          else
            chunks[#chunks] = chunks[#chunks] .. l .. "\n"
          end
        end
        local opts = {}
        local addr, file = (b.arg or ""):match("^upstream (%S+) (%S+)$")
        if addr then
          opts.upstreams = { [addr] = file }
        end
        local n, paths = 0, {}
        finally(function()      -- busted keeps one finally() per test
          for _, p in ipairs(paths) do os.remove(p) end
        end)
        for _, chunk in ipairs(chunks) do
          local path = util.write_tmp(chunk)
          paths[#paths + 1] = path
          local r = harness.run(path, { "ab", harness.CLOSE }, opts)
          assert.is_nil(r.error, chunk)
          assert.is_true(#r.sent > 0, chunk)
          n = n + 1
        end
        assert.is_true(n >= 1, "found no handler")
      end)
    elseif b.kind == "project" then
      it("line " .. b.line .. " is what the commands print in a new folder", function()
        local dir = util.tmpdir()
        finally(function() os.execute("rm -rf " .. q(dir)) end)
        local steps = {}                        -- {cmd =, lines = {}}
        for _, l in ipairs(lines_of(b.text)) do
          local cmd = l:match("^%$ (.*)$")
          if cmd then
            steps[#steps + 1] = { cmd = cmd, lines = {} }
          else
            table.insert(steps[#steps].lines, l)
          end
        end
        for _, step in ipairs(steps) do
          local file = step.cmd:match("^cat (%S+)$")
          local body = table.concat(step.lines, "\n") .. "\n"
          if file then
            os.execute(("mkdir -p %s"):format(q((dir .. "/" .. file):match("^(.*)/"))))
            util.spit(dir .. "/" .. file, body)
          else
            local cmd = step.cmd:gsub("^echohost ", q(util.realpath(server.BIN)) .. " ")
            local out = util.run(("cd %s && %s"):format(q(dir), cmd))
            local want = body:gsub("%p", "%%%0"):gsub("%%<[%w_ ]+%%>", "[^\n]+")
            assert.matches("^" .. want .. "$", out)
          end
        end
        assert.is_true(#steps >= 2, "a file and a command")
      end)
    elseif b.kind == "serve" then
      it("line " .. b.line .. " serves at " .. b.arg, function()
        local host, port = b.arg:match("^(.+):(%d+)$")
        local probe = socket.bind(host, tonumber(port))
        if not probe then
          pending(b.arg .. " is taken here")
          return
        end
        probe:close()
        local path = script_file(b.text)
        local p = io.popen("{ " .. script_cmd(path) .. " >/dev/null 2>&1 & echo $!; }")
        local pid = p:read("l")
        p:close()
        local c
        finally(function()      -- busted keeps one finally() per test
          if c then c:close() end
          os.execute("kill " .. pid .. " 2>/dev/null")
          os.remove(path)
        end)
        c = server.wait(function()
          return socket.connect(host, tonumber(port))
        end, 5)
        assert.truthy(c, "nothing listens at " .. b.arg)
        c:settimeout(5)
        assert.truthy(c:send("hi"))
        assert.equal("hi", c:receive(2))
      end)
    end
  end
end)

describe("README.md", function()
  -- What a newcomer asked for and did not find (issue 16).
  local facts = {
    { "connection ids", "1099511627777 (2^40 + 1)" },
    { "module-level state on a swap", "module-level state (a `local count = 0`" },
    { "proc.kill(0)", "pid 0 signals every process in the caller's process group" },
    { "the control operator's memory cap", "capped at `--lua-mem` like a handler's" },
    { "socket.send's rule", "bad argument #2 to 'send' (string expected, got number)" },
  }
  for _, f in ipairs(facts) do
    it("documents " .. f[1], function()
      assert.truthy(README:find(f[2], 1, true), f[2])
    end)
  end
end)
