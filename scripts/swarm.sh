#!/usr/bin/env bash
# A real multi-node Docker Swarm on this one machine, for end-to-end tests (issue 14, item 4).
#
#   scripts/swarm.sh up N     N (2 or 3) extra dockerds, each in its own network namespace, joined
#                             into one Swarm (node 1 the manager); prints one KEY=VALUE per line
#                             (SWARM_NODES, SWARM_NODE<i>_SOCK / _ADDR / _HOST / _GPUS) on stdout
#   scripts/swarm.sh down     leave the Swarm, stop those dockerds, remove namespaces, veths,
#                             bridge and data roots; idempotent, safe after a crash
#   scripts/swarm.sh status   what is up now
#
# Layout (see notes/README-swarm-tests.md):
#   netns cg<h>-br            holds the bridge cg<h>0 (nothing is added to the host namespace);
#                             <h>: 4 hex digits of the work dir's path (SWARM_PREFIX=cg<h>)
#   netns cg<h>-n<i>          node i: eth0 = 192.168.77.1<i>/24 (veth into the bridge), lo
#   .ci-work/swarm/n<i>/      data root, exec root, docker.sock, dockerd.pid, dockerd.log
# Each dockerd runs under its own UTS namespace with hostname cgsw-node<i> (so the Swarm node
# hostnames differ), carries the engine label composegen.node=node<i> and the Swarm node label
# composegen.node=node<i>, and advertises the two GPUs of one nvidia-smi fixture as generic
# resources `NVIDIA-GPU=GPU-<uuid>` (or the UUIDs given as SWARM_NODE<i>_GPUS=GPU-…,GPU-…).
# The test-only nvidia-container-runtime-hook stand-in (as in
# scripts/engine.sh) is first on each dockerd's PATH. The main engine (/var/run/docker.sock) is
# only read from (`docker save` of the test images); its swarm state is never touched.
#
# The kernel here has no IPVS: Swarm's VIP load balancing and the ingress routing mesh do not
# work, so services reach each other with `endpoint_mode: dnsrr` or `tasks.<service>`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${COMPOSEGEN_WORK:-$ROOT/.ci-work}/swarm"
HOOKDIR="$WORK/hook-bin"
FIXTURES="$ROOT/tests/fixtures/nvidia-smi/xml"
# names outside the work dir (netns, veths, containerd namespaces) carry a short hash of it, so
# two checkouts' test beds never touch each other's (the Swarm node hostnames stay cgsw-node<i>)
PREFIX="cg$(printf '%s' "$WORK" | sha256sum | cut -c1-4)"
BRNS="$PREFIX-br"
BRIDGE="${PREFIX}0"
SUBNET=192.168.77
# 2 GPUs per node, each node's from one real nvidia-smi capture
NODE_FIXTURES=(
    "$FIXTURES/openpai__nvidia_smi_sample.xml"
    "$FIXTURES/openpai__nvidia_smi_sample_ecc_unsupported.xml"
    "$FIXTURES/telegraf__dual_a5000-v13.xml"
)
# what the e2e tests run, copied from the main engine: the stubs and both nginx images (nginx:1
# and the nginx-resolve one, whose tag is its nginx version) as scripts/images.sh --list names
# them, and the busybox image of tests/e2e/conftest.py; set by need()
IMAGES=()

