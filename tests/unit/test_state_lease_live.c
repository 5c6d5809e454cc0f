/*
 * state_lease.c (leases and fencing, issue 13) against a real
 * redis-server on a free loopback port, driven by a real libuv loop:
 * acquire with SET NX PX gives one holder and a token one larger than
 * the last; renew and release only for the owner with the newest token;
 * an expired lease is taken over with a larger token; and the writes
 * that matter (job record, answered/done, Matrix sync position) are
 * refused by Redis once a newer holder's token exists, with nothing
 * written, while an account without a fence is written as before.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include "live_store.h"

#include "config.h"
#include "log.h"
#include "state.h"
#include "status.h"
#include "store.h"

struct done_cap {
    int calls;
    int status;
};

static void copy_opt(char *dst, size_t len, const char *src)
{
    snprintf(dst, len, "%s", src ? src : "(null)");
}

static void done_fn(int status, void *priv)
{
    struct done_cap *c = priv;

    c->calls++;
    c->status = status;
}

struct lease_cap {
    int calls;
    int status;
    int held;
    long long token;
    char holder[96];
    long long pttl;
};

static void lease_fn(int status, int held, long long token,
                     const char *holder, long long pttl, void *priv)
{
    struct lease_cap *c = priv;

    c->calls++;
    c->status = status;
    c->held = held;
    c->token = token;
    copy_opt(c->holder, sizeof(c->holder), holder);
    c->pttl = pttl;
}

struct claim_cap {
    int calls;
    int status;
    int fresh;
};

static void claim_fn(int status, int fresh, void *priv)
{
    struct claim_cap *c = priv;

    c->calls++;
    c->status = status;
    c->fresh = fresh;
}

static struct lease_cap acquire(struct live *L, const char *owner, int ttl)
{
    struct lease_cap c = { 0 };

    assert_int_equal(state_lease_acquire(L->st, "irc", "net", owner, ttl,
                                         lease_fn, &c), PARLEY_OK);
    assert_int_equal(c.calls, 0);
    assert_true(live_wait_count(L, &c.calls, 1, 3000));
    assert_int_equal(c.status, PARLEY_OK);
    return c;
}

static struct claim_cap renew(struct live *L, const char *owner,
                              long long token)
{
    struct claim_cap c = { 0 };

    assert_int_equal(state_lease_renew(L->st, "irc", "net", owner, token,
                                       5000, claim_fn, &c), PARLEY_OK);
    assert_true(live_wait_count(L, &c.calls, 1, 3000));
    return c;
}

/* GET key through the store, as a string ("" when absent). */
struct get_cap {
    int calls;
    char value[256];
};

static void get_fn(struct store *st, struct redisReply *r, void *priv)
{
    struct get_cap *c = priv;

    (void)st;
    c->calls++;
    snprintf(c->value, sizeof(c->value), "%s",
             r && r->type == REDIS_REPLY_STRING ? r->str : "");
}

static void get_key(struct live *L, const char *key, char *out, size_t len)
{
    struct get_cap c = { 0 };

    assert_int_equal(store_command(L->st, get_fn, &c, "GET %s", key),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &c.calls, 1, 3000));
    snprintf(out, len, "%s", c.value);
}

static void hget_key(struct live *L, const char *key, const char *field,
                     char *out, size_t len)
{
    struct get_cap c = { 0 };

    assert_int_equal(store_command(L->st, get_fn, &c, "HGET %s %s", key,
                                   field), PARLEY_OK);
    assert_true(live_wait_count(L, &c.calls, 1, 3000));
    snprintf(out, len, "%s", c.value);
}

static const struct live_opts live_opts = {
    .tmpl = "/tmp/parley-state-XXXXXX", .db = 3, .prefix = "lease:",
    .level = LOG_LEVEL_ERROR, .eager = 0,
};

static int setup(void **state)
{
    return live_setup(state, &live_opts);
}

