/*
 * The libuv loop and the curl multi handle it drives, after curl's
 * docs/examples/multi-uv.c.  curl tells us which sockets to watch
 * (cb_socket) and when to wake it (cb_timeout); libuv tells curl when a
 * socket is ready (on_uv_socket) or the timer fired (on_uv_timeout), and
 * after every curl_multi_socket_action we collect finished transfers
 * (check_multi_info), also when no transfer is left running, which the
 * example skips.  Each request gets a response buffer capped at
 * max_body (overflow is TOO_LARGE, never a silent realloc), an error
 * buffer, http/https only, and the Retry-After header parsed.  Memory that
 * owns a uv handle is freed only in its close callback; the loop struct
 * itself waits for the last of those before it is freed.
 *
 * The timers, signals and fd watches at the end of the file are thin
 * wrappers, one uv handle each, so that no other module needs <uv.h>;
 * they are not counted in open_handles because they belong to their
 * owners, not to the loop.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <uv.h>

#include "log.h"
#include "loop.h"
#include "status.h"

#ifndef PARLEY_VERSION
#define PARLEY_VERSION "dev"
#endif

/* Bytes of curl's receive buffer per request (curl's minimum is 1024). */
#define LOOP_CURL_BUFFER 4096

/* Longest method name we pass to CURLOPT_CUSTOMREQUEST; real ones are
 * short, and anything longer is a caller bug. */
#define LOOP_METHOD_MAX 16

/* Longest wait a Retry-After header may ask for (one day).  A server can
 * send any number; this keeps the arithmetic in range, and llm caps the
 * wait far lower anyway. */
#define LOOP_RETRY_AFTER_MAX_MS (24L * 3600 * 1000)

/* First allocation for a response body; doubled as data arrives. */
#define LOOP_BODY_INITIAL 4096

struct loop_socket;

struct loop {
    uv_loop_t *uv;              /* own_uv, or the caller's */
    uv_loop_t *own_uv;          /* created by loop_create(NULL) */
    CURLM *multi;
    uv_timer_t timeout;         /* curl's single timer */
    struct http_request *reqs;  /* in flight, doubly linked */
    struct loop_socket *socks;  /* watched sockets, doubly linked */
    size_t pending;             /* requests in reqs */
    size_t open_handles;        /* uv handles not yet closed */
    int closing;                /* loop_close called */
    /* A streamed body got bytes since the last flush_streams: without
     * it every socket event walked all of reqs, quadratic with 10,000
     * requests in flight (a third of the CPU in scripts/bench/run.sh). */
    int streams_dirty;
    int free_requested;         /* loop_free called before handles closed */
};

/* One socket curl asked us to watch (multi-uv.c's curl_context). */
struct loop_socket {
    uv_poll_t poll;             /* poll.data = this */
    curl_socket_t fd;
    struct loop *loop;
    struct loop_socket *prev, *next;
};

/* Where a response body goes (see http_options.stream_type). */
enum loop_body_mode {
    LOOP_BODY_UNDECIDED,        /* no body byte yet */
    LOOP_BODY_COLLECT,          /* into buf, for done */
    LOOP_BODY_STREAM            /* into buf until the next flush_streams */
};

struct http_request {
    struct loop *loop;
    CURL *easy;
    struct curl_slist *headers;
    char *buf;                  /* response body, NUL-terminated; when
                                   streaming, the bytes not yet handed to
                                   on_data */
    size_t len;
    size_t cap;                 /* allocated bytes of buf */
    size_t max;                 /* cap on len */
    int too_large;              /* write callback refused the body */
    int oom;                    /* write callback could not grow buf */
    long retry_after_ms;        /* from Retry-After, -1 when absent */
    long retry_after_ms_hdr;    /* from retry-after-ms, -1 when absent */
    char errbuf[CURL_ERROR_SIZE];
    http_done_fn *done;
    http_data_fn *on_data;      /* NULL: never stream */
    char *stream_type;          /* owned copy of http_options.stream_type */
    enum loop_body_mode mode;
    void *privdata;
    struct http_request *prev, *next;
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

static void request_unlink(struct http_request *req)
{
    struct loop *loop = req->loop;

    if (req->prev)
        req->prev->next = req->next;
    else
        loop->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
    loop->pending--;
}

/* Free a request that is no longer attached to the multi handle. */
static void request_free(struct http_request *req)
{
    if (req->easy)
        curl_easy_cleanup(req->easy);
    curl_slist_free_all(req->headers);
    free(req->buf);
    free(req->stream_type);
    free(req);
}

/* Map a finished transfer's CURLcode to a parley status. */
static int status_from_curl(const struct http_request *req, CURLcode result)
{
    switch (result) {
    case CURLE_OK:
        return PARLEY_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return PARLEY_ERR_TIMEOUT;
    case CURLE_FILESIZE_EXCEEDED:
        return PARLEY_ERR_TOO_LARGE;
    case CURLE_WRITE_ERROR:
        if (req->too_large)
            return PARLEY_ERR_TOO_LARGE;
        return req->oom ? PARLEY_ERR_OOM : PARLEY_ERR_IO;
    case CURLE_OUT_OF_MEMORY:
        return PARLEY_ERR_OOM;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return PARLEY_ERR_CONFIG;
    case CURLE_WEIRD_SERVER_REPLY:
        return PARLEY_ERR_PROTOCOL;
    default:
        return PARLEY_ERR_IO;
    }
}

/*
 * Hand every finished transfer to its owner.  A done callback may start or
 * cancel other requests or close the loop, so the multi handle is checked
 * again after each one; cancelled handles take their queued message with
 * them (curl_multi_remove_handle drops it).
 */
static void check_multi_info(struct loop *loop)
{
    CURLMsg *msg;
    int left;

    while (!loop->closing) {
        struct http_request *req;
        struct http_response resp;
        CURLcode result;
        char *priv = NULL;
        long code = 0;

        msg = curl_multi_info_read(loop->multi, &left);
        if (!msg)
            break;
        if (msg->msg != CURLMSG_DONE)
            continue;
        result = msg->data.result;
        /* msg is dead after remove_handle, so read everything first. */
        if (curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE,
                              &priv) != CURLE_OK || !priv)
            continue;
        req = (struct http_request *)priv;
        if (curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE,
                              &code) != CURLE_OK)
            code = 0;
        curl_multi_remove_handle(loop->multi, req->easy);
        request_unlink(req);

