"""The small facade the CLI calls: inventory choice, profile fit, plan and render in one place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from composegen import profiles
from composegen.errors import BadInputError
from composegen.files import OutFile, WriteResult, check_tree, write_tree
from composegen.inventory import Inventory
from composegen.plan import PinBy, Plan, PlanError, PlanOptions, make_plan
from composegen.profiles import Overrides, Profile
from composegen.render import RenderOptions, render


@dataclass(frozen=True)
class Target:
    inventory: Inventory
    note: str  # where the inventory came from, in words


def choose_inventory(prof: Profile, inventory: str | None, reference: bool) -> Target:
    """--inventory FILE, --reference, or this host; a host with no GPU plans on the reference."""
    if inventory and reference:
        raise BadInputError("--inventory and --reference exclude each other", "pass only one")
    if inventory:
        from composegen.detection import load_inventory

        return Target(load_inventory(inventory), f"inventory file {inventory}")
    if reference:
        return Target(prof.reference_inventory(), f"reference hardware: {prof.reference.name}")
    from composegen.detection import detect_local

    local = detect_local(with_host=False)
    if not local.healthy_gpus:
        why = local.no_gpu_reason or "no healthy GPU"
        return Target(
            prof.reference_inventory(),
            f"reference hardware: {prof.reference.name} (this host has no usable GPU: {why})",
        )
    return Target(local, "this host")


@dataclass(frozen=True)
class Fit:
    name: str
    fits: str  # yes | degraded | no
    why: str
    score: tuple[int, int, int]
    description: str


def fit(prof: Profile, inv: Inventory) -> Fit:
    try:
        plan = make_plan(inv, prof)
    except PlanError as exc:
        return Fit(prof.name, "no", exc.message.split(": ", 1)[-1], (0, 0, 0), prof.description)
    on_gpu = sum(1 for i in plan.instances if i.device == "gpu")
    total = len(plan.instances) + len(plan.dropped)
    if on_gpu == total and not plan.dropped:
        used = sum(1 for g in plan.gpus if g.instances)
        return Fit(
            prof.name,
            "yes",
            f"{on_gpu} service(s) on {used} GPU(s)",
            (2, on_gpu, used),
            prof.description,
        )
    parts = []
    cpu = [i.name for i in plan.instances if i.device == "cpu"]
    if cpu:
        parts.append(f"on CPU: {', '.join(cpu)}")
    if plan.dropped:
        parts.append(f"dropped: {', '.join(n for n, _ in plan.dropped)}")
    return Fit(
        prof.name, "degraded", "; ".join(parts), (1, on_gpu, -len(plan.dropped)), prof.description
    )


def rank(inv: Inventory, extra_dirs: Sequence[str] = ()) -> list[Fit]:
    out = []
    for name in sorted(profiles.available(extra_dirs)):
        try:
            prof = profiles.load(name, extra_dirs)
        except BadInputError as exc:
            out.append(Fit(name, "no", f"invalid profile: {exc.message}", (-1, 0, 0), ""))
            continue
        out.append(fit(prof, inv))
    return sorted(out, key=lambda f: (-f.score[0], -f.score[1], -f.score[2], f.name))


@dataclass(frozen=True)
class Rendered:
    profile: Profile
    plan: Plan
    target: Target
    files: list[OutFile]


def build(
    name: str,
    *,
    extra_dirs: Sequence[str] = (),
    overrides: Overrides | None = None,
    inventory: str | None = None,
    reference: bool = False,
    pin_by: PinBy | None = None,
    bind: str = "127.0.0.1",
) -> Rendered:
    prof = profiles.load(name, extra_dirs, overrides)
    target = choose_inventory(prof, inventory, reference)
    plan = make_plan(target.inventory, prof, PlanOptions(pin_by=pin_by))
    files = render(prof, plan, RenderOptions(bind=bind, inventory_note=target.note))
    return Rendered(prof, plan, target, files)


def write(out_dir: Path, files: list[OutFile], force: bool, dry_run: bool) -> WriteResult:
    return write_tree(out_dir, files, force=force, dry_run=dry_run)


def check(out_dir: Path, files: list[OutFile]) -> list[str]:
    return check_tree(out_dir, files)
