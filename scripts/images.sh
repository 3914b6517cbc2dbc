#!/usr/bin/env bash
# Build the local TEST-ONLY images that stand in for the real ones in end-to-end tests
# (see ../shared/design/TEST-ENGINE.md: no registry, no network but the Debian mirror).
#
#   scripts/images.sh          build what is missing or out of date, one line per image
#   scripts/images.sh --list   print the seven tags, one per line (the last, nginx-resolve's,
#                              names its nginx version: it needs that image built, exit 1 if not)
#
#   composegen-test/debian:bookworm   debootstrap minbase + python3, nginx-light, curl, bash
#   composegen-test/model-stub:1      vLLM / TEI / speaches / Open WebUI stand-in (stubs/),
#                                     with an `nvidia-smi` stand-in
#   composegen-test/ollama-stub:1     Ollama stand-in, with an `ollama` CLI for healthchecks,
#                                     an on-disk model store and an `nvidia-smi` stand-in
#   composegen-test/nginx:1           nginx-light run like the official nginx image
#   composegen-test/hf-hub:1          a fake Hugging Face hub (stubs/hf_hub_stub.py)
#   composegen-test/hf-fetch:1        the base + the real huggingface_hub client, at the version
#                                     pinned in pyproject.toml's `test` extra
#   composegen-test/nginx:X.Y.Z       ("nginx-resolve") Debian forky's nginx run like the official
#                                     image (Dockerfile.nginx-resolve, on composegen-test/debian:
#                                     forky = debootstrap minbase + nginx, curl, ca-certificates);
#                                     tagged, like the official images, with the nginx version the
#                                     package holds, which must be >= 1.27.3 (upstream `server ...
#                                     resolve`, which the swarm target renders for such a tag).
#                                     Bookworm's nginx (1.22) and trixie's (1.26) are too old.
#
# Each image carries the label io.composegen.test.inputs=<sha256 of its build inputs> and is
# rebuilt only when that changes. The debootstrapped rootfs is cached as a tarball under
# .ci-work/images/ keyed by the package list, so a fresh engine does not redo debootstrap.
# `docker build` has no network: huggingface_hub and its dependencies are downloaded on this
# machine with `pip download` (wheels for the base's Python), cached under
# .ci-work/images/wheels-hf-<version>-cp311-<arch>/, and installed in the image from there;
# the wheels' checksums are part of hf-fetch's inputs.
# Needs a running engine (scripts/engine.sh start); installs debootstrap with apt if missing.
# COMPOSEGEN_DEBIAN_MIRROR overrides the mirror read from the machine's apt sources.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/scripts/images"
WORK="${COMPOSEGEN_WORK:-$ROOT/.ci-work}/images"
LABEL=io.composegen.test.inputs

BASE=composegen-test/debian:bookworm
MODEL=composegen-test/model-stub:1
OLLAMA=composegen-test/ollama-stub:1
NGINX=composegen-test/nginx:1
HFHUB=composegen-test/hf-hub:1
HFFETCH=composegen-test/hf-fetch:1
NGINX_REPO=composegen-test/nginx # nginx-resolve: its tag is the version of the nginx inside
VERSION_LABEL=io.composegen.test.nginx-version

SUITE=bookworm
VARIANT=minbase
PACKAGES=python3,nginx-light,curl,ca-certificates,bash
ROOTFS_RECIPE=1 # bump when strip_rootfs changes
PYVER=3.11      # bookworm's python3: the wheels are for it
ARCH="$(uname -m)"
# the nginx-resolve image's suite and packages (no python), and the nginx it needs (tests of the
# check raise the minimum above the real version)
RESOLVE_SUITE="${COMPOSEGEN_NGINX_RESOLVE_SUITE:-forky}"
RESOLVE_PACKAGES=nginx,curl,ca-certificates
RESOLVE_BASE="composegen-test/debian:$RESOLVE_SUITE"
RESOLVE_MIN="${COMPOSEGEN_NGINX_RESOLVE_MIN:-1.27.3}"
# the one pin, shared with pyproject.toml's test extra (the host-side tests drive the same client)
HF_HUB_VERSION="$(sed -n 's/.*"huggingface_hub==\([0-9][0-9a-z.]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n 1)"

sha() { sha256sum | cut -d' ' -f1; }
rootfs_inputs() { printf '%s\n' "$1" "$VARIANT" "$2" "recipe=$ROOTFS_RECIPE" | sha; }
label_of() { timeout 20 docker image inspect -f "{{index .Config.Labels \"${2:-$LABEL}\"}}" "$1" 2>/dev/null || true; }

