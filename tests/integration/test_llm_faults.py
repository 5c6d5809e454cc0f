"""What users see when the model server misbehaves: a 429 with
Retry-After is waited out, 5xx until the retries run out gives the
"temporarily unavailable" answer and leaves the history as it was, a
rejected key gives a short refusal, malformed and hanging answers do not
crash anything, and the API key appears in no output or log line even
when the server echoes it back."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, run_cases, write_config)

KEY = "sk-test-secret-key-0123456789abcdef"
FALLBACK = ("The service is temporarily unavailable, please try again in "
            "a moment.")
ROOM = "t:ctx:console:parley:console"


def setup(t, key=KEY, stub_key=KEY):
    redis = t.add(Redis(t.tmp).start())
    stub = t.add(Stub(t.tmp, api_key=stub_key).start())
    conf = write_config(t.tmp, stub.base_url, redis.port)
    p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": key,
                                        "USER": "bob"}).start())
    return redis, stub, p


def test_429_then_success_honours_retry_after():
    with Test() as t:
        redis, stub, p = setup(t)
        stub.script([{"status": 429, "retry_after": "1"}])
        t0 = time.time()
        assert p.ask("hi") == "echo: bob: hi"
        assert time.time() - t0 >= 0.9
        reqs = stub.requests()
        assert len(reqs) == 2
        assert reqs[1]["timestamp"] - reqs[0]["timestamp"] >= 0.9
        assert redis.cmd("LLEN", ROOM) == 2
        assert p.close() == 0


def test_5xx_until_retries_run_out_gives_fallback():
    with Test() as t:
        redis, stub, p = setup(t)
        p.ask("first question")
        before = redis.cmd("LRANGE", ROOM, 0, -1)
        stub.script([{"status": 500}, {"status": 502}, {"status": 503}])
        assert p.ask("second question") == FALLBACK
        # max_retries = 2: three tries, then give up.
        assert len(stub.requests()) == 1 + 3
        assert redis.cmd("LRANGE", ROOM, 0, -1) == before
        # The next question works and does not carry the failed turn.
        assert p.ask("third") == "echo: bob: third"
        contents = [m["content"] for m in stub.requests()[-1]["body"]
                    ["messages"]]
        assert "bob: second question" not in contents, contents
        assert p.close() == 0
        assert "500" in p.stderr() and "503" in p.stderr()


def test_rejected_key_is_not_retried_and_never_printed():
    bad = "sk-wrong-secret-key-ABCDEFGHIJKLMNOP"
    with Test() as t:
        redis, stub, p = setup(t, key=bad)
        reply = p.ask("hello")
        assert reply != FALLBACK and "refused" in reply, reply
        assert len(stub.requests()) == 1   # 401 is not retried
        assert p.close() == 0
        out = p.stdout() + p.stderr()
        assert "401" in p.stderr()
        assert bad not in out, "the API key leaked into parley's output"
        assert redis.cmd("EXISTS", ROOM) == 0


def test_malformed_and_dropped_answers_do_not_crash():
    with Test() as t:
        redis, stub, p = setup(t)
        stub.script([{"malformed": True}, {"malformed": True},
                     {"malformed": True}])
        reply = p.ask("one")
        assert reply == FALLBACK or reply.startswith("echo:"), reply
        stub.reset()
        stub.script([{"drop": True}])
        assert p.ask("two") == "echo: bob: two"
        assert p.close() == 0


def test_hanging_request_times_out_and_is_retried():
    with Test() as t:
        redis, stub, p = setup(t)
        stub.script([{"hang": 6}])
        t0 = time.time()
        assert p.ask("are you there?", timeout=20) == \
            "echo: bob: are you there?"
        assert time.time() - t0 >= 2.5     # timeout_ms = 3000
        assert p.close() == 0


if __name__ == "__main__":
    run_cases([test_429_then_success_honours_retry_after,
               test_5xx_until_retries_run_out_gives_fallback,
               test_rejected_key_is_not_retried_and_never_printed,
               test_malformed_and_dropped_answers_do_not_crash,
               test_hanging_request_times_out_and_is_retried])
