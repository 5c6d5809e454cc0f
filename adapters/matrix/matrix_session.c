/*
 * The Matrix adapter's control machine: load session -> whoami (or login)
 * -> display name -> upload filter -> E2EE keys -> load since -> /sync ->
 * walk the batch (matrix_walk.c) -> store next_batch -> /sync ...  One
 * step runs at a time; every failure backs off through mx_ctl_retry, and a
 * refused token logs in again with the password or stops the account.
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

/* ---- control machine: timers ------------------------------------------- */

void mx_on_ctl_timer(void *privdata)
{
    struct matrix *m = privdata;

    if (!m->stopped)
        mx_ctl_step(m);
}

/* Run mx_ctl_step after delay_ms (0: on the next loop turn). */
void mx_ctl_later(struct matrix *m, uint64_t delay_ms)
{
    if (m->stopped || !m->timers_open)
        return;
    loop_timer_start(m->ctl_timer, delay_ms, 0);
}

/* A control step failed: try the same state again after a backoff. */
void mx_ctl_retry(struct matrix *m, const char *what,
               const struct http_response *resp)
{
    uint64_t delay = mx_backoff(m, m->attempt);
    char code[64];
    long ra = -1;

    if (resp && resp->status == PARLEY_OK) {
        matrix_parse_error(resp->body, resp->body_len, code, sizeof(code),
                           &ra);
        if (ra < 0)
            ra = resp->retry_after_ms;
        if (resp->code == 429 && ra >= 0)
            delay = (uint64_t)ra;
        log_warn("matrix %s: %s: HTTP %ld %s, retrying in %llu ms",
                 m->mc.account, what, resp->code, code,
                 (unsigned long long)delay);
    } else {
        log_warn("matrix %s: %s: %s%s%s, retrying in %llu ms",
                 m->mc.account, what,
                 resp ? parley_status_name(resp->status) : "failed",
                 resp && resp->errstr ? ": " : "",
                 resp && resp->errstr ? resp->errstr : "",
                 (unsigned long long)delay);
    }
    if (m->attempt < 30)
        m->attempt++;
    m->ad.connected = 0;
    mx_ctl_later(m, delay);
}

/* The token was refused: log in again with the password, or stop. */
void mx_ctl_token_refused(struct matrix *m)
{
    m->token_ok = 0;
    m->token_bad = 0;
    m->ad.connected = 0;
    if (!m->password) {
        mx_error(m, 1, "the access token was refused (M_UNKNOWN_TOKEN) and "
                 "no password_env is configured: set a new token in %s",
                 m->mc.access_token_env ? m->mc.access_token_env
                                        : "the environment");
        return;
    }
    log_warn("matrix %s: access token refused, logging in again",
             m->mc.account);
    m->state = MX_LOGIN;
    mx_ctl_later(m, 0);
}

/* ---- control machine: steps ------------------------------------------- */

static void session_loaded(int status, const struct state_session *s,
                           void *priv)
{
    struct matrix *m = priv;

    if (m->stopped)
        return;
    if (status != PARLEY_OK) {
        mx_ctl_retry(m, "loading session from Redis", NULL);
        return;
    }
    /* A session of another user (user_id changed in the config) is not
     * ours to use: log in afresh instead. */
    if (s && s->user_id && strcasecmp(s->user_id, m->mc.user_id) != 0) {
        log_info("matrix %s: the stored session is %s's; not using it",
                 m->mc.account, s->user_id);
        s = NULL;
    }
    if (s && s->access_token && !m->env_token &&
        strlen(s->access_token) < sizeof(m->token) &&
        matrix_token_set(m->token, sizeof(m->token), s->access_token,
                         NULL) != PARLEY_OK) {
        mx_error(m, 1, "cannot register the stored access token for log "
                 "redaction: not using it");
        return;
    }
    if (s && s->device_id && strlen(s->device_id) < sizeof(m->device_id))
        snprintf(m->device_id, sizeof(m->device_id), "%s", s->device_id);
    m->attempt = 0;
    m->state = m->token[0] ? MX_WHOAMI : MX_LOGIN;
    if (!m->token[0] && !m->password) {
        mx_error(m, 1, "no access token (%s unset, none in Redis) and no "
                 "password_env", m->mc.access_token_env
                                 ? m->mc.access_token_env : "-");
        return;
    }
    mx_ctl_step(m);
}

