#!/usr/bin/env python3
"""hiredis reply types stay in the store and the typed state layer.

DESIGN.md: src/store.c and src/state*.c are the only code that reads
hiredis replies; the router, the commands, the history code and the
adapters see structs and status codes (state.h).  This test counts
REDIS_REPLY_ in every C file under src/ and adapters/ outside those, and
fails on any.  Enforced since the router, job.c, command.c, context.c
and the Matrix adapter were switched over to state.h (issue 8).
"""
import glob
import os
import re
import sys

ENFORCED = True

SRC = os.environ.get("PARLEY_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIP = 77
PATTERN = re.compile(r"REDIS_REPLY_[A-Z]+")


def allowed(rel):
    """store.c (with its parts store_*.c) and the state layer may read
    replies."""
    name = os.path.basename(rel)
    return rel.startswith("src" + os.sep) and (
        name == "store.c" or name.startswith("store_") or
        name.startswith("state"))


def count():
    found = []
    for folder in ("src", "adapters"):
        for path in sorted(glob.glob(os.path.join(SRC, folder, "**", "*.[ch]"),
                                     recursive=True)):
            rel = os.path.relpath(path, SRC)
            if allowed(rel):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    for m in PATTERN.finditer(line):
                        found.append((rel, n, m.group(0)))
    return found


def main():
    # The counter itself must see the allowed files' uses, or a moved
    # tree would pass by finding nothing.
    store = os.path.join(SRC, "src", "store.c")
    with open(store, encoding="utf-8") as f:
        if not PATTERN.search(f.read()):
            print("FAIL: no REDIS_REPLY_ in src/store.c: is SRC right? "
                  + SRC)
            return 1
    found = count()
    for rel, n, what in found:
        print("%s:%d: %s outside the state layer" % (rel, n, what))
    print("%d REDIS_REPLY_* use(s) outside src/store.c and src/state*.c"
          % len(found))
    enforced = ENFORCED or os.environ.get("PARLEY_ENFORCE_STATE_LAYER") == "1"
    if not found:
        return 0
    if not enforced:
        print("skipped: not enforced until the switch to state.h "
              "(set ENFORCED = True in this file)")
        return SKIP
    print("FAIL: read replies through state.h (src/state*.c) instead")
    return 1


if __name__ == "__main__":
    sys.exit(main())
