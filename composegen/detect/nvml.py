"""GPU inventory through NVML (nvidia-ml-py). The only module that imports `pynvml`.

NVML is loaded lazily and initialised once per process, under a timeout (nvmlInit can hang on a
wedged driver), and shut down at exit. A GPU whose queries fail is reported as unhealthy with the
reason; the others are still reported (gpustat's InvalidGPU habit).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

from composegen.inventory import (
    Gpu,
    Health,
    Inventory,
    MigDevice,
    MigMode,
    duplicate_warnings,
)

T = TypeVar("T")

DEFAULT_INIT_TIMEOUT_S = 5.0


class NvmlUnavailable(Exception):
    """NVML cannot be used at all. `kind` says why, for the caller to choose a fallback."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind  # no-library | no-driver | timeout | error
        self.reason = reason


def _import_pynvml() -> Any:
    """Seam for tests: they replace this with a function returning a fake NVML module."""
    import pynvml

    return pynvml


_lock = threading.Lock()
_nvml: Any = None


def _init(timeout_s: float) -> Any:
    global _nvml
    with _lock:
        if _nvml is not None:
            return _nvml
        nv = _import_pynvml()
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                nv.nvmlInit()
                outcome.append(None)
            except BaseException as exc:  # handed to the calling thread below
                outcome.append(exc)

        worker = threading.Thread(target=run, name="nvml-init", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if not outcome:
            raise NvmlUnavailable(
                "timeout", f"NVML did not initialise within {timeout_s:g} s (driver hung?)"
            )
        exc = outcome[0]
        if exc is not None:
            raise _classify_init_error(nv, exc)
        _nvml = nv
        atexit.register(shutdown)
        return nv


def _classify_init_error(nv: Any, exc: BaseException) -> NvmlUnavailable:
    if not isinstance(exc, nv.NVMLError):
        return NvmlUnavailable("error", f"NVML failed to initialise: {exc}")
    code = getattr(exc, "value", None)
    if code == nv.NVML_ERROR_LIBRARY_NOT_FOUND:
        return NvmlUnavailable("no-library", "no NVIDIA driver: libnvidia-ml.so.1 not found")
    if code == nv.NVML_ERROR_DRIVER_NOT_LOADED:
        return NvmlUnavailable("no-driver", "the NVIDIA kernel driver is not loaded")
    if code == nv.NVML_ERROR_NO_PERMISSION:
        return NvmlUnavailable("error", "no permission to open the NVIDIA devices")
    if code == getattr(nv, "NVML_ERROR_LIB_RM_VERSION_MISMATCH", -1):
        return NvmlUnavailable(
            "error", "driver/library version mismatch (reboot after the driver update)"
        )
    return NvmlUnavailable("error", f"NVML failed to initialise: {exc}")


def shutdown() -> None:
    global _nvml
    with _lock:
        if _nvml is None:
            return
        with contextlib.suppress(Exception):  # nothing useful to do at exit
            _nvml.nvmlShutdown()
        _nvml = None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class _Lost(Exception):
    def __init__(self, health: Health, reason: str) -> None:
        super().__init__(reason)
        self.health: Health = health
        self.reason = reason


class _Reader:
    """Queries one device; optional fields become None, a lost GPU aborts the device."""

    def __init__(self, nv: Any) -> None:
        self.nv = nv
        self.fatal = {
            nv.NVML_ERROR_GPU_IS_LOST: "lost",
            getattr(nv, "NVML_ERROR_RESET_REQUIRED", -1): "error",
        }

    def describe(self, exc: Any) -> tuple[Health, str]:
        code = getattr(exc, "value", None)
        if code == self.nv.NVML_ERROR_GPU_IS_LOST:
            return "lost", "NVML_ERROR_GPU_IS_LOST: the GPU has fallen off the bus (Xid 79)"
        if code == getattr(self.nv, "NVML_ERROR_RESET_REQUIRED", -1):
            return "error", "NVML_ERROR_RESET_REQUIRED: the GPU needs a reset"
        return "error", f"NVML error {code}: {exc}"

    def must(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except self.nv.NVMLError as exc:
            health, reason = self.describe(exc)
            raise _Lost(health, reason) from None

    def opt(self, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except self.nv.NVMLError as exc:
            if getattr(exc, "value", None) in self.fatal:
                health, reason = self.describe(exc)
                raise _Lost(health, reason) from None
            return None


def _mib(n_bytes: int | None) -> int | None:
    return None if n_bytes is None else int(n_bytes) // (1024 * 1024)


def _watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else round(milliwatts / 1000.0, 2)


def _mig_profile(name: str) -> str | None:
    # MIG device names read "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    marker = " MIG "
    return name.rsplit(marker, 1)[1].strip() if marker in name else None


def _read_mig(r: _Reader, handle: Any) -> tuple[MigDevice, ...]:
    nv = r.nv
    count = r.opt(lambda: int(nv.nvmlDeviceGetMaxMigDeviceCount(handle))) or 0
    out: list[MigDevice] = []
    for i in range(count):
        mh = r.opt(partial(nv.nvmlDeviceGetMigDeviceHandleByIndex, handle, i))
        if mh is None:
            continue  # slots without an instance answer NOT_FOUND
        name = r.opt(partial(nv.nvmlDeviceGetName, mh))
        mem = r.opt(partial(nv.nvmlDeviceGetMemoryInfo, mh))
        uuid = r.opt(partial(nv.nvmlDeviceGetUUID, mh))
        gi = r.opt(partial(nv.nvmlDeviceGetGpuInstanceId, mh))
        ci = r.opt(partial(nv.nvmlDeviceGetComputeInstanceId, mh))
        out.append(
            MigDevice(
                index=len(out),
                uuid=_text(uuid) if uuid is not None else None,
                profile=_mig_profile(_text(name)) if name is not None else None,
                memory_total_mib=_mib(mem.total) if mem is not None else None,
                gpu_instance_id=int(gi) if gi is not None else None,
                compute_instance_id=int(ci) if ci is not None else None,
            )
        )
    return tuple(out)


def _nvlink_remote_buses(r: _Reader, handle: Any) -> set[str]:
    nv = r.nv
    buses: set[str] = set()
    for link in range(int(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18))):
        try:
            if not nv.nvmlDeviceGetNvLinkState(handle, link):
                continue
            pci = nv.nvmlDeviceGetNvLinkRemotePciInfo(handle, link)
        except nv.NVMLError:
            # NOT_SUPPORTED on the first link means no NVLink at all; INVALID_ARGUMENT past the
            # last link the device has.
            break
        buses.add(_text(pci.busId).upper())
    return buses


def _read_gpu(r: _Reader, index: int) -> tuple[Gpu, set[str]]:
    nv = r.nv
    handle = r.must(lambda: nv.nvmlDeviceGetHandleByIndex(index))
    name = r.must(lambda: _text(nv.nvmlDeviceGetName(handle)))
    mem = r.must(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
    uuid = r.opt(lambda: _text(nv.nvmlDeviceGetUUID(handle)))
    pci = r.opt(lambda: nv.nvmlDeviceGetPciInfo(handle))
    cc = r.opt(lambda: nv.nvmlDeviceGetCudaComputeCapability(handle))
    mig = r.opt(lambda: nv.nvmlDeviceGetMigMode(handle))
    util = r.opt(lambda: nv.nvmlDeviceGetUtilizationRates(handle))
    mig_mode: MigMode | None = None
    if mig is not None:
        mig_mode = "enabled" if mig[0] == 1 else "disabled"
    gpu = Gpu(
        index=index,
        name=name,
        uuid=uuid,
        memory_total_mib=_mib(mem.total),
        memory_used_mib=_mib(mem.used),
        memory_free_mib=_mib(mem.free),
        compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
        pci_bus_id=_text(pci.busId) if pci is not None else None,
        minor_number=r.opt(lambda: int(nv.nvmlDeviceGetMinorNumber(handle))),
        mig_mode=mig_mode,
        mig_devices=_read_mig(r, handle) if mig_mode == "enabled" else (),
        temperature_c=r.opt(
            lambda: int(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        ),
        utilization_gpu_pct=int(util.gpu) if util is not None else None,
        power_draw_w=_watts(r.opt(lambda: nv.nvmlDeviceGetPowerUsage(handle))),
        power_limit_w=_watts(r.opt(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(handle))),
    )
    ecc = r.opt(
        lambda: int(
            nv.nvmlDeviceGetTotalEccErrors(
                handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
            )
        )
    )
    if ecc:
        # uncorrectable ECC errors are what Xid 48/94/95 report: the GPU needs draining and
        # a reset before it can be trusted again
        gpu = replace(
            gpu,
            health="error",
            health_reason=f"{ecc} uncorrectable ECC error(s) since the driver loaded "
            "(Xid 48/94/95): drain and reset the GPU",
        )
    return gpu, _nvlink_remote_buses(r, handle)


def _cuda_version(r: _Reader) -> str | None:
    v = r.opt(lambda: int(r.nv.nvmlSystemGetCudaDriverVersion_v2()))
    if v is None:
        return None
    return f"{v // 1000}.{(v % 1000) // 10}"


def read_inventory(timeout_s: float = DEFAULT_INIT_TIMEOUT_S) -> Inventory:
    """Read every GPU through NVML. Raises NvmlUnavailable when NVML cannot be used at all."""
    nv = _init(timeout_s)
    r = _Reader(nv)
    try:
        driver = _text(nv.nvmlSystemGetDriverVersion())
        count = int(nv.nvmlDeviceGetCount())
    except nv.NVMLError as exc:
        raise NvmlUnavailable("error", f"NVML could not list the GPUs: {exc}") from None
    nvml_version = r.opt(lambda: _text(nv.nvmlSystemGetNVMLVersion()))
    cuda = _cuda_version(r)
    gpus: list[Gpu] = []
    links: dict[int, set[str]] = {}
    for index in range(count):
        try:
            gpu, buses = _read_gpu(r, index)
        except _Lost as lost:
            gpu, buses = (
                Gpu(index=index, name="unknown", health=lost.health, health_reason=lost.reason),
                set(),
            )
        gpus.append(gpu)
        links[index] = buses
    by_bus = {g.pci_bus_id.upper(): g.index for g in gpus if g.pci_bus_id}
    final = tuple(
        _with_peers(g, sorted({by_bus[b] for b in links[g.index] if b in by_bus} - {g.index}))
        for g in gpus
    )
    return Inventory(
        source="nvml",
        gpus=final,
        driver_version=driver,
        cuda_version=cuda,
        nvml_version=nvml_version,
        no_gpu_reason=None if final else "the NVIDIA driver is loaded but reports no GPU",
        warnings=duplicate_warnings(final),
    )


def _with_peers(gpu: Gpu, peers: list[int]) -> Gpu:
    if not peers:
        return gpu

    return replace(gpu, nvlink_peers=tuple(peers))


# --- compute processes per GPU (the host-side proof of placement) -----------------------------


@dataclass(frozen=True)
class GpuProcesses:
    """The compute processes NVML sees on one GPU: host PIDs and the memory each holds (None
    when NVML cannot say: some drivers and Windows WDDM answer NVML_VALUE_NOT_AVAILABLE)."""

    index: int
    uuid: str | None
    processes: tuple[tuple[int, int | None], ...] = ()  # (pid, used MiB)
    error: str | None = None  # the GPU's query failed: the reason


def compute_processes(timeout_s: float = DEFAULT_INIT_TIMEOUT_S) -> list[GpuProcesses]:
    """nvmlDeviceGetComputeRunningProcesses for every GPU. Raises NvmlUnavailable when NVML
    cannot be used at all; a GPU whose query fails is listed with the reason."""
    nv = _init(timeout_s)
    try:
        count = int(nv.nvmlDeviceGetCount())
    except nv.NVMLError as exc:
        raise NvmlUnavailable("error", f"NVML could not list the GPUs: {exc}") from None
    r = _Reader(nv)
    out: list[GpuProcesses] = []
    for index in range(count):
        try:
            handle = r.must(partial(nv.nvmlDeviceGetHandleByIndex, index))
            raw_uuid = r.opt(partial(nv.nvmlDeviceGetUUID, handle))
            procs = r.must(partial(nv.nvmlDeviceGetComputeRunningProcesses, handle))
        except _Lost as lost:
            out.append(GpuProcesses(index, None, (), lost.reason))
            continue
        uuid = _text(raw_uuid) if raw_uuid is not None else None
        rows = []
        for p in procs or ():
            used = getattr(p, "usedGpuMemory", None)
            rows.append((int(p.pid), _mib(used) if isinstance(used, int) else None))
        out.append(GpuProcesses(index, uuid, tuple(rows)))
    return out
