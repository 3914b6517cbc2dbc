"""Failover orchestration: `--cpu`, `--gpu-failed`, `--auto` and `--restore` as functions.

The CLI and a long-running watcher call the same functions: each takes the loaded project and
an `Io` (a `say` callback for lines of text, a progress factory for per-service events, and a
way to get the Docker client, asked for only when something will change), holds the stack's
lock while it changes anything, re-reads the mode under that lock, and records the new mode.
Bad input raises BadInputError (exit 2), runtime failures ComposegenError (exit 1).

The parts with no engine in them are plain functions tested on their own: what a re-plan
changes (`plan_changes`), which files it changes (`changed_files`), which GPUs count as failed
(`auto_decision`, over failover_policy), and where GPU health comes from (`live_inventory`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from composegen import app
from composegen import failover_policy as policy
from composegen.engine import docker as eng
from composegen.engine import switch
from composegen.engine import up as engine_up
from composegen.engine.compose import Project, load_project
from composegen.engine.state import project_lock, read_mode, write_mode
from composegen.errors import BadInputError, ComposegenError
from composegen.files import OutFile, WriteResult, write_atomic, write_tree
from composegen.inventory import Inventory
from composegen.plan import Plan

if TYPE_CHECKING:
    from composegen.engine.swarm_failover import SwarmStack

Say = Callable[[str], None]
ProgressFactory = Callable[[list[str], str], AbstractContextManager[engine_up.Report]]
Action = Literal["cpu", "gpu-failed", "auto", "restore"]


@contextmanager
def no_progress(services: list[str], title: str) -> Iterator[engine_up.Report]:
    del services, title
    yield lambda service, state, detail: None


def _connect() -> Any:
    from composegen.engine import docker as eng

    return eng.connect()


@dataclass(frozen=True)
class Io:
    say: Say
    progress: ProgressFactory = no_progress
    connect: Callable[[], Any] = _connect


@dataclass(frozen=True)
class Request:
    action: Action
    gpu_ids: str | None = None  # --gpu-failed
    inventory: str | None = None  # --auto / --restore: GPU health from this file
    dry_run: bool = False
    force: bool = False  # overwrite files edited by hand that the re-plan must change


@dataclass(frozen=True)
class Outcome:
    action: str  # cpu | gpu-failed | restore | none
    changed: bool
    lines: tuple[str, ...] = field(default_factory=tuple)


# --- pure parts -------------------------------------------------------------------------------


def _where(gpus: tuple[int, ...]) -> str:
    return f"GPU {','.join(map(str, gpus))}" if gpus else "CPU"


def plan_changes(before: Plan, after: Plan) -> list[str]:
    """`name: GPU 0 -> GPU 5`, `name: new -> GPU 1`, `name: removed`, in the new plan's order."""
    old = {i.name: i for i in before.instances}
    changes = []
    for inst in after.instances:
        prev = old.pop(inst.name, None)
        if prev is None or prev.gpus != inst.gpus or prev.device != inst.device:
            was = "new" if prev is None else _where(prev.gpus)
            changes.append(f"{inst.name}: {was} -> {_where(inst.gpus)}")
    changes += [f"{name}: removed" for name in old]
    return changes


def changed_files(before: list[OutFile], after: list[OutFile]) -> list[OutFile]:
    """The files a re-plan really changes. The others (`.env` above all, the documented place
    for tunables) are left as they are on disk, hand edits included."""
    old = {f.path: f for f in before}
    return [f for f in after if old.get(f.path) != f]


def write_changed(
    directory: Path,
    before: list[OutFile],
    after: list[OutFile],
    force: bool,
    dry_run: bool = False,
) -> WriteResult:
    """Write only what the re-plan changes; a hand edit of such a file stops (exit 2, nothing
    written) unless `force`, which keeps a .bak. With `dry_run`, only that check."""
    return write_tree(directory, changed_files(before, after), force=force, dry_run=dry_run)


