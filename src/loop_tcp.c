/*
 * TCP streams with asynchronous name resolution, and the loopback
 * listener, for the IRC transport: one uv handle per connect attempt,
 * each resolved address tried in turn, so that no other module needs
 * <uv.h>.  Memory goes only once every handle and request is done.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loop_private.h"
#include "status.h"

enum tcp_state { TCP_RESOLVING, TCP_CONNECTING, TCP_OPEN, TCP_ENDED };

struct loop_tcp {
    struct loop *loop;
    uv_tcp_t *handle;           /* this attempt's handle (data = this); a
                                   failed connect leaves it unusable, so
                                   each address gets a new one */
    uv_getaddrinfo_t gai;       /* gai.data = this */
    uv_connect_t conn;          /* conn.data = this */
    struct addrinfo *ai_list, *ai_next;
    char *host;                 /* for messages */
    int port;
    struct loop_tcp_cbs cbs;
    void *privdata;
    enum tcp_state state;
    int reading;
    int gai_active;
    int pending;                /* handles + requests in flight */
    int freeing;                /* loop_tcp_free called */
};

struct tcp_write {
    uv_write_t req;             /* req.data = the stream */
    size_t len;
    char data[];
};

/* Read buffer: libuv reads into it and the callback consumes it before
 * the next read; one loop thread, so one static buffer suffices. */
static char tcp_slab[65536];

static void tcp_maybe_release(struct loop_tcp *s)
{
    if (!s->freeing || s->pending > 0)
        return;
    if (s->ai_list)
        uv_freeaddrinfo(s->ai_list);
    free(s->host);
    free(s);
}

static void on_tcp_handle_closed(uv_handle_t *h)
{
    struct loop_tcp *s = h->data;

    free(h);
    s->pending--;
    tcp_maybe_release(s);
}

static void tcp_close_handle(struct loop_tcp *s)
{
    if (!s->handle)
        return;
    uv_close((uv_handle_t *)s->handle, on_tcp_handle_closed);
    s->handle = NULL;
    s->reading = 0;
}

/* A fresh handle for s, counted in pending until its close callback. */
static int tcp_open_handle(struct loop_tcp *s)
{
    uv_tcp_t *h = malloc(sizeof(*h));

    if (!h)
        return UV_ENOMEM;
    if (uv_tcp_init(s->loop->uv, h) < 0) {
        free(h);
        return UV_ENOMEM;
    }
    h->data = s;
    s->handle = h;
    s->pending++;
    return 0;
}

static struct loop_tcp *tcp_new(struct loop *loop, const char *host,
                                int port)
{
    struct loop_tcp *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->loop = loop;
    s->port = port;
    s->host = strdup(host);
    if (!s->host) {
        free(s);
        return NULL;
    }
    return s;
}

/* Report the end once; the stream stays open for its owner to free. */
static void tcp_end(struct loop_tcp *s, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void tcp_end(struct loop_tcp *s, int status, const char *fmt, ...)
{
    char why[256];
    va_list ap;

    if (s->freeing || s->state == TCP_ENDED)
        return;
    s->state = TCP_ENDED;
    if (s->reading && s->handle)
        uv_read_stop((uv_stream_t *)s->handle);
    s->reading = 0;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (s->cbs.end)
        s->cbs.end(status, why, s->privdata);
}

static void tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(tcp_slab, sizeof(tcp_slab));
}

static void on_tcp_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct loop_tcp *s = st->data;

    if (n == 0 || s->freeing || s->state != TCP_OPEN)
        return;
    if (n == UV_EOF) {
        tcp_end(s, PARLEY_ERR_EOF, "%s closed the connection", s->host);
        return;
    }
    if (n < 0) {
        tcp_end(s, PARLEY_ERR_IO, "reading from %s: %s", s->host,
                uv_strerror((int)n));
        return;
    }
    if (s->cbs.data)
        s->cbs.data(buf->base, (size_t)n, s->privdata);
}

static int tcp_read_start(struct loop_tcp *s)
{
    int rc = uv_read_start((uv_stream_t *)s->handle, tcp_alloc, on_tcp_read);

    if (rc < 0)
        return rc;
    s->reading = 1;
    return 0;
}

static void tcp_try_connect(struct loop_tcp *s);

static void tcp_addr_name(const struct addrinfo *ai, char *buf, size_t len)
{
    snprintf(buf, len, "?");
    if (ai->ai_family == AF_INET)
        uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, buf, len);
    else if (ai->ai_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, buf, len);
}

