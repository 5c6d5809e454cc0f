/*
 * The stream reader of the LLM client: the body of a streamed answer goes
 * in piece by piece (llm_stream_feed), the SSE parser cuts it into events,
 * each event's JSON chunk adds to the answer, and the part of the answer
 * that is safe to show (whole UTF-8 characters, nothing that could be the
 * start of the key) goes to the piece callback.  llm_stream_end judges how
 * the stream ended and hands the whole answer, or the failure, to the
 * request's llm_result.  No loop and no curl: llm.c feeds it from the
 * transfer, and tests feed it bytes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "llm.h"
#include "llm_private.h"
#include "sse.h"
#include "status.h"

/* Bytes of a streamed refusal kept for the error message. */
#define LLM_REFUSAL_MAX 256

/* What a streaming request has read in its current attempt. */
struct llm_stream {
    const char *key;            /* cut out of the text; not owned */
    llm_piece_fn *piece;        /* where safe text goes */
    void *privdata;
    struct llm_result *res;     /* failures and the answer; not owned */
    struct sse_parser sse;      /* events of the body */
    char *text;                 /* answer so far, key cut out, NUL-ended */
    size_t len;
    size_t cap;
    size_t safe;                /* text before this cannot start the key */
    size_t delivered;           /* bytes of text given to piece */
    char *finish_reason;        /* or NULL */
    char refusal[LLM_REFUSAL_MAX];
    long prompt_tokens;         /* -1 until a usage chunk */
    long completion_tokens;
    int done_seen;              /* "data: [DONE]" arrived */
    int stopped;                /* the piece callback said stop */
};

/* Set the outcome to a failure while streaming; the text is redacted
 * and cut like every error text.  Returns status, so that an SSE event
 * callback can stop the parser with it. */
