/*
 * Streamed answers on Matrix (adapter.h "stream"): the first sentence of
 * an answer goes out as the reply (m.mentions, reply or thread relation),
 * then m.replace edits show the text so far at most once a
 * MX_EDIT_GAP_MS, backing off when the server rate-limits them, and the
 * final edit carries the whole formatted answer (or the fallback when the
 * stream broke).  Every event goes through the room's send queue
 * (matrix_send.c), so edits are ordered with the person's other answers,
 * retried under the same txnId and encrypted in encrypted rooms.
 *
 * Exactly once across a crash: before the first event is sent,
 * stream:<account>:<txn> is set to "sending" in Redis, then to the first
 * event's id once the server returned it (state_stream.c).  A send of the
 * final text (a resumed job, or the first run) looks there first:
 *   - an event id: the final text goes out as one edit of that event;
 *   - "sending": the first event may or may not exist.  The final text is
 *     PUT under the first event's txnId (the server drops it if the first
 *     went out and returns that event's id), then edited in as well;
 *   - nothing: one ordinary message, as without streaming.
 * txnIds are derived from the router's txn id: the first event's is the
 * one an unstreamed answer would use, edit n's from "<txn>.edit.<n>", the
 * final edit's from "<txn>.final", so every retry is idempotent.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "adapter.h"
#include "log.h"
#include "loop.h"
#include "matrix.h"
#include "matrix_adapter_int.h"
#include "state.h"
#include "status.h"

/* At most one edit this often (the bound; Synapse's default
 * rc_message allows 0.2/s with bursts of 10, so longer answers meet 429s
 * and the gap grows, see MX_EDIT_GAP_MAX_MS). */
#define MX_EDIT_GAP_MS 1000
/* The gap doubles on each 429 up to this. */
#define MX_EDIT_GAP_MAX_MS 16000
/* Without a sentence end, the first event goes out once this much text
 * is there, cut at a space. */
#define MX_FIRST_MAX 280
/* stream:<account>:<txn> lives this long: a job is resumed at the next
 * start or not at all, and Synapse keeps txnIds about a day. */
#define MX_STREAM_TTL_S (24 * 3600)

enum mx_stream_phase {
    ST_LOOKUP = 0,      /* asking Redis what a previous run showed */
    ST_WAIT,            /* nothing shown yet: waiting for a sentence */
    ST_MARKING,         /* writing "sending" before the first event */
    ST_FIRST,           /* the first event is queued or in flight */
    ST_LIVE,            /* first_id known: edits */
    ST_DONE             /* the final went out (or was handed on) */
};

struct mx_stream {
    struct mx_stream *next;
    struct matrix *m;
    char *txn;                  /* the router's txn id */
    char *room;                 /* the router's room */
    char *in_reply_to, *thread_id, *mention;
    enum mx_stream_phase phase;
    int redis_busy;             /* a state_stream call is pending */
    int resend_first;           /* Redis said "sending" */
    int broken;                 /* the first event failed: no more edits */
    char *first_id;
    char *latest;               /* newest text from progress */
    char *shown;                /* text of the last event queued */
    int sends;                  /* our sends queued or in flight */
    int edit_busy;              /* an edit is queued or in flight */
    unsigned n_edits;
    uint64_t next_edit_at;      /* loop_now_ms */
    uint64_t gap_ms;
    struct loop_timer *timer;
    /* The final text, once ops->send gave it. */
    int final_set;
    int final_queued;
    char *final_text;
    int final_notice;
    adapter_send_done_fn *done;
    void *privdata;
};

static void stream_step(struct mx_stream *st);

/* ---- the edit event ----------------------------------------------------- */

/* Cut s (malloc'd) to at most keep bytes on a character boundary and
 * append an ellipsis; returns the new string or NULL. */
static char *cut_utf8(const char *s, size_t keep)
{
    size_t n = strlen(s);
    char *out;

    if (keep >= n)
        return strdup(s);
    while (keep > 0 && ((unsigned char)s[keep] & 0xc0) == 0x80)
        keep--;
    out = malloc(keep + 4);
    if (!out)
        return NULL;
    memcpy(out, s, keep);
    memcpy(out + keep, "\xe2\x80\xa6", 4);     /* U+2026 */
    return out;
}

