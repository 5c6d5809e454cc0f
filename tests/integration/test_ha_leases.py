"""Several parley instances on one Redis (issue 13, leases and fencing),
against a real redis-server, a real ngircd and the OpenAI stand-in:

- two instances with the same config: exactly one connects the IRC
  account, the other reports "standby" on /healthz (HTTP 200); the holder
  is SIGKILLed with two questions in flight; the other takes the account
  over (polled, no timing asserted), answers both from their job records
  and a new question, each exactly once;
- three instances started at once fight for the account: one holder,
  one bot in the channel; kill it, one of the two others takes over;
  every question is answered exactly once;
- the holder is SIGSTOPped with a question in flight until another has
  taken the account over, then resumed: it sends nothing (no line from
  its nick), Redis refuses its stale job write (fencing, in its log), it
  says it lost the lease and exits 75; the question is answered once;
- SIGTERM on the holder gives the lease up on the way out (exit 0), and
  the standby takes over without waiting for the TTL.
"""

import json
import os
import re
import signal
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, require_parley, run_cases,
                     skip, wait_until)
from irc_helpers import Client, Ngircd, have_ngircd, irc_block, \
    write_irc_config

KEY = "sk-test-ha-0123456789abcdef"
# Long enough that a loaded machine (sanitizers, shared cores) does not
# stall a renewal past its margin; short enough for quick takeovers.
LEASE_MS = 3000
LEASE_KEY = "t:lease:irc:testnet"


def start_instances(t, n, delay=None):
    redis = t.add(Redis(t.tmp).start())
    stub = t.add(Stub(t.tmp, api_key=KEY, delay=delay).start())
    irc = t.add(Ngircd(t.tmp).start())
    alice = t.add(Client(irc.port, "alice"))
    alice.join("#test")
    conf = write_irc_config(t.tmp, stub.base_url, redis.port,
                            irc_block(irc.port, ("#test",)))
    with open(conf, "a") as f:
        f.write('ha = { enabled = true; lease_ms = %d; };\n'
                'metrics = { listen = "127.0.0.1:0"; };\n' % LEASE_MS)
    ps = [t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY}).start())
          for _ in range(n)]
    return redis, stub, irc, alice, ps


def holder_pid(redis):
    """The pid in the lease holder's instance name (<host>-<pid>-<hex>)."""
    v = redis.cmd("GET", LEASE_KEY)
    if not v:
        return None
    m = re.search(r"-(\d+)-[0-9a-f]{8}$", v if isinstance(v, str) else v.decode())
    return int(m.group(1)) if m else None


def wait_holder(redis, ps, exclude=()):
    def find():
        pid = holder_pid(redis)
        for p in ps:
            if p.proc.pid == pid and p not in exclude:
                return p
        return None
    return wait_until(find, 20, "an instance holding the lease")


def metrics_port(p):
    m = wait_until(lambda: re.search(r"metrics: .* \(port (\d+)\)",
                                     p.stderr()), 10, "the metrics port")
    return int(m.group(1))


def get(p, path):
    url = "http://127.0.0.1:%d%s" % (metrics_port(p), path)
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def answers(alice, text, start=0):
    """Answers to the question text from any nick of the bot."""
    pat = ("alice: echo: alice: %s" % text).encode()
    return [l for _, l, body in alice.snapshot_privmsgs(start)
            if body == pat]


def bot_joins(alice, start=0):
    return [raw for _, raw in alice.snapshot(start)
            if re.match(rb"^:parley_?!\S+ JOIN :?#test", raw)]


def ask_and_wait(alice, nick, text, start=0):
    alice.say("#test", "%s: %s" % (nick, text))
    wait_until(lambda: answers(alice, text, start), 20,
               "an answer to %r" % text)


def _privmsgs(self, start=0):
    out = []
    for t, raw in self.snapshot(start):
        m = re.match(rb"^:(\S+?)!\S+ PRIVMSG #test :(.*?)\r?\n?$", raw)
        if m:
            out.append((m.group(1), raw, m.group(2)))
    return out


Client.snapshot_privmsgs = _privmsgs


def test_two_instances_kill_holder():
    with Test() as t:
        redis, stub, irc, alice, ps = start_instances(t, 2, delay=1.0)
        n0 = alice.count()
        holder = wait_holder(redis, ps)
        standby = [p for p in ps if p is not holder][0]
        alice.wait(r"^:parley!\S+ JOIN :?#test", 15, n0)
        ask_and_wait(alice, "parley", "first", n0)
        # The standby is healthy and says so; it never joined.
        code, body = get(standby, "/healthz")
        assert code == 200, (code, body)
        health = json.loads(body)
        assert health["status"] == "standby", health
        assert health["adapters"][0]["lease"] == "standby", health
        code, body = get(holder, "/healthz")
        assert code == 200 and '"lease":"held"' in body, body
        code, body = get(holder, "/metrics")
        assert re.search(r"parley_leases_held\{instance=\"[^\"]+\"\} 1",
                         body), body
        assert len(bot_joins(alice, n0)) == 1, bot_joins(alice, n0)
        # Two questions in flight (the model takes 1 s), then SIGKILL.
        before = len(stub.requests())
        alice.say("#test", "parley: second")
        alice.say("#test", "parley: third")
        wait_until(lambda: len(stub.requests()) >= before + 2, 10,
                   "the questions reaching the model")
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait(10)
        new = wait_holder(redis, ps, exclude=(holder,))
        assert new is standby
        wait_until(lambda: answers(alice, "second", n0) and
                   answers(alice, "third", n0), 30,
                   "the questions in flight answered after the takeover")
        ask_and_wait(alice, "parley", "fourth", n0)
        for q in ("first", "second", "third", "fourth"):
            assert len(answers(alice, q, n0)) == 1, (q, alice.snapshot(n0))
        assert "taking over from the previous holder" in standby.stderr()
        code, body = get(standby, "/metrics")
        assert re.search(r"parley_lease_takeovers_total\{[^}]*\} 1", body)
        assert KEY not in standby.stderr()


