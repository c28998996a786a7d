-- A chat: every line a client sends goes to every client of the server, on
-- every worker (echohost.pubsub), its sender included. A client that reads
-- slowly gets its lines through a queue of at most QUEUE_MAX lines written
-- by a coroutine that waits on backpressure: past that the oldest lines
-- are dropped (counted in conn.state.dropped), so a client that never
-- reads costs the server a bounded amount of memory.
--
--   echohost --handler scripts/chat.lua --workers 2
--   nc 127.0.0.1 8888        (in two terminals)
local pubsub = require "echohost.pubsub"

local CHANNEL = "chat"
local QUEUE_MAX = 256               -- lines waiting for a slow client

-- Writes the queued lines until none is left (a coroutine of the conn).
local function flush(conn)
  local st = conn.state
  while st.first <= st.last do
    local line = st.queue[st.first]
    st.queue[st.first] = nil
    st.first = st.first + 1
    if not conn:send(line) then
      break
    end
  end
  st.writing = false
end

local function on_message(conn, line)
  local st = conn.state
  st.last = st.last + 1
  st.queue[st.last] = line
  if st.last - st.first + 1 > QUEUE_MAX then
    st.queue[st.first] = nil
    st.first = st.first + 1
    st.dropped = st.dropped + 1
  end
  if not st.writing then
    st.writing = true
    conn:spawn(flush, conn)
  end
end

local function handle(conn)
  local st = conn.state
  st.queue, st.first, st.last, st.dropped = {}, 1, 0, 0
  conn:subscribe(CHANNEL, on_message)
  while true do
    local line, err = conn:receive("*l")
    if not line and err ~= "too long" then
      break
    end
    pubsub.publish(CHANNEL, (line or "(line too long)") .. "\n")
    if not line then
      conn:recv()                   -- drop the long line's bytes
    end
  end
end

return { handle = handle }