        memset(&resp, 0, sizeof(resp));
        resp.status = status_from_curl(req, result);
        resp.code = code;
        resp.body = req->buf ? req->buf : "";
        resp.body_len = req->buf ? req->len : 0;
        resp.retry_after_ms = req->retry_after_ms_hdr >= 0 ?
            req->retry_after_ms_hdr : req->retry_after_ms;
        if (resp.status == PARLEY_ERR_TOO_LARGE)
            snprintf(req->errbuf, sizeof(req->errbuf),
                     "response body over the %zu-byte cap", req->max);
        else if (result != CURLE_OK && req->errbuf[0] == '\0')
            snprintf(req->errbuf, sizeof(req->errbuf), "%s",
                     curl_easy_strerror(result));
        resp.errstr = result != CURLE_OK ? req->errbuf : NULL;
        resp.streamed = req->mode == LOOP_BODY_STREAM;
        req->done(&resp, req->privdata);
        request_free(req);
    }
}

/*
 * Hand streamed bytes to their owners, outside every curl callback (curl
 * refuses add/remove_handle from inside one, and an owner may well want
 * to start a request when text arrives).  Any callback may cancel any
 * request, so the scan starts over after each; each call empties one
 * buffer, so this ends.  Runs before check_multi_info, so the last bytes
 * of a transfer arrive before its done callback.
 */
static void flush_streams(struct loop *loop)
{
    struct http_request *req = loop->reqs;

    if (!loop->streams_dirty)
        return;
    loop->streams_dirty = 0;
    while (req && !loop->closing) {
        if (req->mode == LOOP_BODY_STREAM && req->len > 0) {
            /* Detach first: the callback may free req. */
            char *data = req->buf;
            size_t len = req->len;

            req->buf = NULL;
            req->len = req->cap = 0;
            req->on_data(data, len, req->privdata);
            free(data);
            req = loop->reqs;
        } else {
            req = req->next;
        }
    }
}

static void on_uv_timeout(uv_timer_t *timer)
{
    struct loop *loop = timer->data;
    int running = 0;
    CURLMcode mc;

    if (loop->closing)
        return;
    mc = curl_multi_socket_action(loop->multi, CURL_SOCKET_TIMEOUT, 0,
                                  &running);
    if (mc != CURLM_OK)
        log_error("curl_multi_socket_action (timeout): %s",
                  curl_multi_strerror(mc));
    flush_streams(loop);
    check_multi_info(loop);
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
    flush_streams(loop);
    check_multi_info(loop);
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
        return 0;
    }
    /* 0 means "as soon as possible", but never from inside this
     * callback, and a 0 ms uv timer started from a timer callback would
     * run in the same pass; 1 ms is what multi-uv.c uses. */
    if (timeout_ms == 0)
        timeout_ms = 1;
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

/* Whether a Content-Type value names the media type want (parameters
 * such as "; charset=utf-8" ignored). */
static int media_type_is(const char *value, const char *want)
{
    size_t n = strlen(want);

    if (!value || strncasecmp(value, want, n) != 0)
        return 0;
    value += n;
    return *value == '\0' || *value == ';' || *value == ' ' ||
        *value == '\t';
}

/* At the first body byte: stream it or collect it. */
static void body_mode_decide(struct http_request *req)
{
    long code = 0;
    char *type = NULL;

    req->mode = LOOP_BODY_COLLECT;
    if (!req->on_data ||
        curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE,
                          &code) != CURLE_OK ||
        code < 200 || code > 299 ||
        curl_easy_getinfo(req->easy, CURLINFO_CONTENT_TYPE,
                          &type) != CURLE_OK)
        return;
    if (media_type_is(type, req->stream_type))
        req->mode = LOOP_BODY_STREAM;
}

/* CURLOPT_WRITEFUNCTION: append to the capped body buffer (which a
 * streamed response empties at every flush_streams). */
