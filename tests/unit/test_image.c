/*
 * Tests for pictures in (issue 10 part 3), the pure parts: the type
 * allowlist by magic number (image.c), the data URL and the history
 * placeholder, the event copy with its attachment (event.c), the image
 * part in the user turn (prompt.c), and on the Matrix side the m.image
 * reading with spec v1.10 captions and the EncryptedFile check and
 * decryption (matrix_media.c), against a ciphertext made here with
 * OpenSSL as a client would make it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>

#include "event.h"
#include "image.h"
#include "matrix/matrix.h"
#include "matrix/matrix_media.h"
#include "prompt.h"
#include "status.h"

static const unsigned char png_head[] = "\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

static void test_sniff(void **state)
{
    (void)state;
    assert_string_equal(image_sniff_mime(png_head, 16), "image/png");
    assert_string_equal(image_sniff_mime((const unsigned char *)
                                         "\xff\xd8\xff\xe0", 4),
                        "image/jpeg");
    assert_string_equal(image_sniff_mime((const unsigned char *)
                                         "GIF89a....", 10), "image/gif");
    assert_string_equal(image_sniff_mime((const unsigned char *)
                                         "RIFF\x10\0\0\0WEBPVP8 ", 16),
                        "image/webp");
    /* Not taken: SVG (scripts), a RIFF that is WAVE, a cut signature. */
    assert_null(image_sniff_mime((const unsigned char *)"<svg xmlns=", 11));
    assert_null(image_sniff_mime((const unsigned char *)
                                 "RIFF\x10\0\0\0WAVEfmt ", 16));
    assert_null(image_sniff_mime(png_head, 7));
    assert_null(image_sniff_mime(NULL, 0));
}

static void test_data_url_and_placeholder(void **state)
{
    char *url, *t;

    (void)state;
    url = image_data_url("image/gif", (const unsigned char *)"GIF89a", 6);
    assert_non_null(url);
    assert_string_equal(url, "data:image/gif;base64,R0lGODlh");
    free(url);
    url = image_data_url("image/png", (const unsigned char *)"ab", 2);
    assert_string_equal(url, "data:image/png;base64,YWI=");
    free(url);
    assert_null(image_data_url("image/png", NULL, 0));

    t = image_turn_text("cat.png", 120 * 1024, "what is it?");
    assert_string_equal(t, "[picture: cat.png, 120 KB] what is it?");
    free(t);
    t = image_turn_text(NULL, 0, "");
    assert_string_equal(t, "[picture]");
    free(t);
    t = image_turn_text("a]b\n[c.png", 3 * 1024 * 1024, NULL);
    assert_string_equal(t, "[picture: a b  c.png, 3.0 MB]");
    free(t);
}

static void test_event_dup_attachment(void **state)
{
    unsigned char bytes[64];
    struct event_attachment a = { .name = "x.png", .mime = "image/png",
                                  .size = sizeof(bytes), .data = bytes,
                                  .len = sizeof(bytes), .ref = "{}" };
    struct event ev = { .platform = "web", .room = "r", .text = "",
                        .attachment = &a };
    struct event *copy;

    (void)state;
    memset(bytes, 0xab, sizeof(bytes));
    copy = event_dup(&ev);
    assert_non_null(copy);
    memset(bytes, 0, sizeof(bytes));        /* the adapter reuses it */
    assert_non_null(copy->attachment);
    assert_ptr_not_equal(copy->attachment, &a);
    assert_int_equal(copy->attachment->len, 64);
    assert_int_equal(copy->attachment->data[63], 0xab);
    assert_string_equal(copy->attachment->name, "x.png");
    assert_string_equal(copy->attachment->ref, "{}");
    event_free(copy);

    a.len = EVENT_ATTACHMENT_MAX + 1;
    assert_null(event_dup(&ev));
}