def _render_inputs_inventory(path: str) -> Inventory | None:
    """The inventory inside a `.composegen/render.json` passed as --inventory, else None."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.loads(fh.read(32 * 1024 * 1024))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("schema") != "composegen/render-inputs/v1":
        return None
    return Inventory.from_dict(data.get("inventory"), where=f"{path}: inventory")


def live_inventory(
    directory: Path, inventory: str | None, recorded: Inventory, say: Say, *, default: bool
) -> Inventory:
    """Where GPU health comes from: --inventory FILE (a stack's render.json is accepted too),
    else NVML / nvidia-smi. With `default` (restore) and no GPU visible at all (no NVML, no
    driver: a stack rendered for reference hardware), the stack's recorded inventory is taken
    as healthy, and `say` says so."""
    from composegen.detect.sources import detect_local, load_inventory

    if inventory:
        inside = _render_inputs_inventory(inventory)
        if inside is not None:
            say(f"GPU health from the inventory recorded in {inventory}")
            return inside
        return load_inventory(inventory)
    live = detect_local(with_host=False)
    if live.gpus or not default:
        return live
    say(
        f"no GPU visible on this host ({live.no_gpu_reason or 'no GPU found'}): taking the "
        f"stack's recorded inventory ({directory / app.STATE_FILE}) as healthy; pass "
        "--inventory FILE to check against another"
    )
    return recorded


def auto_decision(recorded: Inventory, done: set[int], live: Inventory) -> tuple[bool, str | None]:
    """(to CPU?, GPU ids to fail over): CPU when no GPU works at all, else the stack's GPUs
    that are lost or gone and not already failed over."""
    if not live.gpus:
        return True, None
    failed = [i for i in policy.failed_from_live(recorded, live) if i not in done]
    return False, (",".join(map(str, failed)) if failed else None)


# --- the actions ------------------------------------------------------------------------------


def _mode(project: Project) -> str:
    return str(read_mode(project.directory, project.name).get("mode", "gpu"))


# A swarm stack (a SwarmStack: the CLI makes one where engine.swarm.is_swarm_dir says DIR is
# one) is handed to engine/swarm_failover.py by each entry point.


def to_cpu(
    project: Project | SwarmStack, io: Io, *, dry_run: bool = False, force: bool = False
) -> Outcome:
    """Move the running stack to its CPU variant, make before break (see engine/switch.py).
    `force`: a swarm stack's re-rendered files overwrite hand edits (one host writes none)."""
    from composegen.engine import swarm_failover as sw

    if isinstance(project, sw.SwarmStack):
        return sw.to_cpu(project, io, dry_run=dry_run, force=force)
    cpu = switch.cpu_project(project.directory, project.name)
    if _mode(project) == "cpu-fallback":
        io.say(f"{project.name} is already in cpu-fallback mode")
        return Outcome("none", False)
    if dry_run:
        lines = [f"would {st.what}: {st.detail}" for st in switch.plan_cpu(project, cpu)]
        for line in lines:
            io.say(line)
        return Outcome("cpu", False, tuple(lines))
    client = io.connect()
    names = [s.name for s in cpu.services] + ["gateway"]
    names += [s.name for s in project.services if s.gpus]
    with (
        project_lock(project.directory, project.name, "fallback --cpu"),
        io.progress(names, f"composegen fallback --cpu {project.name}") as report,
    ):
        if _mode(project) == "cpu-fallback":  # another run switched while we waited
            io.say(f"{project.name} is already in cpu-fallback mode")
            return Outcome("none", False)
        try:
            stopped = switch.to_cpu(client, project, report)
        except BaseException as exc:
            # once the gateway routes to the CPU variants (and the GPU routes are saved), the
            # stack is in cpu-fallback whatever fails after: record it, so `status` and
            # `fallback --restore` see the truth
            if not _routes_to_cpu(project.directory):
                raise
            write_mode(
                project.directory,
                project.name,
                "cpu-fallback",
                "composegen fallback --cpu (some GPU services did not stop)",
            )
            if isinstance(exc, eng.ParallelError):
                for who, why in exc.failures:
                    report(who, "failed", eng.first_line(why))
                raise _stops_failed(project, len(cpu.services), exc) from None
            raise
        write_mode(project.directory, project.name, "cpu-fallback", "composegen fallback --cpu")
    line = (
        f"{project.name}: on CPU ({len(cpu.services)} service(s)); stopped {len(stopped)} GPU "
        "service(s); `composegen fallback --restore` returns to the GPUs"
    )
    io.say(line)
    return Outcome("cpu", True, (line,))


def _routes_to_cpu(directory: Path) -> bool:
    """nginx.conf holds the CPU routes (switch.reload_nginx puts the old file back when the
    gateway refuses the new one, so this is what the gateway serves)."""
    try:
        conf = (directory / "nginx" / "nginx.conf").read_text(encoding="utf-8")
        cpu = (directory / "fallback" / "nginx.cpu.conf").read_text(encoding="utf-8")
    except OSError:
        return False
    return conf == cpu


def _stops_failed(project: Project, on_cpu: int, exc: eng.ParallelError) -> ComposegenError:
    failed = "; ".join(f"{who}: {eng.first_line(why)}" for who, why in exc.failures)
    return ComposegenError(
        f"{project.name}: on CPU ({on_cpu} service(s)) and recorded as cpu-fallback, but "
        f"{len(exc.failures)} GPU service(s) did not stop: {failed}",
        "the gateway no longer routes to them; stop them with `docker stop`, or run "
        "`composegen fallback --restore` to return to the GPUs",
    )


def gpus_failed(
    project: Project | SwarmStack,
    ids_text: str,
    io: Io,
    *,
    dry_run: bool = False,
    force: bool = False,
) -> Outcome:
    """Re-plan without these GPUs; write only the files that change; reload the gateway first,
    then converge (only the affected containers change)."""
    from composegen.engine import swarm_failover as sw

    if isinstance(project, sw.SwarmStack):
        return sw.gpus_failed(project, ids_text, io, dry_run=dry_run, force=force)
    if _mode(project) == "cpu-fallback":
        raise BadInputError(
            f"{project.name} runs on CPU (fallback --cpu)",
            "run `composegen fallback --restore` first",
        )
    inputs = app.load_inputs(project.directory)
    ids = policy.parse_gpu_ids(ids_text, inputs.inventory)
    before = app.rebuild(inputs)
    after_inputs = replace(inputs, failed=(*inputs.failed, ids))
    rebuilt = app.rebuild(after_inputs)
    changes = plan_changes(before.plan, rebuilt.plan)
    # a hand edit in the way is bad input: said before the engine or the lock is touched
    write_changed(project.directory, before.files, rebuilt.files, force, dry_run=True)
    if dry_run:
        lines = [f"would move {c}" for c in changes or ["nothing changes"]]
        for line in lines:
            io.say(line)
        return Outcome("gpu-failed", False, tuple(lines))
    client = io.connect()
    with (
        project_lock(project.directory, project.name, "fallback --gpu-failed"),
        io.progress(
            [i.name for i in rebuilt.plan.instances] + ["gateway"],
            f"composegen fallback --gpu-failed {ids_text}",
        ) as report,
    ):
        if _mode(project) == "cpu-fallback":
            raise BadInputError(
                f"{project.name} runs on CPU (fallback --cpu)",
                "run `composegen fallback --restore` first",
            )
        write_changed(project.directory, before.files, rebuilt.files, force)
        conf_changed = any(
            f.path == "nginx/nginx.conf" for f in changed_files(before.files, rebuilt.files)
        )
        switch.apply_rerender(client, project.directory, project.name, report, conf_changed)
        app.save_inputs(project.directory, after_inputs)
        write_mode(
            project.directory,
            project.name,
            "gpu-failover",
            f"GPUs {', '.join(map(str, ids))} failed",
        )
    lines = [f"moved {c}" for c in changes]
    for line in lines:
        io.say(line)
    return Outcome("gpu-failed", True, tuple(lines))


def auto(
    project: Project,
    io: Io,
    *,
    inventory: str | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> Outcome:
    """Ask NVML (or --inventory FILE) which of the stack's GPUs failed and act on them; with
    no working GPU at all, move to CPU."""
    inputs = app.load_inputs(project.directory)
    live = live_inventory(project.directory, inventory, inputs.inventory, io.say, default=False)
    done = {i for step in inputs.failed for i in step}
    cpu, ids = auto_decision(inputs.inventory, done, live)
    if cpu:
        io.say(f"no working NVML/GPU ({live.no_gpu_reason}): moving to CPU")
        return to_cpu(project, io, dry_run=dry_run)
    if ids is None:
        io.say("all the stack's GPUs are healthy: nothing to do")
        return Outcome("none", False)
    io.say(f"GPUs reported failed: {ids.replace(',', ', ')}")
    return gpus_failed(project, ids, io, dry_run=dry_run, force=force)


def restore(
    project: Project | SwarmStack,
    io: Io,
    *,
    inventory: str | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> Outcome:
    """Back to the GPU plan once its GPUs are healthy: from the CPU variant make before break
    (switch.restore_from_cpu), from a GPU failover by re-rendering what changed and
    converging with GPU pinning verified."""
    from composegen.engine import swarm_failover as sw

    if isinstance(project, sw.SwarmStack):
        return sw.restore(project, io, inventory=inventory, dry_run=dry_run, force=force)
    directory = project.directory
    inputs = app.load_inputs(directory)
    live = live_inventory(directory, inventory, inputs.inventory, io.say, default=True)
    if not live.gpus:
        raise ComposegenError(
            f"cannot confirm the GPUs are healthy: {live.no_gpu_reason or 'no GPU found'}",
            "pass --inventory FILE (from `composegen detect --save`) that shows them healthy",
        )
    restored = replace(inputs, failed=())
    target = app.rebuild(restored)
    needed = {i for inst in target.plan.instances for i in inst.gpus}
    sick = [i for i in policy.failed_from_live(inputs.inventory, live) if i in needed]
    if sick:
        raise ComposegenError(
            f"GPUs {', '.join(map(str, sick))} are still not healthy",
            "wait for them, or keep the fallback",
        )
    mode = _mode(project)
    if mode == "gpu" and not inputs.failed:
        io.say(f"{project.name} already runs its GPU plan")
        return Outcome("none", False)
    if inputs.failed and mode != "cpu-fallback":  # (on CPU, nginx.conf holds the CPU routes)
        write_changed(directory, app.rebuild(inputs).files, target.files, force, dry_run=True)
    if dry_run:
        n = len(target.plan.instances)
        line = f"would restore {project.name} to its GPU plan ({n} service(s))"
        io.say(line)
        return Outcome("restore", False, (line,))
    client = io.connect()
    with (
        project_lock(directory, project.name, "fallback --restore"),
        io.progress(
            [i.name for i in target.plan.instances] + ["gateway"],
            f"composegen fallback --restore {project.name}",
        ) as report,
    ):
        mode = _mode(project)
        before = app.rebuild(inputs).files if inputs.failed else None
        if mode == "cpu-fallback":
            _restore_from_cpu(client, project, report, before, target.files, force)
        else:
            _restore_from_failover(client, project, report, before, target.files, force)
        if inputs.failed:
            app.save_inputs(directory, restored)
        write_mode(directory, project.name, "gpu", "composegen fallback --restore")
    line = f"{project.name}: back on its GPU plan"
    io.say(line)
    return Outcome("restore", True, (line,))


def _restore_from_failover(
    client: Any,
    project: Project,
    report: engine_up.Report,
    before: list[OutFile] | None,
    after: list[OutFile],
    force: bool,
) -> None:
    """Back from a GPU failover: the files the restored plan changes are written; a service
    that returns to a GPU of its own moves make before break while the gateway keeps the
    routes it serves (switch.move_ahead), then the rest converges and the gateway takes the
    restored routes."""
    directory = project.directory
    conf = directory / "nginx" / "nginx.conf"
    serving = conf.read_text(encoding="utf-8")
    if before is not None:
        write_changed(directory, before, after, force)
    restored = conf.read_text(encoding="utf-8")
    main = load_project(directory / "docker-compose.yml", project.name)
    if restored != serving:
        write_atomic(conf, serving)  # (until the moves are done: what the gateway serves)
    try:
        switch.move_ahead(client, main, report)
    finally:
        if restored != serving:
            write_atomic(conf, restored)
    engine_up.up(client, main, report=report)
    if restored != serving:
        switch.reload_nginx(client, project.name, directory, restored)


def _restore_from_cpu(
    client: Any,
    project: Project,
    report: engine_up.Report,
    before: list[OutFile] | None,
    after: list[OutFile],
    force: bool,
) -> None:
    directory = project.directory
    conf = directory / "nginx" / "nginx.conf"
    cpu_conf = conf.read_text(encoding="utf-8")
    gpu_conf = switch.saved_gpu_conf(directory)
    if gpu_conf is None:  # no saved copy: the rendered one
        rendered = {f.path: f.text for f in (before or after)}
        gpu_conf = rendered["nginx/nginx.conf"]
    if before is not None:
        # a failover happened before the switch to CPU: write what the restored plan changes
        # (the GPU configuration back in place first, so the hand-edit check compares with
        # what composegen wrote), then the CPU routes stay on disk until the swap
        write_atomic(conf, gpu_conf)
        try:
            write_changed(directory, before, after, force)
            gpu_conf = conf.read_text(encoding="utf-8")
        finally:
            write_atomic(conf, cpu_conf)
    main = load_project(directory / "docker-compose.yml", project.name)
    switch.restore_from_cpu(client, main, report, gpu_conf)


def run(project: Project | SwarmStack, request: Request, io: Io) -> Outcome:
    """One fallback request, as `composegen fallback` takes it."""
    from composegen.engine import swarm_failover as sw

    if request.action == "cpu":
        return to_cpu(project, io, dry_run=request.dry_run, force=request.force)
    if request.action == "gpu-failed":
        if not request.gpu_ids:
            raise BadInputError("--gpu-failed needs GPU ids", "e.g. --gpu-failed 0,3")
        return gpus_failed(
            project, request.gpu_ids, io, dry_run=request.dry_run, force=request.force
        )
    if request.action == "auto":
        if isinstance(project, sw.SwarmStack):
            return sw.run(project, "auto", io)
        return auto(
            project, io, inventory=request.inventory, dry_run=request.dry_run, force=request.force
        )
    return restore(
        project, io, inventory=request.inventory, dry_run=request.dry_run, force=request.force
    )
