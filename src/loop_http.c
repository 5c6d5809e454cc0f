/*
 * HTTP requests on the loop's curl multi handles (loop_multi.c drives
 * them and picks the one a request goes to).  Each
 * request gets a response buffer capped at max_body (overflow is
 * TOO_LARGE, never a silent realloc), an error buffer, http/https only,
 * and the Retry-After header parsed; a body of the stream type goes to
 * its owner piece by piece, outside every curl callback.  Finished
 * transfers are handed to their owners by loop_check_multi_info.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "loop_private.h"
#include "status.h"

#ifndef PARLEY_VERSION
#define PARLEY_VERSION "dev"
#endif

/* Bytes of curl's receive buffer per request, allocated for every
 * request in flight: curl's minimum.  At 10,000 requests in flight 4 KiB
 * was 30 MB more (scripts/bench); a larger answer simply arrives in more
 * reads, one system call per KiB. */
#define LOOP_CURL_BUFFER 1024

/* Longest method name we pass to CURLOPT_CUSTOMREQUEST; real ones are
 * short, and anything longer is a caller bug. */
#define LOOP_METHOD_MAX 16

/* Longest wait a Retry-After header may ask for (one day).  A server can
 * send any number; this keeps the arithmetic in range, and llm caps the
 * wait far lower anyway. */
#define LOOP_RETRY_AFTER_MAX_MS (24L * 3600 * 1000)

/* First allocation for a response body; doubled as data arrives. */
#define LOOP_BODY_INITIAL 4096

/* Where a response body goes (see http_options.stream_type). */
enum loop_body_mode {
    LOOP_BODY_UNDECIDED,        /* no body byte yet */
    LOOP_BODY_COLLECT,          /* into buf, for done */
    LOOP_BODY_STREAM            /* into buf until the next loop_flush_streams */
};

struct http_request {
    struct loop *loop;
    struct loop_shard *shard;   /* the multi handle easy is on */
    CURL *easy;
    struct curl_slist *headers;
    char *buf;                  /* response body, NUL-terminated; when
                                   streaming, the bytes not yet handed to
                                   on_data */
    size_t len;
    size_t cap;                 /* allocated bytes of buf */
    size_t max;                 /* cap on len */
    int too_large;              /* write callback refused the body */
    int oom;                    /* write callback could not grow buf */
    long retry_after_ms;        /* from Retry-After, -1 when absent */
    long retry_after_ms_hdr;    /* from retry-after-ms, -1 when absent */
    char errbuf[CURL_ERROR_SIZE];
    http_done_fn *done;
    http_data_fn *on_data;      /* NULL: never stream */
    char *stream_type;          /* owned copy of http_options.stream_type */
    enum loop_body_mode mode;
    void *privdata;
    struct http_request *prev, *next;
};

static void request_unlink(struct http_request *req)
{
    struct loop *loop = req->loop;

    if (req->prev)
        req->prev->next = req->next;
    else
        loop->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
    loop->pending--;
}

/* Free a request that is no longer attached to the multi handle. */
static void request_free(struct http_request *req)
{
    if (req->easy)
        curl_easy_cleanup(req->easy);
    curl_slist_free_all(req->headers);
    free(req->buf);
    free(req->stream_type);
    free(req);
}

/* Map a finished transfer's CURLcode to a parley status. */
static int status_from_curl(const struct http_request *req, CURLcode result)
{
    switch (result) {
    case CURLE_OK:
        return PARLEY_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return PARLEY_ERR_TIMEOUT;
    case CURLE_FILESIZE_EXCEEDED:
        return PARLEY_ERR_TOO_LARGE;
    case CURLE_WRITE_ERROR:
        if (req->too_large)
            return PARLEY_ERR_TOO_LARGE;
        return req->oom ? PARLEY_ERR_OOM : PARLEY_ERR_IO;
    case CURLE_OUT_OF_MEMORY:
        return PARLEY_ERR_OOM;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return PARLEY_ERR_CONFIG;
    case CURLE_WEIRD_SERVER_REPLY:
        return PARLEY_ERR_PROTOCOL;
    default:
        return PARLEY_ERR_IO;
    }
}

