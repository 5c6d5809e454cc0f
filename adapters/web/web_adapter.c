/*
 * The web adapter's side facing the router (see web.h): a session per
 * browser, its queue of server-sent events, and the adapter ops that
 * fill it.  Answers become "reply" events, ops->typing "typing" events
 * and ops->progress "progress" events, at most one per WEB_PROGRESS_MS
 * and session (the latest text wins; the final reply supersedes it).
 * Model text goes out as HTML only through matrix_markdown_to_html, the
 * cmark + allowlist path the Matrix adapter uses; service text (notices)
 * goes out as plain text, which the page shows with textContent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "config.h"
#include "dict.h"
#include "event.h"
#include "log.h"
#include "loop.h"
#include "matrix/matrix.h"
#include "random.h"
#include "router.h"
#include "status.h"
#include "web.h"

char *web_render(const char *markdown)
{
    return matrix_markdown_to_html(markdown, strlen(markdown));
}

static void hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void web_sid_room(const char *sid, char *room, size_t len)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char h[2 * EVP_MAX_MD_SIZE + 1];

    if (!EVP_Digest(sid, strlen(sid), md, &mdlen, EVP_sha256(), NULL))
        mdlen = 0;
    hex(md, mdlen, h);
    snprintf(room, len, "b%.*s", WEB_ROOM_LEN - 1, h);
}

/* ---- sessions ----------------------------------------------------------- */

static void session_free(struct web_session *s)
{
    struct web_event *e = s->head;

    while (e) {
        struct web_event *next = e->next;

        free(e);
        e = next;
    }
    if (s->stream)
        s->stream->s = NULL;
    free(s->progress_id);
    free(s->progress_text);
    free(s);
}

struct idlest {
    struct web_session *s;
};

static void find_idlest(const char *key, void *value, void *privdata)
{
    struct web_session *s = value;
    struct idlest *best = privdata;

    (void)key;
    if (!s->stream && (!best->s || s->last_seen < best->s->last_seen))
        best->s = s;
}

static void session_forget(struct web *w, struct web_session *s)
{
    dict_delete(w->sessions, s->room);
    w->n_sessions--;
    session_free(s);
}

struct web_session *web_session_get(struct web *w, const char *room)
{
    struct web_session *s = dict_get(w->sessions, room);

    if (s) {
        s->last_seen = loop_now_ms(w->loop);
        return s;
    }
    if (w->n_sessions >= WEB_SESSIONS_MAX) {
        struct idlest best = { NULL };

        dict_foreach(w->sessions, find_idlest, &best);
        if (!best.s)
            return NULL;
        session_forget(w, best.s);
    }
    s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    snprintf(s->room, sizeof(s->room), "%s", room);
    s->last_seen = loop_now_ms(w->loop);
    if (dict_set(w->sessions, s->room, s) != PARLEY_OK) {
        free(s);
        return NULL;
    }
    w->n_sessions++;
    return s;
}

int web_session_push(struct web *w, struct web_session *s, const char *name,
                     const char *json)
{
    size_t len = strlen(name) + strlen(json) + sizeof("event: \ndata: \n\n");
    struct web_event *e = malloc(sizeof(*e) + len);
    int n;

    if (!e)
        return PARLEY_ERR_OOM;
    /* JSON from cJSON_PrintUnformatted holds no raw newline, so one data
     * line carries it. */
    n = snprintf(e->data, len, "event: %s\ndata: %s\n\n", name, json);
    if (n < 0 || (size_t)n >= len) {
        free(e);
        return PARLEY_ERR_TOO_LARGE;
    }
    e->len = (size_t)n;
    e->next = NULL;
    /* A browser that stays away does not grow the queue without bound:
     * the oldest events go (the history has the answers). */
    while (s->head && s->queued + e->len > WEB_QUEUE_MAX) {
        struct web_event *old = s->head;

        if (s->stream && s->stream->off > 0)
            break;          /* half written: it must finish */
        s->head = old->next;
        if (!s->head)
            s->tail = NULL;
        s->queued -= old->len;
        free(old);
    }
    if (s->tail)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
    s->queued += e->len;
    w->n_events++;
    if (s->stream)
        web_stream_wake(s->stream);
    return PARLEY_OK;
}

void web_session_attach(struct web *w, struct web_session *s,
                        struct web_stream *st)
{
    struct web_stream *old = s->stream;

