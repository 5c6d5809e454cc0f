/*
 * IRCv3 capability negotiation and SASL PLAIN before registration, the
 * pounce way (state.c:56-148): "CAP LS 302" first, "CAP REQ :sasl" when
 * the server offers it and credentials are configured, AUTHENTICATE PLAIN
 * with the credentials base64'd once and wiped after use, then "CAP END".
 * Unlike pounce, failures are returned to the caller (which logs them and
 * reconnects with backoff) instead of exiting.  Pure: lines come in as
 * parsed messages and go out through a callback, so tests script a server
 * with no socket.  account-notify and extended-join are requested too
 * when offered (they tell the adapter whose services account a nick is,
 * see README "Who is who"); message-tags and so account-tag are not:
 * libircclient's 1024-byte input buffer cannot take them (STYLE.md
 * section 6).
 */
#ifndef PARLEY_IRC_CAP_H
#define PARLEY_IRC_CAP_H

#include <stddef.h>

struct irc_msg;

/* Raw SASL PLAIN payload limit: 299 bytes encode into one 400-character
 * AUTHENTICATE line (pounce state.c:56-57). */
#define IRC_SASL_PLAIN_MAX 299

/* Send one line (no CRLF).  secret = 1: the line carries a credential and
 * must not be logged. */
typedef void irc_cap_send_fn(void *ctx, const char *line, int secret);

enum irc_cap_state {
    IRC_CAP_LS = 0,         /* waiting for CAP LS */
    IRC_CAP_REQ,            /* waiting for ACK/NAK */
    IRC_CAP_SASL,           /* AUTHENTICATE in progress */
    IRC_CAP_DONE,           /* registration may proceed */
    IRC_CAP_FAILED          /* errstr says why */
};

struct irc_cap {
    enum irc_cap_state state;
    int sasl;               /* credentials configured */
    int sasl_ok;            /* 903 seen */
    char account[64];       /* from 900, for the log */
    int offer_sasl;         /* seen in CAP LS (any line) */
    int offer_account_notify;
    int offer_extended_join;
    int req_extras;         /* the pending REQ has more than sasl */
    int account_notify;     /* ACKed: ACCOUNT lines will come */
    int extended_join;      /* ACKed: JOIN carries the account */
    char b64[512];          /* encoded PLAIN payload; wiped after use */
    char errstr[256];
    irc_cap_send_fn *send;
    void *ctx;
};

/*
 * Start negotiation: sends "CAP LS 302".  user/password may be NULL (no
 * SASL).  The password is only copied into the encoded payload.  Returns
 * PARLEY_OK or PARLEY_ERR_TOO_LARGE when the credentials are over
 * IRC_SASL_PLAIN_MAX.
 */
int irc_cap_start(struct irc_cap *c, const char *user, const char *password,
                  irc_cap_send_fn *send, void *ctx);

/*
 * Feed one server line.  Returns 1 when the line belonged to the
 * negotiation (the caller must not pass it on), else 0.  Afterwards check
 * c->state: IRC_CAP_DONE (release registration) or IRC_CAP_FAILED.
 */
int irc_cap_feed(struct irc_cap *c, const struct irc_msg *m);

/* The two halves of irc_cap_start: encode the credentials (no I/O), and
 * later, once connected, send "CAP LS 302". */
int irc_cap_init(struct irc_cap *c, const char *user, const char *password);
void irc_cap_begin(struct irc_cap *c, irc_cap_send_fn *send, void *ctx);

/* Give up (timeout): state FAILED with why, secrets wiped. */
void irc_cap_fail(struct irc_cap *c, const char *why);

/* Wipe the credential copy. */
void irc_cap_clear(struct irc_cap *c);

#endif