/*
 * Hand every finished transfer of a shard to its owner.  A done callback
 * may start or cancel other requests or close the loop, so the multi
 * handle is checked again after each one; cancelled handles take their
 * queued message with them (curl_multi_remove_handle drops it).  Only the
 * shard that curl just acted on can have finished transfers.
 */
void loop_check_multi_info(struct loop_shard *shard)
{
    struct loop *loop = shard->loop;
    CURLMsg *msg;
    int left;

    while (!loop->closing) {
        struct http_request *req;
        struct http_response resp;
        CURLcode result;
        char *priv = NULL;
        long code = 0;

        msg = curl_multi_info_read(shard->multi, &left);
        if (!msg)
            break;
        if (msg->msg != CURLMSG_DONE)
            continue;
        result = msg->data.result;
        /* msg is dead after remove_handle, so read everything first. */
        if (curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE,
                              &priv) != CURLE_OK || !priv)
            continue;
        req = (struct http_request *)priv;
        if (curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE,
                              &code) != CURLE_OK)
            code = 0;
        loop_shard_remove(req->shard, req->easy);
        request_unlink(req);

        memset(&resp, 0, sizeof(resp));
        resp.status = status_from_curl(req, result);
        resp.code = code;
        resp.body = req->buf ? req->buf : "";
        resp.body_len = req->buf ? req->len : 0;
        resp.retry_after_ms = req->retry_after_ms_hdr >= 0 ?
            req->retry_after_ms_hdr : req->retry_after_ms;
        if (resp.status == PARLEY_ERR_TOO_LARGE)
            snprintf(req->errbuf, sizeof(req->errbuf),
                     "response body over the %zu-byte cap", req->max);
        else if (result != CURLE_OK && req->errbuf[0] == '\0')
            snprintf(req->errbuf, sizeof(req->errbuf), "%s",
                     curl_easy_strerror(result));
        resp.errstr = result != CURLE_OK ? req->errbuf : NULL;
        resp.streamed = req->mode == LOOP_BODY_STREAM;
        req->done(&resp, req->privdata);
        request_free(req);
    }
}

/*
 * Hand streamed bytes to their owners, outside every curl callback (curl
 * refuses add/remove_handle from inside one, and an owner may well want
 * to start a request when text arrives).  Any callback may cancel any
 * request, so the scan starts over after each; each call empties one
 * buffer, so this ends.  Runs before loop_check_multi_info, so the last bytes
 * of a transfer arrive before its done callback.
 */
void loop_flush_streams(struct loop *loop)
{
    struct http_request *req = loop->reqs;

    if (!loop->streams_dirty)
        return;
    loop->streams_dirty = 0;
    while (req && !loop->closing) {
        if (req->mode == LOOP_BODY_STREAM && req->len > 0) {
            /* Detach first: the callback may free req. */
            char *data = req->buf;
            size_t len = req->len;

            req->buf = NULL;
            req->len = req->cap = 0;
            req->on_data(data, len, req->privdata);
            free(data);
            req = loop->reqs;
        } else {
            req = req->next;
        }
    }
}

/* Whether a Content-Type value names the media type want (parameters
 * such as "; charset=utf-8" ignored). */
static int media_type_is(const char *value, const char *want)
{
    size_t n = strlen(want);

    if (!value || strncasecmp(value, want, n) != 0)
        return 0;
    value += n;
    return *value == '\0' || *value == ';' || *value == ' ' ||
        *value == '\t';
}

/* At the first body byte: stream it or collect it. */
static void body_mode_decide(struct http_request *req)
{
    long code = 0;
    char *type = NULL;

    req->mode = LOOP_BODY_COLLECT;
    if (!req->on_data ||
        curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE,
                          &code) != CURLE_OK ||
        code < 200 || code > 299 ||
        curl_easy_getinfo(req->easy, CURLINFO_CONTENT_TYPE,
                          &type) != CURLE_OK)
        return;
    if (media_type_is(type, req->stream_type))
        req->mode = LOOP_BODY_STREAM;
}

/* CURLOPT_WRITEFUNCTION: append to the capped body buffer (which a
 * streamed response empties at every loop_flush_streams). */
