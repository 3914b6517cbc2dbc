"""Progress for slow engine work: a live per-service table on a terminal, plain lines in a log,
or one JSON object per line with --json."""

from __future__ import annotations

import json
import sys
import threading
import time
from types import TracebackType
from typing import Any

_STYLE = {
    "healthy": "green",
    "running": "green",
    "failed": "bold red",
    "waiting": "yellow",
    "removed": "dim",
}


class Progress:
    def __init__(self, services: list[str], as_json: bool, title: str) -> None:
        self.as_json = as_json
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.state: dict[str, tuple[str, str]] = {s: ("pending", "") for s in services}
        self.live: Any = None
        self.title = title
        self.tty = sys.stdout.isatty() and not as_json
        # image pulls: (service, layer) -> (status, current bytes, total bytes)
        self.layers: dict[tuple[str, str], tuple[str, int, int]] = {}

    def __enter__(self) -> Progress:
        if self.tty:
            from rich.live import Live

            self.live = Live(self._table(), refresh_per_second=8, transient=False)
            self.live.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(et, e, tb)

    def _table(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        services = self._services()
        pulling = [(k, v) for k, v in self.layers.items() if v[0] != "Pull complete"]
        if not pulling:
            return services
        layers = Table(title="pulling", title_justify="left")
        for col in ("service", "layer", "status", "progress"):
            layers.add_column(col)
        for (svc, layer), (status, current, total) in pulling:
            layers.add_row(svc, layer, status, _bar(current, total))
        return Group(services, layers)

    def _services(self) -> Any:
        from rich.table import Table

        table = Table(title=self.title, title_justify="left")
        table.add_column("service")
        table.add_column("state")
        table.add_column("detail")
        for svc, (st, detail) in self.state.items():
            style = _STYLE.get(st, "")
            table.add_row(svc, f"[{style}]{st}[/]" if style else st, detail)
        return table

    def event(self, service: str, state: str, detail: str) -> None:
        with self.lock:
            self.state[service] = (state, detail)
            t = round(time.monotonic() - self.t0, 3)
            if self.as_json:
                print(
                    json.dumps(
                        {
                            "event": "service",
                            "service": service,
                            "state": state,
                            "detail": detail,
                            "t": t,
                        }
                    ),
                    flush=True,
                )
            elif self.live is not None:
                self.live.update(self._table())
            else:
                print(
                    f"[{t:7.2f}s] {service}: {state}" + (f" ({detail})" if detail else ""),
                    flush=True,
                )

    def emit(self, data: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(data), flush=True)

    def pull(self, service: str, event: dict[str, Any]) -> None:
        """One of the engine's pull events (a layer's status and bytes), shown per layer as
        Compose does: live on a terminal; in a log, a line when a layer's status changes; with
        --json, an event when its status changes or it gained a tenth of its size."""
        layer = str(event.get("id") or "")
        status = str(event.get("status") or "")
        detail = event.get("progressDetail") or {}
        current, total = int(detail.get("current") or 0), int(detail.get("total") or 0)
        key = (service, layer)
        with self.lock:
            before = self.layers.get(key)
            changed = before is None or before[0] != status
            step = bool(total) and before is not None and current - before[1] >= total / 10
            if changed or step or not self.as_json:
                self.layers[key] = (status, current, total)  # (JSON: as last printed)
            t = round(time.monotonic() - self.t0, 3)
            if self.as_json:
                if changed or step:
                    data: dict[str, Any] = {"event": "pull", "service": service}
                    data.update(layer=layer or None, status=status, current=current)
                    data.update(total=total, t=t)
                    print(json.dumps(data), flush=True)
            elif self.live is not None:
                self.live.update(self._table())
            elif changed:
                what = f"{layer}: {status}" if layer else status
                print(f"[{t:7.2f}s] {service}: pull {what}", flush=True)


def _bar(current: int, total: int, width: int = 20) -> str:
    if not total:
        return ""
    done = min(width, int(width * current / total))
    return f"[{'=' * done}{' ' * (width - done)}] {current / 1e6:.1f}/{total / 1e6:.1f} MB"
