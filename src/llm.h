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
 */
#ifndef PARLEY_LLM_H
#define PARLEY_LLM_H

#include <stddef.h>

struct cJSON;
struct loop;
struct llm;
struct llm_request;
struct config_llm;

/* Largest answer body accepted from the API. */
#define LLM_BODY_MAX (4 * 1024 * 1024)

struct llm_result {
    int status;             /* PARLEY_OK, or _HTTP/_TIMEOUT/_IO/_PROTOCOL,
                               _TOO_LARGE (body over LLM_BODY_MAX) */
    long http_code;         /* last HTTP status, 0 if none */
    int retryable;          /* the last failure was worth retrying */
    int attempts;           /* requests sent */
    char *content;          /* answer text (status OK), owned by llm */
    char *finish_reason;    /* or NULL */
    long prompt_tokens;     /* -1 when usage was absent */
    long completion_tokens;
    char errstr[256];       /* operator-facing reason; never the key */
};

typedef void llm_done_fn(const struct llm_result *res, void *privdata);

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
/* Delay before retry number attempt (1-based): full jitter,
 * rnd in [0,1) * min(max, base * 2^(attempt-1)), but never less than
 * retry_after_ms when that is >= 0 (capped at max * 4). */
long llm_backoff_ms(int attempt, long base_ms, long max_ms,
                    long retry_after_ms, double rnd);
void llm_result_clear(struct llm_result *res);

/* Cancel every request (no callbacks) and free the client; allowed inside
 * a done callback (deferred until it returns).  Call before loop_close,
 * then run the loop so that retry timers finish closing. */
void llm_free(struct llm *llm);

#endif