    (void)w;
    if (old) {
        /* One stream per browser session: the older tab's ends. */
        old->s = NULL;
        web_stream_wake(old);
    }
    s->stream = st;
    st->s = s;
    st->off = 0;
}

void web_session_detach(struct web_stream *st)
{
    if (st->s && st->s->stream == st) {
        /* Half an event is lost with the connection; the browser's next
         * stream starts at an event boundary. */
        if (st->off > 0 && st->s->head) {
            struct web_event *e = st->s->head;

            st->s->head = e->next;
            if (!st->s->head)
                st->s->tail = NULL;
            st->s->queued -= e->len;
            free(e);
        }
        st->s->stream = NULL;
    }
    st->s = NULL;
}

/* ---- events ------------------------------------------------------------- */

/* {"id": ..., "html"|"text": ..., "notice": ...} as an SSE event. */
static int push_text(struct web *w, struct web_session *s, const char *name,
                     const char *id, const char *text, int notice)
{
    cJSON *o = cJSON_CreateObject();
    char *json = NULL, *html = NULL;
    int result = PARLEY_ERR_OOM;

    if (!o)
        return PARLEY_ERR_OOM;
    if (id && !cJSON_AddStringToObject(o, "id", id))
        goto out;
    if (notice) {
        if (!cJSON_AddStringToObject(o, "text", text))
            goto out;
    } else {
        html = web_render(text);
        if (!html || !cJSON_AddStringToObject(o, "html", html))
            goto out;
    }
    if (!cJSON_AddBoolToObject(o, "notice", notice))
        goto out;
    json = cJSON_PrintUnformatted(o);
    if (json)
        result = web_session_push(w, s, name, json);
out:
    free(json);
    free(html);
    cJSON_Delete(o);
    return result;
}

static void progress_flush(struct web *w, struct web_session *s)
{
    if (!s->progress_dirty)
        return;
    s->progress_dirty = 0;
    s->progress_at = loop_now_ms(w->loop);
    if (push_text(w, s, "progress", s->progress_id, s->progress_text, 0) !=
        PARLEY_OK)
        log_debug("web: progress for %s not queued", s->room);
}

struct due {
    struct web *w;
    uint64_t next;          /* earliest later due time, 0 none */
};

static void flush_due(const char *key, void *value, void *privdata)
{
    struct web_session *s = value;
    struct due *d = privdata;
    uint64_t at = s->progress_at + WEB_PROGRESS_MS;

    (void)key;
    if (!s->progress_dirty)
        return;
    if (at <= loop_now_ms(d->w->loop))
        progress_flush(d->w, s);
    else if (!d->next || at < d->next)
        d->next = at;
}

static void on_progress_timer(void *privdata)
{
    struct web *w = privdata;
    struct due d = { w, 0 };

    dict_foreach(w->sessions, flush_due, &d);
    if (d.next)
        loop_timer_start(w->progress_timer, d.next - loop_now_ms(w->loop),
                         0);
}

static int web_progress(struct adapter *ad, const char *room,
                        const struct reply *reply, const char *so_far)
{
    struct web *w = (struct web *)ad;
    struct web_session *s;
    char *id = NULL, *text;

    if (w->stopped)
        return PARLEY_ERR_STATE;
    s = web_session_get(w, room);
    if (!s)
        return PARLEY_ERR_OOM;
    text = strdup(so_far);
    if (text && reply->in_reply_to)
        id = strdup(reply->in_reply_to);
    if (!text || (reply->in_reply_to && !id)) {
        free(text);
        return PARLEY_ERR_OOM;
    }
    free(s->progress_text);
    free(s->progress_id);
    s->progress_text = text;
    s->progress_id = id;
    s->progress_dirty = 1;
    if (loop_now_ms(w->loop) >= s->progress_at + WEB_PROGRESS_MS)
        progress_flush(w, s);
    else if (!loop_timer_active(w->progress_timer))
        loop_timer_start(w->progress_timer, s->progress_at +
                         WEB_PROGRESS_MS - loop_now_ms(w->loop), 0);
    return PARLEY_OK;
}

/* The final form of an answer: any held-back progress for it is dropped,
 * the page replaces what it showed with this. */
