#!/usr/bin/env python3
"""libuv stays in the loop and its glue; randomness and backoff live once.

DESIGN.md: "one backoff with jitter and one random source; the loop
offers timers, so <uv.h> stays in the loop and its glue."  This test
reads every C file under src/ and adapters/ and fails on:

1. an #include <uv.h> outside src/loop.c (with src/loop_*.c and
   src/loop_private.h, its parts by job) and the glue that hands a
   library's own I/O to libuv: src/store.c, src/store_sentinel.c and
   their src/store_private.h (hiredis's event hooks).  The
   IRC transport's TCP streams, loopback listener and resolver are the
   loop's (loop_tcp_connect, loop_listen_local);
2. a private random generator outside src/random.c: an xorshift step
   (`^= x << 13`), rand()/srand()/random()/drand48(), uv_hrtime() or
   getrandom() used for randomness;
3. a hand-written backoff: the words "backoff" and "jitter" may appear
   anywhere, but doubling (`*= 2`, `x * 2`) within five lines of an
   attempt count is only allowed in src/backoff.c.

Each rule first checks that it finds what it looks for in the one file
allowed to have it, so a moved tree cannot pass by finding nothing.
"""
import glob
import os
import re
import sys

SRC = os.environ.get("PARLEY_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# store_sentinel.c attaches its sentinel connections the way store.c
# attaches the master's (it is the store, split by job, sharing its
# struct through store_private.h).
UV_ALLOWED = {"src/loop.c", "src/store.c", "src/store_sentinel.c",
              "src/store_private.h"}
# The loop is split by job into src/loop_*.c, which share the loop struct
# through src/loop_private.h; all of them are the loop.
UV_ALLOWED_LOOP = re.compile(r"^src/loop(_\w+\.c|_private\.h)$")
UV_INCLUDE = re.compile(r"^\s*#\s*include\s*<uv\.h>")

RANDOM_ALLOWED = {"src/random.c"}
RANDOM = re.compile(r"\^=\s*\w+(->\w+)?\s*<<\s*13|\b(s?rand|random|drand48|"
                    r"uv_hrtime|getrandom)\s*\(")

BACKOFF_ALLOWED = {"src/backoff.c"}
DOUBLING = re.compile(r"\*=\s*2\b|\w\s*\*\s*2\b")


def sources():
    for folder in ("src", "adapters"):
        for path in sorted(glob.glob(os.path.join(SRC, folder, "**",
                                                  "*.[ch]"),
                                     recursive=True)):
            yield os.path.relpath(path, SRC).replace(os.sep, "/"), path


def code_lines(path):
    """Lines with comments and string literals blanked (roughly)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)),
                  text, flags=re.S)
    text = re.sub(r'"(\\.|[^"\\\n])*"', '""', text)
    return text.split("\n")


def scan(pattern, allowed, need_context=None):
    """(hits outside allowed, whether an allowed file has a hit)."""
    found, seen_allowed = [], False
    for rel, path in sources():
        lines = code_lines(path)
        for n, line in enumerate(lines, 1):
            if not pattern.search(line):
                continue
            if need_context:
                window = " ".join(lines[max(0, n - 6):n + 5])
                if not need_context.search(window):
                    continue
            if rel in allowed or (allowed is UV_ALLOWED and
                                  UV_ALLOWED_LOOP.match(rel)):
                seen_allowed = True
            else:
                found.append((rel, n, line.strip()))
    return found, seen_allowed


def main():
    failed = False
    rules = [
        ("<uv.h> outside the loop and its glue", UV_INCLUDE, UV_ALLOWED,
         None),
        ("a random source outside src/random.c", RANDOM, RANDOM_ALLOWED,
         None),
        ("a backoff doubling loop outside src/backoff.c", DOUBLING,
         BACKOFF_ALLOWED, re.compile(r"attempt")),
    ]
    for what, pattern, allowed, context in rules:
        found, seen = scan(pattern, allowed, context)
        if not seen:
            print("FAIL: the rule for %s finds nothing in %s: is SRC right "
                  "(%s)?" % (what, ", ".join(sorted(allowed)), SRC))
            failed = True
        for rel, n, line in found:
            print("FAIL: %s:%d: %s: %s" % (rel, n, what, line))
            failed = True
    if failed:
        return 1
    print("ok: libuv, randomness and backoff each live in one place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
