"""Gather what the doctor's checks read (engine, NVML or --inventory, /dev, sockets) and run
them. `up` runs the fast ones (no throwaway containers, no image inspects)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composegen.doctor import Check, fail, warn
from composegen.doctor.engine import cgroup_check, disk_check, engine_check, runtime_check
from composegen.doctor.gpu import (
    Planned,
    cuda_check,
    drift_check,
    gpu_services,
    planned_devices,
    probe_check,
)
from composegen.doctor.ports import Probe, bind_probe, port_checks, published
from composegen.engine import docker as eng
from composegen.engine.compose import Project
from composegen.errors import ComposegenError
from composegen.inventory import DockerEngine, Inventory

LABEL_DOCTOR = "io.composegen.doctor"
PROBE_TIMEOUT_S = 60.0
FAST = ("engine", "nvidia-runtime", "cgroup", "ports", "drift")


def _disk_free(path: str) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _live_inventory(inventory: str | None) -> Inventory:
    from composegen.detect.sources import detect_local, load_inventory
    from composegen.engine.failover import _render_inputs_inventory

    if inventory:
        return _render_inputs_inventory(inventory) or load_inventory(inventory)
    return detect_local(with_host=False)


def _find_hook() -> bool:
    from composegen.detect.host import find_hook

    return find_hook()


@dataclass
class Seams:
    """What the checks read from the host; tests replace them."""

    connect: Callable[[], Any] = eng.connect
    find_hook: Callable[[], bool] = _find_hook
    dev_root: Path = Path("/dev")
    port_probe: Probe = bind_probe
    disk_free: Callable[[str], int | None] = _disk_free
    live: Callable[[str | None], Inventory] = _live_inventory
    token: str = field(default_factory=lambda: f"{os.getpid()}-{os.urandom(3).hex()}")


def _recorded(directory: Path) -> Inventory | None:
    from composegen import app

    if not (directory / app.STATE_FILE).is_file():
        return None
    try:
        return app.load_inputs(directory).inventory
    except ComposegenError:
        return None


def _models_mib(directory: Path) -> int:
    """The profile's estimate of the stack's models (their VRAM figures, each model once)."""
    from composegen.serving.verify import load_profile

    try:
        prof, _ = load_profile(directory)
    except ComposegenError:
        return 0
    sizes = {m.name: m.vram_mib for s in prof.enabled_services for m in s.models}
    return sum(sizes.values())


def doctor(
    project: Project,
    *,
    fast: bool = False,
    inventory: str | None = None,
    seams: Seams | None = None,
) -> list[Check]:
    """Every check (with `fast`: those `up` runs first), in a fixed order."""
    s = seams or Seams()
    n_gpu = gpu_services(project)
    client = None
    info: dict[str, Any] = {}
    try:
        from composegen.detect.host import engine_from_info

        connected = s.connect()
        version, info = eng.engine_facts(connected)
        engine = engine_from_info(version, info, s.find_hook())
        client = connected  # only an engine that answered is asked anything else
    except ComposegenError as exc:
        engine = DockerEngine(error=exc.message)
    checks = [engine_check(engine)]
    if client is not None and not fast:
        checks.append(_disk(client, project, info, s.disk_free))
    if client is not None:  # without an engine, its engine check says all there is to say
        checks.append(runtime_check(engine, n_gpu))
        checks.append(cgroup_check(info.get("CgroupDriver"), s.dev_root, n_gpu))
    checks += _ports(client, project, s.port_probe)
    planned = planned_devices(project)
    live = s.live(inventory) if planned else Inventory(source="none")
    if client is not None and not fast and planned:
        checks += gpu_requests(client, project, planned, s.token)
    if not fast and n_gpu:
        images = {svc.image for svc in project.services if svc.gpus}
        facts = {img: eng.image_facts(client, img) for img in sorted(images)} if client else {}
        checks.append(cuda_check(facts, live.cuda_version, live.no_gpu_reason))
    checks.append(drift_check([p.device_id for p in planned], _recorded(project.directory), live))
    return checks


def _disk(
    client: Any, project: Project, info: dict[str, Any], free: Callable[[str], int | None]
) -> Check:
    root = str(info.get("DockerRootDir") or "/var/lib/docker")
    present: list[tuple[str, int]] = []
    missing: list[str] = []
    for image in sorted({svc.image for svc in project.services}):
        attrs = eng.image_facts(client, image)
        if attrs is None:
            missing.append(image)
        else:
            present.append((image, int(attrs.get("Size") or 0)))
    return disk_check(root, free(root), present, missing, _models_mib(project.directory))


def _ports(client: Any, project: Project, probe: Probe) -> list[Check]:
    own: set[tuple[str, int]] = set()
    if client is not None:
        try:
            rows = eng.list_rows(client, project.name)
        except ComposegenError:
            rows = []  # the engine went away since: every taken port is someone else's
        ports = published(project)
        for row in rows:
            own |= eng.published_ports(row)
            # a container of the stack that is not running (restarting, left by a failed
            # `up`) shows no ports in the list, yet its proxy may hold them for a moment:
            # the ports its service publishes count as the stack's own (up replaces it)
            service = (row.get("Labels") or {}).get(eng.LABEL_SERVICE)
            own |= {(ip, port) for svc, ip, port, _ in ports if svc == service}
    return port_checks(published(project), own, probe)


def gpu_requests(client: Any, project: Project, planned: list[Planned], token: str) -> list[Check]:
    """One throwaway container per planned GPU, in parallel, each removed afterwards; those
    an interrupt (Ctrl-C) leaves behind are removed by their label before it goes on."""
    results: dict[str, Check] = {}
    label = f"{LABEL_DOCTOR}={token}"

    def one(p: Planned) -> None:
        if eng.image_facts(client, p.image) is None:
            results[p.device_id] = warn(
                "gpu-request",
                f"GPU {p.device_id}: not checked, image {p.image} is not on the engine",
                "pull it (`composegen up` does), then run doctor again",
            )
            return
        kw: dict[str, Any] = {
            "image": p.image,
            "labels": {LABEL_DOCTOR: token, eng.LABEL_MANAGED: "composegen doctor"},
            "device_id": p.device_id,
            "timeout_s": PROBE_TIMEOUT_S,
            "driver": p.driver,
        }
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in p.device_id)
        name = f"{project.name}-doctor-{safe}-{token}"
        outcome: tuple[int | None, str, bool] | ComposegenError
        try:
            code, out = eng.gpu_probe(client, name=name, command=["nvidia-smi", "-L"], **kw)
            outcome = (code, out, True)
        except ComposegenError as exc:
            outcome = exc
            if "executable file not found" in exc.message:
                try:
                    code, out = eng.gpu_probe(client, name=name, command=["true"], **kw)
                    outcome = (code, out, False)
                except ComposegenError as exc2:
                    outcome = exc2
        results[p.device_id] = probe_check(p, outcome)

    try:
        failures = eng.run_parallel(one, planned, lambda p: p.device_id)
    finally:
        eng.remove_labelled(client, label)
    for dev, exc in failures:
        results[dev] = fail(
            "gpu-request", f"GPU {dev}: {eng.first_line(exc)}", "run doctor again with --debug"
        )
    return [results[p.device_id] for p in planned if p.device_id in results]
