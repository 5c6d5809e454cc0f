/*
 * The IRC adapter: one libircclient session per configured network,
 * driven from the libuv loop, behind the TLS/CAP/SASL transport.  It turns
 * channel and query messages into struct event (platform "irc", account =
 * network name, room = case-folded channel; people are keyed by their
 * services account where the server says it, see "Who is who" in
 * irc_members.c), keeps channel membership for operator checks and the
 * member counts it reports with joins (the router decides greetings), and
 * sends answers as PRIVMSG lines split to fit 512 bytes, paced by a token
 * bucket and shared fairly between channels and the people answered.
 * This file holds the session's life cycle, the adapter ops and create;
 * irc_private.h lists the other files and what each does.
 *
 * libircclient glue (STYLE.md "What parley should absorb" 1): the library
 * has no fd accessor, so the fd is found with irc_add_select_descriptors
 * into zeroed fd_sets; a loop watch (loop.h) follows it; on a ready event
 * the sets are rebuilt and irc_process_select_descriptors runs; after
 * every call into the library the mask is recomputed and set again.
 * Output the library holds is written at once when its socket takes it
 * (session_flush), not after a round through the loop for a writable
 * event: on every answer that round cost a poll restart each way.
 * The library's callbacks never tear the session down themselves: a lost
 * connection is handled after irc_process_select_descriptors returns, or
 * from the transport's callback, which never runs inside the library.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>

#include "backoff.h"
#include "config.h"
#include "irc_private.h"
#include "log.h"
#include "random.h"
#include "status.h"

static void connection_lost(struct irc_ad *a, int status, const char *why);
static void quit_finish(struct irc_ad *a);

/* ---- the libircclient session from the uv loop ------------------------ */

/* On a poll error the loop reports the whole watched mask, so the library
 * finds out by trying both ways (hiredis adapters/libuv.h:17-27). */
static void on_poll(int events, void *privdata)
{
    struct irc_ad *a = privdata;
    fd_set in, out;
    int rc;

    if (!a->sess || a->fd < 0)
        return;
    FD_ZERO(&in);
    FD_ZERO(&out);
    if (events & LOOP_READABLE)
        FD_SET(a->fd, &in);
    if (events & LOOP_WRITABLE)
        FD_SET(a->fd, &out);
    a->in_lib++;
    rc = irc_process_select_descriptors(a->sess, &in, &out);
    a->in_lib--;
    if (rc) {
        char why[128];

        snprintf(why, sizeof(why), "connection lost: %s",
                 irc_strerror(irc_errno(a->sess)));
        connection_lost(a, PARLEY_ERR_IO, why);
        return;
    }
    /* The library's buffer was written: a write that failed in
     * session_flush worked this time, and lines that found the buffer
     * full (flood_pump) may go now. */
    a->write_failed = 0;
    if (a->pump_on_write) {
        a->pump_on_write = 0;
        flood_pump(a);
        return;
    }
    session_rearm(a);
}

/*
 * Write what the library holds now if its socket takes it, instead of
 * waiting for the loop to report the socket writable.  libircclient's
 * send retries EAGAIN in a loop (sockets.c socket_send), so it is called
 * only when poll() says the socket has room, and only with the write set:
 * its read side runs callbacks, which must not nest.  Returns 1 when the
 * library's buffer was written, 0 when nothing was (nothing held, not
 * writable now, or inside the library); a write error leaves the session
 * watched for writing so that on_poll meets the error and handles the
 * lost connection there, outside every caller of this function.
 */
int session_flush(struct irc_ad *a)
{
    fd_set in, out;
    int maxfd = 0;
    struct pollfd pfd;

    if (a->in_lib || !a->sess || !a->poll || a->fd < 0 || a->write_failed ||
        (a->state != IRC_REGISTERED && a->state != IRC_QUITTING))
        return 0;
    FD_ZERO(&in);
    FD_ZERO(&out);
    if (irc_add_select_descriptors(a->sess, &in, &out, &maxfd) ||
        !FD_ISSET(a->fd, &out))
        return 0;
    pfd.fd = a->fd;
    pfd.events = POLLOUT;
    pfd.revents = 0;
    if (poll(&pfd, 1, 0) != 1 || pfd.revents != POLLOUT)
        return 0;
    FD_ZERO(&in);
    a->in_lib++;
    if (irc_process_select_descriptors(a->sess, &in, &out))
        a->write_failed = 1;
    a->in_lib--;
    return !a->write_failed;
}

