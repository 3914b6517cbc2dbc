"""The values that pass between watch's parts. No I/O here, no engine, no NVML.

probes/*  --signals-->  Snapshot  --rules.Rules.evaluate-->  [Event], [Decision]
Decision  --heal.Healer.apply-->  [Event]   (through engine/failover.py and engine/up.py)
Snapshot, Event  -->  metrics.Metrics, view, events.EventLog / Notifier
"""

from __future__ import annotations

import time as _time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

Level = Literal["info", "warn", "critical"]


# --- signals: what the probes read, one interval at a time ------------------------------------


@dataclass(frozen=True)
class ContainerSignal:
    """One container of the stack (engine inspect)."""

    service: str
    container_id: str
    state: str  # created | running | restarting | exited | dead | paused
    health: str | None  # starting | healthy | unhealthy; None: no healthcheck
    restart_count: int
    oom_killed: bool
    exit_code: int | None
    gpus: tuple[str, ...] = ()  # NVIDIA_VISIBLE_DEVICES of the container (UUIDs or indices)


@dataclass(frozen=True)
class GpuSignal:
    """One GPU as NVML (or the --inventory file) reports it this interval."""

    index: int
    uuid: str | None
    name: str
    health: str = "ok"  # ok | lost | error (inventory.Health)
    reason: str | None = None
    temperature_c: int | None = None
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    utilization_pct: int | None = None
    power_w: float | None = None
    xids: tuple[int, ...] = ()  # Xid events seen since the last read
    ecc_uncorrectable: int | None = None  # volatile uncorrectable ECC error count


@dataclass(frozen=True)
class GpuAccessSignal:
    """The `verify` check inside a GPU container: `nvidia-smi -L` answers or not."""

    service: str
    container_id: str
    ok: bool | None  # None: could not tell (no nvidia-smi in the image, exec timed out)
    detail: str = ""


@dataclass(frozen=True)
class ResidencySignal:
    """One model loaded in an Ollama service (`/api/ps`)."""

    service: str
    model: str
    gpu_fraction: float  # size_vram / size; 1.0 = all on the GPU
    expires_at: str | None = None


@dataclass(frozen=True)
class RequestSignal:
    """One request through the gateway, from its JSON access log."""

    time: float
    route: str  # the upstream group the gateway proxied to ($proxy_host)
    upstream: str | None  # upstream_addr (the last one tried when nginx retried)
    status: int
    upstream_status: str | None
    request_time_s: float
    service: str | None = None  # the service behind `upstream`, when the probe could tell


@dataclass(frozen=True)
class ProbeError:
    """A probe that could not read this interval (engine down, NVML gone, bad file)."""

    probe: str
    message: str


Signal = (
    ContainerSignal | GpuSignal | GpuAccessSignal | ResidencySignal | RequestSignal | ProbeError
)


class Probe(Protocol):
    name: str

    def read(self, now: float) -> Sequence[Signal]:
        """This interval's signals; a failure is returned as ProbeError, not raised."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StackInfo:
    """What the stack is meant to be, from render.json and the state file (read by the loop)."""

    name: str  # the Compose project
    mode: str = "gpu"  # gpu | gpu-failover | cpu-fallback
    # service -> host GPU indices it is planned on (the current plan, after failovers)
    planned: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # GPU index -> UUID of the recorded inventory (render.json)
    uuids: dict[int, str] = field(default_factory=dict)
    failed: tuple[int, ...] = ()  # GPUs already failed over (render.json `failed`)
    # every GPU index of the original plan (before failovers): what restore needs healthy
    original_gpus: tuple[int, ...] = ()
    routes: dict[str, str] = field(default_factory=dict)  # gateway route -> service


@dataclass(frozen=True)
class Snapshot:
    time: float
    stack: StackInfo
    containers: tuple[ContainerSignal, ...] = ()
    gpus: tuple[GpuSignal, ...] | None = None  # None: no GPU source answered
    gpu_access: tuple[GpuAccessSignal, ...] = ()
    residency: tuple[ResidencySignal, ...] = ()
    requests: tuple[RequestSignal, ...] = ()
    errors: tuple[ProbeError, ...] = ()

    @classmethod
    def of(cls, now: float, stack: StackInfo, signals: Iterable[Signal]) -> Snapshot:
        items = list(signals)
        gpus = tuple(s for s in items if isinstance(s, GpuSignal))
        gpu_probe_failed = any(isinstance(s, ProbeError) and s.probe == "gpus" for s in items)
        return cls(
            time=now,
            stack=stack,
            containers=tuple(s for s in items if isinstance(s, ContainerSignal)),
            gpus=None if (gpu_probe_failed and not gpus) else gpus,
            gpu_access=tuple(s for s in items if isinstance(s, GpuAccessSignal)),
            residency=tuple(s for s in items if isinstance(s, ResidencySignal)),
            requests=tuple(s for s in items if isinstance(s, RequestSignal)),
            errors=tuple(s for s in items if isinstance(s, ProbeError)),
        )


# --- what the rules produce -------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One alert or action, the single event type watch (and later up) reports."""

    time: float
    level: Level
    rule: str  # memory | temperature | health | restart-loop | oom | model-off-gpu | xid |
    # ecc | gpu-lost | gpu-access | heal | probe | ...
    message: str
    service: str | None = None
    gpu: int | None = None  # host GPU index
    value: float | str | None = None
    threshold: float | str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["time"] = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(self.time)) + (
            f".{int(self.time * 1000) % 1000:03d}Z"
        )
        return d


Action = Literal["recreate", "gpu-failed", "cpu", "restore"]


@dataclass(frozen=True)
class Decision:
    """An action the rules want; heal carries it out (only with --heal)."""

    action: Action
    reason: str
    service: str | None = None  # recreate: the service
    gpus: tuple[int, ...] = ()  # gpu-failed: the host GPU indices