static size_t cb_write(char *data, size_t size, size_t nmemb, void *userp)
{
    struct http_request *req = userp;
    size_t n = size * nmemb;

    if (req->mode == LOOP_BODY_UNDECIDED)
        body_mode_decide(req);

    if (n > req->max - req->len) {
        req->too_large = 1;
        return 0;   /* CURLE_WRITE_ERROR, reported as TOO_LARGE */
    }
    if (req->len + n + 1 > req->cap) {
        size_t cap = req->cap ? req->cap : LOOP_BODY_INITIAL;
        char *p;

        while (cap < req->len + n + 1)
            cap *= 2;
        if (cap > req->max + 1)
            cap = req->max + 1;
        p = realloc(req->buf, cap);
        if (!p) {
            req->oom = 1;
            return 0;
        }
        req->buf = p;
        req->cap = cap;
    }
    memcpy(req->buf + req->len, data, n);
    req->len += n;
    req->buf[req->len] = '\0';
    if (req->mode == LOOP_BODY_STREAM)
        req->loop->streams_dirty = 1;
    return n;
}

/* Whether header line h (length n) is "name:", case-insensitively; on
 * success *value points past the colon and blanks. */
static int header_is(const char *h, size_t n, const char *name,
                     const char **value)
{
    size_t nl = strlen(name);

    if (n <= nl || h[nl] != ':' || strncasecmp(h, name, nl) != 0)
        return 0;
    h += nl + 1;
    while (*h == ' ' || *h == '\t')
        h++;
    *value = h;
    return 1;
}

static long parse_decimal_ms(const char *s, long scale);

/* CURLOPT_HEADERFUNCTION: keep Retry-After and retry-after-ms. */
static size_t cb_header(char *data, size_t size, size_t nmemb, void *userp)
{
    struct http_request *req = userp;
    size_t n = size * nmemb;
    const char *value;
    char line[256];
    size_t end;

    /* A new status line (after 100 Continue, say) starts fresh. */
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        req->retry_after_ms = -1;
        req->retry_after_ms_hdr = -1;
        return n;
    }
    /* The values we want are short; longer lines are not them. */
    if (n >= sizeof(line))
        return n;
    memcpy(line, data, n);
    end = n;
    while (end > 0 && (line[end - 1] == '\r' || line[end - 1] == '\n' ||
                       line[end - 1] == ' ' || line[end - 1] == '\t'))
        end--;
    line[end] = '\0';
    if (header_is(line, end, "retry-after-ms", &value)) {
        /* Sent by OpenAI and Azure; more precise than Retry-After. */
        req->retry_after_ms_hdr = parse_decimal_ms(value, 1);
    } else if (header_is(line, end, "retry-after", &value)) {
        req->retry_after_ms = loop_parse_retry_after(value,
                                                     (long)time(NULL));
    }
    return n;
}

/* Parse a non-negative decimal ("123", "1.5") times scale (1000 for
 * seconds, 1 for milliseconds) into ms, clamped to
 * LOOP_RETRY_AFTER_MAX_MS; -1 if it is not such a number. */
static long parse_decimal_ms(const char *s, long scale)
{
    long ms = 0;
    long frac_scale = scale / 10;
    int digits = 0;

    for (; isdigit((unsigned char)*s); s++, digits++) {
        if (ms <= LOOP_RETRY_AFTER_MAX_MS)
            ms = ms * 10 + (*s - '0') * scale;
    }
    if (*s == '.') {
        s++;
        for (; isdigit((unsigned char)*s); s++, digits++) {
            ms += (*s - '0') * frac_scale;
            frac_scale /= 10;
        }
    }
    while (*s == ' ' || *s == '\t')
        s++;
    if (digits == 0 || *s != '\0')
        return -1;
    return ms > LOOP_RETRY_AFTER_MAX_MS ? LOOP_RETRY_AFTER_MAX_MS : ms;
}

