"""`up`, `down` and `status`: converge a project on the engine, then prove it is healthy.

The convergence is computed as a value first (what to create, recreate, start, keep, remove)
and carried out second, as in docker-compose 1.x. Each service runs in its own thread that
waits for its depends_on conditions, so services of one level start in parallel. Readiness is
probed actively: the service's own healthcheck command runs with exec as soon as the container
runs, instead of waiting for Docker's first scheduled check (interval 30 s by default).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from composegen.engine import compose_v2
from composegen.engine import docker as eng
from composegen.engine.compose import Project, Service
from composegen.errors import ComposegenError

Action = Literal["create", "recreate", "start", "keep"]
Report = Callable[[str, str, str], None]  # (service, state, detail)


@dataclass(frozen=True)
class Existing:
    id: str
    service: str
    config_hash: str  # com.docker.compose.config-hash: Compose v2's, or composegen's own
    status: str  # running | exited | created | restarting | ...
    own_hash: str = ""  # io.composegen.config-hash: composegen's own, where it created it


@dataclass(frozen=True)
class Convergence:
    actions: dict[str, Action]
    remove: tuple[str, ...]  # container ids of services no longer in the file, or duplicates
    existing: dict[str, str] = field(default_factory=dict)  # service -> container id kept


def up_to_date(svc: Service, e: Existing, v2_hashes: Mapping[str, str]) -> bool:
    """The container was created for the service as the file says now: composegen's own hash
    matches (its label, or the Compose label of a container from an earlier composegen), or
    Compose v2's hash of the service (compose_v2.service_hashes) matches the label v2 wrote."""
    own = svc.config_hash()
    if own in (e.own_hash, e.config_hash):
        return True
    return bool(v2_hashes.get(svc.name)) and v2_hashes.get(svc.name) == e.config_hash


def converge(
    project: Project, existing: list[Existing], v2_hashes: Mapping[str, str] | None = None
) -> Convergence:
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
        elif not up_to_date(svc, have[0], v2_hashes or {}):
            actions[svc.name] = "recreate"
        elif have[0].status != "running":
            actions[svc.name] = "start"
        else:
            actions[svc.name] = "keep"
    for name, have in by_service.items():
        # a service of an inactive Compose profile (started by `docker compose --profile`) is
        # part of the file, not an orphan
        if name not in wanted and name not in project.inactive:
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
                    labels.get(compose_v2.LABEL_OWN_HASH, ""),
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
    """The failure of the service's current container: its state now, its health log, and the
    tail of its logs (the last lines are those of its latest run)."""
    try:
        container.reload()
        attrs = container.attrs
    except Exception:
        attrs = {}
    details = []
    health = _health_log(attrs)
    if health:
        details.append(f"health log of {svc.name}:\n{health}")
    cid = str(getattr(container, "id", "") or "")[:12]
    state = attrs.get("State") or {}
    now = f"container {cid}, {state.get('Status', 'unknown')}" if cid else "container"
    details.append(f"last 30 log lines of {svc.name} ({now}):\n{_logs_tail(container)}")
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


def _down_why(state: dict[str, Any], restarts: int) -> str:
    status = state.get("Status")
    code = state.get("ExitCode")
    again = f", restarted {restarts} time{'s' if restarts != 1 else ''} by its restart policy"
    if status == "restarting":
        return f"keeps restarting (last exit code {code}{again if restarts else ''})"
    if status in ("exited", "dead"):
        return f"{status} (exit code {code}{again if restarts else ''})"
    return f"was restarted by its restart policy (now {status}{again})"


