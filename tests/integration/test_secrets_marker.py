"""Marker secrets: every secret parley holds is set to a recognisable
marker (the API key, the Redis password, the IRC SASL password and a
channel key, the web access token, the Matrix password and crypto key),
scenarios run that use each of them, also on error paths (a rejected
SASL login, a model error body that echoes the key, a wrong web token),
and then the test looks everywhere a secret could leak:

- every line parley wrote (stdout and stderr: logs, error messages);
- what people see (IRC PRIVMSGs, web history, Matrix answers);
- GET /metrics and /healthz;
- Redis: every key name and every value (SCAN, then DUMP of each key,
  with rdbcompression off so no value hides behind LZF);
- core files: RLIMIT_CORE is 0 in /proc/<pid>/limits, and the process is
  not dumpable (checked on a parley run as user nobody: another process
  of nobody may not read its /proc/<pid>/environ, while it may read that
  of a plain process of nobody).

The Matrix case needs Synapse (../shared/synapse) and is skipped without
it; the others need only redis-server.
"""

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (PARLEY_BIN, Parley, Stub, Test, free_port,
                     require_parley, run_cases, skip, spawn, stop,
                     wait_port, wait_until, write_config)
from irc_helpers import ScriptedServer, irc_block, sasl_plain

M_KEY = "sk-MARKERkey-5b1e0c77d2a94f31"
M_REDIS = "MARKERredis-8c2d4e6f0a1b3c5d"
M_SASL = "MARKERsasl-3f9e1d7c5b3a1908"
M_CHANKEY = "MARKERchan-6a4c2e0f8d"
M_WEB = "MARKERweb-0d1c2b3a49586778"
M_MXPW = "MARKERmxpw-a1b2c3d4e5f60718"
M_CRYPTO = "MARKERcrypto-1f2e3d4c5b6a79880a1b2c3d"
MARKERS = [M_KEY, M_REDIS, M_SASL, M_CHANKEY, M_WEB, M_MXPW, M_CRYPTO]


def derived(marker):
    """Forms a marker takes on the wire that must not leak either."""
    out = [marker, base64.b64encode(marker.encode()).decode()]
    if marker == M_SASL:
        out.append(sasl_plain("parley", M_SASL))
    return out


def assert_clean(what, text):
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    for m in MARKERS:
        for form in derived(m):
            assert form not in text, "secret %s leaked into %s: ...%s..." % (
                m, what, text[max(0, text.find(form) - 200):
                              text.find(form) + 60])


# ---- Redis with a password ---------------------------------------------

class AuthRedis:
    """redis-server with requirepass and rdbcompression off (DUMP then
    shows values as stored)."""

    def __init__(self, tmp):
        self.port = free_port()
        self.dir = os.path.join(tmp, "redis-%d" % self.port)
        os.makedirs(self.dir)
        self.proc = None

    def start(self):
        self.proc = spawn(["redis-server", "--port", str(self.port),
                           "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", self.dir,
                           "--requirepass", M_REDIS,
                           "--rdbcompression", "no"],
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self):
        stop(self.proc)

    def raw(self, *args):
        """RESP reply of args after AUTH, bytes kept as bytes."""
        def enc(a):
            a = a if isinstance(a, bytes) else str(a).encode()
            return b"$%d\r\n%s\r\n" % (len(a), a)
        with socket.create_connection(("127.0.0.1", self.port), 5) as s:
            for cmd in (("AUTH", M_REDIS), args):
                s.sendall(b"*%d\r\n" % len(cmd) + b"".join(map(enc, cmd)))
            f = s.makefile("rb")
            read(f)
            return read(f)

    def everything(self):
        """Every key name and the DUMP of every value, as bytes."""
        out, cursor = [], b"0"
        while True:
            cursor, keys = self.raw("SCAN", cursor, "COUNT", 1000)
            for k in keys:
                out.append(k)
                out.append(self.raw("DUMP", k) or b"")
            if cursor == b"0":
                return out


