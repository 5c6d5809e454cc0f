/*
 * The Matrix adapter: a client-server API client on parley's one loop.
 * Every request goes through loop_http_start (the shared curl multi
 * handle), timers are uv timers, and Redis holds what must survive a
 * restart: session:<account> (access token, device id) and sync:<account>
 * (next_batch).
 *
 * One control machine runs the account: load session -> whoami (or login)
 * -> display name -> upload filter -> load since -> /sync -> hand the
 * batch to the router -> store next_batch -> /sync ...  Exactly once
 * (DESIGN.md): each event of a batch goes through router_submit_durable
 * one after the other, and next_batch is written only after every one was
 * accepted with PARLEY_OK; if Redis fails, the walk waits and resumes at
 * the same event, and a crash replays the batch from the old token (the
 * router's seen:<id> drops what it already has).  An event refused for a
 * reason that cannot pass (matrix_poison.h) is skipped after a few tries
 * instead, so one bad event cannot stop the account.  Answers are sent with a
 * txnId derived from the router's txn id (itself from the event id) and
 * the same access token and device as before a restart, so the homeserver
 * drops a resend of an answer that already went out.
 *
 * Sends are a FIFO per room with up to MX_SEND_PARALLEL in flight; 429 waits
 * retry_after_ms or Retry-After, 5xx and network errors back off with
 * jitter, other 4xx give up (logged, done gets an error).  Every failure
 * path of the control machine backs off too: there is no tight loop.
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
#include "matrix_e2ee.h"
#include "matrix_poison.h"
#include "metrics.h"
#include "random.h"
#include "router.h"
#include "state.h"
#include "status.h"
#include "store.h"

/* Sends retried for 5xx and network errors before giving up (429s do
 * not count: the server told us exactly when to come back). */
#define MX_SEND_MAX_ATTEMPTS 12
/*
 * Answers in flight at once per room.  One at a time made a burst in a
 * busy room wait for each PUT in turn (0.1-0.2 s each on a loaded Synapse,
 * so seconds for 20 answers, against a fraction of that spread over 20
 * rooms); Synapse creates up to 5 events of a room at once and persists
 * what is queued in one batch.  Order is kept per person (adapter.h): a
 * send waits while an earlier one to the same person is queued or in
 * flight, and a send to nobody in particular (a room greeting) waits for
 * everything before it and holds back everything after it.
 */
#define MX_SEND_PARALLEL 4
/* Our recent event ids, to recognise replies to the bot. */
#define MX_RING 256
/* Rooms tracked (member counts, send queues). */
#define MX_ROOMS_MAX 10000
/* URLs: base + path + escaped ids (3 x 255) + since token. */
#define MX_URL_MAX 8192
/* Token and ids from the server. */
#define MX_TOKEN_MAX 1024
/* Extra time over the long-poll timeout before curl gives up. */
#define MX_SYNC_SLACK_MS 30000
/* Ordinary requests (login, send, ...). */
#define MX_REQUEST_TIMEOUT_MS 60000
/* While Redis is down, look again this often. */
#define MX_REDIS_POLL_MS 500
/* Sent instead of an answer the homeserver refuses as too large (413
 * M_TOO_LARGE): with the content bounded to MATRIX_CONTENT_MAX this takes
 * a server or proxy with a smaller limit than the spec's. */
#define MX_TOO_LARGE_TEXT "(The answer was too long for this server and " \
                          "could not be sent.)"
/* Typing notifications last this long unless renewed or cleared; they
 * are renewed this often while the model works (answers can take longer
 * than one notification lasts). */
#define MX_TYPING_TIMEOUT_MS 30000
#define MX_TYPING_RENEW_MS 20000

enum mx_state {
    MX_IDLE = 0,
    MX_LOAD_SESSION,
    MX_WHOAMI,
    MX_LOGIN,
    MX_SAVE_SESSION,
    MX_PROFILE,
    MX_FILTER,
    MX_CRYPTO,                      /* E2EE device keys (matrix_e2ee.c) */
    MX_LOAD_SINCE,
    MX_SYNC,
    MX_TO_DEVICE,                   /* room keys over Olm (matrix_e2ee) */
    MX_WALK,
    MX_MEMBERS,
    MX_SAVE_SINCE,
    MX_FATAL,
    MX_STOPPED
};

struct matrix;

struct mx_send {
    struct mx_send *next;
    struct mx_room *room;
    struct http_request *req;       /* this send in flight, or NULL */
    char *who;                      /* the person answered, or NULL */
    char *content;                  /* JSON body */
    char *enc_content;              /* content encrypted (E2EE rooms): the
                                       same ciphertext on every retry */
    char *too_large;                /* short notice sent instead if the
                                       server refuses content as too large;
                                       NULL once used */
    char txn[MATRIX_TXN_MAX];
    adapter_send_done_fn *done;
    void *privdata;
    int attempts;
};

