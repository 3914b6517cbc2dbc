"""The swarm half of render inputs (app.RenderInputs with a fleet): the fleet as render.json
embeds it, the failed GPUs marked over it, the re-render of a swarm stack (`rebuild`) and its
CPU form (`fallback --cpu`). The one-host half stays in composegen.app."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from composegen.errors import BadInputError
from composegen.inventory import Inventory
from composegen.plan import Instance, Plan, PlanOptions
from composegen.profiles import Profile

if TYPE_CHECKING:
    from composegen.app import Rendered, RenderInputs
    from composegen.fleet import Fleet

_AUTH_CONF = "nginx/auth.conf"


def key_from_auth(out_dir: Path) -> str | None:
    """A swarm stack's API key, read back from the map in nginx/auth.conf (mode 0600, the
    gateway's secret; render.auth_conf escapes `.` and `+`)."""
    import re

    try:
        text = (out_dir / _AUTH_CONF).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    m = re.search(r'"~\^Bearer (.+)\$" 1;', text)
    return m.group(1).replace("\\.", ".").replace("\\+", "+") if m else None


def fleet_to_dict(fleet: Fleet) -> dict[str, object]:
    return {
        "spares": fleet.spares,
        "path": fleet.path,
        "nodes": [
            {
                "name": n.name,
                "hostname": n.hostname,
                "labels": dict(n.labels),
                "engine": n.engine,
                "inventory_path": n.inventory_path,
                "inventory": n.inventory.to_dict(),
            }
            for n in fleet.nodes
        ],
    }


