/* Control commands: stats() (read from the shared statistics), conns(),
 * handler(path), reload() (asked of every worker over its channel) in a
 * control session, and the worker's side. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "conn.h"
#include "control.h"
#include "control_proto.h"
#include "log.h"
#include "worker.h"

#define CONTROL_CONNS_MAX 500           /* connections listed per worker */

/* --- session: asking the workers through the master ---------------------- */

/* Loads one reply's table constructor in an empty environment: a table on
 * the stack, or an error table. */
static void cmd_parse(lua_State *L, const char *text, size_t len) {
    lua_pushliteral(L, "return ");
    lua_pushlstring(L, text, len);
    lua_concat(L, 2);
    if (luaL_loadbufferx(L, lua_tostring(L, -1), len + 7, "=worker",
                         "t") != LUA_OK ||
        (lua_newtable(L), lua_setupvalue(L, -2, 1),
         lua_pcall(L, 0, 1, 0)) != LUA_OK || !lua_istable(L, -1)) {
        lua_pop(L, 2);
        lua_newtable(L);
        lua_pushliteral(L, "bad reply from a worker");
        lua_setfield(L, -2, "error");
        return;
    }
    lua_remove(L, -2);                          /* the source text */
}

/* What the master adds to the workers' replies. */
struct cmd_answer {
    lua_Integer operators, pid, reload_failures;
    int slots;                  /* the highest slot answered, plus one */
    int refused;                /* the master's error is on the stack */
};

/* One entry "<kind> <a> <b> <len>\n<len bytes>" at *p: 0 and its fields,
 * or -1 when malformed. */
static int cmd_entry(const char **p, const char *end, char *kind,
                     long long *a, long long *b, const char **data,
                     size_t *len) {
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    char head[96];
    size_t hl;

    if (nl == NULL || (hl = (size_t)(nl - *p)) >= sizeof head)
        return -1;
    memcpy(head, *p, hl);
    head[hl] = '\0';
    if (sscanf(head, "%c %lld %lld %zu", kind, a, b, len) != 4 ||
        *len > (size_t)(end - nl - 1))
        return -1;
    *data = nl + 1;
    *p = nl + 1 + *len;
    return 0;
}

static void cmd_set_worker(lua_State *L, lua_Integer slot, lua_Integer pid) {
    lua_pushinteger(L, slot);
    lua_setfield(L, -2, "slot");
    lua_pushinteger(L, pid);
    lua_setfield(L, -2, "pid");
}

/* The entries of an answer (string at the top) into the table below it,
 * one per worker at [slot + 1]; fills a. */
static void cmd_entries(lua_State *L, struct cmd_answer *a) {
    size_t len;
    const char *p = lua_tolstring(L, -1, &len), *end = p + len, *data;
    long long x, y;
    char kind;

    while (p < end && cmd_entry(&p, end, &kind, &x, &y, &data, &len) == 0) {
        if (kind == 'D') {
            a->operators = x;
            a->pid = y;
            a->reload_failures = strtoll(data, NULL, 10);
        } else if (kind == 'F' && !a->refused) {
            lua_pushlstring(L, data, len);
            lua_replace(L, -3);                 /* where the table was */
            a->refused = 1;
        } else if ((kind == 'W' || kind == 'X') && !a->refused && x >= 0 &&
                   x < 1 << 20) {
            if (kind == 'W') {
                cmd_parse(L, data, len);
            } else {
                lua_newtable(L);
                lua_pushfstring(L, "worker %d: %s", (int)y,
                                lua_pushlstring(L, data, len));
                lua_remove(L, -2);
                lua_setfield(L, -2, "error");
            }
            cmd_set_worker(L, x, y);
            lua_rawseti(L, -3, x + 1);
            if (x + 1 > a->slots)
                a->slots = (int)(x + 1);
        }
    }
}

static void cmd_compact(lua_State *L, int n);

/* Asks every worker (through the master) and leaves a sequence with one
 * table per worker: its reply with slot and pid added, or {error = ...};
 * or, when the master refused (a handler that does not load), its
 * message, with a->refused set. */
