"""`composegen watch` without Click: the checks of its options (bad input before anything
starts), the options a systemd unit repeats, and the run (one step with --once, else until
SIGTERM / SIGINT)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from composegen import app
from composegen.engine import failover
from composegen.errors import BadInputError
from composegen.watch.loop import Watcher, WatchOptions


def check_stack(directory: Path) -> None:
    if not (directory / app.STATE_FILE).is_file():
        raise BadInputError(
            f"{directory}: no {app.STATE_FILE}: not a stack rendered by composegen",
            "render it with `composegen render --profile NAME -o DIR`, then `composegen up -C DIR`",
        )


def check_options(options: WatchOptions) -> None:
    """Bad input is said before anything starts (exit 2)."""
    if options.interval_s <= 0:
        raise BadInputError("--interval: must be more than 0", "e.g. --interval 5s")
    if options.restore_after_s is not None and options.restore_after_s <= 0:
        # what parse_duration says of `--restore-after 0`: a hold-down of 0 is no hold-down
        raise BadInputError("--restore-after: must be more than 0", "e.g. --restore-after 5m")
    if options.inventory is not None and not Path(options.inventory).is_file():
        raise BadInputError(
            f"--inventory {options.inventory}: no such file",
            "pass a file from `composegen detect --save` (or any file `detect --from` reads)",
        )
    if options.notify is not None:
        from composegen.watch.events import check_url

        check_url(options.notify)
    elif notify_url(options) is not None:
        from composegen.watch.events import check_url
        from composegen.watch.systemd import NOTIFY_ENV

        check_url(str(notify_url(options)), f"${NOTIFY_ENV}")


def notify_url(options: WatchOptions) -> str | None:
    """--notify, else $COMPOSEGEN_WATCH_NOTIFY (what the systemd unit passes it by: from a 0600
    EnvironmentFile=, so the URL, a secret for Slack, is neither in the unit nor in `ps`)."""
    import os

    from composegen.watch.systemd import NOTIFY_ENV

    return options.notify or os.environ.get(NOTIFY_ENV) or None
    if options.metrics is not None:
        from composegen.watch.metrics import parse_addr

        parse_addr(options.metrics)


def unit_args(options: WatchOptions, interval: str, restore_after: str | None) -> list[str]:
    """The options of this watch command as the systemd unit runs it (after `watch -C DIR -p
    NAME`): without --install and --print, the inventory file's path absolute (the unit runs
    in the stack's directory)."""
    out = ["--interval", interval]
    out += ["--heal"] if options.heal else []
    inventory = str(Path(options.inventory).resolve()) if options.inventory else None
    for flag, value in (
        ("--metrics", options.metrics),
        ("--notify", options.notify),
        ("--inventory", inventory),
        ("--restore-after", restore_after),
    ):
        if value:
            out += [flag, value]
    for item in options.sets:
        out += ["--set", item]
    return out


def run_watch(directory: Path, project: str | None, options: WatchOptions, io: failover.Io) -> int:
    """`composegen watch` without Click: with --once one step (exit 1 when it saw a critical
    event, else 0); otherwise until SIGTERM or SIGINT, then everything closed (exit 0)."""
    import signal

    options = replace(options, notify=notify_url(options))
    watcher = Watcher(directory, project, options, io)
    if options.once:
        try:
            _, events = watcher.step(time.time())
        finally:
            watcher.close()
        return 1 if any(e.level == "critical" for e in events) else 0
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        watcher.run(stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
