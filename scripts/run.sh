#!/usr/bin/env bash
# Install, build and run parley: the one command for trying it or running
# it by hand.
#
#   scripts/run.sh [parley options...]
#
# With ./bot.conf it runs `parley -c bot.conf`; without, `parley --console`
# (the built-in local setup: chat in this terminal; parley says what to
# set if no OPENAI_API_KEY, OPENAI_API_KEY_FILE or OPENAI_BASE_URL is set).
# Extra arguments go to parley.
#
# Redis: if the one parley is configured for (`parley --print-redis`, which
# honours PARLEY_REDIS) does not answer and is local, a private
# redis-server is started for this run: data in ./.parley/ (append-only
# file, fsync every second), a unix socket ./.parley/redis.sock and no TCP
# port; PARLEY_REDIS points parley at it, and it is stopped when parley
# exits.  The exit status is parley's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
state="$root/.parley"

log() { printf 'run.sh: %s\n' "$*" >&2; }

scripts/install-deps.sh >&2

log "building (build/, RelWithDebInfo)"
# Build output goes to stderr: in console mode stdout is the chat.
if ! out=$(cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DPARLEY_TESTS=OFF 2>&1); then
    printf '%s\n' "$out" >&2
    log "cmake configure failed"
    exit 1
fi
cmake --build build -j"$(nproc)" >&2
if [ ! -x build/parley ]; then
    log "build/parley was not built (is src/main.c there?)"
    exit 70
fi

if [ -f bot.conf ]; then
    mode=(-c bot.conf)
else
    mode=(--console)
fi

# redis-cli answers (exit 0) with PONG, or with an error such as NOAUTH,
# whenever a server listens; it exits 1 only when nothing does.
redis_answers() {
    timeout 5 redis-cli "$@" ping >/dev/null 2>&1
}

redis_pid=""
adopted_pid=""
sock_dir=""
stop_redis() {
    # SIGTERM: redis fsyncs the append-only file and exits.
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
        redis_pid=""
    fi
    if [ -n "$adopted_pid" ] &&
            [ "$(cat "/proc/$adopted_pid/comm" 2>/dev/null)" = redis-server ]
    then
        kill -TERM "$adopted_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$adopted_pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    adopted_pid=""
    if [ -n "$sock_dir" ]; then
        rm -rf "$sock_dir"
        sock_dir=""
    fi
}

start_private_redis() {
    local sock="$state/redis.sock" old
    mkdir -p "$state"
    chmod 700 "$state"
    # sun_path holds 107 bytes; a deep checkout gets a short socket dir.
    if [ "${#sock}" -gt 100 ]; then
        sock_dir=$(mktemp -d "${TMPDIR:-/tmp}/parley-redis.XXXXXX")
        sock="$sock_dir/redis.sock"
    fi
    if redis_answers -s "$sock"; then
        # Left behind by a run that was killed: adopt it.
        log "using the private Redis already running on $sock"
        adopted_pid=$(cat "$state/redis.pid" 2>/dev/null || true)
        export PARLEY_REDIS="unix:$sock"
        return 0
    fi
    # Two servers on one append-only file would corrupt it.
    if [ -f "$state/redis.pid" ]; then
        old=$(cat "$state/redis.pid" 2>/dev/null || true)
        if [ -n "$old" ] && [ "$(cat "/proc/$old/comm" 2>/dev/null)" = \
                redis-server ]; then
            log "a Redis from an earlier run (pid $old) still uses .parley/;"
            log "stop it (kill $old) and run again"
            exit 69
        fi
    fi
    rm -f "$sock"
    log "starting a private Redis (data in .parley/, socket $sock)"
    # Its own session, so a Ctrl-C in this terminal reaches parley (which
    # then drains and closes Redis cleanly) but not Redis itself.
    setsid redis-server --port 0 --unixsocket "$sock" --unixsocketperm 700 \
        --dir "$state" --appendonly yes --appendfsync everysec \
        --daemonize no --logfile "$state/redis.log" \
        --pidfile "$state/redis.pid" </dev/null &
    redis_pid=$!
    for _ in $(seq 1 50); do
        if redis_answers -s "$sock"; then
            export PARLEY_REDIS="unix:$sock"
            return 0
        fi
        if ! kill -0 "$redis_pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    log "the private Redis did not start; last lines of .parley/redis.log:"
    tail -n 5 "$state/redis.log" >&2 || true
    stop_redis
    exit 69
}

trap 'stop_redis' EXIT

# A configuration parley rejects (no model configured, a bad bot.conf)
# needs no Redis: let parley explain, and exit with its status.
if ! build/parley "${mode[@]}" "$@" --check-config </dev/null &>/dev/null; then
    exec build/parley "${mode[@]}" "$@"
fi

# Where parley will look for Redis: "tcp HOST PORT" or "unix PATH".
if where=$(build/parley "${mode[@]}" "$@" --print-redis </dev/null 2>/dev/null)
then
    :
else
    log "parley --print-redis failed; assuming Redis on 127.0.0.1:6379"
    where="tcp 127.0.0.1 6379"
fi
read -r kind rest <<<"$where" || true
case "$kind" in
    unix) cli=(-s "$rest"); local_redis=1 ;;
    tcp)
        host=${rest% *}
        cli=(-h "$host" -p "${rest##* }")
        case "$host" in
            127.0.0.1|localhost|::1|'[::1]') local_redis=1 ;;
            *) local_redis=0 ;;
        esac
        ;;
    *)
        log "parley --print-redis said '$where'; not managing Redis"
        cli=()
        local_redis=0
        ;;
esac
if [ "${#cli[@]}" -gt 0 ] && ! redis_answers "${cli[@]}"; then
    if [ "$local_redis" = 1 ]; then
        start_private_redis
    else
        log "Redis at ${where#* } does not answer; parley will retry"
    fi
fi

# Whether this script is in its terminal's foreground process group: then
# a Ctrl-C there has reached parley too (same process group).
# shellcheck disable=SC2317  # called from a trap
in_tty_foreground() {
    local stat pgrp tpgid
    stat=$(cat "/proc/$$/stat" 2>/dev/null) || return 1
    # Fields after "pid (comm) ": state ppid pgrp session tty_nr tpgid.
    read -r _ _ pgrp _ _ tpgid _ <<<"${stat##*) }"
    [ "$pgrp" = "$tpgid" ]
}

# parley runs as a child so that the EXIT trap can stop Redis after it.
# A background job would start with SIGINT ignored and stdin on /dev/null:
# "trap -" and "<&0" undo both, so it behaves as in the foreground.  TERM
# and HUP sent to this script are passed on; INT too, unless it came from
# the terminal, which already sent it to parley: a second one would cut
# parley's drain short.
(trap - INT QUIT; exec build/parley "${mode[@]}" "$@") <&0 &
bot_pid=$!
# shellcheck disable=SC2317  # called from the traps below
forward() {
    kill -s "$1" "$bot_pid" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward HUP' HUP
trap 'in_tty_foreground || forward INT' INT

while :; do
    wait "$bot_pid" && rc=0 || rc=$?
    # wait returns > 128 when a trapped signal interrupts it, with parley
    # possibly still running; once parley is gone, wait gives its status.
    if [ "$rc" -gt 128 ] && kill -0 "$bot_pid" 2>/dev/null; then
        continue
    fi
    if [ "$rc" -gt 128 ]; then
        r=0
        wait "$bot_pid" 2>/dev/null || r=$?
        if [ "$r" != 127 ]; then rc=$r; fi
    fi
    break
done
trap - TERM HUP INT
stop_redis
exit "$rc"
