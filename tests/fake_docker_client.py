"""A fake Docker client at the docker-py boundary, for the engine layer's failure paths.

It answers the calls composegen.engine makes (client.containers / images / networks / volumes,
client.api.create_container / rename / pull ...) from an in-memory engine, and raises the real
docker-py exceptions (APIError, ImageNotFound, NotFound, requests' ConnectionError) where a
scenario says so. Host configs are built by docker-py's own HostConfig for API 1.41, so an
argument this engine version would refuse fails here too. Every call that changes something is
logged in `client.calls`, in order, for assertions about what happened before what.

Named scenarios (`FakeClient(scenario=...)`):
- "image-missing": the image is not on the engine and the registry cannot be reached;
- "create-fails": the engine refuses to create any container (APIError 500);
- "stop-fails": stopping (and removing) the container of service `bad` raises APIError 500;
- "no-engine": every call after set-up fails as a lost connection does;
- "killed": the started container of service `llm` is killed (exit 137; its restart policy
  does not restart a container killed by hand);
- "restart-loop": the started container of service `llm` exits once and is restarted by its policy
  (status restarting, RestartCount 1), then runs and passes its healthcheck.
"""

from __future__ import annotations

import itertools
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError

API_VERSION = "1.41"
NO_SUCH_HOST = (
    'Get "https://registry.example.invalid/v2/": dial tcp: lookup registry.example.invalid '
    "on 127.0.0.53:53: no such host"
)


def _api_error(message: str, status: int = 500) -> APIError:
    class Response:
        status_code = status
        reason = "Internal Server Error" if status >= 500 else "Conflict"
        url = "http+docker://localhost/v1.41/fake"

        def json(self) -> dict[str, str]:
            return {"message": message}

    return APIError(message, response=Response(), explanation=message)  # type: ignore[arg-type]


def _matches(labels: dict[str, str], filters: dict[str, Any] | None) -> bool:
    wanted = (filters or {}).get("label") or []
    for want in [wanted] if isinstance(wanted, str) else wanted:
        key, _, value = want.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeContainer:
    def __init__(self, client: FakeClient, cid: str, name: str, spec: dict[str, Any]) -> None:
        self.client = client
        self.id = cid
        self.name = name
        self.labels: dict[str, str] = dict(spec.get("labels") or {})
        self.spec = spec
        self.attrs: dict[str, Any] = {
            "Id": cid,
            "State": {"Status": "created", "ExitCode": 0},
            "RestartCount": 0,
            "HostConfig": dict(spec.get("host_config") or {}),
            "Config": {"Healthcheck": spec.get("healthcheck")},
            "NetworkSettings": {"Ports": {}},
        }
        self.reloads = 0
        self.log = b"starting\n"

    @property
    def status(self) -> str:
        return str(self.attrs["State"]["Status"])

    def _set(self, status: str, exit_code: int = 0) -> None:
        self.attrs["State"] = {"Status": status, "ExitCode": exit_code}

    def reload(self) -> None:
        self.client._check()
        llm = self.labels.get(SERVICE) == "llm" and self.status != "created"
        if llm and self.client.scenario == "killed":
            self._set("exited", 137)
        looping = self.client.scenario == "restart-loop" and llm
        if looping:
            # reload 1: exited, being restarted; reload 2: running again (restart 1)
            self.reloads += 1
            if self.reloads == 1:
                self._set("restarting", 1)
                self.attrs["RestartCount"] = 1
                self.log += b"run 1: fatal: cannot bind\n"
            elif self.reloads == 2:
                self._set("running")
                self.log += b"run 2: listening\n"

    def start(self) -> None:
        self.client._check()
        self.client.calls.append(f"start {self.name}")
        self._set("running")

    def stop(self, timeout: int = 10) -> None:
        self.client._check()
        if self.client.scenario == "stop-fails" and self.labels.get(SERVICE) == "bad":
            raise _api_error(f"cannot stop container: {self.id}: permission denied")
        self.client.calls.append(f"stop {self.name}")
        self._set("exited", 0)

    def remove(self, force: bool = False) -> None:
        self.client._check()
        if self.client.scenario == "stop-fails" and self.labels.get(SERVICE) == "bad":
            raise _api_error(f"cannot remove container {self.id}: device or resource busy")
        self.client.calls.append(f"remove {self.name}")
        self.client._containers.pop(self.id, None)

    def logs(self, tail: int = 30) -> bytes:
        return self.log

    def exec_run(self, cmd: list[str], **kwargs: Any) -> Any:
        """The healthcheck probes: `true` passes while running, `false` fails."""
        self.client.execs.append(cmd)

        class Result:
            exit_code = 0 if self.status == "running" and cmd != ["false"] else 1
            output = b""

        return Result()


SERVICE = "com.docker.compose.service"


