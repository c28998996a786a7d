-- The one loader of handler files: the event runtime, the fork runtime (both
-- require it inside their own Lua state), the harness and tcp_srv load a
-- handler through it, so a file is accepted or refused, with the same
-- message, everywhere. Pure Lua: it requires no C module when it loads.
--
--   local loader = require "echohost.loader"
--   local h, err = loader.load("scripts/kv.lua")
--   -- h = { kind = "fn"|"callbacks"|"direct", on_data = f, on_open = f,
--   --       on_close = f, handle = f, on_datagram = f, modules = {paths},
--   --       name = "scripts/kv.lua" }
--   -- err = "scripts/kv.lua:3: unexpected symbol near 'end'"
--
-- loader.load(path [, provided]): runs the file in a fresh environment
--   (loader.env()), then loader.check on what it returned. An error gives nil
--   and its first line, naming the file ("path: not enough memory" when the
--   message does not already start with path). The budget and the memory cap
--   are the caller's (a count hook, an allocator). provided: a table name ->
--   module value that require(name) returns before looking anywhere else, in
--   the handler and in the modules it requires (README "Handler settings and
--   logging": the interpreters provide "echohost.settings" and
--   "echohost.log"). provided["echohost.settings"], when it is a table, is
--   copied (shallow) for each load: the handler and its modules share that
--   copy and may modify it; the caller's table and other loads never see it.
-- loader.check(value, name): h or nil, "name: ..." under the rules of
--   README "What a handler file may return"; a bare function is kind "fn"
--   (per message) with the function in on_data and in on_datagram (it
--   serves datagrams too, called with the peer's "HOST:PORT" for conn). A
--   table's on_datagram serves datagrams beside any form of the others
--   (handle included: it is not a connection's callback); a table with
--   only on_datagram is kind "callbacks" with no callbacks (a TCP
--   connection to it gets nothing back and closes at its EOF).
--   h.modules is empty.
-- loader.env([dir, cache, modules, provided]): a fresh environment: __index
--   is _G; `os` is a copy whose exit raises; require(name) returns
--   provided[name] when there is one (a local file of that name does not
--   shadow it; provided is used as given, not copied), else looks in dir first
--   (dir/name.lua, dir/name/init.lua: a fresh load, in its own env, once per
--   cache), then the ordinary require, except that "echohost.proc" comes
--   back with exit and fork that raise, and "os" is the env's os.
-- loader.logger(write [, conn_id]): the "echohost.log" of a Lua interpreter
--   (the harness, tcp_srv), the twin of src/llog.c: functions error, warn,
--   info, debug, each (fmt, ...), the message string.format(fmt, ...) (fmt
--   as is when it comes alone); each calls write(level, line) with the line
--   "<level>: handler <file>:<line>: <message>", the message after
--   "conn <id>: " when conn_id() gives the id of the connection whose code
--   runs (nil: none, as at load time), file:line the caller's
--   (debug.getinfo(2, "Sl"): short_src, currentline; "" when it has none, as
--   luaL_where). A fmt that is not a string (or a number) raises
--   "file:line: bad argument #1 to 'info' (string expected, got nil)".
-- loader.OS_EXIT, loader.PROC_EXIT, loader.PROC_FORK: the messages of those
--   raises (prefixed with the caller's "file:line: "); loader.SETTINGS:
--   "echohost.settings".
local M = {}

local real_require, real_os = require, os

M.OS_EXIT = "os.exit is not available in a handler: it would end the server's other "
  .. "connections; close the connection instead"
M.PROC_EXIT = (M.OS_EXIT:gsub("^os%.exit", "proc.exit"))
M.PROC_FORK = "proc.fork is not available in a handler: a copy of the server would serve "
  .. "this connection twice"

M.SETTINGS = "echohost.settings"   -- the provided name loader.load copies per load

local SELF = debug.getinfo(1, "S").source

-- "file:line: " of the function level levels up (as error's level), or of
-- the nearest Lua function above it that is not the loader's (a tail call
-- or a require chain would otherwise point into the loader or at nothing).
local function where(level)
  level = level + 1
  while true do
    local info = debug.getinfo(level, "Sl")
    if not info then
      return ""
    elseif info.currentline > 0 and info.source ~= SELF then
      return ("%s:%d: "):format(info.short_src, info.currentline)
    end
    level = level + 1
  end
end

local function raise(msg, level)
  error(where(level + 1) .. msg, 0)
end

local function raiser(msg)
  return function()
    raise(msg, 2)
  end
end

-- The proxies: the real module behind __index, the stopping calls shadowed.
local function os_proxy()
  return setmetatable({ exit = raiser(M.OS_EXIT) }, { __index = real_os })
end

local function proc_proxy()
  local proc = real_require("echohost.proc")
  return setmetatable({ exit = raiser(M.PROC_EXIT), fork = raiser(M.PROC_FORK) },
    { __index = proc })
end

-- The directory of path ("." for a bare file name).
local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- An env whose require searches dir first; cache[name] holds what each
-- module returned in this load, modules the paths loaded (in order).
function M.env(dir, cache, modules, provided)
  if provided ~= nil and type(provided) ~= "table" then
    error(("bad argument #4 to 'env' (table expected, got %s)"):format(type(provided)), 2)
  end
  dir, cache, modules, provided = dir or ".", cache or {}, modules or {}, provided or {}
  local env = setmetatable({}, { __index = _G })
  env.os = os_proxy()
  local template = dir .. "/?.lua;" .. dir .. "/?/init.lua"

  function env.require(name)
    if type(name) ~= "string" then
      error(("bad argument #1 to 'require' (string expected, got %s)"):format(type(name)), 2)
    end
    local given = provided[name]
    if given ~= nil then
      return given
    end
    local have = cache[name]
    if have == cache then
      raise(("loop or previous error loading module '%s'"):format(name), 2)
    elseif have ~= nil then
      return have
    end
    local file = package.searchpath(name, template)
    if file then
      cache[name] = cache            -- loading: a cycle is an error
      local chunk, err = loadfile(file, "t", M.env(dir, cache, modules, provided))
      if not chunk then
        error(err, 0)
      end
      modules[#modules + 1] = file
      local value = chunk(name, file)
      if value == nil then
        value = true
      end
      cache[name] = value
      return value, file
    elseif name == "echohost.proc" then
      cache[name] = proc_proxy()
      return cache[name]
    elseif name == "os" then
      return env.os
    end
    local ok, value, extra = pcall(real_require, name)
    if not ok then
      if type(value) == "string" and value:find("^module '.-' not found:") then
        raise(("module '%s' not found (in %s, package.path or package.cpath)")
          :format(name, dir), 2)
      end
      error(value, 0)
    end
    return value, extra
  end

  return env
end

-- The log functions of a Lua interpreter; see the header.
local LEVELS = { "error", "warn", "info", "debug" }

function M.logger(write, conn_id)
  local log = {}
  for _, level in ipairs(LEVELS) do
    log[level] = function(...)
      local n, fmt = select("#", ...), ...
      local t = n == 0 and "no value" or type(fmt)
      if t ~= "string" and t ~= "number" then
        error(("bad argument #1 to '%s' (string expected, got %s)"):format(level, t), 2)
      end
      local msg = n > 1 and string.format(...) or tostring(fmt)
      local info = debug.getinfo(2, "Sl")
      local at = (info and info.currentline > 0)
        and ("%s:%d:"):format(info.short_src, info.currentline) or ""
      local id = conn_id and conn_id()
      if id then
        msg = ("conn %d: %s"):format(id, msg)
      end
      write(level, ("%s: handler %s %s"):format(level, at, msg))
    end
  end
  return log
end

local HOOKS = { "handle", "on_open", "on_data", "on_close", "on_datagram" }

-- h, or nil and the message naming name.
function M.check(value, name)
  name = name or "handler"
  if type(value) == "function" then
    return { kind = "fn", on_data = value, on_datagram = value, modules = {}, name = name }
  end
  if type(value) ~= "table" then
    return nil, ("%s: returned %s; a handler returns a function or a table with handle, "
      .. "on_open, on_data, on_close or on_datagram"):format(name, type(value))
  end
  local h = { modules = {}, name = name }
  for _, k in ipairs(HOOKS) do
    local f = value[k]
    if f ~= nil and type(f) ~= "function" then
      return nil, ("%s: %s is a %s, expected a function"):format(name, k, type(f))
    end
    h[k] = f
  end
  local callback = h.on_open and "on_open" or h.on_data and "on_data"
    or h.on_close and "on_close"
  if h.handle then
    if callback then
      return nil, ("%s: returned a table with both handle and %s: handle(conn) serves "
        .. "the whole connection, so the callbacks would never run"):format(name, callback)
    end
    h.kind = "direct"
  elseif callback or h.on_datagram then
    h.kind = "callbacks"
  else
    return nil, name .. ": returned a table without handle, on_open, on_data, on_close or "
      .. "on_datagram"
  end
  return h
end

-- The first line of an error, naming path.
local function message(path, err)
  if type(err) == "number" then
    err = tostring(err)
  elseif type(err) ~= "string" then
    err = ("(error object is a %s value)"):format(type(err))
  end
  err = err:match("^[^\n]*")
  if err:sub(1, #path) ~= path then
    err = path .. ": " .. err
  end
  return err
end

-- provided for one load: a copy of it whose settings table is a fresh copy.
local function for_one_load(provided)
  local mine = {}
  for name, value in pairs(provided) do
    mine[name] = value
  end
  local settings = mine[M.SETTINGS]
  if type(settings) == "table" then
    local copy = {}
    for k, v in pairs(settings) do
      copy[k] = v
    end
    mine[M.SETTINGS] = copy
  end
  return mine
end

-- Loads the handler file at path: h, or nil and the message.
function M.load(path, provided)
  if provided ~= nil and type(provided) ~= "table" then
    error(("bad argument #2 to 'load' (table expected, got %s)"):format(type(provided)), 2)
  end
  local modules = {}
  local env = M.env(dirname(path), {}, modules, for_one_load(provided or {}))
  local chunk, err = loadfile(path, "t", env)
  if not chunk then
    return nil, message(path, err)
  end
  local ok, value = pcall(chunk)
  if not ok then
    return nil, message(path, value)
  end
  local h
  h, err = M.check(value, path)
  if not h then
    return nil, err
  end
  h.modules = modules
  return h
end

return M