static void test_prompt_image_part(void **state)
{
    struct prompt_input in;
    cJSON *arr, *last, *parts, *p;

    (void)state;
    memset(&in, 0, sizeof(in));
    in.system = "sys";
    in.user_name = "Alice";
    in.user_text = "[picture: cat.png, 1 KB] what?";
    in.image_url = "data:image/png;base64,AAAA";
    arr = prompt_build(&in);
    assert_non_null(arr);
    last = cJSON_GetArrayItem(arr, cJSON_GetArraySize(arr) - 1);
    assert_string_equal(cJSON_GetObjectItem(last, "role")->valuestring,
                        "user");
    parts = cJSON_GetObjectItem(last, "content");
    assert_true(cJSON_IsArray(parts));
    assert_int_equal(cJSON_GetArraySize(parts), 2);
    p = cJSON_GetArrayItem(parts, 0);
    assert_string_equal(cJSON_GetObjectItem(p, "type")->valuestring, "text");
    assert_string_equal(cJSON_GetObjectItem(p, "text")->valuestring,
                        "Alice: [picture: cat.png, 1 KB] what?");
    p = cJSON_GetArrayItem(parts, 1);
    assert_string_equal(cJSON_GetObjectItem(p, "type")->valuestring,
                        "image_url");
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(p,
                        "image_url"), "url")->valuestring,
                        "data:image/png;base64,AAAA");
    cJSON_Delete(arr);

    /* Without a picture the content stays a plain string. */
    in.image_url = NULL;
    arr = prompt_build(&in);
    last = cJSON_GetArrayItem(arr, cJSON_GetArraySize(arr) - 1);
    assert_true(cJSON_IsString(cJSON_GetObjectItem(last, "content")));
    cJSON_Delete(arr);
}

static void test_matrix_media_ref(void **state)
{
    struct matrix_media_info mi;
    cJSON *c;

    (void)state;
    /* v1.10: filename differs from body -> body is the caption. */
    c = cJSON_Parse("{\"msgtype\":\"m.image\",\"body\":\"look, bot\","
                    "\"filename\":\"cat.png\",\"url\":\"mxc://ex.org/A1_b-\","
                    "\"info\":{\"mimetype\":\"image/png\",\"size\":1234}}");
    assert_int_equal(matrix_media_ref(c, &mi), PARLEY_OK);
    assert_string_equal(mi.caption, "look, bot");
    assert_string_equal(mi.name, "cat.png");
    assert_string_equal(mi.mime, "image/png");
    assert_int_equal(mi.size, 1234);
    assert_string_equal(mi.ref, "{\"url\":\"mxc://ex.org/A1_b-\"}");
    matrix_media_info_free(&mi);
    cJSON_Delete(c);

    /* No filename: body is the file name, no caption. */
    c = cJSON_Parse("{\"body\":\"cat.png\",\"url\":\"mxc://ex.org:8448/x\"}");
    assert_int_equal(matrix_media_ref(c, &mi), PARLEY_OK);
    assert_null(mi.caption);
    assert_string_equal(mi.name, "cat.png");
    matrix_media_info_free(&mi);
    cJSON_Delete(c);

    /* Bad mxc URLs: no picture. */
    c = cJSON_Parse("{\"body\":\"x\",\"url\":\"mxc://ex.org/../../etc\"}");
    assert_int_equal(matrix_media_ref(c, &mi), PARLEY_ERR_PROTOCOL);
    cJSON_Delete(c);
    c = cJSON_Parse("{\"body\":\"x\",\"url\":\"https://ex.org/a\"}");
    assert_int_equal(matrix_media_ref(c, &mi), PARLEY_ERR_PROTOCOL);
    cJSON_Delete(c);
}

/* Unpadded base64 (url-safe when url is set) of n bytes into out. */
static void b64(const unsigned char *in, size_t n, char *out, int url)
{
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);

    while (len > 0 && out[len - 1] == '=')
        out[--len] = '\0';
    for (int i = 0; url && i < len; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
}

