/*
 * The loop's timers, signals and fd watches: thin wrappers, one uv handle
 * each, so that no other module needs <uv.h>.  They are not counted in
 * the loop's open_handles because they belong to their owners, not to
 * the loop.
 */
#include <stdlib.h>

#include "log.h"
#include "loop_private.h"
#include "status.h"

struct loop_timer {
    uv_timer_t handle;          /* handle.data = this */
    loop_timer_fn *fn;
    void *privdata;
    int freeing;                /* loop_timer_free called */
};

void loop_on_any_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_loop_timer(uv_timer_t *h)
{
    struct loop_timer *t = h->data;

    if (!t->freeing)
        t->fn(t->privdata);
}

struct loop_timer *loop_timer_new(struct loop *loop, loop_timer_fn *fn,
                                  void *privdata)
{
    struct loop_timer *t;

    if (!fn)
        return NULL;
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    if (uv_timer_init(loop->uv, &t->handle) < 0) {
        free(t);
        return NULL;
    }
    t->handle.data = t;
    t->fn = fn;
    t->privdata = privdata;
    return t;
}

int loop_timer_start(struct loop_timer *t, uint64_t timeout_ms,
                     uint64_t repeat_ms)
{
    if (!t || t->freeing)
        return PARLEY_ERR_STATE;
    /* Cannot fail on an open timer handle with a callback. */
    uv_timer_start(&t->handle, on_loop_timer, timeout_ms, repeat_ms);
    return PARLEY_OK;
}

void loop_timer_stop(struct loop_timer *t)
{
    if (t)
        uv_timer_stop(&t->handle);
}

int loop_timer_active(const struct loop_timer *t)
{
    return t && !t->freeing && uv_is_active((const uv_handle_t *)&t->handle);
}

uint64_t loop_timer_due_in(const struct loop_timer *t)
{
    if (!loop_timer_active(t))
        return 0;
    return uv_timer_get_due_in(&t->handle);
}

void loop_timer_free(struct loop_timer *t)
{
    if (!t || t->freeing)
        return;
    t->freeing = 1;
    uv_timer_stop(&t->handle);
    uv_close((uv_handle_t *)&t->handle, loop_on_any_closed);
}

struct loop_signal {
    uv_signal_t handle;         /* handle.data = this */
    loop_signal_fn *fn;
    void *privdata;
    int freeing;
};

static void on_loop_signal(uv_signal_t *h, int signum)
{
    struct loop_signal *s = h->data;

    if (!s->freeing)
        s->fn(signum, s->privdata);
}

struct loop_signal *loop_signal_new(struct loop *loop, int signum,
                                    loop_signal_fn *fn, void *privdata)
{
    struct loop_signal *s;

    if (!fn)
        return NULL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    if (uv_signal_init(loop->uv, &s->handle) < 0) {
        free(s);
        return NULL;
    }
    s->handle.data = s;
    s->fn = fn;
    s->privdata = privdata;
    if (uv_signal_start(&s->handle, on_loop_signal, signum) < 0) {
        uv_close((uv_handle_t *)&s->handle, loop_on_any_closed);
        return NULL;
    }
    return s;
}

void loop_signal_free(struct loop_signal *s)
{
    if (!s || s->freeing)
        return;
    s->freeing = 1;
    uv_signal_stop(&s->handle);
    uv_close((uv_handle_t *)&s->handle, loop_on_any_closed);
}

struct loop_watch {
    uv_poll_t handle;           /* handle.data = this */
    loop_watch_fn *fn;
    void *privdata;
    int events;                 /* LOOP_READABLE | LOOP_WRITABLE */
    int freeing;
};

static void on_loop_watch(uv_poll_t *h, int status, int events)
{
    struct loop_watch *w = h->data;
    int ready = 0;

    if (w->freeing)
        return;
    if (status < 0) {
        /* libuv has stopped the handle: a later loop_watch_set with the
         * same mask must start it again. */
        ready = w->events;
        w->events = 0;
    } else {
        if (events & UV_READABLE)
            ready |= LOOP_READABLE;
        if (events & UV_WRITABLE)
            ready |= LOOP_WRITABLE;
    }
    if (ready)
        w->fn(ready, w->privdata);
}

struct loop_watch *loop_watch_new(struct loop *loop, int fd,
                                  loop_watch_fn *fn, void *privdata)
{
    struct loop_watch *w;

    if (!fn || fd < 0)
        return NULL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    if (uv_poll_init(loop->uv, &w->handle, fd) < 0) {
        free(w);
        return NULL;
    }
    w->handle.data = w;
    w->fn = fn;
    w->privdata = privdata;
    return w;
}

int loop_watch_set(struct loop_watch *w, int events)
{
    int uv_events = 0;

    if (w->freeing)
        return PARLEY_ERR_STATE;
    events &= LOOP_READABLE | LOOP_WRITABLE;
    /* Only a change reaches libuv: each uv_poll_start takes the fd out of
     * epoll and puts it back (up to three epoll_ctl calls), and owners
     * re-arm after every event with the mask they already have. */
    if (events == w->events)
        return PARLEY_OK;
    if (!events) {
        uv_poll_stop(&w->handle);
        w->events = 0;
        return PARLEY_OK;
    }
    if (events & LOOP_READABLE)
        uv_events |= UV_READABLE;
    if (events & LOOP_WRITABLE)
        uv_events |= UV_WRITABLE;
    if (uv_poll_start(&w->handle, uv_events, on_loop_watch) < 0) {
        w->events = 0;          /* uv_poll_start stops before it starts */
        return PARLEY_ERR_IO;
    }
    w->events = events;
    return PARLEY_OK;
}

void loop_watch_free(struct loop_watch *w)
{
    if (!w || w->freeing)
        return;
    w->freeing = 1;
    uv_poll_stop(&w->handle);
    uv_close((uv_handle_t *)&w->handle, loop_on_any_closed);
}
