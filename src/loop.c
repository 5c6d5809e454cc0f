/*
 * The libuv loop and the curl multi handle it drives, after curl's
 * docs/examples/multi-uv.c.  curl tells us which sockets to watch
 * (cb_socket) and when to wake it (cb_timeout); libuv tells curl when a
 * socket is ready (on_uv_socket) or the timer fired (on_uv_timeout), and
 * after every curl_multi_socket_action we collect finished transfers
 * (loop_check_multi_info in loop_http.c), also when no transfer is left
 * running, which the example skips.  Memory that owns a uv handle is
 * freed only in its close callback; the loop struct itself waits for the
 * last of those before it is freed.  The requests themselves live in
 * loop_http.c; timers, signals and fd watches in loop_handles.c, the
 * input reader in loop_reader.c, TCP streams in loop_tcp.c.
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
    struct loop *loop;
    struct loop_socket *prev, *next;
};

static void loop_handle_closed(struct loop *loop)
{
    loop->open_handles--;
    if (loop->open_handles == 0 && loop->free_requested)
        free(loop);
}

static void on_timer_closed(uv_handle_t *handle)
{
    loop_handle_closed(handle->data);
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

/* Let curl act on its expired timers and collect what finished. */
static void loop_multi_timeout(struct loop *loop)
{
    int running = 0;
    CURLMcode mc;

    if (loop->closing)
        return;
    mc = curl_multi_socket_action(loop->multi, CURL_SOCKET_TIMEOUT, 0,
                                  &running);
    if (mc != CURLM_OK)
        log_error("curl_multi_socket_action (timeout): %s",
                  curl_multi_strerror(mc));
    loop_flush_streams(loop);
    loop_check_multi_info(loop);
}

static void on_uv_timeout(uv_timer_t *timer)
{
    loop_multi_timeout(timer->data);
}

static void on_uv_kick(uv_idle_t *idle)
{
    uv_idle_stop(idle);
    loop_multi_timeout(idle->data);
}

static void on_uv_socket(uv_poll_t *poll, int status, int events)
{
    struct loop_socket *ls = poll->data;
    struct loop *loop = ls->loop;
    int flags = 0;
    int running = 0;
    CURLMcode mc;

    if (loop->closing)
        return;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    /* ls may be destroyed inside socket_action; do not touch it after. */
    mc = curl_multi_socket_action(loop->multi, ls->fd, flags, &running);
    if (mc != CURLM_OK)
        log_error("curl_multi_socket_action (socket): %s",
                  curl_multi_strerror(mc));
    loop_flush_streams(loop);
    loop_check_multi_info(loop);
}

/* CURLMOPT_TIMERFUNCTION: one timer for the whole multi handle. */
static int cb_timeout(CURLM *multi, long timeout_ms, void *userp)
{
    struct loop *loop = userp;
    int rc;

    (void)multi;
    if (loop->closing)
        return 0;
    if (timeout_ms < 0) {
        uv_timer_stop(&loop->timeout);
        uv_idle_stop(&loop->kick);
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
        uv_timer_stop(&loop->timeout);
        rc = uv_idle_start(&loop->kick, on_uv_kick);
        if (rc < 0) {
            log_error("uv_idle_start: %s", uv_strerror(rc));
            return -1;
        }
        return 0;
    }
    uv_idle_stop(&loop->kick);
    rc = uv_timer_start(&loop->timeout, on_uv_timeout,
                        (uint64_t)timeout_ms, 0);
    if (rc < 0) {
        log_error("uv_timer_start: %s", uv_strerror(rc));
        return -1;
    }
    return 0;
}

/* CURLMOPT_SOCKETFUNCTION: watch, re-watch or forget a socket. */
static int cb_socket(CURL *easy, curl_socket_t s, int action, void *userp,
                     void *socketp)
{
    struct loop *loop = userp;
    struct loop_socket *ls = socketp;
    int events = 0;
    int rc;

    (void)easy;
    switch (action) {
    case CURL_POLL_IN:
    case CURL_POLL_OUT:
    case CURL_POLL_INOUT:
        if (loop->closing)
            return 0;
        if (!ls) {
            ls = calloc(1, sizeof(*ls));
            if (!ls) {
                log_error("out of memory watching a socket");
                return -1;
            }
            rc = uv_poll_init_socket(loop->uv, &ls->poll, s);
            if (rc < 0) {
                log_error("uv_poll_init_socket: %s", uv_strerror(rc));
                free(ls);
                return -1;
            }
            ls->poll.data = ls;
            ls->fd = s;
            ls->loop = loop;
            ls->next = loop->socks;
            if (loop->socks)
                loop->socks->prev = ls;
            loop->socks = ls;
            loop->open_handles++;
            if (curl_multi_assign(loop->multi, s, ls) != CURLM_OK) {
                loop_socket_destroy(ls);
                return -1;
            }
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
            if (!loop->closing)
                curl_multi_assign(loop->multi, s, NULL);
        }
        break;
    default:
        break;
    }
    return 0;
}

/* Close and free a uv loop created by loop_create(NULL).  Handles still
 * open (an owner that forgot to free a timer) keep it busy: run it once
 * more for close callbacks, and if it is still busy leak it with a
 * warning rather than free memory libuv still points into. */