static void on_tcp_connect(uv_connect_t *req, int status)
{
    struct loop_tcp *s = req->data;
    char addr[64];
    int rc;

    s->pending--;
    if (s->freeing || status == UV_ECANCELED) {
        tcp_maybe_release(s);
        return;
    }
    if (status < 0) {
        tcp_addr_name(s->ai_next, addr, sizeof(addr));
        s->ai_next = s->ai_next->ai_next;
        tcp_close_handle(s);
        if (!s->ai_next) {
            tcp_end(s, PARLEY_ERR_IO, "cannot connect to %s (%s) port %d: "
                    "%s", s->host, addr, s->port, uv_strerror(status));
            return;
        }
        log_warn("connect to %s (%s) port %d failed: %s; trying the next "
                 "address", s->host, addr, s->port, uv_strerror(status));
        tcp_try_connect(s);
        return;
    }
    s->state = TCP_OPEN;
    /* Lines are small and someone waits for each: without it, a line
     * written while the previous one is unacknowledged waits for the
     * peer's delayed ACK (40 ms on Linux). */
    uv_tcp_nodelay(s->handle, 1);
    rc = tcp_read_start(s);
    if (rc < 0) {
        tcp_end(s, PARLEY_ERR_IO, "reading from %s: %s", s->host,
                uv_strerror(rc));
        return;
    }
    if (s->cbs.connected)
        s->cbs.connected(s->privdata);
}

static void tcp_try_connect(struct loop_tcp *s)
{
    int rc;

    s->state = TCP_CONNECTING;
    rc = tcp_open_handle(s);
    if (rc == 0) {
        s->conn.data = s;
        rc = uv_tcp_connect(&s->conn, s->handle, s->ai_next->ai_addr,
                            on_tcp_connect);
        if (rc == 0) {
            s->pending++;
            return;
        }
        tcp_close_handle(s);
    }
    tcp_end(s, PARLEY_ERR_IO, "cannot connect to %s port %d: %s", s->host,
            s->port, uv_strerror(rc));
}

static void on_tcp_resolved(uv_getaddrinfo_t *req, int status,
                            struct addrinfo *res)
{
    struct loop_tcp *s = req->data;

    s->pending--;
    s->gai_active = 0;
    if (s->freeing || status == UV_ECANCELED) {
        if (res)
            uv_freeaddrinfo(res);
        tcp_maybe_release(s);
        return;
    }
    if (status < 0 || !res) {
        if (res)
            uv_freeaddrinfo(res);
        tcp_end(s, PARLEY_ERR_IO, "cannot resolve %s: %s", s->host,
                uv_strerror(status < 0 ? status : UV_EAI_NONAME));
        return;
    }
    s->ai_list = res;
    s->ai_next = res;
    tcp_try_connect(s);
}

int loop_tcp_connect(struct loop *loop, const char *host, int port,
                     const struct loop_tcp_cbs *cbs, void *privdata,
                     struct loop_tcp **out, char *err, size_t errlen)
{
    struct loop_tcp *s;
    struct addrinfo hints;
    char portstr[16];
    int rc;

    *out = NULL;
    if (!host || !*host || port <= 0 || port > 65535 || !cbs || !cbs->end) {
        snprintf(err, errlen, "invalid host or port");
        return PARLEY_ERR_CONFIG;
    }
    s = tcp_new(loop, host, port);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return PARLEY_ERR_OOM;
    }
    s->cbs = *cbs;
    s->privdata = privdata;
    s->state = TCP_RESOLVING;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof(portstr), "%d", port);
    s->gai.data = s;
    rc = uv_getaddrinfo(loop->uv, &s->gai, on_tcp_resolved, s->host, portstr,
                        &hints);
    if (rc < 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, uv_strerror(rc));
        s->freeing = 1;
        tcp_maybe_release(s);
        return PARLEY_ERR_IO;
    }
    s->gai_active = 1;
    s->pending++;
    *out = s;
    return PARLEY_OK;
}

int loop_tcp_start(struct loop_tcp *s, const struct loop_tcp_cbs *cbs,
                   void *privdata)
{
    if (!s || s->freeing || s->state != TCP_OPEN || s->reading || !cbs ||
        !cbs->end)
        return PARLEY_ERR_STATE;
    s->cbs = *cbs;
    s->privdata = privdata;
    if (tcp_read_start(s) < 0)
        return PARLEY_ERR_IO;
    return PARLEY_OK;
}

static void on_tcp_write(uv_write_t *req, int status)
{
    struct tcp_write *w = (struct tcp_write *)req;
    struct loop_tcp *s = req->data;

    explicit_bzero(w->data, w->len);
    free(w);
    /* The handle's close callback, which may release s, runs after the
     * cancelled writes' callbacks, so s is still here. */
    if (status < 0 && status != UV_ECANCELED)
        tcp_end(s, PARLEY_ERR_IO, "writing to %s: %s", s->host,
                uv_strerror(status));
}

