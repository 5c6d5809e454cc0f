/*
 * The web adapter's HTTP side (see web.h): libmicrohttpd with no thread
 * of its own, its epoll fd watched by a loop_watch and MHD_run called from
 * the loop, so handlers, the router and the adapter ops share one
 * thread.  Requests that wait (history from Redis, the event stream) are
 * suspended and resumed from the loop.
 *
 * Routes:
 *   GET  /, /app.js, /app.css   the page (web_assets.c)
 *   GET  /api/history           {"bot", "model", "models", "messages"}
 *   GET  /api/events            text/event-stream: typing, progress,
 *                               reply, ping
 *   POST /api/send              {"text": "..."} -> 202 {"id": "..."}
 *   POST /api/picture?name=N&text=CAPTION   the picture's bytes (at most
 *                               llm.image_max_bytes) -> 202 {"id": "..."}
 *   POST /login                 token=... (form) -> cookie, 303 to /
 *
 * Checks, in this order, on every request: the Host header names this
 * server (a loopback name, an IP literal, the listen address or the
 * configured origin; a DNS-rebinding page has none of these: 403), the
 * method (405), for POST the Origin header is this server's (403) and
 * the body is at most WEB_BODY_MAX bytes (413), then the access token
 * when one is configured (401, the login page for GET /).
 *
 * This file holds the responses, the checks, dispatch and the daemon on
 * the loop; the /api routes and POST /login are answered in web_api.c
 * (web_http_private.h is what the two share).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "config.h"
#include "dict.h"
#include "log.h"
#include "loop.h"
#include "monitor.h"
#include "random.h"
#include "status.h"
#include "web.h"
#include "web_http_private.h"

#define CSP "default-src 'none'; script-src 'self'; style-src 'self'; " \
            "connect-src 'self'; img-src 'self' data:; form-action 'self'; " \
            "base-uri 'none'; frame-ancestors 'none'"


/* ---- responses ------------------------------------------------------- */

void web_http_headers(struct web_req *req, struct MHD_Response *resp)
{
    char cookie[WEB_SID_HEX + 128];

    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL,
                            "no-store");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
    MHD_add_response_header(resp, "Content-Security-Policy", CSP);
    if (req && req->new_sid[0]) {
        snprintf(cookie, sizeof(cookie), COOKIE_SID "=%s; Path=/; "
                 "Max-Age=31536000; HttpOnly; SameSite=Strict%s",
                 req->new_sid, req->w->cfg.origin &&
                 strncmp(req->w->cfg.origin, "https:", 6) == 0 ?
                 "; Secure" : "");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_SET_COOKIE, cookie);
    }
}

struct MHD_Response *web_http_make(struct web_req *req, const char *type,
                                   const char *body, size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, (void *)body, MHD_RESPMEM_MUST_COPY);

    if (!resp)
        return NULL;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    web_http_headers(req, resp);
    return resp;
}

enum MHD_Result web_http_reply(struct web_req *req, struct MHD_Connection *c,
                               unsigned code, const char *type,
                               const char *body)
{
    struct MHD_Response *resp = web_http_make(req, type, body, strlen(body));
    enum MHD_Result ret;

    if (!resp)
        return MHD_NO;
    ret = MHD_queue_response(c, code, resp);
    MHD_destroy_response(resp);
    return ret;
}

enum MHD_Result web_http_reply_json(struct web_req *req,
                                    struct MHD_Connection *c, unsigned code,
                                    const char *json)
{
    return web_http_reply(req, c, code, "application/json", json);
}

/* ---- checks ---------------------------------------------------------- */

static int is_ip_literal(const char *host, size_t n)
{
    char buf[64];
    unsigned char addr[16];

    if (n == 0 || n >= sizeof(buf))
        return 0;
    if (host[0] == '[') {
        const char *end = memchr(host, ']', n);

        if (!end || (size_t)(end - host) - 1 >= sizeof(buf))
            return 0;
        memcpy(buf, host + 1, (size_t)(end - host) - 1);
        buf[end - host - 1] = '\0';
        return inet_pton(AF_INET6, buf, addr) == 1;
    }
    memcpy(buf, host, n);
    buf[n] = '\0';
    return inet_pton(AF_INET, buf, addr) == 1;
}

