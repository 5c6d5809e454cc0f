/*
 * Internal interface of the Matrix adapter, shared by its files and by the
 * unit tests.  Everything here except the client itself (matrix_adapter.c,
 * matrix_session.c, matrix_walk.c, matrix_send.c) is pure: it turns bytes
 * into structs and structs into bytes with no network, loop or Redis, so
 * the tests and fuzzers can feed it hostile input directly (hiredis
 * test.c style).
 *
 *   matrix_sync.c     /sync response -> struct matrix_batch
 *   matrix_text.c     reply fallbacks, mentions, @room, UTF-8, URL, txnId,
 *                     the access token's log redaction
 *   matrix_html.c     Markdown -> sanitized HTML, outgoing event content,
 *                     login and filter request bodies
 *   matrix_config.c   the adapter's block of bot.conf
 *   matrix_members.c  per-room display names, disambiguated (spec)
 *   matrix_adapter.c  the client on the loop: start, stop, typing, helpers
 *   matrix_session.c  its control machine: login, whoami, filter, /sync
 *   matrix_walk.c     its batch walk into the router, /joined_members
 *   matrix_send.c     its per-room send queues, retries, 413 notice
 *   matrix_stream.c   its streamed answers: first sentence, edits
 */
#ifndef PARLEY_MATRIX_H
#define PARLEY_MATRIX_H

#include <stddef.h>

/* The spec limits user, room and event ids to 255 bytes. */
#define MATRIX_ID_MAX 255
/* Largest /sync response accepted: a busy account after a long outage can
 * be big, but anything past this is a broken or hostile server. */
#define MATRIX_SYNC_BODY_MAX (8 * 1024 * 1024)
/* Items kept from one /sync batch; the rest of a hostile batch is dropped
 * with a warning rather than allocating without bound. */
#define MATRIX_SYNC_ITEMS_MAX 4096
/* Longest message body taken from a /sync event (the router cuts the text
 * it gives the model further). */
#define MATRIX_BODY_MAX (64 * 1024)
/* Room ids remembered per batch with their joined member count. */
#define MATRIX_SYNC_ROOMS_MAX 4096
/* The spec's limit on a whole event, content and envelope together, as
 * canonical JSON (client-server API, "Size limits"); a server answers
 * 413 M_TOO_LARGE past it. */
#define MATRIX_EVENT_MAX 65536
/* What the server adds around our content: room id, sender, type,
 * timestamps, up to 20 prev/auth event ids, hashes, signatures and
 * unsigned data come to well under this. */
#define MATRIX_ENVELOPE_MAX 4096
/* Largest content JSON we send (matrix_content_build keeps to it). */
#define MATRIX_CONTENT_MAX (MATRIX_EVENT_MAX - MATRIX_ENVELOPE_MAX)
/* Membership changes kept from one /sync batch (state and timeline
 * m.room.member events); lazy loading keeps this small in practice. */
#define MATRIX_SYNC_MEMBERS_MAX 16384
/* Members whose names one room remembers; past this, newcomers are
 * shown by their localpart. */
#define MATRIX_ROOM_MEMBERS_MAX 10000
/* Longest display name kept (bytes, cut on a character boundary). */
#define MATRIX_NAME_MAX 256
/* Our txnIds: "parley-" + 32 hex digits + NUL. */
#define MATRIX_TXN_MAX 48

/* Who the bot is, for deciding whether a message addresses it. */
struct matrix_ident {
    const char *user_id;        /* "@parley:example.org" */
    const char *localpart;      /* "parley" */
    const char *display_name;   /* may be NULL */
};

enum matrix_item_kind {
    MATRIX_ITEM_MESSAGE = 0,    /* m.room.message m.text / m.emote /
                                   m.image (media_ref set) */
    MATRIX_ITEM_JOIN,           /* someone else joined a joined room */
    MATRIX_ITEM_INVITE,         /* the bot was invited (rooms.invite) */
    MATRIX_ITEM_ENCRYPTED,      /* the room is encrypted (m.room.encryption
                                   or m.room.encrypted), once per room */
    MATRIX_ITEM_CIPHERTEXT      /* one m.room.encrypted timeline event:
                                   cipher holds its content, to decrypt
                                   and pass to matrix_sync_decrypted */
};

/*
 * One thing from a /sync batch the adapter may act on.  All strings are
 * owned by the batch (freed by matrix_batch_free); optional ones are NULL.
 */
