/*
 * libFuzzer target: the LLM stream reader (SSE events, chat.completion.chunk
 * JSON, key redaction across events, UTF-8 hold-back, the answer cap) on
 * arbitrary bytes, fed whole and cut into pieces whose sizes come from the
 * input.  Invariants: no crash or leak; the pieces handed out add up to
 * res.content on success, and each piece's content is the text so far;
 * the key never appears in any piece, in the answer or in an error; a
 * failure has no content and a one-line reason; and how the bytes were
 * cut changes neither the outcome nor the text.
 *
 * By hand with libFuzzer:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_llm_stream.c src/llm.c src/llm_parse.c \
 *     src/llm_stream.c src/loop.c src/log.c \
 *     src/sse.c src/status.c -lcjson -lcurl -luv -lm -o fuzz_llm_stream
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llm.h"
#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The seed corpus spells this key across events. */
#define FUZZ_KEY "sk-fuzz-0123456789"

struct seen {
    char *text;             /* the pieces, concatenated */
    size_t len;
    size_t cap;
};

static int on_piece(const struct llm_delta *d, void *privdata)
{
    struct seen *s = privdata;

    if (d->len == 0 || strlen(d->text) != d->len ||
        d->content_len != s->len + d->len ||
        strlen(d->content) != d->content_len ||
        (s->len && memcmp(d->content, s->text, s->len) != 0) ||
        d->text != d->content + s->len)
        abort();
    if (s->len + d->len + 1 > s->cap) {
        size_t cap = (s->len + d->len + 1) * 2;
        char *p = realloc(s->text, cap);

        if (!p)
            abort();
        s->text = p;
        s->cap = cap;
    }
    memcpy(s->text + s->len, d->text, d->len + 1);
    s->len += d->len;
    if (memmem(s->text, s->len, FUZZ_KEY, sizeof(FUZZ_KEY) - 1))
        abort();            /* the key got out */
    return PARLEY_OK;
}

static void check_line(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);

    if (n >= cap || n == 0)
        abort();
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            abort();
    if (strstr(s, FUZZ_KEY))
        abort();
}

/* Read data whole (step 0) or in pieces of 1..step bytes. */
static void run(const uint8_t *data, size_t size, size_t step,
                struct llm_result *res, struct seen *seen)
{
    struct llm_stream *st;
    size_t off = 0, k = 0;
    int result = PARLEY_OK;

    memset(res, 0, sizeof(*res));
    llm_result_clear(res);
    memset(seen, 0, sizeof(*seen));
    if (llm_stream_create(&st, FUZZ_KEY, on_piece, seen, res) != PARLEY_OK)
        abort();
    while (off < size && result == PARLEY_OK) {
        size_t n = step ? 1 + (data[k++ % size] % step) : size;

        if (n > size - off)
            n = size - off;
        result = llm_stream_feed(st, (const char *)data + off, n);
        off += n;
    }
    if ((result == PARLEY_OK) != (res->status == PARLEY_OK))
        abort();            /* a failure is always in res */
    llm_stream_end(st, PARLEY_OK, NULL);
    if (res->status == PARLEY_OK) {
        if (!res->content || !res->content[0] || res->errstr[0])
            abort();
        llm_stream_emit_rest(st, res->content);
        if (seen->len != strlen(res->content) ||
            memcmp(seen->text, res->content, seen->len) != 0 ||
            res->delivered != seen->len)
            abort();        /* the pieces are the answer */
        if (seen->len > LLM_BODY_MAX)
            abort();
    } else {
        if (res->content)
            abort();
        check_line(res->errstr, sizeof(res->errstr));
        if (res->delivered != seen->len)
            abort();
        if (seen->len > 0 && res->retryable)
            abort();        /* never retried once text was shown */
    }
    llm_stream_free(st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct llm_result a, b;
    struct seen sa, sb;

    run(data, size, 0, &a, &sa);
    run(data, size, 7, &b, &sb);
    if (a.status != b.status || strcmp(a.errstr, b.errstr) != 0 ||
        (a.status == PARLEY_OK && strcmp(a.content, b.content) != 0))
        abort();
    if (sa.len != sb.len ||
        memcmp(sa.text ? sa.text : "", sb.text ? sb.text : "", sa.len))
        abort();            /* the same pieces, however cut */
    free(sa.text);
    free(sb.text);
    llm_result_clear(&a);
    llm_result_clear(&b);
    return 0;
}
