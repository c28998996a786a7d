/* echohost.pubsub: publish(channel, message) for every Lua state, and the
 * subscriptions of conn:subscribe, one registry per process (a channel's
 * subscribers may live in several handler states). One reader of the bus
 * per process, attached while some subscription is active; its messages
 * go to the runtimes through lconn_ops.deliver. README "Publish and
 * subscribe" is the contract; lua/echohost/bus.lua is its Lua twin. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "bus.h"
#include "log.h"
#include "lpubsub.h"

#define CHAN_BUCKETS 4096

int luaopen_echohost_pubsub(lua_State *L);

struct lchan {
    struct lchan *hnext;
    struct lsub *head, *tail;
    int nsubs;
    size_t len;
    char name[];
};

struct lsub_box {
    struct lsub *s;                 /* NULL once cancelled */
};

static struct bus *ps_bus;          /* this process tree's */
static struct bus_reader *ps_reader;
static struct lchan *ps_chans[CHAN_BUCKETS];
static int ps_active;               /* active subscriptions, every state */
static int ps_reading;              /* > 0 while messages go out */
static struct lsub *ps_dead;        /* cancelled meanwhile: freed after */
static uint64_t ps_lost;
static _Atomic uint64_t *ps_lost_counter;
static void (*ps_watch_add)(int fd);
static void (*ps_watch_del)(int fd);

int lpubsub_init(size_t capacity, char *err, size_t errlen) {
    struct bus *b = bus_create(capacity);

    if (b == NULL) {
        snprintf(err, errlen, "pubsub: %s", strerror(errno));
        return -1;
    }
    bus_free(ps_bus);
    ps_bus = b;
    return 0;
}

static struct bus *bus_of(lua_State *L) {
    char err[128];

    if (ps_bus == NULL && lpubsub_init(LPUBSUB_DEFAULT, err, sizeof err) < 0)
        luaL_error(L, "%s", err);
    return ps_bus;
}

void lpubsub_set_watch(void (*add)(int fd), void (*del)(int fd)) {
    ps_watch_add = add;
    ps_watch_del = del;
}

int lpubsub_fd(void) {
    return ps_reader ? bus_reader_fd(ps_reader) : -1;
}

uint64_t lpubsub_lost(void) {
    return ps_lost;
}

void lpubsub_count_lost(_Atomic uint64_t *counter) {
    ps_lost_counter = counter;
}

/* --- channels ------------------------------------------------------------ */

static unsigned chan_hash(const char *s, size_t len) {
    unsigned h = 2166136261u;

    while (len--)
        h = (h ^ (unsigned char)*s++) * 16777619u;
    return h & (CHAN_BUCKETS - 1);
}

static struct lchan *chan_find(const char *name, size_t len) {
    struct lchan *c = ps_chans[chan_hash(name, len)];

    while (c && (c->len != len || memcmp(c->name, name, len) != 0))
        c = c->hnext;
    return c;
}

static struct lchan *chan_get(const char *name, size_t len) {
    struct lchan *c = chan_find(name, len);
    unsigned i;

    if (c || (c = calloc(1, sizeof *c + len)) == NULL)
        return c;
    memcpy(c->name, name, len);
    c->len = len;
    i = chan_hash(name, len);
    c->hnext = ps_chans[i];
    ps_chans[i] = c;
    return c;
}

static void chan_drop(struct lchan *c) {
    struct lchan **p = &ps_chans[chan_hash(c->name, c->len)];

    while (*p != c)
        p = &(*p)->hnext;
    *p = c->hnext;
    free(c);
}

/* Takes s off its channel and frees it (the channel too, once empty). */
static void sub_free(struct lsub *s) {
    struct lchan *c = s->chan;

    if (s->prev)
        s->prev->next = s->next;
    else
        c->head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        c->tail = s->prev;
    if (--c->nsubs == 0)
        chan_drop(c);
    free(s);
}

/* --- the reader ---------------------------------------------------------- */

static void reader_stop(void) {
    if (ps_reader == NULL || ps_active > 0 || ps_reading)
        return;
    if (ps_watch_del)
        ps_watch_del(bus_reader_fd(ps_reader));
    bus_detach(ps_reader);
    ps_reader = NULL;
}

/* One message for this process's subscribers of its channel. Those that
 * subscribed after it was published (from > seq) do not get it, nor do
 * those cancelled by an earlier delivery. */
static void deliver(void *ud, uint64_t seq, const char *ch, size_t chlen,
                    const char *msg, size_t len) {
    struct lchan *c = chan_find(ch, chlen);
    (void)ud;

    for (struct lsub *s = c ? c->head : NULL; s; s = s->next)
        if (s->u && s->u->ops && s->u->ops->deliver && seq >= s->from)
            s->u->ops->deliver(s->u, s, ch, chlen, msg, len);
}

void lpubsub_dispatch(void) {
    uint64_t lost = 0;

    if (ps_reader == NULL)
        return;
    ps_reading++;
    bus_read(ps_reader, deliver, NULL, &lost);
    ps_reading--;
    if (ps_reading == 0) {
        while (ps_dead) {
            struct lsub *s = ps_dead;
            ps_dead = s->dead;
            sub_free(s);
        }
    }
    if (lost) {
        ps_lost += lost;
        if (ps_lost_counter)            /* one writer: this process */
            atomic_store_explicit(ps_lost_counter, atomic_load_explicit(
                ps_lost_counter, memory_order_relaxed) + lost,
                memory_order_relaxed);
        log_warn("pubsub: %llu messages lost: this process read too slowly "
                 "(a larger --pubsub-size keeps more)",
                 (unsigned long long)lost);
    }
    reader_stop();
}

