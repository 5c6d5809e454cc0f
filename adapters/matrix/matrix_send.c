/*
 * The Matrix adapter's sending: a FIFO per room with up to
 * MX_SEND_PARALLEL in flight, order kept per person; encrypted rooms send
 * their head alone, encrypted once.  429 waits retry_after_ms or
 * Retry-After, 5xx and network errors back off with jitter, 413 sends a
 * short notice instead, other 4xx give up (logged, done gets an error).
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "adapter.h"
#include "backoff.h"
#include "config.h"
#include "event.h"
#include "lease.h"
#include "log.h"
#include "loop.h"
#include "matrix.h"
#include "matrix_adapter_int.h"
#include "matrix_e2ee.h"
#include "matrix_poison.h"
#include "metrics.h"
#include "random.h"
#include "router.h"
#include "state.h"
#include "status.h"
#include "store.h"

static void room_kick(struct mx_room *r);

/* ---- sending ----------------------------------------------------------- */

void mx_send_free(struct mx_send *s)
{
    free(s->who);
    free(s->content);
    free(s->enc_content);
    free(s->too_large);
    free(s);
}

void mx_on_send_timer(void *privdata)
{
    struct matrix *m = privdata;
    uint64_t now = loop_now_ms(m->loop), next = 0;
    struct mx_room *r;

    for (r = m->rooms; r; r = r->next) {
        if (!r->retry_at)
            continue;
        if (r->retry_at <= now) {
            r->retry_at = 0;
            room_kick(r);
        }
    }
    for (r = m->rooms; r; r = r->next)
        if (r->retry_at && (!next || r->retry_at < next))
            next = r->retry_at;
    if (next && m->timers_open && !m->stopped)
        loop_timer_start(m->send_timer, next > now ? next - now : 1, 0);
}

static void room_retry(struct mx_room *r, uint64_t delay)
{
    struct matrix *m = r->m;
    uint64_t now = loop_now_ms(m->loop);

    r->retry_at = now + delay;
    if (!m->timers_open || m->stopped)
        return;
    if (!loop_timer_active(m->send_timer) ||
        delay < loop_timer_due_in(m->send_timer))
        loop_timer_start(m->send_timer, delay, 0);
}

/* Take s (not in flight) off its room's queue, report status, free it.
 * done may send again: s is unlinked first. */
void mx_send_finish(struct mx_room *r, struct mx_send *s, int status)
{
    struct mx_send **pp = &r->head, *prev = NULL;

    while (*pp && *pp != s) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp) {
        *pp = s->next;
        if (r->tail == s)
            r->tail = prev;
    }
    s->done(status, s->privdata);
    mx_send_free(s);
}

