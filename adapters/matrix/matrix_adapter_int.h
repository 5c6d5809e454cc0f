/*
 * Private declarations shared by the Matrix adapter's files
 * (matrix_adapter.c, matrix_session.c, matrix_walk.c, matrix_send.c).
 * The adapter as a whole:
 *
 * The Matrix adapter: a client-server API client on parley's one loop.
 * Every request goes through loop_http_start (the shared curl multi
 * handle), timers are uv timers, and Redis holds what must survive a
 * restart: session:<account> (access token, device id) and sync:<account>
 * (next_batch).
 *
 * One control machine runs the account: load session -> whoami (or login)
 * -> display name -> upload filter -> load since -> /sync -> hand the
 * batch to the router -> store next_batch -> /sync ...  Exactly once
 * (DESIGN.md): each event of a batch goes through router_submit_durable
 * one after the other, and next_batch is written only after every one was
 * accepted with PARLEY_OK; if Redis fails, the walk waits and resumes at
 * the same event, and a crash replays the batch from the old token (the
 * router's seen:<id> drops what it already has).  An event refused for a
 * reason that cannot pass (matrix_poison.h) is skipped after a few tries
 * instead, so one bad event cannot stop the account.  Answers are sent with a
 * txnId derived from the router's txn id (itself from the event id) and
 * the same access token and device as before a restart, so the homeserver
 * drops a resend of an answer that already went out.
 *
 * Sends are a FIFO per room with up to MX_SEND_PARALLEL in flight; 429 waits
 * retry_after_ms or Retry-After, 5xx and network errors back off with
 * jitter, other 4xx give up (logged, done gets an error).  Every failure
 * path of the control machine backs off too: there is no tight loop.
 */
#ifndef PARLEY_MATRIX_ADAPTER_INT_H
#define PARLEY_MATRIX_ADAPTER_INT_H

#include <stddef.h>
#include <stdint.h>

#include "adapter.h"
#include "loop.h"
#include "matrix.h"
#include "matrix_poison.h"


/* Sends retried for 5xx and network errors before giving up (429s do
 * not count: the server told us exactly when to come back). */
#define MX_SEND_MAX_ATTEMPTS 12
/*
 * Answers in flight at once per room.  One at a time made a burst in a
 * busy room wait for each PUT in turn (0.1-0.2 s each on a loaded Synapse,
 * so seconds for 20 answers, against a fraction of that spread over 20
 * rooms); Synapse creates up to 5 events of a room at once and persists
 * what is queued in one batch.  Order is kept per person (adapter.h): a
 * send waits while an earlier one to the same person is queued or in
 * flight, and a send to nobody in particular (a room greeting) waits for
 * everything before it and holds back everything after it.
 */
#define MX_SEND_PARALLEL 4
/* Our recent event ids, to recognise replies to the bot. */
#define MX_RING 256
/* Rooms tracked (member counts, send queues). */
#define MX_ROOMS_MAX 10000
/* URLs: base + path + escaped ids (3 x 255) + since token. */
#define MX_URL_MAX 8192
/* Token and ids from the server. */
#define MX_TOKEN_MAX 1024
/* Extra time over the long-poll timeout before curl gives up. */
#define MX_SYNC_SLACK_MS 30000
/* Ordinary requests (login, send, ...). */
#define MX_REQUEST_TIMEOUT_MS 60000
/* While Redis is down, look again this often. */
#define MX_REDIS_POLL_MS 500
/* Sent instead of an answer the homeserver refuses as too large (413
 * M_TOO_LARGE): with the content bounded to MATRIX_CONTENT_MAX this takes
 * a server or proxy with a smaller limit than the spec's. */
#define MX_TOO_LARGE_TEXT "(The answer was too long for this server and " \
                          "could not be sent.)"
/* Typing notifications last this long unless renewed or cleared; they
 * are renewed this often while the model works (answers can take longer
 * than one notification lasts). */
#define MX_TYPING_TIMEOUT_MS 30000
#define MX_TYPING_RENEW_MS 20000

enum mx_state {
    MX_IDLE = 0,
    MX_LOAD_SESSION,
    MX_WHOAMI,
    MX_LOGIN,
    MX_SAVE_SESSION,
    MX_PROFILE,
    MX_FILTER,
    MX_CRYPTO,                      /* E2EE device keys (matrix_e2ee.c) */
    MX_LOAD_SINCE,
    MX_SYNC,
    MX_TO_DEVICE,                   /* room keys over Olm (matrix_e2ee) */
    MX_WALK,
    MX_MEMBERS,
    MX_SAVE_SINCE,
    MX_FATAL,
    MX_STOPPED
};

