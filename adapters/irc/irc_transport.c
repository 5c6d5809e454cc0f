/*
 * TLS/CAP/SASL transport under libircclient (see irc_transport.h).  One
 * transport lives for one connection attempt; reconnecting makes a new
 * one, so no state survives a drop by accident.  The streams, the
 * listener and the timer are the loop's (loop.h), which frees their
 * memory in its own close callbacks; the transport itself is freed by
 * irc_transport_close, or, when that runs inside one of the transport's
 * callbacks (closed() usually calls it), on the way out of that callback,
 * so nothing below it touches freed memory.
 */
#include "irc_transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "irc_cap.h"
#include "irc_libguard.h"
#include "irc_line.h"
#include "log.h"
#include "loop.h"
#include "status.h"

/* libircclient's input buffer is 1024 bytes (params.h:22): a line it
 * cannot hold whole would stall its session, so longer ones are dropped. */
#define TRANSPORT_LIB_LINE_MAX 1000
/* Bytes kept for the library before it has connected, and registration
 * lines held until CAP END.  The server sends a few notices at most; the
 * library sends PASS, NICK and USER. */
#define TRANSPORT_PENDING_MAX (32 * 1024)
#define TRANSPORT_HELD_MAX 4096
/* Bytes read from libircclient before a newline: its output buffer is
 * 1024 bytes, so a longer line cannot come from it. */
#define TRANSPORT_LIB_IN_MAX 2048
/* Plaintext read from OpenSSL at once. */
#define TRANSPORT_TLS_CHUNK 16384
/* Lines relayed during one read are gathered and written with one call
 * per direction (see "batch" below); a batch that would outgrow this is
 * written early. */
#define TRANSPORT_BATCH_MAX 8192

struct irc_transport {
    struct loop *loop;
    struct loop_listener *listener; /* until libircclient connects */
    struct loop_tcp *lib;   /* accepted loopback stream, or NULL */
    struct loop_tcp *up;    /* server stream, or NULL */
    struct loop_timer *timer;

    int busy;               /* transport callbacks on the stack */
    int closing;            /* irc_transport_close was called */
    int failed;             /* closed() was (or is being) reported */
    int lib_connected, up_connected, released;
    int whox;               /* ISUPPORT WHOX seen (libircclient drops
                               parameters past its tenth) */

    struct sockaddr_in expect;
    int expect_set;

    char *network, *host;
    int port, tls, tls_verify;
    char *ca_file;
    unsigned ping_ms, register_ms;
    uint64_t started_ms, last_rx_ms, last_ping_ms;

    SSL_CTX *ssl_ctx;
    SSL *ssl;
    BIO *rbio, *wbio;       /* owned by ssl */
    int handshake_done;

    struct irc_cap cap;

    char up_in[IRC_LINE_IN_MAX + 2];
    size_t up_len;
    char lib_in[TRANSPORT_LIB_IN_MAX];
    size_t lib_len;
    char *to_lib;           /* lines for the library before it connects */
    size_t to_lib_len;
    char held[TRANSPORT_HELD_MAX];
    size_t held_len;

    /* While a read callback runs (batching > 0), relayed lines gather
     * here and go out in one write when it ends: a burst of server lines
     * is one write to the library, an answer's lines one write (one TLS
     * record) to the server, not one each.  Wiped once written: a
     * batch for the server may hold the held PASS line. */
    int batching;
    char up_batch[TRANSPORT_BATCH_MAX];
    size_t up_batch_len;
    char lib_batch[TRANSPORT_BATCH_MAX];
    size_t lib_batch_len;

    irc_transport_closed_fn *closed;
    void *ctx;
};

static void transport_maybe_free(struct irc_transport *t)
{
    if (!t->closing || t->busy > 0)
        return;
    if (t->ssl)
        SSL_free(t->ssl);
    if (t->ssl_ctx)
        SSL_CTX_free(t->ssl_ctx);
    irc_cap_clear(&t->cap);
    free(t->to_lib);
    free(t->network);
    free(t->host);
    free(t->ca_file);
    explicit_bzero(t, sizeof(*t));
    free(t);
}

