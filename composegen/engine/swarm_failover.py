"""`fallback --gpu-failed / --cpu / --restore` on a swarm stack (`render --target swarm`).

A swarm stack changes by re-rendering docker-stack.yml and deploying it again: Swarm updates
only the services whose spec changed, each by its own `deploy.update_config`. So a fallback is
a re-plan (composegen.app.rebuild over the fleet recorded in render.json), the files it changes
written (hand edits refused unless --force, as on one host), then engine.swarm's stack_deploy
and wait_converged. Names and ports stay, so the gateway's configuration stays and nginx
(`resolve`) follows each service to its new task.

Make before break: a changed service is updated `start-first` (the new task, on its new GPU or
on CPU, runs and is healthy before Swarm stops the old one) wherever its node has room for the
new GPU reservation while every old task still holds its own: during a start-first update
Swarm counts the old task's generic resources as taken until it stops. The room is what the
node advertises (node-generic-resources: the GPUs of its inventory, a failed one included:
Swarm knows nothing of GPU health, and the pin is NVIDIA_VISIBLE_DEVICES, not the name Swarm
assigns; only GPUs with a valid UUID are advertised: swarm_nodes.advertised). Where there is
no room (e.g. a tensor-parallel group moving within a full node), that service is updated
stop-first, and the output says so. Once Swarm converged, the stack is deployed again with
every GPU service stop-first (only update_config changes: no task restarts), so that a later
update of a moved service cannot start a second task on its pinned GPU.

The step is computed under the project's lock and recorded `applied: false` until Swarm
converged: a rerun after a failure applies the recorded files again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from composegen import app
from composegen import failover_policy as policy
from composegen.engine import swarm as engine
from composegen.engine.failover import Io, Outcome, changed_files, write_changed
from composegen.engine.state import project_lock, read_mode, write_mode
from composegen.errors import BadInputError, ComposegenError
from composegen.files import OutFile
from composegen.fleet import Fleet
from composegen.plan import Plan
from composegen.render_swarm import STACK_FILE, gpu_reservations
from composegen.swarm_inputs import describe, fleet_ids

WAIT_S = 600.0  # a start-first update waits for the new task's health check


@dataclass(frozen=True)
class SwarmStack:
    directory: Path
    name: str  # the stack (project) name: -p NAME, else the profile's name, as render prints


def stack_at(directory: str | None, project_name: str | None) -> SwarmStack | None:
    """The swarm stack in DIR (engine.swarm.is_swarm_dir), or None for a one-host Compose
    project; its name: -p NAME, else the one `composegen deploy` recorded (its -p too), else
    the stack file's."""
    d = Path(directory or ".")
    if not engine.is_swarm_dir(d):
        return None
    from composegen.swarm_stack import load_stack

    name = project_name or engine.deployed_name(d)
    return SwarmStack(d.resolve(), load_stack(d, name).project)


# --- pure parts -------------------------------------------------------------------------------


def stack_services(files: Iterable[OutFile]) -> dict[str, Any]:
    """The services of the docker-stack.yml among rendered files, each config and secret it
    uses named as Swarm names it (a new content is a new name: the service is updated)."""
    text = next(f.text for f in files if f.path == STACK_FILE)
    data = yaml.safe_load(text)
    services: dict[str, Any] = data["services"]
    for kind in ("configs", "secrets"):
        named = {k: v.get("name", k) for k, v in (data.get(kind) or {}).items()}
        for block in services.values():
            for ref in block.get(kind) or ():
                ref["name"] = named.get(ref.get("source"), ref.get("source"))
    return services


def _spec(block: Any) -> Any:
    """A service as Swarm compares it, less its update order (not part of the task)."""
    deploy = {k: v for k, v in (block.get("deploy") or {}).items() if k != "update_config"}
    return {**block, "deploy": deploy}


def changed_services(before: list[OutFile], after: list[OutFile]) -> list[str]:
    """The services whose spec the re-render changes, in the new stack file's order."""
    old, new = stack_services(before), stack_services(after)
    out = [n for n, b in new.items() if n not in old or _spec(old[n]) != _spec(b)]
    return out + [n for n in old if n not in new]


