/*
 * One lease on one platform connection (an IRC network account, a Matrix
 * account), so that among several parley instances on one Redis exactly
 * one connects it.  The state machine: standby (another instance holds
 * it, or Redis is down) -> acquiring -> held -> lost.  A held lease is
 * renewed every ttl/3; it counts as held locally only until ttl - ttl/4
 * after the last renewal was sent, measured on the monotonic clock, so
 * that this instance stops sending before Redis lets anyone else take
 * the account.  A lost lease is final for this lease object: the owner
 * (main.c) disconnects the account and the process restarts as a
 * standby (see README "Several instances").  The Redis side, and the
 * fencing that refuses a stale holder's writes, is state_lease.c.
 */
#ifndef PARLEY_LEASE_H
#define PARLEY_LEASE_H

#include <stdint.h>

struct lease;
struct loop;
struct store;

enum lease_state {
    LEASE_STANDBY = 0,      /* not held; trying again when it may expire */
    LEASE_ACQUIRING,        /* first request in flight */
    LEASE_HELD,
    LEASE_LOST              /* was held; renewal failed or came too late */
};

/* Called on every change of state (loop thread), also from inside the
 * lease's own callbacks: the owner may call lease_* but not lease_free. */
typedef void lease_change_fn(struct lease *l, enum lease_state state,
                             void *privdata);

/*
 * A lease on lease:<platform>:<account> for owner (the instance name),
 * ttl_ms long (at least 300).  All strings are copied.  Nothing happens
 * until lease_start.  Returns PARLEY_OK, PARLEY_ERR_OTHER for bad
 * arguments or PARLEY_ERR_OOM.
 */
int lease_create(struct lease **out, struct loop *loop, struct store *st,
                 const char *platform, const char *account,
                 const char *owner, int ttl_ms, lease_change_fn *fn,
                 void *privdata);
/* Begin: try to acquire now, and keep trying while standing by. */
void lease_start(struct lease *l);
/*
 * Whether this instance may send on the account right now: held, and
 * the local deadline (ttl - margin after the last renewal was sent) not
 * passed.  Reads the clock itself rather than the loop's cached time, so
 * a process resumed after SIGSTOP sees the pause before its first send.
 * NULL (no lease configured) may always send.
 */
int lease_may_send(const struct lease *l);
/* The state; NULL (no lease configured) counts as held. */
enum lease_state lease_get_state(const struct lease *l);
/* "standby", "acquiring", "held", "lost". */
const char *lease_state_name(enum lease_state s);
/* The fencing token while held (or last held), else 0. */
long long lease_token(const struct lease *l);
/*
 * Shutdown: stop renewing and give the lease up in Redis if it is still
 * ours, so another instance takes over at once rather than after the
 * TTL.  done runs once when Redis answered (or at once when there was
 * nothing to release or Redis is down); done may be NULL.
 */
typedef void lease_released_fn(void *privdata);
void lease_release(struct lease *l, lease_released_fn *done,
                   void *privdata);
/* Stop the timers and free; a request in flight finds it gone. */
void lease_free(struct lease *l);

/* Milliseconds on the monotonic clock (for the send check and tests). */
uint64_t lease_clock_ms(void);

#endif