def wait_ready(
    svc: Service,
    container: Any,
    deadline: float,
    cancel: threading.Event,
    report: Report | None = None,
    cancelled: str = "another service failed",
) -> None:
    """Until the service is ready: running and its healthcheck passing (our probe or Docker's).
    An unhealthy or exited container ends the wait at once, and so does one that its restart
    policy restarts, unless that happens within its healthcheck's start period: such a restart
    is waited out. A failure reports the container's state now; `cancel` set ends the wait
    (UpFailed, saying why: `cancelled`)."""
    rep: Report = report or (lambda s, st, d: None)
    t0 = time.monotonic()
    grace = svc.healthcheck.start_period_s if svc.healthcheck is not None else 0.0
    seen: int | None = None  # the restart count already waited out
    while True:
        if cancel.is_set():
            raise UpFailed(f"service {svc.name}: stopped waiting ({cancelled})")
        try:
            container.reload()
        except Exception as exc:
            raise UpFailed(f"service {svc.name} disappeared while starting: {exc}") from None
        state = container.attrs.get("State") or {}
        restarts = int(container.attrs.get("RestartCount") or 0)
        if seen is None:
            seen = restarts
        status = state.get("Status")
        # The engine decides at the exit whether its restart policy restarts the container:
        # then its status is "restarting" (never "exited" in between). An exited container
        # stays down (killed, stopped, on-failure with exit 0, retries used up).
        if status in ("exited", "dead"):
            raise _failure(svc, container, _down_why(state, restarts - seen))
        if status == "restarting" or restarts > seen:
            if time.monotonic() - t0 >= grace:
                raise _failure(svc, container, _down_why(state, restarts - seen))
            if restarts > seen:
                rep(svc.name, "restarting", f"restart {restarts}, within its start period")
            seen = restarts
            if status != "running":
                time.sleep(0.1)
                continue
        health = (state.get("Health") or {}).get("Status")
        if health == "unhealthy":
            raise _failure(svc, container, "is unhealthy")
        if status == "running" and (health == "healthy" or _probe_once(svc, container)):
            return
        if time.monotonic() > deadline:
            raise _failure(svc, container, "did not become healthy before the deadline")
        time.sleep(0.05)


PullReport = Callable[[str, dict[str, Any]], None]  # (service, the engine's pull event)


def ensure_image(client: Any, svc: Service, pull: str, on_pull: PullReport | None = None) -> None:
    """The service's image is on the engine afterwards (pulled if missing, unless --pull
    never), or ImageMissingError says why with the engine's whole message."""
    from docker.errors import ImageNotFound

    with eng.mapped_errors(f"service {svc.name}"):
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
        eng.pull_image(client, svc.image, (lambda ev: on_pull(svc.name, ev)) if on_pull else None)
    except eng.ImageMissingError as exc:
        raise eng.ImageMissingError(
            f"service {svc.name}: image {svc.image} is not on this engine and could not be "
            f"pulled: {exc.message}",
            how,
        ) from None


def create_service(
    client: Any,
    project: Project,
    svc: Service,
    v2_hashes: Mapping[str, str],
    name: str | None = None,
) -> Any:
    """Create the service's container with the labels both tools read: composegen's own hash,
    and in com.docker.compose.config-hash Compose v2's hash where known (else composegen's), plus
    the image ID in com.docker.compose.image, which Compose v2 also compares."""
    own = svc.config_hash()
    extra = {compose_v2.LABEL_OWN_HASH: own}
    # no image ID to record: Compose v2 then recreates it once, nothing else changes
    with contextlib.suppress(Exception):
        extra[compose_v2.LABEL_IMAGE] = str(client.images.get(svc.image).id)
    labelled = replace(svc, labels={**svc.labels, **extra})
    return eng.create_container(
        client, project, labelled, v2_hashes.get(svc.name) or own, name=name
    )


