/*
 * The router end to end in one process: a real redis-server and the
 * OpenAI stand-in on loopback, the real store, llm and router on a uv
 * loop, and a fake adapter that records what the router sends.  Covers
 * what the console cannot show: several rooms at once (order inside a
 * room, overlap between rooms), durable submission with job records and
 * dedupe, greetings with their cooldown, what is ignored, and the
 * per-user rate limit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
};

static const struct adapter_ops fake_ops;

static int fake_send(struct adapter *ad, const char *room,
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

static int fake_start(struct adapter *ad)
{
    (void)ad;
    return PARLEY_OK;
}

static void fake_stop(struct adapter *ad)
{
    (void)ad;
}

static void fake_free(struct adapter *ad)
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

static void wake(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until pred(f) holds or timeout_ms passes. */
static int run_until(struct fixture *f, int (*pred)(struct fixture *),
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

static int idle(struct fixture *f)
{
    return router_pending(f->router) == 0;
}

static int store_up(struct fixture *f)
{
    return store_is_up(f->store);
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);

    assert_non_null(p);
    return p;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char port[16], portfile[128], stub[512], url[64];
    const char *data = getenv("PARLEY_TEST_DATA");

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/parley-router-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->redis_port = spawn_free_port();
    f->redis_pid = spawn_redis(f->redis_port, f->dir);
    assert_true(f->redis_pid > 0);

    snprintf(portfile, sizeof(portfile), "%s/stub.port", f->dir);
    snprintf(stub, sizeof(stub), "%s/integration/openai_stub.py",
             data ? data : "tests");
    {
        char *argv[] = { "/usr/bin/python3", stub, "--port-file", portfile,
                         NULL };
        f->stub_pid = spawn_process(argv, NULL);
    }
    assert_true(f->stub_pid > 0);
    for (int i = 0; i < 500 && f->stub_port <= 0; i++) {
        FILE *pf = fopen(portfile, "r");
        struct timespec pause = { 0, 10 * 1000 * 1000 };

        if (pf) {
            if (fscanf(pf, "%d", &f->stub_port) != 1)
                f->stub_port = 0;
            fclose(pf);
        }
        if (f->stub_port <= 0)
            nanosleep(&pause, NULL);
    }
    assert_true(f->stub_port > 0);
    assert_int_equal(spawn_wait_port(f->stub_port, 5000), 0);

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
    (void)port;

    assert_int_equal(uv_loop_init(&f->uv), 0);
    assert_int_equal(loop_create(&f->loop, &f->uv), PARLEY_OK);
    assert_int_equal(store_open(&f->store, &f->uv, &f->cfg.redis, NULL),
                     PARLEY_OK);
    assert_int_equal(llm_create(&f->llm, f->loop, &f->cfg.llm, NULL),
                     PARLEY_OK);
    assert_int_equal(router_create(&f->router, &f->cfg, f->store, f->llm,
                                   f->loop), PARLEY_OK);
    f->ad.ops = &fake_ops;
    f->ad.account = "acct";
    f->ad.priv = f;
    assert_int_equal(router_add_adapter(f->router, &f->ad), PARLEY_OK);
    assert_true(run_until(f, store_up, 5000));
    *state = f;
    return 0;
}

static int teardown(void **state)
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
static redisReply *redis_query(struct fixture *f, const char *fmt, ...)
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

/* Script the stand-in over HTTP with a blocking socket. */
static void stub_script(struct fixture *f, const char *json)
{
    char req[2048];
    int fd, n;
    struct sockaddr_in sa;
    char buf[512];

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)f->stub_port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    n = snprintf(req, sizeof(req), "POST /_control/script HTTP/1.0\r\n"
                 "Content-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n%s", strlen(json), json);
    assert_true(n > 0 && (size_t)n < sizeof(req));
    assert_int_equal(write(fd, req, (size_t)n), n);
    n = (int)read(fd, buf, sizeof(buf) - 1);
    assert_true(n > 12);
    buf[n] = '\0';
    assert_non_null(strstr(buf, " 200 "));
    close(fd);
}