void session_rearm(struct irc_ad *a)
{
    fd_set in, out;
    int maxfd = 0, events = 0;

    if (!a->poll || a->fd < 0)
        return;
    session_flush(a);
    FD_ZERO(&in);
    FD_ZERO(&out);
    if (irc_add_select_descriptors(a->sess, &in, &out, &maxfd))
        return;
    if (FD_ISSET(a->fd, &in))
        events |= LOOP_READABLE;
    if (FD_ISSET(a->fd, &out) || a->write_failed)
        events |= LOOP_WRITABLE;
    loop_watch_set(a->poll, events);    /* a no-op when unchanged */
}

static void schedule_reconnect(struct irc_ad *a, int status)
{
    /* Jitter: between half and all of the delay, so many bots cut off
     * together do not return together. */
    struct backoff_policy p = {
        a->cfg.reconnect_min_ms, a->cfg.reconnect_max_ms,
        BACKOFF_JITTER_UPPER
    };
    uint64_t delay;
    int attempt = a->attempt < INT_MAX ? (int)a->attempt : INT_MAX;

    if (a->stopping)
        return;
    /* A refused login will not fix itself in seconds: wait the most. */
    if (status == PARLEY_ERR_CONFIG)
        attempt = INT_MAX;
    delay = (uint64_t)backoff_delay_ms(&p, attempt, -1, random_u64());
    a->attempt++;
    a->state = IRC_WAITING;
    log_info("irc %s: reconnecting in %llu ms", a->cfg.name,
             (unsigned long long)delay);
    loop_timer_start(a->reconnect_timer, delay, 0);
}

static void session_teardown(struct irc_ad *a)
{
    size_t i;

    /* Before irc_disconnect closes the fd the watch is on. */
    loop_watch_free(a->poll);
    a->poll = NULL;
    a->write_failed = a->pump_on_write = 0;
    a->fd = -1;
    if (a->sess)
        irc_disconnect(a->sess);
    irc_transport_close(a->tp);
    a->tp = NULL;
    for (i = 0; i < a->n_chans; i++) {
        a->chans[i].joined = 0;
        a->chans[i].names_open = 0;
        chan_clear_members(&a->chans[i]);
    }
    /* While disconnected every nick may change hands unseen. */
    memset(a->query, 0, sizeof(a->query));
    a->whox = 0;
    a->base.connected = 0;
    loop_timer_stop(a->flood_timer);
}

static void connection_lost(struct irc_ad *a, int status, const char *why)
{
    if (a->state == IRC_QUITTING) {
        /* The answer to QUIT: the server (ERROR, then EOF) or the
         * library's loopback socket closing after it. */
        log_info("irc %s: disconnected after QUIT (%s)", a->cfg.name, why);
        quit_finish(a);
        return;
    }
    if (a->state != IRC_CONNECTING && a->state != IRC_REGISTERED)
        return;
    if (status == PARLEY_ERR_CONFIG)
        log_error("irc %s: %s", a->cfg.name, why);
    else
        log_warn("irc %s: %s", a->cfg.name, why);
    snprintf(a->base.errstr, sizeof(a->base.errstr), "%s", why);
    a->base.err = status;
    session_teardown(a);
    a->state = IRC_STOPPED;
    schedule_reconnect(a, status);
}

static void on_transport_closed(void *ctx, int status, const char *why)
{
    struct irc_ad *a = ctx;

    connection_lost(a, status, why);
}

