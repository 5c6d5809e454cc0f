/*
 * The IRC adapter's outgoing side: an answer becomes PRIVMSG lines split
 * to fit 512 bytes, queued and paced by the token bucket and shared
 * fairly between channels and the people answered (irc_flood.c); what
 * does not fit in max_lines is kept as a "!more" remainder per room and
 * person.  With streaming on, each complete line of the answer is queued
 * as soon as the model has written it, and the final send queues only
 * what is left.  Holds the send, progress, more and typing ops.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "irc_line.h"
#include "irc_private.h"
#include "lease.h"
#include "log.h"
#include "status.h"

static void job_finish(void *tag, int status)
{
    struct irc_job *j = tag;

    if (j->done)
        j->done(status, j->privdata);
    free(j);
}

void irc_job_drop(void *tag)
{
    job_finish(tag, PARLEY_ERR_STATE);
}

static int target_ready(const char *target, void *ctx)
{
    struct irc_ad *a = ctx;
    struct irc_chan *c;

    if (!irc_is_channel(target, a->chantypes))
        return 1;
    c = chan_find(a, target);
    /* A channel the bot is not in: let the line go (the server answers
     * with an error) rather than block its queue forever. */
    return !c || c->joined || !c->configured;
}

void on_flood_timer(void *privdata)
{
    flood_pump(privdata);
}

/* Send queued lines while the bucket allows and the library has room. */
void flood_pump(struct irc_ad *a)
{
    const char *target, *line;
    uint64_t wait;

    if (a->state != IRC_REGISTERED || !a->queue)
        return;
    /* Not ours any more (or not sure): say nothing; stop drops the
     * queue when main disconnects the account. */
    if (!lease_may_send(a->base.lease))
        return;
    while (irc_queue_peek(a->queue, target_ready, a, &target, &line)) {
        wait = irc_bucket_wait_ms(&a->bucket, now_ms(a));
        if (wait > 0) {
            loop_timer_start(a->flood_timer, wait, 0);
            break;
        }
        if (irc_send_raw(a->sess, "%s", line) &&
            (!session_flush(a) || irc_send_raw(a->sess, "%s", line))) {
            /* The library's 1024-byte output buffer (two long lines) is
             * full, and its socket has no room now, or the library is on
             * the stack (session_flush wrote nothing): go on as soon as
             * the poll has written the buffer (on_poll), not after a
             * timer.  The timer stays as a fallback for a refusal that
             * is not a full buffer. */
            if (irc_errno(a->sess) == LIBIRC_ERR_NOMEM) {
                if (!a->in_lib)
                    log_debug("irc %s: library output buffer full; the "
                              "next line waits for the socket",
                              a->cfg.name);
                a->pump_on_write = 1;
            }
            loop_timer_start(a->flood_timer, 50, 0);
            break;
        }
        irc_bucket_take(&a->bucket, now_ms(a));
        {
            void *tag = irc_queue_pop(a->queue);

            if (tag)
                job_finish(tag, PARLEY_OK);
        }
    }
    session_rearm(a);
}

static size_t bot_userlen(struct irc_ad *a)
{
    if (a->userlen)
        return a->userlen;
    return a->isupport_userlen ? a->isupport_userlen + 1 : 0;
}

static size_t bot_hostlen(struct irc_ad *a)
{
    return a->hostlen ? a->hostlen : a->isupport_hostlen;
}

/* One person's share of the send queue: IRC_QUEUE_ASKER_CAP lines, or
 * one full answer (max_lines and the !more hint) if that is more. */
size_t queue_asker_cap(const struct irc_ad *a)
{
    size_t one = (size_t)a->cfg.max_lines + 1;

    return one > IRC_QUEUE_ASKER_CAP ? one : IRC_QUEUE_ASKER_CAP;
}

/* Queue lines[0..n) as one unit of "CMD target :line" for target on
 * behalf of asker (folded nick, or "" for nobody).  tag rides on the last
 * line.  Returns a parley status. */
