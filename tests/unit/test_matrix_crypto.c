/*
 * matrix_crypto.h without a server: canonical JSON against the spec's
 * examples, signed device and one-time keys, and round trips between two
 * accounts (Alice = the bot, Bob = a person's device) through Olm, an
 * m.room_key over Olm and Megolm, with every object pickled and restored
 * on the way, and the checks that refuse misdirected or tampered input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <cjson/cJSON.h>

#include "matrix/matrix.h"
#include "matrix/matrix_crypto.h"
#include "status.h"

static const uint8_t pkey[32] = "0123456789abcdef0123456789abcdef";
static const uint8_t wrong_key[32] = "fedcba9876543210fedcba9876543210";

static void canon_is(const char *in, const char *want)
{
    cJSON *j = cJSON_Parse(in);
    char *out = NULL;

    assert_non_null(j);
    assert_int_equal(matrix_canonical_json(j, &out), PARLEY_OK);
    assert_string_equal(out, want);
    free(out);
    cJSON_Delete(j);
}

/* The examples of the spec's appendix "Canonical JSON". */
static void test_canonical_json(void **state)
{
    cJSON *j;
    char *out = NULL;

    (void)state;
    canon_is("{}", "{}");
    canon_is("{\"one\": 1, \"two\": \"Two\"}", "{\"one\":1,\"two\":\"Two\"}");
    canon_is("{\"b\": \"2\", \"a\": \"1\"}", "{\"a\":\"1\",\"b\":\"2\"}");
    canon_is("{\"auth\": {\"success\": true, \"mxid\": \"@john.doe:example."
             "com\", \"profile\": {\"display_name\": \"John Doe\", "
             "\"three_pids\": [{\"medium\": \"email\", \"address\": "
             "\"john.doe@example.org\"}, {\"medium\": \"msisdn\", "
             "\"address\": \"123456789\"}]}}}",
             "{\"auth\":{\"mxid\":\"@john.doe:example.com\",\"profile\":{"
             "\"display_name\":\"John Doe\",\"three_pids\":[{\"address\":"
             "\"john.doe@example.org\",\"medium\":\"email\"},{\"address\":"
             "\"123456789\",\"medium\":\"msisdn\"}]},\"success\":true}}");
    canon_is("{\"a\": \"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\"}",
             "{\"a\":\"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\"}");
    canon_is("{\"\xe6\x9c\xac\": 2, \"\xe6\x97\xa5\": 1}",
             "{\"\xe6\x97\xa5\":1,\"\xe6\x9c\xac\":2}");
    canon_is("{\"a\": \"\\u65E5\"}", "{\"a\":\"\xe6\x97\xa5\"}");
    canon_is("{\"a\": null}", "{\"a\":null}");
    /* Big integers stay integers (cJSON would print 1e+15). */
    canon_is("{\"ts\": 1000000000000000, \"n\": -5}",
             "{\"n\":-5,\"ts\":1000000000000000}");
    /* signatures and unsigned are not signed (top level only). */
    canon_is("{\"x\": 1, \"signatures\": {}, \"unsigned\": {\"age\": 3}, "
             "\"y\": {\"unsigned\": 1}}",
             "{\"x\":1,\"y\":{\"unsigned\":1}}");
    j = cJSON_Parse("{\"a\": 1.5}");
    assert_int_equal(matrix_canonical_json(j, &out), PARLEY_ERR_PROTOCOL);
    cJSON_Delete(j);
    j = cJSON_Parse("{\"a\": 9007199254740993}");
    assert_int_equal(matrix_canonical_json(j, &out), PARLEY_ERR_PROTOCOL);
    cJSON_Delete(j);
}

static struct matrix_account *repickled(struct matrix_account *a)
{
    struct matrix_account *b = NULL;
    char *p = NULL;

    assert_int_equal(matrix_account_pickle(a, pkey, sizeof(pkey), &p),
                     PARLEY_OK);
    /* The pickle is encrypted: no identity key in the clear. */
    assert_null(strstr(p, matrix_account_curve25519(a)));
    assert_int_equal(matrix_account_unpickle(wrong_key, sizeof(wrong_key),
                                             p, &b), PARLEY_ERR_PROTOCOL);
    assert_int_equal(matrix_account_unpickle(pkey, sizeof(pkey), p, &b),
                     PARLEY_OK);
    assert_string_equal(matrix_account_curve25519(a),
                        matrix_account_curve25519(b));
    assert_string_equal(matrix_account_ed25519(a),
                        matrix_account_ed25519(b));
    free(p);
    matrix_account_free(a);
    return b;
}

