/*
 * Token bucket and round-robin line queue (see irc_flood.h).  Targets are
 * a small array in arrival order; each holds a singly linked FIFO.  A
 * handful of channels is the norm, so the linear scans cost nothing.
 */
#include "irc_flood.h"

#include <stdlib.h>
#include <string.h>

#include "status.h"

static void bucket_refill(struct irc_bucket *b, uint64_t now_ms)
{
    uint64_t cap = (uint64_t)b->burst * b->rate_ms;

    if (now_ms > b->last_ms) {
        b->credit_ms += now_ms - b->last_ms;
        if (b->credit_ms > cap)
            b->credit_ms = cap;
    }
    /* A clock that went backwards only stops the refill for a while. */
    b->last_ms = now_ms;
}

void irc_bucket_init(struct irc_bucket *b, unsigned burst, unsigned rate_ms,
                     uint64_t now_ms)
{
    b->burst = burst ? burst : 1;
    b->rate_ms = rate_ms;
    b->credit_ms = (uint64_t)b->burst * rate_ms;
    b->last_ms = now_ms;
}

int irc_bucket_take(struct irc_bucket *b, uint64_t now_ms)
{
    bucket_refill(b, now_ms);
    if (b->credit_ms < b->rate_ms)
        return 0;
    b->credit_ms -= b->rate_ms;
    return 1;
}

uint64_t irc_bucket_wait_ms(struct irc_bucket *b, uint64_t now_ms)
{
    bucket_refill(b, now_ms);
    if (b->credit_ms >= b->rate_ms)
        return 0;
    return b->rate_ms - b->credit_ms;
}

struct qline {
    struct qline *next;
    void *tag;
    char text[];
};

struct qtarget {
    char *name;
    struct qline *head, *tail;
};

struct irc_queue {
    struct qtarget *t;
    size_t n_t;
    size_t cursor;      /* target to serve next */
    size_t peeked;      /* target of the last peek, or SIZE_MAX */
    size_t len, cap;
};

int irc_queue_create(struct irc_queue **out, size_t cap)
{
    struct irc_queue *q = calloc(1, sizeof(*q));

    *out = NULL;
    if (!q)
        return PARLEY_ERR_OOM;
    q->cap = cap;
    q->peeked = SIZE_MAX;
    *out = q;
    return PARLEY_OK;
}

static void target_remove(struct irc_queue *q, size_t i)
{
    free(q->t[i].name);
    memmove(&q->t[i], &q->t[i + 1], (q->n_t - i - 1) * sizeof(q->t[0]));
    q->n_t--;
    if (q->cursor > i)
        q->cursor--;
    if (q->cursor >= q->n_t)
        q->cursor = 0;
    q->peeked = SIZE_MAX;
}

static void target_drain(struct irc_queue *q, size_t i, void (*drop)(void *))
{
    struct qline *l = q->t[i].head, *next;

    for (; l; l = next) {
        next = l->next;
        if (l->tag && drop)
            drop(l->tag);
        free(l);
        q->len--;
    }
    q->t[i].head = q->t[i].tail = NULL;
}

void irc_queue_free(struct irc_queue *q, void (*drop)(void *tag))
{
    size_t i;

    if (!q)
        return;
    for (i = 0; i < q->n_t; i++) {
        target_drain(q, i, drop);
        free(q->t[i].name);
    }
    free(q->t);
    free(q);
}

static struct qtarget *target_get(struct irc_queue *q, const char *name)
{
    size_t i;
    struct qtarget *t;

    for (i = 0; i < q->n_t; i++)
        if (!strcmp(q->t[i].name, name))
            return &q->t[i];
    t = realloc(q->t, (q->n_t + 1) * sizeof(*t));
    if (!t)
        return NULL;
    q->t = t;
    t = &q->t[q->n_t];
    memset(t, 0, sizeof(*t));
    t->name = strdup(name);
    if (!t->name)
        return NULL;
    q->n_t++;
    return t;
}

int irc_queue_push(struct irc_queue *q, const char *target,
                   char *const *lines, size_t n, void *tag)
{
    struct qline *first = NULL, *last = NULL, *l;
    struct qtarget *t;
    size_t i;

    if (n == 0)
        return PARLEY_OK;
    if (n > q->cap - q->len)
        return PARLEY_ERR_TOO_LARGE;
    for (i = 0; i < n; i++) {
        size_t len = strlen(lines[i]);

        l = malloc(sizeof(*l) + len + 1);
        if (!l)
            goto oom;
        memcpy(l->text, lines[i], len + 1);
        l->next = NULL;
        l->tag = (i + 1 == n) ? tag : NULL;
        if (last)
            last->next = l;
        else
            first = l;
        last = l;
    }
    t = target_get(q, target);
    if (!t)
        goto oom;
    if (t->tail)
        t->tail->next = first;
    else
        t->head = first;
    t->tail = last;
    q->len += n;
    return PARLEY_OK;
oom:
    while (first) {
        l = first->next;
        free(first);
        first = l;
    }
    return PARLEY_ERR_OOM;
}

int irc_queue_peek(struct irc_queue *q, irc_queue_ready_fn *ready,
                   void *ctx, const char **target, const char **line)
{
    size_t k, i;

    q->peeked = SIZE_MAX;
    for (k = 0; k < q->n_t; k++) {
        i = (q->cursor + k) % q->n_t;
        if (!q->t[i].head)
            continue;
        if (ready && !ready(q->t[i].name, ctx))
            continue;
        q->peeked = i;
        *target = q->t[i].name;
        *line = q->t[i].head->text;
        return 1;
    }
    return 0;
}

void *irc_queue_pop(struct irc_queue *q)
{
    size_t i = q->peeked;
    struct qline *l;
    void *tag;

    if (i == SIZE_MAX || i >= q->n_t || !q->t[i].head)
        return NULL;
    l = q->t[i].head;
    q->t[i].head = l->next;
    if (!l->next)
        q->t[i].tail = NULL;
    tag = l->tag;
    free(l);
    q->len--;
    q->cursor = i + 1;
    if (!q->t[i].head)
        target_remove(q, i);
    else if (q->cursor >= q->n_t)
        q->cursor = 0;
    q->peeked = SIZE_MAX;
    return tag;
}

size_t irc_queue_len(const struct irc_queue *q)
{
    return q->len;
}

void irc_queue_clear_target(struct irc_queue *q, const char *target,
                            void (*drop)(void *tag))
{
    size_t i;

    for (i = 0; i < q->n_t; i++) {
        if (!strcmp(q->t[i].name, target)) {
            target_drain(q, i, drop);
            target_remove(q, i);
            return;
        }
    }
}
