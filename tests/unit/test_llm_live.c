/*
 * The real LLM client on a real libuv loop against the OpenAI stand-in
 * (tests/integration/openai_stub.py) on a loopback port: success, each
 * retry rule (Retry-After, retry-after-ms, 5xx, timeouts, dropped bodies,
 * refused connections), what is not retried (401, 404, malformed JSON,
 * oversize bodies), the concurrency cap, and cancellation in every state;
 * then streaming: deltas, awkward event boundaries, slow streams, breaks
 * and error events before and after the first delta, a server that
 * ignores "stream", the key split across events, the cap, and callbacks
 * that cancel, free or submit from on_delta.
 * Every test ends by closing the loop and checking that uv_loop_close
 * finds no handle left; ASan checks the memory.  Timeouts and backoffs
 * are tens of milliseconds so that the file runs in a few seconds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "spawn.h"

#include <cmocka.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <uv.h>

#include "config.h"
#include "llm.h"
#include "loop.h"
#include "sse.h"
#include "status.h"

#define KEY "sk-live-test-SECRET-0123456789abcdef"
#define WRONG_KEY "sk-wrong-SECRET-fedcba9876543210"

/* Bytes of streamed text a test keeps for comparison. */
#define LLM_DELTA_LOG 512

/* Longest a single test may run the loop before it counts as hung. */
#define TEST_LOOP_MAX_MS 8000

static pid_t stub_pid = -1;
static int stub_port;
static char tmpdir[64];

struct outcome {
    int called;
    int status;
    long http_code;
    int retryable;
    int attempts;
    char content[512];
    char finish[32];
    long prompt_tokens;
    long completion_tokens;
    char errstr[256];
    uint64_t t_done;        /* uv_hrtime at the callback, ns */
};

struct fixture {
    uv_loop_t uv;
    struct loop *loop;
    struct llm *llm;
    struct config_llm cfg;
    char base_url[64];
};

/* Set while llm_complete runs: done must never be called inside it. */
static int inside_complete;

/* ------------------------------------------------------------------ */
/* stub control, with blocking libcurl                                 */

struct grow {
    char *p;
    size_t n;
};

static size_t grow_write(char *d, size_t s, size_t n, void *u)
{
    struct grow *g = u;
    char *p = realloc(g->p, g->n + s * n + 1);

    if (!p)
        return 0;
    memcpy(p + g->n, d, s * n);
    g->p = p;
    g->n += s * n;
    p[g->n] = '\0';
    return s * n;
}

/* GET or POST (body != NULL) on the stub; returns the body (free it). */
static char *stub_call(const char *path, const char *body)
{
    char url[128];
    struct grow g = { NULL, 0 };
    CURL *e = curl_easy_init();
    CURLcode rc;

    assert_non_null(e);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", stub_port, path);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, grow_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &g);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 5000L);
    if (body)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    rc = curl_easy_perform(e);
    curl_easy_cleanup(e);
    if (rc != CURLE_OK)
        fail_msg("stub %s: %s", path, curl_easy_strerror(rc));
    return g.p ? g.p : strdup("");
}

static void stub_script(const char *json)
{
    free(stub_call("/_control/script", json));
}

static cJSON *stub_requests(void)
{
    char *body = stub_call("/_control/requests", NULL);
    cJSON *r = cJSON_Parse(body);

    free(body);
    assert_true(cJSON_IsArray(r));
    return r;
}

static int stub_count(void)
{
    cJSON *r = stub_requests();
    int n = cJSON_GetArraySize(r);

    cJSON_Delete(r);
    return n;
}

/* ------------------------------------------------------------------ */
/* fixtures                                                           */

