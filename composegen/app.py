"""The small facade the CLI calls: inventory choice, profile fit, plan and render in one place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from composegen import profiles
from composegen.errors import BadInputError
from composegen.files import OutFile, WriteResult, check_tree, write_tree
from composegen.inventory import Inventory
from composegen.plan import PinBy, Plan, PlanError, PlanOptions, make_plan
from composegen.profiles import Overrides, Profile
from composegen.render import RenderOptions, engine_takes_start_interval, render
from composegen.selection import Candidate, Closeness

if TYPE_CHECKING:
    from composegen.fleet import Fleet


@dataclass(frozen=True)
class Target:
    inventory: Inventory
    note: str  # where the inventory came from, in words
    fleet: Fleet | None = None  # --fleet FILE: the nodes; inventory is then the merged one


def check_fleet_options(fleet: str | None, inventory: str | None, reference: bool) -> None:
    """--inventory and --reference name one host, so they exclude --fleet."""
    if fleet is not None and (inventory or reference):
        given = "--inventory" if inventory else "--reference"
        raise BadInputError(
            f"--fleet and {given} exclude each other",
            "a fleet file names each node's inventory; pass only one",
        )


def fleet_target(path: str) -> Target:
    """--fleet FILE: the fleet as the planner's one inventory, and its nodes."""
    from composegen.fleet import load_fleet

    fleet = load_fleet(path)
    gpus = len(fleet.inventory().gpus)
    return Target(
        fleet.inventory(),
        f"fleet file {path} ({len(fleet.nodes)} nodes, {gpus} GPUs)",
        fleet,
    )


def choose_inventory(
    prof: Profile, inventory: str | None, reference: bool, local: Inventory | None = None
) -> Target:
    """--inventory FILE, --reference, or this host; a host with no GPU plans on the reference.

    The one rule `plan`, `render` and `profiles` share: this host's GPUs when it has a healthy
    one, else the profile's reference hardware, and the Target's note says which. `local` is
    this host's inventory when the caller already detected it (`profiles` detects once).
    """
    if inventory and reference:
        raise BadInputError("--inventory and --reference exclude each other", "pass only one")
    if inventory:
        from composegen.detect.sources import load_inventory

        return Target(load_inventory(inventory), f"inventory file {inventory}")
    if reference:
        return Target(prof.reference_inventory(), f"reference hardware: {prof.reference.name}")
    if local is None:
        from composegen.detect.sources import detect_local

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
    hardware: str = ""  # what the result is for: "this host", "reference hardware: ...", ...
    closeness: Closeness | None = None  # the hardware against the profile's reference


def fit(prof: Profile, inv: Inventory, hardware: str = "", fleet: Fleet | None = None) -> Fit:
    from dataclasses import replace

    from composegen.selection import closeness

    return replace(_fit(prof, inv, hardware, fleet), closeness=closeness(prof.reference, inv))


def _fit(prof: Profile, inv: Inventory, hardware: str = "", fleet: Fleet | None = None) -> Fit:
    from composegen.fleet import plan_fleet

    try:
        plan = plan_fleet(fleet, prof) if fleet is not None else make_plan(inv, prof)
    except PlanError as exc:
        return Fit(
            prof.name,
            "no",
            exc.message.split(": ", 1)[-1],
            (0, 0, 0),
            prof.description,
            hardware,
        )
    on_gpu = sum(1 for i in plan.instances if i.device == "gpu")
    total = len(plan.instances) + len(plan.dropped)
    smaller = [
        f"{i.name} ({', '.join(m.name for m in i.models)})" for i in plan.instances if i.alternative
    ]
    if on_gpu == total and not plan.dropped:
        used = sum(1 for g in plan.gpus if g.instances)
        return Fit(
            prof.name,
            "yes",
            f"{on_gpu} service(s) on {used} GPU(s)"
            + (f"; smaller models: {', '.join(smaller)}" if smaller else ""),
            (2, on_gpu, used),
            prof.description,
            hardware,
        )
    parts = []
    cpu = [i.name for i in plan.instances if i.device == "cpu"]
    if cpu:
        parts.append(f"on CPU: {', '.join(cpu)}")
    if plan.dropped:
        parts.append(f"dropped: {', '.join(n for n, _ in plan.dropped)}")
    if smaller:
        parts.append(f"smaller models: {', '.join(smaller)}")
    return Fit(
        prof.name,
        "degraded",
        "; ".join(parts),
        (1, on_gpu, -len(plan.dropped)),
        prof.description,
        hardware,
    )


