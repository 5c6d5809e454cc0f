/*
 * The router test fixture, shared by the router's live tests: a real
 * redis-server and the OpenAI stand-in on loopback, the real store, llm
 * and router on a uv loop, and a fake adapter ("fake", account "acct")
 * that records what the router sends.  Static functions in a header, like
 * irc_harness.h: each test program includes it once.
 */
#ifndef PARLEY_ROUTER_FIXTURE_H
#define PARLEY_ROUTER_FIXTURE_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cJSON.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include "adapter.h"
#include "config.h"
#include "event.h"
#include "llm.h"
#include "loop.h"
#include "router.h"
#include "spawn.h"
#include "status.h"
#include "store.h"

/* Not every program uses every helper. */
#define FIXTURE_FN static __attribute__((unused))

#define SENT_MAX 64

struct sent {
    char room[64];
    char text[512];
    char in_reply_to[64];
    char mention[64];
    int notice;
    uint64_t at_ms;
};

struct fixture {
    char dir[64];
    pid_t redis_pid, stub_pid;
    int redis_port, stub_port;
    uv_loop_t uv;
    struct loop *loop;
    struct store *store;
    struct llm *llm;
    struct router *router;
    struct config cfg;
    struct adapter ad;
    struct sent sent[SENT_MAX];
    size_t n_sent;
    int accepted_status;
    int accepted_calls;
    int more_calls;
    int more_result;        /* what fake_more returns */
};

static const struct adapter_ops fake_ops;

FIXTURE_FN int fake_send(struct adapter *ad, const char *room,
                     const struct reply *reply, adapter_send_done_fn *done,
                     void *privdata)
{
    struct fixture *f = ad->priv;
    struct sent *s;

    assert_true(f->n_sent < SENT_MAX);
    s = &f->sent[f->n_sent++];
    snprintf(s->room, sizeof(s->room), "%s", room);
    snprintf(s->text, sizeof(s->text), "%s", reply->text);
    snprintf(s->in_reply_to, sizeof(s->in_reply_to), "%s",
             reply->in_reply_to ? reply->in_reply_to : "");
    snprintf(s->mention, sizeof(s->mention), "%s",
             reply->mention ? reply->mention : "");
    s->notice = reply->notice;
    s->at_ms = uv_now(&f->uv);
    done(PARLEY_OK, privdata);
    return PARLEY_OK;
}

FIXTURE_FN int fake_start(struct adapter *ad)
{
    (void)ad;
    return PARLEY_OK;
}

FIXTURE_FN void fake_stop(struct adapter *ad)
{
    (void)ad;
}

FIXTURE_FN void fake_free(struct adapter *ad)
{
    (void)ad;
}

static const struct adapter_ops fake_ops = {
    .type = "fake",
    .start = fake_start,
    .send = fake_send,
    .stop = fake_stop,
    .free = fake_free,
};

/* The same adapter with the "!more" capability. */
FIXTURE_FN int fake_more(struct adapter *ad, const char *room,
                     const char *sender)
{
    struct fixture *f = ad->priv;

    (void)room;
    (void)sender;
    f->more_calls++;
    return f->more_result;
}

static const struct adapter_ops fake_ops_more = {
    .type = "fake",
    .start = fake_start,
    .send = fake_send,
    .more = fake_more,
    .stop = fake_stop,
    .free = fake_free,
};

FIXTURE_FN void wake(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until pred(f) holds or timeout_ms passes. */
FIXTURE_FN int run_until(struct fixture *f, int (*pred)(struct fixture *),
                     int timeout_ms)
{
    uv_timer_t tick;
    uint64_t deadline;
    int ok;

    uv_update_time(&f->uv);
    deadline = uv_now(&f->uv) + (uint64_t)timeout_ms;
    uv_timer_init(&f->uv, &tick);
    uv_timer_start(&tick, wake, 10, 10);
    while (!(ok = pred(f)) && uv_now(&f->uv) < deadline)
        uv_run(&f->uv, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&f->uv, UV_RUN_NOWAIT);
    return ok;
}

FIXTURE_FN int idle(struct fixture *f)
{
    return router_pending(f->router) == 0;
}

FIXTURE_FN int store_up(struct fixture *f)
{
    return store_is_up(f->store);
}

FIXTURE_FN char *xstrdup(const char *s)
{
    char *p = strdup(s);

    assert_non_null(p);
    return p;
}

FIXTURE_FN int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char url[64];

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/parley-router-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->redis_port = spawn_free_port();
    f->redis_pid = spawn_redis(f->redis_port, f->dir);
    assert_true(f->redis_pid > 0);

    f->stub_pid = spawn_openai_stub(f->dir, NULL, NULL, &f->stub_port);
    assert_true(f->stub_pid > 0);

    assert_int_equal(config_defaults(&f->cfg), PARLEY_OK);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", f->stub_port);
    free(f->cfg.llm.base_url);
    f->cfg.llm.base_url = xstrdup(url);
    free(f->cfg.redis.prefix);
    f->cfg.redis.prefix = xstrdup("r:");
    f->cfg.redis.port = f->redis_port;
    f->cfg.llm.max_retries = 1;
    f->cfg.llm.backoff_base_ms = 20;
    f->cfg.llm.backoff_max_ms = 50;
    f->cfg.llm.timeout_ms = 5000;
    f->cfg.limits.user_requests_per_minute = 0;

    assert_int_equal(uv_loop_init(&f->uv), 0);
    assert_int_equal(loop_create(&f->loop, &f->uv), PARLEY_OK);
    assert_int_equal(store_open(&f->store, &f->uv, &f->cfg.redis, NULL),
                     PARLEY_OK);
    assert_int_equal(llm_create(&f->llm, f->loop, &f->cfg.llm, NULL),
                     PARLEY_OK);
    assert_int_equal(router_create(&f->router, &f->cfg, f->store, f->llm,
                                   f->loop), PARLEY_OK);
    f->ad.ops = &fake_ops;
    f->ad.greet.on_join = 1;
    f->ad.greet.new_members = 1;
    f->ad.greet.members_max = 50;
    f->ad.account = "acct";
    f->ad.priv = f;
    assert_int_equal(router_add_adapter(f->router, &f->ad), PARLEY_OK);
    assert_true(run_until(f, store_up, 5000));
    *state = f;
    return 0;
}

