/*
 * The one libuv loop and the curl multi handle driven by it, following
 * curl's docs/examples/multi-uv.c with the fixes listed in STYLE.md: every
 * allocation and CURLMcode checked, check_multi_info after every
 * socket_action, CURL_CSELECT_ERR on poll errors, and handles freed only
 * in their close callbacks.  HTTP requests (LLM, Matrix) go through
 * loop_http_start so that each gets a capped response buffer, an error
 * buffer, restricted protocols and the parsed Retry-After header.
 */
#ifndef PARLEY_LOOP_H
#define PARLEY_LOOP_H

#include <stddef.h>

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
    const char *body;           /* request body or NULL; copied */
    size_t body_len;
    long connect_timeout_ms;    /* 0 = curl default */
    long timeout_ms;            /* whole transfer; 0 = none */
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

/* Create the loop state on uv (a uv_loop_t *, not owned). */
int loop_create(struct loop **out, struct uv_loop_s *uv);
struct uv_loop_s *loop_uv(struct loop *loop);

/*
 * Start a request.  done runs exactly once from the loop (never inside
 * this call) unless the request is cancelled first.  *out (may be NULL)
 * receives a handle valid until done runs or loop_http_cancel returns.
 */
int loop_http_start(struct loop *loop, const struct http_options *opt,
                    http_done_fn *done, void *privdata,
                    struct http_request **out);

/* Abort a request; its done callback is not called. */
void loop_http_cancel(struct http_request *req);

/* Number of HTTP requests in flight. */
size_t loop_http_pending(const struct loop *loop);

/* Parse a Retry-After value (delta-seconds or HTTP-date) into ms; -1 if
 * it is neither.  Pure, for tests. */
long loop_parse_retry_after(const char *value, long now_unix);

/* Cancel all requests and close handles; free in the close callbacks.
 * Run the uv loop afterwards until it has no handles, then free with
 * loop_free. */
void loop_close(struct loop *loop);
void loop_free(struct loop *loop);

#endif