def advertised_per_node(fleet: Fleet) -> dict[str, int]:
    """The NVIDIA-GPU count each node advertises to Swarm, as swarm/<node>/daemon.json lists
    them (swarm_nodes.advertised: the GPUs of its inventory with a valid UUID). A failed GPU
    stays advertised (Swarm knows nothing of GPU health) and so still counts as room for a
    start-first update."""
    from composegen.swarm_nodes import advertised

    return {n.name: len(advertised(n)) for n in fleet.nodes}


def update_orders(
    before: Plan, after: Plan, changed: Iterable[str], room: Mapping[str, int]
) -> dict[str, str]:
    """start-first or stop-first for each changed service (removed: not in the new stack).

    While Swarm updates, every old task holds its GPU reservation until it stops; a new task
    starts beside it only if its node has that many more GPUs free. Swarm updates the services
    of one deploy in parallel, so each start-first service's new reservation is counted
    against what is left after all the others'."""
    held = dict(room)
    old = gpu_reservations(before)
    for inst in before.instances:
        held[str(inst.node)] = held.get(str(inst.node), 0) - old.get(inst.name, 0)
    need = gpu_reservations(after)
    new = {i.name: i for i in after.instances}
    out: dict[str, str] = {}
    for name in changed:
        if name == "gateway":  # its routes stay as first planned: only a new key changes it
            out[name] = "stop-first"
            continue
        now = new.get(name)
        if now is None:
            out[name] = "removed"
            continue
        want = need.get(name, 0)
        node = str(now.node)
        if want <= held.get(node, 0):
            out[name] = "start-first"
            held[node] = held.get(node, 0) - want
        else:
            out[name] = "stop-first"
    return out


# --- the actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    before: app.Rendered
    after: app.Rendered
    inputs: app.RenderInputs  # what render.json records once the step is written
    orders: dict[str, str]
    mode: str  # the mode the step leads to
    why: str
    cpu: bool = False  # the CPU form is rendered
    again: bool = False  # the recorded step applied once more


Planned = _Step | str  # a step, or why there is nothing to do


def _step(
    before: app.Rendered, inputs: app.RenderInputs, mode: str, why: str, cpu: bool = False
) -> _Step:
    """The re-render `inputs` ask for, its changed services and their update order."""
    assert inputs.fleet is not None
    trial = app.rebuild(inputs, cpu_form=cpu)
    changed = changed_services(before.files, trial.files)
    orders = update_orders(before.plan, trial.plan, changed, advertised_per_node(inputs.fleet))
    first = set(inputs.start_first) - set(changed)
    first |= {n for n, o in orders.items() if o == "start-first"}
    final = replace(inputs, start_first=tuple(sorted(first)))
    after = trial if cpu or final == inputs else app.rebuild(final)
    return _Step(before, after, inputs if cpu else final, orders, mode, why, cpu)


def _again(stack: SwarmStack, inputs: app.RenderInputs, state: Mapping[str, Any]) -> _Step:
    """The recorded step once more (its last apply failed or was interrupted): the files as
    render.json gives them, deployed and waited for again."""
    mode = str(state.get("mode", "gpu"))
    cpu = mode == "cpu-fallback"
    now = app.rebuild(inputs, cpu_form=cpu)
    why = str(state.get("why") or f"fallback ({mode})")
    return _Step(now, now, inputs, {}, mode, why, cpu, again=True)


def _state(stack: SwarmStack) -> dict[str, Any]:
    """The recorded mode; `applied` false while its step is written but not yet converged."""
    return read_mode(stack.directory, stack.name)


def _mode(stack: SwarmStack) -> str:
    return str(_state(stack).get("mode", "gpu"))


def _applied(state: Mapping[str, Any]) -> bool:
    return state.get("applied", True) is not False


