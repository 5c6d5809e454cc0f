/*
 * OpenAI-compatible chat-completions client.  Each llm_complete becomes a
 * request that waits in a FIFO until one of max_concurrent slots is free,
 * is sent through loop_http_start, and on a retryable failure (connection
 * error, timeout, 408, 409, 429, 5xx) sleeps on its own loop timer for a
 * full-jitter exponential backoff that never undercuts Retry-After, then
 * queues again.  Other 4xx end the request at once: retrying a bad key or
 * an unknown model only burns quota.  Error texts come from the API's
 * error body, with the key cut out of that body before it is read, since
 * some servers echo the presented key.  Settings are copied into each
 * request when it is submitted, so a SIGHUP reload leaves running requests
 * alone.  A done callback may submit, cancel or even free the client;
 * the free is then deferred until the callback returns (hiredis's
 * IN_CALLBACK rule).
 *
 * Streaming requests share all of that.  The loop hands a 2xx
 * text/event-stream body over piece by piece (from outside curl), the SSE
 * parser cuts it into events, each event's JSON chunk adds to the answer,
 * and the part of the answer that is safe to show (whole UTF-8
 * characters, nothing that could be the start of the key) goes to
 * on_delta, under the same IN_CALLBACK rule as done.  Any other answer
 * (an error status, or JSON from a server that ignores "stream") is
 * collected and judged exactly as for llm_complete.
 */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "backoff.h"
#include "config.h"
#include "llm.h"
#include "log.h"
#include "loop.h"
#include "random.h"
#include "sse.h"
#include "status.h"

/* Longest URL we build from base_url; real endpoints are far shorter. */
#define LLM_URL_MAX 2048

/* Longest Authorization header: the longest secret config accepts plus
 * "Authorization: Bearer ". */
#define LLM_AUTH_MAX (CONFIG_SECRET_MAX + 32)

/* Bytes of a non-JSON error body quoted in an error message, enough to
 * recognise a proxy's HTML error page without flooding the log. */
#define LLM_ERROR_SNIPPET 120

/* Working buffer for an error text before it is cut to errstr, so that
 * redaction sees whole secrets rather than a truncated prefix. */
#define LLM_ERRTEXT_MAX 1024

/* Redaction ignores secrets shorter than this (as log.c does): they would
 * match ordinary text. */
#define LLM_SECRET_MIN 4

/* Media type of a streamed answer (the loop streams only this). */
#define LLM_STREAM_TYPE "text/event-stream"

/* Bytes of a streamed refusal kept for the error message. */
#define LLM_REFUSAL_MAX 256

enum llm_state {
    LLM_WAITING,        /* in the FIFO, no slot yet */
    LLM_ACTIVE,         /* an HTTP attempt is on the wire */
    LLM_BACKOFF,        /* timer running before the next attempt */
    LLM_DELIVERING      /* done callback running; cancel is a no-op */
};

/* What a streaming request has read in its current attempt. */
struct llm_stream {
    const char *key;            /* cut out of the text; not owned */
    llm_piece_fn *piece;        /* where safe text goes */
    void *privdata;
    struct llm_result *res;     /* failures and the answer; not owned */
    struct sse_parser sse;      /* events of the body */
    char *text;                 /* answer so far, key cut out, NUL-ended */
    size_t len;
    size_t cap;
    size_t safe;                /* text before this cannot start the key */
    size_t delivered;           /* bytes of text given to piece */
    char *finish_reason;        /* or NULL */
    char refusal[LLM_REFUSAL_MAX];
    long prompt_tokens;         /* -1 until a usage chunk */
    long completion_tokens;
    int done_seen;              /* "data: [DONE]" arrived */
    int stopped;                /* the piece callback said stop */
};

struct llm_request {
    struct llm *llm;
    enum llm_state state;
    int linked;                 /* in llm->reqs */
    int final;                  /* timer delivers the result, no retry */

    /* Snapshot of the settings at submission (see llm_configure). */
    char *url;
    char *body;
    size_t body_len;
    long connect_timeout_ms;
    long timeout_ms;
    int max_retries;
    long backoff_base_ms;
    long backoff_max_ms;

    struct http_request *http;  /* while ACTIVE */
    struct loop_timer *timer;   /* owned; created on first backoff */
    llm_done_fn *done;
    void *privdata;
    struct llm_result res;      /* outcome of the latest attempt */
    struct llm_stream *stream;  /* streaming requests only; owned */
    llm_delta_fn *on_delta;     /* streaming requests only */
    int in_delta;               /* on_delta of this request is running */
    int cancelled;              /* llm_cancel/llm_free asked in on_delta */

    struct llm_request *prev, *next;    /* llm->reqs */
    struct llm_request *wprev, *wnext;  /* llm->wait FIFO */
};

struct llm {
    struct loop *loop;          /* not owned */
    char *base_url;
    char *model;
    double temperature;
    int max_tokens;
    long connect_timeout_ms;
    long timeout_ms;
    int max_retries;
    long backoff_base_ms;
    long backoff_max_ms;
    size_t max_concurrent;
    char *api_key;              /* wiped before free; NULL = none */
    char *auth_header;          /* "Authorization: Bearer ...", wiped */

