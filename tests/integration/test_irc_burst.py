"""A busy channel: 20 people address the bot in ONE IRC channel at the
same moment, with a real ngircd, real Redis and the OpenAI stand-in
taking 1 s per answer.  Every person gets exactly one answer, and the
model requests overlap (different people in one room run in parallel;
asserted from the stand-in's request start and end times, never from a
wall-clock figure).  The bot paces at its defaults (a burst of 5, then 1
line per second; ngircd's own input pacing is lifted by MaxPenaltyTime = 0,
see irc_helpers.Ngircd), so the answers are limited only by that pacing.
The time from the burst to the last answer is printed as a benchmark
line (scripts/bench/irc_burst.sh runs this file).
"""

import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, require_parley, run_cases,
                     skip, wait_until)
from irc_helpers import (Client, Ngircd, have_ngircd, irc_block,
                         write_irc_config)

KEY = "sk-test-irc-burst-0123456789"
PEOPLE = 20
MODEL_DELAY = 1.0
BURST = 5
RATE_MS = 1000


def max_overlap(requests):
    """The most requests in flight at one instant, from the stand-in's
    start and end times."""
    events = []
    for r in requests:
        if r.get("timestamp") and r.get("finished"):
            events.append((r["timestamp"], 1))
            events.append((r["finished"], -1))
    # An end sorts before a start at the same instant: touching is not
    # overlapping.
    events.sort(key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def test_twenty_people_one_channel():
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=KEY, delay=MODEL_DELAY).start())
        irc = t.add(Ngircd(t.tmp).start())
        nicks = ["p%02d" % i for i in range(PEOPLE)]
        clients = {}
        for nick in nicks:
            c = t.add(Client(irc.port, nick))
            c.join("#busy")
            clients[nick] = c
        watcher = clients[nicks[0]]
        block = irc_block(irc.port, ("#busy",),
                          extra="flood_burst = %d; flood_rate_ms = %d;"
                          % (BURST, RATE_MS))
        conf = write_irc_config(t.tmp, stub.base_url, redis.port, block)
        p = t.add(Parley(["-c", conf],
                         env={"TEST_OPENAI_KEY": KEY}).start())
        watcher.wait(r"^:parley!\S+ JOIN :?#busy", 15)
        # Let the bucket fill again after the join (and any greeting).
        time.sleep(BURST * RATE_MS / 1000.0 + 1)
        n = watcher.count()
        before = len(stub.requests())
        # Everyone at once: one thread per person, released together.
        go = threading.Barrier(PEOPLE)

        def ask(nick):
            go.wait()
            clients[nick].say("#busy", "parley: question from %s" % nick)
        threads = [threading.Thread(target=ask, args=(nick,))
                   for nick in nicks]
        t0 = time.time()
        for th in threads:
            th.start()
        for th in threads:
            th.join()

        def answered():
            got = set()
            for _, _, text in watcher.privmsgs("parley", "#busy", n):
                m = re.search(rb"question from (p\d\d)", text)
                if m:
                    got.add(m.group(1).decode())
            return len(got) == PEOPLE
        try:
            wait_until(answered, 90, "an answer for every person")
        except AssertionError:
            print("parley stderr:\n" + p.stderr()[-3000:])
            print("seen:\n%r" % [r for _, r in watcher.snapshot(n)][:60])
            print("bot lines:\n%r" % [l[2] for l in
                                      watcher.privmsgs("parley", "#busy")])
            raise
        lines = [l for l in watcher.privmsgs("parley", "#busy", n)
                 if b"question from" in l[2]]
        last = max(l[0] for l in lines) - t0
        # Exactly once: nothing more arrives for anyone.
        time.sleep(2 * RATE_MS / 1000.0 + MODEL_DELAY)
        lines = [l for l in watcher.privmsgs("parley", "#busy", n)
                 if b"question from" in l[2]]
        for nick in nicks:
            mine = [l for l in lines
                    if ("question from %s" % nick).encode() in l[2]]
            assert len(mine) == 1, (nick, [l[2] for l in mine])
            # Addressed to the asker.
            assert mine[0][2].startswith(("%s: " % nick).encode()), mine[0]
        asked = [r for r in stub.requests()[before:]
                 if "question from" in repr(r.get("body"))]
        assert len(asked) == PEOPLE, len(asked)
        overlap = max_overlap(asked)
        print("BENCH irc_burst: %d people in one channel, model %.1f s: "
              "last answer after %.1f s, up to %d model requests at once "
              "(flood_burst %d, flood_rate_ms %d; ngircd MaxPenaltyTime 0)"
              % (PEOPLE, MODEL_DELAY, last, overlap, BURST, RATE_MS))
        sys.stdout.flush()
        assert overlap >= 2, "the model requests ran one at a time"


if __name__ == "__main__":
    require_parley()
    if not have_ngircd():
        skip("ngircd not installed")
    run_cases([test_twenty_people_one_channel])