say() { printf 'swarm: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

node_dir() { echo "$WORK/n$1"; }
node_sock() { echo "$WORK/n$1/docker.sock"; }
node_ns() { echo "$PREFIX-n$1"; }
node_addr() { echo "$SUBNET.1$1"; }
node_host() { echo "cgsw-node$1"; }
ndocker() {
    local i="$1"
    shift
    DOCKER_HOST="unix://$(node_sock "$i")" timeout "${DOCKER_TIMEOUT:-60}" docker "$@"
}
# SWARM_NODE<i>_GPUS=GPU-…,GPU-… overrides a node's GPUs (e.g. the UUIDs of a fleet inventory)
node_gpus() {
    local var="SWARM_NODE$1_GPUS"
    if [ -n "${!var:-}" ]; then
        tr ',' '\n' <<<"${!var}"
    else
        grep -oE 'GPU-[0-9a-f-]{36}' "${NODE_FIXTURES[$(($1 - 1))]}" | sort -u
    fi
}
check_gpus() {
    local i g
    for i in $(seq 1 "$1"); do
        for g in $(node_gpus "$i"); do
            [[ "$g" =~ ^GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$ ]] ||
                { echo "swarm: node $i: '$g' is not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)" >&2; exit 2; }
        done
    done
}

need() {
    [ "$(id -u)" = 0 ] || { say "needs root (network namespaces, dockerd)"; exit 3; }
    local missing=()
    for tool in ip nsenter unshare dockerd docker; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ "${#missing[@]}" = 0 ] || { say "missing: ${missing[*]} (apt-get install iproute2 util-linux docker.io)"; exit 3; }
    local listed
    listed="$(bash "$ROOT/scripts/images.sh" --list)" ||
        { say "the test images are not all built (run scripts/images.sh)"; exit 3; }
    mapfile -t IMAGES < <(grep -E '^composegen-test/(model-stub|ollama-stub|nginx):' <<<"$listed")
    IMAGES+=(composegen-test/busybox:1)
    for img in "${IMAGES[@]}"; do
        timeout 20 docker image inspect "$img" >/dev/null 2>&1 ||
            { say "image $img is not on the main engine (run scripts/images.sh)"; exit 3; }
    done
}

# the test-only NVIDIA hook stand-in, the same file scripts/engine.sh gives the main engine
write_hook() { bash "$ROOT/scripts/engine.sh" write-hook "$HOOKDIR"; }

# the bridge's own namespace, then one namespace + veth per node
make_network() {
    local n="$1" i
    ip netns add "$BRNS"
    ip -n "$BRNS" link set lo up
    ip -n "$BRNS" link add "$BRIDGE" type bridge
    ip -n "$BRNS" link set "$BRIDGE" up
    for i in $(seq 1 "$n"); do
        ip netns add "$(node_ns "$i")"
        ip -n "$(node_ns "$i")" link set lo up
        # created in the bridge's namespace, the node end moved into the node's namespace
        ip -n "$BRNS" link add "${PREFIX}${i}b" type veth peer name "${PREFIX}${i}n"
        ip -n "$BRNS" link set "${PREFIX}${i}n" netns "$(node_ns "$i")"
        ip -n "$BRNS" link set "${PREFIX}${i}b" master "$BRIDGE" up
        ip -n "$(node_ns "$i")" link set "${PREFIX}${i}n" name eth0
        ip -n "$(node_ns "$i")" addr add "$(node_addr "$i")/24" dev eth0
        ip -n "$(node_ns "$i")" link set eth0 up
    done
}

start_dockerd() {
    local i="$1" d gres=() g
    d="$(node_dir "$i")"
    mkdir -p "$d/data" "$d/exec"
    for g in $(node_gpus "$i"); do gres+=(--node-generic-resource "NVIDIA-GPU=$g"); done
    # nsenter --net (not `ip netns exec`, which remounts /sys: "Devices cgroup isn't mounted");
    # unshare --uts gives the node its own hostname, hence its own Swarm node hostname
    PATH="$HOOKDIR:$PATH" nohup nsenter --net="/var/run/netns/$(node_ns "$i")" \
        unshare --uts sh -c 'hostname "$0" && exec "$@"' "$(node_host "$i")" \
        dockerd --log-level=warn \
        --data-root "$d/data" --exec-root "$d/exec" \
        -H "unix://$(node_sock "$i")" --pidfile "$d/dockerd.pid" \
        --containerd-namespace "$(node_ns "$i")" \
        --containerd-plugins-namespace "$(node_ns "$i")-p" \
        --label "composegen.node=node$i" "${gres[@]}" \
        >"$d/dockerd.log" 2>&1 9>&- &
    echo $! >"$d/launcher.pid"
}

