/*
 * lease.c (one lease's state machine, issue 13) with a real redis-server
 * and a real loop: of two leases on one account exactly one is held and
 * may send, the other stands by; a release hands the account over at once
 * with a larger token; when Redis goes away the holder declares the lease
 * lost, and stops allowing sends, before Redis could have let anyone else
 * take it; freeing a lease with a request in flight is safe.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "live_store.h"

#include "config.h"
#include "lease.h"
#include "log.h"
#include "loop.h"
#include "state.h"
#include "status.h"
#include "store.h"

/* Short for the loss case; the holding case uses a longer TTL so that a
 * loaded machine (sanitizers, shared cores) cannot stall a renewal past
 * the margin. */
#define TTL_MS 600
#define TTL_HOLD_MS 3000

/* Not live_store.h's struct live: lease.c runs on a struct loop, so this
 * fixture drives that loop instead of a tick timer; only the scratch
 * directory helpers are shared. */
struct lease_live {
    uv_loop_t uv;
    struct loop *loop;
    char dir[64];
    int port;
    pid_t redis;
    struct store *st;
};

struct seen {
    int changes;
    enum lease_state last;
    uint64_t lost_at;           /* lease_clock_ms() when lost */
};

static void on_change(struct lease *l, enum lease_state s, void *priv)
{
    struct seen *w = priv;

    (void)l;
    w->changes++;
    w->last = s;
    if (s == LEASE_LOST)
        w->lost_at = lease_clock_ms();
}

static void run_for(struct lease_live *L, int ms)
{
    uint64_t end = lease_clock_ms() + (uint64_t)ms;

    while (lease_clock_ms() < end) {
        uv_run(&L->uv, UV_RUN_NOWAIT);
        usleep(2000);
    }
}

/* Run the loop until *state == want or ms passed; 1 when reached. */
static int wait_state(struct lease_live *L, const struct lease *l,
                      enum lease_state want, int ms)
{
    uint64_t end = lease_clock_ms() + (uint64_t)ms;

    while (lease_get_state(l) != want && lease_clock_ms() < end) {
        uv_run(&L->uv, UV_RUN_NOWAIT);
        usleep(2000);
    }
    return lease_get_state(l) == want;
}

static int setup(void **state)
{
    struct lease_live *L = calloc(1, sizeof(*L));
    struct config_redis cfg = { .host = "127.0.0.1", .db = 4,
                                .prefix = "tl:" };

    if (!L)
        return -1;
    if (live_dir_make(L->dir, sizeof(L->dir), "/tmp/parley-lease-XXXXXX") ||
        uv_loop_init(&L->uv) != 0 ||
        loop_create(&L->loop, &L->uv) != PARLEY_OK) {
        free(L);
        return -1;
    }
    L->port = spawn_free_port();
    L->redis = spawn_redis(L->port, L->dir);
    cfg.port = L->port;
    log_set_level(LOG_LEVEL_ERROR);
    if (L->redis <= 0 || store_open(&L->st, &L->uv, &cfg, NULL))
        return -1;
    *state = L;
    for (int i = 0; i < 300 && !store_is_up(L->st); i++) {
        uv_run(&L->uv, UV_RUN_NOWAIT);
        usleep(10000);
    }
    return store_is_up(L->st) ? 0 : -1;
}

static int teardown(void **state)
{
    struct lease_live *L = *state;

    state_fence_clear();
    store_close(L->st);
    loop_close(L->loop);
    loop_run(L->loop);
    loop_free(L->loop);
    uv_run(&L->uv, UV_RUN_NOWAIT);
    uv_loop_close(&L->uv);
    spawn_stop(L->redis);
    live_dir_remove(L->dir);
    free(L);
    return 0;
}