long loop_parse_retry_after(const char *value, long now_unix)
{
    const char *p;
    time_t when;
    int has_alpha = 0;

    if (!value)
        return -1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (*value == '\0')
        return -1;
    if (isdigit((unsigned char)*value) || *value == '.')
        return parse_decimal_ms(value, 1000);
    /* An HTTP-date (IMF-fixdate, RFC 850 or asctime) starts with a day
     * name; curl_getdate parses all three without the locale. */
    for (p = value; *p; p++) {
        if (isalpha((unsigned char)*p))
            has_alpha = 1;
        else if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            return -1;
    }
    if (!has_alpha || !isalpha((unsigned char)*value))
        return -1;
    when = curl_getdate(value, NULL);
    if (when == (time_t)-1)
        return -1;
    if ((long)when <= now_unix)
        return 0;
    if ((long)when - now_unix > LOOP_RETRY_AFTER_MAX_MS / 1000)
        return LOOP_RETRY_AFTER_MAX_MS;
    return ((long)when - now_unix) * 1000;
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
    rc = uv_timer_init(uv, &loop->timeout);
    if (rc < 0) {
        log_error("uv_timer_init: %s", uv_strerror(rc));
        curl_multi_cleanup(loop->multi);
        loop_destroy_uv(loop);
        free(loop);
        return PARLEY_ERR_OTHER;
    }
    loop->timeout.data = loop;
    loop->open_handles = 1;
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

/* Whether s holds a CR, LF or NUL before its end (header injection). */
static int has_line_break(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

static int method_valid(const char *m)
{
    size_t n = strlen(m);

    if (n == 0 || n > LOOP_METHOD_MAX)
        return 0;
    for (; *m; m++)
        if (*m < 'A' || *m > 'Z')
            return 0;
    return 1;
}

/* All easy options; CURLE_OK or the first failure. */
static CURLcode request_setopts(struct http_request *req,
                                const struct http_options *opt)
{
    CURL *e = req->easy;
    const char *method = opt->method ? opt->method : "GET";
    CURLcode result;

#define SETOPT(o, v) do { \
        result = curl_easy_setopt(e, o, v); \
        if (result) \
            return result; \
    } while (0)

    SETOPT(CURLOPT_URL, opt->url);
    SETOPT(CURLOPT_PRIVATE, req);
    SETOPT(CURLOPT_ERRORBUFFER, req->errbuf);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_FAILONERROR, 0L);
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    /* Never CURLOPT_VERBOSE: the headers hold the API key and tokens. */
    SETOPT(CURLOPT_VERBOSE, 0L);
    SETOPT(CURLOPT_WRITEFUNCTION, cb_write);
    SETOPT(CURLOPT_WRITEDATA, req);
    SETOPT(CURLOPT_HEADERFUNCTION, cb_header);
    SETOPT(CURLOPT_HEADERDATA, req);
    SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)req->max);
    SETOPT(CURLOPT_ACCEPT_ENCODING, "");
    SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
    /* curl's receive buffer, per request in flight: the default 16 KiB
     * was 23 of the 164 MB peak with 10,000 in flight (scripts/bench);
     * answers larger than this simply arrive in more pieces. */
    SETOPT(CURLOPT_BUFFERSIZE, (long)LOOP_CURL_BUFFER);
    /* Over TLS a burst waits for the first handshake to say (ALPN)
     * whether the API speaks h2, and then shares that connection instead
     * of opening one per request.  Never over cleartext: there curl
     * learns it only from the first answer, so a burst would wait one
     * whole model latency (scripts/bench/run.sh showed 2 s at 2 s). */
    if (strncasecmp(opt->url, "https://", 8) == 0)
        SETOPT(CURLOPT_PIPEWAIT, 1L);
    SETOPT(CURLOPT_USERAGENT, "parley/" PARLEY_VERSION);
    if (opt->connect_timeout_ms > 0)
        SETOPT(CURLOPT_CONNECTTIMEOUT_MS, opt->connect_timeout_ms);
    if (opt->timeout_ms > 0)
        SETOPT(CURLOPT_TIMEOUT_MS, opt->timeout_ms);
    if (req->headers)
        SETOPT(CURLOPT_HTTPHEADER, req->headers);
    if (strcmp(method, "GET") != 0 || opt->body) {
        SETOPT(CURLOPT_POSTFIELDSIZE_LARGE,
               (curl_off_t)(opt->body ? opt->body_len : 0));
        SETOPT(CURLOPT_COPYPOSTFIELDS, opt->body ? opt->body : "");
        if (strcmp(method, "POST") != 0)
            SETOPT(CURLOPT_CUSTOMREQUEST, method);
    }
#undef SETOPT
    return CURLE_OK;
}

int loop_http_start(struct loop *loop, const struct http_options *opt,
                    http_done_fn *done, void *privdata,
                    struct http_request **out)
{
    struct http_request *req;
    int have_expect = 0;
    CURLcode result;
    CURLMcode mc;

    if (out)
        *out = NULL;
    if (loop->closing)
        return PARLEY_ERR_STATE;
    if (!opt || !opt->url || !done ||
        (opt->method && !method_valid(opt->method)))
        return PARLEY_ERR_OTHER;
    req = calloc(1, sizeof(*req));
    if (!req)
        return PARLEY_ERR_OOM;
    req->loop = loop;
    req->done = done;
    req->privdata = privdata;
    req->retry_after_ms = -1;
    req->retry_after_ms_hdr = -1;
    req->max = opt->max_body ? opt->max_body : HTTP_BODY_MAX;
    if (opt->on_data && opt->stream_type) {
        req->on_data = opt->on_data;
        req->stream_type = strdup(opt->stream_type);
        if (!req->stream_type) {
            request_free(req);
            return PARLEY_ERR_OOM;
        }
    }

    for (size_t i = 0; i < opt->n_headers; i++) {
        struct curl_slist *l;

        if (has_line_break(opt->headers[i])) {
            request_free(req);
            return PARLEY_ERR_PROTOCOL;
        }
        if (strncasecmp(opt->headers[i], "Expect:", 7) == 0)
            have_expect = 1;
        l = curl_slist_append(req->headers, opt->headers[i]);
        if (!l) {
            request_free(req);
            return PARLEY_ERR_OOM;
        }
        req->headers = l;
    }
    /* curl sends "Expect: 100-continue" for bodies over 1 KiB and then
     * waits up to a second for the go-ahead; our JSON bodies are small
     * enough to send at once. */
    if (!have_expect) {
        struct curl_slist *l = curl_slist_append(req->headers, "Expect:");

        if (!l) {
            request_free(req);
            return PARLEY_ERR_OOM;
        }
        req->headers = l;
    }