int queue_lines(struct irc_ad *a, const char *cmd, const char *target,
                const char *asker, char *const *lines, size_t n,
                void *tag)
{
    char **raw;
    size_t i;
    int result = PARLEY_OK;

    if (n == 0)
        return PARLEY_OK;
    raw = calloc(n, sizeof(*raw));
    if (!raw)
        return PARLEY_ERR_OOM;
    for (i = 0; i < n && result == PARLEY_OK; i++) {
        struct irc_msg m;
        char buf[IRC_LINE_MAX];

        memset(&m, 0, sizeof(m));
        m.command = (char *)cmd;
        m.params[0] = (char *)target;
        m.params[1] = lines[i];
        m.n_params = 2;
        /* irc_line_format refuses CR/LF and a target with a space, so a
         * bad line is an error here, never a second command. */
        result = irc_line_format(buf, sizeof(buf), &m);
        if (result == PARLEY_OK && strlen(buf) + 2 > IRC_LINE_MAX)
            result = PARLEY_ERR_TOO_LARGE;
        if (result == PARLEY_OK) {
            raw[i] = strdup(buf);
            if (!raw[i])
                result = PARLEY_ERR_OOM;
        }
    }
    if (result == PARLEY_OK)
        result = irc_queue_push(a->queue, target, asker, raw, n, tag);
    for (i = 0; i < n; i++)
        free(raw[i]);
    free(raw);
    return result;
}

static struct irc_more *more_slot(struct irc_ad *a, const char *folded,
                                  const char *asker, int create)
{
    size_t i, oldest = 0;

    for (i = 0; i < IRC_MORE_SLOTS; i++)
        if (a->more[i].target[0] && !strcmp(a->more[i].target, folded) &&
            !strcmp(a->more[i].asker, asker))
            return &a->more[i];
    if (!create)
        return NULL;
    for (i = 0; i < IRC_MORE_SLOTS; i++) {
        if (!a->more[i].target[0])
            break;
        if (a->more[i].stamp < a->more[oldest].stamp)
            oldest = i;
    }
    if (i == IRC_MORE_SLOTS) {
        i = oldest;
        irc_lines_free(&a->more[i].lines);
    }
    memset(&a->more[i], 0, sizeof(a->more[i]));
    snprintf(a->more[i].target, sizeof(a->more[i].target), "%s", folded);
    snprintf(a->more[i].asker, sizeof(a->more[i].asker), "%s", asker);
    return &a->more[i];
}

static void more_release(struct irc_more *m)
{
    irc_lines_free(&m->lines);
    memset(m, 0, sizeof(*m));
}

/* Queue the next max lines (max_lines, or what a streamed answer left of
 * them) of a remainder, plus a hint when more is left, as one unit, so
 * the hint stays with its answer.  tag rides on the last line. */
static int more_send(struct irc_ad *a, struct irc_more *m,
                     const char *target, size_t max, void *tag)
{
    size_t left = m->lines.n - m->pos, n = left, i;
    int result;
    char hint[64];
    char *v[IRC_MAX_LINES_MAX + 1];     /* max_lines and the hint */

    if (n > max)
        n = max;
    if (n > sizeof(v) / sizeof(v[0]) - 1)
        n = sizeof(v) / sizeof(v[0]) - 1;
    for (i = 0; i < n; i++)
        v[i] = m->lines.v[m->pos + i];
    if (n < left) {
        snprintf(hint, sizeof(hint), "(%zu more lines: say !more)",
                 left - n);
        v[n] = hint;
    }
    result = queue_lines(a, "PRIVMSG", target, m->asker, v,
                         n < left ? n + 1 : n, tag);
    if (result != PARLEY_OK)
        return result;
    m->pos += n;
    m->stamp = now_ms(a);
    if (m->pos >= m->lines.n)
        more_release(m);
    return PARLEY_OK;
}

static void queue_full_warn(struct irc_ad *a, const char *room,
                            const char *asker)
{
    if (asker[0] &&
        irc_queue_asker_len(a->queue, asker) + (size_t)a->cfg.max_lines + 1 >
            queue_asker_cap(a))
        log_warn("irc %s: %s already has %zu lines waiting, answer to %s "
                 "dropped", a->cfg.name, asker,
                 irc_queue_asker_len(a->queue, asker), room);
    else
        log_warn("irc %s: send queue full (%d lines), answer to %s "
                 "dropped", a->cfg.name, IRC_QUEUE_CAP, room);
}

