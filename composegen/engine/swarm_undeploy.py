"""Removing a swarm stack: `docker stack rm`, then wait until it is gone (composegen undeploy).

Gone means: no service of the stack (label com.docker.stack.namespace), no task container of it
on the manager's engine nor on the node engines swarm/nodes.json names, no network, config or
secret of it (the gateway's API key is a secret). Named volumes stay: they hold the models. A
node engine that cannot be reached, at the start or midway, is reported and no longer waited
for; the manager's own engine failing is fatal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composegen.engine.docker import EngineError, NoEngineError, first_line, mapped_errors
from composegen.engine.swarm import Report, stack_rm
from composegen.engine.swarm_status import NAMESPACE, Engines, NodeClient, stack_services
from composegen.errors import ComposegenError

KINDS = ("service", "container", "network", "config", "secret")


@dataclass
class Removed:
    services: int
    containers: int
    networks: int
    unreachable: list[str] = field(default_factory=list)  # node engines it could not read
    configs: int = 0
    secrets: int = 0


@dataclass
class Left:
    """What of the stack is still there, by kind, each a sorted list of names."""

    services: list[str]
    containers: list[str]
    networks: list[str]
    configs: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def counts(self) -> tuple[int, ...]:
        return tuple(len(x) for x in self.lists())

    def lists(self) -> tuple[list[str], ...]:
        return (self.services, self.containers, self.networks, self.configs, self.secrets)

    def names(self) -> list[str]:
        return [name for part in self.lists() for name in part]

    def text(self) -> str:
        return ", ".join(f"{n} {k}(s)" for n, k in zip(self.counts(), KINDS, strict=True))


def _containers(client: Any, project: str) -> dict[str, str]:
    """The stack's task containers on an engine, by ID. One list call (`docker ps`), no
    inspect per container: those are being removed meanwhile (NotFound)."""
    with mapped_errors("docker ps"):
        found = client.api.containers(all=True, filters={"label": f"{NAMESPACE}={project}"})
    return {str(c["Id"]): str((c.get("Names") or [c["Id"]])[0]).lstrip("/") for c in found}


def _named(client: Any, kind: str, project: str) -> list[str]:
    with mapped_errors(f"docker {kind} ls"):
        found = getattr(client, f"{kind}s").list(filters={"label": f"{NAMESPACE}={project}"})
    return sorted(str(x.name) for x in found)


def stack_left(
    client: Any,
    project: str,
    node_clients: dict[str, Any],
    report: Report | None = None,
    lost: list[str] | None = None,
) -> Left:
    """What of the stack is still there: services, networks, configs and secrets on the
    manager; task containers on the manager and on the node engines given (by name). A node
    engine that fails is reported, added to `lost`, dropped from `node_clients` and no longer
    waited for."""
    services = sorted(stack_services(client, project))
    containers = _containers(client, project)
    for name, other in list(node_clients.items()):
        try:
            containers.update(_containers(other, project))
        except NoEngineError as exc:  # lost the engine; another error is fatal
            del node_clients[name]
            why = f"{name}: {first_line(exc)}"
            if lost is not None:
                lost.append(why)
            if report is not None:
                report(project, "warning", f"cannot check the task containers on {why}")
    return Left(
        services,
        sorted(containers.values()),
        _named(client, "network", project),
        _named(client, "config", project),
        _named(client, "secret", project),
    )


def leftovers(
    client: Any, project: str, node_clients: Any = ()
) -> tuple[list[str], list[str], list[str]]:
    """(services, task containers on the manager and the given node engines, networks) of the
    stack still there (stack_left has its configs and secrets too)."""
    left = stack_left(client, project, {f"engine {k}": c for k, c in enumerate(node_clients)})
    return left.services, left.containers, left.networks


def _node_clients(
    directory: Path, node_client: NodeClient | None
) -> tuple[dict[str, Any], list[str]]:
    """Clients of the nodes' engines that swarm/nodes.json names; those it cannot reach."""
    from composegen.swarm_stack import load_nodes

    engines = Engines(node_client)
    clients, unreachable = {}, []
    for node in load_nodes(directory).values():
        if not node.engine:
            continue
        try:
            clients[node.name] = engines.get(node.engine)
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
    on the node engines swarm/nodes.json names), its networks, configs and secrets are gone.
    Named volumes stay (they hold the models)."""
    deadline = time.monotonic() + timeout_s
    others, unreachable = _node_clients(directory, node_client)
    for why in unreachable:
        report(project, "warning", f"cannot check the task containers on {why}")
    before = stack_left(client, project, others, report, unreachable)
    n = before.counts()
    removed = Removed(n[0], n[1], n[2], unreachable, configs=n[3], secrets=n[4])
    if not before.names():
        return removed
    if before.services or before.networks or before.configs or before.secrets:
        stack_rm(
            directory,
            project,
            lambda line: report(project, "removing", line),
            timeout_s=max(1.0, deadline - time.monotonic()),
        )
    shown: tuple[int, ...] | None = None
    while True:
        left = stack_left(client, project, others, report, unreachable)
        if left.counts() != shown:
            shown = left.counts()
            report(project, "removing" if any(shown) else "removed", f"{left.text()} left")
        if not any(shown):
            return removed
        if time.monotonic() >= deadline:
            raise EngineError(
                f"{project}: still there after {timeout_s:g}s: " + ", ".join(left.names()),
                "run `composegen undeploy` again; `docker stack ps` shows what is stopping",
            )
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