wait_dockerd() {
    local i="$1" d
    d="$(node_dir "$i")"
    for _ in $(seq 1 120); do
        if DOCKER_TIMEOUT=5 ndocker "$i" version >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$(cat "$d/launcher.pid")" 2>/dev/null; then
            tail -n 20 "$d/dockerd.log" >&2
            die "dockerd of node $i exited (log: $d/dockerd.log)"
        fi
        sleep 0.25
    done
    tail -n 20 "$d/dockerd.log" >&2
    die "dockerd of node $i did not answer within 30 s (log: $d/dockerd.log)"
}

# one tar of the test images, reused while their image IDs stay the same
save_images() {
    local ids tar="$WORK/images.tar"
    ids="$(docker image inspect --format '{{.Id}}' "${IMAGES[@]}" | sha256sum | cut -c1-16)"
    if [ ! -f "$tar" ] || [ "$(cat "$tar.ids" 2>/dev/null)" != "$ids" ]; then
        docker save -o "$tar.tmp" "${IMAGES[@]}"
        mv "$tar.tmp" "$tar"
        echo "$ids" >"$tar.ids"
    fi
}

up() {
    local n="${1:-}" t0 i token pids=()
    [[ "$n" =~ ^[23]$ ]] || { echo "usage: $0 up 2|3" >&2; exit 2; }
    check_gpus "$n"
    need
    t0="$(now_ms)"
    down_quiet
    mkdir -p "$WORK"
    write_hook
    save_images &
    local saver=$!
    make_network "$n"
    for i in $(seq 1 "$n"); do start_dockerd "$i"; done
    for i in $(seq 1 "$n"); do wait_dockerd "$i"; done
    say "$n dockerds answer ($(($(now_ms) - t0)) ms)"
    wait "$saver" || die "docker save of the test images failed"
    for i in $(seq 1 "$n"); do
        DOCKER_TIMEOUT=180 ndocker "$i" load -q -i "$WORK/images.tar" >/dev/null &
        pids+=($!)
    done
    ndocker 1 swarm init --advertise-addr "$(node_addr 1)" --listen-addr "$(node_addr 1):2377" >/dev/null
    token="$(ndocker 1 swarm join-token -q worker)"
    for i in $(seq 2 "$n"); do
        ndocker "$i" swarm join --token "$token" --advertise-addr "$(node_addr "$i")" \
            --listen-addr "$(node_addr "$i"):2377" "$(node_addr 1):2377" >/dev/null
    done
    for i in $(seq 1 "$n"); do
        ndocker 1 node update --label-add "composegen.node=node$i" "$(node_host "$i")" >/dev/null
    done
    for p in "${pids[@]}"; do wait "$p" || die "docker load into a node failed"; done
    # every node Ready before anyone schedules on it
    for _ in $(seq 1 120); do
        [ "$(ndocker 1 node ls --format '{{.Status}}' | grep -c '^Ready$')" = "$n" ] && break
        sleep 0.25
    done
    [ "$(ndocker 1 node ls --format '{{.Status}}' | grep -c '^Ready$')" = "$n" ] ||
        die "not all $n nodes are Ready: $(ndocker 1 node ls)"
    echo "$n" >"$WORK/nodes"
    say "swarm of $n nodes up in $(($(now_ms) - t0)) ms"
    env_lines "$n"
}

env_lines() {
    local n="$1" i
    echo "SWARM_NODES=$n"
    echo "SWARM_PREFIX=$PREFIX"
    for i in $(seq 1 "$n"); do
        echo "SWARM_NODE${i}_SOCK=$(node_sock "$i")"
        echo "SWARM_NODE${i}_ADDR=$(node_addr "$i")"
        echo "SWARM_NODE${i}_HOST=$(node_host "$i")"
        echo "SWARM_NODE${i}_GPUS=$(node_gpus "$i" | paste -sd, -)"
    done
}

