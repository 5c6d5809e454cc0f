/*
 * The process's instance name (see instance.h).  The host part is cut to
 * 48 bytes and anything outside [A-Za-z0-9._-] becomes '_', so the name
 * is safe in Redis keys, log lines and Prometheus label values alike.
 */
#include "instance.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "random.h"

#define HOST_PART_MAX 48

static char name[INSTANCE_NAME_MAX];

static int name_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

static int fixed_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n >= INSTANCE_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!name_char_ok(s[i]))
            return 0;
    return 1;
}

const char *instance_name(const char *fixed)
{
    char host[HOST_PART_MAX + 1];
    size_t i;

    if (name[0] != '\0')
        return name;
    if (fixed != NULL && fixed[0] != '\0') {
        if (!fixed_ok(fixed))
            return NULL;
        memcpy(name, fixed, strlen(fixed) + 1);
        return name;
    }
    /* gethostname may leave the buffer unterminated when it truncates. */
    if (gethostname(host, sizeof(host)) != 0)
        host[0] = '\0';
    host[HOST_PART_MAX] = '\0';
    for (i = 0; host[i] != '\0'; i++)
        if (!name_char_ok(host[i]))
            host[i] = '_';
    if (i == 0)
        memcpy(host, "host", 5);
    snprintf(name, sizeof(name), "%s-%ld-%08x", host, (long)getpid(),
             (unsigned)(random_u64() & 0xffffffffu));
    return name;
}

void instance_reset(void)
{
    name[0] = '\0';
}