int loop_tcp_write(struct loop_tcp *s, const char *data, size_t len)
{
    struct tcp_write *w;
    uv_buf_t buf;
    int rc;

    if (!s || s->freeing || s->state != TCP_OPEN || !s->handle)
        return PARLEY_ERR_STATE;
    if (len == 0)
        return PARLEY_OK;
    if (len > UINT32_MAX)
        return PARLEY_ERR_TOO_LARGE;
    /* Most writes fit in the socket at once: writing them now saves the
     * copy, a loop pass and an epoll_ctl pair per line.  uv_try_write
     * refuses (UV_EAGAIN) while earlier writes are still queued, so the
     * order holds; what the socket did not take is queued below.  An
     * error is left to uv_write, which reports it through on_tcp_write
     * and ends the stream as before. */
    buf = uv_buf_init((char *)data, (unsigned)len);
    rc = uv_try_write((uv_stream_t *)s->handle, &buf, 1);
    if (rc >= 0 && (size_t)rc == len)
        return PARLEY_OK;
    if (rc > 0) {
        data += rc;
        len -= (size_t)rc;
    }
    w = malloc(sizeof(*w) + len);
    if (!w)
        return PARLEY_ERR_OOM;
    w->len = len;
    memcpy(w->data, data, len);
    w->req.data = s;
    buf = uv_buf_init(w->data, (unsigned)len);
    rc = uv_write(&w->req, (uv_stream_t *)s->handle, &buf, 1, on_tcp_write);
    if (rc < 0) {
        explicit_bzero(w->data, len);
        free(w);
        return PARLEY_ERR_IO;
    }
    return PARLEY_OK;
}

void loop_tcp_free(struct loop_tcp *s)
{
    if (!s || s->freeing)
        return;
    s->freeing = 1;
    if (s->gai_active)
        uv_cancel((uv_req_t *)&s->gai);
    /* Pending writes and a connect in flight are cancelled by the close;
     * their callbacks run before the handle's close callback. */
    tcp_close_handle(s);
    tcp_maybe_release(s);
}

struct loop_listener {
    uv_tcp_t handle;            /* handle.data = this */
    struct loop *loop;
    loop_accept_fn *fn;
    void *privdata;
    int freeing;
};

static void on_listener_connection(uv_stream_t *server, int status)
{
    struct loop_listener *l = server->data;
    struct sockaddr_storage peer;
    int len = sizeof(peer);
    struct loop_tcp *c;

    if (status < 0 || l->freeing)
        return;
    c = tcp_new(l->loop, "127.0.0.1", 0);
    if (!c)
        return;
    if (tcp_open_handle(c) < 0) {
        c->freeing = 1;
        tcp_maybe_release(c);
        return;
    }
    if (uv_accept(server, (uv_stream_t *)c->handle) < 0 ||
        uv_tcp_getpeername(c->handle, (struct sockaddr *)&peer, &len) < 0 ||
        peer.ss_family != AF_INET) {
        loop_tcp_free(c);
        return;
    }
    c->state = TCP_OPEN;
    uv_tcp_nodelay(c->handle, 1);       /* as in on_tcp_connect */
    l->fn(c, (const struct sockaddr_in *)&peer, l->privdata);
}

int loop_listen_local(struct loop *loop, loop_accept_fn *fn, void *privdata,
                      struct loop_listener **out, int *port_out, char *err,
                      size_t errlen)
{
    struct loop_listener *l;
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof(bound), rc;

    *out = NULL;
    if (!fn) {
        snprintf(err, errlen, "no accept callback");
        return PARLEY_ERR_STATE;
    }
    l = calloc(1, sizeof(*l));
    if (!l) {
        snprintf(err, errlen, "out of memory");
        return PARLEY_ERR_OOM;
    }
    rc = uv_tcp_init(loop->uv, &l->handle);
    if (rc < 0) {
        free(l);
        snprintf(err, errlen, "loopback listener: %s", uv_strerror(rc));
        return PARLEY_ERR_IO;
    }
    l->handle.data = l;
    l->loop = loop;
    l->fn = fn;
    l->privdata = privdata;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    rc = uv_tcp_bind(&l->handle, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->handle, 4, on_listener_connection);
    if (rc == 0)
        rc = uv_tcp_getsockname(&l->handle, (struct sockaddr *)&bound, &len);
    if (rc < 0) {
        snprintf(err, errlen, "loopback listener: %s", uv_strerror(rc));
        loop_listener_free(l);
        return PARLEY_ERR_IO;
    }
    *port_out = ntohs(((const struct sockaddr_in *)&bound)->sin_port);
    *out = l;
    return PARLEY_OK;
}

void loop_listener_free(struct loop_listener *l)
{
    if (!l || l->freeing)
        return;
    l->freeing = 1;
    uv_close((uv_handle_t *)&l->handle, loop_on_any_closed);
}
