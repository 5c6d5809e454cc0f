/*
 * Outgoing side of the Matrix adapter: the model's Markdown becomes HTML
 * through cmark in safe mode (raw HTML and javascript:/vbscript:/file:/
 * data: links are removed by cmark itself), and the result is filtered
 * once more to the tags and attributes the spec allows for
 * org.matrix.custom.html, so that even a cmark bug or a future option
 * change cannot put <script> or an onerror handler into a room.  The same
 * file builds the JSON request bodies (message content, login, filter)
 * and reads the small JSON answers (login, whoami, errors).
 */
#include "matrix.h"

#include <cjson/cJSON.h>
#include <cmark.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "status.h"

/* Attributes allowed per tag (spec, m.room.message msgtypes, "HTML"). */
struct html_tag {
    const char *name;
    const char *attrs[6];
};

static const struct html_tag html_tags[] = {
    { "a", { "href", "target", "name", NULL } },
    { "b", { NULL } },
    { "blockquote", { NULL } },
    { "br", { NULL } },
    { "caption", { NULL } },
    { "code", { "class", NULL } },
    { "del", { NULL } },
    { "details", { NULL } },
    { "div", { "data-mx-maths", NULL } },
    { "em", { NULL } },
    { "font", { "data-mx-bg-color", "data-mx-color", "color", NULL } },
    { "h1", { NULL } },
    { "h2", { NULL } },
    { "h3", { NULL } },
    { "h4", { NULL } },
    { "h5", { NULL } },
    { "h6", { NULL } },
    { "hr", { NULL } },
    { "i", { NULL } },
    { "img", { "width", "height", "alt", "title", "src", NULL } },
    { "li", { NULL } },
    { "ol", { "start", NULL } },
    { "p", { NULL } },
    { "pre", { NULL } },
    { "s", { NULL } },
    { "span", { "data-mx-bg-color", "data-mx-color", "data-mx-spoiler",
                "data-mx-maths", NULL } },
    { "strike", { NULL } },
    { "strong", { NULL } },
    { "sub", { NULL } },
    { "summary", { NULL } },
    { "sup", { NULL } },
    { "table", { NULL } },
    { "tbody", { NULL } },
    { "td", { NULL } },
    { "th", { NULL } },
    { "thead", { NULL } },
    { "tr", { NULL } },
    { "u", { NULL } },
    { "ul", { NULL } },
};

/* Tags whose content is dropped with them, not kept as text. */
static const char *const html_drop_content[] = {
    "script", "style", "mx-reply", "iframe", "object", "title", "textarea"
};

/* Longest tag or attribute name we consider; longer ones are dropped. */
#define HTML_NAME_MAX 32

static const struct html_tag *tag_find(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(html_tags) / sizeof(html_tags[0]); i++)
        if (strcmp(html_tags[i].name, name) == 0)
            return &html_tags[i];
    return NULL;
}

static int is_drop_content(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(html_drop_content) / sizeof(char *); i++)
        if (strcmp(html_drop_content[i], name) == 0)
            return 1;
    return 0;
}

static int is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '_' || c == ':' ||
           c == '.';
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

/* Lower-cased name at p (at most HTML_NAME_MAX-1 chars) into buf; returns
 * the length consumed, 0 when there is no name or it is too long. */
static size_t read_name(const char *p, const char *end, char *buf)
{
    size_t n = 0;

    while (p + n < end && is_name_char(p[n])) {
        if (n + 1 >= HTML_NAME_MAX)
            return 0;
        buf[n] = (char)((p[n] >= 'A' && p[n] <= 'Z') ? p[n] + 32 : p[n]);
        n++;
    }
    buf[n] = '\0';
    return n;
}

static int has_prefix_ci(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);

    return len >= n && strncasecmp(s, prefix, n) == 0;
}

