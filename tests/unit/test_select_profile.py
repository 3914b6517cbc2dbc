"""The tool selects the profile: ranking by fit, then closeness to each profile's reference
hardware (GPU count, VRAM per GPU, GPU models, NVLink), as a pure function, and its one-line
explanation. Hosts are the project's fakes of the issue's cards and nvidia-smi fixtures."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from composegen import app, profiles
from composegen.detect import nvml
from composegen.errors import BadInputError
from composegen.inventory import Gpu, Inventory
from composegen.profiles import Reference, RefGpu
from composegen.selection import Candidate, Closeness, NothingFits, choose, closeness, ranked
from tests.conftest import fixture_path
from tests.fake_nvml import FakeNvml

Install = Callable[[str], FakeNvml]
RTX_4080_SUPER_CSV = (
    "nvidia-smi",
    "csv",
    "nvidia_gpu_exporter__linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05__idle.query-gpu.csv",
)


def host(nvml_scenario: Install, name: str) -> Inventory:
    nvml_scenario(name)
    return nvml.read_inventory()


@pytest.mark.parametrize(
    ("scenario", "expected", "line"),
    [
        (
            "consumer_pair",  # RTX 3060 Ti 8192 MiB + GTX 1660 SUPER 6144 MiB
            "zenglow-personas",
            "profile zenglow-personas chosen for this host: fits yes (2 service(s) on 2 GPU(s)); "
            "closest reference: 2 GPU(s) as the reference, VRAM/GPU 8192+6144 MiB vs 8192+6144, "
            "2 of 2 GPU models, NVLink none as the reference; next: rma-shared (2 GPU(s) vs 1 in "
            "the reference, VRAM/GPU 8192+6144 MiB vs 16376, 0 of 1 GPU models, NVLink none as "
            "the reference)",
        ),
        (
            "a100_8x80",  # 8x A100-SXM4-80GB, 81920 MiB each, NVLink between all
            "rag-a100",
            "profile rag-a100 chosen for this host: fits yes (4 service(s) on 5 GPU(s)); "
            "closest reference: 8 GPU(s) as the reference, VRAM/GPU 8x81920 MiB vs 8x81920, "
            "8 of 8 GPU models, NVLink all as the reference; next: ollama-replicas (8 GPU(s) vs "
            "4 in the reference, VRAM/GPU 8x81920 MiB vs 4x65536, 0 of 4 GPU models, NVLink all "
            "as the reference)",
        ),
        (
            "a100_4x64",  # 4x A100-SXM-64GB, 65536 MiB each, NVLink between all
            "ollama-replicas",
            "profile ollama-replicas chosen for this host: fits yes (4 service(s) on 4 GPU(s)); "
            "closest reference: 4 GPU(s) as the reference, VRAM/GPU 4x65536 MiB vs 4x65536, "
            "4 of 4 GPU models, NVLink all as the reference; next: ollama-pool (4 GPU(s) vs 3 in "
            "the reference, VRAM/GPU 4x65536 MiB vs 24576+12282+8192, 0 of 3 GPU models, NVLink "
            "all vs none)",
        ),
    ],
)
def test_the_issues_hosts_get_their_profile_and_why(
    nvml_scenario: Install, scenario: str, expected: str, line: str
) -> None:
    name, why, local = app.auto_profile(local=host(nvml_scenario, scenario))
    assert name == expected
    assert why == line
    assert local is not None and local.gpus  # reused by build: no second detection


def test_one_16_gb_card_gets_rma_shared() -> None:
    path = str(fixture_path(*RTX_4080_SUPER_CSV))  # RTX 4080 SUPER, 16376 MiB
    name, why, local = app.auto_profile(inventory=path)
    assert name == "rma-shared"
    assert local is None
    assert why.startswith(
        f"profile rma-shared chosen for inventory file {path}: fits yes (2 service(s) on 1 "
        "GPU(s)); closest reference: 1 GPU(s) as the reference, VRAM/GPU 16376 MiB vs 16376, "
        "0 of 1 GPU models, NVLink none as the reference; next: zenglow-personas (1 GPU(s) vs 2"
    ), why


@pytest.mark.parametrize("name", sorted(profiles.available(())))
def test_each_profile_is_chosen_on_its_own_reference_hardware(name: str) -> None:
    inv = profiles.load(name).reference_inventory()
    order = app.rank(inv)
    assert order[0].name == name
    assert order[0].fits == "yes"
    close = order[0].closeness
    assert close is not None and close.count_diff == 0 and close.vram_distance == 0
    assert not close.nvlink_differs


def test_detect_and_profiles_rank_the_same_way_best_first(nvml_scenario: Install) -> None:
    inv = host(nvml_scenario, "a100_4x64")
    names = [f.name for f in app.rank(inv)]
    # rag-a100 wants 5 GPUs of 80 GB: degraded here, so last although its GPUs are A100s too
    assert names[0] == "ollama-replicas" and names[-1] == "rag-a100"
    assert [f.fits for f in app.rank(inv)][-1] == "degraded"


# --- the order as a pure function: each criterion decides only when the earlier ones tie ---

A5000 = 24564  # xml/telegraf__dual_a5000-v13.xml
RTX_3090 = 24576  # xml/telegraf__3090-v13.xml
RTX_2070 = 8192  # xml/telegraf__dual_2070-v13.xml
L40S = 46068  # csv/...nvidia-l40s...query-gpu.csv


def ref(*gpus: tuple[str, int], nvlink: bool = False) -> Reference:
    return Reference(
        name="ref",
        gpus=tuple(RefGpu(n, m) for n, m in gpus),
        nvlink="all" if nvlink else "none",
    )


def inv(*gpus: tuple[str, int], nvlink: bool = False) -> Inventory:
    every = tuple(range(len(gpus)))
    return Inventory(
        source="test",
        gpus=tuple(
            Gpu(
                index=i,
                name=n,
                memory_total_mib=m,
                nvlink_peers=tuple(j for j in every if j != i) if nvlink else (),
            )
            for i, (n, m) in enumerate(gpus)
        ),
    )


def cand(name: str, fits: str, close: Closeness) -> Candidate:
    return Candidate(name, fits, "why", close)


TWO_A5000 = inv(("NVIDIA RTX A5000", A5000), ("NVIDIA RTX A5000", A5000))


def test_fit_comes_before_closeness() -> None:
    exact = closeness(ref(("NVIDIA RTX A5000", A5000), ("NVIDIA RTX A5000", A5000)), TWO_A5000)
    far = closeness(ref(("NVIDIA L40S", L40S)), TWO_A5000)
    order = ranked([cand("a", "degraded", exact), cand("b", "yes", far), cand("c", "no", exact)])
    assert [c.name for c in order] == ["b", "a", "c"]


def test_gpu_count_comes_before_vram() -> None:
    same_count = closeness(ref(("x", RTX_2070), ("y", RTX_2070)), TWO_A5000)
    same_vram = closeness(ref(("NVIDIA RTX A5000", A5000)), TWO_A5000)
    assert same_count.count_diff == 0 and same_vram.count_diff == 1
    order = ranked([cand("a", "yes", same_vram), cand("b", "yes", same_count)])
    assert [c.name for c in order] == ["b", "a"]


def test_vram_comes_before_the_gpu_model() -> None:
    # 24576 (RTX 3090) is next to 24564 (A5000); the same model at 8192 MiB is not
    close_vram = closeness(
        ref(("NVIDIA GeForce RTX 3090", RTX_3090)), inv(("NVIDIA RTX A5000", A5000))
    )
    same_model = closeness(ref(("NVIDIA RTX A5000", RTX_2070)), inv(("NVIDIA RTX A5000", A5000)))
    assert close_vram.vram_distance == 0.0  # within rounding: the same size class
    assert same_model.models == 1 and close_vram.models == 0
    order = ranked([cand("a", "yes", same_model), cand("b", "yes", close_vram)])
    assert [c.name for c in order] == ["b", "a"]


def test_the_gpu_model_comes_before_nvlink() -> None:
    host_inv = inv(("NVIDIA RTX A5000", A5000), ("NVIDIA RTX A5000", A5000), nvlink=True)
    model = closeness(ref(("NVIDIA RTX A5000", A5000), ("NVIDIA RTX A5000", A5000)), host_inv)
    link = closeness(
        ref(
            ("NVIDIA GeForce RTX 3090", RTX_3090),
            ("NVIDIA GeForce RTX 3090", RTX_3090),
            nvlink=True,
        ),
        host_inv,
    )
    assert model.nvlink_differs and not link.nvlink_differs
    order = ranked([cand("a", "yes", link), cand("b", "yes", model)])
    assert [c.name for c in order] == ["b", "a"]


def test_nvlink_decides_a_tie_then_the_name() -> None:
    linked = inv(("NVIDIA RTX A5000", A5000), ("NVIDIA RTX A5000", A5000), nvlink=True)
    pair = (("NVIDIA RTX A5000", A5000), ("NVIDIA RTX A5000", A5000))
    with_link = closeness(ref(*pair, nvlink=True), linked)
    without = closeness(ref(*pair), linked)
    order = ranked(
        [cand("a", "yes", without), cand("z", "yes", with_link), cand("b", "yes", without)]
    )
    assert [c.name for c in order] == ["z", "a", "b"]


def test_a_degraded_best_is_chosen_and_says_so() -> None:
    one = closeness(ref(("NVIDIA RTX A5000", A5000)), TWO_A5000)
    choice = choose(
        [
            Candidate("p", "degraded", "on CPU: ocr", one),
            Candidate("q", "no", "needs 5 GPUs", one),
        ],
        "this host",
    )
    assert choice.name == "p"
    assert choice.line == (
        "profile p chosen for this host: fits degraded (on CPU: ocr); closest reference: "
        "2 GPU(s) vs 1 in the reference, VRAM/GPU 2x24564 MiB vs 24564, 1 of 1 GPU models, "
        "NVLink none as the reference; next: q (fits no)"
    )


def test_nothing_fits_is_not_a_choice() -> None:
    one = closeness(ref(("NVIDIA RTX A5000", A5000)), TWO_A5000)
    with pytest.raises(NothingFits) as err:
        choose([Candidate("q", "no", "needs 5 GPUs", one)], "this host")
    assert err.value.reasons == "q: needs 5 GPUs"


def test_no_gpu_asks_for_a_profile_and_lists_them(nvml_scenario: Install) -> None:
    with pytest.raises(BadInputError) as err:
        app.auto_profile(local=host(nvml_scenario, "no_devices"))
    assert "has no usable GPU" in err.value.message
    assert err.value.hint == (
        "pass --profile NAME (one of: ollama-pool, ollama-replicas, rag-a100, rma-shared, "
        "zenglow-personas); with no GPU it is planned on that profile's reference hardware"
    )


def test_reference_needs_a_profile() -> None:
    with pytest.raises(BadInputError) as err:
        app.auto_profile(reference=True)
    assert "--reference needs a profile" in err.value.message


def test_lost_gpus_do_not_count(nvml_scenario: Install) -> None:
    """A100 host with two of four GPUs lost: two usable GPUs are compared, not four."""
    inv_lost = host(nvml_scenario, "lost_gpu")
    close = closeness(profiles.load("ollama-replicas").reference, inv_lost)
    assert len(close.gpus) == len(inv_lost.healthy_gpus) == 2
