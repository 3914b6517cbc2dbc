"""Profile loading: the five shipped profiles, schema errors with file and path, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from composegen import profiles
from composegen.errors import BadInputError
from composegen.profiles import Overrides, ProfileError

FIVE = ["rag-a100", "rma-shared", "zenglow-personas", "ollama-replicas", "ollama-pool"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", FIVE)
def test_shipped_profile_loads_and_pins_real_images(name: str) -> None:
    prof = profiles.load(name)
    assert prof.name == name
    assert prof.description
    assert prof.reference.gpus
    for key, image in prof.images.items():
        assert ":" in image.rsplit("/", 1)[-1], f"{key}: {image} is not pinned to a tag"
        assert not image.endswith(":latest"), f"{key}: {image} uses :latest"
    for svc in prof.services:
        assert svc.image in prof.images
        assert svc.health.interval and svc.health.retries >= 1
        for key in svc.env:
            assert key not in {
                "OLLAMA_GPU_LAYERS",
                "OLLAMA_MAX_VRAM_USAGE",
                "OLLAMA_PHI3_GPU",
                "OLLAMA_MAX_VRAM",
                "CUDA_VISIBLE_DEVICES",
            }


def test_every_shipped_profile_is_listed() -> None:
    assert sorted(profiles.available()) == sorted(FIVE)


def _write(tmp: Path, name: str, data: dict[str, object]) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _base() -> dict[str, object]:
    data = yaml.safe_load((ROOT / "profiles" / "zenglow-personas.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["services"]["leonardo"]["gpu"].update(count=0),
            "services.leonardo.gpu.count: must be >= 1",
        ),
        (
            lambda d: d["services"]["jarvis"].update(port="eleven"),
            "services.jarvis.port: must be an integer",
        ),
        (
            lambda d: d["services"]["jarvis"].update(colour="blue"),
            "services.jarvis: unknown key 'colour'",
        ),
        (lambda d: d.pop("reference"), "reference' is required"),
        (
            lambda d: d["services"]["jarvis"]["gpu"].update(prefer="biggest"),
            "services.jarvis.gpu.prefer: must be one of first, largest",
        ),
        (
            lambda d: d["services"]["jarvis"].update(image="nope"),
            "services.jarvis.image: unknown image key 'nope'",
        ),
        (
            lambda d: d["services"]["jarvis"].update(route="/leonardo/"),
            "services.jarvis.route: /leonardo/ is already the route of services.leonardo",
        ),
        (
            lambda d: d["services"]["jarvis"].update(depends_on=["ghost"]),
            "services.jarvis.depends_on: no service 'ghost'",
        ),
        (
            lambda d: d["services"]["jarvis"].update(volumes=["undeclared:/data"]),
            "services.jarvis.volumes[0]: volume 'undeclared' is not declared",
        ),
        (
            lambda d: d["images"].update(ollama="Not An Image!"),
            "images.ollama: 'Not An Image!' does not match",
        ),
    ],
)
def test_bad_profile_names_file_and_path(tmp_path: Path, edit: object, message: str) -> None:
    data = _base()
    edit(data)  # type: ignore[operator]
    path = _write(tmp_path, "zenglow-personas", data)
    with pytest.raises(ProfileError) as err:
        profiles.load(str(path))
    assert str(path) in err.value.message
    assert message in err.value.message


def test_name_must_match_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "other", _base())
    with pytest.raises(ProfileError, match="differs from the file name 'other'"):
        profiles.load(str(path))


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nservices: [\n")
    with pytest.raises(BadInputError, match=r"broken.yaml: invalid YAML at line \d+"):
        profiles.load(str(path))


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(BadInputError) as err:
        profiles.load("no-such-profile")
    assert "unknown profile 'no-such-profile'" in err.value.message
    assert "rag-a100" in (err.value.hint or "")


def test_profiles_dir_and_env_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _base()
    data["name"] = "my-personas"
    d1 = tmp_path / "one"
    d1.mkdir()
    _write(d1, "my-personas", data)
    assert profiles.load("my-personas", [str(d1)]).name == "my-personas"
    monkeypatch.setenv("COMPOSEGEN_PROFILES_PATH", str(d1))
    assert "my-personas" in profiles.available()
    assert profiles.load("my-personas").name == "my-personas"
    with pytest.raises(BadInputError, match="profiles directory does not exist"):
        profiles.available([str(tmp_path / "missing")])


def test_set_values_and_image_overrides(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("planner:\n  headroom: 0.25\ntunables:\n  OLLAMA_KEEP_ALIVE: 1h\n")
    prof = profiles.load(
        "zenglow-personas",
        overrides=Overrides(
            sets=("services.jarvis.gpu.on_short=drop", "tunables.OLLAMA_NUM_PARALLEL=4"),
            values_files=(str(values),),
            images=("ollama=local/ollama-stub:1",),
        ),
    )
    assert prof.headroom == 0.25
    assert prof.tunables["OLLAMA_KEEP_ALIVE"] == "1h"
    assert prof.tunables["OLLAMA_NUM_PARALLEL"] == "4"
    assert prof.service("jarvis").gpu is not None
    assert prof.service("jarvis").gpu.on_short == "drop"  # type: ignore[union-attr]
    assert prof.images["ollama"] == "local/ollama-stub:1"


@pytest.mark.parametrize(
    ("ov", "message"),
    [
        (Overrides(sets=("planner.headroom",)), "expected KEY=VALUE"),
        (Overrides(sets=("planner..headroom=1",)), "empty part in key"),
        (Overrides(sets=("planner.headroom=2",)), "planner.headroom: must be <= 0.9"),
        (
            Overrides(sets=("services.jarvis.gpu.count=-1",)),
            "services.jarvis.gpu.count: must be >= 1",
        ),
        (Overrides(sets=("name.x=1",)), "name is a str, not a mapping"),
        (Overrides(images=("ollama",)), "expected KEY=IMAGE"),
        (Overrides(images=("whisper=x/y:1",)), "has no image key 'whisper'"),
        (Overrides(values_files=("/nonexistent/values.yaml",)), "no such file"),
    ],
)
def test_bad_overrides(ov: Overrides, message: str) -> None:
    with pytest.raises(BadInputError) as err:
        profiles.load("zenglow-personas", overrides=ov)
    assert message in err.value.message


def test_reference_inventory_expands_counts_and_nvlink() -> None:
    inv = profiles.load("rag-a100").reference_inventory()
    assert len(inv.gpus) == 8
    assert {g.memory_total_mib for g in inv.gpus} == {81920}
    assert inv.gpus[0].nvlink_peers == (1, 2, 3, 4, 5, 6, 7)
    assert inv.source == "reference:rag-a100"


# --- issue 9.10 and 9.11: what the planner needs, checked when loading --------------------------


def _pool() -> dict[str, object]:
    data = yaml.safe_load((ROOT / "profiles" / "ollama-pool.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_tiers_without_a_floor_are_refused_when_loading(tmp_path: Path) -> None:
    data = _pool()
    data["planner"]["instance_tiers"] = [  # type: ignore[index]
        {"min_mib": 24576, "instances": 3},
        {"min_mib": 16384, "instances": 2},
    ]
    path = _write(tmp_path, "ollama-pool", data)
    with pytest.raises(ProfileError) as err:
        profiles.load(str(path))
    assert err.value.message == (
        f"{path}: planner.instance_tiers: no tier has min_mib: 0, so a GPU smaller than "
        "16384 MiB would have no tier"
    )
    assert err.value.hint == "add {min_mib: 0, instances: 1} (the floor every GPU falls into)"


def test_duplicate_tier_floors_are_refused(tmp_path: Path) -> None:
    data = _pool()
    data["planner"]["instance_tiers"].append({"min_mib": 0, "instances": 2})  # type: ignore[index]
    path = _write(tmp_path, "ollama-pool", data)
    with pytest.raises(ProfileError, match="min_mib 0 appears twice"):
        profiles.load(str(path))


def test_on_short_cpu_without_a_cpu_block_says_what_is_missing(tmp_path: Path) -> None:
    data = _base()
    del data["services"]["jarvis"]["cpu"]  # type: ignore[index]
    path = _write(tmp_path, "zenglow-personas", data)
    with pytest.raises(ProfileError) as err:
        profiles.load(str(path))
    assert err.value.message == (
        f"{path}: services.jarvis.gpu.on_short: 'cpu' needs a CPU variant, and "
        "services.jarvis has no cpu: block"
    )
    assert "on_short=cpu" not in (err.value.hint or "")
    assert "add services.jarvis.cpu:" in (err.value.hint or "")


# --- issue 10.14: an override's mistake is blamed on the override ------------------------------


def test_set_typo_is_blamed_on_set_not_on_the_profile() -> None:
    with pytest.raises(ProfileError) as err:
        profiles.load("rag-a100", overrides=Overrides(sets=("planner.headrom=0.2",)))
    assert err.value.message == (
        "--set 'planner.headrom=0.2' (on profiles/rag-a100.yaml): planner: unknown key "
        "'headrom' (did you mean 'headroom'?)"
    )


def test_the_second_set_is_named_when_it_is_the_bad_one() -> None:
    ov = Overrides(sets=("planner.headroom=0.2", "services.ocr.gpu.on_short=cpu"))
    with pytest.raises(ProfileError) as err:
        profiles.load("rag-a100", overrides=ov)
    assert err.value.message.startswith(
        "--set 'services.ocr.gpu.on_short=cpu' (on profiles/rag-a100.yaml): "
        "services.ocr.gpu.on_short: 'cpu' needs a CPU variant"
    )


def test_values_file_is_named_when_it_is_the_bad_one(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("planner:\n  spare: 1\n")
    with pytest.raises(ProfileError) as err:
        profiles.load("rag-a100", overrides=Overrides(values_files=(str(values),)))
    assert err.value.message.startswith(f"--values {values} (on profiles/rag-a100.yaml): planner:")


def test_a_bad_profile_file_is_still_blamed_on_the_file(tmp_path: Path) -> None:
    data = _base()
    data["planner"]["headrom"] = 0.1  # type: ignore[index]
    path = _write(tmp_path, "zenglow-personas", data)
    with pytest.raises(ProfileError) as err:
        profiles.load(str(path), overrides=Overrides(sets=("planner.headroom=0.2",)))
    assert err.value.message.startswith(f"{path}: planner: unknown key 'headrom'")
