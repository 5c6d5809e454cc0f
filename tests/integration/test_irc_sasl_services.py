"""SASL PLAIN against a real IRC daemon with real services: inspircd 3
with atheme 7.2 linked as services (Debian's inspircd and
atheme-services), both started on ephemeral ports by the test.  The
account is registered with NickServ by a test client; parley then logs in
with SASL before registration (903, then it joins and answers), and a
wrong password gives the clear 904 error and no registration.  Skipped
when the two daemons are not installed.
"""

import os
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


if __name__ == "__main__":
    require_parley()
    if not have_services():
        skip("inspircd and atheme-services not installed")
    run_cases([test_sasl_with_atheme, test_sasl_wrong_password_with_atheme])
