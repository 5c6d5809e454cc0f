/*
 * The error report of config_load: every problem becomes one line
 * "FILE:LINE: key.path: message", kept until the end of the load and then
 * sorted by file and line, because checks run group by group and across
 * groups while an operator reads a file top to bottom.  Adapter validate
 * hooks write finished lines of the same shape, which join the same list.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_loader.h"

#define CONFIG_MORE_ERRORS   "\n(more problems not shown)"

/* Problems kept for sorting; a file with more is hopeless anyway, and
 * the count still makes the load fail. */
#define CONFIG_ERRORS_MAX    1000

/* Dotted path of a setting: "llm.model", "rooms[2].room". */
void
config_key_path(const config_setting_t *s, char *buf, size_t len)
{
    const config_setting_t *parent;
    size_t used;
    int n;

    buf[0] = '\0';
    if (!s || config_setting_is_root(s))
        return;
    parent = config_setting_parent(s);
    config_key_path(parent, buf, len);
    used = strlen(buf);
    if (config_setting_name(s))
        n = snprintf(buf + used, len - used, "%s%s", used ? "." : "",
                     config_setting_name(s));
    else
        n = snprintf(buf + used, len - used, "[%d]",
                     config_setting_index(s));
    (void)n;    /* a truncated path is still useful */
}

/* Record one finished line.  Lines are kept until config_errors_flush
 * so that they can be sorted by file and line: checks run group by group
 * and across groups, but an operator reads a file top to bottom. */
static void
config_error_append(struct config_errors *e, const char *file,
                    unsigned line, const char *text)
{
    struct config_error_line *l;

    e->count++;
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 16;

        if (e->n >= CONFIG_ERRORS_MAX) {
            e->lost = 1;
            return;
        }
        l = realloc(e->lines, cap * sizeof(*l));
        if (!l) {
            e->lost = 1;
            return;
        }
        e->lines = l;
        e->cap = cap;
    }
    l = &e->lines[e->n];
    l->text = strdup(text);
    l->file = strdup(file ? file : "");
    if (!l->text || !l->file) {
        free(l->text);
        free(l->file);
        e->lost = 1;
        return;
    }
    l->line = line;
    l->seq = e->n;
    e->n++;
}

static int
config_error_cmp(const void *a, const void *b)
{
    const struct config_error_line *x = a, *y = b;
    int c = strcmp(x->file, y->file);

    if (c)
        return c;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Write the sorted lines into the caller's buffer, whole lines only, with
 * CONFIG_MORE_ERRORS when some do not fit (or a first line cut to fit a
 * tiny buffer); then free them. */
void
config_errors_flush(struct config_errors *e)
{
    size_t i, used = 0, reserve = sizeof(CONFIG_MORE_ERRORS);
    int full = 0;

    if (e->n > 1)
        qsort(e->lines, e->n, sizeof(*e->lines), config_error_cmp);
    for (i = 0; i < e->n && e->buf && e->len > 0 && !full; i++) {
        const char *line = e->lines[i].text;
        size_t n = strlen(line);

        if (used == 0 && n + 1 > e->len) {
            snprintf(e->buf, e->len, "%s", line);
            used = strlen(e->buf);
            full = 1;
            break;
        }
        /* +1 for the separating newline. */
        if (used + (used ? 1 : 0) + n + reserve > e->len) {
            full = 1;
            break;
        }
        if (used)
            e->buf[used++] = '\n';
        memcpy(e->buf + used, line, n + 1);
        used += n;
    }
    if ((full || e->lost) && e->buf && used > 0 && used + reserve <= e->len)
        memcpy(e->buf + used, CONFIG_MORE_ERRORS, reserve);
    for (i = 0; i < e->n; i++) {
        free(e->lines[i].text);
        free(e->lines[i].file);
    }
    free(e->lines);
    e->lines = NULL;
    e->n = e->cap = 0;
}

/* The name to print for a file libconfig reports: @include'd files come
 * back as written in the directive, relative to the including file's
 * directory (the include dir), not to the working directory. */
static void
config_error_file_name(const struct config_errors *e, const char *file,
                       char *buf, size_t len)
{
    if (!file)
        file = e->path;
    if (e->dir && file[0] != '/' && strcmp(file, e->path) != 0)
        snprintf(buf, len, "%s%s", e->dir, file);
    else
        snprintf(buf, len, "%s", file);
}

void
config_error_add(struct config_errors *e, const config_setting_t *s,
                 const char *fmt, ...)
{
    char line[CONFIG_ERR_LINE_MAX];
    char key[CONFIG_KEY_PATH_MAX];
    char msg[CONFIG_ERR_LINE_MAX];
    char file[CONFIG_ERR_LINE_MAX];
    unsigned lineno = 0;
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r < 0)
        snprintf(msg, sizeof(msg), "invalid value");

    config_error_file_name(e, s ? config_setting_source_file(s) : NULL,
                           file, sizeof(file));
    if (s && config_setting_source_line(s) > 0) {
        lineno = config_setting_source_line(s);
        config_key_path(s, key, sizeof(key));
        r = snprintf(line, sizeof(line), "%s:%u: %s%s%s", file, lineno,
                     key, key[0] ? ": " : "", msg);
    } else {
        r = snprintf(line, sizeof(line), "%s: %s", file, msg);
    }
    /* A cut line still names the place; keep it.  A failed one must
     * still count as an error. */
    config_error_append(e, file, lineno,
                        r < 0 ? "invalid configuration" : line);
}

void
config_error_at(struct config_errors *e, const char *file, int line,
                const char *fmt, ...)
{
    char buf[CONFIG_ERR_LINE_MAX];
    char msg[CONFIG_ERR_LINE_MAX];
    char name[CONFIG_ERR_LINE_MAX];
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r < 0)
        snprintf(msg, sizeof(msg), "invalid input");
    config_error_file_name(e, file, name, sizeof(name));
    r = snprintf(buf, sizeof(buf), "%s:%d: %s", name, line, msg);
    config_error_append(e, name, line > 0 ? (unsigned)line : 0,
                        r < 0 ? "invalid configuration" : buf);
}

/* A message that belongs to a key the file does not contain (a check
 * across keys whose values came from the defaults). */
void
config_error_key(struct config_errors *e, const config_setting_t *s,
                 const char *key, const char *msg)
{
    if (s)
        config_error_add(e, s, "%s", msg);
    else
        config_error_add(e, NULL, "%s: %s", key, msg);
}


/*
 * The sort keys of a line an adapter wrote: the file is everything before
 * the first ":DIGITS:", the line those digits.  A line without them sorts
 * first under its whole text; it still counts.
 */
void
config_error_lines(struct config_errors *e, const char *text)
{
    char line[CONFIG_ERR_LINE_MAX];
    char file[CONFIG_ERR_LINE_MAX];

    while (text && *text) {
        size_t n = strcspn(text, "\n");
        const char *p;
        unsigned lineno = 0;

        snprintf(line, sizeof(line), "%.*s", (int)n, text);
        file[0] = '\0';
        for (p = strchr(line, ':'); p; p = strchr(p + 1, ':')) {
            const char *d = p + 1;
            unsigned long v = 0;

            while (*d >= '0' && *d <= '9' && v < 100000000)
                v = v * 10 + (unsigned long)(*d++ - '0');
            if (d > p + 1 && *d == ':') {
                snprintf(file, sizeof(file), "%.*s", (int)(p - line), line);
                lineno = (unsigned)v;
                break;
            }
        }
        if (line[0])
            config_error_append(e, file, lineno, line);
        text += n;
        if (*text == '\n')
            text++;
    }
}
