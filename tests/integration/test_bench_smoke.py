"""scripts/bench/run.sh --smoke: the benchmark runs end to end in
seconds with tiny numbers and prints its table (every figure, both bots,
the settings of the servers around parley), and leaves no process
behind.  Nothing is asserted about speed: timed assertions on a shared
machine only measure the machine."""

import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import PARLEY_BIN, SOURCE_DIR, require_parley, run_cases, skip

ROWS = ("Gateway overhead, IRC", "Gateway overhead, console",
        "Start-up: exec to ready", "RSS idle", "RSS after",
        "Throughput, model latency 0", "Concurrency: 20 rooms",
        "Concurrency: 50 rooms", "Stand-in alone")


def processes_using(path):
    """Pids whose command line names path (redis --dir, ngircd -f, the
    stand-in's port file all live in the bench's directory)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if path.encode() in f.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            pass
    return found


def test_smoke_prints_the_table():
    require_parley()
    build = os.path.dirname(PARLEY_BIN)
    for prog in ("bench_rooms", "openai_uv"):
        if not os.access(os.path.join(build, prog), os.X_OK):
            skip(prog + " not built")
    if not os.access("/usr/sbin/inspircd", os.X_OK):
        skip("inspircd not installed")
    env = dict(os.environ, PARLEY_BENCH_BUILD=build)
    # Sanitizer builds: leak reports of the bench programs are not the
    # subject here (the unit tests cover the code they run).
    env["ASAN_OPTIONS"] = "detect_leaks=0"
    p = subprocess.Popen([os.path.join(SOURCE_DIR, "scripts", "bench",
                                       "run.sh"), "--smoke"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    out, err = p.communicate(timeout=280)
    assert p.returncode == 0, (p.returncode, out[-2000:], err[-3000:])
    assert "| figure | parameters | parley | reference bot |" in out, out
    for row in ROWS:
        assert ("| " + row) in out, (row, out)
    for setting in ("somaxconn", "inspircd", "flood_rate_ms", "openai_uv",
                    "refbot.py"):
        assert setting in out, (setting, out)
    # bench.py stops everything it started.
    work = re.search(r"bench: working in (\S+)", err)
    assert work, err[-2000:]
    assert processes_using(work.group(1)) == []


if __name__ == "__main__":
    run_cases([test_smoke_prints_the_table])
