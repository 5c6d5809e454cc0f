/*
 * What the loop's files (loop.c, loop_http.c, loop_handles.c,
 * loop_reader.c, loop_tcp.c) share and nobody else sees: the loop struct
 * and the few functions that cross between them.  Only these files
 * include it, and with it <uv.h> and <curl/curl.h>.
 */
#ifndef PARLEY_LOOP_PRIVATE_H
#define PARLEY_LOOP_PRIVATE_H

#include <stddef.h>

#include <curl/curl.h>
#include <uv.h>

#include "loop.h"

struct loop_socket;

struct loop {
    uv_loop_t *uv;              /* own_uv, or the caller's */
    uv_loop_t *own_uv;          /* created by loop_create(NULL) */
    CURLM *multi;
    uv_timer_t timeout;         /* curl's single timer */
    uv_idle_t kick;             /* curl's timer when it asks for 0 ms */
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

/* Hand streamed bytes to their owners (loop_http.c). */
void loop_flush_streams(struct loop *loop);

/* Hand every finished transfer to its owner (loop_http.c). */
void loop_check_multi_info(struct loop *loop);

/* Close callback that frees handle->data (loop_handles.c). */
void loop_on_any_closed(uv_handle_t *h);

#endif /* PARLEY_LOOP_PRIVATE_H */
