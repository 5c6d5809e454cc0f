/*
 * The Redis connection: one hiredis async context on the libuv loop, the
 * AUTH/SELECT handshake, reconnection with exponential backoff and jitter,
 * and key naming.  Callers see a connection that is either "up" (handshake
 * done, commands accepted) or not (commands fail at once with
 * PARLEY_ERR_STATE), and are told about every transition.  An outage is
 * logged once when it starts and once when it ends, not on every attempt.
 *
 * hiredis 0.14.1's adapters/libuv.h ignores uv_poll errors
 * ("if (status != 0) return;"), and libuv reports a refused non-blocking
 * connect or a reset socket as exactly such an error (UV_EBADF after
 * POLLERR), so with the stock adapter a connect to a dead server would hang
 * forever.  This file therefore carries its own attach in the same shape
 * as that header, with the fix hiredis made later (on a poll error, run
 * both handlers so the core reads the socket error).  A connect/handshake
 * deadline covers servers that never answer.
 *
 * With redis.sentinels the master's address is not configured but found:
 * store_sentinel.c asks the sentinels before each attempt, checks with
 * ROLE that the answer is the master, and drops the connection when the
 * master moves (+switch-master, READONLY); from here that is one more
 * way for an attempt to fail or a connection to end.
 *
 * hiredis resolves host names with a blocking getaddrinfo; with the default
 * numeric address (127.0.0.1) or a unix socket there is no lookup.  A name
 * (e.g. "redis" in docker-compose) costs one lookup per connect attempt.
 *
 * Writes: hiredis asks for a writable event for every command it queues.
 * Waiting for that event costs a loop iteration and two epoll_ctl calls
 * per command, so once connected the commands queued are written at the
 * end of the loop phase that queued them (a prepare and a check handle:
 * before the loop blocks, and after the I/O callbacks), outside every
 * hiredis and caller callback.  Only a socket that cannot take it all
 * waits for writability.  (During the connect the writable event is how
 * hiredis learns the connect finished, so it is kept there.)
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
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
#include "random.h"
#include "status.h"
#include "store.h"
#include "store_private.h"

/* The libuv side of one hiredis context (hiredis adapters/libuv.h shape).
 * Freed when the last of its three handles is closed. */
struct store_ev {
    struct store *st;
    redisAsyncContext *ac;      /* NULL once hiredis has let go of it */
    uv_poll_t poll;
    uv_prepare_t flush_prepare; /* write queued commands before blocking */
    uv_check_t flush_check;     /* ... and after the I/O callbacks */
    int events;
    int want_flush;             /* commands queued, not yet written */
    int in_flush;               /* redisAsyncHandleWrite from a flush */
    int open;                   /* handles not yet closed */
};

/* One command in flight; freed after its callback ran. */
struct store_request {
    struct store *st;
    store_reply_fn *fn;
    void *privdata;
};

static void store_connect(struct store *st);

/* The one setter for err/errstr; truncates, and scrubs registered secrets
 * in case a library echoed one back. */
void store_set_error(struct store *st, int err, const char *fmt, ...)
{
    va_list ap;

    st->err = err;
    st->failed = 1;
    va_start(ap, fmt);
    vsnprintf(st->errstr, sizeof(st->errstr), fmt, ap);
    va_end(ap);
    log_redact(st->errstr, sizeof(st->errstr));
}

void store_maybe_free(struct store *st)
{
    if (!st->closing || st->open_handles > 0)
        return;
    if (st->sn)
        store_sentinel_free(st);
    if (st->password) {
        explicit_bzero(st->password, strlen(st->password));
        free(st->password);
    }
    free(st->host);
    free(st->unix_socket);
    free(st->prefix);
    free(st);
}

static void store_timer_closed(uv_handle_t *h)
{
    struct store *st = h->data;

    st->open_handles--;
    store_maybe_free(st);
}

/* --- libuv glue (adapters/libuv.h with the poll-error fix) ------------- */

static void store_ev_poll(uv_poll_t *h, int status, int events)
{
    struct store_ev *ev = h->data;
    /* On an error libuv has already stopped the handle; let hiredis try
     * both directions so it reads the socket error and tears down. */
    int ready = status < 0 ? (UV_READABLE | UV_WRITABLE) : events;

    if (status < 0)
        ev->events = 0;         /* so a later add starts it again */
    if (ev->ac && (ready & UV_READABLE))
        redisAsyncHandleRead(ev->ac);
    if (ev->ac && (ready & UV_WRITABLE))
        redisAsyncHandleWrite(ev->ac);
}

