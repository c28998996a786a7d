-- Glue generator: turns .glue declarations into C (constructors, tags,
-- argument structs, printers, type descriptors), CertiCoq style.
-- Usage: lua5.4 glue/gen.lua [--prelude FILE.glue] [--include-dir DIR]
--          -o OUTBASE FILE.glue...                  (writes OUTBASE.c/.h)
-- --prelude: declarations the files may use that are compiled already (the
-- library's prelude): not emitted, their header glue_prelude.h included.
-- --include-dir: includes read <DIR/glue.h> instead of "glue.h".
local lpeg = require "lpeg"

local P, R, S, V, C = lpeg.P, lpeg.R, lpeg.S, lpeg.V, lpeg.C

local M = {}

M.MAX_NAME = 127                -- the reader's limit, and glue_decl.c's

-- Lexer ---------------------------------------------------------------------

local space = S" \t\r\n\f\v"^1
local comment = P{ "(*" * (V(1) + (1 - P"(*" - P"*)"))^0 * "*)" }
local skip = (space + comment)^0 * lpeg.Cp()
local ident = C((R("az", "AZ") + "_") * (R("az", "AZ", "09") + "_")^0)
local punct = C(P":=" + S"():|.")

local function fail(pos, msg)
  error({ pos = pos, msg = msg }, 0)
end

-- Reads the token at pos: {kind, text, pos}, kind "ident", a punctuation
-- string or "eof"; returns it and the position after it. Lazy, so that
-- errors come in text order (as in glue_decl.c).
local function lex(text, pos)
  pos = skip:match(text, pos)
  if text:sub(pos, pos + 1) == "(*" then fail(pos, "unterminated comment") end
  if pos > #text then
    return { kind = "eof", text = "end of input", pos = pos }, pos
  end
  local id = ident:match(text, pos)
  if id and #id > M.MAX_NAME then fail(pos, "name too long") end
  if id then return { kind = "ident", text = id, pos = pos }, pos + #id end
  local p = punct:match(text, pos)
  if p then return { kind = p, text = "'" .. p .. "'", pos = pos }, pos + #p end
  fail(pos, string.format("unexpected character '%s'", text:sub(pos, pos)))
end

-- Parser --------------------------------------------------------------------

local Parser = {}
Parser.__index = Parser

function Parser:peek()
  if not self.tok then self.tok, self.pos = lex(self.text, self.pos) end
  return self.tok
end

function Parser:next()
  local t = self:peek()
  self.tok = nil
  return t
end

function Parser:expect(kind, what)
  local t = self:peek()
  if t.kind ~= kind then fail(t.pos, "expected " .. what .. ", got " .. t.text) end
  return self:next()
end

local BASE = { int = true, string = true, fn = true }
M.MAX_CTORS, M.MAX_PARAMS, M.MAX_DEPTH, M.MAX_ARITY = 200, 16, 100, 200

-- Types are checked while they are parsed, in the order of glue_decl.c,
-- so both report the same first error. d: the declaration being read.
function Parser:named(d, head, depth)
  local t = self:next()
  local e = { name = t.text, pos = t.pos, args = {} }
  local want
  for i, p in ipairs(d.params) do
    if p.name == e.name then want, e.param = 0, i end
  end
  if not want then
    if BASE[e.name] then want = 0
    elseif e.name == d.name then want = #d.params
    elseif self.env.types[e.name] then want = #self.env.types[e.name].params
    else fail(e.pos, "unknown type " .. e.name) end
  end
  self:peek()   -- the next token is read before the arity check, as in dnamed
  while head and (self:peek().kind == "ident" or self:peek().kind == "(") do
    if #e.args == M.MAX_PARAMS then fail(self:peek().pos, "too many arguments") end
    e.args[#e.args + 1] = self:atom(d, false, depth + 1)
  end
  if #e.args ~= want then
    fail(e.pos, string.format("%s expects %d argument%s, got %d", e.name, want,
      want == 1 and "" or "s", #e.args))
  end
  return e
end

-- atom := ident | '(' texpr ')'; texpr := ident atom* | '(' texpr ')'
function Parser:atom(d, head, depth)
  local t = self:peek()
  if depth > M.MAX_DEPTH then fail(t.pos, "type nested too deeply") end
  if t.kind == "ident" then return self:named(d, head, depth) end
  self:expect("(", "a type")
  local e = self:atom(d, true, depth + 1)
  self:expect(")", "')'")
  return e
end

function Parser:fields(d, ctor)
  while self:peek().kind == "(" do
    self:next()
    local names = { self:expect("ident", "a field name") }
    for _, f in ipairs(ctor.fields) do
      if f.name == names[1].text then
        fail(names[1].pos, string.format("duplicate field %s in %s", f.name, ctor.name))
      end
    end
    if #ctor.fields == M.MAX_ARITY then fail(names[1].pos, "too many fields in " .. ctor.name) end
    ctor.fields[#ctor.fields + 1] = { name = names[1].text, pos = names[1].pos }
    while self:peek().kind == "ident" do
      local n = self:next()
      for _, f in ipairs(ctor.fields) do
        if f.name == n.text then
          fail(n.pos, string.format("duplicate field %s in %s", f.name, ctor.name))
        end
      end
      if #ctor.fields == M.MAX_ARITY then fail(n.pos, "too many fields in " .. ctor.name) end
      names[#names + 1] = n
      ctor.fields[#ctor.fields + 1] = { name = n.text, pos = n.pos }
    end
    self:expect(":", "':'")
    local ty = self:atom(d, true, 0)
    self:expect(")", "')'")
    for i = #ctor.fields - #names + 1, #ctor.fields do ctor.fields[i].type = ty end
  end
end

function Parser:ctors(d)
  if self:peek().kind == "|" then self:next() end
  local nboxed, nunboxed = 0, 0
  while true do
    local c = self:peek()
    if c.kind ~= "ident" then self:expect("ident", "a constructor name") end
    if #d.ctors == M.MAX_CTORS then fail(c.pos, "too many constructors in " .. d.name) end
    local prev = self.env.owner[c.text]
    if prev then fail(c.pos, string.format("duplicate constructor %s (in %s)", c.text, prev)) end
    self:next()
    self.env.owner[c.text] = d.name
    local ctor = { name = c.text, pos = c.pos, fields = {}, tag = #d.ctors }
    d.ctors[#d.ctors + 1] = ctor
    self:fields(d, ctor)
    if #ctor.fields == 0 then
      ctor.ordinal, nunboxed = nunboxed, nunboxed + 1
    else
      ctor.ordinal, nboxed = nboxed, nboxed + 1
    end
    local t = self:next()
    if t.kind == "." then break end
    if t.kind ~= "|" then fail(t.pos, "expected '|' or '.', got " .. t.text) end
  end
  d.nboxed, d.nunboxed = nboxed, nunboxed
end

function Parser:params(d)
  while self:peek().kind == "(" do
    self:next()
    if self:peek().kind ~= "ident" then self:expect("ident", "a parameter name") end
    while self:peek().kind == "ident" do
      local p = self:next()
      if BASE[p.text] then fail(p.pos, "cannot redefine base type " .. p.text) end
      for _, q in ipairs(d.params) do
        if q.name == p.text then fail(p.pos, "duplicate parameter " .. p.text) end
      end
      if #d.params == M.MAX_PARAMS then fail(p.pos, "too many parameters") end
      d.params[#d.params + 1] = { name = p.text, pos = p.pos }
    end
    self:expect(")", "')'")
  end
end

function Parser:decl()
  local kw = self:peek()
  if kw.kind ~= "ident" or kw.text ~= "Inductive" then
    fail(kw.pos, "expected 'Inductive', got " .. kw.text)
  end
  self:next()
  local name = self:expect("ident", "a type name")
  if BASE[name.text] then fail(name.pos, "cannot redefine base type " .. name.text) end
  if self.env.types[name.text] then fail(name.pos, "duplicate type " .. name.text) end
  local d = { name = name.text, pos = name.pos, params = {}, ctors = {} }
  self:params(d)
  self:expect(":=", "':='")
  self:ctors(d)
  return d
end

-- Parses and checks the text of one file; appends its declarations to
-- env.decls. Raises {pos, msg} on the first error.
function M.parse(text, env)
  local self = setmetatable({ text = text, pos = 1, env = env }, Parser)
  while self:peek().kind ~= "eof" do
    local d = self:decl()
    env.types[d.name] = d
    env.decls[#env.decls + 1] = d
  end
end

function M.newenv()
  return { types = {}, owner = {}, decls = {} }
end

local function linecol(text, pos)
  local line, start = 1, 1
  for nl in text:sub(1, pos - 1):gmatch("()\n") do
    line, start = line + 1, nl + 1
  end
  return line, pos - start + 1
end

-- Adds the declarations of text to env; returns env, or nil and
-- "name:line:col: message" (env then holds part of them).
function M.check(env, text, name)
  local ok, e = pcall(M.parse, text, env)
  if ok then return env end
  if type(e) ~= "table" then error(e, 0) end
  local line, col = linecol(text, e.pos)
  return nil, string.format("%s:%d:%d: %s", name, line, col, e.msg)
end

-- Parses every file; returns env, or nil and "file:line:col: message".
function M.load(files, env)
  env = env or M.newenv()
  for _, name in ipairs(files) do
    local f, err = io.open(name, "rb")
    if not f then return nil, err end
    local text = f:read("a")
    f:close()
    local _, msg = M.check(env, text, name)
    if msg then return nil, msg end
  end
  return env
end

-- C emission ------------------------------------------------------------------

local C_KEYWORDS = {}
for w in ([[auto break case char const continue default do double else enum
  extern float for goto if inline int long register restrict return short
  signed sizeof static struct switch typedef union unsigned void volatile
  while _Bool _Complex _Imaginary value ti argv]]):gmatch("%S+") do
  C_KEYWORDS[w] = true
end

-- A C member/parameter name for a .glue field name (C keywords and the
-- names of the other parameters get a trailing underscore).
local function cname(s)
  return C_KEYWORDS[s] and s .. "_" or s
end

local function texpr_string(e)
  if #e.args == 0 then return e.name end
  local parts = { e.name }
  for _, a in ipairs(e.args) do
    local s = texpr_string(a)
    parts[#parts + 1] = #a.args > 0 and "(" .. s .. ")" or s
  end
  return table.concat(parts, " ")
end

local function field_list(c)
  local parts = {}
  for _, f in ipairs(c.fields) do
    parts[#parts + 1] = string.format("(%s : %s)", f.name, texpr_string(f.type))
  end
  return table.concat(parts, " ")
end

local function decl_string(d)
  local ps = {}
  for _, p in ipairs(d.params) do ps[#ps + 1] = p.name end
  local cs = {}
  for _, c in ipairs(d.ctors) do
    cs[#cs + 1] = #c.fields > 0 and c.name .. " " .. field_list(c) or c.name
  end
  return string.format("Inductive %s%s := %s.", d.name,
    #ps > 0 and " (" .. table.concat(ps, " ") .. ")" or "", table.concat(cs, " | "))
end

local Out = {}
Out.__index = Out

function Out:put(fmt, ...) self[#self + 1] = string.format(fmt, ...) end

local function args_decl(c)
  local ps = {}
  for _, f in ipairs(c.fields) do ps[#ps + 1] = "value " .. cname(f.name) end
  return table.concat(ps, ", ")
end

local function args_call(c)
  local ps = {}
  for _, f in ipairs(c.fields) do ps[#ps + 1] = cname(f.name) end
  return table.concat(ps, ", ")
end

local function printer_params(d)
  if #d.params == 0 then return "value v" end
  local ps = { "value v" }
  for _, p in ipairs(d.params) do ps[#ps + 1] = "glue_printer *print_" .. p.name end
  return table.concat(ps, ", ")
end

local function emit_header(h, d)
  local T = d.name
  h:put("/* %s */\n", decl_string(d))
  h:put("extern const struct glue_type glue_type_%s;\n", T)
  local maxlen = 0
  for _, c in ipairs(d.ctors) do maxlen = math.max(maxlen, #c.name) end
  h:put("extern const char names_of_%s[%d][%d];\n", T, #d.ctors, maxlen + 1)
  h:put("enum %s_tag {", T)
  for i, c in ipairs(d.ctors) do
    h:put("%s%s_%s_tag = %d", i == 1 and " " or ", ", T, c.name, c.tag)
  end
  h:put(" };\n")
  for _, c in ipairs(d.ctors) do
    if #c.fields == 0 then
      h:put("value make_%s_%s(void);\n", T, c.name)
    else
      local members = {}
      for _, f in ipairs(c.fields) do members[#members + 1] = "value " .. cname(f.name) .. ";" end
      local one = string.format("struct %s_%s_args { %s };", T, c.name,
        table.concat(members, " "))
      if #one <= 80 then
        h:put("%s\n", one)
      else
        h:put("struct %s_%s_args {\n    %s\n};\n", T, c.name, table.concat(members, "\n    "))
      end
      h:put("value make_%s_%s(%s, value *argv);\n", T, c.name, args_decl(c))
      h:put("value alloc_make_%s_%s(struct thread_info *ti, %s);\n", T, c.name,
        args_decl(c))
    end
  end
  h:put("unsigned int get_%s_tag(value v);\n", T)
  h:put("void print_%s(%s);\n\n", T, printer_params(d))
end

-- Names and emits the static descriptor terms a declaration's fields use.
local function emit_terms(s, d)
  local names, used = {}, {}
  local function term(e)
    if e.param then
      local key = "param " .. e.name
      if names[key] then return names[key] end
      local n = string.format("%s_ty_%s", d.name, e.name)
      s:put("static const struct glue_ty %s = GLUE_PARAM_TY(%d);\n", n, e.param - 1)
      names[key], used[n] = "&" .. n, true
      return "&" .. n
    end
    if BASE[e.name] then return "&glue_ty_" .. e.name end
    local key = texpr_string(e)
    if names[key] then return names[key] end
    local args = {}
    for _, a in ipairs(e.args) do args[#args + 1] = term(a) end
    local n = d.name .. "_ty_" .. key:gsub("[%s()]+", "_"):gsub("_$", "")
    while used[n] do n = n .. "_" end
    used[n] = true
    local argv = "NULL"
    if #args > 0 then
      argv = n .. "_args"
      s:put("static const struct glue_ty *const %s[] = {%s};\n", argv,
        table.concat(args, ", "))
    end
    s:put("static const struct glue_ty %s =\n    GLUE_APP_TY(&glue_type_%s, %d, %s);\n",
      n, e.name, #args, argv)
    names[key] = "&" .. n
    return "&" .. n
  end
  for _, c in ipairs(d.ctors) do
    for _, f in ipairs(c.fields) do f.cterm = term(f.type) end
  end
end

local function emit_descriptor(s, d)
  local T = d.name
  emit_terms(s, d)
  local quoted = {}
  for _, c in ipairs(d.ctors) do quoted[#quoted + 1] = '"' .. c.name .. '"' end
  local maxlen = 0
  for _, c in ipairs(d.ctors) do maxlen = math.max(maxlen, #c.name) end
  s:put("const char names_of_%s[%d][%d] = {%s};\n", T, #d.ctors, maxlen + 1,
    table.concat(quoted, ", "))
  if #d.params > 0 then
    local ps = {}
    for _, p in ipairs(d.params) do ps[#ps + 1] = '"' .. p.name .. '"' end
    s:put("static const char *const %s_params[] = {%s};\n", T, table.concat(ps, ", "))
  end
  for _, c in ipairs(d.ctors) do
    if #c.fields > 0 then
      s:put("static const struct glue_field %s_%s_fields[] = {\n", T, c.name)
      for _, f in ipairs(c.fields) do s:put("    {\"%s\", %s},\n", f.name, f.cterm) end
      s:put("};\n")
    end
  end
  s:put("static const struct glue_ctor %s_ctors[] = {\n", T)
  for _, c in ipairs(d.ctors) do
    s:put("    {\"%s\", %d, %d, %s},\n", c.name, #c.fields, c.ordinal,
      #c.fields > 0 and string.format("%s_%s_fields", T, c.name) or "NULL")
  end
  s:put("};\n")
  s:put("const struct glue_type glue_type_%s = {\n    \"%s\", %d, %s, %d, %s_ctors\n};\n\n",
    T, T, #d.params, #d.params > 0 and T .. "_params" or "NULL", #d.ctors, T)
end

local function emit_ctor(s, d, c)
  local T = d.name
  if #c.fields == 0 then
    s:put("/* %s: unboxed ordinal %d */\nvalue make_%s_%s(void)\n{\n", c.name,
      c.ordinal, T, c.name)
    s:put("    return Val_long(%d);\n}\n\n", c.ordinal)
    return
  end
  local n = #c.fields
  s:put("/* %s %s: boxed ordinal %d, %d field%s; argv holds %d words */\n",
    c.name, field_list(c), c.ordinal, n, n == 1 and "" or "s", n + 1)
  s:put("value make_%s_%s(%s, value *argv)\n{\n", T, c.name, args_decl(c))
  s:put("    argv[0] = Make_header(%d, %d);\n", n, c.ordinal)
  for i, f in ipairs(c.fields) do s:put("    argv[%d] = %s;\n", i, cname(f.name)) end
  s:put("    return (value)(argv + 1);\n}\n\n")
  s:put("/* %s on the managed heap; 0 when the heap has no room (nothing is\n", c.name)
  s:put(" * collected here: the caller collects at a safe point and retries). */\n")
  s:put("value alloc_make_%s_%s(struct thread_info *ti, %s)\n{\n", T, c.name, args_decl(c))
  s:put("    value *argv = ti->alloc;\n\n")
  s:put("    if (ti->limit - argv < %d)\n        return 0;\n", n + 1)
  s:put("    ti->alloc = argv + %d;\n    ti->nalloc += %d;\n", n + 1, n + 1)
  s:put("    return make_%s_%s(%s, argv);\n}\n\n", T, c.name, args_call(c))
end

local function emit_tag_switch(s, d, boxed, indent)
  s:put("%sswitch (get_%s_ordinal(v)) {\n", indent, boxed and "boxed" or "unboxed")
  for _, c in ipairs(d.ctors) do
    if (#c.fields > 0) == boxed then
      s:put("%scase %d: return %s_%s_tag;\n", indent, c.ordinal, d.name, c.name)
    end
  end
  s:put("%sdefault: return GLUE_NO_TAG;\n%s}\n", indent, indent)
end

local function emit_tag(s, d)
  local T = d.name
  s:put("/* The 0-based position of v's constructor in the declaration of %s. */\n", T)
  s:put("unsigned int get_%s_tag(value v)\n{\n", T)
  if d.nboxed == 0 then
    s:put("    return (unsigned int)get_unboxed_ordinal(v);\n}\n\n")
  elseif d.nunboxed == 0 then
    s:put("    return (unsigned int)get_boxed_ordinal(v);\n}\n\n")
  else
    s:put("    if (Is_long(v)) {\n")
    emit_tag_switch(s, d, false, "        ")
    s:put("    }\n")
    emit_tag_switch(s, d, true, "    ")
    s:put("}\n\n")
  end
end

local function emit_printer(s, d)
  local T = d.name
  s:put("/* Prints v as an S-expression on stdout; parameters print with the\n")
  s:put(" * given printers (CertiCoq's print_T). */\n")
  s:put("void print_%s(%s)\n{\n", T, printer_params(d))
  if #d.params == 0 then
    s:put("    glue_print_with(v, &glue_type_%s, NULL);\n}\n\n", T)
    return
  end
  local ps = {}
  for _, p in ipairs(d.params) do ps[#ps + 1] = "print_" .. p.name end
  s:put("    glue_printer *const printers[] = {%s};\n\n", table.concat(ps, ", "))
  s:put("    glue_print_with(v, &glue_type_%s, printers);\n}\n\n", T)
end

-- Wraps a long one-line /* comment */ at 80 columns.
local function wrap_comment(line)
  local indent, body = line:match("^(%s*)/%*%s*(.-)%s*%*/$")
  local out, cur = {}, indent .. "/*"
  for word in body:gmatch("%S+") do
    if #cur + 1 + #word > 77 and cur:match("%S+%s+%S") then
      out[#out + 1] = cur
      cur = indent .. " *"
    end
    cur = cur .. " " .. word
  end
  out[#out + 1] = cur .. " */"
  return table.concat(out, "\n")
end

-- Wraps a long line of code after ", ", continuing under the first
-- bracket (or 4 columns in when that is too deep).
local function wrap_code(line)
  local lead = line:match("^%s*")
  local open = line:find("[({]")
  local indent = (open and open <= 40) and (" "):rep(open) or lead .. "    "
  local out, cur = {}, nil
  local pieces = {}
  for piece in (line .. ", "):gmatch("(.-), ") do pieces[#pieces + 1] = piece end
  for i, piece in ipairs(pieces) do
    local sep = i < #pieces and "," or ""
    if not cur then
      cur = piece .. sep
    elseif #cur + 1 + #piece + #sep > 80 then
      out[#out + 1] = cur
      cur = indent .. piece .. sep
    else
      cur = cur .. " " .. piece .. sep
    end
  end
  out[#out + 1] = cur
  return table.concat(out, "\n")
end

-- Keeps the generated C within 80 columns, as the rest of the tree.
local function wrap(text)
  local lines = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do
    if #line <= 80 then
      lines[#lines + 1] = line
    elseif line:match("^%s*/%*.*%*/$") then
      lines[#lines + 1] = wrap_comment(line)
    else
      lines[#lines + 1] = wrap_code(line)
    end
  end
  return table.concat(lines, "\n", 1, #lines - 1)
end

-- The C identifier of an output's base name: its register function is
-- <ident>_register, its type list <ident>_types.
local function base_ident(base)
  local id = base:match("[^/]*$"):gsub("%.[^.]*$", ""):gsub("[^%w_]", "_")
  return id:match("^%d") and "glue_" .. id or id
end

local function include(opts, name)
  if opts.incdir then return string.format("#include <%s/%s>\n", opts.incdir, name) end
  return string.format("#include \"%s\"\n", name)
end

local function emit_register(h, s, env, id)
  local first_prelude
  for _, d in ipairs(env.decls) do
    if d.prelude and not first_prelude then first_prelude = d.name end
  end
  h:put("/* Every type above, NULL-terminated, in declaration order. */\n")
  h:put("extern const struct glue_type *const %s_types[];\n", id)
  h:put("/* Registers them with ti (the reader and glue_find_type know them%s);\n",
    first_prelude and ", and\n * the prelude's unless ti has them" or "")
  h:put(" * 0, or -1 when out of memory. */\n")
  h:put("int %s_register(struct thread_info *ti);\n\n#endif\n", id)
  s:put("const struct glue_type *const %s_types[] = {\n", id)
  for _, d in ipairs(env.decls) do
    if not d.prelude then s:put("    &glue_type_%s,\n", d.name) end
  end
  s:put("    NULL\n};\n\n")
  s:put("int %s_register(struct thread_info *ti)\n{\n", id)
  if first_prelude then
    s:put("    if (glue_find_type(ti, \"%s\") == NULL &&\n", first_prelude)
    s:put("        glue_prelude_register(ti) < 0)\n        return -1;\n")
  end
  s:put("    for (int i = 0; %s_types[i]; i++)\n", id)
  s:put("        if (glue_add_type(ti, %s_types[i]) < 0)\n", id)
  s:put("            return -1;\n    return 0;\n}\n")
end

-- Returns the header and source texts for the declarations in env (but
-- those marked prelude). opts: prelude (include its header), incdir.
function M.emit(env, files, base, opts)
  opts = opts or {}
  local h, s = setmetatable({}, Out), setmetatable({}, Out)
  local from = table.concat(files, " ")
  local id = base_ident(base)
  local guard = "ECHOHOST_" .. base:match("[^/]*$"):upper():gsub("[^%w]", "_") .. "_H"
  h:put("/* Glue types generated by glue/gen.lua from %s. Do not edit. */\n", from)
  h:put("#ifndef %s\n#define %s\n\n%s", guard, guard, include(opts, "glue.h"))
  if opts.prelude then h:put("%s", include(opts, "glue_prelude.h")) end
  h:put("\n")
  s:put("/* Glue types generated by glue/gen.lua from %s. Do not edit. */\n", from)
  s:put("#include <stddef.h>\n\n#include \"%s.h\"\n\n", base:match("[^/]*$"))
  for _, d in ipairs(env.decls) do
    if not d.prelude then
      emit_header(h, d)
      s:put("/* %s */\n\n", decl_string(d))
      emit_descriptor(s, d)
      for _, c in ipairs(d.ctors) do emit_ctor(s, d, c) end
      emit_tag(s, d)
      emit_printer(s, d)
    end
  end
  emit_register(h, s, env, id)
  return wrap(table.concat(h)), wrap(table.concat(s))
end

local function write(name, text)
  local f = assert(io.open(name, "wb"))
  f:write(text)
  f:close()
end

-- The command line; defaults: prog (the usage line's command), prelude,
-- incdir (the installed echohost-glue-gen's). Returns the exit status.
function M.main(argv, defaults)
  defaults = defaults or {}
  local base, files = nil, {}
  local opts = { prelude = defaults.prelude, incdir = defaults.incdir }
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-o" or a == "--prelude" or a == "--include-dir" then
      if not argv[i + 1] then files = {}; break end
      if a == "-o" then base = argv[i + 1]
      elseif a == "--prelude" then opts.prelude = argv[i + 1]
      else opts.incdir = argv[i + 1] end
      i = i + 2
    else
      files[#files + 1], i = a, i + 1
    end
  end
  -- The prelude first, whatever the order of the other files.
  table.sort(files, function(a, b)
    local pa, pb = a:match("prelude%.glue$") ~= nil, b:match("prelude%.glue$") ~= nil
    if pa ~= pb then return pa end
    return a < b
  end)
  if not base or #files == 0 then
    io.stderr:write("usage: ", defaults.prog or "lua5.4 glue/gen.lua",
      " [--prelude FILE.glue] [--include-dir DIR] -o OUTBASE FILE.glue...\n")
    return 2
  end
  local env, err = M.newenv(), nil
  if opts.prelude then
    env, err = M.load({ opts.prelude }, env)
    for _, d in ipairs(env and env.decls or {}) do d.prelude = true end
  end
  if env then env, err = M.load(files, env) end
  if not env then
    io.stderr:write(err, "\n")
    return 1
  end
  local h, c = M.emit(env, files, base, opts)
  write(base .. ".h", h)
  write(base .. ".c", c)
  return 0
end

if arg and arg[0] and arg[0]:match("gen%.lua$") then
  os.exit(M.main(arg))
end

return M