static void test_account_keys(void **state)
{
    struct matrix_account *a = NULL;
    cJSON *dk = NULL, *otks = NULL, *again = NULL, *fb = NULL, *k;
    const char *ed;
    int n = 0;

    (void)state;
    assert_int_equal(matrix_account_new(&a), PARLEY_OK);
    assert_int_equal(strlen(matrix_account_curve25519(a)), 43);
    assert_int_equal(strlen(matrix_account_ed25519(a)), 43);
    assert_true(matrix_account_max_otks(a) >= MATRIX_OTK_BATCH_MAX);
    a = repickled(a);
    ed = matrix_account_ed25519(a);

    assert_int_equal(matrix_account_device_keys(a, "@bot:hs", "DEV", &dk),
                     PARLEY_OK);
    assert_true(matrix_verify_json(dk, "@bot:hs", "DEV", ed));
    assert_false(matrix_verify_json(dk, "@bot:hs", "OTHER", ed));
    assert_false(matrix_verify_json(dk, "@bot:hs", "DEV",
                                    matrix_account_curve25519(a)));
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(dk, "keys"),
                                            "ed25519:DEV")->valuestring, ed);
    /* Tampering breaks the signature; unsigned data does not. */
    cJSON_AddItemToObject(dk, "unsigned", cJSON_CreateObject());
    assert_true(matrix_verify_json(dk, "@bot:hs", "DEV", ed));
    cJSON_ReplaceItemInObject(dk, "device_id", cJSON_CreateString("X"));
    assert_false(matrix_verify_json(dk, "@bot:hs", "DEV", ed));
    cJSON_Delete(dk);

    assert_int_equal(matrix_account_one_time_keys(a, "@bot:hs", "DEV", 5,
                                                  &otks), PARLEY_OK);
    cJSON_ArrayForEach(k, otks) {
        assert_true(!strncmp(k->string, "signed_curve25519:", 18));
        assert_true(matrix_verify_json(k, "@bot:hs", "DEV", ed));
        n++;
    }
    assert_int_equal(n, 5);
    /* Not marked published: a retry uploads the same keys. */
    assert_int_equal(matrix_account_one_time_keys(a, "@bot:hs", "DEV", 0,
                                                  &again), PARLEY_OK);
    assert_int_equal(cJSON_GetArraySize(again), 5);
    assert_true(cJSON_Compare(otks, again, 1));
    cJSON_Delete(again);
    matrix_account_mark_published(a);
    assert_int_equal(matrix_account_one_time_keys(a, "@bot:hs", "DEV", 0,
                                                  &again), PARLEY_OK);
    assert_int_equal(cJSON_GetArraySize(again), 0);
    cJSON_Delete(again);
    cJSON_Delete(otks);
    assert_int_equal(matrix_account_one_time_keys(a, "@bot:hs", "DEV",
                                                  MATRIX_OTK_BATCH_MAX + 1,
                                                  &again),
                     PARLEY_ERR_OTHER);

    assert_int_equal(matrix_account_fallback_key(a, "@bot:hs", "DEV", 0, &fb),
                     PARLEY_OK);
    assert_null(fb);
    assert_int_equal(matrix_account_fallback_key(a, "@bot:hs", "DEV", 1, &fb),
                     PARLEY_OK);
    assert_non_null(fb);
    assert_int_equal(cJSON_GetArraySize(fb), 1);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(fb->child, "fallback")));
    assert_true(matrix_verify_json(fb->child, "@bot:hs", "DEV", ed));
    cJSON_Delete(fb);
    matrix_account_mark_published(a);
    assert_int_equal(matrix_account_fallback_key(a, "@bot:hs", "DEV", 0, &fb),
                     PARLEY_OK);
    assert_null(fb);
    matrix_account_free(a);
}

/* One claimed one-time key of b ("signed_curve25519:<id>" -> key). */
static char *claim_otk(struct matrix_account *b, int fallback)
{
    cJSON *otks = NULL;
    char *key;

    if (fallback)
        assert_int_equal(matrix_account_fallback_key(b, "@bob:hs", "BOB", 1,
                                                     &otks), PARLEY_OK);
    else
        assert_int_equal(matrix_account_one_time_keys(b, "@bob:hs", "BOB",
                                                      1, &otks), PARLEY_OK);
    matrix_account_mark_published(b);
    assert_non_null(otks->child);
    key = strdup(cJSON_GetObjectItem(otks->child, "key")->valuestring);
    cJSON_Delete(otks);
    return key;
}

static struct matrix_olm *olm_repickled(struct matrix_olm *s)
{
    struct matrix_olm *t = NULL;
    char *p = NULL, id[MATRIX_SESSION_ID_MAX + 1];

    snprintf(id, sizeof(id), "%s", matrix_olm_id(s));
    assert_int_equal(matrix_olm_pickle(s, pkey, sizeof(pkey), &p),
                     PARLEY_OK);
    assert_int_equal(matrix_olm_unpickle(wrong_key, sizeof(wrong_key), p,
                                         &t), PARLEY_ERR_PROTOCOL);
    assert_int_equal(matrix_olm_unpickle(pkey, sizeof(pkey), p, &t),
                     PARLEY_OK);
    assert_string_equal(matrix_olm_id(t), id);
    free(p);
    matrix_olm_free(s);
    return t;
}

/*
 * Alice (the bot) shares a Megolm session with Bob over Olm, the way the
 * adapter does: claim Bob's key, encrypt an m.room_key to-device event,
 * Bob parses, opens an inbound Olm session, checks the plaintext, builds
 * his inbound Megolm session, and decrypts Alice's room messages.  Then
 * Bob answers over the same Olm session (type 1 after the first reply).
 */
