/*
 * Text helpers of the Matrix adapter: removing rich-reply fallbacks from
 * incoming messages, deciding whether a text names the bot, making text
 * valid UTF-8, defusing "@room", and the byte-level encodings the
 * client-server API needs (percent-encoded path segments, txnIds).  All
 * pure, so that unit tests and fuzzers can drive them directly, except
 * matrix_token_set, which also keeps the logger's redaction table in
 * step with the account's access token.
 */
#include "context.h"
#include "log.h"
#include "matrix.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "status.h"

const char *matrix_strip_body_fallback(const char *body, char *quoted,
                                       size_t quotedlen)
{
    const char *p = body;

    if (quoted && quotedlen > 0)
        quoted[0] = '\0';
    if (!body || body[0] != '>')
        return body;
    /* The quoted author is on the first line: "> <@u:s> text" (or
     * "> * <@u:s> text" for an emote). */
    if (quoted && quotedlen > 0) {
        const char *q = body + 1;
        const char *end;

        while (*q == ' ')
            q++;
        if (q[0] == '*' && q[1] == ' ')
            q += 2;
        if (*q == '<') {
            end = strchr(q, '>');
            if (end && (size_t)(end - q - 1) < quotedlen &&
                !memchr(q, '\n', (size_t)(end - q))) {
                memcpy(quoted, q + 1, (size_t)(end - q - 1));
                quoted[end - q - 1] = '\0';
            }
        }
    }
    while (*p == '>') {
        const char *nl = strchr(p, '\n');

        if (!nl)
            return body;        /* only quotes, no reply: keep it all */
        p = nl + 1;
    }
    /* The spec's fallback ends with one empty line. */
    if (*p == '\n')
        return p + 1;
    if (p[0] == '\r' && p[1] == '\n')
        return p + 2;
    if (quoted && quotedlen > 0)
        quoted[0] = '\0';
    return body;
}

void matrix_strip_html_fallback(char *html)
{
    static const char open[] = "<mx-reply>";
    static const char close[] = "</mx-reply>";
    char *start;

    if (!html)
        return;
    while ((start = strcasestr(html, open)) != NULL) {
        char *end = strcasestr(start, close);

        if (!end) {
            *start = '\0';
            return;
        }
        end += sizeof(close) - 1;
        memmove(start, end, strlen(end) + 1);
    }
}

/* Word characters for mention boundaries: ASCII letters and digits, '_',
 * and any byte of a multi-byte UTF-8 character (non-ASCII letters). */
static int is_word_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}

/* needle occurs in hay as a whole word (ASCII case-insensitive). */
static int contains_word(const char *hay, const char *needle)
{
    size_t nlen = needle ? strlen(needle) : 0;
    const char *p = hay;

    if (nlen == 0)
        return 0;
    while ((p = strcasestr(p, needle)) != NULL) {
        int before = p > hay && is_word_byte((unsigned char)p[-1]);
        int after = is_word_byte((unsigned char)p[nlen]);

        /* A needle that starts or ends with a non-word byte ("@x:s")
         * carries its own boundary on that side. */
        if (!is_word_byte((unsigned char)needle[0]))
            before = 0;
        if (!is_word_byte((unsigned char)needle[nlen - 1]))
            after = 0;
        if (!before && !after)
            return 1;
        p++;
    }
    return 0;
}

int matrix_text_mentions(const char *text, const struct matrix_ident *me)
{
    char enc[3 * MATRIX_ID_MAX + 1];
    char pill[3 * MATRIX_ID_MAX + 32];

    if (!text || !me || !me->user_id)
        return 0;
    if (contains_word(text, me->user_id))
        return 1;
    if (me->localpart && contains_word(text, me->localpart))
        return 1;
    if (me->display_name && contains_word(text, me->display_name))
        return 1;
    /* Pills: href="https://matrix.to/#/@u:s", sometimes percent-encoded. */
    if (matrix_url_escape(me->user_id, enc, sizeof(enc)) == PARLEY_OK) {
        int n = snprintf(pill, sizeof(pill), "matrix.to/#/%s", enc);

        if (n > 0 && (size_t)n < sizeof(pill) && strcasestr(text, pill))
            return 1;
    }
    return 0;
}

/* If text starts with word (ASCII case-insensitive), the byte after it;
 * else NULL. */
