/*
 * The poison-event rule of the Matrix batch walk (matrix_poison.h,
 * issue 12): a Redis outage is waited out however long it lasts, while an
 * event the router refuses for good is skipped after MATRIX_POISON_TRIES
 * refusals, so the sync position can advance and later events are
 * answered.  The walk in matrix_walk.c calls matrix_poison_refused for
 * every refusal, logs the skip once and counts it in /metrics.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "matrix/matrix_poison.h"
#include "status.h"

static void test_transient_never_skips(void **state)
{
    static const int transient[] = { PARLEY_ERR_STATE, PARLEY_ERR_IO,
                                     PARLEY_ERR_EOF, PARLEY_ERR_TIMEOUT,
                                     PARLEY_ERR_OTHER };
    struct matrix_poison p;
    size_t i;
    int n;

    (void)state;
    memset(&p, 0, sizeof(p));
    for (i = 0; i < sizeof(transient) / sizeof(transient[0]); i++) {
        assert_int_equal(matrix_poison_transient(transient[i]), 1);
        for (n = 0; n < 1000; n++)
            assert_int_equal(matrix_poison_refused(&p, 1, 4, transient[i]),
                             MATRIX_POISON_RETRY);
    }
}

static void test_poison_skipped_after_tries(void **state)
{
    static const int poison[] = { PARLEY_ERR_TOO_LARGE, PARLEY_ERR_PROTOCOL,
                                  PARLEY_ERR_OOM, PARLEY_ERR_CONFIG,
                                  PARLEY_ERR_HTTP };
    struct matrix_poison p;
    size_t i;
    int n;

    (void)state;
    memset(&p, 0, sizeof(p));
    for (i = 0; i < sizeof(poison) / sizeof(poison[0]); i++) {
        assert_int_equal(matrix_poison_transient(poison[i]), 0);
        for (n = 1; n < MATRIX_POISON_TRIES; n++)
            assert_int_equal(matrix_poison_refused(&p, 7, i, poison[i]),
                             MATRIX_POISON_RETRY);
        assert_int_equal(matrix_poison_refused(&p, 7, i, poison[i]),
                         MATRIX_POISON_SKIP);
        /* Forgotten after the skip: a new count starts. */
        assert_int_equal(p.tries, 0);
    }
}

/* Outages in between do not reset or add to the count. */
static void test_outage_between_refusals(void **state)
{
    struct matrix_poison p;

    (void)state;
    memset(&p, 0, sizeof(p));
    assert_int_equal(matrix_poison_refused(&p, 2, 0, PARLEY_ERR_OOM),
                     MATRIX_POISON_RETRY);
    assert_int_equal(matrix_poison_refused(&p, 2, 0, PARLEY_ERR_STATE),
                     MATRIX_POISON_RETRY);
    assert_int_equal(matrix_poison_refused(&p, 2, 0, PARLEY_ERR_IO),
                     MATRIX_POISON_RETRY);
    assert_int_equal(p.tries, 1);
    assert_int_equal(matrix_poison_refused(&p, 2, 0, PARLEY_ERR_OOM),
                     MATRIX_POISON_RETRY);
    assert_int_equal(matrix_poison_refused(&p, 2, 0, PARLEY_ERR_OOM),
                     MATRIX_POISON_SKIP);
}

/* Counts are per event: another event, or the same place in another
 * batch, starts from one (a passing failure on two events in a row is
 * not three strikes for the second). */
static void test_count_is_per_event(void **state)
{
    struct matrix_poison p;

    (void)state;
    memset(&p, 0, sizeof(p));
    assert_int_equal(matrix_poison_refused(&p, 3, 0, PARLEY_ERR_OOM),
                     MATRIX_POISON_RETRY);
    assert_int_equal(matrix_poison_refused(&p, 3, 0, PARLEY_ERR_OOM),
                     MATRIX_POISON_RETRY);
    assert_int_equal(matrix_poison_refused(&p, 3, 1, PARLEY_ERR_OOM),
                     MATRIX_POISON_RETRY);
    assert_int_equal(p.tries, 1);
    assert_int_equal(matrix_poison_refused(&p, 4, 1, PARLEY_ERR_OOM),
                     MATRIX_POISON_RETRY);
    assert_int_equal(p.tries, 1);
    assert_int_equal(matrix_poison_refused(&p, 4, 1, PARLEY_ERR_OOM),
                     MATRIX_POISON_RETRY);
    assert_int_equal(matrix_poison_refused(&p, 4, 1, PARLEY_ERR_OOM),
                     MATRIX_POISON_SKIP);
    /* An accepted event never counts. */
    assert_int_equal(matrix_poison_refused(&p, 4, 2, PARLEY_OK),
                     MATRIX_POISON_RETRY);
    assert_int_equal(p.tries, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transient_never_skips),
        cmocka_unit_test(test_poison_skipped_after_tries),
        cmocka_unit_test(test_outage_between_refusals),
        cmocka_unit_test(test_count_is_per_event),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