static struct event message(const char *room, const char *sender,
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

static const struct sent *find_sent(struct fixture *f, const char *text)
{
    for (size_t i = 0; i < f->n_sent; i++)
        if (strcmp(f->sent[i].text, text) == 0)
            return &f->sent[i];
    return NULL;
}

static void rooms_keep_order_and_run_in_parallel(void **state)
{
    struct fixture *f = *state;
    struct event ev;
    const struct sent *a1, *a2, *b1, *b2;
    uint64_t t0;

    stub_script(f, "[{\"when_contains\": \"slow\", \"delay\": 1.0, "
                "\"repeat\": true}]");
    uv_update_time(&f->uv);
    t0 = uv_now(&f->uv);
    ev = message("#a", "ann", "slow a1");
    router_submit(f->router, &ev);
    ev = message("#a", "ann", "quick a2");
    router_submit(f->router, &ev);
    ev = message("#b", "ben", "slow b1");
    router_submit(f->router, &ev);
    ev = message("#b", "ben", "quick b2");
    router_submit(f->router, &ev);
    assert_int_equal(router_pending(f->router), 4);
    assert_true(run_until(f, idle, 10000));
    assert_int_equal(f->n_sent, 4);
    a1 = find_sent(f, "echo: ann: slow a1");
    a2 = find_sent(f, "echo: ann: quick a2");
    b1 = find_sent(f, "echo: ben: slow b1");
    b2 = find_sent(f, "echo: ben: quick b2");
    assert_non_null(a1);
    assert_non_null(a2);
    assert_non_null(b1);
    assert_non_null(b2);
    /* Within a room: the quick second question waits for the slow first
     * one, so answers come in question order. */
    assert_true(a1 < a2);
    assert_true(b1 < b2);
    assert_true(a2->at_ms >= a1->at_ms);
    /* Between rooms: both slow answers were in flight together, so the
     * second room's slow answer did not wait for the first's. */
    assert_true(b1->at_ms - t0 < 1900);
    assert_true(a1->at_ms - t0 < 1900);
    assert_string_equal(a1->mention, "ann");
}

static void accepted_cb(int status, void *privdata)
{
    struct fixture *f = privdata;

    f->accepted_status = status;
    f->accepted_calls++;
}

static int accepted_once(struct fixture *f)
{
    return f->accepted_calls > 0;
}

static void durable_submit_records_job_and_dedupes(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("!room:hs", "@u:hs", "hello durable");
    redisReply *r;

    ev.event_id = "$ev1";
    router_submit_durable(f->router, &ev, accepted_cb, f);
    assert_true(run_until(f, accepted_once, 5000));
    assert_int_equal(f->accepted_status, PARLEY_OK);
    /* The job exists before the answer: a crash now loses nothing. */
    r = redis_query(f, "HGET r:job:$ev1 text");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "hello durable");
    freeReplyObject(r);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);
    assert_string_equal(f->sent[0].in_reply_to, "$ev1");
    r = redis_query(f, "HGETALL r:job:$ev1");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    r = redis_query(f, "HGET r:job:$ev1 state");
    assert_string_equal(r->str, "done");
    freeReplyObject(r);
    r = redis_query(f, "HGET r:job:$ev1 answer");
    assert_string_equal(r->str, "echo: @u:hs: hello durable");
    freeReplyObject(r);

    /* The same event again (a sync replay): accepted, not answered. */
    f->accepted_calls = 0;
    router_submit_durable(f->router, &ev, accepted_cb, f);
    assert_true(run_until(f, accepted_once, 5000));
    assert_int_equal(f->accepted_status, PARLEY_OK);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);

    /* Plain submit with an id dedupes too. */
    ev.event_id = "$ev2";
    router_submit(f->router, &ev);
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 2);
}

static void greetings_once_and_only_in_quiet_rooms(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#new", "parley", NULL);

    ev.kind = EVENT_JOIN;
    ev.self = 1;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);
    assert_non_null(strstr(f->sent[0].text, "echo: "));
    assert_string_equal(f->sent[0].mention, "");

    /* The room now has a conversation: no second room greeting. */
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);

    /* Someone joins: greeted once, then the cooldown holds. */
    ev = message("#new", "dora", NULL);
    ev.kind = EVENT_JOIN;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 2);
    assert_string_equal(f->sent[1].mention, "dora");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 2);
}

