/*
 * libFuzzer target: the IRC line parser on arbitrary bytes, then the
 * serialiser on what it parsed, and the transport's libircclient filter
 * (irc_libguard.c) on the result.  Invariants: no crash or overread; a
 * parsed line re-serialises without CR/LF and re-parses to the same
 * command and parameter count; a line the filter lets through never has
 * a lone \x01 or a DCC request as PRIVMSG/NOTICE text.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "irc/irc_libguard.h"
#include "irc/irc_line.h"
#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line = malloc(size + 1), out[IRC_LINE_IN_MAX + 1];
    struct irc_msg m, m2;
    char nick[64];
    int code;

    if (!line)
        return 0;
    memcpy(line, data, size);
    line[size] = '\0';
    if (irc_line_parse(line, &m) == PARLEY_OK) {
        if (m.prefix)
            irc_prefix_nick(m.prefix, nick, sizeof(nick));
        irc_line_numeric(m.command, &code);
        m.tags = NULL;
        if (irc_line_format(out, sizeof(out), &m) == PARLEY_OK) {
            char cmd[64];
            size_t n = m.n_params;

            if (strpbrk(out, "\r\n"))
                abort();
            snprintf(cmd, sizeof(cmd), "%s", m.command);
            if (irc_line_parse(out, &m2) != PARLEY_OK ||
                strcmp(m2.command, cmd) || m2.n_params != n)
                abort();
            if (!irc_lib_would_crash(&m2) &&
                (!strcmp(cmd, "PRIVMSG") || !strcmp(cmd, "NOTICE")) &&
                (m2.n_params < 2 || !strcmp(m2.params[1], "\001") ||
                 !strncasecmp(m2.params[1], "\001dcc", 4)))
                abort();
        }
    }
    free(line);
    return 0;
}
