/*
 * OpenAI-compatible chat-completions client on the shared curl multi
 * handle.  POST {base_url}/chat/completions with a Bearer key; retries
 * connection errors, timeouts, 429 and 5xx with exponential backoff and
 * full jitter, honouring Retry-After; never retries other 4xx.  The key is
 * only ever placed in the Authorization header and never in a message.
 *
 * Callback contract: if llm_complete returns PARLEY_OK, done runs exactly
 * once from the loop with a result valid only during the call, unless the
 * request is cancelled first.
 *
 * Streaming (llm_complete_stream) asks for "stream": true and reads the
 * server-sent events as they arrive; see the contract at its declaration.
 */
#ifndef PARLEY_LLM_H
#define PARLEY_LLM_H

#include <stddef.h>
#include <stdint.h>

struct cJSON;
struct loop;
struct llm;
struct llm_request;
struct config_llm;

/* Largest answer body accepted from the API. */
#define LLM_BODY_MAX (4 * 1024 * 1024)

struct llm_result {
    int status;             /* PARLEY_OK, or _HTTP/_TIMEOUT/_IO/_PROTOCOL,
                               _TOO_LARGE (body or streamed answer over
                               LLM_BODY_MAX), _EOF (a stream that ended
                               before the answer did) */
    long http_code;         /* last HTTP status, 0 if none */
    int retryable;          /* the last failure was worth retrying */
    int attempts;           /* requests sent */
    char *content;          /* answer text (status OK), owned by llm */
    char *finish_reason;    /* or NULL */
    long prompt_tokens;     /* -1 when usage was absent */
    long completion_tokens;
    size_t delivered;       /* streaming: bytes of the answer already
                               passed to on_delta.  A failure with
                               delivered > 0 means the stream broke after
                               people may have seen part of the answer;
                               it was not retried, and content is NULL */
    char errstr[256];       /* operator-facing reason; never the key */
};

typedef void llm_done_fn(const struct llm_result *res, void *privdata);

/* One new piece of a streamed answer, valid only during the call. */
struct llm_delta {
    const char *text;       /* the new piece, NUL-terminated, never empty */
    size_t len;
    const char *content;    /* the answer so far, this piece included,
                               NUL-terminated */
    size_t content_len;
};

typedef void llm_delta_fn(const struct llm_delta *delta, void *privdata);

/* api_key may be NULL (local servers); it is copied. */
int llm_create(struct llm **out, struct loop *loop,
               const struct config_llm *cfg, const char *api_key);

/* Replace the settings (SIGHUP); requests in flight keep the old ones. */
int llm_configure(struct llm *llm, const struct config_llm *cfg);

/*
 * Ask for a completion.  messages is consumed (freed by llm, also on
 * error).  model NULL = configured default.  *out may be NULL.
 */
int llm_complete(struct llm *llm, const char *model,
                 struct cJSON *messages, llm_done_fn *done, void *privdata,
                 struct llm_request **out);

/*
 * Ask for a completion and receive it as it is written.  Arguments,
 * ownership and errors as llm_complete; on_delta and done are required.
 *
 * Contract:
 * - on_delta runs zero or more times, from the loop (never inside this
 *   call, never inside a curl callback), with consecutive pieces of the
 *   answer; then done runs exactly once, unless the request is cancelled
 *   first.  A piece never ends inside a UTF-8 character, and never holds
 *   the API key, even split across server events (the text that could be
 *   its start is held back until it is known not to be).
 * - On success done gets the whole answer in res->content, exactly the
 *   concatenation of the pieces, with finish_reason and usage as
 *   llm_complete gives them.  A server that ignores "stream" and answers
 *   with one JSON body is read as llm_complete reads it, and its answer
 *   arrives as a single piece before done.
 * - Failures before the first piece are retried as llm_complete retries
 *   them (connection errors, timeouts, 408/409/429/5xx, Retry-After, and
 *   also a stream that breaks or reports a server error mid-way).  Once a
 *   piece was delivered nothing is retried: a stream that breaks ends
 *   with an error status, res->delivered > 0 and res->content NULL, and
 *   errstr says so, so that the caller can replace the partial text with
 *   its fallback.  Nothing of a broken stream is meant for history.
 * - The answer is capped at LLM_BODY_MAX bytes (TOO_LARGE beyond).
 * - on_delta may call llm_cancel (this request or another; for this one
 *   done then never runs), llm_free (as from done), and submit requests.
 */
