"""A rendered swarm stack on a Swarm: deploy it, wait until it runs as planned, report where
everything runs (removing it: engine/swarm_undeploy.py).

The stack is applied with the Docker CLI's `docker stack deploy` (it handles the stack's
configs, secrets, networks and volumes as users know them), with DIR/.env's variables in its
environment (the CLI does not read .env; DOCKER_* and LD_* are never taken from it) and
DOCKER_HOST set to the engine the SDK talks to, so that both reach the same manager.
Everything else goes through the manager's API: services of the stack (label
com.docker.stack.namespace), their tasks, the nodes. A service is as planned when its last
update completed (a rollback or a paused update fails the wait) and the task Swarm means to
run (desired state running) runs its current spec (a task with a healthcheck runs once
healthy) on a node its planned constraints hold for, holding its planned GPU UUIDs: read from
the task container's environment on the node's own engine when swarm/nodes.json gives one (an
engine that cannot tell fails the row), else from the task's spec; each UUID must also be one
of the node's NVIDIA-GPU generic resources, and Swarm must have assigned the task as many
NVIDIA-GPU resources (the task's GenericResources) as the service reserves.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from composegen.engine.docker import EngineError, first_line, mapped_errors
from composegen.errors import ComposegenError
from composegen.swarm_stack import (
    GPU_KIND,
    STACK_FILE,
    PlannedService,
    Row,
    StackPlan,
    StackStatus,
    advertised,
    check_stack_name,
    describe,
    env_value,
    fleet_node_of,
    gpu_list,
    gpu_mismatch,
    is_swarm_dir,
    load_stack,
    on_planned_node,
    planned_where,
)

NAMESPACE = "com.docker.stack.namespace"
CLI_TIMEOUT_S = 300.0
_STARTING = {"new", "allocated", "assigned", "accepted", "preparing", "ready", "starting"}
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z")

_FAILED_UPDATE = {"paused", "rollback_started", "rollback_paused", "rollback_completed"}
DEFAULT_HOST = "unix:///var/run/docker.sock"  # docker-py's and the CLI's without DOCKER_HOST

Report = Callable[[str, str, str], None]
NodeClient = Callable[[str], Any]


# --- the manager -----------------------------------------------------------------------------


def require_manager(client: Any) -> None:
    """A clear error unless this engine is a Swarm manager."""
    with mapped_errors("docker info"):
        swarm = client.info().get("Swarm") or {}
    if not swarm.get("ControlAvailable"):
        state = swarm.get("LocalNodeState") or "inactive"
        raise EngineError(
            f"this engine is not a Swarm manager (its Swarm state: {state})",
            "run `docker swarm init` here, or set DOCKER_HOST to a manager's engine",
        )


def _docker_cli(
    args: list[str],
    directory: Path,
    env: dict[str, str],
    what: str,
    timeout_s: float = CLI_TIMEOUT_S,
) -> str:
    exe = shutil.which("docker")
    if exe is None:
        raise EngineError(
            f"{what}: the Docker CLI (docker) is not on PATH",
            "install it (apt-get install docker.io, or docker-ce-cli)",
        )
    try:
        res = subprocess.run(
            [exe, *args],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, timeout_s),
            check=False,
        )
    except subprocess.TimeoutExpired:
        took = f"`docker {' '.join(args[:2])}` ran over {max(1.0, timeout_s):g}s"
        raise EngineError(f"{what}: {took}") from None
    except OSError as exc:
        raise EngineError(f"{what}: cannot run {exe}: {exc.strerror or exc}") from None
    if res.returncode != 0:
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if not ln.lower().startswith(("warning", "image "))]
        message = " / ".join(errors or lines)[:600] or f"exit status {res.returncode}"
        raise EngineError(f"{what}: {message}")
    return res.stdout


def _not_for_cli(key: str) -> bool:
    """.env keys the CLI never gets from the file: which engine it talks to (DOCKER_HOST,
    DOCKER_CONTEXT, DOCKER_CONFIG, TLS...) and what the dynamic loader injects (LD_*)."""
    return key.upper().startswith(("DOCKER_", "LD_"))


def cli_env(directory: Path | None = None) -> dict[str, str]:
    """The CLI's environment: DIR/.env's variables (not DOCKER_* / LD_*), the process
    environment winning (as in Compose), and DOCKER_HOST the engine docker-py talks to
    (connect(): the process's DOCKER_HOST, else the default socket) with no DOCKER_CONTEXT,
    which would otherwise let the CLI pick another engine than the one checked and watched."""
    from composegen.engine.compose import read_dotenv

    dotenv = read_dotenv(directory / ".env") if directory is not None else {}
    env = {k: v for k, v in dotenv.items() if not _not_for_cli(k)}
    env.update(os.environ)
    env["DOCKER_HOST"] = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    env.pop("DOCKER_CONTEXT", None)
    return env


def stack_deploy(
    directory: Path,
    project: str,
    say: Callable[[str], None],
    *,
    timeout_s: float = CLI_TIMEOUT_S,
) -> None:
    """`docker stack deploy --prune -c DIR/docker-stack.yml -- PROJECT`: Swarm updates only the
    services whose spec changed and removes those no longer in the file."""
    check_stack_name(project)
    args = ["stack", "deploy", "--prune", "-c", STACK_FILE, "--", project]
    what = f"docker stack deploy {project}"
    out = _docker_cli(args, directory, cli_env(directory), what, timeout_s)
    for line in out.splitlines():
        if line.strip():
            say(line.strip())


def stack_rm(
    directory: Path, project: str, say: Callable[[str], None], timeout_s: float = CLI_TIMEOUT_S
) -> None:
    check_stack_name(project)
    args = ["stack", "rm", "--", project]
    out = _docker_cli(args, directory, cli_env(), "docker stack rm", timeout_s)
    for line in out.splitlines():
        if line.strip():
            say(line.strip())


# --- reading Swarm ----------------------------------------------------------------------------


def _nodes(client: Any) -> dict[str, dict[str, Any]]:
    with mapped_errors("docker node ls"):
        return {n["ID"]: n for n in client.api.nodes()}


def stack_services(client: Any, project: str) -> dict[str, dict[str, Any]]:
    """The stack's services by name (label com.docker.stack.namespace=PROJECT)."""
    with mapped_errors("docker service ls"):
        found = client.api.services(filters={"label": f"{NAMESPACE}={project}"})
    return {s["Spec"]["Name"]: s for s in found}


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


def wait_converged(
    client: Any,
    directory: Path,
    project: str,
    *,
    timeout_s: float,
    report: Report,
    node_client: NodeClient | None = None,
    poll_s: float = 1.0,
) -> StackStatus:
    """Wait until every service of the stack file runs (= healthy) on its planned node with its
    planned GPU UUIDs, reporting each change of a service's state. A task of the current spec
    that runs on another node or holds other GPUs fails at once (Swarm will not move it);
    ComposegenError naming the services, their nodes and the tasks' errors at the timeout."""
    plan = load_stack(directory, project)
    engines = Engines(node_client)
    seen: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        status = stack_status(client, plan, engines=engines)
        for row in status.rows:
            shown = (row.state, row.detail)
            if row.mismatch:
                shown = ("misplaced", "; ".join(row.mismatch))
            if seen.get(row.service) != shown:
                seen[row.service] = shown
                report(row.service, *shown)
        if status.ok:
            return status
        _fail_on_failed_update(client, project, status)
        wrong = [r for r in status.rows if r.state == "running" and r.mismatch and r.current]
        if wrong:
            raise EngineError(
                f"{project}: not as planned: {'; '.join(describe(r) for r in wrong)}",
                "check the nodes' labels and generic resources (swarm/README.md), then "
                "deploy again",
            )
        if time.monotonic() >= deadline:
            break
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
    raise EngineError(
        f"{project}: not running as planned after {timeout_s:g}s: " + "; ".join(status.problems()),
        f"`docker service ps --no-trunc {project}_SERVICE` shows each task's history",
    )


def _fail_on_failed_update(client: Any, project: str, status: StackStatus) -> None:
    """Swarm rolled an update back (failure_action: rollback) or paused it: it will not
    converge by waiting. The error carries Swarm's UpdateStatus.Message."""
    failed = [r for r in status.rows if r.update in _FAILED_UPDATE]
    if not failed:
        return
    services = stack_services(client, project)
    parts = []
    for r in failed:
        info = (services.get(f"{project}_{r.service}") or {}).get("UpdateStatus") or {}
        message = str(info.get("Message") or "").strip()
        parts.append(f"{r.service}: update {r.update}" + (f": {message}" if message else ""))
    raise EngineError(
        f"{project}: Swarm did not apply the update: {'; '.join(parts)}",
        f"`docker service ps --no-trunc {project}_SERVICE` shows why its new tasks failed; "
        "fix the cause, then deploy again",
    )


# --- deploy as a whole ---------------------------------------------------------------------


def _cli_line(project: str, report: Report) -> Callable[[str], None]:
    """The CLI's lines as progress: `Creating service P_S` is service S's."""

    def say(line: str) -> None:
        words = line.split()
        if len(words) == 3 and words[1] == "service" and words[2].startswith(f"{project}_"):
            report(words[2][len(project) + 1 :], words[0].lower(), "")
        else:
            report("(stack)", "applying", line)

    return say


def deploy(
    client: Any,
    directory: Path,
    project: str,
    *,
    timeout_s: float,
    wait: bool,
    report: Report,
    node_client: NodeClient | None = None,
) -> StackStatus | None:
    """Check the engine is a manager, apply the stack, then (unless not `wait`) wait until it
    runs as planned; its status, or None without waiting. `timeout_s` covers both."""
    deadline = time.monotonic() + timeout_s
    require_manager(client)
    stack_deploy(directory, project, _cli_line(project, report), timeout_s=timeout_s)
    if not wait:
        return None
    left = max(1.0, deadline - time.monotonic())
    return wait_converged(
        client, directory, project, timeout_s=left, report=report, node_client=node_client
    )


__all__ = [
    "STACK_FILE",
    "Engines",
    "Row",
    "StackStatus",
    "cli_env",
    "deploy",
    "is_swarm_dir",
    "require_manager",
    "stack_deploy",
    "stack_services",
    "stack_status",
    "wait_converged",
]