# The nginx-resolve tag, from the nginx version recorded on the forky base built from the current
# inputs (empty when it is not built).
resolve_tag() {
    local version
    [ "$(label_of "$RESOLVE_BASE")" = "$(rootfs_inputs "$RESOLVE_SUITE" "$RESOLVE_PACKAGES")" ] ||
        return 0
    version="$(label_of "$RESOLVE_BASE" "$VERSION_LABEL")"
    [ -z "$version" ] || echo "$NGINX_REPO:$version"
}

if [ "${1:-}" = "--list" ]; then
    tag="$(resolve_tag)"
    if [ -z "$tag" ]; then
        echo "images: the nginx-resolve image is not built, and its tag is the nginx version" \
            "inside it: run scripts/images.sh first" >&2
        exit 1
    fi
    printf '%s\n' "$BASE" "$MODEL" "$OLLAMA" "$NGINX" "$HFHUB" "$HFFETCH" "$tag"
    exit 0
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--list]" >&2
    exit 2
fi

say() { printf 'images: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)

timeout 10 docker version >/dev/null 2>&1 ||
    die "no Docker engine answers: start one with 'bash scripts/engine.sh start'"

mkdir -p "$WORK"
exec 9>"$WORK/.lock"
flock -w 600 9 || die "another images.sh holds $WORK/.lock"

# ---- the Debian base ----------------------------------------------------------------------------

# The first http(s)/file archive the machine's apt sources use for suite $1 itself (not -updates
# or -security), one-line or deb822 format.
apt_mirror() {
    local files=() suite="$1"
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ "${#files[@]}" = 0 ] && return 0
    awk -v suite="$suite" '
        function ok(u) { return u ~ /^(https?|file):/ }
        function flush() {
            if (deb && enabled && !found)
                for (s in suites) if (suites[s] == suite)
                    for (u in uris) if (ok(uris[u])) { print uris[u]; found = 1; exit }
            deb = 0; enabled = 1; delete suites; delete uris
        }
        FNR == 1 { flush() }
        /^[ \t]*#/ { next }
        FILENAME ~ /\.sources$/ {
            if ($0 ~ /^[ \t]*$/) { flush(); next }
            key = tolower($1)
            if (key == "types:") for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1
            if (key == "uris:") for (i = 2; i <= NF; i++) uris[i] = $i
            if (key == "suites:") for (i = 2; i <= NF; i++) suites[i] = $i
            if (key == "enabled:" && tolower($2) == "no") enabled = 0
            next
        }
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) while ($i !~ /\]$/ && i < NF) i++
            if ($i ~ /^\[/ || $i ~ /\]$/) i++
            if ($(i + 1) == suite && ok($i)) { print $i; found = 1; exit }
        }
        END { flush() }
    ' "${files[@]}" | head -n 1
}

need_debootstrap() {
    command -v debootstrap >/dev/null 2>&1 && [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] && return
    [ "$(id -u)" = 0 ] || die "debootstrap is missing and installing it needs root"
    say "installing debootstrap from Debian"
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120)
    "${apt[@]}" install debootstrap debian-archive-keyring >/dev/null 2>&1 || {
        apt-get -qq -o DPkg::Lock::Timeout=120 update >/dev/null
        "${apt[@]}" install debootstrap debian-archive-keyring >/dev/null
    }
}

