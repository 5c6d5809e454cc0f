/*
 * libFuzzer target for what matrix_crypto.h reads from the network: a
 * to-device or timeline m.room.encrypted content, an m.room_key, the
 * decrypted plaintexts' checks, canonical JSON and signature checks, and
 * libolm's own decoders (pre-key message, Megolm ciphertext) behind them.
 * Any bytes must give a result or an error, never a crash or a leak.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "matrix/matrix_crypto.h"
#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct matrix_account *acct;
    struct matrix_olm_msg om;
    struct matrix_megolm_msg mm;
    struct matrix_megolm_in *in = NULL;
    struct matrix_olm *s = NULL;
    cJSON *j, *ev = NULL;
    const char *ed = NULL;
    char *text, *canon = NULL, *plain = NULL;

    if (!acct && matrix_account_new(&acct) != PARLEY_OK)
        abort();
    text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    j = cJSON_ParseWithLength(text, size);
    if (j) {
        if (matrix_canonical_json(j, &canon) == PARLEY_OK && !canon)
            abort();
        free(canon);
        (void)matrix_verify_json(j, "@a:hs", "DEV",
                                 matrix_account_ed25519(acct));
        if (matrix_olm_parse(j, "ME", &om) == PARLEY_OK) {
            if (!om.sender_key || !om.body || (om.type & ~1))
                abort();
            if (matrix_olm_inbound(acct, om.sender_key, om.body, &s) ==
                PARLEY_OK) {
                (void)matrix_olm_decrypt(s, om.type, om.body, &plain);
                matrix_crypto_free_secret(plain);
                matrix_olm_free(s);
            }
        }
        if (matrix_megolm_parse(j, &mm) == PARLEY_OK &&
            (!mm.session_id || !mm.ciphertext))
            abort();
        if (matrix_megolm_in_from_room_key(j, &in, NULL, NULL) ==
            PARLEY_OK) {
            cJSON *ct = cJSON_GetObjectItem(j, "ciphertext");

            if (cJSON_IsString(ct) &&
                matrix_megolm_decrypt(in, ct->valuestring, &plain, NULL) ==
                PARLEY_OK)
                matrix_crypto_free_secret(plain);
            matrix_megolm_in_free(in);
        }
        cJSON_Delete(j);
    }
    if (matrix_olm_plaintext_check(text, "@a:hs", "@b:hs", "K", &ev, &ed) ==
        PARLEY_OK)
        cJSON_Delete(ev);
    if (matrix_megolm_plaintext_check(text, "!r:hs", &ev) == PARLEY_OK)
        cJSON_Delete(ev);
    free(text);
    return 0;
}
