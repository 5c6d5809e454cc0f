/*
 * The typed state layer (state_job.c, state_room.c, state_history.c)
 * against a real redis-server on a free loopback port, driven by a real
 * libuv loop: claims fresh and duplicate, job records (duplicate writes
 * nothing, answered, done, the start-up scan with cursor paging,
 * incomplete and foreign records), room settings and the epoch, usage,
 * history append/load/trim/TTL with hostile room keys and malformed
 * entries, the epoch-checked append after a reset, keys of the wrong type,
 * Redis down (refused at once, no callback) and Redis killed mid-command
 * (every callback once, with PARLEY_ERR_IO).  Every callback also checks
 * that it did not run inside the call that started it.  Matrix session
 * and sync keys (state_session.c) are tested with the Matrix adapter.
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

/* Set while a state_* call runs: a callback that sees it ran too early. */
static int in_call;
static int early;

#define CALL(expr) (in_call = 1, call_result = (expr), in_call = 0, \
                    call_result)
static int call_result;

static void check_not_early(void)
{
    if (in_call)
        early++;
}

/* ---- callback recorders ------------------------------------------------- */

struct cap {                    /* a raw store_command reply */
    int calls;
    int null;
    int type;
    long long integer;
    size_t elements;
    char str[256];
};

struct claim_cap {
    int calls;
    int status;
    int fresh;
};

struct done_cap {
    int calls;
    int status;
};

struct room_cap {
    int calls;
    int status;
    int got;                    /* rs was non-NULL */
    char model[64];
    char system[64];
    int has_model, has_system;
    int greeting;
    long long epoch;
};

struct usage_cap {
    int calls;
    int status;
    int got;
    struct usage u;
};

struct load_cap {
    int calls;
    int status;
    struct history *h;
};

#define SCAN_MAX 400

struct seen_job {
    char id[64];
    enum state_job_state state;
    enum state_job_kind kind;
    char platform[32], account[32], room[64], sender[32], sender_name[32];
    char text[64], thread_id[32], reply_to[32], answer[64];
    int has_text, has_answer, has_account;
    int is_admin, notice;
    long long ts;
};

struct scan_cap {
    int each;
    int finished;
    int status;
    int each_after_finish;
    struct seen_job jobs[SCAN_MAX];
};

static void cap_fn(struct store *st, struct redisReply *r, void *privdata)
{
    struct cap *c = privdata;

    (void)st;
    c->calls++;
    if (!r) {
        c->null = 1;
        return;
    }
    c->type = r->type;
    c->integer = r->integer;
    c->elements = r->elements;
    if (r->str)
        snprintf(c->str, sizeof(c->str), "%.*s", (int)r->len, r->str);
}

static void claim_fn(int status, int fresh, void *privdata)
{
    struct claim_cap *c = privdata;

    check_not_early();
    c->calls++;
    c->status = status;
    c->fresh = fresh;
}

static void done_fn(int status, void *privdata)
{
    struct done_cap *c = privdata;

    check_not_early();
    c->calls++;
    c->status = status;
}

static void room_fn(int status, const struct room_settings *rs,
                    void *privdata)
{
    struct room_cap *c = privdata;

    check_not_early();
    c->calls++;
    c->status = status;
    c->got = rs != NULL;
    if (!rs)
        return;
    c->has_model = rs->model != NULL;
    c->has_system = rs->system != NULL;
    snprintf(c->model, sizeof(c->model), "%s", rs->model ? rs->model : "");
    snprintf(c->system, sizeof(c->system), "%s",
             rs->system ? rs->system : "");
    c->greeting = rs->greeting;
    c->epoch = rs->epoch;
}

static void usage_fn(int status, const struct usage *u, void *privdata)
{
    struct usage_cap *c = privdata;

    check_not_early();
    c->calls++;
    c->status = status;
    c->got = u != NULL;
    if (u)
        c->u = *u;
}

static void load_fn(int status, struct history *h, void *privdata)
{
    struct load_cap *c = privdata;

    check_not_early();
    c->calls++;
    c->status = status;
    context_history_free(c->h);
    c->h = h;
}

#define COPY(dst, src) snprintf((dst), sizeof(dst), "%s", (src) ? (src) : "")

static void each_fn(const struct state_job *job, void *privdata)
{
    struct scan_cap *c = privdata;
    struct seen_job *s;

    check_not_early();
    if (c->finished)
        c->each_after_finish++;
    if (c->each >= SCAN_MAX) {
        c->each++;
        return;
    }
    s = &c->jobs[c->each++];
    COPY(s->id, job->event_id);
    s->state = job->state;
    s->kind = job->kind;
    COPY(s->platform, job->platform);
    COPY(s->account, job->account);
    COPY(s->room, job->room);
    COPY(s->sender, job->sender);
    COPY(s->sender_name, job->sender_name);
    COPY(s->text, job->text);
    COPY(s->thread_id, job->thread_id);
    COPY(s->reply_to, job->reply_to);
    COPY(s->answer, job->answer);
    s->has_text = job->text != NULL;
    s->has_answer = job->answer != NULL;
    s->has_account = job->account != NULL;
    s->is_admin = job->is_admin;
    s->notice = job->notice;
    s->ts = job->ts;
}

static void finished_fn(int status, void *privdata)
{
    struct scan_cap *c = privdata;

    check_not_early();
    c->finished++;
    c->status = status;
}

static const struct seen_job *scan_find(const struct scan_cap *c,
                                        const char *id)
{
    const struct seen_job *found = NULL;

    for (int i = 0; i < c->each && i < SCAN_MAX; i++)
        if (strcmp(c->jobs[i].id, id) == 0) {
            assert_null(found);     /* reported once */
            found = &c->jobs[i];
        }
    return found;
}

/* ---- harness (live_store.h) --------------------------------------------- */

static const struct live_opts live_opts = {
    .tmpl = "/tmp/parley-state-XXXXXX", .db = 3, .prefix = "ptest:",
    .level = LOG_LEVEL_INFO, .eager = 0,
};

static int setup(void **state)
{
    in_call = 0;
    early = 0;
    return live_setup(state, &live_opts);
}

