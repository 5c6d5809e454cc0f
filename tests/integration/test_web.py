"""The web chat adapter over HTTP: the page and its cookie, Host and
Origin checks (403), body limits (413), the access token (401), the
server-sent events of a streamed answer, history, !reset and !model, and
the per-IP connection cap, and pictures (POST /api/picture: the same
Origin check, the size cap, the type from the bytes, the image part with
the very bytes, a placeholder in the history, a model that cannot see
pictures).  Real Redis and the OpenAI stand-in."""

import hashlib
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, run_cases, wait_until  # noqa: E402
from pictures import png  # noqa: E402
from web_helpers import Events, Web  # noqa: E402

TOKEN = "web-token-0123456789-secret"


def test_page_cookie_and_headers():
    with Test() as t:
        w = Web(t)
        cookie = w.login()
        assert re.match(r"parley_sid=[0-9a-f]{64}; ", cookie), cookie
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        status, h, body = w.request("GET", "/")
        assert status == 200
        assert "script-src 'self'" in h["content-security-policy"]
        assert h["x-content-type-options"] == "nosniff"
        assert b"/app.js" in body
        # A known session gets no new cookie.
        assert "set-cookie" not in h, h
        for path, ctype in (("/app.js", "text/javascript"),
                            ("/app.css", "text/css")):
            status, h, body = w.request("GET", path)
            assert status == 200 and h["content-type"].startswith(ctype)
            assert len(body) > 500
        # The session id never reaches the log; the room is its hash.
        sid = w.cookie.split("=")[1]
        w.send("hello")
        wait_until(lambda: len(w.history()["messages"]) == 2)
        assert sid not in w.parley.stdout() + w.parley.stderr()
        assert not w.redis.cmd("KEYS", "*" + sid + "*")
        assert w.terminate() == 0


def test_host_and_origin_checks():
    with Test() as t:
        w = Web(t)
        w.login()
        # A DNS-rebinding page reaches us under its own name.
        status, _, _ = w.request("GET", "/", headers={
            "Host": "evil.example:%d" % w.port})
        assert status == 403, status
        status, _, _ = w.request("GET", "/", headers={
            "Host": "localhost:%d" % w.port})
        assert status == 200, status
        for origin in ("http://evil.example", None, "null",
                       "http://127.0.0.1:1"):
            status, _, _ = w.request("POST", "/api/send", {"text": "hi"},
                                     headers={"Origin": origin})
            assert status == 403, (origin, status)
        status, _, _ = w.request("PUT", "/api/send", "x")
        assert status == 405, status
        assert len(w.stub.requests()) == 0
        w.send("hi")
        wait_until(lambda: len(w.stub.requests()) == 1)


def test_body_limits():
    with Test() as t:
        w = Web(t)
        w.login()
        status, _, _ = w.request("POST", "/api/send", "x" * 50000,
                                 headers={"Content-Type": "text/plain"})
        assert status == 413, status
        status, _, body = w.request("POST", "/api/send", {"nope": 1})
        assert status == 400, (status, body)
        status, _, body = w.request("POST", "/api/send", {"text": "  "})
        assert status == 400, (status, body)
        # A message near the limit is accepted (and cut by the router).
        w.send("y" * 20000)
        wait_until(lambda: len(w.stub.requests()) == 1)
        # Headers beyond the connection's memory get no page.
        status, _, _ = w.request("GET", "/", headers={"X-Big": "z" * 40000})
        assert status in (400, 413, 431), status


