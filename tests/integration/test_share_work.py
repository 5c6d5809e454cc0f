"""Shared work (ha.share_work) across two parley processes on one Redis.

The owner holds the platform connection (the web chat: each browser
session is its own room, so several questions run at once); the worker
process has only an idle loopback adapter and works for the owner.
Checked: every question is answered once through the owner while the
model is asked by both processes (/metrics of each, the stand-in's
records); a worker killed with SIGKILL while holding jobs leaves them to
the owner after ha.claim_idle_ms, and still each question gets exactly
one answer and one (question, answer) pair in its history; one person's
questions are answered and stored in the order asked.  Real redis-server
and the OpenAI stand-in."""

import copy
import hashlib
import os
import re
import shutil
import signal
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, free_port,  # noqa: E402
                     run_cases, skip, wait_port, wait_until,
                     write_config)
from pictures import png  # noqa: E402
from web_helpers import Events, Web  # noqa: E402


def ha_block(claim_idle_ms=30000):
    return ("ha = { share_work = true; claim_idle_ms = %d; };"
            % claim_idle_ms)


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                timeout=5) as r:
        return r.read().decode()


def metric(text, name):
    """Sum of every sample of name (all label sets)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(name), line)
        if m:
            total += float(m.group(2))
    return total


class Owner(Web):
    """parley with the web chat, sharing its work."""

    def __init__(self, t, redis, stub, max_concurrent, claim_idle_ms,
                 llm_more=""):
        self.redis, self.stub = redis, stub
        self.port = free_port()
        self.mport = free_port()
        self.host = "127.0.0.1:%d" % self.port
        self.origin = "http://" + self.host
        adapters = ('{ type = "web"; listen = "127.0.0.1:%d"; '
                    'stream = false; max_per_ip = 64; '
                    'max_connections = 128; }' % self.port)
        extra = ha_block(claim_idle_ms) + (
            ' metrics = { listen = "127.0.0.1:%d"; };' % self.mport)
        conf = write_config(t.tmp, stub.base_url, redis.port,
                            adapters=adapters, name="owner.conf",
                            extra=extra, timeout_ms=15000,
                            llm_extra="max_concurrent = %d; %s"
                            % (max_concurrent, llm_more))
        self.parley = t.add(Parley(["-c", conf]).start())
        wait_port(self.port)
        wait_port(self.mport)
        self.cookie = None

    def session(self):
        """A new browser: its own cookie, so its own room."""
        s = copy.copy(self)
        s.login()
        return s


def start_worker(t, redis, stub, max_concurrent, claim_idle_ms, name):
    """parley with only an idle loopback adapter: it just works."""
    mport = free_port()
    extra = ha_block(claim_idle_ms) + (
        ' metrics = { listen = "127.0.0.1:%d"; };' % mport)
    conf = write_config(t.tmp, stub.base_url, redis.port,
                        adapters='{ type = "loopback"; name = "idle"; }',
                        name=name + ".conf", extra=extra, timeout_ms=15000,
                        llm_extra="max_concurrent = %d;" % max_concurrent)
    p = t.add(Parley(["-c", conf]).start())
    wait_port(mport)
    return p, mport


def ask_all(owner, texts):
    """One session per question; returns [(session, events, id)]."""
    out = []
    for text in texts:
        s = owner.session()
        ev = Events(s)
        out.append((s, ev, text))
    time.sleep(0.3)
    return [(s, ev, s.send(text), text) for s, ev, text in out]


def reply_text(d):
    """A reply event's text (answers come as HTML, notices as text)."""
    if "text" in d:
        return d["text"]
    return re.sub(r"<[^>]*>", "", d.get("html", "")).strip()


def check_answered_once(asked, timeout=30):
    for s, ev, qid, text in asked:
        ev.wait(lambda e: e[0] == "reply" and e[1]["id"] == qid, timeout)
    # A moment for a second answer to show up if there were one.
    time.sleep(1.0)
    for s, ev, qid, text in asked:
        replies = [d for d in ev.of("reply") if d["id"] == qid]
        assert len(replies) == 1, (text, replies)
        assert replies[0]["notice"] is False, replies
        assert reply_text(replies[0]) == "echo: User: " + text, replies
        h = s.history()["messages"]
        assert [m["role"] for m in h] == ["user", "assistant"], (text, h)
        assert h[0]["text"] == text, h
        ev.close()


