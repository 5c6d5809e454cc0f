"""Matrix end-to-end encryption, the device identity, against the real
Synapse from ../shared/synapse, checked with Debian's python3-olm (the
library nio is built on) as an independent implementation:

- with crypto_key_env set, the bot's device publishes device keys whose
  ed25519 signature over the spec's canonical JSON verifies with olm, one-
  time keys another user can claim (signed by the same key) and a
  fallback key; the pickled account in Redis contains no key in clear and
  the pickle key never reaches the log;
- a restart keeps the same device and identity keys (the account comes
  back from Redis) and uploads no new device;
- a one-time key claimed by someone else is replaced (top-up from
  device_one_time_keys_count);
- a room created encrypted: the bot joins and sends nothing in plaintext
  there (no greeting), and says once in its log why;
- without the key: one clear log line, no device keys uploaded, and still
  nothing in plaintext in an encrypted room.

Skips (77) when Synapse or python3-olm is missing.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, require_parley, skip,
                     stop, wait_until, write_config)
from matrix_hs import (Client, nio_encrypted_dm, q, require_homeserver,
                       run_matrix)

try:
    import olm
except ImportError:
    olm = None
try:
    import asyncio
    import nio
except ImportError:
    nio = None

KEY = "sk-test-matrix-e2ee-0123456789abcdef"
PW = "bot-password-e2ee-77aa"
PICKLE_KEY = "pickle-key-for-tests-3b9d0c7e5a1f"
HS = None
_n = [0]


def uniq(prefix):
    _n[0] += 1
    return "%s%d%d" % (prefix, os.getpid() % 10000, _n[0])


def canonical(obj):
    o = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    return json.dumps(o, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def claim(s, device):
    _, j = s.alice.call("POST", "/keys/claim", {"one_time_keys": {
        s.bot: {device: "signed_curve25519"}}})
    (kid, kobj), = j["one_time_keys"][s.bot][device].items()
    assert kid.startswith("signed_curve25519:"), kid
    return kobj


def verify(obj, user, device, ed_key):
    sig = obj["signatures"][user]["ed25519:" + device]
    olm.ed25519_verify(ed_key, canonical(obj), sig)   # raises if bad


class Setup:
    def __init__(self, t, with_key=True, stub_delay=None, more=""):
        self.t = t
        self.bot_client = HS.register(uniq("ebot"), PW)
        self.bot = self.bot_client.user_id
        self.alice = HS.register(uniq("alice"), "pw-alice")
        self.redis = t.add(Redis(t.tmp).start())
        self.stub = t.add(Stub(t.tmp, api_key=KEY, delay=stub_delay).start())
        extra = 'crypto_key_env = "MX_TEST_PICKLE";' if with_key else ""
        extra += more
        block = """{
    type = "matrix";
    homeserver = "%s";
    user_id = "%s";
    password_env = "MX_TEST_PASSWORD";
    allow_invites_from = [ "%s" ];
    greet_on_join = true;
    sync_timeout_ms = 2000;
    backoff_base_ms = 100;
    backoff_max_ms = 800;
    %s
}""" % (HS.url, self.bot, self.alice.user_id, extra)
        self.conf = write_config(t.tmp, self.stub.base_url, self.redis.port,
                                 adapters=block, timeout_ms=5000,
                                 max_retries=1, backoff_max_ms=200)
        self.parley = None

    def start(self):
        self.parley = self.t.add(Parley(
            ["-c", self.conf],
            env={"TEST_OPENAI_KEY": KEY, "MX_TEST_PASSWORD": PW,
                 "MX_TEST_PICKLE": PICKLE_KEY}).start())
        wait_until(lambda: "syncing" in self.parley.stderr()
                   or self.parley.proc.poll() is not None, 30,
                   "parley to sync")
        assert self.parley.proc.poll() is None, self.parley.stderr()[-3000:]
        return self.parley

    def err(self):
        return self.parley.stderr()[-3000:] if self.parley else ""

    def devices(self):
        _, j = self.alice.call("POST", "/keys/query",
                               {"device_keys": {self.bot: []}})
        return j.get("device_keys", {}).get(self.bot, {})

    def encrypted_room(self):
        body = {"preset": "private_chat", "invite": [self.bot],
                "initial_state": [{"type": "m.room.encryption",
                                   "state_key": "",
                                   "content": {"algorithm":
                                               "m.megolm.v1.aes-sha2"}}]}
        room = self.alice.call("POST", "/createRoom", body)[1]["room_id"]
        wait_until(lambda: self.alice.membership(room, self.bot) == "join",
                   20, "the bot to join; stderr=%s" % self.err())
        return room

    def plaintext_from_bot(self, room):
        return [e for e in self.alice.timeline(room)
                if e.get("sender") == self.bot
                and e.get("type") == "m.room.message"]


def test_device_keys_and_restart():
    with Test() as t:
        s = Setup(t)
        p = s.start()
        wait_until(lambda: "end-to-end encryption on" in p.stderr(), 20,
                   "keys uploaded; stderr=%s" % s.err())
        devs = wait_until(s.devices, 10, "device keys on the server")
        assert len(devs) == 1, devs
        device, dk = next(iter(devs.items()))
        ed = dk["keys"]["ed25519:" + device]
        curve = dk["keys"]["curve25519:" + device]
        assert dk["user_id"] == s.bot and dk["device_id"] == device
        assert set(dk["algorithms"]) == {"m.olm.v1.curve25519-aes-sha2",
                                         "m.megolm.v1.aes-sha2"}
        verify(dk, s.bot, device, ed)
        assert ed in p.stderr()     # the operator can verify the device
        assert PICKLE_KEY not in p.stderr()

        # What Redis holds: the account pickle, no key in clear.
        acct_keys = s.redis.cmd("KEYS", "*crypto*account*")
        assert acct_keys, s.redis.cmd("KEYS", "*")
        pickle = s.redis.cmd("GET", acct_keys[0])
        pickle = pickle.decode() if isinstance(pickle, bytes) else pickle
        assert pickle and ed not in pickle and curve not in pickle
        assert PICKLE_KEY not in pickle

        # Someone claims a one-time key: signed by the device.
        _, j = s.alice.call("POST", "/keys/claim", {"one_time_keys": {
            s.bot: {device: "signed_curve25519"}}})
        claimed = j["one_time_keys"][s.bot][device]
        (kid, kobj), = claimed.items()
        assert kid.startswith("signed_curve25519:")
        verify(kobj, s.bot, device, ed)
        # A restart: same device, same keys, nothing new uploaded.
        stop(p.proc)
        p = s.start()
        wait_until(lambda: "end-to-end encryption on" in p.stderr(), 20,
                   "keys after restart; stderr=%s" % s.err())
        assert "new identity" not in p.stderr()
        devs2 = s.devices()
        assert list(devs2) == [device], devs2
        assert devs2[device]["keys"] == dk["keys"]

        # Top-up: claims drain the one-time keys below half (50 were
        # uploaded); the next syncs (every 2 s) refill them.  Without it,
        # 9 would be left and then only the fallback key.
        for _ in range(40):
            claim(s, device)
        time.sleep(6)
        fresh = 0
        for _ in range(300):
            kobj = claim(s, device)
            verify(kobj, s.bot, device, ed)
            if kobj.get("fallback"):
                break
            fresh += 1
        assert fresh >= 20, "only %d one-time keys after the drain; " \
            "stderr=%s" % (fresh, s.err())
        assert kobj.get("fallback"), "no fallback key published"

        # An encrypted room: joined, nothing in plaintext, logged once.
        room = s.encrypted_room()
        s.alice.send(room, {"algorithm": "m.megolm.v1.aes-sha2",
                            "ciphertext": "AwgA", "session_id": "x",
                            "sender_key": "y", "device_id": "z"},
                     evtype="m.room.encrypted")
        wait_until(lambda: "no usable room key for" in p.stderr(), 20,
                   "the undecryptable event noticed; stderr=%s" % s.err())
        assert not s.plaintext_from_bot(room), s.plaintext_from_bot(room)


async def nio_wait_answer(c, room, bot, question, timeout=40, ignore=()):
    """Sync until the bot's answers to question decrypt; returns them
    (nio decrypts m.room.encrypted into RoomMessageText).  Events in
    ignore (sent before this device could have their key) are skipped."""
    deadline = time.time() + timeout
    found = {}
    while time.time() < deadline:
        r = await c.sync(timeout=1000)
        rooms = getattr(getattr(r, "rooms", None), "join", {}) or {}
        for ev in getattr(rooms.get(room), "timeline", None) and \
                rooms[room].timeline.events or []:
            if getattr(ev, "sender", None) != bot or ev.event_id in ignore:
                continue
            if isinstance(ev, nio.MegolmEvent):
                raise AssertionError("an answer nio cannot decrypt: %r"
                                     % ev.source)
            rel = ev.source.get("content", {}).get("m.relates_to", {})
            if rel.get("m.in_reply_to", {}).get("event_id") == question:
                found[ev.event_id] = ev
        if found:
            await c.sync(timeout=2000)      # a duplicate would show now
            return list(found.values())
    raise AssertionError("no decryptable answer to %s" % question)


async def nio_conversation(s, store, after_send):
    """A person's encrypting client (matrix-nio over olm): log in, create
    an encrypted direct chat with the bot, wait for it to join, send a
    mention (nio claims the bot's one-time key and shares its Megolm
    session over Olm first), read the encrypted answer; ask again, and
    after_send(i) may kill parley meanwhile.  Returns (room, [answers per
    question])."""
    cfg = nio.AsyncClientConfig(encryption_enabled=True,
                                store_sync_tokens=False)
    c = nio.AsyncClient(HS.url, s.alice.user_id, store_path=store,
                        config=cfg)
    bot = s.bot
    out = []
    try:
        room = await nio_encrypted_dm(c, "pw-alice", bot)
        for i in range(2):
            if c.should_query_keys:
                await c.keys_query()
            r = await c.room_send(room, "m.room.message",
                                  {"msgtype": "m.text",
                                   "body": "question %d for Parley Bot" % i,
                                   "m.mentions": {"user_ids": [bot]}},
                                  ignore_unverified_devices=True)
            assert isinstance(r, nio.RoomSendResponse), r
            after_send(i)
            out.append(await nio_wait_answer(c, room, bot, r.event_id))
        return room, out
    finally:
        await c.close()


def test_encrypted_dm_with_nio():
    if nio is None:
        print("skip test_encrypted_dm_with_nio: python3-matrix-nio missing")
        return
    with Test() as t:
        s = Setup(t, stub_delay=1.0)
        p = s.start()
        wait_until(lambda: "end-to-end encryption on" in p.stderr(), 20,
                   "keys uploaded; stderr=%s" % s.err())
        store = os.path.join(t.tmp, "nio")
        os.makedirs(store)
        first = {}

        def after_send(i):
            """The second question: kill -9 while the model works on it,
            then start again (same device, sessions from Redis)."""
            if i != 1:
                return
            wait_until(lambda: any("question 1" in json.dumps(r["body"])
                                   for r in s.stub.requests()), 20,
                       "question 1 to reach the model; stderr=%s" % s.err())
            first["stderr"] = s.parley.stderr()
            s.parley.kill()
            s.start()
            wait_until(lambda: "end-to-end encryption on"
                       in s.parley.stderr(), 20, "keys after restart")

        room, answers = asyncio.run(nio_conversation(s, store, after_send))
        # Exactly one decryptable answer to each question, the second
        # across kill -9 and a restart (same device, stored sessions).
        assert [len(a) for a in answers] == [1, 1], answers
        log = first["stderr"]
        assert "room key for %s from %s" % (room, s.alice.user_id) in log
        assert "sharing a room key for %s" % room in log, log[-3000:]
        assert "new identity" not in s.parley.stderr()
        # Nothing from the bot in plaintext; its Megolm session is stored.
        assert not s.plaintext_from_bot(room)
        assert s.redis.cmd("KEYS", "*crypto*megolm_out*")
        assert len(s.redis.cmd("KEYS", "*crypto*megolm_in*")) >= 1
        assert PICKLE_KEY not in log + s.parley.stderr()


async def nio_login(user_id, password, store):
    """An encrypting client (matrix-nio over olm) with its own device."""
    os.makedirs(store, exist_ok=True)
    cfg = nio.AsyncClientConfig(encryption_enabled=True,
                                store_sync_tokens=False)
    c = nio.AsyncClient(HS.url, user_id, store_path=store, config=cfg)
    r = await c.login(password)
    assert isinstance(r, nio.LoginResponse), r
    await c.sync(timeout=0, full_state=True)
    if c.should_upload_keys:
        await c.keys_upload()
    return c


async def nio_ask(c, room, bot, text):
    """Send an encrypted mention of the bot; returns the event id."""
    if c.should_query_keys:
        await c.keys_query()
    r = await c.room_send(room, "m.room.message",
                          {"msgtype": "m.text", "body": text,
                           "m.mentions": {"user_ids": [bot]}},
                          ignore_unverified_devices=True)
    assert isinstance(r, nio.RoomSendResponse), r
    return r.event_id


async def nio_until(c, pred, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        await c.sync(timeout=1000)
        if pred():
            return
    raise AssertionError("timed out: " + what)


def megolm_session_of(s, room, event_id):
    """The Megolm session id of one of the bot's encrypted events."""
    for e in s.alice.timeline(room):
        if e.get("event_id") == event_id:
            return e["content"]["sender_key"], e["content"]["session_id"]
    raise AssertionError("event %s not in %s" % (event_id, room))


