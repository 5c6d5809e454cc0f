/*
 * Unit tests of the Matrix adapter's text and format helpers: reply
 * fallback stripping, mention detection, UTF-8 cleaning, @room defusing,
 * URL escaping, txnIds, room/thread split, invite allowlist, the HTML
 * sanitizer against script/onerror/javascript: payloads, the outgoing
 * message content (m.mentions, m.relates_to, threads), request bodies,
 * error bodies and the config block.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <libconfig.h>

#include "log.h"
#include "matrix/matrix.h"
#include "status.h"

static const struct matrix_ident me = {
    "@parley:localhost", "parley", "Parley Bot"
};

static void test_body_fallback(void **state)
{
    char q[64];

    (void)state;
    assert_string_equal(matrix_strip_body_fallback(
        "> <@a:s> hi\n> there\n\nreal", q, sizeof(q)), "real");
    assert_string_equal(q, "@a:s");
    assert_string_equal(matrix_strip_body_fallback(
        "> * <@a:s> waves\n\nok", q, sizeof(q)), "ok");
    assert_string_equal(q, "@a:s");
    /* No blank line: not a fallback, keep everything. */
    assert_string_equal(matrix_strip_body_fallback("> a\nb", q, sizeof(q)),
                        "> a\nb");
    assert_string_equal(q, "");
    assert_string_equal(matrix_strip_body_fallback("> only", q, sizeof(q)),
                        "> only");
    assert_string_equal(matrix_strip_body_fallback("plain", q, sizeof(q)),
                        "plain");
    assert_string_equal(matrix_strip_body_fallback("> <x\n\ny", q, 2), "y");
    assert_string_equal(q, "");
    assert_string_equal(matrix_strip_body_fallback(
        "> <@a:s> x\r\n\r\ny", NULL, 0), "y");
}

static void test_html_fallback(void **state)
{
    char a[] = "<mx-reply><blockquote>q</blockquote></mx-reply>answer";
    char b[] = "x<MX-REPLY>q</Mx-Reply>y<mx-reply>z";
    char c[] = "no fallback";

    (void)state;
    matrix_strip_html_fallback(a);
    assert_string_equal(a, "answer");
    matrix_strip_html_fallback(b);
    assert_string_equal(b, "xy");
    matrix_strip_html_fallback(c);
    assert_string_equal(c, "no fallback");
    matrix_strip_html_fallback(NULL);
}

static void test_mentions(void **state)
{
    (void)state;
    assert_true(matrix_text_mentions("hey @parley:localhost!", &me));
    assert_true(matrix_text_mentions("PARLEY, help", &me));
    assert_true(matrix_text_mentions("ask parley bot", &me));
    assert_true(matrix_text_mentions("hi Parley Bot.", &me));
    assert_true(matrix_text_mentions("<a href=\"https://matrix.to/#/"
                                     "%40parley%3Alocalhost\">x</a>", &me));
    assert_false(matrix_text_mentions("parleys and parleying", &me));
    assert_false(matrix_text_mentions("@parley:localhostx", &me) &&
                 !matrix_text_mentions("parley", &me));
    assert_false(matrix_text_mentions("nothing here", &me));
    assert_false(matrix_text_mentions("éparley", &me));
    assert_false(matrix_text_mentions(NULL, &me));
}

static void test_utf8_clean(void **state)
{
    char *s;

    (void)state;
    s = matrix_utf8_clean("ok \xc3\xa9", 5, 100);
    assert_string_equal(s, "ok \xc3\xa9");
    free(s);
    /* Overlong, surrogate, truncated, > U+10FFFF. */
    s = matrix_utf8_clean("\xc0\xaf|\xed\xa0\x80|\xe2\x82|\xf4\x90\x80\x80",
                          15, 1000);
    assert_non_null(s);
    assert_null(strstr(s, "\xc0"));
    assert_null(strstr(s, "\xed\xa0"));
    assert_null(strstr(s, "\xf4\x90"));
    free(s);
    /* Cut on a character boundary. */
    s = matrix_utf8_clean("a\xc3\xa9", 3, 2);
    assert_string_equal(s, "a");
    free(s);
}

static void test_room_ping(void **state)
{
    char *s = matrix_neutralise_room_ping("hi @room and @ROOM, @roommate");

    (void)state;
    assert_non_null(s);
    assert_null(strstr(s, "@room"));
    assert_null(strstr(s, "@ROOM"));
    assert_non_null(strstr(s, "@\xe2\x81\xa0room and @\xe2\x81\xa0ROOM"));
    free(s);
}