static void roundtrip(int fallback)
{
    struct matrix_account *alice = NULL, *bob = NULL;
    struct matrix_olm *a2b = NULL, *b_in = NULL;
    struct matrix_megolm_out *out = NULL, *out2 = NULL;
    struct matrix_megolm_in *in = NULL, *in2 = NULL;
    struct matrix_olm_msg om;
    struct matrix_megolm_msg mm;
    cJSON *rk = NULL, *enc = NULL, *ev = NULL, *content, *room_ev = NULL;
    const char *sender_ed = NULL, *room = NULL, *sid = NULL;
    char *otk, *plain = NULL, *p = NULL;
    char sid_copy[MATRIX_SESSION_ID_MAX + 1];
    uint32_t index = 99;
    int type = -1;

    assert_int_equal(matrix_account_new(&alice), PARLEY_OK);
    assert_int_equal(matrix_account_new(&bob), PARLEY_OK);
    struct matrix_olm_peer me = { "@bot:hs", "BOT",
        matrix_account_curve25519(alice), matrix_account_ed25519(alice) };
    struct matrix_olm_peer them = { "@bob:hs", "BOB",
        matrix_account_curve25519(bob), matrix_account_ed25519(bob) };

    otk = claim_otk(bob, fallback);
    assert_int_equal(matrix_olm_outbound(alice, them.curve25519, otk, &a2b),
                     PARLEY_OK);
    free(otk);
    a2b = olm_repickled(a2b);

    assert_int_equal(matrix_megolm_out_new(&out), PARLEY_OK);
    assert_int_equal(matrix_megolm_out_index(out), 0);
    assert_int_equal(matrix_megolm_room_key(out, "!r:hs", &rk), PARLEY_OK);
    assert_int_equal(matrix_olm_encrypt_event(a2b, &me, &them, "m.room_key",
                                              rk, &enc), PARLEY_OK);
    matrix_crypto_wipe_json(rk);

    /* Bob's side. */
    assert_int_equal(matrix_olm_parse(enc, them.curve25519, &om), PARLEY_OK);
    assert_int_equal(om.type, 0);
    assert_string_equal(om.sender_key, me.curve25519);
    assert_int_equal(matrix_olm_parse(enc, me.curve25519, &om),
                     PARLEY_ERR_PROTOCOL);
    assert_int_equal(matrix_olm_parse(enc, them.curve25519, &om), PARLEY_OK);
    assert_int_equal(matrix_olm_inbound(bob, om.sender_key, om.body, &b_in),
                     PARLEY_OK);
    assert_true(matrix_olm_matches(b_in, om.sender_key, om.body));
    assert_string_equal(matrix_olm_id(b_in), matrix_olm_id(a2b));
    b_in = olm_repickled(b_in);
    assert_int_equal(matrix_olm_decrypt(b_in, om.type, om.body, &plain),
                     PARLEY_OK);
    /* A replay of the same pre-key message to another device fails the
     * recipient checks. */
    assert_int_equal(matrix_olm_plaintext_check(plain, "@bot:hs", "@eve:hs",
                                                them.ed25519, &ev, NULL),
                     PARLEY_ERR_PROTOCOL);
    assert_int_equal(matrix_olm_plaintext_check(plain, "@mallory:hs",
                                                "@bob:hs", them.ed25519, &ev,
                                                NULL), PARLEY_ERR_PROTOCOL);
    assert_int_equal(matrix_olm_plaintext_check(plain, "@bot:hs", "@bob:hs",
                                                them.ed25519, &ev,
                                                &sender_ed), PARLEY_OK);
    matrix_crypto_free_secret(plain);
    assert_string_equal(sender_ed, me.ed25519);
    assert_string_equal(cJSON_GetObjectItem(ev, "type")->valuestring,
                        "m.room_key");
    content = cJSON_GetObjectItem(ev, "content");
    assert_int_equal(matrix_megolm_in_from_room_key(content, &in, &room,
                                                    &sid), PARLEY_OK);
    assert_string_equal(room, "!r:hs");
    assert_string_equal(sid, matrix_megolm_out_id(out));
    assert_string_equal(matrix_megolm_in_id(in), sid);
    snprintf(sid_copy, sizeof(sid_copy), "%s", sid);
    /* A room key whose session id does not match its key is refused. */
    cJSON_ReplaceItemInObject(content, "session_id",
                              cJSON_CreateString("AAAA"));
    assert_int_equal(matrix_megolm_in_from_room_key(content, &in2, NULL,
                                                    NULL),
                     PARLEY_ERR_PROTOCOL);
    matrix_crypto_wipe_json(ev);
    cJSON_Delete(enc);

    /* Megolm: Alice sends two room messages, Bob decrypts both. */
    for (int i = 0; i < 2; i++) {
        cJSON *msg = cJSON_CreateObject(), *c;

        cJSON_AddStringToObject(msg, "msgtype", "m.text");
        cJSON_AddStringToObject(msg, "body", i ? "second" : "first");
        assert_int_equal(matrix_megolm_encrypt(out, "!r:hs",
                                               "m.room.message", msg,
                                               me.curve25519, "BOT", &c),
                         PARLEY_OK);
        cJSON_Delete(msg);
        assert_int_equal(matrix_megolm_parse(c, &mm), PARLEY_OK);
        assert_string_equal(mm.session_id, sid_copy);
        assert_string_equal(mm.device_id, "BOT");
        assert_string_equal(mm.sender_key, me.curve25519);
        assert_int_equal(matrix_megolm_decrypt(in, mm.ciphertext, &plain,
                                               &index), PARLEY_OK);
        assert_int_equal(index, (uint32_t)i);
        /* Replayed into another room: refused. */
        assert_int_equal(matrix_megolm_plaintext_check(plain, "!other:hs",
                                                       &room_ev),
                         PARLEY_ERR_PROTOCOL);
        assert_int_equal(matrix_megolm_plaintext_check(plain, "!r:hs",
                                                       &room_ev), PARLEY_OK);
        matrix_crypto_free_secret(plain);
        assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(room_ev,
                            "content"), "body")->valuestring,
                            i ? "second" : "first");
        matrix_crypto_wipe_json(room_ev);
        /* Tampered ciphertext: bad MAC/signature. */
        {
            char *t = strdup(mm.ciphertext);
            size_t n = strlen(t);

            t[n / 2] = t[n / 2] == 'A' ? 'B' : 'A';
            assert_int_equal(matrix_megolm_decrypt(in, t, &plain, &index),
                             PARLEY_ERR_PROTOCOL);
            assert_true(strlen(matrix_crypto_error()) > 0);
            free(t);
        }
        cJSON_Delete(c);
        /* Pickle both ends between messages, as a restart would. */
        assert_int_equal(matrix_megolm_out_pickle(out, pkey, sizeof(pkey),
                                                  &p), PARLEY_OK);
        matrix_megolm_out_free(out);
        out = NULL;
        assert_int_equal(matrix_megolm_out_unpickle(wrong_key,
                                                    sizeof(wrong_key), p,
                                                    &out),
                         PARLEY_ERR_PROTOCOL);
        assert_int_equal(matrix_megolm_out_unpickle(pkey, sizeof(pkey), p,
                                                    &out), PARLEY_OK);
        free(p);
        assert_int_equal(matrix_megolm_out_index(out), (uint32_t)i + 1);
        assert_int_equal(matrix_megolm_in_pickle(in, pkey, sizeof(pkey), &p),
                         PARLEY_OK);
        matrix_megolm_in_free(in);
        in = NULL;
        assert_int_equal(matrix_megolm_in_unpickle(pkey, sizeof(pkey), p,
                                                   &in), PARLEY_OK);
        free(p);
    }
    /* A session Bob never got a key for cannot decrypt Alice's new one. */
    assert_int_equal(matrix_megolm_out_new(&out2), PARLEY_OK);
    assert_string_not_equal(matrix_megolm_out_id(out2),
                            matrix_megolm_out_id(out));
    {
        cJSON *msg = cJSON_CreateObject(), *c;

        cJSON_AddStringToObject(msg, "body", "x");
        assert_int_equal(matrix_megolm_encrypt(out2, "!r:hs", "m.room.message",
                                               msg, me.curve25519, "BOT",
                                               &c), PARLEY_OK);
        assert_int_equal(matrix_megolm_parse(c, &mm), PARLEY_OK);
        assert_int_equal(matrix_megolm_decrypt(in, mm.ciphertext, &plain,
                                               &index), PARLEY_ERR_PROTOCOL);
        cJSON_Delete(msg);
        cJSON_Delete(c);
    }

    /* Bob answers over Olm; Alice decrypts with her outbound session
     * (type 1: a normal message on an established session). */
    {
        cJSON *c = cJSON_CreateObject();

        cJSON_AddStringToObject(c, "hello", "bot");
        assert_int_equal(matrix_olm_encrypt_event(b_in, &them, &me,
                                                  "m.dummy", c, &enc),
                         PARLEY_OK);
        cJSON_Delete(c);
        assert_int_equal(matrix_olm_parse(enc, me.curve25519, &om),
                         PARLEY_OK);
        assert_int_equal(om.type, 1);
        assert_int_equal(matrix_olm_decrypt(a2b, om.type, om.body, &plain),
                         PARLEY_OK);
        assert_int_equal(matrix_olm_plaintext_check(plain, "@bob:hs",
                                                    "@bot:hs", me.ed25519,
                                                    &ev, &sender_ed),
                         PARLEY_OK);
        assert_string_equal(sender_ed, them.ed25519);
        matrix_crypto_free_secret(plain);
        matrix_crypto_wipe_json(ev);
        /* Decrypting the same message twice fails (ratchet moved on). */
        assert_int_equal(matrix_olm_decrypt(a2b, om.type, om.body, &plain),
                         PARLEY_ERR_PROTOCOL);
        assert_int_equal(matrix_olm_encrypt(a2b, "{}", &type, &p),
                         PARLEY_OK);
        assert_int_equal(type, 1);
        free(p);
        cJSON_Delete(enc);
    }

    matrix_megolm_out_free(out);
    matrix_megolm_out_free(out2);
    matrix_megolm_in_free(in);
    matrix_olm_free(a2b);
    matrix_olm_free(b_in);
    matrix_account_free(alice);
    matrix_account_free(bob);
}

