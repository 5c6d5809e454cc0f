"""A burst in one Matrix room: 20 people address the bot at the same
moment, with the OpenAI stand-in taking 1 s per answer.  Each person gets
exactly one answer, in reply to their own event and mentioning them, and
the model requests overlap (the stand-in records when each request
started and finished): a room does not answer its people one after
another.  Then 8 of them ask twice in a row, all at once: each person's
answers come in the order asked (adapter.h), parallel sends or not.  The assertion is on overlap, never on a wall-clock time; the
time to the last answer is printed.

Real Synapse from ../shared/synapse (its rc_message is generous unless
started strict), real redis-server, the stand-in with
request_queue_size 128.  Run as a benchmark (both the one-room burst and
the same 20 questions spread over 20 rooms, one line each):

    tests/integration/test_matrix_burst.py --bench   (scripts/bench/matrix_burst.sh)
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_matrix_adapter as tma
from harness import Test, require_parley, run_cases, wait_until
from matrix_hs import Homeserver, reply_target, require_homeserver

N = 20
DELAY = 1.0
NAMES = tuple("p%02d" % i for i in range(N))


def max_in_flight(intervals):
    """Most requests in flight at once, from (start, end) pairs."""
    edges = sorted([(s, 1) for s, _ in intervals] +
                   [(e, -1) for _, e in intervals])
    now = peak = 0
    for _, d in edges:
        now += d
        peak = max(peak, now)
    return peak


def model_requests(stub, marker):
    """(start, end) of the stand-in's requests whose last turn has marker."""
    out = []
    for r in stub.requests():
        msgs = (r.get("body") or {}).get("messages") or []
        if msgs and marker in str(msgs[-1].get("content")) and \
                r.get("finished"):
            out.append((r["timestamp"], r["finished"]))
    return out


def bot_events(client, room, bot):
    return [e for e in client.timeline(room, limit=400)
            if e.get("type") == "m.room.message" and e.get("sender") == bot]


