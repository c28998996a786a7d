/* echohost: command line and exit codes. Parses, runs the chosen mode
 * (server, --script, --test, --repl), reports; exit 2 for usage, 1 for
 * runtime. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "config.h"
#include "hload.h"
#include "log.h"
#include "lpubsub.h"
#include "lshared.h"
#include "repl.h"
#include "script.h"
#include "server.h"
#include "shdict.h"

#define ECHOHOST_VERSION "0.1.0"

static const char *progname = "echohost";

static void usage(FILE *f) {
    fprintf(f,
"usage: %s [options]                  serve echo (or a Lua handler)\n"
"       %s --script [LUA-ARGS]        lua5.4 with the echohost modules\n"
"       %s --test [BUSTED-ARGS]       busted on ./spec under that Lua\n"
"       %s --repl [--connect PATH]    Lua prompt on values (or into a server)\n"
"\n"
"server options:\n"
"  --listen ADDR:PORT    address to serve (default 127.0.0.1:8888; [::1]:PORT\n"
"                        for IPv6, *:PORT for every IPv4 address, udp://ADDR:PORT\n"
"                        for UDP (echo, or the handler's on_datagram),\n"
"                        unix:PATH for a Unix socket (mode 0600, or\n"
"                        ,mode=0660); port 0 picks a free port and logs it);\n"
"                        ,proxy after a TCP or unix: one: PROXY v1/v2 header\n"
"                        first; repeatable (at most 16)\n"
"  --udp-rate N          datagrams/s answered per source address, per worker\n"
"                        and UDP listener (default 1000, 0=off)\n"
"  --proxy-timeout SECS  how long a ,proxy listener waits for the header\n"
"                        (default 3)\n"
"  --busy-poll USECS     a worker keeps polling this long before it sleeps\n"
"                        (default 0: sleeps at once; for VMs, at a CPU cost)\n"
"  --workers N           worker processes (default: number of cores)\n"
"  --model event|fork    event loop (default) or a process per connection\n"
"  --max-conns N         connections per worker / live children (default 10000)\n"
"  --idle-timeout SECS   close connections silent this long (default 300, 0=off)\n"
"  --high-water BYTES    output held per connection before reads pause\n"
"                        (default 256k)\n"
"  --drain-timeout SECS  how long SIGTERM lets in-flight echoes finish (default 5)\n"
"  --upgrade-timeout SECS\n"
"                        how long SIGUSR2 waits for the new binary to serve\n"
"                        before it is killed (default 30)\n"
"  --handler FILE.lua    run a Lua handler on every connection\n"
"  --watch               reload the handler when its file changes\n"
"  --set KEY=VALUE       a setting for the handler (require\n"
"                        \"echohost.settings\"); repeatable\n"
"  --control PATH        control socket for 'echohost --repl --connect PATH'\n"
"  --metrics ADDR:PORT   serve Prometheus metrics on HTTP GET /metrics there\n"
"                        (port 0 picks a free port and logs it)\n"
"  --lua-mem BYTES       memory cap per Lua state, handler or operator\n"
"                        (default 64m, at least 256k; 0=off)\n"
"  --lua-budget N        VM instructions per handler call (default 100000000;\n"
"                        0=off)\n"
"  --shared-size BYTES   capacity of the shared dictionary, echohost.shared\n"
"                        (default 1m, 4k..1g)\n"
"  --pubsub-size BYTES   ring of echohost.pubsub's messages, shared by every\n"
"                        process (default 1m, 4k..1g)\n"
"  --log-level LEVEL     error, warn, info (default) or debug\n"
"  --log FILE            log to FILE (appended; reopened on SIGUSR1)\n"
"                        instead of stderr\n"
"  --log-format FORMAT   text (default), logfmt or json (one object a line)\n"
"  --access-log          log one line per connection when it ends\n"
"  --pid-file PATH       write the master's pid to PATH once listening\n"
"  --user NAME           run as NAME once the sockets are open (from root)\n"
"  BYTES is a count, or one with a suffix k, m or g (times 1024, 1024^2,\n"
"  1024^3), at most 1024g.\n"
"\n"
"repl options:\n"
"  --connect PATH        open the prompt inside a server's control socket\n"
"  --history FILE        history file (default ~/.echohost_history)\n"
"\n"
"script and test:\n"
"  LUA-ARGS are lua5.4's: [-e stat] [-l mod] [-i] [-v] [-E] [-W] [--]\n"
"  [FILE.lua [ARGS]] (- reads stdin); echohost-lua is the same program.\n"
"  BUSTED-ARGS go to busted, which --test runs in the same Lua.\n"
"\n"
"  -h, --help            this text\n"
"  --version             print the version\n",
        progname, progname, progname, progname);
}

static int usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...) {
    va_list ap;

    fprintf(stderr, "%s: ", progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information.\n", progname);
    return 2;
}

void config_defaults(struct eh_config *c) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    memset(c, 0, sizeof *c);
    c->listen[0].kind = EH_LISTEN_TCP;
    strcpy(c->listen[0].host, "127.0.0.1");
    c->listen[0].port = 8888;
    c->nlisten = 1;
    c->udp_rate = EH_UDP_RATE;
    c->proxy_timeout = EH_PROXY_TIMEOUT;
    c->workers = n > 0 ? (int)n : 1;
    c->model = EH_MODEL_EVENT;
    c->max_conns = 10000;
    c->idle_timeout = 300;
    c->high_water = 256 * 1024;
    c->drain_timeout = 5;
    c->upgrade_timeout = 30;
    c->lua_mem_limit = 64 * 1024 * 1024;
    c->lua_budget = 100000000;
    c->shared_size = LSHARED_DEFAULT;
    c->pubsub_size = LPUBSUB_DEFAULT;
}

/* "127.0.0.1:8888", "[::1]:8888", "*:8888", ":8888", each optionally
 * after "udp://"; or "unix:PATH". s is the address alone. 0 or -1. */
