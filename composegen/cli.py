"""Command line: parse options, call one function, print. No logic lives here.

Heavy libraries (rich, docker, jinja2, httpx, jsonschema, pynvml) are imported inside the
commands that need them, so `composegen --help` starts fast.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from composegen import __version__
from composegen.errors import BadInputError, ComposegenError

if TYPE_CHECKING:
    from composegen.plan import PinBy

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("COMPOSEGEN_DEBUG", "") not in ("", "0")


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output (scripts, logs, tests) has no terminal width; do not wrap it at 80 columns.
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, soft_wrap=False, width=width)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="composegen")
@click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
def cli(debug: bool) -> None:
    """Generate, start and rescue GPU-pinned Docker Compose stacks for self-hosted LLM services.

    \b
    Typical flow:
      composegen detect                      what GPUs, CPU, RAM and Docker engine this host has
      composegen profiles                    which profiles fit this host, and why not
      composegen plan                        the profile that suits this host, and its GPU map
      composegen render -o stack             write that stack into stack/
      composegen render -P rag-a100 -o stack   a profile of your choice (-P/--profile)
      composegen up -C stack                 start it; logs, exec, status, down as in Compose

    On a host with no GPU, plan and render need --profile and use its reference hardware.
    -p is the project name and -f the compose file, as in Compose.

    Exit codes: 0 success, 1 runtime failure, 2 bad input.
    """


@cli.command(context_settings=CONTEXT)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the inventory as JSON (schema composegen/inventory/v1) instead of a table.",
)
@click.option(
    "--save",
    "save_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Also write the inventory JSON to FILE (atomically), for planning elsewhere.",
)
@click.option(
    "--from",
    "from_path",
    metavar="FILE",
    type=str,
    help="Read a saved inventory instead of probing this host: composegen inventory "
    "JSON, `nvidia-smi -q -x` XML, `nvidia-smi -q` text, or `nvidia-smi "
    "--query-gpu=... --format=csv` (header optional). Detected from the content.",
)
@click.option("--no-docker", is_flag=True, help="Do not probe the Docker engine.")
@click.option(
    "--nvml-timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up on NVML initialisation after this long.",
)
def detect(
    as_json: bool,
    save_path: str | None,
    from_path: str | None,
    no_docker: bool,
    nvml_timeout: float,
) -> None:
    """Inventory the NVIDIA GPUs (through NVML, else nvidia-smi), CPU, RAM and Docker engine.

    With no NVIDIA GPU, it still exits 0, says why (no driver / no devices) and shows the host.
    A GPU that fails its queries (e.g. fallen off the bus) is listed as unhealthy with the reason.

    \b
    To prepare a file on another host:
      nvidia-smi -q -x > gpus.xml            or   composegen detect --save inventory.json
    """
    from composegen.detect import sources as detection

    if from_path is not None:
        inv = detection.load_inventory(from_path)
    else:
        inv = detection.detect_local(nvml_timeout_s=nvml_timeout, with_docker=not no_docker)
    if save_path:
        from composegen.files import write_atomic

        write_atomic(save_path, inv.to_json())
    if as_json:
        click.echo(inv.to_json(), nl=False)
        return
    from composegen.show import print_inventory

    console = _console()
    print_inventory(inv, console)
    if save_path:
        console.print(f"saved to {save_path}", highlight=False)
    if inv.gpus:
        _print_fitting(inv, console)


def _print_fitting(inv: Any, console: Any) -> None:
    from composegen import app

    fits = [f for f in app.rank(inv) if f.fits != "no"]
    if not fits:
        console.print("profiles that fit: none (see `composegen profiles`)", highlight=False)
        return
    console.print("profiles that fit, best first:", highlight=False)
    for f in fits:
        console.print(f"  {f.name}: {f.fits} ({f.why})", highlight=False)


PROFILES_DIR = click.option(
    "--profiles-dir",
    "profiles_dirs",
    multiple=True,
    metavar="DIR",
    help="Also look for profiles (NAME.yaml) in DIR; repeatable. Also: COMPOSEGEN_PROFILES_PATH.",
)
INVENTORY = click.option(
    "--inventory",
    metavar="FILE",
    help="Plan for the host described by FILE (anything `detect --from` reads), not this one.",
)
FLEET = click.option(
    "--fleet",
    metavar="FILE",
    help="Plan over the GPU hosts of a fleet file (nodes: [{name, inventory}, ...]), not one host.",
)
PROFILE = [
    click.option(
        "--profile",
        "-P",
        "profile_name",
        default=None,
        metavar="NAME",
        help="Profile name (see `composegen profiles`) or a path to a profile YAML. Omitted or "
        "`auto`: the profile that suits this host (or --inventory FILE) best, and why.",
    ),
    # -p is the project name everywhere (as in Compose); here it only says so
    click.option("-p", "project_flag", default=None, hidden=True, metavar="NAME"),
]


def _profile_opts(func: Any) -> Any:
    for opt in reversed(PROFILE):
        func = opt(func)
    return func


def _pick_profile(
    profile_name: str | None,
    project_flag: str | None,
    profiles_dirs: tuple[str, ...],
    inventory: str | None,
    reference: bool,
    fleet: str | None = None,
) -> tuple[str, Any]:
    """(the profile to use, this host's inventory when auto-selection detected it)."""
    if project_flag is not None:
        command = click.get_current_context().info_name
        raise BadInputError(
            f"-p is the project name (as in Compose), and `{command}` has no project",
            f"the profile is -P/--profile: composegen {command} -P {project_flag}",
        )
    from composegen import app
    from composegen.selection import AUTO

    app.check_fleet_options(fleet, inventory, reference)
    if profile_name not in (None, AUTO):
        return profile_name, None
    name, why, local = app.auto_profile(profiles_dirs, inventory, reference, fleet=fleet)
    click.echo(f"composegen: {why}", err=True)
    return name, local


PIN_BY = click.option(
    "--pin-by",
    type=click.Choice(["uuid", "index"]),
    default=None,
    help="Pin GPUs by UUID (default when the inventory has unique UUIDs) or index.",
)
IGNORE_USED = click.option(
    "--ignore-used",
    is_flag=True,
    help="Plan as if no other process held GPU memory (by default the inventory's "
    "memory.used is taken off what each GPU offers, with a warning).",
)
REFERENCE = click.option(
    "--reference",
    is_flag=True,
    help="Plan for the profile's reference hardware (the default on a host with no GPU).",
)
OVERRIDES = [
    click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a profile value by its dotted path, e.g. planner.headroom=0.2, "
        "services.llm.gpu.on_short=cpu, tunables.OLLAMA_KEEP_ALIVE=10m.",
    ),
    click.option(
        "--values",
        "values_files",
        multiple=True,
        metavar="FILE",
        help="YAML file deep-merged into the profile before --set.",
    ),
    click.option(
        "--image",
        "images",
        multiple=True,
        metavar="KEY=IMAGE",
        help="Replace the image of an image key (see `composegen profiles show NAME`).",
    ),
]


