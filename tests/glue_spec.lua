-- echohost.glue: constructors, introspection, printing and reading,
-- declarations (run time and generator, same messages), memory.
local glue = require "echohost.glue"
local util = require "helpers.util"

local BIN = require("helpers.server").BIN
local ASAN = os.getenv("ECHOHOST_ASAN")

local list, option, identity = glue.list, glue.option, glue.identity
local cons, nil_ = list.cons, list.nil_

local function from_table(t)
  local l = nil_
  for i = #t, 1, -1 do l = cons(t[i], l) end
  return l
end

-- gen.lua parses with the glue-decl of this build (ASan: build/asan/).
local function run(cmd)
  local tool = (os.getenv("ECHOHOST_BUILD") or "build") .. "/glue/glue-decl"
  return util.run("ECHOHOST_GLUE_DECL='" .. tool .. "' " .. cmd)
end

describe("echohost.glue constructors", function()
  it("builds and prints the prelude's values as CertiCoq does", function()
    assert.equal("(Parent 42)", tostring(identity.Parent(42)))
    assert.equal("Child", tostring(identity.Child))
    assert.equal("(cons 1 (cons 2 nil))", tostring(cons(1, cons(2, list["nil"]))))
    assert.equal("(cons 1 nil)", tostring(cons(1, list.nil_)))
    assert.equal("(pair true (Some -3))",
      tostring(glue.prod.pair(glue.bool.true_, option.Some(-3))))
    assert.equal("(Error \"no\")", tostring(glue.result.Error("no")))
  end)

  it("gives reserved words a trailing-underscore alias", function()
    assert.equal(list["nil"], list.nil_)
    assert.equal(glue.bool["true"], glue.bool.true_)
    assert.equal(glue.bool["false"], glue.bool.false_)
    assert.is_nil(rawget(identity, "Child_"))
  end)

  it("quotes strings, escaping every byte that is not printable", function()
    assert.equal([[(Some "a\"b\\c\n\t\r\x00\x7f\xff~ ")]],
      tostring(option.Some("a\"b\\c\n\t\r\0\127\255~ ")))
  end)

  it("holds Lua functions, printed <fun>", function()
    local f = function(x) return x * 2 end
    local v = option.Some(f)
    assert.equal("(Some <fun>)", tostring(v))
    assert.equal(f, v.x)
    assert.equal(8, glue.args(v)[1](4))
  end)

  it("infers type parameters from the arguments", function()
    assert.equal("list int", glue.typeof(cons(1, nil_)))
    assert.equal("list _", glue.typeof(nil_))
    assert.equal("list (option string)",
      glue.typeof(cons(option.None, cons(option.Some("x"), nil_))))
    assert.equal("prod (list _) fn", glue.typeof(glue.prod.pair(nil_, print)))
  end)

  it("raises on a wrong number of arguments, naming the constructor", function()
    assert.has_error(function() cons(1) end, "list.cons expects 2 arguments, got 1")
    assert.has_error(function() identity.Parent() end,
      "identity.Parent expects 1 argument, got 0")
    assert.has_error(function() option.Some(1, 2) end, "option.Some expects 1 argument, got 2")
  end)

  it("raises on a wrong argument type, naming the constructor and argument", function()
    assert.has_error(function() cons(1, cons("a", nil_)) end,
      "list.cons: argument 2 (tl) expected list int, got list string")
    assert.has_error(function() identity.Parent("x") end,
      "identity.Parent: argument 1 (pid) expected int, got string")
    assert.has_error(function() identity.Parent(1.5) end,
      "identity.Parent: argument 1 (pid) expected int, got 1.5 (not an integer)")
    assert.has_error(function() identity.Parent(2 ^ 70) end,
      "identity.Parent: argument 1 (pid) expected int, got 1.1805916207174e+21 "
      .. "(out of the integer range)")
    assert.has_error(function() cons({}, nil_) end,
      "list.cons: argument 1 (hd) expected A (an int, a string, a function or a glue value), "
      .. "got table")
    assert.has_error(function() glue.prod.pair(1, {}) end,
      "prod.pair: argument 2 (snd) expected B (an int, a string, a function or a glue value), "
      .. "got table")
    assert.has_error(function() cons(1, option.None) end,
      "list.cons: argument 2 (tl) expected list int, got option _")
    assert.has_error(function() identity.Parent(math.maxinteger) end,
      "identity.Parent: argument 1 (pid) out of range")
    assert.has_error(function() identity.Parent(nil) end,
      "identity.Parent: argument 1 (pid) expected int, got nil")
  end)

  it("raises when the type of a value would nest too deeply", function()
    local v = option.None
    for _ = 1, 99 do v = option.Some(v) end
    assert.has_error(function() option.Some(v) end, "option.Some: type nested too deeply")
  end)

  it("accepts 63-bit integers and floats with an integer value", function()
    local max, min = (1 << 62) - 1, -(1 << 62)
    assert.equal(max, identity.Parent(max).pid)
    assert.equal(min, identity.Parent(min).pid)
    assert.equal(3, identity.Parent(3.0).pid)
  end)
end)

