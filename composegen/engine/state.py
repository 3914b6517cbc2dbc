"""Per-project state beside the compose file: the lock that keeps two `up` (or `up` and
`fallback`) from interleaving, and the mode (gpu / cpu-fallback) that `status` shows."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from composegen.errors import ComposegenError


class LockedError(ComposegenError):
    pass


def _state_dir(directory: Path) -> Path:
    d = directory / ".composegen"
    try:
        d.mkdir(exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    fallback = Path("/tmp") / f"composegen-{os.getuid()}" / str(abs(hash(str(directory))))
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


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