def read(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b":"):
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        return [read(f) for _ in range(int(rest))]
    raise RuntimeError("bad RESP %r" % line)


def check_redis(redis):
    items = redis.everything()
    assert len(items) > 4, "Redis holds almost nothing: %r" % items
    assert_clean("Redis", b"\n".join(items))
    return len(items) // 2


def with_redis_password(conf):
    with open(conf) as f:
        text = f.read()
    text = text.replace('prefix = "t:"; };',
                        'prefix = "t:"; password_env = "T_REDIS_PW"; };', 1)
    with open(conf, "w") as f:
        f.write(text)


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        return e.read()


def check_core_limit(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max core file size"):
                soft, hard = line.split()[4:6]
                assert soft == "0", line
                return
    raise AssertionError("no core limit line")


# ---- cases -------------------------------------------------------------

def test_irc_web_model_redis_markers():
    with Test() as t:
        redis = t.add(AuthRedis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=M_KEY).start())
        srv = t.add(ScriptedServer())
        web_port, metrics_port = free_port(), free_port()
        block = irc_block(srv.port, extra=(
            'sasl_user = "parley"; sasl_password_env = "T_SASL"; '
            'register_timeout_s = 10; reconnect_min_ms = 100; '
            'reconnect_max_ms = 1000;')).replace(
                '{ name = "#test"; }',
                '{ name = "#test"; key_env = "T_CHANKEY"; }')
        adapters = block + (', { type = "web"; listen = "127.0.0.1:%d"; '
                            'token_env = "T_WEB"; }' % web_port)
        conf = write_config(t.tmp, stub.base_url, redis.port,
                            adapters=adapters, max_retries=0,
                            extra='metrics = { listen = "127.0.0.1:%d"; };'
                            % metrics_port)
        with_redis_password(conf)
        p = t.add(Parley(["-c", conf], env={
            "TEST_OPENAI_KEY": M_KEY, "T_REDIS_PW": M_REDIS,
            "T_SASL": M_SASL, "T_CHANKEY": M_CHANKEY,
            "T_WEB": M_WEB}).start())

        def sasl(c, ok):
            c.wait(r"^CAP LS 302", 10)
            c.send(":srv CAP * LS :sasl=PLAIN")
            c.wait(r"^CAP REQ :sasl", 5)
            c.send(":srv CAP * ACK :sasl")
            c.wait(r"^AUTHENTICATE PLAIN", 5)
            c.send("AUTHENTICATE +")
            c.wait(r"^AUTHENTICATE \S", 5)
            if not ok:
                c.send(":srv 904 * :SASL authentication failed")
                return
            c.send(":srv 900 parley parley!u@h parley :logged in")
            c.send(":srv 903 parley :SASL authentication successful")
            c.wait(r"^CAP END", 5)
            c.wait(r"^USER ", 5)
            c.send(":srv 001 parley :Welcome")
            c.wait(r"^JOIN #test :?" + M_CHANKEY, 5)
            c.send(":parley!u@h JOIN #test")
            c.send(":srv 353 parley = #test :parley alice")
            c.send(":srv 366 parley #test :End of /NAMES list.")

        # A rejected login first (error path), then a good one.
        sasl(srv.accept(), ok=False)
        c = srv.accept(timeout=15)
        sasl(c, ok=True)
        c.send(":alice!a@h PRIVMSG #test :parley: first question")
        c.wait(r"^PRIVMSG #test :alice: echo: ", 15)
        # The model's error body echoes the key back.
        stub.script([{"status": 401, "when_contains": "leak",
                      "message": "Incorrect API key provided: %s." % M_KEY}])
        n = c.count()
        c.send(":alice!a@h PRIVMSG #test :parley: leak please")
        c.wait(r"^PRIVMSG #test :alice: ", 15, start=n)
        wait_until(lambda: "401" in p.stderr(), 5, "the 401 logged")

        # The web chat: a wrong token, the right one as a form and as a
        # bearer token.
        wait_port(web_port)
        host = "127.0.0.1:%d" % web_port
        import http.client

        def web(method, path, body=None, headers=None):
            h = {"Host": host, "Origin": "http://" + host}
            h.update(headers or {})
            cn = http.client.HTTPConnection("127.0.0.1", web_port,
                                            timeout=10)
            cn.request(method, path, body=body, headers=h)
            r = cn.getresponse()
            data = r.read()
            cn.close()
            return r.status, r.getheaders(), data
        st, _, _ = web("POST", "/login", "token=wrong-" + M_WEB[:6], {
            "Content-Type": "application/x-www-form-urlencoded"})
        assert st in (401, 403), st
        st, hdrs, _ = web("POST", "/login", "token=" + M_WEB, {
            "Content-Type": "application/x-www-form-urlencoded"})
        assert st in (302, 303), st
        for k, v in hdrs:
            assert_clean("a web response header", v)
        jar = "; ".join(v.split(";")[0] for k, v in hdrs
                        if k.lower() == "set-cookie")
        st, _, body = web("POST", "/api/send",
                          '{"text": "hello from the web"}', {
                              "Cookie": jar,
                              "Content-Type": "application/json"})
        assert st == 202, (st, body)
        wait_until(lambda: b"echo:" in web(
            "GET", "/api/history", None, {"Cookie": jar})[2], 15,
            "the web answer")
        st, _, _ = web("GET", "/api/history", None,
                       {"Authorization": "Bearer " + M_WEB})
        assert st == 200, st

        metrics = get("http://127.0.0.1:%d/metrics" % metrics_port)
        health = get("http://127.0.0.1:%d/healthz" % metrics_port)
        assert b"parley_" in metrics, metrics[:300]
        assert_clean("/metrics", metrics)
        assert_clean("/healthz", health)
        check_core_limit(p.proc.pid)

        p.proc.send_signal(15)
        assert p.proc.wait(timeout=20) == 0, p.stderr()[-2000:]
        assert_clean("parley's output", p.stdout() + p.stderr())
        said = [raw for _, raw in c.snapshot()
                if raw.startswith(b"PRIVMSG")]
        assert said, "parley said nothing on IRC"
        assert_clean("IRC messages", b"".join(said))
        n = check_redis(redis)
        print("checked %d Redis keys, %d log lines"
              % (n, len(p.stderr().splitlines())))