/* Watch the socket for EVENTS.  hiredis asks again for what it already
 * has (addRead after every write, delWrite after every flush), and each
 * uv_poll_start costs up to three epoll_ctl calls (libuv removes the fd
 * and adds it back), nine per message before: so only a change is
 * passed on. */
static void store_ev_update(struct store_ev *ev, int events)
{
    if (events == ev->events)
        return;
    ev->events = events;
    if (events)
        uv_poll_start(&ev->poll, events, store_ev_poll);
    else
        uv_poll_stop(&ev->poll);
}

static void store_ev_add_read(void *privdata)
{
    struct store_ev *ev = privdata;

    store_ev_update(ev, ev->events | UV_READABLE);
}

static void store_ev_del_read(void *privdata)
{
    struct store_ev *ev = privdata;

    store_ev_update(ev, ev->events & ~UV_READABLE);
}

/* Write what hiredis has queued, from the loop (never from inside a
 * hiredis or caller callback: an error here frees the context and calls
 * every pending callback). */
static void store_ev_flush(struct store_ev *ev)
{
    uv_prepare_stop(&ev->flush_prepare);
    uv_check_stop(&ev->flush_check);
    if (!ev->ac || !ev->want_flush)
        return;
    ev->want_flush = 0;
    ev->in_flush = 1;
    redisAsyncHandleWrite(ev->ac);
    ev->in_flush = 0;
}

static void store_ev_flush_prepare(uv_prepare_t *h)
{
    store_ev_flush(h->data);
}

static void store_ev_flush_check(uv_check_t *h)
{
    store_ev_flush(h->data);
}

static void store_ev_add_write(void *privdata)
{
    struct store_ev *ev = privdata;

    /* Connected and not already writing: write at the end of this loop
     * phase.  Otherwise (connect in progress, or the socket took only
     * part) wait until it is writable. */
    if (ev->ac && (ev->ac->c.flags & REDIS_CONNECTED) && !ev->in_flush) {
        if (!ev->want_flush) {
            ev->want_flush = 1;
            uv_prepare_start(&ev->flush_prepare, store_ev_flush_prepare);
            uv_check_start(&ev->flush_check, store_ev_flush_check);
        }
        return;
    }
    store_ev_update(ev, ev->events | UV_WRITABLE);
}

static void store_ev_del_write(void *privdata)
{
    struct store_ev *ev = privdata;

    ev->want_flush = 0;
    store_ev_update(ev, ev->events & ~UV_WRITABLE);
}

static void store_ev_closed(uv_handle_t *h)
{
    struct store_ev *ev = h->data;
    struct store *st = ev->st;

    if (--ev->open > 0)
        return;
    free(ev);
    st->open_handles--;
    store_maybe_free(st);
}

/*
 * hiredis is freeing the context (connect failed, connection lost, or we
 * asked): every pending callback has already had its NULL reply.  This is
 * the single place where a context ends, so reconnect logic starts here.
 * hiredis still calls onDisconnect and frees the context after we return,
 * which is why st outlives this call (it is freed from close callbacks).
 */
static void store_ev_cleanup(void *privdata)
{
    struct store_ev *ev = privdata;
    struct store *st = ev->st;
    redisAsyncContext *ac = ev->ac;

    ev->ac = NULL;
    ev->want_flush = 0;
    uv_poll_stop(&ev->poll);
    uv_close((uv_handle_t *)&ev->poll, store_ev_closed);
    uv_close((uv_handle_t *)&ev->flush_prepare, store_ev_closed);
    uv_close((uv_handle_t *)&ev->flush_check, store_ev_closed);
    if (st->ac != ac) {
        if (st->sn)
            store_sentinel_gone(st, ac);
        return;
    }
    st->ac = NULL;
    if (ac->c.err)
        store_set_error(st, PARLEY_ERR_IO, "%s", ac->c.errstr);
    else if (!st->failed)
        store_set_error(st, PARLEY_ERR_IO, "connection closed");
    store_lost(st);
}

