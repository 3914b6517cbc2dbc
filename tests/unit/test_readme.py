"""The README's examples are what the commands really print."""

from __future__ import annotations

import re

from tests.conftest import ROOT
from tests.unit.test_cli_detect import run_cli


def _example(start: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index(start) :]
    return block[: block.index("```")].splitlines()


def test_lint_example_matches_the_fixture_line_for_line() -> None:
    lines = _example("$ composegen lint -f ")
    args = lines[0].removeprefix("$ composegen ").split()
    shown = [ln for ln in lines[1:] if ln and ln != "..."]
    assert len(shown) >= 3, lines
    done = run_cli(*args, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    printed = done.stdout.splitlines()
    for line in shown:
        assert line in printed, f"README shows a line lint does not print:\n{line}"
    # the line numbers shown are those of the file in the repository, not of its upstream copy
    assert all(re.match(r"tests/fixtures/lint/\S+:(\d+:)? ", ln) for ln in shown)
