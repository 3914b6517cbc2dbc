"""Command line of a swarm stack: deploy, undeploy, and `status` in a stack's directory
(composegen.engine.swarm). Registers on cli.py's group; parses options and prints only."""

from __future__ import annotations

import sys
from typing import Any

import click

from composegen.cli import CONTEXT, _console, _json, _one_line, cli
from composegen.errors import BadInputError, ComposegenError

SWARM_DIR = click.option(
    "-C",
    "--directory",
    "directory",
    metavar="DIR",
    default=".",
    show_default=True,
    help="Directory holding docker-stack.yml (render --fleet F --target swarm -o DIR).",
)
STACK_NAME = click.option(
    "-p",
    "--project-name",
    "project_name",
    metavar="NAME",
    default=None,
    help="Stack name (default: the profile's, as render records it in docker-stack.yml).",
)


def _swarm_plan(directory: str, project_name: str | None, undeploying: bool = False) -> Any:
    """The stack DIR plans. For undeploy: its name must be recorded or given (-p), never
    taken from the directory's name; with -p, a missing or broken stack file is no error."""
    from pathlib import Path

    from composegen.swarm_stack import StackPlan, check_stack_name, load_stack

    try:
        return load_stack(Path(directory), project_name, name_from_dir=not undeploying)
    except BadInputError:
        if not undeploying or not project_name:
            raise
        return StackPlan(Path(directory), check_stack_name(project_name), (), {})


@cli.command(context_settings=CONTEXT)
@SWARM_DIR
@STACK_NAME
@click.option(
    "--timeout",
    default="10m",
    show_default=True,
    metavar="DURATION",
    help="Give up when the stack does not run as planned after this long (30s, 10m, 1h); it "
    "covers `docker stack deploy` itself.",
)
@click.option("--no-wait", is_flag=True, help="Apply the stack and return; do not wait.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON event per line.")
def deploy(
    directory: str, project_name: str | None, timeout: str, no_wait: bool, as_json: bool
) -> None:
    """Deploy a swarm stack (docker-stack.yml) on the Swarm this engine manages, and wait until
    every task runs as planned.

    Applies the stack with `docker stack deploy --prune` (DIR/.env's variables in its
    environment, except DOCKER_* and LD_*; DOCKER_HOST set to the engine composegen talks to),
    then waits until each service's update completed and its task runs the current spec (=
    healthy) on its planned node, holding its planned GPU UUIDs: read from the task container
    on the node's own engine when the fleet file gives the node's `engine` (fails when that
    engine cannot tell), else from the task's spec, and checked against the node's NVIDIA-GPU
    generic resources and what Swarm assigned. A rolled back or paused update fails at once.
    Shows what Swarm does meanwhile (rejected, pending for resources, failed with the task's
    error). DOCKER_HOST selects the manager.
    """
    import time
    from pathlib import Path

    from composegen.engine import docker as eng
    from composegen.engine import swarm as sw
    from composegen.engine.progress import Progress
    from composegen.engine.state import project_lock
    from composegen.watch.settings import parse_duration

    timeout_s = parse_duration(timeout, "--timeout")
    plan = _swarm_plan(directory, project_name)
    client = eng.connect()
    where = Path(directory)
    names = [s.name for s in plan.services]
    with (
        project_lock(where, plan.project, "deploy"),
        Progress(names, as_json, f"composegen deploy {plan.project}") as prog,
    ):
        try:
            status = sw.deploy(
                client, where, plan.project, timeout_s=timeout_s, wait=not no_wait,
                report=prog.event,
            )  # fmt: skip
        except ComposegenError as exc:
            prog.emit({"event": "failed", "error": exc.one_line()})
            raise
    if as_json:
        prog.emit({"event": "done", **(status.to_dict() if status else {"project": plan.project})})
        return
    if status is None:
        click.echo(f"{plan.project}: applied {len(names)} service(s); not waited")
        return
    seconds = time.monotonic() - prog.t0
    click.echo(f"{plan.project}: {len(names)} service(s) running as planned in {seconds:.1f}s")
    for r in status.rows:
        gpus = f"GPU {','.join(r.gpus)}" if r.gpus else "no GPU"
        click.echo(f"  {r.service} on {r.node}: {gpus} ({r.gpus_from})")


