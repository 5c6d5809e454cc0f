/*
 * Tests for src/log.c.  stderr is pointed at a temporary file around each
 * log call (dup2), and the file is read back, so what is checked is the
 * exact bytes an operator or a log collector would see: the line format,
 * level filtering, redaction of registered secrets (also when a line is
 * truncated in the middle of one), escaping of CR/LF and other control
 * characters, and the LOG_LINE_MAX bound.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "status.h"

/* More than one line's worth, to read back whatever was written. */
#define CAPTURE_MAX (4 * LOG_LINE_MAX)

static char captured[CAPTURE_MAX];
static int saved_stderr = -1;
static FILE *capture_file;

static void
capture_start(void)
{
    capture_file = tmpfile();
    assert_non_null(capture_file);
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(saved_stderr >= 0);
    assert_true(dup2(fileno(capture_file), STDERR_FILENO) >= 0);
}

/* Restore stderr; captured holds what was written (NUL-terminated). */
static size_t
capture_end(void)
{
    size_t n;

    fflush(stderr);
    assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
    close(saved_stderr);
    saved_stderr = -1;
    rewind(capture_file);
    n = fread(captured, 1, sizeof(captured) - 1, capture_file);
    captured[n] = '\0';
    fclose(capture_file);
    capture_file = NULL;
    return n;
}

static int
reset(void **state)
{
    log_forget_secrets();
    log_set_level(LOG_LEVEL_INFO);
    log_set_format(LOG_FORMAT_TEXT);
    return 0;
}

/* The message part of a single captured line (after "TIMESTAMP LEVEL "),
 * with the newline removed.  Asserts the line's shape on the way. */
static const char *
message_of(const char *level)
{
    static char msg[CAPTURE_MAX];
    const char *p = captured;
    size_t n = strlen(captured), i;

    /* 2026-11-26T13:45:27.123Z */
    assert_true(n > 25);
    for (i = 0; i < 24; i++) {
        if (i == 4 || i == 7)
            assert_int_equal(p[i], '-');
        else if (i == 10)
            assert_int_equal(p[i], 'T');
        else if (i == 13 || i == 16)
            assert_int_equal(p[i], ':');
        else if (i == 19)
            assert_int_equal(p[i], '.');
        else if (i == 23)
            assert_int_equal(p[i], 'Z');
        else
            assert_true(p[i] >= '0' && p[i] <= '9');
    }
    assert_int_equal(p[24], ' ');
    p += 25;
    assert_int_equal(strncmp(p, level, strlen(level)), 0);
    p += strlen(level);
    assert_int_equal(*p, ' ');
    p++;
    /* Exactly one line. */
    assert_int_equal(captured[n - 1], '\n');
    assert_null(memchr(captured, '\n', n - 1));
    snprintf(msg, sizeof(msg), "%.*s", (int)(captured + n - 1 - p), p);
    return msg;
}

static void
test_format_and_levels(void **state)
{
    capture_start();
    log_info("hello %s %d", "world", 42);
    capture_end();
    assert_string_equal(message_of("INFO"), "hello world 42");

    capture_start();
    log_warn("w");
    capture_end();
    assert_string_equal(message_of("WARN"), "w");

    capture_start();
    log_error("e");
    capture_end();
    assert_string_equal(message_of("ERROR"), "e");

    /* Below the level: nothing at all. */
    capture_start();
    log_debug("hidden");
    capture_end();
    assert_string_equal(captured, "");

    log_set_level(LOG_LEVEL_WARN);
    assert_int_equal(log_get_level(), LOG_LEVEL_WARN);
    capture_start();
    log_info("hidden");
    log_debug("hidden");
    log_warn("shown");
    capture_end();
    assert_string_equal(message_of("WARN"), "shown");

    log_set_level(LOG_LEVEL_DEBUG);
    capture_start();
    log_debug("dbg");
    capture_end();
    assert_string_equal(message_of("DEBUG"), "dbg");

    log_set_level(LOG_LEVEL_ERROR);
    capture_start();
    log_warn("hidden");
    capture_end();
    assert_string_equal(captured, "");

    /* Out-of-range levels are ignored. */
    log_set_level((enum log_level)42);
    assert_int_equal(log_get_level(), LOG_LEVEL_ERROR);
}