static void whoami_done(const struct http_response *resp, void *priv)
{
    struct matrix *m = priv;
    char user[MATRIX_ID_MAX + 1], dev[MX_TOKEN_MAX];

    m->ctl_req = NULL;
    if (mx_is_bad_token(resp)) {
        mx_ctl_token_refused(m);
        return;
    }
    if (resp->status != PARLEY_OK || resp->code != 200) {
        mx_ctl_retry(m, "whoami", resp);
        return;
    }
    if (matrix_parse_session(resp->body, resp->body_len, user, sizeof(user),
                             NULL, 0, NULL, 0) != PARLEY_OK) {
        mx_ctl_retry(m, "whoami (bad answer)", NULL);
        return;
    }
    if (strcasecmp(user, m->mc.user_id) != 0) {
        mx_error(m, 1, "the access token belongs to %s, not to the "
                 "configured user_id %s", user, m->mc.user_id);
        return;
    }
    mx_set_user_id(m, user);
    /* Application-service tokens have no device. */
    if (matrix_parse_session(resp->body, resp->body_len, NULL, 0, dev,
                             sizeof(dev), NULL, 0) == PARLEY_OK)
        memcpy(m->device_id, dev, strlen(dev) + 1);
    m->token_ok = 1;
    m->attempt = 0;
    m->state = m->display_name[0] ? MX_FILTER : MX_PROFILE;
    log_info("matrix %s: signed in (device %s)", m->mc.account,
             m->device_id[0] ? m->device_id : "-");
    mx_ctl_step(m);
}

static void login_done(const struct http_response *resp, void *priv)
{
    struct matrix *m = priv;
    char user[MATRIX_ID_MAX + 1], token[MX_TOKEN_MAX];
    int result;

    m->ctl_req = NULL;
    if (resp->status == PARLEY_OK && resp->code == 403) {
        mx_error(m, 1, "login refused (HTTP 403): check the password in %s",
                 m->mc.password_env ? m->mc.password_env : "-");
        return;
    }
    if (resp->status != PARLEY_OK || resp->code != 200) {
        mx_ctl_retry(m, "login", resp);
        return;
    }
    if (matrix_parse_session(resp->body, resp->body_len, user, sizeof(user),
                             m->device_id, sizeof(m->device_id), token,
                             sizeof(token)) != PARLEY_OK) {
        explicit_bzero(token, sizeof(token));
        mx_ctl_retry(m, "login (bad answer)", NULL);
        return;
    }
    result = matrix_token_set(m->token, sizeof(m->token), token,
                              m->env_token);
    explicit_bzero(token, sizeof(token));
    if (result != PARLEY_OK) {
        mx_error(m, 1, "cannot register the new access token for log "
                 "redaction: not using it");
        return;
    }
    if (strcasecmp(user, m->mc.user_id) != 0)
        log_warn("matrix %s: logged in as %s, not as the configured %s",
                 m->mc.account, user, m->mc.user_id);
    mx_set_user_id(m, user);
    log_info("matrix %s: logged in (device %s)", m->mc.account,
             m->device_id);
    m->token_ok = 1;
    m->attempt = 0;
    m->state = MX_SAVE_SESSION;
    mx_ctl_step(m);
}

static void session_saved(int status, void *priv)
{
    struct matrix *m = priv;

    if (m->stopped)
        return;
    if (status != PARLEY_OK) {
        mx_ctl_retry(m, "saving session to Redis", NULL);
        return;
    }
    m->attempt = 0;
    m->state = m->display_name[0] ? MX_FILTER : MX_PROFILE;
    mx_ctl_step(m);
}

static void profile_done(const struct http_response *resp, void *priv)
{
    struct matrix *m = priv;
    cJSON *c;

    m->ctl_req = NULL;
    if (mx_is_bad_token(resp)) {
        mx_ctl_token_refused(m);
        return;
    }
    /* Optional: without a display name, the bot.name from the config. */
    if (resp->status == PARLEY_OK && resp->code == 200 &&
        (c = cJSON_ParseWithLength(resp->body, resp->body_len)) != NULL) {
        const cJSON *dn = cJSON_GetObjectItemCaseSensitive(c, "displayname");

        if (cJSON_IsString(dn) && dn->valuestring &&
            strlen(dn->valuestring) < sizeof(m->display_name))
            snprintf(m->display_name, sizeof(m->display_name), "%s",
                     dn->valuestring);
        cJSON_Delete(c);
    }
    if (!m->display_name[0] && m->cfg && m->cfg->bot.name)
        snprintf(m->display_name, sizeof(m->display_name), "%s",
                 m->cfg->bot.name);
    if (!m->display_name[0])
        snprintf(m->display_name, sizeof(m->display_name), "%s",
                 m->localpart);
    m->state = MX_FILTER;
    mx_ctl_step(m);
}

