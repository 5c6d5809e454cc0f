/*
 * The loop's timers, signals and fd watches, on a loop that owns its uv
 * loop (loop_create(NULL)): one-shot and repeating timers, restart moving
 * the deadline, stop, free before the deadline (no call) and free from
 * inside the timer's own callback (ASan checks the memory), a signal
 * delivered on the loop, a pipe watched for reading and writing, and
 * input read from a pipe and from a file, with the reader freed inside
 * its callback and while a file read is in flight; TCP streams to a
 * loopback listener (echo, a peer closing mid-line, connection refused,
 * a name that does not resolve, streams freed inside their callbacks
 * and while resolving).
 * Every test ends with loop_free, which must find nothing left open.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "loop.h"
#include "status.h"

struct counter {
    int calls;
    uint64_t at_ms;             /* loop time of the last call */
    int stop_after;             /* free the timer on this call; 0 = never */
    struct loop *loop;
    struct loop_timer *timer;
};

static void count(void *privdata)
{
    struct counter *c = privdata;

    c->calls++;
    c->at_ms = loop_now_ms(c->loop);
    if (c->stop_after && c->calls == c->stop_after) {
        loop_timer_free(c->timer);
        c->timer = NULL;
    }
}

static struct loop *new_loop(void)
{
    struct loop *loop = NULL;

    assert_int_equal(loop_create(&loop, NULL), PARLEY_OK);
    return loop;
}

static void one_shot(void **state)
{
    struct loop *loop = new_loop();
    struct counter c = { 0 };
    uint64_t start = loop_now_ms(loop);

    (void)state;
    c.loop = loop;
    c.timer = loop_timer_new(loop, count, &c);
    assert_non_null(c.timer);
    assert_false(loop_timer_active(c.timer));
    assert_int_equal(loop_timer_start(c.timer, 30, 0), PARLEY_OK);
    assert_true(loop_timer_active(c.timer));
    assert_in_range(loop_timer_due_in(c.timer), 1, 30);
    /* not inside start */
    assert_int_equal(c.calls, 0);
    loop_run(loop);
    assert_int_equal(c.calls, 1);
    assert_true(c.at_ms - start >= 30);
    assert_false(loop_timer_active(c.timer));
    assert_int_equal(loop_timer_due_in(c.timer), 0);
    loop_timer_free(c.timer);
    loop_free(loop);
}

/* A repeating timer that frees itself on its third call. */
static void repeat_then_free_inside(void **state)
{
    struct loop *loop = new_loop();
    struct counter c = { 0 };

    (void)state;
    c.loop = loop;
    c.stop_after = 3;
    c.timer = loop_timer_new(loop, count, &c);
    assert_non_null(c.timer);
    loop_timer_start(c.timer, 1, 5);
    loop_run(loop);             /* returns: the timer is gone */
    assert_int_equal(c.calls, 3);
    assert_null(c.timer);
    loop_free(loop);
}

struct pair {
    struct counter *victim;
    struct loop_timer *self;
};

/* Frees another timer that is due in the same iteration. */
static void free_other(void *privdata)
{
    struct pair *p = privdata;

    loop_timer_free(p->victim->timer);
    p->victim->timer = NULL;
    loop_timer_free(p->self);
}

static void stop_and_free_before_due(void **state)
{
    struct loop *loop = new_loop();
    struct counter a = { 0 }, b = { 0 };
    struct pair p;

    (void)state;
    a.loop = b.loop = loop;
    /* stopped: never called */
    a.timer = loop_timer_new(loop, count, &a);
    loop_timer_start(a.timer, 1, 0);
    loop_timer_stop(a.timer);
    loop_timer_stop(a.timer);
    /* freed by a timer that fires first in the same pass */
    b.timer = loop_timer_new(loop, count, &b);
    loop_timer_start(b.timer, 10, 0);
    p.victim = &b;
    p.self = loop_timer_new(loop, free_other, &p);
    loop_timer_start(p.self, 10, 0);
    /* started before b with the same deadline: libuv runs it first */
    loop_timer_start(b.timer, 10, 0);
    loop_run(loop);
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 0);
    assert_null(b.timer);
    loop_timer_free(a.timer);
    loop_timer_free(NULL);
    loop_free(loop);
}

static void restart_moves_deadline(void **state)
{
    struct loop *loop = new_loop();
    struct counter c = { 0 };
    uint64_t start = loop_now_ms(loop);

    (void)state;
    c.loop = loop;
    c.timer = loop_timer_new(loop, count, &c);
    loop_timer_start(c.timer, 5, 0);
    loop_timer_start(c.timer, 40, 0);
    loop_run(loop);
    assert_int_equal(c.calls, 1);
    assert_true(c.at_ms - start >= 40);
    loop_timer_free(c.timer);
    loop_free(loop);
}

