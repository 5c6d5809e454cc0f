/*
 * Conversation history per room, the pure part: each turn is one JSON
 * object in the Redis list ctx:<room> (state_history.c reads and writes
 * it), and this file does UTF-8 cleaning, the token estimate, the JSON
 * encoding of a turn and trimming, so unit tests feed it bytes.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "context.h"
#include "log.h"
#include "status.h"

/* Largest ts accepted from storage: far beyond any real unix time, and
 * small enough to be exact in a double. */
#define CONTEXT_TS_MAX 1e15


/* U+FFFD REPLACEMENT CHARACTER, for bytes that are not UTF-8. */
static const char context_replacement[] = "\xef\xbf\xbd";

/* --- UTF-8 and tokens ---------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs,
 * no surrogates, nothing above U+10FFFF), or 0 if s[0] does not start
 * one.  NUL counts as invalid: it cannot live in a C string. */
static size_t context_utf8_len(const unsigned char *s, size_t n)
{
    unsigned char lo = 0x80, hi = 0xbf;
    size_t len;

    if (n == 0 || s[0] == 0)
        return 0;
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4;
    else
        return 0;
    if (s[0] == 0xe0)
        lo = 0xa0;
    else if (s[0] == 0xed)
        hi = 0x9f;
    else if (s[0] == 0xf0)
        lo = 0x90;
    else if (s[0] == 0xf4)
        hi = 0x8f;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

char *context_text_clean(const char *text, size_t len, size_t max,
                         int *cut)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t cap = len > (SIZE_MAX - 1) / 3 ? SIZE_MAX - 1 : len * 3;
    size_t in = 0, out = 0;
    char *buf;

    if (cut)
        *cut = 0;
    if (cap > max)
        cap = max;
    buf = malloc(cap + 1);
    if (!buf)
        return NULL;
    while (in < len) {
        size_t k = context_utf8_len(s + in, len - in);
        const char *src = k ? text + in : context_replacement;
        size_t srclen = k ? k : sizeof(context_replacement) - 1;

        if (out + srclen > cap) {
            if (cut)
                *cut = 1;
            break;
        }
        memcpy(buf + out, src, srclen);
        out += srclen;
        in += k ? k : 1;
    }
    buf[out] = '\0';
    return buf;
}

/* Add the ASCII bytes and non-ASCII characters of s to the counters. */
static void context_count(const char *s, size_t *ascii, size_t *other)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);

    for (size_t i = 0; i < n;) {
        size_t k = context_utf8_len(p + i, n - i);

        if (k == 1)
            (*ascii)++;
        else
            (*other)++;     /* a character, or one invalid byte */
        i += k ? k : 1;
    }
}

size_t context_token_estimate(const char *text)
{
    size_t ascii = 0, other = 0;

    if (!text)
        return 0;
    context_count(text, &ascii, &other);
    return (ascii + 3) / 4 + other;
}

size_t context_turn_tokens(const struct turn *t)
{
    size_t ascii = 0, other = 0;

    if (t->role && strcmp(t->role, "user") == 0 && t->name && t->name[0]) {
        context_count(t->name, &ascii, &other);
        ascii += 2;     /* ": " */
    }
    if (t->content)
        context_count(t->content, &ascii, &other);
    return (ascii + 3) / 4 + other + CONTEXT_MESSAGE_TOKENS;
}

/* --- JSON ---------------------------------------------------------------- */

static int context_role_valid(const char *role)
{
    return role && (strcmp(role, "user") == 0 ||
                    strcmp(role, "assistant") == 0);
}

static char *context_json_print(const char *role, const char *name,
                                const char *content, long long ts)
{
    cJSON *obj = cJSON_CreateObject();
    char *json = NULL;

    if (!obj)
        return NULL;
    if (!cJSON_AddStringToObject(obj, "role", role))
        goto out;
    if (name ? !cJSON_AddStringToObject(obj, "name", name)
             : !cJSON_AddNullToObject(obj, "name"))
        goto out;
    if (!cJSON_AddStringToObject(obj, "content", content))
        goto out;
    if (!cJSON_AddNumberToObject(obj, "ts", (double)ts))
        goto out;
    json = cJSON_PrintUnformatted(obj);
out:
    cJSON_Delete(obj);
    return json;
}

/* Bytes c takes inside a JSON string as cJSON prints it. */
static size_t context_json_char_len(unsigned char c)
{
    if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' ||
        c == '\r' || c == '\t')
        return 2;
    return c < 0x20 ? 6 : 1;
}

/* Escaped length of s, stopping once it passes limit. */
static size_t context_json_escaped_len(const char *s, size_t limit)
{
    size_t len = 0;

    for (; *s && len <= limit; s++)
        len += context_json_char_len((unsigned char)*s);
    return len;
}

/* Longest prefix of the valid UTF-8 string s, ending on a character
 * boundary, whose escaped form fits in room bytes. */
static size_t context_json_fit(const char *s, size_t room)
{
    size_t used = 0, i = 0;

    while (s[i]) {
        size_t step = context_json_char_len((unsigned char)s[i]);

        if (used + step > room)
            break;
        used += step;
        i++;
    }
    while (i > 0 && ((unsigned char)s[i] & 0xc0) == 0x80)
        i--;
    return i;
}

