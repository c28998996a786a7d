-- The original echo_handler: receive once, send it back, close.
return {
  handle = function(conn)
    local msg = conn:recv()
    if msg then
      conn:send(msg)
    end
    conn:close()
  end,
}