int store_attach(struct store *st, redisAsyncContext *ac)
{
    struct store_ev *ev = calloc(1, sizeof(*ev));

    if (!ev)
        return PARLEY_ERR_OOM;
    if (uv_poll_init(st->uv, &ev->poll, ac->c.fd) != 0) {
        free(ev);
        return PARLEY_ERR_IO;
    }
    uv_prepare_init(st->uv, &ev->flush_prepare);
    uv_check_init(st->uv, &ev->flush_check);
    ev->open = 3;
    ev->st = st;
    ev->ac = ac;
    ev->poll.data = ev;
    ev->flush_prepare.data = ev;
    ev->flush_check.data = ev;
    st->open_handles++;
    ac->ev.data = ev;
    ac->ev.addRead = store_ev_add_read;
    ac->ev.delRead = store_ev_del_read;
    ac->ev.addWrite = store_ev_add_write;
    ac->ev.delWrite = store_ev_del_write;
    ac->ev.cleanup = store_ev_cleanup;
    return PARLEY_OK;
}

/* --- connection state ---------------------------------------------------- */

/* Delay before the next attempt: a ceiling that doubles per failure, from
 * 2 * MIN up to MAX, and a random point in its upper half, so every delay
 * lies in [MIN, MAX] and many parley processes restarted together do not
 * reconnect in lockstep. */
static uint64_t store_backoff_ms(struct store *st)
{
    static const struct backoff_policy policy = {
        2 * STORE_BACKOFF_MIN_MS, STORE_BACKOFF_MAX_MS, BACKOFF_JITTER_UPPER
    };
    long delay = backoff_delay_ms(&policy, (int)st->attempt, -1,
                                  random_u64());

    if (st->attempt < 64)
        st->attempt++;
    return (uint64_t)delay;
}

static void store_timer_fired(uv_timer_t *t)
{
    struct store *st = t->data;

    if (st->closing)
        return;
    if (store_sentinel_asking(st)) {
        store_sentinel_timeout(st);
        return;
    }
    if (st->ac) {
        /* Connect or handshake deadline, or a drop requested from the
         * connect callback: give up on this attempt; the cleanup hook
         * schedules the next one. */
        if (!st->failed)
            store_set_error(st, PARLEY_ERR_TIMEOUT, "no answer within %d ms",
                            STORE_CONNECT_TIMEOUT_MS);
        redisAsyncFree(st->ac);
        return;
    }
    store_connect(st);
}

/* The current connection attempt or connection is gone (err/errstr say
 * why): report, and schedule the next attempt. */
void store_lost(struct store *st)
{
    int was_up = st->announced;

    st->up = 0;
    st->announced = 0;
    if (st->closing)
        return;
    if (!st->outage) {
        log_warn("redis %s unreachable: %s; retrying", st->addr,
                 st->errstr);
        st->outage = 1;
    } else {
        log_debug("redis %s still unreachable: %s", st->addr, st->errstr);
    }
    uv_timer_start(&st->timer, store_timer_fired, store_backoff_ms(st), 0);
    if (was_up && st->state_fn)
        st->state_fn(st, 0, st->state_priv);
}

static void store_became_up(struct store *st)
{
    uv_timer_stop(&st->timer);
    st->up = 1;
    st->attempt = 0;
    st->err = PARLEY_OK;
    st->errstr[0] = '\0';
    if (st->outage)
        log_info("redis %s reachable again", st->addr);
    else
        log_info("redis %s connected (db %d)", st->addr, st->db);
    st->outage = 0;
    st->announced = 1;
    if (st->state_fn)
        st->state_fn(st, 1, st->state_priv);
}

/* Drop the current context because the handshake failed; reply is the
 * server's error.  Called from a hiredis callback, so the free is deferred
 * by hiredis until that callback returns. */
static void store_handshake_failed(struct store *st, const char *what,
                                   const redisReply *reply)
{
    if (reply->type == REDIS_REPLY_ERROR)
        store_set_error(st, PARLEY_ERR_OTHER, "%s failed: %.*s", what,
                        (int)reply->len, reply->str);
    else
        store_set_error(st, PARLEY_ERR_PROTOCOL,
                        "%s failed: unexpected reply type %d", what,
                        reply->type);
    if (st->ac)
        redisAsyncFree(st->ac);
}

/* As store_handshake_failed, for a failure with no reply. */
static void store_handshake_failed_text(struct store *st, const char *why)
{
    store_set_error(st, PARLEY_ERR_OOM, "%s", why);
    if (st->ac)
        redisAsyncFree(st->ac);
}

static void store_auth_done(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store *st = privdata;
    redisReply *reply = r;

    if (!reply || st->closing || st->ac != ac)
        return;
    if (reply->type != REDIS_REPLY_STATUS)
        store_handshake_failed(st, "AUTH", reply);
}

