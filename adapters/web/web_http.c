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
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <cJSON.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "config.h"
#include "context.h"
#include "dict.h"
#include "event.h"
#include "image.h"
#include "log.h"
#include "loop.h"
#include "matrix/matrix.h"
#include "random.h"
#include "router.h"
#include "state.h"
#include "status.h"
#include "web.h"

#define COOKIE_SID "parley_sid"
#define COOKIE_TOKEN "parley_token"
#define CSP "default-src 'none'; script-src 'self'; style-src 'self'; " \
            "connect-src 'self'; img-src 'self' data:; form-action 'self'; " \
            "base-uri 'none'; frame-ancestors 'none'"

/* One request (MHD's con_cls). */
struct web_req {
    struct web *w;
    struct MHD_Connection *conn;
    char room[WEB_ROOM_LEN + 1];
    char new_sid[WEB_SID_HEX + 1];  /* set as a cookie when not empty */
    char *body;
    size_t len;
    size_t max;                 /* body cap: WEB_BODY_MAX, or the picture
                                   cap for /api/picture */
    int post;
    int rejected;               /* a response was queued on the first
                                   call */
    /* GET /api/history, answered from Redis callbacks. */
    int waiting;                /* a state callback is due */
    int orphan;                 /* the connection went: the callback
                                   frees */
    char *model;
    struct MHD_Response *ready;
    unsigned ready_code;
    struct web_req *prev, *next;    /* waiting requests, for stop */
};


/* ---- responses ------------------------------------------------------- */

static void common_headers(struct web_req *req, struct MHD_Response *resp)
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

static struct MHD_Response *make(struct web_req *req, const char *type,
                                 const char *body, size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, (void *)body, MHD_RESPMEM_MUST_COPY);

    if (!resp)
        return NULL;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    common_headers(req, resp);
    return resp;
}