static void test_roundtrip_otk(void **state)
{
    (void)state;
    roundtrip(0);
}

static void test_roundtrip_fallback(void **state)
{
    (void)state;
    roundtrip(1);
}

/* A one-time key is used once: a second pre-key session from the same
 * key fails after the first removed it, so a replayed pre-key message
 * cannot open a second session. */
static void test_otk_used_once(void **state)
{
    struct matrix_account *alice = NULL, *bob = NULL;
    struct matrix_olm *s = NULL, *in = NULL, *in2 = NULL;
    char *otk, *body = NULL;
    int type;

    (void)state;
    assert_int_equal(matrix_account_new(&alice), PARLEY_OK);
    assert_int_equal(matrix_account_new(&bob), PARLEY_OK);
    otk = claim_otk(bob, 0);
    assert_int_equal(matrix_olm_outbound(alice,
                                         matrix_account_curve25519(bob), otk,
                                         &s), PARLEY_OK);
    free(otk);
    assert_int_equal(matrix_olm_encrypt(s, "{}", &type, &body), PARLEY_OK);
    assert_int_equal(type, 0);
    assert_int_equal(matrix_olm_inbound(bob, matrix_account_curve25519(alice),
                                        body, &in), PARLEY_OK);
    assert_int_equal(matrix_olm_inbound(bob, matrix_account_curve25519(alice),
                                        body, &in2), PARLEY_ERR_PROTOCOL);
    /* Not a pre-key message from this sender key. */
    assert_false(matrix_olm_matches(in, matrix_account_curve25519(bob),
                                    body));
    assert_int_equal(matrix_olm_decrypt(in, 0, "garbage", &otk),
                     PARLEY_ERR_PROTOCOL);
    assert_int_equal(matrix_olm_decrypt(in, 7, body, &otk),
                     PARLEY_ERR_PROTOCOL);
    free(body);
    matrix_olm_free(s);
    matrix_olm_free(in);
    matrix_account_free(alice);
    matrix_account_free(bob);
}

