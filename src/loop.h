/*
 * The one libuv loop and the curl multi handles driven by it (several,
 * each with at most a few hundred transfers: see loop_multi.c), following
 * curl's docs/examples/multi-uv.c with the fixes listed in STYLE.md: every
 * allocation and CURLMcode checked, check_multi_info after every
 * socket_action, CURL_CSELECT_ERR on poll errors, and handles freed only
 * in their close callbacks.  HTTP requests (LLM, Matrix) go through
 * loop_http_start so that each gets a capped response buffer, an error
 * buffer, restricted protocols and the parsed Retry-After header.
 *
 * The loop also offers what the rest of parley needs from libuv, so that
 * <uv.h> stays in loop*.c and the glue that must speak to a library's own
 * libuv hooks (hiredis in store.c): timers, signals, readiness watches
 * on a file descriptor, TCP streams with name resolution, a loopback
 * listener, and running the loop.
 * Each of these objects is allocated here and freed by loop_*_free, which
 * may be called from inside the object's own callback; its memory goes
 * in libuv's close callback, so an owner can free its own struct right
 * after (hiredis libuv.h:81-99, STYLE.md "free memory that owns a uv
 * handle only in its close callback").
 */
#ifndef PARLEY_LOOP_H
#define PARLEY_LOOP_H

#include <stddef.h>
#include <stdint.h>

struct uv_loop_s;
struct loop;
struct http_request;

/* Largest response body accepted unless the caller sets a smaller cap. */
#define HTTP_BODY_MAX (8 * 1024 * 1024)

/*
 * Body bytes of a streamed response as they arrive (see stream_type).
 * Runs from the loop after curl has returned, never inside a curl
 * callback, so it may start or cancel requests, this one included (then
 * neither on_data nor done runs again for it).  data is valid only during
 * the call.  privdata is the one given to loop_http_start.
 */
typedef void http_data_fn(const char *data, size_t len, void *privdata);

struct http_options {
    const char *method;         /* "GET", "POST", "PUT"; NULL = GET */
    const char *url;
    const char *const *headers; /* "Name: value" lines; may hold secrets,
                                   never logged */
    size_t n_headers;
    const char *body;           /* request body or NULL; copied unless
                                   body_borrowed */
    size_t body_len;
    int body_borrowed;          /* the caller keeps body unchanged until
                                   done runs or the request is cancelled,
                                   so curl reads it in place: no copy per
                                   request in flight */
    int h2_prior_knowledge;     /* http:// speaks HTTP/2 from the first
                                   byte (h2c): requests to one origin share
                                   connections (curl multiplexes them) */
    long connect_timeout_ms;    /* 0 = curl default */
    long timeout_ms;            /* whole transfer; 0 = none */
    long idle_timeout_ms;       /* no body byte for this long: _TIMEOUT;
                                   0 = none.  Whole seconds (rounded up):
                                   curl's low-speed check, 1 byte/s */
    size_t max_body;            /* response cap; 0 = HTTP_BODY_MAX */
    http_data_fn *on_data;      /* NULL: collect the whole body for done */
    const char *stream_type;    /* with on_data: a 2xx answer of this media
                                   type ("text/event-stream") goes to on_data
                                   piece by piece; any other answer is
                                   collected for done as usual */
};

/* Valid only during the done callback. */
struct http_response {
    int status;                 /* PARLEY_OK if an HTTP answer arrived,
                                   else _IO, _TIMEOUT, _TOO_LARGE, ... */
    long code;                  /* HTTP status, 0 when none */
    const char *body;           /* NUL-terminated, never NULL */
    size_t body_len;
    long retry_after_ms;        /* Retry-After header, -1 when absent */
    const char *errstr;         /* curl's message when status != OK */
    int streamed;               /* the body went to on_data; body is "" */
};

typedef void http_done_fn(const struct http_response *resp, void *privdata);

/* Create the loop state on uv (a uv_loop_t *, not owned), or on a uv
 * loop of its own when uv is NULL (closed and freed by loop_free, which
 * must then be called after loop_run has returned, not from inside it). */
int loop_create(struct loop **out, struct uv_loop_s *uv);
/* The uv loop, for glue that attaches a library's own libuv hooks. */
struct uv_loop_s *loop_uv(struct loop *loop);

/* Run until nothing is left to do (no active handle or request). */
void loop_run(struct loop *loop);