static void test_matrix_media_decrypt(void **state)
{
    unsigned char key[32], iv[16] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    unsigned char plain[3000], cipher[3000], hash[32], *out = NULL;
    char k64[64], iv64[32], h64[64], json[512];
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    unsigned int hl = 0;
    int n = 0;
    cJSON *file;

    (void)state;
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (unsigned char)(i * 7 + 3);
    for (size_t i = 0; i < sizeof(plain); i++)
        plain[i] = (unsigned char)(i * 31);
    assert_int_equal(EVP_EncryptInit_ex(ctx, EVP_aes_256_ctr(), NULL, key,
                                        iv), 1);
    assert_int_equal(EVP_EncryptUpdate(ctx, cipher, &n, plain,
                                       sizeof(plain)), 1);
    EVP_CIPHER_CTX_free(ctx);
    EVP_Digest(cipher, sizeof(cipher), hash, &hl, EVP_sha256(), NULL);
    b64(key, 32, k64, 1);
    b64(iv, 16, iv64, 0);
    b64(hash, 32, h64, 0);
    snprintf(json, sizeof(json), "{\"url\":\"mxc://ex.org/a\",\"v\":\"v2\","
             "\"key\":{\"kty\":\"oct\",\"alg\":\"A256CTR\",\"ext\":true,"
             "\"key_ops\":[\"encrypt\",\"decrypt\"],\"k\":\"%s\"},"
             "\"iv\":\"%s\",\"hashes\":{\"sha256\":\"%s\"}}", k64, iv64, h64);
    file = cJSON_Parse(json);
    assert_non_null(file);
    assert_int_equal(matrix_media_decrypt(file, cipher, sizeof(cipher),
                                          &out), PARLEY_OK);
    assert_memory_equal(out, plain, sizeof(plain));
    free(out);
    out = NULL;

    /* One flipped bit: the hash refuses it, nothing is decrypted. */
    cipher[100] ^= 1;
    assert_int_equal(matrix_media_decrypt(file, cipher, sizeof(cipher),
                                          &out), PARLEY_ERR_PROTOCOL);
    assert_null(out);
    cipher[100] ^= 1;

    /* A version or algorithm we do not know is refused. */
    cJSON_ReplaceItemInObject(file, "v", cJSON_CreateString("v1"));
    assert_int_equal(matrix_media_decrypt(file, cipher, sizeof(cipher),
                                          &out), PARLEY_ERR_PROTOCOL);
    cJSON_Delete(file);
}

/* The sync parser turns m.image into a message item with a reference;
 * the caption (or "") is its text, and the mention in it counts. */
static void test_matrix_sync_image(void **state)
{
    static const char sync[] =
        "{\"next_batch\":\"n\",\"rooms\":{\"join\":{\"!r:l\":{"
        "\"timeline\":{\"events\":["
        "{\"type\":\"m.room.message\",\"event_id\":\"$1\","
        "\"sender\":\"@a:l\",\"content\":{\"msgtype\":\"m.image\","
        "\"body\":\"parley: what is this?\",\"filename\":\"cat.png\","
        "\"url\":\"mxc://l/abc\",\"info\":{\"size\":2048}}},"
        "{\"type\":\"m.room.message\",\"event_id\":\"$2\","
        "\"sender\":\"@a:l\",\"content\":{\"msgtype\":\"m.image\","
        "\"body\":\"dog.png\",\"url\":\"mxc://l/def\"}},"
        "{\"type\":\"m.room.message\",\"event_id\":\"$3\","
        "\"sender\":\"@a:l\",\"content\":{\"msgtype\":\"m.image\","
        "\"body\":\"parley look\",\"url\":\"http://x/y\"}}"
        "]}}}}}";
    const struct matrix_ident me = { "@parley:l", "parley", NULL };
    struct matrix_batch b;
    char err[256];

    (void)state;
    memset(&b, 0, sizeof(b));
    assert_int_equal(matrix_sync_parse(sync, strlen(sync), &me, &b, err,
                                       sizeof(err)), PARLEY_OK);
    /* The third has no usable mxc URL: no picture, not a message. */
    assert_int_equal(b.n_items, 2);
    assert_string_equal(b.items[0].text, "what is this?");
    assert_true(b.items[0].mentioned);
    assert_string_equal(b.items[0].media_ref, "{\"url\":\"mxc://l/abc\"}");
    assert_string_equal(b.items[0].media_name, "cat.png");
    assert_int_equal(b.items[0].media_size, 2048);
    assert_string_equal(b.items[1].text, "");
    assert_false(b.items[1].mentioned);
    assert_string_equal(b.items[1].media_name, "dog.png");
    matrix_batch_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sniff),
        cmocka_unit_test(test_data_url_and_placeholder),
        cmocka_unit_test(test_event_dup_attachment),
        cmocka_unit_test(test_prompt_image_part),
        cmocka_unit_test(test_matrix_media_ref),
        cmocka_unit_test(test_matrix_media_decrypt),
        cmocka_unit_test(test_matrix_sync_image),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