/* The Host header names this server.  A DNS-rebinding page reaches us
 * under its own host name, so a name must be a loopback name, ours from
 * "listen" or the configured origin; an IP literal cannot be rebound. */
static int host_allowed(const struct web *w, const char *host)
{
    const char *colon;
    size_t n;

    if (!host || !*host || strlen(host) > 255)
        return 0;
    colon = strrchr(host, ':');
    if (colon && strchr(colon, ']'))
        colon = NULL;       /* "[::1]" without a port */
    n = colon ? (size_t)(colon - host) : strlen(host);
    if (is_ip_literal(host, n))
        return 1;
    if ((n == 9 && strncasecmp(host, "localhost", 9) == 0))
        return 1;
    if (w->cfg.origin) {
        const char *oh = strstr(w->cfg.origin, "://") + 3;

        if (strcasecmp(oh, host) == 0 ||
            (strncasecmp(oh, host, n) == 0 && oh[n] == '\0'))
            return 1;
    }
    colon = strrchr(w->cfg.listen, ':');
    return colon && (size_t)(colon - w->cfg.listen) == n &&
           strncasecmp(w->cfg.listen, host, n) == 0;
}

/* A state-changing request comes from our own page: its Origin is this
 * server as the browser sees it. */
static int origin_allowed(const struct web *w, const char *origin,
                          const char *host)
{
    char self[WEB_ORIGIN_MAX + 16];

    if (!origin || !host)
        return 0;
    if (w->cfg.origin && strcasecmp(origin, w->cfg.origin) == 0)
        return 1;
    snprintf(self, sizeof(self), "http://%s", host);
    return strcasecmp(origin, self) == 0;
}

/* The request carries the token: the cookie the login page set (hex
 * SHA-256 of the token) or "Authorization: Bearer TOKEN". */
static int token_ok(const struct web *w, struct MHD_Connection *c)
{
    const char *cookie = MHD_lookup_connection_value(c, MHD_COOKIE_KIND,
                                                     COOKIE_TOKEN);
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                   "Authorization");
    unsigned char md[32];
    char want[65];

    if (!w->has_token)
        return 1;
    if (cookie && strlen(cookie) == 64) {
        for (int i = 0; i < 32; i++)
            snprintf(want + 2 * i, 3, "%02x", w->token_sha[i]);
        if (CRYPTO_memcmp(cookie, want, 64) == 0)
            return 1;
    }
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0 &&
        EVP_Digest(auth + 7, strlen(auth + 7), md, NULL, EVP_sha256(),
                   NULL) &&
        CRYPTO_memcmp(md, w->token_sha, 32) == 0)
        return 1;
    return 0;
}

/* The session of the request, from its cookie or new. */
static int session_of(struct web_req *req, struct MHD_Connection *c)
{
    const char *sid = MHD_lookup_connection_value(c, MHD_COOKIE_KIND,
                                                  COOKIE_SID);
    unsigned char rnd[WEB_SID_BYTES];
    size_t i;

    if (sid && strlen(sid) == WEB_SID_HEX) {
        for (i = 0; i < WEB_SID_HEX && isxdigit((unsigned char)sid[i]) &&
             !isupper((unsigned char)sid[i]); i++)
            ;
        if (i == WEB_SID_HEX) {
            web_sid_room(sid, req->room, sizeof(req->room));
            return PARLEY_OK;
        }
    }
    if (random_bytes(rnd, sizeof(rnd)) != PARLEY_OK)
        return PARLEY_ERR_IO;
    for (i = 0; i < WEB_SID_BYTES; i++)
        snprintf(req->new_sid + 2 * i, 3, "%02x", rnd[i]);
    web_sid_room(req->new_sid, req->room, sizeof(req->room));
    return PARLEY_OK;
}

/* ---- GET /api/history ------------------------------------------------ */

/* ---- dispatch ---------------------------------------------------------- */

static const struct web_asset *asset_find(const char *url)
{
    for (size_t i = 0; web_assets[i].path; i++)
        if (strcmp(web_assets[i].path, url) == 0)
            return &web_assets[i];
    return NULL;
}

