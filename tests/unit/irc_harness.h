/*
 * Harness for IRC adapter tests that run the real adapter in this process
 * against a real ngircd (started by the test on a free port) or a scripted
 * server socket, with raw-socket IRC clients as the people.  The core
 * modules the adapter calls (router_submit, the logger and the secret
 * reader) are replaced by recording stubs defined here, so the
 * adapter can be tested before and independently of the router.  Header
 * only, like spawn.h; include it from exactly one test file.
 */
#ifndef PARLEY_TEST_IRC_HARNESS_H
#define PARLEY_TEST_IRC_HARNESS_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libconfig.h>
#include <uv.h>

#include "adapter.h"
#include "config.h"
#include "event.h"
#include "log.h"
#include "loop.h"
#include "router.h"
#include "spawn.h"
#include "status.h"

#define NGIRCD "/usr/sbin/ngircd"

/* ---- stubs for the core ------------------------------------------------ */

/* The real loop (its timers and fd watches) on a uv loop the tests run
 * themselves: h_loop_open in setup, h_loop_close in teardown. */
static uv_loop_t h_uv;
static struct loop *h_loop;

static void h_loop_open(void)
{
    uv_loop_init(&h_uv);
    if (loop_create(&h_loop, &h_uv) != PARLEY_OK)
        abort();
}

static void h_loop_close(void)
{
    loop_close(h_loop);
    uv_run(&h_uv, UV_RUN_DEFAULT);
    loop_free(h_loop);
    h_loop = NULL;
    uv_loop_close(&h_uv);
}

struct h_event {
    enum event_kind kind;
    char room[256], sender[72], sender_name[72], text[2048];
    char limit_key[256];
    int addressed, self, is_admin, from_bot, members;
};

#define H_EVENTS_MAX 256
static struct h_event h_events[H_EVENTS_MAX];
static int h_n_events;

void router_submit(struct router *r, const struct event *ev)
{
    struct h_event *e;

    (void)r;
    if (h_n_events == H_EVENTS_MAX)
        return;
    e = &h_events[h_n_events++];
    memset(e, 0, sizeof(*e));
    e->kind = ev->kind;
    snprintf(e->room, sizeof(e->room), "%s", ev->room ? ev->room : "");
    snprintf(e->sender, sizeof(e->sender), "%s",
             ev->sender ? ev->sender : "");
    snprintf(e->sender_name, sizeof(e->sender_name), "%s",
             ev->sender_name ? ev->sender_name : "");
    snprintf(e->text, sizeof(e->text), "%s", ev->text ? ev->text : "");
    snprintf(e->limit_key, sizeof(e->limit_key), "%s",
             ev->limit_key ? ev->limit_key : "");
    e->addressed = ev->addressed;
    e->self = ev->self;
    e->is_admin = ev->is_admin;
    e->from_bot = ev->from_bot;
    e->members = ev->members;
}

/* Everything logged, for "a clear error" checks. */
static char h_log[64 * 1024];
static size_t h_log_len;

void log_msg(enum log_level level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    fprintf(stderr, "[%d] %s\n", (int)level, line);
    if (h_log_len + strlen(line) + 2 < sizeof(h_log)) {
        memcpy(h_log + h_log_len, line, strlen(line));
        h_log_len += strlen(line);
        h_log[h_log_len++] = '\n';
        h_log[h_log_len] = '\0';
    }
}

/* Set by a test to make the logger's secret table look full. */
static int h_secrets_full;

int log_add_secret(const char *secret)
{
    (void)secret;
    return h_secrets_full ? PARLEY_ERR_TOO_LARGE : PARLEY_OK;
}

int config_secret_read(const char *name, char **out, char *err,
                       size_t errlen)
{
    const char *v = getenv(name);

    (void)err;
    (void)errlen;
    *out = v ? strdup(v) : NULL;
    return PARLEY_OK;
}

/* ---- raw IRC clients ---------------------------------------------------- */

#define H_LINES_MAX 4096

struct h_client {
    int fd;
    char buf[16384];
    size_t len;
    char *lines[H_LINES_MAX];
    int n;
    uint64_t at[H_LINES_MAX];   /* arrival, ms */
};

