-- Direct-style (coroutine) echo handler for `make bench`: conn:recv() parks the
-- connection's coroutine until data arrives.
return {
  handle = function(conn)
    while true do
      local d = conn:recv()
      if not d then break end
      conn:send(d)
    end
    conn:close()
  end,
}
