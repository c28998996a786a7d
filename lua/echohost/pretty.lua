-- Readable printing of Lua values for the REPL: glue values as their
-- S-expressions, tables nested with sorted keys and limits, strings quoted.
local M = {}

M.max_depth = 4       -- tables nested deeper print as {...}
M.max_items = 40      -- entries shown per table before "..."
M.width = 72          -- a table longer than this on one line is broken up

-- echohost.glue may not be there (a stock lua5.4 without glue.so, or a
-- build without glue): then glue values are recognised by their metatable.
local glue_ok, glue = pcall(require, "echohost.glue")
if not glue_ok or type(glue) ~= "table" then
  glue = nil
end

local function is_glue(v)
  if glue and type(glue.is_value) == "function" then
    local ok, yes = pcall(glue.is_value, v)
    if ok and yes then
      return true
    end
  end
  local mt = getmetatable(v)
  return type(mt) == "table" and type(mt.__name) == "string"
    and mt.__name:match("^echohost%.value") ~= nil
end
M.is_glue = is_glue

local escapes = {
  ["\a"] = "\\a", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
  ["\r"] = "\\r", ["\t"] = "\\t", ["\v"] = "\\v", ["\\"] = "\\\\",
  ['"'] = '\\"',
}

-- A string as Lua source: "a\nb", control bytes as \ddd (three digits when
-- a digit follows, as %q does). Bytes >= 128 are left alone (UTF-8).
function M.quote(s)
  local out = s:gsub('([%c\\"])()', function(c, after)
    local e = escapes[c]
    if e then
      return e
    end
    local nextc = s:sub(after, after)
    if nextc:match("%d") then
      return string.format("\\%03d", c:byte())
    end
    return "\\" .. c:byte()
  end)
  return '"' .. out .. '"'
end

local keywords = {}
for w in ([[and break do else elseif end false for function goto if in
  local nil not or repeat return then true until while]]):gmatch("%a+") do
  keywords[w] = true
end

local function is_name(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
    and not keywords[k]
end

local type_order = { number = 1, string = 2, boolean = 3 }

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    return (type_order[ta] or 9) < (type_order[tb] or 9)
      or ((type_order[ta] or 9) == (type_order[tb] or 9) and ta < tb)
  end
  if ta == "number" or ta == "string" then
    return a < b
  end
  if ta == "boolean" then
    return (not a) and b
  end
  return tostring(a) < tostring(b)
end

local render

-- Keys after the sequence part 1..n, sorted: numbers, strings, booleans,
-- then the rest by their tostring.
local function sorted_keys(t, n)
  local keys = {}
  for k in next, t do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys, key_less)
  return keys
end

local function seq_length(t)
  local n = 0
  while rawget(t, n + 1) ~= nil do
    n = n + 1
  end
  return n
end

-- Rendered entries of t, and how many of them are positional.
local function table_items(t, depth, path, indent)
  local items, n = {}, seq_length(t)
  local keys = sorted_keys(t, n)
  local total = n + #keys
  local shown = math.min(total, M.max_items)
  for i = 1, math.min(n, shown) do
    items[#items + 1] = render(rawget(t, i), depth + 1, path, indent)
  end
  for i = 1, shown - #items do
    local k = keys[i]
    local ks = is_name(k) and k or "[" .. render(k, depth + 1, path, indent) .. "]"
    items[#items + 1] = ks .. " = " .. render(rawget(t, k), depth + 1, path, indent)
  end
  local npos = math.min(n, shown)
  if total > shown then
    items[#items + 1] = "... (" .. (total - shown) .. " more)"
  end
  return items, npos
end

-- Multi-line layout: positional entries packed into lines up to the
-- width, keyed entries one per line.
local function break_lines(items, npos, indent)
  local lines, cur = {}, nil
  for i, item in ipairs(items) do
    local packable = i <= npos and not item:find("\n", 1, true)
    if packable and cur and #indent + #cur + #item + 2 <= M.width then
      cur = cur .. ", " .. item
    else
      if cur then
        lines[#lines + 1] = cur
      end
      cur = item
      if not packable then
        lines[#lines + 1] = cur
        cur = nil
      end
    end
  end
  lines[#lines + 1] = cur
  return lines
end

local function render_table(t, depth, path, indent)
  if path[t] then
    return "<cycle>"
  end
  if next(t) == nil then
    return "{}"
  end
  if depth >= M.max_depth then
    return "{...}"
  end
  path[t] = true
  local inner = indent .. "  "
  local items, npos = table_items(t, depth, path, inner)
  path[t] = nil
  local line = "{" .. table.concat(items, ", ") .. "}"
  if #indent + #line <= M.width and not line:find("\n", 1, true) then
    return line
  end
  local lines = break_lines(items, npos, inner)
  return "{\n" .. inner .. table.concat(lines, ",\n" .. inner) .. "\n" .. indent .. "}"
end

function render(v, depth, path, indent)
  local t = type(v)
  if t == "string" then
    return M.quote(v)
  elseif t ~= "table" and t ~= "userdata" then
    return tostring(v)
  elseif is_glue(v) then
    return tostring(v)
  end
  local mt = getmetatable(v)
  if type(mt) == "table" and mt.__tostring then
    return tostring(v)
  elseif t == "table" then
    return render_table(v, depth, path, indent)
  end
  return tostring(v)
end

-- One value as the REPL shows a result: a glue value with its type
-- ("(cons 1 nil) : list int"), so that the glue constructors nil, true
-- and false are not taken for Lua's.
function M.format(v)
  local s = render(v, 0, {}, "")
  if glue and type(glue.typeof) == "function" and is_glue(v) then
    local ok, ty = pcall(glue.typeof, v)
    if ok and type(ty) == "string" then
      s = s .. " : " .. ty
    end
  end
  return s
end

-- Completion at the prompt ---------------------------------------------------

M.max_completions = 500

-- The table whose keys follow v's "." or ":": v itself if a table, and the
-- __index table of its metatable (a string's methods, a userdata's).
local function key_sources(v)
  local out = {}
  if type(v) == "table" then
    out[1] = v
  end
  local mt = getmetatable(v)
  local index = type(mt) == "table" and rawget(mt, "__index")
  if type(index) == "table" then
    out[#out + 1] = index
  end
  return out
end

-- v.k without running metamethods other than an __index table.
local function peek(v, k)
  for _, t in ipairs(key_sources(v)) do
    local got = rawget(t, k)
    if got ~= nil then
      return got
    end
  end
  return nil
end

-- The completions of text (a name, or a path "a.b.c", "s:up") from env:
-- every name the last part begins with, as text would read, sorted.
function M.complete(text, env)
  local head, sep, last = text:match("^([%w_.]*)([.:])([%w_]*)$")
  local v = env
  if head then
    for part in (head .. "."):gmatch("([^.]*)%.") do
      if not is_name(part) then
        return {}
      end
      v = peek(v, part)
    end
  elseif text:match("^[%w_]*$") then
    head, sep, last = "", "", text
  else
    return {}
  end
  local seen, out = {}, {}
  for _, t in ipairs(v ~= nil and key_sources(v) or {}) do
    for k in next, t do
      if is_name(k) and not seen[k] and k:sub(1, #last) == last
        and #out < M.max_completions then
        seen[k] = true
        out[#out + 1] = head .. sep .. k
      end
    end
  end
  table.sort(out)
  return out
end

-- The results of one evaluation, tab-separated as lua.c prints them.
function M.results(...)
  local out = {}
  for i = 1, select("#", ...) do
    out[i] = M.format((select(i, ...)))
  end
  return table.concat(out, "\t")
end

return M
