/*
 * Redis Sentinel for the store: where the master is, and when it moves.
 * Before each attempt to reach the master, the sentinels of
 * redis.sentinels are asked in turn (SENTINEL get-master-addr-by-name),
 * starting with the one that answered last, so a sentinel that is down
 * costs one refused connect (or one deadline) and is skipped; a round in
 * which none answers fails the attempt like an unreachable Redis, with
 * the store's backoff.  The answer is then checked on the master's own
 * connection with ROLE, since during a failover a sentinel may still name
 * the old master (now a replica).  A connection to one sentinel stays
 * subscribed to +switch-master: when it names our master, the store drops
 * its connection and goes straight to the new address.  A READONLY reply
 * (a master demoted while we were not listening) does the same through a
 * new query.  Commands in flight when the master changes fail as in any
 * Redis outage (NULL reply), so callers need nothing new.
 *
 * Each sentinel connection is a hiredis async context attached with the
 * store's own glue (store_attach); the query's deadline is the store's
 * timer (the master connection does not exist while we ask), the
 * subscription has its own timer for its deadline and its retry delay.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include "backoff.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "random.h"
#include "store_private.h"

/* A host as a sentinel reports it: an IP address, or a name when the
 * sentinels run with resolve-hostnames/announce-hostnames. */
#define SENTINEL_HOST_MAX 256

/* The channel sentinels publish a completed failover on. */
#define SENTINEL_SWITCH_CHANNEL "+switch-master"

struct store_sentinel {
    struct store *st;
    struct config_hostport *addrs;  /* owned copies of redis.sentinels */
    size_t n;
    char *name;                     /* owned: redis.master_name */
    char *password;                 /* owned, wiped; NULL: no AUTH */

    /* Asking where the master is, one sentinel at a time. */
    redisAsyncContext *qac;         /* query in flight, or NULL */
    size_t qidx;                    /* the sentinel being asked */
    size_t qfirst;                  /* asked first: the last to answer */
    size_t qtried;                  /* sentinels asked in this round */
    int round;                      /* a round is under way */
    int qfailed;                    /* qerr already says why qidx failed */
    int answered;                   /* qhost:qport is where to go next */
    char qhost[SENTINEL_HOST_MAX];
    int qport;
    char qerr[PARLEY_ERRSTR_LEN];   /* why the last sentinel failed */

    /* Listening for +switch-master on one sentinel. */
    redisAsyncContext *sac;         /* subscription context, or NULL */
    size_t sidx;                    /* the sentinel listened to */
    int subscribed;
    int sub_warned;                 /* "cannot listen" logged, not yet
                                       "listening" */
    unsigned sattempt;              /* failed subscriptions in a row */
    uv_timer_t stimer;              /* subscribe deadline or retry delay */

    void (*role_done)(struct store *st);
    /* The last address ROLE confirmed as the master, to count moves. */
    char confirmed[SENTINEL_HOST_MAX];
    int confirmed_port;
};

static void sentinel_subscribe(struct store_sentinel *sn);

static void sentinel_timer_closed(uv_handle_t *h)
{
    struct store *st = ((struct store_sentinel *)h->data)->st;

    st->open_handles--;
    store_maybe_free(st);
}

static void sentinel_fire_now(struct store *st)
{
    store_retry_now(st);
}

/* --- asking for the master ------------------------------------------------ */

static void sentinel_query_failed(struct store_sentinel *sn,
                                  const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Record why the sentinel being asked gave no address. */
static void sentinel_query_failed(struct store_sentinel *sn,
                                  const char *fmt, ...)
{
    const struct config_hostport *a = &sn->addrs[sn->qidx];
    char why[PARLEY_ERRSTR_LEN];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    /* A cut reason is still a reason. */
    if (snprintf(sn->qerr, sizeof(sn->qerr), "sentinel %s:%d: %s", a->host,
                 a->port, why) >= (int)sizeof(sn->qerr))
        sn->qerr[sizeof(sn->qerr) - 1] = '\0';
    log_redact(sn->qerr, sizeof(sn->qerr));
    sn->qfailed = 1;
}

static void sentinel_query_reply(redisAsyncContext *ac, void *r,
                                 void *privdata)
{
    struct store_sentinel *sn = privdata;
    redisReply *reply = r;

    if (!reply || ac != sn->qac || (ac->c.flags & REDIS_FREEING))
        return;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[1]->type == REDIS_REPLY_STRING &&
        reply->element[0]->len > 0 &&
        reply->element[0]->len < sizeof(sn->qhost)) {
        char *end;
        long port = strtol(reply->element[1]->str, &end, 10);

        if (*end || port < 1 || port > 65535) {
            sentinel_query_failed(sn, "bad port in its answer");
        } else {
            memcpy(sn->qhost, reply->element[0]->str,
                   reply->element[0]->len);
            sn->qhost[reply->element[0]->len] = '\0';
            sn->qport = (int)port;
            sn->answered = 1;
            sn->qfirst = sn->qidx;
        }
    } else if (reply->type == REDIS_REPLY_NIL) {
        sentinel_query_failed(sn, "does not monitor a master named %s",
                              sn->name);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        sentinel_query_failed(sn, "%.*s", (int)reply->len, reply->str);
    } else {
        sentinel_query_failed(sn, "unexpected reply type %d", reply->type);
    }
    /* Deferred by hiredis until this callback returns; the cleanup hook
     * (store_sentinel_gone) carries on. */
    redisAsyncFree(ac);
}