def rank(
    inv: Inventory,
    extra_dirs: Sequence[str] = (),
    *,
    this_host: bool = False,
    hardware: str = "",
    fleet: Fleet | None = None,
) -> list[Fit]:
    """Every profile rated on `inv`, best first (selection.ranked: fit, then closeness to the
    profile's reference hardware). With this_host (inv is this host's own inventory), a host
    with no usable GPU rates each profile on its reference hardware, as `plan` and `render` do
    (choose_inventory), and each Fit's hardware says so."""
    out = []
    for name in sorted(profiles.available(extra_dirs)):
        try:
            prof = profiles.load(name, extra_dirs)
        except BadInputError as exc:
            out.append(Fit(name, "no", f"invalid profile: {exc.message}", (-1, 0, 0), ""))
            continue
        if this_host:
            target = choose_inventory(prof, None, False, local=inv)
            out.append(fit(prof, target.inventory, target.note))
        else:
            out.append(fit(prof, inv, hardware or inv.source, fleet))
    from composegen import selection

    order = selection.ranked([_candidate(f) for f in out])
    by_name = {f.name: f for f in out}
    return [by_name[c.name] for c in order]


def _candidate(f: Fit) -> Candidate:
    from composegen.selection import Candidate

    return Candidate(f.name, f.fits, f.why, f.closeness)


def auto_profile(
    extra_dirs: Sequence[str] = (),
    inventory: str | None = None,
    reference: bool = False,
    local: Inventory | None = None,
    fleet: str | None = None,
) -> tuple[str, str, Inventory | None]:
    """`--profile auto` (or none): (the profile that suits the hardware best, why in one line,
    this host's inventory when it was detected, for build to reuse).

    The hardware is --inventory FILE, else this host. A host with no usable GPU has nothing
    to choose by (every profile fits its own reference hardware): that is bad input, and the
    error lists the profiles to pass with --profile."""
    from composegen import selection

    names = sorted(profiles.available(extra_dirs))
    hint = f"pass --profile NAME (one of: {', '.join(names)})"
    if reference:
        raise BadInputError(
            "--reference needs a profile: whose reference hardware?",
            f"{hint}; it is then planned on that profile's reference hardware",
        )
    nodes: Fleet | None = None
    if fleet is not None:
        check_fleet_options(fleet, inventory, reference)
        target = fleet_target(fleet)
        inv, hardware, nodes = target.inventory, f"fleet file {fleet}", target.fleet
    elif inventory:
        from composegen.detect.sources import load_inventory

        inv, hardware = load_inventory(inventory), f"inventory file {inventory}"
    else:
        if local is None:
            from composegen.detect.sources import detect_local

            local = detect_local(with_host=False)
        inv, hardware = local, "this host"
    if not inv.healthy_gpus:
        why = inv.no_gpu_reason or "no healthy GPU"
        raise BadInputError(
            f"no profile chosen: {hardware} has no usable GPU ({why}), so no profile suits it "
            "better than another",
            f"{hint}; with no GPU it is planned on that profile's reference hardware",
        )
    try:
        choice = selection.choose(
            [_candidate(f) for f in rank(inv, extra_dirs, hardware=hardware, fleet=nodes)],
            hardware,
        )
    except selection.NothingFits as exc:
        raise BadInputError(f"no profile fits {hardware}: {exc.reasons}", hint) from None
    return choice.name, choice.line, (None if inventory or fleet else local)


@dataclass(frozen=True)
class Rendered:
    profile: Profile
    plan: Plan
    target: Target
    files: list[OutFile]
    inputs: RenderInputs | None = None


