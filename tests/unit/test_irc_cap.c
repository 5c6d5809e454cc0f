/*
 * CAP/SASL negotiation against scripted server lines: no SASL (CAP END at
 * once), SASL PLAIN success (903, the exact base64 payload, marked
 * secret), multi-line LS, every failure numeric (902/904/905/906), NAK,
 * a server without CAP (421, early 001), 907/908, and oversize
 * credentials.  The password must never be sent in a non-secret line.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "irc/irc_cap.h"
#include "irc/irc_line.h"
#include "status.h"

struct sent {
    char lines[16][512];
    int secret[16];
    int n;
};

static void record(void *ctx, const char *line, int secret)
{
    struct sent *s = ctx;

    assert_true(s->n < 16);
    snprintf(s->lines[s->n], sizeof(s->lines[0]), "%s", line);
    s->secret[s->n++] = secret;
}

static int feed(struct irc_cap *c, const char *line)
{
    char buf[512];
    struct irc_msg m;

    snprintf(buf, sizeof(buf), "%s", line);
    assert_int_equal(irc_line_parse(buf, &m), PARLEY_OK);
    return irc_cap_feed(c, &m);
}

static void test_no_sasl(void **state)
{
    struct irc_cap c;
    struct sent s = {0};

    (void)state;
    assert_int_equal(irc_cap_start(&c, NULL, NULL, record, &s), PARLEY_OK);
    assert_string_equal(s.lines[0], "CAP LS 302");
    assert_int_equal(feed(&c, ":srv NOTICE * :*** Looking up"), 0);
    assert_int_equal(feed(&c, ":srv CAP * LS :multi-prefix sasl"), 1);
    assert_int_equal(c.state, IRC_CAP_DONE);
    assert_string_equal(s.lines[1], "CAP END");
    assert_int_equal(s.n, 2);
    /* After DONE nothing is consumed. */
    assert_int_equal(feed(&c, ":srv CAP * LS :x"), 0);
}

static void test_sasl_ok(void **state)
{
    struct irc_cap c;
    struct sent s = {0};
    int i;

    (void)state;
    assert_int_equal(irc_cap_start(&c, "parley", "sekrit", record, &s),
                     PARLEY_OK);
    assert_int_equal(feed(&c, ":srv CAP * LS * :multi-prefix"), 1);
    assert_int_equal(c.state, IRC_CAP_LS);
    assert_int_equal(feed(&c, ":srv CAP * LS :sasl=EXTERNAL,PLAIN"), 1);
    assert_string_equal(s.lines[1], "CAP REQ :sasl");
    assert_int_equal(feed(&c, ":srv CAP * ACK :sasl"), 1);
    assert_string_equal(s.lines[2], "AUTHENTICATE PLAIN");
    assert_int_equal(feed(&c, "AUTHENTICATE +"), 1);
    /* base64("\0parley\0sekrit") */
    assert_string_equal(s.lines[3], "AUTHENTICATE AHBhcmxleQBzZWtyaXQ=");
    assert_int_equal(s.secret[3], 1);
    assert_int_equal(feed(&c, ":srv 900 * * parley :You are now logged in"),
                     1);
    assert_string_equal(c.account, "parley");
    assert_int_equal(feed(&c, ":srv 903 * :SASL successful"), 1);
    assert_int_equal(c.state, IRC_CAP_DONE);
    assert_string_equal(s.lines[4], "CAP END");
    /* Credentials are wiped; no non-secret line carries them. */
    assert_string_equal(c.b64, "");
    for (i = 0; i < s.n; i++)
        if (!s.secret[i])
            assert_null(strstr(s.lines[i], "AHBhcmxleQBzZWtyaXQ="));
}

static void fail_with(const char *numeric, const char *want)
{
    struct irc_cap c;
    struct sent s = {0};

    assert_int_equal(irc_cap_start(&c, "u", "p", record, &s), PARLEY_OK);
    feed(&c, ":srv CAP * LS :sasl");
    feed(&c, ":srv CAP * ACK :sasl");
    feed(&c, "AUTHENTICATE +");
    assert_int_equal(feed(&c, numeric), 1);
    assert_int_equal(c.state, IRC_CAP_FAILED);
    assert_non_null(strstr(c.errstr, want));
    assert_null(strstr(c.errstr, "AHUAcA"));
}

static void test_sasl_failures(void **state)
{
    (void)state;
    fail_with(":srv 904 * :SASL authentication failed", "904");
    fail_with(":srv 905 * :too long", "905");
    fail_with(":srv 906 * :aborted", "906");
    fail_with(":srv 902 * :locked", "902");
}

