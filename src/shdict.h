/* The shared dictionary's store: keys to typed values in one MAP_SHARED
 * region that every process forked after shdict_create sees. No Lua. */
#ifndef ECHOHOST_SHDICT_H
#define ECHOHOST_SHDICT_H

#include <stddef.h>
#include <stdint.h>

#define SHDICT_KEY_MAX 250              /* bytes */
#define SHDICT_MIN (4 * 1024)           /* --shared-size's range */
#define SHDICT_MAX (1024 * 1024 * 1024)
#define SHDICT_ENTRY 48                 /* the fixed part of an entry's cost */

enum shdict_result {
    SHDICT_OK,
    SHDICT_NOT_FOUND,                   /* missing or expired */
    SHDICT_EXISTS,                      /* add: the key is there */
    SHDICT_NO_MEMORY,                   /* the live entries leave no room */
    SHDICT_NOT_NUMBER                   /* incr of a string or a boolean */
};

enum shdict_type {
    SHDICT_NIL,                         /* set: delete */
    SHDICT_BOOLEAN,
    SHDICT_INTEGER,
    SHDICT_NUMBER,
    SHDICT_STRING
};

struct shdict_value {
    enum shdict_type type;
    union {
        int boolean;
        int64_t integer;
        double number;
    } u;
    const char *str;                    /* SHDICT_STRING: len bytes */
    size_t len;
};

struct shdict;

/* A dictionary of capacity bytes of entries (SHDICT_MIN..SHDICT_MAX is
 * what the server allows; 1..SHDICT_MAX works). NULL with errno set on
 * failure. Every process forked afterwards shares it. */
struct shdict *shdict_create(size_t capacity);

/* Unmaps d in this process (others keep their mapping). */
void shdict_free(struct shdict *d);

/* The cost of an entry in bytes: SHDICT_ENTRY + klen + the value's size
 * (a string its length, a number 8, a boolean 1), rounded up to 8. */
size_t shdict_cost(size_t klen, const struct shdict_value *v);

/* Every function below takes a key of 1..SHDICT_KEY_MAX bytes, locks d for
 * its duration and never calls out while it holds the lock. Times are
 * seconds on CLOCK_MONOTONIC; a ttl of 0 never expires. */

/* OK and *v, or NOT_FOUND. A string is copied into buf (v->str = buf) when
 * its v->len fits in bufsize; otherwise v->str is NULL and nothing is
 * copied: call again with a buffer of v->len bytes (it may have changed). */
int shdict_get(struct shdict *d, const char *key, size_t klen,
               struct shdict_value *v, char *buf, size_t bufsize);

/* Stores v for ttl seconds (v->type SHDICT_NIL deletes): OK, or NO_MEMORY
 * when it does not fit even after dropping the expired entries; then the
 * key keeps its old value. */
int shdict_set(struct shdict *d, const char *key, size_t klen,
               const struct shdict_value *v, double ttl);

/* shdict_set of a key that is not there (or expired): OK, EXISTS or
 * NO_MEMORY. */
int shdict_add(struct shdict *d, const char *key, size_t klen,
               const struct shdict_value *v, double ttl);

/* Adds n (an integer or a number) to the key's number: integers wrap, an
 * integer and a number give a number; the key keeps its ttl. A missing key
 * is stored as *init + n with ttl when init is not NULL. OK and *out (the
 * new value), NOT_FOUND (missing, no init), NOT_NUMBER or NO_MEMORY. */
int shdict_incr(struct shdict *d, const char *key, size_t klen,
                const struct shdict_value *n, const struct shdict_value *init,
                double ttl, struct shdict_value *out);

/* Removes the key if it is there. OK. */
int shdict_delete(struct shdict *d, const char *key, size_t klen);

/* OK and *left, the seconds until the key expires (0: never), or
 * NOT_FOUND. */
int shdict_ttl(struct shdict *d, const char *key, size_t klen, double *left);

/* Removes every key. */
void shdict_flush(struct shdict *d);

/* The capacity minus the cost of the entries that have not expired. */
size_t shdict_free_space(struct shdict *d);

size_t shdict_capacity(const struct shdict *d);

#endif
