/*
 * The Matrix adapter's undecryptable events ("unable to decrypt", UTD).
 * An encrypted room event whose Megolm session the bot lacks is kept in
 * Redis (crypto:<account>:utd) before the walk moves past it, so the sync
 * position never loses it, and its key is asked for
 * (matrix_e2ee_key_request).  At the next sync after new room keys were
 * stored (and at the first sync after a start), the kept events are
 * appended to the batch and walked again: decrypted, they take the path
 * of any event, and their records go once the sync position has moved
 * past that batch (a crash in between walks them again, and the router's
 * dedupe drops what it already took).  An event still undecrypted after
 * utd_timeout_ms is explained once in its room (a notice with a txnId
 * made from the event id, so a resend after a crash is dropped by the
 * homeserver) and then forgotten: never a second notice, never a loop.
 * The same step before each walk marks the device lists a sync named in
 * device_lists as stale (matrix_e2ee_devices_stale).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "adapter.h"
#include "log.h"
#include "matrix.h"
#include "matrix_adapter_int.h"
#include "matrix_e2ee.h"
#include "metrics.h"
#include "state.h"
#include "status.h"

/* Kept events walked again in one batch; the rest wait for the next. */
#define UTD_RETRY_MAX 100
/* Explanations in flight at once; more wait for the next sync. */
#define UTD_NOTICES_MAX 16

#define UTD_TEXT "I could not read this message: it is end-to-end " \
    "encrypted, and the key to decrypt it never reached my device. " \
    "Please send it again. If this keeps happening, let your app share " \
    "room keys with unverified devices, or verify my device (the bot's " \
    "operator can give you its fingerprint)."

struct utd_notice {
    struct mx_utd *u;
    int busy;
    char event_id[MATRIX_ID_MAX + 1];
};

struct mx_utd {
    struct matrix *m;
    unsigned long serial;           /* batch_serial prepared */
    unsigned long keys_seen;        /* matrix_e2ee_keys_stored then */
    int retried;                    /* kept events walked since start */
    long n_kept;                    /* records at the last load; -1 */
    char *retry[UTD_RETRY_MAX];     /* event ids walked again now */
    size_t n_retry;
    char *done[UTD_RETRY_MAX];      /* ... that decrypted: forgotten at
                                       the next sync */
    size_t n_done;
    struct utd_notice notices[UTD_NOTICES_MAX];
};

struct utd_keep {
    struct matrix *m;
    char *event_id;
    char *room_id;
    char *sender;
    char *cipher;
};

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct mx_utd *utd_get(struct matrix *m)
{
    if (!m->utd) {
        m->utd = calloc(1, sizeof(*m->utd));
        if (m->utd) {
            m->utd->m = m;
            m->utd->n_kept = -1;
        }
    }
    return m->utd;
}

static void list_clear(char **list, size_t *n)
{
    for (size_t i = 0; i < *n; i++) {
        free(list[i]);
        list[i] = NULL;
    }
    *n = 0;
}

void mx_utd_free(struct matrix *m)
{
    if (!m->utd)
        return;
    list_clear(m->utd->retry, &m->utd->n_retry);
    list_clear(m->utd->done, &m->utd->n_done);
    free(m->utd);
    m->utd = NULL;
}

static void utd_gauge(struct mx_utd *u, long delta)
{
    if (u->n_kept < 0)
        return;
    u->n_kept += delta;
    if (u->n_kept < 0)
        u->n_kept = 0;
    metrics_e2ee_utd_pending(u->n_kept);
}

/* ---- keeping an event ---------------------------------------------------- */

static void keep_free(struct utd_keep *k)
{
    free(k->event_id);
    free(k->room_id);
    free(k->sender);
    free(k->cipher);
    free(k);
}

static void utd_kept(int status, int fresh, void *priv)
{
    struct utd_keep *k = priv;
    struct matrix *m = k->m;

    if (m->stopped) {
        keep_free(k);
        return;
    }
    if (status == PARLEY_ERR_TOO_LARGE) {
        log_warn("matrix %s: %d undecryptable events are kept already: "
                 "one more in %s is not answered", m->mc.account,
                 STATE_UTD_MAX, k->room_id);
        status = PARLEY_OK;
        fresh = 0;
    }
    if (status) {
        /* The walk stays at this event: it is offered again. */
        log_warn("matrix %s: keeping an undecryptable event failed (%s); "
                 "pausing the sync", m->mc.account,
                 parley_status_name(status));
        keep_free(k);
        mx_ctl_later(m, mx_backoff(m, m->attempt < 30 ? m->attempt++ : 30));
        return;
    }
    if (fresh) {
        log_warn("matrix %s: no usable room key for %s in %s yet: kept "
                 "until it comes (at most utd_timeout_ms)", m->mc.account,
                 k->event_id, k->room_id);
        metrics_e2ee_decrypt_failed();
        if (utd_get(m))
            utd_gauge(m->utd, +1);
    }
    /* Busy or already asked: the next sync asks again if need be. */
    (void)matrix_e2ee_key_request(m->e2ee, k->room_id, k->sender,
                                  k->cipher);
    keep_free(k);
    mx_walk_decrypted_next(m);
}