struct mx_room {
    struct mx_room *next;
    struct matrix *m;
    char *room_id;
    long members;                   /* joined members, -1 unknown */
    unsigned long members_batch;    /* batch whose count was fetched */
    struct matrix_members *names;   /* display names; NULL until needed */
    int names_loaded;               /* joined_members filled names once */
    int direct;                     /* invited as a DM */
    int encrypted_logged;
    int encrypted;                  /* 1 yes, 0 no, -1 not known yet */
    struct http_request *enc_req;   /* GET of m.room.encryption */
    int encrypting;                 /* matrix_e2ee_encrypt of the head */
    int enc_attempts;               /* its backoff exponent */
    int typing;                     /* typing on: renewed by a timer */
    struct mx_send *head, *tail;    /* queued and in flight, in order */
    int in_flight;                  /* sends with a request running */
    uint64_t retry_at;              /* loop_now_ms when sends may go on,
                                       0 */
};

/* A fire-and-forget request (typing, join, leave). */
struct mx_misc {
    struct mx_misc *next, *prev;
    struct matrix *m;
    struct http_request *req;
    char what[16];
    char room_id[MATRIX_ID_MAX + 1];
};

struct matrix {
    struct adapter ad;
    struct matrix_config mc;
    struct loop *loop;
    struct store *store;
    const struct config *cfg;
    struct loop_timer *ctl_timer;   /* control machine backoff */
    struct loop_timer *send_timer;  /* earliest room retry */
    struct loop_timer *typing_timer;    /* renews typing notifications */
    int timers_open;                /* from start until stop */

    enum mx_state state;
    int stopped;
    int attempt;                    /* control backoff exponent */

    char *password;                 /* wiped on free */
    char *env_token;
    char token[MX_TOKEN_MAX];
    char device_id[MX_TOKEN_MAX];
    int token_ok;                   /* whoami/login succeeded */
    int token_bad;                  /* a request saw M_UNKNOWN_TOKEN */
    char display_name[256];
    /* The bot's id as the homeserver spells it (whoami/login), used for
     * every own-event and mention check; the configured one until then.
     * Room keys and session:/sync: keys keep mc.account, which is known
     * before login and does not move with the server's spelling. */
    char user_id[MATRIX_ID_MAX + 1];
    char localpart[MATRIX_ID_MAX + 1];
    char filter_id[256];
    char *since;                    /* NULL before the first sync */
    int initial;                    /* this sync is the account's first */

    struct http_request *ctl_req;   /* the control request in flight */
    struct matrix_batch batch;
    size_t walk_i;
    int walk_rooms_done;            /* summaries of the batch applied */
    int walk_pending;               /* accepted() not yet called */
    int walk_async;                 /* the walk returned while pending */
    int walk_status;
    struct matrix_poison poison;    /* refusals of the event at walk_i */
    size_t walk_member_i;           /* next batch.members to apply */
    unsigned long batch_serial;     /* counts batches, for members_batch */
    struct matrix_batch dec;        /* the decrypted walk item, if any */
    size_t dec_i;                   /* walk_i + 1 it belongs to, 0 none */
    unsigned long dec_serial;       /* ... in this batch */

    struct matrix_e2ee *e2ee;       /* NULL: end-to-end encryption off */
    int e2ee_tried;                 /* MX_CRYPTO ran once this start */

    struct mx_room *rooms;
    size_t n_rooms;
    struct mx_misc *misc;

    char *mine[MX_RING];            /* event ids we sent */
    size_t mine_pos;
    char *joins[MX_RING];           /* member events given to the router */
    size_t joins_pos;
};

static void ctl_step(struct matrix *m);
static void walk(struct matrix *m);
static void room_kick(struct mx_room *r);

/* ---- small helpers ----------------------------------------------------- */