static void sentinel_auth_reply(redisAsyncContext *ac, void *r,
                                void *privdata)
{
    struct store_sentinel *sn = privdata;
    redisReply *reply = r;

    if (!reply || (ac->c.flags & REDIS_FREEING) ||
        reply->type != REDIS_REPLY_ERROR)
        return;
    if (ac == sn->qac)
        sentinel_query_failed(sn, "AUTH failed: %.*s", (int)reply->len,
                              reply->str);
    else if (ac == sn->sac)
        log_warn("sentinel %s:%d: AUTH failed: %.*s",
                 sn->addrs[sn->sidx].host, sn->addrs[sn->sidx].port,
                 (int)reply->len, reply->str);
    redisAsyncFree(ac);
}

/* Queue AUTH (if the sentinels have a password) on a sentinel context;
 * the password goes as a binary-safe argument, never formatted. */
static int sentinel_auth(struct store_sentinel *sn, redisAsyncContext *ac)
{
    const char *argv[2];
    size_t argvlen[2];

    if (!sn->password)
        return REDIS_OK;
    argv[0] = "AUTH";
    argvlen[0] = 4;
    argv[1] = sn->password;
    argvlen[1] = strlen(sn->password);
    return redisAsyncCommandArgv(ac, sentinel_auth_reply, sn, 2, argv,
                                 argvlen);
}

static void sentinel_query_connected(const redisAsyncContext *cac,
                                     int status)
{
    struct store_sentinel *sn = cac->data;
    redisAsyncContext *ac = sn->qac;

    if (status != REDIS_OK || sn->st->closing || ac != cac)
        return;     /* the cleanup hook that follows does the rest */
    if (sentinel_auth(sn, ac) != REDIS_OK ||
        redisAsyncCommand(ac, sentinel_query_reply, sn,
                          "SENTINEL get-master-addr-by-name %s",
                          sn->name) != REDIS_OK) {
        /* Not freed from the connect callback (see store.c): the
         * deadline timer, fired now, drops it. */
        sentinel_query_failed(sn, "cannot queue the query");
        sentinel_fire_now(sn->st);
    }
}

/* Start asking sentinel idx.  PARLEY_OK: the answer comes through the
 * cleanup hook; otherwise qerr says why and the next one can be tried. */
static int sentinel_ask(struct store_sentinel *sn, size_t idx)
{
    const struct config_hostport *a = &sn->addrs[idx];
    redisAsyncContext *ac;

    sn->qidx = idx;
    sn->qfailed = 0;
    ac = redisAsyncConnect(a->host, a->port);
    if (!ac) {
        sentinel_query_failed(sn, "out of memory");
        return PARLEY_ERR_OOM;
    }
    if (ac->err) {
        sentinel_query_failed(sn, "%s", ac->c.errstr);
        redisAsyncFree(ac);
        return PARLEY_ERR_IO;
    }
    if (store_attach(sn->st, ac) != PARLEY_OK) {
        sentinel_query_failed(sn, "cannot watch the socket");
        redisAsyncFree(ac);
        return PARLEY_ERR_IO;
    }
    ac->data = sn;
    sn->qac = ac;
    redisAsyncSetConnectCallback(ac, sentinel_query_connected);
    return PARLEY_OK;
}

enum store_resolve store_sentinel_resolve(struct store *st)
{
    struct store_sentinel *sn = st->sn;
    char last[PARLEY_ERRSTR_LEN];

