/*
 * The Matrix adapter's entry points and shared helpers: creation, start,
 * stop and free, the adapter_ops table, typing notifications, the
 * fire-and-forget requests (typing, join, leave), and the helpers every
 * part uses (errors, backoff, the room table, mx_http).  The control
 * machine is in matrix_session.c, the batch walk in matrix_walk.c and the
 * send queues in matrix_send.c; matrix_adapter_int.h describes the whole.
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
#include "matrix_media.h"
#include "matrix_poison.h"
#include "metrics.h"
#include "random.h"
#include "router.h"
#include "state.h"
#include "status.h"
#include "store.h"

/* ---- small helpers ----------------------------------------------------- */

void mx_error(struct matrix *m, int fatal, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(m->ad.errstr, sizeof(m->ad.errstr), fmt, ap);
    va_end(ap);
    log_redact(m->ad.errstr, sizeof(m->ad.errstr));
    m->ad.err = PARLEY_ERR_OTHER;
    if (fatal) {
        m->state = MX_FATAL;
        m->ad.connected = 0;
        log_error("matrix %s: %s", m->mc.account, m->ad.errstr);
    } else {
        log_warn("matrix %s: %s", m->mc.account, m->ad.errstr);
    }
}

/* Take id (a valid "@local:server", checked by the config or the
 * server's answer) as the bot's user id, and its localpart. */
void mx_set_user_id(struct matrix *m, const char *id)
{
    const char *colon = strchr(id, ':');
    size_t n = colon && colon > id ? (size_t)(colon - id - 1) : 0;

    if (strcmp(id, m->user_id) != 0 && m->user_id[0])
        log_info("matrix %s: the homeserver names the bot %s",
                 m->mc.account, id);
    snprintf(m->user_id, sizeof(m->user_id), "%s", id);
    if (n >= sizeof(m->localpart))
        n = sizeof(m->localpart) - 1;
    memcpy(m->localpart, id + 1, n);
    m->localpart[n] = '\0';
}

/* Exponential backoff with jitter: half to all of base * 2^attempt. */
uint64_t mx_backoff(struct matrix *m, int attempt)
{
    struct backoff_policy p = {
        m->mc.backoff_base_ms, m->mc.backoff_max_ms, BACKOFF_JITTER_UPPER
    };

    return (uint64_t)backoff_delay_ms(&p, attempt, -1, random_u64());
}

void mx_ring_add(char **ring, size_t *pos, const char *id)
{
    char *d = strdup(id);

    if (!d)
        return;                 /* only a hint: losing one is harmless */
    free(ring[*pos]);
    ring[*pos] = d;
    *pos = (*pos + 1) % MX_RING;
}

int mx_ring_has(char *const *ring, const char *id)
{
    size_t i;

    if (!id)
        return 0;
    for (i = 0; i < MX_RING; i++)
        if (ring[i] && strcmp(ring[i], id) == 0)
            return 1;
    return 0;
}

struct mx_room *mx_room_get(struct matrix *m, const char *room_id,
                         int create)
{
    struct mx_room *r;

    for (r = m->rooms; r; r = r->next)
        if (strcmp(r->room_id, room_id) == 0)
            return r;
    if (!create || m->n_rooms >= MX_ROOMS_MAX)
        return NULL;
    r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->room_id = strdup(room_id);
    if (!r->room_id) {
        free(r);
        return NULL;
    }
    r->m = m;
    r->members = -1;
    r->encrypted = -1;
    r->next = m->rooms;
    m->rooms = r;
    m->n_rooms++;
    return r;
}

/* Authorization header for the current token, into buf. */
static const char *auth_header(struct matrix *m, char *buf, size_t len)
{
    int n = snprintf(buf, len, "Authorization: Bearer %s", m->token);

    return n > 0 && (size_t)n < len ? buf : NULL;
}

/*
 * Start a request to path (already escaped) on the homeserver.  With
 * auth, the access token goes in a header.  Returns a loop status.
 */