/* Where an answer goes: the room folded, the target to send to, the
 * person answered (folded, "" for nobody) and the nick to address. */
struct irc_dest {
    char folded[IRC_CHANNEL_MAX + 1];
    char target[IRC_CHANNEL_MAX + 1];
    char asker[IRC_NICK_MAX];
    const char *mention;
};

/* Fill d for room and the reply's mention: PARLEY_OK, PARLEY_ERR_OTHER
 * for a room that cannot be a target, PARLEY_ERR_STATE when the person
 * is gone (nothing may be sent). */
static int dest_resolve(struct irc_ad *a, const char *room,
                        const char *mention, struct irc_dest *d)
{
    memset(d, 0, sizeof(*d));
    if (!room || strlen(room) > IRC_CHANNEL_MAX || !room[0] ||
        strpbrk(room, " ,\r\n\a\x01"))
        return PARLEY_ERR_OTHER;
    snprintf(d->folded, sizeof(d->folded), "%s", room);
    irc_casefold(a->casemap, d->folded);
    /* The person left, or the nick has a new holder: never give them an
     * answer meant for someone else. */
    if (room_target(a, d->folded, d->target, sizeof(d->target)))
        return PARLEY_ERR_STATE;
    /* The person answered owns the answer's share of the queue and its
     * remainder; answers that name nobody share "".  A "~account"
     * sender is mentioned by the nick that has the account now. */
    if (mention && mention[0] == '~') {
        snprintf(d->asker, sizeof(d->asker), "%s", mention);
        irc_casefold(a->casemap, d->asker);
        mention = nick_of_account(a, mention + 1);
    } else if (mention && irc_config_nick_valid(mention)) {
        snprintf(d->asker, sizeof(d->asker), "%s", mention);
        irc_casefold(a->casemap, d->asker);
    }
    d->mention = mention;
    return PARLEY_OK;
}

/* The model's text as plain IRC text; in a channel, when address is set,
 * with the person answered addressed ("alice: ..."), as IRC users do
 * (only a plausible nick).  NULL on OOM. */
static char *answer_plain(struct irc_ad *a, const char *room,
                          const struct irc_dest *d, const char *text,
                          int address)
{
    const char *mention = d->mention;
    char *plain = irc_markdown_to_plain(text);

    if (plain && address && mention && irc_is_channel(room, a->chantypes) &&
        irc_config_nick_valid(mention) &&
        irc_casecmp(a->casemap, mention, a->nick)) {
        size_t ml = strlen(mention), pl = strlen(plain);
        char *with = malloc(ml + 2 + pl + 1);

        if (with) {
            memcpy(with, mention, ml);
            memcpy(with + ml, ": ", 2);
            memcpy(with + ml + 2, plain, pl + 1);
        }
        free(plain);
        plain = with;
    }
    return plain;
}

static size_t dest_budget(struct irc_ad *a, const struct irc_dest *d)
{
    return irc_text_budget("PRIVMSG", a->nick[0] ? a->nick : a->cfg.nick,
                           bot_userlen(a), bot_hostlen(a), d->target);
}

/* Split plain (freed here), keep it as the room's and person's "!more"
 * remainder and queue its first max lines; done runs when the last
 * leaves the queue (at once when there is nothing to send). */
static int send_plain(struct irc_ad *a, const char *room,
                      const struct irc_dest *d, char *plain, size_t max,
                      adapter_send_done_fn *done, void *privdata)
{
    struct irc_more *m;
    struct irc_job *job;
    int result;

    m = more_slot(a, d->folded, d->asker, 1);
    irc_lines_free(&m->lines);
    m->pos = 0;
    m->stamp = now_ms(a);
    result = irc_split_text(plain, dest_budget(a, d), &m->lines);
    free(plain);
    if (result != PARLEY_OK) {
        more_release(m);
        return result;
    }
    if (m->lines.n == 0) {
        more_release(m);
        if (done)
            done(PARLEY_OK, privdata);
        return PARLEY_OK;
    }
    job = malloc(sizeof(*job));
    if (!job) {
        more_release(m);
        return PARLEY_ERR_OOM;
    }
    job->done = done;
    job->privdata = privdata;
    result = more_send(a, m, d->target, max, job);
    if (result != PARLEY_OK) {
        free(job);
        if (m->target[0])
            more_release(m);
        if (result == PARLEY_ERR_TOO_LARGE)
            queue_full_warn(a, room, d->asker);
        return result;
    }
    flood_pump(a);
    return PARLEY_OK;
}

