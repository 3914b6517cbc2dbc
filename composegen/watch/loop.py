"""The watcher: one interval at a time, read every probe, judge, heal, report.

    StackInfo (render.json + state file, re-read only when they change)
    probes (in parallel) -> Snapshot.of -> Rules.evaluate -> events, at most one decision
    decision -> Healer.apply (with --heal; else an info event "would ...: run with --heal")
    snapshot + events -> sinks (metrics, the JSON-lines event log, the webhook, the terminal)

Callable without Click: `Watcher(directory, project, WatchOptions(...), io).run(stop)`. The
parts of the other modules (probes, rules, metrics, outputs) are built by `default_parts`; a
test passes its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from composegen import app
from composegen.engine import docker as eng
from composegen.engine import failover
from composegen.engine.state import read_mode
from composegen.errors import ComposegenError
from composegen.watch.heal import describe, is_busy
from composegen.watch.pacing import PACED, Paced
from composegen.watch.types import (
    ContainerSignal,
    Decision,
    Event,
    Probe,
    ProbeError,
    Signal,
    Snapshot,
    StackInfo,
)

EVENT_LOG = ".composegen/watch-events.jsonl"


@dataclass(frozen=True)
class WatchOptions:
    interval_s: float = 5.0
    heal: bool = False
    metrics: str | None = None  # ADDR:PORT for /metrics
    notify: str | None = None  # webhook URL
    inventory: str | None = None  # GPU signals from this file instead of NVML
    restore_after_s: float | None = None  # None: the profile's / the default hold-down
    sets: tuple[str, ...] = ()  # --set watch.KEY=VALUE
    json: bool = False
    once: bool = False


# --- what the stack is meant to be ------------------------------------------------------------


def stack_info(directory: Path, project: str) -> StackInfo:
    """From `.composegen/render.json` (the current plan, after failovers, and the original
    one) and the state file's mode."""
    inputs = app.load_inputs(directory)
    current = app.rebuild(inputs)
    original = app.rebuild(replace(inputs, failed=())) if inputs.failed else current
    mode = str(read_mode(directory, project).get("mode") or "gpu")
    planned = {i.name: i.gpus for i in current.plan.instances if i.device == "gpu"}
    groups: dict[str, list[str]] = {}
    for inst in current.plan.instances:
        groups.setdefault(inst.group, []).append(inst.name)
    routes = {
        group: names[0] if len(names) == 1 else _service_of(current, names[0])
        for group, names in groups.items()
    }
    return StackInfo(
        name=project,
        mode=mode,
        planned=planned,
        uuids={g.index: g.uuid for g in inputs.inventory.gpus if g.uuid},
        failed=tuple(sorted({i for step in inputs.failed for i in step})),
        original_gpus=tuple(sorted({i for inst in original.plan.instances for i in inst.gpus})),
        routes=routes,
    )


def _service_of(built: app.Rendered, instance: str) -> str:
    return next(i.service for i in built.plan.instances if i.name == instance)


def project_name(directory: Path, project: str | None) -> str:
    """-p NAME, else the name the compose file gives (as `up` takes it); normalised as every
    other command normalises it (`-p My.Stack` is the project `mystack`), so the watcher finds
    the containers and the state file that `up -p My.Stack` made."""
    if project:
        from composegen.engine.compose import project_name as normalised

        return normalised(project, {}, {}, directory)
    from composegen.engine.compose import load_project

    return load_project(directory / "docker-compose.yml", None).name


class _StackCache:
    """StackInfo, rebuilt only when render.json or the mode changed (a rebuild plans the
    whole stack again: too much for every interval)."""

    def __init__(self, directory: Path, project: str) -> None:
        self.directory = directory
        self.project = project
        self.key: tuple[Any, ...] | None = None
        self.info: StackInfo | None = None
        self.rebuilds = 0

    def get(self) -> StackInfo:
        try:
            st = os.stat(self.directory / app.STATE_FILE)
            stamp: tuple[Any, ...] = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = ()
        mode = read_mode(self.directory, self.project)
        key = (stamp, mode.get("mode"), mode.get("since"))
        if self.info is None or key != self.key:
            self.info = stack_info(self.directory, self.project)
            self.key = key
            self.rebuilds += 1
        return self.info