static int group_setup(void **state)
{
    char logfile[128];
    char *extra[] = { "--api-key", KEY, "--log", logfile, NULL };

    (void)state;
    (void)spawn_redis;      /* spawn.h is all static; unused here */
    if (!getenv("PARLEY_TEST_DATA")) {
        fprintf(stderr, "PARLEY_TEST_DATA is not set\n");
        return -1;
    }
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/parley-llm-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(logfile, sizeof(logfile), "%s/stub.log", tmpdir);
    stub_pid = spawn_openai_stub(tmpdir, extra, logfile, &stub_port);
    if (stub_pid < 0) {
        fprintf(stderr, "openai_stub.py did not start (see %s)\n", logfile);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    char path[128];

    (void)state;
    spawn_stop(stub_pid);
    snprintf(path, sizeof(path), "%s/port", tmpdir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/stub.log", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    return 0;
}

static void fixture_config(struct fixture *f, int port)
{
    snprintf(f->base_url, sizeof(f->base_url), "http://127.0.0.1:%d/v1/",
             port);
    memset(&f->cfg, 0, sizeof(f->cfg));
    f->cfg.base_url = f->base_url;
    f->cfg.model = "gpt-test";
    f->cfg.temperature = 0.5;
    f->cfg.max_tokens = 0;
    f->cfg.connect_timeout_ms = 1000;
    f->cfg.timeout_ms = 2000;
    f->cfg.max_retries = 2;
    f->cfg.backoff_base_ms = 20;
    f->cfg.backoff_max_ms = 250;   /* Retry-After honoured up to 1 s */
    f->cfg.max_concurrent = 4;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    free(stub_call("/_control/reset", ""));
    if (uv_loop_init(&f->uv) != 0 ||
        loop_create(&f->loop, &f->uv) != PARLEY_OK) {
        free(f);
        return -1;
    }
    fixture_config(f, stub_port);
    if (llm_create(&f->llm, f->loop, &f->cfg, KEY) != PARLEY_OK)
        return -1;
    *state = f;
    return 0;
}

static void fixture_recreate(struct fixture *f, const char *key)
{
    llm_free(f->llm);
    assert_int_equal(llm_create(&f->llm, f->loop, &f->cfg, key), PARLEY_OK);
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    llm_free(f->llm);
    loop_close(f->loop);
    uv_run(&f->uv, UV_RUN_DEFAULT);
    loop_free(f->loop);
    /* UV_EBUSY here would mean a handle was leaked. */
    assert_int_equal(uv_loop_close(&f->uv), 0);
    free(f);
    return 0;
}

/* ------------------------------------------------------------------ */
/* helpers                                                            */

static void on_done(const struct llm_result *res, void *privdata)
{
    struct outcome *o = privdata;

    assert_false(inside_complete);
    o->called++;
    o->status = res->status;
    o->http_code = res->http_code;
    o->retryable = res->retryable;
    o->attempts = res->attempts;
    snprintf(o->content, sizeof(o->content), "%s",
             res->content ? res->content : "");
    snprintf(o->finish, sizeof(o->finish), "%s",
             res->finish_reason ? res->finish_reason : "");
    o->prompt_tokens = res->prompt_tokens;
    o->completion_tokens = res->completion_tokens;
    snprintf(o->errstr, sizeof(o->errstr), "%s", res->errstr);
    o->t_done = uv_hrtime();
}

static cJSON *user_messages(const char *text)
{
    cJSON *msgs = cJSON_CreateArray();
    cJSON *m = cJSON_CreateObject();

    assert_non_null(msgs);
    assert_non_null(m);
    cJSON_AddStringToObject(m, "role", "user");
    cJSON_AddStringToObject(m, "content", text);
    cJSON_AddItemToArray(msgs, m);
    return msgs;
}

static struct llm_request *ask(struct fixture *f, const char *text,
                               struct outcome *o)
{
    struct llm_request *req = NULL;
    int rc;

    inside_complete = 1;
    rc = llm_complete(f->llm, NULL, user_messages(text), on_done, o, &req);
    inside_complete = 0;
    assert_int_equal(rc, PARLEY_OK);
    assert_non_null(req);
    assert_int_equal(o->called, 0);
    return req;
}

static int all_called(struct outcome *o, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!o[i].called)
            return 0;
    return 1;
}

/* Run the loop until every outcome is in, or fail after a while. */
static void run_until(struct fixture *f, struct outcome *o, size_t n)
{
    uint64_t start = uv_hrtime();

    while (!all_called(o, n)) {
        if ((uv_hrtime() - start) / 1000000 > TEST_LOOP_MAX_MS)
            fail_msg("the loop ran %d ms without an answer",
                     TEST_LOOP_MAX_MS);
        uv_run(&f->uv, UV_RUN_ONCE);
    }
}

static void on_nap(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

static void on_nap_closed(uv_handle_t *h)
{
    (void)h;
}

/* Run the loop for ms milliseconds whatever happens. */
static void run_for(struct fixture *f, long ms)
{
    uv_timer_t t;
    int fired = 0;

    assert_int_equal(uv_timer_init(&f->uv, &t), 0);
    t.data = &fired;
    assert_int_equal(uv_timer_start(&t, on_nap, (uint64_t)ms, 0), 0);
    while (!fired)
        uv_run(&f->uv, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, on_nap_closed);
    uv_run(&f->uv, UV_RUN_NOWAIT);
}

static long elapsed_ms(uint64_t from, uint64_t to)
{
    return (long)((to - from) / 1000000);
}

/* ------------------------------------------------------------------ */
/* tests                                                              */

static void test_success(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };
    cJSON *recs, *rec, *hdrs, *body;

    ask(f, "hello \xc3\xa9", &o);
    assert_int_equal(llm_in_flight(f->llm), 1);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_OK);
    assert_int_equal(o.http_code, 200);
    assert_int_equal(o.attempts, 1);
    assert_string_equal(o.content, "echo: hello \xc3\xa9");
    assert_string_equal(o.finish, "stop");
    assert_true(o.prompt_tokens > 0);
    assert_true(o.completion_tokens > 0);
    assert_int_equal(llm_in_flight(f->llm), 0);

    /* what went over the wire */
    recs = stub_requests();
    assert_int_equal(cJSON_GetArraySize(recs), 1);
    rec = cJSON_GetArrayItem(recs, 0);
    assert_string_equal(cJSON_GetObjectItem(rec, "path")->valuestring,
                        "/v1/chat/completions");
    hdrs = cJSON_GetObjectItem(rec, "headers");
    assert_string_equal(cJSON_GetObjectItem(hdrs,
                        "Authorization")->valuestring, "Bearer " KEY);
    assert_string_equal(cJSON_GetObjectItem(hdrs,
                        "Content-Type")->valuestring, "application/json");
    body = cJSON_GetObjectItem(rec, "body");
    assert_string_equal(cJSON_GetObjectItem(body, "model")->valuestring,
                        "gpt-test");
    assert_true(cJSON_GetObjectItem(body, "temperature")->valuedouble
                == 0.5);
    assert_null(cJSON_GetObjectItem(body, "max_tokens"));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(body,
                                                            "messages")), 1);
    cJSON_Delete(recs);
}

/* llm.http2_prior_knowledge on a libcurl that fails reused h2c
 * connections (7.88, Debian 12) is ignored: the request still goes out as
 * HTTP/1.1 and is answered by the HTTP/1.1 stub.  Unheeded, curl would
 * open with the HTTP/2 preface and the stub would refuse it. */
static void test_h2c_ignored_when_curl_cannot(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };
    const char *why = NULL;
    cJSON *recs;

    if (loop_http_h2c_usable(&why)) {
        /* The stub speaks only HTTP/1.1; scripts/bench covers h2c. */
        skip();
    }
    f->cfg.http2_prior_knowledge = 1;
    fixture_recreate(f, KEY);
    ask(f, "over h2c?", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_OK);
    assert_int_equal(o.http_code, 200);
    assert_string_equal(o.content, "echo: over h2c?");
    recs = stub_requests();
    assert_int_equal(cJSON_GetArraySize(recs), 1);
    cJSON_Delete(recs);
}

static void test_no_key_no_auth_header(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };
    cJSON *recs, *hdrs;

    fixture_recreate(f, NULL);
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    /* the stub wants a key: 401, "You didn't provide an API key" */
    assert_int_equal(o.status, PARLEY_ERR_HTTP);
    assert_int_equal(o.http_code, 401);
    recs = stub_requests();
    hdrs = cJSON_GetObjectItem(cJSON_GetArrayItem(recs, 0), "headers");
    assert_null(cJSON_GetObjectItem(hdrs, "Authorization"));
    cJSON_Delete(recs);
}

static void test_model_override_and_max_tokens(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };
    cJSON *recs, *body;
    int rc;

    f->cfg.max_tokens = 77;
    f->cfg.temperature = -1;
    assert_int_equal(llm_configure(f->llm, &f->cfg), PARLEY_OK);
    inside_complete = 1;
    rc = llm_complete(f->llm, "other-model", user_messages("x"), on_done,
                      &o, NULL);
    inside_complete = 0;
    assert_int_equal(rc, PARLEY_OK);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_OK);
    recs = stub_requests();
    body = cJSON_GetObjectItem(cJSON_GetArrayItem(recs, 0), "body");
    assert_string_equal(cJSON_GetObjectItem(body, "model")->valuestring,
                        "other-model");
    assert_int_equal(cJSON_GetObjectItem(body, "max_tokens")->valueint, 77);
    assert_null(cJSON_GetObjectItem(body, "temperature"));
    cJSON_Delete(recs);
}

