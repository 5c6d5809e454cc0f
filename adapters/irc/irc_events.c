/*
 * Message intake of the IRC adapter: libircclient's event callbacks.
 * Registration, ISUPPORT, NAMES and WHOX replies, joins, parts, quits,
 * kicks, modes, nick changes and invites keep the membership of
 * irc_members.c current and report joins to the router; channel
 * messages, queries and actions become struct event for the router;
 * CTCP requests get their NOTICE answer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <libirc_rfcnumeric.h>

#include "event.h"
#include "irc_line.h"
#include "irc_private.h"
#include "log.h"
#include "random.h"
#include "router.h"
#include "status.h"

static struct irc_ad *ad_of(irc_session_t *s)
{
    return irc_get_ctx(s);
}

static int from_self(struct irc_ad *a, const char *origin)
{
    char nick[IRC_NICK_MAX];

    if (!origin || irc_prefix_nick(origin, nick, sizeof(nick)))
        return 0;
    return !irc_casecmp(a->casemap, nick, a->nick);
}

static int mask_list_match(struct irc_ad *a, char **masks, size_t n,
                           const char *origin)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (masks[i] && irc_mask_match(a->casemap, masks[i], origin))
            return 1;
    return 0;
}

void ev_connect(irc_session_t *s, const char *e, const char *origin,
                const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    size_t i;

    (void)e;
    (void)origin;
    (void)p;
    (void)n;
    /* 376/422 after 001 fire this again; while quitting it must not
     * bring the session back. */
    if (a->stopping)
        return;
    a->state = IRC_REGISTERED;
    a->attempt = 0;
    a->base.connected = 1;
    a->base.err = 0;
    a->base.errstr[0] = '\0';
    a->regain_at = now_ms(a) + (uint64_t)a->cfg.nick_regain_s * 1000;
    log_info("irc %s: registered as %s", a->cfg.name, a->nick);
    for (i = 0; i < a->n_chans; i++)
        if (a->chans[i].configured)
            join_channel(a, &a->chans[i]);
    flood_pump(a);
}

static void isupport_token(struct irc_ad *a, const char *tok)
{
    const char *eq = strchr(tok, '=');
    const char *val = eq ? eq + 1 : "";
    size_t klen = eq ? (size_t)(eq - tok) : strlen(tok);

#define KEY(k) (klen == sizeof(k) - 1 && !strncmp(tok, k, klen))
    if (KEY("CASEMAPPING")) {
        enum irc_casemap cm;
        size_t i;

        irc_casemap_parse(val, &cm);
        if (cm != a->casemap) {
            a->casemap = cm;
            for (i = 0; i < a->n_chans; i++) {
                /* memcpy, not snprintf: GCC's -Wrestrict (Debug builds)
                 * cannot tell two members of one struct apart. */
                size_t n = strnlen(a->chans[i].name,
                                   sizeof(a->chans[i].folded) - 1);

                memcpy(a->chans[i].folded, a->chans[i].name, n);
                a->chans[i].folded[n] = '\0';
                irc_casefold(cm, a->chans[i].folded);
            }
        }
    } else if (KEY("CHANTYPES") && val[0]) {
        snprintf(a->chantypes, sizeof(a->chantypes), "%s", val);
    } else if (KEY("PREFIX") && val[0] == '(') {
        const char *close = strchr(val, ')');

        if (close && strlen(close + 1) == (size_t)(close - val - 1) &&
            (size_t)(close - val) < sizeof(a->prefix_modes)) {
            snprintf(a->prefix_modes, sizeof(a->prefix_modes), "%.*s",
                     (int)(close - val - 1), val + 1);
            snprintf(a->prefix_syms, sizeof(a->prefix_syms), "%s",
                     close + 1);
        }
    } else if (KEY("CHANMODES")) {
        size_t i;
        const char *p = val;

        for (i = 0; i < 4; i++) {
            size_t l = strcspn(p, ",");

            snprintf(a->chanmodes[i], sizeof(a->chanmodes[i]), "%.*s",
                     (int)(l < 31 ? l : 31), p);
            p += l;
            if (*p == ',')
                p++;
        }
    } else if (KEY("WHOX")) {
        a->whox = 1;
    } else if (KEY("USERLEN")) {
        long v = strtol(val, NULL, 10);

        if (v > 0 && v < 256)
            a->isupport_userlen = (size_t)v;
    } else if (KEY("HOSTLEN")) {
        long v = strtol(val, NULL, 10);

        if (v > 0 && v < 256)
            a->isupport_hostlen = (size_t)v;
    }
#undef KEY
}

