#!/bin/sh
# Coverage-guided fuzzing of one parser with libFuzzer (clang), for as long
# as you like:
#
#   scripts/fuzz.sh TARGET SECONDS     e.g. scripts/fuzz.sh irc_line 600
#   scripts/fuzz.sh all SECONDS        every target in turn, SECONDS each
#   scripts/fuzz.sh list               the targets
#
# TARGET is a tests/fuzz/fuzz_<TARGET>.c.  The build goes to build-fuzz/
# (clang, ASan + UBSan + libFuzzer); each target's working corpus is
# build-fuzz/corpus/<TARGET>, seeded from tests/fuzz/corpus/<TARGET> and
# kept between runs so coverage accumulates.  A crash, leak or timeout
# stops the run and leaves its input in build-fuzz/crashes/<TARGET>/; copy
# it into tests/fuzz/corpus/<TARGET>/ once fixed, so ctest replays it for
# good.  The last line of each run ("execs, cov, ft, corpus") is printed
# as a summary, and the exit status is non-zero when any target found
# something.  ctest replays the checked-in corpus on every test run; this
# script is the long version.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
build="$here/build-fuzz"
jobs=${FUZZ_BUILD_JOBS:-2}

usage() {
    echo "usage: $0 TARGET|all SECONDS   or   $0 list" >&2
    exit 2
}

targets() {
    for f in "$here"/tests/fuzz/fuzz_*.c; do
        n=$(basename "$f" .c)
        echo "${n#fuzz_}"
    done
}

[ $# -ge 1 ] || usage
if [ "$1" = list ]; then
    targets
    exit 0
fi
[ $# -eq 2 ] || usage
secs=$2
case $secs in
    ''|*[!0-9]*) echo "fuzz: SECONDS must be a whole number" >&2; exit 2 ;;
esac

if ! command -v clang >/dev/null 2>&1; then
    echo "fuzz: clang is needed (apt-get install clang)" >&2
    exit 2
fi

CC=clang cmake -S "$here" -B "$build" -DPARLEY_FUZZ=ON -DPARLEY_TESTS=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$jobs" >/dev/null

run_one() {
    name=$1
    bin="$build/tests/fuzz/fuzz_$name"
    if [ ! -x "$bin" ]; then
        echo "fuzz: no target '$name' (try: $0 list)" >&2
        return 2
    fi
    corpus="$build/corpus/$name"
    crashes="$build/crashes/$name"
    log="$build/logs/$name.log"
    mkdir -p "$corpus" "$crashes" "$build/logs"
    seeds="$here/tests/fuzz/corpus/$name"
    [ -d "$seeds" ] || seeds=
    status=0
    # libconfig leaks tokens on some syntax errors (suppressed in
    # fuzz_config.c), and every input that leaks makes libFuzzer stop the
    # world for a full leak check: 16 runs/s instead of thousands.  Leaks
    # of our own in config_load are still caught by the ctest replay of
    # the corpus, which checks at exit.
    extra=
    [ "$name" = config ] && extra=-detect_leaks=0
    # -rss_limit_mb bounds a parser that allocates without limit; a
    # 10-second input is a hang worth reporting.
    "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 $extra \
        -print_final_stats=1 -artifact_prefix="$crashes/" \
        "$corpus" $seeds >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    if [ "$status" -eq 0 ]; then
        echo "fuzz $name: ${secs}s, ${execs:-?} execs, no finding;" \
            "last: ${last:-none}"
    else
        echo "fuzz $name: FOUND something (exit $status) after" \
            "${execs:-?} execs; input in $crashes, log in $log"
        grep -E 'ERROR|SUMMARY' "$log" | head -n 5 >&2 || true
    fi
    return "$status"
}

rc=0
if [ "$1" = all ]; then
    for t in $(targets); do
        run_one "$t" || rc=1
    done
else
    run_one "$1" || rc=1
fi
exit "$rc"
