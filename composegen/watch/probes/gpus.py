"""The host's GPUs, each interval: through one NVML session, or from an --inventory file.

NVML (detect/nvml_session.NvmlSession): initialised once, then ~10 queries per GPU per read
(each ~0.1 ms) and a drain of the Xid event set. Where NVML cannot deliver Xid events for a
GPU, its Xids come from the kernel log (/dev/kmsg, probes/kmsg.py).

--inventory FILE: re-read at every read with detect.sources.load_inventory (any format `detect
--from` reads); per-GPU `health` and `temperature_c` of a `detect --save` file count like NVML's.
A file that is missing, unreadable, half-written or changing while read is a ProbeError for this
interval (Snapshot.gpus None: a warning), never "all GPUs gone".
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from composegen.errors import ComposegenError
from composegen.inventory import Inventory
from composegen.watch.probes import guarded
from composegen.watch.probes.kmsg import KMSG, KmsgXids, bus_key
from composegen.watch.types import GpuSignal, ProbeError, Signal

NVML_RETRY_S = 60.0  # after NVML failed to initialise, try again at most this often


def from_inventory(inv: Inventory) -> list[GpuSignal]:
    return [
        GpuSignal(
            index=g.index,
            uuid=g.uuid,
            name=g.name,
            health=g.health,
            reason=g.health_reason,
            temperature_c=g.temperature_c,
            memory_used_mib=g.memory_used_mib,
            memory_total_mib=g.memory_total_mib,
            utilization_pct=g.utilization_gpu_pct,
            power_w=g.power_draw_w,
        )
        for g in inv.gpus
    ]


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def read_inventory_file(path: str) -> list[GpuSignal]:
    """The GPUs of the file now. Raises ComposegenError when it cannot be trusted this time:
    missing, unreadable, not an inventory (a half-written JSON does not parse), changed while
    read, or a text output whose last line is cut short."""
    from composegen.detect.sources import load_inventory

    before = _stamp(path)
    inv = load_inventory(path)
    if before is None or before != _stamp(path):
        raise ComposegenError(f"{path}: changed while it was read (being written?)")
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
    except OSError as exc:
        raise ComposegenError(f"{path}: {exc.strerror or exc}") from None
    if not head.startswith(b"{") and last not in (b"\n", b">"):
        raise ComposegenError(f"{path}: its last line is cut short (being written?)")
    return from_inventory(inv)


class GpusProbe:
    name = "gpus"

    def __init__(
        self, inventory: str | None, nvml_timeout_s: float = 5.0, kmsg_path: str = KMSG
    ) -> None:
        self.inventory = inventory
        self.nvml_timeout_s = nvml_timeout_s
        self.kmsg_path = kmsg_path
        self.session: Any = None
        self.kmsg: KmsgXids | None = None
        self._failed_at: float | None = None
        self._failure = ""  # why NVML failed to initialise last time
        self._notes: list[ProbeError] = []  # reported once, at the next read

    @guarded
    def read(self, now: float) -> Sequence[Signal]:
        if self.inventory is not None:
            try:
                return read_inventory_file(self.inventory)
            except ComposegenError as exc:
                return [ProbeError(self.name, exc.message)]
            except Exception as exc:  # a parser's surprise must not stop the watcher
                return [ProbeError(self.name, f"{self.inventory}: {type(exc).__name__}: {exc}")]
        return self._read_nvml()

    # --- NVML -----------------------------------------------------------------------------------

    def _open(self) -> ProbeError | None:
        from composegen.detect import nvml, nvml_session

        mono = time.monotonic()
        if self._failed_at is not None and mono - self._failed_at < NVML_RETRY_S:
            return ProbeError(self.name, f"NVML: {self._failure} (tried again once a minute)")
        try:
            self.session = nvml_session.NvmlSession(self.nvml_timeout_s)
        except nvml.NvmlUnavailable as exc:
            self._failed_at, self._failure = mono, exc.reason
            return ProbeError(self.name, f"NVML: {exc.reason}")
        self._failed_at = None
        if self.session.event_error is not None:
            try:
                self.kmsg = KmsgXids(self.kmsg_path)
            except OSError as exc:
                self._notes.append(
                    ProbeError(
                        self.name,
                        f"Xid events: {self.session.event_error}, and the kernel log "
                        f"{self.kmsg_path} cannot be read ({exc.strerror or exc}): Xids are "
                        "not watched",
                    )
                )
        return None

    def _read_nvml(self) -> list[Signal]:
        from composegen.detect import nvml

        if self.session is None:
            failed = self._open()
            if failed is not None:
                return [failed]
        try:
            readings = self.session.read()
        except nvml.NvmlUnavailable as exc:
            return [ProbeError(self.name, f"NVML: {exc.reason}")]
        kernel: dict[int, list[int]] = {}
        if self.kmsg is not None:
            by_bus = {bus_key(r.pci_bus_id): r.index for r in readings if r.pci_bus_id}
            try:
                for key, xid in self.kmsg.read():
                    index = by_bus.get(key)
                    if index is not None:
                        kernel.setdefault(index, []).append(xid)
            except OSError as exc:
                self._notes.append(ProbeError(self.name, f"{self.kmsg_path}: {exc}"))
        out: list[Signal] = []
        for r in readings:
            xids = r.xids if r.xid_events else r.xids + tuple(kernel.get(r.index, ()))
            out.append(
                GpuSignal(
                    index=r.index,
                    uuid=r.uuid,
                    name=r.name,
                    health=r.health,
                    reason=r.reason,
                    temperature_c=r.temperature_c,
                    memory_used_mib=r.memory_used_mib,
                    memory_total_mib=r.memory_total_mib,
                    utilization_pct=r.utilization_pct,
                    power_w=r.power_w,
                    xids=xids,
                    ecc_uncorrectable=r.ecc_uncorrectable,
                )
            )
        notes, self._notes = self._notes, []
        return out + notes

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.kmsg is not None:
            self.kmsg.close()
            self.kmsg = None
