"""Carry out one Decision of the rules (`watch --heal`), and say what was done as events.

- recreate: a new container, never a restart (a container that lost its GPU keeps it lost
  until it is recreated: nvidia-container-toolkit#48). Make before break where the new one can
  run beside the old (engine/switch.replace_behind_gateway: no host port, its GPU stays
  usable for both); else the old one stops first (engine/up.replace_container). Under the
  stack's lock: a manual `up` or `fallback` that holds it makes the heal wait for the next
  interval ("busy"), which is not a failed heal.
- gpu-failed / cpu / restore: engine/failover.py's gpus_failed / to_cpu / restore, the
  functions `composegen fallback` calls; they take the lock themselves.
- An engine that refuses GPU requests during any of them: to CPU.

Every action gives one event of rule "heal" whose `value` is the action ("recreate",
"gpu-failed", "cpu", "restore"): level info when done, critical when it failed; an action that
did not run because the stack was busy is an info event with `value` "busy".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from composegen.engine import compose_v2, failover, switch
from composegen.engine import docker as eng
from composegen.engine import up as engine_up
from composegen.engine.compose import Project, Service, load_project
from composegen.engine.state import LockedError, project_lock, read_mode
from composegen.errors import ComposegenError
from composegen.watch.types import Decision, Event


class Healer:
    def __init__(
        self,
        project: Project,
        io: failover.Io,
        *,
        inventory: str | None,
        wait_timeout_s: float = 600.0,
        cancel: threading.Event | None = None,
        record: Callable[[Decision, bool, float], None] | None = None,
    ) -> None:
        """`cancel`: the watcher's stop event (SIGTERM / SIGINT). A recreate waiting for its
        new container stops waiting when it is set: make before break removes the new one and
        the old one serves on; with the old one stopped first, the new one keeps the route.

        `record`: the rules' Rules.record. A move to CPU that a heal makes on its own (the
        engine refused GPU requests) is recorded with it as the "cpu" decision it is, so the
        CPU rate limit and breaker count it, and `apply` answers False for the decision that
        failed. Without it the move's result stands for the original decision."""
        self.project = project
        self.io = io
        self.inventory = inventory
        self.wait_timeout_s = wait_timeout_s
        self.cancel = cancel if cancel is not None else threading.Event()
        self.record = record

    def _fresh(self) -> Project:
        """The project as it is on disk now (a failover rewrites docker-compose.yml)."""
        path = self.project.directory / "docker-compose.yml"
        if not path.exists():
            return self.project
        return load_project(path, self.project.name)

    def apply(self, decision: Decision, now: float) -> tuple[bool, list[Event]]:
        """Carry out the decision: (done?, the events that say what happened). A busy stack is
        (False, [info "busy"]); Rules.record must not count it as a failed heal (see
        `is_busy`)."""
        said: list[str] = []

        def say(line: str) -> None:
            said.append(line)
            self.io.say(line)

        io = failover.Io(say, self.io.progress, self.io.connect)
        t0 = time.monotonic()
        target = decision.service or (
            f"GPU {','.join(map(str, decision.gpus))}" if decision.gpus else None
        )
        try:
            detail = self._run(decision, io)
        except LockedError as exc:
            return False, [
                Event(
                    now,
                    "info",
                    "heal",
                    f"{describe(decision)} not done this interval: busy ({exc.message}); "
                    "tried again next interval",
                    service=decision.service,
                    gpu=decision.gpus[0] if decision.gpus else None,
                    value="busy",
                )
            ]
        except eng.GpuUnsupportedError as exc:
            first = self._failed(decision, now, exc, said)
            if decision.action == "cpu":
                return False, [first]
            ok, more = self._to_cpu_after(exc, now)
            if self.record is None:
                return ok, [first, *more]
            return False, [first, *more]
        except ComposegenError as exc:
            return False, [self._failed(decision, now, exc, said)]
        except Exception as exc:  # an engine error nothing mapped: a failed heal, not a crash
            err = ComposegenError(f"{type(exc).__name__}: {eng.first_line(exc)}")
            return False, [self._failed(decision, now, err, said)]
        took = time.monotonic() - t0
        where = f" {target}" if target else ""
        return True, [
            Event(
                now,
                "info",
                "heal",
                f"{decision.action}{where}: {detail} in {took:.1f}s (why: {decision.reason})",
                service=decision.service,
                gpu=decision.gpus[0] if decision.gpus else None,
                value=decision.action,
            )
        ]

    def _failed(
        self, decision: Decision, now: float, exc: ComposegenError, said: list[str]
    ) -> Event:
        last = f"; last step: {said[-1]}" if said else ""
        return Event(
            now,
            "critical",
            "heal",
            f"{describe(decision)} failed: {exc.message} (why: {decision.reason}){last}",
            service=decision.service,
            gpu=decision.gpus[0] if decision.gpus else None,
            value=decision.action,
        )

    def _to_cpu_after(self, exc: ComposegenError, now: float) -> tuple[bool, list[Event]]:
        """The engine cannot honour GPU requests any more: the stack goes to CPU."""
        why = f"the engine refuses GPU requests ({eng.first_line(exc)})"
        cpu = Decision("cpu", why)
        ok, events = self.apply(cpu, now)
        if self.record is not None and not is_busy(events):
            self.record(cpu, ok, now)
        return ok, events

    def _run(self, decision: Decision, io: failover.Io) -> str:
        project = self._fresh()
        if decision.action == "recreate":
            if not decision.service:
                raise ComposegenError("recreate: the decision names no service")
            return self.recreate(project, decision.service, io)
        if decision.action == "gpu-failed":
            ids = ",".join(map(str, decision.gpus))
            out = failover.gpus_failed(project, ids, io)
            return "; ".join(out.lines) or "nothing moved"
        if decision.action == "cpu":
            out = failover.to_cpu(project, io)
            return "on CPU" if out.changed else "already on CPU"
        out = failover.restore(project, io, inventory=self.inventory)
        return "back on the GPU plan" if out.changed else "already on the GPU plan"

    def recreate(self, project: Project, service: str, io: failover.Io) -> str:
        client = io.connect()
        with project_lock(project.directory, project.name, f"watch --heal: recreate {service}"):
            svc, owner = self._service(project, service)
            old = _container_of(client, project.name, service)
            if old is None:
                raise ComposegenError(f"recreate {service}: it has no container to replace")
            # created as `up` creates it: Compose v2's hash too, so neither tool recreates it
            v2_hashes = compose_v2.service_hashes(owner)
            with io.progress([service, "gateway"], f"watch --heal: recreate {service}") as rep:
                engine_up.ensure_image(client, svc, "missing")
                publishes = any(p.host_port is not None for p in svc.ports)
                if old.status == "running" and not publishes:
                    try:
                        new = switch.replace_behind_gateway(
                            client,
                            owner,
                            svc,
                            old,
                            rep,
                            self.wait_timeout_s,
                            project.directory,
                            v2_hashes=v2_hashes,
                            cancel=self.cancel,
                        )
                        how = "make before break"
                    except engine_up.UpFailed as exc:
                        if self.cancel.is_set():
                            raise  # stopping: the old one serves on, never stop it now
                        if switch.can_overlap(svc, old):
                            raise  # on GPUs of its own: a real failure, the old one serves on
                        # on the same GPU the old process may hold the memory the new one needs
                        io.say(
                            f"{service}: the new container did not become ready beside the old "
                            f"one ({eng.first_line(exc)}); replacing it with the old one "
                            "stopped first"
                        )
                        new = self._stop_first(client, owner, svc, old, rep, v2_hashes)
                        how = "the old one stopped first: the new one needed its GPU"
                else:
                    new = self._stop_first(client, owner, svc, old, rep, v2_hashes)
                    how = "the old one stopped first"
        return f"new container {new.id[:12]} ready, {old.id[:12]} removed ({how})"

    def _stop_first(
        self,
        client: Any,
        owner: Project,
        svc: Service,
        old: Any,
        rep: engine_up.Report,
        v2_hashes: Mapping[str, str],
    ) -> Any:
        """The old container stops, then the new one starts (a published port, or a GPU the
        two cannot share): engine/up.replace_container, then wait until it is ready, then the
        gateway reloads: nginx resolves upstream names when it loads, and the new container has
        a new address (as engine/up.reload_gateway after `up` recreates a backend). The old
        container is gone either way, so a new one that does not become ready still gets the
        route (best effort), and the wait's failure is raised."""
        with eng.mapped_errors(f"service {svc.name}"):
            new = engine_up.replace_container(client, owner, svc, old.id, v2_hashes)
        deadline = time.monotonic() + self.wait_timeout_s
        try:
            engine_up.wait_ready(
                svc, new, deadline, self.cancel, rep, cancelled="watch is stopping"
            )
        except BaseException:
            with suppress(Exception):
                _reload_gateway(client, owner.name, svc, rep)
            raise
        _reload_gateway(client, owner.name, svc, rep)
        return new

    def _service(self, project: Project, name: str) -> tuple[Service, Project]:
        """The service and the compose project it belongs to: the main file, or in
        cpu-fallback the CPU variant's file."""
        for s in project.services:
            if s.name == name:
                return s, project
        if read_mode(project.directory, project.name).get("mode") == "cpu-fallback":
            cpu = switch.cpu_project(project.directory, project.name)
            for s in cpu.services:
                if s.name == name:
                    return s, cpu
        raise ComposegenError(f"recreate {name}: no such service in {project.file}")