static uint64_t h_now(void)
{
    (void)spawn_redis;  /* spawn.h helper this test has no use for */
    return uv_hrtime() / 1000000;
}

static void h_client_send(struct h_client *c, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
    va_end(ap);
    memcpy(line + n, "\r\n", 2);
    if (write(c->fd, line, (size_t)n + 2) != n + 2)
        fprintf(stderr, "client write failed\n");
}

static void h_client_read(struct h_client *c)
{
    ssize_t r;
    char *nl;

    if (c->fd < 0)
        return;
    for (;;) {
        r = read(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len);
        if (r <= 0)
            break;
        c->len += (size_t)r;
        c->buf[c->len] = '\0';
        while ((nl = memchr(c->buf, '\n', c->len))) {
            size_t n = (size_t)(nl - c->buf) + 1;

            if (c->n < H_LINES_MAX) {
                c->lines[c->n] = strndup(c->buf, n);
                c->at[c->n++] = h_now();
            }
            if (!strncmp(c->buf, "PING ", 5)) {
                char tok[128];

                snprintf(tok, sizeof(tok), "%.*s", (int)(n - 7), c->buf + 5);
                h_client_send(c, "PONG %s", tok);
            }
            memmove(c->buf, c->buf + n, c->len - n);
            c->len -= n;
        }
    }
}

static struct h_client *h_clients[8];
static int h_n_clients;

/* Run the loop and read every client for ms milliseconds. */
static void h_pump(int ms)
{
    uint64_t end = h_now() + (uint64_t)ms;
    struct timespec pause = {0, 2 * 1000 * 1000};
    int i;

    do {
        uv_run(&h_uv, UV_RUN_NOWAIT);
        for (i = 0; i < h_n_clients; i++)
            h_client_read(h_clients[i]);
        nanosleep(&pause, NULL);
    } while (h_now() < end);
}

/* Index of the first line from index from that contains s, waiting up to
 * ms; -1 when none came. */
static int h_wait_line(struct h_client *c, int from, const char *s, int ms)
{
    uint64_t end = h_now() + (uint64_t)ms;
    int i;

    for (;;) {
        for (i = from; i < c->n; i++)
            if (strstr(c->lines[i], s))
                return i;
        if (h_now() >= end)
            return -1;
        h_pump(5);
    }
}

static struct h_client *h_client_connect(int port, const char *nick)
{
    struct h_client *c = calloc(1, sizeof(*c));
    struct sockaddr_in sa;

    if (!c)
        return NULL;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(c->fd);
        free(c);
        return NULL;
    }
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    h_clients[h_n_clients++] = c;
    h_client_send(c, "NICK %s", nick);
    h_client_send(c, "USER %s 0 * :%s", nick, nick);
    if (h_wait_line(c, 0, " 001 ", 5000) < 0)
        fprintf(stderr, "client %s did not register\n", nick);
    return c;
}

static void h_client_free(struct h_client *c)
{
    int i;

    if (!c)
        return;
    for (i = 0; i < h_n_clients; i++)
        if (h_clients[i] == c) {
            h_clients[i] = h_clients[--h_n_clients];
            break;
        }
    if (c->fd >= 0)
        close(c->fd);
    for (i = 0; i < c->n; i++)
        free(c->lines[i]);
    free(c);
}

/* ---- ngircd ------------------------------------------------------------- */

struct h_server {
    char dir[128];
    int port, tls_port;
    pid_t pid;
};

/* Write an ngircd config into dir and start it.  tls_port > 0 adds an
 * SSL listener with dir/server.pem + dir/server.key.  0 or -1.
 * MaxPenaltyTime = 0 lifts ngircd's own input pacing (3 commands or 256
 * bytes a second per client, adapters/irc/README.md "Flood control"), so
 * what the tests see is the adapter's pacing; MaxConnectionsIP = 0 lets
 * more than 5 test clients connect from 127.0.0.1. */