static void loop_destroy_uv(struct loop *loop)
{
    if (!loop->own_uv)
        return;
    uv_run(loop->own_uv, UV_RUN_NOWAIT);
    if (uv_loop_close(loop->own_uv) != 0) {
        log_warn("event loop closed with handles still open");
        loop->own_uv = NULL;
        return;
    }
    free(loop->own_uv);
    loop->own_uv = NULL;
}

int loop_create(struct loop **out, struct uv_loop_s *uv)
{
    static int curl_ready;
    struct loop *loop;
    int rc;

    *out = NULL;
    /* Not thread-safe, like curl_global_init itself; parley creates its
     * loop once, from main, before any other thread exists. */
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            log_error("curl_global_init failed");
            return PARLEY_ERR_OTHER;
        }
        curl_ready = 1;
    }
    loop = calloc(1, sizeof(*loop));
    if (!loop)
        return PARLEY_ERR_OOM;
    if (!uv) {
        loop->own_uv = malloc(sizeof(*loop->own_uv));
        if (!loop->own_uv) {
            free(loop);
            return PARLEY_ERR_OOM;
        }
        rc = uv_loop_init(loop->own_uv);
        if (rc < 0) {
            log_error("uv_loop_init: %s", uv_strerror(rc));
            free(loop->own_uv);
            free(loop);
            return PARLEY_ERR_OTHER;
        }
        uv = loop->own_uv;
    }
    loop->uv = uv;
    loop->multi = curl_multi_init();
    if (!loop->multi) {
        loop_destroy_uv(loop);
        free(loop);
        return PARLEY_ERR_OOM;
    }
    if (curl_multi_setopt(loop->multi, CURLMOPT_SOCKETFUNCTION,
                          cb_socket) != CURLM_OK ||
        curl_multi_setopt(loop->multi, CURLMOPT_SOCKETDATA,
                          loop) != CURLM_OK ||
        curl_multi_setopt(loop->multi, CURLMOPT_TIMERFUNCTION,
                          cb_timeout) != CURLM_OK ||
        curl_multi_setopt(loop->multi, CURLMOPT_TIMERDATA,
                          loop) != CURLM_OK ||
        /* Thousands of requests in flight (llm.max_concurrent up to
         * 16384): no cap on connections, per host or in all, and HTTP/2
         * streams share a connection when the API offers h2 (ALPN over
         * TLS; 100 streams per connection, then curl opens another).
         * Over HTTP/1.1 each request in flight holds one connection,
         * kept for reuse afterwards. */
        curl_multi_setopt(loop->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                          0L) != CURLM_OK ||
        curl_multi_setopt(loop->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                          0L) != CURLM_OK ||
        curl_multi_setopt(loop->multi, CURLMOPT_PIPELINING,
                          (long)CURLPIPE_MULTIPLEX) != CURLM_OK) {
        log_error("curl_multi_setopt failed");
        curl_multi_cleanup(loop->multi);
        loop_destroy_uv(loop);
        free(loop);
        return PARLEY_ERR_OTHER;
    }
    /* Neither init fails on Unix (libuv only links the handle into the
     * loop), so the error path has no handle to close. */
    rc = uv_timer_init(uv, &loop->timeout);
    if (rc == 0)
        rc = uv_idle_init(uv, &loop->kick);
    if (rc < 0) {
        log_error("uv_timer_init: %s", uv_strerror(rc));
        curl_multi_cleanup(loop->multi);
        loop_destroy_uv(loop);
        free(loop);
        return PARLEY_ERR_OTHER;
    }
    loop->timeout.data = loop;
    loop->kick.data = loop;
    loop->open_handles = 2;
    *out = loop;
    return PARLEY_OK;
}

struct uv_loop_s *loop_uv(struct loop *loop)
{
    return loop->uv;
}

void loop_run(struct loop *loop)
{
    uv_run(loop->uv, UV_RUN_DEFAULT);
}

uint64_t loop_now_ms(const struct loop *loop)
{
    return uv_now(loop->uv);
}

size_t loop_http_pending(const struct loop *loop)
{
    return loop->pending;
}

void loop_close(struct loop *loop)
{
    if (!loop || loop->closing)
        return;
    while (loop->reqs)
        loop_http_cancel(loop->reqs);
    /* From here on cb_socket only forgets sockets, and cb_timeout does
     * nothing: curl_multi_cleanup may still call them. */
    loop->closing = 1;
    curl_multi_cleanup(loop->multi);
    loop->multi = NULL;
    while (loop->socks)
        loop_socket_destroy(loop->socks);
    uv_timer_stop(&loop->timeout);
    uv_close((uv_handle_t *)&loop->timeout, on_timer_closed);
    uv_idle_stop(&loop->kick);
    uv_close((uv_handle_t *)&loop->kick, on_timer_closed);
}

void loop_free(struct loop *loop)
{
    if (!loop)
        return;
    if (!loop->closing)
        loop_close(loop);
    if (loop->own_uv) {
        /* Our own uv loop: nobody else will run it, so let the close
         * callbacks of loop_close run now (one pass runs them all). */
        while (loop->open_handles > 0)
            uv_run(loop->own_uv, UV_RUN_NOWAIT);
        loop_destroy_uv(loop);
    }
    if (loop->open_handles == 0)
        free(loop);
    else
        loop->free_requested = 1;
}