int mx_http(struct matrix *m, const char *method, const char *path,
            const char *body, int auth, long timeout_ms,
            size_t max_body, http_done_fn *done, void *priv,
            struct http_request **out)
{
    char url[MX_URL_MAX];
    char hdr[MX_TOKEN_MAX + 64];
    const char *headers[2];
    struct http_options opt;
    size_t nh = 0;
    int n, result;

    n = snprintf(url, sizeof(url), "%s/_matrix/client/v3%s",
                 m->mc.homeserver, path);
    if (n < 0 || (size_t)n >= sizeof(url))
        return PARLEY_ERR_TOO_LARGE;
    headers[nh++] = "Content-Type: application/json";
    if (auth) {
        headers[nh] = auth_header(m, hdr, sizeof(hdr));
        if (!headers[nh])
            return PARLEY_ERR_TOO_LARGE;
        nh++;
    }
    memset(&opt, 0, sizeof(opt));
    opt.method = method;
    opt.url = url;
    opt.headers = headers;
    opt.n_headers = nh;
    opt.body = body;
    opt.body_len = body ? strlen(body) : 0;
    opt.connect_timeout_ms = 10000;
    opt.timeout_ms = timeout_ms;
    opt.max_body = max_body;
    result = loop_http_start(m->loop, &opt, done, priv, out);
    explicit_bzero(hdr, sizeof(hdr));
    return result;
}

/* Whether resp is a 401 M_UNKNOWN_TOKEN (or any 401: the token is bad). */
int mx_is_bad_token(const struct http_response *resp)
{
    return resp->status == PARLEY_OK && resp->code == 401;
}

/* matrix_e2ee's requests go through mx_http with the account's token. */
static int e2ee_http(void *ctx, const char *method, const char *path,
                     const char *body, http_done_fn *done, void *priv,
                     struct http_request **out)
{
    return mx_http(ctx, method, path, body, 1, MX_REQUEST_TIMEOUT_MS,
                   64 * 1024, done, priv, out);
}

static void misc_done(const struct http_response *resp, void *priv);

/* Start a fire-and-forget request; failures are logged by misc_done. */
void mx_misc_start(struct matrix *m, const char *what,
                const char *room_id, const char *method,
                const char *path, const char *body)
{
    struct mx_misc *x = calloc(1, sizeof(*x));

    if (!x)
        return;
    x->m = m;
    snprintf(x->what, sizeof(x->what), "%s", what);
    snprintf(x->room_id, sizeof(x->room_id), "%s", room_id);
    if (mx_http(m, method, path, body, 1, MX_REQUEST_TIMEOUT_MS, 64 * 1024,
                misc_done, x, &x->req) != PARLEY_OK) {
        log_warn("matrix %s: %s %s: cannot start the request",
                 m->mc.account, what, room_id);
        free(x);
        return;
    }
    x->next = m->misc;
    if (m->misc)
        m->misc->prev = x;
    m->misc = x;
}

static void misc_unlink(struct matrix *m, struct mx_misc *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        m->misc = x->next;
    if (x->next)
        x->next->prev = x->prev;
}

static void misc_done(const struct http_response *resp, void *priv)
{
    struct mx_misc *x = priv;
    struct matrix *m = x->m;

    misc_unlink(m, x);
    if (resp->status != PARLEY_OK || resp->code != 200) {
        log_warn("matrix %s: %s %s failed: %s (HTTP %ld)", m->mc.account,
                 x->what, x->room_id, parley_status_name(resp->status),
                 resp->code);
        if (mx_is_bad_token(resp))
            m->token_bad = 1;
    } else if (strcmp(x->what, "join") == 0) {
        log_info("matrix %s: joined %s", m->mc.account, x->room_id);
    }
    free(x);
}

static void typing_send(struct matrix *m, const char *room_id, int on)
{
    char rid[3 * MATRIX_ID_MAX + 1], uid[3 * MATRIX_ID_MAX + 1];
    char path[MX_URL_MAX], body[64];

    if (m->stopped || !m->token_ok ||
        matrix_url_escape(room_id, rid, sizeof(rid)) ||
        matrix_url_escape(m->user_id, uid, sizeof(uid)))
        return;
    snprintf(path, sizeof(path), "/rooms/%s/typing/%s", rid, uid);
    if (on)
        snprintf(body, sizeof(body), "{\"typing\":true,\"timeout\":%d}",
                 MX_TYPING_TIMEOUT_MS);
    else
        snprintf(body, sizeof(body), "{\"typing\":false}");
    mx_misc_start(m, "typing", room_id, "PUT", path, body);
}

