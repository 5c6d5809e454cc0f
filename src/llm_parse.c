/*
 * The text side of the LLM client, with no I/O: the request body, the
 * answer of a chat completion, the error body of a failed one, and the
 * redaction of the API key from any of them.  The key is cut out of a
 * body before it is parsed, since some servers echo the presented key and
 * a model may repeat it; error texts are redacted again (with every secret
 * the logger knows) before they are cut to errstr.  Tests feed these
 * functions bytes directly.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "llm.h"
#include "llm_private.h"
#include "log.h"
#include "status.h"

/* Bytes of a non-JSON error body quoted in an error message, enough to
 * recognise a proxy's HTML error page without flooding the log. */
#define LLM_ERROR_SNIPPET 120

/* Copy s with every occurrence of key replaced by "[redacted]".  Returns
 * NULL on OOM; *outlen is the new length.  The copy is NUL-terminated. */
char *llm_redact_copy(const char *s, size_t len, const char *key,
                      size_t *outlen)
{
    static const char mark[] = "[redacted]";
    size_t klen = key ? strlen(key) : 0;
    size_t hits = 0, i, o;
    char *out;

    if (klen >= LLM_SECRET_MIN) {
        for (i = 0; i + klen <= len; i++) {
            if (memcmp(s + i, key, klen) == 0) {
                hits++;
                i += klen - 1;
            }
        }
    }
    /* Each hit replaces at least LLM_SECRET_MIN bytes with the mark,
     * so hits * sizeof(mark) extra bytes always suffice; len is capped
     * by LLM_BODY_MAX, so the sum cannot overflow. */
    out = malloc(len + hits * sizeof(mark) + 1);
    if (!out)
        return NULL;
    for (i = 0, o = 0; i < len;) {
        if (hits && i + klen <= len && memcmp(s + i, key, klen) == 0) {
            memcpy(out + o, mark, sizeof(mark) - 1);
            o += sizeof(mark) - 1;
            i += klen;
        } else {
            out[o++] = s[i++];
        }
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

/* Replace the key (and every secret the logger knows) in buf, in place. */
void llm_redact_text(char *buf, size_t buflen, const char *key)
{
    size_t n;
    char *copy = llm_redact_copy(buf, strlen(buf), key, &n);

    if (copy) {
        snprintf(buf, buflen, "%s", copy);
        free(copy);
    } else if (key && strlen(key) >= LLM_SECRET_MIN && strstr(buf, key)) {
        /* No memory to redact: say nothing rather than leak. */
        snprintf(buf, buflen, "(error text withheld)");
    }
    log_redact(buf, buflen);
}

/* Copy src into dst, cut to fit: error texts are allowed to be
 * shortened, and the cut happens after redaction. */
void llm_text_copy(char *dst, size_t dstlen, const char *src)
{
    size_t n = strlen(src);

    if (dstlen == 0)
        return;
    if (n >= dstlen)
        n = dstlen - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Make text safe for one log line: control bytes become spaces. */
void llm_strip_controls(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = ' ';
}

void llm_result_clear(struct llm_result *res)
{
    free(res->content);
    free(res->finish_reason);
    memset(res, 0, sizeof(*res));
    res->prompt_tokens = -1;
    res->completion_tokens = -1;
}

/* The request body; stream adds "stream" and asks for usage in the last
 * chunk (without stream_options, OpenAI sends no usage when streaming). */
char *llm_body_build(const char *model, const struct cJSON *messages,
                     double temperature, int max_tokens, int stream)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *msgs, *opts;
    char *out = NULL;

    if (!root)
        return NULL;
    if (!cJSON_AddStringToObject(root, "model", model ? model : ""))
        goto done;
    /* A reference, not a copy: the messages can hold a picture of
     * megabytes, and the tree is only read here (cJSON_Delete(root)
     * leaves the referenced items alone). */
    msgs = messages ? cJSON_CreateArrayReference(messages->child) : NULL;
    if (!msgs)
        goto done;
    if (!cJSON_AddItemToObject(root, "messages", msgs)) {
        cJSON_Delete(msgs);
        goto done;
    }
    if (temperature >= 0 && isfinite(temperature) &&
        !cJSON_AddNumberToObject(root, "temperature", temperature))
        goto done;
    if (max_tokens > 0 &&
        !cJSON_AddNumberToObject(root, "max_tokens", max_tokens))
        goto done;
    if (stream) {
        if (!cJSON_AddTrueToObject(root, "stream"))
            goto done;
        opts = cJSON_AddObjectToObject(root, "stream_options");
        if (!opts || !cJSON_AddTrueToObject(opts, "include_usage"))
            goto done;
    }
    out = cJSON_PrintUnformatted(root);
done:
    cJSON_Delete(root);
    return out;
}

char *llm_request_body(const char *model, const struct cJSON *messages,
                       double temperature, int max_tokens)
{
    return llm_body_build(model, messages, temperature, max_tokens, 0);
}

/* A usage count, or -1 when absent or not a sane non-negative integer. */
long llm_token_count(const cJSON *usage, const char *name)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(usage, name);

    if (!cJSON_IsNumber(n) || !(n->valuedouble >= 0) ||
        n->valuedouble > (double)INT32_MAX)
        return -1;
    return (long)n->valuedouble;
}

/* Fill buf from a parsed error body; 1 if anything was found. */
int llm_error_from_json(const cJSON *root, char *buf, size_t buflen)
{
    const cJSON *err, *code, *type, *msg;
    const char *prefix = NULL;
    char num[32];

    if (!cJSON_IsObject(root))
        return 0;
    err = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (cJSON_IsString(err) && err->valuestring[0]) {
        snprintf(buf, buflen, "%s", err->valuestring);
        return 1;
    }
    if (cJSON_IsObject(err)) {
        code = cJSON_GetObjectItemCaseSensitive(err, "code");
        type = cJSON_GetObjectItemCaseSensitive(err, "type");
        msg = cJSON_GetObjectItemCaseSensitive(err, "message");
        if (cJSON_IsString(code) && code->valuestring[0]) {
            prefix = code->valuestring;
        } else if (cJSON_IsNumber(code) && fabs(code->valuedouble) < 1e9) {
            snprintf(num, sizeof(num), "%ld", (long)code->valuedouble);
            prefix = num;
        } else if (cJSON_IsString(type) && type->valuestring[0]) {
            prefix = type->valuestring;
        }
        if (cJSON_IsString(msg) && msg->valuestring[0]) {
            if (prefix)
                snprintf(buf, buflen, "%s: %s", prefix, msg->valuestring);
            else
                snprintf(buf, buflen, "%s", msg->valuestring);
            return 1;
        }
        if (prefix) {
            snprintf(buf, buflen, "%s", prefix);
            return 1;
        }
    }
    /* FastAPI-based servers (vLLM) say {"detail": ...}, others
     * {"message": ...}. */
    msg = cJSON_GetObjectItemCaseSensitive(root, "detail");
    if (!cJSON_IsString(msg))
        msg = cJSON_GetObjectItemCaseSensitive(root, "message");
    if (cJSON_IsString(msg) && msg->valuestring[0]) {
        snprintf(buf, buflen, "%s", msg->valuestring);
        return 1;
    }
    return 0;
}

void llm_parse_error(const char *body, size_t len, char *buf, size_t buflen)
{
    cJSON *root;
    size_t i, o;

    if (!buf || buflen == 0)
        return;
    buf[0] = '\0';
    root = body && len ? cJSON_ParseWithLength(body, len) : NULL;
    if (root && llm_error_from_json(root, buf, buflen)) {
        cJSON_Delete(root);
        llm_strip_controls(buf);
        return;
    }
    cJSON_Delete(root);
    if (!body || len == 0) {
        snprintf(buf, buflen, "(empty body)");
        return;
    }
    /* Not an API error body (a proxy's page, say): quote its start,
     * ASCII only, so the log line stays one valid line. */
    for (i = 0, o = 0; i < len && i < LLM_ERROR_SNIPPET && o + 1 < buflen;
         i++) {
        unsigned char c = (unsigned char)body[i];

        buf[o++] = c < 0x20 || c >= 0x7f ? (c >= 0x80 ? '?' : ' ') :
            (char)c;
    }
    buf[o] = '\0';
}

/* Set res->errstr and return PARLEY_ERR_PROTOCOL. */
static int protocol_error(struct llm_result *res, const char *what)
{
    snprintf(res->errstr, sizeof(res->errstr), "%s", what);
    res->status = PARLEY_ERR_PROTOCOL;
    return PARLEY_ERR_PROTOCOL;
}

int llm_parse_response(const char *body, size_t len, struct llm_result *res)
{
    const cJSON *choices, *first, *message, *content, *finish, *usage;
    const cJSON *refusal;
    cJSON *root;
    int result = PARLEY_OK;
    char why[LLM_ERRTEXT_MAX];

    free(res->content);
    free(res->finish_reason);
    res->content = NULL;
    res->finish_reason = NULL;
    res->prompt_tokens = -1;
    res->completion_tokens = -1;
    res->errstr[0] = '\0';

    root = body && len ? cJSON_ParseWithLength(body, len) : NULL;
    if (!root) {
        snprintf(res->errstr, sizeof(res->errstr),
                 "the LLM API answer is not valid JSON (%zu bytes)", len);
        res->status = PARLEY_ERR_PROTOCOL;
        return PARLEY_ERR_PROTOCOL;
    }
    if (!cJSON_IsObject(root)) {
        result = protocol_error(res, "the LLM API answer is not an object");
        goto done;
    }
    choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    first = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (!cJSON_IsObject(first)) {
        /* Some gateways answer 200 with an error object. */
        if (llm_error_from_json(root, why, sizeof(why))) {
            llm_strip_controls(why);
            snprintf(res->errstr, sizeof(res->errstr),
                     "the LLM API answer holds an error: %.200s", why);
            res->status = PARLEY_ERR_PROTOCOL;
            result = PARLEY_ERR_PROTOCOL;
        } else {
            result = protocol_error(res, "the LLM API answer has no choices");
        }
        goto done;
    }
    message = cJSON_GetObjectItemCaseSensitive(first, "message");
    content = cJSON_GetObjectItemCaseSensitive(message, "content");
    if (!cJSON_IsString(content) || content->valuestring[0] == '\0') {
        refusal = cJSON_GetObjectItemCaseSensitive(message, "refusal");
        if (cJSON_IsString(refusal) && refusal->valuestring[0]) {
            snprintf(why, sizeof(why), "%s", refusal->valuestring);
            llm_strip_controls(why);
            snprintf(res->errstr, sizeof(res->errstr),
                     "the model refused: %.200s", why);
            res->status = PARLEY_ERR_PROTOCOL;
            result = PARLEY_ERR_PROTOCOL;
        } else {
            result = protocol_error(res,
                "the LLM API answer has no message content");
        }
        goto done;
    }
    res->content = strdup(content->valuestring);
    if (!res->content) {
        result = PARLEY_ERR_OOM;
        res->status = result;
        snprintf(res->errstr, sizeof(res->errstr), "out of memory");
        goto done;
    }
    finish = cJSON_GetObjectItemCaseSensitive(first, "finish_reason");
    if (cJSON_IsString(finish)) {
        res->finish_reason = strdup(finish->valuestring);
        if (!res->finish_reason) {
            free(res->content);
            res->content = NULL;
            result = PARLEY_ERR_OOM;
            res->status = result;
            snprintf(res->errstr, sizeof(res->errstr), "out of memory");
            goto done;
        }
    }
    usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (cJSON_IsObject(usage)) {
        res->prompt_tokens = llm_token_count(usage, "prompt_tokens");
        res->completion_tokens = llm_token_count(usage, "completion_tokens");
    }
    res->status = PARLEY_OK;
done:
    cJSON_Delete(root);
    return result;
}