def build(
    name: str,
    *,
    extra_dirs: Sequence[str] = (),
    overrides: Overrides | None = None,
    inventory: str | None = None,
    reference: bool = False,
    pin_by: PinBy | None = None,
    bind: str = "127.0.0.1",
    ignore_used: bool = False,
    previous_dir: Path | None = None,
    local: Inventory | None = None,
    fleet: str | None = None,
) -> Rendered:
    """Load, choose the inventory, plan, render. previous_dir: the directory being re-rendered;
    when the inventory is this host, the memory its stack was planned to hold is not counted
    as held by others (a running stack's own memory), so re-rendering it gives the same plan."""
    if fleet is not None:
        check_fleet_options(fleet, inventory, reference)
        return _build_fleet(name, fleet, extra_dirs, overrides, pin_by, ignore_used)
    prof = profiles.load(name, extra_dirs, overrides)
    target = choose_inventory(prof, inventory, reference, local)
    own_notes: list[str] = []
    if previous_dir is not None and not ignore_used and target.note == "this host":
        target = Target(_without_own_use(target.inventory, previous_dir, own_notes), target.note)
    plan = make_plan(target.inventory, prof, PlanOptions(pin_by=pin_by, count_used=not ignore_used))
    if own_notes:
        from dataclasses import replace

        plan = replace(plan, warnings=(*own_notes, *plan.warnings))  # not in STACK.md
    files = render(
        prof,
        plan,
        RenderOptions(bind=bind, start_interval=engine_takes_start_interval(target.inventory)),
    )
    recorded, dirs, kept = _recorded_names(name, extra_dirs, overrides)
    inputs = RenderInputs(
        profile=recorded,
        profiles_dirs=dirs,
        overrides=kept,
        inventory=target.inventory,
        pin_by=pin_by,
        bind=bind,
        ignore_used=ignore_used,
        api_key=prof.gateway.api_key,
    )
    return Rendered(prof, plan, target, files, inputs)


def _recorded_names(
    name: str, extra_dirs: Sequence[str], overrides: Overrides | None
) -> tuple[str, tuple[str, ...], Overrides]:
    """What render.json records of the profile and its overrides: absolute paths (a later
    fallback runs from anywhere), and no API key (that lives in .env, mode 0600)."""
    ov = overrides or Overrides()
    return (
        name if not Path(name).suffix else str(Path(name).resolve()),
        tuple(str(Path(d).resolve()) for d in extra_dirs),
        Overrides(
            tuple(s for s in ov.sets if not _sets_api_key(s)),
            tuple(str(Path(v).resolve()) for v in ov.values_files),
            ov.images,
        ),
    )


def _build_fleet(
    name: str,
    path: str,
    extra_dirs: Sequence[str],
    overrides: Overrides | None,
    pin_by: PinBy | None,
    ignore_used: bool,
) -> Rendered:
    """The plan over a fleet file. No compose files: a fleet runs as a Swarm stack
    (`render --fleet F --target swarm`), not as one host's Compose project."""
    from composegen.fleet import plan_fleet

    prof = profiles.load(name, extra_dirs, overrides)
    target = fleet_target(path)
    assert target.fleet is not None
    plan = plan_fleet(target.fleet, prof, PlanOptions(pin_by=pin_by, count_used=not ignore_used))
    return Rendered(prof, plan, target, [])


def _without_own_use(inv: Inventory, out_dir: Path, notes: list[str]) -> Inventory:
    """This host's inventory less what the stack last rendered in out_dir was planned to hold
    on each GPU (matched by UUID): NVML cannot tell which process belongs to which stack, so
    the stack's own share of memory.used is its plan's, at most what is used."""
    from dataclasses import replace

    if not (out_dir / STATE_FILE).is_file():
        return inv
    try:
        inputs = load_inputs(out_dir)
        before = rebuild(inputs).plan
    except BadInputError:
        return inv  # unreadable or no longer valid: nothing known of its memory
    uuid_of = {g.index: g.uuid for g in inputs.inventory.gpus if g.uuid}
    own = {uuid_of[u.index]: u.used_mib for u in before.gpus if u.used_mib and u.index in uuid_of}
    gpus = []
    for g in inv.gpus:
        mine = min(own.get(g.uuid or "", 0), g.memory_used_mib or 0)
        if mine:
            notes.append(
                f"GPU {g.index}: {mine} of its {g.memory_used_mib} MiB in use taken as this "
                f"stack's own (its plan in {out_dir}), not as other processes'"
            )
            g = replace(g, memory_used_mib=(g.memory_used_mib or 0) - mine)
        gpus.append(g)
    return replace(inv, gpus=tuple(gpus))