async def nio_second_device(s, tmp):
    bot = s.bot
    a = await nio_login(s.alice.user_id, "pw-alice", os.path.join(tmp, "a"))
    b = None
    try:
        r = await a.room_create(
            invite=[bot], is_direct=True,
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm":
                                        "m.megolm.v1.aes-sha2"}}])
        room = r.room_id
        await nio_until(a, lambda: room in a.rooms and
                        bot in a.rooms[room].users, "the bot to join")
        q1 = await nio_ask(a, room, bot, "first question for Parley Bot")
        assert len(await nio_wait_answer(a, room, bot, q1)) == 1
        # The same person signs in on a second device.
        b = await nio_login(s.alice.user_id, "pw-alice",
                            os.path.join(tmp, "b"))
        assert b.device_id != a.device_id
        time.sleep(3)           # the bot's syncs see device_lists.changed
        q2 = await nio_ask(a, room, bot, "second question for Parley Bot")
        assert len(await nio_wait_answer(a, room, bot, q2)) == 1
        got = await nio_wait_answer(b, room, bot, q2)
        assert len(got) == 1, got
        return room
    finally:
        await a.close()
        if b:
            await b.close()


def test_second_device_gets_answers():
    """A person's new device (device_lists.changed) gets the room key of
    the bot's later answers, and decrypts them."""
    if nio is None:
        print("skip test_second_device_gets_answers: no python3-matrix-nio")
        return
    with Test() as t:
        s = Setup(t)
        p = s.start()
        wait_until(lambda: "end-to-end encryption on" in p.stderr(), 20,
                   "keys uploaded; stderr=%s" % s.err())
        asyncio.run(nio_second_device(s, t.tmp))
        assert PICKLE_KEY not in s.err()