static void names_reply(struct irc_ad *a, const char **p, unsigned n)
{
    /* 353 me = #chan :@op +voice nick */
    struct irc_chan *c;
    char buf[1024];
    char *tok, *save = NULL;

    if (n < 4)
        return;
    c = chan_find(a, p[2]);
    if (!c)
        return;
    if (!c->names_open) {
        chan_clear_members(c);
        c->names_open = 1;
    }
    snprintf(buf, sizeof(buf), "%s", p[3]);
    for (tok = strtok_r(buf, " ", &save); tok;
         tok = strtok_r(NULL, " ", &save)) {
        int op = 0;
        struct irc_member *m;

        while (*tok && strchr(a->prefix_syms, *tok)) {
            op |= sym_is_op(a, *tok);
            tok++;
        }
        /* userhost-in-names is not requested, but cut at '!' anyway. */
        tok[strcspn(tok, "!")] = '\0';
        if (!*tok)
            continue;
        m = member_add(a, c, tok);
        if (m)
            m->op = op;
    }
}

void ev_numeric(irc_session_t *s, unsigned code, const char *origin,
                const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    unsigned i;

    (void)origin;
    switch (code) {
    case 1:
        if (n >= 1 && strlen(p[0]) < sizeof(a->nick))
            snprintf(a->nick, sizeof(a->nick), "%s", p[0]);
        break;
    case 5:
        for (i = 1; i + 1 < n; i++)
            isupport_token(a, p[i]);
        break;
    case 353:
        names_reply(a, p, n);
        break;
    case 354:
        /* WHOX "%tna": me token nick account ("0" = none). */
        if (n >= 4 && !strcmp(p[1], IRC_WHOX_TOKEN))
            account_set(a, p[2], p[3]);
        break;
    case 366:
        if (n >= 2) {
            struct irc_chan *c = chan_find(a, p[1]);

            if (c)
                c->names_open = 0;
        }
        break;
    case 432: case 433: case 436: case 437:
        /* Nick unusable.  Before registration pick the next one; after
         * it (a regain attempt) or while quitting, keep the current
         * nick. */
        if (a->state != IRC_CONNECTING)
            break;
        if (a->nick_try < a->cfg.n_alt_nicks) {
            snprintf(a->nick, sizeof(a->nick), "%s",
                     a->cfg.alt_nicks[a->nick_try]);
        } else {
            snprintf(a->nick, sizeof(a->nick), "%.20s_%u", a->cfg.nick,
                     (unsigned)random_below(1000));
        }
        a->nick_try++;
        log_warn("irc %s: nick in use, trying %s", a->cfg.name, a->nick);
        irc_cmd_nick(s, a->nick);
        break;
    case 471: case 473: case 474: case 475:
        if (n >= 2) {
            struct irc_chan *c = chan_find(a, p[1]);

            log_warn("irc %s: cannot join %s: %s", a->cfg.name, p[1],
                     n >= 3 ? p[2] : "refused");
            if (c)
                c->join_at = now_ms(a) + 60000;
        }
        break;
    default:
        break;
    }
}

void ev_nick(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    char old[IRC_NICK_MAX];
    size_t i;

    (void)e;
    if (!origin || n < 1 || irc_prefix_nick(origin, old, sizeof(old)) ||
        strlen(p[0]) >= IRC_NICK_MAX)
        return;
    if (!irc_casecmp(a->casemap, old, a->nick)) {
        snprintf(a->nick, sizeof(a->nick), "%s", p[0]);
        log_info("irc %s: now known as %s", a->cfg.name, a->nick);
    }
    /* Both nicks change hands: the old one is free for anyone, the new
     * one may have had an unseen holder. */
    query_forget(a, old);
    query_forget(a, p[0]);
    for (i = 0; i < a->n_chans; i++) {
        struct irc_member *m = member_find(a, &a->chans[i], old);

        if (m) {
            snprintf(m->nick, sizeof(m->nick), "%s", p[0]);
            irc_casefold(a->casemap, m->nick);
        }
    }
}

/* account-notify: ":nick!u@h ACCOUNT name" ("*" = logged out).  The
 * connection stays the same, so the nick keeps its holder. */
void ev_unknown(irc_session_t *s, const char *e, const char *origin,
                const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    char nick[IRC_NICK_MAX];

    if (!e || strcmp(e, "ACCOUNT") || !origin || n < 1 ||
        irc_prefix_nick(origin, nick, sizeof(nick)))
        return;
    account_set(a, nick, p[0]);
}