/* First call: everything that can be decided from the headers. */
static enum MHD_Result first_checks(struct web_req *req,
                                    struct MHD_Connection *c,
                                    const char *url, const char *method)
{
    struct web *w = req->w;
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                   "Host");
    const char *length = MHD_lookup_connection_value(
        c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;

    req->rejected = 1;
    if (!host_allowed(w, host))
        return web_http_reply(req, c, MHD_HTTP_FORBIDDEN, "text/plain",
                              "unknown host name (set origin in the web "
                              "adapter's config)\n");
    req->post = strcmp(method, "POST") == 0;
    req->max = req->post && strcmp(url, "/api/picture") == 0 &&
               w->gcfg ? (size_t)w->gcfg->llm.image_max_bytes : WEB_BODY_MAX;
    if (!get && !req->post)
        return web_http_reply(req, c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain",
                              "method not allowed\n");
    if (req->post) {
        if (!origin_allowed(w, MHD_lookup_connection_value(
                c, MHD_HEADER_KIND, "Origin"), host))
            return web_http_reply(req, c, MHD_HTTP_FORBIDDEN, "text/plain",
                                  "cross-origin request refused\n");
        if (length && strtoull(length, NULL, 10) > req->max)
            return web_http_reply(req, c, MHD_HTTP_CONTENT_TOO_LARGE,
                                  "text/plain", "request body too large\n");
    }
    /* The login page needs its styles; nothing else goes out without
     * the token. */
    if (strcmp(url, "/login") != 0 && strcmp(url, "/app.css") != 0 &&
        !token_ok(w, c)) {
        if (get && strcmp(url, "/") == 0)
            return web_http_reply(req, c, MHD_HTTP_UNAUTHORIZED,
                                  "text/html; charset=utf-8", web_login_page);
        return web_http_reply_json(req, c, MHD_HTTP_UNAUTHORIZED,
                                   "{\"error\":\"access token needed\"}");
    }
    if (session_of(req, c) != PARLEY_OK)
        return MHD_NO;
    req->rejected = 0;
    return MHD_YES;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c,
                              const char *url, const char *method,
                              const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    struct web *w = cls;
    struct web_req *req = *con_cls;
    const struct web_asset *a;

    (void)version;
    if (!req) {
        req = calloc(1, sizeof(*req));
        if (!req)
            return MHD_NO;
        req->w = w;
        req->conn = c;
        *con_cls = req;
        return first_checks(req, c, url, method);
    }
    if (req->rejected) {
        *upload_size = 0;       /* the answer is out; drop the body */
        return MHD_YES;
    }
    if (*upload_size > 0) {
        char *grown;

        if (req->len + *upload_size > req->max) {
            req->rejected = 1;
            *upload_size = 0;
            return web_http_reply(req, c, MHD_HTTP_CONTENT_TOO_LARGE,
                                  "text/plain", "request body too large\n");
        }
        grown = realloc(req->body, req->len + *upload_size + 1);
        if (!grown)
            return MHD_NO;
        memcpy(grown + req->len, upload, *upload_size);
        req->len += *upload_size;
        grown[req->len] = '\0';
        req->body = grown;
        *upload_size = 0;
        return MHD_YES;
    }
    if (req->post && strcmp(url, "/api/send") == 0)
        return web_api_send(req, c);
    if (req->post && strcmp(url, "/api/picture") == 0)
        return web_api_picture(req, c);
    if (req->post && strcmp(url, "/login") == 0)
        return web_api_login(req, c);
    if (req->post)
        return web_http_reply(req, c, MHD_HTTP_NOT_FOUND, "text/plain",
                              "not found\n");
    if (strcmp(url, "/api/history") == 0)
        return web_api_history(req, c);
    if (strcmp(url, "/api/events") == 0)
        return web_api_events(req, c);
    a = asset_find(url);
    if (a)
        return web_http_reply(req, c, MHD_HTTP_OK, a->type, a->body);
    return web_http_reply(req, c, MHD_HTTP_NOT_FOUND, "text/plain",
                          "not found\n");
}

void web_req_free(struct web_req *req)
{
    if (req->ready)
        MHD_destroy_response(req->ready);
    free(req->body);
    free(req->model);
    free(req);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    struct web_req *req = *con_cls;

    (void)cls;
    (void)c;
    (void)toe;
    if (!req)
        return;
    *con_cls = NULL;
    if (req->waiting)
        req->orphan = 1;        /* its state callback frees it */
    else
        web_req_free(req);
}

