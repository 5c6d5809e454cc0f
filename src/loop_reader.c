/*
 * Reading an input fd (stdin for the console) on the loop: a tty or pipe
 * through a uv stream, a regular file through uv_fs_read, so that no
 * other module needs <uv.h>.  The reader's memory is freed in libuv's
 * close callback, also when it is freed from inside its own callback.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loop_private.h"
#include "status.h"

/* Bytes asked for per read of an input fd. */
#define LOOP_READ_CHUNK 4096

struct loop_reader {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tty_t tty;
        uv_pipe_t pipe;
    } in;                       /* in.handle.data = this; streams only */
    uv_fs_t fs_req;             /* files only */
    uv_loop_t *uv;
    int fd;
    int is_stream;
    int handle_open;            /* in is initialised and not closed */
    int fs_pending;             /* a uv_fs_read is in flight */
    int in_callback;            /* fn is running */
    int freeing;                /* loop_reader_free called */
    int done;                   /* the end was reported */
    int64_t offset;             /* next file position */
    loop_read_fn *fn;
    void *privdata;
    char chunk[LOOP_READ_CHUNK];
};

static void on_reader_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Free r now, or when what it still has in flight comes back. */
static void reader_release(struct loop_reader *r)
{
    if (r->in_callback || r->fs_pending)
        return;
    if (r->handle_open) {
        r->handle_open = 0;
        uv_read_stop(&r->in.stream);
        uv_close(&r->in.handle, on_reader_closed);
        return;
    }
    free(r);
}

/* Call fn unless r is being freed; 0 if r may be used afterwards. */
static int reader_deliver(struct loop_reader *r, const char *data,
                          size_t len, int status)
{
    if (r->freeing)
        return -1;
    if (!data)
        r->done = 1;
    r->in_callback = 1;
    r->fn(data, len, status, r->privdata);
    r->in_callback = 0;
    if (r->freeing) {
        reader_release(r);
        return -1;
    }
    return 0;
}

static void reader_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct loop_reader *r = h->data;

    (void)suggested;
    buf->base = r->chunk;
    buf->len = sizeof(r->chunk);
}

static void on_reader_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct loop_reader *r = s->data;

    if (n > 0) {
        reader_deliver(r, buf->base, (size_t)n, PARLEY_OK);
        return;
    }
    if (n == 0)
        return;                 /* EAGAIN: nothing this time */
    uv_read_stop(s);
    if (n != UV_EOF)
        log_warn("reading fd %d: %s", r->fd, uv_strerror((int)n));
    reader_deliver(r, NULL, 0, n == UV_EOF ? PARLEY_ERR_EOF : PARLEY_ERR_IO);
}

static void reader_fs_read(struct loop_reader *r);

static void on_reader_fs_read(uv_fs_t *req)
{
    struct loop_reader *r = req->data;
    ssize_t n = req->result;

    uv_fs_req_cleanup(req);
    r->fs_pending = 0;
    if (r->freeing) {
        reader_release(r);
        return;
    }
    if (n > 0) {
        r->offset += n;
        if (reader_deliver(r, r->chunk, (size_t)n, PARLEY_OK) == 0)
            reader_fs_read(r);
        return;
    }
    if (n < 0)
        log_warn("reading fd %d: %s", r->fd, uv_strerror((int)n));
    reader_deliver(r, NULL, 0, n == 0 ? PARLEY_ERR_EOF : PARLEY_ERR_IO);
}

static void reader_fs_read(struct loop_reader *r)
{
    uv_buf_t buf = uv_buf_init(r->chunk, sizeof(r->chunk));
    int rc;

    r->fs_req.data = r;
    rc = uv_fs_read(r->uv, &r->fs_req, r->fd, &buf, 1, r->offset,
                    on_reader_fs_read);
    if (rc < 0) {
        log_warn("reading fd %d: %s", r->fd, uv_strerror(rc));
        reader_deliver(r, NULL, 0, PARLEY_ERR_IO);
        return;
    }
    r->fs_pending = 1;
}

int loop_reader_open(struct loop *loop, int fd, loop_read_fn *fn,
                     void *privdata, struct loop_reader **out, char *err,
                     size_t errlen)
{
    uv_handle_type type = uv_guess_handle(fd);
    struct loop_reader *r;
    int rc = 0;

    *out = NULL;
    if (!fn || fd < 0) {
        snprintf(err, errlen, "no input to read");
        return PARLEY_ERR_IO;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return PARLEY_ERR_OOM;
    }
    r->uv = loop->uv;
    r->fd = fd;
    r->fn = fn;
    r->privdata = privdata;
    r->in.handle.data = r;
    if (type == UV_TTY) {
        rc = uv_tty_init(loop->uv, &r->in.tty, fd, 1);
        r->is_stream = 1;
    } else if (type == UV_NAMED_PIPE || type == UV_TCP) {
        rc = uv_pipe_init(loop->uv, &r->in.pipe, 0);
        if (rc == 0) {
            r->handle_open = 1;
            rc = uv_pipe_open(&r->in.pipe, fd);
        }
        r->is_stream = 1;
    }
    if (rc == 0 && r->is_stream) {
        r->handle_open = 1;
        r->in.handle.data = r;
        rc = uv_read_start(&r->in.stream, reader_alloc, on_reader_read);
    }
    if (rc < 0) {
        snprintf(err, errlen, "cannot read fd %d: %s", fd, uv_strerror(rc));
        r->freeing = 1;
        reader_release(r);
        return PARLEY_ERR_IO;
    }
    if (!r->is_stream)
        reader_fs_read(r);      /* a regular file, /dev/null, ... */
    *out = r;
    return PARLEY_OK;
}

void loop_reader_free(struct loop_reader *r)
{
    if (!r || r->freeing)
        return;
    r->freeing = 1;
    reader_release(r);
}
