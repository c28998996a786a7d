std = "lua54"
max_line_length = 100
files["tests/"] = { std = "+busted" }
exclude_files = { "tests/lua-5.4.4-tests/**" }   -- Lua 5.4.4's own test suite, unchanged
