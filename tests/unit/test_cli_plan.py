"""`plan`, `render` and `profiles` through the CLI: VRAM tiers on real card sizes, model
alternatives, memory other processes use, and one hardware rule for a host with no GPU."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from composegen.inventory import Gpu, Inventory
from tests.conftest import fixture_path
from tests.fake_nvml import FakeNvml
from tests.unit.test_cli_detect import call, run_cli

Install = Callable[[str], FakeNvml]
A5000_XML = ("nvidia-smi", "xml", "telegraf__dual_a5000-v13.xml")


def inventory_file(tmp_path: Path, *cards: tuple[str, int]) -> Path:
    """A saved inventory (`detect --save` format) of cards with their real memory.total."""
    inv = Inventory(
        source="nvml",
        gpus=tuple(
            Gpu(
                index=i,
                name=name,
                uuid=f"GPU-{i:08x}-5a5a-4b4b-8c8c-0123456789ab",
                memory_total_mib=mib,
                memory_used_mib=0,
                memory_free_mib=mib,
            )
            for i, (name, mib) in enumerate(cards)
        ),
    )
    path = tmp_path / "inventory.json"
    path.write_text(inv.to_json())
    return path


def test_pool_on_8_16_24_48_gb_cards_gives_1_2_3_3(tmp_path: Path) -> None:
    inv = inventory_file(
        tmp_path,
        ("NVIDIA GeForce RTX 2070", 8192),  # xml/telegraf__dual_2070-v13.xml
        ("NVIDIA GeForce RTX 4080 SUPER", 16376),  # csv/...rtx-4080-super...csv
        ("NVIDIA RTX A5000", 24564),  # xml/telegraf__dual_a5000-v13.xml
        ("NVIDIA RTX A6000", 49140),  # issue 9
    )
    proc = run_cli("plan", "--profile", "ollama-pool", "--inventory", str(inv), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [len(g["services"]) for g in data["gpus"]] == [1, 2, 3, 3]
    table = run_cli("plan", "--profile", "ollama-pool", "--inventory", str(inv))
    assert table.returncode == 0, table.stderr
    assert "ollama-3, ollama-4, ollama-5" in table.stdout  # the 24564 MiB card's three


def test_replicas_on_one_8_gb_card_run_a_model_that_fits_on_the_gpu(
    nvml_scenario: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    nvml_scenario("single_8gb")  # an RTX 3070, 8192 MiB
    code, out, err = call(["plan", "--profile", "ollama-replicas", "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["inventory"] == "this host"
    (svc,) = data["services"]
    assert svc["device"] == "gpu" and svc["gpus"] == [0]
    assert svc["models"] == ["mistral:7b-instruct-q4_0"]
    assert svc["alternative"] == 2
    assert svc["model_choice"].startswith(
        "ollama (every replica) runs alternative 2 of 2, mistral:7b-instruct-q4_0 (4608 MiB per "
        "GPU): mixtral:8x7b needs 46080 MiB; mistral-nemo:12b needs 9216 MiB, more than the "
        "7372 MiB the best free GPU offers"
    )
    code, out, _ = call(["plan", "--profile", "ollama-replicas"], capsys)
    flat = " ".join(out.split())
    assert code == 0 and "runs alternative 2 of 2, mistral:7b-instruct-q4_0" in flat


def test_render_says_which_alternative_runs(tmp_path: Path) -> None:
    inv = inventory_file(tmp_path, ("NVIDIA GeForce RTX 2070", 8192))
    out = tmp_path / "stack"
    proc = run_cli(
        "render", "--profile", "ollama-replicas", "--inventory", str(inv), "-o", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    stack = (out / "STACK.md").read_text()
    assert "runs alternative 2 of 2, mistral:7b-instruct-q4_0 (4608 MiB per GPU)" in stack
    assert "| ollama-0 | gpu | 0 | mistral:7b-instruct-q4_0 |" in stack
    assert "these): ollama-0 runs mistral:7b-instruct-q4_0 (alternative 2)." in stack


# --- memory other processes hold (issue 10.12) --------------------------------------------------


def test_saved_inventory_with_memory_used_is_counted_with_a_warning() -> None:
    xml = str(fixture_path(*A5000_XML))
    proc = run_cli("plan", "-P", "zenglow-personas", "--inventory", xml, "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == (
        "composegen: warning: GPU 0: 22437 of 24564 MiB already in use by other processes, "
        "counted as used (0 MiB left for the stack); --ignore-used plans as if it were free"
    )
    data = json.loads(proc.stdout)
    assert {s["name"]: s["gpus"] for s in data["services"]} == {"leonardo": [1], "jarvis": []}
    assert [g["other_used_mib"] for g in data["gpus"]] == [22107, 17408]  # 17253 -> 68 x 256
    old = run_cli("plan", "-P", "zenglow-personas", "--inventory", xml, "--json", "--ignore-used")
    assert old.returncode == 0 and old.stderr == ""
    again = json.loads(old.stdout)
    assert {s["name"]: s["gpus"] for s in again["services"]} == {"leonardo": [0], "jarvis": [1]}
    assert again["gpus"][0]["free_mib"] == 15451


def test_live_host_memory_used_is_counted(
    nvml_scenario: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    nvml_scenario("a5000_busy")
    code, out, err = call(["plan", "--profile", "ollama-pool", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["inventory"] == "this host"
    # GPU 0 has 0 MiB left; GPU 1 has 22107 - 17408 = 4699: no 5120 MiB instance, a 3B one
    assert [len(g["services"]) for g in data["gpus"]] == [0, 1]
    assert data["services"][0]["models"] == ["llama3.2:3b"]
    assert "composegen: warning: GPU 1: 17253 of 24564 MiB already in use" in err


def test_render_records_ignore_used_and_fallback_replans_the_same(tmp_path: Path) -> None:
    from composegen import app

    xml = str(fixture_path(*A5000_XML))
    for flag, leonardo in (([], (1,)), (["--ignore-used"], (0,))):
        out = tmp_path / f"stack{len(flag)}"
        proc = run_cli(
            "render", "-P", "zenglow-personas", "--inventory", xml, "-o", str(out), *flag
        )
        assert proc.returncode == 0, proc.stderr
        state = json.loads((out / ".composegen" / "render.json").read_text())
        assert state["ignore_used"] is bool(flag)
        assert app.rebuild(app.load_inputs(out)).plan.instance("leonardo").gpus == leonardo


def test_render_json_from_before_used_memory_counted_replans_as_it_was(tmp_path: Path) -> None:
    from composegen import app

    out = tmp_path / "stack"
    xml = str(fixture_path(*A5000_XML))
    proc = run_cli("render", "-P", "zenglow-personas", "--inventory", xml, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    state_file = out / ".composegen" / "render.json"
    state = json.loads(state_file.read_text())
    del state["ignore_used"]  # as the previous release wrote it
    state_file.write_text(json.dumps(state))
    inputs = app.load_inputs(out)
    assert inputs.ignore_used
    assert app.rebuild(inputs).plan.instance("leonardo").gpus == (0,)


# --- one rule for a host with no GPU (issue 10.11) -------------------------------------------


def test_profiles_and_plan_agree_on_a_host_with_no_gpu(
    nvml_scenario: Install, no_nvidia_smi: None, capsys: pytest.CaptureFixture[str]
) -> None:
    nvml_scenario("no_driver")
    code, out, err = call(["profiles", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 5
    for row in rows:
        code, out, err = call(["plan", "--profile", row["name"], "--json"], capsys)
        assert code == 0, err
        plan = json.loads(out)
        assert row["hardware"] == plan["inventory"]
        assert row["hardware"].startswith("reference hardware: ")
        assert "(this host has no usable GPU: " in row["hardware"]
        on_gpu = all(s["device"] == "gpu" for s in plan["services"])
        assert (row["fits"] == "yes") == (on_gpu and not plan["dropped"])
    assert {r["name"]: r["fits"] for r in rows}["rag-a100"] == "yes"
    code, out, _ = call(["profiles"], capsys)
    assert code == 0 and "rated on" in out and "reference hardware" in out


def test_profiles_with_an_inventory_file_say_so(capsys: pytest.CaptureFixture[str]) -> None:
    xml = str(fixture_path(*A5000_XML))
    code, out, err = call(["profiles", "--inventory", xml, "--json"], capsys)
    assert code == 0, err
    assert {r["hardware"] for r in json.loads(out)} == {f"inventory file {xml}"}


def test_set_typo_names_set_on_the_command_line() -> None:
    proc = run_cli("plan", "-P", "rag-a100", "--reference", "--set", "planner.headrom=0.2")
    assert proc.returncode == 2
    assert proc.stderr == (
        "composegen: error: --set 'planner.headrom=0.2' (on profiles/rag-a100.yaml): planner: "
        "unknown key 'headrom' (did you mean 'headroom'?)\n"
    )


def test_profiles_say_when_smaller_models_run(tmp_path: Path) -> None:
    inv = inventory_file(tmp_path, ("NVIDIA GeForce RTX 2070", 8192))
    proc = run_cli("profiles", "--inventory", str(inv), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["ollama-replicas"]["fits"] == "yes"
    assert rows["ollama-replicas"]["why"] == (
        "1 service(s) on 1 GPU(s); smaller models: ollama-0 (mistral:7b-instruct-q4_0)"
    )


def test_rerendering_a_running_stack_does_not_count_its_own_memory(
    nvml_scenario: Install, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake = nvml_scenario("consumer_pair")  # RTX 3060 Ti 8192 MiB + GTX 1660 SUPER 6144 MiB
    fake.s.gpus[0].used_mib, fake.s.gpus[1].used_mib = 310, 180  # idle, a display on each
    out = tmp_path / "stack"
    code, first, err = call(["render", "-P", "zenglow-personas", "-o", str(out)], capsys)
    assert code == 0, err
    assert "leonardo                 GPU 0" in first and "jarvis                   GPU 1" in first
    # the stack runs: its Ollama servers hold what the plan gave them, on top of the display
    fake.s.gpus[0].used_mib, fake.s.gpus[1].used_mib = 310 + 6656, 180 + 3584
    code, again, err = call(["render", "-P", "zenglow-personas", "-o", str(out)], capsys)
    assert code == 0, err
    assert "leonardo                 GPU 0" in again and "jarvis                   GPU 1" in again
    assert "wrote 0 file(s), 12 unchanged" in again
    assert (
        f"composegen: warning: GPU 0: 6656 of its 6966 MiB in use taken as this stack's own "
        f"(its plan in {out}), not as other processes'" in err
    )
    # plan (no directory) counts it all: GPU 0 keeps 7372 - 7168 = 204 MiB, GPU 1 5529 - 3840
    # = 1689, too little for either persona or its alternative (4608, 1792)
    code, text, err = call(["plan", "-P", "zenglow-personas", "--json"], capsys)
    assert code == 0, err
    assert {s["name"]: s["device"] for s in json.loads(text)["services"]} == {
        "leonardo": "cpu",
        "jarvis": "cpu",
    }