/* Whether the value of attribute attr on tag is acceptable. */
static int attr_value_ok(const char *tag, const char *attr, const char *v,
                         size_t len)
{
    size_t i;

    /* URLs come percent-encoded from cmark: a raw blank, quote or angle
     * bracket in one means something is trying to break out. */
    if (strcmp(attr, "href") == 0 || strcmp(attr, "src") == 0)
        for (i = 0; i < len; i++)
            if (is_space(v[i]) || strchr("\"'<>`", v[i]))
                return 0;
    if (strcmp(attr, "href") == 0)
        return has_prefix_ci(v, len, "https://") ||
               has_prefix_ci(v, len, "http://") ||
               has_prefix_ci(v, len, "ftp://") ||
               has_prefix_ci(v, len, "mailto:") ||
               has_prefix_ci(v, len, "magnet:");
    if (strcmp(attr, "src") == 0)
        return has_prefix_ci(v, len, "mxc://");
    if (strcmp(attr, "class") == 0) {
        if (!has_prefix_ci(v, len, "language-"))
            return 0;
        for (i = 0; i < len; i++)
            if (!is_name_char(v[i]) && v[i] != '+' && v[i] != '#')
                return 0;
        return 1;
    }
    if (strcmp(attr, "start") == 0 || strcmp(attr, "width") == 0 ||
        strcmp(attr, "height") == 0) {
        if (len == 0 || len > 9)
            return 0;
        for (i = 0; i < len; i++)
            if (v[i] < '0' || v[i] > '9')
                return 0;
        return 1;
    }
    if (strstr(attr, "color")) {
        if (len != 7 || v[0] != '#')
            return 0;
        for (i = 1; i < 7; i++)
            if (!strchr("0123456789abcdefABCDEF", v[i]))
                return 0;
        return 1;
    }
    (void)tag;
    return 1;
}

struct html_out {
    char *buf;
    size_t len;
    size_t cap;
};

/* The caller sized buf for the worst case; this is a safety net. */
static void out_put(struct html_out *o, const char *s, size_t n)
{
    if (o->len + n >= o->cap)
        n = o->cap - o->len - 1;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void out_str(struct html_out *o, const char *s)
{
    out_put(o, s, strlen(s));
}

static void out_value(struct html_out *o, const char *v, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (v[i] == '"')
            out_str(o, "&quot;");
        else if (v[i] == '<')
            out_str(o, "&lt;");
        else if (v[i] == '>')
            out_str(o, "&gt;");
        else
            out_put(o, v + i, 1);
    }
}

/* Find the '>' closing the tag that starts at p ('<'), skipping quoted
 * attribute values.  NULL when there is none. */
static const char *tag_end(const char *p, const char *end)
{
    char quote = 0;

    for (p++; p < end; p++) {
        if (quote) {
            if (*p == quote)
                quote = 0;
        } else if (*p == '"' || *p == '\'') {
            quote = *p;
        } else if (*p == '>') {
            return p;
        }
    }
    return NULL;
}

/* Emit the allowed attributes, with acceptable values, of the tag whose
 * attribute text is [p, end); everything else is dropped. */
static void emit_attrs(struct html_out *o, const struct html_tag *t,
                       const char *p, const char *end)
{
    char name[HTML_NAME_MAX];

    while (p < end) {
        const char *v = NULL;
        size_t vlen = 0, n, i;
        int allowed = 0;

        while (p < end && (is_space(*p) || *p == '/'))
            p++;
        if (p >= end)
            break;
        n = read_name(p, end, name);
        if (n == 0) {
            p++;                /* junk byte: skip it */
            continue;
        }
        p += n;
        while (p < end && is_space(*p))
            p++;
        if (p < end && *p == '=') {
            p++;
            while (p < end && is_space(*p))
                p++;
            if (p < end && (*p == '"' || *p == '\'')) {
                char q = *p++;

                v = p;
                while (p < end && *p != q)
                    p++;
                vlen = (size_t)(p - v);
                if (p < end)
                    p++;
            } else {
                v = p;
                while (p < end && !is_space(*p))
                    p++;
                vlen = (size_t)(p - v);
            }
        }
        for (i = 0; t->attrs[i]; i++)
            if (strcmp(t->attrs[i], name) == 0)
                allowed = 1;
        if (!allowed || !v || !attr_value_ok(t->name, name, v, vlen))
            continue;
        out_str(o, " ");
        out_str(o, name);
        out_str(o, "=\"");
        out_value(o, v, vlen);
        out_str(o, "\"");
    }
}

/* For <img>: whether its attribute text has an mxc:// src. */
static int img_has_mxc(const char *p, const char *end)
{
    const char *s = p;

    while (s < end && (s = strcasestr(s, "src")) != NULL && s < end) {
        const char *q = s + 3;

        while (q < end && is_space(*q))
            q++;
        if (q < end && *q == '=') {
            q++;
            while (q < end && is_space(*q))
                q++;
            if (q < end && (*q == '"' || *q == '\''))
                q++;
            return (size_t)(end - q) >= 6 && strncasecmp(q, "mxc://", 6) == 0;
        }
        s += 3;
    }
    return 0;
}

