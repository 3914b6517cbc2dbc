from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

sys.path.insert(0, str(ROOT))

from tests.fake_nvml import SCENARIOS, FakeNvml  # noqa: E402


def fixture_path(*parts: str) -> Path:
    """A path under tests/fixtures (kept in the repository, see tests/fixtures/SOURCES.md);
    fail (never skip) when it is missing."""
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"{p} is missing from the checkout")
    return p


@pytest.fixture
def nvml_scenario(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], FakeNvml]]:
    """Install a named fake-NVML scenario behind composegen.detect.nvml."""
    from composegen.detect import nvml

    def install(name: str) -> FakeNvml:
        fake = FakeNvml(SCENARIOS[name]())
        monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
        monkeypatch.setattr(nvml, "_nvml", None)
        return fake

    yield install
    nvml.shutdown()


@pytest.fixture
def no_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH without nvidia-smi (the CI machine has none anyway; be explicit)."""
    monkeypatch.setenv(
        "PATH",
        os.pathsep.join(
            d
            for d in os.environ.get("PATH", "").split(os.pathsep)
            if not (Path(d) / "nvidia-smi").exists()
        ),
    )
