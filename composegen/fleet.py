"""The fleet file: the GPU hosts a profile is planned over, one inventory per node.

    nodes:
      - {name: gpu-a, hostname: gpu-a.lan, inventory: a.json}
      - {name: gpu-b, labels: {gpu: a100}, inventory: b.csv, engine: ssh://admin@gpu-b}
    spares: per-node        # or fleet (the default); the profile's planner.spares wins

Inventory paths are relative to the fleet file and take anything `detect --from` reads. The
planner sees the fleet as one inventory whose GPUs are numbered across the nodes (node order,
then each node's GPU index) and a `FleetLayout` saying which node each GPU is on; a plan made
over a fleet gives every instance its node (composegen.plan).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from composegen.errors import BadInputError
from composegen.inventory import Gpu, Inventory
from composegen.plan import FleetLayout, Plan, PlanOptions, SpareScope, make_plan
from composegen.profiles import Profile

_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
SCHEMA_FILE = Path(__file__).with_name("schemas") / "fleet.schema.json"


@dataclass(frozen=True)
class Node:
    name: str  # the node's name in the fleet file (a-z0-9-, validated)
    hostname: str | None  # Swarm node hostname for placement (node.hostname == ...)
    labels: Mapping[str, str]  # or placement by node labels (node.labels.KEY == VALUE)
    inventory: Inventory  # from the node's file (anything `detect --from` reads)
    inventory_path: str = ""  # that file, as resolved against the fleet file
    engine: str | None = None  # the node's engine (unix://, tcp://, ssh://): deploy reads there


@dataclass(frozen=True)
class Fleet:
    nodes: tuple[Node, ...]
    spares: SpareScope = "fleet"  # the profile's planner.spares, when set, wins
    path: str = ""

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def inventory(self) -> Inventory:
        """The fleet as one inventory: GPUs numbered across nodes (node order, then index)."""
        return _merged(self)[0]

    def layout(self, profile_spares: str | None = None) -> FleetLayout:
        scope = cast(SpareScope, profile_spares or self.spares)
        return FleetLayout(
            nodes=tuple(n.name for n in self.nodes), gpu_nodes=_merged(self)[1], spares=scope
        )


def plan_fleet(fleet: Fleet, prof: Profile, opts: PlanOptions | None = None) -> Plan:
    """make_plan over the whole fleet: the one planner, with the fleet's layout."""
    layout = fleet.layout(prof.spares)
    return make_plan(fleet.inventory(), prof, replace(opts or PlanOptions(), layout=layout))


def _merged(fleet: Fleet) -> tuple[Inventory, tuple[tuple[str, int], ...]]:
    gpus: list[Gpu] = []
    where: list[tuple[str, int]] = []
    warnings: list[str] = []
    for node in fleet.nodes:
        own = sorted(node.inventory.gpus, key=lambda g: g.index)
        base = len(gpus)
        fleet_index: dict[int, int] = {}
        for k, g in enumerate(own):
            fleet_index.setdefault(g.index, base + k)
        for k, g in enumerate(own):
            # NVLink joins GPUs of one machine: its peers renumbered as the fleet numbers them
            peers = tuple(sorted(fleet_index[p] for p in g.nvlink_peers if p in fleet_index))
            gpus.append(replace(g, index=base + k, nvlink_peers=peers))
            where.append((node.name, g.index))
        warnings += [f"{node.name}: {w}" for w in node.inventory.warnings]
    drivers = {n.inventory.driver_version for n in fleet.nodes}
    cudas = {n.inventory.cuda_version for n in fleet.nodes}
    inv = Inventory(
        source="fleet",
        gpus=tuple(gpus),
        driver_version=drivers.pop() if len(drivers) == 1 else None,
        cuda_version=cudas.pop() if len(cudas) == 1 else None,
        no_gpu_reason=None if gpus else "no node of the fleet has a GPU",
        warnings=tuple(warnings),
    )
    return inv, tuple(where)


# --- loading ----------------------------------------------------------------------------------