static void
test_level_parse(void **state)
{
    enum log_level level = LOG_LEVEL_ERROR;

    assert_int_equal(log_level_parse("debug", &level), 0);
    assert_int_equal(level, LOG_LEVEL_DEBUG);
    assert_int_equal(log_level_parse("INFO", &level), 0);
    assert_int_equal(level, LOG_LEVEL_INFO);
    assert_int_equal(log_level_parse("warn", &level), 0);
    assert_int_equal(level, LOG_LEVEL_WARN);
    assert_int_equal(log_level_parse("Warning", &level), 0);
    assert_int_equal(level, LOG_LEVEL_WARN);
    assert_int_equal(log_level_parse("error", &level), 0);
    assert_int_equal(level, LOG_LEVEL_ERROR);
    assert_int_equal(log_level_parse("verbose", &level), -1);
    assert_int_equal(log_level_parse("", &level), -1);
    assert_int_equal(log_level_parse("info ", &level), -1);
    assert_int_equal(log_level_parse(NULL, &level), -1);
    assert_int_equal(level, LOG_LEVEL_ERROR);
}

static void
test_redaction_in_lines(void **state)
{
    const char *msg;

    assert_int_equal(log_add_secret("sk-live-ABCDEF123456"), 0);
    assert_int_equal(log_add_secret("hunter22"), 0);
    capture_start();
    log_error("auth failed for key sk-live-ABCDEF123456 (pw hunter22), "
              "again sk-live-ABCDEF123456");
    capture_end();
    msg = message_of("ERROR");
    assert_string_equal(msg, "auth failed for key [redacted] (pw "
                             "[redacted]), again [redacted]");
    assert_null(strstr(captured, "ABCDEF"));

    /* Glued to other text, and in a %s argument. */
    capture_start();
    log_info("Bearer=%s;", "xsk-live-ABCDEF123456y");
    capture_end();
    assert_string_equal(message_of("INFO"), "Bearer=x[redacted]y;");

    /* After forgetting, printed as is (the table was wiped). */
    log_forget_secrets();
    capture_start();
    log_info("hunter22");
    capture_end();
    assert_string_equal(message_of("INFO"), "hunter22");
}

static void
test_redact_rules(void **state)
{
    char buf[256];
    int i;

    /* Short secrets are ignored: they would mangle ordinary text. */
    assert_int_equal(log_add_secret("abc"), 0);
    assert_int_equal(log_add_secret(""), 0);
    assert_int_equal(log_add_secret(NULL), 0);
    snprintf(buf, sizeof(buf), "abc abcd");
    log_redact(buf, sizeof(buf));
    assert_string_equal(buf, "abc abcd");

    /* Overlapping secrets leave no tail of the second. */
    assert_int_equal(log_add_secret("AAAABBBB"), 0);
    assert_int_equal(log_add_secret("BBBBCCCC"), 0);
    snprintf(buf, sizeof(buf), "x AAAABBBBCCCC y");
    log_redact(buf, sizeof(buf));
    assert_string_equal(buf, "x [redacted] y");

    /* Adding the same secret twice uses one slot. */
    log_forget_secrets();
    for (i = 0; i < LOG_SECRETS_MAX * 2; i++)
        assert_int_equal(log_add_secret("same-secret"), 0);
    for (i = 1; i < LOG_SECRETS_MAX; i++) {
        char s[32];

        snprintf(s, sizeof(s), "secret-number-%03d", i);
        assert_int_equal(log_add_secret(s), 0);
    }
    /* Full: refused, so the caller can fail closed. */
    assert_int_equal(log_add_secret("one-too-many"), PARLEY_ERR_TOO_LARGE);
    snprintf(buf, sizeof(buf), "same-secret secret-number-015 one-too-many");
    log_redact(buf, sizeof(buf));
    assert_string_equal(buf, "[redacted] [redacted] one-too-many");
    /* A slot freed by a removal can be used again. */
    assert_int_equal(log_remove_secret("secret-number-015"), PARLEY_OK);
    assert_int_equal(log_add_secret("one-too-many"), PARLEY_OK);
    log_forget_secrets();
}

/* A configuration with many channel keys, passwords and tokens: far more
 * than 16 secrets, every one of them redacted. */
static void
test_many_secrets(void **state)
{
    char buf[256], s[32];
    int i;

    log_forget_secrets();
    for (i = 0; i < 200; i++) {
        snprintf(s, sizeof(s), "channel-key-%03d", i);
        assert_int_equal(log_add_secret(s), PARLEY_OK);
    }
    for (i = 0; i < 200; i += 37) {
        snprintf(s, sizeof(s), "channel-key-%03d", i);
        snprintf(buf, sizeof(buf), "JOIN #c%d %s", i, s);
        log_redact(buf, sizeof(buf));
        snprintf(s, sizeof(s), "JOIN #c%d [redacted]", i);
        assert_string_equal(buf, s);
    }
    log_forget_secrets();
}