static void test_upload_body(void **state)
{
    struct matrix_account *a = NULL;
    cJSON *j, *counts;
    char *body = NULL;

    (void)state;
    assert_int_equal(matrix_account_new(&a), PARLEY_OK);
    assert_int_equal(matrix_keys_upload_body(a, "@bot:hs", "DEV", 1, 3, 1,
                                             &body), PARLEY_OK);
    j = cJSON_Parse(body);
    free(body);
    assert_true(matrix_verify_json(cJSON_GetObjectItem(j, "device_keys"),
                                   "@bot:hs", "DEV",
                                   matrix_account_ed25519(a)));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j,
                                        "one_time_keys")), 3);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j,
                                        "fallback_keys")), 1);
    cJSON_Delete(j);
    matrix_account_mark_published(a);
    /* A top-up: no device keys, no fallback key left unpublished. */
    assert_int_equal(matrix_keys_upload_body(a, "@bot:hs", "DEV", 0, 2, 0,
                                             &body), PARLEY_OK);
    j = cJSON_Parse(body);
    free(body);
    assert_null(cJSON_GetObjectItem(j, "device_keys"));
    assert_null(cJSON_GetObjectItem(j, "fallback_keys"));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j,
                                        "one_time_keys")), 2);
    cJSON_Delete(j);
    matrix_account_free(a);

    counts = cJSON_Parse("{\"signed_curve25519\": 42}");
    assert_int_equal(matrix_otk_count(counts), 42);
    cJSON_Delete(counts);
    counts = cJSON_Parse("{\"signed_curve25519\": \"x\"}");
    assert_int_equal(matrix_otk_count(counts), -1);
    cJSON_Delete(counts);
    assert_int_equal(matrix_otk_count(NULL), -1);
}

/*
 * The receive path without a server: Alice (a person's client) shares a
 * Megolm session with the bot over Olm and sends an encrypted mention;
 * the /sync that carries both is parsed, the to-device event decrypted
 * into the inbound session, the timeline event decrypted, and the result
 * becomes the same MESSAGE item a plain mention would.
 */
