"""Doctor checks of the GPUs: a GPU request per planned GPU (the throwaway containers' results
judged here, run by doctor/run.py), the driver against the images' CUDA, and inventory drift
(the plan's GPUs still present and healthy, compared with render.json)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from composegen.doctor import Check, fail, ok, warn
from composegen.engine.compose import Project
from composegen.errors import ComposegenError
from composegen.failover_policy import failed_from_live
from composegen.inventory import Gpu, Inventory
from composegen.serving.verify import gpu_access_check


@dataclass(frozen=True)
class Planned:
    device_id: str  # as the compose file names it: GPU-/MIG- UUID, or an index
    service: str  # the first service given it
    image: str  # that service's image: the throwaway container runs it
    driver: str


def planned_devices(project: Project) -> list[Planned]:
    """Each device id the compose file pins, once, with the first service given it."""
    seen: dict[str, Planned] = {}
    for svc in project.services:
        for g in svc.gpus:
            for dev in g.device_ids or ():
                seen.setdefault(dev, Planned(dev, svc.name, svc.image, g.driver))
    return list(seen.values())


def gpu_services(project: Project) -> int:
    return sum(1 for s in project.services if s.gpus)


# --- a GPU request per planned GPU ----------------------------------------------------------


def probe_check(p: Planned, outcome: tuple[int | None, str, bool] | ComposegenError) -> Check:
    """A throwaway container's outcome: (exit code, output, whether it ran nvidia-smi -L), or
    the engine's refusal."""
    what = f"GPU {p.device_id} ({p.service}, image {p.image})"
    if isinstance(outcome, ComposegenError):
        return fail(
            "gpu-request",
            f"{what}: {outcome.message}",
            outcome.hint
            or "check the NVIDIA Container Toolkit (`nvidia-ctk --version`) and "
            "that the GPU is there (`nvidia-smi -L`)",
        )
    code, out, smi = outcome
    if code is None:
        return fail(
            "gpu-request",
            f"{what}: the container did not finish in time",
            "check the engine's log (`journalctl -u docker`) and `nvidia-smi`",
        )
    if not smi:
        if code == 0:
            return ok("gpu-request", f"{what}: a container with it starts (no nvidia-smi in it)")
        return fail("gpu-request", f"{what}: `true` exited {code}", "see `docker logs`")
    res = gpu_access_check(p.service, "the throwaway container", [p.device_id], None, code, out)
    if res.status == "passed":
        return ok("gpu-request", f"{what}: nvidia-smi -L lists it")
    if res.status == "skipped":
        return ok("gpu-request", f"{what}: a container with it starts ({res.detail})")
    return fail(
        "gpu-request",
        f"{what}: {res.detail}",
        "check the GPU (`nvidia-smi -L` on the host) and the NVIDIA Container Toolkit",
    )


# --- driver against CUDA ---------------------------------------------------------------------

_REQUIRE = re.compile(r"\bcuda>=(\d+\.\d+)")