static void mx_error(struct matrix *m, int fatal, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void mx_error(struct matrix *m, int fatal, const char *fmt, ...)
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
static void mx_set_user_id(struct matrix *m, const char *id)
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
static uint64_t mx_backoff(struct matrix *m, int attempt)
{
    struct backoff_policy p = {
        m->mc.backoff_base_ms, m->mc.backoff_max_ms, BACKOFF_JITTER_UPPER
    };

    return (uint64_t)backoff_delay_ms(&p, attempt, -1, random_u64());
}

static void ring_add(char **ring, size_t *pos, const char *id)
{
    char *d = strdup(id);

    if (!d)
        return;                 /* only a hint: losing one is harmless */
    free(ring[*pos]);
    ring[*pos] = d;
    *pos = (*pos + 1) % MX_RING;
}

static int ring_has(char *const *ring, const char *id)
{
    size_t i;

    if (!id)
        return 0;
    for (i = 0; i < MX_RING; i++)
        if (ring[i] && strcmp(ring[i], id) == 0)
            return 1;
    return 0;
}

static struct mx_room *room_get(struct matrix *m, const char *room_id,
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
static int mx_http(struct matrix *m, const char *method, const char *path,
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
static int is_bad_token(const struct http_response *resp)
{
    return resp->status == PARLEY_OK && resp->code == 401;
}

/* ---- control machine: timers ------------------------------------------- */

static void on_ctl_timer(void *privdata)
{
    struct matrix *m = privdata;

    if (!m->stopped)
        ctl_step(m);
}

/* Run ctl_step after delay_ms (0: on the next loop turn). */
static void ctl_later(struct matrix *m, uint64_t delay_ms)
{
    if (m->stopped || !m->timers_open)
        return;
    loop_timer_start(m->ctl_timer, delay_ms, 0);
}

/* A control step failed: try the same state again after a backoff. */
static void ctl_retry(struct matrix *m, const char *what,
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
    ctl_later(m, delay);
}

/* The token was refused: log in again with the password, or stop. */
static void ctl_token_refused(struct matrix *m)
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
    ctl_later(m, 0);
}

/* ---- control machine: steps ------------------------------------------- */

static void session_loaded(int status, const struct state_session *s,
                           void *priv)
{
    struct matrix *m = priv;

    if (m->stopped)
        return;
    if (status != PARLEY_OK) {
        ctl_retry(m, "loading session from Redis", NULL);
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
    ctl_step(m);
}

static void whoami_done(const struct http_response *resp, void *priv)
{
    struct matrix *m = priv;
    char user[MATRIX_ID_MAX + 1], dev[MX_TOKEN_MAX];

    m->ctl_req = NULL;
    if (is_bad_token(resp)) {
        ctl_token_refused(m);
        return;
    }
    if (resp->status != PARLEY_OK || resp->code != 200) {
        ctl_retry(m, "whoami", resp);
        return;
    }
    if (matrix_parse_session(resp->body, resp->body_len, user, sizeof(user),
                             NULL, 0, NULL, 0) != PARLEY_OK) {
        ctl_retry(m, "whoami (bad answer)", NULL);
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
    ctl_step(m);
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
        ctl_retry(m, "login", resp);
        return;
    }
    if (matrix_parse_session(resp->body, resp->body_len, user, sizeof(user),
                             m->device_id, sizeof(m->device_id), token,
                             sizeof(token)) != PARLEY_OK) {
        explicit_bzero(token, sizeof(token));
        ctl_retry(m, "login (bad answer)", NULL);
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
    ctl_step(m);
}

static void session_saved(int status, void *priv)
{
    struct matrix *m = priv;

    if (m->stopped)
        return;
    if (status != PARLEY_OK) {
        ctl_retry(m, "saving session to Redis", NULL);
        return;
    }
    m->attempt = 0;
    m->state = m->display_name[0] ? MX_FILTER : MX_PROFILE;
    ctl_step(m);
}

static void profile_done(const struct http_response *resp, void *priv)
{
    struct matrix *m = priv;
    cJSON *c;

    m->ctl_req = NULL;
    if (is_bad_token(resp)) {
        ctl_token_refused(m);
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
    ctl_step(m);
}

static void filter_done(const struct http_response *resp, void *priv)
{
    struct matrix *m = priv;
    cJSON *c;
    const cJSON *id;

    m->ctl_req = NULL;
    if (is_bad_token(resp)) {
        ctl_token_refused(m);
        return;
    }
    if (resp->status != PARLEY_OK || resp->code != 200) {
        ctl_retry(m, "filter upload", resp);
        return;
    }
    c = cJSON_ParseWithLength(resp->body, resp->body_len);
    id = c ? cJSON_GetObjectItemCaseSensitive(c, "filter_id") : NULL;
    if (!cJSON_IsString(id) || !id->valuestring || !id->valuestring[0] ||
        strlen(id->valuestring) >= sizeof(m->filter_id)) {
        cJSON_Delete(c);
        ctl_retry(m, "filter upload (bad answer)", NULL);
        return;
    }
    snprintf(m->filter_id, sizeof(m->filter_id), "%s", id->valuestring);
    cJSON_Delete(c);
    m->attempt = 0;
    m->state = m->e2ee && !m->e2ee_tried ? MX_CRYPTO :
               m->since ? MX_SYNC : MX_LOAD_SINCE;
    ctl_step(m);
}

/* matrix_e2ee's requests go through mx_http with the account's token. */
static int e2ee_http(void *ctx, const char *method, const char *path,
                     const char *body, http_done_fn *done, void *priv,
                     struct http_request **out)
{
    return mx_http(ctx, method, path, body, 1, MX_REQUEST_TIMEOUT_MS,
                   64 * 1024, done, priv, out);
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
        ctl_retry(m, "end-to-end encryption keys", NULL);
        return;
    }
    m->e2ee_tried = 1;
    m->attempt = 0;
    m->state = m->since ? MX_SYNC : MX_LOAD_SINCE;
    ctl_step(m);
}

static void since_loaded(int status, const char *next_batch, void *priv)
{
    struct matrix *m = priv;

    if (m->stopped)
        return;
    if (status != PARLEY_OK) {
        ctl_retry(m, "loading the sync token from Redis", NULL);
        return;
    }
    free(m->since);
    m->since = NULL;
    if (next_batch) {
        m->since = strdup(next_batch);
        if (!m->since) {
            ctl_retry(m, "loading the sync token (out of memory)", NULL);
            return;
        }
    }
    m->initial = m->since == NULL;
    if (m->initial)
        log_info("matrix %s: first sync of this account: earlier messages "
                 "are not answered", m->mc.account);
    m->attempt = 0;
    m->state = MX_SYNC;
    ctl_step(m);
}

static void sync_done(const struct http_response *resp, void *priv)
{
    struct matrix *m = priv;
    struct matrix_ident me;
    char err[128];
    int result;

    m->ctl_req = NULL;
    if (is_bad_token(resp)) {
        ctl_token_refused(m);
        return;
    }
    if (resp->status != PARLEY_OK || resp->code != 200) {
        ctl_retry(m, "sync", resp);
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
        ctl_retry(m, "sync (unusable answer)", NULL);
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
        ctl_step(m);
        return;
    }
    m->state = MX_WALK;
    walk(m);
}

/* The batch's room keys are stored: its events may be decrypted. */
static void to_device_done(int status, void *priv)
{
    struct matrix *m = priv;

    if (m->stopped)
        return;
    if (status) {
        /* The sync position has not moved: the keys come again. */
        ctl_retry(m, "storing room keys in Redis", NULL);
        return;
    }
    m->state = MX_WALK;
    walk(m);
}

static void since_saved(int status, void *priv)
{
    struct matrix *m = priv;

    if (m->stopped)
        return;
    if (status != PARLEY_OK) {
        ctl_retry(m, "saving the sync token to Redis", NULL);
        return;
    }
    free(m->since);
    m->since = m->batch.next_batch;
    m->batch.next_batch = NULL;
    matrix_batch_free(&m->batch);
    m->initial = 0;
    m->attempt = 0;
    m->state = MX_SYNC;
    ctl_step(m);
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

static void ctl_step(struct matrix *m)
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
            ctl_later(m, MX_REDIS_POLL_MS);
            return;
        }
    }
    if (m->token_bad && m->state == MX_SYNC) {
        ctl_token_refused(m);
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
            ctl_retry(m, "loading session from Redis", NULL);
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
            ctl_retry(m, "login (out of memory)", NULL);
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
            ctl_retry(m, "saving session to Redis", NULL);
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
            ctl_retry(m, "filter", NULL);
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
            ctl_retry(m, "loading the crypto store from Redis", NULL);
        return;
    case MX_LOAD_SINCE:
        if (state_sync_load(m->store, m->mc.account, since_loaded, m) !=
            PARLEY_OK)
            ctl_retry(m, "loading the sync token from Redis", NULL);
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
            walk(m);
        } else if (result) {
            ctl_retry(m, "storing room keys in Redis", NULL);
        }
        return;
    case MX_WALK:
    case MX_MEMBERS:
        walk(m);
        return;
    case MX_SAVE_SINCE:
        if (state_sync_save(m->store, m->mc.account, m->batch.next_batch,
                            since_saved, m) != PARLEY_OK)
            ctl_retry(m, "saving the sync token to Redis", NULL);
        return;
    case MX_FATAL:
    case MX_STOPPED:
        return;
    }
    if (result != PARLEY_OK)
        ctl_retry(m, "starting a request", NULL);
}

/* ---- the batch walk: one event at a time into the router --------------- */

/*
 * Names of the members a /joined_members answer lists ({"@u:s":
 * {"display_name": ...}}), for those the table does not have yet: with
 * lazy-loaded members the homeserver sends a member's event only once
 * per device, so after a restart a room's table starts empty.  Members
 * already known keep their entries, which are the names as of the events
 * being walked.
 */
static void names_add_joined(struct mx_room *r, const cJSON *joined)
{
    const cJSON *u;

    if (!r->names && !(r->names = matrix_members_new()))
        return;
    cJSON_ArrayForEach(u, joined) {
        const cJSON *dn = cJSON_IsObject(u)
            ? cJSON_GetObjectItemCaseSensitive(u, "display_name") : NULL;

        if (!u->string || u->string[0] != '@' ||
            matrix_members_has(r->names, u->string))
            continue;
        matrix_members_update(r->names, u->string,
                              cJSON_IsString(dn) ? dn->valuestring : NULL,
                              1);
    }
}

static void members_done(const struct http_response *resp, void *priv)
{
    struct matrix *m = priv;
    const struct matrix_item *it = &m->batch.items[m->walk_i];
    struct mx_room *r = room_get(m, it->room_id, 1);
    cJSON *c;
    const cJSON *joined;

    m->ctl_req = NULL;
    if (is_bad_token(resp)) {
        /* After the login the batch is fetched again from the same
         * since token; the router drops what it already accepted. */
        ctl_token_refused(m);
        return;
    }
    if (resp->status != PARLEY_OK || resp->code >= 500) {
        ctl_retry(m, "joined_members", resp);
        return;
    }
    /* A 403 (we left) counts as "not a DM": the walk must go on. */
    if (r)
        r->members = 0;
    c = resp->code == 200 ? cJSON_ParseWithLength(resp->body, resp->body_len)
                          : NULL;
    joined = c ? cJSON_GetObjectItemCaseSensitive(c, "joined") : NULL;
    if (r && cJSON_IsObject(joined)) {
        r->members = cJSON_GetArraySize(joined);
        names_add_joined(r, joined);
    }
    if (r)
        r->names_loaded = 1;
    if (r)
        r->members_batch = m->batch_serial;
    cJSON_Delete(c);
    m->state = MX_WALK;
    walk(m);
}

/*
 * The router refused the event at walk_i.  Redis being away passes: pause
 * the sync and offer the same event again (returns 0).  A refusal that
 * comes back MATRIX_POISON_TRIES times for the same event can never
 * succeed, and waiting would stop the whole account for good: the event
 * is skipped, logged once and counted (returns 1, the walk goes on).
 */
static int walk_refused(struct matrix *m, int status)
{
    const struct matrix_item *it = &m->batch.items[m->walk_i];

    if (matrix_poison_refused(&m->poison, m->batch_serial, m->walk_i,
                              status) == MATRIX_POISON_SKIP) {
        log_warn("matrix %s: event %s in %s refused %d times (%s): "
                 "skipped, it is not answered", m->mc.account,
                 it->event_id ? it->event_id : "(no id)",
                 it->room_id ? it->room_id : "(no room)",
                 MATRIX_POISON_TRIES, parley_status_name(status));
        metrics_matrix_event_skipped();
        return 1;
    }
    log_warn("matrix %s: event not recorded (%s); pausing the sync",
             m->mc.account, parley_status_name(status));
    ctl_later(m, mx_backoff(m, m->attempt < 30 ? m->attempt++ : 30));
    return 0;
}

static void walk_accepted(int status, void *priv)
{
    struct matrix *m = priv;

    m->walk_pending = 0;
    m->walk_status = status;
    if (!m->walk_async)
        return;                 /* walk() is still on the stack */
    m->walk_async = 0;
    if (m->stopped)
        return;
    if (status != PARLEY_OK && !walk_refused(m, status))
        return;
    m->walk_i++;
    walk(m);
}

static void misc_done(const struct http_response *resp, void *priv);

/* Start a fire-and-forget request; failures are logged by misc_done. */
static void misc_start(struct matrix *m, const char *what,
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
        if (is_bad_token(resp))
            m->token_bad = 1;
    } else if (strcmp(x->what, "join") == 0) {
        log_info("matrix %s: joined %s", m->mc.account, x->room_id);
    }
    free(x);
}