struct matrix;

struct mx_send {
    struct mx_send *next;
    struct mx_room *room;
    struct http_request *req;       /* this send in flight, or NULL */
    char *who;                      /* the person answered, or NULL */
    char *content;                  /* JSON body */
    char *enc_content;              /* content encrypted (E2EE rooms): the
                                       same ciphertext on every retry */
    char *too_large;                /* short notice sent instead if the
                                       server refuses content as too large;
                                       NULL once used */
    char txn[MATRIX_TXN_MAX];
    adapter_send_done_fn *done;
    void *privdata;
    int attempts;
    struct mx_stream *stream;       /* a streamed answer's event (first or
                                       edit, matrix_stream.c), or NULL; it
                                       outlives its sends */
    int first;                      /* the stream's first event: its id is
                                       reported back */
};

struct mx_room {
    struct mx_room *next;
    struct matrix *m;
    char *room_id;
    long members;                   /* joined members, -1 unknown */
    unsigned long members_batch;    /* batch whose count was fetched */
    struct matrix_members *names;   /* display names; NULL until needed */
    int names_loaded;               /* joined_members filled names once */
    int direct;                     /* invited as a DM */
    int encrypted_logged;
    int encrypted;                  /* 1 yes, 0 no, -1 not known yet */
    struct http_request *enc_req;   /* GET of m.room.encryption */
    int encrypting;                 /* matrix_e2ee_encrypt of the head */
    int enc_attempts;               /* its backoff exponent */
    int typing;                     /* typing on: renewed by a timer */
    struct mx_send *head, *tail;    /* queued and in flight, in order */
    int in_flight;                  /* sends with a request running */
    uint64_t retry_at;              /* loop_now_ms when sends may go on,
                                       0 */
};

/* A fire-and-forget request (typing, join, leave). */
struct mx_fetch;

struct mx_misc {
    struct mx_misc *next, *prev;
    struct matrix *m;
    struct http_request *req;
    char what[16];
    char room_id[MATRIX_ID_MAX + 1];
};

struct matrix {
    struct adapter ad;
    struct matrix_config mc;
    struct loop *loop;
    struct store *store;
    const struct config *cfg;
    struct loop_timer *ctl_timer;   /* control machine backoff */
    struct loop_timer *send_timer;  /* earliest room retry */
    struct loop_timer *typing_timer;    /* renews typing notifications */
    int timers_open;                /* from start until stop */

    enum mx_state state;
    int stopped;
    int attempt;                    /* control backoff exponent */

    char *password;                 /* wiped on free */
    char *env_token;
    char token[MX_TOKEN_MAX];
    char device_id[MX_TOKEN_MAX];
    int token_ok;                   /* whoami/login succeeded */
    int token_bad;                  /* a request saw M_UNKNOWN_TOKEN */
    char display_name[256];
    /* The bot's id as the homeserver spells it (whoami/login), used for
     * every own-event and mention check; the configured one until then.
     * Room keys and session:/sync: keys keep mc.account, which is known
     * before login and does not move with the server's spelling. */
    char user_id[MATRIX_ID_MAX + 1];
    char localpart[MATRIX_ID_MAX + 1];
    char filter_id[256];
    char *since;                    /* NULL before the first sync */
    int initial;                    /* this sync is the account's first */

    struct http_request *ctl_req;   /* the control request in flight */
    struct matrix_batch batch;
    size_t walk_i;
    int walk_rooms_done;            /* summaries of the batch applied */
    int walk_pending;               /* accepted() not yet called */
    int walk_async;                 /* the walk returned while pending */
    int walk_status;
    struct matrix_poison poison;    /* refusals of the event at walk_i */
    size_t walk_member_i;           /* next batch.members to apply */
    unsigned long batch_serial;     /* counts batches, for members_batch */
    struct matrix_batch dec;        /* the decrypted walk item, if any */
    size_t dec_i;                   /* walk_i + 1 it belongs to, 0 none */
    unsigned long dec_serial;       /* ... in this batch */

    struct matrix_e2ee *e2ee;       /* NULL: end-to-end encryption off */
    struct mx_utd *utd;             /* undecryptable events (made when
                                       first needed) */
    int e2ee_tried;                 /* MX_CRYPTO ran once this start */