static void test_one_holder_then_handover(void **state)
{
    struct lease_live *L = *state;
    struct lease *a = NULL, *b = NULL;
    struct seen wa = { 0 }, wb = { 0 };
    long long first;

    assert_int_equal(lease_create(&a, L->loop, L->st, "irc", "net",
                                  "inst-a", TTL_HOLD_MS, on_change, &wa),
                     PARLEY_OK);
    assert_int_equal(lease_create(&b, L->loop, L->st, "irc", "net",
                                  "inst-b", TTL_HOLD_MS, on_change, &wb),
                     PARLEY_OK);
    assert_int_equal(lease_may_send(NULL), 1);
    lease_start(a);
    assert_int_equal(lease_may_send(a), 0);     /* not yet acquired */
    assert_true(wait_state(L, a, LEASE_HELD, 3000));
    lease_start(b);
    assert_true(wait_state(L, b, LEASE_STANDBY, 3000));
    /* Several TTLs: a keeps renewing, b keeps standing by. */
    run_for(L, 2 * TTL_HOLD_MS);
    assert_int_equal(lease_get_state(a), LEASE_HELD);
    assert_int_equal(lease_get_state(b), LEASE_STANDBY);
    assert_int_equal(lease_may_send(a), 1);
    assert_int_equal(lease_may_send(b), 0);
    first = lease_token(a);
    assert_true(first > 0);
    /* a gives up (shutdown): b takes over, with a larger token. */
    lease_release(a, NULL, NULL);
    assert_int_equal(lease_may_send(a), 0);
    assert_true(wait_state(L, b, LEASE_HELD, 10000));
    assert_true(lease_token(b) > first);
    assert_int_equal(state_fence_get("irc", "net"), lease_token(b));
    lease_free(a);
    lease_free(b);
}

static void test_redis_gone_means_lost(void **state)
{
    struct lease_live *L = *state;
    struct lease *a = NULL;
    struct seen wa = { 0 };
    uint64_t last_ok = 0;

    assert_int_equal(lease_create(&a, L->loop, L->st, "matrix", "bot",
                                  "inst-a", TTL_MS, on_change, &wa),
                     PARLEY_OK);
    lease_start(a);
    assert_true(wait_state(L, a, LEASE_HELD, 3000));
    spawn_stop(L->redis);
    L->redis = -1;
    /* Sends stop, and the lease is declared lost, before a TTL has run
     * since the last renewal could have reached Redis. */
    while (lease_get_state(a) == LEASE_HELD &&
           lease_clock_ms() < (last_ok ? last_ok : lease_clock_ms()) + 5000) {
        if (lease_may_send(a))
            last_ok = lease_clock_ms();
        uv_run(&L->uv, UV_RUN_NOWAIT);
        usleep(2000);
    }
    assert_int_equal(lease_get_state(a), LEASE_LOST);
    assert_int_equal(wa.last, LEASE_LOST);
    assert_int_equal(lease_may_send(a), 0);
    assert_true(last_ok > 0);
    assert_true(wa.lost_at >= last_ok);
    /* Lost is final: Redis back or not, it stays lost. */
    run_for(L, TTL_MS);
    assert_int_equal(lease_get_state(a), LEASE_LOST);
    lease_free(a);
}

static void test_free_in_flight(void **state)
{
    struct lease_live *L = *state;
    struct lease *a = NULL;
    struct seen wa = { 0 };

    assert_int_equal(lease_create(&a, L->loop, L->st, "irc", "other",
                                  "inst-a", TTL_MS, on_change, &wa),
                     PARLEY_OK);
    lease_start(a);             /* acquire in flight */
    lease_free(a);
    run_for(L, 200);            /* the reply finds the call detached */
    assert_int_equal(wa.changes, 1);    /* acquiring, nothing after */
    assert_int_equal(lease_create(&a, L->loop, L->st, "irc", "x", "o", 100,
                                  NULL, NULL), PARLEY_ERR_OTHER);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_holder_then_handover,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_gone_means_lost, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_free_in_flight, setup,
                                        teardown),
    };

    spawn_require("/usr/bin/redis-server");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
