-- RFC 862 echo as a handler: every byte a client sends comes back.
return function(_, data)
  return data
end
