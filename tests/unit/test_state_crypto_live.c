/*
 * The Matrix crypto store (state_crypto.c) against a real redis-server on
 * a free loopback port: an account pickled by matrix_crypto.c survives a
 * store round trip (same identity keys, nothing in the clear), Olm
 * sessions per device with the account in the same MULTI, inbound and
 * outbound Megolm sessions, rotation dropping the share list, the replay
 * marks, the per-account device lists, a key of the wrong type,
 * and Redis down (refused at once, no callback).
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
#include "matrix/matrix_crypto.h"
#include "state.h"
#include "status.h"
#include "store.h"

#define ACCT "@bot:hs"

static const uint8_t pkey[] = "a pickle key from the environment";

/* What the last callback saw, copied (its data lives only during it). */
struct cap {
    int calls;
    int status;
    int got;                    /* value/struct non-NULL */
    int fresh;
    size_t n;
    char value[8192];
    char names[8][64];
    char values[8][256];
    long long created_ms;
};

static void done_fn(int status, void *privdata)
{
    struct cap *c = privdata;

    c->calls++;
    c->status = status;
}

static void value_fn(int status, const char *value, void *privdata)
{
    struct cap *c = privdata;

    c->calls++;
    c->status = status;
    c->got = value != NULL;
    snprintf(c->value, sizeof(c->value), "%s", value ? value : "");
}

static void pairs_fn(int status, const struct state_pair *p, size_t n,
                     void *privdata)
{
    struct cap *c = privdata;

    c->calls++;
    c->status = status;
    c->n = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        snprintf(c->names[i], sizeof(c->names[i]), "%s", p[i].name);
        snprintf(c->values[i], sizeof(c->values[i]), "%s", p[i].value);
    }
}

static void list_fn(int status, const char *const *items, size_t n,
                    void *privdata)
{
    struct cap *c = privdata;

    c->calls++;
    c->status = status;
    c->n = n;
    for (size_t i = 0; i < n && i < 8; i++)
        snprintf(c->names[i], sizeof(c->names[i]), "%s", items[i]);
}

static void in_fn(int status, const struct state_megolm_in *s,
                  void *privdata)
{
    struct cap *c = privdata;

    c->calls++;
    c->status = status;
    c->got = s != NULL;
    if (s) {
        snprintf(c->value, sizeof(c->value), "%s", s->pickle);
        snprintf(c->names[0], sizeof(c->names[0]), "%s", s->sender_key);
        snprintf(c->names[1], sizeof(c->names[1]), "%s",
                 s->sender_ed25519 ? s->sender_ed25519 : "(null)");
    }
}

static void out_fn(int status, const struct state_megolm_out *s,
                   void *privdata)
{
    struct cap *c = privdata;

    c->calls++;
    c->status = status;
    c->got = s != NULL;
    if (s) {
        snprintf(c->value, sizeof(c->value), "%s", s->pickle);
        c->created_ms = s->created_ms;
    }
}

static void claim_fn(int status, int fresh, void *privdata)
{
    struct cap *c = privdata;

    c->calls++;
    c->status = status;
    c->fresh = fresh;
}

static void raw_fn(struct store *st, struct redisReply *r, void *privdata)
{
    struct cap *c = privdata;

    (void)st;
    c->calls++;
    c->status = r ? PARLEY_OK : PARLEY_ERR_IO;
    if (r && r->str)
        snprintf(c->value, sizeof(c->value), "%.*s", (int)r->len, r->str);
}

/* Wait until c->calls reaches 1 (it may start below, for a batch); 1 when
 * it is exactly 1. */
static int wait_calls(struct live *L, struct cap *c, int ms)
{
    return live_wait_count(L, &c->calls, 1, ms) && c->calls == 1;
}

/* Run a state call, then wait for its one callback. */
#define RUN(L, c, expr) do { \
        memset((c), 0, sizeof(*(c))); \
        assert_int_equal((expr), PARLEY_OK); \
        assert_int_equal((c)->calls, 0); \
        assert_true(wait_calls((L), (c), 3000)); \
    } while (0)