stop_pid() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
}

# After a crashed dockerd its task containers live on (its containerd may be gone with it): kill
# them through that containerd if it answers, then by their cgroups, named by the container IDs
# in the node's data root (cgroup v1 `docker/<id>` in each controller, v2 `docker/<id>`).
kill_orphan_tasks() {
    local i="$1" d sock ns t c id cg p
    d="$(node_dir "$i")"
    sock="$d/exec/containerd/containerd.sock"
    ns="$(node_ns "$i")"
    if [ -S "$sock" ] && command -v ctr >/dev/null 2>&1; then
        for t in $(timeout 10 ctr -a "$sock" -n "$ns" tasks ls -q 2>/dev/null || true); do
            timeout 20 ctr -a "$sock" -n "$ns" tasks rm -f "$t" >/dev/null 2>&1 || true
        done
    fi
    for c in "$d"/data/containers/*/; do
        [ -d "$c" ] || continue
        id="$(basename "$c")"
        for cg in /sys/fs/cgroup/*/docker/"$id" /sys/fs/cgroup/docker/"$id"; do
            [ -f "$cg/cgroup.procs" ] || continue
            for p in $(cat "$cg/cgroup.procs"); do kill -9 "$p" 2>/dev/null || true; done
        done
        for _ in $(seq 1 20); do
            for cg in /sys/fs/cgroup/*/docker/"$id" /sys/fs/cgroup/docker/"$id"; do
                [ -d "$cg" ] && rmdir "$cg" 2>/dev/null
            done
            compgen -G "/sys/fs/cgroup/*/docker/$id" >/dev/null ||
                [ -d "/sys/fs/cgroup/docker/$id" ] || break
            sleep 0.1
        done
    done
}

# Everything `up` may have left, found by name and path (not by what `up` remembered), so a
# crashed run is cleaned up too.
down_quiet() {
    local d i ns pid
    for d in "$WORK"/n[0-9]; do
        [ -d "$d" ] || continue
        i="${d##*/n}"
        if [ -S "$d/docker.sock" ]; then
            DOCKER_TIMEOUT=20 ndocker "$i" swarm leave --force >/dev/null 2>&1 || true
            # containers of tasks the leave did not stop (a crash mid-run)
            DOCKER_TIMEOUT=30 ndocker "$i" ps -aq 2>/dev/null |
                xargs -r env DOCKER_HOST="unix://$d/docker.sock" timeout 60 docker rm -f >/dev/null 2>&1 || true
        fi
        for f in dockerd.pid launcher.pid; do
            [ -f "$d/$f" ] && stop_pid "$(cat "$d/$f")"
        done
        kill_orphan_tasks "$i"
    done
    # anything still running in a node's namespace (its containerd, docker-proxy) was started by it
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-(n[0-9]|br)$" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do stop_pid "$pid"; done
        ip netns del "$ns" 2>/dev/null || true
    done
    # mounts a killed dockerd left under the work dir (overlay layers, netns bind mounts)
    if [ -d "$WORK" ]; then
        awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r |
            while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf "$WORK"/n[0-9] "$WORK/nodes" "$HOOKDIR" "$WORK/images.tar.tmp"
    fi
}

down() {
    local t0
    t0="$(now_ms)"
    down_quiet
    say "down in $(($(now_ms) - t0)) ms"
}

status() {
    local n
    n="$(cat "$WORK/nodes" 2>/dev/null || true)"
    [ -n "$n" ] || { say "no swarm up"; exit 1; }
    ndocker 1 node ls
}

# one up/down at a time per work dir
mkdir -p "$WORK"
exec 9>"$WORK/.lock"
flock -w 300 9 || die "another swarm.sh holds $WORK/.lock"

case "${1:-}" in
    up) up "${2:-}" ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up 2|3 | down | status" >&2; exit 2 ;;
esac
