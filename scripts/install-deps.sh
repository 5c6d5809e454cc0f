#!/usr/bin/env bash
# Install the Debian 12 packages parley needs, and only those missing.
#
#   scripts/install-deps.sh          runtime + build dependencies
#   scripts/install-deps.sh --test   also what scripts/test.sh needs
#   scripts/install-deps.sh --bench  also what scripts/bench/run.sh needs
#
# Idempotent: dpkg-query decides what is missing, and apt-get (update +
# install) runs only when something is, so a second run installs nothing
# and takes well under a second.  Needs root only when it has to install
# (it uses sudo when run as another user and sudo exists).  The Dockerfile's
# builder stage runs this same script, so CI and the image build agree.
set -euo pipefail

# What parley links against and builds with.  One package a line, so that
# adding one is a one-line change.
BUILD_PKGS=(
    build-essential
    cmake
    pkg-config
    libcurl4-openssl-dev    # HTTP client: LLM API, Matrix
    libcjson-dev            # JSON
    libircclient-dev        # IRC sessions
    libhiredis-dev          # Redis (0.14 on Debian 12)
    libconfig-dev           # bot.conf
    libuv1-dev              # the event loop
    libssl-dev              # TLS for the IRC transport
    libmicrohttpd-dev       # /healthz and /metrics (metrics.listen)
    libcmark-dev            # Markdown -> HTML for Matrix formatted_body
    libolm-dev              # Olm/Megolm for Matrix end-to-end encryption
    redis-server            # scripts/run.sh starts a private one if needed
    ca-certificates         # verify https://api.openai.com and friends
)

# What scripts/test.sh needs on top.  Add a test's package here.
TEST_PKGS=(
    libcmocka-dev           # unit tests
    clang                   # fuzz targets (libFuzzer)
    ngircd                  # a real IRC server for the IRC tests
    redis-sentinel          # Sentinel failover tests (redis-server
                            # --sentinel is the fallback)
    python3                 # Debian's /usr/bin/python3 runs integration tests
    python3-irc             # real IRC clients in tests
    inspircd                # IRC server with SASL (with atheme) for tests
    atheme-services         # services (SaslServ) linked to inspircd
    openssl                 # test CA and certificates for IRC TLS tests
    docker-compose          # `docker-compose config` validates docker/
    git                     # scripts/checksrc.sh lists tracked sources
    chromium                # a real browser for the web chat test
    chromium-driver         # ...driven through WebDriver
    python3-selenium        # ...from Python
    python3-olm             # the encrypting Matrix client in E2EE tests
    python3-matrix-nio      # ... (nio over olm, Debian's /usr/bin/python3)
    valgrind                # memcheck of one IRC and one Matrix scenario
)

# What scripts/bench/run.sh needs on top (not the tests): gnuplot draws
# docs/performance.png, libnghttp2 gives the OpenAI stand-in its h2c side,
# h2load (a load generator in C) measures the stand-in without curl.
BENCH_PKGS=(
    gnuplot-nox             # the chart of cost and RSS against rooms
    libnghttp2-dev          # h2c in scripts/bench/openai_h2.c
    nghttp2-client          # h2load: the concurrency floor of the machine
)

usage() {
    echo "usage: $0 [--test] [--bench]" >&2
    exit 64
}

want_test=0
want_bench=0
for arg in "$@"; do
    case "$arg" in
        --test) want_test=1 ;;
        --bench) want_bench=1 ;;
        -h|--help) usage ;;
        *) echo "$0: unknown argument: $arg" >&2; usage ;;
    esac
done

pkgs=("${BUILD_PKGS[@]}")
if [ "$want_test" = 1 ]; then
    pkgs+=("${TEST_PKGS[@]}")
fi
if [ "$want_bench" = 1 ]; then
    pkgs+=("${BENCH_PKGS[@]}")
fi

# Install those of the given packages that are missing.  A package counts
# as present only in state "install ok installed"; dpkg-query fails for
# names it has never seen, which also means missing.
install_missing() {
    local p status missing=() sudo=()
    for p in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        if [ "$status" != "install ok installed" ]; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    echo "install-deps: installing ${missing[*]}"
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "install-deps: not root and no sudo; as root run:" >&2
            echo "  apt-get install ${missing[*]}" >&2
            return 1
        fi
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_missing "${pkgs[@]}"

# The Matrix tests use a real Synapse that lives beside the project, not
# in it (../shared/synapse, see its README).  Without it, or if its
# install fails, only those tests are skipped.
#
# Its own "install" step stops under `set -o pipefail` when dpkg has never
# heard of one of its packages (dpkg-query exits 1), which is the case on
# a fresh machine; so its package list (PKGS="..." in homeserver.sh) is
# installed here first, and its install step then finds nothing to do.
if [ "$want_test" = 1 ]; then
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    hs="$here/../shared/synapse/homeserver.sh"
    if [ -f "$hs" ]; then
        read -r -a hs_pkgs <<<"$(sed -n '/^PKGS="/,/"/p' "$hs" |
            sed 's/^PKGS=//; s/"//g' | tr '\n' ' ')"
        if ! { install_missing "${hs_pkgs[@]}" && bash "$hs" install; }; then
            echo "install-deps: warning: $hs install failed;" \
                "the Matrix integration tests will be skipped" >&2
        fi
    fi
fi
exit 0
