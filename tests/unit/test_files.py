"""write_tree / check_tree / write_atomic on a real filesystem under tmp_path."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from composegen import files as files_mod
from composegen.errors import BadInputError, ComposegenError
from composegen.files import (
    MANIFEST,
    HandEditedError,
    OutFile,
    WriteResult,
    check_tree,
    write_atomic,
    write_tree,
)

ALL = ("scripts/healthcheck.sh", ".env", "docker-compose.yml", "nginx/nginx.conf")


def tree(compose: str = "services:\n  llm:\n    image: vllm\n") -> list[OutFile]:
    # Deliberately not in path order: the writer sorts.
    return [
        OutFile("scripts/healthcheck.sh", "#!/bin/sh\ncurl -fsS localhost:8000/health\n", 0o755),
        OutFile("docker-compose.yml", compose),
        OutFile(".env", "HF_TOKEN=secret\n", 0o600),
        OutFile("nginx/nginx.conf", "events {}\n"),
    ]


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under root → (mode, mtime_ns, content); directories get empty content."""
    out: dict[str, tuple[int, int, bytes]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if p.is_file() else b""
        out[p.relative_to(root).as_posix()] = (st.st_mode, st.st_mtime_ns, data)
    return out


def mode_of(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def temps(root: Path) -> list[Path]:
    return list(root.rglob(".*.tmp"))


def test_first_render_writes_all_and_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = write_tree(out, tree())
    assert result == WriteResult(written=tuple(sorted(ALL)), unchanged=(), backed_up=(), refused=())
    for f in tree():
        assert (out / f.path).read_text(encoding="utf-8") == f.text
    manifest_text = (out / MANIFEST).read_text(encoding="utf-8")
    manifest = json.loads(manifest_text)
    assert sorted(manifest["files"]) == sorted(ALL)
    assert manifest["files"][".env"]["mode"] == "0600"
    assert manifest_text == json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    assert not temps(out)


def test_modes_env_0600_scripts_0755(tmp_path: Path) -> None:
    write_tree(tmp_path, tree())
    assert mode_of(tmp_path / ".env") == 0o600
    assert mode_of(tmp_path / "scripts/healthcheck.sh") == 0o755
    assert mode_of(tmp_path / "docker-compose.yml") == 0o644


def test_second_identical_render_changes_nothing(tmp_path: Path) -> None:
    write_tree(tmp_path, tree())
    before = snapshot(tmp_path)
    result = write_tree(tmp_path, tree())
    assert result.written == ()
    assert result.unchanged == tuple(sorted(ALL))
    assert snapshot(tmp_path) == before  # content, mode and st_mtime_ns, manifest included


def test_render_is_deterministic_byte_for_byte(tmp_path: Path) -> None:
    write_tree(tmp_path / "a", tree())
    write_tree(tmp_path / "b", list(reversed(tree())))
    a = {k: (v[0], v[2]) for k, v in snapshot(tmp_path / "a").items()}
    b = {k: (v[0], v[2]) for k, v in snapshot(tmp_path / "b").items()}
    assert a == b


def test_changed_text_is_rewritten(tmp_path: Path) -> None:
    write_tree(tmp_path, tree())
    env_before = (tmp_path / ".env").stat().st_mtime_ns
    new = "services:\n  llm:\n    image: vllm:v2\n"
    result = write_tree(tmp_path, tree(new))
    assert result.written == ("docker-compose.yml",)
    assert "docker-compose.yml" not in result.unchanged
    assert (tmp_path / "docker-compose.yml").read_text(encoding="utf-8") == new
    assert (tmp_path / ".env").stat().st_mtime_ns == env_before
    manifest = json.loads((tmp_path / MANIFEST).read_text(encoding="utf-8"))
    import hashlib

    assert (
        manifest["files"]["docker-compose.yml"]["sha256"]
        == hashlib.sha256(new.encode()).hexdigest()
    )


def test_mode_change_alone_is_rewritten(tmp_path: Path) -> None:
    write_tree(tmp_path, tree())
    os.chmod(tmp_path / ".env", 0o644)
    result = write_tree(tmp_path, tree())
    assert result.written == (".env",)
    assert mode_of(tmp_path / ".env") == 0o600


def test_hand_edit_refused_and_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_tree(out, tree())
    (out / "nginx/nginx.conf").write_text("events {}\n# mine\n", encoding="utf-8")
    before = snapshot(tmp_path)
    changed = [
        *tree("services: {}\n")[:3],  # docker-compose.yml changes too ...
        OutFile("nginx/nginx.conf", "events { worker_connections 64; }\n"),
    ]
    with pytest.raises(BadInputError) as info:
        write_tree(out, changed)
    msg = info.value.one_line()
    assert msg == (
        f"{out / 'nginx/nginx.conf'} was edited by hand since the last render "
        "(use --force to overwrite it; a .bak copy is kept)"
    )
    assert info.value.exit_code == 2
    assert isinstance(info.value, HandEditedError)
    assert info.value.result.refused == ("nginx/nginx.conf",)
    # ... but stays old: nothing at all was written, no .bak, no temp file.
    assert snapshot(tmp_path) == before
    assert not temps(tmp_path)


def test_several_hand_edits_are_all_named(tmp_path: Path) -> None:
    write_tree(tmp_path, tree())
    (tmp_path / ".env").write_text("HF_TOKEN=mine\n", encoding="utf-8")
    (tmp_path / "docker-compose.yml").write_text("x: 1\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="were edited by hand") as info:
        write_tree(tmp_path, tree("y: 2\n"))
    assert str(tmp_path / ".env") in info.value.message
    assert str(tmp_path / "docker-compose.yml") in info.value.message


def test_unknown_existing_file_counts_as_hand_made(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text("mine: true\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="edited by hand"):
        write_tree(tmp_path, tree())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docker-compose.yml"]


def test_unknown_existing_file_with_same_text_is_adopted(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(tree()[1].text, encoding="utf-8")
    os.chmod(tmp_path / "docker-compose.yml", 0o644)
    result = write_tree(tmp_path, tree())
    assert "docker-compose.yml" in result.unchanged
    assert "docker-compose.yml" in json.loads((tmp_path / MANIFEST).read_text())["files"]


def test_force_keeps_a_bak_and_writes(tmp_path: Path) -> None:
    write_tree(tmp_path, tree())
    (tmp_path / "docker-compose.yml").write_bytes(b"hand: edited\n\xff\n")  # not even UTF-8
    (tmp_path / "docker-compose.yml.bak").write_text("older bak\n", encoding="utf-8")
    (tmp_path / ".env").write_text("HF_TOKEN=mine\n", encoding="utf-8")
    new = "services: {}\n"
    result = write_tree(tmp_path, tree(new), force=True)
    assert result.written == (".env", "docker-compose.yml")
    assert result.backed_up == (".env.bak", "docker-compose.yml.bak")
    assert result.refused == ()
    assert (tmp_path / "docker-compose.yml.bak").read_bytes() == b"hand: edited\n\xff\n"
    assert (tmp_path / "docker-compose.yml").read_text(encoding="utf-8") == new
    assert (tmp_path / ".env.bak").read_text(encoding="utf-8") == "HF_TOKEN=mine\n"
    assert mode_of(tmp_path / ".env.bak") == 0o600
    assert mode_of(tmp_path / ".env") == 0o600
    # The next render is clean again.
    assert write_tree(tmp_path, tree(new)).written == ()


def test_check_tree(tmp_path: Path) -> None:
    missing = check_tree(tmp_path / "nowhere", tree())
    assert len(missing) == 4
    assert all("new file mode" in d for d in missing)
    write_tree(tmp_path, tree())
    assert check_tree(tmp_path, tree()) == []
    diffs = check_tree(tmp_path, tree("services:\n  llm:\n    image: sglang\n"))
    assert len(diffs) == 1
    assert "--- a/docker-compose.yml" in diffs[0]
    assert "+++ b/docker-compose.yml" in diffs[0]
    assert "-    image: vllm\n" in diffs[0]
    assert "+    image: sglang\n" in diffs[0]
    os.chmod(tmp_path / "scripts/healthcheck.sh", 0o644)
    (diff,) = check_tree(tmp_path, tree())
    assert "old mode 0644\nnew mode 0755\n" in diff


def test_check_tree_missing_newline_and_empty_file(tmp_path: Path) -> None:
    write_tree(tmp_path, [OutFile("a.txt", "one\n")])
    (diff,) = check_tree(tmp_path, [OutFile("a.txt", "one\ntwo")])
    assert "+two\n\\ No newline at end of file\n" in diff
    (diff,) = check_tree(tmp_path, [OutFile("empty", "")])
    assert diff.startswith("new file mode 0644")


def test_dry_run_touches_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert write_tree(out, tree(), dry_run=True).written == tuple(sorted(ALL))
    assert list(tmp_path.iterdir()) == []
    write_tree(out, tree())
    (out / ".env").write_text("HF_TOKEN=mine\n", encoding="utf-8")
    before = snapshot(tmp_path)
    forced = write_tree(out, tree("new: 1\n"), force=True, dry_run=True)
    assert forced.written == (".env", "docker-compose.yml")
    assert forced.backed_up == (".env.bak",)
    with pytest.raises(BadInputError, match="edited by hand"):
        write_tree(out, tree("new: 1\n"), dry_run=True)
    assert snapshot(tmp_path) == before


def test_env_is_never_wider_than_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, int] = {}
    real_replace = os.replace

    def spying_replace(src: Any, dst: Any) -> None:
        seen[Path(dst).name] = stat.S_IMODE(os.stat(src).st_mode)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spying_replace)
    write_tree(tmp_path, tree())
    assert seen[".env"] == 0o600
    assert seen["healthcheck.sh"] == 0o755


def test_out_dir_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "out"
    f.write_text("x", encoding="utf-8")
    with pytest.raises(BadInputError, match="out: is not a directory"):
        write_tree(f, tree())
    with pytest.raises(BadInputError, match="is not a directory"):
        check_tree(f, tree())


def test_parent_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "nginx").write_text("x", encoding="utf-8")
    with pytest.raises(BadInputError, match="nginx"):
        write_tree(tmp_path, tree())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nginx"]


def test_unwritable_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:  # root ignores chmod: simulate the refusal instead

        def denied(src: Any, dst: Any) -> None:
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(os, "replace", denied)
    else:
        out.chmod(0o500)
    try:
        with pytest.raises(BadInputError, match="permission denied") as info:
            write_tree(out, tree())
        assert str(out) in info.value.message
    finally:
        out.chmod(0o755)
    assert not temps(out)


@pytest.mark.parametrize("target", ["fsync", "write"])
def test_disk_full_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    write_tree(tmp_path, tree())
    before = snapshot(tmp_path)
    calls = {"n": 0}

    def full(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    if target == "fsync":
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                calls["n"] += 1
                if calls["n"] >= 2:  # the first file (.env) goes through, the next one fails
                    full()
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    else:
        monkeypatch.setattr(files_mod.os, "fdopen", lambda *a, **k: _FullFile())

    new = [OutFile(f.path, f.text + "# v2\n", f.mode) for f in tree()]
    with pytest.raises(ComposegenError, match="No space left") as info:
        write_tree(tmp_path, new)
    assert not isinstance(info.value, BadInputError)
    assert info.value.exit_code == 1
    assert not temps(tmp_path)
    monkeypatch.undo()
    # Files already replaced hold the new text, the rest the old: none is half-written.
    after = snapshot(tmp_path)
    replaced = {".env"} if target == "fsync" else set()
    for f, nf in zip(tree(), new, strict=True):
        want = nf if f.path in replaced else f
        assert after[f.path][2] == want.text.encode()
        assert after[f.path][0] == before[f.path][0]
    # Once the disk has room again, the same render completes.
    again = write_tree(tmp_path, new)
    assert set(again.written) | set(again.unchanged) == set(ALL)


def test_failure_midway_records_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(tmp_path, tree())
    real = files_mod.write_bytes_atomic

    def failing(path: str | Path, data: bytes, mode: int = 0o644) -> None:
        if Path(path).name == "docker-compose.yml":
            raise ComposegenError(f"{path}: cannot write it: No space left on device")
        real(path, data, mode)

    monkeypatch.setattr(files_mod, "write_bytes_atomic", failing)
    v2 = [OutFile(f.path, f.text + "# v2\n", f.mode) for f in tree()]
    with pytest.raises(ComposegenError, match="No space left"):
        write_tree(tmp_path, v2)
    monkeypatch.undo()
    assert (tmp_path / ".env").read_text(encoding="utf-8") == "HF_TOKEN=secret\n# v2\n"
    # .env was recorded in the manifest, so a render of other inputs does not call it hand-made.
    v3 = [OutFile(f.path, f.text + "# v3\n", f.mode) for f in tree()]
    assert write_tree(tmp_path, v3).written == tuple(sorted(ALL))


class _FullFile:
    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_write_atomic_keeps_signature(tmp_path: Path) -> None:
    p = tmp_path / "inventory.json"
    write_atomic(p, "{}\n")
    write_atomic(str(p), "{}\n", mode=0o600)
    assert p.read_text(encoding="utf-8") == "{}\n"
    assert mode_of(p) == 0o600
    with pytest.raises(BadInputError, match="does not exist"):
        write_atomic(tmp_path / "no/such/dir/x", "")
    assert not temps(tmp_path)


@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "../escape", "nginx/../../x", "a\\b", "", "./a", "a//b", ".composegen/x"]
)
def test_bad_paths_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(BadInputError):
        write_tree(tmp_path, [*tree(), OutFile(bad, "x\n")])
    with pytest.raises(BadInputError):
        check_tree(tmp_path, [OutFile(bad, "x\n")])
    assert list(tmp_path.iterdir()) == []


def test_duplicate_path_rejected(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="rendered twice"):
        write_tree(tmp_path, [OutFile("a", "1\n"), OutFile("a", "2\n")])


def test_symlinked_dir_escaping_the_tree_is_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "nginx").symlink_to(outside)
    with pytest.raises(BadInputError, match="outside"):
        write_tree(out, tree())
    assert list(outside.iterdir()) == []


def test_corrupt_manifest(tmp_path: Path) -> None:
    write_tree(tmp_path, tree())
    (tmp_path / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(BadInputError, match="not a composegen manifest"):
        write_tree(tmp_path, tree("new: 1\n"))
    result = write_tree(tmp_path, tree("new: 1\n"), force=True)
    assert result.backed_up == ("docker-compose.yml.bak",)
    assert json.loads((tmp_path / MANIFEST).read_text(encoding="utf-8"))["version"] == 1
