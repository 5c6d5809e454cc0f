/*
 * The numbers behind /metrics and /healthz (see metrics.h).  Names follow
 * Prometheus conventions: parley_ prefix, _total for counters, base units
 * (seconds), labels for platform, command, outcome and status code.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "adapter.h"
#include "metrics.h"

/* Platforms get fixed slots so labels never allocate: one per adapter in
 * the registry (adapters/registry.c), then "other".  More registered
 * adapters than slots would count as "other". */
#define METRICS_PLATFORMS_MAX 16
#define N_PLATFORMS (METRICS_PLATFORMS_MAX + 1)

/* The label of slot i, or NULL past the registered platforms. */
static const char *platform_name(size_t i)
{
    size_t n;

    for (n = 0; n < METRICS_PLATFORMS_MAX && adapter_registry[n]; n++)
        if (n == i)
            return adapter_registry[n]->name;
    return i == n ? "other" : NULL;
}

static const char *const commands[] = { "greeting", "help", "model",
                                        "reset", "stats", "system", "more",
                                        "other" };
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

/* LLM latency buckets in seconds: chat answers take from a fraction of a
 * second (small local models) to a minute (long answers, retries). */
static const double buckets[] = { 0.25, 0.5, 1, 2, 5, 10, 30, 60 };
#define N_BUCKETS (sizeof(buckets) / sizeof(buckets[0]))

/* HTTP statuses 0..599 counted one by one; 0 = no answer at all. */
#define N_STATUS 600

struct adapter_gauge {
    char type[16];
    char account[64];
    int connected;
    char lease[16];             /* "" without a lease */
};

static struct {
    pthread_mutex_t lock;
    unsigned long long received[N_PLATFORMS];
    unsigned long long answered[N_PLATFORMS];
    unsigned long long commands[N_COMMANDS];
    unsigned long long greetings;
    unsigned long long matrix_skipped;
    unsigned long long work_claimed, work_for_others;
    long long work_lag, work_pending;
    unsigned long long e2ee_decrypt_failed, e2ee_key_requests;
    unsigned long long e2ee_olm_new, e2ee_olm_reused;
    unsigned long long e2ee_megolm_in, e2ee_megolm_out;
    long e2ee_utd_pending;
    int e2ee_store_bad;
    unsigned long long llm_ok[N_STATUS], llm_err[N_STATUS];
    unsigned long long retries;
    unsigned long long tokens_in, tokens_out;
    unsigned long long latency_bucket[N_BUCKETS];
    unsigned long long latency_count;
    double latency_sum;
    unsigned long long takeovers, lease_losses, fence_refused;
    char instance[96];
    int redis_up;
    unsigned long long redis_failovers;
    struct adapter_gauge adapters[METRICS_ADAPTERS_MAX];
    size_t n_adapters;
    size_t pending, rooms;
} m = { .lock = PTHREAD_MUTEX_INITIALIZER };

static size_t platform_index(const char *platform)
{
    size_t i;

    for (i = 0; i < METRICS_PLATFORMS_MAX && adapter_registry[i]; i++)
        if (platform && strcmp(platform, adapter_registry[i]->name) == 0)
            return i;
    return i;   /* "other" */
}

void metrics_reset(void)
{
    pthread_mutex_lock(&m.lock);
    memset((char *)&m + sizeof(m.lock), 0, sizeof(m) - sizeof(m.lock));
    pthread_mutex_unlock(&m.lock);
}

