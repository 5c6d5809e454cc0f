/*
 * libFuzzer target: the server-sent events parser on arbitrary bytes.
 * The input is parsed twice, once whole and once cut into pieces whose
 * sizes come from the input itself, with a small cap so that the
 * TOO_LARGE path is reached.  Invariants: no crash or overread; both ways
 * give the same events and the same final status (how the network cuts a
 * stream must never change what it means); every event respects the cap,
 * has a type and an id, and no type or id holds a line break.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sse.h"
#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Small enough that hostile inputs hit it often. */
#define FUZZ_SSE_CAP 512

struct digest {
    uint64_t hash;          /* FNV-1a over every event's fields */
    size_t events;
};

static void mix(struct digest *d, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        d->hash ^= (unsigned char)s[i];
        d->hash *= 1099511628211ULL;
    }
    d->hash ^= 0xff;        /* field separator */
    d->hash *= 1099511628211ULL;
}

static int on_event(const struct sse_event *ev, void *privdata)
{
    struct digest *d = privdata;

    if (ev->data_len > FUZZ_SSE_CAP || ev->data[ev->data_len] != '\0')
        abort();
    if (!ev->type || !ev->id || strpbrk(ev->type, "\r\n") ||
        strpbrk(ev->id, "\r\n") || strlen(ev->type) > FUZZ_SSE_CAP ||
        strlen(ev->id) > FUZZ_SSE_CAP)
        abort();
    d->events++;
    mix(d, ev->type, strlen(ev->type));
    mix(d, ev->id, strlen(ev->id));
    mix(d, (const char *)&ev->retry_ms, sizeof(ev->retry_ms));
    mix(d, ev->data, ev->data_len);
    return PARLEY_OK;
}

/* Parse data whole (step 0) or in pieces of 1..step bytes; returns the
 * feed status in *fed and the finish status as the result. */
static int parse(const uint8_t *data, size_t size, size_t step,
                 struct digest *d, int *fed)
{
    struct sse_parser p;
    size_t off = 0, k = 0;
    int result = PARLEY_OK, fin;

    memset(d, 0, sizeof(*d));
    d->hash = 14695981039346656037ULL;
    sse_init(&p, FUZZ_SSE_CAP, on_event, d);
    while (off < size && result == PARLEY_OK) {
        size_t n = step ? 1 + (data[k++ % size] % step) : size;

        if (n > size - off)
            n = size - off;
        result = sse_feed(&p, (const char *)data + off, n);
        off += n;
    }
    *fed = result;
    fin = sse_finish(&p);
    if (result != PARLEY_OK && fin != result)
        abort();            /* errors are sticky */
    if (fin != PARLEY_OK && p.errstr[0] == '\0')
        abort();            /* every failure says why */
    sse_free(&p);
    return fin;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct digest whole, cut;
    int fed_whole, fed_cut, fin_whole, fin_cut;

    fin_whole = parse(data, size, 0, &whole, &fed_whole);
    fin_cut = parse(data, size, 7, &cut, &fed_cut);
    if (fin_whole != fin_cut || fed_whole != fed_cut ||
        whole.events != cut.events || whole.hash != cut.hash)
        abort();
    return 0;
}
