/*
 * The IRC adapter: one libircclient session per configured network,
 * driven from the libuv loop, behind the TLS/CAP/SASL transport.  It turns
 * channel and query messages into struct event (platform "irc", account =
 * network name, room = case-folded channel; people are keyed by their
 * services account where the server says it, see "Who is who" below),
 * keeps channel membership for operator checks and the
 * member counts it reports with joins (the router decides greetings), and
 * sends answers as PRIVMSG lines split to fit 512 bytes, paced by a token
 * bucket and shared fairly between channels and the people answered.
 *
 * libircclient glue (STYLE.md "What parley should absorb" 1): the library
 * has no fd accessor, so the fd is found with irc_add_select_descriptors
 * into zeroed fd_sets; a loop watch (loop.h) follows it; on a ready event
 * the sets are rebuilt and irc_process_select_descriptors runs; after
 * every call into the library the mask is recomputed and set again.
 * The library's callbacks never tear the session down themselves: a lost
 * connection is handled after irc_process_select_descriptors returns, or
 * from the transport's callback, which never runs inside the library.
 *
 * Who is who (issue 12): a nick is not a person, whoever takes it next
 * would inherit its private history and limits.  The account of each
 * channel member is tracked from extended-join, account-notify (ACCOUNT)
 * and WHOX replies; a person with an account is sender "~account" and
 * their query room is "~account" (nicks never contain '~', so neither
 * key can be a nick's).  A person
 * without a known account is sender = nick, and their query room is
 * "nick~token" with a random token the adapter keeps per nick while it
 * can see that the nick stays with one connection: it is forgotten on
 * QUIT, on a NICK away from or onto it, when the nick joins while
 * unseen in every shared channel, leaves the last shared channel, after
 * IRC_QUERY_IDLE_MS without a message, and on restart.  A new holder
 * gets a new token and so an empty history; an answer for a room whose
 * token is gone is dropped rather than sent to the new holder.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>

#include <libircclient.h>
#include <libirc_rfcnumeric.h>

#include "adapter.h"
#include "backoff.h"
#include "config.h"
#include "event.h"
#include "irc_config.h"
#include "irc_flood.h"
#include "irc_format.h"
#include "irc_line.h"
#include "irc_text.h"
#include "irc_transport.h"
#include "log.h"
#include "loop.h"
#include "random.h"
#include "router.h"
#include "status.h"

/* Channels the bot may be in: configured ones plus invitations. */
#define IRC_MAX_CHANNELS (IRC_CONFIG_MAX_CHANNELS * 2)
/* Members tracked per channel; above this only the count is kept
 * approximately and operator status of the rest is unknown. */
#define IRC_MAX_MEMBERS 4096
/* "!more" remainders kept at once, one per room and person (oldest
 * evicted). */
#define IRC_MORE_SLOTS 64
/* Incoming text after UTF-8 repair: Latin-1 doubles a 512-byte line. */
#define IRC_TEXT_MAX 1100
/* Nick-keyed query rooms of people without an account, and how long one
 * lives without a message (see "Who is who"). */
#define IRC_QUERY_SLOTS 256
#define IRC_QUERY_IDLE_MS (60 * 60 * 1000)
/* WHOX query token, to tell our replies from others'. */
#define IRC_WHOX_TOKEN "152"
/* Housekeeping tick: rejoins and nick regain. */
#define IRC_TICK_MS 500
/* CTCP answers are skipped while this many lines wait, so a CTCP flood
 * cannot crowd out answers. */
#define IRC_CTCP_QUEUE_MAX 16
/* On shutdown, how long to wait after QUIT for the server to close the
 * connection.  Servers answer QUIT with ERROR and close at once, so this
 * only bounds a stalled or lagged link; short, because main keeps the
 * process alive until every handle is closed, and 2 s covers a loaded
 * server's round trip on a slow link. */
#define IRC_QUIT_TIMEOUT_MS 2000
/* Retry interval while libircclient's output buffer is too full to take
 * the QUIT line (it drains as the poll writes it out). */
#define IRC_QUIT_RETRY_MS 20

struct irc_member {
    char nick[IRC_NICK_MAX];    /* case-folded */
    char account[IRC_NICK_MAX]; /* case-folded services account, "" when
                                   none or not known */
    int op;
};

/* The current holder of a nick without an account: its query room is
 * "nick~tok" (see "Who is who"). */
struct irc_query {
    char nick[IRC_NICK_MAX];    /* case-folded; "" = free slot */
    char tok[17];               /* random hex */
    uint64_t seen;              /* loop_now_ms of the last message */
};

struct irc_chan {
    char name[IRC_CHANNEL_MAX + 1];     /* as configured or invited */
    char folded[IRC_CHANNEL_MAX + 1];
    int configured;
    char *key;                  /* channel key (secret), or NULL */
    int joined;
    uint64_t join_at;           /* next JOIN attempt, loop_now_ms */
    int names_open;             /* inside a 353...366 burst */
    struct irc_member *m;
    size_t n_m, cap_m;
};

/* The rest of one long answer: room and person answered, both folded
 * (asker "" when the answer named nobody, e.g. a room greeting). */
struct irc_more {
    char target[IRC_CHANNEL_MAX + 1];
    char asker[IRC_NICK_MAX];
    struct irc_lines lines;
    size_t pos;
    uint64_t stamp;
};

/* One send() waiting for its last line to leave the queue. */
struct irc_job {
    adapter_send_done_fn *done;
    void *privdata;
};

enum irc_conn_state {
    IRC_STOPPED = 0,
    IRC_WAITING,                /* reconnect timer running */
    IRC_CONNECTING,             /* transport + session, not registered */
    IRC_REGISTERED,
    IRC_QUITTING                /* stop: QUIT sent, waiting for the server
                                   to close or IRC_QUIT_TIMEOUT_MS */
};

struct irc_ad {
    struct adapter base;
    struct irc_config cfg;
    char *sasl_password;        /* wiped on free */
    struct loop *loop;          /* not owned */

    irc_session_t *sess;
    struct irc_transport *tp;
    struct loop_watch *poll;    /* per connection */
    int fd;
    int poll_events;

    enum irc_conn_state state;
    int stopping;
    unsigned attempt;           /* consecutive failed connects */
    size_t nick_try;            /* index into alternatives */
    char nick[IRC_NICK_MAX];    /* current nick */
    uint64_t regain_at;

    /* ISUPPORT and what the bot learnt about itself. */
    enum irc_casemap casemap;
    char chantypes[16];
    char prefix_modes[16], prefix_syms[16];
    char chanmodes[4][32];
    size_t userlen, hostlen;    /* from the bot's own JOIN, else 0 */
    size_t isupport_userlen, isupport_hostlen;

    struct irc_chan chans[IRC_MAX_CHANNELS];
    size_t n_chans;
    struct irc_more more[IRC_MORE_SLOTS];
    struct irc_query query[IRC_QUERY_SLOTS];
    int whox;                   /* ISUPPORT WHOX, when within the ten
                                   parameters libircclient passes on;
                                   else irc_transport_whox() */

    struct irc_queue *queue;
    struct irc_bucket bucket;
    /* Created with the adapter; released at stop (quit_timer when the
     * goodbye is over), or at free if never started.  NULL once gone:
     * loop_timer_start/stop on NULL do nothing. */
    struct loop_timer *flood_timer;
    struct loop_timer *reconnect_timer;
    struct loop_timer *tick_timer;
    struct loop_timer *quit_timer;  /* QUIT deadline and retries */
    int quit_sent;              /* the library took the QUIT line */
    uint64_t quit_deadline;     /* loop_now_ms */
};