    struct mx_room *rooms;
    size_t n_rooms;
    struct mx_fetch *fetches;       /* pictures downloading
                                       (matrix_media.c) */
    struct mx_misc *misc;

    char *mine[MX_RING];            /* event ids we sent */
    size_t mine_pos;
    char *joins[MX_RING];           /* member events given to the router */
    size_t joins_pos;
    char *asked[MX_RING];           /* messages that addressed the bot:
                                       a picture in their thread does */
    size_t asked_pos;

    struct mx_stream *streams;      /* answers being streamed */
};

/* matrix_adapter.c: helpers, misc requests, life cycle */
void mx_error(struct matrix *m, int fatal, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void mx_set_user_id(struct matrix *m, const char *id);
uint64_t mx_backoff(struct matrix *m, int attempt);
void mx_ring_add(char **ring, size_t *pos, const char *id);
int mx_ring_has(char *const *ring, const char *id);
struct mx_room *mx_room_get(struct matrix *m, const char *room_id,
                         int create);
int mx_http(struct matrix *m, const char *method, const char *path,
            const char *body, int auth, long timeout_ms,
            size_t max_body, http_done_fn *done, void *priv,
            struct http_request **out);
int mx_is_bad_token(const struct http_response *resp);
void mx_misc_start(struct matrix *m, const char *what,
                const char *room_id, const char *method,
                const char *path, const char *body);

/* matrix_session.c: the control machine */
void mx_on_ctl_timer(void *privdata);
void mx_ctl_later(struct matrix *m, uint64_t delay_ms);
void mx_ctl_retry(struct matrix *m, const char *what,
               const struct http_response *resp);
void mx_ctl_token_refused(struct matrix *m);
void mx_ctl_step(struct matrix *m);

/* matrix_walk.c: the batch walk */
void mx_walk(struct matrix *m);
/* The walk item at walk_i was handled by decryption (m->dec holds what
 * to submit, or nothing): go on with it. */
void mx_walk_decrypted_next(struct matrix *m);

/* matrix_e2ee_utd.c: events no key decrypted yet.  keep stores the
 * CIPHERTEXT item it (fire-and-forget key request) and then calls
 * mx_walk_decrypted_next, or pauses the sync when Redis failed; PARLEY_OK
 * when it took over.  prepare runs once per batch before its walk: 1
 * when a Redis read is in flight (it calls walk again), 0 to go on.
 * settled: event_id, walked again, was decrypted (or refused for good). */
struct mx_utd;
int mx_utd_keep(struct matrix *m, const struct matrix_item *it);
int mx_utd_prepare(struct matrix *m);
void mx_utd_settled(struct matrix *m, const char *event_id);
void mx_utd_free(struct matrix *m);

/* matrix_send.c: sending */
void mx_send_free(struct mx_send *s);
void mx_on_send_timer(void *privdata);
void mx_send_finish(struct mx_room *r, struct mx_send *s, int status);
int matrix_send(struct adapter *ad, const char *room,
                const struct reply *reply, adapter_send_done_fn *done,
                void *privdata);
/* The send op without streaming: reply as one m.room.message under the
 * txnId of reply->txn_id.  With stream set, the send is that stream's
 * (first: its first event, whose id goes back through
 * mx_stream_sent). */
int matrix_send_message(struct matrix *m, const char *room,
                        const struct reply *reply,
                        adapter_send_done_fn *done, void *privdata,
                        struct mx_stream *stream, int first);
/* Queue content (malloc'd JSON, taken over even on failure) for room_id
 * under the txnId made from seed, ordered with who's other sends. */
int mx_send_content(struct matrix *m, const char *room_id, char *content,
                    const char *seed, const char *who,
                    adapter_send_done_fn *done, void *privdata,
                    struct mx_stream *stream);

/* matrix_stream.c: answers shown while the model writes them */
int matrix_progress(struct adapter *ad, const char *room,
                    const struct reply *reply, const char *so_far);
int mx_stream_send(struct matrix *m, const char *room,
                   const struct reply *reply, adapter_send_done_fn *done,
                   void *privdata);
/* From send_done: the stream's first event has id event_id. */
void mx_stream_sent(struct mx_stream *st, const char *event_id);
/* From send_done: a send of the stream was rate limited for ms. */
void mx_stream_limited(struct mx_stream *st, long ms);
void mx_streams_stop(struct matrix *m);
void mx_streams_free(struct matrix *m);

#endif
