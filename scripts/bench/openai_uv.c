/*
 * OpenAI stand-in for benchmarks: one libuv loop that holds 10,000 open
 * chat requests.  tests/integration/openai_stub.py plays faults but runs
 * a thread per connection and becomes the limit at a few hundred
 * connections (and an asyncio version tops out near 1,500 answers per
 * second on a shared core), so the figures of scripts/bench/run.sh would
 * measure the stand-in instead of parley.  Each chat request waits the
 * fixed model latency on a timer, then gets an OpenAI-shaped answer,
 * "echo: <last user message>" (a message holding "ml<n>", n from 2 to 9,
 * gets n lines: the echo, then n - 1 lines of about 420 bytes, for the
 * multi-line figure).  HTTP/1.1 with keep-alive, and HTTP/2 in
 * cleartext with prior knowledge (h2c, openai_h2.c: a connection that
 * starts with the HTTP/2 preface), when built with libnghttp2.
 *
 *   openai_uv PORT_FILE [DELAY_MS]
 *
 * Bench hooks (no auth):
 *   POST /_bench/delay   body: milliseconds, model latency from now on
 *   GET  /_bench/times   {"<id>": [arrived_ns, left_ns], ...} for each chat
 *                        request whose last user message holds "bq<id>",
 *                        then forgets them; CLOCK_MONOTONIC, the clock of
 *                        Python's time.monotonic_ns() in the load client
 *   GET  /_bench/stats   {"requests": n, "open": n, "peak_open": n}
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>

#include <cJSON.h>
#include <uv.h>

#include "openai_uv.h"

#define STUB_REQUEST_MAX OPENAI_REQUEST_MAX
#define STUB_BACKLOG 65535          /* the kernel clamps to somaxconn */

struct stamp {
    unsigned long id;
    uint64_t arrived, left;
};

/* The HTTP/2 connection preface (RFC 9113 3.4). */
#define STUB_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    char *buf;                      /* bytes read, not yet handled; owned */
    size_t len, cap;
    size_t consumed;                /* request being answered: its size */
    int busy;                       /* waiting on the model latency */
    int closing;
    char *answer;                   /* response waiting on the timer */
    uint64_t arrived;
    long id;                        /* -1 without "bq<id>" */
    int status;                     /* of answer */
    int sniffed;                    /* h2 preface looked for */
    struct openai_h2 *h2;           /* h2c connection, or NULL; owned */
};

struct openai_conn {
    struct conn c;
};

struct write_req {
    uv_write_t w;
    char *data;                     /* owned */
};

static uv_loop_t *uv;
static uint64_t delay_ms;
static unsigned long n_requests, n_open, peak_open;
static struct stamp *stamps;
static size_t n_stamps, cap_stamps;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_closed(uv_handle_t *h)
{
    struct conn *c = h->data;

    /* Two handles per connection: free on the second close. */
    if (++c->closing == 3) {
        openai_h2_free(c->h2);
        free(c->buf);
        free(c->answer);
        free(c);
    }
}

static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    n_open--;
    uv_close((uv_handle_t *)&c->timer, on_closed);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_written(uv_write_t *w, int status)
{
    struct write_req *wr = (struct write_req *)w;

    (void)status;
    free(wr->data);
    free(wr);
}

void openai_conn_close(struct openai_conn *oc)
{
    conn_close(&oc->c);
}

void openai_conn_write(struct openai_conn *oc, char *data, size_t len)
{
    struct conn *c = &oc->c;
    struct write_req *wr = malloc(sizeof(*wr));
    uv_buf_t b;

    if (!wr || c->closing) {
        free(wr);
        free(data);
        return;
    }
    wr->data = data;
    b = uv_buf_init(data, (unsigned)len);
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
        free(wr->data);
        free(wr);
        conn_close(c);
    }
}

uint64_t openai_uv_now_ns(void)
{
    return now_ns();
}

