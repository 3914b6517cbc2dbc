"""Living next to Docker Compose v2 on the same stack.

Compose v2 decides whether a container is up to date by its `com.docker.compose.config-hash`
label: the SHA-256 of compose-go's JSON form of the fully loaded service (ServiceHash in
docker/compose pkg/compose/hash.go: build, pull_policy, scale, depends_on and profiles left
out, replicas set to 1). That JSON is the Go structs' own serialisation after compose-go's
normalisation and defaults; re-implementing it would drift with every compose-go release. So
composegen asks Compose v2 itself (`config --hash '*'`, the same function) when a v2 binary is
on this host, writes that hash into the label Compose reads, and keeps its own hash in
`io.composegen.config-hash`. Without a v2 binary the label holds composegen's own hash, as
before: a later `docker compose up` then recreates the containers once.

Also here: what an engine older than API 1.44 does with healthcheck `start_interval`.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from composegen.engine.compose import Project

COMPOSE_V2_ENV = "COMPOSEGEN_COMPOSE_V2"  # path of a Compose v2 binary; "" = do not use one
LABEL_OWN_HASH = "io.composegen.config-hash"
LABEL_IMAGE = "com.docker.compose.image"  # v2 recreates a container whose image ID differs
PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)
START_INTERVAL_API = (1, 44)
_HASH_LINE = re.compile(r"(\S+) ([0-9a-f]{64})")


def find_binary(environ: Mapping[str, str] | None = None) -> str | None:
    """The Compose v2 binary to ask: $COMPOSEGEN_COMPOSE_V2, else the `docker compose` CLI
    plugin (the plugin binary also runs on its own). None: there is none."""
    env = os.environ if environ is None else environ
    if COMPOSE_V2_ENV in env:
        return env[COMPOSE_V2_ENV] or None
    dirs = [Path(env.get("HOME", "/root")) / ".docker" / "cli-plugins", *map(Path, PLUGIN_DIRS)]
    for d in dirs:
        path = d / "docker-compose"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def service_hashes(
    project: Project, binary: str | None = None, timeout_s: float = 30.0
) -> dict[str, str]:
    """Compose v2's config hash of each service of the project, as its `up` computes it and
    writes it into com.docker.compose.config-hash. {} when no v2 binary is found or it
    cannot read the file (then nothing is compared with v2's hash)."""
    binary = binary or find_binary()
    if not binary:
        return {}
    cmd = [
        binary,
        "--project-directory",
        str(project.directory),
        "-p",
        project.name,
        "-f",
        str(project.file),
        "config",
        "--hash",
        "*",
    ]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=project.directory,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    if done.returncode != 0:
        return {}
    wanted = {s.name for s in project.services}
    out = {}
    for line in done.stdout.splitlines():
        m = _HASH_LINE.fullmatch(line.strip())
        if m and m.group(1) in wanted:
            out[m.group(1)] = m.group(2)
    return out


def api_version(version: str) -> tuple[int, int]:
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
        return (major, minor)
    except ValueError:
        return (0, 0)


def start_interval_note(version: str, project: Project) -> str | None:
    """One line for `up` when the engine is older than API 1.44 (Docker 25): it has no
    healthcheck start_interval, so Docker's own health stays "starting" until its first
    scheduled check (one whole interval), although composegen has proven the services ready.
    None on a newer engine, or when no service has a healthcheck."""
    checked = [s for s in project.services if s.healthcheck is not None]
    if not checked or api_version(version) >= START_INTERVAL_API:
        return None
    asked = [s.name for s in checked if s.healthcheck and s.healthcheck.start_interval_s]
    what = (
        f"ignores healthcheck start_interval (services {', '.join(asked)})"
        if asked
        else "has no healthcheck start_interval"
    )
    return (
        f"this Docker engine speaks API {version or 'unknown'}, older than 1.44 (Docker 25): it "
        f"{what}, so `docker ps` shows 'health: starting' until the first scheduled check; "
        "`composegen status` shows composegen's own readiness next to Docker's health"
    )
