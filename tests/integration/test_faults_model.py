"""The model server misbehaving in every way the reliability work names,
against the real binary (console adapter, Redis, the OpenAI stand-in):
429 and 5xx storms, hangs past the timeout, a body trickling at 1 byte/s,
a 10 MB body, truncated JSON, connections reset or dropped mid-answer, and
bad answers (deeply nested or huge JSON, invalid UTF-8, NUL bytes,
control codes, empty bodies, unknown fields).

Expected for each: parley never exits, every question gets exactly one
reply (the answer, or the friendly fallback once the retries run out),
the failed exchange never reaches the history, and memory stays bounded:
the whole table is played twice and VmRSS may grow only a little between
the end of the first round and the end of the second (the first round
warms caches and allocators; a leak per fault would show in the second).
ASan's quarantine is kept small here so that freed memory is not counted
as growth.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, run_cases, write_config)

KEY = "sk-test-faults-0123456789abcdef"
FALLBACK = ("The service is temporarily unavailable, please try again in "
            "a moment.")
ROOM = "t:ctx:console:parley:console"
RSS_GROWTH_MAX_KB = 24 * 1024

ANSWER, FALLBACK_ONLY, EITHER = "answer", "fallback", "either"


def completion_raw(content_json):
    """A chat.completion body with content_json spliced in verbatim
    (bytes), for contents json.dumps would escape."""
    return (b'{"id":"chatcmpl-x","object":"chat.completion","created":1,'
            b'"model":"test-model","choices":[{"index":0,"message":'
            b'{"role":"assistant","content":' + content_json +
            b'},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,'
            b'"completion_tokens":1,"total_tokens":2}}')


def faults():
    """(name, stand-in actions, expected reply).  Every action is scoped
    to its question with when_contains, so a retry meets the same fault
    ("repeat") or the normal answer (no "repeat")."""
    deep = "[" * 100000 + "]" * 100000
    huge_junk = "{" + ",".join('"k%d":%d' % (i, i)
                               for i in range(150000)) + "}"
    return [
        ("429 storm", [{"status": 429, "retry_after_ms": 50,
                        "repeat": True}], FALLBACK_ONLY),
        ("429 then answer", [{"status": 429, "retry_after_ms": 50}], ANSWER),
        ("5xx storm", [{"status": 500}, {"status": 502}, {"status": 503}],
         FALLBACK_ONLY),
        ("503 then answer", [{"status": 503}], ANSWER),
        ("hang past the timeout", [{"hang": 4, "repeat": True}],
         FALLBACK_ONLY),
        ("1 byte/s body", [{"trickle": 1.0, "repeat": True}],
         FALLBACK_ONLY),
        ("1 byte/s body once", [{"trickle": 1.0}], ANSWER),
        ("10 MB body", [{"body_bytes": 10 * 1000 * 1000, "repeat": True}],
         FALLBACK_ONLY),
        ("truncated JSON", [{"malformed": True, "repeat": True}],
         FALLBACK_ONLY),
        ("connection reset", [{"reset": True, "repeat": True}],
         FALLBACK_ONLY),
        ("connection reset once", [{"reset": True}], ANSWER),
        ("dropped mid-body", [{"drop": True, "repeat": True}],
         FALLBACK_ONLY),
        ("deeply nested JSON", [{"raw": '{"choices":%s}' % deep,
                                 "repeat": True}], FALLBACK_ONLY),
        ("nested content", [{"raw": completion_raw(
            deep.encode()).decode(), "repeat": True}], FALLBACK_ONLY),
        ("huge unknown field", [{"raw": completion_raw(
            b'"fine despite the rest"').decode()[:-1] + ',"junk":%s}'
            % huge_junk, "repeat": True}], EITHER),
        ("unknown fields", [{"raw": completion_raw(
            b'"fine with extras"').decode()[:-1] +
            ',"x_new":{"a":[1,2,{"b":null}]},"system_fingerprint":7}',
            "repeat": True}], EITHER),
        ("invalid UTF-8", [{"raw": completion_raw(
            b'"bad \xff\xfe\xc3 bytes"').decode("latin-1"),
            "repeat": True}], EITHER),
        ("NUL in content", [{"content": "before\u0000after",
                             "repeat": True}], EITHER),
        ("control codes", [{"content": "\x1b[31mred\x1b[0m \x07\x08\r\n"
                            "\x01ACTION x\x01", "repeat": True}], EITHER),
        ("empty content", [{"content": "", "repeat": True}], EITHER),
        ("empty body", [{"raw": "", "repeat": True}], FALLBACK_ONLY),
        ("no choices", [{"raw": '{"choices":[]}', "repeat": True}],
         FALLBACK_ONLY),
        ("content not a string", [{"raw": completion_raw(
            b'{"a":1}').decode(), "repeat": True}], FALLBACK_ONLY),
    ]


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def play(p, stub, redis, round_no):
    """Ask one question per fault; check the reply and the history."""
    for i, (name, actions, expect) in enumerate(faults()):
        tag = "r%dq%d" % (round_no, i)
        for a in actions:
            a["when_contains"] = tag
        stub.script(actions)
        n = len(p.replies())
        p.send("%s %s" % (tag, name))
        # One reply per question, never two: the next question is sent
        # only after this one's reply, so a second reply would be counted
        # against the next question and fail there.
        reply = p.wait_replies(n + 1, timeout=40)[n]
        assert p.proc.poll() is None, "parley exited on %s: %s" % (
            name, p.stderr()[-2000:])
        answered = reply.startswith("echo: ") or reply.startswith("fine ")
        if expect == ANSWER:
            assert reply == "echo: bob: %s %s" % (tag, name), (name, reply)
        elif expect == FALLBACK_ONLY:
            assert reply == FALLBACK, (name, reply)
        else:
            # Some reply, never the raw junk of the answer's JSON.
            assert reply and "junk" not in reply and "k149999" not in reply \
                and "\x1b" not in reply and "\x00" not in reply, \
                (name, reply[:200])
        # History is trimmed to max_turns, so look for the question, not
        # at the length.
        history = "\n".join(redis.cmd("LRANGE", ROOM, 0, -1) or [])
        if reply == FALLBACK:
            assert tag not in history, "a failed exchange reached history"
        elif answered:
            assert tag in history, (name, history[-300:])
        stub.reset()


def test_model_faults_bounded():
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        # timeout 1.5 s, 2 retries: a hang or trickle gives up after
        # three tries of 1.5 s.
        conf = write_config(t.tmp, stub.base_url, redis.port,
                            timeout_ms=1500, max_retries=2,
                            backoff_max_ms=100)
        asan = os.environ.get("ASAN_OPTIONS", "")
        asan = (asan + ":" if asan else "") + "quarantine_size_mb=4"
        p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY,
                                            "USER": "bob",
                                            "ASAN_OPTIONS": asan}).start())
        assert p.ask("warm up") == "echo: bob: warm up"
        play(p, stub, redis, 1)
        rss1 = rss_kb(p.proc.pid)
        play(p, stub, redis, 2)
        rss2 = rss_kb(p.proc.pid)
        print("VmRSS after round 1: %d kB, after round 2: %d kB (+%d kB)"
              % (rss1, rss2, rss2 - rss1))
        assert rss2 - rss1 < RSS_GROWTH_MAX_KB, (rss1, rss2)
        # Still answering, with every question accounted for.
        assert p.ask("still there?") == "echo: bob: still there?"
        assert len(p.replies()) == 2 + 2 * len(faults())
        assert p.close() == 0
        assert KEY not in p.stdout() + p.stderr()
        # The console shows control codes from the model as '?': they
        # must not reach the terminal.
        assert "\x1b" not in p.stdout() and "\x07" not in p.stdout()


if __name__ == "__main__":
    run_cases([test_model_faults_bounded])