static void send_done(const struct http_response *resp, void *priv)
{
    struct mx_send *s = priv;
    struct mx_room *r = s->room;
    struct matrix *m = r->m;
    char code[64];
    long ra = -1;

    s->req = NULL;
    r->in_flight--;
    if (resp->status == PARLEY_OK && resp->code == 200) {
        cJSON *c = cJSON_ParseWithLength(resp->body, resp->body_len);
        const cJSON *id = c ? cJSON_GetObjectItemCaseSensitive(c, "event_id")
                            : NULL;

        if (cJSON_IsString(id) && id->valuestring) {
            mx_ring_add(m->mine, &m->mine_pos, id->valuestring);
            if (s->stream && s->first)
                mx_stream_sent(s->stream, id->valuestring);
        }
        cJSON_Delete(c);
        mx_send_finish(r, s, PARLEY_OK);
        room_kick(r);
        return;
    }
    if (resp->status == PARLEY_OK)
        matrix_parse_error(resp->body, resp->body_len, code, sizeof(code),
                           &ra);
    else
        code[0] = '\0';
    if (mx_is_bad_token(resp)) {
        m->token_bad = 1;
        if (m->state == MX_SYNC && m->ctl_req) {
            /* The long poll would only find out in 30 s. */
            loop_http_cancel(m->ctl_req);
            m->ctl_req = NULL;
            mx_ctl_token_refused(m);
        }
        room_retry(r, mx_backoff(m, 0));
        return;
    }
    if (resp->status == PARLEY_OK &&
        (resp->code == 413 || strcmp(code, "M_TOO_LARGE") == 0)) {
        /* Final: the same event is refused on every resend, so a restart
         * must not try it again.  Say so in the room instead, under a txn
         * of its own (the server never took the refused one), and report
         * success so the job is marked done. */
        char seed[MATRIX_TXN_MAX + 16];

        snprintf(seed, sizeof(seed), "%s.too-large", s->txn);
        if (s->too_large && matrix_txn_id(seed, s->txn,
                                          sizeof(s->txn)) == PARLEY_OK) {
            log_error("matrix %s: an answer in %s is too large for the "
                      "server (HTTP %ld %s): sending a short notice "
                      "instead", m->mc.account, r->room_id, resp->code,
                      code);
            free(s->content);
            s->content = s->too_large;
            free(s->enc_content);
            s->enc_content = NULL;
            s->too_large = NULL;
            s->attempts = 0;
            room_kick(r);
            return;
        }
        log_error("matrix %s: giving up on an answer in %s (txn %s): too "
                  "large even as a notice (HTTP %ld %s)", m->mc.account,
                  r->room_id, s->txn, resp->code, code);
        mx_send_finish(r, s, PARLEY_ERR_TOO_LARGE);
        room_kick(r);
        return;
    }
    if (resp->status == PARLEY_OK && resp->code == 429) {
        if (ra < 0)
            ra = resp->retry_after_ms;
        if (ra < 0)
            ra = (long)mx_backoff(m, s->attempts);
        log_info("matrix %s: rate limited in %s, retrying txn %s in %ld ms",
                 m->mc.account, r->room_id, s->txn, ra);
        if (s->stream)
            mx_stream_limited(s->stream, ra);
        room_retry(r, (uint64_t)ra);
        return;
    }
    if (resp->status != PARLEY_OK || resp->code >= 500) {
        if (++s->attempts < MX_SEND_MAX_ATTEMPTS) {
            uint64_t d = mx_backoff(m, s->attempts - 1);

            log_warn("matrix %s: send to %s failed (%s, HTTP %ld), retrying "
                     "txn %s in %llu ms", m->mc.account, r->room_id,
                     parley_status_name(resp->status), resp->code, s->txn,
                     (unsigned long long)d);
            room_retry(r, d);
            return;
        }
    }
    log_error("matrix %s: giving up on an answer in %s (txn %s): %s, "
              "HTTP %ld %s", m->mc.account, r->room_id, s->txn,
              parley_status_name(resp->status), resp->code, code);
    mx_send_finish(r, s, PARLEY_ERR_HTTP);
    room_kick(r);
}

static void send_done(const struct http_response *resp, void *priv);

/*
 * The m.room.encrypted content enc with the m.relates_to of the plaintext
 * content copied into its cleartext part: the spec wants relations
 * (replies, threads, edits) readable by the server, which aggregates
 * edits and threads by them ("Editing encrypted events").  A new string,
 * or NULL on OOM; enc itself when the plaintext has no relation is also
 * returned as a copy.
 */
static char *enc_with_relation(const char *plain, const char *enc)
{
    cJSON *p = cJSON_Parse(plain), *e = NULL, *rel;
    char *out = NULL;

    rel = p ? cJSON_GetObjectItemCaseSensitive(p, "m.relates_to") : NULL;
    if (!cJSON_IsObject(rel)) {
        cJSON_Delete(p);
        return strdup(enc);
    }
    e = cJSON_Parse(enc);
    if (e && cJSON_IsObject(e) &&
        !cJSON_GetObjectItemCaseSensitive(e, "m.relates_to")) {
        cJSON_DetachItemViaPointer(p, rel);
        if (cJSON_AddItemToObject(e, "m.relates_to", rel))
            out = cJSON_PrintUnformatted(e);
        else
            cJSON_Delete(rel);
    } else if (e) {
        out = strdup(enc);
    }
    cJSON_Delete(p);
    cJSON_Delete(e);
    return out;
}

