/*
 * IRC protocol lines: an in-place, allocation-free parser and a bounded
 * serialiser, in the shape of pounce's struct Message (bounce.h:68-92).
 * The parser never trusts its input: every field is bounded, missing parts
 * are reported as PARLEY_ERR_PROTOCOL, and nothing is read past the NUL.
 * The serialiser is what the transport uses to hand libircclient only
 * canonical lines (libircclient 1.9 dereferences missing parameters).
 */
#ifndef PARLEY_IRC_LINE_H
#define PARLEY_IRC_LINE_H

#include <stddef.h>

/* RFC 1459: a line is at most 512 bytes including the CRLF. */
#define IRC_LINE_MAX 512
/* IRCv3 message-tags allow 8191 bytes of tags in front of the 512. */
#define IRC_LINE_IN_MAX (8191 + 512)
/* RFC 1459 allows 15 parameters; more is a protocol error. */
#define IRC_PARAMS_MAX 15

/* A parsed line.  All pointers point into the buffer given to the parser
 * (borrowed, valid while that buffer is); absent parts are NULL. */
struct irc_msg {
    char *tags;             /* raw tags without '@', not unescaped */
    char *prefix;           /* without ':' */
    char *command;          /* upper-cased in place */
    char *params[IRC_PARAMS_MAX];
    size_t n_params;
};

/*
 * Parse one line (NUL-terminated, CR/LF already removed) in place.
 * Returns PARLEY_OK, PARLEY_ERR_PROTOCOL for a malformed line (no
 * command, more than IRC_PARAMS_MAX parameters, a CR, LF or a bad
 * command name), or PARLEY_ERR_TOO_LARGE over IRC_LINE_IN_MAX.
 */
int irc_line_parse(char *line, struct irc_msg *msg);

/*
 * Write msg as "[:prefix ]COMMAND p1 ... :last" (no tags, no CRLF) into
 * buf.  The last parameter is always written as a trailing one when it is
 * empty, starts with ':' or holds a space.  Returns PARLEY_OK,
 * PARLEY_ERR_PROTOCOL when a field holds CR, LF or NUL-less garbage that
 * cannot be written (a middle parameter with a space), or
 * PARLEY_ERR_TOO_LARGE when it does not fit.
 */
int irc_line_format(char *buf, size_t len, const struct irc_msg *msg);

/* Copy the nick part of "nick!user@host" (or a server name) into buf.
 * Returns PARLEY_OK or PARLEY_ERR_TOO_LARGE (buf then holds ""). */
int irc_prefix_nick(const char *prefix, char *buf, size_t len);

/*
 * Copy the "user@host" part of "nick!user@host" into buf: what stays the
 * same across nick changes for people without a services account.
 * Returns PARLEY_OK, PARLEY_ERR_PROTOCOL when the prefix has no '!' or
 * '@' in that order (a server, or a bare nick), or PARLEY_ERR_TOO_LARGE;
 * buf holds "" on error.
 */
int irc_prefix_userhost(const char *prefix, char *buf, size_t len);

/* 1 when command is a three-digit numeric, which it stores in *code. */
int irc_line_numeric(const char *command, int *code);

#endif