int mx_utd_keep(struct matrix *m, const struct matrix_item *it)
{
    struct utd_keep *k;
    cJSON *rec;
    char *s = NULL;
    int result = PARLEY_ERR_OOM;

    if (!it->event_id || !it->room_id || !it->sender || !it->cipher)
        return PARLEY_ERR_OTHER;
    /* The record names no key: only the ciphertext the server holds
     * anyway, and who sent it where. */
    rec = cJSON_CreateObject();
    if (rec && cJSON_AddStringToObject(rec, "room", it->room_id) &&
        cJSON_AddStringToObject(rec, "sender", it->sender) &&
        (!it->sender_name ||
         cJSON_AddStringToObject(rec, "name", it->sender_name)) &&
        cJSON_AddStringToObject(rec, "cipher", it->cipher) &&
        cJSON_AddNumberToObject(rec, "t", (double)now_ms()))
        s = cJSON_PrintUnformatted(rec);
    cJSON_Delete(rec);
    k = s ? calloc(1, sizeof(*k)) : NULL;
    if (k) {
        k->m = m;
        k->event_id = strdup(it->event_id);
        k->room_id = strdup(it->room_id);
        k->sender = strdup(it->sender);
        k->cipher = strdup(it->cipher);
        result = k->event_id && k->room_id && k->sender && k->cipher ?
                 PARLEY_OK :
                 PARLEY_ERR_OOM;
    }
    if (!result)
        result = state_crypto_utd_add(m->store, m->mc.account, it->event_id,
                                      s, utd_kept, k);
    free(s);
    if (result && k)
        keep_free(k);
    return result;
}

/* ---- explaining once -------------------------------------------------- */

static void utd_explained(int status, void *priv)
{
    struct utd_notice *n = priv;
    struct mx_utd *u = n->u;

    n->busy = 0;
    /* Stopped: the record stays and the next start sends the same txnId
     * again (dropped by the homeserver if it went out).  Otherwise it is
     * forgotten whatever happened: at most one explanation. */
    if (u->m->stopped)
        return;
    if (status)
        log_warn("matrix %s: the explanation for %s could not be sent "
                 "(%s): not retried", u->m->mc.account, n->event_id,
                 parley_status_name(status));
    state_crypto_utd_del(u->m->store, u->m->mc.account, n->event_id, NULL,
                         NULL);
    utd_gauge(u, -1);
}

static void utd_explain(struct mx_utd *u, const char *event_id,
                        const char *room_id, const char *sender)
{
    struct matrix *m = u->m;
    struct utd_notice *n = NULL;
    struct reply r;
    char txn[MATRIX_ID_MAX + 8];
    size_t i;

    for (i = 0; i < UTD_NOTICES_MAX; i++) {
        if (u->notices[i].busy &&
            strcmp(u->notices[i].event_id, event_id) == 0)
            return;                 /* on its way */
        if (!u->notices[i].busy && !n)
            n = &u->notices[i];
    }
    if (!n || strlen(event_id) > MATRIX_ID_MAX)
        return;
    snprintf(n->event_id, sizeof(n->event_id), "%s", event_id);
    snprintf(txn, sizeof(txn), "utd.%s", event_id);
    n->u = u;
    memset(&r, 0, sizeof(r));
    r.text = UTD_TEXT;
    r.in_reply_to = event_id;
    r.mention = sender;
    r.txn_id = txn;
    r.notice = 1;
    n->busy = 1;
    if (matrix_send(&m->ad, room_id, &r, utd_explained, n) != PARLEY_OK) {
        n->busy = 0;
        return;
    }
    log_warn("matrix %s: no room key came for %s in %s within %d ms: "
             "told %s once", m->mc.account, event_id, room_id,
             m->mc.utd_timeout_ms, sender);
}

/* ---- walking kept events again ------------------------------------------- */