static int teardown(void **state)
{
    live_teardown(state);
    assert_int_equal(early, 0);
    return 0;
}

/* A raw command, waited for. */
#define RAW(L, c, ...) do { \
        memset((c), 0, sizeof(*(c))); \
        assert_int_equal(store_command((L)->st, cap_fn, (c), __VA_ARGS__), \
                         PARLEY_OK); \
        assert_true(live_wait_count((L), &(c)->calls, 1, 2000)); \
    } while (0)

/* ---- claims ------------------------------------------------------------- */

static void test_claims(void **state)
{
    struct live *L = *state;
    struct claim_cap a = { 0 }, b = { 0 }, g1 = { 0 }, g2 = { 0 },
                     g3 = { 0 };
    struct cap ttl;

    live_start_up(L);
    assert_int_equal(CALL(state_seen_claim(L->st, "$ev1", TTL_S, claim_fn,
                                           &a)), PARLEY_OK);
    assert_int_equal(a.calls, 0);
    assert_int_equal(CALL(state_seen_claim(L->st, "$ev1", TTL_S, claim_fn,
                                           &b)), PARLEY_OK);
    assert_true(live_wait_count(L, &b.calls, 1, 2000));
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, PARLEY_OK);
    assert_int_equal(a.fresh, 1);
    assert_int_equal(b.status, PARLEY_OK);
    assert_int_equal(b.fresh, 0);
    RAW(L, &ttl, "TTL %s", "ptest:seen:$ev1");
    assert_true(ttl.integer > TTL_S - 10 && ttl.integer <= TTL_S);

    assert_int_equal(CALL(state_greet_claim(L->st, "irc:net:#c", "alice",
                                            60, claim_fn, &g1)), PARLEY_OK);
    assert_int_equal(CALL(state_greet_claim(L->st, "irc:net:#c", "alice",
                                            60, claim_fn, &g2)), PARLEY_OK);
    assert_int_equal(CALL(state_greet_claim(L->st, "irc:net:#c", "bob",
                                            60, claim_fn, &g3)), PARLEY_OK);
    assert_true(live_wait_count(L, &g3.calls, 1, 2000));
    assert_int_equal(g1.fresh, 1);
    assert_int_equal(g2.fresh, 0);
    assert_int_equal(g3.fresh, 1);
    RAW(L, &ttl, "TTL %s", "ptest:greeted:irc:net:#c:alice");
    assert_true(ttl.integer > 50 && ttl.integer <= 60);

    /* Refused without a callback. */
    assert_int_equal(state_seen_claim(L->st, NULL, TTL_S, claim_fn, &a),
                     PARLEY_ERR_OTHER);
    assert_int_equal(state_seen_claim(L->st, "x", 0, claim_fn, &a),
                     PARLEY_ERR_OTHER);
    live_run_for(L, 20);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
}

/* ---- job records -------------------------------------------------------- */

static struct state_job sample_job(const char *id, const char *text)
{
    struct state_job j;

    memset(&j, 0, sizeof(j));
    j.event_id = id;
    j.kind = STATE_JOB_CHAT;
    j.platform = "matrix";
    j.account = "bot";
    j.room = "!room:hs";
    j.sender = "@alice:hs";
    j.sender_name = "Alice";
    j.text = text;
    j.thread_id = "$thread";
    j.reply_to = "$parent";
    j.is_admin = 1;
    j.ts = 1700000000;
    return j;
}

