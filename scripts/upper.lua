-- Echo in upper case.
return function(_, data)
  return data:upper()
end