/* html must be NUL-terminated at or after html + len (the tag scanner
 * uses string functions that stop at the NUL). */
char *matrix_html_sanitize(const char *html, size_t len)
{
    struct html_out o;
    const char *p = html, *end = html + len;
    char name[HTML_NAME_MAX];

    /* Worst case: every byte becomes "&quot;" (6 bytes). */
    if (len > ((size_t)-1 - 16) / 6)
        return NULL;
    o.cap = 6 * len + 16;
    o.len = 0;
    o.buf = malloc(o.cap);
    if (!o.buf)
        return NULL;
    o.buf[0] = '\0';
    while (p < end) {
        const char *gt, *q;
        const struct html_tag *t;
        int closing;
        size_t n;

        if (*p == '\0')
            break;
        if (*p == '>') {
            out_str(&o, "&gt;");
            p++;
            continue;
        }
        if (*p != '<') {
            out_put(&o, p, 1);
            p++;
            continue;
        }
        if ((size_t)(end - p) >= 4 && memcmp(p, "<!--", 4) == 0) {
            const char *c = p + 4;

            while (c + 3 <= end && memcmp(c, "-->", 3) != 0)
                c++;
            p = c + 3 <= end ? c + 3 : end;
            continue;
        }
        q = p + 1;
        closing = q < end && *q == '/';
        if (closing)
            q++;
        n = read_name(q, end, name);
        gt = n ? tag_end(p, end) : NULL;
        if (!n || !gt || !((name[0] >= 'a' && name[0] <= 'z'))) {
            out_str(&o, "&lt;");
            p++;
            continue;
        }
        q += n;
        if (!closing && is_drop_content(name)) {
            /* Skip to the matching close tag, or the end. */
            char close[HTML_NAME_MAX + 3];
            const char *c;

            snprintf(close, sizeof(close), "</%s", name);
            c = strcasestr(gt, close);
            if (!c || c >= end) {
                p = end;
            } else {
                const char *cg = tag_end(c, end);

                p = cg ? cg + 1 : end;
            }
            continue;
        }
        t = tag_find(name);
        if (!t || (!closing && strcmp(name, "img") == 0 &&
                   !img_has_mxc(q, gt))) {
            p = gt + 1;
            continue;
        }
        out_str(&o, closing ? "</" : "<");
        out_str(&o, t->name);
        if (!closing)
            emit_attrs(&o, t, q, gt);
        out_str(&o, ">");
        p = gt + 1;
    }
    return o.buf;
}

/*
 * One unit of HTML as a client reads it: a tag (zero width, *ch = -1), a
 * character reference decoded once (&#64; &#x40; &#64 without ';' and
 * &commat;, as HTML5 parsers accept them; non-ASCII values give 0), or
 * one byte.  Returns the unit's length in bytes.
 */
static size_t html_unit(const char *p, const char *end, int *ch)
{
    const char *q;

    if (*p == '<') {
        q = memchr(p, '>', (size_t)(end - p));
        *ch = -1;
        return q ? (size_t)(q - p) + 1 : (size_t)(end - p);
    }
    *ch = (unsigned char)*p;
    if (*p != '&' || end - p < 3)
        return 1;
    if (p[1] == '#') {
        int hex = p[2] == 'x' || p[2] == 'X';
        long v = 0;
        size_t digits = 0;

        for (q = p + 2 + hex; q < end; q++, digits++) {
            int d;

            if (*q >= '0' && *q <= '9')
                d = *q - '0';
            else if (hex && *q >= 'a' && *q <= 'f')
                d = *q - 'a' + 10;
            else if (hex && *q >= 'A' && *q <= 'F')
                d = *q - 'A' + 10;
            else
                break;
            if (v < 0x110000)
                v = v * (hex ? 16 : 10) + d;
        }
        if (digits == 0)
            return 1;
        *ch = v > 0 && v < 128 ? (int)v : 0;
        if (q < end && *q == ';')
            q++;
        return (size_t)(q - p);
    }
    if ((size_t)(end - p) >= 7 && strncasecmp(p, "&commat", 7) == 0) {
        *ch = '@';
        return (size_t)(end - p) >= 8 && p[7] == ';' ? 8 : 7;
    }
    return 1;
}