static void test_bad_messages_rejected(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };
    struct llm_request *req = (void *)1;

    /* consumed also on error (ASan would see the leak) */
    assert_int_not_equal(llm_complete(f->llm, NULL, cJSON_CreateArray(),
                                      on_done, &o, &req), PARLEY_OK);
    assert_null(req);
    assert_int_not_equal(llm_complete(f->llm, NULL,
                                      cJSON_CreateString("x"), on_done, &o,
                                      NULL), PARLEY_OK);
    assert_int_not_equal(llm_complete(f->llm, NULL, NULL, on_done, &o,
                                      NULL), PARLEY_OK);
    assert_int_equal(llm_in_flight(f->llm), 0);
    run_for(f, 20);
    assert_int_equal(o.called, 0);
}

static void test_429_retry_after(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };
    uint64_t start;
    cJSON *recs;
    double t0, t1;

    stub_script("[{\"status\":429,\"retry_after\":\"1\"}]");
    start = uv_hrtime();
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_OK);
    assert_int_equal(o.attempts, 2);
    assert_string_equal(o.content, "echo: hi");
    assert_true(elapsed_ms(start, o.t_done) >= 1000);
    recs = stub_requests();
    assert_int_equal(cJSON_GetArraySize(recs), 2);
    t0 = cJSON_GetObjectItem(cJSON_GetArrayItem(recs, 0),
                             "timestamp")->valuedouble;
    t1 = cJSON_GetObjectItem(cJSON_GetArrayItem(recs, 1),
                             "timestamp")->valuedouble;
    assert_true(t1 - t0 >= 0.99);
    cJSON_Delete(recs);
}

static void test_429_retry_after_ms(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };
    uint64_t start;
    cJSON *recs;
    double gap;

    /* retry-after-ms wins over Retry-After (as OpenAI's SDKs do) */
    stub_script("[{\"status\":429,\"retry_after_ms\":300,"
                "\"retry_after\":\"1\"}]");
    start = uv_hrtime();
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_OK);
    assert_int_equal(o.attempts, 2);
    assert_true(elapsed_ms(start, o.t_done) >= 300);
    /* the stub saw the retry before the 1 s of Retry-After */
    recs = stub_requests();
    assert_int_equal(cJSON_GetArraySize(recs), 2);
    gap = cJSON_GetObjectItem(cJSON_GetArrayItem(recs, 1),
                              "timestamp")->valuedouble -
        cJSON_GetObjectItem(cJSON_GetArrayItem(recs, 0),
                            "timestamp")->valuedouble;
    assert_true(gap >= 0.29 && gap < 0.95);
    cJSON_Delete(recs);
}

static void test_500_exhausts_retries(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };

    stub_script("[{\"status\":500},{\"status\":502},{\"status\":503},"
                "{\"content\":\"too late\"}]");
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_ERR_HTTP);
    assert_int_equal(o.http_code, 503);
    assert_int_equal(o.retryable, 1);
    assert_int_equal(o.attempts, f->cfg.max_retries + 1);
    assert_string_equal(o.content, "");
    assert_non_null(strstr(o.errstr, "HTTP 503 from the LLM API"));
    assert_non_null(strstr(o.errstr, "overloaded"));
    assert_int_equal(stub_count(), f->cfg.max_retries + 1);
}

static void test_401_not_retried_key_redacted(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };

    fixture_recreate(f, WRONG_KEY);
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_ERR_HTTP);
    assert_int_equal(o.http_code, 401);
    assert_int_equal(o.retryable, 0);
    assert_int_equal(o.attempts, 1);
    assert_non_null(strstr(o.errstr,
        "HTTP 401 from the LLM API: invalid_api_key: Incorrect API key "
        "provided"));
    /* the stub echoed the whole key; parley must not */
    assert_null(strstr(o.errstr, WRONG_KEY));
    assert_null(strstr(o.errstr, "fedcba9876543210"));
    assert_non_null(strstr(o.errstr, "[redacted]"));
    run_for(f, 100);
    assert_int_equal(stub_count(), 1);
}

/* A key so long that the echo straddles the end of errstr: no prefix of
 * it may survive the cut. */
static void test_long_key_never_leaks_a_prefix(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };
    char key[1200];         /* longer than the 1 KiB work buffer */

    memcpy(key, "sk-long-", 8);
    for (size_t i = 8; i < sizeof(key) - 1; i++)
        key[i] = (char)('a' + i % 26);
    key[sizeof(key) - 1] = '\0';
    fixture_recreate(f, key);
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.http_code, 401);
    assert_non_null(strstr(o.errstr, "[redacted]"));
    assert_null(strstr(o.errstr, "sk-long-"));
    for (size_t i = 8; i + 12 < sizeof(key); i++) {
        char piece[13];

        memcpy(piece, key + i, 12);
        piece[12] = '\0';
        assert_null(strstr(o.errstr, piece));
    }
}

static void test_404_not_retried(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };

    stub_script("[{\"status\":404}]");
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_ERR_HTTP);
    assert_int_equal(o.http_code, 404);
    assert_int_equal(o.attempts, 1);
    assert_non_null(strstr(o.errstr, "model_not_found"));
    assert_int_equal(stub_count(), 1);
}

static void test_malformed_is_protocol(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };

    stub_script("[{\"malformed\":true}]");
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(o.http_code, 200);
    assert_int_equal(o.attempts, 1);
    assert_string_equal(o.content, "");
    assert_non_null(strstr(o.errstr, "not valid JSON"));
}

static void test_null_content_is_protocol(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };

    stub_script("[{\"raw\":\"{\\\"choices\\\":[{\\\"message\\\":"
                "{\\\"content\\\":null}}]}\"}]");
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(o.attempts, 1);
}

static void test_hang_times_out_then_retries(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };

    f->cfg.timeout_ms = 300;
    fixture_recreate(f, KEY);
    stub_script("[{\"hang\":1.5}]");
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_OK);
    assert_int_equal(o.attempts, 2);
    assert_string_equal(o.content, "echo: hi");
}

static void test_hang_always_is_timeout(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };

    f->cfg.timeout_ms = 150;
    f->cfg.max_retries = 1;
    fixture_recreate(f, KEY);
    stub_script("[{\"hang\":1,\"repeat\":true}]");
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_ERR_TIMEOUT);
    assert_int_equal(o.retryable, 1);
    assert_int_equal(o.attempts, 2);
    assert_non_null(strstr(o.errstr, "did not answer in time"));
}

static void test_drop_is_retried(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };

    stub_script("[{\"drop\":true}]");
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_OK);
    assert_int_equal(o.attempts, 2);
    assert_string_equal(o.content, "echo: hi");
}