    struct llm_request *reqs;   /* every request not yet delivered */
    struct llm_request *wait_head, *wait_tail;
    size_t n_reqs;
    size_t n_active;            /* requests on the wire */
    int in_callback;            /* depth of done callbacks running */
    int free_requested;         /* llm_free called from a callback */
};

/* Wipe a string that held a secret, then free it. */
static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* Copy s with every occurrence of key replaced by "[redacted]".  Returns
 * NULL on OOM; *outlen is the new length.  The copy is NUL-terminated. */
static char *redact_copy(const char *s, size_t len, const char *key,
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
static void redact_text(char *buf, size_t buflen, const char *key)
{
    size_t n;
    char *copy = redact_copy(buf, strlen(buf), key, &n);

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
static void text_copy(char *dst, size_t dstlen, const char *src)
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
static void strip_controls(char *s)
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
static char *request_body(const char *model, const struct cJSON *messages,
                          double temperature, int max_tokens, int stream)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *msgs, *opts;
    char *out = NULL;

    if (!root)
        return NULL;
    if (!cJSON_AddStringToObject(root, "model", model ? model : ""))
        goto done;
    msgs = cJSON_Duplicate(messages, 1);
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
    return request_body(model, messages, temperature, max_tokens, 0);
}

/* A usage count, or -1 when absent or not a sane non-negative integer. */
static long token_count(const cJSON *usage, const char *name)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(usage, name);

    if (!cJSON_IsNumber(n) || !(n->valuedouble >= 0) ||
        n->valuedouble > (double)INT32_MAX)
        return -1;
    return (long)n->valuedouble;
}

/* Fill buf from a parsed error body; 1 if anything was found. */
static int error_from_json(const cJSON *root, char *buf, size_t buflen)
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
    if (root && error_from_json(root, buf, buflen)) {
        cJSON_Delete(root);
        strip_controls(buf);
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
        if (error_from_json(root, why, sizeof(why))) {
            strip_controls(why);
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
            strip_controls(why);
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
        res->prompt_tokens = token_count(usage, "prompt_tokens");
        res->completion_tokens = token_count(usage, "completion_tokens");
    }
    res->status = PARLEY_OK;
done:
    cJSON_Delete(root);
    return result;
}

int llm_is_retryable(int status, long http_code)
{
    switch (status) {
    case PARLEY_ERR_IO:
    case PARLEY_ERR_EOF:
    case PARLEY_ERR_TIMEOUT:
        return 1;
    case PARLEY_ERR_HTTP:
        /* 408 Request Timeout, 409 Conflict (OpenAI: "try again"), 429
         * rate limit or quota, and any 5xx: the request itself was fine. */
        return http_code == 408 || http_code == 409 || http_code == 429 ||
            (http_code >= 500 && http_code <= 599);
    default:
        return 0;
    }
}

long llm_backoff_ms(int attempt, long base_ms, long max_ms,
                    long retry_after_ms, uint64_t random)
{
    struct backoff_policy p = { base_ms, max_ms, BACKOFF_JITTER_FULL };
    long floor = -1;

    if (retry_after_ms >= 0) {
        /* A server may ask for anything; wait at most four caps. */
        long ceiling = max_ms > LONG_MAX / 4 ? LONG_MAX :
            (max_ms > 0 ? max_ms * 4 : 0);

        floor = retry_after_ms < ceiling ? retry_after_ms : ceiling;
    }
    return backoff_delay_ms(&p, attempt > 1 ? attempt - 1 : 0, floor,
                            random);
}

/* Copy the settings of cfg into llm (all or nothing). */
static int llm_apply(struct llm *llm, const struct config_llm *cfg)
{
    char *base_url, *model;
    size_t n;

    if (!cfg->base_url || !cfg->model || !cfg->model[0] ||
        (strncmp(cfg->base_url, "http://", 7) != 0 &&
         strncmp(cfg->base_url, "https://", 8) != 0) ||
        strlen(cfg->base_url) + sizeof("/chat/completions") > LLM_URL_MAX) {
        log_error("llm: base_url must be an http(s) URL under %d bytes and "
                  "model must be set", LLM_URL_MAX);
        return PARLEY_ERR_CONFIG;
    }
    base_url = strdup(cfg->base_url);
    model = strdup(cfg->model);
    if (!base_url || !model) {
        free(base_url);
        free(model);
        return PARLEY_ERR_OOM;
    }
    n = strlen(base_url);
    while (n > 0 && base_url[n - 1] == '/')
        base_url[--n] = '\0';
    free(llm->base_url);
    free(llm->model);
    llm->base_url = base_url;
    llm->model = model;
    llm->temperature = cfg->temperature;
    llm->max_tokens = cfg->max_tokens;
    llm->connect_timeout_ms = cfg->connect_timeout_ms > 0 ?
        cfg->connect_timeout_ms : 0;
    llm->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 0;
    llm->max_retries = cfg->max_retries > 0 ? cfg->max_retries : 0;
    llm->backoff_base_ms = cfg->backoff_base_ms > 0 ?
        cfg->backoff_base_ms : 0;
    llm->backoff_max_ms = cfg->backoff_max_ms > 0 ? cfg->backoff_max_ms : 0;
    llm->max_concurrent = cfg->max_concurrent > 0 ?
        (size_t)cfg->max_concurrent : 1;
    return PARLEY_OK;
}

