"""`up`, `down` and `status`: converge a project on the engine, then prove it is healthy.

The convergence is computed as a value first (what to create, recreate, start, keep, remove)
and carried out second, as in docker-compose 1.x. Each service runs in its own thread that
waits for its depends_on conditions, so services of one level start in parallel. Readiness is
probed actively: the service's own healthcheck command runs with exec as soon as the container
runs, instead of waiting for Docker's first scheduled check (interval 30 s by default).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from composegen.engine import docker as eng
from composegen.engine.compose import Project, Service
from composegen.errors import ComposegenError

Action = Literal["create", "recreate", "start", "keep"]
Report = Callable[[str, str, str], None]  # (service, state, detail)


@dataclass(frozen=True)
class Existing:
    id: str
    service: str
    config_hash: str
    status: str  # running | exited | created | restarting | ...


@dataclass(frozen=True)
class Convergence:
    actions: dict[str, Action]
    remove: tuple[str, ...]  # container ids of services no longer in the file, or duplicates
    existing: dict[str, str] = field(default_factory=dict)  # service -> container id kept


def converge(project: Project, existing: list[Existing]) -> Convergence:
    """Pure: what `up` must do so that the engine matches the file."""
    by_service: dict[str, list[Existing]] = {}
    for e in existing:
        by_service.setdefault(e.service, []).append(e)
    actions: dict[str, Action] = {}
    remove: list[str] = []
    wanted = {s.name for s in project.services}
    for svc in project.services:
        have = by_service.get(svc.name, [])
        remove.extend(e.id for e in have[1:])
        if not have:
            actions[svc.name] = "create"
        elif have[0].config_hash != svc.config_hash():
            actions[svc.name] = "recreate"
        elif have[0].status != "running":
            actions[svc.name] = "start"
        else:
            actions[svc.name] = "keep"
    for name, have in by_service.items():
        if name not in wanted:
            remove.extend(e.id for e in have)
    kept = {n: h[0].id for n, h in by_service.items() if n in wanted and h}
    return Convergence(actions, tuple(remove), kept)


class UpFailed(ComposegenError):
    def __init__(self, message: str, details: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.details = details


@dataclass
class _Track:
    started: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)
    failed: threading.Event = field(default_factory=threading.Event)
    container: Any = None
    action: str = ""
    ready_after_s: float | None = None


def list_existing(client: Any, project: str) -> list[Existing]:
    out = []
    with eng.mapped_errors(f"project {project}"):
        for c in client.containers.list(
            all=True, filters={"label": f"{eng.LABEL_PROJECT}={project}"}
        ):
            labels = c.labels or {}
            if labels.get(eng.LABEL_ONEOFF) == "True":
                continue
            out.append(
                Existing(
                    c.id,
                    labels.get(eng.LABEL_SERVICE, ""),
                    labels.get(eng.LABEL_HASH, ""),
                    c.status,
                )
            )
    return out


def ensure_resources(client: Any, project: Project) -> None:
    from docker.errors import NotFound

    with eng.mapped_errors(f"project {project.name}"):
        for net in project.networks:
            name = eng.resource_name(project, net.name)
            try:
                client.networks.get(name)
            except NotFound:
                client.networks.create(
                    name,
                    driver=net.driver,
                    internal=net.internal,
                    labels={
                        **net.labels,
                        eng.LABEL_PROJECT: project.name,
                        eng.LABEL_NETWORK: net.name,
                    },
                )
        for vol in project.volumes:
            name = eng.resource_name(project, vol.name)
            try:
                client.volumes.get(name)
            except NotFound:
                client.volumes.create(
                    name,
                    labels={
                        **vol.labels,
                        eng.LABEL_PROJECT: project.name,
                        eng.LABEL_VOLUME: vol.name,
                    },
                )


def _logs_tail(container: Any, n: int = 30) -> str:
    try:
        return str(container.logs(tail=n).decode("utf-8", "replace"))
    except Exception:
        return "(no logs)"


def _health_log(attrs: dict[str, Any]) -> str:
    log = ((attrs.get("State") or {}).get("Health") or {}).get("Log") or []
    lines = []
    for entry in log[-3:]:
        out = str(entry.get("Output", "")).strip().replace("\n", " ")[:300]
        lines.append(f"  exit {entry.get('ExitCode')}: {out}")
    return "\n".join(lines)


def _failure(svc: Service, container: Any, why: str) -> UpFailed:
    try:
        container.reload()
        attrs = container.attrs
    except Exception:
        attrs = {}
    details = []
    health = _health_log(attrs)
    if health:
        details.append(f"health log of {svc.name}:\n{health}")
    details.append(f"last 30 log lines of {svc.name}:\n{_logs_tail(container)}")
    return UpFailed(
        f"service {svc.name} {why}",
        "\n".join(details),
        "fix it and run `composegen up` again; it converges from where it stopped",
    )


def _probe_once(svc: Service, container: Any) -> bool:
    h = svc.healthcheck
    if h is None:
        return True
    cmd = list(h.test[1:]) if h.test[0] == "CMD" else ["/bin/sh", "-c", " ".join(h.test[1:])]
    code = eng.exec_with_timeout(container, cmd, h.timeout_s)
    return code == 0


def wait_ready(svc: Service, container: Any, deadline: float, cancel: threading.Event) -> None:
    """Until the service is ready: running and its healthcheck passing (our probe or Docker's).
    An exited, restarting or unhealthy container ends the wait at once."""
    first_restarts: int | None = None
    while True:
        if cancel.is_set():
            raise UpFailed(f"service {svc.name}: stopped waiting (another service failed)")
        try:
            container.reload()
        except Exception as exc:
            raise UpFailed(f"service {svc.name} disappeared while starting: {exc}") from None
        state = container.attrs.get("State") or {}
        restarts = int(container.attrs.get("RestartCount") or 0)
        if first_restarts is None:
            first_restarts = restarts
        status = state.get("Status")
        if status in ("exited", "dead") or restarts > first_restarts or status == "restarting":
            raise _failure(svc, container, f"exited (exit code {state.get('ExitCode')})")
        health = (state.get("Health") or {}).get("Status")
        if health == "unhealthy":
            raise _failure(svc, container, "is unhealthy")
        if status == "running" and (health == "healthy" or _probe_once(svc, container)):
            return
        if time.monotonic() > deadline:
            raise _failure(svc, container, "did not become healthy before the deadline")
        time.sleep(0.05)


def ensure_image(client: Any, svc: Service, pull: str) -> None:
    from docker.errors import APIError, ImageNotFound

    try:
        client.images.get(svc.image)
        return
    except ImageNotFound:
        pass
    how = (
        f"docker pull {svc.image} (or build it), or render with --image KEY=IMAGE to use "
        "another image"
    )
    if pull == "never":
        raise eng.ImageMissingError(
            f"service {svc.name}: image {svc.image} is not on this engine (--pull never)", how
        )
    try:
        client.images.pull(svc.image)
    except (APIError, ImageNotFound) as exc:
        raise eng.ImageMissingError(
            f"service {svc.name}: image {svc.image} is not on this engine and could not be "
            f"pulled: {getattr(exc, 'explanation', None) or exc}",
            how,
        ) from None


def _dep_ok(cond: str, track: _Track) -> bool:
    return track.ready.is_set() if cond == "service_healthy" else track.started.is_set()


def _run_service(
    client: Any,
    project: Project,
    svc: Service,
    action: Action,
    existing_id: str | None,
    pull: str,
    tracks: dict[str, _Track],
    deadline: float,
    wait: bool,
    cancel: threading.Event,
    report: Report,
    errors: list[BaseException],
) -> None:
    t = tracks[svc.name]
    try:
        for dep, cond in svc.depends_on.items():
            while not _dep_ok(cond, tracks[dep]):
                if cancel.is_set() or tracks[dep].failed.is_set():
                    raise UpFailed(f"service {svc.name}: not started, its dependency {dep} failed")
                if time.monotonic() > deadline:
                    raise UpFailed(f"service {svc.name}: gave up waiting for {dep} ({cond})")
                time.sleep(0.05)
        t0 = time.monotonic()
        with eng.mapped_errors(f"service {svc.name}"):
            if action == "recreate":
                report(svc.name, "recreating", "")
                old = client.containers.get(existing_id)
                old.stop(timeout=int(svc.stop_grace_s))
                old.remove(force=True)
            if action in ("create", "recreate"):
                ensure_image(client, svc, pull)
                report(svc.name, "creating", svc.image)
                created = eng.create_container(client, project, svc, svc.config_hash())
                container = client.containers.get(created.id)
                container.start()
            else:
                container = client.containers.get(existing_id)
                if action == "start":
                    container.start()
        t.container = container
        t.action = action
        t.started.set()
        report(svc.name, "started" if action != "keep" else "running", action)
        if wait or any(
            c == "service_healthy"
            for s in project.services
            for d, c in s.depends_on.items()
            if d == svc.name
        ):
            report(svc.name, "waiting", "health")
            wait_ready(svc, container, deadline, cancel)
            t.ready_after_s = time.monotonic() - t0
            report(svc.name, "healthy", f"{t.ready_after_s:.1f}s")
        t.ready.set()
    except BaseException as exc:
        t.failed.set()
        cancel.set()
        errors.append(exc)
        report(svc.name, "failed", str(exc).splitlines()[0][:200])


@dataclass(frozen=True)
class UpResult:
    actions: dict[str, Action]
    removed: int
    gpu_map: dict[str, tuple[str, ...]]
    gateway: str | None
    seconds: float


def _engine_alive(client: Any) -> bool:
    try:
        client.ping()
        return True
    except Exception:  # any failure to answer means: not there
        return False


def verify_gpus(project: Project, tracks: dict[str, _Track]) -> dict[str, tuple[str, ...]]:
    """Each container's DeviceRequests must be what the compose file asks: no more, no less."""
    out: dict[str, tuple[str, ...]] = {}
    for svc in project.services:
        c = tracks[svc.name].container
        if c is None:
            continue
        if not tracks[svc.name].ready.is_set():
            c.reload()  # (a ready container was just reloaded by its readiness probe)
        got = eng.device_requests(c.attrs)
        want = [
            {
                "Driver": g.driver,
                "DeviceIDs": list(g.device_ids) if g.device_ids else None,
                "Count": g.count or 0,
                "Capabilities": [list(g.capabilities)],
            }
            for g in svc.gpus
        ]
        norm_got = [
            {
                "Driver": r.get("Driver"),
                "DeviceIDs": r.get("DeviceIDs") or None,
                "Count": r.get("Count") or 0,
                "Capabilities": r.get("Capabilities"),
            }
            for r in got
        ]
        if norm_got != want:
            raise UpFailed(
                f"service {svc.name}: its container holds GPUs {norm_got} but the file asks "
                f"for {want}",
                hint="run `composegen up` again to recreate it",
            )
        if svc.gpus:
            out[svc.name] = eng.visible_gpus(c.attrs)
    return out


def reload_gateway(
    project: Project,
    actions: dict[str, Action],
    tracks: dict[str, _Track],
    report: Report,
    removed: int = 0,
) -> None:
    """nginx resolves upstream names when it starts or reloads: after a backend got a new
    container (and so a new address), a gateway that was kept must reload."""
    changed = [n for n, a in actions.items() if a in ("create", "recreate")]
    for svc in project.services:
        if svc.labels.get("io.composegen.service") != "gateway" or actions[svc.name] != "keep":
            continue
        if not [n for n in changed if n != svc.name] and not removed:
            continue
        code = eng.exec_with_timeout(tracks[svc.name].container, ["nginx", "-s", "reload"], 10)
        if code != 0:
            raise UpFailed(f"service {svc.name}: nginx -s reload failed (exit {code})")
        report(svc.name, "reloaded", "backends changed")


def probe_gateway(project: Project, deadline: float) -> str | None:
    """End to end over HTTP on 127.0.0.1: the gateway's /healthz, or any answer on a port."""
    import httpx

    targets = []
    for svc in project.services:
        for p in svc.ports:
            if p.host_port is None:
                continue
            host = "127.0.0.1" if p.host_ip in ("", "0.0.0.0", "127.0.0.1") else p.host_ip
            if ":" in host:
                host = f"[{host}]"
            path = "/healthz" if svc.labels.get("io.composegen.service") == "gateway" else "/"
            targets.append((svc.name, f"http://{host}:{p.host_port}{path}", path == "/healthz"))
    if not targets:
        return None
    last = ""
    for name, url, strict in targets:
        while True:
            try:
                r = httpx.get(url, timeout=3.0)
                if not strict or r.status_code == 200:
                    break
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if time.monotonic() > deadline:
                raise UpFailed(f"service {name}: {url} does not answer ({last})")
            time.sleep(0.2)
    return targets[0][1]


def up(
    client: Any,
    project: Project,
    *,
    wait: bool = True,
    wait_timeout_s: float = 600.0,
    report: Report | None = None,
    pull: str = "missing",
    remove_orphans: bool = True,
    reload_on_removal: bool = True,
) -> UpResult:
    rep: Report = report or (lambda s, st, d: None)
    t0 = time.monotonic()
    deadline = t0 + wait_timeout_s
    if wait:  # the HTTP client is needed only at the end: load it while containers start
        threading.Thread(target=lambda: __import__("httpx"), daemon=True).start()
    ensure_resources(client, project)
    conv = converge(project, list_existing(client, project.name))
    if not remove_orphans:  # a second file of the same project (the CPU variant) adds to it
        wanted = {s.name for s in project.services}
        conv = Convergence(
            conv.actions,
            tuple(
                cid
                for cid in conv.remove
                if any(
                    e.id == cid and e.service in wanted for e in list_existing(client, project.name)
                )
            ),
            conv.existing,
        )
    removed = 0
    with eng.mapped_errors(f"project {project.name}"):
        for cid in conv.remove:
            c = client.containers.get(cid)
            rep(c.labels.get(eng.LABEL_SERVICE, c.name), "removing", "not in the file")
            c.remove(force=True)
            removed += 1
    tracks = {s.name: _Track() for s in project.services}
    cancel = threading.Event()
    errors: list[BaseException] = []
    threads = [
        threading.Thread(
            target=_run_service,
            args=(
                client,
                project,
                s,
                conv.actions[s.name],
                conv.existing.get(s.name),
                pull,
                tracks,
                deadline,
                wait,
                cancel,
                rep,
                errors,
            ),
            name=f"up-{s.name}",
            daemon=True,
        )
        for s in project.services
    ]
    for th in threads:
        th.start()
    try:
        for th in threads:
            while th.is_alive():
                th.join(0.2)
    except KeyboardInterrupt:
        cancel.set()
        raise
    if errors and not _engine_alive(client):
        raise eng.NoEngineError(
            "the Docker engine went away while up was waiting "
            f"({str(errors[0]).splitlines()[0][:160]})",
            "start it again, then run `composegen up`: it converges",
        )
    if errors:
        first = next(
            (
                e
                for e in errors
                if isinstance(e, ComposegenError)
                and "dependency" not in str(e)
                and "stopped waiting" not in str(e)
            ),
            errors[0],
        )
        if isinstance(first, ComposegenError):
            raise first
        raise UpFailed(f"up failed: {first}")
    gpu_map = verify_gpus(project, tracks)
    reload_gateway(project, conv.actions, tracks, rep, removed if reload_on_removal else 0)
    gateway = probe_gateway(project, deadline) if wait else None
    return UpResult(conv.actions, removed, gpu_map, gateway, time.monotonic() - t0)


def down(
    client: Any, project_name: str, volumes: bool = False, report: Report | None = None
) -> tuple[int, int, int]:
    rep: Report = report or (lambda s, st, d: None)
    label = f"{eng.LABEL_PROJECT}={project_name}"
    with eng.mapped_errors(f"project {project_name}"):
        containers = client.containers.list(all=True, filters={"label": label})

        def stop(c: Any) -> None:
            rep(c.labels.get(eng.LABEL_SERVICE, c.name), "stopping", "")
            try:
                c.stop(timeout=10)
            finally:
                c.remove(force=True)
            rep(c.labels.get(eng.LABEL_SERVICE, c.name), "removed", "")

        threads = [threading.Thread(target=stop, args=(c,), daemon=True) for c in containers]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        nets = client.networks.list(filters={"label": label})
        for n in nets:
            n.remove()
        vols = 0
        if volumes:
            for v in client.volumes.list(filters={"label": label}):
                v.remove(force=True)
                vols += 1
    return len(containers), len(nets), vols


@dataclass(frozen=True)
class Row:
    service: str
    container: str
    state: str
    health: str
    gpus: tuple[str, ...]
    ports: tuple[str, ...]
    mode: str


def status(client: Any, project_name: str) -> list[Row]:
    rows = []
    with eng.mapped_errors(f"project {project_name}"):
        for c in client.containers.list(
            all=True, filters={"label": f"{eng.LABEL_PROJECT}={project_name}"}
        ):
            a = c.attrs
            st = a.get("State") or {}
            ports = []
            for cport, binds in ((a.get("NetworkSettings") or {}).get("Ports") or {}).items():
                for b in binds or []:
                    ports.append(f"{b.get('HostIp')}:{b.get('HostPort')}->{cport}")
            rows.append(
                Row(
                    service=c.labels.get(eng.LABEL_SERVICE, ""),
                    container=c.name,
                    state=str(st.get("Status")),
                    health=str((st.get("Health") or {}).get("Status") or "-"),
                    gpus=eng.visible_gpus(a),
                    ports=tuple(sorted(ports)),
                    mode=c.labels.get("io.composegen.mode", "-"),
                )
            )
    return sorted(rows, key=lambda r: r.service)