static void connect_attempt(struct irc_ad *a)
{
    struct irc_transport_opts o;
    struct sockaddr_in local;
    socklen_t len = sizeof(local);
    char err[256];
    fd_set in, out;
    int port = 0, maxfd = 0, result;
    const char *nick;

    memset(&o, 0, sizeof(o));
    o.network = a->cfg.name;
    o.host = a->cfg.host;
    o.port = a->cfg.port;
    o.tls = a->cfg.tls;
    o.tls_verify = a->cfg.tls_verify;
    o.ca_file = a->cfg.ca_file;
    o.sasl_user = a->sasl_password ? a->cfg.sasl_user : NULL;
    o.sasl_password = a->sasl_password;
    o.ping_interval_ms = (unsigned)a->cfg.ping_interval_s * 1000u;
    o.register_timeout_ms = (unsigned)a->cfg.register_timeout_s * 1000u;
    a->state = IRC_CONNECTING;
    result = irc_transport_start(&a->tp, a->loop, &o,
                                 on_transport_closed, a, &port, err,
                                 sizeof(err));
    if (result != PARLEY_OK) {
        log_error("irc %s: %s", a->cfg.name, err);
        a->state = IRC_STOPPED;
        schedule_reconnect(a, result);
        return;
    }
    log_info("irc %s: connecting to %s port %d%s", a->cfg.name, a->cfg.host,
             a->cfg.port, a->cfg.tls ? " (TLS)" : "");
    a->nick_try = 0;
    nick = a->cfg.nick;
    snprintf(a->nick, sizeof(a->nick), "%s", nick);
    a->userlen = a->hostlen = 0;
    if (irc_connect(a->sess, "127.0.0.1", (unsigned short)port, NULL, nick,
                    a->cfg.username, a->cfg.realname)) {
        snprintf(err, sizeof(err), "libircclient connect failed: %s",
                 irc_strerror(irc_errno(a->sess)));
        goto fail;
    }
    FD_ZERO(&in);
    FD_ZERO(&out);
    if (irc_add_select_descriptors(a->sess, &in, &out, &maxfd) ||
        maxfd <= 0 || maxfd >= FD_SETSIZE ||
        (!FD_ISSET(maxfd, &in) && !FD_ISSET(maxfd, &out))) {
        /* fd_set cannot hold descriptors from FD_SETSIZE on, and the
         * library offers no other interface. */
        snprintf(err, sizeof(err), "cannot watch the libircclient socket "
                 "(fd %d; FD_SETSIZE is %d)", maxfd, FD_SETSIZE);
        goto fail;
    }
    a->fd = maxfd;
    if (getsockname(a->fd, (struct sockaddr *)&local, &len) < 0 ||
        local.sin_family != AF_INET) {
        snprintf(err, sizeof(err), "getsockname on the libircclient socket "
                 "failed");
        goto fail;
    }
    irc_transport_expect_peer(a->tp, &local);
    /* Without TCP_NODELAY a second write while the first is unacked (an
     * answer longer than the library's 1024-byte buffer goes in two)
     * waits for the transport's delayed ACK, 40 ms.  Best effort: the
     * lines still arrive without it. */
    {
        int one = 1;

        if (setsockopt(a->fd, IPPROTO_TCP, TCP_NODELAY, &one,
                       sizeof(one)) < 0)
            log_debug("irc %s: TCP_NODELAY on the library's socket "
                      "failed", a->cfg.name);
    }
    a->poll = loop_watch_new(a->loop, a->fd, on_poll, a);
    if (!a->poll) {
        snprintf(err, sizeof(err), "cannot poll the libircclient socket");
        goto fail;
    }
    a->write_failed = a->pump_on_write = 0;
    session_rearm(a);
    return;
fail:
    log_error("irc %s: %s", a->cfg.name, err);
    session_teardown(a);
    a->state = IRC_STOPPED;
    schedule_reconnect(a, PARLEY_ERR_IO);
}

static void on_reconnect_timer(void *privdata)
{
    struct irc_ad *a = privdata;

    if (a->stopping || a->state != IRC_WAITING)
        return;
    connect_attempt(a);
}

void join_channel(struct irc_ad *a, struct irc_chan *c)
{
    irc_cmd_join(a->sess, c->name, c->key);
    c->join_at = now_ms(a) + 30000;
}