# --- the parts --------------------------------------------------------------------------------


class RulesLike(Protocol):
    def evaluate(self, snap: Snapshot) -> tuple[list[Event], list[Decision]]: ...

    def record(self, decision: Decision, ok: bool, now: float) -> None: ...


class HealerLike(Protocol):
    def apply(self, decision: Decision, now: float) -> tuple[bool, list[Event]]: ...


class Sink(Protocol):
    def handle(self, snap: Snapshot, events: Sequence[Event]) -> None: ...

    def close(self) -> None: ...


ProbesFactory = Callable[[Any], list[Probe]]  # (docker client or None) -> probes


@dataclass
class Parts:
    """What a Watcher works with. `probes` gets the Docker client (None while the engine does
    not answer: then only the probes that need no engine)."""

    probes: ProbesFactory
    rules: RulesLike
    healer: HealerLike | None
    sinks: list[Sink] = field(default_factory=list)
    connect: Callable[[], Any] = field(default=lambda: eng.connect())  # (looked up when called)


# --- the watcher ------------------------------------------------------------------------------


class Watcher:
    def __init__(
        self,
        directory: Path,
        project: str | None,
        options: WatchOptions,
        io: failover.Io,
        parts: Parts | None = None,
    ) -> None:
        self.directory = directory
        self.project = project_name(directory, project)
        self.options = options
        self.io = io
        self.stack = _StackCache(directory, self.project)
        if parts is None:
            from composegen.watch.parts import default_parts

            parts = default_parts(directory, self.project, options, io)
        self.parts = parts
        self.client: Any = None
        self.probes: list[Probe] = []
        self._engine_error: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.read_timeout_s = max(30.0, options.interval_s * 3)  # a read's wait, then an error
        self._pool_for: list[Probe] = []  # the probe list the pool was sized for
        # id(probe) -> (the probe, its last read); the probe kept so that an id is not reused
        self._reading: dict[int, tuple[Probe, Future[Sequence[Signal]]]] = {}
        self._would: Decision | None = None
        self._closed = False

    # one interval

    def step(self, now: float) -> tuple[Snapshot, list[Event]]:
        """One interval: (the snapshot as shown, the events). The rules judge only what was
        read this interval; the outputs also show a paced probe's last values."""
        events: list[Event] = []
        info = self._info(now, events)
        self._connect()
        signals, known = self._read(now)
        fresh = Snapshot.of(now, info, signals)
        snap = Snapshot.of(now, info, signals + known) if known else fresh
        found, decisions = self.parts.rules.evaluate(fresh)
        events += found
        if decisions:
            events += self._act(decisions[0], now)
        else:
            self._would = None
        for sink in self.parts.sinks:
            try:
                sink.handle(snap, events)
            except Exception as exc:  # an output that fails must not stop the watching
                self.io.say(f"watch: {type(sink).__name__}: {eng.first_line(exc)}")
        return snap, events

    def _info(self, now: float, events: list[Event]) -> StackInfo:
        try:
            return self.stack.get()
        except ComposegenError as exc:
            if self.stack.info is None:
                raise
            events.append(
                Event(now, "warn", "probe", f"stack files unreadable, kept the last: {exc}")
            )
            return self.stack.info

    def _connect(self) -> None:
        """Build the probes; those that need the engine once it answers. An engine that does
        not answer is a ProbeError of the containers probe each interval (the rules turn it
        into an event when it starts and when it ends) and a retry, never a crash."""
        if self.client is not None and self.probes:
            return
        try:
            client = self.parts.connect()
        except ComposegenError as exc:
            self._engine_error = exc.message
            client = None
        else:
            self._engine_error = None
        if client is None and self.probes:
            return  # keep the engine-free probes built before
        for p in self.probes:
            p.close()
        self.client = client
        interval = self.options.interval_s
        self.probes = [
            Paced(p, interval) if p.name in PACED else p for p in self.parts.probes(client)
        ]

    def _read(self, now: float) -> tuple[list[Signal], list[Signal]]:
        """Every probe that is due, in parallel (most wait on the engine, a file or HTTP):
        (what was read now, the last values of the paced probes not read now)."""
        known: list[Signal] = []
        if not self.probes:
            return [], known
        self._size_pool()
        assert self._pool is not None
        out: list[Signal] = []
        due = []
        for p in self.probes:
            busy = self._reading.get(id(p))
            if busy is not None and busy[0] is p and not busy[1].done():
                # its last read has not returned (timed out): a second read at once would run
                # beside it on state that is not thread-safe; this interval goes without it
                out.append(ProbeError(p.name, "still reading (the last read has not returned)"))
            elif isinstance(p, Paced) and not p.due():
                known += p.last
            else:
                due.append(p)
        futures = [(p, self._pool.submit(p.read, now)) for p in due]
        self._reading.update((id(p), (p, fut)) for p, fut in futures)
        for probe, fut in futures:
            try:
                out.extend(fut.result(timeout=self.read_timeout_s))
            except Exception as exc:  # a probe must return its failure; one that raised
                out.append(ProbeError(probe.name, f"{type(exc).__name__}: {eng.first_line(exc)}"))
        if self._engine_error is not None:
            out.append(ProbeError("containers", self._engine_error))
        containers = [s for s in out if isinstance(s, ContainerSignal)]
        if containers:
            for p in self.probes:
                if isinstance(p, Paced):
                    p.set_targets(containers)
        return out, known

    def _size_pool(self) -> None:
        """One worker per probe, sized again whenever the probe list changes (the engine
        down at the first interval builds only the engine-free probes). A probe is never
        read twice at once, so a read that hangs holds at most its own worker."""
        if self._pool is not None and self._pool_for == self.probes:
            return
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # reads still running there finish on their own
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, len(self.probes)), thread_name_prefix="watch-probe"
        )
        self._pool_for = list(self.probes)
        self._reading = {
            k: (p, f) for k, (p, f) in self._reading.items() if any(p is q for q in self.probes)
        }

    def _act(self, decision: Decision, now: float) -> list[Event]:
        if self.parts.healer is None or not self.options.heal:
            if decision == self._would:  # said already: a standing decision is said once
                return []
            self._would = decision
            return [
                Event(
                    now,
                    "info",
                    "heal",
                    f"would {describe(decision)} ({decision.reason}): run with --heal",
                    service=decision.service,
                    gpu=decision.gpus[0] if decision.gpus else None,
                )
            ]
        ok, events = self.parts.healer.apply(decision, now)
        if not is_busy(events):
            self.parts.rules.record(decision, ok, now)
        return events

    # the cadence

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set (SIGTERM / SIGINT in the CLI), or after one step with --once:
        a steady cadence (the rest of the interval is slept, not a fixed pause after the
        work), then everything closed."""
        interval = max(0.05, self.options.interval_s)
        if isinstance(getattr(self.parts.healer, "cancel", None), threading.Event):
            # a heal under way backs out (or finishes its swap) when the watcher must stop
            setattr(self.parts.healer, "cancel", stop)  # noqa: B010
        try:
            nxt = time.monotonic()
            while not stop.is_set():
                self.step(time.time())
                if self.options.once:
                    break
                nxt += interval
                delay = nxt - time.monotonic()
                if delay < 0:  # a long step (a heal): start again from now, no burst
                    nxt = time.monotonic()
                    delay = 0.0
                stop.wait(delay)
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for p in self.probes:
            try:
                p.close()
            except Exception as exc:
                self.io.say(f"watch: closing probe {p.name}: {eng.first_line(exc)}")
        for sink in self.parts.sinks:
            try:
                sink.close()
            except Exception as exc:
                self.io.say(f"watch: closing {type(sink).__name__}: {eng.first_line(exc)}")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
