"""Command line: parse options, call one function, print. No logic lives here.

Heavy libraries (rich, docker, jinja2, httpx, jsonschema, pynvml) are imported inside the
commands that need them, so `composegen --help` starts fast.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from composegen import __version__
from composegen.errors import ComposegenError

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
      composegen detect --from gpus.xml      the same for another host's saved nvidia-smi output

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