@cli.command(context_settings=CONTEXT)
@SWARM_DIR
@STACK_NAME
@click.option(
    "--timeout",
    default="5m",
    show_default=True,
    metavar="DURATION",
    help="Give up when the stack is not gone after this long.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON event per line.")
def undeploy(directory: str, project_name: str | None, timeout: str, as_json: bool) -> None:
    """Remove a swarm stack (`docker stack rm`) and wait until its services, its task
    containers (on this engine and on the node engines the fleet file gave), its networks,
    configs and secrets are gone. The stack's name: -p NAME, else the one render recorded in
    DIR (never the directory's name). Named volumes are kept on every node: they hold the
    models (remove them with `docker volume rm` on each node)."""
    from pathlib import Path

    from composegen.engine import docker as eng
    from composegen.engine import swarm as sw
    from composegen.engine import swarm_undeploy
    from composegen.engine.progress import Progress
    from composegen.engine.state import project_lock
    from composegen.watch.settings import parse_duration

    timeout_s = parse_duration(timeout, "--timeout")
    plan = _swarm_plan(directory, project_name, undeploying=True)
    client = eng.connect()
    sw.require_manager(client)
    with (
        project_lock(Path(directory), plan.project, "undeploy"),
        Progress([plan.project], as_json, f"composegen undeploy {plan.project}") as prog,
    ):
        removed = swarm_undeploy.undeploy(
            client, Path(directory), plan.project, timeout_s=timeout_s, report=prog.event
        )
    if as_json:
        prog.emit(
            {
                "event": "done",
                "project": plan.project,
                "services": removed.services,
                "containers": removed.containers,
                "networks": removed.networks,
                "configs": removed.configs,
                "secrets": removed.secrets,
                "unreachable": removed.unreachable,
                "volumes": "kept",
            }
        )
        return
    click.echo(
        f"{plan.project}: removed {removed.services} service(s), {removed.containers} task "
        f"container(s), {removed.networks} network(s), {removed.configs} config(s), "
        f"{removed.secrets} secret(s); named volumes kept"
    )
    if removed.unreachable:
        click.echo(f"  not checked: {'; '.join(removed.unreachable)}")


def swarm_status(directory: str, project_name: str | None, as_json: bool) -> None:
    """`status` on a swarm stack: exit 0 when every task runs as planned, 1 otherwise."""
    from pathlib import Path

    from composegen.engine import docker as eng
    from composegen.engine import swarm as sw
    from composegen.engine.state import read_mode

    plan = _swarm_plan(directory, project_name)
    mode = read_mode(Path(directory), plan.project)
    client = eng.connect()
    sw.require_manager(client)
    status = sw.stack_status(client, plan)
    if as_json:
        click.echo(_json({**status.to_dict(), "mode": mode}), nl=False)
        if not status.ok:
            sys.exit(1)
        return
    from rich.table import Table

    table = Table(
        title=f"{plan.project}: swarm stack, mode {mode.get('mode')}"
        + (f" since {mode['since']} ({mode.get('why')})" if mode.get("since") else "")
    )
    for col in ("service", "planned node", "node", "state", "GPUs planned", "GPUs held"):
        table.add_column(col, overflow="fold")
    table.add_column("mismatch", overflow="fold")
    for r in status.rows:
        state = r.state + (f": {r.detail}" if r.detail and r.state != "running" else "")
        if r.state == "running" and not r.current:
            state += " (previous spec)"
        if r.update not in ("", "completed"):
            state += f", update {r.update}"
        table.add_row(
            r.service,
            r.planned_node,
            r.node or "-",
            _one_line(state),
            ",".join(r.planned_gpus) or "-",
            ",".join(r.gpus) or "-",
            _one_line("; ".join(r.mismatch)) or "-",
        )
    _console().print(table)
    if not status.ok:
        raise ComposegenError(
            f"{plan.project} does not run as planned: {'; '.join(status.problems())}",
            "`composegen deploy` converges it; `docker service ps --no-trunc` shows why",
        )
