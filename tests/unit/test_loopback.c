/*
 * The loopback adapter driving a real router: a real redis-server and
 * the OpenAI stand-in on loopback (tests/unit/spawn.h), the adapter built
 * from a config block through the registry as main builds it, messages
 * injected with loopback_inject and answers read from its record.  This
 * is the pattern for router tests and benchmarks that need no platform.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <uv.h>

#include "adapter.h"
#include "config.h"
#include "context.h"
#include "llm.h"
#include "loop.h"
#include "loopback/loopback.h"
#include "router.h"
#include "spawn.h"
#include "state.h"
#include "status.h"
#include "store.h"

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
    struct adapter *ad;
    int callbacks;
    char last_text[256];
    /* state_history_load result */
    int history_done;
    size_t history_n;
    char history_last[256];
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
    return router_pending(f->router) == 0 &&
           loopback_in_flight(f->ad) == 0;
}

static int sending(struct fixture *f)
{
    return loopback_in_flight(f->ad) > 0;
}

static int store_up(struct fixture *f)
{
    return store_is_up(f->store);
}

static void replace(char **field, const char *value)
{
    free(*field);
    *field = strdup(value);
    assert_non_null(*field);
}

static void start_stub(struct fixture *f)
{
    f->stub_pid = spawn_openai_stub(f->dir, NULL, NULL, &f->stub_port);
    assert_true(f->stub_pid > 0);
}

/* extra: more keys for the adapter block ("" for none). */
static int setup_with(void **state, const char *extra)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char path[128], url[64], err[1024];
    const struct adapter_desc *d;
    struct adapter_env env;
    FILE *conf;

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/parley-loopback-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->redis_port = spawn_free_port();
    f->redis_pid = spawn_redis(f->redis_port, f->dir);
    assert_true(f->redis_pid > 0);
    start_stub(f);

    /* The adapter comes from a config block, as in bot.conf. */
    snprintf(path, sizeof(path), "%s/bot.conf", f->dir);
    conf = fopen(path, "w");
    assert_non_null(conf);
    fprintf(conf, "adapters = ( { type = \"loopback\"; name = \"lb\"; "
            "latency_ms = 0; %s } );\n"
            "limits = { user_requests_per_minute = 0; };\n", extra);
    assert_int_equal(fclose(conf), 0);
    assert_int_equal(config_load(&f->cfg, path, err, sizeof(err)),
                     PARLEY_OK);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", f->stub_port);
    replace(&f->cfg.llm.base_url, url);
    replace(&f->cfg.redis.prefix, "lb:");
    f->cfg.redis.port = f->redis_port;
    f->cfg.llm.max_retries = 1;
    f->cfg.llm.backoff_base_ms = 20;
    f->cfg.llm.backoff_max_ms = 50;
    f->cfg.llm.timeout_ms = 5000;

    assert_int_equal(uv_loop_init(&f->uv), 0);
    assert_int_equal(loop_create(&f->loop, &f->uv), PARLEY_OK);
    assert_int_equal(store_open(&f->store, &f->uv, &f->cfg.redis, NULL),
                     PARLEY_OK);
    assert_int_equal(llm_create(&f->llm, f->loop, &f->cfg.llm, NULL),
                     PARLEY_OK);
    assert_int_equal(router_create(&f->router, &f->cfg, f->store, f->llm,
                                   f->loop), PARLEY_OK);
    d = adapter_find(f->cfg.adapters[0].type);
    assert_non_null(d);
    env.loop = f->loop;
    env.store = f->store;
    env.cfg = &f->cfg;
    assert_int_equal(d->create(&f->ad, &env, f->cfg.adapters[0].setting,
                               err, sizeof(err)), PARLEY_OK);
    f->ad->greet = f->cfg.adapters[0].greet;
    if (f->cfg.adapters[0].stream >= 0)     /* as main does */
        f->ad->stream = f->cfg.adapters[0].stream;
    assert_string_equal(f->ad->account, "lb");
    assert_int_equal(router_add_adapter(f->router, f->ad), PARLEY_OK);
    assert_int_equal(f->ad->ops->start(f->ad), PARLEY_OK);
    assert_true(run_until(f, store_up, 5000));
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, "");
}

static int setup_stream(void **state)
{
    return setup_with(state, "stream = true;");
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];

    router_close(f->router);
    f->ad->ops->stop(f->ad);
    store_close(f->store);
    llm_free(f->llm);
    loop_close(f->loop);
    uv_run(&f->uv, UV_RUN_DEFAULT);
    f->ad->ops->free(f->ad);
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

static void on_reply(struct adapter *ad, const struct loopback_reply *r,
                     void *privdata)
{
    struct fixture *f = privdata;

    assert_ptr_equal(ad, f->ad);
    f->callbacks++;
    snprintf(f->last_text, sizeof(f->last_text), "%s", r->text);
}

/* Message in, answer recorded: the whole path through the router, the
 * store and the model, with no platform. */