    req->easy = curl_easy_init();
    if (!req->easy) {
        request_free(req);
        return PARLEY_ERR_OOM;
    }
    result = request_setopts(req, opt);
    if (result) {
        log_error("curl_easy_setopt: %s", curl_easy_strerror(result));
        request_free(req);
        return result == CURLE_OUT_OF_MEMORY ? PARLEY_ERR_OOM :
            PARLEY_ERR_CONFIG;
    }
    /* Adding only arms the timer (cb_timeout); the transfer, and with it
     * the done callback, runs later from the loop. */
    mc = curl_multi_add_handle(loop->multi, req->easy);
    if (mc != CURLM_OK) {
        log_error("curl_multi_add_handle: %s", curl_multi_strerror(mc));
        request_free(req);
        return mc == CURLM_OUT_OF_MEMORY ? PARLEY_ERR_OOM : PARLEY_ERR_OTHER;
    }
    req->next = loop->reqs;
    if (loop->reqs)
        loop->reqs->prev = req;
    loop->reqs = req;
    loop->pending++;
    if (out)
        *out = req;
    return PARLEY_OK;
}

void loop_http_cancel(struct http_request *req)
{
    if (!req)
        return;
    if (req->loop->multi)
        curl_multi_remove_handle(req->loop->multi, req->easy);
    request_unlink(req);
    request_free(req);
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

/* ---- timers, signals, fd watches --------------------------------------- */

struct loop_timer {
    uv_timer_t handle;          /* handle.data = this */
    loop_timer_fn *fn;
    void *privdata;
    int freeing;                /* loop_timer_free called */
};

static void on_any_closed(uv_handle_t *h)
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
    uv_close((uv_handle_t *)&t->handle, on_any_closed);
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
        uv_close((uv_handle_t *)&s->handle, on_any_closed);
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
    uv_close((uv_handle_t *)&s->handle, on_any_closed);
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
        ready = w->events;
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
    w->events = events;
    if (!events) {
        uv_poll_stop(&w->handle);
        return PARLEY_OK;
    }
    if (events & LOOP_READABLE)
        uv_events |= UV_READABLE;
    if (events & LOOP_WRITABLE)
        uv_events |= UV_WRITABLE;
    if (uv_poll_start(&w->handle, uv_events, on_loop_watch) < 0)
        return PARLEY_ERR_IO;
    return PARLEY_OK;
}

void loop_watch_free(struct loop_watch *w)
{
    if (!w || w->freeing)
        return;
    w->freeing = 1;
    uv_poll_stop(&w->handle);
    uv_close((uv_handle_t *)&w->handle, on_any_closed);
}

/* Bytes asked for per read of an input fd. */
#define LOOP_READ_CHUNK 4096

struct loop_reader {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tty_t tty;
        uv_pipe_t pipe;
    } in;                       /* in.handle.data = this; streams only */
    uv_fs_t fs_req;             /* files only */
    uv_loop_t *uv;
    int fd;
    int is_stream;
    int handle_open;            /* in is initialised and not closed */
    int fs_pending;             /* a uv_fs_read is in flight */
    int in_callback;            /* fn is running */
    int freeing;                /* loop_reader_free called */
    int done;                   /* the end was reported */
    int64_t offset;             /* next file position */
    loop_read_fn *fn;
    void *privdata;
    char chunk[LOOP_READ_CHUNK];
};

static void on_reader_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Free r now, or when what it still has in flight comes back. */
static void reader_release(struct loop_reader *r)
{
    if (r->in_callback || r->fs_pending)
        return;
    if (r->handle_open) {
        r->handle_open = 0;
        uv_read_stop(&r->in.stream);
        uv_close(&r->in.handle, on_reader_closed);
        return;
    }
    free(r);
}

/* Call fn unless r is being freed; 0 if r may be used afterwards. */
static int reader_deliver(struct loop_reader *r, const char *data,
                          size_t len, int status)
{
    if (r->freeing)
        return -1;
    if (!data)
        r->done = 1;
    r->in_callback = 1;
    r->fn(data, len, status, r->privdata);
    r->in_callback = 0;
    if (r->freeing) {
        reader_release(r);
        return -1;
    }
    return 0;
}

static void reader_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct loop_reader *r = h->data;

    (void)suggested;
    buf->base = r->chunk;
    buf->len = sizeof(r->chunk);
}

static void on_reader_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct loop_reader *r = s->data;

    if (n > 0) {
        reader_deliver(r, buf->base, (size_t)n, PARLEY_OK);
        return;
    }
    if (n == 0)
        return;                 /* EAGAIN: nothing this time */
    uv_read_stop(s);
    if (n != UV_EOF)
        log_warn("reading fd %d: %s", r->fd, uv_strerror((int)n));
    reader_deliver(r, NULL, 0, n == UV_EOF ? PARLEY_ERR_EOF : PARLEY_ERR_IO);
}

static void reader_fs_read(struct loop_reader *r);

static void on_reader_fs_read(uv_fs_t *req)
{
    struct loop_reader *r = req->data;
    ssize_t n = req->result;

    uv_fs_req_cleanup(req);
    r->fs_pending = 0;
    if (r->freeing) {
        reader_release(r);
        return;
    }
    if (n > 0) {
        r->offset += n;
        if (reader_deliver(r, r->chunk, (size_t)n, PARLEY_OK) == 0)
            reader_fs_read(r);
        return;
    }
    if (n < 0)
        log_warn("reading fd %d: %s", r->fd, uv_strerror((int)n));
    reader_deliver(r, NULL, 0, n == 0 ? PARLEY_ERR_EOF : PARLEY_ERR_IO);
}