static void test_sasl_refused(void **state)
{
    struct irc_cap c;
    struct sent s = {0};

    (void)state;
    irc_cap_start(&c, "u", "p", record, &s);
    feed(&c, ":srv CAP * LS :multi-prefix");
    assert_int_equal(c.state, IRC_CAP_FAILED);
    assert_non_null(strstr(c.errstr, "does not offer"));
    irc_cap_start(&c, "u", "p", record, &s);
    feed(&c, ":srv CAP * LS :sasl=EXTERNAL");
    assert_int_equal(c.state, IRC_CAP_FAILED);
    irc_cap_start(&c, "u", "p", record, &s);
    feed(&c, ":srv CAP * LS :sasl");
    feed(&c, ":srv CAP * NAK :sasl");
    assert_int_equal(c.state, IRC_CAP_FAILED);
    /* 908 lists mechanisms and is consumed; 907 means already done. */
    irc_cap_start(&c, "u", "p", record, &s);
    feed(&c, ":srv CAP * LS :sasl");
    feed(&c, ":srv CAP * ACK :sasl");
    assert_int_equal(feed(&c, ":srv 908 * PLAIN :are available"), 1);
    assert_int_equal(c.state, IRC_CAP_SASL);
    assert_int_equal(feed(&c, ":srv 907 * :already"), 1);
    assert_int_equal(c.state, IRC_CAP_DONE);
}

static void test_no_cap_server(void **state)
{
    struct irc_cap c;
    struct sent s = {0};

    (void)state;
    irc_cap_start(&c, NULL, NULL, record, &s);
    assert_int_equal(feed(&c, ":srv 421 * CAP :Unknown command"), 1);
    assert_int_equal(c.state, IRC_CAP_DONE);
    irc_cap_start(&c, NULL, NULL, record, &s);
    assert_int_equal(feed(&c, ":srv 001 bot :Welcome"), 0);
    assert_int_equal(c.state, IRC_CAP_DONE);
    irc_cap_start(&c, "u", "p", record, &s);
    feed(&c, ":srv 421 * CAP :Unknown command");
    assert_int_equal(c.state, IRC_CAP_FAILED);
    /* Garbage CAP lines are consumed and change nothing. */
    irc_cap_start(&c, NULL, NULL, record, &s);
    assert_int_equal(feed(&c, "CAP"), 1);
    assert_int_equal(feed(&c, "CAP * ACK :x"), 1);
    assert_int_equal(c.state, IRC_CAP_LS);
    irc_cap_fail(&c, "timeout");
    assert_int_equal(c.state, IRC_CAP_FAILED);
    assert_string_equal(c.errstr, "timeout");
}

static void test_oversize(void **state)
{
    struct irc_cap c;
    struct sent s = {0};
    char pw[400];

    (void)state;
    memset(pw, 'p', sizeof(pw) - 1);
    pw[sizeof(pw) - 1] = '\0';
    assert_int_equal(irc_cap_start(&c, "u", pw, record, &s),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(s.n, 0);
}

/* Issue 12: the account capabilities are asked for when offered (with or
 * without SASL, across a multi-line LS), and a NAK of the combined REQ
 * falls back to sasl alone. */
static void test_account_caps(void **state)
{
    struct irc_cap c;
    struct sent s = {0};

    (void)state;
    irc_cap_start(&c, NULL, NULL, record, &s);
    feed(&c, ":srv CAP * LS * :multi-prefix account-notify");
    assert_int_equal(s.n, 1);
    feed(&c, ":srv CAP * LS :extended-join away-notify");
    assert_string_equal(s.lines[1], "CAP REQ :account-notify extended-join");
    assert_int_equal(c.state, IRC_CAP_REQ);
    feed(&c, ":srv CAP * ACK :account-notify extended-join");
    assert_true(c.account_notify);
    assert_true(c.extended_join);
    assert_int_equal(c.state, IRC_CAP_DONE);
    assert_string_equal(s.lines[2], "CAP END");

    memset(&s, 0, sizeof(s));
    irc_cap_start(&c, "u", "p", record, &s);
    feed(&c, ":srv CAP * LS :sasl extended-join");
    assert_string_equal(s.lines[1], "CAP REQ :sasl extended-join");
    feed(&c, ":srv CAP * NAK :sasl extended-join");
    assert_int_equal(c.state, IRC_CAP_REQ);
    assert_string_equal(s.lines[2], "CAP REQ :sasl");
    feed(&c, ":srv CAP * ACK :sasl");
    assert_int_equal(c.state, IRC_CAP_SASL);
    assert_false(c.extended_join);

    memset(&s, 0, sizeof(s));
    irc_cap_start(&c, NULL, NULL, record, &s);
    feed(&c, ":srv CAP * LS :account-notify");
    feed(&c, ":srv CAP * NAK :account-notify");
    assert_int_equal(c.state, IRC_CAP_DONE);
    assert_string_equal(s.lines[2], "CAP END");
    irc_cap_clear(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_sasl),
        cmocka_unit_test(test_sasl_ok),
        cmocka_unit_test(test_sasl_failures),
        cmocka_unit_test(test_sasl_refused),
        cmocka_unit_test(test_no_cap_server),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_account_caps),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