/* The loop's cached clock in ms (uv_now): the start of this iteration,
 * monotonic, cheap; what timers measure against. */
uint64_t loop_now_ms(const struct loop *loop);

/* ---- timers ------------------------------------------------------------ */

struct loop_timer;
typedef void loop_timer_fn(void *privdata);

/* A stopped timer; NULL when out of memory or libuv refuses. */
struct loop_timer *loop_timer_new(struct loop *loop, loop_timer_fn *fn,
                                  void *privdata);
/*
 * (Re)arm: fn runs after timeout_ms, then every repeat_ms if that is not
 * 0.  Restarting an armed timer moves its deadline.  A 0 ms timeout runs
 * on the next loop iteration, never inside this call.  Returns PARLEY_OK
 * or PARLEY_ERR_STATE on a timer being freed or NULL (an owner that let
 * its timers go at stop need not check before every call).
 */
int loop_timer_start(struct loop_timer *t, uint64_t timeout_ms,
                     uint64_t repeat_ms);
/* Disarm; a no-op on a stopped timer or NULL. */
void loop_timer_stop(struct loop_timer *t);
/* Whether the timer is armed (0 for NULL). */
int loop_timer_active(const struct loop_timer *t);
/* ms until the timer fires; 0 when it is due or stopped. */
uint64_t loop_timer_due_in(const struct loop_timer *t);
/* Stop and release the timer; fn is not called again, even when this
 * runs inside fn.  NULL is allowed. */
void loop_timer_free(struct loop_timer *t);

/* ---- signals ----------------------------------------------------------- */

struct loop_signal;
typedef void loop_signal_fn(int signum, void *privdata);

/* Call fn from the loop (not from the signal handler) whenever signum
 * arrives; NULL on failure. */
struct loop_signal *loop_signal_new(struct loop *loop, int signum,
                                    loop_signal_fn *fn, void *privdata);
/* Stop listening and release; allowed inside fn.  NULL is allowed. */
void loop_signal_free(struct loop_signal *s);

/* ---- readiness of a file descriptor ------------------------------------ */

#define LOOP_READABLE 1
#define LOOP_WRITABLE 2

struct loop_watch;
/* events is what is ready.  On a poll error it is the whole mask being
 * watched, so the owner tries both ways and meets the error itself (as
 * hiredis adapters/libuv.h:17-27 does). */
typedef void loop_watch_fn(int events, void *privdata);

/* Watch fd (a socket; not owned, never closed here), with an empty mask;
 * NULL on failure. */
struct loop_watch *loop_watch_new(struct loop *loop, int fd,
                                  loop_watch_fn *fn, void *privdata);
/* Watch for events (LOOP_READABLE | LOOP_WRITABLE); 0 stops watching.
 * The same mask again costs nothing.  Returns PARLEY_OK, or
 * PARLEY_ERR_IO when libuv refuses. */
int loop_watch_set(struct loop_watch *w, int events);
/* Stop and release; allowed inside fn.  NULL is allowed. */
void loop_watch_free(struct loop_watch *w);

/*
 * Start a request.  done runs exactly once from the loop (never inside
 * this call) unless the request is cancelled first.  *out (may be NULL)
 * receives a handle valid until done runs or loop_http_cancel returns.
 */
int loop_http_start(struct loop *loop, const struct http_options *opt,
                    http_done_fn *done, void *privdata,
                    struct http_request **out);

/* Whether this libcurl can send h2c with prior knowledge
 * (http_options.h2_prior_knowledge): built with HTTP/2 and 8.0.0 or
 * newer.  7.88 fails every request that reuses such a connection (curl
 * issue 10634), so there it would only break requests.  Otherwise
 * *why gets a short reason (static). */
int loop_http_h2c_usable(const char **why);

/* Abort a request; its done callback is not called. */
void loop_http_cancel(struct http_request *req);

/* Number of HTTP requests in flight. */
size_t loop_http_pending(const struct loop *loop);

/* Parse a Retry-After value (delta-seconds or HTTP-date) into ms; -1 if
 * it is neither.  Pure, for tests. */
long loop_parse_retry_after(const char *value, long now_unix);

/* ---- reading an input fd (stdin) --------------------------------------- */