struct sig_seen {
    int signum;
    struct loop_signal *sig;
};

static void on_sig(int signum, void *privdata)
{
    struct sig_seen *s = privdata;

    s->signum = signum;
    loop_signal_free(s->sig);   /* inside its own callback */
    s->sig = NULL;
}

static void signal_on_the_loop(void **state)
{
    struct loop *loop = new_loop();
    struct sig_seen s = { 0, NULL };

    (void)state;
    s.sig = loop_signal_new(loop, SIGUSR1, on_sig, &s);
    assert_non_null(s.sig);
    raise(SIGUSR1);
    assert_int_equal(s.signum, 0);   /* not in the handler */
    loop_run(loop);
    assert_int_equal(s.signum, SIGUSR1);
    assert_null(s.sig);
    loop_free(loop);
}

struct watch_seen {
    int fds[2];
    int readable, writable;
    char got;
    struct loop_watch *rd, *wr;
};

static void on_readable(int events, void *privdata)
{
    struct watch_seen *w = privdata;

    if (events & LOOP_READABLE) {
        w->readable++;
        assert_int_equal(read(w->fds[0], &w->got, 1), 1);
        loop_watch_free(w->rd);
        w->rd = NULL;
    }
}

static void on_writable(int events, void *privdata)
{
    struct watch_seen *w = privdata;

    if (events & LOOP_WRITABLE) {
        w->writable++;
        assert_int_equal(write(w->fds[1], "x", 1), 1);
        /* stop, then release: the next write waits for the reader */
        assert_int_equal(loop_watch_set(w->wr, 0), PARLEY_OK);
        loop_watch_free(w->wr);
        w->wr = NULL;
    }
}

static void watch_a_pipe(void **state)
{
    struct loop *loop = new_loop();
    struct watch_seen w;

    (void)state;
    memset(&w, 0, sizeof(w));
    assert_int_equal(pipe(w.fds), 0);
    w.rd = loop_watch_new(loop, w.fds[0], on_readable, &w);
    w.wr = loop_watch_new(loop, w.fds[1], on_writable, &w);
    assert_non_null(w.rd);
    assert_non_null(w.wr);
    assert_null(loop_watch_new(loop, -1, on_readable, &w));
    assert_int_equal(loop_watch_set(w.rd, LOOP_READABLE), PARLEY_OK);
    assert_int_equal(loop_watch_set(w.wr, LOOP_WRITABLE), PARLEY_OK);
    loop_run(loop);
    assert_int_equal(w.writable, 1);
    assert_int_equal(w.readable, 1);
    assert_int_equal(w.got, 'x');
    close(w.fds[0]);
    close(w.fds[1]);
    loop_free(loop);
}

/* An armed timer freed and the loop freed without running: loop_free
 * runs the close callbacks itself, and nothing leaks. */
static void free_with_pending_close(void **state)
{
    struct loop *loop = new_loop();
    struct counter c = { 0 };

    (void)state;
    c.loop = loop;
    c.timer = loop_timer_new(loop, count, &c);
    loop_timer_start(c.timer, 1000, 0);
    loop_timer_free(c.timer);
    loop_free(loop);
    assert_int_equal(c.calls, 0);
}

struct read_seen {
    char buf[16384];
    size_t len;
    int ends;
    int status;
    size_t free_after;          /* free the reader once this many bytes */
    struct loop_reader *r;
};

static void on_read(const char *data, size_t len, int status,
                    void *privdata)
{
    struct read_seen *rs = privdata;

    if (!data) {
        rs->ends++;
        rs->status = status;
        return;
    }
    assert_int_equal(status, PARLEY_OK);
    assert_true(rs->len + len <= sizeof(rs->buf));
    memcpy(rs->buf + rs->len, data, len);
    rs->len += len;
    if (rs->free_after && rs->len >= rs->free_after) {
        loop_reader_free(rs->r);    /* inside its own callback */
        rs->r = NULL;
    }
}

/* Write text into a temporary file and return it open for reading. */
static int temp_file(const char *text, size_t len)
{
    char path[] = "/tmp/parley-test-loop-XXXXXX";
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    unlink(path);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    return fd;
}