static void test_job_lifecycle(void **state)
{
    struct live *L = *state;
    struct state_job a = sample_job("$a", "one");
    struct state_job dup = sample_job("$a", "two");
    struct state_job greet, cmd;
    struct claim_cap ca = { 0 }, cd = { 0 }, cg = { 0 }, cc = { 0 };
    struct done_cap ans = { 0 }, done = { 0 }, gone = { 0 };
    struct scan_cap *sc = calloc(1, sizeof(*sc));
    const struct seen_job *s;
    struct cap c;

    assert_non_null(sc);
    live_start_up(L);
    memset(&greet, 0, sizeof(greet));
    greet.event_id = "$g";
    greet.kind = STATE_JOB_GREET;
    greet.platform = "matrix";
    greet.room = "!room:hs";
    cmd = sample_job("$c", "!help");
    cmd.kind = STATE_JOB_COMMAND;

    assert_int_equal(CALL(state_job_record(L->st, &a, TTL_S, claim_fn,
                                           &ca)), PARLEY_OK);
    assert_int_equal(CALL(state_job_record(L->st, &dup, TTL_S, claim_fn,
                                           &cd)), PARLEY_OK);
    assert_int_equal(CALL(state_job_record(L->st, &greet, TTL_S, claim_fn,
                                           &cg)), PARLEY_OK);
    assert_int_equal(CALL(state_job_record(L->st, &cmd, TTL_S, claim_fn,
                                           &cc)), PARLEY_OK);
    assert_true(live_wait_count(L, &cc.calls, 1, 2000));
    assert_int_equal(ca.status, PARLEY_OK);
    assert_int_equal(ca.fresh, 1);
    assert_int_equal(cd.status, PARLEY_OK);
    assert_int_equal(cd.fresh, 0);
    assert_int_equal(cg.fresh, 1);
    assert_int_equal(cc.fresh, 1);
    /* The duplicate wrote nothing: the first text stays. */
    RAW(L, &c, "HGET %s text", "ptest:job:$a");
    assert_string_equal(c.str, "one");
    RAW(L, &c, "TTL %s", "ptest:job:$a");
    assert_true(c.integer > TTL_S - 10 && c.integer <= TTL_S);
    RAW(L, &c, "EXISTS %s", "ptest:seen:$a");
    assert_int_equal(c.integer, 1);
    /* A seen: mark alone (a non-durable event) also blocks a record. */
    {
        struct claim_cap m = { 0 }, r = { 0 };
        struct state_job x = sample_job("$m", "m");

        assert_int_equal(state_seen_claim(L->st, "$m", TTL_S, claim_fn, &m),
                         PARLEY_OK);
        assert_int_equal(state_job_record(L->st, &x, TTL_S, claim_fn, &r),
                         PARLEY_OK);
        assert_true(live_wait_count(L, &r.calls, 1, 2000));
        assert_int_equal(r.fresh, 0);
        RAW(L, &c, "EXISTS %s", "ptest:job:$m");
        assert_int_equal(c.integer, 0);
    }

    assert_int_equal(CALL(state_job_answered(L->st, "$a", "the answer", 1,
                                             done_fn, &ans)), PARLEY_OK);
    assert_int_equal(CALL(state_job_done(L->st, "$c", 30, done_fn, &done)),
                     PARLEY_OK);
    /* No record: nothing is created (it would have no TTL). */
    assert_int_equal(CALL(state_job_answered(L->st, "$gone", "x", 0,
                                             done_fn, &gone)), PARLEY_OK);
    assert_int_equal(CALL(state_job_done(L->st, "$gone2", 30, NULL, NULL)),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &gone.calls, 1, 2000));
    assert_int_equal(ans.status, PARLEY_OK);
    assert_int_equal(done.status, PARLEY_OK);
    assert_int_equal(gone.status, PARLEY_OK);
    RAW(L, &c, "EXISTS %s", "ptest:job:$gone");
    assert_int_equal(c.integer, 0);
    RAW(L, &c, "EXISTS %s", "ptest:job:$gone2");
    assert_int_equal(c.integer, 0);
    RAW(L, &c, "TTL %s", "ptest:job:$c");
    assert_true(c.integer > 20 && c.integer <= 30);
    RAW(L, &c, "HGET %s state", "ptest:job:$c");
    assert_string_equal(c.str, "done");
    /* answered keeps the record's TTL. */
    RAW(L, &c, "TTL %s", "ptest:job:$a");
    assert_true(c.integer > TTL_S - 10);

    assert_int_equal(CALL(state_job_scan(L->st, each_fn, finished_fn, sc)),
                     PARLEY_OK);
    assert_int_equal(sc->each + sc->finished, 0);
    assert_true(live_wait_count(L, &sc->finished, 1, 3000));
    assert_int_equal(sc->status, PARLEY_OK);
    assert_int_equal(sc->each, 2);          /* $c is done */
    assert_int_equal(sc->each_after_finish, 0);
    assert_null(scan_find(sc, "$c"));
    s = scan_find(sc, "$a");
    assert_non_null(s);
    assert_int_equal(s->state, STATE_JOB_ANSWERED);
    assert_int_equal(s->kind, STATE_JOB_CHAT);
    assert_string_equal(s->answer, "the answer");
    assert_int_equal(s->notice, 1);
    assert_string_equal(s->text, "one");
    assert_string_equal(s->platform, "matrix");
    assert_string_equal(s->account, "bot");
    assert_string_equal(s->room, "!room:hs");
    assert_string_equal(s->sender, "@alice:hs");
    assert_string_equal(s->sender_name, "Alice");
    assert_string_equal(s->thread_id, "$thread");
    assert_string_equal(s->reply_to, "$parent");
    assert_int_equal(s->is_admin, 1);
    assert_true(s->ts == 1700000000);
    s = scan_find(sc, "$g");
    assert_non_null(s);
    assert_int_equal(s->state, STATE_JOB_PENDING);
    assert_int_equal(s->kind, STATE_JOB_GREET);
    assert_int_equal(s->has_text, 0);
    assert_int_equal(s->has_answer, 0);
    assert_int_equal(s->has_account, 0);
    assert_int_equal(s->is_admin, 0);
    assert_true(s->ts > 1700000000);        /* 0 became "now" */
    live_run_for(L, 30);
    assert_int_equal(sc->finished, 1);
    free(sc);
}

static void test_scan_incomplete_and_foreign(void **state)
{
    struct live *L = *state;
    struct scan_cap *sc = calloc(1, sizeof(*sc));
    const struct seen_job *s;
    struct cap c;

    assert_non_null(sc);
    live_start_up(L);
    RAW(L, &c, "HSET %s state pending room r text t", "ptest:job:noplat");
    RAW(L, &c, "HSET %s state pending platform p text t", "ptest:job:noroom");
    RAW(L, &c, "HSET %s state pending kind chat platform p room r",
        "ptest:job:notext");
    RAW(L, &c, "HSET %s platform p room r text t", "ptest:job:nostate");
    RAW(L, &c, "HSET %s state weird platform p room r text t",
        "ptest:job:weird");
    RAW(L, &c, "HSET %s state answered platform p room r text t",
        "ptest:job:noanswer");
    RAW(L, &c, "HSET %s state pending kind odd platform p room r text t "
        "is_admin yes ts soon", "ptest:job:oddkind");
    RAW(L, &c, "SET %s x", "ptest:job:string");
    RAW(L, &c, "HSET %s state pending platform p room r text t",
        "other:job:elsewhere");
    live_log_capture(L);
    assert_int_equal(CALL(state_job_scan(L->st, each_fn, finished_fn, sc)),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &sc->finished, 1, 3000));
    live_log_restore(L);
    assert_int_equal(sc->status, PARLEY_OK);
    assert_int_equal(sc->each, 3);
    assert_int_equal(live_log_count(L, "is incomplete, dropped"), 4);
    assert_int_equal(live_log_count(L, "not a job record"), 1);
    assert_int_equal(live_log_count(L, "unknown state"), 1);
    s = scan_find(sc, "weird");
    assert_non_null(s);
    assert_int_equal(s->state, STATE_JOB_PENDING);
    s = scan_find(sc, "noanswer");
    assert_non_null(s);
    assert_int_equal(s->state, STATE_JOB_PENDING);
    assert_int_equal(s->has_answer, 0);
    s = scan_find(sc, "oddkind");
    assert_non_null(s);
    assert_int_equal(s->kind, STATE_JOB_CHAT);
    assert_int_equal(s->is_admin, 0);
    assert_true(s->ts == 0);
    free(sc);
}