def replace_container(
    client: Any,
    project: Project,
    svc: Service,
    old_id: str,
    v2_hashes: Mapping[str, str] | None = None,
) -> Any:
    """Recreate a changed service, make before break as far as one name allows: the new
    container is created first under a temporary name (creating claims no port and no GPU),
    so an engine that refuses it leaves the old one running; then the old one is stopped and
    removed, the new one takes the service's name and starts. Returns the new container."""
    import secrets

    final = eng.container_name(project, svc)
    temp = f"{final}-new-{secrets.token_hex(3)}"
    created = create_service(client, project, svc, v2_hashes or {}, name=temp)
    old = client.containers.get(old_id)
    old.stop(timeout=int(svc.stop_grace_s))
    old.remove(force=True)
    client.api.rename(created.id, final)
    container = client.containers.get(created.id)
    container.start()
    return container


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
    on_pull: PullReport | None = None,
    v2_hashes: Mapping[str, str] | None = None,
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
        if action in ("create", "recreate"):
            # the image first: a failed pull leaves the old container serving
            ensure_image(client, svc, pull, on_pull)
        with eng.mapped_errors(f"service {svc.name}"):
            if action == "recreate":
                report(svc.name, "recreating", svc.image)
                container = replace_container(client, project, svc, str(existing_id), v2_hashes)
            elif action == "create":
                report(svc.name, "creating", svc.image)
                created = create_service(client, project, svc, v2_hashes or {})
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
            wait_ready(svc, container, deadline, cancel, report)
            t.ready_after_s = time.monotonic() - t0
            report(svc.name, "healthy", f"{t.ready_after_s:.1f}s")
        t.ready.set()
    except BaseException as exc:
        t.failed.set()
        cancel.set()
        errors.append(exc)
        report(svc.name, "failed", eng.first_line(exc))


@dataclass(frozen=True)
class UpResult:
    actions: dict[str, Action]
    removed: int
    gpu_map: dict[str, tuple[str, ...]]
    gateway: str | None
    seconds: float


def check_engine_supports(client: Any, project: Project) -> str | None:
    """What this engine does differently from the file, in one line for `up` to say once
    (compose_v2.start_interval_note): an engine before API 1.44 has no healthcheck
    start_interval and ignores the key (Compose v2 refuses the file there; composegen starts it,
    and proves readiness itself from the first second)."""
    version = str(getattr(client.api, "api_version", "") or "")
    return compose_v2.start_interval_note(version, project)


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
    on_pull: PullReport | None = None,
) -> UpResult:
    rep: Report = report or (lambda s, st, d: None)
    note = check_engine_supports(client, project)
    if note:
        rep("engine", "note", note)
    v2_hashes = compose_v2.service_hashes(project)
    t0 = time.monotonic()
    deadline = t0 + wait_timeout_s
    if wait:  # the HTTP client is needed only at the end: load it while containers start
        threading.Thread(target=lambda: __import__("httpx"), daemon=True).start()
    ensure_resources(client, project)
    conv = converge(project, list_existing(client, project.name), v2_hashes)
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
                on_pull,
                v2_hashes,
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
            f"the Docker engine went away while up was waiting ({eng.first_line(errors[0])})",
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
    """Remove the project's containers (in parallel), networks and, with `volumes`, named
    volumes, all found by the project's label. Everything that can be removed is; then every
    failure is raised together (ParallelError, exit 1)."""
    rep: Report = report or (lambda s, st, d: None)
    label = f"{eng.LABEL_PROJECT}={project_name}"
    with eng.mapped_errors(f"project {project_name}"):
        containers = client.containers.list(all=True, filters={"label": label})

    def name(c: Any) -> str:
        return str((c.labels or {}).get(eng.LABEL_SERVICE, c.name))

    def stop(c: Any) -> None:
        rep(name(c), "stopping", "")
        stop_error = None
        try:
            with eng.mapped_errors(f"service {name(c)}"):
                c.stop(timeout=10)
        except eng.EngineError as exc:
            stop_error = exc
        with eng.mapped_errors(f"service {name(c)}"):
            c.remove(force=True)  # kills what did not stop
        rep(name(c), "removed", f"killed: {stop_error.message}" if stop_error else "")

    failures = eng.run_parallel(stop, containers, name)
    for who, exc in failures:
        rep(who, "failed", eng.first_line(exc))
    total = len(containers)
    nets = vols = 0
    with eng.mapped_errors(f"project {project_name}"):
        found_nets = client.networks.list(filters={"label": label})
        found_vols = client.volumes.list(filters={"label": label}) if volumes else []
    for kind, items in (("network", found_nets), ("volume", found_vols)):
        for item in items:
            total += 1
            try:
                with eng.mapped_errors(f"{kind} {item.name}"):
                    item.remove() if kind == "network" else item.remove(force=True)
            except eng.EngineError as exc:
                failures.append((f"{kind} {item.name}", exc))
                continue
            if kind == "network":
                nets += 1
            else:
                vols += 1
    eng.raise_failures(f"down {project_name}", failures, total)
    return len(containers), nets, vols