/* ---- streaming: each complete line as soon as it is there -------------- */

static struct irc_stream *stream_slot(struct irc_ad *a,
                                      const struct irc_dest *d, int create)
{
    size_t i;

    for (i = 0; i < IRC_STREAM_SLOTS; i++) {
        struct irc_stream *st = &a->streams[i];

        if (st->target[0] && !st->closed &&
            !strcmp(st->target, d->folded) && !strcmp(st->asker, d->asker))
            return st;
    }
    if (!create)
        return NULL;
    for (i = 0; i < IRC_STREAM_SLOTS; i++) {
        struct irc_stream *st = &a->streams[i];

        if (!st->target[0]) {
            memset(st, 0, sizeof(*st));
            snprintf(st->target, sizeof(st->target), "%s", d->folded);
            snprintf(st->asker, sizeof(st->asker), "%s", d->asker);
            return st;
        }
    }
    return NULL;                /* all busy: this answer goes whole */
}

/* Free a closed slot whose lines have all left; hand on the final's done
 * if it was waiting for them. */
static void stream_settle(struct irc_stream *st)
{
    adapter_send_done_fn *done = st->done;
    void *privdata = st->privdata;

    if (!st->closed || st->pending > 0)
        return;
    memset(st, 0, sizeof(*st));
    if (done)
        done(PARLEY_OK, privdata);
}

/* A streamed unit left the queue (or was dropped). */
static void stream_unit_done(int status, void *privdata)
{
    struct irc_stream *st = privdata;

    (void)status;
    if (st->pending > 0)
        st->pending--;
    stream_settle(st);
}

/*
 * adapter.h "progress": the lines of so_far that are complete (up to its
 * last newline) and not sent yet go out now, through the same splitting,
 * queue, pacing and turns as an answer, the first addressed to the
 * person.  Once max_lines are out the rest waits for the final send,
 * which keeps it for "!more".
 */
int irc_progress(struct adapter *ad, const char *room,
                 const struct reply *reply, const char *so_far)
{
    struct irc_ad *a = ad->priv;
    struct irc_dest d;
    struct irc_stream *st;
    struct irc_lines lines;
    struct irc_job *job;
    const char *nl;
    char *seg, *plain;
    size_t len, max = (size_t)a->cfg.max_lines;
    int result;

    if (a->stopping || !reply || reply->notice || !so_far ||
        a->state != IRC_REGISTERED)
        return PARLEY_OK;
    if (dest_resolve(a, room, reply->mention, &d) != PARLEY_OK)
        return PARLEY_OK;
    st = stream_slot(a, &d, 1);
    if (!st || st->full || strlen(so_far) <= st->raw_off)
        return PARLEY_OK;
    nl = strrchr(so_far + st->raw_off, '\n');
    if (!nl)
        return PARLEY_OK;
    len = (size_t)(nl - (so_far + st->raw_off));
    seg = strndup(so_far + st->raw_off, len);
    plain = seg ? answer_plain(a, room, &d, seg, st->lines == 0) : NULL;
    free(seg);
    if (!plain)
        return PARLEY_ERR_OOM;
    memset(&lines, 0, sizeof(lines));
    result = irc_split_text(plain, dest_budget(a, &d), &lines);
    free(plain);
    if (result != PARLEY_OK)
        return result;
    if (lines.n > 0 && st->lines + lines.n > max) {
        /* Past max_lines: "!more" takes it from here. */
        st->full = 1;
        irc_lines_free(&lines);
        return PARLEY_OK;
    }
    job = lines.n > 0 ? malloc(sizeof(*job)) : NULL;
    if (lines.n > 0 && !job) {
        irc_lines_free(&lines);
        return PARLEY_ERR_OOM;
    }
    if (job) {
        job->done = stream_unit_done;
        job->privdata = st;
        result = queue_lines(a, "PRIVMSG", d.target, d.asker, lines.v,
                             lines.n, job);
        if (result != PARLEY_OK) {
            /* Queue full: the final send tries the rest whole. */
            free(job);
            st->full = 1;
            irc_lines_free(&lines);
            return result;
        }
        st->pending++;
        st->lines += lines.n;
    }
    st->raw_off += len + 1;
    irc_lines_free(&lines);
    flood_pump(a);
    return PARLEY_OK;
}

