/*
 * Flood control: token bucket arithmetic with an injected clock (burst,
 * refill, cap, clock going backwards, the default pacing) and the queue:
 * round-robin between targets, whole answers taken in turn from the
 * people asking in one target, one asker's share capped, tags on the last
 * line of a reply, the cap (all or nothing), readiness gating and
 * clearing a target.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
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

static void test_bucket_default_pacing(void **state)
{
    struct irc_bucket b;
    uint64_t t, first_late = 0;
    int sent = 0, in_first_second = 0;

    (void)state;
    /* The defaults (burst 5, 1000 ms): 5 at once, then one a second, so
     * a server that drains 1 line/s (InspIRCd's commandrate 1000) and
     * allows a burst of 5 (Solanum, Hybrid) never sees more. */
    irc_bucket_init(&b, 5, 1000, 0);
    for (t = 0; t <= 15000; t += 10) {
        if (irc_bucket_take(&b, t)) {
            sent++;
            if (t < 1000)
                in_first_second++;
            else if (!first_late)
                first_late = t;
        }
    }
    assert_int_equal(in_first_second, 5);
    assert_int_equal(first_late, 1000);
    /* 20 lines: the last leaves at 15 s. */
    assert_int_equal(sent, 5 + 15);
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
    assert_int_equal(irc_queue_create(&q, 16, 16), PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#a", NULL, a, 3, &tag_a), PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#b", NULL, b, 1, &tag_b), PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#c", NULL, c, 2, NULL), PARLEY_OK);
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
    assert_int_equal(irc_queue_create(&q, 3, 3), PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#a", "x", two, 2, &tag_a), PARLEY_OK);
    /* All or nothing: two more lines do not fit, one does. */
    assert_int_equal(irc_queue_push(q, "#b", "y", two, 2, &tag_b),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(irc_queue_len(q), 2);
    assert_int_equal(irc_queue_push(q, "#b", "y", one, 1, &tag_b), PARLEY_OK);
    /* A target that is not ready is skipped, not blocking others. */
    assert_true(irc_queue_peek(q, only_b, NULL, &t, &l));
    assert_string_equal(t, "#b");
    assert_ptr_equal(irc_queue_pop(q), &tag_b);
    assert_false(irc_queue_peek(q, only_b, NULL, &t, &l));
    dropped = 0;
    irc_queue_clear_target(q, "#a", count_drop);
    assert_int_equal(dropped, 1);
    assert_int_equal(irc_queue_len(q), 0);
    assert_int_equal(irc_queue_push(q, "#a", "x", two, 2, &tag_a), PARLEY_OK);
    dropped = 0;
    irc_queue_free(q, count_drop);
    assert_int_equal(dropped, 1);
}

/* Pop everything, returning the lines joined by spaces. */
static void drain(struct irc_queue *q, char *out, size_t len)
{
    const char *t, *l;

    out[0] = '\0';
    while (irc_queue_peek(q, NULL, NULL, &t, &l)) {
        size_t have = strlen(out);

        snprintf(out + have, len - have, "%s%s:%s", have ? " " : "", t, l);
        irc_queue_pop(q);
    }
}

static void test_queue_askers_take_turns(void **state)
{
    struct irc_queue *q;
    char *a1[] = {"a1a", "a1b"}, *a2[] = {"a2a", "a2b"}, *a3[] = {"a3"};
    char *b1[] = {"b1a", "b1b"}, *c1[] = {"c1"};
    char *d1[] = {"d1a", "d1b", "d1c"};
    char got[512];

    (void)state;
    assert_int_equal(irc_queue_create(&q, 64, 64), PARLEY_OK);
    /* alice asks three times before bob and carol once each: bob and
     * carol wait for one answer of hers, not for all three, and every
     * answer stays in one piece. */
    assert_int_equal(irc_queue_push(q, "#c", "alice", a1, 2, &tag_a),
                     PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#c", "alice", a2, 2, NULL),
                     PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#c", "alice", a3, 1, NULL),
                     PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#c", "bob", b1, 2, &tag_b),
                     PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#c", "carol", c1, 1, NULL),
                     PARLEY_OK);
    drain(q, got, sizeof(got));
    assert_string_equal(got, "#c:a1a #c:a1b #c:b1a #c:b1b #c:c1 #c:a2a "
                             "#c:a2b #c:a3");
    /* Another channel still takes its turn line by line. */
    assert_int_equal(irc_queue_push(q, "#c", "alice", a1, 2, NULL),
                     PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#c", "bob", b1, 2, NULL),
                     PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#d", "dave", d1, 3, NULL),
                     PARLEY_OK);
    drain(q, got, sizeof(got));
    assert_string_equal(got, "#c:a1a #d:d1a #c:a1b #d:d1b #c:b1a #d:d1c "
                             "#c:b1b");
    assert_int_equal(irc_queue_len(q), 0);
    irc_queue_free(q, NULL);
}

static void test_queue_asker_share(void **state)
{
    struct irc_queue *q;
    char *four[] = {"1", "2", "3", "4"}, *two[] = {"x", "y"};
    int i;

    (void)state;
    assert_int_equal(irc_queue_create(&q, 12, 5), PARLEY_OK);
    /* alice may hold 5 lines, over all targets. */
    assert_int_equal(irc_queue_push(q, "#a", "alice", four, 4, NULL),
                     PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#a", "alice", two, 2, NULL),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(irc_queue_push(q, "alice", "alice", two, 1, NULL),
                     PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#b", "alice", two, 1, NULL),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(irc_queue_asker_len(q, "alice"), 5);
    /* Everyone else still has the rest of the queue. */
    assert_int_equal(irc_queue_push(q, "#a", "bob", four, 4, NULL),
                     PARLEY_OK);
    /* Lines for nobody (greetings when the bot joins) have no share. */
    assert_int_equal(irc_queue_push(q, "#a", NULL, two, 2, NULL),
                     PARLEY_OK);
    assert_int_equal(irc_queue_asker_len(q, ""), 2);
    /* The queue's own cap still holds: 11 of 12 lines are used. */
    assert_int_equal(irc_queue_push(q, "#a", "carol", two, 2, NULL),
                     PARLEY_ERR_TOO_LARGE);
    /* As alice's lines leave, her share frees up. */
    for (i = 0; i < 4; i++) {
        const char *t, *l;

        assert_true(irc_queue_peek(q, NULL, NULL, &t, &l));
        irc_queue_pop(q);
    }
    assert_int_equal(irc_queue_asker_len(q, "alice"), 1);
    assert_int_equal(irc_queue_push(q, "#b", "alice", four, 4, NULL),
                     PARLEY_OK);
    irc_queue_free(q, NULL);
    assert_int_equal(irc_queue_create(&q, 12, 5), PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#a", NULL, four, 4, NULL),
                     PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#b", "", four, 4, NULL), PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#c", NULL, four, 4, NULL),
                     PARLEY_OK);
    assert_int_equal(irc_queue_push(q, "#d", NULL, two, 1, NULL),
                     PARLEY_ERR_TOO_LARGE);
    irc_queue_free(q, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_bucket_rate),
        cmocka_unit_test(test_bucket_default_pacing),
        cmocka_unit_test(test_queue_round_robin),
        cmocka_unit_test(test_queue_cap_ready_clear),
        cmocka_unit_test(test_queue_askers_take_turns),
        cmocka_unit_test(test_queue_asker_share),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