/* Report a join, a fact: the router decides whether to greet (greet
 * settings, room overrides, cooldown, member count). */
static void submit_join(struct irc_ad *a, struct irc_chan *c,
                        const char *nick, int self, int from_bot)
{
    struct event ev;
    const char *account = account_of(a, nick);
    char sender[IRC_NICK_MAX + 1];

    /* While quitting the router is already closed. */
    if (a->stopping)
        return;
    if (account)
        snprintf(sender, sizeof(sender), "~%s", account);
    else
        snprintf(sender, sizeof(sender), "%s", nick);
    memset(&ev, 0, sizeof(ev));
    ev.kind = EVENT_JOIN;
    ev.platform = "irc";
    ev.account = a->cfg.name;
    ev.room = c->folded;
    ev.sender = sender;
    ev.sender_name = nick;
    ev.self = self;
    ev.from_bot = from_bot;
    /* The bot's own JOIN comes before NAMES: the count is not known. */
    ev.members = self ? 0 : (int)c->n_m;
    if (a->base.router)
        router_submit(a->base.router, &ev);
}

void ev_join(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    struct irc_chan *c;
    char nick[IRC_NICK_MAX];

    (void)e;
    if (!origin || n < 1 || irc_prefix_nick(origin, nick, sizeof(nick)))
        return;
    if (from_self(a, origin)) {
        const char *bang = strchr(origin, '!'), *at = strchr(origin, '@');

        c = chan_add(a, p[0]);
        if (!c)
            return;
        c->joined = 1;
        /* The real user and host lengths give the exact split budget. */
        if (bang && at && at > bang) {
            a->userlen = (size_t)(at - bang - 1);
            a->hostlen = strlen(at + 1);
        }
        log_info("irc %s: joined %s", a->cfg.name, c->name);
        member_add(a, c, nick);
        /* The accounts of those already there (extended-join and
         * account-notify only tell about changes from now on). */
        if (a->whox || irc_transport_whox(a->tp))
            irc_send_raw(a->sess, "WHO %s %%tna," IRC_WHOX_TOKEN, c->name);
        submit_join(a, c, nick, 1, 0);
        flood_pump(a);
        return;
    }
    c = chan_find(a, p[0]);
    if (!c || !c->joined)
        return;
    /* Unseen until now, the nick may have changed hands meanwhile. */
    if (!member_anywhere(a, nick))
        query_forget(a, nick);
    member_add(a, c, nick);
    /* extended-join: "JOIN #chan account :realname", "*" = none. */
    if (n >= 3) {
        const char *before = account_of(a, nick);

        if (before && irc_casecmp(a->casemap, before, p[1]))
            query_forget(a, nick);
        account_set(a, nick, p[1]);
    }
    submit_join(a, c, nick, 0,
                mask_list_match(a, a->cfg.bots, a->cfg.n_bots, origin));
}

void ev_part(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    struct irc_chan *c;
    char nick[IRC_NICK_MAX];

    (void)e;
    if (!origin || n < 1 || irc_prefix_nick(origin, nick, sizeof(nick)))
        return;
    c = chan_find(a, p[0]);
    if (!c)
        return;
    if (from_self(a, origin)) {
        c->joined = 0;
        chan_clear_members(c);
        c->join_at = now_ms(a) + 30000;
        return;
    }
    member_remove(a, c, nick);
    /* Out of sight: a later QUIT or NICK would go unseen. */
    if (!member_anywhere(a, nick))
        query_forget(a, nick);
}

void ev_quit(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    char nick[IRC_NICK_MAX];
    size_t i;

    (void)e;
    (void)p;
    (void)n;
    if (!origin || irc_prefix_nick(origin, nick, sizeof(nick)))
        return;
    for (i = 0; i < a->n_chans; i++)
        member_remove(a, &a->chans[i], nick);
    query_forget(a, nick);
}

void ev_kick(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    struct irc_chan *c;

    (void)e;
    (void)origin;
    if (n < 2)
        return;
    c = chan_find(a, p[0]);
    if (!c)
        return;
    if (irc_casecmp(a->casemap, p[1], a->nick)) {
        member_remove(a, c, p[1]);
        if (!member_anywhere(a, p[1]))
            query_forget(a, p[1]);
        return;
    }
    log_warn("irc %s: kicked from %s (%s)", a->cfg.name, c->name,
             n >= 3 ? p[2] : "");
    c->joined = 0;
    chan_clear_members(c);
    if (c->configured && a->cfg.rejoin_on_kick)
        c->join_at = now_ms(a) + (uint64_t)a->cfg.rejoin_delay_ms;
    else
        c->configured = 0;
}

