/*
 * Assembly of the chat-completions message list: system prompt (room
 * override or default), the proactive-greeting instruction, few-shot
 * pairs, the history trimmed to the token budget with speaker names, and
 * the new turn.  Loop-free and Redis-free, so tests build prompts from
 * plain structs.
 */
#ifndef PARLEY_PROMPT_H
#define PARLEY_PROMPT_H

#include <stddef.h>

struct cJSON;
struct history;
struct config_fewshot;

struct prompt_input {
    const char *bot_name;
    const char *system;         /* system prompt to use (already chosen) */
    const char *greeting;       /* greeting instruction, or NULL */
    int first_contact;          /* room has no history: greet + invite */
    const struct config_fewshot *fewshot;
    size_t n_fewshot;
    const struct history *history;  /* may be NULL */
    size_t max_history_tokens;  /* budget for history; 0 = no limit */
    const char *user_name;      /* speaker of the new turn, or NULL */
    const char *user_text;      /* the new turn; NULL for a pure greeting */
    const char *image_url;      /* a picture with the new turn, as a data
                                   URL (image_data_url), or NULL */
};

/*
 * Build the "messages" array.  User turns carry the speaker as a
 * "Name: " prefix in content (portable across OpenAI-compatible servers,
 * some of which reject the optional "name" field).  History that does not
 * fit the budget is dropped oldest first (context_keep_from, so never
 * opening with an orphaned assistant turn).  With user_text NULL (a pure
 * greeting) the list ends with a short user message describing the
 * situation ("(You have just joined this room. Greet everyone.)", or
 * "(Name has just joined the room. Greet them.)" when user_name is set),
 * since some local servers reject a list without a user message.  The
 * greeting instruction is appended to the system message, after a blank
 * line, only when first_contact is set.  With image_url the new turn's
 * content is a list of parts, the text then the picture ({"type":
 * "image_url", "image_url": {"url": ...}}), as OpenAI's vision models
 * take it.  Returns a new cJSON array the
 * caller owns, or NULL on OOM.
 */
struct cJSON *prompt_build(const struct prompt_input *in);

#endif
