#!/usr/bin/env bash
# Matrix burst benchmark: 20 people address the bot at the same moment,
# the OpenAI stand-in taking 1 s per answer, against a real Synapse
# (../shared/synapse) and redis-server on loopback.  Prints one line per
# run: the 20 in ONE room (default context.max_parallel_per_room, then
# raised to 20), and the same 20 questions spread over 20 rooms.  Times
# count from the first question (homeserver timestamps): last_answer_s to
# the last answer, questions_arrived_s to the last question (Synapse
# persists one room's events one after another, so a burst in one room
# reaches parley spread out; in 20 rooms it does not), models_done_s to
# the last model answer (the stand-in's records); peak_in_flight is the
# most model requests the stand-in saw at once.  Settings that bound the
# figures are printed on each line.
#
#   scripts/bench/matrix_burst.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DPARLEY_TESTS=OFF \
    >/dev/null
cmake --build build-bench -j"$(nproc)" --target parley >/dev/null
echo "$(nproc) cores, redis-server $(redis-server -v |
    sed 's/.*v=\([^ ]*\).*/\1/')"
PARLEY_BIN=$PWD/build-bench/parley PARLEY_SOURCE_DIR=$PWD \
PYTHONDONTWRITEBYTECODE=1 \
    /usr/bin/python3 tests/integration/test_matrix_burst.py --bench