    if (sn->answered) {
        sn->answered = 0;
        sn->round = 0;
        if (store_set_master(st, sn->qhost, sn->qport) != PARLEY_OK) {
            store_set_error(st, PARLEY_ERR_OOM, "out of memory");
            return STORE_NO_MASTER;
        }
        snprintf(st->addr, sizeof(st->addr), "%s:%d (master %s)",
                 sn->qhost, sn->qport, sn->name);
        return STORE_RESOLVED;
    }
    if (!sn->round) {
        sn->round = 1;
        sn->qtried = 0;
    } else if (sn->qfailed) {
        log_debug("redis master %s: %s", sn->name, sn->qerr);
    }
    while (sn->qtried < sn->n) {
        size_t idx = (sn->qfirst + sn->qtried) % sn->n;

        sn->qtried++;
        if (sentinel_ask(sn, idx) == PARLEY_OK)
            return STORE_ASKING;
        log_debug("redis master %s: %s", sn->name, sn->qerr);
    }
    sn->round = 0;
    snprintf(last, sizeof(last), "%s", sn->qerr);
    store_set_error(st, PARLEY_ERR_IO, "no sentinel gave the address of "
                    "master %s (last: %s)", sn->name, last);
    return STORE_NO_MASTER;
}

int store_sentinel_asking(const struct store *st)
{
    return st->sn && st->sn->qac;
}

void store_sentinel_timeout(struct store *st)
{
    struct store_sentinel *sn = st->sn;

    if (!sn->qfailed)
        sentinel_query_failed(sn, "no answer within %d ms",
                              STORE_CONNECT_TIMEOUT_MS);
    redisAsyncFree(sn->qac);
}

/* --- the master's role ---------------------------------------------------- */

static void sentinel_role_reply(redisAsyncContext *ac, void *r,
                                void *privdata)
{
    struct store *st = privdata;
    redisReply *reply = r;
    const redisReply *role;

    if (!reply || st->closing || ac != st->ac ||
        (ac->c.flags & REDIS_FREEING))
        return;
    role = reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 ?
           reply->element[0] : NULL;
    if (role && role->type == REDIS_REPLY_STRING &&
        strcmp(role->str, "master") == 0) {
        struct store_sentinel *sn = st->sn;

        if (sn->confirmed_port && (sn->confirmed_port != st->port ||
                                   strcmp(sn->confirmed, st->host) != 0))
            metrics_redis_failover();
        snprintf(sn->confirmed, sizeof(sn->confirmed), "%s", st->host);
        sn->confirmed_port = st->port;
        sn->role_done(st);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR)
        store_set_error(st, PARLEY_ERR_OTHER, "ROLE failed: %.*s",
                        (int)reply->len, reply->str);
    else
        store_set_error(st, PARLEY_ERR_STATE, "%s:%d is a %s, not the "
                        "master (a sentinel's answer from before a "
                        "failover?)", st->host, st->port,
                        role && role->type == REDIS_REPLY_STRING ?
                        role->str : "server of unknown role");
    redisAsyncFree(ac);
}

int store_sentinel_check_role(struct store *st, redisAsyncContext *ac,
                              void (*done)(struct store *st))
{
    st->sn->role_done = done;
    if (redisAsyncCommand(ac, sentinel_role_reply, st, "ROLE") != REDIS_OK)
        return PARLEY_ERR_OOM;
    return PARLEY_OK;
}

void store_sentinel_readonly(struct store *st, redisAsyncContext *ac)
{
    if (ac->c.flags & REDIS_FREEING)
        return;
    log_warn("redis %s answered READONLY: it is no longer the master; "
             "asking the sentinels", st->addr);
    store_set_error(st, PARLEY_ERR_STATE, "READONLY: the master was "
                    "demoted");
    redisAsyncFree(ac);     /* deferred: we are in one of its callbacks */
}

/* --- listening for failovers ---------------------------------------------- */

/* Split "name old-ip old-port new-ip new-port" and, when it is our
 * master, go to the new address. */