# --- status ---------------------------------------------------------------------------------

STOPPED_FOR_FALLBACK = "stopped (fallback)"


@dataclass(frozen=True)
class Row:
    service: str
    container: str
    state: str  # Docker's, or "stopped (fallback)" for a GPU service stopped on purpose
    health: str  # Docker's healthcheck status, "-" without one
    ready: str  # composegen's own readiness: "yes", "no", or "-" (not running)
    gpus: tuple[str, ...]
    ports: tuple[str, ...]
    mode: str


@dataclass(frozen=True)
class StatusReport:
    rows: list[Row]
    problems: list[str]  # empty: the stack serves

    @property
    def serving(self) -> bool:
        return not self.problems


def _ready(container: Any, running: bool, health: str) -> bool:
    """composegen's readiness, as `up` decides it: running, and Docker says healthy or the
    container's own healthcheck command passes when run now (with exec, as `up` probes).
    The command is read from the container, so this holds for the CPU variant's services
    and for a stack whose compose file is gone."""
    if not running:
        return False
    if health == "healthy":
        return True
    check = (container.attrs.get("Config") or {}).get("Healthcheck") or {}
    test = [str(t) for t in check.get("Test") or []]
    if not test or test[0] == "NONE":
        return True
    cmd = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", " ".join(test[1:])]
    timeout_s = (check.get("Timeout") or 30_000_000_000) / 1e9
    return eng.exec_with_timeout(container, cmd, timeout_s) == 0


def status(
    client: Any,
    project_name: str,
    project: Project | None = None,
    in_fallback: bool = False,
) -> StatusReport:
    """Each container of the project with Docker's state and health next to composegen's own
    readiness (probed as `up` does), and what keeps the stack from serving: the gateway not
    running or not ready, or a service down or not ready. In cpu-fallback, GPU services
    stopped on purpose are no problem. `project` (None when the file is gone) tells whether
    the stack has a gateway at all."""
    with eng.mapped_errors(f"project {project_name}"):
        found = client.containers.list(
            all=True, filters={"label": f"{eng.LABEL_PROJECT}={project_name}"}
        )
    ready: dict[str, bool] = {}

    def probe(c: Any) -> None:
        st = c.attrs.get("State") or {}
        health = str((st.get("Health") or {}).get("Status") or "-")
        ready[c.id] = _ready(c, st.get("Status") == "running", health)

    for who, exc in eng.run_parallel(probe, found, lambda c: str(c.name)):
        del who, exc  # a probe that raised: not ready
    rows = []
    problems = []
    gateways = 0
    for c in sorted(found, key=lambda c: str((c.labels or {}).get(eng.LABEL_SERVICE, ""))):
        a = c.attrs
        st = a.get("State") or {}
        labels = c.labels or {}
        ports = []
        for cport, binds in ((a.get("NetworkSettings") or {}).get("Ports") or {}).items():
            for b in binds or []:
                ports.append(f"{b.get('HostIp')}:{b.get('HostPort')}->{cport}")
        service = str(labels.get(eng.LABEL_SERVICE, ""))
        state = str(st.get("Status"))
        mode = str(labels.get("io.composegen.mode", "-"))
        is_ready = ready.get(c.id, False)
        health = str((st.get("Health") or {}).get("Status") or "-")
        if in_fallback and mode == "gpu" and state != "running":
            state = STOPPED_FOR_FALLBACK
            health = "-"  # Docker keeps the last probe's verdict; stopped on purpose is not ill
        elif labels.get("io.composegen.service") == "gateway":
            gateways += 1
            if state != "running":
                problems.append(f"gateway {service} is {state}")
            elif not is_ready:
                problems.append(f"gateway {service} is not ready (health {health})")
        elif state != "running":
            problems.append(f"{service} is {state}")
        elif not is_ready:
            problems.append(f"{service} is not ready (health {health})")
        rows.append(
            Row(
                service=service,
                container=str(c.name),
                state=state,
                health=health,
                ready=("yes" if is_ready else "no") if st.get("Status") == "running" else "-",
                gpus=eng.visible_gpus(a),
                ports=tuple(sorted(ports)),
                mode=mode,
            )
        )
    if not found:
        problems.append("no containers")
    elif gateways == 0 and any(
        s.labels.get("io.composegen.service") == "gateway"
        for s in (project.services if project is not None else ())
    ):
        problems.append("the gateway has no container")
    return StatusReport(rows, problems)