def _overrides(func: Any) -> Any:
    for opt in reversed(OVERRIDES):
        func = opt(func)
    return func


@cli.group(context_settings=CONTEXT, invoke_without_command=True)
@PROFILES_DIR
@INVENTORY
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def profiles(
    ctx: click.Context, profiles_dirs: tuple[str, ...], inventory: str | None, as_json: bool
) -> None:
    """List the profiles and whether each fits this host (or --inventory FILE), and why not.

    \b
    fits: yes       every service gets the GPUs it asks for
          degraded  some services run on CPU or are dropped, by the profile's own rules
          no        the profile refuses this hardware (the reason says what to change)

    Best first: by fit, then closeness to each profile's reference hardware (GPU count, VRAM
    per GPU, GPU models, NVLink); the first is what `plan` and `render` choose without
    --profile.
    """
    ctx.ensure_object(dict)
    ctx.obj["profiles_dirs"] = profiles_dirs
    if ctx.invoked_subcommand is not None:
        return
    from composegen import app

    if inventory:
        from composegen.detect.sources import load_inventory

        inv = load_inventory(inventory)
        fits = app.rank(inv, profiles_dirs, hardware=f"inventory file {inventory}")
    else:
        from composegen.detect.sources import detect_local

        inv = detect_local(with_host=False)
        fits = app.rank(inv, profiles_dirs, this_host=True)  # no GPU: reference, as plan does
    if as_json:
        click.echo(
            _json(
                [
                    {
                        "name": f.name,
                        "fits": f.fits,
                        "why": f.why,
                        "hardware": f.hardware,
                        "closeness": f.closeness.text() if f.closeness else None,
                        "description": f.description,
                    }
                    for f in fits
                ]
            ),
            nl=False,
        )
        return
    from rich.table import Table

    title = f"profiles for {inv.source}" + ("" if inv.gpus else " (no GPU)")
    if not inventory and not inv.healthy_gpus:
        title += ": no usable GPU here, so each is rated on its reference hardware, as plan does"
    table = Table(title=title)
    for col in ("profile", "fits", "why", "rated on", "description"):
        table.add_column(col)
    for f in fits:
        style = {"yes": "green", "degraded": "yellow", "no": "red"}[f.fits]
        table.add_row(f.name, f"[{style}]{f.fits}[/]", f.why, f.hardware, f.description[:70])
    _console().print(table)


@profiles.command("show", context_settings=CONTEXT)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@_overrides
@click.pass_context
def profiles_show(
    ctx: click.Context,
    name: str,
    as_json: bool,
    sets: tuple[str, ...],
    values_files: tuple[str, ...],
    images: tuple[str, ...],
) -> None:
    """Show one profile: its services, models, VRAM needs, images and reference hardware."""
    from composegen import profiles as prof_mod
    from composegen.show import print_profile, profile_dict

    prof = prof_mod.load(
        name, ctx.obj["profiles_dirs"], prof_mod.Overrides(sets, values_files, images)
    )
    if as_json:
        click.echo(_json(profile_dict(prof)), nl=False)
        return
    print_profile(prof, _console())


@cli.command(context_settings=CONTEXT)
@_profile_opts
@INVENTORY
@REFERENCE
@FLEET
@PROFILES_DIR
@PIN_BY
@IGNORE_USED
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@_overrides
def plan(
    profile_name: str | None,
    project_flag: str | None,
    inventory: str | None,
    reference: bool,
    fleet: str | None,
    profiles_dirs: tuple[str, ...],
    pin_by: str | None,
    ignore_used: bool,
    as_json: bool,
    sets: tuple[str, ...],
    values_files: tuple[str, ...],
    images: tuple[str, ...],
) -> None:
    """Show which GPU runs which service of a profile, with VRAM used/free and the spares.

    Without --profile (or with --profile auto) the profile that suits the hardware best is
    chosen: by fit (yes, degraded, no), then closeness to each profile's reference hardware
    (GPU count, VRAM per GPU, GPU models, NVLink); one line on stderr says why.

    With --fleet FILE the profile is planned over every node of the fleet: replicas on every
    GPU of every node, a tensor-parallel group inside one node, and a NODE column."""
    from composegen import app
    from composegen.profiles import Overrides

    name, local = _pick_profile(
        profile_name, project_flag, profiles_dirs, inventory, reference, fleet
    )
    built = app.build(
        name,
        local=local,
        extra_dirs=profiles_dirs,
        overrides=Overrides(sets, values_files, images),
        inventory=inventory,
        reference=reference,
        pin_by=_pin(pin_by),
        ignore_used=ignore_used,
        fleet=fleet,
    )
    for w in built.plan.warnings:
        click.echo(f"composegen: warning: {w}", err=True)
    if as_json:
        data = built.plan.to_dict()
        data["inventory"] = built.target.note
        click.echo(_json(data), nl=False)
        return
    from composegen.show import print_plan

    print_plan(built.plan, built.target.note, _console())


@cli.command(context_settings=CONTEXT)
@_profile_opts
@click.option(
    "-o",
    "--output",
    "out_dir",
    default=".",
    show_default=True,
    metavar="DIR",
    help="Directory to write the stack into.",
)
@INVENTORY
@REFERENCE
@PROFILES_DIR
@_overrides
@PIN_BY
@IGNORE_USED
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDR",
    help="Address the gateway publishes its port on. 0.0.0.0 opens it to the network.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Write nothing; exit 1 and print a diff if the files on disk differ.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite files edited by hand since the last render (keeps a .bak copy).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be written; write nothing.")