def _record(stack: SwarmStack, step: _Step, applied: bool) -> None:
    import json

    from composegen.engine.state import _state_dir
    from composegen.files import write_atomic

    write_mode(stack.directory, stack.name, step.mode, step.why)
    data = {**read_mode(stack.directory, stack.name), "applied": applied}
    write_atomic(_state_dir(stack.directory) / f"{stack.name}.state.json", json.dumps(data) + "\n")


def _load(stack: SwarmStack) -> app.RenderInputs:
    inputs = app.load_inputs(stack.directory)
    if inputs.fleet is None:
        raise BadInputError(
            f"{stack.directory / app.STATE_FILE}: not rendered for Docker Swarm, but "
            f"{stack.directory} holds {STACK_FILE} and no docker-compose.yml",
            "render it again with `composegen render --fleet FILE --target swarm -o DIR`",
        )
    return inputs


def _deploy(stack: SwarmStack, client: Any, io: Io, report: Any) -> None:
    try:
        engine.stack_deploy(stack.directory, stack.name, io.say)
    except ComposegenError as exc:
        raise ComposegenError(
            f"{stack.name}: the re-planned stack is written but not applied: {exc.message}",
            f"fix that, then rerun the fallback (or `composegen deploy -C {stack.directory}`)",
        ) from None
    engine.wait_converged(client, stack.directory, stack.name, timeout_s=WAIT_S, report=report)


def _apply(stack: SwarmStack, step: _Step, client: Any, io: Io, force: bool, title: str) -> None:
    """Write what changes, record it (not applied), deploy, wait; then the same files with no
    service start-first (only update_config changes: Swarm restarts no task), deployed again,
    so that a later update of a moved service (an image bump) cannot start a second task on
    its pinned GPU beside the old one; recorded applied only then. A rerun after a failure
    finds `applied: false` and applies the recorded files again."""
    names = list(stack_services(step.after.files))
    with io.progress(names, f"composegen {title} {stack.name}") as report:
        write_changed(stack.directory, step.before.files, step.after.files, force)
        app.save_inputs(stack.directory, step.inputs)
        _record(stack, step, applied=False)
        _deploy(stack, client, io, report)
        settled = replace(step.inputs, start_first=())
        final = app.rebuild(settled, cpu_form=step.cpu)
        if settled != step.inputs or final.files != step.after.files:
            write_changed(stack.directory, step.after.files, final.files, force)
            app.save_inputs(stack.directory, settled)
            _deploy(stack, client, io, report)
        _record(stack, step, applied=True)


def _run(
    stack: SwarmStack, io: Io, action: str, title: str, dry_run: bool, force: bool, plan: Any
) -> Outcome:
    """`plan()` (inputs loaded and the step computed under the project's lock, so that no
    concurrent step is lost); hand edits checked and the stack checked deployed before
    anything is written; `moving` lines before the change, `moved` once Swarm converged."""
    if dry_run:
        return _dry_run(stack, plan(), io, action, force)
    client = io.connect()
    with project_lock(stack.directory, stack.name, title):
        step = plan()
        if isinstance(step, str):
            io.say(step)
            return Outcome("none", False)
        write_changed(stack.directory, step.before.files, step.after.files, force, dry_run=True)
        engine.require_deployed(client, stack.name, stack.directory)
        lines = _lines(stack, step)
        for line in lines:
            io.say(line if line.startswith(" ") else f"moving {line}")
        _apply(stack, step, client, io, force, title)
    done = [ln for ln in lines if not ln.startswith(" ")]
    for line in done:
        io.say(f"moved {line}" if step.orders else f"{stack.name}: applied")
    return Outcome(action, True, tuple(lines))


def _lines(stack: SwarmStack, step: _Step) -> list[str]:
    lines = describe(step.after.profile, step.before.plan, step.after.plan, step.orders, stack.name)
    if step.again:
        return [f"{stack.name}: applying the recorded {step.mode} step again (its last apply "
                "did not finish)"]  # fmt: skip
    return lines or ["no service changes"]