/* Every loop callback into the transport is bracketed by these, so that
 * irc_transport_close inside it defers the free to the way out. */
static void transport_enter(struct irc_transport *t)
{
    t->busy++;
}

static void transport_leave(struct irc_transport *t)
{
    t->busy--;
    transport_maybe_free(t);
}

/* Close both connections and stop; the library sees EOF on its socket. */
static void transport_shutdown(struct irc_transport *t)
{
    loop_listener_free(t->listener);
    t->listener = NULL;
    loop_tcp_free(t->lib);
    t->lib = NULL;
    loop_tcp_free(t->up);
    t->up = NULL;
    loop_timer_free(t->timer);
    t->timer = NULL;
    t->lib_connected = 0;
    t->up_connected = 0;
}

/* Report a failure once, then shut down. */
static void transport_fail(struct irc_transport *t, int status,
                           const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void transport_fail(struct irc_transport *t, int status,
                           const char *fmt, ...)
{
    char why[256];
    va_list ap;

    if (t->failed || t->closing)
        return;
    t->failed = 1;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    irc_cap_clear(&t->cap);
    transport_shutdown(t);
    if (t->closed)
        t->closed(t->ctx, status, why);
}

/* Queue raw bytes on a stream (copied; wiped by the loop once written;
 * a later write failure ends the stream). */
static void stream_write(struct irc_transport *t, struct loop_tcp *s,
                         const char *data, size_t len)
{
    int rc = loop_tcp_write(s, data, len);

    if (rc == PARLEY_ERR_OOM)
        transport_fail(t, rc, "out of memory");
    else if (rc != PARLEY_OK)
        transport_fail(t, rc, "write failed: %s", parley_status_name(rc));
}

/* Move what OpenSSL produced to the socket. */
static void tls_flush(struct irc_transport *t)
{
    char buf[TRANSPORT_TLS_CHUNK];
    int n;

    while (t->up_connected && BIO_ctrl_pending(t->wbio) > 0) {
        n = BIO_read(t->wbio, buf, sizeof(buf));
        if (n <= 0)
            break;
        stream_write(t, t->up, buf, (size_t)n);
    }
}

/* Send bytes to the server now, through TLS when configured. */
static void up_send(struct irc_transport *t, const char *data, size_t len)
{
    if (!t->up_connected || t->failed)
        return;
    if (!t->tls) {
        stream_write(t, t->up, data, len);
        return;
    }
    if (SSL_write(t->ssl, data, (int)len) <= 0) {
        transport_fail(t, PARLEY_ERR_IO, "TLS write to %s failed", t->host);
        return;
    }
    tls_flush(t);
}

/* Write out what a read callback gathered for the server. */
static void up_flush(struct irc_transport *t)
{
    if (t->up_batch_len == 0)
        return;
    up_send(t, t->up_batch, t->up_batch_len);
    explicit_bzero(t->up_batch, t->up_batch_len);
    t->up_batch_len = 0;
}

/* Send bytes to the server: gathered while a read callback runs, else
 * now.  Always after what was gathered before, so the order holds. */
static void up_write(struct irc_transport *t, const char *data, size_t len)
{
    if (!t->up_connected || t->failed)
        return;
    if (t->batching && len <= sizeof(t->up_batch)) {
        if (t->up_batch_len + len > sizeof(t->up_batch))
            up_flush(t);
        memcpy(t->up_batch + t->up_batch_len, data, len);
        t->up_batch_len += len;
        return;
    }
    up_flush(t);
    up_send(t, data, len);
}

/* The same for the library's side of the loopback connection. */
static void lib_flush(struct irc_transport *t)
{
    if (t->lib_batch_len == 0)
        return;
    if (t->lib_connected && !t->failed)
        stream_write(t, t->lib, t->lib_batch, t->lib_batch_len);
    t->lib_batch_len = 0;
}

static void lib_write(struct irc_transport *t, const char *data, size_t len)
{
    if (t->batching && len <= sizeof(t->lib_batch)) {
        if (t->lib_batch_len + len > sizeof(t->lib_batch))
            lib_flush(t);
        memcpy(t->lib_batch + t->lib_batch_len, data, len);
        t->lib_batch_len += len;
        return;
    }
    lib_flush(t);
    stream_write(t, t->lib, data, len);
}

/* Bracket a read callback's relaying (inside transport_enter/leave). */
static void batch_begin(struct irc_transport *t)
{
    t->batching++;
}

static void batch_end(struct irc_transport *t)
{
    if (--t->batching > 0)
        return;
    if (t->failed) {
        explicit_bzero(t->up_batch, sizeof(t->up_batch));
        t->up_batch_len = t->lib_batch_len = 0;
        return;
    }
    lib_flush(t);
    up_flush(t);
}

/* Send one line (no CRLF) to the server.  Secret lines are wiped from the
 * stack copy and never logged. */
static void up_line(struct irc_transport *t, const char *line, int secret)
{
    char buf[IRC_LINE_MAX + 1];
    size_t n = strlen(line);

    if (n + 2 > IRC_LINE_MAX) {
        log_warn("irc %s: dropped an outgoing line of %zu bytes", t->network,
                 n);
        return;
    }
    memcpy(buf, line, n);
    memcpy(buf + n, "\r\n", 2);
    up_write(t, buf, n + 2);
    if (secret)
        explicit_bzero(buf, sizeof(buf));
}

static void cap_send(void *ctx, const char *line, int secret)
{
    up_line(ctx, line, secret);
}

/* Deliver one canonical line to libircclient. */
static void lib_line(struct irc_transport *t, const char *line)
{
    size_t n = strlen(line);
    char *grown;

    if (n > TRANSPORT_LIB_LINE_MAX) {
        log_warn("irc %s: dropped a %zu-byte line from the server",
                 t->network, n);
        return;
    }
    if (t->lib_connected) {
        char buf[TRANSPORT_LIB_LINE_MAX + 3];

        memcpy(buf, line, n);
        memcpy(buf + n, "\r\n", 2);
        lib_write(t, buf, n + 2);
        return;
    }
    if (t->to_lib_len + n + 2 > TRANSPORT_PENDING_MAX) {
        transport_fail(t, PARLEY_ERR_TOO_LARGE,
                       "the IRC client did not connect to the transport");
        return;
    }
    grown = realloc(t->to_lib, t->to_lib_len + n + 2);
    if (!grown) {
        transport_fail(t, PARLEY_ERR_OOM, "out of memory");
        return;
    }
    t->to_lib = grown;
    memcpy(t->to_lib + t->to_lib_len, line, n);
    memcpy(t->to_lib + t->to_lib_len + n, "\r\n", 2);
    t->to_lib_len += n + 2;
}

static void release_registration(struct irc_transport *t)
{
    if (t->released)
        return;
    t->released = 1;
    irc_cap_clear(&t->cap);
    if (t->cap.sasl_ok)
        log_info("irc %s: SASL authentication succeeded%s%s", t->network,
                 t->cap.account[0] ? " as " : "", t->cap.account);
    up_write(t, t->held, t->held_len);
    explicit_bzero(t->held, sizeof(t->held));
    t->held_len = 0;
}

/* One line from the server, NUL-terminated, CR/LF removed. */
static void up_handle_line(struct irc_transport *t, char *line)
{
    char canon[IRC_LINE_IN_MAX + 1];
    struct irc_msg m;
    int consumed = 0;

    if (line[0] == '\0')
        return;
    if (irc_line_parse(line, &m) != PARLEY_OK) {
        log_debug("irc %s: dropped a malformed line from the server",
                  t->network);
        return;
    }
    if (!strcmp(m.command, "PONG") && m.n_params >= 1 &&
        !strcmp(m.params[m.n_params - 1], "parley-ping"))
        return;
    if (!t->released) {
        if (!strcmp(m.command, "PING")) {
            char pong[IRC_LINE_MAX];
            struct irc_msg p;

            memset(&p, 0, sizeof(p));
            p.command = "PONG";
            p.params[0] = m.n_params ? m.params[m.n_params - 1] : "parley";
            p.n_params = 1;
            if (irc_line_format(pong, sizeof(pong), &p) == PARLEY_OK)
                up_line(t, pong, 0);
            return;
        }
        consumed = irc_cap_feed(&t->cap, &m);
        if (t->cap.state == IRC_CAP_FAILED) {
            transport_fail(t, PARLEY_ERR_CONFIG, "%s", t->cap.errstr);
            return;
        }
        if (t->cap.state == IRC_CAP_DONE)
            release_registration(t);
        if (consumed)
            return;
    }
    if (!strcmp(m.command, "005")) {
        size_t i;

        for (i = 1; i + 1 < m.n_params; i++)
            if (!strcmp(m.params[i], "WHOX"))
                t->whox = 1;
    }
    /* Lines the library would crash on (irc_libguard.c). */
    if (irc_lib_would_crash(&m))
        return;
    m.tags = NULL;
    if (irc_line_format(canon, sizeof(canon), &m) != PARLEY_OK)
        return;
    lib_line(t, canon);
}

/* Append plaintext from the server and handle every complete line. */
static void up_feed(struct irc_transport *t, const char *data, size_t len)
{
    while (len > 0 && !t->failed) {
        size_t room = sizeof(t->up_in) - 1 - t->up_len;
        size_t n = len < room ? len : room;
        char *start, *nl;

        memcpy(t->up_in + t->up_len, data, n);
        t->up_len += n;
        data += n;
        len -= n;
        t->up_in[t->up_len] = '\0';
        start = t->up_in;
        while (!t->failed &&
               (nl = memchr(start, '\n', t->up_len - (size_t)(start -
                                                       t->up_in)))) {
            *nl = '\0';
            if (nl > start && nl[-1] == '\r')
                nl[-1] = '\0';
            /* A NUL inside a line cuts it; the rest is dropped. */
            up_handle_line(t, start);
            start = nl + 1;
        }
        if (t->failed)
            return;
        t->up_len -= (size_t)(start - t->up_in);
        memmove(t->up_in, start, t->up_len);
        if (t->up_len == sizeof(t->up_in) - 1) {
            transport_fail(t, PARLEY_ERR_PROTOCOL,
                           "the server sent a line over %d bytes",
                           IRC_LINE_IN_MAX);
            return;
        }
    }
}

static void tls_fail(struct irc_transport *t)
{
    long v = SSL_get_verify_result(t->ssl);
    char buf[160];
    unsigned long e;

    if (v != X509_V_OK) {
        transport_fail(t, PARLEY_ERR_IO,
                       "TLS certificate verification failed for %s: %s",
                       t->host, X509_verify_cert_error_string(v));
        return;
    }
    e = ERR_get_error();
    ERR_error_string_n(e, buf, sizeof(buf));
    transport_fail(t, PARLEY_ERR_IO, "TLS handshake with %s failed: %s",
                   t->host, e ? buf : "connection closed");
}

static void start_negotiation(struct irc_transport *t);

static void tls_read(struct irc_transport *t, const char *data, size_t len)
{
    char buf[TRANSPORT_TLS_CHUNK];
    int n, e;

    if (BIO_write(t->rbio, data, (int)len) != (int)len) {
        transport_fail(t, PARLEY_ERR_OOM, "TLS buffer write failed");
        return;
    }
    if (!t->handshake_done) {
        n = SSL_do_handshake(t->ssl);
        tls_flush(t);
        if (n != 1) {
            e = SSL_get_error(t->ssl, n);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                tls_fail(t);
            return;
        }
        t->handshake_done = 1;
        log_info("irc %s: TLS %s with %s established%s", t->network,
                 SSL_get_version(t->ssl), t->host,
                 t->tls_verify ? "" : " (certificate NOT verified)");
        start_negotiation(t);
    }
    for (;;) {
        n = SSL_read(t->ssl, buf, sizeof(buf));
        if (n <= 0) {
            e = SSL_get_error(t->ssl, n);
            tls_flush(t);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            if (e == SSL_ERROR_ZERO_RETURN)
                transport_fail(t, PARLEY_ERR_EOF, "the server closed the "
                               "TLS connection");
            else
                transport_fail(t, PARLEY_ERR_IO, "TLS read from %s failed",
                               t->host);
            return;
        }
        up_feed(t, buf, (size_t)n);
        if (t->failed)
            return;
    }
}

static void on_up_data(const char *data, size_t len, void *privdata)
{
    struct irc_transport *t = privdata;

    if (t->failed)
        return;
    transport_enter(t);
    batch_begin(t);
    t->last_rx_ms = loop_now_ms(t->loop);
    if (t->tls)
        tls_read(t, data, len);
    else
        up_feed(t, data, len);
    batch_end(t);
    transport_leave(t);
}

/* Resolution, connection, read and write failures and EOF; the loop's
 * sentence names the host. */
static void on_up_end(int status, const char *why, void *privdata)
{
    struct irc_transport *t = privdata;

    transport_enter(t);
    transport_fail(t, status, "%s", why);
    transport_leave(t);
}

/* The credentials were encoded by irc_cap_init in irc_transport_start,
 * so the password itself is not kept. */
static void start_negotiation(struct irc_transport *t)
{
    irc_cap_begin(&t->cap, cap_send, t);
}

static void on_up_connected(void *privdata)
{
    struct irc_transport *t = privdata;

    if (t->failed)
        return;
    transport_enter(t);
    t->up_connected = 1;
    t->last_rx_ms = loop_now_ms(t->loop);
    if (t->tls) {
        int n = SSL_do_handshake(t->ssl);

        if (n != 1 && SSL_get_error(t->ssl, n) != SSL_ERROR_WANT_READ)
            tls_fail(t);
        else
            tls_flush(t);
    } else {
        start_negotiation(t);
    }
    transport_leave(t);
}

static const struct loop_tcp_cbs up_cbs = {
    .connected = on_up_connected,
    .data = on_up_data,
    .end = on_up_end,
};

/* Lines from libircclient: held until registration is released. */
static void lib_handle_line(struct irc_transport *t, const char *line)
{
    size_t n = strlen(line);

    if (n == 0)
        return;
    if (!t->released) {
        if (t->held_len + n + 2 > sizeof(t->held)) {
            transport_fail(t, PARLEY_ERR_TOO_LARGE,
                           "too much output before registration");
            return;
        }
        memcpy(t->held + t->held_len, line, n);
        memcpy(t->held + t->held_len + n, "\r\n", 2);
        t->held_len += n + 2;
        return;
    }
    up_line(t, line, 0);
}

static void lib_feed(struct irc_transport *t, const char *p, size_t len)
{
    while (len > 0 && !t->failed) {
        char *nl;
        size_t room = sizeof(t->lib_in) - 1 - t->lib_len;
        size_t n = len < room ? len : room;
        char *start;

        memcpy(t->lib_in + t->lib_len, p, n);
        t->lib_len += n;
        p += n;
        len -= n;
        start = t->lib_in;
        while (!t->failed && (nl = memchr(start, '\n', t->lib_len -
                                          (size_t)(start - t->lib_in)))) {
            *nl = '\0';
            if (nl > start && nl[-1] == '\r')
                nl[-1] = '\0';
            lib_handle_line(t, start);
            start = nl + 1;
        }
        if (t->failed)
            return;
        t->lib_len -= (size_t)(start - t->lib_in);
        memmove(t->lib_in, start, t->lib_len);
        if (t->lib_len == sizeof(t->lib_in) - 1) {
            transport_fail(t, PARLEY_ERR_PROTOCOL,
                           "the IRC client sent an overlong line");
            return;
        }
    }
}

static void on_lib_data(const char *data, size_t len, void *privdata)
{
    struct irc_transport *t = privdata;

    if (t->failed)
        return;
    transport_enter(t);
    batch_begin(t);
    lib_feed(t, data, len);
    batch_end(t);
    transport_leave(t);
}

static void on_lib_end(int status, const char *why, void *privdata)
{
    struct irc_transport *t = privdata;

    (void)status;
    (void)why;
    transport_enter(t);
    transport_fail(t, PARLEY_ERR_EOF, "the IRC client closed the loopback "
                   "connection");
    transport_leave(t);
}

static const struct loop_tcp_cbs lib_cbs = {
    .data = on_lib_data,
    .end = on_lib_end,
};

static void on_accept(struct loop_tcp *c, const struct sockaddr_in *peer,
                      void *privdata)
{
    struct irc_transport *t = privdata;

    if (t->failed || t->lib_connected) {
        loop_tcp_free(c);
        return;
    }
    if (!t->expect_set || peer->sin_port != t->expect.sin_port ||
        peer->sin_addr.s_addr != t->expect.sin_addr.s_addr) {
        /* Not our libircclient socket: another local process raced for
         * the port.  Refuse it and keep waiting for ours. */
        log_warn("irc %s: refused an unexpected loopback connection",
                 t->network);
        loop_tcp_free(c);
        return;
    }
    transport_enter(t);
    t->lib = c;
    loop_listener_free(t->listener);
    t->listener = NULL;
    t->lib_connected = 1;
    if (loop_tcp_start(t->lib, &lib_cbs, t) != PARLEY_OK) {
        transport_fail(t, PARLEY_ERR_IO, "cannot read the loopback "
                       "connection");
    } else if (t->to_lib_len) {
        stream_write(t, t->lib, t->to_lib, t->to_lib_len);
        free(t->to_lib);
        t->to_lib = NULL;
        t->to_lib_len = 0;
    }
    transport_leave(t);
}

static void tick(struct irc_transport *t)
{
    uint64_t now = loop_now_ms(t->loop);

    if (!t->released) {
        if (now - t->started_ms > t->register_ms) {
            irc_cap_fail(&t->cap, "timed out");
            transport_fail(t, PARLEY_ERR_TIMEOUT, "no registration with %s "
                           "within %u s (connect, TLS or CAP/SASL stalled)",
                           t->host, t->register_ms / 1000);
        }
        return;
    }
    if (now - t->last_rx_ms >= 2 * (uint64_t)t->ping_ms) {
        transport_fail(t, PARLEY_ERR_TIMEOUT, "ping timeout: nothing from "
                       "%s for %u s", t->host,
                       (unsigned)((now - t->last_rx_ms) / 1000));
        return;
    }
    if (now - t->last_rx_ms >= t->ping_ms &&
        now - t->last_ping_ms >= t->ping_ms) {
        t->last_ping_ms = now;
        up_line(t, "PING :parley-ping", 0);
    }
}

static void on_tick(void *privdata)
{
    struct irc_transport *t = privdata;

    if (t->failed)
        return;
    transport_enter(t);
    tick(t);
    transport_leave(t);
}

static int is_ip_literal(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, host, buf) == 1 ||
           inet_pton(AF_INET6, host, buf) == 1;
}