int llm_create(struct llm **out, struct loop *loop,
               const struct config_llm *cfg, const char *api_key)
{
    struct llm *llm;
    int result;

    *out = NULL;
    llm = calloc(1, sizeof(*llm));
    if (!llm)
        return PARLEY_ERR_OOM;
    llm->loop = loop;
    result = llm_apply(llm, cfg);
    if (result) {
        llm_free(llm);
        return result;
    }
    if (api_key && api_key[0]) {
        char hdr[LLM_AUTH_MAX];
        int n;

        if (strpbrk(api_key, "\r\n") != NULL) {
            log_error("llm: the API key holds a line break");
            llm_free(llm);
            return PARLEY_ERR_CONFIG;
        }
        n = snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s", api_key);
        if (n < 0 || (size_t)n >= sizeof(hdr)) {
            explicit_bzero(hdr, sizeof(hdr));
            log_error("llm: the API key is too long");
            llm_free(llm);
            return PARLEY_ERR_CONFIG;
        }
        llm->api_key = strdup(api_key);
        llm->auth_header = strdup(hdr);
        explicit_bzero(hdr, sizeof(hdr));
        if (!llm->api_key || !llm->auth_header) {
            llm_free(llm);
            return PARLEY_ERR_OOM;
        }
    }
    *out = llm;
    return PARLEY_OK;
}

int llm_configure(struct llm *llm, const struct config_llm *cfg)
{
    return llm_apply(llm, cfg);
}

size_t llm_in_flight(const struct llm *llm)
{
    return llm->n_reqs;
}

static void wait_push_tail(struct llm *llm, struct llm_request *req)
{
    req->state = LLM_WAITING;
    req->wnext = NULL;
    req->wprev = llm->wait_tail;
    if (llm->wait_tail)
        llm->wait_tail->wnext = req;
    else
        llm->wait_head = req;
    llm->wait_tail = req;
}

/* A request back from backoff is older than everything waiting. */
static void wait_push_head(struct llm *llm, struct llm_request *req)
{
    req->state = LLM_WAITING;
    req->wprev = NULL;
    req->wnext = llm->wait_head;
    if (llm->wait_head)
        llm->wait_head->wprev = req;
    else
        llm->wait_tail = req;
    llm->wait_head = req;
}

static void wait_remove(struct llm *llm, struct llm_request *req)
{
    if (req->wprev)
        req->wprev->wnext = req->wnext;
    else
        llm->wait_head = req->wnext;
    if (req->wnext)
        req->wnext->wprev = req->wprev;
    else
        llm->wait_tail = req->wprev;
    req->wprev = req->wnext = NULL;
}

static void request_unlink(struct llm_request *req)
{
    struct llm *llm = req->llm;

    if (!req->linked)
        return;
    if (req->prev)
        req->prev->next = req->next;
    else
        llm->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
    req->linked = 0;
    llm->n_reqs--;
}

/* Free a request that is off every list and has no HTTP transfer. */
static void request_destroy(struct llm_request *req)
{
    llm_stream_free(req->stream);
    req->stream = NULL;
    llm_result_clear(&req->res);
    free(req->url);
    free(req->body);
    req->url = req->body = NULL;
    loop_timer_free(req->timer);
    free(req);
}

/* Stop whatever req is doing, without a callback, and free it. */
static void request_abort(struct llm_request *req)
{
    struct llm *llm = req->llm;

    switch (req->state) {
    case LLM_WAITING:
        wait_remove(llm, req);
        break;
    case LLM_ACTIVE:
        loop_http_cancel(req->http);
        req->http = NULL;
        llm->n_active--;
        break;
    case LLM_BACKOFF:
    case LLM_DELIVERING:
        break;
    }
    request_unlink(req);
    request_destroy(req);
}

static void llm_free_now(struct llm *llm)
{
    while (llm->reqs)
        request_abort(llm->reqs);
    free_secret(llm->api_key);
    free_secret(llm->auth_header);
    free(llm->base_url);
    free(llm->model);
    free(llm);
}

static void on_http_done(const struct http_response *resp, void *privdata);
static void on_http_data(const char *data, size_t len, void *privdata);
static void on_request_timer(void *privdata);
static void request_settle(struct llm_request *req, long retry_after_ms);

/* Run req's done callback and free it.  A streamed answer first gets
 * the rest of its text to on_delta: the tail held back while streaming,
 * or all of it when the server answered with one JSON body. */
static void deliver(struct llm_request *req)
{
    struct llm *llm = req->llm;

    request_unlink(req);
    req->state = LLM_DELIVERING;
    llm->in_callback++;
    if (req->stream && req->res.status == PARLEY_OK && req->res.content)
        llm_stream_emit_rest(req->stream, req->res.content);
    req->done(&req->res, req->privdata);
    llm->in_callback--;
    request_destroy(req);
}

/* Leaving a loop callback: carry out an llm_free asked for inside it. */
static void llm_leave(struct llm *llm)
{
    if (llm->in_callback == 0 && llm->free_requested)
        llm_free_now(llm);
}

