#!/usr/bin/env bash
# Shared work (ha.share_work): answers per second for 1, 2 and 3 parley
# instances on one Redis when the model is the limit (llm.max_concurrent
# 2 per instance, a 200 ms model, 60 rooms asking at once).  Builds parley
# and openai_uv (Release, build-bench/) unless PARLEY_BENCH_BUILD=DIR
# names binaries already built; share.py starts redis-server, the
# stand-in and the instances on 127.0.0.1 and stops them at the end.
# Extra arguments go to share.py (--questions, --max-concurrent,
# --delay-ms, --instances 1,2,3).  Numbers, not assertions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
build=${PARLEY_BENCH_BUILD:-}
if [ -z "$build" ]; then
    build=build-bench
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPARLEY_TESTS=OFF \
        >/dev/null
    cmake --build "$build" -j"$(nproc)" --target parley openai_uv \
        >/dev/null
fi
exec timeout --foreground -k 20 600 /usr/bin/python3 \
    scripts/bench/share.py --build "$build" "$@"