static void cmd_ask(lua_State *L, struct control_sess *s, const char *req,
                    struct cmd_answer *a) {
    memset(a, 0, sizeof *a);
    lua_newtable(L);
    control_sess_ask(L, s, req);
    cmd_entries(L, a);
    lua_pop(L, 1);                              /* the answer */
    if (!a->refused)
        cmd_compact(L, a->slots);
}

/* The per-slot table on top, without the empty slots, as a sequence. */
static void cmd_compact(lua_State *L, int n) {
    int j = 0;

    lua_createtable(L, n, 0);
    for (int i = 1; i <= n; i++)
        if (lua_rawgeti(L, -2, i) == LUA_TNIL)
            lua_pop(L, 1);
        else
            lua_rawseti(L, -2, ++j);
    lua_remove(L, -2);
}

/* --- session: its functions ---------------------------------------------- */

static struct control_sess *cmd_sess(lua_State *L) {
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* t[name] = v for the table on top. */
static void cmd_setint(lua_State *L, const char *name, uint64_t v) {
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, name);
}

/* A ,proxy listener's header counters, into its table on top. */
static void cmd_proxy_stats(lua_State *L, const struct listener_stats *st) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "proxy");
    cmd_setint(L, "proxy_ok", stat_get(&st->proxy_ok));
    cmd_setint(L, "proxy_local", stat_get(&st->proxy_local));
    cmd_setint(L, "proxy_missing", stat_get(&st->proxy_missing));
    cmd_setint(L, "proxy_malformed", stat_get(&st->proxy_malformed));
    cmd_setint(L, "proxy_oversized", stat_get(&st->proxy_oversized));
    cmd_setint(L, "proxy_truncated", stat_get(&st->proxy_truncated));
    cmd_setint(L, "proxy_timeout", stat_get(&st->proxy_timeout));
}

/* A listener's counters: {name, kind = "tcp", conns, ...} or the UDP ones. */
static void cmd_listener_stats(lua_State *L, const struct worker_listener *l) {
    const struct listener_stats *st = l->stats;
    const struct udp_stats *u = &st->udp;

    lua_createtable(L, 0, 13);
    lua_pushstring(L, l->name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, l->kind == EH_LISTEN_TCP ? "tcp" :
                      l->kind == EH_LISTEN_UNIX ? "unix" : "udp");
    lua_setfield(L, -2, "kind");
    if (l->kind != EH_LISTEN_UDP) {
        cmd_setint(L, "conns", stat_get(&st->conns_open));
        cmd_setint(L, "accepted", stat_get(&st->accepted));
        cmd_setint(L, "bytes_in", stat_get(&st->bytes_in));
        cmd_setint(L, "bytes_out", stat_get(&st->bytes_out));
        if (l->proxy)
            cmd_proxy_stats(L, st);
        return;
    }
    cmd_setint(L, "datagrams_in", stat_get(&u->datagrams_in));
    cmd_setint(L, "datagrams_out", stat_get(&u->datagrams_out));
    cmd_setint(L, "bytes_in", stat_get(&u->bytes_in));
    cmd_setint(L, "bytes_out", stat_get(&u->bytes_out));
    cmd_setint(L, "dropped_guard", stat_get(&u->dropped_guard));
    cmd_setint(L, "dropped_rate", stat_get(&u->dropped_rate));
    cmd_setint(L, "dropped_full", stat_get(&u->dropped_full));
    cmd_setint(L, "truncated", stat_get(&u->truncated));
    cmd_setint(L, "errors", stat_get(&u->errors));
    cmd_setint(L, "faults", stat_get(&u->faults));
    cmd_setint(L, "no_reply", stat_get(&u->no_reply));
    cmd_setint(L, "polled", stat_get(&u->polled));
}

/* Slot i's figures, read where its worker writes them: {slot, pid, conns,
 * ..., uptime, listeners = {...}}. */
