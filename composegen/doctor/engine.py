"""Doctor checks of the engine itself: reachable, its version and API, disk space of its data
root, the NVIDIA runtime, and the systemd cgroup driver without the /dev/char symlinks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from composegen.doctor import Check, fail, ok, warn
from composegen.inventory import DockerEngine

GIB = 1024**3
MIB = 1024**2
# below this the engine cannot even unpack a small image: up fails half way
MIN_FREE_BYTES = 2 * GIB
# Docker Engine API 1.40 (Docker 19.03) is the first with device requests (`gpus:`)
MIN_GPU_API = (1, 40)
TOOLKIT_FIX = (
    "install the NVIDIA Container Toolkit, then `sudo nvidia-ctk runtime configure "
    "--runtime=docker && sudo systemctl restart docker`"
)
SYMLINKS_FIX = "sudo nvidia-ctk system create-dev-char-symlinks --create-all"


def _api(text: str | None) -> tuple[int, int] | None:
    try:
        major, minor = (text or "").split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def engine_check(engine: DockerEngine) -> Check:
    if not engine.reachable:
        return fail(
            "engine",
            engine.error or "the Docker engine does not answer",
            "start it (`sudo systemctl start docker`), or add yourself to the docker group",
        )
    api = _api(engine.api_version)
    what = f"Docker {engine.version or '?'}, API {engine.api_version or '?'}"
    if api is not None and api < MIN_GPU_API:
        return fail(
            "engine",
            f"{what}: GPU device requests need API 1.40 (Docker 19.03) or newer",
            "upgrade Docker Engine",
        )
    return ok("engine", what)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def disk_check(
    root: str,
    free_bytes: int | None,
    present: Sequence[tuple[str, int]],
    missing: Sequence[str],
    models_mib: int,
) -> Check:
    """Free space of the engine's data root against what the stack needs there: the images
    still to pull (their sizes are known only once pulled) and the models (estimated by the
    profile's figures). Below MIN_FREE_BYTES: fail; below the models' estimate: warn."""
    have = f"{len(present)} image(s) present ({_gib(sum(s for _, s in present))})"
    need = f"{len(missing)} to pull" + (f": {', '.join(missing)}" if missing else "")
    models = f"models about {_gib(models_mib * MIB)}" if models_mib else "no model estimate"
    facts = f"{have}, {need}; {models}"
    if free_bytes is None:
        return warn(
            "disk",
            f"cannot read the free space of {root}; {facts}",
            "run doctor on the engine's host, as a user who can read its data root",
        )
    free = f"{_gib(free_bytes)} free on {root}"
    if free_bytes < MIN_FREE_BYTES:
        return fail(
            "disk",
            f"only {free}; {facts}",
            f"free space on {root} (`docker system prune` removes unused images)",
        )
    if models_mib and free_bytes < models_mib * MIB:
        return warn(
            "disk",
            f"{free}, less than the models' estimate; {facts}",
            f"free space on {root}, or check the models already fetched "
            "(`composegen models pull` fetches only missing ones)",
        )
    return ok("disk", f"{free}; {facts}")


def runtime_check(engine: DockerEngine, gpu_services: int) -> Check:
    if not engine.reachable:
        return warn("nvidia-runtime", "not checked: no engine", "see the engine check")
    if engine.gpu_requests:
        return ok("nvidia-runtime", f"GPU requests via {engine.gpu_requests_via}")
    missing = (
        "no nvidia-container-runtime-hook on dockerd's PATH, no `nvidia` runtime, "
        "no CDI spec for nvidia.com devices"
    )
    if gpu_services == 0:
        return ok("nvidia-runtime", f"the stack asks for no GPU ({missing})")
    return fail(
        "nvidia-runtime",
        f"the engine cannot honour GPU requests: {missing}; up would fail with "
        '"could not select device driver "nvidia""',
        TOOLKIT_FIX,
    )


# the NVIDIA device nodes a container gets; directories (nvidia-caps) are not nodes
def nvidia_nodes(dev_root: Path) -> set[str]:
    try:
        entries = list(dev_root.iterdir())
    except OSError:
        return set()
    return {e.name for e in entries if e.name.startswith("nvidia") and not e.is_dir()}


def char_links(dev_root: Path) -> set[str]:
    """The device names /dev/char's symlinks point at (nvidia0 for 195:0 -> ../nvidia0)."""
    out: set[str] = set()
    try:
        entries = list((dev_root / "char").iterdir())
    except OSError:
        return out
    for e in entries:
        try:
            out.add(os.path.basename(os.readlink(e)))
        except OSError:
            continue
    return out


def cgroup_check(cgroup_driver: str | None, dev_root: Path, gpu_services: int) -> Check:
    """systemd cgroup driver: a `systemctl daemon-reload` rewrites the containers' device
    cgroups from what systemd knows, and drops NVIDIA devices that have no /dev/char symlink:
    the containers lose their GPUs silently ("Failed to initialize NVML: Unknown Error"),
    nvidia-container-toolkit#48."""
    if cgroup_driver != "systemd":
        return ok(
            "cgroup",
            f"cgroup driver {cgroup_driver or 'unknown'}: a daemon-reload leaves devices alone",
        )
    nodes = nvidia_nodes(dev_root)
    if not nodes:
        if gpu_services:
            return warn(
                "cgroup",
                f"cgroup driver systemd, and no NVIDIA device node in {dev_root} to check",
                f"once the driver is loaded: {SYMLINKS_FIX}",
            )
        return ok("cgroup", "cgroup driver systemd; the stack asks for no GPU")
    lacking = sorted(nodes - char_links(dev_root))
    if not lacking:
        return ok("cgroup", f"cgroup driver systemd; {dev_root / 'char'} links every NVIDIA node")
    return warn(
        "cgroup",
        f"cgroup driver systemd without {dev_root / 'char'} symlinks for "
        f"{', '.join(lacking)}: a `systemctl daemon-reload` silently takes the GPUs away from "
        "running containers (nvidia-container-toolkit#48)",
        SYMLINKS_FIX,
    )