async def nio_join_leave(s, tmp):
    bot = s.bot
    carol_c = HS.register(uniq("carol"), "pw-carol")
    a = await nio_login(s.alice.user_id, "pw-alice", os.path.join(tmp, "a"))
    c = await nio_login(carol_c.user_id, "pw-carol", os.path.join(tmp, "c"))
    try:
        r = await a.room_create(
            invite=[bot],
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm":
                                        "m.megolm.v1.aes-sha2"}}])
        room = r.room_id
        await nio_until(a, lambda: room in a.rooms and
                        bot in a.rooms[room].users, "the bot to join")
        q1 = await nio_ask(a, room, bot, "before carol, Parley Bot?")
        ans1 = await nio_wait_answer(a, room, bot, q1)
        # Carol joins: the bot's next answer reaches her device too.  What
        # it sent before is not hers to read.
        before = {e["event_id"] for e in s.alice.timeline(room)
                  if e.get("sender") == bot}
        await a.room_invite(room, carol_c.user_id)
        await c.sync(timeout=1000)
        jr = await c.join(room)
        assert isinstance(jr, nio.JoinResponse), jr
        await nio_until(a, lambda: carol_c.user_id in a.rooms[room].users,
                        "carol in the room")
        q2 = await nio_ask(a, room, bot, "with carol, Parley Bot?")
        ans2 = await nio_wait_answer(a, room, bot, q2)
        assert len(await nio_wait_answer(c, room, bot, q2,
                                         ignore=before)) == 1
        # Carol leaves: the next answer has a new session she never got.
        lr = await c.room_leave(room)
        assert isinstance(lr, nio.RoomLeaveResponse), lr
        await nio_until(a, lambda: carol_c.user_id not in
                        a.rooms[room].users, "carol gone")
        q3 = await nio_ask(a, room, bot, "after carol, Parley Bot?")
        ans3 = await nio_wait_answer(a, room, bot, q3)
        await c.sync(timeout=2000)
        s1 = megolm_session_of(s, room, ans1[0].event_id)
        s2 = megolm_session_of(s, room, ans2[0].event_id)
        s3 = megolm_session_of(s, room, ans3[0].event_id)
        assert s3 != s2 and s3 != s1, (s1, s2, s3)
        store = c.olm.inbound_group_store
        assert store.get(room, *s2) is not None, s2
        assert store.get(room, *s3) is None, s3
        # Alice's device got two room keys (the first session, then the
        # rotated one) over one Olm session of the bot's, reused: the
        # hash holds it, nio's own session to the bot, and _out.
        curve = a.olm.account.identity_keys["curve25519"]
        (okey,) = s.redis.cmd("KEYS", "*crypto*:olm:" + curve)
        fields = [f.decode() if isinstance(f, bytes) else f
                  for f in s.redis.cmd("HKEYS", okey)]
        assert "_out" in fields and len(fields) == 3, fields
        return room
    finally:
        await a.close()
        await c.close()


