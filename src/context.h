/*
 * Conversation history per room, kept in Redis as a list of JSON turns
 * (ctx:<room>, oldest first), trimmed to max_turns on every append and
 * given a TTL refreshed on use.  The pure parts (JSON encoding, token
 * estimate, trimming) are separate from the Redis calls so unit tests can
 * feed them bytes.
 */
#ifndef PARLEY_CONTEXT_H
#define PARLEY_CONTEXT_H

#include <stddef.h>

struct store;
struct config_context;

/* One stored turn is at most this many bytes of JSON; longer content is
 * cut on a UTF-8 boundary before storing. */
#define CONTEXT_TURN_MAX (32 * 1024)

struct turn {
    char *role;             /* "user" or "assistant" */
    char *name;             /* speaker display name, or NULL */
    char *content;
    long long ts;           /* unix seconds */
};

struct history {
    struct turn *turns;     /* oldest first */
    size_t n;
};

/*
 * Estimated tokens of text.  The one place to swap in a real tokenizer:
 * about 4 bytes per token for ASCII, 1 token per non-ASCII code point,
 * plus 4 per message for the chat framing.
 */
size_t context_token_estimate(const char *text);

/* JSON encoding of a turn; caller frees the string.  NULL on OOM. */
char *context_turn_to_json(const struct turn *t);
/* Parse; PARLEY_ERR_PROTOCOL on malformed input (turn left zeroed). */
int context_turn_from_json(const char *json, size_t len, struct turn *t);

/* Drop the oldest turns until at most max_turns remain and the estimate
 * is within max_tokens (0 = no limit).  Never leaves an assistant turn
 * first without its user turn. */
void context_trim(struct history *h, size_t max_turns, size_t max_tokens);

void context_turn_free(struct turn *t);
void context_history_free(struct history *h);

/* Callbacks: status is PARLEY_OK or an error (Redis down: _STATE).
 * h is owned by the callee (free with context_history_free). */
typedef void context_load_fn(int status, struct history *h, void *privdata);
typedef void context_done_fn(int status, void *privdata);

/* Load the room's history (malformed entries are skipped and logged). */
int context_load(struct store *st, const char *room_key,
                 context_load_fn *fn, void *privdata);
/* Append turns atomically (MULTI: RPUSH, LTRIM, EXPIRE). */
int context_append(struct store *st, const char *room_key,
                   const struct turn *turns, size_t n,
                   const struct config_context *cfg,
                   context_done_fn *fn, void *privdata);
int context_clear(struct store *st, const char *room_key,
                  context_done_fn *fn, void *privdata);

#endif