# Keep the rootfs small: no apt lists, docs, man pages, translations or logs.
strip_rootfs() {
    local d="$1"
    rm -rf "$d"/var/lib/apt/lists/* "$d"/var/cache/apt/*.bin "$d"/var/cache/apt/archives/*.deb \
        "$d"/usr/share/doc/* "$d"/usr/share/man/* "$d"/usr/share/info/* "$d"/usr/share/locale/* \
        "$d"/usr/share/lintian "$d"/var/cache/debconf/*-old "$d"/var/lib/dpkg/*-old "$d"/tmp/*
    find "$d"/var/log -type f -delete
    : >"$d"/etc/machine-id
}

ROOTFS_DIR=""
cleanup() {
    [ -n "$ROOTFS_DIR" ] && [ -d "$ROOTFS_DIR" ] || return 0
    for m in dev/pts dev proc sys; do umount -l "$ROOTFS_DIR/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOTFS_DIR"
}
trap cleanup EXIT

# rootfs_tarball SUITE PACKAGES INPUTS sets TARBALL: the rootfs tarball for that suite and
# package list, from the cache or made with debootstrap (not in a subshell, so that the EXIT trap
# cleans up after a failed debootstrap).
rootfs_tarball() {
    local suite="$1" packages="$2" tarball="$WORK/rootfs-$1-${3:0:16}.tar" script=()
    TARBALL="$tarball"
    [ -s "$tarball" ] && return
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    need_debootstrap
    local mirror="${COMPOSEGEN_DEBIAN_MIRROR:-$(apt_mirror "$suite")}"
    if [ -z "$mirror" ]; then
        mirror=http://deb.debian.org/debian
        say "no $suite archive in the apt sources; using $mirror"
    fi
    # a debootstrap older than the suite (bookworm's knows no forky) bootstraps it as sid does
    [ -e "/usr/share/debootstrap/scripts/$suite" ] || script=(/usr/share/debootstrap/scripts/sid)
    local proxy
    proxy="$(apt-config shell P Acquire::http::Proxy 2>/dev/null | sed -n "s/^P='\(.*\)'$/\1/p")"
    [ -n "$proxy" ] && [ -z "${http_proxy:-}" ] && export http_proxy="$proxy"
    ROOTFS_DIR="$(mktemp -d "$WORK/rootfs.XXXXXX")"
    say "debootstrap $suite ($VARIANT + $packages) from $mirror"
    if ! debootstrap --variant="$VARIANT" --include="$packages" "$suite" "$ROOTFS_DIR" "$mirror" \
        "${script[@]}" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 20 "$WORK/debootstrap.log" >&2
        die "debootstrap failed (log: $WORK/debootstrap.log)"
    fi
    strip_rootfs "$ROOTFS_DIR"
    tar -C "$ROOTFS_DIR" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    find "$WORK" -maxdepth 1 -name "rootfs-$suite-*.tar" ! -path "$tarball" -delete
    cleanup
    ROOTFS_DIR=""
}

build_base() {
    local inputs
    inputs="$(rootfs_inputs "$SUITE" "$PACKAGES")"
    if [ "$(label_of "$BASE")" = "$inputs" ]; then
        echo "$BASE: up to date"
        return
    fi
    rootfs_tarball "$SUITE" "$PACKAGES" "$inputs"
    docker import \
        --change "LABEL $LABEL=$inputs" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
        --change 'CMD ["bash"]' \
        - "$BASE" <"$TARBALL" >/dev/null
    BUILT=1
    echo "$BASE: built"
}

# ---- images built from Dockerfiles on the base ---------------------------------------------------

# build_in CONTEXT TAG DOCKERFILE FILES...: inputs are the base image id ($FROM, the image the
# Dockerfile starts from), the Dockerfile (in scripts/images/) and the files (with their modes,
# relative to CONTEXT) it copies.
FROM="$BASE"
build_in() {
    local context="$1" tag="$2" dockerfile="$3" inputs
    shift 3
    inputs="$(
        docker image inspect -f '{{.Id}}' "$FROM"
        printf '%s %s\n' "$dockerfile" "$(sha256sum <"$HERE/$dockerfile" | cut -d' ' -f1)"
        cd "$context"
        for f in "$@"; do
            printf '%s %s %s\n' "$f" "$(stat -c %a "$f")" "$(sha256sum <"$f" | cut -d' ' -f1)"
        done
    )"
    inputs="$(printf '%s\n' "$inputs" | sha)"
    if [ "$(label_of "$tag")" = "$inputs" ]; then
        echo "$tag: up to date"
        return
    fi
    local args=()
    [ "$FROM" = "$BASE" ] || args=(--build-arg "BASE=$FROM")
    if ! DOCKER_BUILDKIT=0 docker build -q --label "$LABEL=$inputs" -t "$tag" "${args[@]}" \
        -f "$HERE/$dockerfile" "$context" >"$WORK/build.log" 2>&1; then
        cat "$WORK/build.log" >&2
        die "docker build of $tag failed"
    fi
    BUILT=1
    echo "$tag: built"
}

build_on_base() { build_in "$HERE" "$@"; }

# ---- huggingface_hub wheels for hf-fetch ---------------------------------------------------------

# Sets WHEELS: a folder of the wheels of huggingface_hub==$HF_HUB_VERSION and its dependencies
# (plus pip, which installs them in the image and is not kept), downloaded once per version.
fetch_wheels() {
    [ -n "$HF_HUB_VERSION" ] || die "no \"huggingface_hub==X\" pin in pyproject.toml's test extra"
    WHEELS="$WORK/wheels-hf-$HF_HUB_VERSION-cp${PYVER/./}-$ARCH"
    [ -f "$WHEELS/.complete" ] && return
    local py="$ROOT/.venv/bin/python"
    [ -x "$py" ] || py=python3
    rm -rf "$WHEELS.tmp"
    mkdir -p "$WHEELS.tmp"
    say "pip download huggingface_hub==$HF_HUB_VERSION (python $PYVER, $ARCH)"
    if ! "$py" -m pip download -q --disable-pip-version-check --no-cache-dir -d "$WHEELS.tmp" \
        --only-binary=:all: --implementation cp --python-version "$PYVER" \
        --platform "manylinux2014_$ARCH" --platform "manylinux_2_17_$ARCH" \
        --platform "manylinux_2_28_$ARCH" \
        "huggingface_hub==$HF_HUB_VERSION" pip >"$WORK/wheels.log" 2>&1; then
        grep -v 'is ignored' "$WORK/wheels.log" | tail -n 20 >&2
        die "pip download of huggingface_hub==$HF_HUB_VERSION failed (log: $WORK/wheels.log)"
    fi
    touch "$WHEELS.tmp/.complete"
    rm -rf "$WHEELS"
    mv "$WHEELS.tmp" "$WHEELS"
    find "$WORK" -maxdepth 1 -name 'wheels-hf-*' ! -path "$WHEELS" -exec rm -rf {} +
}

build_hf_fetch() {
    fetch_wheels
    local context="$WORK/hf-fetch-context"
    rm -rf "$context"
    mkdir -p "$context/wheels"
    cp -l "$WHEELS"/*.whl "$context/wheels/" 2>/dev/null || cp "$WHEELS"/*.whl "$context/wheels/"
    local files=()
    for f in "$context"/wheels/*.whl; do files+=("wheels/${f##*/}"); done
    build_in "$context" "$HFFETCH" Dockerfile.hf-fetch "${files[@]}"
    rm -rf "$context"
}

