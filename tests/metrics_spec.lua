-- --metrics ADDR:PORT against a live server: the Prometheus text it serves
-- on GET /metrics (checked by promtool), figures that follow the traffic,
-- per worker slot and in total, and requests it refuses.
local server = require "helpers.server"
local util = require "helpers.util"
local socket = require "socket"

local q = server.quote

-- Starts a server with --metrics on a free port: the server and that port.
local function start(args, opts)
  local full = { "--metrics", "127.0.0.1:0" }
  for _, a in ipairs(args) do
    full[#full + 1] = a
  end
  local srv = server.start(full, opts)
  local port = srv:wait_log("metrics on http://127%.0%.0%.1:(%d+)/metrics", 5)
  assert(port, srv:log())
  return srv, tonumber(port)
end

local function connect(port)
  local c = assert(socket.tcp())
  c:settimeout(10)
  assert(c:connect("127.0.0.1", port))
  return c
end

-- Sends raw bytes, reads until the server closes: the whole reply, and
-- how the read ended ("closed", or "timeout" after 10 s).
local function raw(port, bytes)
  local c = connect(port)
  if bytes then
    c:send(bytes)
  end
  local got, err, partial = c:receive("*a")
  c:close()
  return got or partial, got and "closed" or err
end

-- A reply's status code, headers (lower-case names) and body.
local function parse_http(reply)
  local head, body = reply:match("^(.-)\r\n\r\n(.*)$")
  assert(head, "no head in: " .. reply:sub(1, 200))
  local code = tonumber(head:match("^HTTP/1%.1 (%d%d%d) "))
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+): ([^\r\n]*)") do
    headers[name:lower()] = value
  end
  return code, headers, body
end