static void test_url_txn_room(void **state)
{
    char buf[64], t1[MATRIX_TXN_MAX], t2[MATRIX_TXN_MAX];
    const char *thread;
    size_t i;

    (void)state;
    assert_int_equal(matrix_url_escape("!a/b:s?x#y", buf, sizeof(buf)),
                     PARLEY_OK);
    assert_string_equal(buf, "%21a%2Fb%3As%3Fx%23y");
    assert_int_equal(matrix_url_escape("$abc-_.~", buf, sizeof(buf)),
                     PARLEY_OK);
    assert_string_equal(buf, "%24abc-_.~");
    assert_int_equal(matrix_url_escape("!!!!!!!!", buf, 10),
                     PARLEY_ERR_TOO_LARGE);
    assert_int_equal(matrix_txn_id("$ev1:localhost", t1, sizeof(t1)),
                     PARLEY_OK);
    assert_int_equal(matrix_txn_id("$ev1:localhost", t2, sizeof(t2)),
                     PARLEY_OK);
    assert_string_equal(t1, t2);
    assert_int_equal(strlen(t1), 7 + 32);
    for (i = 0; t1[i]; i++)
        assert_true(strchr("parley-0123456789abcdef", t1[i]) != NULL);
    assert_int_equal(matrix_txn_id("$ev2:localhost", t2, sizeof(t2)),
                     PARLEY_OK);
    assert_string_not_equal(t1, t2);
    assert_int_equal(matrix_txn_id("x", t2, 10), PARLEY_ERR_TOO_LARGE);

    assert_int_equal(matrix_room_split("!r:s", buf, sizeof(buf), &thread),
                     PARLEY_OK);
    assert_string_equal(buf, "!r:s");
    assert_null(thread);
    assert_int_equal(matrix_room_split("!r:s/$root", buf, sizeof(buf),
                                       &thread), PARLEY_OK);
    assert_string_equal(buf, "!r:s");
    assert_string_equal(thread, "$root");
    assert_int_equal(matrix_room_split("#alias:s", buf, sizeof(buf),
                                       &thread), PARLEY_ERR_PROTOCOL);
    assert_int_equal(matrix_room_split("!r:s", buf, 3, &thread),
                     PARLEY_ERR_TOO_LARGE);
}

static void test_allowlist(void **state)
{
    const char *allow[] = { "@admin:example.org", ":trusted.org" };

    (void)state;
    assert_true(matrix_allow_match("@admin:example.org", allow, 2));
    assert_true(matrix_allow_match("@anyone:trusted.org", allow, 2));
    assert_false(matrix_allow_match("@eve:example.org", allow, 2));
    assert_false(matrix_allow_match("@x:trusted.org.evil", allow, 2));
    assert_false(matrix_allow_match("@x:evil.trusted.org", allow, 2));
    assert_false(matrix_allow_match(NULL, allow, 2));
    assert_false(matrix_allow_match("@admin:example.org", allow, 0));
}

/* Whether word appears inside a tag (between '<' and the next '>'):
 * escaped text may mention "onclick", a live attribute may not. */
static int in_tag(const char *h, const char *word)
{
    const char *lt;

    for (lt = strchr(h, '<'); lt; lt = strchr(lt + 1, '<')) {
        const char *gt = strchr(lt, '>');
        const char *w = strcasestr(lt, word);

        if (w && (!gt || w < gt))
            return 1;
    }
    return 0;
}

static void assert_safe_html(const char *h)
{
    assert_non_null(h);
    assert_null(strcasestr(h, "<script"));
    assert_false(in_tag(h, "onerror"));
    assert_false(in_tag(h, "javascript:"));
    assert_null(strcasestr(h, "<img"));
    assert_null(strcasestr(h, "<iframe"));
    assert_false(in_tag(h, "style="));
}

