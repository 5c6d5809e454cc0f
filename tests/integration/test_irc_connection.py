"""parley's IRC connection handling with the real binary: server restart
-> reconnect and rejoin; nick collision -> alternative nick, configured
nick taken back once free; kick -> rejoin; TLS through ngircd's own TLS
with a CA made by the test -> connects, a wrong CA -> refused with a clear
error; SASL PLAIN against a scripted server that sends the exact IRCv3
numerics (no SASL-capable daemon with services is installed here) ->
903 and registration only after CAP END, wrong password (904) -> clear
error and a retry only after the backoff.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, require_parley, run_cases,
                     skip, wait_until)
from irc_helpers import (Client, Ngircd, ScriptedServer, have_ngircd,
                         irc_block, sasl_plain, write_irc_config)

KEY = "sk-test-irc-0123456789abcdef"


def start_parley(t, block, env=None):
    redis = t.add(Redis(t.tmp).start())
    stub = t.add(Stub(t.tmp, api_key=KEY).start())
    conf = write_irc_config(t.tmp, stub.base_url, redis.port, block)
    e = {"TEST_OPENAI_KEY": KEY}
    e.update(env or {})
    return t.add(Parley(["-c", conf], env=e).start())


def test_restart_reconnects_and_rejoins():
    with Test() as t:
        irc = t.add(Ngircd(t.tmp).start())
        alice = t.add(Client(irc.port, "alice"))
        alice.join("#test")
        p = start_parley(t, irc_block(irc.port))
        alice.wait(r"^:parley!\S+ JOIN :#test", 15)
        irc.stop()
        time.sleep(0.5)
        irc.start()
        # The bot's own view first: it registered and joined again.
        wait_until(lambda: p.stderr().count("joined #test") >= 2, 20,
                   "the rejoin; stderr=%r" % p.stderr()[-1500:])
        alice2 = t.add(Client(irc.port, "alice"))
        alice2.join("#test")
        assert alice2.find(r" 353 alice . #test :.*parley") >= 0
        n = alice2.count()
        alice2.say("#test", "parley: are you back?")
        alice2.wait(r"PRIVMSG #test :alice: echo: alice: are you back\?", 15, n)
        assert "reconnecting in" in p.stderr()


def test_nick_collision_and_regain():
    with Test() as t:
        irc = t.add(Ngircd(t.tmp).start())
        alice = t.add(Client(irc.port, "alice"))
        alice.join("#test")
        squatter = t.add(Client(irc.port, "parley"))
        start_parley(t, irc_block(irc.port))
        alice.wait(r"^:parley_!\S+ JOIN :#test", 15)
        n = alice.count()
        alice.say("#test", "parley_: hi")
        alice.wait(r"^:parley_!\S+ PRIVMSG #test :alice: echo: alice: hi", 15, n)
        squatter.stop()
        alice.wait(r"^:parley_!\S+ NICK :parley", 10, n)


def test_kick_rejoins():
    with Test() as t:
        irc = t.add(Ngircd(t.tmp).start())
        alice = t.add(Client(irc.port, "alice"))
        alice.join("#test")          # first in: channel operator
        start_parley(t, irc_block(irc.port))
        alice.wait(r"^:parley!\S+ JOIN :#test", 15)
        n = alice.count()
        alice.send("KICK #test parley :go away")
        alice.wait(r" KICK #test parley ", 5, n)
        alice.wait(r"^:parley!\S+ JOIN :#test", 10, n)


def test_kick_without_rejoin():
    with Test() as t:
        irc = t.add(Ngircd(t.tmp).start())
        alice = t.add(Client(irc.port, "alice"))
        alice.join("#test")
        start_parley(t, irc_block(irc.port, extra="rejoin_on_kick = false;"))
        alice.wait(r"^:parley!\S+ JOIN :#test", 15)
        n = alice.count()
        alice.send("KICK #test parley :stay out")
        alice.wait(r" KICK #test parley ", 5, n)
        time.sleep(2)
        assert alice.find(r"^:parley!\S+ JOIN", n) < 0


def tls_block(irc, extra):
    return irc_block(irc.tls_port, extra="tls = true; " + extra).replace(
        "tls = false;", "")


def test_tls_verified_and_wrong_ca():
    with Test() as t:
        irc = t.add(Ngircd(t.tmp, tls=True).start())
        alice = t.add(Client(irc.port, "alice"))
        alice.join("#test")
        p = start_parley(t, tls_block(irc, 'ca_file = "%s/ca.pem";'
                                      % irc.dir))
        alice.wait(r"^:parley!\S+ JOIN :#test", 15)
        n = alice.count()
        alice.say("#test", "parley: over TLS?")
        alice.wait(r"PRIVMSG #test :alice: echo: alice: over TLS\?", 15, n)
        assert "TLS" in p.stderr()
        p.kill()
    with Test() as t:
        irc = t.add(Ngircd(t.tmp, tls=True).start())
        alice = t.add(Client(irc.port, "alice"))
        alice.join("#test")
        p = start_parley(t, tls_block(irc, 'ca_file = "%s/other.pem";'
                                      % irc.dir))
        wait_until(lambda: "certificate verification failed" in p.stderr(),
                   15, "a clear TLS error; stderr=%r" % p.stderr()[-800:])
        time.sleep(1)
        assert alice.find(r"^:parley!") < 0


def sasl_block(port, extra=""):
    return irc_block(port, extra='sasl_user = "parley"; '
                     'sasl_password_env = "TEST_SASL_PW"; '
                     'register_timeout_s = 10; ' + extra)


def test_sasl_plain_success():
    with Test() as t:
        srv = t.add(ScriptedServer())
        p = start_parley(t, sasl_block(srv.port),
                         env={"TEST_SASL_PW": "s3cret-pw"})
        c = srv.accept()
        c.wait(r"^CAP LS 302", 10)
        c.send(":srv CAP * LS :multi-prefix sasl=PLAIN,EXTERNAL")
        c.wait(r"^CAP REQ :sasl", 5)
        c.send(":srv CAP * ACK :sasl")
        c.wait(r"^AUTHENTICATE PLAIN", 5)
        c.send("AUTHENTICATE +")
        c.wait(r"^AUTHENTICATE " + sasl_plain("parley", "s3cret-pw"), 5)
        time.sleep(0.3)
        assert c.find(r"^(NICK|USER) ") < 0, "registration before CAP END"
        c.send(":srv 900 parley parley!u@h parley :You are now logged in")
        c.send(":srv 903 parley :SASL authentication successful")
        end = c.wait(r"^CAP END", 5)
        nick = c.wait(r"^NICK parley", 5)
        c.wait(r"^USER ", 5)
        assert nick > end
        c.send(":srv 001 parley :Welcome")
        c.wait(r"^JOIN #test", 5)
        wait_until(lambda: "SASL authentication succeeded" in p.stderr(),
                   5, "the success log line")
        assert "s3cret-pw" not in p.stderr()
        assert sasl_plain("parley", "s3cret-pw") not in p.stderr()


def test_sasl_wrong_password():
    with Test() as t:
        srv = t.add(ScriptedServer())
        p = start_parley(t, sasl_block(srv.port, "reconnect_min_ms = 100; "
                                       "reconnect_max_ms = 3000;"),
                         env={"TEST_SASL_PW": "wrong"})
        c = srv.accept()
        c.wait(r"^CAP LS 302", 10)
        c.send(":srv CAP * LS :sasl")
        c.wait(r"^CAP REQ :sasl", 5)
        c.send(":srv CAP * ACK :sasl")
        c.wait(r"^AUTHENTICATE PLAIN", 5)
        c.send("AUTHENTICATE +")
        c.wait(r"^AUTHENTICATE \S", 5)
        c.send(":srv 904 * :SASL authentication failed")
        t0 = time.time()
        wait_until(lambda: "SASL authentication failed (904)" in p.stderr(),
                   5, "a clear SASL error")
        assert c.find(r"^(NICK|USER) ") < 0
        # The retry waits for the long backoff (3 s, jittered to >= 1.5 s),
        # it does not loop.
        c2 = srv.accept(timeout=10)
        assert time.time() - t0 >= 1.4, time.time() - t0
        c2.wait(r"^CAP LS 302", 5)
        assert "wrong" not in p.stderr().replace("wrong user", "")


if __name__ == "__main__":
    require_parley()
    if not have_ngircd():
        skip("ngircd not installed")
    cases = [test_restart_reconnects_and_rejoins,
             test_nick_collision_and_regain,
             test_kick_rejoins,
             test_kick_without_rejoin,
             test_tls_verified_and_wrong_ca,
             test_sasl_plain_success,
             test_sasl_wrong_password]
    only = os.environ.get("PARLEY_TEST_ONLY")
    run_cases([f for f in cases if not only or f.__name__ == only])