static void read_a_pipe(void **state)
{
    struct loop *loop = new_loop();
    struct read_seen rs;
    char err[128];
    int fds[2];

    (void)state;
    memset(&rs, 0, sizeof(rs));
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(write(fds[1], "one\ntwo\n", 8), 8);
    close(fds[1]);
    assert_int_equal(loop_reader_open(loop, fds[0], on_read, &rs, &rs.r,
                                      err, sizeof(err)), PARLEY_OK);
    loop_run(loop);
    assert_int_equal(rs.len, 8);
    assert_memory_equal(rs.buf, "one\ntwo\n", 8);
    assert_int_equal(rs.ends, 1);
    assert_int_equal(rs.status, PARLEY_ERR_EOF);
    loop_reader_free(rs.r);
    loop_run(loop);
    close(fds[0]);
    loop_free(loop);
}

/* A file longer than one chunk, read with positioned reads to its end. */
static void read_a_file(void **state)
{
    struct loop *loop = new_loop();
    static char text[10000];
    struct read_seen rs;
    char err[128];
    int fd;

    (void)state;
    for (size_t i = 0; i < sizeof(text); i++)
        text[i] = (char)('a' + i % 26);
    fd = temp_file(text, sizeof(text));
    memset(&rs, 0, sizeof(rs));
    assert_int_equal(loop_reader_open(loop, fd, on_read, &rs, &rs.r, err,
                                      sizeof(err)), PARLEY_OK);
    loop_run(loop);
    assert_int_equal(rs.len, sizeof(text));
    assert_memory_equal(rs.buf, text, sizeof(text));
    assert_int_equal(rs.ends, 1);
    assert_int_equal(rs.status, PARLEY_ERR_EOF);
    loop_reader_free(rs.r);
    close(fd);
    loop_free(loop);
}

/* Freed from inside its callback after the first chunk: no more calls,
 * no end report, nothing leaked. */
static void reader_free_inside(void **state)
{
    struct loop *loop = new_loop();
    static char text[10000];
    struct read_seen rs;
    char err[128];
    int fd;

    (void)state;
    memset(text, 'x', sizeof(text));
    fd = temp_file(text, sizeof(text));
    memset(&rs, 0, sizeof(rs));
    rs.free_after = 1;
    assert_int_equal(loop_reader_open(loop, fd, on_read, &rs, &rs.r, err,
                                      sizeof(err)), PARLEY_OK);
    loop_run(loop);
    assert_true(rs.len > 0 && rs.len < sizeof(text));
    assert_int_equal(rs.ends, 0);
    assert_null(rs.r);
    close(fd);
    loop_free(loop);
}

/* Freed while a file read is in flight: it finishes in the background. */
static void reader_free_while_reading(void **state)
{
    struct loop *loop = new_loop();
    struct read_seen rs;
    char err[128];
    int fd = temp_file("hello\n", 6);

    (void)state;
    memset(&rs, 0, sizeof(rs));
    assert_int_equal(loop_reader_open(loop, fd, on_read, &rs, &rs.r, err,
                                      sizeof(err)), PARLEY_OK);
    loop_reader_free(rs.r);
    loop_run(loop);
    assert_int_equal(rs.len, 0);
    assert_int_equal(rs.ends, 0);
    assert_int_not_equal(loop_reader_open(loop, -1, on_read, &rs, &rs.r,
                                          err, sizeof(err)), PARLEY_OK);
    close(fd);
    loop_free(loop);
}

/* A terminal (the console's case): read as a stream, line by line. */
static void read_a_tty(void **state)
{
    struct loop *loop = new_loop();
    struct read_seen rs;
    char err[128];
    int master, slave;

    (void)state;
    master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0)
        skip();
    slave = open(ptsname(master), O_RDWR | O_NOCTTY);
    assert_true(slave >= 0);
    memset(&rs, 0, sizeof(rs));
    rs.free_after = 3;
    assert_int_equal(loop_reader_open(loop, slave, on_read, &rs, &rs.r,
                                      err, sizeof(err)), PARLEY_OK);
    assert_int_equal(write(master, "hi\n", 3), 3);
    loop_run(loop);             /* returns once the reader is freed */
    assert_int_equal(rs.len, 3);
    assert_memory_equal(rs.buf, "hi\n", 3);
    close(slave);
    close(master);
    loop_free(loop);
}

/* ---- TCP streams and the loopback listener ----------------------------- */

/* One side of a test connection: what arrived and how it ended. */
struct tcp_side {
    struct loop *loop;
    struct loop_tcp *s;
    struct loop_listener *l;    /* server side: the listener to drop */
    struct loop_timer *timer;
    char buf[256];
    size_t len;
    int connected, ended, end_status;
    char why[256];
    int echo;                   /* server: send back what arrives */
    const char *greeting;       /* server: sent on accept, then closed */
    int free_in;                /* client: free in this callback (1 =
                                   connected, 2 = data, 3 = end) */
    const char *want;           /* client: free everything once this much
                                   has arrived */
    struct tcp_side *peer;
    struct sockaddr_in peer_addr;
};

