-- echohost --repl: piped sessions with exact output, and a pseudo-terminal
-- session (line editing, Ctrl-C, history across two runs) through ptyrun.
local server = require "helpers.server"
local util = require "helpers.util"

local BIN = server.BIN
local q, slurp, spit, tmpname = server.quote, util.slurp, util.spit, os.tmpname

-- Runs echohost with input on stdin (not a terminal): stdout, stderr, status.
local function repl(input, args)
  return util.pipe(q(BIN) .. " --repl " .. (args or ""), input)
end

describe("echohost --repl (piped)", function()
  it("prints values: numbers, quoted strings, booleans, nil, several results", function()
    local out, err, code = repl(table.concat({
      "1 + 1",
      '"a\\nb\\0" .. "\\"q\\""',
      "=10 // 3",
      "2^10",
      "true, nil, false",
      "return 1, 'two'",
      "nil",
    }, "\n") .. "\n")
    assert.equal('2\n"a\\nb\\0\\"q\\""\n3\n1024.0\ntrue\tnil\tfalse\n1\t"two"\nnil\n', out)
    assert.equal("", err)
    assert.equal(0, code)
  end)

  it("prints nothing for statements, and print() writes raw text", function()
    local out = repl('x = 5\nlocal y = 1\nprint("raw", x, "s")\nx\n')
    assert.equal("raw\t5\ts\n5\n", out)
  end)

  it("prints tables nested, with sorted keys, cycles marked, limits applied", function()
    local out = repl(table.concat({
      '{3, 2, 1, b = 1, a = {x = "y"}, [10] = true, ["k k"] = 0}',
      "t = {name = 't'}; t.self = t",
      "t",
      "{{{{{1}}}}}",
      "{}",
      "s = {} for i = 1, 50 do s[i] = i end",
      "s",
    }, "\n") .. "\n")
    assert.equal(table.concat({
      '{3, 2, 1, [10] = true, a = {x = "y"}, b = 1, ["k k"] = 0}',
      '{name = "t", self = <cycle>}',
      "{{{{{...}}}}}",
      "{}",
      "{",
      "  1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,",
      "  21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38,",
      "  39, 40,",
      "  ... (10 more)",
      "}",
    }, "\n") .. "\n", out)
  end)

  it("breaks long tables over lines, one key per line", function()
    local out = repl('{alpha = "aaaaaaaaaaaaaaaaaaaa", beta = "bbbbbbbbbbbbbbbbbbbb", '
      .. 'gamma = {1, 2}, delta = "dddddddddddddddd"}\n')
    assert.equal(table.concat({
      "{",
      '  alpha = "aaaaaaaaaaaaaaaaaaaa",',
      '  beta = "bbbbbbbbbbbbbbbbbbbb",',
      '  delta = "dddddddddddddddd",',
      "  gamma = {1, 2}",
      "}",
    }, "\n") .. "\n", out)
  end)

  it("reports an error with its traceback and goes on", function()
    local out, err, code = repl('error("boom")\n1 + 2\nerror({})\nx = = 1\n"after"\n')
    assert.equal('3\n"after"\n', out)
    assert.equal(table.concat({
      "stdin:1: boom",
      "stack traceback:",
      "\t[C]: in function 'error'",
      "\tstdin:1: in main chunk",
      "(error object is a table value)",
      "stack traceback:",
      "\t[C]: in function 'error'",
      "\tstdin:1: in main chunk",
      "stdin:1: unexpected symbol near '='",
    }, "\n") .. "\n", err)
    assert.equal(0, code)
  end)

  it("shows a traceback through the functions that were called", function()
    local _, err = repl("function f() local x = nil; return x.y end\nf()\ny = f()\n")
    assert.equal(table.concat({
      "stdin:1: attempt to index a nil value (local 'x')",
      "stack traceback:",
      "\tstdin:1: in function 'f'",
      "\t(...tail calls...)",         -- "return f()", as lua.c runs it
      "stdin:1: attempt to index a nil value (local 'x')",
      "stack traceback:",
      "\tstdin:1: in function 'f'",
      "\tstdin:1: in main chunk",
    }, "\n") .. "\n", err)
  end)

  it("continues an incomplete chunk on the next lines", function()
    local out, err = repl(table.concat({
      "function f(x)",
      "  return x * 2",
      "end",
      "f(21)",
      "{1,",
      " 2}",
      "for i = 1, 3 do",
      "  print(i)",
      "end",
      "=f(",
      "4)",
      "1 +",
      "",
      "2",
    }, "\n") .. "\n")
    assert.equal("42\n{1, 2}\n1\n2\n3\n8\n3\n", out)
    assert.equal("", err)
  end)

  it("writes no prompt and no escape code when stdin is not a terminal", function()
    local out = repl("1\n")
    assert.equal("1\n", out)
    assert.falsy(out:find("\27", 1, true))
  end)

  it("exits 0 at the end of input, even inside an unfinished chunk", function()
    local out, err, code = repl("function g()\n")
    assert.equal("", out)
    assert.equal("", err)
    assert.equal(0, code)
  end)

  it("has glue, socket and proc as globals, the same as require gives", function()
    local out = repl(table.concat({
      "type(glue), type(socket), type(proc)",
      'require("echohost.socket") == socket, require("echohost.proc") == proc',
      'require("echohost.glue") == glue',
    }, "\n") .. "\n")
    assert.equal('"table"\t"table"\t"table"\ntrue\ttrue\ntrue\n', out)
  end)

  it("prints a glue value as its S-expression and its type", function()
    local out, err = repl('glue.list.cons(1, glue.list["nil"])\n'
      .. 'glue.bool.true_, true, glue.list.nil_\n')
    assert.equal("", err)
    assert.equal("(cons 1 nil) : list int\ntrue : bool\ttrue\tnil : list _\n", out)
  end)

  it("prints glue values inside tables as S-expressions", function()
    local out = repl('{v = glue.list.cons(1, glue.list["nil"])}\n')
    assert.equal("{v = (cons 1 nil)}\n", out)
  end)

  it("refuses --history and --connect without --repl", function()
    local _, _, code = os.execute(q(BIN) .. " --history /tmp/x > /dev/null 2>&1")
    assert.equal(2, code)
  end)
end)