struct matrix_item {
    enum matrix_item_kind kind;
    char *room_id;
    char *event_id;             /* NULL for invites */
    char *sender;               /* author; inviter; member who joined */
    char *sender_name;          /* display name when the batch had it */
    char *text;                 /* messages: body, reply fallback removed,
                                   valid UTF-8 */
    char *thread_id;            /* m.thread root */
    char *reply_to;             /* m.in_reply_to, not a thread fallback */
    int mentioned;              /* m.mentions has the bot, or (without
                                   m.mentions) body/pill names it */
    int reply_names_bot;        /* the reply fallback quotes the bot */
    int is_direct;              /* invites: the inviter marked it a DM */
    int emote;                  /* msgtype m.emote */
    char *cipher;               /* CIPHERTEXT: the content as JSON */
    char *media_ref;            /* m.image: reference for ops->fetch
                                   (matrix_media.h), else NULL */
    char *media_name;           /* m.image: file name, or NULL */
    char *media_mime;           /* m.image: declared type, or NULL */
    long long media_size;       /* m.image: declared size, 0 unknown */
};

/* An encrypted to-device event (sender and content JSON), for the E2EE
 * client: Olm messages carrying room keys. */
struct matrix_to_device {
    char *type;
    char *sender;
    char *content;
};
/* To-device events kept from one sync; the server holds the rest until
 * the next one (it sends at most 100 per sync by default). */
#define MATRIX_TO_DEVICE_MAX 1000
/* Users kept from one sync's device_lists; past this every tracked list
 * is marked stale (matrix_batch dl_all). */
#define MATRIX_DEVICE_LISTS_MAX 1000

/* A joined room's member count from its summary (-1 = not sent). */
struct matrix_room_info {
    char *room_id;
    long joined_members;
};

/*
 * One m.room.member event of a joined room (its state section or its
 * timeline), for the adapter's per-room name table.  at is the number of
 * items produced before it, so the adapter applies it before the item at
 * that index: a message sees the names as they were when it was sent.
 */
struct matrix_member {
    char *room_id;
    char *user_id;
    char *displayname;          /* NULL when none (or not a string) */
    int present;                /* membership join or invite */
    size_t at;
};

struct matrix_batch {
    char *next_batch;           /* never NULL after a successful parse */
    struct matrix_item *items;
    size_t n_items;
    size_t cap_items;
    struct matrix_room_info *rooms;
    size_t n_rooms;
    size_t cap_rooms;
    struct matrix_member *members;
    size_t n_members;
    size_t cap_members;
    size_t n_limited;           /* rooms whose timeline had a gap */
    size_t n_dropped;           /* items over MATRIX_SYNC_ITEMS_MAX, and
                                   members over MATRIX_SYNC_MEMBERS_MAX */
    size_t n_skipped;           /* events ignored (edits, notices, ...) */
    long otk_count;             /* device_one_time_keys_count
                                   .signed_curve25519 (absent from the
                                   object: 0), -1 when no object */
    int fallback_unused;        /* device_unused_fallback_key_types lists
                                   signed_curve25519: 1, not: 0, absent: -1 */
    struct matrix_to_device *to_device;     /* m.room.encrypted only */
    size_t n_to_device;
    size_t n_to_device_dropped;             /* over MATRIX_TO_DEVICE_MAX */
    char **dl_stale;            /* device_lists.changed and .left: users
                                   whose device lists must be fetched
                                   again before the next key share */
    size_t n_dl_stale;
    int dl_all;                 /* more than MATRIX_DEVICE_LISTS_MAX */
};

/*
 * Parse a /sync response.  me says who the bot is (its own messages are
 * skipped, mentions are resolved).  Returns PARLEY_OK, PARLEY_ERR_PROTOCOL
 * (not JSON, no next_batch: err says what), PARLEY_ERR_TOO_LARGE or
 * PARLEY_ERR_OOM.  Malformed single events are skipped, never fatal.
 * out is zeroed first; free it with matrix_batch_free in every case.
 */
int matrix_sync_parse(const char *json, size_t len,
                      const struct matrix_ident *me,
                      struct matrix_batch *out, char *err, size_t errlen);
void matrix_batch_free(struct matrix_batch *b);

