/*
 * The IRC adapter's outgoing side: an answer becomes PRIVMSG lines split
 * to fit 512 bytes, queued and paced by the token bucket and shared
 * fairly between channels and the people answered (irc_flood.c); what
 * does not fit in max_lines is kept as a "!more" remainder per room and
 * person.  Holds the send, more and typing ops.
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
        if (irc_send_raw(a->sess, "%s", line)) {
            /* The library's 1024-byte output buffer is full: let the
             * poll flush it and come back shortly. */
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

/* Queue the next max_lines of a remainder (plus a hint when more is
 * left) as one unit, so the hint stays with its answer.  tag rides on the
 * last line. */
static int more_send(struct irc_ad *a, struct irc_more *m,
                     const char *target, void *tag)
{
    size_t left = m->lines.n - m->pos, n = left, i;
    int result;
    char hint[64];
    char *v[IRC_MAX_LINES_MAX + 1];     /* max_lines and the hint */

    if (n > (size_t)a->cfg.max_lines)
        n = (size_t)a->cfg.max_lines;
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

int irc_send(struct adapter *ad, const char *room,
             const struct reply *reply, adapter_send_done_fn *done,
             void *privdata)
{
    struct irc_ad *a = ad->priv;
    struct irc_more *m;
    struct irc_job *job;
    char folded[IRC_CHANNEL_MAX + 1], asker[IRC_NICK_MAX] = "";
    char target[IRC_CHANNEL_MAX + 1];
    const char *mention = reply ? reply->mention : NULL;
    char *plain;
    size_t budget;
    int result;

    if (a->stopping)
        return PARLEY_ERR_STATE;
    if (!room || !reply || !reply->text || strlen(room) > IRC_CHANNEL_MAX ||
        !room[0] || strpbrk(room, " ,\r\n\a\x01"))
        return PARLEY_ERR_OTHER;
    snprintf(folded, sizeof(folded), "%s", room);
    irc_casefold(a->casemap, folded);
    if (room_target(a, folded, target, sizeof(target))) {
        /* The person left, or the nick has a new holder: never give
         * them an answer meant for someone else. */
        log_info("irc %s: answer for %s dropped: its person is gone",
                 a->cfg.name, room);
        if (done)
            done(PARLEY_OK, privdata);
        return PARLEY_OK;
    }
    /* The person answered owns the answer's share of the queue and its
     * remainder; answers that name nobody share "".  A "~account"
     * sender is mentioned by the nick that has the account now. */
    if (mention && mention[0] == '~') {
        snprintf(asker, sizeof(asker), "%s", mention);
        irc_casefold(a->casemap, asker);
        mention = nick_of_account(a, mention + 1);
    } else if (mention && irc_config_nick_valid(mention)) {
        snprintf(asker, sizeof(asker), "%s", mention);
        irc_casefold(a->casemap, asker);
    }
    plain = irc_markdown_to_plain(reply->text);
    if (!plain)
        return PARLEY_ERR_OOM;
    /* In a channel, address the person answered ("alice: ..."), as IRC
     * users do; only a plausible nick is used. */
    if (mention && irc_is_channel(room, a->chantypes) &&
        irc_config_nick_valid(mention) &&
        irc_casecmp(a->casemap, mention, a->nick)) {
        size_t ml = strlen(mention), pl = strlen(plain);
        char *with = malloc(ml + 2 + pl + 1);

        if (!with) {
            free(plain);
            return PARLEY_ERR_OOM;
        }
        memcpy(with, mention, ml);
        memcpy(with + ml, ": ", 2);
        memcpy(with + ml + 2, plain, pl + 1);
        free(plain);
        plain = with;
    }
    budget = irc_text_budget("PRIVMSG", a->nick[0] ? a->nick : a->cfg.nick,
                             bot_userlen(a), bot_hostlen(a), target);
    m = more_slot(a, folded, asker, 1);
    irc_lines_free(&m->lines);
    m->pos = 0;
    m->stamp = now_ms(a);
    result = irc_split_text(plain, budget, &m->lines);
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
    result = more_send(a, m, target, job);
    if (result != PARLEY_OK) {
        free(job);
        if (m->target[0])
            more_release(m);
        if (result == PARLEY_ERR_TOO_LARGE)
            queue_full_warn(a, room, asker);
        return result;
    }
    flood_pump(a);
    return PARLEY_OK;
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
    result = more_send(a, m, target, NULL);
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
