"""What watch shows: a live table on a terminal (one row per service), one snapshot for
`--once`, and JSON lines for `--json` ({"type": "snapshot", ...} / {"type": "event", ...})."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any

from composegen.watch.events import _clean, event_line, event_target
from composegen.watch.stats import Stats
from composegen.watch.types import ContainerSignal, Event, GpuSignal, Snapshot

BAR = 10
MODE_TEXT = {
    "gpu": "gpu",
    "gpu-failover": "gpu-failover (a GPU failed over to a spare)",
    "cpu-fallback": "cpu-fallback (emergency CPU variant)",
}


def _bar(used: int, total: int, width: int = BAR) -> str:
    filled = min(width, max(0, round(width * used / total))) if total > 0 else 0
    return "█" * filled + "░" * (width - filled)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


def _services(snap: Snapshot, stats: Stats | None) -> list[str]:
    names = {c.service for c in snap.containers} | set(snap.stack.planned)
    names |= {r.service for r in snap.residency}
    return sorted(names)


def _gpus_of(snap: Snapshot, service: str, containers: list[ContainerSignal]) -> list[Any]:
    """The service's GPUs: those its containers see (NVIDIA_VISIBLE_DEVICES: UUIDs or
    indices), else its plan. An index with no reading this interval stays an int."""
    readings = {g.index: g for g in snap.gpus or ()}
    by_uuid = {g.uuid: g for g in snap.gpus or () if g.uuid}
    out: list[Any] = []
    ids = [d for c in containers for d in c.gpus]
    for d in dict.fromkeys(ids):
        g = by_uuid.get(d) or (readings.get(int(d)) if d.isdigit() else None)
        out.append(g if g is not None else d)
    if not out:
        for i in snap.stack.planned.get(service, ()):
            out.append(readings.get(i, i))
    return out


def gpu_text(g: GpuSignal | int | str) -> str:
    if not isinstance(g, GpuSignal):
        return f"GPU {g} (no reading)"
    head = f"{g.index}"
    if g.health != "ok":
        return f"{head} {g.health.upper()}" + (f" ({_clean(g.reason)})" if g.reason else "")
    parts = [head]
    if g.memory_used_mib is not None and g.memory_total_mib:
        pct = 100 * g.memory_used_mib / g.memory_total_mib
        parts.append(f"{_bar(g.memory_used_mib, g.memory_total_mib)} {pct:.0f}%")
    if g.utilization_pct is not None:
        parts.append(f"util {g.utilization_pct}%")
    if g.temperature_c is not None:
        parts.append(f"{g.temperature_c}°C")
    return " ".join(parts)


def _health(containers: list[ContainerSignal]) -> str:
    if not containers:
        return "missing"
    c = next((c for c in containers if c.state == "running"), containers[0])
    text = (c.health or "running") if c.state == "running" else c.state
    extra = []
    if c.restart_count:
        extra.append(f"{c.restart_count} restarts")
    if c.oom_killed:
        extra.append("OOM")
    return text + (f" ({', '.join(extra)})" if extra else "")


def _residency(snap: Snapshot, service: str) -> str:
    rows = [r for r in snap.residency if r.service == service]
    return ", ".join(f"{_clean(r.model)} {r.gpu_fraction * 100:.0f}% GPU" for r in rows) or "-"


def rows(snap: Snapshot, stats: Stats | None, last_events: Sequence[Event]) -> list[dict[str, Any]]:
    """One dict per service: what the table shows and what --json carries."""
    out = []
    for name in _services(snap, stats):
        cs = [c for c in snap.containers if c.service == name]
        st = stats.service(name, snap.time) if stats is not None else None
        last = next((e for e in reversed(last_events) if e.service == name), None)
        gpus = _gpus_of(snap, name, cs)
        out.append(
            {
                "service": name,
                "health": _health(cs),
                "gpus": [gpu_text(g) for g in gpus],
                "gpu_indices": [g.index if isinstance(g, GpuSignal) else g for g in gpus],
                "models": _residency(snap, name),
                "rps": None if st is None else round(st.rps, 3),
                "errors": None if st is None else st.errors,
                "p50_s": None if st is None else st.p50_s,
                "p95_s": None if st is None else st.p95_s,
                "last_event": None if last is None else f"{last.rule}: {_clean(last.message)}",
            }
        )
    return out


def render_snapshot(
    snap: Snapshot, stats: Stats | None, last_events: Sequence[Event], *, footer_events: int = 5
) -> Any:
    """A rich renderable: the table and a footer (the stack's mode, the last few events)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.time))
    table = Table(title=f"composegen watch: {snap.stack.name}  {stamp}", expand=False)
    for col in ("SERVICE", "HEALTH", "GPUS", "MODEL", "REQ/S", "P50", "P95", "LAST EVENT"):
        table.add_column(col, overflow="fold")
    for row in rows(snap, stats, last_events):
        table.add_row(
            Text(row["service"]),
            Text(row["health"]),
            Text("\n".join(row["gpus"]) or "-"),
            Text(row["models"]),
            "-" if row["rps"] is None else f"{row['rps']:.2f}",
            _ms(row["p50_s"]),
            _ms(row["p95_s"]),
            Text(row["last_event"] or ""),
        )
    lines = [Text(f"mode: {MODE_TEXT.get(snap.stack.mode, snap.stack.mode)}")]
    if snap.stack.failed:
        lines.append(Text(f"failed GPUs: {', '.join(map(str, snap.stack.failed))}"))
    for err in snap.errors:
        lines.append(Text(f"probe {err.probe}: {_clean(err.message)}"))
    for e in list(last_events)[-footer_events:]:
        lines.append(Text(event_line(e)))
    return Group(table, *lines)


def snapshot_text(
    snap: Snapshot, stats: Stats | None, last_events: Sequence[Event], width: int = 160
) -> str:
    """`--once` without a terminal: the snapshot as plain text."""
    from rich.console import Console

    console = Console(width=width, color_system=None, force_terminal=False, record=True)
    with console.capture() as cap:
        console.print(render_snapshot(snap, stats, last_events))
    return cap.get()


def snapshot_dict(
    snap: Snapshot, stats: Stats | None, last_events: Sequence[Event] = ()
) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "time": Event(snap.time, "info", "", "").to_dict()["time"],
        "stack": snap.stack.name,
        "mode": snap.stack.mode,
        "failed_gpus": list(snap.stack.failed),
        "services": rows(snap, stats, last_events),
        "gpus": None
        if snap.gpus is None
        else [
            {
                "index": g.index,
                "uuid": g.uuid,
                "name": g.name,
                "health": g.health,
                "temperature_c": g.temperature_c,
                "memory_used_mib": g.memory_used_mib,
                "memory_total_mib": g.memory_total_mib,
                "utilization_pct": g.utilization_pct,
                "power_w": g.power_w,
            }
            for g in snap.gpus
        ],
        "errors": [{"probe": e.probe, "message": e.message} for e in snap.errors],
    }


def json_lines(snap: Snapshot | None, stats: Stats | None, events: Sequence[Event]) -> list[str]:
    """--json: this interval's events, then the snapshot, one JSON object a line."""
    out = [json.dumps({"type": "event", **e.to_dict()}, sort_keys=True) for e in events]
    if snap is not None:
        out.append(json.dumps(snapshot_dict(snap, stats, events), sort_keys=True))
    return out


class LiveView:
    """The table on a terminal, redrawn on each update (rich Live)."""

    def __init__(self, file: IO[str] | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=file)
        self._live = Live(console=self.console, auto_refresh=False, transient=False)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, tb)

    def update(self, snap: Snapshot, stats: Stats | None, last_events: Sequence[Event]) -> None:
        self._live.update(render_snapshot(snap, stats, last_events), refresh=True)


__all__ = [
    "LiveView",
    "event_line",
    "event_target",
    "json_lines",
    "render_snapshot",
    "snapshot_dict",
    "snapshot_text",
]
