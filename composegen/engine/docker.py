"""The only module that imports the Docker SDK. Built once at the edge and passed in.

docker-py exceptions are mapped by type (never by message text, except the one engine message
that has no type of its own: a GPU request the engine cannot honour).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from composegen import __version__
from composegen.engine.compose import Project, Service
from composegen.errors import ComposegenError

P = "com.docker.compose."
LABEL_PROJECT = P + "project"
LABEL_SERVICE = P + "service"
LABEL_NUMBER = P + "container-number"
LABEL_ONEOFF = P + "oneoff"
LABEL_HASH = P + "config-hash"
LABEL_FILES = P + "project.config_files"
LABEL_WORKDIR = P + "project.working_dir"
LABEL_VERSION = P + "version"
LABEL_NETWORK = P + "network"
LABEL_VOLUME = P + "volume"
LABEL_MANAGED = "io.composegen.managed-by"


class EngineError(ComposegenError):
    """The engine is missing, refuses, or a container failed."""


class NoEngineError(EngineError):
    pass


class GpuUnsupportedError(EngineError):
    pass


class ImageMissingError(EngineError):
    pass


T = TypeVar("T")


def run_parallel(
    fn: Callable[[T], object], items: Iterable[T], label: Callable[[T], str] = str
) -> list[tuple[str, BaseException]]:
    """Run fn(item) for every item, each in its own thread, and wait for all of them. Returns
    every worker's failure as (label, exception), in the items' order; raises nothing itself,
    so one failed worker neither hides another's error nor stops the rest."""
    todo = list(items)
    failures: list[tuple[int, str, BaseException]] = []
    lock = threading.Lock()

    def work(i: int, item: T) -> None:
        try:
            fn(item)
        except BaseException as exc:  # reported to the caller, whatever it is
            with lock:
                failures.append((i, label(item), exc))

    threads = [
        threading.Thread(target=work, args=(i, item), daemon=True) for i, item in enumerate(todo)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return [(name, exc) for _, name, exc in sorted(failures, key=lambda f: f[0])]


class ParallelError(EngineError):
    """Some workers of a parallel step failed: each one's error is in the message."""

    def __init__(self, what: str, failures: list[tuple[str, BaseException]], total: int) -> None:
        self.failures = failures
        parts = "; ".join(f"{name}: {first_line(exc)}" for name, exc in failures)
        super().__init__(
            f"{what}: {len(failures)} of {total} failed: {parts}",
            "see the errors above; run the command again once they are fixed",
        )


def raise_failures(what: str, failures: list[tuple[str, BaseException]], total: int) -> None:
    if failures:
        raise ParallelError(what, failures, total)


def first_line(exc: BaseException) -> str:
    """An error's first line, whole (a composegen error's own message without its hint)."""
    text = exc.message if isinstance(exc, ComposegenError) else str(exc)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def connect(timeout_s: float = 30.0) -> Any:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=int(timeout_s))
        client.ping()
    except DockerException as exc:
        from composegen.detect.host import _engine_error

        raise NoEngineError(
            f"no Docker engine: {_engine_error(exc)}",
            "start it (systemctl start docker, or scripts/engine.sh start)",
        ) from None
    return client


def connect_at(base_url: str, timeout_s: float = 30.0) -> Any:
    """A client for another engine (a Swarm node's, from the fleet file): unix://, tcp://,
    ssh:// (through the ssh command, as the Docker CLI does)."""
    import docker
    from docker.errors import DockerException

    hint = "check the node's engine address in the fleet file"
    try:
        client = docker.DockerClient(
            base_url=base_url, timeout=int(timeout_s), use_ssh_client=base_url.startswith("ssh://")
        )
        client.ping()
    except DockerException as exc:
        from composegen.detect.host import _engine_error

        raise NoEngineError(f"no Docker engine at {base_url}: {_engine_error(exc)}", hint) from None
    except (ValueError, OSError) as exc:  # an address docker-py cannot parse, ssh not runnable
        raise NoEngineError(f"no Docker engine at {base_url}: {exc}", hint) from None
    return client


@contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Turn docker-py exceptions into one-line composegen errors."""
    from docker.errors import APIError, DockerException, ImageNotFound, NotFound
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import ReadTimeout

    try:
        yield
    except ImageNotFound as exc:
        raise ImageMissingError(f"{what}: image not found: {exc.explanation}") from None
    except NotFound as exc:
        raise EngineError(f"{what}: {exc.explanation}") from None
    except APIError as exc:
        text = str(exc.explanation or exc)
        if "could not select device driver" in text:
            raise GpuUnsupportedError(
                f"{what}: this Docker engine cannot honour NVIDIA GPU requests ({text})",
                "install the NVIDIA Container Toolkit and restart dockerd, or run "
                "`composegen fallback --cpu`",
            ) from None
        raise EngineError(f"{what}: the engine refused: {text}") from None
    except (RequestsConnectionError, ReadTimeout) as exc:
        raise NoEngineError(f"{what}: lost the Docker engine ({type(exc).__name__})") from None
    except DockerException as exc:
        raise EngineError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class Created:
    id: str
    name: str


def container_name(project: Project, svc: Service) -> str:
    return f"{project.name}-{svc.name}-1"


def resource_name(project: Project, name: str) -> str:
    return f"{project.name}_{name}"


def create_container(
    client: Any, project: Project, svc: Service, config_hash: str, name: str | None = None
) -> Created:
    """Create (not start) the service's container; `name` overrides the usual one (`up`
    creates a replacement under a temporary name while the old container still runs)."""
    import docker

    api = client.api
    labels = {
        **svc.labels,
        LABEL_PROJECT: project.name,
        LABEL_SERVICE: svc.name,
        LABEL_NUMBER: "1",
        LABEL_ONEOFF: "False",
        LABEL_HASH: config_hash,
        LABEL_FILES: str(project.file.resolve()),
        LABEL_WORKDIR: str(project.directory),
        LABEL_VERSION: "1.29.2",  # the Compose file format these labels follow
        LABEL_MANAGED: f"composegen {__version__}",
    }
    # a list, not a mapping by source: one volume may be mounted at two targets
    binds = [
        f"{m.source if m.bind else resource_name(project, m.source)}:{m.target}:"
        + ("ro" if m.read_only else "rw")
        for m in svc.mounts
    ]
    port_bindings: dict[str, list[tuple[str, int | None]]] = {}
    for p in svc.ports:
        port_bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            (p.host_ip or "0.0.0.0", p.host_port)
        )
    device_requests = [
        docker.types.DeviceRequest(
            driver=g.driver,
            count=g.count if g.count is not None and g.device_ids is None else None,
            device_ids=list(g.device_ids) if g.device_ids is not None else None,
            capabilities=[list(g.capabilities)],
            options=dict(g.options) or None,
        )
        for g in svc.gpus
    ]
    restart, retries = svc.restart_policy
    networks = [resource_name(project, n) for n in svc.networks]
    extra = svc.extra
    host_config = api.create_host_config(
        binds=binds or None,
        port_bindings=port_bindings or None,
        restart_policy={"Name": restart, "MaximumRetryCount": retries} if restart else None,
        shm_size=svc.shm_size,
        mem_limit=svc.mem_limit,
        nano_cpus=svc.nano_cpus,
        security_opt=list(svc.security_opt) or None,
        ulimits=[docker.types.Ulimit(name=k, soft=s, hard=h) for k, (s, h) in svc.ulimits.items()]
        or None,
        device_requests=device_requests or None,
        network_mode=networks[0],
        read_only=bool(extra.get("read_only")) or None,
        tmpfs=list(extra["tmpfs"]) if isinstance(extra.get("tmpfs"), list) else extra.get("tmpfs"),
        pids_limit=svc.pids_limit,
        cap_add=extra.get("cap_add"),
        cap_drop=extra.get("cap_drop"),
        init=extra.get("init"),
        extra_hosts=extra.get("extra_hosts"),
    )
    healthcheck = None
    if svc.healthcheck is not None:
        h = svc.healthcheck
        healthcheck = {
            "test": list(h.test),
            "interval": int(h.interval_s * 1e9),
            "timeout": int(h.timeout_s * 1e9),
            "retries": h.retries,
            "start_period": int(h.start_period_s * 1e9),
        }
        if h.start_interval_s is not None:  # API 1.44+; older engines ignore it (up says so)
            healthcheck = docker.types.Healthcheck(**healthcheck)
            healthcheck["StartInterval"] = int(h.start_interval_s * 1e9)

    def names(net: str) -> list[str]:
        return [svc.name, *svc.aliases.get(net, ())]

    networking = api.create_networking_config(
        {networks[0]: api.create_endpoint_config(aliases=names(svc.networks[0]))}
    )
    name = name or container_name(project, svc)
    with mapped_errors(f"service {svc.name}"):
        result = api.create_container(
            image=svc.image,
            command=list(svc.command) if svc.command is not None else None,
            entrypoint=list(svc.entrypoint) if svc.entrypoint is not None else None,
            environment=dict(svc.environment),
            labels=labels,
            name=name,
            host_config=host_config,
            healthcheck=healthcheck,
            networking_config=networking,
            ports=[(p.container_port, p.protocol) for p in svc.ports] or None,
            working_dir=extra.get("working_dir"),
            user=extra.get("user"),
            hostname=extra.get("hostname"),
            stop_signal=extra.get("stop_signal"),
            stop_timeout=int(svc.stop_grace_s),
        )
        cid = str(result["Id"])
        for short, net in zip(svc.networks[1:], networks[1:], strict=True):
            api.connect_container_to_network(cid, net, aliases=names(short))
    return Created(cid, name)


def exec_with_timeout(container: Any, cmd: list[str], timeout_s: float) -> int | None:
    """Run a command in the container; its exit code, or None when it took too long."""
    out: list[int] = []

    def run() -> None:
        try:
            res = container.exec_run(cmd, stdout=True, stderr=True, demux=False)
            out.append(int(res.exit_code if res.exit_code is not None else 1))
        except Exception:  # the container went away mid-probe: not ready
            out.append(1)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return out[0] if out else None


def device_requests(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return list((attrs.get("HostConfig") or {}).get("DeviceRequests") or [])


def visible_gpus(attrs: dict[str, Any]) -> tuple[str, ...]:
    ids: list[str] = []
    for req in device_requests(attrs):
        ids.extend(str(i) for i in (req.get("DeviceIDs") or []))
        if req.get("Count"):
            ids.append("all" if req["Count"] == -1 else f"count={req['Count']}")
    return tuple(ids)


PullEvent = Callable[[dict[str, Any]], None]


def pull_image(client: Any, image: str, on_event: PullEvent | None = None) -> None:
    """Pull an image, passing each of the engine's progress events (one per layer and step:
    {"id", "status", "progressDetail": {"current", "total"}}) to on_event. An error the engine
    reports in the stream raises ImageMissingError with its whole message."""
    from docker.errors import APIError, ImageNotFound
    from docker.utils import parse_repository_tag

    repo, tag = parse_repository_tag(image)
    try:
        for event in client.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
            if not isinstance(event, dict):
                continue
            if event.get("error"):
                detail = event.get("errorDetail") or {}
                raise ImageMissingError(str(detail.get("message") or event["error"]).strip())
            if on_event is not None:
                on_event(event)
    except (APIError, ImageNotFound) as exc:
        raise ImageMissingError(str(exc.explanation or exc).strip()) from None


# --- one-shot helper containers (composegen models pull: fetch containers) ------------------


def ensure_network(client: Any, name: str, labels: dict[str, str], internal: bool = False) -> bool:
    """A bridge network, created when missing (an egress network unless `internal`); True
    when this call created it."""
    from docker.errors import NotFound

    with mapped_errors(f"network {name}"):
        try:
            client.networks.get(name)
            return False
        except NotFound:
            client.networks.create(name, driver="bridge", internal=internal, labels=labels)
            return True


def remove_network(client: Any, name: str) -> None:
    """Remove a network; one that is gone already is fine."""
    from docker.errors import NotFound

    with mapped_errors(f"network {name}"), suppress(NotFound):
        client.networks.get(name).remove()


def run_oneoff(
    client: Any,
    *,
    image: str,
    name: str,
    labels: dict[str, str],
    environment: dict[str, str],
    volumes: dict[str, str],
    network: str,
    command: list[str] | None = None,
    entrypoint: list[str] | None = None,
    publish: int | None = None,
    pull: bool = True,
) -> Any:
    """Start a detached one-shot container (removed by the caller): `volumes` maps a volume
    name to its target (read-write); `publish` a container TCP port on 127.0.0.1 at a port
    the engine picks. A container of the same name left by an interrupted run is replaced.
    The image is pulled when missing, unless not `pull` (ImageMissingError names it)."""
    from docker.errors import ImageNotFound, NotFound

    with mapped_errors(f"container {name}"):
        with suppress(NotFound):
            client.containers.get(name).remove(force=True)
        try:
            client.images.get(image)
        except ImageNotFound:
            if not pull:
                raise ImageMissingError(
                    f"image {image} is not on this engine (--pull never)"
                ) from None
            try:
                pull_image(client, image)
            except ImageMissingError as exc:
                raise ImageMissingError(
                    f"image {image} is not on this engine and could not be pulled: {exc.message}"
                ) from None
        return client.containers.run(
            image,
            command=command,
            entrypoint=entrypoint,
            name=name,
            labels=labels,
            environment=environment,
            volumes={v: {"bind": t, "mode": "rw"} for v, t in volumes.items()},
            network=network,
            ports={f"{publish}/tcp": ("127.0.0.1", None)} if publish else None,
            security_opt=["no-new-privileges:true"],
            detach=True,
        )


def published_port(container: Any, port: int) -> int | None:
    """The host port the engine gave a container's TCP port (None: not published yet)."""
    container.reload()
    ports = ((container.attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp")
    for p in ports or []:
        if p.get("HostPort"):
            return int(p["HostPort"])
    return None


def stdout_lines(container: Any) -> Iterator[str]:
    """The container's stdout, line by line, as it comes, until it exits."""
    buf = b""
    for chunk in container.logs(stdout=True, stderr=False, stream=True, follow=True):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode("utf-8", "replace")
    if buf:
        yield buf.decode("utf-8", "replace")


def wait_exit(container: Any, timeout_s: float) -> int | None:
    """The container's exit code, None when it is still running after timeout_s."""
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import ReadTimeout

    try:
        res = container.wait(timeout=timeout_s)
    except (ReadTimeout, RequestsConnectionError):
        return None
    return int(res.get("StatusCode", 1))


def remove_quietly(container: Any) -> None:
    # gone already, or the engine went away: nothing else to clean
    with suppress(Exception):
        container.remove(force=True)


def exec_output(
    container: Any,
    cmd: list[str],
    timeout_s: float,
    on_done: Callable[[], object] | None = None,
) -> tuple[int | None, str]:
    """Run a command in the container: (exit code or None when it took too long, its output).
    A command that took too long keeps its thread until the exec returns; `on_done` is called
    then (whether or not this call still waited), so a caller can tell it is over."""
    out: list[tuple[int, str]] = []

    def run() -> None:
        try:
            res = container.exec_run(cmd, stdout=True, stderr=True, demux=False)
            text = (res.output or b"").decode("utf-8", "replace")
            out.append((int(res.exit_code if res.exit_code is not None else 1), text))
        except Exception as exc:  # the container went away
            out.append((1, str(exc)))
        finally:
            if on_done is not None:
                on_done()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return out[0] if out else (None, "")


# --- watch: cheap reads of a running stack ------------------------------------------------------


def project_filter(project: str, **extra: str) -> dict[str, Any]:
    return {"label": [f"{LABEL_PROJECT}={project}"], **extra}


def list_rows(client: Any, project: str, running_only: bool = False) -> list[dict[str, Any]]:
    """The project's containers as the engine's list call answers (one HTTP call, no inspect):
    Id, Names, Labels, State, Status ("Up 2 minutes (healthy)"), NetworkSettings.Networks."""
    filters = project_filter(project, **({"status": "running"} if running_only else {}))
    with mapped_errors(f"project {project}"):
        return list(client.api.containers(all=not running_only, filters=filters))


def inspect_container(client: Any, cid: str) -> dict[str, Any] | None:
    """A container's full inspect (None when it is gone)."""
    from docker.errors import NotFound

    with mapped_errors(f"container {cid[:12]}"):
        try:
            return dict(client.api.inspect_container(cid))
        except NotFound:
            return None


def get_container(client: Any, cid: str) -> Any | None:
    """The docker-py container object (one inspect; None when it is gone)."""
    from docker.errors import NotFound

    with mapped_errors(f"container {cid[:12]}"):
        try:
            return client.containers.get(cid)
        except NotFound:
            return None


# The container events that change what inspect says. Not exec_create / exec_start / exec_die:
# every healthcheck run is an exec, so they come at each container's health interval.
# (`health_status` matches "health_status: healthy" and "...: unhealthy": the engine matches it
# fuzzily.)
STATE_EVENTS = (
    "create",
    "start",
    "restart",
    "die",
    "oom",
    "kill",
    "stop",
    "pause",
    "unpause",
    "destroy",
    "rename",
    "update",
    "health_status",
)


def container_events(client: Any, project: str) -> Any:
    """The engine's stream of the project's container events that change their state
    (STATE_EVENTS; decoded dicts, blocking; close() ends it). Raises EngineError when the
    engine refuses it."""
    filters = project_filter(project, type="container")
    filters["event"] = list(STATE_EVENTS)
    with mapped_errors(f"events of project {project}"):
        return client.api.events(filters=filters, decode=True)


def log_stream(client: Any, cid: str, since: float) -> Any:
    """A container's stdout from `since` (a UNIX time) on, followed, with the engine's
    timestamps, as raw chunks (close() ends it)."""
    with mapped_errors(f"logs of container {cid[:12]}"):
        return client.api.logs(
            cid, stdout=True, stderr=False, stream=True, follow=True, timestamps=True, since=since
        )


def close_stream(stream: Any) -> None:
    """End a stream (events, logs) another thread may be blocked on."""
    with suppress(Exception):  # closed already, or the engine went away
        stream.close()


def iter_stream(stream: Any) -> Iterator[Any]:
    """The stream's items; ends (no error) when the stream is closed or the engine goes away."""
    from docker.errors import DockerException
    from requests.exceptions import RequestException

    try:
        yield from stream
    except (DockerException, RequestException, OSError, ValueError, AttributeError):
        return


# --- logs and exec, as `docker compose logs` / `exec` ---------------------------------------


def logs_stream(client: Any, cid: str, follow: bool, tail: int | None) -> Any:
    """A container's stdout and stderr (merged, as Compose shows them), with the engine's
    timestamps, as raw chunks: the last `tail` lines (None: all), then, with follow, what
    comes until the container stops or close() is called."""
    with mapped_errors(f"logs of container {cid[:12]}"):
        return client.api.logs(
            cid,
            stdout=True,
            stderr=True,
            stream=True,
            follow=follow,
            timestamps=True,
            tail="all" if tail is None else tail,
        )


@dataclass(frozen=True)
class ExecRequest:
    cmd: list[str]
    tty: bool = False
    env: tuple[str, ...] = ()  # KEY=VALUE
    workdir: str | None = None
    user: str = ""


def exec_attached(
    client: Any,
    cid: str,
    req: ExecRequest,
    stdin_fd: int | None,
    write: Callable[[int, bytes], None],
    size: tuple[int, int] | None = None,
) -> int:
    """Run req.cmd in the container with stdin_fd's bytes as its stdin (None: none), passing
    its output to write(stream, data) (stream 1 stdout, 2 stderr; with a TTY all is 1); the
    command's exit code. `size` (rows, columns) sizes the TTY."""
    from docker.utils.socket import frames_iter

    with mapped_errors(f"exec in container {cid[:12]}"):
        exec_id = client.api.exec_create(
            cid,
            req.cmd,
            stdin=stdin_fd is not None,
            tty=req.tty,
            environment=list(req.env) or None,
            workdir=req.workdir,
            user=req.user,
        )["Id"]
        sock = client.api.exec_start(exec_id, tty=req.tty, socket=True)
        if req.tty and size:
            with suppress(Exception):  # a TTY of the default size still works
                client.api.exec_resize(exec_id, height=size[0], width=size[1])
    raw = getattr(sock, "_sock", sock)
    if stdin_fd is not None:
        threading.Thread(target=_pump_stdin, args=(stdin_fd, raw), daemon=True).start()
    try:
        for stream, data in frames_iter(sock, req.tty):
            if data:
                write(stream, data)
    finally:
        close_stream(sock)
    return _exec_code(client, exec_id)


def _pump_stdin(fd: int, raw: Any) -> None:
    """stdin to the exec, then half-close so that the command sees its end."""
    import os
    import socket

    with suppress(OSError):
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)


def _exec_code(client: Any, exec_id: str) -> int:
    """The exec's exit code; the engine may say Running for a moment after its output ends."""
    import time

    deadline = time.monotonic() + 10
    while True:
        with mapped_errors("exec"):
            info = client.api.exec_inspect(exec_id)
        code = info.get("ExitCode")
        if (not info.get("Running") and code is not None) or time.monotonic() > deadline:
            return int(code if code is not None else 1)
        time.sleep(0.05)


# --- doctor: what the engine says before a stack starts -----------------------------------------


def engine_facts(client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's /version and /info answers."""
    with mapped_errors("engine"):
        return dict(client.version()), dict(client.info())


def image_facts(client: Any, image: str) -> dict[str, Any] | None:
    """An image's inspect (Size, Config.Labels, Config.Env); None when it is not on the engine."""
    from docker.errors import ImageNotFound

    with mapped_errors(f"image {image}"):
        try:
            return dict(client.api.inspect_image(image))
        except ImageNotFound:
            return None


def published_ports(row: dict[str, Any]) -> set[tuple[str, int]]:
    """(host address, host port) a listed container publishes (its list row's Ports)."""
    return {
        (str(p.get("IP") or "0.0.0.0"), int(p["PublicPort"]))
        for p in row.get("Ports") or []
        if p.get("PublicPort")
    }


def gpu_probe(
    client: Any,
    *,
    image: str,
    name: str,
    labels: dict[str, str],
    device_id: str,
    command: list[str],
    timeout_s: float,
    driver: str = "nvidia",
) -> tuple[int | None, str]:
    """A throwaway container asking for one GPU, running `command` as its entrypoint: (its
    exit code, None when it ran past timeout_s; its output). Removed afterwards, whatever
    happens. The engine's refusals raise as mapped_errors maps them (GpuUnsupportedError
    for "could not select device driver")."""
    import docker
    from docker.errors import NotFound

    req = docker.types.DeviceRequest(driver=driver, device_ids=[device_id], capabilities=[["gpu"]])
    container = None
    try:
        with mapped_errors(f"GPU request for {device_id}"):
            with suppress(NotFound):
                client.containers.get(name).remove(force=True)
            container = client.containers.create(
                image,
                entrypoint=command[:1],
                command=command[1:],
                name=name,
                labels=labels,
                device_requests=[req],
                detach=True,
            )
            container.start()
        code = wait_exit(container, timeout_s)
        with mapped_errors(f"logs of {name}"):
            out = container.logs(stdout=True, stderr=True)
        return code, bytes(out or b"").decode("utf-8", "replace")
    finally:
        if container is not None:
            remove_quietly(container)


def remove_labelled(client: Any, label: str) -> int:
    """Remove every container carrying `label` (KEY=VALUE); how many were removed."""
    n = 0
    with suppress(Exception):  # the engine went away: nothing else to clean
        for c in client.containers.list(all=True, filters={"label": [label]}):
            remove_quietly(c)
            n += 1
    return n
