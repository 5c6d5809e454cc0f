#!/usr/bin/env bash
# One command for what parley costs end to end and how it grows, side by
# side with a reference bot (scripts/bench/refbot.py): builds parley and
# the bench programs (Release, build-bench/), then bench.py starts
# redis-server, ngircd and the OpenAI stand-in on 127.0.0.1, measures,
# prints one Markdown table and stops everything, also on failure or
# Ctrl-C.  Bounded: about 4 minutes on 2 cores by default.
#
#   scripts/bench/run.sh            the figures of README.md "Performance"
#   scripts/bench/run.sh --long     more messages (about 8 minutes)
#   scripts/bench/run.sh --smoke    seconds, tiny numbers: checks that the
#                                   table is produced (ctest runs it)
#
# The default and --long runs also draw docs/performance.png with gnuplot
# (cost per answer and peak RSS against rooms in flight; BENCH_PLOT=FILE
# draws it elsewhere).  PARLEY_BENCH_CURL_LIB=DIR: see bench.py (HTTP/2).
#
# PARLEY_BENCH_BUILD=DIR uses binaries already built in DIR (parley,
# bench_rooms, openai_uv) instead of building.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mode=()
limit=900
plot=(--plot "${BENCH_PLOT:-docs/performance.png}")
case "${1:-}" in
    --smoke) mode=(--smoke); limit=240; plot=() ;;
    --long) mode=(--long); limit=1200 ;;
    "") ;;
    *) echo "usage: $0 [--smoke|--long]" >&2; exit 64 ;;
esac
build=${PARLEY_BENCH_BUILD:-}
if [ -z "$build" ]; then
    build=build-bench
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPARLEY_TESTS=OFF \
        >/dev/null
    cmake --build "$build" -j"$(nproc)" --target parley bench_rooms \
        openai_uv rss_floor_curl rss_floor_libs >/dev/null
fi
# timeout sends TERM to bench.py, which stops what it started.
exec timeout --foreground -k 20 "$limit" /usr/bin/python3 \
    scripts/bench/bench.py --build "$build" "${mode[@]}" "${plot[@]}"