/* Arm req's timer for delay_ms; state becomes BACKOFF. */
static int request_sleep(struct llm_request *req, long delay_ms)
{
    if (!req->timer) {
        req->timer = loop_timer_new(req->llm->loop, on_request_timer, req);
        if (!req->timer)
            return PARLEY_ERR_OTHER;
    }
    if (loop_timer_start(req->timer,
                         (uint64_t)(delay_ms > 0 ? delay_ms : 0), 0) != 0)
        return PARLEY_ERR_OTHER;
    req->state = LLM_BACKOFF;
    return PARLEY_OK;
}

/* Send one attempt of req.  On failure nothing changed but res. */
static int request_send(struct llm_request *req)
{
    struct llm *llm = req->llm;
    const char *headers[3];
    struct http_options opt;
    int result;

    memset(&opt, 0, sizeof(opt));
    headers[opt.n_headers++] = "Content-Type: application/json";
    if (req->stream) {
        headers[opt.n_headers++] = "Accept: " LLM_STREAM_TYPE;
        opt.on_data = on_http_data;
        opt.stream_type = LLM_STREAM_TYPE;
        llm_stream_reset(req->stream);
    }
    if (llm->auth_header)
        headers[opt.n_headers++] = llm->auth_header;
    opt.method = "POST";
    opt.url = req->url;
    opt.headers = headers;
    opt.body = req->body;
    opt.body_len = req->body_len;
    opt.connect_timeout_ms = req->connect_timeout_ms;
    opt.timeout_ms = req->timeout_ms;
    opt.max_body = LLM_BODY_MAX;
    result = loop_http_start(llm->loop, &opt, on_http_done, req, &req->http);
    if (result) {
        int attempts = req->res.attempts;

        llm_result_clear(&req->res);
        req->res.attempts = attempts;
        snprintf(req->res.errstr, sizeof(req->res.errstr),
                 "could not start a request to the LLM API (error %d)",
                 result);
        req->res.status = result;
        return result;
    }
    req->state = LLM_ACTIVE;
    req->res.attempts++;
    llm->n_active++;
    return PARLEY_OK;
}

/*
 * Fill free slots from the FIFO.  Safe from any context: a request that
 * cannot be started gets its failure delivered by a 0 ms timer, never
 * from inside the caller's stack.
 */
static void llm_pump(struct llm *llm)
{
    while (!llm->free_requested && llm->wait_head &&
           llm->n_active < llm->max_concurrent) {
        struct llm_request *req = llm->wait_head;

        wait_remove(llm, req);
        if (request_send(req) == PARLEY_OK)
            continue;
        req->final = 1;
        if (request_sleep(req, 0) != PARLEY_OK) {
            /* Cannot even arm a timer: the loop is gone.  Drop it
             * silently rather than call back from an unknown stack. */
            log_error("llm: dropping a request: %s", req->res.errstr);
            request_unlink(req);
            request_destroy(req);
        }
    }
}

static void on_request_timer(void *privdata)
{
    struct llm_request *req = privdata;
    struct llm *llm = req->llm;

    if (req->final)
        deliver(req);
    else
        wait_push_head(llm, req);
    llm_pump(llm);
    llm_leave(llm);
}

/* Turn one HTTP outcome into req->res. */
static void request_judge(struct llm_request *req,
                          const struct http_response *resp)
{
    struct llm *llm = req->llm;
    struct llm_result *res = &req->res;
    char text[LLM_ERRTEXT_MAX];
    char detail[LLM_ERRTEXT_MAX];

    res->http_code = resp->code;
    res->retryable = 0;
    text[0] = '\0';
    if (resp->status != PARLEY_OK) {
        res->status = resp->status;
        if (resp->status == PARLEY_ERR_TOO_LARGE)
            snprintf(text, sizeof(text), "the LLM API answer is over the "
                     "%d-byte cap", LLM_BODY_MAX);
        else if (resp->status == PARLEY_ERR_TIMEOUT)
            snprintf(text, sizeof(text), "the LLM API did not answer in "
                     "time: %s", resp->errstr ? resp->errstr : "timeout");
        else
            snprintf(text, sizeof(text), "the LLM API request failed: %s",
                     resp->errstr ? resp->errstr : "transfer failed");
        res->retryable = llm_is_retryable(res->status, resp->code);
    } else {
        /* Cut the key out of the body before anything reads it: servers
         * may echo it in an error, and a model may repeat it in an
         * answer that would otherwise be posted to a chat room. */
        size_t n = 0;
        char *clean = redact_copy(resp->body, resp->body_len, llm->api_key,
                                  &n);

        if (!clean) {
            res->status = PARLEY_ERR_OOM;
            snprintf(text, sizeof(text), "out of memory reading the LLM "
                     "API answer");
        } else if (resp->code >= 200 && resp->code <= 299) {
            int attempts = res->attempts;

            llm_parse_response(clean, n, res);
            res->attempts = attempts;
            res->http_code = resp->code;
            text_copy(text, sizeof(text), res->errstr);
        } else {
            res->status = PARLEY_ERR_HTTP;
            llm_parse_error(clean, n, detail, sizeof(detail));
            snprintf(text, sizeof(text),
                     "HTTP %ld from the LLM API: %.960s", resp->code,
                     detail);
            res->retryable = llm_is_retryable(res->status, resp->code);
        }
        free(clean);
    }
    redact_text(text, sizeof(text), llm->api_key);
    strip_controls(text);
    text_copy(res->errstr, sizeof(res->errstr), text);
}