def test_token():
    with Test() as t:
        w = Web(t, web_extra='token_env = "WEB_TOKEN";',
                env={"WEB_TOKEN": TOKEN})
        status, _, body = w.request("GET", "/")
        assert status == 401 and b'action="/login"' in body, status
        status, _, _ = w.request("GET", "/api/history")
        assert status == 401, status
        status, _, _ = w.request("GET", "/app.css")
        assert status == 200, status
        status, _, _ = w.request("POST", "/login", "token=wrong",
                                 headers={"Content-Type":
                                          "application/x-www-form-"
                                          "urlencoded"})
        assert status == 401, status
        status, h, _ = w.request("POST", "/login", "token=" + TOKEN,
                                 headers={"Content-Type":
                                          "application/x-www-form-"
                                          "urlencoded"})
        assert status == 303 and h["location"] == "/", status
        cookies = h["set-cookie-all"]
        tok = [c for c in cookies if c.startswith("parley_token=")][0]
        assert TOKEN not in tok and "HttpOnly" in tok
        sid = [c for c in cookies if c.startswith("parley_sid=")][0]
        w.cookie = tok.split(";")[0] + "; " + sid.split(";")[0]
        assert w.history()["messages"] == []
        # Or as a bearer token, for scripts.
        status, _, _ = w.request("GET", "/api/history", cookie=False,
                                 headers={"Authorization":
                                          "Bearer " + TOKEN})
        assert status == 200, status
        assert w.terminate() == 0
        assert TOKEN not in w.parley.stdout() + w.parley.stderr()


def test_streamed_answer_events_and_history():
    with Test() as t:
        w = Web(t)
        w.login()
        ev = Events(w)
        time.sleep(0.3)
        w.stub.script([{"pieces": ["**Bold** ", "start, ", "<script>x",
                                   "</script> ", "then more ", "and done."],
                        "chunk_delay": 0.2}])
        qid = w.send("stream please")
        final = ev.wait(lambda e: e[0] == "reply")[1]
        assert final["id"] == qid and final["notice"] is False
        assert "<strong>Bold</strong>" in final["html"], final
        assert "<script" not in final["html"], final
        assert "&lt;script&gt;" in final["html"], final
        progress = ev.of("progress")
        assert len(progress) >= 2, progress
        assert all(p["id"] == qid for p in progress)
        assert all("<script" not in p["html"] for p in progress)
        assert ev.of("typing")[0] == {"on": True}
        assert b"text/event-stream" in ev.head
        h = w.history()
        assert [m["role"] for m in h["messages"]] == ["user", "assistant"]
        assert h["messages"][0]["text"] == "stream please"
        assert h["messages"][1]["html"] == final["html"]
        # A stream that breaks ends with the fallback, nothing stored.
        w.stub.script([{"pieces": ["Half ", "an ", "answer"],
                        "chunk_delay": 0.2, "break_after": 2}])
        qid = w.send("break please")
        final = ev.wait(lambda e: e[0] == "reply" and e[1]["id"] == qid)[1]
        assert final["notice"] is True and "unavailable" in final["text"]
        assert len(w.history()["messages"]) == 2
        # Clear history: !reset through the router, a notice back.
        qid = w.send("!reset")
        final = ev.wait(lambda e: e[0] == "reply" and e[1]["id"] == qid)[1]
        assert final["notice"] is True, final
        assert w.history()["messages"] == []
        # Stopping with a stream open ends it cleanly.
        assert w.terminate() == 0
        ev.close()


def test_model_picker():
    with Test() as t:
        w = Web(t)
        w.login()
        h = w.history()
        assert h["models"] == ["test-model", "other-model"], h
        assert h["model"] == "test-model"
        ev = Events(w)
        qid = w.send("!model other-model")
        ev.wait(lambda e: e[0] == "reply" and e[1]["id"] == qid)
        assert w.history()["model"] == "other-model"
        w.send("which model?")
        wait_until(lambda: len(w.stub.requests()) == 1)
        assert w.stub.requests()[0]["body"]["model"] == "other-model"
        ev.close()


def test_per_ip_connection_cap():
    with Test() as t:
        w = Web(t, web_extra="max_per_ip = 2;")
        time.sleep(1)   # the port probe's connection is cleaned up
        socks = [socket.create_connection(("127.0.0.1", w.port))
                 for _ in range(2)]
        for s in socks:     # both are in: they are answered (keep-alive)
            s.sendall(b"GET /app.css HTTP/1.1\r\nHost: %s\r\n\r\n" %
                      w.host.encode())
            assert s.recv(12) == b"HTTP/1.1 200"
        extra = socket.create_connection(("127.0.0.1", w.port))
        extra.settimeout(5)
        extra.sendall(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" %
                      w.host.encode())
        try:
            data = extra.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b"", data
        for s in socks + [extra]:
            s.close()
        time.sleep(1)
        status, _, _ = w.request("GET", "/")
        assert status == 200


