"""The planner as a pure function: inventories in, GPU maps out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from composegen import profiles
from composegen.inventory import Gpu, Inventory
from composegen.plan import Plan, PlanError, PlanOptions, make_plan
from composegen.profiles import Overrides, Profile


def gpus(*mems: int, nvlink: dict[int, tuple[int, ...]] | None = None) -> Inventory:
    links = nvlink or {}
    return Inventory(
        source="test",
        gpus=tuple(
            Gpu(
                index=i,
                name=f"GPU{i}",
                uuid=f"GPU-{i:08d}-aaaa-bbbb-cccc-000000000000",
                memory_total_mib=m,
                nvlink_peers=links.get(i, ()),
            )
            for i, m in enumerate(mems)
        ),
    )


def load(name: str, *sets: str) -> Profile:
    return profiles.load(name, overrides=Overrides(sets=sets))


def gmap(plan: Plan) -> dict[str, list[int]]:
    return {i.name: list(i.gpus) for i in plan.instances}


def test_rag_a100_reference_matches_the_seed() -> None:
    prof = load("rag-a100")
    plan = make_plan(prof.reference_inventory(), prof)
    assert gmap(plan) == {"whisper": [0], "embeddings": [1], "llm": [2, 3], "ocr": [4]}
    assert plan.instance("llm").tensor_parallel == 2
    assert plan.spare_gpus == (5, 6, 7)
    assert plan.pin_by == "index"  # reference hardware has no real UUIDs
    assert plan.instance("llm").device_ids == ("2", "3")


def test_rag_second_llm_goes_to_the_first_spare() -> None:
    prof = load("rag-a100", "services.llm-secondary.enabled=true")
    plan = make_plan(prof.reference_inventory(), prof)
    assert gmap(plan)["llm-secondary"] == [5]
    assert plan.instance("llm-secondary").group == "llm"
    assert plan.spare_gpus == (6, 7)


def test_uuids_pin_by_default_and_index_on_request() -> None:
    prof = load("rag-a100")
    inv = gpus(*[81920] * 8)
    plan = make_plan(inv, prof)
    assert plan.pin_by == "uuid"
    assert plan.instance("whisper").device_ids == (inv.gpus[0].uuid,)
    by_index = make_plan(inv, prof, PlanOptions(pin_by="index"))
    assert by_index.instance("llm").device_ids == ("2", "3")


def test_pin_by_uuid_refused_without_uuids() -> None:
    prof = load("rag-a100")
    with pytest.raises(Exception, match="--pin-by uuid"):
        make_plan(prof.reference_inventory(), prof, PlanOptions(pin_by="uuid"))


def test_tensor_parallel_group_stays_on_nvlink() -> None:
    # GPUs 2 and 3 are not linked to each other; 3 and 4 are
    links = {0: (1,), 1: (0,), 3: (4,), 4: (3,)}
    prof = load("rag-a100", "planner.spare_gpus=0")
    plan = make_plan(gpus(*[81920] * 6, nvlink=links), prof)
    assert gmap(plan)["llm"] == [3, 4]
    assert gmap(plan)["whisper"] == [0] and gmap(plan)["embeddings"] == [1]


def test_unhealthy_gpu_is_never_used() -> None:
    prof = load("ollama-replicas")
    inv = gpus(65536, 65536, 65536, 65536)
    sick = replace(inv.gpus[1], health="lost", health_reason="fell off the bus")
    inv = replace(inv, gpus=(inv.gpus[0], sick, *inv.gpus[2:]))
    plan = make_plan(inv, prof)
    assert gmap(plan) == {"ollama-0": [0], "ollama-1": [2], "ollama-2": [3]}
    assert any("GPU 1 not used" in n for n in plan.notes)


def test_replicas_one_per_gpu_with_own_ports() -> None:
    prof = load("ollama-replicas")
    plan = make_plan(prof.reference_inventory(), prof)
    assert gmap(plan) == {f"ollama-{i}": [i] for i in range(4)}
    assert [i.port for i in plan.instances] == [39001, 39002, 39003, 39004]
    assert plan.spare_gpus == ()


def test_reasoning_persona_gets_the_larger_gpu_whatever_the_order() -> None:
    prof = load("zenglow-personas")
    plan = make_plan(gpus(6144, 8192), prof)  # the smaller card enumerates first
    assert gmap(plan) == {"leonardo": [1], "jarvis": [0]}


def test_personas_share_when_only_one_gpu_fits_both() -> None:
    prof = load("zenglow-personas")
    plan = make_plan(gpus(16384), prof)
    assert gmap(plan) == {"leonardo": [0], "jarvis": [0]}
    assert plan.instance("jarvis").shared


def test_persona_falls_back_to_cpu_when_nothing_fits() -> None:
    prof = load("zenglow-personas")
    plan = make_plan(gpus(8192), prof)
    assert plan.instance("leonardo").device == "gpu"
    assert plan.instance("jarvis").device == "cpu"
    assert any("jarvis runs on CPU" in n for n in plan.notes)


def test_smaller_alternative_model_is_tried_first() -> None:
    prof = load("zenglow-personas")
    plan = make_plan(gpus(6144), prof)  # 5529 usable: q5_K_M (6656) no, q4_0 (4608) yes
    leo = plan.instance("leonardo")
    assert leo.device == "gpu"
    assert [m.name for m in leo.models] == ["mistral:7b-instruct-q4_0"]


def test_pool_instances_follow_vram_tiers_and_weights() -> None:
    prof = load("ollama-pool")
    plan = make_plan(gpus(8192, 16384, 24576), prof)
    per_gpu: dict[int, list[str]] = {}
    for inst in plan.instances:
        per_gpu.setdefault(inst.gpus[0], []).append(inst.name)
    assert {k: len(v) for k, v in per_gpu.items()} == {0: 1, 1: 2, 2: 3}
    weights = {i.gpus[0]: i.weight for i in plan.instances}
    assert weights == {0: 7, 1: 7, 2: 7}  # GiB behind each instance: 7.2, 14.4/2, 21.6/3
    assert {i.max_concurrency for i in plan.instances} == {2}


def test_pool_tiers_are_configurable() -> None:
    prof = load("ollama-pool")
    data = {"min_mib": 0, "instances": 4}
    prof = replace(prof, instance_tiers=((data["min_mib"], data["instances"]),))
    plan = make_plan(gpus(24576), prof)
    assert len(plan.instances) == 4


def test_headroom_is_configurable() -> None:
    prof = load("zenglow-personas", "planner.headroom=0.30")
    plan = make_plan(gpus(8192, 6144), prof)
    assert plan.gpus[0].usable_mib == int(8192 * 0.7)
    # 5734 usable on the big card: Mistral Q5_K_M (6656) no longer fits, the Q4_0 alternative does
    assert [m.name for m in plan.instance("leonardo").models] == ["mistral:7b-instruct-q4_0"]


def test_refusal_names_service_vram_and_fix() -> None:
    prof = load(
        "rag-a100",
        "services.ocr.gpu.on_short=refuse",
        "services.whisper.gpu.on_short=drop",
        "services.embeddings.gpu.on_short=drop",
        "services.llm.gpu.on_short=drop",
    )
    with pytest.raises(PlanError) as err:
        make_plan(gpus(8192), prof)
    msg = err.value.one_line()
    assert "service ocr needs 25600 MiB of VRAM" in msg
    assert "7372 MiB" in msg
    assert "--set services.ocr.gpu.on_short=cpu|drop" in msg


def test_no_gpu_at_all_goes_to_cpu_by_the_rules() -> None:
    prof = load("rag-a100")
    plan = make_plan(Inventory(source="empty"), prof)
    assert {i.name: i.device for i in plan.instances} == {
        "whisper": "cpu",
        "embeddings": "cpu",
        "llm": "cpu",
    }
    assert [n for n, _ in plan.dropped] == ["ocr"]


def test_shared_hub_and_processor() -> None:
    prof = load("rma-shared")
    one = make_plan(gpus(16384), prof)
    assert gmap(one) == {"ollama": [0], "doc-processor": [0]}
    two = make_plan(gpus(16384, 8192), prof)
    assert gmap(two) == {"ollama": [0], "doc-processor": [1]}


def test_mig_enabled_gpu_is_skipped_with_a_note() -> None:
    prof = load("ollama-replicas")
    inv = gpus(81920, 81920)
    inv = replace(inv, gpus=(replace(inv.gpus[0], mig_mode="enabled"), inv.gpus[1]))
    plan = make_plan(inv, prof)
    assert gmap(plan) == {"ollama-0": [1]}
    assert any("MIG" in n for n in plan.notes)


def test_plan_json_has_services_gpus_and_spares() -> None:
    prof = load("rag-a100")
    data = make_plan(prof.reference_inventory(), prof).to_dict()
    assert data["spare_gpus"] == [5, 6, 7]
    assert {s["name"]: s["gpus"] for s in data["services"]}["llm"] == [2, 3]


def test_large_pool_scales() -> None:
    prof = load("ollama-pool")
    plan = make_plan(gpus(*[24576] * 512), prof)
    assert len(plan.instances) == 512 * 3
    assert len({i.name for i in plan.instances}) == 512 * 3


def test_fast_yaml_dumper_matches_pyyaml_safe_dump() -> None:
    import yaml

    from composegen import app
    from composegen.render import RenderOptions, compose_data, dump_yaml

    built = app.build("ollama-pool", reference=True)
    data = compose_data(built.profile, built.plan, RenderOptions())
    data["x-odd"] = {"on": "on", "zero": "0", "dollar": "$$HOME", "n": 3, "t": True, "f": 0.5}
    expected = yaml.dump(
        data,
        Dumper=yaml.SafeDumper,
        sort_keys=False,
        default_flow_style=False,
        width=100,
        allow_unicode=True,
    )
    assert dump_yaml(data, "") == expected
    assert yaml.safe_load(expected)["x-odd"]["on"] == "on"