uv_loop_t *openai_uv_loop(void)
{
    return uv;
}

/* Send status and body (owned, freed after the write). */
static void respond(struct conn *c, int status, char *body)
{
    struct write_req *wr = malloc(sizeof(*wr));
    size_t blen = body ? strlen(body) : 0;
    size_t n = blen + 128;
    uv_buf_t b;
    int len;

    if (!wr || !(wr->data = malloc(n))) {
        free(wr);
        free(body);
        conn_close(c);
        return;
    }
    len = snprintf(wr->data, n, "HTTP/1.1 %d X\r\nContent-Type: "
                   "application/json\r\nContent-Length: %zu\r\n\r\n%s",
                   status, blen, body ? body : "");
    free(body);
    b = uv_buf_init(wr->data, (unsigned)len);
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
        free(wr->data);
        free(wr);
        conn_close(c);
    }
}

static void stamp_add(long id, uint64_t arrived, uint64_t left)
{
    if (id < 0)
        return;
    if (n_stamps == cap_stamps) {
        size_t cap = cap_stamps ? cap_stamps * 2 : 1024;
        struct stamp *s = realloc(stamps, cap * sizeof(*s));

        if (!s)
            return;
        stamps = s;
        cap_stamps = cap;
    }
    stamps[n_stamps].id = (unsigned long)id;
    stamps[n_stamps].arrived = arrived;
    stamps[n_stamps].left = left;
    n_stamps++;
}

static char *times_json(void)
{
    size_t cap = 16 + n_stamps * 64, off = 0;
    char *out = malloc(cap);

    if (!out)
        return NULL;
    off += (size_t)snprintf(out, cap, "{");
    for (size_t i = 0; i < n_stamps; i++)
        off += (size_t)snprintf(out + off, cap - off,
                                "%s\"%lu\": [%llu, %llu]", i ? ", " : "",
                                stamps[i].id,
                                (unsigned long long)stamps[i].arrived,
                                (unsigned long long)stamps[i].left);
    snprintf(out + off, cap - off, "}");
    n_stamps = 0;
    return out;
}

/* The chat answer for body, or NULL (then a 400); sets *id. */
/* Words of " word" in each extra line of a multi-line answer: 400 bytes,
 * so two lines fill libircclient's 1024-byte output buffer. */
#define ML_WORDS 80

static char *chat_answer(long *id, const char *body, size_t len)
{
    cJSON *req = cJSON_ParseWithLength(body, len);
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
    cJSON *m, *model, *res, *choice, *msg, *usage, *choices;
    const char *last = "";
    const char *bq, *ml;
    char *text, *out;
    size_t tlen, used;
    int lines = 1, k, w;

    *id = -1;
    if (!req)
        return NULL;
    cJSON_ArrayForEach(m, msgs) {
        cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");

        if (cJSON_IsString(role) && !strcmp(role->valuestring, "user") &&
            cJSON_IsString(content))
            last = content->valuestring;
    }
    bq = strstr(last, "bq");
    if (bq && bq[2] >= '0' && bq[2] <= '9')
        *id = strtol(bq + 2, NULL, 10);
    ml = strstr(last, "ml");
    if (ml && ml[2] >= '2' && ml[2] <= '9')
        lines = ml[2] - '0';
    tlen = strlen(last) + 8 + (size_t)(lines - 1) * (16 + ML_WORDS * 5);
    text = malloc(tlen);
    model = cJSON_GetObjectItemCaseSensitive(req, "model");
    res = cJSON_CreateObject();
    if (!text || !res) {
        free(text);
        cJSON_Delete(res);
        cJSON_Delete(req);
        return NULL;
    }
    used = (size_t)snprintf(text, tlen, "echo: %s", last);
    for (k = 2; k <= lines; k++) {
        used += (size_t)snprintf(text + used, tlen - used, "\nline %d:", k);
        for (w = 0; w < ML_WORDS; w++)
            used += (size_t)snprintf(text + used, tlen - used, " word");
    }
    cJSON_AddStringToObject(res, "id", "chatcmpl-bench");
    cJSON_AddStringToObject(res, "object", "chat.completion");
    cJSON_AddNumberToObject(res, "created", (double)time(NULL));
    cJSON_AddStringToObject(res, "model", cJSON_IsString(model) ?
                            model->valuestring : "m");
    choices = cJSON_AddArrayToObject(res, "choices");
    choice = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, choice);
    cJSON_AddNumberToObject(choice, "index", 0);
    cJSON_AddStringToObject(choice, "finish_reason", "stop");
    msg = cJSON_AddObjectToObject(choice, "message");
    cJSON_AddStringToObject(msg, "role", "assistant");
    cJSON_AddStringToObject(msg, "content", text);
    usage = cJSON_AddObjectToObject(res, "usage");
    cJSON_AddNumberToObject(usage, "prompt_tokens", 10);
    cJSON_AddNumberToObject(usage, "completion_tokens", 5);
    cJSON_AddNumberToObject(usage, "total_tokens", 15);
    out = cJSON_PrintUnformatted(res);
    free(text);
    cJSON_Delete(res);
    cJSON_Delete(req);
    return out;
}

