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
      composegen plan --profile rag-a100     which GPU would run which service
      composegen render --profile rag-a100 -o stack    write the stack into stack/

    On a host with no GPU, plan and render use the profile's reference hardware.

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
    from composegen import detection

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
    """
    ctx.ensure_object(dict)
    ctx.obj["profiles_dirs"] = profiles_dirs
    if ctx.invoked_subcommand is not None:
        return
    from composegen import app

    if inventory:
        from composegen.detection import load_inventory

        inv = load_inventory(inventory)
    else:
        from composegen.detection import detect_local

        inv = detect_local(with_host=False)
    fits = app.rank(inv, profiles_dirs)
    if as_json:
        click.echo(
            _json(
                [
                    {"name": f.name, "fits": f.fits, "why": f.why, "description": f.description}
                    for f in fits
                ]
            ),
            nl=False,
        )
        return
    from rich.table import Table

    table = Table(title=f"profiles for {inv.source}" + ("" if inv.gpus else " (no GPU)"))
    for col in ("profile", "fits", "why", "description"):
        table.add_column(col)
    for f in fits:
        style = {"yes": "green", "degraded": "yellow", "no": "red"}[f.fits]
        table.add_row(f.name, f"[{style}]{f.fits}[/]", f.why, f.description[:70])
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
@click.option(
    "--profile",
    "-p",
    "profile_name",
    required=True,
    metavar="NAME",
    help="Profile name (see `composegen profiles`) or a path to a profile YAML.",
)
@INVENTORY
@REFERENCE
@PROFILES_DIR
@click.option(
    "--pin-by",
    type=click.Choice(["uuid", "index"]),
    default=None,
    help="Pin GPUs by UUID (default when the inventory has unique UUIDs) or index.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@_overrides
def plan(
    profile_name: str,
    inventory: str | None,
    reference: bool,
    profiles_dirs: tuple[str, ...],
    pin_by: str | None,
    as_json: bool,
    sets: tuple[str, ...],
    values_files: tuple[str, ...],
    images: tuple[str, ...],
) -> None:
    """Show which GPU runs which service of a profile, with VRAM used/free and the spares."""
    from composegen import app
    from composegen.profiles import Overrides

    built = app.build(
        profile_name,
        extra_dirs=profiles_dirs,
        overrides=Overrides(sets, values_files, images),
        inventory=inventory,
        reference=reference,
        pin_by=_pin(pin_by),
    )
    if as_json:
        data = built.plan.to_dict()
        data["inventory"] = built.target.note
        click.echo(_json(data), nl=False)
        return
    from composegen.show import print_plan

    print_plan(built.plan, built.target.note, _console())


@cli.command(context_settings=CONTEXT)
@click.option(
    "--profile",
    "-p",
    "profile_name",
    required=True,
    metavar="NAME",
    help="Profile name (see `composegen profiles`) or a path to a profile YAML.",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    default=".",
    show_default=True,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Directory to write the stack into.",
)
@INVENTORY
@REFERENCE
@PROFILES_DIR
@_overrides
@click.option(
    "--pin-by",
    type=click.Choice(["uuid", "index"]),
    default=None,
    help="Pin GPUs by UUID (default when the inventory has unique UUIDs) or index.",
)
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
def render(
    profile_name: str,
    out_dir: str,
    inventory: str | None,
    reference: bool,
    profiles_dirs: tuple[str, ...],
    sets: tuple[str, ...],
    values_files: tuple[str, ...],
    images: tuple[str, ...],
    pin_by: str | None,
    bind: str,
    check: bool,
    force: bool,
    dry_run: bool,
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
    unless --force.
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
    built = app.build(
        profile_name,
        extra_dirs=profiles_dirs,
        overrides=Overrides(sets, values_files, images),
        inventory=inventory,
        reference=reference,
        pin_by=_pin(pin_by),
        bind=str(addr),
    )
    out = Path(out_dir)
    if check:
        diffs = app.check(out, built.files)
        if diffs:
            for d in diffs:
                click.echo(d, nl=False)
            click.echo(f"composegen: {out} differs from what would be rendered", err=True)
            sys.exit(1)
        click.echo(f"{out}: up to date")
        return
    if addr.is_unspecified:
        click.echo(
            f"composegen: warning: --bind {bind} publishes the gateway on every network "
            "interface; Docker's published ports bypass host firewalls such as ufw",
            err=True,
        )
    result = app.write(out, built.files, force=force, dry_run=dry_run)
    verb = "would write" if dry_run else "wrote"
    click.echo(f"{built.plan.profile} for {built.target.note}")
    for inst in built.plan.instances:
        where = f"GPU {','.join(map(str, inst.gpus))}" if inst.gpus else "CPU"
        click.echo(f"  {inst.name:<24} {where}")
    if built.plan.spare_gpus:
        click.echo(f"  spare GPUs: {', '.join(map(str, built.plan.spare_gpus))}")
    for name, why in built.plan.dropped:
        click.echo(f"  dropped {name}: {why}")
    click.echo(
        f"{verb} {len(result.written)} file(s), {len(result.unchanged)} unchanged in {out}"
        + (f"; kept .bak of {', '.join(result.backed_up)}" if result.backed_up else "")
    )


def _pin(value: str | None) -> PinBy | None:
    return "uuid" if value == "uuid" else ("index" if value == "index" else None)


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"


def _fail(exc: ComposegenError) -> NoReturn:
    click.echo(f"composegen: error: {exc.one_line()}", err=True)
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
        click.echo("composegen: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("composegen: interrupted", err=True)
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
