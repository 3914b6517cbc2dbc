"""A profile planned over a fleet file: real node inventories in, one plan with a node per
instance out (replicas over every GPU of every node, a tensor-parallel group inside one node,
spares per node or fleet-wide), bad fleet files refused in one line, and `plan --fleet`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from composegen import profiles
from composegen.errors import BadInputError
from composegen.fleet import Fleet, load_fleet, plan_fleet
from composegen.plan import Plan, PlanOptions, make_plan
from composegen.profiles import Overrides, Profile
from tests.conftest import fixture_path
from tests.unit.test_cli_detect import call

A100_64GB = 65536  # seed 000's A100-SXM-64GB (tests/fake_nvml.py a100_4x64)
A100_80GB = 81920  # A100-SXM4-80GB and A100 80GB PCIe
A5000_XML = fixture_path("nvidia-smi", "xml", "telegraf__dual_a5000-v13.xml")
GT1030_XML = fixture_path("nvidia-smi", "xml", "telegraf__gt-1030.xml")
P400_XML = fixture_path("nvidia-smi", "xml", "telegraf__quadro-p400.xml")


def fleet_file(name: str) -> str:
    return str(fixture_path("fleet", name))


def uuids(node_file: str) -> list[str]:
    """The UUIDs as the node's saved inventory holds them, read straight from its JSON."""
    data = json.loads(fixture_path("fleet", node_file).read_text(encoding="utf-8"))
    return [g["uuid"] for g in data["gpus"]]


def load(name: str, *sets: str) -> Profile:
    return profiles.load(name, (), Overrides(sets=sets))


def placed(plan: Plan) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """instance -> (node, pinned device ids)."""
    return {i.name: (i.node, i.device_ids) for i in plan.instances}


def spares(plan: Plan) -> list[tuple[str | None, int | None]]:
    return [(g.node, g.node_index) for g in plan.gpus if g.spare]


# --- the planner over a fleet -------------------------------------------------------------------


def test_per_gpu_replicas_span_every_gpu_of_both_nodes() -> None:
    fleet = load_fleet(fleet_file("ollama-2x2.yaml"))
    plan = plan_fleet(fleet, load("ollama-replicas"))
    a, b = uuids("gpu-a-2x64.json"), uuids("gpu-b-2x64.json")
    assert placed(plan) == {
        "ollama-0": ("gpu-a", (a[0],)),
        "ollama-1": ("gpu-a", (a[1],)),
        "ollama-2": ("gpu-b", (b[0],)),
        "ollama-3": ("gpu-b", (b[1],)),
    }
    assert [i.port for i in plan.instances] == [39001, 39002, 39003, 39004]
    assert {i.vram_mib for i in plan.instances} == {46080}  # Mixtral on every 64 GB card
    assert [(g.node, g.node_index, g.memory_total_mib) for g in plan.gpus] == [
        ("gpu-a", 0, A100_64GB),
        ("gpu-a", 1, A100_64GB),
        ("gpu-b", 0, A100_64GB),
        ("gpu-b", 1, A100_64GB),
    ]
    assert plan.nodes == ("gpu-a", "gpu-b") and plan.gateway_node == "gpu-a"


def test_tensor_parallel_group_stays_on_one_node_without_nvlink() -> None:
    # PCIe nodes: no NVLink known, so only the fleet rule keeps the LLM's two GPUs together.
    # One spare per node leaves gpu-a a single free GPU (2) when the LLM is placed: the group
    # goes to gpu-b whole, never gpu-a 2 + gpu-b 0.
    fleet = load_fleet(fleet_file("rag-2x4-pcie.yaml"))
    prof = load("rag-a100", "planner.spare_gpus=1", "planner.spares=per-node")
    plan = plan_fleet(fleet, prof)
    a, b = uuids("gpu-a-4x80-pcie.json"), uuids("gpu-b-4x80-pcie.json")
    assert placed(plan) == {
        "whisper": ("gpu-a", (a[0],)),
        "embeddings": ("gpu-a", (a[1],)),
        "llm": ("gpu-b", (b[0], b[1])),
        "ocr": ("gpu-a", (a[2],)),
    }
    assert plan.instance("llm").tensor_parallel == 2
    assert spares(plan) == [("gpu-a", 3), ("gpu-b", 3)]