static void test_sanitize(void **state)
{
    static const char *evil[] = {
        "<script>alert(1)</script>ok",
        "<img src=x onerror=alert(1)>",
        "<IMG SRC=\"javascript:alert(1)\">",
        "<a href=\"javascript:alert(1)\">x</a>",
        "<a href=\" javascript:alert(1)\">x</a>",
        "<a href=\"java&#115;cript:alert(1)\">x</a>",
        "<a href='https://ok' onclick='x()'>x</a>",
        "<p style=\"x\" onmouseover=\"y\">t</p>",
        "<iframe src=\"https://x\"></iframe>",
        "<scr<script>ipt>alert(1)</script>",
        "<<script>>", "<a href=\"x\" <script>", "</script><script",
        "<svg/onload=alert(1)>", "<!-- <script> -->", "<!--",
        "<a href=\"https://x\"\"onclick=\"y\">z</a>",
    };
    char *h;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(evil) / sizeof(evil[0]); i++) {
        h = matrix_html_sanitize(evil[i], strlen(evil[i]));
        assert_safe_html(h);
        assert_false(in_tag(h, "onclick"));
        assert_false(in_tag(h, "onmouseover"));
        assert_false(in_tag(h, "onload"));
        assert_false(in_tag(h, "onerror"));
        free(h);
    }
    h = matrix_html_sanitize("<p>a <strong>b</strong> <a href=\"https://x.y/"
                             "?a=1&amp;b=2\" target=\"_blank\">l</a></p>"
                             "<code class=\"language-c\">x</code>", 200);
    assert_string_equal(h, "<p>a <strong>b</strong> <a href=\"https://x.y/"
                        "?a=1&amp;b=2\" target=\"_blank\">l</a></p>"
                        "<code class=\"language-c\">x</code>");
    free(h);
    h = matrix_html_sanitize("<img src=\"mxc://s/id\" alt=\"a\">", 30);
    assert_string_equal(h, "<img src=\"mxc://s/id\" alt=\"a\">");
    free(h);
    h = matrix_html_sanitize("1 < 2 > 0", 9);
    assert_string_equal(h, "1 &lt; 2 &gt; 0");
    free(h);
}

static void test_markdown(void **state)
{
    char *h;

    (void)state;
    h = matrix_markdown_to_html("**bold** and `code`\n\n- a\n- b", 28);
    assert_non_null(h);
    assert_non_null(strstr(h, "<strong>bold</strong>"));
    assert_non_null(strstr(h, "<code>code</code>"));
    assert_non_null(strstr(h, "<li>a</li>"));
    free(h);
    h = matrix_markdown_to_html("<script>alert(1)</script> [x](javascript:"
                                "alert(1)) ![i](http://x/y.png) <img src=x "
                                "onerror=alert(1)>", 96);
    assert_safe_html(h);
    /* Raw HTML is shown as text, not dropped (else the answer would be
     * empty in HTML clients). */
    assert_non_null(strstr(h, "&lt;script&gt;alert(1)&lt;/script&gt;"));
    free(h);
    h = matrix_markdown_to_html("<div onclick=x>\nblock\n</div>\n\nok",
                                32);
    assert_safe_html(h);
    assert_false(in_tag(h, "onclick"));
    assert_non_null(strstr(h, "&lt;div onclick=x&gt;"));
    assert_non_null(strstr(h, "<p>ok</p>"));
    free(h);
}

/*
 * What a client shows for html: tags are skipped, character references
 * (decimal, hex, with or without ';', and the named ones that can spell
 * '@') are decoded once, the rest is copied.  Independent of the code
 * under test, so it checks the promise, not the implementation.
 */
static void html_visible(const char *html, char *out, size_t len)
{
    size_t o = 0;
    const char *p = html;

    while (*p && o + 1 < len) {
        if (*p == '<') {
            const char *gt = strchr(p, '>');

            p = gt ? gt + 1 : p + strlen(p);
            continue;
        }
        if (p[0] == '&' && p[1] == '#') {
            int hex = p[2] == 'x' || p[2] == 'X';
            char *end;
            long v = strtol(p + 2 + hex, &end, hex ? 16 : 10);

            if (end > p + 2 + hex && v > 0 && v < 128) {
                out[o++] = (char)v;
                p = *end == ';' ? end + 1 : end;
                continue;
            }
        }
        if (strncasecmp(p, "&commat;", 8) == 0) {
            out[o++] = '@';
            p += 8;
            continue;
        }
        out[o++] = *p++;
    }
    out[o] = '\0';
}

static void test_room_ping_entities(void **state)
{
    static const char *const texts[] = {
        "&#64;room", "&#064;room", "&#x40;room", "&#X40;ROOM", "&#x040;Room",
        "&commat;room", "&#64room", "@&#114;oom", "&#64;&#x72;&#111;om",
        "@&#82;OOM", "**&#64;room**", "see &#64;room now", "@*room*",
        "[&#64;room](https://example.org)", "`&#64;room`", "@\\room",
    };
    char visible[512];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct matrix_out o;
        char *json;
        cJSON *c;

        memset(&o, 0, sizeof(o));
        o.text = texts[i];
        assert_int_equal(matrix_content_build(&o, &json), PARLEY_OK);
        c = cJSON_Parse(json);
        assert_non_null(c);
        html_visible(cJSON_GetObjectItem(c, "formatted_body")->valuestring,
                     visible, sizeof(visible));
        if (strcasestr(visible, "@room"))
            fail_msg("\"%s\" shows @room: %s", texts[i], visible);
        cJSON_Delete(c);
        free(json);
    }
}

