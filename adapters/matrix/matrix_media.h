/*
 * Pictures from Matrix (issue 10, "pictures in"): what an m.image event
 * carries (matrix_media_ref, pure, used by the sync parser), the
 * download through the authenticated media API with a fallback to the
 * older endpoint (matrix_media_fetch, the adapter's ops->fetch), and the
 * EncryptedFile check and decryption of pictures from encrypted rooms
 * (matrix_media_decrypt, pure, through OpenSSL EVP).
 */
#ifndef PARLEY_MATRIX_MEDIA_H
#define PARLEY_MATRIX_MEDIA_H

#include <stddef.h>

struct cJSON;
struct adapter;
struct matrix;

/* What an m.image's content says about its picture; all owned
 * (matrix_media_info_free). */
struct matrix_media_info {
    char *ref;      /* {"url": "mxc://..."} or {"file": EncryptedFile},
                       the reference the job hands back to fetch */
    char *name;     /* filename, else body when there is no caption */
    char *mime;     /* info.mimetype, or NULL */
    long long size; /* info.size, 0 when absent */
    const char *caption;    /* borrowed from content: body when it is a
                               caption (spec v1.10: filename present and
                               different from body), else NULL */
};

/* Longest reference kept (an EncryptedFile is a few hundred bytes). */
#define MATRIX_MEDIA_REF_MAX 4096

/*
 * Read an m.image content.  PARLEY_OK with info filled, PARLEY_ERR_PROTOCOL
 * when it names no usable picture (no valid mxc URL, a malformed file
 * object), PARLEY_ERR_OOM.
 */
int matrix_media_ref(const struct cJSON *content,
                     struct matrix_media_info *info);
void matrix_media_info_free(struct matrix_media_info *info);

/*
 * Split "mxc://server/media_id" into its parts (server name and media id
 * as the spec's grammar allows: no '/', media id [A-Za-z0-9_-]).
 * PARLEY_OK or PARLEY_ERR_PROTOCOL.
 */
int matrix_mxc_split(const char *mxc, char *server, size_t server_len,
                     char *media, size_t media_len);

/*
 * Check and decrypt an attachment: file is the EncryptedFile object (v2,
 * A256CTR key as JWK, iv, hashes.sha256), data/len the downloaded
 * ciphertext.  On PARLEY_OK *out (len bytes, malloc'd) is the caller's.
 * PARLEY_ERR_PROTOCOL when the file object is malformed or the hash does
 * not match (nothing is decrypted then), PARLEY_ERR_OOM.
 */
int matrix_media_decrypt(const struct cJSON *file, const unsigned char *data,
                         size_t len, unsigned char **out);

/* ops->fetch of the Matrix adapter (adapter.h). */
int matrix_media_fetch(struct adapter *ad, const char *ref, size_t max_bytes,
                       void (*done)(int status, unsigned char *data,
                                    size_t len, void *privdata),
                       void *privdata);
/* Drop every fetch in flight without calling back (adapter stop). */
void matrix_media_stop(struct matrix *m);

#endif
