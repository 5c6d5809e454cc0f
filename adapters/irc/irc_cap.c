/*
 * CAP/SASL state machine (see irc_cap.h).  Numerics follow the IRCv3 SASL
 * 3.1 spec: 900 logged in, 903 success, 902 nick locked, 904 failed,
 * 905 too long, 906 aborted, 907 already authenticated, 908 mechanisms.
 */
#include "irc_cap.h"

#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "irc_line.h"
#include "status.h"

static void cap_wipe(struct irc_cap *c)
{
    explicit_bzero(c->b64, sizeof(c->b64));
}

void irc_cap_clear(struct irc_cap *c)
{
    cap_wipe(c);
}

void irc_cap_fail(struct irc_cap *c, const char *why)
{
    cap_wipe(c);
    c->state = IRC_CAP_FAILED;
    snprintf(c->errstr, sizeof(c->errstr), "%s", why);
}

int irc_cap_init(struct irc_cap *c, const char *user, const char *password)
{
    unsigned char raw[IRC_SASL_PLAIN_MAX + 1];
    size_t ul, pl;

    memset(c, 0, sizeof(*c));
    if (user && password) {
        ul = strlen(user);
        pl = strlen(password);
        /* authzid "" NUL authcid NUL password */
        if (ul + pl + 2 > IRC_SASL_PLAIN_MAX)
            return PARLEY_ERR_TOO_LARGE;
        raw[0] = '\0';
        memcpy(raw + 1, user, ul);
        raw[1 + ul] = '\0';
        memcpy(raw + 2 + ul, password, pl);
        EVP_EncodeBlock((unsigned char *)c->b64, raw, (int)(ul + pl + 2));
        explicit_bzero(raw, sizeof(raw));
        c->sasl = 1;
    }
    c->state = IRC_CAP_LS;
    return PARLEY_OK;
}

void irc_cap_begin(struct irc_cap *c, irc_cap_send_fn *send, void *ctx)
{
    c->send = send;
    c->ctx = ctx;
    c->state = IRC_CAP_LS;
    send(ctx, "CAP LS 302", 0);
}

int irc_cap_start(struct irc_cap *c, const char *user, const char *password,
                  irc_cap_send_fn *send, void *ctx)
{
    int result = irc_cap_init(c, user, password);

    if (result != PARLEY_OK)
        return result;
    irc_cap_begin(c, send, ctx);
    return PARLEY_OK;
}

/* Whether list (space-separated, "name[=value]") offers name; *value
 * points at its value or NULL. */
static int cap_has(const char *list, const char *name, const char **value,
                   size_t *vlen)
{
    size_t n = strlen(name);
    const char *p = list;

    while (*p) {
        size_t len;

        while (*p == ' ')
            p++;
        len = strcspn(p, " ");
        if (len >= n && !strncmp(p, name, n) && (len == n || p[n] == '=')) {
            if (value) {
                *value = len > n ? p + n + 1 : NULL;
                *vlen = len > n ? len - n - 1 : 0;
            }
            return 1;
        }
        p += len;
    }
    return 0;
}

static void cap_end(struct irc_cap *c)
{
    cap_wipe(c);
    c->send(c->ctx, "CAP END", 0);
    c->state = IRC_CAP_DONE;
}

