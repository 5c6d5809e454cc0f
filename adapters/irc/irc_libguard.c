/*
 * The lines libircclient 1.9 mishandles, read from its
 * libirc_process_incoming_data() (src/libircclient.c, 1.9 as shipped by
 * Debian, lines 524-800) and libirc_dcc_request() (src/dcc.c:713-770).
 * The transport only ever hands the library canonical lines
 * (irc_line_format), so the checks below are stated for that form.
 *
 * How the library reads a line: after an optional prefix, three digits
 * make a numeric ("p[3] = '\0'; p += 4;"), anything else is a command
 * name, and the name is compared with
 *
 *     strncmp(command, "NICK", buf_end - command)
 *
 * for NICK, QUIT, JOIN, PART, MODE, TOPIC, KICK, PRIVMSG, NOTICE, INVITE
 * and KILL in that order.  buf_end - command is the rest of the line, so
 * when the command is the last thing on it, any prefix of a name matches
 * that name: a bare "NOT" is dispatched as NOTICE.
 */
#include "irc_libguard.h"

#include <string.h>
#include <strings.h>

#include "irc_line.h"

/* The library's dispatch chain, in its order (libircclient.c:648-800). */
static const char *const lib_commands[] = {
    "NICK", "QUIT", "JOIN", "PART", "MODE", "TOPIC", "KICK", "PRIVMSG",
    "NOTICE", "INVITE", "KILL"
};

/* The name the library dispatches m on, or NULL for "unknown event". */
static const char *lib_command(const struct irc_msg *m)
{
    size_t i, n = strlen(m->command);

    for (i = 0; i < sizeof(lib_commands) / sizeof(lib_commands[0]); i++) {
        const char *name = lib_commands[i];

        if (strcmp(m->command, name) == 0)
            return name;
        /* With no parameter the compared length is the command's own:
         * a truncated name matches (see the top of the file). */
        if (m->n_params == 0 && n < strlen(name) &&
            strncmp(m->command, name, n) == 0)
            return name;
    }
    return NULL;
}

/* Whether text is a CTCP the library hands to libirc_dcc_request: it
 * starts and ends with \x01 and its body begins "DCC " in any case
 * (strncasecmp, libircclient.c:715-727).  The DCC parser then matches
 * case-sensitive sscanf templates and, in debug builds, abort()s on
 * anything else ("BUG: Unhandled DCC message", dcc.c:766-769).  parley
 * has no use for DCC, so any text opening with \x01 and "DCC", whether
 * closed or not, is refused: a wider net than the library's own test. */
static int is_dcc(const char *text)
{
    return text[0] == '\001' && strncasecmp(text + 1, "DCC", 3) == 0;
}

int irc_lib_would_crash(const struct irc_msg *m)
{
    const char *cmd;

    if (!m->command || !m->command[0])
        return 1;
    if (m->command[0] >= '0' && m->command[0] <= '9') {
        /* "p += 4" steps over the NUL that ends a bare numeric, and the
         * parameters are then read from uninitialised stack.  "000"
         * gives code 0 with command NULL, and the command chain then
         * calls strncmp(NULL, ...). */
        return m->n_params == 0 || strcmp(m->command, "000") == 0;
    }
    cmd = lib_command(m);
    if (!cmd)
        return 0;
    /* A bare prefix of a name ("N", "NOT") is nothing a server sends;
     * the library would take it for the full command. */
    if (strcmp(cmd, m->command) != 0)
        return 1;
    /* NICK: irc_target_get_nick(prefix, ...) runs strstr on the prefix
     * even when the line had none. */
    if (strcmp(cmd, "NICK") == 0)
        return m->prefix == NULL;
    if (strcmp(cmd, "PRIVMSG") != 0 && strcmp(cmd, "NOTICE") != 0)
        return 0;
    /* NOTICE: strlen(params[1]) comes before the parameter count is
     * checked.  PRIVMSG checks it, but a line without text carries
     * nothing to answer either. */
    if (m->n_params < 2 || !m->params[1])
        return 1;
    /* An empty text is harmless to the library (its first byte is not
     * \x01, so the CTCP test stops there) and means nothing to parley. */
    if (m->params[1][0] == '\0')
        return 1;
    /* A lone \x01 both starts and ends a CTCP: "msglen -= 2" wraps, and
     * 127 (PRIVMSG) or 511 (NOTICE) bytes are copied from past the end
     * of the text, off the end of the library's stack buffer when the
     * line is long. */
    if (strcmp(m->params[1], "\001") == 0)
        return 1;
    /* Only PRIVMSG reaches the DCC parser; a DCC in a NOTICE is refused
     * as well, as nothing parley does needs one. */
    return is_dcc(m->params[1]);
}
