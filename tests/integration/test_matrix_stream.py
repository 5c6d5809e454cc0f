"""Streamed answers on Matrix (issue 10) against a real homeserver
(Synapse from ../shared/synapse), with the OpenAI stand-in streaming
slowly.

Cases: an answer streamed as a first sentence plus m.replace edits (the
edits appear, the last one carries the whole formatted text, at most about
one edit a second counted from the server's timestamps, m.mentions only on
the first event, the history holds only the final text, the Redis marker
is gone afterwards); parley killed with SIGKILL while the stand-in holds
the stream after the first sentence went out, then restarted: exactly one
answer event for the question, whose latest edit is the whole text.

Run one case: MATRIX_CASES=test_stream_edits.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_matrix_adapter as tma
from harness import Test, require_parley, wait_until, write_config
from matrix_hs import (FaultProxy, relates, reply_target, require_homeserver,
                       run_matrix)
from matrix_hs import q as q_

FIRST = "Streaming works in small steps."
REST = (" Here comes **the second part** of the answer, written a few "
        "characters at a time so that several edits are needed. And a "
        "third sentence follows, long enough to take a few seconds in "
        "all.")
FULL = FIRST + REST


def setup(t, hs_url=None):
    s = tma.Setup(t, extra="stream = true;", hs_url=hs_url)
    # The streams take seconds: llm.timeout_ms must not cut them.
    block = open(s.conf).read()
    s.conf = write_config(
        t.tmp, s.stub.base_url, s.redis.port, name="stream.conf",
        adapters=block[block.index("adapters = (") + 12:
                       block.rindex(");")],
        timeout_ms=30000, max_retries=1, backoff_max_ms=200)
    return s


def bot_events(s, who, room):
    return [e for e in s.people[who].timeline(room, limit=200)
            if e.get("sender") == s.bot and e.get("type") == "m.room.message"]


def answer_and_edits(s, who, room, question):
    evs = bot_events(s, who, room)
    first = [e for e in evs if reply_target(e) == question]
    ids = set(e["event_id"] for e in first)
    edits = [e for e in evs if relates(e).get("rel_type") == "m.replace"
             and relates(e).get("event_id") in ids]
    return first, sorted(edits, key=lambda e: (e["origin_server_ts"],
                                               e["event_id"]))


def latest_text(edits):
    return edits[-1]["content"]["m.new_content"]["body"] if edits else None


def history(s):
    out = []
    for k in s.redis.cmd("KEYS", "t:ctx:*"):
        for item in s.redis.cmd("LRANGE", k, 0, -1):
            out.append(json.loads(item))
    return out


def test_stream_edits():
    with Test() as t:
        s = setup(t)
        s.stub.script([{"when_contains": "stream please", "content": FULL,
                        "piece_chars": 5, "chunk_delay": 0.08}])
        s.start()
        alice = s.people["alice"]
        room = s.room_with("alice")
        alice.wait_messages_from(room, s.bot, 1)
        q = alice.say(room, "stream please", mentions=[s.bot])

        def done():
            first, edits = answer_and_edits(s, "alice", room, q)
            return (first, edits) if latest_text(edits) == FULL else None
        first, edits = wait_until(done, 40, "the final edit; stderr=%s"
                                  % s.err())
        time.sleep(1.5)
        first, edits = answer_and_edits(s, "alice", room, q)
        with open(os.path.join(t.tmp, "parley.err"), "w") as f:
            f.write(s.err_all() if hasattr(s, "err_all") else
                    s.parley.stderr())
        assert len(first) == 1, [e["content"] for e in first]
        # Synapse 1.66 serves an edited event with the edit's content in
        # /messages; GET /event/{id} gives the original.
        c0 = alice.call("GET", "/rooms/%s/event/%s" % (
            q_(room), q_(first[0]["event_id"])))[1]["content"]
        assert c0["body"] == FIRST, (c0, "\n".join(
            l for l in s.err().splitlines() if "stream" in l or "llm" in l))
        assert c0["m.mentions"] == {"user_ids": [alice.user_id]}, c0
        assert len(edits) >= 2, [e["content"] for e in edits]
        last = edits[-1]["content"]
        assert last["m.new_content"]["body"] == FULL
        assert "<strong>the second part</strong>" in \
            last["m.new_content"]["formatted_body"], last
        assert last["body"] == "* " + FULL, last["body"]
        for e in edits:
            c = e["content"]
            assert c["m.mentions"] == {}, c
            assert "m.in_reply_to" not in c["m.relates_to"], c
            assert FULL.startswith(c["m.new_content"]["body"]), c
        # At most about one event a second, from the server's clock.
        ts = [first[0]["origin_server_ts"]] + \
            [e["origin_server_ts"] for e in edits]
        span = (ts[-1] - ts[0]) / 1000.0
        assert len(ts) <= span + 2, "%d events in %.1f s" % (len(ts), span)
        # Only the final text in the history; the marker is gone.
        turns = [h for h in history(s) if h.get("role") == "assistant"]
        assert any(h["content"] == FULL for h in turns), turns
        assert not any(h["content"] != FULL and FULL.startswith(h["content"])
                       for h in turns), turns
        wait_until(lambda: not s.redis.cmd("KEYS", "t:stream:*"), 10,
                   "the stream marker to be deleted")


def test_stream_kill_restart():
    with Test() as t:
        s = setup(t)
        s.stub.script([
            {"when_contains": "kill me", "content": FULL, "piece_chars": 5,
             "hold_after": 10},
            {"when_contains": "kill me", "content": FULL, "piece_chars": 5,
             "chunk_delay": 0.05}])
        p = s.start()
        alice = s.people["alice"]
        room = s.room_with("alice")
        alice.wait_messages_from(room, s.bot, 1)
        q = alice.say(room, "kill me mid-stream", mentions=[s.bot])
        wait_until(lambda: answer_and_edits(s, "alice", room, q)[0], 30,
                   "the first sentence; stderr=%s" % s.err())
        time.sleep(0.5)
        p.kill()
        s.stub.release()
        s.parley = None
        s.start()

        def done():
            first, edits = answer_and_edits(s, "alice", room, q)
            return (first, edits) if latest_text(edits) == FULL else None
        wait_until(done, 40, "the final text after the restart; stderr=%s"
                   % s.err())
        time.sleep(2)
        first, edits = answer_and_edits(s, "alice", room, q)
        assert len(first) == 1, "answers to the question: %r" % [
            e["content"].get("body") for e in first]
        assert latest_text(edits) == FULL
        known = set(e["event_id"] for e in first + edits)
        others = [e for e in bot_events(s, "alice", room)
                  if FIRST in e["content"].get("body", "")
                  and e["event_id"] not in known]
        assert not others, [e["content"] for e in others]


def test_stream_kill_before_final():
    """Killed after the answer was stored but before its final edit went
    out: the restart resends the stored text as one edit of the first
    event (an unstreamed resend under the first event's txnId would be
    dropped by the server, leaving the partial text standing)."""
    with Test() as t:
        proxy = t.add(FaultProxy(tma.HS.port).start())
        s = setup(t, hs_url=proxy.url)
        s.stub.script([{"when_contains": "late kill", "content": FULL,
                        "piece_chars": 5, "hold_after": 10}])
        p = s.start()
        alice = s.people["alice"]
        room = s.room_with("alice")
        alice.wait_messages_from(room, s.bot, 1)
        q = alice.say(room, "late kill please", mentions=[s.bot])
        wait_until(lambda: answer_and_edits(s, "alice", room, q)[0], 30,
                   "the first sentence; stderr=%s" % s.err())
        # Every later send hangs; the rest of the stream comes.
        proxy.add_fault("/send/", "hang", count=1000, seconds=60)
        s.stub.release()
        wait_until(lambda: s.redis.cmd("HGET", "t:job:" + q, "state")
                   == "answered", 20, "the answer to be stored; stderr=%s"
                   % s.err())
        p.kill()
        with proxy.lock:
            del proxy.faults[:]
        s.parley = None
        s.start()

        def done():
            first, edits = answer_and_edits(s, "alice", room, q)
            return (first, edits) if latest_text(edits) == FULL else None
        wait_until(done, 40, "the final edit after the restart; stderr=%s"
                   % s.err())
        time.sleep(2)
        first, edits = answer_and_edits(s, "alice", room, q)
        assert len(first) == 1, [e["content"].get("body") for e in first]
        assert latest_text(edits) == FULL


def main():
    require_parley()
    require_homeserver()
    run_matrix([test_stream_edits, test_stream_kill_restart,
                test_stream_kill_before_final], tma)


if __name__ == "__main__":
    main()