static int parse_address(const char *s, struct eh_listen *l) {
    const char *colon, *host;
    size_t hlen;
    char *end;
    long port;

    l->kind = EH_LISTEN_TCP;
    if (strncmp(s, "unix:", 5) == 0) {
        l->kind = EH_LISTEN_UNIX;
        if (s[5] == '\0' || strlen(s + 5) > EH_UNIX_PATH_MAX)
            return -1;
        strcpy(l->host, s + 5);
        return 0;
    }
    if (strncmp(s, "udp://", 6) == 0) {
        l->kind = EH_LISTEN_UDP;
        s += 6;
    }
    host = s;
    if (*s == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':')
            return -1;
        host = s + 1;
        hlen = rb - host;
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || memchr(s, '/', colon - s) != NULL)
            return -1;              /* "tcp://...", "unix/x": not ours */
        hlen = colon - s;
    }
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (colon[1] < '0' || colon[1] > '9' || *end || errno || port < 0 ||
        port > 65535)
        return -1;
    if (hlen >= sizeof l->host)
        return -1;
    if (hlen == 0 || (hlen == 1 && *host == '*'))
        strcpy(l->host, *s == '[' ? "::" : "0.0.0.0");
    else {
        memcpy(l->host, host, hlen);
        l->host[hlen] = '\0';
    }
    l->port = (int)port;
    return 0;
}

/* The options after the address, each after a comma: "proxy" (TCP and
 * unix), "mode=0660" (unix). NULL, or what is wrong. */
static const char *listen_options(const char *o, struct eh_listen *l) {
    while (*o++ == ',') {
        size_t n = strcspn(o, ",");
        char *end;
        if (n == 5 && strncmp(o, "proxy", 5) == 0) {
            if (l->kind == EH_LISTEN_UDP)
                return ",proxy needs a TCP or unix: listener";
            l->proxy = 1;
        } else if (n > 5 && strncmp(o, "mode=", 5) == 0) {
            unsigned long mode = strtoul(o + 5, &end, 8);
            if (l->kind != EH_LISTEN_UNIX)
                return ",mode needs a unix: listener";
            if (o[5] < '0' || o[5] > '7' || end != o + n || mode > 0777)
                return "want ,mode=OCTAL, 0..0777";
            l->mode = (unsigned)mode;
        } else {
            return "unknown option: want ,proxy, or ,mode=OCTAL after "
                   "unix:PATH";
        }
        o += n;
    }
    return NULL;
}

#define LISTEN_FORMS "HOST:PORT, [IPv6]:PORT, *:PORT, udp://HOST:PORT or " \
                     "unix:PATH, port 0..65535"