static size_t cb_write(char *data, size_t size, size_t nmemb, void *userp)
{
    struct http_request *req = userp;
    size_t n = size * nmemb;

    if (req->mode == LOOP_BODY_UNDECIDED)
        body_mode_decide(req);

    if (n > req->max - req->len) {
        req->too_large = 1;
        return 0;   /* CURLE_WRITE_ERROR, reported as TOO_LARGE */
    }
    if (req->len + n + 1 > req->cap) {
        size_t cap = req->cap ? req->cap : LOOP_BODY_INITIAL;
        char *p;

        while (cap < req->len + n + 1)
            cap *= 2;
        if (cap > req->max + 1)
            cap = req->max + 1;
        p = realloc(req->buf, cap);
        if (!p) {
            req->oom = 1;
            return 0;
        }
        req->buf = p;
        req->cap = cap;
    }
    memcpy(req->buf + req->len, data, n);
    req->len += n;
    req->buf[req->len] = '\0';
    if (req->mode == LOOP_BODY_STREAM)
        req->loop->streams_dirty = 1;
    return n;
}

/* Whether header line h (length n) is "name:", case-insensitively; on
 * success *value points past the colon and blanks. */
static int header_is(const char *h, size_t n, const char *name,
                     const char **value)
{
    size_t nl = strlen(name);

    if (n <= nl || h[nl] != ':' || strncasecmp(h, name, nl) != 0)
        return 0;
    h += nl + 1;
    while (*h == ' ' || *h == '\t')
        h++;
    *value = h;
    return 1;
}

static long parse_decimal_ms(const char *s, long scale);

/* CURLOPT_HEADERFUNCTION: keep Retry-After and retry-after-ms. */
static size_t cb_header(char *data, size_t size, size_t nmemb, void *userp)
{
    struct http_request *req = userp;
    size_t n = size * nmemb;
    const char *value;
    char line[256];
    size_t end;

    /* A new status line (after 100 Continue, say) starts fresh. */
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        req->retry_after_ms = -1;
        req->retry_after_ms_hdr = -1;
        return n;
    }
    /* The values we want are short; longer lines are not them. */
    if (n >= sizeof(line))
        return n;
    memcpy(line, data, n);
    end = n;
    while (end > 0 && (line[end - 1] == '\r' || line[end - 1] == '\n' ||
                       line[end - 1] == ' ' || line[end - 1] == '\t'))
        end--;
    line[end] = '\0';
    if (header_is(line, end, "retry-after-ms", &value)) {
        /* Sent by OpenAI and Azure; more precise than Retry-After. */
        req->retry_after_ms_hdr = parse_decimal_ms(value, 1);
    } else if (header_is(line, end, "retry-after", &value)) {
        req->retry_after_ms = loop_parse_retry_after(value,
                                                     (long)time(NULL));
    }
    return n;
}

/* Parse a non-negative decimal ("123", "1.5") times scale (1000 for
 * seconds, 1 for milliseconds) into ms, clamped to
 * LOOP_RETRY_AFTER_MAX_MS; -1 if it is not such a number. */
static long parse_decimal_ms(const char *s, long scale)
{
    long ms = 0;
    long frac_scale = scale / 10;
    int digits = 0;

    for (; isdigit((unsigned char)*s); s++, digits++) {
        if (ms <= LOOP_RETRY_AFTER_MAX_MS)
            ms = ms * 10 + (*s - '0') * scale;
    }
    if (*s == '.') {
        s++;
        for (; isdigit((unsigned char)*s); s++, digits++) {
            ms += (*s - '0') * frac_scale;
            frac_scale /= 10;
        }
    }
    while (*s == ' ' || *s == '\t')
        s++;
    if (digits == 0 || *s != '\0')
        return -1;
    return ms > LOOP_RETRY_AFTER_MAX_MS ? LOOP_RETRY_AFTER_MAX_MS : ms;
}