def test_join_leave_rotation():
    """A member who joins gets the bot's later answers; one who leaves
    makes the bot rotate, and cannot decrypt what follows."""
    if nio is None:
        print("skip test_join_leave_rotation: no python3-matrix-nio")
        return
    with Test() as t:
        s = Setup(t)
        p = s.start()
        wait_until(lambda: "end-to-end encryption on" in p.stderr(), 20,
                   "keys uploaded; stderr=%s" % s.err())
        room = asyncio.run(nio_join_leave(s, t.tmp))
        assert "a member left %s: new room key" % room in s.err(), s.err()


class OlmPerson:
    """A person's device made with python3-olm alone (no nio): it sends
    Megolm room events and shares (or withholds) their keys over Olm, so
    a test decides exactly which keys the bot gets, and when."""

    def __init__(self, s):
        self.s = s
        self.c = s.alice
        self.acct = olm.Account()
        self.curve = self.acct.identity_keys["curve25519"]
        self.ed = self.acct.identity_keys["ed25519"]
        self.device = self.c.call("GET", "/account/whoami")[1]["device_id"]
        self.olm = None
        self.since = None

    def bot_device(self):
        (dev, dk), = self.s.devices().items()
        return (dev, dk["keys"]["curve25519:" + dev],
                dk["keys"]["ed25519:" + dev])

    def megolm(self):
        """A new outbound session and its key at index 0."""
        out = olm.OutboundGroupSession()
        return out, out.session_key

    def send(self, room, out, body):
        plain = {"type": "m.room.message", "room_id": room,
                 "content": {"msgtype": "m.text", "body": body,
                             "m.mentions": {"user_ids": [self.s.bot]}}}
        content = {"algorithm": "m.megolm.v1.aes-sha2",
                   "ciphertext": out.encrypt(json.dumps(plain)),
                   "session_id": out.id, "sender_key": self.curve,
                   "device_id": self.device}
        return self.c.send(room, content, evtype="m.room.encrypted")

    def share(self, room, session_id, session_key):
        """m.room_key over Olm to the bot's device (a new Olm session
        from a claimed one-time key the first time)."""
        dev, curve, ed = self.bot_device()
        if self.olm is None:
            otk = claim(self.s, dev)
            self.olm = olm.OutboundSession(self.acct, curve, otk["key"])
        payload = {"type": "m.room_key",
                   "content": {"algorithm": "m.megolm.v1.aes-sha2",
                               "room_id": room, "session_id": session_id,
                               "session_key": session_key},
                   "sender": self.c.user_id, "sender_device": self.device,
                   "keys": {"ed25519": self.ed},
                   "recipient": self.s.bot, "recipient_keys": {"ed25519": ed}}
        msg = self.olm.encrypt(json.dumps(payload))
        content = {"algorithm": "m.olm.v1.curve25519-aes-sha2",
                   "sender_key": self.curve,
                   "ciphertext": {curve: {"type": msg.message_type,
                                          "body": msg.ciphertext}}}
        self.c.call("PUT", "/sendToDevice/m.room.encrypted/%s" % uniq("t"),
                    {"messages": {self.s.bot: {dev: content}}})

    def key_requests(self):
        """m.room_key_request messages that reached this device."""
        path = "/sync?timeout=0" + ("&since=" + q(self.since)
                                    if self.since else "")
        _, j = self.c.call("GET", path)
        self.since = j.get("next_batch", self.since)
        return [e for e in j.get("to_device", {}).get("events", [])
                if e.get("type") == "m.room_key_request"]