static void test_html_room_ping(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        { "@room", "@\xe2\x81\xa0room" },
        { "&#64;room", "&#64;\xe2\x81\xa0room" },
        { "&#x40;&#x52;oom", "&#x40;\xe2\x81\xa0&#x52;oom" },
        { "&COMMAT;room", "&COMMAT;\xe2\x81\xa0room" },
        { "&commatroom", "&commat\xe2\x81\xa0room" },
        { "&#0064ROOM", "&#0064\xe2\x81\xa0ROOM" },
        { "@<b>ro</b>om", "@\xe2\x81\xa0<b>ro</b>om" },
        /* The reader sees "&#64;room" literally: no ping, no change. */
        { "&amp;#64;room", "&amp;#64;room" },
        { "@roo", "@roo" },
        { "@", "@" },
        { "&#", "&#" },
        { "&#64", "&#64" },
        { "&#99999999999999999999;room", "&#99999999999999999999;room" },
        /* Attribute values are not text: the link keeps its address. */
        { "<a href=\"mailto:x@room.org\">x</a>",
          "<a href=\"mailto:x@room.org\">x</a>" },
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *h = matrix_html_neutralise_room_ping(cases[i].in);

        assert_non_null(h);
        assert_string_equal(h, cases[i].out);
        free(h);
    }
    assert_null(matrix_html_neutralise_room_ping(NULL));
}

/* Re-logins replace the token: the new one is redacted, the dead one is
 * dropped from the logger's table (else it fills up and, failing closed,
 * stops the account); the environment's token stays registered. */
static void test_token_set(void **state)
{
    char token[64], buf[128];
    int i;

    (void)state;
    log_forget_secrets();
    token[0] = '\0';
    assert_int_equal(log_add_secret("syt_env_token_0"), PARLEY_OK);
    assert_int_equal(matrix_token_set(token, sizeof(token), "syt_env_token_0",
                                      "syt_env_token_0"), PARLEY_OK);
    assert_string_equal(token, "syt_env_token_0");
    for (i = 1; i <= 2 * LOG_SECRETS_MAX; i++) {
        char t[32];

        snprintf(t, sizeof(t), "syt_login_token_%d", i);
        assert_int_equal(matrix_token_set(token, sizeof(token), t,
                                          "syt_env_token_0"), PARLEY_OK);
    }
    snprintf(buf, sizeof(buf), "%s syt_login_token_1 syt_env_token_0",
             token);
    log_redact(buf, sizeof(buf));
    assert_string_equal(buf, "[redacted] syt_login_token_1 [redacted]");
    /* Cleared before a new login: no token, nothing left registered. */
    assert_int_equal(matrix_token_set(token, sizeof(token), "",
                                      "syt_env_token_0"), PARLEY_OK);
    assert_string_equal(token, "");
    snprintf(buf, sizeof(buf), "syt_login_token_%d", 2 * LOG_SECRETS_MAX);
    log_redact(buf, sizeof(buf));
    assert_non_null(strstr(buf, "syt_login_token_"));
    /* Too long for the buffer: refused, buffer wiped. */
    assert_int_equal(matrix_token_set(token, 8, "syt_too_long", NULL),
                     PARLEY_ERR_TOO_LARGE);
    assert_string_equal(token, "");
    log_forget_secrets();
}

/* Whether s is valid UTF-8 (no cut character). */
static int utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    while (*p) {
        int n = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 ? 1
                : (*p & 0xf0) == 0xe0 ? 2 : (*p & 0xf8) == 0xf0 ? 3 : -1;

        if (n < 0)
            return 0;
        for (p++; n > 0; n--, p++)
            if ((*p & 0xc0) != 0x80)
                return 0;
    }
    return 1;
}