class _Containers:
    def __init__(self, client: FakeClient) -> None:
        self.client = client

    def list(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[Any]:
        self.client._check()
        return [
            c
            for c in list(self.client._containers.values())
            if _matches(c.labels, filters) and (all or c.status == "running")
        ]

    def get(self, cid: str) -> FakeContainer:
        self.client._check()
        for c in self.client._containers.values():
            if cid in (c.id, c.name):
                return c
        raise NotFound(f"No such container: {cid}", explanation=f"No such container: {cid}")


class _Images:
    def __init__(self, client: FakeClient) -> None:
        self.client = client

    def get(self, name: str) -> Any:
        self.client._check()
        if name not in self.client.images_present:
            raise ImageNotFound(f"No such image: {name}", explanation=f"No such image: {name}")
        return name


class _Named:
    def __init__(self, client: FakeClient, kind: str) -> None:
        self.client = client
        self.kind = kind
        self.items: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        self.client._check()
        if name not in self.items:
            raise NotFound(f"{self.kind} {name} not found", explanation="not found")
        return self.items[name]

    def create(self, name: str, labels: dict[str, str] | None = None, **kw: Any) -> Any:
        self.client._check()
        self.client.calls.append(f"create {self.kind} {name}")
        outer = self

        class Item:
            def __init__(self) -> None:
                self.name = name
                self.labels = labels or {}

            def remove(self, force: bool = False) -> None:
                outer.client.calls.append(f"remove {outer.kind} {name}")
                outer.items.pop(name, None)

        self.items[name] = Item()
        return self.items[name]

    def list(self, filters: dict[str, Any] | None = None) -> list[Any]:
        self.client._check()
        return [i for i in self.items.values() if _matches(i.labels, filters)]


class _Api:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.api_version = client.api_version
        self.created: list[dict[str, Any]] = []

    def create_host_config(self, **kw: Any) -> Any:
        return docker.types.HostConfig(version=self.api_version, **kw)

    def create_networking_config(self, endpoints: dict[str, Any]) -> Any:
        return docker.types.NetworkingConfig(endpoints)

    def create_endpoint_config(self, **kw: Any) -> Any:
        return docker.types.EndpointConfig(self.api_version, **kw)

    def create_container(self, **kw: Any) -> dict[str, str]:
        self.client._check()
        if self.client.scenario == "create-fails":
            raise _api_error("OCI runtime create failed: no space left on device")
        name = kw["name"]
        if any(c.name == name for c in self.client._containers.values()):
            raise _api_error(f'Conflict. The container name "/{name}" is already in use', 409)
        cid = f"{next(self.client._ids):064x}"
        self.client.calls.append(f"create {name}")
        self.created.append(kw)
        self.client._containers[cid] = FakeContainer(self.client, cid, name, kw)
        return {"Id": cid}

    def connect_container_to_network(self, cid: str, net: str, **kw: Any) -> None:
        self.client._check()

    def rename(self, cid: str, name: str) -> None:
        self.client._check()
        self.client.calls.append(f"rename {self.client._containers[cid].name} {name}")
        self.client._containers[cid].name = name

    def pull(self, repo: str, tag: str | None = None, **kw: Any) -> Any:
        self.client._check()
        self.client.calls.append(f"pull {repo}:{tag}")
        if self.client.scenario == "image-missing":
            raise _api_error(NO_SUCH_HOST)
        self.client.images_present.add(f"{repo}:{tag}")
        return iter(
            [
                {"status": f"Pulling from {repo}", "id": tag},
                {"status": "Pulling fs layer", "id": "a1b2c3d4e5f6"},
                {
                    "status": "Downloading",
                    "id": "a1b2c3d4e5f6",
                    "progressDetail": {"current": 1_048_576, "total": 31_457_280},
                },
                {"status": "Pull complete", "id": "a1b2c3d4e5f6"},
            ]
        )


class FakeClient:
    def __init__(
        self, scenario: str = "", images: set[str] | None = None, api_version: str = API_VERSION
    ) -> None:
        self.scenario = scenario
        self.api_version = api_version
        self.images_present = set(images if images is not None else {"img:1", "img:2"})
        self.calls: list[str] = []
        self.execs: list[list[str]] = []
        self._containers: dict[str, FakeContainer] = {}
        self._ids = itertools.count(1)
        self.online = True
        self.api = _Api(self)
        self.containers = _Containers(self)
        self.images = _Images(self)
        self.networks = _Named(self, "network")
        self.volumes = _Named(self, "volume")

    def _check(self) -> None:
        if not self.online:
            raise RequestsConnectionError("('Connection aborted.', FileNotFoundError(2))")

    def ping(self) -> bool:
        self._check()
        return True

    def add(
        self,
        name: str,
        labels: dict[str, str],
        status: str = "running",
        healthcheck: dict[str, Any] | None = None,
    ) -> FakeContainer:
        """A container that exists before the code under test runs."""
        cid = f"{next(self._ids):064x}"
        c = FakeContainer(self, cid, name, {"labels": labels, "healthcheck": healthcheck})
        c._set(status)
        self._containers[cid] = c
        return c
