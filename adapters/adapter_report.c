/*
 * The adapter config-block error report (adapter_report.h).
 */
#include <stdarg.h>
#include <stdio.h>

#include "adapter_report.h"

void adapter_report(struct adapter_report *r, const config_setting_t *at,
                    const char *key, const char *fmt, ...)
{
    const char *file = config_setting_source_file(at);
    va_list ap;
    int n;

    r->bad = 1;
    if (!r->buf || r->used + 1 >= r->len)
        return;
    n = snprintf(r->buf + r->used, r->len - r->used, "%s%s:%u: "
                 "adapters[%d]%s%s: ", r->used ? "\n" : "",
                 file ? file : "(config)", config_setting_source_line(at),
                 r->index, key ? "." : "", key ? key : "");
    if (n < 0 || (size_t)n >= r->len - r->used) {
        r->used = r->len - 1;
        return;
    }
    r->used += (size_t)n;
    va_start(ap, fmt);
    n = vsnprintf(r->buf + r->used, r->len - r->used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= r->len - r->used)
        r->used = r->len - 1;
    else
        r->used += (size_t)n;
}