/* Build the content for text and check the bound on the whole JSON. */
static cJSON *content_of(const char *text, size_t *len)
{
    struct matrix_out o;
    char *json;
    cJSON *c;

    memset(&o, 0, sizeof(o));
    o.text = text;
    o.mention = "@alice:localhost";
    o.in_reply_to = "$event-being-answered:localhost";
    o.thread_id = "$thread-root:localhost";
    assert_int_equal(matrix_content_build(&o, &json), PARLEY_OK);
    *len = strlen(json);
    assert_true(*len <= MATRIX_CONTENT_MAX);
    c = cJSON_Parse(json);
    assert_non_null(c);
    free(json);
    return c;
}

/* The whole event stays under the spec's 65,536 bytes: formatted_body
 * goes first, then the body is cut on a character boundary. */
static void test_content_bound(void **state)
{
    size_t n = MATRIX_BODY_MAX, i, len;
    char *text = malloc(n + 1);
    const char *body;
    cJSON *c;

    (void)state;
    assert_non_null(text);
    /* Markdown that doubles in HTML: the body fits, the HTML does not. */
    for (i = 0; i + 6 <= 40000; i += 6)
        memcpy(text + i, "**a** ", 6);
    text[i] = '\0';
    c = content_of(text, &len);
    assert_null(cJSON_GetObjectItem(c, "formatted_body"));
    assert_null(cJSON_GetObjectItem(c, "format"));
    assert_string_equal(cJSON_GetObjectItem(c, "body")->valuestring, text);
    assert_non_null(cJSON_GetObjectItem(c, "m.relates_to"));
    cJSON_Delete(c);

    /* Two-byte characters up to the body cap: cut between characters. */
    for (i = 0; i + 2 <= n; i += 2)
        memcpy(text + i, "\xc3\xa9", 2);
    text[i] = '\0';
    c = content_of(text, &len);
    body = cJSON_GetObjectItem(c, "body")->valuestring;
    assert_true(utf8_valid(body));
    assert_non_null(strstr(body, "[The answer was cut here"));
    assert_true(strlen(body) < strlen(text));
    assert_true(len > MATRIX_CONTENT_MAX - 512);
    cJSON_Delete(c);

    /* Quotes escape to two bytes each in JSON. */
    memset(text, '"', 60000);
    text[60000] = '\0';
    c = content_of(text, &len);
    body = cJSON_GetObjectItem(c, "body")->valuestring;
    assert_non_null(strstr(body, "[The answer was cut here"));
    assert_true(strlen(body) < 60000);
    cJSON_Delete(c);

    /* An ordinary answer keeps its HTML. */
    c = content_of("**hello**", &len);
    assert_non_null(cJSON_GetObjectItem(c, "formatted_body"));
    cJSON_Delete(c);
    free(text);
}

/* An m.replace edit (matrix_stream.c): the relation, the "* " fallback,
 * mentions only inside m.new_content, and the event bound. */
static void test_edit_content(void **state)
{
    struct matrix_out o;
    char *json, *text;
    cJSON *c, *nc, *rel, *m;
    size_t i;

    (void)state;
    memset(&o, 0, sizeof(o));
    o.text = "**hi** there";
    o.mention = "@alice:localhost";
    o.in_reply_to = "$question";
    o.thread_id = "$root";
    assert_int_equal(matrix_edit_content_build(&o, "$first", &json),
                     PARLEY_OK);
    c = cJSON_Parse(json);
    assert_non_null(c);
    assert_string_equal(cJSON_GetObjectItem(c, "body")->valuestring,
                        "* **hi** there");
    assert_string_equal(cJSON_GetObjectItem(c, "msgtype")->valuestring,
                        "m.text");
    rel = cJSON_GetObjectItem(c, "m.relates_to");
    assert_string_equal(cJSON_GetObjectItem(rel, "rel_type")->valuestring,
                        "m.replace");
    assert_string_equal(cJSON_GetObjectItem(rel, "event_id")->valuestring,
                        "$first");
    assert_null(cJSON_GetObjectItem(rel, "m.in_reply_to"));
    m = cJSON_GetObjectItem(c, "m.mentions");
    assert_non_null(m);
    assert_null(cJSON_GetObjectItem(m, "user_ids"));
    nc = cJSON_GetObjectItem(c, "m.new_content");
    assert_string_equal(cJSON_GetObjectItem(nc, "body")->valuestring,
                        "**hi** there");
    assert_non_null(strstr(cJSON_GetObjectItem(nc,
                           "formatted_body")->valuestring,
                           "<strong>hi</strong>"));
    assert_safe_html(cJSON_GetObjectItem(nc, "formatted_body")->valuestring);
    assert_null(cJSON_GetObjectItem(nc, "m.relates_to"));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(
        cJSON_GetObjectItem(nc, "m.mentions"), "user_ids")), 1);
    cJSON_Delete(c);
    free(json);

    /* The fallback notice of a broken stream; an answer far over one
     * event stays within it, the new content kept over the fallback. */
    text = malloc(200001);
    assert_non_null(text);
    for (i = 0; i < 200000; i++)
        text[i] = i % 7 == 6 ? ' ' : (i % 50 == 0 ? '*' : 'x');
    text[200000] = '\0';
    o.text = text;
    o.notice = 1;
    assert_int_equal(matrix_edit_content_build(&o, "$first", &json),
                     PARLEY_OK);
    assert_true(strlen(json) <= MATRIX_CONTENT_MAX);
    c = cJSON_Parse(json);
    assert_non_null(c);
    assert_string_equal(cJSON_GetObjectItem(c, "msgtype")->valuestring,
                        "m.notice");
    nc = cJSON_GetObjectItem(c, "m.new_content");
    assert_true(strlen(cJSON_GetObjectItem(nc, "body")->valuestring) >
                strlen(cJSON_GetObjectItem(c, "body")->valuestring));
    cJSON_Delete(c);
    free(json);
    free(text);
}

