/*
 * Conversation history per room, the pure part: a turn and its JSON form
 * (one entry of the Redis list ctx:<room>, oldest first), the token
 * estimate and trimming.  The Redis calls are state_history_* (state.h).
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

#endif
