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
 *
 * This file is the client: settings, the FIFO and its slots, retries and
 * delivery.  The request body, answer and error-body parsing and the key
 * redaction are in llm_parse.c; the stream reader is in llm_stream.c.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "backoff.h"
#include "config.h"
#include "llm.h"
#include "llm_private.h"
#include "log.h"
#include "loop.h"
#include "random.h"
#include "status.h"

/* Longest URL we build from base_url; real endpoints are far shorter. */
#define LLM_URL_MAX 2048

/* Longest Authorization header: the longest secret config accepts plus
 * "Authorization: Bearer ". */
#define LLM_AUTH_MAX (CONFIG_SECRET_MAX + 32)

/* Media type of a streamed answer (the loop streams only this). */
#define LLM_STREAM_TYPE "text/event-stream"

enum llm_state {
    LLM_WAITING,        /* in the FIFO, no slot yet */
    LLM_ACTIVE,         /* an HTTP attempt is on the wire */
    LLM_BACKOFF,        /* timer running before the next attempt */
    LLM_DELIVERING      /* done callback running; cancel is a no-op */
};

/*
 * The settings a request keeps from its submission (see llm_configure),
 * shared by every request submitted under them: thousands can be in
 * flight (issue 11), and a copy each would cost more than the rest of
 * the request.  Freed when the client and the last such request let go.
 */
struct llm_settings {
    unsigned refs;
    long connect_timeout_ms;
    long timeout_ms;
    long stream_idle_timeout_ms;    /* for streaming requests */
    int max_retries;
    long backoff_base_ms;
    long backoff_max_ms;
    char url[];                 /* base_url + "/chat/completions" */
};

struct llm_request {
    struct llm *llm;
    enum llm_state state;
    int linked;                 /* in llm->reqs */
    int final;                  /* timer delivers the result, no retry */

    struct llm_settings *set;   /* at submission; a reference */
    char *body;
    size_t body_len;

    struct http_request *http;  /* while ACTIVE */
    struct loop_timer *timer;   /* owned; created on first backoff */
    llm_done_fn *done;
    void *privdata;
    int attempts;               /* requests sent */
    /* Outcome of the latest attempt, allocated when the first one is
     * over (a streamed request: at submission, the reader fills it):
     * most of the time a request is in flight, and thousands can be, it
     * has no outcome to hold (issue 11).  NULL after an attempt is over
     * only when memory ran out; deliver then reports that. */
    struct llm_result *res;
    struct llm_stream *stream;  /* streaming requests only; owned */
    llm_delta_fn *on_delta;     /* streaming requests only */
    int in_delta;               /* on_delta of this request is running */
    int cancelled;              /* llm_cancel/llm_free asked in on_delta */

    struct llm_request *prev, *next;    /* llm->reqs */
    struct llm_request *wprev, *wnext;  /* llm->wait FIFO */
};

