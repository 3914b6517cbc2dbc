"""STACK.md says what changed for an operator: tiers by marketed size, `up` during a CPU
fallback, and where the API key lives (issue 9's "done when")."""

from __future__ import annotations

from composegen import app
from composegen.profiles import Overrides

KEY = "9b1c0e7d5a3f24681357902468ace0bd"  # 32 hex characters


def _stack_md(name: str, *sets: str) -> str:
    built = app.build(name, reference=True, overrides=Overrides(sets=sets))
    return {f.path: f.text for f in built.files}["STACK.md"]


def test_pool_stack_md_states_the_tiers_by_marketed_size() -> None:
    text = " ".join(_stack_md("ollama-pool").split())
    assert "VRAM tiers (smaller: 1, 16 GB and more: 2, 24 GB and more: 3)" in text
    assert "at least 92% of a tier's size" in text
    assert "16376 MiB" in text


def test_a_profile_without_tiers_says_nothing_of_them() -> None:
    assert "VRAM tiers" not in _stack_md("zenglow-personas")


def test_stack_md_says_up_refuses_during_cpu_fallback() -> None:
    text = " ".join(_stack_md("rma-shared").split())
    assert "While the stack runs its CPU fallback, `composegen up` refuses" in text
    assert "`composegen fallback --restore` returns to the GPUs" in text


def test_stack_md_says_the_key_is_only_in_0600_files() -> None:
    text = " ".join(_stack_md("rma-shared", f"gateway.api_key={KEY}").split())
    assert "both mode 0600, and nowhere else" in text
    assert "`.composegen/render.json` records only that a key is set" in text
    assert KEY not in text
