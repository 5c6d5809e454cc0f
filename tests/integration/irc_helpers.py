"""IRC pieces for parley's integration tests: a private ngircd (plain and
TLS, with a test CA made by openssl), raw-socket IRC clients that play the
people in a channel, a scripted server for SASL numerics, a bot.conf with
an irc adapter block, and the SIGTERM-then-QUIT check.  Everything
listens on 127.0.0.1 with ephemeral ports and is stopped by harness.Test,
also when a test fails.
"""

import base64
import os
import re
import signal
import socket
import subprocess
import threading
import time

from harness import (free_port, spawn, stop, wait_port, wait_until,
                     write_config)

NGIRCD = "/usr/sbin/ngircd"


def have_ngircd():
    return os.access(NGIRCD, os.X_OK)


class Ngircd:
    """ngircd with its config in tmp; restartable on the same ports."""

    def __init__(self, tmp, tls=False):
        self.dir = os.path.join(tmp, "ngircd-%d" % id(self))
        os.makedirs(self.dir)
        # ngircd drops to "nobody" and must still read its files.
        os.chmod(tmp, 0o755)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        self.proc = None
        if tls:
            make_certs(self.dir)
        # MaxPenaltyTime = 0 lifts ngircd's own input pacing (3 commands
        # or 256 bytes a second per client; adapters/irc/README.md "Flood
        # control"), so the bot's lines arrive at the bot's pace and many
        # people can speak at once; MaxConnectionsIP = 0 lets more than 5
        # test clients connect from 127.0.0.1.
        conf = ("[Global]\nName = irc.test\nInfo = parley test\n"
                "Listen = 127.0.0.1\nPorts = %d\nMotdPhrase = hi\n"
                "[Limits]\nPingTimeout = 120\nPongTimeout = 20\n"
                "MaxNickLength = 30\nMaxPenaltyTime = 0\n"
                "MaxConnectionsIP = 0\n"
                "[Options]\nIdent = no\nPAM = no\nDNS = no\n" % self.port)
        if tls:
            conf += ("[SSL]\nPorts = %d\nCertFile = %s/server.pem\n"
                     "KeyFile = %s/server.key\n"
                     % (self.tls_port, self.dir, self.dir))
        self.conf = os.path.join(self.dir, "ngircd.conf")
        with open(self.conf, "w") as f:
            f.write(conf)

    def start(self):
        self.proc = spawn([NGIRCD, "-n", "-f", self.conf],
                          stdout=open(os.path.join(self.dir, "log"), "ab"),
                          stderr=subprocess.STDOUT)
        wait_port(self.port)
        if self.tls_port:
            wait_port(self.tls_port)
        return self

    def stop(self):
        stop(self.proc)
        self.proc = None


def make_certs(d):
    """A test CA, a server certificate for IP 127.0.0.1 signed by it, and
    an unrelated CA (for the wrong-CA case)."""
    def run(*argv):
        subprocess.run(argv, cwd=d, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
        "-days", "2", "-subj", "/CN=parley test CA", "-keyout", "ca.key",
        "-out", "ca.pem")
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
        "-days", "2", "-subj", "/CN=other CA", "-keyout", "other.key",
        "-out", "other.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj",
        "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem",
        "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile",
        "ext.cnf", "-out", "server.pem")
    os.chmod(os.path.join(d, "server.key"), 0o644)


