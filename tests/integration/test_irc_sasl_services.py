"""SASL PLAIN against a real IRC daemon with real services: inspircd 3
with atheme 7.2 linked as services (Debian's inspircd and
atheme-services), both started on ephemeral ports by the test.  The
account is registered with NickServ by a test client; parley then logs in
with SASL before registration (903, then it joins and answers), and a
wrong password gives the clear 904 error and no registration.  With the
same daemons, who is who (issue 12): a person is keyed by their services
account (WHOX, extended-join), so whoever takes a nick next sees none of
the private history of its previous holder, and a person with no account
loses their nick-keyed history when the nick changes hands.  Skipped
when the two daemons are not installed.
"""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, require_parley, run_cases,
                     skip, wait_until)
from irc_helpers import (Client, Services, have_services, irc_block,
                         write_irc_config)

KEY = "sk-test-irc-0123456789abcdef"


def start_parley(t, port, password):
    redis = t.add(Redis(t.tmp).start())
    stub = t.add(Stub(t.tmp, api_key=KEY).start())
    block = irc_block(port, extra='sasl_user = "parley"; '
                      'sasl_password_env = "TEST_SASL_PW"; '
                      'register_timeout_s = 15; reconnect_min_ms = 500; '
                      'reconnect_max_ms = 5000;')
    conf = write_irc_config(t.tmp, stub.base_url, redis.port, block)
    return t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY,
                                           "TEST_SASL_PW": password}).start())


def test_sasl_with_atheme():
    with Test() as t:
        srv = t.add(Services(t.tmp).start())
        srv.register("parley", "corr3ct-horse")
        alice = t.add(Client(srv.port, "alice"))
        alice.join("#test")
        p = start_parley(t, srv.port, "corr3ct-horse")
        wait_until(lambda: "SASL authentication succeeded" in p.stderr(),
                   20, "SASL success; stderr=%r" % p.stderr()[-1500:])
        alice.wait(r"^:parley!\S+ JOIN :?#test", 15)
        n = alice.count()
        alice.say("#test", "parley: logged in?")
        alice.wait(r"PRIVMSG #test :alice: echo: alice: logged in\?", 15, n)
        assert "corr3ct-horse" not in p.stderr()


def test_sasl_wrong_password_with_atheme():
    with Test() as t:
        srv = t.add(Services(t.tmp).start())
        srv.register("parley", "corr3ct-horse")
        alice = t.add(Client(srv.port, "alice"))
        alice.join("#test")
        p = start_parley(t, srv.port, "battery-staple")
        wait_until(lambda: "SASL authentication failed (904)" in p.stderr(),
                   20, "the 904 error; stderr=%r" % p.stderr()[-1500:])
        time.sleep(1)
        assert alice.find(r"^:parley!") < 0
        assert "battery-staple" not in p.stderr()


def messages_text(req):
    return "\n".join(str(m.get("content", ""))
                     for m in req["body"].get("messages", []))


def ask(stub, client, text, timeout=15):
    """A query to parley; returns the text of the model request made for
    it (the stub answers "echo: ...")."""
    n = client.count()
    client.say("parley", text)
    client.wait(r"PRIVMSG %s :echo: " % re.escape(client.nick), timeout, n)
    reqs = [r for r in stub.requests() if text in messages_text(r)]
    assert reqs, "no model request for %r" % text
    return messages_text(reqs[-1])


def identify(client, account, password):
    n = client.count()
    client.say("NickServ", "IDENTIFY %s %s" % (account, password))
    client.wait(r"NOTICE %s :You are now identified" %
                re.escape(client.nick), 15, n)


def test_private_history_follows_the_account():
    with Test() as t:
        srv = t.add(Services(t.tmp).start())
        srv.register("alice", "alice-pw-123")
        # alice is identified and in the channel before parley comes:
        # parley learns her account from WHOX.
        alice = t.add(Client(srv.port, "alice"))
        identify(alice, "alice", "alice-pw-123")
        alice.join("#test")
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        conf = write_irc_config(t.tmp, stub.base_url, redis.port,
                                irc_block(srv.port))
        p = t.add(Parley(["-c", conf],
                         env={"TEST_OPENAI_KEY": KEY}).start())
        alice.wait(r"^:parley!\S+ JOIN :?#test", 20)
        time.sleep(0.5)     # the WHOX reply
        ask(stub, alice, "remember the word PINEAPPLE-42")
        alice.stop()
        time.sleep(0.5)
        # Someone else takes the nick, without the account.
        mallory = t.add(Client(srv.port, "alice"))
        mallory.join("#test")
        seen = ask(stub, mallory, "what word did I ask you to remember?")
        assert "PINEAPPLE-42" not in seen, seen
        mallory.stop()
        # The real alice, under another nick, logged in before joining
        # (extended-join): her history is hers still.
        alice2 = t.add(Client(srv.port, "alice2"))
        identify(alice2, "alice", "alice-pw-123")
        alice2.join("#test")
        time.sleep(0.3)
        seen = ask(stub, alice2, "and which word was it?")
        assert "PINEAPPLE-42" in seen, (seen, p.stderr()[-3000:])


def test_no_account_history_ends_with_the_nick():
    with Test() as t:
        srv = t.add(Services(t.tmp).start())
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        conf = write_irc_config(t.tmp, stub.base_url, redis.port,
                                irc_block(srv.port))
        p = t.add(Parley(["-c", conf],
                         env={"TEST_OPENAI_KEY": KEY}).start())
        wait_until(lambda: "joined #test" in p.stderr(), 20,
                   "parley in #test; stderr=%r" % p.stderr()[-1500:])
        bob = t.add(Client(srv.port, "bob"))
        bob.join("#test")
        ask(stub, bob, "my secret is MANGO-7")
        seen = ask(stub, bob, "what is my secret?")
        assert "MANGO-7" in seen, seen      # same holder: history kept
        bob.stop()
        time.sleep(0.5)
        newbob = t.add(Client(srv.port, "bob"))
        newbob.join("#test")
        seen = ask(stub, newbob, "tell me my secret")
        assert "MANGO-7" not in seen, seen


if __name__ == "__main__":
    require_parley()
    if not have_services():
        skip("inspircd and atheme-services not installed")
    run_cases([test_sasl_with_atheme, test_sasl_wrong_password_with_atheme,
               test_private_history_follows_the_account,
               test_no_account_history_ends_with_the_nick])