static int web_send(struct adapter *ad, const char *room,
                    const struct reply *reply, adapter_send_done_fn *done,
                    void *privdata)
{
    struct web *w = (struct web *)ad;
    struct web_session *s;
    int result;

    if (w->stopped) {
        snprintf(ad->errstr, sizeof(ad->errstr), "web: stopped");
        return PARLEY_ERR_STATE;
    }
    s = web_session_get(w, room);
    if (!s)
        return PARLEY_ERR_OOM;
    if (s->progress_dirty && (!reply->in_reply_to || !s->progress_id ||
                              strcmp(reply->in_reply_to,
                                     s->progress_id) == 0))
        s->progress_dirty = 0;
    result = push_text(w, s, "reply", reply->in_reply_to,
                       reply->text ? reply->text : "", reply->notice);
    if (result != PARLEY_OK) {
        snprintf(ad->errstr, sizeof(ad->errstr), "web: %s",
                 parley_status_name(result));
        return result;
    }
    /* Queued is as far as a browser that may be away can take it. */
    done(PARLEY_OK, privdata);
    return PARLEY_OK;
}

static void web_typing(struct adapter *ad, const char *room, int on)
{
    struct web *w = (struct web *)ad;
    struct web_session *s;

    if (w->stopped)
        return;
    s = web_session_get(w, room);
    if (s)
        web_session_push(w, s, "typing", on ? "{\"on\":true}" :
                         "{\"on\":false}");
}

int web_submit(struct web *w, const char *room, const char *text,
               const struct event_attachment *att, char *event_id,
               size_t idlen)
{
    unsigned char rnd[12];
    char h[sizeof(rnd) * 2 + 1];
    struct event ev;

    if (!w->ad.router || w->stopped)
        return PARLEY_ERR_STATE;
    if (random_bytes(rnd, sizeof(rnd)) != PARLEY_OK)
        return PARLEY_ERR_IO;
    hex(rnd, sizeof(rnd), h);
    snprintf(event_id, idlen, "web-%s", h);
    memset(&ev, 0, sizeof(ev));
    ev.kind = EVENT_MESSAGE;
    ev.platform = "web";
    ev.account = w->ad.account;
    ev.room = room;
    ev.sender = room;
    ev.sender_name = w->cfg.user_name;
    ev.text = text;
    ev.event_id = event_id;
    ev.attachment = att;
    /* A browser is a private conversation with the bot. */
    ev.addressed = 1;
    /* Each browser is alone in its room, so it runs that room: the
     * model picker (!model) and its own instructions are its to set. */
    ev.is_admin = 1;
    router_submit(w->ad.router, &ev);
    return PARLEY_OK;
}

/* ---- life cycle ------------------------------------------------------- */

static void ping_one(const char *key, void *value, void *privdata)
{
    struct web_session *s = value;
    struct web *w = privdata;

    (void)key;
    if (s->stream && !s->head)
        web_session_push(w, s, "ping", "{}");
}

/* Sessions forgotten per ping tick, at most (the rest wait a tick). */
#define WEB_FORGET_PER_TICK 64

struct idle_list {
    uint64_t now;
    struct web_session *s[WEB_FORGET_PER_TICK];
    size_t n;
};

static void collect_idle(const char *key, void *value, void *privdata)
{
    struct web_session *s = value;
    struct idle_list *l = privdata;

    (void)key;
    if (!s->stream && !s->progress_dirty && l->n < WEB_FORGET_PER_TICK &&
        l->now - s->last_seen >= WEB_SESSION_IDLE_MS)
        l->s[l->n++] = s;
}

static void on_ping_timer(void *privdata)
{
    struct web *w = privdata;
    struct idle_list l;

    dict_foreach(w->sessions, ping_one, w);
    /* Forget sessions whose browser has been away long (collected first:
     * the dict must not change under dict_foreach). */
    l.now = loop_now_ms(w->loop);
    l.n = 0;
    dict_foreach(w->sessions, collect_idle, &l);
    for (size_t i = 0; i < l.n; i++)
        session_forget(w, l.s[i]);
}