def test_tensor_parallel_group_on_nvlink_nodes_and_spares_per_node() -> None:
    fleet = load_fleet(fleet_file("rag-2x4-sxm-per-node.yaml"))
    assert fleet.spares == "per-node"
    plan = plan_fleet(fleet, load("rag-a100"))
    b = uuids("gpu-b-4x80-sxm.json")
    assert placed(plan)["llm"] == ("gpu-b", (b[0], b[1]))
    # 3 spares per node wanted, 8 - 5 needed = 3 kept: taken back from the node keeping most
    assert spares(plan) == [("gpu-a", 2), ("gpu-a", 3), ("gpu-b", 3)]
    assert (
        "spare GPUs on gpu-b reduced from 3 to 1: the services need 5 of the fleet's 8 "
        "usable GPUs" in plan.notes
    )


def test_nvlink_known_on_one_node_does_not_bind_a_node_without_topology(tmp_path: Path) -> None:
    # gpu-a (HGX) reports NVLink, gpu-b (PCIe) reports none: gpu-b's GPUs may still form the
    # LLM's group, as they would on a one-host PCIe box (NVLink is known per node)
    copy_nodes(tmp_path, "gpu-a-4x80-sxm.json", "gpu-b-4x80-pcie.json")
    (tmp_path / "fleet.yaml").write_text(
        "nodes:\n  - {name: gpu-a, inventory: gpu-a-4x80-sxm.json}\n"
        "  - {name: gpu-b, inventory: gpu-b-4x80-pcie.json}\nspares: per-node\n"
    )
    plan = plan_fleet(
        load_fleet(str(tmp_path / "fleet.yaml")), load("rag-a100", "planner.spare_gpus=2")
    )
    b = uuids("gpu-b-4x80-pcie.json")
    assert spares(plan) == [("gpu-a", 2), ("gpu-a", 3), ("gpu-b", 3)]
    assert placed(plan)["llm"] == ("gpu-b", (b[0], b[1]))
    assert plan.instance("llm").device == "gpu"


def test_spares_fleet_wide_are_the_last_gpus_of_the_fleet() -> None:
    plan = plan_fleet(load_fleet(fleet_file("rag-2x4-pcie.yaml")), load("rag-a100"))
    assert plan.spares_scope == "fleet"
    assert spares(plan) == [("gpu-b", 1), ("gpu-b", 2), ("gpu-b", 3)]
    assert placed(plan)["llm"][0] == "gpu-a"


def test_spares_per_node_keep_one_on_each_node_fleet_keeps_one_in_all() -> None:
    fleet = load_fleet(fleet_file("ollama-2x2.yaml"))  # says nothing: fleet-wide
    wide = plan_fleet(fleet, load("ollama-replicas", "planner.spare_gpus=1"))
    assert spares(wide) == [("gpu-b", 1)]
    assert [i.node for i in wide.instances] == ["gpu-a", "gpu-a", "gpu-b"]
    each = plan_fleet(
        fleet, load("ollama-replicas", "planner.spare_gpus=1", "planner.spares=per-node")
    )
    assert spares(each) == [("gpu-a", 1), ("gpu-b", 1)]
    assert [(i.name, i.node) for i in each.instances] == [
        ("ollama-0", "gpu-a"),
        ("ollama-1", "gpu-b"),
    ]


def test_the_profile_says_the_spare_scope_over_the_fleet_file() -> None:
    fleet = load_fleet(fleet_file("rag-2x4-sxm-per-node.yaml"))
    plan = plan_fleet(fleet, load("rag-a100", "planner.spares=fleet"))
    assert plan.spares_scope == "fleet"
    assert spares(plan) == [("gpu-b", 1), ("gpu-b", 2), ("gpu-b", 3)]