def bot_encrypted(s, room):
    return [e for e in s.alice.timeline(room)
            if e.get("sender") == s.bot
            and e.get("type") == "m.room.encrypted"]


def asked_model(s, text):
    return any(text in json.dumps(r["body"]) for r in s.stub.requests())


def test_utd_key_request_then_answer():
    """A message the bot has no key for: kept, the key is requested from
    the sender's devices; the bot restarts meanwhile (the kept event is
    in Redis); the key arrives; the message is answered."""
    with Test() as t:
        s = Setup(t)
        p = s.start()
        wait_until(lambda: "end-to-end encryption on" in p.stderr(), 20,
                   "keys uploaded; stderr=%s" % s.err())
        person = OlmPerson(s)
        person.key_requests()               # since token for later
        room = s.encrypted_room()
        out, key0 = person.megolm()
        person.send(room, out, "locked question for Parley Bot")
        wait_until(lambda: "no usable room key for" in s.err(), 20,
                   "the event kept; stderr=%s" % s.err())
        reqs = []
        wait_until(lambda: reqs.extend(person.key_requests()) or
                   any(r["content"].get("body", {}).get("session_id") ==
                       out.id for r in reqs), 20,
                   "a key request at the sender's device; stderr=%s"
                   % s.err())
        r = [r for r in reqs if r["content"]["body"]["session_id"] ==
             out.id][0]
        assert r["sender"] == s.bot and r["content"]["action"] == "request"
        assert r["content"]["body"]["room_id"] == room
        assert r["content"]["body"]["algorithm"] == "m.megolm.v1.aes-sha2"
        assert len(s.redis.cmd("HKEYS", s.redis.cmd(
            "KEYS", "*crypto*:utd")[0])) == 1
        assert not asked_model(s, "locked question")
        # A restart: the kept event comes back from Redis.
        stop(s.parley.proc)
        p = s.start()
        wait_until(lambda: "end-to-end encryption on" in p.stderr(), 20,
                   "restart; stderr=%s" % s.err())
        person.share(room, out.id, key0)
        wait_until(lambda: asked_model(s, "locked question"), 30,
                   "the kept question answered after the key came; "
                   "stderr=%s" % s.err())
        wait_until(lambda: not s.redis.cmd("KEYS", "*crypto*:utd"), 20,
                   "the kept event forgotten once answered")
        assert "told" not in s.err()
        assert PICKLE_KEY not in s.err()