static void head_encrypted(int status, const char *content, void *priv)
{
    struct mx_send *s = priv;
    struct mx_room *r = s->room;
    struct matrix *m = r->m;

    r->encrypting = 0;
    if (!status) {
        s->enc_content = enc_with_relation(s->content, content);
        if (s->enc_content) {
            room_kick(r);
            return;
        }
    }
    if (++s->attempts >= MX_SEND_MAX_ATTEMPTS) {
        log_error("matrix %s: giving up on an answer in %s (txn %s): "
                  "cannot encrypt it", m->mc.account, r->room_id, s->txn);
        mx_send_finish(r, s, PARLEY_ERR_OTHER);
        room_kick(r);
        return;
    }
    room_retry(r, mx_backoff(m, s->attempts - 1));
}

/*
 * An encrypted room sends one message at a time, the head: encrypted once
 * (matrix_e2ee shares the room's session first), then PUT as
 * m.room.encrypted under the same txnId on every retry.  Returns 1.
 */
static int room_send_encrypted(struct mx_room *r)
{
    struct matrix *m = r->m;
    struct mx_send *s = r->head;
    char rid[3 * MATRIX_ID_MAX + 1], path[MX_URL_MAX];
    int result;

    if (!s || s->req || r->encrypting || r->in_flight)
        return 1;
    if (!s->enc_content) {
        result = matrix_e2ee_encrypt(m->e2ee, r->room_id, s->content,
                                     head_encrypted, s);
        if (result == PARLEY_OK)
            r->encrypting = 1;
        else
            room_retry(r, result == PARLEY_ERR_STATE ? 200 :
                       mx_backoff(m, s->attempts++));
        return 1;
    }
    if (matrix_url_escape(r->room_id, rid, sizeof(rid)) != PARLEY_OK ||
        snprintf(path, sizeof(path), "/rooms/%s/send/m.room.encrypted/%s",
                 rid, s->txn) >= (int)sizeof(path)) {
        mx_send_finish(r, s, PARLEY_ERR_TOO_LARGE);
        return 1;
    }
    if (mx_http(m, "PUT", path, s->enc_content, 1, MX_REQUEST_TIMEOUT_MS,
                64 * 1024, send_done, s, &s->req) != PARLEY_OK) {
        s->req = NULL;
        room_retry(r, mx_backoff(m, s->attempts++));
        return 1;
    }
    r->in_flight++;
    return 1;
}

/* Whether the room is encrypted, asked once per room and start: the sync
 * says so only for rooms with news since the last token. */
static void enc_state_done(const struct http_response *resp, void *priv)
{
    struct mx_room *r = priv;
    struct matrix *m = r->m;

    r->enc_req = NULL;
    if (resp->status == PARLEY_OK && resp->code == 200) {
        r->encrypted = 1;
    } else if (resp->status == PARLEY_OK && resp->code == 404) {
        if (r->encrypted < 0)
            r->encrypted = 0;
    } else {
        /* Not knowing is not a reason to send in plaintext: ask again. */
        room_retry(r, mx_backoff(m, r->enc_attempts++));
        return;
    }
    room_kick(r);
}

/*
 * 0 when the room's queue may be sent as it is; 1 when the room waits
 * (its encryption is being looked up) or its queue was refused: an
 * encrypted room gets nothing in plaintext.
 */
static int room_encryption_gate(struct mx_room *r)
{
    struct matrix *m = r->m;
    struct mx_send *s, *next;
    char rid[3 * MATRIX_ID_MAX + 1], path[MX_URL_MAX];

    if (r->encrypted == 0)
        return 0;
    if (r->enc_req)
        return 1;
    if (r->encrypted < 0) {
        if (matrix_url_escape(r->room_id, rid, sizeof(rid)) != PARLEY_OK ||
            snprintf(path, sizeof(path), "/rooms/%s/state/m.room.encryption/",
                     rid) >= (int)sizeof(path) ||
            mx_http(m, "GET", path, NULL, 1, MX_REQUEST_TIMEOUT_MS,
                    64 * 1024, enc_state_done, r, &r->enc_req) != PARLEY_OK) {
            r->enc_req = NULL;
            room_retry(r, mx_backoff(m, r->enc_attempts++));
        }
        return 1;
    }
    if (matrix_e2ee_ready(m->e2ee))
        return room_send_encrypted(r);
    if (!r->encrypted_logged) {
        r->encrypted_logged = 1;
        log_warn("matrix %s: %s is encrypted; end-to-end encryption is off "
                 "(crypto_key_env): the bot stays silent there",
                 m->mc.account, r->room_id);
    }
    /* Sends in flight went out while the room looked plain. */
    for (s = r->head; s; s = next) {
        next = s->next;
        if (!s->req)
            mx_send_finish(r, s, PARLEY_ERR_STATE);
    }
    return 1;
}


