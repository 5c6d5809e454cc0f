/*
 * The web adapter's routes that do more than hand out a page (see
 * web_http.c for the checks every request passes first and for dispatch):
 *
 *   GET  /api/history   the room's history, read from Redis while the
 *                       request is suspended
 *   GET  /api/events    the session's event stream (server-sent events),
 *                       suspended while there is nothing to send
 *   POST /api/send, POST /api/picture   a message to the router
 *   POST /login         the access token -> its cookie
 */
#include <ctype.h>
#include <errno.h>
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
#include "event.h"
#include "image.h"
#include "loop.h"
#include "matrix/matrix.h"
#include "router.h"
#include "state.h"
#include "status.h"
#include "web.h"
#include "web_http_private.h"

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
        web_req_free(req);
        return;
    }
    json = history_json(req, h);
    req->ready_code = json ? MHD_HTTP_OK : MHD_HTTP_INTERNAL_SERVER_ERROR;
    req->ready = web_http_make(req, "application/json", json ? json : "{}",
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

enum MHD_Result web_api_history(struct web_req *req,
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

enum MHD_Result web_api_events(struct web_req *req,
                               struct MHD_Connection *c)
{
    struct web *w = req->w;
    struct web_session *s = web_session_get(w, req->room);
    struct web_stream *st;
    struct MHD_Response *resp;
    enum MHD_Result ret;

    if (!s)
        return web_http_reply_json(req, c, MHD_HTTP_SERVICE_UNAVAILABLE,
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
    web_http_headers(req, resp);
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

enum MHD_Result web_api_send(struct web_req *req,
                             struct MHD_Connection *c)
{
    cJSON *o = cJSON_ParseWithLength(req->body ? req->body : "", req->len);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "text");
    char id[64], json[128], *text;
    size_t i;
    int result;

    if (!cJSON_IsString(t) || !t->valuestring) {
        cJSON_Delete(o);
        return web_http_reply_json(
            req, c, MHD_HTTP_BAD_REQUEST,
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
        return web_http_reply_json(req, c, MHD_HTTP_BAD_REQUEST,
                                   "{\"error\":\"empty message\"}");
    }
    result = web_submit(req->w, req->room, text, NULL, id, sizeof(id));
    free(text);
    if (result != PARLEY_OK)
        return web_http_reply_json(req, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                   "{\"error\":\"not accepting messages\"}");
    snprintf(json, sizeof(json), "{\"id\":\"%s\"}", id);
    return web_http_reply_json(req, c, MHD_HTTP_ACCEPTED, json);
}

/* The picture's bytes are the body; its name and the caption come in the
 * query.  The type is read from the bytes (image.h): a browser's
 * Content-Type is the file name's guess. */
enum MHD_Result web_api_picture(struct web_req *req,
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
        return web_http_reply_json(req, c, MHD_HTTP_BAD_REQUEST,
                                   "{\"error\":\"no picture\"}");
    memset(&att, 0, sizeof(att));
    att.mime = image_sniff_mime((const unsigned char *)req->body, req->len);
    if (!att.mime)
        return web_http_reply_json(req, c, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
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
        return web_http_reply_json(req, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                   "{\"error\":\"not accepting messages\"}");
    snprintf(json, sizeof(json), "{\"id\":\"%s\"}", id);
    return web_http_reply_json(req, c, MHD_HTTP_ACCEPTED, json);
}

enum MHD_Result web_api_login(struct web_req *req,
                              struct MHD_Connection *c)
{
    struct web *w = req->w;
    unsigned char md[32];
    char cookie[160], *token;
    struct MHD_Response *resp;
    enum MHD_Result ret;
    int ok;

    if (!w->has_token)
        return web_http_reply(req, c, MHD_HTTP_NOT_FOUND, "text/plain",
                              "no token is configured\n");
    if (!req->body || req->len < 6 || strncmp(req->body, "token=", 6) != 0)
        return web_http_reply(req, c, MHD_HTTP_BAD_REQUEST, "text/plain",
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
        return web_http_reply(req, c, MHD_HTTP_UNAUTHORIZED, "text/html; "
                              "charset=utf-8", web_login_page);
    resp = web_http_make(req, "text/plain", "", 0);
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
