#!/usr/bin/python3
"""What parley costs end to end, next to a reference bot (run.sh runs it).

Starts everything on 127.0.0.1 and stops it on exit, also on failure and
Ctrl-C: redis-server, inspircd (a connect class without fake lag or
command rate limits; ngircd would throttle the bots), the
OpenAI stand-in openai_uv (libuv, HTTP/1.1, fixed model latency), parley
and the reference bot refbot.py (and its "echo" and "mxecho" modes, the
plain clients of the floor figures: the same messages answered at once
without parley, so the IRC and Matrix rows show the server's share).  Prints one Markdown table; every row
names its parameters, and the lines above it the settings of the servers
around parley (DESIGN.md "Benchmarks").

  bench.py --build DIR [--smoke | --long] [--plot FILE.svg]

DIR holds parley, bench_rooms and openai_uv.  --plot draws cost per
answer and peak RSS against rooms in flight with gnuplot (skipped with a
note when gnuplot is absent).  The HTTP/2 rows (llm.http2_prior_knowledge
against the stand-in's h2c) need libcurl 8.0.0 or newer: Debian 12's
7.88.1 fails every request that reuses an h2c connection (curl issue
10634), so parley refuses the setting there and the rows are skipped
with a note; PARLEY_BENCH_CURL_LIB=DIR runs bench_rooms with the
libcurl.so.4 in DIR (LD_LIBRARY_PATH) for those rows only.  Overhead is measured with
the stand-in's clock stamps (CLOCK_MONOTONIC, shared by every process):
message leaves the client -> request arrives at the stand-in, plus answer
leaves the stand-in -> reply reaches the client, with model latency 0.
"""

import argparse
import atexit
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"
INSPIRCD = "/usr/sbin/inspircd"
PROCS = []
TICK = os.sysconf("SC_CLK_TCK")


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


def spawn(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    PROCS.append(p)
    return p


def stop(p, timeout=10):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise RuntimeError("timed out waiting for " + what)


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        m = re.search(r"VmRSS:\s+(\d+)", f.read())
    return int(m.group(1)) / 1024.0


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))] if v else float("nan")


def first_line(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True,
                              timeout=10).stdout.splitlines()[0]
    except Exception:
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        return m.group(1).strip() if m else "?"
    except OSError:
        return "?"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def read_sysctl(name):
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return "?"


class Stand:
    """openai_uv: the OpenAI stand-in."""

    def __init__(self, build, tmp):
        pf = os.path.join(tmp, "stand.port")
        self.proc = spawn([os.path.join(build, "openai_uv"), pf, "0"])
        self.port = wait_for(lambda: os.path.exists(pf) and
                             int(open(pf).read()), 10, "the stand-in")
        self.url = "http://127.0.0.1:%d/v1" % self.port

    def call(self, method, path, body=None):
        req = urllib.request.Request(
            "http://127.0.0.1:%d%s" % (self.port, path), method=method,
            data=None if body is None else body.encode())
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def delay(self, ms):
        self.call("POST", "/_bench/delay", str(int(ms)))

    def times(self):
        return {int(k): v for k, v in self.call("GET",
                                                "/_bench/times").items()}


class Irc:
    """A raw-socket IRC client: exact receive times, no library queue."""

    def __init__(self, port, nick):
        self.nick = nick
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.lines = []
        self.send("NICK %s" % nick)
        self.send("USER %s 0 * :bench" % nick)
        self.wait(lambda l: " 001 " in l, 10)

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n")

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        if not data:
            raise RuntimeError("IRC server closed the connection")
        now = time.monotonic_ns()
        self.buf += data
        while b"\r\n" in self.buf:
            raw, self.buf = self.buf.split(b"\r\n", 1)
            line = raw.decode("utf-8", "replace")
            if line.startswith("PING"):
                self.send("PONG" + line[4:])
            self.lines.append((line, now))

    def wait(self, pred, timeout):
        end = time.monotonic() + timeout
        while True:
            for i, (line, t) in enumerate(self.lines):
                if pred(line):
                    del self.lines[:i + 1]
                    return line, t
            left = end - time.monotonic()
            if left <= 0:
                raise RuntimeError("IRC: timed out; last lines %r"
                                   % self.lines[-5:])
            self._fill(min(left, 1.0))


