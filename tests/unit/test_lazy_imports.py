"""`--help` must not import the heavy libraries: they load only in the commands that use them."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("docker", "jinja2", "httpx", "jsonschema", "rich", "pynvml", "yaml")


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_help_imports_nothing_heavy() -> None:
    loaded = _modules_after(
        "from composegen.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert "click" in loaded
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}


def test_detect_from_file_needs_no_docker_or_nvml() -> None:
    fixture = ROOT / "tests/fixtures/nvidia-smi/xml/telegraf__tesla-t4.xml"
    loaded = _modules_after(
        "from composegen.cli import main\n"
        f"try:\n    main(['detect', '--from', {str(fixture)!r}, '--json'])\n"
        "except SystemExit:\n    pass"
    )
    assert not {m for m in loaded if m.split(".")[0] in ("docker", "pynvml", "httpx", "jinja2")}
