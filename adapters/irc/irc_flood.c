/*
 * Token bucket and round-robin line queue (see irc_flood.h).  Targets are
 * a small array in arrival order; each holds one flow per asker, a singly
 * linked FIFO of lines.  A handful of channels and of people waiting in
 * each is the norm, so the linear scans cost nothing.
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

/* One line; end marks the last line of a unit (one answer). */
struct qline {
    struct qline *next;
    void *tag;
    int end;
    char text[];
};

/* The lines of one asker for one target, in order. */
struct qflow {
    char *asker;
    struct qline *head, *tail;
};

/* A target's flows; cur is the flow being served, which keeps its turn
 * until it finishes a unit, so answers are never interleaved. */
struct qtarget {
    char *name;
    struct qflow *f;
    size_t n_f;
    size_t cur;
};

struct irc_queue {
    struct qtarget *t;
    size_t n_t;
    size_t cursor;      /* target to serve next */
    size_t peeked;      /* target of the last peek, or SIZE_MAX */
    size_t len, cap, asker_cap;
};

int irc_queue_create(struct irc_queue **out, size_t cap, size_t asker_cap)
{
    struct irc_queue *q = calloc(1, sizeof(*q));

    *out = NULL;
    if (!q)
        return PARLEY_ERR_OOM;
    q->cap = cap;
    q->asker_cap = asker_cap;
    q->peeked = SIZE_MAX;
    *out = q;
    return PARLEY_OK;
}

static void lines_free(struct qline *l, void (*drop)(void *), size_t *len)
{
    struct qline *next;

    for (; l; l = next) {
        next = l->next;
        if (l->tag && drop)
            drop(l->tag);
        free(l);
        if (len)
            (*len)--;
    }
}

static void flow_remove(struct qtarget *t, size_t k)
{
    free(t->f[k].asker);
    memmove(&t->f[k], &t->f[k + 1], (t->n_f - k - 1) * sizeof(t->f[0]));
    t->n_f--;
    if (t->cur > k)
        t->cur--;
    if (t->cur >= t->n_f)
        t->cur = 0;
}

static void target_remove(struct irc_queue *q, size_t i)
{
    size_t k;

    for (k = 0; k < q->t[i].n_f; k++) {
        lines_free(q->t[i].f[k].head, NULL, NULL);
        free(q->t[i].f[k].asker);
    }
    free(q->t[i].f);
    free(q->t[i].name);
    memmove(&q->t[i], &q->t[i + 1], (q->n_t - i - 1) * sizeof(q->t[0]));
    q->n_t--;
    if (q->cursor > i)
        q->cursor--;
    if (q->cursor >= q->n_t)
        q->cursor = 0;
    q->peeked = SIZE_MAX;
}

/* Drop a target's lines (tags to drop), leaving its flows empty. */
static void target_drain(struct irc_queue *q, size_t i, void (*drop)(void *))
{
    size_t k;

    for (k = 0; k < q->t[i].n_f; k++) {
        lines_free(q->t[i].f[k].head, drop, &q->len);
        q->t[i].f[k].head = q->t[i].f[k].tail = NULL;
    }
}

