"""Signals: SIGTERM during a slow answer delivers it and exits 0;
SIGHUP with a changed system prompt changes the next request; SIGHUP
with a broken file keeps the running configuration."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, run_cases, wait_until,
                     write_config)

KEY = "sk-test-secret-key-0123456789abcdef"


def start(t, prompt="First prompt.", delay=None):
    redis = t.add(Redis(t.tmp).start())
    stub = t.add(Stub(t.tmp, api_key=KEY, delay=delay).start())
    conf = write_config(t.tmp, stub.base_url, redis.port,
                        extra='prompts = { system = "%s"; };' % prompt)
    p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY,
                                        "USER": "dan"}).start())
    return redis, stub, conf, p


def system_of(req):
    return req["body"]["messages"][0]["content"]


def test_sigterm_lets_the_answer_in_flight_finish():
    with Test() as t:
        redis, stub, conf, p = start(t)
        stub.script([{"delay": 1.5, "content": "slow but sure"}])
        p.send("take your time")
        wait_until(lambda: len(stub.requests()) == 1, 5, "the request")
        t0 = time.time()
        p.proc.send_signal(signal.SIGTERM)
        code = p.proc.wait(timeout=20)
        assert code == 0, (code, p.stderr()[-2000:])
        assert time.time() - t0 < 15
        wait_until(lambda: "slow but sure" in p.replies(), 2, "the answer")
        assert "shutting down (SIGTERM)" in p.stderr()


def test_sighup_changes_the_system_prompt():
    with Test() as t:
        redis, stub, conf, p = start(t)
        p.ask("one")
        assert system_of(stub.requests()[-1]).startswith("First prompt.")
        text = open(conf).read().replace("First prompt.", "Second prompt.")
        with open(conf, "w") as f:
            f.write(text)
        p.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded" in p.stderr(), 5, "the reload")
        p.ask("two")
        assert system_of(stub.requests()[-1]).startswith("Second prompt."), \
            system_of(stub.requests()[-1])
        assert p.close() == 0


def test_sighup_with_a_broken_file_keeps_the_old_config():
    with Test() as t:
        redis, stub, conf, p = start(t)
        p.ask("one")
        good = open(conf).read()
        with open(conf, "w") as f:
            f.write(good.replace("First prompt.", "Broken prompt.")
                    + "\nthis is not = valid libconfig {{{\n")
        p.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "not reloaded" in p.stderr(), 5, "the refusal")
        assert p.proc.poll() is None
        p.ask("two")
        assert system_of(stub.requests()[-1]).startswith("First prompt.")
        assert p.close() == 0


if __name__ == "__main__":
    run_cases([test_sigterm_lets_the_answer_in_flight_finish,
               test_sighup_changes_the_system_prompt,
               test_sighup_with_a_broken_file_keeps_the_old_config])
