"""The GPU rules: lost, missing, Xid, ECC, memory and temperature, per GPU of the stack.

A GPU is failing when it reads lost or in error, when it shows a fatal Xid (79 off the bus,
48/94/95 uncorrectable ECC), when its uncorrectable ECC count rises, or when it is gone from the
list; it counts as failing until it reads well `healthy_after` times in a row."""

from __future__ import annotations

from dataclasses import dataclass, field

from composegen.watch.alerting import Alerts, Latch, Levels
from composegen.watch.settings import Thresholds
from composegen.watch.types import GpuSignal, Level, Snapshot, StackInfo

FATAL_XIDS = frozenset({79, 48, 94, 95})  # FACTS.md: off the bus; uncorrectable ECC


@dataclass
class GpuState:
    """What the GPU rules found in one snapshot."""

    known: bool  # the GPU source answered (snap.gpus is not None)
    failing: set[int] = field(default_factory=set)  # failing, or not yet well long enough
    usable: set[int] = field(default_factory=set)  # read this time and not failing


class GpuRules:
    def __init__(self, t: Thresholds, alerts: Alerts) -> None:
        self.t, self.a = t, alerts
        self.failing = Latch(1, t.healthy_after)  # by GPU index
        self.memory = Levels(t.healthy_after)
        self.temperature = Levels(t.healthy_after)
        self.ecc: dict[int, int] = {}  # GPU -> last uncorrectable ECC count

    def read(self, snap: Snapshot) -> GpuState:
        if snap.gpus is None:  # no reading: no GPU alert changes, and no GPU action
            return GpuState(False, _ints(self.failing.on))
        stack = snap.stack
        seen = resolve(stack, snap.gpus)
        planned = {i for gpus in stack.planned.values() for i in gpus}
        for idx in sorted(set(stack.uuids) | planned | set(stack.original_gpus) | set(seen)):
            g = seen.get(idx)
            who = _only_service(stack, idx)
            missing = self.a.flag(("gpu-missing", idx), g is None)
            if missing:
                self.a.event(
                    "critical",
                    "gpu-missing",
                    f"GPU {idx} is gone from the GPU list (off the bus, or out of the inventory)",
                    service=who,
                    gpu=idx,
                )
            elif missing is False:
                self.a.event("info", "gpu-missing", f"GPU {idx} is back (resolved)", gpu=idx)
            bad = g is None or self._one(idx, g, who)
            if self.failing.read(idx, bad) is False:
                self.a.event(
                    "info",
                    "gpu-lost",
                    f"GPU {idx} well for {self.t.healthy_after} reads in a row (resolved)",
                    service=who,
                    gpu=idx,
                )
        failing = _ints(self.failing.on)
        return GpuState(True, failing, set(seen) - failing)

    def _one(self, idx: int, g: GpuSignal, who: str | None) -> bool:
        """The alerts of one GPU reading; True when the GPU is failing in it."""
        if self.a.flag(("gpu-lost", idx), g.health != "ok"):
            why = f": {g.reason}" if g.reason else ""
            self.a.event(
                "critical",
                "gpu-lost",
                f"GPU {idx} reports {g.health}{why}",
                service=who,
                gpu=idx,
                value=g.health,
                threshold="ok",
            )
        fatal = [x for x in g.xids if x in FATAL_XIDS]
        if g.xids:
            xids = ", ".join(map(str, g.xids))
            self.a.event(
                "critical" if fatal else "warn",
                "xid",
                f"GPU {idx} {'fails' if fatal else 'reports an error'}: Xid {xids}",
                service=who,
                gpu=idx,
                value=g.xids[0] if len(g.xids) == 1 else xids,
            )
        ecc_rose = False
        if g.ecc_uncorrectable is not None:
            before = self.ecc.get(idx)
            self.ecc[idx] = g.ecc_uncorrectable
            ecc_rose = before is not None and g.ecc_uncorrectable > before
            if ecc_rose:
                self.a.event(
                    "critical",
                    "ecc",
                    f"GPU {idx}: uncorrectable ECC errors rose from {before} to "
                    f"{g.ecc_uncorrectable}",
                    service=who,
                    gpu=idx,
                    value=g.ecc_uncorrectable,
                    threshold=before,
                )
        self._memory(idx, g, who)
        self._temperature(idx, g, who)
        return g.health != "ok" or bool(fatal) or ecc_rose

    def _memory(self, idx: int, g: GpuSignal, who: str | None) -> None:
        used, total = g.memory_used_mib, g.memory_total_mib
        if used is None or not total:
            return
        pct = used * 100.0 / total
        warn, crit = self.t.memory_warn_pct, self.t.memory_critical_pct
        new = self.memory.read(idx, 2 if pct >= crit else 1 if pct >= warn else 0)
        if new is None:
            return
        level: Level = ("info", "warn", "critical")[new]
        limit = (warn, warn, crit)[new]
        tail = " (resolved)" if new == 0 else f", {level} level {limit:g} %"
        self.a.event(
            level,
            "memory",
            f"GPU {idx} memory at {pct:.1f} % ({used} / {total} MiB){tail}",
            service=who,
            gpu=idx,
            value=round(pct, 1),
            threshold=limit,
        )

    def _temperature(self, idx: int, g: GpuSignal, who: str | None) -> None:
        if g.temperature_c is None:
            return
        limit = self.t.temperature_c
        new = self.temperature.read(idx, int(g.temperature_c >= limit))
        if new is not None:
            self.a.event(
                "warn" if new else "info",
                "temperature",
                f"GPU {idx} at {g.temperature_c} °C, limit {limit:g} °C"
                + ("" if new else " (resolved)"),
                service=who,
                gpu=idx,
                value=g.temperature_c,
                threshold=limit,
            )


def resolve(stack: StackInfo, gpus: tuple[GpuSignal, ...]) -> dict[int, GpuSignal]:
    """The readings by the stack's GPU index: by UUID where render.json recorded one (NVML
    renumbers the GPUs when one falls off the bus), else by index."""
    by_uuid = {g.uuid: g for g in gpus if g.uuid}
    out = {idx: by_uuid[u] for idx, u in stack.uuids.items() if u in by_uuid}
    taken = {id(g) for g in out.values()}
    for g in gpus:
        if id(g) in taken or g.index in out:
            continue
        if g.uuid is None or stack.uuids.get(g.index) is None:
            out[g.index] = g
    return out


def _only_service(stack: StackInfo, idx: int) -> str | None:
    on = [s for s, gpus in stack.planned.items() if idx in gpus]
    return on[0] if len(on) == 1 else None


def _ints(keys: set[object]) -> set[int]:
    return {k for k in keys if isinstance(k, int)}
