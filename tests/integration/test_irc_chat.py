"""parley on IRC against a real ngircd, real Redis and the OpenAI
stand-in, with raw-socket clients as the people in the channel:
addressed in channel and in a query -> answered; not addressed, the bot's
own lines and other bots -> not answered; a 3,000-byte UTF-8 answer with
emoji and CJK arrives in lines of at most 512 bytes as relayed, valid
UTF-8, reassembling to the answer, the rest with !more; model output that
tries to inject commands or CTCP stays plain PRIVMSG text to the channel;
20 addressed messages in a burst are all answered at the bucket's pace;
two channels with a 1 s model are answered in about 1 s, not 2; the
bot's greeting on join; an answer in flight survives a server restart;
SIGTERM with an answer in flight -> the answer, then the bot's own QUIT
with its quit message, and exit 0.
"""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, require_parley, run_cases,
                     skip, wait_until)
from irc_helpers import (Client, Ngircd, have_ngircd, irc_block,
                         sigterm_and_check_quit, write_irc_config)

KEY = "sk-test-irc-0123456789abcdef"


def start_all(t, block_extra="", channels=("#test",), people=("alice",),
              join_first=True):
    redis = t.add(Redis(t.tmp).start())
    stub = t.add(Stub(t.tmp, api_key=KEY).start())
    irc = t.add(Ngircd(t.tmp).start())
    clients = {}
    for nick in people:
        c = t.add(Client(irc.port, nick))
        if join_first:
            for ch in channels:
                c.join(ch)
        clients[nick] = c
    conf = write_irc_config(t.tmp, stub.base_url, redis.port,
                            irc_block(irc.port, channels,
                                      extra=block_extra))
    p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY}).start())
    watcher = clients[people[0]]
    try:
        for ch in channels:
            watcher.wait(r"^:parley!\S+ JOIN :?%s" % ch, 15)
    except AssertionError:
        print("parley stderr:\n" + p.stderr()[-3000:])
        raise
    return redis, stub, irc, clients, p


def asked(stub, text):
    """Whether the model was asked about text (not, say, for a greeting
    when the bot joined)."""
    return any(text in repr(r.get("body")) for r in stub.requests())


def bot_lines(client, target, start=0):
    return client.privmsgs("parley", target, start)


def test_addressed_query_and_ignored():
    with Test() as t:
        redis, stub, irc, c, p = start_all(
            t, 'bots = ["otherbot!*@*"];', people=("alice", "otherbot"))
        alice, other = c["alice"], c["otherbot"]
        n = alice.count()
        alice.say("#test", "parley: hello there")
        alice.wait(r"^:parley!\S+ PRIVMSG #test :alice: echo: alice: hello there",
                   15, n)
        # ", " addressing, case-insensitive.
        alice.say("#test", "PARLEY, second question")
        alice.wait(r"PRIVMSG #test :alice: echo: alice: second question", 15, n)
        # A query is answered to the nick.
        m = alice.count()
        alice.say("parley", "in private")
        alice.wait(r"^:parley!\S+ PRIVMSG alice :echo: alice: in private",
                   15, m)
        # Not addressed, and another bot addressing it: no answer, no
        # request to the model.
        before = len(stub.requests())
        alice.say("#test", "just talking among ourselves")
        other.say("#test", "parley: I am a bot too")
        time.sleep(2)
        assert len(stub.requests()) == before, stub.requests()[before:]
        assert not [l for l in bot_lines(alice, "#test", n)
                    if b"ourselves" in l[2] or b"bot too" in l[2]]
        # Formatting codes are stripped before the model sees the text.
        alice.say("#test", "\x02parley\x02: \x0304,01red\x03 text")
        alice.wait(r"PRIVMSG #test :alice: echo: alice: red text", 15, n)
        assert KEY not in p.stderr()