def consumers(redis):
    """{consumer name: pending} of the workers group."""
    out = {}
    try:
        rows = redis.cmd("XINFO", "CONSUMERS", "t:work:jobs", "workers")
    except RuntimeError:
        return out
    for row in rows or []:
        d = dict(zip(row[0::2], row[1::2]))
        out[d["name"]] = d["pending"]
    return out


def test_two_instances_share_the_model():
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, delay=0.4).start())
        # The owner can ask the model one at a time, the worker three:
        # with eight rooms asking at once, both must work.
        owner = Owner(t, redis, stub, 1, 30000)
        worker, wport = start_worker(t, redis, stub, 3, 30000, "worker")
        wait_until(lambda: len(consumers(redis)) >= 0 and
                   redis.cmd("EXISTS", "t:work:jobs") == 1, 10,
                   "the work:jobs stream")
        texts = ["question %d" % i for i in range(8)]
        asked = ask_all(owner, texts)
        check_answered_once(asked)
        om, wm = metrics(owner.mport), metrics(wport)
        o_llm = metric(om, "parley_llm_requests_total")
        w_llm = metric(wm, "parley_llm_requests_total")
        assert o_llm >= 1 and w_llm >= 1, (o_llm, w_llm)
        assert o_llm + w_llm == len(texts), (o_llm, w_llm)
        assert metric(wm, "parley_work_for_others_total") == w_llm, wm
        assert metric(om, "parley_messages_answered_total") == len(texts)
        assert len(stub.requests()) == len(texts)
        # Every job record is done, every entry acked.
        wait_until(lambda: all(v == 0 for v in consumers(redis).values()),
                   10, "no pending entries")
        for key in redis.cmd("KEYS", "t:job:*"):
            assert redis.cmd("HGET", key, "state") == "done", key
        assert owner.terminate() == 0
        assert worker.proc.send_signal(signal.SIGTERM) is None
        assert worker.proc.wait(20) == 0
        assert "API_KEY" not in owner.parley.stderr()


def test_killed_worker_jobs_are_finished_once():
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, delay=3.0).start())
        owner = Owner(t, redis, stub, 1, 1000)
        worker, wport = start_worker(t, redis, stub, 6, 1000, "victim")
        wait_until(lambda: redis.cmd("EXISTS", "t:work:jobs") == 1, 10,
                   "the work:jobs stream")
        victim = "-%d-" % worker.proc.pid
        texts = ["killed %d" % i for i in range(6)]
        asked = ask_all(owner, texts)
        # The worker holds jobs (read, model asked, not finished).
        held = wait_until(
            lambda: sum(n for c, n in consumers(redis).items()
                        if victim in c) >= 2 and consumers(redis), 10,
            "jobs held by the worker")
        worker.kill()
        check_answered_once(asked, timeout=60)
        om = metrics(owner.mport)
        assert metric(om, "parley_work_claimed_total") >= 1, (held, om)
        assert metric(om, "parley_messages_answered_total") == len(texts)
        # The owner's worker answered what the dead one held: its model
        # calls are the ones the victim never finished.
        assert metric(om, "parley_llm_requests_total") >= 2
        assert "took over" in owner.parley.stderr()
        assert owner.terminate() == 0


def test_paused_worker_finishing_late_changes_nothing():
    """A worker stopped (SIGSTOP) past ha.claim_idle_ms while the model
    answers it: the owner takes its jobs over and answers them; when the
    worker runs again and finishes the same jobs, the job-state check in
    the finish script keeps it from storing the exchange a second time,
    and the owner drops its late answer."""
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, delay=2.0).start())
        owner = Owner(t, redis, stub, 1, 1000)
        worker, wport = start_worker(t, redis, stub, 6, 1000, "sleeper")
        wait_until(lambda: redis.cmd("EXISTS", "t:work:jobs") == 1, 10,
                   "the work:jobs stream")
        sleeper = "-%d-" % worker.proc.pid
        texts = ["paused %d" % i for i in range(3)]
        asked = ask_all(owner, texts)
        held = wait_until(lambda: sum(n for c, n in consumers(redis).items()
                                      if sleeper in c) >= 2 and
                          sum(n for c, n in consumers(redis).items()
                              if sleeper in c), 10,
                          "jobs held by the worker")
        worker.proc.send_signal(signal.SIGSTOP)
        try:
            for s, ev, qid, text in asked:
                ev.wait(lambda e: e[0] == "reply" and e[1]["id"] == qid,
                        60)
        finally:
            worker.proc.send_signal(signal.SIGCONT)
        # The worker gets its answers late and finishes the same jobs.
        wait_until(lambda: metric(metrics(wport),
                                  "parley_llm_requests_total") >= held,
                   90, "the late worker's answers")
        wait_until(lambda: all(n == 0 for n in consumers(redis).values()),
                   10, "every entry acked")
        assert len(stub.requests()) >= len(texts) + held    # asked twice
        check_answered_once(asked)
        assert owner.terminate() == 0