def test_utd_timeout_told_once():
    """No key within utd_timeout_ms: one plain-words notice in the room,
    never a second one (a later question is answered, and still only one
    notice went out)."""
    with Test() as t:
        s = Setup(t, more="utd_timeout_ms = 3000;")
        p = s.start()
        wait_until(lambda: "end-to-end encryption on" in p.stderr(), 20,
                   "keys uploaded; stderr=%s" % s.err())
        person = OlmPerson(s)
        room = s.encrypted_room()
        lost, _ = person.megolm()
        ev = person.send(room, lost, "question nobody can read")
        ev = ev if isinstance(ev, str) else ev.get("event_id", ev)
        wait_until(lambda: "told %s once" % s.alice.user_id in s.err(), 30,
                   "the one explanation; stderr=%s" % s.err())
        wait_until(lambda: not s.redis.cmd("KEYS", "*crypto*:utd"), 20,
                   "the event forgotten after the explanation")
        time.sleep(1)
        n1 = len(bot_encrypted(s, room))
        # A follow-up the bot can read, answered: syncs have gone by.
        out, key = person.megolm()
        person.share(room, out.id, key)
        person.send(room, out, "readable follow-up for Parley Bot")
        wait_until(lambda: asked_model(s, "readable follow-up"), 30,
                   "the follow-up answered; stderr=%s" % s.err())
        wait_until(lambda: len(bot_encrypted(s, room)) >= n1 + 1, 20,
                   "the answer in the room")
        time.sleep(1)
        assert len(bot_encrypted(s, room)) == n1 + 1, \
            (n1, bot_encrypted(s, room))
        assert s.err().count("no room key came for") == 1, s.err()
        assert not asked_model(s, "question nobody can read")


