-- The handler contract (README "## Handlers") under its three interpreters:
-- the in-memory harness, the event server and the fork server. ONE table of
-- scenarios; each is run under all three, and each run is compared with
-- the scenario's expected result: (a) the bytes the client received, (b)
-- how the connection ended for the client, (c) the on_close reason (the
-- handlers append it to a records file), (d) the class of the log (an
-- error logged or not, and its text). A last test per scenario checks that
-- the three observations are the same. See tests/helpers/contract.lua for
-- the steps and the drivers.
local contract = require "helpers.contract"
local util = require "helpers.handler_util"

-- Handler bodies (after the prelude: rec(conn, ...) and flag(name)) --------

local callbacks_echo = [[
return {
  on_data = function(_, data) return data end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]]

-- Direct style: echo until recv fails, record how it failed.
local direct_echo = [[
return { handle = function(conn)
  while true do
    local data, msg, code = conn:recv()
    if not data then
      rec(conn, "recv", data, msg, code)
      return
    end
    conn:send(data)
  end
end }
]]

-- Callbacks that echo, except for data that triggers a fault (%s: the body
-- run on it; it may return).
local function faulty(trigger, body)
  return ([[
return {
  on_data = function(conn, data)
    if data == %q then
%s
    end
    return data
  end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]]):format(trigger, body)
end

local helper_v1 = 'return { tag = function(s) return "v1:" .. s end }\n'
local helper_v2 = 'return { tag = function(s) return "v2:" .. s:upper() end }\n'

-- A datagram function beside an echoing on_data, except for datagrams that
-- trigger a fault (%s: the body run on it; it may return).
local function faulty_datagram(trigger, body)
  return ([[
return {
  on_data = function(_, data) return data end,
  on_datagram = function(peer, data)
    if data == %q then
%s
    end
    return data:upper()
  end,
}
]]):format(trigger, body)
end

-- A per-message handler of the shared dictionary: one command per message.
local SHARED_CMDS = [[
local shared = require "echohost.shared"
return function(conn, data)
  local cmd, key, arg = data:match("^(%a+) (%w+) ?(.*)$")
  if cmd == "incr" then return tostring(shared:incr(key, 1, 0)) .. "\n" end
  if cmd == "setex" then return tostring(shared:set(key, "v", tonumber(arg))) .. "\n" end
  if cmd == "get" then
    local v = shared:get(key)
    return tostring(type(v) == "string" and #v > 1 and #v or v) .. "\n"
  end
  if cmd == "big" then
    local ok, err = shared:set(key, ("x"):rep(tonumber(arg)))
    return tostring(ok) .. " " .. tostring(err) .. "\n"
  end
  if cmd == "del" then return tostring(shared:delete(key)) .. "\n" end
  if cmd == "bad" then return shared:get("") end
end
]]

-- A per-message handler of publish/subscribe: one command per message.
local PUBSUB_CMDS = [[
local pubsub = require "echohost.pubsub"
local function show(c, msg, ch) c:send(ch .. ":" .. msg .. "\n") end
return function(conn, data)
  local cmd, ch, arg = data:match("^(%a+) ?(%S*) ?(.*)$")
  if cmd == "sub" then
    conn.state[ch] = conn:subscribe(ch, show)
    return "subscribed " .. ch .. "\n"
  elseif cmd == "subs" then
    for i = 1, tonumber(arg) do conn:subscribe(ch .. i, show) end
    return "ok\n"
  elseif cmd == "pub" then
    return tostring(pubsub.publish(ch, arg)) .. "\n"
  elseif cmd == "big" then
    return tostring(pubsub.publish(ch, ("x"):rep(tonumber(arg)))) .. "\n"
  elseif cmd == "max" then
    return tostring(pubsub.message_max()) .. "\n"
  elseif cmd == "cancel" then
    local s = conn.state[ch]
    return tostring(s:cancel()) .. " " .. tostring(s) .. " " .. tostring(s:cancel()) .. "\n"
  elseif cmd == "faulty" then
    conn:subscribe(ch, function() error("boom in " .. ch) end)
    return "subscribed " .. ch .. "\n"
  elseif cmd == "late" then
    conn:close()
    rec(conn, "subscribe", conn:subscribe(ch, show))
  elseif cmd == "badsub" then
    conn:subscribe("", show)
  elseif cmd == "badpub" then
    pubsub.publish(ch, 42)
  end
end
]]

local BIG = string.rep("abcdefghijklmnop", 4096)   -- 64 KiB, replied upper-cased
local X16 = string.rep("x", 16 * 1024 * 1024)     -- two sends of 8 MiB

-- Steps of a connection b that round-trips twice around a fault of a (the
-- fault's steps in between), then ends by EOF: "other connections unaffected".
local function around(fault_steps, after)
  local steps = { { c = "b", send = "b1", expect = "b1" } }
  for _, st in ipairs(fault_steps) do
    steps[#steps + 1] = st
  end
  steps[#steps + 1] = { c = "b", send = "b2", expect = "b2" }
  for _, st in ipairs(after or {}) do
    steps[#steps + 1] = st
  end
  steps[#steps + 1] = { c = "b", eof = true }
  steps[#steps + 1] = { c = "b", ending = "closed", rest = "" }
  return steps
end

-- A fresh connection c after the fault: it is served.
local fresh = {
  { c = "c", send = "c1", expect = "c1" },
  { c = "c", eof = true },
  { c = "c", ending = "closed", rest = "" },
}

local scenarios = {
  { name = "the handler's Lua state runs the generational collector",
    handler = [[
local mode = collectgarbage("incremental")      -- the mode it was in
collectgarbage(mode)
return function() return mode end
]],
    steps = {
      { c = "a", send = "which?", expect = "generational" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    } },

  -- The event and fork servers give a conn that has made 16 method
  -- lookups its own metatable (lconn.c): before and after, the same fields.
  { name = "a conn's fields, methods and errors are the same after many method calls",
    handler = [[
return { handle = function(conn)
  conn.state.kept = "kept"
  local state = conn.state
  local function look()
    local ok, err = pcall(function() conn.id = 1 end)
    return ("%s %s %s %s %s %s %s|"):format(math.type(conn.id),
      conn.peer:match("^127%.0%.0%.1:%d+$") and "peer" or conn.peer,
      conn.state.kept, tostring(conn.state == state), tostring(conn.nosuch),
      tostring(conn[1]), ok and "writable" or err:match("echohost.conn.*"))
  end
  local before = look()
  for _ = 1, 40 do conn:settimeout(nil) end
  local after = look()
  local ok, err = pcall(function() return conn:send(42) end)
  conn:send(before .. after .. (ok and "no error" or err:match("bad argument.*")))
  local data = conn:recv()
  conn:send(data)
end }
]],
    steps = {
      { c = "a", expect = ("integer peer kept true nil nil echohost.conn fields are read-only "
          .. "(keep your data in conn.state)|"):rep(2)
          .. "bad argument #1 to 'send' (string expected, got number)" },
      { c = "a", send = "still", expect = "still" },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "a per-message function answers each of several sends",
    handler = 'return function(_, data) return "<" .. data .. ">" end\n',
    steps = {
      { c = "a", send = "one", expect = "<one>" },
      { c = "a", send = "two", expect = "<two>" },
      { c = "a", send = "three", expect = "<three>" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "callbacks answer on_open and each send, and stay open until EOF",
    handler = [[
return {
  on_open = function() return "hello\n" end,
  on_data = function(_, data) return "<" .. data .. ">" end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", expect = "hello\n" },
      { c = "a", send = "one", expect = "<one>" },
      { c = "a", send = "two", expect = "<two>" },
      { c = "a", check = "open" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "eof" } },

  { name = "a direct-style handler answers each send and sees EOF as nil, 'closed', 0",
    handler = direct_echo,
    steps = {
      { c = "a", send = "one", expect = "one" },
      { c = "a", send = "two", expect = "two" },
      { c = "a", check = "open" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "recv nil closed 0" } } },

  { name = "a half-close gets every reply, then the server closes with reason eof",
    handler = [[
return {
  on_data = function(_, data) return data:upper() end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", send = BIG },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = BIG:upper() },
    },
    reasons = { a = "eof" } },

  { name = "a client reset gives on_close reason reset",
    handler = callbacks_echo,
    steps = {
      { c = "a", send = "x", expect = "x" },
      { c = "a", reset = true },
    },
    reasons = { a = "reset" } },

  { name = "a client reset gives a parked recv nil, 'closed', 104",
    handler = direct_echo,
    steps = {
      { c = "a", send = "x", expect = "x" },
      { c = "a", reset = true },
    },
    records = { a = { "recv nil closed 104" } } },

  { name = "a connection idle past --idle-timeout closes with reason timeout",
    handler = callbacks_echo, args = { "--idle-timeout", "0.3" },
    steps = {
      { c = "a", send = "x", expect = "x" },
      { c = "a", idle = true },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "timeout" } },

  { name = "an idle timeout gives a parked recv nil, 'closed', 0",
    handler = direct_echo, args = { "--idle-timeout", "0.3" },
    steps = {
      { c = "a", send = "x", expect = "x" },
      { c = "a", idle = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "recv nil closed 0" } } },

  { name = "SIGTERM closes an idle connection at the drain deadline with reason shutdown",
    handler = callbacks_echo, args = { "--drain-timeout", "0.3" },
    steps = {
      { c = "a", send = "x", expect = "x" },
      { shutdown = true },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "shutdown" } },

  { name = "the drain deadline gives a parked recv nil, 'closed', 0",
    handler = direct_echo, args = { "--drain-timeout", "0.3" },
    steps = {
      { c = "a", send = "x", expect = "x" },
      { shutdown = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "recv nil closed 0" } } },

  { name = "an error in on_open closes that connection with reason error and is logged",
    handler = [[
return {
  on_open = function() if flag("flag-fail") then error("on_open failed") end end,
  on_data = function(_, data) return data end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = around({
      { touch = "flag-fail" },
      { c = "a", open = true },
      { c = "a", ending = "closed", rest = "" },
      { remove = "flag-fail" },
    }, fresh),
    reasons = { a = "error", b = "eof", c = "eof" },
    log = "error", log_has = { "handler.lua:3: on_open failed", "stack traceback" } },

  { name = "an error in on_data closes that connection with reason error and is logged",
    handler = faulty("boom", '      error("on_data failed")'),
    steps = around({
      { c = "a", send = "ok", expect = "ok" },
      { c = "a", send = "boom" },
      { c = "a", ending = "closed", rest = "" },
    }, fresh),
    reasons = { a = "error", b = "eof", c = "eof" },
    log = "error", log_has = { "handler.lua:5: on_data failed", "stack traceback" } },

  { name = "an error in on_close is logged and changes nothing else",
    handler = [[
return {
  on_data = function(conn, data)
    if data == "boom" then conn.state.boom = true end
    return data
  end,
  on_close = function(conn, reason)
    rec(conn, "close", reason)
    if conn.state.boom then error("on_close failed") end
  end,
}
]],
    steps = around({
      { c = "a", send = "boom", expect = "boom" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    }, fresh),
    reasons = { a = "eof", b = "eof", c = "eof" },
    log = "error", log_has = { "handler.lua:9: on_close failed", "stack traceback" } },

  { name = "an error in handle closes that connection and is logged",
    handler = [[
return { handle = function(conn)
  while true do
    local data = conn:recv()
    if not data then return end
    if data == "boom" then error("handle failed") end
    conn:send(data)
  end
end }
]],
    steps = around({
      { c = "a", send = "ok", expect = "ok" },
      { c = "a", send = "boom" },
      { c = "a", ending = "closed", rest = "" },
    }, fresh),
    log = "error", log_has = { "handler.lua:6: handle failed", "stack traceback" } },

  { name = "a loop in on_data is stopped by --lua-budget with reason error",
    handler = faulty("loop", "      while true do end"),
    args = { "--lua-budget", "100000" }, opts = { budget = 100000 },
    steps = around({
      { c = "a", send = "loop" },
      { c = "a", ending = "closed", rest = "" },
    }, fresh),
    reasons = { a = "error", b = "eof", c = "eof" },
    log = "error", log_has = { "instruction budget exceeded", "stack traceback" } },

  -- bounded at 64 MiB, so that a cap that does not work shows as "survived"
  { name = "a handler over --lua-mem fails with reason error and the server serves on",
    handler = faulty("eat", [[
      local t = {}
      for i = 1, 16384 do t[i] = string.rep("x", 4096) .. i end
      return "survived " .. #t]]),
    args = { "--lua-mem", "8m" }, opts = { mem = 8 * 1024 * 1024 },
    steps = around({
      { c = "a", send = "eat" },
      { c = "a", ending = "closed", rest = "" },
    }, fresh),
    reasons = { a = "error", b = "eof", c = "eof" },
    log = "error", log_has = { "not enough memory" } },

  { name = "a reply that is not a string closes that connection with reason error",
    handler = faulty("num", "      return 42"),
    steps = around({
      { c = "a", send = "num" },
      { c = "a", ending = "closed", rest = "" },
    }, fresh),
    reasons = { a = "error", b = "eof", c = "eof" },
    log = "error", log_has = { "handler returned a number (expected a string or nil)" } },

  { name = "a loop in handle is stopped by --lua-budget; the other connections are served",
    handler = [[
return { handle = function(conn)
  while true do
    local data, err, code = conn:recv()
    if not data then return rec(conn, "recv", data, err, code) end
    if data == "loop" then while true do end end
    conn:send(data)
  end
end }
]],
    args = { "--lua-budget", "100000" }, opts = { budget = 100000 },
    steps = around({
      { c = "a", send = "ok", expect = "ok" },
      { c = "a", send = "loop" },
      { c = "a", ending = "closed", rest = "" },
    }, fresh),
    records = { b = { "recv nil closed 0" }, c = { "recv nil closed 0" } },
    log = "error", log_has = { "instruction budget exceeded" } },

  { name = "a coroutine over --lua-mem fails with not enough memory; the others are served",
    handler = [[
return { handle = function(conn)
  while true do
    local data, err, code = conn:recv()
    if not data then return rec(conn, "recv", data, err, code) end
    if data == "eat" then
      conn:spawn(function()
        local t = {}
        for i = 1, 16384 do t[i] = string.rep("x", 4096) .. i end
        conn:send("survived " .. #t)
      end)
    else
      conn:send(data)
    end
  end
end }
]],
    args = { "--lua-mem", "8m" }, opts = { mem = 8 * 1024 * 1024 },
    steps = around({
      { c = "a", send = "eat" },
      { c = "a", ending = "closed", rest = "" },
    }, fresh),
    records = { a = { "recv nil closed 0" }, b = { "recv nil closed 0" },
                c = { "recv nil closed 0" } },
    log = "error", log_has = { "not enough memory" } },

  { name = "--lua-budget bounds each callback, not the connection's total",
    handler = [[
return function(conn, data)
  local n = 0
  for i = 1, 20000 do n = n + i end   -- some 60000 instructions
  return data .. " " .. n .. "\n"
end
]],
    args = { "--lua-budget", "100000" }, opts = { budget = 100000 },
    steps = {
      { c = "a", send = "1", expect = "1 200010000\n" },
      { c = "a", send = "2", expect = "2 200010000\n" },
      { c = "a", send = "3", expect = "3 200010000\n" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "os.exit in on_data raises, closes that connection with reason error only",
    handler = faulty("exit", "      os.exit(3)"),
    steps = around({
      { c = "a", send = "exit" },
      { c = "a", ending = "closed", rest = "" },
    }, fresh),
    reasons = { a = "error", b = "eof", c = "eof" },
    log = "error", log_has = { "handler.lua:5: os.exit is not available in a handler: it "
      .. "would end the server's other connections; close the connection instead",
      "stack traceback" } },

  { name = "proc.fork in on_data raises, closing that connection only",
    handler = faulty("fork", "      require('echohost.proc').fork()"),
    steps = around({
      { c = "a", send = "fork" },
      { c = "a", ending = "closed", rest = "" },
    }, fresh),
    reasons = { a = "error", b = "eof", c = "eof" },
    log = "error", log_has = { "handler.lua:5: proc.fork is not available in a handler: a copy "
      .. "of the server would serve this connection twice" } },

  { name = "a sibling module is required and reloaded with its handler",
    handler = 'local helper = require "helper"\n'
      .. "return function(_, data) return helper.tag(data) end\n",
    files = { ["helper.lua"] = helper_v1 },
    steps = {
      { c = "a", send = "x", expect = "v1:x" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
      { write = { ["helper.lua"] = helper_v2 }, reload = true },
      { c = "b", send = "y", expect = "v2:Y" },
      { c = "b", eof = true },
      { c = "b", ending = "closed", rest = "" },
    } },

  { name = "a reload that fails keeps the version that serves, and logs why",
    handler = "return function(_, data) return 'v1:' .. data end\n",
    steps = {
      { c = "a", send = "x", expect = "v1:x" },
      { write = { ["handler.lua"] = "return function(conn, data)\n  return data +\nend\n" },
        reload = "fails", refused = "FILE:3: unexpected symbol near 'end'" },
      { c = "a", send = "y", expect = "v1:y" },
      { c = "b", send = "z", expect = "v1:z" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
      { c = "b", eof = true },
      { c = "b", ending = "closed", rest = "" },
    },
    log = "error", log_has = { "reload failed, version 1 stays: " } },

  { name = "a handle running across a reload keeps its version; a new connection gets the new",
    handler = 'local helper = require "helper"\n'
      .. "return { handle = function(conn)\n"
      .. "  for data in function() return conn:recv() end do conn:send(helper.tag(data)) end\n"
      .. "end }\n",
    files = { ["helper.lua"] = helper_v1 },
    steps = {
      { c = "a", send = "x", expect = "v1:x" },
      { write = { ["helper.lua"] = helper_v2 }, reload = true },
      { c = "b", send = "y", expect = "v2:Y" },
      { c = "a", send = "z", expect = "v1:z" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
      { c = "b", eof = true },
      { c = "b", ending = "closed", rest = "" },
    } },

  { name = "a reply returned after conn:close() is sent, then the connection closes",
    handler = [[
return {
  on_data = function(conn, data) conn:close(); return "bye " .. data end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", send = "x" },
      { c = "a", ending = "closed", rest = "bye x" },
    },
    reasons = { a = "closed" } },

  -- The verbs of framed receive, half-close, reset and sleep ----------------

  { name = "after conn:close() a frame already buffered is returned, then nil, 'closed', 0",
    handler = [[
return { handle = function(conn)
  rec(conn, "first", conn:receive(1))
  conn:close()
  rec(conn, "buffered", conn:receive(1))
  rec(conn, "more", conn:receive(5))
  rec(conn, "send", conn:send("x"))
  rec(conn, "recv", conn:recv())
end }
]],
    steps = {
      { c = "a", send = "ab" },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "first a", "buffered b", "more nil closed 0", "send nil closed 0",
                      "recv nil closed 0" } } },

  { name = "a receive('*l') that times out keeps its bytes for the next",
    handler = [[
return { handle = function(conn)
  conn:settimeout(0.2)
  rec(conn, "line", conn:receive("*l"))
  conn:settimeout(nil)
  rec(conn, "line", conn:receive("*l"))
  rec(conn, "line", conn:receive("*l"))
  rec(conn, "all", conn:receive("*a"))
end }
]],
    steps = {
      { c = "a", send = "ab", wait = 0.5 },
      { c = "a", send = "c\r\nd\re\nrest" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    -- a CR is dropped before the LF only
    records = { a = { "line nil timeout 110", "line abc", "line d\re", "all rest" } } },

  { name = "a direct-style line server with receive('*l') frames awkward chunks",
    handler = [[
return { handle = function(conn)
  while true do
    local line, msg, code, partial = conn:receive("*l")
    if not line then
      rec(conn, "receive", line, msg, code, partial)
      return
    end
    conn:send("<" .. line .. ">\n")
  end
end }
]],
    steps = {
      { c = "a", send = "he" },
      { c = "a", send = "llo\r" },
      { c = "a", send = "\nwor" },
      { c = "a", expect = "<hello>\n" },
      { c = "a", send = "ld\n\nla", expect = "<world>\n<>\n" },
      { c = "a", check = "open" },
      { c = "a", send = "st" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "receive nil closed 0 last" } } },

  { name = "receive(n) reads exact counts and recv takes the bytes read past a frame",
    handler = [[
return { handle = function(conn)
  local head = conn:receive(3)
  conn:send("[" .. head .. "]")
  conn:send("{" .. conn:recv() .. "}")
  while true do
    local f, msg, code, partial = conn:receive(4)
    if not f then
      rec(conn, "receive", f, msg, code, partial)
      return
    end
    conn:send("(" .. f .. ")")
  end
end }
]],
    steps = {
      { c = "a", send = "abcdef", expect = "[abc]{def}" },
      { c = "a", send = "gh" },
      { c = "a", send = "ijkl", expect = "(ghij)" },
      { c = "a", send = "mnop", expect = "(klmn)" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "receive nil closed 0 op" } } },

  { name = "receiveuntil splits on a delimiter cut across chunks",
    handler = [[
return { handle = function(conn)
  while true do
    local part, msg, code, partial = conn:receiveuntil("--")
    if not part then
      rec(conn, "receiveuntil", part, msg, code, partial)
      return
    end
    conn:send("<" .. part .. ">")
  end
end }
]],
    steps = {
      { c = "a", send = "one-" },
      { c = "a", send = "-two--thr", expect = "<one><two>" },
      { c = "a", send = "ee--", expect = "<three>" },
      { c = "a", send = "x-" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "receiveuntil nil closed 0 x-" } } },

  { name = "shutdown('send'): the client reads EOF, still sends, and the handler reads it",
    handler = [[
return { handle = function(conn)
  local data = conn:recv()
  conn:send("bye " .. data)
  rec(conn, "shutdown", conn:shutdown("send"))
  while true do
    local d, msg, code = conn:recv()
    rec(conn, "recv", d, msg, code)
    if not d then return end
    rec(conn, "send", conn:send(d))
  end
end }
]],
    steps = {
      { c = "a", send = "x" },
      { c = "a", ending = "closed", rest = "bye x" },
      { c = "a", send = "more" },
      { c = "a", eof = true },
    },
    records = { a = { "shutdown true", "recv more nil nil", "send nil closed 0",
                      "recv nil closed 0" } } },

  { name = "reset(): the client sees a reset, on_close gets closed, the reply is dropped",
    handler = [[
return {
  on_data = function(conn, data)
    if data == "rst" then
      rec(conn, "reset", conn:reset())
      rec(conn, "after", conn:send("x"))
      return "dropped"
    end
    return data
  end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", send = "x", expect = "x" },
      { c = "a", send = "rst" },
      { c = "a", ending = "reset", rest = "" },
    },
    reasons = { a = "closed" },
    records = { a = { "reset true", "after nil closed 0" } } },

  { name = "sleep delays a reply and returns true",
    handler = [[
return { handle = function(conn)
  local data = conn:recv()
  rec(conn, "sleep", conn:sleep(0.2))
  conn:send("late " .. data)
  conn:close()
end }
]],
    steps = {
      { c = "a", send = "x", expect = "late x" },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "sleep true" } } },

  { name = "the drain deadline ends a sleep with nil, 'closed', 0",
    handler = [[
return { handle = function(conn)
  conn:recv()
  conn:send("zz")
  rec(conn, "sleep", conn:sleep(30))
  rec(conn, "send", conn:send("late"))
end }
]],
    args = { "--drain-timeout", "0.3" }, opts = { shutdown_at = 0.3 },
    steps = {
      { c = "a", send = "go", expect = "zz" },
      { shutdown = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "sleep nil closed 0", "send nil closed 0" } } },

  { name = "the idle timeout ends a sleep longer than it with nil, 'closed', 0",
    handler = [[
return { handle = function(conn)
  conn:recv()
  conn:send("zz")
  rec(conn, "sleep", conn:sleep(30))
end }
]],
    args = { "--idle-timeout", "0.3" }, opts = { idle_timeout = 0.3 },
    steps = {
      { c = "a", send = "go", expect = "zz" },
      { c = "a", idle = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "sleep nil closed 0" } } },

  -- Timers (conn:after, conn:every; the harness: { wait = secs } advances its clock) --

  { name = "every ticks until cancelled from its own callback",
    handler = [[
return {
  on_open = function(conn)
    local n, t = 0, nil
    t = conn:every(0.1, function(c)
      n = n + 1
      c:send("tick\n")
      if n == 3 then rec(c, "cancel", t:cancel(), tostring(t)) end
    end)
  end,
  on_data = function(_, data) return data end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", open = true, wait = 0.5, expect = "tick\ntick\ntick\n" },
      { wait = 0.5 },
      { c = "a", check = "open" },
      { c = "a", send = "x", expect = "x" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "eof" }, records = { a = { "cancel true echohost.timer (cancelled)" } } },

  { name = "after sends once, later, and may close the connection",
    handler = [[
return {
  on_open = function(conn)
    conn:after(0.2, function(c) c:send("late"); c:close() end)
  end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", open = true, wait = 0.4, expect = "late" },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "closed" } },

  { name = "timers due at the same time fire in the order armed",
    handler = [[
return {
  on_open = function(conn)
    for _, t in ipairs({ { "a", 0.3 }, { "b", 0.3 }, { "c", 0.1 }, { "z", 0 } }) do
      conn:after(t[2], function() conn:send(t[1]) end)
    end
  end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", wait = 0.6 },
      { c = "a", expect = "zcab" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "eof" } },

  { name = "at most 64 timers on a connection; after on a closed one gives nil, 'closed', 0",
    handler = [[
return function(conn, data)
  for i = 1, 64 do conn:after(60, function() end) end
  local ok, err = pcall(conn.after, conn, 60, function() end)
  conn:send(tostring(err):match("too many.*") .. "\n")
  conn:close()
  rec(conn, "after", conn:after(1, function() end))
  rec(conn, "every", conn:every(1, function() end))
end
]],
    steps = {
      { c = "a", send = "go", expect = "too many timers on this connection (at most 64)\n" },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "after nil closed 0", "every nil closed 0" } } },

  { name = "a timer may not wait: sleep in it raises and ends the connection",
    handler = [[
return {
  on_open = function(conn) conn:after(0, function() conn:sleep(1) end) end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", wait = 0.3 },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "error" },
    log = "error",
    log_has = { "conn:sleep would wait: only a coroutine of the connection "
      .. "(handle, conn:spawn) can wait" } },

  { name = "an error in a timer closes that connection with reason error and is logged",
    handler = [[
return {
  on_data = function(conn, data)
    if data == "arm" then
      conn:after(0.2, function() error("timer failed") end)
    end
    return data
  end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", send = "x", expect = "x" },
      { c = "a", send = "arm", expect = "arm" },
      { wait = 0.5 },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "error" },
    log = "error", log_has = { "handler.lua:5: timer failed", "stack traceback" } },

  { name = "a timer fires while a direct-style handler sleeps: its ticks come first",
    handler = [[
return { handle = function(conn)
  local data = conn:recv()
  local n, t = 0, nil
  t = conn:every(0.1, function(c)
    n = n + 1
    c:send("tick\n")
    if n == 2 then t:cancel() end
  end)
  rec(conn, "sleep", conn:sleep(0.4))
  conn:send("late " .. data)
  conn:close()
end }
]],
    steps = {
      { c = "a", send = "x", expect = "tick\ntick\nlate x" },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "sleep true" } } },

  -- Settings and logging (echohost.settings, echohost.log) -------------------

  { name = "echohost.settings gives the handler --set key=value (opts.settings)",
    handler = [[
local settings = require("echohost.settings")
return function(_, data)
  return settings.greeting .. " " .. tostring(settings.nope) .. " " .. data
end
]],
    args = { "--set", "greeting=hola" }, opts = { settings = { greeting = "hola" } },
    steps = {
      { c = "a", send = "x", expect = "hola nil x" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "echohost.log writes '<level>: handler <file>:<line>: <message>' to the log",
    handler = [[
local log = require("echohost.log")
return function(_, data)
  log.warn("saw %d bytes", #data)
  return data
end
]],
    steps = {
      { c = "a", send = "abc", expect = "abc" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    log = "warn", log_lines = { "warn: handler FILE:4: conn ID: saw 3 bytes" } },

  { name = "echohost.log while the handler loads names no connection; a module's line is its own",
    handler = [[
local log = require("echohost.log")
log.warn("loading")
local helper = require "helper"
return function(_, data) return helper.tag(data) end
]],
    files = { ["helper.lua"] = 'local log = require("echohost.log")\n'
      .. 'return { tag = function(s) log.warn("tag %s", s); return s end }\n' },
    steps = {
      { c = "a", send = "abc", expect = "abc" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    log = "warn", log_lines = { "warn: handler FILE:3: loading",
                                "warn: handler DIR/helper.lua:2: conn ID: tag abc" } },

  { name = "a frame over --high-water gives nil, 'too long', 0 and keeps its bytes",
    handler = [[
return { handle = function(conn)
  rec(conn, "line", conn:receive("*l"))
  rec(conn, "recv", #conn:recv())     -- the frame's bytes, at most 1024
  rec(conn, "recv", #conn:recv())     -- then the rest, from the socket
  conn:close()
end }
]],
    args = { "--high-water", "1024" }, opts = { high_water = 1024 },
    steps = {
      { c = "a", send = string.rep("x", 1500) },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "line nil too long 0", "recv 1024", "recv 476" } } },

  { name = "sleep in a callback raises: only a handle coroutine can wait",
    handler = [[
return function(conn, data)
  conn:sleep(1)
  return data
end
]],
    steps = {
      { c = "a", send = "x" },
      { c = "a", ending = "closed", rest = "" },
    },
    log = "error",
    log_has = { "conn:sleep would wait: only a coroutine of the connection "
      .. "(handle, conn:spawn) can wait" } },

  { name = "a table with both handle and callbacks stops the start",
    raw = true,
    handler = "return { handle = function() end, on_data = function() end }\n",
    load_error = "FILE: returned a table with both handle and on_data: handle(conn) "
      .. "serves the whole connection, so the callbacks would never run" },

  { name = "a handler that does not compile stops the start with file:line: message",
    raw = true,
    handler = "return function(conn, data)\n  return data +\nend\n",
    load_error = "FILE:3: unexpected symbol near 'end'" },

  { name = "a handler that returns a number stops the start",
    raw = true,
    handler = "return 42\n",
    load_error = "FILE: returned number; a handler returns a function or a table with "
      .. "handle, on_open, on_data, on_close or on_datagram" },

  { name = "proc.fork while the handler loads stops the start",
    raw = true,
    handler = "local proc = require 'echohost.proc'\nproc.fork()\nreturn function() end\n",
    load_error = "FILE:2: proc.fork is not available in a handler: a copy of the server "
      .. "would serve this connection twice" },

  { name = "a missing module stops the start with its name",
    raw = true,
    handler = "local m = require 'nosuchmodule'\nreturn function() end\n",
    load_error = "FILE:1: module 'nosuchmodule' not found (in DIR, package.path or "
      .. "package.cpath)" },

  -- Coroutines of a connection (conn:spawn) -------------------------------

  { name = "spawn runs its function at once, until it waits; the connection closes "
      .. "after every coroutine",
    handler = [[
return { handle = function(conn)
  local order = {}
  conn:spawn(function(tag)
    order[#order + 1] = tag
    conn:sleep(0.05)
    conn:send("late\n")
  end, "spawned")
  order[#order + 1] = "handle"
  conn:send(table.concat(order, ",") .. "\n")
end }
]],
    steps = {
      { c = "a", expect = "spawned,handle\nlate\n" },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "a callback spawns a coroutine that waits; the client's EOF closes after it",
    handler = [[
return {
  on_data = function(conn, data)
    conn:spawn(function()
      conn:sleep(0.1)
      conn:send("later:" .. data)
    end)
    return "now:" .. data
  end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", send = "x", eof = true },
      { c = "a", ending = "closed", rest = "now:xlater:x" },
    },
    reasons = { a = "eof" } },

  { name = "at most 64 coroutines on a connection, handle included",
    handler = [[
return { handle = function(conn)
  local n = 0
  local ok, err = pcall(function()
    for _ = 1, 64 do
      conn:spawn(function() conn:sleep(30) end)
      n = n + 1
    end
  end)
  conn:send(n .. " " .. tostring(err):match("too many.*") .. "\n")
  conn:close()
end }
]],
    steps = {
      { c = "a", expect = "63 too many coroutines on this connection (at most 64)\n" },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "a coroutine of a callbacks connection may not recv: its data goes to on_data",
    handler = [[
return {
  on_open = function(conn)
    conn:spawn(function()
      local ok, err = pcall(conn.recv, conn)
      conn:send(tostring(err):match("conn:recv: .*") .. "\n")
    end)
  end,
  on_data = function(_, data) return data end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", expect = "conn:recv: the data of this connection goes to on_data\n" },
      { c = "a", send = "x", expect = "x" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "eof" } },

  -- (in which order several parked coroutines resume then is not promised)
  { name = "conn:close() from one coroutine gives another's wait nil, 'closed', 0",
    handler = [[
return { handle = function(conn)
  local first = conn:recv()
  if first == "sleep" then
    conn:spawn(function() rec(conn, "sleeper", conn:sleep(30)) end)
  else
    conn:spawn(function() rec(conn, "reader", conn:recv()) end)
  end
  conn:sleep(0.1)
  conn:close()
  rec(conn, "closer", conn:recv())
end }
]],
    steps = {
      { c = "a", send = "sleep" },
      { c = "b", send = "read" },
      { wait = 0.3 },
      { c = "a", ending = "closed", rest = "" },
      { c = "b", ending = "closed", rest = "" },
    },
    records = { a = { "closer nil closed 0", "sleeper nil closed 0" },
                b = { "closer nil closed 0", "reader nil closed 0" } } },

  { name = "coroutines that sleep wake in the order of their deadlines, ties as spawned",
    handler = [[
return { handle = function(conn)
  for _, t in ipairs({ { "a", 0.4 }, { "b", 0.2 }, { "c", 0.2 }, { "d", 0 } }) do
    conn:spawn(function() conn:sleep(t[2]); conn:send(t[1]) end)
  end
  conn:sleep(0.3)
  conn:send("h")
end }
]],
    steps = {
      { c = "a", expect = "dbcha" },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "a coroutine that yields outside a wait ends the connection with an error",
    handler = [[
return { handle = function(conn)
  conn:spawn(function() coroutine.yield() end)
  rec(conn, "recv", conn:recv())
end }
]],
    steps = {
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "recv nil closed 0" } },
    log = "error", log_has = { "handle yielded outside conn:recv/conn:send" } },

  { name = "a receive cut short by the client's reset gives nil, 'closed', 104 and its bytes",
    handler = [[
return { handle = function(conn)
  rec(conn, "line", conn:receive("*l"))
end }
]],
    steps = {
      { c = "a", send = "part", wait = 0.2 },
      { c = "a", reset = true },
    },
    records = { a = { "line nil closed 104 part" } } },

  { name = "an error in a spawned coroutine ends the connection with reason error",
    handler = [[
return {
  on_data = function(conn, data)
    conn:spawn(function() error("boom in " .. data) end)
  end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", send = "x" },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "error" },
    log = "error", log_has = { "boom in x" } },

  { name = "a client reset gives every parked coroutine nil, 'closed', 104",
    handler = [[
return { handle = function(conn)
  local got = {}
  local function note(what, ...)
    got[#got + 1] = what .. " " .. table.concat({ tostring(select(1, ...)),
      tostring(select(2, ...)), tostring(select(3, ...)) }, " ")
    if #got == 2 then
      table.sort(got)
      rec(conn, table.concat(got, "; "))
    end
  end
  conn:spawn(function() note("sleep", conn:sleep(30)) end)
  note("recv", conn:recv())
end }
]],
    steps = {
      { c = "a", open = true },
      { c = "a", check = "open" },
      { c = "a", reset = true },
    },
    records = { a = { "recv nil closed 104; sleep nil closed 104" } } },

  { name = "one coroutine at a time waits to read the conn",
    handler = [[
return { handle = function(conn)
  conn:spawn(function()
    local data = conn:recv()
    conn:send("spawned got " .. data .. "\n")
  end)
  local ok, err = pcall(conn.recv, conn)
  conn:send(tostring(err):match("conn:recv: .*") .. "\n")
end }
]],
    steps = {
      { c = "a", expect = "conn:recv: another coroutine is waiting to read this connection\n" },
      { c = "a", send = "x", expect = "spawned got x\n" },
      { c = "a", ending = "closed", rest = "" },
    } },

  -- Upstream sockets (echohost.socket.connect in a handler) -----------------

  { name = "a proxy passes bytes both ways through an upstream, and the half-close",
    upstreams = { up = "return function(conn, data) return data:upper() end\n" },
    handler = [[
local socket = require "echohost.socket"
local host, port = require("echohost.settings").up:match("^(.+):(%d+)$")
local function pump(from, to)
  for data in function() return from:recv() end do to:send(data) end
  to:shutdown("send")
end
return { handle = function(conn)
  local up = assert(socket.connect(host, tonumber(port)))
  conn:spawn(pump, up, conn)
  pump(conn, up)
end }
]],
    steps = {
      { c = "a", send = "abc", expect = "ABC" },
      { c = "a", send = "de", expect = "DE" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "an upstream's reset reaches the coroutine reading it as nil, 'closed', 104",
    upstreams = { up = "return { handle = function(conn) conn:recv(); conn:reset() end }\n" },
    handler = [[
local socket = require "echohost.socket"
local host, port = require("echohost.settings").up:match("^(.+):(%d+)$")
return { handle = function(conn)
  local up = assert(socket.connect(host, tonumber(port)))
  up:send(conn:recv())
  local data, msg, code = up:recv()
  conn:send(table.concat({ tostring(data), msg, code }, " ") .. "\n")
  conn:reset()
end }
]],
    steps = {
      { c = "a", send = "x", expect = "nil closed 104\n" },
      { c = "a", ending = "reset", rest = "" },
    } },

  { name = "an upstream socket has no timers, coroutines or subscriptions; a send after "
      .. "its reset gives nil, 'closed', 104",
    upstreams = { up = "return { handle = function(conn) conn:recv(); conn:reset() end }\n" },
    handler = [[
local socket = require "echohost.socket"
local host, port = require("echohost.settings").up:match("^(.+):(%d+)$")
return { handle = function(conn)
  local up = assert(socket.connect(host, tonumber(port)))
  for _, verb in ipairs({ "after", "every", "spawn", "subscribe" }) do
    local arg = verb == "subscribe" and "ch" or (verb == "spawn" and function() end or 1)
    local ok, err = pcall(up[verb], up, arg, function() end)
    conn:send(tostring(err):match("%w+ is not available.*") .. "\n")
  end
  up:send("x")
  rec(conn, "recv", up:recv())
  rec(conn, "send", up:send("y"))
end }
]],
    steps = {
      { c = "a", expect = ("%s is not available on an upstream socket: timers, coroutines "
          .. "and subscriptions belong to the client's conn\n"):rep(4):format("after",
          "every", "spawn", "subscribe") },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "recv nil closed 104", "send nil closed 104" } } },

  { name = "when the connection ends, the runtime closes its upstream sockets: the upstream "
      .. "reads EOF",
    upstreams = { up = "return { on_data = function(_, d) return d end,\n"
      .. "  on_close = function(conn, reason) rec(conn, 'close', reason) end }\n" },
    handler = [[
local socket = require "echohost.socket"
local host, port = require("echohost.settings").up:match("^(.+):(%d+)$")
return { handle = function(conn)
  local up = assert(socket.connect(host, tonumber(port)))
  assert(up:send("x"))
  conn:send(up:recv() .. "\n")
end }
]],
    steps = {
      { c = "a", expect = "x\n" },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { up = "eof" } },

  { name = "at most 64 upstream sockets on a connection; a closed one makes room",
    upstreams = { up = "return function(_, d) return d end\n" },
    handler = [[
local socket = require "echohost.socket"
local host, port = require("echohost.settings").up:match("^(.+):(%d+)$")
return { handle = function(conn)
  local ups = {}
  for i = 1, 64 do ups[i] = assert(socket.connect(host, tonumber(port))) end
  local ok, err = pcall(socket.connect, host, tonumber(port))
  conn:send(tostring(ok) .. " " .. tostring(err):match("too many.*") .. "\n")
  ups[1]:close()
  local up = assert(socket.connect(host, tonumber(port)))
  assert(up:send("again"))
  conn:send(up:recv() .. "\n")
end }
]],
    steps = {
      { c = "a", expect = "false too many upstream sockets on this connection (at most 64)\n"
          .. "again\n" },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "framed receive on an upstream socket",
    upstreams = { up = "return function(conn, data) return 'one\\r\\ntwo\\n3456' end\n" },
    handler = [[
local socket = require "echohost.socket"
local host, port = require("echohost.settings").up:match("^(.+):(%d+)$")
return { handle = function(conn)
  local up = assert(socket.connect(host, tonumber(port)))
  up:send(conn:recv())
  local a, b, c = up:receive("*l"), up:receive("*l"), up:receive(4)
  local peer = up.peer == require("echohost.settings").up and "peer" or up.peer
  conn:send(table.concat({ a, b, c, peer }, "|") .. "\n")
  up:close()
end }
]],
    steps = {
      { c = "a", send = "go", expect = "one|two|3456|peer\n" },
      { c = "a", ending = "closed", rest = "" },
    } },

  -- conn:pipe (the event runtime moves the bytes in C; M.pipe of
  -- lua/echohost/conn.lua is the definition the others run)

  { name = "conn:pipe moves bytes both ways through an upstream, passes the half-close on "
      .. "and returns the bytes moved",
    upstreams = { up = "return function(conn, data) return data:upper() end\n" },
    handler = [[
local socket = require "echohost.socket"
local host, port = require("echohost.settings").up:match("^(.+):(%d+)$")
return { handle = function(conn)
  local up = assert(socket.connect(host, tonumber(port)))
  conn:spawn(function() rec(conn, "up->conn", up:pipe(conn)) end)
  rec(conn, "conn->up", conn:pipe(up))
end }
]],
    steps = {
      { c = "a", send = "abc", expect = "ABC" },
      { c = "a", send = "defg", expect = "DEFG" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "conn->up 7", "up->conn 7" } } },

  { name = "conn:pipe passes an upstream's reset on as a reset and returns nil, 'closed', 104",
    upstreams = { up = "return { handle = function(conn) conn:recv(); conn:reset() end }\n" },
    handler = [[
local socket = require "echohost.socket"
local host, port = require("echohost.settings").up:match("^(.+):(%d+)$")
return { handle = function(conn)
  local up = assert(socket.connect(host, tonumber(port)))
  assert(up:send(conn:recv()))
  rec(conn, "up->conn", up:pipe(conn))
end }
]],
    steps = {
      { c = "a", send = "x" },
      { c = "a", ending = "reset", rest = "" },
    },
    records = { a = { "up->conn nil closed 104 0" } } },

  { name = "conn:pipe resets its source when a send fails: an upstream that went away",
    upstreams = { up = "return { handle = function(conn) conn:recv(); conn:reset() end }\n" },
    handler = [[
local socket = require "echohost.socket"
local host, port = require("echohost.settings").up:match("^(.+):(%d+)$")
return { handle = function(conn)
  local up = assert(socket.connect(host, tonumber(port)))
  rec(conn, "conn->up", conn:pipe(up))
end }
]],
    steps = {
      { c = "a", send = "x" },
      { c = "a", wait = 0.3 },
      { c = "a", send = "y" },
      { c = "a", ending = "reset", rest = "" },
    },
    records = { a = { "conn->up nil closed 104 1" } } },

  { name = "conn:pipe(conn) echoes, bytes a receive read past its frame first, then the half-close",
    handler = [[
return { handle = function(conn)
  local line = conn:receive("*l")
  conn:send(line:upper() .. "\n")
  rec(conn, "pipe", conn:pipe(conn))
end }
]],
    steps = {
      { c = "a", send = "hi\nthere", expect = "HI\nthere" },
      { c = "a", send = "more", expect = "more" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "pipe 9" } } },

  { name = "conn:pipe times out as recv does: the end is passed on, nil, 'timeout', 110",
    upstreams = { up = "return function(conn, data) return data end\n" },
    handler = [[
local socket = require "echohost.socket"
local host, port = require("echohost.settings").up:match("^(.+):(%d+)$")
return { handle = function(conn)
  local up = assert(socket.connect(host, tonumber(port)))
  conn:settimeout(0.2)
  rec(conn, "conn->up", conn:pipe(up))
  rec(conn, "up", up:recv())
  conn:send("after\n")
end }
]],
    steps = {
      { c = "a", wait = 0.5 },
      { c = "a", ending = "closed", rest = "after\n" },
    },
    records = { a = { "conn->up nil timeout 110 0", "up nil closed 0" } } },

  { name = "conn:pipe's misuse: not a conn raises; outside a coroutine it would wait",
    handler = [[
return {
  on_data = function(conn, data)
    if data == "type" then
      local ok, err = pcall(function() return conn:pipe(42) end)
      return tostring(err):match("bad argument.*") .. "\n"
    end
    conn:pipe(conn)
  end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", send = "type",
        expect = "bad argument #1 to 'pipe' (echohost.conn expected, got number)\n" },
      { c = "a", send = "wait" },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "error" },
    log = "error",
    log_has = { "conn:recv would wait: only a coroutine of the connection "
      .. "(handle, conn:spawn) can wait for data" } },

  -- Output backpressure and one writer at a time. The client reads only in
  -- the steps that read (pause: the harness's h:pause); 8 MiB is more than
  -- the kernel's loopback buffers take, so a coroutine's send waits in every
  -- interpreter (under the event loop the first is queued whole below
  -- --high-water and the second waits; under --model fork and to an
  -- upstream the first waits).

  { name = "while a coroutine waits to write the connection, a send and a pipe into it raise; "
      .. "its send returns once the client reads",
    handler = [[
return { handle = function(conn)
  assert(conn:receive("*l"))            -- "go"; "z" stays buffered for the pipe
  local big = string.rep("x", 8 * 1024 * 1024)
  conn:spawn(function() rec(conn, "sent", conn:send(big), conn:send(big)) end)
  local ok, err = pcall(conn.send, conn, "y")
  rec(conn, "send", ok, tostring(err):match("conn:send: .*"))
  ok, err = pcall(conn.pipe, conn, conn)
  rec(conn, "pipe", ok, tostring(err):match("conn:send: .*"))
end }
]],
    steps = {
      { c = "a", pause = true },
      { c = "a", send = "go\nz" },
      { c = "a", expect = X16 },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = {
      "send false conn:send: another coroutine is waiting to write this connection",
      "pipe false conn:send: another coroutine is waiting to write this connection",
      "sent 8388608 8388608" } } },

  { name = "a callbacks connection reads nothing more while its output is over --high-water",
    handler = [[
return {
  on_data = function(conn, data)
    rec(conn, "data", data)
    conn.state.got = data
    if data == "big" then
      conn:after(0.2, function() rec(conn, "timer", conn.state.got) end)
      return string.rep("x", 8 * 1024 * 1024)
    end
    return data
  end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", pause = true },
      { c = "a", send = "big", wait = 0.1 },
      { c = "a", send = "more", wait = 0.4 },
      { c = "a", expect = X16:sub(1, 8 * 1024 * 1024) .. "more" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "data big", "timer big", "data more" } },
    reasons = { a = "eof" } },

  { name = "a callbacks connection reads nothing while a coroutine waits to write to it",
    handler = [[
return {
  on_data = function(conn, data)
    rec(conn, "data", data)
    if data == "go" then
      local big = string.rep("x", 8 * 1024 * 1024)
      conn:spawn(function() rec(conn, "sent", conn:send(big), conn:send(big)) end)
      return nil
    end
    return data:upper()
  end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", pause = true },
      { c = "a", send = "go", wait = 0.3 },
      { c = "a", send = "more", wait = 0.3 },
      { c = "a", expect = X16 .. "MORE" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "data go", "sent 8388608 8388608", "data more" } },
    reasons = { a = "eof" } },

  { name = "a coroutine reads the client while another waits to write to it",
    handler = [[
return { handle = function(conn)
  assert(conn:receive("*l"))
  local big = string.rep("x", 8 * 1024 * 1024)
  conn:spawn(function() rec(conn, "sent", conn:send(big), conn:send(big)) end)
  rec(conn, "got", conn:recv())
end }
]],
    steps = {
      { c = "a", pause = true },
      { c = "a", send = "go\n", wait = 0.3 },    -- the writer waits by now
      { c = "a", send = "hello", wait = 0.3 },
      { c = "a", expect = X16 },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "got hello", "sent 8388608 8388608" } } },

  { name = "while a coroutine waits to write an upstream socket, a send and a pipe into it "
      .. "raise; its reset ends the wait with nil, 'closed'",
    upstreams = { up = "return { handle = function(conn) conn:sleep(30) end }\n" },
    handler = [[
local socket = require "echohost.socket"
local host, port = require("echohost.settings").up:match("^(.+):(%d+)$")
return { handle = function(conn)
  assert(conn:receive("*l"))
  local up = assert(socket.connect(host, tonumber(port)))
  local big = string.rep("x", 8 * 1024 * 1024)
  conn:spawn(function() rec(conn, "sent", up:send(big)) end)
  local ok, err = pcall(up.send, up, "y")
  rec(conn, "send", ok, tostring(err):match("conn:send: .*"))
  ok, err = pcall(conn.pipe, conn, up)
  rec(conn, "pipe", ok, tostring(err):match("conn:send: .*"))
  up:reset()
  conn:send("done\n")
end }
]],
    steps = {
      { c = "a", send = "go\nz", expect = "done\n" },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = {
      "send false conn:send: another coroutine is waiting to write this upstream socket",
      "pipe false conn:send: another coroutine is waiting to write this upstream socket",
      "sent nil closed 0" } } },

  { name = "a callback's reply while a coroutine waits to write the connection is a fault",
    handler = [[
return {
  on_data = function(conn, data)
    local big = string.rep("x", 8 * 1024 * 1024)
    conn:spawn(function() conn:send(big); conn:send(big) end)
    return "REPLY"
  end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", pause = true },
      { c = "a", send = "go" },
      { c = "a", ending = "closed", rest = "x*", any = "x" },
    },
    reasons = { a = "error" },
    log = "error",
    log_has = { "conn:send: another coroutine is waiting to write this connection" } },

  { name = "a send that waits past its settimeout gives nil, 'timeout', 110",
    handler = [[
return { handle = function(conn)
  assert(conn:recv())
  conn:settimeout(0.2)
  local big = string.rep("x", 8 * 1024 * 1024)
  for _ = 1, 4 do
    local n, err, code = conn:send(big)
    if not n then
      rec(conn, "send", n, err, code)
      break
    end
  end
end }
]],
    steps = {
      { c = "a", pause = true },
      { c = "a", send = "go", wait = 0.5 },
      { c = "a", ending = "closed", rest = "x*", any = "x" },
    },
    records = { a = { "send nil timeout 110" } } },

  { name = "a refused connect gives nil, 'connect ADDR: Connection refused', 111",
    handler = [[
local socket = require "echohost.socket"
return { handle = function(conn)
  local up, msg, code = socket.connect("127.0.0.1", 1, 2)
  conn:send(table.concat({ tostring(up), msg, code }, " ") .. "\n")
end }
]],
    steps = {
      { c = "a", expect = "nil connect 127.0.0.1:1: Connection refused 111\n" },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "connect in a callback raises: only a coroutine can wait",
    handler = [[
local socket = require "echohost.socket"
return {
  on_data = function(conn, data) socket.connect("127.0.0.1", 1) end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", send = "x" },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "error" },
    log = "error",
    log_has = { "echohost.socket.connect would wait: only a coroutine of the connection "
      .. "(handle, conn:spawn) can wait" } },

  { name = "the blocking functions of echohost.socket raise in a handler",
    handler = [[
local socket = require "echohost.socket"
return { handle = function(conn)
  local ok, err = pcall(socket.listen)
  conn:send(tostring(err):match("echohost.socket.*") .. "\n")
end }
]],
    steps = {
      { c = "a", expect = "echohost.socket.listen is not available in a handler\n" },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "connect while the handler loads stops the start",
    raw = true,
    handler = "require('echohost.socket').connect('127.0.0.1', 1)\nreturn function() end\n",
    load_error = "FILE:1: echohost.socket.connect is not available while a handler loads" },

  -- The shared dictionary (echohost.shared) ---------------------------------

  { name = "the shared dictionary: one connection's writes are the other's reads, TTLs expire",
    handler = SHARED_CMDS,
    steps = {
      { c = "a", send = "incr n", expect = "1\n" },
      { c = "b", send = "incr n", expect = "2\n" },
      { c = "a", send = "get n", expect = "2\n" },
      { c = "a", send = "setex t 0.2", expect = "true\n" },
      { c = "b", send = "get t", expect = "v\n" },
      { wait = 0.5 },
      { c = "b", send = "get t", expect = "nil\n" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
      { c = "b", eof = true },
      { c = "b", ending = "closed", rest = "" },
    } },

  { name = "the shared dictionary keeps its keys across a reload",
    handler = SHARED_CMDS,
    steps = {
      { c = "a", send = "incr n", expect = "1\n" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
      { write = { ["unused.lua"] = "return 1\n" }, reload = true },
      { c = "b", send = "incr n", expect = "2\n" },
      { c = "b", eof = true },
      { c = "b", ending = "closed", rest = "" },
    } },

  { name = "a full shared dictionary refuses a write with nil, 'no memory' and evicts nothing",
    handler = SHARED_CMDS, shared_size = "4k",
    steps = {
      { c = "a", send = "big k 4000", expect = "true nil\n" },   -- 4056 of 4096 bytes
      { c = "a", send = "big j 100", expect = "nil no memory\n" },
      { c = "a", send = "get k", expect = "4000\n" },
      { c = "a", send = "del k", expect = "true\n" },
      { c = "a", send = "big j 100", expect = "true nil\n" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "misuse of the shared dictionary raises: an empty key",
    handler = SHARED_CMDS,
    steps = {
      { c = "a", send = "bad x" },
      { c = "a", ending = "closed", rest = "" },
    },
    log = "error", log_has = { "bad argument #1 to 'get' (key of 1..250 bytes expected)" } },

  -- Publish and subscribe (echohost.pubsub, conn:subscribe) ----------------

  { name = "a message reaches every subscriber of its channel, after the publisher's reply",
    handler = PUBSUB_CMDS,
    steps = {
      { c = "a", send = "sub news", expect = "subscribed news\n" },
      { c = "b", send = "sub news", expect = "subscribed news\n" },
      { c = "c", send = "sub other", expect = "subscribed other\n" },
      { c = "a", send = "pub news hello world", expect = "true\nnews:hello world\n" },
      { c = "b", expect = "news:hello world\n" },
      { c = "c", check = "open" },
      { c = "c", send = "pub news 2", expect = "true\n" },
      { c = "a", expect = "news:2\n" },
      { c = "b", expect = "news:2\n" },
      { c = "c", send = "pub other 3", expect = "true\nother:3\n" },
      { c = "a", check = "open" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
      { c = "b", eof = true },
      { c = "b", ending = "closed", rest = "" },
      { c = "c", eof = true },
      { c = "c", ending = "closed", rest = "" },
    } },

  { name = "a subscription outlives a reload: a new connection's message reaches it",
    handler = PUBSUB_CMDS,
    steps = {
      { c = "a", send = "sub news", expect = "subscribed news\n" },
      { write = { ["unused.lua"] = "return 1\n" }, reload = true },
      { c = "b", send = "pub news after", expect = "true\n" },
      { c = "a", expect = "news:after\n" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
      { c = "b", eof = true },
      { c = "b", ending = "closed", rest = "" },
    } },

  { name = "a cancelled subscription and a closed connection get nothing",
    handler = PUBSUB_CMDS,
    steps = {
      { c = "a", send = "sub x", expect = "subscribed x\n" },
      { c = "b", send = "sub x", expect = "subscribed x\n" },
      { c = "a", send = "cancel x",
        expect = "true echohost.subscription (cancelled) true\n" },
      { c = "b", send = "pub x m", expect = "true\nx:m\n" },
      { c = "a", check = "open" },
      { c = "b", eof = true },
      { c = "b", ending = "closed", rest = "" },
      { c = "a", send = "pub x n", expect = "true\n" },
      { c = "a", send = "sub x", expect = "subscribed x\n" },
      { c = "a", send = "pub x o", expect = "true\nx:o\n" },
      { c = "a", send = "late x" },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { a = { "subscribe nil closed 0" } } },

  { name = "a subscription's error ends its connection only; the others still get the message",
    handler = PUBSUB_CMDS,
    steps = {
      { c = "a", send = "faulty f", expect = "subscribed f\n" },
      { c = "b", send = "sub f", expect = "subscribed f\n" },
      { c = "b", send = "pub f hi", expect = "true\nf:hi\n" },
      { c = "a", ending = "closed", rest = "" },
      { c = "b", send = "pub f again", expect = "true\nf:again\n" },
      { c = "b", eof = true },
      { c = "b", ending = "closed", rest = "" },
    },
    log = "error", log_has = { "boom in f" } },

  { name = "the longest message follows --pubsub-size; a longer one raises",
    handler = PUBSUB_CMDS, pubsub_size = "4k",
    steps = {
      { c = "a", send = "max", expect = "758\n" },
      { c = "a", send = "sub b", expect = "subscribed b\n" },
      { c = "a", send = "big b 758", expect = "true\nb:" .. ("x"):rep(758) .. "\n" },
      { c = "a", send = "big b 759" },
      { c = "a", ending = "closed", rest = "" },
    },
    log = "error", log_has = { "message too large (at most 758 bytes)" } },

  { name = "misuse of publish/subscribe raises: a bad channel, a message that is not a string, "
      .. "the 65th subscription",
    handler = PUBSUB_CMDS,
    steps = {
      { c = "a", send = "badsub" },
      { c = "a", ending = "closed", rest = "" },
      { c = "b", send = "badpub ch" },
      { c = "b", ending = "closed", rest = "" },
      { c = "c", send = "subs s 64", expect = "ok\n" },
      { c = "c", send = "subs t 1" },
      { c = "c", ending = "closed", rest = "" },
    },
    log = "error", log_has = { "bad argument #1 to 'subscribe' (channel of 1..250 bytes expected)",
                               "bad argument #2 to 'publish' (string expected, got number)",
                               "too many subscriptions on this connection (at most 64)" } },

  -- Datagrams: a UDP listener beside the TCP one (see the u steps)
  { name = "a bare function serves datagrams too, as fn(peer, data); nil sends nothing, '' an "
      .. "empty datagram",
    handler = [[
return function(conn, data)
  if type(conn) ~= "string" then return "tcp " .. data end
  rec(conn, "datagram", data)
  if data == "quiet" then return nil end
  if data == "empty" then return "" end
  return (conn:match("^127%.0%.0%.1:%d+$") and "from " or "? ") .. data:upper()
end
]],
    steps = {
      { c = "a", send = "x", expect = "tcp x" },
      { u = "x", datagram = "hi", reply = "from HI" },
      { u = "x", datagram = "quiet", reply = false },
      { u = "x", datagram = "empty", reply = "" },
      { u = "y", datagram = "again", reply = "from AGAIN" },
      { c = "a", send = "y", expect = "tcp y" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    records = { x = { "datagram hi", "datagram quiet", "datagram empty" },
                y = { "datagram again" } } },

  { name = "one file serves TCP (on_data, on_close) and datagrams (on_datagram)",
    handler = [[
return {
  on_data = function(_, data) return "tcp " .. data end,
  on_datagram = function(peer, data) rec(peer, "datagram", data); return "udp " .. data end,
  on_close = function(conn, reason) rec(conn, "close", reason) end,
}
]],
    steps = {
      { c = "a", send = "x", expect = "tcp x" },
      { u = "x", datagram = "d1", reply = "udp d1" },
      { c = "a", send = "y", expect = "tcp y" },
      { u = "x", datagram = "d2", reply = "udp d2" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    reasons = { a = "eof" }, records = { x = { "datagram d1", "datagram d2" } } },

  { name = "a direct-style handler may have on_datagram",
    handler = [[
return {
  handle = function(conn)
    local data = conn:recv()
    if data then conn:send("got " .. data) end
  end,
  on_datagram = function(_, data) return "dg " .. data end,
}
]],
    steps = {
      { u = "x", datagram = "1", reply = "dg 1" },
      { c = "a", send = "hi", expect = "got hi" },
      { c = "a", ending = "closed", rest = "" },
      { u = "x", datagram = "2", reply = "dg 2" },
    } },

  { name = "a table without on_datagram leaves datagrams to the C echo",
    handler = "return { on_data = function(_, data) return data:upper() end }\n",
    steps = {
      { c = "a", send = "x", expect = "X" },
      { u = "x", datagram = "as is", reply = "as is" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "a table with only on_datagram drops what a TCP client sends; its EOF closes it",
    handler = "return { on_datagram = function(_, data) return '[' .. data .. ']' end }\n",
    steps = {
      { c = "a", send = "tcp" },
      { c = "a", check = "open" },
      { u = "x", datagram = "udp", reply = "[udp]" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    } },

  { name = "an error in on_datagram costs that datagram its reply only",
    handler = faulty_datagram("boom", '      error("boom in a datagram")'),
    steps = {
      { c = "a", send = "x", expect = "x" },
      { u = "x", datagram = "boom", reply = false },
      { u = "x", datagram = "next", reply = "NEXT" },
      { c = "a", send = "y", expect = "y" },
      { c = "a", eof = true },
      { c = "a", ending = "closed", rest = "" },
    },
    log = "error", log_has = { "handler.lua:6: boom in a datagram", "stack traceback" } },

  { name = "a loop in on_datagram is stopped by --lua-budget; the next datagram is answered",
    handler = faulty_datagram("loop", "      while true do end"),
    args = { "--lua-budget", "100000" }, opts = { budget = 100000 },
    steps = {
      { u = "x", datagram = "loop", reply = false },
      { u = "x", datagram = "next", reply = "NEXT" },
    },
    log = "error", log_has = { "instruction budget exceeded" } },

  { name = "on_datagram over --lua-mem gets no reply; the next datagram is answered",
    handler = faulty_datagram("eat", [[
      local t = {}
      for i = 1, 16384 do t[i] = string.rep("x", 4096) .. i end
      return "survived " .. #t]]),
    args = { "--lua-mem", "8m" }, opts = { mem = 8 * 1024 * 1024 },
    steps = {
      { u = "x", datagram = "eat", reply = false },
      { u = "x", datagram = "next", reply = "NEXT" },
    },
    log = "error", log_has = { "not enough memory" } },

  { name = "on_datagram returning a number is an error",
    handler = faulty_datagram("num", "      return 42"),
    steps = {
      { u = "x", datagram = "num", reply = false },
      { u = "x", datagram = "next", reply = "NEXT" },
    },
    log = "error", log_has = { "handler returned a number (expected a string or nil)" } },

  { name = "a reply longer than the largest IPv4 datagram is an error; the largest is sent",
    handler = faulty_datagram("big", [[
      return ("x"):rep(65508)
    elseif data == "max" then
      return ("y"):rep(65507)]]),
    steps = {
      { u = "x", datagram = "big", reply = false },
      { u = "x", datagram = "max", reply = ("y"):rep(65507) },
    },
    log = "error", log_has = { "reply of 65508 bytes is longer than a datagram can be "
      .. "(at most 65507 bytes over IPv4)" } },

  { name = "over IPv6 the peer is '[::1]:PORT' and a reply may be 65527 bytes",
    handler = [[
return { on_datagram = function(peer, data)
  if data == "max" then return ("z"):rep(65527) end
  if data == "big" then return ("z"):rep(65528) end
  rec(peer, "from", peer:match("^%[::1%]:%d+$") and "[::1]" or peer, #data)
  return "ok"
end }
]],
    steps = {
      { u = "x", ipv6 = true, datagram = "hi", reply = "ok" },
      { u = "x", datagram = "max", reply = ("z"):rep(65527) },
      { u = "x", datagram = "big", reply = false },
    },
    records = { x = { "from [::1] 2" } },
    log = "error", log_has = { "reply of 65528 bytes is longer than a datagram can be "
      .. "(at most 65527 bytes over IPv6)" } },

  { name = "on_datagram may not wait: connect raises; echohost.log names no connection",
    handler = [[
local socket, log = require "echohost.socket", require "echohost.log"
return { on_datagram = function(_, data)
  log.info("datagram %s", data)
  if data == "up" then return tostring(socket.connect("127.0.0.1", 7)) end
  return data
end }
]],
    steps = {
      { u = "x", datagram = "hi", reply = "hi" },
      { u = "x", datagram = "up", reply = false },
    },
    log = "error", log_lines = { "info: handler FILE:4: datagram hi" },
    log_has = { "echohost.socket.connect would wait: only a coroutine of the connection "
      .. "(handle, conn:spawn) can wait" } },

  { name = "a swap reloads the datagram function and its modules",
    handler = 'local helper = require "helper"\n'
      .. "return { on_datagram = function(_, data) return helper.tag(data) end }\n",
    files = { ["helper.lua"] = helper_v1 },
    steps = {
      { u = "x", datagram = "a", reply = "v1:a" },
      { write = { ["helper.lua"] = helper_v2 }, reload = true },
      { u = "x", datagram = "b", reply = "v2:B" },
    } },
}

local INTERPRETERS = {
  { name = "the harness", run = contract.run_harness },
  { name = "the event server",
    run = function(sc, dir) return contract.run_server("event", sc, dir) end },
  { name = "the fork server",
    run = function(sc, dir) return contract.run_server("fork", sc, dir) end },
}

-- The log, shortened, for failure messages.
local function excerpt(text)
  text = text or ""
  if #text > 3000 then
    text = text:sub(1, 3000) .. "\n..."
  end
  return text
end

for _, sc in ipairs(scenarios) do
  describe(sc.name .. ":", function()
    local dir, observed = nil, {}
    setup(function() dir = util.tmpdir() end)
    teardown(function() util.rmdir(dir) end)
    after_each(util.cleanup)

    for _, interp in ipairs(INTERPRETERS) do
      it("it is so under " .. interp.name, function()
        local ok, obs, log = pcall(interp.run, sc, dir)
        if not ok then
          obs, log = { driver_error = tostring(obs) }, nil
        end
        observed[interp.name] = obs
        local want = contract.expected(sc, dir .. "/handler.lua")
        assert.same(want, obs, interp.name .. " differs from the expected result:\n"
          .. contract.diff(want, obs, "expected", "got") .. "\nits log:\n" .. excerpt(log))
      end)
    end

    it("it is the same under the three interpreters", function()
      local first = INTERPRETERS[1].name
      for _, interp in ipairs(INTERPRETERS) do
        assert(observed[interp.name], interp.name .. " was not run (filtered out?)")
      end
      for i = 2, #INTERPRETERS do
        local name = INTERPRETERS[i].name
        assert.same(observed[first], observed[name], first .. " and " .. name
          .. " disagree:\n" .. contract.diff(observed[first], observed[name], first, name))
      end
    end)
  end)
end