int llm_complete_stream(struct llm *llm, const char *model,
                        struct cJSON *messages, llm_delta_fn *on_delta,
                        llm_done_fn *done, void *privdata,
                        struct llm_request **out);
void llm_cancel(struct llm_request *req);
/* Requests accepted and not yet called back: waiting for a slot, on the
 * wire, or sleeping before a retry. */
size_t llm_in_flight(const struct llm *llm);

/* Pure helpers, exposed for tests. */

/* Request body JSON; caller frees. NULL on OOM. messages not consumed. */
char *llm_request_body(const char *model, const struct cJSON *messages,
                       double temperature, int max_tokens);
/* Parse a 200 body into res (content, finish_reason, usage).  Returns
 * PARLEY_OK or PARLEY_ERR_PROTOCOL with res->errstr set.  res must be
 * zeroed or cleared first; content from an earlier parse is freed. */
int llm_parse_response(const char *body, size_t len, struct llm_result *res);
/* Extract error.message / error.type of an error body into buf. */
void llm_parse_error(const char *body, size_t len, char *buf, size_t buflen);
/* Whether a status code / transport status is worth retrying. */
int llm_is_retryable(int status, long http_code);
/* Delay before retry number attempt (1-based): full jitter over
 * [0, min(max, base * 2^(attempt-1))] picked by random (backoff.h), but
 * never less than retry_after_ms when that is >= 0 (capped at max * 4). */
long llm_backoff_ms(int attempt, long base_ms, long max_ms,
                    long retry_after_ms, uint64_t random);
void llm_result_clear(struct llm_result *res);

/*
 * The stream reader alone (llm_stream.c), loop-free, for tests and the
 * fuzzer (llm.c drives one per streaming request).  Fed the bytes of a
 * text/event-stream body, it reads the chat.completion.chunk events and
 * passes each safe piece of the answer to piece; failures and, at the
 * end, the answer go into res.
 */
struct llm_stream;

/* A safe piece (see llm_complete_stream).  PARLEY_OK goes on; anything
 * else stops the reader, and llm_stream_feed returns it. */
typedef int llm_piece_fn(const struct llm_delta *d, void *privdata);

/* key (may be NULL) and res are borrowed and must outlive *out. */
int llm_stream_create(struct llm_stream **out, const char *key,
                      llm_piece_fn *piece, void *privdata,
                      struct llm_result *res);
/* Start over for a new attempt; also clears res's status and errstr. */
void llm_stream_reset(struct llm_stream *st);
/* PARLEY_OK, or the failure (in res, unless a piece callback stopped it
 * with its own status). */
int llm_stream_feed(struct llm_stream *st, const char *data, size_t len);
/* The transfer ended with status (errstr: the transport's reason or
 * NULL): fills res with the answer (content moved in, its last piece not
 * yet handed out) or the failure, which is final once a piece went out. */
void llm_stream_end(struct llm_stream *st, int status, const char *errstr);
/* Hand out what piece has not seen of text (res->content after success,
 * or a whole answer from a server that ignored "stream"). */
int llm_stream_emit_rest(struct llm_stream *st, char *text);
void llm_stream_free(struct llm_stream *st);

/* Cancel every request (no callbacks) and free the client; allowed inside
 * a done callback (deferred until it returns).  Call before loop_close,
 * then run the loop so that retry timers finish closing. */
void llm_free(struct llm *llm);

#endif
