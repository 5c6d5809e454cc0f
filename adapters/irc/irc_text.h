/*
 * Incoming IRC text: what the adapter does to a PRIVMSG before the router
 * sees it.  mIRC formatting codes are removed, bytes are made valid UTF-8
 * (invalid sequences are read as Latin-1, the usual legacy encoding on
 * IRC), nicks and channels are compared under the server's CASEMAPPING,
 * and "nick: text" addressing is recognised.  Everything here is pure and
 * loop-free so that tests and fuzzers feed it raw bytes.
 */
#ifndef PARLEY_IRC_TEXT_H
#define PARLEY_IRC_TEXT_H

#include <stddef.h>

/* Remove mIRC formatting codes (\x02 bold, \x03 colour with up to two
 * digits and an optional ",bg", \x04 hex colour RRGGBB[,RRGGBB], \x0f
 * reset, \x11 monospace, \x16 reverse, \x1d italic, \x1e strike, \x1f
 * underline) in place.  Returns the new length. */
size_t irc_strip_formatting(char *s);

/* 1 when s[0..len) is well-formed UTF-8 (no overlongs, surrogates or
 * code points above U+10FFFF). */
int irc_utf8_valid(const char *s, size_t len);

/* Length of the valid UTF-8 sequence at s (at most len bytes), or 0. */
size_t irc_utf8_seq_len(const unsigned char *s, size_t len);

/*
 * Copy in[0..inlen) into out (capacity outlen, always NUL-terminated),
 * keeping valid UTF-8 and decoding every other byte as Latin-1 (two bytes
 * of output).  Output is cut on a character boundary when it does not fit.
 * NUL bytes in the input are dropped.  Returns the bytes written.
 */
size_t irc_utf8_from_irc(const char *in, size_t inlen, char *out,
                         size_t outlen);

/* CASEMAPPING values from ISUPPORT (RPL_ISUPPORT 005). */
enum irc_casemap {
    IRC_CASEMAP_RFC1459 = 0,    /* default: A-Z [ ] \ ~ fold */
    IRC_CASEMAP_STRICT,         /* strict-rfc1459: without ~ ^ */
    IRC_CASEMAP_ASCII
};

/* Parse a CASEMAPPING token; unknown names give rfc1459 and -1. */
int irc_casemap_parse(const char *name, enum irc_casemap *out);
/* Fold one byte / a string in place / compare two strings. */
int irc_casefold_char(enum irc_casemap cm, int c);
void irc_casefold(enum irc_casemap cm, char *s);
int irc_casecmp(enum irc_casemap cm, const char *a, const char *b);

/*
 * Whether text addresses nick: "nick:", "nick," or "nick " at the start
 * (after blanks), compared under cm.  On 1, *rest points at the text after
 * the separator and its blanks.  A bare "nick" is addressed with rest "".
 */
int irc_addressed(enum irc_casemap cm, const char *text, const char *nick,
                  const char **rest);

/* Glob match of "nick!user@host" against mask with * and ?, under cm. */
int irc_mask_match(enum irc_casemap cm, const char *mask, const char *str);

/* 1 when name starts with one of chantypes (ISUPPORT CHANTYPES). */
int irc_is_channel(const char *name, const char *chantypes);

#endif