class OlmDevice:
    """One device of a person made with python3-olm: its signed device
    keys and signed one-time keys uploaded over its own login."""

    def __init__(self, user_id, password):
        _, j = Client(HS.url, "", user_id).call(
            "POST", "/login", {"type": "m.login.password",
                               "identifier": {"type": "m.id.user",
                                              "user": user_id},
                               "password": password}, auth=False)
        self.c = Client(HS.url, j["access_token"], user_id)
        self.device = j["device_id"]
        self.user = user_id
        self.acct = olm.Account()
        keys = self.acct.identity_keys
        self.dk = {"user_id": user_id, "device_id": self.device,
                   "algorithms": ["m.olm.v1.curve25519-aes-sha2",
                                  "m.megolm.v1.aes-sha2"],
                   "keys": {"curve25519:" + self.device: keys["curve25519"],
                            "ed25519:" + self.device: keys["ed25519"]}}
        self.dk["signatures"] = {user_id: {
            "ed25519:" + self.device: self.acct.sign(canonical(self.dk))}}
        self.acct.generate_one_time_keys(5)
        otks = {}
        for kid, k in self.acct.one_time_keys["curve25519"].items():
            o = {"key": k}
            o["signatures"] = {user_id: {
                "ed25519:" + self.device: self.acct.sign(canonical(o))}}
            otks["signed_curve25519:" + kid] = o
        self.c.call("POST", "/keys/upload", {"device_keys": self.dk,
                                             "one_time_keys": otks})
        self.since = None

    def to_device_from(self, sender):
        path = "/sync?timeout=0" + ("&since=" + q(self.since)
                                    if self.since else "")
        _, j = self.c.call("GET", path)
        self.since = j.get("next_batch", self.since)
        return [e for e in j.get("to_device", {}).get("events", [])
                if e.get("sender") == sender
                and e.get("type") == "m.room.encrypted"]