static void test_content(void **state)
{
    struct matrix_out o;
    char *json;
    cJSON *c, *rel, *m;

    (void)state;
    memset(&o, 0, sizeof(o));
    o.text = "<script>alert(1)</script> @room **hi**";
    o.mention = "@alice:localhost";
    o.in_reply_to = "$ev";
    assert_int_equal(matrix_content_build(&o, &json), PARLEY_OK);
    c = cJSON_Parse(json);
    assert_non_null(c);
    assert_string_equal(cJSON_GetObjectItem(c, "msgtype")->valuestring,
                        "m.text");
    assert_null(strstr(cJSON_GetObjectItem(c, "body")->valuestring,
                       "@room"));
    assert_string_equal(cJSON_GetObjectItem(c, "format")->valuestring,
                        "org.matrix.custom.html");
    assert_safe_html(cJSON_GetObjectItem(c, "formatted_body")->valuestring);
    assert_null(strstr(cJSON_GetObjectItem(c, "formatted_body")->valuestring,
                       "@room"));
    m = cJSON_GetObjectItem(c, "m.mentions");
    assert_non_null(m);
    assert_null(cJSON_GetObjectItem(m, "room"));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(m, "user_ids")),
                     1);
    rel = cJSON_GetObjectItem(c, "m.relates_to");
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(rel,
        "m.in_reply_to"), "event_id")->valuestring, "$ev");
    assert_null(cJSON_GetObjectItem(rel, "rel_type"));
    cJSON_Delete(c);
    free(json);

    /* Thread answer, notice, no mention, invalid UTF-8 text. */
    o.text = "bad \xff utf8";
    o.mention = NULL;
    o.thread_id = "$root";
    o.notice = 1;
    assert_int_equal(matrix_content_build(&o, &json), PARLEY_OK);
    c = cJSON_Parse(json);
    assert_non_null(c);
    assert_string_equal(cJSON_GetObjectItem(c, "msgtype")->valuestring,
                        "m.notice");
    assert_string_equal(cJSON_GetObjectItem(c, "body")->valuestring,
                        "bad \xef\xbf\xbd utf8");
    m = cJSON_GetObjectItem(c, "m.mentions");
    assert_non_null(m);
    assert_null(cJSON_GetObjectItem(m, "user_ids"));
    rel = cJSON_GetObjectItem(c, "m.relates_to");
    assert_string_equal(cJSON_GetObjectItem(rel, "rel_type")->valuestring,
                        "m.thread");
    assert_string_equal(cJSON_GetObjectItem(rel, "event_id")->valuestring,
                        "$root");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(rel, "is_falling_back")));
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(rel,
        "m.in_reply_to"), "event_id")->valuestring, "$ev");
    cJSON_Delete(c);
    free(json);
}

