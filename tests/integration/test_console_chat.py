"""A conversation on the console adapter against real Redis and the
OpenAI stand-in: roles and history in every request, history kept across
a restart, and the chat commands (!reset, !model, !system, !stats)."""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, messages_of, run_cases,
                     write_config, wait_until)

KEY = "sk-test-secret-key-0123456789abcdef"
ROOM = "t:ctx:console:parley:console"


def start(t, conf):
    return t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY,
                                           "USER": "alice"}).start())


def setup(t):
    redis = t.add(Redis(t.tmp).start())
    stub = t.add(Stub(t.tmp, api_key=KEY).start())
    conf = write_config(t.tmp, stub.base_url, redis.port)
    return redis, stub, conf


def test_three_turns_carry_roles_and_history():
    with Test() as t:
        redis, stub, conf = setup(t)
        p = start(t, conf)
        assert p.ask("hello there") == "echo: alice: hello there"
        assert p.ask("what is 2+2?") == "echo: alice: what is 2+2?"
        assert p.ask("thanks") == "echo: alice: thanks"
        reqs = stub.requests()
        assert len(reqs) == 3, reqs
        first = messages_of(reqs[0])
        assert [m["role"] for m in first][0] == "system"
        assert first[-1] == {"role": "user", "content": "alice: hello there"}
        # First contact: the system prompt asks the bot to greet and
        # invite a topic.
        assert "topic" in " ".join(m["content"] for m in first
                                   if m["role"] == "system").lower()
        third = [m for m in messages_of(reqs[2]) if m["role"] != "system"]
        assert [(m["role"], m["content"]) for m in third] == [
            ("user", "alice: hello there"),
            ("assistant", "echo: alice: hello there"),
            ("user", "alice: what is 2+2?"),
            ("assistant", "echo: alice: what is 2+2?"),
            ("user", "alice: thanks")], third
        assert reqs[0]["body"]["model"] == "test-model"
        assert reqs[0]["headers"].get("Authorization") == "Bearer " + KEY
        assert p.close() == 0
        assert redis.cmd("LLEN", ROOM) == 6
        assert 0 < redis.cmd("TTL", ROOM) <= 3600
        assert KEY not in p.stdout() + p.stderr()


def test_history_survives_restart():
    with Test() as t:
        redis, stub, conf = setup(t)
        p = start(t, conf)
        p.ask("remember the word banana")
        assert p.close() == 0
        p2 = start(t, conf)
        p2.ask("what was the word?")
        assert p2.close() == 0
        last = messages_of(stub.requests()[-1])
        contents = [m["content"] for m in last]
        assert "alice: remember the word banana" in contents, contents
        assert "echo: alice: remember the word banana" in contents


def test_reset_clears_history():
    with Test() as t:
        redis, stub, conf = setup(t)
        p = start(t, conf)
        p.ask("one")
        p.ask("two")
        assert redis.cmd("LLEN", ROOM) == 4
        assert "forgotten" in p.ask("!reset")
        assert redis.cmd("EXISTS", ROOM) == 0
        p.ask("three")
        last = [m for m in messages_of(stub.requests()[-1])
                if m["role"] != "system"]
        assert last == [{"role": "user", "content": "alice: three"}], last
        assert p.close() == 0


def test_model_system_and_stats_commands():
    with Test() as t:
        redis, stub, conf = setup(t)
        p = start(t, conf)
        assert "test-model" in p.ask("!model")
        assert "Unknown model" in p.ask("!model gpt-nonexistent")
        assert "other-model" in p.ask("!model other-model")
        p.ask("hi")
        assert stub.requests()[-1]["body"]["model"] == "other-model"
        assert "saved" in p.ask("!system You answer like a pirate.")
        p.ask("ahoy")
        system = messages_of(stub.requests()[-1])[0]
        assert system["role"] == "system"
        assert system["content"].startswith("You answer like a pirate."), \
            system
        stats = p.ask("!stats")
        assert "2 requests" in stats, stats
        assert p.ask("!help").startswith("I'm parley")
        assert "!reset" in p.stdout() and "!system" in p.stdout()
        # Commands never reach the model or the history.
        assert len(stub.requests()) == 2
        assert redis.cmd("LLEN", ROOM) == 4
        assert p.close() == 0


def test_eof_waits_for_answers_in_flight():
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=KEY, delay=0.5).start())
        conf = write_config(t.tmp, stub.base_url, redis.port)
        p = start(t, conf)
        p.send("first")
        p.send("second")
        assert p.close() == 0
        assert p.replies() == ["echo: alice: first", "echo: alice: second"]


def test_console_beside_a_full_adapters_list():
    """64 adapters in the file (the most it may hold) plus --console: the
    console still gets a router and answers (it used to crash on the
    first line).  The loopback adapter needs no server."""
    with Test() as t:
        redis, stub, _ = setup(t)
        blocks = ",\n".join('{ type = "loopback"; name = "lb%d"; }' % i
                            for i in range(64))
        conf = write_config(t.tmp, stub.base_url, redis.port,
                            adapters=blocks)
        p = t.add(Parley(["-c", conf, "--console"],
                         env={"TEST_OPENAI_KEY": KEY,
                              "USER": "alice"}).start())
        assert p.ask("hello") == "echo: alice: hello"
        # Beside other adapters, end of input does not end the process.
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(timeout=20) == 0, p.stderr()[-2000:]


if __name__ == "__main__":
    run_cases([test_three_turns_carry_roles_and_history,
               test_history_survives_restart,
               test_reset_clears_history,
               test_model_system_and_stats_commands,
               test_eof_waits_for_answers_in_flight,
               test_console_beside_a_full_adapters_list])