static void greeting_falls_back_to_a_fixed_text(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#down", "parley", NULL);

    stub_script(f, "[{\"status\": 503, \"repeat\": true}]");
    ev.kind = EVENT_JOIN;
    ev.self = 1;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);
    assert_string_equal(f->sent[0].text, "Hello everyone! I'm parley. What "
                        "topic would you like to explore today?");
    assert_false(f->sent[0].notice);
}

static void greeting_command_turns_greetings_off(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#quiet", "op", "!greeting off");
    redisReply *r;

    ev.is_admin = 1;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_string_equal(f->sent[0].text, "Greetings are off.");
    r = redis_query(f, "HGET r:room:fake:acct:#quiet greeting");
    assert_string_equal(r->str, "off");
    freeReplyObject(r);
    ev = message("#quiet", "newbie", NULL);
    ev.kind = EVENT_JOIN;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    ev = message("#quiet", "parley", NULL);
    ev.kind = EVENT_JOIN;
    ev.self = 1;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);     /* nobody greeted */
    ev = message("#quiet", "someone", "!greeting on");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_string_equal(f->sent[1].text, "Only room operators can change "
                        "that.");
}

static void ignored_events(void **state)
{
    struct fixture *f = *state;
    struct event ev;

    ev = message("#x", "eve", "just chatting");
    ev.addressed = 0;
    router_submit(f->router, &ev);
    ev = message("#x", "parley", "my own words");
    ev.self = 1;
    router_submit(f->router, &ev);
    ev = message("#x", "otherbot", "beep");
    ev.from_bot = 1;
    router_submit(f->router, &ev);
    ev = message("#x", "eve", "!dice 2d6");
    ev.addressed = 0;
    router_submit(f->router, &ev);
    ev = message("#x", "eve", "");
    router_submit(f->router, &ev);
    ev = message("#x", "eve", "hi");
    ev.platform = "elsewhere";
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 3000));
    assert_int_equal(f->n_sent, 0);

    ev = message("#x", "eve", "!dice 2d6");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 3000));
    assert_int_equal(f->n_sent, 1);
    assert_true(f->sent[0].notice);
    assert_non_null(strstr(f->sent[0].text, "Unknown command"));

    /* !system needs an admin. */
    ev = message("#x", "eve", "!system be rude");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 3000));
    assert_non_null(strstr(f->sent[1].text, "Only room operators"));
}

static void rate_limit_answers_with_a_notice(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#r", "fred", "question");

    f->cfg.limits.user_requests_per_minute = 2;
    for (int i = 0; i < 3; i++)
        router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 3);
    assert_false(f->sent[0].notice);
    assert_false(f->sent[1].notice);
    assert_true(f->sent[2].notice);
    assert_non_null(strstr(f->sent[2].text, "faster"));
    /* Someone else is not affected. */
    ev = message("#r", "gina", "question");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_false(f->sent[3].notice);
}

static void long_text_is_cut_on_a_character(void **state)
{
    struct fixture *f = *state;
    size_t len = 20000 * 2;
    char *text = malloc(len + 1);
    struct event ev;
    redisReply *r;

    assert_non_null(text);
    for (size_t i = 0; i < len; i += 2)
        memcpy(text + i, "\xc3\xa9", 2);      /* U+00E9, two bytes */
    text[len] = '\0';
    ev = message("#long", "lou", text);
    router_submit(f->router, &ev);
    free(text);     /* the router keeps its own copy */
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);
    r = redis_query(f, "LINDEX r:ctx:fake:acct:#long 0");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    /* ROUTER_TEXT_MAX bytes of whole characters, plus the JSON frame. */
    assert_true(r->len > ROUTER_TEXT_MAX - 2);
    assert_true(r->len < ROUTER_TEXT_MAX + 200);
    assert_non_null(strstr(r->str, "\xc3\xa9\""));
    freeReplyObject(r);
}

static void ambient_lines_become_context(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#amb", "ann", "the meeting moved to 3pm");
    redisReply *r;

    ev.addressed = 0;
    ev.ambient = 1;
    router_submit(f->router, &ev);
    ev = message("#amb", "bob", "when is the meeting?");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    /* Only the question is answered... */
    assert_int_equal(f->n_sent, 1);
    /* ...and the line said before it is in the history, in its place. */
    r = redis_query(f, "LRANGE r:ctx:fake:acct:#amb 0 -1");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 3);
    assert_non_null(strstr(r->element[0]->str, "the meeting moved"));
    assert_non_null(strstr(r->element[1]->str, "when is the meeting"));
    freeReplyObject(r);
}

