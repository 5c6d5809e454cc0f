/*
 * libFuzzer target: incoming text helpers on arbitrary bytes.  The first
 * byte picks a CASEMAPPING; the rest is split at the first NUL into a
 * message and a mask/nick.  Invariants: formatting strip never grows the
 * text; the UTF-8 repair always yields valid UTF-8 within its buffer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "irc/irc_text.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *a, *b, out[2048];
    const char *rest;
    enum irc_casemap cm;
    size_t alen, n;

    if (size < 1)
        return 0;
    cm = (enum irc_casemap)(data[0] % 3);
    data++;
    size--;
    a = malloc(size + 1);
    if (!a)
        return 0;
    memcpy(a, data, size);
    a[size] = '\0';
    alen = strlen(a);
    b = alen < size ? a + alen + 1 : a + alen;
    n = irc_utf8_from_irc((const char *)data, size, out, sizeof(out));
    if (n >= sizeof(out) || !irc_utf8_valid(out, n) || strlen(out) != n)
        abort();
    if (irc_strip_formatting(a) > alen)
        abort();
    irc_addressed(cm, a, b, &rest);
    irc_mask_match(cm, b, a);
    irc_casecmp(cm, a, b);
    irc_casefold(cm, a);
    irc_is_channel(a, "#&");
    free(a);
    return 0;
}