class Bench:
    def __init__(self, args):
        self.a = args
        self.build = os.path.abspath(args.build)
        self.tmp = tempfile.mkdtemp(prefix="parley-bench-")
        if not os.environ.get("BENCH_KEEP"):
            atexit.register(shutil.rmtree, self.tmp, True)
        os.chmod(self.tmp, 0o755)
        sys.stderr.write("bench: working in %s\n" % self.tmp)
        self.rows = []
        self.notes = []
        self.points = []        # (series, rooms, bench_rooms figures)

    # ---- servers ---------------------------------------------------------

    def start_redis(self):
        self.redis_port = free_port()
        spawn(["redis-server", "--port", str(self.redis_port), "--bind",
               "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
               self.tmp], stdout=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.redis_port), 10, "redis")

    def flush_redis(self):
        subprocess.run(["redis-cli", "-p", str(self.redis_port),
                        "flushall"], stdout=subprocess.DEVNULL, check=True)

    def start_ircd(self):
        """inspircd with a connect class that lifts its limits: no fake
        lag, 100,000 commands per second, 100 channels a user.  (ngircd
        cannot: it throttles a plain user's lines with 1 s penalties and
        lets only the user itself set +F, which a bot does not.)"""
        self.irc_port = free_port()
        d = self.tmp
        conf = os.path.join(d, "inspircd.conf")
        with open(conf, "w") as f:
            f.write("""<server name="irc.bench" description="bench"
 network="BenchNet">
<admin name="bench" nick="bench" email="bench@example.invalid">
<bind address="127.0.0.1" port="%(port)d" type="clients">
<connect name="bench" allow="*" timeout="60" pingfreq="300"
 sendq="1048576" recvq="65536" localmax="1000" globalmax="1000"
 threshold="100000" commandrate="100000000" fakelag="no"
 useident="no" maxchans="100">
<channels users="100" opers="100">
<module name="cap">
<pid file="%(d)s/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default"
 target="%(d)s/ircd.log">
<performance clonesonconnect="no" nouserdns="yes">
""" % {"port": self.irc_port, "d": d})
        spawn([INSPIRCD, "--config=" + conf, "--nofork", "--runasroot"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.irc_port), 20, "inspircd")

    def parley_conf(self, name, adapters, max_concurrent=1024):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write("""
bot = { name = "parley"; log_level = "warn"; };
redis = { host = "127.0.0.1"; port = %d; prefix = "%s:"; };
llm = { base_url = "%s"; model = "test-model"; api_key_env = "BENCH_KEY";
        timeout_ms = 120000; max_retries = 0;
        max_concurrent = %d; };
context = { max_turns = 40; };
limits = { user_requests_per_minute = 0; };
adapters = ( %s );
""" % (self.redis_port, name, self.stand.url, max_concurrent, adapters))
        return path

    # ---- figures -----------------------------------------------------------

    def bench_rooms(self, messages, rooms, conc, direct=False, h2=False):
        argv = [os.path.join(self.build, "bench_rooms"),
                str(self.redis_port), str(self.stand.port), str(messages),
                str(rooms), str(conc)] + (["direct"] if direct else []) + \
               (["h2"] if h2 else [])
        env = dict(os.environ)
        if h2 and os.environ.get("PARLEY_BENCH_CURL_LIB"):
            env["LD_LIBRARY_PATH"] = os.environ["PARLEY_BENCH_CURL_LIB"]
        self.flush_redis()
        out = subprocess.run(argv, capture_output=True, text=True,
                             timeout=600, env=env)
        if h2 and (out.returncode == 69 or
                   "http2_prior_knowledge ignored" in out.stderr):
            return None
        cols = out.stdout.split()
        if len(cols) < 11:
            raise RuntimeError("bench_rooms: %r %r" % (out.stdout,
                                                      out.stderr[-500:]))
        return {"wall": float(cols[3]), "per_s": float(cols[4]),
                "p50": float(cols[5]), "p99": float(cols[7]),
                "cpu_ms": float(cols[8]), "rss": float(cols[9]),
                "busy": int(cols[10])}

    def concurrency(self):
        self.stand.delay(2000)
        for n in self.a.rooms:
            d = self.bench_rooms(n, n, max(n, 16), direct=True)
            p = self.bench_rooms(n, n, max(n, 16))
            self.points.append(("HTTP/1.1", n, p))
            self.rows.append((
                "Concurrency: %d rooms ask at once, model 2 s" % n,
                "in-process (bench_rooms: router, Redis, llm, curl; no "
                "platform), llm.max_concurrent %d, HTTP/1.1" % max(n, 16),
                "all answered in %.2f s; peak RSS %.0f MB; %.3f CPU ms/answer"
                % (p["wall"], p["rss"], p["cpu_ms"]),
                "one at a time: %d x 2 s = %d s (by construction)"
                % (n, 2 * n),
                "stand-in + curl alone: %.2f s" % d["wall"]))
        self.concurrency_h2()

    def concurrency_h2(self):
        """The same with llm.http2_prior_knowledge: curl multiplexes up to
        100 requests on one h2c connection to the stand-in."""
        self.stand.delay(2000)
        for n in self.a.rooms:
            p = self.bench_rooms(n, n, max(n, 16), h2=True)
            if p is None:
                self.notes.append(
                    "HTTP/2 rows skipped: this libcurl (%s) fails requests "
                    "that reuse an h2c connection (curl issue 10634, fixed "
                    "in 8.0.0), so parley ignores llm.http2_prior_knowledge "
                    "there; set PARLEY_BENCH_CURL_LIB to a newer "
                    "libcurl.so.4 to measure them." % self.curl_version())
                return
            d = self.bench_rooms(n, n, max(n, 16), direct=True, h2=True)
            self.points.append(("HTTP/2 (h2c)", n, p))
            self.rows.append((
                "Concurrency over HTTP/2: %d rooms at once, model 2 s" % n,
                "as above, llm.http2_prior_knowledge true (h2c, up to 100 "
                "streams a connection)%s" % self.h2_lib_note(),
                "all answered in %.2f s; peak RSS %.0f MB; %.3f CPU ms/answer"
                % (p["wall"], p["rss"], p["cpu_ms"]), "",
                "stand-in + curl alone: %.2f s" % d["wall"]))

    def curl_version(self):
        return first_line(["curl-config", "--version"]).split()[-1]

    def h2_lib_note(self):
        lib = os.environ.get("PARLEY_BENCH_CURL_LIB")
        return "; libcurl from %s" % lib if lib else ""

    def plot(self, path):
        """Cost per answer and peak RSS against rooms in flight."""
        if not self.points:
            return
        if not shutil.which("gnuplot"):
            self.notes.append("plot not drawn: gnuplot is not installed")
            return
        series = []
        for label in sorted({p[0] for p in self.points}):
            data = os.path.join(self.tmp, "plot-%d.dat" % len(series))
            with open(data, "w") as f:
                for lab, n, p in self.points:
                    if lab == label:
                        f.write("%d %.4f %.1f\n" % (n, p["cpu_ms"], p["rss"]))
            series.append((label, data))
        plots = []
        for i, (label, data) in enumerate(series):
            plots.append("'%s' using 1:2 axes x1y1 with linespoints lw 2 "
                         "lc %d pt 7 ps 1.2 title 'CPU ms per answer, %s'"
                         % (data, i + 1, label))
            plots.append("'%s' using 1:3 axes x1y2 with linespoints lw 2 "
                         "lc %d pt 4 ps 1.2 title 'peak RSS MB, %s'"
                         % (data, i + 1, label))
        term = ("svg size 800,520 font 'sans,11' background '#ffffff'"
                if path.endswith(".svg") else
                "pngcairo size 800,520 font 'sans,10'")
        script = """set terminal %s
set output '%s'
set title 'parley: cost per answer and memory against rooms in flight (model 2 s)'
set xlabel 'rooms asking at once'
set ylabel 'CPU ms per answer (circles)'
set y2label 'peak RSS, MB (squares)'
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set xrange [0:*]
set key below horizontal maxrows 2
set grid
plot %s
""" % (term, os.path.abspath(path), ", ".join(plots))
        sf = os.path.join(self.tmp, "plot.gp")
        with open(sf, "w") as f:
            f.write(script)
        r = subprocess.run(["gnuplot", sf], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            self.notes.append("plot failed: %s" % r.stderr.strip()[-200:])
        else:
            self.notes.append("plot: %s" % path)

    def throughput(self):
        self.stand.delay(0)
        n = self.a.tput_messages
        p = self.bench_rooms(n, 100, 100)
        d = self.bench_rooms(n, 100, 100, direct=True)
        self.rows.append((
            "Throughput, model latency 0",
            "in-process, %d messages over 100 rooms at once, "
            "llm.max_concurrent 100" % n,
            "%.0f answers/s; %.2f CPU s per 1,000 answers%s"
            % (p["per_s"], p["cpu_ms"],
               "; %d turned away (room queue 32)" % p["busy"]
               if p["busy"] else ""),
            "see the console rows (one at a time)",
            "stand-in + curl alone: %.0f answers/s" % d["per_s"]))

    def overhead_rows(self, label, params, pr, rb, note=""):
        def fmt(r):
            return ("p50 %.2f / p99 %.2f / max %.2f ms (in %.2f + out %.2f "
                    "at p50)" % (pct(r["tot"], 50), pct(r["tot"], 99),
                                 max(r["tot"]), pct(r["in"], 50),
                                 pct(r["out"], 50)))
        ratio = pct(rb["tot"], 99) / max(pct(pr["tot"], 99), 1e-9)
        self.rows.append(("Gateway overhead, " + label, params, fmt(pr),
                          fmt(rb), "p99 ratio %.1fx%s" % (ratio, note)))

    def collect(self, sent, recv):
        times = self.stand.times()
        r = {"in": [], "out": [], "tot": []}
        for i, t0 in sent.items():
            if i in times and i in recv:
                a, l = times[i]
                r["in"].append((a - t0) / 1e6)
                r["out"].append((recv[i] - l) / 1e6)
                r["tot"].append(r["in"][-1] + r["out"][-1])
        if not r["tot"]:
            raise RuntimeError("no overhead samples")
        return r

    # Matrix: overhead through a real Synapse (../shared/synapse).
    def matrix(self):
        hs_sh = os.environ.get("PARLEY_SYNAPSE_SH") or os.path.join(
            os.path.dirname(os.path.dirname(os.path.dirname(HERE))),
            "shared", "synapse", "homeserver.sh")
        if self.a.smoke or not os.access(hs_sh, os.X_OK):
            self.notes.append(
                "Matrix: not measured (%s)" % ("--smoke" if self.a.smoke
                                               else hs_sh + " is absent"))
            return
        hs_dir = os.path.join(self.tmp, "synapse")
        port = free_port()
        r = subprocess.run([hs_sh, "start", hs_dir, str(port)],
                           capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            self.notes.append("Matrix: not measured (Synapse did not "
                              "start: %s)" % r.stderr.strip()[-200:])
            return
        try:
            self.matrix_run(hs_sh, hs_dir, port)
        finally:
            subprocess.run([hs_sh, "stop", hs_dir], timeout=60,
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    def matrix_run(self, hs_sh, hs_dir, port):
        def register(user, pw):
            r = subprocess.run([hs_sh, "register", hs_dir, user, pw],
                               capture_output=True, text=True, timeout=60,
                               check=True)
            return json.loads(r.stdout)

        base = "http://127.0.0.1:%d/_matrix/client/v3" % port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def call(method, path, body=None, token=None):
            conn.request(method, "/_matrix/client/v3" + path,
                         body=None if body is None else json.dumps(body),
                         headers={"Content-Type": "application/json",
                                  "Authorization": "Bearer " + token})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError("%s %s -> %d %r" % (method, path,
                                                       resp.status, data))
            return json.loads(data or b"{}")

        bot = register("parleybench", "bench-pw-1")
        alice = register("alicebench", "bench-pw-2")
        conf = self.parley_conf("mx-parley", """{ type = "matrix";
            homeserver = "http://127.0.0.1:%d"; user_id = "%s";
            password_env = "BENCH_MX_PASSWORD"; device_name = "bench";
            allow_invites_from = [ "%s" ]; greet_on_join = false; }"""
            % (port, bot["user_id"], alice["user_id"]))
        proc = spawn([os.path.join(self.build, "parley"), "-c", conf],
                     env=dict(os.environ, BENCH_KEY="x",
                              BENCH_MX_PASSWORD="bench-pw-1"),
                     stdout=subprocess.DEVNULL,
                     stderr=open(os.path.join(self.tmp, "parley-mx.log"),
                                 "ab"))
        tok = alice["access_token"]

        def measure(peer, n, base):
            """alice asks peer (who answers in the room) n questions, one
            at a time, after 20 to warm up; (sent, recv) stamps."""
            room = call("POST", "/createRoom", {"preset": "private_chat",
                                               "invite": [peer]},
                        tok)["room_id"]
            rq = urllib.parse.quote(room, safe="")
            member = "/rooms/%s/joined_members" % rq
            wait_for(lambda: peer in call("GET", member, None,
                                          tok).get("joined", {}),
                     60, "%s to join the Matrix room" % peer)
            filt = urllib.parse.quote(json.dumps(
                {"room": {"rooms": [room], "timeline": {"limit": 50}},
                 "presence": {"types": []}, "account_data": {"types": []}}))
            since = call("GET", "/sync?timeout=0&filter=" + filt, None,
                         tok)["next_batch"]

            def ask(i, tag):
                nonlocal since
                t0 = time.monotonic_ns()
                call("PUT", "/rooms/%s/send/m.room.message/b%d" % (rq, i),
                     {"msgtype": "m.text", "body": "parleybench: %s%d how "
                      "are you?" % (tag, i),
                      "m.mentions": {"user_ids": [peer]}}, tok)
                want = "%s%d " % (tag, i)
                while True:
                    j = call("GET", "/sync?timeout=30000&since=%s&filter=%s"
                             % (since, filt), None, tok)
                    since = j["next_batch"]
                    evs = j.get("rooms", {}).get("join", {}).get(
                        room, {}).get("timeline", {}).get("events", [])
                    for e in evs:
                        if e.get("sender") == peer and want in \
                                e.get("content", {}).get("body", ""):
                            return t0, time.monotonic_ns()

            for w in range(20):     # warm up: first connections, caches
                ask(base - 100 + w, "warm")
            self.stand.times()
            sent, recv = {}, {}
            for i in range(base, base + n):
                sent[i], recv[i] = ask(i, "bq")
            return sent, recv

        n = self.a.matrix_messages
        sent, recv = measure(bot["user_id"], n, 300000)
        stop(proc)
        ov = self.collect(sent, recv)
        # The floor: the same questions to a plain client that answers at
        # once (refbot.py mxecho), so Synapse's share shows.
        echo = register("echobench", "bench-pw-3")
        eproc = spawn([PY, os.path.join(HERE, "refbot.py"), "mxecho",
                       "http://127.0.0.1:%d" % port],
                      env=dict(os.environ,
                               BENCH_MX_TOKEN=echo["access_token"]),
                      stdout=subprocess.DEVNULL,
                      stderr=open(os.path.join(self.tmp, "mxecho.log"),
                                  "ab"))
        fs, fr = measure(echo["user_id"], n, 600000)
        stop(eproc)
        conn.close()
        floor = [(fr[i] - fs[i]) / 1e6 for i in fs]

        def fmt(r):
            return ("p50 %.2f / p99 %.2f / max %.2f ms (in %.2f + out %.2f "
                    "at p50)" % (pct(r["tot"], 50), pct(r["tot"], 99),
                                 max(r["tot"]), pct(r["in"], 50),
                                 pct(r["out"], 50)))
        self.rows.append((
            "Gateway overhead, Matrix", "Synapse 1.66 (../shared/synapse "
            "config, not strict: its rc_message is generous; sqlite), %d "
            "messages in one room one at a time; in and out each include "
            "a /sync long-poll wake-up" % n, fmt(ov),
            "not measured (refbot.py speaks IRC and the console)",
            "floor (Synapse, a client that answers at once, refbot.py "
            "mxecho): p50 %.2f / p99 %.2f ms" % (pct(floor, 50),
                                                 pct(floor, 99))))

    # IRC: start-up, idle RSS with 50 channels, overhead, CPU per answer.
    def irc_one(self, kind, client, channels):
        nick = {"parley": "parley", "ref": "refbot", "floor": "echo"}[kind]
        t0 = time.monotonic_ns()
        if kind == "floor":
            proc = spawn([PY, os.path.join(HERE, "refbot.py"), "echo",
                          "127.0.0.1", str(self.irc_port), nick] + channels,
                         stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(self.tmp, "echo.log"),
                                     "ab"))
        elif kind == "parley":
            chans = ", ".join('{ name = "%s"; }' % c for c in channels)
            conf = self.parley_conf("irc-" + nick, """{ type = "irc";
                name = "bench"; host = "127.0.0.1"; port = %d; tls = false;
                nick = "%s"; channels = ( %s ); flood_burst = 100;
                flood_rate_ms = 10; max_lines = 4; greet_on_join = false;
                }""" % (self.irc_port, nick, chans))
            proc = spawn([os.path.join(self.build, "parley"), "-c", conf],
                         env=dict(os.environ, BENCH_KEY="x"),
                         stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(self.tmp, "parley-irc.log"),
                                     "ab"))
        else:
            proc = spawn([PY, os.path.join(HERE, "refbot.py"), "irc",
                          "127.0.0.1", str(self.irc_port), nick,
                          self.stand.url] + channels,
                         stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(self.tmp, "refbot.log"),
                                     "ab"))
        joined = set()
        pat = re.compile(r"^:%s!\S+ JOIN :?(#\S+)" % nick, re.I)
        while len(joined) < len(channels):
            line, t = client.wait(lambda l: pat.match(l), 30)
            joined.add(pat.match(line).group(1).lower())
        startup = (t - t0) / 1e6
        # Warm up (JOIN bursts, first connections) until replies come fast,
        # so the figures below do not carry them.
        for w in range(1000):
            t = time.monotonic()
            client.send("PRIVMSG %s :%s: warm%d" % (channels[0], nick, w))
            client.wait(lambda l, w=w: "warm%d" % w in l and
                        l.startswith(":" + nick + "!"), 30)
            if time.monotonic() - t < 0.05:
                break
        time.sleep(1.0)
        idle = rss_mb(proc.pid)
        cpu0 = cpu_s(proc.pid)
        self.stand.times()
        sent, recv = {}, {}
        n = self.a.irc_messages
        base = {"parley": 100000, "ref": 200000, "floor": 500000}[kind]
        pace = self.a.pace_ms / 1000.0
        for i in range(base, base + n):
            t_next = time.monotonic() + pace
            sent[i] = time.monotonic_ns()
            client.send("PRIVMSG %s :%s: bq%d how are you?"
                        % (channels[0], nick, i))
            tag = "bq%d " % i
            line, t = client.wait(lambda l: tag in l and
                                  l.startswith(":" + nick + "!"), 30)
            recv[i] = t
            wait = t_next - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        cpu = cpu_s(proc.pid) - cpu0
        after = rss_mb(proc.pid)
        # Multi-line answers (parley only: refbot.py joins the lines):
        # the stand-in answers "ml4" with 4 lines, 3 of them 407 bytes,
        # more than libircclient's 1024-byte output buffer holds.
        ml = []
        for i in range(self.a.ml_messages if kind == "parley" else 0):
            t_next = time.monotonic() + 4 * pace
            t0 = time.monotonic_ns()
            client.send("PRIVMSG %s :%s: mq%d ml4 lines please"
                        % (channels[0], nick, i))
            tag = "mq%d " % i
            _, t1 = client.wait(lambda l: tag in l and
                                l.startswith(":" + nick + "!"), 30)
            _, t4 = client.wait(lambda l: " :line 4:" in l and
                                l.startswith(":" + nick + "!"), 30)
            ml.append(((t1 - t0) / 1e6, (t4 - t1) / 1e6))
            wait = t_next - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        stop(proc)
        if kind == "floor":     # no model in between: the whole trip
            ov = {"tot": [(recv[i] - sent[i]) / 1e6 for i in sent]}
        else:
            ov = self.collect(sent, recv)
        return {"startup": startup, "idle": idle, "after": after,
                "cpu_ms": cpu * 1e3 / n, "ov": ov, "ml": ml}

    def irc(self):
        self.stand.delay(0)
        channels = ["#c%d" % i for i in range(self.a.channels)]
        client = Irc(self.irc_port, "bench")
        for c in channels:
            client.send("JOIN " + c)
        for c in channels:
            client.wait(lambda l, c=c: " JOIN " in l and c in l.split()[-1],
                        10)
        res = {k: self.irc_one(k, client, channels)
               for k in ("parley", "ref", "floor")}
        p, r, fl = res["parley"], res["ref"], res["floor"]["ov"]["tot"]
        n = self.a.irc_messages
        self.overhead_rows(
            "IRC", "inspircd, %d messages in one channel "
            "one at a time (>= %d ms apart, under parley's flood_rate_ms "
            "10 / burst 100)" % (n, self.a.pace_ms), p["ov"], r["ov"],
            "; floor (inspircd relaying twice, echo client): p50 %.2f / "
            "p99 %.2f ms" % (pct(fl, 50), pct(fl, 99)))
        if p["ml"]:
            first = [x[0] for x in p["ml"]]
            spread = [x[1] for x in p["ml"]]
            self.rows.append((
                "Multi-line answer, IRC", "%d answers of 4 lines (the "
                "echo, then 3 of 407 bytes: more than libircclient's "
                "1024-byte output buffer), one at a time, model 0"
                % len(p["ml"]),
                "first line -> last line p50 %.2f / max %.2f ms (message "
                "-> first line p50 %.2f ms)" % (pct(spread, 50),
                                                max(spread), pct(first, 50)),
                "not measured (refbot.py sends one line)", ""))
        self.rows.append((
            "Start-up: exec to ready", "IRC, %d channels joined, loopback"
            % len(channels), "%.0f ms" % p["startup"], "%.0f ms" %
            r["startup"], "%.1fx; floor (the echo client: inspircd's "
            "registration and the same joins): %.0f ms"
            % (r["startup"] / max(p["startup"], 1),
               res["floor"]["startup"])))
        self.rows.append((
            "RSS idle", "IRC connected, %d channels" % len(channels),
            "%.1f MB" % p["idle"], "%.1f MB" % r["idle"],
            "%.1fx%s" % (r["idle"] / max(p["idle"], 0.1),
                         self.rss_floor())))
        self.rows.append((
            "CPU per answer, end to end", "IRC, the %d messages above"
            % n, "%.3f ms" % p["cpu_ms"], "%.3f ms" % r["cpu_ms"],
            "%.1fx" % (r["cpu_ms"] / max(p["cpu_ms"], 1e-3))))

    # Console: overhead over many messages, RSS growth, sequential rate.
    def console_one(self, kind):
        if kind == "parley":
            conf = self.parley_conf("console", '{ type = "console"; }')
            argv = [os.path.join(self.build, "parley"), "-c", conf]
            prefix = "parley> "
        else:
            argv = [PY, os.path.join(HERE, "refbot.py"), "console",
                    self.stand.url]
            prefix = "bot> "
        proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=open(os.path.join(self.tmp, kind + "-con.log"),
                                 "ab"),
                     env=dict(os.environ, BENCH_KEY="x"), bufsize=0)
        out = proc.stdout
        sent, recv = {}, {}
        n = self.a.console_messages
        base = 300000 if kind == "parley" else 400000
        rss_first = None
        self.stand.times()
        t_start = time.monotonic()
        cpu0 = None
        for i in range(base, base + n):
            sent[i] = time.monotonic_ns()
            proc.stdin.write(b"bq%d how are you?\n" % i)
            tag = b"bq%d " % i
            while True:
                line = out.readline()
                if not line:
                    raise RuntimeError(kind + " console closed")
                if line.startswith(prefix.encode()) and tag in line:
                    recv[i] = time.monotonic_ns()
                    break
            if rss_first is None:
                rss_first = rss_mb(proc.pid)
                cpu0 = cpu_s(proc.pid)
                t_start = time.monotonic()
        wall = time.monotonic() - t_start
        cpu = cpu_s(proc.pid) - cpu0
        after = rss_mb(proc.pid)
        proc.stdin.close()
        stop(proc)
        return {"ov": self.collect(sent, recv), "first": rss_first,
                "after": after, "per_s": (n - 1) / wall,
                "cpu_1000": cpu * 1000 / (n - 1)}

    def console(self):
        self.stand.delay(0)
        p = self.console_one("parley")
        r = self.console_one("ref")
        n = self.a.console_messages
        self.overhead_rows("console", "stdin/stdout pipes, %d messages one "
                           "at a time" % n, p["ov"], r["ov"])
        self.rows.append((
            "RSS after %d messages" % n, "console, one room, history 40 "
            "turns (RSS after the first answer in brackets)",
            "%.1f MB (%.1f)" % (p["after"], p["first"]),
            "%.1f MB (%.1f)" % (r["after"], r["first"]),
            "%.1fx" % (r["after"] / max(p["after"], 0.1))))
        self.rows.append((
            "Answers one at a time, model 0", "console, %d messages" % n,
            "%.0f answers/s; %.2f CPU s per 1,000" % (p["per_s"],
                                                     p["cpu_1000"]),
            "%.0f answers/s; %.2f CPU s per 1,000" % (r["per_s"],
                                                     r["cpu_1000"]),
            "CPU %.1fx" % (r["cpu_1000"] / max(p["cpu_1000"], 1e-3))))

    def rss_floor(self):
        """What a process that only initialises libcurl, or maps every
        library parley maps, costs (scripts/bench/rss_floor.c)."""
        out = []
        for name, what in (("rss_floor_curl", "libcurl alone"),
                           ("rss_floor_libs", "parley's libraries")):
            exe = os.path.join(self.build, name)
            if not os.path.exists(exe):
                return ""
            kb = subprocess.run([exe], capture_output=True, text=True,
                                timeout=30).stdout.split()
            out.append("%s %.1f MB" % (what, int(kb[0]) / 1024.0))
        return ("; floor (a process that only initialises them, "
                "rss_floor.c): " + ", ".join(out))

    def h2load(self, n, h2):
        """The same n requests from nghttp2's h2load, a load generator
        in C without curl: what the stand-in and the kernel alone take.
        None when h2load (Debian nghttp2-client) is not installed."""
        exe = shutil.which("h2load")
        if not exe:
            return None
        body = os.path.join(self.tmp, "h2load-body.json")
        with open(body, "w") as f:
            f.write('{"model":"test-model","messages":[{"role":"user",'
                    '"content":"m1 hello"}]}')
        conns = ["-c", str(max(1, n // 100)), "-m", "100"] if h2 else \
            ["--h1", "-c", str(n), "-m", "1"]
        out = subprocess.run(
            [exe, "-n", str(n)] + conns + ["-d", body, "-H",
                                          "Content-Type: application/json",
                                          self.stand.url +
                                          "/chat/completions"],
            capture_output=True, text=True, timeout=300).stdout
        m = re.search(r"finished in ([0-9.]+)(ms|s)", out)
        ok = re.search(r"requests: .* (\d+) succeeded", out)
        if not m or not ok or int(ok.group(1)) != n:
            return None
        return float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)

    def stand_alone(self):
        self.stand.delay(2000)
        n = max(self.a.rooms)
        d = self.bench_rooms(n, n, n, direct=True)
        st = self.stand.call("GET", "/_bench/stats")
        self.rows.append((
            "Stand-in alone", "openai_uv, %d requests at once through "
            "parley's llm + curl, model 2 s" % n,
            "all answered in %.2f s, peak %d connections open"
            % (d["wall"], st["peak_open"]), "", ""))
        for h2 in (False, True):
            t = self.h2load(n, h2)
            if t is None:
                self.notes.append("h2load (Debian nghttp2-client) not "
                                  "installed or failed: the stand-in "
                                  "without curl is not measured")
                return
            self.rows.append((
                "Stand-in alone, without curl", "h2load (nghttp2, C), %d "
                "requests at once, model 2 s, %s" % (
                    n, "h2c, 100 streams a connection, %d connection%s"
                    % (max(1, n // 100), "s" if n >= 200 else "")
                    if h2 else "HTTP/1.1, one connection each"),
                "all answered in %.2f s" % t, "",
                "the floor of this machine for the concurrency rows"))

    def settings(self):
        lines = [
            "machine: %d cores (%s), %s, kernel %s, load average %s at "
            "the start"
            % (os.cpu_count(), platform.processor() or platform.machine(),
               cpu_model(), platform.release(), loadavg()),
            "kernel: net.core.somaxconn %s, net.ipv4.tcp_max_syn_backlog "
            "%s, open files (soft/hard) %s/%s"
            % ((read_sysctl("net.core.somaxconn"),
                read_sysctl("net.ipv4.tcp_max_syn_backlog"))
               + resource.getrlimit(resource.RLIMIT_NOFILE)),
            "redis-server %s; %s; libcurl %s" % (
                re.sub(r".* v=(\S+).*", r"\1",
                       first_line(["redis-server", "-v"])),
                first_line([INSPIRCD, "--version"]),
                first_line(["curl-config", "--version"]).split()[-1]),
            "inspircd connect class: fakelag no, commandrate 100000000, "
            "threshold 100000, maxchans 100, recvq 64 KiB, sendq 1 MiB "
            "(ngircd is not used: it throttles a plain user with 1 s "
            "penalties); parley irc: flood_burst 100, flood_rate_ms 10, "
            "max_lines 4",
            "stand-in: openai_uv (libuv, one thread, HTTP/1.1 keep-alive, "
            "h2c with prior knowledge via libnghttp2, listen backlog 65535 "
            "clamped to somaxconn); Python http.server not used",
            "reference bot: scripts/bench/refbot.py (python3-irc, "
            "synchronous, urllib, new connection per request, history "
            "list of 40 turns)",
        ]
        return lines

    def run(self):
        t0 = time.monotonic()
        self.start_redis()
        self.stand = Stand(self.build, self.tmp)
        self.start_ircd()
        settings = self.settings()
        for name in FIGURES:
            if not self.a.only or name in self.a.only:
                getattr(self, name)()
        self.notes.append("load average %s at the end (other work on the "
                          "machine shares its cores)" % loadavg())
        if self.a.plot:
            self.plot(self.a.plot)
        print("## parley benchmark (%s)" % ("smoke: tiny numbers, not "
                                            "figures" if self.a.smoke
                                            else "scripts/bench/run.sh"))
        print()
        for s in settings:
            print("- " + s)
        print()
        print("| figure | parameters | parley | reference bot | ratio "
              "(reference / parley: > 1 parley ahead) or note |")
        print("|---|---|---|---|---|")
        for r in self.rows:
            print("| " + " | ".join(r) + " |")
        print()
        for n in self.notes:
            print("- " + n)
        print("- run time %.0f s" % (time.monotonic() - t0))


# The groups of rows, in the order the table prints them (--only picks).
FIGURES = ("irc", "matrix", "console", "throughput", "concurrency",
           "stand_alone")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--long", action="store_true")
    p.add_argument("--only", type=lambda v: v.split(","),
                   help="comma-separated groups of rows to run: "
                   + ",".join(FIGURES))
    p.add_argument("--plot", help="write the gnuplot chart here (.png, "
                   "or .svg)")
    a = p.parse_args()
    for name in a.only or ():
        if name not in FIGURES:
            p.error("--only: unknown group %r (known: %s)"
                    % (name, ", ".join(FIGURES)))
    a.pace_ms = 12
    if a.smoke:
        a.irc_messages, a.console_messages, a.channels = 20, 50, 5
        a.ml_messages = 5
        a.matrix_messages = 0
        a.rooms, a.tput_messages = [20, 50], 200
    elif a.long:
        a.irc_messages, a.console_messages, a.channels = 5000, 20000, 50
        a.ml_messages = 500
        a.matrix_messages = 1000
        a.rooms, a.tput_messages = [1000, 5000, 10000], 3000
    else:
        a.irc_messages, a.console_messages, a.channels = 2000, 10000, 50
        a.ml_messages = 200
        a.matrix_messages = 200
        a.rooms, a.tput_messages = [1000, 5000, 10000], 3000
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    b = Bench(a)
    atexit.register(cleanup)    # runs before the temporary dir goes
    b.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
