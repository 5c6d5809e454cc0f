"""Redis behind Sentinel: parley finds the master through the sentinels
(skipping one that is down), follows `SENTINEL failover` to the new master
with the conversation's history intact and every message answered exactly
once, and, with every sentinel down, says so once, keeps retrying and
recovers when they are back.

Real servers from Debian on 127.0.0.1 ephemeral ports: two redis-server
(master and replica) and three sentinels (redis-sentinel, or
`redis-server --sentinel`, which is the same program).
"""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, free_port, run_cases, skip,
                     spawn, wait_port, wait_until, write_config)

KEY = "sk-test-secret-key-0123456789abcdef"
ROOM = "t:ctx:console:parley:console"
NAME = "pmaster"


def sentinel_argv(conf):
    if shutil.which("redis-sentinel"):
        return ["redis-sentinel", conf]
    if shutil.which("redis-server"):
        return ["redis-server", conf, "--sentinel"]
    skip("neither redis-sentinel nor redis-server is installed "
         "(apt-get install redis-sentinel)")


class Replica(Redis):
    """A redis-server replicating from a master port."""

    def __init__(self, tmp, master_port):
        super().__init__(tmp)
        self.master_port = master_port

    def start(self):
        self.proc = spawn(["redis-server", "--port", str(self.port),
                           "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", self.dir,
                           "--replicaof", "127.0.0.1",
                           str(self.master_port)],
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self


class Sentinel(Redis):
    """A sentinel monitoring NAME at master_port, quick to decide."""

    def __init__(self, tmp, master_port, port=None):
        super().__init__(tmp, port)
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:
            f.write("port %d\nbind 127.0.0.1\ndir %s\n"
                    "sentinel monitor %s 127.0.0.1 %d 2\n"
                    "sentinel down-after-milliseconds %s 2000\n"
                    "sentinel failover-timeout %s 10000\n"
                    "sentinel parallel-syncs %s 1\n"
                    % (self.port, self.dir, NAME, master_port, NAME, NAME,
                       NAME))

    def start(self):
        # The sentinel rewrites its file; a restart reads what it learnt.
        self.proc = spawn(sentinel_argv(self.conf),
                          stdout=subprocess.DEVNULL,
                          stderr=open(os.path.join(self.dir, "log"), "ab"))
        wait_port(self.port)
        return self

    def master(self):
        r = self.cmd("SENTINEL", "get-master-addr-by-name", NAME)
        return (r[0], int(r[1])) if r else None


def sentinel_config(t, stub, sentinels, extra_ports=(), extra=""):
    """A bot.conf whose redis block names sentinels instead of a host."""
    path = write_config(t.tmp, stub.base_url, 1, extra=extra)
    addrs = ["127.0.0.1:%d" % p for p in extra_ports]
    addrs += ["127.0.0.1:%d" % s.port for s in sentinels]
    with open(path) as f:
        text = f.read()
    text = text.replace(
        'redis = { host = "127.0.0.1"; port = 1; prefix = "t:"; };',
        'redis = { sentinels = [ %s ]; master_name = "%s"; prefix = "t:"; };'
        % (", ".join('"%s"' % a for a in addrs), NAME))
    assert "sentinels" in text, text
    with open(path, "w") as f:
        f.write(text)
    return path


def replica_known(sentinels, replica_port):
    """Every sentinel lists the replica as up: a failover can pick it."""
    for s in sentinels:
        found = False
        for entry in s.cmd("SENTINEL", "replicas", NAME) or []:
            fields = dict(zip(entry[::2], entry[1::2]))
            if (int(fields.get("port", 0)) == replica_port and
                    "disconnected" not in fields.get("flags", "") and
                    "s_down" not in fields.get("flags", "") and
                    fields.get("master-link-status") == "ok"):
                found = True
        if not found:
            return False
    return True


def test_follows_failover():
    with Test() as t:
        master = t.add(Redis(t.tmp).start())
        replica = t.add(Replica(t.tmp, master.port).start())
        wait_until(lambda: "master_link_status:up" in
                   replica.cmd("INFO", "replication"), 15,
                   "the replica to sync")
        sentinels = [t.add(Sentinel(t.tmp, master.port).start())
                     for _ in range(3)]
        wait_until(lambda: replica_known(sentinels, replica.port), 30,
                   "the sentinels to find the replica")
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        # The first sentinel listed is down: it must be skipped.
        dead = free_port()
        metrics_port = free_port()
        conf = sentinel_config(t, stub, sentinels, extra_ports=[dead],
                               extra='metrics = { listen = "127.0.0.1:%d"; };'
                               % metrics_port)
        p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY,
                                            "USER": "carol"}).start())
        wait_until(lambda: "(master %s) connected" % NAME in p.stderr(), 15,
                   "parley to reach the master through the sentinels")
        assert "127.0.0.1:%d (master %s)" % (master.port, NAME) \
            in p.stderr(), p.stderr()[-2000:]
        assert p.ask("one") == "echo: carol: one"
        wait_until(lambda: master.cmd("LLEN", ROOM) == 2, 5,
                   "history on the master")

        sentinels[1].cmd("SENTINEL", "failover", NAME)
        # A message during the switch is still answered (at worst without
        # stored history, as in any Redis outage).
        p.send("during")
        wait_until(lambda: sentinels[0].master() ==
                   ("127.0.0.1", replica.port), 30,
                   "the sentinels to promote the replica")
        wait_until(lambda: "127.0.0.1:%d (master %s)" % (replica.port, NAME)
                   in p.stderr() and
                   ("reachable again" in p.stderr() or
                    p.stderr().count("connected (db") >= 2), 30,
                   "parley to follow the failover; stderr=%r"
                   % p.stderr()[-3000:])
        assert p.ask("three") == "echo: carol: three"
        # /metrics counts the followed failover (the up gauge is sampled
        # on a timer, so it is polled).
        def metrics():
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics"
                                        % metrics_port, timeout=5) as r:
                return r.read().decode()
        wait_until(lambda: "parley_redis_up 1\n" in metrics(), 10,
                   "the redis gauge to say up")
        assert "parley_redis_failovers_total 1\n" in metrics(), metrics()
        wait_until(lambda: replica.cmd("LLEN", ROOM) >= 4, 5,
                   "history stored on the new master")
        # The history from before the failover reached the model.
        last = stub.requests()[-1]["body"]["messages"]
        contents = [m["content"] for m in last]
        assert "carol: one" in contents, contents
        # Every message answered exactly once.
        replies = p.replies()
        for text in ("one", "during", "three"):
            assert replies.count("echo: carol: " + text) == 1, replies
        assert len(replies) == 3, replies
        assert p.close() == 0
        err = p.stderr()
        if os.environ.get("SHOW"):
            print(err)
        assert KEY not in err
        assert "moved" in err or "READONLY" in err or "unreachable" in err, \
            err[-3000:]


