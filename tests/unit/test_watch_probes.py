"""watch's probes against the fakes: fake Docker (tests/fake_docker.py) and fake NVML
(tests/fake_nvml.py) scenarios, kernel-log lines in a file standing in for /dev/kmsg, and
--inventory files written, lost and half-written."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from composegen.inventory import Gpu, Inventory
from composegen.watch.probes.containers import ContainersProbe
from composegen.watch.probes.gateway import GatewayLogProbe, parse_line
from composegen.watch.probes.gpu_access import GpuAccessProbe
from composegen.watch.probes.gpus import GpusProbe
from composegen.watch.probes.kmsg import KmsgXids, bus_key, parse_xid
from composegen.watch.probes.residency import ResidencyProbe
from composegen.watch.types import (
    ContainerSignal,
    GpuAccessSignal,
    GpuSignal,
    ProbeError,
    RequestSignal,
    ResidencySignal,
    Signal,
    Snapshot,
    StackInfo,
)
from tests.conftest import fixture_path
from tests.fake_docker import LABEL_PROJECT, LABEL_SERVICE, FakeContainer, FakeDocker
from tests.fake_nvml import FakeNvml

Install = Callable[[str], FakeNvml]
P = "cg-watch"
UUID0 = "GPU-2b8c4d1e-0f3a-4c5d-9e6f-7a8b9c0d1e2f"
UUID1 = "GPU-5f6e7d8c-9b0a-4123-8456-789abcdef012"
SMI_LOST = b"Failed to initialize NVML: Unknown Error\n"
NO_SMI = (
    b"OCI runtime exec failed: exec failed: unable to start container process: exec: "
    b'"nvidia-smi": executable file not found in $PATH: unknown\r\n'
)


def until(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll for a condition another thread brings about (a deadline, no fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail("the condition did not come true in time")
        time.sleep(0.005)


def of(kind: type[Any], signals: Any) -> list[Any]:
    return [s for s in signals if isinstance(s, kind)]


def gpu_request(c: FakeContainer, *ids: str, count: int | None = None) -> None:
    c.attrs["HostConfig"]["DeviceRequests"] = [
        {
            "Driver": "nvidia",
            "Count": count or 0,
            "DeviceIDs": list(ids) if ids else None,
            "Capabilities": [["gpu"]],
        }
    ]


def service(engine: FakeDocker, name: str, status: str = "running") -> FakeContainer:
    return engine.add_container(
        f"{P}-{name}-1", {LABEL_PROJECT: P, LABEL_SERVICE: name}, status=status
    )


# --- containers ---------------------------------------------------------------------------------


def test_containers_report_state_health_restarts_oom_exit_and_gpus() -> None:
    engine = FakeDocker()
    llm = service(engine, "ollama-0")
    gpu_request(llm, UUID0)
    llm.attrs["RestartCount"] = 2
    llm.attrs["State"]["Health"] = {"Status": "healthy", "Log": []}
    whisper = service(engine, "whisper")
    whisper.attrs["State"] = {"Status": "exited", "ExitCode": 137, "OOMKilled": True}
    whisper.attrs["RestartCount"] = 5
    engine.add_container("other-x-1", {LABEL_PROJECT: "other", LABEL_SERVICE: "x"})
    probe = ContainersProbe(engine, P)
    try:
        got = {s.service: s for s in of(ContainerSignal, probe.read(0.0))}
    finally:
        probe.close()
    assert set(got) == {"ollama-0", "whisper"}
    assert got["ollama-0"] == ContainerSignal(
        "ollama-0", llm.id, "running", "healthy", 2, False, None, (UUID0,)
    )
    assert got["whisper"] == ContainerSignal("whisper", whisper.id, "exited", None, 5, True, 137)


def test_containers_inspect_only_what_changed_and_follow_events() -> None:
    engine = FakeDocker()
    cs = [service(engine, f"svc-{i}") for i in range(24)]
    probe = ContainersProbe(engine, P)
    try:
        assert len(of(ContainerSignal, probe.read(0.0))) == 24
        assert engine.inspects == 24
        until(lambda: probe.following)
        for _ in range(3):  # nothing happens: one list call a read, no inspect
            probe.read(1.0)
        assert engine.inspects == 24
        # svc-7 is restarted by its policy between two reads: the list looks the same
        # ("running"), the event stream says it died and started again
        cs[7].attrs["RestartCount"] = 1
        cs[7].set_state("running")
        until(lambda: cs[7].id in probe._dirty)
        got = {s.service: s for s in of(ContainerSignal, probe.read(2.0))}
        assert engine.inspects == 25
        assert got["svc-7"].restart_count == 1
        # an OOM kill: the kernel kills it, the engine reports `oom`, then `die`
        cs[3].attrs["State"] = {"Status": "exited", "ExitCode": 137, "OOMKilled": True}
        engine.emit(cs[3], "oom")
        got = {s.service: s for s in of(ContainerSignal, probe.read(3.0))}
        assert got["svc-3"].oom_killed is True and got["svc-3"].exit_code == 137
        assert got["svc-3"].state == "exited"
        # a container removed is gone from the next read
        cs[5].remove(force=True)
        got = {s.service: s for s in of(ContainerSignal, probe.read(4.0))}
        assert "svc-5" not in got and len(got) == 23
    finally:
        probe.close()


def test_containers_healthcheck_runs_are_not_changes() -> None:
    """Each healthcheck run is an exec, with exec_create / exec_start / exec_die events at every
    container's health interval: following them would inspect everything at every read."""
    engine = FakeDocker()
    cs = [service(engine, f"svc-{i}") for i in range(4)]
    probe = ContainersProbe(engine, P)
    try:
        probe.read(0.0)
        until(lambda: probe.following)
        for c in cs:
            engine.emit(c, "exec_create: /bin/sh -c curl -fsS http://127.0.0.1:8000/health")
            engine.emit(c, "exec_start: /bin/sh -c curl -fsS http://127.0.0.1:8000/health")
            engine.emit(c, "exec_die")
        engine.emit(cs[1], "health_status: unhealthy")  # this one is a change
        until(lambda: cs[1].id in probe._dirty)
        probe.read(1.0)
        assert engine.inspects == 4 + 1
    finally:
        probe.close()


