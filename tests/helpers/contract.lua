-- Drivers of tests/contract_spec.lua: run one scenario (a handler and
-- steps) under one interpreter (the in-memory harness, the event server or
-- the fork server) and return what was observed, in one shape for all
-- three, so that the spec can compare them with each other and with the
-- scenario's expected result.
--
-- A scenario:
--   { name = "...",
--     handler = "lua source",     -- handler.lua, after a one-line prelude
--     files = { ["x.lua"] = "..." },   -- more files next to it (optional)
--     raw = true,                 -- handler.lua without the prelude
--     args = { "--idle-timeout", "0.3" },   -- extra server options
--     opts = { budget = 100000 },           -- extra harness.open options (the
--                                           -- harness's args: --set k=v is
--                                           -- opts.settings = { k = "v" })
--     steps = { ... },            -- see below
--     reasons = { a = "eof" },    -- on_close reason of each connection
--     records = { a = { "recv nil closed 104" } },   -- other rec() lines
--     log = "error" | "warn" | "none",   -- class of the log
--     log_has = { "text" },       -- plain texts the error log contains
--     log_lines = { "warn: handler FILE:4: conn ID: saw 3 bytes" },   -- lines
--                                 -- of the log (FILE = the handler's path, DIR
--                                 -- its directory; ID
--                                 -- stands for any connection id), compared
--                                 -- after "<level>: ": the server's line after
--                                 -- its "time [pid] ", the harness's h.logs
--     load_error = "FILE:3: ..."  -- the handler does not load (FILE = its path,
--                                 -- DIR = its directory)
--     shared_size = "4k",         -- the shared dictionary's capacity (the
--                                 -- servers' --shared-size; the harness: one
--                                 -- harness.shared(size) for every connection
--                                 -- of the run, as the servers have one)
--     pubsub_size = "4k",         -- the pubsub bus's capacity (--pubsub-size;
--                                 -- the harness: one harness.bus(size) for
--                                 -- every connection of the run)
--     upstreams = { up = "lua source" }   -- upstream servers the handler
--                                 -- (after a one-line prelude: rec(conn, ...)
--                                 -- records as records.up)
--                                 -- reaches through require("echohost.settings").up
--                                 -- ("HOST:PORT"): the servers' driver starts an
--                                 -- event server on that handler file (no
--                                 -- prelude) and passes --set up=127.0.0.1:PORT;
--                                 -- the harness gets opts.upstreams with it at
--                                 -- 127.0.0.1:(9001, 9002, ...)
--   }
--
-- Steps (c names a connection, opened at its first step):
--   { c = "a", open = true }      connect (the harness: harness.open)
--   { c = "a", pause = true }     the client reads only in the steps that read
--                                 (expect, check, ending), as the servers'
--                                 client always does: the harness's h:pause(),
--                                 whose reads are then h:read(n) and, for an
--                                 ending, h:resume() (output backpressure:
--                                 sends wait while it does not read)
--   { c = "a", send = "x" }       the client sends x
--   { c = "a", expect = "X" }     the client reads exactly #X bytes (with send: after it)
--   { c = "a", check = "open" }   nothing more comes for a while, not closed
--   { c = "a", eof = true }       the client shuts its write side down
--   { c = "a", reset = true }     the client resets it (SO_LINGER 0, close)
--   { c = "a", idle = true }      silence past --idle-timeout (harness: h:idle())
--   { shutdown = true }           SIGTERM to the server (harness: h:shutdown())
--   { wait = secs }               time passes (with c, after its send): the
--                                 harness advances the virtual clock of every
--                                 open connection by secs (h:advance: their
--                                 timers fire); the servers' driver sleeps
--                                 secs before the step's reads
--   { c = "a", ending = "closed", rest = "" }
--                                 the client reads until the connection ends:
--                                 the bytes, then "closed" (an EOF: the server
--                                 closed it or shut its sending side; the
--                                 client may still send), "reset" or "open"
--                                 (nothing ended it; harness: h:ending())
--   { c = "a", ending = "closed", rest = "x*", any = "x" }
--                                 as ending, but the bytes may be any number
--                                 of "x" (a class of Lua patterns), observed
--                                 as "x*": where how much arrived is the
--                                 kernel's (a fault that cut writes short)
--   { u = "x", datagram = "hi", reply = "HI" }
--                                 the UDP client x (a socket of its own,
--                                 made at its first step) sends the datagram
--                                 "hi" and gets the reply "HI"; reply = false:
--                                 none comes (for CHECK_TIMEOUT); ipv6 = true at
--                                 a client's first step: it is [::1] (the
--                                 servers get udp://[::1]:0 too). The servers
--                                 get a second listener, udp://127.0.0.1:0;
--                                 the harness calls h:datagram(data, peer) on
--                                 the open of the last connection opened (its
--                                 state, as a worker's serves its connections
--                                 and its datagrams alike), or on an open of
--                                 its own before any
--   { touch = "name" } / { remove = "name" }   a flag file next to the handler
--   { write = { ["helper.lua"] = "..." }, reload = true }
--                                 rewrite files, then SIGHUP and wait for the
--                                 next "version N loaded" (harness: nothing;
--                                 the next harness.open loads the new files)
--   { write = { ... }, reload = "fails", refused = "FILE:3: ..." }
--                                 a reload that the loader refuses with that
--                                 message (FILE, DIR as for load_error): the
--                                 servers log "reload failed, version N
--                                 stays: <message>" and serve on; the harness
--                                 driver loads the files in a harness.open,
--                                 logs the same line, and puts the files back
--                                 (its next opens load the version that stays)
--
-- The prelude gives the handler rec(conn, ...), which appends
-- "conn.peer<TAB>words" to the records file (conn may be a datagram's peer
-- string), and flag(name), true when the flag file exists. The drivers map
-- conn.peer (and a UDP client's address) back to the connection's name, so
-- the records say which connection closed for which reason.
local harness = require "echohost.harness"
local server = require "helpers.server"
local socket = require "socket"
local util = require "helpers.handler_util"
local files = require "helpers.util"

local M = {}

M.READ_TIMEOUT = 3        -- a read that expects bytes or an end
M.CHECK_TIMEOUT = 0.25    -- how long "nothing more comes" is watched
M.RECORD_TIMEOUT = 3      -- the records and log lines of the connections' ends

local PRELUDE = 'local REC, DIR = %q, %q; local function rec(conn, ...) '
  .. 'local t = table.pack(...); for i = 1, t.n do t[i] = tostring(t[i]) end; '
  .. 'local f = assert(io.open(REC, "a")); f:write(type(conn) == "string" and conn or '
  .. 'conn.peer, "\\t", '
  .. 'table.concat(t, " ", 1, t.n), "\\n"); f:close() end; '
  .. 'local function flag(name) local f = io.open(DIR .. "/" .. name, "r"); '
  .. 'if f then f:close() end; return f ~= nil end; '
  .. 'local _ = rec, flag\n'

-- An upstream's rec(conn, ...) writes "upstream <name><TAB>words": the
-- records of upstream up are records.up.
local UP_PRELUDE = 'local REC, NAME = %q, %q; local function rec(_, ...) '
  .. 'local t = table.pack(...); for i = 1, t.n do t[i] = tostring(t[i]) end; '
  .. 'local f = assert(io.open(REC, "a")); f:write(NAME, "\\t", '
  .. 'table.concat(t, " ", 1, t.n), "\\n"); f:close() end; local _ = rec\n'

M.PRELUDE_LINES = 1
M.NO_REPLY = "(no reply)"   -- a datagram step's observation when none came
M.UDP_PORT = 41001          -- the harness's UDP clients: 127.0.0.1:(this + n)

-- Whether the scenario sends datagrams (the servers then listen on UDP too).
local function has_datagrams(sc, ipv6)
  for _, st in ipairs(sc.steps or {}) do
    if st.datagram and (not ipv6 or st.ipv6) then
      return true
    end
  end
  return false
end

local write_file = files.spit

local function read_file(path)
  local ok, s = pcall(files.slurp, path)
  return ok and s or nil
end

-- The scenario's directory: its files, written afresh before each run (a
-- reload step rewrites them), an empty records file, no flags.
-- The names of sc.upstreams, sorted (the order of their addresses).
function M.upstream_names(sc)
  local names = {}
  for name in pairs(sc.upstreams or {}) do
    names[#names + 1] = name
  end
  table.sort(names)
  return names
end

function M.prepare(sc, dir)
  local file = dir .. "/handler.lua"
  local records = dir .. "/records"
  for name, text in pairs(sc.upstreams or {}) do
    write_file(dir .. "/" .. name .. ".lua", UP_PRELUDE:format(records, "upstream " .. name)
      .. text)
  end
  os.execute("rm -f '" .. dir .. "'/flag-*")
  for name, text in pairs(sc.files or {}) do
    write_file(dir .. "/" .. name, text)
  end
  local src = sc.raw and sc.handler or (PRELUDE:format(records, dir) .. sc.handler)
  write_file(file, src)
  write_file(records, "")
  return file, records
end

local function flag_path(dir, name)
  return dir .. "/" .. name
end

-- A step's file changes: write = {name = text}, touch/remove a flag file.
local function apply_files(dir, st)
  for name, text in pairs(st.write or {}) do
    util.write_file(dir .. "/" .. name, text)
  end
  if st.touch then
    write_file(flag_path(dir, st.touch), "")
  end
  if st.remove then
    os.remove(flag_path(dir, st.remove))
  end
end

-- text with FILE replaced by file (the handler's path) and DIR by its
-- directory.
local function placed(text, file)
  local dir = file:match("^(.*)/[^/]*$")
  return (text:gsub("FILE", function() return file end):gsub("DIR", function() return dir end))
end

-- The wanted lines of sc.log_lines, FILE replaced by file: level and text
-- after "<level>: ".
local function wanted_lines(sc, file)
  local list = {}
  for i, want in ipairs(sc.log_lines or {}) do
    local level, rest = want:match("^(%a+): (.*)$")
    assert(level, "scenario bug: log_lines[" .. i .. "] is not '<level>: text'")
    list[i] = { level = level, text = placed(rest, file) }
  end
  return list
end

-- obs.log_lines[i]: for the i-th wanted line, the text after "<level>: " of
-- the line of that level that is the wanted one, else of the first line of
-- that level (so that a diff shows it), else "(no <level> line)". lines:
-- the log's lines; lead: the pattern before "<level>: " ("^" in h.logs,
-- "%] " in the server's log).
local function log_lines(obs, sc, file, lines, lead)
  for i, want in ipairs(wanted_lines(sc, file)) do
    local got
    for _, line in ipairs(lines) do
      local text = line:match(lead .. want.level .. ": (.*)$")
      -- connection ids differ by interpreter (the fork child's is its pid)
      text = text and text:gsub(": conn %d+: ", ": conn ID: ", 1)
      if text == want.text then
        got = text
        break
      end
      got = got or text
    end
    obs.log_lines[i] = got or ("(no " .. want.level .. " line)")
  end
end

-- What the scenario expects, in the shape the drivers return.
function M.expected(sc, file)
  local obs = { steps = {}, reasons = {}, records = {}, log = sc.log or "none", log_has = {},
                log_lines = {} }
  if sc.load_error then
    return { load_error = placed(sc.load_error, file) }
  end
  for i, st in ipairs(sc.steps) do
    if st.expect then
      obs.steps[i] = st.expect
    elseif st.check then
      obs.steps[i] = st.check
    elseif st.ending then
      obs.steps[i] = st.ending .. " after " .. (st.rest or "")
    elseif st.datagram then
      obs.steps[i] = st.reply or M.NO_REPLY
    elseif st.reload == "fails" then
      obs.steps[i] = "refused: " .. placed(st.refused, file)
    end
  end
  for c, r in pairs(sc.reasons or {}) do
    obs.reasons[c] = { r }
  end
  for c, list in pairs(sc.records or {}) do
    obs.records[c] = list
  end
  for _, text in ipairs(sc.log_has or {}) do
    obs.log_has[text] = true
  end
  for i, want in ipairs(wanted_lines(sc, file)) do
    obs.log_lines[i] = want.text
  end
  return obs
end

-- How many record lines the scenario expects (the servers wait for them).
local function record_count(sc)
  local n = 0
  for _ in pairs(sc.reasons or {}) do
    n = n + 1
  end
  for _, list in pairs(sc.records or {}) do
    n = n + #list
  end
  return n
end

local function count_lines(path)
  local n = 0
  for _ in (read_file(path) or ""):gmatch("[^\n]*\n") do
    n = n + 1
  end
  return n
end

-- Records file -> reasons (on_close lines "close <reason>") and the other
-- lines, per connection name.
local function parse_records(obs, path, peers)
  for line in (read_file(path) or ""):gmatch("([^\n]*)\n") do
    local peer, what = line:match("^([^\t]*)\t(.*)$")
    local name = peer and (peers[peer] or peer:match("^upstream (.+)$")
      or ("unknown peer " .. peer)) or "unparsed"
    what = what or line
    local reason = what:match("^close (.*)$")
    local into = reason and obs.reasons or obs.records
    into[name] = into[name] or {}
    table.insert(into[name], reason or what)
  end
end

local function log_flags(obs, sc, text)
  for _, want in ipairs(sc.log_has or {}) do
    obs.log_has[want] = text:find(want, 1, true) ~= nil
  end
end

-- The bytes an ending step read, as observed: with st.any, "x*" when every
-- byte is of that class.
local function rest_of(st, rest)
  if st.any and not rest:find("[^" .. st.any .. "]") then
    return st.any .. "*"
  end
  return rest
end

local function new_obs()
  return { steps = {}, reasons = {}, records = {}, log = "none", log_has = {}, log_lines = {} }
end

-- Interpreter 1: the harness ------------------------------------------------

-- The harness runs handlers in this process: a handler that reached the
-- real os.exit would end busted, and a loop the budget does not stop would
-- hang it. While a harness driver runs, os.exit raises, and a hook raises
-- after 20 s.
local function guarded(fn)
  local real_exit = os.exit
  os.exit = function()   -- luacheck: ignore 122
    error("contract spec: a handler reached the real os.exit", 2)
  end
  local deadline = socket.gettime() + 20
  local co = coroutine.create(fn)
  debug.sethook(co, function()
    if socket.gettime() > deadline then
      error("contract spec: the harness ran a scenario for more than 20 s", 2)
    end
  end, "", 1000000)
  local ok, res = coroutine.resume(co)
  os.exit = real_exit   -- luacheck: ignore 122
  if not ok then
    error(debug.traceback(co, res), 0)
  end
  return res
end

local function harness_log(h)
  local log = h.log
  if type(log) == "function" then
    log = log(h)
  end
  return log
end

-- The differences of observations a and b (named a_name, b_name), one line
-- each: 'reasons.a[1]: got "closed", expected "error"'.
local function flatten(v, prefix, into)
  if type(v) ~= "table" then
    into[prefix] = v
    return into
  end
  for k, x in pairs(v) do
    local key = type(k) == "number" and (prefix .. "[" .. k .. "]")
      or (prefix == "" and k or prefix .. "." .. k)
    flatten(x, key, into)
  end
  return into
end

local function show(v)
  if type(v) == "string" then
    if #v > 80 then
      v = v:sub(1, 80) .. "..."
    end
    return ("%q"):format(v):gsub("\\\n", "\\n")
  end
  return tostring(v)
end

function M.diff(a, b, a_name, b_name)
  local e, g, keys, lines = flatten(a, "", {}), flatten(b, "", {}), {}, {}
  for k in pairs(e) do
    keys[#keys + 1] = k
  end
  for k in pairs(g) do
    if e[k] == nil then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    if e[k] ~= g[k] then
      lines[#lines + 1] = ("  %s: %s %s, %s %s"):format(k, b_name, show(g[k]),
        a_name, show(e[k]))
    end
  end
  return table.concat(lines, "\n")
end

function M.run_harness(sc, dir)
  local file, records = M.prepare(sc, dir)
  if sc.load_error then
    return guarded(function()
      -- through a Lua function: error(msg, 2) in open would add its place
      local ok, err = pcall(function() return harness.open(file, sc.opts) end)
      if ok then
        return { load_error = "harness.open loaded it" }
      end
      return { load_error = tostring(err) }
    end)
  end
  local dict = harness.shared(sc.shared_size)
  local bus = harness.bus(sc.pubsub_size)
  local r = guarded(function()
    local obs, conns, order, peers = new_obs(), {}, {}, {}
    local function conn(name)
      local c = conns[name]
      if not c then
        local opts = {}
        for k, v in pairs(sc.opts or {}) do
          opts[k] = v
        end
        opts.peer = "127.0.0.1:" .. (40001 + #order)
        opts.shared = dict
        opts.bus = bus
        local n = 0
        for _, up in ipairs(M.upstream_names(sc)) do
          n = n + 1
          local addr = "127.0.0.1:" .. (9000 + n)
          opts.upstreams = opts.upstreams or {}
          opts.upstreams[addr] = dir .. "/" .. up .. ".lua"
          local settings = {}
          for k, v in pairs(opts.settings or {}) do
            settings[k] = v
          end
          settings[up] = addr
          opts.settings = settings
        end
        c = { name = name, h = harness.open(file, opts), pos = 0 }
        conns[name], peers[opts.peer] = c, name
        order[#order + 1] = c
      end
      return c
    end
    -- a paused client reads what the step wants (n; nil: to the end)
    local function take(c, n)
      if c.paused and n then
        local have = #c.h:sent() - c.pos
        if have < n then
          c.h:read(n - have)
        end
      elseif c.paused then
        c.h:resume()
        c.paused = false
      end
      local all = c.h:sent()
      local got = all:sub(c.pos + 1, n and c.pos + n or #all)
      c.pos = c.pos + #got
      return got
    end
    local function done(c, how)
      c.ended = how
      c.h:finish()
    end
    -- datagrams: the state of the last connection opened since the last
    -- reload, or an open of their own (made afresh after a reload, as the
    -- servers' state is reloaded)
    local udp, nudp, own, owns, mark = {}, 0, nil, {}, 0
    local function datagram(st)
      if not udp[st.u] then
        nudp = nudp + 1
        udp[st.u] = (st.ipv6 and "[::1]:" or "127.0.0.1:") .. (M.UDP_PORT + nudp)
        peers[udp[st.u]] = st.u
      end
      local h = #order > mark and order[#order].h
      if not h then
        if not own then
          local opts = {}
          for k, v in pairs(sc.opts or {}) do
            opts[k] = v
          end
          opts.peer, opts.shared, opts.bus = "127.0.0.1:40000", dict, bus
          own = harness.open(file, opts)
          owns[#owns + 1] = own
        end
        h = own
      end
      local r = h:datagram(st.datagram, udp[st.u])
      return r or M.NO_REPLY
    end
    local version, refusals = 1, {}
    for i, st in ipairs(sc.steps) do
      local kept = {}
      if st.reload == "fails" then
        for name in pairs(st.write or {}) do
          kept[name] = read_file(dir .. "/" .. name)
        end
      end
      apply_files(dir, st)
      if st.reload == "fails" then
        local ok, err = pcall(harness.open, file, sc.opts)
        err = ok and "harness.open loaded it" or tostring(err):match("^[^\n]*")
        obs.steps[i] = "refused: " .. err
        refusals[#refusals + 1] = ("SIGHUP reload failed, version %d stays: %s")
          :format(version, err)
        for name, text in pairs(kept) do
          write_file(dir .. "/" .. name, text)
        end
      elseif st.reload then
        mark, own, version = #order, nil, version + 1
      end
      local c = st.c and conn(st.c)
      if st.pause then
        c.h:pause()
        c.paused = true
      end
      if st.send then
        c.h:input(st.send)
      end
      if st.eof then
        c.h:eof()
      end
      if st.idle then
        c.h:idle()
      end
      if st.shutdown then
        for _, o in ipairs(order) do
          if not o.ended then
            o.h:shutdown()
          end
        end
      end
      if st.reset then
        c.h:reset()
        done(c, "client reset")
      end
      if st.wait then
        for _, o in ipairs(order) do
          if not o.ended then
            o.h:advance(st.wait)
          end
        end
      end
      if st.expect then
        obs.steps[i] = take(c, #st.expect)
      elseif st.check then
        local more = take(c, 1)
        obs.steps[i] = c.h:closed() and "closed" or (#more > 0 and "data " .. more or "open")
      elseif st.ending then
        -- what the client's reads end with: an EOF also after the handler's
        -- conn:shutdown("send") (the client may still send), or a reset
        local rest = take(c)
        obs.steps[i] = c.h:ending() .. " after " .. rest_of(st, rest)
        c.ended = "ending"
      elseif st.datagram then
        obs.steps[i] = datagram(st)
      end
    end
    local entries, lines = table.move(refusals, 1, #refusals, 1, {}), {}
    local all = table.move(order, 1, #order, 1, {})
    for _, h in ipairs(owns) do
      all[#all + 1] = { name = "(datagrams)", h = h, ended = "datagrams" }
    end
    for _, c in ipairs(all) do
      if not c.ended then
        error("scenario bug: connection " .. c.name .. " is not ended by a step")
      end
      c.h:finish()
      local log = harness_log(c.h)
      if type(log) ~= "table" then
        entries[#entries + 1] = "(h.log is " .. type(log) .. ", expected a list)"
      else
        for _, e in ipairs(log) do
          entries[#entries + 1] = tostring(e)
        end
      end
      -- the handler's own lines (echohost.log), as the server logs them
      for _, line in ipairs(type(c.h.logs) == "table" and c.h.logs or {}) do
        lines[#lines + 1] = tostring(line)
      end
    end
    local text = table.concat(entries, "\n")
    if #lines > 0 then
      text = text .. "\n" .. table.concat(lines, "\n")
    end
    -- the server's classes: an error (a connection's, or a handler's
    -- log.error), else a warning
    local function has(level)
      for _, line in ipairs(lines) do
        if line:find("^" .. level .. ": ") then
          return true
        end
      end
      return false
    end
    obs.log = (#entries > 0 or has("error")) and "error" or has("warn") and "warn" or "none"
    if entries[1] and entries[1]:match("^%(h%.log is") then
      obs.log = entries[1]
    end
    log_flags(obs, sc, text)
    log_lines(obs, sc, file, lines, "^")
    parse_records(obs, records, peers)
    return { obs, text }
  end)
  return r[1], r[2]
end

-- Interpreters 2 and 3: a server on loopback --------------------------------

-- The class of a server log: "error" if it has an error line, "warn" if a
-- warning, else "none".
local function log_class(text)
  if text:find("%] error: ") then
    return "error"
  elseif text:find("%] warn: ") then
    return "warn"
  end
  return "none"
end

-- Whether the kernel still lists the loopback IPv4 TCP socket with these
-- ports in /proc/net/tcp: after an EOF it stays (CLOSE_WAIT, or TIME_WAIT
-- once both sides closed), after a reset it is gone at once. (LuaSocket
-- reports ECONNRESET as "closed".) The server's port is new in every run,
-- so an older socket with the same two ports is unlikely.
local function listed(port, rport)
  if not port or not rport then
    return false
  end
  local lhex, rhex = ("%04X"):format(port), ("%04X"):format(rport)
  for line in io.lines("/proc/net/tcp") do
    local l, r = line:match("^%s*%d+: %x+:(%x+) %x+:(%x+) ")
    if l == lhex and r == rhex then
      return true
    end
  end
  return false
end

-- Reads until the connection ends (bounded): the bytes and how it ended.
local function read_to_end(sock, port, rport, secs)
  sock:settimeout(secs)
  local data, err, partial = sock:receive("*a")
  local got = data or partial or ""
  if err == nil or err == "closed" then
    return got, listed(port, rport) and "closed" or "reset"
  elseif err == "timeout" then
    return got, "open"
  elseif err:find("reset") then
    return got, "reset"
  end
  return got, err
end

function M.run_server(model, sc, dir)
  local file, records = M.prepare(sc, dir)
  local args = { "--model", model, "--workers", "1", "--handler", file }
  if has_datagrams(sc) then
    table.move({ "--listen", "127.0.0.1:0", "--listen", "udp://127.0.0.1:0" }, 1, 4,
      #args + 1, args)
  end
  if has_datagrams(sc, true) then
    table.move({ "--listen", "udp://[::1]:0" }, 1, 2, #args + 1, args)
  end
  if sc.pubsub_size then
    args[#args + 1] = "--pubsub-size"
    args[#args + 1] = sc.pubsub_size
  end
  if sc.shared_size then
    args[#args + 1] = "--shared-size"
    args[#args + 1] = sc.shared_size
  end
  for _, a in ipairs(sc.args or {}) do
    args[#args + 1] = a
  end
  if sc.load_error then
    local full = { "--listen", "127.0.0.1:0" }
    for _, a in ipairs(args) do
      full[#full + 1] = a
    end
    local code, err = server.run(full, 10)
    if code ~= 1 then
      return { load_error = ("exit %s: %s"):format(tostring(code), err) }
    elseif err:find("listening on", 1, true) then
      return { load_error = "logged 'listening on' first: " .. err }
    end
    local at = err:find(file .. ":", 1, true)
    return { load_error = at and err:sub(at):match("^[^\n]*") or ("no file:line: " .. err) }
  end
  local ups = {}
  for _, name in ipairs(M.upstream_names(sc)) do
    local up = util.start({ "--workers", "1", "--listen", "127.0.0.1:0",
                            "--handler", dir .. "/" .. name .. ".lua" })
    ups[#ups + 1] = up
    args[#args + 1] = "--set"
    args[#args + 1] = name .. "=127.0.0.1:" .. up.port
  end
  local srv = util.start(args)
  local obs, conns, order, peers = new_obs(), {}, {}, {}
  local reloads = 0
  local udp = {}
  local function datagram(st)
    local u = udp[st.u]
    if not u then
      u = util.track(assert(st.ipv6 and socket.udp6() or socket.udp()))
      assert(u:setsockname(st.ipv6 and "::1" or "127.0.0.1", 0))
      local ip, port = u:getsockname()
      local peer = (st.ipv6 and "[" .. ip .. "]" or ip) .. ":" .. tostring(port)
      udp[st.u], peers[peer] = u, st.u
      udp[u] = st.ipv6 and 3 or 2      -- the listener it sends to
    end
    local _, uhost, uport = server.split(srv.server.listeners[udp[u]])
    assert(u:sendto(st.datagram, uhost, uport))
    u:settimeout(st.reply == false and M.CHECK_TIMEOUT or M.READ_TIMEOUT)
    local got, err = u:receive(65536)
    if got then
      return got
    end
    return err == "timeout" and M.NO_REPLY or tostring(err)
  end
  local function conn(name)
    local c = conns[name]
    if not c then
      local sock = util.connect(srv.port)
      local ip, port = sock:getsockname()
      c = { name = name, sock = sock, port = tonumber(port), rport = srv.port }
      conns[name], peers[ip .. ":" .. tostring(port)] = c, name
      order[#order + 1] = c
    end
    return c
  end
  local fails = 0
  local function refusal(n)    -- the message of the n-th failed reload, or nil
    local k = 0
    for msg in srv.log_text():gmatch("reload failed, version %d+ stays: ([^\n]*)") do
      k = k + 1
      if k == n then
        return msg
      end
    end
    return nil
  end
  for i, st in ipairs(sc.steps) do
    apply_files(dir, st)
    if st.reload == "fails" then
      fails = fails + 1
      srv.server:signal("HUP")
      util.wait_for(function() return refusal(fails) ~= nil end, 5)
      obs.steps[i] = "refused: " .. (refusal(fails) or "no 'reload failed' line")
    elseif st.reload then
      reloads = reloads + 1
      srv.server:signal("HUP")
      srv.server:wait_log("version " .. (reloads + 1) .. " loaded", 5)
    end
    local c = st.c and conn(st.c)
    if st.pause then
      -- a fixed receive buffer: autotuned, loopback's grows to 32 MiB and
      -- takes what the scenario means to back up
      assert(c.sock:setoption("recv-buffer-size", 65536))
    end
    if st.send then
      c.sock:settimeout(M.READ_TIMEOUT)
      local ok, err = c.sock:send(st.send)
      if not ok then
        obs.steps[i] = "send failed: " .. tostring(err)
      end
    end
    if st.eof then
      c.sock:shutdown("send")
    end
    if st.shutdown then
      srv.server:signal("TERM")
    end
    if st.reset then
      c.sock:setoption("linger", { on = true, timeout = 0 })
      c.sock:close()
      c.ended = "client reset"
    end
    if st.wait then
      socket.sleep(st.wait)
    end
    -- st.idle: nothing to do; the next read waits past --idle-timeout
    if st.expect then
      c.sock:settimeout(M.READ_TIMEOUT)
      local data, _, partial = c.sock:receive(#st.expect)
      obs.steps[i] = data or partial or ""
    elseif st.check then
      c.sock:settimeout(M.CHECK_TIMEOUT)
      local data, err, partial = c.sock:receive(1)
      data = data or partial or ""
      if #data > 0 then
        obs.steps[i] = "data " .. data
      elseif err == "timeout" then
        obs.steps[i] = "open"
      else
        obs.steps[i] = (err == "closed") and "closed" or tostring(err)
      end
    elseif st.ending then
      local rest, how = read_to_end(c.sock, c.port, c.rport, M.READ_TIMEOUT)
      obs.steps[i] = how .. " after " .. rest_of(st, rest)
      c.ended = "ending"
    elseif st.datagram then
      obs.steps[i] = datagram(st)
    end
  end
  for _, c in ipairs(order) do
    if not c.ended then
      error("scenario bug: connection " .. c.name .. " is not ended by a step")
    end
  end
  -- the records and error lines of the ends come after the clients saw them
  local want = record_count(sc)
  util.wait_for(function() return count_lines(records) >= want end, M.RECORD_TIMEOUT)
  util.wait_for(function()
    local text = srv.log_text()
    for _, s in ipairs(sc.log_has or {}) do
      if not text:find(s, 1, true) then
        return false
      end
    end
    return true
  end, M.RECORD_TIMEOUT)
  -- stop it (its last writes are done once it exited), then read its log
  srv.server:signal("TERM")
  srv.server:wait_exit(8)
  local text = srv.log_text()
  obs.log = log_class(text)
  log_flags(obs, sc, text)
  local lines = {}
  for line in text:gmatch("[^\n]+") do
    lines[#lines + 1] = line
  end
  log_lines(obs, sc, file, lines, "%] ")
  parse_records(obs, records, peers)
  srv.stop()
  os.remove(srv.server.log_path)
  for _, up in ipairs(ups) do
    up.stop()
  end
  return obs, text
end

return M