static void reader_fs_read(struct loop_reader *r)
{
    uv_buf_t buf = uv_buf_init(r->chunk, sizeof(r->chunk));
    int rc;

    r->fs_req.data = r;
    rc = uv_fs_read(r->uv, &r->fs_req, r->fd, &buf, 1, r->offset,
                    on_reader_fs_read);
    if (rc < 0) {
        log_warn("reading fd %d: %s", r->fd, uv_strerror(rc));
        reader_deliver(r, NULL, 0, PARLEY_ERR_IO);
        return;
    }
    r->fs_pending = 1;
}

int loop_reader_open(struct loop *loop, int fd, loop_read_fn *fn,
                     void *privdata, struct loop_reader **out, char *err,
                     size_t errlen)
{
    uv_handle_type type = uv_guess_handle(fd);
    struct loop_reader *r;
    int rc = 0;

    *out = NULL;
    if (!fn || fd < 0) {
        snprintf(err, errlen, "no input to read");
        return PARLEY_ERR_IO;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return PARLEY_ERR_OOM;
    }
    r->uv = loop->uv;
    r->fd = fd;
    r->fn = fn;
    r->privdata = privdata;
    r->in.handle.data = r;
    if (type == UV_TTY) {
        rc = uv_tty_init(loop->uv, &r->in.tty, fd, 1);
        r->is_stream = 1;
    } else if (type == UV_NAMED_PIPE || type == UV_TCP) {
        rc = uv_pipe_init(loop->uv, &r->in.pipe, 0);
        if (rc == 0) {
            r->handle_open = 1;
            rc = uv_pipe_open(&r->in.pipe, fd);
        }
        r->is_stream = 1;
    }
    if (rc == 0 && r->is_stream) {
        r->handle_open = 1;
        r->in.handle.data = r;
        rc = uv_read_start(&r->in.stream, reader_alloc, on_reader_read);
    }
    if (rc < 0) {
        snprintf(err, errlen, "cannot read fd %d: %s", fd, uv_strerror(rc));
        r->freeing = 1;
        reader_release(r);
        return PARLEY_ERR_IO;
    }
    if (!r->is_stream)
        reader_fs_read(r);      /* a regular file, /dev/null, ... */
    *out = r;
    return PARLEY_OK;
}

void loop_reader_free(struct loop_reader *r)
{
    if (!r || r->freeing)
        return;
    r->freeing = 1;
    reader_release(r);
}


/* ---- TCP streams and the loopback listener ----------------------------- */

enum tcp_state { TCP_RESOLVING, TCP_CONNECTING, TCP_OPEN, TCP_ENDED };

struct loop_tcp {
    struct loop *loop;
    uv_tcp_t *handle;           /* this attempt's handle (data = this); a
                                   failed connect leaves it unusable, so
                                   each address gets a new one */
    uv_getaddrinfo_t gai;       /* gai.data = this */
    uv_connect_t conn;          /* conn.data = this */
    struct addrinfo *ai_list, *ai_next;
    char *host;                 /* for messages */
    int port;
    struct loop_tcp_cbs cbs;
    void *privdata;
    enum tcp_state state;
    int reading;
    int gai_active;
    int pending;                /* handles + requests in flight */
    int freeing;                /* loop_tcp_free called */
};

struct tcp_write {
    uv_write_t req;             /* req.data = the stream */
    size_t len;
    char data[];
};

/* Read buffer: libuv reads into it and the callback consumes it before
 * the next read; one loop thread, so one static buffer suffices. */
static char tcp_slab[65536];

static void tcp_maybe_release(struct loop_tcp *s)
{
    if (!s->freeing || s->pending > 0)
        return;
    if (s->ai_list)
        uv_freeaddrinfo(s->ai_list);
    free(s->host);
    free(s);
}

static void on_tcp_handle_closed(uv_handle_t *h)
{
    struct loop_tcp *s = h->data;

    free(h);
    s->pending--;
    tcp_maybe_release(s);
}

static void tcp_close_handle(struct loop_tcp *s)
{
    if (!s->handle)
        return;
    uv_close((uv_handle_t *)s->handle, on_tcp_handle_closed);
    s->handle = NULL;
    s->reading = 0;
}

/* A fresh handle for s, counted in pending until its close callback. */
static int tcp_open_handle(struct loop_tcp *s)
{
    uv_tcp_t *h = malloc(sizeof(*h));

    if (!h)
        return UV_ENOMEM;
    if (uv_tcp_init(s->loop->uv, h) < 0) {
        free(h);
        return UV_ENOMEM;
    }
    h->data = s;
    s->handle = h;
    s->pending++;
    return 0;
}

static struct loop_tcp *tcp_new(struct loop *loop, const char *host,
                                int port)
{
    struct loop_tcp *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->loop = loop;
    s->port = port;
    s->host = strdup(host);
    if (!s->host) {
        free(s);
        return NULL;
    }
    return s;
}