/* Whether the unit at p is an '@' that a reader sees followed by "room"
 * (ASCII case-insensitive), tags in between ignored.  *len gets the
 * length of the '@' unit. */
static int html_room_ping_at(const char *p, const char *end, size_t *len)
{
    static const char room[] = "room";
    size_t i = 0;
    int ch;

    *len = html_unit(p, end, &ch);
    if (ch != '@')
        return 0;
    for (p += *len; p < end && i < 4;) {
        p += html_unit(p, end, &ch);
        if (ch == -1)
            continue;
        if (ch < 'A' || (ch | 0x20) != room[i])
            return 0;
        i++;
    }
    return i == 4;
}

char *matrix_html_neutralise_room_ping(const char *html)
{
    static const char wj[] = "\xe2\x81\xa0";   /* U+2060 WORD JOINER */
    const char *p, *end;
    size_t n = 0, len, o = 0, ulen;
    char *out;

    if (!html)
        return NULL;
    len = strlen(html);
    end = html + len;
    for (p = html; p < end; p += ulen)
        n += html_room_ping_at(p, end, &ulen);
    if (n > (((size_t)-1) - len - 1) / (sizeof(wj) - 1))
        return NULL;
    out = malloc(len + n * (sizeof(wj) - 1) + 1);
    if (!out)
        return NULL;
    for (p = html; p < end; p += ulen) {
        int ping = html_room_ping_at(p, end, &ulen);

        memcpy(out + o, p, ulen);
        o += ulen;
        if (ping) {
            memcpy(out + o, wj, sizeof(wj) - 1);
            o += sizeof(wj) - 1;
        }
    }
    out[o] = '\0';
    return out;
}

/* Raw HTML nodes collected per render; past this the rest are dropped
 * (a hostile answer made of thousands of tags loses them, not safety). */
#define MD_HTML_NODES_MAX 4096

/*
 * Turn raw HTML the model wrote into visible text.  cmark's safe mode
 * would replace it with an HTML comment, so an answer that starts with
 * "<script>" would render as an empty formatted_body while the body shows
 * the text: readers of the HTML would see nothing.  As text it is escaped
 * by the renderer (&lt;script&gt;), shown as written, and inert.
 */
static int md_html_to_text(cmark_node *doc)
{
    cmark_node *found[MD_HTML_NODES_MAX];
    size_t n = 0, i;
    cmark_iter *it = cmark_iter_new(doc);
    cmark_event_type ev;

    if (!it)
        return -1;
    while ((ev = cmark_iter_next(it)) != CMARK_EVENT_DONE) {
        cmark_node *node = cmark_iter_get_node(it);
        cmark_node_type t = cmark_node_get_type(node);

        if (ev == CMARK_EVENT_ENTER && n < MD_HTML_NODES_MAX &&
            (t == CMARK_NODE_HTML_INLINE || t == CMARK_NODE_HTML_BLOCK))
            found[n++] = node;
    }
    cmark_iter_free(it);
    /* The tree is changed only after the walk, never under the iterator. */
    for (i = 0; i < n; i++) {
        cmark_node *node = found[i];
        const char *lit = cmark_node_get_literal(node);
        int block = cmark_node_get_type(node) == CMARK_NODE_HTML_BLOCK;
        cmark_node *text = cmark_node_new(CMARK_NODE_TEXT);
        cmark_node *repl = text;
        char *copy;
        size_t len;

        if (!text)
            return -1;
        copy = strdup(lit ? lit : "");
        if (!copy) {
            cmark_node_free(text);
            return -1;
        }
        len = strlen(copy);
        while (len > 0 && copy[len - 1] == '\n')
            copy[--len] = '\0';
        if (!cmark_node_set_literal(text, copy)) {
            free(copy);
            cmark_node_free(text);
            return -1;
        }
        free(copy);
        if (block) {
            repl = cmark_node_new(CMARK_NODE_PARAGRAPH);
            if (!repl || !cmark_node_append_child(repl, text)) {
                cmark_node_free(repl);
                cmark_node_free(text);
                return -1;
            }
        }
        if (!cmark_node_replace(node, repl)) {
            cmark_node_free(repl);
            return -1;
        }
        cmark_node_free(node);
    }
    return 0;
}

