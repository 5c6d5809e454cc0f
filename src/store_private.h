/*
 * Private to src/store.c and src/store_sentinel.c: the store's struct and
 * the few functions the Sentinel part calls back into.  store.h stays the
 * only API.  store.c owns the master connection (connect, AUTH/SELECT,
 * backoff, the command path); store_sentinel.c owns the sentinel
 * connections (asking where the master is, listening for +switch-master)
 * and the ROLE check that a resolved address really is the master.
 */
#ifndef PARLEY_STORE_PRIVATE_H
#define PARLEY_STORE_PRIVATE_H

#include <stdint.h>

#include <hiredis/async.h>
#include <uv.h>

#include "status.h"
#include "store.h"

/* How long a connect plus handshake may take before the attempt is
 * abandoned and retried: long enough for a loaded server, short enough
 * that a blackholed address does not hide the outage for minutes (the
 * kernel's own TCP connect timeout is about two minutes).  Sentinel
 * queries get the same deadline per sentinel. */
#define STORE_CONNECT_TIMEOUT_MS 5000

/* "unix:" + a sun_path (108 bytes) or host:port plus the master's name,
 * for log lines. */
#define STORE_ADDR_MAX 400

struct store_sentinel;

struct store {
    uv_loop_t *uv;
    char *host;                 /* owned; in Sentinel mode the master
                                   last resolved */
    int port;
    char *unix_socket;
    int db;
    char *prefix;
    char *password;             /* owned, wiped before free */
    char addr[STORE_ADDR_MAX];  /* for log lines; never holds secrets */

    redisAsyncContext *ac;      /* current context, NULL while down */
    uv_timer_t timer;           /* retry delay, or connect deadline */
    int open_handles;           /* uv handles not yet closed; free st at
                                   zero */

    int up;                     /* handshake done: accept commands */
    int announced;              /* last state told to state_fn */
    int outage;                 /* outage logged, recovery not yet */
    int closing;
    unsigned attempt;           /* failed attempts since last up */

    store_state_fn *state_fn;
    void *state_priv;

    int err;                    /* last failure, PARLEY_OK while up */
    char errstr[PARLEY_ERRSTR_LEN];
    int failed;                 /* this attempt's failure already set */

    struct store_sentinel *sn;  /* owned; NULL without redis.sentinels */
};

/* ---- store.c ---- */

/* The one setter for err/errstr (truncated, secrets scrubbed). */
void store_set_error(struct store *st, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The current attempt or connection is gone: report, schedule a retry. */
void store_lost(struct store *st);
/* Free st once it is closing and every uv handle is closed. */
void store_maybe_free(struct store *st);
/* Watch ac's socket on st's loop; when hiredis frees ac, the store's
 * cleanup runs and, for a context that is not the master's,
 * store_sentinel_gone. */
int store_attach(struct store *st, redisAsyncContext *ac);
/* Replace the address the next master attempt connects to. */
int store_set_master(struct store *st, const char *host, int port);
/* Start the next attempt now instead of after the backoff delay. */
void store_retry_now(struct store *st);

/* ---- store_sentinel.c ---- */

/* Set up Sentinel mode from cfg (copied); password is the sentinels' own
 * (NULL: none).  Starts listening for +switch-master. */
int store_sentinel_open(struct store *st, const struct config_redis *cfg,
                        const char *password);
enum store_resolve {
    STORE_RESOLVED,     /* st->host/port is the master: connect now */
    STORE_ASKING,       /* a sentinel is being asked; the answer comes
                           back through store_retry_now */
    STORE_NO_MASTER     /* every sentinel failed this round (errstr) */
};

/* One step of finding the master: ask the next sentinel, or, with an
 * answer in hand, make it the master's address. */
enum store_resolve store_sentinel_resolve(struct store *st);
/* Whether a query to a sentinel is running (its deadline is st->timer). */
int store_sentinel_asking(const struct store *st);
/* st->timer fired while asking: give up on that sentinel. */
void store_sentinel_timeout(struct store *st);
/* hiredis freed ac, one of the sentinel contexts. */
void store_sentinel_gone(struct store *st, redisAsyncContext *ac);
/* Queue ROLE on the master's new connection; done(st) runs when it says
 * "master", otherwise the attempt fails.  Returns a status. */
int store_sentinel_check_role(struct store *st, redisAsyncContext *ac,
                              void (*done)(struct store *st));
/* The master answered READONLY: it was demoted; find the new one. */
void store_sentinel_readonly(struct store *st, redisAsyncContext *ac);
/* Close the sentinel connections and the timer (store_close). */
void store_sentinel_close(struct store *st);
/* Free what store_sentinel_open allocated (after its timer closed). */
void store_sentinel_free(struct store *st);

#endif
