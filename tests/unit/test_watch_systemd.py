"""`composegen watch --install`: the unit's text (quoting read back by systemd's rules and checked
by `systemd-analyze verify`), --print, the write into a root directory, and the error where
systemd does not run (as on this machine)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from composegen.errors import BadInputError, ComposegenError
from composegen.watch import systemd
from composegen.watch.systemd import install, quote_arg, unit_text

EXE = "/usr/local/bin/composegen"
ARGV = ["--heal", "--interval", "5s", "--metrics", "127.0.0.1:9464"]
REQUIRE_TOOLS_ENV = "COMPOSEGEN_REQUIRE_TOOLS"

_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def systemd_words(line: str) -> list[str]:
    """ExecStart= split as systemd.service(5) "Command lines" says: specifiers (`%%` is %)
    first, then words split on whitespace, a word in "..." or '...' kept whole with C escapes,
    then `$$` is a literal $. Written from the manual, not from the code under test."""
    line = line.replace("%%", "\0")
    assert "%" not in line, f"an unescaped specifier in {line!r}"
    line = line.replace("\0", "%")
    words: list[str] = []
    i = 0
    while i < len(line):
        if line[i].isspace():
            i += 1
            continue
        word: list[str] = []
        quote = line[i] if line[i] in "\"'" else None
        if quote:
            i += 1
        while i < len(line):
            c = line[i]
            if quote is not None and c == quote:
                i += 1
                assert i == len(line) or line[i].isspace(), "a quote must end its word"
                break
            if quote is None and c.isspace():
                break
            if c == "\\":
                nxt = line[i + 1]
                word.append(_ESCAPES.get(nxt, nxt))
                i += 2
                continue
            word.append(c)
            i += 1
        else:
            assert quote is None, f"unbalanced quote in {line!r}"
        text = "".join(word)
        assert "$" not in text.replace("$$", ""), f"an unescaped $ in {text!r}"
        words.append(text.replace("$$", "$"))
    return words


def exec_start(text: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


def test_unit_text(tmp_path: Path) -> None:
    text = unit_text(tmp_path, "rag-a100", ARGV, exe=EXE)
    lines = text.splitlines()
    assert "[Unit]" in lines and "[Service]" in lines and "[Install]" in lines
    assert "After=docker.service network-online.target" in lines
    assert "Requires=docker.service" in lines
    assert f"WorkingDirectory={tmp_path.resolve()}" in lines
    assert "Restart=on-failure" in lines
    assert "RestartPreventExitStatus=2" in lines
    assert "WantedBy=multi-user.target" in lines
    assert exec_start(text) == (
        f"{EXE} watch -C {tmp_path.resolve()} -p rag-a100 --heal --interval 5s "
        "--metrics 127.0.0.1:9464"
    )


HOSTILE = [
    "https://ntfy.sh/alerts?tpl=1&m={{.text}}",
    'a "quoted" word',
    "it's",
    "back\\slash\\",
    "100%",
    "%n%i",
    "$HOME ${PATH} $$",
    ";",
    "",
    "-dash",
    "snowman ☃",
    "spaces  inside ",
]


@pytest.mark.parametrize("arg", HOSTILE)
def test_every_argument_reads_back_exactly(tmp_path: Path, arg: str) -> None:
    text = unit_text(tmp_path, "s", ["--set", arg], exe=EXE)
    words = systemd_words(exec_start(text))
    assert words == [EXE, "watch", "-C", str(tmp_path.resolve()), "-p", "s", "--set", arg]


def test_a_directory_with_odd_characters(tmp_path: Path) -> None:
    stack = tmp_path / 'my stacks 100% "new"'
    stack.mkdir()
    text = unit_text(stack, "s", [], exe=EXE)
    assert systemd_words(exec_start(text))[3] == str(stack.resolve())
    assert f"WorkingDirectory={str(stack.resolve()).replace('%', '%%')}" in text.splitlines()


@pytest.mark.parametrize("arg", ["line\nExecStartPre=/bin/rm -rf /", "nul\x00", "esc\x1b[0m"])
def test_control_characters_are_refused(tmp_path: Path, arg: str) -> None:
    with pytest.raises(BadInputError, match="control character") as err:
        unit_text(tmp_path, "s", ["--notify", arg], exe=EXE)
    assert "\n" not in err.value.one_line()


def test_a_directory_with_a_newline_is_refused(tmp_path: Path) -> None:
    stack = tmp_path / "a\nb"
    stack.mkdir()
    with pytest.raises(BadInputError, match="control character"):
        unit_text(stack, "s", [], exe=EXE)


@pytest.mark.parametrize("project", ["Rag", "../x", "a b", "", "-x", "a%n"])
def test_a_project_that_cannot_name_a_unit(tmp_path: Path, project: str) -> None:
    with pytest.raises(BadInputError, match="cannot name a systemd unit"):
        unit_text(tmp_path, project, [], exe=EXE)


def test_the_program_must_be_absolute(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="absolute path"):
        unit_text(tmp_path, "s", [], exe="composegen")


def test_composegen_path_is_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Path(sys.executable).parent / "composegen"
    if not script.exists():
        pytest.fail(f"{script}: the test environment installs the composegen command")
    monkeypatch.chdir(script.parent)
    monkeypatch.setattr(sys, "argv", ["composegen", "watch", "--install"])  # run by a relative path
    assert systemd.composegen_path() == str(script.resolve())
    monkeypatch.setattr(sys, "argv", ["/usr/lib/python3/pytest"])
    monkeypatch.setenv("PATH", str(script.parent))
    assert systemd.composegen_path() == str(script.resolve())
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ComposegenError, match="cannot find the composegen command"):
        systemd.composegen_path()


def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
            pytest.fail("systemd-analyze is not installed")
        pytest.skip("systemd-analyze is not installed")
    stack = tmp_path / "stack 100%"
    stack.mkdir()
    unit = tmp_path / "composegen-watch-rag-a100.service"
    unit.write_text(unit_text(stack, "rag-a100", ["--notify", *HOSTILE], exe="/bin/true"))
    done = subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # the check is not vacuous: an unbalanced quote fails it
    unit.write_text(unit.read_text().replace('"a \\"quoted\\" word"', '"a'))
    done = subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0


# --- install ------------------------------------------------------------------------------------


class Systemctl:
    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(cmd))
        if self.fail and self.fail in cmd:
            return subprocess.CompletedProcess(list(cmd), 1, "", "Failed to enable unit: nope\n")
        return subprocess.CompletedProcess(list(cmd), 0, "", "")


def booted_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "run/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


def test_print_only_returns_the_text_and_writes_nothing(tmp_path: Path) -> None:
    root = booted_root(tmp_path)
    run = Systemctl()
    text = install(tmp_path, "rag-a100", ARGV, True, root=root, run=run, exe=EXE)
    assert text == unit_text(tmp_path, "rag-a100", ARGV, exe=EXE)
    assert list((root / "etc/systemd/system").iterdir()) == []
    assert run.calls == []


def test_install_writes_and_enables_the_unit(tmp_path: Path) -> None:
    root = booted_root(tmp_path)
    run = Systemctl()
    done = install(tmp_path, "rag-a100", ARGV, False, root=root, run=run, exe=EXE)
    unit = root / "etc/systemd/system/composegen-watch-rag-a100.service"
    assert unit.read_text(encoding="utf-8") == unit_text(tmp_path, "rag-a100", ARGV, exe=EXE)
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert run.calls == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "composegen-watch-rag-a100.service"],
    ]
    assert str(unit) in done


def test_install_without_systemd_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    run = Systemctl()
    with pytest.raises(ComposegenError, match="systemd is not running") as err:
        install(tmp_path, "rag-a100", ARGV, False, root=root, run=run, exe=EXE)
    assert "--install --print" in err.value.one_line()
    assert list((root / "etc/systemd/system").iterdir()) == []
    assert run.calls == []


def test_install_on_this_machine(tmp_path: Path) -> None:
    """No systemd runs here: the real path fails with the same error and writes nothing."""
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd runs on this machine")
    before = (
        set(Path("/etc/systemd/system").iterdir())
        if Path("/etc/systemd/system").is_dir()
        else set()
    )
    with pytest.raises(ComposegenError, match="systemd is not running"):
        install(tmp_path, "rag-a100", ARGV, False, exe=EXE)
    after = (
        set(Path("/etc/systemd/system").iterdir())
        if Path("/etc/systemd/system").is_dir()
        else set()
    )
    assert after == before


def test_a_failing_systemctl_is_reported(tmp_path: Path) -> None:
    root = booted_root(tmp_path)
    run = Systemctl(fail="enable")
    with pytest.raises(ComposegenError, match=r"exit 1\): Failed to enable unit: nope") as err:
        install(tmp_path, "rag-a100", ARGV, False, root=root, run=run, exe=EXE)
    assert "journalctl -u composegen-watch-rag-a100.service" in err.value.one_line()


def test_quote_arg() -> None:
    assert quote_arg("5s") == "5s"
    assert quote_arg("a b") == '"a b"'
    assert quote_arg("50%") == '"50%%"'
    assert quote_arg("$X") == '"$$X"'


# --- the --notify URL stays out of the unit ---------------------------------------------------

SECRET = 'https://hooks.slack.example/services/T0/B0/s3cr$t"`\\x'


def test_the_notify_url_goes_through_a_0600_environment_file(tmp_path: Path) -> None:
    root = booted_root(tmp_path)
    argv = ["--interval", "5s", "--notify", SECRET, "--heal"]
    install(tmp_path, "rag-a100", argv, False, root=root, run=Systemctl(), exe=EXE)
    unit = (root / "etc/systemd/system/composegen-watch-rag-a100.service").read_text("utf-8")
    assert SECRET not in unit and "s3cr" not in unit
    line = exec_start(unit)
    assert "--notify" not in line and "$" not in line  # nor in `ps`: watch reads the env
    assert line.split()[-3:] == ["--interval", "5s", "--heal"]
    assert "EnvironmentFile=/etc/composegen/composegen-watch-rag-a100.env" in unit.splitlines()
    env = root / "etc/composegen/composegen-watch-rag-a100.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    # read back as systemd's EnvironmentFile= does: in "...", a backslash escapes " \ ` $
    text = env.read_text("utf-8")
    key, _, value = text.rstrip("\n").partition("=")
    assert key == "COMPOSEGEN_WATCH_NOTIFY" and value[0] == value[-1] == '"'
    out, i, body = [], 0, value[1:-1]
    while i < len(body):
        if body[i] == "\\" and body[i + 1] in '"\\`$':
            i += 1
        out.append(body[i])
        i += 1
    assert "".join(out) == SECRET


def test_the_unit_gives_a_heal_time_to_back_out_on_stop(tmp_path: Path) -> None:
    text = unit_text(tmp_path, "s", [], exe=EXE)
    assert "TimeoutStopSec=5min" in text.splitlines()


# --- doctor's cgroup check before daemon-reload ---------------------------------------------------


def gpu_dev(root: Path, linked: bool) -> None:
    (root / "dev/char").mkdir(parents=True)
    (root / "dev/nvidia0").touch()
    (root / "dev/nvidiactl").touch()
    if linked:
        os.symlink("../nvidia0", root / "dev/char/195:0")
        os.symlink("../nvidiactl", root / "dev/char/195:255")


def test_install_refuses_a_daemon_reload_that_takes_the_gpus(tmp_path: Path) -> None:
    root = booted_root(tmp_path)
    gpu_dev(root, linked=False)
    run = Systemctl()
    with pytest.raises(ComposegenError, match="daemon-reload") as err:
        install(
            tmp_path, "s", [], False, root=root, run=run, exe=EXE, cgroup_driver=lambda: "systemd"
        )
    assert "create-dev-char-symlinks" in err.value.one_line()
    assert run.calls == []
    assert list((root / "etc/systemd/system").iterdir()) == []


@pytest.mark.parametrize(("driver", "linked"), [("systemd", True), ("cgroupfs", False)])
def test_install_reloads_where_the_gpus_are_safe(tmp_path: Path, driver: str, linked: bool) -> None:
    root = booted_root(tmp_path)
    gpu_dev(root, linked=linked)
    run = Systemctl()
    install(tmp_path, "s", [], False, root=root, run=run, exe=EXE, cgroup_driver=lambda: driver)
    assert run.calls[0] == ["systemctl", "daemon-reload"]