def engine_problem(address: str) -> str | None:
    """What is wrong with a node's engine address (None: usable): unix:///PATH,
    tcp://HOST:PORT, ssh://[USER@]HOST[:PORT]; HOST a name, an IPv4 or a [IPv6] address,
    PORT 1-65535."""
    import ipaddress
    from urllib.parse import urlsplit

    bad = f"{address!r} is not an engine address"
    try:
        url = urlsplit(address)
        port = url.port  # ValueError when not a number in 0-65535
        host = url.hostname or ""
    except ValueError:
        return bad
    if any(c.isspace() for c in address) or url.query or url.fragment:
        return bad
    if url.scheme == "unix":
        return None if not url.netloc and url.path.startswith("/") and url.path != "/" else bad
    if url.scheme not in ("tcp", "ssh") or url.path not in ("", "/") or port == 0:
        return bad
    if url.scheme == "tcp" and (url.username is not None or port is None):
        return bad + " (tcp:// needs HOST:PORT, 2376 with TLS)"
    if (url.username is not None and not _USER.fullmatch(url.username)) or url.password:
        return bad
    if url.netloc.rpartition("@")[2].startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return bad
    elif not _HOST.fullmatch(host):
        return bad
    return None


def _schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return data


def load_fleet(path: str) -> Fleet:
    """Read and check a fleet file; BadInputError naming the file and the place in it."""
    from composegen import profiles
    from composegen.detect.sources import load_inventory
    from composegen.files import non_string_key

    data = profiles._read_yaml(path)
    found = non_string_key(data)
    if found is not None:
        raise BadInputError(
            f"{path}: {profiles._where(found[0])}: key {found[1]!r} must be a string"
        )
    try:
        profiles._validate_schema(data, path, _schema())
    except BadInputError as exc:
        raise BadInputError(
            exc.message,
            exc.hint
            or "a fleet file is `nodes: [{name: gpu-a, inventory: a.json}, ...]`; node keys: "
            "name, hostname, labels, inventory, engine; spares: per-node or fleet",
        ) from None
    base = Path(path).parent
    nodes: list[Node] = []
    seen: dict[str, int] = {}
    hosts: dict[str, int] = {}
    for k, raw in enumerate(data["nodes"]):
        name = raw["name"]
        if name in seen:
            raise BadInputError(
                f"{path}: nodes[{k}].name: {name!r} is already the name of nodes[{seen[name]}]",
                "give every node its own name",
            )
        seen[name] = k
        host = raw.get("hostname")
        if host is not None and host in hosts:
            raise BadInputError(
                f"{path}: nodes[{k}].hostname: {host!r} is already the hostname of "
                f"nodes[{hosts[host]}]",
                "one entry per Swarm node",
            )
        if host is not None:
            hosts[host] = k
        inv_path = str(base / raw["inventory"])
        try:
            inv = load_inventory(inv_path)
        except BadInputError as exc:
            raise BadInputError(
                f"{path}: nodes[{k}].inventory: {exc.message}",
                exc.hint
                or f"save it on {name} with `composegen detect --save FILE`; the path is "
                "relative to the fleet file",
            ) from None
        engine = raw.get("engine")
        problem = engine_problem(engine) if engine is not None else None
        if problem:
            raise BadInputError(
                f"{path}: nodes[{k}].engine: {problem}",
                "give unix:///var/run/docker.sock, tcp://HOST:2376 or ssh://USER@HOST[:PORT]",
            )
        labels = dict(raw.get("labels") or {})
        nodes.append(Node(name, host, labels, inv, inv_path, engine))
    _check_uuids(path, nodes)
    return Fleet(tuple(nodes), spares=data.get("spares", "fleet"), path=path)


def _check_uuids(path: str, nodes: list[Node]) -> None:
    """A GPU UUID names one GPU in the whole fleet: it is what every service is pinned to."""
    seen: dict[str, tuple[str, int]] = {}
    for node in nodes:
        for g in node.inventory.gpus:
            if not g.uuid:
                continue
            if g.uuid in seen:
                other, idx = seen[g.uuid]
                raise BadInputError(
                    f"{path}: GPU UUID {g.uuid} is on {other} (GPU {idx}) and on {node.name} "
                    f"(GPU {g.index}, {node.inventory_path})",
                    "each node's inventory must be saved on that node with `composegen detect "
                    "--save FILE`; two nodes cannot share an inventory file",
                )
            seen[g.uuid] = (node.name, g.index)


__all__ = ["Fleet", "Node", "engine_problem", "load_fleet", "plan_fleet"]