char *matrix_markdown_to_html(const char *markdown, size_t len)
{
    /* cmark >= 0.29 is safe unless CMARK_OPT_UNSAFE; SAFE is kept for
     * older versions.  HARDBREAKS: chat text uses single newlines. */
    int opts = CMARK_OPT_SAFE | CMARK_OPT_HARDBREAKS |
               CMARK_OPT_VALIDATE_UTF8;
    cmark_node *doc = cmark_parse_document(markdown, len, opts);
    char *raw = NULL, *clean, *safe;
    size_t n;

    if (!doc)
        return NULL;
    if (md_html_to_text(doc) == 0)
        raw = cmark_render_html(doc, opts);
    cmark_node_free(doc);
    if (!raw)
        return NULL;
    n = strlen(raw);
    while (n > 0 && raw[n - 1] == '\n')
        n--;
    clean = matrix_html_sanitize(raw, n);
    free(raw);
    if (!clean)
        return NULL;
    /* The body was defused before cmark, but cmark decodes character
     * references: "&#64;room" in the Markdown is "@room" in the HTML.
     * Defuse what the reader will see, once the HTML is final. */
    safe = matrix_html_neutralise_room_ping(clean);
    free(clean);
    return safe;
}

/* The JSON of one m.room.message with this body and, when html is not
 * NULL, this formatted_body.  *out is malloc'd. */
static int content_json(const struct matrix_out *o, const char *body,
                        const char *html, char **out)
{
    cJSON *c, *m, *ids, *rel, *inrep;
    int result = PARLEY_ERR_OOM;
    const char *reply_to = o->in_reply_to;

    *out = NULL;
    c = cJSON_CreateObject();
    if (!c)
        return PARLEY_ERR_OOM;
    if (!cJSON_AddStringToObject(c, "msgtype",
                                 o->notice ? "m.notice" : "m.text") ||
        !cJSON_AddStringToObject(c, "body", body))
        goto done;
    if (html &&
        (!cJSON_AddStringToObject(c, "format", "org.matrix.custom.html") ||
         !cJSON_AddStringToObject(c, "formatted_body", html)))
        goto done;
    /* Always present: an empty m.mentions tells servers with intentional
     * mentions to ping nobody, whatever the body says. */
    m = cJSON_AddObjectToObject(c, "m.mentions");
    if (!m)
        goto done;
    if (o->mention && o->mention[0] == '@') {
        ids = cJSON_AddArrayToObject(m, "user_ids");
        if (!ids || !cJSON_AddItemToArray(ids,
                                          cJSON_CreateString(o->mention)))
            goto done;
    }
    if (o->thread_id && !reply_to)
        reply_to = o->thread_id;
    if (reply_to) {
        rel = cJSON_AddObjectToObject(c, "m.relates_to");
        if (!rel)
            goto done;
        if (o->thread_id) {
            if (!cJSON_AddStringToObject(rel, "rel_type", "m.thread") ||
                !cJSON_AddStringToObject(rel, "event_id", o->thread_id) ||
                !cJSON_AddBoolToObject(rel, "is_falling_back", 1))
                goto done;
        }
        inrep = cJSON_AddObjectToObject(rel, "m.in_reply_to");
        if (!inrep || !cJSON_AddStringToObject(inrep, "event_id", reply_to))
            goto done;
    }
    *out = cJSON_PrintUnformatted(c);
    if (*out)
        result = PARLEY_OK;
done:
    cJSON_Delete(c);
    return result;
}

/* Bytes cJSON writes for byte c inside a string. */
static size_t json_escaped_len(unsigned char c)
{
    if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' ||
        c == '\r' || c == '\t')
        return 2;
    return c < 0x20 ? 6 : 1;
}

/* Appended to a body cut to fit one event. */
#define MATRIX_CUT_MARK "\n\n[The answer was cut here: it is longer than " \
                        "one Matrix message can be.]"

/*
 * New string: body cut on a UTF-8 character boundary so that its JSON
 * escaping plus MATRIX_CUT_MARK takes at most budget bytes, with the
 * mark appended.  NULL on OOM.
 */