long loop_parse_retry_after(const char *value, long now_unix)
{
    const char *p;
    time_t when;
    int has_alpha = 0;

    if (!value)
        return -1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (*value == '\0')
        return -1;
    if (isdigit((unsigned char)*value) || *value == '.')
        return parse_decimal_ms(value, 1000);
    /* An HTTP-date (IMF-fixdate, RFC 850 or asctime) starts with a day
     * name; curl_getdate parses all three without the locale. */
    for (p = value; *p; p++) {
        if (isalpha((unsigned char)*p))
            has_alpha = 1;
        else if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            return -1;
    }
    if (!has_alpha || !isalpha((unsigned char)*value))
        return -1;
    when = curl_getdate(value, NULL);
    if (when == (time_t)-1)
        return -1;
    if ((long)when <= now_unix)
        return 0;
    if ((long)when - now_unix > LOOP_RETRY_AFTER_MAX_MS / 1000)
        return LOOP_RETRY_AFTER_MAX_MS;
    return ((long)when - now_unix) * 1000;
}

/* Whether s holds a CR, LF or NUL before its end (header injection). */
static int has_line_break(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

static int method_valid(const char *m)
{
    size_t n = strlen(m);

    if (n == 0 || n > LOOP_METHOD_MAX)
        return 0;
    for (; *m; m++)
        if (*m < 'A' || *m > 'Z')
            return 0;
    return 1;
}

int loop_http_h2c_usable(const char **why)
{
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);

    if (!(v->features & CURL_VERSION_HTTP2)) {
        *why = "libcurl is built without HTTP/2";
        return 0;
    }
    /* curl 7.88 (Debian 12) fails every request that reuses an h2c
     * connection ("Error in the HTTP2 framing layer", curl issue 10634,
     * fixed in 8.0.0). */
    if (v->version_num < 0x080000) {
        *why = "libcurl before 8.0.0 fails requests that reuse an h2c "
               "connection (curl issue 10634)";
        return 0;
    }
    return 1;
}

