"""Pure: what a rendered swarm stack plans, read back from its directory.

`render --target swarm` writes DIR/docker-stack.yml (per service: its fleet node in the label
io.composegen.node, its placement constraints, its GPUs pinned by NVIDIA_VISIBLE_DEVICES, the
GPUs it reserves as generic resources) and DIR/swarm/nodes.json (per fleet node: its placement,
its GPU UUIDs, its engine address). deploy and status compare what Swarm runs against this, so
they need neither the fleet file nor the profile. Hand edits of the stack file count. Also
here: how a task is judged against its plan (constraints, GPUs) and the status rows deploy and
status report (engine/swarm.py fills them from Swarm).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composegen.errors import BadInputError

STACK_FILE = "docker-stack.yml"
COMPOSE_FILE = "docker-compose.yml"
NODES_FILE = "swarm/nodes.json"
GPU_KIND = "NVIDIA-GPU"
NODE_LABEL = "io.composegen.node"
MAX_STACK_BYTES = 4 * 1024 * 1024
_HEADER = re.compile(r"docker stack deploy -c \S+ ([A-Za-z0-9][A-Za-z0-9_.-]*)\s*$")
_NO_GPU = {"", "void", "none"}
_CONSTRAINT = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(==|!=)\s*(\S.*?)\s*$")


@dataclass(frozen=True)
class PlannedService:
    name: str  # the service's key in the stack file; Swarm names it PROJECT_NAME
    node: str | None  # its fleet node (io.composegen.node)
    constraints: tuple[str, ...]  # deploy.placement.constraints
    uuids: tuple[str, ...]  # NVIDIA_VISIBLE_DEVICES, the GPUs it is pinned to
    reserved: int  # NVIDIA-GPU generic resources it reserves


@dataclass(frozen=True)
class PlannedNode:
    name: str
    hostname: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    engine: str | None = None  # the node's engine address (fleet file), to read containers
    gpus: tuple[str, ...] = ()  # the GPU UUIDs it advertises to Swarm


@dataclass(frozen=True)
class StackPlan:
    directory: Path
    project: str  # the profile's name, as render prints `docker stack deploy ... NAME`
    services: tuple[PlannedService, ...]
    nodes: Mapping[str, PlannedNode]  # by fleet node name; empty without swarm/nodes.json

    def service(self, name: str) -> PlannedService:
        return next(s for s in self.services if s.name == name)


def is_swarm_dir(directory: Path) -> bool:
    """DIR holds a swarm stack: docker-stack.yml and no docker-compose.yml."""
    return (directory / STACK_FILE).is_file() and not (directory / COMPOSE_FILE).exists()


def gpu_list(value: str | None) -> tuple[str, ...]:
    """NVIDIA_VISIBLE_DEVICES as UUIDs: empty for void / none / unset."""
    if value is None or value.strip().lower() in _NO_GPU:
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def env_value(env: Any, key: str) -> str | None:
    """A variable of an environment as a mapping or as KEY=VALUE lines (engine form)."""
    if isinstance(env, Mapping):
        value = env.get(key)
        return None if value is None else str(value)
    for item in env or []:
        k, sep, v = str(item).partition("=")
        if k == key and sep:
            return v
    return None


def _read_stack(path: Path) -> tuple[str, Any]:
    import yaml

    from composegen.files import TooLargeError, read_bounded

    try:
        text = read_bounded(path, MAX_STACK_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise BadInputError(
            f"{path}: no such file",
            "render a swarm stack first: composegen render --fleet FLEET --target swarm -o DIR",
        ) from None
    except (TooLargeError, UnicodeDecodeError, OSError) as exc:
        raise BadInputError(f"{path}: cannot read it: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise BadInputError(f"{path}{where}: not valid YAML", "render it again") from None
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise BadInputError(f"{path}: no services: mapping", "render it again")
    return text, data


def _labels(block: Mapping[str, Any], deploy: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in (block.get("labels"), deploy.get("labels")):
        if isinstance(raw, Mapping):
            out.update({str(k): str(v) for k, v in raw.items()})
        elif isinstance(raw, list):
            out.update(str(x).partition("=")[::2] for x in raw)
    return out


def _reserved(deploy: Mapping[str, Any]) -> int:
    res = ((deploy.get("resources") or {}).get("reservations") or {}).get("generic_resources")
    total = 0
    for item in res or []:
        spec = (item or {}).get("discrete_resource_spec") or {}
        if spec.get("kind") == GPU_KIND:
            total += int(spec.get("value") or 0)
    return total


def _service(path: Path, name: str, block: Any) -> PlannedService:
    if not isinstance(block, Mapping):
        raise BadInputError(f"{path}: services.{name}: not a mapping", "render it again")
    deploy = block.get("deploy") or {}
    constraints = (deploy.get("placement") or {}).get("constraints") or []
    return PlannedService(
        name=str(name),
        node=_labels(block, deploy).get(NODE_LABEL),
        constraints=tuple(str(c) for c in constraints),
        uuids=gpu_list(env_value(block.get("environment"), "NVIDIA_VISIBLE_DEVICES")),
        reserved=_reserved(deploy),
    )


def load_nodes(directory: Path) -> dict[str, PlannedNode]:
    path = directory / NODES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: cannot read it: {exc}", "render the stack again") from None
    out = {}
    for raw in data.get("nodes") or []:
        node = PlannedNode(
            name=str(raw["name"]),
            hostname=raw.get("hostname"),
            labels=dict(raw.get("labels") or {}),
            engine=raw.get("engine"),
            gpus=tuple(raw.get("gpus") or ()),
        )
        out[node.name] = node
    return out


def load_stack(directory: Path, project: str | None = None) -> StackPlan:
    """Read DIR's stack file (and swarm/nodes.json when there); BadInputError when unusable."""
    path = directory / STACK_FILE
    text, data = _read_stack(path)
    name = project
    if not name:
        first = text.split("\n", 1)[0]
        m = _HEADER.search(first)
        name = m.group(1) if m else directory.resolve().name
    services = tuple(_service(path, str(k), v) for k, v in data["services"].items())
    return StackPlan(directory, name, services, load_nodes(directory))