/* A replaced access token is dropped; a secret registered twice stays
 * redacted until it was removed twice. */
static void
test_remove_secret(void **state)
{
    char buf[128];

    log_forget_secrets();
    assert_int_equal(log_add_secret("syt_old_token_1234"), PARLEY_OK);
    assert_int_equal(log_add_secret("syt_new_token_5678"), PARLEY_OK);
    assert_int_equal(log_remove_secret("syt_old_token_1234"), PARLEY_OK);
    snprintf(buf, sizeof(buf), "syt_old_token_1234 syt_new_token_5678");
    log_redact(buf, sizeof(buf));
    assert_string_equal(buf, "syt_old_token_1234 [redacted]");
    assert_int_equal(log_remove_secret("syt_old_token_1234"),
                     PARLEY_ERR_STATE);
    assert_int_equal(log_remove_secret("abc"), PARLEY_ERR_STATE);
    assert_int_equal(log_remove_secret(NULL), PARLEY_ERR_STATE);

    assert_int_equal(log_add_secret("shared-secret"), PARLEY_OK);
    assert_int_equal(log_add_secret("shared-secret"), PARLEY_OK);
    assert_int_equal(log_remove_secret("shared-secret"), PARLEY_OK);
    snprintf(buf, sizeof(buf), "shared-secret");
    log_redact(buf, sizeof(buf));
    assert_string_equal(buf, "[redacted]");
    assert_int_equal(log_remove_secret("shared-secret"), PARLEY_OK);
    snprintf(buf, sizeof(buf), "shared-secret");
    log_redact(buf, sizeof(buf));
    assert_string_equal(buf, "shared-secret");
    log_forget_secrets();
}

/* log_redact in place: the replacement is longer than a short secret, so
 * a full buffer is cut, never leaving half a secret. */
static void
test_redact_in_place_bounds(void **state)
{
    char buf[16];
    char big[3000];
    size_t i;

    assert_int_equal(log_add_secret("k3y!"), 0);
    assert_int_equal(log_add_secret("LONGSECRET-XYZ"), 0);
    snprintf(buf, sizeof(buf), "k3y! k3y! k3y!");
    log_redact(buf, sizeof(buf));
    /* "[redacted] " is 11; the second "[redacted]" does not fit. */
    assert_string_equal(buf, "[redacted] ");
    assert_null(strstr(buf, "k3y"));

    /* Unterminated input is terminated within its capacity. */
    memcpy(buf, "aaaaaaaaaaaaaaaa", sizeof(buf));
    log_redact(buf, sizeof(buf));
    assert_int_equal(strlen(buf), sizeof(buf) - 1);

    /* Longer than the stack buffer: the heap path. */
    for (i = 0; i + 1 < sizeof(big); i++)
        big[i] = 'a' + (char)(i % 26);
    big[sizeof(big) - 1] = '\0';
    memcpy(big + 2000, "LONGSECRET-XYZ", 14);
    log_redact(big, sizeof(big));
    assert_null(strstr(big, "LONGSECRET"));
    assert_non_null(strstr(big, "[redacted]"));

    log_redact(NULL, 10);
    log_redact(buf, 0);
}

static void
test_crlf_and_controls_escaped(void **state)
{
    capture_start();
    log_warn("user said: hi\r\nERROR fake line\n%s", "end");
    capture_end();
    assert_string_equal(message_of("WARN"),
                        "user said: hi\\r\\nERROR fake line\\nend");

    capture_start();
    log_info("esc\x1b[31mred\x7f tab\tkept caf\xc3\xa9 back\\slash");
    capture_end();
    assert_string_equal(message_of("INFO"),
                        "esc\\x1b[31mred\\x7f tab\tkept caf\xc3\xa9 "
                        "back\\slash");
}

