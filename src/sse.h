/*
 * An incremental parser for server-sent events (text/event-stream), after
 * the WHATWG HTML standard, "Parsing an event stream" and "Interpreting an
 * event stream" (section 9.2.5-9.2.6).  It is fed the body in whatever
 * pieces the network delivers (an event, a line, even a CRLF pair may be
 * split between two feeds) and calls back once per complete event.  No
 * I/O and no loop, so tests and the fuzzer can feed it bytes directly.
 *
 * What the standard says, and where this parser differs:
 * - one leading U+FEFF BOM is skipped; lines end with CRLF, LF or a lone
 *   CR; a line starting with ':' is a comment; "name: value" drops one
 *   space after the colon; a line without a colon is a field with an
 *   empty value; unknown fields are ignored;
 * - "data" lines are joined with LF; "event" sets the type ("message" when
 *   unset or empty); "id" sets the last event ID unless it holds a NUL;
 *   "retry" is taken only when it is all ASCII digits;
 * - an empty line dispatches; an event without data is not dispatched;
 *   an event not closed by an empty line when the stream ends is
 *   discarded (sse_finish reports it);
 * - difference: bytes are passed through as they are, not decoded to
 *   UTF-16 with U+FFFD for invalid sequences; callers that need valid
 *   UTF-8 check it themselves (the LLM client parses the data as JSON);
 * - difference: a line, and an event's data, may be at most max_event
 *   bytes; more is a TOO_LARGE error instead of unbounded memory.
 *
 * Errors are sticky, as in hiredis's reader: after one, sse_feed returns
 * it again until sse_reset.
 */
#ifndef PARLEY_SSE_H
#define PARLEY_SSE_H

#include <stddef.h>

/* Default cap on one line and on one event's data.  An LLM stream's
 * events are a few hundred bytes; 1 MiB leaves room for servers that send
 * a whole answer as one event while still bounding memory. */
#define SSE_EVENT_MAX (1024 * 1024)

/* One dispatched event, valid only during the callback. */
struct sse_event {
    const char *type;       /* "message" unless an event field set it */
    const char *data;       /* data lines joined with LF, NUL-terminated;
                               may hold NUL bytes: use data_len */
    size_t data_len;
    const char *id;         /* last event ID so far, "" when none */
    long retry_ms;          /* reconnection time from a retry field of
                               this event, -1 when none */
};

/*
 * Called once per complete event.  Return PARLEY_OK to go on; any other
 * status stops the parser: sse_feed returns it at once (the rest of the
 * chunk is not read) and on every later call.  The callback must not
 * free or reset the parser.
 */
typedef int sse_event_fn(const struct sse_event *ev, void *privdata);

/* A growable buffer capped by its parser's max_event. */
struct sse_buf {
    char *p;
    size_t len;
    size_t cap;
};

/* The parser.  Fields are private; the struct is public so that it can
 * live inside its owner.  Memory is released by sse_free. */
struct sse_parser {
    sse_event_fn *cb;
    void *privdata;
    size_t max_event;
    struct sse_buf line;    /* a line split across feeds */
    struct sse_buf data;    /* data buffer of the event being read */
    struct sse_buf type;    /* event type buffer */
    struct sse_buf id;      /* last event ID buffer */
    long retry_ms;          /* retry field of this event, -1 when none */
    int bom_matched;        /* BOM bytes seen at the start; 3 or -1 when
                               past the start */
    int skip_lf;            /* the last line ended in CR: a leading LF in
                               the next feed is its other half */
    int err;                /* sticky status, PARLEY_OK when none */
    char errstr[128];
};

/* Prepare p; max_event 0 means SSE_EVENT_MAX.  Allocates nothing. */
void sse_init(struct sse_parser *p, size_t max_event, sse_event_fn *cb,
              void *privdata);

/*
 * Parse len bytes, calling cb for every event they complete.  Returns
 * PARLEY_OK, PARLEY_ERR_TOO_LARGE (a line or an event's data over
 * max_event), PARLEY_ERR_OOM, or the status a callback stopped with;
 * errstr says why.
 */
int sse_feed(struct sse_parser *p, const char *buf, size_t len);

/* The stream ended.  PARLEY_OK if it ended between events, else
 * PARLEY_ERR_EOF (an unfinished event was discarded, as the standard
 * says) or the sticky error. */
int sse_finish(struct sse_parser *p);

/* Forget all state and errors (a new stream); keeps cb and the cap. */
void sse_reset(struct sse_parser *p);

/* Free the buffers; p may be initialised again afterwards. */
void sse_free(struct sse_parser *p);

#endif