/* An address and its options: NULL, or what is wrong. */
static const char *parse_listen(const char *s, struct eh_listen *l) {
    size_t n = strcspn(s, ",");
    char addr[sizeof l->host + 16];

    memset(l, 0, sizeof *l);
    l->mode = EH_UNIX_MODE;
    if (n >= sizeof addr)
        return "want " LISTEN_FORMS;
    memcpy(addr, s, n);
    addr[n] = '\0';
    if (parse_address(addr, l) < 0)
        return "want " LISTEN_FORMS;
    return listen_options(s + n, l);
}

static int same_listener(const struct eh_listen *a, const struct eh_listen *b) {
    if (a->kind != b->kind || strcmp(a->host, b->host) != 0)
        return 0;
    return a->kind == EH_LISTEN_UNIX || (a->port != 0 && a->port == b->port);
}

/* Adds --listen a (the first one replaces the default): 0, or 2 after the
 * usage error. */
static int add_listen(struct eh_config *c, int *given, const char *a) {
    struct eh_listen l;
    const char *why = parse_listen(a, &l);

    if (why)
        return usage_error("bad --listen '%s' (%s)", a, why);
    if (!*given)
        c->nlisten = 0;
    *given = 1;
    if (c->nlisten == EH_LISTEN_MAX)
        return usage_error("too many --listen (at most %d)", EH_LISTEN_MAX);
    for (int i = 0; i < c->nlisten; i++)
        if (same_listener(&c->listen[i], &l))
            return usage_error("--listen '%s' given twice", a);
    c->listen[c->nlisten++] = l;
    return 0;
}

/* --metrics takes a TCP address as --listen does. 0 or -1. */
static int parse_metrics(const char *s, struct eh_config *c) {
    struct eh_listen l;

    if (parse_address(s, &l) < 0 || l.kind != EH_LISTEN_TCP)
        return -1;
    memcpy(c->metrics_host, l.host, sizeof c->metrics_host);
    c->metrics_port = l.port;
    c->metrics = 1;
    return 0;
}

static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_seconds(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || *end || errno || !(v >= 0 && v <= 1e7))
        return -1;
    *out = v;
    return 0;
}

#define BYTES_MAX (1ULL << 40)     /* "1024g": past any sane cap */

/* "65536", "64k", "1m", "2g" (or K, M, G). 0, -1 if malformed, -2 if over
 * BYTES_MAX. */
static int parse_bytes(const char *s, size_t *out) {
    char *end;
    unsigned long long mult = 1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s < '0' || *s > '9' || (errno && errno != ERANGE))
        return -1;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': mult = 1ULL << 10; end++; break;
    case 'm': case 'M': mult = 1ULL << 20; end++; break;
    case 'g': case 'G': mult = 1ULL << 30; end++; break;
    default: return -1;
    }
    if (*end)
        return -1;
    if (errno == ERANGE || v > BYTES_MAX / mult)
        return -2;
    *out = (size_t)(v * mult);
    return 0;
}

/* parse_bytes for --NAME, at least min: 0, or 2 after the usage error. */
static int bytes_arg(const char *name, const char *a, size_t min,
                     size_t *out) {
    switch (parse_bytes(a, out)) {
    case -1:
        return usage_error("bad --%s '%s' (want bytes: a count, or with a "
                           "suffix k, m or g)", name, a);
    case -2:
        return usage_error("bad --%s '%s' (too large: at most 1024g)", name,
                           a);
    }
    if (*out < min)
        return usage_error("bad --%s '%s' (want bytes >= %zu)", name, a, min);
    return 0;
}

enum {
    OPT_LISTEN = 256, OPT_WORKERS, OPT_MODEL, OPT_MAX_CONNS, OPT_IDLE,
    OPT_HIGH_WATER, OPT_DRAIN, OPT_HANDLER, OPT_WATCH, OPT_CONTROL,
    OPT_LUA_MEM, OPT_LUA_BUDGET, OPT_LOG_LEVEL, OPT_SCRIPT, OPT_REPL,
    OPT_CONNECT, OPT_HISTORY, OPT_VERSION, OPT_SET, OPT_ACCESS_LOG,
    OPT_SHARED_SIZE, OPT_PUBSUB_SIZE, OPT_UDP_RATE, OPT_LOG, OPT_LOG_FORMAT,
    OPT_PID_FILE, OPT_USER, OPT_METRICS, OPT_UPGRADE_TIMEOUT, OPT_TEST,
    OPT_PROXY_TIMEOUT, OPT_BUSY_POLL
};