/* "* " + s, malloc'd. */
static char *starred(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(n + 3);

    if (out) {
        memcpy(out, "* ", 2);
        memcpy(out + 2, s, n + 1);
    }
    return out;
}

/* Replace the string item name of obj by value (taken over). */
static int set_str(cJSON *obj, const char *name, char *value)
{
    cJSON *v;

    if (!value)
        return PARLEY_ERR_OOM;
    v = cJSON_CreateString(value);
    free(value);
    if (!v)
        return PARLEY_ERR_OOM;
    cJSON_DeleteItemFromObjectCaseSensitive(obj, name);
    return cJSON_AddItemToObject(obj, name, v) ? PARLEY_OK : PARLEY_ERR_OOM;
}

/* Printed c into *out when it fits MATRIX_CONTENT_MAX: 1; 0 when too
 * big (*over says by how much), -1 on OOM. */
static int print_fits(cJSON *c, char **out, size_t *over)
{
    char *p = cJSON_PrintUnformatted(c);
    size_t n;

    if (!p)
        return -1;
    n = strlen(p);
    if (n <= MATRIX_CONTENT_MAX) {
        *out = p;
        return 1;
    }
    *over = n - MATRIX_CONTENT_MAX;
    free(p);
    return 0;
}

int matrix_edit_content_build(const struct matrix_out *o, const char *target,
                              char **out)
{
    struct matrix_out n = *o;
    char *nc_json = NULL;
    cJSON *c = NULL, *nc = NULL, *rel, *body, *html, *type;
    size_t over = 0;
    int result, fits, step;

    *out = NULL;
    /* The relation of the original stays (spec: m.relates_to of
     * m.new_content is ignored); its mentions are in m.new_content. */
    n.in_reply_to = NULL;
    n.thread_id = NULL;
    result = matrix_content_build(&n, &nc_json);
    if (result != PARLEY_OK)
        return result;
    nc = cJSON_Parse(nc_json);
    free(nc_json);
    c = cJSON_CreateObject();
    result = PARLEY_ERR_OOM;
    if (!nc || !c)
        goto done;
    body = cJSON_GetObjectItemCaseSensitive(nc, "body");
    html = cJSON_GetObjectItemCaseSensitive(nc, "formatted_body");
    type = cJSON_GetObjectItemCaseSensitive(nc, "msgtype");
    if (!cJSON_IsString(body) || !cJSON_IsString(type))
        goto done;
    /* The fallback for clients without edits, "* " as the spec shows;
     * an empty top-level m.mentions: nobody is pinged again. */
    if (!cJSON_AddStringToObject(c, "msgtype", type->valuestring) ||
        set_str(c, "body", starred(body->valuestring)) != PARLEY_OK)
        goto done;
    if (cJSON_IsString(html) &&
        (!cJSON_AddStringToObject(c, "format", "org.matrix.custom.html") ||
         set_str(c, "formatted_body", starred(html->valuestring)) !=
             PARLEY_OK))
        goto done;
    if (!cJSON_AddObjectToObject(c, "m.mentions"))
        goto done;
    rel = cJSON_AddObjectToObject(c, "m.relates_to");
    if (!rel || !cJSON_AddStringToObject(rel, "rel_type", "m.replace") ||
        !cJSON_AddStringToObject(rel, "event_id", target))
        goto done;
    if (!cJSON_AddItemToObject(c, "m.new_content", nc))
        goto done;
    nc = NULL;
    /* Within one event, as every send: the fallback's HTML goes first,
     * then the fallback is cut, then the new content's HTML, then its
     * body.  Removing k bytes of a string shortens its JSON by k or
     * more, so each cut is made once, by the excess. */
    for (step = 0; step < 5; step++) {
        cJSON *newc = cJSON_GetObjectItemCaseSensitive(c, "m.new_content");
        cJSON *tb;

        fits = print_fits(c, out, &over);
        if (fits != 0) {
            result = fits > 0 ? PARLEY_OK : PARLEY_ERR_OOM;
            goto done;
        }
        if (step == 0) {
            cJSON_DeleteItemFromObjectCaseSensitive(c, "formatted_body");
            cJSON_DeleteItemFromObjectCaseSensitive(c, "format");
        } else if (step == 1 || step == 3) {
            tb = cJSON_GetObjectItemCaseSensitive(step == 1 ? c : newc,
                                                  "body");
            if (!cJSON_IsString(tb))
                break;
            if (set_str(step == 1 ? c : newc, "body",
                        cut_utf8(tb->valuestring,
                                 strlen(tb->valuestring) > over + 8 ?
                                 strlen(tb->valuestring) - over - 8 : 2))
                != PARLEY_OK)
                goto done;
        } else if (step == 2) {
            cJSON_DeleteItemFromObjectCaseSensitive(newc, "formatted_body");
            cJSON_DeleteItemFromObjectCaseSensitive(newc, "format");
        }
    }
    result = PARLEY_ERR_TOO_LARGE;
done:
    cJSON_Delete(nc);
    cJSON_Delete(c);
    return result;
}