@click.option(
    "--target",
    type=click.Choice(["compose", "swarm"]),
    default=None,
    help="compose: one host's Compose project (the default). swarm: a stack for "
    "`docker stack deploy` over the nodes of --fleet FILE, and swarm/ to prepare each node.",
)
@click.option(
    "--fleet",
    "render_fleet",
    metavar="FILE",
    help="Plan over the GPU hosts of a fleet file (nodes: [{name, inventory}, ...]); "
    "renders --target swarm.",
)
def render(
    profile_name: str | None,
    project_flag: str | None,
    out_dir: str,
    inventory: str | None,
    reference: bool,
    profiles_dirs: tuple[str, ...],
    sets: tuple[str, ...],
    values_files: tuple[str, ...],
    images: tuple[str, ...],
    pin_by: str | None,
    ignore_used: bool,
    bind: str,
    check: bool,
    force: bool,
    dry_run: bool,
    target: str | None,
    render_fleet: str | None,
) -> None:
    """Plan a profile for this host and write the stack into DIR.

    \b
    Writes: docker-compose.yml     GPU-pinned services, internal network, healthchecks
            nginx/nginx.conf       the gateway (the only published port)
            .env                   tunables read as ${VAR:-default} (mode 0600)
            scripts/healthcheck.sh, scripts/emergency-fallback.sh   (need only docker)
            fallback/              the CPU variant used by the emergency script
            STACK.md               the plan in words: which GPU runs what and why

    Re-rendering an unchanged directory changes nothing; a file edited by hand is kept
    unless --force. Without --profile (or with --profile auto) the profile that suits this
    host best is chosen, as in `plan`, and one line on stderr says why.
    """
    import ipaddress
    from pathlib import Path

    from composegen import app
    from composegen.profiles import Overrides

    try:
        addr = ipaddress.ip_address(bind)
    except ValueError:
        raise BadInputError(
            f"--bind {bind!r}: not an IP address", "e.g. --bind 127.0.0.1"
        ) from None
    swarm = (
        app.check_swarm_options(target, render_fleet, profile_name, inventory, reference, bind)
        == "swarm"
    )
    if swarm:
        assert profile_name is not None and render_fleet is not None
        built = app.build_swarm(
            profile_name,
            render_fleet,
            extra_dirs=profiles_dirs,
            overrides=Overrides(sets, values_files, images),
            pin_by=_pin(pin_by),
            ignore_used=ignore_used,
        )
    else:
        name, local = _pick_profile(profile_name, project_flag, profiles_dirs, inventory, reference)
        built = app.build(
            name,
            local=local,
            extra_dirs=profiles_dirs,
            overrides=Overrides(sets, values_files, images),
            inventory=inventory,
            reference=reference,
            pin_by=_pin(pin_by),
            bind=str(addr),
            ignore_used=ignore_used,
            previous_dir=Path(out_dir),
        )
    for w in built.plan.warnings:
        click.echo(f"composegen: warning: {w}", err=True)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: is a file, not a directory", "choose another -o DIR")
    if check:
        diffs = app.check(out, built.files)
        if diffs:
            for d in diffs:
                click.echo(d, nl=False)
            click.echo(f"composegen: {out} differs from what would be rendered", err=True)
            sys.exit(1)
        click.echo(f"{out}: up to date")
        return
    if addr.is_unspecified and not swarm:
        click.echo(
            f"composegen: warning: --bind {bind} publishes the gateway on every network "
            "interface; Docker's published ports bypass host firewalls such as ufw",
            err=True,
        )
    if (swarm or not addr.is_loopback) and not built.profile.gateway.api_key:
        click.echo(
            "composegen: warning: "
            + ("a swarm gateway" if swarm else f"--bind {bind}")
            + " without an API key: the gateway is open to "
            "the network without authentication (set one: --set gateway.api_key=KEY, "
            "KEY from `openssl rand -hex 32`)",
            err=True,
        )
    result = app.write(out, built.files, force=force, dry_run=dry_run)
    if not dry_run and built.inputs is not None:
        app.save_inputs(out, built.inputs)
    verb = "would write" if dry_run else "wrote"
    click.echo(f"{built.plan.profile} for {built.target.note}")
    for inst in built.plan.instances:
        where = f"GPU {','.join(map(str, inst.gpus))}" if inst.gpus else "CPU"
        if swarm:
            where = f"{inst.node}: {where}"
        click.echo(f"  {inst.name:<24} {where}")
    if built.plan.spare_gpus:
        click.echo(f"  spare GPUs: {', '.join(map(str, built.plan.spare_gpus))}")
    for name, why in built.plan.dropped:
        click.echo(f"  dropped {name}: {why}")
    if dry_run:
        for path in result.written:
            click.echo(f"  would write {out / path}")
        for path in result.backed_up:
            click.echo(f"  would save your edits of {out / path.removesuffix('.bak')} in {path}")
    click.echo(
        f"{verb} {len(result.written)} file(s), {len(result.unchanged)} unchanged in {out}"
        + (
            f"; your edits are saved in {', '.join(result.backed_up)}"
            if result.backed_up and not dry_run
            else ""
        )
    )


PROJECT_OPTS = [
    click.option(
        "-C",
        "--directory",
        "directory",
        metavar="DIR",
        default=None,
        help="Directory holding docker-compose.yml (default: the current one).",
    ),
    click.option(
        "-f",
        "--file",
        "file",
        metavar="FILE",
        default=None,
        help="The compose file (default: DIR/docker-compose.yml).",
    ),
    click.option(
        "-p",
        "--project-name",
        "project_name",
        metavar="NAME",
        default=None,
        help="Project name (default: COMPOSE_PROJECT_NAME from .env, else the directory).",
    ),
]


def _project_opts(func: Any) -> Any:
    for opt in reversed(PROJECT_OPTS):
        func = opt(func)
    return func


def _project_opts_long_file(func: Any) -> Any:
    """The project options with the compose file as --file only: in `logs`, -f is --follow,
    as in `docker compose logs -f`."""
    file_opt = click.option(
        "--file",
        "file",
        metavar="FILE",
        default=None,
        help="The compose file (default: DIR/docker-compose.yml).",
    )
    for opt in reversed([PROJECT_OPTS[0], file_opt, PROJECT_OPTS[2]]):
        func = opt(func)
    return func


def _load_project(directory: str | None, file: str | None, project_name: str | None) -> Any:
    from pathlib import Path

    from composegen.engine.compose import load_project

    if file and directory:
        raise BadInputError("-C and -f exclude each other", "pass only one")
    path = Path(file) if file else Path(directory or ".") / "docker-compose.yml"
    return load_project(path, project_name)


def _named_project(project_name: str | None) -> str | None:
    """-p NAME, else COMPOSE_PROJECT_NAME, normalised as Compose does (None: neither)."""
    name = project_name or os.environ.get("COMPOSE_PROJECT_NAME")
    if not name:
        return None
    from pathlib import Path

    from composegen.engine.compose import project_name as normalised

    return normalised(name, {}, {}, Path("."))


