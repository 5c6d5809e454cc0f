"""Two parley instances on one Redis and one Matrix account (issue 13,
ha.enabled), against a real Synapse (../shared/synapse), real Redis and
the OpenAI stand-in: only the lease holder syncs and answers; the holder
is SIGKILLed with questions in flight and one more sent while nobody
holds the account; the standby takes the lease over (polled), reuses the
stored session and sync position, takes up the unfinished jobs, and every
question event gets exactly one answer (counted per event id, after a
follow-up question is answered).  Skipped without Synapse.
"""

import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Parley, Test, require_parley, run_cases, wait_until
from matrix_hs import Homeserver, reply_target, require_homeserver
import test_matrix_adapter as mx

LEASE_MS = 3000


def start_instance(s):
    p = s.t.add(Parley(["-c", s.conf],
                       env={"TEST_OPENAI_KEY": mx.KEY,
                            "MX_TEST_PASSWORD": mx.PW}).start())
    return p


def holder_pid(s):
    v = s.redis.cmd("GET", "t:lease:matrix:" + s.bot)
    if not v:
        return None
    v = v if isinstance(v, str) else v.decode()
    m = re.search(r"-(\d+)-[0-9a-f]{8}$", v)
    return int(m.group(1)) if m else None


def test_failover_exactly_once():
    with Test() as t:
        s = mx.Setup(t, stub_delay=1.0)
        with open(s.conf, "a") as f:
            f.write("ha = { enabled = true; lease_ms = %d; };\n" % LEASE_MS)
        a = start_instance(s)
        wait_until(lambda: "syncing" in a.stderr(), 30, "the first to sync")
        b = start_instance(s)
        wait_until(lambda: "standing by" in b.stderr(), 30,
                   "the second to stand by")
        assert holder_pid(s) == a.proc.pid
        s.parley = a
        alice = s.people["alice"]
        room = s.room_with("alice")
        alice.wait_messages_from(room, s.bot, 1)
        ids = [alice.say(room, "question %d" % i, mentions=[s.bot])
               for i in range(3)]
        wait_until(lambda: any("question 0" in str(r["body"])
                               for r in s.stub.requests()), 20,
                   "the first question to reach the model")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        ids.append(alice.say(room, "question while nobody holds it",
                             mentions=[s.bot]))
        wait_until(lambda: holder_pid(s) == b.proc.pid, 30,
                   "the standby to take the account over")
        s.parley = b

        def counts():
            answers = s.answers("alice", room)
            return [sum(1 for e in answers if reply_target(e) == ev)
                    for ev in ids]
        wait_until(lambda: all(counts()), 60,
                   "every question answered; stderr=%s" % b.stderr()[-3000:])
        # A follow-up answered means everything before it was handled.
        last = alice.say(room, "follow-up", mentions=[s.bot])
        s.wait_answer_to("alice", room, last, 30)
        n = counts()
        assert n == [1, 1, 1, 1], "answers per question %r (0 = lost, " \
            ">1 = duplicate)" % (n,)
        assert "taking over from the previous holder" in b.stderr()
        # The standby used the stored session and device (the same
        # txnIds then make the homeserver drop a resend): no new login.
        dev = re.search(r"logged in \(device (\S+)\)", a.stderr())
        assert dev, a.stderr()[-2000:]
        assert "signed in (device %s)" % dev.group(1) in b.stderr(), \
            b.stderr()[-2000:]
        assert "logged in (device" not in b.stderr()


def main():
    code = 1
    require_parley()
    require_homeserver()
    with Test() as t:
        mx.HS = t.add(Homeserver(t.tmp).start())
        try:
            run_cases([test_failover_exactly_once])
        except SystemExit as e:
            code = e.code
    sys.exit(code)


if __name__ == "__main__":
    main()
