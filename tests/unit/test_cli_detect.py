"""`composegen detect` as a user runs it: tables, --json, --save, --from, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from composegen.cli import main
from composegen.inventory import Inventory
from tests.conftest import ROOT, fixture_path
from tests.fake_nvml import FakeNvml

Install = Callable[[str], FakeNvml]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "composegen", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def call(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_no_gpu_host_exits_zero_and_says_why(
    nvml_scenario: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    nvml_scenario("no_driver")
    code, out, _ = call(["detect", "--no-docker"], capsys)
    assert code == 0
    assert "no NVIDIA GPU found: the NVIDIA kernel driver is not loaded" in " ".join(out.split())
    assert "CPU:" in out and "RAM:" in out
    assert "docker: not probed" in out


def test_table_shows_every_gpu_and_health(
    nvml_scenario: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    nvml_scenario("lost_gpu")
    code, out, _ = call(["detect", "--no-docker"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    assert flat.count("NVIDIA A100-SXM-64GB") == 2
    assert "lost" in flat and "GPU_IS_LOST" in flat
    assert "driver 550.54.15" in flat and "CUDA 12.4" in flat


def test_json_and_save_round_trip(
    nvml_scenario: Install, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    nvml_scenario("a100_8x80")
    saved = tmp_path / "inv.json"
    code, out, _ = call(["detect", "--no-docker", "--json", "--save", str(saved)], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["schema"] == "composegen/inventory/v1"
    assert data["driver_version"] == "550.54.15"
    assert [g["index"] for g in data["gpus"]] == list(range(8))
    assert {"index", "name", "uuid", "memory_total_mib", "health"} <= set(data["gpus"][0])
    assert saved.read_text() == out
    # what was saved reads back identically
    code, again, _ = call(["detect", "--from", str(saved), "--json"], capsys)
    assert code == 0 and again == out
    assert Inventory.from_json(again).to_json() == again


def test_from_xml_table(capsys: pytest.CaptureFixture[str]) -> None:
    xml = fixture_path("nvidia-smi", "xml", "telegraf__dual_a5000-v13.xml")
    code, out, _ = call(["detect", "--from", str(xml)], capsys)
    assert code == 0
    flat = " ".join(out.split())
    assert flat.count("NVIDIA RTX A5000") == 2
    assert "driver 590.44.01" in flat
    assert "host: not recorded" in flat


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    xml = fixture_path("nvidia-smi", "xml", "telegraf__tesla-t4.xml").read_bytes()
    cases = {
        "missing": (tmp / "nope.xml", "no such file"),
        "empty": (tmp / "empty.xml", "is empty"),
        "truncated": (tmp / "cut.xml", "truncated"),
        "binary": (tmp / "blob.bin", "binary"),
        "not-nvidia": (tmp / "README.md", "not an nvidia-smi output"),
        "directory": (tmp / "adir", "is a directory"),
        "bad-json": (tmp / "broken.json", "not valid JSON"),
        "other-json": (tmp / "other.json", "schema"),
        "wrong-type": (tmp / "typed.json", "memory_total_mib"),
    }
    (tmp / "empty.xml").write_text("  \n")
    (tmp / "cut.xml").write_bytes(xml[: len(xml) // 2])
    (tmp / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (tmp / "README.md").write_text("# My project\n\nNothing to see here.\n")
    (tmp / "adir").mkdir()
    (tmp / "broken.json").write_text('{"schema": "composegen/inventory/v1", ')
    (tmp / "other.json").write_text('{"name": "something else"}')
    (tmp / "typed.json").write_text(
        json.dumps(
            {
                "schema": "composegen/inventory/v1",
                "source": "x",
                "gpus": [{"index": 0, "name": "A", "memory_total_mib": "lots"}],
            }
        )
    )
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "truncated",
        "binary",
        "not-nvidia",
        "directory",
        "bad-json",
        "other-json",
        "wrong-type",
    ],
)
def test_bad_from_file_is_one_line_exit_2(case: str, tmp_path: Path) -> None:
    path, expected = _bad_inputs(tmp_path)[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    proc = run_cli("detect", "--from", str(path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0]
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = run_cli("--debug", "detect", "--from", str(tmp_path / "nope.json"))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "InventoryFileError" in proc.stderr


def test_save_into_missing_directory_fails_cleanly(
    nvml_scenario: Install, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    nvml_scenario("single_8gb")
    target = tmp_path / "no" / "such" / "dir" / "inv.json"
    code, _, err = call(["detect", "--no-docker", "--save", str(target)], capsys)
    assert code == 2
    assert "does not exist" in err and str(target) in err
    assert not target.parent.exists()


def test_help_explains_sources() -> None:
    proc = run_cli("detect", "--help")
    assert proc.returncode == 0
    for word in ("--json", "--save", "--from", "nvidia-smi -q -x", "--query-gpu"):
        assert word in proc.stdout