static void test_refused_is_io(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };
    int port = spawn_free_port();

    assert_true(port > 0);
    fixture_config(f, port);
    f->cfg.max_retries = 1;
    fixture_recreate(f, KEY);
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_ERR_IO);
    assert_int_equal(o.http_code, 0);
    assert_int_equal(o.retryable, 1);
    assert_int_equal(o.attempts, 2);
    assert_non_null(strstr(o.errstr, "the LLM API request failed"));
}

/*
 * A reload (llm_configure) leaves a request already submitted alone: its
 * retry goes to the URL and under the retry count it was submitted with,
 * while the next request uses the new settings.  Requests share one copy
 * of the settings (issue 11); ASan sees it freed too early or never.
 */
static void test_reload_keeps_request_settings(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 }, o2 = { 0 };
    int port = spawn_free_port();

    assert_true(port > 0);
    stub_script("[{\"status\":503,\"retry_after_ms\":200}]");
    ask(f, "hi", &o);
    run_for(f, 50);
    /* Nothing listens on the new port, and no retries are allowed. */
    fixture_config(f, port);
    f->cfg.max_retries = 0;
    assert_int_equal(llm_configure(f->llm, &f->cfg), PARLEY_OK);
    ask(f, "after", &o2);
    run_until(f, &o, 1);
    run_until(f, &o2, 1);
    assert_int_equal(o.status, PARLEY_OK);
    assert_int_equal(o.attempts, 2);
    assert_string_equal(o.content, "echo: hi");
    assert_int_equal(o2.status, PARLEY_ERR_IO);
    assert_int_equal(o2.attempts, 1);
    assert_int_equal(stub_count(), 2);
}

static void test_too_large(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };
    char script[64];

    snprintf(script, sizeof(script), "[{\"body_bytes\":%d}]",
             LLM_BODY_MAX + 1000);
    stub_script(script);
    ask(f, "hi", &o);
    run_until(f, &o, 1);
    assert_int_equal(o.status, PARLEY_ERR_TOO_LARGE);
    assert_int_equal(o.retryable, 0);
    assert_int_equal(o.attempts, 1);
    assert_non_null(strstr(o.errstr, "cap"));
    assert_int_equal(stub_count(), 1);
}

static void test_max_concurrent(void **state)
{
    struct fixture *f = *state;
    struct outcome o[5];
    double start[5], end[5];
    int most = 0;
    cJSON *recs;
    char text[16];

    memset(o, 0, sizeof(o));
    f->cfg.max_concurrent = 2;
    fixture_recreate(f, KEY);
    stub_script("[{\"when_contains\":\"slow\",\"delay\":0.25,"
                "\"repeat\":true}]");
    for (int i = 0; i < 5; i++) {
        snprintf(text, sizeof(text), "slow %d", i);
        ask(f, text, &o[i]);
    }
    assert_int_equal(llm_in_flight(f->llm), 5);
    assert_int_equal(loop_http_pending(f->loop), 2);
    run_until(f, o, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(o[i].status, PARLEY_OK);
        snprintf(text, sizeof(text), "echo: slow %d", i);
        assert_string_equal(o[i].content, text);
    }
    recs = stub_requests();
    assert_int_equal(cJSON_GetArraySize(recs), 5);
    for (int i = 0; i < 5; i++) {
        cJSON *r = cJSON_GetArrayItem(recs, i);

        start[i] = cJSON_GetObjectItem(r, "timestamp")->valuedouble;
        end[i] = cJSON_GetObjectItem(r, "finished")->valuedouble;
    }
    /* the most requests the stub was serving at any one arrival */
    for (int i = 0; i < 5; i++) {
        int n = 0;

        for (int j = 0; j < 5; j++)
            if (start[j] <= start[i] && end[j] > start[i])
                n++;
        if (n > most)
            most = n;
    }
    assert_int_equal(most, 2);
    /* FIFO: the first two asked are the first two served */
    for (int i = 0; i < 2; i++) {
        cJSON *body = cJSON_GetObjectItem(cJSON_GetArrayItem(recs, i),
                                          "body");
        char *s = cJSON_PrintUnformatted(body);

        assert_non_null(s);
        assert_true(strstr(s, "slow 0") || strstr(s, "slow 1"));
        free(s);
    }
    cJSON_Delete(recs);
}

static void test_cancel_in_backoff(void **state)
{
    struct fixture *f = *state;
    struct outcome o = { 0 };
    struct llm_request *req;
    uint64_t start = uv_hrtime();

    stub_script("[{\"status\":503,\"retry_after\":\"1\"}]");
    req = ask(f, "hi", &o);
    /* until the first attempt is answered and the retry timer runs */
    while (loop_http_pending(f->loop) > 0) {
        assert_true(elapsed_ms(start, uv_hrtime()) < TEST_LOOP_MAX_MS);
        uv_run(&f->uv, UV_RUN_ONCE);
    }
    assert_int_equal(llm_in_flight(f->llm), 1);
    assert_int_equal(o.called, 0);
    llm_cancel(req);
    assert_int_equal(llm_in_flight(f->llm), 0);
    run_for(f, 1200);
    assert_int_equal(o.called, 0);
    assert_int_equal(stub_count(), 1);
    /* teardown's uv_loop_close and ASan prove nothing is left */
}

static void test_cancel_waiting_and_in_flight(void **state)
{
    struct fixture *f = *state;
    struct outcome o[3];
    struct llm_request *r0, *r1;
    cJSON *recs;

    memset(o, 0, sizeof(o));
    f->cfg.max_concurrent = 1;
    fixture_recreate(f, KEY);
    stub_script("[{\"when_contains\":\"slow\",\"delay\":0.2,"
                "\"repeat\":true}]");
    r0 = ask(f, "slow 0", &o[0]);
    r1 = ask(f, "slow 1", &o[1]);
    ask(f, "slow 2", &o[2]);
    assert_int_equal(loop_http_pending(f->loop), 1);
    run_for(f, 50);             /* r0 reaches the stub */
    llm_cancel(r1);             /* waiting */
    llm_cancel(r0);             /* in flight: r2 takes the slot */
    assert_int_equal(llm_in_flight(f->llm), 1);
    assert_int_equal(loop_http_pending(f->loop), 1);
    run_until(f, &o[2], 1);
    run_for(f, 300);
    assert_int_equal(o[0].called, 0);
    assert_int_equal(o[1].called, 0);
    assert_int_equal(o[2].called, 1);
    assert_string_equal(o[2].content, "echo: slow 2");
    /* slow 1 never reached the stub */
    recs = stub_requests();
    for (int i = 0; i < cJSON_GetArraySize(recs); i++) {
        char *s = cJSON_PrintUnformatted(cJSON_GetObjectItem(
            cJSON_GetArrayItem(recs, i), "body"));

        assert_null(strstr(s, "slow 1"));
        free(s);
    }
    cJSON_Delete(recs);
}