static void side_release(struct tcp_side *c)
{
    loop_tcp_free(c->s);
    c->s = NULL;
    loop_listener_free(c->l);
    c->l = NULL;
    loop_timer_free(c->timer);
    c->timer = NULL;
}

static void c_connected(void *privdata)
{
    struct tcp_side *c = privdata;

    c->connected++;
    if (c->free_in == 1) {
        side_release(c);
        if (c->peer)
            side_release(c->peer);
        return;
    }
    assert_int_equal(loop_tcp_write(c->s, "hello\r\n", 7), PARLEY_OK);
}

static void c_data(const char *data, size_t len, void *privdata)
{
    struct tcp_side *c = privdata;

    assert_true(c->len + len < sizeof(c->buf));
    memcpy(c->buf + c->len, data, len);
    c->len += len;
    if (c->echo) {
        assert_int_equal(loop_tcp_write(c->s, data, len), PARLEY_OK);
        return;
    }
    if (c->free_in == 2 || (c->want && c->len >= strlen(c->want))) {
        side_release(c);
        if (c->peer)
            side_release(c->peer);
    }
}

static void c_end(int status, const char *why, void *privdata)
{
    struct tcp_side *c = privdata;

    c->ended++;
    c->end_status = status;
    snprintf(c->why, sizeof(c->why), "%s", why);
    /* A dead stream refuses writes. */
    assert_int_equal(loop_tcp_write(c->s, "x", 1), PARLEY_ERR_STATE);
    side_release(c);
    if (c->peer)
        side_release(c->peer);
}

static const struct loop_tcp_cbs side_cbs = {
    .connected = c_connected,
    .data = c_data,
    .end = c_end,
};

static void close_later(void *privdata)
{
    struct tcp_side *srv = privdata;

    loop_tcp_free(srv->s);
    srv->s = NULL;
    loop_timer_free(srv->timer);
    srv->timer = NULL;
}

static void on_test_accept(struct loop_tcp *conn,
                           const struct sockaddr_in *peer, void *privdata)
{
    struct tcp_side *srv = privdata;

    srv->connected++;
    srv->peer_addr = *peer;
    srv->s = conn;
    assert_int_equal(loop_tcp_start(conn, &side_cbs, srv), PARLEY_OK);
    /* One connection is all a test needs. */
    loop_listener_free(srv->l);
    srv->l = NULL;
    if (srv->greeting) {
        assert_int_equal(loop_tcp_write(conn, srv->greeting,
                                        strlen(srv->greeting)), PARLEY_OK);
        srv->timer = loop_timer_new(srv->loop, close_later, srv);
        assert_non_null(srv->timer);
        loop_timer_start(srv->timer, 50, 0);
    }
}

static int listen_for(struct loop *loop, struct tcp_side *srv)
{
    char err[128];
    int port = 0;

    srv->loop = loop;
    assert_int_equal(loop_listen_local(loop, on_test_accept, srv, &srv->l,
                                       &port, err, sizeof(err)), PARLEY_OK);
    assert_true(port > 0 && port < 65536);
    return port;
}

static void tcp_connect_to(struct loop *loop, struct tcp_side *c,
                           const char *host, int port)
{
    char err[128];

    c->loop = loop;
    assert_int_equal(loop_tcp_connect(loop, host, port, &side_cbs, c, &c->s,
                                      err, sizeof(err)), PARLEY_OK);
    /* Nothing is reported inside the call. */
    assert_int_equal(c->connected + c->ended, 0);
}

