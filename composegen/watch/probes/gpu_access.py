"""GPU access inside each running GPU container: `nvidia-smi -L`, the check of `verify`.

A container that lost its GPU (after `systemctl daemon-reload`: nvidia-container-toolkit#48)
answers "Failed to initialize NVML: Unknown Error": ok False with that first line. An image
without nvidia-smi, or an exec that times out: ok None. A hung nvidia-smi never returns and
its exec holds a thread: until it does, that container is not checked again (ok None, "still
running"), so the threads of hung checks do not pile up, one more each read. Cost: one list
call, an inspect per new container (cached by id), and one exec per GPU container, all in
parallel (run_parallel) with a timeout; `every` runs the execs only every Nth read. The reads
between return nothing (not the last results again): the rules count consecutive failed
checks, and a repeated result is not a second check.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from composegen.engine import docker as eng
from composegen.errors import ComposegenError
from composegen.serving.verify import gpu_access_check
from composegen.watch.probes import RunningContainers, guarded
from composegen.watch.types import GpuAccessSignal, ProbeError, Signal

SMI = ["nvidia-smi", "-L"]


def planned_of(gpus: Sequence[str]) -> tuple[list[str], int | None]:
    """visible_gpus' ids -> gpu_access_check's (planned ids, count)."""
    planned = [g for g in gpus if not g.startswith("count=") and g != "all"]
    count = next((int(g.split("=", 1)[1]) for g in gpus if g.startswith("count=")), None)
    return planned, count


def access_signal(service: str, container: Any, code: int | None, out: str) -> GpuAccessSignal:
    cid = str(container.id)
    if code is None:
        return GpuAccessSignal(service, cid, None, "nvidia-smi -L did not answer in time")
    planned, count = planned_of(eng.visible_gpus(container.attrs or {}))
    check = gpu_access_check(service, str(container.name), planned, count, code, out)
    detail = check.detail
    if check.ok is False and code != 0:
        lines = out.strip().splitlines()
        detail = lines[0] if lines else f"nvidia-smi -L failed (exit {code})"
    return GpuAccessSignal(service, cid, check.ok, detail)


class GpuAccessProbe:
    name = "gpu-access"

    def __init__(self, client: Any, project: str, every: int = 1, timeout_s: float = 10.0) -> None:
        self.client = client
        self.project = project
        self.every = max(1, int(every))
        self.timeout_s = timeout_s
        self.reads = 0
        self._in_flight: set[str] = set()  # ids of the containers whose exec has not returned
        self._flight_lock = threading.Lock()
        self.running = RunningContainers(
            client, project, lambda c: bool(eng.device_requests(c.attrs or {}))
        )

    def _gpu_containers(self) -> list[tuple[str, Any]]:
        return self.running.select()

    @guarded
    def read(self, now: float) -> Sequence[Signal]:
        self.reads += 1
        if (self.reads - 1) % self.every:
            return []
        try:
            targets = self._gpu_containers()
        except ComposegenError as exc:
            return [ProbeError(self.name, exc.message)]
        results: dict[str, GpuAccessSignal] = {}
        lock = threading.Lock()

        def check(target: tuple[str, Any]) -> None:
            service, c = target
            cid = str(c.id)
            with self._flight_lock:
                busy = cid in self._in_flight
                self._in_flight.add(cid)
            if busy:
                sig = GpuAccessSignal(
                    service, cid, None, "nvidia-smi -L of an earlier check is still running"
                )
            else:
                try:
                    code, out = eng.exec_output(
                        c, SMI, self.timeout_s, on_done=lambda: self._landed(cid)
                    )
                except BaseException:
                    self._landed(cid)  # no exec started (no thread): nothing is in flight
                    raise
                sig = access_signal(service, c, code, out)
            with lock:
                results[sig.container_id] = sig

        failures = eng.run_parallel(check, targets, label=lambda t: t[0])
        out: list[Signal] = [results[c.id] for _, c in targets if c.id in results]
        out += [ProbeError(self.name, f"{name}: {eng.first_line(exc)}") for name, exc in failures]
        return out

    def _landed(self, cid: str) -> None:
        with self._flight_lock:
            self._in_flight.discard(cid)

    def close(self) -> None:
        self.running.cache.clear()