static void on_tick(void *privdata)
{
    struct irc_ad *a = privdata;
    uint64_t now = now_ms(a);
    size_t i;
    int touched = 0;

    if (a->state != IRC_REGISTERED)
        return;
    for (i = 0; i < a->n_chans; i++) {
        struct irc_chan *c = &a->chans[i];

        if (c->configured && !c->joined && now >= c->join_at) {
            join_channel(a, c);
            touched = 1;
        }
    }
    if (irc_casecmp(a->casemap, a->nick, a->cfg.nick) && now >= a->regain_at) {
        irc_cmd_nick(a->sess, a->cfg.nick);
        a->regain_at = now + (uint64_t)a->cfg.nick_regain_s * 1000;
        touched = 1;
    }
    if (touched)
        session_rearm(a);
}

/* ---- adapter ops ------------------------------------------------------- */

/* Release the flood, reconnect and tick timers, and the quit timer too
 * when with_quit; safe from their callbacks, and again. */
static void irc_timers_free(struct irc_ad *a, int with_quit)
{
    loop_timer_free(a->flood_timer);
    loop_timer_free(a->reconnect_timer);
    loop_timer_free(a->tick_timer);
    a->flood_timer = a->reconnect_timer = a->tick_timer = NULL;
    if (with_quit) {
        loop_timer_free(a->quit_timer);
        a->quit_timer = NULL;
    }
}

static int irc_start(struct adapter *ad)
{
    struct irc_ad *a = ad->priv;

    a->stopping = 0;
    loop_timer_start(a->tick_timer, IRC_TICK_MS, IRC_TICK_MS);
    connect_attempt(a);
    return PARLEY_OK;
}

/*
 * The goodbye.  QUIT goes through libircclient, behind any answer lines
 * still in its output buffer, so they leave first; the poll keeps
 * flushing the buffer to the transport, which relays it upstream (through
 * TLS when configured).  The server answers QUIT with ERROR and closes,
 * which ends the session through connection_lost; IRC_QUIT_TIMEOUT_MS
 * bounds the wait when it does not.
 */
static void quit_try(struct irc_ad *a)
{
    uint64_t now = now_ms(a), left;
    const char *msg = a->cfg.quit_message ? a->cfg.quit_message
                                          : "parley shutting down";
    int rc;

    if (!a->quit_sent) {
        /* quit_message was checked at config time: one line, no control
         * bytes; it is passed through "%s", never as the format. */
        if (msg[0])
            rc = irc_send_raw(a->sess, "QUIT :%s", msg);
        else
            rc = irc_send_raw(a->sess, "QUIT");
        if (rc == 0) {
            a->quit_sent = 1;
            log_debug("irc %s: QUIT sent, waiting up to %d ms for the "
                      "server to close", a->cfg.name, IRC_QUIT_TIMEOUT_MS);
        } else if (irc_errno(a->sess) != LIBIRC_ERR_NOMEM) {
            log_warn("irc %s: cannot send QUIT: %s", a->cfg.name,
                     irc_strerror(irc_errno(a->sess)));
            quit_finish(a);
            return;
        }
        session_rearm(a);
    }
    left = now < a->quit_deadline ? a->quit_deadline - now : 0;
    if (!a->quit_sent && left > IRC_QUIT_RETRY_MS)
        left = IRC_QUIT_RETRY_MS;
    loop_timer_start(a->quit_timer, left, 0);
}

static void on_quit_timer(void *privdata)
{
    struct irc_ad *a = privdata;

    if (a->state != IRC_QUITTING)
        return;
    if (now_ms(a) < a->quit_deadline) {
        quit_try(a);
        return;
    }
    log_warn("irc %s: %s did not close the connection within %d ms of "
             "QUIT%s; closing it", a->cfg.name, a->cfg.host,
             IRC_QUIT_TIMEOUT_MS, a->quit_sent ? "" : " (QUIT not sent: "
             "the client's output buffer stayed full)");
    quit_finish(a);
}

/* End of a quit (server closed, timeout or error): close everything
 * that is left.  Runs once: it leaves IRC_QUITTING. */
static void quit_finish(struct irc_ad *a)
{
    if (a->state != IRC_QUITTING)
        return;
    session_teardown(a);
    a->state = IRC_STOPPED;
    loop_timer_free(a->quit_timer);
    a->quit_timer = NULL;
}

/*
 * adapter.h: stop may finish asynchronously.  The adapter itself is not
 * freed here: the quit timer, the poll and the transport's handles close
 * through the loop, which main runs until none is left, and only then
 * calls free.
 */
