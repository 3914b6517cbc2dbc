"""The rules: one Snapshot in, events and at most one heal decision out. Pure: no I/O, no clock
(the time is the snapshot's), state in plain dicts keyed by service, container id or GPU index.

Events fire on transitions: an alert when a condition starts, an `info` "resolved" when it ends,
never once per interval for a standing condition (Xids, ECC rises, restarts and OOM kills are
occurrences: one event each). Hysteresis: a condition that needs N bad reads to start needs
`healthy_after` good reads to end, so a flapping reading never alerts.

Decisions (the heal policy), at most one per evaluate, priority cpu > gpu-failed > recreate >
restore. A decision repeats while its condition holds; `record` (heal's result) feeds the rate
limit (`heal_max` heals of one target per `heal_window_s`, then one rate-limit event and no
decision until the window has room) and the circuit breaker (after `circuit_breaker` failed
heals in a row that target is not healed again until watch restarts). A target is a service for
recreate, the action itself for cpu, gpu-failed and restore. The GPU rules are in gpu_rules.py,
the service rules in service_rules.py.
"""

from __future__ import annotations

from composegen.watch.alerting import Alerts
from composegen.watch.gpu_rules import GpuRules, GpuState
from composegen.watch.service_rules import ServiceRules
from composegen.watch.settings import Thresholds
from composegen.watch.types import Decision, Event, Snapshot, StackInfo

GPU_MODES = frozenset({"gpu", "gpu-failover"})  # where a failing GPU is acted on
FALLBACK_MODES = frozenset({"cpu-fallback", "gpu-failover"})  # where restore applies
PRIORITY = ("cpu", "gpu-failed", "recreate", "restore")

Target = tuple[str, str | None]  # (action, service): what the rate limit and breaker count


