/*
 * The loopback adapter (see loopback.h): events come from function calls,
 * replies are copied into a bounded list.  With latency_ms, each send
 * waits on its own loop timer before it counts as delivered; sends to a
 * room keep their order because libuv, under loop.h, fires timers of
 * equal timeout in the order they were started.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libconfig.h>

#include "adapter.h"
#include "adapter_report.h"
#include "config.h"
#include "event.h"
#include "loop.h"
#include "loopback.h"
#include "router.h"
#include "status.h"

/* A send waiting out the simulated latency. */
struct loopback_pending {
    struct loop_timer *timer;   /* owned */
    struct loopback *lb;
    struct loopback_reply reply;
    adapter_send_done_fn *done;
    void *privdata;
    struct loopback_pending *next, *prev;
};

struct loopback {
    struct adapter ad;
    struct loop *loop;          /* not owned */
    unsigned latency_ms;
    int stopped;
    struct loopback_reply *replies;     /* ring of LOOPBACK_REPLIES_MAX,
                                           NULL until the first reply */
    size_t first, n;
    unsigned long long dropped;
    struct loopback_pending *pending;
    size_t n_pending;
    loopback_reply_fn *on_reply;
    void *reply_privdata;
    /* Progress calls (ops->progress), counted; the latest text kept. */
    unsigned long progress_calls;
    char *progress_text;
    char *progress_txn;
};

static const char *const loopback_keys[] = { "name", "latency_ms" };
#define LOOPBACK_N_KEYS (sizeof(loopback_keys) / sizeof(loopback_keys[0]))

/* ---- config block ----------------------------------------------------- */

/* Read (and with r, check) the block; name_out is borrowed from it. */
static int loopback_parse(const config_setting_t *s,
                          struct adapter_report *r, const char **name_out,
                          unsigned *latency_out)
{
    const config_setting_t *m;
    int i, n;

    *name_out = "loopback";
    *latency_out = 0;
    if (!s)
        return PARLEY_OK;
    if (!config_setting_is_group(s)) {
        adapter_report(r, s, NULL,
                       "expected a group { type = \"loopback\"; ... }");
        return PARLEY_ERR_CONFIG;
    }
    r->index = config_setting_index(s);
    n = config_setting_length(s);
    for (i = 0; i < n; i++) {
        const char *key;
        size_t k;

        m = config_setting_get_elem(s, (unsigned)i);
        key = config_setting_name(m);
        if (!key || config_adapter_key_common(key))
            continue;
        for (k = 0; k < LOOPBACK_N_KEYS; k++)
            if (strcmp(key, loopback_keys[k]) == 0)
                break;
        if (k == LOOPBACK_N_KEYS)
            adapter_report(r, m, key,
                           "unknown key for a loopback adapter");
    }
    m = config_setting_get_member(s, "name");
    if (m) {
        const char *v = config_setting_type(m) == CONFIG_TYPE_STRING ?
                        config_setting_get_string(m) : NULL;

        if (!v || !v[0] || strlen(v) > 255 || strpbrk(v, " \r\n\t"))
            adapter_report(r, m, "name", "expected a non-empty word of at "
                           "most 255 bytes");
        else
            *name_out = v;
    }
    m = config_setting_get_member(s, "latency_ms");
    if (m) {
        long long v = config_setting_type(m) == CONFIG_TYPE_INT ||
                      config_setting_type(m) == CONFIG_TYPE_INT64 ?
                      config_setting_get_int64(m) : -1;

        if (v < 0 || v > LOOPBACK_LATENCY_MAX_MS)
            adapter_report(r, m, "latency_ms", "expected an integer "
                           "between 0 and %d", LOOPBACK_LATENCY_MAX_MS);
        else
            *latency_out = (unsigned)v;
    }
    return r->bad ? PARLEY_ERR_CONFIG : PARLEY_OK;
}

static int loopback_validate(const void *setting, char *err, size_t errlen)
{
    struct adapter_report r = { err, errlen, 0, 0, 0 };
    const char *name;
    unsigned latency;

    if (err && errlen)
        err[0] = '\0';
    return loopback_parse(setting, &r, &name, &latency);
}

/* ---- replies ---------------------------------------------------------- */

static void reply_clear(struct loopback_reply *r)
{
    free(r->room);
    free(r->text);
    free(r->in_reply_to);
    free(r->mention);
    memset(r, 0, sizeof(*r));
}

static char *dup_opt(const char *s, int *oom)
{
    char *d;

    if (!s)
        return NULL;
    d = strdup(s);
    if (!d)
        *oom = 1;
    return d;
}

static int reply_copy(struct loopback_reply *out, const char *room,
                      const struct reply *reply)
{
    int oom = 0;

    memset(out, 0, sizeof(*out));
    out->room = dup_opt(room, &oom);
    out->text = dup_opt(reply->text ? reply->text : "", &oom);
    out->in_reply_to = dup_opt(reply->in_reply_to, &oom);
    out->mention = dup_opt(reply->mention, &oom);
    out->notice = reply->notice;
    if (oom) {
        reply_clear(out);
        return PARLEY_ERR_OOM;
    }
    return PARLEY_OK;
}

