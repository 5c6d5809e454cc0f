"""Matrix pieces for parley's integration tests.

- Homeserver: the real Synapse from ../shared/synapse (homeserver.sh),
  one per test run, started on an ephemeral port and stopped on exit.
- Client: a person (or an admin) speaking the client-server API with
  plain HTTP (urllib), as the spec writes it: rooms, invites, messages
  with m.mentions / replies / threads, reading a room's timeline.
- FaultProxy: a small HTTP proxy in front of Synapse that forwards every
  request and, on demand, answers a matching path with what a real server
  will not produce at will: 5xx, a hang, a connection dropped mid-answer,
  malformed JSON.  It records every request (method, path, status), so a
  test can count /sync attempts (no tight loop) and see txnIds of sends.
- run_matrix: the main() of every Matrix test file (one Synapse, the
  cases or those named in MATRIX_CASES, the exit status).

Standard library only; run with Debian's /usr/bin/python3.
"""

import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import (SOURCE_DIR, Test, free_port, run_cases, skip,
                     wait_until)

# Beside the source tree, as CI lays it out; PARLEY_SYNAPSE_SH overrides
# it for a checkout elsewhere (e.g. a git worktree).
HS_SCRIPT = os.environ.get("PARLEY_SYNAPSE_SH") or os.path.join(
    os.path.dirname(os.path.abspath(SOURCE_DIR)), "shared", "synapse",
    "homeserver.sh")


def require_homeserver():
    if not os.access(HS_SCRIPT, os.X_OK):
        skip("Synapse not available (%s is absent): Matrix tests need "
             "../shared/synapse beside the source tree" % HS_SCRIPT)