def write(out_dir: Path, files: list[OutFile], force: bool, dry_run: bool) -> WriteResult:
    return write_tree(out_dir, files, force=force, dry_run=dry_run)


def check(out_dir: Path, files: list[OutFile]) -> list[str]:
    return check_tree(out_dir, files)


# --- what a render was made from, so that fallback can re-plan it -----------------------------

STATE_FILE = ".composegen/render.json"
ENV_FILE = ".env"


def _sets_api_key(text: str) -> bool:
    """`--set gateway.api_key=...`: a secret, never recorded in render.json."""
    key = text.partition("=")[0]
    return [p.strip() for p in key.strip().split(".")] == ["gateway", "api_key"]


def _key_from_env(out_dir: Path) -> str | None:
    """The gateway's API key as .env (mode 0600) holds it: where the key lives after render."""
    from composegen.render import API_KEY_VAR

    try:
        text = (out_dir / ENV_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    found = None
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name.strip() == API_KEY_VAR:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            found = value
    return found


@dataclass(frozen=True)
class RenderInputs:
    profile: str
    profiles_dirs: tuple[str, ...]
    overrides: Overrides
    inventory: Inventory
    pin_by: PinBy | None
    bind: str
    failed: tuple[tuple[int, ...], ...] = ()  # failover history, oldest first
    # --ignore-used: plan as if no other process held GPU memory. A render.json written before
    # memory in use was counted has no such key and is read as True, so it re-plans the same.
    ignore_used: bool = False
    # The gateway's API key. Kept in memory only: render.json (mode 0644) records that a key
    # is set, and load_inputs reads the key back from .env (mode 0600).
    api_key: str | None = field(default=None, repr=False)
    # `render --target swarm`: the fleet, each node's inventory embedded (`inventory` is then
    # the fleet's merged one: GPUs numbered across nodes), and the services a fallback updates
    # start-first (SwarmOptions.start_first), so a rebuild gives the files the fallback wrote
    fleet: Fleet | None = None
    start_first: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return "compose" if self.fleet is None else "swarm"

    def to_json(self) -> str:
        import json

        swarm: dict[str, object] = {}
        if self.fleet is not None:
            from composegen.swarm_inputs import fleet_to_dict

            swarm = {
                "target": "swarm",
                "fleet": fleet_to_dict(self.fleet),
                "start_first": list(self.start_first),
            }
        return (
            json.dumps(
                {
                    "schema": "composegen/render-inputs/v1",
                    "profile": self.profile,
                    "profiles_dirs": list(self.profiles_dirs),
                    "sets": list(self.overrides.sets),
                    "values_files": list(self.overrides.values_files),
                    "images": list(self.overrides.images),
                    "inventory": self.inventory.to_dict(),
                    "pin_by": self.pin_by,
                    "bind": self.bind,
                    "failed": [list(f) for f in self.failed],
                    "ignore_used": self.ignore_used,
                    "api_key": "set" if self.api_key else None,
                    **swarm,
                },
                indent=2,
            )
            + "\n"
        )


def save_inputs(out_dir: Path, inputs: RenderInputs) -> None:
    from composegen.files import write_atomic

    (out_dir / ".composegen").mkdir(parents=True, exist_ok=True)
    path = out_dir / STATE_FILE
    text = inputs.to_json()
    try:
        if path.read_text(encoding="utf-8") == text:
            return  # an unchanged re-render touches nothing
    except OSError:
        pass
    write_atomic(path, text)


def load_inputs(out_dir: Path) -> RenderInputs:
    import json

    path = out_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pin = data["pin_by"]
        for key in ("profiles_dirs", "sets", "values_files", "images"):
            if not isinstance(data[key], list) or not all(isinstance(v, str) for v in data[key]):
                raise TypeError(f"{key} must be a list of strings")
        if not isinstance(data["profile"], str) or not isinstance(data["bind"], str):
            raise TypeError("profile and bind must be strings")
        # a render.json written before keys were kept out of it may hold one in its sets
        old_keys = [s.partition("=")[2].strip() for s in data["sets"] if _sets_api_key(s)]
        fleet = None
        if data.get("target", "compose") == "swarm":
            from composegen.swarm_inputs import fleet_from_dict

            fleet = fleet_from_dict(data["fleet"], f"{path}: fleet")
        elif data.get("target", "compose") != "compose":
            raise ValueError(f"target {data['target']!r} is neither compose nor swarm")
        api_key = None
        if data.get("api_key") == "set" or old_keys:
            from composegen.swarm_inputs import key_from_auth

            found = key_from_auth(out_dir) if fleet else _key_from_env(out_dir)
            api_key = found or (old_keys[-1] if old_keys else None)
            if not api_key and fleet:
                raise BadInputError(
                    f"{path}: the stack has a gateway API key, but {out_dir / 'nginx/auth.conf'} "
                    "does not hold it",
                    "render again with --set gateway.api_key=KEY",
                )
            if not api_key:
                raise BadInputError(
                    f"{path}: the stack has a gateway API key, but {out_dir / ENV_FILE} has "
                    "no COMPOSEGEN_API_KEY",
                    "put the key back in .env, or render again with --set gateway.api_key=KEY",
                )
        return RenderInputs(
            profile=str(data["profile"]),
            profiles_dirs=tuple(data["profiles_dirs"]),
            overrides=Overrides(
                tuple(s for s in data["sets"] if not _sets_api_key(s)),
                tuple(data["values_files"]),
                tuple(data["images"]),
            ),
            inventory=Inventory.from_dict(data["inventory"], where=str(path)),
            pin_by="uuid" if pin == "uuid" else ("index" if pin == "index" else None),
            bind=str(data["bind"]),
            failed=tuple(tuple(int(i) for i in f) for f in data.get("failed", [])),
            ignore_used=bool(data.get("ignore_used", True)),
            api_key=api_key,
            fleet=fleet,
            start_first=tuple(str(n) for n in data.get("start_first", [])) if fleet else (),
        )
    except FileNotFoundError:
        raise BadInputError(
            f"{path}: not found: this directory was not rendered by composegen",
            "render it with `composegen render --profile NAME -o DIR` first",
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise BadInputError(
            f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:120]})",
            "render the stack again",
        ) from None


