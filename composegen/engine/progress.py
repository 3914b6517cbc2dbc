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
