/*
 * The transport's filter in front of libircclient 1.9 (irc_libguard.c):
 * every line shape the library is known to crash on, over-read with, or
 * abort on is refused, and ordinary traffic (including CTCP ACTION,
 * VERSION and messages that merely mention DCC) still goes through.
 * Lines are parsed with irc_line_parse, as the transport does.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "irc/irc_libguard.h"
#include "irc/irc_line.h"
#include "status.h"

/* Parse line (a copy) and ask the filter. */
static int refused(const char *line)
{
    char buf[IRC_LINE_MAX + 1];
    struct irc_msg m;

    snprintf(buf, sizeof(buf), "%s", line);
    assert_int_equal(irc_line_parse(buf, &m), PARLEY_OK);
    return irc_lib_would_crash(&m);
}

static void test_ctcp_lone_marker(void **state)
{
    (void)state;
    /* "msglen -= 2" wraps on a one-byte CTCP. */
    assert_true(refused(":a!b@c PRIVMSG #c :\001"));
    assert_true(refused(":a!b@c PRIVMSG bot :\001"));
    assert_true(refused(":a!b@c NOTICE bot :\001"));
    assert_true(refused(":a!b@c NOTICE #c \001"));
    /* Two markers are an empty CTCP: the library copes. */
    assert_false(refused(":a!b@c PRIVMSG #c :\001\001"));
}

static void test_dcc_any_case(void **state)
{
    (void)state;
    assert_true(refused(":a!b@c PRIVMSG bot :\001DCC SEND x 1 2 3\001"));
    assert_true(refused(":a!b@c PRIVMSG bot :\001dcc send x 1 2 3\001"));
    assert_true(refused(":a!b@c PRIVMSG bot :\001Dcc CHAT chat 1 2\001"));
    assert_true(refused(":a!b@c PRIVMSG bot :\001dcc \001"));
    assert_true(refused(":a!b@c PRIVMSG #c :\001DCC RESUME\001"));
    assert_true(refused(":b NOTICE t \001dcc:\001"));
    /* Unterminated: the library would not parse it, refused anyway. */
    assert_true(refused(":a!b@c PRIVMSG bot :\001dcc send x"));
    /* Text about DCC is not a CTCP. */
    assert_false(refused(":a!b@c PRIVMSG #c :what is DCC?"));
    assert_false(refused(":a!b@c PRIVMSG #c :\001ACTION tries dcc\001"));
}

static void test_missing_or_empty_text(void **state)
{
    (void)state;
    assert_true(refused(":a!b@c PRIVMSG #c"));
    assert_true(refused(":a!b@c NOTICE #c"));
    assert_true(refused(":a!b@c NOTICE"));
    assert_true(refused(":a!b@c PRIVMSG #c :"));
    assert_true(refused("NOTICE AUTH :"));
}

static void test_truncated_commands(void **state)
{
    (void)state;
    /* strncmp over the rest of the line: "NOT" reads as NOTICE and the
     * library calls strlen on a missing parameter. */
    assert_true(refused(":srv NOT"));
    assert_true(refused(":srv NOTIC"));
    assert_true(refused("N"));
    assert_true(refused(":a!b@c PRIV"));
    assert_true(refused(":srv J"));
    /* With a parameter the comparison runs past the name: no match. */
    assert_false(refused(":srv NOT x"));
}

static void test_numerics_and_nick(void **state)
{
    (void)state;
    assert_true(refused(":srv 001"));
    assert_true(refused("376"));
    assert_true(refused(":srv 000 bot :zero"));
    assert_false(refused(":srv 001 bot :Welcome"));
    /* NICK without a prefix: strstr(NULL, "!"). */
    assert_true(refused("NICK newnick"));
    assert_false(refused(":old!u@h NICK newnick"));
}

static void test_ordinary_traffic_passes(void **state)
{
    (void)state;
    assert_false(refused(":a!b@c PRIVMSG #c :hello bot"));
    assert_false(refused(":a!b@c PRIVMSG bot :\001VERSION\001"));
    assert_false(refused(":a!b@c PRIVMSG #c :\001ACTION waves\001"));
    assert_false(refused(":a!b@c NOTICE bot :\001VERSION x\001"));
    assert_false(refused(":srv NOTICE * :*** Looking up your hostname"));
    assert_false(refused("NOTICE AUTH :*** Checking ident"));
    assert_false(refused("PING :srv"));
    assert_false(refused(":a!b@c JOIN #c"));
    assert_false(refused(":a!b@c QUIT"));
    assert_false(refused(":srv CAP * ACK :sasl"));
    assert_false(refused(":a!b@c KICK #c bot :bye"));
    assert_false(refused(":a!b@c TOPIC #c :new"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctcp_lone_marker),
        cmocka_unit_test(test_dcc_any_case),
        cmocka_unit_test(test_missing_or_empty_text),
        cmocka_unit_test(test_truncated_commands),
        cmocka_unit_test(test_numerics_and_nick),
        cmocka_unit_test(test_ordinary_traffic_passes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
