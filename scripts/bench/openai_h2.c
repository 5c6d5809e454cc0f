/*
 * HTTP/2 in cleartext (h2c, prior knowledge) for the OpenAI stand-in
 * (openai_uv.c), so that scripts/bench can measure parley with
 * llm.http2_prior_knowledge: curl then multiplexes up to 100 requests on
 * one connection instead of opening one connection per request.  A
 * connection whose first bytes are the HTTP/2 preface is handed here;
 * libnghttp2 does the framing, flow control and HPACK, and each stream
 * is answered exactly like an HTTP/1.1 request (openai_uv_route), after
 * the same model latency, on a timer of its own.
 *
 * Lifetime: a stream is freed once nghttp2 has closed it and its timer
 * is closed; a connection's session is freed by openai_h2_free, which
 * closes the timers of the streams still open (their callbacks then see
 * no session and only free).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "openai_uv.h"

/* Streams one connection may carry at once (curl asks for 100). */
#define H2_MAX_STREAMS 1000

struct h2_stream;

struct openai_h2 {
    nghttp2_session *session;
    struct openai_conn *conn;       /* not owned */
    struct h2_stream *streams;      /* open streams, for openai_h2_free */
    int dead;                       /* the connection is closing */
};

struct h2_stream {
    struct openai_h2 *h2;           /* NULL once the session is gone */
    int32_t id;
    char path[64];
    char *body;                     /* request body; owned */
    size_t len, cap;
    char *answer;                   /* response body; owned */
    size_t sent;
    int status;
    long bq;                        /* "bq<id>" of the request, or -1 */
    uint64_t arrived;
    uv_timer_t timer;
    int timer_open;
    int closed;                     /* nghttp2 closed the stream */
    struct h2_stream *prev, *next;
};

