/*
 * The console adapter: one person talking to the bot from a terminal, in
 * room "console".  Lines are read from stdin (a terminal, a pipe or a
 * file) on the loop and answered on stdout, so `parley --console` is the
 * quickest way to try a configuration.  At end of input the adapter
 * reports EOF; main waits for the answers still in flight and exits.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter.h"
#include "config.h"
#include "console.h"
#include "event.h"
#include "log.h"
#include "loop.h"
#include "router.h"
#include "status.h"

/* Longest input line; the rest of a longer line is dropped with a note,
 * since the router would cut it anyway (ROUTER_TEXT_MAX). */
#define CONSOLE_LINE_MAX (16 * 1024)

struct console {
    struct adapter ad;
    struct loop_reader *in;     /* stdin, from start until stop */
    char line[CONSOLE_LINE_MAX];
    size_t len;
    int overflow;               /* dropping the rest of a long line */
    int eof;
    char user[64];
    unsigned long seq;
    console_eof_fn *on_eof;
    void *eof_privdata;
};

static void console_emit(struct console *c)
{
    struct event ev;

    /* Strip a CR left by CRLF input. */
    if (c->len > 0 && c->line[c->len - 1] == '\r')
        c->len--;
    c->line[c->len] = '\0';
    if (c->len == 0)
        return;
    memset(&ev, 0, sizeof(ev));
    ev.kind = EVENT_MESSAGE;
    ev.platform = "console";
    ev.account = c->ad.account;
    ev.room = "console";
    ev.sender = c->user;
    ev.sender_name = c->user;
    ev.text = c->line;
    ev.addressed = 1;       /* everything typed here is for the bot */
    ev.is_admin = 1;        /* whoever has the terminal runs the bot */
    c->seq++;
    router_submit(c->ad.router, &ev);
}

/* Split buf into lines; complete lines go to the router at once. */
static void console_feed(struct console *c, const char *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            if (c->overflow)
                log_warn("console: line longer than %d bytes cut",
                         CONSOLE_LINE_MAX - 1);
            console_emit(c);
            c->len = 0;
            c->overflow = 0;
        } else if (c->len + 1 < sizeof(c->line)) {
            c->line[c->len++] = buf[i];
        } else {
            c->overflow = 1;
        }
    }
}

static void console_finish(struct console *c)
{
    if (c->eof)
        return;
    if (c->len > 0)
        console_emit(c);
    c->len = 0;
    c->eof = 1;
    c->ad.connected = 0;
    if (c->on_eof)
        c->on_eof(c->eof_privdata);
}

/* A chunk of stdin, or its end (loop.h). */
static void console_on_read(const char *data, size_t len, int status,
                            void *privdata)
{
    struct console *c = privdata;

    if (data) {
        console_feed(c, data, len);
        return;
    }
    (void)status;               /* a read error was logged by the loop */
    console_finish(c);
}

/* Someone at a terminal has just "entered the room": the router greets
 * them if the room has no conversation yet.  Piped input (scripts,
 * tests) gets no greeting, only answers. */
static void console_greet(struct console *c)
{
    struct event ev;

    memset(&ev, 0, sizeof(ev));
    ev.kind = EVENT_JOIN;
    ev.platform = "console";
    ev.account = c->ad.account;
    ev.room = "console";
    ev.sender = c->ad.account;
    ev.self = 1;
    router_submit(c->ad.router, &ev);
}

static int console_start(struct adapter *ad)
{
    struct console *c = (struct console *)ad;
    char err[96];

    if (loop_reader_open(ad->loop, STDIN_FILENO, console_on_read, c, &c->in,
                         err, sizeof(err)) != PARLEY_OK) {
        snprintf(ad->errstr, sizeof(ad->errstr), "cannot read stdin: %s",
                 err);
        return PARLEY_ERR_IO;
    }
    ad->connected = 1;
    if (isatty(STDIN_FILENO))
        console_greet(c);
    return PARLEY_OK;
}

/* Write text with the C0 controls other than newline and tab, and DEL,
 * shown as '?': the model's answer must not drive the terminal (escape
 * sequences can retitle it, move the cursor or rewrite earlier lines). */
static int console_put_text(FILE *out, const char *text)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        int ch = (*p < 0x20 && *p != '\n' && *p != '\t') || *p == 0x7f ?
                 '?' : *p;

        if (putc(ch, out) == EOF)
            return -1;
    }
    return 0;
}

/* Replies go to stdout with the bot's name in front, one write each, so a
 * script reading our output sees whole answers. */
static int console_send(struct adapter *ad, const char *room,
                        const struct reply *reply,
                        adapter_send_done_fn *done, void *privdata)
{
    struct console *c = (struct console *)ad;
    const char *name = ad->account ? ad->account : "parley";

    (void)room;
    (void)c;
    if (fprintf(stdout, "%s> ", name) < 0 ||
        console_put_text(stdout, reply->text) != 0 ||
        putc('\n', stdout) == EOF || fflush(stdout) != 0) {
        snprintf(ad->errstr, sizeof(ad->errstr), "cannot write stdout: %s",
                 strerror(errno));
        return PARLEY_ERR_IO;
    }
    done(PARLEY_OK, privdata);
    return PARLEY_OK;
}

static void console_stop(struct adapter *ad)
{
    struct console *c = (struct console *)ad;

    ad->connected = 0;
    /* A file read in flight completes in the background; the reader then
     * goes without calling us. */
    loop_reader_free(c->in);
    c->in = NULL;
}

static void console_free(struct adapter *ad)
{
    struct console *c = (struct console *)ad;

    free(ad->account);
    free(c);
}

static const struct adapter_ops console_ops = {
    .type = "console",
    .start = console_start,
    .send = console_send,
    .typing = NULL,
    .stop = console_stop,
    .free = console_free,
};

int console_adapter_create(struct adapter **out,
                           const struct adapter_env *env, void *setting,
                           char *err, size_t errlen)
{
    struct console *c = calloc(1, sizeof(*c));
    const char *user = getenv("USER");

    (void)setting;
    *out = NULL;
    if (!c) {
        snprintf(err, errlen, "console: out of memory");
        return PARLEY_ERR_OOM;
    }
    c->ad.ops = &console_ops;
    c->ad.loop = env->loop;
    c->ad.account = strdup(env->cfg->bot.name ? env->cfg->bot.name :
                           "parley");
    snprintf(c->user, sizeof(c->user), "%s", user && *user ? user : "you");
    if (!c->ad.account) {
        free(c);
        snprintf(err, errlen, "console: out of memory");
        return PARLEY_ERR_OOM;
    }
    *out = &c->ad;
    return PARLEY_OK;
}

/* Only the common keys ("type", greet_*): the console has no settings of
 * its own. */
static const char *const console_keys[] = { NULL };

const struct adapter_desc console_adapter_desc = {
    .name = "console",
    .keys = console_keys,
    .create = console_adapter_create,
    .caps = ADAPTER_CAP_SINGLE,
};

void console_on_eof(struct adapter *ad, console_eof_fn *fn, void *privdata)
{
    struct console *c = (struct console *)ad;

    c->on_eof = fn;
    c->eof_privdata = privdata;
}

int console_at_eof(const struct adapter *ad)
{
    return ((const struct console *)ad)->eof;
}