int irc_send(struct adapter *ad, const char *room,
             const struct reply *reply, adapter_send_done_fn *done,
             void *privdata)
{
    struct irc_ad *a = ad->priv;
    struct irc_dest d;
    struct irc_stream *st;
    const char *text;
    char *plain;
    size_t max = (size_t)a->cfg.max_lines;
    int result;

    if (a->stopping)
        return PARLEY_ERR_STATE;
    if (!reply || !reply->text)
        return PARLEY_ERR_OTHER;
    result = dest_resolve(a, room, reply->mention, &d);
    if (result == PARLEY_ERR_STATE) {
        log_info("irc %s: answer for %s dropped: its person is gone",
                 a->cfg.name, room);
        if (done)
            done(PARLEY_OK, privdata);
        return PARLEY_OK;
    }
    if (result != PARLEY_OK)
        return result;
    text = reply->text;
    st = stream_slot(a, &d, 0);
    if (st && st->raw_off > 0 && !reply->notice &&
        strlen(text) >= st->raw_off) {
        /* Streamed: only what is left, not addressed again, within
         * what max_lines left (the hint for "!more" at least). */
        text += st->raw_off;
        max = st->lines < max ? max - st->lines : 0;
        plain = answer_plain(a, room, &d, text, 0);
    } else {
        /* A broken stream ends with the fallback line, as any answer. */
        plain = answer_plain(a, room, &d, text, 1);
    }
    if (!plain)
        return PARLEY_ERR_OOM;
    if (st) {
        st->closed = 1;
        if (st->pending > 0 && text[strspn(text, " \t\r\n")] == '\0') {
            /* Nothing left: done waits for the streamed lines. */
            free(plain);
            st->done = done;
            st->privdata = privdata;
            return PARLEY_OK;
        }
        stream_settle(st);
    }
    return send_plain(a, room, &d, plain, max, done, privdata);
}

/*
 * adapter.h "more": the next max_lines of the last long answer to sender
 * in room, through the same queue and share as the answer.  A person
 * without a remainder of their own gets the room's unnamed one (a long
 * greeting).  PARLEY_ERR_STATE when there is nothing more.
 */
int irc_more(struct adapter *ad, const char *room, const char *sender)
{
    struct irc_ad *a = ad->priv;
    struct irc_more *m = NULL;
    char folded[IRC_CHANNEL_MAX + 1], asker[IRC_NICK_MAX];
    char target[IRC_CHANNEL_MAX + 1];
    int result;

    if (a->stopping)
        return PARLEY_ERR_STATE;
    if (!room || !room[0] || strlen(room) > IRC_CHANNEL_MAX ||
        strpbrk(room, " ,\r\n\a\x01"))
        return PARLEY_ERR_OTHER;
    snprintf(folded, sizeof(folded), "%s", room);
    irc_casefold(a->casemap, folded);
    if (sender && strlen(sender) < sizeof(asker)) {
        snprintf(asker, sizeof(asker), "%s", sender);
        irc_casefold(a->casemap, asker);
        m = more_slot(a, folded, asker, 0);
    }
    if (!m)
        m = more_slot(a, folded, "", 0);
    if (!m)
        return PARLEY_ERR_STATE;
    if (room_target(a, folded, target, sizeof(target))) {
        more_release(m);
        return PARLEY_ERR_STATE;
    }
    result = more_send(a, m, target, (size_t)a->cfg.max_lines, NULL);
    if (result == PARLEY_ERR_TOO_LARGE)
        queue_full_warn(a, room, m->asker);
    if (result != PARLEY_OK)
        return result;
    flood_pump(a);
    return PARLEY_OK;
}

void irc_typing(struct adapter *ad, const char *room, int on)
{
    /* IRC has no typing indicator that every client shows; nothing. */
    (void)ad;
    (void)room;
    (void)on;
}
