"""The one fake Docker client at the docker-py boundary, for the engine layer's unit tests.

It answers the calls composegen.engine makes (client.containers / images / networks / volumes,
client.api.create_container / rename / pull / connect_container_to_network) from an in-memory
engine and raises docker-py's own exceptions (APIError, ImageNotFound, NotFound, requests'
ConnectionError) where a test says so. Host configs are built by docker-py's own HostConfig for
the client's API version (1.41 unless told), so an argument that engine would refuse fails here
too. Containers are safe to drive from the engine layer's worker threads.

Public names (stable: tests import them; add to them, do not rename):

- `FakeDocker(scenario="", images=None, api_version="1.41")`: the client.
  - `images`: the images on the engine; None means every image except those in
    `missing_images`. A pull (`client.api.pull`) adds the image, unless the scenario is
    "image-missing".
  - Named scenarios:
    - "image-missing": a pull fails as a registry that cannot be reached does (`NO_SUCH_HOST`);
    - "create-fails": the engine refuses to create any container (APIError 500);
    - "stop-fails": stopping and removing the containers of service `bad` raise APIError 500
      ("permission denied", "device or resource busy");
    - "no-engine": every call after set-up (`add`, `add_container`) fails as a lost
      connection does (the same as setting `online = False`);
    - "killed": the started container of service `llm` is killed (exit 137; its restart
      policy does not restart a container killed by hand);
    - "restart-loop": the started container of service `llm` exits once and is restarted by
      its policy (status restarting, RestartCount 1), then runs and passes its healthcheck.
    - "gpu-memory-held": a container started while another container of the same service
      runs exits at once (exit 1, "CUDA out of memory" in its log), as a model server does
      on a GPU whose memory the old process still holds;
  - What happened, in order, two views of the same events:
    - `journal`: tuples by service: `("create", service)`, `("start", service)`,
      `("stop", service)`, `("remove", service)`, `("exec", service, cmd_tuple)`;
      `index(*entry)` gives the position of the first entry starting so (-1 when absent);
    - `calls`: strings by container or resource name: "create NAME", "start NAME",
      "stop NAME", "remove NAME", "rename OLD NEW", "pull REPO:TAG", "create network NAME",
      "remove network NAME" (and "volume" alike);
    - `execs`: every command run with exec, as lists.
  - Knobs a test sets:
    - `fail(operation, service, message=None)`: that operation on that service's containers
      raises APIError 500 (operations: "stop", "remove", "start", "create"; service "*":
      any); the refused operation is not recorded in `journal` / `calls`;
    - `failing`: the set of (operation, service) that `fail` fills;
    - `exec_codes[cmd_tuple] = code`: the exit code of that exec command (default: 0 while
      the container runs, except `["false"]`; 1 when it does not run);
    - `on_exec(container, cmd)`: a hook run at each exec, after it is journaled (e.g. to read
      nginx.conf at a reload);
    - `unhealthy`: services whose containers report Docker health "unhealthy" (the others
      with a healthcheck report "healthy" as soon as they run, so `up` never waits);
    - `missing_images`: images not on the engine when `images` is None;
    - `online`: False makes every call fail as a lost connection does.
  - Set-up and views:
    - `add(project, service, status="running")`: a container made before the test (e.g. by
      docker-compose), named PROJECT_SERVICE_1, labelled with the project and the service;
    - `add_container(name, labels, status="running", healthcheck=None)`: the same with any
      name and labels;
    - `services(project, all=True)`: {service: container} of the project;
    - `api.created`: the keyword arguments of every create_container call.
- `FakeContainer`: `id`, `name`, `labels`, `service`, `status`, `attrs` (a plain dict a test may
  change; `set_state(status, exit_code=0)` replaces its State), `image`, `logged` (bytes).
  For watch: `ip` (its address on the stack network), `status_text` (None: the list call's
  Status is made from the state and health, e.g. "Up (healthy)"; a test sets it to mimic the
  engine's "Up 3 seconds"), `log_line(text, when=None)` (a line on its stdout, with the engine's
  timestamp: followers of its log stream get it; a later attach gets it from `since`).
- The low-level API watch uses: `api.containers(all, filters)` (list rows: Id, Names, Labels,
  State, Status, NetworkSettings.Networks.*.IPAddress; filters `label` and `status`),
  `api.inspect_container(id)` (counted in `inspects`; list calls in `list_calls`),
  `api.events(filters, decode)` (a stream
  of the container events the fake emits: create, start, die, destroy, and `emit(container,
  action)`, e.g. "oom", "health_status: unhealthy"), `api.logs(id, stream=True, follow=True,
  timestamps=True, since=...)` (a stream of `log_line`s; each attach is recorded in
  `log_attaches` as (container id, since)); `end_streams()` ends every open
  stream as an engine restart does; `exec_reply(container, cmd) -> (code, output bytes) | None`
  answers an exec (None: the default).
- Attached exec (`composegen exec`): `api.exec_create(cid, cmd, stdin=, tty=, environment=,
  workdir=, user=)` (409 when the container does not run), `api.exec_start(id, tty=,
  socket=True)` (a socket: the exec reads stdin to its end when stdin=True, then answers
  exec_reply or exec_codes, `cat` echoing its stdin, framed as the engine frames a non-TTY
  stream), `api.exec_inspect(id)`, `api.exec_resize(id, height, width)`; `exec_specs[id]`
  holds the arguments, `stdin_data`, `exit_code`, `size`; `exec_stderr[cmd_tuple]` is what
  that command writes to stderr.
- `api.logs(..., follow=False, tail=N)` answers what is logged (the last N) and ends.

- For doctor: `version()` / `info()` answer from `engine_version` / `engine_info` (dicts a test
  may change: CgroupDriver, Runtimes, DockerRootDir...); `api.inspect_image(name)` (Size,
  Config.Env, Config.Labels; `image_config[name] = {"Env": [...], "Labels": {...}}` sets them);
  `containers.create(image, entrypoint, command, name, labels, device_requests)` makes a
  throwaway container whose `start` honours (or refuses) its GPU request and whose `wait`
  runs its command as the test engine's stand-ins do: `nvidia-smi -L` lists the requested
  device ids, `true` exits 0; list rows carry `Ports` (PublicPort, IP) of a running container.
  Doctor scenarios:
    - "systemd-cgroup": info's CgroupDriver is systemd (default cgroupfs);
    - "nvidia-runtime": info lists an `nvidia` runtime;
    - "no-nvidia-driver": starting a container with a GPU request fails as an engine without
      the NVIDIA hook does (`could not select device driver "nvidia" with capabilities`);
    - "gpu-probe-fails": a throwaway container's `nvidia-smi -L` exits 255 with "Failed to
      initialize NVML: Unknown Error";
  and knobs `gpu_refused` (device ids whose request the NVIDIA hook refuses: unknown device)
  and `no_smi_images` (images without nvidia-smi: starting it fails, executable not found).
- Swarm (composegen.engine.swarm), in `swarm` (a `FakeSwarm`): `swarm.init(manager=True)`
  makes info()'s Swarm section say a manager (False: a worker); `swarm.add_node(hostname,
  labels, gpus)` a node advertising those UUIDs as NVIDIA-GPU named resources;
  `swarm.add_service(project, name, env)` a service of stack PROJECT (label
  com.docker.stack.namespace) whose ContainerSpec.Env is `env`; `swarm.add_task(service, node,
  state, err=, container=)` a task of it (newest last; its spec a copy of the service's);
  `swarm.on_poll` a hook run at each `api.services` call (a test scripts what Swarm does over
  time), `swarm.polls` their count. The API: `api.nodes()`, `api.services(filters)` (label,
  name), `api.tasks(filters)` (service: ids or names, desired-state).
- `LABEL_PROJECT`, `LABEL_SERVICE`: Compose's labels; `API_VERSION`: "1.41"; `NO_SUCH_HOST`:
  the engine's message for a registry that cannot be reached.
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
API_VERSION = "1.41"
NO_SUCH_HOST = (
    'Get "https://registry.example.invalid/v2/": dial tcp: lookup registry.example.invalid '
    "on 127.0.0.53:53: no such host"
)

_MESSAGES = {
    "stop": "cannot stop container: {id}: permission denied",
    "remove": "cannot remove container {id}: device or resource busy",
    "start": "cannot start container {id}: OCI runtime start failed",
    "create": "OCI runtime create failed: no space left on device",
}


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


def _wanted(action: str, filters: dict[str, Any] | None) -> bool:
    """The engine's `event` filter: exact, except health_status / exec_create / exec_start,
    which match the action's prefix ("health_status: healthy")."""
    wanted = (filters or {}).get("event")
    if not wanted:
        return True
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    fuzzy = {"health_status", "exec_create", "exec_start"} & set(names)
    if fuzzy:
        return any(action == n or action.startswith(f"{n}:") for n in names)
    return action in names


