-- Benchmark driver (`make bench`, `make bench-quick`): runs echohost-bench
-- against refecho, the echohost variants and the peers, each on a free
-- loopback port with client and server on different cores; writes
-- BUILD/bench/results.md, results.json and chart.png, and copies the table and
-- the chart into tests/bench/results/ (generated output, kept in git so the
-- README can show the latest run). The peers' files are in tests/bench/peers/.
--   lua5.4 tests/bench/bench.lua --build build [--quick] [--runs N] [--only a,b]
local socket = require "socket"

local opts = { build = "build", runs = 16, quick = false }
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--build" then opts.build = arg[i + 1]; i = i + 1
    elseif a == "--quick" then opts.quick = true; opts.runs = 4
    elseif a == "--runs" then opts.runs = tonumber(arg[i + 1]); i = i + 1
    elseif a == "--only" then opts.only = arg[i + 1]; i = i + 1
    else io.stderr:write("bench.lua: unknown argument ", a, "\n"); os.exit(2) end
    i = i + 1
  end
end

local ROOT = io.popen("pwd"):read("l")
local BUILD = opts.build:sub(1, 1) == "/" and opts.build or ROOT .. "/" .. opts.build
local OUT = BUILD .. "/bench"
local SCRIPTS = ROOT .. "/tests/bench/peers"
local RESULTS = ROOT .. "/tests/bench/results"
local BENCH = BUILD .. "/echohost-bench"
local ECHOHOST = BUILD .. "/echohost"
local WARMUP = opts.quick and 0.05 or 0.05
local DURATION = opts.quick and 0.2 or 0.3
local IDLE_CONNS = 10000
local NOISY, RETRIES = 0.3, 2
local retry_budget = opts.quick and 15 or 60   -- seconds of repeated runs, in all

-- --- small helpers ----------------------------------------------------------

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function capture(cmd)
  local f = io.popen(cmd)
  local out = f:read("a")
  f:close()
  return (out:gsub("%s+$", ""))
end

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

local function read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function have(cmd)
  return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == true
end

local function log(fmt, ...)
  io.stderr:write(string.format(fmt, ...), "\n")
end

local function fmt(x, f)
  if not x then return "–" end
  return string.format(f or "%.2f", x)
end

