"""Fallback without an engine: the failover planner, GPU id parsing, --auto's decision and
--dry-run (which must change nothing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from composegen import app, profiles
from composegen import failover_policy as policy
from composegen.errors import BadInputError
from composegen.inventory import Inventory
from composegen.plan import PlanOptions, make_plan
from tests.fake_nvml import FakeNvml
from tests.stack_checks import inventory_file
from tests.unit.test_cli_detect import call

Install = Callable[[str], FakeNvml]


def lost(inv: Inventory, *ids: int) -> Inventory:
    return replace(
        inv,
        gpus=tuple(
            replace(g, health="lost", health_reason="t") if g.index in ids else g for g in inv.gpus
        ),
    )


def test_failover_moves_to_a_spare_and_keeps_the_rest() -> None:
    prof = profiles.load("rag-a100")
    inv = prof.reference_inventory()
    base = make_plan(inv, prof)
    new = make_plan(lost(inv, 0), prof, PlanOptions(previous=base))
    assert {i.name: list(i.gpus) for i in new.instances} == {
        "whisper": [5],
        "embeddings": [1],
        "llm": [2, 3],
        "ocr": [4],
    }
    assert new.spare_gpus == (6, 7)


def test_failover_drops_a_replica_and_nothing_else() -> None:
    prof = profiles.load("ollama-replicas")
    inv = prof.reference_inventory()
    base = make_plan(inv, prof)
    new = make_plan(lost(inv, 2), prof, PlanOptions(previous=base))
    assert [(i.name, i.gpus, i.port) for i in new.instances] == [
        ("ollama-0", (0,), 39001),
        ("ollama-1", (1,), 39002),
        ("ollama-3", (3,), 39004),
    ]


def test_failover_personas_share_when_vram_allows() -> None:
    prof = profiles.load("zenglow-personas")
    big = Inventory(
        source="t",
        gpus=(
            replace(prof.reference_inventory().gpus[0], memory_total_mib=16376),  # 4080 SUPER
            prof.reference_inventory().gpus[1],
        ),
    )
    base = make_plan(big, prof)
    new = make_plan(lost(big, 1), prof, PlanOptions(previous=base))
    assert {i.name: list(i.gpus) for i in new.instances} == {"leonardo": [0], "jarvis": [0]}


def test_failover_goes_to_cpu_only_when_nothing_fits() -> None:
    prof = profiles.load("zenglow-personas")
    inv = prof.reference_inventory()
    new = make_plan(lost(inv, 1), prof, PlanOptions(previous=make_plan(inv, prof)))
    assert {i.name: i.device for i in new.instances} == {"leonardo": "gpu", "jarvis": "cpu"}


def test_parse_gpu_ids() -> None:
    inv = Inventory(source="t", gpus=profiles.load("rag-a100").reference_inventory().gpus)
    inv = replace(inv, gpus=tuple(replace(g, uuid=f"GPU-{g.index}") for g in inv.gpus))
    assert policy.parse_gpu_ids("3,0, GPU-5", inv) == (0, 3, 5)
    for bad, msg in (("9", "GPU 9 is not in"), ("GPU-x", "no GPU with UUID"), ("1,,2", "empty")):
        with pytest.raises(BadInputError, match=msg):
            policy.parse_gpu_ids(bad, inv)


def test_failed_from_live_by_uuid_and_missing() -> None:
    prof = profiles.load("ollama-replicas")
    rec = prof.reference_inventory()
    rec = replace(rec, gpus=tuple(replace(g, uuid=f"GPU-{g.index}") for g in rec.gpus))
    # GPU 1 fell off the bus: gone from the list, the others renumbered
    live = replace(
        rec,
        gpus=tuple(replace(g, index=n) for n, g in enumerate(g for g in rec.gpus if g.index != 1)),
    )
    assert policy.failed_from_live(rec, live) == (1,)
    assert policy.failed_from_live(rec, lost(rec, 3)) == (3,)


def _rendered(tmp: Path, profile: str, scenario: str) -> Path:
    out = tmp / "stack"
    built = app.build(profile, inventory=inventory_file(tmp, scenario))
    app.write(out, built.files, force=False, dry_run=False)
    assert built.inputs is not None
    app.save_inputs(out, built.inputs)
    return out


def test_auto_dry_run_finds_lost_gpus(
    nvml_scenario: Install, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _rendered(tmp_path, "ollama-replicas", "a100_4x64")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    nvml_scenario("lost_gpu")  # the same 4x A100-64GB with GPUs 2 and 3 lost
    code, text, err = call(["fallback", "-C", str(out), "--auto", "--dry-run"], capsys)
    assert code == 0, err
    assert "GPUs reported failed: 2, 3" in text
    assert "would move ollama-2: removed" in text and "would move ollama-3: removed" in text
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_auto_without_nvml_means_cpu(
    nvml_scenario: Install, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _rendered(tmp_path, "zenglow-personas", "consumer_pair")
    nvml_scenario("no_driver")
    code, text, err = call(["fallback", "-C", str(out), "--auto", "--dry-run"], capsys)
    assert code == 0, err
    assert "moving to CPU" in text
    assert "would start on CPU: leonardo-cpu" in text
    assert "would stop GPU service: jarvis" in text


def test_auto_all_healthy_does_nothing(
    nvml_scenario: Install, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _rendered(tmp_path, "ollama-replicas", "a100_4x64")
    nvml_scenario("a100_4x64")
    code, text, _ = call(["fallback", "-C", str(out), "--auto"], capsys)
    assert code == 0 and "nothing to do" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpu", "--restore"], "choose exactly one"),
        ([], "choose exactly one"),
        (["--gpu-failed", "7"], "GPU 7 is not in the stack's inventory"),
        (["--gpu-failed", "abc"], "no GPU with UUID 'abc'"),
    ],
)
def test_fallback_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = _rendered(tmp_path, "ollama-replicas", "a100_4x64")
    code, _, err = call(["fallback", "-C", str(out), "--dry-run", *args], capsys)
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_fallback_on_a_directory_not_rendered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docker-compose.yml").write_text("services:\n  a: {image: i:1}\n")
    code, _, err = call(["fallback", "-C", str(tmp_path), "--gpu-failed", "0", "--dry-run"], capsys)
    assert code == 2 and "was not rendered by composegen" in err