static char *body_cut(const char *body, size_t budget)
{
    size_t mark = sizeof(MATRIX_CUT_MARK) - 1;
    size_t used = 0, i, keep = 0, n = strlen(body);
    char *out;

    /* The mark itself escapes to 2 + 2 + the rest (two "\n"). */
    budget = budget > mark + 2 ? budget - mark - 2 : 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)body[i];

        if ((c & 0xc0) != 0x80)
            keep = i;       /* a character may start here */
        used += json_escaped_len(c);
        if (used > budget)
            break;
    }
    if (i == n)
        keep = n;
    out = malloc(keep + mark + 1);
    if (!out)
        return NULL;
    memcpy(out, body, keep);
    memcpy(out + keep, MATRIX_CUT_MARK, mark + 1);
    return out;
}

int matrix_content_build(const struct matrix_out *o, char **out)
{
    char *clean = NULL, *body = NULL, *html = NULL, *cut = NULL;
    const char *text = o->text ? o->text : "";
    size_t overhead, blen;
    int result = PARLEY_ERR_OOM, tries;

    *out = NULL;
    clean = matrix_utf8_clean(text, strlen(text), MATRIX_BODY_MAX);
    body = clean ? matrix_neutralise_room_ping(clean) : NULL;
    html = body ? matrix_markdown_to_html(body, strlen(body)) : NULL;
    if (!html)
        goto done;
    result = content_json(o, body, html, out);
    if (result || strlen(*out) <= MATRIX_CONTENT_MAX)
        goto done;
    /* Too big for one event (the server answers 413 M_TOO_LARGE, and
     * would again on every resend).  The HTML goes first: the body says
     * the same, without formatting. */
    free(*out);
    result = content_json(o, body, NULL, out);
    if (result || strlen(*out) <= MATRIX_CONTENT_MAX)
        goto done;
    /* Then the body is cut to what is left after everything else. */
    blen = strlen(*out);
    for (tries = 0; tries < 4; tries++) {
        size_t escaped = 0, i;

        for (i = 0; body[i]; i++)
            escaped += json_escaped_len((unsigned char)body[i]);
        overhead = blen - escaped;
        free(*out);
        *out = NULL;
        free(cut);
        cut = body_cut(body, MATRIX_CONTENT_MAX > overhead + tries * 64
                                 ? MATRIX_CONTENT_MAX - overhead - tries * 64
                                 : 0);
        result = cut ? content_json(o, cut, NULL, out) : PARLEY_ERR_OOM;
        if (result || strlen(*out) <= MATRIX_CONTENT_MAX)
            goto done;
    }
    /* Only a mention or ids far over the spec's 255 bytes get here. */
    free(*out);
    *out = NULL;
    result = PARLEY_ERR_TOO_LARGE;
done:
    if (result && *out) {
        free(*out);
        *out = NULL;
    }
    free(clean);
    free(body);
    free(html);
    free(cut);
    return result;
}

int matrix_login_body(const char *user, const char *password,
                      const char *device_id, const char *device_name,
                      char **out)
{
    cJSON *c = cJSON_CreateObject(), *id;
    int ok;

    *out = NULL;
    if (!c)
        return PARLEY_ERR_OOM;
    id = cJSON_AddObjectToObject(c, "identifier");
    ok = id && cJSON_AddStringToObject(c, "type", "m.login.password") &&
         cJSON_AddStringToObject(id, "type", "m.id.user") &&
         cJSON_AddStringToObject(id, "user", user) &&
         cJSON_AddStringToObject(c, "password", password) &&
         (!device_id ||
          cJSON_AddStringToObject(c, "device_id", device_id)) &&
         (!device_name ||
          cJSON_AddStringToObject(c, "initial_device_display_name",
                                  device_name));
    if (ok)
        *out = cJSON_PrintUnformatted(c);
    /* The tree holds the password too: wipe it before freeing. */
    if (cJSON_GetObjectItemCaseSensitive(c, "password")) {
        cJSON *pw = cJSON_GetObjectItemCaseSensitive(c, "password");

        if (cJSON_IsString(pw) && pw->valuestring)
            explicit_bzero(pw->valuestring, strlen(pw->valuestring));
    }
    cJSON_Delete(c);
    return *out ? PARLEY_OK : PARLEY_ERR_OOM;
}

