/*
 * IRC line parser and serialiser (see irc_line.h).  The parser walks the
 * buffer once, cutting it with NULs like pounce's strsep-based parse; the
 * serialiser counts every byte against the caller's buffer so a long
 * parameter is an error, never a silent truncation.
 */
#include "irc_line.h"

#include <ctype.h>
#include <string.h>

#include "status.h"

/* Skip the spaces between fields (RFC 1459 allows several). */
static char *skip_spaces(char *p)
{
    while (*p == ' ')
        p++;
    return p;
}

/* Cut the field starting at p at the next space; return what follows. */
static char *cut_field(char *p)
{
    char *sp = strchr(p, ' ');

    if (!sp)
        return p + strlen(p);
    *sp = '\0';
    return skip_spaces(sp + 1);
}

static int command_valid(const char *cmd)
{
    size_t i, n = strlen(cmd);

    if (n == 0)
        return 0;
    if (isdigit((unsigned char)cmd[0])) {
        if (n != 3)
            return 0;
        for (i = 0; i < n; i++)
            if (!isdigit((unsigned char)cmd[i]))
                return 0;
        return 1;
    }
    for (i = 0; i < n; i++)
        if (!isalpha((unsigned char)cmd[i]))
            return 0;
    /* No IRC command is longer than this; a longer one is garbage. */
    return n <= 32;
}

int irc_line_parse(char *line, struct irc_msg *msg)
{
    char *p = line;

    memset(msg, 0, sizeof(*msg));
    if (strlen(line) > IRC_LINE_IN_MAX)
        return PARLEY_ERR_TOO_LARGE;
    if (strpbrk(line, "\r\n"))
        return PARLEY_ERR_PROTOCOL;
    p = skip_spaces(p);
    if (*p == '@') {
        msg->tags = p + 1;
        p = cut_field(p);
    }
    if (*p == ':') {
        msg->prefix = p + 1;
        p = cut_field(p);
        if (msg->prefix[0] == '\0')
            return PARLEY_ERR_PROTOCOL;
    }
    if (*p == '\0')
        return PARLEY_ERR_PROTOCOL;
    msg->command = p;
    p = cut_field(p);
    if (!command_valid(msg->command))
        return PARLEY_ERR_PROTOCOL;
    for (char *c = msg->command; *c; c++)
        *c = (char)toupper((unsigned char)*c);
    while (*p != '\0') {
        if (msg->n_params == IRC_PARAMS_MAX)
            return PARLEY_ERR_PROTOCOL;
        if (*p == ':') {
            msg->params[msg->n_params++] = p + 1;
            break;
        }
        msg->params[msg->n_params++] = p;
        p = cut_field(p);
    }
    return PARLEY_OK;
}

/* Append n bytes of s at *pos in buf; 0 on success, -1 when full. */
static int append(char *buf, size_t len, size_t *pos, const char *s,
                  size_t n)
{
    if (n >= len - *pos)
        return -1;
    memcpy(buf + *pos, s, n);
    *pos += n;
    buf[*pos] = '\0';
    return 0;
}

int irc_line_format(char *buf, size_t len, const struct irc_msg *msg)
{
    size_t pos = 0, i;

    if (len == 0)
        return PARLEY_ERR_TOO_LARGE;
    buf[0] = '\0';
    if (!msg->command || !command_valid(msg->command) ||
        msg->n_params > IRC_PARAMS_MAX)
        return PARLEY_ERR_PROTOCOL;
    if (msg->prefix) {
        if (msg->prefix[0] == '\0' || strpbrk(msg->prefix, " \r\n"))
            return PARLEY_ERR_PROTOCOL;
        if (append(buf, len, &pos, ":", 1) ||
            append(buf, len, &pos, msg->prefix, strlen(msg->prefix)) ||
            append(buf, len, &pos, " ", 1))
            goto toobig;
    }
    if (append(buf, len, &pos, msg->command, strlen(msg->command)))
        goto toobig;
    for (i = 0; i < msg->n_params; i++) {
        const char *p = msg->params[i];
        int last = (i + 1 == msg->n_params);

        if (!p || strpbrk(p, "\r\n"))
            goto bad;
        if (append(buf, len, &pos, " ", 1))
            goto toobig;
        if (last && (p[0] == '\0' || p[0] == ':' || strchr(p, ' '))) {
            if (append(buf, len, &pos, ":", 1))
                goto toobig;
        } else if (p[0] == '\0' || p[0] == ':' || strchr(p, ' ')) {
            goto bad;
        }
        if (append(buf, len, &pos, p, strlen(p)))
            goto toobig;
    }
    return PARLEY_OK;
bad:
    buf[0] = '\0';
    return PARLEY_ERR_PROTOCOL;
toobig:
    buf[0] = '\0';
    return PARLEY_ERR_TOO_LARGE;
}

int irc_prefix_nick(const char *prefix, char *buf, size_t len)
{
    size_t n = strcspn(prefix, "!@");

    if (len == 0)
        return PARLEY_ERR_TOO_LARGE;
    if (n >= len) {
        buf[0] = '\0';
        return PARLEY_ERR_TOO_LARGE;
    }
    memcpy(buf, prefix, n);
    buf[n] = '\0';
    return PARLEY_OK;
}

int irc_prefix_userhost(const char *prefix, char *buf, size_t len)
{
    const char *bang = strchr(prefix, '!'), *at;
    size_t n;

    if (len == 0)
        return PARLEY_ERR_TOO_LARGE;
    buf[0] = '\0';
    if (!bang || bang == prefix)
        return PARLEY_ERR_PROTOCOL;
    at = strchr(bang + 1, '@');
    if (!at || at == bang + 1 || at[1] == '\0')
        return PARLEY_ERR_PROTOCOL;
    n = strlen(bang + 1);
    if (n >= len)
        return PARLEY_ERR_TOO_LARGE;
    memcpy(buf, bang + 1, n + 1);
    return PARLEY_OK;
}

int irc_line_numeric(const char *command, int *code)
{
    if (!command || strlen(command) != 3 ||
        !isdigit((unsigned char)command[0]) ||
        !isdigit((unsigned char)command[1]) ||
        !isdigit((unsigned char)command[2]))
        return 0;
    *code = (command[0] - '0') * 100 + (command[1] - '0') * 10 +
            (command[2] - '0');
    return 1;
}