static struct irc_ad *ad_of(irc_session_t *s)
{
    return irc_get_ctx(s);
}

static uint64_t now_ms(struct irc_ad *a)
{
    return loop_now_ms(a->loop);
}

static void session_rearm(struct irc_ad *a);
static void flood_pump(struct irc_ad *a);
static void connection_lost(struct irc_ad *a, int status, const char *why);
static void quit_finish(struct irc_ad *a);

/* ---- channels and members ------------------------------------------- */

static struct irc_chan *chan_find(struct irc_ad *a, const char *name)
{
    size_t i;

    for (i = 0; i < a->n_chans; i++)
        if (!irc_casecmp(a->casemap, a->chans[i].name, name))
            return &a->chans[i];
    return NULL;
}

static struct irc_chan *chan_add(struct irc_ad *a, const char *name)
{
    struct irc_chan *c = chan_find(a, name);

    if (c)
        return c;
    if (a->n_chans == IRC_MAX_CHANNELS ||
        strlen(name) > IRC_CHANNEL_MAX)
        return NULL;
    c = &a->chans[a->n_chans++];
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "%s", name);
    snprintf(c->folded, sizeof(c->folded), "%s", name);
    irc_casefold(a->casemap, c->folded);
    return c;
}

static void chan_clear_members(struct irc_chan *c)
{
    free(c->m);
    c->m = NULL;
    c->n_m = c->cap_m = 0;
}

static struct irc_member *member_find(struct irc_ad *a, struct irc_chan *c,
                                      const char *nick)
{
    size_t i;

    for (i = 0; i < c->n_m; i++)
        if (!irc_casecmp(a->casemap, c->m[i].nick, nick))
            return &c->m[i];
    return NULL;
}

static struct irc_member *member_add(struct irc_ad *a, struct irc_chan *c,
                                     const char *nick)
{
    struct irc_member *m = member_find(a, c, nick);

    if (m)
        return m;
    if (strlen(nick) >= IRC_NICK_MAX || c->n_m >= IRC_MAX_MEMBERS)
        return NULL;
    if (c->n_m == c->cap_m) {
        size_t cap = c->cap_m ? c->cap_m * 2 : 16;
        struct irc_member *grown = realloc(c->m, cap * sizeof(*grown));

        if (!grown)
            return NULL;
        c->m = grown;
        c->cap_m = cap;
    }
    m = &c->m[c->n_m++];
    snprintf(m->nick, sizeof(m->nick), "%s", nick);
    irc_casefold(a->casemap, m->nick);
    m->op = 0;
    m->account[0] = '\0';
    return m;
}

static void member_remove(struct irc_ad *a, struct irc_chan *c,
                          const char *nick)
{
    struct irc_member *m = member_find(a, c, nick);

    if (!m)
        return;
    *m = c->m[--c->n_m];
}

/* The account of nick from any shared channel, or NULL. */
static const char *account_of(struct irc_ad *a, const char *nick)
{
    size_t i;

    for (i = 0; i < a->n_chans; i++) {
        struct irc_member *m = member_find(a, &a->chans[i], nick);

        if (m && m->account[0])
            return m->account;
    }
    return NULL;
}

/* 1 when nick is a member of any channel the bot tracks. */
static int member_anywhere(struct irc_ad *a, const char *nick)
{
    size_t i;

    for (i = 0; i < a->n_chans; i++)
        if (member_find(a, &a->chans[i], nick))
            return 1;
    return 0;
}

/* The current nick of a folded account, or NULL. */
static const char *nick_of_account(struct irc_ad *a, const char *account)
{
    size_t i, j;

    for (i = 0; i < a->n_chans; i++)
        for (j = 0; j < a->chans[i].n_m; j++)
            if (a->chans[i].m[j].account[0] &&
                !irc_casecmp(a->casemap, a->chans[i].m[j].account, account))
                return a->chans[i].m[j].nick;
    return NULL;
}

/* Record nick's account ("*", "0" or "" = none) in every shared channel.
 * An account too long for the key is treated as none. */
static void account_set(struct irc_ad *a, const char *nick,
                        const char *account)
{
    size_t i;
    int none = !account || !account[0] || !strcmp(account, "*") ||
               !strcmp(account, "0") || strlen(account) + 1 >= IRC_NICK_MAX ||
               strpbrk(account, " ,\r\n\a\x01~");

    for (i = 0; i < a->n_chans; i++) {
        struct irc_member *m = member_find(a, &a->chans[i], nick);

        if (!m)
            continue;
        if (none) {
            m->account[0] = '\0';
        } else {
            snprintf(m->account, sizeof(m->account), "%s", account);
            irc_casefold(a->casemap, m->account);
        }
    }
}

static struct irc_query *query_find(struct irc_ad *a, const char *nick)
{
    size_t i;

    for (i = 0; i < IRC_QUERY_SLOTS; i++)
        if (a->query[i].nick[0] &&
            !irc_casecmp(a->casemap, a->query[i].nick, nick))
            return &a->query[i];
    return NULL;
}

/* The nick changed hands, or may have: its next holder starts afresh. */
static void query_forget(struct irc_ad *a, const char *nick)
{
    struct irc_query *q = query_find(a, nick);

    if (q)
        memset(q, 0, sizeof(*q));
}

/* The token of nick's current holder, made when there is none (or it
 * idled out); the least recently used slot is reused when all are
 * taken, which only costs that person their short history. */
static const char *query_token(struct irc_ad *a, const char *nick)
{
    struct irc_query *q = query_find(a, nick);
    uint64_t now = now_ms(a);
    unsigned char raw[8];
    size_t i;

    if (q && now - q->seen > IRC_QUERY_IDLE_MS)
        memset(q, 0, sizeof(*q));
    else if (q) {
        q->seen = now;
        return q->tok;
    }
    q = &a->query[0];
    for (i = 0; i < IRC_QUERY_SLOTS; i++) {
        if (!a->query[i].nick[0]) {
            q = &a->query[i];
            break;
        }
        if (a->query[i].seen < q->seen)
            q = &a->query[i];
    }
    if (random_bytes(raw, sizeof(raw)) != PARLEY_OK) {
        uint64_t r = random_u64();

        memcpy(raw, &r, sizeof(raw));
    }
    snprintf(q->nick, sizeof(q->nick), "%s", nick);
    irc_casefold(a->casemap, q->nick);
    for (i = 0; i < sizeof(raw); i++)
        snprintf(q->tok + 2 * i, 3, "%02x", raw[i]);
    q->seen = now;
    return q->tok;
}

/*
 * Where a room's answer goes: a channel as is; "~account" to the nick
 * that has the account now; "nick~token" to nick while the token is
 * still its holder's; anything else is a plain nick.  Returns 0, or -1
 * when nobody the answer is meant for can be reached.
 */
static int room_target(struct irc_ad *a, const char *room, char *out,
                       size_t outlen)
{
    const char *tilde = strchr(room, '~');

    if (irc_is_channel(room, a->chantypes) || !tilde) {
        snprintf(out, outlen, "%s", room);
        return 0;
    }
    if (tilde == room) {
        const char *nick = nick_of_account(a, room + 1);

        if (!nick)
            return -1;
        snprintf(out, outlen, "%s", nick);
        return 0;
    }
    {
        char nick[IRC_NICK_MAX];
        struct irc_query *q;

        if ((size_t)(tilde - room) >= sizeof(nick))
            return -1;
        snprintf(nick, sizeof(nick), "%.*s", (int)(tilde - room), room);
        q = query_find(a, nick);
        if (!q || strcmp(q->tok, tilde + 1))
            return -1;
        snprintf(out, outlen, "%s", nick);
        return 0;
    }
}