/* ---- one stream ------------------------------------------------------- */

static struct mx_stream *stream_find(struct matrix *m, const char *txn)
{
    struct mx_stream *st;

    for (st = m->streams; st; st = st->next)
        if (strcmp(st->txn, txn) == 0)
            return st;
    return NULL;
}

static void stream_free(struct mx_stream *st)
{
    loop_timer_free(st->timer);
    free(st->txn);
    free(st->room);
    free(st->in_reply_to);
    free(st->thread_id);
    free(st->mention);
    free(st->first_id);
    free(st->latest);
    free(st->shown);
    free(st->final_text);
    free(st);
}

/* Unlink and free st once nothing refers to it any more. */
static void stream_release(struct mx_stream *st)
{
    struct mx_stream **pp;

    if (st->phase != ST_DONE || st->sends > 0 || st->redis_busy)
        return;
    for (pp = &st->m->streams; *pp; pp = &(*pp)->next)
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    stream_free(st);
}

static void on_stream_timer(void *privdata)
{
    stream_step(privdata);
}

static int dup_or_null(char **out, const char *s)
{
    *out = NULL;
    if (s && !(*out = strdup(s)))
        return PARLEY_ERR_OOM;
    return PARLEY_OK;
}

static struct mx_stream *stream_new(struct matrix *m, const char *room,
                                    const struct reply *reply)
{
    struct mx_stream *st = calloc(1, sizeof(*st));

    if (!st)
        return NULL;
    st->m = m;
    st->gap_ms = MX_EDIT_GAP_MS;
    st->timer = loop_timer_new(m->loop, on_stream_timer, st);
    if (!st->timer || dup_or_null(&st->txn, reply->txn_id) ||
        dup_or_null(&st->room, room) ||
        dup_or_null(&st->in_reply_to, reply->in_reply_to) ||
        dup_or_null(&st->thread_id, reply->thread_id) ||
        dup_or_null(&st->mention, reply->mention)) {
        stream_free(st);
        return NULL;
    }
    st->next = m->streams;
    m->streams = st;
    return st;
}

/* Hand the final status to the router, once. */
static void stream_finish(struct mx_stream *st, int status)
{
    adapter_send_done_fn *done = st->done;

    st->phase = ST_DONE;
    loop_timer_stop(st->timer);
    if (done) {
        st->done = NULL;
        done(status, st->privdata);
    }
}

static void stream_loaded(int status, const char *value, void *privdata)
{
    struct mx_stream *st = privdata;

    st->redis_busy = 0;
    if (st->phase == ST_LOOKUP) {
        st->phase = ST_WAIT;
        if (status == PARLEY_OK && value && value[0] == '$') {
            st->first_id = strdup(value);
            if (st->first_id)
                st->phase = ST_LIVE;
        } else if (status == PARLEY_OK && value &&
                   strcmp(value, STATE_STREAM_SENDING) == 0) {
            st->resend_first = 1;
        }
    }
    stream_step(st);
    stream_release(st);
}

