"""The one bounded reader and the one key checker that profiles, compose files and inventories
share (composegen/files.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from composegen.files import TooLargeError, non_string_key, read_bounded


def test_read_bounded_stops_at_the_cap_even_on_a_device(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 4096)
    assert read_bounded(f, 4096) == b"x" * 4096
    with pytest.raises(TooLargeError, match="larger than 4095 bytes"):
        read_bounded(f, 4095)
    with pytest.raises(TooLargeError):
        read_bounded("/dev/zero", 1 << 20)  # no size, no end
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing", 10)


def test_non_string_key_finds_the_first_and_its_path() -> None:
    assert non_string_key({"a": [{"b": 1}, {"c": {"d": 2}}]}) is None
    assert non_string_key({"a": [{"b": 1}, {"c": {3: 2}}]}) == (("a", 1, "c"), 3)
    assert non_string_key({None: 1}) == ((), None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("up", "-f", "/dev/zero"), "/dev/zero: larger than 8388608 bytes"),
        (("plan", "--profile", "/dev/zero", "--reference"), "/dev/zero: larger than"),
        (("plan", "--profile", "rag-a100", "--inventory", "/dev/zero"), "too large"),
    ],
)
def test_every_reader_is_bounded(args: tuple[str, ...], message: str) -> None:
    from tests.unit.test_cli_detect import run_cli

    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_compose_and_profile_keys_checked_alike(tmp_path: Path) -> None:
    from composegen.engine.compose import ComposeFileError, load_project
    from composegen.profiles import ProfileError, _check_keys

    (tmp_path / "docker-compose.yml").write_text(
        "services:\n  a:\n    image: i\n    labels: {1: x}\n"
    )
    with pytest.raises(ComposeFileError, match=r"services\.a\.labels: key 1 must be a string"):
        load_project(tmp_path / "docker-compose.yml")
    with pytest.raises(ProfileError, match="key 1 must be a string"):
        _check_keys({"services": [{"labels": {1: "x"}}]}, "p.yaml")
