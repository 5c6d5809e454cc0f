"""Redis stopped and restarted mid-session: parley keeps answering
(without stored history while Redis is away), logs the outage once, and
stores history again once Redis is back; nothing already stored is
lost."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Parley, Redis, Stub, Test, run_cases, write_config,
                     wait_until)

KEY = "sk-test-secret-key-0123456789abcdef"
ROOM = "t:ctx:console:parley:console"


def test_redis_restart_mid_session():
    with Test() as t:
        redis = t.add(Redis(t.tmp).start())
        # Keep Redis data across its restart, as a real deployment would.
        redis_dir = redis.dir
        stub = t.add(Stub(t.tmp, api_key=KEY).start())
        conf = write_config(t.tmp, stub.base_url, redis.port)
        p = t.add(Parley(["-c", conf], env={"TEST_OPENAI_KEY": KEY,
                                            "USER": "carol"}).start())
        assert p.ask("before") == "echo: carol: before"
        assert redis.cmd("LLEN", ROOM) == 2
        redis.cmd("SAVE")
        redis.stop()
        time.sleep(0.5)
        assert p.ask("during") == "echo: carol: during"
        assert p.proc.poll() is None
        # Started again on the same port with the saved data.
        redis2 = t.add(Redis(t.tmp, port=redis.port))
        redis2.dir = redis_dir
        redis2.start()
        wait_until(lambda: "reachable again" in p.stderr(), 10,
                   "parley to notice Redis is back")
        assert p.ask("after") == "echo: carol: after"
        assert redis2.cmd("LRANGE", ROOM, 0, -1) is not None
        wait_until(lambda: redis2.cmd("LLEN", ROOM) == 4, 5,
                   "history stored again")
        last = stub.requests()[-1]["body"]["messages"]
        contents = [m["content"] for m in last]
        assert "carol: before" in contents, contents
        assert p.close() == 0
        err = p.stderr().lower()
        # The outage is logged once at WARN, not once per attempt.
        assert p.stderr().count("WARN redis") == 1, p.stderr()


if __name__ == "__main__":
    run_cases([test_redis_restart_mid_session])
