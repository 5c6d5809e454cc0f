"""Operations: /healthz flips to 503 when Redis stops and back to 200 when
it returns; /metrics counters move after a conversation and parse as the
Prometheus text format; JSON log lines are one JSON object each and never
carry the key."""

import http.client
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, free_port, run_cases,
                     wait_until, write_config)

KEY = "sk-test-secret-key-0123456789abcdef"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*='
                    r'"(\\.|[^"\\])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*'
                    r')\})? (-?[0-9.e+]+|\+Inf|NaN)$')


def get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                    timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()
    except urllib.error.URLError:
        return 0, {}, ""     # not listening yet


def parse_prometheus(text):
    """Samples by 'name{labels}'; asserts every line is well formed."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m, "not Prometheus text: %r" % line
        key = line.rsplit(" ", 1)[0]
        samples[key] = float(line.rsplit(" ", 1)[1])
    return samples


def start(t, fmt="text"):
    redis = t.add(Redis(t.tmp).start())
    stub = t.add(Stub(t.tmp, api_key=KEY).start())
    port = free_port()
    conf = write_config(t.tmp, stub.base_url, redis.port,
                        extra='metrics = { listen = "127.0.0.1:%d"; };' % port)
    if fmt == "json":
        text = open(conf).read().replace('log_level = "debug";',
                                         'log_level = "debug"; '
                                         'log_format = "json";')
        with open(conf, "w") as f:
            f.write(text)
    p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY,
                                        "USER": "erin"}).start())
    return redis, stub, port, p


def test_healthz_follows_redis():
    with Test() as t:
        redis, stub, port, p = start(t)
        wait_until(lambda: get(port, "/healthz")[0] == 200, 10, "healthy")
        code, headers, body = get(port, "/healthz")
        doc = json.loads(body)
        assert doc["status"] == "ok" and doc["redis"] is True, doc
        assert doc["adapters"][0]["platform"] == "console"
        redis.cmd("SAVE")
        redis.stop()
        wait_until(lambda: get(port, "/healthz")[0] == 503, 10, "503")
        doc = json.loads(get(port, "/healthz")[2])
        assert "redis is down" in doc["reason"], doc
        redis2 = t.add(Redis(t.tmp, port=redis.port))
        redis2.dir = redis.dir
        redis2.start()
        wait_until(lambda: get(port, "/healthz")[0] == 200, 15, "200 again")
        assert get(port, "/nothing")[0] == 404
        assert p.close() == 0


def test_metrics_move_after_a_conversation():
    with Test() as t:
        redis, stub, port, p = start(t)
        wait_until(lambda: get(port, "/healthz")[0] == 200, 10, "healthy")
        code, headers, body = get(port, "/metrics")
        assert code == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        before = parse_prometheus(body)
        assert before['parley_messages_received_total{platform="console"}'] \
            == 0
        stub.script([{"status": 500}])
        p.ask("hello")
        p.ask("!stats")
        after = parse_prometheus(get(port, "/metrics")[2])
        assert after['parley_messages_received_total{platform="console"}'] \
            == 2
        assert after['parley_messages_answered_total{platform="console"}'] \
            >= 1
        assert after['parley_commands_total{command="stats"}'] == 1
        assert after['parley_llm_requests_total{outcome="ok",status="200"}'] \
            == 1
        assert after["parley_llm_retries_total"] == 1
        assert after['parley_llm_tokens_total{direction="out"}'] > 0
        assert after["parley_llm_latency_seconds_count"] == 1
        assert after["parley_redis_up"] == 1
        assert after['parley_adapter_connected{platform="console",'
                     'account="parley"}'] == 1
        assert p.close() == 0


def test_json_logs():
    with Test() as t:
        redis, stub, port, p = start(t, fmt="json")
        p.ask("hi\tthere \"quoted\"")
        assert p.close() == 0
        lines = [l for l in p.stderr().splitlines() if l.strip()]
        assert len(lines) > 3
        for line in lines:
            doc = json.loads(line)
            # Room events also carry "platform" and "room".
            assert set(doc) - {"platform", "room"} == {"ts", "level",
                                                       "msg"}, doc
            assert doc["level"] in ("debug", "info", "warn", "error")
        assert KEY not in p.stderr()


def healthz_within(port, seconds):
    """Status of GET /healthz from 127.0.0.1, or 0 when it did not answer
    within seconds (refused, reset or silent)."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port,
                                    timeout=seconds) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, http.client.HTTPException):
        return 0


def idle_sockets(port, n, source):
    """n connections from source that never send a byte."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def test_idle_connections_do_not_starve_healthz():
    """One client holding many idle connections (another loopback
    address, as another host would be) cannot keep /healthz from
    answering; idle connections from the checker's own address are closed
    after the short timeout, so even they only delay it briefly."""
    with Test() as t:
        redis, stub, port, p = start(t)
        wait_until(lambda: get(port, "/healthz")[0] == 200, 10, "healthy")
        hog = idle_sockets(port, 40, "127.0.0.2")
        t0 = time.time()
        assert healthz_within(port, 3) == 200, \
            "40 idle connections from 127.0.0.2 starve /healthz"
        assert time.time() - t0 < 2
        for s in hog:
            s.close()
        same = idle_sockets(port, 20, "127.0.0.1")
        t0 = time.time()
        wait_until(lambda: healthz_within(port, 1) == 200, 8,
                   "/healthz beside 20 idle connections from 127.0.0.1")
        assert time.time() - t0 < 6, time.time() - t0
        for s in same:
            s.close()
        assert p.proc.poll() is None


if __name__ == "__main__":
    run_cases([test_healthz_follows_redis,
               test_metrics_move_after_a_conversation,
               test_json_logs,
               test_idle_connections_do_not_starve_healthz])