static void stream_send_done(int status, void *privdata)
{
    struct mx_stream *st = privdata;

    st->sends--;
    st->edit_busy = 0;
    if (st->phase == ST_FIRST && !st->first_id) {
        /* The first event never went out: no edits, and the final text
         * becomes an ordinary message. */
        log_warn("matrix %s: the first part of a streamed answer in %s "
                 "was not sent (%s)", st->m->mc.account, st->room,
                 parley_status_name(status));
        st->broken = 1;
        st->resend_first = 0;
        st->phase = ST_WAIT;
    }
    stream_step(st);
    stream_release(st);
}

static void stream_final_done(int status, void *privdata)
{
    struct mx_stream *st = privdata;

    st->sends--;
    if (status == PARLEY_OK)
        state_stream_forget(st->m->store, st->m->mc.account, st->txn);
    stream_finish(st, status);
    stream_release(st);
}

void mx_stream_sent(struct mx_stream *st, const char *event_id)
{
    if (st->first_id || event_id[0] != '$')
        return;
    st->first_id = strdup(event_id);
    if (!st->first_id)
        return;
    if (st->phase == ST_FIRST)
        st->phase = ST_LIVE;
    state_stream_save(st->m->store, st->m->mc.account, st->txn, event_id,
                      MX_STREAM_TTL_S, NULL, NULL);
}

void mx_stream_limited(struct mx_stream *st, long ms)
{
    uint64_t now = loop_now_ms(st->m->loop);

    st->gap_ms *= 2;
    if (st->gap_ms > MX_EDIT_GAP_MAX_MS)
        st->gap_ms = MX_EDIT_GAP_MAX_MS;
    if (ms > 0 && now + (uint64_t)ms + st->gap_ms > st->next_edit_at)
        st->next_edit_at = now + (uint64_t)ms + st->gap_ms;
}

/* Length of the first sentence of text (terminator included), 0 while
 * there is none: ".", "!" or "?" before white space, or a newline;
 * past MX_FIRST_MAX bytes, up to the last space. */
static size_t first_sentence(const char *text)
{
    size_t i, n = strlen(text), space = 0;

    for (i = 0; i < n; i++) {
        char c = text[i];

        if (c == '\n' && i > 0)
            return i;
        if ((c == '.' || c == '!' || c == '?') && i + 1 < n &&
            (text[i + 1] == ' ' || text[i + 1] == '\n'))
            return i + 1;
        if (c == ' ')
            space = i;
        if (i >= MX_FIRST_MAX && space > 0)
            return space;
    }
    return 0;
}

/* The reply fields of the stream with text. */
static void stream_reply(const struct mx_stream *st, struct reply *r,
                         const char *text, int notice)
{
    memset(r, 0, sizeof(*r));
    r->text = text;
    r->in_reply_to = st->in_reply_to;
    r->thread_id = st->thread_id;
    r->mention = st->mention;
    r->txn_id = st->txn;
    r->notice = notice;
}

/* Queue text as the stream's first event (under the txnId of an
 * unstreamed answer). */
static void stream_send_first(struct mx_stream *st, const char *text,
                              int notice)
{
    struct reply r;
    char *copy = strdup(text);

    if (!copy) {
        st->broken = 1;
        return;
    }
    free(st->shown);
    st->shown = copy;
    stream_reply(st, &r, st->shown, notice);
    st->phase = ST_FIRST;
    log_debug("matrix %s: streaming an answer in %s: first event, %zu "
              "bytes", st->m->mc.account, st->room, strlen(st->shown));
    if (matrix_send_message(st->m, st->room, &r, stream_send_done, st, st,
                            1) == PARLEY_OK) {
        st->sends++;
        st->next_edit_at = loop_now_ms(st->m->loop) + st->gap_ms;
        return;
    }
    st->broken = 1;
    st->phase = ST_WAIT;
}

