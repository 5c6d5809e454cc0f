/*
 * Incoming text helpers (see irc_text.h).  UTF-8 is decoded by hand: mblen
 * and friends depend on the process locale, which a daemon does not
 * control.
 */
#include "irc_text.h"

#include <ctype.h>
#include <string.h>

size_t irc_strip_formatting(char *s)
{
    size_t r = 0, w = 0;

    while (s[r]) {
        unsigned char c = (unsigned char)s[r];

        if (c == 0x03) {
            /* \x03[N[N][,N[N]]]: the comma belongs to the code only when
             * a digit follows it, as in mIRC itself. */
            r++;
            if (isdigit((unsigned char)s[r])) {
                r++;
                if (isdigit((unsigned char)s[r]))
                    r++;
                if (s[r] == ',' && isdigit((unsigned char)s[r + 1])) {
                    r += 2;
                    if (isdigit((unsigned char)s[r]))
                        r++;
                }
            }
            continue;
        }
        if (c == 0x04) {
            size_t i;

            r++;
            for (i = 0; i < 6 && isxdigit((unsigned char)s[r + i]); i++)
                ;
            if (i == 6) {
                r += 6;
                if (s[r] == ',') {
                    for (i = 0; i < 6 && isxdigit((unsigned char)s[r + 1 + i]);
                         i++)
                        ;
                    if (i == 6)
                        r += 7;
                }
            }
            continue;
        }
        if (c == 0x02 || c == 0x0f || c == 0x11 || c == 0x16 ||
            c == 0x1d || c == 0x1e || c == 0x1f) {
            r++;
            continue;
        }
        s[w++] = s[r++];
    }
    s[w] = '\0';
    return w;
}

size_t irc_utf8_seq_len(const unsigned char *s, size_t len)
{
    unsigned char c;
    size_t n, i;
    unsigned long cp;

    if (len == 0)
        return 0;
    c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

int irc_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, n;

    while (i < len) {
        n = irc_utf8_seq_len(p + i, len - i);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}

size_t irc_utf8_from_irc(const char *in, size_t inlen, char *out,
                         size_t outlen)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t i = 0, w = 0, n;
    unsigned char tmp[2];
    const unsigned char *src;

    if (outlen == 0)
        return 0;
    while (i < inlen) {
        if (p[i] == 0) {
            i++;
            continue;
        }
        n = irc_utf8_seq_len(p + i, inlen - i);
        if (n > 0) {
            src = p + i;
            i += n;
        } else {
            /* Latin-1: the byte is the code point. */
            tmp[0] = (unsigned char)(0xc0 | (p[i] >> 6));
            tmp[1] = (unsigned char)(0x80 | (p[i] & 0x3f));
            src = tmp;
            n = 2;
            i++;
        }
        if (w + n >= outlen)
            break;
        memcpy(out + w, src, n);
        w += n;
    }
    out[w] = '\0';
    return w;
}

int irc_casemap_parse(const char *name, enum irc_casemap *out)
{
    if (!strcmp(name, "rfc1459")) {
        *out = IRC_CASEMAP_RFC1459;
    } else if (!strcmp(name, "strict-rfc1459")) {
        *out = IRC_CASEMAP_STRICT;
    } else if (!strcmp(name, "ascii")) {
        *out = IRC_CASEMAP_ASCII;
    } else {
        *out = IRC_CASEMAP_RFC1459;
        return -1;
    }
    return 0;
}

int irc_casefold_char(enum irc_casemap cm, int c)
{
    if (c >= 'A' && c <= 'Z')
        return c + ('a' - 'A');
    if (cm == IRC_CASEMAP_ASCII)
        return c;
    if (c == '[' || c == ']' || c == '\\')
        return c + ('{' - '[');
    if (cm == IRC_CASEMAP_RFC1459 && c == '^')
        return '~';
    return c;
}

void irc_casefold(enum irc_casemap cm, char *s)
{
    for (; *s; s++)
        *s = (char)irc_casefold_char(cm, (unsigned char)*s);
}

int irc_casecmp(enum irc_casemap cm, const char *a, const char *b)
{
    int ca, cb;

    for (;; a++, b++) {
        ca = irc_casefold_char(cm, (unsigned char)*a);
        cb = irc_casefold_char(cm, (unsigned char)*b);
        if (ca != cb || ca == 0)
            return ca - cb;
    }
}

int irc_addressed(enum irc_casemap cm, const char *text, const char *nick,
                  const char **rest)
{
    size_t n = strlen(nick), i;
    const char *p = text;

    if (n == 0)
        return 0;
    while (*p == ' ' || *p == '\t')
        p++;
    for (i = 0; i < n; i++)
        if (p[i] == '\0' || irc_casefold_char(cm, (unsigned char)p[i]) !=
                            irc_casefold_char(cm, (unsigned char)nick[i]))
            return 0;
    p += n;
    if (*p != '\0' && *p != ':' && *p != ',' && *p != ' ')
        return 0;
    if (*p == ':' || *p == ',')
        p++;
    while (*p == ' ' || *p == '\t')
        p++;
    if (rest)
        *rest = p;
    return 1;
}

int irc_mask_match(enum irc_casemap cm, const char *mask, const char *str)
{
    /* Iterative glob with one backtrack point: linear-ish, no recursion,
     * so a hostile mask cannot blow the stack. */
    const char *star = NULL, *resume = NULL;

    while (*str) {
        if (*mask == '*') {
            star = mask++;
            resume = str;
        } else if (*mask == '?' ||
                   (*mask && irc_casefold_char(cm, (unsigned char)*mask) ==
                             irc_casefold_char(cm, (unsigned char)*str))) {
            mask++;
            str++;
        } else if (star) {
            mask = star + 1;
            str = ++resume;
        } else {
            return 0;
        }
    }
    while (*mask == '*')
        mask++;
    return *mask == '\0';
}

int irc_is_channel(const char *name, const char *chantypes)
{
    return name[0] != '\0' && strchr(chantypes, name[0]) != NULL;
}
