/*
 * libFuzzer target: what the model says, through Markdown conversion and
 * splitting.  The first byte sets the budget.  Invariants: every line is
 * non-empty valid UTF-8 within the budget with no byte below 0x20 and no
 * DEL, so no line can end early, start a command or carry a CTCP.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "irc/irc_format.h"
#include "irc/irc_text.h"
#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text, *plain;
    struct irc_lines l;
    size_t budget, i, j;

    if (size < 1)
        return 0;
    budget = 4 + data[0] * 2;
    text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    plain = irc_markdown_to_plain(text);
    if (!plain || strlen(plain) > strlen(text))
        abort();
    if (irc_split_text(plain, budget, &l) == PARLEY_OK) {
        for (i = 0; i < l.n; i++) {
            size_t n = strlen(l.v[i]);

            if (n == 0 || n > budget || !irc_utf8_valid(l.v[i], n))
                abort();
            for (j = 0; j < n; j++)
                if ((unsigned char)l.v[i][j] < 0x20 ||
                    (unsigned char)l.v[i][j] == 0x7f)
                    abort();
        }
        irc_lines_free(&l);
    }
    free(plain);
    free(text);
    return 0;
}