/* Connect by name to a local listener; the server echoes the line. */
static void tcp_echo(void **state)
{
    struct loop *loop = new_loop();
    struct tcp_side srv, cli;
    int port;

    (void)state;
    memset(&srv, 0, sizeof(srv));
    memset(&cli, 0, sizeof(cli));
    srv.echo = 1;
    cli.want = "hello\r\n";
    cli.peer = &srv;
    port = listen_for(loop, &srv);
    tcp_connect_to(loop, &cli, "localhost", port);
    loop_run(loop);
    assert_int_equal(cli.connected, 1);
    assert_int_equal(srv.connected, 1);
    assert_int_equal(srv.peer_addr.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    assert_int_equal(cli.len, 7);
    assert_memory_equal(cli.buf, "hello\r\n", 7);
    assert_int_equal(srv.len, 7);
    assert_int_equal(cli.ended, 0);
    loop_free(loop);
}

/* The server sends half a line and closes: the bytes, then EOF. */
static void tcp_peer_closes_mid_line(void **state)
{
    struct loop *loop = new_loop();
    struct tcp_side srv, cli;
    int port;

    (void)state;
    memset(&srv, 0, sizeof(srv));
    memset(&cli, 0, sizeof(cli));
    srv.greeting = ":server NOTICE * :half a li";
    port = listen_for(loop, &srv);
    tcp_connect_to(loop, &cli, "127.0.0.1", port);
    loop_run(loop);
    assert_int_equal(cli.connected, 1);
    assert_int_equal(cli.len, strlen(srv.greeting));
    assert_memory_equal(cli.buf, srv.greeting, cli.len);
    assert_int_equal(cli.ended, 1);
    assert_int_equal(cli.end_status, PARLEY_ERR_EOF);
    assert_non_null(strstr(cli.why, "127.0.0.1 closed the connection"));
    loop_free(loop);
}

/* Nobody listens on the port any more. */
static void tcp_connection_refused(void **state)
{
    struct loop *loop = new_loop();
    struct tcp_side srv, cli;
    int port;

    (void)state;
    memset(&srv, 0, sizeof(srv));
    memset(&cli, 0, sizeof(cli));
    port = listen_for(loop, &srv);
    loop_listener_free(srv.l);
    srv.l = NULL;
    loop_run(loop);
    tcp_connect_to(loop, &cli, "127.0.0.1", port);
    loop_run(loop);
    assert_int_equal(cli.connected, 0);
    assert_int_equal(cli.ended, 1);
    assert_int_equal(cli.end_status, PARLEY_ERR_IO);
    assert_non_null(strstr(cli.why, "cannot connect to 127.0.0.1"));
    loop_free(loop);
}

/* .invalid never resolves (RFC 6761). */
static void tcp_name_does_not_resolve(void **state)
{
    struct loop *loop = new_loop();
    struct tcp_side cli;

    (void)state;
    memset(&cli, 0, sizeof(cli));
    tcp_connect_to(loop, &cli, "parley-test.invalid", 6667);
    loop_run(loop);
    assert_int_equal(cli.connected, 0);
    assert_int_equal(cli.ended, 1);
    assert_int_equal(cli.end_status, PARLEY_ERR_IO);
    assert_non_null(strstr(cli.why, "cannot resolve parley-test.invalid"));
    loop_free(loop);
}

/* Freed in its connected and data callbacks, with writes queued on both
 * sides, and while resolving: no callback afterwards (ASan checks the
 * memory). */
static void tcp_free_inside(void **state)
{
    struct loop *loop = new_loop();
    struct tcp_side srv, cli;
    int port, round;

    (void)state;
    for (round = 1; round <= 2; round++) {
        memset(&srv, 0, sizeof(srv));
        memset(&cli, 0, sizeof(cli));
        srv.greeting = "welcome\r\n";
        cli.free_in = round;
        cli.peer = &srv;
        port = listen_for(loop, &srv);
        tcp_connect_to(loop, &cli, "127.0.0.1", port);
        loop_run(loop);
        assert_int_equal(cli.connected, 1);
        assert_int_equal(cli.ended, 0);
        assert_int_equal(cli.len, round == 2 ? 9 : 0);
    }
    memset(&cli, 0, sizeof(cli));
    tcp_connect_to(loop, &cli, "localhost", 9);
    loop_tcp_free(cli.s);
    loop_run(loop);
    assert_int_equal(cli.connected + cli.ended, 0);
    loop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(one_shot),
        cmocka_unit_test(repeat_then_free_inside),
        cmocka_unit_test(stop_and_free_before_due),
        cmocka_unit_test(restart_moves_deadline),
        cmocka_unit_test(signal_on_the_loop),
        cmocka_unit_test(watch_a_pipe),
        cmocka_unit_test(free_with_pending_close),
        cmocka_unit_test(read_a_pipe),
        cmocka_unit_test(read_a_file),
        cmocka_unit_test(read_a_tty),
        cmocka_unit_test(reader_free_inside),
        cmocka_unit_test(reader_free_while_reading),
        cmocka_unit_test(tcp_echo),
        cmocka_unit_test(tcp_peer_closes_mid_line),
        cmocka_unit_test(tcp_connection_refused),
        cmocka_unit_test(tcp_name_does_not_resolve),
        cmocka_unit_test(tcp_free_inside),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