def _version(text: str | None) -> tuple[int, int] | None:
    m = re.match(r"\s*(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def cuda_of_image(attrs: Mapping[str, Any]) -> tuple[str, str] | None:
    """(CUDA version the image needs, where it says so): NVIDIA_REQUIRE_CUDA's cuda>=X (what
    the NVIDIA hook enforces), else the label com.nvidia.cuda.version, else CUDA_VERSION."""
    config = attrs.get("Config") or {}
    env = dict(str(e).partition("=")[::2] for e in config.get("Env") or [])
    labels = config.get("Labels") or {}
    if m := _REQUIRE.search(env.get("NVIDIA_REQUIRE_CUDA", "")):
        return m.group(1), "NVIDIA_REQUIRE_CUDA"
    for where, value in (
        ("label com.nvidia.cuda.version", labels.get("com.nvidia.cuda.version")),
        ("env CUDA_VERSION", env.get("CUDA_VERSION")),
    ):
        if _version(value) is not None:
            return str(value), where
    return None


def cuda_check(
    images: Mapping[str, Mapping[str, Any] | None], driver_cuda: str | None, why_not: str | None
) -> Check:
    """The GPU services' images against the CUDA version the driver supports (NVML's
    cuda_version): fail when an image needs a newer one."""
    needs = {img: cuda_of_image(a) for img, a in images.items() if a is not None}
    told = {img: n for img, n in needs.items() if n is not None}
    absent = [img for img, a in images.items() if a is None]
    if not told:
        more = f" ({len(absent)} not on the engine yet)" if absent else ""
        return ok("cuda", f"no GPU image declares a CUDA version{more}")
    drv = _version(driver_cuda)
    if drv is None:
        return warn(
            "cuda",
            f"images need CUDA {', '.join(sorted({n[0] for n in told.values()}))}; the "
            f"driver's CUDA version is unknown ({why_not or 'no NVML'})",
            "check `nvidia-smi` (its header names the CUDA version the driver supports)",
        )
    newer = {img: n for img, n in told.items() if (_version(n[0]) or (0, 0)) > drv}
    if newer:
        parts = "; ".join(f"{img} needs CUDA {v} ({where})" for img, (v, where) in newer.items())
        return fail(
            "cuda",
            f"the driver supports CUDA {driver_cuda}, but {parts}",
            "update the NVIDIA driver to one for that CUDA version, or pin an older image "
            "(`composegen render --image KEY=IMAGE`)",
        )
    listed = ", ".join(f"{img} CUDA {v}" for img, (v, _) in sorted(told.items()))
    return ok("cuda", f"driver CUDA {driver_cuda} >= {listed}")


# --- inventory drift ---------------------------------------------------------------------------


def _match(dev: str, recorded: Inventory) -> Gpu | None:
    for g in recorded.gpus:
        if dev == g.uuid or (dev.isdigit() and int(dev) == g.index):
            return g
        if any(m.uuid == dev for m in g.mig_devices):
            return g
    return None


def drift_check(planned: Sequence[str], recorded: Inventory | None, live: Inventory) -> Check:
    """The plan's GPUs (device ids of the compose file, looked up in render.json's inventory)
    against the live inventory: each still present (by UUID) and healthy."""
    if not planned:
        return ok("drift", "the stack pins no GPU")
    if recorded is None:
        return warn(
            "drift",
            "no .composegen/render.json beside the compose file: nothing to compare with",
            "render the stack with `composegen render`",
        )
    gpus: dict[int, Gpu] = {}
    unknown: list[str] = []
    for dev in planned:
        g = _match(dev, recorded)
        if g is None:
            unknown.append(dev)
        else:
            gpus.setdefault(g.index, g)
    if not live.gpus:
        return warn(
            "drift",
            f"cannot see the GPUs now ({live.no_gpu_reason or 'no GPU found'}); "
            f"the plan has {len(gpus)}",
            "check the driver (`nvidia-smi`), or pass --inventory FILE",
        )
    subset = Inventory(source=recorded.source, gpus=tuple(gpus.values()))
    lost = [gpus[i] for i in failed_from_live(subset, live)]
    live_by_uuid = {g.uuid: g for g in live.gpus if g.uuid}
    if lost:

        def why(g: Gpu) -> str:
            cur = live_by_uuid.get(g.uuid) if g.uuid else None
            if cur is None:
                return f"GPU {g.index} {g.uuid or g.name}: gone"
            return f"GPU {g.index} {g.uuid}: {cur.health} ({cur.health_reason or 'unhealthy'})"

        return fail(
            "drift",
            f"{len(lost)} of the plan's {len(gpus)} GPU(s) lost since render: "
            + "; ".join(why(g) for g in lost),
            "`composegen fallback --auto` moves their services (or render again)",
        )
    if unknown:
        return warn(
            "drift",
            f"the compose file pins {', '.join(unknown)}, not in render.json's inventory",
            "render the stack again (a hand edit of device_ids?)",
        )
    return ok("drift", f"the plan's {len(gpus)} GPU(s) are present and healthy")