static void test_bodies(void **state)
{
    char *s;
    char user[64], dev[64], tok[64], code[32];
    long ra;
    cJSON *c;

    (void)state;
    assert_int_equal(matrix_login_body("@p:s", "pw\"1", "DEV", "parley",
                                       &s), PARLEY_OK);
    c = cJSON_Parse(s);
    assert_string_equal(cJSON_GetObjectItem(c, "type")->valuestring,
                        "m.login.password");
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(c,
        "identifier"), "type")->valuestring, "m.id.user");
    assert_string_equal(cJSON_GetObjectItem(c, "password")->valuestring,
                        "pw\"1");
    assert_string_equal(cJSON_GetObjectItem(c, "device_id")->valuestring,
                        "DEV");
    cJSON_Delete(c);
    free(s);
    assert_int_equal(matrix_filter_body(50, &s), PARLEY_OK);
    assert_non_null(strstr(s, "\"lazy_load_members\":true"));
    assert_non_null(strstr(s, "m.room.message"));
    free(s);

    assert_int_equal(matrix_parse_session("{\"user_id\":\"@p:s\","
        "\"device_id\":\"D\",\"access_token\":\"syt_x\"}", 57, user,
        sizeof(user), dev, sizeof(dev), tok, sizeof(tok)), PARLEY_OK);
    assert_string_equal(user, "@p:s");
    assert_string_equal(dev, "D");
    assert_string_equal(tok, "syt_x");
    assert_int_equal(matrix_parse_session("{\"user_id\":\"@p:s\"}", 18,
        user, sizeof(user), dev, sizeof(dev), NULL, 0), PARLEY_ERR_PROTOCOL);
    assert_int_equal(matrix_parse_session("nope", 4, user, sizeof(user),
        NULL, 0, NULL, 0), PARLEY_ERR_PROTOCOL);

    matrix_parse_error("{\"errcode\":\"M_LIMIT_EXCEEDED\","
                       "\"retry_after_ms\":1500}", 52, code, sizeof(code),
                       &ra);
    assert_string_equal(code, "M_LIMIT_EXCEEDED");
    assert_int_equal(ra, 1500);
    matrix_parse_error("<html>", 6, code, sizeof(code), &ra);
    assert_string_equal(code, "");
    assert_int_equal(ra, -1);
    matrix_parse_error("{\"retry_after_ms\":-5}", 21, code, sizeof(code),
                       &ra);
    assert_int_equal(ra, -1);
}

/* Parse text as a config with one adapter; returns the status. */
static int parse_cfg(const char *text, struct matrix_config *mc, char *err,
                     size_t errlen)
{
    char path[] = "/tmp/parley-mcfg-XXXXXX";
    int fd = mkstemp(path);
    config_t cf;
    config_setting_t *list;
    int r;

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    config_init(&cf);
    assert_int_equal(config_read_file(&cf, path), CONFIG_TRUE);
    list = config_lookup(&cf, "adapters");
    assert_non_null(list);
    r = matrix_config_parse(mc, config_setting_get_elem(list, 0), err,
                            errlen);
    config_destroy(&cf);
    unlink(path);
    return r;
}

