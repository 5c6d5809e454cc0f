/*
 * The transport between libircclient and an IRC server.  Debian's
 * libircclient 1.9 has no TLS, resolves names with blocking calls and
 * sends PASS/NICK/USER the moment its socket connects, with no IRCv3
 * capability negotiation (STYLE.md section 6).  So the library connects to
 * a one-shot listener on 127.0.0.1 in this process, and the transport
 * speaks to the real server: it resolves the name and connects through
 * the loop's TCP streams (loop.h; no blocking lookup), runs TLS through
 * OpenSSL memory BIOs (certificate and host name verified unless
 * tls_verify is false), sends "CAP LS 302", does SASL
 * PLAIN when configured and "CAP END", and only then releases the
 * library's held registration lines.  Afterwards it relays lines both
 * ways, re-serialising what the server sends so the library only sees
 * well-formed lines, and pings the server to detect a dead link.
 *
 * Lifetime: irc_transport_start creates it; on any failure it closes both
 * sides and calls closed() once; the owner releases it with
 * irc_transport_close (also allowed inside closed(): the memory then goes
 * when the transport's callback returns).
 */
#ifndef PARLEY_IRC_TRANSPORT_H
#define PARLEY_IRC_TRANSPORT_H

#include <stddef.h>

struct loop;
struct sockaddr_in;
struct irc_transport;

struct irc_transport_opts {
    const char *network;        /* name for log lines */
    const char *host;           /* server name or address */
    int port;
    int tls;
    int tls_verify;             /* 0 only when configured explicitly */
    const char *ca_file;        /* PEM bundle, or NULL for system CAs */
    const char *sasl_user;      /* NULL: no SASL */
    const char *sasl_password;  /* borrowed during start only */
    unsigned ping_interval_ms;  /* PING after this much silence; dead
                                   after twice as much */
    unsigned register_timeout_ms; /* connect + TLS + CAP/SASL deadline */
};

/* status is a parley_status; why is an operator-facing sentence (never a
 * secret).  Called at most once. */
typedef void irc_transport_closed_fn(void *ctx, int status, const char *why);

/*
 * Start: bind the loopback listener (port in *port_out) and begin
 * resolving and connecting upstream.  Returns PARLEY_OK or an error with
 * err filled (then *out is NULL and nothing is left behind).
 */
int irc_transport_start(struct irc_transport **out, struct loop *loop,
                        const struct irc_transport_opts *opts,
                        irc_transport_closed_fn *closed, void *ctx,
                        int *port_out, char *err, size_t errlen);

/* The local address of libircclient's socket: only a connection from it
 * is accepted on the listener. */
void irc_transport_expect_peer(struct irc_transport *t,
                               const struct sockaddr_in *addr);

/* 1 once CAP/SASL is done and registration was passed upstream. */
int irc_transport_registered(const struct irc_transport *t);

/* 1 when the server's ISUPPORT said WHOX.  Seen here because libircclient
 * passes at most 10 parameters of a line on, and WHOX is often later in a
 * 005 line.  0 for a NULL t. */
int irc_transport_whox(const struct irc_transport *t);

/* Close everything; closed() is not called afterwards.  Idempotent in the
 * sense that a NULL t is ignored; call it exactly once per transport. */
void irc_transport_close(struct irc_transport *t);

#endif