local function median(xs)
  local t = {}
  for _, x in ipairs(xs) do t[#t + 1] = x end
  if #t == 0 then return nil end
  table.sort(t)
  local m = (#t + 1) // 2
  if #t % 2 == 1 then return t[m] end
  return (t[m] + t[m + 1]) / 2
end

-- A flat JSON object as printed by echohost-bench.
local function parse_json_line(line)
  local t = {}
  for k, v in line:gmatch('"([%w_]+)":("?[^,}"]*"?)') do
    if v:sub(1, 1) == '"' then t[k] = v:sub(2, -2)
    elseif v ~= "null" then t[k] = tonumber(v) end
  end
  return t
end

local function json_encode(v, indent)
  indent = indent or ""
  local ty = type(v)
  if ty == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return math.type(v) == "integer" and tostring(v) or string.format("%.6g", v)
  elseif ty == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
    end) .. '"'
  elseif ty == "boolean" then return tostring(v)
  elseif ty ~= "table" then return "null" end
  local inner, parts = indent .. "  ", {}
  if #v > 0 or next(v) == nil then
    for _, x in ipairs(v) do parts[#parts + 1] = inner .. json_encode(x, inner) end
    return "[\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    parts[#parts + 1] = inner .. json_encode(k) .. ": " .. json_encode(v[k], inner)
  end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

-- --- processes --------------------------------------------------------------

local CLIENT_CPU, SERVER_CPU = "0", "1"
do
  local n = tonumber(capture("nproc")) or 1
  if n < 2 then CLIENT_CPU, SERVER_CPU = nil, nil end
end

local function pinned(cpu, cmd)
  if cpu and have("taskset") then return "taskset -c " .. cpu .. " " .. cmd end
  return cmd
end

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %b() [ZX]")
end

-- Starts CMD in the background (env: a string of VAR=value words), output
-- to LOGFILE; returns its pid.
local function spawn(cmd, env, logfile, cpu)
  local line = string.format("(ulimit -n $(ulimit -Hn) 2>/dev/null; %s exec %s) "
    .. ">%s 2>&1 </dev/null & echo $!", env or "", pinned(cpu or SERVER_CPU, cmd),
    sh_quote(logfile))
  return tonumber(capture(line))
end

local function stop(pid)
  if not pid then return end
  os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  local deadline = socket.gettime() + 3
  while alive(pid) and socket.gettime() < deadline do socket.sleep(0.02) end
  if alive(pid) then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
end

local function can_connect(port)
  local c = socket.tcp()
  c:settimeout(0.2)
  local ok = c:connect("127.0.0.1", port)
  c:close()
  return ok ~= nil
end

-- A UDP echo answers a datagram (sent again, bounded, as UDP may drop).
local function can_echo_udp(port)
  local u = socket.udp()
  u:settimeout(0.05)
  local ok = false
  for _ = 1, 4 do
    u:sendto("ready?", "127.0.0.1", port)
    if u:receive() == "ready?" then ok = true break end
  end
  u:close()
  return ok
end

-- Waits (bounded) until the server is up: its port is read from its log
-- ("listening on ADDR:PORT") unless it was given one; returns the port or
-- nil, reason.
local function wait_ready(pid, logfile, port, udp)
  local deadline = socket.gettime() + 8
  while socket.gettime() < deadline do
    if not alive(pid) then
      return nil, "exited: " .. (read_file(logfile) or ""):sub(1, 300)
    end
    if not port then
      local text = read_file(logfile) or ""
      port = tonumber(text:match("listening on [^%s]-:(%d+)"))
    end
    if port and (udp and can_echo_udp or can_connect)(port) then return port end
    socket.sleep(0.05)
  end
  return nil, "not ready after 8 s: " .. (read_file(logfile) or ""):sub(1, 300)
end

-- --- servers ----------------------------------------------------------------

-- The handlers measured are the shipped ones: scripts/echo.lua (per message)
-- and scripts/echo_co.lua (direct style, a coroutine per connection).
local lua_handler = ROOT .. "/scripts/echo.lua"

local function echohost(args)
  return function(_, cfg)
    if cfg and cfg.udp then       -- C echo on a UDP listener, no rate cap
      return ECHOHOST .. " --workers 1 --listen udp://127.0.0.1:0 --udp-rate 0 "
        .. "--drain-timeout 1 " .. args
    end
    return ECHOHOST .. " --workers 1 --listen 127.0.0.1:0 --max-conns 20000 "
      .. "--idle-timeout 0 --drain-timeout 1 " .. args
  end
end

-- The proxies forward to one backend, a C echo started once for the whole
-- run (pinned with the client: both proxies pay for it alike).
local backend = {}

local function proxy_lua(copy)
  return function()
    return ECHOHOST .. " --workers 1 --listen 127.0.0.1:0 --max-conns 20000 --idle-timeout 0 "
      .. "--drain-timeout 1 --handler " .. ROOT .. "/scripts/proxy.lua --set upstream=127.0.0.1:"
      .. backend.port .. (copy and " --set copy=" .. copy or "")
  end
end

-- name: key; title: table row; cmd(port, cfg): command line (port given only
-- when fixed_port); available(): nil or the reason it cannot run; configs:
-- the only configurations it runs (default: all TCP ones, and the UDP ones
-- with udp); proxy: behind it is the backend.
local SERVERS = {
  { name = "refecho", title = "refecho (reference)", udp = true,
    cmd = function(_, cfg)
      return BUILD .. "/refecho" .. (cfg and cfg.udp and " udp://127.0.0.1:0" or "")
    end,
    available = function() return not exists(BUILD .. "/refecho") and "not built" or nil end },
  -- refecho's variants: none may beat the reference anywhere (the report
  -- flags each run where one does)
  { name = "ref_aa", title = "refecho again (A/A: the noise)", variant = "" },
  { name = "ref_lt", title = "refecho -l (level-triggered)", variant = "-l" },
  { name = "ref_wait", title = "refecho -w (first read after epoll)", variant = "-w" },
  { name = "ref_defer", title = "refecho -d (TCP_DEFER_ACCEPT)", variant = "-d" },
  { name = "ref_one", title = "refecho -1 (one accept per wake-up)", variant = "-1" },
  { name = "ref_cpu", title = "refecho -c (SO_INCOMING_CPU)", variant = "-c" },
  -- spins: more CPU per message, fewer sleeps and wake-ups (each a trip
  -- through the hypervisor on a VM); what HAProxy gains on connrate 16 by
  -- being busier
  { name = "ref_spin", title = "refecho -s 200 (busy-poll 200 µs before sleeping)",
    variant = "-s 200", polls = true },
  -- the floor of the other design: a process per connection, nothing else
  -- (blocking accept, fork, the child echoes, the kernel reaps it)
  { name = "ref_fork", title = "refecho -f (fork per connection)", variant = "-f" },
  { name = "c_echo", title = "echohost C echo",
    cmd = echohost(""), echohost = true, udp = true },
  -- against refecho -s 200: the same polling
  { name = "c_spin", title = "echohost C echo --busy-poll 200",
    cmd = echohost("--busy-poll 200"), echohost = true, polls = true },
  { name = "lua_fn", title = "echohost Lua per-message",
    cmd = echohost("--handler " .. lua_handler), echohost = true },
  { name = "lua_co", title = "echohost Lua coroutine",
    cmd = echohost("--handler " .. ROOT .. "/scripts/echo_co.lua"), echohost = true },
  { name = "fork", title = "echohost --model fork",
    cmd = echohost("--model fork"), echohost = true },
  { name = "socat", title = "socat fork", fixed_port = true, tool = "socat",
    cmd = function(port)
      return "socat TCP4-LISTEN:" .. port .. ",bind=127.0.0.1,fork,reuseaddr,backlog=4096 PIPE"
    end },
  { name = "python", title = "Python asyncio", tool = "/usr/bin/python3",
    cmd = function() return "/usr/bin/python3 " .. SCRIPTS .. "/pyecho.py" end },
  { name = "node", title = "Node net", tool = "node",
    cmd = function() return "node " .. SCRIPTS .. "/nodeecho.js" end },
  { name = "haproxy", title = "HAProxy Lua service", fixed_port = true, tool = "haproxy",
    cmd = function() return "haproxy -db -f " .. SCRIPTS .. "/haproxy.cfg" end,
    env = function(port, cfg)
      return string.format("BENCH_PORT=%d BENCH_DIR=%s BENCH_MSG_SIZE=%d",
        port, sh_quote(SCRIPTS), cfg.size)
    end },
  { name = "proxy_lua", title = "echohost scripts/proxy.lua → C echo", cmd = proxy_lua(),
    echohost = true, proxy = true, configs = { rr50 = true, stream = true } },
  -- the same proxy copying in a Lua loop: what Lua costs per message there
  { name = "proxy_loop", title = "echohost scripts/proxy.lua copy=lua → C echo",
    cmd = proxy_lua("lua"), echohost = true, proxy = true,
    configs = { rr50 = true, stream = true } },
  { name = "haproxy_tcp", title = "HAProxy TCP proxy → C echo", fixed_port = true,
    tool = "haproxy", proxy = true, configs = { rr50 = true, stream = true },
    cmd = function() return "haproxy -db -f " .. SCRIPTS .. "/haproxy_tcp.cfg" end,
    env = function(port)
      return string.format("BENCH_PORT=%d BENCH_UPSTREAM=127.0.0.1:%d", port, backend.port)
    end },
}

for _, s in ipairs(SERVERS) do
  if s.variant then
    s.cmd = function() return BUILD .. "/refecho " .. s.variant end
    s.available = function() return not exists(BUILD .. "/refecho") and "not built" or nil end
  end
end

local function server_missing(s)
  if s.available then return s.available() end
  if s.echohost and not exists(ECHOHOST) then return "build/echohost not built" end
  if s.tool and not (exists(s.tool) or have(s.tool)) then return s.tool .. " not installed" end
  return nil
end

local CONFIGS = {
  { name = "rr1", title = "rr 1×64 B", mode = "rr", conns = 1, size = 64 },
  { name = "rr50", title = "rr 50×1 KiB", mode = "rr", conns = 50, size = 1024 },
  { name = "stream", title = "stream 50×16 KiB", mode = "stream", conns = 50, size = 16384,
    metric = "mb_per_s", unit = "MB/s" },
  -- closed with RST: TIME_WAIT sockets left by one run would slow the
  -- connect()s of the runs after it (the kernel's port search)
  { name = "connrate", title = "connrate 16×64 B", mode = "connrate", conns = 16, size = 64,
    unit = "conn/s", rst = true },
  -- one client: the latency of one accept-to-close, nothing to batch
  { name = "connrate1", title = "connrate 1×64 B", mode = "connrate", conns = 1, size = 64,
    unit = "conn/s", rst = true },
  -- 16 UDP sockets, 4 datagrams in flight each: datagrams/s
  { name = "udp", title = "udp 16×4×64 B", mode = "udp", conns = 16, size = 64, window = 4,
    unit = "dgram/s", udp = true },
}
local IDLE_CFG = { name = "idle", mode = "idle", conns = IDLE_CONNS, size = 64 }
local MEMORY_SERVERS = { refecho = true, c_echo = true, lua_fn = true, lua_co = true }

local function start_server(s, cfg)
  local port = s.fixed_port and free_port() or nil
  local logfile = string.format("%s/%s-%s.log", OUT, s.name, cfg.name)
  local env = s.env and s.env(port, cfg) or ""
  local pid = spawn(s.cmd(port, cfg), env, logfile)
  if not pid then return nil, "spawn failed" end
  local got, err = wait_ready(pid, logfile, port, cfg.udp)
  if not got then
    stop(pid)
    return nil, err
  end
  return pid, got
end

-- One client run; returns the parsed JSON line, or nil, reason.
local function run_client(cfg, pid, port, label)
  local d = cfg.mode == "idle" and 60 or DURATION
  local cmd = string.format("timeout -k 2 %d %s -m %s -c %d -s %d -d %g -W %g -p %d -l %s "
    .. "%s%s127.0.0.1:%d 2>>%s", math.ceil(d + WARMUP + 25), pinned(CLIENT_CPU, BENCH), cfg.mode,
    cfg.conns, cfg.size, d, WARMUP, pid, sh_quote(label), cfg.rst and "--rst " or "",
    cfg.window and ("-w " .. cfg.window .. " ") or "", port, sh_quote(OUT .. "/client.log"))
  local f = io.popen(cmd)
  local line = f:read("a")
  local _, _, code = f:close()
  local r = parse_json_line(line)
  if not r.mode then return nil, "no result (exit " .. tostring(code) .. ")" end
  r.exit = code
  return r
end

-- --- the measurement --------------------------------------------------------

-- runs[server][config]: every run, in order; seq[config][round]: the order
-- in which servers ran, so each run is compared with the refecho runs next
-- to it (interference on a shared machine drifts over minutes).
local results = { runs = {}, seq = {}, skipped = {}, failed = {}, mismatches = 0 }

local function selected(s)
  if not opts.only then return true end
  return s.name == "refecho" or (("," .. opts.only .. ","):find("," .. s.name .. ",", 1, true))
end

local function record(sname, cname, round, r)
  results.runs[sname] = results.runs[sname] or {}
  results.runs[sname][cname] = results.runs[sname][cname] or {}
  table.insert(results.runs[sname][cname], r)
  results.seq[cname] = results.seq[cname] or {}
  results.seq[cname][round] = results.seq[cname][round] or {}
  table.insert(results.seq[cname][round], { server = sname, run = r })
  r.round = round
end

-- Share of a CPU that other processes took during run r.
local function noise_of(r)
  return r.other_cpu_s and r.duration_s > 0 and r.other_cpu_s / r.duration_s or 0
end

-- Starts s for cfg (a second attempt a second later: the binary may be
-- being relinked by a parallel make); returns { pid, port } or nil.
local function start_up(s, cfg)
  local pid, port = start_server(s, cfg)
  if not pid then
    socket.sleep(1)
    pid, port = start_server(s, cfg)
  end
  if pid then return { pid = pid, port = port } end
  log("  %-8s %-9s not run: %s", s.name, cfg.name, port)
  local why = port:gsub("%s+", " "):sub(1, 120)
  local fails = results.failed[s.name] or { n = 0, why = why }
  fails.n = fails.n + 1
  results.failed[s.name] = fails
  return nil
end

local function runs_on(s, cfg)
  if s.configs and not s.configs[cfg.name] then return false end
  return not cfg.udp or s.udp
end

local function show(s, cfg, r)
  if cfg.mode == "idle" then
    log("  %-8s %-9s %6.0f B/conn  (%d conns, %d errors)", s.name, cfg.name,
      r.rss_per_conn_b or -1, r.msgs or 0, r.errors or 0)
  else
    log("  %-8s %-9s %10.1f msg/s %9.1f MB/s  p50 %7.1f µs  cpu %s µs/msg  err %d mism %d%s",
      s.name, cfg.name, r.msgs_per_s, r.mb_per_s, r.p50_us,
      r.server_cpu_us_per_msg and string.format("%.2f", r.server_cpu_us_per_msg) or "-",
      r.errors, r.mismatches, r.lost and string.format(" lost %d", r.lost) or "")
  end
end

-- One run of the client against s (up: its pid and port); a run during
-- which other processes took more than NOISY of a CPU is repeated (at most
-- RETRIES times, within the time budget) and the quietest attempt kept.
local function measure(s, cfg, round, up)
  local label = s.name .. "/" .. cfg.name
  local r, err = run_client(cfg, up.pid, up.port, label)
  local tries = 0
  while r and cfg.mode ~= "idle" and noise_of(r) > NOISY and tries < RETRIES
      and retry_budget > 0 do
    tries = tries + 1
    log("  %-8s %-9s noisy (others took %.0f %% of a CPU): again", s.name, cfg.name,
      100 * noise_of(r))
    local t = socket.gettime()
    local again = run_client(cfg, up.pid, up.port, label)
    retry_budget = retry_budget - (socket.gettime() - t)
    if again and noise_of(again) < noise_of(r) then r = again end
  end
  if not r then
    log("  %-8s %-9s failed: %s", s.name, cfg.name, err)
    if not alive(up.pid) then up.dead = true end
    return
  end
  if (r.mismatches or 0) > 0 then results.mismatches = results.mismatches + r.mismatches end
  show(s, cfg, r)
  record(s.name, cfg.name, round, r)
end

-- One configuration: every server starts once and stays up while the
-- client runs against each in turn, round after round, refecho between
-- every two. Short runs and many rounds: what drifts over seconds on a
-- shared machine (the hypervisor, the other tenants) falls alike on the
-- runs beside each other, and no run pays for a server's start. Each server
-- gets one warm-up run first, not recorded.
local function run_config(cfg, order)
  local up = {}
  for _, s in ipairs(order) do
    if not up[s] and runs_on(s, cfg) then
      up[s] = start_up(s, cfg) or false
      if up[s] then run_client(cfg, up[s].pid, up[s].port, s.name .. "/warm-up") end
    end
  end
  for round = 1, opts.runs do
    for _, s in ipairs(order) do
      if up[s] and not up[s].dead then measure(s, cfg, round, up[s]) end
    end
  end
  for _, u in pairs(up) do
    if u then stop(u.pid) end
  end
end

local function run_all()
  os.execute("mkdir -p " .. sh_quote(OUT))
  os.remove(OUT .. "/client.log")
  local servers = {}
  for _, s in ipairs(SERVERS) do
    local why = server_missing(s)
    if not selected(s) then
      log("not selected: %s", s.name)
    elseif why then
      results.skipped[s.name] = why
      log("skipping %s: %s", s.name, why)
    else
      servers[#servers + 1] = s
    end
  end
  local proxies = false
  for _, s in ipairs(servers) do proxies = proxies or s.proxy end
  if proxies then
    local logfile = OUT .. "/backend.log"
    backend.pid = spawn(echohost("")(), "", logfile, CLIENT_CPU)
    backend.port = assert(wait_ready(backend.pid, logfile))
    log("backend of the proxies: C echo on port %d", backend.port)
  end
  -- refecho, then two servers, refecho, two servers, ..., refecho
  local order = {}
  for i, s in ipairs(servers) do
    if s.name ~= "refecho" then
      if #order % 3 == 0 then order[#order + 1] = servers[1] end
      order[#order + 1] = s
    end
    if i == #servers then order[#order + 1] = servers[1] end
  end
  for _, cfg in ipairs(CONFIGS) do
    log("%s: %d rounds", cfg.name, opts.runs)
    run_config(cfg, order)
  end
  stop(backend.pid)
  local f = io.popen(pinned(SERVER_CPU, BENCH) .. " -m fork -d 1 -l fork")
  results.fork = parse_json_line(f:read("a"))
  f:close()
  log("fork+_exit+waitpid: %s µs", fmt(results.fork.us_per_fork, "%.0f"))
  log("memory: %d idle connections", IDLE_CONNS)
  for _, s in ipairs(servers) do
    if MEMORY_SERVERS[s.name] then
      local up = start_up(s, IDLE_CFG)
      if up then
        measure(s, IDLE_CFG, 1, up)
        stop(up.pid)
      end
    end
  end
  return servers
end

-- --- summary ----------------------------------------------------------------

local function metric_of(cfg) return cfg.metric or "msgs_per_s" end

-- Median over rounds of field(run) for one server/config.
local function med(sname, cname, field)
  local xs = {}
  for _, r in pairs((results.runs[sname] or {})[cname] or {}) do
    if r[field] then xs[#xs + 1] = r[field] end
  end
  return median(xs)
end

-- The mean of field over the refecho runs next to position i of seq.
local function ref_near(seq, i, field)
  local sum, n = 0, 0
  for _, step in ipairs({ -1, 1 }) do
    local j = i + step
    while seq[j] and seq[j].server ~= "refecho" do j = j + step end
    if seq[j] and seq[j].run[field] then
      sum, n = sum + seq[j].run[field], n + 1
    end
  end
  return n > 0 and sum / n or nil
end

-- Every run's field(server) / field(refecho runs beside it).
local function ratios(sname, cname, field)
  local xs = {}
  for _, seq in pairs(results.seq[cname] or {}) do
    for i, step in ipairs(seq) do
      local v, b = step.run[field], nil
      if step.server == sname and v then b = ref_near(seq, i, field) end
      if b and b > 0 then xs[#xs + 1] = v / b end
    end
  end
  return xs
end

-- Their median (refecho's own: 1).
local function ratio(sname, cname, field)
  if sname == "refecho" then return med(sname, cname, field) and 1 or nil end
  return median(ratios(sname, cname, field))
end

-- The 90 % confidence interval of the median of xs, distribution-free: the
-- k-th smallest and k-th largest, k the largest with P(Bin(n, 1/2) < k) <=
-- 5 %. Nil with fewer than 5 values (no such k).
local CONFIDENCE = 0.90

local function median_ci(xs)
  local n, t = #xs, {}
  for i, x in ipairs(xs) do t[i] = x end
  table.sort(t)
  local k, cdf, term = 0, 0, 0.5 ^ n  -- term = C(n, j) / 2^n, j = 0
  for j = 0, n do
    if cdf + term > (1 - CONFIDENCE) / 2 then break end
    cdf, k = cdf + term, j + 1
    term = term * (n - j) / (j + 1)
  end
  if k < 1 then return nil end
  return t[k], t[n + 1 - k]
end

-- ratio() with its 90 % interval: median, low, high.
local function ratio_ci(sname, cname, field)
  local m = ratio(sname, cname, field)
  if not m or sname == "refecho" then return m end
  local lo, hi = median_ci(ratios(sname, cname, field))
  return m, lo, hi
end

-- sname against base run by run: in each round, sname's run over base's
-- (a few seconds apart, so what drifts falls alike on both); the median
-- with its 90 % interval.
local function paired_ci(sname, base, cname, field)
  local xs = {}
  for _, seq in pairs(results.seq[cname] or {}) do
    local v, b
    for _, step in ipairs(seq) do
      if step.server == sname then v = step.run[field] end
      if step.server == base then b = step.run[field] end
    end
    if v and b and b > 0 then xs[#xs + 1] = v / b end
  end
  if #xs == 0 then return nil end
  return median(xs), median_ci(xs)
end

-- How much of a CPU other processes (and the hypervisor) took during the
-- measured windows: the noise of this run.
local function interference()
  local other, steal = {}, {}
  for _, byc in pairs(results.runs) do
    for cname, runs in pairs(byc) do
      for _, r in ipairs(runs) do
        if cname ~= "idle" and r.other_cpu_s and r.duration_s > 0 then
          other[#other + 1] = r.other_cpu_s / r.duration_s
          steal[#steal + 1] = (r.steal_s or 0) / r.duration_s
        end
      end
    end
  end
  table.sort(other)
  return { other_median = median(other), other_max = other[#other],
           steal_median = median(steal) }
end


local function machine()
  local cpu = (read_file("/proc/cpuinfo") or ""):match("model name%s*:%s*([^\n]+)") or "?"
  return {
    nproc = tonumber(capture("nproc")),
    cpu = cpu,
    kernel = capture("uname -sr"),
    date = capture("date -u '+%Y-%m-%d %H:%M UTC'"),
    pinning = CLIENT_CPU and ("client on CPU " .. CLIENT_CPU .. ", server on CPU " .. SERVER_CPU)
      or "no pinning (one CPU)",
  }
end

local TARGETS = {
  { "C echo", "c_echo", "rr1", "ratio", ">=", 0.98 },
  { "C echo", "c_echo", "rr50", "ratio", ">=", 0.98 },
  { "C echo", "c_echo", "stream", "ratio", ">=", 0.98 },
  { "C echo", "c_echo", "connrate", "ratio", ">=", 0.98 },
  { "C echo", "c_echo", "connrate1", "ratio", ">=", 0.98 },
  { "C echo", "c_echo", "rr1", "cpu", "<=", 1.03 },
  { "C echo", "c_echo", "rr50", "cpu", "<=", 1.03 },
  { "C echo", "c_echo", "connrate", "cpu", "<=", 1.03 },
  { "C echo", "c_echo", "connrate1", "cpu", "<=", 1.03 },
  { "Lua per-message", "lua_fn", "rr50", "ratio", ">=", 0.95 },
  { "Lua coroutine", "lua_co", "rr50", "ratio", ">=", 0.92 },
  { "Lua per-message", "lua_fn", "connrate1", "ratio", ">=", 0.90 },
  { "Lua coroutine", "lua_co", "connrate1", "ratio", ">=", 0.90 },
  -- against the minimal server of the same design (ours, not the issue's)
  { "fork model", "fork", "connrate", "rel", ">=", 0.90, base = "ref_fork" },
  { "C echo", "c_echo", "udp", "ratio", ">=", 0.95 },
  -- polling, against the reference that polls alike (ours, not the issue's)
  { "C echo --busy-poll 200", "c_spin", "connrate", "rel", ">=", 0.98, base = "ref_spin" },
  { "C echo --busy-poll 200", "c_spin", "connrate1", "rel", ">=", 0.98, base = "ref_spin" },
  { "C echo", "c_echo", "idle", "rss", "<=", 1024 },
  { "Lua coroutine", "lua_co", "idle", "rss", "<=", 4096 },
  -- the same proxying, side by side: the base is HAProxy, not refecho
  { "proxy.lua", "proxy_lua", "rr50", "peer", ">=", 1.0, base = "haproxy_tcp" },
}

local function config_title(cname)
  for _, c in ipairs(CONFIGS) do if c.name == cname then return c.title end end
  return IDLE_CONNS .. " idle conns"
end

local function target_value(t)
  local sname, cname, kind = t[2], t[3], t[4]
  if kind == "rss" then return med(sname, cname, "rss_per_conn_b") end
  local cfg
  for _, c in ipairs(CONFIGS) do if c.name == cname then cfg = c end end
  if kind == "cpu" then return ratio_ci(sname, cname, "server_cpu_us_per_msg") end
  if kind == "peer" or kind == "rel" then
    return paired_ci(sname, t.base, cname, metric_of(cfg))
  end
  return ratio_ci(sname, cname, metric_of(cfg))
end

local function targets_table(out)
  out[#out + 1] = "| target | measured | 90 % interval | met |"
  out[#out + 1] = "|---|---|---|---|"
  local summary = {}
  for _, t in ipairs(TARGETS) do
    local v, lo, hi = target_value(t)
    local what
    if t[4] == "rss" then
      what = string.format("%s: RSS per idle connection ≤ %d B", t[1], t[6])
    elseif t[4] == "cpu" then
      what = string.format("%s: server CPU/msg on %s ≤ %.2f× ref", t[1], config_title(t[3]), t[6])
    elseif t[4] == "peer" or t[4] == "rel" then
      what = string.format("%s: %s ≥ %.2f× %s", t[1], config_title(t[3]), t[6], t.base)
    else
      what = string.format("%s: %s ≥ %.2f× ref", t[1], config_title(t[3]), t[6])
    end
    local function meets(x)
      return x and ((t[5] == ">=" and x >= t[6]) or (t[5] == "<=" and x <= t[6]))
    end
    local met = meets(v)
    -- the interval straddles the target: the run cannot tell
    local unsure = lo and hi and meets(lo) ~= meets(hi)
    local shown = t[4] == "rss" and fmt(v, "%.0f B") or fmt(v, "%.3f×")
    local verdict = v == nil and "not measured" or (met and "yes" or "**no**")
    if v ~= nil and unsure then verdict = verdict .. " (within the interval)" end
    out[#out + 1] = string.format("| %s | %s | %s | %s |", what, shown,
      lo and string.format("%.3f–%.3f", lo, hi) or "–", verdict)
    summary[#summary + 1] = { target = what, value = v, low = lo, high = hi,
      met = v ~= nil and met or nil, unsure = unsure or nil }
  end
  return summary
end

local function header_lines(out, m)
  out[#out + 1] = "# echohost benchmark"
  out[#out + 1] = ""
  out[#out + 1] = string.format("%s · %d × %s · %s · %s · %d round%s (medians), %g s measured "
    .. "after %g s warm-up per run; each server started once per configuration and warmed "
    .. "up by one unrecorded run", m.date, m.nproc, m.cpu, m.kernel, m.pinning, opts.runs,
    opts.runs > 1 and "s" or "", DURATION, WARMUP)
  local noise = interference()
  if noise.other_median then
    out[#out + 1] = ""
    out[#out + 1] = string.format("Interference: other processes used a median %.0f %% "
      .. "(max %.0f %%) of one CPU during the measured windows; hypervisor steal %.1f %%. "
      .. "Each ratio compares a run with the refecho runs just before and after it; "
      .. "an interval is the 90 %% confidence interval of a median ratio (distribution-free, "
      .. "from the order statistics).",
      100 * noise.other_median, 100 * noise.other_max, 100 * noise.steal_median)
  end
end

local function ratio_lines(out, servers)
  out[#out + 1] = ""
  out[#out + 1] = "## Ratio to refecho (same run; higher is better, CPU/msg: lower is better)"
  out[#out + 1] = ""
  local head, rule = { "| server |" }, { "|---|" }
  for _, c in ipairs(CONFIGS) do
    head[#head + 1] = " " .. c.title .. " |"
    rule[#rule + 1] = "---:|"
  end
  head[#head + 1] = " CPU/msg rr 1×64 B | CPU/msg rr 50×1 KiB | CPU/msg connrate 16 |"
    .. " CPU/msg connrate 1 |"
  rule[#rule + 1] = "---:|---:|---:|---:|"
  out[#out + 1] = table.concat(head)
  out[#out + 1] = table.concat(rule)
  for _, s in ipairs(servers) do
    local row = { "| " .. s.title .. " |" }
    for _, c in ipairs(CONFIGS) do
      row[#row + 1] = " " .. fmt(ratio(s.name, c.name, metric_of(c))) .. " |"
    end
    for _, cn in ipairs({ "rr1", "rr50", "connrate", "connrate1" }) do
      row[#row + 1] = " " .. fmt(ratio(s.name, cn, "server_cpu_us_per_msg")) .. " |"
    end
    out[#out + 1] = table.concat(row)
  end
end

local function absolute_lines(out, servers)
  out[#out + 1] = ""
  out[#out + 1] = "## Absolute figures (medians)"
  out[#out + 1] = ""
  out[#out + 1] = "| server | rr 1×64 B msg/s | p50 / p99 µs | rr 50×1 KiB msg/s | p99 µs "
    .. "| stream MB/s | connrate 16 conn/s | connrate 1 conn/s | udp dgram/s (lost) "
    .. "| server CPU µs/msg (rr1 / rr50 / stream / connrate 16 / connrate 1 / udp) | errors |"
  out[#out + 1] = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for _, s in ipairs(servers) do
    local errs, cpu = 0, {}
    for _, byc in pairs(results.runs[s.name] or {}) do
      for _, r in pairs(byc) do errs = errs + (r.errors or 0) end
    end
    for _, c in ipairs(CONFIGS) do
      cpu[#cpu + 1] = fmt(med(s.name, c.name, "server_cpu_us_per_msg"), "%.1f")
    end
    local function m(c, f) return fmt(med(s.name, c, f), "%.0f") end
    local udp = med(s.name, "udp", "msgs_per_s") and
      m("udp", "msgs_per_s") .. " (" .. m("udp", "lost") .. ")" or "–"
    out[#out + 1] = string.format("| %s | %s | %s / %s | %s | %s | %s | %s | %s | %s | %s | %d |",
      s.title, m("rr1", "msgs_per_s"), m("rr1", "p50_us"), m("rr1", "p99_us"),
      m("rr50", "msgs_per_s"), m("rr50", "p99_us"), m("stream", "mb_per_s"),
      m("connrate", "msgs_per_s"), m("connrate1", "msgs_per_s"), udp,
      table.concat(cpu, " / "), errs)
  end
end

local function memory_lines(out, servers)
  out[#out + 1] = ""
  out[#out + 1] = string.format("## Memory: %d idle connections (one 64 B echo each)", IDLE_CONNS)
  out[#out + 1] = ""
  out[#out + 1] = "| server | VmRSS before | VmRSS after | per connection |"
  out[#out + 1] = "|---|---:|---:|---:|"
  for _, s in ipairs(servers) do
    if MEMORY_SERVERS[s.name] and med(s.name, "idle", "rss_per_conn_b") then
      out[#out + 1] = string.format("| %s | %s KiB | %s KiB | %s B |", s.title,
        fmt(med(s.name, "idle", "rss_before_kb"), "%.0f"),
        fmt(med(s.name, "idle", "rss_after_kb"), "%.0f"),
        fmt(med(s.name, "idle", "rss_per_conn_b"), "%.0f"))
    end
  end
  local fk = results.fork and results.fork.us_per_fork
  local ref_cr = med("refecho", "connrate", "msgs_per_s")
  if fk and ref_cr then
    out[#out + 1] = ""
    out[#out + 1] = string.format("The machine's floor for a process per connection: fork, _exit "
      .. "and waitpid of a small process take %.0f µs here (echohost-bench -m fork), at most "
      .. "%.0f forks/s = %.3f× refecho's connrate, before any socket work.", fk, 1e6 / fk,
      1e6 / fk / ref_cr)
  end
end

local function note_lines(out)
  local skipped = {}
  for name, why in pairs(results.skipped) do skipped[#skipped + 1] = name .. " (" .. why .. ")" end
  for name, f in pairs(results.failed) do
    skipped[#skipped + 1] = string.format("%s: %d run%s did not start (%s)", name, f.n,
      f.n > 1 and "s" or "", f.why)
  end
  table.sort(skipped)
  if #skipped > 0 then
    out[#out + 1] = ""
    out[#out + 1] = "Not measured: " .. table.concat(skipped, "; ") .. "."
  end
  out[#out + 1] = ""
  out[#out + 1] = "Throughput is echoed messages (stream: MB, connrate: connections) per second; "
    .. "latency from a log-linear histogram; server CPU is the run time of the server's threads, "
    .. "its workers and children (/proc schedstat, plus reaped children) over the measured "
    .. "window. A run during which other processes took over 30 % of a CPU is repeated (twice "
    .. "at most) and the quietest kept. connrate closes with RST (no TIME_WAIT left to slow the "
    .. "next runs). udp: 16 sockets with 4 datagrams of 64 B in flight each, against refecho's "
    .. "recvmmsg/sendmmsg echo; a datagram not echoed within 200 ms is counted lost and "
    .. "replaced. HAProxy 2.6's `receive(n)` needs a length, so its "
    .. "service reads the configured message size."
  out[#out + 1] = ""
end

-- Is refecho the floor? Every server (refecho's variants, echohost, the
-- peers) faster on a configuration beyond doubt: the whole 90 % interval of
-- its median ratio above 1. Those that spend more server CPU per message
-- are listed apart: they buy the speed by sleeping less (on a VM each sleep
-- and wake-up is a trip through the hypervisor, which the client pays too),
-- the trade refecho -s makes on purpose; and so are the polling servers,
-- whose floor is refecho -s 200 (see Targets), and the A/A row (refecho
-- against itself: what the noise alone makes of a median, about one
-- comparison in twenty beyond it by chance).
local function floor_lines(out, servers)
  local cheaper, costlier, polling, aa, close = {}, {}, {}, {}, {}
  for _, s in ipairs(servers) do
    for _, c in ipairs(CONFIGS) do
      local r, lo, hi
      if s.name ~= "refecho" then r, lo, hi = ratio_ci(s.name, c.name, metric_of(c)) end
      if r and lo and lo > 1 then
        local cpu = ratio(s.name, c.name, "server_cpu_us_per_msg")
        local line = string.format("%s on %s (%.3f×, %.3f–%.3f; CPU/msg %s)", s.title,
          c.title, r, lo, hi, cpu and string.format("%.2f×", cpu) or "not measured")
        local list = s.name == "ref_aa" and aa or s.polls and polling
          or cpu and cpu > 1 and costlier or cheaper
        list[#list + 1] = line
      elseif r and r > 1.02 then
        close[#close + 1] = string.format("%s on %s (%.3f×, %s)", s.title, c.title, r,
          lo and string.format("%.3f–%.3f", lo, hi) or "no interval")
      end
    end
  end
  local pct = math.floor(100 * CONFIDENCE + 0.5)
  out[#out + 1] = ""
  out[#out + 1] = "## Is refecho the floor?"
  out[#out + 1] = ""
  if #cheaper > 0 then
    out[#out + 1] = string.format("**No**: faster beyond the noise (the %d %% interval of the "
      .. "median ratio above 1) at no more server CPU per message: %s. There refecho is not "
      .. "the floor, and the ratios understate how far echohost is from the best this "
      .. "machine allows.", pct, table.concat(cheaper, "; "))
  elseif #costlier > 0 then
    out[#out + 1] = string.format("**Only at a higher CPU cost**: no server is faster beyond "
      .. "the noise (the %d %% interval of the median ratio above 1) at no more server CPU "
      .. "per message than refecho.", pct)
  else
    out[#out + 1] = string.format("Yes: no server%s and no variant of refecho is faster on "
      .. "any configuration beyond the noise (the %d %% interval of its median ratio above 1).",
      #polling > 0 and " that sleeps between events" or "", pct)
  end
  if #costlier > 0 then
    out[#out + 1] = ""
    out[#out + 1] = "Faster beyond the noise by spending more server CPU per message: "
      .. table.concat(costlier, "; ") .. ". A server that works longer per message sleeps "
      .. "less; on a VM every sleep and wake-up is a trip through the hypervisor that the "
      .. "client, the bottleneck of these configurations, pays as well (refecho -s polls "
      .. "before it sleeps and shows how much that is worth here)."
  end
  if #polling > 0 then
    out[#out + 1] = ""
    out[#out + 1] = "Polling servers, faster than a server that sleeps (their own floor is "
      .. "refecho -s 200: see Targets): " .. table.concat(polling, "; ") .. "."
  end
  if #aa > 0 then
    out[#out + 1] = ""
    out[#out + 1] = "The A/A row beyond the noise, by chance (refecho against itself): "
      .. table.concat(aa, "; ") .. "."
  end
  if #close > 0 then
    out[#out + 1] = ""
    out[#out + 1] = "Medians above 1.02 whose interval reaches below 1 (within the noise): "
      .. table.concat(close, "; ") .. "."
  end
  local beaten = {}
  for _, list in ipairs({ cheaper, costlier, polling }) do
    for _, l in ipairs(list) do beaten[#beaten + 1] = l end
  end
  return beaten
end

-- The whole report as markdown, and the targets as a list.
local function tables(servers, m)
  local out = {}
  header_lines(out, m)
  ratio_lines(out, servers)
  absolute_lines(out, servers)
  memory_lines(out, servers)
  local beaten = floor_lines(out, servers)
  out[#out + 1] = ""
  out[#out + 1] = "## Targets"
  out[#out + 1] = ""
  local summary = targets_table(out)
  note_lines(out)
  return table.concat(out, "\n"), summary, beaten
end

-- --- chart ------------------------------------------------------------------

local COLORS = {
  refecho = "#808080", c_echo = "#1f5fa8", lua_fn = "#3f8fd8", lua_co = "#7fbfef",
  fork = "#2a9d8f", socat = "#e9c46a", python = "#f4a261", node = "#8ab17d",
  haproxy = "#e76f51", c_spin = "#0b3d6b",
}

local function chart(all, m)
  local dat, cols, servers = {}, {}, {}
  for _, s in ipairs(all) do
    if not s.variant then servers[#servers + 1] = s end
  end
  for _, s in ipairs(servers) do cols[#cols + 1] = '"' .. s.title .. '"' end
  dat[#dat + 1] = "config " .. table.concat(cols, " ")
  for _, c in ipairs(CONFIGS) do
    local row = { '"' .. c.title .. '"' }
    for _, s in ipairs(servers) do
      row[#row + 1] = fmt(ratio(s.name, c.name, metric_of(c)), "%.4f"):gsub("–", "0")
    end
    dat[#dat + 1] = table.concat(row, " ")
  end
  write_file(OUT .. "/chart.dat", table.concat(dat, "\n") .. "\n")
  local series, ymax = {}, 1
  for i, s in ipairs(servers) do
    series[i] = string.format("'%s/chart.dat' using %d%s title columnheader(%d) lc rgb '%s'",
      OUT, i + 1, i == 1 and ":xtic(1)" or "", i + 1, COLORS[s.name] or "#888888")
    for _, c in ipairs(CONFIGS) do
      ymax = math.max(ymax, ratio(s.name, c.name, metric_of(c)) or 0)
    end
  end
  local gp = {
    "set terminal pngcairo size 1100,560 font 'Sans,10'",
    "set output '" .. OUT .. "/chart.png'",
    string.format("set title \"echohost benchmark: throughput / refecho (median of %d)\\n%s, "
      .. "%d × %s, %s\"", opts.runs, m.date, m.nproc, m.cpu, m.kernel),
    "set style data histograms",
    "set style histogram clustered gap 1",
    "set style fill solid 0.85 border -1",
    "set boxwidth 0.9",
    "set key outside right top vertical",
    "set ylabel 'ratio to refecho'",
    "set grid ytics",
    "set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 1.5",
    string.format("set yrange [0:%.2f]", ymax * 1.1),
    "plot " .. table.concat(series, ", \\\n  "),
  }
  write_file(OUT .. "/chart.gp", table.concat(gp, "\n") .. "\n")
  if not have("gnuplot") then return false end
  return os.execute("gnuplot " .. sh_quote(OUT .. "/chart.gp") .. " 2>>" ..
    sh_quote(OUT .. "/gnuplot.log")) == true
end

-- --- main -------------------------------------------------------------------

local t0 = socket.gettime()
if not exists(BENCH) then
  io.stderr:write("bench.lua: ", BENCH, " not built (run make)\n")
  os.exit(1)
end
local servers = run_all()
local m = machine()
local md, summary, beaten = tables(servers, m)
write_file(OUT .. "/results.md", md)
write_file(OUT .. "/results.json", json_encode({
  machine = m, runs = opts.runs, quick = opts.quick, warmup_s = WARMUP, duration_s = DURATION,
  results = results.runs, skipped = results.skipped, failed = results.failed,
  targets = summary, floor_beaten = beaten,
  interference = interference(), fork_probe = results.fork,
}) .. "\n")
local drew = chart(servers, m)
if not opts.quick and not opts.only then     -- only a full run is the record
  os.execute(string.format("cp %s %s", sh_quote(OUT .. "/results.md"), sh_quote(RESULTS)))
  if drew then
    os.execute(string.format("cp %s %s", sh_quote(OUT .. "/chart.png"), sh_quote(RESULTS)))
  end
end
io.write(md)
log("wrote %s/results.md, results.json%s (%.0f s)", OUT, drew and ", chart.png" or "",
  socket.gettime() - t0)
if results.mismatches > 0 then
  log("bench: %d mismatched echo(es): see %s/client.log", results.mismatches, OUT)
  os.exit(1)
end
