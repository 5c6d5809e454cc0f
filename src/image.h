/*
 * Pictures that come with a message (issue 10, "pictures in"): which
 * types are taken (read from the bytes, not from what the sender or the
 * server declared), the data URL a vision model receives as an image
 * part, and the short placeholder that stands for the picture in the
 * history.  Pure and loop-free, for tests.
 */
#ifndef PARLEY_IMAGE_H
#define PARLEY_IMAGE_H

#include <stddef.h>

/* The type of a picture from its first bytes: "image/png", "image/jpeg",
 * "image/webp" or "image/gif" (a static string), or NULL for anything
 * else, which is not taken. */
const char *image_sniff_mime(const unsigned char *data, size_t len);

/* "data:<mime>;base64,<data>", malloc'd (caller frees), or NULL on OOM
 * or len over the image size cap the caller enforced (a guard). */
char *image_data_url(const char *mime, const unsigned char *data,
                     size_t len);

/* The placeholder kept in history instead of the picture, "[picture:
 * cat.png, 120 KB]" (name NULL: "[picture, 120 KB]"; size 0: no size),
 * followed by " caption" when caption is not empty.  malloc'd (caller
 * frees), NULL on OOM.  The name is cut to IMAGE_NAME_MAX bytes on a
 * character boundary and stripped of brackets and line breaks, so that
 * it cannot pose as other text. */
char *image_turn_text(const char *name, size_t size, const char *caption);

#define IMAGE_NAME_MAX 80

#endif