void ev_mode(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n)
{
    /* MODE #chan +o-v nick1 nick2: walk the modes and their arguments. */
    struct irc_ad *a = ad_of(s);
    struct irc_chan *c;
    unsigned arg = 2;
    int plus = 1;
    const char *m;

    (void)e;
    (void)origin;
    if (n < 2 || !(c = chan_find(a, p[0])))
        return;
    for (m = p[1]; *m; m++) {
        int takes;

        if (*m == '+' || *m == '-') {
            plus = (*m == '+');
            continue;
        }
        if (strchr(a->prefix_modes, *m)) {
            if (arg < n && mode_is_op(a, *m)) {
                struct irc_member *mb = member_find(a, c, p[arg]);

                if (mb)
                    mb->op = plus;
            }
            arg++;
            continue;
        }
        takes = strchr(a->chanmodes[0], *m) || strchr(a->chanmodes[1], *m) ||
                (plus && strchr(a->chanmodes[2], *m));
        if (takes)
            arg++;
    }
}

void ev_invite(irc_session_t *s, const char *e, const char *origin,
               const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    struct irc_chan *c;

    (void)e;
    if (!origin || n < 2 || a->stopping)
        return;
    c = chan_find(a, p[1]);
    if (!(c && c->configured) &&
        !mask_list_match(a, a->cfg.admins, a->cfg.n_admins, origin)) {
        log_info("irc %s: ignored an invitation to %.64s from %.64s",
                 a->cfg.name, p[1], origin);
        return;
    }
    if (!c) {
        char tmp[IRC_CHANNEL_MAX + 1];

        snprintf(tmp, sizeof(tmp), "%s", p[1]);
        if (!irc_config_channel_valid(tmp) || !(c = chan_add(a, tmp)))
            return;
    }
    log_info("irc %s: invited to %s by %.64s", a->cfg.name, c->name,
             origin);
    join_channel(a, c);
}

/* The shared path of channel messages, queries and actions. */
static void handle_message(struct irc_ad *a, const char *origin,
                           const char *target, const char *raw, int action)
{
    char nick[IRC_NICK_MAX], text[IRC_TEXT_MAX], room[IRC_CHANNEL_MAX + 1];
    char body[IRC_TEXT_MAX + IRC_NICK_MAX + 4], sender[IRC_NICK_MAX + 1];
    char limit[256];
    const char *rest = NULL, *account;
    int is_chan, addressed, command;
    struct irc_chan *c = NULL;
    struct event ev;
    size_t len;

    /* While quitting nothing new is taken (the router is closed and the
     * send queue gone). */
    if (a->stopping || !origin || !target || !raw ||
        irc_prefix_nick(origin, nick, sizeof(nick)) || !nick[0])
        return;
    if (from_self(a, origin))
        return;
    is_chan = irc_is_channel(target, a->chantypes);
    if (is_chan) {
        c = chan_find(a, target);
        if (!c)
            return;
    }
    /* "Who is who" at the top of irc_members.c. */
    account = account_of(a, nick);
    if (account)
        snprintf(sender, sizeof(sender), "~%s", account);
    else
        snprintf(sender, sizeof(sender), "%s", nick);
    if (is_chan)
        snprintf(room, sizeof(room), "%s", c->folded);
    else if (account)
        snprintf(room, sizeof(room), "%s", sender);
    else
        snprintf(room, sizeof(room), "%s~%s", nick, query_token(a, nick));
    irc_casefold(a->casemap, room);
    log_debug("irc %s: message from %s in %s as %s", a->cfg.name, nick,
              room, sender);
    len = irc_utf8_from_irc(raw, strlen(raw), text, sizeof(text));
    (void)len;
    irc_strip_formatting(text);
    if (!is_chan) {
        addressed = 1;
        rest = text;
        while (*rest == ' ')
            rest++;
    } else if (irc_addressed(a->casemap, text, a->nick, &rest)) {
        addressed = 1;
    } else {
        rest = text;
        while (*rest == ' ')
            rest++;
        addressed = 0;
    }
    /* A bare "!command" is passed on unaddressed: the router answers the
     * commands it knows (!more among them, through irc_more) and leaves
     * other bots' commands alone. */
    command = !action && rest[0] == '!';
    if (!addressed && !command && !a->cfg.ambient_context)
        return;
    if (action)
        snprintf(body, sizeof(body), "* %s %s", nick, rest);
    else
        snprintf(body, sizeof(body), "%s", rest);
    if (!body[0])
        return;
    memset(&ev, 0, sizeof(ev));
    ev.kind = EVENT_MESSAGE;
    ev.platform = "irc";
    ev.account = a->cfg.name;
    ev.room = room;
    ev.sender = sender;
    ev.sender_name = nick;
    /* Without an account a /nick would otherwise start a fresh rate
     * budget; user@host survives it (people behind one shared host then
     * share a budget, the lesser harm). */
    if (!account &&
        irc_prefix_userhost(origin, limit + 1, sizeof(limit) - 1) ==
        PARLEY_OK) {
        limit[0] = '@';
        ev.limit_key = limit;
    }
    ev.text = body;
    ev.addressed = addressed;
    ev.ambient = !addressed && !command && a->cfg.ambient_context;
    ev.from_bot = mask_list_match(a, a->cfg.bots, a->cfg.n_bots, origin);
    ev.is_admin = mask_list_match(a, a->cfg.admins, a->cfg.n_admins, origin);
    if (!ev.is_admin && c) {
        struct irc_member *m = member_find(a, c, nick);

        ev.is_admin = m && m->op;
    }
    if (a->base.router)
        router_submit(a->base.router, &ev);
}