/* A done callback that frees the client while others are pending. */
static struct llm **free_target;

static void on_done_free(const struct llm_result *res, void *privdata)
{
    on_done(res, privdata);
    llm_free(*free_target);
    *free_target = NULL;
}

static void test_free_inside_callback(void **state)
{
    struct fixture *f = *state;
    struct outcome o[3];
    int rc;

    memset(o, 0, sizeof(o));
    stub_script("[{\"when_contains\":\"slow\",\"delay\":0.3,"
                "\"repeat\":true}]");
    free_target = &f->llm;
    inside_complete = 1;
    rc = llm_complete(f->llm, NULL, user_messages("fast"), on_done_free,
                      &o[0], NULL);
    inside_complete = 0;
    assert_int_equal(rc, PARLEY_OK);
    ask(f, "slow a", &o[1]);
    ask(f, "slow b", &o[2]);
    run_until(f, &o[0], 1);
    assert_null(f->llm);
    run_for(f, 400);
    assert_int_equal(o[1].called, 0);
    assert_int_equal(o[2].called, 0);
    assert_int_equal(loop_http_pending(f->loop), 0);
}

static struct fixture *chain_fixture;
static struct outcome chain_second;

static void on_done_chain(const struct llm_result *res, void *privdata)
{
    on_done(res, privdata);
    inside_complete = 1;
    assert_int_equal(llm_complete(chain_fixture->llm, NULL,
                                  user_messages("second"), on_done,
                                  &chain_second, NULL), PARLEY_OK);
    inside_complete = 0;
}

static void test_done_may_submit(void **state)
{
    struct fixture *f = *state;
    struct outcome first = { 0 };

    memset(&chain_second, 0, sizeof(chain_second));
    chain_fixture = f;
    assert_int_equal(llm_complete(f->llm, NULL, user_messages("first"),
                                  on_done_chain, &first, NULL), PARLEY_OK);
    run_until(f, &chain_second, 1);
    assert_int_equal(first.status, PARLEY_OK);
    assert_string_equal(chain_second.content, "echo: second");
}

/* ------------------------------------------------------------------ */
/* loop.c directly                                                    */

struct http_outcome {
    int called;
    int status;
    long code;
    long retry_after_ms;
    char body[256];
    size_t body_len;
    char errstr[256];
};

static int inside_http_start;

static void on_http(const struct http_response *resp, void *privdata)
{
    struct http_outcome *o = privdata;

    assert_false(inside_http_start);
    o->called++;
    o->status = resp->status;
    o->code = resp->code;
    o->retry_after_ms = resp->retry_after_ms;
    o->body_len = resp->body_len;
    snprintf(o->body, sizeof(o->body), "%s", resp->body);
    snprintf(o->errstr, sizeof(o->errstr), "%s",
             resp->errstr ? resp->errstr : "");
}

static struct http_request *http_get(struct fixture *f, const char *path,
                                     size_t max_body, long timeout_ms,
                                     struct http_outcome *o)
{
    char url[128];
    const char *hdrs[] = { "Authorization: Bearer " KEY };
    struct http_options opt;
    struct http_request *req = NULL;

    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", stub_port, path);
    memset(&opt, 0, sizeof(opt));
    opt.url = url;
    opt.headers = hdrs;
    opt.n_headers = 1;
    opt.max_body = max_body;
    opt.timeout_ms = timeout_ms;
    inside_http_start = 1;
    assert_int_equal(loop_http_start(f->loop, &opt, on_http, o, &req),
                     PARLEY_OK);
    inside_http_start = 0;
    assert_non_null(req);
    assert_int_equal(o->called, 0);
    return req;
}

static void run_until_http(struct fixture *f, struct http_outcome *o)
{
    uint64_t start = uv_hrtime();

    while (!o->called) {
        if ((uv_hrtime() - start) / 1000000 > TEST_LOOP_MAX_MS)
            fail_msg("no HTTP answer in %d ms", TEST_LOOP_MAX_MS);
        uv_run(&f->uv, UV_RUN_ONCE);
    }
}

static void test_loop_get(void **state)
{
    struct fixture *f = *state;
    struct http_outcome o = { 0 };

    http_get(f, "/v1/models", 0, 2000, &o);
    assert_int_equal(loop_http_pending(f->loop), 1);
    run_until_http(f, &o);
    assert_int_equal(o.status, PARLEY_OK);
    assert_int_equal(o.code, 200);
    assert_int_equal(o.retry_after_ms, -1);
    assert_non_null(strstr(o.body, "gpt-4o-mini"));
    assert_int_equal(loop_http_pending(f->loop), 0);
}

static void test_loop_body_cap(void **state)
{
    struct fixture *f = *state;
    struct http_outcome o = { 0 };

    http_get(f, "/v1/models", 40, 2000, &o);
    run_until_http(f, &o);
    assert_int_equal(o.status, PARLEY_ERR_TOO_LARGE);
    assert_non_null(strstr(o.errstr, "cap"));
}

static void test_loop_rejects(void **state)
{
    struct fixture *f = *state;
    struct http_outcome o = { 0 };
    const char *evil[] = { "X-Ok: 1", "X-Evil: 1\r\nX-Injected: 2" };
    struct http_options opt;
    struct http_request *req = (void *)1;
    char url[64];

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/models", stub_port);
    memset(&opt, 0, sizeof(opt));
    opt.url = url;
    opt.headers = evil;
    opt.n_headers = 2;
    assert_int_not_equal(loop_http_start(f->loop, &opt, on_http, &o, &req),
                         PARLEY_OK);
    assert_null(req);
    opt.n_headers = 1;
    opt.method = "GET\r\nX: y";
    assert_int_not_equal(loop_http_start(f->loop, &opt, on_http, &o, NULL),
                         PARLEY_OK);
    /* only http and https: file:// fails from the loop, not inline */
    opt.method = NULL;
    opt.url = "file:///etc/passwd";
    inside_http_start = 1;
    assert_int_equal(loop_http_start(f->loop, &opt, on_http, &o, NULL),
                     PARLEY_OK);
    inside_http_start = 0;
    run_until_http(f, &o);
    assert_int_not_equal(o.status, PARLEY_OK);
    assert_int_equal(o.code, 0);
    assert_int_equal(o.body_len, 0);
    assert_true(o.errstr[0] != '\0');
}

