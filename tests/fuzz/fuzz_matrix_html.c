/*
 * libFuzzer target for the Matrix adapter's text paths: the HTML
 * sanitizer on raw bytes, Markdown rendering and the whole outgoing
 * content builder on the same bytes as model output, and the incoming
 * reply-fallback and mention helpers.  Beyond memory safety it checks the
 * security property: no live <script>, event handler or javascript: link
 * in the sanitized HTML, and no "@room" left in a message body or in
 * what a reader of formatted_body sees (tags skipped, character
 * references decoded once).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "matrix/matrix.h"
#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Whether word appears inside a tag of html (case-insensitive), outside
 * quoted attribute values, i.e. where a browser would see an attribute
 * name or a tag name. */
static int in_tag(const char *html, const char *word)
{
    size_t n = strlen(word);
    const char *p;
    int tag = 0;
    char quote = 0;

    for (p = html; *p; p++) {
        if (!tag) {
            tag = *p == '<';
            continue;
        }
        if (quote) {
            if (*p == quote)
                quote = 0;
            continue;
        }
        if (*p == '"' || *p == '\'') {
            quote = *p;
            continue;
        }
        if (*p == '>') {
            tag = 0;
            continue;
        }
        if (strncasecmp(p, word, n) == 0)
            return 1;
    }
    return 0;
}

/* Whether an href or src attribute inside a tag starts with a scheme
 * other than the allowed ones (the sanitizer's promise).  Text between
 * tags may say href="x" freely. */
static int bad_url(const char *html)
{
    const char *p;
    int tag = 0;
    char quote = 0;

    for (p = html; *p; p++) {
        if (!tag) {
            tag = *p == '<';
            continue;
        }
        if (quote) {
            if (*p == quote)
                quote = 0;
            continue;
        }
        if (*p == '>') {
            tag = 0;
            continue;
        }
        if (strncmp(p, "href=\"", 6) == 0) {
            const char *v = p + 6;

            if (strncasecmp(v, "https://", 8) &&
                strncasecmp(v, "http://", 7) &&
                strncasecmp(v, "ftp://", 6) &&
                strncasecmp(v, "mailto:", 7) &&
                strncasecmp(v, "magnet:", 7))
                return 1;
        }
        if (strncmp(p, "src=\"", 5) == 0 && strncasecmp(p + 5, "mxc://", 6))
            return 1;
        if (*p == '"' || *p == '\'')
            quote = *p;
    }
    return 0;
}

/* Whether a reader of html sees "@room": tags are skipped, numeric
 * character references (with or without ';') and &commat; are decoded
 * once, as an HTML5 parser does.  Written apart from the adapter's own
 * decoder so the two can disagree. */
static int shows_room_ping(const char *html)
{
    static const char room[] = "@room";
    size_t matched = 0;
    const char *p = html;

    while (*p) {
        int ch = (unsigned char)*p;

        if (*p == '<') {
            const char *gt = strchr(p, '>');

            p = gt ? gt + 1 : p + strlen(p);
            continue;
        }
        if (p[0] == '&' && p[1] == '#') {
            int hex = p[2] == 'x' || p[2] == 'X';
            const char *q = p + 2 + hex;
            unsigned long v = 0;

            while ((*q >= '0' && *q <= '9') ||
                   (hex && ((*q >= 'a' && *q <= 'f') ||
                            (*q >= 'A' && *q <= 'F')))) {
                int d = *q <= '9' ? *q - '0' : (*q | 0x20) - 'a' + 10;

                if (v < 0x110000)
                    v = v * (hex ? 16 : 10) + (unsigned long)d;
                q++;
            }
            if (q > p + 2 + hex) {
                ch = v < 128 ? (int)v : 0;
                p = *q == ';' ? q + 1 : q;
                goto have;
            }
        }
        if (strncasecmp(p, "&commat", 7) == 0) {
            ch = '@';
            p += p[7] == ';' ? 8 : 7;
            goto have;
        }
        p++;
have:
        if (ch >= 'A' && ch <= 'Z')
            ch |= 0x20;
        if (ch == room[matched])
            matched++;
        else
            matched = ch == '@';
        if (matched == sizeof(room) - 1)
            return 1;
    }
    return 0;
}

static void check_html(const char *h)
{
    if (!h)
        return;
    if (strcasestr(h, "<script") || in_tag(h, " on") || in_tag(h, "/on") ||
        in_tag(h, "style") || bad_url(h))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct matrix_ident me = {
        "@parley:localhost", "parley", "Parley Bot"
    };
    struct matrix_out o;
    char *s, *h, *json = NULL, q[64];

    if (size > 64 * 1024)
        return 0;
    s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    h = matrix_html_sanitize(s, strlen(s));
    check_html(h);
    free(h);

    memset(&o, 0, sizeof(o));
    o.text = s;
    o.mention = "@alice:localhost";
    o.in_reply_to = "$ev";
    o.thread_id = size & 1 ? "$root" : NULL;
    if (matrix_content_build(&o, &json) == PARLEY_OK) {
        cJSON *c = cJSON_Parse(json);
        const cJSON *body = c ? cJSON_GetObjectItem(c, "body") : NULL;
        const cJSON *fb = c ? cJSON_GetObjectItem(c, "formatted_body") : NULL;

        if (!cJSON_IsString(body) || !cJSON_IsString(fb) ||
            strcasestr(body->valuestring, "@room"))
            abort();
        check_html(fb->valuestring);
        if (shows_room_ping(fb->valuestring))
            abort();
        cJSON_Delete(c);
        free(json);
    }

    (void)matrix_strip_body_fallback(s, q, sizeof(q));
    (void)matrix_text_mentions(s, &me);
    matrix_strip_html_fallback(s);
    free(s);
    return 0;
}
