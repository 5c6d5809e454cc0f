/*
 * state_session.c (the Matrix session and sync position of the typed
 * state layer) against a real redis-server on a free loopback port,
 * driven by a real libuv loop: absent keys, save/load round trips with a
 * save replacing the whole session, delete, hostile account names, keys
 * of the wrong type, callbacks that never run before the call returns,
 * Redis down (PARLEY_ERR_STATE at once, no callback) and store_close with
 * calls in flight (each callback once, with PARLEY_ERR_IO).  Every test
 * starts its own server in setup and stops it in teardown.
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
#include "log.h"
#include "state.h"
#include "status.h"
#include "store.h"

/* What a session callback saw, copied (the struct lives only during it). */
struct sess_cap {
    int calls;
    int status;
    int null;
    char token[128];
    char device[128];
    char user[128];
};

struct sync_cap {
    int calls;
    int status;
    int null;
    char next[256];
};

struct done_cap {
    int calls;
    int status;
};

static void copy_opt(char *dst, size_t len, const char *src)
{
    snprintf(dst, len, "%s", src ? src : "(null)");
}

static void sess_fn(int status, const struct state_session *s, void *priv)
{
    struct sess_cap *c = priv;

    c->calls++;
    c->status = status;
    c->null = s == NULL;
    if (s) {
        copy_opt(c->token, sizeof(c->token), s->access_token);
        copy_opt(c->device, sizeof(c->device), s->device_id);
        copy_opt(c->user, sizeof(c->user), s->user_id);
    }
}

static void sync_fn(int status, const char *next_batch, void *priv)
{
    struct sync_cap *c = priv;

    c->calls++;
    c->status = status;
    c->null = next_batch == NULL;
    copy_opt(c->next, sizeof(c->next), next_batch);
}

static void done_fn(int status, void *priv)
{
    struct done_cap *c = priv;

    c->calls++;
    c->status = status;
}

static void raw_fn(struct store *st, struct redisReply *r, void *priv)
{
    int *calls = priv;

    (void)st;
    (void)r;
    (*calls)++;
}

static const struct live_opts live_opts = {
    .tmpl = "/tmp/parley-state-XXXXXX", .db = 3, .prefix = "pss:",
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

static void test_session_round_trip(void **state)
{
    struct live *L = *state;
    struct sess_cap a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 };
    struct done_cap sv = { 0 }, sv2 = { 0 }, del = { 0 };
    struct state_session s = { "tok-1", "DEV1", "@parley:example.org" };
    struct state_session s2 = { "tok-2", NULL, "@parley:example.org" };

    live_start_up(L);
    /* Nothing stored: s is NULL, status OK; never before the return. */
    assert_int_equal(state_session_load(L->st, "@parley:example.org",
                                        sess_fn, &a), PARLEY_OK);
    assert_int_equal(a.calls, 0);
    assert_true(live_wait_count(L, &a.calls, 1, 2000));
    assert_int_equal(a.status, PARLEY_OK);
    assert_true(a.null);

    assert_int_equal(state_session_save(L->st, "@parley:example.org", &s,
                                        done_fn, &sv), PARLEY_OK);
    assert_int_equal(sv.calls, 0);
    assert_int_equal(state_session_load(L->st, "@parley:example.org",
                                        sess_fn, &b), PARLEY_OK);
    assert_true(live_wait_count(L, &b.calls, 1, 2000));
    assert_int_equal(sv.calls, 1);
    assert_int_equal(sv.status, PARLEY_OK);
    assert_int_equal(b.status, PARLEY_OK);
    assert_false(b.null);
    assert_string_equal(b.token, "tok-1");
    assert_string_equal(b.device, "DEV1");
    assert_string_equal(b.user, "@parley:example.org");

    /* A save replaces the session: the old device does not survive. */
    assert_int_equal(state_session_save(L->st, "@parley:example.org", &s2,
                                        done_fn, &sv2), PARLEY_OK);
    assert_int_equal(state_session_load(L->st, "@parley:example.org",
                                        sess_fn, &c), PARLEY_OK);
    assert_true(live_wait_count(L, &c.calls, 1, 2000));
    assert_int_equal(sv2.status, PARLEY_OK);
    assert_string_equal(c.token, "tok-2");
    assert_string_equal(c.device, "(null)");

    assert_int_equal(state_session_delete(L->st, "@parley:example.org",
                                          done_fn, &del), PARLEY_OK);
    assert_int_equal(state_session_load(L->st, "@parley:example.org",
                                        sess_fn, &d), PARLEY_OK);
    assert_true(live_wait_count(L, &d.calls, 1, 2000));
    assert_int_equal(del.calls, 1);
    assert_int_equal(del.status, PARLEY_OK);
    assert_true(d.null);

    /* Fire and forget is allowed for writes. */
    assert_int_equal(state_session_save(L->st, "x", &s, NULL, NULL),
                     PARLEY_OK);
    assert_int_equal(state_session_delete(L->st, "x", NULL, NULL),
                     PARLEY_OK);
    assert_int_equal(state_session_load(L->st, "x", NULL, NULL),
                     PARLEY_ERR_OTHER);
}