static void test_sync_receive_pipeline(void **state)
{
    static const struct matrix_ident me = { "@bot:hs", "bot", "Parley" };
    struct matrix_account *alice = NULL, *bot = NULL;
    struct matrix_olm *a2b = NULL, *in_olm = NULL;
    struct matrix_megolm_out *out = NULL;
    struct matrix_megolm_in *in = NULL;
    struct matrix_olm_peer pa, pb;
    struct matrix_olm_msg om;
    struct matrix_megolm_msg mm;
    struct matrix_batch b, dec;
    cJSON *rk = NULL, *td = NULL, *msg, *enc = NULL, *j, *ev = NULL;
    char *otk, *tds, *encs, *sync, *plain = NULL;
    const cJSON *content;
    size_t len;
    char err[128];
    uint32_t index;

    (void)state;
    assert_int_equal(matrix_account_new(&alice), PARLEY_OK);
    assert_int_equal(matrix_account_new(&bot), PARLEY_OK);
    pa = (struct matrix_olm_peer){ "@alice:hs", "ALICE",
        matrix_account_curve25519(alice), matrix_account_ed25519(alice) };
    pb = (struct matrix_olm_peer){ "@bot:hs", "BOT",
        matrix_account_curve25519(bot), matrix_account_ed25519(bot) };
    otk = claim_otk(bot, 0);
    assert_int_equal(matrix_olm_outbound(alice, pb.curve25519, otk, &a2b),
                     PARLEY_OK);
    free(otk);
    assert_int_equal(matrix_megolm_out_new(&out), PARLEY_OK);
    assert_int_equal(matrix_megolm_room_key(out, "!r:hs", &rk), PARLEY_OK);
    assert_int_equal(matrix_olm_encrypt_event(a2b, &pa, &pb, "m.room_key",
                                              rk, &td), PARLEY_OK);
    matrix_crypto_wipe_json(rk);
    msg = cJSON_Parse("{\"msgtype\":\"m.text\",\"body\":\"hello Parley, "
                      "how are you?\"}");
    assert_int_equal(matrix_megolm_encrypt(out, "!r:hs", "m.room.message",
                                           msg, pa.curve25519, "ALICE",
                                           &enc), PARLEY_OK);
    cJSON_Delete(msg);
    tds = cJSON_PrintUnformatted(td);
    encs = cJSON_PrintUnformatted(enc);
    len = strlen(tds) + strlen(encs) + 1024;
    sync = malloc(len);
    snprintf(sync, len, "{\"next_batch\":\"n\",\"to_device\":{\"events\":["
             "{\"type\":\"m.room.encrypted\",\"sender\":\"@alice:hs\","
             "\"content\":%s},{\"type\":\"m.dummy\",\"sender\":\"@a:hs\","
             "\"content\":{}}]},\"rooms\":{\"join\":{\"!r:hs\":{"
             "\"timeline\":{\"events\":[{\"type\":\"m.room.encrypted\","
             "\"event_id\":\"$e1\",\"sender\":\"@alice:hs\",\"content\":%s},"
             "{\"type\":\"m.room.encrypted\",\"event_id\":\"$own\","
             "\"sender\":\"@bot:hs\",\"content\":%s}]}}}}}", tds, encs, encs);
    free(tds);
    free(encs);
    cJSON_Delete(td);
    cJSON_Delete(enc);
    assert_int_equal(matrix_sync_parse(sync, strlen(sync), &me, &b, err,
                                       sizeof(err)), PARLEY_OK);
    free(sync);
    assert_int_equal(b.n_to_device, 1);
    assert_string_equal(b.to_device[0].sender, "@alice:hs");
    /* The room flag, then one ciphertext (the bot's own is skipped). */
    assert_int_equal(b.n_items, 2);
    assert_int_equal(b.items[0].kind, MATRIX_ITEM_ENCRYPTED);
    assert_int_equal(b.items[1].kind, MATRIX_ITEM_CIPHERTEXT);

    /* To-device: Olm pre-key message -> m.room_key -> inbound session. */
    j = cJSON_Parse(b.to_device[0].content);
    assert_int_equal(matrix_olm_parse(j, pb.curve25519, &om), PARLEY_OK);
    assert_int_equal(matrix_olm_inbound(bot, om.sender_key, om.body,
                                        &in_olm), PARLEY_OK);
    assert_int_equal(matrix_olm_decrypt(in_olm, om.type, om.body, &plain),
                     PARLEY_OK);
    cJSON_Delete(j);
    assert_int_equal(matrix_olm_plaintext_check(plain, b.to_device[0].sender,
                                                "@bot:hs", pb.ed25519, &ev,
                                                NULL), PARLEY_OK);
    matrix_crypto_free_secret(plain);
    content = cJSON_GetObjectItem(ev, "content");
    assert_int_equal(matrix_megolm_in_from_room_key(content, &in, NULL, NULL),
                     PARLEY_OK);
    matrix_crypto_wipe_json(ev);

    /* Timeline: Megolm -> the plaintext event -> a MESSAGE item. */
    j = cJSON_Parse(b.items[1].cipher);
    assert_int_equal(matrix_megolm_parse(j, &mm), PARLEY_OK);
    assert_int_equal(matrix_megolm_decrypt(in, mm.ciphertext, &plain,
                                           &index), PARLEY_OK);
    cJSON_Delete(j);
    assert_int_equal(index, 0);
    assert_int_equal(matrix_megolm_plaintext_check(plain, b.items[1].room_id,
                                                   &ev), PARLEY_OK);
    matrix_crypto_free_secret(plain);
    memset(&dec, 0, sizeof(dec));
    assert_int_equal(matrix_sync_decrypted(&b.items[1], ev, &me, &dec),
                     PARLEY_OK);
    assert_int_equal(dec.n_items, 1);
    assert_int_equal(dec.items[0].kind, MATRIX_ITEM_MESSAGE);
    assert_string_equal(dec.items[0].event_id, "$e1");
    assert_string_equal(dec.items[0].sender, "@alice:hs");
    assert_string_equal(dec.items[0].room_id, "!r:hs");
    assert_string_equal(dec.items[0].text, "hello Parley, how are you?");
    assert_int_equal(dec.items[0].mentioned, 1);
    /* A decrypted non-message (a reaction, a state event) is skipped. */
    cJSON_ReplaceItemInObject(ev, "type", cJSON_CreateString("m.reaction"));
    assert_int_equal(matrix_sync_decrypted(&b.items[1], ev, &me, &dec),
                     PARLEY_OK);
    assert_int_equal(dec.n_items, 1);
    matrix_crypto_wipe_json(ev);
    matrix_batch_free(&dec);
    matrix_batch_free(&b);
    matrix_megolm_in_free(in);
    matrix_megolm_out_free(out);
    matrix_olm_free(a2b);
    matrix_olm_free(in_olm);
    matrix_account_free(alice);
    matrix_account_free(bot);
}