static void handle_invite(struct matrix *m, const struct matrix_item *it)
{
    char id[3 * MATRIX_ID_MAX + 1], path[MX_URL_MAX];

    if (matrix_url_escape(it->room_id, id, sizeof(id)) != PARLEY_OK)
        return;
    if (matrix_allow_match(it->sender, (const char *const *)m->mc.allow,
                           m->mc.n_allow)) {
        struct mx_room *r = room_get(m, it->room_id, 1);

        if (r && it->is_direct)
            r->direct = 1;
        log_info("matrix %s: invited to %s by %s: joining", m->mc.account,
                 it->room_id, it->sender);
        snprintf(path, sizeof(path), "/rooms/%s/join", id);
        misc_start(m, "join", it->room_id, "POST", path, "{}");
    } else if (m->mc.reject_other_invites) {
        log_info("matrix %s: invite to %s from %s (not allowed): rejecting",
                 m->mc.account, it->room_id, it->sender);
        snprintf(path, sizeof(path), "/rooms/%s/leave", id);
        misc_start(m, "reject", it->room_id, "POST", path, "{}");
    } else {
        log_info("matrix %s: invite to %s from %s (not allowed): ignored",
                 m->mc.account, it->room_id, it->sender);
    }
}

/* Whether the batch carried a summary (member count) for room_id. */
static int batch_has_summary(const struct matrix_batch *b,
                             const char *room_id)
{
    size_t i;

    for (i = 0; i < b->n_rooms; i++)
        if (strcmp(b->rooms[i].room_id, room_id) == 0)
            return 1;
    return 0;
}

