#!/usr/bin/env bash
# Start or stop the Docker engine the tests run against (see ../shared/design/TEST-ENGINE.md).
#
#   scripts/engine.sh start   install Debian's docker.io if dockerd is missing, put a test-only
#                             nvidia-container-runtime-hook stand-in first on dockerd's PATH (so the
#                             engine registers its "nvidia" device driver without a GPU), start
#                             dockerd in the background and wait until it answers
#   scripts/engine.sh stop    stop the dockerd this script started (only that PID)
#   scripts/engine.sh status
#
# An engine that already answers is used as it is and never stopped by this script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${COMPOSEGEN_WORK:-$ROOT/.ci-work}"
PIDFILE="$WORK/dockerd.pid"
LOG="$WORK/dockerd.log"
HOOKDIR="$WORK/hook-bin"

say() { printf 'engine: %s\n' "$*" >&2; }

engine_answers() { timeout 5 docker version >/dev/null 2>&1; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        say "starting an engine needs root (or start one yourself); engine tests will skip"
        exit 3
    fi
}

# dockerd + containerd + runc, and a static busybox for the tiny test image
install_engine() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    [ -x /bin/busybox ] || missing+=(busybox-static)
    [ "${#missing[@]}" = 0 ] && return
    need_root
    say "installing ${missing[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# write_hook [DIR]: the stand-in into DIR (default: this engine's); scripts/swarm.sh uses it too
write_hook() {
    local HOOKDIR="${1:-$HOOKDIR}"
    mkdir -p "$HOOKDIR"
    cat >"$HOOKDIR/nvidia-container-runtime-hook" <<'EOF'
#!/bin/sh
# TEST-ONLY stand-in for the NVIDIA Container Toolkit hook: dockerd registers its "nvidia"
# device driver when this name is on its PATH. It mounts no GPU; it reads the OCI state and
# succeeds, so containers with NVIDIA device requests start and carry NVIDIA_VISIBLE_DEVICES.
cat >/dev/null
exit 0
EOF
    chmod 0755 "$HOOKDIR/nvidia-container-runtime-hook"
}

start() {
    mkdir -p "$WORK"
    install_engine
    if engine_answers; then
        say "an engine already answers; using it (not started by this script)"
        return
    fi
    need_root
    write_hook
    say "starting dockerd (log: $LOG)"
    PATH="$HOOKDIR:$PATH" nohup dockerd --log-level=warn >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 60); do
        if engine_answers; then
            say "dockerd $(docker version --format '{{.Server.Version}}') is up (pid $(cat "$PIDFILE"))"
            return
        fi
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            say "dockerd exited; last lines of its log:"
            tail -n 20 "$LOG" >&2
            exit 1
        fi
        sleep 0.5
    done
    say "dockerd did not answer within 30 s; last lines of its log:"
    tail -n 20 "$LOG" >&2
    exit 1
}

stop() {
    [ -f "$PIDFILE" ] || { say "no dockerd started by this script"; return; }
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
        say "stopped dockerd (pid $pid)"
    fi
    rm -f "$PIDFILE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) engine_answers && docker version --format 'engine {{.Server.Version}}' || { say "no engine"; exit 1; } ;;
    write-hook) [ -n "${2:-}" ] || { echo "usage: $0 write-hook DIR" >&2; exit 2; }; write_hook "$2" ;;
    *) echo "usage: $0 start|stop|status|write-hook DIR" >&2; exit 2 ;;
esac