static void test_config(void **state)
{
    struct matrix_config mc;
    char err[1024];

    (void)state;
    assert_int_equal(parse_cfg("adapters = ({ type = \"matrix\";\n"
        "homeserver = \"https://m.example.org/\";\n"
        "user_id = \"@parley:example.org\";\n"
        "password_env = \"MATRIX_PASSWORD\";\n"
        "allow_invites_from = [\"@admin:example.org\", \":example.org\"];\n"
        "thread_context = true; greet_on_join = false;\n"
        "greet_members_max = 5; leave_empty_rooms = true; });\n",
        &mc, err, sizeof(err)), PARLEY_OK);
    assert_string_equal(mc.homeserver, "https://m.example.org");
    assert_string_equal(mc.account, "@parley:example.org");
    assert_string_equal(mc.device_name, "parley");
    assert_int_equal(mc.n_allow, 2);
    assert_int_equal(mc.thread_context, 1);
    assert_int_equal(mc.sync_timeout_ms, 30000);
    assert_int_equal(mc.leave_empty_rooms, 1);
    matrix_config_free(&mc);

    assert_int_equal(parse_cfg("adapters = ({ type = \"matrix\";\n"
        "homeserver = \"ftp://x\";\n"
        "user_id = \"parley\";\n"
        "password_env = \"hunter2 !\";\n"
        "alow_invites_from = [];\n"
        "allow_invites_from = [\"admin\"];\n"
        "timeline_limit = true; });\n", &mc, err, sizeof(err)),
        PARLEY_ERR_CONFIG);
    assert_non_null(strstr(err, ":2: adapters.[0].homeserver:"));
    assert_non_null(strstr(err, ":3: adapters.[0].user_id:"));
    assert_non_null(strstr(err, ":4: adapters.[0].password_env:"));
    assert_null(strstr(err, "hunter2"));
    assert_non_null(strstr(err, ":5: adapters.[0].alow_invites_from: "
                            "unknown key"));
    assert_non_null(strstr(err, "adapters.[0].allow_invites_from:"));
    assert_non_null(strstr(err, ":7: adapters.[0].timeline_limit:"));
    matrix_config_free(&mc);

    assert_int_equal(parse_cfg("adapters = ({ type = \"matrix\"; });\n",
                               &mc, err, sizeof(err)), PARLEY_ERR_CONFIG);
    assert_non_null(strstr(err, "homeserver: missing"));
    assert_non_null(strstr(err, "user_id: missing"));
    assert_non_null(strstr(err, "password_env or access_token_env"));
    matrix_config_free(&mc);

    /* crypto_key_env names the pickle key's variable (E2EE); off when
     * absent, and never the key itself. */
    assert_int_equal(parse_cfg("adapters = ({ type = \"matrix\";\n"
        "homeserver = \"https://m\"; user_id = \"@p:m\";\n"
        "password_env = \"PW\"; crypto_key_env = \"MX_KEY\"; });\n",
        &mc, err, sizeof(err)), PARLEY_OK);
    assert_string_equal(mc.crypto_key_env, "MX_KEY");
    matrix_config_free(&mc);
    assert_int_equal(parse_cfg("adapters = ({ type = \"matrix\";\n"
        "homeserver = \"https://m\"; user_id = \"@p:m\";\n"
        "password_env = \"PW\"; });\n", &mc, err, sizeof(err)),
        PARLEY_OK);
    assert_null(mc.crypto_key_env);
    matrix_config_free(&mc);
    assert_int_equal(parse_cfg("adapters = ({ type = \"matrix\";\n"
        "homeserver = \"https://m\"; user_id = \"@p:m\";\n"
        "password_env = \"PW\";\ncrypto_key_env = \"s3cret key!\"; });\n",
        &mc, err, sizeof(err)), PARLEY_ERR_CONFIG);
    assert_non_null(strstr(err, ":4: adapters.[0].crypto_key_env:"));
    assert_null(strstr(err, "s3cret"));
    matrix_config_free(&mc);

    /* share_with and utd_timeout_ms: defaults, values, clear errors. */
    assert_int_equal(parse_cfg("adapters = ({ type = \"matrix\";\n"
        "homeserver = \"https://m\"; user_id = \"@p:m\";\n"
        "password_env = \"PW\"; });\n", &mc, err, sizeof(err)),
        PARLEY_OK);
    assert_int_equal(mc.share_verified, 0);
    assert_int_equal(mc.utd_timeout_ms, 60000);
    matrix_config_free(&mc);
    assert_int_equal(parse_cfg("adapters = ({ type = \"matrix\";\n"
        "homeserver = \"https://m\"; user_id = \"@p:m\";\n"
        "password_env = \"PW\"; share_with = \"verified\";\n"
        "utd_timeout_ms = 5000; });\n", &mc, err, sizeof(err)),
        PARLEY_OK);
    assert_int_equal(mc.share_verified, 1);
    assert_int_equal(mc.utd_timeout_ms, 5000);
    matrix_config_free(&mc);
    assert_int_equal(parse_cfg("adapters = ({ type = \"matrix\";\n"
        "homeserver = \"https://m\"; user_id = \"@p:m\";\n"
        "password_env = \"PW\";\nshare_with = \"friends\";\n"
        "utd_timeout_ms = 10; });\n", &mc, err, sizeof(err)),
        PARLEY_ERR_CONFIG);
    assert_non_null(strstr(err, ":4: adapters.[0].share_with: must be "
                           "\"all\""));
    assert_non_null(strstr(err, ":5: adapters.[0].utd_timeout_ms:"));
    matrix_config_free(&mc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_fallback),
        cmocka_unit_test(test_html_fallback),
        cmocka_unit_test(test_mentions),
        cmocka_unit_test(test_utf8_clean),
        cmocka_unit_test(test_room_ping),
        cmocka_unit_test(test_room_ping_entities),
        cmocka_unit_test(test_html_room_ping),
        cmocka_unit_test(test_token_set),
        cmocka_unit_test(test_content_bound),
        cmocka_unit_test(test_url_txn_room),
        cmocka_unit_test(test_allowlist),
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_markdown),
        cmocka_unit_test(test_content),
        cmocka_unit_test(test_edit_content),
        cmocka_unit_test(test_bodies),
        cmocka_unit_test(test_config),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
