/*
 * Assembly of the chat-completions "messages" array.  Order: one system
 * message (the chosen system prompt, plus the greeting instruction on first
 * contact), few-shot pairs as user/assistant messages, the room's history
 * trimmed to the token budget, and last the new user turn.  Group chats
 * have many speakers, so user turns carry the speaker as a "Name: " prefix
 * in content rather than the optional "name" field, which some
 * OpenAI-compatible servers reject or ignore.
 *
 * A pure greeting (no user text) still ends with a short user message that
 * describes the situation, e.g. "(You have just joined this room. Greet
 * everyone.)": OpenAI accepts a list of only system messages, but several
 * local servers (llama.cpp and vLLM chat templates among them) reject a
 * conversation without a user message, so the portable form wins.
 *
 * All text is cleaned to valid UTF-8 (context_text_clean) because cJSON
 * copies bytes as they are and the API rejects invalid UTF-8 JSON.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "context.h"
#include "prompt.h"

/* One message text at most this long; the system prompt and greeting
 * come from the config (CONFIG_TEXT_MAX each), turns are capped by
 * CONTEXT_TURN_MAX, so this only guards against a caller bug. */
#define PROMPT_TEXT_MAX (4 * CONFIG_TEXT_MAX)

/* Add {"role": role, "content": a + b} (b may be NULL) to arr. */
static int prompt_add(cJSON *arr, const char *role, const char *a,
                      const char *b)
{
    size_t alen = a ? strlen(a) : 0, blen = b ? strlen(b) : 0;
    char *joined, *clean;
    cJSON *msg;

    if (alen > PROMPT_TEXT_MAX || blen > PROMPT_TEXT_MAX)
        return -1;
    joined = malloc(alen + blen + 1);
    if (!joined)
        return -1;
    memcpy(joined, a ? a : "", alen);
    memcpy(joined + alen, b ? b : "", blen);
    joined[alen + blen] = '\0';
    /* Each invalid byte may grow into a 3-byte U+FFFD. */
    clean = context_text_clean(joined, alen + blen, (alen + blen) * 3, NULL);
    free(joined);
    if (!clean)
        return -1;
    msg = cJSON_CreateObject();
    if (!msg || !cJSON_AddStringToObject(msg, "role", role) ||
        !cJSON_AddStringToObject(msg, "content", clean) ||
        !cJSON_AddItemToArray(arr, msg)) {
        cJSON_Delete(msg);
        free(clean);
        return -1;
    }
    free(clean);
    return 0;
}

/* Turn the last message of arr (a user message with string content)
 * into content parts: its text, then the picture at url. */
static int prompt_attach_image(cJSON *arr, const char *url)
{
    cJSON *msg = cJSON_GetArrayItem(arr, cJSON_GetArraySize(arr) - 1);
    cJSON *text = msg ? cJSON_DetachItemFromObjectCaseSensitive(msg,
                                                                "content")
                      : NULL;
    cJSON *parts, *tpart, *ipart, *iurl;

    if (!text)
        return -1;
    parts = cJSON_CreateArray();
    tpart = cJSON_CreateObject();
    ipart = cJSON_CreateObject();
    iurl = cJSON_CreateObject();
    if (!parts || !tpart || !ipart || !iurl ||
        !cJSON_AddItemToObject(msg, "content", parts)) {
        cJSON_Delete(parts);
        cJSON_Delete(tpart);
        cJSON_Delete(ipart);
        cJSON_Delete(iurl);
        cJSON_Delete(text);
        return -1;
    }
    cJSON_AddItemToArray(parts, tpart);
    cJSON_AddItemToArray(parts, ipart);
    if (!cJSON_AddStringToObject(tpart, "type", "text") ||
        !cJSON_AddItemToObject(tpart, "text", text)) {
        cJSON_Delete(text);
        cJSON_Delete(iurl);
        return -1;
    }
    if (!cJSON_AddStringToObject(ipart, "type", "image_url") ||
        !cJSON_AddItemToObject(ipart, "image_url", iurl)) {
        cJSON_Delete(iurl);
        return -1;
    }
    return cJSON_AddStringToObject(iurl, "url", url) ? 0 : -1;
}

