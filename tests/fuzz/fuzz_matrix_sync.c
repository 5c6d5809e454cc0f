/*
 * libFuzzer target for the Matrix /sync parser (matrix_sync_parse): any
 * bytes from a homeserver must give either a batch or an error, never a
 * crash, a leak or undefined behaviour.  Every item of a parsed batch is
 * checked for the invariants the adapter relies on.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "matrix/matrix.h"
#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct matrix_ident me = {
        "@parley:localhost", "parley", "Parley Bot"
    };
    struct matrix_batch b;
    char err[128];
    size_t i;

    if (matrix_sync_parse((const char *)data, size, &me, &b, err,
                          sizeof(err)) == PARLEY_OK) {
        if (!b.next_batch)
            abort();
        for (i = 0; i < b.n_items; i++) {
            const struct matrix_item *it = &b.items[i];

            if (!it->room_id || it->room_id[0] != '!')
                abort();
            if (it->kind != MATRIX_ITEM_ENCRYPTED && !it->sender)
                abort();
            if (it->kind == MATRIX_ITEM_MESSAGE &&
                (!it->text || !it->event_id))
                abort();
            if (it->kind == MATRIX_ITEM_CIPHERTEXT &&
                (!it->cipher || !it->event_id))
                abort();
        }
        if (b.n_to_device > MATRIX_TO_DEVICE_MAX)
            abort();
        for (i = 0; i < b.n_to_device; i++)
            if (!b.to_device[i].sender || !b.to_device[i].content)
                abort();
    }
    matrix_batch_free(&b);
    return 0;
}
