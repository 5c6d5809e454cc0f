/*
 * Outgoing IRC text: the model's Markdown made readable as plain text,
 * cleaned so that no byte of it can end a line or start a CTCP, and cut
 * into lines whose relayed form (":nick!user@host PRIVMSG #chan :text"
 * plus CRLF) fits the 512 bytes of RFC 1459.  Lines are cut on UTF-8
 * boundaries and, where possible, between words (catgirl command.c:67-109
 * does the same, with mblen; parley decodes UTF-8 itself).
 */
#ifndef PARLEY_IRC_FORMAT_H
#define PARLEY_IRC_FORMAT_H

#include <stddef.h>

/* Longest reply text handled; the rest is dropped with a marker.  A model
 * answer is a few KiB; this only stops a runaway from filling memory. */
#define IRC_REPLY_MAX (64 * 1024)
/* Most lines one reply may produce (the rest are dropped). */
#define IRC_REPLY_LINES_MAX 512
/* Lengths used when the server does not announce USERLEN / HOSTLEN and
 * the bot has not yet seen its own prefix.  USERLEN gets one more byte
 * for the '~' servers add to an unverified ident. */
#define IRC_DEFAULT_USERLEN 10
#define IRC_DEFAULT_HOSTLEN 63

/* Lines of one reply.  Owned: free with irc_lines_free. */
struct irc_lines {
    char **v;
    size_t n;
};

void irc_lines_free(struct irc_lines *l);

/*
 * Turn Markdown into readable plain text: headings lose their '#',
 * emphasis markers and backticks go, code fences are dropped (their lines
 * stay), "[t](u)" becomes "t (u)", bullets become "- ", rules vanish.
 * Returns a malloc'd string (caller frees) or NULL when out of memory.
 */
char *irc_markdown_to_plain(const char *md);

/*
 * Bytes available for the text of one PRIVMSG so that the line the server
 * relays to others fits 512 bytes: 512 - CRLF - ":" nick "!" user "@" host
 * " PRIVMSG " target " :".  userlen/hostlen are the server's USERLEN and
 * HOSTLEN (0 = defaults), or the real lengths once the bot saw its own
 * prefix.  Returns 0 when nothing fits.
 */
size_t irc_text_budget(const char *cmd, const char *nick, size_t userlen,
                       size_t hostlen, const char *target);

/*
 * Split text into lines of at most budget bytes each: at newlines, then
 * at the last space that fits, else at a UTF-8 boundary.  Invalid UTF-8
 * is read as Latin-1, tabs become spaces, CR, \x01 and every other C0
 * control byte and DEL are removed (so no line can carry a CTCP or a
 * second command), blank lines are skipped.
 * Returns PARLEY_OK (out may hold 0 lines), PARLEY_ERR_OOM, or
 * PARLEY_ERR_TOO_LARGE when budget is below one 4-byte character.
 */
int irc_split_text(const char *text, size_t budget, struct irc_lines *out);

#endif
