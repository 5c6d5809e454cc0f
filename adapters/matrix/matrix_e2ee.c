/*
 * The adapter's end-to-end encryption client (matrix_e2ee.h): the device
 * identity's life cycle against Redis and the homeserver.  Start: load
 * the Olm account pickle (or create an account and store it before
 * anything is uploaded, so a crash cannot leave keys on the server that
 * the bot no longer has), upload device keys, one-time keys and a
 * fallback key, mark them published and store the account again.  Then
 * every sync's counters may trigger a top-up, one upload at a time.
 *
 * Keys are uploaded before they are marked published, and marked only
 * after the server took them: a retried upload sends the same key ids
 * with the same keys, which the server accepts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "log.h"
#include "matrix.h"
#include "matrix_crypto.h"
#include "matrix_e2ee.h"
#include "random.h"
#include "state.h"
#include "status.h"

/* Top up when the server holds fewer than this many one-time keys. */
#define E2EE_OTK_LOW (MATRIX_E2EE_OTK_TARGET / 2)
/* The answer to /keys/upload is a few counters. */
#define E2EE_UPLOAD_ANSWER_MAX (64 * 1024)

struct matrix_e2ee {
    struct matrix_e2ee_host host;
    char *account_name;             /* copy of host.account */
    char *key_env;                  /* for log lines: the variable name */
    char *pickle_key;               /* the secret; wiped on free */
    size_t pickle_key_len;
    struct matrix_account *acct;
    char *user_id;
    char *device_id;
    int ready;
    int fresh;                      /* the account was created this start */
    int uploading;                  /* one /keys/upload at a time */
    int enc_busy;                   /* one matrix_e2ee_encrypt at a time */
    struct e2ee_enc *enc;           /* its state while e->req is its own */
    int stopped;
    struct http_request *req;
    matrix_e2ee_done_fn *done;      /* start's callback, until it ran */
    void *done_priv;

    /* To-device intake: one event at a time, each step through Redis. */
    const struct matrix_batch *td_batch;
    size_t td_i;
    matrix_e2ee_done_fn *td_done;
    void *td_priv;
    cJSON *td_content;              /* the event being handled */
    struct matrix_olm_msg td_msg;   /* borrowed from td_content */
    struct matrix_olm *td_session;  /* the session that decrypted it */
    char *td_plain;                 /* its plaintext (wiped) */
};

int matrix_e2ee_new(const struct matrix_e2ee_host *host, const char *key_env,
                    struct matrix_e2ee **out, char *err, size_t errlen)
{
    struct matrix_e2ee *e;
    char *key = NULL;
    int result;

    *out = NULL;
    if (!key_env) {
        log_info("matrix %s: end-to-end encryption is off (no "
                 "crypto_key_env): the bot stays silent in encrypted rooms",
                 host->account);
        return PARLEY_OK;
    }
    result = config_secret_read(key_env, &key, err, errlen);
    if (result)
        return PARLEY_ERR_CONFIG;
    if (!key || !key[0]) {
        free(key);
        log_info("matrix %s: end-to-end encryption is off (%s is not set): "
                 "the bot stays silent in encrypted rooms", host->account,
                 key_env);
        return PARLEY_OK;
    }
    if (strlen(key) < MATRIX_E2EE_KEY_MIN) {
        explicit_bzero(key, strlen(key));
        free(key);
        snprintf(err, errlen, "%s is shorter than %d bytes; use a random "
                 "key (e.g. openssl rand -base64 32)", key_env,
                 MATRIX_E2EE_KEY_MIN);
        return PARLEY_ERR_CONFIG;
    }
    /* Fail closed, as the adapter's other secrets. */
    if (log_add_secret(key) != PARLEY_OK) {
        explicit_bzero(key, strlen(key));
        free(key);
        snprintf(err, errlen, "cannot register %s for log redaction",
                 key_env);
        return PARLEY_ERR_CONFIG;
    }
    e = calloc(1, sizeof(*e));
    if (e) {
        e->host = *host;
        e->account_name = strdup(host->account);
        e->key_env = strdup(key_env);
    }
    if (!e || !e->account_name || !e->key_env) {
        log_remove_secret(key);
        explicit_bzero(key, strlen(key));
        free(key);
        if (e) {
            free(e->account_name);
            free(e->key_env);
            free(e);
        }
        snprintf(err, errlen, "out of memory");
        return PARLEY_ERR_OOM;
    }
    e->host.account = e->account_name;
    e->pickle_key = key;
    e->pickle_key_len = strlen(key);
    *out = e;
    return PARLEY_OK;
}