static struct http_request *http_hang(struct fixture *f,
                                      struct http_outcome *o)
{
    static const char body[] =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
        "\"content\":\"hang here\"}]}";
    const char *hdrs[] = { "Authorization: Bearer " KEY,
                           "Content-Type: application/json" };
    struct http_options opt;
    struct http_request *req = NULL;
    char url[128];

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/chat/completions",
             stub_port);
    memset(&opt, 0, sizeof(opt));
    opt.method = "POST";
    opt.url = url;
    opt.headers = hdrs;
    opt.n_headers = 2;
    opt.body = body;
    opt.body_len = sizeof(body) - 1;
    assert_int_equal(loop_http_start(f->loop, &opt, on_http, o, &req),
                     PARLEY_OK);
    return req;
}

/* Cancel one request on the wire and close the loop under another. */
static void test_loop_close_in_flight(void **state)
{
    struct fixture *f = *state;
    struct http_outcome o[2];
    struct http_request *r0;

    memset(o, 0, sizeof(o));
    stub_script("[{\"when_contains\":\"hang\",\"hang\":1,"
                "\"repeat\":true}]");
    r0 = http_hang(f, &o[0]);
    http_hang(f, &o[1]);
    run_for(f, 150);
    assert_int_equal(stub_count(), 2);  /* both are on the wire */
    loop_http_cancel(r0);
    assert_int_equal(loop_http_pending(f->loop), 1);
    run_for(f, 20);
    llm_free(f->llm);
    f->llm = NULL;
    loop_close(f->loop);
    /* loop_close cancels without callbacks; teardown runs the loop until
     * every handle is closed and checks that none is left */
    uv_run(&f->uv, UV_RUN_DEFAULT);
    assert_int_equal(o[0].called, 0);
    assert_int_equal(o[1].called, 0);
    assert_int_equal(loop_http_start(f->loop, &(struct http_options){
        .url = "http://127.0.0.1:1/" }, on_http, &o[0], NULL),
        PARLEY_ERR_STATE);
}

/* ------------------------------------------------------------------ */
/* streaming                                                          */

/* What a streamed request produced: its deltas and its outcome. */
struct stream_outcome {
    struct outcome o;
    int deltas;
    char text[LLM_DELTA_LOG];   /* the pieces, concatenated */
    size_t text_len;            /* may exceed sizeof(text) */
    size_t content_len;         /* of the last delta */
    int content_matches;        /* every delta's content = text so far */
    uint64_t t_first;           /* uv_hrtime of the first delta */
    size_t first_len;           /* length of the first delta */
    struct fixture *f;          /* for the callbacks that act */
    struct llm_request *req;
    int cancel_at;              /* llm_cancel(req) at this delta */
    int free_at;                /* llm_free(f->llm) at this delta */
    int submit_at;              /* llm_complete a follow-up here */
    struct outcome follow;
};

static void on_delta(const struct llm_delta *d, void *privdata)
{
    struct stream_outcome *s = privdata;

    assert_false(inside_complete);
    assert_true(d->len > 0);
    assert_int_equal(strlen(d->text), d->len);
    assert_int_equal(strlen(d->content), d->content_len);
    assert_int_equal(d->content_len, s->text_len + d->len);
    assert_ptr_equal(d->text, d->content + s->text_len);
    if (s->text_len + d->len < sizeof(s->text)) {
        memcpy(s->text + s->text_len, d->text, d->len + 1);
        if (memcmp(d->content, s->text, d->content_len) != 0)
            s->content_matches = 0;
    }
    if (!s->deltas) {
        s->t_first = uv_hrtime();
        s->first_len = d->len;
    }
    s->deltas++;
    s->text_len += d->len;
    s->content_len = d->content_len;
    if (s->cancel_at && s->deltas == s->cancel_at)
        llm_cancel(s->req);
    if (s->free_at && s->deltas == s->free_at) {
        llm_free(s->f->llm);
        s->f->llm = NULL;
    }
    if (s->submit_at && s->deltas == s->submit_at)
        assert_int_equal(llm_complete(s->f->llm, NULL, user_messages("more"),
                                      on_done, &s->follow, NULL),
                         PARLEY_OK);
}

static void on_stream_done(const struct llm_result *res, void *privdata)
{
    struct stream_outcome *s = privdata;

    on_done(res, &s->o);
    if (res->status == PARLEY_OK)
        assert_int_equal(res->delivered, strlen(res->content));
    s->o.attempts = res->attempts;
    s->o.prompt_tokens = res->prompt_tokens;
    s->content_len = res->delivered;
}

static void ask_stream(struct fixture *f, const char *text,
                       struct stream_outcome *s)
{
    int rc;

    s->f = f;
    s->content_matches = 1;
    inside_complete = 1;
    rc = llm_complete_stream(f->llm, NULL, user_messages(text), on_delta,
                             on_stream_done, s, &s->req);
    inside_complete = 0;
    assert_int_equal(rc, PARLEY_OK);
    assert_non_null(s->req);
    assert_int_equal(s->o.called, 0);
    assert_int_equal(s->deltas, 0);
}

/* Reset s, play script (NULL: none) on the stub, ask for text as a
 * stream and run the loop until done. */
static void stream_case(struct fixture *f, const char *script,
                        const char *text, struct stream_outcome *s)
{
    memset(s, 0, sizeof(*s));
    if (script)
        stub_script(script);
    ask_stream(f, text, s);
    run_until(f, &s->o, 1);
}

static void test_stream_success(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };
    cJSON *recs, *rec, *body, *opts;

    ask_stream(f, "hello \xc3\xa9 there", &s);
    run_until(f, &s.o, 1);
    assert_int_equal(s.o.status, PARLEY_OK);
    assert_int_equal(s.o.http_code, 200);
    assert_int_equal(s.o.attempts, 1);
    assert_string_equal(s.o.content, "echo: hello \xc3\xa9 there");
    /* four characters a piece: the answer came in several deltas */
    assert_true(s.deltas >= 4);
    assert_string_equal(s.text, s.o.content);
    assert_true(s.content_matches);
    assert_string_equal(s.o.finish, "stop");
    assert_true(s.o.prompt_tokens > 0);
    assert_true(s.o.completion_tokens > 0);
    assert_int_equal(llm_in_flight(f->llm), 0);

    recs = stub_requests();
    rec = cJSON_GetArrayItem(recs, 0);
    body = cJSON_GetObjectItem(rec, "body");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(body, "stream")));
    opts = cJSON_GetObjectItem(body, "stream_options");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(opts, "include_usage")));
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(rec,
                        "headers"), "Accept")->valuestring,
                        "text/event-stream");
    cJSON_Delete(recs);

    /* llm_complete is unchanged: no stream in its body */
    memset(&s, 0, sizeof(s));
    free(stub_call("/_control/reset", ""));
    ask(f, "plain", &s.o);
    run_until(f, &s.o, 1);
    assert_string_equal(s.o.content, "echo: plain");
    recs = stub_requests();
    body = cJSON_GetObjectItem(cJSON_GetArrayItem(recs, 0), "body");
    assert_null(cJSON_GetObjectItem(body, "stream"));
    assert_null(cJSON_GetObjectItem(body, "stream_options"));
    cJSON_Delete(recs);
}