/* All easy options; CURLE_OK or the first failure. */
static CURLcode request_setopts(struct http_request *req,
                                const struct http_options *opt)
{
    CURL *e = req->easy;
    const char *method = opt->method ? opt->method : "GET";
    CURLcode result;

#define SETOPT(o, v) do { \
        result = curl_easy_setopt(e, o, v); \
        if (result) \
            return result; \
    } while (0)

    SETOPT(CURLOPT_URL, opt->url);
    SETOPT(CURLOPT_PRIVATE, req);
    SETOPT(CURLOPT_ERRORBUFFER, req->errbuf);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_FAILONERROR, 0L);
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    /* Never CURLOPT_VERBOSE: the headers hold the API key and tokens. */
    SETOPT(CURLOPT_VERBOSE, 0L);
    SETOPT(CURLOPT_WRITEFUNCTION, cb_write);
    SETOPT(CURLOPT_WRITEDATA, req);
    SETOPT(CURLOPT_HEADERFUNCTION, cb_header);
    SETOPT(CURLOPT_HEADERDATA, req);
    SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)req->max);
    SETOPT(CURLOPT_ACCEPT_ENCODING, "");
    SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
    /* curl's receive buffer, per request in flight: the default 16 KiB
     * was 23 of the 164 MB peak with 10,000 in flight (scripts/bench). */
    SETOPT(CURLOPT_BUFFERSIZE, (long)LOOP_CURL_BUFFER);
    /* Over TLS a burst waits for the first handshake to say (ALPN)
     * whether the API speaks h2, and then shares that connection instead
     * of opening one per request.  Over cleartext only with prior
     * knowledge: otherwise curl learns it only from the first answer, so
     * a burst would wait one whole model latency (scripts/bench/run.sh
     * showed 2 s at 2 s). */
    if (opt->h2_prior_knowledge &&
        strncasecmp(opt->url, "http://", 7) == 0) {
        SETOPT(CURLOPT_HTTP_VERSION,
               (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
        SETOPT(CURLOPT_PIPEWAIT, 1L);
    } else if (strncasecmp(opt->url, "https://", 8) == 0) {
        SETOPT(CURLOPT_PIPEWAIT, 1L);
    }
    SETOPT(CURLOPT_USERAGENT, "parley/" PARLEY_VERSION);
    if (opt->connect_timeout_ms > 0)
        SETOPT(CURLOPT_CONNECTTIMEOUT_MS, opt->connect_timeout_ms);
    if (opt->timeout_ms > 0)
        SETOPT(CURLOPT_TIMEOUT_MS, opt->timeout_ms);
    if (opt->idle_timeout_ms > 0) {
        SETOPT(CURLOPT_LOW_SPEED_LIMIT, 1L);
        SETOPT(CURLOPT_LOW_SPEED_TIME, (opt->idle_timeout_ms + 999) / 1000);
    }
    if (req->headers)
        SETOPT(CURLOPT_HTTPHEADER, req->headers);
    if (strcmp(method, "GET") != 0 || opt->body) {
        SETOPT(CURLOPT_POSTFIELDSIZE_LARGE,
               (curl_off_t)(opt->body ? opt->body_len : 0));
        if (opt->body && opt->body_borrowed)
            SETOPT(CURLOPT_POSTFIELDS, opt->body);
        else
            SETOPT(CURLOPT_COPYPOSTFIELDS, opt->body ? opt->body : "");
        if (strcmp(method, "POST") != 0)
            SETOPT(CURLOPT_CUSTOMREQUEST, method);
    }
#undef SETOPT
    return CURLE_OK;
}

int loop_http_start(struct loop *loop, const struct http_options *opt,
                    http_done_fn *done, void *privdata,
                    struct http_request **out)
{
    struct http_request *req;
    int have_expect = 0;
    CURLcode result;
    int rc;

    if (out)
        *out = NULL;
    if (loop->closing)
        return PARLEY_ERR_STATE;
    if (!opt || !opt->url || !done ||
        (opt->method && !method_valid(opt->method)))
        return PARLEY_ERR_OTHER;
    req = calloc(1, sizeof(*req));
    if (!req)
        return PARLEY_ERR_OOM;
    req->loop = loop;
    req->done = done;
    req->privdata = privdata;
    req->retry_after_ms = -1;
    req->retry_after_ms_hdr = -1;
    req->max = opt->max_body ? opt->max_body : HTTP_BODY_MAX;
    if (opt->on_data && opt->stream_type) {
        req->on_data = opt->on_data;
        req->stream_type = strdup(opt->stream_type);
        if (!req->stream_type) {
            request_free(req);
            return PARLEY_ERR_OOM;
        }
    }

    for (size_t i = 0; i < opt->n_headers; i++) {
        struct curl_slist *l;

        if (has_line_break(opt->headers[i])) {
            request_free(req);
            return PARLEY_ERR_PROTOCOL;
        }
        if (strncasecmp(opt->headers[i], "Expect:", 7) == 0)
            have_expect = 1;
        l = curl_slist_append(req->headers, opt->headers[i]);
        if (!l) {
            request_free(req);
            return PARLEY_ERR_OOM;
        }
        req->headers = l;
    }
    /* curl sends "Expect: 100-continue" for bodies over 1 KiB and then
     * waits up to a second for the go-ahead; our JSON bodies are small
     * enough to send at once. */
    if (!have_expect) {
        struct curl_slist *l = curl_slist_append(req->headers, "Expect:");

        if (!l) {
            request_free(req);
            return PARLEY_ERR_OOM;
        }
        req->headers = l;
    }

    req->easy = curl_easy_init();
    if (!req->easy) {
        request_free(req);
        return PARLEY_ERR_OOM;
    }
    result = request_setopts(req, opt);
    if (result) {
        log_error("curl_easy_setopt: %s", curl_easy_strerror(result));
        request_free(req);
        return result == CURLE_OUT_OF_MEMORY ? PARLEY_ERR_OOM :
            PARLEY_ERR_CONFIG;
    }
    rc = loop_shard_add(loop, req->easy, &req->shard);
    if (rc != PARLEY_OK) {
        request_free(req);
        return rc;
    }
    req->next = loop->reqs;
    if (loop->reqs)
        loop->reqs->prev = req;
    loop->reqs = req;
    loop->pending++;
    if (out)
        *out = req;
    return PARLEY_OK;
}

void loop_http_cancel(struct http_request *req)
{
    if (!req)
        return;
    loop_shard_remove(req->shard, req->easy);
    request_unlink(req);
    request_free(req);
}
