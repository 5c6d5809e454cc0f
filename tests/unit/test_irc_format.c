/*
 * Outgoing text: Markdown to plain text, the byte budget of one relayed
 * line, and splitting.  Every produced line is checked to be valid UTF-8,
 * free of CR, LF, NUL and \x01, within the budget, and the whole relayed
 * line ":nick!user@host PRIVMSG #chan :text\r\n" within 512 bytes, for
 * emoji, CJK, long words and injection attempts from the model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "irc/irc_format.h"
#include "irc/irc_text.h"
#include "status.h"

static void md(const char *in, const char *want)
{
    char *out = irc_markdown_to_plain(in);

    assert_non_null(out);
    assert_string_equal(out, want);
    assert_true(strlen(out) <= strlen(in));
    free(out);
}

static void test_markdown(void **state)
{
    (void)state;
    md("# Title\n## Sub ##", "Title\nSub ##");
    md("**bold** and *it* and __b__ and _i_ and ~~s~~",
       "bold and it and b and i and s");
    md("snake_case and 2*3*4 and a * b and 2**8", "snake_case and 2*3*4 "
       "and a * b and 2**8");
    md("use `x = 1` here and ``a`b``", "use x = 1 here and a`b");
    md("see [the docs](https://x.y/z) or ![logo](http://i/l.png)",
       "see the docs (https://x.y/z) or logo (http://i/l.png)");
    md("[https://a.b](https://a.b) [](http://c)", "https://a.b http://c");
    md("[not a link] (x) and [open", "[not a link] (x) and [open");
    md("* one\n+ two\n- three\n  * nested\n1. first",
       "- one\n- two\n- three\n  - nested\n1. first");
    md("```c\nint *p = a * b;\n**x**\n```\nafter", "int *p = a * b;\n**x**\n"
       "after");
    md("a\n\n---\n***\nb", "a\n\nb");
    md("\\*not em\\*", "*not em*");
    md("", "");
    md("unclosed ```", "unclosed ```");
    md("`unclosed", "`unclosed");
}

static void test_budget(void **state)
{
    size_t b;

    (void)state;
    b = irc_text_budget("PRIVMSG", "parley", 0, 0, "#chan");
    /* 512 - (1+6+1+11+1+63) - " PRIVMSG " - "#chan" - " :" - CRLF */
    assert_int_equal(b, 512 - 83 - 9 - 5 - 4);
    b = irc_text_budget("PRIVMSG", "parley", 7, 9, "#c");
    assert_int_equal(b, 512 - (1 + 6 + 1 + 7 + 1 + 9) - 9 - 2 - 4);
    assert_int_equal(irc_text_budget("PRIVMSG", "n", 300, 300, "#c"), 0);
}

/* Check one split result against every invariant. */
static void check_lines(const struct irc_lines *l, size_t budget,
                        const char *nick, size_t ul, size_t hl,
                        const char *target)
{
    size_t i;

    for (i = 0; i < l->n; i++) {
        const char *s = l->v[i];
        size_t n = strlen(s);

        assert_true(n > 0);
        assert_true(n <= budget);
        assert_true(irc_utf8_valid(s, n));
        assert_null(strpbrk(s, "\r\n\x01"));
        assert_true(1 + strlen(nick) + 1 + ul + 1 + hl + 9 + strlen(target) +
                    2 + n + 2 <= 512);
    }
}

/* Concatenate the lines with no separator, dropping spaces, to compare
 * with the input's non-space characters. */
static char *squash(const char *s)
{
    char *out = malloc(strlen(s) + 1);
    size_t w = 0;

    assert_non_null(out);
    for (; *s; s++)
        if (*s != ' ' && *s != '\n')
            out[w++] = *s;
    out[w] = '\0';
    return out;
}