static void
test_truncation(void **state)
{
    static char msg[3 * LOG_LINE_MAX];
    const char *m;
    size_t n;

    memset(msg, 'a', sizeof(msg) - 1);
    msg[sizeof(msg) - 1] = '\0';
    capture_start();
    log_info("%s", msg);
    n = capture_end();
    assert_true(n <= LOG_LINE_MAX);
    assert_true(n > LOG_LINE_MAX - 16);
    m = message_of("INFO");
    assert_non_null(strstr(m, "aaaa [truncated]"));
    assert_int_equal(strcmp(m + strlen(m) - 12, " [truncated]"), 0);

    /* Escapes are never cut in half: all \n, so every escape is 2 bytes. */
    memset(msg, '\n', LOG_LINE_MAX);
    msg[LOG_LINE_MAX] = '\0';
    capture_start();
    log_info("%s", msg);
    n = capture_end();
    assert_true(n <= LOG_LINE_MAX);
    m = message_of("INFO");
    assert_int_equal(strcmp(m + strlen(m) - 14, "\\n [truncated]"), 0);

    /* A message that fits exactly is not marked. */
    capture_start();
    log_info("short");
    capture_end();
    assert_null(strstr(captured, "[truncated]"));
}

/* The formatted message is cut at LOG_LINE_MAX - 1 bytes, here inside a
 * secret; redaction shrinks the rest so the cut part would be visible if
 * the tail were not recognised as the start of a secret. */
static void
test_truncation_inside_secret(void **state)
{
    static const char secret[] = "QZJX-0123456789-ABCDEFG";  /* 23 */
    static char msg[2 * LOG_LINE_MAX];
    size_t used = 0;
    const char *m;

    assert_int_equal(log_add_secret(secret), 0);
    /* Units of secret + " " are 24 bytes; 4095 = 170 * 24 + 15, so the
     * cut leaves the first 15 bytes of the 171st secret. */
    while (used + 24 < sizeof(msg)) {
        memcpy(msg + used, secret, 23);
        msg[used + 23] = ' ';
        used += 24;
    }
    msg[used] = '\0';
    capture_start();
    log_error("%s", msg);
    capture_end();
    m = message_of("ERROR");
    assert_null(strstr(m, "QZJX"));
    assert_null(strstr(m, "0123456789"));
    assert_non_null(strstr(m, "[redacted] [redacted] [truncated]"));
}

static void
test_errno_preserved(void **state)
{
    errno = ENOENT;
    capture_start();
    log_info("x");
    capture_end();
    assert_int_equal(errno, ENOENT);
}

/* JSON lines are one object with ts, level, msg (and room fields from
 * log_room), with quotes, backslashes and controls escaped. */
static void
test_json_and_room_fields(void **state)
{
    (void)state;
    log_set_format(LOG_FORMAT_JSON);
    assert_int_equal(log_add_secret("hunter2-secret"), 0);
    capture_start();
    log_info("say \"hi\"\\ tab\there\x01 key hunter2-secret");
    capture_end();
    assert_non_null(strstr(captured, "\"level\":\"info\",\"msg\":\"say "
                           "\\\"hi\\\"\\\\ tab\\there\\u0001 key "
                           "[redacted]\"}\n"));
    assert_true(strncmp(captured, "{\"ts\":\"", 7) == 0);
    capture_start();
    log_room(LOG_LEVEL_WARN, "irc", "#chan\"x", "queue %s", "full");
    capture_end();
    assert_non_null(strstr(captured, "\"level\":\"warn\",\"platform\":"
                           "\"irc\",\"room\":\"#chan\\\"x\",\"msg\":"
                           "\"queue full\"}\n"));
    log_set_format(LOG_FORMAT_TEXT);
    capture_start();
    log_room(LOG_LEVEL_ERROR, "matrix", "!r:hs", "no answer");
    capture_end();
    assert_non_null(strstr(captured, " ERROR [matrix !r:hs] no answer\n"));
    {
        enum log_format f;

        assert_int_equal(log_format_parse("json", &f), 0);
        assert_int_equal(f, LOG_FORMAT_JSON);
        assert_int_equal(log_format_parse("xml", &f), -1);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_format_and_levels, reset),
        cmocka_unit_test_setup(test_level_parse, reset),
        cmocka_unit_test_setup(test_redaction_in_lines, reset),
        cmocka_unit_test_setup(test_redact_rules, reset),
        cmocka_unit_test_setup(test_many_secrets, reset),
        cmocka_unit_test_setup(test_remove_secret, reset),
        cmocka_unit_test_setup(test_redact_in_place_bounds, reset),
        cmocka_unit_test_setup(test_crlf_and_controls_escaped, reset),
        cmocka_unit_test_setup(test_truncation, reset),
        cmocka_unit_test_setup(test_truncation_inside_secret, reset),
        cmocka_unit_test_setup(test_errno_preserved, reset),
        cmocka_unit_test_setup(test_json_and_room_fields, reset),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