static int tls_setup(struct irc_transport *t, char *err, size_t errlen)
{
    char buf[160];

    t->ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!t->ssl_ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(t->ssl_ctx, TLS1_2_VERSION);
    if (t->tls_verify) {
        SSL_CTX_set_verify(t->ssl_ctx, SSL_VERIFY_PEER, NULL);
        if (t->ca_file) {
            if (SSL_CTX_load_verify_locations(t->ssl_ctx, t->ca_file,
                                              NULL) != 1) {
                snprintf(err, errlen, "cannot load ca_file %s", t->ca_file);
                ERR_clear_error();
                return PARLEY_ERR_CONFIG;
            }
        } else if (SSL_CTX_set_default_verify_paths(t->ssl_ctx) != 1) {
            goto fail;
        }
    } else {
        SSL_CTX_set_verify(t->ssl_ctx, SSL_VERIFY_NONE, NULL);
    }
    t->ssl = SSL_new(t->ssl_ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->rbio || !t->wbio) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        t->rbio = t->wbio = NULL;
        goto fail;
    }
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_connect_state(t->ssl);
    if (is_ip_literal(t->host)) {
        if (t->tls_verify &&
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl),
                                          t->host) != 1)
            goto fail;
    } else {
        if (SSL_set_tlsext_host_name(t->ssl, t->host) != 1)
            goto fail;
        if (t->tls_verify && SSL_set1_host(t->ssl, t->host) != 1)
            goto fail;
    }
    return PARLEY_OK;