/* Whether a send to the same person as s is ahead of s in the queue. */
static int send_person_ahead(const struct mx_room *r,
                             const struct mx_send *s)
{
    for (const struct mx_send *p = r->head; p && p != s; p = p->next)
        if (p->who && strcmp(p->who, s->who) == 0)
            return 1;
    return 0;
}

/* Start queued sends of the room, oldest first, up to MX_SEND_PARALLEL
 * in flight, unless the room waits for a retry; order per person as
 * MX_SEND_PARALLEL says. */
static void room_kick(struct mx_room *r)
{
    struct matrix *m = r->m;
    struct mx_send *s, *next;
    char rid[3 * MATRIX_ID_MAX + 1], path[MX_URL_MAX];

    if (!r->head || r->retry_at || m->stopped)
        return;
    /* Another instance may hold the account now: send nothing (its
     * lease says so before Redis lets anyone take over). */
    if (!lease_may_send(m->ad.lease))
        return;
    if (m->state == MX_FATAL) {
        /* No way to send any more (see the fatal log line): the router
         * learns it now rather than waiting forever.  Sends in flight
         * finish through send_done. */
        for (s = r->head; s; s = next) {
            next = s->next;
            if (!s->req)
                mx_send_finish(r, s, PARLEY_ERR_STATE);
        }
        return;
    }
    if (!m->token_ok) {
        room_retry(r, 500);     /* logging in: look again soon */
        return;
    }
    if (room_encryption_gate(r))
        return;
    if (matrix_url_escape(r->room_id, rid, sizeof(rid)) != PARLEY_OK)
        rid[0] = '\0';
    /* done callbacks (mx_send_finish) may queue more at the tail: next is
     * read before, and what a nested kick started has its req set. */
    for (s = r->head; s && r->in_flight < MX_SEND_PARALLEL && !r->retry_at;
         s = next) {
        next = s->next;
        if (!s->who && (s->req || s != r->head))
            break;              /* a send to nobody: a barrier */
        if (s->req || send_person_ahead(r, s))
            continue;
        if (!rid[0] ||
            snprintf(path, sizeof(path), "/rooms/%s/send/m.room.message/%s",
                     rid, s->txn) >= (int)sizeof(path)) {
            mx_send_finish(r, s, PARLEY_ERR_TOO_LARGE);
            continue;
        }
        if (mx_http(m, "PUT", path, s->content, 1, MX_REQUEST_TIMEOUT_MS,
                    64 * 1024, send_done, s, &s->req) != PARLEY_OK) {
            s->req = NULL;
            room_retry(r, mx_backoff(m, s->attempts++));
            return;
        }
        r->in_flight++;
        if (!s->who)
            break;              /* nothing passes a barrier in flight */
    }
}

/* Append s to its room's queue and start what may go. */
static void send_push(struct mx_room *r, struct mx_send *s)
{
    if (r->tail)
        r->tail->next = s;
    else
        r->head = s;
    r->tail = s;
    room_kick(r);
}

int mx_send_content(struct matrix *m, const char *room_id, char *content,
                    const char *seed, const char *who,
                    adapter_send_done_fn *done, void *privdata,
                    struct mx_stream *stream)
{
    struct mx_room *r = mx_room_get(m, room_id, 1);
    struct mx_send *s = calloc(1, sizeof(*s));

