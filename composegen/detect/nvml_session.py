"""One NVML session for `composegen watch`: initialised once, read every interval.

NVML is reached through detect/nvml.py (the only module that imports pynvml: `_init` hands
back the loaded module), with the same init timeout and the same reading of a lost GPU
(GPU_IS_LOST -> lost, RESET_REQUIRED -> error).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from composegen.detect.nvml import (
    DEFAULT_INIT_TIMEOUT_S,
    NvmlUnavailable,
    _init,
    _Lost,
    _mib,
    _Reader,
    _text,
    _watts,
)
from composegen.inventory import Health

XID_EVENT_TYPE_NAME = "nvmlEventTypeXidCriticalError"
MAX_EVENTS_PER_READ = 256


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment, as watch reads it every interval."""

    index: int
    uuid: str | None
    name: str
    pci_bus_id: str | None = None
    health: Health = "ok"
    reason: str | None = None
    temperature_c: int | None = None
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    utilization_pct: int | None = None
    power_w: float | None = None
    ecc_uncorrectable: int | None = None  # None: not supported (GeForce)
    xids: tuple[int, ...] = ()  # Xid events since the last read (NVML event set)
    xid_events: bool = False  # whether this GPU's Xids come from the NVML event set


class NvmlSession:
    """NVML initialised once (under the init timeout), read many times. Each GPU that accepts
    it is registered for Xid critical-error events in one event set, drained (0 ms waits) at
    every read. Raises NvmlUnavailable when NVML cannot be used at all."""

    def __init__(self, timeout_s: float = DEFAULT_INIT_TIMEOUT_S) -> None:
        self.nv = _init(timeout_s)
        self.reader = _Reader(self.nv)
        self.event_set: Any = None
        self.registered: set[int] = set()
        self.event_error: str | None = None  # why Xid events are not (all) available
        # index -> (uuid, name, PCI bus id) last seen: a GPU lost later keeps its identity
        self.known: dict[int, tuple[str | None, str, str | None]] = {}
        self._register_events()

    def _register_events(self) -> None:
        nv = self.nv
        xid = getattr(nv, XID_EVENT_TYPE_NAME, None)
        if xid is None or not hasattr(nv, "nvmlEventSetCreate"):
            self.event_error = "this NVML has no event API"
            return
        try:
            self.event_set = nv.nvmlEventSetCreate()
            count = int(nv.nvmlDeviceGetCount())
        except nv.NVMLError as exc:
            self.event_set = None
            self.event_error = f"nvmlEventSetCreate: {exc}"
            return
        for index in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                nv.nvmlDeviceRegisterEvents(handle, xid, self.event_set)
            except nv.NVMLError as exc:
                self.event_error = f"GPU {index}: Xid events not supported ({exc})"
                continue
            self.registered.add(index)

    def _drain_xids(self) -> dict[int, list[int]]:
        nv = self.nv
        out: dict[int, list[int]] = {}
        if self.event_set is None or not self.registered:
            return out
        xid_type = getattr(nv, XID_EVENT_TYPE_NAME)
        for _ in range(MAX_EVENTS_PER_READ):
            try:
                data = nv.nvmlEventSetWait(self.event_set, 0)
            except nv.NVMLError:
                break  # NVML_ERROR_TIMEOUT: nothing more (or the set broke: next read tries)
            if not int(data.eventType) & int(xid_type):
                continue
            try:
                index = int(nv.nvmlDeviceGetIndex(data.device))
            except nv.NVMLError:
                index = -1  # the device cannot say who it is any more
            out.setdefault(index, []).append(int(data.eventData))
        return out

    def read(self) -> list[GpuReading]:
        """Every GPU now, with the Xid events since the last read."""
        nv = self.nv
        xids = self._drain_xids()
        try:
            count = int(nv.nvmlDeviceGetCount())
        except nv.NVMLError as exc:
            raise NvmlUnavailable("error", f"NVML could not list the GPUs: {exc}") from None
        out = [self._read_one(i) for i in range(count)]
        if -1 in xids:  # an event whose device is lost: the lost GPU is the likely source
            lost = [g for g in out if g.health != "ok"]
            if len(lost) == 1:
                xids.setdefault(lost[0].index, []).extend(xids.pop(-1))
        return [
            replace(g, xids=tuple(xids.get(g.index, ())), xid_events=g.index in self.registered)
            for g in out
        ]

    def _read_one(self, index: int) -> GpuReading:
        nv, r = self.nv, self.reader
        try:
            handle = r.must(partial(nv.nvmlDeviceGetHandleByIndex, index))
            name = r.must(lambda: _text(nv.nvmlDeviceGetName(handle)))
            mem = r.must(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
            uuid = r.opt(lambda: _text(nv.nvmlDeviceGetUUID(handle)))
            pci = r.opt(lambda: nv.nvmlDeviceGetPciInfo(handle))
            temp = r.opt(lambda: int(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)))
            util = r.opt(lambda: nv.nvmlDeviceGetUtilizationRates(handle))
            power = r.opt(lambda: nv.nvmlDeviceGetPowerUsage(handle))
            ecc = r.opt(
                lambda: int(
                    nv.nvmlDeviceGetTotalEccErrors(
                        handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
                    )
                )
            )
        except _Lost as lost:
            uuid, name, bus = self.known.get(index, (None, "unknown", None))
            return GpuReading(
                index=index,
                uuid=uuid,
                name=name,
                pci_bus_id=bus,
                health=lost.health,
                reason=lost.reason,
            )
        bus = _text(pci.busId) if pci is not None else None
        self.known[index] = (uuid, name, bus)
        return GpuReading(
            index=index,
            uuid=uuid,
            name=name,
            pci_bus_id=bus,
            temperature_c=temp,
            memory_used_mib=_mib(mem.used),
            memory_total_mib=_mib(mem.total),
            utilization_pct=int(util.gpu) if util is not None else None,
            power_w=_watts(power),
            ecc_uncorrectable=ecc,
        )

    def close(self) -> None:
        """Free the event set (NVML itself stays up: it is shut down at exit)."""
        if self.event_set is not None:
            with contextlib.suppress(Exception):
                self.nv.nvmlEventSetFree(self.event_set)
            self.event_set = None
