"""How an answer leaves the IRC adapter (issue 11, gateway overhead),
against a real ngircd, Redis and the OpenAI stand-in.  libircclient holds
at most 1024 bytes of output, two long lines: an answer of four long
lines used to fill it, and the third line then waited for a 50 ms timer
although the flood bucket had tokens.  Now the adapter writes the
library's buffer out at once (session_flush) and queues the next line
straight away; the debug line "library output buffer full" marks the
wait, so its absence is asserted, never a time.  The lines arrive whole,
in order, and the answer to a follow-up comes after them.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, require_parley, run_cases,
                     skip)
from irc_helpers import (Client, Ngircd, have_ngircd, irc_block,
                         write_irc_config)

KEY = "sk-test-irc-flush-0123456789abcdef"
# Four lines of 420 bytes: each fits one PRIVMSG, two fill the library's
# 1024-byte buffer.
LINES = ["L%d %s" % (i, ("word%d " % i) * 69) for i in range(1, 5)]


def test_long_lines_no_wait_for_buffer():
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        irc = t.add(Ngircd(t.tmp).start())
        alice = t.add(Client(irc.port, "alice"))
        alice.join("#test")
        # The bucket never throttles here: 20 lines of burst, 10 ms each.
        block = irc_block(irc.port, ("#test",), extra="max_lines = 4; "
                          "flood_burst = 20; flood_rate_ms = 10;")
        conf = write_irc_config(t.tmp, stub.base_url, redis.port, block)
        p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY}).start())
        alice.wait(r"^:parley!\S+ JOIN :?#test", 15)
        stub.script([{"when_contains": "four long", "content":
                      "\n".join(x.strip() for x in LINES), "repeat": True}])
        for rnd in range(3):
            n = alice.count()
            alice.say("#test", "parley: four long lines %d" % rnd)
            alice.wait(r"PRIVMSG #test :L4 ", 15, n)
            alice.say("#test", "parley: follow-up %d" % rnd)
            alice.wait(r"PRIVMSG #test :alice: echo: alice: follow-up %d"
                       % rnd, 15, n)
            got = [text.decode() for _, _, text in
                   alice.privmsgs("parley", "#test", n)]
            assert len(got) == 5, got
            assert got[0] == "alice: " + LINES[0].strip(), got[0]
            assert got[1:4] == [x.strip() for x in LINES[1:]], got
            assert got[4].endswith("follow-up %d" % rnd), got
        err = p.stderr()
        assert "library output buffer full" not in err, err[-3000:]
        assert KEY not in err


def main():
    require_parley()
    if not have_ngircd():
        skip("ngircd not installed")
    run_cases([test_long_lines_no_wait_for_buffer])


if __name__ == "__main__":
    main()
