"""The only module that imports the Docker SDK. Built once at the edge and passed in.

docker-py exceptions are mapped by type (never by message text, except the one engine message
that has no type of its own: a GPU request the engine cannot honour).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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


def _mem_bytes(text: str) -> int:
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    t = text.strip().lower().rstrip("b") or "0"
    if t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(float(t))


@dataclass(frozen=True)
class Created:
    id: str
    name: str


def container_name(project: Project, svc: Service) -> str:
    return f"{project.name}-{svc.name}-1"


def resource_name(project: Project, name: str) -> str:
    return f"{project.name}_{name}"


def create_container(client: Any, project: Project, svc: Service, config_hash: str) -> Created:
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
    binds = {}
    for m in svc.mounts:
        source = m.source if m.bind else resource_name(project, m.source)
        binds[source] = {"bind": m.target, "mode": "ro" if m.read_only else "rw"}
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
        )
        for g in svc.gpus
    ]
    restart = {
        "no": None,
        "always": "always",
        "unless-stopped": "unless-stopped",
        "on-failure": "on-failure",
    }.get(svc.restart.split(":")[0])
    networks = [resource_name(project, n) for n in svc.networks]
    extra = svc.extra
    host_config = api.create_host_config(
        binds=binds or None,
        port_bindings=port_bindings or None,
        restart_policy={"Name": restart} if restart else None,
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
        pids_limit=extra.get("pids_limit"),
        cap_add=extra.get("cap_add"),
        cap_drop=extra.get("cap_drop"),
        init=extra.get("init"),
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

    def names(net: str) -> list[str]:
        return [svc.name, *svc.aliases.get(net, ())]

    networking = api.create_networking_config(
        {networks[0]: api.create_endpoint_config(aliases=names(svc.networks[0]))}
    )
    name = container_name(project, svc)
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


def mem_bytes(text: str) -> int:
    return _mem_bytes(text)