/*
 * A decrypted timeline event: cipher is the CIPHERTEXT item it came from
 * (room, event id, sender, name), event the checked plaintext
 * ({type, content, room_id}, matrix_megolm_plaintext_check).  When it is
 * an m.room.message the bot handles, one MESSAGE item is appended to out
 * exactly as for a plain event (mentions, replies, threads, own events
 * skipped); anything else counts in out->n_skipped.  Returns PARLEY_OK or
 * PARLEY_ERR_OOM.
 */
struct cJSON;
int matrix_sync_decrypted(const struct matrix_item *cipher,
                          const struct cJSON *event,
                          const struct matrix_ident *me,
                          struct matrix_batch *out);

/*
 * Append a CIPHERTEXT item (strings copied; sender_name may be NULL) to
 * b: an event kept undecrypted by an earlier sync, walked again now that
 * its key may have come.  PARLEY_OK, PARLEY_ERR_TOO_LARGE past
 * MATRIX_SYNC_ITEMS_MAX, or PARLEY_ERR_OOM.
 */
int matrix_batch_add_cipher(struct matrix_batch *b, const char *room_id,
                            const char *event_id, const char *sender,
                            const char *sender_name, const char *cipher);

/* --- matrix_text.c --------------------------------------------------- */

/*
 * Remove a rich-reply fallback from a plain body: leading lines starting
 * with '>' followed by one empty line.  Returns a pointer into body where
 * the real text starts (body itself when there is no well-formed
 * fallback).  If quoted is not NULL, the user id quoted on the first line
 * ("> <@u:s> ...") is copied there ("" when none).
 */
const char *matrix_strip_body_fallback(const char *body, char *quoted,
                                       size_t quotedlen);

/* Remove every <mx-reply>...</mx-reply> block from formatted_body, in
 * place (case-insensitive tags).  An unterminated block is cut to the
 * end. */
void matrix_strip_html_fallback(char *html);

/* Whether text (plain or HTML) names the bot: its user id, its localpart
 * or display name as a whole word (ASCII case-insensitive), or a
 * matrix.to pill link to it.  NULL text is 0. */
int matrix_text_mentions(const char *text, const struct matrix_ident *me);

/*
 * Where the words after a leading address to the bot start, so that the
 * model and the history see "hello", not "parley: hello".  An address is
 * the bot's user id, "@" + localpart or display name, the text of a pill
 * (pill_text: the link text of a matrix.to link to the bot that opens the
 * formatted body, or NULL), or the localpart or display name followed by
 * ':' or ',' (a bare "Parley is nice" is not an address).  Matching is
 * ASCII case-insensitive.  Returns text itself when it does not start
 * with an address or nothing follows it.
 */
const char *matrix_strip_address(const char *text,
                                 const struct matrix_ident *me,
                                 const char *pill_text);

/*
 * The link text of a pill to the bot at the very start of an HTML body
 * (after white space): <a href="https://matrix.to/#/@bot:server">Text</a>.
 * Copied into out (entities &amp; &lt; &gt; &quot; &#39; decoded);
 * PARLEY_OK, or PARLEY_ERR_PROTOCOL when the body does not start with
 * one (out is then "").
 */
int matrix_leading_pill(const char *html, const struct matrix_ident *me,
                        char *out, size_t outlen);

/*
 * Copy text into a new string that is valid UTF-8 (invalid bytes become
 * U+FFFD), at most max bytes (cut on a character boundary).  Returns NULL
 * on allocation failure.  Caller frees.
 */
char *matrix_utf8_clean(const char *text, size_t len, size_t max);

/*
 * New string with every "@room" (ASCII case-insensitive) turned into
 * "@" U+2060 "room".  Why: servers without intentional mentions (Synapse
 * 1.66 among them) still apply the legacy .m.rule.roomnotif push rule,
 * which matches the word "@room" in the body and pings the whole room if
 * the bot has the power level; WORD JOINER is invisible, does not change
 * how the text reads, and breaks the match.  Caller frees; NULL on OOM.
 */
char *matrix_neutralise_room_ping(const char *text);

/* Percent-encode everything but RFC 3986 unreserved characters, for a
 * path segment or query value.  PARLEY_ERR_TOO_LARGE when cut. */
int matrix_url_escape(const char *in, char *out, size_t outlen);

/* Stable, URL-safe txnId from a seed (the triggering event id or the
 * router's txn id): "parley-" + 32 hex digits of SHA-256(seed). */
