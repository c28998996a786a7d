/* Event loop: file and timer events over epoll [Redis ae.h in miniature].
 * Knows nothing about Lua or connections. */
#ifndef ECHOHOST_EV_H
#define ECHOHOST_EV_H

#include <stdint.h>

#define EV_OK 0
#define EV_ERR -1

#define EV_NONE 0
#define EV_READABLE 1
#define EV_WRITABLE 2
/* With EV_READABLE, for an fd several processes wait on (a shared listening
 * socket): wake one waiter, not all (EPOLLEXCLUSIVE). */
#define EV_EXCLUSIVE 4
/* With EV_READABLE or EV_WRITABLE: report fd when it becomes ready, not
 * every iteration while it is (EPOLLET); kept until the fd leaves the loop.
 * A read proc then reads until a read comes back short or EAGAIN, or calls
 * ev_again when it stops early (a full buffer, EINTR); after EV_HUP, until
 * end of file, since the bytes before it come back short. Adding a mask
 * asks epoll again: an fd ready by then is reported. */
#define EV_EDGE 8
/* In a proc's mask, of an EV_EDGE fd: the peer shut down its side
 * (EPOLLRDHUP); what is left to read ends with end of file. */
#define EV_HUP 16

#define EV_NOMORE -1            /* a timer proc returning this is deleted */

typedef struct ev_loop ev_loop;

typedef void ev_file_proc(ev_loop *loop, int fd, void *ud, int mask);
/* Returns the next delay in ms, or EV_NOMORE. */
typedef long ev_timer_proc(ev_loop *loop, long long id, void *ud);
/* Runs once per iteration, after the events of that iteration. */
typedef void ev_after_proc(ev_loop *loop, void *ud);

ev_loop *ev_create(int setsize);                 /* NULL on failure */
void ev_destroy(ev_loop *loop);
int ev_setsize(ev_loop *loop);
/* The epoll descriptor: a forked child closes it instead of freeing a loop
 * it shares copy-on-write with its parent. */
int ev_fd(const ev_loop *loop);

/* mask is added to what fd already waits for; EV_ERR with errno set. */
int ev_add(ev_loop *loop, int fd, int mask, ev_file_proc *proc, void *ud);
/* mask is removed; when nothing is left the fd leaves the loop. */
void ev_del(ev_loop *loop, int fd, int mask);
int ev_mask(ev_loop *loop, int fd);
/* on: fd, waiting for EV_READABLE only, leaves epoll and its read proc runs
 * once every iteration instead, the loop not sleeping while any fd is
 * polled; off: back to epoll, which reports it at once if it is ready.
 * For a socket too busy to wait on: every packet it sends or receives
 * walks the socket's wait queue, where an epoll entry means a wake-up
 * call [as NAPI polls a busy NIC instead of taking its interrupts].
 * EV_ERR with errno set (EINVAL: EV_WRITABLE, or 64 fds polled already). */
int ev_set_polled(ev_loop *loop, int fd, int on);
int ev_polled(const ev_loop *loop, int fd);
/* fd's read proc runs once more at the end of this iteration or the next,
 * as if it had fired, the loop not sleeping before (once however often it
 * is asked). For an EV_EDGE fd left readable: epoll will not report it. */
void ev_again(ev_loop *loop, int fd);
/* Drops fd from the loop's tables without telling epoll: for a caller that
 * closes fd (not shared with another process) before the loop polls again,
 * since close removes it from epoll; one syscall less per connection. */
void ev_forget(ev_loop *loop, int fd);

/* Returns a timer id (> 0) or EV_ERR. */
long long ev_timer_add(ev_loop *loop, long ms, ev_timer_proc *proc, void *ud);
int ev_timer_del(ev_loop *loop, long long id);

void ev_set_after(ev_loop *loop, ev_after_proc *proc, void *ud);
void ev_run(ev_loop *loop);                      /* until ev_stop */
void ev_stop(ev_loop *loop);
/* Before sleeping in epoll_wait, poll without waiting for up to us
 * microseconds (bounded by the next timer): no sleep and wake-up between
 * close events, at the cost of a busy CPU meanwhile. 0: off. */
void ev_set_busy_poll(ev_loop *loop, long us);
long long ev_now_ms(void);                       /* monotonic clock */
/* ev_now_ms() as of the loop's last wake-up: no syscall, for hot paths. */
long long ev_time_ms(const ev_loop *loop);

#endif
