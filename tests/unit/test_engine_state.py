"""The per-project lock and mode: where they live when the project directory is read-only."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from composegen.engine import state
from tests.conftest import ROOT

SHOW = (
    "import os, sys; from pathlib import Path; from composegen.engine import state; "
    "os.access = lambda p, m: not str(p).endswith('.composegen'); "
    "print(state._state_dir(Path(sys.argv[1])))"
)


def _fallback_dir(directory: Path, tmp: Path) -> str:
    """_state_dir in a fresh interpreter (each with its own random hash seed), as two
    composegen processes would run it, with the project's .composegen/ not writable."""
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONHASHSEED": "random"}
    done = subprocess.run(
        [sys.executable, "-c", SHOW, str(directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_two_processes_find_the_same_private_lock_directory(tmp_path: Path) -> None:
    project = tmp_path / "stack"
    project.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    first, second = _fallback_dir(project, tmp), _fallback_dir(project, tmp)
    assert first == second
    assert first.startswith(str(tmp / f"composegen-{os.getuid()}"))
    for d in (Path(first), Path(first).parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700


@pytest.mark.parametrize("problem", ["group-writable", "other-owner", "symlink"])
def test_a_fallback_directory_others_could_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(os, "access", lambda p, m: not str(p).endswith(".composegen"))
    base = tmp_path / f"composegen-{os.getuid()}"
    if problem == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        base.symlink_to(tmp_path / "elsewhere")
    else:
        base.mkdir(mode=0o700)
        if problem == "group-writable":
            base.chmod(0o770)
        else:
            if os.getuid() != 0:
                pytest.skip("giving a directory to another user needs root")
            os.chown(base, os.getuid() + 4242, -1)
    project = tmp_path / "stack"
    project.mkdir()
    with pytest.raises(state.StateDirError, match="not a directory of yours that only you"):
        state._state_dir(project)