static void message_in_answer_out(void **state)
{
    struct fixture *f = *state;
    const struct loopback_reply *r;

    loopback_on_reply(f->ad, on_reply, f);
    assert_int_equal(loopback_inject(f->ad, "#room", "alice", "hello", 1),
                     PARLEY_OK);
    assert_true(run_until(f, idle, 10000));
    assert_int_equal(loopback_reply_count(f->ad), 1);
    r = loopback_reply_at(f->ad, 0);
    assert_non_null(r);
    assert_string_equal(r->room, "#room");
    assert_string_equal(r->text, "echo: alice: hello");
    assert_int_equal(r->notice, 0);
    assert_int_equal(f->callbacks, 1);
    assert_string_equal(f->last_text, "echo: alice: hello");
    assert_null(loopback_reply_at(f->ad, 1));
    assert_int_equal(loopback_dropped(f->ad), 0);

    /* Unaddressed chatter is not answered. */
    assert_int_equal(loopback_inject(f->ad, "#room", "bob", "hi all", 0),
                     PARLEY_OK);
    assert_true(run_until(f, idle, 2000));
    assert_int_equal(loopback_reply_count(f->ad), 1);

    /* The answer joins the room's history under the loopback key. */
    assert_int_equal(loopback_inject(f->ad, "#room", "alice", "again", 1),
                     PARLEY_OK);
    assert_true(run_until(f, idle, 10000));
    assert_int_equal(loopback_reply_count(f->ad), 2);
    assert_string_equal(loopback_reply_at(f->ad, 1)->text,
                        "echo: alice: again");
    loopback_clear(f->ad);
    assert_int_equal(loopback_reply_count(f->ad), 0);
}

/* Simulated latency: a reply counts as delivered only after it, and
 * replies keep their order. */
static void latency_delays_delivery(void **state)
{
    struct fixture *f = *state;
    uint64_t t0;

    loopback_set_latency(f->ad, 150);
    uv_update_time(&f->uv);
    t0 = uv_now(&f->uv);
    assert_int_equal(loopback_inject(f->ad, "#slow", "carol", "one", 1),
                     PARLEY_OK);
    assert_int_equal(loopback_inject(f->ad, "#slow", "carol", "two", 1),
                     PARLEY_OK);
    assert_true(run_until(f, idle, 10000));
    assert_int_equal(loopback_reply_count(f->ad), 2);
    assert_string_equal(loopback_reply_at(f->ad, 0)->text,
                        "echo: carol: one");
    assert_string_equal(loopback_reply_at(f->ad, 1)->text,
                        "echo: carol: two");
    assert_true(loopback_reply_at(f->ad, 0)->at_ms - t0 >= 150);
    assert_true(loopback_reply_at(f->ad, 1)->at_ms >=
                loopback_reply_at(f->ad, 0)->at_ms);
    loopback_set_latency(f->ad, 0);
}

/* A send still waiting when the adapter stops is given up, and nothing
 * leaks (ASan): the router hears PARLEY_ERR_STATE. */
static void stop_with_send_in_flight(void **state)
{
    struct fixture *f = *state;

    loopback_set_latency(f->ad, 5000);
    assert_int_equal(loopback_inject(f->ad, "#stop", "dave", "bye", 1),
                     PARLEY_OK);
    assert_true(run_until(f, sending, 10000));
    f->ad->ops->stop(f->ad);
    assert_int_equal(loopback_in_flight(f->ad), 0);
    assert_int_equal(loopback_reply_count(f->ad), 0);
    assert_int_equal(loopback_inject(f->ad, "#stop", "dave", "more", 1),
                     PARLEY_ERR_STATE);
}

/* Replace the stand-in's script with json (a list of actions). */
static void stub_script(struct fixture *f, const char *json)
{
    char req[1024], buf[512];
    struct sockaddr_in sa;
    int fd, n;

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
    close(fd);
}

/* Script the stand-in: every answer waits delay seconds. */
static void stub_delay_all(struct fixture *f, double delay)
{
    char json[128];

    snprintf(json, sizeof(json), "[{\"delay\": %.2f, \"repeat\": true}]",
             delay);
    stub_script(f, json);
}

static void history_loaded(int status, struct history *h, void *privdata)
{
    struct fixture *f = privdata;

    f->history_done = 1;
    f->history_n = 0;
    f->history_last[0] = '\0';
    if (status == PARLEY_OK && h) {
        f->history_n = h->n;
        if (h->n > 0)
            snprintf(f->history_last, sizeof(f->history_last), "%s",
                     h->turns[h->n - 1].content);
    }
    context_history_free(h);
}

static int history_ready(struct fixture *f)
{
    return f->history_done;
}

/* Number of turns stored for the loopback room, the last one's text in
 * f->history_last. */
static size_t history_of(struct fixture *f, const char *room)
{
    char key[128];

    snprintf(key, sizeof(key), "loopback:lb:%s", room);
    f->history_done = 0;
    assert_int_equal(state_history_load(f->store, key, &f->cfg.context,
                                        history_loaded, f), PARLEY_OK);
    assert_true(run_until(f, history_ready, 5000));
    return f->history_n;
}

/* stream = true: the pieces reach ops->progress as the text so far, the
 * final send carries the whole answer, and the history holds it once. */