static int teardown(void **state)
{
    return live_teardown(state);
}

static void test_acquire_renew_release(void **state)
{
    struct live *L = *state;
    struct lease_cap a, b, c;
    struct claim_cap r;
    struct done_cap rel = { 0 };
    char v[256];

    live_start_up(L);
    a = acquire(L, "inst-a", 5000);
    assert_int_equal(a.held, 1);
    assert_int_equal(a.token, 1);
    /* A second instance: refused, told who holds it and for how long. */
    b = acquire(L, "inst-b", 5000);
    assert_int_equal(b.held, 0);
    assert_string_equal(b.holder, "inst-a");
    assert_true(b.pttl > 0 && b.pttl <= 5000);
    /* Only the owner with the newest token renews. */
    r = renew(L, "inst-a", a.token);
    assert_int_equal(r.status, PARLEY_OK);
    assert_int_equal(r.fresh, 1);
    r = renew(L, "inst-b", a.token);
    assert_int_equal(r.fresh, 0);
    r = renew(L, "inst-a", a.token + 1);
    assert_int_equal(r.fresh, 0);
    /* Release by another: nothing; by the owner: gone. */
    assert_int_equal(state_lease_release(L->st, "irc", "net", "inst-b",
                                         done_fn, &rel), PARLEY_OK);
    assert_true(live_wait_count(L, &rel.calls, 1, 3000));
    get_key(L, "lease:lease:irc:net", v, sizeof(v));
    assert_string_equal(v, "inst-a");
    rel.calls = 0;
    assert_int_equal(state_lease_release(L->st, "irc", "net", "inst-a",
                                         done_fn, &rel), PARLEY_OK);
    assert_true(live_wait_count(L, &rel.calls, 1, 3000));
    get_key(L, "lease:lease:irc:net", v, sizeof(v));
    assert_string_equal(v, "");
    /* The next holder gets a larger token; the old one cannot renew. */
    c = acquire(L, "inst-b", 5000);
    assert_int_equal(c.held, 1);
    assert_int_equal(c.token, 2);
    r = renew(L, "inst-a", a.token);
    assert_int_equal(r.fresh, 0);
    get_key(L, "lease:fence:irc:net", v, sizeof(v));
    assert_string_equal(v, "2");
}

static void test_expiry_takeover(void **state)
{
    struct live *L = *state;
    struct lease_cap a, b;
    struct claim_cap r;
    int never = 0;

    live_start_up(L);
    a = acquire(L, "inst-a", 300);
    assert_int_equal(a.held, 1);
    /* Let it expire (the loop runs; nothing renews it). */
    live_wait_count(L, &never, 1, 600);
    b = acquire(L, "inst-b", 5000);
    assert_int_equal(b.held, 1);
    assert_true(b.token > a.token);
    r = renew(L, "inst-a", a.token);
    assert_int_equal(r.fresh, 0);
}