describe("echohost.glue introspection", function()
  local p = identity.Parent(42)
  local l = from_table({ 1, 2 })

  it("answers tag, ctor, type and args", function()
    assert.equal(0, glue.tag(p))
    assert.equal(1, glue.tag(identity.Child))
    assert.equal(1, glue.tag(l))
    assert.equal(0, glue.tag(nil_))
    assert.equal("Parent", glue.ctor(p))
    assert.equal("Child", glue.ctor(identity.Child))
    assert.equal("identity", glue.type(p))
    assert.equal("list", glue.type(nil_))
    assert.same({ 42 }, glue.args(p))
    assert.same({}, glue.args(identity.Child))
    assert.equal(1, glue.args(l)[1])
    assert.equal("(cons 2 nil)", tostring(glue.args(l)[2]))
  end)

  it("reads fields by name", function()
    assert.equal(42, p.pid)
    assert.equal(1, l.hd)
    assert.equal(2, l.tl.hd)
    assert.is_nil(l.nothing)
    assert.is_nil(identity.Child.pid)
  end)

  it("matches on the constructor", function()
    local function describe_it(v)
      return glue.match(v, {
        Parent = function(pid) return "parent of " .. pid end,
        Child = function() return "child" end,
      })
    end
    assert.equal("parent of 42", describe_it(p))
    assert.equal("child", describe_it(identity.Child))
    local a, b = glue.match(l, { cons = function(hd, tl) return hd, tl end })
    assert.equal(1, a)
    assert.equal("(cons 2 nil)", tostring(b))
    assert.equal("default", glue.match(nil_, { _ = function() return "default" end }))
    assert.has_error(function() glue.match(identity.Child, { Parent = print }) end,
      "glue.match: no case for Child")
  end)

  it("raises naming the case when a case is not a function", function()
    assert.has_error(function() glue.match(identity.Child, { Child = 5 }) end,
      "glue.match: the case for Child is a number, not a function")
    assert.has_error(function() glue.match(identity.Child, { _ = "x" }) end,
      "glue.match: the case _ is a string, not a function")
    local callable = setmetatable({}, { __call = function(_, pid) return pid end })
    assert.equal(42, glue.match(p, { Parent = callable }))
  end)

  it("compares values structurally, by type", function()
    assert.equal(from_table({ 1, 2 }), l)
    assert.are_not.equal(from_table({ 1, 3 }), l)
    assert.are_not.equal(from_table({ 1 }), l)
    assert.is_true(identity.Parent(42) == p)
    assert.is_false(nil_ == option.None)          -- both unboxed 0
    assert.is_true(option.Some("ab") == option.Some("ab"))
    assert.is_false(option.Some("ab") == option.Some("abc"))
    assert.is_true(option.Some(print) == option.Some(print))
    assert.is_false(option.Some(print) == option.Some(error))
  end)

  it("raises, not crashes, when a finalizer reaches a collected value", function()
    local result
    do
      local holder = setmetatable({}, { __gc = function(h)
        result = { pcall(glue.ctor, h.v) }
      end })
      holder.v = cons(1, nil_)                  -- finalized before holder
    end
    collectgarbage()
    collectgarbage()
    assert.is_false(result[1])
    assert.matches("attempt to use a collected glue value", result[2])
  end)

  it("tells values from other Lua values", function()
    assert.is_true(glue.is_value(p))
    assert.is_true(glue.is_value(nil_))
    assert.is_false(glue.is_value(42))
    assert.is_false(glue.is_value("(Parent 42)"))
    assert.is_false(glue.is_value(nil))
    assert.is_false(glue.is_value(io.stdout))
  end)

  it("raises when given something that is not a value", function()
    assert.has_error(function() glue.tag(42) end,
      "bad argument #1 to 'tag' (echohost.value expected, got number)")
    assert.has_error(function() glue.ctor() end,
      "bad argument #1 to 'ctor' (echohost.value expected, got no value)")
    assert.has_error(function() glue.match(p) end,
      "bad argument #2 to 'match' (table expected, got no value)")
  end)
end)

