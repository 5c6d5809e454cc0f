/*
 * The shared work streams (state_work.c) against a real redis-server on a
 * free loopback port, driven by a real libuv loop: groups made twice, a
 * submit that writes the job record only when there is none, reads by
 * two consumers that never see the same entry, the finish script run
 * twice on one job (the second neither appends nor stores, and publishes
 * the first answer), a finish for a job whose record is gone (acked
 * only), XAUTOCLAIM of a quiet consumer's entries, the keep-alive that
 * keeps them from being claimed, and the lag and pending figures.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include "live_store.h"

#include "config.h"
#include "context.h"
#include "log.h"
#include "state.h"
#include "status.h"
#include "store.h"

#define TTL_S 600
#define ENTRIES_MAX 16

struct done_cap {
    int calls;
    int status;
};

struct entries_cap {
    int calls;
    int status;
    char next[64];
    size_t n;
    char entry[ENTRIES_MAX][64];
    char job[ENTRIES_MAX][64];
    char owner[ENTRIES_MAX][64];
    char answer[ENTRIES_MAX][64];
    int notice[ENTRIES_MAX];
};

struct finish_cap {
    int calls;
    int status;
    int answered;
};

struct job_cap {
    int calls;
    int status;
    int got;
    enum state_job_state state;
    char text[64];
};

struct info_cap {
    int calls;
    int status;
    long long lag, pending;
};

static void done_fn(int status, void *privdata)
{
    struct done_cap *c = privdata;

    c->calls++;
    c->status = status;
}

static void entries_fn(int status, const char *next,
                       const struct state_work_entry *e, size_t n,
                       void *privdata)
{
    struct entries_cap *c = privdata;

    c->calls++;
    c->status = status;
    snprintf(c->next, sizeof(c->next), "%s", next ? next : "");
    c->n = n;
    for (size_t i = 0; i < n && i < ENTRIES_MAX; i++) {
        snprintf(c->entry[i], sizeof(c->entry[i]), "%s", e[i].entry_id);
        snprintf(c->job[i], sizeof(c->job[i]), "%s", e[i].job_id);
        snprintf(c->owner[i], sizeof(c->owner[i]), "%s",
                 e[i].owner ? e[i].owner : "");
        snprintf(c->answer[i], sizeof(c->answer[i]), "%s",
                 e[i].answer ? e[i].answer : "");
        c->notice[i] = e[i].notice;
    }
}

static void finish_fn(int status, int answered, void *privdata)
{
    struct finish_cap *c = privdata;

    c->calls++;
    c->status = status;
    c->answered = answered;
}

static void job_fn(int status, const struct state_job *job, void *privdata)
{
    struct job_cap *c = privdata;

    c->calls++;
    c->status = status;
    c->got = job != NULL;
    if (job) {
        c->state = job->state;
        snprintf(c->text, sizeof(c->text), "%s", job->text ? job->text : "");
    }
}

static void info_fn(int status, long long lag, long long pending,
                    void *privdata)
{
    struct info_cap *c = privdata;

    c->calls++;
    c->status = status;
    c->lag = lag;
    c->pending = pending;
}

static struct state_job sample(const char *id, const char *text)
{
    struct state_job j;

    memset(&j, 0, sizeof(j));
    j.event_id = id;
    j.kind = STATE_JOB_CHAT;
    j.platform = "irc";
    j.account = "net";
    j.room = "#chan";
    j.sender = "alice";
    j.sender_name = "alice";
    j.text = text;
    return j;
}

#define WAIT(L, cap) assert_true(live_wait_count((L), &(cap).calls, 1, 3000))

static void submit(struct live *L, const char *id, const char *text,
                   const char *owner)
{
    struct state_job j = sample(id, text);
    struct done_cap d = { 0, -1 };

    assert_int_equal(state_work_submit(L->st, &j, TTL_S, owner, done_fn, &d),
                     PARLEY_OK);
    WAIT(L, d);
    assert_int_equal(d.status, PARLEY_OK);
}

static void groups(struct live *L)
{
    struct done_cap a = { 0, -1 }, b = { 0, -1 }, c = { 0, -1 };

    assert_int_equal(state_work_group_create(L->st, NULL, NULL, done_fn, &a),
                     PARLEY_OK);
    assert_int_equal(state_work_group_create(L->st, NULL, NULL, done_fn, &b),
                     PARLEY_OK);
    assert_int_equal(state_work_group_create(L->st, "irc", "net", done_fn,
                                             &c), PARLEY_OK);
    WAIT(L, c);
    assert_int_equal(a.status, PARLEY_OK);
    assert_int_equal(b.status, PARLEY_OK);     /* BUSYGROUP is fine */
    assert_int_equal(c.status, PARLEY_OK);
}

