"""Removing a swarm stack: `docker stack rm`, then wait until it is gone (composegen undeploy).

Gone means: no service of the stack (label com.docker.stack.namespace), no task container of it
on the manager's engine nor on the node engines swarm/nodes.json names, no network of it. Named
volumes stay: they hold the models.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composegen.engine.docker import EngineError, first_line, mapped_errors
from composegen.engine.swarm import NAMESPACE, NodeClient, Report, _Engines, _services, stack_rm
from composegen.errors import ComposegenError


@dataclass
class Removed:
    services: int
    containers: int
    networks: int
    unreachable: list[str] = field(default_factory=list)  # node engines it could not read


def _containers(client: Any, project: str) -> dict[str, str]:
    with mapped_errors("docker ps"):
        found = client.containers.list(all=True, filters={"label": f"{NAMESPACE}={project}"})
    return {c.id: c.name for c in found}


def leftovers(
    client: Any, project: str, node_clients: Sequence[Any] = ()
) -> tuple[list[str], list[str], list[str]]:
    """(services, task containers on the manager and the given node engines, networks) of the
    stack still there."""
    services = sorted(_services(client, project))
    containers = _containers(client, project)
    for other in node_clients:
        containers.update(_containers(other, project))
    with mapped_errors("docker network ls"):
        found = client.networks.list(filters={"label": f"{NAMESPACE}={project}"})
    return services, sorted(containers.values()), [n.name for n in found]


def _node_clients(directory: Path, node_client: NodeClient | None) -> tuple[list[Any], list[str]]:
    """Clients of the nodes' engines that swarm/nodes.json names; those it cannot reach."""
    from composegen.swarm_stack import load_nodes

    engines = _Engines(node_client)
    clients, unreachable = [], []
    for node in load_nodes(directory).values():
        if not node.engine:
            continue
        try:
            clients.append(engines.get(node.engine))
        except ComposegenError as exc:
            unreachable.append(f"{node.name}: {first_line(exc)}")
    return clients, unreachable


def undeploy(
    client: Any,
    directory: Path,
    project: str,
    *,
    timeout_s: float,
    report: Report,
    poll_s: float = 0.5,
    node_client: NodeClient | None = None,
) -> Removed:
    """`docker stack rm`, then wait until its services, the task containers (on this engine and
    on the node engines swarm/nodes.json names) and its networks are gone. Named volumes stay
    (they hold the models)."""
    others, unreachable = _node_clients(directory, node_client)
    for why in unreachable:
        report(project, "warning", f"cannot check the task containers on {why}")
    services, containers, networks = leftovers(client, project, others)
    before = Removed(len(services), len(containers), len(networks), unreachable)
    if not (services or containers or networks):
        return before
    if services or networks:
        stack_rm(directory, project, lambda line: report(project, "removing", line))
    deadline = time.monotonic() + timeout_s
    shown: tuple[int, int, int] | None = None
    while True:
        services, containers, networks = leftovers(client, project, others)
        left = (len(services), len(containers), len(networks))
        if left != shown:
            shown = left
            report(
                project,
                "removing" if any(left) else "removed",
                f"{left[0]} service(s), {left[1]} container(s), {left[2]} network(s) left",
            )
        if not any(left):
            return before
        if time.monotonic() >= deadline:
            raise EngineError(
                f"{project}: still there after {timeout_s:g}s: "
                + ", ".join(services + containers + networks),
                "run `composegen undeploy` again; `docker stack ps` shows what is stopping",
            )
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
