"""composegen.detect.nvidia_smi against real nvidia-smi output (tests/fixtures/nvidia-smi).

The expected values below were read out of the fixture files by hand; the parsers must
reproduce them exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from composegen.detect import nvidia_smi
from composegen.detect.nvidia_smi import (
    DEFAULT_QUERY_FIELDS,
    QUERY_COMMAND,
    parse_any,
    parse_capture,
    parse_csv,
    parse_query_text,
    parse_xml,
    sniff,
)
from composegen.errors import EXIT_BAD_INPUT, InventoryFileError
from composegen.inventory import Inventory, MigDevice

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "nvidia-smi"
KIND_DIRS = {"xml": "xml", "csv": "csv", "captures": "capture"}
SOURCES = {
    "xml": "file:nvidia-smi-xml",
    "csv": "file:nvidia-smi-csv",
    "capture": "file:nvidia-smi-capture",
    "query-text": "file:nvidia-smi-q",
}
PARSERS = {
    "xml": parse_xml,
    "csv": parse_csv,
    "capture": parse_capture,
    "query-text": parse_query_text,
}


def fixture_text(rel: str) -> str:
    if not FIXTURES.is_dir():
        pytest.fail(f"{FIXTURES} is missing from the checkout (they must not be skipped)")
    return (FIXTURES / rel).read_text(encoding="utf-8")


class Expect(NamedTuple):
    names: tuple[str, ...]
    memory_mib: tuple[int | None, ...]
    uuids: tuple[str, ...]
    driver: str | None
    cuda: str | None
    nvml: str | None = None


ZERO_UUID = "GPU-00000000-0000-0000-0000-000000000000"
MASKED_AB = "GPU-12345678-aaaa-bbbb-cccc-0123456789ab"
MASKED_CD = "GPU-12345678-aaaa-bbbb-cccc-0123456789cd"
H100 = "NVIDIA H100 80GB HBM3"
EXPORTER = "nvidia_gpu_exporter__linux-x86_64__"

TABLE: dict[str, Expect] = {
    # xml/ (nvidia-smi -q -x)
    "xml/openpai__nvidia_smi_outdated_gpu.xml": Expect(
        ("GeForce GT 730",), (None,), ("GPU-09cb2925-9d01-5ca4-810b-6cdebe86b71a",), "384.111", None
    ),
    "xml/openpai__nvidia_smi_sample.xml": Expect(
        ("GeForce GTX 1070", "GeForce GTX 1070"),
        (8112, 8114),
        ("GPU-e511a7b2-f9d5-ba47-9b98-853732ca6c1b", "GPU-28daffaf-8abe-aaf8-c298-4bd13aecb5e6"),
        "384.66",
        None,
    ),
    "xml/openpai__nvidia_smi_sample_ecc_unsupported.xml": Expect(
        ("GeForce RTX 2080 Ti", "GeForce RTX 2080 Ti"),
        (10989, 10989),
        ("GPU-57567e11-0be2-381b-5132-2ad95c262e58", "GPU-ef1d0068-5bfd-f1e4-7e79-ff35d71d44b8"),
        "410.73",
        "10.0",
    ),
    "xml/telegraf__3090-v13.xml": Expect(
        ("NVIDIA GeForce RTX 3090",), (24576,), (MASKED_AB,), "590.44.01", "13.1"
    ),
    "xml/telegraf__a10g.xml": Expect(
        ("NVIDIA A10G",),
        (23028,),
        ("GPU-9a9a6c50-2a47-2f51-a902-b82c3b127e94",),
        "515.105.01",
        "11.7",
    ),
    "xml/telegraf__dual_2070-v13.xml": Expect(
        ("NVIDIA GeForce RTX 2070", "NVIDIA GeForce RTX 2070"),
        (8192, 8192),
        (MASKED_AB, MASKED_CD),
        "590.44.01",
        "13.1",
    ),
    "xml/telegraf__dual_a5000-v13.xml": Expect(
        ("NVIDIA RTX A5000", "NVIDIA RTX A5000"),
        (24564, 24564),
        (MASKED_AB, MASKED_CD),
        "590.44.01",
        "13.1",
    ),
    "xml/telegraf__gt-1030.xml": Expect(
        ("NVIDIA GeForce GT 1030",),
        (1998,),
        ("GPU-857c6374-f681-cf3a-f99f-9063a87b8ac0",),
        "470.74",
        "11.4",
    ),
    "xml/telegraf__gtx-1660-ti.xml": Expect(
        ("Graphics Device",),
        (5912,),
        ("GPU-304a277d-3545-63b8-3a36-dfde3c992989",),
        "418.43",
        "10.1",
    ),
    "xml/telegraf__pro-6000-maxq-blackwell-v13.xml": Expect(
        ("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition",),
        (97887,),
        (MASKED_AB,),
        "590.44.01",
        "13.1",
    ),
    "xml/telegraf__quadro-p400.xml": Expect(
        ("Quadro P400",), (1998,), ("GPU-8f750be4-dfbc-23b9-b33f-da729a536494",), "418.43", "10.1"
    ),
    "xml/telegraf__rtx-3060-v12.xml": Expect(
        ("NVIDIA GeForce RTX 3060",),
        (12288,),
        ("GPU-d6889ff6-2523-9142-ca3c-1ca3f396a625",),
        "570.124.04",
        "12.8",
    ),
    "xml/telegraf__tesla-t4.xml": Expect(
        ("Tesla T4",), (15360,), ("GPU-d37e67a5-91dd-3774-a5cb-99096249601a",), "515.105.01", "11.7"
    ),
    "xml/telegraf__tesla_p4.xml": Expect(
        ("GRID P4-1Q",), (1024,), ("GPU-1b1ea7c7-1c4b-ed49-1c72-26c65f2dd207",), "513.46", "11.6"
    ),
    # csv/ (--query-gpu; no CUDA version in CSV)
    f"csv/{EXPORTER}nvidia-geforce-rtx-4080-super__595.71.05__idle.query-gpu.csv": Expect(
        ("NVIDIA GeForce RTX 4080 SUPER",), (16376,), (ZERO_UUID,), "595.71.05", None
    ),
    f"csv/{EXPORTER}nvidia-h100-80gb-hbm3__590.48.01__idle.query-gpu.csv": Expect(
        (H100,), (81559,), (ZERO_UUID,), "590.48.01", None
    ),
    f"csv/{EXPORTER}nvidia-h100-mig__590.48.01__idle.query-gpu.csv": Expect(
        (H100,), (81559,), (ZERO_UUID,), "590.48.01", None
    ),
    f"csv/{EXPORTER}nvidia-l40s__595.80__idle.query-gpu.csv": Expect(
        ("NVIDIA L40S",), (46068,), (ZERO_UUID,), "595.80", None
    ),
    "csv/telegraf-2018__noheader-nounits__12fields.csv": Expect(
        ("GeForce GTX 1070 Ti", "Tesla P4"),
        (8114, 7606),
        ("GPU-d1911b8a-f5c8-5e66-057c-486561269de8", "GPU-xxx"),
        None,
        None,
    ),
    "csv/telegraf-2019__noheader-nounits__22fields.csv": Expect(
        ("GeForce RTX 2080 Ti",) * 3,
        (11264,) * 3,
        ("GPU-c97b7f88-c06d-650f-5339-f8dd0c1315c0",) * 3,
        None,
        None,
    ),
    # captures/ (nvidia_gpu_exporter: --version, -L, topo -m, -q, query-gpu CSV, ...)
    f"captures/{EXPORTER}nvidia-geforce-rtx-4080-super__595.71.05.txt": Expect(
        ("NVIDIA GeForce RTX 4080 SUPER",), (16376,), (ZERO_UUID,), "595.71.05", "13.2", "595.71"
    ),
    f"captures/{EXPORTER}nvidia-h100-80gb-hbm3__590.48.01.txt": Expect(
        (H100,), (81559,), (ZERO_UUID,), "590.48.01", "13.1", "590.48"
    ),
    f"captures/{EXPORTER}nvidia-h100-mig__590.48.01.txt": Expect(
        (H100,), (81559,), (ZERO_UUID,), "590.48.01", "13.1", "590.48"
    ),
    f"captures/{EXPORTER}nvidia-l40s__595.80.txt": Expect(
        ("NVIDIA L40S",), (46068,), (ZERO_UUID,), "595.80", "13.2", "595.80"
    ),
}
MIG_CAPTURE = f"captures/{EXPORTER}nvidia-h100-mig__590.48.01.txt"
MIG_CSV = f"csv/{EXPORTER}nvidia-h100-mig__590.48.01__idle.query-gpu.csv"


def kind_of(rel: str) -> str:
    return KIND_DIRS[rel.split("/")[0]]


def assert_round_trips(inv: Inventory) -> None:
    text = inv.to_json()
    back = Inventory.from_json(text)
    assert back == inv
    assert back.to_json() == text


def section(text: str, title: str) -> str:
    """One section of a capture, cut by hand (independently of the parser's own splitter)."""
    start = text.index(f"# {title}\n")
    body = text[text.index("#" * 80 + "\n", start) + 81 :]
    end = body.find("#" * 80 + "\n# ")
    return body if end < 0 else body[:end]


# --- every fixture --------------------------------------------------------------------------------


def test_table_covers_every_fixture_file() -> None:
    fixture_text("SOURCES.md")  # fails with a clear message when the fixtures are absent
    on_disk = {f"{d}/{p.name}" for d in KIND_DIRS for p in (FIXTURES / d).iterdir() if p.is_file()}
    assert on_disk == set(TABLE)


@pytest.mark.parametrize("rel", sorted(TABLE))
def test_fixture_parses_to_the_values_in_the_file(rel: str) -> None:
    text, want, kind = fixture_text(rel), TABLE[rel], kind_of(rel)
    assert sniff(text) == kind
    inv = parse_any(text, rel)
    assert inv == PARSERS[kind](text, rel)
    assert inv.source == SOURCES[kind]
    assert len(inv.gpus) == len(want.names)
    assert tuple(g.name for g in inv.gpus) == want.names
    assert tuple(g.memory_total_mib for g in inv.gpus) == want.memory_mib
    assert tuple(g.uuid for g in inv.gpus) == want.uuids
    assert inv.driver_version == want.driver
    assert inv.cuda_version == want.cuda
    assert inv.nvml_version == want.nvml
    assert all(g.health == "ok" and g.health_reason is None for g in inv.gpus)
    assert_round_trips(inv)


@pytest.mark.parametrize("rel", sorted(TABLE))
def test_cut_fixtures_fail_cleanly_or_parse(rel: str) -> None:
    """Whatever part of a real file we get, only InventoryFileError may come out."""
    text = fixture_text(rel)
    for cut in sorted({1, 7, 100, len(text) // 3, len(text) // 2, len(text) - 20}):
        for parse in (parse_any, *PARSERS.values()):
            try:
                assert_round_trips(parse(text[:cut], rel))
            except InventoryFileError as exc:
                assert rel in str(exc)


# --- MIG ------------------------------------------------------------------------------------------


def test_mig_capture_keeps_gpu_memory_and_lists_slices() -> None:
    inv = parse_capture(fixture_text(MIG_CAPTURE), MIG_CAPTURE)
    (gpu,) = inv.gpus
    assert gpu.memory_total_mib == 81559
    assert gpu.mig_mode == "enabled"
    assert gpu.compute_capability == "9.0"  # from the capture's query-gpu CSV section
    assert gpu.utilization_gpu_pct is None  # "N/A" under MIG
    assert gpu.mig_devices == (
        MigDevice(0, "MIG-00000000-0000-0000-0000-000000000000", "3g.40gb", 40448, 2, 0),
        MigDevice(1, "MIG-00000001-0000-0000-0000-000000000001", "2g.20gb", 20096, 3, 0),
        MigDevice(2, "MIG-00000002-0000-0000-0000-000000000002", "1g.10gb", 9984, 9, 0),
        MigDevice(3, "MIG-00000003-0000-0000-0000-000000000003", "1g.10gb", 9984, 10, 0),
    )
    assert [m.uuid for m in gpu.mig_devices] == [
        f"MIG-0000000{i}-0000-0000-0000-00000000000{i}" for i in range(4)
    ]


def test_mig_query_text_alone_has_slices_without_names() -> None:
    text = section(fixture_text(MIG_CAPTURE), "idle :: query (-q)")
    assert sniff(text) == "query-text"
    inv = parse_query_text(text, "q.txt")
    assert inv.source == "file:nvidia-smi-q"
    assert (inv.driver_version, inv.cuda_version) == ("590.48.01", "13.1")
    (gpu,) = inv.gpus
    assert (gpu.memory_total_mib, gpu.memory_used_mib, gpu.memory_free_mib) == (81559, 59, 81022)
    assert gpu.pci_bus_id == "00000000:00:09.0"
    assert [(m.index, m.memory_total_mib, m.uuid, m.profile) for m in gpu.mig_devices] == [
        (0, 40448, None, None),
        (1, 20096, None, None),
        (2, 9984, None, None),
        (3, 9984, None, None),
    ]
    assert (gpu.power_draw_w, gpu.power_limit_w, gpu.temperature_c) == (71.27, 700.0, 42)
    assert_round_trips(inv)


def test_mig_csv() -> None:
    (gpu,) = parse_csv(fixture_text(MIG_CSV), MIG_CSV).gpus
    assert (gpu.memory_total_mib, gpu.mig_mode, gpu.mig_devices) == (81559, "enabled", ())
    assert gpu.utilization_gpu_pct is None


def test_mig_xml_slice_memory_is_not_the_gpus() -> None:
    xml = """<?xml version="1.0" ?>
<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">
<nvidia_smi_log><driver_version>575.57.08</driver_version><cuda_version>12.9</cuda_version>
<attached_gpus>1</attached_gpus><gpu id="00000000:00:09.0">
<product_name>NVIDIA H100 80GB HBM3</product_name>
<mig_mode><current_mig>Enabled</current_mig><pending_mig>Enabled</pending_mig></mig_mode>
<mig_devices><mig_device><index>0</index><gpu_instance_id>1</gpu_instance_id>
<compute_instance_id>0</compute_instance_id>
<fb_memory_usage><total>40448 MiB</total><used>298 MiB</used></fb_memory_usage></mig_device>
</mig_devices><uuid>GPU-1</uuid>
<fb_memory_usage><total>81920 MiB</total><used>3703 MiB</used><free>77771 MiB</free>
</fb_memory_usage></gpu></nvidia_smi_log>"""
    (gpu,) = parse_xml(xml, "mig.xml").gpus
    assert gpu.memory_total_mib == 81920
    assert gpu.mig_mode == "enabled"
    assert gpu.mig_devices == (MigDevice(0, None, None, 40448, 1, 0),)


# --- odd real-world files -------------------------------------------------------------------------


def test_dual_a5000_index_is_position_minor_number_kept() -> None:
    rel = "xml/telegraf__dual_a5000-v13.xml"
    inv = parse_xml(fixture_text(rel), rel)
    assert [g.index for g in inv.gpus] == [0, 1]
    assert [g.minor_number for g in inv.gpus] == [1, 0]
    assert [g.pci_bus_id for g in inv.gpus] == ["00000000:81:00.0", "00000000:C1:00.0"]


def test_telegraf_2019_duplicates_are_kept_and_warned() -> None:
    rel = "csv/telegraf-2019__noheader-nounits__22fields.csv"
    inv = parse_csv(fixture_text(rel), rel)
    assert len(inv.gpus) == 3
    assert [g.index for g in inv.gpus] == [0, 0, 0]
    assert any("GPU index 0 appears 3 times" in w for w in inv.warnings)
    assert any("UUID GPU-c97b7f88" in w for w in inv.warnings)
    assert [g.power_draw_w for g in inv.gpus] == [24.33] * 3
    assert all(g.health == "ok" for g in inv.gpus)  # [Unknown Error] is only in the fan column


def test_telegraf_2018_keeps_reported_indices() -> None:
    rel = "csv/telegraf-2018__noheader-nounits__12fields.csv"
    inv = parse_csv(fixture_text(rel), rel)
    assert [g.index for g in inv.gpus] == [1, 0]
    assert [(g.temperature_c, g.utilization_gpu_pct) for g in inv.gpus] == [(61, 100), (38, 0)]
    assert [(g.memory_used_mib, g.memory_free_mib) for g in inv.gpus] == [(553, 7561), (0, 7606)]
    assert inv.warnings == ()


def test_not_available_values_become_none() -> None:
    p4 = parse_xml(fixture_text("xml/telegraf__tesla_p4.xml"), "p4").gpus[0]
    assert p4.minor_number is None
    assert (p4.power_draw_w, p4.power_limit_w, p4.mig_mode) == (None, None, None)
    gt730 = parse_xml(fixture_text("xml/openpai__nvidia_smi_outdated_gpu.xml"), "gt730").gpus[0]
    assert (gt730.memory_total_mib, gt730.memory_used_mib, gt730.memory_free_mib) == (None,) * 3
    assert gt730.utilization_gpu_pct is None
    assert gt730.pci_bus_id == "00000000:01:00.0"  # from <gpu id=...>: there is no <pci>
    assert gt730.health == "ok"


def test_trimmed_openpai_sample_warns() -> None:
    inv = parse_xml(fixture_text("xml/openpai__nvidia_smi_sample.xml"), "s.xml")
    assert len(inv.gpus) == 2
    assert inv.warnings == ("attached_gpus says 6 but the file lists 2 GPUs (trimmed?)",)
    assert inv.cuda_version is None


def test_power_and_telemetry_xml() -> None:
    old = parse_xml(fixture_text("xml/openpai__nvidia_smi_sample.xml"), "x").gpus
    assert [(g.power_draw_w, g.power_limit_w) for g in old] == [(119.47, 180.0), (139.30, 180.0)]
    assert [(g.temperature_c, g.utilization_gpu_pct) for g in old] == [(60, 100), (59, 98)]
    v13 = parse_xml(fixture_text("xml/telegraf__3090-v13.xml"), "x").gpus[0]
    assert (v13.power_draw_w, v13.power_limit_w) == (35.06, 350.0)  # gpu_power_readings
    dual = parse_xml(fixture_text("xml/telegraf__dual_2070-v13.xml"), "x").gpus
    # average_power_draw is N/A there: the instant reading is used
    assert [(g.power_draw_w, g.power_limit_w) for g in dual] == [(9.23, 175.0), (11.82, 175.0)]
    gt1030 = parse_xml(fixture_text("xml/telegraf__gt-1030.xml"), "x").gpus[0]
    assert (gt1030.power_draw_w, gt1030.power_limit_w) == (None, 30.0)


def test_power_and_telemetry_csv() -> None:
    rel = f"csv/{EXPORTER}nvidia-geforce-rtx-4080-super__595.71.05__idle.query-gpu.csv"
    (gpu,) = parse_csv(fixture_text(rel), rel).gpus
    assert (gpu.power_draw_w, gpu.power_limit_w) == (26.20, 320.0)
    assert (gpu.temperature_c, gpu.utilization_gpu_pct) == (43, 0)
    assert (gpu.compute_capability, gpu.pci_bus_id, gpu.mig_mode) == (
        "8.9",
        "00000000:01:00.0",
        None,
    )
    assert (gpu.memory_used_mib, gpu.memory_free_mib) == (596, 15348)


# --- CSV layouts ----------------------------------------------------------------------------------


def test_query_command_and_default_headerless_order() -> None:
    expected = "nvidia-smi --query-gpu=" + ",".join(DEFAULT_QUERY_FIELDS) + " --format=csv"
    assert expected == QUERY_COMMAND
    assert len(DEFAULT_QUERY_FIELDS) == 13
    row = (
        "1, GPU-5e5f9a2c-0d4e-4c2b-9f7e-1b2c3d4e5f60, NVIDIA A100-SXM4-80GB, 81920, 5, 81915, "
        "00000000:07:00.0, 550.54.15, 8.0, 30, 7, 60.50, 400.00\n"
    )
    inv = parse_any(row, "a100.csv")
    (gpu,) = inv.gpus
    assert (gpu.index, gpu.name, gpu.memory_total_mib, gpu.compute_capability) == (
        1,
        "NVIDIA A100-SXM4-80GB",
        81920,
        "8.0",
    )
    assert (gpu.pci_bus_id, gpu.temperature_c, gpu.utilization_gpu_pct) == (
        "00000000:07:00.0",
        30,
        7,
    )
    assert (gpu.power_draw_w, gpu.power_limit_w, inv.driver_version) == (60.5, 400.0, "550.54.15")


def test_csv_header_with_units_values_without() -> None:
    text = (
        "index, name, uuid, memory.total [MiB], power.draw.instant [W], enforced.power.limit [W]\n"
        "\n0, NVIDIA L4, GPU-1, 23034, 16.20, 72.00\n\n"
    )
    (gpu,) = parse_csv(text, "l4.csv").gpus
    assert (gpu.memory_total_mib, gpu.power_draw_w, gpu.power_limit_w) == (23034, 16.2, 72.0)


def test_unknown_error_and_lost_gpus_are_flagged_not_fatal() -> None:
    text = (
        "index, name, uuid, memory.total [MiB]\n"
        "0, NVIDIA A10, GPU-a, 23028 MiB\n"
        "1, [Unknown Error], GPU-b, [Unknown Error]\n"
        "2, NVIDIA A10, GPU-c, GPU is lost\n"
    )
    inv = parse_csv(text, "bad.csv")
    assert [g.health for g in inv.gpus] == ["ok", "error", "lost"]
    assert inv.gpus[1].name == "unknown" and inv.gpus[1].memory_total_mib is None
    assert "[Unknown Error]" in (inv.gpus[1].health_reason or "")
    assert "GPU is lost" in (inv.gpus[2].health_reason or "")
    assert_round_trips(inv)


def test_device_handle_error_lines_become_warnings() -> None:
    text = (
        "Unable to determine the device handle for GPU0000:07:00.0: Unknown Error\n"
        "index, name, uuid, memory.total [MiB]\n0, Tesla P4, GPU-a, 7680 MiB\n"
    )
    inv = parse_csv(text, "p4.csv")
    assert len(inv.gpus) == 1
    assert inv.warnings == ("nvidia-smi could not open GPU 0000:07:00.0: Unknown Error",)


def test_xml_after_a_stray_line_still_parses_and_warns() -> None:
    rel = "xml/telegraf__tesla-t4.xml"
    text = "WARNING: infoROM is corrupted at gpu 0000:00:1E.0\n" + fixture_text(rel)
    assert sniff(text) == "xml"
    inv = parse_any(text, rel)
    assert [g.name for g in inv.gpus] == ["Tesla T4"]
    assert inv.warnings == (
        "ignored text before the XML: 'WARNING: infoROM is corrupted at gpu 0000:00:1E.0'",
    )
    with pytest.raises(InventoryFileError, match="at line 2,"):
        parse_xml("junk\n<nvidia_smi_log><gpu></nvidia_smi_log>", "x.xml")


@pytest.mark.parametrize("rel", [MIG_CAPTURE, "xml/telegraf__dual_a5000-v13.xml", MIG_CSV])
def test_crlf_line_endings_change_nothing(rel: str) -> None:
    text = fixture_text(rel)
    crlf = text.replace("\n", "\r\n")
    assert sniff(crlf) == sniff(text)
    assert parse_any(crlf, rel) == parse_any(text, rel)


def test_no_devices_were_found_is_explained() -> None:
    with pytest.raises(InventoryFileError, match="found no GPU on that host"):
        parse_any("No devices were found\n", "empty-host.txt")


# --- captures -------------------------------------------------------------------------------------

BAR = "#" * 80


def capture(*sections: tuple[str, str]) -> str:
    return "".join(f"{BAR}\n# {title}\n# $ cmd\n{BAR}\n{body}\n\n" for title, body in sections)


def q_gpu(bus: str, name: str, uuid: str) -> str:
    return (
        f"GPU {bus}\n    Product Name                : {name}\n    GPU UUID                    : "
        f"{uuid}\n    FB Memory Usage\n        Total                   : 81559 MiB\n"
    )


def test_capture_topo_nvlink_peers() -> None:
    topo = (
        "\t\x1b[4mGPU0\tGPU1\tGPU2\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
        "GPU0\t X \tNV18\tSYS\t0-63\t0\t\tN/A\n"
        "GPU1\tNV18\t X \tNV4\t0-63\t0\t\tN/A\n"
        "GPU2\tSYS\tNV4\t X \t64-127\t1\t\tN/A\n\nLegend:\n\n  X    = Self\n"
    )
    q = "==============NVSMI LOG==============\n\nDriver Version : 590.48.01\n" + "".join(
        q_gpu(f"00000000:0{i}:00.0", H100, f"GPU-{i}") for i in range(3)
    )
    text = capture(
        ("capabilities :: version", "NVML version        : 590.48\nCUDA Version        : 13.1"),
        ("capabilities :: topo -m", topo),
        ("idle :: query (-q)", q),
    )
    assert sniff(text) == "capture"
    inv = parse_capture(text, "topo.txt")
    assert [g.nvlink_peers for g in inv.gpus] == [(1,), (0, 2), (1,)]
    assert (inv.driver_version, inv.cuda_version, inv.nvml_version) == (
        "590.48.01",
        "13.1",
        "590.48",
    )
    assert_round_trips(inv)


def test_capture_without_q_section_falls_back_to_csv() -> None:
    text = fixture_text(MIG_CAPTURE).replace("# idle :: query (-q)", "# idle :: query-skipped")
    (gpu,) = parse_capture(text, "c.txt").gpus
    assert (gpu.memory_total_mib, gpu.mig_mode, gpu.compute_capability) == (81559, "enabled", "9.0")
    assert [m.profile for m in gpu.mig_devices] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]


def test_capture_that_disagrees_with_itself_is_an_error() -> None:
    text = fixture_text(MIG_CAPTURE)
    csv_body = section(text, "idle :: query-gpu (csv, what the exporter parses)").strip()
    doubled = text.replace(csv_body, csv_body + "\n" + csv_body.splitlines()[1])
    with pytest.raises(InventoryFileError, match="lists 1 GPUs, its query-gpu CSV 2"):
        parse_capture(doubled, "c.txt")


# --- sniff ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("", None),
        ("\n\n   \n", None),
        ("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", None),
        ("# composegen\n\nTurns GPU inventories into Compose stacks, quickly.\n", None),
        ('{\n  "schema": "composegen/inventory/v1"\n}\n', None),
        ("\ufeff<?xml version='1.0'?>\n<nvidia_smi_log>", "xml"),
        ("index, name, uuid, memory.total [MiB]\n", "csv"),
        ("0, Tesla T4, GPU-abc, 15360\n", "csv"),
        ("\n==============NVSMI LOG==============\n", "query-text"),
    ],
)
def test_sniff_by_content(text: str, kind: str | None) -> None:
    assert sniff(text) == kind