static int stream_fail(struct llm_stream *st, int status, int retryable,
                       const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int stream_fail(struct llm_stream *st, int status, int retryable,
                       const char *fmt, ...)
{
    char text[LLM_ERRTEXT_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    llm_redact_text(text, sizeof(text), st->key);
    llm_strip_controls(text);
    llm_text_copy(st->res->errstr, sizeof(st->res->errstr), text);
    st->res->status = status;
    st->res->retryable = retryable;
    return status;
}

/* Room for n more bytes of text (and a NUL). */
static int stream_reserve(struct llm_stream *st, size_t n)
{
    size_t need = st->len + n + 1;
    size_t cap;
    char *p;

    if (need <= st->cap)
        return PARLEY_OK;
    cap = st->cap ? st->cap : 256;
    while (cap < need)
        cap *= 2;
    p = realloc(st->text, cap);
    if (!p)
        return PARLEY_ERR_OOM;
    st->text = p;
    st->cap = cap;
    return PARLEY_OK;
}

/*
 * Cut the key out of the text that is not yet known to be clean, and move
 * st->safe to the start of the longest tail that could still be the
 * beginning of the key.  A model (or a server) may spell the key across
 * several chunks, so one event at a time is not enough, and text already
 * shown cannot be taken back: it is held until it is known to be clean.
 */
static int stream_redact(struct llm_stream *st)
{
    static const char mark[] = "[redacted]";
    size_t mlen = sizeof(mark) - 1;
    size_t klen = st->key ? strlen(st->key) : 0;
    size_t i, p;

    if (klen < LLM_SECRET_MIN) {
        st->safe = st->len;
        return PARLEY_OK;
    }
    for (i = st->safe; i + klen <= st->len;) {
        if (memcmp(st->text + i, st->key, klen) != 0) {
            i++;
            continue;
        }
        if (mlen > klen && stream_reserve(st, mlen - klen) != PARLEY_OK)
            return PARLEY_ERR_OOM;
        memmove(st->text + i + mlen, st->text + i + klen,
                st->len - i - klen + 1);
        memcpy(st->text + i, mark, mlen);
        st->len = st->len - klen + mlen;
        i += mlen;
    }
    /* [i, len) is shorter than the key: find where it may start. */
    p = i;
    while (p < st->len && memcmp(st->text + p, st->key, st->len - p) != 0)
        p++;
    st->safe = p;
    return PARLEY_OK;
}

/* The largest end <= n that does not cut a UTF-8 character. */
static size_t utf8_cut(const char *s, size_t n)
{
    size_t i = n, want;
    unsigned char c;

    while (i > 0 && n - i < 4 && ((unsigned char)s[i - 1] & 0xc0) == 0x80)
        i--;
    if (i == 0)
        return n;
    c = (unsigned char)s[i - 1];
    if (c < 0xc0)
        return n;               /* ASCII, or not UTF-8 at all */
    want = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
    return n - (i - 1) < want ? i - 1 : n;
}

/* Hand text from what was already handed out up to end to the piece
 * callback, NUL-terminated at end for the call; returns its status. */
static int stream_emit(struct llm_stream *st, char *text, size_t end)
{
    struct llm_delta d;
    char saved;
    int result;

    if (end <= st->delivered)
        return PARLEY_OK;
    saved = text[end];
    text[end] = '\0';
    d.text = text + st->delivered;
    d.len = end - st->delivered;
    d.content = text;
    d.content_len = end;
    st->delivered = end;
    st->res->delivered = end;
    result = st->piece(&d, st->privdata);
    text[end] = saved;
    if (result)
        st->stopped = 1;
    return result;
}

/* Whether an error event is a passing server condition worth asking
 * again for (OpenAI streams "server_error" when a model overloads). */
static int stream_error_retryable(const cJSON *root)
{
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
    const cJSON *f;

    if (!cJSON_IsObject(err))
        return 0;
    f = cJSON_GetObjectItemCaseSensitive(err, "code");
    if (cJSON_IsNumber(f))
        return llm_is_retryable(PARLEY_ERR_HTTP, (long)f->valuedouble);
    for (int i = 0; i < 2; i++) {
        f = cJSON_GetObjectItemCaseSensitive(err, i ? "code" : "type");
        if (cJSON_IsString(f) &&
            (strcmp(f->valuestring, "server_error") == 0 ||
             strcmp(f->valuestring, "rate_limit_exceeded") == 0 ||
             strcmp(f->valuestring, "overloaded_error") == 0))
            return 1;
    }
    return 0;
}

/* Add one chunk's content to the answer, within the cap. */
static int stream_append(struct llm_stream *st, const char *piece,
                         size_t n)
{
    if (n > LLM_BODY_MAX || st->len > LLM_BODY_MAX - n)
        return stream_fail(st, PARLEY_ERR_TOO_LARGE, 0,
                           "the LLM API answer is over the %d-byte cap",
                           LLM_BODY_MAX);
    if (stream_reserve(st, n) != PARLEY_OK)
        return stream_fail(st, PARLEY_ERR_OOM, 0, "out of memory "
                           "reading the LLM API stream");
    memcpy(st->text + st->len, piece, n);
    st->len += n;
    st->text[st->len] = '\0';
    if (stream_redact(st) != PARLEY_OK)
        return stream_fail(st, PARLEY_ERR_OOM, 0, "out of memory "
                           "reading the LLM API stream");
    return PARLEY_OK;
}

/* The fields of one chat.completion.chunk, or its error. */
static int stream_chunk(struct llm_stream *st, const char *type,
                        const cJSON *root)
{
    const cJSON *choices, *first, *delta, *f, *usage;
    char why[LLM_ERRTEXT_MAX];

    if (!cJSON_IsObject(root))
        return stream_fail(st, PARLEY_ERR_PROTOCOL, 0, "the LLM API "
                           "stream holds an event that is not a JSON "
                           "object");
    if (strcmp(type, "error") == 0 ||
        cJSON_GetObjectItemCaseSensitive(root, "error")) {
        if (!llm_error_from_json(root, why, sizeof(why)))
            snprintf(why, sizeof(why), "(no details)");
        return stream_fail(st, PARLEY_ERR_PROTOCOL,
                           stream_error_retryable(root), "the LLM API "
                           "stream reported an error: %.900s", why);
    }
    usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (cJSON_IsObject(usage)) {
        st->prompt_tokens = llm_token_count(usage, "prompt_tokens");
        st->completion_tokens = llm_token_count(usage, "completion_tokens");
    }
    /* The usage chunk has "choices": []; n > 1 is never asked for. */
    choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    first = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (!cJSON_IsObject(first))
        return PARLEY_OK;
    f = cJSON_GetObjectItemCaseSensitive(first, "finish_reason");
    if (cJSON_IsString(f) && !st->finish_reason) {
        st->finish_reason = strdup(f->valuestring);
        if (!st->finish_reason)
            return stream_fail(st, PARLEY_ERR_OOM, 0, "out of memory");
    }
    delta = cJSON_GetObjectItemCaseSensitive(first, "delta");
    f = cJSON_GetObjectItemCaseSensitive(delta, "refusal");
    if (cJSON_IsString(f)) {
        size_t have = strlen(st->refusal);

        snprintf(st->refusal + have, sizeof(st->refusal) - have, "%s",
                 f->valuestring);
    }
    f = cJSON_GetObjectItemCaseSensitive(delta, "content");
    if (cJSON_IsString(f) && f->valuestring[0])
        return stream_append(st, f->valuestring, strlen(f->valuestring));
    return PARLEY_OK;
}

/* sse_event_fn: one event of a streamed answer. */
static int on_sse_event(const struct sse_event *ev, void *privdata)
{
    struct llm_stream *st = privdata;
    cJSON *root;
    char *clean;
    size_t n;
    int result;

    if (st->done_seen)
        return PARLEY_OK;       /* nothing counts after [DONE] */
    if (ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0) {
        st->done_seen = 1;
        return PARLEY_OK;
    }
    /* As for whole bodies: the key goes before anything reads it. */
    clean = llm_redact_copy(ev->data, ev->data_len, st->key, &n);
    if (!clean)
        return stream_fail(st, PARLEY_ERR_OOM, 0, "out of memory "
                           "reading the LLM API stream");
    root = cJSON_ParseWithLength(clean, n);
    if (!root && strcmp(ev->type, "error") == 0) {
        /* "event: error" with a plain-text reason: quote it. */
        char why[LLM_ERRTEXT_MAX];

        llm_parse_error(clean, n, why, sizeof(why));
        free(clean);
        return stream_fail(st, PARLEY_ERR_PROTOCOL, 0, "the LLM API "
                           "stream reported an error: %.900s", why);
    }
    free(clean);
    if (!root)
        return stream_fail(st, PARLEY_ERR_PROTOCOL, 0, "the LLM API "
                           "stream holds an event that is not valid JSON");
    result = stream_chunk(st, ev->type, root);
    cJSON_Delete(root);
    if (result)
        return result;
    return stream_emit(st, st->text, utf8_cut(st->text, st->safe));
}

int llm_stream_create(struct llm_stream **out, const char *key,
                      llm_piece_fn *piece, void *privdata,
                      struct llm_result *res)
{
    struct llm_stream *st = calloc(1, sizeof(*st));

    *out = NULL;
    if (!st)
        return PARLEY_ERR_OOM;
    st->key = key;
    st->piece = piece;
    st->privdata = privdata;
    st->res = res;
    sse_init(&st->sse, SSE_EVENT_MAX, on_sse_event, st);
    llm_stream_reset(st);
    *out = st;
    return PARLEY_OK;
}

void llm_stream_reset(struct llm_stream *st)
{
    sse_reset(&st->sse);
    st->len = st->safe = st->delivered = 0;
    if (st->text)
        st->text[0] = '\0';
    free(st->finish_reason);
    st->finish_reason = NULL;
    st->refusal[0] = '\0';
    st->prompt_tokens = st->completion_tokens = -1;
    st->done_seen = 0;
    st->stopped = 0;
    /* Failures are noted as they happen, so the outcome of an earlier
     * attempt must not look like one. */
    st->res->status = PARLEY_OK;
    st->res->retryable = 0;
    st->res->delivered = 0;
    st->res->errstr[0] = '\0';
}

int llm_stream_feed(struct llm_stream *st, const char *data, size_t len)
{
    int result = sse_feed(&st->sse, data, len);

    if (result && st->res->status == PARLEY_OK && !st->stopped)
        stream_fail(st, result, 0, "the LLM API stream is unreadable: %s",
                    st->sse.errstr);
    return result;
}

/* A failure after text was shown is final, and says so. */
static void stream_partial(struct llm_stream *st)
{
    struct llm_result *res = st->res;
    char why[sizeof(res->errstr)];
    char text[LLM_ERRTEXT_MAX];

    if (res->status == PARLEY_OK || st->delivered == 0)
        return;
    llm_text_copy(why, sizeof(why), res->errstr);
    snprintf(text, sizeof(text), "the answer broke off after %zu bytes "
             "were shown: %s", st->delivered, why);
    llm_text_copy(res->errstr, sizeof(res->errstr), text);
    res->retryable = 0;
}

void llm_stream_end(struct llm_stream *st, int status, const char *errstr)
{
    struct llm_result *res = st->res;
    char why[sizeof(res->errstr)];
    int result;

    if (res->status != PARLEY_OK) {
        /* Stopped by a failure of its own (llm_stream_feed). */
        stream_partial(st);
        return;
    }
    result = sse_finish(&st->sse);
    if (st->done_seen ||
        (status == PARLEY_OK && st->finish_reason && result == PARLEY_OK)) {
        /* The answer is whole, even if the connection then failed. */
    } else if (status == PARLEY_ERR_TIMEOUT) {
        stream_fail(st, status, 1, "the LLM API stream did not finish in "
                    "time: %s", errstr ? errstr : "timeout");
    } else if (status != PARLEY_OK) {
        stream_fail(st, status, llm_is_retryable(status, 0), "the LLM API "
                    "stream broke: %s", errstr ? errstr : "transfer failed");
    } else {
        /* A clean end without [DONE] or a finish_reason: cut short. */
        stream_fail(st, PARLEY_ERR_EOF, 1, "the LLM API stream ended "
                    "before the answer was complete");
    }
    if (res->status != PARLEY_OK) {
        stream_partial(st);
        return;
    }
    if (st->len == 0) {
        if (st->refusal[0]) {
            llm_text_copy(why, sizeof(why), st->refusal);
            stream_fail(st, PARLEY_ERR_PROTOCOL, 0, "the model refused: "
                        "%.200s", why);
        } else {
            stream_fail(st, PARLEY_ERR_PROTOCOL, 0, "the LLM API stream "
                        "has no message content");
        }
        return;
    }
    free(res->content);
    free(res->finish_reason);
    res->content = st->text;    /* its tail goes out in emit_rest */
    st->text = NULL;
    st->cap = 0;
    res->finish_reason = st->finish_reason;
    st->finish_reason = NULL;
    res->prompt_tokens = st->prompt_tokens;
    res->completion_tokens = st->completion_tokens;
}

int llm_stream_emit_rest(struct llm_stream *st, char *text)
{
    return stream_emit(st, text, strlen(text));
}

void llm_stream_free(struct llm_stream *st)
{
    if (!st)
        return;
    sse_free(&st->sse);
    free(st->text);
    free(st->finish_reason);
    free(st);
}