/* A user message "Name: text", or just text without a name. */
static int prompt_add_user(cJSON *arr, const char *name, const char *text)
{
    char prefix[CONTEXT_NAME_MAX + 3];
    int n;

    if (!name || !name[0])
        return prompt_add(arr, "user", text, NULL);
    n = snprintf(prefix, sizeof(prefix), "%.*s: ", CONTEXT_NAME_MAX, name);
    if (n < 0)
        return -1;
    return prompt_add(arr, "user", prefix, text);
}

static int prompt_add_system(cJSON *arr, const struct prompt_input *in)
{
    const char *sys = in->system && in->system[0] ? in->system : NULL;
    const char *greet = in->first_contact && in->greeting &&
                        in->greeting[0] ? in->greeting : NULL;
    char *both;
    size_t slen, glen;
    int result;

    if (!sys && !greet)
        return 0;
    if (!sys || !greet)
        return prompt_add(arr, "system", sys ? sys : greet, NULL);
    slen = strlen(sys);
    glen = strlen(greet);
    if (slen > PROMPT_TEXT_MAX || glen > PROMPT_TEXT_MAX)
        return -1;
    both = malloc(slen + 2 + glen + 1);
    if (!both)
        return -1;
    memcpy(both, sys, slen);
    memcpy(both + slen, "\n\n", 2);
    memcpy(both + slen + 2, greet, glen + 1);
    result = prompt_add(arr, "system", both, NULL);
    free(both);
    return result;
}

static int prompt_add_history(cJSON *arr, const struct prompt_input *in)
{
    const struct history *h = in->history;
    size_t start;

    if (!h || h->n == 0)
        return 0;
    start = context_keep_from(h, 0, in->max_history_tokens);
    for (size_t i = start; i < h->n; i++) {
        const struct turn *t = &h->turns[i];
        int result;

        if (!t->role || !t->content)
            continue;
        if (strcmp(t->role, "user") == 0)
            result = prompt_add_user(arr, t->name, t->content);
        else if (strcmp(t->role, "assistant") == 0)
            result = prompt_add(arr, "assistant", t->content, NULL);
        else
            continue;
        if (result)
            return -1;
    }
    return 0;
}

/* The user message that stands for a greeting with nothing to answer. */
static int prompt_add_situation(cJSON *arr, const struct prompt_input *in)
{
    char text[CONTEXT_NAME_MAX + 128];
    int n;

    if (in->user_name && in->user_name[0])
        n = snprintf(text, sizeof(text),
                     "(%.*s has just joined the room. Greet them.)",
                     CONTEXT_NAME_MAX, in->user_name);
    else
        n = snprintf(text, sizeof(text),
                     "(You have just joined this room. Greet everyone.)");
    if (n < 0 || (size_t)n >= sizeof(text))
        return -1;
    return prompt_add(arr, "user", text, NULL);
}

struct cJSON *prompt_build(const struct prompt_input *in)
{
    cJSON *arr = cJSON_CreateArray();

    if (!arr)
        return NULL;
    if (prompt_add_system(arr, in))
        goto fail;
    for (size_t i = 0; in->fewshot && i < in->n_fewshot; i++) {
        const struct config_fewshot *f = &in->fewshot[i];

        if (!f->user || !f->assistant)
            continue;
        if (prompt_add(arr, "user", f->user, NULL) ||
            prompt_add(arr, "assistant", f->assistant, NULL))
            goto fail;
    }
    if (prompt_add_history(arr, in))
        goto fail;
    if (in->user_text) {
        if (prompt_add_user(arr, in->user_name, in->user_text))
            goto fail;
        if (in->image_url && prompt_attach_image(arr, in->image_url))
            goto fail;
    } else if (prompt_add_situation(arr, in)) {
        goto fail;
    }
    return arr;
fail:
    cJSON_Delete(arr);
    return NULL;
}