def test_pinned_by_index_a_node_numbers_its_own_gpus() -> None:
    fleet = load_fleet(fleet_file("ollama-2x2.yaml"))
    plan = plan_fleet(fleet, load("ollama-replicas"), PlanOptions(pin_by="index"))
    assert [(i.node, i.gpus, i.device_ids) for i in plan.instances] == [
        ("gpu-a", (0,), ("0",)),
        ("gpu-a", (1,), ("1",)),
        ("gpu-b", (2,), ("0",)),  # fleet GPU 2 is gpu-b's GPU 0
        ("gpu-b", (3,), ("1",)),
    ]


def test_nvlink_peers_are_renumbered_and_never_cross_nodes() -> None:
    inv = load_fleet(fleet_file("rag-2x4-sxm-per-node.yaml")).inventory()
    assert [g.index for g in inv.gpus] == list(range(8))
    assert inv.gpus[0].nvlink_peers == (1, 2, 3)
    assert inv.gpus[5].nvlink_peers == (4, 6, 7)
    assert [g.uuid for g in inv.gpus] == uuids("gpu-a-4x80-sxm.json") + uuids("gpu-b-4x80-sxm.json")


def test_nodes_from_nvidia_smi_files_a_small_gpu_left_free_in_its_node_words(
    tmp_path: Path,
) -> None:
    (tmp_path / "fleet.yaml").write_text(
        f"nodes:\n  - {{name: ws-1, inventory: {A5000_XML}}}\n"
        f"  - {{name: ws-2, inventory: {GT1030_XML}}}\n"
    )
    fleet = load_fleet(str(tmp_path / "fleet.yaml"))
    # these captures hold memory in use by others; planned as if free (--ignore-used)
    plan = plan_fleet(fleet, load("ollama-replicas"), PlanOptions(count_used=False))
    # 24564 MiB A5000s run mistral-nemo (9216); the GT 1030 (1998 MiB) holds none of them
    assert [(i.node, i.models[0].name) for i in plan.instances] == [
        ("ws-1", "mistral-nemo:12b"),
        ("ws-1", "mistral-nemo:12b"),
    ]
    assert any(n.startswith("ws-2 GPU 0 left free: 1798 MiB") for n in plan.notes)


