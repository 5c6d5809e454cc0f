/*
 * The receiving half of the adapter's E2EE client (matrix_e2ee.h):
 * to-device intake, one event at a time through Redis (decrypt an Olm
 * message with a stored session or a new inbound one, store the session
 * whose ratchet moved, keep the m.room_key it carried as an inbound Megolm
 * session), and decrypting a room event with the stored Megolm session of
 * its sender, claiming its message index against replays.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "log.h"
#include "matrix.h"
#include "matrix_crypto.h"
#include "matrix_e2ee.h"
#include "matrix_e2ee_private.h"
#include "metrics.h"
#include "state.h"
#include "status.h"

void e2ee_td_clear(struct matrix_e2ee *e)
{
    cJSON_Delete(e->td_content);
    e->td_content = NULL;
    matrix_olm_free(e->td_session);
    e->td_session = NULL;
    matrix_crypto_free_secret(e->td_plain);
    e->td_plain = NULL;
}

/* ---- to-device intake --------------------------------------------------- */

static void td_next(struct matrix_e2ee *e);

static void td_finish(struct matrix_e2ee *e, int status)
{
    matrix_e2ee_done_fn *done = e->td_done;

    e2ee_td_clear(e);
    e->td_done = NULL;
    e->td_batch = NULL;
    if (done)
        done(status, e->td_priv);
}

/* A Redis write of this event finished: on to the next one. */
static void td_stored(int status, void *priv)
{
    struct matrix_e2ee *e = priv;

    if (e->stopped)
        return;
    if (status) {
        td_finish(e, status);
        return;
    }
    e->td_i++;
    e->keys_stored++;
    metrics_e2ee_megolm_session(0);
    td_next(e);
}

/* The plaintext decrypted: check it, keep an m.room_key. */
static void td_plaintext(struct matrix_e2ee *e)
{
    const struct matrix_to_device *t = &e->td_batch->to_device[e->td_i];
    struct matrix_megolm_in *in = NULL;
    struct state_megolm_in rec;
    const char *type, *room = NULL, *sid = NULL, *ed = NULL, *sk = NULL;
    cJSON *ev = NULL;
    char *p = NULL;
    int result;

    if (matrix_olm_plaintext_check(e->td_plain, t->sender, e->user_id,
                                   matrix_account_ed25519(e->acct), &ev,
                                   &ed) != PARLEY_OK) {
        log_warn("matrix %s: an encrypted to-device event from %s is not "
                 "meant for this device: ignored", e->account_name,
                 t->sender);
        e->td_i++;
        td_next(e);
        return;
    }
    type = cJSON_GetObjectItemCaseSensitive(ev, "type")->valuestring;
    if (strcmp(type, "m.room_key") == 0) {
        result = matrix_megolm_in_from_room_key(
                     cJSON_GetObjectItemCaseSensitive(ev, "content"), &in,
                     &room, &sid);
        sk = e->td_msg.sender_key;
    } else if (strcmp(type, "m.forwarded_room_key") == 0) {
        /* Taken only as the answer to our own request, from whom we
         * asked: anyone could otherwise plant a session under another
         * device's name. */
        result = matrix_megolm_in_from_forwarded(
                     cJSON_GetObjectItemCaseSensitive(ev, "content"), &in,
                     &room, &sid, &sk, &ed);
        if (!result && !e2ee_asked(e, sid, t->sender)) {
            log_warn("matrix %s: a forwarded room key from %s that was not "
                     "asked for: ignored", e->account_name, t->sender);
            result = PARLEY_ERR_PROTOCOL;
        }
    } else {
        log_debug("matrix %s: to-device %s from %s not handled",
                  e->account_name, type, t->sender);
        matrix_crypto_wipe_json(ev);
        e->td_i++;
        td_next(e);
        return;
    }
    if (result == PARLEY_OK)
        result = matrix_megolm_in_pickle(in, (const uint8_t *)e->pickle_key,
                                         e->pickle_key_len, &p);
    if (result == PARLEY_OK) {
        rec.pickle = p;
        rec.sender_key = sk;
        rec.sender_ed25519 = ed;
        result = state_crypto_megolm_in_save(e->host.store, e->account_name,
                                             room, sid, &rec, td_stored, e);
        if (result == PARLEY_OK)
            log_info("matrix %s: %s for %s from %s (session %s)",
                     e->account_name, strcmp(type, "m.room_key") == 0 ?
                     "room key" : "forwarded room key", room, t->sender,
                     sid);
    }
    free(p);
    matrix_megolm_in_free(in);
    matrix_crypto_wipe_json(ev);
    if (result == PARLEY_ERR_PROTOCOL) {
        log_warn("matrix %s: a malformed room key from %s: ignored",
                 e->account_name, t->sender);
        e->td_i++;
        td_next(e);
    } else if (result) {
        td_finish(e, result);
    }
}