static int web_start(struct adapter *ad)
{
    struct web *w = (struct web *)ad;

    const char *colon = strrchr(w->cfg.listen, ':');
    char err[256];
    int result;

    if (w->running)
        return PARLEY_OK;
    /* Handles are made here, not in create: --check-config creates
     * adapters without running the loop. */
    w->progress_timer = loop_timer_new(w->loop, on_progress_timer, w);
    w->ping_timer = loop_timer_new(w->loop, on_ping_timer, w);
    w->running = 1;
    if (!w->progress_timer || !w->ping_timer) {
        snprintf(ad->errstr, sizeof(ad->errstr), "web: out of memory");
        return PARLEY_ERR_OOM;
    }
    result = web_http_start(w, err, sizeof(err));
    if (result != PARLEY_OK) {
        snprintf(ad->errstr, sizeof(ad->errstr), "%.120s", err);
        log_error("%s", err);
        return result;
    }
    loop_timer_start(w->ping_timer, WEB_PING_MS, WEB_PING_MS);
    ad->connected = 1;
    log_info("web: chat on http://%.*s:%d/", colon && colon > w->cfg.listen ?
             (int)(colon - w->cfg.listen) : 9,
             colon && colon > w->cfg.listen ? w->cfg.listen : "127.0.0.1",
             w->port);
    return PARLEY_OK;
}

static void web_stop(struct adapter *ad)
{
    struct web *w = (struct web *)ad;

    if (w->stopped)
        return;
    w->stopped = 1;
    ad->connected = 0;
    if (!w->running)
        return;
    web_http_stop(w);
    loop_timer_free(w->progress_timer);
    loop_timer_free(w->ping_timer);
    w->progress_timer = NULL;
    w->ping_timer = NULL;
}

static void free_session(const char *key, void *value, void *privdata)
{
    (void)key;
    (void)privdata;
    session_free(value);
}

static void web_free(struct adapter *ad)
{
    struct web *w = (struct web *)ad;

    if (!w)
        return;
    if (w->sessions) {
        dict_foreach(w->sessions, free_session, NULL);
        dict_free(w->sessions);
    }
    web_config_free(&w->cfg);
    OPENSSL_cleanse(w->token_sha, sizeof(w->token_sha));
    free(ad->account);
    free(w);
}

static const struct adapter_ops web_ops = {
    .type = "web",
    .start = web_start,
    .send = web_send,
    .typing = web_typing,
    .progress = web_progress,
    .stop = web_stop,
    .free = web_free,
};

/* The access token: only its SHA-256 is kept (the cookie carries it). */
static int read_token(struct web *w, char *err, size_t errlen)
{
    char *token = NULL;
    int result;

    if (!w->cfg.token_env)
        return PARLEY_OK;
    result = config_secret_read(w->cfg.token_env, &token, err, errlen);
    if (result != PARLEY_OK)
        return result;
    if (!token || !token[0]) {
        free(token);
        snprintf(err, errlen, "web: token_env: neither %s nor %s_FILE is "
                 "set (remove token_env to serve without a token)",
                 w->cfg.token_env, w->cfg.token_env);
        return PARLEY_ERR_CONFIG;
    }
    log_add_secret(token);
    EVP_Digest(token, strlen(token), w->token_sha, NULL, EVP_sha256(),
               NULL);
    OPENSSL_cleanse(token, strlen(token));
    free(token);
    w->has_token = 1;
    return PARLEY_OK;
}

int web_adapter_create(struct adapter **out, const struct adapter_env *env,
                       void *setting, char *err, size_t errlen)
{
    struct web *w;
    int result;

    *out = NULL;
    w = calloc(1, sizeof(*w));
    if (!w) {
        snprintf(err, errlen, "web: out of memory");
        return PARLEY_ERR_OOM;
    }
    result = web_config_parse(&w->cfg, setting, err, errlen);
    if (result == PARLEY_OK)
        result = read_token(w, err, errlen);
    if (result == PARLEY_OK) {
        w->sessions = dict_create();
        w->ad.account = strdup(w->cfg.name);
        if (!w->sessions || !w->ad.account) {
            snprintf(err, errlen, "web: out of memory");
            result = PARLEY_ERR_OOM;
        }
    }
    if (result != PARLEY_OK) {
        web_free(&w->ad);
        return result;
    }
    w->ad.ops = &web_ops;
    w->ad.loop = env->loop;
    w->ad.priv = w;
    w->ad.stream = 1;           /* the page shows answers as written */
    w->gcfg = env->cfg;
    w->store = env->store;
    w->loop = env->loop;
    *out = &w->ad;
    return PARLEY_OK;
}

static int web_validate(const void *setting, char *err, size_t errlen)
{
    struct web_config wc;
    int result = web_config_parse(&wc, setting, err, errlen);

    web_config_free(&wc);
    return result;
}

const struct adapter_desc web_adapter_desc = {
    .name = "web",
    .validate = web_validate,
    .create = web_adapter_create,
    .caps = ADAPTER_CAP_STREAM,
};
