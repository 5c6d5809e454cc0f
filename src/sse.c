/*
 * Server-sent events parser (see sse.h for the rules it follows).  Lines
 * are processed straight from the caller's buffer when a chunk holds them
 * whole, which is the common case; only a line cut by the end of a chunk
 * is copied into the line buffer until its end arrives.  A CR at the end
 * of a chunk may be the first half of a CRLF, so the parser remembers it
 * and drops an LF that opens the next chunk.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sse.h"
#include "status.h"

/* First allocation of a buffer; doubled as needed up to max_event. */
#define SSE_BUF_INITIAL 256

static const char sse_bom[] = "\xef\xbb\xbf";

/* Set the sticky error; returns status. */
static int sse_fail(struct sse_parser *p, int status, const char *what)
{
    p->err = status;
    snprintf(p->errstr, sizeof(p->errstr), "%s", what);
    return status;
}

/* Make room for n more bytes plus a NUL in b, never past limit bytes of
 * content.  PARLEY_ERR_TOO_LARGE or _OOM on failure, b unchanged. */
static int buf_reserve(struct sse_buf *b, size_t n, size_t limit)
{
    size_t need, cap;
    char *q;

    if (n > limit || b->len > limit - n)
        return PARLEY_ERR_TOO_LARGE;
    need = b->len + n + 1;
    if (need <= b->cap)
        return PARLEY_OK;
    cap = b->cap ? b->cap : SSE_BUF_INITIAL;
    while (cap < need)
        cap = cap > (limit + 1) / 2 ? limit + 1 : cap * 2;
    q = realloc(b->p, cap);
    if (!q)
        return PARLEY_ERR_OOM;
    b->p = q;
    b->cap = cap;
    return PARLEY_OK;
}

static int buf_append(struct sse_buf *b, const char *s, size_t n,
                      size_t limit)
{
    int result = buf_reserve(b, n, limit);

    if (result)
        return result;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return PARLEY_OK;
}

/* b's content as a C string ("" when nothing was ever stored). */
static const char *buf_str(const struct sse_buf *b)
{
    return b->p && b->len ? b->p : "";
}

void sse_init(struct sse_parser *p, size_t max_event, sse_event_fn *cb,
              void *privdata)
{
    memset(p, 0, sizeof(*p));
    p->cb = cb;
    p->privdata = privdata;
    p->max_event = max_event ? max_event : SSE_EVENT_MAX;
    p->retry_ms = -1;
}

void sse_reset(struct sse_parser *p)
{
    p->line.len = p->data.len = p->type.len = p->id.len = 0;
    p->retry_ms = -1;
    p->bom_matched = 0;
    p->skip_lf = 0;
    p->err = PARLEY_OK;
    p->errstr[0] = '\0';
}

void sse_free(struct sse_parser *p)
{
    free(p->line.p);
    free(p->data.p);
    free(p->type.p);
    free(p->id.p);
    p->line.p = p->data.p = p->type.p = p->id.p = NULL;
    p->line.cap = p->data.cap = p->type.cap = p->id.cap = 0;
    sse_reset(p);
}

/* A blank line: hand the event over, then start the next one. */
static int sse_dispatch(struct sse_parser *p)
{
    struct sse_event ev;
    int result;

    if (p->data.len == 0) {
        /* No data field: the standard drops the event silently. */
        p->type.len = 0;
        p->retry_ms = -1;
        return PARLEY_OK;
    }
    p->data.p[--p->data.len] = '\0';    /* the LF after the last line */
    ev.type = p->type.len ? p->type.p : "message";
    ev.data = p->data.p;
    ev.data_len = p->data.len;
    ev.id = buf_str(&p->id);
    ev.retry_ms = p->retry_ms;
    result = p->cb ? p->cb(&ev, p->privdata) : PARLEY_OK;
    p->data.len = 0;
    p->type.len = 0;
    p->retry_ms = -1;
    if (result)
        return sse_fail(p, result, "stopped by the event handler");
    return PARLEY_OK;
}

/* Whether the field name (f, fn) is name. */
static int field_is(const char *f, size_t fn, const char *name)
{
    return strlen(name) == fn && memcmp(f, name, fn) == 0;
}

/* "retry": only ASCII digits count; absurd values are clamped. */
static void sse_retry(struct sse_parser *p, const char *v, size_t n)
{
    long ms = 0;

    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return;
        ms = ms > (LONG_MAX - 9) / 10 ? LONG_MAX : ms * 10 + (v[i] - '0');
    }
    p->retry_ms = ms;
}