static void filter_done(const struct http_response *resp, void *priv)
{
    struct matrix *m = priv;
    cJSON *c;
    const cJSON *id;

    m->ctl_req = NULL;
    if (mx_is_bad_token(resp)) {
        mx_ctl_token_refused(m);
        return;
    }
    if (resp->status != PARLEY_OK || resp->code != 200) {
        mx_ctl_retry(m, "filter upload", resp);
        return;
    }
    c = cJSON_ParseWithLength(resp->body, resp->body_len);
    id = c ? cJSON_GetObjectItemCaseSensitive(c, "filter_id") : NULL;
    if (!cJSON_IsString(id) || !id->valuestring || !id->valuestring[0] ||
        strlen(id->valuestring) >= sizeof(m->filter_id)) {
        cJSON_Delete(c);
        mx_ctl_retry(m, "filter upload (bad answer)", NULL);
        return;
    }
    snprintf(m->filter_id, sizeof(m->filter_id), "%s", id->valuestring);
    cJSON_Delete(c);
    m->attempt = 0;
    m->state = m->e2ee && !m->e2ee_tried ? MX_CRYPTO :
               m->since ? MX_SYNC : MX_LOAD_SINCE;
    mx_ctl_step(m);
}

static void e2ee_started(int status, void *priv)
{
    struct matrix *m = priv;

    if (m->stopped)
        return;
    if (status == PARLEY_ERR_CONFIG) {
        /* Logged by matrix_e2ee (the store cannot be opened with this
         * key): go on without encryption rather than not at all. */
        matrix_e2ee_free(m->e2ee);
        m->e2ee = NULL;
    } else if (status != PARLEY_OK) {
        mx_ctl_retry(m, "end-to-end encryption keys", NULL);
        return;
    }
    m->e2ee_tried = 1;
    m->attempt = 0;
    m->state = m->since ? MX_SYNC : MX_LOAD_SINCE;
    mx_ctl_step(m);
}

static void since_loaded(int status, const char *next_batch, void *priv)
{
    struct matrix *m = priv;

    if (m->stopped)
        return;
    if (status != PARLEY_OK) {
        mx_ctl_retry(m, "loading the sync token from Redis", NULL);
        return;
    }
    free(m->since);
    m->since = NULL;
    if (next_batch) {
        m->since = strdup(next_batch);
        if (!m->since) {
            mx_ctl_retry(m, "loading the sync token (out of memory)", NULL);
            return;
        }
    }
    m->initial = m->since == NULL;
    if (m->initial)
        log_info("matrix %s: first sync of this account: earlier messages "
                 "are not answered", m->mc.account);
    m->attempt = 0;
    m->state = MX_SYNC;
    mx_ctl_step(m);
}