static void test_scan_paging(void **state)
{
    struct live *L = *state;
    enum { N = 250, N_DONE = 40 };
    struct scan_cap *sc = calloc(1, sizeof(*sc));
    struct claim_cap cc = { 0 };
    struct done_cap dc = { 0 };
    char ids[N + N_DONE][16];
    int count[N];

    assert_non_null(sc);
    live_start_up(L);
    for (int i = 0; i < N + N_DONE; i++) {
        struct state_job j;

        snprintf(ids[i], sizeof(ids[i]), "$p%d", i);
        j = sample_job(ids[i], "q");
        assert_int_equal(state_job_record(L->st, &j, TTL_S, claim_fn, &cc),
                         PARLEY_OK);
    }
    for (int i = N; i < N + N_DONE; i++)
        assert_int_equal(state_job_done(L->st, ids[i], TTL_S, done_fn, &dc),
                         PARLEY_OK);
    assert_true(live_wait_count(L, &dc.calls, N_DONE, 5000));
    assert_int_equal(cc.calls, N + N_DONE);

    assert_int_equal(CALL(state_job_scan(L->st, each_fn, finished_fn, sc)),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &sc->finished, 1, 5000));
    live_run_for(L, 50);
    assert_int_equal(sc->finished, 1);
    assert_int_equal(sc->status, PARLEY_OK);
    assert_int_equal(sc->each, N);
    assert_int_equal(sc->each_after_finish, 0);
    memset(count, 0, sizeof(count));
    for (int i = 0; i < sc->each; i++) {
        int k;

        assert_int_equal(sscanf(sc->jobs[i].id, "$p%d", &k), 1);
        assert_true(k >= 0 && k < N);
        count[k]++;
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(count[i], 1);

    /* Nothing to walk: finished alone, once, later. */
    {
        struct scan_cap *none = calloc(1, sizeof(*none));
        struct cap c;

        assert_non_null(none);
        RAW(L, &c, "FLUSHDB");
        assert_int_equal(CALL(state_job_scan(L->st, NULL, finished_fn,
                                             none)), PARLEY_OK);
        assert_int_equal(none->finished, 0);
        assert_true(live_wait_count(L, &none->finished, 1, 2000));
        assert_int_equal(none->status, PARLEY_OK);
        /* finished may be NULL too. */
        assert_int_equal(state_job_scan(L->st, each_fn, NULL, none),
                         PARLEY_OK);
        live_run_for(L, 50);
        assert_int_equal(none->each, 0);
        assert_int_equal(none->finished, 1);
        free(none);
    }
    free(sc);
}

/* ---- rooms and usage ---------------------------------------------------- */

static void load_room(struct live *L, const char *room, struct room_cap *rc)
{
    memset(rc, 0, sizeof(*rc));
    assert_int_equal(CALL(state_room_load(L->st, room, room_fn, rc)),
                     PARLEY_OK);
    assert_int_equal(rc->calls, 0);
    assert_true(live_wait_count(L, &rc->calls, 1, 2000));
}

static void test_room_settings(void **state)
{
    struct live *L = *state;
    const char *room = "irc:net:#chan";
    struct room_cap rc;
    struct done_cap d[6] = { { 0 } };
    struct done_cap bad = { 0 };

    live_start_up(L);
    load_room(L, room, &rc);
    assert_int_equal(rc.status, PARLEY_OK);
    assert_int_equal(rc.got, 1);
    assert_int_equal(rc.has_model, 0);
    assert_int_equal(rc.has_system, 0);
    assert_int_equal(rc.greeting, -1);
    assert_true(rc.epoch == 0);

    assert_int_equal(CALL(state_room_set(L->st, room, ROOM_FIELD_MODEL,
                                         "gpt-x", done_fn, &d[0])),
                     PARLEY_OK);
    assert_int_equal(CALL(state_room_set(L->st, room, ROOM_FIELD_SYSTEM,
                                         "Be brief.\r\n", done_fn, &d[1])),
                     PARLEY_OK);
    assert_int_equal(CALL(state_room_set(L->st, room, ROOM_FIELD_GREETING,
                                         "off", done_fn, &d[2])),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &d[2].calls, 1, 2000));
    assert_int_equal(d[0].status + d[1].status + d[2].status, PARLEY_OK);
    load_room(L, room, &rc);
    assert_string_equal(rc.model, "gpt-x");
    assert_string_equal(rc.system, "Be brief.\r\n");
    assert_int_equal(rc.greeting, 0);

    assert_int_equal(CALL(state_room_set(L->st, room, ROOM_FIELD_GREETING,
                                         "on", done_fn, &d[3])), PARLEY_OK);
    assert_int_equal(CALL(state_room_set(L->st, room, ROOM_FIELD_MODEL,
                                         NULL, done_fn, &d[4])), PARLEY_OK);
    assert_true(live_wait_count(L, &d[4].calls, 1, 2000));
    assert_int_equal(d[4].status, PARLEY_OK);
    load_room(L, room, &rc);
    assert_int_equal(rc.greeting, 1);
    assert_int_equal(rc.has_model, 0);
    assert_string_equal(rc.system, "Be brief.\r\n");
    /* Deleting what is not set is fine; fn may be NULL. */
    assert_int_equal(state_room_set(L->st, room, ROOM_FIELD_MODEL, NULL,
                                    NULL, NULL), PARLEY_OK);
    assert_int_equal(CALL(state_room_set(L->st, room, ROOM_FIELD_GREETING,
                                         NULL, done_fn, &d[5])), PARLEY_OK);
    assert_true(live_wait_count(L, &d[5].calls, 1, 2000));
    load_room(L, room, &rc);
    assert_int_equal(rc.greeting, -1);

    /* The epoch: bumped by each reset. */
    assert_int_equal(CALL(state_history_reset(L->st, room, done_fn, &d[0])),
                     PARLEY_OK);
    assert_int_equal(CALL(state_history_reset(L->st, room, done_fn, &d[1])),
                     PARLEY_OK);
    d[0].calls = d[1].calls = 0;
    assert_true(live_wait_count(L, &d[1].calls, 1, 2000));
    assert_int_equal(d[1].status, PARLEY_OK);
    load_room(L, room, &rc);
    assert_true(rc.epoch == 2);
    assert_string_equal(rc.system, "Be brief.\r\n");

    /* Refused without a callback. */
    assert_int_equal(state_room_set(L->st, room, ROOM_FIELD_GREETING,
                                    "maybe", done_fn, &bad),
                     PARLEY_ERR_OTHER);
    assert_int_equal(state_room_set(L->st, room, (enum room_field)7, "x",
                                    done_fn, &bad), PARLEY_ERR_OTHER);
    live_run_for(L, 20);
    assert_int_equal(bad.calls, 0);
}