void metrics_message_received(const char *platform)
{
    pthread_mutex_lock(&m.lock);
    m.received[platform_index(platform)]++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_message_answered(const char *platform)
{
    pthread_mutex_lock(&m.lock);
    m.answered[platform_index(platform)]++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_command(const char *name)
{
    size_t i = 0;

    while (i + 1 < N_COMMANDS && (!name || strcmp(name, commands[i]) != 0))
        i++;
    pthread_mutex_lock(&m.lock);
    m.commands[i]++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_greeting(void)
{
    pthread_mutex_lock(&m.lock);
    m.greetings++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_lease_takeover(void)
{
    pthread_mutex_lock(&m.lock);
    m.takeovers++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_lease_lost(void)
{
    pthread_mutex_lock(&m.lock);
    m.lease_losses++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_fence_refused(void)
{
    pthread_mutex_lock(&m.lock);
    m.fence_refused++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_set_instance(const char *name)
{
    pthread_mutex_lock(&m.lock);
    snprintf(m.instance, sizeof(m.instance), "%s", name ? name : "");
    pthread_mutex_unlock(&m.lock);
}

void metrics_set_lease(size_t index, const char *state)
{
    if (index >= METRICS_ADAPTERS_MAX)
        return;
    pthread_mutex_lock(&m.lock);
    snprintf(m.adapters[index].lease, sizeof(m.adapters[index].lease), "%s",
             state ? state : "");
    pthread_mutex_unlock(&m.lock);
}

void metrics_redis_failover(void)
{
    pthread_mutex_lock(&m.lock);
    m.redis_failovers++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_matrix_event_skipped(void)
{
    pthread_mutex_lock(&m.lock);
    m.matrix_skipped++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_work_claimed(unsigned long n)
{
    pthread_mutex_lock(&m.lock);
    m.work_claimed += n;
    pthread_mutex_unlock(&m.lock);
}

void metrics_work_ran_for_others(void)
{
    pthread_mutex_lock(&m.lock);
    m.work_for_others++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_set_work_stream(long long lag, long long pending)
{
    pthread_mutex_lock(&m.lock);
    m.work_lag = lag;
    m.work_pending = pending;
    pthread_mutex_unlock(&m.lock);
}

void metrics_e2ee_decrypt_failed(void)
{
    pthread_mutex_lock(&m.lock);
    m.e2ee_decrypt_failed++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_e2ee_key_request(void)
{
    pthread_mutex_lock(&m.lock);
    m.e2ee_key_requests++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_e2ee_olm_session(int new_olm)
{
    pthread_mutex_lock(&m.lock);
    if (new_olm)
        m.e2ee_olm_new++;
    else
        m.e2ee_olm_reused++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_e2ee_megolm_session(int outbound)
{
    pthread_mutex_lock(&m.lock);
    if (outbound)
        m.e2ee_megolm_out++;
    else
        m.e2ee_megolm_in++;
    pthread_mutex_unlock(&m.lock);
}

void metrics_e2ee_utd_pending(long n)
{
    pthread_mutex_lock(&m.lock);
    m.e2ee_utd_pending = n > 0 ? n : 0;
    pthread_mutex_unlock(&m.lock);
}

void metrics_e2ee_store(int ok)
{
    pthread_mutex_lock(&m.lock);
    m.e2ee_store_bad = !ok;
    pthread_mutex_unlock(&m.lock);
}

void metrics_llm_done(int ok, long http_code, int attempts, double seconds,
                      long tokens_in, long tokens_out)
{
    size_t code = http_code > 0 && http_code < N_STATUS ?
                  (size_t)http_code : 0;

    pthread_mutex_lock(&m.lock);
    if (ok)
        m.llm_ok[code]++;
    else
        m.llm_err[code]++;
    if (attempts > 1)
        m.retries += (unsigned long long)(attempts - 1);
    if (tokens_in > 0)
        m.tokens_in += (unsigned long long)tokens_in;
    if (tokens_out > 0)
        m.tokens_out += (unsigned long long)tokens_out;
    for (size_t i = 0; i < N_BUCKETS; i++)
        if (seconds <= buckets[i])
            m.latency_bucket[i]++;
    m.latency_count++;
    m.latency_sum += seconds;
    pthread_mutex_unlock(&m.lock);
}

void metrics_set_redis(int up)
{
    pthread_mutex_lock(&m.lock);
    m.redis_up = up;
    pthread_mutex_unlock(&m.lock);
}

void metrics_set_adapter(size_t index, const char *type, const char *account,
                         int connected)
{
    if (index >= METRICS_ADAPTERS_MAX)
        return;
    pthread_mutex_lock(&m.lock);
    snprintf(m.adapters[index].type, sizeof(m.adapters[index].type), "%s",
             type ? type : "");
    snprintf(m.adapters[index].account, sizeof(m.adapters[index].account),
             "%s", account ? account : "");
    m.adapters[index].connected = connected;
    pthread_mutex_unlock(&m.lock);
}

void metrics_set_adapter_count(size_t n)
{
    pthread_mutex_lock(&m.lock);
    m.n_adapters = n < METRICS_ADAPTERS_MAX ? n : METRICS_ADAPTERS_MAX;
    pthread_mutex_unlock(&m.lock);
}

void metrics_set_queue(size_t pending, size_t rooms)
{
    pthread_mutex_lock(&m.lock);
    m.pending = pending;
    m.rooms = rooms;
    pthread_mutex_unlock(&m.lock);
}

/* Appends to a bounded buffer; once full, later lines are dropped whole
 * so the output never ends inside a line. */
struct out {
    char *buf;
    size_t len, used;
    int full;
};

static void emit(struct out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void emit(struct out *o, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (o->full || o->len == 0)
        return;
    va_start(ap, fmt);
    n = vsnprintf(o->buf + o->used, o->len - o->used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= o->len - o->used) {
        o->buf[o->used] = '\0';
        o->full = 1;
        return;
    }
    o->used += (size_t)n;
}

/* Label values are ours or platform ids: escape what the format needs. */
static void label_value(char *dst, size_t len, const char *src)
{
    size_t j = 0;

    for (size_t i = 0; src[i] && j + 2 < len; i++) {
        char c = src[i];

        if (c == '\\' || c == '"') {
            dst[j++] = '\\';
            dst[j++] = c;
        } else if (c == '\n') {
            dst[j++] = '\\';
            dst[j++] = 'n';
        } else {
            dst[j++] = c;
        }
    }
    dst[j] = '\0';
}

/* Instance name and leases: which replica this is, what it holds, how
 * often it took an account over or lost one.  Called with the lock. */
static void metrics_render_leases(struct out *o)
{
    char inst[200];
    size_t held = 0;

    for (size_t i = 0; i < m.n_adapters; i++)
        held += strcmp(m.adapters[i].lease, "held") == 0;
    label_value(inst, sizeof(inst), m.instance);
    emit(o, "# HELP parley_instance_info This process's instance name.\n"
         "# TYPE parley_instance_info gauge\n"
         "parley_instance_info{instance=\"%s\"} 1\n", inst);
    emit(o, "# HELP parley_leases_held Platform accounts this instance "
         "holds the lease of.\n# TYPE parley_leases_held gauge\n"
         "parley_leases_held{instance=\"%s\"} %zu\n", inst, held);
    emit(o, "# HELP parley_lease_takeovers_total Accounts taken over from "
         "an earlier holder (failovers).\n"
         "# TYPE parley_lease_takeovers_total counter\n"
         "parley_lease_takeovers_total{instance=\"%s\"} %llu\n", inst,
         m.takeovers);
    emit(o, "# HELP parley_lease_losses_total Leases lost while held "
         "(renewal failed or another holder).\n"
         "# TYPE parley_lease_losses_total counter\n"
         "parley_lease_losses_total{instance=\"%s\"} %llu\n", inst,
         m.lease_losses);
    emit(o, "# HELP parley_fencing_refused_total Writes Redis refused "
         "because a newer holder has the account.\n"
         "# TYPE parley_fencing_refused_total counter\n"
         "parley_fencing_refused_total{instance=\"%s\"} %llu\n", inst,
         m.fence_refused);
}

size_t metrics_render(char *buf, size_t len)
{
    struct out o = { buf, len, 0, 0 };

    if (len > 0)
        buf[0] = '\0';
    pthread_mutex_lock(&m.lock);
    emit(&o, "# HELP parley_messages_received_total Messages seen by "
         "adapters and handed to the router.\n"
         "# TYPE parley_messages_received_total counter\n");
    for (size_t i = 0; platform_name(i); i++)
        emit(&o, "parley_messages_received_total{platform=\"%s\"} %llu\n",
             platform_name(i), m.received[i]);
    emit(&o, "# HELP parley_messages_answered_total Answers handed to "
         "adapters.\n# TYPE parley_messages_answered_total counter\n");
    for (size_t i = 0; platform_name(i); i++)
        emit(&o, "parley_messages_answered_total{platform=\"%s\"} %llu\n",
             platform_name(i), m.answered[i]);
    emit(&o, "# HELP parley_commands_total Chat commands run.\n"
         "# TYPE parley_commands_total counter\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        emit(&o, "parley_commands_total{command=\"%s\"} %llu\n",
             commands[i], m.commands[i]);
    emit(&o, "# HELP parley_greetings_total Greetings sent.\n"
         "# TYPE parley_greetings_total counter\n"
         "parley_greetings_total %llu\n", m.greetings);
    emit(&o, "# HELP parley_matrix_events_skipped_total Matrix events the "
         "router refused repeatedly, skipped so the sync goes on.\n"
         "# TYPE parley_matrix_events_skipped_total counter\n"
         "parley_matrix_events_skipped_total %llu\n", m.matrix_skipped);
    emit(&o, "# HELP parley_work_claimed_total Shared jobs taken over from "
         "a worker that went quiet (ha.claim_idle_ms).\n"
         "# TYPE parley_work_claimed_total counter\n"
         "parley_work_claimed_total %llu\n", m.work_claimed);
    emit(&o, "# HELP parley_work_for_others_total Shared jobs this "
         "instance's workers answered for another instance.\n"
         "# TYPE parley_work_for_others_total counter\n"
         "parley_work_for_others_total %llu\n", m.work_for_others);
    emit(&o, "# HELP parley_work_stream_lag Entries of the shared job "
         "stream no worker has read yet.\n"
         "# TYPE parley_work_stream_lag gauge\n"
         "parley_work_stream_lag %lld\n", m.work_lag);
    emit(&o, "# HELP parley_work_stream_pending Entries of the shared job "
         "stream read by a worker and not finished.\n"
         "# TYPE parley_work_stream_pending gauge\n"
         "parley_work_stream_pending %lld\n", m.work_pending);
    emit(&o, "# HELP parley_matrix_e2ee_decrypt_failures_total Encrypted "
         "room events that could not be decrypted when met.\n"
         "# TYPE parley_matrix_e2ee_decrypt_failures_total counter\n"
         "parley_matrix_e2ee_decrypt_failures_total %llu\n"
         "# HELP parley_matrix_e2ee_key_requests_total Room key requests "
         "sent.\n# TYPE parley_matrix_e2ee_key_requests_total counter\n"
         "parley_matrix_e2ee_key_requests_total %llu\n"
         "# HELP parley_matrix_e2ee_olm_sessions_total Olm sessions used "
         "to share room keys, new or reused.\n"
         "# TYPE parley_matrix_e2ee_olm_sessions_total counter\n"
         "parley_matrix_e2ee_olm_sessions_total{kind=\"new\"} %llu\n"
         "parley_matrix_e2ee_olm_sessions_total{kind=\"reused\"} %llu\n"
         "# HELP parley_matrix_e2ee_megolm_sessions_total Megolm sessions "
         "stored (inbound) or created (outbound).\n"
         "# TYPE parley_matrix_e2ee_megolm_sessions_total counter\n"
         "parley_matrix_e2ee_megolm_sessions_total{direction=\"inbound\"}"
         " %llu\n"
         "parley_matrix_e2ee_megolm_sessions_total{direction=\"outbound\"}"
         " %llu\n"
         "# HELP parley_matrix_e2ee_utd Encrypted events kept waiting for "
         "their room key.\n# TYPE parley_matrix_e2ee_utd gauge\n"
         "parley_matrix_e2ee_utd %ld\n"
         "# HELP parley_matrix_e2ee_store_ok Whether the crypto store "
         "could be read at the last try.\n"
         "# TYPE parley_matrix_e2ee_store_ok gauge\n"
         "parley_matrix_e2ee_store_ok %d\n",
         m.e2ee_decrypt_failed, m.e2ee_key_requests, m.e2ee_olm_new,
         m.e2ee_olm_reused, m.e2ee_megolm_in, m.e2ee_megolm_out,
         m.e2ee_utd_pending, !m.e2ee_store_bad);
    emit(&o, "# HELP parley_llm_requests_total Completions by outcome and "
         "last HTTP status (0: no answer).\n"
         "# TYPE parley_llm_requests_total counter\n");
    for (size_t c = 0; c < N_STATUS; c++) {
        if (m.llm_ok[c])
            emit(&o, "parley_llm_requests_total{outcome=\"ok\",status=\"%zu\"}"
                 " %llu\n", c, m.llm_ok[c]);
        if (m.llm_err[c])
            emit(&o, "parley_llm_requests_total{outcome=\"error\","
                 "status=\"%zu\"} %llu\n", c, m.llm_err[c]);
    }
    emit(&o, "# HELP parley_llm_retries_total Requests repeated after a "
         "rate limit, server error or timeout.\n"
         "# TYPE parley_llm_retries_total counter\n"
         "parley_llm_retries_total %llu\n", m.retries);
    emit(&o, "# HELP parley_llm_tokens_total Tokens reported by the API.\n"
         "# TYPE parley_llm_tokens_total counter\n"
         "parley_llm_tokens_total{direction=\"in\"} %llu\n"
         "parley_llm_tokens_total{direction=\"out\"} %llu\n",
         m.tokens_in, m.tokens_out);
    emit(&o, "# HELP parley_llm_latency_seconds Time from the first try to "
         "the result of a completion.\n"
         "# TYPE parley_llm_latency_seconds histogram\n");
    for (size_t i = 0; i < N_BUCKETS; i++)
        emit(&o, "parley_llm_latency_seconds_bucket{le=\"%g\"} %llu\n",
             buckets[i], m.latency_bucket[i]);
    emit(&o, "parley_llm_latency_seconds_bucket{le=\"+Inf\"} %llu\n"
         "parley_llm_latency_seconds_sum %.6f\n"
         "parley_llm_latency_seconds_count %llu\n",
         m.latency_count, m.latency_sum, m.latency_count);
    emit(&o, "# HELP parley_redis_up Whether the Redis connection is up.\n"
         "# TYPE parley_redis_up gauge\nparley_redis_up %d\n", m.redis_up);
    emit(&o, "# HELP parley_redis_failovers_total Times the Redis master was "
         "followed to a new address (Sentinel).\n"
         "# TYPE parley_redis_failovers_total counter\n"
         "parley_redis_failovers_total %llu\n", m.redis_failovers);
    emit(&o, "# HELP parley_adapter_connected Whether each adapter is "
         "connected.\n# TYPE parley_adapter_connected gauge\n");
    for (size_t i = 0; i < m.n_adapters; i++) {
        char type[40], account[136];

        label_value(type, sizeof(type), m.adapters[i].type);
        label_value(account, sizeof(account), m.adapters[i].account);
        emit(&o, "parley_adapter_connected{platform=\"%s\",account=\"%s\"}"
             " %d\n", type, account, m.adapters[i].connected);
    }
    metrics_render_leases(&o);
    emit(&o, "# HELP parley_queue_depth Events accepted and not yet "
         "answered.\n# TYPE parley_queue_depth gauge\n"
         "parley_queue_depth %zu\n"
         "# HELP parley_rooms_active Rooms with work queued or running.\n"
         "# TYPE parley_rooms_active gauge\nparley_rooms_active %zu\n",
         m.pending, m.rooms);
    pthread_mutex_unlock(&m.lock);
    return o.used;
}

/* Waiting for a lease another instance holds: healthy, not connected. */
static int adapter_standing_by(const struct adapter_gauge *g)
{
    return strcmp(g->lease, "standby") == 0 ||
           strcmp(g->lease, "acquiring") == 0;
}

int metrics_health(char *buf, size_t len)
{
    struct out o = { buf, len, 0, 0 };
    char inst[200];
    size_t held = 0, standby = 0;
    int healthy;

    if (len > 0)
        buf[0] = '\0';
    pthread_mutex_lock(&m.lock);
    healthy = m.redis_up && !m.e2ee_store_bad;
    for (size_t i = 0; i < m.n_adapters; i++) {
        healthy = healthy && (m.adapters[i].connected ||
                              adapter_standing_by(&m.adapters[i]));
        held += strcmp(m.adapters[i].lease, "held") == 0;
        standby += adapter_standing_by(&m.adapters[i]);
    }
    /* A replica that holds nothing and waits is what it should be. */
    label_value(inst, sizeof(inst), m.instance);
    emit(&o, "{\"status\":\"%s\",\"instance\":\"%s\",\"redis\":%s,"
         "\"adapters\":[", !healthy ? "unavailable" :
         standby && !held ? "standby" : "ok", inst,
         m.redis_up ? "true" : "false");
    for (size_t i = 0; i < m.n_adapters; i++) {
        char type[40], account[136];

        /* The escaping rules of JSON strings match those above for the
         * characters that can occur in adapter names. */
        label_value(type, sizeof(type), m.adapters[i].type);
        label_value(account, sizeof(account), m.adapters[i].account);
        emit(&o, "%s{\"platform\":\"%s\",\"account\":\"%s\","
             "\"connected\":%s", i ? "," : "", type, account,
             m.adapters[i].connected ? "true" : "false");
        if (m.adapters[i].lease[0])
            emit(&o, ",\"lease\":\"%s\"", m.adapters[i].lease);
        emit(&o, "}");
    }
    emit(&o, "],\"queue_depth\":%zu,\"rooms_active\":%zu", m.pending,
         m.rooms);
    if (!healthy) {
        emit(&o, ",\"reason\":\"");
        if (!m.redis_up)
            emit(&o, "redis is down; ");
        if (m.e2ee_store_bad)
            emit(&o, "the Matrix crypto store cannot be read; ");
        for (size_t i = 0; i < m.n_adapters; i++)
            if (strcmp(m.adapters[i].lease, "lost") == 0)
                emit(&o, "%s adapter %s lost its lease; ",
                     m.adapters[i].type, m.adapters[i].account);
            else if (!m.adapters[i].connected &&
                     !adapter_standing_by(&m.adapters[i]))
                emit(&o, "%s adapter %s is not connected; ",
                     m.adapters[i].type, m.adapters[i].account);
        emit(&o, "\"");
    }
    emit(&o, "}\n");
    pthread_mutex_unlock(&m.lock);
    return healthy;
}