struct e2ee_enc;
static void enc_free(struct e2ee_enc *x);

void matrix_e2ee_stop(struct matrix_e2ee *e)
{
    if (!e)
        return;
    e->stopped = 1;
    if (e->req) {
        loop_http_cancel(e->req);
        e->req = NULL;
    }
    /* An encryption waiting on that request never hears back. */
    if (e->enc) {
        enc_free(e->enc);
        e->enc = NULL;
        e->enc_busy = 0;
    }
}

static void td_clear(struct matrix_e2ee *e)
{
    cJSON_Delete(e->td_content);
    e->td_content = NULL;
    matrix_olm_free(e->td_session);
    e->td_session = NULL;
    matrix_crypto_free_secret(e->td_plain);
    e->td_plain = NULL;
}

void matrix_e2ee_free(struct matrix_e2ee *e)
{
    if (!e)
        return;
    matrix_e2ee_stop(e);
    td_clear(e);
    matrix_account_free(e->acct);
    if (e->pickle_key) {
        log_remove_secret(e->pickle_key);
        explicit_bzero(e->pickle_key, e->pickle_key_len);
        free(e->pickle_key);
    }
    free(e->account_name);
    free(e->key_env);
    free(e->user_id);
    free(e->device_id);
    free(e);
}

int matrix_e2ee_ready(const struct matrix_e2ee *e)
{
    return e && e->ready;
}

const char *matrix_e2ee_ed25519(const struct matrix_e2ee *e)
{
    return e && e->acct ? matrix_account_ed25519(e->acct) : "";
}

/* Start's callback, once. */
static void start_finish(struct matrix_e2ee *e, int status)
{
    matrix_e2ee_done_fn *done = e->done;

    e->done = NULL;
    if (done)
        done(status, e->done_priv);
}

/* Store the account pickle; fn may be NULL (fire and forget). */
static int account_store(struct matrix_e2ee *e, state_done_fn *fn)
{
    char *p = NULL;
    int result = matrix_account_pickle(e->acct,
                                       (const uint8_t *)e->pickle_key,
                                       e->pickle_key_len, &p);

    if (!result)
        result = state_crypto_account_save(e->host.store, e->account_name,
                                           p, fn, fn ? e : NULL);
    free(p);
    return result;
}

static void upload_done(const struct http_response *resp, void *priv)
{
    struct matrix_e2ee *e = priv;
    cJSON *c;
    long count = -1;

    e->req = NULL;
    e->uploading = 0;
    if (resp->status != PARLEY_OK || resp->code != 200) {
        log_warn("matrix %s: key upload failed (%s, HTTP %ld)%s%.*s",
                 e->account_name, parley_status_name(resp->status),
                 resp->code, resp->code ? ": " : "",
                 (int)(resp->body_len > 200 ? 200 : resp->body_len),
                 resp->body);
        start_finish(e, resp->status ? resp->status : PARLEY_ERR_HTTP);
        return;
    }
    matrix_account_mark_published(e->acct);
    if (account_store(e, NULL) != PARLEY_OK)
        log_warn("matrix %s: cannot store the account after a key upload; "
                 "the keys are uploaded again after a restart",
                 e->account_name);
    c = cJSON_ParseWithLength(resp->body, resp->body_len);
    count = matrix_otk_count(cJSON_GetObjectItemCaseSensitive(
                                 c, "one_time_key_counts"));
    cJSON_Delete(c);
    if (!e->ready) {
        e->ready = 1;
        log_info("matrix %s: end-to-end encryption on: device %s, ed25519 "
                 "%s%s", e->account_name, e->device_id,
                 matrix_account_ed25519(e->acct),
                 e->fresh ? " (new identity)" : "");
        start_finish(e, PARLEY_OK);
    }
    /* The answer may say the server still holds few keys (a start with
     * an old account, or keys claimed meanwhile). */
    if (count >= 0)
        matrix_e2ee_sync_counts(e, count, -1);
}

/* POST /keys/upload with n new one-time keys. */
static int upload(struct matrix_e2ee *e, int with_device, size_t n,
                  int fresh_fallback)
{
    char *body = NULL;
    int result;

    if (e->uploading || e->stopped || e->enc_busy)
        return PARLEY_ERR_STATE;
    result = matrix_keys_upload_body(e->acct, e->user_id, e->device_id,
                                     with_device, n, fresh_fallback, &body);
    if (result)
        return result;
    /* New keys exist only in memory until stored; store them first so
     * that what the server gets is never lost by a crash. */
    if (n || fresh_fallback)
        result = account_store(e, NULL);
    if (!result)
        result = e->host.http(e->host.ctx, "POST", "/keys/upload", body,
                              upload_done, e, &e->req);
    free(body);
    if (!result)
        e->uploading = 1;
    return result;
}