int matrix_txn_id(const char *seed, char *out, size_t outlen);

/*
 * Split a router room ("!r:s" or, with thread_context, "!r:s/$root") into
 * the room id (copied into room_id) and *thread (pointer into room, or
 * NULL).  PARLEY_ERR_PROTOCOL for a room not starting with '!',
 * PARLEY_ERR_TOO_LARGE when it does not fit.
 */
int matrix_room_split(const char *room, char *room_id, size_t len,
                      const char **thread);

/*
 * Replace the access token held in token (capacity len, "" for none) by
 * new_token ("" or NULL to clear).  The new token is registered for log
 * redaction first; the old one is unregistered (log_remove_secret) unless
 * it equals keep, the token from the environment, which stays registered.
 * Fails closed: PARLEY_ERR_TOO_LARGE (token too long, or the logger's
 * table full) or PARLEY_ERR_OOM leave token wiped, and the caller must not
 * use new_token.
 */
int matrix_token_set(char *token, size_t len, const char *new_token,
                     const char *keep);

/* Whether user (an "@u:server" id) matches an allowlist entry: the exact
 * user id, or ":server" for everyone on that server. */
int matrix_allow_match(const char *user, const char *const *allow,
                       size_t n_allow);

/* --- matrix_html.c --------------------------------------------------- */

/*
 * Filter HTML to the tags and attributes the Matrix spec allows in
 * org.matrix.custom.html: unknown tags and comments are dropped (their
 * text kept), attributes outside the per-tag list are dropped, links only
 * keep http, https, ftp, mailto and magnet hrefs, images only mxc:// ones,
 * and a stray '<' becomes "&lt;".  Returns a new string or NULL on OOM.
 */
char *matrix_html_sanitize(const char *html, size_t len);

/*
 * New string: html with a WORD JOINER after every '@' that a reader sees
 * followed by "room", however it is spelled: literally, through
 * character references (&#64; &#x40; &commat;, with or without ';', for
 * any of the five letters) or with tags in between ("@<em>room</em>").
 * Attribute values are left alone (a tag is skipped whole).  Caller
 * frees; NULL on OOM.
 */
char *matrix_html_neutralise_room_ping(const char *html);

/* Markdown (the model's text) -> sanitized HTML via cmark in safe mode
 * (unsafe links removed), "@room" defused in what the reader sees (see
 * matrix_html_neutralise_room_ping); raw HTML in the text is shown as
 * escaped text, not dropped.  NULL on OOM. */
char *matrix_markdown_to_html(const char *markdown, size_t len);

/* What one outgoing answer holds; all borrowed. */
struct matrix_out {
    const char *text;           /* model text, Markdown */
    const char *mention;        /* asker's user id or NULL */
    const char *in_reply_to;    /* event answered or NULL */
    const char *thread_id;      /* thread root or NULL */
    int notice;                 /* m.notice instead of m.text */
};

/*
 * The JSON content of an m.room.message: body (plain, @room neutralised,
 * valid UTF-8), format + formatted_body (sanitized HTML), m.mentions with
 * the asker only (never "room"), and m.relates_to (m.in_reply_to, or an
 * m.thread relation with is_falling_back and m.in_reply_to).  The whole
 * JSON is at most MATRIX_CONTENT_MAX bytes: past it formatted_body is
 * dropped, then the body is cut on a character boundary with a note
 * saying so.  *out is malloc'd (caller frees).  PARLEY_OK,
 * PARLEY_ERR_OOM, or PARLEY_ERR_TOO_LARGE when even the cut body does
 * not fit (ids far over the spec's size).
 */
int matrix_content_build(const struct matrix_out *o, char **out);

/*
 * matrix_stream.c: the content of an m.replace edit of event target to
 * o's text: "* " fallback body (and formatted_body), m.new_content as
 * matrix_content_build makes it with o's mention and without relations,
 * an empty top-level m.mentions (nobody is pinged by an edit), and the
 * m.relates_to.  At most MATRIX_CONTENT_MAX bytes: the fallback's HTML,
 * then the fallback body, then the new HTML, then the new body are cut.
 * *out malloc'd; PARLEY_OK, _OOM or _TOO_LARGE.
 */
int matrix_edit_content_build(const struct matrix_out *o, const char *target,
                              char **out);

