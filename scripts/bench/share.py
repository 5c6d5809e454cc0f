#!/usr/bin/python3
"""Shared work (ha.share_work): answers per second for 1, 2 and 3 parley
instances on one Redis when the model is the limit.

One instance (the owner) serves the web chat; the others have only an
idle loopback adapter and work.  Each instance may ask the model
MAX_CONCURRENT at a time and the model (openai_uv) takes DELAY_MS per
answer, so one instance tops out near MAX_CONCURRENT * 1000 / DELAY_MS
answers per second; N instances should come close to N times that.
QUESTIONS browser sessions (one room each) ask one question at once;
the figure is questions / (last answer - first question).  Numbers, not
assertions.  Started by share.sh, which builds the binaries."""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("share: nothing listens on %d" % port)


def spawn(argv, log, env=None):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL,
                         stderr=open(log, "ab"), env=env)
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def redis_cmd(port, *args):
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        return s.recv(4096)


def config(tmp, name, redis_port, stub_port, adapters, max_concurrent):
    path = os.path.join(tmp, name + ".conf")
    with open(path, "w") as f:
        f.write("""
bot = { name = "parley"; log_level = "warn"; };
redis = { host = "127.0.0.1"; port = %d; prefix = "bench:"; };
llm = { base_url = "http://127.0.0.1:%d/v1"; model = "bench";
        api_key_env = "BENCH_KEY"; max_concurrent = %d; max_retries = 0;
        timeout_ms = 60000; };
limits = { user_requests_per_minute = 0; };
ha = { share_work = true; };
adapters = ( %s );
""" % (redis_port, stub_port, max_concurrent, adapters))
    return path


class Session:
    """One browser: a cookie (so a room) and its event stream."""

    def __init__(self, port):
        self.port = port
        self.host = "127.0.0.1:%d" % port
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/", headers={"Host": self.host})
        r = c.getresponse()
        r.read()
        self.cookie = r.getheader("Set-Cookie").split(";")[0]
        c.close()
        self.done = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(("GET /api/events HTTP/1.1\r\nHost: %s\r\n"
                           "Cookie: %s\r\nAccept: text/event-stream\r\n\r\n"
                           % (self.host, self.cookie)).encode())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while not self.done.is_set():
            data = self.sock.recv(65536)
            if not data:
                return
            buf += data
            if b"event: reply" in buf:
                self.done.set()

    def ask(self, text):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("POST", "/api/send", body=json.dumps({"text": text}),
                  headers={"Host": self.host, "Cookie": self.cookie,
                           "Origin": "http://" + self.host,
                           "Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        c.close()
        if r.status != 202:
            raise SystemExit("share: send answered %d" % r.status)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def run(args, tmp, redis_port, stub_port, n):
    redis_cmd(redis_port, "FLUSHALL")
    web = free_port()
    procs = []
    env = dict(os.environ, BENCH_KEY="bench")
    adapters = ('{ type = "web"; listen = "127.0.0.1:%d"; stream = false; '
                'max_connections = 1024; max_per_ip = 1024; }' % web)
    conf = config(tmp, "owner", redis_port, stub_port, adapters,
                  args.max_concurrent)
    procs.append(spawn([args.parley, "-c", conf],
                       os.path.join(tmp, "owner.log"), env))
    for i in range(1, n):
        conf = config(tmp, "worker%d" % i, redis_port, stub_port,
                      '{ type = "loopback"; name = "idle"; }',
                      args.max_concurrent)
        procs.append(spawn([args.parley, "-c", conf],
                           os.path.join(tmp, "worker%d.log" % i), env))
    wait_port(web)
    time.sleep(1.0)             # every instance made its groups
    sessions = [Session(web) for _ in range(args.questions)]
    time.sleep(0.5)
    t0 = time.monotonic()
    senders = [threading.Thread(target=s.ask, args=("bq%d" % i,))
               for i, s in enumerate(sessions)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    for s in sessions:
        if not s.done.wait(120):
            raise SystemExit("share: an answer did not come")
    elapsed = time.monotonic() - t0
    for s in sessions:
        s.close()
    for p in procs:
        stop(p)
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--questions", type=int, default=60)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--delay-ms", type=int, default=200)
    ap.add_argument("--instances", default="1,2,3")
    args = ap.parse_args()
    args.parley = os.path.join(args.build, "parley")
    stub_bin = os.path.join(args.build, "openai_uv")
    tmp = tempfile.mkdtemp(prefix="parley-share-")
    try:
        redis_port = free_port()
        spawn(["redis-server", "--port", str(redis_port), "--bind",
               "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
               tmp], os.path.join(tmp, "redis.log"))
        wait_port(redis_port)
        port_file = os.path.join(tmp, "stub.port")
        spawn([stub_bin, port_file, str(args.delay_ms)],
              os.path.join(tmp, "stub.log"))
        end = time.time() + 10
        while time.time() < end and not (os.path.exists(port_file) and
                                         open(port_file).read().strip()):
            time.sleep(0.05)
        stub_port = int(open(port_file).read())
        wait_port(stub_port)
        ceiling = args.max_concurrent * 1000.0 / args.delay_ms
        print("shared work: %d questions from %d rooms at once, model %d "
              "ms, llm.max_concurrent %d per instance (one instance's "
              "ceiling %.1f answers/s); redis-server %s, openai_uv"
              % (args.questions, args.questions, args.delay_ms,
                 args.max_concurrent, ceiling,
                 subprocess.run(["redis-server", "--version"],
                                capture_output=True, text=True)
                 .stdout.split()[2].replace("v=", "")))
        base = None
        for n in [int(x) for x in args.instances.split(",")]:
            elapsed = run(args, tmp, redis_port, stub_port, n)
            rate = args.questions / elapsed
            base = base or rate
            print("instances %d: %.2f s, %.1f answers/s (%.2fx one "
                  "instance, ceiling %.1f)" % (n, elapsed, rate, rate / base,
                                              n * ceiling))
            sys.stdout.flush()
    finally:
        for p in reversed(PROCS):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