/* Ask for room_id's joined members (members_done resumes the walk).
 * Returns 1 when the request is in flight, 0 when it could not start. */
static int members_fetch(struct matrix *m, const char *room_id)
{
    char id[3 * MATRIX_ID_MAX + 1], path[MX_URL_MAX];

    if (matrix_url_escape(room_id, id, sizeof(id)) != PARLEY_OK)
        return 0;
    snprintf(path, sizeof(path), "/rooms/%s/joined_members", id);
    m->state = MX_MEMBERS;
    if (mx_http(m, "GET", path, NULL, 1, MX_REQUEST_TIMEOUT_MS,
                MATRIX_SYNC_BODY_MAX, members_done, m,
                &m->ctl_req) == PARLEY_OK)
        return 1;
    m->state = MX_WALK;
    return 0;
}

/* Apply the batch's membership changes seen before item upto to the
 * rooms' name tables, in order. */
static void members_apply(struct matrix *m, size_t upto)
{
    while (m->walk_member_i < m->batch.n_members &&
           m->batch.members[m->walk_member_i].at <= upto) {
        const struct matrix_member *mb =
            &m->batch.members[m->walk_member_i++];
        struct mx_room *r = room_get(m, mb->room_id, 1);
        int result;

        if (!r)
            continue;
        if (!r->names && !(r->names = matrix_members_new()))
            continue;           /* names fall back to localparts */
        result = matrix_members_update(r->names, mb->user_id,
                                       mb->displayname, mb->present);
        if (result == PARLEY_ERR_TOO_LARGE &&
            matrix_members_count(r->names) == MATRIX_ROOM_MEMBERS_MAX)
            log_debug("matrix %s: %s: name table full", m->mc.account,
                      mb->room_id);
    }
}

