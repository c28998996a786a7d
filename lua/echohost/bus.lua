-- The message bus of the Lua interpreters: the twin of src/bus.c and
-- src/lpubsub.c (README "Publish and subscribe") for echohost.harness,
-- without shared memory. A bus has a capacity (which sets the longest
-- message, as --pubsub-size does) and the subscriptions of every
-- connection using it; publish hands each message to those subscribed
-- now, through the interpreter's deliver function, which must run it
-- later (never inside publish). It never loses a message: there is no
-- ring to overrun.
--
--   local bus = require("echohost.bus").new(1024 * 1024)
--   local pubsub = bus:module()           -- what require("echohost.pubsub") gives
--   bus:subscribe(rec)                    -- rec.channel, rec.deliver(message, channel)
--   bus:unsubscribe(rec)
local M = {}

M.SIZE = 1024 * 1024                -- the server's --pubsub-size default
M.MIN, M.MAX = 4 * 1024, 1024 * 1024 * 1024
M.CHANNEL_MAX = 250                 -- bytes
M.MESSAGE_MAX = 64 * 1024           -- bytes, and at most a quarter of the ring

local REC_HDR = 16                  -- bus.c's record header

-- The longest message of a ring of capacity bytes (bus_message_max).
function M.message_max(capacity)
  capacity = (capacity + 7) // 8 * 8
  return math.min(capacity // 4 - REC_HDR - M.CHANNEL_MAX, M.MESSAGE_MAX)
end

-- Whether ch is a channel name (a string of 1..250 bytes).
function M.is_channel(ch)
  return type(ch) == "string" and #ch >= 1 and #ch <= M.CHANNEL_MAX
end

local Bus = {}
Bus.__index = Bus

function M.new(capacity)
  capacity = capacity or M.SIZE
  if math.type(capacity) ~= "integer" or capacity < M.MIN or capacity > M.MAX then
    error(("bad argument #1 to 'bus' (a size of 4k..1g expected, got %s)"):format(
      tostring(capacity)), 2)
  end
  return setmetatable({ capacity = capacity, max = M.message_max(capacity), channels = {} },
                      Bus)
end

function Bus:subscribe(rec)
  local list = self.channels[rec.channel]
  if not list then
    list = {}
    self.channels[rec.channel] = list
  end
  list[#list + 1] = rec
end

function Bus:unsubscribe(rec)
  local list = self.channels[rec.channel] or {}
  for i, r in ipairs(list) do
    if r == rec then
      table.remove(list, i)
      break
    end
  end
  if #list == 0 then
    self.channels[rec.channel] = nil
  end
end

function Bus:publish(ch, msg)
  if not M.is_channel(ch) then
    error("bad argument #1 to 'publish' (channel of 1..250 bytes expected)", 3)
  elseif type(msg) ~= "string" then
    error(("bad argument #2 to 'publish' (string expected, got %s)"):format(type(msg)), 3)
  elseif #msg > self.max then
    error(("message too large (at most %d bytes)"):format(self.max), 3)
  end
  local list = self.channels[ch]
  if list then
    for _, rec in ipairs(table.move(list, 1, #list, 1, {})) do
      rec.deliver(msg, ch)
    end
  end
  return true
end

-- The echohost.pubsub of the handlers using this bus.
function Bus:module()
  if not self.mod then
    self.mod = {
      publish = function(ch, msg) return self:publish(ch, msg) end,
      message_max = function() return self.max end,
    }
  end
  return self.mod
end

return M