FIXTURE_FN int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];

    router_close(f->router);
    store_close(f->store);
    llm_free(f->llm);
    loop_close(f->loop);
    uv_run(&f->uv, UV_RUN_DEFAULT);
    router_free(f->router);
    loop_free(f->loop);
    assert_int_equal(uv_loop_close(&f->uv), 0);
    config_free(&f->cfg);
    spawn_stop(f->stub_pid);
    spawn_stop(f->redis_pid);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", f->dir);
    free(f);
    return 0;
}

/* Synchronous Redis query for assertions (hiredis blocking API). */
FIXTURE_FN redisReply *redis_query(struct fixture *f, const char *fmt, ...)
{
    redisContext *c = redisConnect("127.0.0.1", f->redis_port);
    redisReply *r;
    va_list ap;

    assert_non_null(c);
    assert_int_equal(c->err, 0);
    va_start(ap, fmt);
    r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    assert_non_null(r);
    return r;
}

/* One HTTP/1.0 exchange with the stand-in over a blocking socket; the
 * response (headers and body) goes into out.  Returns its length. */
FIXTURE_FN size_t stub_http(struct fixture *f, const char *method,
                        const char *path, const char *body, char *out,
                        size_t outlen)
{
    char req[2048];
    int fd, n;
    size_t got = 0;
    ssize_t r;
    struct sockaddr_in sa;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)f->stub_port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    n = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\n"
                 "Content-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n%s", method, path,
                 strlen(body), body);
    assert_true(n > 0 && (size_t)n < sizeof(req));
    assert_int_equal(write(fd, req, (size_t)n), n);
    while (got + 1 < outlen &&
           (r = read(fd, out + got, outlen - 1 - got)) > 0)
        got += (size_t)r;
    out[got] = '\0';
    close(fd);
    assert_non_null(strstr(out, " 200 "));
    return got;
}

/* Replace the stand-in's script (see openai_stub.py). */
FIXTURE_FN void stub_script(struct fixture *f, const char *json)
{
    char buf[512];

    stub_http(f, "POST", "/_control/script", json, buf, sizeof(buf));
}

/* Forget the requests the stand-in recorded so far. */
FIXTURE_FN void stub_reset(struct fixture *f)
{
    char buf[512];

    stub_http(f, "POST", "/_control/reset", "", buf, sizeof(buf));
}

/*
 * The most chat requests the stand-in had in flight at one moment, from
 * its own records (start and finish of each): proof of overlap that
 * does not depend on how fast this machine is.
 */
FIXTURE_FN int stub_max_in_flight(struct fixture *f)
{
    static char buf[1 << 20];
    const char *body;
    cJSON *arr, *a, *b;
    int best = 0;

    stub_http(f, "GET", "/_control/requests", "", buf, sizeof(buf));
    body = strstr(buf, "\r\n\r\n");
    assert_non_null(body);
    arr = cJSON_Parse(body + 4);
    assert_non_null(arr);
    cJSON_ArrayForEach(a, arr) {
        double t = cJSON_GetObjectItem(a, "timestamp")->valuedouble;
        int n = 0;

        /* Requests running at the instant a started. */
        cJSON_ArrayForEach(b, arr) {
            const cJSON *fin = cJSON_GetObjectItem(b, "finished");
            double start = cJSON_GetObjectItem(b, "timestamp")->valuedouble;

            if (start <= t && cJSON_IsNumber(fin) && fin->valuedouble > t)
                n++;
        }
        if (n > best)
            best = n;
    }
    cJSON_Delete(arr);
    return best;
}

FIXTURE_FN struct event message(const char *room, const char *sender,
                            const char *text)
{
    struct event ev;

    memset(&ev, 0, sizeof(ev));
    ev.kind = EVENT_MESSAGE;
    ev.platform = "fake";
    ev.account = "acct";
    ev.room = room;
    ev.sender = sender;
    ev.sender_name = sender;
    ev.text = text;
    ev.addressed = 1;
    return ev;
}

FIXTURE_FN const struct sent *find_sent(struct fixture *f, const char *text)
{
    for (size_t i = 0; i < f->n_sent; i++)
        if (strcmp(f->sent[i].text, text) == 0)
            return &f->sent[i];
    return NULL;
}

#endif