static void irc_stop(struct adapter *ad)
{
    struct irc_ad *a = ad->priv;

    if (a->stopping)
        return;
    a->stopping = 1;
    a->base.connected = 0;
    irc_timers_free(a, 0);
    /* Pending answers finish now, as failures, exactly once. */
    irc_queue_free(a->queue, irc_job_drop);
    a->queue = NULL;
    if (a->state == IRC_REGISTERED) {
        a->state = IRC_QUITTING;
        a->quit_deadline = now_ms(a) + IRC_QUIT_TIMEOUT_MS;
        quit_try(a);
        return;
    }
    /* Not registered (connecting, or waiting to reconnect): there is no
     * one to say goodbye to. */
    session_teardown(a);
    a->state = IRC_STOPPED;
    irc_timers_free(a, 1);
}

static void irc_free(struct adapter *ad)
{
    struct irc_ad *a;
    size_t i;

    if (!ad)
        return;
    a = ad->priv;
    irc_timers_free(a, 1);      /* done by stop, unless never started */
    if (a->queue)
        irc_queue_free(a->queue, irc_job_drop);
    if (a->sess)
        irc_destroy_session(a->sess);
    for (i = 0; i < a->n_chans; i++) {
        chan_clear_members(&a->chans[i]);
        if (a->chans[i].key) {
            explicit_bzero(a->chans[i].key, strlen(a->chans[i].key));
            free(a->chans[i].key);
        }
    }
    for (i = 0; i < IRC_MORE_SLOTS; i++)
        irc_lines_free(&a->more[i].lines);
    if (a->sasl_password) {
        explicit_bzero(a->sasl_password, strlen(a->sasl_password));
        free(a->sasl_password);
    }
    irc_config_free(&a->cfg);
    free(a);
}

static const struct adapter_ops irc_ops = {
    .type = "irc",
    .start = irc_start,
    .send = irc_send,
    .typing = irc_typing,
    .more = irc_more,
    .progress = irc_progress,
    .stop = irc_stop,
    .free = irc_free,
};

/* Read secrets named by the config.  Returns a parley status. */
static int read_secrets(struct irc_ad *a, char *err, size_t errlen)
{
    size_t i;
    int result;

    if (a->cfg.sasl_password_env) {
        result = config_secret_read(a->cfg.sasl_password_env,
                                    &a->sasl_password, err, errlen);
        if (result != PARLEY_OK)
            return result;
        if (!a->sasl_password) {
            snprintf(err, errlen, "irc %s: sasl_password_env: %s is not set",
                     a->cfg.name, a->cfg.sasl_password_env);
            return PARLEY_ERR_CONFIG;
        }
        /* Fail closed: a password the logger cannot redact is not used. */
        if (log_add_secret(a->sasl_password) != PARLEY_OK) {
            snprintf(err, errlen, "irc %s: cannot register the SASL "
                     "password for log redaction (more than %d secrets, "
                     "or out of memory)", a->cfg.name, LOG_SECRETS_MAX);
            return PARLEY_ERR_CONFIG;
        }
    }
    for (i = 0; i < a->n_chans; i++) {
        const struct irc_channel_conf *cc = &a->cfg.channels[i];

        if (!cc->key_env)
            continue;
        result = config_secret_read(cc->key_env, &a->chans[i].key, err,
                                    errlen);
        if (result != PARLEY_OK)
            return result;
        if (!a->chans[i].key) {
            snprintf(err, errlen, "irc %s: channel %s: key_env %s is not set",
                     a->cfg.name, cc->name, cc->key_env);
            return PARLEY_ERR_CONFIG;
        }
        if (strpbrk(a->chans[i].key, " ,\r\n")) {
            snprintf(err, errlen, "irc %s: channel %s: the key in %s holds "
                     "a space, comma or newline", a->cfg.name, cc->name,
                     cc->key_env);
            return PARLEY_ERR_CONFIG;
        }
        if (log_add_secret(a->chans[i].key) != PARLEY_OK) {
            snprintf(err, errlen, "irc %s: channel %s: cannot register the "
                     "key for log redaction (more than %d secrets, or out "
                     "of memory)", a->cfg.name, cc->name, LOG_SECRETS_MAX);
            return PARLEY_ERR_CONFIG;
        }
    }
    return PARLEY_OK;
}

