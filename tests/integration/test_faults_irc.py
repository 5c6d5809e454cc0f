"""Faults and bad input on IRC with the real binary.  Restart with
SIGTERM, kicks and the model's injection attempts are in
test_irc_connection.py and test_irc_chat.py; this file adds:

- test_server_killed_repeatedly: ngircd killed with SIGKILL (no goodbye,
  the socket just dies) three times, once with an answer in flight ->
  parley reconnects and rejoins each time, the answer in flight is
  delivered exactly once after the reconnect, later questions are
  answered, VmRSS bounded (growth between the first and last cycle).
- test_redis_killed_mid_answer: Redis SIGKILLed while the model answers
  -> the answer comes, a question while Redis is dead is answered
  (without history), history is stored again after the restart, the
  outage logged once.
- test_bad_input_from_people: invalid UTF-8, a 510-byte line, colour
  and control codes, CTCP (also a lone \\x01 and lower-case dcc), empty
  and blank questions, a NOTICE and a CTCP to the bot -> each answered at
  most once or ignored, every answer a single clean PRIVMSG, and a
  follow-up answered after them all.
- test_bad_lines_from_server: a scripted server sends junk (NUL, invalid
  UTF-8 in prefixes and parameters, unknown commands and numerics, empty
  lines, 8 KB of tags, missing parameters) -> parley stays connected and
  answers the next question; then a 100 KB line -> a clear warning ("the
  server sent a line over 8703 bytes"), a reconnect, and the next
  question answered on the new connection.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, require_parley, run_cases,
                     skip, wait_until)
from irc_helpers import (Client, ScriptedServer, have_ngircd, irc_block,
                         write_irc_config)
from test_irc_chat import KEY, asked, bot_lines, start_all

RSS_GROWTH_MAX_KB = 24 * 1024


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_server_killed_repeatedly():
    with Test() as t:
        redis, stub, irc, c, p = start_all(t)
        alice = c["alice"]
        rss = []
        for cycle in range(3):
            # The first cycle kills the server while the model works.
            if cycle == 0:
                stub.script([{"when_contains": "in flight", "delay": 2.0,
                              "content": "answer in flight"}])
                alice.say("#test", "parley: in flight")
                wait_until(lambda: asked(stub, "in flight"), 10,
                           "the request")
            irc.proc.send_signal(signal.SIGKILL)
            irc.proc.wait()
            irc.start()
            alice = t.add(Client(irc.port, "alice"))
            alice.join("#test")
            alice.wait(r"^:parley!\S+ JOIN :?#test", 30)
            if cycle == 0:
                alice.wait(r"PRIVMSG #test :alice: answer in flight", 20)
                first = alice
            alice.say("#test", "parley: after kill %d" % cycle)
            alice.wait(r"PRIVMSG #test :alice: echo: alice: after kill %d"
                       % cycle, 20)
            assert p.proc.poll() is None, p.stderr()[-2000:]
            rss.append(rss_kb(p.proc.pid))
        # Exactly once: the answer in flight came once, in the first
        # cycle's connection, and never again later.
        for who, want in ((first, 1), (alice, 0)):
            assert len([l for l in bot_lines(who, "#test")
                        if b"answer in flight" in l[2]]) == want
        print("VmRSS per cycle: %r kB" % rss)
        assert rss[-1] - rss[0] < RSS_GROWTH_MAX_KB, rss


def test_redis_killed_mid_answer():
    """IRC cannot wait for Redis: killed (SIGKILL) while the model works,
    the answer still comes; a question while it is dead is answered
    without history; after the restart history is stored again; the
    outage is logged once."""
    with Test() as t:
        redis, stub, irc, c, p = start_all(t)
        alice = c["alice"]
        alice.say("#test", "parley: before")
        alice.wait(r"PRIVMSG #test :alice: echo: alice: before", 20)
        stub.script([{"when_contains": "mid answer", "delay": 1.5}])
        alice.say("#test", "parley: mid answer")
        wait_until(lambda: asked(stub, "mid answer"), 10, "the request")
        redis.proc.send_signal(signal.SIGKILL)
        redis.proc.wait()
        alice.wait(r"PRIVMSG #test :alice: echo: alice: mid answer", 20)
        alice.say("#test", "parley: while dead")
        alice.wait(r"PRIVMSG #test :alice: echo: alice: while dead", 20)
        redis.start()
        wait_until(lambda: "reachable again" in p.stderr(), 20,
                   "parley to see Redis back")
        alice.say("#test", "parley: after")
        alice.wait(r"PRIVMSG #test :alice: echo: alice: after", 20)
        wait_until(lambda: redis.cmd("KEYS", "t:ctx:*"), 10,
                   "history stored again")
        assert p.proc.poll() is None
        assert p.stderr().count("WARN redis") == 1, p.stderr()[-3000:]
        for tag in (b"mid answer", b"while dead", b"after"):
            assert len([l for l in bot_lines(alice, "#test")
                        if tag in l[2]]) == 1, tag


def test_bad_input_from_people():
    with Test() as t:
        redis, stub, irc, c, p = start_all(t, people=("alice", "bob"))
        alice, bob = c["alice"], c["bob"]
        n0 = alice.count()
        bad = [
            b"parley: utf8 \xff\xfe\xc3( broken",
            # (No NUL: ngircd stops reading a client that sends one; a
            # NUL from the server is in test_bad_lines_from_server.)
            # The longest line a server relays (ngircd drops a client
            # that sends more; a 100 KB line from the server itself is in
            # test_bad_lines_from_server).
            b"parley: long " + b"L" * 470,
            b"parley: \x0304colour\x03 \x02bold\x02 \x1fu\x1f \x16r\x0f",
            b"parley: ctl \x07\x08\x1b[2J\x7f end",
            b"\x01ACTION parley: ctcp action\x01",
            b"parley: lone \x01 byte",
            b"parley: \x01dcc send x 1 2 3\x01",
            b"\x01dcc chat chat 0 0\x01",
            b"parley:",
            b"parley:     ",
            b"parley: \x02\x0f\x03",
        ]
        for line in bad:
            alice.say("#test", line)
        bob.send(b"NOTICE parley :parley: a notice")
        bob.send(b"PRIVMSG parley :\x01VERSION\x01")
        bob.send(b"PRIVMSG parley :\x01PING 123\x01")
        alice.say("#test", "parley: still there after all that?")
        alice.wait(r"PRIVMSG #test :alice: echo: alice: still there after "
                   r"all that\?", 30, n0)
        assert p.proc.poll() is None, p.stderr()[-2000:]
        lines = [raw for _, raw in alice.snapshot(n0)
                 if raw.startswith(b":parley!")]
        for raw in lines:
            assert b"\x00" not in raw and raw.count(b"\r") <= 1, raw
            assert len(raw) <= 512, len(raw)
        texts = [l[2] for l in bot_lines(alice, "#test", n0)]
        for marker in (b"utf8", b"colour", b"ctl ", b"lone"):
            got = [x for x in texts if marker in x]
            assert len(got) <= 1 or marker == b"long", (marker, got)
        # The long line is cut by the server (512 bytes); its answer may
        # run over several lines, but it is one answer (at most max_lines
        # lines, the rest behind !more).
        assert len([x for x in texts if b"LLLL" in x]) <= 4
        # bob got nothing back for the NOTICE (never answered) or, for
        # CTCP, at most a NOTICE reply: no PRIVMSG from the bot to bob.
        assert not [raw for _, raw in bob.snapshot()
                    if raw.startswith(b":parley!") and
                    raw.split(b" ")[1:3] == [b"PRIVMSG", b"bob"] and
                    b"a notice" in raw]


def test_bad_lines_from_server():
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        srv = t.add(ScriptedServer())
        conf = write_irc_config(t.tmp, stub.base_url, redis.port,
                                irc_block(srv.port, extra=(
                                    "ping_interval_s = 30;")))
        p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY}).start())

        def connect():
            s = srv.accept(timeout=15)
            s.wait(r"^CAP LS", 10)
            s.send(":srv CAP * LS :")
            s.wait(r"^USER ", 10)
            s.send(":srv 001 parley :Welcome")
            s.wait(r"^JOIN #test", 10)
            s.send(":parley!u@h JOIN #test")
            s.send(":srv 353 parley = #test :parley alice")
            s.send(":srv 366 parley #test :End")
            return s

        def ask(s, text):
            s.send(":alice!a@h PRIVMSG #test :parley: " + text)
            try:
                s.wait(r"^PRIVMSG #test :alice: echo: alice: " + text, 20)
            except AssertionError:
                print(p.stderr()[-3000:])
                raise
        s = connect()
        junk = [
            b":srv 372 parley :nul \x00 here",
            b":al\xffce!a@h PRIVMSG #test :bad prefix",
            b":alice!a@h PRIVMSG #test :\xff\xfe\xfd",
            b":srv FOOBAR x y z",
            b":srv 999 parley :unknown numeric",
            b"",
            b":",
            b"::::",
            b"PRIVMSG",
            b":alice!a@h PRIVMSG",
            b":alice!a@h PRIVMSG #test",
            b":alice!a@h JOIN",
            b":alice!a@h KICK #test",
            b":alice!a@h MODE #test +o",
            b"@" + b"t=" * 4000 + b" :alice!a@h PRIVMSG #test :tags",
            b":srv 005 parley " + b"X=1 " * 200 + b":are supported",
            b":srv 353 parley = #test :" + b"@+%&~" * 100,
            b":alice!a@h NICK",
            b"\r\r\r",
        ]
        for line in junk:
            s.send_raw(line + b"\r\n")
        ask(s, "are you alive")
        assert p.proc.poll() is None, p.stderr()[-2000:]
        assert len(srv.conns) == 1, "parley reconnected"
        # A line over the IRCv3 maximum (8191 bytes of tags + 512) is a
        # broken server: parley says so and reconnects, it does not try
        # to parse it.
        s.send_raw(b":srv NOTICE parley :" + b"N" * (100 * 1024) + b"\r\n")
        wait_until(lambda: "the server sent a line over" in p.stderr(), 10,
                   "the over-long line logged")
        s2 = connect()
        ask(s2, "and now")
        assert p.proc.poll() is None, p.stderr()[-2000:]


if __name__ == "__main__":
    require_parley()
    if not have_ngircd():
        skip("ngircd not installed")
    run_cases([test_server_killed_repeatedly, test_redis_killed_mid_answer,
               test_bad_input_from_people,
               test_bad_lines_from_server])
