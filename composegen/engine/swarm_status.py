"""Reading a swarm stack on a Swarm: what each service of the stack file runs, against its plan
(composegen status, and what deploy waits for: engine/swarm.py).

Through the manager's API: the stack's services (label com.docker.stack.namespace), their tasks,
the nodes; the GPUs a task holds are read on the node's own engine (swarm/nodes.json's
`engine`) when there is one. A service is as planned when its last update completed, and the
task Swarm means to run (desired state running) runs its current spec (a task with a
healthcheck runs once healthy) on a node its planned constraints hold for, holding its planned
GPU UUIDs: read from the task container's environment on the node's engine (an engine that
cannot tell fails the row), else from the task's spec; each UUID must also be one of the node's
NVIDIA-GPU generic resources, and Swarm must have assigned the task as many NVIDIA-GPU
resources (the task's GenericResources) as the service reserves.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composegen.engine.docker import EngineError, first_line, mapped_errors
from composegen.errors import BadInputError, ComposegenError
from composegen.swarm_stack import (
    GPU_KIND,
    PlannedService,
    StackPlan,
    advertised,
    env_value,
    fleet_node_of,
    gpu_list,
    gpu_mismatch,
    on_planned_node,
    planned_where,
)

NAMESPACE = "com.docker.stack.namespace"
_STARTING = {"new", "allocated", "assigned", "accepted", "preparing", "ready", "starting"}
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z")

NodeClient = Callable[[str], Any]


# --- what deploy and status report -------------------------------------------------------------


@dataclass
class Row:
    service: str
    planned_node: str
    node: str = ""  # the Swarm node's hostname its task runs (or last ran) on
    state: str = "missing"  # running / starting / pending / rejected / failed / missing ...
    detail: str = ""
    planned_gpus: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()  # held, as read (container env or task spec)
    gpus_from: str = ""  # "container" or "task spec"
    mismatch: list[str] = field(default_factory=list)
    error: str = ""  # the last task error Swarm recorded
    current: bool = True  # the task runs the service's current spec
    update: str = ""  # the service's UpdateStatus.State (empty: never updated)

    @property
    def ok(self) -> bool:
        """Runs the service's current spec as planned, its last update completed."""
        return (
            self.state == "running"
            and self.current
            and not self.mismatch
            and self.update in ("", "completed")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "planned_node": self.planned_node,
            "node": self.node or None,
            "state": self.state,
            "detail": self.detail,
            "planned_gpus": list(self.planned_gpus),
            "gpus": list(self.gpus),
            "gpus_from": self.gpus_from or None,
            "mismatch": self.mismatch,
            "error": self.error or None,
            "current": self.current,
            "update": self.update or None,
            "ok": self.ok,
        }


@dataclass
class StackStatus:
    project: str
    rows: list[Row]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def problems(self) -> list[str]:
        return [describe(r) for r in self.rows if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "ok": self.ok,
            "problems": self.problems(),
            "services": [r.to_dict() for r in self.rows],
        }


def describe(row: Row) -> str:
    where = f" on {row.node}" if row.node else ""
    if row.state == "running" and row.mismatch:
        return f"{row.service}{where}: {'; '.join(row.mismatch)}"
    text = f"{row.service} (planned on {row.planned_node}){where}: {row.state}"
    if row.state == "running" and not row.current:
        text += ": a task of the service's previous spec (Swarm has not updated it yet)"
    if row.update not in ("", "completed"):
        text += f": update {row.update}"
    if row.detail:
        text += f": {row.detail}"
    if row.error and row.error not in row.detail:
        text += f" (last task error: {row.error})"
    return text


def _nodes(client: Any) -> dict[str, dict[str, Any]]:
    with mapped_errors("docker node ls"):
        return {n["ID"]: n for n in client.api.nodes()}


