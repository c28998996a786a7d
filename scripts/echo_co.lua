-- RFC 862 echo in direct style: a loop of recv and send, until the client
-- closes. Under the event loop this runs as a coroutine per connection.
return {
  handle = function(conn)
    while true do
      local data = conn:recv()
      if not data then
        break
      end
      conn:send(data)
    end
    conn:close()
  end,
}
