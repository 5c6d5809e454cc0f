/*
 * The loop's curl multi handles ("shards", loop_multi.c) against a small
 * HTTP/1.1 server in this process, on the same loop: more requests in
 * flight than one shard takes all complete with their own bodies, spread
 * over the right number of shards; a cancel in two shards while every
 * request is held by the server; loop_close with requests held in three
 * shards (ASan checks that nothing leaks); a request after a burst goes
 * back to shard 0 and reuses one of its connections; and the reaper
 * retires idle shards from the top, closing their connections, but never
 * a busy one.
 *
 * The server holds every answer until it has all the requests it
 * expects, so they are truly in flight together; it answers GET /r<n>
 * with "answer <n>" and keeps the connection open for the next request.
 * The shard counts come from loop_private.h's accessors: with a single
 * multi handle (LOOP_SHARD_TRANSFERS above the burst) these tests fail.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "loop_private.h"
#include "status.h"

/* Connections the test server keeps at once: the largest burst below. */
#define SRV_CONNS_MAX 1024

/* A request head the server accepts (curl's GET is about 120 bytes). */
#define SRV_HEAD_MAX 1024

/* A burst that needs three shards: two full ones and a few more. */
#define BURST (2 * LOOP_SHARD_TRANSFERS + 10)

struct server;

struct srv_conn {
    struct server *srv;
    int fd;
    struct loop_watch *watch;
    char head[SRV_HEAD_MAX];
    size_t len;
    long held;                  /* request number held, -1 when none */
};

struct server {
    struct loop *loop;
    int lfd;
    int port;
    struct loop_watch *lwatch;
    struct srv_conn *conns[SRV_CONNS_MAX];  /* owned; NULL when free */
    size_t accepted;            /* connections accepted so far */
    size_t held;                /* requests waiting for the release */
    size_t expect;              /* release when this many are held;
                                   0 = answer at once */
    void (*on_all)(struct server *srv);  /* at the release, first */
    void *privdata;
    int stopped;                /* server_stop ran (inside on_all) */
};

struct call {
    size_t n;
    int done;
    int status;
    long code;
    char body[64];
    struct http_request *req;
};

static void conn_close(struct srv_conn *c)
{
    struct server *srv = c->srv;
    size_t i;

    for (i = 0; i < SRV_CONNS_MAX; i++)
        if (srv->conns[i] == c)
            srv->conns[i] = NULL;
    loop_watch_free(c->watch);
    close(c->fd);
    free(c);
}

/* Answer the request held on c; close c if the write fails. */
static void conn_answer(struct srv_conn *c)
{
    char body[32];
    char out[256];
    int blen, olen;

    blen = snprintf(body, sizeof(body), "answer %ld", c->held);
    olen = snprintf(out, sizeof(out),
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    "Content-Length: %d\r\n\r\n%s", blen, body);
    c->held = -1;
    /* A small answer always fits an empty socket buffer; a peer that
     * has gone (a cancelled request) makes this fail, which is fine. */
    if (write(c->fd, out, (size_t)olen) != olen)
        conn_close(c);
}

static void server_release(struct server *srv)
{
    size_t i;

    if (srv->on_all) {
        srv->on_all(srv);
        if (srv->stopped)
            return;
    }
    for (i = 0; i < SRV_CONNS_MAX; i++)
        if (srv->conns[i] && srv->conns[i]->held >= 0)
            conn_answer(srv->conns[i]);
    srv->held = 0;
    srv->expect = 0;
}

/* A whole request head in c->head: hold it or answer it. */
static void conn_request(struct srv_conn *c)
{
    struct server *srv = c->srv;
    const char *p = c->head;
    char *end;

    assert_int_equal(strncmp(p, "GET /r", 6), 0);
    c->held = (long)strtoul(p + 6, &end, 10);
    assert_true(end > p + 6 && *end == ' ');
    c->len = 0;
    if (!srv->expect) {
        conn_answer(c);
        return;
    }
    srv->held++;
    if (srv->held == srv->expect)
        server_release(srv);
}