def test_three_instances_converge_and_failover():
    with Test() as t:
        redis, stub, irc, alice, ps = start_instances(t, 3)
        n0 = alice.count()
        holder = wait_holder(redis, ps)
        alice.wait(r"^:parley!\S+ JOIN :?#test", 15, n0)
        ask_and_wait(alice, "parley", "one", n0)
        # The answer came after every instance had tried to acquire (each
        # tries at once at start): still one bot in the channel.
        for p in ps:
            wait_until(lambda: "lease irc:testnet: " in p.stderr(), 10,
                       "each instance trying the lease")
        ask_and_wait(alice, "parley", "two", n0)
        assert len(bot_joins(alice, n0)) == 1, bot_joins(alice, n0)
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait(10)
        n1 = alice.count()
        new = wait_holder(redis, ps, exclude=(holder,))
        alice.wait(r"^:parley!\S+ JOIN :?#test", 20, n1)
        ask_and_wait(alice, "parley", "three", n0)
        ask_and_wait(alice, "parley", "four", n0)
        assert len(bot_joins(alice, n1)) == 1, bot_joins(alice, n1)
        for q in ("one", "two", "three", "four"):
            assert len(answers(alice, q, n0)) == 1, (q, alice.snapshot(n0))
        third = [p for p in ps if p is not holder and p is not new][0]
        code, body = get(third, "/healthz")
        assert code == 200 and json.loads(body)["status"] == "standby", body


def test_paused_holder_does_not_send():
    with Test() as t:
        redis, stub, irc, alice, ps = start_instances(t, 2, delay=2.0)
        n0 = alice.count()
        holder = wait_holder(redis, ps)
        standby = [p for p in ps if p is not holder][0]
        alice.wait(r"^:parley!\S+ JOIN :?#test", 15, n0)
        before = len(stub.requests())
        alice.say("#test", "parley: paused")
        wait_until(lambda: len(stub.requests()) > before, 10,
                   "the question reaching the model")
        holder.proc.send_signal(signal.SIGSTOP)
        n1 = alice.count()
        try:
            wait_holder(redis, ps, exclude=(holder,))
            # The standby connects beside the paused holder (which still
            # has its nick) and answers from the job record.
            wait_until(lambda: answers(alice, "paused", n0), 30,
                       "the answer from the new holder")
        finally:
            holder.proc.send_signal(signal.SIGCONT)
        rc = holder.proc.wait(30)
        assert rc == 75, (rc, holder.stderr()[-3000:])
        err = holder.stderr()
        assert "lease irc:testnet lost" in err, err[-3000:]
        assert "refused by fencing" in err, err[-3000:]
        # Nothing from the paused instance's nick between its pause and
        # its QUIT; then the new holder takes the nick back and answers.
        quit_at = alice.wait(r"^:parley!\S+ QUIT", 20, n1)
        lines = alice.snapshot(n1)
        for _, raw in lines:
            if re.match(rb"^:parley!\S+ QUIT", raw):
                break
            assert not re.match(rb"^:parley!\S+ PRIVMSG", raw), raw
        alice.wait(r"^:parley_!\S+ NICK :?parley\b", 20, n1)
        ask_and_wait(alice, "parley", "after", n0)
        assert len(answers(alice, "paused", n0)) == 1, alice.snapshot(n0)
        assert len(answers(alice, "after", n0)) == 1, alice.snapshot(n0)
        assert KEY not in err
        del quit_at


def test_sigterm_hands_over():
    with Test() as t:
        redis, stub, irc, alice, ps = start_instances(t, 2)
        n0 = alice.count()
        holder = wait_holder(redis, ps)
        standby = [p for p in ps if p is not holder][0]
        alice.wait(r"^:parley!\S+ JOIN :?#test", 15, n0)
        ask_and_wait(alice, "parley", "before", n0)
        n1 = alice.count()
        holder.proc.send_signal(signal.SIGTERM)
        # The lease is given up on the way out, not left to expire.
        assert holder.proc.wait(30) == 0, holder.stderr()[-2000:]
        assert "lease irc:testnet: released" in holder.stderr()
        wait_holder(redis, ps, exclude=(holder,))
        i = alice.wait(r"^:parley_?!\S+ JOIN :?#test", 30, n1)
        nick = re.match(rb"^:(\S+?)!", alice.snapshot(i)[0][1]).group(1)
        ask_and_wait(alice, nick.decode(), "after", n0)
        for q in ("before", "after"):
            assert len(answers(alice, q, n0)) == 1, (q, alice.snapshot(n0))
        assert standby.proc.poll() is None


if __name__ == "__main__":
    if not have_ngircd():
        skip("ngircd not installed")
    require_parley()
    run_cases([test_two_instances_kill_holder,
               test_three_instances_converge_and_failover,
               test_paused_holder_does_not_send,
               test_sigterm_hands_over])