static void finish(struct live *L, const char *id, const char *entry,
                   const char *answer, int with_turns, struct finish_cap *f)
{
    struct config_context ctx = { .max_turns = 10, .ttl_s = 60 };
    struct turn turns[2];
    struct state_work_answer a;

    memset(turns, 0, sizeof(turns));
    turns[0].role = "user";
    turns[0].name = "alice";
    turns[0].content = "q";
    turns[1].role = "assistant";
    turns[1].content = (char *)answer;
    memset(&a, 0, sizeof(a));
    a.job_id = id;
    a.entry_id = entry;
    a.platform = "irc";
    a.account = "net";
    a.room_key = "irc:net:#chan";
    a.answer = answer;
    a.turns = with_turns ? turns : NULL;
    a.n_turns = with_turns ? 2 : 0;
    a.ctx = &ctx;
    a.epoch = -1;
    memset(f, 0, sizeof(*f));
    assert_int_equal(state_work_finish(L->st, &a, finish_fn, f), PARLEY_OK);
    WAIT(L, *f);
    assert_int_equal(f->status, PARLEY_OK);
}

static long long raw_int(struct live *L, const char *cmd)
{
    redisContext *c = redisConnect("127.0.0.1", L->port);
    redisReply *r;
    long long v = -1;

    assert_non_null(c);
    r = redisCommand(c, "SELECT 2");
    freeReplyObject(r);
    r = redisCommand(c, cmd);
    if (r && r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    freeReplyObject(r);
    redisFree(c);
    return v;
}

static const struct live_opts live_opts = {
    .tmpl = "/tmp/parley-work-XXXXXX", .db = 2, .prefix = "wtest:",
    .level = LOG_LEVEL_ERROR, .eager = 1,
};

static int setup(void **state)
{
    return live_setup(state, &live_opts);
}

static int teardown(void **state)
{
    return live_teardown(state);
}

static void test_submit_read_finish_once(void **state)
{
    struct live *L = *state;
    struct entries_cap r1, r2, rep;
    struct finish_cap f1, f2;
    struct job_cap j;
    struct info_cap info;

    groups(L);
    submit(L, "e1", "first", "owner-a");
    submit(L, "e2", "second", "owner-a");

    /* Two consumers never get the same entry. */
    memset(&r1, 0, sizeof(r1));
    memset(&r2, 0, sizeof(r2));
    assert_int_equal(state_work_read(L->st, NULL, NULL, "w1", 1, entries_fn,
                                     &r1), PARLEY_OK);
    assert_int_equal(state_work_read(L->st, NULL, NULL, "w2", 5, entries_fn,
                                     &r2), PARLEY_OK);
    WAIT(L, r2);
    assert_int_equal(r1.n, 1);
    assert_int_equal(r2.n, 1);
    assert_string_equal(r1.job[0], "e1");
    assert_string_equal(r1.owner[0], "owner-a");
    assert_string_equal(r2.job[0], "e2");

    memset(&info, 0, sizeof(info));
    assert_int_equal(state_work_info(L->st, info_fn, &info), PARLEY_OK);
    WAIT(L, info);
    assert_int_equal(info.lag, 0);
    assert_int_equal(info.pending, 2);

    memset(&j, 0, sizeof(j));
    assert_int_equal(state_work_job_load(L->st, "e1", job_fn, &j),
                     PARLEY_OK);
    WAIT(L, j);
    assert_true(j.got);
    assert_int_equal(j.state, STATE_JOB_PENDING);
    assert_string_equal(j.text, "first");

    /* e1 finished twice (a retry): stored and appended once, the first
     * answer published both times. */
    finish(L, "e1", r1.entry[0], "answer one", 1, &f1);
    assert_int_equal(f1.answered, 1);
    finish(L, "e1", r1.entry[0], "answer two", 1, &f2);
    assert_int_equal(f2.answered, 0);
    assert_int_equal(raw_int(L, "LLEN wtest:ctx:irc:net:#chan"), 2);
    memset(&rep, 0, sizeof(rep));
    assert_int_equal(state_work_read(L->st, "irc", "net", "owner-a", 10,
                                     entries_fn, &rep), PARLEY_OK);
    WAIT(L, rep);
    assert_int_equal(rep.n, 2);
    assert_string_equal(rep.job[0], "e1");
    assert_string_equal(rep.answer[0], "answer one");
    assert_string_equal(rep.answer[1], "answer one");

    /* A job whose record is gone is only acked. */
    assert_int_equal(raw_int(L, "DEL wtest:job:e2"), 1);
    finish(L, "e2", r2.entry[0], "late", 0, &f1);
    assert_int_equal(f1.answered, -1);
    memset(&info, 0, sizeof(info));
    assert_int_equal(state_work_info(L->st, info_fn, &info), PARLEY_OK);
    WAIT(L, info);
    assert_int_equal(info.pending, 0);

    /* A second submit of an existing record keeps its state. */
    submit(L, "e1", "changed", "owner-b");
    memset(&j, 0, sizeof(j));
    assert_int_equal(state_work_job_load(L->st, "e1", job_fn, &j),
                     PARLEY_OK);
    WAIT(L, j);
    assert_int_equal(j.state, STATE_JOB_ANSWERED);
    assert_string_equal(j.text, "first");
}

static void test_claim_and_touch(void **state)
{
    struct live *L = *state;
    struct entries_cap r, c;
    const char *ids[1];

    groups(L);
    submit(L, "c1", "held", "owner-a");
    submit(L, "c2", "kept", "owner-a");
    memset(&r, 0, sizeof(r));
    assert_int_equal(state_work_read(L->st, NULL, NULL, "dead", 2,
                                     entries_fn, &r), PARLEY_OK);
    WAIT(L, r);
    assert_int_equal(r.n, 2);
    /* Nothing idles 10 s yet. */
    memset(&c, 0, sizeof(c));
    assert_int_equal(state_work_claim(L->st, NULL, NULL, "alive", 10000,
                                      "0-0", 10, entries_fn, &c), PARLEY_OK);
    WAIT(L, c);
    assert_int_equal(c.n, 0);
    /* After 300 ms, a living worker touches c2; c1 is taken over. */
    {
        int never = 0;

        live_wait_count(L, &never, 1, 300);
    }
    ids[0] = r.entry[1];
    assert_int_equal(state_work_touch(L->st, "dead", ids, 1), PARLEY_OK);
    memset(&c, 0, sizeof(c));
    assert_int_equal(state_work_claim(L->st, NULL, NULL, "alive", 250,
                                      "0-0", 10, entries_fn, &c), PARLEY_OK);
    WAIT(L, c);
    assert_int_equal(c.status, PARLEY_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.job[0], "c1");
    assert_string_equal(c.next, "0-0");
}

static void test_no_group(void **state)
{
    struct live *L = *state;
    struct entries_cap r;

    memset(&r, 0, sizeof(r));
    assert_int_equal(state_work_read(L->st, NULL, NULL, "w", 1, entries_fn,
                                     &r), PARLEY_OK);
    WAIT(L, r);
    assert_int_equal(r.status, PARLEY_ERR_STATE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_submit_read_finish_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_claim_and_touch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_group, setup, teardown),
    };

    spawn_require("/usr/bin/redis-server");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