static void test_usage(void **state)
{
    struct live *L = *state;
    time_t day = 1700000000;        /* 2023-11-14 UTC */
    struct usage_cap uc = { 0 }, other = { 0 };
    struct cap c;

    live_start_up(L);
    assert_int_equal(CALL(state_usage_load(L->st, "irc:net:alice", day,
                                           usage_fn, &uc)), PARLEY_OK);
    assert_true(live_wait_count(L, &uc.calls, 1, 2000));
    assert_int_equal(uc.status, PARLEY_OK);
    assert_int_equal(uc.got, 1);
    assert_true(uc.u.requests == 0 && uc.u.tokens == 0);

    assert_int_equal(state_usage_add(L->st, "irc:net:alice", day, 10, 5,
                                     100), PARLEY_OK);
    assert_int_equal(state_usage_add(L->st, "irc:net:alice", day + 60, -3,
                                     7, 100), PARLEY_OK);
    memset(&uc, 0, sizeof(uc));
    assert_int_equal(CALL(state_usage_load(L->st, "irc:net:alice", day,
                                           usage_fn, &uc)), PARLEY_OK);
    /* The next day and another user are separate. */
    assert_int_equal(CALL(state_usage_load(L->st, "irc:net:alice",
                                           day + 86400, usage_fn, &other)),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &other.calls, 1, 2000));
    assert_int_equal(uc.status, PARLEY_OK);
    assert_true(uc.u.requests == 2);
    assert_true(uc.u.tokens_in == 10);
    assert_true(uc.u.tokens_out == 12);
    assert_true(uc.u.tokens == 22);
    assert_true(other.u.requests == 0);
    RAW(L, &c, "TTL %s", "ptest:usage:2023-11-14:irc:net:alice");
    assert_true(c.integer > 90 && c.integer <= 100);
}

/* ---- history ------------------------------------------------------------ */

static void test_history_append_load_trim_ttl(void **state)
{
    struct live *L = *state;
    struct config_context cfg = { .max_turns = 4, .max_tokens = 0,
                                  .ttl_s = 100 };
    struct config_context cfg_long = { .max_turns = 4, .ttl_s = 100000 };
    struct turn first[] = {
        { "user", "alice", "h\xc3\xa9llo \"quoted\" \\", 1 },
        { "assistant", NULL, "hi alice", 2 },
        { "user", "bob", "line1\nline2", 3 },
    };
    struct turn second[] = {
        { "assistant", NULL, "hi bob", 4 },
        { "user", "alice", "\xf0\x9f\x99\x82", 5 },
        { "assistant", NULL, "smile", 6 },
    };
    struct done_cap d1 = { 0 }, d2 = { 0 };
    struct load_cap lc = { 0 };
    struct cap ttl, ex;

    live_start_up(L);
    assert_int_equal(CALL(state_history_append(L->st, "matrix:!room", first,
                                               3, &cfg, -1, done_fn, &d1)),
                     PARLEY_OK);
    assert_int_equal(CALL(state_history_append(L->st, "matrix:!room",
                                               second, 3, &cfg, 0, done_fn,
                                               &d2)), PARLEY_OK);
    assert_true(live_wait_count(L, &d2.calls, 1, 2000));
    assert_int_equal(d1.calls, 1);
    assert_int_equal(d1.status, PARLEY_OK);
    assert_int_equal(d2.status, PARLEY_OK);

    assert_int_equal(CALL(state_history_load(L->st, "matrix:!room", &cfg,
                                             load_fn, &lc)), PARLEY_OK);
    assert_int_equal(lc.calls, 0);
    assert_true(live_wait_count(L, &lc.calls, 1, 2000));
    assert_int_equal(lc.status, PARLEY_OK);
    assert_non_null(lc.h);
    /* LTRIM kept the newest four, oldest first. */
    assert_int_equal(lc.h->n, 4);
    assert_string_equal(lc.h->turns[0].content, "line1\nline2");
    assert_string_equal(lc.h->turns[0].name, "bob");
    assert_string_equal(lc.h->turns[1].content, "hi bob");
    assert_null(lc.h->turns[1].name);
    assert_string_equal(lc.h->turns[2].content, "\xf0\x9f\x99\x82");
    assert_string_equal(lc.h->turns[3].role, "assistant");
    assert_true(lc.h->turns[3].ts == 6);
    RAW(L, &ttl, "TTL %s", "ptest:ctx:matrix:!room");
    assert_true(ttl.integer > 90 && ttl.integer <= 100);

    /* A load refreshes the TTL (EXPIRE is pipelined after LRANGE). */
    RAW(L, &ex, "EXPIRE %s 5", "ptest:ctx:matrix:!room");
    lc.calls = 0;
    assert_int_equal(CALL(state_history_load(L->st, "matrix:!room",
                                             &cfg_long, load_fn, &lc)),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &lc.calls, 1, 2000));
    RAW(L, &ttl, "TTL %s", "ptest:ctx:matrix:!room");
    assert_true(ttl.integer > 99000);
    /* cfg NULL: no refresh. */
    RAW(L, &ex, "EXPIRE %s 5", "ptest:ctx:matrix:!room");
    lc.calls = 0;
    assert_int_equal(state_history_load(L->st, "matrix:!room", NULL,
                                        load_fn, &lc), PARLEY_OK);
    assert_true(live_wait_count(L, &lc.calls, 1, 2000));
    RAW(L, &ttl, "TTL %s", "ptest:ctx:matrix:!room");
    assert_true(ttl.integer <= 5);
    context_history_free(lc.h);
    lc.h = NULL;

    /* n == 0 and an invalid role are refused without a callback. */
    assert_int_equal(state_history_append(L->st, "r", first, 0, &cfg, -1,
                                          done_fn, &d1), PARLEY_ERR_OTHER);
    {
        struct turn bad[] = { { "user", NULL, "x", 0 },
                              { "system", NULL, "x", 0 } };

        assert_int_equal(state_history_append(L->st, "r", bad, 2, &cfg, -1,
                                              done_fn, &d1),
                         PARLEY_ERR_OTHER);
    }
    live_run_for(L, 20);
    assert_int_equal(d1.calls, 1);
    RAW(L, &ex, "EXISTS %s", "ptest:ctx:r");
    assert_int_equal(ex.integer, 0);
}

