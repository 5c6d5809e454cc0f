"""Streamed answers on IRC (issue 10) against a real ngircd, Redis and the
OpenAI stand-in: with stream = true each complete line of the answer is
sent as soon as the model has written it (the stand-in holds the rest of
the stream until the channel has seen line 1), the later lines follow
unaddressed, nothing is sent twice, and the history holds the final text
only; a stream that breaks after line 1 ends with the friendly fallback
line, and nothing of it reaches the history; a stream that stalls ends
the same way after llm.stream_idle_timeout_ms.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, require_parley, run_cases,
                     skip, wait_until, write_config)
from irc_helpers import Client, Ngircd, have_ngircd, irc_block

KEY = "sk-test-irc-0123456789abcdef"
LINES = ["Line one of the answer.", "Line two follows here.",
         "And line three ends it."]
FULL = "\n".join(LINES)
FALLBACK = "The service is temporarily unavailable, please try again " \
           "in a moment."


def start(t, llm_extra=""):
    redis = t.add(Redis(t.tmp).start())
    stub = t.add(Stub(t.tmp, api_key=KEY).start())
    irc = t.add(Ngircd(t.tmp).start())
    alice = t.add(Client(irc.port, "alice"))
    alice.join("#test")
    # The held stream takes as long as the test needs: no 5 s timeout.
    conf = write_config(t.tmp, stub.base_url, redis.port,
                        adapters=irc_block(irc.port, ("#test",),
                                           extra="stream = true;"),
                        timeout_ms=30000, max_retries=1, backoff_max_ms=200,
                        llm_extra=llm_extra)
    p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY}).start())
    try:
        alice.wait(r"^:parley!\S+ JOIN :?#test", 15)
    except AssertionError:
        print("parley stderr:\n" + p.stderr()[-3000:])
        raise
    return redis, stub, alice, p


def said(alice, text, start):
    return [l for l in alice.privmsgs("parley", "#test", start)
            if l[2].decode("utf-8", "replace") == text]


def assistant_turns(redis):
    out = []
    for k in redis.cmd("KEYS", "t:ctx:*"):
        for item in redis.cmd("LRANGE", k, 0, -1):
            turn = json.loads(item)
            if turn.get("role") == "assistant":
                out.append(turn["content"])
    return out


def follow_up(alice, n):
    """A question answered after everything before it: what has not
    arrived by then is not coming."""
    alice.say("#test", "parley: follow-up")
    alice.wait(r"PRIVMSG #test :alice: echo: alice: follow-up", 15, n)


def test_lines_as_they_come():
    with Test() as t:
        redis, stub, alice, p = start(t)
        # 4 characters a piece: line 1 and its newline are in 7 pieces.
        stub.script([{"when_contains": "stream lines", "content": FULL,
                      "piece_chars": 4, "hold_after": 8}])
        n = alice.count()
        alice.say("#test", "parley: stream lines")
        alice.wait(r"PRIVMSG #test :alice: " + LINES[0], 15, n)
        # The stand-in holds the stream: line 1 came before its end.
        assert not said(alice, LINES[1], n)
        assert [r for r in stub.requests()
                if "stream lines" in repr(r.get("body"))
                and r["body"].get("stream") is True], stub.requests()
        stub.release()
        alice.wait(r"PRIVMSG #test :" + LINES[2] + "\r?$", 15, n)
        follow_up(alice, n)
        bot = [l[2].decode() for l in alice.privmsgs("parley", "#test", n)]
        assert bot[:3] == ["alice: " + LINES[0], LINES[1], LINES[2]], bot
        assert sum(1 for b in bot if LINES[0] in b) == 1, bot
        turns = assistant_turns(redis)
        assert FULL in turns, turns
        assert not [x for x in turns if x != FULL and FULL.startswith(x)
                    and x], turns


def test_broken_stream_fallback():
    with Test() as t:
        redis, stub, alice, p = start(t)
        stub.script([{"when_contains": "break it", "content": FULL,
                      "piece_chars": 4, "break_after": 8}])
        n = alice.count()
        alice.say("#test", "parley: break it")
        alice.wait(r"PRIVMSG #test :alice: " + LINES[0], 15, n)
        alice.wait(r"PRIVMSG #test :.*" + FALLBACK, 15, n)
        follow_up(alice, n)
        bot = [l[2].decode() for l in alice.privmsgs("parley", "#test", n)]
        assert not [b for b in bot if LINES[1] in b], bot
        assert not [x for x in assistant_turns(redis) if "Line" in x]


def test_stalled_stream_idle_timeout():
    """A stream that stops sending after line 1 ends after
    llm.stream_idle_timeout_ms with the fallback line, long before
    llm.timeout_ms (30 s here)."""
    with Test() as t:
        redis, stub, alice, p = start(t, "stream_idle_timeout_ms = 1000;")
        stub.script([{"when_contains": "stall", "content": FULL,
                      "piece_chars": 4, "hold_after": 8}])
        n = alice.count()
        alice.say("#test", "parley: stall please")
        alice.wait(r"PRIVMSG #test :alice: " + LINES[0], 15, n)
        alice.wait(r"PRIVMSG #test :.*" + FALLBACK, 20, n)
        assert not [x for x in assistant_turns(redis) if "Line" in x]
        stub.release()


def main():
    require_parley()
    if not have_ngircd():
        skip("ngircd not installed")
    run_cases([test_lines_as_they_come, test_broken_stream_fallback,
               test_stalled_stream_idle_timeout])


if __name__ == "__main__":
    main()