    if (!r || !s || !content) {
        free(s);
        free(content);
        return PARLEY_ERR_OOM;
    }
    s->content = content;
    if (matrix_txn_id(seed, s->txn, sizeof(s->txn)) != PARLEY_OK) {
        mx_send_free(s);
        return PARLEY_ERR_OTHER;
    }
    if (who && !(s->who = strdup(who))) {
        mx_send_free(s);
        return PARLEY_ERR_OOM;
    }
    s->done = done;
    s->privdata = privdata;
    s->room = r;
    s->stream = stream;
    send_push(r, s);
    return PARLEY_OK;
}

int matrix_send(struct adapter *ad, const char *room,
                const struct reply *reply, adapter_send_done_fn *done,
                void *privdata)
{
    struct matrix *m = ad->priv;

    if (m->stopped || m->state == MX_FATAL) {
        snprintf(ad->errstr, sizeof(ad->errstr), "matrix adapter stopped");
        return PARLEY_ERR_STATE;
    }
    /* A streamed answer ends as an edit of what was shown; with streaming
     * on, every answer with a txn id asks whether a previous run showed
     * part of it (matrix_stream.c). */
    if (ad->stream && reply->txn_id)
        return mx_stream_send(m, room, reply, done, privdata);
    return matrix_send_message(m, room, reply, done, privdata, NULL, 0);
}

int matrix_send_message(struct matrix *m, const char *room,
                        const struct reply *reply,
                        adapter_send_done_fn *done, void *privdata,
                        struct mx_stream *stream, int first)
{
    struct adapter *ad = &m->ad;
    char room_id[MATRIX_ID_MAX + 1], seed[1024];
    const char *thread = NULL;
    struct matrix_out o;
    struct mx_send *s;
    struct mx_room *r;
    int result;

    if (m->stopped || m->state == MX_FATAL) {
        snprintf(ad->errstr, sizeof(ad->errstr), "matrix adapter stopped");
        return PARLEY_ERR_STATE;
    }
    result = matrix_room_split(room, room_id, sizeof(room_id), &thread);
    if (result != PARLEY_OK) {
        snprintf(ad->errstr, sizeof(ad->errstr), "not a Matrix room id");
        return result;
    }
    r = mx_room_get(m, room_id, 1);
    s = calloc(1, sizeof(*s));
    if (!r || !s) {
        free(s);
        return PARLEY_ERR_OOM;
    }
    memset(&o, 0, sizeof(o));
    o.text = reply->text;
    o.mention = reply->mention;
    o.notice = reply->notice;
    o.thread_id = reply->thread_id ? reply->thread_id : thread;
    /* Greetings answer a member event: no reply relation to that. */
    o.in_reply_to = mx_ring_has(m->joins, reply->in_reply_to)
                    ? NULL : reply->in_reply_to;
    if (o.thread_id && !o.in_reply_to)
        o.in_reply_to = o.thread_id;
    if (matrix_content_build(&o, &s->content) != PARLEY_OK) {
        free(s);
        return PARLEY_ERR_OOM;
    }
    o.text = MX_TOO_LARGE_TEXT;
    o.notice = 1;
    if (matrix_content_build(&o, &s->too_large) != PARLEY_OK) {
        mx_send_free(s);
        return PARLEY_ERR_OOM;
    }
    if (reply->txn_id)
        snprintf(seed, sizeof(seed), "%s", reply->txn_id);
    else if (reply->in_reply_to)
        snprintf(seed, sizeof(seed), "reply.%s", reply->in_reply_to);
    else
        snprintf(seed, sizeof(seed), "once.%llu.%ld.%d",
                 (unsigned long long)random_u64(), (long)time(NULL),
                 (int)getpid());
    if (matrix_txn_id(seed, s->txn, sizeof(s->txn)) != PARLEY_OK) {
        mx_send_free(s);
        return PARLEY_ERR_OTHER;
    }
    s->done = done;
    s->privdata = privdata;
    s->room = r;
    s->stream = stream;
    s->first = first;
    if (reply->mention && !(s->who = strdup(reply->mention))) {
        mx_send_free(s);
        return PARLEY_ERR_OOM;
    }
    send_push(r, s);
    return PARLEY_OK;
}