/* Report the end once; the stream stays open for its owner to free. */
static void tcp_end(struct loop_tcp *s, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void tcp_end(struct loop_tcp *s, int status, const char *fmt, ...)
{
    char why[256];
    va_list ap;

    if (s->freeing || s->state == TCP_ENDED)
        return;
    s->state = TCP_ENDED;
    if (s->reading && s->handle)
        uv_read_stop((uv_stream_t *)s->handle);
    s->reading = 0;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (s->cbs.end)
        s->cbs.end(status, why, s->privdata);
}

static void tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(tcp_slab, sizeof(tcp_slab));
}

static void on_tcp_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct loop_tcp *s = st->data;

    if (n == 0 || s->freeing || s->state != TCP_OPEN)
        return;
    if (n == UV_EOF) {
        tcp_end(s, PARLEY_ERR_EOF, "%s closed the connection", s->host);
        return;
    }
    if (n < 0) {
        tcp_end(s, PARLEY_ERR_IO, "reading from %s: %s", s->host,
                uv_strerror((int)n));
        return;
    }
    if (s->cbs.data)
        s->cbs.data(buf->base, (size_t)n, s->privdata);
}

static int tcp_read_start(struct loop_tcp *s)
{
    int rc = uv_read_start((uv_stream_t *)s->handle, tcp_alloc, on_tcp_read);

    if (rc < 0)
        return rc;
    s->reading = 1;
    return 0;
}

static void tcp_try_connect(struct loop_tcp *s);

static void tcp_addr_name(const struct addrinfo *ai, char *buf, size_t len)
{
    snprintf(buf, len, "?");
    if (ai->ai_family == AF_INET)
        uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, buf, len);
    else if (ai->ai_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, buf, len);
}

static void on_tcp_connect(uv_connect_t *req, int status)
{
    struct loop_tcp *s = req->data;
    char addr[64];
    int rc;

    s->pending--;
    if (s->freeing || status == UV_ECANCELED) {
        tcp_maybe_release(s);
        return;
    }
    if (status < 0) {
        tcp_addr_name(s->ai_next, addr, sizeof(addr));
        s->ai_next = s->ai_next->ai_next;
        tcp_close_handle(s);
        if (!s->ai_next) {
            tcp_end(s, PARLEY_ERR_IO, "cannot connect to %s (%s) port %d: "
                    "%s", s->host, addr, s->port, uv_strerror(status));
            return;
        }
        log_warn("connect to %s (%s) port %d failed: %s; trying the next "
                 "address", s->host, addr, s->port, uv_strerror(status));
        tcp_try_connect(s);
        return;
    }
    s->state = TCP_OPEN;
    rc = tcp_read_start(s);
    if (rc < 0) {
        tcp_end(s, PARLEY_ERR_IO, "reading from %s: %s", s->host,
                uv_strerror(rc));
        return;
    }
    if (s->cbs.connected)
        s->cbs.connected(s->privdata);
}

static void tcp_try_connect(struct loop_tcp *s)
{
    int rc;

    s->state = TCP_CONNECTING;
    rc = tcp_open_handle(s);
    if (rc == 0) {
        s->conn.data = s;
        rc = uv_tcp_connect(&s->conn, s->handle, s->ai_next->ai_addr,
                            on_tcp_connect);
        if (rc == 0) {
            s->pending++;
            return;
        }
        tcp_close_handle(s);
    }
    tcp_end(s, PARLEY_ERR_IO, "cannot connect to %s port %d: %s", s->host,
            s->port, uv_strerror(rc));
}

static void on_tcp_resolved(uv_getaddrinfo_t *req, int status,
                            struct addrinfo *res)
{
    struct loop_tcp *s = req->data;

    s->pending--;
    s->gai_active = 0;
    if (s->freeing || status == UV_ECANCELED) {
        if (res)
            uv_freeaddrinfo(res);
        tcp_maybe_release(s);
        return;
    }
    if (status < 0 || !res) {
        if (res)
            uv_freeaddrinfo(res);
        tcp_end(s, PARLEY_ERR_IO, "cannot resolve %s: %s", s->host,
                uv_strerror(status < 0 ? status : UV_EAI_NONAME));
        return;
    }
    s->ai_list = res;
    s->ai_next = res;
    tcp_try_connect(s);
}

int loop_tcp_connect(struct loop *loop, const char *host, int port,
                     const struct loop_tcp_cbs *cbs, void *privdata,
                     struct loop_tcp **out, char *err, size_t errlen)
{
    struct loop_tcp *s;
    struct addrinfo hints;
    char portstr[16];
    int rc;

    *out = NULL;
    if (!host || !*host || port <= 0 || port > 65535 || !cbs || !cbs->end) {
        snprintf(err, errlen, "invalid host or port");
        return PARLEY_ERR_CONFIG;
    }
    s = tcp_new(loop, host, port);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return PARLEY_ERR_OOM;
    }
    s->cbs = *cbs;
    s->privdata = privdata;
    s->state = TCP_RESOLVING;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof(portstr), "%d", port);
    s->gai.data = s;
    rc = uv_getaddrinfo(loop->uv, &s->gai, on_tcp_resolved, s->host, portstr,
                        &hints);
    if (rc < 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, uv_strerror(rc));
        s->freeing = 1;
        tcp_maybe_release(s);
        return PARLEY_ERR_IO;
    }
    s->gai_active = 1;
    s->pending++;
    *out = s;
    return PARLEY_OK;
}