static void on_typing_timer(void *privdata)
{
    struct matrix *m = privdata;
    struct mx_room *r;

    for (r = m->rooms; r; r = r->next)
        if (r->typing)
            typing_send(m, r->room_id, 1);
}

static void matrix_typing(struct adapter *ad, const char *room, int on)
{
    struct matrix *m = ad->priv;
    char room_id[MATRIX_ID_MAX + 1];
    const char *thread;
    struct mx_room *r;

    if (m->stopped ||
        matrix_room_split(room, room_id, sizeof(room_id), &thread))
        return;
    r = mx_room_get(m, room_id, 1);
    if (r)
        r->typing = on;
    typing_send(m, room_id, on);
}

/* ---- life cycle -------------------------------------------------------- */

/* Release the three timers (any may be NULL); safe from their callbacks. */
static void mx_timers_free(struct matrix *m)
{
    loop_timer_free(m->ctl_timer);
    loop_timer_free(m->send_timer);
    loop_timer_free(m->typing_timer);
    m->ctl_timer = m->send_timer = m->typing_timer = NULL;
    m->timers_open = 0;
}

static int matrix_start(struct adapter *ad)
{
    struct matrix *m = ad->priv;
    char err[PARLEY_ERRSTR_LEN];

    if (m->mc.access_token_env &&
        config_secret_read(m->mc.access_token_env, &m->env_token, err,
                           sizeof(err)) != PARLEY_OK)
        log_warn("matrix %s: %s", m->mc.account, err);
    if (m->mc.password_env &&
        config_secret_read(m->mc.password_env, &m->password, err,
                           sizeof(err)) != PARLEY_OK)
        log_warn("matrix %s: %s", m->mc.account, err);
    if (m->env_token && !m->env_token[0]) {
        free(m->env_token);
        m->env_token = NULL;
    }
    if (m->password && !m->password[0]) {
        free(m->password);
        m->password = NULL;
    }
    /* Fail closed: a secret the logger cannot redact is not used. */
    if ((m->env_token && log_add_secret(m->env_token) != PARLEY_OK) ||
        (m->password && log_add_secret(m->password) != PARLEY_OK)) {
        snprintf(ad->errstr, sizeof(ad->errstr), "matrix %s: cannot "
                 "register the access token or password for log redaction",
                 m->mc.account);
        return PARLEY_ERR_CONFIG;
    }
    {
        struct matrix_e2ee_host host = { m, e2ee_http, m->store,
                                         m->mc.account,
                                         m->mc.share_verified };

        if (matrix_e2ee_new(&host, m->mc.crypto_key_env, &m->e2ee, err,
                            sizeof(err)) != PARLEY_OK)
            log_error("matrix %s: %s: end-to-end encryption is off",
                      m->mc.account, err);
    }
    if (!m->env_token && !m->password)
        log_info("matrix %s: neither %s nor %s is set; using the session "
                 "stored in Redis", m->mc.account,
                 m->mc.access_token_env ? m->mc.access_token_env : "-",
                 m->mc.password_env ? m->mc.password_env : "-");
    m->ctl_timer = loop_timer_new(m->loop, mx_on_ctl_timer, m);
    m->send_timer = loop_timer_new(m->loop, mx_on_send_timer, m);
    m->typing_timer = loop_timer_new(m->loop, on_typing_timer, m);
    if (!m->ctl_timer || !m->send_timer || !m->typing_timer) {
        mx_timers_free(m);
        snprintf(ad->errstr, sizeof(ad->errstr), "cannot create timers");
        return PARLEY_ERR_OOM;
    }
    m->timers_open = 1;
    loop_timer_start(m->typing_timer, MX_TYPING_RENEW_MS,
                     MX_TYPING_RENEW_MS);
    m->state = MX_LOAD_SESSION;
    mx_ctl_step(m);
    return PARLEY_OK;
}