void ev_message(irc_session_t *s, const char *e, const char *origin,
                const char **p, unsigned n)
{
    (void)e;
    if (n >= 2)
        handle_message(ad_of(s), origin, p[0], p[1], 0);
}

void ev_action(irc_session_t *s, const char *e, const char *origin,
               const char **p, unsigned n)
{
    (void)e;
    if (n >= 2)
        handle_message(ad_of(s), origin, p[0], p[1], 1);
}

void ev_ctcp(irc_session_t *s, const char *e, const char *origin,
             const char **p, unsigned n)
{
    struct irc_ad *a = ad_of(s);
    char nick[IRC_NICK_MAX], reply[160], arg[64];
    char *v[1] = {reply};
    const char *req;

    (void)e;
    if (a->stopping || !origin || n < 1 ||
        irc_prefix_nick(origin, nick, sizeof(nick)) || !nick[0] ||
        irc_queue_len(a->queue) > IRC_CTCP_QUEUE_MAX)
        return;
    req = p[0];
    if (!strncasecmp(req, "VERSION", 7) && (!req[7] || req[7] == ' ')) {
        snprintf(reply, sizeof(reply), "\x01VERSION parley %s\x01",
                 PARLEY_VERSION);
    } else if (!strncasecmp(req, "PING", 4) && (!req[4] || req[4] == ' ')) {
        size_t i, w = 0;

        /* Echo the token, cleaned: it goes back out in a NOTICE. */
        for (i = 5; req[4] && req[i] && w + 1 < sizeof(arg) && i < 200; i++)
            if ((unsigned char)req[i] >= 0x20 && req[i] != 0x7f)
                arg[w++] = req[i];
        arg[w] = '\0';
        snprintf(reply, sizeof(reply), "\x01PING%s%s\x01", w ? " " : "",
                 arg);
    } else if (!strncasecmp(req, "TIME", 4) && (!req[4] || req[4] == ' ')) {
        char ts[64];
        time_t t = time(NULL);
        struct tm tm;

        gmtime_r(&t, &tm);
        strftime(ts, sizeof(ts), "%a, %d %b %Y %H:%M:%S +0000", &tm);
        snprintf(reply, sizeof(reply), "\x01TIME %s\x01", ts);
    } else if (!strncasecmp(req, "CLIENTINFO", 10)) {
        snprintf(reply, sizeof(reply),
                 "\x01" "CLIENTINFO ACTION CLIENTINFO PING TIME VERSION\x01");
    } else {
        return;
    }
    /* The line is built by hand because irc_split_text would (rightly)
     * remove the \x01 delimiters; everything inside was cleaned above. */
    {
        char asker[IRC_NICK_MAX];

        snprintf(asker, sizeof(asker), "%s", nick);
        irc_casefold(a->casemap, asker);
        /* Counted against the asker's share like an answer. */
        queue_lines(a, "NOTICE", nick, asker, v, 1, NULL);
    }
    flood_pump(a);
}
