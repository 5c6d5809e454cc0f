/*
 * The loopback adapter: an in-process platform for tests and benchmarks.
 * Nothing goes over a network.  A test injects events with a function
 * call (loopback_inject, loopback_join) and reads what the router sent
 * back from a recorded list (loopback_reply_at) or a callback
 * (loopback_on_reply).  An optional send latency simulates a slow
 * platform.  Config block: { type = "loopback"; name = "..."; latency_ms
 * = 0; stream = false; } (name is the account in room keys, default
 * "loopback"; with stream = true answers are streamed and the progress
 * calls are recorded, see loopback_progress_count).
 */
#ifndef PARLEY_LOOPBACK_H
#define PARLEY_LOOPBACK_H

#include <stddef.h>
#include <stdint.h>

struct adapter;
struct reply;

/* Replies kept for reading; older ones are dropped (and counted) beyond
 * this, so a long benchmark cannot grow without bound. */
#define LOOPBACK_REPLIES_MAX 4096
/* Longest latency_ms accepted: a minute is slow enough for any test. */
#define LOOPBACK_LATENCY_MAX_MS 60000

/* One reply the router sent, copied. */
struct loopback_reply {
    char *room;
    char *text;
    char *in_reply_to;      /* NULL when absent */
    char *mention;          /* NULL when absent */
    int notice;
    uint64_t at_ms;         /* loop time when it was delivered */
};

/* Called once per delivered reply (after it is recorded); the reply
 * lives until loopback_clear or the adapter is freed. */
typedef void loopback_reply_fn(struct adapter *ad,
                               const struct loopback_reply *reply,
                               void *privdata);

/*
 * Hand the router a message from sender in room (addressed: meant for
 * the bot).  The adapter must have a router (router_add_adapter).
 * Returns PARLEY_OK, or PARLEY_ERR_STATE without a router or once
 * stopped.
 */
int loopback_inject(struct adapter *ad, const char *room, const char *sender,
                    const char *text, int addressed);

/* Report that sender joined room (self: the bot itself), with the number
 * of members after the join (0 = unknown).  Same returns as above. */
int loopback_join(struct adapter *ad, const char *room, const char *sender,
                  int self, int members);

/* Replies delivered so far (at most LOOPBACK_REPLIES_MAX kept). */
size_t loopback_reply_count(const struct adapter *ad);
/* The i-th kept reply, oldest first, or NULL. */
const struct loopback_reply *loopback_reply_at(const struct adapter *ad,
                                               size_t i);
/* Replies delivered but not kept (the oldest beyond
 * LOOPBACK_REPLIES_MAX, or out of memory). */
unsigned long long loopback_dropped(const struct adapter *ad);
/* Forget the kept replies. */
void loopback_clear(struct adapter *ad);
/* Replies waiting out the simulated latency. */
size_t loopback_in_flight(const struct adapter *ad);

void loopback_on_reply(struct adapter *ad, loopback_reply_fn *fn,
                       void *privdata);
/* ops->progress calls so far (answers streamed with stream = true). */
unsigned long loopback_progress_count(const struct adapter *ad);
/* The text of the latest progress call, or NULL; *txn_id (if txn_id is
 * not NULL) gets its reply's txn id.  Valid until the next call. */
const char *loopback_progress_last(const struct adapter *ad,
                                   const char **txn_id);
/* Forget the progress record. */
void loopback_progress_reset(struct adapter *ad);

/* Simulated send latency for later sends (0 = deliver at once). */
void loopback_set_latency(struct adapter *ad, unsigned ms);

#endif