class Client:
    """One person on IRC: a raw socket, every received line recorded as
    (arrival time, raw bytes without CRLF)."""

    def __init__(self, port, nick, register=True):
        self.nick = nick
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        # The timeout is for the connect only: a reader that timed out
        # after 5 quiet seconds would stop recording for good.
        self.sock.settimeout(None)
        self.lines = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()
        if register:
            self.send("NICK " + nick)
            self.send("USER %s 0 * :%s" % (nick, nick))
            self.wait(r" 001 ", 10)

    def _read(self):
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            buf += data
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw[:-1] if raw.endswith(b"\r") else raw
                if line.startswith(b"PING "):
                    self.send_raw(b"PONG " + line[5:] + b"\r\n")
                with self.lock:
                    self.lines.append((time.time(), raw + b"\n"))

    def send_raw(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def send(self, line):
        if isinstance(line, str):
            line = line.encode()
        self.send_raw(line + b"\r\n")

    def say(self, target, text):
        self.send(b"PRIVMSG " + target.encode() + b" :" +
                  (text.encode() if isinstance(text, str) else text))

    def join(self, chan):
        n = self.count()
        self.send("JOIN " + chan)
        self.wait(r" 366 %s %s " % (re.escape(self.nick), re.escape(chan)),
                  10, start=n)

    def count(self):
        with self.lock:
            return len(self.lines)

    def snapshot(self, start=0):
        with self.lock:
            return list(self.lines[start:])

    def find(self, pattern, start=0):
        rx = re.compile(pattern.encode() if isinstance(pattern, str)
                        else pattern)
        for i, (_, raw) in enumerate(self.snapshot(start)):
            if rx.search(raw):
                return start + i
        return -1

    def wait(self, pattern, timeout=10, start=0):
        def found():
            i = self.find(pattern, start)
            return i + 1 if i >= 0 else 0
        try:
            return wait_until(found, timeout, "line %r" % pattern) - 1
        except AssertionError:
            tail = b"".join(r for _, r in self.snapshot()[-15:])
            raise AssertionError("%s never saw %r; last lines:\n%s"
                                 % (self.nick, pattern,
                                    tail.decode("utf-8", "replace")))

    def privmsgs(self, sender, target, start=0):
        """(time, raw line, text) of PRIVMSGs from sender to target."""
        out = []
        prefix = (":%s!" % sender).encode()
        mid = (" PRIVMSG %s :" % target).encode()
        for t, raw in self.snapshot(start):
            if raw.startswith(prefix) and mid in raw:
                text = raw.split(mid, 1)[1].rstrip(b"\r\n")
                out.append((t, raw, text))
        return out

    def stop(self):
        try:
            self.send("QUIT :bye")
            self.sock.close()
        except OSError:
            pass


# Test pacing is faster than the defaults (burst 5, 1 line/s) to keep the
# tests short; ngircd's own limit is lifted (Ngircd above).  greet_on_join
# is a key common to every adapter block (the router's greeting policy).
DEFAULTS = [("max_lines", "4"), ("flood_burst", "4"),
            ("flood_rate_ms", "200"), ("rejoin_delay_ms", "300"),
            ("ping_interval_s", "2"), ("nick_regain_s", "2"),
            ("reconnect_min_ms", "200"), ("reconnect_max_ms", "1000"),
            ("greet_on_join", "false")]


def irc_block(port, channels=("#test",), nick="parley", extra=""):
    """An irc adapter block; keys set in extra replace the defaults.  The
    short ping interval also nudges ngircd, which sometimes leaves a
    penalised client's queued command (a JOIN right after registration)
    unprocessed until that client sends something else."""
    chans = ", ".join('{ name = "%s"; }' % c for c in channels)
    given = set(re.findall(r"(\w+)\s*=", extra))
    defaults = " ".join("%s = %s;" % kv for kv in DEFAULTS
                        if kv[0] not in given)
    return """{ type = "irc"; name = "testnet"; host = "127.0.0.1";
        port = %d; tls = false; nick = "%s"; alt_nicks = ["%s_"];
        channels = ( %s ); %s %s }""" % (port, nick, nick, chans, defaults,
                                          extra)


def write_irc_config(tmp, stub_url, redis_port, block, name="bot.conf"):
    """bot.conf with the given irc adapter block and no console (which
    would read the test's stdin)."""
    return write_config(tmp, stub_url, redis_port, name=name, adapters=block,
                        timeout_ms=5000, max_retries=1, backoff_max_ms=200)


def quit_lines(client, start=0):
    """QUIT lines of the bot that client saw, as text."""
    return [raw.decode("utf-8", "replace").rstrip("\r\n")
            for _, raw in client.snapshot(start)
            if re.match(rb"^:parley!\S+ QUIT", raw)]


def sigterm_and_check_quit(p, client, message, start=0):
    """SIGTERM parley; it exits 0 and client sees exactly one QUIT from
    it, with message as the reason (ngircd quotes a client's own reason,
    a dropped link would read "Connection closed"/"Ping timeout").
    Returns the index of the QUIT line in client's lines."""
    t0 = time.time()
    p.proc.send_signal(signal.SIGTERM)
    code = p.proc.wait(timeout=20)
    took = time.time() - t0
    assert code == 0, (code, p.stderr()[-2000:])
    i = client.wait(r"^:parley!\S+ QUIT ", 5, start)
    quits = quit_lines(client, start)
    assert len(quits) == 1, quits
    assert re.search(r' QUIT :"?%s"?$' % re.escape(message), quits[0]), \
        quits[0]
    err = p.stderr()
    assert "disconnected after QUIT" in err, err[-2000:]
    assert "did not close the connection" not in err, err[-2000:]
    return i, took


class ScriptedServer:
    """A listening socket that plays a server by hand (for SASL numerics
    no Debian daemon here produces without services)."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.conns = []

    def accept(self, timeout=10):
        self.lsock.settimeout(timeout)
        s, _ = self.lsock.accept()
        c = Client.__new__(Client)
        c.nick = "server"
        c.sock = s
        c.lines = []
        c.lock = threading.Lock()
        c.closed = False
        threading.Thread(target=c._read, daemon=True).start()
        self.conns.append(c)
        return c

    def stop(self):
        for c in self.conns:
            try:
                c.sock.close()
            except OSError:
                pass
        self.lsock.close()


def sasl_plain(user, password):
    return base64.b64encode(b"\0" + user.encode() + b"\0" +
                            password.encode()).decode()


INSPIRCD = "/usr/sbin/inspircd"
ATHEME = "/usr/bin/atheme-services"


def have_services():
    return os.access(INSPIRCD, os.X_OK) and os.access(ATHEME, os.X_OK)


class Services:
    """inspircd with atheme linked as services (NickServ, SaslServ): a
    real SASL PLAIN setup on ephemeral ports."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "services-%d" % id(self))
        os.makedirs(os.path.join(self.dir, "data"))
        self.port = free_port()
        self.link_port = free_port()
        self.ircd = self.atheme = None
        d = self.dir
        with open(os.path.join(d, "inspircd.conf"), "w") as f:
            f.write("""<server name="irc.test" description="parley test"
 network="TestNet">
<admin name="test" nick="test" email="test@example.invalid">
<bind address="127.0.0.1" port="%(port)d" type="clients">
<bind address="127.0.0.1" port="%(link)d" type="servers">
<connect name="main" allow="*" timeout="60" pingfreq="120"
 sendq="262144" recvq="8192" localmax="100" globalmax="100"
 threshold="1000" commandrate="100000" fakelag="no" useident="no">
<module name="spanningtree">
<module name="sasl">
<module name="cap">
<module name="services_account">
<module name="ircv3">
<link name="services.int" ipaddr="127.0.0.1" port="%(link)d"
 allowmask="127.0.0.1" sendpass="linkpw" recvpass="linkpw">
<uline server="services.int" silent="yes">
<sasl target="services.int">
<pid file="%(d)s/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default"
 target="%(d)s/ircd.log">
<performance clonesonconnect="no" nouserdns="yes">
""" % {"port": self.port, "link": self.link_port, "d": d})
        with open(os.path.join(d, "atheme.conf"), "w") as f:
            f.write("""loadmodule "modules/protocol/inspircd";
loadmodule "modules/backend/opensex";
loadmodule "modules/crypto/pbkdf2v2";
loadmodule "modules/nickserv/main";
loadmodule "modules/nickserv/register";
loadmodule "modules/nickserv/identify";
loadmodule "modules/saslserv/main";
loadmodule "modules/saslserv/plain";
serverinfo { name = "services.int"; desc = "parley test services";
  numeric = "00A"; recontime = 1; netname = "TestNet";
  hidehostsuffix = "users.test"; adminname = "test";
  adminemail = "test@example.invalid";
  registeremail = "noreply@example.invalid"; mta = "/bin/true";
  loglevel = { error; info; admin; network; }; maxlogins = 5;
  maxusers = 5; mdlimit = 30; emaillimit = 10; emailtime = 300;
  auth = none; casemapping = rfc1459; };
uplink "irc.test" { host = "127.0.0.1"; send_password = "linkpw";
  receive_password = "linkpw"; port = %(link)d; };
nickserv { nick = "NickServ"; user = "NickServ"; host = "services.int";
  real = "Nickname Services"; maxnicks = 5; expire = 30; };
saslserv { nick = "SaslServ"; user = "SaslServ"; host = "services.int";
  real = "SASL Authentication Agent"; };
general { helpchan = "#help"; helpurl = "http://example.invalid";
  flood_msgs = 7; flood_time = 10; ratelimit_uses = 50;
  ratelimit_period = 60; commit_interval = 5;
  operstring = "is an IRC Operator";
  servicestring = "is a Network Service"; default_clone_allowed = 50;
  default_clone_warn = 40; uplink_sendq_limit = 1048576;
  language = "en"; immune_level = immune; };
database { path = "%(d)s/data/services.db"; };
""" % {"link": self.link_port, "d": d})

    def start(self):
        d = self.dir
        self.ircd = spawn([INSPIRCD, "--config=%s/inspircd.conf" % d,
                           "--nofork", "--runasroot"],
                          stdout=open(os.path.join(d, "ircd.out"), "ab"),
                          stderr=subprocess.STDOUT)
        wait_port(self.port)
        wait_port(self.link_port)
        self.atheme = spawn([ATHEME, "-n", "-c", "%s/atheme.conf" % d,
                             "-D", "%s/data" % d, "-l", "%s/atheme.log" % d,
                             "-p", "%s/atheme.pid" % d],
                            stdout=open(os.path.join(d, "atheme.out"), "ab"),
                            stderr=subprocess.STDOUT)
        return self

    def register(self, account, password, timeout=20):
        """Register account with NickServ once services have linked."""
        deadline = time.time() + timeout
        while True:
            c = Client(self.port, account)
            c.say("NickServ", "REGISTER %s %s@example.invalid"
                  % (password, account))
            try:
                c.wait(r"NOTICE %s :.*(registered|already)" % account, 3)
                c.stop()
                return
            except AssertionError:
                c.stop()
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self):
        stop(self.atheme)
        stop(self.ircd)
