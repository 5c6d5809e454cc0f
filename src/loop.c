/*
 * The libuv loop and the curl multi handles it drives.  The curl side
 * (several multi handles, "shards", each with its sockets and timer, and
 * why: curl's scans over its connections made one multi handle with
 * 10,000 transfers quadratic) is in loop_multi.c; the requests
 * themselves in loop_http.c; timers, signals and fd watches in
 * loop_handles.c, the input reader in loop_reader.c, TCP streams in
 * loop_tcp.c.  This file creates, runs, closes and frees the loop.
 * Memory that owns a uv handle is freed only in its close callback; the
 * loop struct and its shards wait for the last of those before they are
 * freed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loop_private.h"
#include "status.h"

static void loop_release(struct loop *loop)
{
    loop_shards_free(loop);
    free(loop);
}

void loop_handle_closed(struct loop *loop)
{
    loop->open_handles--;
    if (loop->open_handles == 0 && loop->free_requested)
        loop_release(loop);
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
    rc = loop_shards_init(loop);
    if (rc != PARLEY_OK) {
        loop_destroy_uv(loop);
        free(loop);
        return rc;
    }
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
    loop_shards_close(loop);
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
        loop_release(loop);
    else
        loop->free_requested = 1;
}