static void matrix_stop(struct adapter *ad)
{
    struct matrix *m = ad->priv;
    struct mx_room *r;

    if (m->stopped)
        return;
    m->stopped = 1;
    m->state = MX_STOPPED;
    ad->connected = 0;
    if (m->ctl_req) {
        loop_http_cancel(m->ctl_req);
        m->ctl_req = NULL;
    }
    matrix_e2ee_stop(m->e2ee);
    matrix_media_stop(m);
    while (m->misc) {
        struct mx_misc *x = m->misc;

        misc_unlink(m, x);
        loop_http_cancel(x->req);
        free(x);
    }
    /* Unsent answers: done gets an error; their jobs stay in Redis and
     * are resumed on the next start. */
    for (r = m->rooms; r; r = r->next) {
        struct mx_send *s;

        for (s = r->head; s; s = s->next) {
            if (s->req) {
                loop_http_cancel(s->req);
                s->req = NULL;
            }
        }
        if (r->enc_req) {
            loop_http_cancel(r->enc_req);
            r->enc_req = NULL;
        }
        r->in_flight = 0;
        while (r->head)
            mx_send_finish(r, r->head, PARLEY_ERR_STATE);
    }
    mx_streams_stop(m);
    mx_timers_free(m);
}

static void matrix_free(struct adapter *ad)
{
    struct matrix *m;
    size_t i;

    if (!ad)
        return;
    m = ad->priv;
    mx_timers_free(m);          /* already done by stop, unless never */
    while (m->rooms) {
        struct mx_room *r = m->rooms;

        m->rooms = r->next;
        while (r->head) {
            struct mx_send *s = r->head;

            r->head = s->next;
            mx_send_free(s);
        }
        matrix_members_free(r->names);
        free(r->room_id);
        free(r);
    }
    for (i = 0; i < MX_RING; i++) {
        free(m->mine[i]);
        free(m->joins[i]);
        free(m->asked[i]);
    }
    mx_streams_free(m);
    matrix_batch_free(&m->batch);
    matrix_batch_free(&m->dec);
    free(m->since);
    matrix_e2ee_free(m->e2ee);
    mx_utd_free(m);
    if (m->password) {
        explicit_bzero(m->password, strlen(m->password));
        free(m->password);
    }
    if (m->env_token) {
        explicit_bzero(m->env_token, strlen(m->env_token));
        free(m->env_token);
    }
    explicit_bzero(m->token, sizeof(m->token));
    matrix_config_free(&m->mc);
    free(m);
}

static const struct adapter_ops matrix_ops = {
    .type = "matrix",
    .start = matrix_start,
    .send = matrix_send,
    .typing = matrix_typing,
    .fetch = matrix_media_fetch,
    .progress = matrix_progress,
    .stop = matrix_stop,
    .free = matrix_free,
};

int matrix_adapter_create(struct adapter **out,
                          const struct adapter_env *env, void *setting,
                          char *err, size_t errlen)
{
    struct matrix *m;
    int result;

    *out = NULL;
    m = calloc(1, sizeof(*m));
    if (!m) {
        snprintf(err, errlen, "matrix adapter: out of memory");
        return PARLEY_ERR_OOM;
    }
    result = matrix_config_parse(&m->mc, setting, err, errlen);
    if (result != PARLEY_OK) {
        if (result == PARLEY_ERR_OOM)
            snprintf(err, errlen, "matrix adapter: out of memory");
        matrix_config_free(&m->mc);
        free(m);
        return result;
    }
    mx_set_user_id(m, m->mc.user_id);
    m->loop = env->loop;
    m->store = env->store;
    m->cfg = env->cfg;
    m->ad.ops = &matrix_ops;
    m->ad.loop = env->loop;
    m->ad.account = m->mc.account;
    m->ad.priv = m;
    *out = &m->ad;
    return PARLEY_OK;
}