# --- state of the project -------------------------------------------------------------------


class InFallbackError(ComposegenError):
    """`up` on a stack that `fallback --cpu` moved to CPU."""


def refuse_in_fallback(directory: Path, project: str) -> None:
    """`up` converges docker-compose.yml, which does not hold the CPU services: in cpu-fallback
    it would remove the containers the gateway routes to. Refused (exit 1): the way back to
    the GPUs is `fallback --restore` (make before break), staying on CPU needs nothing."""
    from composegen.engine.state import read_mode

    mode = read_mode(directory, project)
    if mode.get("mode") == "cpu-fallback":
        since = f" since {mode['since']}" if mode.get("since") else ""
        raise InFallbackError(
            f"project {project} runs in cpu-fallback mode{since}: `up` would remove the CPU "
            "services the gateway routes to",
            "run `composegen fallback --restore` to go back to the GPUs (it also works on a "
            "stopped stack); `composegen status` shows the stack as it is",
        )


@dataclass(frozen=True)
class Target:
    """The project `down` and `status` act on: from its compose file, or from its labels."""

    name: str
    directory: Path
    project: Project | None  # None: the file could not be read
    note: str | None  # why the labels were used


def target_from_labels(client: Any, name: str, why: str, default_dir: Path) -> Target:
    """`down -p NAME` and `status -p NAME` when the compose file is gone or broken: the
    project's containers carry its name and working directory (where its lock and mode
    are kept) in their Compose labels; without containers, `default_dir` (-C or -f's)."""
    from composegen.engine.compose import project_name

    pname = project_name(name, {}, {}, Path("."))
    with eng.mapped_errors(f"project {pname}"):
        found = client.containers.list(all=True, filters={"label": f"{eng.LABEL_PROJECT}={pname}"})
    # the CPU variant's containers name fallback/ below the stack's directory: take the top
    workdirs = [Path(w) for c in found if (w := (c.labels or {}).get(eng.LABEL_WORKDIR))]
    directory = min(workdirs, key=lambda p: len(p.parts)) if workdirs else None
    return Target(
        pname,
        directory or default_dir,
        None,
        f"composegen: warning: {why}; using project {pname} as its containers' labels describe it",
    )


# --- serving: models fetched before start, Ollama models loaded after (issue 11) ---------------


def fill_model_stores(
    client: Any, project: Project, emit: Callable[[dict[str, Any]], None], pull: str = "missing"
) -> Any:
    """`up`'s first step (unless --no-models): fetch what is missing from every model store of
    the stack, the CPU variant's included, before any container starts. vLLM, TEI and speaches
    run with HF_HUB_OFFLINE=1 on an internal network and exit at start when their model is not
    in the cache, so the fetch comes first. A failure raises PullError (exit 1) with nothing
    started or changed."""
    from composegen.serving import pull as serving_pull

    _, result = serving_pull.pull_stack(client, project, emit, pull_images=pull != "never")
    serving_pull.raise_failures(result)
    return result