def test_master_killed():
    """The master dies (SIGKILL): the sentinels agree it is down and
    promote the replica; parley, refused by the dead address meanwhile,
    follows and keeps the history that reached the replica."""
    with Test() as t:
        master = t.add(Redis(t.tmp).start())
        replica = t.add(Replica(t.tmp, master.port).start())
        wait_until(lambda: "master_link_status:up" in
                   replica.cmd("INFO", "replication"), 15,
                   "the replica to sync")
        sentinels = [t.add(Sentinel(t.tmp, master.port).start())
                     for _ in range(3)]
        wait_until(lambda: replica_known(sentinels, replica.port), 30,
                   "the sentinels to find the replica")
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        conf = sentinel_config(t, stub, sentinels)
        p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY,
                                            "USER": "fay"}).start())
        assert p.ask("first", timeout=30) == "echo: fay: first"
        wait_until(lambda: replica.cmd("LLEN", ROOM) == 2, 10,
                   "history replicated")
        master.proc.kill()
        master.proc.wait()
        # Answered while no master is reachable (without history).
        assert p.ask("meanwhile", timeout=30) == "echo: fay: meanwhile"
        wait_until(lambda: sentinels[0].master() ==
                   ("127.0.0.1", replica.port), 60,
                   "the sentinels to promote the replica")
        wait_until(lambda: "127.0.0.1:%d (master %s) reachable again"
                   % (replica.port, NAME) in p.stderr(), 30,
                   "parley to follow; stderr=%r" % p.stderr()[-3000:])
        assert p.ask("after") == "echo: fay: after"
        last = stub.requests()[-1]["body"]["messages"]
        assert "fay: first" in [m["content"] for m in last], last
        replies = p.replies()
        assert replies == ["echo: fay: first", "echo: fay: meanwhile",
                           "echo: fay: after"], replies
        assert p.close() == 0
        assert p.stderr().count("WARN redis") == 1, p.stderr()[-3000:]


