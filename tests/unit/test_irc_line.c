/*
 * IRC line parser and serialiser: well-formed lines, every optional part,
 * and hostile input (no command, too many parameters, CR/LF inside,
 * oversize, empty prefix), plus the canonical re-serialisation the
 * transport relies on before handing lines to libircclient.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "irc/irc_line.h"
#include "status.h"

static void test_parse_full(void **state)
{
    char line[] = "@time=x;id=1 :nick!user@host privmsg #chan :hello  world";
    struct irc_msg m;

    (void)state;
    assert_int_equal(irc_line_parse(line, &m), PARLEY_OK);
    assert_string_equal(m.tags, "time=x;id=1");
    assert_string_equal(m.prefix, "nick!user@host");
    assert_string_equal(m.command, "PRIVMSG");
    assert_int_equal(m.n_params, 2);
    assert_string_equal(m.params[0], "#chan");
    assert_string_equal(m.params[1], "hello  world");
}

static void test_parse_minimal(void **state)
{
    char a[] = "PING";
    char b[] = "PING :";
    char c[] = "001   bot   :Welcome";
    char d[] = ":srv 005 bot CASEMAPPING=ascii CHANTYPES=# :are supported";
    struct irc_msg m;
    int code = 0;

    (void)state;
    assert_int_equal(irc_line_parse(a, &m), PARLEY_OK);
    assert_null(m.prefix);
    assert_int_equal(m.n_params, 0);
    assert_int_equal(irc_line_parse(b, &m), PARLEY_OK);
    assert_int_equal(m.n_params, 1);
    assert_string_equal(m.params[0], "");
    assert_int_equal(irc_line_parse(c, &m), PARLEY_OK);
    assert_int_equal(m.n_params, 2);
    assert_string_equal(m.params[0], "bot");
    assert_true(irc_line_numeric(m.command, &code));
    assert_int_equal(code, 1);
    assert_int_equal(irc_line_parse(d, &m), PARLEY_OK);
    assert_int_equal(m.n_params, 4);
    assert_string_equal(m.params[2], "CHANTYPES=#");
    assert_false(irc_line_numeric("PRIVMSG", &code));
    assert_false(irc_line_numeric("12", &code));
}

static void test_parse_hostile(void **state)
{
    const char *bad[] = {
        "", "   ", ":prefixonly", ": PRIVMSG #a :x", "@tagsonly",
        "@t :p", "12 foo", "1234 foo", "PRIV-MSG x", "PRIVMSG\rQUIT",
        "PRIVMSG #a :x\nQUIT", "\x01\x02", ":a!b@c 0a1 x",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA x",
    };
    struct irc_msg m;
    char buf[64];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(buf, sizeof(buf), "%s", bad[i]);
        assert_int_equal(irc_line_parse(buf, &m), PARLEY_ERR_PROTOCOL);
    }
}

static void test_parse_params_cap(void **state)
{
    char ok[] = "CMD 1 2 3 4 5 6 7 8 9 10 11 12 13 14 :15 x";
    char bad[] = "CMD 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16";
    char *huge;
    struct irc_msg m;

    (void)state;
    assert_int_equal(irc_line_parse(ok, &m), PARLEY_OK);
    assert_int_equal(m.n_params, 15);
    assert_string_equal(m.params[14], "15 x");
    assert_int_equal(irc_line_parse(bad, &m), PARLEY_ERR_PROTOCOL);
    huge = malloc(IRC_LINE_IN_MAX + 10);
    assert_non_null(huge);
    memset(huge, 'A', IRC_LINE_IN_MAX + 9);
    memcpy(huge, "PRIVMSG #a :", 12);
    huge[IRC_LINE_IN_MAX + 9] = '\0';
    assert_int_equal(irc_line_parse(huge, &m), PARLEY_ERR_TOO_LARGE);
    free(huge);
}

static void test_format(void **state)
{
    char line[] = ":n!u@h PRIVMSG #c :hi there";
    char empty[] = "PRIVMSG #c :";
    char colon[] = "PRIVMSG #c ::)";
    char out[IRC_LINE_MAX];
    struct irc_msg m;

    (void)state;
    assert_int_equal(irc_line_parse(line, &m), PARLEY_OK);
    assert_int_equal(irc_line_format(out, sizeof(out), &m), PARLEY_OK);
    assert_string_equal(out, ":n!u@h PRIVMSG #c :hi there");
    assert_int_equal(irc_line_parse(empty, &m), PARLEY_OK);
    assert_int_equal(irc_line_format(out, sizeof(out), &m), PARLEY_OK);
    assert_string_equal(out, "PRIVMSG #c :");
    assert_int_equal(irc_line_parse(colon, &m), PARLEY_OK);
    assert_int_equal(irc_line_format(out, sizeof(out), &m), PARLEY_OK);
    assert_string_equal(out, "PRIVMSG #c ::)");
    /* Too small: an error, and the buffer is left empty. */
    assert_int_equal(irc_line_format(out, 10, &m), PARLEY_ERR_TOO_LARGE);
    assert_string_equal(out, "");
}