# A POST from inside the Ollama container to its own server (bash's /dev/tcp: the real image
# has bash and no curl). `docker exec` rather than a helper container on the stack's network:
# it needs no extra image, reaches the server whatever network it sits on (the backend network
# is internal, unreachable from the host), and the server sees a local client. $1: the JSON
# body (an argument, never part of the script), $2: the port.
_GENERATE = (
    'exec 3<>"/dev/tcp/127.0.0.1/$2" || exit 3; '
    "printf 'POST /api/generate HTTP/1.0\\r\\nHost: localhost\\r\\n"
    "Content-Type: application/json\\r\\nContent-Length: %s\\r\\n\\r\\n%s' "
    '"${#1}" "$1" >&3; cat <&3'
)


def _ollama_port(svc: Service) -> int:
    host = str(svc.environment.get("OLLAMA_HOST") or "")
    tail = host.rsplit(":", 1)[-1] if ":" in host else ""
    return int(tail) if tail.isdigit() else 11434


def load_ollama_models(
    client: Any, project: Project, report: Report, timeout_s: float = 600.0
) -> list[tuple[str, str]]:
    """Load each model of each Ollama service once: a generate call with no prompt and the
    stack's keep-alive (the service's OLLAMA_KEEP_ALIVE), so the first real request does not
    wait for a load, and a model that cannot load fails `up` now. Returns (service, model)."""
    import json

    loaded: list[tuple[str, str]] = []
    todo = [
        s
        for s in project.services
        if s.labels.get("io.composegen.model-source") == "ollama"
        and s.labels.get("io.composegen.models")
    ]
    failures: list[str] = []
    lock = threading.Lock()

    def one(svc: Service) -> None:
        found = client.containers.list(
            filters={
                "label": [f"{eng.LABEL_PROJECT}={project.name}", f"{eng.LABEL_SERVICE}={svc.name}"]
            }
        )
        if not found:
            raise UpFailed(f"service {svc.name}: no running container to load its models in")
        keep_alive = svc.environment.get("OLLAMA_KEEP_ALIVE")
        for model in [m for m in svc.labels["io.composegen.models"].split(",") if m]:
            body: dict[str, Any] = {"model": model, "stream": False}
            if keep_alive:
                body["keep_alive"] = (
                    int(keep_alive) if keep_alive.lstrip("-").isdigit() else keep_alive
                )
            report(svc.name, "loading", model)
            cmd = ["bash", "-c", _GENERATE, "composegen", json.dumps(body), str(_ollama_port(svc))]
            code, out = eng.exec_output(found[0], cmd, timeout_s)
            head, _, payload = out.replace("\r\n", "\n").partition("\n\n")
            status = head.split("\n", 1)[0]
            if code is None:
                why = f"no answer within {timeout_s:.0f}s"
            elif code != 0 or " 200 " not in status + " ":
                try:
                    why = str(json.loads(payload).get("error") or status)
                except (ValueError, AttributeError):
                    why = (status or out.strip() or f"exit {code}")[:200]
            else:
                with lock:
                    loaded.append((svc.name, model))
                continue
            with lock:
                failures.append(f"service {svc.name}: model {model} did not load: {why}")
            report(svc.name, "failed", f"{model}: {why}")
            return
        report(svc.name, "loaded", svc.labels["io.composegen.models"])

    errors = eng.run_parallel(one, todo, lambda s: s.name)
    failures += [f"{name}: {eng.first_line(exc)}" for name, exc in errors]
    if failures:
        raise UpFailed(
            failures[0] + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""),
            hint="`composegen models pull` fetches missing models; `composegen up --no-models` "
            "starts the stack without loading them",
        )
    return loaded
