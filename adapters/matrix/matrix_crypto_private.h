/*
 * Private to the libolm files of the Matrix adapter (matrix_crypto.c,
 * matrix_olm.c, matrix_megolm.c): the account struct, which Olm sessions
 * are made from, and the helpers they share for errors, kernel random
 * bytes, scratch copies for libolm's in-place decodes and JSON strings.
 * Nothing outside those three files includes it; the public interface is
 * matrix_crypto.h.
 */
#ifndef PARLEY_MATRIX_CRYPTO_PRIVATE_H
#define PARLEY_MATRIX_CRYPTO_PRIVATE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <olm/olm.h>

#include "matrix_crypto.h"

struct matrix_account {
    OlmAccount *olm;
    void *mem;
    char curve[MATRIX_KEY_MAX];
    char ed[MATRIX_KEY_MAX];
};

/* Set matrix_crypto_error() to what; PARLEY_ERR_OTHER (a libolm or
 * system failure). */
int crypto_failed(const char *what);
/* Set matrix_crypto_error() to what; PARLEY_ERR_PROTOCOL (bad input from
 * a peer: a MAC, a format or an index libolm refused). */
int crypto_refused(const char *what);
/* len random bytes from the kernel into a malloc'd buffer, which the
 * caller releases with crypto_free_random. */
int crypto_random_buf(size_t len, uint8_t **out);
/* Wipe and free a buffer from crypto_random_buf (NULL is fine). */
void crypto_free_random(uint8_t *buf, size_t len);
/* A writable malloc'd copy of s (its length in *len) for a libolm call
 * that decodes in place; NULL when out of memory. */
char *crypto_scratch(const char *s, size_t *len);
/* The string member name of o, or NULL. */
const char *crypto_json_str(const cJSON *o, const char *name);

#endif /* PARLEY_MATRIX_CRYPTO_PRIVATE_H */