static int sent_two(struct fixture *f)
{
    return f->n_sent >= 2 && router_pending(f->router) == 0;
}

static void resume_unfinished_jobs(void **state)
{
    struct fixture *f = *state;
    redisReply *r;

    r = redis_query(f, "HSET r:job:$p state pending kind chat platform fake "
                    "account acct room !q:hs sender @a:hs text %s",
                    "still waiting");
    freeReplyObject(r);
    r = redis_query(f, "HSET r:job:$s state answered kind chat platform "
                    "fake account acct room !q:hs sender @a:hs text q "
                    "answer %s notice 0", "the stored answer");
    freeReplyObject(r);
    r = redis_query(f, "HSET r:job:$d state done kind chat platform fake "
                    "account acct room !q:hs sender @a:hs text %s",
                    "answered long ago");
    freeReplyObject(r);
    r = redis_query(f, "HSET r:job:$g state pending kind greet platform "
                    "fake account acct room !new:hs sender parley");
    freeReplyObject(r);
    r = redis_query(f, "HSET r:job:$x state pending kind chat platform "
                    "gone account acct room !q:hs sender @a:hs text %s",
                    "for an adapter no longer configured");
    freeReplyObject(r);
    router_resume(f->router);
    assert_true(run_until(f, sent_two, 5000));
    /* Let anything extra arrive before counting. */
    assert_true(run_until(f, idle, 2000));
    assert_int_equal(f->n_sent, 3);
    /* The greeting a previous run accepted but never sent. */
    assert_non_null(find_sent(f, "echo: (You have just joined this room. "
                              "Greet everyone.)"));
    assert_non_null(find_sent(f, "echo: @a:hs: still waiting"));
    assert_non_null(find_sent(f, "the stored answer"));
    assert_string_equal(find_sent(f, "the stored answer")->in_reply_to,
                        "$s");
    r = redis_query(f, "HGET r:job:$p state");
    assert_string_equal(r->str, "done");
    freeReplyObject(r);
    r = redis_query(f, "HGET r:job:$s state");
    assert_string_equal(r->str, "done");
    freeReplyObject(r);
}

static void parse_command(void **state)
{
    char name[16];
    const char *arg = NULL;

    (void)state;
    assert_int_equal(router_parse_command("!Model  gpt-4o ", name,
                                          sizeof(name), &arg), 1);
    assert_string_equal(name, "model");
    assert_string_equal(arg, "gpt-4o ");
    assert_int_equal(router_parse_command("!reset", name, sizeof(name),
                                          &arg), 1);
    assert_string_equal(arg, "");
    assert_int_equal(router_parse_command("hello !reset", name,
                                          sizeof(name), &arg), 0);
    assert_int_equal(router_parse_command("!", name, sizeof(name), &arg), 0);
    assert_int_equal(router_parse_command("! reset", name, sizeof(name),
                                          &arg), 0);
    assert_int_equal(router_parse_command("!123", name, sizeof(name),
                                          &arg), 0);
    assert_int_equal(router_parse_command("!averyveryverylongcommandname",
                                          name, sizeof(name), &arg), 0);
    assert_int_equal(router_parse_command(NULL, name, sizeof(name), &arg),
                     0);
    assert_int_equal(router_parse_command("!x\tfoo", name, sizeof(name),
                                          &arg), 1);
    assert_string_equal(name, "x");
    assert_string_equal(arg, "foo");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_command),
        cmocka_unit_test_setup_teardown(
            rooms_keep_order_and_run_in_parallel, setup, teardown),
        cmocka_unit_test_setup_teardown(
            durable_submit_records_job_and_dedupes, setup, teardown),
        cmocka_unit_test_setup_teardown(
            greetings_once_and_only_in_quiet_rooms, setup, teardown),
        cmocka_unit_test_setup_teardown(greeting_falls_back_to_a_fixed_text,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            greeting_command_turns_greetings_off, setup, teardown),
        cmocka_unit_test_setup_teardown(ignored_events, setup, teardown),
        cmocka_unit_test_setup_teardown(rate_limit_answers_with_a_notice,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(resume_unfinished_jobs, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(long_text_is_cut_on_a_character,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(ambient_lines_become_context,
                                        setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