static void account_saved(int status, void *priv)
{
    struct matrix_e2ee *e = priv;
    int result;

    if (e->stopped)
        return;
    if (status) {
        start_finish(e, status);
        return;
    }
    result = upload(e, 1, e->fresh ? MATRIX_E2EE_OTK_TARGET : 0, e->fresh);
    if (result)
        start_finish(e, result);
}

static void account_loaded(int status, const char *value, void *priv)
{
    struct matrix_e2ee *e = priv;
    int result;

    if (e->stopped)
        return;
    if (status) {
        start_finish(e, status);
        return;
    }
    matrix_account_free(e->acct);
    e->acct = NULL;
    if (value) {
        result = matrix_account_unpickle((const uint8_t *)e->pickle_key,
                                         e->pickle_key_len, value, &e->acct);
        if (result) {
            /* Never replace it: a new identity would orphan every
             * session, and the old one may come back with the right
             * key. */
            log_error("matrix %s: the crypto store (crypto:%s:account) "
                      "cannot be opened with the key in %s (%s): wrong key? "
                      "End-to-end encryption stays off", e->account_name,
                      e->account_name, e->key_env, matrix_crypto_error());
            start_finish(e, PARLEY_ERR_CONFIG);
            return;
        }
        e->fresh = 0;
        account_saved(PARLEY_OK, e);
        return;
    }
    result = matrix_account_new(&e->acct);
    if (!result) {
        e->fresh = 1;
        result = account_store(e, account_saved);
    }
    if (result)
        start_finish(e, result);
}

int matrix_e2ee_start(struct matrix_e2ee *e, const char *user_id,
                      const char *device_id, matrix_e2ee_done_fn *done,
                      void *priv)
{
    int result;

    if (!e || !user_id || !device_id || !device_id[0])
        return PARLEY_ERR_OTHER;
    free(e->user_id);
    free(e->device_id);
    e->user_id = strdup(user_id);
    e->device_id = strdup(device_id);
    if (!e->user_id || !e->device_id)
        return PARLEY_ERR_OOM;
    e->stopped = 0;
    e->ready = 0;
    e->done = done;
    e->done_priv = priv;
    result = state_crypto_account_load(e->host.store, e->account_name,
                                       account_loaded, e);
    if (result)
        e->done = NULL;
    return result;
}

void matrix_e2ee_sync_counts(struct matrix_e2ee *e, long otk_count,
                             int fallback_unused)
{
    size_t n = 0;

    if (!e || !e->ready || e->uploading || e->stopped)
        return;
    if (otk_count >= 0 && otk_count < E2EE_OTK_LOW)
        n = (size_t)(MATRIX_E2EE_OTK_TARGET - otk_count);
    if (n > MATRIX_OTK_BATCH_MAX)
        n = MATRIX_OTK_BATCH_MAX;
    if (!n && fallback_unused != 0)
        return;
    if (upload(e, 0, n, fallback_unused == 0) != PARLEY_OK)
        log_debug("matrix %s: key top-up not started", e->account_name);
    else
        log_debug("matrix %s: uploading %zu one-time key(s)%s",
                  e->account_name, n,
                  fallback_unused == 0 ? " and a new fallback key" : "");
}

/* ---- to-device intake --------------------------------------------------- */

static void td_next(struct matrix_e2ee *e);

static void td_finish(struct matrix_e2ee *e, int status)
{
    matrix_e2ee_done_fn *done = e->td_done;

    td_clear(e);
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
    td_next(e);
}