fail:
    ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
    snprintf(err, errlen, "TLS setup failed: %s", buf);
    return PARLEY_ERR_OTHER;
}

int irc_transport_start(struct irc_transport **out, struct loop *loop,
                        const struct irc_transport_opts *o,
                        irc_transport_closed_fn *closed, void *ctx,
                        int *port_out, char *err, size_t errlen)
{
    struct irc_transport *t;
    uint64_t tick_ms;
    int result;

    *out = NULL;
    t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return PARLEY_ERR_OOM;
    }
    t->loop = loop;
    t->closed = closed;
    t->ctx = ctx;
    t->port = o->port;
    t->tls = o->tls;
    t->tls_verify = o->tls_verify;
    t->ping_ms = o->ping_interval_ms ? o->ping_interval_ms : 90000;
    t->register_ms = o->register_timeout_ms ? o->register_timeout_ms : 60000;
    t->network = strdup(o->network ? o->network : "irc");
    t->host = strdup(o->host);
    t->ca_file = o->ca_file ? strdup(o->ca_file) : NULL;
    if (!t->network || !t->host || (o->ca_file && !t->ca_file)) {
        snprintf(err, errlen, "out of memory");
        result = PARLEY_ERR_OOM;
        goto fail;
    }
    /* Encode the SASL credentials now so the password need not be kept;
     * cap_send is attached later, and CAP LS is sent once connected. */
    result = irc_cap_init(&t->cap, o->sasl_user, o->sasl_password);
    if (result != PARLEY_OK) {
        snprintf(err, errlen, "sasl_user and password are longer than %d "
                 "bytes", IRC_SASL_PLAIN_MAX);
        goto fail;
    }
    if (t->tls) {
        result = tls_setup(t, err, errlen);
        if (result != PARLEY_OK)
            goto fail;
    }
    t->timer = loop_timer_new(loop, on_tick, t);
    if (!t->timer) {
        snprintf(err, errlen, "transport setup: cannot create a timer");
        result = PARLEY_ERR_IO;
        goto fail;
    }
    result = loop_listen_local(loop, on_accept, t, &t->listener, port_out,
                               err, errlen);
    if (result != PARLEY_OK)
        goto fail;
    t->started_ms = loop_now_ms(loop);
    tick_ms = t->ping_ms < 4000 ? t->ping_ms / 4 : 1000;
    loop_timer_start(t->timer, tick_ms, tick_ms);
    result = loop_tcp_connect(loop, t->host, t->port, &up_cbs, t, &t->up,
                              err, errlen);
    if (result != PARLEY_OK)
        goto fail;
    *out = t;
    return PARLEY_OK;

fail:
    t->failed = 1;
    irc_transport_close(t);
    return result;
}

void irc_transport_expect_peer(struct irc_transport *t,
                               const struct sockaddr_in *addr)
{
    t->expect = *addr;
    t->expect_set = 1;
}

int irc_transport_registered(const struct irc_transport *t)
{
    return t->released;
}

int irc_transport_whox(const struct irc_transport *t)
{
    return t && t->whox;
}

void irc_transport_close(struct irc_transport *t)
{
    if (!t || t->closing)
        return;
    t->closing = 1;
    t->failed = 1;
    irc_cap_clear(&t->cap);
    transport_shutdown(t);
    transport_maybe_free(t);
}
