"""A non-editable wheel, installed in a fresh venv, works from outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

from tests.conftest import ROOT, fixture_path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("composegen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "composegen/_profiles/README.md" in names
    assert "composegen/_templates/README.md" in names
    assert "composegen/py.typed" in names
    for shipped in sorted((ROOT / "profiles").glob("*.yaml")):
        assert f"composegen/_profiles/{shipped.name}" in names
    for template in sorted((ROOT / "templates").glob("*.j2")):
        assert f"composegen/_templates/{template.name}" in names
    assert "composegen/schemas/profile.schema.json" in names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    inst = _run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        cwd=tmp_path,
    )
    assert inst.returncode == 0, inst.stderr

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    exe = env_dir / "bin" / "composegen"
    helped = _run([str(exe), "--help"], cwd=outside)
    assert helped.returncode == 0, helped.stderr
    assert "detect" in helped.stdout

    fixture = fixture_path("nvidia-smi", "xml", "telegraf__dual_a5000-v13.xml")
    out = _run([str(exe), "detect", "--from", str(fixture), "--json"], cwd=outside)
    assert out.returncode == 0, out.stderr
    inv = json.loads(out.stdout)
    assert inv["schema"] == "composegen/inventory/v1"
    assert [g["name"] for g in inv["gpus"]] == ["NVIDIA RTX A5000", "NVIDIA RTX A5000"]
    assert inv["driver_version"] == "590.44.01"

    # the README's main job, from the installed package's profiles and templates
    stack = outside / "stack"
    env = {**os.environ, "COMPOSEGEN_CACHE_DIR": str(tmp_path / "cache")}
    rendered = subprocess.run(
        [str(exe), "render", "--profile", "rag-a100", "-o", str(stack)],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert (stack / "docker-compose.yml").is_file() and (stack / "STACK.md").is_file()
    assert "whisper" in rendered.stdout

    # the module form works too, and the data comes from the installed package, not ROOT
    where = _run(
        [str(py), "-c", "from composegen.resources import profiles_dir; print(profiles_dir())"],
        cwd=outside,
    )
    assert where.returncode == 0, where.stderr
    assert str(env_dir) in where.stdout
    mod = _run([str(py), "-m", "composegen", "--version"], cwd=outside)
    assert mod.returncode == 0 and "composegen" in mod.stdout
