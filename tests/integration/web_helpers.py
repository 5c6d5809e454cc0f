"""Helpers for the web chat tests: parley with a web adapter on an
ephemeral port, plain HTTP requests with full control of the headers,
and a server-sent events reader."""

import http.client
import json
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, free_port, wait_port,  # noqa
                     write_config)


class Web:
    """Redis, the stand-in and parley serving the web chat."""

    def __init__(self, t, web_extra="", env=None, llm_extra=""):
        self.redis = t.add(Redis(t.tmp).start())
        self.stub = t.add(Stub(t.tmp).start())
        self.port = free_port()
        self.host = "127.0.0.1:%d" % self.port
        self.origin = "http://" + self.host
        adapters = ('{ type = "web"; listen = "127.0.0.1:%d"; %s }'
                    % (self.port, web_extra))
        # Streamed answers take seconds on purpose: a generous timeout.
        conf = write_config(t.tmp, self.stub.base_url, self.redis.port,
                            adapters=adapters, llm_extra=llm_extra,
                            timeout_ms=15000)
        self.parley = t.add(Parley(["-c", conf], env=env or {}).start())
        wait_port(self.port)
        self.cookie = None

    def terminate(self, timeout=20):
        """SIGTERM, as a service manager stops parley; the exit code."""
        self.parley.proc.send_signal(signal.SIGTERM)
        return self.parley.proc.wait(timeout)

    def request(self, method, path, body=None, headers=None, cookie=True):
        """(status, headers dict (lower-case), body bytes)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        h = {"Host": self.host}
        if cookie and self.cookie:
            h["Cookie"] = self.cookie
        if method == "POST":
            h["Origin"] = self.origin
        h.update(headers or {})
        h = {k: v for k, v in h.items() if v is not None}
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        set_cookie = [v for k, v in r.getheaders()
                      if k.lower() == "set-cookie"]
        hdrs["set-cookie-all"] = set_cookie
        c.close()
        return r.status, hdrs, data

    def login(self):
        """Take the session cookie the page sets."""
        status, h, _ = self.request("GET", "/", cookie=False)
        assert status == 200, status
        self.cookie = h["set-cookie"].split(";")[0]
        return h["set-cookie"]

    def send(self, text):
        status, _, body = self.request("POST", "/api/send", {"text": text})
        assert status == 202, (status, body)
        return json.loads(body)["id"]

    def history(self):
        status, _, body = self.request("GET", "/api/history")
        assert status == 200, (status, body)
        return json.loads(body)


class Events:
    """GET /api/events read in a thread into a list of (event, data)."""

    def __init__(self, web):
        self.events = []
        self.lock = threading.Lock()
        self.sock = socket.create_connection(("127.0.0.1", web.port))
        req = ("GET /api/events HTTP/1.1\r\nHost: %s\r\nCookie: %s\r\n"
               "Accept: text/event-stream\r\n\r\n" % (web.host, web.cookie))
        self.sock.sendall(req.encode())
        self.head = b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        buf = b""
        f = self.sock.makefile("rb")
        # Headers, then chunked body: decode chunks, then split events.
        while True:
            line = f.readline()
            if not line:
                return
            self.head += line
            if line in (b"\r\n", b"\n"):
                break
        while True:
            size = f.readline()
            if not size:
                return
            n = int(size.strip() or b"0", 16)
            if n == 0:
                return
            buf += f.read(n)
            f.readline()
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                name, data = "message", ""
                for l in block.decode().split("\n"):
                    if l.startswith("event: "):
                        name = l[7:]
                    elif l.startswith("data: "):
                        data += l[6:]
                if data:
                    with self.lock:
                        self.events.append((name, json.loads(data)))

    def wait(self, pred, timeout=15):
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                for e in self.events:
                    if pred(e):
                        return e
            time.sleep(0.05)
        raise AssertionError("no such event in %r" % self.events)

    def of(self, name):
        with self.lock:
            return [d for n, d in self.events if n == name]

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