/* Events cut every few bytes, CRLF line ends, keep-alive comments, and
 * multi-byte characters: the same answer. */
static void test_stream_awkward_bytes(void **state)
{
    struct fixture *f = *state;
    static const char *const eols[] = { "\\r\\n", "\\r", "\\n" };
    static const int splits[] = { 1, 3, 7 };

    for (int i = 0; i < 3; i++) {
        struct stream_outcome s = { 0 };
        char script[256];

        snprintf(script, sizeof(script), "[{\"split_bytes\":%d,"
                 "\"line_ending\":\"%s\",\"comments\":true,\"pieces\":"
                 "[\"caf\\u00e9\",\" \\u2603 \",\"\\ud83d\\ude00\","
                 "\" ok\"]}]", splits[i], eols[i]);
        stub_script(script);
        ask_stream(f, "x", &s);
        run_until(f, &s.o, 1);
        assert_int_equal(s.o.status, PARLEY_OK);
        assert_string_equal(s.o.content,
                            "caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80 ok");
        assert_string_equal(s.text, s.o.content);
        assert_true(s.content_matches);
        assert_int_equal(s.deltas, 4);
    }
}

/* A server that cuts UTF-8 inside a character (raw bytes in its JSON):
 * no delta ends inside one. */
static void test_stream_utf8_held_back(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };

    /* "caf\xc3" "\xa9 \xe2\x98" "\x83!" as code points 0-255 */
    stream_case(f, "[{\"latin1\":true,\"pieces\":[\"caf\\u00c3\","
                "\"\\u00a9 \\u00e2\\u0098\",\"\\u0083!\"]}]", "x", &s);
    assert_int_equal(s.o.status, PARLEY_OK);
    assert_string_equal(s.o.content, "caf\xc3\xa9 \xe2\x98\x83!");
    assert_string_equal(s.text, s.o.content);
    assert_int_equal(s.deltas, 3);
    assert_true(s.content_matches);
    assert_int_equal(s.first_len, 3);       /* "caf", the \xc3 held */
}

/* Deltas arrive while the answer is still being written. */
static void test_stream_slow_is_incremental(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };

    stream_case(f, "[{\"chunk_delay\":0.1,\"pieces\":[\"a\",\"b\",\"c\","
                "\"d\"]}]", "x", &s);
    assert_int_equal(s.o.status, PARLEY_OK);
    assert_string_equal(s.o.content, "abcd");
    assert_int_equal(s.deltas, 4);
    /* first delta at about 0.2 s, done after 0.7 s (one delay a write) */
    assert_true(elapsed_ms(s.t_first, s.o.t_done) >= 300);
}

static void test_stream_break_before_delta(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };

    stream_case(f, "[{\"break_after\":0}]", "hi", &s);
    assert_int_equal(s.o.status, PARLEY_OK);
    assert_int_equal(s.o.attempts, 2);
    assert_string_equal(s.o.content, "echo: hi");
    assert_string_equal(s.text, "echo: hi");
    assert_int_equal(stub_count(), 2);
}

static void test_stream_break_after_delta(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };

    stream_case(f, "[{\"break_after\":2}]", "hello world", &s);
    assert_int_equal(s.o.status, PARLEY_ERR_IO);
    assert_int_equal(s.o.retryable, 0);
    assert_int_equal(s.o.attempts, 1);
    assert_string_equal(s.o.content, "");
    assert_string_equal(s.text, "echo: he");
    assert_int_equal(s.content_len, 8);     /* res->delivered */
    assert_non_null(strstr(s.o.errstr, "broke off after 8 bytes"));
    assert_non_null(strstr(s.o.errstr, "stream broke"));
    run_for(f, 100);
    assert_int_equal(stub_count(), 1);
}

static void test_stream_error_event(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };

    /* after a delta: final, whatever the error */
    stream_case(f, "[{\"error_after\":1}]", "hello world", &s);
    assert_int_equal(s.o.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(s.o.retryable, 0);
    assert_int_equal(s.o.attempts, 1);
    assert_string_equal(s.text, "echo");
    assert_non_null(strstr(s.o.errstr, "broke off after 4 bytes"));
    assert_non_null(strstr(s.o.errstr,
        "reported an error: server_error: The server had an error"));

    /* before any delta, a server error is retried */
    free(stub_call("/_control/reset", ""));
    stream_case(f, "[{\"error_after\":0}]", "hi", &s);
    assert_int_equal(s.o.status, PARLEY_OK);
    assert_int_equal(s.o.attempts, 2);
    assert_string_equal(s.text, "echo: hi");

    /* ... but not a request error */
    free(stub_call("/_control/reset", ""));
    stream_case(f, "[{\"error_after\":0,\"error_type\":"
                "\"invalid_request_error\",\"error_message\":\"bad\"}]",
                "hi", &s);
    assert_int_equal(s.o.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(s.o.attempts, 1);
    assert_int_equal(s.deltas, 0);
    assert_non_null(strstr(s.o.errstr, "invalid_request_error: bad"));

    /* an error event that echoes the key */
    free(stub_call("/_control/reset", ""));
    stream_case(f, "[{\"error_after\":0,\"error_type\":"
                "\"invalid_request_error\",\"error_message\":\"key "
                KEY " is wrong\"}]", "hi", &s);
    assert_int_equal(s.o.status, PARLEY_ERR_PROTOCOL);
    assert_null(strstr(s.o.errstr, "SECRET"));
    assert_non_null(strstr(s.o.errstr, "key [redacted] is wrong"));
}

/* A server that ignores "stream" answers with one JSON body. */
static void test_stream_ignored(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };

    stream_case(f, "[{\"ignore_stream\":true}]", "whole", &s);
    assert_int_equal(s.o.status, PARLEY_OK);
    assert_int_equal(s.deltas, 1);
    assert_string_equal(s.text, "echo: whole");
    assert_string_equal(s.o.content, "echo: whole");
    assert_true(s.o.prompt_tokens > 0);
}

