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
 *
 * To-device intake and decryption are in matrix_e2ee_recv.c, encryption
 * of room events (key sharing and rotation) in matrix_e2ee_send.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "log.h"
#include "matrix.h"
#include "matrix_crypto.h"
#include "matrix_e2ee.h"
#include "matrix_e2ee_private.h"
#include "metrics.h"
#include "state.h"
#include "status.h"

/* Top up when the server holds fewer than this many one-time keys. */
#define E2EE_OTK_LOW (MATRIX_E2EE_OTK_TARGET / 2)
/* The answer to /keys/upload is a few counters. */
#define E2EE_UPLOAD_ANSWER_MAX (64 * 1024)

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

void matrix_e2ee_stop(struct matrix_e2ee *e)
{
    if (!e)
        return;
    e->stopped = 1;
    if (e->req) {
        loop_http_cancel(e->req);
        e->req = NULL;
    }
    if (e->kr_req) {
        loop_http_cancel(e->kr_req);
        e->kr_req = NULL;
    }
    /* An encryption waiting on that request never hears back. */
    if (e->enc) {
        e2ee_enc_free(e->enc);
        e->enc = NULL;
        e->enc_busy = 0;
    }
}

void matrix_e2ee_free(struct matrix_e2ee *e)
{
    if (!e)
        return;
    matrix_e2ee_stop(e);
    e2ee_td_clear(e);
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
    metrics_e2ee_store(status == PARLEY_OK);
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
            metrics_e2ee_store(0);      /* /healthz says so until fixed */
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
