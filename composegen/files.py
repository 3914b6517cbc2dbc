"""The only writer of files: atomic (temp file + rename), never leaves a half-written file.

`write_tree` is the one writer behind `composegen render`: it checks every file first, then
writes in path order, keeps hand edits unless forced (then a .bak is kept), leaves unchanged
files untouched and records what it wrote in `.composegen/manifest.json`.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from composegen.errors import BadInputError, ComposegenError

MANIFEST = ".composegen/manifest.json"
_MANIFEST_VERSION = 1


def write_atomic(path: str | Path, text: str, mode: int = 0o644) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), mode)


def write_bytes_atomic(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to a temp file beside `path`, fsync, chmod, then rename it over `path`.

    mkstemp creates the temp file 0o600 and the chmod happens before the rename, so the target
    never exists with a mode wider than both 0o600 and `mode`, even for an instant.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        if parent.exists():
            raise BadInputError(f"{target}: {parent} is not a directory")
        raise BadInputError(f"{target}: directory {parent} does not exist")
    if target.is_dir():
        raise BadInputError(f"{target}: is a directory")
    if target.exists() and not target.is_file():
        # A device, FIFO or socket (/dev/stdout, /dev/full): write into it as a shell redirect
        # would. Renaming a temp file over it would replace the device node itself.
        _write_in_place(target, data)
        return
    fd = -1
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
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
    _fsync_dir(parent)


def _write_in_place(target: Path, data: bytes) -> None:
    try:
        fd = os.open(target, os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except PermissionError:
        raise BadInputError(f"{target}: permission denied", "choose a writable path") from None
    except OSError as exc:
        raise ComposegenError(f"{target}: cannot write it: {exc.strerror or exc}") from None


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; best effort (not every filesystem lets a directory be fsynced)."""
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@dataclass(frozen=True)
class OutFile:
    path: str  # relative, posix: "docker-compose.yml", "nginx/nginx.conf", ".env", ...
    text: str
    mode: int = 0o644  # .env gets 0o600, scripts 0o755


@dataclass(frozen=True)
class WriteResult:
    written: tuple[str, ...]  # created or changed
    unchanged: tuple[str, ...]
    backed_up: tuple[str, ...]  # .bak files made (with force, over hand edits)
    refused: tuple[str, ...]  # hand-edited files left alone (only on HandEditedError.result)


class HandEditedError(BadInputError):
    """Files edited by hand since the last render, and no --force: nothing was written."""

    def __init__(self, message: str, hint: str, result: WriteResult) -> None:
        super().__init__(message, hint)
        self.result = result


@dataclass(frozen=True)
class _Plan:
    file: OutFile
    data: bytes
    action: str  # "unchanged" | "write" | "edited"
    old: bytes | None  # on-disk content, None when the file does not exist
    old_mode: int | None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"{out_dir}: is not a directory", "choose a directory for the output")


def _validate(files: Sequence[OutFile]) -> list[OutFile]:
    seen: set[str] = set()
    for f in files:
        p = f.path
        pure = PurePosixPath(p)
        if not p or "\\" in p or "\0" in p or pure.is_absolute() or ".." in pure.parts:
            raise BadInputError(f"{p!r}: an output path must be relative and stay inside the tree")
        if str(pure) != p or pure.parts[0] == ".composegen":
            raise BadInputError(f"{p!r}: not a normalized output path (or a reserved one)")
        if p in seen:
            raise BadInputError(f"{p}: rendered twice")
        if not 0 <= f.mode <= 0o7777:
            raise BadInputError(f"{p}: bad file mode {f.mode:o}")
        seen.add(p)
    return sorted(files, key=lambda f: f.path)


def _read(target: Path) -> tuple[bytes, int] | None:
    """(content, permission bits) of a regular file, None when it does not exist."""
    try:
        st = target.stat()
        if not stat.S_ISREG(st.st_mode):
            raise BadInputError(f"{target}: exists and is not a regular file")
        return target.read_bytes(), stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise BadInputError(f"{target}: a parent of it is not a directory") from None
    except PermissionError:
        raise BadInputError(f"{target}: permission denied", "choose a readable path") from None
    except OSError as exc:
        raise ComposegenError(f"{target}: cannot read it: {exc.strerror or exc}") from None


def _load_manifest(out_dir: Path, force: bool) -> dict[str, dict[str, str]]:
    path = out_dir / MANIFEST
    found = _read(path)
    if found is None:
        return {}
    try:
        doc = json.loads(found[0].decode("utf-8"))
        entries = doc["files"]
        ok = isinstance(entries, dict) and all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in entries.values()
        )
        if not ok:
            raise ValueError("bad entries")
        return {str(k): {str(a): str(b) for a, b in v.items()} for k, v in entries.items()}
    except (ValueError, KeyError, TypeError):
        if force:  # every differing file then counts as edited and gets a .bak
            return {}
        raise BadInputError(
            f"{path}: not a composegen manifest", "delete it, or use --force to overwrite"
        ) from None


def _plan(out_dir: Path, files: list[OutFile], manifest: dict[str, dict[str, str]]) -> list[_Plan]:
    root = out_dir.resolve()
    plans: list[_Plan] = []
    for f in files:
        target = out_dir / f.path
        if not target.parent.resolve().is_relative_to(root):
            raise BadInputError(f"{target}: leads outside {out_dir} through a symlink")
        try:
            data = f.text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInputError(f"{target}: the rendered text is not valid UTF-8") from None
        found = _read(target)
        if found is None:
            plans.append(_Plan(f, data, "write", None, None))
            continue
        old, old_mode = found
        entry = manifest.get(f.path)
        if old == data and old_mode == f.mode:
            action = "unchanged"
        elif entry is not None:
            action = "write" if _sha256(old) == entry.get("sha256") else "edited"
        else:  # a file composegen did not write: hand-made unless it already says the same
            action = "write" if old == data else "edited"
        plans.append(_Plan(f, data, action, old, old_mode))
    return plans


