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