/* After the session that decrypted the event was stored. */
static void td_session_stored(int status, void *priv)
{
    struct matrix_e2ee *e = priv;

    if (e->stopped)
        return;
    if (status) {
        td_finish(e, status);
        return;
    }
    td_plaintext(e);
}

/* Store the session that decrypted the event (its ratchet moved), with
 * the account when the session is new (a one-time key went). */
static void td_store_session(struct matrix_e2ee *e, int fresh)
{
    char *sp = NULL, *ap = NULL;
    int result;

    result = matrix_olm_pickle(e->td_session,
                               (const uint8_t *)e->pickle_key,
                               e->pickle_key_len, &sp);
    if (!result && fresh)
        result = matrix_account_pickle(e->acct,
                                       (const uint8_t *)e->pickle_key,
                                       e->pickle_key_len, &ap);
    if (!result)
        result = state_crypto_olm_save(e->host.store, e->account_name,
                                       e->td_msg.sender_key,
                                       matrix_olm_id(e->td_session), sp, ap,
                                       td_session_stored, e);
    free(sp);
    free(ap);
    if (result)
        td_finish(e, result);
}

static void td_sessions_loaded(int status, const struct state_pair *pairs,
                               size_t n, void *priv)
{
    struct matrix_e2ee *e = priv;
    const struct matrix_olm_msg *msg = &e->td_msg;
    struct matrix_olm *s;
    size_t i;

    if (e->stopped)
        return;
    if (status) {
        metrics_e2ee_store(0);
        td_finish(e, status);
        return;
    }
    for (i = 0; i < n && !e->td_plain; i++) {
        s = NULL;
        if (pairs[i].name[0] == '_')
            continue;               /* _out: which one we send with */
        if (matrix_olm_unpickle((const uint8_t *)e->pickle_key,
                                e->pickle_key_len, pairs[i].value, &s))
            continue;
        /* A pre-key message names its session; a normal one is tried on
         * each (a wrong session fails its MAC and stays unchanged). */
        if ((msg->type == 1 || matrix_olm_matches(s, msg->sender_key,
                                                  msg->body)) &&
            matrix_olm_decrypt(s, msg->type, msg->body, &e->td_plain) ==
            PARLEY_OK) {
            e->td_session = s;
            break;
        }
        matrix_olm_free(s);
    }
    if (e->td_plain) {
        td_store_session(e, 0);
        return;
    }
    if (msg->type == 0 &&
        matrix_olm_inbound(e->acct, msg->sender_key, msg->body,
                           &e->td_session) == PARLEY_OK &&
        matrix_olm_decrypt(e->td_session, 0, msg->body, &e->td_plain) ==
        PARLEY_OK) {
        td_store_session(e, 1);
        return;
    }
    /* Wedged: no session of ours reads their message.  The session we
     * send with is dropped, so the next share starts a new one. */
    log_warn("matrix %s: cannot decrypt a to-device message from %s (%s): "
             "ignored; a new Olm session at the next share",
             e->account_name, e->td_batch->to_device[e->td_i].sender,
             matrix_crypto_error());
    state_crypto_olm_wedged(e->host.store, e->account_name, msg->sender_key);
    e->td_i++;
    td_next(e);
}

static void td_next(struct matrix_e2ee *e)
{
    const struct matrix_to_device *t;
    int result;

    e2ee_td_clear(e);
    while (e->td_i < e->td_batch->n_to_device) {
        t = &e->td_batch->to_device[e->td_i];
        e->td_content = cJSON_Parse(t->content);
        if (matrix_olm_parse(e->td_content,
                             matrix_account_curve25519(e->acct),
                             &e->td_msg) == PARLEY_OK)
            break;
        log_debug("matrix %s: to-device event from %s is not Olm for this "
                  "device: ignored", e->account_name, t->sender);
        cJSON_Delete(e->td_content);
        e->td_content = NULL;
        e->td_i++;
    }
    if (e->td_i >= e->td_batch->n_to_device) {
        td_finish(e, PARLEY_OK);
        return;
    }
    result = state_crypto_olm_load(e->host.store, e->account_name,
                                   e->td_msg.sender_key, td_sessions_loaded,
                                   e);
    if (result)
        td_finish(e, result);
}

/* Runs td_next from the loop's next turn: done must never run inside
 * matrix_e2ee_to_device.  A Redis round trip (PING) is that turn. */
