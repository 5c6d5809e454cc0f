/*
 * Flood control: token bucket arithmetic with an injected clock (burst,
 * refill, cap, clock going backwards) and the queue: round-robin between
 * targets, tags on the last line of a reply, the cap (all or nothing),
 * readiness gating and clearing a target.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "irc/irc_flood.h"
#include "status.h"

static void test_bucket(void **state)
{
    struct irc_bucket b;
    int i;

    (void)state;
    irc_bucket_init(&b, 4, 2000, 1000);
    for (i = 0; i < 4; i++)
        assert_true(irc_bucket_take(&b, 1000));
    assert_false(irc_bucket_take(&b, 1000));
    assert_int_equal(irc_bucket_wait_ms(&b, 1000), 2000);
    assert_int_equal(irc_bucket_wait_ms(&b, 2500), 500);
    assert_false(irc_bucket_take(&b, 2999));
    assert_true(irc_bucket_take(&b, 3000));
    assert_false(irc_bucket_take(&b, 3000));
    /* A long pause refills only up to the burst. */
    for (i = 0; i < 4; i++)
        assert_true(irc_bucket_take(&b, 100000));
    assert_false(irc_bucket_take(&b, 100000));
    /* The clock going backwards neither refills nor breaks. */
    assert_false(irc_bucket_take(&b, 50));
    assert_true(irc_bucket_wait_ms(&b, 50) > 0);
    assert_true(irc_bucket_take(&b, 2050));
}

static void test_bucket_rate(void **state)
{
    struct irc_bucket b;
    uint64_t t;
    int sent = 0;

    (void)state;
    /* Over 60 s at 1 line per 2 s after a burst of 4: 4 + 30 lines. */
    irc_bucket_init(&b, 4, 2000, 0);
    for (t = 0; t <= 60000; t += 10)
        sent += irc_bucket_take(&b, t);
    assert_int_equal(sent, 34);
}

static int tag_a, tag_b;

static void test_queue_round_robin(void **state)
{
    struct irc_queue *q;
    char *a[] = {"a1", "a2", "a3"};
    char *b[] = {"b1"};
    char *c[] = {"c1", "c2"};
    const char *want[] = {"a1", "b1", "c1", "a2", "c2", "a3"};
    const char *t, *l;
    size_t i;
    void *tag;

    (void)state;
    assert_int_equal(irc_queue_create(&q, 16), PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#a", a, 3, &tag_a), PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#b", b, 1, &tag_b), PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#c", c, 2, NULL), PARLEY_OK);
    assert_int_equal(irc_queue_len(q), 6);
    for (i = 0; i < 6; i++) {
        assert_true(irc_queue_peek(q, NULL, NULL, &t, &l));
        assert_string_equal(l, want[i]);
        tag = irc_queue_pop(q);
        if (!strcmp(want[i], "a3"))
            assert_ptr_equal(tag, &tag_a);
        else if (!strcmp(want[i], "b1"))
            assert_ptr_equal(tag, &tag_b);
        else
            assert_null(tag);
    }
    assert_false(irc_queue_peek(q, NULL, NULL, &t, &l));
    assert_int_equal(irc_queue_len(q), 0);
    assert_null(irc_queue_pop(q));
    irc_queue_free(q, NULL);
}

static int only_b(const char *target, void *ctx)
{
    (void)ctx;
    return !strcmp(target, "#b");
}

static int dropped;

static void count_drop(void *tag)
{
    (void)tag;
    dropped++;
}

static void test_queue_cap_ready_clear(void **state)
{
    struct irc_queue *q;
    char *two[] = {"x", "y"};
    char *one[] = {"z"};
    const char *t, *l;

    (void)state;
    assert_int_equal(irc_queue_create(&q, 3), PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#a", two, 2, &tag_a), PARLEY_OK);
    /* All or nothing: two more lines do not fit, one does. */
    assert_int_equal(irc_queue_push(q, "#b", two, 2, &tag_b),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(irc_queue_len(q), 2);
    assert_int_equal(irc_queue_push(q, "#b", one, 1, &tag_b), PARLEY_OK);
    /* A target that is not ready is skipped, not blocking others. */
    assert_true(irc_queue_peek(q, only_b, NULL, &t, &l));
    assert_string_equal(t, "#b");
    assert_ptr_equal(irc_queue_pop(q), &tag_b);
    assert_false(irc_queue_peek(q, only_b, NULL, &t, &l));
    dropped = 0;
    irc_queue_clear_target(q, "#a", count_drop);
    assert_int_equal(dropped, 1);
    assert_int_equal(irc_queue_len(q), 0);
    assert_int_equal(irc_queue_push(q, "#a", two, 2, &tag_a), PARLEY_OK);
    dropped = 0;
    irc_queue_free(q, count_drop);
    assert_int_equal(dropped, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_bucket_rate),
        cmocka_unit_test(test_queue_round_robin),
        cmocka_unit_test(test_queue_cap_ready_clear),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