def fire(pairs, text, bot):
    """Every (client, room) says text (plus its user id) to the bot at the
    same moment (a barrier); returns [(client, room, event_id)]."""
    barrier = threading.Barrier(len(pairs))
    out = [None] * len(pairs)
    errors = []

    def one(i, c, room):
        try:
            barrier.wait(30)
            out[i] = (c, room, c.say(room, "%s %s" % (text, c.user_id),
                                     mentions=[bot]))
        except Exception as e:          # reported below, not lost
            errors.append(e)
    threads = [threading.Thread(target=one, args=(i, c, r))
               for i, (c, r) in enumerate(pairs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    return out


def settings(s):
    conf = open(s.conf).read()
    par = "8 (default)"
    if "max_parallel_per_room" in conf:
        par = conf.split("max_parallel_per_room = ")[1].split(";")[0]
    return ("Synapse 1.66 rc_message 100/s burst 1000, stand-in delay "
            "%.1fs request_queue_size 128, context.max_parallel_per_room "
            "%s, llm.max_concurrent 32" % (DELAY, par))


def setup(t, parallel=None):
    s = tma.Setup(t, people=NAMES, stub_delay=DELAY)
    with open(s.conf) as f:
        conf = f.read()
    conf = conf.replace('api_key_env = "TEST_OPENAI_KEY";',
                        'api_key_env = "TEST_OPENAI_KEY";\n'
                        '    max_concurrent = 32;')
    if parallel:
        conf = conf.replace("context = { ", "context = { "
                            "max_parallel_per_room = %d; " % parallel)
    with open(s.conf, "w") as f:
        f.write(conf)
    s.start()
    return s


# Homeserver times of the last check_answers, for the benchmark line.
TIMES = {}


def check_answers(s, asked, timeout=90):
    """Wait until every question has an answer; exactly one each, in
    reply to it, mentioning the asker.  Returns the seconds from the
    first question to the last answer (homeserver timestamps)."""
    reader = {}
    for c, room, _ in asked:
        reader.setdefault(room, c)
    events = {}

    def all_answered():
        for room, c in reader.items():
            events[room] = c.timeline(room, limit=400)
        got = {reply_target(e) for evs in events.values() for e in evs
               if e.get("sender") == s.bot}
        return all(ev in got for _, _, ev in asked) or None
    wait_until(all_answered, timeout, "every question answered; stderr=%s"
               % s.err())
    time.sleep(1.5)             # a duplicate would show up by now
    all_answered()
    first_q, last_q, last_a = None, 0, 0
    for c, room, ev in asked:
        evs = events[room]
        answers = [e for e in evs if e.get("sender") == s.bot and
                   e.get("type") == "m.room.message" and
                   reply_target(e) == ev]
        assert len(answers) == 1, (c.user_id, len(answers))
        a = answers[0]
        assert a["content"]["m.mentions"] == {"user_ids": [c.user_id]}, a
        assert c.user_id in a["content"]["body"], a     # its own echo
        q = [e for e in evs if e.get("event_id") == ev][0]
        ts = q["origin_server_ts"]
        first_q = ts if first_q is None else min(first_q, ts)
        last_q = max(last_q, ts)
        last_a = max(last_a, a["origin_server_ts"])
    TIMES["first_q"] = first_q / 1000.0
    TIMES["q_spread"] = (last_q - first_q) / 1000.0
    return (last_a - first_q) / 1000.0


def one_room(t, parallel=None):
    s = setup(t, parallel)
    room = s.room_with(NAMES[0], others=NAMES[1:])
    s.last_room = room
    s.people[NAMES[0]].wait_messages_from(room, s.bot, 1)     # greeting
    asked = fire([(s.people[n], room) for n in NAMES], "burst question",
                 s.bot)
    secs = check_answers(s, asked)
    spans = model_requests(s.stub, "burst question")
    assert len(spans) == N, "%d model requests for %d questions" % (
        len(spans), N)
    peak = max_in_flight(spans)
    return s, secs, peak


def two_each(s, room, people):
    """Each person asks twice in a row, all at once: one person's answers
    arrive in the order asked (adapter.h), whatever the parallelism."""
    pairs = [(s.people[n], room) for n in people]
    firsts = fire(pairs, "first question", s.bot)
    seconds = fire(pairs, "second question", s.bot)

    def answered():
        evs = s.people[people[0]].timeline(room, limit=400)
        got = [reply_target(e) for e in evs if e.get("sender") == s.bot]
        ok = all(ev in got for _, _, ev in firsts + seconds)
        return got if ok else None
    order = wait_until(answered, 90, "every follow-up answered; stderr=%s"
                       % s.err())
    for (c, _, q1), (_, _, q2) in zip(firsts, seconds):
        assert order.index(q1) < order.index(q2), \
            "%s: the second answer came first" % c.user_id


def test_burst_one_room():
    with Test() as t:
        s, secs, peak = one_room(t)
        print("matrix burst: %d people, one room: last answer after "
              "%.1f s, %d model requests in flight at most (%s)"
              % (N, secs, peak, settings(s)), flush=True)
        # Different people in one room are answered in parallel.
        assert peak > 1, "model requests never overlapped: the room " \
            "answered one person at a time (%.1f s)" % secs
        two_each(s, s.last_room, NAMES[:8])


def twenty_rooms(t):
    s = setup(t)
    rooms = {}
    for n in NAMES:
        rooms[n] = s.room_with(n)
    for n in NAMES:
        s.people[n].wait_messages_from(rooms[n], s.bot, 1, timeout=60)
    asked = fire([(s.people[n], rooms[n]) for n in NAMES],
                 "burst question", s.bot)
    secs = check_answers(s, asked)
    peak = max_in_flight(model_requests(s.stub, "burst question"))
    return s, secs, peak


def bench_line(kind, rooms, s, secs, peak):
    spans = model_requests(s.stub, "burst question")
    model_done = max(e for _, e in spans) - TIMES["first_q"]
    print("matrix_burst %-10s people=%d rooms=%-2d last_answer_s=%.1f "
          "questions_arrived_s=%.1f models_done_s=%.1f peak_in_flight=%d  "
          "[%s]" % (kind, N, rooms, secs, TIMES["q_spread"], model_done,
                    peak, settings(s)), flush=True)


def bench():
    with Test() as t:
        s, secs, peak = one_room(t)
        bench_line("one_room", 1, s, secs, peak)
    with Test() as t:
        s, secs, peak = one_room(t, parallel=N)
        bench_line("one_room", 1, s, secs, peak)
    with Test() as t:
        s, secs, peak = twenty_rooms(t)
        bench_line("many_rooms", N, s, secs, peak)


def main():
    code = 1
    require_parley()
    require_homeserver()
    with Test() as t:
        tma.HS = t.add(Homeserver(t.tmp).start())
        try:
            if "--bench" in sys.argv:
                bench()
                code = 0
            else:
                run_cases([test_burst_one_room])
        except SystemExit as e:
            code = e.code
    sys.exit(code)


if __name__ == "__main__":
    main()