# --- bad input ------------------------------------------------------------------------------------

SUPPORTED_CLOCKS = """<?xml version="1.0" ?>
<nvidia_smi_log><gpu id="00000000:01:00.0"><supported_clocks>
<supported_graphics_clock>210 MHz</supported_graphics_clock>
</supported_mem_clock>
<supported_mem_clock>
5001 MHz
<supported_graphics_clock>2100 MHz</supported_graphics_clock>
</supported_clocks></gpu></nvidia_smi_log>
"""
GPU_UTILS_LINE = (
    "200.00, 105.00, 292.00, 7979, 90.04.23.00.5F, 440.64, GeForce RTX 2080, "
    "GPU-22b2c6ac-2d49-4863-197c-9c469071178a, 176.98, 45, N/A, 1965, 1965, 7199, 86, 55, "
    "100, 8, P2\n"
)


def half_of_3090() -> str:
    text = fixture_text("xml/telegraf__3090-v13.xml")
    return text[: len(text) // 2]


BAD = [
    ("empty", parse_any, lambda: "", "not an nvidia-smi output or composegen inventory"),
    ("binary", parse_any, lambda: bytes(range(256)).decode("latin-1"), "not an nvidia-smi output"),
    ("readme", parse_any, lambda: "# Project\n\nSee docs, then run it.\n", "not an nvidia-smi"),
    (
        "truncated-any",
        parse_any,
        half_of_3090,
        "truncated XML (no closing </nvidia_smi_log>) at line",
    ),
    ("truncated-xml", parse_xml, half_of_3090, "truncated XML"),
    ("other-root", parse_xml, lambda: "<?xml version='1.0'?><foo/>", "root element is <foo>"),
    ("no-gpu", parse_xml, lambda: "<nvidia_smi_log></nvidia_smi_log>", "XML has no <gpu> element"),
    ("clocks", parse_any, lambda: SUPPORTED_CLOCKS, "malformed XML at line 4, column 2"),
    ("xml-of-csv", parse_xml, lambda: "index, name\n", "malformed XML at line 1"),
    (
        "no-memory",
        parse_csv,
        lambda: "index, name, uuid, memory.used [MiB]\n0, A, GPU-a, 1 MiB\n",
        "CSV header lacks required column 'memory.total'",
    ),
    (
        "short-row",
        parse_csv,
        lambda: "index, name, uuid, memory.total\n0, A, GPU-a, 1\n1, B, GPU-b\n",
        "CSV row 3 has 3 fields, the header has 4",
    ),
    ("header-only", parse_csv, lambda: "index, name, uuid, memory.total\n", "no GPU rows"),
    ("five-fields", parse_csv, lambda: "0, A, GPU-a, 1024, 3\n", "headerless CSV has 5 fields"),
    ("gpu-utils", parse_csv, lambda: GPU_UTILS_LINE, "headerless CSV has 19 fields"),
    (
        "not-a-uuid",
        parse_csv,
        lambda: "0, Tesla T4, T4, 15360, 0, 15360, 0:1:0.0, 550.1, 7.5, 30, 0, 9, 70\n",
        "does not fit the 13-field",
    ),
    (
        "bad-memory",
        parse_csv,
        lambda: "index, name, uuid, memory.total\n0, A, GPU-a, lots\n",
        "memory.total is 'lots', not a number",
    ),
    ("csv-empty", parse_csv, lambda: "\n\n", "CSV has no rows"),
    (
        "q-no-gpu",
        parse_query_text,
        lambda: "==============NVSMI LOG==============\n",
        "lists no GPU",
    ),
    ("q-readme", parse_query_text, lambda: "hello\n", "not an nvidia-smi -q log"),
    ("capture-readme", parse_capture, lambda: "hello\n", "not an nvidia_gpu_exporter capture"),
]


@pytest.mark.parametrize(("name", "parse", "make", "problem"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_an_inventory_file_error(
    name: str, parse: Callable[[str, str], Inventory], make: Callable[[], str], problem: str
) -> None:
    where = f"/data/{name}.input"
    with pytest.raises(InventoryFileError) as caught:
        parse(make(), where)
    exc = caught.value
    assert where in str(exc)
    assert problem in exc.problem
    assert exc.path == where and exc.exit_code == EXIT_BAD_INPUT
    assert "\n" not in exc.one_line()


def test_module_exports() -> None:
    for name in (
        "parse_xml",
        "parse_csv",
        "parse_query_text",
        "parse_capture",
        "sniff",
        "parse_any",
    ):
        assert callable(getattr(nvidia_smi, name))
    assert re.fullmatch(r"nvidia-smi --query-gpu=[\w.,]+ --format=csv", QUERY_COMMAND)


PIECES = st.sampled_from(
    [
        *"<>/=\"' \n\t:,.#-[]0123456789",
        *("<nvidia_smi_log>", "<gpu>", "</gpu>", "GPU-", "[N/A]", "NVSMI LOG\n", "#" * 80 + "\n"),
        *("# idle :: query (-q)\n", "index, name, uuid, memory.total\n", "GPU 00000000:01:00.0\n"),
        *("    Product Name : ", "    MIG Device\n", "NV12", "81559 MiB"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(PIECES, max_size=50).map("".join)))
def test_any_text_parses_or_is_an_inventory_file_error(text: str) -> None:
    sniff(text)
    for parse in (parse_any, *PARSERS.values()):
        try:
            assert_round_trips(parse(text, "fuzz.txt"))
        except InventoryFileError as exc:
            assert exc.path == "fuzz.txt"