static const struct option options[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"udp-rate", required_argument, NULL, OPT_UDP_RATE},
    {"proxy-timeout", required_argument, NULL, OPT_PROXY_TIMEOUT},
    {"busy-poll", required_argument, NULL, OPT_BUSY_POLL},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"model", required_argument, NULL, OPT_MODEL},
    {"max-conns", required_argument, NULL, OPT_MAX_CONNS},
    {"idle-timeout", required_argument, NULL, OPT_IDLE},
    {"high-water", required_argument, NULL, OPT_HIGH_WATER},
    {"drain-timeout", required_argument, NULL, OPT_DRAIN},
    {"upgrade-timeout", required_argument, NULL, OPT_UPGRADE_TIMEOUT},
    {"handler", required_argument, NULL, OPT_HANDLER},
    {"watch", no_argument, NULL, OPT_WATCH},
    {"set", required_argument, NULL, OPT_SET},
    {"access-log", no_argument, NULL, OPT_ACCESS_LOG},
    {"control", required_argument, NULL, OPT_CONTROL},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"lua-mem", required_argument, NULL, OPT_LUA_MEM},
    {"lua-budget", required_argument, NULL, OPT_LUA_BUDGET},
    {"shared-size", required_argument, NULL, OPT_SHARED_SIZE},
    {"pubsub-size", required_argument, NULL, OPT_PUBSUB_SIZE},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"log", required_argument, NULL, OPT_LOG},
    {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
    {"pid-file", required_argument, NULL, OPT_PID_FILE},
    {"user", required_argument, NULL, OPT_USER},
    {"script", optional_argument, NULL, OPT_SCRIPT},
    {"repl", no_argument, NULL, OPT_REPL},
    {"test", no_argument, NULL, OPT_TEST},
    {"connect", required_argument, NULL, OPT_CONNECT},
    {"history", required_argument, NULL, OPT_HISTORY},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0}
};

struct cli {
    struct eh_config cfg;
    int script_index;           /* argv index after --script, or 0 */
    int test_index;             /* argv index after --test, or 0 */
    int repl;
    const char *connect;
    const char *history;
    int lua_mem, lua_budget;    /* given on the command line */
    int listen;                 /* --listen given: the default is gone */
    int udp_rate;               /* --udp-rate given */
    int proxy_timeout;          /* --proxy-timeout given */
    int busy_poll;              /* --busy-poll given */
};

static int has_udp(const struct eh_config *c) {
    for (int i = 0; i < c->nlisten; i++)
        if (c->listen[i].kind == EH_LISTEN_UDP)
            return 1;
    return 0;
}

static int has_proxy(const struct eh_config *c) {
    for (int i = 0; i < c->nlisten; i++)
        if (c->listen[i].proxy)
            return 1;
    return 0;
}

/* --control on the path of a unix: listener: one would refuse the other. */
static int control_is_listener(const struct eh_config *c) {
    for (int i = 0; i < c->nlisten && c->control; i++)
        if (c->listen[i].kind == EH_LISTEN_UNIX &&
            strcmp(c->listen[i].host, c->control) == 0)
            return 1;
    return 0;
}

/* Flags that mean nothing without another one are usage errors, not
 * silently ignored: 0 or 2 (reported). */
