/* The message bus of publish/subscribe: one ring of messages in MAP_SHARED
 * memory that every process forked after bus_create sees, and a doorbell
 * per reading process (an abstract unix datagram socket). No Lua. */
#ifndef ECHOHOST_BUS_H
#define ECHOHOST_BUS_H

#include <stddef.h>
#include <stdint.h>

#define BUS_CHANNEL_MAX 250             /* bytes */
#define BUS_MESSAGE_MAX (64 * 1024)     /* bytes, and at most a quarter of
                                           the ring */
#define BUS_MIN (4 * 1024)              /* --pubsub-size's range */
#define BUS_MAX (1024 * 1024 * 1024)
#define BUS_READERS 1024                /* processes reading at once */

struct bus;
struct bus_reader;

/* A ring of capacity bytes. NULL with errno set on failure. */
struct bus *bus_create(size_t capacity);
void bus_free(struct bus *b);
size_t bus_message_max(const struct bus *b);

/* Appends a message, dropping the oldest ones when the ring is full, and
 * rings every reader that waits. 0, or -1 (EMSGSIZE: longer than
 * bus_message_max). A message is read by the readers attached before it. */
int bus_publish(struct bus *b, const char *ch, size_t chlen,
                const char *msg, size_t len);

/* The sequence number the next message will have. */
uint64_t bus_next(const struct bus *b);

/* This process reads from now on: NULL with errno set (ENOSPC: every slot
 * is taken by a live process). */
struct bus_reader *bus_attach(struct bus *b);
void bus_detach(struct bus_reader *r);
/* Readable when messages may be waiting: then call bus_read. */
int bus_reader_fd(const struct bus_reader *r);

typedef void bus_fn(void *ud, uint64_t seq, const char *ch, size_t chlen,
                    const char *msg, size_t len);

/* Calls fn for each message published since the last call (those that were
 * there when it began), outside the ring's lock. Messages the ring dropped
 * before this reader read them are added to *lost. */
void bus_read(struct bus_reader *r, bus_fn *fn, void *ud, uint64_t *lost);

#endif