def test_redis_restarted_empty_jobs_queued_again():
    """Redis restarts without its data while questions wait (the stream,
    the groups and the job records are gone): the owner makes the groups
    again and queues its waiting jobs once more; each is answered once."""
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, delay=1.5).start())
        owner = Owner(t, redis, stub, 2, 2000)
        worker, _ = start_worker(t, redis, stub, 2, 2000, "worker")
        wait_until(lambda: redis.cmd("EXISTS", "t:work:jobs") == 1, 10,
                   "the work:jobs stream")
        texts = ["lost %d" % i for i in range(4)]
        asked = ask_all(owner, texts)
        wait_until(lambda: sum(consumers(redis).values()) >= 2, 10,
                   "jobs being worked on")
        redis.stop()
        time.sleep(0.5)
        redis = t.add(Redis(t.tmp, port=redis.port).start())
        check_answered_once(asked, timeout=60)
        assert "queueing" in owner.parley.stderr()
        assert owner.terminate() == 0


def test_one_person_in_order():
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, delay=0.2).start())
        owner = Owner(t, redis, stub, 2, 30000)
        worker, _ = start_worker(t, redis, stub, 4, 30000, "worker")
        wait_until(lambda: redis.cmd("EXISTS", "t:work:jobs") == 1, 10,
                   "the work:jobs stream")
        s = owner.session()
        ev = Events(s)
        time.sleep(0.3)
        texts = ["first", "second", "third", "fourth"]
        ids = [s.send(text) for text in texts]
        for qid in ids:
            ev.wait(lambda e: e[0] == "reply" and e[1]["id"] == qid, 30)
        replies = [d for d in ev.of("reply")]
        assert [reply_text(d) for d in replies] == \
            ["echo: User: " + x for x in texts], replies
        h = s.history()["messages"]
        assert [m["text"] for m in h if m["role"] == "user"] == texts, h
        # Each question saw the exchanges before it.
        last = stub.requests()[-1]["body"]["messages"]
        said = [m["content"] for m in last if m["role"] == "user"]
        assert any("third" in c for c in said), said
        ev.close()
        assert owner.terminate() == 0


def test_picture_answered_where_it_arrived():
    """A question with a picture is not shared: the picture was fetched
    through the owner's adapter and the shared job record carries none,
    so a worker elsewhere would ask the model without it.  The owner asks
    the model itself, with the picture; the worker asks nothing."""
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        stub = t.add(Stub(t.tmp, delay=0.2).start())
        owner = Owner(t, redis, stub, 1, 30000,
                      llm_more='vision_models = [ "test-model" ];')
        worker, wport = start_worker(t, redis, stub, 4, 30000, "worker")
        wait_until(lambda: redis.cmd("EXISTS", "t:work:jobs") == 1, 10,
                   "the work:jobs stream")
        s = owner.session()
        ev = Events(s)
        time.sleep(0.3)
        pic = png(20, 20, 3)
        status, _, body = s.request(
            "POST", "/api/picture?name=p.png&text=what%20is%20it%3F", pic,
            headers={"Content-Type": "image/png"})
        assert status == 202, (status, body)
        ev.wait(lambda e: e[0] == "reply", 30)
        reqs = stub.requests()
        assert len(reqs) == 1, reqs
        assert reqs[0]["images"][0]["sha256"] == \
            hashlib.sha256(pic).hexdigest(), reqs[0]
        assert metric(metrics(owner.mport), "parley_llm_requests_total") == 1
        assert metric(metrics(wport), "parley_llm_requests_total") == 0
        ev.close()
        assert owner.terminate() == 0


if __name__ == "__main__":
    if not shutil.which("redis-server"):
        skip("redis-server not installed")
    run_cases([test_two_instances_share_the_model,
               test_killed_worker_jobs_are_finished_once,
               test_paused_worker_finishing_late_changes_nothing,
               test_redis_restarted_empty_jobs_queued_again,
               test_picture_answered_where_it_arrived,
               test_one_person_in_order])