static void stream_unlink(struct h2_stream *s)
{
    if (!s->h2)
        return;
    if (s->prev)
        s->prev->next = s->next;
    else
        s->h2->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

static void stream_free(struct h2_stream *s)
{
    free(s->body);
    free(s->answer);
    free(s);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct h2_stream *s = h->data;

    s->timer_open = 0;
    if (s->closed || !s->h2)
        stream_free(s);
}

/* Everything nghttp2 wants to send, in one write. */
static void h2_flush(struct openai_h2 *h2)
{
    const uint8_t *data;
    ssize_t n;
    char *out = NULL;
    size_t len = 0, cap = 0;

    if (h2->dead)
        return;
    while ((n = nghttp2_session_mem_send(h2->session, &data)) > 0) {
        if (len + (size_t)n > cap) {
            size_t ncap = cap ? cap * 2 : 16384;
            char *p;

            while (ncap < len + (size_t)n)
                ncap *= 2;
            p = realloc(out, ncap);
            if (!p) {
                free(out);
                openai_conn_close(h2->conn);
                return;
            }
            out = p;
            cap = ncap;
        }
        memcpy(out + len, data, (size_t)n);
        len += (size_t)n;
    }
    if (n < 0) {
        free(out);
        openai_conn_close(h2->conn);
        return;
    }
    if (len > 0)
        openai_conn_write(h2->conn, out, len);
    else
        free(out);
    if (!nghttp2_session_want_read(h2->session) &&
        !nghttp2_session_want_write(h2->session))
        openai_conn_close(h2->conn);
}

static ssize_t answer_read(nghttp2_session *session, int32_t stream_id,
                           uint8_t *buf, size_t length, uint32_t *flags,
                           nghttp2_data_source *source, void *user_data)
{
    struct h2_stream *s = source->ptr;
    size_t left = s->answer ? strlen(s->answer) - s->sent : 0;
    size_t n = left < length ? left : length;

    (void)session;
    (void)stream_id;
    (void)user_data;
    if (n)
        memcpy(buf, s->answer + s->sent, n);
    s->sent += n;
    if (s->sent == (s->answer ? strlen(s->answer) : 0))
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void stream_respond(struct h2_stream *s)
{
    char status[8];
    nghttp2_nv hdrs[2];
    nghttp2_data_provider prd;

    snprintf(status, sizeof(status), "%d", s->status);
    hdrs[0] = (nghttp2_nv){ (uint8_t *)":status", (uint8_t *)status, 7,
                            strlen(status), NGHTTP2_NV_FLAG_NONE };
    hdrs[1] = (nghttp2_nv){ (uint8_t *)"content-type",
                            (uint8_t *)"application/json", 12, 16,
                            NGHTTP2_NV_FLAG_NONE };
    prd.source.ptr = s;
    prd.read_callback = answer_read;
    nghttp2_submit_response(s->h2->session, s->id, hdrs, 2, &prd);
}

static void on_delay(uv_timer_t *t)
{
    struct h2_stream *s = t->data;

    if (!s->h2 || s->closed)
        return;
    openai_uv_stamp(s->bq, s->arrived);
    stream_respond(s);
    h2_flush(s->h2);
}

/* The whole request is in: answer now, or after the model latency. */
static void stream_request(struct h2_stream *s)
{
    uint64_t delay;

    s->answer = openai_uv_route(s->path, s->body ? s->body : "", s->len,
                                &s->status, &s->bq, &delay);
    s->arrived = openai_uv_now_ns();
    if (delay == 0) {
        openai_uv_stamp(s->bq, s->arrived);
        stream_respond(s);
        return;
    }
    uv_timer_start(&s->timer, on_delay, delay, 0);
}

static int on_begin_headers(nghttp2_session *session,
                            const nghttp2_frame *frame, void *user_data)
{
    struct openai_h2 *h2 = user_data;
    struct h2_stream *s;

    if (frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    s = calloc(1, sizeof(*s));
    if (!s)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    s->h2 = h2;
    s->id = frame->hd.stream_id;
    s->bq = -1;
    uv_timer_init(openai_uv_loop(), &s->timer);
    s->timer.data = s;
    s->timer_open = 1;
    s->next = h2->streams;
    if (h2->streams)
        h2->streams->prev = s;
    h2->streams = s;
    nghttp2_session_set_stream_user_data(session, s->id, s);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame,
                     const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    struct h2_stream *s = nghttp2_session_get_stream_user_data(
        session, frame->hd.stream_id);

    (void)flags;
    (void)user_data;
    if (s && namelen == 5 && memcmp(name, ":path", 5) == 0)
        snprintf(s->path, sizeof(s->path), "%.*s", (int)valuelen,
                 (const char *)value);
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags,
                         int32_t stream_id, const uint8_t *data, size_t len,
                         void *user_data)
{
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session,
                                                               stream_id);

    (void)flags;
    (void)user_data;
    if (!s)
        return 0;
    if (s->len + len + 1 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        char *p;

        while (cap < s->len + len + 1)
            cap *= 2;
        if (cap > 2 * OPENAI_REQUEST_MAX ||
            !(p = realloc(s->body, cap)))
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        s->body = p;
        s->cap = cap;
    }
    memcpy(s->body + s->len, data, len);
    s->len += len;
    s->body[s->len] = '\0';
    return 0;
}

static int on_frame_recv(nghttp2_session *session,
                         const nghttp2_frame *frame, void *user_data)
{
    struct h2_stream *s;

    (void)user_data;
    if ((frame->hd.type != NGHTTP2_DATA &&
         frame->hd.type != NGHTTP2_HEADERS) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s)
        stream_request(s);
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id,
                           uint32_t error_code, void *user_data)
{
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session,
                                                               stream_id);

    (void)error_code;
    (void)user_data;
    if (!s)
        return 0;
    s->closed = 1;
    stream_unlink(s);
    s->h2 = NULL;
    if (s->timer_open)
        uv_close((uv_handle_t *)&s->timer, on_timer_closed);
    else
        stream_free(s);
    return 0;
}

struct openai_h2 *openai_h2_new(struct openai_conn *conn)
{
    struct openai_h2 *h2 = calloc(1, sizeof(*h2));
    nghttp2_session_callbacks *cb;
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_STREAMS },
    };

    if (!h2 || nghttp2_session_callbacks_new(&cb) != 0) {
        free(h2);
        return NULL;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(
        cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(
        cb, on_stream_close);
    h2->conn = conn;
    if (nghttp2_session_server_new(&h2->session, cb, h2) != 0) {
        nghttp2_session_callbacks_del(cb);
        free(h2);
        return NULL;
    }
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(h2->session, NGHTTP2_FLAG_NONE, iv, 1);
    return h2;
}

/* Bytes read from the connection; 0, or -1 when it must close. */
int openai_h2_recv(struct openai_h2 *h2, const char *data, size_t len)
{
    ssize_t n = nghttp2_session_mem_recv(h2->session, (const uint8_t *)data,
                                         len);

    if (n < 0) {
        fprintf(stderr, "openai_uv: h2: %s\n", nghttp2_strerror((int)n));
        return -1;
    }
    h2_flush(h2);
    return 0;
}

void openai_h2_free(struct openai_h2 *h2)
{
    struct h2_stream *s, *next;

    if (!h2)
        return;
    h2->dead = 1;
    for (s = h2->streams; s; s = next) {
        next = s->next;
        s->h2 = NULL;
        s->prev = s->next = NULL;
        uv_close((uv_handle_t *)&s->timer, on_timer_closed);
    }
    h2->streams = NULL;
    /* nghttp2_session_del calls on_stream_close for no one: the streams
     * above are detached and free themselves in on_timer_closed. */
    nghttp2_session_set_user_data(h2->session, NULL);
    nghttp2_session_del(h2->session);
    free(h2);
}
