#!/usr/bin/python3
"""OpenAI chat-completions stand-in for parley's tests.

Speaks the published API (POST /v1/chat/completions, GET /v1/models) with
OpenAI-shaped bodies and headers, answers "echo: <last user message>" by
default, and plays faults on demand from a script: status codes with the
real error bodies and Retry-After / retry-after-ms headers, hangs, dropped
connections, truncated JSON, slow or custom answers.  Standard library
only; run with Debian's /usr/bin/python3.

Usage:
  openai_stub.py [--port N] --port-file PATH [--api-key KEY]
                 [--delay SECONDS] [--log PATH]

Control API (no auth, JSON):
  POST /_control/script    body: list of actions; replaces the pending
                           script (?append=1 appends).  -> {"queued": n}
  GET  /_control/requests  every chat request seen, oldest first
  POST /_control/reset     clear script and records
  POST /_control/release   let streams held by "hold_after" go on
  Image parts ({"type": "image_url", "image_url": {"url": "data:..."}})
  are recorded as "images": [{"mime", "bytes", "sha256", "message"}]
  (decoded from the data URL; message is the index in "messages") and,
  to keep the records small, the URL in the recorded body is replaced
  by "data:<mime>;base64,<sha256>".  A part that is not a valid base64
  data URL or http(s) URL gets OpenAI's 400 invalid_image_url.
Actions (all keys optional; each chat request takes the first action
whose "when_contains" is absent or is a substring of the last user
message, and removes it unless "repeat" is true):
  {"status": 429, "retry_after": "1"}     rate_limit_exceeded body and
                                          Retry-After header
  {"status": 429, "retry_after_ms": 300}  retry-after-ms header instead
  {"status": 429, "code": "insufficient_quota"}
  {"status": 500|502|503}                 OpenAI server-error bodies
  {"status": 400|401|404|..., "message": m, "type": t, "code": c,
   "param": p}                            OpenAI error body
  {"hang": S}                             read the request, answer
                                          nothing, close after S seconds
  {"malformed": true}                     200 with truncated JSON
  {"drop": true}                          headers + half the body, close
  {"content": "text", "finish_reason": "length", "no_usage": true}
  {"body_bytes": N}                       200 whose content is N x's
  {"trickle": S}                          200 with the whole Content-Length
                                          announced, then the body one
                                          byte every S seconds
  {"reset": true}                         read the request, then close
                                          with a TCP reset (SO_LINGER 0)
  {"raw": "string", "status": 200}        this body verbatim
  {"headers": {"name": "value"}}          extra response headers
  "delay": S applies before any answer; "when_contains", "repeat" as
  above.

Streaming: a request with "stream": true is answered as OpenAI does, as
text/event-stream in HTTP chunks: "data: {chat.completion.chunk}" events
(the first delta carries the role, then content pieces, then an empty
delta with finish_reason), a usage chunk with "choices": [] when
stream_options.include_usage is set (and "usage": null in every other
chunk), then "data: [DONE]".  Actions add:
  {"pieces": ["He", "llo"]}               these content deltas
  {"piece_chars": N}                      cut content every N characters
                                          (default 4)
  {"chunk_delay": S}                      sleep S before each write
  {"split_bytes": N}                      write the event bytes N at a time
                                          (events cut at awkward places),
                                          each write its own HTTP chunk
  {"line_ending": "\r\n"}                 CRLF (or "\r") instead of LF
  {"comments": true}                      ": keep-alive" between events
  {"hold_after": N}                       after N content deltas, wait
                                          (up to 120 s) for POST
                                          /_control/release
  {"break_after": N}                      close the connection after N
                                          content deltas, mid-chunk
  {"error_after": N, "error_type": t,     after N content deltas send
   "error_message": m, "error_code": c}   data: {"error": {...}}, then end
  {"ignore_stream": true}                 answer with one JSON body
  {"no_done": true}, {"no_finish": true}  leave out [DONE] / finish chunk
  {"refusal": "text"}                     stream a refusal, no content
  {"latin1": true}                        JSON sent unescaped, each code
                                          point < 256 as one raw byte
"""