def cross_sign(dev, password):
    """The person's master and self-signing keys (UIA with the password),
    and dev signed by the self-signing key: dev is verified by its
    owner."""
    master = olm.PkSigning(olm.PkSigning.generate_seed())
    ssk = olm.PkSigning(olm.PkSigning.generate_seed())
    u = dev.user
    mk = {"user_id": u, "usage": ["master"],
          "keys": {"ed25519:" + master.public_key: master.public_key}}
    sk = {"user_id": u, "usage": ["self_signing"],
          "keys": {"ed25519:" + ssk.public_key: ssk.public_key}}
    sk["signatures"] = {u: {"ed25519:" + master.public_key:
                            master.sign(canonical(sk))}}
    body = {"master_key": mk, "self_signing_key": sk}
    code, j = dev.c.call("POST", "/keys/device_signing/upload", body,
                         ok=(200, 401))
    if code == 401:
        body["auth"] = {"type": "m.login.password", "session":
                        j.get("session"), "password": password,
                        "identifier": {"type": "m.id.user", "user": u}}
        dev.c.call("POST", "/keys/device_signing/upload", body)
    signed = dict(dev.dk)
    sig = ssk.sign(canonical(signed))
    signed["signatures"] = {u: {"ed25519:" + ssk.public_key: sig}}
    dev.c.call("POST", "/keys/signatures/upload",
               {u: {dev.device: signed}})


def test_share_with_verified():
    """share_with = "verified": the bot's room key goes to the person's
    cross-signed device only, not to their unverified one."""
    with Test() as t:
        s = Setup(t, more='share_with = "verified";')
        p = s.start()
        wait_until(lambda: "end-to-end encryption on" in p.stderr(), 20,
                   "keys uploaded; stderr=%s" % s.err())
        good = OlmDevice(s.alice.user_id, "pw-alice")
        bad = OlmDevice(s.alice.user_id, "pw-alice")
        cross_sign(good, "pw-alice")
        good.to_device_from(s.bot)
        bad.to_device_from(s.bot)
        # The bot greets the encrypted room: that shares its room key.
        room = s.encrypted_room()
        wait_until(lambda: "sharing a room key for %s" % room in s.err(),
                   30, "a share; stderr=%s" % s.err())
        got = []
        wait_until(lambda: got.extend(good.to_device_from(s.bot)) or got,
                   20, "the room key at the verified device")
        assert good.acct.identity_keys["curve25519"] in \
            got[0]["content"]["ciphertext"]
        time.sleep(2)
        assert bad.to_device_from(s.bot) == []
        assert "devices not verified by their owner left out" in s.err()


def test_without_key():
    with Test() as t:
        s = Setup(t, with_key=False)
        p = s.start()
        assert "end-to-end encryption is off (no crypto_key_env)" \
            in p.stderr(), s.err()
        assert s.devices() == {} or all(
            "keys" not in d for d in s.devices().values()), s.devices()
        room = s.encrypted_room()
        time.sleep(4)
        assert not s.plaintext_from_bot(room), s.plaintext_from_bot(room)
        assert "%s is encrypted" % room in p.stderr(), s.err()
        # A plain room still gets its greeting (nothing else changed).
        plain = s.alice.create_room(invite=[s.bot])
        wait_until(lambda: s.plaintext_from_bot(plain), 20,
                   "greeting in a plain room; stderr=%s" % s.err())


def main():
    require_parley()
    require_homeserver()
    if olm is None:
        skip("python3-olm is not installed (scripts/install-deps.sh --test)")
    run_matrix([test_device_keys_and_restart, test_encrypted_dm_with_nio,
                test_utd_key_request_then_answer, test_utd_timeout_told_once,
                test_second_device_gets_answers, test_join_leave_rotation,
                test_share_with_verified,
                test_without_key], sys.modules[__name__])


if __name__ == "__main__":
    main()
