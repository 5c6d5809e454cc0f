/*
 * backoff.c is pure arithmetic, so every property is checked with fixed
 * random bits: the ceiling doubles from base to the cap, each jitter
 * window holds its delays (0 and UINT64_MAX reach its two ends), huge
 * attempt counts and huge caps neither loop nor overflow, and a floor
 * lifts the delay without lowering it.
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backoff.h"
#include "random.h"

static const struct backoff_policy full = { 500, 30000, BACKOFF_JITTER_FULL };
static const struct backoff_policy upper = { 200, 5000,
                                             BACKOFF_JITTER_UPPER };

static void ceiling_doubles_to_cap(void **state)
{
    (void)state;
    assert_int_equal(backoff_ceiling_ms(&full, 0), 500);
    assert_int_equal(backoff_ceiling_ms(&full, 1), 1000);
    assert_int_equal(backoff_ceiling_ms(&full, 5), 16000);
    assert_int_equal(backoff_ceiling_ms(&full, 6), 30000);
    assert_int_equal(backoff_ceiling_ms(&full, 7), 30000);
    /* negative attempts count as the first */
    assert_int_equal(backoff_ceiling_ms(&full, -5), 500);
}

static void huge_attempts_and_caps(void **state)
{
    struct backoff_policy big = { 1, LONG_MAX, BACKOFF_JITTER_FULL };

    (void)state;
    assert_int_equal(backoff_ceiling_ms(&full, INT_MAX), 30000);
    assert_int_equal(backoff_delay_ms(&full, INT_MAX, -1, UINT64_MAX),
                     30000);
    /* 2^62 still doubles; one more step reaches the cap, not a wrap */
    assert_true(backoff_ceiling_ms(&big, 62) == (1L << 62));
    assert_true(backoff_ceiling_ms(&big, 63) == LONG_MAX);
    assert_true(backoff_ceiling_ms(&big, INT_MAX) == LONG_MAX);
    assert_true(backoff_delay_ms(&big, INT_MAX, -1, UINT64_MAX) ==
                LONG_MAX);
    assert_true(backoff_delay_ms(&big, INT_MAX, -1, 0) == 0);
    big.jitter = BACKOFF_JITTER_UPPER;
    assert_true(backoff_delay_ms(&big, INT_MAX, -1, 0) ==
                LONG_MAX - LONG_MAX / 2);
    assert_true(backoff_delay_ms(&big, INT_MAX, -1, UINT64_MAX) ==
                LONG_MAX);
}

static void degenerate_policies(void **state)
{
    struct backoff_policy p = { 0, 30000, BACKOFF_JITTER_FULL };

    (void)state;
    /* zero base: no delay, no loop */
    assert_int_equal(backoff_delay_ms(&p, 5, -1, UINT64_MAX), 0);
    /* base above the cap is cut to the cap */
    p.base_ms = 90000;
    p.max_ms = 1000;
    assert_int_equal(backoff_ceiling_ms(&p, 0), 1000);
    /* negative values count as zero */
    p.base_ms = -1;
    p.max_ms = -1;
    assert_int_equal(backoff_delay_ms(&p, -3, -1, UINT64_MAX), 0);
    p.base_ms = 100;
    p.max_ms = 0;
    assert_int_equal(backoff_delay_ms(&p, 3, -1, UINT64_MAX), 0);
}

static void full_window(void **state)
{
    (void)state;
    for (int a = 0; a < 10; a++)
        assert_int_equal(backoff_delay_ms(&full, a, -1, 0), 0);
    assert_int_equal(backoff_delay_ms(&full, 0, -1, UINT64_MAX), 500);
    assert_int_equal(backoff_delay_ms(&full, 2, -1, UINT64_MAX), 2000);
    /* the middle of random lands in the middle of the window */
    assert_in_range(backoff_delay_ms(&full, 2, -1, UINT64_MAX / 2), 999,
                    1001);
}

static void upper_window(void **state)
{
    (void)state;
    /* the Redis reconnect: every delay within [100, 5000] */
    assert_int_equal(backoff_delay_ms(&upper, 0, -1, 0), 100);
    assert_int_equal(backoff_delay_ms(&upper, 0, -1, UINT64_MAX), 200);
    assert_int_equal(backoff_delay_ms(&upper, 4, -1, 0), 1600);
    assert_int_equal(backoff_delay_ms(&upper, 5, -1, 0), 2500);
    assert_int_equal(backoff_delay_ms(&upper, 5, -1, UINT64_MAX), 5000);
    /* an odd ceiling keeps its upper half: [2, 3] */
    {
        struct backoff_policy odd = { 3, 3, BACKOFF_JITTER_UPPER };

        assert_int_equal(backoff_delay_ms(&odd, 0, -1, 0), 2);
        assert_int_equal(backoff_delay_ms(&odd, 0, -1, UINT64_MAX), 3);
    }
}

static void floor_lifts_only(void **state)
{
    (void)state;
    /* Retry-After is a floor ... */
    assert_int_equal(backoff_delay_ms(&full, 0, 2000, 0), 2000);
    assert_int_equal(backoff_delay_ms(&full, 0, 0, 0), 0);
    /* ... jitter above it is kept ... */
    assert_int_equal(backoff_delay_ms(&full, 6, 2000, UINT64_MAX), 30000);
    /* ... and it is not capped here */
    assert_int_equal(backoff_delay_ms(&full, 0, 3600000, 0), 3600000);
}

/* Random bits from the real generator: always inside the window, and
 * spread over it (both quarters at the ends are reached). */
static void random_bits_stay_in_window(void **state)
{
    int low_quarter = 0, high_quarter = 0;

    (void)state;
    random_seed(42);
    for (int i = 0; i < 2000; i++) {
        long d = backoff_delay_ms(&upper, 3, -1, random_u64());

        assert_in_range(d, 800, 1600);
        low_quarter += d < 1000;
        high_quarter += d > 1400;
    }
    assert_true(low_quarter > 200);
    assert_true(high_quarter > 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ceiling_doubles_to_cap),
        cmocka_unit_test(huge_attempts_and_caps),
        cmocka_unit_test(degenerate_policies),
        cmocka_unit_test(full_window),
        cmocka_unit_test(upper_window),
        cmocka_unit_test(floor_lifts_only),
        cmocka_unit_test(random_bits_stay_in_window),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