/* Move a copied reply into the ring (taking its strings) and tell the
 * callback. */
static void deliver(struct loopback *lb, struct loopback_reply *r)
{
    struct loopback_reply *slot;

    /* The ring is allocated on first use: a config with many idle
     * loopback adapters costs nothing. */
    if (!lb->replies) {
        lb->replies = calloc(LOOPBACK_REPLIES_MAX, sizeof(*lb->replies));
        if (!lb->replies) {
            reply_clear(r);
            lb->dropped++;
            return;
        }
    }
    if (lb->n == LOOPBACK_REPLIES_MAX) {
        reply_clear(&lb->replies[lb->first]);
        lb->first = (lb->first + 1) % LOOPBACK_REPLIES_MAX;
        lb->n--;
        lb->dropped++;
    }
    slot = &lb->replies[(lb->first + lb->n) % LOOPBACK_REPLIES_MAX];
    *slot = *r;
    slot->at_ms = loop_now_ms(lb->loop);
    memset(r, 0, sizeof(*r));
    lb->n++;
    if (lb->on_reply)
        lb->on_reply(&lb->ad, slot, lb->reply_privdata);
}

static void pending_unlink(struct loopback *lb, struct loopback_pending *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        lb->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
    lb->n_pending--;
}

/* Release p (already unlinked); its timer may be the one running. */
static void pending_free(struct loopback_pending *p)
{
    loop_timer_free(p->timer);
    reply_clear(&p->reply);
    free(p);
}

static void pending_fire(void *privdata)
{
    struct loopback_pending *p = privdata;
    struct loopback *lb = p->lb;
    adapter_send_done_fn *done = p->done;
    void *done_privdata = p->privdata;

    pending_unlink(lb, p);
    deliver(lb, &p->reply);
    pending_free(p);
    done(PARLEY_OK, done_privdata);
}

/* ---- adapter ops ------------------------------------------------------ */

static int loopback_start(struct adapter *ad)
{
    ad->connected = 1;
    return PARLEY_OK;
}

static int loopback_send(struct adapter *ad, const char *room,
                         const struct reply *reply,
                         adapter_send_done_fn *done, void *privdata)
{
    struct loopback *lb = (struct loopback *)ad;
    struct loopback_pending *p;
    struct loopback_reply copy;

    if (lb->stopped) {
        snprintf(ad->errstr, sizeof(ad->errstr), "loopback: stopped");
        return PARLEY_ERR_STATE;
    }
    if (lb->latency_ms == 0) {
        if (reply_copy(&copy, room, reply) != PARLEY_OK)
            return PARLEY_ERR_OOM;
        deliver(lb, &copy);
        done(PARLEY_OK, privdata);
        return PARLEY_OK;
    }
    p = calloc(1, sizeof(*p));
    if (!p)
        return PARLEY_ERR_OOM;
    if (reply_copy(&p->reply, room, reply) != PARLEY_OK) {
        free(p);
        return PARLEY_ERR_OOM;
    }
    p->lb = lb;
    p->done = done;
    p->privdata = privdata;
    p->timer = loop_timer_new(lb->loop, pending_fire, p);
    if (!p->timer) {
        reply_clear(&p->reply);
        free(p);
        return PARLEY_ERR_OOM;
    }
    loop_timer_start(p->timer, lb->latency_ms, 0);
    p->next = lb->pending;
    if (p->next)
        p->next->prev = p;
    lb->pending = p;
    lb->n_pending++;
    return PARLEY_OK;
}

/* Sends still waiting are given up: their done gets PARLEY_ERR_STATE,
 * as a real platform would report a message it could not post. */
static void loopback_stop(struct adapter *ad)
{
    struct loopback *lb = (struct loopback *)ad;

    lb->stopped = 1;
    ad->connected = 0;
    while (lb->pending) {
        struct loopback_pending *p = lb->pending;
        adapter_send_done_fn *done = p->done;
        void *privdata = p->privdata;

        pending_unlink(lb, p);
        pending_free(p);
        done(PARLEY_ERR_STATE, privdata);
    }
}

/* Records what a streaming platform would show; the text must only grow
 * for one reply (adapter.h), which the record lets tests check. */
static int loopback_progress(struct adapter *ad, const char *room,
                             const struct reply *reply,
                             const char *content_so_far)
{
    struct loopback *lb = (struct loopback *)ad;
    char *text, *txn = NULL;

    (void)room;
    if (lb->stopped) {
        snprintf(ad->errstr, sizeof(ad->errstr), "loopback: stopped");
        return PARLEY_ERR_STATE;
    }
    text = strdup(content_so_far ? content_so_far : "");
    if (text && reply->txn_id)
        txn = strdup(reply->txn_id);
    if (!text || (reply->txn_id && !txn)) {
        free(text);
        return PARLEY_ERR_OOM;
    }
    free(lb->progress_text);
    free(lb->progress_txn);
    lb->progress_text = text;
    lb->progress_txn = txn;
    lb->progress_calls++;
    return PARLEY_OK;
}

