-- Line protocol: each complete line comes back; a partial line waits in
-- conn.state until its newline arrives; a line over MAX bytes is refused.
local MAX = 1024

local function too_long(conn)
  conn:send(("error: line too long (max %d bytes)\n"):format(MAX))
  conn:close()
end

return function(conn, data)
  local buf = (conn.state.buf or "") .. data
  local out, start = {}, 1
  while true do
    local nl = buf:find("\n", start, true)
    if not nl then
      break
    end
    if nl - start > MAX then
      return too_long(conn)
    end
    out[#out + 1] = buf:sub(start, nl)
    start = nl + 1
  end
  conn.state.buf = buf:sub(start)
  if #conn.state.buf > MAX then
    return too_long(conn)
  end
  return table.concat(out)
end
