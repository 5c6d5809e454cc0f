/*
 * libFuzzer target: the CAP/SASL state machine fed arbitrary server
 * lines (one per input line).  Invariants: no crash; once DONE or FAILED
 * nothing more is consumed; the encoded credentials never appear in a
 * line sent without the secret flag.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "irc/irc_cap.h"
#include "irc/irc_line.h"
#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void sink(void *ctx, const char *line, int secret)
{
    (void)ctx;
    /* base64("\0fuzz\0pw") */
    if (!secret && strstr(line, "AGZ1enoAcHc="))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct irc_cap c;
    char *buf = malloc(size + 1), *line, *save = NULL;
    struct irc_msg m;

    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    irc_cap_start(&c, (size && (data[0] & 1)) ? "fuzz" : NULL, "pw", sink,
                  NULL);
    for (line = strtok_r(buf, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        enum irc_cap_state before = c.state;
        int consumed;

        if (irc_line_parse(line, &m) != PARLEY_OK)
            continue;
        consumed = irc_cap_feed(&c, &m);
        if ((before == IRC_CAP_DONE || before == IRC_CAP_FAILED) &&
            (consumed || c.state != before))
            abort();
    }
    irc_cap_clear(&c);
    free(buf);
    return 0;
}
