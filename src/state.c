/*
 * The helpers every state_*.c file shares (state_private.h): reply to
 * status, HGETALL field lookup, log labels, fire-and-forget writes and
 * MULTI/EXEC sequences.  The data shapes themselves live in state_job.c,
 * state_room.c, state_history.c and state_session.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "log.h"
#include "metrics.h"
#include "state_private.h"
#include "status.h"
#include "store.h"

int state_reply_code(const redisReply *rep)
{
    if (!rep)
        return PARLEY_ERR_IO;
    if (rep->type != REDIS_REPLY_ERROR)
        return PARLEY_OK;
    /* Redis 7 keeps the code at the front of an error a script passes
     * on; older servers wrap it ("ERR Error running script ...:
     * WRONGTYPE ..."), so look anywhere. */
    if (rep->str && strstr(rep->str, "WRONGTYPE"))
        return PARLEY_ERR_PROTOCOL;
    /* A fenced write refused: a newer holder has the account. */
    if (rep->str && strstr(rep->str, "FENCED"))
        return PARLEY_ERR_STATE;
    return PARLEY_ERR_OTHER;
}

int state_reply_status(const redisReply *rep, const char *what,
                       const char *label)
{
    int result = state_reply_code(rep);

    if (rep && result == PARLEY_ERR_STATE) {
        log_warn("redis %s %s refused by fencing: this instance no longer "
                 "holds the account's lease", what, label);
        metrics_fence_refused();
    } else if (rep && result) {
        log_warn("redis %s %s failed: %.*s", what, label, (int)rep->len,
                 rep->str);
    }
    return result;
}

const char *state_hash_field(const redisReply *rep, const char *name)
{
    if (!rep || rep->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const redisReply *k = rep->element[i];
        const redisReply *v = rep->element[i + 1];

        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
            strcmp(k->str, name) == 0)
            return v->str;
    }
    return NULL;
}

long long state_parse_ll(const char *s)
{
    char *end;
    long long v;

    if (!s || !*s)
        return 0;
    v = strtoll(s, &end, 10);
    return *end ? 0 : v;
}

void state_label(char *buf, size_t len, const char *s)
{
    size_t out = 0;

    if (len == 0)
        return;
    if (len > STATE_LABEL_MAX + 1)
        len = STATE_LABEL_MAX + 1;
    for (const unsigned char *p = (const unsigned char *)(s ? s : "");
         *p; p++) {
        int n;

        if (*p >= 0x20 && *p < 0x7f && *p != '\\') {
            if (out + 1 >= len)
                break;
            buf[out++] = (char)*p;
            continue;
        }
        if (out + 5 >= len)
            break;
        n = snprintf(buf + out, len - out, "\\x%02x", *p);
        if (n < 0)
            break;
        out += (size_t)n;
    }
    buf[out] = '\0';
}

static void state_forgotten(struct store *st, redisReply *rep,
                            void *privdata)
{
    const char *what = privdata;

    (void)st;
    if (!rep)
        log_debug("redis %s: connection lost before the reply", what);
    else if (state_reply_code(rep))
        log_debug("redis %s failed: %.*s", what, (int)rep->len, rep->str);
}

int state_send_forget(struct store *st, const char *what, int argc,
                      const char **argv)
{
    /* what is a string literal, so it outlives the reply. */
    return store_command_argv(st, state_forgotten, (void *)what, argc, argv,
                              NULL);
}

int state_send_multi(struct store *st, const struct state_cmd *cmds,
                     size_t n, store_reply_fn *fn, void *privdata)
{
    const char *multi[] = { "MULTI" };
    const char *exec[] = { "EXEC" };
    const char *discard[] = { "DISCARD" };
    int result;

    result = store_command_argv(st, NULL, NULL, 1, multi, NULL);
    if (result)
        return result;
    for (size_t i = 0; i < n && !result; i++)
        result = store_command_argv(st, NULL, NULL, cmds[i].argc,
                                    cmds[i].argv, NULL);
    if (!result)
        result = store_command_argv(st, fn, privdata, 1, exec, NULL);
    if (result && store_command_argv(st, NULL, NULL, 1, discard, NULL))
        log_error("redis: cannot DISCARD a half-sent transaction");
    return result;
}