static void test_history_malformed_and_hostile(void **state)
{
    struct live *L = *state;
    struct config_context cfg = { .max_turns = 10, .ttl_s = 60 };
    const char *good = "{\"role\":\"user\",\"name\":\"x\",\"content\":\"ok\","
                       "\"ts\":1}";
    const char *asst = "{\"role\":\"assistant\",\"content\":\"b\"}";
    /* Spaces, CR/LF, a would-be command, control and non-UTF-8 bytes. */
    const char *room = "irc:net:#chan with space\r\nDEL *\x01\xff end";
    char big[CONTEXT_TURN_MAX + 64];
    char key[STORE_KEY_MAX];
    struct turn t = { "user", "n", "hi", 1 };
    struct load_cap lc = { 0 };
    struct done_cap d = { 0 }, r = { 0 };
    struct room_cap rc;
    struct cap c;

    live_start_up(L);
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big, "{\"role\":\"user\",\"content\":\"", 26);
    RAW(L, &c, "RPUSH %s %s %s %s %s %s %s", "ptest:ctx:bad", "garbage",
        good, "{\"role\":\"user\"}", "[1,2]", big, asst);
    assert_int_equal(c.integer, 6);
    live_log_capture(L);
    assert_int_equal(CALL(state_history_load(L->st, "bad", NULL, load_fn,
                                             &lc)), PARLEY_OK);
    assert_true(live_wait_count(L, &lc.calls, 1, 2000));
    live_log_restore(L);
    assert_int_equal(lc.status, PARLEY_OK);
    assert_int_equal(lc.h->n, 2);
    assert_string_equal(lc.h->turns[0].content, "ok");
    assert_string_equal(lc.h->turns[1].content, "b");
    assert_int_equal(live_log_count(L, "skipping stored turn"), 4);

    assert_int_equal(CALL(state_history_append(L->st, room, &t, 1, &cfg, 0,
                                               done_fn, &d)), PARLEY_OK);
    assert_true(live_wait_count(L, &d.calls, 1, 2000));
    assert_int_equal(d.status, PARLEY_OK);
    assert_int_equal(store_key(L->st, key, sizeof(key), "ctx:%s", room),
                     PARLEY_OK);
    RAW(L, &c, "EXISTS %b", key, strlen(key));
    assert_int_equal(c.integer, 1);
    RAW(L, &c, "EXISTS %s", "ptest:ctx:irc:net:#chan");
    assert_int_equal(c.integer, 0);
    lc.calls = 0;
    assert_int_equal(state_history_load(L->st, room, NULL, load_fn, &lc),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &lc.calls, 1, 2000));
    assert_int_equal(lc.h->n, 1);
    assert_string_equal(lc.h->turns[0].content, "hi");
    assert_int_equal(CALL(state_history_reset(L->st, room, done_fn, &r)),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &r.calls, 1, 2000));
    assert_int_equal(r.status, PARLEY_OK);
    RAW(L, &c, "EXISTS %b", key, strlen(key));
    assert_int_equal(c.integer, 0);
    load_room(L, room, &rc);
    assert_true(rc.epoch == 1);
    context_history_free(lc.h);
    lc.h = NULL;
}

static void test_history_epoch(void **state)
{
    struct live *L = *state;
    struct config_context cfg = { .max_turns = 10, .ttl_s = 60 };
    struct turn pair[] = { { "user", "alice", "question", 1 },
                           { "assistant", NULL, "answer", 2 } };
    struct turn late[] = { { "user", "bob", "old question", 3 },
                           { "assistant", NULL, "old answer", 4 } };
    struct done_cap d1 = { 0 }, rs = { 0 }, stale = { 0 }, fresh = { 0 },
                    any = { 0 };
    struct load_cap lc = { 0 };
    struct room_cap rc;
    struct cap c;

    live_start_up(L);
    /* No room hash yet: the epoch is 0. */
    assert_int_equal(CALL(state_history_append(L->st, "room", pair, 2, &cfg,
                                               0, done_fn, &d1)),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &d1.calls, 1, 2000));
    assert_int_equal(d1.status, PARLEY_OK);
    assert_int_equal(CALL(state_history_reset(L->st, "room", done_fn, &rs)),
                     PARLEY_OK);
    assert_int_equal(rs.calls, 0);
    assert_true(live_wait_count(L, &rs.calls, 1, 2000));
    assert_int_equal(rs.status, PARLEY_OK);
    RAW(L, &c, "EXISTS %s", "ptest:ctx:room");
    assert_int_equal(c.integer, 0);

    /* An answer that started before the reset: nothing is written. */
    assert_int_equal(CALL(state_history_append(L->st, "room", late, 2, &cfg,
                                               0, done_fn, &stale)),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &stale.calls, 1, 2000));
    assert_int_equal(stale.status, PARLEY_ERR_STATE);
    RAW(L, &c, "EXISTS %s", "ptest:ctx:room");
    assert_int_equal(c.integer, 0);
    /* Started after it: appended. */
    load_room(L, "room", &rc);
    assert_true(rc.epoch == 1);
    assert_int_equal(CALL(state_history_append(L->st, "room", pair, 2, &cfg,
                                               rc.epoch, done_fn, &fresh)),
                     PARLEY_OK);
    /* epoch < 0 appends whatever the epoch; fn may be NULL. */
    assert_int_equal(state_history_append(L->st, "room", late, 1, &cfg, -1,
                                          NULL, NULL), PARLEY_OK);
    assert_int_equal(CALL(state_history_append(L->st, "room", late + 1, 1,
                                               &cfg, -1, done_fn, &any)),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &any.calls, 1, 2000));
    assert_int_equal(fresh.status, PARLEY_OK);
    assert_int_equal(any.status, PARLEY_OK);
    assert_int_equal(state_history_load(L->st, "room", NULL, load_fn, &lc),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &lc.calls, 1, 2000));
    assert_int_equal(lc.h->n, 4);
    assert_string_equal(lc.h->turns[0].content, "question");
    assert_string_equal(lc.h->turns[1].content, "answer");
    assert_string_equal(lc.h->turns[2].content, "old question");
    assert_string_equal(lc.h->turns[3].content, "old answer");
    context_history_free(lc.h);
    lc.h = NULL;
}

