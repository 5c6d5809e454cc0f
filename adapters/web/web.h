/*
 * The web chat adapter: the browser version of the console, served by
 * libmicrohttpd inside the process.  Each browser is its own room (a
 * random session id in an HttpOnly SameSite=Strict cookie); the page
 * loads the room's history, sends messages and commands (!reset,
 * !model) as the console would, and hears typing, progress and answers
 * over server-sent events.  See README.md in this folder.
 *
 * Files:
 *   web.h          what the files share (this)
 *   web_config.c   the config block: keys, checks, defaults
 *   web_adapter.c  adapter ops, sessions and their event queues
 *   web_http.c     libmicrohttpd driven from the loop: responses, checks,
 *                  dispatch
 *   web_api.c      the routes /api/history, /api/events, the POSTs
 *   web_http_private.h  what web_http.c and web_api.c share
 *   web_assets.c   the page, its script and styles, as string literals
 *
 * Threads: none.  The daemon has no thread of its own: its epoll fd is
 * watched by the loop (loop_watch) and MHD_run is called from the loop, so
 * every request handler runs on the loop thread like the rest of parley.
 */
#ifndef PARLEY_WEB_H
#define PARLEY_WEB_H

#include <stddef.h>
#include <stdint.h>

#include "adapter.h"

struct dict;
struct loop;
struct loop_timer;
struct loop_watch;
struct store;
struct MHD_Daemon;
struct MHD_Connection;

/* A session id is 32 random bytes, hex in the cookie. */
#define WEB_SID_BYTES 32
#define WEB_SID_HEX (WEB_SID_BYTES * 2)
/* The room (and sender) of a session: "b" and the first 24 hex digits of
 * SHA-256(session id), so that logs and Redis keys never hold the
 * cookie itself. */
#define WEB_ROOM_LEN 25
/* Largest request body (a message is at most ROUTER_TEXT_MAX bytes; JSON
 * escaping may double it). */
#define WEB_BODY_MAX (40 * 1024)
/* Header bytes per connection (MHD answers 431 beyond). */
#define WEB_CONN_MEMORY 32768
/* Sessions kept in memory; the idlest without a stream goes first. */
#define WEB_SESSIONS_MAX 1024
/* Events waiting for a browser, per session, in bytes (with
 * WEB_SESSIONS_MAX, at most 256 MiB in all). */
#define WEB_QUEUE_MAX (256 * 1024)
/* At most one progress event per session this often. */
#define WEB_PROGRESS_MS 150
/* A comment on every open stream this often, so that dead ones are
 * noticed and proxies keep them open. */
#define WEB_PING_MS 15000
/* A session without a stream is forgotten after this long. */
#define WEB_SESSION_IDLE_MS (60 * 60 * 1000)
#define WEB_CONNECTIONS_DEFAULT 64
#define WEB_PER_IP_DEFAULT 16
#define WEB_CONNECTIONS_LIMIT 10000
#define WEB_TIMEOUT_S 60
#define WEB_ORIGIN_MAX 256

struct web_config {
    char *name;             /* account in room keys, default "web" */
    char *listen;           /* "127.0.0.1:8080" */
    char *origin;           /* public origin behind a proxy, or NULL */
    char *token_env;        /* env var holding the access token, or NULL */
    char *user_name;        /* how the model hears the person, "User" */
    int max_connections;
    int max_per_ip;
};

/* web_config.c */
int web_config_parse(struct web_config *wc, const void *setting, char *err,
                     size_t errlen);
void web_config_free(struct web_config *wc);
extern const char *const web_config_keys[];

/* One event waiting for the browser, already in SSE form. */
struct web_event {
    struct web_event *next;
    size_t len;
    char data[];
};

struct web_stream;
struct web_req;
struct event_attachment;

struct web_session {
    char room[WEB_ROOM_LEN + 1];
    struct web_stream *stream;  /* the open event stream, or NULL */
    struct web_event *head, *tail;
    size_t queued;              /* bytes in the queue */
    uint64_t last_seen;         /* loop ms */
    /* The latest progress not yet sent (WEB_PROGRESS_MS). */
    char *progress_id;
    char *progress_text;
    int progress_dirty;
    uint64_t progress_at;       /* when the last one went out */
};

/* An open event stream (GET /api/events). */
struct web_stream {
    struct web *w;
    struct web_session *s;      /* NULL once replaced or forgotten */
    struct MHD_Connection *conn;
    size_t off;                 /* bytes of s->head already written */
    int suspended;
    /* While suspended MHD does not look at the socket, so a browser
     * that went away would be noticed only at the next ping: the loop
     * watches it meanwhile, and a close ends the stream at once. */
    struct loop_watch *hup;
    int peer_gone;
};

struct web {
    struct adapter ad;
    struct web_config cfg;
    const struct config *gcfg;
    struct store *store;
    struct loop *loop;
    uint8_t token_sha[32];
    int has_token;

    struct MHD_Daemon *daemon;
    struct loop_watch *watch;   /* the daemon's epoll fd */
    struct loop_timer *mhd_timer;       /* MHD_get_timeout, or "run soon" */
    struct loop_timer *progress_timer;  /* flushes held-back progress */
    struct loop_timer *ping_timer;      /* pings, idle sessions */
    int running;
    int stopped;
    int port;
    struct web_req *waiting;    /* requests waiting on Redis */
    struct dict *sessions;      /* room -> struct web_session * */
    size_t n_sessions;
    unsigned long long n_events;
};

/* web_adapter.c */
/* The session for room (created when absent; NULL on OOM). */
struct web_session *web_session_get(struct web *w, const char *room);
/* The room of a session id (hex). */
void web_sid_room(const char *sid, char *room, size_t len);
/* Append an SSE event ("event: NAME\ndata: JSON\n\n"); wakes the stream. */
int web_session_push(struct web *w, struct web_session *s, const char *name,
                     const char *json);
/* Give s a new stream (the old one ends). */
void web_session_attach(struct web *w, struct web_session *s,
                        struct web_stream *st);
void web_session_detach(struct web_stream *st);
/* Hand a message from the browser to the router, with a picture when
 * att is not NULL (copied by the router). */
int web_submit(struct web *w, const char *room, const char *text,
               const struct event_attachment *att, char *event_id,
               size_t idlen);
/* Markdown from the model -> sanitized HTML (matrix_html), or NULL. */
char *web_render(const char *markdown);

/* web_http.c */
int web_http_start(struct web *w, char *err, size_t errlen);
/* MHD_run soon, from the loop (never inside an MHD callback). */
void web_http_kick(struct web *w);
void web_http_stop(struct web *w);

/* web_api.c */
/* Let a suspended stream write (its session has something). */
void web_stream_wake(struct web_stream *st);

/* web_assets.c */
struct web_asset {
    const char *path;
    const char *type;
    const char *body;
};
extern const struct web_asset web_assets[];
extern const char web_login_page[];

#endif
