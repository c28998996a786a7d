-- HAProxy Lua TCP service for `make bench`: a C event loop calling Lua, the
-- closest design to echohost. HAProxy 2.6's AppletTCP:receive(n) returns only
-- once n bytes have arrived (without n: only at the end of the stream), so the
-- service reads the benchmark's message size, given in BENCH_MSG_SIZE.
-- luacheck: globals core
local size = tonumber(os.getenv("BENCH_MSG_SIZE")) or 1

core.register_service("echo", "tcp", function(applet)
  while true do
    local data = applet:receive(size)
    if not data or data == "" then break end
    applet:send(data)
  end
end)