/* ------------------------------------------------------------------ */
/* the stream reader: bytes in, safe pieces and an outcome out       */

/* Set the outcome to a failure while streaming; the text is redacted
 * and cut like every error text.  Returns status, so that an SSE event
 * callback can stop the parser with it. */
static int stream_fail(struct llm_stream *st, int status, int retryable,
                       const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int stream_fail(struct llm_stream *st, int status, int retryable,
                       const char *fmt, ...)
{
    char text[LLM_ERRTEXT_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    redact_text(text, sizeof(text), st->key);
    strip_controls(text);
    text_copy(st->res->errstr, sizeof(st->res->errstr), text);
    st->res->status = status;
    st->res->retryable = retryable;
    return status;
}

/* Room for n more bytes of text (and a NUL). */
static int stream_reserve(struct llm_stream *st, size_t n)
{
    size_t need = st->len + n + 1;
    size_t cap;
    char *p;

    if (need <= st->cap)
        return PARLEY_OK;
    cap = st->cap ? st->cap : 256;
    while (cap < need)
        cap *= 2;
    p = realloc(st->text, cap);
    if (!p)
        return PARLEY_ERR_OOM;
    st->text = p;
    st->cap = cap;
    return PARLEY_OK;
}

/*
 * Cut the key out of the text that is not yet known to be clean, and move
 * st->safe to the start of the longest tail that could still be the
 * beginning of the key.  A model (or a server) may spell the key across
 * several chunks, so one event at a time is not enough, and text already
 * shown cannot be taken back: it is held until it is known to be clean.
 */
static int stream_redact(struct llm_stream *st)
{
    static const char mark[] = "[redacted]";
    size_t mlen = sizeof(mark) - 1;
    size_t klen = st->key ? strlen(st->key) : 0;
    size_t i, p;

    if (klen < LLM_SECRET_MIN) {
        st->safe = st->len;
        return PARLEY_OK;
    }
    for (i = st->safe; i + klen <= st->len;) {
        if (memcmp(st->text + i, st->key, klen) != 0) {
            i++;
            continue;
        }
        if (mlen > klen && stream_reserve(st, mlen - klen) != PARLEY_OK)
            return PARLEY_ERR_OOM;
        memmove(st->text + i + mlen, st->text + i + klen,
                st->len - i - klen + 1);
        memcpy(st->text + i, mark, mlen);
        st->len = st->len - klen + mlen;
        i += mlen;
    }
    /* [i, len) is shorter than the key: find where it may start. */
    p = i;
    while (p < st->len && memcmp(st->text + p, st->key, st->len - p) != 0)
        p++;
    st->safe = p;
    return PARLEY_OK;
}

/* The largest end <= n that does not cut a UTF-8 character. */
static size_t utf8_cut(const char *s, size_t n)
{
    size_t i = n, want;
    unsigned char c;

    while (i > 0 && n - i < 4 && ((unsigned char)s[i - 1] & 0xc0) == 0x80)
        i--;
    if (i == 0)
        return n;
    c = (unsigned char)s[i - 1];
    if (c < 0xc0)
        return n;               /* ASCII, or not UTF-8 at all */
    want = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
    return n - (i - 1) < want ? i - 1 : n;
}

/* Hand text from what was already handed out up to end to the piece
 * callback, NUL-terminated at end for the call; returns its status. */
static int stream_emit(struct llm_stream *st, char *text, size_t end)
{
    struct llm_delta d;
    char saved;
    int result;

    if (end <= st->delivered)
        return PARLEY_OK;
    saved = text[end];
    text[end] = '\0';
    d.text = text + st->delivered;
    d.len = end - st->delivered;
    d.content = text;
    d.content_len = end;
    st->delivered = end;
    st->res->delivered = end;
    result = st->piece(&d, st->privdata);
    text[end] = saved;
    if (result)
        st->stopped = 1;
    return result;
}

/* Whether an error event is a passing server condition worth asking
 * again for (OpenAI streams "server_error" when a model overloads). */
static int stream_error_retryable(const cJSON *root)
{
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
    const cJSON *f;

    if (!cJSON_IsObject(err))
        return 0;
    f = cJSON_GetObjectItemCaseSensitive(err, "code");
    if (cJSON_IsNumber(f))
        return llm_is_retryable(PARLEY_ERR_HTTP, (long)f->valuedouble);
    for (int i = 0; i < 2; i++) {
        f = cJSON_GetObjectItemCaseSensitive(err, i ? "code" : "type");
        if (cJSON_IsString(f) &&
            (strcmp(f->valuestring, "server_error") == 0 ||
             strcmp(f->valuestring, "rate_limit_exceeded") == 0 ||
             strcmp(f->valuestring, "overloaded_error") == 0))
            return 1;
    }
    return 0;
}

/* Add one chunk's content to the answer, within the cap. */
static int stream_append(struct llm_stream *st, const char *piece,
                         size_t n)
{
    if (n > LLM_BODY_MAX || st->len > LLM_BODY_MAX - n)
        return stream_fail(st, PARLEY_ERR_TOO_LARGE, 0,
                           "the LLM API answer is over the %d-byte cap",
                           LLM_BODY_MAX);
    if (stream_reserve(st, n) != PARLEY_OK)
        return stream_fail(st, PARLEY_ERR_OOM, 0, "out of memory "
                           "reading the LLM API stream");
    memcpy(st->text + st->len, piece, n);
    st->len += n;
    st->text[st->len] = '\0';
    if (stream_redact(st) != PARLEY_OK)
        return stream_fail(st, PARLEY_ERR_OOM, 0, "out of memory "
                           "reading the LLM API stream");
    return PARLEY_OK;
}

/* The fields of one chat.completion.chunk, or its error. */
static int stream_chunk(struct llm_stream *st, const char *type,
                        const cJSON *root)
{
    const cJSON *choices, *first, *delta, *f, *usage;
    char why[LLM_ERRTEXT_MAX];

    if (!cJSON_IsObject(root))
        return stream_fail(st, PARLEY_ERR_PROTOCOL, 0, "the LLM API "
                           "stream holds an event that is not a JSON "
                           "object");
    if (strcmp(type, "error") == 0 ||
        cJSON_GetObjectItemCaseSensitive(root, "error")) {
        if (!error_from_json(root, why, sizeof(why)))
            snprintf(why, sizeof(why), "(no details)");
        return stream_fail(st, PARLEY_ERR_PROTOCOL,
                           stream_error_retryable(root), "the LLM API "
                           "stream reported an error: %.900s", why);
    }
    usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (cJSON_IsObject(usage)) {
        st->prompt_tokens = token_count(usage, "prompt_tokens");
        st->completion_tokens = token_count(usage, "completion_tokens");
    }
    /* The usage chunk has "choices": []; n > 1 is never asked for. */
    choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    first = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (!cJSON_IsObject(first))
        return PARLEY_OK;
    f = cJSON_GetObjectItemCaseSensitive(first, "finish_reason");
    if (cJSON_IsString(f) && !st->finish_reason) {
        st->finish_reason = strdup(f->valuestring);
        if (!st->finish_reason)
            return stream_fail(st, PARLEY_ERR_OOM, 0, "out of memory");
    }
    delta = cJSON_GetObjectItemCaseSensitive(first, "delta");
    f = cJSON_GetObjectItemCaseSensitive(delta, "refusal");
    if (cJSON_IsString(f)) {
        size_t have = strlen(st->refusal);

        snprintf(st->refusal + have, sizeof(st->refusal) - have, "%s",
                 f->valuestring);
    }
    f = cJSON_GetObjectItemCaseSensitive(delta, "content");
    if (cJSON_IsString(f) && f->valuestring[0])
        return stream_append(st, f->valuestring, strlen(f->valuestring));
    return PARLEY_OK;
}

/* sse_event_fn: one event of a streamed answer. */
static int on_sse_event(const struct sse_event *ev, void *privdata)
{
    struct llm_stream *st = privdata;
    cJSON *root;
    char *clean;
    size_t n;
    int result;

    if (st->done_seen)
        return PARLEY_OK;       /* nothing counts after [DONE] */
    if (ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0) {
        st->done_seen = 1;
        return PARLEY_OK;
    }
    /* As for whole bodies: the key goes before anything reads it. */
    clean = redact_copy(ev->data, ev->data_len, st->key, &n);
    if (!clean)
        return stream_fail(st, PARLEY_ERR_OOM, 0, "out of memory "
                           "reading the LLM API stream");
    root = cJSON_ParseWithLength(clean, n);
    if (!root && strcmp(ev->type, "error") == 0) {
        /* "event: error" with a plain-text reason: quote it. */
        char why[LLM_ERRTEXT_MAX];

        llm_parse_error(clean, n, why, sizeof(why));
        free(clean);
        return stream_fail(st, PARLEY_ERR_PROTOCOL, 0, "the LLM API "
                           "stream reported an error: %.900s", why);
    }
    free(clean);
    if (!root)
        return stream_fail(st, PARLEY_ERR_PROTOCOL, 0, "the LLM API "
                           "stream holds an event that is not valid JSON");
    result = stream_chunk(st, ev->type, root);
    cJSON_Delete(root);
    if (result)
        return result;
    return stream_emit(st, st->text, utf8_cut(st->text, st->safe));
}

int llm_stream_create(struct llm_stream **out, const char *key,
                      llm_piece_fn *piece, void *privdata,
                      struct llm_result *res)
{
    struct llm_stream *st = calloc(1, sizeof(*st));

    *out = NULL;
    if (!st)
        return PARLEY_ERR_OOM;
    st->key = key;
    st->piece = piece;
    st->privdata = privdata;
    st->res = res;
    sse_init(&st->sse, SSE_EVENT_MAX, on_sse_event, st);
    llm_stream_reset(st);
    *out = st;
    return PARLEY_OK;
}

void llm_stream_reset(struct llm_stream *st)
{
    sse_reset(&st->sse);
    st->len = st->safe = st->delivered = 0;
    if (st->text)
        st->text[0] = '\0';
    free(st->finish_reason);
    st->finish_reason = NULL;
    st->refusal[0] = '\0';
    st->prompt_tokens = st->completion_tokens = -1;
    st->done_seen = 0;
    st->stopped = 0;
    /* Failures are noted as they happen, so the outcome of an earlier
     * attempt must not look like one. */
    st->res->status = PARLEY_OK;
    st->res->retryable = 0;
    st->res->delivered = 0;
    st->res->errstr[0] = '\0';
}

int llm_stream_feed(struct llm_stream *st, const char *data, size_t len)
{
    int result = sse_feed(&st->sse, data, len);

    if (result && st->res->status == PARLEY_OK && !st->stopped)
        stream_fail(st, result, 0, "the LLM API stream is unreadable: %s",
                    st->sse.errstr);
    return result;
}

/* A failure after text was shown is final, and says so. */
static void stream_partial(struct llm_stream *st)
{
    struct llm_result *res = st->res;
    char why[sizeof(res->errstr)];
    char text[LLM_ERRTEXT_MAX];

    if (res->status == PARLEY_OK || st->delivered == 0)
        return;
    text_copy(why, sizeof(why), res->errstr);
    snprintf(text, sizeof(text), "the answer broke off after %zu bytes "
             "were shown: %s", st->delivered, why);
    text_copy(res->errstr, sizeof(res->errstr), text);
    res->retryable = 0;
}

void llm_stream_end(struct llm_stream *st, int status, const char *errstr)
{
    struct llm_result *res = st->res;
    char why[sizeof(res->errstr)];
    int result;

    if (res->status != PARLEY_OK) {
        /* Stopped by a failure of its own (llm_stream_feed). */
        stream_partial(st);
        return;
    }
    result = sse_finish(&st->sse);
    if (st->done_seen ||
        (status == PARLEY_OK && st->finish_reason && result == PARLEY_OK)) {
        /* The answer is whole, even if the connection then failed. */
    } else if (status == PARLEY_ERR_TIMEOUT) {
        stream_fail(st, status, 1, "the LLM API stream did not finish in "
                    "time: %s", errstr ? errstr : "timeout");
    } else if (status != PARLEY_OK) {
        stream_fail(st, status, llm_is_retryable(status, 0), "the LLM API "
                    "stream broke: %s", errstr ? errstr : "transfer failed");
    } else {
        /* A clean end without [DONE] or a finish_reason: cut short. */
        stream_fail(st, PARLEY_ERR_EOF, 1, "the LLM API stream ended "
                    "before the answer was complete");
    }
    if (res->status != PARLEY_OK) {
        stream_partial(st);
        return;
    }
    if (st->len == 0) {
        if (st->refusal[0]) {
            text_copy(why, sizeof(why), st->refusal);
            stream_fail(st, PARLEY_ERR_PROTOCOL, 0, "the model refused: "
                        "%.200s", why);
        } else {
            stream_fail(st, PARLEY_ERR_PROTOCOL, 0, "the LLM API stream "
                        "has no message content");
        }
        return;
    }
    free(res->content);
    free(res->finish_reason);
    res->content = st->text;    /* its tail goes out in emit_rest */
    st->text = NULL;
    st->cap = 0;
    res->finish_reason = st->finish_reason;
    st->finish_reason = NULL;
    res->prompt_tokens = st->prompt_tokens;
    res->completion_tokens = st->completion_tokens;
}

int llm_stream_emit_rest(struct llm_stream *st, char *text)
{
    return stream_emit(st, text, strlen(text));
}

void llm_stream_free(struct llm_stream *st)
{
    if (!st)
        return;
    sse_free(&st->sse);
    free(st->text);
    free(st->finish_reason);
    free(st);
}

/* ------------------------------------------------------------------ */
/* streaming requests                                                 */

/*
 * llm_piece_fn of a request: its on_delta, under the IN_CALLBACK rule
 * (llm_cancel of this request and llm_free only set flags), then stop
 * reading if either was asked for.
 */
static int on_piece(const struct llm_delta *d, void *privdata)
{
    struct llm_request *req = privdata;
    struct llm *llm = req->llm;

    req->in_delta = 1;
    llm->in_callback++;
    req->on_delta(d, req->privdata);
    llm->in_callback--;
    req->in_delta = 0;
    if (req->cancelled || llm->free_requested)
        return PARLEY_ERR_STATE;
    return PARLEY_OK;
}

/*
 * http_data_fn: body bytes of a streamed answer, from the loop.  A
 * failure stops the transfer at once and is judged like any other.
 */
static void on_http_data(const char *data, size_t len, void *privdata)
{
    struct llm_request *req = privdata;
    struct llm *llm = req->llm;

    if (llm_stream_feed(req->stream, data, len) == PARLEY_OK)
        return;
    if (llm->free_requested) {
        llm_leave(llm);         /* llm_free from on_delta: do it now */
        return;
    }
    if (req->cancelled) {
        request_abort(req);     /* llm_cancel from on_delta */
        llm_pump(llm);
        return;
    }
    loop_http_cancel(req->http);
    req->http = NULL;
    llm->n_active--;
    llm_stream_end(req->stream, req->res.status, NULL);
    request_settle(req, -1);
}

/* An attempt is over and judged: sleep before the next one, or deliver.
 * retry_after_ms is the server's Retry-After, -1 when none. */
static void request_settle(struct llm_request *req, long retry_after_ms)
{
    struct llm *llm = req->llm;
    int total = req->max_retries + 1;

    if (req->res.status != PARLEY_OK && req->res.retryable &&
        req->res.attempts <= req->max_retries) {
        long delay = llm_backoff_ms(req->res.attempts, req->backoff_base_ms,
                                    req->backoff_max_ms, retry_after_ms,
                                    random_u64());

        log_warn("llm: attempt %d/%d failed: %s; retrying in %ld ms",
                 req->res.attempts, total, req->res.errstr, delay);
        if (request_sleep(req, delay) == PARLEY_OK) {
            llm_pump(llm);
            llm_leave(llm);
            return;
        }
        log_error("llm: cannot arm the retry timer; giving up");
    }
    deliver(req);
    llm_pump(llm);
    llm_leave(llm);
}

static void on_http_done(const struct http_response *resp, void *privdata)
{
    struct llm_request *req = privdata;

    req->http = NULL;
    req->llm->n_active--;
    if (resp->streamed) {
        req->res.http_code = resp->code;
        llm_stream_end(req->stream, resp->status, resp->errstr);
    } else {
        request_judge(req, resp);
    }
    request_settle(req, resp->retry_after_ms);
}

/* llm_complete and llm_complete_stream (on_delta != NULL). */
static int request_submit(struct llm *llm, const char *model,
                          struct cJSON *messages, llm_delta_fn *on_delta,
                          llm_done_fn *done, void *privdata,
                          struct llm_request **out)
{
    struct llm_request *req;
    char url[LLM_URL_MAX];
    int n, result;

    if (out)
        *out = NULL;
    if (llm->free_requested) {
        cJSON_Delete(messages);
        return PARLEY_ERR_STATE;
    }
    if (!done || !cJSON_IsArray(messages) ||
        cJSON_GetArraySize(messages) == 0) {
        cJSON_Delete(messages);
        return PARLEY_ERR_OTHER;
    }
    n = snprintf(url, sizeof(url), "%s/chat/completions", llm->base_url);
    if (n < 0 || (size_t)n >= sizeof(url)) {
        cJSON_Delete(messages);
        return PARLEY_ERR_CONFIG;
    }
    req = calloc(1, sizeof(*req));
    if (!req) {
        cJSON_Delete(messages);
        return PARLEY_ERR_OOM;
    }
    req->llm = llm;
    req->done = done;
    req->privdata = privdata;
    llm_result_clear(&req->res);
    req->url = strdup(url);
    req->body = request_body(model && model[0] ? model : llm->model,
                             messages, llm->temperature, llm->max_tokens,
                             on_delta != NULL);
    cJSON_Delete(messages);
    req->on_delta = on_delta;
    if (on_delta)
        llm_stream_create(&req->stream, llm->api_key, on_piece, req,
                          &req->res);
    if (!req->url || !req->body || (on_delta && !req->stream)) {
        request_destroy(req);
        return PARLEY_ERR_OOM;
    }
    req->body_len = strlen(req->body);
    req->connect_timeout_ms = llm->connect_timeout_ms;
    req->timeout_ms = llm->timeout_ms;
    req->max_retries = llm->max_retries;
    req->backoff_base_ms = llm->backoff_base_ms;
    req->backoff_max_ms = llm->backoff_max_ms;

    /* Start now if a slot is free, so that a failure to start is this
     * call's error rather than a callback from inside it. */
    if (!llm->wait_head && llm->n_active < llm->max_concurrent) {
        result = request_send(req);
        if (result) {
            request_destroy(req);
            return result;
        }
    } else {
        wait_push_tail(llm, req);
    }
    req->linked = 1;
    req->next = llm->reqs;
    if (llm->reqs)
        llm->reqs->prev = req;
    llm->reqs = req;
    llm->n_reqs++;
    if (out)
        *out = req;
    return PARLEY_OK;
}

int llm_complete(struct llm *llm, const char *model,
                 struct cJSON *messages, llm_done_fn *done, void *privdata,
                 struct llm_request **out)
{
    return request_submit(llm, model, messages, NULL, done, privdata, out);
}

int llm_complete_stream(struct llm *llm, const char *model,
                        struct cJSON *messages, llm_delta_fn *on_delta,
                        llm_done_fn *done, void *privdata,
                        struct llm_request **out)
{
    if (!on_delta) {
        if (out)
            *out = NULL;
        cJSON_Delete(messages);
        return PARLEY_ERR_OTHER;
    }
    return request_submit(llm, model, messages, on_delta, done, privdata,
                          out);
}

void llm_cancel(struct llm_request *req)
{
    struct llm *llm;

    if (!req || req->state == LLM_DELIVERING)
        return;
    if (req->in_delta) {
        /* Its transfer is mid-read: stop once on_delta returns. */
        req->cancelled = 1;
        return;
    }
    llm = req->llm;
    request_abort(req);
    llm_pump(llm);
}

void llm_free(struct llm *llm)
{
    if (!llm)
        return;
    if (llm->in_callback) {
        struct llm_request *req = llm->reqs;

        /* Requests other than the one being delivered go now; the rest
         * of the client when the callback returns. */
        while (req) {
            struct llm_request *next = req->next;

            if (req->in_delta)
                req->cancelled = 1;     /* freed when on_delta returns */
            else
                request_abort(req);
            req = next;
        }
        llm->free_requested = 1;
        return;
    }
    llm_free_now(llm);
}
