/*
 * Pictures in (image.h): the type allowlist by magic number, the data URL
 * for the image part of a chat-completions user message, and the history
 * placeholder.  The type is read from the bytes because what arrives
 * says little: an encrypted Matrix attachment is application/octet-stream
 * on the server, and a browser's or client's declared type is the
 * sender's word.  Base64 is OpenSSL's (EVP_EncodeBlock), already linked.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "event.h"
#include "image.h"

const char *image_sniff_mime(const unsigned char *data, size_t len)
{
    if (!data)
        return NULL;
    /* PNG, RFC 2083 section 12.11: the eight-byte signature. */
    if (len >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0)
        return "image/png";
    /* JPEG: SOI then the first marker's 0xFF. */
    if (len >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff)
        return "image/jpeg";
    if (len >= 6 && (memcmp(data, "GIF87a", 6) == 0 ||
                     memcmp(data, "GIF89a", 6) == 0))
        return "image/gif";
    /* WebP: a RIFF container of form type "WEBP" (RFC 9649). */
    if (len >= 12 && memcmp(data, "RIFF", 4) == 0 &&
        memcmp(data + 8, "WEBP", 4) == 0)
        return "image/webp";
    return NULL;
}

char *image_data_url(const char *mime, const unsigned char *data,
                     size_t len)
{
    static const char base64[] = ";base64,";
    size_t mlen, enc, total;
    char *url;
    int n;

    if (!mime || !data || len == 0 || len > EVENT_ATTACHMENT_MAX)
        return NULL;
    mlen = strlen(mime);
    enc = 4 * ((len + 2) / 3);
    total = 5 + mlen + sizeof(base64) - 1 + enc + 1;
    url = malloc(total);
    if (!url)
        return NULL;
    memcpy(url, "data:", 5);
    memcpy(url + 5, mime, mlen);
    memcpy(url + 5 + mlen, base64, sizeof(base64) - 1);
    /* EVP_EncodeBlock writes the padded encoding and a NUL, no line
     * breaks; len fits an int by EVENT_ATTACHMENT_MAX. */
    n = EVP_EncodeBlock((unsigned char *)url + 5 + mlen + sizeof(base64) - 1,
                        data, (int)len);
    if (n < 0 || (size_t)n != enc) {
        free(url);
        return NULL;
    }
    return url;
}

/* Copy at most IMAGE_NAME_MAX bytes of name into buf (of IMAGE_NAME_MAX +
 * 1), cut on a UTF-8 boundary, brackets and control characters made
 * blanks. */
static void image_clean_name(const char *name, char *buf)
{
    size_t n = strlen(name), i;

    if (n > IMAGE_NAME_MAX) {
        n = IMAGE_NAME_MAX;
        while (n > 0 && ((unsigned char)name[n] & 0xc0) == 0x80)
            n--;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];

        buf[i] = (c < 0x20 || c == 0x7f || c == '[' || c == ']')
                 ? ' ' : (char)c;
    }
    buf[n] = '\0';
}

char *image_turn_text(const char *name, size_t size, const char *caption)
{
    char clean[IMAGE_NAME_MAX + 1], head[IMAGE_NAME_MAX + 64], sz[32];
    size_t hlen, clen = caption ? strlen(caption) : 0;
    char *out;
    int n;

    sz[0] = '\0';
    if (size >= 1024 * 1024)
        snprintf(sz, sizeof(sz), ", %.1f MB", (double)size / (1024 * 1024));
    else if (size > 0)
        snprintf(sz, sizeof(sz), ", %zu KB", (size + 1023) / 1024);
    if (name && name[0]) {
        image_clean_name(name, clean);
        n = snprintf(head, sizeof(head), "[picture: %s%s]", clean, sz);
    } else {
        n = snprintf(head, sizeof(head), "[picture%s]", sz);
    }
    if (n < 0 || (size_t)n >= sizeof(head))
        return NULL;
    hlen = (size_t)n;
    if (clen > SIZE_MAX - hlen - 2)
        return NULL;
    out = malloc(hlen + (clen ? 1 + clen : 0) + 1);
    if (!out)
        return NULL;
    memcpy(out, head, hlen);
    if (clen) {
        out[hlen] = ' ';
        memcpy(out + hlen + 1, caption, clen);
        hlen += 1 + clen;
    }
    out[hlen] = '\0';
    return out;
}