import argparse
import base64
import binascii
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo"]

LOCK = threading.Lock()
SCRIPT = []
RECORDS = []
RELEASE = threading.Event()
OPTS = None
LOGF = None


def log(line):
    if LOGF is None:
        return
    with LOCK:
        LOGF.write("%.3f %s\n" % (time.time(), line))
        LOGF.flush()


def error_body(message, etype, param=None, code=None):
    return {"error": {"message": message, "type": etype, "param": param,
                      "code": code}}


def default_error(status, action, model):
    """The body OpenAI sends for status, overridable from the action."""
    if status == 429:
        code = action.get("code", "rate_limit_exceeded")
        if code == "insufficient_quota":
            body = error_body(
                "You exceeded your current quota, please check your plan "
                "and billing details.", "insufficient_quota", None,
                "insufficient_quota")
        else:
            body = error_body(
                "Rate limit reached for %s in organization org-stub on "
                "requests per min (RPM): Limit 3, Used 3, Requested 1. "
                "Please try again in 20s." % model, "requests", None, code)
    elif status == 500:
        body = error_body(
            "The server had an error while processing your request. Sorry "
            "about that!", "server_error")
    elif status == 502:
        body = {"error": {"code": 502, "message": "Bad gateway.",
                          "param": None, "type": "cf_bad_gateway"}}
    elif status == 503:
        body = error_body(
            "The engine is currently overloaded, please try again later.",
            "server_error")
    elif status == 401:
        body = error_body("Incorrect API key provided.",
                          "invalid_request_error", None, "invalid_api_key")
    elif status == 404:
        body = error_body(
            "The model `%s` does not exist or you do not have access to "
            "it." % model, "invalid_request_error", None, "model_not_found")
    elif status == 400:
        body = error_body("Invalid request.", "invalid_request_error")
    else:
        body = error_body("Error %d." % status, "server_error"
                          if status >= 500 else "invalid_request_error")
    err = body["error"]
    for key in ("message", "type", "code", "param"):
        if key in action:
            err[key] = action[key]
    return body


def last_user_content(body):
    msgs = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(msgs, list):
        return ""
    for m in reversed(msgs):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):  # content parts
                return "".join(p.get("text", "") for p in c
                               if isinstance(p, dict))
    return ""


def image_parts(body):
    """(images, error) for the image_url parts of body's messages; the
    recorded URLs are shortened in place."""
    images = []
    for i, m in enumerate(body.get("messages") or []):
        c = m.get("content") if isinstance(m, dict) else None
        if not isinstance(c, list):
            continue
        for p in c:
            if not isinstance(p, dict) or p.get("type") != "image_url":
                continue
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else None
            if not isinstance(url, str):
                return images, "Missing required parameter: 'url'."
            if url.startswith(("http://", "https://")):
                images.append({"url": url, "message": i})
                continue
            head, sep, data = url.partition(",")
            if (not sep or not head.startswith("data:image/") or
                    not head.endswith(";base64")):
                return images, "Invalid image URL: expected a base64 data URL."
            try:
                raw = base64.b64decode(data, validate=True)
            except (ValueError, binascii.Error):
                return images, "Invalid base64 image data."
            digest = hashlib.sha256(raw).hexdigest()
            mime = head[5:-7]
            images.append({"mime": mime, "bytes": len(raw),
                           "sha256": digest, "message": i,
                           "detail": iu.get("detail")})
            iu["url"] = "data:%s;base64,%s" % (mime, digest)
    return images, None


def take_action(text):
    with LOCK:
        for i, a in enumerate(SCRIPT):
            cond = a.get("when_contains")
            if cond is not None and cond not in text:
                continue
            if not a.get("repeat"):
                del SCRIPT[i]
            return a
    return None