static void test_parse_hostile(void **state)
{
    static const char *const bad_olm[] = {
        "{}",
        "{\"algorithm\": \"m.megolm.v1.aes-sha2\"}",
        "{\"algorithm\": \"m.olm.v1.curve25519-aes-sha2\", \"sender_key\": 1}",
        "{\"algorithm\": \"m.olm.v1.curve25519-aes-sha2\", \"sender_key\": "
        "\"S\", \"ciphertext\": {\"ME\": {\"type\": 2, \"body\": \"b\"}}}",
        "{\"algorithm\": \"m.olm.v1.curve25519-aes-sha2\", \"sender_key\": "
        "\"S\", \"ciphertext\": {\"ME\": {\"type\": 0}}}",
        "{\"algorithm\": \"m.olm.v1.curve25519-aes-sha2\", \"sender_key\": "
        "\"S\", \"ciphertext\": [\"ME\"]}",
        "[]",
    };
    static const char *const bad_megolm[] = {
        "{}",
        "{\"algorithm\": \"m.megolm.v1.aes-sha2\", \"ciphertext\": \"c\"}",
        "{\"algorithm\": \"m.megolm.v1.aes-sha2\", \"session_id\": \"s\"}",
        "{\"algorithm\": \"m.olm.v1.curve25519-aes-sha2\", \"session_id\": "
        "\"s\", \"ciphertext\": \"c\"}",
    };
    static const char *const bad_keys[] = {
        "{}",
        "{\"algorithm\": \"m.megolm.v1.aes-sha2\", \"room_id\": \"!r\", "
        "\"session_id\": \"s\", \"session_key\": \"not base64!\"}",
        "{\"algorithm\": \"x\", \"room_id\": \"!r\", \"session_id\": \"s\", "
        "\"session_key\": \"AAAA\"}",
    };
    struct matrix_olm_msg om;
    struct matrix_megolm_msg mm;
    struct matrix_megolm_in *in = NULL;
    cJSON *j, *ev = NULL;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad_olm) / sizeof(bad_olm[0]); i++) {
        j = cJSON_Parse(bad_olm[i]);
        assert_int_equal(matrix_olm_parse(j, "ME", &om), PARLEY_ERR_PROTOCOL);
        cJSON_Delete(j);
    }
    assert_int_equal(matrix_olm_parse(NULL, "ME", &om), PARLEY_ERR_PROTOCOL);
    for (i = 0; i < sizeof(bad_megolm) / sizeof(bad_megolm[0]); i++) {
        j = cJSON_Parse(bad_megolm[i]);
        assert_int_equal(matrix_megolm_parse(j, &mm), PARLEY_ERR_PROTOCOL);
        cJSON_Delete(j);
    }
    for (i = 0; i < sizeof(bad_keys) / sizeof(bad_keys[0]); i++) {
        j = cJSON_Parse(bad_keys[i]);
        assert_int_equal(matrix_megolm_in_from_room_key(j, &in, NULL, NULL),
                         PARLEY_ERR_PROTOCOL);
        cJSON_Delete(j);
    }
    assert_int_equal(matrix_megolm_plaintext_check("not json", "!r", &ev),
                     PARLEY_ERR_PROTOCOL);
    assert_int_equal(matrix_megolm_plaintext_check(
                         "{\"type\":\"m.room.message\",\"content\":{}}", "!r",
                         &ev), PARLEY_ERR_PROTOCOL);
    assert_int_equal(matrix_olm_plaintext_check("[]", "@a", "@b", "K", &ev,
                                                NULL), PARLEY_ERR_PROTOCOL);
}

/* Cross-signing vectors made with python3-olm (PkSigning, Account): a
 * master key, a self-signing key it signed, a device the self-signing key
 * signed (DEV) and one it did not (DEV2). */
static const char XS_MASTER[] =
    "{\"user_id\":\"@alice:hs\",\"usage\":[\"master\"],\"keys\":{\"ed25519:"
    "eM7Vyh7yMpJfp7YMG3KYNV2UN3u3YfEeRbzplFJM/UI\":\"eM7Vyh7yMpJfp7YMG3KYNV"
    "2UN3u3YfEeRbzplFJM/UI\"}}";