def test_long_answer_split_and_more():
    with Test() as t:
        redis, stub, irc, c, p = start_all(t)
        alice = c["alice"]
        unit = "Emoji \U0001F600\U0001F389 and CJK \u4e2d\u6587\u5b57 text "
        answer = ""
        while len(answer.encode()) < 3000:
            answer += unit
            if len(answer) % 7 == 0:
                answer += "\n"
        stub.script([{"when_contains": "long one", "content": answer}])
        n = alice.count()
        alice.say("#test", "parley: the long one please")
        got = []
        rounds = 0
        while True:
            rounds += 1
            assert rounds < 20
            # Lines arrive in order: once the hint is there, so is the
            # whole round.  The last round has no hint.
            try:
                alice.wait(r"PRIVMSG #test :\(\d+ more lines: say !more\)",
                           6, n)
            except AssertionError:
                pass
            lines = bot_lines(alice, "#test", n)
            more = [l for l in lines if l[2].startswith(b"(") and
                    b"say !more" in l[2]]
            for _, raw, text in lines:
                assert len(raw) <= 512, len(raw)
                raw.decode("utf-8")  # valid UTF-8 or this raises
                if not (text.startswith(b"(") and b"say !more" in text):
                    got.append(text)
            # Each round brings at most max_lines = 4 lines plus the hint.
            assert len(lines) <= 5, len(lines)
            if not more:
                break
            n = alice.count()
            alice.say("#test", "!more")
        assert rounds >= 2
        joined = b"".join(got).decode().replace(" ", "")
        # The first line addresses the asker.
        want = "alice:" + answer.replace(" ", "").replace("\n", "")
        if joined != want:
            i = next((k for k in range(min(len(joined), len(want)))
                      if joined[k] != want[k]), min(len(joined), len(want)))
            raise AssertionError("differs at %d of %d/%d: got %r want %r"
                                 % (i, len(joined), len(want),
                                    joined[i - 20:i + 40],
                                    want[i - 20:i + 40]))


def test_injection_stays_text():
    with Test() as t:
        redis, stub, irc, c, p = start_all(t, people=("alice", "bob"))
        alice, bob = c["alice"], c["bob"]
        stub.script([
            {"when_contains": "one", "content": "hi\r\nQUIT :bye"},
            {"when_contains": "two", "content": "\x01ACTION x\x01"},
            {"when_contains": "three",
             "content": "\r\nPRIVMSG NickServ :IDENTIFY hunter2"},
            {"when_contains": "four",
             "content": "ok\nJOIN #evil\nPRIVMSG bob :psst\x00\x01"},
        ])
        n = alice.count()
        nb = bob.count()
        for word in ("one", "two", "three", "four"):
            alice.say("#test", "parley: " + word)
        alice.wait(r"PRIVMSG #test :PRIVMSG bob :psst", 20, n)
        alice.say("#test", "parley: still there?")
        alice.wait(r"PRIVMSG #test :alice: echo: alice: still there\?", 15, n)
        from_bot = [raw for _, raw in alice.snapshot(n)
                    if raw.startswith(b":parley!")]
        assert from_bot
        for raw in from_bot:
            assert b" PRIVMSG #test :" in raw, raw
            assert b"\x01" not in raw and b"\x00" not in raw, raw
            assert raw.count(b"\r") <= 1, raw
        texts = [l[2] for l in bot_lines(alice, "#test", n)]
        assert b"QUIT :bye" in texts, texts
        assert b"alice: ACTION x" in texts, texts
        # Nothing reached bob privately, nobody joined #evil, and the bot
        # is still connected (it answered above).
        assert not [raw for _, raw in bob.snapshot(nb)
                    if raw.startswith(b":parley!") and
                    raw.split(b" ")[1:3] == [b"PRIVMSG", b"bob"]]
        assert not [raw for _, raw in alice.snapshot(n) if b"#evil" in raw
                    and b"JOIN" in raw.split(b" :")[0]]


def test_flood_burst_paced():
    with Test() as t:
        people = ("u1", "u2", "u3", "u4")
        redis, stub, irc, c, p = start_all(
            t, people=people,
            block_extra="flood_burst = 4; flood_rate_ms = 300;")
        watcher = c["u1"]
        n = watcher.count()
        # 20 addressed messages from four people (ngircd paces each
        # client's input, so one person could not burst 20).
        for i in range(5):
            for nick in people:
                c[nick].say("#test", "parley: q%d from %s" % (i, nick))
        # Answers to the questions only (not, say, a greeting on join).
        def answers_now():
            return [l for l in bot_lines(watcher, "#test", n)
                    if re.search(rb"echo: u\d: q\d from u\d", l[2])]
        wait_until(lambda: len(answers_now()) >= 20, 40, "20 answers")
        answers = answers_now()
        assert len(answers) == 20
        for i in range(5):
            for nick in people:
                assert [a for a in answers if
                        ("q%d from %s" % (i, nick)).encode() in a[2]]
        # Within the bucket: never more than burst + elapsed/rate lines
        # (plus one for timer granularity) in any window from the first.
        t0 = answers[0][0]
        for k, a in enumerate(answers):
            assert k + 1 <= 4 + (a[0] - t0) / 0.3 + 1, (k, a[0] - t0)
        span = answers[-1][0] - t0
        print("20 answers relayed in %.2f s (burst 4, 300 ms/line)" % span)
        assert span >= (20 - 4) * 0.3 * 0.8