# --- Swarm's view compared with the plan ------------------------------------------------------


def constraint_holds(constraint: str, hostname: str, labels: Mapping[str, str], role: str) -> bool:
    """A placement constraint on a node, as Swarm reads it (node.hostname, node.labels.KEY,
    node.role, node.id: == and !=). One it cannot judge here holds."""
    m = _CONSTRAINT.fullmatch(constraint)
    if m is None:
        return True
    key, op, want = m.groups()
    if key == "node.hostname":
        have: str | None = hostname
    elif key.startswith("node.labels."):
        have = labels.get(key[len("node.labels.") :])
    elif key == "node.role":
        have = role
    else:
        return True
    same = have is not None and have.lower() == want.lower()
    return same if op == "==" else not same


def on_planned_node(
    svc: PlannedService, hostname: str, labels: Mapping[str, str], role: str = "worker"
) -> bool:
    return all(constraint_holds(c, hostname, labels, role) for c in svc.constraints)


def fleet_node_of(plan: StackPlan, hostname: str, labels: Mapping[str, str]) -> PlannedNode | None:
    """The fleet node a Swarm node is (by the placement nodes.json records), if any."""
    for node in plan.nodes.values():
        if node.hostname:
            same = node.hostname.lower() == hostname.lower()
        elif node.labels:
            same = all(labels.get(k) == v for k, v in node.labels.items())
        else:
            same = node.name == hostname
        if same:
            return node
    return None


def planned_where(plan: StackPlan, svc: PlannedService) -> str:
    """Where a service is planned, in words: `gpu-b (gpu-b.lan)`, or its constraints."""
    node = plan.nodes.get(svc.node or "")
    if node is not None and node.hostname and node.hostname != node.name:
        return f"{node.name} ({node.hostname})"
    if svc.node:
        return svc.node
    return " && ".join(svc.constraints) or "any node"


def advertised(node_info: Mapping[str, Any]) -> tuple[str, ...]:
    """The NVIDIA-GPU named generic resources a Swarm node advertises (`docker node inspect`)."""
    res = ((node_info.get("Description") or {}).get("Resources") or {}).get("GenericResources")
    out = []
    for item in res or []:
        spec = item.get("NamedResourceSpec") or {}
        if spec.get("Kind") == GPU_KIND:
            out.append(str(spec.get("Value")))
    return tuple(out)


def gpu_mismatch(
    svc: PlannedService, held: Sequence[str], offered: Sequence[str], host: str
) -> list[str]:
    """What is wrong with the GPUs a task holds, against the plan and the node's resources."""
    out = []
    if sorted(held) != sorted(svc.uuids):
        out.append(f"holds GPU {','.join(held) or 'none'}, planned {','.join(svc.uuids) or 'none'}")
    missing = [u for u in svc.uuids if u not in offered]
    if missing:
        out.append(f"GPU {','.join(missing)} is not among {host}'s {GPU_KIND} resources")
    return out


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

    @property
    def ok(self) -> bool:
        return self.state == "running" and not self.mismatch

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
    if row.detail:
        text += f": {row.detail}"
    if row.error and row.error not in row.detail:
        text += f" (last task error: {row.error})"
    return text
