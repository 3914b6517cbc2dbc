"""`composegen watch --install`: a systemd unit so the watcher survives reboots.

The unit runs the absolute composegen path with the stack directory, the project and the watch
options it was installed with. Every value is quoted for systemd's command-line syntax (double
quotes with C escapes, `%%` for a literal %, `$$` for a literal $) and a value holding a control
character is refused: a newline would end the line and start a directive of its own.

--notify's URL (a secret for a Slack webhook) is neither written into the unit (0644) nor on
the command line (`ps`): it goes into an EnvironmentFile= of mode 0600, and watch takes it
from $COMPOSEGEN_WATCH_NOTIFY when no --notify is given.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from composegen.errors import BadInputError, ComposegenError

UNIT_DIR = "etc/systemd/system"
_SAFE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
# the engine's cgroup driver (None: unknown, e.g. the engine is down)
CgroupDriver = Callable[[], "str | None"]

NOTIFY_ENV = "COMPOSEGEN_WATCH_NOTIFY"
ENV_DIR = "etc/composegen"
# a SIGTERM in the middle of a heal cancels its wait and backs out; give that time before SIGKILL
TIMEOUT_STOP = "5min"


def unit_name(project: str) -> str:
    if not _PROJECT.fullmatch(project) or len(project) > 200:
        raise BadInputError(
            f"project name {project!r} cannot name a systemd unit",
            "use lower-case letters, digits, - and _ (pass -p NAME)",
        )
    return f"composegen-watch-{project}.service"


def _refuse_control(value: str, what: str) -> None:
    if _CONTROL.search(value):
        shown = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), value)
        raise BadInputError(
            f"{what} {shown!r} holds a control character, which a systemd unit cannot carry"
        )


def _specifiers(value: str) -> str:
    return value.replace("%", "%%")


def quote_arg(value: str) -> str:
    """One word of ExecStart= as systemd reads it back to exactly `value`."""
    _refuse_control(value, "argument")
    value = _specifiers(value).replace("$", "$$")
    if _SAFE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def env_file(project: str) -> str:
    """Where the unit's EnvironmentFile= (--notify's URL) lives on the machine."""
    return f"/{ENV_DIR}/{unit_name(project).removesuffix('.service')}.env"


def env_text(url: str) -> str:
    """`COMPOSEGEN_WATCH_NOTIFY="URL"` as systemd's EnvironmentFile= reads it back to URL."""
    _refuse_control(url, "--notify URL")
    escaped = "".join("\\" + c if c in '"\\`$' else c for c in url)
    return f'{NOTIFY_ENV}="{escaped}"\n'