static enum MHD_Result reply(struct web_req *req, struct MHD_Connection *c,
                             unsigned code, const char *type,
                             const char *body)
{
    struct MHD_Response *resp = make(req, type, body, strlen(body));
    enum MHD_Result ret;

    if (!resp)
        return MHD_NO;
    ret = MHD_queue_response(c, code, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result reply_json(struct web_req *req,
                                  struct MHD_Connection *c, unsigned code,
                                  const char *json)
{
    return reply(req, c, code, "application/json", json);
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

static void waiting_unlink(struct web_req *req)
{
    if (req->prev)
        req->prev->next = req->next;
    else if (req->w->waiting == req)
        req->w->waiting = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

static void req_free(struct web_req *req)
{
    if (req->ready)
        MHD_destroy_response(req->ready);
    free(req->body);
    free(req->model);
    free(req);
}

/* The router's key for the request's room ("web:ACCOUNT:ROOM"). */
static void room_key(const struct web_req *req, char *key, size_t len)
{
    struct event ev;

    memset(&ev, 0, sizeof(ev));
    ev.platform = "web";
    ev.account = req->w->ad.account;
    ev.room = req->room;
    if (event_room_key(&ev, key, len) != PARLEY_OK)
        key[0] = '\0';
}

/* The JSON answer of /api/history (h may be NULL: Redis unavailable). */
static char *history_json(struct web_req *req, const struct history *h)
{
    const struct config *cfg = req->w->gcfg;
    const struct config_room *over;
    char key[EVENT_ROOM_KEY_MAX];
    const char *model = req->model;
    cJSON *o = cJSON_CreateObject(), *models, *msgs;
    char *out = NULL;

    room_key(req, key, sizeof(key));
    over = config_room_find(cfg, key);
    if (!model)
        model = over && over->model ? over->model : cfg->llm.model;
    if (!o || !cJSON_AddStringToObject(o, "bot", cfg->bot.name) ||
        !cJSON_AddStringToObject(o, "model", model ? model : "") ||
        !cJSON_AddBoolToObject(o, "available", h != NULL) ||
        !(models = cJSON_AddArrayToObject(o, "models")) ||
        !(msgs = cJSON_AddArrayToObject(o, "messages")))
        goto out;
    if (cfg->llm.model)
        cJSON_AddItemToArray(models, cJSON_CreateString(cfg->llm.model));
    for (size_t i = 0; i < cfg->llm.n_allowed_models; i++)
        if (!cfg->llm.model ||
            strcmp(cfg->llm.allowed_models[i], cfg->llm.model) != 0)
            cJSON_AddItemToArray(models, cJSON_CreateString(
                cfg->llm.allowed_models[i]));
    for (size_t i = 0; h && i < h->n; i++) {
        const struct turn *t = &h->turns[i];
        cJSON *m = cJSON_CreateObject();
        int assistant = strcmp(t->role, "assistant") == 0;
        char *html = assistant ? web_render(t->content) : NULL;

        if (!m || (assistant && !html)) {
            cJSON_Delete(m);
            free(html);
            goto out;
        }
        cJSON_AddItemToArray(msgs, m);
        cJSON_AddStringToObject(m, "role", assistant ? "assistant" : "user");
        /* Unaddressed lines of other speakers cannot happen in a browser
         * room; the name is kept for what a shared room might hold. */
        if (t->name)
            cJSON_AddStringToObject(m, "name", t->name);
        if (assistant)
            cJSON_AddStringToObject(m, "html", html);
        else
            cJSON_AddStringToObject(m, "text", t->content);
        free(html);
    }
    out = cJSON_PrintUnformatted(o);
out:
    cJSON_Delete(o);
    return out;
}

static void history_ready(struct web_req *req, const struct history *h)
{
    char *json;

    req->waiting = 0;
    waiting_unlink(req);
    if (req->orphan) {
        req_free(req);
        return;
    }
    json = history_json(req, h);
    req->ready_code = json ? MHD_HTTP_OK : MHD_HTTP_INTERNAL_SERVER_ERROR;
    req->ready = make(req, "application/json", json ? json : "{}",
                      json ? strlen(json) : 2);
    free(json);
    MHD_resume_connection(req->conn);
    web_http_kick(req->w);
}

static void history_loaded(int status, struct history *h, void *privdata)
{
    struct web_req *req = privdata;

    history_ready(req, status == PARLEY_OK ? h : NULL);
    context_history_free(h);
}

static void settings_loaded(int status, const struct room_settings *rs,
                            void *privdata)
{
    struct web_req *req = privdata;
    char key[EVENT_ROOM_KEY_MAX];

    if (req->orphan) {
        history_ready(req, NULL);
        return;
    }
    if (status == PARLEY_OK && rs && rs->model)
        req->model = strdup(rs->model);
    room_key(req, key, sizeof(key));
    if (state_history_load(req->w->store, key, &req->w->gcfg->context,
                           history_loaded, req) != PARLEY_OK)
        history_ready(req, NULL);
}

static enum MHD_Result get_history(struct web_req *req,
                                   struct MHD_Connection *c)
{
    struct web *w = req->w;
    char key[EVENT_ROOM_KEY_MAX];
    enum MHD_Result ret;

    if (req->ready) {
        ret = MHD_queue_response(c, req->ready_code, req->ready);
        MHD_destroy_response(req->ready);
        req->ready = NULL;
        return ret;
    }
    room_key(req, key, sizeof(key));
    req->waiting = 1;
    req->next = req->w->waiting;
    if (req->w->waiting)
        req->w->waiting->prev = req;
    req->w->waiting = req;
    MHD_suspend_connection(c);
    if (state_room_load(w->store, key, settings_loaded, req) != PARLEY_OK)
        settings_loaded(PARLEY_ERR_STATE, NULL, req);
    return MHD_YES;
}

/* ---- GET /api/events -------------------------------------------------- */

static const char stream_hello[] = "retry: 2000\n\n";

/* The suspended stream's socket is readable: EOF or an error means the
 * browser closed it; the stream is resumed and ends (stream_read).  A
 * browser sends nothing on an event stream, so other bytes are left to
 * MHD and the watch stops. */
static void stream_peer(int events, void *privdata)
{
    struct web_stream *st = privdata;
    const union MHD_ConnectionInfo *ci;
    char c;
    ssize_t n;

    (void)events;
    loop_watch_set(st->hup, 0);
    ci = MHD_get_connection_info(st->conn,
                                 MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return;
    n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
                            errno == EINTR))) {
        if (n < 0)
            loop_watch_set(st->hup, LOOP_READABLE);
        return;
    }
    st->peer_gone = 1;
    web_stream_wake(st);
}

/* Watch the socket of a stream about to be suspended. */
static void stream_watch(struct web_stream *st)
{
    const union MHD_ConnectionInfo *ci;

    if (!st->hup) {
        ci = MHD_get_connection_info(st->conn,
                                     MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci)
            return;
        st->hup = loop_watch_new(st->w->loop, ci->connect_fd, stream_peer,
                                 st);
    }
    loop_watch_set(st->hup, LOOP_READABLE);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct web_stream *st = cls;
    struct web_session *s = st->s;
    size_t n = 0;

    if (pos == 0 && max >= sizeof(stream_hello) - 1) {
        memcpy(buf, stream_hello, sizeof(stream_hello) - 1);
        return (ssize_t)(sizeof(stream_hello) - 1);
    }
    if (st->peer_gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (!s || st->w->stopped)
        return MHD_CONTENT_READER_END_OF_STREAM;
    while (s->head && n < max) {
        struct web_event *e = s->head;
        size_t take = e->len - st->off;

        if (take > max - n)
            take = max - n;
        memcpy(buf + n, e->data + st->off, take);
        n += take;
        st->off += take;
        if (st->off == e->len) {
            s->head = e->next;
            if (!s->head)
                s->tail = NULL;
            s->queued -= e->len;
            st->off = 0;
            free(e);
        }
    }
    if (n > 0)
        return (ssize_t)n;
    /* Nothing to say: wait for web_stream_wake rather than be asked
     * again at once. */
    st->suspended = 1;
    MHD_suspend_connection(st->conn);
    stream_watch(st);
    return 0;
}

static void stream_free(void *cls)
{
    struct web_stream *st = cls;

    loop_watch_free(st->hup);
    web_session_detach(st);
    free(st);
}

void web_stream_wake(struct web_stream *st)
{
    if (!st->suspended)
        return;
    loop_watch_set(st->hup, 0);
    st->suspended = 0;
    MHD_resume_connection(st->conn);
    web_http_kick(st->w);
}

static enum MHD_Result get_events(struct web_req *req,
                                  struct MHD_Connection *c)
{
    struct web *w = req->w;
    struct web_session *s = web_session_get(w, req->room);
    struct web_stream *st;
    struct MHD_Response *resp;
    enum MHD_Result ret;

    if (!s)
        return reply_json(req, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                          "{\"error\":\"too many sessions\"}");
    st = calloc(1, sizeof(*st));
    if (!st)
        return MHD_NO;
    st->w = w;
    st->conn = c;
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096,
                                             stream_read, st, stream_free);
    if (!resp) {
        free(st);
        return MHD_NO;
    }
    web_session_attach(w, s, st);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/event-stream; charset=utf-8");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    common_headers(req, resp);
    ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* ---- POST /api/send, POST /api/picture, POST /login -------------------- */

/* A chat line from the browser, cleaned: valid UTF-8 of at most max
 * bytes, control characters other than newline and tab (which mean
 * nothing in a chat line) made blanks.  NULL on OOM. */
static char *clean_line(const char *in, size_t max)
{
    char *text = matrix_utf8_clean(in, strlen(in), max);

    for (size_t i = 0; text && text[i]; i++)
        if ((unsigned char)text[i] < 0x20 && text[i] != '\n' &&
            text[i] != '\t')
            text[i] = ' ';
    return text;
}

static enum MHD_Result post_send(struct web_req *req,
                                 struct MHD_Connection *c)
{
    cJSON *o = cJSON_ParseWithLength(req->body ? req->body : "", req->len);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "text");
    char id[64], json[128], *text;
    size_t i;
    int result;

    if (!cJSON_IsString(t) || !t->valuestring) {
        cJSON_Delete(o);
        return reply_json(req, c, MHD_HTTP_BAD_REQUEST,
                          "{\"error\":\"expected {\\\"text\\\": ...}\"}");
    }
    text = clean_line(t->valuestring, ROUTER_TEXT_MAX);
    cJSON_Delete(o);
    if (!text)
        return MHD_NO;
    for (i = 0; text[i] && isspace((unsigned char)text[i]); i++)
        ;
    if (!text[i]) {
        free(text);
        return reply_json(req, c, MHD_HTTP_BAD_REQUEST,
                          "{\"error\":\"empty message\"}");
    }
    result = web_submit(req->w, req->room, text, NULL, id, sizeof(id));
    free(text);
    if (result != PARLEY_OK)
        return reply_json(req, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                          "{\"error\":\"not accepting messages\"}");
    snprintf(json, sizeof(json), "{\"id\":\"%s\"}", id);
    return reply_json(req, c, MHD_HTTP_ACCEPTED, json);
}

/* The picture's bytes are the body; its name and the caption come in the
 * query.  The type is read from the bytes (image.h): a browser's
 * Content-Type is the file name's guess. */
static enum MHD_Result post_picture(struct web_req *req,
                                    struct MHD_Connection *c)
{
    const char *name = MHD_lookup_connection_value(
        c, MHD_GET_ARGUMENT_KIND, "name");
    const char *caption = MHD_lookup_connection_value(
        c, MHD_GET_ARGUMENT_KIND, "text");
    struct event_attachment att;
    char id[64], json[128], *text, *fname;
    int result;

    if (!req->body || req->len == 0)
        return reply_json(req, c, MHD_HTTP_BAD_REQUEST,
                          "{\"error\":\"no picture\"}");
    memset(&att, 0, sizeof(att));
    att.mime = image_sniff_mime((const unsigned char *)req->body, req->len);
    if (!att.mime)
        return reply_json(req, c, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
                          "{\"error\":\"only PNG, JPEG, WebP and GIF "
                          "pictures\"}");
    text = clean_line(caption ? caption : "", ROUTER_TEXT_MAX);
    fname = clean_line(name && *name ? name : "picture", IMAGE_NAME_MAX);
    if (!text || !fname) {
        free(text);
        free(fname);
        return MHD_NO;
    }
    att.name = fname;
    att.data = (const unsigned char *)req->body;
    att.len = att.size = req->len;
    result = web_submit(req->w, req->room, text, &att, id, sizeof(id));
    free(text);
    free(fname);
    if (result != PARLEY_OK)
        return reply_json(req, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                          "{\"error\":\"not accepting messages\"}");
    snprintf(json, sizeof(json), "{\"id\":\"%s\"}", id);
    return reply_json(req, c, MHD_HTTP_ACCEPTED, json);
}

static enum MHD_Result post_login(struct web_req *req,
                                  struct MHD_Connection *c)
{
    struct web *w = req->w;
    unsigned char md[32];
    char cookie[160], *token;
    struct MHD_Response *resp;
    enum MHD_Result ret;
    int ok;

    if (!w->has_token)
        return reply(req, c, MHD_HTTP_NOT_FOUND, "text/plain",
                     "no token is configured\n");
    if (!req->body || req->len < 6 || strncmp(req->body, "token=", 6) != 0)
        return reply(req, c, MHD_HTTP_BAD_REQUEST, "text/plain",
                     "expected token=...\n");
    token = req->body + 6;
    for (char *p = token; *p; p++)
        if (*p == '+')
            *p = ' ';
    MHD_http_unescape(token);
    ok = EVP_Digest(token, strlen(token), md, NULL, EVP_sha256(), NULL) &&
         CRYPTO_memcmp(md, w->token_sha, 32) == 0;
    OPENSSL_cleanse(req->body, req->len);
    if (!ok)
        return reply(req, c, MHD_HTTP_UNAUTHORIZED, "text/html; "
                     "charset=utf-8", web_login_page);
    resp = make(req, "text/plain", "", 0);
    if (!resp)
        return MHD_NO;
    snprintf(cookie, sizeof(cookie), COOKIE_TOKEN "=");
    for (int i = 0; i < 32; i++)
        snprintf(cookie + strlen(cookie), sizeof(cookie) - strlen(cookie),
                 "%02x", w->token_sha[i]);
    snprintf(cookie + strlen(cookie), sizeof(cookie) - strlen(cookie),
             "; Path=/; Max-Age=31536000; HttpOnly; SameSite=Strict%s",
             w->cfg.origin && strncmp(w->cfg.origin, "https:", 6) == 0 ?
             "; Secure" : "");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_SET_COOKIE, cookie);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, "/");
    ret = MHD_queue_response(c, MHD_HTTP_SEE_OTHER, resp);
    MHD_destroy_response(resp);
    return ret;
}

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
        return reply(req, c, MHD_HTTP_FORBIDDEN, "text/plain",
                     "unknown host name (set origin in the web "
                     "adapter's config)\n");
    req->post = strcmp(method, "POST") == 0;
    req->max = req->post && strcmp(url, "/api/picture") == 0 &&
               w->gcfg ? (size_t)w->gcfg->llm.image_max_bytes : WEB_BODY_MAX;
    if (!get && !req->post)
        return reply(req, c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain",
                     "method not allowed\n");
    if (req->post) {
        if (!origin_allowed(w, MHD_lookup_connection_value(
                c, MHD_HEADER_KIND, "Origin"), host))
            return reply(req, c, MHD_HTTP_FORBIDDEN, "text/plain",
                         "cross-origin request refused\n");
        if (length && strtoull(length, NULL, 10) > req->max)
            return reply(req, c, MHD_HTTP_CONTENT_TOO_LARGE, "text/plain",
                         "request body too large\n");
    }
    /* The login page needs its styles; nothing else goes out without
     * the token. */
    if (strcmp(url, "/login") != 0 && strcmp(url, "/app.css") != 0 &&
        !token_ok(w, c)) {
        if (get && strcmp(url, "/") == 0)
            return reply(req, c, MHD_HTTP_UNAUTHORIZED,
                         "text/html; charset=utf-8", web_login_page);
        return reply_json(req, c, MHD_HTTP_UNAUTHORIZED,
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
            return reply(req, c, MHD_HTTP_CONTENT_TOO_LARGE, "text/plain",
                         "request body too large\n");
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
        return post_send(req, c);
    if (req->post && strcmp(url, "/api/picture") == 0)
        return post_picture(req, c);
    if (req->post && strcmp(url, "/login") == 0)
        return post_login(req, c);
    if (req->post)
        return reply(req, c, MHD_HTTP_NOT_FOUND, "text/plain",
                     "not found\n");
    if (strcmp(url, "/api/history") == 0)
        return get_history(req, c);
    if (strcmp(url, "/api/events") == 0)
        return get_events(req, c);
    a = asset_find(url);
    if (a)
        return reply(req, c, MHD_HTTP_OK, a->type, a->body);
    return reply(req, c, MHD_HTTP_NOT_FOUND, "text/plain", "not found\n");
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
        req_free(req);
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

static int parse_listen(const char *listen, struct sockaddr_in *sa)
{
    const char *colon = strrchr(listen, ':');
    char host[64];
    char *end;
    long port;

    if (!colon || (size_t)(colon - listen) >= sizeof(host))
        return -1;
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end || port < 0 || port > 65535)
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((unsigned short)port);
    if (strcmp(host, "localhost") == 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "127.0.0.1");
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

int web_http_start(struct web *w, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    const union MHD_DaemonInfo *info;

    if (parse_listen(w->cfg.listen, &sa) != 0) {
        snprintf(err, errlen, "web: listen: expected \"ADDRESS:PORT\" with "
                 "an IPv4 address, got \"%s\"", w->cfg.listen);
        return PARLEY_ERR_CONFIG;
    }
    w->daemon = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0,
        NULL, NULL, handle, w,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)w->cfg.max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)w->cfg.max_per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)WEB_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)WEB_CONN_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, completed, w,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, w,
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