/* The plaintext decrypted: check it, keep an m.room_key. */
static void td_plaintext(struct matrix_e2ee *e)
{
    const struct matrix_to_device *t = &e->td_batch->to_device[e->td_i];
    struct matrix_megolm_in *in = NULL;
    struct state_megolm_in rec;
    const char *type, *room = NULL, *sid = NULL, *ed = NULL;
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
    if (strcmp(type, "m.room_key") != 0) {
        log_debug("matrix %s: to-device %s from %s not handled",
                  e->account_name, type, t->sender);
        matrix_crypto_wipe_json(ev);
        e->td_i++;
        td_next(e);
        return;
    }
    result = matrix_megolm_in_from_room_key(
                 cJSON_GetObjectItemCaseSensitive(ev, "content"), &in, &room,
                 &sid);
    if (result == PARLEY_OK)
        result = matrix_megolm_in_pickle(in, (const uint8_t *)e->pickle_key,
                                         e->pickle_key_len, &p);
    if (result == PARLEY_OK) {
        rec.pickle = p;
        rec.sender_key = e->td_msg.sender_key;
        rec.sender_ed25519 = ed;
        result = state_crypto_megolm_in_save(e->host.store, e->account_name,
                                             room, sid, &rec, td_stored, e);
        if (result == PARLEY_OK)
            log_info("matrix %s: room key for %s from %s (session %s)",
                     e->account_name, room, t->sender, sid);
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
        td_finish(e, status);
        return;
    }
    for (i = 0; i < n && !e->td_plain; i++) {
        s = NULL;
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
    log_warn("matrix %s: cannot decrypt a to-device message from %s (%s): "
             "ignored", e->account_name,
             e->td_batch->to_device[e->td_i].sender, matrix_crypto_error());
    e->td_i++;
    td_next(e);
}

static void td_next(struct matrix_e2ee *e)
{
    const struct matrix_to_device *t;
    int result;

    td_clear(e);
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
        td_clear(e);
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

/* ---- encrypting a room event -------------------------------------------- */

/* Megolm sessions are rotated after this long or this many messages
 * unless the room's m.room.encryption says less (the spec's defaults). */
#define E2EE_ROTATE_MS (7LL * 24 * 3600 * 1000)
#define E2EE_ROTATE_MSGS 100
/* Devices one share reaches; a room past it is refused, not half-shared. */
#define E2EE_DEVICES_MAX 1000
/* Answers to /joined_members, /keys/query and /keys/claim. */
#define E2EE_KEYS_ANSWER_MAX (4 * 1024 * 1024)

struct e2ee_device {
    char *user;
    char *device;
    char *curve;
    char *ed;
    int need;                       /* lacks the current session */
};

struct e2ee_enc {
    struct matrix_e2ee *e;
    char *room_id;
    cJSON *content;                 /* what to encrypt */
    struct matrix_megolm_out *out;
    long long created_ms;
    long long rotate_ms;            /* the room's rotation_period_ms */
    long rotate_msgs;               /* ... and rotation_period_msgs */
    int fresh;                      /* out is new: not stored yet */
    char **members;
    size_t n_members;
    struct e2ee_device *dev;
    size_t n_dev;
    char *result;                   /* the m.room.encrypted content */
    matrix_e2ee_cipher_fn *fn;
    void *priv;
};

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void enc_free(struct e2ee_enc *x)
{
    size_t i;

    free(x->room_id);
    cJSON_Delete(x->content);
    matrix_megolm_out_free(x->out);
    for (i = 0; i < x->n_members; i++)
        free(x->members[i]);
    free(x->members);
    for (i = 0; i < x->n_dev; i++) {
        free(x->dev[i].user);
        free(x->dev[i].device);
        free(x->dev[i].curve);
        free(x->dev[i].ed);
    }
    free(x->dev);
    free(x->result);
    free(x);
}

static void enc_finish(struct e2ee_enc *x, int status)
{
    struct matrix_e2ee *e = x->e;

    e->enc_busy = 0;
    if (status)
        log_warn("matrix %s: cannot encrypt for %s (%s%s%s)",
                 e->account_name, x->room_id, parley_status_name(status),
                 matrix_crypto_error()[0] ? ", " : "",
                 matrix_crypto_error());
    if (!e->stopped)
        x->fn(status, status ? NULL : x->result, x->priv);
    enc_free(x);
}

static int enc_http(struct e2ee_enc *x, const char *method, const char *path,
                    cJSON *body, http_done_fn *done)
{
    char *b = body ? cJSON_PrintUnformatted(body) : NULL;
    int result;

    if (body && !b)
        return PARLEY_ERR_OOM;
    result = x->e->host.http(x->e->host.ctx, method, path, b, done, x,
                             &x->e->req);
    free(b);
    if (!result)
        x->e->enc = x;
    return result;
}

static void enc_saved(int status, void *priv)
{
    struct e2ee_enc *x = priv;

    enc_finish(x, status);
}

/* Every device holds the session: encrypt, store the session (its index
 * moved: a crash must not reuse it), then hand the result over. */
static void enc_encrypt(struct e2ee_enc *x)
{
    struct matrix_e2ee *e = x->e;
    struct state_megolm_out rec;
    cJSON *c = NULL;
    char *p = NULL;
    int result;

    result = matrix_megolm_encrypt(x->out, x->room_id, "m.room.message",
                                   x->content,
                                   matrix_account_curve25519(e->acct),
                                   e->device_id, &c);
    if (!result) {
        x->result = cJSON_PrintUnformatted(c);
        result = x->result ? PARLEY_OK : PARLEY_ERR_OOM;
    }
    cJSON_Delete(c);
    if (!result)
        result = matrix_megolm_out_pickle(x->out,
                                          (const uint8_t *)e->pickle_key,
                                          e->pickle_key_len, &p);
    if (!result) {
        rec.pickle = p;
        rec.created_ms = x->created_ms;
        result = state_crypto_megolm_out_save(e->host.store, e->account_name,
                                              x->room_id, &rec, enc_saved,
                                              x);
    }
    free(p);
    if (result)
        enc_finish(x, result);
}

static void enc_shared_added(int status, void *priv)
{
    struct e2ee_enc *x = priv;

    if (status) {
        enc_finish(x, status);
        return;
    }
    enc_encrypt(x);
}

/* Record who holds the session now (after a rotation the old list is
 * gone: a member who left must not keep forcing new sessions). */
static void enc_add_holders(struct e2ee_enc *x)
{
    const char **holders;
    char **bufs;
    size_t i, n = 0;
    int result;

    holders = calloc(x->n_dev + 1, sizeof(*holders));
    bufs = calloc(x->n_dev + 1, sizeof(*bufs));
    for (i = 0; holders && bufs && i < x->n_dev; i++) {
        size_t len;

        if (!x->dev[i].need)
            continue;
        len = strlen(x->dev[i].user) + strlen(x->dev[i].device) + 2;
        bufs[n] = malloc(len);
        if (!bufs[n])
            break;
        snprintf(bufs[n], len, "%s %s", x->dev[i].user, x->dev[i].device);
        holders[n] = bufs[n];
        n++;
    }
    result = !holders || !bufs ? PARLEY_ERR_OOM :
             n ? state_crypto_megolm_shared_add(x->e->host.store,
                                                x->e->account_name,
                                                x->room_id, holders, n,
                                                enc_shared_added, x) :
             PARLEY_ERR_EOF;
    for (i = 0; bufs && i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(holders);
    if (result == PARLEY_ERR_EOF)
        enc_encrypt(x);
    else if (result)
        enc_finish(x, result);
}

static void enc_discarded(int status, void *priv)
{
    struct e2ee_enc *x = priv;

    if (status) {
        enc_finish(x, status);
        return;
    }
    enc_add_holders(x);
}

/* The to-device messages went out: remember who holds the session. */
static void enc_sent(const struct http_response *resp, void *priv)
{
    struct e2ee_enc *x = priv;
    int result;

    x->e->req = NULL;
    x->e->enc = NULL;
    if (resp->status != PARLEY_OK || resp->code != 200) {
        enc_finish(x, resp->status ? resp->status : PARLEY_ERR_HTTP);
        return;
    }
    if (!x->fresh) {
        enc_add_holders(x);
        return;
    }
    result = state_crypto_megolm_out_discard(x->e->host.store,
                                             x->e->account_name, x->room_id,
                                             enc_discarded, x);
    if (result)
        enc_finish(x, result);
}

static struct e2ee_device *enc_find(struct e2ee_enc *x, const char *user,
                                    const char *device)
{
    for (size_t i = 0; i < x->n_dev; i++)
        if (!strcmp(x->dev[i].user, user) &&
            !strcmp(x->dev[i].device, device))
            return &x->dev[i];
    return NULL;
}

/* One-time keys claimed: a new Olm session per device carries the room
 * key (an Olm session per share costs a key, but needs no lookup). */
static void enc_claimed(const struct http_response *resp, void *priv)
{
    struct e2ee_enc *x = priv;
    struct matrix_e2ee *e = x->e;
    struct matrix_olm_peer me = { e->user_id, e->device_id,
                                  matrix_account_curve25519(e->acct),
                                  matrix_account_ed25519(e->acct) };
    cJSON *j, *otks, *u, *d, *k, *rk = NULL, *body, *msgs, *mu;
    char path[128], txn[40];
    size_t sent = 0;
    int result;

    e->req = NULL;
    e->enc = NULL;
    if (resp->status != PARLEY_OK || resp->code != 200) {
        enc_finish(x, resp->status ? resp->status : PARLEY_ERR_HTTP);
        return;
    }
    j = cJSON_ParseWithLength(resp->body, resp->body_len);
    otks = cJSON_GetObjectItemCaseSensitive(j, "one_time_keys");
    body = cJSON_CreateObject();
    msgs = body ? cJSON_AddObjectToObject(body, "messages") : NULL;
    result = msgs ? matrix_megolm_room_key(x->out, x->room_id, &rk) :
                    PARLEY_ERR_OOM;
    cJSON_ArrayForEach(u, otks) {
        cJSON_ArrayForEach(d, u) {
            struct e2ee_device *dv = enc_find(x, u->string, d->string);
            struct matrix_olm_peer them;
            struct matrix_olm *s = NULL;
            cJSON *c = NULL;
            char *sp = NULL;

            k = d->child;
            if (result || !dv || !dv->need || !k ||
                !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(k, "key")) ||
                !matrix_verify_json(k, dv->user, dv->device, dv->ed))
                continue;
            if (matrix_olm_outbound(e->acct, dv->curve,
                                    cJSON_GetObjectItemCaseSensitive(
                                        k, "key")->valuestring, &s))
                continue;
            them = (struct matrix_olm_peer){ dv->user, dv->device, dv->curve,
                                             dv->ed };
            if (!matrix_olm_encrypt_event(s, &me, &them, "m.room_key", rk,
                                          &c)) {
                mu = cJSON_GetObjectItemCaseSensitive(msgs, dv->user);
                if (!mu)
                    mu = cJSON_AddObjectToObject(msgs, dv->user);
                if (mu) {
                    cJSON_AddItemToObject(mu, dv->device, c);
                    c = NULL;
                    sent++;
                }
                /* Their answers may come over this session. */
                if (!matrix_olm_pickle(s, (const uint8_t *)e->pickle_key,
                                       e->pickle_key_len, &sp))
                    state_crypto_olm_save(e->host.store, e->account_name,
                                          dv->curve, matrix_olm_id(s), sp,
                                          NULL, NULL, NULL);
            }
            cJSON_Delete(c);
            free(sp);
            matrix_olm_free(s);
        }
    }
    matrix_crypto_wipe_json(rk);
    cJSON_Delete(j);
    /* Devices without a key to claim do not get the session; they are
     * marked as holders all the same, so they are not asked again for
     * every message (they can request the key). */
    if (!result) {
        snprintf(txn, sizeof(txn), "parley-%016llx%016llx",
                 (unsigned long long)random_u64(),
                 (unsigned long long)random_u64());
        snprintf(path, sizeof(path), "/sendToDevice/m.room.encrypted/%s",
                 txn);
        log_info("matrix %s: sharing a room key for %s with %zu device(s)",
                 e->account_name, x->room_id, sent);
        result = enc_http(x, "PUT", path, body, enc_sent);
    }
    cJSON_Delete(body);
    if (result)
        enc_finish(x, result);
}

static void enc_shared_loaded(int status, const char *const *items,
                              size_t n, void *priv)
{
    struct e2ee_enc *x = priv;
    cJSON *body, *otk, *u;
    size_t i, j, need = 0;
    int result;

    if (status) {
        enc_finish(x, status);
        return;
    }
    /* Someone who holds the session left the room: it must not read
     * what follows, so a new session is shared with those who stay. */
    for (i = 0; i < n && !x->fresh; i++) {
        const char *sp = strchr(items[i], ' ');
        int member = 0;

        for (j = 0; sp && j < x->n_members && !member; j++)
            member = strlen(x->members[j]) == (size_t)(sp - items[i]) &&
                     !strncmp(x->members[j], items[i],
                              (size_t)(sp - items[i]));
        if (member)
            continue;
        log_info("matrix %s: a member left %s: new room key",
                 x->e->account_name, x->room_id);
        matrix_megolm_out_free(x->out);
        x->out = NULL;
        if (matrix_megolm_out_new(&x->out) != PARLEY_OK) {
            enc_finish(x, PARLEY_ERR_OOM);
            return;
        }
        x->created_ms = now_ms();
        x->fresh = 1;
    }
    for (i = 0; i < x->n_dev; i++) {
        char want[2 * MATRIX_ID_MAX + 2];

        snprintf(want, sizeof(want), "%s %s", x->dev[i].user,
                 x->dev[i].device);
        x->dev[i].need = 1;
        for (j = 0; j < n && !x->fresh; j++)
            if (!strcmp(items[j], want))
                x->dev[i].need = 0;
        need += x->dev[i].need;
    }
    if (!need) {
        enc_encrypt(x);
        return;
    }
    body = cJSON_CreateObject();
    otk = body ? cJSON_AddObjectToObject(body, "one_time_keys") : NULL;
    for (i = 0; otk && i < x->n_dev; i++) {
        if (!x->dev[i].need)
            continue;
        u = cJSON_GetObjectItemCaseSensitive(otk, x->dev[i].user);
        if (!u)
            u = cJSON_AddObjectToObject(otk, x->dev[i].user);
        if (u)
            cJSON_AddStringToObject(u, x->dev[i].device, "signed_curve25519");
    }
    result = otk ? enc_http(x, "POST", "/keys/claim", body, enc_claimed) :
                   PARLEY_ERR_OOM;
    cJSON_Delete(body);
    if (result)
        enc_finish(x, result);
}

/* The members' devices, signature checked: everyone's but our own. */
static void enc_queried(const struct http_response *resp, void *priv)
{
    struct e2ee_enc *x = priv;
    struct matrix_e2ee *e = x->e;
    cJSON *j, *dk, *u, *d;
    char name[MATRIX_ID_MAX + 32];
    int result;

    e->req = NULL;
    e->enc = NULL;
    if (resp->status != PARLEY_OK || resp->code != 200) {
        enc_finish(x, resp->status ? resp->status : PARLEY_ERR_HTTP);
        return;
    }
    j = cJSON_ParseWithLength(resp->body, resp->body_len);
    dk = cJSON_GetObjectItemCaseSensitive(j, "device_keys");
    x->dev = calloc(E2EE_DEVICES_MAX, sizeof(*x->dev));
    result = x->dev ? PARLEY_OK : PARLEY_ERR_OOM;
    cJSON_ArrayForEach(u, dk) {
        cJSON_ArrayForEach(d, u) {
            const cJSON *keys = cJSON_GetObjectItemCaseSensitive(d, "keys");
            const cJSON *uid = cJSON_GetObjectItemCaseSensitive(d, "user_id");
            const cJSON *did = cJSON_GetObjectItemCaseSensitive(d,
                                                                "device_id");
            const cJSON *cv, *ed;
            struct e2ee_device *dv;

            if (result || !u->string || !d->string ||
                !cJSON_IsString(uid) || !cJSON_IsString(did) ||
                strcmp(uid->valuestring, u->string) ||
                strcmp(did->valuestring, d->string) ||
                (!strcmp(u->string, e->user_id) &&
                 !strcmp(d->string, e->device_id)))
                continue;
            snprintf(name, sizeof(name), "curve25519:%s", d->string);
            cv = cJSON_GetObjectItemCaseSensitive(keys, name);
            snprintf(name, sizeof(name), "ed25519:%s", d->string);
            ed = cJSON_GetObjectItemCaseSensitive(keys, name);
            if (!cJSON_IsString(cv) || !cJSON_IsString(ed) ||
                !matrix_verify_json(d, u->string, d->string, ed->valuestring))
                continue;
            if (x->n_dev >= E2EE_DEVICES_MAX) {
                result = PARLEY_ERR_TOO_LARGE;
                continue;
            }
            dv = &x->dev[x->n_dev++];
            dv->user = strdup(u->string);
            dv->device = strdup(d->string);
            dv->curve = strdup(cv->valuestring);
            dv->ed = strdup(ed->valuestring);
            if (!dv->user || !dv->device || !dv->curve || !dv->ed)
                result = PARLEY_ERR_OOM;
        }
    }
    cJSON_Delete(j);
    if (!result)
        result = state_crypto_megolm_shared_load(e->host.store,
                                                 e->account_name,
                                                 x->room_id,
                                                 enc_shared_loaded, x);
    if (result)
        enc_finish(x, result);
}

static void enc_members(const struct http_response *resp, void *priv)
{
    struct e2ee_enc *x = priv;
    cJSON *j, *joined, *m, *body, *dk;
    int result;

    x->e->req = NULL;
    x->e->enc = NULL;
    if (resp->status != PARLEY_OK || resp->code != 200) {
        enc_finish(x, resp->status ? resp->status : PARLEY_ERR_HTTP);
        return;
    }
    j = cJSON_ParseWithLength(resp->body, resp->body_len);
    joined = cJSON_GetObjectItemCaseSensitive(j, "joined");
    body = cJSON_CreateObject();
    dk = body ? cJSON_AddObjectToObject(body, "device_keys") : NULL;
    x->members = calloc((size_t)cJSON_GetArraySize(joined) + 1,
                        sizeof(*x->members));
    cJSON_ArrayForEach(m, joined) {
        if (!dk || !x->members || !m->string)
            continue;
        cJSON_AddItemToObject(dk, m->string, cJSON_CreateArray());
        x->members[x->n_members] = strdup(m->string);
        if (x->members[x->n_members])
            x->n_members++;
    }
    cJSON_Delete(j);
    result = dk ? enc_http(x, "POST", "/keys/query", body, enc_queried) :
                  PARLEY_ERR_OOM;
    cJSON_Delete(body);
    if (result)
        enc_finish(x, result);
}

static void enc_out_loaded(int status, const struct state_megolm_out *s,
                           void *priv)
{
    struct e2ee_enc *x = priv;
    struct matrix_e2ee *e = x->e;
    char rid[3 * MATRIX_ID_MAX + 1], path[MATRIX_ID_MAX * 3 + 64];
    int result = status;

    if (!result && s &&
        matrix_megolm_out_unpickle((const uint8_t *)e->pickle_key,
                                   e->pickle_key_len, s->pickle,
                                   &x->out) == PARLEY_OK) {
        /* Rotate an old or well-used session: a new one is shared. */
        if (now_ms() - s->created_ms > x->rotate_ms ||
            matrix_megolm_out_index(x->out) >= (uint32_t)x->rotate_msgs) {
            matrix_megolm_out_free(x->out);
            x->out = NULL;
        } else {
            x->created_ms = s->created_ms;
        }
    }
    if (!result && !x->out) {
        result = matrix_megolm_out_new(&x->out);
        x->created_ms = now_ms();
        x->fresh = 1;
    }
    if (!result)
        result = matrix_url_escape(x->room_id, rid, sizeof(rid));
    if (!result) {
        snprintf(path, sizeof(path), "/rooms/%s/joined_members", rid);
        result = enc_http(x, "GET", path, NULL, enc_members);
    }
    if (result)
        enc_finish(x, result);
}

/* The room's m.room.encryption: its rotation settings, when they are
 * shorter than the defaults (a longer period is not honoured). */
static void enc_state(const struct http_response *resp, void *priv)
{
    struct e2ee_enc *x = priv;
    cJSON *j;
    const cJSON *ms, *msgs;
    int result;

    x->e->req = NULL;
    x->e->enc = NULL;
    if (resp->status != PARLEY_OK ||
        (resp->code != 200 && resp->code != 404)) {
        enc_finish(x, resp->status ? resp->status : PARLEY_ERR_HTTP);
        return;
    }
    j = resp->code == 200 ? cJSON_ParseWithLength(resp->body,
                                                  resp->body_len) : NULL;
    ms = cJSON_GetObjectItemCaseSensitive(j, "rotation_period_ms");
    msgs = cJSON_GetObjectItemCaseSensitive(j, "rotation_period_msgs");
    if (cJSON_IsNumber(ms) && ms->valuedouble >= 1 &&
        ms->valuedouble < (double)x->rotate_ms)
        x->rotate_ms = (long long)ms->valuedouble;
    if (cJSON_IsNumber(msgs) && msgs->valuedouble >= 1 &&
        msgs->valuedouble < (double)x->rotate_msgs)
        x->rotate_msgs = (long)msgs->valuedouble;
    cJSON_Delete(j);
    result = state_crypto_megolm_out_load(x->e->host.store,
                                          x->e->account_name, x->room_id,
                                          enc_out_loaded, x);
    if (result)
        enc_finish(x, result);
}

int matrix_e2ee_encrypt(struct matrix_e2ee *e, const char *room_id,
                        const char *content, matrix_e2ee_cipher_fn *fn,
                        void *priv)
{
    struct e2ee_enc *x;
    char rid[3 * MATRIX_ID_MAX + 1], path[3 * MATRIX_ID_MAX + 64];
    int result;

    if (!e || !e->ready || e->enc_busy || e->uploading || e->req ||
        !room_id || !content || !fn)
        return PARLEY_ERR_STATE;
    x = calloc(1, sizeof(*x));
    if (!x)
        return PARLEY_ERR_OOM;
    x->e = e;
    x->fn = fn;
    x->priv = priv;
    x->room_id = strdup(room_id);
    x->content = cJSON_Parse(content);
    if (!x->room_id || !x->content) {
        enc_free(x);
        return PARLEY_ERR_OOM;
    }
    x->rotate_ms = E2EE_ROTATE_MS;
    x->rotate_msgs = E2EE_ROTATE_MSGS;
    result = matrix_url_escape(room_id, rid, sizeof(rid));
    if (!result) {
        snprintf(path, sizeof(path), "/rooms/%s/state/m.room.encryption/",
                 rid);
        result = enc_http(x, "GET", path, NULL, enc_state);
    }
    if (result) {
        e->enc = NULL;
        enc_free(x);
        return result;
    }
    e->enc_busy = 1;
    return PARLEY_OK;
}
