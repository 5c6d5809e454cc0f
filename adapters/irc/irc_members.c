/*
 * What the IRC adapter knows of the people around it: the channels it is
 * in or invited to, their members with operator rank and services
 * account, the per-holder tokens of nick-keyed query rooms, and where a
 * room's answer goes.  No I/O: the events in irc_events.c keep it
 * current, irc_send.c asks it for targets.
 *
 * Who is who (issue 12): a nick is not a person, whoever takes it next
 * would inherit its private history and limits.  The account of each
 * channel member is tracked from extended-join, account-notify (ACCOUNT)
 * and WHOX replies; a person with an account is sender "~account" and
 * their query room is "~account" (nicks never contain '~', so neither
 * key can be a nick's).  A person
 * without a known account is sender = nick, and their query room is
 * "nick~token" with a random token the adapter keeps per nick while it
 * can see that the nick stays with one connection: it is forgotten on
 * QUIT, on a NICK away from or onto it, when the nick joins while
 * unseen in every shared channel, leaves the last shared channel, after
 * IRC_QUERY_IDLE_MS without a message, and on restart.  A new holder
 * gets a new token and so an empty history; an answer for a room whose
 * token is gone is dropped rather than sent to the new holder.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "irc_private.h"
#include "random.h"
#include "status.h"

struct irc_chan *chan_find(struct irc_ad *a, const char *name)
{
    size_t i;

    for (i = 0; i < a->n_chans; i++)
        if (!irc_casecmp(a->casemap, a->chans[i].name, name))
            return &a->chans[i];
    return NULL;
}

struct irc_chan *chan_add(struct irc_ad *a, const char *name)
{
    struct irc_chan *c = chan_find(a, name);

    if (c)
        return c;
    if (a->n_chans == IRC_MAX_CHANNELS ||
        strlen(name) > IRC_CHANNEL_MAX)
        return NULL;
    c = &a->chans[a->n_chans++];
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "%s", name);
    snprintf(c->folded, sizeof(c->folded), "%s", name);
    irc_casefold(a->casemap, c->folded);
    return c;
}

void chan_clear_members(struct irc_chan *c)
{
    free(c->m);
    c->m = NULL;
    c->n_m = c->cap_m = 0;
}

struct irc_member *member_find(struct irc_ad *a, struct irc_chan *c,
                               const char *nick)
{
    size_t i;

    for (i = 0; i < c->n_m; i++)
        if (!irc_casecmp(a->casemap, c->m[i].nick, nick))
            return &c->m[i];
    return NULL;
}

struct irc_member *member_add(struct irc_ad *a, struct irc_chan *c,
                              const char *nick)
{
    struct irc_member *m = member_find(a, c, nick);

    if (m)
        return m;
    if (strlen(nick) >= IRC_NICK_MAX || c->n_m >= IRC_MAX_MEMBERS)
        return NULL;
    if (c->n_m == c->cap_m) {
        size_t cap = c->cap_m ? c->cap_m * 2 : 16;
        struct irc_member *grown = realloc(c->m, cap * sizeof(*grown));

        if (!grown)
            return NULL;
        c->m = grown;
        c->cap_m = cap;
    }
    m = &c->m[c->n_m++];
    snprintf(m->nick, sizeof(m->nick), "%s", nick);
    irc_casefold(a->casemap, m->nick);
    m->op = 0;
    m->account[0] = '\0';
    return m;
}

void member_remove(struct irc_ad *a, struct irc_chan *c,
                   const char *nick)
{
    struct irc_member *m = member_find(a, c, nick);

    if (!m)
        return;
    *m = c->m[--c->n_m];
}

/* The account of nick from any shared channel, or NULL. */
const char *account_of(struct irc_ad *a, const char *nick)
{
    size_t i;

    for (i = 0; i < a->n_chans; i++) {
        struct irc_member *m = member_find(a, &a->chans[i], nick);

        if (m && m->account[0])
            return m->account;
    }
    return NULL;
}

/* 1 when nick is a member of any channel the bot tracks. */
int member_anywhere(struct irc_ad *a, const char *nick)
{
    size_t i;

    for (i = 0; i < a->n_chans; i++)
        if (member_find(a, &a->chans[i], nick))
            return 1;
    return 0;
}

/* The current nick of a folded account, or NULL. */
const char *nick_of_account(struct irc_ad *a, const char *account)
{
    size_t i, j;

    for (i = 0; i < a->n_chans; i++)
        for (j = 0; j < a->chans[i].n_m; j++)
            if (a->chans[i].m[j].account[0] &&
                !irc_casecmp(a->casemap, a->chans[i].m[j].account, account))
                return a->chans[i].m[j].nick;
    return NULL;
}