static void store_select_done(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store *st = privdata;
    redisReply *reply = r;

    if (!reply || st->closing || st->ac != ac)
        return;
    /* A failed AUTH already asked for the context to be freed; hiredis
     * still delivers the pipelined SELECT reply (NOAUTH) first. */
    if (ac->c.flags & REDIS_FREEING)
        return;
    if (reply->type != REDIS_REPLY_STATUS) {
        store_handshake_failed(st, "SELECT", reply);
        return;
    }
    /* An address from a sentinel may be stale during a failover: the
     * ROLE reply ends the handshake instead. */
    if (st->sn) {
        if (store_sentinel_check_role(st, ac, store_became_up) != PARLEY_OK)
            store_handshake_failed_text(st, "cannot queue ROLE");
        return;
    }
    store_became_up(st);
}

/* hiredis 0.14 runs the connect callback outside its IN_CALLBACK guard
 * and keeps using the context afterwards, so the context must not be
 * freed from there: fire the timer at once and free it from the loop. */
static void store_drop_soon(struct store *st, const char *why)
{
    store_set_error(st, PARLEY_ERR_OOM, "%s", why);
    uv_timer_start(&st->timer, store_timer_fired, 0, 0);
}

static void store_connected(const redisAsyncContext *cac, int status)
{
    struct store_ev *ev = cac->ev.data;
    struct store *st = ev->st;
    redisAsyncContext *ac = st->ac;
    char dbbuf[16];
    const char *argv[2];
    size_t argvlen[2];

    if (status != REDIS_OK || st->closing || ac != cac)
        return;     /* the cleanup hook that follows does the rest */
    /* Without keepalive a peer that vanished (host down, NAT timeout)
     * goes unnoticed until a write times out in the kernel; hiredis 0.14
     * probes every REDIS_KEEPALIVE_INTERVAL (15 s). */
    if (!st->unix_socket && redisEnableKeepAlive(&ac->c) != REDIS_OK)
        log_debug("redis %s: cannot enable TCP keepalive", st->addr);
    /*
     * AUTH and SELECT are pipelined; SELECT's reply ends the handshake.
     * The password goes as a binary-safe argument and never into a
     * formatted string, so it cannot reach a log line from here.
     */
    if (st->password) {
        argv[0] = "AUTH";
        argvlen[0] = 4;
        argv[1] = st->password;
        argvlen[1] = strlen(st->password);
        if (redisAsyncCommandArgv(ac, store_auth_done, st, 2, argv,
                                  argvlen) != REDIS_OK) {
            store_drop_soon(st, "cannot queue AUTH");
            return;
        }
    }
    snprintf(dbbuf, sizeof(dbbuf), "%d", st->db);
    argv[0] = "SELECT";
    argvlen[0] = 6;
    argv[1] = dbbuf;
    argvlen[1] = strlen(dbbuf);
    if (redisAsyncCommandArgv(ac, store_select_done, st, 2, argv,
                              argvlen) != REDIS_OK)
        store_drop_soon(st, "cannot queue SELECT");
}

/* Start one connection attempt.  Failures end in store_lost, either here
 * (synchronous failure) or from the cleanup hook. */
static void store_connect(struct store *st)
{
    redisAsyncContext *ac;
    int result;

    /* errstr keeps the previous reason until this attempt fails or
     * succeeds, so store_errstr never reads "" while the store is down. */
    st->failed = 0;
    if (st->sn) {
        switch (store_sentinel_resolve(st)) {
        case STORE_RESOLVED:
            st->failed = 0;
            break;
        case STORE_ASKING:
            /* The sentinel's deadline; its answer restarts the timer. */
            uv_timer_start(&st->timer, store_timer_fired,
                           STORE_CONNECT_TIMEOUT_MS, 0);
            return;
        default:
            store_lost(st);
            return;
        }
    }
    if (st->unix_socket)
        ac = redisAsyncConnectUnix(st->unix_socket);
    else
        ac = redisAsyncConnect(st->host, st->port);
    if (!ac) {
        store_set_error(st, PARLEY_ERR_OOM, "out of memory");
        store_lost(st);
        return;
    }
    if (ac->err) {
        /* Refused at once (common on loopback); nothing is attached yet,
         * so this free calls no hook. */
        store_set_error(st, PARLEY_ERR_IO, "%s", ac->c.errstr);
        redisAsyncFree(ac);
        store_lost(st);
        return;
    }
    result = store_attach(st, ac);
    if (result) {
        store_set_error(st, result, "cannot watch the redis socket");
        redisAsyncFree(ac);
        store_lost(st);
        return;
    }
    st->ac = ac;
    /* Attach before this: setting the connect callback arms the first
     * write event through the hooks. */
    redisAsyncSetConnectCallback(ac, store_connected);
    uv_timer_start(&st->timer, store_timer_fired, STORE_CONNECT_TIMEOUT_MS,
                   0);
}