static int check_combination(const struct cli *cli) {
    const struct eh_config *c = &cli->cfg;
    int server = !cli->script_index && !cli->test_index && !cli->repl;

    if (c->nsettings && !(server && c->handler))
        return usage_error("--set needs --handler (its settings are the "
                           "handler's)");
    if (c->watch && !(server && c->handler))
        return usage_error("--watch needs --handler (it reloads the "
                           "handler file when it changes)");
    if (cli->lua_budget && !(server && c->handler))
        return usage_error("--lua-budget needs --handler (it bounds each "
                           "handler call)");
    if (cli->lua_mem && !(server && (c->handler || c->control)))
        return usage_error("--lua-mem needs --handler or --control (it caps "
                           "their Lua states)");
    if (cli->udp_rate && !(server && has_udp(c)))
        return usage_error("--udp-rate needs a --listen udp://HOST:PORT (it "
                           "caps what UDP listeners answer)");
    if (!server && (c->log_file || c->pid_file || c->user))
        return usage_error("%s is a server option (not with --script or "
                           "--repl)", c->log_file ? "--log" : c->pid_file ?
                           "--pid-file" : "--user");
    if (cli->proxy_timeout && !(server && has_proxy(c)))
        return usage_error("--proxy-timeout needs a --listen ...,proxy (it "
                           "bounds the wait for a PROXY header)");
    if (server && control_is_listener(c))
        return usage_error("--control '%s' is also a --listen unix: path",
                           c->control);
    if (cli->busy_poll && !server)
        return usage_error("--busy-poll is a server option (not with "
                           "--script or --repl)");
    if (cli->busy_poll && c->model == EH_MODEL_FORK)
        return usage_error("--busy-poll needs --model event (a child of the "
                           "fork model waits in its own reads)");
    if (c->control && c->model == EH_MODEL_FORK)
        return usage_error("--control needs --model event (the fork model "
                           "has no workers to control)");
    if (c->metrics && c->model == EH_MODEL_FORK)
        return usage_error("--metrics needs --model event (it reports the "
                           "workers' figures)");
    return 0;
}