def test_cpu_instances_run_on_the_first_node(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(
        f"nodes:\n  - {{name: office, inventory: {P400_XML}}}\n"
        f"  - {{name: lab, inventory: {GT1030_XML}}}\n"
    )
    plan = plan_fleet(load_fleet(str(tmp_path / "fleet.yaml")), load("ollama-replicas"))
    assert [(i.name, i.device, i.node) for i in plan.instances] == [("ollama-0", "cpu", "office")]


def test_one_host_plans_have_no_node() -> None:
    inv = load_fleet(fleet_file("ollama-2x2.yaml")).nodes[0].inventory
    plan = make_plan(inv, load("ollama-replicas"))
    assert {i.node for i in plan.instances} == {None}
    data = plan.to_dict()
    assert "nodes" not in data and "node" not in data["services"][0]


# --- bad fleet files ----------------------------------------------------------------------------


def copy_nodes(tmp_path: Path, *names: str) -> None:
    for n in names:
        shutil.copy(fixture_path("fleet", n), tmp_path / n)


BAD = [
    (
        "nodes:\n  - {name: gpu-a, inventory: gpu-a-2x64.json, gpus: 2}\n",
        "nodes[0]: unknown key 'gpus'",
    ),
    (
        "nodes:\n  - {name: gpu-a, inventory: gpu-a-2x64.json}\n"
        "  - {name: gpu-a, inventory: gpu-b-2x64.json}\n",
        "nodes[1].name: 'gpu-a' is already the name of nodes[0]",
    ),
    (
        "nodes:\n  - {name: gpu-a, inventory: gpu-a-2x64.json}\n"
        "  - {name: gpu-b, inventory: gpu-c.json}\n",
        "nodes[1].inventory: ",  # then the resolved path and "no such file"
    ),
    (
        "nodes:\n  - {name: gpu-a, inventory: gpu-a-2x64.json}\n"
        "  - {name: gpu-b, inventory: gpu-a-2x64.json}\n",
        "GPU UUID GPU-c15521b1-b3dc-450a-9daa-37e51b591d75 is on gpu-a (GPU 0) and on gpu-b",
    ),
    ("nodes:\n  - {name: GPU_A, inventory: gpu-a-2x64.json}\n", "nodes[0].name: 'GPU_A'"),
    ("nodes: []\n", "nodes: must not be empty"),
    (
        "nodes:\n  - {name: gpu-a, hostname: h1, inventory: gpu-a-2x64.json}\n"
        "  - {name: gpu-b, hostname: h1, inventory: gpu-b-2x64.json}\n",
        "nodes[1].hostname: 'h1' is already the hostname of nodes[0]",
    ),
    (
        "nodes:\n  - {name: gpu-a, inventory: gpu-a-2x64.json, labels: {1: x}}\n",
        "nodes[0].labels: key 1 must be a string",
    ),
    ("- gpu-a\n", "(top level): must be an object"),
    ("spares: per-node\n", "'nodes' is required"),
    (
        "nodes:\n  - {name: gpu-a, inventory: gpu-a-2x64.json}\nspares: node\n",
        "spares: must be one of per-node, fleet, not 'node'",
    ),
]


@pytest.mark.parametrize(("text", "says"), BAD)
def test_bad_fleet_file_is_refused_naming_file_and_place(
    tmp_path: Path, text: str, says: str
) -> None:
    copy_nodes(tmp_path, "gpu-a-2x64.json", "gpu-b-2x64.json")
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    with pytest.raises(BadInputError) as err:
        load_fleet(str(path))
    assert err.value.message.startswith(f"{path}: ")
    assert says in err.value.message


def test_missing_inventory_is_resolved_against_the_fleet_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("nodes:\n  - {name: gpu-a, inventory: gpu-a.json}\n")
    with pytest.raises(BadInputError) as err:
        load_fleet(str(path))
    assert (
        err.value.message == f"{path}: nodes[0].inventory: {tmp_path / 'gpu-a.json'}: no such file"
    )


def test_relative_inventories_load_from_the_fleet_files_directory(tmp_path: Path) -> None:
    sub = tmp_path / "site"
    sub.mkdir()
    copy_nodes(sub, "gpu-a-2x64.json", "gpu-b-2x64.json")
    shutil.copy(fixture_path("fleet", "ollama-2x2.yaml"), sub / "fleet.yaml")
    fleet: Fleet = load_fleet(str(sub / "fleet.yaml"))
    assert [(n.name, n.hostname, len(n.inventory.gpus)) for n in fleet.nodes] == [
        ("gpu-a", "gpu-a", 2),
        ("gpu-b", "gpu-b", 2),
    ]
    labels = load_fleet(fleet_file("rag-2x4-pcie.yaml")).nodes[1]
    assert (labels.hostname, dict(labels.labels)) == (None, {"composegen.node": "gpu-b"})


# --- the CLI ------------------------------------------------------------------------------------


def test_plan_fleet_table_has_a_node_column(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(
        ["plan", "--fleet", fleet_file("rag-2x4-pcie.yaml"), "-P", "rag-a100"], capsys
    )
    assert code == 0, err
    rows = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│")]
    cells = [[c.strip() for c in r] for r in rows]
    assert [(c[0], c[1], c[5]) for c in cells] == [
        ("gpu-a", "0", "whisper"),
        ("gpu-a", "1", "embeddings"),
        ("gpu-a", "2", "llm"),
        ("gpu-a", "3", "llm"),
        ("gpu-b", "0", "ocr"),
        ("gpu-b", "1", "spare"),
        ("gpu-b", "2", "spare"),
        ("gpu-b", "3", "spare"),
    ]
    assert "NODE" in out
    assert "spare GPUs: gpu-b GPU 1, gpu-b GPU 2, gpu-b GPU 3" in out


def test_plan_fleet_json_gives_each_service_its_node(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(
        ["plan", "--fleet", fleet_file("ollama-2x2.yaml"), "-P", "ollama-replicas", "--json"],
        capsys,
    )
    assert code == 0, err
    data = json.loads(out)
    b = uuids("gpu-b-2x64.json")
    assert [(s["name"], s["node"]) for s in data["services"]] == [
        ("ollama-0", "gpu-a"),
        ("ollama-1", "gpu-a"),
        ("ollama-2", "gpu-b"),
        ("ollama-3", "gpu-b"),
    ]
    assert data["services"][3]["device_ids"] == [b[1]]
    assert data["nodes"] == ["gpu-a", "gpu-b"] and data["gateway_node"] == "gpu-a"
    assert [(g["node"], g["node_index"]) for g in data["gpus"]][2] == ("gpu-b", 0)
    assert data["inventory"].startswith(f"fleet file {fleet_file('ollama-2x2.yaml')}")


def test_plan_fleet_without_profile_chooses_one_for_the_fleet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = call(["plan", "--fleet", fleet_file("rag-2x4-sxm-per-node.yaml")], capsys)
    assert code == 0, err
    assert err.startswith("composegen: profile rag-a100 chosen for fleet file ")
    assert out.startswith("rag-a100 on fleet file")


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--inventory", str(A5000_XML)], "--fleet and --inventory exclude each other"),
        (["--reference"], "--fleet and --reference exclude each other"),
    ],
)
@pytest.mark.parametrize("profile", [[], ["-P", "ollama-replicas"]])
def test_plan_fleet_excludes_one_host_options(
    capsys: pytest.CaptureFixture[str], extra: list[str], says: str, profile: list[str]
) -> None:
    code, out, err = call(
        ["plan", "--fleet", fleet_file("ollama-2x2.yaml"), *extra, *profile], capsys
    )
    assert code == 2 and out == ""
    assert err.startswith(f"composegen: error: {says}") and err.count("\n") == 1


def test_plan_with_a_bad_fleet_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy_nodes(tmp_path, "gpu-a-2x64.json")
    path = tmp_path / "fleet.yaml"
    path.write_text("nodes:\n  - {name: gpu-a, inventory: gpu-a-2x64.json, role: worker}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = call(["plan", "--fleet", str(path), "-P", "ollama-replicas"], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"composegen: error: {path}: nodes[0]: unknown key 'role'")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_failover_over_a_fleet_keeps_survivors_on_their_nodes() -> None:
    from dataclasses import replace

    fleet = load_fleet(fleet_file("ollama-2x2.yaml"))
    prof = load("ollama-replicas")
    before = plan_fleet(fleet, prof)
    b = fleet.node("gpu-b")
    lost = replace(
        b.inventory,
        gpus=tuple(
            replace(g, health="lost", health_reason="fell off the bus") if g.index == 0 else g
            for g in b.inventory.gpus
        ),
    )
    after = plan_fleet(
        replace(fleet, nodes=(fleet.nodes[0], replace(b, inventory=lost))),
        prof,
        PlanOptions(previous=before),
    )
    a, bu = uuids("gpu-a-2x64.json"), uuids("gpu-b-2x64.json")
    assert placed(after) == {
        "ollama-0": ("gpu-a", (a[0],)),
        "ollama-1": ("gpu-a", (a[1],)),
        "ollama-3": ("gpu-b", (bu[1],)),
    }
    assert "gpu-b GPU 0 not used: unhealthy (lost: fell off the bus)" in after.notes
