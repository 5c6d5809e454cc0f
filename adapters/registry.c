/*
 * The one list of platform adapters built into parley.  Each adapter
 * folder exports one struct adapter_desc named <name>_adapter_desc (see
 * adapter.h); adding a platform is its folder plus one line in
 * ADAPTER_LIST below, since CMake picks up adapters/<name>/ *.c by glob.
 * main creates adapters, config validates their blocks and names the
 * valid types, and metrics labels platforms, all from this list.
 */
#include <stdio.h>
#include <string.h>

#include "adapter.h"

/* One line per platform, in the order error messages list them. */
#define ADAPTER_LIST(X) \
    X(console)          \
    X(irc)              \
    X(loopback)         \
    X(matrix)           \
    X(web)

#define ADAPTER_DECLARE(name) extern const struct adapter_desc \
    name##_adapter_desc;
#define ADAPTER_ENTRY(name) &name##_adapter_desc,

ADAPTER_LIST(ADAPTER_DECLARE)

const struct adapter_desc *const adapter_registry[] = {
    ADAPTER_LIST(ADAPTER_ENTRY)
    NULL
};

const struct adapter_desc *adapter_find(const char *type)
{
    size_t i;

    if (!type)
        return NULL;
    for (i = 0; adapter_registry[i]; i++)
        if (strcmp(adapter_registry[i]->name, type) == 0)
            return adapter_registry[i];
    return NULL;
}

void adapter_registry_names(char *buf, size_t len)
{
    size_t i, used = 0;

    if (len == 0)
        return;
    buf[0] = '\0';
    for (i = 0; adapter_registry[i] && used < len; i++) {
        const char *sep = i == 0 ? "" : adapter_registry[i + 1] ? ", " :
                          " or ";
        int n = snprintf(buf + used, len - used, "%s%s", sep,
                         adapter_registry[i]->name);

        if (n < 0)
            break;
        used += (size_t)n;
    }
}