/* {"type":"m.login.password","identifier":{"type":"m.id.user",...}}.
 * device_id may be NULL (the server picks one).  *out must be wiped
 * (explicit_bzero) and freed by the caller: it holds the password. */
int matrix_login_body(const char *user, const char *password,
                      const char *device_id, const char *device_name,
                      char **out);

/* The sync filter: lazy-loaded members, only the event types used. */
int matrix_filter_body(int timeline_limit, char **out);

/*
 * Parse a login or whoami answer: user_id, device_id and (login only)
 * access_token, each copied into its buffer when the buffer is not NULL.
 * PARLEY_ERR_PROTOCOL if a requested field is missing or too long.
 */
int matrix_parse_session(const char *json, size_t len, char *user_id,
                         size_t ulen, char *device_id, size_t dlen,
                         char *token, size_t tlen);

/* errcode and retry_after_ms from a Matrix error body; errcode "" and
 * -1 when absent.  Never fails. */
void matrix_parse_error(const char *json, size_t len, char *errcode,
                        size_t elen, long *retry_after_ms);

/* --- matrix_members.c ------------------------------------------------ */

/*
 * The display names of one room, as the spec's "Calculating the display
 * name for a user" computes them: a member's displayname when it is
 * unique among the members with membership join or invite, else
 * "name (@user:server)"; a member with no displayname (or one parley has
 * not seen: lazy loading sends a member's event only with their first
 * message) is shown by the localpart of the user id.
 */
struct matrix_members;

/* NULL on allocation failure. */
struct matrix_members *matrix_members_new(void);
void matrix_members_free(struct matrix_members *mm);

/*
 * Record one m.room.member event: present (join or invite) with
 * displayname (NULL or "" for none; control characters become spaces,
 * cut at MATRIX_NAME_MAX), or gone (leave, ban).  PARLEY_OK, _OOM, or
 * _TOO_LARGE when the room already holds MATRIX_ROOM_MEMBERS_MAX members
 * (nothing recorded).
 */
int matrix_members_update(struct matrix_members *mm, const char *user_id,
                          const char *displayname, int present);

/* Members recorded as present. */
size_t matrix_members_count(const struct matrix_members *mm);
/* Whether user_id is recorded as present (mm may be NULL: no). */
int matrix_members_has(const struct matrix_members *mm, const char *user_id);

/*
 * The name the model sees for user_id, into out (cut on a character
 * boundary).  mm may be NULL (localpart).  PARLEY_OK, or
 * PARLEY_ERR_PROTOCOL for a user id that is not "@local:server".
 */
int matrix_members_name(const struct matrix_members *mm,
                        const char *user_id, char *out, size_t outlen);

/* --- matrix_config.c ------------------------------------------------- */

struct matrix_config {
    char *homeserver;           /* base URL without trailing slash */
    char *user_id;              /* "@parley:example.org" */
    char *account;              /* room-key account name, default user_id */
    char *password_env;         /* NULL when unset */
    char *access_token_env;     /* NULL when unset */
    char *device_name;          /* default "parley" */
    char *crypto_key_env;       /* pickle key for E2EE; NULL: E2EE off */
    char **allow;               /* allow_invites_from */
    size_t n_allow;
    int reject_other_invites;   /* default 0: ignore */
    int thread_context;         /* default 0: context per room */
    int leave_empty_rooms;      /* leave when the bot is alone, default 0 */
    int sync_timeout_ms;        /* long-poll timeout, default 30000 */
    int backoff_base_ms;        /* first retry delay, default 1000 */
    int backoff_max_ms;         /* retry delay cap, default 60000 */
    int timeline_limit;         /* filter timeline limit, default 100 */
    int utd_timeout_ms;         /* wait for a missing room key before
                                   saying so in the room, default 60000 */
    int share_verified;         /* share_with = "verified": room keys only
                                   for cross-signed devices; 0 = "all" */
};

/*
 * Parse and validate the adapter's libconfig setting (config_setting_t *).
 * Every problem is written to err as "FILE:LINE: adapters.[i].key:
 * message", one per line.  Returns PARLEY_OK, PARLEY_ERR_CONFIG or
 * PARLEY_ERR_OOM; free with matrix_config_free in every case.
 */
int matrix_config_parse(struct matrix_config *mc, void *setting, char *err,
                        size_t errlen);
void matrix_config_free(struct matrix_config *mc);

#endif
