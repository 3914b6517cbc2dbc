"""The watcher's parts as `composegen watch` uses them: the probes, the rules with the stack's
thresholds, the healer (with --heal), and the outputs (request stats, /metrics, the event log,
the webhook, the terminal). loop.Watcher takes them as one `Parts` value, so a test can pass
stand-ins for any of them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from composegen import app
from composegen.engine import failover
from composegen.engine.compose import load_project
from composegen.watch import settings, view
from composegen.watch.events import EventLog, Notifier, event_line
from composegen.watch.loop import EVENT_LOG, Parts, ProbesFactory, Sink, WatchOptions
from composegen.watch.metrics import Metrics
from composegen.watch.probes.containers import ContainersProbe
from composegen.watch.probes.gateway import GatewayLogProbe
from composegen.watch.probes.gpu_access import GpuAccessProbe
from composegen.watch.probes.gpus import GpusProbe
from composegen.watch.probes.residency import ResidencyProbe
from composegen.watch.rules import Rules
from composegen.watch.stats import Stats
from composegen.watch.types import Event, Probe, Snapshot


def thresholds(directory: Path, options: WatchOptions) -> settings.Thresholds:
    """The profile's `watch:` section over the defaults, then --set watch.KEY=VALUE, then
    --restore-after."""
    built = app.rebuild(app.load_inputs(directory))
    th = settings.thresholds_for(built.profile, options.sets)
    if options.restore_after_s is not None:
        th = replace(th, restore_after_s=options.restore_after_s)
    return th


def probes_for(project: str, options: WatchOptions) -> ProbesFactory:
    def build(client: Any) -> list[Probe]:
        out: list[Probe] = [GpusProbe(options.inventory)]
        if client is None:  # the engine does not answer (yet): the GPUs alone
            return out
        out += [
            ContainersProbe(client, project),
            GpuAccessProbe(client, project),
            ResidencyProbe(client, project),
            GatewayLogProbe(client, project),
        ]
        return out

    return build


class StatsSink:
    """Feeds the rolling request stats that the metrics and the view read."""

    def __init__(self) -> None:
        self.stats = Stats()

    def handle(self, snap: Snapshot, events: Sequence[Event]) -> None:
        self.stats.add(snap.requests)

    def close(self) -> None:
        pass


class MetricsSink:
    def __init__(self, stack: str, addr: str, stats: StatsSink) -> None:
        self.metrics = Metrics(stack)
        self.server = self.metrics.serve(addr)
        self.stats = stats

    @property
    def port(self) -> int:
        return int(self.server.port)

    def handle(self, snap: Snapshot, events: Sequence[Event]) -> None:
        self.metrics.set_mode(snap.stack.mode)
        self.metrics.observe(snap, self.stats.stats)
        self.metrics.record_events(events)

    def close(self) -> None:
        self.server.close()


class EventLogSink:
    def __init__(self, path: Path) -> None:
        self.log = EventLog(path)

    def handle(self, snap: Snapshot, events: Sequence[Event]) -> None:
        if events:
            self.log.write(events)

    def close(self) -> None:
        pass


class NotifySink:
    def __init__(self, url: str, stack: str, warn: Any) -> None:
        self.notifier = Notifier(url, stack=stack, warn=warn)

    def handle(self, snap: Snapshot, events: Sequence[Event]) -> None:
        if events:
            self.notifier.send(events)

    def close(self) -> None:
        self.notifier.close()


class TerminalSink:
    """A live table on a terminal; plain event lines in a log; JSON lines with --json; one
    snapshot with --once."""

    def __init__(self, options: WatchOptions, stats: StatsSink) -> None:
        self.options = options
        self.stats = stats
        self.live: view.LiveView | None = None
        self.last: list[Event] = []
        self.tty = sys.stdout.isatty() and not options.json and not options.once

    def handle(self, snap: Snapshot, events: Sequence[Event]) -> None:
        self.last = (self.last + list(events))[-5:]
        stats = self.stats.stats
        if self.options.json:
            for line in view.json_lines(snap, stats, events):
                print(line, flush=True)
            return
        if self.tty:
            if self.live is None:
                self.live = view.LiveView()
                self.live.__enter__()
            self.live.update(snap, stats, self.last)
            return
        if self.options.once:
            # the snapshot's footer shows the last 5 events: the earlier ones first, each once
            for e in list(events)[:-5]:
                print(event_line(e), flush=True)
            print(view.snapshot_text(snap, stats, list(events)[-5:]), end="", flush=True)
            return
        for e in events:
            print(event_line(e), flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None


def default_parts(directory: Path, project: str, options: WatchOptions, io: failover.Io) -> Parts:
    rules = Rules(thresholds(directory, options))
    healer = None
    if options.heal:
        from composegen.watch.heal import Healer

        main = load_project(directory / "docker-compose.yml", project)
        healer = Healer(main, io, inventory=options.inventory, record=rules.record)
    stats = StatsSink()
    sinks: list[Sink] = [stats]
    if options.metrics:
        sinks.append(MetricsSink(project, options.metrics, stats))
    sinks.append(EventLogSink(directory / EVENT_LOG))
    if options.notify:
        sinks.append(NotifySink(options.notify, project, io.say))
    sinks.append(TerminalSink(options, stats))
    return Parts(probes=probes_for(project, options), rules=rules, healer=healer, sinks=sinks)