/*
 * Turn the item at walk_i into an event for the router, or handle it
 * here.  Returns 1 when it was submitted (the walk waits for accepted),
 * 0 when the walk may go on at once, -1 when the walk waits for a
 * joined_members request.
 */
/* A CIPHERTEXT item of the walk was decrypted (or not): keep the result
 * for walk_item, which sees it when the walk resumes at the same item. */
static void walk_decrypted(int status, const struct cJSON *event,
                           void *priv)
{
    struct matrix *m = priv;
    const struct matrix_item *it;
    struct matrix_ident me;

    if (m->stopped)
        return;
    it = &m->batch.items[m->walk_i];
    matrix_batch_free(&m->dec);
    if (status == PARLEY_OK) {
        me.user_id = m->user_id;
        me.localpart = m->localpart;
        me.display_name = m->display_name[0] ? m->display_name : NULL;
        if (matrix_sync_decrypted(it, event, &me, &m->dec) != PARLEY_OK) {
            matrix_batch_free(&m->dec);
            status = PARLEY_ERR_OOM;
        }
    }
    if (status == PARLEY_ERR_EOF || status == PARLEY_ERR_PROTOCOL) {
        /* Unable to decrypt: not answered (no key request yet). */
        log_warn("matrix %s: no usable room key for %s in %s: not "
                 "answered", m->mc.account, it->event_id, it->room_id);
    } else if (status != PARLEY_OK) {
        log_warn("matrix %s: decrypting %s failed (%s); pausing the sync",
                 m->mc.account, it->event_id, parley_status_name(status));
        ctl_later(m, mx_backoff(m, m->attempt < 30 ? m->attempt++ : 30));
        return;
    }
    m->dec_i = m->walk_i + 1;
    m->dec_serial = m->batch_serial;
    walk(m);
}

