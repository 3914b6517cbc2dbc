"""Per-project state beside the compose file: the lock that keeps two `up` (or `up` and
`fallback`) from interleaving, and the mode (gpu / cpu-fallback) that `status` shows."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from composegen.errors import ComposegenError


class LockedError(ComposegenError):
    pass


class StateDirError(ComposegenError):
    pass


def _state_dir(directory: Path) -> Path:
    """`.composegen/` beside the compose file; where that is not writable, a directory of
    this user's own under the temp directory, named by a stable digest of the project's
    directory (every process finds the same lock) and writable by this user only."""
    d = directory / ".composegen"
    try:
        d.mkdir(exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:24]
    base = _private_dir(Path(tempfile.gettempdir()) / f"composegen-{os.getuid()}")
    return _private_dir(base / digest)


def _private_dir(path: Path) -> Path:
    """`path` as a directory (created 0700) that is this user's and that nobody else may
    write: another user's directory (or a link) there could swap the lock or the state."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise StateDirError(f"{path}: cannot use it for composegen's state: {exc}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise StateDirError(
            f"{path}: not a directory of yours that only you can write "
            f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); composegen keeps "
            "its lock and state there when the project directory is read-only",
            "remove it, or make the project directory writable so .composegen/ is used",
        )
    return path


@contextlib.contextmanager
def project_lock(directory: Path, project: str, what: str) -> Iterator[None]:
    path = _state_dir(directory) / f"{project}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise LockedError(
                f"project {project} is busy: {holder}",
                "wait for it to finish (or stop it), then run the command again",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"composegen {what} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the flock


def read_mode(directory: Path, project: str) -> dict[str, Any]:
    path = _state_dir(directory) / f"{project}.state.json"
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    except (OSError, ValueError):
        pass
    return {"mode": "gpu", "since": None, "why": None}


def write_mode(directory: Path, project: str, mode: str, why: str) -> None:
    from composegen.files import write_atomic

    data = {"mode": mode, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "why": why}
    write_atomic(_state_dir(directory) / f"{project}.state.json", json.dumps(data) + "\n")
