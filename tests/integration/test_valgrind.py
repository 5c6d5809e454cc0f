"""parley under valgrind memcheck, one short scenario per platform:

- IRC (ngircd): join, two questions (one answer split over lines, the
  rest fetched with !more), SIGTERM -> QUIT and exit 0.
- Matrix (Synapse from ../shared/synapse; skipped without it): password
  login, invite -> join and greeting, a question answered, SIGTERM.

Asserted: no invalid read or write, no use of uninitialised values, no
definite leak (valgrind's --error-exitcode turns any of them into exit
status 99, and the log is searched as well), and parley's own exit code
0.

valgrind cannot run a binary built with AddressSanitizer, so the test
needs a plain build: PARLEY_BIN when it is one (a build with
-DPARLEY_SANITIZE=OFF), else PARLEY_VALGRIND_BIN, else build-valgrind/parley
beside the sources:

    cmake -S . -B build-valgrind -DPARLEY_SANITIZE=OFF
    cmake --build build-valgrind --target parley

Without valgrind or without a plain binary the test is skipped (exit 77).
"""

import os
import re
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness
from harness import (Parley, Redis, Stub, Test, run_cases, skip,
                     wait_until, write_config)
from irc_helpers import Client, Ngircd, have_ngircd, irc_block

KEY = "sk-test-valgrind-0123456789abcdef"
PW = "valgrind-bot-pw"
VALGRIND = shutil.which("valgrind")


def has_asan(path):
    with open(path, "rb") as f:
        return b"__asan_init" in f.read()


def plain_binary():
    for cand in (harness.PARLEY_BIN,
                 os.environ.get("PARLEY_VALGRIND_BIN", ""),
                 os.path.join(harness.SOURCE_DIR, "build-valgrind",
                              "parley")):
        if cand and os.access(cand, os.X_OK) and not has_asan(cand):
            return cand
    return None


class Memcheck(Parley):
    """parley under valgrind; the report goes to a file in tmp."""

    def __init__(self, binary, args, env, tmp, name):
        super().__init__(args, env=env)
        self.binary = binary
        self.log = os.path.join(tmp, "memcheck-%s.log" % name)

    def start(self):
        saved = harness.PARLEY_BIN
        harness.PARLEY_BIN = VALGRIND
        self.args = ["--tool=memcheck", "--error-exitcode=99",
                     "--leak-check=full", "--show-leak-kinds=definite",
                     "--errors-for-leak-kinds=definite",
                     "--track-origins=no", "--num-callers=30",
                     "--log-file=" + self.log, self.binary] + self.args
        try:
            return super().start()
        finally:
            harness.PARLEY_BIN = saved

    def check(self, code):
        with open(self.log) as f:
            report = f.read()
        bad = re.findall(r"(Invalid (?:read|write|free)[^\n]*|"
                         r"Conditional jump[^\n]*|"
                         r"Use of uninitialised[^\n]*|"
                         r"definitely lost: [1-9][^\n]*|"
                         r"Mismatched free[^\n]*)", report)
        assert not bad and code == 0, (
            "memcheck: exit %r, findings %r\n%s" % (code, bad,
                                                    report[-6000:]))
        summary = re.findall(r"ERROR SUMMARY: [^\n]*", report)
        print("memcheck: exit 0, %s" % (summary[-1] if summary else
                                        "no summary"))


def test_irc_under_memcheck():
    if not have_ngircd():
        SKIPPED.append("ngircd absent: the IRC scenario is not run")
        return
    binary = plain_binary()
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        irc = t.add(Ngircd(t.tmp).start())
        alice = t.add(Client(irc.port, "alice"))
        alice.join("#test")
        conf = write_config(t.tmp, stub.base_url, redis.port,
                            adapters=irc_block(irc.port,
                                               extra="max_lines = 2;"),
                            timeout_ms=20000)
        p = t.add(Memcheck(binary, ["-c", conf], {"TEST_OPENAI_KEY": KEY},
                           t.tmp, "irc"))
        p.start()
        alice.wait(r"^:parley!\S+ JOIN :?#test", 60)
        alice.say("#test", "parley: hello under valgrind")
        alice.wait(r"PRIVMSG #test :alice: echo: alice: hello under", 60)
        stub.script([{"when_contains": "long", "content":
                      " ".join("word%d" % i for i in range(300))}])
        alice.say("#test", "parley: something long")
        alice.wait(r"PRIVMSG #test :.*!more", 60)
        alice.say("#test", "!more")
        alice.wait(r"PRIVMSG #test :.*word2\d\d", 60)
        p.proc.send_signal(signal.SIGTERM)
        code = p.proc.wait(timeout=60)
        alice.wait(r"^:parley!\S+ QUIT", 10)
        p.check(code)


def test_matrix_under_memcheck():
    from matrix_hs import HS_SCRIPT, Homeserver, reply_target
    if not os.access(HS_SCRIPT, os.X_OK):
        SKIPPED.append("Synapse absent: the Matrix scenario is not run")
        return
    binary = plain_binary()
    with Test() as t:
        hs = t.add(Homeserver(t.tmp).start())
        bot = hs.register("vgbot%d" % os.getpid(), PW)
        alice = hs.register("vgalice%d" % os.getpid(), "pw-alice")
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        block = """{ type = "matrix"; homeserver = "%s"; user_id = "%s";
            password_env = "VG_MX_PW"; allow_invites_from = [ "%s" ];
            sync_timeout_ms = 2000; greet_on_join = true; }""" % (
            hs.url, bot.user_id, alice.user_id)
        conf = write_config(t.tmp, stub.base_url, redis.port,
                            adapters=block, timeout_ms=20000)
        p = t.add(Memcheck(binary, ["-c", conf], {"TEST_OPENAI_KEY": KEY,
                                                  "VG_MX_PW": PW},
                           t.tmp, "matrix"))
        p.start()
        wait_until(lambda: "syncing" in p.stderr() or
                   p.proc.poll() is not None, 90, "parley to sync")
        room = alice.create_room(invite=[bot.user_id])
        wait_until(lambda: alice.membership(room, bot.user_id) == "join",
                   60, "the bot to join")
        ev = alice.say(room, "hello under valgrind",
                       mentions=[bot.user_id])
        wait_until(lambda: [e for e in alice.messages_from(room,
                                                           bot.user_id)
                            if reply_target(e) == ev], 60, "the answer")
        p.proc.send_signal(signal.SIGTERM)
        code = p.proc.wait(timeout=60)
        p.check(code)


# Cases that could not run for want of a server or privilege: when every
# case that ran passed, the file exits 77 so ctest shows it as skipped
# rather than passed.
SKIPPED = []


def run_cases_or_skip(cases):
    try:
        run_cases(cases)
    except SystemExit as e:
        if e.code == 0 and SKIPPED:
            skip("; ".join(SKIPPED))
        raise


if __name__ == "__main__":
    harness.require_parley()
    if not VALGRIND:
        skip("valgrind not installed (scripts/install-deps.sh --test)")
    if not plain_binary():
        skip("no binary without AddressSanitizer: build one with "
             "cmake -S . -B build-valgrind -DPARLEY_SANITIZE=OFF && "
             "cmake --build build-valgrind --target parley")
    run_cases_or_skip([test_irc_under_memcheck, test_matrix_under_memcheck])