/* --- public API ---------------------------------------------------------- */

static char *store_strdup(const char *s)
{
    size_t len;
    char *copy;

    if (!s)
        return NULL;
    len = strlen(s) + 1;
    copy = malloc(len);
    if (copy)
        memcpy(copy, s, len);
    return copy;
}

int store_open(struct store **out, struct uv_loop_s *uv,
               const struct config_redis *cfg, const char *password)
{
    return store_open_full(out, uv, cfg, password, NULL);
}

int store_open_full(struct store **out, struct uv_loop_s *uv,
                    const struct config_redis *cfg, const char *password,
                    const char *sentinel_password)
{
    int result;

    struct store *st;

    *out = NULL;
    if (!uv || !cfg)
        return PARLEY_ERR_CONFIG;
    st = calloc(1, sizeof(*st));
    if (!st)
        return PARLEY_ERR_OOM;
    st->uv = uv;
    st->port = cfg->port > 0 ? cfg->port : 6379;
    st->db = cfg->db;
    st->host = store_strdup(cfg->host ? cfg->host : "127.0.0.1");
    st->prefix = store_strdup(cfg->prefix ? cfg->prefix : "parley:");
    /* The sentinels name a TCP address; a socket path is not used. */
    if (cfg->unix_socket && cfg->unix_socket[0] && !cfg->n_sentinels)
        st->unix_socket = store_strdup(cfg->unix_socket);
    if (password && password[0])
        st->password = store_strdup(password);
    if (!st->host || !st->prefix ||
        (cfg->unix_socket && cfg->unix_socket[0] && !cfg->n_sentinels &&
         !st->unix_socket) ||
        (password && password[0] && !st->password)) {
        st->closing = 1;
        store_maybe_free(st);
        return PARLEY_ERR_OOM;
    }
    if (st->unix_socket)
        snprintf(st->addr, sizeof(st->addr), "unix:%s", st->unix_socket);
    else
        snprintf(st->addr, sizeof(st->addr), "%s:%d", st->host, st->port);
    if (uv_timer_init(uv, &st->timer) != 0) {
        st->closing = 1;
        store_maybe_free(st);
        return PARLEY_ERR_IO;
    }
    st->timer.data = st;
    st->open_handles = 1;
    store_set_error(st, PARLEY_ERR_STATE, "not connected yet");
    if (cfg->n_sentinels > 0) {
        result = store_sentinel_open(st, cfg, sentinel_password);
        if (result) {
            store_close(st);
            return result;
        }
    }
    *out = st;
    store_connect(st);
    return PARLEY_OK;
}

void store_on_state(struct store *st, store_state_fn *fn, void *privdata)
{
    st->state_fn = fn;
    st->state_priv = privdata;
}

int store_is_up(const struct store *st)
{
    return st && st->up && !st->closing;
}

const char *store_errstr(const struct store *st)
{
    return st->errstr;
}

static void store_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_request *req = privdata;
    struct store *st = req->st;

    /* A NULL reply only comes while hiredis frees the context: stop
     * accepting commands before the caller can retry from its callback. */
    if (!r)
        st->up = 0;
    /* A master demoted under us (failover without our noticing) refuses
     * writes; the caller sees this error, later commands a new master. */
    else if (st->sn && ac == st->ac && st->up &&
             ((redisReply *)r)->type == REDIS_REPLY_ERROR &&
             strncmp(((redisReply *)r)->str, "READONLY", 8) == 0)
        store_sentinel_readonly(st, ac);
    if (req->fn)
        req->fn(st, r, req->privdata);
    free(req);
}

/* Commands that switch the connection into a push mode, where replies no
 * longer pair with callbacks; the store's exactly-once contract cannot
 * hold, so they are refused. */
