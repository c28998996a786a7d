-- Glue generator: turns .glue declarations into C (constructors, tags,
-- argument structs, printers, type descriptors), CertiCoq style.
-- Usage: lua5.4 glue/gen.lua [--prelude FILE.glue] [--include-dir DIR]
--          [--decl-tool PATH] -o OUTBASE FILE.glue...  (writes OUTBASE.c/.h)
-- The declarations are parsed by glue-decl (glue/gluedecl.c over
-- glue_decl.c: glue.declare's parser): --decl-tool, else
-- $ECHOHOST_GLUE_DECL, else build/glue/glue-decl of this source tree.
-- --prelude: declarations the files may use that are compiled already (the
-- library's prelude): not emitted, their header glue_prelude.h included.
-- --include-dir: includes read <DIR/glue.h> instead of "glue.h".
local M = {}

local BASE = { int = true, string = true, fn = true }

-- Parsing -----------------------------------------------------------------
-- One grammar: the declarations are parsed and checked by glue_decl.c (as
-- glue.declare parses them), run as the glue-decl command, which prints
-- them as a Lua chunk (or the first error, "file:line:col: message").

local function shq(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- A declaration as glue-decl prints it, in the shape emission uses:
-- params {name}, ctors {name, tag, ordinal, fields {name, type}}.
local function decl_of(t)
  local d = { name = t.name, prelude = t.prelude, params = {}, ctors = {},
    nboxed = 0, nunboxed = 0 }
  for i, p in ipairs(t.params) do d.params[i] = { name = p } end
  for i, c in ipairs(t.ctors) do
    d.ctors[i] = { name = c.name, tag = i - 1, ordinal = c.ordinal, fields = c.fields }
    if #c.fields == 0 then d.nunboxed = d.nunboxed + 1 else d.nboxed = d.nboxed + 1 end
  end
  return d
end

-- Parses the files (after prelude, whose types are marked d.prelude) with
-- the glue-decl at tool; returns {decls = ...}, or nil and the message.
function M.load(files, prelude, tool)
  local cmd = { shq(tool) }
  if prelude then cmd[#cmd + 1] = "--prelude " .. shq(prelude) end
  for _, f in ipairs(files) do cmd[#cmd + 1] = shq(f) end
  local p = assert(io.popen(table.concat(cmd, " ")))
  local out = p:read("a")
  local ok, _, status = p:close()
  if not ok then
    if out == "" then return nil, ("%s failed (status %d)"):format(tool, status) end
    return nil, (out:gsub("\n$", ""))
  end
  local chunk, err = load(out, "=glue-decl", "t", {})
  if not chunk then return nil, tool .. ": " .. err end
  local env = { decls = {} }
  for i, t in ipairs(chunk()) do env.decls[i] = decl_of(t) end
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
-- build/glue/glue-decl next to this file's folder (the source tree's).
function M.default_tool()
  local src = debug.getinfo(1, "S").source
  local dir = src:match("^@(.*)/[^/]*$") or "."
  return dir .. "/../build/glue/glue-decl"
end

function M.main(argv, defaults)
  defaults = defaults or {}
  local base, files = nil, {}
  local opts = { prelude = defaults.prelude, incdir = defaults.incdir,
    tool = defaults.tool or os.getenv("ECHOHOST_GLUE_DECL") or M.default_tool() }
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-o" or a == "--prelude" or a == "--include-dir" or a == "--decl-tool" then
      if not argv[i + 1] then files = {}; break end
      if a == "-o" then base = argv[i + 1]
      elseif a == "--prelude" then opts.prelude = argv[i + 1]
      elseif a == "--decl-tool" then opts.tool = argv[i + 1]
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
      " [--prelude FILE.glue] [--include-dir DIR] [--decl-tool PATH]",
      " -o OUTBASE FILE.glue...\n")
    return 2
  end
  local env, err = M.load(files, opts.prelude, opts.tool)
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
