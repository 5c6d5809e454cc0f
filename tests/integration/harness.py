"""Shared pieces for parley's integration tests.

Each test starts the real servers it needs on 127.0.0.1 with ephemeral
ports (redis-server, the OpenAI stand-in openai_stub.py, parley itself)
and stops them on exit, also when an assertion fails: every process is
registered and killed from an atexit hook and from the Test context
manager.  Only the Python standard library is used.
"""

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("PARLEY_SOURCE_DIR",
                            os.path.dirname(os.path.dirname(HERE)))
PARLEY_BIN = os.environ.get("PARLEY_BIN", "")
SKIP = 77

_procs = []


def _kill_all():
    for p in _procs:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass


atexit.register(_kill_all)


def skip(why):
    print("skipped: " + why)
    sys.exit(SKIP)


def require_parley():
    if not PARLEY_BIN or not os.access(PARLEY_BIN, os.X_OK):
        skip("parley binary not built (PARLEY_BIN unset)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("nothing listens on port %d after %.0fs"
                         % (port, timeout))


def wait_until(pred, timeout=10.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def spawn(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    _procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=10):
    if p is None or p.poll() is not None:
        return p.returncode if p else None
    p.send_signal(sig)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


# ---- Redis -----------------------------------------------------------------

def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _resp_read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_resp_read(f) for _ in range(n)]
    raise RuntimeError("bad RESP line %r" % line)


class Redis:
    """A private redis-server on an ephemeral port."""

    def __init__(self, tmp, port=None):
        self.port = port or free_port()
        self.dir = os.path.join(tmp, "redis-%d" % self.port)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None

    def start(self):
        self.proc = spawn(["redis-server", "--port", str(self.port),
                           "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", self.dir],
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self):
        stop(self.proc)
        self.proc = None

    def cmd(self, *args):
        with socket.create_connection(("127.0.0.1", self.port),
                                      timeout=5) as s:
            s.sendall(_resp_encode(args))
            return _resp_read(s.makefile("rb"))


# ---- OpenAI stand-in ---------------------------------------------------------

class Stub:
    """tests/integration/openai_stub.py on an ephemeral port."""

    def __init__(self, tmp, api_key=None, delay=None):
        self.tmp = tmp
        self.api_key = api_key
        self.delay = delay
        self.port = None
        self.proc = None

    def start(self):
        port_file = os.path.join(self.tmp, "stub-%d.port" % id(self))
        argv = ["/usr/bin/python3", os.path.join(HERE, "openai_stub.py"),
                "--port-file", port_file,
                "--log", os.path.join(self.tmp, "stub.log")]
        if self.api_key:
            argv += ["--api-key", self.api_key]
        if self.delay:
            argv += ["--delay", str(self.delay)]
        self.proc = spawn(argv, stdout=subprocess.DEVNULL,
                          stderr=open(os.path.join(self.tmp, "stub.err"),
                                      "ab"))

        def read_port():
            try:
                with open(port_file) as f:
                    return int(f.read().strip() or 0)
            except (OSError, ValueError):
                return 0
        self.port = wait_until(read_port, 10, "the OpenAI stand-in")
        wait_port(self.port)
        return self

    @property
    def base_url(self):
        return "http://127.0.0.1:%d/v1" % self.port

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            "http://127.0.0.1:%d%s" % (self.port, path), data=data,
            method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return json.loads(raw) if raw else None

    def script(self, actions):
        self._call("POST", "/_control/script", actions)

    def requests(self):
        r = self._call("GET", "/_control/requests")
        return r["requests"] if isinstance(r, dict) else r

    def reset(self):
        self._call("POST", "/_control/reset", {})

    def release(self):
        """Let streams held by a "hold_after" action go on."""
        self._call("POST", "/_control/release", {})

    def stop(self):
        stop(self.proc)


# ---- parley ------------------------------------------------------------------