struct loop_reader;
/*
 * A chunk of input (len > 0, status PARLEY_OK; data valid only during the
 * call), or, once and last, the end: data NULL, len 0, status
 * PARLEY_ERR_EOF at end of input or PARLEY_ERR_IO on a read error.
 */
typedef void loop_read_fn(const char *data, size_t len, int status,
                          void *privdata);

/*
 * Read fd (not owned, never closed here) from the loop, whatever it is:
 * a terminal or a pipe is read as a stream, a regular file (or
 * /dev/null) with positioned reads, which is how libuv reads files
 * without blocking the loop.  Returns PARLEY_OK and *out, or
 * PARLEY_ERR_IO with a reason in err.
 */
int loop_reader_open(struct loop *loop, int fd, loop_read_fn *fn,
                     void *privdata, struct loop_reader **out, char *err,
                     size_t errlen);
/* Stop reading and release; fn is not called again.  Allowed inside fn;
 * a file read in progress finishes in the background first.  NULL is
 * allowed. */
void loop_reader_free(struct loop_reader *r);

/* ---- TCP streams ------------------------------------------------------- */

struct sockaddr_in;
struct loop_tcp;
struct loop_listener;

/*
 * What a stream reports.  Every callback may call loop_tcp_free on its
 * own stream (and free its owner): nothing of the stream is touched
 * afterwards, and its memory goes in libuv's close callback.
 */
struct loop_tcp_cbs {
    /* loop_tcp_connect only: connected, reading has started.  May be
     * NULL. */
    void (*connected)(void *privdata);
    /* Bytes received; data is valid only during the call. */
    void (*data)(const char *data, size_t len, void *privdata);
    /* Once and last: PARLEY_ERR_EOF when the peer closed the stream,
     * PARLEY_ERR_IO when resolving, connecting, reading or writing failed;
     * why is an operator-facing sentence naming the host.  The stream is
     * dead afterwards but still belongs to the owner (loop_tcp_free). */
    void (*end)(int status, const char *why, void *privdata);
};

/*
 * Connect to host (a name or an address literal) and port: the name is
 * resolved without blocking the loop (getaddrinfo on libuv's thread
 * pool), then each address is tried in order until one accepts.  Every
 * outcome arrives later through cbs (copied), never inside this call.
 * Returns PARLEY_OK and *out, or an error with err filled.
 */
int loop_tcp_connect(struct loop *loop, const char *host, int port,
                     const struct loop_tcp_cbs *cbs, void *privdata,
                     struct loop_tcp **out, char *err, size_t errlen);

/* An accepted stream (see loop_listen_local) starts reading into cbs. */
int loop_tcp_start(struct loop_tcp *s, const struct loop_tcp_cbs *cbs,
                   void *privdata);

/*
 * Queue bytes (copied; the copy is wiped once written, since lines may
 * carry credentials).  Returns PARLEY_OK, PARLEY_ERR_STATE when the
 * stream is not connected or has ended, PARLEY_ERR_OOM or PARLEY_ERR_IO.
 * A write that fails later ends the stream through cbs.end.
 */
int loop_tcp_write(struct loop_tcp *s, const char *data, size_t len);

/* Close the stream; queued writes are dropped and no callback runs
 * again.  Allowed inside the stream's callbacks.  NULL is allowed. */
void loop_tcp_free(struct loop_tcp *s);

/*
 * A new connection on a listener, from peer.  conn now belongs to the
 * callee, who must either loop_tcp_start or loop_tcp_free it.
 */
typedef void loop_accept_fn(struct loop_tcp *conn,
                            const struct sockaddr_in *peer, void *privdata);

/*
 * Listen on 127.0.0.1 with a port chosen by the system (in *port_out),
 * for a library in this process that can only connect to an address.
 * Returns PARLEY_OK and *out, or PARLEY_ERR_IO with err filled.
 */
int loop_listen_local(struct loop *loop, loop_accept_fn *fn, void *privdata,
                      struct loop_listener **out, int *port_out, char *err,
                      size_t errlen);
/* Stop listening and release; allowed inside fn.  NULL is allowed. */
void loop_listener_free(struct loop_listener *l);

/* Cancel all requests and close handles; free in the close callbacks.
 * Run the uv loop afterwards until it has no handles (loop_run), then
 * free with loop_free.  Timers, signals and watches belong to their
 * owners, who free them before the loop runs out. */
void loop_close(struct loop *loop);
void loop_free(struct loop *loop);

#endif