/* Record nick's account ("*", "0" or "" = none) in every shared channel.
 * An account too long for the key is treated as none. */
void account_set(struct irc_ad *a, const char *nick,
                 const char *account)
{
    size_t i;
    int none = !account || !account[0] || !strcmp(account, "*") ||
               !strcmp(account, "0") || strlen(account) + 1 >= IRC_NICK_MAX ||
               strpbrk(account, " ,\r\n\a\x01~");

    for (i = 0; i < a->n_chans; i++) {
        struct irc_member *m = member_find(a, &a->chans[i], nick);

        if (!m)
            continue;
        if (none) {
            m->account[0] = '\0';
        } else {
            snprintf(m->account, sizeof(m->account), "%s", account);
            irc_casefold(a->casemap, m->account);
        }
    }
}

static struct irc_query *query_find(struct irc_ad *a, const char *nick)
{
    size_t i;

    for (i = 0; i < IRC_QUERY_SLOTS; i++)
        if (a->query[i].nick[0] &&
            !irc_casecmp(a->casemap, a->query[i].nick, nick))
            return &a->query[i];
    return NULL;
}

/* The nick changed hands, or may have: its next holder starts afresh. */
void query_forget(struct irc_ad *a, const char *nick)
{
    struct irc_query *q = query_find(a, nick);

    if (q)
        memset(q, 0, sizeof(*q));
}

/* The token of nick's current holder, made when there is none (or it
 * idled out); the least recently used slot is reused when all are
 * taken, which only costs that person their short history. */
const char *query_token(struct irc_ad *a, const char *nick)
{
    struct irc_query *q = query_find(a, nick);
    uint64_t now = now_ms(a);
    unsigned char raw[8];
    size_t i;

    if (q && now - q->seen > IRC_QUERY_IDLE_MS)
        memset(q, 0, sizeof(*q));
    else if (q) {
        q->seen = now;
        return q->tok;
    }
    q = &a->query[0];
    for (i = 0; i < IRC_QUERY_SLOTS; i++) {
        if (!a->query[i].nick[0]) {
            q = &a->query[i];
            break;
        }
        if (a->query[i].seen < q->seen)
            q = &a->query[i];
    }
    if (random_bytes(raw, sizeof(raw)) != PARLEY_OK) {
        uint64_t r = random_u64();

        memcpy(raw, &r, sizeof(raw));
    }
    snprintf(q->nick, sizeof(q->nick), "%s", nick);
    irc_casefold(a->casemap, q->nick);
    for (i = 0; i < sizeof(raw); i++)
        snprintf(q->tok + 2 * i, 3, "%02x", raw[i]);
    q->seen = now;
    return q->tok;
}

/*
 * Where a room's answer goes: a channel as is; "~account" to the nick
 * that has the account now; "nick~token" to nick while the token is
 * still its holder's; anything else is a plain nick.  Returns 0, or -1
 * when nobody the answer is meant for can be reached.
 */
int room_target(struct irc_ad *a, const char *room, char *out,
                size_t outlen)
{
    const char *tilde = strchr(room, '~');

    if (irc_is_channel(room, a->chantypes) || !tilde) {
        snprintf(out, outlen, "%s", room);
        return 0;
    }
    if (tilde == room) {
        const char *nick = nick_of_account(a, room + 1);

        if (!nick)
            return -1;
        snprintf(out, outlen, "%s", nick);
        return 0;
    }
    {
        char nick[IRC_NICK_MAX];
        struct irc_query *q;

        if ((size_t)(tilde - room) >= sizeof(nick))
            return -1;
        snprintf(nick, sizeof(nick), "%.*s", (int)(tilde - room), room);
        q = query_find(a, nick);
        if (!q || strcmp(q->tok, tilde + 1))
            return -1;
        snprintf(out, outlen, "%s", nick);
        return 0;
    }
}

/* 1 when c ranks at or above op in a PREFIX list (ISUPPORT lists ranks
 * highest first); without op in the list, only op itself counts. */
static int ranks_as_op(const char *list, char c, char op)
{
    const char *at = strchr(list, op);
    const char *p = strchr(list, c);

    if (!p || c == '\0')
        return 0;
    if (!at)
        return c == op;
    return p <= at;
}

/* 1 when a PREFIX symbol means channel operator or above. */
int sym_is_op(struct irc_ad *a, char sym)
{
    return ranks_as_op(a->prefix_syms, sym, '@');
}

/* 1 when a PREFIX mode letter means channel operator or above. */
int mode_is_op(struct irc_ad *a, char mode)
{
    return ranks_as_op(a->prefix_modes, mode, 'o');
}
