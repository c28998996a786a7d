-- A tiny key-value protocol, one command per line, one store per connection:
--   SET key value  -> OK        GET key -> the value, or NIL
--   DEL key        -> OK        anything else -> ERR unknown command
local function command(store, line)
  local op, key, value = line:match("^(%u+)%s+(%S+)%s*(.*)$")
  if op == "SET" then
    store[key] = value
    return "OK"
  elseif op == "GET" then
    return store[key] or "NIL"
  elseif op == "DEL" then
    store[key] = nil
    return "OK"
  end
  return "ERR unknown command"
end

return {
  on_open = function(conn)
    conn.state.store, conn.state.buf = {}, ""
  end,

  on_data = function(conn, data)
    local st = conn.state
    st.store = st.store or {}
    local buf, out = (st.buf or "") .. data, {}
    for line in buf:gmatch("([^\n]*)\n") do
      out[#out + 1] = command(st.store, (line:gsub("\r$", ""))) .. "\n"
    end
    st.buf = buf:match("[^\n]*$")
    return table.concat(out)
  end,

  on_close = function(conn)
    conn.state.store = nil
  end,
}
