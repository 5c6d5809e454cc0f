"""Exactly once under chaos: people address the bot in Matrix rooms and
IRC channels while parley is killed with SIGKILL at random moments and
restarted at once; afterwards every message is checked.

What each platform guarantees, and what is asserted:

- Matrix (the homeserver keeps every event; parley makes a question
  durable in job:<event id> before its sync position moves, stores the
  answer before sending it, and sends with a txnId derived from the event
  id, DESIGN.md "Exactly once"): every question, also one sent while
  parley was dead, gets exactly one answer, in reply to it.
- IRC (no ids, no replay; parley keeps no job record for IRC, so nothing
  is resumed after a restart): a line the server delivered while parley
  was down is lost; a line parley had read but not yet answered when it
  was killed is lost (its job lived only in memory); an answer already
  written to the socket usually arrives, but the kernel discards unsent
  bytes when it resets the connection of a killed process, so it may be
  lost too.  Never is a question answered twice, and never is an answer
  sent to the wrong question.  Asserted: at most one answer per IRC
  question, every answer echoes its own question, and every question asked
  after the last restart (when parley is known to be in the channel) is
  answered exactly once.  The number of IRC questions lost to the kills is
  printed, not asserted.

The ctest version is short (CHAOS_MESSAGES=60 questions, CHAOS_KILLS=5
kills); scripts/chaos.sh runs the long one (300+ questions, more kills)
with the same code.  A seed (CHAOS_SEED, printed) replays the same kill
schedule and message spread.
"""

import os
import random
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, require_parley, run_cases,
                     skip, wait_until, write_config)
from irc_helpers import Client as IrcClient, Ngircd, have_ngircd, irc_block
from matrix_hs import Homeserver, reply_target, require_homeserver

KEY = "sk-test-chaos-0123456789abcdef"
PW = "chaos-bot-pw-77"
MESSAGES = int(os.environ.get("CHAOS_MESSAGES", "60"))
KILLS = int(os.environ.get("CHAOS_KILLS", "5"))
SEED = int(os.environ.get("CHAOS_SEED", str(int(time.time()) % 100000)))
MX_ROOMS, IRC_CHANS = 3, 2
# A question every SPACING seconds on average: the run takes about
# MESSAGES * SPACING seconds plus the final wait.
SPACING = float(os.environ.get("CHAOS_SPACING", "0.1"))
TAG = re.compile(r"\b(q\d{4})\b")


class Bot:
    """parley started, killed and restarted on the same config."""

    def __init__(self, t, conf):
        self.t, self.conf = t, conf
        self.p = None
        self.runs = []
        self.lock = threading.Lock()

    def start(self):
        p = self.t.add(Parley(["-c", self.conf],
                              env={"TEST_OPENAI_KEY": KEY,
                                   "MX_TEST_PASSWORD": PW}).start())
        with self.lock:
            self.p = p
            self.runs.append(p)
        return p

    def kill(self):
        with self.lock:
            p = self.p
        p.kill()
        assert p.proc.returncode == -signal.SIGKILL, p.proc.returncode

    def alive(self):
        with self.lock:
            return all(r.proc.returncode in (None, -signal.SIGKILL)
                       for r in self.runs)

    def stderr(self):
        with self.lock:
            return "".join(r.stderr() for r in self.runs)


def tags_in(text):
    return TAG.findall(text)


def test_chaos_exactly_once():
    with Test() as t:
        b = None
        try:
            b = chaos(t)
        finally:
            # parley's logs of every run, for the failure report.
            if b is not None or BOT:
                with open(os.path.join(t.tmp, "parley.err"), "w") as f:
                    f.write((b or BOT[-1]).stderr())


BOT = []


