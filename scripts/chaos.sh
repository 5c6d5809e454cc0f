#!/usr/bin/env bash
# The long chaos run: N addressed questions (default 300) spread over 3
# Matrix rooms and 2 IRC channels while parley is killed with SIGKILL at
# random moments (KILLS, default N/30 and at least 5) and restarted at
# once, against a real Synapse (../shared/synapse), ngircd and
# redis-server.  Afterwards every Matrix question has exactly one answer
# and no IRC question more than one (tests/integration/test_chaos.py says
# what IRC can and cannot guarantee).  The seed is printed; SEED replays a
# run.  Uses the sanitizer build (build-test) unless PARLEY_BIN is set.
#
#   scripts/chaos.sh [N]           e.g. scripts/chaos.sh 1000
#   KILLS=20 SEED=4242 scripts/chaos.sh 500
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n=${1:-300}
kills=${KILLS:-$(( n / 30 > 5 ? n / 30 : 5 ))}
if [ -z "${PARLEY_BIN:-}" ]; then
    cmake -S . -B build-test -DPARLEY_SANITIZE=ON >/dev/null
    cmake --build build-test -j"$(nproc)" --target parley >/dev/null
    PARLEY_BIN=$PWD/build-test/parley
fi
export PARLEY_BIN PARLEY_SOURCE_DIR=$PWD PYTHONDONTWRITEBYTECODE=1
export CHAOS_MESSAGES=$n CHAOS_KILLS=$kills
[ -n "${SEED:-}" ] && export CHAOS_SEED=$SEED
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
exec nice -n 10 /usr/bin/python3 tests/integration/test_chaos.py
