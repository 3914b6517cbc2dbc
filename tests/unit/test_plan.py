"""The planner as a pure function: inventories in, GPU maps out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from composegen import profiles
from composegen.inventory import Gpu, Inventory
from composegen.plan import Plan, PlanError, PlanOptions, make_plan
from composegen.profiles import Overrides, Profile
from tests.conftest import fixture_path

# memory.total as real cards report it (test_real_sizes_are_the_fixtures checks each against
# its nvidia-smi file under tests/fixtures/nvidia-smi/); never the nominal 16384 / 24576
RTX_2070_8GB = 8192  # xml/telegraf__dual_2070-v13.xml (an RTX 3060 Ti / 3070 reports the same)
TESLA_P4_8GB = 7606  # csv/telegraf-2018__noheader-nounits__12fields.csv
GTX_1660_TI_6GB = 5912  # xml/telegraf__gtx-1660-ti.xml
RTX_3060_12GB = 12288  # xml/telegraf__rtx-3060-v12.xml
RTX_2080_TI_11GB = 11264  # csv/telegraf-2019__noheader-nounits__22fields.csv
TESLA_T4_16GB = 15360  # xml/telegraf__tesla-t4.xml (ECC reserves the rest)
RTX_4080_SUPER_16GB = 16376  # csv/nvidia_gpu_exporter__...rtx-4080-super...query-gpu.csv
A10G_24GB = 23028  # xml/telegraf__a10g.xml
RTX_A5000_24GB = 24564  # xml/telegraf__dual_a5000-v13.xml
RTX_3090_24GB = 24576  # xml/telegraf__3090-v13.xml
L40S_48GB = 46068  # csv/nvidia_gpu_exporter__...l40s...query-gpu.csv
RTX_A6000_48GB = 49140  # issue 9's figure for a 48 GB card (no fixture)
A100_64GB = 65536  # tests/fake_nvml.py a100_4x64 (seed 000's host)
A100_80GB = 81920  # tests/fake_nvml.py a100_8x80

FIXTURE_SIZES = [
    (RTX_2070_8GB, ("xml", "telegraf__dual_2070-v13.xml"), 0),
    (TESLA_P4_8GB, ("csv", "telegraf-2018__noheader-nounits__12fields.csv"), 1),
    (GTX_1660_TI_6GB, ("xml", "telegraf__gtx-1660-ti.xml"), 0),
    (RTX_3060_12GB, ("xml", "telegraf__rtx-3060-v12.xml"), 0),
    (RTX_2080_TI_11GB, ("csv", "telegraf-2019__noheader-nounits__22fields.csv"), 0),
    (TESLA_T4_16GB, ("xml", "telegraf__tesla-t4.xml"), 0),
    (
        RTX_4080_SUPER_16GB,
        (
            "csv",
            "nvidia_gpu_exporter__linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05"
            "__idle.query-gpu.csv",
        ),
        0,
    ),
    (A10G_24GB, ("xml", "telegraf__a10g.xml"), 0),
    (RTX_A5000_24GB, ("xml", "telegraf__dual_a5000-v13.xml"), 0),
    (RTX_3090_24GB, ("xml", "telegraf__3090-v13.xml"), 0),
    (
        L40S_48GB,
        ("csv", "nvidia_gpu_exporter__linux-x86_64__nvidia-l40s__595.80__idle.query-gpu.csv"),
        0,
    ),
]


@pytest.mark.parametrize(("mib", "parts", "position"), FIXTURE_SIZES)
def test_real_sizes_are_the_fixtures(mib: int, parts: tuple[str, str], position: int) -> None:
    from composegen.detect.sources import load_inventory

    inv = load_inventory(str(fixture_path("nvidia-smi", *parts)))
    assert inv.gpus[position].memory_total_mib == mib


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
    inv = gpus(*[A100_80GB] * 8)
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
    plan = make_plan(gpus(*[A100_80GB] * 6, nvlink=links), prof)
    assert gmap(plan)["llm"] == [3, 4]
    assert gmap(plan)["whisper"] == [0] and gmap(plan)["embeddings"] == [1]


def test_unhealthy_gpu_is_never_used() -> None:
    prof = load("ollama-replicas")
    inv = gpus(A100_64GB, A100_64GB, A100_64GB, A100_64GB)
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
    plan = make_plan(gpus(GTX_1660_TI_6GB, RTX_2070_8GB), prof)  # the smaller one first
    assert gmap(plan) == {"leonardo": [1], "jarvis": [0]}


def test_personas_share_when_only_one_gpu_fits_both() -> None:
    prof = load("zenglow-personas")
    plan = make_plan(gpus(RTX_4080_SUPER_16GB), prof)
    assert gmap(plan) == {"leonardo": [0], "jarvis": [0]}
    assert plan.instance("jarvis").shared


def test_persona_falls_back_to_cpu_when_nothing_fits() -> None:
    prof = load("zenglow-personas")
    plan = make_plan(gpus(RTX_2070_8GB), prof)
    assert plan.instance("leonardo").device == "gpu"
    assert plan.instance("jarvis").device == "cpu"
    assert any("jarvis runs on CPU" in n for n in plan.notes)


def test_smaller_alternative_model_is_tried_first() -> None:
    prof = load("zenglow-personas")
    plan = make_plan(gpus(GTX_1660_TI_6GB), prof)  # 5320 usable: q5_K_M (6656) no, q4_0 yes
    leo = plan.instance("leonardo")
    assert leo.device == "gpu"
    assert [m.name for m in leo.models] == ["mistral:7b-instruct-q4_0"]


def test_pool_instances_follow_vram_tiers_and_weights() -> None:
    prof = load("ollama-pool")
    plan = make_plan(gpus(RTX_2070_8GB, RTX_4080_SUPER_16GB, RTX_A5000_24GB), prof)
    per_gpu: dict[int, list[str]] = {}
    for inst in plan.instances:
        per_gpu.setdefault(inst.gpus[0], []).append(inst.name)
    assert {k: len(v) for k, v in per_gpu.items()} == {0: 1, 1: 2, 2: 3}
    weights = {i.gpus[0]: i.weight for i in plan.instances}
    assert weights == {0: 7, 1: 7, 2: 7}  # GiB behind each instance: 7.2, 14.39/2, 21.59/3
    assert {i.max_concurrency for i in plan.instances} == {2}


def test_pool_tiers_are_configurable() -> None:
    prof = load("ollama-pool")
    data = {"min_mib": 0, "instances": 4}
    prof = replace(prof, instance_tiers=((data["min_mib"], data["instances"]),))
    plan = make_plan(gpus(RTX_A5000_24GB), prof)
    assert len(plan.instances) == 4


def test_headroom_is_configurable() -> None:
    prof = load("zenglow-personas", "planner.headroom=0.30")
    plan = make_plan(gpus(RTX_2070_8GB, GTX_1660_TI_6GB), prof)
    assert plan.gpus[0].usable_mib == 5734  # 8192 x 0.7
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
        make_plan(gpus(RTX_2070_8GB), prof)
    msg = err.value.one_line()
    assert "service ocr needs 25600 MiB of VRAM" in msg
    assert "7372 MiB" in msg
    # ocr has no cpu: variant, so on_short=cpu is not offered (it would be refused: issue 9.11)
    assert "--set services.ocr.gpu.on_short=drop (it has no cpu: variant)" in msg
    assert "on_short=cpu" not in msg


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
    one = make_plan(gpus(RTX_4080_SUPER_16GB), prof)
    assert gmap(one) == {"ollama": [0], "doc-processor": [0]}
    two = make_plan(gpus(RTX_4080_SUPER_16GB, RTX_2070_8GB), prof)
    assert gmap(two) == {"ollama": [0], "doc-processor": [1]}


def test_mig_enabled_gpu_is_skipped_with_a_note() -> None:
    prof = load("ollama-replicas")
    inv = gpus(A100_80GB, A100_80GB)
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
    plan = make_plan(gpus(*[RTX_A5000_24GB] * 512), prof)
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


# --- issue 9.1: VRAM tiers hold the real cards of their marketed size --------------------------


def per_gpu_count(plan: Plan) -> dict[int, int]:
    out: dict[int, int] = {}
    for inst in plan.instances:
        if inst.device == "gpu":
            out[inst.gpus[0]] = out.get(inst.gpus[0], 0) + 1
    return out


@pytest.mark.parametrize(
    ("mib", "instances"),
    [  # seed 001: "8 GB: 1, 16 GB: 2, 24 GB+: 3"
        (TESLA_P4_8GB, 1),
        (RTX_2070_8GB, 1),
        (RTX_3060_12GB, 1),  # 12 GB is not a 16 GB card
        (TESLA_T4_16GB, 2),
        (RTX_4080_SUPER_16GB, 2),
        (A10G_24GB, 3),
        (RTX_A5000_24GB, 3),
        (RTX_3090_24GB, 3),
        (L40S_48GB, 3),
        (RTX_A6000_48GB, 3),
    ],
)
def test_pool_tier_of_each_real_card(mib: int, instances: int) -> None:
    plan = make_plan(gpus(mib), load("ollama-pool"))
    assert per_gpu_count(plan) == {0: instances}


def test_pool_on_8_16_24_48_gb_cards_gives_1_2_3_3() -> None:
    inv = gpus(RTX_2070_8GB, RTX_4080_SUPER_16GB, RTX_A5000_24GB, RTX_A6000_48GB)
    plan = make_plan(inv, load("ollama-pool"))
    assert per_gpu_count(plan) == {0: 1, 1: 2, 2: 3, 3: 3}


def test_an_11_gb_card_is_not_in_a_12_gb_tier() -> None:
    prof = replace(load("ollama-pool"), instance_tiers=((12288, 2), (0, 1)))
    assert per_gpu_count(make_plan(gpus(RTX_2080_TI_11GB), prof)) == {0: 1}
    assert per_gpu_count(make_plan(gpus(RTX_3060_12GB), prof)) == {0: 2}


# --- issue 9.10: instance_tiers without a floor tier ---------------------------------------------


def test_tiers_without_a_floor_use_the_lowest_tier_and_never_crash() -> None:
    # a profile built in code (the loader refuses such a file: test_profiles)
    prof = replace(load("ollama-pool"), instance_tiers=((24576, 3), (16384, 2)))
    plan = make_plan(gpus(RTX_2070_8GB, RTX_A5000_24GB), prof)
    assert per_gpu_count(plan) == {0: 1, 1: 3}  # the 8 GB card: the lowest tier's 2, VRAM for 1


# --- issue 9.2: a small GPU runs the largest alternative that fits, CPU last -------------------


def models(inst: object) -> list[str]:
    return [m.name for m in inst.models]  # type: ignore[attr-defined]


def test_replicas_on_one_8_gb_card_run_a_7b_on_the_gpu() -> None:
    plan = make_plan(gpus(RTX_2070_8GB), load("ollama-replicas"))
    (inst,) = plan.instances
    assert inst.device == "gpu" and inst.gpus == (0,)
    assert models(inst) == ["mistral:7b-instruct-q4_0"]
    assert inst.vram_mib == 4608
    assert inst.alternative == 2
    assert "mixtral:8x7b needs 46080 MiB" in inst.choice
    assert "mistral-nemo:12b needs 9216 MiB" in inst.choice
    assert "7372 MiB the best free GPU offers" in inst.choice
    assert inst.choice in plan.notes
    data = plan.to_dict()["services"][0]
    assert data["alternative"] == 2 and data["model_choice"] == inst.choice


@pytest.mark.parametrize(
    ("mib", "model", "alternative"),
    [
        (RTX_3060_12GB, "mistral-nemo:12b", 1),
        (RTX_A5000_24GB, "mistral-nemo:12b", 1),
        (A100_64GB, "mixtral:8x7b", 0),
    ],
)
def test_replicas_run_the_largest_model_that_fits(mib: int, model: str, alternative: int) -> None:
    plan = make_plan(gpus(mib, mib), load("ollama-replicas"))
    assert [models(i) for i in plan.instances] == [[model], [model]]
    assert {i.alternative for i in plan.instances} == {alternative}
    assert all(i.device == "gpu" for i in plan.instances)


def test_every_replica_runs_the_same_model_and_a_small_gpu_stays_free() -> None:
    plan = make_plan(gpus(A100_64GB, RTX_2070_8GB), load("ollama-replicas"))
    assert gmap(plan) == {"ollama-0": [0]}
    assert models(plan.instance("ollama-0")) == ["mixtral:8x7b"]
    assert any(n.startswith("GPU 1 left free: 7372 MiB is less than the 46080") for n in plan.notes)


def test_cpu_only_when_no_alternative_fits() -> None:
    plan = make_plan(Inventory(source="empty"), load("ollama-replicas"))
    (inst,) = plan.instances
    assert inst.device == "cpu"


def test_pool_alternative_on_a_gpu_too_small_for_the_7b() -> None:
    prof = load("ollama-pool", "planner.headroom=0.4")  # 5912 x 0.6 = 3547 usable
    plan = make_plan(gpus(GTX_1660_TI_6GB), prof)
    (inst,) = plan.instances
    assert inst.device == "gpu"
    assert models(inst) == ["llama3.2:3b"] and inst.alternative == 1


def test_failover_keeps_the_alternative_a_replica_runs() -> None:
    prof = load("ollama-replicas")
    inv = gpus(RTX_2070_8GB, RTX_2070_8GB)
    first = make_plan(inv, prof)
    lost = replace(inv, gpus=(inv.gpus[0], replace(inv.gpus[1], health="lost")))
    after = make_plan(lost, prof, PlanOptions(previous=first))
    assert gmap(after) == {"ollama-0": [0]}
    assert models(after.instance("ollama-0")) == ["mistral:7b-instruct-q4_0"]


# --- issue 9.3: duplicate indices: placed and pinned on the same GPU ---------------------------


def test_duplicate_index_places_and_pins_the_same_gpu() -> None:
    small = Gpu(
        index=0,
        name="NVIDIA GeForce RTX 2070",
        uuid="GPU-12345678-aaaa-bbbb-cccc-0123456789ab",
        memory_total_mib=RTX_2070_8GB,
    )
    large = Gpu(
        index=0,
        name="NVIDIA RTX A5000",
        uuid="GPU-12345678-aaaa-bbbb-cccc-0123456789cd",
        memory_total_mib=RTX_A5000_24GB,
    )
    plan = make_plan(Inventory(source="merged", gpus=(small, large)), load("zenglow-personas"))
    leo = plan.instance("leonardo")
    assert leo.gpus == (0,)
    # placed on the first GPU 0 (8 GB: usable 7372, so Q5_K_M 6656 fits and jarvis does not)
    assert plan.instance("jarvis").device == "cpu"
    assert leo.device_ids == ("GPU-12345678-aaaa-bbbb-cccc-0123456789ab",)
    assert any("GPU index 0 is reported twice" in n and "pinned to it" in n for n in plan.notes)
    assert [(g.index, g.usable, g.why_not) for g in plan.gpus] == [
        (0, True, None),
        (0, False, "duplicate index"),
    ]


# --- issue 10.12: memory other processes hold is counted ---------------------------------------


def a5000_pair() -> Inventory:
    from composegen.detect.sources import load_inventory

    return load_inventory(str(fixture_path("nvidia-smi", "xml", "telegraf__dual_a5000-v13.xml")))


def test_memory_in_use_by_others_is_counted_with_a_warning() -> None:
    inv = a5000_pair()  # GPU 0: 22437 of 24564 MiB used, GPU 1: 17253
    plan = make_plan(inv, load("zenglow-personas"))
    assert plan.gpus[0].other_used_mib == 22107  # all of its 22107 usable (10% headroom)
    assert plan.gpus[0].usable_mib == 0
    assert plan.gpus[1].other_used_mib == 17408  # 17253 counted in steps of 256 MiB: 68 x 256
    assert plan.gpus[1].usable_mib == 4699  # 22107 - 17408
    leo = plan.instance("leonardo")
    assert leo.gpus == (1,) and models(leo) == ["mistral:7b-instruct-q4_0"]  # 4608 of 4699
    assert plan.instance("jarvis").device == "cpu"
    assert len(plan.warnings) == 2
    assert plan.warnings[0].startswith("GPU 0: 22437 of 24564 MiB already in use")
    assert "--ignore-used" in plan.warnings[0]
    # STACK.md gets the counted figure, not the live one, so it changes only by 256 MiB steps
    assert "GPU 1: 17408 MiB counted as held by other processes" in plan.notes[1]
    assert not any("17253" in n for n in plan.notes)


def test_a_few_mib_more_in_use_do_not_change_the_plan() -> None:
    inv = gpus(RTX_4080_SUPER_16GB)
    prof = load("zenglow-personas")
    plans = [
        make_plan(replace(inv, gpus=(replace(inv.gpus[0], memory_used_mib=used),)), prof)
        for used in (596, 601, 768)  # 596: the 4080 SUPER capture at idle
    ]
    same = [replace(p, warnings=()) for p in plans]  # the warnings quote the live figure
    assert same[0] == same[1] == same[2]
    assert plans[1].warnings[0].startswith("GPU 0: 601 of 16376 MiB already in use")
    assert plans[0].gpus[0].usable_mib == 13970  # 14738 - 768 (596 counted as 3 x 256)


def test_ignore_used_plans_as_if_the_gpus_were_empty() -> None:
    plan = make_plan(a5000_pair(), load("zenglow-personas"), PlanOptions(count_used=False))
    assert plan.gpus[0].free_mib == 15451  # 22107 - 6656: the figure issue 10 quotes
    assert gmap(plan) == {"leonardo": [0], "jarvis": [1]}
    assert plan.warnings == ()


def test_reference_hardware_has_nothing_in_use() -> None:
    prof = load("zenglow-personas")
    plan = make_plan(prof.reference_inventory(), prof)
    assert plan.warnings == () and all(g.other_used_mib == 0 for g in plan.gpus)
