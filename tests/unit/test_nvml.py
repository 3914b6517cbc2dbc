"""Detection through NVML, against named fake-NVML scenarios at the pynvml boundary."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from composegen.detect import nvml
from composegen.detect import sources as detection
from composegen.inventory import Inventory
from tests.conftest import fixture_path
from tests.fake_nvml import FakeNvml

Install = Callable[[str], FakeNvml]


def _detect() -> Inventory:
    return detection.detect_local(nvml_timeout_s=2.0, with_host=False)


def test_eight_a100_80gb(nvml_scenario: Install) -> None:
    nvml_scenario("a100_8x80")
    inv = _detect()
    assert inv.source == "nvml"
    assert inv.driver_version == "550.54.15"
    assert inv.cuda_version == "12.4"
    assert inv.nvml_version == "12.550.54.15"
    assert [g.index for g in inv.gpus] == list(range(8))
    assert {g.name for g in inv.gpus} == {"NVIDIA A100-SXM4-80GB"}
    assert all(g.memory_total_mib == 81920 for g in inv.gpus)
    assert all(g.memory_free_mib == 81920 and g.memory_used_mib == 0 for g in inv.gpus)
    assert inv.gpus[0].compute_capability == "8.0"
    assert inv.gpus[3].pci_bus_id == "00000000:37:00.0"
    assert inv.gpus[0].power_limit_w == 400.0
    assert inv.gpus[0].power_draw_w == 60.0
    assert inv.gpus[0].mig_mode == "disabled"
    # NVSwitch: every GPU reaches every other one
    assert inv.gpus[2].nvlink_peers == (0, 1, 3, 4, 5, 6, 7)
    assert len({g.uuid for g in inv.gpus}) == 8
    assert all(g.health == "ok" for g in inv.gpus)
    assert inv.warnings == ()


def test_four_a100_64gb(nvml_scenario: Install) -> None:
    nvml_scenario("a100_4x64")
    inv = _detect()
    assert len(inv.gpus) == 4
    assert [g.memory_total_mib for g in inv.gpus] == [65536] * 4
    assert [g.minor_number for g in inv.gpus] == [0, 1, 2, 3]


def test_unequal_consumer_pair(nvml_scenario: Install) -> None:
    nvml_scenario("consumer_pair")
    inv = _detect()
    assert [(g.name, g.memory_total_mib, g.compute_capability) for g in inv.gpus] == [
        ("NVIDIA GeForce RTX 3060 Ti", 8192, "8.6"),
        ("NVIDIA GeForce GTX 1660 SUPER", 6144, "7.5"),
    ]
    assert all(g.nvlink_peers == () for g in inv.gpus)
    assert all(g.mig_mode is None for g in inv.gpus)  # MIG not supported on GeForce


def test_single_8gb_card(nvml_scenario: Install) -> None:
    nvml_scenario("single_8gb")
    inv = _detect()
    assert len(inv.gpus) == 1
    assert inv.gpus[0].memory_total_mib == 8192


def test_lost_gpu_is_reported_and_others_still_are(nvml_scenario: Install) -> None:
    nvml_scenario("lost_gpu")
    inv = _detect()
    assert [g.health for g in inv.gpus] == ["ok", "ok", "lost", "lost"]
    assert "GPU_IS_LOST" in (inv.gpus[2].health_reason or "")
    assert inv.gpus[2].name == "unknown"
    assert inv.gpus[0].memory_total_mib == 65536
    assert [g.index for g in inv.healthy_gpus] == [0, 1]


def test_uncorrectable_ecc_errors_make_a_gpu_unhealthy(nvml_scenario: Install) -> None:
    nvml_scenario("ecc_errors")
    inv = _detect()
    assert [g.health for g in inv.gpus] == ["ok"] * 6 + ["error", "ok"]
    assert "uncorrectable ECC" in (inv.gpus[6].health_reason or "")
    assert inv.gpus[6].memory_total_mib == 81920  # still fully reported


def test_mig_devices_listed_and_gpu_memory_kept(nvml_scenario: Install) -> None:
    nvml_scenario("mig_enabled")
    inv = _detect()
    g0, g1 = inv.gpus
    assert g0.mig_mode == "enabled"
    assert g0.memory_total_mib == 81920  # the GPU's, not a slice's
    assert g0.utilization_gpu_pct is None  # NVML does not report it in MIG mode
    assert [(m.profile, m.memory_total_mib, m.gpu_instance_id) for m in g0.mig_devices] == [
        ("3g.40gb", 40192, 2),
        ("2g.20gb", 19968, 3),
    ]
    assert g0.mig_devices[0].uuid == "MIG-11111111-0000-4000-8000-000000000000"
    assert g1.mig_mode == "disabled" and g1.mig_devices == ()
    assert g0.nvlink_peers == (1,)


def test_driver_not_loaded_is_no_gpu_with_reason(nvml_scenario: Install) -> None:
    nvml_scenario("no_driver")
    inv = _detect()
    assert inv.gpus == ()
    assert inv.no_gpu_reason == "the NVIDIA kernel driver is not loaded"


def test_no_devices(nvml_scenario: Install) -> None:
    nvml_scenario("no_devices")
    inv = _detect()
    assert inv.gpus == ()
    assert inv.no_gpu_reason == "the NVIDIA driver is loaded but reports no GPU"


def test_no_library_and_no_nvidia_smi(nvml_scenario: Install, no_nvidia_smi: None) -> None:
    nvml_scenario("no_library")
    inv = _detect()
    assert inv.gpus == ()
    assert inv.no_gpu_reason == (
        "no NVIDIA driver: libnvidia-ml.so.1 not found, and nvidia-smi is not on PATH"
    )


def _fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


def test_falls_back_to_nvidia_smi_xml(
    nvml_scenario: Install, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xml = fixture_path("nvidia-smi", "xml", "openpai__nvidia_smi_sample_ecc_unsupported.xml")
    _fake_smi(tmp_path, monkeypatch, f'[ "$1 $2" = "-q -x" ] || exit 9\ncat "{xml}"\n')
    nvml_scenario("no_library")
    inv = _detect()
    assert inv.source == "nvidia-smi"
    assert [g.name for g in inv.gpus] == ["GeForce RTX 2080 Ti", "GeForce RTX 2080 Ti"]
    assert inv.driver_version == "410.73"


def test_nvidia_smi_with_a_lost_gpu(
    nvml_scenario: Install, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real stderr text (JosephKJ/OWOD#81); nvidia-smi prints no XML and exits non-zero.
    _fake_smi(
        tmp_path,
        monkeypatch,
        "echo 'Unable to determine the device handle for GPU 0000:02:00.0: GPU is lost. "
        "Reboot the system to recover this GPU' >&2\nexit 15\n",
    )
    nvml_scenario("no_library")
    inv = _detect()
    assert len(inv.gpus) == 1
    g = inv.gpus[0]
    assert g.health == "lost" and g.pci_bus_id == "0000:02:00.0"
    assert "GPU is lost" in (g.health_reason or "")


def test_nvidia_smi_failure_gives_reason(
    nvml_scenario: Install, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_smi(
        tmp_path,
        monkeypatch,
        "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\n"
        "exit 9\n",
    )
    nvml_scenario("no_library")
    inv = _detect()
    assert inv.gpus == ()
    assert inv.no_gpu_reason is not None
    assert "could not communicate with the NVIDIA driver" in inv.no_gpu_reason


def test_init_timeout(nvml_scenario: Install, no_nvidia_smi: None) -> None:
    fake = nvml_scenario("init_hangs")
    with pytest.raises(nvml.NvmlUnavailable) as err:
        nvml.read_inventory(timeout_s=0.2)
    fake._release.set()
    assert err.value.kind == "timeout"


def test_init_once_and_shutdown(nvml_scenario: Install) -> None:
    fake = nvml_scenario("single_8gb")
    nvml.read_inventory()
    nvml.read_inventory()
    assert fake.init_calls == 1
    nvml.shutdown()
    assert fake.shutdown_calls == 1
    nvml.shutdown()
    assert fake.shutdown_calls == 1


@pytest.mark.parametrize(
    "name",
    [
        "a100_8x80",
        "a100_4x64",
        "consumer_pair",
        "single_8gb",
        "lost_gpu",
        "mig_enabled",
        "no_driver",
    ],
)
def test_scenarios_round_trip_json(nvml_scenario: Install, name: str) -> None:
    nvml_scenario(name)
    inv = _detect()
    text = inv.to_json()
    assert Inventory.from_json(text) == inv
    assert Inventory.from_json(text).to_json() == text