static int cap_handle_cap(struct irc_cap *c, const struct irc_msg *m)
{
    const char *sub, *list;

    if (m->n_params < 3)
        return 1;
    sub = m->params[1];
    if (!strcmp(sub, "LS") && c->state == IRC_CAP_LS) {
        const char *val = NULL;
        size_t vlen = 0;
        int more = m->n_params >= 4 && !strcmp(m->params[2], "*");
        char req[80];

        list = more ? m->params[3] : m->params[2];
        /* A multi-line LS spreads the offer over lines: remember what
         * was seen and ask once, after the last line. */
        if (cap_has(list, "account-notify", NULL, NULL))
            c->offer_account_notify = 1;
        if (cap_has(list, "extended-join", NULL, NULL))
            c->offer_extended_join = 1;
        if (c->sasl && cap_has(list, "sasl", &val, &vlen)) {
            char mechs[128];

            if (val) {
                snprintf(mechs, sizeof(mechs), ",%.*s,", (int)vlen, val);
                if (!strstr(mechs, ",PLAIN,")) {
                    irc_cap_fail(c, "the server offers SASL but not PLAIN");
                    return 1;
                }
            }
            c->offer_sasl = 1;
        }
        if (more)
            return 1;
        if (c->sasl && !c->offer_sasl) {
            irc_cap_fail(c, "SASL is configured but the server does not "
                            "offer the sasl capability");
            return 1;
        }
        snprintf(req, sizeof(req), "CAP REQ :%s%s%s",
                 c->offer_sasl ? "sasl " : "",
                 c->offer_account_notify ? "account-notify " : "",
                 c->offer_extended_join ? "extended-join " : "");
        if (!strcmp(req, "CAP REQ :")) {
            cap_end(c);
            return 1;
        }
        req[strlen(req) - 1] = '\0';   /* the last space */
        c->send(c->ctx, req, 0);
        c->req_extras = c->offer_account_notify || c->offer_extended_join;
        c->state = IRC_CAP_REQ;
        return 1;
    }
    if (!strcmp(sub, "ACK") && c->state == IRC_CAP_REQ) {
        if (cap_has(m->params[2], "account-notify", NULL, NULL))
            c->account_notify = 1;
        if (cap_has(m->params[2], "extended-join", NULL, NULL))
            c->extended_join = 1;
        if (cap_has(m->params[2], "sasl", NULL, NULL)) {
            c->send(c->ctx, "AUTHENTICATE PLAIN", 0);
            c->state = IRC_CAP_SASL;
        } else {
            cap_end(c);
        }
        return 1;
    }
    if (!strcmp(sub, "NAK") && c->state == IRC_CAP_REQ) {
        /* A REQ is all or nothing: when the account capabilities made it
         * fail, ask again for what is needed (sasl) or go without. */
        if (c->req_extras) {
            c->req_extras = 0;
            if (c->sasl) {
                c->send(c->ctx, "CAP REQ :sasl", 0);
                return 1;
            }
            cap_end(c);
            return 1;
        }
        irc_cap_fail(c, "the server refused the sasl capability (CAP NAK)");
        return 1;
    }
    /* NEW, DEL, LIST and late replies: nothing to do before END. */
    return 1;
}

static void cap_authenticate(struct irc_cap *c)
{
    /* One AUTHENTICATE line carries at most 400 characters; a payload of
     * exactly 400*k is followed by "AUTHENTICATE +". */
    char line[16 + 400 + 1];
    size_t len = strlen(c->b64), off = 0, chunk;

    do {
        chunk = len - off > 400 ? 400 : len - off;
        snprintf(line, sizeof(line), "AUTHENTICATE %.*s", (int)chunk,
                 c->b64 + off);
        c->send(c->ctx, line, 1);
        off += chunk;
    } while (off < len);
    if (len % 400 == 0)
        c->send(c->ctx, "AUTHENTICATE +", 0);
    explicit_bzero(line, sizeof(line));
    cap_wipe(c);
}

static int cap_numeric(struct irc_cap *c, int code, const struct irc_msg *m)
{
    const char *text = m->n_params ? m->params[m->n_params - 1] : "";
    char why[200];

    switch (code) {
    case 1:
        /* The server registered us without waiting for CAP END: it does
         * not do capability negotiation. */
        if (c->sasl) {
            irc_cap_fail(c, "the server registered the connection before "
                            "SASL (no CAP support)");
            return 1;
        }
        c->state = IRC_CAP_DONE;
        return 0;
    case 421:
        if (m->n_params >= 2 && !strcmp(m->params[1], "CAP")) {
            if (c->sasl)
                irc_cap_fail(c, "SASL is configured but the server does "
                                "not support CAP");
            else
                c->state = IRC_CAP_DONE;
            return 1;
        }
        return 0;
    case 900:
        if (m->n_params >= 3)
            snprintf(c->account, sizeof(c->account), "%s", m->params[2]);
        return 1;
    case 903:
        c->sasl_ok = 1;
        cap_end(c);
        return 1;
    case 907:
        cap_end(c);
        return 1;
    case 908:
        return 1;
    case 902:
    case 904:
    case 905:
    case 906: {
        static const char *const what[] = {
            "the account is locked or the nick is not available (902)",
            "",
            "SASL authentication failed (904): wrong user or password?",
            "SASL message too long (905)",
            "SASL authentication aborted (906)",
        };

        snprintf(why, sizeof(why), "%s; server said: %.80s",
                 what[code - 902], text);
        irc_cap_fail(c, why);
        return 1;
    }
    default:
        return 0;
    }
}

int irc_cap_feed(struct irc_cap *c, const struct irc_msg *m)
{
    int code;

    if (c->state == IRC_CAP_DONE || c->state == IRC_CAP_FAILED)
        return 0;
    if (!strcmp(m->command, "CAP"))
        return cap_handle_cap(c, m);
    if (!strcmp(m->command, "AUTHENTICATE")) {
        if (c->state == IRC_CAP_SASL && m->n_params >= 1 &&
            !strcmp(m->params[0], "+") && c->b64[0])
            cap_authenticate(c);
        return 1;
    }
    if (irc_line_numeric(m->command, &code))
        return cap_numeric(c, code, m);
    return 0;
}