class FakeContainer:
    def __init__(self, engine: FakeDocker, cid: str, name: str, spec: dict[str, Any]) -> None:
        self.engine = engine
        self.id = cid
        self.name = name
        self.labels: dict[str, str] = dict(spec.get("labels") or {})
        self.image = spec.get("image")
        self.spec = spec
        check = spec.get("healthcheck")
        # as the engine records it (docker-py's ContainerConfig converts the same way)
        healthcheck = docker.types.Healthcheck(**check) if check else None
        self.attrs: dict[str, Any] = {
            "Id": cid,
            "State": {"Status": "created", "ExitCode": 0},
            "RestartCount": 0,
            "HostConfig": dict(spec.get("host_config") or {}),
            "Config": {"Hostname": cid[:12], "Env": [], "Healthcheck": healthcheck},
            "NetworkSettings": {"Ports": {}},
        }
        self.reloads = 0
        self.logged = b"starting\n"
        self.gone = False
        self.ip = f"172.30.{int(cid, 16) // 250 % 250}.{int(cid, 16) % 250 + 2}"
        self.status_text: str | None = None
        self.log_records: list[tuple[float, str]] = []

    @property
    def service(self) -> str:
        return self.labels.get(LABEL_SERVICE, self.name)

    @property
    def status(self) -> str:
        return str(self.attrs["State"]["Status"])

    def set_state(self, status: str, exit_code: int = 0) -> None:
        self.attrs["State"] = {"Status": status, "ExitCode": exit_code}
        action = {"running": "start", "exited": "die", "dead": "die", "restarting": "die"}
        self.engine.emit(self, action.get(status, "update"))

    def log_line(self, text: str, when: float | None = None) -> None:
        """A line on the container's stdout at `when` (now): to its log followers."""
        when = time.time() if when is None else when
        with self.engine.lock:
            self.log_records.append((when, text))
            followers = [f for f in self.engine.log_followers if f.cid == self.id]
        for f in followers:
            f.push(when, text)

    def list_row(self) -> dict[str, Any]:
        """The engine's list entry of the container (GET /containers/json)."""
        state = self.attrs.get("State") or {}
        health = (state.get("Health") or {}).get("Status")
        text = self.status_text
        if text is None:
            code = state.get("ExitCode", 0)
            text = {
                "running": "Up",
                "exited": f"Exited ({code})",
                "restarting": f"Restarting ({code})",
                "created": "Created",
            }.get(self.status, self.status.capitalize())
            if health and self.status == "running":
                text += " (health: starting)" if health == "starting" else f" ({health})"
        return {
            "Id": self.id,
            "Names": [f"/{self.name}"],
            "Image": self.image,
            "Labels": dict(self.labels),
            "State": self.status,
            "Status": text,
            "NetworkSettings": {"Networks": {"backend": {"IPAddress": self.ip}}},
            "Ports": self._ports() if self.status == "running" else [],
        }

    def _ports(self) -> list[dict[str, Any]]:
        bindings = (self.attrs.get("HostConfig") or {}).get("PortBindings") or {}
        return [
            {
                "IP": b.get("HostIp") or "0.0.0.0",
                "PrivatePort": int(key.split("/")[0]),
                "PublicPort": int(b["HostPort"]),
                "Type": key.split("/")[1],
            }
            for key, binds in bindings.items()
            for b in binds
            if b.get("HostPort")
        ]

    def _alive(self) -> None:
        self.engine._check()
        if self.gone:
            raise NotFound(
                f"No such container: {self.id}", explanation=f"No such container: {self.id}"
            )

    def _refresh_health(self) -> None:
        """Docker's health of a container with a healthcheck: healthy once it runs."""
        test = (self.attrs["Config"].get("Healthcheck") or {}).get("Test") or []
        if not test or test[0] == "NONE" or self.status != "running":
            return
        sick = self.service in self.engine.unhealthy
        self.attrs["State"]["Health"] = {"Status": "unhealthy" if sick else "healthy", "Log": []}

    def reload(self) -> None:
        self._alive()
        scenario = self.engine.scenario
        llm = self.service == "llm" and self.status != "created"
        if llm and scenario == "killed":
            self.set_state("exited", 137)
        if llm and scenario == "restart-loop":
            # reload 1: exited, being restarted; reload 2: running again (restart 1)
            self.reloads += 1
            if self.reloads == 1:
                self.set_state("restarting", 1)
                self.attrs["RestartCount"] = 1
                self.logged += b"run 1: fatal: cannot bind\n"
            elif self.reloads == 2:
                self.set_state("running")
                self.logged += b"run 2: listening\n"
        self._refresh_health()

    def start(self) -> None:
        self._alive()
        self.engine._refuse("start", self)
        if self.engine.scenario == "gpu-memory-held" and self.engine._another_runs(self):
            self.set_state("exited", 1)
            self.logged += b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate\n"
            self.engine._record("start", self)
            return

        self.engine._refuse_gpu(self)
        self.set_state("running")
        self._refresh_health()
        self.engine._record("start", self)

    def stop(self, timeout: int | None = None) -> None:
        self._alive()
        self.engine._refuse("stop", self)
        self.set_state("exited", 0)
        self.engine._record("stop", self)

    def remove(self, force: bool = False) -> None:
        self._alive()
        self.engine._refuse("remove", self)
        self.gone = True
        with self.engine.lock:
            self.engine.containers_by_id.pop(self.id, None)
        self.engine._record("remove", self)

    def exec_run(self, cmd: list[str], **_: Any) -> SimpleNamespace:
        self._alive()
        engine = self.engine
        with engine.lock:
            engine.execs.append(list(cmd))
            engine.journal.append(("exec", self.service, tuple(cmd)))
        if engine.on_exec is not None:
            engine.on_exec(self, list(cmd))
        if engine.exec_reply is not None:
            reply = engine.exec_reply(self, list(cmd))
            if reply is not None:
                return SimpleNamespace(exit_code=reply[0], output=reply[1])
        running = self.status == "running"
        code = engine.exec_codes.get(tuple(cmd), 0 if running and cmd != ["false"] else 1)
        return SimpleNamespace(exit_code=code, output=b"")

    def logs(self, tail: int = 30, **_: Any) -> bytes:
        return self.logged

    def wait(self, timeout: float | None = None) -> dict[str, int]:
        """A throwaway container (containers.create) runs its command to the end."""
        self._alive()
        cmd = [*(self.spec.get("entrypoint") or []), *(self.spec.get("command") or [])]
        code, out = 0, b""
        if cmd[:1] == ["nvidia-smi"]:
            if self.engine.scenario == "gpu-probe-fails":
                code, out = 255, b"Failed to initialize NVML: Unknown Error\n"
            else:
                ids = [
                    str(i)
                    for r in self.spec.get("device_requests") or []
                    for i in r.get("DeviceIDs") or []
                ]
                lines = [f"GPU {n}: NVIDIA Stub GPU (UUID: {i})" for n, i in enumerate(ids)]
                out = "".join(f"{line}\n" for line in lines).encode()
        self.logged = out
        self.set_state("exited", code)
        return {"StatusCode": code}