static void utd_loaded(int status, const struct state_pair *pairs, size_t n,
                       void *priv)
{
    struct mx_utd *u = priv;
    struct matrix *m = u->m;
    long long now = now_ms();
    int retry;

    if (m->stopped)
        return;
    if (status) {
        log_debug("matrix %s: undecryptable events not loaded (%s)",
                  m->mc.account, parley_status_name(status));
        mx_walk(m);
        return;
    }
    retry = !u->retried ||
            u->keys_seen != matrix_e2ee_keys_stored(m->e2ee);
    u->retried = 1;
    u->keys_seen = matrix_e2ee_keys_stored(m->e2ee);
    u->n_kept = (long)n;
    metrics_e2ee_utd_pending(u->n_kept);
    for (size_t i = 0; i < n; i++) {
        cJSON *rec = cJSON_Parse(pairs[i].value);
        const cJSON *room = cJSON_GetObjectItemCaseSensitive(rec, "room");
        const cJSON *sender = cJSON_GetObjectItemCaseSensitive(rec,
                                                               "sender");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(rec, "name");
        const cJSON *cipher = cJSON_GetObjectItemCaseSensitive(rec,
                                                               "cipher");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rec, "t");

        if (!cJSON_IsString(room) || !cJSON_IsString(sender) ||
            !cJSON_IsString(cipher) || !cJSON_IsNumber(t)) {
            /* Not ours (hand-edited?): it can never be retried. */
            state_crypto_utd_del(m->store, m->mc.account, pairs[i].name,
                                 NULL, NULL);
        } else if (now - (long long)t->valuedouble >=
                   (long long)m->mc.utd_timeout_ms) {
            utd_explain(u, pairs[i].name, room->valuestring,
                        sender->valuestring);
        } else if (retry && u->n_retry < UTD_RETRY_MAX &&
                   (u->retry[u->n_retry] = strdup(pairs[i].name)) &&
                   matrix_batch_add_cipher(
                       &m->batch, room->valuestring, pairs[i].name,
                       sender->valuestring,
                       cJSON_IsString(name) ? name->valuestring : NULL,
                       cipher->valuestring) == PARLEY_OK) {
            u->n_retry++;
        } else {
            free(u->retry[u->n_retry]);
            u->retry[u->n_retry] = NULL;
            /* After a restart the asked ring is empty: ask again. */
            (void)matrix_e2ee_key_request(m->e2ee, room->valuestring,
                                          sender->valuestring,
                                          cipher->valuestring);
        }
        cJSON_Delete(rec);
    }
    if (u->n_retry)
        log_info("matrix %s: trying %zu undecrypted event(s) again",
                 m->mc.account, u->n_retry);
    mx_walk(m);
}

static int utd_load(struct mx_utd *u)
{
    struct matrix *m = u->m;

    if (u->n_kept == 0)
        return 0;                   /* nothing kept: no need to look */
    return state_crypto_utd_load(m->store, m->mc.account, utd_loaded, u) ==
           PARLEY_OK;
}

/* The batch's device_lists are marked: on to the kept events. */
static void utd_lists_marked(int status, void *priv)
{
    struct mx_utd *u = priv;
    struct matrix *m = u->m;

    if (m->stopped)
        return;
    if (status) {
        /* Not past this batch without them: prepared again later. */
        u->serial = 0;
        log_warn("matrix %s: marking device lists stale failed (%s); "
                 "pausing the sync", m->mc.account,
                 parley_status_name(status));
        mx_ctl_later(m, mx_backoff(m, m->attempt < 30 ? m->attempt++ : 30));
        return;
    }
    if (!utd_load(u))
        mx_walk(m);
}

int mx_utd_prepare(struct matrix *m)
{
    struct mx_utd *u;
    int result;

    if (m->initial || !matrix_e2ee_ready(m->e2ee) || !(u = utd_get(m)) ||
        u->serial == m->batch_serial)
        return 0;
    u->serial = m->batch_serial;
    /* The sync position moved past the batch that decrypted these. */
    for (size_t i = 0; i < u->n_done; i++)
        state_crypto_utd_del(m->store, m->mc.account, u->done[i], NULL,
                             NULL);
    utd_gauge(u, -(long)u->n_done);
    list_clear(u->done, &u->n_done);
    list_clear(u->retry, &u->n_retry);
    /* device_lists first: durable before the sync position moves. */
    result = matrix_e2ee_devices_stale(m->e2ee, &m->batch, utd_lists_marked,
                                       u);
    if (result == PARLEY_OK)
        return 1;
    if (result != PARLEY_ERR_EOF) {
        u->serial = 0;
        mx_ctl_later(m, mx_backoff(m, m->attempt < 30 ? m->attempt++ : 30));
        return 1;
    }
    return utd_load(u);
}

void mx_utd_settled(struct matrix *m, const char *event_id)
{
    struct mx_utd *u = m->utd;

    if (!u || !event_id)
        return;
    for (size_t i = 0; i < u->n_retry; i++) {
        if (!u->retry[i] || strcmp(u->retry[i], event_id) != 0)
            continue;
        if (u->n_done < UTD_RETRY_MAX) {
            u->done[u->n_done++] = u->retry[i];
            u->retry[i] = NULL;
        }
        return;
    }
}