def stack_services(client: Any, project: str) -> dict[str, dict[str, Any]]:
    """The stack's services by name (label com.docker.stack.namespace=PROJECT)."""
    with mapped_errors("docker service ls"):
        found = client.api.services(filters={"label": f"{NAMESPACE}={project}"})
    return {s["Spec"]["Name"]: s for s in found}


def require_deployed(client: Any, project: str, directory: Path) -> None:
    """BadInputError unless Swarm lists a service of stack PROJECT (label
    com.docker.stack.namespace=PROJECT): a fallback must update that stack, never deploy a
    second one beside it."""
    if stack_services(client, project):
        return
    raise BadInputError(
        f"stack {project} is not deployed (Swarm lists no service labelled "
        f"{NAMESPACE}={project}): composegen deploy -C {directory} first"
    )


def _tasks(client: Any, service_ids: list[str]) -> list[dict[str, Any]]:
    if not service_ids:
        return []
    with mapped_errors("docker service ps"):
        return list(client.api.tasks(filters={"service": service_ids}))


def stamp(text: Any) -> str:
    """An engine timestamp made comparable as text: Go trims the fraction's trailing zeros
    (…06.5Z is later than …06.123456789Z), so the fraction is padded to nine digits."""
    m = _STAMP.fullmatch(str(text or ""))
    if m is None:
        return str(text or "")
    return f"{m.group(1)}.{(m.group(2) or '').ljust(9, '0')}"