def _reload_gateway(client: Any, project: str, svc: Service, rep: engine_up.Report) -> None:
    """`nginx -s reload` in the stack's running gateway (none, or the gateway itself
    recreated: nothing to do)."""
    if svc.labels.get("io.composegen.service") == "gateway":
        return
    with eng.mapped_errors(f"project {project}"):
        gw = switch._gateway(client, project)
    if gw is None:
        return
    code = eng.exec_with_timeout(gw, ["nginx", "-s", "reload"], 10)
    if code != 0:
        raise ComposegenError(
            f"gateway: nginx -s reload failed (exit {code}); it may still send {svc.name}'s "
            "requests to the old container's address"
        )
    rep("gateway", "reloaded", f"{svc.name} -> its new container")


def _container_of(client: Any, project: str, service: str) -> Any:
    with eng.mapped_errors(f"project {project}"):
        for c in client.containers.list(
            all=True, filters={"label": [f"{eng.LABEL_PROJECT}={project}"]}
        ):
            labels = c.labels or {}
            if labels.get(eng.LABEL_SERVICE) == service and labels.get(eng.LABEL_ONEOFF) != "True":
                return c
    return None


def describe(decision: Decision) -> str:
    """What the decision does, in words: "recreate whisper", "fail over GPU 0 (fallback
    --gpu-failed)"."""
    if decision.action == "recreate":
        return f"recreate {decision.service}"
    if decision.action == "gpu-failed":
        return f"fail over GPU {','.join(map(str, decision.gpus))} (fallback --gpu-failed)"
    if decision.action == "cpu":
        return "move the stack to CPU (fallback --cpu)"
    return "restore the GPU plan (fallback --restore)"


def is_busy(events: list[Event]) -> bool:
    """The heal did not run because the stack's lock was held: not a failed heal."""
    return any(e.rule == "heal" and e.value == "busy" for e in events)
