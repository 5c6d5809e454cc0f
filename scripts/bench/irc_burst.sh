#!/usr/bin/env bash
# IRC benchmark: 20 people address the bot in one channel at the same
# moment (real ngircd with its own input pacing lifted, real Redis, the
# OpenAI stand-in answering in 1 s).  Builds parley (Release) and runs
# tests/integration/test_irc_burst.py, which prints one line:
#
#   BENCH irc_burst: 20 people in one channel, model 1.0 s: last answer
#   after N s, up to M model requests at once (flood_burst 5,
#   flood_rate_ms 1000; ngircd MaxPenaltyTime 0)
#
# At the default pacing the floor is (20 - burst) lines at 1 line/s after
# the first answer, about 16 s; a router that runs one job per room adds
# the model's 1 s per person on top instead of overlapping it.
#
#   scripts/bench/irc_burst.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DPARLEY_TESTS=OFF \
    >/dev/null
cmake --build build-bench -j"$(nproc)" --target parley >/dev/null
PARLEY_BIN="$PWD/build-bench/parley" /usr/bin/python3 \
    tests/integration/test_irc_burst.py | grep -E '^(BENCH|ok|FAIL|[0-9]+ passed)'