describe("glue memory", function()
  it("keeps memory flat over a loop building 10 million values", function()
    local n = ASAN and 1000000 or 10000000
    collectgarbage()
    glue.collect()
    local base, base_words = collectgarbage("count"), glue.stats().heap_words
    local max_kb, max_words = 0, 0
    for i = 1, n do
      local v = cons(i, nil_)
      if i % 250000 == 0 then
        max_kb = math.max(max_kb, collectgarbage("count"))
        max_words = math.max(max_words, glue.stats().heap_words)
        assert.equal(i, v.hd)
      end
    end
    assert.is_true(max_kb - base < 64 * 1024, "Lua heap grew to " .. max_kb .. " KB")
    assert.is_true(max_words <= 2 * base_words + (1 << 20),
      "glue heap grew from " .. base_words .. " to " .. max_words .. " words")
    assert.is_true(glue.stats().allocated >= 3 * n)
  end)

  it("raises 'glue heap exhausted' at the heap cap, then recovers", function()
    glue.collect()
    local old = glue.heap_max(1 << 17)
    finally(function() glue.heap_max(old) end)
    assert.equal(1 << 17, glue.heap_max())
    local l = nil_
    assert.has_error(function()
      for i = 1, 100000 do l = cons(i, l) end
    end, "glue heap exhausted")
    assert.is_true(glue.stats().heap_words <= 1 << 17)
    assert.has_error(function() glue.read(("(Some "):rep(1 << 17)) end, "glue heap exhausted")
    l = nil                                     -- luacheck: ignore 311 (drop the list)
    assert.equal("(cons 1 nil)", tostring(cons(1, nil_)))
  end)

  it("refuses a cap below the initial heap, and 0", function()
    local old = glue.heap_max()
    for _, n in ipairs({ -1, 0, 1, (1 << 16) - 1 }) do
      assert.has_error(function() glue.heap_max(n) end,
        "bad argument #1 to 'heap_max' (a cap of at least 65536 words expected "
        .. "(the initial heap), got " .. n .. ")")
      assert.equal(old, glue.heap_max())        -- unchanged
    end
    assert.has_error(function() glue.heap_max("x") end,
      "bad argument #1 to 'heap_max' (number expected, got string)")
    assert.equal(old, glue.heap_max(1 << 16))   -- the least cap is taken
    assert.equal(1 << 16, glue.heap_max(old))
  end)

  it("reclaims values Lua no longer reaches", function()
    local keep = {}
    for i = 1, 1000 do keep[i] = from_table({ i, i }) end
    assert.equal(1000, #keep)
    glue.collect()
    local used = glue.stats().heap_used
    assert.is_true(used >= 6000)
    keep = nil                                  -- luacheck: ignore 311 (drop the values)
    glue.collect()
    assert.is_true(glue.stats().heap_used <= used - 6000)
  end)
end)

describe("glue.show", function()
  it("prints values, integers and strings as glue does", function()
    assert.equal("(cons 1 nil)", glue.show(cons(1, nil_)))
    assert.equal("-7", glue.show(-7))
    assert.equal([["a\x00"]], glue.show("a\0"))
    assert.has_error(function() glue.show(print) end,
      "bad argument #1 to 'show' (glue value, integer or string expected, got function)")
    assert.has_error(function() glue.show({}) end,
      "bad argument #1 to 'show' (glue value, integer or string expected, got table)")
  end)
end)

describe("glue.read", function()
  it("reads what tostring prints", function()
    assert.equal(identity.Parent(42), glue.read("(Parent 42)"))
    assert.equal(identity.Child, glue.read("Child"))
    assert.equal(from_table({ 1, 2 }), glue.read(" (cons 1\n (cons 2 nil)) "))
    assert.equal(42, glue.read("42"))
    assert.equal("a\0b", glue.read([["a\x00b"]]))
  end)

  it("checks against a given type, as text or a type table", function()
    assert.equal("list string", glue.typeof(glue.read("nil", "list string")))
    assert.equal("list _", glue.typeof(glue.read("nil", list)))
    assert.equal("option (list int)", glue.typeof(glue.read("(Some nil)", "option (list int)")))
    local v, err = glue.read("(cons 1 nil)", "list string")
    assert.is_nil(v)
    assert.equal("column 7: expected string, got 1", err)
    assert.has_error(function() glue.read("1", "lst") end,
      "bad argument #2 to 'read' (column 1: unknown type lst)")
    for text, msg in pairs({
      ["list int int"] = "column 1: list expects 1 argument, got 2",
      ["(list int"] = "column 10: expected ')'",
      ["list )"] = "column 6: unexpected ')'",
      ["()"] = "column 2: expected a type",
      [("(option "):rep(120) .. "int" .. (")"):rep(120)] = "type nested too deeply",
    }) do
      local ok, perr = pcall(glue.read, "1", text)
      assert.is_false(ok)
      assert.matches(msg, perr, 1, true)
    end
    assert.has_error(function() glue.read("1", {}) end,
      "bad argument #2 to 'read' (type name or glue type table expected, got table)")
    assert.has_error(function() glue.read() end,
      "bad argument #1 to 'read' (string expected, got no value)")
  end)

  local errors = {
    { "(cons 1 (cons \"a\" nil))", "column 15: expected int, got \"a\"" },
    { "(cons 1)", "column 8: expected list int, got ')'" },
    { "(Parent 1 2)", "column 11: expected ')' after 1 argument of Parent, got 2" },
    { "(cons 1 nil", "column 12: expected ')' after 2 arguments of cons, got end of input" },
    { "Foo", "column 1: unknown constructor Foo" },
    { "cons", "column 1: cons takes 2 arguments" },
    { "(Parent)", "column 8: expected int, got ')'" },
    { "(nil)", "column 2: nil takes no arguments" },
    { "(3)", "column 2: expected a constructor, got 3" },
    { "\"abc", "column 1: unterminated string" },
    { "\"\\q\"", "column 2: bad escape in string" },
    { "\"\\x4\"", "column 2: bad escape in string" },
    { "4611686018427387904", "column 1: integer out of range" },
    { "-", "column 1: expected a digit after '-'" },
    { "(Some <fun>)", "column 7: cannot read a function" },
    { "nil nil", "column 5: expected end of input, got nil" },
    { "", "column 1: expected a value, got end of input" },
    { ")", "column 1: expected a value, got ')'" },
    { "(pair 1)", "column 8: expected a value, got ')'" },
    { "(Some\n  #)", "line 2, column 3: unexpected character '#'" },
    -- raw bytes come back escaped: a NUL, half a UTF-8 sequence, controls
    { "(Some \0)", "column 7: unexpected character '\\x00'" },
    { "(Some \xc3)", "column 7: unexpected character '\\xc3'" },
    { "(Parent \"a\0b\xe2\x82\")", [[column 9: expected int, got "a\x00b\xe2\x82"]] },
    { "(Parent \"" .. ("\1"):rep(30) .. "\")",
      "column 9: expected int, got \"" .. ("\\x01"):rep(19) .. "..." },
    { string.rep("a", 200), "column 1: name too long" },
    { "(Parent " .. string.rep("x", 40) .. ")",
      "column 9: expected int, got xxxxxxxxxxxxxxxxxxxx..." },
  }
  for _, case in ipairs(errors) do
    it("reports " .. case[2], function()
      local v, err = glue.read(case[1])
      assert.is_nil(v)
      assert.equal(case[2], err)
    end)
  end

  it("reads and prints a 1,000,000-element list without recursion", function()
    local l = nil_
    for i = 1, 1000000 do l = cons(i, l) end
    local s = tostring(l)
    assert.equal("(cons 1000000 (cons 999999 ", s:sub(1, 27))
    assert.equal("nil" .. string.rep(")", 1000000), s:sub(-1000003))
    local back = assert(glue.read(s))
    assert.is_true(back == l)
    assert.equal(s, tostring(back))
  end)

  it("reads deeply nested types no deeper than the limit", function()
    local deep = string.rep("(Some ", 150) .. "None" .. string.rep(")", 150)
    local v, err = glue.read(deep)
    assert.is_nil(v)
    assert.matches("type nested too deeply", err)
    local v2 = assert(glue.read(string.rep("(Some ", 50) .. "None" .. string.rep(")", 50)))
    assert.equal(51, #tostring(v2):gsub("[^%(]", "") + 1)
  end)
end)

-- Random values of random nested types, printed then read back.
describe("glue print/read round trip", function()
  local seed = tonumber(os.getenv("GLUE_SEED")) or os.time()
  local rnd = math.random
  math.randomseed(seed)

  local gen_type
  local function leaf()
    local r = rnd(3)
    return r == 1 and { "int" } or r == 2 and { "string" } or { "bool" }
  end
  function gen_type(depth)
    if depth == 0 then return leaf() end
    local r = rnd(6)
    if r == 1 then return leaf() end
    if r == 2 then return { "option", gen_type(depth - 1) } end
    if r == 3 then return { "list", gen_type(depth - 1) } end
    if r == 4 then return { "prod", gen_type(depth - 1), gen_type(depth - 1) } end
    if r == 5 then return { "result", gen_type(depth - 1), gen_type(depth - 1) } end
    return { "identity" }
  end

  local function gen_string()
    local b = {}
    for i = 1, rnd(0, 12) do b[i] = string.char(rnd(0, 255)) end
    return table.concat(b)
  end

  local function gen_value(t)
    local k = t[1]
    if k == "int" then return rnd(-(1 << 62), (1 << 62) - 1) end
    if k == "string" then return gen_string() end
    if k == "bool" then return rnd(2) == 1 and glue.bool.true_ or glue.bool.false_ end
    if k == "identity" then
      return rnd(2) == 1 and identity.Child or identity.Parent(rnd(1, 99999))
    end
    if k == "option" then return rnd(3) == 1 and option.None or option.Some(gen_value(t[2])) end
    if k == "list" then
      local l = nil_
      for _ = 1, rnd(0, 4) do l = cons(gen_value(t[2]), l) end
      return l
    end
    if k == "prod" then return glue.prod.pair(gen_value(t[2]), gen_value(t[3])) end
    return rnd(2) == 1 and glue.result.Ok(gen_value(t[2])) or glue.result.Error(gen_value(t[3]))
  end

  it("read(print(v)) == v for 2000 random values (seed " .. seed .. ")", function()
    for _ = 1, 2000 do
      local v = gen_value(gen_type(rnd(0, 4)))
      local text = glue.show(v)
      local back, err = glue.read(text)
      assert(back ~= nil, "read " .. text .. ": " .. tostring(err))
      assert(back == v, "round trip of " .. text .. " gave " .. glue.show(back))
      assert.equal(text, glue.show(back))
      if glue.is_value(v) then
        local typed = assert(glue.read(text, glue.typeof(v)))
        assert(typed == v, "typed read of " .. text)
        assert.equal(glue.typeof(v), glue.typeof(typed))
      end
    end
  end)
end)

-- Each case: declarations text, and the message glue.declare gives (with
-- the chunk name "t"); gen.lua parses with the same code (glue-decl).
local decl_errors = {
  { "Inductive a1 := A1 (* open", "t:1:20: unterminated comment" },
  { "Inductive a2 := A2 # B", "t:1:20: unexpected character '#'" },
  { "Type a3 := A3.", "t:1:1: expected 'Inductive', got Type" },
  { ":=", "t:1:1: expected 'Inductive', got ':='" },
  { "Inductive := A4.", "t:1:11: expected a type name, got ':='" },
  { "Inductive a5 () := A5.", "t:1:15: expected a parameter name, got ')'" },
  { "Inductive a6 (A := A6.", "t:1:17: expected ')', got ':='" },
  { "Inductive a7 A7.", "t:1:14: expected ':=', got A7" },
  { "Inductive a8 := .", "t:1:17: expected a constructor name, got '.'" },
  { "Inductive a9 := A9 (: int).", "t:1:21: expected a field name, got ':'" },
  { "Inductive b1 := B1 (x int).", "t:1:26: expected ':', got ')'" },
  { "Inductive b2 := B2 (x : ).", "t:1:25: expected a type, got ')'" },
  { "Inductive b3 := B3 (x : int.", "t:1:28: expected ')', got '.'" },
  { "Inductive b4 := B4 B5.", "t:1:20: expected '|' or '.', got B5" },
  { "Inductive b6 := B6", "t:1:19: expected '|' or '.', got end of input" },
  { "Inductive int := I.", "t:1:11: cannot redefine base type int" },
  { "Inductive list := L.", "t:1:11: duplicate type list" },
  { "Inductive g1 (A int) := G1.", "t:1:17: cannot redefine base type int" },
  { "Inductive g2 := G2 | " .. ("g"):rep(128) .. ".", "t:1:22: name too long" },
  { "Inductive c1 (A B A) := C1.", "t:1:19: duplicate parameter A" },
  { "Inductive c2 := C2 | C2.", "t:1:22: duplicate constructor C2 (in c2)" },
  { "Inductive c3 := Some.", "t:1:17: duplicate constructor Some (in option)" },
  { "Inductive c4 := C4 (x : int) (x : int).", "t:1:31: duplicate field x in C4" },
  { "Inductive c5 := C5 (x y x : int).", "t:1:25: duplicate field x in C5" },
  { "Inductive c6 := C6 (x : foo).", "t:1:25: unknown type foo" },
  { "Inductive c7 := C7 (x : list).", "t:1:25: list expects 1 argument, got 0" },
  { "Inductive c8 := C8 (x : int int).", "t:1:25: int expects 0 arguments, got 1" },
  { "Inductive c9 (A) := C9 (x : A int).", "t:1:29: A expects 0 arguments, got 1" },
  { "Inductive d1 := D1 (x : prod int).", "t:1:25: prod expects 2 arguments, got 1" },
  { "Inductive d2 := D2 (x : list (list)).", "t:1:31: list expects 1 argument, got 0" },
  { "Inductive d3 := D3.\nInductive d4 :=\n  D4 (x : d5).", "t:3:11: unknown type d5" },
  { "Inductive d6 (P1 P2 P3 P4 P5 P6 P7 P8 P9 Pa Pb Pc Pd Pe Pf Pg Q) := D6.",
    "t:1:63: too many parameters" },
  { "Inductive d8 := D8 (x : " .. ("(list "):rep(101) .. "int" .. (")"):rep(101) .. ").",
    "t:1:326: type nested too deeply" },    -- each '(' counts twice
  { "Inductive d9 := D9 (x : prod " .. ("int "):rep(17) .. ").",
    "t:1:94: too many arguments" },
}

do
  local names = {}
  for i = 1, 201 do names[i] = "K" .. i end
  decl_errors[#decl_errors + 1] = { "Inductive e1 := " .. table.concat(names, " | ") .. ".",
    "t:1:" .. (17 + #table.concat(names, " | ", 1, 200) + 3) .. ": too many constructors in e1" }
  local fields = {}
  for i = 1, 201 do fields[i] = "f" .. i end
  decl_errors[#decl_errors + 1] = {
    "Inductive e2 := E2 (" .. table.concat(fields, " ") .. " : int).",
    "t:1:" .. (21 + #table.concat(fields, " ", 1, 200) + 1) .. ": too many fields in E2" }
end

describe("glue.declare", function()
  it("declares types usable at once from Lua", function()
    assert.is_true(glue.declare([[
      (* a tree (* with a nested comment *) *)
      Inductive tree (A) := Leaf | Node (l : tree A) (v : A) (r : tree A).
      Inductive shape := Circle (r : int) | Named (name : string) (s : shape)
        | Unit.]], "shapes.glue"))
    local t = glue.tree.Node(glue.tree.Leaf, "x", glue.tree.Leaf)
    assert.equal("(Node Leaf \"x\" Leaf)", tostring(t))
    assert.equal("tree string", glue.typeof(t))
    assert.equal(t, glue.read("(Node Leaf \"x\" Leaf)"))
    assert.equal("x", t.v)
    assert.equal(1, glue.tag(glue.shape.Named("a", glue.shape.Unit)))
    assert.equal(2, glue.tag(glue.shape.Unit))
    assert.equal(glue.tree, glue.types.tree)
  end)

  it("keeps module functions when a type takes their name", function()
    assert.is_true(glue.declare("Inductive read := R1 | R2 (n : int)."))
    assert.is_function(glue.read)
    assert.equal("(R2 3)", tostring(glue.types.read.R2(3)))
  end)

  it("declares nothing when any declaration fails", function()
    local ok, err = glue.declare("Inductive f1 := F1.\nInductive f2 := F2 (x : nope).", "two")
    assert.is_nil(ok)
    assert.equal("two:2:25: unknown type nope", err)
    assert.is_nil(glue.types.f1)
    assert.equal("column 1: unknown constructor F1", select(2, glue.read("F1")))
  end)

  it("names the chunk 'declare' by default", function()
    assert.equal("declare:1:1: expected 'Inductive', got x", select(2, glue.declare("x")))
  end)

  it("raises on a non-string", function()
    assert.has_error(function() glue.declare() end,
      "bad argument #1 to 'declare' (string expected, got no value)")
  end)

  for _, case in ipairs(decl_errors) do
    it("reports " .. case[2]:sub(1, 70), function()
      local ok, err = glue.declare(case[1], "t")
      assert.is_nil(ok)
      assert.equal(case[2], err)
    end)
  end
end)

describe("glue/gen.lua", function()
  it("generates CertiCoq-shaped C with a comment naming each declaration", function()
    local out = os.tmpname()
    finally(function() os.remove(out); os.remove(out .. ".c"); os.remove(out .. ".h") end)
    local msg, status = run("lua5.4 glue/gen.lua -o " .. out .. " glue/prelude.glue")
    assert.equal("", msg)
    assert.equal(0, status)
    local h = assert(io.open(out .. ".h")):read("a")
    local c = assert(io.open(out .. ".c")):read("a")
    assert.matches("/%* Inductive list %(A%) := nil | cons %(hd : A%) %(tl : list A%)%. %*/", h)
    assert.matches("value make_list_cons%(value hd, value tl, value %*argv%);", h)
    assert.matches("value alloc_make_list_cons%(struct thread_info %*ti, value hd, value tl%);", h)
    assert.matches("struct list_cons_args { value hd; value tl; };", h, 1, true)
    assert.matches("unsigned int get_list_tag%(value v%);", h)
    assert.matches("void print_prod%(value v, glue_printer %*print_A, glue_printer %*print_B%);", h)
    assert.matches("const char names_of_identity[2][7] = {\"Parent\", \"Child\"};", c, 1, true)
    assert.matches("argv[0] = Make_header(2, 0);", c, 1, true)
    assert.matches("if (ti->limit - argv < 3)\n        return 0;", c, 1, true)
    assert.is_nil(c:find("%$"))
  end)

  it("keeps generated C in 80 columns and warning-free for awkward names", function()
    local dir = assert(util.tmpdir())
    finally(function() os.execute("rm -rf " .. dir) end)
    util.spit(dir .. "/kw.glue", [[
(* Field names that are C keywords or the generated parameters' names, and
   a declaration long enough to need wrapping in the generated C. *)
Inductive kw (A) := K (ti : int) (argv : A) (int : string) (if : fn)
  (a_rather_long_field_name : list A) (another_long_field_name : option A)
  | Nothing.]])
    local msg, status = run(("lua5.4 glue/gen.lua -o %s/glue_types glue/prelude.glue %s/kw.glue")
      :format(dir, dir))
    assert.equal(0, status, msg)
    for _, ext in ipairs({ ".h", ".c" }) do
      for line in io.lines(dir .. "/glue_types" .. ext) do
        assert(#line <= 80, "over 80 columns: " .. line)
      end
    end
    assert.matches("value alloc_make_kw_K(struct thread_info *ti, value ti_, value argv_,",
      assert(io.open(dir .. "/glue_types.h")):read("a"), 1, true)
    local lua_cflags = io.popen("pkg-config --cflags lua5.4"):read("l") or ""
    msg, status = run(("cc -std=c11 -Wall -Wextra -Wshadow -Wmissing-prototypes -Werror "
      .. "-Iglue -I%s %s -c -o %s/kw.o %s/glue_types.c"):format(dir, lua_cflags, dir, dir))
    assert.equal("", msg)
    assert.equal(0, status)
  end)

  it("with --prelude emits only the files' types, registering the prelude's too", function()
    local dir = assert(util.tmpdir())
    finally(function() os.execute("rm -rf " .. dir) end)
    util.spit(dir .. "/shape.glue", "Inductive shape := Dot | Many (xs : list shape).\n")
    local msg, status = run(("lua5.4 glue/gen.lua --prelude glue/prelude.glue "
      .. "--include-dir echohost -o %s/my-shapes %s/shape.glue"):format(dir, dir))
    assert.equal("", msg)
    assert.equal(0, status)
    local h = assert(io.open(dir .. "/my-shapes.h")):read("a")
    local c = assert(io.open(dir .. "/my-shapes.c")):read("a")
    assert.matches("#include <echohost/glue.h>\n#include <echohost/glue_prelude.h>\n", h, 1, true)
    assert.matches("int my_shapes_register(struct thread_info *ti);", h, 1, true)
    assert.matches("&glue_type_shape,\n    NULL", c, 1, true)
    assert.matches('if (glue_find_type(ti, "bool") == NULL &&', c, 1, true)
    assert.is_nil(h:find("make_list_cons", 1, true))
    assert.is_nil(c:find("glue_type_list =", 1, true))
  end)

  it("reports file:line:col and exits non-zero on a bad declaration", function()
    local src = util.write_tmp("Inductive ok := Ok1.\n\nInductive t := A (x : lst int).\n")
    finally(function() os.remove(src) end)
    local msg, status = run("lua5.4 glue/gen.lua -o /tmp/glue_spec_never " .. src)
    assert.equal(src .. ":3:23: unknown type lst\n", msg)
    assert.equal(1, status)
  end)

  it("reports what glue.declare reports: one parser (glue_decl.c) for both", function()
    local dir = assert(util.tmpdir())
    finally(function() os.execute("rm -rf " .. dir) end)
    for i, case in ipairs(decl_errors) do
      local src = ("%s/c%d.glue"):format(dir, i)
      util.spit(src, case[1])
      local _, want = glue.declare(case[1], src)
      local msg, status = run(("lua5.4 glue/gen.lua -o %s/never glue/prelude.glue %s")
        :format(dir, src))
      assert.equal(want .. "\n", msg)
      assert.equal(1, status)
    end
  end)

  it("prints usage without arguments", function()
    local msg, status = run("lua5.4 glue/gen.lua")
    assert.equal("usage: lua5.4 glue/gen.lua [--prelude FILE.glue] [--include-dir DIR] "
      .. "[--decl-tool PATH] -o OUTBASE FILE.glue...\n", msg)
    assert.equal(2, status)
  end)
end)

describe("echohost.glue in the echohost binary", function()
  it("is preloaded", function()
    local path = util.write_tmp([[local g = require "echohost.glue"
      print(g.identity.Parent(7), g.identity.Child, g.read("(cons 1 nil)"))]])
    finally(function() os.remove(path) end)
    local out, status = run(BIN .. " --script " .. path)
    assert.equal("(Parent 7)\tChild\t(cons 1 nil)\n", out)
    assert.equal(0, status)
  end)
end)
