/*
 * The curl multi handles the loop drives, after curl's
 * docs/examples/multi-uv.c, split into "shards": several multi handles of
 * at most LOOP_SHARD_TRANSFERS transfers each, instead of one.
 *
 * Why shards: with 10,000 transfers on one multi handle, perf on
 * bench_rooms ... direct (curl 7.88.1) showed curl's own scans over its
 * connection cache taking most of the CPU: Curl_connect 18%
 * (ConnectionExists walks every connection of the host for each new
 * transfer), Curl_conncache_foreach + close_connect_only 12.6%
 * (curl_multi_remove_handle walks every cached connection when the
 * transfer had one) and Curl_conncache_extract_oldest 7.3% (the default
 * cap of 4 connections per easy handle, shrinking as a burst drains).
 * Each is linear in the connections of one multi handle, so the whole
 * burst was quadratic; with shards it is linear in the burst times
 * LOOP_SHARD_TRANSFERS.  A new transfer goes to the first shard with
 * room, so at low load everything stays on shard 0 and keeps reusing its
 * connections; a shard is created when all are full, and the last one is
 * retired (with the connections it keeps) once it has been idle for a
 * while (loop_shards_reap).
 *
 * Each shard has its own socket and timer callbacks (curl tells us which
 * sockets to watch and when to wake it), a uv timer and an idle "kick"
 * for curl's 0 ms timer; a watched socket remembers its shard, so libuv's
 * readiness goes to the right multi handle.  After every
 * curl_multi_socket_action we collect that shard's finished transfers
 * (loop_check_multi_info in loop_http.c), also when no transfer is left
 * running, which the example skips.  Memory that owns a uv handle is
 * freed only in its close callback; the shards and the loop wait for the
 * last of those (loop.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loop_private.h"
#include "status.h"

/* One socket curl asked us to watch (multi-uv.c's curl_context). */
struct loop_socket {
    uv_poll_t poll;             /* poll.data = this */
    curl_socket_t fd;
    struct loop *loop;          /* outlives the shard, which may go first */
    struct loop_shard *shard;   /* whose multi handle owns the socket */
    struct loop_socket *prev, *next;
};

/* Whether a shard's callbacks should leave curl alone: the loop or the
 * shard is being closed, and curl_multi_cleanup may still call them. */
static int shard_dead(const struct loop_shard *shard)
{
    return shard->loop->closing || shard->retiring;
}

static void on_timer_closed(uv_handle_t *handle)
{
    struct loop_shard *shard = handle->data;

    loop_handle_closed(shard->loop);
}

static void on_reap_closed(uv_handle_t *handle)
{
    loop_handle_closed(handle->data);
}

/* A retired shard's handle closed: the shard goes after both. */
static void on_retired_closed(uv_handle_t *handle)
{
    struct loop_shard *shard = handle->data;
    struct loop *loop = shard->loop;

    if (--shard->closes_left == 0)
        free(shard);
    loop_handle_closed(loop);
}

static void on_socket_closed(uv_handle_t *handle)
{
    struct loop_socket *ls = handle->data;
    struct loop *loop = ls->loop;

    free(ls);
    loop_handle_closed(loop);
}

/* Stop watching a socket; the struct is freed in the close callback. */
static void loop_socket_destroy(struct loop_socket *ls)
{
    struct loop *loop = ls->loop;

    if (ls->prev)
        ls->prev->next = ls->next;
    else
        loop->socks = ls->next;
    if (ls->next)
        ls->next->prev = ls->prev;
    ls->prev = ls->next = NULL;
    uv_poll_stop(&ls->poll);
    uv_close((uv_handle_t *)&ls->poll, on_socket_closed);
}

/* Let curl act on a shard's expired timers and collect what finished. */
static void shard_timeout(struct loop_shard *shard)
{
    int running = 0;
    CURLMcode mc;

    if (shard_dead(shard))
        return;
    mc = curl_multi_socket_action(shard->multi, CURL_SOCKET_TIMEOUT, 0,
                                  &running);
    if (mc != CURLM_OK)
        log_error("curl_multi_socket_action (timeout): %s",
                  curl_multi_strerror(mc));
    loop_flush_streams(shard->loop);
    loop_check_multi_info(shard);
}

static void on_uv_timeout(uv_timer_t *timer)
{
    shard_timeout(timer->data);
}

