#!/usr/bin/env python3
"""Style and repository hygiene, enforced by ctest.

1. scripts/checksrc.sh passes on the tree (STYLE.md's mechanical rules).
2. checksrc.sh itself can fail: fixtures with each violation must be
   reported at the right line, and tricky-but-valid code must pass.
3. The scripts CI runs are executable in git (a fresh clone runs them
   directly), .ci/run calls scripts/test.sh and nothing else, and every
   shell script parses (bash -n) and, where shellcheck exists, is clean.
"""
import os
import shutil
import subprocess
import sys
import tempfile

SRC = os.environ.get("PARLEY_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKSRC = os.path.join(SRC, "scripts", "checksrc.sh")
SCRIPTS = ["scripts/install-deps.sh", "scripts/run.sh", "scripts/test.sh",
           "scripts/checksrc.sh", ".ci/run"]

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def run(args, **kw):
    return subprocess.run(args, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)


def check_tree():
    r = run(["bash", CHECKSRC], cwd=SRC)
    print(r.stdout, end="")
    if r.returncode != 0:
        fail("scripts/checksrc.sh found style problems in the tree (above)")


BAD_C = """\
/* bad.c: one violation per numbered line. */
#include <string.h>
\tint tabbed;
int trailing;   
static char buf[8]; // c++ comment
void f(char *d, const char *s) { strcpy(d, s); }
void g(char *d) { sprintf(d, "%d", 1); }
int h(const char *s) { return atoi(s); }
typedef struct foo { int x; } foo_t;
/* a line that is far too long ...................................................... */
void k(char *d, const char *s) { strcat(d, s); (void)gets(d); }
int m(const char *s) { return (int)atol(s); }
void n(char *d, const char *s) { strncat(d, s, 1); }
int crlf;\r
int noeol;"""

# (line, rule) pairs checksrc must report for BAD_C.
BAD_C_EXPECT = {(3, "TAB"), (4, "TRAILINGSPACE"), (5, "CPPCOMMENT"),
                (6, "BANNEDFUNC"), (7, "BANNEDFUNC"), (8, "BANNEDFUNC"),
                (9, "TYPEDEFSTRUCT"), (10, "LONGLINE"), (11, "BANNEDFUNC"),
                (12, "BANNEDFUNC"), (13, "BANNEDFUNC"), (14, "CRLF"),
                (15, "NOEOL")}

GOOD_C = """\
/*
 * good.c: things that look like violations but are not.  A comment may
 * name strcpy(a, b) or sprintf() and contain // freely.
 */
#include <stdio.h>
static const char *url = "http://example.org/a//b";   /* // in a string */
static const char slash = '/';
static const char quote = '\\'';
static const char *esc = "a \\" // b";
/* 80 columns of UTF-8 (more than 80 bytes): */
static const char *utf8 = "\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9 \u4e2d\u6587 \U0001f600 ...................................";
struct point {
    int x;
};
int snprintf_user(char *d, size_t n);
int snprintf_user(char *d, size_t n)
{
    char line[16];
    (void)fgets(line, sizeof(line), stdin);
    (void)strtol(line, NULL, 10);
    return snprintf(d, n, "%s%c%c%s%s", url, slash, quote, esc, utf8);
}
/* !checksrc! disable LONGLINE 1 */
static const char *long_ok = "this one line may be long because the comment above says so ....";
"""

HEADERS = {
    # name: (text, expected rule or None)
    "good.h": ("/* ok */\n#ifndef PARLEY_GOOD_H\n#define PARLEY_GOOD_H\n"
               "int x;\n#endif /* PARLEY_GOOD_H */\n", None),
    "prefixed.h": ("#ifndef PARLEY_IRC_PREFIXED_H\n"
                   "#define PARLEY_IRC_PREFIXED_H\n#endif\n", None),
    "noguard.h": ("/* none */\nint y;\n", "INCLUDEGUARD"),
    "pragma.h": ("#pragma once\nint z;\n", "INCLUDEGUARD"),
    "wrongname.h": ("#ifndef __WRONG_H__\n#define __WRONG_H__\n#endif\n",
                    "INCLUDEGUARD"),
    "mismatch.h": ("#ifndef PARLEY_MISMATCH_H\n#define PARLEY_MISMATCH\n"
                   "#endif\n", "INCLUDEGUARD"),
    "noendif.h": ("#ifndef PARLEY_NOENDIF_H\n#define PARLEY_NOENDIF_H\n"
                  "int w;\n", "INCLUDEGUARD"),
}


def parse(out):
    """'file:line: msg [RULE]' lines -> set of (basename, line, rule)."""
    found = set()
    for ln in out.splitlines():
        if not ln.endswith("]") or ":" not in ln:
            continue
        path, line, _ = ln.split(":", 2)
        rule = ln[ln.rindex("[") + 1:-1]
        found.add((os.path.basename(path), int(line), rule))
    return found


def check_checker():
    with tempfile.TemporaryDirectory() as tmp:
        bad = os.path.join(tmp, "bad.c")
        with open(bad, "wb") as f:
            f.write(BAD_C.encode())
        r = run(["bash", CHECKSRC, bad])
        got = {(ln, rule) for _, ln, rule in parse(r.stdout)}
        if r.returncode != 1:
            fail("checksrc exit %d on bad.c, want 1" % r.returncode)
        for want in sorted(BAD_C_EXPECT - got):
            fail("checksrc missed %s at bad.c:%d" % (want[1], want[0]))
        for extra in sorted(got - BAD_C_EXPECT):
            fail("checksrc reported %s at bad.c:%d wrongly"
                 % (extra[1], extra[0]))

        good = os.path.join(tmp, "good.c")
        with open(good, "wb") as f:
            f.write(GOOD_C.encode("utf-8"))
        r = run(["bash", CHECKSRC, good])
        if r.returncode != 0:
            fail("checksrc rejected valid good.c:\n" + r.stdout)

        for name, (text, rule) in HEADERS.items():
            path = os.path.join(tmp, name)
            with open(path, "w") as f:
                f.write(text)
            r = run(["bash", CHECKSRC, path])
            rules = {x[2] for x in parse(r.stdout)}
            if rule is None and r.returncode != 0:
                fail("checksrc rejected valid %s:\n%s" % (name, r.stdout))
            if rule is not None and (r.returncode != 1 or rule not in rules):
                fail("checksrc did not report %s for %s (exit %d):\n%s"
                     % (rule, name, r.returncode, r.stdout))

        # Two headers with one guard: the second is reported.
        sub = os.path.join(tmp, "sub")
        os.mkdir(sub)
        dup = os.path.join(sub, "good.h")
        shutil.copy(os.path.join(tmp, "good.h"), dup)
        r = run(["bash", CHECKSRC, os.path.join(tmp, "good.h"), dup])
        if r.returncode != 1 or "also used by" not in r.stdout:
            fail("checksrc missed a duplicate include guard:\n" + r.stdout)


def check_scripts():
    ci = os.path.join(SRC, ".ci", "run")
    with open(ci) as f:
        lines = [ln.strip() for ln in f
                 if ln.strip() and not ln.startswith("#")]
    if lines[-1:] != ["exec scripts/test.sh"] or len(lines) > 3:
        fail(".ci/run must only cd to the root and exec scripts/test.sh: %r"
             % lines)

    git = shutil.which("git")
    if git and run([git, "rev-parse"], cwd=SRC).returncode == 0:
        r = run([git, "ls-files", "-s", "--"] + SCRIPTS, cwd=SRC)
        modes = {ln.split()[3]: ln.split()[0] for ln in r.stdout.splitlines()}
        for s in SCRIPTS:
            if s not in modes:
                fail("%s is not tracked by git" % s)
            elif modes[s] != "100755":
                fail("%s is mode %s in git, want 100755 (git update-index "
                     "--chmod=+x %s)" % (s, modes[s], s))
    else:
        print("note: not a git checkout, file modes not checked")

    for s in SCRIPTS:
        r = run(["bash", "-n", os.path.join(SRC, s)])
        if r.returncode != 0:
            fail("bash -n %s:\n%s" % (s, r.stdout))
    sc = shutil.which("shellcheck")
    if sc:
        r = run([sc, "-s", "bash"] + [os.path.join(SRC, s) for s in SCRIPTS])
        if r.returncode != 0:
            fail("shellcheck:\n" + r.stdout)
    else:
        print("note: shellcheck not installed, shell lint skipped")


def main():
    check_tree()
    check_checker()
    check_scripts()
    if failures:
        print("%d style check(s) failed" % len(failures))
        return 1
    print("style checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