def test_containers_without_events_reinspect_on_status_text_change() -> None:
    engine = FakeDocker()
    c = service(engine, "llm")
    c.status_text = "Up 2 hours"
    service(engine, "embed").status_text = "Up 2 hours"
    probe = ContainersProbe(engine, P, follow_events=False)
    probe.read(0.0)
    probe.read(1.0)
    assert engine.inspects == 2
    # restarted between reads (no event stream): only its Status text tells
    c.attrs["RestartCount"] = 3
    c.status_text = "Up 4 seconds"
    got = {s.service: s for s in of(ContainerSignal, probe.read(2.0))}
    assert engine.inspects == 3
    assert got["llm"].restart_count == 3
    probe.close()


def test_containers_stream_lost_reattaches_and_rereads_everything() -> None:
    engine = FakeDocker()
    for i in range(3):
        service(engine, f"svc-{i}")
    probe = ContainersProbe(engine, P)
    try:
        probe.read(0.0)
        until(lambda: probe.following)
        engine.end_streams()  # dockerd restarted
        until(lambda: not probe.following)
        before = engine.inspects
        probe.read(1.0)  # events in between were not seen: inspect all again
        assert engine.inspects == before + 3
        until(lambda: probe.following)
        assert len(engine.event_streams) == 1
    finally:
        probe.close()


def test_containers_engine_gone_is_a_probe_error() -> None:
    engine = FakeDocker()
    service(engine, "llm")
    probe = ContainersProbe(engine, P)
    engine.online = False
    (err,) = probe.read(0.0)
    assert isinstance(err, ProbeError) and err.probe == "containers"
    assert "lost the Docker engine" in err.message
    probe.close()