static void sync_done(const struct http_response *resp, void *priv)
{
    struct matrix *m = priv;
    struct matrix_ident me;
    char err[128];
    int result;

    m->ctl_req = NULL;
    if (mx_is_bad_token(resp)) {
        mx_ctl_token_refused(m);
        return;
    }
    if (resp->status != PARLEY_OK || resp->code != 200) {
        mx_ctl_retry(m, "sync", resp);
        return;
    }
    me.user_id = m->user_id;
    me.localpart = m->localpart;
    me.display_name = m->display_name[0] ? m->display_name : NULL;
    matrix_batch_free(&m->batch);
    result = matrix_sync_parse(resp->body, resp->body_len, &me, &m->batch,
                               err, sizeof(err));
    if (result != PARLEY_OK) {
        matrix_batch_free(&m->batch);
        log_warn("matrix %s: %s", m->mc.account, err);
        mx_ctl_retry(m, "sync (unusable answer)", NULL);
        return;
    }
    if (!m->ad.connected)
        log_info("matrix %s: syncing", m->mc.account);
    m->ad.connected = 1;
    m->ad.err = 0;
    m->ad.errstr[0] = '\0';
    m->attempt = 0;
    if (m->batch.n_limited && !m->initial)
        log_warn("matrix %s: %zu room(s) had more new events than "
                 "timeline_limit; the older ones are not answered",
                 m->mc.account, m->batch.n_limited);
    if (m->batch.n_dropped)
        log_warn("matrix %s: %zu events over MATRIX_SYNC_ITEMS_MAX dropped",
                 m->mc.account, m->batch.n_dropped);
    matrix_e2ee_sync_counts(m->e2ee, m->batch.otk_count,
                            m->batch.fallback_unused);
    m->walk_i = 0;
    m->walk_member_i = 0;
    m->walk_rooms_done = 0;
    m->batch_serial++;
    if (m->batch.n_to_device_dropped)
        log_warn("matrix %s: %zu to-device events over MATRIX_TO_DEVICE_MAX "
                 "dropped", m->mc.account, m->batch.n_to_device_dropped);
    if (m->batch.n_to_device && matrix_e2ee_ready(m->e2ee)) {
        m->state = MX_TO_DEVICE;
        mx_ctl_step(m);
        return;
    }
    m->state = MX_WALK;
    mx_walk(m);
}

/* The batch's room keys are stored: its events may be decrypted. */
static void to_device_done(int status, void *priv)
{
    struct matrix *m = priv;

    if (m->stopped)
        return;
    if (status) {
        /* The sync position has not moved: the keys come again. */
        mx_ctl_retry(m, "storing room keys in Redis", NULL);
        return;
    }
    m->state = MX_WALK;
    mx_walk(m);
}

static void since_saved(int status, void *priv)
{
    struct matrix *m = priv;

    if (m->stopped)
        return;
    if (status != PARLEY_OK) {
        mx_ctl_retry(m, "saving the sync token to Redis", NULL);
        return;
    }
    free(m->since);
    m->since = m->batch.next_batch;
    m->batch.next_batch = NULL;
    matrix_batch_free(&m->batch);
    m->initial = 0;
    m->attempt = 0;
    m->state = MX_SYNC;
    mx_ctl_step(m);
}

/* Path for the sync request into buf. */
static int sync_path(struct matrix *m, char *buf, size_t len)
{
    char f[3 * sizeof(m->filter_id)], s[3 * 4096 + 1];
    int timeout = m->initial ? 0 : m->mc.sync_timeout_ms;
    int n;

    if (matrix_url_escape(m->filter_id, f, sizeof(f)) != PARLEY_OK)
        return PARLEY_ERR_TOO_LARGE;
    s[0] = '\0';
    if (m->since &&
        matrix_url_escape(m->since, s, sizeof(s)) != PARLEY_OK)
        return PARLEY_ERR_TOO_LARGE;
    n = snprintf(buf, len, "/sync?filter=%s&timeout=%d%s%s", f, timeout,
                 m->since ? "&since=" : "", s);
    return n > 0 && (size_t)n < len ? PARLEY_OK : PARLEY_ERR_TOO_LARGE;
}