static const char *starts_with(const char *text, const char *word)
{
    size_t n = word ? strlen(word) : 0;

    if (n == 0 || strncasecmp(text, word, n) != 0)
        return NULL;
    return text + n;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * After a candidate address ending at p: the start of the words that
 * follow, or NULL when this is not an address.  A ':' or ',' always
 * ends one; white space alone ends it only when the form cannot be an
 * ordinary word ("@parley hi", "@parley:example.org hi").
 */
static const char *after_address(const char *p, int space_ends)
{
    if (!p)
        return NULL;
    if (*p == ':' || *p == ',')
        p++;
    else if (!(space_ends && is_space(*p)))
        return NULL;
    while (is_space(*p))
        p++;
    return *p ? p : NULL;
}

const char *matrix_strip_address(const char *text,
                                 const struct matrix_ident *me,
                                 const char *pill_text)
{
    const char *p = NULL;

    if (!text || !me || !me->user_id)
        return text;
    /* The user id first, and alone: it also starts with "@localpart",
     * whose ':' must not be taken for a separator. */
    if (starts_with(text, me->user_id)) {
        p = after_address(starts_with(text, me->user_id), 1);
        return p ? p : text;
    }
    if (pill_text && pill_text[0])
        p = after_address(starts_with(text, pill_text), 1);
    if (!p && text[0] == '@') {
        p = after_address(starts_with(text + 1, me->display_name), 1);
        if (!p)
            p = after_address(starts_with(text + 1, me->localpart), 1);
    }
    if (!p)
        p = after_address(starts_with(text, me->display_name), 0);
    if (!p)
        p = after_address(starts_with(text, me->localpart), 0);
    return p ? p : text;
}

/* Decode the five entities an HTML serializer writes for text; other
 * '&' sequences are kept as they are. */
static void entities_decode(char *s)
{
    static const struct { const char *ent; char c; } tab[] = {
        { "&amp;", '&' }, { "&lt;", '<' }, { "&gt;", '>' },
        { "&quot;", '"' }, { "&#39;", '\'' }, { "&#x27;", '\'' },
    };
    char *r = s, *w = s;
    size_t i;

    while (*r) {
        int done = 0;

        if (*r == '&') {
            for (i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
                size_t n = strlen(tab[i].ent);

                if (strncmp(r, tab[i].ent, n) == 0) {
                    *w++ = tab[i].c;
                    r += n;
                    done = 1;
                    break;
                }
            }
        }
        if (!done)
            *w++ = *r++;
    }
    *w = '\0';
}

int matrix_leading_pill(const char *html, const struct matrix_ident *me,
                        char *out, size_t outlen)
{
    char enc[3 * MATRIX_ID_MAX + 1];
    const char *p = html, *tag_end, *href, *text, *close;
    size_t n;

    if (outlen > 0)
        out[0] = '\0';
    if (!html || !me || !me->user_id || outlen == 0)
        return PARLEY_ERR_PROTOCOL;
    while (is_space(*p))
        p++;
    if (strncasecmp(p, "<a ", 3) != 0)
        return PARLEY_ERR_PROTOCOL;
    tag_end = strchr(p, '>');
    if (!tag_end)
        return PARLEY_ERR_PROTOCOL;
    href = strcasestr(p, "matrix.to/#/");
    if (!href || href > tag_end)
        return PARLEY_ERR_PROTOCOL;
    href += strlen("matrix.to/#/");
    /* The user id as is, or percent-encoded; then the end of the URL. */
    n = strlen(me->user_id);
    if (strncmp(href, me->user_id, n) != 0) {
        if (matrix_url_escape(me->user_id, enc, sizeof(enc)) != PARLEY_OK)
            return PARLEY_ERR_PROTOCOL;
        n = strlen(enc);
        if (strncasecmp(href, enc, n) != 0)
            return PARLEY_ERR_PROTOCOL;
    }
    if (href[n] != '"' && href[n] != '\'' && href[n] != '?')
        return PARLEY_ERR_PROTOCOL;
    text = tag_end + 1;
    close = strcasestr(text, "</a>");
    if (!close || memchr(text, '<', (size_t)(close - text)) ||
        (size_t)(close - text) >= outlen)
        return PARLEY_ERR_PROTOCOL;
    memcpy(out, text, (size_t)(close - text));
    out[close - text] = '\0';
    entities_decode(out);
    return out[0] ? PARLEY_OK : PARLEY_ERR_PROTOCOL;
}

/* One cleaner for the whole program: the history's (context.c), fed
 * only the bytes before the first NUL, as a C string ends there. */
char *matrix_utf8_clean(const char *text, size_t len, size_t max)
{
    return context_text_clean(text, strnlen(text, len), max, NULL);
}

char *matrix_neutralise_room_ping(const char *text)
{
    static const char wj[] = "\xe2\x81\xa0";   /* U+2060 WORD JOINER */
    size_t n = 0, len, o = 0;
    const char *p;
    char *out;

    if (!text)
        return NULL;
    len = strlen(text);
    for (p = text; (p = strcasestr(p, "@room")) != NULL; p += 5)
        n++;
    out = malloc(len + n * (sizeof(wj) - 1) + 1);
    if (!out)
        return NULL;
    for (p = text; *p;) {
        if (p[0] == '@' && strncasecmp(p, "@room", 5) == 0) {
            out[o++] = '@';
            memcpy(out + o, wj, sizeof(wj) - 1);
            o += sizeof(wj) - 1;
            p++;
            continue;
        }
        out[o++] = *p++;
    }
    out[o] = '\0';
    return out;
}

int matrix_url_escape(const char *in, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    if (outlen == 0)
        return PARLEY_ERR_TOO_LARGE;
    for (; *in; in++) {
        unsigned char c = (unsigned char)*in;
        int plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                    c == '_' || c == '~';

        if (o + (plain ? 1 : 3) >= outlen) {
            out[0] = '\0';
            return PARLEY_ERR_TOO_LARGE;
        }
        if (plain) {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return PARLEY_OK;
}

int matrix_txn_id(const char *seed, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    size_t i;
    int n;

    if (!seed || outlen < 7 + 32 + 1)
        return PARLEY_ERR_TOO_LARGE;
    if (!EVP_Digest(seed, strlen(seed), md, &mdlen, EVP_sha256(), NULL) ||
        mdlen < 16)
        return PARLEY_ERR_OTHER;
    n = snprintf(out, outlen, "parley-");
    for (i = 0; i < 16; i++) {
        out[n++] = hex[md[i] >> 4];
        out[n++] = hex[md[i] & 15];
    }
    out[n] = '\0';
    return PARLEY_OK;
}

int matrix_room_split(const char *room, char *room_id, size_t len,
                      const char **thread)
{
    const char *slash;
    size_t n;

    *thread = NULL;
    if (len > 0)
        room_id[0] = '\0';
    if (!room || room[0] != '!')
        return PARLEY_ERR_PROTOCOL;
    /* Room ids never contain '/'; the thread root follows "/$". */
    slash = strstr(room, "/$");
    n = slash ? (size_t)(slash - room) : strlen(room);
    if (n >= len)
        return PARLEY_ERR_TOO_LARGE;
    memcpy(room_id, room, n);
    room_id[n] = '\0';
    if (slash)
        *thread = slash + 1;
    return PARLEY_OK;
}

int matrix_allow_match(const char *user, const char *const *allow,
                       size_t n_allow)
{
    const char *server;
    size_t i;

    if (!user || user[0] != '@')
        return 0;
    server = strchr(user, ':');
    for (i = 0; i < n_allow; i++) {
        const char *a = allow[i];

        if (!a)
            continue;
        if (a[0] == ':' && server && strcmp(server, a) == 0)
            return 1;
        if (a[0] == '@' && strcmp(user, a) == 0)
            return 1;
    }
    return 0;
}

int matrix_token_set(char *token, size_t len, const char *new_token,
                     const char *keep)
{
    size_t n = new_token ? strlen(new_token) : 0;
    int result = PARLEY_OK;

    if (n >= len)
        result = PARLEY_ERR_TOO_LARGE;
    else if (n > 0 && !(keep && strcmp(new_token, keep) == 0))
        result = log_add_secret(new_token);
    /* The token being replaced is dead either way: stop redacting it,
     * unless it is the one from the environment (registered for the life
     * of the process), so the table does not fill up re-login by
     * re-login. */
    if (token[0] && !(keep && strcmp(token, keep) == 0))
        log_remove_secret(token);
    explicit_bzero(token, len);
    if (result == PARLEY_OK && n > 0)
        memcpy(token, new_token, n + 1);
    return result;
}