static void on_uv_kick(uv_idle_t *idle)
{
    uv_idle_stop(idle);
    shard_timeout(idle->data);
}

static void on_uv_socket(uv_poll_t *poll, int status, int events)
{
    struct loop_socket *ls = poll->data;
    struct loop_shard *shard = ls->shard;
    int flags = 0;
    int running = 0;
    CURLMcode mc;

    if (shard_dead(shard))
        return;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    /* ls may be destroyed inside socket_action; do not touch it after. */
    mc = curl_multi_socket_action(shard->multi, ls->fd, flags, &running);
    if (mc != CURLM_OK)
        log_error("curl_multi_socket_action (socket): %s",
                  curl_multi_strerror(mc));
    loop_flush_streams(shard->loop);
    loop_check_multi_info(shard);
}

/* CURLMOPT_TIMERFUNCTION: one timer per multi handle. */
static int cb_timeout(CURLM *multi, long timeout_ms, void *userp)
{
    struct loop_shard *shard = userp;
    int rc;

    (void)multi;
    if (shard_dead(shard))
        return 0;
    if (timeout_ms < 0) {
        uv_timer_stop(&shard->timeout);
        uv_idle_stop(&shard->kick);
        return 0;
    }
    /* 0 means "as soon as possible", but never from inside this
     * callback.  A 0 ms uv timer started from a timer callback would run
     * in the same pass (and again, if curl keeps asking for 0), and the
     * 1 ms that multi-uv.c uses instead put 0.5 to 1 ms on every request
     * start (most of the console's gateway overhead in
     * scripts/bench/run.sh).  An idle handle runs in the next loop pass,
     * after a poll for I/O that does not block while it is active. */
    if (timeout_ms == 0) {
        uv_timer_stop(&shard->timeout);
        rc = uv_idle_start(&shard->kick, on_uv_kick);
        if (rc < 0) {
            log_error("uv_idle_start: %s", uv_strerror(rc));
            return -1;
        }
        return 0;
    }
    uv_idle_stop(&shard->kick);
    rc = uv_timer_start(&shard->timeout, on_uv_timeout,
                        (uint64_t)timeout_ms, 0);
    if (rc < 0) {
        log_error("uv_timer_start: %s", uv_strerror(rc));
        return -1;
    }
    return 0;
}

/* Start watching socket s of a shard; NULL on failure (logged). */
static struct loop_socket *loop_socket_new(struct loop_shard *shard,
                                           curl_socket_t s)
{
    struct loop *loop = shard->loop;
    struct loop_socket *ls = calloc(1, sizeof(*ls));
    int rc;

    if (!ls) {
        log_error("out of memory watching a socket");
        return NULL;
    }
    rc = uv_poll_init_socket(loop->uv, &ls->poll, s);
    if (rc < 0) {
        log_error("uv_poll_init_socket: %s", uv_strerror(rc));
        free(ls);
        return NULL;
    }
    ls->poll.data = ls;
    ls->fd = s;
    ls->loop = loop;
    ls->shard = shard;
    ls->next = loop->socks;
    if (loop->socks)
        loop->socks->prev = ls;
    loop->socks = ls;
    loop->open_handles++;
    if (curl_multi_assign(shard->multi, s, ls) != CURLM_OK) {
        loop_socket_destroy(ls);
        return NULL;
    }
    return ls;
}

/* CURLMOPT_SOCKETFUNCTION: watch, re-watch or forget a socket. */
static int cb_socket(CURL *easy, curl_socket_t s, int action, void *userp,
                     void *socketp)
{
    struct loop_shard *shard = userp;
    struct loop_socket *ls = socketp;
    int events = 0;
    int rc;

    (void)easy;
    switch (action) {
    case CURL_POLL_IN:
    case CURL_POLL_OUT:
    case CURL_POLL_INOUT:
        if (shard_dead(shard))
            return 0;
        if (!ls) {
            ls = loop_socket_new(shard, s);
            if (!ls)
                return -1;
        }
        if (action != CURL_POLL_IN)
            events |= UV_WRITABLE;
        if (action != CURL_POLL_OUT)
            events |= UV_READABLE;
        rc = uv_poll_start(&ls->poll, events, on_uv_socket);
        if (rc < 0) {
            log_error("uv_poll_start: %s", uv_strerror(rc));
            return -1;
        }
        break;
    case CURL_POLL_REMOVE:
        if (ls) {
            loop_socket_destroy(ls);
            /* During curl_multi_cleanup the socket hash is going away. */
            if (!shard_dead(shard))
                curl_multi_assign(shard->multi, s, NULL);
        }
        break;
    default:
        break;
    }
    return 0;
}