/* ---- errors ------------------------------------------------------------- */

static void test_wrong_type(void **state)
{
    struct live *L = *state;
    struct config_context cfg = { .max_turns = 10, .ttl_s = 60 };
    struct turn t = { "user", NULL, "x", 1 };
    struct room_cap rc;
    struct done_cap set = { 0 }, app = { 0 }, rst = { 0 }, hl = { 0 },
                    ans = { 0 };
    struct load_cap lc = { 0 };
    struct usage_cap uc = { 0 };
    struct cap c;

    live_start_up(L);
    RAW(L, &c, "SET %s x", "ptest:room:bad");
    RAW(L, &c, "SET %s x", "ptest:ctx:bad2");
    RAW(L, &c, "SET %s x", "ptest:usage:2023-11-14:u");
    RAW(L, &c, "SET %s x", "ptest:job:str");
    live_log_capture(L);
    load_room(L, "bad", &rc);
    assert_int_equal(rc.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(rc.got, 0);
    assert_int_equal(CALL(state_room_set(L->st, "bad", ROOM_FIELD_MODEL, "m",
                                         done_fn, &set)), PARLEY_OK);
    /* The epoch check reads room:bad. */
    assert_int_equal(CALL(state_history_append(L->st, "bad", &t, 1, &cfg, 0,
                                               done_fn, &app)), PARLEY_OK);
    assert_int_equal(CALL(state_history_reset(L->st, "bad", done_fn, &rst)),
                     PARLEY_OK);
    assert_int_equal(CALL(state_history_append(L->st, "bad2", &t, 1, &cfg,
                                               -1, done_fn, &hl)),
                     PARLEY_OK);
    assert_int_equal(CALL(state_history_load(L->st, "bad2", NULL, load_fn,
                                             &lc)), PARLEY_OK);
    assert_int_equal(CALL(state_usage_load(L->st, "u", 1700000000, usage_fn,
                                           &uc)), PARLEY_OK);
    assert_int_equal(CALL(state_job_answered(L->st, "str", "a", 0, done_fn,
                                             &ans)), PARLEY_OK);
    assert_true(live_wait_count(L, &ans.calls, 1, 2000));
    live_log_restore(L);
    assert_int_equal(set.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(app.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(rst.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(hl.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(lc.status, PARLEY_ERR_PROTOCOL);
    assert_null(lc.h);
    assert_int_equal(uc.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(uc.got, 0);
    assert_int_equal(ans.status, PARLEY_ERR_PROTOCOL);
    assert_true(live_log_count(L, "WRONGTYPE") >= 8);
    live_run_for(L, 20);
    assert_int_equal(set.calls + app.calls + rst.calls + hl.calls +
                     lc.calls + uc.calls + ans.calls, 7);
    /* A fire-and-forget write to a wrong-type key does not crash. */
    assert_int_equal(state_usage_add(L->st, "u", 1700000000, 1, 1, 60),
                     PARLEY_OK);
    RAW(L, &c, "GET %s", "ptest:usage:2023-11-14:u");
    assert_string_equal(c.str, "x");
}

static void test_down(void **state)
{
    struct live *L = *state;
    struct config_context cfg = { .max_turns = 10, .ttl_s = 60 };
    struct turn t = { "user", NULL, "x", 1 };
    struct state_job j = sample_job("$d", "t");
    struct claim_cap cc = { 0 };
    struct done_cap dc = { 0 };
    struct room_cap rc = { 0 };
    struct usage_cap uc = { 0 };
    struct load_cap lc = { 0 };
    struct scan_cap *sc = calloc(1, sizeof(*sc));
    char room[STORE_KEY_MAX + 10];

    assert_non_null(sc);
    /* Nothing listens on L->port: the store stays down. */
    live_log_capture(L);
    live_open_store(L);
    live_run_for(L, 200);
    live_log_restore(L);
    assert_false(store_is_up(L->st));
    assert_int_equal(state_seen_claim(L->st, "e", 60, claim_fn, &cc),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_greet_claim(L->st, "r", "u", 60, claim_fn, &cc),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_job_record(L->st, &j, 60, claim_fn, &cc),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_job_answered(L->st, "e", "a", 0, done_fn, &dc),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_job_done(L->st, "e", 60, done_fn, &dc),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_job_scan(L->st, each_fn, finished_fn, sc),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_room_load(L->st, "r", room_fn, &rc),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_room_set(L->st, "r", ROOM_FIELD_MODEL, "m",
                                    done_fn, &dc), PARLEY_ERR_STATE);
    assert_int_equal(state_usage_load(L->st, "u", 0, usage_fn, &uc),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_usage_add(L->st, "u", 0, 1, 1, 60),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_history_load(L->st, "r", &cfg, load_fn, &lc),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_history_append(L->st, "r", &t, 1, &cfg, 0,
                                          done_fn, &dc), PARLEY_ERR_STATE);
    assert_int_equal(state_history_reset(L->st, "r", done_fn, &dc),
                     PARLEY_ERR_STATE);

    /* A key over STORE_KEY_MAX is refused before Redis is asked. */
    memset(room, 'r', sizeof(room) - 1);
    room[sizeof(room) - 1] = '\0';
    assert_int_equal(state_seen_claim(L->st, room, 60, claim_fn, &cc),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(state_room_load(L->st, room, room_fn, &rc),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(state_history_load(L->st, room, &cfg, load_fn, &lc),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(state_history_append(L->st, room, &t, 1, &cfg, 0,
                                          done_fn, &dc),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(state_history_reset(L->st, room, done_fn, &dc),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(state_usage_add(L->st, room, 0, 1, 1, 60),
                     PARLEY_ERR_TOO_LARGE);
    live_run_for(L, 50);
    assert_int_equal(cc.calls + dc.calls + rc.calls + uc.calls + lc.calls +
                     sc->each + sc->finished, 0);
    free(sc);
}

static void test_killed_mid_command(void **state)
{
    struct live *L = *state;
    struct config_context cfg = { .max_turns = 10, .ttl_s = 60 };
    struct turn t = { "user", NULL, "x", 1 };
    struct state_job j = sample_job("$k", "t");
    struct claim_cap cc[3] = { { 0 } };
    struct done_cap dc[5] = { { 0 } };
    struct room_cap rc = { 0 };
    struct usage_cap uc = { 0 };
    struct load_cap lc = { 0 };
    struct scan_cap *sc = calloc(1, sizeof(*sc));
    struct cap blocked = { 0 };

    assert_non_null(sc);
    live_start_up(L);
    live_log_capture(L);
    /* BLPOP holds the connection, so everything behind it is pending
     * when the server dies. */
    assert_int_equal(store_command(L->st, cap_fn, &blocked, "BLPOP %s 30",
                                   "nothing"), PARLEY_OK);
    assert_int_equal(state_seen_claim(L->st, "e", 60, claim_fn, &cc[0]),
                     PARLEY_OK);
    assert_int_equal(state_greet_claim(L->st, "r", "u", 60, claim_fn,
                                       &cc[1]), PARLEY_OK);
    assert_int_equal(state_job_record(L->st, &j, 60, claim_fn, &cc[2]),
                     PARLEY_OK);
    assert_int_equal(state_job_answered(L->st, "e", "a", 0, done_fn,
                                        &dc[0]), PARLEY_OK);
    assert_int_equal(state_job_done(L->st, "e", 60, done_fn, &dc[1]),
                     PARLEY_OK);
    assert_int_equal(state_room_set(L->st, "r", ROOM_FIELD_MODEL, "m",
                                    done_fn, &dc[2]), PARLEY_OK);
    assert_int_equal(state_history_append(L->st, "r", &t, 1, &cfg, 0,
                                          done_fn, &dc[3]), PARLEY_OK);
    assert_int_equal(state_history_reset(L->st, "r", done_fn, &dc[4]),
                     PARLEY_OK);
    assert_int_equal(state_room_load(L->st, "r", room_fn, &rc), PARLEY_OK);
    assert_int_equal(state_usage_load(L->st, "u", 0, usage_fn, &uc),
                     PARLEY_OK);
    assert_int_equal(state_usage_add(L->st, "u", 0, 1, 1, 60), PARLEY_OK);
    assert_int_equal(state_history_load(L->st, "r", &cfg, load_fn, &lc),
                     PARLEY_OK);
    assert_int_equal(state_job_scan(L->st, each_fn, finished_fn, sc),
                     PARLEY_OK);
    live_run_for(L, 50);
    assert_int_equal(blocked.calls, 0);
    live_kill_redis(L);
    assert_true(live_wait_count(L, &sc->finished, 1, 3000));
    live_run_for(L, 50);
    live_log_restore(L);
    assert_int_equal(blocked.calls, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cc[i].calls, 1);
        assert_int_equal(cc[i].status, PARLEY_ERR_IO);
        assert_int_equal(cc[i].fresh, 0);
    }
    for (int i = 0; i < 5; i++) {
        assert_int_equal(dc[i].calls, 1);
        assert_int_equal(dc[i].status, PARLEY_ERR_IO);
    }
    assert_int_equal(rc.calls, 1);
    assert_int_equal(rc.status, PARLEY_ERR_IO);
    assert_int_equal(rc.got, 0);
    assert_int_equal(uc.calls, 1);
    assert_int_equal(uc.status, PARLEY_ERR_IO);
    assert_int_equal(lc.calls, 1);
    assert_int_equal(lc.status, PARLEY_ERR_IO);
    assert_null(lc.h);
    assert_int_equal(sc->finished, 1);
    assert_int_equal(sc->status, PARLEY_ERR_IO);
    assert_int_equal(sc->each, 0);
    free(sc);
}

/* A walk cut off half-way (the store closed while HGETALLs are pending):
 * finished still runs once, after the last reply, with the error. */
static void test_scan_close_midway(void **state)
{
    struct live *L = *state;
    struct scan_cap *sc = calloc(1, sizeof(*sc));
    struct claim_cap cc = { 0 };

    assert_non_null(sc);
    live_start_up(L);
    for (int i = 0; i < 150; i++) {
        char id[16];
        struct state_job j;

        snprintf(id, sizeof(id), "$x%d", i);
        j = sample_job(id, "q");
        assert_int_equal(state_job_record(L->st, &j, TTL_S, claim_fn, &cc),
                         PARLEY_OK);
    }
    assert_true(live_wait_count(L, &cc.calls, 150, 5000));
    assert_int_equal(state_job_scan(L->st, each_fn, finished_fn, sc),
                     PARLEY_OK);
    /* Let the first records come in, then close. */
    assert_true(live_wait_count(L, &sc->each, 1, 3000));
    store_close(L->st);
    L->st = NULL;
    assert_int_equal(sc->finished, 1);
    assert_true(sc->status == PARLEY_ERR_IO || sc->status == PARLEY_OK);
    assert_true(sc->each <= 150);
    assert_int_equal(sc->each_after_finish, 0);
    free(sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_job_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_incomplete_and_foreign,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_paging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_room_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_append_load_trim_ttl,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_malformed_and_hostile,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_epoch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_killed_mid_command, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_scan_close_midway, setup,
                                        teardown),
    };

    spawn_require("/usr/bin/redis-server");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