/* --- subscriptions ------------------------------------------------------- */

static void sub_cancel(lua_State *L, struct lsub *s) {
    struct lconn *u = s->u;
    struct lsub **p;

    if (u == NULL)
        return;
    for (p = &u->subs; *p != s; p = &(*p)->cnext)
        ;
    *p = s->cnext;
    u->nsubs--;
    s->u = NULL;
    s->box->s = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, s->fn_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, s->self_ref);
    if (ps_reading) {
        s->dead = ps_dead;
        ps_dead = s;
    } else {
        sub_free(s);
    }
    ps_active--;
    reader_stop();
}

void lpubsub_cancel_all(lua_State *L, struct lconn *u) {
    while (u->subs)
        sub_cancel(L, u->subs);
}

static int reader_start(lua_State *L) {
    struct bus *b = bus_of(L);

    if (ps_reader)
        return 0;
    if ((ps_reader = bus_attach(b)) == NULL)
        return -1;
    if (ps_watch_add)
        ps_watch_add(bus_reader_fd(ps_reader));
    return 0;
}

int lpubsub_subscribe(lua_State *L, struct lconn *u) {
    size_t chlen;
    const char *ch = lua_tolstring(L, 2, &chlen);
    struct lsub_box *box;
    struct lsub *s;
    struct lchan *c;

    if (reader_start(L) < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "pubsub: %s", errno == ENOSPC ?
                        "every reader slot is taken (1024 "
                        "processes subscribe)" : strerror(errno));
        return 2;
    }
    box = lua_newuserdatauv(L, sizeof *box, 1);
    box->s = NULL;
    luaL_setmetatable(L, LPUBSUB_NAME);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);                /* it keeps its conn */
    if ((c = chan_get(ch, chlen)) == NULL ||
        (s = calloc(1, sizeof *s)) == NULL) {
        if (c && c->nsubs == 0)
            chan_drop(c);
        reader_stop();
        return luaL_error(L, "not enough memory");
    }
    lua_pushvalue(L, 3);
    s->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->u = u;
    s->box = box;
    box->s = s;
    s->from = bus_next(ps_bus);
    s->chan = c;
    s->prev = c->tail;
    if (c->tail)
        c->tail->next = s;
    else
        c->head = s;
    c->tail = s;
    c->nsubs++;
    s->cnext = u->subs;
    u->subs = s;
    u->nsubs++;
    ps_active++;
    return 1;
}

int lpubsub_push(lua_State *L, struct lsub *s, const char *ch, size_t chlen,
                 const char *msg, size_t len) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->fn_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->self_ref);
    lua_getiuservalue(L, -1, 1);                /* fn, box, conn */
    lua_remove(L, -2);
    lua_pushlstring(L, msg, len);
    lua_pushlstring(L, ch, chlen);
    return 3;
}

/* --- Lua ----------------------------------------------------------------- */

static const char *checkchannel(lua_State *L, int arg, size_t *len) {
    const char *ch = NULL;

    if (lua_type(L, arg) == LUA_TSTRING)
        ch = lua_tolstring(L, arg, len);
    luaL_argcheck(L, ch && *len >= 1 && *len <= BUS_CHANNEL_MAX, arg,
                  "channel of 1..250 bytes expected");
    return ch;
}

/* publish(channel, message) -> true; delivered from the next loop turn on. */
static int ps_publish(lua_State *L) {
    size_t chlen, len;
    const char *ch = checkchannel(L, 1, &chlen), *msg;
    struct bus *b;

    if (lua_type(L, 2) != LUA_TSTRING)
        luaL_typeerror(L, 2, "string");
    msg = lua_tolstring(L, 2, &len);
    b = bus_of(L);
    if (len > bus_message_max(b))
        return luaL_error(L, "message too large (at most %I bytes)",
                          (lua_Integer)bus_message_max(b));
    bus_publish(b, ch, chlen, msg, len);
    lua_pushboolean(L, 1);
    return 1;
}

static int ps_message_max(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)bus_message_max(bus_of(L)));
    return 1;
}

static struct lsub_box *checkbox(lua_State *L) {
    return luaL_checkudata(L, 1, LPUBSUB_NAME);
}

static int sub_cancel_l(lua_State *L) {
    struct lsub_box *box = checkbox(L);

    if (box->s)
        sub_cancel(L, box->s);
    lua_pushboolean(L, 1);
    return 1;
}

static int sub_tostring(lua_State *L) {
    lua_pushstring(L, checkbox(L)->s ? "echohost.subscription (active)" :
                   "echohost.subscription (cancelled)");
    return 1;
}

static const luaL_Reg sub_methods[] = {
    {"cancel", sub_cancel_l},
    {NULL, NULL}
};

static const luaL_Reg ps_funcs[] = {
    {"publish", ps_publish},
    {"message_max", ps_message_max},
    {NULL, NULL}
};

void lpubsub_createmeta(lua_State *L) {
    if (luaL_newmetatable(L, LPUBSUB_NAME)) {
        lua_pushcfunction(L, sub_tostring);
        lua_setfield(L, -2, "__tostring");
        luaL_newlib(L, sub_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
}

int luaopen_echohost_pubsub(lua_State *L) {
    bus_of(L);
    lpubsub_createmeta(L);
    luaL_newlib(L, ps_funcs);
    return 1;
}