void openai_uv_stamp(long bq, uint64_t arrived)
{
    stamp_add(bq, arrived, now_ns());
}

char *openai_uv_route(const char *path, const char *body, size_t blen,
                      int *status, long *bq, uint64_t *delay)
{
    char *out;

    *status = 200;
    *bq = -1;
    *delay = 0;
    if (strstr(path, "/chat/completions")) {
        n_requests++;
        out = chat_answer(bq, body, blen);
        if (!out)
            *status = 400;
        *delay = delay_ms;
        return out;
    }
    if (!strcmp(path, "/_bench/delay")) {
        char num[32];

        snprintf(num, sizeof(num), "%.*s", (int)(blen < 31 ? blen : 31),
                 body);
        delay_ms = strtoull(num, NULL, 10);
        return strdup("{}");
    }
    if (!strcmp(path, "/_bench/times"))
        return times_json();
    if (!strcmp(path, "/_bench/stats")) {
        char *s = malloc(128);

        if (s)
            snprintf(s, 128, "{\"requests\": %lu, \"open\": %lu, "
                     "\"peak_open\": %lu}", n_requests, n_open, peak_open);
        return s;
    }
    *status = 404;
    return strdup("{\"error\": {\"message\": \"no\"}}");
}

#ifndef OPENAI_H2
/* Built without libnghttp2: a connection that opens with the HTTP/2
 * preface is closed, so curl reports it instead of hanging. */
struct openai_h2 *openai_h2_new(struct openai_conn *c)
{
    (void)c;
    return NULL;
}

int openai_h2_recv(struct openai_h2 *h2, const char *data, size_t len)
{
    (void)h2;
    (void)data;
    (void)len;
    return -1;
}

void openai_h2_free(struct openai_h2 *h2)
{
    (void)h2;
}
#endif

static void handle_buffer(struct conn *c);

static void finish_request(struct conn *c)
{
    memmove(c->buf, c->buf + c->consumed, c->len - c->consumed);
    c->len -= c->consumed;
    c->consumed = 0;
    c->busy = 0;
    handle_buffer(c);
}

static void on_delay(uv_timer_t *t)
{
    struct conn *c = t->data;
    char *answer = c->answer;

    c->answer = NULL;
    stamp_add(c->id, c->arrived, now_ns());
    respond(c, c->status, answer);
    finish_request(c);
}

/* Handle every complete request in c->buf, one at a time: a request
 * that waits on the model stops the loop until its timer fires. */