static void test_format_injection(void **state)
{
    struct irc_msg m;
    char out[IRC_LINE_MAX];

    (void)state;
    memset(&m, 0, sizeof(m));
    m.command = "PRIVMSG";
    m.params[0] = "#c";
    m.params[1] = "hi\r\nQUIT :bye";
    m.n_params = 2;
    assert_int_equal(irc_line_format(out, sizeof(out), &m),
                     PARLEY_ERR_PROTOCOL);
    m.params[0] = "#c QUIT";
    m.params[1] = "x";
    assert_int_equal(irc_line_format(out, sizeof(out), &m),
                     PARLEY_ERR_PROTOCOL);
    m.params[0] = "#c";
    m.prefix = "a b";
    assert_int_equal(irc_line_format(out, sizeof(out), &m),
                     PARLEY_ERR_PROTOCOL);
    m.prefix = NULL;
    m.command = "QUIT\r\n";
    assert_int_equal(irc_line_format(out, sizeof(out), &m),
                     PARLEY_ERR_PROTOCOL);
}

static void test_prefix_nick(void **state)
{
    char buf[8];

    (void)state;
    assert_int_equal(irc_prefix_nick("nick!u@h", buf, sizeof(buf)),
                     PARLEY_OK);
    assert_string_equal(buf, "nick");
    assert_int_equal(irc_prefix_nick("irc.server", buf, sizeof(buf)),
                     PARLEY_ERR_TOO_LARGE);
    assert_string_equal(buf, "");
    assert_int_equal(irc_prefix_nick("a@h", buf, sizeof(buf)), PARLEY_OK);
    assert_string_equal(buf, "a");
}

static void test_prefix_userhost(void **state)
{
    char buf[16];

    (void)state;
    assert_int_equal(irc_prefix_userhost("nick!~u@h.example", buf,
                                         sizeof(buf)), PARLEY_OK);
    assert_string_equal(buf, "~u@h.example");
    assert_int_equal(irc_prefix_userhost("irc.server", buf, sizeof(buf)),
                     PARLEY_ERR_PROTOCOL);
    assert_string_equal(buf, "");
    assert_int_equal(irc_prefix_userhost("a@h", buf, sizeof(buf)),
                     PARLEY_ERR_PROTOCOL);
    assert_int_equal(irc_prefix_userhost("!u@h", buf, sizeof(buf)),
                     PARLEY_ERR_PROTOCOL);
    assert_int_equal(irc_prefix_userhost("n!@h", buf, sizeof(buf)),
                     PARLEY_ERR_PROTOCOL);
    assert_int_equal(irc_prefix_userhost("n!u@", buf, sizeof(buf)),
                     PARLEY_ERR_PROTOCOL);
    assert_int_equal(irc_prefix_userhost("n!user@a.long.host.name", buf,
                                         sizeof(buf)), PARLEY_ERR_TOO_LARGE);
    assert_string_equal(buf, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_full),
        cmocka_unit_test(test_parse_minimal),
        cmocka_unit_test(test_parse_hostile),
        cmocka_unit_test(test_parse_params_cap),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_prefix_userhost),
        cmocka_unit_test(test_format_injection),
        cmocka_unit_test(test_prefix_nick),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