int loop_tcp_start(struct loop_tcp *s, const struct loop_tcp_cbs *cbs,
                   void *privdata)
{
    if (!s || s->freeing || s->state != TCP_OPEN || s->reading || !cbs ||
        !cbs->end)
        return PARLEY_ERR_STATE;
    s->cbs = *cbs;
    s->privdata = privdata;
    if (tcp_read_start(s) < 0)
        return PARLEY_ERR_IO;
    return PARLEY_OK;
}

static void on_tcp_write(uv_write_t *req, int status)
{
    struct tcp_write *w = (struct tcp_write *)req;
    struct loop_tcp *s = req->data;

    explicit_bzero(w->data, w->len);
    free(w);
    /* The handle's close callback, which may release s, runs after the
     * cancelled writes' callbacks, so s is still here. */
    if (status < 0 && status != UV_ECANCELED)
        tcp_end(s, PARLEY_ERR_IO, "writing to %s: %s", s->host,
                uv_strerror(status));
}

int loop_tcp_write(struct loop_tcp *s, const char *data, size_t len)
{
    struct tcp_write *w;
    uv_buf_t buf;
    int rc;

    if (!s || s->freeing || s->state != TCP_OPEN || !s->handle)
        return PARLEY_ERR_STATE;
    if (len == 0)
        return PARLEY_OK;
    if (len > UINT32_MAX)
        return PARLEY_ERR_TOO_LARGE;
    w = malloc(sizeof(*w) + len);
    if (!w)
        return PARLEY_ERR_OOM;
    w->len = len;
    memcpy(w->data, data, len);
    w->req.data = s;
    buf = uv_buf_init(w->data, (unsigned)len);
    rc = uv_write(&w->req, (uv_stream_t *)s->handle, &buf, 1, on_tcp_write);
    if (rc < 0) {
        explicit_bzero(w->data, len);
        free(w);
        return PARLEY_ERR_IO;
    }
    return PARLEY_OK;
}

void loop_tcp_free(struct loop_tcp *s)
{
    if (!s || s->freeing)
        return;
    s->freeing = 1;
    if (s->gai_active)
        uv_cancel((uv_req_t *)&s->gai);
    /* Pending writes and a connect in flight are cancelled by the close;
     * their callbacks run before the handle's close callback. */
    tcp_close_handle(s);
    tcp_maybe_release(s);
}

struct loop_listener {
    uv_tcp_t handle;            /* handle.data = this */
    struct loop *loop;
    loop_accept_fn *fn;
    void *privdata;
    int freeing;
};

static void on_listener_connection(uv_stream_t *server, int status)
{
    struct loop_listener *l = server->data;
    struct sockaddr_storage peer;
    int len = sizeof(peer);
    struct loop_tcp *c;

    if (status < 0 || l->freeing)
        return;
    c = tcp_new(l->loop, "127.0.0.1", 0);
    if (!c)
        return;
    if (tcp_open_handle(c) < 0) {
        c->freeing = 1;
        tcp_maybe_release(c);
        return;
    }
    if (uv_accept(server, (uv_stream_t *)c->handle) < 0 ||
        uv_tcp_getpeername(c->handle, (struct sockaddr *)&peer, &len) < 0 ||
        peer.ss_family != AF_INET) {
        loop_tcp_free(c);
        return;
    }
    c->state = TCP_OPEN;
    l->fn(c, (const struct sockaddr_in *)&peer, l->privdata);
}

int loop_listen_local(struct loop *loop, loop_accept_fn *fn, void *privdata,
                      struct loop_listener **out, int *port_out, char *err,
                      size_t errlen)
{
    struct loop_listener *l;
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof(bound), rc;

    *out = NULL;
    if (!fn) {
        snprintf(err, errlen, "no accept callback");
        return PARLEY_ERR_STATE;
    }
    l = calloc(1, sizeof(*l));
    if (!l) {
        snprintf(err, errlen, "out of memory");
        return PARLEY_ERR_OOM;
    }
    rc = uv_tcp_init(loop->uv, &l->handle);
    if (rc < 0) {
        free(l);
        snprintf(err, errlen, "loopback listener: %s", uv_strerror(rc));
        return PARLEY_ERR_IO;
    }
    l->handle.data = l;
    l->loop = loop;
    l->fn = fn;
    l->privdata = privdata;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    rc = uv_tcp_bind(&l->handle, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->handle, 4, on_listener_connection);
    if (rc == 0)
        rc = uv_tcp_getsockname(&l->handle, (struct sockaddr *)&bound, &len);
    if (rc < 0) {
        snprintf(err, errlen, "loopback listener: %s", uv_strerror(rc));
        loop_listener_free(l);
        return PARLEY_ERR_IO;
    }
    *port_out = ntohs(((const struct sockaddr_in *)&bound)->sin_port);
    *out = l;
    return PARLEY_OK;
}

void loop_listener_free(struct loop_listener *l)
{
    if (!l || l->freeing)
        return;
    l->freeing = 1;
    uv_close((uv_handle_t *)&l->handle, on_any_closed);
}