static void stream_progress_then_final(void **state)
{
    struct fixture *f = *state;
    const struct loopback_reply *r;

    assert_int_equal(f->ad->stream, 1);
    stub_script(f, "[{\"pieces\": [\"Hel\", \"lo, \", \"wor\", "
                "\"ld!\"], \"chunk_delay\": 0.02}]");
    assert_int_equal(loopback_inject(f->ad, "#s", "alice", "hi", 1),
                     PARLEY_OK);
    assert_true(run_until(f, idle, 10000));
    /* Pieces may be merged on the way, never lost. */
    assert_true(loopback_progress_count(f->ad) >= 1);
    assert_true(loopback_progress_count(f->ad) <= 4);
    assert_string_equal(loopback_progress_last(f->ad, NULL),
                        "Hello, world!");
    assert_int_equal(loopback_reply_count(f->ad), 1);
    r = loopback_reply_at(f->ad, 0);
    assert_string_equal(r->text, "Hello, world!");
    assert_int_equal(r->notice, 0);
    assert_int_equal(history_of(f, "#s"), 2);
    assert_string_equal(f->history_last, "Hello, world!");

    /* Commands are not streamed: they never reach the model. */
    loopback_progress_reset(f->ad);
    assert_int_equal(loopback_inject(f->ad, "#s", "alice", "!help", 1),
                     PARLEY_OK);
    assert_true(run_until(f, idle, 10000));
    assert_int_equal(loopback_progress_count(f->ad), 0);
    assert_int_equal(loopback_reply_count(f->ad), 2);
}

/* A stream that breaks after pieces were shown: the final send is the
 * fallback notice (the adapter replaces what it showed) and nothing of
 * the exchange enters the history. */
static void stream_break_gives_fallback(void **state)
{
    struct fixture *f = *state;
    const struct loopback_reply *r;

    stub_script(f, "[{\"pieces\": [\"Half \", \"an \", \"answer\", "
                "\" never\"], \"chunk_delay\": 0.02, "
                "\"break_after\": 2}]");
    assert_int_equal(loopback_inject(f->ad, "#b", "bob", "tell me", 1),
                     PARLEY_OK);
    assert_true(run_until(f, idle, 10000));
    assert_true(loopback_progress_count(f->ad) >= 1);
    assert_non_null(strstr("Half an ", loopback_progress_last(f->ad,
                                                              NULL)));
    assert_int_equal(loopback_reply_count(f->ad), 1);
    r = loopback_reply_at(f->ad, 0);
    assert_string_equal(r->text, ROUTER_FALLBACK_TEXT);
    assert_int_equal(r->notice, 1);
    assert_int_equal(history_of(f, "#b"), 0);
}

/* Without the key (or with stream = false) nothing is streamed. */
static void stream_off_by_default(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(f->ad->stream, 0);
    assert_int_equal(loopback_inject(f->ad, "#n", "carol", "hey", 1),
                     PARLEY_OK);
    assert_true(run_until(f, idle, 10000));
    assert_int_equal(loopback_progress_count(f->ad), 0);
    assert_int_equal(loopback_reply_count(f->ad), 1);
    assert_string_equal(loopback_reply_at(f->ad, 0)->text,
                        "echo: carol: hey");
}

/*
 * Benchmark, run only with PARLEY_BENCH=1 (it takes about 25 s): 20
 * senders address the bot at once in one room, then in 20 rooms, with a
 * model that takes 1 s per answer; prints when the last answer arrived.
 */
static void bench_burst(void **state)
{
    struct fixture *f = *state;
    char sender[16], room[16];
    uint64_t t0;
    int one_room;

    if (!getenv("PARLEY_BENCH"))
        skip();
    stub_delay_all(f, 1.0);
    for (one_room = 1; one_room >= 0; one_room--) {
        loopback_clear(f->ad);
        uv_update_time(&f->uv);
        t0 = uv_now(&f->uv);
        for (int i = 0; i < 20; i++) {
            snprintf(sender, sizeof(sender), "u%d", i);
            snprintf(room, sizeof(room), one_room ? "#one" : "#r%d", i);
            assert_int_equal(loopback_inject(f->ad, room, sender,
                                             "question", 1), PARLEY_OK);
        }
        assert_true(run_until(f, idle, 60000));
        assert_int_equal(loopback_reply_count(f->ad), 20);
        printf("bench loopback: 20 senders in %s, model 1 s, "
               "llm.max_concurrent %d: last answer after %llu ms\n",
               one_room ? "one room" : "20 rooms",
               f->cfg.llm.max_concurrent,
               (unsigned long long)(loopback_reply_at(f->ad, 19)->at_ms -
                                    t0));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(message_in_answer_out, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(latency_delays_delivery, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(stop_with_send_in_flight, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(stream_progress_then_final,
                                        setup_stream, teardown),
        cmocka_unit_test_setup_teardown(stream_break_gives_fallback,
                                        setup_stream, teardown),
        cmocka_unit_test_setup_teardown(stream_off_by_default, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(bench_burst, setup, teardown),
    };

    spawn_require("/usr/bin/redis-server");
    spawn_require("/usr/bin/python3");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