static void stream_marked(int status, void *privdata)
{
    struct mx_stream *st = privdata;

    st->redis_busy = 0;
    if (status != PARLEY_OK)
        log_debug("matrix %s: streamed answer in %s not marked in Redis "
                  "(%s)", st->m->mc.account, st->room,
                  parley_status_name(status));
    if (st->phase == ST_MARKING) {
        st->phase = ST_WAIT;
        /* With the final text already there, the first sentence still
         * goes first: the final edit follows it (stream_step). */
        if (!st->m->stopped)
            stream_send_first(st, st->shown, 0);
    }
    stream_step(st);
    stream_release(st);
}

/* Write "sending", then send the first event (text copied to shown). */
static void stream_mark_then_send(struct mx_stream *st, const char *text,
                                  size_t len)
{
    char *t = strndup(text, len);

    if (!t)
        return;
    free(st->shown);
    st->shown = t;
    if (st->resend_first) {
        /* Marked by the run before. */
        stream_send_first(st, t, 0);
        return;
    }
    st->phase = ST_MARKING;
    if (state_stream_save(st->m->store, st->m->mc.account, st->txn,
                          STATE_STREAM_SENDING, MX_STREAM_TTL_S,
                          stream_marked, st) == PARLEY_OK) {
        st->redis_busy = 1;
        return;
    }
    /* Redis is down: the job is not durable either; show it anyway. */
    stream_send_first(st, t, 0);
}

/* Queue an edit of the first event to text; seed names its txnId. */
static int stream_send_edit(struct mx_stream *st, const char *text,
                            int notice, const char *seed,
                            adapter_send_done_fn *done)
{
    struct matrix_out o;
    char room_id[MATRIX_ID_MAX + 1];
    const char *thread;
    char *content;
    int result;

    result = matrix_room_split(st->room, room_id, sizeof(room_id), &thread);
    if (result != PARLEY_OK)
        return result;
    memset(&o, 0, sizeof(o));
    o.text = text;
    o.mention = st->mention;
    o.notice = notice;
    result = matrix_edit_content_build(&o, st->first_id, &content);
    if (result != PARLEY_OK)
        return result;
    result = mx_send_content(st->m, room_id, content, seed, st->mention,
                             done, st, st);
    if (result == PARLEY_OK)
        st->sends++;
    return result;
}

/* The final text as a last edit. */
static void stream_send_final_edit(struct mx_stream *st)
{
    char seed[1024];
    int result;

    snprintf(seed, sizeof(seed), "%s.final", st->txn);
    st->final_queued = 1;
    st->edit_busy = 1;
    result = stream_send_edit(st, st->final_text, st->final_notice, seed,
                              stream_final_done);
    if (result != PARLEY_OK) {
        log_error("matrix %s: cannot send the final edit of an answer in "
                  "%s (%s)", st->m->mc.account, st->room,
                  parley_status_name(result));
        stream_finish(st, result);
    }
}

/* The final text when nothing was shown: an ordinary message, handed to
 * the queue with the router's own done. */
static void stream_send_plain(struct mx_stream *st)
{
    struct reply r;
    int result;

    stream_reply(st, &r, st->final_text, st->final_notice);
    st->final_queued = 1;
    result = matrix_send_message(st->m, st->room, &r, st->done,
                                 st->privdata, NULL, 0);
    if (result == PARLEY_OK)
        st->done = NULL;        /* the queue calls it now */
    stream_finish(st, result);
}