static void cmd_worker_stats(lua_State *L, const struct server_stats *st,
                             int i) {
    const struct worker_stats *w = &st->workers[i];

    lua_createtable(L, 0, 16);
    cmd_setint(L, "slot", (uint64_t)i);
    cmd_setint(L, "pid", stat_get(&w->pid));
    cmd_setint(L, "conns", stat_get(&w->conns_open));
    cmd_setint(L, "accepted", stat_get(&w->accepted));
    cmd_setint(L, "closed", stat_get(&w->closed));
    cmd_setint(L, "rejected", stat_get(&w->rejected));
    cmd_setint(L, "bytes_in", stat_get(&w->bytes_in));
    cmd_setint(L, "bytes_out", stat_get(&w->bytes_out));
    cmd_setint(L, "errors", stats_errors(w));
    cmd_setint(L, "faults", stat_get(&w->faults));
    cmd_setint(L, "timeouts", stat_get(&w->timeouts));
    cmd_setint(L, "reloads", stat_get(&w->reloads));
    cmd_setint(L, "handler_version", stat_get(&w->handler_version));
    cmd_setint(L, "lua_mem", stat_get(&w->lua_mem));
    cmd_setint(L, "pubsub_lost", stat_get(&w->pubsub_lost));
    lua_pushnumber(L, (ev_now_ms() - (long long)stat_get(&w->started_ms)) /
                   1000.0);
    lua_setfield(L, -2, "uptime");
    lua_createtable(L, st->nlisten, 0);
    for (int l = 0; l < st->nlisten; l++) {
        cmd_listener_stats(L, &st->listeners[i * st->nlisten + l]);
        lua_rawseti(L, -2, l + 1);
    }
    lua_setfield(L, -2, "listeners");
}

/* The sum of field name over the worker tables in the sequence at idx. */
static lua_Integer cmd_sum(lua_State *L, int idx, const char *name) {
    lua_Integer sum = 0;
    lua_Integer n = luaL_len(L, idx);

    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        lua_getfield(L, -1, name);
        sum += lua_tointeger(L, -1);
        lua_pop(L, 2);
    }
    return sum;
}

static const char *const cmd_totals[] = {
    "conns", "accepted", "bytes_in", "bytes_out", "errors", "faults", NULL
};

/* Adds the worker's listener table at idx into the sums at idx + 1 (the
 * same listener in every worker): numbers added, name and kind copied. */
static void cmd_add_listener(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pushvalue(L, -2);                   /* key, value, key */
        if (lua_isinteger(L, -2)) {
            lua_pushvalue(L, -1);
            lua_rawget(L, idx + 1);
            lua_Integer sum = lua_tointeger(L, -1) + lua_tointeger(L, -3);
            lua_pop(L, 1);
            lua_pushinteger(L, sum);
        } else {
            lua_pushvalue(L, -2);
        }
        lua_rawset(L, idx + 1);
        lua_pop(L, 1);
    }
}

/* The listeners of every worker (the sequence at idx), summed: a sequence
 * of {name, kind, counters...} in --listen order. */
static void cmd_sum_listeners(lua_State *L, int idx) {
    lua_Integer n = luaL_len(L, idx);

    idx = lua_absindex(L, idx);
    lua_newtable(L);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        if (lua_getfield(L, -1, "listeners") == LUA_TTABLE) {
            for (lua_Integer j = 1; lua_rawgeti(L, -1, j) == LUA_TTABLE;
                 j++) {
                if (lua_rawgeti(L, -4, j) != LUA_TTABLE) {
                    lua_pop(L, 1);
                    lua_newtable(L);
                    lua_pushvalue(L, -1);
                    lua_rawseti(L, -6, j);      /* sums[j] = {} */
                }
                lua_pushvalue(L, -2);           /* the worker's, the sums */
                lua_rotate(L, -2, 1);
                cmd_add_listener(L, -2);
                lua_pop(L, 3);
            }
            lua_pop(L, 1);                      /* the nil ending it */
        }
        lua_pop(L, 2);
    }
}

/* stats() -> {pid, operators, conns, accepted, bytes_in, bytes_out, errors,
 * faults, reload_failures, listeners = {{name, kind, ...}, ...},
 * workers = {{slot, pid, conns, ..., handler_version, listeners}, ...}}:
 * read from the shared statistics (no worker is asked, so a busy one is
 * listed as well). */