/* One complete line, without its terminator. */
static int sse_line(struct sse_parser *p, const char *line, size_t n)
{
    const char *colon, *value = "";
    size_t fn = n, vn = 0;
    int result;

    if (n == 0)
        return sse_dispatch(p);
    if (line[0] == ':')
        return PARLEY_OK;               /* comment, e.g. a keep-alive */
    colon = memchr(line, ':', n);
    if (colon) {
        fn = (size_t)(colon - line);
        value = colon + 1;
        vn = n - fn - 1;
        if (vn && value[0] == ' ') {
            value++;
            vn--;
        }
    }
    if (field_is(line, fn, "data")) {
        /* data + LF must fit; the cap names the joined data. */
        result = buf_reserve(&p->data, vn + 1, p->max_event);
        if (result == PARLEY_OK) {
            buf_append(&p->data, value, vn, p->max_event);
            buf_append(&p->data, "\n", 1, p->max_event);
        }
    } else if (field_is(line, fn, "event")) {
        p->type.len = 0;
        result = buf_append(&p->type, value, vn, p->max_event);
    } else if (field_is(line, fn, "id")) {
        if (memchr(value, '\0', vn))
            return PARLEY_OK;
        p->id.len = 0;
        result = buf_append(&p->id, value, vn, p->max_event);
    } else {
        if (field_is(line, fn, "retry"))
            sse_retry(p, value, vn);
        return PARLEY_OK;
    }
    if (result == PARLEY_ERR_TOO_LARGE) {
        char why[sizeof(p->errstr)];

        snprintf(why, sizeof(why), "an event's data is over the %zu-byte "
                 "cap", p->max_event);
        return sse_fail(p, result, why);
    }
    if (result)
        return sse_fail(p, result, "out of memory");
    return PARLEY_OK;
}

static int line_too_long(struct sse_parser *p)
{
    char why[sizeof(p->errstr)];

    snprintf(why, sizeof(why), "an event-stream line is over the %zu-byte "
             "cap", p->max_event);
    return sse_fail(p, PARLEY_ERR_TOO_LARGE, why);
}

/* Split bytes (past any BOM) into lines. */
static int sse_bytes(struct sse_parser *p, const char *buf, size_t len)
{
    size_t i = 0;

    while (i < len) {
        const char *s;
        size_t k, n;
        int result;

        if (p->skip_lf) {
            p->skip_lf = 0;
            if (buf[i] == '\n') {
                i++;
                continue;
            }
        }
        s = buf + i;
        n = len - i;
        for (k = 0; k < n && s[k] != '\n' && s[k] != '\r'; k++)
            ;
        if (k == n) {
            /* The line goes on in the next chunk. */
            result = buf_append(&p->line, s, n, p->max_event);
            if (result == PARLEY_ERR_TOO_LARGE)
                return line_too_long(p);
            if (result)
                return sse_fail(p, result, "out of memory");
            return PARLEY_OK;
        }
        p->skip_lf = s[k] == '\r';
        if (p->line.len) {
            result = buf_append(&p->line, s, k, p->max_event);
            if (result == PARLEY_ERR_TOO_LARGE)
                return line_too_long(p);
            if (result)
                return sse_fail(p, result, "out of memory");
            result = sse_line(p, p->line.p, p->line.len);
            p->line.len = 0;
        } else {
            if (k > p->max_event)
                return line_too_long(p);
            result = sse_line(p, s, k);
        }
        if (result)
            return result;
        i += k + 1;
    }
    return PARLEY_OK;
}

int sse_feed(struct sse_parser *p, const char *buf, size_t len)
{
    size_t i = 0;

    if (p->err)
        return p->err;
    /* The BOM may itself be split across feeds. */
    while (p->bom_matched >= 0 && i < len) {
        if (buf[i] == sse_bom[p->bom_matched]) {
            i++;
            if (++p->bom_matched == 3)
                p->bom_matched = -1;
        } else {
            /* Not a BOM after all: what matched so far is text. */
            int matched = p->bom_matched;
            int result;

            p->bom_matched = -1;
            result = sse_bytes(p, sse_bom, (size_t)matched);
            if (result)
                return result;
        }
    }
    return sse_bytes(p, buf + i, len - i);
}

int sse_finish(struct sse_parser *p)
{
    int pending;

    if (p->err)
        return p->err;
    pending = p->bom_matched > 0 || p->line.len > 0 || p->data.len > 0;
    p->line.len = p->data.len = p->type.len = 0;
    p->retry_ms = -1;
    if (pending)
        return sse_fail(p, PARLEY_ERR_EOF, "the stream ended inside an "
                        "event");
    return PARLEY_OK;
}