void irc_queue_free(struct irc_queue *q, void (*drop)(void *tag))
{
    if (!q)
        return;
    while (q->n_t) {
        target_drain(q, q->n_t - 1, drop);
        target_remove(q, q->n_t - 1);
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

static struct qflow *flow_get(struct qtarget *t, const char *asker)
{
    size_t k;
    struct qflow *f;

    for (k = 0; k < t->n_f; k++)
        if (!strcmp(t->f[k].asker, asker))
            return &t->f[k];
    f = realloc(t->f, (t->n_f + 1) * sizeof(*f));
    if (!f)
        return NULL;
    t->f = f;
    f = &t->f[t->n_f];
    memset(f, 0, sizeof(*f));
    f->asker = strdup(asker);
    if (!f->asker)
        return NULL;
    t->n_f++;
    return f;
}

size_t irc_queue_asker_len(const struct irc_queue *q, const char *asker)
{
    size_t i, k, n = 0;
    const struct qline *l;

    if (!asker)
        asker = "";
    /* A few targets with a few askers each: a scan costs nothing next
     * to the network, and keeps no second count to get wrong. */
    for (i = 0; i < q->n_t; i++)
        for (k = 0; k < q->t[i].n_f; k++)
            if (!strcmp(q->t[i].f[k].asker, asker))
                for (l = q->t[i].f[k].head; l; l = l->next)
                    n++;
    return n;
}

int irc_queue_push(struct irc_queue *q, const char *target,
                   const char *asker, char *const *lines, size_t n,
                   void *tag)
{
    struct qline *first = NULL, *last = NULL, *l;
    struct qtarget *t;
    struct qflow *f;
    size_t i;

    if (!asker)
        asker = "";
    if (n == 0)
        return PARLEY_OK;
    /* Lines for nobody (room greetings when the bot joins) are the bot's
     * own doing, not a person's: only the queue's cap bounds them. */
    if (n > q->cap - q->len ||
        (asker[0] && n + irc_queue_asker_len(q, asker) > q->asker_cap))
        return PARLEY_ERR_TOO_LARGE;
    for (i = 0; i < n; i++) {
        size_t len = strlen(lines[i]);

        l = malloc(sizeof(*l) + len + 1);
        if (!l)
            goto oom;
        memcpy(l->text, lines[i], len + 1);
        l->next = NULL;
        l->end = (i + 1 == n);
        l->tag = l->end ? tag : NULL;
        if (last)
            last->next = l;
        else
            first = l;
        last = l;
    }
    t = target_get(q, target);
    if (!t)
        goto oom;
    f = flow_get(t, asker);
    if (!f)
        goto oom;
    if (f->tail)
        f->tail->next = first;
    else
        f->head = first;
    f->tail = last;
    q->len += n;
    return PARLEY_OK;
oom:
    /* A target or flow created above stays, empty: pop and clear skip
     * and remove empty ones. */
    lines_free(first, NULL, NULL);
    return PARLEY_ERR_OOM;
}

/* The flow of t to serve: the current one, or the next with lines. */
static struct qflow *target_flow(struct qtarget *t)
{
    size_t k;

    for (k = 0; k < t->n_f; k++) {
        size_t j = (t->cur + k) % t->n_f;

        if (t->f[j].head) {
            t->cur = j;
            return &t->f[j];
        }
    }
    return NULL;
}

int irc_queue_peek(struct irc_queue *q, irc_queue_ready_fn *ready,
                   void *ctx, const char **target, const char **line)
{
    size_t k, i;
    struct qflow *f;

    q->peeked = SIZE_MAX;
    for (k = 0; k < q->n_t; k++) {
        i = (q->cursor + k) % q->n_t;
        f = target_flow(&q->t[i]);
        if (!f)
            continue;
        if (ready && !ready(q->t[i].name, ctx))
            continue;
        q->peeked = i;
        *target = q->t[i].name;
        *line = f->head->text;
        return 1;
    }
    return 0;
}

static int target_empty(const struct qtarget *t)
{
    size_t k;

    for (k = 0; k < t->n_f; k++)
        if (t->f[k].head)
            return 0;
    return 1;
}

void *irc_queue_pop(struct irc_queue *q)
{
    size_t i = q->peeked;
    struct qtarget *t;
    struct qflow *f;
    struct qline *l;
    void *tag;

    if (i == SIZE_MAX || i >= q->n_t)
        return NULL;
    t = &q->t[i];
    f = target_flow(t);
    if (!f)
        return NULL;
    l = f->head;
    f->head = l->next;
    if (!l->next)
        f->tail = NULL;
    tag = l->tag;
    if (l->end) {
        /* A unit is done: the next asker's turn in this target. */
        if (!f->head)
            flow_remove(t, t->cur);
        else
            t->cur++;
        if (t->cur >= t->n_f)
            t->cur = 0;
    }
    free(l);
    q->len--;
    q->cursor = i + 1;
    if (target_empty(t))
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
