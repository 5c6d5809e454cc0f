/*
 * Outgoing text (see irc_format.h).  The Markdown pass never makes text
 * longer, so it writes into one buffer the size of its input; the split
 * pass first cleans and re-encodes the whole reply, then cuts it.
 */
#include "irc_format.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "irc_text.h"
#include "status.h"

void irc_lines_free(struct irc_lines *l)
{
    size_t i;

    for (i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* Output cursor of the Markdown pass; capacity is never exceeded because
 * every rule writes at most as many bytes as it consumes. */
struct md_out {
    char *buf;
    size_t pos;
};

static void md_put(struct md_out *o, const char *s, size_t n)
{
    memcpy(o->buf + o->pos, s, n);
    o->pos += n;
}

static int is_word(int c)
{
    return c >= 0x80 || isalnum(c);
}

/* Length of the run of c starting at s. */
static size_t run_len(const char *s, size_t n, char c)
{
    size_t i = 0;

    while (i < n && s[i] == c)
        i++;
    return i;
}

/* Inline rules for one line s[0..n). */
static void md_inline(struct md_out *o, const char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        char c = s[i];
        int prev = i > 0 ? (unsigned char)s[i - 1] : ' ';

        if (c == '\\' && i + 1 < n && ispunct((unsigned char)s[i + 1])) {
            md_put(o, s + i + 1, 1);
            i += 2;
            continue;
        }
        if (c == '`') {
            size_t k = run_len(s + i, n - i, '`'), j;

            /* Find the closing run of the same length. */
            for (j = i + k; j < n; j++) {
                size_t m = run_len(s + j, n - j, '`');

                if (m == k)
                    break;
                if (m > 0)
                    j += m - 1;
            }
            if (j < n) {
                const char *a = s + i + k;
                size_t len = j - (i + k);

                /* `` ` `` style padding is one space on each side. */
                if (len >= 2 && a[0] == ' ' && a[len - 1] == ' ') {
                    a++;
                    len -= 2;
                }
                md_put(o, a, len);
                i = j + k;
            } else {
                md_put(o, s + i, k);
                i += k;
            }
            continue;
        }
        if ((c == '!' && i + 1 < n && s[i + 1] == '[') || c == '[') {
            size_t t0 = i + (c == '!' ? 2 : 1), t1, u0, u1;
            const char *close = memchr(s + t0, ']', n - t0);

            if (close && (size_t)(close - s) + 1 < n && close[1] == '(') {
                const char *rp;

                t1 = (size_t)(close - s);
                u0 = t1 + 2;
                rp = memchr(s + u0, ')', n - u0);
                if (rp) {
                    u1 = (size_t)(rp - s);
                    if (t1 - t0 == u1 - u0 &&
                        !memcmp(s + t0, s + u0, t1 - t0)) {
                        md_put(o, s + u0, u1 - u0);
                    } else if (t1 == t0) {
                        md_put(o, s + u0, u1 - u0);
                    } else {
                        md_inline(o, s + t0, t1 - t0);
                        md_put(o, " (", 2);
                        md_put(o, s + u0, u1 - u0);
                        md_put(o, ")", 1);
                    }
                    i = u1 + 1;
                    continue;
                }
            }
            md_put(o, s + i, 1);
            i++;
            continue;
        }
        if ((c == '*' || c == '_' || c == '~') && i + 1 < n &&
            s[i + 1] == c) {
            size_t k = run_len(s + i, n - i, c);
            int next = i + k < n ? (unsigned char)s[i + k] : ' ';

            /* A run between two word characters is text (a__b, 2**8). */
            if (is_word(prev) && is_word(next))
                md_put(o, s + i, k);
            i += k;
            continue;
        }
        if (c == '*' || c == '_') {
            int next = i + 1 < n ? (unsigned char)s[i + 1] : ' ';
            int opening = !is_word(prev) && next != ' ' && next != c;
            int closing = prev != ' ' && !is_word(next);

            if ((opening || closing) && !(is_word(prev) && is_word(next))) {
                i++;
                continue;
            }
        }
        md_put(o, s + i, 1);
        i++;
    }
}

/* A thematic break: three or more of one of - * _ and nothing else. */
static int md_is_rule(const char *s, size_t n)
{
    size_t i, count = 0;
    char c = 0;

    for (i = 0; i < n; i++) {
        if (s[i] == ' ')
            continue;
        if (s[i] != '-' && s[i] != '*' && s[i] != '_')
            return 0;
        if (c && s[i] != c)
            return 0;
        c = s[i];
        count++;
    }
    return count >= 3;
}

char *irc_markdown_to_plain(const char *md)
{
    size_t len = strlen(md);
    struct md_out o;
    const char *line = md;
    int fence = 0;

    o.buf = malloc(len + 1);
    if (!o.buf)
        return NULL;
    o.pos = 0;
    while (*line) {
        const char *eol = strchr(line, '\n');
        size_t n = eol ? (size_t)(eol - line) : strlen(line);
        size_t ind = 0;
        const char *s;

        while (ind < n && ind < 4 && line[ind] == ' ')
            ind++;
        s = line + ind;
        if (n - ind >= 3 && (!strncmp(s, "```", 3) || !strncmp(s, "~~~", 3))) {
            fence = !fence;
        } else if (fence) {
            md_put(&o, line, n);
            md_put(&o, "\n", 1);
        } else if (md_is_rule(s, n - ind) && n - ind > 0) {
            /* dropped */
        } else {
            size_t h = run_len(s, n - ind, '#');

            if (h >= 1 && h <= 6 && (h == n - ind || s[h] == ' ')) {
                s += h;
                while (s < line + n && *s == ' ')
                    s++;
            } else if (n - ind >= 2 && (s[0] == '*' || s[0] == '-' ||
                                        s[0] == '+') && s[1] == ' ') {
                md_put(&o, line, ind);
                md_put(&o, "- ", 2);
                s += 2;
            } else {
                md_put(&o, line, ind);
            }
            md_inline(&o, s, (size_t)(line + n - s));
            md_put(&o, "\n", 1);
        }
        line += n;
        if (*line == '\n')
            line++;
    }
    /* Drop the final newline we added. */
    while (o.pos > 0 && o.buf[o.pos - 1] == '\n')
        o.pos--;
    o.buf[o.pos] = '\0';
    return o.buf;
}

size_t irc_text_budget(const char *cmd, const char *nick, size_t userlen,
                       size_t hostlen, const char *target)
{
    size_t over;

    if (userlen == 0)
        userlen = IRC_DEFAULT_USERLEN + 1;
    if (hostlen == 0)
        hostlen = IRC_DEFAULT_HOSTLEN;
    /* ":" nick "!" user "@" host " " cmd " " target " :" CRLF */
    over = 1 + strlen(nick) + 1 + userlen + 1 + hostlen + 1 + strlen(cmd) +
           1 + strlen(target) + 2 + 2;
    if (over >= 512)
        return 0;
    return 512 - over;
}

/* Clean text for IRC: valid UTF-8, no control bytes but '\n'.  Returns a
 * malloc'd string or NULL. */
static char *split_clean(const char *text)
{
    size_t len = strlen(text), cap, n, i, w = 0;
    char *utf, *out;

    if (len > IRC_REPLY_MAX)
        len = IRC_REPLY_MAX;
    cap = 2 * len + 1;
    utf = malloc(cap);
    if (!utf)
        return NULL;
    n = irc_utf8_from_irc(text, len, utf, cap);
    out = utf;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)utf[i];

        if (c == '\t')
            out[w++] = ' ';
        else if (c == '\n' || (c >= 0x20 && c != 0x7f))
            out[w++] = (char)c;
        /* CR, \x01 (CTCP), other C0 controls and DEL are dropped */
    }
    out[w] = '\0';
    return out;
}