def test_all_sentinels_down():
    with Test() as t:
        master = t.add(Redis(t.tmp).start())
        sentinels = [Sentinel(t.tmp, master.port) for _ in range(2)]
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        # Sentinel mode from the environment (as docker-compose sets it)
        # over a file that names a fixed address.
        conf = write_config(t.tmp, stub.base_url, master.port)
        env = "sentinel:%s@%s" % (NAME, ",".join("127.0.0.1:%d" % s.port
                                                  for s in sentinels))
        p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY,
                                            "PARLEY_REDIS": env,
                                            "USER": "dave"}).start())
        wait_until(lambda: "no sentinel gave the address of master %s"
                   % NAME in p.stderr(), 15, "a clear log line")
        # Without Redis parley still answers (no history).
        assert p.ask("alone", timeout=30) == "echo: dave: alone"
        for s in sentinels:
            t.add(s.start())
        wait_until(lambda: "reachable again" in p.stderr(), 20,
                   "parley to recover when the sentinels are back; "
                   "stderr=%r" % p.stderr()[-2000:])
        assert p.ask("back") == "echo: dave: back"
        wait_until(lambda: master.cmd("LLEN", ROOM) == 2, 5,
                   "history stored once the master is found")
        assert p.close() == 0
        if os.environ.get("SHOW"):
            print(p.stderr())
        # The outage is logged once at WARN, not once per attempt.
        assert p.stderr().count("WARN redis") == 1, p.stderr()[-3000:]


class FakeSentinel:
    """A stand-in sentinel that names whatever address the test sets (a
    real one will not lie on demand), wants a password, and records the
    commands it gets.  Speaks just enough RESP for parley."""

    def __init__(self, answer, password):
        self.answer = answer
        self.password = password
        self.commands = []
        self.subscribers = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False

    def start(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self):
        self.closed = True
        self.sock.close()

    def publish_switch(self, old, new):
        """What a sentinel publishes when a failover completed."""
        text = "%s %s %d %s %d" % (NAME, old[0], old[1], new[0], new[1])
        msg = (b"*3\r\n" + self._bulk("message") +
               self._bulk("+switch-master") + self._bulk(text))
        with self.lock:
            subs = list(self.subscribers)
        for conn in subs:
            conn.sendall(msg)
        return len(subs)

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    @staticmethod
    def _bulk(s):
        b = s.encode()
        return b"$%d\r\n%s\r\n" % (len(b), b)

    def _serve(self, conn):
        f = conn.makefile("rb")
        authed = False
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                n = int(line[1:-2])
                args = []
                for _ in range(n):
                    size = int(f.readline()[1:-2])
                    args.append(f.read(size + 2)[:-2].decode())
                with self.lock:
                    self.commands.append(args)
                cmd = args[0].upper()
                if cmd == "AUTH":
                    authed = args[1] == self.password
                    conn.sendall(b"+OK\r\n" if authed else
                                 b"-WRONGPASS invalid password\r\n")
                elif not authed:
                    conn.sendall(b"-NOAUTH Authentication required.\r\n")
                elif cmd == "SENTINEL":
                    host, port = self.answer
                    conn.sendall(b"*2\r\n" + self._bulk(host) +
                                 self._bulk(str(port)))
                elif cmd == "SUBSCRIBE":
                    conn.sendall(b"*3\r\n" + self._bulk("subscribe") +
                                 self._bulk(args[1]) + b":1\r\n")
                    with self.lock:
                        self.subscribers.append(conn)
                else:
                    conn.sendall(b"-ERR unknown command\r\n")
        except (OSError, ValueError):
            return
        finally:
            conn.close()


def test_stale_answer_and_demoted_master():
    with Test() as t:
        a = t.add(Redis(t.tmp).start())
        b = t.add(Replica(t.tmp, a.port).start())
        wait_until(lambda: "master_link_status:up" in
                   b.cmd("INFO", "replication"), 15, "the replica to sync")
        pw = "sentinel-pw-0123456789"
        fake = t.add(FakeSentinel(("127.0.0.1", b.port), pw).start())
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        conf = sentinel_config(t, stub, [fake])
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write(text.replace('master_name = "%s";' % NAME,
                                 'master_name = "%s"; sentinel_password_env '
                                 '= "TEST_SENTINEL_PW";' % NAME))
        p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY,
                                            "TEST_SENTINEL_PW": pw,
                                            "USER": "erin"}).start())
        # A stale answer (a replica) is refused after ROLE.
        wait_until(lambda: "127.0.0.1:%d is a slave, not the master"
                   % b.port in p.stderr(), 15,
                   "parley to check ROLE; stderr=%r" % p.stderr()[-2000:])
        fake.answer = ("127.0.0.1", a.port)
        wait_until(lambda: "127.0.0.1:%d (master %s) reachable again"
                   % (a.port, NAME) in p.stderr(), 15,
                   "parley to take the corrected answer")
        assert p.ask("one") == "echo: erin: one"
        wait_until(lambda: a.cmd("LLEN", ROOM) == 2, 5, "history on a")
        wait_until(lambda: b.cmd("LLEN", ROOM) == 2, 5, "history on b")
        # Swap roles behind parley's back, without a +switch-master: its
        # next write meets READONLY (or a dropped connection) and it asks
        # the sentinel again.
        b.cmd("REPLICAOF", "NO", "ONE")
        a.cmd("REPLICAOF", "127.0.0.1", b.port)
        fake.answer = ("127.0.0.1", b.port)
        assert p.ask("two") == "echo: erin: two"
        wait_until(lambda: "127.0.0.1:%d (master %s) reachable again"
                   % (b.port, NAME) in p.stderr(), 15,
                   "parley to move to b; stderr=%r" % p.stderr()[-3000:])
        assert p.ask("three") == "echo: erin: three"
        last = stub.requests()[-1]["body"]["messages"]
        assert "erin: one" in [m["content"] for m in last], last
        wait_until(lambda: b.cmd("LLEN", ROOM) >= 4, 5, "history on b")
        replies = p.replies()
        assert replies == ["echo: erin: one", "echo: erin: two",
                           "echo: erin: three"], replies
        assert p.close() == 0
        err = p.stderr()
        if os.environ.get("SHOW"):
            print(err)
        # The sentinel got the password; no log line shows it.
        assert ["AUTH", pw] in fake.commands, fake.commands
        assert pw not in err and KEY not in err


