/*
 * Incoming text: mIRC formatting strip (every code, colour digits and
 * commas, hex colours, truncated codes at the end), UTF-8 validation and
 * Latin-1 fallback (overlongs, surrogates, truncated sequences, NULs, the
 * output cap), CASEMAPPING folding, addressing and hostmask globbing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "irc/irc_text.h"

static void strip(const char *in, const char *want)
{
    char buf[256];

    snprintf(buf, sizeof(buf), "%s", in);
    assert_int_equal(irc_strip_formatting(buf), strlen(want));
    assert_string_equal(buf, want);
}

static void test_strip(void **state)
{
    (void)state;
    strip("\x02" "bold\x02 \x1ditalic\x1d \x1funder\x1f \x1es\x1e \x11m",
          "bold italic under s m");
    strip("\x03" "4red\x03 \x03" "04,12both\x03 \x03,5x", "red both ,5x");
    strip("\x03" "123", "3");
    strip("\x03" "12,345", "5");
    strip("a\x03", "a");
    strip("a\x03" "1,", "a,");
    strip("\x0f\x16rev\x16", "rev");
    strip("\x04" "ff00AA" "hex\x04" "ff00aa,00FF00x", "hexx");
    strip("\x04" "ff0hex", "ff0hex");
    strip("\x04", "");
    strip("plain 3,4 text", "plain 3,4 text");
}

static void test_utf8_valid(void **state)
{
    (void)state;
    assert_true(irc_utf8_valid("h\xc3\xa9llo \xe4\xb8\xad \xf0\x9f\x98\x80",
                               15));
    assert_false(irc_utf8_valid("\xc0\xaf", 2));          /* overlong */
    assert_false(irc_utf8_valid("\xe0\x80\xaf", 3));      /* overlong */
    assert_false(irc_utf8_valid("\xed\xa0\x80", 3));      /* surrogate */
    assert_false(irc_utf8_valid("\xf4\x90\x80\x80", 4));  /* > 10FFFF */
    assert_false(irc_utf8_valid("\xe4\xb8", 2));          /* truncated */
    assert_false(irc_utf8_valid("\xff", 1));
    assert_false(irc_utf8_valid("\x80", 1));
    assert_true(irc_utf8_valid("", 0));
}

static void test_utf8_latin1(void **state)
{
    char out[64];
    size_t n;

    (void)state;
    /* "caf\xe9" in Latin-1 becomes "café". */
    n = irc_utf8_from_irc("caf\xe9", 4, out, sizeof(out));
    assert_int_equal(n, 5);
    assert_string_equal(out, "caf\xc3\xa9");
    /* Valid UTF-8 is kept as is, mixed input is fixed per byte. */
    n = irc_utf8_from_irc("\xc3\xa9\xff", 3, out, sizeof(out));
    assert_string_equal(out, "\xc3\xa9\xc3\xbf");
    assert_int_equal(n, 4);
    assert_true(irc_utf8_valid(out, n));
    /* NULs are dropped. */
    n = irc_utf8_from_irc("a\0b", 3, out, sizeof(out));
    assert_string_equal(out, "ab");
    /* The cap cuts on a character boundary and terminates. */
    n = irc_utf8_from_irc("ab\xe4\xb8\xad", 5, out, 5);
    assert_string_equal(out, "ab");
    assert_int_equal(n, 2);
    n = irc_utf8_from_irc("abc", 3, out, 0);
    assert_int_equal(n, 0);
}

static void test_casemap(void **state)
{
    enum irc_casemap cm;
    char s[] = "Nick[]\\^~";

    (void)state;
    assert_int_equal(irc_casemap_parse("ascii", &cm), 0);
    assert_int_equal(cm, IRC_CASEMAP_ASCII);
    assert_int_equal(irc_casemap_parse("strict-rfc1459", &cm), 0);
    assert_int_equal(cm, IRC_CASEMAP_STRICT);
    assert_int_equal(irc_casemap_parse("rfc7613", &cm), -1);
    assert_int_equal(cm, IRC_CASEMAP_RFC1459);
    irc_casefold(IRC_CASEMAP_RFC1459, s);
    assert_string_equal(s, "nick{}|~~");
    assert_int_equal(irc_casecmp(IRC_CASEMAP_RFC1459, "A[b]^", "a{B}~"), 0);
    assert_int_not_equal(irc_casecmp(IRC_CASEMAP_STRICT, "a^", "a~"), 0);
    assert_int_equal(irc_casecmp(IRC_CASEMAP_STRICT, "a[", "A{"), 0);
    assert_int_not_equal(irc_casecmp(IRC_CASEMAP_ASCII, "a[", "a{"), 0);
    assert_int_equal(irc_casecmp(IRC_CASEMAP_ASCII, "#Chan", "#cHAN"), 0);
}

static void test_addressed(void **state)
{
    const char *rest = NULL;

    (void)state;
    assert_true(irc_addressed(IRC_CASEMAP_RFC1459, "parley: hi", "parley",
                              &rest));
    assert_string_equal(rest, "hi");
    assert_true(irc_addressed(IRC_CASEMAP_RFC1459, "  PARLEY,hi", "parley",
                              &rest));
    assert_string_equal(rest, "hi");
    assert_true(irc_addressed(IRC_CASEMAP_RFC1459, "Parley what", "parley",
                              &rest));
    assert_string_equal(rest, "what");
    assert_true(irc_addressed(IRC_CASEMAP_RFC1459, "parley", "parley",
                              &rest));
    assert_string_equal(rest, "");
    assert_true(irc_addressed(IRC_CASEMAP_RFC1459, "bot{}: x", "BOT[]",
                              &rest));
    assert_false(irc_addressed(IRC_CASEMAP_ASCII, "bot{}: x", "BOT[]",
                               &rest));
    assert_false(irc_addressed(IRC_CASEMAP_RFC1459, "parleys: hi", "parley",
                               &rest));
    assert_false(irc_addressed(IRC_CASEMAP_RFC1459, "hi parley", "parley",
                               &rest));
    assert_false(irc_addressed(IRC_CASEMAP_RFC1459, "par", "parley", &rest));
    assert_false(irc_addressed(IRC_CASEMAP_RFC1459, "x", "", &rest));
}

static void test_mask(void **state)
{
    (void)state;
    assert_true(irc_mask_match(IRC_CASEMAP_RFC1459, "*!*@trusted.host",
                               "Bob!~bob@Trusted.Host"));
    assert_false(irc_mask_match(IRC_CASEMAP_RFC1459, "*!*@trusted.host",
                                "bob!bob@evil.trusted.host.x"));
    assert_true(irc_mask_match(IRC_CASEMAP_RFC1459, "b?b!*@*", "bob!x@y"));
    assert_false(irc_mask_match(IRC_CASEMAP_RFC1459, "b?b!*@*", "bb!x@y"));
    assert_true(irc_mask_match(IRC_CASEMAP_RFC1459, "*", ""));
    assert_false(irc_mask_match(IRC_CASEMAP_RFC1459, "", "a"));
    /* Pathological pattern: must finish quickly. */
    assert_false(irc_mask_match(IRC_CASEMAP_RFC1459,
        "*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
    assert_true(irc_is_channel("#a", "#&"));
    assert_false(irc_is_channel("nick", "#&"));
    assert_false(irc_is_channel("", "#&"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strip),
        cmocka_unit_test(test_utf8_valid),
        cmocka_unit_test(test_utf8_latin1),
        cmocka_unit_test(test_casemap),
        cmocka_unit_test(test_addressed),
        cmocka_unit_test(test_mask),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
