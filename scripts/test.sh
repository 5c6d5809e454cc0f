#!/usr/bin/env bash
# Build with AddressSanitizer + UBSan and -Werror, and run every test
# (cmocka unit tests, Python integration tests against real servers, the
# style and Docker-file checks) through ctest.  The exit status is
# ctest's.  CI runs exactly this (.ci/run).
#
#   scripts/test.sh [ctest options...]     e.g. scripts/test.sh -R irc
#
# The whole suite is meant to stay under 10 minutes on 2 cores.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
jobs=${PARLEY_JOBS:-2}
start=$(date +%s)

scripts/install-deps.sh --test

cmake -S . -B build-test -DPARLEY_SANITIZE=ON -DPARLEY_WERROR=ON \
    -DCMAKE_BUILD_TYPE=Debug
cmake --build build-test -j"$jobs"

# Leaks fail a test; the first UB report stops the program with a trace.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

rc=0
ctest --test-dir build-test --output-on-failure -j"$jobs" --timeout 300 \
    "$@" 2>&1 | tee build-test/ctest.log || rc=$?

secs=$(($(date +%s) - start))
skipped=$(grep -c '\*\*\*Skipped' build-test/ctest.log || true)
if [ "$rc" = 0 ]; then
    echo "test.sh: all tests passed in ${secs}s; $skipped skipped" \
        "(each says why in build-test/Testing/Temporary/LastTest.log)"
else
    echo "test.sh: FAILED (ctest exit $rc) after ${secs}s;" \
        "log: build-test/Testing/Temporary/LastTest.log" >&2
fi
exit "$rc"