/* 1 when c ranks at or above op in a PREFIX list (ISUPPORT lists ranks
 * highest first); without op in the list, only op itself counts. */
static int ranks_as_op(const char *list, char c, char op)
{
    const char *at = strchr(list, op);
    const char *p = strchr(list, c);

    if (!p || c == '\0')
        return 0;
    if (!at)
        return c == op;
    return p <= at;
}

/* 1 when a PREFIX symbol means channel operator or above. */
static int sym_is_op(struct irc_ad *a, char sym)
{
    return ranks_as_op(a->prefix_syms, sym, '@');
}

/* 1 when a PREFIX mode letter means channel operator or above. */
static int mode_is_op(struct irc_ad *a, char mode)
{
    return ranks_as_op(a->prefix_modes, mode, 'o');
}

/* ---- sending ---------------------------------------------------------- */

static void job_finish(void *tag, int status)
{
    struct irc_job *j = tag;

    if (j->done)
        j->done(status, j->privdata);
    free(j);
}

static void job_drop(void *tag)
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

static void on_flood_timer(void *privdata)
{
    flood_pump(privdata);
}

/* Send queued lines while the bucket allows and the library has room. */
static void flood_pump(struct irc_ad *a)
{
    const char *target, *line;
    uint64_t wait;

    if (a->state != IRC_REGISTERED || !a->queue)
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
static size_t queue_asker_cap(const struct irc_ad *a)
{
    size_t one = (size_t)a->cfg.max_lines + 1;

    return one > IRC_QUEUE_ASKER_CAP ? one : IRC_QUEUE_ASKER_CAP;
}

/* Queue lines[0..n) as one unit of "CMD target :line" for target on
 * behalf of asker (folded nick, or "" for nobody).  tag rides on the last
 * line.  Returns a parley status. */
static int queue_lines(struct irc_ad *a, const char *cmd, const char *target,
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

static int irc_send(struct adapter *ad, const char *room,
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
static int irc_more(struct adapter *ad, const char *room, const char *sender)
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

static void irc_typing(struct adapter *ad, const char *room, int on)
{
    /* IRC has no typing indicator that every client shows; nothing. */
    (void)ad;
    (void)room;
    (void)on;
}

/* ---- the libircclient session from the uv loop ------------------------ */

/* On a poll error the loop reports the whole watched mask, so the library
 * finds out by trying both ways (hiredis adapters/libuv.h:17-27). */
static void on_poll(int events, void *privdata)
{
    struct irc_ad *a = privdata;
    fd_set in, out;

    if (!a->sess || a->fd < 0)
        return;
    FD_ZERO(&in);
    FD_ZERO(&out);
    if (events & LOOP_READABLE)
        FD_SET(a->fd, &in);
    if (events & LOOP_WRITABLE)
        FD_SET(a->fd, &out);
    if (irc_process_select_descriptors(a->sess, &in, &out)) {
        char why[128];

        snprintf(why, sizeof(why), "connection lost: %s",
                 irc_strerror(irc_errno(a->sess)));
        connection_lost(a, PARLEY_ERR_IO, why);
        return;
    }
    session_rearm(a);
}

static void session_rearm(struct irc_ad *a)
{
    fd_set in, out;
    int maxfd = 0, events = 0;

    if (!a->poll || a->fd < 0)
        return;
    FD_ZERO(&in);
    FD_ZERO(&out);
    if (irc_add_select_descriptors(a->sess, &in, &out, &maxfd))
        return;
    if (FD_ISSET(a->fd, &in))
        events |= LOOP_READABLE;
    if (FD_ISSET(a->fd, &out))
        events |= LOOP_WRITABLE;
    if (events == a->poll_events)
        return;
    a->poll_events = events;
    loop_watch_set(a->poll, events);
}

static void schedule_reconnect(struct irc_ad *a, int status)
{
    /* Jitter: between half and all of the delay, so many bots cut off
     * together do not return together. */
    struct backoff_policy p = {
        a->cfg.reconnect_min_ms, a->cfg.reconnect_max_ms,
        BACKOFF_JITTER_UPPER
    };
    uint64_t delay;
    int attempt = a->attempt < INT_MAX ? (int)a->attempt : INT_MAX;

    if (a->stopping)
        return;
    /* A refused login will not fix itself in seconds: wait the most. */
    if (status == PARLEY_ERR_CONFIG)
        attempt = INT_MAX;
    delay = (uint64_t)backoff_delay_ms(&p, attempt, -1, random_u64());
    a->attempt++;
    a->state = IRC_WAITING;
    log_info("irc %s: reconnecting in %llu ms", a->cfg.name,
             (unsigned long long)delay);
    loop_timer_start(a->reconnect_timer, delay, 0);
}

static void session_teardown(struct irc_ad *a)
{
    size_t i;

    /* Before irc_disconnect closes the fd the watch is on. */
    loop_watch_free(a->poll);
    a->poll = NULL;
    a->poll_events = 0;
    a->fd = -1;
    if (a->sess)
        irc_disconnect(a->sess);
    irc_transport_close(a->tp);
    a->tp = NULL;
    for (i = 0; i < a->n_chans; i++) {
        a->chans[i].joined = 0;
        a->chans[i].names_open = 0;
        chan_clear_members(&a->chans[i]);
    }
    /* While disconnected every nick may change hands unseen. */
    memset(a->query, 0, sizeof(a->query));
    a->whox = 0;
    a->base.connected = 0;
    loop_timer_stop(a->flood_timer);
}

static void connection_lost(struct irc_ad *a, int status, const char *why)
{
    if (a->state == IRC_QUITTING) {
        /* The answer to QUIT: the server (ERROR, then EOF) or the
         * library's loopback socket closing after it. */
        log_info("irc %s: disconnected after QUIT (%s)", a->cfg.name, why);
        quit_finish(a);
        return;
    }
    if (a->state != IRC_CONNECTING && a->state != IRC_REGISTERED)
        return;
    if (status == PARLEY_ERR_CONFIG)
        log_error("irc %s: %s", a->cfg.name, why);
    else
        log_warn("irc %s: %s", a->cfg.name, why);
    snprintf(a->base.errstr, sizeof(a->base.errstr), "%s", why);
    a->base.err = status;
    session_teardown(a);
    a->state = IRC_STOPPED;
    schedule_reconnect(a, status);
}

static void on_transport_closed(void *ctx, int status, const char *why)
{
    struct irc_ad *a = ctx;

    connection_lost(a, status, why);
}

static void connect_attempt(struct irc_ad *a)
{
    struct irc_transport_opts o;
    struct sockaddr_in local;
    socklen_t len = sizeof(local);
    char err[256];
    fd_set in, out;
    int port = 0, maxfd = 0, result;
    const char *nick;

    memset(&o, 0, sizeof(o));
    o.network = a->cfg.name;
    o.host = a->cfg.host;
    o.port = a->cfg.port;
    o.tls = a->cfg.tls;
    o.tls_verify = a->cfg.tls_verify;
    o.ca_file = a->cfg.ca_file;
    o.sasl_user = a->sasl_password ? a->cfg.sasl_user : NULL;
    o.sasl_password = a->sasl_password;
    o.ping_interval_ms = (unsigned)a->cfg.ping_interval_s * 1000u;
    o.register_timeout_ms = (unsigned)a->cfg.register_timeout_s * 1000u;
    a->state = IRC_CONNECTING;
    result = irc_transport_start(&a->tp, a->loop, &o,
                                 on_transport_closed, a, &port, err,
                                 sizeof(err));
    if (result != PARLEY_OK) {
        log_error("irc %s: %s", a->cfg.name, err);
        a->state = IRC_STOPPED;
        schedule_reconnect(a, result);
        return;
    }
    log_info("irc %s: connecting to %s port %d%s", a->cfg.name, a->cfg.host,
             a->cfg.port, a->cfg.tls ? " (TLS)" : "");
    a->nick_try = 0;
    nick = a->cfg.nick;
    snprintf(a->nick, sizeof(a->nick), "%s", nick);
    a->userlen = a->hostlen = 0;
    if (irc_connect(a->sess, "127.0.0.1", (unsigned short)port, NULL, nick,
                    a->cfg.username, a->cfg.realname)) {
        snprintf(err, sizeof(err), "libircclient connect failed: %s",
                 irc_strerror(irc_errno(a->sess)));
        goto fail;
    }
    FD_ZERO(&in);
    FD_ZERO(&out);
    if (irc_add_select_descriptors(a->sess, &in, &out, &maxfd) ||
        maxfd <= 0 || maxfd >= FD_SETSIZE ||
        (!FD_ISSET(maxfd, &in) && !FD_ISSET(maxfd, &out))) {
        /* fd_set cannot hold descriptors from FD_SETSIZE on, and the
         * library offers no other interface. */
        snprintf(err, sizeof(err), "cannot watch the libircclient socket "
                 "(fd %d; FD_SETSIZE is %d)", maxfd, FD_SETSIZE);
        goto fail;
    }
    a->fd = maxfd;
    if (getsockname(a->fd, (struct sockaddr *)&local, &len) < 0 ||
        local.sin_family != AF_INET) {
        snprintf(err, sizeof(err), "getsockname on the libircclient socket "
                 "failed");
        goto fail;
    }
    irc_transport_expect_peer(a->tp, &local);
    a->poll = loop_watch_new(a->loop, a->fd, on_poll, a);
    if (!a->poll) {
        snprintf(err, sizeof(err), "cannot poll the libircclient socket");
        goto fail;
    }
    a->poll_events = 0;
    session_rearm(a);
    return;
fail:
    log_error("irc %s: %s", a->cfg.name, err);
    session_teardown(a);
    a->state = IRC_STOPPED;
    schedule_reconnect(a, PARLEY_ERR_IO);
}

static void on_reconnect_timer(void *privdata)
{
    struct irc_ad *a = privdata;

    if (a->stopping || a->state != IRC_WAITING)
        return;
    connect_attempt(a);
}

static void join_channel(struct irc_ad *a, struct irc_chan *c)
{
    irc_cmd_join(a->sess, c->name, c->key);
    c->join_at = now_ms(a) + 30000;
}

static void on_tick(void *privdata)
{
    struct irc_ad *a = privdata;
    uint64_t now = now_ms(a);
    size_t i;
    int touched = 0;

    if (a->state != IRC_REGISTERED)
        return;
    for (i = 0; i < a->n_chans; i++) {
        struct irc_chan *c = &a->chans[i];

        if (c->configured && !c->joined && now >= c->join_at) {
            join_channel(a, c);
            touched = 1;
        }
    }
    if (irc_casecmp(a->casemap, a->nick, a->cfg.nick) && now >= a->regain_at) {
        irc_cmd_nick(a->sess, a->cfg.nick);
        a->regain_at = now + (uint64_t)a->cfg.nick_regain_s * 1000;
        touched = 1;
    }
    if (touched)
        session_rearm(a);
}

/* ---- events from libircclient ------------------------------------------ */

static int from_self(struct irc_ad *a, const char *origin)
{
    char nick[IRC_NICK_MAX];

    if (!origin || irc_prefix_nick(origin, nick, sizeof(nick)))
        return 0;
    return !irc_casecmp(a->casemap, nick, a->nick);
}

static int mask_list_match(struct irc_ad *a, char **masks, size_t n,
                           const char *origin)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (masks[i] && irc_mask_match(a->casemap, masks[i], origin))
            return 1;
    return 0;
}

static void ev_connect(irc_session_t *s, const char *e, const char *origin,
                       const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    size_t i;

    (void)e;
    (void)origin;
    (void)p;
    (void)n;
    /* 376/422 after 001 fire this again; while quitting it must not
     * bring the session back. */
    if (a->stopping)
        return;
    a->state = IRC_REGISTERED;
    a->attempt = 0;
    a->base.connected = 1;
    a->base.err = 0;
    a->base.errstr[0] = '\0';
    a->regain_at = now_ms(a) + (uint64_t)a->cfg.nick_regain_s * 1000;
    log_info("irc %s: registered as %s", a->cfg.name, a->nick);
    for (i = 0; i < a->n_chans; i++)
        if (a->chans[i].configured)
            join_channel(a, &a->chans[i]);
    flood_pump(a);
}

static void isupport_token(struct irc_ad *a, const char *tok)
{
    const char *eq = strchr(tok, '=');
    const char *val = eq ? eq + 1 : "";
    size_t klen = eq ? (size_t)(eq - tok) : strlen(tok);

#define KEY(k) (klen == sizeof(k) - 1 && !strncmp(tok, k, klen))
    if (KEY("CASEMAPPING")) {
        enum irc_casemap cm;
        size_t i;

        irc_casemap_parse(val, &cm);
        if (cm != a->casemap) {
            a->casemap = cm;
            for (i = 0; i < a->n_chans; i++) {
                /* memcpy, not snprintf: GCC's -Wrestrict (Debug builds)
                 * cannot tell two members of one struct apart. */
                size_t n = strnlen(a->chans[i].name,
                                   sizeof(a->chans[i].folded) - 1);

                memcpy(a->chans[i].folded, a->chans[i].name, n);
                a->chans[i].folded[n] = '\0';
                irc_casefold(cm, a->chans[i].folded);
            }
        }
    } else if (KEY("CHANTYPES") && val[0]) {
        snprintf(a->chantypes, sizeof(a->chantypes), "%s", val);
    } else if (KEY("PREFIX") && val[0] == '(') {
        const char *close = strchr(val, ')');

        if (close && strlen(close + 1) == (size_t)(close - val - 1) &&
            (size_t)(close - val) < sizeof(a->prefix_modes)) {
            snprintf(a->prefix_modes, sizeof(a->prefix_modes), "%.*s",
                     (int)(close - val - 1), val + 1);
            snprintf(a->prefix_syms, sizeof(a->prefix_syms), "%s",
                     close + 1);
        }
    } else if (KEY("CHANMODES")) {
        size_t i;
        const char *p = val;

        for (i = 0; i < 4; i++) {
            size_t l = strcspn(p, ",");

            snprintf(a->chanmodes[i], sizeof(a->chanmodes[i]), "%.*s",
                     (int)(l < 31 ? l : 31), p);
            p += l;
            if (*p == ',')
                p++;
        }
    } else if (KEY("WHOX")) {
        a->whox = 1;
    } else if (KEY("USERLEN")) {
        long v = strtol(val, NULL, 10);

        if (v > 0 && v < 256)
            a->isupport_userlen = (size_t)v;
    } else if (KEY("HOSTLEN")) {
        long v = strtol(val, NULL, 10);

        if (v > 0 && v < 256)
            a->isupport_hostlen = (size_t)v;
    }
#undef KEY
}

static void names_reply(struct irc_ad *a, const char **p, unsigned n)
{
    /* 353 me = #chan :@op +voice nick */
    struct irc_chan *c;
    char buf[1024];
    char *tok, *save = NULL;

    if (n < 4)
        return;
    c = chan_find(a, p[2]);
    if (!c)
        return;
    if (!c->names_open) {
        chan_clear_members(c);
        c->names_open = 1;
    }
    snprintf(buf, sizeof(buf), "%s", p[3]);
    for (tok = strtok_r(buf, " ", &save); tok;
         tok = strtok_r(NULL, " ", &save)) {
        int op = 0;
        struct irc_member *m;

        while (*tok && strchr(a->prefix_syms, *tok)) {
            op |= sym_is_op(a, *tok);
            tok++;
        }
        /* userhost-in-names is not requested, but cut at '!' anyway. */
        tok[strcspn(tok, "!")] = '\0';
        if (!*tok)
            continue;
        m = member_add(a, c, tok);
        if (m)
            m->op = op;
    }
}

static void ev_numeric(irc_session_t *s, unsigned code, const char *origin,
                       const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    unsigned i;

    (void)origin;
    switch (code) {
    case 1:
        if (n >= 1 && strlen(p[0]) < sizeof(a->nick))
            snprintf(a->nick, sizeof(a->nick), "%s", p[0]);
        break;
    case 5:
        for (i = 1; i + 1 < n; i++)
            isupport_token(a, p[i]);
        break;
    case 353:
        names_reply(a, p, n);
        break;
    case 354:
        /* WHOX "%tna": me token nick account ("0" = none). */
        if (n >= 4 && !strcmp(p[1], IRC_WHOX_TOKEN))
            account_set(a, p[2], p[3]);
        break;
    case 366:
        if (n >= 2) {
            struct irc_chan *c = chan_find(a, p[1]);

            if (c)
                c->names_open = 0;
        }
        break;
    case 432: case 433: case 436: case 437:
        /* Nick unusable.  Before registration pick the next one; after
         * it (a regain attempt) or while quitting, keep the current
         * nick. */
        if (a->state != IRC_CONNECTING)
            break;
        if (a->nick_try < a->cfg.n_alt_nicks) {
            snprintf(a->nick, sizeof(a->nick), "%s",
                     a->cfg.alt_nicks[a->nick_try]);
        } else {
            snprintf(a->nick, sizeof(a->nick), "%.20s_%u", a->cfg.nick,
                     (unsigned)random_below(1000));
        }
        a->nick_try++;
        log_warn("irc %s: nick in use, trying %s", a->cfg.name, a->nick);
        irc_cmd_nick(s, a->nick);
        break;
    case 471: case 473: case 474: case 475:
        if (n >= 2) {
            struct irc_chan *c = chan_find(a, p[1]);

            log_warn("irc %s: cannot join %s: %s", a->cfg.name, p[1],
                     n >= 3 ? p[2] : "refused");
            if (c)
                c->join_at = now_ms(a) + 60000;
        }
        break;
    default:
        break;
    }
}

static void ev_nick(irc_session_t *s, const char *e, const char *origin,
                    const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    char old[IRC_NICK_MAX];
    size_t i;

    (void)e;
    if (!origin || n < 1 || irc_prefix_nick(origin, old, sizeof(old)) ||
        strlen(p[0]) >= IRC_NICK_MAX)
        return;
    if (!irc_casecmp(a->casemap, old, a->nick)) {
        snprintf(a->nick, sizeof(a->nick), "%s", p[0]);
        log_info("irc %s: now known as %s", a->cfg.name, a->nick);
    }
    /* Both nicks change hands: the old one is free for anyone, the new
     * one may have had an unseen holder. */
    query_forget(a, old);
    query_forget(a, p[0]);
    for (i = 0; i < a->n_chans; i++) {
        struct irc_member *m = member_find(a, &a->chans[i], old);

        if (m) {
            snprintf(m->nick, sizeof(m->nick), "%s", p[0]);
            irc_casefold(a->casemap, m->nick);
        }
    }
}

/* account-notify: ":nick!u@h ACCOUNT name" ("*" = logged out).  The
 * connection stays the same, so the nick keeps its holder. */
static void ev_unknown(irc_session_t *s, const char *e, const char *origin,
                       const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    char nick[IRC_NICK_MAX];

    if (!e || strcmp(e, "ACCOUNT") || !origin || n < 1 ||
        irc_prefix_nick(origin, nick, sizeof(nick)))
        return;
    account_set(a, nick, p[0]);
}

/* Report a join, a fact: the router decides whether to greet (greet
 * settings, room overrides, cooldown, member count). */
static void submit_join(struct irc_ad *a, struct irc_chan *c,
                        const char *nick, int self, int from_bot)
{
    struct event ev;
    const char *account = account_of(a, nick);
    char sender[IRC_NICK_MAX + 1];

    /* While quitting the router is already closed. */
    if (a->stopping)
        return;
    if (account)
        snprintf(sender, sizeof(sender), "~%s", account);
    else
        snprintf(sender, sizeof(sender), "%s", nick);
    memset(&ev, 0, sizeof(ev));
    ev.kind = EVENT_JOIN;
    ev.platform = "irc";
    ev.account = a->cfg.name;
    ev.room = c->folded;
    ev.sender = sender;
    ev.sender_name = nick;
    ev.self = self;
    ev.from_bot = from_bot;
    /* The bot's own JOIN comes before NAMES: the count is not known. */
    ev.members = self ? 0 : (int)c->n_m;
    if (a->base.router)
        router_submit(a->base.router, &ev);
}

static void ev_join(irc_session_t *s, const char *e, const char *origin,
                    const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    struct irc_chan *c;
    char nick[IRC_NICK_MAX];

    (void)e;
    if (!origin || n < 1 || irc_prefix_nick(origin, nick, sizeof(nick)))
        return;
    if (from_self(a, origin)) {
        const char *bang = strchr(origin, '!'), *at = strchr(origin, '@');

        c = chan_add(a, p[0]);
        if (!c)
            return;
        c->joined = 1;
        /* The real user and host lengths give the exact split budget. */
        if (bang && at && at > bang) {
            a->userlen = (size_t)(at - bang - 1);
            a->hostlen = strlen(at + 1);
        }
        log_info("irc %s: joined %s", a->cfg.name, c->name);
        member_add(a, c, nick);
        /* The accounts of those already there (extended-join and
         * account-notify only tell about changes from now on). */
        if (a->whox || irc_transport_whox(a->tp))
            irc_send_raw(a->sess, "WHO %s %%tna," IRC_WHOX_TOKEN, c->name);
        submit_join(a, c, nick, 1, 0);
        flood_pump(a);
        return;
    }
    c = chan_find(a, p[0]);
    if (!c || !c->joined)
        return;
    /* Unseen until now, the nick may have changed hands meanwhile. */
    if (!member_anywhere(a, nick))
        query_forget(a, nick);
    member_add(a, c, nick);
    /* extended-join: "JOIN #chan account :realname", "*" = none. */
    if (n >= 3) {
        const char *before = account_of(a, nick);

        if (before && irc_casecmp(a->casemap, before, p[1]))
            query_forget(a, nick);
        account_set(a, nick, p[1]);
    }
    submit_join(a, c, nick, 0,
                mask_list_match(a, a->cfg.bots, a->cfg.n_bots, origin));
}

static void ev_part(irc_session_t *s, const char *e, const char *origin,
                    const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    struct irc_chan *c;
    char nick[IRC_NICK_MAX];

    (void)e;
    if (!origin || n < 1 || irc_prefix_nick(origin, nick, sizeof(nick)))
        return;
    c = chan_find(a, p[0]);
    if (!c)
        return;
    if (from_self(a, origin)) {
        c->joined = 0;
        chan_clear_members(c);
        c->join_at = now_ms(a) + 30000;
        return;
    }
    member_remove(a, c, nick);
    /* Out of sight: a later QUIT or NICK would go unseen. */
    if (!member_anywhere(a, nick))
        query_forget(a, nick);
}

static void ev_quit(irc_session_t *s, const char *e, const char *origin,
                    const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    char nick[IRC_NICK_MAX];
    size_t i;

    (void)e;
    (void)p;
    (void)n;
    if (!origin || irc_prefix_nick(origin, nick, sizeof(nick)))
        return;
    for (i = 0; i < a->n_chans; i++)
        member_remove(a, &a->chans[i], nick);
    query_forget(a, nick);
}

static void ev_kick(irc_session_t *s, const char *e, const char *origin,
                    const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    struct irc_chan *c;

    (void)e;
    (void)origin;
    if (n < 2)
        return;
    c = chan_find(a, p[0]);
    if (!c)
        return;
    if (irc_casecmp(a->casemap, p[1], a->nick)) {
        member_remove(a, c, p[1]);
        if (!member_anywhere(a, p[1]))
            query_forget(a, p[1]);
        return;
    }
    log_warn("irc %s: kicked from %s (%s)", a->cfg.name, c->name,
             n >= 3 ? p[2] : "");
    c->joined = 0;
    chan_clear_members(c);
    if (c->configured && a->cfg.rejoin_on_kick)
        c->join_at = now_ms(a) + (uint64_t)a->cfg.rejoin_delay_ms;
    else
        c->configured = 0;
}

static void ev_mode(irc_session_t *s, const char *e, const char *origin,
                    const char **p, unsigned n)
{
    /* MODE #chan +o-v nick1 nick2: walk the modes and their arguments. */
    struct irc_ad *a = ad_of(s);
    struct irc_chan *c;
    unsigned arg = 2;
    int plus = 1;
    const char *m;

    (void)e;
    (void)origin;
    if (n < 2 || !(c = chan_find(a, p[0])))
        return;
    for (m = p[1]; *m; m++) {
        int takes;

        if (*m == '+' || *m == '-') {
            plus = (*m == '+');
            continue;
        }
        if (strchr(a->prefix_modes, *m)) {
            if (arg < n && mode_is_op(a, *m)) {
                struct irc_member *mb = member_find(a, c, p[arg]);

                if (mb)
                    mb->op = plus;
            }
            arg++;
            continue;
        }
        takes = strchr(a->chanmodes[0], *m) || strchr(a->chanmodes[1], *m) ||
                (plus && strchr(a->chanmodes[2], *m));
        if (takes)
            arg++;
    }
}

static void ev_invite(irc_session_t *s, const char *e, const char *origin,
                      const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    struct irc_chan *c;

    (void)e;
    if (!origin || n < 2 || a->stopping)
        return;
    c = chan_find(a, p[1]);
    if (!(c && c->configured) &&
        !mask_list_match(a, a->cfg.admins, a->cfg.n_admins, origin)) {
        log_info("irc %s: ignored an invitation to %.64s from %.64s",
                 a->cfg.name, p[1], origin);
        return;
    }
    if (!c) {
        char tmp[IRC_CHANNEL_MAX + 1];

        snprintf(tmp, sizeof(tmp), "%s", p[1]);
        if (!irc_config_channel_valid(tmp) || !(c = chan_add(a, tmp)))
            return;
    }
    log_info("irc %s: invited to %s by %.64s", a->cfg.name, c->name,
             origin);
    join_channel(a, c);
}

/* The shared path of channel messages, queries and actions. */
static void handle_message(struct irc_ad *a, const char *origin,
                           const char *target, const char *raw, int action)
{
    char nick[IRC_NICK_MAX], text[IRC_TEXT_MAX], room[IRC_CHANNEL_MAX + 1];
    char body[IRC_TEXT_MAX + IRC_NICK_MAX + 4], sender[IRC_NICK_MAX + 1];
    const char *rest = NULL, *account;
    int is_chan, addressed, command;
    struct irc_chan *c = NULL;
    struct event ev;
    size_t len;

    /* While quitting nothing new is taken (the router is closed and the
     * send queue gone). */
    if (a->stopping || !origin || !target || !raw ||
        irc_prefix_nick(origin, nick, sizeof(nick)) || !nick[0])
        return;
    if (from_self(a, origin))
        return;
    is_chan = irc_is_channel(target, a->chantypes);
    if (is_chan) {
        c = chan_find(a, target);
        if (!c)
            return;
    }
    /* "Who is who" at the top of this file. */
    account = account_of(a, nick);
    if (account)
        snprintf(sender, sizeof(sender), "~%s", account);
    else
        snprintf(sender, sizeof(sender), "%s", nick);
    if (is_chan)
        snprintf(room, sizeof(room), "%s", c->folded);
    else if (account)
        snprintf(room, sizeof(room), "%s", sender);
    else
        snprintf(room, sizeof(room), "%s~%s", nick, query_token(a, nick));
    irc_casefold(a->casemap, room);
    log_debug("irc %s: message from %s in %s as %s", a->cfg.name, nick,
              room, sender);
    len = irc_utf8_from_irc(raw, strlen(raw), text, sizeof(text));
    (void)len;
    irc_strip_formatting(text);
    if (!is_chan) {
        addressed = 1;
        rest = text;
        while (*rest == ' ')
            rest++;
    } else if (irc_addressed(a->casemap, text, a->nick, &rest)) {
        addressed = 1;
    } else {
        rest = text;
        while (*rest == ' ')
            rest++;
        addressed = 0;
    }
    /* A bare "!command" is passed on unaddressed: the router answers the
     * commands it knows (!more among them, through irc_more) and leaves
     * other bots' commands alone. */
    command = !action && rest[0] == '!';
    if (!addressed && !command && !a->cfg.ambient_context)
        return;
    if (action)
        snprintf(body, sizeof(body), "* %s %s", nick, rest);
    else
        snprintf(body, sizeof(body), "%s", rest);
    if (!body[0])
        return;
    memset(&ev, 0, sizeof(ev));
    ev.kind = EVENT_MESSAGE;
    ev.platform = "irc";
    ev.account = a->cfg.name;
    ev.room = room;
    ev.sender = sender;
    ev.sender_name = nick;
    ev.text = body;
    ev.addressed = addressed;
    ev.ambient = !addressed && !command && a->cfg.ambient_context;
    ev.from_bot = mask_list_match(a, a->cfg.bots, a->cfg.n_bots, origin);
    ev.is_admin = mask_list_match(a, a->cfg.admins, a->cfg.n_admins, origin);
    if (!ev.is_admin && c) {
        struct irc_member *m = member_find(a, c, nick);

        ev.is_admin = m && m->op;
    }
    if (a->base.router)
        router_submit(a->base.router, &ev);
}

static void ev_message(irc_session_t *s, const char *e, const char *origin,
                       const char **p, unsigned n)
{
    (void)e;
    if (n >= 2)
        handle_message(ad_of(s), origin, p[0], p[1], 0);
}

static void ev_action(irc_session_t *s, const char *e, const char *origin,
                      const char **p, unsigned n)
{
    (void)e;
    if (n >= 2)
        handle_message(ad_of(s), origin, p[0], p[1], 1);
}

static void ev_ctcp(irc_session_t *s, const char *e, const char *origin,
                    const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    char nick[IRC_NICK_MAX], reply[160], arg[64];
    char *v[1] = {reply};
    const char *req;

    (void)e;
    if (a->stopping || !origin || n < 1 ||
        irc_prefix_nick(origin, nick, sizeof(nick)) || !nick[0] ||
        irc_queue_len(a->queue) > IRC_CTCP_QUEUE_MAX)
        return;
    req = p[0];
    if (!strncasecmp(req, "VERSION", 7) && (!req[7] || req[7] == ' ')) {
        snprintf(reply, sizeof(reply), "\x01VERSION parley %s\x01",
                 PARLEY_VERSION);
    } else if (!strncasecmp(req, "PING", 4) && (!req[4] || req[4] == ' ')) {
        size_t i, w = 0;

        /* Echo the token, cleaned: it goes back out in a NOTICE. */
        for (i = 5; req[4] && req[i] && w + 1 < sizeof(arg) && i < 200; i++)
            if ((unsigned char)req[i] >= 0x20 && req[i] != 0x7f)
                arg[w++] = req[i];
        arg[w] = '\0';
        snprintf(reply, sizeof(reply), "\x01PING%s%s\x01", w ? " " : "",
                 arg);
    } else if (!strncasecmp(req, "TIME", 4) && (!req[4] || req[4] == ' ')) {
        char ts[64];
        time_t t = time(NULL);
        struct tm tm;

        gmtime_r(&t, &tm);
        strftime(ts, sizeof(ts), "%a, %d %b %Y %H:%M:%S +0000", &tm);
        snprintf(reply, sizeof(reply), "\x01TIME %s\x01", ts);
    } else if (!strncasecmp(req, "CLIENTINFO", 10)) {
        snprintf(reply, sizeof(reply),
                 "\x01" "CLIENTINFO ACTION CLIENTINFO PING TIME VERSION\x01");
    } else {
        return;
    }
    /* The line is built by hand because irc_split_text would (rightly)
     * remove the \x01 delimiters; everything inside was cleaned above. */
    {
        char asker[IRC_NICK_MAX];

        snprintf(asker, sizeof(asker), "%s", nick);
        irc_casefold(a->casemap, asker);
        /* Counted against the asker's share like an answer. */
        queue_lines(a, "NOTICE", nick, asker, v, 1, NULL);
    }
    flood_pump(a);
}

/* ---- adapter ops ------------------------------------------------------- */

/* Release the flood, reconnect and tick timers, and the quit timer too
 * when with_quit; safe from their callbacks, and again. */
static void irc_timers_free(struct irc_ad *a, int with_quit)
{
    loop_timer_free(a->flood_timer);
    loop_timer_free(a->reconnect_timer);
    loop_timer_free(a->tick_timer);
    a->flood_timer = a->reconnect_timer = a->tick_timer = NULL;
    if (with_quit) {
        loop_timer_free(a->quit_timer);
        a->quit_timer = NULL;
    }
}

static int irc_start(struct adapter *ad)
{
    struct irc_ad *a = ad->priv;

    a->stopping = 0;
    loop_timer_start(a->tick_timer, IRC_TICK_MS, IRC_TICK_MS);
    connect_attempt(a);
    return PARLEY_OK;
}

/*
 * The goodbye.  QUIT goes through libircclient, behind any answer lines
 * still in its output buffer, so they leave first; the poll keeps
 * flushing the buffer to the transport, which relays it upstream (through
 * TLS when configured).  The server answers QUIT with ERROR and closes,
 * which ends the session through connection_lost; IRC_QUIT_TIMEOUT_MS
 * bounds the wait when it does not.
 */
static void quit_try(struct irc_ad *a)
{
    uint64_t now = now_ms(a), left;
    const char *msg = a->cfg.quit_message ? a->cfg.quit_message
                                          : "parley shutting down";
    int rc;

    if (!a->quit_sent) {
        /* quit_message was checked at config time: one line, no control
         * bytes; it is passed through "%s", never as the format. */
        if (msg[0])
            rc = irc_send_raw(a->sess, "QUIT :%s", msg);
        else
            rc = irc_send_raw(a->sess, "QUIT");
        if (rc == 0) {
            a->quit_sent = 1;
            log_debug("irc %s: QUIT sent, waiting up to %d ms for the "
                      "server to close", a->cfg.name, IRC_QUIT_TIMEOUT_MS);
        } else if (irc_errno(a->sess) != LIBIRC_ERR_NOMEM) {
            log_warn("irc %s: cannot send QUIT: %s", a->cfg.name,
                     irc_strerror(irc_errno(a->sess)));
            quit_finish(a);
            return;
        }
        session_rearm(a);
    }
    left = now < a->quit_deadline ? a->quit_deadline - now : 0;
    if (!a->quit_sent && left > IRC_QUIT_RETRY_MS)
        left = IRC_QUIT_RETRY_MS;
    loop_timer_start(a->quit_timer, left, 0);
}

static void on_quit_timer(void *privdata)
{
    struct irc_ad *a = privdata;

    if (a->state != IRC_QUITTING)
        return;
    if (now_ms(a) < a->quit_deadline) {
        quit_try(a);
        return;
    }
    log_warn("irc %s: %s did not close the connection within %d ms of "
             "QUIT%s; closing it", a->cfg.name, a->cfg.host,
             IRC_QUIT_TIMEOUT_MS, a->quit_sent ? "" : " (QUIT not sent: "
             "the client's output buffer stayed full)");
    quit_finish(a);
}

/* End of a quit (server closed, timeout or error): close everything
 * that is left.  Runs once: it leaves IRC_QUITTING. */
static void quit_finish(struct irc_ad *a)
{
    if (a->state != IRC_QUITTING)
        return;
    session_teardown(a);
    a->state = IRC_STOPPED;
    loop_timer_free(a->quit_timer);
    a->quit_timer = NULL;
}

/*
 * adapter.h: stop may finish asynchronously.  The adapter itself is not
 * freed here: the quit timer, the poll and the transport's handles close
 * through the loop, which main runs until none is left, and only then
 * calls free.
 */
static void irc_stop(struct adapter *ad)
{
    struct irc_ad *a = ad->priv;

    if (a->stopping)
        return;
    a->stopping = 1;
    a->base.connected = 0;
    irc_timers_free(a, 0);
    /* Pending answers finish now, as failures, exactly once. */
    irc_queue_free(a->queue, job_drop);
    a->queue = NULL;
    if (a->state == IRC_REGISTERED) {
        a->state = IRC_QUITTING;
        a->quit_deadline = now_ms(a) + IRC_QUIT_TIMEOUT_MS;
        quit_try(a);
        return;
    }
    /* Not registered (connecting, or waiting to reconnect): there is no
     * one to say goodbye to. */
    session_teardown(a);
    a->state = IRC_STOPPED;
    irc_timers_free(a, 1);
}

static void irc_free(struct adapter *ad)
{
    struct irc_ad *a;
    size_t i;

    if (!ad)
        return;
    a = ad->priv;
    irc_timers_free(a, 1);      /* done by stop, unless never started */
    if (a->queue)
        irc_queue_free(a->queue, job_drop);
    if (a->sess)
        irc_destroy_session(a->sess);
    for (i = 0; i < a->n_chans; i++) {
        chan_clear_members(&a->chans[i]);
        if (a->chans[i].key) {
            explicit_bzero(a->chans[i].key, strlen(a->chans[i].key));
            free(a->chans[i].key);
        }
    }
    for (i = 0; i < IRC_MORE_SLOTS; i++)
        irc_lines_free(&a->more[i].lines);
    if (a->sasl_password) {
        explicit_bzero(a->sasl_password, strlen(a->sasl_password));
        free(a->sasl_password);
    }
    irc_config_free(&a->cfg);
    free(a);
}

static const struct adapter_ops irc_ops = {
    .type = "irc",
    .start = irc_start,
    .send = irc_send,
    .typing = irc_typing,
    .more = irc_more,
    .stop = irc_stop,
    .free = irc_free,
};

/* Read secrets named by the config.  Returns a parley status. */
static int read_secrets(struct irc_ad *a, char *err, size_t errlen)
{
    size_t i;
    int result;

    if (a->cfg.sasl_password_env) {
        result = config_secret_read(a->cfg.sasl_password_env,
                                    &a->sasl_password, err, errlen);
        if (result != PARLEY_OK)
            return result;
        if (!a->sasl_password) {
            snprintf(err, errlen, "irc %s: sasl_password_env: %s is not set",
                     a->cfg.name, a->cfg.sasl_password_env);
            return PARLEY_ERR_CONFIG;
        }
        /* Fail closed: a password the logger cannot redact is not used. */
        if (log_add_secret(a->sasl_password) != PARLEY_OK) {
            snprintf(err, errlen, "irc %s: cannot register the SASL "
                     "password for log redaction (more than %d secrets, "
                     "or out of memory)", a->cfg.name, LOG_SECRETS_MAX);
            return PARLEY_ERR_CONFIG;
        }
    }
    for (i = 0; i < a->n_chans; i++) {
        const struct irc_channel_conf *cc = &a->cfg.channels[i];

        if (!cc->key_env)
            continue;
        result = config_secret_read(cc->key_env, &a->chans[i].key, err,
                                    errlen);
        if (result != PARLEY_OK)
            return result;
        if (!a->chans[i].key) {
            snprintf(err, errlen, "irc %s: channel %s: key_env %s is not set",
                     a->cfg.name, cc->name, cc->key_env);
            return PARLEY_ERR_CONFIG;
        }
        if (strpbrk(a->chans[i].key, " ,\r\n")) {
            snprintf(err, errlen, "irc %s: channel %s: the key in %s holds "
                     "a space, comma or newline", a->cfg.name, cc->name,
                     cc->key_env);
            return PARLEY_ERR_CONFIG;
        }
        if (log_add_secret(a->chans[i].key) != PARLEY_OK) {
            snprintf(err, errlen, "irc %s: channel %s: cannot register the "
                     "key for log redaction (more than %d secrets, or out "
                     "of memory)", a->cfg.name, cc->name, LOG_SECRETS_MAX);
            return PARLEY_ERR_CONFIG;
        }
    }
    return PARLEY_OK;
}

int irc_adapter_create(struct adapter **out, const struct adapter_env *env,
                       void *setting, char *err, size_t errlen)
{
    struct irc_ad *a;
    irc_callbacks_t cb;
    size_t i;
    int result;

    *out = NULL;
    a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "irc adapter: out of memory");
        return PARLEY_ERR_OOM;
    }
    a->fd = -1;
    a->casemap = IRC_CASEMAP_RFC1459;
    snprintf(a->chantypes, sizeof(a->chantypes), "#&");
    snprintf(a->prefix_modes, sizeof(a->prefix_modes), "ov");
    snprintf(a->prefix_syms, sizeof(a->prefix_syms), "@+");
    snprintf(a->chanmodes[0], sizeof(a->chanmodes[0]), "beI");
    snprintf(a->chanmodes[1], sizeof(a->chanmodes[1]), "k");
    snprintf(a->chanmodes[2], sizeof(a->chanmodes[2]), "l");
    snprintf(a->chanmodes[3], sizeof(a->chanmodes[3]), "imnpst");
    result = irc_config_parse(&a->cfg, setting, err, errlen);
    if (result != PARLEY_OK)
        goto fail;
    if (a->cfg.tls && !a->cfg.tls_verify)
        log_warn("irc %s: tls_verify = false: the server's certificate is "
                 "NOT checked", a->cfg.name);
    for (i = 0; i < a->cfg.n_channels; i++) {
        struct irc_chan *c = chan_add(a, a->cfg.channels[i].name);

        if (!c) {
            snprintf(err, errlen, "irc %s: too many channels", a->cfg.name);
            result = PARLEY_ERR_CONFIG;
            goto fail;
        }
        c->configured = 1;
    }
    result = read_secrets(a, err, errlen);
    if (result != PARLEY_OK)
        goto fail;
    result = irc_queue_create(&a->queue, IRC_QUEUE_CAP, queue_asker_cap(a));
    if (result != PARLEY_OK) {
        snprintf(err, errlen, "irc adapter: out of memory");
        goto fail;
    }
    memset(&cb, 0, sizeof(cb));
    cb.event_connect = ev_connect;
    cb.event_nick = ev_nick;
    cb.event_quit = ev_quit;
    cb.event_join = ev_join;
    cb.event_part = ev_part;
    cb.event_mode = ev_mode;
    cb.event_kick = ev_kick;
    cb.event_channel = ev_message;
    cb.event_privmsg = ev_message;
    cb.event_invite = ev_invite;
    cb.event_ctcp_req = ev_ctcp;
    cb.event_ctcp_action = ev_action;
    cb.event_numeric = ev_numeric;
    cb.event_unknown = ev_unknown;
    a->sess = irc_create_session(&cb);
    if (!a->sess) {
        snprintf(err, errlen, "irc adapter: cannot create a libircclient "
                 "session");
        result = PARLEY_ERR_OOM;
        goto fail;
    }
    irc_set_ctx(a->sess, a);
    a->loop = env->loop;
    a->flood_timer = loop_timer_new(a->loop, on_flood_timer, a);
    a->reconnect_timer = loop_timer_new(a->loop, on_reconnect_timer, a);
    a->tick_timer = loop_timer_new(a->loop, on_tick, a);
    a->quit_timer = loop_timer_new(a->loop, on_quit_timer, a);
    if (!a->flood_timer || !a->reconnect_timer || !a->tick_timer ||
        !a->quit_timer) {
        snprintf(err, errlen, "irc adapter: cannot create timers");
        result = PARLEY_ERR_OOM;
        goto fail;
    }
    irc_bucket_init(&a->bucket, (unsigned)a->cfg.flood_burst,
                    (unsigned)a->cfg.flood_rate_ms, loop_now_ms(a->loop));
    a->base.ops = &irc_ops;
    a->base.loop = env->loop;
    a->base.priv = a;
    a->base.account = a->cfg.name;
    *out = &a->base;
    return PARLEY_OK;
fail:
    a->base.priv = a;
    irc_free(&a->base);
    return result;
}