static int walk_item(struct matrix *m, const struct matrix_item *it)
{
    struct mx_room *r;
    struct event ev;
    char room[2 * MATRIX_ID_MAX + 2];
    char name[MATRIX_NAME_MAX + MATRIX_ID_MAX + 8];
    size_t i;

    r = it->room_id ? room_get(m, it->room_id, 1) : NULL;
    switch (it->kind) {
    case MATRIX_ITEM_INVITE:
        handle_invite(m, it);
        return 0;
    case MATRIX_ITEM_ENCRYPTED:
        if (r)
            r->encrypted = 1;
        if (r && !r->encrypted_logged && !matrix_e2ee_ready(m->e2ee)) {
            r->encrypted_logged = 1;
            log_warn("matrix %s: %s is encrypted; end-to-end encryption is "
                     "off (crypto_key_env): the bot stays silent there",
                     m->mc.account, it->room_id);
        }
        return 0;
    case MATRIX_ITEM_CIPHERTEXT:
        if (r)
            r->encrypted = 1;
        if (m->initial || !matrix_e2ee_ready(m->e2ee))
            return 0;
        if (m->dec_i != m->walk_i + 1 || m->dec_serial != m->batch_serial) {
            int result = matrix_e2ee_decrypt(m->e2ee, it->room_id,
                                             it->event_id, it->cipher,
                                             walk_decrypted, m);

            if (result == PARLEY_OK)
                return -1;          /* walk_decrypted goes on */
            log_warn("matrix %s: cannot decrypt %s in %s (%s)",
                     m->mc.account, it->event_id, it->room_id,
                     parley_status_name(result));
            return 0;
        }
        if (m->dec.n_items != 1)
            return 0;               /* not a message we handle */
        it = &m->dec.items[0];
        break;
    case MATRIX_ITEM_JOIN:
        /* A join changes the count: without a summary in this batch the
         * one known is stale, so ask (once per room and batch).  Whether
         * the size matters is the router's business, not ours. */
        if (r && !batch_has_summary(&m->batch, it->room_id) &&
            r->members_batch != m->batch_serial) {
            r->members = -1;
            if (!m->initial && members_fetch(m, it->room_id))
                return -1;
            r->members_batch = m->batch_serial;
        }
        break;
    case MATRIX_ITEM_MESSAGE:
        break;
    }
    /* The account's first sync is history: not answered, not greeted. */
    if (m->initial)
        return 0;
    memset(&ev, 0, sizeof(ev));
    ev.platform = "matrix";
    ev.account = m->mc.account;
    ev.sender = it->sender;
    ev.sender_name = it->sender_name;
    ev.event_id = it->event_id;
    ev.thread_id = it->thread_id;
    ev.reply_to = it->reply_to;
    /* A sender the name table has not seen (after a restart, lazy loading
     * does not send their member event again): ask for the room's
     * members once. */
    if (r && it->sender && !r->names_loaded &&
        !matrix_members_has(r->names, it->sender)) {
        r->names_loaded = 1;
        if (members_fetch(m, it->room_id))
            return -1;
    }
    if (r && it->sender &&
        matrix_members_name(r->names, it->sender, name,
                            sizeof(name)) == PARLEY_OK)
        ev.sender_name = name;
    if (it->kind == MATRIX_ITEM_JOIN) {
        /* Facts only: who joined and how many are in the room now; the
         * router's greeting policy decides what to do about it. */
        ev.kind = EVENT_JOIN;
        ev.self = strcmp(it->sender, m->user_id) == 0;
        ev.members = r && r->members > 0 && r->members < INT_MAX
                     ? (int)r->members : 0;
        ring_add(m->joins, &m->joins_pos, it->event_id);
    } else {
        ev.kind = EVENT_MESSAGE;
        ev.text = it->text;
        ev.addressed = it->mentioned || it->reply_names_bot ||
                       ring_has(m->mine, it->reply_to) ||
                       (r && (r->direct || r->members == 2));
        if (!ev.addressed && r && r->members < 0) {
            /* Maybe a DM: ask the server how many are in the room. */
            if (members_fetch(m, it->room_id))
                return -1;
            r->members = 0;
        }
    }
    for (i = 0; m->mc.allow && i < m->mc.n_allow; i++)
        if (m->mc.allow[i][0] == '@' && strcmp(m->mc.allow[i],
                                               it->sender) == 0)
            ev.is_admin = 1;
    if (m->mc.thread_context && it->thread_id)
        snprintf(room, sizeof(room), "%s/%s", it->room_id, it->thread_id);
    else
        snprintf(room, sizeof(room), "%s", it->room_id);
    ev.room = room;
    m->walk_pending = 1;
    m->walk_async = 0;
    router_submit_durable(m->ad.router, &ev, walk_accepted, m);
    return 1;
}

static void walk(struct matrix *m)
{
    size_t i;

    if (m->stopped)
        return;
    m->state = MX_WALK;
    /* Summaries first: they say which rooms are DMs, and which are empty
     * but for the bot.  Once per batch, however often the walk resumes. */
    if (!m->walk_rooms_done) {
        m->walk_rooms_done = 1;
        for (i = 0; i < m->batch.n_rooms; i++) {
            const struct matrix_room_info *ri = &m->batch.rooms[i];
            struct mx_room *r = room_get(m, ri->room_id, 1);
            char id[3 * MATRIX_ID_MAX + 1], path[MX_URL_MAX];

            if (r)
                r->members = ri->joined_members;
            if (ri->joined_members <= 1 && m->mc.leave_empty_rooms &&
                !m->initial &&
                matrix_url_escape(ri->room_id, id, sizeof(id)) == PARLEY_OK) {
                log_info("matrix %s: %s is empty but for the bot: leaving",
                         m->mc.account, ri->room_id);
                snprintf(path, sizeof(path), "/rooms/%s/leave", id);
                misc_start(m, "leave", ri->room_id, "POST", path, "{}");
            }
        }
    }
    while (m->walk_i < m->batch.n_items) {
        int w;

        members_apply(m, m->walk_i);
        w = walk_item(m, &m->batch.items[m->walk_i]);

        if (w < 0)
            return;             /* joined_members in flight */
        if (w > 0) {
            if (m->walk_pending) {
                m->walk_async = 1;
                return;         /* walk_accepted goes on */
            }
            if (m->walk_status != PARLEY_OK &&
                !walk_refused(m, m->walk_status))
                return;         /* paused: offered again later */
        }
        m->walk_i++;
    }
    members_apply(m, m->batch.n_items);
    m->state = MX_SAVE_SINCE;
    ctl_step(m);
}