struct llm {
    struct loop *loop;          /* not owned */
    struct llm_settings *set;   /* for new requests; a reference */
    char *model;
    double temperature;
    int max_tokens;
    size_t max_concurrent;
    int h2_prior_knowledge;     /* llm.http2_prior_knowledge */
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

static void settings_release(struct llm_settings *set)
{
    if (set && --set->refs == 0)
        free(set);
}

/* Copy the settings of cfg into llm (all or nothing). */
static int llm_apply(struct llm *llm, const struct config_llm *cfg)
{
    static const char path[] = "/chat/completions";
    struct llm_settings *set;
    char *model;
    size_t n;

    if (!cfg->base_url || !cfg->model || !cfg->model[0] ||
        (strncmp(cfg->base_url, "http://", 7) != 0 &&
         strncmp(cfg->base_url, "https://", 8) != 0) ||
        strlen(cfg->base_url) + sizeof("/chat/completions") > LLM_URL_MAX) {
        log_error("llm: base_url must be an http(s) URL under %d bytes and "
                  "model must be set", LLM_URL_MAX);
        return PARLEY_ERR_CONFIG;
    }
    n = strlen(cfg->base_url);
    while (n > 0 && cfg->base_url[n - 1] == '/')
        n--;
    /* The length was checked above: base_url and path fit LLM_URL_MAX. */
    set = calloc(1, sizeof(*set) + n + sizeof(path));
    model = strdup(cfg->model);
    if (!set || !model) {
        free(set);
        free(model);
        return PARLEY_ERR_OOM;
    }
    memcpy(set->url, cfg->base_url, n);
    memcpy(set->url + n, path, sizeof(path));
    set->refs = 1;
    set->connect_timeout_ms = cfg->connect_timeout_ms > 0 ?
        cfg->connect_timeout_ms : 0;
    set->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 0;
    set->stream_idle_timeout_ms = cfg->stream_idle_timeout_ms > 0 ?
        cfg->stream_idle_timeout_ms : 0;
    set->max_retries = cfg->max_retries > 0 ? cfg->max_retries : 0;
    set->backoff_base_ms = cfg->backoff_base_ms > 0 ?
        cfg->backoff_base_ms : 0;
    set->backoff_max_ms = cfg->backoff_max_ms > 0 ? cfg->backoff_max_ms : 0;
    settings_release(llm->set);
    free(llm->model);
    llm->set = set;
    llm->model = model;
    llm->temperature = cfg->temperature;
    llm->max_tokens = cfg->max_tokens;
    llm->max_concurrent = cfg->max_concurrent > 0 ?
        (size_t)cfg->max_concurrent : 1;
    llm->h2_prior_knowledge = 0;
    if (cfg->http2_prior_knowledge) {
        const char *why = NULL;

        if (strncmp(set->url, "http://", 7) != 0)
            log_info("llm: http2_prior_knowledge applies to http:// only; "
                     "https negotiates HTTP/2 by itself");
        else if (!loop_http_h2c_usable(&why))
            log_warn("llm: http2_prior_knowledge ignored, using "
                     "HTTP/1.1: %s", why);
        else
            llm->h2_prior_knowledge = 1;
    }
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
    if (req->res) {
        llm_result_clear(req->res);
        free(req->res);
        req->res = NULL;
    }
    settings_release(req->set);
    free(req->body);
    req->set = NULL;
    req->body = NULL;
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
    settings_release(llm->set);
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
    struct llm_result oom;
    struct llm_result *res = req->res;

    if (!res) {
        memset(&oom, 0, sizeof(oom));
        llm_result_clear(&oom);
        oom.status = PARLEY_ERR_OOM;
        snprintf(oom.errstr, sizeof(oom.errstr), "out of memory");
        res = &oom;
    }
    /* Counted on the request, told once, here. */
    res->attempts = req->attempts;
    request_unlink(req);
    req->state = LLM_DELIVERING;
    llm->in_callback++;
    if (req->stream && res->status == PARLEY_OK && res->content)
        llm_stream_emit_rest(req->stream, res->content);
    req->done(res, req->privdata);
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

/* req->res, allocated (cleared) on first use; NULL on OOM. */
static struct llm_result *request_result(struct llm_request *req)
{
    if (!req->res) {
        req->res = calloc(1, sizeof(*req->res));
        if (req->res)
            llm_result_clear(req->res);
    }
    return req->res;
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
    opt.url = req->set->url;
    opt.headers = headers;
    opt.body = req->body;
    opt.body_len = req->body_len;
    /* req->body outlives the attempt (kept for retries, freed after the
     * transfer is cancelled or done), so curl need not copy it. */
    opt.body_borrowed = 1;
    opt.h2_prior_knowledge = llm->h2_prior_knowledge;
    opt.connect_timeout_ms = req->set->connect_timeout_ms;
    opt.timeout_ms = req->set->timeout_ms;
    /* A stream that stalls is noticed long before timeout_ms, which has
     * to allow for the longest answer. */
    opt.idle_timeout_ms = req->on_delta ?
        req->set->stream_idle_timeout_ms : 0;
    opt.max_body = LLM_BODY_MAX;
    result = loop_http_start(llm->loop, &opt, on_http_done, req, &req->http);
    if (result) {
        struct llm_result *res = request_result(req);

        if (res) {
            llm_result_clear(res);
            snprintf(res->errstr, sizeof(res->errstr),
                     "could not start a request to the LLM API (error %d)",
                     result);
            res->status = result;
        }
        return result;
    }
    req->state = LLM_ACTIVE;
    req->attempts++;
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
            log_error("llm: dropping a request: %s",
                      req->res ? req->res->errstr : "out of memory");
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

/* Turn one HTTP outcome into req->res (left NULL on OOM). */
static void request_judge(struct llm_request *req,
                          const struct http_response *resp)
{
    struct llm *llm = req->llm;
    struct llm_result *res = request_result(req);
    char text[LLM_ERRTEXT_MAX];
    char detail[LLM_ERRTEXT_MAX];

    if (!res)
        return;
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
        char *clean = llm_redact_copy(resp->body, resp->body_len,
                                      llm->api_key, &n);

        if (!clean) {
            res->status = PARLEY_ERR_OOM;
            snprintf(text, sizeof(text), "out of memory reading the LLM "
                     "API answer");
        } else if (resp->code >= 200 && resp->code <= 299) {
            llm_parse_response(clean, n, res);
            res->http_code = resp->code;
            llm_text_copy(text, sizeof(text), res->errstr);
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
    llm_redact_text(text, sizeof(text), llm->api_key);
    llm_strip_controls(text);
    llm_text_copy(res->errstr, sizeof(res->errstr), text);
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
    llm_stream_end(req->stream, req->res->status, NULL);
    request_settle(req, -1);
}

/* An attempt is over and judged: sleep before the next one, or deliver.
 * retry_after_ms is the server's Retry-After, -1 when none. */
static void request_settle(struct llm_request *req, long retry_after_ms)
{
    struct llm *llm = req->llm;
    const struct llm_result *res = req->res;
    int total = req->set->max_retries + 1;

    /* Without a result (out of memory) there is nothing to retry on. */
    if (res && res->status != PARLEY_OK && res->retryable &&
        req->attempts <= req->set->max_retries) {
        long delay = llm_backoff_ms(req->attempts, req->set->backoff_base_ms,
                                    req->set->backoff_max_ms,
                                    retry_after_ms,
                                    random_u64());

        log_warn("llm: attempt %d/%d failed: %s; retrying in %ld ms",
                 req->attempts, total, res->errstr, delay);
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
        /* A streamed request has had its result since submission. */
        req->res->http_code = resp->code;
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
    int result;

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
    req = calloc(1, sizeof(*req));
    if (!req) {
        cJSON_Delete(messages);
        return PARLEY_ERR_OOM;
    }
    req->llm = llm;
    req->done = done;
    req->privdata = privdata;
    req->set = llm->set;
    req->set->refs++;
    req->body = llm_body_build(model && model[0] ? model : llm->model,
                             messages, llm->temperature, llm->max_tokens,
                             on_delta != NULL);
    cJSON_Delete(messages);
    req->on_delta = on_delta;
    if (on_delta && request_result(req))
        llm_stream_create(&req->stream, llm->api_key, on_piece, req,
                          req->res);
    if (!req->body || (on_delta && !req->stream)) {
        request_destroy(req);
        return PARLEY_ERR_OOM;
    }
    req->body_len = strlen(req->body);

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