void mx_ctl_step(struct matrix *m)
{
    char path[MX_URL_MAX], id[3 * MATRIX_ID_MAX + 1];
    struct state_session sess;
    char *body = NULL;
    int result = PARLEY_OK;

    if (m->stopped || m->state == MX_FATAL)
        return;
    /* Redis first: without it nothing can be made durable, so wait (the
     * messages wait on the homeserver meanwhile). */
    if (!m->store || !store_is_up(m->store)) {
        if (m->state != MX_LOGIN && m->state != MX_WHOAMI) {
            mx_ctl_later(m, MX_REDIS_POLL_MS);
            return;
        }
    }
    if (m->token_bad && m->state == MX_SYNC) {
        mx_ctl_token_refused(m);
        return;
    }
    switch (m->state) {
    case MX_IDLE:
    case MX_LOAD_SESSION:
        m->state = MX_LOAD_SESSION;
        if (m->env_token) {
            snprintf(m->token, sizeof(m->token), "%s", m->env_token);
        }
        if (state_session_load(m->store, m->mc.account, session_loaded,
                               m) != PARLEY_OK)
            mx_ctl_retry(m, "loading session from Redis", NULL);
        return;
    case MX_WHOAMI:
        result = mx_http(m, "GET", "/account/whoami", NULL, 1,
                         MX_REQUEST_TIMEOUT_MS, 64 * 1024, whoami_done, m,
                         &m->ctl_req);
        break;
    case MX_LOGIN:
        /* The old token is dead; its redaction is dropped (log.h). */
        matrix_token_set(m->token, sizeof(m->token), "", m->env_token);
        if (matrix_login_body(m->mc.user_id, m->password,
                              m->device_id[0] ? m->device_id : NULL,
                              m->mc.device_name, &body) != PARLEY_OK) {
            mx_ctl_retry(m, "login (out of memory)", NULL);
            return;
        }
        result = mx_http(m, "POST", "/login", body, 0,
                         MX_REQUEST_TIMEOUT_MS, 64 * 1024, login_done, m,
                         &m->ctl_req);
        explicit_bzero(body, strlen(body));
        free(body);
        break;
    case MX_SAVE_SESSION:
        sess.access_token = m->token;
        sess.device_id = m->device_id;
        sess.user_id = m->user_id;
        if (state_session_save(m->store, m->mc.account, &sess, session_saved,
                               m) != PARLEY_OK)
            mx_ctl_retry(m, "saving session to Redis", NULL);
        return;
    case MX_PROFILE:
        if (matrix_url_escape(m->user_id, id, sizeof(id)) != PARLEY_OK)
            return;
        snprintf(path, sizeof(path), "/profile/%s/displayname", id);
        result = mx_http(m, "GET", path, NULL, 1, MX_REQUEST_TIMEOUT_MS,
                         64 * 1024, profile_done, m, &m->ctl_req);
        break;
    case MX_FILTER:
        if (matrix_url_escape(m->user_id, id, sizeof(id)) != PARLEY_OK ||
            matrix_filter_body(m->mc.timeline_limit, &body) != PARLEY_OK) {
            mx_ctl_retry(m, "filter", NULL);
            return;
        }
        snprintf(path, sizeof(path), "/user/%s/filter", id);
        result = mx_http(m, "POST", path, body, 1, MX_REQUEST_TIMEOUT_MS,
                         64 * 1024, filter_done, m, &m->ctl_req);
        free(body);
        break;
    case MX_CRYPTO:
        if (!m->device_id[0]) {
            log_warn("matrix %s: the token has no device (application "
                     "service?): end-to-end encryption is off",
                     m->mc.account);
            e2ee_started(PARLEY_ERR_CONFIG, m);
            return;
        }
        if (matrix_e2ee_start(m->e2ee, m->user_id, m->device_id,
                              e2ee_started, m) != PARLEY_OK)
            mx_ctl_retry(m, "loading the crypto store from Redis", NULL);
        return;
    case MX_LOAD_SINCE:
        if (state_sync_load(m->store, m->mc.account, since_loaded, m) !=
            PARLEY_OK)
            mx_ctl_retry(m, "loading the sync token from Redis", NULL);
        return;
    case MX_SYNC:
        if (sync_path(m, path, sizeof(path)) != PARLEY_OK) {
            mx_error(m, 1, "sync token too long");
            return;
        }
        result = mx_http(m, "GET", path, NULL, 1,
                         (long)m->mc.sync_timeout_ms + MX_SYNC_SLACK_MS,
                         MATRIX_SYNC_BODY_MAX, sync_done, m, &m->ctl_req);
        break;
    case MX_TO_DEVICE:
        result = matrix_e2ee_to_device(m->e2ee, &m->batch, to_device_done,
                                       m);
        if (result == PARLEY_ERR_EOF) {
            m->state = MX_WALK;
            mx_walk(m);
        } else if (result) {
            mx_ctl_retry(m, "storing room keys in Redis", NULL);
        }
        return;
    case MX_WALK:
    case MX_MEMBERS:
        mx_walk(m);
        return;
    case MX_SAVE_SINCE:
        if (state_sync_save(m->store, m->mc.account, m->batch.next_batch,
                            since_saved, m) != PARLEY_OK)
            mx_ctl_retry(m, "saving the sync token to Redis", NULL);
        return;
    case MX_FATAL:
    case MX_STOPPED:
        return;
    }
    if (result != PARLEY_OK)
        mx_ctl_retry(m, "starting a request", NULL);
}