def test_pictures():
    with Test() as t:
        w = Web(t, llm_extra='vision_models = [ "test-model" ]; '
                'image_max_bytes = 20000;')
        w.login()
        pic = png(20, 20, 5)
        hdr = {"Content-Type": "image/png"}
        # Another origin may not post a picture either.
        status, _, _ = w.request("POST", "/api/picture?name=a.png", pic,
                                 headers=dict(hdr, Origin="http://evil.ex"))
        assert status == 403, status
        # Over llm.image_max_bytes: 413 before the body is read.
        status, _, _ = w.request("POST", "/api/picture?name=b.png",
                                 png(100, 100, 1), headers=hdr)
        assert status == 413, status
        # Not a picture, whatever its Content-Type says.
        status, _, body = w.request("POST", "/api/picture?name=c.png",
                                    b"<svg onload=alert(1)>", headers=hdr)
        assert status == 415, (status, body)
        assert not w.stub.requests()
        status, _, body = w.request(
            "POST", "/api/picture?name=cat%20one.png&text=what%20is%20it%3F",
            pic, headers=hdr)
        assert status == 202, (status, body)
        wait_until(lambda: len(w.history()["messages"]) == 2)
        req = w.stub.requests()[-1]
        img = req["images"][0]
        assert img["sha256"] == hashlib.sha256(pic).hexdigest(), img
        assert img["mime"] == "image/png", img
        hist = w.history()["messages"]
        assert hist[0]["text"] == "[picture: cat one.png, %d KB] what is " \
            "it?" % ((len(pic) + 1023) // 1024), hist
        for k in w.redis.cmd("KEYS", "t:ctx:*"):
            stored = str(w.redis.cmd("LRANGE", k, "0", "-1"))
            assert "[picture: cat one.png" in stored, stored
            assert "base64" not in stored and "image_url" not in stored
        # A model that cannot see pictures: a notice, no request.
        n = len(w.stub.requests())
        w.send("!model other-model")
        status, _, body = w.request("POST", "/api/picture?name=d.png", pic,
                                    headers=hdr)
        assert status == 202, status
        ev = Events(w)
        try:
            ev.wait(lambda e: e[0] == "reply" and "can't look at pictures"
                    in e[1].get("text", ""))
        finally:
            ev.close()
        assert len(w.stub.requests()) == n
        assert w.terminate() == 0


def test_closed_stream_noticed():
    """A browser that closes its event stream frees its connection at
    once, not at the next ping (WEB_PING_MS, 15 s): with one connection
    per address, a new request gets in well before that."""
    with Test() as t:
        w = Web(t, web_extra="max_per_ip = 1;")
        time.sleep(1)   # the port probe's connection is cleaned up

        def fetch():
            try:
                return w.request("GET", "/app.css")[0] == 200
            except OSError:
                return False
        def login():
            try:
                return w.login()
            except OSError:
                return None
        wait_until(login, 10, "the session cookie")
        time.sleep(1)   # the login's connection is cleaned up
        ev = Events(w)
        wait_until(lambda: ev.head.endswith(b"\r\n\r\n"), 10,
                   "the event stream's headers")
        assert ev.head.startswith(b"HTTP/1.1 200"), ev.head
        time.sleep(0.5)     # suspended, waiting for events
        ev.sock.shutdown(socket.SHUT_RDWR)
        ev.sock.close()
        wait_until(fetch, 8, "a request after the stream was closed "
                   "(the closed stream still holds the only connection)")


if __name__ == "__main__":
    run_cases([test_page_cookie_and_headers, test_host_and_origin_checks,
               test_body_limits, test_token,
               test_streamed_answer_events_and_history, test_model_picker,
               test_per_ip_connection_cap, test_pictures,
               test_closed_stream_noticed])
