#!/usr/bin/python3
"""The reference bot of scripts/bench/run.sh: what the Python tutorials
build, so the table can show parley next to the obvious alternative.

Synchronous and one request at a time: a message addressed to the bot is
answered by a blocking HTTP call to the OpenAI-compatible API (a new
connection each time, like urllib or requests without a session), with
the history of the room in a list, trimmed to the same 40 turns parley
keeps.  IRC through python3-irc (irc.bot.SingleServerIRCBot), or the
console (stdin/stdout, "bot> " before each answer).

  refbot.py irc HOST PORT NICK API_URL CHANNEL...
  refbot.py console API_URL
  refbot.py echo HOST PORT NICK CHANNEL...
  BENCH_MX_TOKEN=... refbot.py mxecho HOMESERVER_URL

"echo" and "mxecho" are not bots but the floors under the IRC and Matrix
figures: plain clients (no model) that answer every message addressed
to them with the same text at once, so bench.py can time the server
relaying a message twice plus two plain clients.  echo speaks raw IRC
(no library, TCP_NODELAY); mxecho long-polls /sync over one keep-alive
connection, joins the rooms it is invited to and answers each m.text
from someone else with a PUT /send.
"""

import http.client
import json
import os
import socket
import sys
import urllib.parse
import urllib.request

MAX_TURNS = 40
SYSTEM = "You are a helpful assistant in a chat room. Be brief."


def ask(api_url, history):
    body = json.dumps({"model": "test-model",
                       "messages": [{"role": "system", "content": SYSTEM}]
                       + history}).encode()
    req = urllib.request.Request(api_url + "/chat/completions", data=body,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Bearer x"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["choices"][0]["message"]["content"]


def remember(history, role, text):
    history.append({"role": role, "content": text})
    del history[:-MAX_TURNS]


def run_console(api_url):
    history = []
    for line in sys.stdin:
        text = line.strip()
        if not text:
            continue
        remember(history, "user", "you: " + text)
        answer = ask(api_url, history)
        remember(history, "assistant", answer)
        sys.stdout.write("bot> " + answer.replace("\n", " ") + "\n")
        sys.stdout.flush()


def run_irc(host, port, nick, api_url, channels):
    import irc.bot

    class Bot(irc.bot.SingleServerIRCBot):
        def __init__(self):
            super().__init__([(host, port)], nick, nick)
            self.history = {}

        def on_welcome(self, c, e):
            for ch in channels:
                c.join(ch)

        def on_pubmsg(self, c, e):
            text = e.arguments[0]
            prefix = nick + ":"
            if not text.lower().startswith(prefix.lower()):
                return
            who = e.source.nick
            h = self.history.setdefault(e.target, [])
            remember(h, "user", "%s: %s" % (who, text[len(prefix):].strip()))
            answer = ask(api_url, h)
            remember(h, "assistant", answer)
            c.privmsg(e.target, "%s: %s" % (who, answer.replace("\n", " ")))

    Bot().start()


def run_echo(host, port, nick, channels):
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(("NICK %s\r\nUSER %s 0 * :echo\r\n"
                  % (nick, nick)).encode())
    prefix = (nick + ":").lower().encode()
    buf = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        buf += data
        out = []
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            if line.startswith(b"PING"):
                out.append(b"PONG" + line[4:])
                continue
            # :nick!user@host COMMAND params...
            parts = line.split(b" ", 3)
            if len(parts) < 2:
                continue
            if parts[1] == b"001":
                out.extend(b"JOIN " + c.encode() for c in channels)
            elif parts[1] == b"PRIVMSG" and len(parts) == 4:
                text = parts[3][1:] if parts[3].startswith(b":") \
                    else parts[3]
                if text[:len(prefix)].lower() != prefix:
                    continue
                who = parts[0][1:].split(b"!", 1)[0]
                out.append(b"PRIVMSG " + parts[2] + b" :" + who + b": " +
                           text[len(prefix):].strip())
        if out:
            sock.sendall(b"".join(l + b"\r\n" for l in out))


def run_mxecho(hs_url):
    u = urllib.parse.urlsplit(hs_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    auth = {"Authorization": "Bearer " + os.environ["BENCH_MX_TOKEN"],
            "Content-Type": "application/json"}

    def call(method, path, body=None):
        conn.request(method, "/_matrix/client/v3" + path, headers=auth,
                     body=None if body is None else json.dumps(body))
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError("%s %s -> %d %r" % (method, path, r.status,
                                                    data))
        return json.loads(data or b"{}")

    me = call("GET", "/account/whoami")["user_id"]
    filt = urllib.parse.quote(json.dumps(
        {"room": {"timeline": {"limit": 50}}, "presence": {"types": []},
         "account_data": {"types": []}}))
    since, txn = None, 0
    while True:
        j = call("GET", "/sync?timeout=30000&filter=%s%s"
                 % (filt, "&since=" + since if since else ""))
        rooms = j.get("rooms", {})
        for room in rooms.get("invite", {}):
            call("POST", "/join/" + urllib.parse.quote(room, safe=""), {})
        for room, r in rooms.get("join", {}).items():
            if since is None:       # the backlog before this start
                continue
            for e in r.get("timeline", {}).get("events", []):
                c = e.get("content", {})
                if e.get("type") != "m.room.message" or \
                        e.get("sender") == me or c.get("msgtype") != "m.text":
                    continue
                txn += 1
                who = e["sender"][1:].split(":", 1)[0]
                call("PUT", "/rooms/%s/send/m.room.message/e%d"
                     % (urllib.parse.quote(room, safe=""), txn),
                     {"msgtype": "m.text",
                      "body": "%s: %s" % (who, c.get("body", ""))})
        since = j["next_batch"]


def main(argv):
    if len(argv) >= 6 and argv[1] == "irc":
        run_irc(argv[2], int(argv[3]), argv[4], argv[5], argv[6:])
    elif len(argv) >= 6 and argv[1] == "echo":
        run_echo(argv[2], int(argv[3]), argv[4], argv[5:])
    elif len(argv) == 3 and argv[1] == "mxecho":
        run_mxecho(argv[2])
    elif len(argv) == 3 and argv[1] == "console":
        run_console(argv[2])
    else:
        sys.stderr.write(__doc__)
        return 64
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:
        sys.exit(130)
