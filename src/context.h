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

/* Display names longer than this are cut (on a UTF-8 boundary): a name
 * is a label, and it is repeated in every stored turn and prompt line. */
#define CONTEXT_NAME_MAX 256

/*
 * Token estimate, the one place to swap in a real tokenizer: about 4 bytes
 * per token for ASCII and 1 token per non-ASCII code point (an invalid
 * UTF-8 byte counts as one), i.e. ceil(ascii_bytes / 4) + non_ascii.
 * context_token_estimate counts text only; each chat message costs
 * CONTEXT_MESSAGE_TOKENS more for its framing (role, separators), which
 * context_turn_tokens adds.  prompt.c and context_trim both budget with
 * context_turn_tokens, so a history trimmed here fits the prompt too.
 */
#define CONTEXT_MESSAGE_TOKENS 4
size_t context_token_estimate(const char *text);

/* Tokens one history turn costs in a prompt: its content as prompt.c
 * renders it ("Name: text" for a named user turn, the text otherwise)
 * plus CONTEXT_MESSAGE_TOKENS. */
size_t context_turn_tokens(const struct turn *t);

/*
 * Copy of text (len bytes) that is valid UTF-8 (each invalid byte becomes
 * U+FFFD) and at most max bytes long, cut on a character boundary; sets
 * *cut when bytes were dropped (cut may be NULL).  Caller frees; NULL on
 * OOM.
 */
char *context_text_clean(const char *text, size_t len, size_t max,
                         int *cut);

/*
 * JSON encoding of a turn, {"role","name","content","ts"} ("name" null when
 * unset), at most CONTEXT_TURN_MAX bytes: content is cut on a UTF-8
 * boundary to fit, invalid UTF-8 is replaced.  Caller frees the string.
 * NULL on OOM or when role is not "user" / "assistant".
 */
char *context_turn_to_json(const struct turn *t);
/* Parse; PARLEY_ERR_PROTOCOL on malformed input (not an object, role not
 * user/assistant, content missing or not a string, name not a string or
 * null, ts not a number), PARLEY_ERR_TOO_LARGE over CONTEXT_TURN_MAX,
 * _OOM.  On error the turn is left zeroed; on success free it with
 * context_turn_free. */
int context_turn_from_json(const char *json, size_t len, struct turn *t);

/*
 * Index of the first turn to keep so that at most max_turns remain and
 * their context_turn_tokens sum is within max_tokens (0 = no limit for
 * either).  When anything is dropped, leading assistant turns are dropped
 * too: an answer whose question is gone misleads the model, and some
 * chat templates reject a conversation opening with the assistant.  A
 * history that starts with the bot's own greeting and needs no trimming
 * is kept whole.  Returns h->n when nothing fits.
 */
size_t context_keep_from(const struct history *h, size_t max_turns,
                         size_t max_tokens);
/* Apply context_keep_from: free the dropped turns, keep the rest. */
void context_trim(struct history *h, size_t max_turns, size_t max_tokens);

void context_turn_free(struct turn *t);
void context_history_free(struct history *h);

/*
 * Redis calls, superseded by state_history_load/append/reset (state.h,
 * state_history.c, which also keep the room's epoch); kept only until
 * job.c and command.c are switched over, then deleted with the hiredis
 * include in context.c.  room_key is any NUL-terminated bytes (CR/LF,
 * spaces and non-UTF-8 included): the key is prefix + "ctx:" + room_key,
 * sent as one binary-safe argument; PARLEY_ERR_TOO_LARGE if it exceeds
 * STORE_KEY_MAX.
 * Each returns PARLEY_ERR_STATE at once while Redis is down and then does
 * not call fn; after PARLEY_OK, fn runs exactly once, with _IO when the
 * connection dropped (or store_close ran) before the reply.
 * The history passed to context_load_fn (NULL unless status is OK) is
 * owned by the callee: free it with context_history_free.
 */
typedef void context_load_fn(int status, struct history *h, void *privdata);
typedef void context_done_fn(int status, void *privdata);

/* Load the room's history, oldest first and untrimmed (malformed entries
 * are skipped and logged at WARN), and refresh its TTL to cfg->ttl_s (cfg
 * may be NULL: no refresh).  fn gets _OTHER for a Redis error reply,
 * _PROTOCOL for a key that is not a list. */
int context_load(struct store *st, const char *room_key,
                 const struct config_context *cfg,
                 context_load_fn *fn, void *privdata);
/* Append turns atomically (MULTI: RPUSH, LTRIM -max_turns -1, EXPIRE
 * ttl_s; max_turns or ttl_s <= 0 skips that step; EXEC).  n must be > 0
 * and every role user/assistant, else PARLEY_ERR_OTHER without fn. */
int context_append(struct store *st, const char *room_key,
                   const struct turn *turns, size_t n,
                   const struct config_context *cfg,
                   context_done_fn *fn, void *privdata);
/* Delete the room's history (!reset). */
int context_clear(struct store *st, const char *room_key,
                  context_done_fn *fn, void *privdata);

#endif