static const char XS_SSK[] =
    "{\"user_id\":\"@alice:hs\",\"usage\":[\"self_signing\"],\"keys\":{\"ed"
    "25519:zxArzeTy6LTV7rBnftVtd/NdntwCiek1DCJIYe7qiWQ\":\"zxArzeTy6LTV7rBn"
    "ftVtd/NdntwCiek1DCJIYe7qiWQ\"},\"signatures\":{\"@alice:hs\":{\"ed2551"
    "9:eM7Vyh7yMpJfp7YMG3KYNV2UN3u3YfEeRbzplFJM/UI\":\"b6qslQJf6MI0vYSBU1ya"
    "2iIZr3TPK6qiJVpo2OhCC/7P8iN3XGWiG5W3gJgWHggwnIzTId3PX996ZQ4R/ehBBg\"}}"
    "}";
static const char XS_DEV[] =
    "{\"user_id\":\"@alice:hs\",\"device_id\":\"DEV\",\"algorithms\":[\"m.o"
    "lm.v1.curve25519-aes-sha2\",\"m.megolm.v1.aes-sha2\"],\"keys\":{\"curv"
    "e25519:DEV\":\"vUGlzf8XolNAy2tyDdh5hDhD/T9odDMbLDwAiBqV8Xk\",\"ed25519"
    ":DEV\":\"lb+Cwlzxt2DQVsyURXiiOA2HJRmxRJQ6qfM+XNndc+Y\"},\"signatures\""
    ":{\"@alice:hs\":{\"ed25519:DEV\":\"XqUSu2KjiBfCahmAkcNlnqLaSRtnX5Qi3o3"
    "WxiMJ13uZsXSvmrTOqiW5VNJh07RnTxq1BqX1sHm6EEt/ynrUAQ\",\"ed25519:zxArze"
    "Ty6LTV7rBnftVtd/NdntwCiek1DCJIYe7qiWQ\":\"AQbb4YOmrnLp6c2DKTDgfYxtkRTS"
    "C5A6tjFIs41rCWqIqrPB5FS97kUxaqQpRO7YmFLO5740PT1ukpiVDGOmCw\"}}}";
static const char XS_DEV2[] =
    "{\"user_id\":\"@alice:hs\",\"device_id\":\"DEV2\",\"algorithms\":[\"m."
    "olm.v1.curve25519-aes-sha2\",\"m.megolm.v1.aes-sha2\"],\"keys\":{\"cur"
    "ve25519:DEV2\":\"D/zmdQjbALRaaOWvWt5qA+z93CCqflJADM0gmiG7pAo\",\"ed255"
    "19:DEV2\":\"Ivw78SDIP2JJEv15TWT4NpQe43xNtr6+f+cp0SV54sY\"},\"signature"
    "s\":{\"@alice:hs\":{\"ed25519:DEV2\":\"m80SI//jPXfP25sU9w5vLj6Tx9/LATe"
    "7kK4QOvtMF3Pk3ndc1knIWKC/2lOvIvQm/vHV35xV5CGdspmWAOy6CA\"}}}";

static void test_cross_signed(void **state)
{
    cJSON *m = cJSON_Parse(XS_MASTER), *s = cJSON_Parse(XS_SSK);
    cJSON *d = cJSON_Parse(XS_DEV), *d2 = cJSON_Parse(XS_DEV2);
    cJSON *sigs;

    (void)state;
    assert_non_null(m);
    assert_non_null(s);
    assert_non_null(d);
    assert_non_null(d2);
    assert_int_equal(matrix_device_cross_signed(d, "@alice:hs", m, s), 1);
    assert_int_equal(matrix_device_cross_signed(d2, "@alice:hs", m, s), 0);
    assert_int_equal(matrix_device_cross_signed(d, "@bob:hs", m, s), 0);
    assert_int_equal(matrix_device_cross_signed(d, "@alice:hs", NULL, s), 0);
    assert_int_equal(matrix_device_cross_signed(d, "@alice:hs", m, NULL), 0);
    /* Master and self-signing swapped: the usages do not fit. */
    assert_int_equal(matrix_device_cross_signed(d, "@alice:hs", s, m), 0);
    /* A self-signing key the master key did not sign. */
    sigs = cJSON_DetachItemFromObjectCaseSensitive(s, "signatures");
    assert_int_equal(matrix_device_cross_signed(d, "@alice:hs", m, s), 0);
    cJSON_AddItemToObject(s, "signatures", sigs);
    assert_int_equal(matrix_device_cross_signed(d, "@alice:hs", m, s), 1);
    /* A device changed after it was signed. */
    cJSON_ReplaceItemInObjectCaseSensitive(d, "device_id",
                                           cJSON_CreateString("DEVX"));
    assert_int_equal(matrix_device_cross_signed(d, "@alice:hs", m, s), 0);
    cJSON_Delete(m);
    cJSON_Delete(s);
    cJSON_Delete(d);
    cJSON_Delete(d2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canonical_json),
        cmocka_unit_test(test_account_keys),
        cmocka_unit_test(test_roundtrip_otk),
        cmocka_unit_test(test_roundtrip_fallback),
        cmocka_unit_test(test_otk_used_once),
        cmocka_unit_test(test_upload_body),
        cmocka_unit_test(test_sync_receive_pipeline),
        cmocka_unit_test(test_parse_hostile),
        cmocka_unit_test(test_cross_signed),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
