"""The service rules: restarts and restart loops, OOM kills, health with hysteresis, GPU access
inside the container, and models off their GPU. `read` returns, per service, why it should be
recreated (the decision itself is Rules' to make)."""

from __future__ import annotations

from composegen.watch.alerting import Alerts, Latch
from composegen.watch.settings import Thresholds
from composegen.watch.types import ContainerSignal, Snapshot

Reasons = dict[str, list[str]]  # service -> why it should be recreated


class ServiceRules:
    def __init__(self, t: Thresholds, alerts: Alerts) -> None:
        self.t, self.a = t, alerts
        self.health = Latch(t.unhealthy_after, t.healthy_after)  # by service
        self.access = Latch(t.unhealthy_after, t.healthy_after)  # by service
        self.off_gpu = Latch(1, t.healthy_after)  # by (service, model)
        self.restart_count: dict[str, int] = {}  # container id -> last restart count
        self.restarts: dict[str, list[float]] = {}  # container id -> times of its restarts
        self.ids: dict[str, frozenset[str]] = {}  # service -> its container ids
        self.service_of: dict[str, str] = {}  # container id -> service

    def forget(self, service: str) -> list[str]:
        """The service was recreated: its new container earns its own alerts. The rules whose
        alert this clears."""
        cleared = [
            rule
            for rule, latch in (("health", self.health), ("gpu-access", self.access))
            if service in latch.on
        ]
        self.health.forget(service)
        self.access.forget(service)
        return cleared

    def _replaced(self, service: str, rules: list[str]) -> None:
        for rule in rules:
            self.a.event("info", rule, f"{service} has a new container (resolved)", service=service)

    def read(self, snap: Snapshot) -> Reasons:
        by_service: dict[str, list[ContainerSignal]] = {}
        for c in snap.containers:
            by_service.setdefault(c.service, []).append(c)
        for service, cs in by_service.items():
            ids = frozenset(c.container_id for c in cs)
            if self.ids.get(service, ids) != ids:
                self._replaced(service, self.forget(service))
            self.ids[service] = ids
            self.service_of.update((cid, service) for cid in ids)
        failed = {e.probe for e in snap.errors}
        why: Reasons = {}
        for c in snap.containers:
            self._restarts(c, why)
            self._oom(c, why)
        if "containers" not in failed:  # forget containers that are gone
            live = {c.container_id for c in snap.containers}
            for table in (self.restart_count, self.restarts):
                for cid in [k for k in table if k not in live]:
                    del table[cid]
            for rule in ("restart-loop", "oom"):
                for gone in self.a.drop(rule, set(live)):
                    svc = self.service_of.get(str(gone), "?")
                    self._replaced(svc, [rule])
            self.service_of = {k: v for k, v in self.service_of.items() if k in live}
        for service, cs in sorted(by_service.items()):
            # a stopped container's health is "unhealthy" (Docker sets it when it stops):
            # judged only while it runs; none running, the count stands
            self._health(service, [c.health for c in cs if c.state == "running"], why)
        self._access(snap, why)
        if "residency" not in failed:
            self._residency(snap)
        return self._recreatable(snap, by_service, why)

    def _recreatable(
        self, snap: Snapshot, by_service: dict[str, list[ContainerSignal]], why: Reasons
    ) -> Reasons:
        """Recreates only for services with a container running (or restarting, in a loop):
        a stopped one was stopped by someone (an OOM-killed one has its own reason, kept). And
        never one that the mode stopped on purpose: in cpu-fallback the GPU services (started
        again, they would hold GPUs the gateway does not route to, skipping the hold-down)."""
        out: Reasons = {}
        stopped_on_purpose: set[str] = set()
        if snap.stack.mode == "cpu-fallback":
            stopped_on_purpose = set(snap.stack.planned) | {
                c.service for c in snap.containers if c.gpus
            }
        for svc, reasons in why.items():
            if svc in stopped_on_purpose:
                continue
            states = {c.state for c in by_service.get(svc, [])}
            if "running" in states or "restarting" in states:
                out[svc] = reasons
            else:
                kept = [r for r in reasons if r.startswith("OOM-killed")]
                if kept:
                    out[svc] = kept
        return out

    def _restarts(self, c: ContainerSignal, why: Reasons) -> None:
        cid, svc, t = c.container_id, c.service, self.t
        before = self.restart_count.get(cid)  # None: first seen, its count is the baseline
        self.restart_count[cid] = c.restart_count
        times = [x for x in self.restarts.get(cid, []) if x > self.a.now - t.restart_window_s]
        if before is not None and c.restart_count > before:
            n = c.restart_count - before
            times += [self.a.now] * n
            self.a.event(
                "warn",
                "restart-loop",
                f"{svc} restarted {n} time(s) (restart count {c.restart_count})",
                service=svc,
                value=c.restart_count,
            )
        self.restarts[cid] = times
        looping = self.a.flag(("restart-loop", cid), len(times) >= t.restart_loop)
        if looping:
            self.a.event(
                "critical",
                "restart-loop",
                f"{svc} is in a restart loop: {len(times)} restarts in {t.restart_window_s:g}s",
                service=svc,
                value=len(times),
                threshold=t.restart_loop,
            )
        elif looping is False:
            self.a.event("info", "restart-loop", f"{svc} restart loop over (resolved)", service=svc)
        if len(times) >= t.restart_loop:
            why.setdefault(svc, []).append(f"restart loop ({len(times)} restarts)")

    def _oom(self, c: ContainerSignal, why: Reasons) -> None:
        if self.a.flag(("oom", c.container_id), c.oom_killed):
            self.a.event(
                "critical",
                "oom",
                f"{c.service} was killed for lack of memory (OOM, {c.state}, exit code "
                f"{c.exit_code})",
                service=c.service,
                value=c.exit_code,
            )
        # `restarting`: the engine's restart policy is already bringing it back
        if c.oom_killed and c.state not in ("running", "restarting"):
            why.setdefault(c.service, []).append(f"OOM-killed and {c.state}")

    def _health(self, svc: str, states: list[str | None], why: Reasons) -> None:
        # starting / no healthcheck: cannot tell, the count stands
        bad = True if "unhealthy" in states else (False if "healthy" in states else None)
        change = self.health.read(svc, bad)
        if change:
            self.a.event(
                "warn",
                "health",
                f"{svc} unhealthy for {self.t.unhealthy_after} checks in a row",
                service=svc,
                value="unhealthy",
                threshold=self.t.unhealthy_after,
            )
        elif change is False:
            self.a.event(
                "info",
                "health",
                f"{svc} healthy for {self.t.healthy_after} checks in a row (resolved)",
                service=svc,
                value="healthy",
                threshold=self.t.healthy_after,
            )
        if svc in self.health.on:
            why.setdefault(svc, []).append("unhealthy")

    def _access(self, snap: Snapshot, why: Reasons) -> None:
        reads: dict[str, list[bool | None]] = {}
        detail: dict[str, str] = {}
        for a in snap.gpu_access:
            reads.setdefault(a.service, []).append(a.ok)
            if a.ok is False and a.detail:
                detail[a.service] = a.detail
        for svc, oks in sorted(reads.items()):
            bad = True if False in oks else (False if True in oks else None)
            change = self.access.read(svc, bad)
            if change:
                said = f": {detail[svc]}" if svc in detail else ""
                self.a.event(
                    "critical",
                    "gpu-access",
                    f"{svc} lost GPU access ({self.t.unhealthy_after} checks in a row){said}",
                    service=svc,
                    value=detail.get(svc),
                    threshold=self.t.unhealthy_after,
                )
            elif change is False:
                self.a.event(
                    "info", "gpu-access", f"{svc} sees its GPU again (resolved)", service=svc
                )
            if svc in self.access.on:
                why.setdefault(svc, []).append("lost GPU access (a restart does not bring it back)")

    def _residency(self, snap: Snapshot) -> None:
        limit = self.t.min_gpu_fraction
        now = {(r.service, r.model): r.gpu_fraction for r in snap.residency}
        known = {k for k in self.off_gpu.run if isinstance(k, tuple)}
        for svc, model in sorted(set(now) | known):
            fraction = now.get((svc, model))
            change = self.off_gpu.read((svc, model), fraction is not None and fraction < limit)
            if change and fraction is not None:
                self.a.event(
                    "warn",
                    "model-off-gpu",
                    f"{svc}: {model} is {fraction:.0%} on the GPU, the rest on the CPU",
                    service=svc,
                    value=fraction,
                    threshold=limit,
                )
            elif change is False:
                self.a.event(
                    "info",
                    "model-off-gpu",
                    f"{svc}: {model} "
                    + ("unloaded" if fraction is None else "back on the GPU")
                    + " (resolved)",
                    service=svc,
                    value=fraction,
                    threshold=limit,
                )
            if fraction is None and (svc, model) not in self.off_gpu.on:
                self.off_gpu.forget((svc, model))