/* Move the stream on: first event, edits at the allowed rate, final. */
static void stream_step(struct mx_stream *st)
{
    struct matrix *m = st->m;
    uint64_t now;
    size_t n;

    if (st->phase == ST_DONE)
        return;
    if (m->stopped) {
        if (st->final_set && !st->final_queued)
            stream_finish(st, PARLEY_ERR_STATE);
        return;
    }
    switch (st->phase) {
    case ST_LOOKUP:
    case ST_MARKING:
    case ST_FIRST:
    case ST_DONE:
        return;
    case ST_WAIT:
        if (st->final_set) {
            if (st->resend_first && !st->broken)
                stream_send_first(st, st->final_text, st->final_notice);
            else
                stream_send_plain(st);
            return;
        }
        if (st->broken || !st->latest)
            return;
        n = first_sentence(st->latest);
        if (n > 0)
            stream_mark_then_send(st, st->latest, n);
        return;
    case ST_LIVE:
        break;
    }
    if (st->edit_busy || st->final_queued)
        return;
    if (!st->final_set &&
        (!st->latest || (st->shown && strcmp(st->latest, st->shown) == 0)))
        return;
    /* The final edit keeps to the rate too: a second's wait at most. */
    now = loop_now_ms(m->loop);
    if (now < st->next_edit_at) {
        if (!loop_timer_active(st->timer))
            loop_timer_start(st->timer, st->next_edit_at - now, 0);
        return;
    }
    if (st->final_set) {
        stream_send_final_edit(st);
        return;
    }
    {
        char seed[1024];

        snprintf(seed, sizeof(seed), "%s.edit.%u", st->txn, ++st->n_edits);
        if (stream_send_edit(st, st->latest, 0, seed, stream_send_done) !=
            PARLEY_OK)
            return;
        st->edit_busy = 1;
        free(st->shown);
        st->shown = strdup(st->latest);
        st->next_edit_at = now + st->gap_ms;
    }
}

/* A stream for reply, found or made; its lookup started when new. */
static struct mx_stream *stream_get(struct matrix *m, const char *room,
                                    const struct reply *reply)
{
    struct mx_stream *st = stream_find(m, reply->txn_id);

    if (st)
        return st;
    st = stream_new(m, room, reply);
    if (!st)
        return NULL;
    if (state_stream_load(m->store, m->mc.account, reply->txn_id,
                          stream_loaded, st) == PARLEY_OK)
        st->redis_busy = 1;
    else
        st->phase = ST_WAIT;    /* Redis down: nothing to resume from */
    return st;
}

int matrix_progress(struct adapter *ad, const char *room,
                    const struct reply *reply, const char *so_far)
{
    struct matrix *m = ad->priv;
    struct mx_stream *st;
    char *copy;

    if (m->stopped || m->state == MX_FATAL || !reply->txn_id ||
        reply->notice || !so_far)
        return PARLEY_OK;
    st = stream_get(m, room, reply);
    if (!st)
        return PARLEY_ERR_OOM;
    if (st->final_set)
        return PARLEY_OK;
    copy = strdup(so_far);
    if (!copy)
        return PARLEY_ERR_OOM;
    free(st->latest);
    st->latest = copy;
    stream_step(st);
    return PARLEY_OK;
}

int mx_stream_send(struct matrix *m, const char *room,
                   const struct reply *reply, adapter_send_done_fn *done,
                   void *privdata)
{
    struct mx_stream *st = stream_get(m, room, reply);

    if (!st)
        return PARLEY_ERR_OOM;
    if (st->final_set) {
        snprintf(m->ad.errstr, sizeof(m->ad.errstr), "answer already "
                 "being sent");
        return PARLEY_ERR_STATE;
    }
    st->final_text = strdup(reply->text ? reply->text : "");
    if (!st->final_text) {
        if (st->phase == ST_WAIT && !st->sends && !st->redis_busy)
            st->phase = ST_DONE;
        stream_release(st);
        return PARLEY_ERR_OOM;
    }
    st->final_set = 1;
    st->final_notice = reply->notice;
    st->done = done;
    st->privdata = privdata;
    stream_step(st);
    stream_release(st);
    return PARLEY_OK;
}

void mx_streams_stop(struct matrix *m)
{
    struct mx_stream *st, *next;

    for (st = m->streams; st; st = next) {
        next = st->next;
        loop_timer_free(st->timer);     /* the loop closes after stop */
        st->timer = NULL;
        if (st->final_set && !st->final_queued)
            stream_finish(st, PARLEY_ERR_STATE);
        st->phase = ST_DONE;
        stream_release(st);
    }
}

void mx_streams_free(struct matrix *m)
{
    while (m->streams) {
        struct mx_stream *st = m->streams;

        m->streams = st->next;
        stream_free(st);
    }
}