static int cmd_stats(lua_State *L) {
    struct control_sess *s = cmd_sess(L);
    const struct server_stats *st = s->ctl->stats;
    struct cmd_answer a;
    int n = 0;

    cmd_ask(L, s, "stats", &a);                 /* the master's figures */
    lua_pop(L, 1);                              /* (no worker is asked) */
    lua_newtable(L);                            /* the slots with a worker */
    for (int i = 0; st && i < st->nworkers; i++) {
        if (stat_get(&st->workers[i].pid) == 0)
            continue;
        cmd_worker_stats(L, st, i);
        lua_rawseti(L, -2, ++n);
    }
    lua_newtable(L);
    for (int i = 0; cmd_totals[i]; i++) {
        lua_pushinteger(L, cmd_sum(L, -2, cmd_totals[i]));
        lua_setfield(L, -2, cmd_totals[i]);
    }
    lua_pushinteger(L, a.operators);
    lua_setfield(L, -2, "operators");
    lua_pushinteger(L, a.pid);
    lua_setfield(L, -2, "pid");
    cmd_sum_listeners(L, -2);
    lua_setfield(L, -2, "listeners");
    lua_pushinteger(L, a.reload_failures);
    lua_setfield(L, -2, "reload_failures");
    lua_rotate(L, -2, 1);
    lua_setfield(L, -2, "workers");
    return 1;
}

static int cmd_less_id(lua_State *L) {
    lua_getfield(L, 1, "id");
    lua_getfield(L, 2, "id");
    lua_pushboolean(L, lua_tointeger(L, -2) < lua_tointeger(L, -1));
    return 1;
}

/* Sorts the sequence on top by id with table.sort. */
static void cmd_sort(lua_State *L) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, LUA_TABLIBNAME);
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, -4);
    lua_pushcfunction(L, cmd_less_id);
    lua_call(L, 2, 0);
    lua_pop(L, 2);
}

/* conns() -> {{id, peer, listener, worker, age, bytes_in, bytes_out}, ...}
 * by id. */
static int cmd_conns(lua_State *L) {
    struct control_sess *s = cmd_sess(L);
    struct cmd_answer a;
    lua_Integer n, j = 0;

    cmd_ask(L, s, "conns", &a);
    lua_newtable(L);
    n = luaL_len(L, -2);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -2, i);                  /* a worker's list */
        lua_Integer m = luaL_len(L, -1);
        lua_getfield(L, -1, "pid");
        for (lua_Integer k = 1; k <= m; k++) {
            lua_rawgeti(L, -2, k);
            lua_pushvalue(L, -2);
            lua_setfield(L, -2, "worker");      /* conn.worker = pid */
            lua_rawseti(L, -4, ++j);
        }
        lua_pop(L, 2);
    }
    cmd_sort(L);
    return 1;
}

/* Every worker answered {ok = true}: true. Else nil and the first error
 * (a load error says file and line; the old handler stays). */
static int cmd_swap_result(lua_State *L) {
    lua_Integer n = luaL_len(L, -1);

    if (n == 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "no workers to swap (the fork model has none)");
        return 2;
    }
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_getfield(L, -1, "ok") != LUA_TBOOLEAN ||
            !lua_toboolean(L, -1)) {
            lua_getfield(L, -2, "error");
            lua_pushnil(L);
            lua_pushstring(L, luaL_optstring(L, -2, "failed"));
            return 2;
        }
        lua_pop(L, 2);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* handler(path) and reload(): the master loads the file first (a failure
 * is logged there, and answered nil, err); then every worker. */
static int cmd_swap(lua_State *L, struct control_sess *s, const char *req) {
    struct cmd_answer a;

    cmd_ask(L, s, req, &a);
    if (a.refused) {
        lua_pushnil(L);
        lua_rotate(L, -2, 1);
        return 2;
    }
    return cmd_swap_result(L);
}

/* handler(path): every worker loads path (relative to the operator's
 * directory) as its handler. */
