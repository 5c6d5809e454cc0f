/*
 * The error report of an adapter's config block: each problem becomes a
 * "FILE:LINE: adapters[INDEX].KEY: message" line appended to the
 * caller's buffer (cut, never overrun, when it is full), and the block is
 * marked bad.  Shared by the adapters whose validate hook reports in this
 * form (loopback, web).
 */
#ifndef PARLEY_ADAPTER_REPORT_H
#define PARLEY_ADAPTER_REPORT_H

#include <stddef.h>

#include <libconfig.h>

struct adapter_report {
    char *buf;              /* the caller's; may be NULL (count only) */
    size_t len, used;
    int bad;                /* a problem was reported */
    int index;              /* the block's place in the adapters list */
};

/* key may be NULL (the block itself). */
void adapter_report(struct adapter_report *r, const config_setting_t *at,
                    const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