def _mark_failed(inv: Inventory, failed: tuple[int, ...]) -> Inventory:
    from dataclasses import replace

    return replace(
        inv,
        gpus=tuple(
            replace(g, health="lost", health_reason="marked failed by composegen fallback")
            if g.index in failed
            else g
            for g in inv.gpus
        ),
    )


def rebuild(inputs: RenderInputs, *, cpu_form: bool = False) -> Rendered:
    """The stack as the inputs say: the original plan, then each failover step on top of it.
    cpu_form (a swarm stack only): each GPU service in its CPU form, as `fallback --cpu`
    deploys it."""
    overrides = inputs.overrides
    if inputs.api_key:
        from dataclasses import replace

        from composegen.render import API_KEY_RE, API_KEY_VAR

        if not API_KEY_RE.fullmatch(inputs.api_key):  # never echo a secret in an error
            raise BadInputError(
                f"{ENV_FILE}: {API_KEY_VAR} is not a valid API key "
                "(16-256 characters of A-Z a-z 0-9 . _ ~ + / = -)",
                "put the key back as rendered, or render again with --set gateway.api_key=KEY",
            )
        # quoted: a key of digits must stay a string for YAML
        overrides = replace(
            overrides, sets=(*overrides.sets, f"gateway.api_key='{inputs.api_key}'")
        )
    prof = profiles.load(inputs.profile, inputs.profiles_dirs, overrides)
    if inputs.fleet is not None:
        from composegen.swarm_inputs import rebuild_swarm

        return rebuild_swarm(inputs, prof, cpu_form)
    if cpu_form:
        raise ValueError("cpu_form: a one-host stack's CPU variant is fallback/, rendered always")
    count_used = not inputs.ignore_used
    plan = make_plan(
        inputs.inventory, prof, PlanOptions(pin_by=inputs.pin_by, count_used=count_used)
    )
    failed: tuple[int, ...] = ()
    for step in inputs.failed:
        failed = tuple(sorted(set(failed) | set(step)))
        plan = make_plan(
            _mark_failed(inputs.inventory, failed),
            prof,
            PlanOptions(pin_by=plan.pin_by, previous=plan, count_used=count_used),
        )
    files = render(
        prof,
        plan,
        RenderOptions(
            bind=inputs.bind, start_interval=engine_takes_start_interval(inputs.inventory)
        ),
    )
    return Rendered(prof, plan, Target(inputs.inventory, "recorded inventory"), files)


