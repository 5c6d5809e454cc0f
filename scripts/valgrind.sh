#!/bin/sh
# parley under valgrind memcheck: one IRC and one Matrix scenario
# (tests/integration/test_valgrind.py), on a build without sanitizers
# (valgrind cannot run an ASan binary).  Not part of scripts/test.sh,
# whose ctest run skips test_valgrind unless build-valgrind/parley exists:
# the extra build and the slow run would take the suite past its
# 10-minute budget.  Run it after changes to memory handling:
#
#   scripts/valgrind.sh
#
# Exit status: the test's (0 passed, 77 skipped: no valgrind, ngircd or
# Synapse, each said on stderr; anything else failed).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
build="$here/build-valgrind"

if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind.sh: valgrind is not installed" \
        "(scripts/install-deps.sh --test installs it)" >&2
    exit 77
fi
cmake -S "$here" -B "$build" -DPARLEY_SANITIZE=OFF -DPARLEY_TESTS=OFF \
    -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$build" -j"${PARLEY_JOBS:-2}" --target parley >/dev/null
PARLEY_BIN="$build/parley" PARLEY_SOURCE_DIR="$here" \
    PYTHONDONTWRITEBYTECODE=1 \
    /usr/bin/python3 "$here/tests/integration/test_valgrind.py"
