"""The only writer of files: atomic (temp file + rename), never leaves a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from composegen.errors import BadInputError, ComposegenError


def write_atomic(path: str | Path, text: str, mode: int = 0o644) -> None:
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise BadInputError(f"{target}: directory {parent} does not exist")
    if target.is_dir():
        raise BadInputError(f"{target}: is a directory")
    fd = -1
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fd = -1
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        tmp = ""
    except PermissionError:
        raise BadInputError(f"{target}: permission denied", "choose a writable path") from None
    except OSError as exc:
        raise ComposegenError(f"{target}: cannot write it: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