def _newest(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    def key(t: dict[str, Any]) -> tuple[str, int]:
        return (stamp(t.get("CreatedAt")), int((t.get("Version") or {}).get("Index") or 0))

    return max(tasks, key=key) if tasks else None


def _latest(tasks: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, bool]:
    """(the newest task Swarm means to run, else the newest task at all; whether it is meant
    to run). Only a task meant to run can count as running: one with desired state shutdown
    still running is on its way out."""
    meant = [t for t in tasks if t.get("DesiredState") in ("running", "ready", "accepted")]
    if meant:
        return _newest(meant), True
    return _newest(tasks), False


def _last_error(tasks: list[dict[str, Any]]) -> str:
    with_err = [t for t in tasks if (t.get("Status") or {}).get("Err")]
    if not with_err:
        return ""
    t = max(with_err, key=lambda t: stamp((t.get("Status") or {}).get("Timestamp")))
    return str(t["Status"]["Err"])


class Engines:
    """Clients of the nodes' own engines (by address), made once and kept for a wait."""

    def __init__(self, factory: NodeClient | None) -> None:
        self.factory = factory
        self.clients: dict[str, Any] = {}
        self.broken: dict[str, str] = {}

    def get(self, url: str) -> Any:
        if url in self.broken:
            raise EngineError(self.broken[url])
        if url not in self.clients:
            if self.factory is None:
                from composegen.engine.docker import connect_at

                self.factory = connect_at
            try:
                self.clients[url] = self.factory(url)
            except ComposegenError as exc:
                self.broken[url] = exc.message
                raise
        return self.clients[url]


def _held(
    plan: StackPlan, task: dict[str, Any], host: str, labels: dict[str, str], engines: Engines
) -> tuple[tuple[str, ...], str, str]:
    """(GPU UUIDs the task holds, where that was read, a problem reading it on the node's
    engine: then what the task's spec says, which only repeats the stack file)."""
    node = fleet_node_of(plan, host, labels)
    cid = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
    if node is not None and node.engine and cid:
        try:
            with mapped_errors(f"inspect the task container on {host}"):
                env = engines.get(node.engine).api.inspect_container(cid)["Config"]["Env"]
            return gpu_list(env_value(env, "NVIDIA_VISIBLE_DEVICES")), "container", ""
        except ComposegenError as exc:
            problem = f"{node.engine}: {first_line(exc)}"
        except (KeyError, TypeError):
            problem = f"{node.engine}: the task container has no environment"
    elif node is not None and node.engine:
        problem = f"{node.engine}: the task has no container ID"
    else:
        problem = ""
    spec_env = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Env") or []
    return gpu_list(env_value(spec_env, "NVIDIA_VISIBLE_DEVICES")), "task spec", problem


def _row(
    plan: StackPlan,
    svc: PlannedService,
    service: dict[str, Any] | None,
    tasks: list[dict[str, Any]],
    nodes: dict[str, dict[str, Any]],
    engines: Engines,
) -> Row:
    row = Row(svc.name, planned_where(plan, svc), planned_gpus=svc.uuids)
    if service is None:
        row.detail = f"no service {plan.project}_{svc.name} on the Swarm"
        return row
    row.error = _last_error(tasks)
    row.update = str((service.get("UpdateStatus") or {}).get("State") or "")
    task, meant = _latest(tasks)
    if task is None:
        row.state, row.detail = "pending", "no task yet"
        return row
    status = task.get("Status") or {}
    state = str(status.get("State") or "new")
    info = nodes.get(str(task.get("NodeID") or ""), {})
    host = str((info.get("Description") or {}).get("Hostname") or "")
    labels = dict((info.get("Spec") or {}).get("Labels") or {})
    role = str((info.get("Spec") or {}).get("Role") or "worker")
    row.node = host
    template = (service.get("Spec") or {}).get("TaskTemplate") or {}
    spec = task.get("Spec") or {}
    row.current = all(
        template.get(part) is None or spec.get(part) == template.get(part)
        for part in ("ContainerSpec", "Resources")
    )
    if not meant:
        row.state = "stopping" if state == "running" else state
        row.detail = f"Swarm means to {task.get('DesiredState') or 'stop'} its last task"
        return row
    if state == "running":
        row.state = "running"
        if not on_planned_node(svc, host, labels, role):
            row.mismatch.append(f"runs on {host}, planned on {row.planned_node}")
        held, source, problem = _held(plan, task, host, labels, engines)
        row.gpus, row.gpus_from = held, source
        if problem:
            row.mismatch.append(f"GPUs not verified on the node's engine {problem}")
        if svc.uuids or held:
            row.mismatch += gpu_mismatch(svc, held, advertised(info), host or "its node")
        assigned = _assigned_gpus(task)
        if assigned != svc.reserved:
            row.mismatch.append(
                f"Swarm assigned it {assigned} {GPU_KIND} resource(s), planned {svc.reserved}"
            )
        if not row.mismatch and not row.detail:
            gpus = f"GPU {','.join(held)}" if held else "no GPU"
            row.detail = f"{gpus} ({source})"
        return row
    row.state = "starting" if state in _STARTING else state
    why = str(status.get("Err") or status.get("Message") or "")
    row.detail = "" if why == row.state else why
    return row


def _assigned_gpus(task: dict[str, Any]) -> int:
    found = task.get("GenericResources") or []  # Swarm's AssignedGenericResources
    kinds = [((g or {}).get("NamedResourceSpec") or {}).get("Kind") for g in found]
    kinds += [((g or {}).get("DiscreteResourceSpec") or {}).get("Kind") for g in found]
    return sum(1 for k in kinds if k == GPU_KIND)


def stack_status(
    client: Any, plan: StackPlan, node_client: NodeClient | None = None, engines: Any = None
) -> StackStatus:
    """One look at the stack: every service of the stack file against what Swarm runs."""
    engines = engines or Engines(node_client)
    services = stack_services(client, plan.project)
    nodes = _nodes(client)
    ids = [s["ID"] for s in services.values()]
    by_service: dict[str, list[dict[str, Any]]] = {}
    for t in _tasks(client, ids):
        by_service.setdefault(str(t.get("ServiceID")), []).append(t)
    rows = []
    for svc in plan.services:
        service = services.get(f"{plan.project}_{svc.name}")
        tasks = by_service.get(service["ID"], []) if service else []
        rows.append(_row(plan, svc, service, tasks, nodes, engines))
    return StackStatus(plan.project, rows)