static void on_conn(int events, void *privdata)
{
    struct srv_conn *c = privdata;
    ssize_t n;

    (void)events;
    n = read(c->fd, c->head + c->len, sizeof(c->head) - 1 - c->len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    c->head[c->len] = '\0';
    assert_true(c->len < sizeof(c->head) - 1);
    if (strstr(c->head, "\r\n\r\n"))
        conn_request(c);
}

static void on_listen(int events, void *privdata)
{
    struct server *srv = privdata;
    int fd;

    (void)events;
    while ((fd = accept4(srv->lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
        struct srv_conn *c = calloc(1, sizeof(*c));
        size_t i;

        assert_non_null(c);
        c->srv = srv;
        c->fd = fd;
        c->held = -1;
        for (i = 0; i < SRV_CONNS_MAX && srv->conns[i]; i++)
            ;
        assert_true(i < SRV_CONNS_MAX);
        srv->conns[i] = c;
        srv->accepted++;
        c->watch = loop_watch_new(srv->loop, fd, on_conn, c);
        assert_non_null(c->watch);
        assert_int_equal(loop_watch_set(c->watch, LOOP_READABLE), PARLEY_OK);
    }
}

static void server_start(struct server *srv, struct loop *loop)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);

    memset(srv, 0, sizeof(*srv));
    srv->loop = loop;
    srv->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(srv->lfd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(srv->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    /* The whole burst connects before the first accept. */
    assert_int_equal(listen(srv->lfd, SRV_CONNS_MAX), 0);
    assert_int_equal(getsockname(srv->lfd, (struct sockaddr *)&sa, &len), 0);
    srv->port = ntohs(sa.sin_port);
    srv->lwatch = loop_watch_new(loop, srv->lfd, on_listen, srv);
    assert_non_null(srv->lwatch);
    assert_int_equal(loop_watch_set(srv->lwatch, LOOP_READABLE), PARLEY_OK);
}

static void server_stop(struct server *srv)
{
    size_t i;

    for (i = 0; i < SRV_CONNS_MAX; i++)
        if (srv->conns[i])
            conn_close(srv->conns[i]);
    loop_watch_free(srv->lwatch);
    srv->lwatch = NULL;
    if (srv->lfd >= 0)
        close(srv->lfd);
    srv->lfd = -1;
    srv->stopped = 1;
}

static void on_done(const struct http_response *resp, void *privdata)
{
    struct call *c = privdata;

    c->done++;
    c->status = resp->status;
    c->code = resp->code;
    snprintf(c->body, sizeof(c->body), "%s", resp->body);
    c->req = NULL;
}

static void start(struct loop *loop, struct server *srv, struct call *c,
                  size_t n)
{
    char url[64];
    struct http_options opt;

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/r%zu", srv->port, n);
    memset(&opt, 0, sizeof(opt));
    opt.url = url;
    /* Only against a hang: a test never waits on it. */
    opt.timeout_ms = 60000;
    memset(c, 0, sizeof(*c));
    c->n = n;
    assert_int_equal(loop_http_start(loop, &opt, on_done, c, &c->req),
                     PARLEY_OK);
}

static void assert_answered(const struct call *c)
{
    char want[32];

    snprintf(want, sizeof(want), "answer %zu", c->n);
    assert_int_equal(c->done, 1);
    assert_int_equal(c->status, PARLEY_OK);
    assert_int_equal(c->code, 200);
    assert_string_equal(c->body, want);
}

static struct loop *new_loop(void)
{
    struct loop *loop = NULL;

    assert_int_equal(loop_create(&loop, NULL), PARLEY_OK);
    return loop;
}

/* More requests than two shards take, all held by the server at once:
 * three shards, filled in order, and every body comes back to its own
 * request.  Then one more request goes to shard 0 and reuses one of the
 * connections the burst left there. */
static void burst_then_one(void **state)
{
    struct loop *loop = new_loop();
    struct server srv;
    struct call *calls = calloc(BURST + 1, sizeof(*calls));
    size_t i, accepted;

    (void)state;
    assert_non_null(calls);
    server_start(&srv, loop);
    assert_int_equal(loop_shard_count(loop), 1);
    srv.expect = BURST;
    for (i = 0; i < BURST; i++)
        start(loop, &srv, &calls[i], i);
    assert_int_equal(loop_shard_count(loop), 3);
    assert_int_equal(loop_shard_transfers(loop, 0), LOOP_SHARD_TRANSFERS);
    assert_int_equal(loop_shard_transfers(loop, 1), LOOP_SHARD_TRANSFERS);
    assert_int_equal(loop_shard_transfers(loop, 2), 10);
    assert_int_equal(loop_http_pending(loop), BURST);
    while (loop_http_pending(loop) > 0)
        uv_run(loop_uv(loop), UV_RUN_ONCE);
    for (i = 0; i < BURST; i++)
        assert_answered(&calls[i]);
    assert_int_equal(srv.accepted, BURST);
    for (i = 0; i < 3; i++)
        assert_int_equal(loop_shard_transfers(loop, i), 0);

    accepted = srv.accepted;
    start(loop, &srv, &calls[BURST], BURST);
    assert_int_equal(loop_shard_count(loop), 3);
    assert_int_equal(loop_shard_transfers(loop, 0), 1);
    while (loop_http_pending(loop) > 0)
        uv_run(loop_uv(loop), UV_RUN_ONCE);
    assert_answered(&calls[BURST]);
    assert_int_equal(srv.accepted, accepted);

    server_stop(&srv);
    loop_free(loop);
    free(calls);
}

/* Cancel one request in shard 0 and one in shard 1 while the server
 * holds all of them: the others are answered, the two never are. */
static void cancel_in_two(struct server *srv)
{
    struct call *calls = srv->privdata;
    size_t last = LOOP_SHARD_TRANSFERS + 43;

    loop_http_cancel(calls[0].req);
    loop_http_cancel(calls[last].req);
    assert_int_equal(loop_shard_transfers(srv->loop, 0),
                     LOOP_SHARD_TRANSFERS - 1);
    assert_int_equal(loop_shard_transfers(srv->loop, 1), 43);
}

static void cancel_in_two_shards(void **state)
{
    struct loop *loop = new_loop();
    struct server srv;
    size_t n = LOOP_SHARD_TRANSFERS + 44;
    struct call *calls = calloc(n, sizeof(*calls));
    size_t i;

    (void)state;
    assert_non_null(calls);
    server_start(&srv, loop);
    srv.expect = n;
    srv.on_all = cancel_in_two;
    srv.privdata = calls;
    for (i = 0; i < n; i++)
        start(loop, &srv, &calls[i], i);
    assert_int_equal(loop_shard_count(loop), 2);
    while (loop_http_pending(loop) > 0)
        uv_run(loop_uv(loop), UV_RUN_ONCE);
    for (i = 0; i < n; i++) {
        if (i == 0 || i == n - 1)
            assert_int_equal(calls[i].done, 0);
        else
            assert_answered(&calls[i]);
    }
    server_stop(&srv);
    loop_free(loop);
    free(calls);
}

/* loop_close while every request of three shards is held: no done
 * callback, and loop_free finds every handle closed (ASan: no leak). */
static void close_all(struct server *srv)
{
    assert_int_equal(loop_shard_count(srv->loop), 3);
    assert_int_equal(loop_http_pending(srv->loop), BURST);
    loop_close(srv->loop);
    assert_int_equal(loop_http_pending(srv->loop), 0);
    server_stop(srv);
}

static void close_with_three_shards_busy(void **state)
{
    struct loop *loop = new_loop();
    struct server srv;
    struct call *calls = calloc(BURST, sizeof(*calls));
    size_t i;

    (void)state;
    assert_non_null(calls);
    server_start(&srv, loop);
    srv.expect = BURST;
    srv.on_all = close_all;
    for (i = 0; i < BURST; i++)
        start(loop, &srv, &calls[i], i);
    loop_run(loop);
    assert_true(srv.stopped);
    for (i = 0; i < BURST; i++)
        assert_int_equal(calls[i].done, 0);
    loop_free(loop);
    free(calls);
}

/* Run the loop until the server has seen every connection it accepted
 * closed (a retired shard's), answering nothing new. */
static size_t server_open(const struct server *srv)
{
    size_t i, n = 0;

    for (i = 0; i < SRV_CONNS_MAX; i++)
        if (srv->conns[i])
            n++;
    return n;
}

/* Two reaper ticks after a burst: the first only forgets that the
 * shards were used, the second retires shards 2 and 1, which close the
 * connections they kept; shard 0 stays, with its own.  A new burst
 * creates them again; while it is in flight no tick retires anything. */
static void reap_idle_shards(void **state)
{
    struct loop *loop = new_loop();
    struct server srv;
    struct call *calls = calloc(BURST, sizeof(*calls));
    size_t i, round;

    (void)state;
    assert_non_null(calls);
    server_start(&srv, loop);
    for (round = 0; round < 2; round++) {
        for (i = 0; i < BURST; i++)
            start(loop, &srv, &calls[i], i);
        assert_int_equal(loop_shard_count(loop), 3);
        loop_shards_reap(loop);
        loop_shards_reap(loop);
        assert_int_equal(loop_shard_count(loop), 3);
        while (loop_http_pending(loop) > 0)
            uv_run(loop_uv(loop), UV_RUN_ONCE);
        for (i = 0; i < BURST; i++)
            assert_answered(&calls[i]);
        loop_shards_reap(loop);
        assert_int_equal(loop_shard_count(loop), 3);
        loop_shards_reap(loop);
        assert_int_equal(loop_shard_count(loop), 1);
        while (server_open(&srv) > LOOP_SHARD_TRANSFERS)
            uv_run(loop_uv(loop), UV_RUN_ONCE);
        assert_int_equal(server_open(&srv), LOOP_SHARD_TRANSFERS);
    }
    server_stop(&srv);
    loop_free(loop);
    free(calls);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(burst_then_one),
        cmocka_unit_test(reap_idle_shards),
        cmocka_unit_test(cancel_in_two_shards),
        cmocka_unit_test(close_with_three_shards_busy),
    };
    struct rlimit rl;

    /* Both ends of every connection are in this process. */
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 77;
    if (rl.rlim_cur < 4 * BURST) {
        rl.rlim_cur = rl.rlim_max;
        if (rl.rlim_cur < 4 * BURST || setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            fprintf(stderr, "test_loop_shards: needs %d file descriptors, "
                    "the limit is lower: skipped\n", 4 * BURST);
            return 77;
        }
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
