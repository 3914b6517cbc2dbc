"""A fake Docker client at the docker-py boundary, for the engine layer's unit tests.

It answers the calls composegen.engine makes (containers, networks, volumes, images, the low
level `api.create_*` calls) with in-memory objects that raise docker-py's own exceptions, and
keeps a journal of what happened, in order: `("start", service)`, `("stop", service)`,
`("remove", service)`, `("exec", service, cmd)`, `("create", service)`. A test can make any
exec fail (`exec_codes`) or run a hook on it (`on_exec`, e.g. to read nginx.conf at a reload).
Containers are healthy as soon as they run (so `up` never waits), unless their service is in
`unhealthy`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from docker.errors import ImageNotFound, NotFound

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"


def _matches(labels: dict[str, str], filters: dict[str, Any] | None) -> bool:
    wanted = (filters or {}).get("label", [])
    for item in [wanted] if isinstance(wanted, str) else wanted:
        key, _, value = item.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeContainer:
    def __init__(self, engine: FakeDocker, cid: str, name: str, spec: dict[str, Any]) -> None:
        self.engine, self.id, self.name = engine, cid, name
        self.labels: dict[str, str] = dict(spec.get("labels") or {})
        self.image = spec.get("image")
        self.host_config: dict[str, Any] = dict(spec.get("host_config") or {})
        self.status = "created"
        self.gone = False

    @property
    def service(self) -> str:
        return self.labels.get(LABEL_SERVICE, self.name)

    @property
    def attrs(self) -> dict[str, Any]:
        running = self.status == "running"
        return {
            "State": {
                "Status": self.status,
                "ExitCode": 0,
                "Health": {"Status": self._health(running), "Log": []},
            },
            "RestartCount": 0,
            "HostConfig": {
                "DeviceRequests": [dict(r) for r in self.host_config.get("device_requests") or []]
                or None
            },
            "Config": {"Hostname": self.id[:12], "Env": []},
            "NetworkSettings": {"Ports": {}},
        }

    def _health(self, running: bool) -> str:
        if not running:
            return "starting"
        return "unhealthy" if self.service in self.engine.unhealthy else "healthy"

    def _alive(self) -> None:
        if self.gone:
            raise NotFound(f"No such container: {self.id}")

    def reload(self) -> None:
        self._alive()

    def start(self) -> None:
        self._alive()
        self.status = "running"
        self.engine.log("start", self.service)

    def stop(self, timeout: int | None = None) -> None:
        self._alive()
        self.engine.log("stop", self.service)
        self.engine.fail_if("stop", self.service)
        self.status = "exited"

    def remove(self, force: bool = False) -> None:
        self._alive()
        self.engine.log("remove", self.service)
        self.gone = True
        with self.engine.lock:
            self.engine.containers_by_id.pop(self.id, None)

    def exec_run(self, cmd: list[str], **_: Any) -> SimpleNamespace:
        self._alive()
        self.engine.log("exec", self.service, tuple(cmd))
        if self.engine.on_exec is not None:
            self.engine.on_exec(self, list(cmd))
        code = self.engine.exec_codes.get(tuple(cmd), 0)
        return SimpleNamespace(exit_code=code, output=b"")

    def logs(self, tail: int = 30) -> bytes:
        return b""


class _Containers:
    def __init__(self, engine: FakeDocker) -> None:
        self.engine = engine

    def list(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[Any]:
        with self.engine.lock:
            found = list(self.engine.containers_by_id.values())
        return [c for c in found if (all or c.status == "running") and _matches(c.labels, filters)]

    def get(self, key: str) -> FakeContainer:
        with self.engine.lock:
            for c in self.engine.containers_by_id.values():
                if key in (c.id, c.name):
                    return c
        raise NotFound(f"No such container: {key}")


class _Resources:
    """Networks or volumes: get / create / list, each removable."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.items: dict[str, SimpleNamespace] = {}

    def get(self, name: str) -> SimpleNamespace:
        if name not in self.items:
            raise NotFound(f"{self.kind} {name} not found")
        return self.items[name]

    def create(self, name: str, labels: dict[str, str] | None = None, **_: Any) -> SimpleNamespace:
        item = SimpleNamespace(name=name, labels=labels or {})
        item.remove = lambda force=False: self.items.pop(name, None)
        self.items[name] = item
        return item

    def list(self, filters: dict[str, Any] | None = None) -> list[SimpleNamespace]:
        return [i for i in self.items.values() if _matches(i.labels, filters)]


class _Images:
    def __init__(self, engine: FakeDocker) -> None:
        self.engine = engine

    def get(self, image: str) -> SimpleNamespace:
        if image in self.engine.missing_images:
            raise ImageNotFound(f"No such image: {image}")
        return SimpleNamespace(id=f"sha256:{abs(hash(image)):x}")

    def pull(self, image: str) -> SimpleNamespace:
        raise ImageNotFound(f"pull access denied for {image}")


class _Api:
    def __init__(self, engine: FakeDocker) -> None:
        self.engine = engine

    def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def create_networking_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return config

    def create_endpoint_config(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def create_container(self, **spec: Any) -> dict[str, str]:
        engine = self.engine
        cid = f"{next(engine.ids):064x}"
        c = FakeContainer(engine, cid, str(spec["name"]), spec)
        with engine.lock:
            engine.containers_by_id[cid] = c
        engine.log("create", c.service)
        return {"Id": cid}

    def connect_container_to_network(self, cid: str, net: str, **_: Any) -> None:
        return None

    def rename(self, cid: str, name: str) -> None:
        with self.engine.lock:
            self.engine.containers_by_id[cid].name = name


class FakeDocker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.containers_by_id: dict[str, FakeContainer] = {}
        self.journal: list[tuple[Any, ...]] = []
        self.exec_codes: dict[tuple[str, ...], int] = {}
        self.failing: set[tuple[str, str]] = set()  # (operation, service) that raise
        self.on_exec: Callable[[FakeContainer, list[str]], None] | None = None
        self.missing_images: set[str] = set()
        self.unhealthy: set[str] = set()  # services whose containers report unhealthy
        self.containers = _Containers(self)
        self.networks = _Resources("network")
        self.volumes = _Resources("volume")
        self.images = _Images(self)
        self.api = _Api(self)

    def ping(self) -> bool:
        return True

    def log(self, *entry: Any) -> None:
        with self.lock:
            self.journal.append(entry)

    def fail_if(self, operation: str, service: str) -> None:
        if (operation, service) in self.failing:
            from docker.errors import APIError

            raise APIError(f"{operation} {service}: refused by the fake engine")

    def add(self, project: str, service: str, status: str = "running") -> FakeContainer:
        """A container that exists before the test (e.g. made by docker-compose)."""
        cid = f"{next(self.ids):064x}"
        c = FakeContainer(
            self,
            cid,
            f"{project}_{service}_1",
            {"labels": {LABEL_PROJECT: project, LABEL_SERVICE: service}},
        )
        c.status = status
        with self.lock:
            self.containers_by_id[cid] = c
        return c

    def services(self, project: str, all: bool = True) -> dict[str, FakeContainer]:
        return {
            c.service: c
            for c in self.containers.list(all=all, filters={"label": f"{LABEL_PROJECT}={project}"})
        }

    def index(self, *entry: Any) -> int:
        """Position of the first journal entry starting with `entry`; -1 when absent."""
        for n, e in enumerate(self.journal):
            if e[: len(entry)] == entry:
                return n
        return -1