# --- render --target swarm --------------------------------------------------------------------


def check_swarm_options(
    target: str | None,
    fleet: str | None,
    profile_name: str | None,
    inventory: str | None,
    reference: bool,
    bind: str,
) -> str:
    """The render target the options ask for ("compose" or "swarm"), or BadInputError: a
    swarm stack is planned over a fleet file, and the one-host options do not apply to it."""
    chosen = target or ("swarm" if fleet else "compose")
    if chosen == "compose":
        if fleet:
            raise BadInputError(
                "--fleet renders a Docker Swarm stack, not one host's Compose project",
                "render --fleet FILE --target swarm",
            )
        return chosen
    if not fleet:
        raise BadInputError(
            "--target swarm needs --fleet FILE: a swarm stack places every service on a node",
            "a fleet file is `nodes: [{name: gpu-a, inventory: a.json}, ...]`",
        )
    if inventory or reference:
        given = "--inventory" if inventory else "--reference"
        raise BadInputError(
            f"--fleet and {given} exclude each other",
            "a fleet file names each node's inventory; pass only one",
        )
    if bind != "127.0.0.1":
        raise BadInputError(
            f"--bind {bind}: a swarm stack publishes the gateway on its node's addresses",
            "leave out --bind with --target swarm; keep the port private with a firewall",
        )
    if profile_name in (None, "auto"):
        raise BadInputError(
            "--target swarm: name the profile (-P NAME); a fleet does not choose one yet",
            "composegen profiles lists them",
        )
    return chosen


def build_swarm(
    name: str,
    fleet_path: str,
    *,
    extra_dirs: Sequence[str] = (),
    overrides: Overrides | None = None,
    pin_by: PinBy | None = None,
    ignore_used: bool = False,
) -> Rendered:
    """Load the profile and the fleet file, plan over the fleet, render the swarm stack."""
    from composegen.fleet import load_fleet, plan_fleet
    from composegen.render_swarm import render_swarm

    prof = profiles.load(name, extra_dirs, overrides)
    fleet = load_fleet(fleet_path)
    plan = plan_fleet(fleet, prof, PlanOptions(pin_by=pin_by, count_used=not ignore_used))
    files = render_swarm(prof, plan, fleet.nodes)
    note = f"fleet file {fleet_path} ({len(fleet.nodes)} nodes)"
    recorded, dirs, kept = _recorded_names(name, extra_dirs, overrides)
    inputs = RenderInputs(
        profile=recorded,
        profiles_dirs=dirs,
        overrides=kept,
        inventory=fleet.inventory(),
        pin_by=pin_by,
        bind="0.0.0.0",  # a swarm publishes the gateway on its node's addresses
        ignore_used=ignore_used,
        api_key=prof.gateway.api_key,
        fleet=fleet,
    )
    return Rendered(prof, plan, Target(fleet.inventory(), note, fleet), files, inputs)
