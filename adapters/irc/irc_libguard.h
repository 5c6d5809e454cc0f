/*
 * Which server lines libircclient 1.9 cannot be given safely.  The
 * transport (irc_transport.c) parses every server line and hands the
 * library a canonical copy; this predicate says which canonical lines
 * would make the library crash, read past its buffer or abort, so that
 * they are dropped instead.  Pure, so unit tests can drive it.
 */
#ifndef PARLEY_IRC_LIBGUARD_H
#define PARLEY_IRC_LIBGUARD_H

struct irc_msg;

/*
 * 1 when the canonical form of m (irc_line_format: single spaces, no
 * tags, no trailing blank) must not reach libircclient, else 0.  What the
 * library does with each such line is written next to the checks in
 * irc_libguard.c, with the source lines it was read from.
 */
int irc_lib_would_crash(const struct irc_msg *m);

#endif