/* 0 to run, 2 on a usage error (already reported), -1 after --help/--version. */
static int parse_args(int argc, char **argv, struct cli *cli) {
    struct eh_config *c = &cli->cfg;
    long n;
    int opt;

    opterr = 0;
    while ((opt = getopt_long(argc, argv, "+:h", options, NULL)) != -1) {
        const char *a = optarg;
        switch (opt) {
        case OPT_LISTEN:
            if (add_listen(c, &cli->listen, a))
                return 2;
            break;
        case OPT_UDP_RATE:
            if (parse_long(a, 0, 100000000, &n) < 0)
                return usage_error("bad --udp-rate '%s' (want datagrams/s "
                                   "0..100000000, 0=off)", a);
            c->udp_rate = n;
            cli->udp_rate = 1;
            break;
        case OPT_PROXY_TIMEOUT:
            if (parse_seconds(a, &c->proxy_timeout) < 0 ||
                c->proxy_timeout < 0.001 || c->proxy_timeout > 3600)
                return usage_error("bad --proxy-timeout '%s' (want seconds, "
                                   "0.001..3600)", a);
            cli->proxy_timeout = 1;
            break;
        case OPT_BUSY_POLL:
            if (parse_long(a, 0, 100000, &n) < 0)
                return usage_error("bad --busy-poll '%s' (want microseconds "
                                   "0..100000, 0=off)", a);
            c->busy_poll_us = n;
            cli->busy_poll = 1;
            break;
        case OPT_WORKERS:
            if (parse_long(a, 1, 1024, &n) < 0)
                return usage_error("bad --workers '%s' (want 1..1024)", a);
            c->workers = (int)n;
            break;
        case OPT_MODEL:
            if (strcmp(a, "event") == 0) c->model = EH_MODEL_EVENT;
            else if (strcmp(a, "fork") == 0) c->model = EH_MODEL_FORK;
            else return usage_error("bad --model '%s' (want event or fork)", a);
            break;
        case OPT_MAX_CONNS:
            if (parse_long(a, 1, 10000000, &n) < 0)
                return usage_error("bad --max-conns '%s' (want 1..10000000)", a);
            c->max_conns = (int)n;
            break;
        case OPT_IDLE:
            if (parse_seconds(a, &c->idle_timeout) < 0)
                return usage_error("bad --idle-timeout '%s' (want seconds)", a);
            break;
        case OPT_HIGH_WATER:
            if (bytes_arg("high-water", a, 1024, &c->high_water))
                return 2;
            break;
        case OPT_DRAIN:
            if (parse_seconds(a, &c->drain_timeout) < 0)
                return usage_error("bad --drain-timeout '%s' (want seconds)", a);
            break;
        case OPT_UPGRADE_TIMEOUT:
            if (parse_seconds(a, &c->upgrade_timeout) < 0 ||
                c->upgrade_timeout == 0)
                return usage_error("bad --upgrade-timeout '%s' (want "
                                   "seconds > 0)", a);
            break;
        case OPT_HANDLER: c->handler = a; break;
        case OPT_WATCH: c->watch = 1; break;
        case OPT_ACCESS_LOG: c->access_log = 1; break;
        case OPT_SET:
            if (a[0] == '=' || strchr(a, '=') == NULL)
                return usage_error("bad --set '%s' (want KEY=VALUE)", a);
            if (c->settings == NULL &&
                (c->settings = calloc(argc, sizeof *c->settings)) == NULL)
                return usage_error("out of memory");
            c->settings[c->nsettings++] = a;    /* argv lives on */
            break;
        case OPT_CONTROL: c->control = a; break;
        case OPT_METRICS:
            if (parse_metrics(a, c) < 0)
                return usage_error("bad --metrics '%s' (want ADDR:PORT)", a);
            break;
        case OPT_LUA_MEM:
            cli->lua_mem = 1;
            if (bytes_arg("lua-mem", a, 0, &c->lua_mem_limit))
                return 2;
            if (c->lua_mem_limit && c->lua_mem_limit < HLOAD_MEM_MIN)
                return usage_error("bad --lua-mem '%s' (a handler's Lua "
                                   "state needs at least %dk; 0: no cap)",
                                   a, HLOAD_MEM_MIN / 1024);
            break;
        case OPT_LUA_BUDGET:
            cli->lua_budget = 1;
            if (parse_long(a, 0, LONG_MAX, &n) < 0)
                return usage_error("bad --lua-budget '%s' (want a count)", a);
            c->lua_budget = n;
            break;
        case OPT_SHARED_SIZE:
            if (bytes_arg("shared-size", a, 0, &c->shared_size))
                return 2;
            if (c->shared_size < SHDICT_MIN || c->shared_size > SHDICT_MAX)
                return usage_error("bad --shared-size '%s' (want 4k..1g)", a);
            break;
        case OPT_PUBSUB_SIZE:
            if (bytes_arg("pubsub-size", a, 0, &c->pubsub_size))
                return 2;
            if (c->pubsub_size < BUS_MIN || c->pubsub_size > BUS_MAX)
                return usage_error("bad --pubsub-size '%s' (want 4k..1g)", a);
            break;
        case OPT_LOG_LEVEL:
            if ((log_level = log_parse_level(a)) < 0)
                return usage_error("bad --log-level '%s' "
                                   "(want error, warn, info or debug)", a);
            break;
        case OPT_LOG: c->log_file = a; break;
        case OPT_LOG_FORMAT:
            if ((log_format = log_parse_format(a)) < 0)
                return usage_error("bad --log-format '%s' "
                                   "(want text, logfmt or json)", a);
            break;
        case OPT_PID_FILE: c->pid_file = a; break;
        case OPT_USER: c->user = a; break;
        case OPT_SCRIPT:        /* the rest is lua.c's command line */
            if (a)
                argv[optind - 1] = optarg;      /* --script=X as --script X */
            cli->script_index = a ? optind - 1 : optind;
            return check_combination(cli);
        case OPT_TEST:          /* the rest is busted's */
            cli->test_index = optind;
            return check_combination(cli);
        case OPT_REPL: cli->repl = 1; break;
        case OPT_CONNECT: cli->connect = a; break;
        case OPT_HISTORY: cli->history = a; break;
        case 'h': usage(stdout); return -1;
        case OPT_VERSION: printf("echohost %s\n", ECHOHOST_VERSION); return -1;
        case ':':
            return usage_error("option '%s' needs an argument", argv[optind - 1]);
        default:
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    c->low_water = c->high_water / 4;
    return check_combination(cli);
}

int main(int argc, char **argv) {
    struct cli cli;
    char err[128];
    int rc;

    memset(&cli, 0, sizeof cli);
    config_defaults(&cli.cfg);
    cli.cfg.argv = argv;
    rc = parse_args(argc, argv, &cli);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    /* before anything forks: every worker and child shares this one */
    if (lshared_init(cli.cfg.shared_size, err, sizeof err) < 0 ||
        lpubsub_init(cli.cfg.pubsub_size, err, sizeof err) < 0) {
        fprintf(stderr, "%s: %s\n", progname, err);
        return 1;
    }
    if (cli.script_index)
        return script_main(argc, argv, cli.script_index, progname);
    if (cli.test_index)
        return script_test(argc, argv, cli.test_index, progname);
    if (cli.repl)
        return repl_main(cli.connect, cli.history);
    if (cli.connect || cli.history)
        return usage_error("%s needs --repl",
                           cli.connect ? "--connect" : "--history");
    rc = server_main(&cli.cfg);
    free(cli.cfg.settings);
    return rc;
}
