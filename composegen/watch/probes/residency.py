"""Model residency: each running Ollama container's /api/ps (the `verify` read, through docker
exec: backends sit on an internal network), one ResidencySignal per loaded model with its share
in VRAM (size_vram / size). Cost: one list call, an inspect per new container (cached), one exec
per Ollama container, in parallel; `every` reads /api/ps only every Nth read, the reads between
repeat the last result (a model missing from a read would count as unloaded)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from composegen.engine import docker as eng
from composegen.errors import ComposegenError
from composegen.serving.verify import is_ollama, read_ps
from composegen.watch.probes import RunningContainers, guarded
from composegen.watch.types import ProbeError, ResidencySignal, Signal


class ResidencyProbe:
    name = "residency"

    def __init__(self, client: Any, project: str, every: int = 1, timeout_s: float = 10.0) -> None:
        self.client = client
        self.project = project
        self.every = max(1, int(every))
        self.timeout_s = timeout_s
        self.reads = 0
        self.running = RunningContainers(client, project, is_ollama)
        self.last: list[Signal] = []

    def _ollamas(self) -> list[tuple[str, Any]]:
        return self.running.select()

    @guarded
    def read(self, now: float) -> Sequence[Signal]:
        self.reads += 1
        if (self.reads - 1) % self.every:
            return list(self.last)
        try:
            targets = self._ollamas()
        except ComposegenError as exc:
            return [ProbeError(self.name, exc.message)]
        found: dict[str, list[Signal]] = {}
        lock = threading.Lock()

        def ps(target: tuple[str, Any]) -> None:
            service, c = target
            try:
                models = read_ps(c, self.timeout_s)
            except RuntimeError as exc:
                sigs: list[Signal] = [ProbeError(self.name, f"{service}: {exc}")]
            else:
                sigs = [
                    ResidencySignal(service, m.name, m.gpu_fraction, m.expires_at)
                    for m in models
                    if m.gpu_fraction is not None
                ]
            with lock:
                found[service] = sigs

        failures = eng.run_parallel(ps, targets, label=lambda t: t[0])
        out: list[Signal] = [s for service, _ in targets for s in found.get(service, [])]
        out += [ProbeError(self.name, f"{name}: {eng.first_line(exc)}") for name, exc in failures]
        self.last = out
        return out

    def close(self) -> None:
        self.running.cache.clear()