static const struct live_opts live_opts = {
    .tmpl = "/tmp/parley-crypto-XXXXXX", .db = 4, .prefix = "ctest:",
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

static void test_account(void **state)
{
    struct live *L = *state;
    struct matrix_account *a = NULL, *b = NULL;
    struct cap c;
    char *p = NULL;

    RUN(L, &c, state_crypto_account_load(L->st, ACCT, value_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    assert_false(c.got);

    assert_int_equal(matrix_account_new(&a), PARLEY_OK);
    assert_int_equal(matrix_account_pickle(a, pkey, sizeof(pkey), &p),
                     PARLEY_OK);
    RUN(L, &c, state_crypto_account_save(L->st, ACCT, p, done_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    free(p);
    RUN(L, &c, state_crypto_account_load(L->st, ACCT, value_fn, &c));
    assert_true(c.got);
    /* What Redis holds says nothing about the keys. */
    assert_null(strstr(c.value, matrix_account_curve25519(a)));
    assert_null(strstr(c.value, matrix_account_ed25519(a)));
    assert_int_equal(matrix_account_unpickle(pkey, sizeof(pkey), c.value,
                                             &b), PARLEY_OK);
    assert_string_equal(matrix_account_ed25519(a), matrix_account_ed25519(b));
    matrix_account_free(a);
    matrix_account_free(b);
    RUN(L, &c, store_command(L->st, raw_fn, &c, "GET ctest:crypto:%s:account",
                             ACCT));
    assert_true(strlen(c.value) > 100);
}

static void test_olm_sessions(void **state)
{
    struct live *L = *state;
    struct cap c;

    RUN(L, &c, state_crypto_olm_load(L->st, ACCT, "CURVE", pairs_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    assert_int_equal(c.n, 0);
    RUN(L, &c, state_crypto_olm_save(L->st, ACCT, "CURVE", "sid1", "p1",
                                     NULL, done_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    /* With the account: one MULTI writes both. */
    RUN(L, &c, state_crypto_olm_save(L->st, ACCT, "CURVE", "sid2", "p2",
                                     "acct-pickle", done_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    RUN(L, &c, state_crypto_olm_load(L->st, ACCT, "CURVE", pairs_fn, &c));
    assert_int_equal(c.n, 2);
    assert_true((!strcmp(c.names[0], "sid1") && !strcmp(c.values[0], "p1"))
                || (!strcmp(c.names[1], "sid1") &&
                    !strcmp(c.values[1], "p1")));
    RUN(L, &c, state_crypto_account_load(L->st, ACCT, value_fn, &c));
    assert_string_equal(c.value, "acct-pickle");
    /* Fire and forget is allowed. */
    assert_int_equal(state_crypto_olm_save(L->st, ACCT, "CURVE", "sid3", "p3",
                                           NULL, NULL, NULL), PARLEY_OK);
    assert_int_equal(state_crypto_olm_save(L->st, ACCT, "CURVE", NULL, "p",
                                           NULL, NULL, NULL),
                     PARLEY_ERR_OTHER);
}

static void test_megolm(void **state)
{
    struct live *L = *state;
    struct state_megolm_in in = { "in-pickle", "SENDERCURVE", "SENDERED" };
    struct state_megolm_out out = { "out-pickle", 1700000000123LL };
    const char *holders[] = { "@a:hs DEVA", "@b:hs DEVB" };
    struct cap c;

    RUN(L, &c, state_crypto_megolm_in_load(L->st, ACCT, "!r:hs", "S1", in_fn,
                                           &c));
    assert_int_equal(c.status, PARLEY_OK);
    assert_false(c.got);
    RUN(L, &c, state_crypto_megolm_in_save(L->st, ACCT, "!r:hs", "S1", &in,
                                           done_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    RUN(L, &c, state_crypto_megolm_in_load(L->st, ACCT, "!r:hs", "S1", in_fn,
                                           &c));
    assert_true(c.got);
    assert_string_equal(c.value, "in-pickle");
    assert_string_equal(c.names[0], "SENDERCURVE");
    assert_string_equal(c.names[1], "SENDERED");
    /* Same session id in another room: a different key. */
    RUN(L, &c, state_crypto_megolm_in_load(L->st, ACCT, "!other:hs", "S1",
                                           in_fn, &c));
    assert_false(c.got);

    RUN(L, &c, state_crypto_megolm_out_load(L->st, ACCT, "!r:hs", out_fn,
                                            &c));
    assert_false(c.got);
    RUN(L, &c, state_crypto_megolm_out_save(L->st, ACCT, "!r:hs", &out,
                                            done_fn, &c));
    RUN(L, &c, state_crypto_megolm_shared_add(L->st, ACCT, "!r:hs", holders,
                                              2, done_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    RUN(L, &c, state_crypto_megolm_out_load(L->st, ACCT, "!r:hs", out_fn,
                                            &c));
    assert_true(c.got);
    assert_string_equal(c.value, "out-pickle");
    assert_true(c.created_ms == 1700000000123LL);
    RUN(L, &c, state_crypto_megolm_shared_load(L->st, ACCT, "!r:hs", list_fn,
                                               &c));
    assert_int_equal(c.n, 2);
    RUN(L, &c, state_crypto_megolm_out_discard(L->st, ACCT, "!r:hs",
                                               done_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    RUN(L, &c, state_crypto_megolm_out_load(L->st, ACCT, "!r:hs", out_fn,
                                            &c));
    assert_false(c.got);
    RUN(L, &c, state_crypto_megolm_shared_load(L->st, ACCT, "!r:hs", list_fn,
                                               &c));
    assert_int_equal(c.n, 0);
    assert_int_equal(state_crypto_megolm_shared_add(L->st, ACCT, "!r:hs",
                                                    holders, 0, NULL, NULL),
                     PARLEY_ERR_OTHER);

    /* Replay marks: first use, redelivery of the same event, replay. */
    RUN(L, &c, state_crypto_megolm_index_claim(L->st, ACCT, "S1", 7, "$e1",
                                               claim_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    assert_int_equal(c.fresh, 1);
    RUN(L, &c, state_crypto_megolm_index_claim(L->st, ACCT, "S1", 7, "$e1",
                                               claim_fn, &c));
    assert_int_equal(c.fresh, 1);
    RUN(L, &c, state_crypto_megolm_index_claim(L->st, ACCT, "S1", 7, "$e2",
                                               claim_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    assert_int_equal(c.fresh, 0);
    RUN(L, &c, state_crypto_megolm_index_claim(L->st, ACCT, "S1", 8, "$e2",
                                               claim_fn, &c));
    assert_int_equal(c.fresh, 1);
}

/* values with holes: "<nil>" where the reply had none. */
static void values_fn(int status, const char *const *items, size_t n,
                      void *privdata)
{
    struct cap *c = privdata;

    c->calls++;
    c->status = status;
    c->n = n;
    for (size_t i = 0; i < n && i < 8; i++)
        snprintf(c->values[i], sizeof(c->values[i]), "%s",
                 items[i] ? items[i] : "<nil>");
}

/* Undecryptable events: the first record stays, one load lists them,
 * a delete forgets one. */
static void test_utd(void **state)
{
    struct live *L = *state;
    struct cap c;

    RUN(L, &c, state_crypto_utd_load(L->st, ACCT, pairs_fn, &c));
    assert_int_equal(c.n, 0);
    RUN(L, &c, state_crypto_utd_add(L->st, ACCT, "$e1", "{\"t\":1}",
                                    claim_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    assert_int_equal(c.fresh, 1);
    RUN(L, &c, state_crypto_utd_add(L->st, ACCT, "$e1", "{\"t\":2}",
                                    claim_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    assert_int_equal(c.fresh, 0);
    RUN(L, &c, state_crypto_utd_add(L->st, ACCT, "$e2", "{\"t\":3}",
                                    claim_fn, &c));
    assert_int_equal(c.fresh, 1);
    RUN(L, &c, state_crypto_utd_load(L->st, ACCT, pairs_fn, &c));
    assert_int_equal(c.n, 2);
    for (size_t i = 0; i < 2; i++)
        if (!strcmp(c.names[i], "$e1"))
            assert_string_equal(c.values[i], "{\"t\":1}");
    RUN(L, &c, state_crypto_utd_del(L->st, ACCT, "$e1", done_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    RUN(L, &c, state_crypto_utd_load(L->st, ACCT, pairs_fn, &c));
    assert_int_equal(c.n, 1);
    assert_string_equal(c.names[0], "$e2");
}

/* The cap: past STATE_UTD_MAX records nothing more is kept. */
static void test_utd_cap(void **state)
{
    struct live *L = *state;
    char id[32];
    struct cap c;

    for (int i = 0; i < STATE_UTD_MAX; i++) {
        snprintf(id, sizeof(id), "$e%d", i);
        assert_int_equal(state_crypto_utd_add(L->st, ACCT, id, "{}",
                                              claim_fn, &c), PARLEY_OK);
    }
    memset(&c, 0, sizeof(c));
    c.calls = 1 - STATE_UTD_MAX;        /* wait for all of them */
    assert_true(wait_calls(L, &c, 10000));
    RUN(L, &c, state_crypto_utd_add(L->st, ACCT, "$one-more", "{}",
                                    claim_fn, &c));
    assert_int_equal(c.status, PARLEY_ERR_TOO_LARGE);
    /* One already kept is still found (not an error). */
    RUN(L, &c, state_crypto_utd_add(L->st, ACCT, "$e7", "{}", claim_fn,
                                    &c));
    assert_int_equal(c.status, PARLEY_OK);
    assert_int_equal(c.fresh, 0);
}

/* Device lists: missing users are holes; stale forgets some or all. */
static void test_devlists(void **state)
{
    struct live *L = *state;
    const char *users[] = { "@a:hs", "@b:hs", "@c:hs" };
    struct cap c;

    RUN(L, &c, state_crypto_devlists_save(L->st, ACCT, "@a:hs", "{\"A\":1}",
                                          done_fn, &c));
    RUN(L, &c, state_crypto_devlists_save(L->st, ACCT, "@c:hs", "{\"C\":1}",
                                          done_fn, &c));
    RUN(L, &c, state_crypto_devlists_load(L->st, ACCT, users, 3, values_fn,
                                          &c));
    assert_int_equal(c.status, PARLEY_OK);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.values[0], "{\"A\":1}");
    assert_string_equal(c.values[1], "<nil>");
    assert_string_equal(c.values[2], "{\"C\":1}");
    RUN(L, &c, state_crypto_devlists_stale(L->st, ACCT, users, 1, done_fn,
                                           &c));
    RUN(L, &c, state_crypto_devlists_load(L->st, ACCT, users, 3, values_fn,
                                          &c));
    assert_string_equal(c.values[0], "<nil>");
    assert_string_equal(c.values[2], "{\"C\":1}");
    RUN(L, &c, state_crypto_devlists_stale(L->st, ACCT, NULL, 0, done_fn,
                                           &c));
    RUN(L, &c, state_crypto_devlists_load(L->st, ACCT, users, 3, values_fn,
                                          &c));
    assert_string_equal(c.values[2], "<nil>");
}

/* The Olm session to send with: none, then the one save_out named; a
 * wedged device has none again (its sessions stay, to read its
 * messages). */
static void test_olm_out(void **state)
{
    struct live *L = *state;
    const char *curves[] = { "CURVE1", "CURVE2" };
    struct cap c;

    RUN(L, &c, state_crypto_olm_out_load(L->st, ACCT, curves, 2, values_fn,
                                         &c));
    assert_int_equal(c.n, 2);
    assert_string_equal(c.values[0], "<nil>");
    RUN(L, &c, state_crypto_olm_save(L->st, ACCT, "CURVE1", "old", "p-old",
                                     NULL, done_fn, &c));
    RUN(L, &c, state_crypto_olm_save_out(L->st, ACCT, "CURVE1", "sid", "p1",
                                         done_fn, &c));
    assert_int_equal(c.status, PARLEY_OK);
    RUN(L, &c, state_crypto_olm_out_load(L->st, ACCT, curves, 2, values_fn,
                                         &c));
    assert_string_equal(c.values[0], "p1");
    assert_string_equal(c.values[1], "<nil>");
    /* The ratchet moved: the same session saved again stays _out. */
    RUN(L, &c, state_crypto_olm_save(L->st, ACCT, "CURVE1", "sid", "p2",
                                     NULL, done_fn, &c));
    RUN(L, &c, state_crypto_olm_out_load(L->st, ACCT, curves, 1, values_fn,
                                         &c));
    assert_string_equal(c.values[0], "p2");
    assert_int_equal(state_crypto_olm_wedged(L->st, ACCT, "CURVE1"),
                     PARLEY_OK);
    RUN(L, &c, state_crypto_olm_out_load(L->st, ACCT, curves, 1, values_fn,
                                         &c));
    assert_string_equal(c.values[0], "<nil>");
    RUN(L, &c, state_crypto_olm_load(L->st, ACCT, "CURVE1", pairs_fn, &c));
    assert_int_equal(c.n, 2);           /* old and sid: _out is gone */
}

static void test_wrong_type_and_down(void **state)
{
    struct live *L = *state;
    struct cap c;

    RUN(L, &c, store_command(L->st, raw_fn, &c,
                             "SET ctest:crypto:%s:olm:BAD x", ACCT));
    RUN(L, &c, state_crypto_olm_load(L->st, ACCT, "BAD", pairs_fn, &c));
    assert_int_equal(c.status, PARLEY_ERR_PROTOCOL);
    RUN(L, &c, state_crypto_olm_save(L->st, ACCT, "BAD", "s", "p", "a",
                                     done_fn, &c));
    assert_int_equal(c.status, PARLEY_ERR_PROTOCOL);
    /* (MULTI does not roll back: the SET of the account went through.) */
    RUN(L, &c, state_crypto_account_load(L->st, ACCT, value_fn, &c));
    assert_string_equal(c.value, "a");
    RUN(L, &c, store_command(L->st, raw_fn, &c,
                             "DEL ctest:crypto:%s:account", ACCT));
    RUN(L, &c, store_command(L->st, raw_fn, &c,
                             "HSET ctest:crypto:%s:account f v", ACCT));
    RUN(L, &c, state_crypto_account_load(L->st, ACCT, value_fn, &c));
    assert_int_equal(c.status, PARLEY_ERR_PROTOCOL);

    spawn_stop(L->redis);
    L->redis = -1;
    {
        uint64_t end = uv_now(&L->loop) + 2000;

        uv_timer_start(&L->tick, live_tick_fn, 5, 5);
        while (store_is_up(L->st) && uv_now(&L->loop) < end)
            uv_run(&L->loop, UV_RUN_ONCE);
        uv_timer_stop(&L->tick);
    }
    memset(&c, 0, sizeof(c));
    assert_int_equal(state_crypto_account_load(L->st, ACCT, value_fn, &c),
                     PARLEY_ERR_STATE);
    assert_int_equal(state_crypto_megolm_out_discard(L->st, ACCT, "!r",
                                                     done_fn, &c),
                     PARLEY_ERR_STATE);
    assert_int_equal(c.calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_account, setup, teardown),
        cmocka_unit_test_setup_teardown(test_olm_sessions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_megolm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_utd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_utd_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_devlists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_olm_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_type_and_down, setup,
                                        teardown),
    };

    log_set_level(LOG_LEVEL_ERROR);
    spawn_require("/usr/bin/redis-server");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