describe("echohost --repl (terminal)", function()
  local PTYRUN = util.tool("tests/ptyrun")

  -- libedit can print the prompt before it puts the terminal in raw mode:
  -- a key sent in that window is taken by the line discipline (a ^D as a
  -- NUL). So keys wait a moment after the prompt.
  local PROMPT = "expect > \nsleep 100"

  -- Drives a REPL on a pty with a script of expect/send lines.
  local function pty(script, history)
    local sf, out = tmpname(), tmpname()
    spit(sf, script)
    local cmd = string.format("env TERM=xterm %s 10 %s -- %s --repl --history %s > %s 2>&1",
      q(PTYRUN), q(sf), q(BIN), q(history), q(out))
    local ok = os.execute(cmd)
    local o = slurp(out)
    os.remove(sf); os.remove(out)
    return ok, o
  end

  local history
  before_each(function()
    history = tmpname()
    os.remove(history)
  end)
  after_each(function()
    os.remove(history)
  end)

  it("edits the line, Ctrl-C interrupts a call or drops the input, Ctrl-D exits 0", function()
    local ok, out = pty(table.concat({
      PROMPT,
      "send 2 * 21\\x01-\\r",         -- Ctrl-A: to the start of the line, insert "-"
      "expect -42",
      PROMPT,
      "send while true do end\\r",
      "sleep 200",
      "send \\x03",
      "expect interrupted!",
      PROMPT,
      "send 1 + 1\\r",
      "expect 2\\r\\n",
      PROMPT,
      "send function f(\\r",                -- a chunk in progress ...
      "expect >> ",
      "sleep 100",
      "send \\x03",                         -- ... dropped by Ctrl-C at the prompt
      PROMPT,
      "send 3 + 4\\r",
      "expect 7\\r\\n",
      PROMPT,
      "send \\x04",
    }, "\n") .. "\n", history)
    assert.is_true(ok, out)
    assert.truthy(out:find("[exit 0]", 1, true), out)
  end)

  it("completes globals, fields and methods with Tab; _PROMPT and _PROMPT2 are the prompts",
    function()
    local ok, out = pty(table.concat({
      PROMPT,
      "send string.for\\t(\"<%d>\", 7)\\r",    -- string.format
      "expect <7>",
      PROMPT,
      "send s = \"ab\"\\r",
      PROMPT,
      "send s:upp\\t()\\r",                    -- a string's method: s:upper
      "expect \"AB\"",
      PROMPT,
      "send glue.list.con\\t(1, glue.list.nil_)\\r",
      "expect (cons 1 nil) : list int",
      PROMPT,
      "send _PROMPT = \"lua> \"\\r",
      "expect lua> ",
      "send _PROMPT2 = setmetatable({}, { __tostring = function() return \"more? \" end })\\r",
      "expect lua> ",
      "send (1 +\\r",
      "expect more? ",
      "send 2)\\r",
      "expect 3\\r\\n",
      "expect lua> ",
      "send _PROMPT = setmetatable({}, { __tostring = error })\\r",   -- tostring fails
      PROMPT,
      "send \\x04",
    }, "\n") .. "\n", history)
    assert.is_true(ok, out)
    assert.truthy(out:find("[exit 0]", 1, true), out)
  end)

  it("keeps history across two runs in a file created with mode 0600", function()
    local ok, out = pty(table.concat({
      PROMPT,
      'send print("from" .. "history")\\r',
      "expect fromhistory",
      PROMPT,
      "send \\x04",
    }, "\n") .. "\n", history)
    assert.is_true(ok, out)
    local p = io.popen("stat -c %a " .. q(history))
    local mode = p:read("l")
    p:close()
    assert.equal("600", mode)
    -- Second run: up arrow recalls the line, Enter runs it again.
    ok, out = pty(table.concat({
      PROMPT,
      "send \\e[A\\r",
      "expect fromhistory",
      PROMPT,
      "send \\x04",
    }, "\n") .. "\n", history)
    assert.is_true(ok, out)
    assert.truthy(out:find("[exit 0]", 1, true), out)
  end)

  it("says once, before the first prompt, that a history it cannot write is not saved",
    function()
      local dir = util.tmpdir()
      finally(function() os.execute("rm -rf " .. q(dir)) end)
      local ok, out = pty(table.concat({
        "expect history is not saved",
        PROMPT,
        "send 1 + 1\\r",
        "expect 2\\r\\n",
        PROMPT,
        "send \\x04",
      }, "\n") .. "\n", dir .. "/missing/history")
      assert.is_true(ok, out)
      assert.truthy(out:find("[exit 0]", 1, true), out)
      local _, n = out:gsub("history is not saved", "")
      assert.equal(1, n, out)
      assert.truthy(out:find("echohost: history " .. dir .. "/missing/history: "
        .. "No such file or directory (history is not saved)", 1, true), out)
    end)
end)