static int cmd_handler(lua_State *L) {
    struct control_sess *s = cmd_sess(L);
    const char *path = luaL_checkstring(L, 1);

    if (path[0] == '\0')
        return luaL_argerror(L, 1, "expected a handler file");
    if (path[0] != '/' && s->cwd[0])
        path = lua_pushfstring(L, "%s/%s", s->cwd, path);
    return cmd_swap(L, s, lua_pushfstring(L, "handler %s", path));
}

/* reload(): every worker loads its current handler file again. */
static int cmd_reload(lua_State *L) {
    return cmd_swap(L, cmd_sess(L), "reload");
}

static const luaL_Reg cmd_funcs[] = {
    {"conns", cmd_conns},
    {"handler", cmd_handler},
    {"reload", cmd_reload},
    {"stats", cmd_stats},
    {NULL, NULL}
};

/* os.exit and proc.exit in a session would end the master. */
static int cmd_noexit(lua_State *L) {
    return luaL_error(L, "%s would end the server: not from a control session "
                      "(send SIGTERM to stop it)",
                      lua_tostring(L, lua_upvalueindex(1)));
}

/* proc.fork in a session would copy the master, its sockets and its
 * supervision. */
static int cmd_nofork(lua_State *L) {
    return luaL_error(L, "proc.fork would copy the server's master: not "
                      "from a control session");
}

/* io.write in a session: to the operator, not to the server's stdout. */
static int cmd_write(lua_State *L) {
    struct control_sess *s = cmd_sess(L);
    int n = lua_gettop(L);

    for (int i = 1; i <= n; i++) {
        size_t len;
        const char *p = luaL_checklstring(L, i, &len);
        control_frame(s, CONTROL_FRAME_OUT, p, len);
    }
    return 0;
}

/* Sets table[key] (a global table, when it is there) to f. */
static void cmd_replace(lua_State *L, const char *table, const char *key,
                        lua_CFunction f, const char *up) {
    if (lua_getglobal(L, table) == LUA_TTABLE) {
        lua_pushstring(L, up);
        lua_pushcclosure(L, f, 1);
        lua_setfield(L, -2, key);
    }
    lua_pop(L, 1);
}

void control_openlib(lua_State *L, struct control_sess *s) {
    lua_pushglobaltable(L);
    lua_pushlightuserdata(L, s);
    luaL_setfuncs(L, cmd_funcs, 1);             /* _G.stats = ..., upvalue s */
    lua_pop(L, 1);
    cmd_replace(L, "os", "exit", cmd_noexit, "os.exit");
    cmd_replace(L, "proc", "exit", cmd_noexit, "proc.exit");
    cmd_replace(L, "proc", "fork", cmd_nofork, "proc.fork");
    if (lua_getglobal(L, "io") == LUA_TTABLE) {
        lua_pushlightuserdata(L, s);
        lua_pushcclosure(L, cmd_write, 1);
        lua_setfield(L, -2, "write");           /* io.write = cmd_write */
    }
    lua_pop(L, 1);
}

/* --- worker: answering ---------------------------------------------------- */

struct cmd_out {
    char buf[CONTROL_MSG_MAX];
    size_t len;
    int full;                   /* something did not fit */
};