static void handle_buffer(struct conn *c)
{
    while (!c->busy && !c->closing) {
        char *end, *cl, *body;
        size_t head, blen = 0;
        char method[8], path[64];

        if (c->len == 0)
            return;
        end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end)
            return;
        head = (size_t)(end - c->buf) + 4;
        *end = '\0';
        cl = strcasestr(c->buf, "\r\ncontent-length:");
        if (cl)
            blen = strtoul(cl + 17, NULL, 10);
        *end = '\r';
        if (blen > STUB_REQUEST_MAX) {
            conn_close(c);
            return;
        }
        if (c->len < head + blen)
            return;
        c->consumed = head + blen;
        body = c->buf + head;
        if (sscanf(c->buf, "%7s %63s", method, path) != 2) {
            conn_close(c);
            return;
        }
        {
            uint64_t delay;

            c->answer = openai_uv_route(path, body, blen, &c->status,
                                        &c->id, &delay);
            c->arrived = now_ns();
            if (delay > 0) {
                c->busy = 1;
                uv_timer_start(&c->timer, on_delay, delay, 0);
                return;
            }
            openai_uv_stamp(c->id, c->arrived);
            respond(c, c->status, c->answer);
            c->answer = NULL;
        }
        memmove(c->buf, c->buf + c->consumed, c->len - c->consumed);
        c->len -= c->consumed;
        c->consumed = 0;
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    struct conn *c = h->data;

    (void)hint;
    if (c->cap - c->len < 16384) {
        size_t cap = c->cap ? c->cap * 2 : 16384;
        char *nb = cap <= 2 * STUB_REQUEST_MAX ? realloc(c->buf, cap) : NULL;

        if (!nb) {
            *b = uv_buf_init(NULL, 0);
            return;
        }
        c->buf = nb;
        c->cap = cap;
    }
    *b = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct conn *c = s->data;

    (void)b;
    if (n < 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    if (!c->sniffed && c->len >= sizeof(STUB_H2_PREFACE) - 1) {
        c->sniffed = 1;
        if (memcmp(c->buf, STUB_H2_PREFACE,
                   sizeof(STUB_H2_PREFACE) - 1) == 0) {
            c->h2 = openai_h2_new((struct openai_conn *)c);
            if (!c->h2) {
                conn_close(c);
                return;
            }
        }
    }
    if (c->h2) {
        if (openai_h2_recv(c->h2, c->buf, c->len) < 0)
            conn_close(c);
        c->len = 0;
        return;
    }
    handle_buffer(c);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct conn *c;

    if (status < 0 || !(c = calloc(1, sizeof(*c))))
        return;
    uv_tcp_init(uv, &c->tcp);
    uv_timer_init(uv, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        n_open++;
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (++n_open > peak_open)
        peak_open = n_open;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int main(int argc, char **argv)
{
    uv_tcp_t server;
    struct sockaddr_in sa;
    struct sockaddr_storage bound;
    int namelen = sizeof(bound), rc;
    struct rlimit rl;
    char tmp[4096];
    FILE *f;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: openai_uv PORT_FILE [DELAY_MS]\n");
        return 64;
    }
    delay_ms = argc == 3 ? strtoull(argv[2], NULL, 10) : 0;
    /* 10,000 connections need more than the usual soft limit of 1024. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    uv = uv_default_loop();
    uv_tcp_init(uv, &server);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if ((rc = uv_tcp_bind(&server, (struct sockaddr *)&sa, 0)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&server, STUB_BACKLOG,
                        on_connection)) < 0) {
        fprintf(stderr, "openai_uv: %s\n", uv_strerror(rc));
        return 1;
    }
    uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &namelen);
    snprintf(tmp, sizeof(tmp), "%s.tmp", argv[1]);
    f = fopen(tmp, "w");
    if (!f)
        return 1;
    fprintf(f, "%d\n", ntohs(((struct sockaddr_in *)&bound)->sin_port));
    if (fclose(f) != 0 || rename(tmp, argv[1]) != 0)
        return 1;
    return uv_run(uv, UV_RUN_DEFAULT);
}