async def nio_encrypted_dm(c, password, bot, timeout=30):
    """With a matrix-nio client c (encryption on): log in, upload its
    device keys, create an encrypted direct chat inviting bot and wait
    until the bot has joined it.  Returns the room id.  nio is imported
    here: only the encryption tests need python3-matrix-nio."""
    import nio
    r = await c.login(password)
    assert isinstance(r, nio.LoginResponse), r
    await c.sync(timeout=0, full_state=True)
    if c.should_upload_keys:
        await c.keys_upload()
    r = await c.room_create(
        invite=[bot], is_direct=True,
        initial_state=[{"type": "m.room.encryption", "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    assert isinstance(r, nio.RoomCreateResponse), r
    room = r.room_id
    deadline = time.time() + timeout
    while time.time() < deadline:
        await c.sync(timeout=1000)
        rm = c.rooms.get(room)
        if rm and bot in rm.users:
            return room
    raise AssertionError("the bot did not join the encrypted DM")

def run_matrix(cases, holder):
    """Start one Synapse, hand it to the tests as holder.HS (the module
    whose test functions read HS), run cases (or only those named in
    MATRIX_CASES, comma-separated) and exit with their status."""
    code = 1
    with Test() as t:
        holder.HS = t.add(Homeserver(t.tmp).start())
        only = os.environ.get("MATRIX_CASES")
        if only:
            cases = [c for c in cases if c.__name__ in only.split(",")]
        try:
            run_cases(cases)
        except SystemExit as e:
            code = e.code
    # Outside the with: Synapse is stopped and, on success, its files go.
    sys.exit(code)


def q(s):
    """Percent-encode one path segment (room ids, event ids, txnIds)."""
    return urllib.parse.quote(s, safe="")


class Homeserver:
    """Synapse on 127.0.0.1:<port>, data in dir; one per test run."""

    def __init__(self, tmp, strict=False):
        self.dir = os.path.join(tmp, "synapse")
        self.port = free_port()
        self.strict = strict
        self.started = False

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self):
        argv = [HS_SCRIPT, "start", self.dir, str(self.port)]
        if self.strict:
            argv.append("strict")
        r = subprocess.run(argv, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=120)
        if r.returncode != 0:
            raise AssertionError("homeserver.sh start failed: %s"
                                 % r.stderr.decode(errors="replace")[-2000:])
        self.started = True
        return self

    def stop(self):
        if self.started:
            subprocess.run([HS_SCRIPT, "stop", self.dir], timeout=60,
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            self.started = False

    def register(self, user, password, admin=False):
        argv = [HS_SCRIPT, "register", self.dir, user, password]
        if admin:
            argv.append("admin")
        r = subprocess.run(argv, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        if r.returncode != 0:
            raise AssertionError("register %s failed: %s" % (
                user, r.stderr.decode(errors="replace")[-1000:]))
        j = json.loads(r.stdout)
        return Client(self.url, j["access_token"], j["user_id"])


class Client:
    """One user over the client-server API (v3)."""

    def __init__(self, base, token, user_id):
        self.base = base
        self.token = token
        self.user_id = user_id
        self.txn = 0

    def call(self, method, path, body=None, auth=True, ok=(200,)):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "Bearer " + self.token
        req = urllib.request.Request(self.base + "/_matrix/client/v3" + path,
                                     data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                code, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            code, raw = e.code, e.read()
        j = json.loads(raw) if raw else {}
        if ok and code not in ok:
            raise AssertionError("%s %s -> %d %r" % (method, path, code, j))
        return code, j

    def set_displayname(self, name):
        self.call("PUT", "/profile/%s/displayname" % q(self.user_id),
                  {"displayname": name})

    def create_room(self, invite=(), is_direct=False, name=None):
        body = {"preset": "private_chat", "invite": list(invite),
                "is_direct": is_direct}
        if name:
            body["name"] = name
        return self.call("POST", "/createRoom", body)[1]["room_id"]

    def invite(self, room, user):
        self.call("POST", "/rooms/%s/invite" % q(room), {"user_id": user})

    def join(self, room):
        self.call("POST", "/join/%s" % q(room), {})

    def send(self, room, content, evtype="m.room.message"):
        self.txn += 1
        txn = "t%d.%f" % (self.txn, time.time())
        return self.call("PUT", "/rooms/%s/send/%s/%s" % (
            q(room), evtype, q(txn)), content)[1]["event_id"]

    def say(self, room, body, mentions=None, reply_to=None, thread=None,
            formatted=None):
        c = {"msgtype": "m.text", "body": body}
        if formatted is not None:
            c["format"] = "org.matrix.custom.html"
            c["formatted_body"] = formatted
        if mentions is not None:
            c["m.mentions"] = {"user_ids": list(mentions)}
        if thread:
            c["m.relates_to"] = {"rel_type": "m.thread", "event_id": thread,
                                 "is_falling_back": True,
                                 "m.in_reply_to": {"event_id": thread}}
        elif reply_to:
            c["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        return self.send(room, c)

    def members(self, room):
        return self.call("GET", "/rooms/%s/joined_members" % q(room))[1].get(
            "joined", {})

    def membership(self, room, user):
        code, j = self.call("GET", "/rooms/%s/state/m.room.member/%s" % (
            q(room), q(user)), ok=None)
        return j.get("membership") if code == 200 else None

    def timeline(self, room, limit=100):
        path = "/rooms/%s/messages?dir=b&limit=%d" % (q(room), limit)
        return list(reversed(self.call("GET", path)[1].get("chunk", [])))

    def messages_from(self, room, sender):
        return [e for e in self.timeline(room)
                if e.get("type") == "m.room.message"
                and e.get("sender") == sender]

    def wait_messages_from(self, room, sender, n, timeout=20):
        return wait_until(
            lambda: (lambda m: m if len(m) >= n else None)(
                self.messages_from(room, sender)),
            timeout, "%d message(s) from %s in %s" % (n, sender, room))


def relates(ev):
    return ev.get("content", {}).get("m.relates_to", {})


def reply_target(ev):
    return relates(ev).get("m.in_reply_to", {}).get("event_id")


# ---- fault-injecting proxy ----------------------------------------------

class FaultProxy:
    """HTTP proxy to upstream with scripted faults.

    faults: list of dicts {"path": substring, "action": "500" | "502" |
    "503" | "413" | "429" | "hang" | "drop" | "reset" | "badjson" |
    "raw", "count": n, "seconds": s (hang; for 429 the retry_after_ms in
    seconds), "body": bytes and "status": n (raw)}; the
    first matching fault with count > 0 is used and its count decreased.
    "429" is Synapse's M_LIMIT_EXCEEDED with retry_after_ms and a
    Retry-After header; "reset" closes with a TCP reset; "raw" answers
    body verbatim (bad input from a homeserver).
    """

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.faults = []
        self.log = []               # (time, method, path, status or action)
        self.lock = threading.Lock()
        self.server = None

    def add_fault(self, path, action, count=1, seconds=2.0, body=b"",
                  status=200):
        with self.lock:
            self.faults.append({"path": path, "action": action,
                                "count": count, "seconds": seconds,
                                "body": body, "status": status})

    def pending(self):
        """Faults not played yet."""
        with self.lock:
            return sum(f["count"] for f in self.faults)

    def requests(self, path_part=None):
        with self.lock:
            return [r for r in self.log
                    if path_part is None or path_part in r[2]]

    def _take_fault(self, path):
        with self.lock:
            for f in self.faults:
                if f["count"] > 0 and f["path"] in path:
                    f["count"] -= 1
                    return dict(f)
        return None

    def start(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _record(self, what):
                with proxy.lock:
                    proxy.log.append((time.time(), self.command, self.path,
                                      what))

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                fault = proxy._take_fault(self.path)
                if fault:
                    self._record(fault["action"])
                    self._fault(fault)
                    return
                conn = http.client.HTTPConnection("127.0.0.1",
                                                  proxy.upstream, timeout=90)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                try:
                    conn.request(self.command, self.path, body=body,
                                 headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                except OSError:
                    self._record("upstream-error")
                    self.close_connection = True
                    return
                finally:
                    conn.close()
                self._record(r.status)
                try:
                    self.send_response(r.status)
                    for k, v in r.getheaders():
                        if k.lower() not in ("transfer-encoding",
                                             "connection", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    # The client gave up (a cancelled long poll).
                    self.close_connection = True

            def _fault(self, f):
                a = f["action"]
                if a in ("500", "502", "503"):
                    data = b'{"errcode":"M_UNKNOWN","error":"injected"}'
                    self.send_response(int(a))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif a == "413":
                    # What Synapse (or a proxy in front of it) answers
                    # for an event over its size limit.
                    data = (b'{"errcode":"M_TOO_LARGE",'
                            b'"error":"event too large (injected)"}')
                    self.send_response(413)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif a == "429":
                    ms = int(f["seconds"] * 1000)
                    data = json.dumps({
                        "errcode": "M_LIMIT_EXCEEDED",
                        "error": "Too Many Requests",
                        "retry_after_ms": ms}).encode()
                    self.send_response(429)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Retry-After",
                                     str(max(1, (ms + 999) // 1000)))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif a == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
                    # Closed here, not by the server's shutdown(SHUT_WR),
                    # which would send a FIN before the reset.
                    os.close(self.connection.detach())
                    self.close_connection = True
                elif a == "raw":
                    data = f["body"]
                    self.send_response(f["status"])
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif a == "hang":
                    time.sleep(f["seconds"])
                    self.close_connection = True
                elif a == "drop":
                    data = b'{"next_batch":"s1","rooms":{"join":{'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "5000")
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    self.close_connection = True
                elif a == "badjson":
                    data = b'{"next_batch": ["not", "a", "string"], {'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever,
                         daemon=True).start()
        return self

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
