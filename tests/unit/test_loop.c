/*
 * The loop's timers, signals and fd watches, on a loop that owns its uv
 * loop (loop_create(NULL)): one-shot and repeating timers, restart moving
 * the deadline, stop, free before the deadline (no call) and free from
 * inside the timer's own callback (ASan checks the memory), a signal
 * delivered on the loop, a pipe watched for reading and writing, and
 * input read from a pipe and from a file, with the reader freed inside
 * its callback and while a file read is in flight.
 * Every test ends with loop_free, which must find nothing left open.
 */
#include <fcntl.h>
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
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