static void test_stream_http_errors(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };
    uint64_t start = uv_hrtime();

    /* 429 with retry-after-ms, then a stream */
    stream_case(f, "[{\"status\":429,\"retry_after_ms\":200}]", "hi", &s);
    assert_int_equal(s.o.status, PARLEY_OK);
    assert_int_equal(s.o.attempts, 2);
    assert_true(elapsed_ms(start, s.o.t_done) >= 200);
    assert_string_equal(s.text, "echo: hi");

    /* 401 is final, its body read as an error, the key redacted */
    fixture_recreate(f, WRONG_KEY);
    stream_case(f, NULL, "hi", &s);
    assert_int_equal(s.o.status, PARLEY_ERR_HTTP);
    assert_int_equal(s.o.http_code, 401);
    assert_int_equal(s.o.attempts, 1);
    assert_int_equal(s.deltas, 0);
    assert_null(strstr(s.o.errstr, WRONG_KEY));
    assert_non_null(strstr(s.o.errstr, "[redacted]"));
}

static void test_stream_endings(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };

    /* no [DONE], but a finish_reason: the answer is whole */
    stream_case(f, "[{\"no_done\":true}]", "hi", &s);
    assert_int_equal(s.o.status, PARLEY_OK);
    assert_string_equal(s.o.content, "echo: hi");

    /* neither: cut short, and text was shown, so final */
    stream_case(f, "[{\"no_done\":true,\"no_finish\":true}]", "hi", &s);
    assert_int_equal(s.o.status, PARLEY_ERR_EOF);
    assert_int_equal(s.o.attempts, 1);
    assert_string_equal(s.o.content, "");
    assert_non_null(strstr(s.o.errstr, "before the answer was complete"));

    /* a refusal has no content */
    stream_case(f, "[{\"refusal\":\"I can't help with that.\"}]", "hi", &s);
    assert_int_equal(s.o.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(s.deltas, 0);
    assert_non_null(strstr(s.o.errstr,
                           "the model refused: I can't help with that."));
}

/* The key spelled across several events never reaches a delta. */
static void test_stream_key_split_is_redacted(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };

    stream_case(f, "[{\"pieces\":[\"my key: sk-li\",\"ve-test-SEC\","
                "\"RET-0123456789abc\",\"def. and sk-\",\"live-no\"]}]",
                "hi", &s);
    assert_int_equal(s.o.status, PARLEY_OK);
    assert_string_equal(s.o.content,
                        "my key: [redacted]. and sk-live-no");
    assert_string_equal(s.text, s.o.content);
    assert_null(strstr(s.text, "SECRET"));
}

static void test_stream_too_large(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };
    char script[96];

    /* 4 MiB through ASan on a busy machine can take a while */
    f->cfg.timeout_ms = TEST_LOOP_MAX_MS - 1000;
    fixture_recreate(f, KEY);
    snprintf(script, sizeof(script), "[{\"body_bytes\":%d,"
             "\"piece_chars\":524288}]", LLM_BODY_MAX + 10);
    stream_case(f, script, "hi", &s);
    assert_int_equal(s.o.status, PARLEY_ERR_TOO_LARGE);
    assert_int_equal(s.o.retryable, 0);
    assert_int_equal(s.o.attempts, 1);
    assert_true(s.text_len <= LLM_BODY_MAX);
    assert_true(s.text_len > 0);
    assert_non_null(strstr(s.o.errstr, "byte cap"));

    /* one event over the SSE cap, after a retried 429 */
    snprintf(script, sizeof(script), "[{\"status\":429,"
             "\"retry_after_ms\":10},{\"body_bytes\":%d,"
             "\"piece_chars\":%d}]", SSE_EVENT_MAX, SSE_EVENT_MAX);
    stream_case(f, script, "hi", &s);
    assert_int_equal(s.o.status, PARLEY_ERR_TOO_LARGE);
    assert_int_equal(s.o.attempts, 2);
    assert_int_equal(s.deltas, 0);
    assert_non_null(strstr(s.o.errstr, "line is over the 1048576-byte"));
}

/* on_delta cancels its own request, frees the client, or submits. */
static void test_stream_callbacks_act(void **state)
{
    struct fixture *f = *state;
    struct stream_outcome s = { 0 };

    s.cancel_at = 1;
    stub_script("[{\"chunk_delay\":0.02}]");
    ask_stream(f, "hello world", &s);
    run_for(f, 600);
    assert_int_equal(s.deltas, 1);
    assert_int_equal(s.o.called, 0);
    assert_int_equal(llm_in_flight(f->llm), 0);
    assert_int_equal(loop_http_pending(f->loop), 0);

    memset(&s, 0, sizeof(s));
    s.submit_at = 2;
    ask_stream(f, "hello world", &s);
    run_until(f, &s.o, 1);
    run_until(f, &s.follow, 1);
    assert_int_equal(s.o.status, PARLEY_OK);
    assert_string_equal(s.follow.content, "echo: more");

    memset(&s, 0, sizeof(s));
    s.free_at = 2;
    ask_stream(f, "hello world", &s);
    run_for(f, 400);
    assert_null(f->llm);
    assert_int_equal(s.deltas, 2);
    assert_int_equal(s.o.called, 0);
    assert_int_equal(loop_http_pending(f->loop), 0);
}

static void test_stream_bad_args(void **state)
{
    struct fixture *f = *state;
    struct llm_request *req = (void *)1;

    /* messages consumed on error too (ASan would see the leak) */
    assert_int_not_equal(llm_complete_stream(f->llm, NULL,
                                             user_messages("x"), NULL,
                                             on_done, NULL, &req),
                         PARLEY_OK);
    assert_null(req);
    assert_int_not_equal(llm_complete_stream(f->llm, NULL,
                                             cJSON_CreateArray(), on_delta,
                                             on_done, NULL, NULL),
                         PARLEY_OK);
    assert_int_equal(llm_in_flight(f->llm), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_success, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2c_ignored_when_curl_cannot,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_key_no_auth_header, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_model_override_and_max_tokens,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_messages_rejected, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_429_retry_after, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_429_retry_after_ms, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_500_exhausts_retries, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_401_not_retried_key_redacted,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_key_never_leaks_a_prefix,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_404_not_retried, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_malformed_is_protocol, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_null_content_is_protocol,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_hang_times_out_then_retries,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_hang_always_is_timeout, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_drop_is_retried, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_refused_is_io, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reload_keeps_request_settings,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_concurrent, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_in_backoff, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_waiting_and_in_flight,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_inside_callback, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_done_may_submit, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_loop_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop_body_cap, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_loop_rejects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop_close_in_flight, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_stream_success,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_awkward_bytes,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_utf8_held_back,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_slow_is_incremental,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_break_before_delta,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_break_after_delta,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_error_event,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_ignored,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_http_errors,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_endings,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_key_split_is_redacted,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_too_large,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_callbacks_act,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_bad_args,
                                        setup, teardown),
    };

    spawn_require("/usr/bin/python3");
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