-- GET /metrics: the samples by name with their labels
-- ('echohost_worker_up{worker="0"}'), and the text.
local function scrape(port)
  local reply = raw(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
  local code, headers, body = parse_http(reply)
  assert.equal(200, code, reply)
  assert.equal(#body, tonumber(headers["content-length"]))
  local samples = {}
  for line in body:gmatch("[^\n]+") do
    if not line:match("^#") then
      local key, value = line:match("^(%S+) (%S+)$")
      assert(key, "bad sample line: " .. line)
      samples[key] = tonumber(value)
    end
  end
  return samples, body, headers
end

local function wait_sample(port, key, want)
  return server.wait(function() return scrape(port)[key] == want end, 10)
end

local function exchange(port_or_srv, data)
  local c = port_or_srv:connect()
  local back = server.exchange(c, data)
  c:close()
  return back
end

describe("--metrics", function()
  after_each(function()
    server.stop_all()
  end)

  it("serves Prometheus text exposition that promtool accepts", function()
    local srv, port = start({ "--workers", "2", "--handler", "scripts/echo.lua" })
    assert.equal("ping", exchange(srv, "ping"))
    local samples, body, headers = scrape(port)
    assert.equal("text/plain; version=0.0.4; charset=utf-8", headers["content-type"])
    local file = util.write_tmp(body)
    local out, status = util.run("promtool check metrics < " .. q(file))
    os.remove(file)
    assert.equal("", out)
    assert.equal(0, status)
    -- every sample has its HELP and TYPE; counters end in _total
    for key in pairs(samples) do
      local name = key:match("^[%w_]+")
      local kind = body:match("\n?# TYPE " .. name .. " (%a+)\n")
      assert.truthy(body:find("# HELP " .. name .. " ", 1, true), name)
      assert.truthy(kind == "counter" or kind == "gauge", name)
      assert.equal(kind == "counter", name:match("_total$") ~= nil, name)
    end
    assert.equal(2, samples["echohost_workers"])
    assert.equal(1, samples['echohost_worker_up{worker="0"}'])
    assert.equal(1, samples['echohost_worker_up{worker="1"}'])
    assert.equal(1, samples["echohost_handler_version"])
  end)

  it("counts exactly what 3 connections sent, per worker and in total", function()
    local srv, port = start({ "--workers", "2" })
    local before = scrape(port)
    assert.equal(0, before["echohost_connections_accepted_total"])
    local sizes = { 1000, 2345, 70000 }
    for _, n in ipairs(sizes) do
      local data = server.pattern(n)
      assert.equal(data, exchange(srv, data))
    end
    assert.truthy(wait_sample(port, "echohost_connections_closed_total", 3))
    local s = scrape(port)
    assert.equal(3, s["echohost_connections_accepted_total"])
    assert.equal(0, s["echohost_connections_open"])
    assert.equal(1000 + 2345 + 70000, s["echohost_received_bytes_total"])
    assert.equal(1000 + 2345 + 70000, s["echohost_sent_bytes_total"])
    assert.equal(0, s["echohost_connections_rejected_total"])
    for _, fam in ipairs({ "connections_accepted_total", "connections_closed_total",
                           "received_bytes_total", "sent_bytes_total" }) do
      local sum = s['echohost_worker_' .. fam .. '{worker="0"}']
        + s['echohost_worker_' .. fam .. '{worker="1"}']
      assert.equal(s["echohost_" .. fam], sum, fam)
    end
    -- an open connection is a gauge that comes back down
    local c = srv:connect()
    assert.equal("x", server.exchange(c, "x"))
    assert.equal(1, scrape(port)["echohost_connections_open"])
    c:close()
    assert.truthy(wait_sample(port, "echohost_connections_open", 0))
  end)

  it("counts errors by kind: handler faults, resets, idle timeouts", function()
    local dir = util.tmpdir()
    finally(function() os.execute("rm -rf " .. q(dir)) end)
    local file = dir .. "/faulty.lua"
    util.spit(file, "return function(_, d)\n  if d == 'boom' then error('boom') end\n"
      .. "  return d\nend\n")
    local ctl = dir .. "/ctl.sock"
    local srv, port = start({ "--workers", "1", "--handler", file, "--idle-timeout", "0.3",
                              "--control", ctl })
    local c = srv:connect()
    c:send("boom")
    c:receive("*a")                                 -- the fault closes it
    c:close()
    c = srv:connect()
    assert.equal("hi", server.exchange(c, "hi"))
    c:setoption("linger", { on = true, timeout = 0 })
    c:close()                                       -- an RST
    c = srv:connect()
    assert.equal("hi", server.exchange(c, "hi"))
    c:settimeout(10)
    c:receive("*a")                                 -- closed when idle
    c:close()
    local key = 'echohost_connection_errors_total{kind="%s"}'
    assert.truthy(wait_sample(port, key:format("reset"), 1))
    local s = scrape(port)
    assert.equal(1, s[key:format("fault")])
    assert.equal(1, s[key:format("timeout")])
    assert.equal(0, s[key:format("socket")])
    assert.equal(1, s['echohost_worker_connection_errors_total{worker="0",kind="fault"}'])
    assert.equal(3, s["echohost_connections_closed_total"])
    -- stats() says the same: errors are socket errors, resets and faults
    local out = util.pipe(q(util.realpath(server.BIN)) .. " --repl --connect " .. q(ctl),
      "s = stats()\n=s.errors, s.faults, s.workers[1].timeouts\n")
    assert.equal("2\t1\t1\n", out)
  end)

  it("reports handler versions and reload results, the master's and each worker's", function()
    local dir = util.tmpdir()
    finally(function() os.execute("rm -rf " .. q(dir)) end)
    local file = dir .. "/h.lua"
    util.spit(file, "return function(_, d) return d end\n")
    local srv, port = start({ "--workers", "2", "--handler", file })
    local s = scrape(port)
    assert.equal(1, s["echohost_handler_version"])
    assert.equal(1, s['echohost_worker_handler_version{worker="1"}'])
    assert.equal(0, s["echohost_handler_reloads_total"])
    assert.truthy(srv:signal("HUP"))
    assert.truthy(server.wait(function()
      s = scrape(port)
      return s['echohost_worker_handler_version{worker="0"}'] == 2
        and s['echohost_worker_handler_version{worker="1"}'] == 2
    end, 10))
    assert.equal(2, s["echohost_handler_version"])
    assert.equal(1, s["echohost_handler_reloads_total"])
    assert.equal(1, s['echohost_worker_handler_reloads_total{worker="0"}'])
    util.spit(file, "return function(\n")
    assert.truthy(srv:signal("HUP"))
    assert.truthy(wait_sample(port, "echohost_handler_reload_failures_total", 1))
    s = scrape(port)
    assert.equal(2, s["echohost_handler_version"])   -- the old one stays
    assert.equal(2, s['echohost_worker_handler_version{worker="1"}'])
    assert.equal(0, s['echohost_worker_handler_reload_failures_total{worker="1"}'])
    assert.is_true(s['echohost_worker_lua_memory_bytes{worker="0"}'] > 0)
  end)

  it("keeps a slot's counters across a restart; its open connections count as closed",
    function()
      local srv, port = start({ "--workers", "1" })
      assert.equal("12345", exchange(srv, "12345"))
      local held = srv:connect()
      finally(function() held:close() end)
      assert.equal("abc", server.exchange(held, "abc"))
      local pid = assert(srv:wait_children(1, 5))[1]
      os.execute("kill -KILL " .. pid)
      assert.truthy(server.wait(function()
        local s = scrape(port)
        return s["echohost_workers_started_total"] == 2 and s["echohost_workers"] == 1
      end, 10))
      local s = scrape(port)
      assert.equal(2, s["echohost_connections_accepted_total"])
      assert.equal(2, s["echohost_connections_closed_total"])
      assert.equal(0, s["echohost_connections_open"])
      assert.equal(8, s['echohost_worker_received_bytes_total{worker="0"}'])
      assert.equal("again", exchange(srv, "again"))
      assert.truthy(wait_sample(port, "echohost_connections_closed_total", 3))
      assert.equal(13, scrape(port)["echohost_received_bytes_total"])
    end)

  it("answers HEAD, 404 for other paths and 405 for other methods", function()
    local _, port = start({ "--workers", "1" })
    local code, headers, body = parse_http(raw(port, "HEAD /metrics HTTP/1.0\r\n\r\n"))
    assert.equal(200, code)
    assert.is_true(tonumber(headers["content-length"]) > 0)
    assert.equal("", body)
    code, headers = parse_http(raw(port, "GET /metrics?x=1 HTTP/1.1\n\n"))
    assert.equal(200, code)
    assert.equal("close", headers["connection"])
    code = parse_http(raw(port, "GET / HTTP/1.1\r\n\r\n"))
    assert.equal(404, code)
    code = parse_http(raw(port, "GET /metricsx HTTP/1.1\r\n\r\n"))
    assert.equal(404, code)
    code, headers = parse_http(raw(port, "POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"))
    assert.equal(405, code)
    assert.equal("GET, HEAD", headers["allow"])
    code = parse_http(raw(port, "DELETE /metrics HTTP/1.1\r\n\r\n"))
    assert.equal(405, code)
  end)

  it("serves 4 scrapers at once: one more gets a 503", function()
    local _, port = start({ "--workers", "1" })
    local idle = {}
    for i = 1, 4 do                     -- accepted in order: they take the 4
      idle[i] = connect(port)
    end
    finally(function() for _, c in ipairs(idle) do c:close() end end)
    local reply, how = raw(port)
    assert.equal(503, (parse_http(reply)))
    assert.equal("closed", how)
    for _, c in ipairs(idle) do
      c:close()
    end
    assert.truthy(server.wait(function()
      local ok, s = pcall(scrape, port)
      return ok and s["echohost_workers"] == 1
    end, 5))
  end)

  it("closes garbage, oversized and slow requests without disturbing the server", function()
    local srv, port = start({ "--workers", "1" })
    -- garbage: refused as soon as it cannot be a request line
    local reply, how = raw(port, "\22\3\1\0\255 binary")
    assert.equal(400, (parse_http(reply)))
    assert.equal("closed", how)
    for _, bad in ipairs({ "GET /metrics\r\n\r\n", "GET /metrics HTTP/2.0\r\n\r\n",
                           "GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
                           "get /metrics HTTP/1.1\r\n\r\n", "\r\n\r\n",
                           "GET /metrics HTTP/1.1\0\r\n\r\n" }) do
      assert.equal(400, (parse_http(raw(port, bad))), bad)
    end
    -- oversized: a head past 4 KiB
    reply, how = raw(port, "GET /metrics HTTP/1.1\r\nX-Big: " .. ("a"):rep(20000) .. "\r\n\r\n")
    assert.equal(431, (parse_http(reply)))
    assert.equal("closed", how)
    -- slowloris: half a request line, then nothing; a scrape and the echo
    -- go on meanwhile, and the slow one is closed at its deadline
    local slow = connect(port)
    finally(function() slow:close() end)
    slow:send("GET /metr")
    assert.equal(1, scrape(port)["echohost_workers"])
    assert.equal("still echo", exchange(srv, "still echo"))
    local got, err, partial = slow:receive("*a")
    slow:close()
    assert.equal("closed", got and "closed" or err)
    assert.equal(408, (parse_http(got or partial)))
    assert.equal("ok", exchange(srv, "ok"))
    assert.equal(1, scrape(port)["echohost_workers"])
    assert.equal(0, srv:stop())
  end)

  it("is refused with the fork model, and a taken port stops the start", function()
    local code, err = server.run({ "--model", "fork", "--metrics", "127.0.0.1:0" }, 5)
    assert.equal(2, code)
    assert.truthy(err:find("--metrics needs --model event", 1, true), err)
    code, err = server.run({ "--metrics", "nowhere" }, 5)
    assert.equal(2, code)
    assert.truthy(err:find("bad --metrics 'nowhere' (want ADDR:PORT)", 1, true), err)
    local _, port = start({ "--workers", "1" })
    code, err = server.run({ "--listen", "127.0.0.1:0", "--workers", "1",
                             "--metrics", "127.0.0.1:" .. port }, 5)
    assert.equal(1, code)
    assert.truthy(err:find("--metrics: bind 127.0.0.1:" .. port .. ": Address already in use",
      1, true), err)
    assert.falsy(err:find("listening on", 1, true), err)
  end)
end)