static void test_sync_round_trip(void **state)
{
    struct live *L = *state;
    struct sync_cap a = { 0 }, b = { 0 };
    struct done_cap sv = { 0 };

    live_start_up(L);
    assert_int_equal(state_sync_load(L->st, "@p:s", sync_fn, &a), PARLEY_OK);
    assert_int_equal(a.calls, 0);
    assert_true(live_wait_count(L, &a.calls, 1, 2000));
    assert_int_equal(a.status, PARLEY_OK);
    assert_true(a.null);

    assert_int_equal(state_sync_save(L->st, "@p:s", "s72594_4483_1934",
                                     done_fn, &sv), PARLEY_OK);
    assert_int_equal(state_sync_load(L->st, "@p:s", sync_fn, &b), PARLEY_OK);
    assert_true(live_wait_count(L, &b.calls, 1, 2000));
    assert_int_equal(sv.status, PARLEY_OK);
    assert_int_equal(b.status, PARLEY_OK);
    assert_string_equal(b.next, "s72594_4483_1934");

    /* Nothing to save is the caller's mistake, refused at once. */
    assert_int_equal(state_sync_save(L->st, "@p:s", NULL, done_fn, &sv),
                     PARLEY_ERR_OTHER);
    assert_int_equal(state_sync_save(L->st, "@p:s", "", done_fn, &sv),
                     PARLEY_ERR_OTHER);
    assert_int_equal(sv.calls, 1);
}

/* Account names become part of a key: spaces, CR/LF and a would-be
 * command stay inside the one key (argv, not a formatted command). */
static void test_hostile_account(void **state)
{
    struct live *L = *state;
    const char *acct = "@p:s\r\nDEL *\x01 x";
    struct state_session s = { "t\r\nk", "d e v", NULL };
    struct sess_cap a = { 0 };
    struct sync_cap y = { 0 };
    struct done_cap d1 = { 0 }, d2 = { 0 };
    char big[STORE_KEY_MAX + 16];

    live_start_up(L);
    assert_int_equal(state_session_save(L->st, acct, &s, done_fn, &d1),
                     PARLEY_OK);
    assert_int_equal(state_sync_save(L->st, acct, "n b\r\n", done_fn, &d2),
                     PARLEY_OK);
    assert_int_equal(state_session_load(L->st, acct, sess_fn, &a),
                     PARLEY_OK);
    assert_int_equal(state_sync_load(L->st, acct, sync_fn, &y), PARLEY_OK);
    assert_true(live_wait_count(L, &y.calls, 1, 2000));
    assert_int_equal(a.calls, 1);
    assert_string_equal(a.token, "t\r\nk");
    assert_string_equal(a.device, "d e v");
    assert_string_equal(a.user, "(null)");
    assert_string_equal(y.next, "n b\r\n");

    /* A key over the cap: refused, no callback. */
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(state_sync_load(L->st, big, sync_fn, &y),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(state_session_load(L->st, big, sess_fn, &a),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(y.calls, 1);
    assert_int_equal(a.calls, 1);
}

static void test_wrong_type(void **state)
{
    struct live *L = *state;
    struct sess_cap a = { 0 };
    struct sync_cap y = { 0 };
    int raw = 0;

    live_start_up(L);
    assert_int_equal(store_command(L->st, raw_fn, &raw, "SET %s x",
                                   "pss:session:w"), PARLEY_OK);
    assert_int_equal(store_command(L->st, raw_fn, &raw, "HSET %s a b",
                                   "pss:sync:w"), PARLEY_OK);
    assert_int_equal(state_session_load(L->st, "w", sess_fn, &a), PARLEY_OK);
    assert_int_equal(state_sync_load(L->st, "w", sync_fn, &y), PARLEY_OK);
    assert_true(live_wait_count(L, &y.calls, 1, 2000));
    assert_int_equal(raw, 2);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, PARLEY_ERR_PROTOCOL);
    assert_true(a.null);
    assert_int_equal(y.status, PARLEY_ERR_PROTOCOL);
    assert_true(y.null);
}

/* Redis down: every call fails at once and no callback ever runs. */
static void test_redis_down(void **state)
{
    struct live *L = *state;
    struct state_session s = { "t", "d", "u" };
    struct sess_cap a = { 0 };
    struct sync_cap y = { 0 };
    struct done_cap d = { 0 };
    int never = 0;

    live_open_store(L);         /* nothing listens on L->port */
    assert_int_equal(state_session_load(L->st, "a", sess_fn, &a),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_session_save(L->st, "a", &s, done_fn, &d),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_session_delete(L->st, "a", done_fn, &d),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_sync_load(L->st, "a", sync_fn, &y),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_sync_save(L->st, "a", "nb", done_fn, &d),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_sync_load(NULL, "a", sync_fn, &y),
                     PARLEY_ERR_STATE);
    live_wait_count(L, &never, 1, 200);
    assert_int_equal(a.calls + y.calls + d.calls, 0);
}

/* store_close with calls in flight: each callback once, PARLEY_ERR_IO. */
static void test_close_in_flight(void **state)
{
    struct live *L = *state;
    struct sess_cap a = { 0 };
    struct sync_cap y = { 0 };
    struct done_cap d = { 0 };
    int never = 0;

    live_start_up(L);
    assert_int_equal(state_session_load(L->st, "a", sess_fn, &a), PARLEY_OK);
    assert_int_equal(state_sync_load(L->st, "a", sync_fn, &y), PARLEY_OK);
    assert_int_equal(state_sync_save(L->st, "a", "nb", done_fn, &d),
                     PARLEY_OK);
    store_close(L->st);
    L->st = NULL;
    live_wait_count(L, &never, 1, 200);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, PARLEY_ERR_IO);
    assert_true(a.null);
    assert_int_equal(y.calls, 1);
    assert_int_equal(y.status, PARLEY_ERR_IO);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, PARLEY_ERR_IO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_session_round_trip, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sync_round_trip, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hostile_account, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_wrong_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_in_flight, setup,
                                        teardown),
    };

    spawn_require("/usr/bin/redis-server");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