static void on_reap(uv_timer_t *timer)
{
    loop_shards_reap(timer->data);
}

/* A new shard with its multi handle and timers, appended to the loop's
 * list; PARLEY_OK or a status with nothing left behind. */
static int shard_new(struct loop *loop)
{
    struct loop_shard *shard;
    int rc;

    if (loop->n_shards >= LOOP_SHARDS_MAX)
        return PARLEY_ERR_STATE;
    shard = calloc(1, sizeof(*shard));
    if (!shard)
        return PARLEY_ERR_OOM;
    shard->loop = loop;
    shard->multi = curl_multi_init();
    if (!shard->multi) {
        free(shard);
        return PARLEY_ERR_OOM;
    }
    if (curl_multi_setopt(shard->multi, CURLMOPT_SOCKETFUNCTION,
                          cb_socket) != CURLM_OK ||
        curl_multi_setopt(shard->multi, CURLMOPT_SOCKETDATA,
                          shard) != CURLM_OK ||
        curl_multi_setopt(shard->multi, CURLMOPT_TIMERFUNCTION,
                          cb_timeout) != CURLM_OK ||
        curl_multi_setopt(shard->multi, CURLMOPT_TIMERDATA,
                          shard) != CURLM_OK ||
        /* Thousands of requests in flight (llm.max_concurrent up to
         * 16384): no cap on connections, per host or in all, and HTTP/2
         * streams share a connection when the API offers h2 (ALPN over
         * TLS; 100 streams per connection, then curl opens another).
         * Over HTTP/1.1 each request in flight holds one connection,
         * kept for reuse afterwards. */
        curl_multi_setopt(shard->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                          0L) != CURLM_OK ||
        curl_multi_setopt(shard->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                          0L) != CURLM_OK ||
        /* A fixed cache of one connection per transfer the shard takes:
         * curl's default (4 per easy handle added) shrinks as a burst
         * drains, and then every connection handed back scanned the
         * cache for the oldest to close (extract_oldest, 7% of the
         * CPU). */
        curl_multi_setopt(shard->multi, CURLMOPT_MAXCONNECTS,
                          (long)LOOP_SHARD_TRANSFERS) != CURLM_OK ||
        curl_multi_setopt(shard->multi, CURLMOPT_PIPELINING,
                          (long)CURLPIPE_MULTIPLEX) != CURLM_OK) {
        log_error("curl_multi_setopt failed");
        curl_multi_cleanup(shard->multi);
        free(shard);
        return PARLEY_ERR_OTHER;
    }
    /* Neither init fails on Unix (libuv only links the handle into the
     * loop), so the error path has no handle to close. */
    rc = uv_timer_init(loop->uv, &shard->timeout);
    if (rc == 0)
        rc = uv_idle_init(loop->uv, &shard->kick);
    if (rc < 0) {
        log_error("uv_timer_init: %s", uv_strerror(rc));
        curl_multi_cleanup(shard->multi);
        free(shard);
        return PARLEY_ERR_OTHER;
    }
    shard->timeout.data = shard;
    shard->kick.data = shard;
    loop->open_handles += 2;
    loop->shards[loop->n_shards++] = shard;
    if (loop->n_shards == 2) {
        rc = uv_timer_start(&loop->reap, on_reap, LOOP_SHARD_REAP_MS,
                            LOOP_SHARD_REAP_MS);
        if (rc < 0)
            log_warn("uv_timer_start (shard reaper): %s", uv_strerror(rc));
    }
    return PARLEY_OK;
}

int loop_shards_init(struct loop *loop)
{
    int rc = shard_new(loop);

    if (rc != PARLEY_OK)
        return rc;
    /* uv_timer_init cannot fail on Unix (it only links the handle into
     * the loop), so shard 0 never has to be undone here. */
    (void)uv_timer_init(loop->uv, &loop->reap);
    uv_unref((uv_handle_t *)&loop->reap);
    loop->reap.data = loop;
    loop->open_handles++;
    return PARLEY_OK;
}

/* Close a shard that holds no transfer: curl closes its idle
 * connections; the struct goes in the close callbacks of its handles. */