def _split_notify(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """ARGV without --notify's value (None where no --notify), and that value."""
    words, url = list(argv), None
    for i, w in enumerate(words):
        if w == "--notify" and i + 1 < len(words):
            url = words.pop(i + 1)
            break
    return words, url


def composegen_path() -> str:
    """The absolute path of the composegen command running now (what ExecStart must name)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "composegen" and argv0.exists():
        return str(argv0.resolve())
    found = shutil.which("composegen")
    if found:
        return str(Path(found).resolve())
    raise ComposegenError(
        "cannot find the composegen command on PATH for the unit's ExecStart",
        "install composegen (pip install .) so `composegen` is on PATH",
    )


def unit_text(directory: Path, project: str, argv: Sequence[str], *, exe: str | None = None) -> str:
    """The unit of `composegen watch -C DIRECTORY -p PROJECT ARGV...`."""
    name = unit_name(project)
    stack = Path(directory).resolve()
    _refuse_control(str(stack), "stack directory")
    program = exe or composegen_path()
    if not os.path.isabs(program):
        raise BadInputError(f"ExecStart needs an absolute path, not {program!r}")
    rest, url = _split_notify(argv)
    words = [program, "watch", "-C", str(stack), "-p", project, *rest]
    quoted = [quote_arg(w) for w in words]
    environment = ""
    if url is not None:
        _refuse_control(url, "--notify URL")
        # not `--notify ${VAR}`: systemd would put the URL on the command line, seen by `ps`
        del quoted[words.index("--notify", 6)]
        environment = (
            f"# --notify's URL is in {env_file(project)} (mode 0600), not in this file\n"
            f"EnvironmentFile={env_file(project)}\n"
        )
    exec_start = " ".join(quoted)
    workdir = _specifiers(str(stack))
    if workdir != workdir.strip():
        raise BadInputError(f"stack directory {str(stack)!r} starts or ends with a space")
    return (
        f"# {name}: written by `composegen watch --install`\n"
        "[Unit]\n"
        f"Description=composegen watch of stack {project} ({_specifiers(str(stack))})\n"
        "After=docker.service network-online.target\n"
        "Requires=docker.service\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"WorkingDirectory={workdir}\n"
        f"{environment}"
        f"ExecStart={exec_start}\n"
        f"TimeoutStopSec={TIMEOUT_STOP}\n"
        "Restart=on-failure\n"
        "RestartSec=10s\n"
        "# exit 2 is bad input (an option, a profile): restarting will not fix it\n"
        "RestartPreventExitStatus=2\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, check=False)


def _engine_cgroup_driver() -> str | None:
    from composegen.engine import docker as eng

    try:
        _, info = eng.engine_facts(eng.connect())
    except ComposegenError:
        return None
    driver = info.get("CgroupDriver")
    return str(driver) if driver else None


def _unlinked(dev_root: Path) -> set[str]:
    from composegen.doctor.engine import char_links, nvidia_nodes

    return nvidia_nodes(dev_root) - char_links(dev_root)


def check_reload(cgroup_driver: str | None, dev_root: Path) -> None:
    """doctor's cgroup check before `systemctl daemon-reload`: on the systemd cgroup driver
    without the /dev/char symlinks a reload takes the GPUs away from every running GPU
    container (nvidia-container-toolkit#48), so --install refuses."""
    from composegen.doctor.engine import cgroup_check

    check = cgroup_check(cgroup_driver, dev_root, 1)
    if check.status != "ok" and _unlinked(dev_root):
        raise ComposegenError(
            f"not running `systemctl daemon-reload` for --install: {check.detail}",
            f"{check.fix}, then install again (or install the unit yourself from "
            "`composegen watch --install --print` when no GPU container runs)",
        )


def install(
    directory: Path,
    project: str,
    argv: Sequence[str],
    print_only: bool,
    *,
    root: Path = Path("/"),
    run: Runner | None = None,
    exe: str | None = None,
    cgroup_driver: CgroupDriver | None = None,
) -> str:
    """With print_only: the unit text. Otherwise (after doctor's cgroup check: a daemon-reload
    must not take the GPUs from running containers) write --notify's URL into a 0600
    ROOT/etc/composegen/*.env, the unit under ROOT/etc/systemd/system, `systemctl
    daemon-reload` and `systemctl enable --now` it; returns what was done."""
    text = unit_text(directory, project, argv, exe=exe)
    if print_only:
        return text
    name = unit_name(project)
    if not (root / "run/systemd/system").is_dir():
        raise ComposegenError(
            f"systemd is not running on this machine (no {root / 'run/systemd/system'}): "
            f"cannot install {name}",
            "print the unit with `composegen watch --install --print` and install it where "
            "systemd runs, or start `composegen watch` from your own supervisor",
        )
    runner = run or _run
    if run is None and shutil.which("systemctl") is None:
        raise ComposegenError(f"systemctl is not on PATH: cannot install {name}")
    unit_dir = root / UNIT_DIR
    target = unit_dir / name
    if not os.access(unit_dir, os.W_OK):
        raise ComposegenError(
            f"{target}: permission denied", "run it as root: sudo composegen watch ... --install"
        )
    dev = root / "dev"
    if _unlinked(dev):  # only then is the engine asked for its cgroup driver
        check_reload((cgroup_driver or _engine_cgroup_driver)(), dev)
    from composegen.files import write_atomic

    _, url = _split_notify(argv)
    if url is not None:
        env = root / env_file(project).lstrip("/")
        env.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(env, env_text(url), 0o600)
    write_atomic(target, text, 0o644)
    for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", name]):
        done = runner(cmd)
        if done.returncode != 0:
            why = (done.stderr or done.stdout or "").strip().splitlines()
            raise ComposegenError(
                f"`{' '.join(cmd)}` failed (exit {done.returncode})"
                + (f": {why[-1]}" if why else ""),
                f"the unit is written at {target}; see `journalctl -u {name}`",
            )
    return f"wrote {target}; enabled and started {name} (systemctl enable --now)"
