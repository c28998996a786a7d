/* Server configuration: filled by main.c from the command line, read-only
 * everywhere else. */
#ifndef ECHOHOST_CONFIG_H
#define ECHOHOST_CONFIG_H

#include <stddef.h>

enum eh_model { EH_MODEL_EVENT, EH_MODEL_FORK };
enum eh_listen_kind { EH_LISTEN_TCP, EH_LISTEN_UDP, EH_LISTEN_UNIX };

#define EH_LISTEN_MAX 16        /* --listen given at most this often */
#define EH_UDP_RATE 1000        /* --udp-rate default, datagrams/s */
#define EH_UNIX_MODE 0600       /* a unix: listener's file, unless ,mode= */
#define EH_UNIX_PATH_MAX 107    /* longest unix: path (sun_path, its NUL) */
#define EH_PROXY_TIMEOUT 3.0    /* --proxy-timeout default, seconds */

/* One --listen: "127.0.0.1:8888", "[::1]:7", "*:7", "udp://127.0.0.1:7",
 * "unix:/run/echo.sock", the stream ones optionally with ",proxy" (and a
 * unix one with ",mode=0660"). */
struct eh_listen {
    enum eh_listen_kind kind;
    char host[256];             /* "127.0.0.1", "::1", "0.0.0.0"; unix: the
                                   path (shorter than sun_path) */
    int port;                   /* 0: the kernel picks, the log says which */
    int proxy;                  /* ,proxy: a PROXY v1/v2 header comes first */
    unsigned mode;              /* unix: the socket file's mode */
};

struct eh_config {
    struct eh_listen listen[EH_LISTEN_MAX];     /* in command-line order */
    int nlisten;                /* 1..EH_LISTEN_MAX */
    long udp_rate;              /* datagrams/s per source address; 0 = off */
    long busy_poll_us;          /* a worker polls this long before sleeping */
    double proxy_timeout;       /* seconds a PROXY header may take (> 0) */
    int workers;                /* event model: worker processes */
    enum eh_model model;
    int max_conns;              /* per worker (event) / live children (fork) */
    double idle_timeout;        /* seconds; 0 = never */
    size_t high_water;          /* per-connection output bytes before pausing reads */
    size_t low_water;           /* resume reading below this */
    double drain_timeout;       /* seconds SIGTERM waits for in-flight echoes */
    double upgrade_timeout;     /* seconds SIGUSR2 waits for the new binary */
    char *const *argv;          /* the command line: SIGUSR2 runs it again */
    const char *handler;        /* Lua handler file, or NULL for C echo */
    int watch;                  /* reload the handler when its file changes */
    const char *control;        /* control socket path, or NULL */
    size_t lua_mem_limit;       /* bytes per Lua state; 0 = unlimited */
    long lua_budget;            /* VM instructions per callback/resume; 0 = none */
    int access_log;             /* one line per connection when it ends */
    size_t shared_size;         /* bytes of the shared dictionary */
    size_t pubsub_size;         /* bytes of the pubsub ring */
    const char *log_file;       /* --log FILE, or NULL: stderr */
    const char *pid_file;       /* --pid-file PATH, or NULL */
    const char *user;           /* --user NAME: drop root to it, or NULL */
    const char **settings;      /* --set KEY=VALUE, as given (argv) */
    int nsettings;
    int metrics;                /* --metrics HOST:PORT given */
    char metrics_host[256];
    int metrics_port;
};

void config_defaults(struct eh_config *c);

#endif