static int h_ngircd_start(struct h_server *s)
{
    char conf[256], body[2048], ssl[512] = "";
    char *argv[] = {NGIRCD, "-n", "-f", conf, NULL};
    char logp[256];
    FILE *f;

    snprintf(conf, sizeof(conf), "%s/ngircd.conf", s->dir);
    snprintf(logp, sizeof(logp), "%s/ngircd.log", s->dir);
    if (s->tls_port > 0)
        snprintf(ssl, sizeof(ssl),
                 "[SSL]\nPorts = %d\nCertFile = %s/server.pem\n"
                 "KeyFile = %s/server.key\n", s->tls_port, s->dir, s->dir);
    snprintf(body, sizeof(body),
             "[Global]\nName = irc.test\nInfo = parley test\n"
             "Listen = 127.0.0.1\nPorts = %d\nMotdPhrase = hi\n"
             "[Limits]\nPingTimeout = 120\nPongTimeout = 20\n"
             "MaxNickLength = 30\nMaxPenaltyTime = 0\n"
             "MaxConnectionsIP = 0\n"
             "[Options]\nIdent = no\nPAM = no\nDNS = no\n%s",
             s->port, ssl);
    f = fopen(conf, "w");
    if (!f)
        return -1;
    fputs(body, f);
    fclose(f);
    s->pid = spawn_process(argv, logp);
    if (s->pid <= 0 || spawn_wait_port(s->port, 5000) != 0 ||
        (s->tls_port > 0 && spawn_wait_port(s->tls_port, 5000) != 0)) {
        spawn_stop(s->pid);
        s->pid = -1;
        return -1;
    }
    return 0;
}

static void h_ngircd_stop(struct h_server *s)
{
    spawn_stop(s->pid);
    s->pid = -1;
}

static int h_mkdtemp(struct h_server *s)
{
    snprintf(s->dir, sizeof(s->dir), "/tmp/parley-irc-XXXXXX");
    if (!mkdtemp(s->dir))
        return -1;
    /* ngircd drops to "nobody" and must still read its files. */
    chmod(s->dir, 0755);
    return 0;
}

static void h_rmtree(const char *dir)
{
    char cmd[300];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

/* ---- the adapter under test --------------------------------------------- */

static config_t h_cfg;
/* The adapter of the running test, destroyed by teardown when an assert
 * ended the test early (else the loop would run its reconnects forever). */
static struct adapter *h_current;

/* Create the adapter from an "irc = { ... };" libconfig text. */
static int h_adapter_create(struct adapter **out, const char *text,
                            char *err, size_t errlen)
{
    struct adapter_env env;
    config_setting_t *s;
    static int dummy_router;
    int result;

    config_init(&h_cfg);
    if (config_read_string(&h_cfg, text) != CONFIG_TRUE) {
        snprintf(err, errlen, "libconfig: %s line %d",
                 config_error_text(&h_cfg), config_error_line(&h_cfg));
        config_destroy(&h_cfg);
        return PARLEY_ERR_CONFIG;
    }
    s = config_lookup(&h_cfg, "adapters");
    if (s)
        s = config_setting_get_elem(s, 0);
    memset(&env, 0, sizeof(env));
    env.loop = h_loop;
    result = irc_adapter_create(out, &env, s, err, errlen);
    if (result == PARLEY_OK) {
        (*out)->router = (struct router *)&dummy_router;
        h_current = *out;
    }
    return result;
}

/* Stop, let the loop close every handle, free. */
static void h_adapter_destroy(struct adapter *ad)
{
    if (!ad)
        return;
    h_current = NULL;
    ad->ops->stop(ad);
    uv_run(&h_uv, UV_RUN_DEFAULT);
    ad->ops->free(ad);
    config_destroy(&h_cfg);
}

/* Count recorded events matching kind and a text substring. */
static int h_count_events(enum event_kind kind, const char *text)
{
    int i, n = 0;

    for (i = 0; i < h_n_events; i++)
        if (h_events[i].kind == kind &&
            (!text || strstr(h_events[i].text, text)))
            n++;
    return n;
}

static const struct h_event *h_wait_event(enum event_kind kind,
                                          const char *text, int ms)
{
    uint64_t end = h_now() + (uint64_t)ms;
    int i;

    for (;;) {
        for (i = 0; i < h_n_events; i++)
            if (h_events[i].kind == kind &&
                (!text || strstr(h_events[i].text, text)))
                return &h_events[i];
        if (h_now() >= end)
            return NULL;
        h_pump(5);
    }
}

#endif
