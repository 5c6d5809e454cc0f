/*
 * What the loop's files (loop.c, loop_multi.c, loop_http.c,
 * loop_handles.c, loop_reader.c, loop_tcp.c) share and nobody else sees:
 * the loop struct, its curl multi handles ("shards") and the few
 * functions that cross between them.  Only these files (and the loop's
 * own unit tests, for loop_shard_count) include it, and with it <uv.h>
 * and <curl/curl.h>.
 */
#ifndef PARLEY_LOOP_PRIVATE_H
#define PARLEY_LOOP_PRIVATE_H

#include <stddef.h>

#include <curl/curl.h>
#include <uv.h>

#include "loop.h"

struct loop_socket;

/* Transfers one curl multi handle takes before the next one is used.
 * curl 7.88 walks every connection of a multi handle (or of the host)
 * for each transfer that starts or ends, so one multi with 10,000
 * transfers spent most of its CPU in those walks (see loop_multi.c);
 * 256 measured best of 128/256/512 (scripts/bench, direct 10,000). */
#ifndef LOOP_SHARD_TRANSFERS   /* -D for measuring other sizes */
#define LOOP_SHARD_TRANSFERS 256
#endif

/* Multi handles at most: enough for llm.max_concurrent's ceiling of
 * 16,384 plus the adapters' own requests.  Past that the least loaded
 * takes more than LOOP_SHARD_TRANSFERS. */
#define LOOP_SHARDS_MAX (16384 / LOOP_SHARD_TRANSFERS + 2)

/* How often the loop looks for shards to retire: the last shard (never
 * shard 0) goes, with its idle connections, once it has been empty for a
 * whole period.  Each shard keeps up to LOOP_SHARD_TRANSFERS idle
 * connections, so without this a burst of 10,000 would hold 10,000
 * sockets for good; with it a steady load just over a shard's worth does
 * not lose its connections (and TLS sessions) every time it dips. */
#define LOOP_SHARD_REAP_MS 30000

/* One curl multi handle with its own timer (loop_multi.c).  Created when
 * every earlier one is full; retired when it is the last and has been
 * idle for LOOP_SHARD_REAP_MS (freed in its close callbacks), else kept
 * until loop_close and freed with the loop. */
struct loop_shard {
    struct loop *loop;
    CURLM *multi;               /* NULL after loop_close */
    uv_timer_t timeout;         /* curl's timer for this multi */
    uv_idle_t kick;             /* the same timer when curl asks for 0 ms */
    size_t transfers;           /* easy handles added and not removed */
    int used;                   /* busy at the last reaper tick, or a
                                   transfer added since */
    int retiring;               /* being closed; callbacks do nothing */
    int closes_left;            /* retiring: handles still to close */
};

struct loop {
    uv_loop_t *uv;              /* own_uv, or the caller's */
    uv_loop_t *own_uv;          /* created by loop_create(NULL) */
    struct loop_shard *shards[LOOP_SHARDS_MAX]; /* owned; n_shards used */
    size_t n_shards;
    uv_timer_t reap;            /* retires idle shards (unreferenced: it
                                   never keeps loop_run going) */
    struct http_request *reqs;  /* in flight, doubly linked */
    struct loop_socket *socks;  /* watched sockets, doubly linked */
    size_t pending;             /* requests in reqs */
    size_t open_handles;        /* uv handles not yet closed */
    int closing;                /* loop_close called */
    /* A streamed body got bytes since the last loop_flush_streams: without
     * it every socket event walked all of reqs, quadratic with 10,000
     * requests in flight (a third of the CPU in scripts/bench/run.sh). */
    int streams_dirty;
    int free_requested;         /* loop_free called before handles closed */
};

/* Create shard 0 and the reaper timer (loop_create). */
int loop_shards_init(struct loop *loop);

/* One reaper tick (the timer's callback; tests call it directly). */
void loop_shards_reap(struct loop *loop);

/* Add easy to the first shard with room, creating one when all are
 * full; *out is the shard it went to.  PARLEY_OK, or a status with
 * nothing added. */
int loop_shard_add(struct loop *loop, CURL *easy, struct loop_shard **out);

/* Take easy (added by loop_shard_add) off its shard. */
void loop_shard_remove(struct loop_shard *shard, CURL *easy);

/* loop_close's part: clean up every multi handle, stop watching every
 * socket, close every shard's timers and the reaper (counted in
 * open_handles). */
void loop_shards_close(struct loop *loop);

/* Free the shards' memory, once every handle is closed. */
void loop_shards_free(struct loop *loop);

/* Multi handles created so far, and transfers on shard i (tests). */
size_t loop_shard_count(const struct loop *loop);
size_t loop_shard_transfers(const struct loop *loop, size_t i);

/* A uv handle of the loop's own closed: free the loop if it waits. */
void loop_handle_closed(struct loop *loop);

/* Hand streamed bytes to their owners (loop_http.c). */
void loop_flush_streams(struct loop *loop);

/* Hand every finished transfer of one shard to its owner (loop_http.c). */
void loop_check_multi_info(struct loop_shard *shard);

/* Close callback that frees handle->data (loop_handles.c). */
void loop_on_any_closed(uv_handle_t *h);

#endif /* PARLEY_LOOP_PRIVATE_H */
