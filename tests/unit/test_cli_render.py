"""`composegen profiles`, `plan` and `render` as a user runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import fixture_path
from tests.unit.test_cli_detect import run_cli


def test_profiles_lists_all_with_fit(tmp_path: Path) -> None:
    inv = tmp_path / "inv.json"
    proc = run_cli(
        "profiles",
        "--json",
        "--inventory",
        str(fixture_path("nvidia-smi", "xml", "telegraf__3090-v13.xml")),
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {
        "rag-a100",
        "rma-shared",
        "zenglow-personas",
        "ollama-replicas",
        "ollama-pool",
    }
    # one RTX 3090 (24 GB): the shared hub fits; rag-a100 can only degrade
    assert rows["rma-shared"]["fits"] == "yes"
    assert rows["rag-a100"]["fits"] == "degraded"
    assert "on CPU" in rows["rag-a100"]["why"]
    assert not inv.exists()


def test_profiles_show_json_has_images() -> None:
    proc = run_cli("profiles", "show", "ollama-replicas", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["images"]["ollama"].startswith("ollama/ollama:")
    proc = run_cli("profiles", "show", "ollama-replicas", "--json", "--image", "ollama=local/x:1")
    assert json.loads(proc.stdout)["images"]["ollama"] == "local/x:1"


def test_plan_json_reference() -> None:
    proc = run_cli("plan", "--profile", "rag-a100", "--reference", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {s["name"]: s["gpus"] for s in data["services"]} == {
        "whisper": [0],
        "embeddings": [1],
        "llm": [2, 3],
        "ocr": [4],
    }
    assert data["spare_gpus"] == [5, 6, 7]


def test_plan_table() -> None:
    proc = run_cli("plan", "--profile", "zenglow-personas", "--reference")
    assert proc.returncode == 0, proc.stderr
    assert "leonardo" in proc.stdout and "jarvis" in proc.stdout
    assert "spare GPUs: none" in proc.stdout


def test_render_then_rerender_then_check(tmp_path: Path) -> None:
    out = tmp_path / "stack"
    first = run_cli("render", "--profile", "ollama-replicas", "--reference", "-o", str(out))
    assert first.returncode == 0, first.stderr
    assert "wrote 12 file(s)" in first.stdout
    compose = yaml.safe_load((out / "docker-compose.yml").read_text())
    assert compose["services"]["gateway"]["ports"] == ["127.0.0.1:8080:8080"]
    assert (out / ".env").stat().st_mode & 0o777 == 0o600
    assert os.access(out / "scripts" / "emergency-fallback.sh", os.X_OK)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_cli("render", "--profile", "ollama-replicas", "--reference", "-o", str(out))
    assert again.returncode == 0
    assert "wrote 0 file(s), 12 unchanged" in again.stdout
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    ok = run_cli("render", "--profile", "ollama-replicas", "--reference", "-o", str(out), "--check")
    assert ok.returncode == 0 and "up to date" in ok.stdout
    changed = run_cli(
        "render",
        "--profile",
        "ollama-replicas",
        "--reference",
        "-o",
        str(out),
        "--check",
        "--set",
        "tunables.OLLAMA_KEEP_ALIVE=1h",
    )
    assert changed.returncode == 1
    assert "-OLLAMA_KEEP_ALIVE=24h" in changed.stdout and "+OLLAMA_KEEP_ALIVE=1h" in changed.stdout


def test_hand_edit_is_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "stack"
    assert run_cli("render", "-P", "rma-shared", "--reference", "-o", str(out)).returncode == 0
    compose = out / "docker-compose.yml"
    edited = compose.read_text() + "# my note\n"
    compose.write_text(edited)
    refused = run_cli(
        "render",
        "-P",
        "rma-shared",
        "--reference",
        "-o",
        str(out),
        "--set",
        "tunables.OLLAMA_KEEP_ALIVE=9m",
    )
    assert refused.returncode == 2
    assert "edited by hand" in refused.stderr and "docker-compose.yml" in refused.stderr
    assert compose.read_text() == edited
    assert "OLLAMA_KEEP_ALIVE=2m" in (out / ".env").read_text()  # nothing else written either
    dry = run_cli(
        "render", "-P", "rma-shared", "--reference", "-o", str(out), "--force", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert f"  would save your edits of {compose} in docker-compose.yml.bak\n" in dry.stdout, (
        dry.stdout
    )
    assert not (out / "docker-compose.yml.bak").exists()
    forced = run_cli("render", "-P", "rma-shared", "--reference", "-o", str(out), "--force")
    assert forced.returncode == 0
    assert (out / "docker-compose.yml.bak").read_text() == edited
    assert "# my note" not in compose.read_text()
    # it said "kept .bak of docker-compose.yml.bak"
    assert "; your edits are saved in docker-compose.yml.bak\n" in forced.stdout, forced.stdout
    assert ".bak of" not in forced.stdout


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "stack"
    proc = run_cli("render", "-P", "zenglow-personas", "--reference", "-o", str(out), "--dry-run")
    assert proc.returncode == 0
    assert "would write 12 file(s)" in proc.stdout
    named = [
        ln.removeprefix("  would write ")
        for ln in proc.stdout.splitlines()
        if "  would write " in ln
    ]
    assert named == [
        str(out / p)
        for p in (
            ".env",
            "STACK.md",
            "docker-compose.yml",
            "fallback/docker-compose.cpu.yml",
            "fallback/nginx.cpu.conf",
            "monitoring/grafana/dashboards/composegen-watch.json",
            "monitoring/grafana/provisioning/dashboards/composegen.yml",
            "monitoring/grafana/provisioning/datasources/composegen.yml",
            "monitoring/prometheus/prometheus.yml",
            "nginx/nginx.conf",
            "scripts/emergency-fallback.sh",
            "scripts/healthcheck.sh",
        )
    ], proc.stdout
    assert not out.exists()


def test_bind_all_interfaces_warns(tmp_path: Path) -> None:
    proc = run_cli(
        "render", "-P", "zenglow-personas", "--reference", "-o", str(tmp_path), "--bind", "0.0.0.0"
    )
    assert proc.returncode == 0
    assert "warning: --bind 0.0.0.0" in proc.stderr
    assert "open to the network without authentication" in proc.stderr, proc.stderr
    compose = yaml.safe_load((tmp_path / "docker-compose.yml").read_text())
    assert compose["services"]["gateway"]["ports"] == ["0.0.0.0:8080:8080"]


@pytest.mark.parametrize(
    ("bind", "sets", "warns"),
    [
        ("192.168.10.5", (), True),  # one interface, but still the network
        ("0.0.0.0", ("--set", "gateway.api_key=" + "5e" * 32), False),
        ("127.0.0.1", (), False),
        ("::1", (), False),
    ],
)
def test_bind_without_api_key_warns(
    tmp_path: Path, bind: str, sets: tuple[str, ...], warns: bool
) -> None:
    proc = run_cli(
        "render",
        "-P",
        "zenglow-personas",
        "--reference",
        "-o",
        str(tmp_path),
        "--bind",
        bind,
        *sets,
    )
    assert proc.returncode == 0, proc.stderr
    assert ("without authentication" in proc.stderr) == warns, proc.stderr


def test_inventory_file_plans_that_host(tmp_path: Path) -> None:
    xml = fixture_path("nvidia-smi", "xml", "telegraf__dual_a5000-v13.xml")
    # --ignore-used: the fixture's GPUs are 91% and 70% in use (see test_used_memory.py)
    proc = run_cli(
        "plan", "-P", "zenglow-personas", "--inventory", str(xml), "--json", "--ignore-used"
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["pin_by"] == "uuid"
    assert {s["name"]: s["device_ids"] for s in data["services"]} == {
        "leonardo": ["GPU-12345678-aaaa-bbbb-cccc-0123456789ab"],
        "jarvis": ["GPU-12345678-aaaa-bbbb-cccc-0123456789cd"],
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-P", "nope", "--reference"], "unknown profile 'nope'"),
        (
            ["-P", "rag-a100", "--reference", "--set", "planner.headroom=x"],
            "planner.headroom: must be a number",
        ),
        (["-P", "rag-a100", "--reference", "--image", "bogus=x:1"], "has no image key 'bogus'"),
        (["-P", "rag-a100", "--reference", "--bind", "localhost"], "not an IP address"),
        (
            ["-P", "rag-a100", "--reference", "--inventory", "/nonexistent.json"],
            "exclude each other",
        ),
        (["-P", "rag-a100", "--inventory", "/nonexistent.json"], "/nonexistent.json: no such file"),
        (
            [
                "-P",
                "rag-a100",
                "--reference",
                "--set",
                "services.ocr.gpu.on_short=refuse",
                "--set",
                "services.ocr.gpu.count=9",
            ],
            "service ocr needs",
        ),
    ],
)
def test_render_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "stack"
    proc = run_cli("render", *args, "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