def _manifest_text(out_dir: Path, old: dict[str, dict[str, str]], done: Sequence[_Plan]) -> str:
    entries = {p: e for p, e in old.items() if (out_dir / p).is_file()}
    for plan in done:
        entries[plan.file.path] = {"mode": f"{plan.file.mode:04o}", "sha256": _sha256(plan.data)}
    doc = {"files": entries, "version": _MANIFEST_VERSION}
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


def _write_manifest(out_dir: Path, text: str) -> None:
    path = out_dir / MANIFEST
    found = _read(path)
    if found is not None and found[0] == text.encode("utf-8"):
        return
    _mkdir(path.parent)
    write_atomic(path, text)


def _mkdir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise BadInputError(f"{directory}: permission denied", "choose a writable path") from None
    except (FileExistsError, NotADirectoryError):
        raise BadInputError(f"{directory}: exists and is not a directory") from None
    except OSError as exc:
        raise ComposegenError(f"{directory}: cannot create it: {exc.strerror or exc}") from None


def write_tree(
    out_dir: Path, files: Sequence[OutFile], *, force: bool = False, dry_run: bool = False
) -> WriteResult:
    """Render `files` under `out_dir`; see the module docstring. Deterministic, path order.

    Raises HandEditedError (a BadInputError) before writing anything when a file was edited
    by hand since the last render and `force` is off; with `dry_run` nothing is touched, but
    the result (or that error) is what a real run would give.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    ordered = _validate(files)
    manifest = _load_manifest(out_dir, force)
    plans = _plan(out_dir, ordered, manifest)

    unchanged = tuple(p.file.path for p in plans if p.action == "unchanged")
    edited = [p for p in plans if p.action == "edited"]
    if edited and not force:
        names = ", ".join(str(out_dir / p.file.path) for p in edited)
        one = len(edited) == 1
        result = WriteResult(
            written=(),
            unchanged=unchanged,
            backed_up=(),
            refused=tuple(p.file.path for p in edited),
        )
        raise HandEditedError(
            f"{names} {'was' if one else 'were'} edited by hand since the last render",
            f"use --force to overwrite {'it; a .bak copy is' if one else 'them; .bak copies are'}"
            " kept",
            result,
        )
    result = WriteResult(
        written=tuple(p.file.path for p in plans if p.action != "unchanged"),
        unchanged=unchanged,
        backed_up=tuple(f"{p.file.path}.bak" for p in edited),
        refused=(),
    )
    if dry_run:
        return result

    _mkdir(out_dir)
    done = [p for p in plans if p.action == "unchanged"]
    try:
        for plan in plans:
            if plan.action == "unchanged":
                continue
            target = out_dir / plan.file.path
            _mkdir(target.parent)
            if plan.action == "edited" and plan.old is not None:
                old_mode = 0o600 if plan.old_mode is None else plan.old_mode
                bak_mode = old_mode & plan.file.mode
                write_bytes_atomic(target.with_name(target.name + ".bak"), plan.old, bak_mode)
            write_bytes_atomic(target, plan.data, plan.file.mode)
            done.append(plan)
    except BaseException:
        # Record what did get written, so the next render does not take it for a hand edit.
        with contextlib.suppress(Exception):
            _write_manifest(out_dir, _manifest_text(out_dir, manifest, done))
        raise
    _write_manifest(out_dir, _manifest_text(out_dir, manifest, done))
    return result


def _diff_lines(lines: list[str]) -> str:
    out: list[str] = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def check_tree(out_dir: Path, files: Sequence[OutFile]) -> list[str]:
    """One unified diff per file that differs from what would be rendered; [] if up to date.

    A missing file is diffed against empty text; a mode difference is reported as a line.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    diffs: list[str] = []
    for f in _validate(files):
        found = _read(out_dir / f.path)
        new = f.text
        if found is None:
            head, old, fromfile = [f"new file mode {f.mode:04o}\n"], "", "/dev/null"
        else:
            old = found[0].decode("utf-8", errors="replace")
            fromfile = f"a/{f.path}"
            mode_differs = found[1] != f.mode
            head = (
                [f"old mode {found[1]:04o}\n", f"new mode {f.mode:04o}\n"] if mode_differs else []
            )
            if old == new and not head:
                continue
        body = difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=fromfile,
            tofile=f"b/{f.path}",
        )
        diffs.append("".join(head) + _diff_lines(list(body)))
    return diffs


# --- bounded reading of input files (profiles, compose files, inventories) ------------------


class TooLargeError(OSError):
    """The file holds more than the reader's cap (or has no end: a device like /dev/zero)."""


def read_bounded(path: str | Path, limit: int) -> bytes:
    """The file's bytes, at most `limit`: a file (or a device) that holds more raises
    TooLargeError before more than limit + 1 bytes are read. Other OSErrors pass through."""
    with Path(path).open("rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise TooLargeError(f"{path}: larger than {limit} bytes")
    return data


def non_string_key(
    node: object, path: tuple[object, ...] = ()
) -> tuple[tuple[object, ...], object] | None:
    """The first mapping key that is not a string in a loaded YAML tree (YAML also allows
    numbers, booleans and null), with the path to it; None when every key is a string."""
    if isinstance(node, dict):
        for k, v in node.items():
            if not isinstance(k, str):
                return path, k
            found = non_string_key(v, (*path, k))
            if found is not None:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = non_string_key(v, (*path, i))
            if found is not None:
                return found
    return None