char *context_turn_to_json(const struct turn *t)
{
    char *name = NULL, *content = NULL, *json = NULL;
    const char *raw = t->content ? t->content : "";

    if (!context_role_valid(t->role))
        return NULL;
    if (t->name && t->name[0]) {
        name = context_text_clean(t->name, strlen(t->name),
                                  CONTEXT_NAME_MAX, NULL);
        if (!name)
            return NULL;
    }
    content = context_text_clean(raw, strlen(raw), CONTEXT_TURN_MAX, NULL);
    if (!content)
        goto out;
    /*
     * Escaping can make the JSON longer than the content (a control byte
     * becomes six bytes), so print, and if over the cap cut the content
     * where its escaped form fills the room left, then print again.  The
     * loop only guards that arithmetic against a cJSON that escapes more
     * than context_json_escaped_len assumes.
     */
    for (int tries = 0; tries < 8; tries++) {
        size_t len, esc, room;

        json = context_json_print(t->role, name, content, t->ts);
        if (!json)
            goto out;
        len = strlen(json);
        if (len <= CONTEXT_TURN_MAX)
            goto out;
        free(json);
        json = NULL;
        esc = context_json_escaped_len(content, SIZE_MAX);
        room = len - esc < CONTEXT_TURN_MAX ? CONTEXT_TURN_MAX - (len - esc)
                                            : 0;
        if (tries > 0)      /* cJSON disagreed: shrink harder */
            room /= 2;
        content[context_json_fit(content, room)] = '\0';
    }
out:
    free(name);
    free(content);
    return json;
}

int context_turn_from_json(const char *json, size_t len, struct turn *t)
{
    const char *end = NULL;
    cJSON *root, *role, *name, *content, *ts;
    int result = PARLEY_ERR_PROTOCOL;

    memset(t, 0, sizeof(*t));
    if (!json)
        return PARLEY_ERR_PROTOCOL;
    if (len > CONTEXT_TURN_MAX)
        return PARLEY_ERR_TOO_LARGE;
    root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root)
        return PARLEY_ERR_PROTOCOL;
    /* Only whitespace may follow the object. */
    for (; end && end < json + len; end++)
        if (*end != ' ' && *end != '\t' && *end != '\r' && *end != '\n')
            goto out;
    if (!cJSON_IsObject(root))
        goto out;
    role = cJSON_GetObjectItemCaseSensitive(root, "role");
    name = cJSON_GetObjectItemCaseSensitive(root, "name");
    content = cJSON_GetObjectItemCaseSensitive(root, "content");
    ts = cJSON_GetObjectItemCaseSensitive(root, "ts");
    if (!cJSON_IsString(role) || !context_role_valid(role->valuestring))
        goto out;
    if (!cJSON_IsString(content))
        goto out;
    if (name && !cJSON_IsNull(name) && !cJSON_IsString(name))
        goto out;
    if (ts && (!cJSON_IsNumber(ts) || !isfinite(ts->valuedouble) ||
               ts->valuedouble < 0 || ts->valuedouble > CONTEXT_TS_MAX))
        goto out;

    result = PARLEY_ERR_OOM;
    t->role = context_text_clean(role->valuestring,
                                 strlen(role->valuestring), 16, NULL);
    t->content = context_text_clean(content->valuestring,
                                    strlen(content->valuestring),
                                    CONTEXT_TURN_MAX, NULL);
    if (!t->role || !t->content)
        goto fail;
    if (cJSON_IsString(name) && name->valuestring[0]) {
        t->name = context_text_clean(name->valuestring,
                                     strlen(name->valuestring),
                                     CONTEXT_NAME_MAX, NULL);
        if (!t->name)
            goto fail;
    }
    t->ts = ts ? (long long)ts->valuedouble : 0;
    result = PARLEY_OK;
    goto out;
fail:
    context_turn_free(t);
out:
    cJSON_Delete(root);
    return result;
}

/* --- trimming ------------------------------------------------------------ */

size_t context_keep_from(const struct history *h, size_t max_turns,
                         size_t max_tokens)
{
    size_t start = 0;

    if (!h || h->n == 0)
        return 0;
    if (max_turns && h->n > max_turns)
        start = h->n - max_turns;
    if (max_tokens) {
        size_t sum = 0, i = h->n;

        while (i > start) {
            size_t cost = context_turn_tokens(&h->turns[i - 1]);

            if (cost > max_tokens - sum)
                break;
            sum += cost;
            i--;
        }
        start = i;
    }
    if (start > 0)
        while (start < h->n && h->turns[start].role &&
               strcmp(h->turns[start].role, "assistant") == 0)
            start++;
    return start;
}

void context_trim(struct history *h, size_t max_turns, size_t max_tokens)
{
    size_t start = context_keep_from(h, max_turns, max_tokens);

    if (start == 0)
        return;
    for (size_t i = 0; i < start; i++)
        context_turn_free(&h->turns[i]);
    memmove(h->turns, h->turns + start, (h->n - start) * sizeof(*h->turns));
    h->n -= start;
    if (h->n == 0) {
        free(h->turns);
        h->turns = NULL;
    }
}

void context_turn_free(struct turn *t)
{
    if (!t)
        return;
    free(t->role);
    free(t->name);
    free(t->content);
    memset(t, 0, sizeof(*t));
}

void context_history_free(struct history *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n; i++)
        context_turn_free(&h->turns[i]);
    free(h->turns);
    free(h);
}