static void test_split_utf8(void **state)
{
    /* 3,000+ bytes of mixed emoji, CJK and ASCII, several paragraphs. */
    const char *parts[] = {"hello ", "\xf0\x9f\x98\x80", "\xe4\xb8\xad\xe6\x96"
                           "\x87", " word", "\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
                           "\n", "\xc3\xa9t\xc3\xa9 "};
    char *text = malloc(8192), *a, *b, *joined;
    struct irc_lines l;
    size_t budget, i, w = 0, k = 0;

    (void)state;
    assert_non_null(text);
    while (w < 3200) {
        const char *p = parts[k++ % 7];

        memcpy(text + w, p, strlen(p));
        w += strlen(p);
        if (k % 50 == 0) {
            /* A 600-byte word without spaces. */
            for (i = 0; i < 150; i++) {
                memcpy(text + w, "\xe4\xb8\xad", 3);
                w += 3;
            }
        }
    }
    text[w] = '\0';
    budget = irc_text_budget("PRIVMSG", "parley", 0, 0, "#chan");
    assert_int_equal(irc_split_text(text, budget, &l), PARLEY_OK);
    assert_true(l.n > 5);
    check_lines(&l, budget, "parley", 11, 63, "#chan");
    joined = calloc(1, w + 1);
    assert_non_null(joined);
    {
        size_t pos = 0;

        for (i = 0; i < l.n; i++) {
            size_t n = strlen(l.v[i]);

            assert_true(pos + n <= w);
            memcpy(joined + pos, l.v[i], n);
            pos += n;
        }
        joined[pos] = '\0';
    }
    a = squash(text);
    b = squash(joined);
    assert_string_equal(a, b);
    free(a);
    free(b);
    free(joined);
    irc_lines_free(&l);
    /* Tiny budgets still give whole characters. */
    assert_int_equal(irc_split_text(text, 5, &l), PARLEY_OK);
    check_lines(&l, 5, "p", 0, 0, "#");
    irc_lines_free(&l);
    assert_int_equal(irc_split_text(text, 3, &l), PARLEY_ERR_TOO_LARGE);
    free(text);
}

static void test_split_words(void **state)
{
    struct irc_lines l;

    (void)state;
    assert_int_equal(irc_split_text("aaaa bbbb cccc dddd", 10, &l),
                     PARLEY_OK);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.v[0], "aaaa bbbb");
    assert_string_equal(l.v[1], "cccc dddd");
    irc_lines_free(&l);
    assert_int_equal(irc_split_text("\n\n  \n\t\nx\n", 10, &l), PARLEY_OK);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.v[0], "x");
    irc_lines_free(&l);
    assert_int_equal(irc_split_text("", 10, &l), PARLEY_OK);
    assert_int_equal(l.n, 0);
    irc_lines_free(&l);
}

static void test_split_injection(void **state)
{
    const char *attacks[] = {
        "hi\r\nQUIT :bye",
        "\x01" "ACTION x\x01",
        "\r\nPRIVMSG NickServ :IDENTIFY secret",
        "a\rb\x01" "c\x7f\x1b[31mred\x0b\x0c",
        "\xff\xfe\r\n\x01",
    };
    struct irc_lines l;
    size_t i, j;

    (void)state;
    for (i = 0; i < sizeof(attacks) / sizeof(attacks[0]); i++) {
        assert_int_equal(irc_split_text(attacks[i], 400, &l), PARLEY_OK);
        check_lines(&l, 400, "n", 0, 0, "#c");
        for (j = 0; j < l.n; j++) {
            const char *s = l.v[j];

            for (; *s; s++)
                assert_true((unsigned char)*s >= 0x20 &&
                            (unsigned char)*s != 0x7f);
        }
        irc_lines_free(&l);
    }
    /* A newline in the text becomes a separate PRIVMSG, never a command:
     * "QUIT :bye" is only ever the text of a line. */
    assert_int_equal(irc_split_text("hi\r\nQUIT :bye", 400, &l), PARLEY_OK);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.v[0], "hi");
    assert_string_equal(l.v[1], "QUIT :bye");
    irc_lines_free(&l);
    assert_int_equal(irc_split_text("\x01" "ACTION x\x01", 400, &l),
                     PARLEY_OK);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.v[0], "ACTION x");
    irc_lines_free(&l);
}

static void test_split_caps(void **state)
{
    char *big = malloc(IRC_REPLY_MAX * 2 + 1);
    struct irc_lines l;

    (void)state;
    assert_non_null(big);
    memset(big, 'x', IRC_REPLY_MAX * 2);
    big[IRC_REPLY_MAX * 2] = '\0';
    assert_int_equal(irc_split_text(big, 10, &l), PARLEY_OK);
    assert_true(l.n <= IRC_REPLY_LINES_MAX);
    irc_lines_free(&l);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_markdown),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_split_utf8),
        cmocka_unit_test(test_split_words),
        cmocka_unit_test(test_split_injection),
        cmocka_unit_test(test_split_caps),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