def _dry_run(stack: SwarmStack, step: Planned, io: Io, action: str, force: bool) -> Outcome:
    if isinstance(step, str):
        io.say(step)
        return Outcome("none", False)
    write_changed(stack.directory, step.before.files, step.after.files, force, dry_run=True)
    files = [f.path for f in changed_files(step.before.files, step.after.files)]
    out = [f"would move {ln.strip()}" for ln in _lines(stack, step)]
    out.append(f"would write {', '.join(files) or 'no file'}, then deploy {stack.name}")
    for line in out:
        io.say(line)
    return Outcome(action, False, tuple(out))


def gpus_failed(
    stack: SwarmStack, ids_text: str, io: Io, *, dry_run: bool = False, force: bool = False
) -> Outcome:
    """Re-plan without these GPUs (NODE:INDEX or UUIDs; a fleet index on a one-node fleet);
    only the services that change are updated, start-first where their node has room. GPUs
    already marked failed add no step (a rerun after a failure applies the recorded one)."""

    def plan() -> Planned:
        state = _state(stack)
        if state.get("mode") == "cpu-fallback":
            raise BadInputError(
                f"{stack.name} runs on CPU (fallback --cpu)",
                "run `composegen fallback --restore` first",
            )
        inputs = _load(stack)
        assert inputs.fleet is not None
        ids = policy.parse_gpu_ids(fleet_ids(ids_text, inputs.fleet), inputs.inventory)
        if set(ids) <= {i for step in inputs.failed for i in step}:
            if _applied(state):
                return f"{stack.name}: GPUs {', '.join(map(str, ids))} are already failed over"
            return _again(stack, inputs, state)
        after = replace(inputs, failed=(*inputs.failed, ids))
        why = f"GPUs {', '.join(map(str, ids))} failed"
        return _step(app.rebuild(inputs), after, "gpu-failover", why)

    return _run(stack, io, "gpu-failed", "fallback --gpu-failed", dry_run, force, plan)


def to_cpu(stack: SwarmStack, io: Io, *, dry_run: bool = False, force: bool = False) -> Outcome:
    """Every GPU service to its CPU form (the profile's cpu: variant, no GPU reservation,
    NVIDIA_VISIBLE_DEVICES=void) on its own node, start-first, names and volumes kept."""

    def plan() -> Planned:
        state = _state(stack)
        inputs = _load(stack)
        if state.get("mode") == "cpu-fallback":
            if _applied(state):
                return f"{stack.name} is already in cpu-fallback mode"
            return _again(stack, inputs, state)
        why = "composegen fallback --cpu"
        return _step(app.rebuild(inputs), inputs, "cpu-fallback", why, cpu=True)

    return _run(stack, io, "cpu", "fallback --cpu", dry_run, force, plan)


def restore(
    stack: SwarmStack,
    io: Io,
    *,
    inventory: str | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> Outcome:
    """Back to the recorded GPU plan (no GPU failed), start-first where there is room."""
    if inventory:
        raise BadInputError(
            "--inventory: a swarm stack's GPUs are on its nodes, not in one inventory file",
            "leave it out: --restore returns to the plan recorded over the fleet",
        )

    def plan() -> Planned:
        state = _state(stack)
        inputs = _load(stack)
        mode = str(state.get("mode", "gpu"))
        if mode == "gpu" and not inputs.failed:
            if _applied(state):
                return f"{stack.name} already runs its GPU plan"
            return _again(stack, inputs, state)
        io.say(
            "GPU health is not read on a swarm stack (the GPUs are on the nodes): restoring "
            "the recorded plan on every GPU of the fleet"
        )
        before = app.rebuild(inputs, cpu_form=mode == "cpu-fallback")
        why = "composegen fallback --restore"
        return _step(before, replace(inputs, failed=()), "gpu", why)

    return _run(stack, io, "restore", "fallback --restore", dry_run, force, plan)


def run(stack: SwarmStack, action: str, io: Io) -> Outcome:
    """The actions a swarm stack has no form of (`--auto` reads this host's NVML)."""
    raise BadInputError(
        f"--{action} reads this host's GPUs; a swarm stack's GPUs are on its nodes",
        "name the failed GPUs: --gpu-failed UUID (or NODE:INDEX)",
    )