static void loopback_free(struct adapter *ad)
{
    struct loopback *lb = (struct loopback *)ad;

    loopback_clear(ad);
    free(lb->progress_text);
    free(lb->progress_txn);
    free(lb->replies);
    free(ad->account);
    free(lb);
}

static const struct adapter_ops loopback_ops = {
    .type = "loopback",
    .start = loopback_start,
    .send = loopback_send,
    .progress = loopback_progress,
    .stop = loopback_stop,
    .free = loopback_free,
};

static int loopback_adapter_create(struct adapter **out,
                                   const struct adapter_env *env,
                                   void *setting, char *err, size_t errlen)
{
    struct adapter_report r = { err, errlen, 0, 0, 0 };
    struct loopback *lb;
    const char *name;
    unsigned latency;
    int result;

    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    result = loopback_parse(setting, &r, &name, &latency);
    if (result != PARLEY_OK)
        return result;
    lb = calloc(1, sizeof(*lb));
    if (lb)
        lb->ad.account = strdup(name);
    if (!lb || !lb->ad.account) {
        free(lb);
        snprintf(err, errlen, "loopback: out of memory");
        return PARLEY_ERR_OOM;
    }
    lb->ad.ops = &loopback_ops;
    lb->ad.loop = env->loop;
    lb->ad.priv = lb;
    lb->loop = env->loop;
    lb->latency_ms = latency;
    *out = &lb->ad;
    return PARLEY_OK;
}

const struct adapter_desc loopback_adapter_desc = {
    .name = "loopback",
    .validate = loopback_validate,
    .create = loopback_adapter_create,
    .caps = ADAPTER_CAP_STREAM,     /* off unless the block says so */
};

/* ---- test API --------------------------------------------------------- */

static int submit(struct loopback *lb, struct event *ev)
{
    if (!lb->ad.router || lb->stopped)
        return PARLEY_ERR_STATE;
    ev->platform = "loopback";
    ev->account = lb->ad.account;
    router_submit(lb->ad.router, ev);
    return PARLEY_OK;
}

int loopback_inject(struct adapter *ad, const char *room, const char *sender,
                    const char *text, int addressed)
{
    struct event ev;

    memset(&ev, 0, sizeof(ev));
    ev.kind = EVENT_MESSAGE;
    ev.room = room;
    ev.sender = sender;
    ev.sender_name = sender;
    ev.text = text;
    ev.addressed = addressed;
    return submit((struct loopback *)ad, &ev);
}

int loopback_join(struct adapter *ad, const char *room, const char *sender,
                  int self, int members)
{
    struct event ev;

    memset(&ev, 0, sizeof(ev));
    ev.kind = EVENT_JOIN;
    ev.room = room;
    ev.sender = sender;
    ev.sender_name = sender;
    ev.self = self;
    ev.members = members;
    return submit((struct loopback *)ad, &ev);
}

size_t loopback_reply_count(const struct adapter *ad)
{
    return ((const struct loopback *)ad)->n;
}

const struct loopback_reply *loopback_reply_at(const struct adapter *ad,
                                               size_t i)
{
    const struct loopback *lb = (const struct loopback *)ad;

    if (i >= lb->n)
        return NULL;
    return &lb->replies[(lb->first + i) % LOOPBACK_REPLIES_MAX];
}

unsigned long long loopback_dropped(const struct adapter *ad)
{
    return ((const struct loopback *)ad)->dropped;
}

void loopback_clear(struct adapter *ad)
{
    struct loopback *lb = (struct loopback *)ad;

    while (lb->replies && lb->n > 0) {
        reply_clear(&lb->replies[lb->first]);
        lb->first = (lb->first + 1) % LOOPBACK_REPLIES_MAX;
        lb->n--;
    }
    lb->first = 0;
}

size_t loopback_in_flight(const struct adapter *ad)
{
    return ((const struct loopback *)ad)->n_pending;
}

void loopback_on_reply(struct adapter *ad, loopback_reply_fn *fn,
                       void *privdata)
{
    struct loopback *lb = (struct loopback *)ad;

    lb->on_reply = fn;
    lb->reply_privdata = privdata;
}

void loopback_set_latency(struct adapter *ad, unsigned ms)
{
    ((struct loopback *)ad)->latency_ms = ms > LOOPBACK_LATENCY_MAX_MS ?
                                          LOOPBACK_LATENCY_MAX_MS : ms;
}

unsigned long loopback_progress_count(const struct adapter *ad)
{
    return ((const struct loopback *)ad)->progress_calls;
}

const char *loopback_progress_last(const struct adapter *ad,
                                   const char **txn_id)
{
    const struct loopback *lb = (const struct loopback *)ad;

    if (txn_id)
        *txn_id = lb->progress_txn;
    return lb->progress_text;
}

void loopback_progress_reset(struct adapter *ad)
{
    struct loopback *lb = (struct loopback *)ad;

    free(lb->progress_text);
    free(lb->progress_txn);
    lb->progress_text = NULL;
    lb->progress_txn = NULL;
    lb->progress_calls = 0;
}