static void shard_retire(struct loop_shard *shard)
{
    struct loop *loop = shard->loop;
    struct loop_socket *ls, *next;

    shard->retiring = 1;
    curl_multi_cleanup(shard->multi);
    shard->multi = NULL;
    /* Idle connections are not watched, but a socket curl did not
     * forget must not outlive its multi handle. */
    for (ls = loop->socks; ls; ls = next) {
        next = ls->next;
        if (ls->shard == shard)
            loop_socket_destroy(ls);
    }
    uv_timer_stop(&shard->timeout);
    uv_idle_stop(&shard->kick);
    shard->closes_left = 2;
    uv_close((uv_handle_t *)&shard->timeout, on_retired_closed);
    uv_close((uv_handle_t *)&shard->kick, on_retired_closed);
}

void loop_shards_reap(struct loop *loop)
{
    size_t i;

    if (loop->closing)
        return;
    /* Only the last: new transfers fill the first shard with room, so
     * a gap in the middle would only be refilled first. */
    while (loop->n_shards > 1) {
        struct loop_shard *last = loop->shards[loop->n_shards - 1];

        if (last->transfers > 0 || last->used)
            break;
        loop->shards[--loop->n_shards] = NULL;
        shard_retire(last);
    }
    /* A shard busy now counts as used in the next period too: it goes
     * only after a whole period with nothing in flight. */
    for (i = 0; i < loop->n_shards; i++)
        loop->shards[i]->used = loop->shards[i]->transfers > 0;
    if (loop->n_shards == 1)
        uv_timer_stop(&loop->reap);
}

/* The shard a new transfer goes to: the first with room, else a new one,
 * else (at LOOP_SHARDS_MAX, or out of memory) the least loaded. */
static struct loop_shard *shard_pick(struct loop *loop)
{
    struct loop_shard *least = NULL;
    size_t i;

    for (i = 0; i < loop->n_shards; i++) {
        struct loop_shard *s = loop->shards[i];

        if (s->transfers < LOOP_SHARD_TRANSFERS)
            return s;
        if (!least || s->transfers < least->transfers)
            least = s;
    }
    if (shard_new(loop) == PARLEY_OK)
        return loop->shards[loop->n_shards - 1];
    return least;
}

int loop_shard_add(struct loop *loop, CURL *easy, struct loop_shard **out)
{
    struct loop_shard *shard = shard_pick(loop);
    CURLMcode mc;

    *out = NULL;
    if (!shard)
        return PARLEY_ERR_STATE;
    /* Adding only arms the timer (cb_timeout); the transfer, and with it
     * the done callback, runs later from the loop. */
    mc = curl_multi_add_handle(shard->multi, easy);
    if (mc != CURLM_OK) {
        log_error("curl_multi_add_handle: %s", curl_multi_strerror(mc));
        return mc == CURLM_OUT_OF_MEMORY ? PARLEY_ERR_OOM : PARLEY_ERR_OTHER;
    }
    shard->transfers++;
    shard->used = 1;
    *out = shard;
    return PARLEY_OK;
}

void loop_shard_remove(struct loop_shard *shard, CURL *easy)
{
    if (!shard->multi)
        return;
    curl_multi_remove_handle(shard->multi, easy);
    shard->transfers--;
}

void loop_shards_close(struct loop *loop)
{
    size_t i;

    for (i = 0; i < loop->n_shards; i++) {
        struct loop_shard *shard = loop->shards[i];

        curl_multi_cleanup(shard->multi);
        shard->multi = NULL;
    }
    while (loop->socks)
        loop_socket_destroy(loop->socks);
    for (i = 0; i < loop->n_shards; i++) {
        struct loop_shard *shard = loop->shards[i];

        uv_timer_stop(&shard->timeout);
        uv_close((uv_handle_t *)&shard->timeout, on_timer_closed);
        uv_idle_stop(&shard->kick);
        uv_close((uv_handle_t *)&shard->kick, on_timer_closed);
    }
    uv_timer_stop(&loop->reap);
    uv_close((uv_handle_t *)&loop->reap, on_reap_closed);
}

void loop_shards_free(struct loop *loop)
{
    while (loop->n_shards > 0)
        free(loop->shards[--loop->n_shards]);
}

size_t loop_shard_count(const struct loop *loop)
{
    return loop->n_shards;
}

size_t loop_shard_transfers(const struct loop *loop, size_t i)
{
    return i < loop->n_shards ? loop->shards[i]->transfers : 0;
}