int irc_adapter_create(struct adapter **out, const struct adapter_env *env,
                       void *setting, char *err, size_t errlen)
{
    struct irc_ad *a;
    irc_callbacks_t cb;
    size_t i;
    int result;

    *out = NULL;
    a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "irc adapter: out of memory");
        return PARLEY_ERR_OOM;
    }
    a->fd = -1;
    a->casemap = IRC_CASEMAP_RFC1459;
    snprintf(a->chantypes, sizeof(a->chantypes), "#&");
    snprintf(a->prefix_modes, sizeof(a->prefix_modes), "ov");
    snprintf(a->prefix_syms, sizeof(a->prefix_syms), "@+");
    snprintf(a->chanmodes[0], sizeof(a->chanmodes[0]), "beI");
    snprintf(a->chanmodes[1], sizeof(a->chanmodes[1]), "k");
    snprintf(a->chanmodes[2], sizeof(a->chanmodes[2]), "l");
    snprintf(a->chanmodes[3], sizeof(a->chanmodes[3]), "imnpst");
    result = irc_config_parse(&a->cfg, setting, err, errlen);
    if (result != PARLEY_OK)
        goto fail;
    if (a->cfg.tls && !a->cfg.tls_verify)
        log_warn("irc %s: tls_verify = false: the server's certificate is "
                 "NOT checked", a->cfg.name);
    for (i = 0; i < a->cfg.n_channels; i++) {
        struct irc_chan *c = chan_add(a, a->cfg.channels[i].name);

        if (!c) {
            snprintf(err, errlen, "irc %s: too many channels", a->cfg.name);
            result = PARLEY_ERR_CONFIG;
            goto fail;
        }
        c->configured = 1;
    }
    result = read_secrets(a, err, errlen);
    if (result != PARLEY_OK)
        goto fail;
    result = irc_queue_create(&a->queue, IRC_QUEUE_CAP, queue_asker_cap(a));
    if (result != PARLEY_OK) {
        snprintf(err, errlen, "irc adapter: out of memory");
        goto fail;
    }
    memset(&cb, 0, sizeof(cb));
    cb.event_connect = ev_connect;
    cb.event_nick = ev_nick;
    cb.event_quit = ev_quit;
    cb.event_join = ev_join;
    cb.event_part = ev_part;
    cb.event_mode = ev_mode;
    cb.event_kick = ev_kick;
    cb.event_channel = ev_message;
    cb.event_privmsg = ev_message;
    cb.event_invite = ev_invite;
    cb.event_ctcp_req = ev_ctcp;
    cb.event_ctcp_action = ev_action;
    cb.event_numeric = ev_numeric;
    cb.event_unknown = ev_unknown;
    a->sess = irc_create_session(&cb);
    if (!a->sess) {
        snprintf(err, errlen, "irc adapter: cannot create a libircclient "
                 "session");
        result = PARLEY_ERR_OOM;
        goto fail;
    }
    irc_set_ctx(a->sess, a);
    a->loop = env->loop;
    a->flood_timer = loop_timer_new(a->loop, on_flood_timer, a);
    a->reconnect_timer = loop_timer_new(a->loop, on_reconnect_timer, a);
    a->tick_timer = loop_timer_new(a->loop, on_tick, a);
    a->quit_timer = loop_timer_new(a->loop, on_quit_timer, a);
    if (!a->flood_timer || !a->reconnect_timer || !a->tick_timer ||
        !a->quit_timer) {
        snprintf(err, errlen, "irc adapter: cannot create timers");
        result = PARLEY_ERR_OOM;
        goto fail;
    }
    irc_bucket_init(&a->bucket, (unsigned)a->cfg.flood_burst,
                    (unsigned)a->cfg.flood_rate_ms, loop_now_ms(a->loop));
    a->base.ops = &irc_ops;
    a->base.loop = env->loop;
    a->base.priv = a;
    a->base.account = a->cfg.name;
    *out = &a->base;
    return PARLEY_OK;
fail:
    a->base.priv = a;
    irc_free(&a->base);
    return result;
}
