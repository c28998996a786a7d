-- The original echo server: tcp_srv with echo_once on 127.0.0.1:8888.
--   echohost --script scripts/tcp_echo.lua [PORT [HOST]]
-- then: telnet 127.0.0.1 8888
local dir = arg and arg[0] and arg[0]:match("^(.*)/[^/]*$") or "."
package.path = dir .. "/../lua/?.lua;" .. dir .. "/../lua/?/init.lua;" .. package.path

local tcp_srv = require "echohost.tcp_srv"

local port = tonumber(arg[1] or "8888")
local host = arg[2] or "127.0.0.1"
local handler = dofile(dir .. "/echo_once.lua")

assert(tcp_srv.tcp_srv(host, port, handler, {
  on_listen = function(srv)
    local h, p = srv:sockname()
    io.stderr:write(("tcp_echo: listening on %s:%d\n"):format(h, p))
  end,
}))