def test_two_channels_in_parallel():
    with Test() as t:
        redis, stub, irc, c, p = start_all(t, channels=("#a", "#b"))
        alice = c["alice"]
        stub.script([{"when_contains": "slow", "delay": 1.0,
                      "content": "slow answer", "repeat": True}])
        time.sleep(1)
        n = alice.count()
        t0 = time.time()
        alice.say("#a", "parley: slow one")
        alice.say("#b", "parley: slow two")
        alice.wait(r"PRIVMSG #a :alice: slow answer", 10, n)
        alice.wait(r"PRIVMSG #b :alice: slow answer", 10, n)
        took = max(l[0] for l in bot_lines(alice, "#a", n) +
                   bot_lines(alice, "#b", n)) - t0
        print("two channels answered in %.2f s" % took)
        assert took < 1.9, took


def test_greeting_on_join():
    with Test() as t:
        redis, stub, irc, c, p = start_all(t, block_extra="",
                                           join_first=True)
        # greet_on_join = false in irc_block: nothing said on join.
        alice = c["alice"]
        time.sleep(1)
        assert not bot_lines(alice, "#test")
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        irc = t.add(Ngircd(t.tmp).start())
        alice = t.add(Client(irc.port, "alice"))
        alice.join("#test")
        block = irc_block(irc.port, extra="greet_on_join = true;")
        conf = write_irc_config(t.tmp, stub.base_url, redis.port, block)
        t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY}).start())
        alice.wait(r"^:parley!\S+ JOIN", 15)
        alice.wait(r"^:parley!\S+ PRIVMSG #test :", 15)


def test_answer_survives_server_restart():
    with Test() as t:
        redis, stub, irc, c, p = start_all(t)
        alice = c["alice"]
        stub.script([{"when_contains": "during", "delay": 2.0,
                      "content": "answer after the restart"}])
        alice.say("#test", "parley: during the restart")
        wait_until(lambda: asked(stub, "during the restart"), 10,
                   "the request")
        irc.stop()
        irc.start()
        alice2 = t.add(Client(irc.port, "alice"))
        alice2.join("#test")
        alice2.wait(r"PRIVMSG #test :alice: answer after the restart", 20)
        # Exactly once: the answer is not repeated.
        time.sleep(1.5)
        assert len([l for l in bot_lines(alice2, "#test")
                    if b"answer after the restart" in l[2]]) == 1


def test_sigterm_finishes_answer_then_quits():
    with Test() as t:
        redis, stub, irc, c, p = start_all(t)
        alice = c["alice"]
        stub.script([{"when_contains": "last", "delay": 1.0,
                      "content": "the last answer"}])
        n = alice.count()
        alice.say("#test", "parley: the last question")
        wait_until(lambda: asked(stub, "the last question"), 10,
                   "the request")
        q, took = sigterm_and_check_quit(p, alice, "parley shutting down", n)
        # The answer in flight was delivered, before the goodbye.
        a = alice.find(r"PRIVMSG #test :alice: the last answer", n)
        assert 0 <= a < q, alice.snapshot(n)
        # Drain (about 1 s for the answer) plus a prompt QUIT, far below
        # the 2 s QUIT timeout on top.
        assert took < 2.8, took


if __name__ == "__main__":
    require_parley()
    if not have_ngircd():
        skip("ngircd not installed")
    cases = [test_addressed_query_and_ignored,
             test_long_answer_split_and_more,
             test_injection_stays_text,
             test_flood_burst_paced,
             test_two_channels_in_parallel,
             test_greeting_on_join,
             test_answer_survives_server_restart,
             test_sigterm_finishes_answer_then_quits]
    only = os.environ.get("PARLEY_TEST_ONLY")
    run_cases([f for f in cases if not only or f.__name__ == only])