/* ---- the daemon on the loop -------------------------------------------- */

static void mhd_run(struct web *w)
{
    MHD_UNSIGNED_LONG_LONG ms;

    if (!w->daemon)
        return;
    MHD_run(w->daemon);
    if (MHD_get_timeout(w->daemon, &ms) == MHD_YES)
        loop_timer_start(w->mhd_timer, ms > 60000 ? 60000 : (uint64_t)ms,
                         0);
    else
        loop_timer_stop(w->mhd_timer);
}

/* libmicrohttpd's own messages (connection limits, protocol errors) go
 * to parley's log, not raw to stderr. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[256];
    size_t n;

    (void)cls;
    vsnprintf(line, sizeof(line), fmt, ap);
    n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    log_warn("web: %s", line);
}

static void on_mhd_timer(void *privdata)
{
    mhd_run(privdata);
}

static void on_ready(int events, void *privdata)
{
    (void)events;
    mhd_run(privdata);
}

void web_http_kick(struct web *w)
{
    if (w->daemon && !w->stopped)
        loop_timer_start(w->mhd_timer, 0, 0);
}

int web_http_start(struct web *w, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    const union MHD_DaemonInfo *info;

    if (monitor_parse_listen(w->cfg.listen, &sa) != 0) {
        snprintf(err, errlen, "web: listen: expected \"ADDRESS:PORT\" with "
                 "an IPv4 address, got \"%s\"", w->cfg.listen);
        return PARLEY_ERR_CONFIG;
    }
    w->daemon = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0,
        NULL, NULL, handle, w,
        /* First, or libmicrohttpd warns that earlier options may have
         * logged through its own logger. */
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, w,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)w->cfg.max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)w->cfg.max_per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)WEB_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)WEB_CONN_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, completed, w,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1,
        MHD_OPTION_END);
    if (!w->daemon) {
        snprintf(err, errlen, "web: listen: cannot listen on %s (in use, "
                 "or not an address of this host)", w->cfg.listen);
        return PARLEY_ERR_IO;
    }
    info = MHD_get_daemon_info(w->daemon, MHD_DAEMON_INFO_BIND_PORT);
    w->port = info ? info->port : ntohs(sa.sin_port);
    info = MHD_get_daemon_info(w->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    if (info)
        w->watch = loop_watch_new(w->loop, info->epoll_fd, on_ready, w);
    w->mhd_timer = loop_timer_new(w->loop, on_mhd_timer, w);
    if (!w->watch || !w->mhd_timer ||
        loop_watch_set(w->watch, LOOP_READABLE) != PARLEY_OK) {
        loop_watch_free(w->watch);
        loop_timer_free(w->mhd_timer);
        w->watch = NULL;
        w->mhd_timer = NULL;
        MHD_stop_daemon(w->daemon);
        w->daemon = NULL;
        snprintf(err, errlen, "web: cannot watch the server's epoll fd");
        return PARLEY_ERR_IO;
    }
    mhd_run(w);
    return PARLEY_OK;
}

static void wake_stream(const char *key, void *value, void *privdata)
{
    struct web_session *s = value;

    (void)key;
    (void)privdata;
    if (s->stream && s->stream->suspended) {
        loop_watch_set(s->stream->hup, 0);
        s->stream->suspended = 0;
        MHD_resume_connection(s->stream->conn);
    }
}

void web_http_stop(struct web *w)
{
    struct web_req *req;

    if (!w->daemon)
        return;
    /* MHD wants every suspended connection resumed before it stops;
     * streams then end (w->stopped), waiting requests lose their
     * connection and are freed by their state callback. */
    dict_foreach(w->sessions, wake_stream, NULL);
    for (req = w->waiting; req; req = req->next)
        MHD_resume_connection(req->conn);
    /* The watch goes before MHD closes the epoll fd it watches. */
    loop_watch_free(w->watch);
    loop_timer_free(w->mhd_timer);
    w->watch = NULL;
    w->mhd_timer = NULL;
    MHD_stop_daemon(w->daemon);
    w->daemon = NULL;
}