def test_matrix_markers():
    from matrix_hs import Homeserver, HS_SCRIPT
    if not os.access(HS_SCRIPT, os.X_OK):
        SKIPPED.append("Synapse absent: the Matrix markers are not checked")
        return
    with Test() as t:
        hs = t.add(Homeserver(t.tmp).start())
        bot = hs.register("markerbot%d" % os.getpid(), M_MXPW)
        alice = hs.register("markeralice%d" % os.getpid(), "pw-alice")
        redis = t.add(AuthRedis(t.tmp).start())
        stub = t.add(Stub(t.tmp, api_key=M_KEY).start())
        metrics_port = free_port()
        block = """{ type = "matrix"; homeserver = "%s"; user_id = "%s";
            password_env = "T_MXPW"; crypto_key_env = "T_CRYPTO";
            allow_invites_from = [ "%s" ];
            sync_timeout_ms = 2000; greet_on_join = false; }""" % (
            hs.url, bot.user_id, alice.user_id)
        conf = write_config(t.tmp, stub.base_url, redis.port,
                            adapters=block, timeout_ms=5000, max_retries=0,
                            extra='metrics = { listen = "127.0.0.1:%d"; };'
                            % metrics_port)
        with_redis_password(conf)
        env = {"TEST_OPENAI_KEY": M_KEY, "T_REDIS_PW": M_REDIS,
               "T_MXPW": M_MXPW, "T_CRYPTO": M_CRYPTO}
        p = t.add(Parley(["-c", conf], env=env).start())
        wait_until(lambda: "syncing" in p.stderr() or
                   p.proc.poll() is not None, 30, "parley to sync")
        assert p.proc.poll() is None, p.stderr()[-3000:]
        room = alice.create_room(invite=[bot.user_id])
        wait_until(lambda: alice.membership(room, bot.user_id) == "join",
                   20, "the bot to join")
        alice.say(room, "hello bot", mentions=[bot.user_id])
        stub.script([{"status": 401, "when_contains": "leak",
                      "message": "Incorrect API key provided: %s." % M_KEY}])
        alice.say(room, "leak please", mentions=[bot.user_id])
        answers = alice.wait_messages_from(room, bot.user_id, 2, 30)
        assert_clean("Matrix answers", repr([e["content"] for e in answers]))
        metrics = get("http://127.0.0.1:%d/metrics" % metrics_port)
        assert_clean("/metrics", metrics)
        assert_clean("/healthz",
                     get("http://127.0.0.1:%d/healthz" % metrics_port))
        check_core_limit(p.proc.pid)
        # A restart logs in again from the stored session: the pickles
        # are read back with the key.
        p.proc.send_signal(15)
        assert p.proc.wait(timeout=20) == 0, p.stderr()[-2000:]
        p2 = t.add(Parley(["-c", conf], env=env).start())
        wait_until(lambda: "syncing" in p2.stderr(), 30, "a second sync")
        p2.proc.send_signal(15)
        assert p2.proc.wait(timeout=20) == 0, p2.stderr()[-2000:]
        assert_clean("parley's output", p.stdout() + p.stderr() +
                     p2.stdout() + p2.stderr())
        n = check_redis(redis)
        print("checked %d Redis keys" % n)


NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def readable_by_nobody(setpriv, pid):
    """Whether a process of user nobody may read /proc/<pid>/environ: the
    kernel allows it for a dumpable process of the same user and refuses
    it (EACCES) for a non-dumpable one (ptrace access mode READ, proc(5))."""
    r = subprocess.run([setpriv] + NOBODY + [
        "/usr/bin/python3", "-c",
        "open('/proc/%d/environ', 'rb').read()" % pid],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    if r.returncode == 0:
        return True
    assert b"PermissionError" in r.stderr, r.stderr[-500:]
    return False


def test_not_dumpable():
    """parley, run as nobody, is not dumpable: another process of nobody
    cannot read its environment or memory (a control process of nobody
    that did not clear the flag can be read, so the check is real), and
    its core size limit is 0."""
    setpriv = shutil.which("setpriv")
    if os.getuid() != 0 or not setpriv:
        SKIPPED.append("not root or no setpriv: the dumpable flag is not "
                       "checked")
        return
    with Test() as t:
        os.chmod(t.tmp, 0o755)
        conf = write_config(t.tmp, "http://127.0.0.1:9/v1", free_port())
        os.chmod(conf, 0o644)
        env = dict(os.environ, TEST_OPENAI_KEY=M_KEY)
        control = spawn([setpriv] + NOBODY + ["/bin/sleep", "60"])
        p = spawn([setpriv] + NOBODY + [PARLEY_BIN, "-c", conf],
                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                  stderr=subprocess.PIPE, env=env)
        try:
            # setpriv execs in place (same pid): wait for the exec, then
            # for main() to get past start-up (its first log line).
            wait_until(lambda: open("/proc/%d/comm" % p.pid).read().strip()
                       == "parley" and open("/proc/%d/comm" % control.pid)
                       .read().strip() == "sleep", 10, "the processes")
            line = p.stderr.readline()
            assert line, "parley wrote nothing and exited"
            assert readable_by_nobody(setpriv, control.pid), \
                "the control process is not readable: the check is void"
            assert not readable_by_nobody(setpriv, p.pid), \
                "parley is dumpable: its memory is readable by its user"
            check_core_limit(p.pid)
        finally:
            stop(p)
            stop(control)


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
    require_parley()
    run_cases_or_skip([test_irc_web_model_redis_markers, test_matrix_markers,
               test_not_dumpable])