class FakeStream:
    """A blocking stream (events, followed logs) as docker-py's CancellableStream: iterate it;
    close() (or the engine's end_streams()) ends it."""

    _END = object()

    def __init__(self, engine: FakeDocker, cid: str | None = None) -> None:
        self.engine = engine
        self.cid = cid
        self.items: queue.Queue[Any] = queue.Queue()
        self.closed = False

    def push(self, when: float, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
        nanos = f"{min(round((when % 1) * 1e9), 999_999_999):09d}".rstrip("0") or "0"
        self.items.put(f"{stamp}.{nanos}Z {text}\n".encode())

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        item = self.items.get()
        if item is self._END:
            self.items.put(self._END)  # stays ended
            raise StopIteration
        return item

    def close(self) -> None:
        self.closed = True
        self.items.put(self._END)
        with self.engine.lock:
            for group in (self.engine.event_streams, self.engine.log_followers):
                if self in group:
                    group.remove(self)


class _Containers:
    def __init__(self, engine: FakeDocker) -> None:
        self.engine = engine

    def list(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[Any]:
        self.engine._check()
        with self.engine.lock:
            found = list(self.engine.containers_by_id.values())
        return [c for c in found if (all or c.status == "running") and _matches(c.labels, filters)]

    def get(self, key: str) -> FakeContainer:
        self.engine._check()
        with self.engine.lock:
            for c in self.engine.containers_by_id.values():
                if key in (c.id, c.name):
                    return c
        raise NotFound(f"No such container: {key}", explanation=f"No such container: {key}")

    def create(self, image: str, **kw: Any) -> FakeContainer:
        """A throwaway container (doctor's GPU request): started, waited for, removed."""
        engine = self.engine
        engine._check()
        engine._images_get(image)
        name = str(kw.get("name"))
        with engine.lock:
            if any(c.name == name for c in engine.containers_by_id.values()):
                raise _api_error(f'Conflict. The container name "/{name}" is already in use', 409)
            cid = f"{next(engine.ids):064x}"
            c = FakeContainer(engine, cid, name, {**kw, "image": image})
            engine.containers_by_id[cid] = c
        engine._record("create", c)
        return c


class _Images:
    def __init__(self, engine: FakeDocker) -> None:
        self.engine = engine

    def get(self, name: str) -> Any:
        self.engine._check()
        if not self.engine.has_image(name):
            raise ImageNotFound(f"No such image: {name}", explanation=f"No such image: {name}")
        return SimpleNamespace(id=f"sha256:{sum(name.encode()):064x}", tags=[name])


_DEFAULT_INFO: dict[str, Any] = {
    "ServerVersion": "20.10.24+dfsg1",
    "CgroupDriver": "cgroupfs",
    "CgroupVersion": "2",
    "DockerRootDir": "/var/lib/docker",
    "Runtimes": {"runc": {"path": "runc"}, "io.containerd.runc.v2": {"path": "runc"}},
}
NO_NVIDIA_DRIVER = 'could not select device driver "nvidia" with capabilities: [[gpu]]'


class _Named:
    """Networks, volumes, Swarm configs or secrets: get / create / list, each removable."""

    def __init__(self, engine: FakeDocker, kind: str) -> None:
        self.engine = engine
        self.kind = kind
        self.items: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        self.engine._check()
        if name not in self.items:
            raise NotFound(f"{self.kind} {name} not found", explanation="not found")
        return self.items[name]

    def create(self, name: str, labels: dict[str, str] | None = None, **_: Any) -> Any:
        self.engine._check()
        self.engine.calls.append(f"create {self.kind} {name}")
        item = SimpleNamespace(name=name, labels=labels or {})

        def remove(force: bool = False) -> None:
            self.engine.calls.append(f"remove {self.kind} {name}")
            self.items.pop(name, None)

        item.remove = remove
        self.items[name] = item
        return item

    def list(self, filters: dict[str, Any] | None = None) -> list[Any]:
        self.engine._check()
        return [i for i in self.items.values() if _matches(i.labels, filters)]


class _Api:
    def __init__(self, engine: FakeDocker) -> None:
        self.engine = engine
        self.api_version = engine.api_version
        self.created: list[dict[str, Any]] = []

    def create_host_config(self, **kw: Any) -> Any:
        return docker.types.HostConfig(version=self.api_version, **kw)

    def create_networking_config(self, endpoints: dict[str, Any]) -> Any:
        return docker.types.NetworkingConfig(endpoints)

    def create_endpoint_config(self, **kw: Any) -> Any:
        return docker.types.EndpointConfig(self.api_version, **kw)

    def create_container(self, **kw: Any) -> dict[str, str]:
        engine = self.engine
        engine._check()
        name = str(kw["name"])
        service = str((kw.get("labels") or {}).get(LABEL_SERVICE, name))
        for key in (("create", "*"), ("create", service)):
            if key in engine.failing:
                raise _api_error(engine.messages.get(key, _MESSAGES["create"]))
        with engine.lock:
            if any(c.name == name for c in engine.containers_by_id.values()):
                raise _api_error(f'Conflict. The container name "/{name}" is already in use', 409)
            cid = f"{next(engine.ids):064x}"
            c = FakeContainer(engine, cid, name, kw)
            engine.containers_by_id[cid] = c
            self.created.append(kw)
        engine._record("create", c)
        return {"Id": cid}

    def containers(
        self, all: bool = False, filters: dict[str, Any] | None = None, **_: Any
    ) -> list[dict[str, Any]]:
        engine = self.engine
        engine._check()
        engine.list_calls += 1
        want = (filters or {}).get("status")
        with engine.lock:
            found = list(engine.containers_by_id.values())
        found.reverse()  # newest first, as the engine lists them
        return [
            c.list_row()
            for c in found
            if (all or c.status == "running")
            and (want is None or c.status == want)
            and _matches(c.labels, filters)
        ]

    def inspect_image(self, name: str) -> dict[str, Any]:
        engine = self.engine
        engine._images_get(name)
        config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
        config.update(engine.image_config.get(name, {}))
        # 126 MB: the size of the test engine's stand-in images (`docker images`)
        return {"Id": f"sha256:{sum(name.encode()):064x}", "Size": 125_829_120, "Config": config}

    def nodes(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.engine._check()
        return copy.deepcopy(list(self.engine.swarm.nodes.values()))

    def services(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.engine._check()
        self.engine.swarm.poll()
        names = (filters or {}).get("name")
        found = [
            s
            for s in self.engine.swarm.services.values()
            if _matches(s["Spec"]["Labels"], filters) and (not names or s["Spec"]["Name"] in names)
        ]
        return copy.deepcopy(found)

    def tasks(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.engine._check()
        return self.engine.swarm.list_tasks(filters or {})

    def inspect_container(self, cid: str) -> dict[str, Any]:
        engine = self.engine
        c = engine.containers.get(cid)
        c._alive()
        c._refresh_health()
        engine.inspects += 1
        return {**c.attrs, "Name": f"/{c.name}", "Config": {**c.attrs["Config"]}}

    def events(self, filters: dict[str, Any] | None = None, decode: bool | None = None) -> Any:
        engine = self.engine
        engine._check()
        stream = FakeStream(engine)
        stream.filters = filters  # type: ignore[attr-defined]
        with engine.lock:
            engine.event_streams.append(stream)
        return stream

    def logs(self, cid: str, **kw: Any) -> Any:
        engine = self.engine
        c = engine.containers.get(cid)
        since = float(kw.get("since") or 0)
        tail = kw.get("tail", "all")
        stream = FakeStream(engine, c.id)
        with engine.lock:
            engine.log_followers.append(stream)
            engine.log_attaches.append((c.id, since))
            old = [r for r in c.log_records if r[0] >= since]
        if isinstance(tail, int):
            old = old[len(old) - tail :] if tail else []
        for when, text in old:
            stream.push(when, text)
        if c.status != "running" or not kw.get("follow", True):
            stream.close()
        return stream

    # exec as `docker exec` / `composegen exec` attach to it: create, start on a socket, inspect

    def exec_create(self, cid: str, cmd: list[str], **kw: Any) -> dict[str, str]:
        engine = self.engine
        c = engine.containers.get(cid)
        c._alive()
        if c.status != "running":
            raise _api_error(f"Container {cid} is not running", 409)
        with engine.lock:
            exec_id = f"exec{next(engine.ids):060x}"
            engine.execs.append(list(cmd))
            engine.journal.append(("exec", c.service, tuple(cmd)))
            engine.exec_specs[exec_id] = {"container": c, "cmd": list(cmd), **kw}
        return {"Id": exec_id}

    def exec_start(self, exec_id: str, tty: bool = False, socket: bool = False, **_: Any) -> Any:
        import socket as pysocket

        engine = self.engine
        spec = engine.exec_specs[exec_id]
        ours, theirs = pysocket.socketpair()

        def run() -> None:
            got = b""
            if spec.get("stdin"):
                while chunk := theirs.recv(65536):
                    got += chunk
            spec["stdin_data"] = got
            reply = engine.exec_reply(spec["container"], spec["cmd"]) if engine.exec_reply else None
            if reply is None:
                code = engine.exec_codes.get(tuple(spec["cmd"]), 0)
                reply = (code, got if spec["cmd"] == ["cat"] else b"")
            spec["exit_code"] = reply[0]
            err = engine.exec_stderr.get(tuple(spec["cmd"]), b"")
            for stream, data in ((1, reply[1]), (2, err)):
                if data:
                    head = b"" if tty else bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big")
                    theirs.sendall(head + data)
            theirs.close()

        threading.Thread(target=run, daemon=True).start()
        return ours

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        spec = self.engine.exec_specs[exec_id]
        code = spec.get("exit_code")
        return {"Running": code is None, "ExitCode": code}

    def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        self.engine.exec_specs[exec_id]["size"] = (height, width)

    def connect_container_to_network(self, cid: str, net: str, **_: Any) -> None:
        self.engine._check()

    def rename(self, cid: str, name: str) -> None:
        engine = self.engine
        engine._check()
        with engine.lock:
            c = engine.containers_by_id[cid]
            engine.calls.append(f"rename {c.name} {name}")
            c.name = name

    def pull(self, repo: str, tag: str | None = None, **_: Any) -> Any:
        engine = self.engine
        engine._check()
        engine.calls.append(f"pull {repo}:{tag}")
        if engine.scenario == "image-missing":
            raise _api_error(NO_SUCH_HOST)
        engine.missing_images.discard(f"{repo}:{tag}")
        if engine.images_present is not None:
            engine.images_present.add(f"{repo}:{tag}")
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


class FakeDocker:
    def __init__(
        self, scenario: str = "", images: set[str] | None = None, api_version: str = API_VERSION
    ) -> None:
        self.scenario = scenario
        self.api_version = api_version
        self.lock = threading.RLock()
        self.ids = itertools.count(1)
        self.containers_by_id: dict[str, FakeContainer] = {}
        self.journal: list[tuple[Any, ...]] = []
        self.calls: list[str] = []
        self.execs: list[list[str]] = []
        self.exec_codes: dict[tuple[str, ...], int] = {}
        self.failing: set[tuple[str, str]] = set()
        self.messages: dict[tuple[str, str], str] = {}
        self.on_exec: Callable[[FakeContainer, list[str]], None] | None = None
        self.exec_reply: Callable[[FakeContainer, list[str]], tuple[int, bytes] | None] | None = (
            None
        )
        self.event_streams: list[FakeStream] = []
        self.log_followers: list[FakeStream] = []
        self.log_attaches: list[tuple[str, float]] = []  # (container id, since) of each attach
        self.exec_specs: dict[str, dict[str, Any]] = {}  # exec_create's arguments, by exec id
        self.exec_stderr: dict[tuple[str, ...], bytes] = {}
        self.list_calls = 0
        self.inspects = 0
        self.images_present: set[str] | None = set(images) if images is not None else None
        self.missing_images: set[str] = set()
        self.unhealthy: set[str] = set()
        self.online = scenario != "no-engine"
        self.engine_version: dict[str, Any] = {
            "Version": "20.10.24+dfsg1",
            "ApiVersion": api_version,
            "MinAPIVersion": "1.12",
        }
        self.engine_info: dict[str, Any] = {**_DEFAULT_INFO}
        self.image_config: dict[str, dict[str, Any]] = {}
        self.gpu_refused: set[str] = set()
        self.no_smi_images: set[str] = set()
        if scenario == "systemd-cgroup":
            self.engine_info["CgroupDriver"] = "systemd"
        elif scenario == "nvidia-runtime":
            self.engine_info["Runtimes"] = {
                **_DEFAULT_INFO["Runtimes"],
                "nvidia": {"path": "nvidia-container-runtime"},
            }
        self.containers = _Containers(self)
        self.networks = _Named(self, "network")
        self.volumes = _Named(self, "volume")
        self.configs = _Named(self, "config")
        self.secrets = _Named(self, "secret")
        self.images = _Images(self)
        self.api = _Api(self)
        self.swarm = FakeSwarm(self)
        if scenario == "create-fails":
            self.fail("create", "*")
        elif scenario == "stop-fails":
            self.fail("stop", "bad")
            self.fail("remove", "bad")

    # --- what a test sets and reads ---------------------------------------------------------

    def fail(self, operation: str, service: str, message: str | None = None) -> None:
        """That operation on that service's containers ("*": any) raises APIError 500."""
        self.failing.add((operation, service))
        if message is not None:
            self.messages[(operation, service)] = message

    def has_image(self, name: str) -> bool:
        if name in self.missing_images:
            return False
        return self.images_present is None or name in self.images_present

    def ping(self) -> bool:
        self._check()
        return True

    def version(self) -> dict[str, Any]:
        self._check()
        return dict(self.engine_version)

    def info(self) -> dict[str, Any]:
        self._check()
        return dict(self.engine_info)

    def _images_get(self, name: str) -> None:
        self.images.get(name)

    def _refuse_gpu(self, c: FakeContainer) -> None:
        """A GPU request the engine (or the NVIDIA hook) refuses at start."""
        reqs = c.spec.get("device_requests") or []
        if not reqs:
            return
        if self.scenario == "no-nvidia-driver":
            raise _api_error(NO_NVIDIA_DRIVER)
        for r in reqs:
            for dev in r.get("DeviceIDs") or []:
                if dev in self.gpu_refused:
                    raise _api_error(
                        "failed to create shim task: OCI runtime create failed: runc create "
                        "failed: unable to start container process: error during container "
                        "init: error running hook #0: error running hook: exit status 1, "
                        f"stdout: , stderr: nvidia-container-cli: device error: {dev}: "
                        "unknown device: unknown"
                    )
        if (c.spec.get("entrypoint") or [])[:1] == ["nvidia-smi"] and c.image in self.no_smi_images:
            raise _api_error(
                "failed to create shim task: OCI runtime create failed: runc create failed: "
                'unable to start container process: exec: "nvidia-smi": executable file not '
                "found in $PATH: unknown"
            )

    def log(self, *entry: Any) -> None:
        with self.lock:
            self.journal.append(entry)

    def fail_if(self, operation: str, service: str) -> None:
        """Raise APIError if (operation, service) is set to fail."""
        for key in ((operation, service), (operation, "*")):
            if key in self.failing:
                message = self.messages.get(key, f"{operation} {service}: refused")
                raise _api_error(message)

    def add(self, project: str, service: str, status: str = "running") -> FakeContainer:
        """A container that exists before the test (e.g. made by docker-compose)."""
        return self.add_container(
            f"{project}_{service}_1", {LABEL_PROJECT: project, LABEL_SERVICE: service}, status
        )

    def add_container(
        self,
        name: str,
        labels: dict[str, str],
        status: str = "running",
        healthcheck: dict[str, Any] | None = None,
    ) -> FakeContainer:
        """A container with any name and labels that exists before the code under test runs."""
        with self.lock:
            cid = f"{next(self.ids):064x}"
            c = FakeContainer(self, cid, name, {"labels": labels, "healthcheck": healthcheck})
            c.set_state(status)
            self.containers_by_id[cid] = c
        return c

    def services(self, project: str, all: bool = True) -> dict[str, FakeContainer]:
        return {
            c.service: c
            for c in self.containers.list(all=all, filters={"label": f"{LABEL_PROJECT}={project}"})
        }

    def index(self, *entry: Any) -> int:
        """Position of the first journal entry starting with `entry`; -1 when absent."""
        with self.lock:
            for n, e in enumerate(self.journal):
                if e[: len(entry)] == entry:
                    return n
        return -1

    # --- inside the fake --------------------------------------------------------------------

    def _check(self) -> None:
        if not self.online:
            raise RequestsConnectionError("('Connection aborted.', FileNotFoundError(2))")

    def _another_runs(self, c: FakeContainer) -> bool:
        """Another container of c's project and service is running."""
        with self.lock:
            return any(
                o is not c
                and o.status == "running"
                and o.service == c.service
                and o.labels.get(LABEL_PROJECT) == c.labels.get(LABEL_PROJECT)
                for o in self.containers_by_id.values()
            )

    def _refuse(self, operation: str, c: FakeContainer) -> None:
        for key in ((operation, c.service), (operation, "*")):
            if key in self.failing:
                default = _MESSAGES.get(operation, "{id}: refused").format(id=c.id)
                raise _api_error(self.messages.get(key, default))

    def _record(self, operation: str, c: FakeContainer) -> None:
        with self.lock:
            self.journal.append((operation, c.service))
            self.calls.append(f"{operation} {c.name}")
        action = {"remove": "destroy", "stop": "die"}.get(operation, operation)
        self.emit(c, action)
        if operation in ("stop", "remove"):
            self._end_logs(c)

    def emit(self, c: FakeContainer, action: str) -> None:
        """A container event to the open event streams whose filters it matches."""
        event = {
            "Type": "container",
            "Action": action,
            "status": action,
            "id": c.id,
            "Actor": {"ID": c.id, "Attributes": {**c.labels, "name": c.name}},
            "time": int(time.time()),
        }
        with self.lock:
            streams = [
                s
                for s in self.event_streams
                if _matches(c.labels, getattr(s, "filters", None))
                and _wanted(action, getattr(s, "filters", None))
            ]
        for s in streams:
            s.items.put(event)

    def end_streams(self) -> None:
        """Every open events and logs stream ends, as when the engine restarts."""
        with self.lock:
            streams = self.event_streams + self.log_followers
        for s in streams:
            s.close()

    def _end_logs(self, c: FakeContainer) -> None:
        with self.lock:
            streams = [f for f in self.log_followers if f.cid == c.id]
        for s in streams:
            s.close()


NAMESPACE = "com.docker.stack.namespace"
# Swarm's task status messages (`docker inspect TASK`, Status.Message)
_TASK_MESSAGES = {
    "pending": "pending task scheduling",
    "running": "started",
    "starting": "starting",
}


class FakeSwarm:
    """The Swarm a manager engine answers for: nodes, services and their tasks, as dicts in the
    engine API's shapes (`docker node/service/task inspect`)."""

    def __init__(self, engine: FakeDocker) -> None:
        self.engine = engine
        self.nodes: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.tasks: list[dict[str, Any]] = []
        self.on_poll: Callable[[FakeSwarm], None] | None = None
        self.polls = 0
        self.clock = itertools.count(1)

    def init(self, manager: bool = True) -> None:
        self.engine.engine_info["Swarm"] = {
            "LocalNodeState": "active",
            "ControlAvailable": manager,
            "NodeID": "mgr",
        }

    def _stamp(self) -> str:
        return f"2026-11-29T12:00:{next(self.clock):06.3f}Z"

    def add_node(
        self,
        hostname: str,
        labels: dict[str, str] | None = None,
        gpus: tuple[str, ...] | list[str] = (),
        role: str = "worker",
    ) -> str:
        nid = f"node{len(self.nodes) + 1}{hostname}"
        resources = [{"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": u}} for u in gpus]
        self.nodes[nid] = {
            "ID": nid,
            "Spec": {"Labels": dict(labels or {}), "Role": role, "Availability": "active"},
            "Description": {"Hostname": hostname, "Resources": {"GenericResources": resources}},
            "Status": {"State": "ready"},
        }
        return nid

    def add_service(
        self, project: str, name: str, env: dict[str, str] | None = None, gpus: int = 0
    ) -> str:
        """A service of a stack; `gpus`: the NVIDIA-GPU generic resources it reserves."""
        sid = f"svc{len(self.services) + 1}"
        spec = {"Image": "composegen-test/model-stub:1"}
        spec["Env"] = [f"{k}={v}" for k, v in (env or {}).items()]  # type: ignore[assignment]
        template: dict[str, Any] = {"ContainerSpec": spec}
        if gpus:
            kind = {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": gpus}}
            template["Resources"] = {"Reservations": {"GenericResources": [kind]}}
        self.services[sid] = {
            "ID": sid,
            "Spec": {
                "Name": f"{project}_{name}",
                "Labels": {NAMESPACE: project},
                "TaskTemplate": template,
            },
        }
        return sid

    def update_service(
        self, name: str, image: str | None = None, state: str = "updating", message: str = ""
    ) -> None:
        """`docker service update`: a new spec (another image) and its UpdateStatus."""
        svc = self.services[self.service_id(name)]
        if image:
            svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] = image
        svc["UpdateStatus"] = {"State": state, "Message": message}

    def service_id(self, name: str) -> str:
        for sid, svc in self.services.items():
            if svc["Spec"]["Name"] == name or sid == name:
                return sid
        raise KeyError(name)

    def add_task(
        self,
        service: str,
        node: str | None,
        state: str,
        err: str = "",
        container: str | None = None,
        desired: str = "running",
        assigned: list[str] | None = None,
    ) -> dict[str, Any]:
        """A task of the service's current spec. `assigned`: the NVIDIA-GPU resources Swarm
        assigned it (default: as many of the node's as the service reserves)."""
        sid = self.service_id(service)
        stamp = self._stamp()
        message = _TASK_MESSAGES.get(state, state)
        status: dict[str, Any] = {"State": state, "Timestamp": stamp, "Message": message}
        if err:
            status["Err"] = err
        if container:
            status["ContainerStatus"] = {"ContainerID": container}
        task = {
            "ID": f"task{len(self.tasks) + 1}",
            "ServiceID": sid,
            "NodeID": node or "",
            "CreatedAt": stamp,
            "DesiredState": desired,
            "Status": status,
            "Spec": copy.deepcopy(self.services[sid]["Spec"]["TaskTemplate"]),
        }
        if assigned is None:
            reserved = (task["Spec"].get("Resources") or {}).get("Reservations") or {}
            count = sum(
                g["DiscreteResourceSpec"]["Value"] for g in reserved.get("GenericResources", [])
            )
            offered = (self.nodes.get(node or "") or {}).get("Description", {})
            named = offered.get("Resources", {}).get("GenericResources", [])
            assigned = [g["NamedResourceSpec"]["Value"] for g in named][:count]
        if node and assigned:
            task["GenericResources"] = [  # the API's name of AssignedGenericResources
                {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": u}} for u in assigned
            ]
        self.tasks.append(task)
        return task

    def set_state(self, task: dict[str, Any], state: str, err: str = "") -> None:
        task["Status"].update(State=state, Timestamp=self._stamp())
        task["Status"].pop("Err", None)
        if err:
            task["Status"]["Err"] = err
        if state in ("failed", "rejected", "shutdown", "complete"):
            task["DesiredState"] = "shutdown"

    def remove_service(self, name: str) -> None:
        sid = self.service_id(name)
        del self.services[sid]
        self.tasks = [t for t in self.tasks if t["ServiceID"] != sid]

    def poll(self) -> None:
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self)

    def list_tasks(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        wanted = filters.get("service")
        ids = None
        if wanted:
            names = {wanted} if isinstance(wanted, str) else set(wanted)
            ids = {
                sid
                for sid, svc in self.services.items()
                if sid in names or svc["Spec"]["Name"] in names
            }
        desired = filters.get("desired-state")
        return copy.deepcopy(
            [
                t
                for t in self.tasks
                if (ids is None or t["ServiceID"] in ids)
                and (not desired or t["DesiredState"] == desired)
            ]
        )