# ---- nginx-resolve: Debian forky's nginx, tagged with its version -------------------------------

# upstream X.Y.Z of the nginx package in a rootfs tarball's dpkg status (epoch and revision off)
nginx_version_in() {
    tar -xOf "$1" ./var/lib/dpkg/status | awk '
        /^Package: / { pkg = $2 }
        pkg == "nginx" && /^Version: / { v = $2; sub(/^[0-9]+:/, "", v); sub(/-[^-]*$/, "", v); print v; exit }'
}

version_at_least() { [ "$(printf '%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }

build_resolve() {
    local inputs version
    inputs="$(rootfs_inputs "$RESOLVE_SUITE" "$RESOLVE_PACKAGES")"
    if [ "$(label_of "$RESOLVE_BASE")" = "$inputs" ]; then
        echo "$RESOLVE_BASE: up to date"
        version="$(label_of "$RESOLVE_BASE" "$VERSION_LABEL")"
    else
        rootfs_tarball "$RESOLVE_SUITE" "$RESOLVE_PACKAGES" "$inputs"
        version="$(nginx_version_in "$TARBALL")"
        [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
            die "no nginx X.Y.Z version in the $RESOLVE_SUITE rootfs ($TARBALL): got '$version'"
    fi
    # checked every run, before anything is tagged with the version
    version_at_least "$version" "$RESOLVE_MIN" ||
        die "Debian $RESOLVE_SUITE's nginx is $version, older than the $RESOLVE_MIN that" \
            "'server NAME resolve' in an upstream needs (swarm gateways): bootstrap a newer" \
            "suite with COMPOSEGEN_NGINX_RESOLVE_SUITE=sid"
    if [ "$(label_of "$RESOLVE_BASE")" != "$inputs" ]; then
        docker import \
            --change "LABEL $LABEL=$inputs $VERSION_LABEL=$version" \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
            --change 'CMD ["bash"]' \
            - "$RESOLVE_BASE" <"$TARBALL" >/dev/null
        BUILT=1
        echo "$RESOLVE_BASE: built (nginx $version)"
    fi
    FROM="$RESOLVE_BASE"
    build_on_base "$NGINX_REPO:$version" Dockerfile.nginx-resolve
    FROM="$BASE"
}

BUILT=0
build_base
build_on_base "$MODEL" Dockerfile.model-stub stubs/stubkit.py stubs/model_stub.py \
    stubs/nvidia_smi.py
build_on_base "$OLLAMA" Dockerfile.ollama-stub stubs/stubkit.py stubs/ollama_stub.py \
    stubs/nvidia_smi.py
build_on_base "$NGINX" Dockerfile.nginx
build_on_base "$HFHUB" Dockerfile.hf-hub stubs/stubkit.py stubs/hf_hub_stub.py
build_hf_fetch
build_resolve
# images replaced by a rebuild stay behind untagged: drop ours
[ "$BUILT" = 0 ] || docker image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true

T1=$(now_ms)
printf 'images: total %d.%03d s\n' $(((T1 - T0) / 1000)) $(((T1 - T0) % 1000))
