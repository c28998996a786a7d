-- Echo after a delay: each line comes back `delay` seconds later (plus up to
-- `jitter` more), in order. A direct-style handler: while one connection
-- sleeps, the worker serves the others.
--   echohost --handler scripts/delay.lua --set delay=0.5 --set jitter=0.2
local settings = require "echohost.settings"

local delay = tonumber(settings.delay) or 0.1
local jitter = tonumber(settings.jitter) or 0

return {
  handle = function(conn)
    while true do
      local line, err, _, partial = conn:receive("*l")
      if not line then
        if err == "closed" and partial ~= "" then
          conn:sleep(delay)
          conn:send(partial)      -- a last line without its newline
        end
        return
      end
      conn:sleep(delay + jitter * math.random())
      conn:send(line .. "\n")
    end
  end,
}