def chaos(t):
    t0 = time.time()
    rnd = random.Random(SEED)
    print("chaos: seed %d, %d questions, %d kills" % (SEED, MESSAGES, KILLS))
    hs = t.add(Homeserver(t.tmp).start())
    print("chaos: synapse up at %.1fs" % (time.time() - t0))
    irc = t.add(Ngircd(t.tmp).start())
    redis = t.add(Redis(t.tmp).start())
    # A little model latency (0.3 s), so kills land mid-answer.
    stub = t.add(Stub(t.tmp, api_key=KEY, delay=0.3).start())
    suffix = "%d%d" % (os.getpid() % 10000, SEED % 1000)
    bot = hs.register("chaosbot" + suffix, PW)
    people = [hs.register("chaos%s%s" % (n, suffix), "pw-" + n)
              for n in ("ann", "ben")]
    chans = ["#chaos%d" % i for i in range(IRC_CHANS)]
    print("chaos: accounts at %.1fs" % (time.time() - t0))
    mx_block = """{ type = "matrix"; homeserver = "%s"; user_id = "%s";
        password_env = "MX_TEST_PASSWORD"; device_name = "chaos";
        allow_invites_from = [ %s ]; greet_on_join = false;
        sync_timeout_ms = 2000; backoff_base_ms = 100;
        backoff_max_ms = 800; }""" % (
        hs.url, bot.user_id,
        ", ".join('"%s"' % c.user_id for c in people))
    conf = write_config(t.tmp, stub.base_url, redis.port,
                        adapters=mx_block + ", " +
                        irc_block(irc.port, channels=chans,
                                  extra="flood_burst = 20; "
                                  "flood_rate_ms = 20;"),
                        timeout_ms=5000, max_retries=1,
                        backoff_max_ms=200)
    b = Bot(t, conf)
    BOT.append(b)
    b.start()
    wait_until(lambda: "syncing" in b.stderr(), 30, "parley to sync")

    print("chaos: parley syncing at %.1fs" % (time.time() - t0))
    rooms = []
    for i in range(MX_ROOMS):
        room = people[0].create_room(invite=[people[1].user_id])
        people[1].join(room)
        people[0].invite(room, bot.user_id)
        wait_until(lambda: people[0].membership(room, bot.user_id)
                   == "join", 30, "the bot to join room %d" % i)
        rooms.append(room)
    ircers = [t.add(IrcClient(irc.port, n)) for n in ("cat", "dan")]
    for c in ircers:
        for ch in chans:
            c.join(ch)
    for ch in chans:
        ircers[0].wait(r" 353 cat . %s :.*parley" % re.escape(ch), 20)

    # The plan: which question goes where, and the kill moments.
    plan = []
    for n in range(MESSAGES):
        if rnd.random() < 0.6:
            plan.append(("mx", n, rnd.randrange(MX_ROOMS),
                         rnd.randrange(len(people))))
        else:
            plan.append(("irc", n, rnd.randrange(IRC_CHANS),
                         rnd.randrange(len(ircers))))
    kill_at = sorted(rnd.sample(range(5, MESSAGES - 5), KILLS))
    mx_sent = {}        # tag -> (room index, event id)
    irc_sent = {}       # tag -> (channel index, person, time sent)
    kills = []
    print("chaos: set up in %.1fs" % (time.time() - t0))
    t1 = time.time()

    for kind, n, where, who in plan:
        tag = "q%04d" % n
        if kind == "mx":
            ev = people[who].say(rooms[where], "%s how are you" % tag,
                                 mentions=[bot.user_id])
            mx_sent[tag] = (where, ev)
        else:
            ircers[who].say(chans[where], "parley: %s how are you" % tag)
            irc_sent[tag] = (where, who, time.time())
        if n in kill_at:
            # Dead for a moment (questions keep coming), then back.
            time.sleep(rnd.random() * 1.0)
            b.kill()
            kills.append(n)
            time.sleep(rnd.random() * 1.5)
            mark = ircers[0].count()
            b.start()
        time.sleep(rnd.random() * 2 * SPACING)
    assert len(kills) == KILLS and b.alive(), b.stderr()[-3000:]
    print("chaos: questions sent in %.1fs" % (time.time() - t1))

    # After the last restart: wait until parley is in every IRC
    # channel again (its JOIN after the last kill), then one more
    # question per channel, which must be answered exactly once.
    last = b.runs[-1]
    calm = {}
    for ch in chans:
        ircers[0].wait(r"^:parley!\S+ JOIN :?%s" % re.escape(ch), 30,
                       start=mark)
    for i, ch in enumerate(chans):
        tag = "q%04d" % (9000 + i)
        ircers[0].say(ch, "parley: %s after the storm" % tag)
        calm[tag] = i
    for room in rooms:
        for c in people:
            tag = "q%04d" % (9100 + len(mx_sent))
            mx_sent[tag] = (rooms.index(room),
                            c.say(room, "%s after the storm" % tag,
                                  mentions=[bot.user_id]))

    def mx_answers():
        per = {}
        for ri, room in enumerate(rooms):
            for e in people[0].timeline(room, limit=1000):
                if e.get("sender") != bot.user_id or \
                        e.get("type") != "m.room.message":
                    continue
                per.setdefault((ri, reply_target(e)), []).append(e)
        return per

    def mx_missing():
        per = mx_answers()
        return [tag for tag, (ri, ev) in mx_sent.items()
                if (ri, ev) not in per]
    try:
        wait_until(lambda: not mx_missing(), 90,
                   "every Matrix question answered")
    except AssertionError:
        raise AssertionError("Matrix questions without an answer: %r; "
                             "stderr tail: %s" % (
                                 mx_missing(), b.stderr()[-3000:]))

    def irc_answers():
        per = {}
        for ci, ch in enumerate(chans):
            for _, raw, text in ircers[1].privmsgs("parley", ch):
                for tag in tags_in(text.decode("utf-8", "replace")):
                    per.setdefault(tag, []).append((ci, text))
        return per
    wait_until(lambda: all(tag in irc_answers() for tag in calm), 30,
               "the IRC questions after the storm answered")
    # Everything asked is answered (or lost on IRC) by now: the last
    # questions were answered, and a room's questions are taken in
    # order; a late duplicate would have to come from a resumed job,
    # which starts before anything new is read.

    per = mx_answers()
    dup = {tag: len(per[(ri, ev)]) for tag, (ri, ev) in mx_sent.items()
           if len(per.get((ri, ev), [])) != 1}
    assert not dup, "Matrix answers per question != 1: %r" % dup
    for tag, (ri, ev) in mx_sent.items():
        body = per[(ri, ev)][0]["content"]["body"]
        assert tag in body or "unavailable" in body, (tag, body)

    ia = irc_answers()
    twice = {tag: v for tag, v in ia.items() if len(v) > 1}
    assert not twice, "IRC questions answered twice: %r" % twice
    for tag, v in ia.items():
        ci, text = v[0]
        assert tag in irc_sent or tag in calm, tag
        want = irc_sent[tag][0] if tag in irc_sent else calm[tag]
        assert ci == want, "answer to %s in the wrong channel" % tag
    for tag in calm:
        assert len(ia.get(tag, [])) == 1, (tag, ia.get(tag))
    lost = sorted(set(irc_sent) - set(ia))
    print("chaos: %d kills; Matrix %d questions, each answered once; "
          "IRC %d questions, %d answered once, %d lost to the kills"
          % (len(kills), len(mx_sent), len(irc_sent) + len(calm),
             len(ia), len(lost)))
    assert b.alive(), b.stderr()[-3000:]
    last.proc.send_signal(signal.SIGTERM)
    assert last.proc.wait(timeout=30) == 0, last.stderr()[-3000:]
    return b


if __name__ == "__main__":
    require_parley()
    require_homeserver()
    if not have_ngircd():
        skip("ngircd not installed")
    run_cases([test_chaos_exactly_once])
