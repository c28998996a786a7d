-- A TCP proxy: every client gets its own connection to the upstream, and
-- bytes flow both ways at once, with half-close and backpressure kept.
--
--   echohost --handler scripts/proxy.lua --set upstream=127.0.0.1:7000
--
-- settings: upstream = HOST:PORT (or [v6]:PORT), connect_timeout = seconds
-- (default 5), copy = lua (copy in a Lua loop instead of conn:pipe). A
-- client whose upstream cannot be reached is closed, and the reason is
-- logged at warn.
local socket = require "echohost.socket"
local settings = require "echohost.settings"
local log = require "echohost.log"

local target = settings.upstream or "127.0.0.1:7"
local host, port = target:match("^%[(.+)%]:(%d+)$")
if not host then
  host, port = target:match("^(.+):(%d+)$")
end
assert(host, "upstream=HOST:PORT expected, got " .. target)
port = tonumber(port)
local connect_timeout = tonumber(settings.connect_timeout or "5")

-- conn:pipe moves the bytes in C and passes the end on (EOF as a
-- half-close, a reset as a reset). copy=lua does the same in a Lua loop, a
-- chunk at a time: the place to look at or change the bytes.
local function pump(from, to)
  while true do
    local data, _, code = from:recv()
    if not data then
      if code == 104 then
        to:reset()
      else
        to:shutdown("send")
      end
      return
    end
    if not to:send(data) then
      from:reset()
      return
    end
  end
end

local function pipe(from, to)
  from:pipe(to)
end

local copy = settings.copy == "lua" and pump or pipe

return {
  handle = function(conn)
    local up, err = socket.connect(host, port, connect_timeout)
    if not up then
      if err ~= "closed" then   -- "closed": the client went away meanwhile
        log.warn("%s: upstream %s: %s", conn.peer, target, err)
      end
      return
    end
    conn:spawn(copy, up, conn)
    copy(conn, up)
  end,
}