def estimate_tokens(s):
    return max(1, len(s) // 4)


def usage_of(content, body):
    msgs = body.get("messages", [])
    prompt = 0
    for m in msgs:
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            prompt += estimate_tokens(m["content"]) + 4
    done = estimate_tokens(content)
    return {"prompt_tokens": prompt, "completion_tokens": done,
            "total_tokens": prompt + done}


def completion(model, content, body, finish_reason="stop", usage=True):
    out = {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_stub",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content,
                        "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
    }
    if usage:
        out["usage"] = usage_of(content, body)
    return out


def stream_events(model, content, body, action):
    """The data payloads of a streamed answer, as OpenAI sends them.

    Returns a list of (kind, payload) with kind "piece" for a content
    delta, "event" for any other chunk."""
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    opts = body.get("stream_options")
    with_usage = isinstance(opts, dict) and opts.get("include_usage") is True

    def chunk(delta, finish=None):
        c = {"id": cid, "object": "chat.completion.chunk",
             "created": created, "model": model,
             "system_fingerprint": "fp_stub",
             "choices": [{"index": 0, "delta": delta, "logprobs": None,
                          "finish_reason": finish}]}
        if with_usage:
            c["usage"] = None
        return c

    out = [("event", chunk({"role": "assistant", "content": "",
                            "refusal": None}))]
    if "refusal" in action:
        text = action["refusal"]
        out += [("event", chunk({"refusal": text[i:i + 8]}))
                for i in range(0, len(text), 8)]
        content = ""
    elif "pieces" in action:
        out += [("piece", chunk({"content": p})) for p in action["pieces"]]
        content = "".join(action["pieces"])
    else:
        n = max(1, int(action.get("piece_chars", 4)))
        out += [("piece", chunk({"content": content[i:i + n]}))
                for i in range(0, len(content), n)]
    if not action.get("no_finish"):
        out.append(("event", chunk({}, action.get("finish_reason", "stop"))))
    if with_usage:
        out.append(("event", {"id": cid, "object": "chat.completion.chunk",
                              "created": created, "model": model,
                              "system_fingerprint": "fp_stub",
                              "choices": [],
                              "usage": usage_of(content, body)}))
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes; with Nagle on, the
        # body waits for the client's delayed ACK (40 ms on Linux), which
        # would show up as model latency in every benchmark.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server_version = "openai-stub/1.0"

    def log_message(self, fmt, *args):
        log("%s %s" % (self.address_string(), fmt % args))

    # -- plumbing ---------------------------------------------------------

    def read_body(self):
        n = self.headers.get("Content-Length")
        try:
            n = int(n) if n is not None else 0
        except ValueError:
            n = 0
        return self.rfile.read(n) if n > 0 else b""

    def send_json(self, status, obj, extra=None, raw=None):
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", "req_" + uuid.uuid4().hex[:16])
        self.send_header("openai-processing-ms", "1")
        for k, v in (extra or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def authorised(self):
        if not OPTS.api_key:
            return True
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            self.send_json(401, error_body(
                "You didn't provide an API key. You need to provide your "
                "API key in an Authorization header using Bearer auth "
                "(i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error"))
            return False
        key = auth[7:].strip()
        if key != OPTS.api_key:
            # OpenAI masks the middle of the key; this echoes all of it on
            # purpose, so tests prove that parley redacts it.
            self.send_json(401, error_body(
                "Incorrect API key provided: %s. You can find your API key "
                "at https://platform.openai.com/account/api-keys." % key,
                "invalid_request_error", None, "invalid_api_key"))
            return False
        return True

    # -- routes -----------------------------------------------------------

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/_control/requests":
            with LOCK:
                data = json.dumps(RECORDS).encode()
            self.send_json(200, None, raw=data)
        elif path.endswith("/models"):
            if not self.authorised():
                return
            self.send_json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1700000000,
                 "owned_by": "openai"} for m in MODELS]})
        else:
            self.not_found()

    def do_POST(self):
        url = urlsplit(self.path)
        path = url.path
        raw = self.read_body()
        if path == "/_control/script":
            self.control_script(raw, parse_qs(url.query))
        elif path == "/_control/reset":
            with LOCK:
                del SCRIPT[:]
                del RECORDS[:]
            RELEASE.clear()
            self.send_json(200, {"ok": True})
        elif path == "/_control/release":
            RELEASE.set()
            self.send_json(200, {"ok": True})
        elif path.endswith("/chat/completions"):
            self.chat(raw)
        else:
            self.not_found()

    def not_found(self):
        self.send_json(404, error_body(
            "Invalid URL (%s %s)" % (self.command, urlsplit(self.path).path),
            "invalid_request_error"))

    def control_script(self, raw, query):
        try:
            actions = json.loads(raw or b"[]")
            if isinstance(actions, dict):
                actions = [actions]
            if not isinstance(actions, list) or not all(
                    isinstance(a, dict) for a in actions):
                raise ValueError("want a list of objects")
        except ValueError as e:
            self.send_json(400, {"error": str(e)})
            return
        with LOCK:
            if not query.get("append"):
                del SCRIPT[:]
            SCRIPT.extend(actions)
            n = len(SCRIPT)
        self.send_json(200, {"queued": n})

    def chat(self, raw):
        start = time.time()
        rec = {"path": self.path, "headers": dict(self.headers.items()),
               "body": None, "timestamp": start, "finished": None,
               "action": None}
        with LOCK:
            RECORDS.append(rec)
        try:
            self.chat_inner(raw, rec)
        finally:
            rec["finished"] = time.time()

    def chat_inner(self, raw, rec):
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
            rec["body"] = raw.decode("utf-8", "replace")
        else:
            rec["body"] = body
        if not self.authorised():
            rec["action"] = "auth"
            return
        if body is None or not isinstance(body, dict):
            rec["action"] = "invalid"
            self.send_json(400, error_body(
                "We could not parse the JSON body of your request. (HINT: "
                "This likely means you aren't using your HTTP library "
                "correctly. The OpenAI API expects a JSON payload, but what "
                "was sent was not valid JSON.)", "invalid_request_error"))
            return
        if not isinstance(body.get("model"), str) or not body["model"]:
            rec["action"] = "invalid"
            self.send_json(400, error_body(
                "you must provide a model parameter",
                "invalid_request_error"))
            return
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            rec["action"] = "invalid"
            self.send_json(400, error_body(
                "Missing required parameter: 'messages'.",
                "invalid_request_error", "messages",
                "missing_required_parameter"))
            return
        images, bad = image_parts(body)
        rec["images"] = images
        if bad:
            rec["action"] = "invalid"
            self.send_json(400, error_body(bad, "invalid_request_error",
                                           "messages", "invalid_image_url"))
            return
        model = body["model"]
        text = last_user_content(body)
        action = take_action(text) or {}
        rec["action"] = action or "default"

        delay = action.get("delay", OPTS.delay)
        if delay:
            time.sleep(float(delay))
        extra = {"x-ratelimit-limit-requests": "10000",
                 "x-ratelimit-remaining-requests": "9999",
                 "x-ratelimit-reset-requests": "6ms"}
        extra.update(action.get("headers", {}))

        if "hang" in action:
            # Say nothing; the client must give up on its own.
            time.sleep(float(action["hang"]))
            self.close_connection = True
            return
        if action.get("reset"):
            # linger on, timeout 0: close() sends RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            # Closed here, not by the server's shutdown(SHUT_WR), which
            # would send a FIN before the reset.
            os.close(self.connection.detach())
            self.close_connection = True
            return
        status = int(action.get("status", 200))
        if "raw" in action:
            self.send_json(status, None, extra, raw=action["raw"].encode())
            return
        if status != 200:
            if "retry_after" in action:
                extra["Retry-After"] = str(action["retry_after"])
            if "retry_after_ms" in action:
                extra["retry-after-ms"] = str(action["retry_after_ms"])
            if status == 429:
                extra["x-ratelimit-remaining-requests"] = "0"
            self.send_json(status, default_error(status, action, model),
                           extra)
            return
        if "body_bytes" in action:
            content = "x" * int(action["body_bytes"])
        else:
            content = action.get("content", "echo: " + text)
        resp = completion(model, content, body,
                          action.get("finish_reason", "stop"),
                          not action.get("no_usage"))
        data = json.dumps(resp).encode()
        if action.get("malformed"):
            self.send_json(200, None, extra, raw=data[:len(data) // 2])
            return
        if "trickle" in action:
            self.send_trickle(data, float(action["trickle"]), extra)
            return
        if body.get("stream") is True and not action.get("ignore_stream"):
            self.send_stream(model, content, body, action, extra)
            return
        if action.get("drop"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_json(200, resp, extra, raw=data)


    def send_trickle(self, data, interval, extra):
        """The whole length announced, then one byte per interval, until
        the client hangs up (a server stuck behind a slow link)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            self.send_header(k, str(v))
        self.end_headers()
        self.close_connection = True
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(interval)
        except OSError:
            pass

    def send_stream(self, model, content, body, action, extra):
        """Answer as text/event-stream, with the faults of action."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("x-request-id", "req_" + uuid.uuid4().hex[:16])
        for k, v in extra.items():
            self.send_header(k, str(v))
        self.end_headers()
        eol = action.get("line_ending", "\n").encode()
        delay = float(action.get("chunk_delay", 0))
        split = int(action.get("split_bytes", 0))
        break_after = action.get("break_after")
        error_after = action.get("error_after")
        hold_after = action.get("hold_after")

        def encode(payload):
            # compact, as OpenAI sends it
            data = payload if isinstance(payload, str) else \
                json.dumps(payload, separators=(",", ":"),
                           ensure_ascii=not action.get("latin1"))
            # latin1: each code point below 256 becomes that raw byte, so
            # a test can send UTF-8 cut inside a character
            out = b"data: " + data.encode(
                "latin-1" if action.get("latin1") else "utf-8") + eol + eol
            if action.get("comments"):
                out = b": keep-alive" + eol + out
            return out

        def write(data):
            # each write is one HTTP chunk; split cuts events anywhere
            step = split if split > 0 else len(data)
            for i in range(0, len(data), step):
                if delay:
                    time.sleep(delay)
                part = data[i:i + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()

        pieces = 0
        for kind, payload in stream_events(model, content, body, action):
            if kind == "piece":
                if hold_after is not None and pieces == int(hold_after):
                    RELEASE.wait(120)
                if break_after is not None and pieces >= int(break_after):
                    # mid-chunk: a chunk header promising more than follows
                    self.wfile.write(b"40\r\ndata: {\"choi")
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if error_after is not None and pieces >= int(error_after):
                    err = error_body(
                        action.get("error_message",
                                   "The server had an error while "
                                   "processing your request. Sorry about "
                                   "that!"),
                        action.get("error_type", "server_error"), None,
                        action.get("error_code"))
                    write(encode(err))
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    return
                pieces += 1
            write(encode(payload))
        if not action.get("no_done"):
            write(encode("[DONE]"))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    # Python's default backlog of 5 resets bursts of connections.
    request_queue_size = 128
    daemon_threads = True
    allow_reuse_address = True


def main():
    global OPTS, LOGF
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--api-key")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--log")
    OPTS = ap.parse_args()
    if OPTS.log:
        LOGF = open(OPTS.log, "a")

    srv = Server(("127.0.0.1", OPTS.port), Handler)
    port = srv.server_address[1]
    tmp = OPTS.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.replace(tmp, OPTS.port_file)
    log("listening on 127.0.0.1:%d" % port)

    def on_term(signum, frame):
        # shutdown() waits for serve_forever, so not from this thread.
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        srv.serve_forever(poll_interval=0.1)
    finally:
        srv.server_close()
        log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
