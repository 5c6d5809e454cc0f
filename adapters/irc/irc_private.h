/*
 * Internal interface of the IRC adapter, shared by its four files and
 * by nothing else: the bounds, the per-network struct irc_ad with its
 * channels, members, query tokens and "!more" remainders, and the
 * functions one file calls in another.
 *
 *   irc_adapter.c  the session on the uv loop: connect, reconnect, tick,
 *                  the QUIT on stop, the adapter ops and create
 *   irc_members.c  channels, members, services accounts, query tokens,
 *                  where a room's answer goes ("Who is who")
 *   irc_events.c   libircclient's callbacks: ISUPPORT, NAMES/WHOX,
 *                  joins, parts, modes, nicks; messages to the router
 *   irc_send.c     answers to PRIVMSG lines, the flood queue, "!more"
 */
#ifndef PARLEY_IRC_PRIVATE_H
#define PARLEY_IRC_PRIVATE_H

#include <stddef.h>
#include <stdint.h>

#include <libircclient.h>

#include "adapter.h"
#include "irc_config.h"
#include "irc_flood.h"
#include "irc_format.h"
#include "irc_text.h"
#include "irc_transport.h"
#include "loop.h"


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

/* Answers streamed at once (adapter.h "stream"), one per room and
 * person; past this an answer is sent whole at the end. */
#define IRC_STREAM_SLOTS 64

/* An answer being streamed line by line (irc_send.c): room and person as
 * in struct irc_more; target "" for a free slot. */
struct irc_stream {
    char target[IRC_CHANNEL_MAX + 1];
    char asker[IRC_NICK_MAX];
    size_t raw_off;             /* model text sent: up to a newline */
    size_t lines;               /* lines queued from it */
    size_t pending;             /* streamed units still in the queue */
    int full;                   /* max_lines reached: the rest waits for
                                   the final send and "!more" */
    int closed;                 /* the final send came: free the slot
                                   once pending is 0 */
    adapter_send_done_fn *done; /* the final's, waiting for pending */
    void *privdata;
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
    int in_lib;                 /* inside irc_process_select_descriptors */
    int write_failed;           /* session_flush met a write error: on_poll
                                   handles it */
    int pump_on_write;          /* flood_pump found the library's buffer
                                   full: run it after the next write */

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
    struct irc_stream streams[IRC_STREAM_SLOTS];
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

/* loop_now_ms of the adapter's loop. */
static inline uint64_t now_ms(struct irc_ad *a)
{
    return loop_now_ms(a->loop);
}

/* irc_members.c: channels, members, accounts, query tokens. */
struct irc_chan *chan_find(struct irc_ad *a, const char *name);
struct irc_chan *chan_add(struct irc_ad *a, const char *name);
void chan_clear_members(struct irc_chan *c);
struct irc_member *member_find(struct irc_ad *a, struct irc_chan *c,
                               const char *nick);
struct irc_member *member_add(struct irc_ad *a, struct irc_chan *c,
                              const char *nick);
void member_remove(struct irc_ad *a, struct irc_chan *c,
                   const char *nick);
const char *account_of(struct irc_ad *a, const char *nick);
int member_anywhere(struct irc_ad *a, const char *nick);
const char *nick_of_account(struct irc_ad *a, const char *account);
void account_set(struct irc_ad *a, const char *nick,
                 const char *account);
void query_forget(struct irc_ad *a, const char *nick);
const char *query_token(struct irc_ad *a, const char *nick);
int room_target(struct irc_ad *a, const char *room, char *out,
                size_t outlen);
int sym_is_op(struct irc_ad *a, char sym);
int mode_is_op(struct irc_ad *a, char mode);

/* irc_send.c: the send queue, "!more", the send/more/typing ops. */
void irc_job_drop(void *tag);
void on_flood_timer(void *privdata);
void flood_pump(struct irc_ad *a);
size_t queue_asker_cap(const struct irc_ad *a);
int queue_lines(struct irc_ad *a, const char *cmd, const char *target,
                const char *asker, char *const *lines, size_t n,
                void *tag);
int irc_send(struct adapter *ad, const char *room,
             const struct reply *reply, adapter_send_done_fn *done,
             void *privdata);
int irc_more(struct adapter *ad, const char *room, const char *sender);
int irc_progress(struct adapter *ad, const char *room,
                 const struct reply *reply, const char *so_far);
void irc_typing(struct adapter *ad, const char *room, int on);

/* irc_events.c: libircclient's callbacks. */
void ev_connect(irc_session_t *s, const char *e, const char *origin,
                const char **p, unsigned n);
void ev_numeric(irc_session_t *s, unsigned code, const char *origin,
                const char **p, unsigned n);
void ev_nick(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n);
void ev_unknown(irc_session_t *s, const char *e, const char *origin,
                const char **p, unsigned n);
void ev_join(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n);
void ev_part(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n);
void ev_quit(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n);
void ev_kick(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n);
void ev_mode(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n);
void ev_invite(irc_session_t *s, const char *e, const char *origin,
               const char **p, unsigned n);
void ev_message(irc_session_t *s, const char *e, const char *origin,
                const char **p, unsigned n);
void ev_action(irc_session_t *s, const char *e, const char *origin,
               const char **p, unsigned n);
void ev_ctcp(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n);

/* irc_adapter.c: the session on the loop. */
void session_rearm(struct irc_ad *a);
int session_flush(struct irc_ad *a);
void join_channel(struct irc_ad *a, struct irc_chan *c);

#endif