def test_switch_master_message():
    """+switch-master alone moves parley: the sentinel's query answer
    still names the old master, which keeps running as a master, so only
    the message can send parley to the new one."""
    with Test() as t:
        a = t.add(Redis(t.tmp).start())
        b = t.add(Redis(t.tmp).start())
        fake = t.add(FakeSentinel(("127.0.0.1", a.port), "pw-0001").start())
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        conf = sentinel_config(t, stub, [fake])
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write(text.replace('master_name = "%s";' % NAME,
                                 'master_name = "%s"; sentinel_password_env '
                                 '= "TEST_SENTINEL_PW";' % NAME))
        p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY,
                                            "TEST_SENTINEL_PW": "pw-0001",
                                            "USER": "gil"}).start())
        assert p.ask("one") == "echo: gil: one"
        wait_until(lambda: a.cmd("LLEN", ROOM) == 2, 5, "history on a")
        wait_until(lambda: fake.subscribers, 10, "parley to subscribe")
        # Another master's name is ignored.
        with fake.lock:
            subs = list(fake.subscribers)
        other = ("other 127.0.0.1 1 127.0.0.1 %d" % b.port).encode()
        for conn in subs:
            conn.sendall(b"*3\r\n" + fake._bulk("message") +
                         fake._bulk("+switch-master") + b"$%d\r\n%s\r\n"
                         % (len(other), other))
        fake.publish_switch(("127.0.0.1", a.port), ("127.0.0.1", b.port))
        wait_until(lambda: "127.0.0.1:%d (master %s) reachable again"
                   % (b.port, NAME) in p.stderr(), 15,
                   "parley to follow +switch-master; stderr=%r"
                   % p.stderr()[-3000:])
        assert "master %s moved from 127.0.0.1:%d to 127.0.0.1:%d" \
            % (NAME, a.port, b.port) in p.stderr()
        assert "master other" not in p.stderr()
        assert p.ask("two") == "echo: gil: two"
        wait_until(lambda: b.cmd("LLEN", ROOM) == 2, 5, "history on b")
        assert a.cmd("LLEN", ROOM) == 2
        assert p.replies() == ["echo: gil: one", "echo: gil: two"]
        assert p.close() == 0


def test_config_errors():
    with Test() as t:
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        path = write_config(t.tmp, stub.base_url, 6379)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace(
                'prefix = "t:"; };',
                'prefix = "t:"; sentinels = [ "nohost", "h:99999" ]; };'))
        Parley([])  # skips when parley is not built
        from harness import PARLEY_BIN
        r = subprocess.run([PARLEY_BIN, "-c", path, "--check-config"],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, TEST_OPENAI_KEY=KEY))
        assert r.returncode == 78, (r.returncode, r.stderr)
        assert "redis.sentinels[0]" in r.stderr or "HOST:PORT" in r.stderr, \
            r.stderr
        assert "port from 1 to 65535" in r.stderr, r.stderr
        assert "needs redis.master_name" in r.stderr, r.stderr
        assert "redis.host" in r.stderr and "cannot be combined" \
            in r.stderr, r.stderr


if __name__ == "__main__":
    run_cases([test_follows_failover, test_master_killed,
               test_all_sentinels_down,
               test_stale_answer_and_demoted_master,
               test_switch_master_message, test_config_errors])