static void sentinel_switch(struct store_sentinel *sn, const char *msg,
                            size_t len)
{
    struct store *st = sn->st;
    char buf[4 * SENTINEL_HOST_MAX];
    char *field[5];
    char *p = buf, *end;
    long port;
    int n = 0;

    if (len >= sizeof(buf))
        return;
    memcpy(buf, msg, len);
    buf[len] = '\0';
    while (n < 5 && *p) {
        field[n++] = p;
        p += strcspn(p, " ");
        if (*p)
            *p++ = '\0';
    }
    if (n != 5 || *p || strcmp(field[0], sn->name) != 0)
        return;
    port = strtol(field[4], &end, 10);
    if (*end || port < 1 || port > 65535 ||
        strlen(field[3]) >= sizeof(sn->qhost))
        return;
    log_info("sentinel %s:%d: master %s moved from %s:%s to %s:%ld",
             sn->addrs[sn->sidx].host, sn->addrs[sn->sidx].port, sn->name,
             field[1], field[2], field[3], port);
    if (st->ac && st->port == port && strcmp(st->host, field[3]) == 0)
        return;     /* already there (found through a query) */
    snprintf(sn->qhost, sizeof(sn->qhost), "%s", field[3]);
    sn->qport = (int)port;
    sn->answered = 1;
    if (st->ac) {
        store_set_error(st, PARLEY_ERR_STATE, "master %s moved to %s:%ld",
                        sn->name, field[3], port);
        redisAsyncFree(st->ac);     /* not in its callback: now */
    } else if (!sn->qac) {
        sentinel_fire_now(st);      /* waiting out a backoff: go now */
    }
}

static void sentinel_sub_message(redisAsyncContext *ac, void *r,
                                 void *privdata)
{
    struct store_sentinel *sn = privdata;
    redisReply *reply = r;
    const redisReply *kind;

    if (!reply || ac != sn->sac || (ac->c.flags & REDIS_FREEING) ||
        reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)
        return;
    kind = reply->element[0];
    if (kind->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(kind->str, "subscribe") == 0) {
        uv_timer_stop(&sn->stimer);
        sn->subscribed = 1;
        sn->sattempt = 0;
        if (sn->sub_warned)
            log_info("sentinel %s:%d: listening for failovers of master "
                     "%s again", sn->addrs[sn->sidx].host,
                     sn->addrs[sn->sidx].port, sn->name);
        else
            log_debug("sentinel %s:%d: listening for failovers of master "
                      "%s", sn->addrs[sn->sidx].host,
                      sn->addrs[sn->sidx].port, sn->name);
        sn->sub_warned = 0;
    } else if (strcmp(kind->str, "message") == 0 &&
               reply->element[2]->type == REDIS_REPLY_STRING) {
        sentinel_switch(sn, reply->element[2]->str, reply->element[2]->len);
    }
}

static void sentinel_stimer_fired(uv_timer_t *t)
{
    struct store_sentinel *sn = t->data;

    if (sn->st->closing)
        return;
    if (sn->sac) {
        /* Connect deadline, or a drop asked for from the connect
         * callback: the cleanup hook schedules the next try. */
        if (!sn->subscribed)
            redisAsyncFree(sn->sac);
        return;
    }
    sentinel_subscribe(sn);
}

static void sentinel_sub_connected(const redisAsyncContext *cac, int status)
{
    struct store_sentinel *sn = cac->data;
    redisAsyncContext *ac = sn->sac;

    if (status != REDIS_OK || sn->st->closing || ac != cac)
        return;
    /* A long-lived connection: notice a vanished sentinel. */
    if (redisEnableKeepAlive(&ac->c) != REDIS_OK)
        log_debug("sentinel: cannot enable TCP keepalive");
    if (sentinel_auth(sn, ac) != REDIS_OK ||
        redisAsyncCommand(ac, sentinel_sub_message, sn, "SUBSCRIBE %s",
                          SENTINEL_SWITCH_CHANNEL) != REDIS_OK)
        uv_timer_start(&sn->stimer, sentinel_stimer_fired, 0, 0);
}

/* The subscription failed or ended: try the next sentinel after a delay
 * that grows while none of them can be reached. */
static void sentinel_sub_retry(struct store_sentinel *sn, const char *why)
{
    static const struct backoff_policy policy = {
        2 * STORE_BACKOFF_MIN_MS, STORE_BACKOFF_MAX_MS, BACKOFF_JITTER_UPPER
    };
    const struct config_hostport *a = &sn->addrs[sn->sidx];
    long delay = backoff_delay_ms(&policy, (int)sn->sattempt, -1,
                                  random_u64());

    if (sn->sattempt < 64)
        sn->sattempt++;
    if (sn->sattempt >= sn->n && !sn->sub_warned) {
        log_warn("cannot listen for failovers of master %s on any "
                 "sentinel (last: %s:%d: %s); retrying", sn->name, a->host,
                 a->port, why);
        sn->sub_warned = 1;
    } else {
        log_debug("sentinel %s:%d: not listening for failovers: %s",
                  a->host, a->port, why);
    }
    sn->sidx = (sn->sidx + 1) % sn->n;
    uv_timer_start(&sn->stimer, sentinel_stimer_fired, (uint64_t)delay, 0);
}

