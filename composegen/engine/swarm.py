"""A rendered swarm stack on a Swarm: deploy it, wait until it runs as planned (what that means
and how it is read: engine/swarm_status.py; removing it: engine/swarm_undeploy.py).

The stack is applied with the Docker CLI's `docker stack deploy` (it handles the stack's
configs, secrets, networks and volumes as users know them), with DIR/.env's variables in its
environment (the CLI does not read .env; DOCKER_* and LD_* are never taken from it) and
DOCKER_HOST set to the engine the SDK talks to, so that both reach the same manager. A
rolled back or paused update fails the wait at once, with Swarm's message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from composegen.engine.docker import EngineError, mapped_errors
from composegen.engine.swarm_status import (
    NAMESPACE,
    Engines,
    NodeClient,
    Row,
    StackStatus,
    describe,
    require_deployed,
    stack_services,
    stack_status,
)
from composegen.swarm_stack import (
    STACK_FILE,
    check_stack_name,
    is_swarm_dir,
    load_stack,
)

CLI_TIMEOUT_S = 300.0
DEPLOYED_FILE = ".composegen/deployed-stack"  # the name `deploy` gave the stack, one line

_FAILED_UPDATE = {"paused", "rollback_started", "rollback_paused", "rollback_completed"}
DEFAULT_HOST = "unix:///var/run/docker.sock"  # docker-py's and the CLI's without DOCKER_HOST

Report = Callable[[str, str, str], None]


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


def record_deployed(directory: Path, project: str) -> None:
    """DIR/.composegen/deployed-stack: the stack's name as deployed (`deploy -p NAME` too), so
    that a later `fallback` without -p updates that stack rather than deploy another."""
    from composegen.files import write_atomic

    path = directory / DEPLOYED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, project + "\n")


def deployed_name(directory: Path) -> str | None:
    """The name record_deployed wrote, checked as a stack name; None when there is none."""
    try:
        text = (directory / DEPLOYED_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return check_stack_name(text, str(directory / DEPLOYED_FILE)) if text else None


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
    record_deployed(directory, project)
    if not wait:
        return None
    left = max(1.0, round(deadline - time.monotonic(), 1))
    return wait_converged(
        client, directory, project, timeout_s=left, report=report, node_client=node_client
    )


__all__ = [
    "NAMESPACE",
    "STACK_FILE",
    "Engines",
    "NodeClient",
    "Row",
    "StackStatus",
    "cli_env",
    "deploy",
    "deployed_name",
    "is_swarm_dir",
    "record_deployed",
    "require_deployed",
    "require_manager",
    "stack_deploy",
    "stack_services",
    "stack_status",
    "wait_converged",
]