int matrix_filter_body(int timeline_limit, char **out)
{
    static const char *const types[] = {
        "m.room.message", "m.room.member", "m.room.encrypted",
        "m.room.encryption"
    };
    cJSON *c = cJSON_CreateObject();
    cJSON *room, *tl, *st, *t, *none;
    size_t i;
    int ok;

    *out = NULL;
    if (!c)
        return PARLEY_ERR_OOM;
    room = cJSON_AddObjectToObject(c, "room");
    tl = room ? cJSON_AddObjectToObject(room, "timeline") : NULL;
    st = room ? cJSON_AddObjectToObject(room, "state") : NULL;
    t = tl ? cJSON_AddArrayToObject(tl, "types") : NULL;
    ok = t && st && cJSON_AddNumberToObject(tl, "limit", timeline_limit) &&
         cJSON_AddBoolToObject(st, "lazy_load_members", 1);
    for (i = 0; ok && i < sizeof(types) / sizeof(types[0]); i++)
        ok = cJSON_AddItemToArray(t, cJSON_CreateString(types[i]));
    /* State: members (names of senders, lazily loaded) and whether the
     * room is encrypted. */
    if (ok) {
        cJSON *sty = cJSON_AddArrayToObject(st, "types");

        ok = sty && cJSON_AddItemToArray(sty,
                                  cJSON_CreateString("m.room.member")) &&
             cJSON_AddItemToArray(sty,
                                  cJSON_CreateString("m.room.encryption"));
    }
    /* Nothing from presence, typing, receipts or account data. */
    if (ok) {
        const char *sect[] = { "presence", "account_data" };
        const char *rsect[] = { "ephemeral", "account_data" };

        for (i = 0; ok && i < 2; i++) {
            none = cJSON_AddObjectToObject(c, sect[i]);
            ok = none && cJSON_AddItemToObject(none, "not_types",
                     cJSON_CreateStringArray((const char *[]){ "*" }, 1));
        }
        for (i = 0; ok && i < 2; i++) {
            none = cJSON_AddObjectToObject(room, rsect[i]);
            ok = none && cJSON_AddItemToObject(none, "not_types",
                     cJSON_CreateStringArray((const char *[]){ "*" }, 1));
        }
    }
    if (ok)
        *out = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    return *out ? PARLEY_OK : PARLEY_ERR_OOM;
}

/* Copy string field key of obj into buf (when buf is not NULL). */
static int copy_field(const cJSON *obj, const char *key, char *buf,
                      size_t len)
{
    const cJSON *v;

    if (!buf)
        return PARLEY_OK;
    v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(v) || !v->valuestring || !v->valuestring[0] ||
        strlen(v->valuestring) >= len)
        return PARLEY_ERR_PROTOCOL;
    memcpy(buf, v->valuestring, strlen(v->valuestring) + 1);
    return PARLEY_OK;
}

int matrix_parse_session(const char *json, size_t len, char *user_id,
                         size_t ulen, char *device_id, size_t dlen,
                         char *token, size_t tlen)
{
    cJSON *c = cJSON_ParseWithLength(json, len);
    int result;

    if (!c)
        return PARLEY_ERR_PROTOCOL;
    result = copy_field(c, "user_id", user_id, ulen);
    if (!result)
        result = copy_field(c, "device_id", device_id, dlen);
    if (!result)
        result = copy_field(c, "access_token", token, tlen);
    if (token) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(c, "access_token");

        if (cJSON_IsString(t) && t->valuestring)
            explicit_bzero(t->valuestring, strlen(t->valuestring));
    }
    cJSON_Delete(c);
    return result;
}

void matrix_parse_error(const char *json, size_t len, char *errcode,
                        size_t elen, long *retry_after_ms)
{
    cJSON *c = json ? cJSON_ParseWithLength(json, len) : NULL;
    const cJSON *v;

    if (elen > 0)
        errcode[0] = '\0';
    *retry_after_ms = -1;
    if (!c)
        return;
    v = cJSON_GetObjectItemCaseSensitive(c, "errcode");
    if (cJSON_IsString(v) && v->valuestring && elen > 0)
        snprintf(errcode, elen, "%s", v->valuestring);
    v = cJSON_GetObjectItemCaseSensitive(c, "retry_after_ms");
    if (cJSON_IsNumber(v) && v->valuedouble >= 0 &&
        v->valuedouble < 24.0 * 3600 * 1000)
        *retry_after_ms = (long)v->valuedouble;
    cJSON_Delete(c);
}
