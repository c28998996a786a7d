-- Per-message echo handler for `make bench`: called with each chunk read,
-- returns the reply.
return function(conn, data) -- luacheck: no unused args
  return data
end
