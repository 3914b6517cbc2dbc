"""How often the probes that exec into every container run (GPU access: `nvidia-smi -L`;
residency: Ollama's /api/ps), so that watch stays cheap on a large stack.

One `docker exec` costs the watcher about EXEC_CPU_S of CPU (docker-py's create, start over
a hijacked socket, inspect; measured on a 2-core VM: 23 containers, 162 ms a read). Read every
interval, two such probes on 24 containers at 5 s took 6.9 % of a core. A paced probe runs
every k-th interval, k chosen from the number of containers it reached last time so that it
stays within `budget` of one core; in between it is not read. A probe that saw a failure
(a container without GPU access) is read again at the next interval, so the checks in a row
that a rule counts come one interval apart.

The rules must see only real reads (a rule counting "3 checks in a row" must not count one
check three times), while the outputs show the last known values: `Paced.last`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from composegen.watch.types import ContainerSignal, GpuAccessSignal, Probe, ProbeError, Signal

EXEC_CPU_S = 0.007
PACED = frozenset({"gpu-access", "residency"})


class Paced:
    def __init__(self, probe: Probe, interval_s: float, budget: float = 0.005) -> None:
        self.probe = probe
        self.name = probe.name
        self.interval_s = max(interval_s, 0.001)
        self.budget = budget
        self.skip = 0  # intervals left before the next read
        self.every = 1  # the last pacing: a read every `every` intervals
        self.last: list[Signal] = []
        self.targets = 0  # containers it may exec into (set by the loop)

    def set_targets(self, containers: Sequence[ContainerSignal]) -> None:
        running = [c for c in containers if c.state == "running"]
        gpu = self.name == "gpu-access"
        self.targets = len([c for c in running if c.gpus] if gpu else running)

    def due(self) -> bool:
        """Whether this interval reads the probe (counts the interval when it does not)."""
        if self.skip > 0:
            self.skip -= 1
            return False
        return True

    def read(self, now: float) -> Sequence[Signal]:
        out = list(self.probe.read(now))
        self.last = [s for s in out if not isinstance(s, ProbeError)]
        n = max(len(self.last), self.targets)
        self.every = max(1, math.ceil(n * EXEC_CPU_S / (self.budget * self.interval_s)))
        failing = any(isinstance(s, GpuAccessSignal) and s.ok is False for s in out)
        self.skip = 0 if failing else self.every - 1
        return out

    def close(self) -> None:
        self.probe.close()
