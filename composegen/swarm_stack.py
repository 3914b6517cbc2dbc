"""Pure: what a rendered swarm stack plans, read back from its directory.

`render --target swarm` writes DIR/docker-stack.yml (per service: its fleet node in the label
io.composegen.node, its placement constraints, its GPUs pinned by NVIDIA_VISIBLE_DEVICES, the
GPUs it reserves as generic resources) and DIR/swarm/nodes.json (per fleet node: its placement,
its GPU UUIDs, its engine address). deploy and status compare what Swarm runs against this, so
they need neither the fleet file nor the profile. Hand edits of the stack file count. Also
here: how a task is judged against its plan (constraints, GPUs); the status rows deploy and
status report are engine/swarm_status.py's.
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
STACK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
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


def _nodes_data(directory: Path) -> dict[str, Any] | None:
    path = directory / NODES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: cannot read it: {exc}", "render the stack again") from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes", []), list):
        raise BadInputError(f"{path}: not a {{nodes: [...]}} object", "render the stack again")
    return data


def _text(path: Path, where: str, value: Any, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadInputError(f"{path}: {where}: not a non-empty string", "render the stack again")
    return value


def load_nodes(directory: Path) -> dict[str, PlannedNode]:
    """swarm/nodes.json's nodes (none without the file); BadInputError when malformed."""
    from composegen.fleet import engine_problem

    path = directory / NODES_FILE
    data = _nodes_data(directory)
    out = {}
    for k, raw in enumerate((data or {}).get("nodes") or []):
        if not isinstance(raw, dict):
            raise BadInputError(f"{path}: nodes[{k}]: not an object", "render the stack again")
        labels, gpus = raw.get("labels") or {}, raw.get("gpus") or []
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise BadInputError(f"{path}: nodes[{k}].labels: not a mapping of strings")
        if not isinstance(gpus, list) or not all(isinstance(g, str) for g in gpus):
            raise BadInputError(f"{path}: nodes[{k}].gpus: not a list of GPU UUIDs")
        engine = _text(path, f"nodes[{k}].engine", raw.get("engine"))
        problem = engine_problem(engine) if engine is not None else None
        if problem:
            raise BadInputError(
                f"{path}: nodes[{k}].engine: {problem}",
                "fix the node's engine in the fleet file and render the stack again",
            )
        node = PlannedNode(
            name=str(_text(path, f"nodes[{k}].name", raw.get("name"), required=True)),
            hostname=_text(path, f"nodes[{k}].hostname", raw.get("hostname")),
            labels={str(a): b for a, b in labels.items()},
            engine=engine,
            gpus=tuple(gpus),
        )
        out[node.name] = node
    return out


def check_stack_name(name: str, where: str = "-p") -> str:
    """A stack name Swarm and the docker CLI take: it prefixes every object of the stack."""
    if not STACK_NAME.fullmatch(name):
        raise BadInputError(
            f"{where}: {name!r} is not a stack name",
            "a stack name is 1-63 characters A-Z a-z 0-9 _ . -, starting with a letter or digit",
        )
    return name


def recorded_name(directory: Path, text: str | None = None) -> str | None:
    """The stack's name as render recorded it: the stack file's first line (`docker stack
    deploy -c docker-stack.yml NAME`), else swarm/nodes.json's profile."""
    if text is None:
        try:
            with (directory / STACK_FILE).open(encoding="utf-8", errors="replace") as fh:
                text = fh.readline()
        except OSError:
            text = ""
    m = _HEADER.search(text.split("\n", 1)[0])
    if m:
        return m.group(1)
    try:
        profile = (_nodes_data(directory) or {}).get("profile")
    except BadInputError:
        return None
    return profile if isinstance(profile, str) and STACK_NAME.fullmatch(profile) else None


def load_stack(
    directory: Path, project: str | None = None, *, name_from_dir: bool = True
) -> StackPlan:
    """Read DIR's stack file (and swarm/nodes.json when there); BadInputError when unusable.
    The stack's name: `project`, else the one render recorded, else (`name_from_dir`) the
    directory's name; always checked (it becomes docker CLI arguments and lock paths)."""
    path = directory / STACK_FILE
    text, data = _read_stack(path)
    name = check_stack_name(project) if project else recorded_name(directory, text)
    if not name:
        if not name_from_dir:
            raise BadInputError(
                f"{path}: no stack name recorded (render writes it in the first line)",
                "pass the stack's name with -p NAME",
            )
        name = check_stack_name(directory.resolve().name, f"{directory} (the stack's name)")
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