def write_config(tmp, stub_url, redis_port, extra="", llm_extra="",
                 name="bot.conf", adapters='{ type = "console"; }',
                 timeout_ms=3000, max_retries=2, backoff_max_ms=400):
    """A bot.conf for tests: Redis and the stand-in on loopback, short
    timeouts and backoffs, the given adapters (the console by default)."""
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write("""
bot = { name = "parley"; log_level = "debug"; };
redis = { host = "127.0.0.1"; port = %d; prefix = "t:"; };
llm = {
    base_url = "%s";
    model = "test-model";
    allowed_models = [ "test-model", "other-model" ];
    api_key_env = "TEST_OPENAI_KEY";
    connect_timeout_ms = 2000;
    timeout_ms = %d;
    max_retries = %d;
    backoff_base_ms = 50;
    backoff_max_ms = %d;
    %s
};
context = { max_turns = 20; max_tokens = 2000; ttl = 3600; };
limits = { user_requests_per_minute = 0; };
adapters = ( %s );
%s
""" % (redis_port, stub_url, timeout_ms, max_retries, backoff_max_ms,
       llm_extra, adapters, extra))
    return path


class Parley:
    """parley with stdin/stdout pipes; output collected by threads."""

    def __init__(self, args, env=None, tmp=None):
        require_parley()
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.args = args
        self.out = []
        self.err = []
        self.lock = threading.Lock()
        self.proc = None

    def start(self):
        self.proc = spawn([PARLEY_BIN] + self.args, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=self.env)
        for stream, sink in ((self.proc.stdout, self.out),
                             (self.proc.stderr, self.err)):
            t = threading.Thread(target=self._pump, args=(stream, sink),
                                 daemon=True)
            t.start()
        return self

    def _pump(self, stream, sink):
        for line in iter(stream.readline, b""):
            with self.lock:
                sink.append(line.decode("utf-8", "replace"))

    def stdout(self):
        with self.lock:
            return "".join(self.out)

    def stderr(self):
        with self.lock:
            return "".join(self.err)

    def send(self, line):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def replies(self):
        return [l[len("parley> "):].rstrip("\n")
                for l in self.stdout().splitlines(True)
                if l.startswith("parley> ")]

    def wait_replies(self, n, timeout=15):
        return wait_until(lambda: len(self.replies()) >= n and
                          self.replies(), timeout,
                          "%d replies; stdout=%r stderr tail=%r"
                          % (n, self.stdout()[-500:], self.stderr()[-1500:]))

    def ask(self, line, timeout=15):
        n = len(self.replies())
        self.send(line)
        return self.wait_replies(n + 1, timeout)[n]

    def close(self, timeout=20):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("parley did not exit after EOF; stderr=%r"
                                 % self.stderr()[-2000:])

    def kill(self):
        stop(self.proc, signal.SIGKILL)


class Test:
    """A temp dir plus the processes of one test, cleaned up on exit."""

    def __enter__(self):
        self.tmp = tempfile.mkdtemp(prefix="parley-test-")
        self.stoppers = []
        return self

    def add(self, thing):
        self.stoppers.append(thing)
        return thing

    def __exit__(self, *exc):
        for t in reversed(self.stoppers):
            try:
                if isinstance(t, Parley):
                    t.kill()
                else:
                    t.stop()
            except Exception:
                pass
        if exc[0] is None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print("test files kept in " + self.tmp)
        return False


def run_cases(cases):
    """Run test functions, print a summary line, exit non-zero on failure."""
    failed = 0
    for fn in cases:
        t0 = time.time()
        try:
            fn()
            print("ok   %s (%.1fs)" % (fn.__name__, time.time() - t0))
        except Exception as e:  # report and go on with the next case
            failed += 1
            print("FAIL %s: %s: %s" % (fn.__name__, type(e).__name__, e))
            import traceback
            traceback.print_exc()
        sys.stdout.flush()
    print("%d passed, %d failed" % (len(cases) - failed, failed))
    sys.exit(1 if failed else 0)


def messages_of(request):
    return request["body"]["messages"]


def contains(pattern, text):
    return re.search(pattern, text) is not None