@pytest.mark.parametrize("kind", [ContainersProbe, GpuAccessProbe, ResidencyProbe])
def test_an_unexpected_engine_failure_is_a_probe_error(
    kind: type[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeDocker()
    service(engine, "ollama-0")

    def broken(**_: Any) -> Any:
        raise ValueError("Invalid chunk encoding")  # not a docker-py error: unmapped

    monkeypatch.setattr(engine.api, "containers", broken)
    probe = kind(engine, P)
    got = probe.read(0.0)
    probe.close()
    assert got == [ProbeError(probe.name, "ValueError: Invalid chunk encoding")]


# --- GPUs through NVML --------------------------------------------------------------------------


def test_gpus_nvml_readings(nvml_scenario: Install) -> None:
    fake = nvml_scenario("a5000_readings")
    probe = GpusProbe(None, nvml_timeout_s=2.0, kmsg_path="/nonexistent/kmsg")
    got = probe.read(0.0)
    probe.read(1.0)
    probe.close()
    assert fake.init_calls == 1  # NVML initialised once, read many times
    g0, g1 = of(GpuSignal, got)
    assert (g0.index, g0.name, g0.memory_used_mib, g0.memory_total_mib) == (
        0,
        "NVIDIA RTX A5000",
        22437,
        24564,
    )
    assert (g0.temperature_c, g0.power_w, g0.utilization_pct, g0.ecc_uncorrectable) == (
        13,
        6.52,
        37,
        0,
    )
    assert (g1.memory_used_mib, g1.temperature_c, g1.power_w) == (17253, 15, 13.59)
    assert g0.health == g1.health == "ok" and g0.xids == ()
    assert not of(ProbeError, got)  # Xid events are supported: the kernel log is not needed


def test_gpus_xid_79_from_the_event_set_then_lost(nvml_scenario: Install) -> None:
    fake = nvml_scenario("xid_79_mid_run")
    probe = GpusProbe(None, nvml_timeout_s=2.0)
    first = of(GpuSignal, probe.read(0.0))
    assert [g.health for g in first] == ["ok"] * 4
    uuid2 = first[2].uuid
    fake.advance()
    assert all(g.xids == () for g in of(GpuSignal, probe.read(1.0)))
    fake.advance()  # GPU 2 falls off the bus
    lost = of(GpuSignal, probe.read(2.0))
    assert [g.xids for g in lost] == [(), (), (79,), ()]
    assert lost[2].health == "lost" and "GPU_IS_LOST" in (lost[2].reason or "")
    assert lost[2].uuid == uuid2  # still named by its UUID
    again = of(GpuSignal, probe.read(3.0))
    assert again[2].xids == ()  # an event counts once
    probe.close()
    assert fake.freed == 1


def test_gpus_reset_required_is_an_error(nvml_scenario: Install) -> None:
    fake = nvml_scenario("a100_4x64")
    probe = GpusProbe(None, nvml_timeout_s=2.0)
    probe.read(0.0)
    fake.s.gpus[1].reset_required = True
    got = of(GpuSignal, probe.read(1.0))
    assert [g.health for g in got] == ["ok", "error", "ok", "ok"]
    assert "RESET_REQUIRED" in (got[1].reason or "")
    probe.close()


def test_gpus_ecc_counts_and_xid_48_94(nvml_scenario: Install) -> None:
    fake = nvml_scenario("ecc_rising")
    probe = GpusProbe(None, nvml_timeout_s=2.0)
    assert {g.ecc_uncorrectable for g in of(GpuSignal, probe.read(0.0))} == {0}
    fake.advance()
    g5 = of(GpuSignal, probe.read(1.0))[5]
    assert (g5.ecc_uncorrectable, g5.xids) == (1, (48,))
    fake.advance()
    gpus = of(GpuSignal, probe.read(2.0))
    assert (gpus[5].ecc_uncorrectable, gpus[5].xids) == (3, (94,))
    assert [g.xids for g in gpus[:5]] == [()] * 5
    probe.close()


KMSG_79 = (
    "4,1879,812345678901,-;NVRM: Xid (PCI:0000:27:00): 79, pid=41958, name=ollama, "
    "GPU has fallen off the bus.\n"
)


def test_gpus_xid_from_the_kernel_log_when_events_are_not_supported(
    nvml_scenario: Install, tmp_path: Path
) -> None:
    fake = nvml_scenario("xid_no_events")
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(
        "4,1870,812300000000,-;NVRM: Xid (PCI:0000:07:00): 13, pid=1, Graphics Exception\n"
    )  # before watch started: not counted
    probe = GpusProbe(None, nvml_timeout_s=2.0, kmsg_path=str(kmsg))
    assert [g.xids for g in of(GpuSignal, probe.read(0.0))] == [()] * 4
    with kmsg.open("a") as f:
        f.write("6,1878,812345600000,-;docker0: port 3(veth1) entered forwarding state\n")
        f.write(KMSG_79)
        f.write(" SUBSYSTEM=pci\n DEVICE=+pci:0000:27:00.0\n")
    fake.s.gpus[2].lost = True
    got = of(GpuSignal, probe.read(1.0))
    # GPU 2 sits at PCI 00000000:27:00.0 (NVML's spelling of the kernel's 0000:27:00)
    assert [g.xids for g in got] == [(), (), (79,), ()]
    assert got[2].health == "lost"
    assert [g.xids for g in of(GpuSignal, probe.read(2.0))] == [()] * 4
    probe.close()


def test_gpus_kernel_log_not_read_twice_when_events_work(
    nvml_scenario: Install, tmp_path: Path
) -> None:
    fake = nvml_scenario("xid_79_mid_run")
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    probe = GpusProbe(None, nvml_timeout_s=2.0, kmsg_path=str(kmsg))
    probe.read(0.0)
    fake.xid(2, 79)
    kmsg.write_text(KMSG_79)  # the same Xid, in the kernel log too
    assert of(GpuSignal, probe.read(1.0))[2].xids == (79,)
    probe.close()


def test_gpus_unreadable_kernel_log_is_said_once(nvml_scenario: Install, tmp_path: Path) -> None:
    nvml_scenario("xid_no_events")
    probe = GpusProbe(None, nvml_timeout_s=2.0, kmsg_path=str(tmp_path / "no-kmsg"))
    first = probe.read(0.0)
    (note,) = of(ProbeError, first)
    assert "Xids are not watched" in note.message and "NOT_SUPPORTED" not in note.message
    assert len(of(GpuSignal, first)) == 4
    assert of(ProbeError, probe.read(1.0)) == []
    probe.close()


def test_gpus_nvml_unavailable_is_a_probe_error(nvml_scenario: Install) -> None:
    fake = nvml_scenario("no_driver")
    probe = GpusProbe(None, nvml_timeout_s=2.0)
    (err,) = probe.read(0.0)
    assert isinstance(err, ProbeError) and err.probe == "gpus"
    assert "kernel driver is not loaded" in err.message
    assert Snapshot.of(0.0, StackInfo("p"), [err]).gpus is None  # a warning, not "no GPUs"
    (again,) = probe.read(1.0)
    assert fake.init_calls == 1  # not retried at every interval
    assert isinstance(again, ProbeError) and "kernel driver is not loaded" in again.message
    probe.close()


def test_the_real_kernel_log_is_read_without_blocking() -> None:
    """/dev/kmsg blocks a plain read until the kernel logs something: opened non-blocking at
    its end, a read with nothing new returns at once."""
    try:
        reader = KmsgXids()
    except OSError as exc:
        pytest.skip(f"/dev/kmsg cannot be read here ({exc.strerror})")
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(reader.read()), daemon=True)
    worker.start()
    worker.join(10.0)
    reader.close()
    assert done, "reading /dev/kmsg blocked"
    assert all(isinstance(xid, int) for _, xid in done[0])


def test_kernel_xid_lines() -> None:
    assert parse_xid(KMSG_79) == ((0, 0x27, 0), 79)
    assert parse_xid("NVRM: Xid (PCI:0000:3b:00): 48, pid='<unknown>', DBE (0x1)") == (
        (0, 0x3B, 0),
        48,
    )
    assert parse_xid("NVRM: Xid (PCI:0001:c1:00.0): 94, Contained ECC error") == ((1, 0xC1, 0), 94)
    assert parse_xid("NVRM: GPU at PCI:0000:3b:00: GPU-9a1f") is None
    assert parse_xid("nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028") is None
    assert bus_key("00000000:3B:00.0") == bus_key("0000:3b:00")


# --- GPUs from an --inventory file ----------------------------------------------------------------


def _saved(path: Path, health: tuple[str, ...], temps: tuple[int, ...]) -> None:
    """A `detect --save` file of A100-SXM4-80GB cards (81920 MiB each)."""
    inv = Inventory(
        source="nvml",
        gpus=tuple(
            Gpu(
                index=i,
                name="NVIDIA A100-SXM4-80GB",
                uuid=f"GPU-{i:08x}-7d3e-4f1a-9b2c-5e6f7a8b9c0d",
                memory_total_mib=81920,
                memory_used_mib=28193 if i == 0 else 0,
                temperature_c=t,
                health=h,  # type: ignore[arg-type]
                health_reason="marked lost by the test" if h == "lost" else None,
            )
            for i, (h, t) in enumerate(zip(health, temps, strict=True))
        ),
    )
    path.write_text(inv.to_json())


def test_inventory_file_is_reread_each_interval(tmp_path: Path) -> None:
    f = tmp_path / "inventory.json"
    _saved(f, ("ok", "ok", "ok"), (41, 43, 39))
    probe = GpusProbe(str(f))
    first = of(GpuSignal, probe.read(0.0))
    assert [(g.index, g.health, g.temperature_c) for g in first] == [
        (0, "ok", 41),
        (1, "ok", 43),
        (2, "ok", 39),
    ]
    assert (first[0].memory_used_mib, first[0].memory_total_mib) == (28193, 81920)
    _saved(f, ("lost", "ok", "ok"), (41, 86, 39))
    got = of(GpuSignal, probe.read(1.0))
    assert [g.health for g in got] == ["lost", "ok", "ok"]
    assert got[0].reason == "marked lost by the test" and got[1].temperature_c == 86
    probe.close()


def test_inventory_file_gpu_gone_from_the_file(tmp_path: Path) -> None:
    f = tmp_path / "inventory.json"
    _saved(f, ("ok", "ok", "ok"), (41, 43, 39))
    probe = GpusProbe(str(f))
    assert [g.index for g in of(GpuSignal, probe.read(0.0))] == [0, 1, 2]
    doc = json.loads(f.read_text())
    del doc["gpus"][1]  # GPU 1 fell off the bus: the next detect --save lists it no more
    f.write_text(json.dumps(doc))
    got = probe.read(1.0)
    assert [g.index for g in of(GpuSignal, got)] == [0, 2] and not of(ProbeError, got)
    probe.close()


def test_inventory_file_missing_or_half_written_is_a_probe_error(tmp_path: Path) -> None:
    f = tmp_path / "inventory.json"
    _saved(f, ("ok", "ok"), (41, 43))
    probe = GpusProbe(str(f))
    assert len(of(GpuSignal, probe.read(0.0))) == 2
    whole = f.read_text()
    f.unlink()
    (missing,) = probe.read(1.0)
    assert isinstance(missing, ProbeError) and "no such file" in missing.message
    assert Snapshot.of(1.0, StackInfo("p"), [missing]).gpus is None
    f.write_text(whole[: len(whole) // 2])  # a writer halfway through
    (half,) = probe.read(2.0)
    assert isinstance(half, ProbeError)
    assert Snapshot.of(2.0, StackInfo("p"), [half]).gpus is None
    f.write_text("")  # truncated before the write
    assert of(ProbeError, probe.read(3.0))
    f.write_text(whole)
    assert len(of(GpuSignal, probe.read(4.0))) == 2
    probe.close()


def test_inventory_text_cut_mid_line_is_not_fewer_gpus(tmp_path: Path) -> None:
    f = tmp_path / "query-gpu.csv"
    text = (
        "index, uuid, name, memory.total [MiB], memory.used [MiB], temperature.gpu\n"
        "0, GPU-1f2e3d4c-5b6a-4789-8abc-def012345678, NVIDIA A100-SXM4-80GB, 81920 MiB, "
        "28193 MiB, 44\n"
        "1, GPU-8a7b6c5d-4e3f-4210-9fed-cba987654321, NVIDIA A100-SXM4-80GB, 81920 MiB, "
        "0 MiB, 38\n"
    )
    f.write_text(text)
    probe = GpusProbe(str(f))
    assert [(g.uuid, g.temperature_c) for g in of(GpuSignal, probe.read(0.0))] == [
        ("GPU-1f2e3d4c-5b6a-4789-8abc-def012345678", 44),
        ("GPU-8a7b6c5d-4e3f-4210-9fed-cba987654321", 38),
    ]
    f.write_text(text[: text.index("GPU-8a7b") + 4])  # the second row cut short
    got = probe.read(1.0)
    assert of(GpuSignal, got) == [] and of(ProbeError, got)
    f.write_text(text[:-2])  # cut in its last field: "38" read as 3 C would parse
    (cut,) = probe.read(2.0)
    assert isinstance(cut, ProbeError) and "cut short" in cut.message
    probe.close()


def test_inventory_file_in_nvidia_smi_xml(tmp_path: Path) -> None:
    probe = GpusProbe(str(fixture_path("nvidia-smi", "xml", "telegraf__dual_a5000-v13.xml")))
    got = of(GpuSignal, probe.read(0.0))
    assert [(g.memory_total_mib, g.memory_used_mib, g.temperature_c) for g in got] == [
        (24564, 22437, 13),
        (24564, 17253, 15),
    ]
    probe.close()


# --- GPU access inside the containers -------------------------------------------------------------


def _smi_reply(uuid: str) -> bytes:
    return f"GPU 0: NVIDIA A100-SXM4-80GB (UUID: {uuid})\n".encode()


def test_gpu_access_lost_in_one_container_only() -> None:
    engine = FakeDocker()
    a, b, _cpu, gone = (service(engine, n) for n in ("ollama-0", "ollama-1", "embed", "old"))
    gpu_request(a, UUID0)
    gpu_request(b, UUID1)
    gone.set_state("exited", 0)
    gpu_request(gone, UUID0)
    replies = {a.id: (0, _smi_reply(UUID0)), b.id: (255, SMI_LOST)}
    engine.exec_reply = lambda c, cmd: replies.get(c.id) if cmd == ["nvidia-smi", "-L"] else None
    probe = GpuAccessProbe(engine, P)
    got = {s.service: s for s in of(GpuAccessSignal, probe.read(0.0))}
    assert got == {
        "ollama-0": GpuAccessSignal("ollama-0", a.id, True, f"ollama-0 sees exactly {UUID0}"),
        "ollama-1": GpuAccessSignal(
            "ollama-1", b.id, False, "Failed to initialize NVML: Unknown Error"
        ),
    }
    assert [c for c in engine.execs] == [["nvidia-smi", "-L"]] * 2  # not in embed, not in old
    probe.close()


def test_gpu_access_wrong_gpu_and_no_nvidia_smi() -> None:
    engine = FakeDocker()
    a, b = service(engine, "whisper"), service(engine, "tei")
    gpu_request(a, UUID0)
    gpu_request(b, count=1)
    replies = {a.id: (0, _smi_reply(UUID1)), b.id: (126, NO_SMI)}
    engine.exec_reply = lambda c, cmd: replies.get(c.id)
    got = {s.service: s for s in of(GpuAccessSignal, GpuAccessProbe(engine, P).read(0.0))}
    assert got["whisper"].ok is False
    assert got["whisper"].detail == f"whisper sees {UUID1}, planned {UUID0}"
    assert got["tei"].ok is None and "no nvidia-smi" in got["tei"].detail


def test_gpu_access_every_nth_read_and_timeout() -> None:
    engine = FakeDocker()
    c = service(engine, "ollama-0")
    gpu_request(c, UUID0)
    release = threading.Event()

    def hang(_: FakeContainer, cmd: list[str]) -> tuple[int, bytes]:
        release.wait(5.0)
        return 0, _smi_reply(UUID0)

    engine.exec_reply = hang
    probe = GpuAccessProbe(engine, P, every=3, timeout_s=0.05)
    try:
        (first,) = probe.read(0.0)
        assert isinstance(first, GpuAccessSignal) and first.ok is None
        assert "did not answer" in first.detail
        # reads 2 and 3 check nothing: they say nothing (a repeat is not a second check)
        assert probe.read(1.0) == [] and probe.read(2.0) == []
        assert len(engine.execs) == 1
        # the hung exec has not returned: no second exec (and thread) beside it
        (second,) = probe.read(3.0)
        assert isinstance(second, GpuAccessSignal) and second.ok is None
        assert "still running" in second.detail
        assert len(engine.execs) == 1
        release.set()
        for _ in range(200):  # the hung exec returns: the container is checked again
            if not probe._in_flight:
                break
            time.sleep(0.01)
        probe.read(4.0), probe.read(5.0)
        (third,) = probe.read(6.0)
        assert len(engine.execs) == 2
        assert isinstance(third, GpuAccessSignal) and third.ok is True
    finally:
        release.set()


def test_gpu_access_does_not_pile_up_threads_of_a_hung_nvidia_smi() -> None:
    engine = FakeDocker()
    c = service(engine, "ollama-0")
    gpu_request(c, UUID0)
    release = threading.Event()
    engine.exec_reply = lambda _c, _cmd: (release.wait(5.0), (0, _smi_reply(UUID0)))[1]
    probe = GpuAccessProbe(engine, P, timeout_s=0.02)
    before = threading.active_count()
    try:
        for t in range(10):
            probe.read(float(t))
        assert len(engine.execs) == 1
        assert threading.active_count() <= before + 1
    finally:
        release.set()


# --- residency ------------------------------------------------------------------------------------


def _ps_answer(models: list[dict[str, Any]]) -> bytes:
    body = json.dumps({"models": models})
    return f"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}".encode()


def test_residency_per_model_from_api_ps() -> None:
    engine = FakeDocker()
    o0, o1, _ui = service(engine, "ollama-0"), service(engine, "ollama-1"), service(engine, "ui")
    for c in (o0, o1):
        c.attrs["Config"]["Env"] = ["OLLAMA_HOST=0.0.0.0:11434"]
    mixtral = {
        "name": "mixtral:8x7b",
        "model": "mixtral:8x7b",
        "size": 29563297792,
        "size_vram": 29563297792,
        "expires_at": "2026-11-29T10:12:31.093475+00:00",
    }
    partial = {**mixtral, "size_vram": 14781648896}
    answers = {o0.id: (0, _ps_answer([mixtral])), o1.id: (0, _ps_answer([partial]))}
    engine.exec_reply = lambda c, cmd: answers.get(c.id)
    got = ResidencyProbe(engine, P).read(0.0)
    assert sorted(of(ResidencySignal, got), key=lambda s: s.service) == [
        ResidencySignal("ollama-0", "mixtral:8x7b", 1.0, "2026-11-29T10:12:31.093475+00:00"),
        ResidencySignal("ollama-1", "mixtral:8x7b", 0.5, "2026-11-29T10:12:31.093475+00:00"),
    ]
    assert all(e[1] != "ui" for e in engine.journal if e[0] == "exec")
    # every 2nd read: the read between repeats the last (models stay loaded, not "unloaded")
    every = ResidencyProbe(engine, P, every=2)
    execs = len(engine.execs)
    first = every.read(0.0)
    assert every.read(1.0) == first and len(engine.execs) == execs + 2
    # a server that does not answer is an error naming the service, the other still reads
    answers[o1.id] = (1, b"bash: connect: Connection refused\n")
    got = ResidencyProbe(engine, P).read(1.0)
    (err,) = of(ProbeError, got)
    assert err.message.startswith("ollama-1: GET /api/ps on port 11434 failed")
    assert [s.service for s in of(ResidencySignal, got)] == ["ollama-0"]


# --- the gateway's access log ---------------------------------------------------------------------


def _access(route: str, addr: str, status: int, ustatus: str, took: float, when: float) -> str:
    return json.dumps(
        {
            "time": f"{when:.3f}",
            "route": route,
            "upstream_addr": addr,
            "status": str(status),
            "upstream_status": ustatus,
            "request_time": f"{took:.3f}",
            "request_uri": "/ollama/api/generate",
            "request_method": "POST",
        }
    )


def test_access_log_lines() -> None:
    retried = _access("ollama", "10.0.0.2:11434, 10.0.0.3:11434", 200, "502, 200", 1.234, 1e9)
    assert parse_line(retried) == RequestSignal(1e9, "ollama", "10.0.0.3:11434", 200, "200", 1.234)
    refused = _access("", "", 401, "", 0.0, 1e9)
    assert parse_line(refused) == RequestSignal(1e9, "", None, 401, None, 0.0)
    for junk in (
        "2026/11/29 09:30:01 [notice] 1#1: signal process started",
        "/docker-entrypoint.sh: Configuration complete; ready for start up",
        '{"time": "x"}',
        "{not json",
        "",
    ):
        assert parse_line(junk) is None


def _stack_with_gateway(engine: FakeDocker) -> tuple[FakeContainer, FakeContainer, FakeContainer]:
    gw = service(engine, "gateway")
    a, b = service(engine, "ollama-0"), service(engine, "ollama-1")
    return gw, a, b


def _drain(probe: GatewayLogProbe, n: int, now: float) -> list[Signal]:
    got: list[Signal] = []

    def enough() -> bool:
        got.extend(probe.read(now))
        return len(of(RequestSignal, got)) >= n

    until(enough)
    return got


def test_gateway_requests_by_route_and_service_with_retries_and_junk() -> None:
    engine = FakeDocker()
    gw, a, b = _stack_with_gateway(engine)
    probe = GatewayLogProbe(engine, P)
    try:
        assert of(RequestSignal, probe.read(0.0)) == []
        until(lambda: probe.attached == gw.id)
        t = time.time()
        gw.log_line("2026/11/29 09:30:01 [notice] 1#1: reconfiguring")
        gw.log_line(_access("ollama", f"{a.ip}:11434", 200, "200", 0.412, t))
        gw.log_line(_access("ollama", f"{a.ip}:11434, {b.ip}:11434", 200, "502, 200", 1.6, t))
        gw.log_line(_access("ollama", f"{b.ip}:11434", 504, "504", 120.001, t))
        got = of(RequestSignal, _drain(probe, 3, 1.0))
        assert [(r.route, r.upstream, r.service, r.status) for r in got] == [
            ("ollama", f"{a.ip}:11434", "ollama-0", 200),
            ("ollama", f"{b.ip}:11434", "ollama-1", 200),
            ("ollama", f"{b.ip}:11434", "ollama-1", 504),
        ]
        assert [r.request_time_s for r in got] == [0.412, 1.6, 120.001]
        assert of(RequestSignal, probe.read(2.0)) == []  # drained
    finally:
        probe.close()


def test_gateway_reattaches_to_a_recreated_gateway_without_duplicates() -> None:
    engine = FakeDocker()
    gw, a, _ = _stack_with_gateway(engine)
    probe = GatewayLogProbe(engine, P)
    try:
        probe.read(0.0)
        until(lambda: probe.attached == gw.id)
        t = time.time()
        gw.log_line(_access("ollama", f"{a.ip}:11434", 200, "200", 0.1, t))
        assert len(of(RequestSignal, _drain(probe, 1, 1.0))) == 1
        engine.end_streams()  # the engine dropped the stream: attach again, same container
        until(lambda: probe.attaches == 2 and probe.attached == gw.id)
        gw.log_line(_access("ollama", f"{a.ip}:11434", 200, "200", 0.2, t + 1))
        got = of(RequestSignal, _drain(probe, 1, 2.0))
        assert [r.request_time_s for r in got] == [0.2]  # the first line not read twice
        # the gateway is recreated (a new container)
        gw.remove(force=True)
        new = service(engine, "gateway")
        until(lambda: probe.attached == new.id)
        new.log_line(_access("ollama", f"{a.ip}:11434", 200, "200", 0.3, t + 2))
        got = of(RequestSignal, _drain(probe, 1, 3.0))
        assert [(r.request_time_s, r.service) for r in got] == [(0.3, "ollama-0")]
        assert engine.log_attaches[-1] == (new.id, probe.start)
    finally:
        probe.close()


def test_gateway_address_taken_over_by_a_new_container(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failover the engine may give a removed replica's address to the new container:
    under traffic the address map is read again (at most every IPS_MAX_AGE_S)."""
    from composegen.watch.probes import gateway as gateway_mod

    engine = FakeDocker()
    gw, a, _ = _stack_with_gateway(engine)
    probe = GatewayLogProbe(engine, P)
    try:
        probe.read(0.0)
        until(lambda: probe.attached == gw.id)
        gw.log_line(_access("ollama", f"{a.ip}:11434", 200, "200", 0.1, time.time()))
        assert [r.service for r in of(RequestSignal, _drain(probe, 1, 1.0))] == ["ollama-0"]
        a.remove(force=True)
        cpu = service(engine, "ollama-cpu")
        cpu.ip = a.ip
        monkeypatch.setattr(gateway_mod, "IPS_MAX_AGE_S", 0.0)
        gw.log_line(_access("ollama", f"{a.ip}:11434", 200, "200", 0.2, time.time()))
        assert [r.service for r in of(RequestSignal, _drain(probe, 1, 2.0))] == ["ollama-cpu"]
    finally:
        probe.close()


def test_gateway_buffer_is_bounded() -> None:
    engine = FakeDocker()
    gw, a, _ = _stack_with_gateway(engine)
    probe = GatewayLogProbe(engine, P, max_buffered=5)
    try:
        probe.read(0.0)
        until(lambda: probe.attached == gw.id)
        for i in range(8):
            gw.log_line(_access("ollama", f"{a.ip}:11434", 200, "200", i / 10, time.time()))
        until(lambda: probe.dropped == 3)
        got = of(RequestSignal, probe.read(1.0))
        assert [r.request_time_s for r in got] == [0.3, 0.4, 0.5, 0.6, 0.7]
    finally:
        probe.close()


def test_gateway_missing_is_a_probe_error() -> None:
    engine = FakeDocker()
    service(engine, "ollama-0")
    probe = GatewayLogProbe(engine, P)
    try:
        probe.read(0.0)
        errors: list[ProbeError] = []
        until(lambda: bool(errors.extend(of(ProbeError, probe.read(1.0))) or errors))
        assert errors[0].message == "no running gateway container"
    finally:
        probe.close()


def test_probes_close_their_threads() -> None:
    engine = FakeDocker()
    _stack_with_gateway(engine)
    before = threading.active_count()
    probes: list[Any] = [ContainersProbe(engine, P), GatewayLogProbe(engine, P)]
    for p in probes:
        p.read(0.0)
    until(lambda: threading.active_count() >= before + 2)
    for p in probes:
        p.close()
    until(lambda: threading.active_count() == before)