def _project_name_only(directory: str | None, file: str | None, project_name: str | None) -> str:
    """The project's name for commands that need only its labels (logs, exec): the compose
    file's, or with the file gone or broken, -p NAME / COMPOSE_PROJECT_NAME."""
    try:
        return str(_load_project(directory, file, project_name).name)
    except BadInputError:
        name = _named_project(project_name)
        if not name:
            raise
        return name


def _project_or_labels(directory: str | None, file: str | None, project_name: str | None) -> Any:
    """(client, target) for `down` and `status`: the compose file's project, or with -p NAME
    when the file is gone or broken, the project as its containers' labels describe it."""
    from composegen.engine import docker as eng
    from composegen.engine import up as engine_up

    try:
        project = _load_project(directory, file, project_name)
    except BadInputError as exc:
        name = _named_project(project_name)
        if not name:
            raise
        from pathlib import Path

        client = eng.connect()
        where = Path(file).parent if file else Path(directory or ".")
        return client, engine_up.target_from_labels(client, name, exc.message, where)
    return eng.connect(), engine_up.Target(project.name, project.directory, project, None)


@cli.command(context_settings=CONTEXT)
@_project_opts
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=1),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="Give up when the stack is not healthy after this long.",
)
@click.option("--no-wait", is_flag=True, help="Start the containers and return; do not wait.")
@click.option(
    "--pull",
    type=click.Choice(["missing", "never"]),
    default="missing",
    show_default=True,
    help="Pull images that are not on the engine, or never pull.",
)
@click.option(
    "--no-models",
    is_flag=True,
    help="Do not fetch missing models before start nor load the Ollama models after.",
)
@click.option(
    "--no-doctor", is_flag=True, help="Skip the fast checks of `composegen doctor` first."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON event per line.")
def up(
    directory: str | None,
    file: str | None,
    project_name: str | None,
    wait_timeout: float,
    no_wait: bool,
    pull: str,
    no_models: bool,
    no_doctor: bool,
    as_json: bool,
) -> None:
    """Start the stack of a compose file through the Docker engine and wait until it is healthy.

    Reads the file on disk (hand edits count) with .env interpolated as Compose does. Creates
    the project's networks and volumes, then each service in depends_on order, in parallel
    where possible. Unchanged services are left alone, changed ones recreated, removed ones
    removed. Readiness is probed actively with each service's own healthcheck, then the gateway
    is probed over HTTP. Every container's GPUs are checked against the file.

    Serving (unless --no-models): first the models missing from the stack's stores are fetched
    (as `composegen models pull`), then, once healthy, each Ollama model is loaded once with
    the stack's keep-alive.
    """
    from composegen.engine import docker as eng
    from composegen.engine import up as engine_up
    from composegen.engine.progress import Progress
    from composegen.engine.state import project_lock, read_mode, write_mode

    project = _load_project(directory, file, project_name)
    if not no_doctor:
        _doctor_first(project, as_json)
    client = eng.connect()
    models = None
    loaded: list[tuple[str, str]] = []
    with project_lock(project.directory, project.name, "up"):
        engine_up.refuse_in_fallback(project.directory, project.name)
        if not no_models:
            models = _fill_stores(client, project, as_json, pull)
        with Progress(
            [s.name for s in project.services], as_json, f"composegen up {project.name}"
        ) as prog:
            try:
                result = engine_up.up(
                    client,
                    project,
                    wait=not no_wait,
                    wait_timeout_s=wait_timeout,
                    report=prog.event,
                    pull=pull,
                    on_pull=prog.pull,
                )
                if not no_models and not no_wait:
                    loaded = engine_up.load_ollama_models(client, project, prog.event, wait_timeout)
                    _check_residency(client, project, prog.event)
            except ComposegenError as exc:
                details = getattr(exc, "details", "")
                prog.emit({"event": "failed", "error": exc.one_line(), "details": details})
                if not as_json and details:
                    click.echo(details, err=True)
                raise
        if read_mode(project.directory, project.name).get("mode") != "gpu":
            write_mode(project.directory, project.name, "gpu", "composegen up")
    if as_json:
        prog.emit(
            {
                "event": "done",
                "project": project.name,
                "actions": result.actions,
                "removed": result.removed,
                "gpus": result.gpu_map,
                "gateway": result.gateway,
                "seconds": round(result.seconds, 3),
                "models": None
                if models is None
                else {
                    "fetched": [{"store": s, "model": m, "bytes": b} for s, m, b in models.fetched],
                    "present": len(models.present),
                    "loaded": [{"service": s, "model": m} for s, m in loaded],
                },
            }
        )
        return
    changed = sum(1 for a in result.actions.values() if a != "keep")
    click.echo(
        f"{project.name}: {len(result.actions)} service(s), {changed} changed, "
        f"{result.removed} removed, "
        + ("healthy" if not no_wait else "started")
        + f" in {result.seconds:.1f}s"
    )
    for svc, ids in result.gpu_map.items():
        click.echo(f"  GPU {','.join(ids)} -> {svc}")
    if result.gateway:
        click.echo(f"  gateway answers at {result.gateway}")
    if models is not None:
        click.echo(
            f"  models: {len(models.fetched)} fetched, {len(models.present)} already there, "
            f"{len(loaded)} loaded"
        )


def _fill_stores(client: Any, project: Any, as_json: bool, pull: str) -> Any:
    from composegen.engine import up as engine_up
    from composegen.serving.pull import ModelProgress

    with ModelProgress(as_json) as mprog:
        return engine_up.fill_model_stores(client, project, mprog, pull)


@cli.group(context_settings=CONTEXT)
def models() -> None:
    """The models of a rendered stack (the profile's, recorded in its compose files)."""


@models.command("pull", context_settings=CONTEXT)
@_project_opts
@click.option("--json", "as_json", is_flag=True, help="Print one JSON event per line.")
def models_pull(
    directory: str | None, file: str | None, project_name: str | None, as_json: bool
) -> None:
    """Fill every model store of the stack, the CPU variants' too, with what is missing.

    Each store is filled once (replicas sharing a store, or a GPU service and its CPU variant,
    pull a model once) by a one-shot fetch container on the egress network PROJECT_fetch:
    Ollama stores by the service's own image (`/api/pull`, resumable), Hugging Face caches by
    the profile's hf-fetch image (HF_TOKEN and HF_ENDPOINT from .env). Models already there are
    not fetched again. The running stack is left alone; exit 1 names the model, the service
    and the cause of a failure.
    """
    from composegen.engine import docker as eng
    from composegen.engine.state import project_lock
    from composegen.serving import pull as serving_pull

    project = _load_project(directory, file, project_name)
    client = eng.connect()
    with (
        project_lock(project.directory, project.name, "models pull"),
        serving_pull.ModelProgress(as_json) as mprog,
    ):
        plan, result = serving_pull.pull_stack(client, project, mprog)
    for why in result.skipped:
        click.echo(f"composegen: warning: {why}", err=True)
    if as_json:
        click.echo(
            _json_line(
                {
                    "event": "done",
                    "ok": not result.failures,
                    "fetched": [{"store": s, "model": m, "bytes": b} for s, m, b in result.fetched],
                    "present": [{"store": s, "model": m} for s, m in result.present],
                    "failures": [
                        {
                            "model": f.model,
                            "services": list(f.services),
                            "kind": f.kind,
                            "message": f.message,
                        }
                        for f in result.failures
                    ],
                }
            ),
        )
    else:
        total = sum(b for _, _, b in result.fetched)
        click.echo(
            f"{project.name}: {len(plan.stores)} store(s), {len(result.fetched)} model(s) "
            f"fetched ({total / 1e6:.1f} MB), {len(result.present)} already there"
        )
    serving_pull.raise_failures(result)


@cli.command(context_settings=CONTEXT)
@_project_opts
@click.option("--volumes", is_flag=True, help="Also remove the project's named volumes (data!).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def down(
    directory: str | None, file: str | None, project_name: str | None, volumes: bool, as_json: bool
) -> None:
    """Remove the project's containers and networks; named volumes stay unless --volumes."""
    from composegen.engine import up as engine_up
    from composegen.engine.state import project_lock

    client, project = _project_or_labels(directory, file, project_name)
    with project_lock(project.directory, project.name, "down"):
        n, nets, vols = engine_up.down(client, project.name, volumes)
    if as_json:
        click.echo(
            _json({"project": project.name, "containers": n, "networks": nets, "volumes": vols}),
            nl=False,
        )
        return
    if project.note:
        click.echo(project.note, err=True)
    click.echo(
        f"{project.name}: removed {n} container(s), {nets} network(s)"
        + (f", {vols} volume(s)" if volumes else "; named volumes kept")
    )


@cli.command(context_settings=CONTEXT)
@_project_opts
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(
    directory: str | None, file: str | None, project_name: str | None, as_json: bool
) -> None:
    """Services of the stack: state, Docker's health, composegen's readiness, GPUs, ports, and
    the mode (gpu / cpu-fallback). Exits 0 when the stack serves, 1 when it does not (the
    gateway not running or not ready, a service down or not ready: GPU services stopped by
    `fallback --cpu` excepted).

    In a swarm stack's directory (docker-stack.yml): per service its planned node, the node it
    runs on, its state (pending with Swarm's reason), GPUs planned and held, what does not
    match; exit 0 when every task runs as planned, 1 otherwise."""
    from pathlib import Path

    from composegen.engine import up as engine_up
    from composegen.engine.state import read_mode
    from composegen.serving import verify as serving
    from composegen.swarm_stack import is_swarm_dir

    if file is None and is_swarm_dir(Path(directory or ".")):
        from composegen.cli_swarm import swarm_status

        swarm_status(directory or ".", project_name, as_json)
        return
    client, project = _project_or_labels(directory, file, project_name)
    mode = read_mode(project.directory, project.name)
    report = engine_up.status(
        client, project.name, project.project, mode.get("mode") == "cpu-fallback"
    )
    rows = report.rows
    models = serving.models_by_container(client, project.name, project.directory)
    if as_json:
        click.echo(
            _json(
                {
                    "project": project.name,
                    "mode": mode,
                    "serving": report.serving,
                    "problems": report.problems,
                    "services": [
                        {
                            "service": r.service,
                            "container": r.container,
                            "state": r.state,
                            "health": r.health,
                            "ready": r.ready,
                            "gpus": list(r.gpus),
                            "ports": list(r.ports),
                            "mode": r.mode,
                            "models": _models_json(models.get(r.container)),
                        }
                        for r in rows
                    ],
                }
            ),
            nl=False,
        )
        if not report.serving:
            sys.exit(1)
        return
    from rich.table import Table

    if project.note:
        click.echo(project.note, err=True)
    table = Table(
        title=f"{project.name}: mode {mode.get('mode')}"
        + (f" since {mode['since']} ({mode.get('why')})" if mode.get("since") else "")
    )
    for col in ("service", "state", "health", "ready", "GPUs", "ports", "models"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.service,
            r.state,
            r.health,
            r.ready,
            ",".join(r.gpus) or "-",
            " ".join(r.ports) or "-",
            serving.models_text(models.get(r.container)),
        )
    if rows:
        _console().print(table)
    if not report.serving:
        raise ComposegenError(
            f"{project.name} is not serving: {'; '.join(report.problems)}",
            "run `composegen up`"
            if not rows
            else "`composegen up` converges it; the service's logs say why",
        )


cli.add_command(status, name="ps")


@cli.command(context_settings=CONTEXT)
@_project_opts
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=120,
    show_default=True,
    metavar="SECONDS",
    help="Give up on one gateway request after this long (a cold model load takes a while).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(
    directory: str | None,
    file: str | None,
    project_name: str | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Check that the stack serves, from the outside in: each gateway route answers a tiny real
    request, each Ollama model sits on its GPU (/api/ps), `nvidia-smi -L` in each GPU container
    lists exactly its planned GPUs, and (where NVML works) each GPU service's processes hold
    memory on its planned GPUs and no other. Exits 0 when every check passes (a check that
    cannot run here is skipped and says why), 1 when one fails, 2 on bad input."""
    from composegen.engine import docker as eng
    from composegen.serving import verify as serving

    project = _load_project(directory, file, project_name)
    client = eng.connect()
    report = serving.verify(client, project, project.directory, timeout_s=timeout_s)
    if as_json:
        click.echo(_json(report.to_dict()), nl=False)
    else:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"{project.name}: " + ("serving" if report.ok else "NOT serving"))
        for col in ("service", "check", "result", "detail"):
            table.add_column(col, overflow="fold")
        style = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
        for svc in report.services:
            for c in svc.checks:
                table.add_row(svc.name, c.check, Text(c.status, style=style[c.status]), c.detail)
            if svc.models:
                models = ", ".join(f"{m.name} {m.where}" for m in svc.models)
                table.add_row(svc.name, "models", "", models)
        _console().print(table)
    if not report.ok:
        sys.exit(1)


@cli.command(context_settings=CONTEXT)
@_project_opts
@click.option("--cpu", "to_cpu", is_flag=True, help="Move the running stack to CPU.")
@click.option(
    "--gpu-failed",
    "gpu_failed",
    metavar="ID[,ID...]",
    help="Re-plan without these GPUs (indices or UUIDs): spares first, then CPU.",
)
@click.option(
    "--auto", is_flag=True, help="Ask NVML which GPUs failed and act; with no working NVML, --cpu."
)
@click.option(
    "--restore", is_flag=True, help="Return to the GPU plan once its GPUs are healthy again."
)
@click.option(
    "--inventory",
    metavar="FILE",
    help="With --auto/--restore: take GPU health from FILE instead of NVML.",
)
@click.option("--dry-run", is_flag=True, help="Print the actions; change nothing.")
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite files edited by hand that the re-plan must change (keeps a .bak copy).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON events.")
def fallback(
    directory: str | None,
    file: str | None,
    project_name: str | None,
    to_cpu: bool,
    gpu_failed: str | None,
    auto: bool,
    restore: bool,
    inventory: str | None,
    dry_run: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Rescue a running stack when GPUs fail, without losing data (named volumes stay).

    \b
    --cpu             start the CPU variants beside the GPU services, wait until they are
                      healthy, reload the gateway onto them (its port never closes), then stop
                      the GPU containers; services without a CPU variant answer 503
    --gpu-failed IDS  re-plan without those GPUs: services move to spare GPUs first, replicas
                      drop, personas share what is left; only affected containers change
    --auto            the same, for the GPUs NVML reports lost or gone
    --restore         back to the GPU plan, GPU pinning verified as in `up`; with no NVML on
                      this host, the stack's recorded inventory counts as healthy

    A re-plan rewrites only the files it changes: hand edits of the others (.env) are kept.

    On a swarm stack (DIR holds docker-stack.yml): --gpu-failed (UUIDs or NODE:INDEX; a bare
    index only on a one-node fleet), --cpu and --restore re-render the stack file and deploy it
    to the stack `deploy` recorded (-p NAME overrides); Swarm updates only the changed
    services, each start-first where its node has room (see the output), then stop-first
    again. A rerun after a failed deploy or wait applies the recorded step again.
    """
    from composegen.engine import failover
    from composegen.engine.progress import Progress

    actions: tuple[tuple[failover.Action, object], ...] = (
        ("cpu", to_cpu),
        ("gpu-failed", gpu_failed),
        ("auto", auto),
        ("restore", restore),
    )
    chosen = [name for name, given in actions if given]
    if len(chosen) != 1:
        raise BadInputError(
            "choose exactly one of --cpu, --gpu-failed, --auto, --restore",
            "see `composegen fallback --help`",
        )
    from composegen.engine import swarm_failover

    # a swarm stack (DIR holds docker-stack.yml, no docker-compose.yml) falls back by updates
    swarm = None if file else swarm_failover.stack_at(directory, project_name)
    project = swarm or _load_project(directory, file, project_name)

    def say(text: str) -> None:
        if as_json:
            click.echo(_json_line({"event": "info", "message": text}))
        else:
            click.echo(text)

    def progress(services: list[str], title: str) -> Any:
        import contextlib

        @contextlib.contextmanager
        def shown() -> Any:
            with Progress(services, as_json, title) as prog:
                yield prog.event

        return shown()

    failover.run(
        project,
        failover.Request(chosen[0], gpu_failed, inventory, dry_run, force),
        failover.Io(say, progress),
    )


@cli.command(context_settings=CONTEXT)
@_project_opts_long_file
@click.option("-f", "--follow", is_flag=True, help="Follow the output until Ctrl-C.")
@click.option(
    "-n",
    "--tail",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Show the last N lines of each container (default: all).",
)
@click.option("-t", "--timestamps", is_flag=True, help="Show the engine's timestamps.")
@click.option("--no-log-prefix", is_flag=True, help="Do not prefix the lines with SERVICE-N |.")
@click.argument("services", nargs=-1, metavar="[SERVICE]...")
def logs(
    directory: str | None,
    file: str | None,
    project_name: str | None,
    follow: bool,
    tail: int | None,
    timestamps: bool,
    no_log_prefix: bool,
    services: tuple[str, ...],
) -> None:
    """Show the logs of the stack's containers (or of SERVICE...), as `docker compose logs`:
    each line prefixed `SERVICE-N  |`, interleaved by time; -f follows until Ctrl-C.

    Containers are found by Compose's labels, so a stack Compose started works too. Here -f
    is --follow, as in `docker compose logs -f`; the compose file is --file FILE (or -C DIR).
    """
    from composegen.engine import attach
    from composegen.engine import docker as eng

    name = _project_name_only(directory, file, project_name)
    client = eng.connect()
    attach.logs(
        client,
        name,
        services,
        attach.LogOptions(follow, tail, timestamps, prefix=not no_log_prefix),
        lambda line: click.echo(_one_line(line)),
    )


@cli.command(
    "exec",
    context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_interspersed_args": False},
)
@_project_opts
@click.option("-T", "--no-tty", "no_tty", is_flag=True, help="Do not allocate a TTY.")
@click.option(
    "-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set an environment variable."
)
@click.option("-w", "--workdir", default=None, metavar="DIR", help="Run the command in DIR.")
@click.option("-u", "--user", default="", metavar="USER", help="Run the command as USER.")
@click.option(
    "--index",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="The container of the service, when it has several.",
)
@click.argument("service")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(
    directory: str | None,
    file: str | None,
    project_name: str | None,
    no_tty: bool,
    env: tuple[str, ...],
    workdir: str | None,
    user: str,
    index: int,
    service: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in the running container of SERVICE, as `docker compose exec`: with a TTY
    when stdin is one (unless -T), stdin passed on; exits with the command's exit code."""
    from composegen.engine import attach
    from composegen.engine import docker as eng

    for item in env:
        if "=" not in item or not item.partition("=")[0]:
            raise BadInputError(f"-e {item!r}: expected KEY=VALUE", "e.g. -e OLLAMA_DEBUG=1")
    name = _project_name_only(directory, file, project_name)
    client = eng.connect()
    stdin_fd = attach.stdin_fd(sys.stdin)
    tty = not no_tty and stdin_fd is not None and os.isatty(stdin_fd)
    req = eng.ExecRequest(list(command), tty=tty, env=env, workdir=workdir, user=user)

    def write(stream: int, data: bytes) -> None:
        out = sys.stderr if stream == 2 else sys.stdout
        out.buffer.write(data)
        out.flush()

    with attach.raw_terminal(stdin_fd if tty else None) as size:
        code = attach.exec_in(client, name, service, req, stdin_fd, write, index, size)
    sys.exit(code)


def _check_residency(client: Any, project: Any, report: Any) -> None:
    """After the models are loaded: each Ollama model sits on its GPU, or `up` fails naming it."""
    from composegen.engine.up import UpFailed
    from composegen.serving import verify as serving

    checks = serving.residency_after_load(client, project, project.directory)
    for ch in checks:
        if ch.status == "passed":
            report(ch.detail.split(":", 1)[0], "serving", ch.detail.split(": ", 1)[-1])
    failed = [ch.detail for ch in checks if ch.status == "failed"]
    if failed:
        raise UpFailed(
            "models not where the plan put them: " + "; ".join(failed),
            hint=f"`composegen verify -C {project.directory}` shows every check; a context too "
            "large for the VRAM or a container that lost its GPU are the usual causes",
        )


def _json_line(data: Any) -> str:
    import json

    return json.dumps(data)


@cli.command(context_settings=CONTEXT)
@click.option(
    "-C",
    "--directory",
    "directory",
    metavar="DIR",
    default=".",
    help="The stack's directory (rendered by composegen; default: the current one).",
)
@click.option(
    "-p",
    "--project-name",
    "project_name",
    metavar="NAME",
    default=None,
    help="Project name (default: COMPOSE_PROJECT_NAME from .env, else the directory).",
)
@click.option(
    "--interval",
    default="5s",
    show_default=True,
    metavar="DURATION",
    help="How often every probe is read (1s, 500ms, 5m).",
)
@click.option(
    "--heal",
    is_flag=True,
    help="Act on the rules' decisions (recreate, fallback --gpu-failed / --cpu / --restore); "
    "off by default: then each decision is an event saying what would be done.",
)
@click.option(
    "--metrics",
    metavar="ADDR:PORT",
    default=None,
    help="Serve Prometheus metrics on http://ADDR:PORT/metrics (e.g. 127.0.0.1:9464; a bare "
    ":PORT listens on 127.0.0.1; port 0 picks a free one).",
)
@click.option(
    "--notify",
    metavar="URL",
    default=None,
    help="POST each batch of events as JSON to this webhook (retried, with a timeout).",
)
@click.option("--once", is_flag=True, help="Read once, print the snapshot and its events, exit.")
@click.option("--json", "as_json", is_flag=True, help="Print events and snapshots as JSON lines.")
@click.option(
    "--inventory",
    metavar="FILE",
    default=None,
    help="GPU signals from FILE (any format `detect --from` reads), re-read every interval, "
    "instead of NVML; in a `detect --save` file each GPU's health and temperature_c count.",
)
@click.option(
    "--restore-after",
    metavar="DURATION",
    default=None,
    help="Hold-down: how long the GPUs must stay healthy before --heal restores the GPU plan "
    "(default 5m, or the profile's watch.restore_after_s).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="watch.KEY=VALUE",
    help="Override a threshold of the profile's watch: section (repeatable), e.g. "
    "watch.memory_warn_pct=80, watch.heal_max=2.",
)
@click.option(
    "--install",
    is_flag=True,
    help="Write and enable a systemd unit that runs this watch command (with the other options "
    "given) so it survives reboots.",
)
@click.option("--print", "print_only", is_flag=True, help="With --install: print the unit only.")
def watch(
    directory: str,
    project_name: str | None,
    interval: str,
    heal: bool,
    metrics: str | None,
    notify: str | None,
    once: bool,
    as_json: bool,
    inventory: str | None,
    restore_after: str | None,
    sets: tuple[str, ...],
    install: bool,
    print_only: bool,
) -> None:
    """Watch a running stack: alert on the thresholds, export metrics, heal it with --heal.

    \b
    Each interval it reads the containers (state, health, restarts, OOM kills), the GPUs
    (NVML on the host, or --inventory FILE: temperature, memory, utilisation, power, Xid
    events, ECC errors, lost GPUs), GPU access inside each GPU container (nvidia-smi -L),
    the models Ollama holds on its GPU (/api/ps) and the gateway's requests (its JSON access
    log). The rules and their defaults (each with the seed it comes from) are listed in the
    README's `watch` section; override them in the profile's watch: section or with --set.

    \b
    Events go to the terminal, to DIR/.composegen/watch-events.jsonl (rotated), and with
    --notify to a webhook. With --heal:
      a container that lost GPU access, or crashes repeatedly -> recreated (at most N times
        in M minutes; make before break where it can run beside the old one)
      a lost or failing GPU -> the same re-plan as `fallback --gpu-failed`
      no usable GPU, or an engine that refuses GPU requests -> `fallback --cpu`
      the GPUs healthy again for --restore-after -> `fallback --restore`
    One action at a time, under the stack's lock: a running `up` or `fallback` makes it wait.

    \b
    Exit codes: 0 stopped by SIGTERM / Ctrl-C, or --once with no critical condition;
    1 --once saw a critical condition (or a runtime failure); 2 bad input.
    """
    from pathlib import Path

    from composegen.engine import failover
    from composegen.watch.command import check_options, check_stack, run_watch, unit_args
    from composegen.watch.loop import WatchOptions
    from composegen.watch.loop import project_name as project_of

    if print_only and not install:
        raise BadInputError(
            "--print goes with --install", "run `composegen watch --install --print`"
        )
    where = Path(directory)
    check_stack(where)
    from composegen.watch import settings

    options = WatchOptions(
        interval_s=settings.parse_duration(interval, "--interval"),
        heal=heal,
        metrics=metrics,
        notify=notify,
        inventory=inventory,
        restore_after_s=(
            settings.parse_duration(restore_after, "--restore-after") if restore_after else None
        ),
        sets=sets,
        json=as_json,
        once=once,
    )
    check_options(options)
    if install:
        from composegen.watch import systemd

        project = project_of(where.resolve(), project_name)
        argv = unit_args(options, interval, restore_after)
        click.echo(systemd.install(where.resolve(), project, argv, print_only))
        return

    def say(text: str) -> None:
        if as_json:
            click.echo(_json_line({"event": "info", "message": text}))
        else:
            click.echo(text, err=True)

    code = run_watch(where, project_name, options, failover.Io(say))
    sys.exit(code)


@cli.command("lint", context_settings=CONTEXT)
@click.option(
    "-f",
    "--file",
    "file",
    default="docker-compose.yml",
    show_default=True,
    metavar="FILE",
    help="The compose file to check (any compose file, not only composegen's).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the findings as a JSON list of {file, line, rule, level, service, message, fix}.",
)
def lint_command(file: str, as_json: bool) -> None:
    """Check a compose file for GPU pinning, exposure and Ollama mistakes.

    \b
    CG001 error    count and device_ids in one GPU request
    CG002 error    the same GPU pinned to two services that do not both declare sharing
                   (label io.composegen.gpu-shared: "true" on both)
    CG003 error    GPUs reserved by count in several services: all get GPU 0..N-1
    CG004 error    CUDA_VISIBLE_DEVICES with host indices in a pinned container
    CG005 error    Ollama / vLLM port published on every interface
    CG006 error    Docker socket mounted
    CG007 error    privileged: true
    CG008 warning  network_mode: host
    CG009 warning  ipc: host (use shm_size)
    CG010 warning  GPU service without a healthcheck
    CG011 error    OLLAMA_* variable Ollama ignores (warning when merely unknown)
    CG012 warning  GPU service without a restart policy

    Exit codes: 0 no errors (warnings allowed), 1 errors found, 2 bad input.
    """
    from composegen import lint as linter

    try:
        with open(file, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise BadInputError(f"{file}: no such file", "pass the compose file with -f FILE") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{file}: not a text file (not UTF-8)") from None
    except OSError as exc:
        raise BadInputError(f"{file}: cannot read it: {exc.strerror or exc}") from None
    findings = linter.lint(text, file)
    if as_json:
        click.echo(_json([f.to_dict() for f in findings]), nl=False)
    else:
        for finding in findings:
            click.echo(finding.human())
        click.echo(linter.summary(file, findings))
    if any(f.level == "error" for f in findings):
        sys.exit(1)


def _models_json(value: Any) -> Any:
    """status --json: a list of {name, loaded, gpu_fraction}, {"error": why}, or null (not an
    Ollama server)."""
    if value is None or isinstance(value, str):
        return None if value is None else {"error": value}
    return [{"name": m.name, "loaded": m.loaded, "gpu_fraction": m.gpu_fraction} for m in value]


def _pin(value: str | None) -> PinBy | None:
    return "uuid" if value == "uuid" else ("index" if value == "index" else None)


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"


def _one_line(text: str) -> str:
    """Control characters from user input (a path with a newline) must not split the line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _fail(exc: ComposegenError) -> NoReturn:
    click.echo(f"composegen: error: {_one_line(exc.one_line())}", err=True)
    sys.exit(exc.exit_code)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    try:
        cli.main(args=args, prog_name="composegen", standalone_mode=False)
    except ComposegenError as exc:
        if debug:
            raise
        _fail(exc)
    except click.exceptions.Abort:
        click.echo(
            "composegen: interrupted (run the command again: it converges from where it stopped)",
            err=True,
        )
        sys.exit(130)
    except click.exceptions.UsageError as exc:
        # one line, like every other error: what is wrong, and where to read more
        where = (
            f"composegen {exc.ctx.command_path.split(' ', 1)[1]}"
            if exc.ctx and " " in (exc.ctx.command_path)
            else "composegen"
        )
        click.echo(
            f"composegen: error: {_one_line(exc.format_message())} (see `{where} --help`)",
            err=True,
        )
        sys.exit(exc.exit_code)
    except click.exceptions.ClickException as exc:
        click.echo(f"composegen: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(
            "composegen: interrupted (run the command again: it converges from where it stopped)",
            err=True,
        )
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        click.echo(
            f"composegen: internal error: {type(exc).__name__}: {exc} "
            "(run again with --debug for the traceback, and please report it)",
            err=True,
        )
        sys.exit(1)


# --- doctor, and `up` running its fast checks first -------------------------------------------


@cli.command(context_settings=CONTEXT)
@_project_opts
@click.option(
    "--inventory",
    metavar="FILE",
    default=None,
    help="Take GPU health from FILE (an inventory, or a stack's render.json), not NVML.",
)
@click.option("--fast", is_flag=True, help="Only the checks `up` runs first (no containers).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(
    directory: str | None,
    file: str | None,
    project_name: str | None,
    inventory: str | None,
    fast: bool,
    as_json: bool,
) -> None:
    """Check, before a stack is started, what makes GPU stacks fail on the first day.

    engine: reachable, version and API, disk space; nvidia-runtime: the hook, the nvidia runtime
    or CDI specs; gpu-request: a throwaway container per planned GPU running the stack's image
    (removed afterwards); cgroup: the systemd cgroup driver without /dev/char symlinks; ports:
    free; cuda: the driver against the images' CUDA; drift: the plan's GPUs still healthy.
    Exit 1 when a check fails (warnings do not).
    """
    from composegen import doctor as doc
    from composegen.doctor.run import doctor as run_doctor

    project = _load_project(directory, file, project_name)
    checks = run_doctor(project, fast=fast, inventory=inventory)
    if as_json:
        click.echo(_json({"project": project.name, **doc.to_dict(checks)}), nl=False)
    else:
        from rich.table import Table

        table = Table(title=f"composegen doctor {project.name}")
        for col in ("check", "status", "detail", "fix"):
            table.add_column(col, overflow="fold")
        style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        for c in checks:
            status = f"[{style[c.status]}]{c.status}[/]"
            table.add_row(c.name, status, _one_line(c.detail), _one_line(c.fix or ""))
        _console().print(table)
    if doc.failed(checks):
        sys.exit(1)


def _doctor_first(project: Any, as_json: bool) -> None:
    """`up` runs the fast checks of doctor first: warnings on stderr, a failure stops it."""
    from composegen import doctor as doc
    from composegen.doctor.run import doctor as run_doctor

    checks = run_doctor(project, fast=True)
    for c in checks:
        if c.status == "warn":
            click.echo(f"doctor: warning: {c.name}: {c.detail} ({c.fix})", err=True)
    error = doc.failure(checks)
    if error is not None:
        if as_json:
            bad = [c.to_dict() for c in checks if c.status == "fail"]
            click.echo(_json_line({"event": "doctor", "failed": bad}))
        raise error


# --- a swarm stack: deploy, undeploy, status: composegen/cli_swarm.py registers them on `cli`

from composegen import cli_swarm as _cli_swarm  # noqa: E402, F401