static void sentinel_subscribe(struct store_sentinel *sn)
{
    const struct config_hostport *a = &sn->addrs[sn->sidx];
    redisAsyncContext *ac = redisAsyncConnect(a->host, a->port);
    char why[PARLEY_ERRSTR_LEN];

    sn->subscribed = 0;
    if (!ac) {
        sentinel_sub_retry(sn, "out of memory");
        return;
    }
    if (ac->err) {
        snprintf(why, sizeof(why), "%s", ac->c.errstr);
        redisAsyncFree(ac);
        sentinel_sub_retry(sn, why);
        return;
    }
    if (store_attach(sn->st, ac) != PARLEY_OK) {
        redisAsyncFree(ac);
        sentinel_sub_retry(sn, "cannot watch the socket");
        return;
    }
    ac->data = sn;
    sn->sac = ac;
    redisAsyncSetConnectCallback(ac, sentinel_sub_connected);
    uv_timer_start(&sn->stimer, sentinel_stimer_fired,
                   STORE_CONNECT_TIMEOUT_MS, 0);
}

/* --- life cycle ----------------------------------------------------------- */

void store_sentinel_gone(struct store *st, redisAsyncContext *ac)
{
    struct store_sentinel *sn = st->sn;
    char why[PARLEY_ERRSTR_LEN];

    if (ac == sn->qac) {
        sn->qac = NULL;
        if (st->closing)
            return;
        if (!sn->answered && !sn->qfailed)
            sentinel_query_failed(sn, "%s", ac->c.err ? ac->c.errstr :
                                  "connection closed");
        sentinel_fire_now(st);      /* connect, or ask the next one */
    } else if (ac == sn->sac) {
        sn->sac = NULL;
        sn->subscribed = 0;
        if (st->closing)
            return;
        snprintf(why, sizeof(why), "%s", ac->c.err ? ac->c.errstr :
                 "connection closed");
        log_redact(why, sizeof(why));
        sentinel_sub_retry(sn, why);
    }
}

static char *sentinel_strdup(const char *s)
{
    size_t len = strlen(s) + 1;
    char *copy = malloc(len);

    if (copy)
        memcpy(copy, s, len);
    return copy;
}

int store_sentinel_open(struct store *st, const struct config_redis *cfg,
                        const char *password)
{
    struct store_sentinel *sn;

    if (!cfg->master_name || !cfg->master_name[0])
        return PARLEY_ERR_CONFIG;
    sn = calloc(1, sizeof(*sn));
    if (!sn)
        return PARLEY_ERR_OOM;
    sn->st = st;
    st->sn = sn;    /* from here store_maybe_free frees it */
    sn->addrs = calloc(cfg->n_sentinels, sizeof(*sn->addrs));
    sn->name = sentinel_strdup(cfg->master_name);
    if (password && password[0])
        sn->password = sentinel_strdup(password);
    if (!sn->addrs || !sn->name || (password && password[0] &&
                                    !sn->password))
        return PARLEY_ERR_OOM;
    for (size_t i = 0; i < cfg->n_sentinels; i++) {
        sn->addrs[i].host = sentinel_strdup(cfg->sentinels[i].host);
        if (!sn->addrs[i].host)
            return PARLEY_ERR_OOM;
        sn->addrs[i].port = cfg->sentinels[i].port;
        sn->n++;
    }
    if (uv_timer_init(st->uv, &sn->stimer) != 0)
        return PARLEY_ERR_IO;
    sn->stimer.data = sn;
    st->open_handles++;
    snprintf(st->addr, sizeof(st->addr), "master %s", sn->name);
    sentinel_subscribe(sn);
    return PARLEY_OK;
}

void store_sentinel_close(struct store *st)
{
    struct store_sentinel *sn = st->sn;

    /* data is set once the timer is initialised (calloc'd before). */
    if (sn->stimer.data) {
        uv_timer_stop(&sn->stimer);
        uv_close((uv_handle_t *)&sn->stimer, sentinel_timer_closed);
    }
    if (sn->qac)
        redisAsyncFree(sn->qac);
    if (sn->sac)
        redisAsyncFree(sn->sac);
}

void store_sentinel_free(struct store *st)
{
    struct store_sentinel *sn = st->sn;

    for (size_t i = 0; i < sn->n; i++)
        free(sn->addrs[i].host);
    free(sn->addrs);
    free(sn->name);
    if (sn->password) {
        explicit_bzero(sn->password, strlen(sn->password));
        free(sn->password);
    }
    free(sn);
    st->sn = NULL;
}