class Rules:
    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.alerts = Alerts()
        self.gpus = GpuRules(thresholds, self.alerts)
        self.services = ServiceRules(thresholds, self.alerts)
        self.healthy_since: float | None = None  # the restore hold-down clock
        self.attempts: dict[Target, list[float]] = {}  # heals recorded, for the rate limit
        self.failures: dict[Target, int] = {}  # failed heals in a row, for the breaker
        self.pending: list[Event] = []  # from record(), reported by the next evaluate

    def evaluate(self, snap: Snapshot) -> tuple[list[Event], list[Decision]]:
        self.alerts.start(snap.time, self.pending)
        self.pending = []
        self._probes(snap)
        gpus = self.gpus.read(snap)
        wanted = self._gpu_decisions(snap.stack, gpus)
        why = self.services.read(snap)
        for service in sorted(why):
            if set(snap.stack.planned.get(service, ())) & gpus.failing:
                continue  # its GPU is the cause: gpu-failed moves it, a recreate would not help
            wanted.append(Decision("recreate", f"{service}: {'; '.join(why[service])}", service))
        wanted += self._restore(snap.stack, gpus)
        decision = self._choose(wanted)
        return self.alerts.events, [decision] if decision else []

    def record(self, decision: Decision, ok: bool, now: float) -> None:
        """Heal's result: counts toward the rate limit, and a failure toward the breaker."""
        target = _target(decision)
        self.attempts.setdefault(target, []).append(now)
        if ok:
            self.failures.pop(target, None)
            if decision.action == "recreate" and decision.service is not None:
                for rule in self.services.forget(decision.service):
                    self.pending.append(
                        Event(
                            now,
                            "info",
                            rule,
                            f"{decision.service} recreated (resolved)",
                            service=decision.service,
                        )
                    )
            if decision.action == "restore":
                self.healthy_since = None
            return
        n = self.failures[target] = self.failures.get(target, 0) + 1
        if n == self.t.circuit_breaker:
            what = decision.action + (f" of {decision.service}" if decision.service else "")
            self.pending.append(
                Event(
                    now,
                    "critical",
                    "circuit-breaker",
                    f"{what} failed {n} times in a row: no more tries until watch restarts "
                    "(fix it by hand)",
                    service=decision.service,
                    value=n,
                    threshold=self.t.circuit_breaker,
                )
            )

    def _probes(self, snap: Snapshot) -> None:
        failed = {e.probe: e.message for e in snap.errors}
        if snap.gpus is None:
            failed.setdefault("gpus", "no GPU source answered")
        a = self.alerts
        was = {k[1] for k in a.flags if isinstance(k, tuple) and k[0] == "probe"}
        for name in sorted(was | set(failed)):
            change = a.flag(("probe", name), name in failed)
            if change:
                a.event("warn", "probe", f"probe {name} failed: {failed[name]}", value=name)
            elif change is False:
                a.event("info", "probe", f"probe {name} answers again (resolved)", value=name)

    def _gpu_decisions(self, stack: StackInfo, gpus: GpuState) -> list[Decision]:
        """A failing GPU of the plan -> gpu-failed; no usable GPU at all -> cpu. Never on a
        GPU source that did not answer."""
        planned = {i for gs in stack.planned.values() for i in gs}
        if not gpus.known or not (planned or stack.original_gpus):
            return []  # a stack planned without GPUs has none to lose
        none_left = self.alerts.flag(("no-gpu",), not gpus.usable)
        if none_left:
            self.alerts.event("critical", "gpu-lost", "no usable GPU left", value=0, threshold=1)
        elif none_left is False:
            self.alerts.event("info", "gpu-lost", "a usable GPU is back (resolved)")
        if stack.mode not in GPU_MODES:
            return []
        if not gpus.usable:
            return [Decision("cpu", "no usable GPU left: fall back to the CPU")]
        hit = tuple(sorted((planned & gpus.failing) - set(stack.failed)))
        if not hit:
            return []
        on = ", ".join(map(str, hit))
        return [Decision("gpu-failed", f"GPU {on} failing: move its services off it", gpus=hit)]

    def _restore(self, stack: StackInfo, gpus: GpuState) -> list[Decision]:
        """Back to the plan once every GPU of it has been well for restore_after_s (hold-down);
        any failure in between restarts the clock."""
        a, hold = self.alerts, self.t.restore_after_s
        if stack.mode not in FALLBACK_MODES:
            self.healthy_since = None
            return []
        need = set(stack.original_gpus) or (
            {i for gs in stack.planned.values() for i in gs} | set(stack.failed)
        )
        names = ", ".join(map(str, sorted(need)))
        if not (need and gpus.known and need <= gpus.usable):
            if self.healthy_since is not None:
                held = a.now - self.healthy_since
                a.event(
                    "info",
                    "restore",
                    f"hold-down reset after {held:g}s: GPUs {names} are not all well",
                    value=held,
                    threshold=hold,
                )
            self.healthy_since = None
            return []
        if self.healthy_since is None:
            self.healthy_since = a.now
            a.event(
                "info",
                "restore",
                f"GPUs {names} well: restore after {hold:g}s more of this (hold-down)",
                value=0.0,
                threshold=hold,
            )
        held = a.now - self.healthy_since
        if held < hold:
            return []
        return [Decision("restore", f"GPUs {names} well for {held:g}s: back to the plan")]

    def _choose(self, wanted: list[Decision]) -> Decision | None:
        """The first decision by priority whose target is neither broken nor rate-limited."""
        t, a = self.t, self.alerts
        wanted.sort(key=lambda d: PRIORITY.index(d.action))
        limited: set[object] = set()
        chosen = None
        for d in wanted:
            target = _target(d)
            if self.failures.get(target, 0) >= t.circuit_breaker:
                continue
            recent = [x for x in self.attempts.get(target, []) if x > a.now - t.heal_window_s]
            self.attempts[target] = recent
            if len(recent) >= t.heal_max:
                limited.add(target)
                if a.flag(("rate-limit", target), True):
                    a.event(
                        "warn",
                        "rate-limit",
                        f"{d.action} held back: {len(recent)} heals in the last "
                        f"{t.heal_window_s:g}s ({d.reason})",
                        service=d.service,
                        value=len(recent),
                        threshold=t.heal_max,
                    )
            elif chosen is None:
                chosen = d
        a.drop("rate-limit", limited)
        return chosen


def _target(d: Decision) -> Target:
    return (d.action, d.service if d.action == "recreate" else None)