static int lines_push(struct irc_lines *out, const char *s, size_t n)
{
    char **v, *line;

    if (out->n >= IRC_REPLY_LINES_MAX)
        return PARLEY_OK;
    line = malloc(n + 1);
    if (!line)
        return PARLEY_ERR_OOM;
    memcpy(line, s, n);
    line[n] = '\0';
    v = realloc(out->v, (out->n + 1) * sizeof(*v));
    if (!v) {
        free(line);
        return PARLEY_ERR_OOM;
    }
    out->v = v;
    out->v[out->n++] = line;
    return PARLEY_OK;
}

int irc_split_text(const char *text, size_t budget, struct irc_lines *out)
{
    char *clean;
    const char *p;
    int result = PARLEY_OK;

    out->v = NULL;
    out->n = 0;
    if (budget < 4)
        return PARLEY_ERR_TOO_LARGE;
    clean = split_clean(text);
    if (!clean)
        return PARLEY_ERR_OOM;
    p = clean;
    while (*p && result == PARLEY_OK) {
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        const char *next = p + n + (eol ? 1 : 0);

        while (n > 0 && p[n - 1] == ' ')
            n--;
        while (n > budget && result == PARLEY_OK) {
            size_t cut = budget, sp;

            while (cut > 0 && ((unsigned char)p[cut] & 0xc0) == 0x80)
                cut--;
            /* Prefer a space, unless it leaves a stub of a line. */
            for (sp = cut; sp > 0 && p[sp] != ' '; sp--)
                ;
            if (sp > budget / 3)
                cut = sp;
            {
                size_t keep = cut;

                while (keep > 0 && p[keep - 1] == ' ')
                    keep--;
                if (keep > 0)
                    result = lines_push(out, p, keep);
            }
            p += cut;
            n -= cut;
            while (n > 0 && *p == ' ') {
                p++;
                n--;
            }
        }
        if (result == PARLEY_OK && n > 0) {
            size_t i;

            for (i = 0; i < n && p[i] == ' '; i++)
                ;
            if (i < n)
                result = lines_push(out, p, n);
        }
        p = next;
    }
    free(clean);
    if (result != PARLEY_OK)
        irc_lines_free(out);
    return result;
}