static int store_is_push_command(const char *name, size_t len)
{
    static const char *const push[] = {
        "subscribe", "psubscribe", "unsubscribe", "punsubscribe", "monitor"
    };

    for (size_t i = 0; i < sizeof(push) / sizeof(push[0]); i++)
        if (strlen(push[i]) == len && strncasecmp(name, push[i], len) == 0)
            return 1;
    return 0;
}

/* Send a command formatted in RESP (cmd, len).  Takes no ownership. */
static int store_send(struct store *st, store_reply_fn *fn, void *privdata,
                      const char *cmd, size_t len)
{
    struct store_request *req = NULL;
    const char *name;
    char *end;
    long namelen;

    /* RESP "*<argc>\r\n$<len>\r\n<name>\r\n..." from hiredis' formatter. */
    name = memchr(cmd, '$', len);
    if (!name)
        return PARLEY_ERR_OTHER;
    namelen = strtol(name + 1, &end, 10);
    if (namelen < 0 || end + 2 + namelen > cmd + len)
        return PARLEY_ERR_OTHER;
    if (store_is_push_command(end + 2, (size_t)namelen))
        return PARLEY_ERR_STATE;
    /* In Sentinel mode every reply is looked at, for READONLY. */
    if (fn || st->sn) {
        req = malloc(sizeof(*req));
        if (!req)
            return PARLEY_ERR_OOM;
        req->st = st;
        req->fn = fn;
        req->privdata = privdata;
    }
    if (redisAsyncFormattedCommand(st->ac, req ? store_reply : NULL, req,
                                   cmd, len) != REDIS_OK) {
        free(req);
        return PARLEY_ERR_STATE;
    }
    return PARLEY_OK;
}

int store_command(struct store *st, store_reply_fn *fn, void *privdata,
                  const char *fmt, ...)
{
    va_list ap;
    char *cmd = NULL;
    int len;
    int result;

    if (!store_is_up(st) || !st->ac)
        return PARLEY_ERR_STATE;
    va_start(ap, fmt);
    len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    /* hiredis: -1 out of memory, -2 invalid format string. */
    if (len == -1)
        return PARLEY_ERR_OOM;
    if (len < 0)
        return PARLEY_ERR_OTHER;
    result = store_send(st, fn, privdata, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return result;
}

int store_command_argv(struct store *st, store_reply_fn *fn, void *privdata,
                       int argc, const char **argv, const size_t *argvlen)
{
    char *cmd = NULL;
    int len;
    int result;

    if (!store_is_up(st) || !st->ac)
        return PARLEY_ERR_STATE;
    if (argc < 1)
        return PARLEY_ERR_OTHER;
    len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0)
        return PARLEY_ERR_OOM;
    result = store_send(st, fn, privdata, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return result;
}

int store_key(const struct store *st, char *buf, size_t len,
              const char *fmt, ...)
{
    va_list ap;
    size_t plen = strlen(st->prefix);
    int n;

    if (len == 0)
        return PARLEY_ERR_TOO_LARGE;
    if (plen >= len) {
        snprintf(buf, len, "%s", st->prefix);
        return PARLEY_ERR_TOO_LARGE;
    }
    memcpy(buf, st->prefix, plen);
    va_start(ap, fmt);
    n = vsnprintf(buf + plen, len - plen, fmt, ap);
    va_end(ap);
    if (n < 0) {
        buf[0] = '\0';
        return PARLEY_ERR_OTHER;
    }
    if ((size_t)n >= len - plen)
        return PARLEY_ERR_TOO_LARGE;
    return PARLEY_OK;
}

void store_close(struct store *st)
{
    if (!st || st->closing)
        return;
    st->closing = 1;
    st->up = 0;
    uv_timer_stop(&st->timer);
    uv_close((uv_handle_t *)&st->timer, store_timer_closed);
    if (st->sn)
        store_sentinel_close(st);
    /* Pending callbacks get their NULL reply from hiredis here (or, when
     * called from inside a store callback, as soon as it returns). */
    if (st->ac)
        redisAsyncFree(st->ac);
}

int store_set_master(struct store *st, const char *host, int port)
{
    char *copy = store_strdup(host);

    if (!copy)
        return PARLEY_ERR_OOM;
    free(st->host);
    st->host = copy;
    st->port = port;
    return PARLEY_OK;
}

void store_retry_now(struct store *st)
{
    if (st->closing || st->ac)
        return;
    uv_timer_start(&st->timer, store_timer_fired, 0, 0);
}