static void cmd_printf(struct cmd_out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void cmd_printf(struct cmd_out *o, const char *fmt, ...) {
    size_t room = sizeof o->buf - o->len;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(o->buf + o->len, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= room)
        o->full = 1;
    else
        o->len += n;
}

/* s as a Lua string literal: printable ASCII as is, the rest as \ddd. */
static void cmd_quote(struct cmd_out *o, const char *s) {
    cmd_printf(o, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            cmd_printf(o, "\\%c", ch);
        else if (ch < 32 || ch > 126)
            cmd_printf(o, "\\%03u", ch);
        else
            cmd_printf(o, "%c", ch);
    }
    cmd_printf(o, "\"");
}

/* The listing of conns() as it is built: past CONTROL_CONNS_MAX, or when
 * the reply fills, connections are only counted. */
struct cmd_conns {
    struct cmd_out *o;
    long long now;
    int n, more;
};

static void cmd_w_conn(void *ud, const struct conn_info *ci) {
    struct cmd_conns *l = ud;
    struct cmd_out *o = l->o;
    size_t mark = o->len;

    if (l->n >= CONTROL_CONNS_MAX) {
        l->more++;
        return;
    }
    cmd_printf(o, "{id=%llu,peer=", (unsigned long long)ci->id);
    cmd_quote(o, ci->peer);
    cmd_printf(o, ",listener=");
    cmd_quote(o, ci->listener);
    cmd_printf(o, ",bytes_in=%llu,bytes_out=%llu,age=%.3f,idle=%.3f,"
               "pending=%zu},", (unsigned long long)ci->bytes_in,
               (unsigned long long)ci->bytes_out,
               (l->now - ci->opened_ms) / 1000.0,
               (l->now - ci->last_active_ms) / 1000.0, ci->pending);
    if (o->full || o->len > sizeof o->buf - 64) {
        o->len = mark;                  /* keep room for the end */
        o->full = 0;
        l->more++;
        l->n = CONTROL_CONNS_MAX;
        return;
    }
    l->n++;
}

static void cmd_w_conns(struct worker *w, struct cmd_out *o) {
    struct cmd_conns l = {o, ev_now_ms(), 0, 0};

    cmd_printf(o, "{");
    worker_each_conn(w, cmd_w_conn, &l);
    cmd_printf(o, "more=%d}", l.more);
}

/* handler <path>, or reload (path NULL): {ok=true,version=N} or
 * {ok=false,error="file:line: ..."}; the old handler stays on failure. */
static void cmd_w_swap(struct worker *w, const char *path,
                       struct cmd_out *o) {
    struct handler *h = worker_handler(w);
    char err[512];

    if (h == NULL) {
        cmd_printf(o, "{ok=false,error=\"this server echoes in C (started "
                   "without --handler): nothing to swap\"}");
        return;
    }
    if (handler_reload(h, path, err, sizeof err) < 0) {
        worker_note_reload(w, -1);
        cmd_printf(o, "{ok=false,error=");
        cmd_quote(o, err);
        cmd_printf(o, "}");
        return;
    }
    worker_note_reload(w, 0);
    cmd_printf(o, "{ok=true,version=%d}", handler_version(h));
}

static void cmd_w_answer(struct worker *w, const char *req, struct cmd_out *o) {
    if (strcmp(req, "conns") == 0)
        cmd_w_conns(w, o);
    else if (strcmp(req, "reload") == 0)
        cmd_w_swap(w, NULL, o);
    else if (strncmp(req, "handler ", 8) == 0)
        cmd_w_swap(w, req + 8, o);
    else
        cmd_printf(o, "{error=\"unknown request\"}");
    if (o->full) {
        o->len = 0;
        o->full = 0;
        cmd_printf(o, "{error=\"reply too long\"}");
    }
}

/* A worker has one channel: its state is static (no allocation to leak
 * when the worker exits). */
static struct cmd_worker {
    struct worker *w;
    struct cmd_out out;
    char req[CONTROL_MSG_MAX];
} cmd_w;

static void cmd_w_proc(ev_loop *loop, int fd, void *ud, int mask) {
    struct cmd_worker *cw = ud;
    ssize_t n;
    char *sp;

    (void)mask;
    n = recv(fd, cw->req, sizeof cw->req - 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {                       /* the master is gone */
        ev_del(loop, fd, EV_READABLE);
        close(fd);
        return;
    }
    cw->req[n] = '\0';
    if ((sp = strchr(cw->req, ' ')) == NULL)
        return;
    *sp = '\0';
    cw->out.len = 0;
    cw->out.full = 0;
    cmd_printf(&cw->out, "%s ", cw->req);       /* the request's number */
    cmd_w_answer(cw->w, sp + 1, &cw->out);
    if (send(fd, cw->out.buf, cw->out.len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        log_warn("control: reply to the master: %s", strerror(errno));
}

int control_worker_attach(struct worker *w, ev_loop *loop, int fd) {
    cmd_w.w = w;
    return ev_add(loop, fd, EV_READABLE, cmd_w_proc, &cmd_w) == EV_ERR ? -1
                                                                      : 0;
}