int matrix_e2ee_to_device(struct matrix_e2ee *e, const struct matrix_batch *b,
                          matrix_e2ee_done_fn *done, void *priv)
{
    int result;

    if (!e || !b || !e->ready || e->td_done)
        return PARLEY_ERR_STATE;
    e->td_batch = b;
    e->td_i = 0;
    e->td_done = done;
    e->td_priv = priv;
    /* Start with the first event's Olm sessions: its callback is the
     * later turn; with nothing to do, an empty load serves the same. */
    while (e->td_i < b->n_to_device) {
        e->td_content = cJSON_Parse(b->to_device[e->td_i].content);
        if (matrix_olm_parse(e->td_content,
                             matrix_account_curve25519(e->acct),
                             &e->td_msg) == PARLEY_OK)
            break;
        cJSON_Delete(e->td_content);
        e->td_content = NULL;
        e->td_i++;
    }
    if (e->td_i >= b->n_to_device) {
        e->td_done = NULL;
        e->td_batch = NULL;
        return PARLEY_ERR_EOF;      /* nothing for us: no callback */
    }
    result = state_crypto_olm_load(e->host.store, e->account_name,
                                   e->td_msg.sender_key, td_sessions_loaded,
                                   e);
    if (result) {
        e2ee_td_clear(e);
        e->td_done = NULL;
        e->td_batch = NULL;
    }
    return result;
}

/* ---- decrypting a room event -------------------------------------------- */

struct e2ee_dec {
    struct matrix_e2ee *e;
    char *room_id;
    char *event_id;
    cJSON *content;                 /* the m.room.encrypted content */
    struct matrix_megolm_msg msg;   /* borrowed from content */
    cJSON *event;                   /* the checked plaintext */
    matrix_e2ee_event_fn *fn;
    void *priv;
};

static void dec_free(struct e2ee_dec *d)
{
    free(d->room_id);
    free(d->event_id);
    cJSON_Delete(d->content);
    matrix_crypto_wipe_json(d->event);
    free(d);
}

static void dec_finish(struct e2ee_dec *d, int status)
{
    if (status == PARLEY_ERR_PROTOCOL)
        metrics_e2ee_decrypt_failed();
    if (!d->e->stopped)
        d->fn(status, status ? NULL : d->event, d->priv);
    dec_free(d);
}

static void dec_claimed(int status, int fresh, void *priv)
{
    struct e2ee_dec *d = priv;

    if (!status && !fresh) {
        log_warn("matrix %s: %s reuses a Megolm message index (a replay): "
                 "ignored", d->e->account_name, d->event_id);
        status = PARLEY_ERR_PROTOCOL;
    }
    dec_finish(d, status);
}

static void dec_session_loaded(int status, const struct state_megolm_in *s,
                               void *priv)
{
    struct e2ee_dec *d = priv;
    struct matrix_e2ee *e = d->e;
    struct matrix_megolm_in *in = NULL;
    char *plain = NULL;
    uint32_t index = 0;
    int result;

    if (status || e->stopped) {
        if (status)
            metrics_e2ee_store(0);
        dec_finish(d, status ? status : PARLEY_ERR_STATE);
        return;
    }
    if (!s) {
        dec_finish(d, PARLEY_ERR_EOF);      /* no key (yet) */
        return;
    }
    /* The session must come from the device that claims to send. */
    if (d->msg.sender_key && strcmp(d->msg.sender_key, s->sender_key)) {
        dec_finish(d, PARLEY_ERR_PROTOCOL);
        return;
    }
    result = matrix_megolm_in_unpickle((const uint8_t *)e->pickle_key,
                                       e->pickle_key_len, s->pickle, &in);
    /* A stored session the key cannot open: the store is unreadable. */
    metrics_e2ee_store(result == PARLEY_OK);
    if (!result)
        result = matrix_megolm_decrypt(in, d->msg.ciphertext, &plain,
                                       &index);
    matrix_megolm_in_free(in);
    if (!result)
        result = matrix_megolm_plaintext_check(plain, d->room_id, &d->event);
    matrix_crypto_free_secret(plain);
    if (!result)
        result = state_crypto_megolm_index_claim(e->host.store,
                                                 e->account_name,
                                                 d->msg.session_id, index,
                                                 d->event_id, dec_claimed,
                                                 d);
    if (result)
        dec_finish(d, result);
}

int matrix_e2ee_decrypt(struct matrix_e2ee *e, const char *room_id,
                        const char *event_id, const char *cipher,
                        matrix_e2ee_event_fn *fn, void *priv)
{
    struct e2ee_dec *d;
    int result;

    if (!e || !e->ready || !room_id || !event_id || !cipher || !fn)
        return PARLEY_ERR_STATE;
    d = calloc(1, sizeof(*d));
    if (!d)
        return PARLEY_ERR_OOM;
    d->e = e;
    d->fn = fn;
    d->priv = priv;
    d->room_id = strdup(room_id);
    d->event_id = strdup(event_id);
    d->content = cJSON_Parse(cipher);
    if (!d->room_id || !d->event_id || !d->content) {
        dec_free(d);
        return PARLEY_ERR_OOM;
    }
    if (matrix_megolm_parse(d->content, &d->msg) != PARLEY_OK) {
        dec_free(d);
        return PARLEY_ERR_PROTOCOL;
    }
    result = state_crypto_megolm_in_load(e->host.store, e->account_name,
                                         room_id, d->msg.session_id,
                                         dec_session_loaded, d);
    if (result)
        dec_free(d);
    return result;
}