def fleet_from_dict(data: object, where: str) -> Fleet:
    """The fleet embedded in render.json; TypeError/ValueError on a malformed one."""
    from composegen.fleet import Fleet, Node

    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not data["nodes"]:
        raise TypeError("fleet must hold a list of nodes")
    nodes = []
    for k, raw in enumerate(data["nodes"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise TypeError(f"fleet node {k} has no name")
        labels = raw.get("labels") or {}
        if not isinstance(labels, dict):
            raise TypeError(f"fleet node {k}: labels must be a mapping")
        host, engine = raw.get("hostname"), raw.get("engine")
        nodes.append(
            Node(
                raw["name"],
                None if host is None else str(host),
                {str(a): str(b) for a, b in labels.items()},
                Inventory.from_dict(raw.get("inventory"), where=f"{where}: nodes[{k}]"),
                str(raw.get("inventory_path") or ""),
                engine=None if engine is None else str(engine),
            )
        )
    spares = data.get("spares", "fleet")
    if spares not in ("fleet", "per-node"):
        raise ValueError(f"fleet spares {spares!r} is neither fleet nor per-node")
    return Fleet(tuple(nodes), spares=spares, path=str(data.get("path") or ""))


def mark_fleet_failed(fleet: Fleet, failed: tuple[int, ...]) -> Fleet:
    """The fleet with these GPUs marked lost; ids are fleet indices (Fleet.inventory's
    numbering: node order, then each node's GPUs by index)."""
    from dataclasses import replace

    from composegen.app import _mark_failed as mark_failed

    nodes = []
    base = 0
    for node in fleet.nodes:
        own = sorted(node.inventory.gpus, key=lambda g: g.index)
        lost = tuple(g.index for k, g in enumerate(own) if base + k in failed)
        nodes.append(replace(node, inventory=mark_failed(node.inventory, lost)))
        base += len(own)
    return replace(fleet, nodes=tuple(nodes))


def rebuild_swarm(inputs: RenderInputs, prof: Profile, cpu_form: bool) -> Rendered:
    """rebuild() for a swarm stack: the plan over the recorded fleet, then each failover step
    (what a step drops leaves the stack file: `stack deploy --prune` removes it); a gateway
    with nginx `resolve` keeps the first plan's routes (render_swarm.SwarmOptions)."""
    from composegen.app import Rendered, Target
    from composegen.fleet import plan_fleet
    from composegen.render_swarm import SwarmOptions, render_swarm

    fleet = inputs.fleet
    assert fleet is not None
    opts = PlanOptions(pin_by=inputs.pin_by, count_used=not inputs.ignore_used)
    first = plan = plan_fleet(fleet, prof, opts)
    failed: tuple[int, ...] = ()
    for step in inputs.failed:
        failed = tuple(sorted(set(failed) | set(step)))
        marked = mark_fleet_failed(fleet, failed)
        again = PlanOptions(pin_by=plan.pin_by, previous=plan, count_used=opts.count_used)
        plan = plan_fleet(marked, prof, again)
    if cpu_form:
        plan = swarm_cpu_plan(prof, plan)
    swarm = SwarmOptions(start_first=frozenset(inputs.start_first), gateway_plan=first)
    files = render_swarm(prof, plan, fleet.nodes, swarm)
    return Rendered(prof, plan, Target(fleet.inventory(), "recorded fleet", fleet), files)


def swarm_cpu_plan(prof: Profile, plan: Plan) -> Plan:
    """The one-host CPU variant's plan (render.cpu_plan: the profile's cpu: variants, one
    instance of a replica group, none for a service without one) under the GPU services' own
    names: on a swarm they are updated in place (their node, volumes and gateway route kept)."""
    from dataclasses import replace

    from composegen.render import cpu_plan

    names = {i.name for i in plan.instances}
    cpu = cpu_plan(prof, plan)
    renamed = tuple(
        replace(i, name=i.name.removesuffix("-cpu"))
        if i.name.endswith("-cpu") and i.name.removesuffix("-cpu") in names
        else i
        for i in cpu.instances
    )
    return replace(cpu, instances=renamed)


# --- what a swarm fallback names and says (engine/swarm_failover.py) -------------------------


def _where(plan: Plan, inst: Instance | None) -> str:
    if inst is None:
        return "removed"
    if inst.device != "gpu":
        return f"CPU on {inst.node}"
    by_index = {g.index: g for g in plan.gpus}
    local = [by_index[i].node_index for i in inst.gpus if i in by_index]
    gpus = ",".join(str(i) for i in local if i is not None)
    return f"{inst.node} GPU {gpus} ({','.join(inst.device_ids)})"


def describe(
    prof: Any, before: Plan, after: Plan, orders: Mapping[str, str], project: str
) -> list[str]:
    """One line per changed service; a move to another node says what its volumes lose."""
    old = {i.name: i for i in before.instances}
    new = {i.name: i for i in after.instances}
    lines = []
    for name, order in orders.items():
        if name == "gateway":
            lines.append("gateway: its configuration changes: restarted (stop-first)")
            continue
        was, now = old.get(name), new.get(name)
        line = f"{name}: {_where(before, was)} -> {_where(after, now)}"
        lines.append(line + ("" if order == "removed" else f" ({order})"))
        if was is not None and now is not None and was.node != now.node:
            from composegen.render import _instance_volumes

            vols = [v.split(":", 1)[0] for v in _instance_volumes(prof.service(now.service), now)]
            if vols:
                lines.append(
                    f"  {name} moves from node {was.node} to node {now.node}: its named "
                    f"volumes ({', '.join(f'{project}_{v}' for v in vols)}) are local to each "
                    f"node, so it gets {now.node}'s copies (empty unless filled there); the "
                    f"data on {was.node} stays there"
                )
    return lines


def fleet_ids(text: str, fleet: Fleet) -> str:
    """`NODE:INDEX` items (a GPU by its node and its own index there) as fleet indices. On a
    fleet of more than one node a bare integer is refused (it would silently mean the fleet's
    numbering): NODE:INDEX or a UUID there."""
    layout = fleet.layout().gpu_nodes
    out = []
    for raw in text.split(","):
        item = raw.strip()
        node, sep, idx = (p.strip() for p in item.rpartition(":"))
        if sep and idx.isdigit() and not item.startswith("GPU-"):
            if (node, int(idx)) not in layout:
                raise BadInputError(
                    f"--gpu-failed: no GPU {idx} on node {node!r} in the stack's fleet",
                    f"nodes: {', '.join(n.name for n in fleet.nodes)}; or give GPU UUIDs",
                )
            item = str(layout.index((node, int(idx))))
        elif item.isdigit() and len(fleet.nodes) > 1:
            first = fleet.nodes[0].name
            raise BadInputError(
                f"--gpu-failed: {item!r} is ambiguous on a fleet of {len(fleet.nodes)} nodes: "
                f"name the GPU as NODE:INDEX (e.g. {first}:{item}) or by its UUID (GPU-...)"
            )
        out.append(item)
    return ",".join(out)