static void test_fenced_writes(void **state)
{
    struct live *L = *state;
    struct lease_cap a, b;
    struct claim_cap rec = { 0 }, rec2 = { 0 };
    struct done_cap ans = { 0 }, ans2 = { 0 }, sync = { 0 }, done = { 0 };
    struct state_job job = { 0 };
    char v[256];

    live_start_up(L);
    state_fence_clear();
    a = acquire(L, "irc", 5000);       /* owner name irrelevant here */
    (void)a;
    {
        struct lease_cap m = { 0 };

        assert_int_equal(state_lease_acquire(L->st, "matrix", "bot",
                                             "inst-a", 5000, lease_fn, &m),
                         PARLEY_OK);
        assert_true(live_wait_count(L, &m.calls, 1, 3000));
        assert_int_equal(m.held, 1);
        assert_int_equal(state_fence_set("matrix", "bot", m.token),
                         PARLEY_OK);
    }
    assert_int_equal(state_fence_set("irc", "net", a.token), PARLEY_OK);
    assert_int_equal(state_fence_get("irc", "net"), a.token);
    /* While this process's tokens are the newest, writes go through. */
    job.event_id = "e1";
    job.platform = "irc";
    job.account = "net";
    job.room = "#r";
    job.sender = "alice";
    job.text = "hi";
    assert_int_equal(state_job_record(L->st, &job, 600, claim_fn, &rec),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &rec.calls, 1, 3000));
    assert_int_equal(rec.status, PARLEY_OK);
    assert_int_equal(rec.fresh, 1);
    assert_int_equal(state_sync_save(L->st, "bot", "s1", done_fn, &sync),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &sync.calls, 1, 3000));
    assert_int_equal(sync.status, PARLEY_OK);

    /* Another instance takes both accounts over (leases expired). */
    assert_int_equal(store_command(L->st, NULL, NULL, "DEL %s %s",
                                   "lease:lease:irc:net",
                                   "lease:lease:matrix:bot"), PARLEY_OK);
    b = acquire(L, "inst-b", 5000);
    assert_int_equal(b.held, 1);
    {
        struct lease_cap m = { 0 };

        assert_int_equal(state_lease_acquire(L->st, "matrix", "bot",
                                             "inst-b", 5000, lease_fn, &m),
                         PARLEY_OK);
        assert_true(live_wait_count(L, &m.calls, 1, 3000));
        assert_int_equal(m.held, 1);
    }
    /* Stale token: every write is refused, nothing written. */
    assert_int_equal(state_job_answered(L->st, "e1", "stale", 0, done_fn,
                                        &ans), PARLEY_OK);
    assert_true(live_wait_count(L, &ans.calls, 1, 3000));
    assert_int_equal(ans.status, PARLEY_ERR_STATE);
    hget_key(L, "lease:job:e1", "state", v, sizeof(v));
    assert_string_equal(v, "pending");
    assert_int_equal(state_job_done(L->st, "e1", 60, done_fn, &done),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &done.calls, 1, 3000));
    assert_int_equal(done.status, PARLEY_ERR_STATE);
    job.event_id = "e2";
    assert_int_equal(state_job_record(L->st, &job, 600, claim_fn, &rec2),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &rec2.calls, 1, 3000));
    assert_int_equal(rec2.status, PARLEY_ERR_STATE);
    get_key(L, "lease:seen:e2", v, sizeof(v));
    assert_string_equal(v, "");
    sync.calls = 0;
    assert_int_equal(state_sync_save(L->st, "bot", "s2", done_fn, &sync),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &sync.calls, 1, 3000));
    assert_int_equal(sync.status, PARLEY_ERR_STATE);
    get_key(L, "lease:sync:bot", v, sizeof(v));
    assert_string_equal(v, "s1");

    /* With the new tokens (as the new holder), the writes pass; a job of
     * an account this process holds no fence for is written as before. */
    state_fence_clear();
    assert_int_equal(state_fence_set("irc", "net", b.token), PARLEY_OK);
    ans2.calls = 0;
    assert_int_equal(state_job_answered(L->st, "e1", "fresh", 0, done_fn,
                                        &ans2), PARLEY_OK);
    assert_true(live_wait_count(L, &ans2.calls, 1, 3000));
    assert_int_equal(ans2.status, PARLEY_OK);
    hget_key(L, "lease:job:e1", "answer", v, sizeof(v));
    assert_string_equal(v, "fresh");
    sync.calls = 0;
    assert_int_equal(state_sync_save(L->st, "bot", "s3", done_fn, &sync),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &sync.calls, 1, 3000));
    assert_int_equal(sync.status, PARLEY_OK);
    state_fence_clear();
    assert_int_equal(state_fence_get("irc", "net"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_acquire_renew_release, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_expiry_takeover, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fenced_writes, setup,
                                        teardown),
    };

    spawn_require("/usr/bin/redis-server");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