/* ---- sending ----------------------------------------------------------- */

static void send_free(struct mx_send *s)
{
    free(s->who);
    free(s->content);
    free(s->enc_content);
    free(s->too_large);
    free(s);
}

static void on_send_timer(void *privdata)
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
static void send_finish(struct mx_room *r, struct mx_send *s, int status)
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
    send_free(s);
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

        if (cJSON_IsString(id) && id->valuestring)
            ring_add(m->mine, &m->mine_pos, id->valuestring);
        cJSON_Delete(c);
        send_finish(r, s, PARLEY_OK);
        room_kick(r);
        return;
    }
    if (resp->status == PARLEY_OK)
        matrix_parse_error(resp->body, resp->body_len, code, sizeof(code),
                           &ra);
    else
        code[0] = '\0';
    if (is_bad_token(resp)) {
        m->token_bad = 1;
        if (m->state == MX_SYNC && m->ctl_req) {
            /* The long poll would only find out in 30 s. */
            loop_http_cancel(m->ctl_req);
            m->ctl_req = NULL;
            ctl_token_refused(m);
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
        send_finish(r, s, PARLEY_ERR_TOO_LARGE);
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
    send_finish(r, s, PARLEY_ERR_HTTP);
    room_kick(r);
}

static void send_done(const struct http_response *resp, void *priv);

static void head_encrypted(int status, const char *content, void *priv)
{
    struct mx_send *s = priv;
    struct mx_room *r = s->room;
    struct matrix *m = r->m;

    r->encrypting = 0;
    if (!status) {
        s->enc_content = strdup(content);
        if (s->enc_content) {
            room_kick(r);
            return;
        }
    }
    if (++s->attempts >= MX_SEND_MAX_ATTEMPTS) {
        log_error("matrix %s: giving up on an answer in %s (txn %s): "
                  "cannot encrypt it", m->mc.account, r->room_id, s->txn);
        send_finish(r, s, PARLEY_ERR_OTHER);
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
        send_finish(r, s, PARLEY_ERR_TOO_LARGE);
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
            send_finish(r, s, PARLEY_ERR_STATE);
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
    if (m->state == MX_FATAL) {
        /* No way to send any more (see the fatal log line): the router
         * learns it now rather than waiting forever.  Sends in flight
         * finish through send_done. */
        for (s = r->head; s; s = next) {
            next = s->next;
            if (!s->req)
                send_finish(r, s, PARLEY_ERR_STATE);
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
    /* done callbacks (send_finish) may queue more at the tail: next is
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
            send_finish(r, s, PARLEY_ERR_TOO_LARGE);
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

static int matrix_send(struct adapter *ad, const char *room,
                       const struct reply *reply, adapter_send_done_fn *done,
                       void *privdata)
{
    struct matrix *m = ad->priv;
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
    r = room_get(m, room_id, 1);
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
    o.in_reply_to = ring_has(m->joins, reply->in_reply_to)
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
        send_free(s);
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
        send_free(s);
        return PARLEY_ERR_OTHER;
    }
    s->done = done;
    s->privdata = privdata;
    s->room = r;
    if (reply->mention && !(s->who = strdup(reply->mention))) {
        send_free(s);
        return PARLEY_ERR_OOM;
    }
    if (r->tail)
        r->tail->next = s;
    else
        r->head = s;
    r->tail = s;
    room_kick(r);
    return PARLEY_OK;
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
    misc_start(m, "typing", room_id, "PUT", path, body);
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
    r = room_get(m, room_id, 1);
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
                                         m->mc.account };

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
    m->ctl_timer = loop_timer_new(m->loop, on_ctl_timer, m);
    m->send_timer = loop_timer_new(m->loop, on_send_timer, m);
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
    ctl_step(m);
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
            send_finish(r, r->head, PARLEY_ERR_STATE);
    }
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
            send_free(s);
        }
        matrix_members_free(r->names);
        free(r->room_id);
        free(r);
    }
    for (i = 0; i < MX_RING; i++) {
        free(m->mine[i]);
        free(m->joins[i]);
    }
    matrix_batch_free(&m->batch);
    matrix_batch_free(&m->dec);
    free(m->since);
    matrix_e2ee_free(m->e2ee);
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
