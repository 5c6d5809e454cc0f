#!/usr/bin/env bash
# Router benchmark: many rooms waiting on the model at once.  Starts a
# private redis-server and the OpenAI stand-in (with a fixed answer delay
# that stands for the model) on loopback, builds bench_rooms, and prints
# one line per configuration, side by side, so the effect of the number
# of rooms and of llm.max_concurrent is visible in one run.
#
#   scripts/bench/rooms.sh [DELAY_SECONDS]      (default 0.1)
#
# Numbers are parley's: wall time, answers per second, latency from
# submit to send (p50/p95/p99), CPU milliseconds per answer and peak RSS.
# The stand-in is openai_uv (libuv, holds 10,000 requests); it used to be
# Python's ThreadingHTTPServer, which limited the highest rates.  For the
# whole picture (IRC, console, a reference bot) see run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
delay=${1:-0.1}
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); \
s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DPARLEY_TESTS=OFF \
    >/dev/null
cmake --build build-bench -j"$(nproc)" --target bench_rooms openai_uv \
    >/dev/null

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$tmp" >/dev/null &
pids+=($!)
build-bench/openai_uv "$tmp/port" \
    "$(/usr/bin/python3 -c "print(int(float('$delay') * 1000))")" &
pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.05; done
sport=$(cat "$tmp/port")
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break
    sleep 0.05; done

echo "model delay ${delay}s (stand-in), redis-server $(redis-server -v |
    sed 's/.*v=\([^ ]*\).*/\1/'), $(nproc) cores"
printf '%8s %6s %4s %8s %9s %8s %8s %8s %8s %7s %4s\n' messages rooms conc \
    wall_s answers/s p50_ms p95_ms p99_ms cpu_ms/a rss_MB busy
# 32 in one room: answered one after another (order kept).  100 in one
# room: over the per-room queue of 32, the rest get the busy note ("busy").
for cfg in "32 1 16" "100 1 16" "600 20 16" "2000 100 16" "2000 100 64" \
           "2000 1000 64"; do
    set -- $cfg
    redis-cli -p "$rport" flushall >/dev/null
    build-bench/bench_rooms "$rport" "$sport" "$1" "$2" "$3" \
        2>>"$tmp/bench.log" || true
done
