"""What watch shows: the --once snapshot (a row per service with its GPUs, health, models,
traffic and last event; a footer), the --json lines and the live view."""

from __future__ import annotations

import io
import json
import re

from composegen.watch.stats import Stats
from composegen.watch.types import (
    ContainerSignal,
    Event,
    GpuSignal,
    ProbeError,
    RequestSignal,
    ResidencySignal,
    Snapshot,
    StackInfo,
)
from composegen.watch.view import LiveView, json_lines, snapshot_dict, snapshot_text

NOW = 1_795_000_000.0
A100_0 = GpuSignal(
    0,
    "GPU-5b1a0b7e-2f0c-4a47-9f0e-8c0d1b2a3c4d",
    "NVIDIA A100-SXM4-80GB",
    temperature_c=84,
    memory_used_mib=70452,  # 86 % of 81920
    memory_total_mib=81920,
    utilization_pct=93,
    power_w=311.4,
)
A100_1 = GpuSignal(1, "GPU-9d2e4f6a-1b3c-4d5e-8f7a-0b1c2d3e4f5a", "NVIDIA A100-SXM4-80GB",
                   health="lost", reason="GPU is lost (Xid 79)")  # fmt: skip
RTX4090 = GpuSignal(
    2,
    "GPU-1f2e3d4c-5b6a-4789-8a7b-6c5d4e3f2a1b",
    "NVIDIA GeForce RTX 4090",
    temperature_c=61,
    memory_used_mib=6141,  # 25 % of 24564
    memory_total_mib=24564,
    utilization_pct=40,
)
STACK = StackInfo(
    name="rag-a100",
    mode="gpu-failover",
    planned={"whisper": (5,), "llm": (2, 3), "ollama": (2,)},
    failed=(1,),
    routes={"whisper": "whisper", "llm": "llm", "ollama": "ollama"},
)


def snap() -> Snapshot:
    return Snapshot(
        time=NOW,
        stack=STACK,
        containers=(
            ContainerSignal(
                "whisper", "a1", "running", "healthy", 0, False, None, (A100_0.uuid or "",)
            ),
            ContainerSignal("llm", "b2", "restarting", "unhealthy", 4, True, 137, ("2", "3")),
            ContainerSignal("ollama", "c3", "running", None, 0, False, None, ("2",)),
        ),
        gpus=(A100_0, A100_1, RTX4090),
        residency=(
            ResidencySignal("ollama", "llama3.2:3b", 1.0),
            ResidencySignal("ollama", "qwen2.5:7b", 0.42),
        ),
        errors=(ProbeError("residency", "ollama: connection refused"),),
    )


def stats() -> Stats:
    s = Stats(window_s=60)
    # whisper: 12 requests over the last 60 s (after 60 s of watching), 0.05 .. 0.60 s
    s.add([RequestSignal(NOW - 100, "whisper", None, 200, "200", 0.01)])
    s.add(
        [RequestSignal(NOW - 5 * i, "whisper", None, 200, "200", (i + 1) / 20) for i in range(12)]
    )
    return s


EVENTS = [
    Event(NOW - 30, "critical", "gpu-lost", "GPU 1 is lost (Xid 79)", gpu=1),
    Event(
        NOW - 20,
        "info",
        "heal",
        "gpu-failed: whisper moved from GPU 1 to GPU 5",
        "whisper",
        value="gpu-failed",
    ),
    Event(NOW - 10, "warn", "memory", "GPU 0 memory at 86% (warn at 85%)", "whisper", 0, 86, 85),
]


def row(text: str, service: str) -> str:
    lines = [ln for ln in text.splitlines() if re.match(rf"│ {re.escape(service)}\s", ln)]
    assert len(lines) == 1, f"no single row for {service} in:\n{text}"
    return lines[0]


def test_once_has_a_row_per_service() -> None:
    text = snapshot_text(snap(), stats(), EVENTS, width=220)
    whisper = row(text, "whisper")
    assert "healthy" in whisper
    assert "0 █████████░ 86% util 93% 84°C" in whisper  # its GPU by UUID, not its plan (5)
    assert "0.20" in whisper  # 12 requests / 60 s
    assert "300ms" in whisper and "600ms" in whisper  # p50 = 6th of 12, p95 = 12th
    assert "memory: GPU 0 memory at 86% (warn at 85%)" in whisper
    llm = row(text, "llm")
    assert "restarting (4 restarts, OOM)" in llm
    assert "2 ██░░░░░░░░ 25% util 40% 61°C" in llm
    assert "GPU 3 (no reading)" in text  # the row's second line
    assert "0.00" in llm  # no traffic
    ollama = row(text, "ollama")
    assert "running" in ollama
    assert "llama3.2:3b 100% GPU, qwen2.5:7b 42% GPU" in ollama


def test_once_footer() -> None:
    text = snapshot_text(snap(), stats(), EVENTS, width=220)
    assert "mode: gpu-failover (a GPU failed over to a spare)" in text
    assert "failed GPUs: 1" in text
    assert "probe residency: ollama: connection refused" in text
    assert "CRITICAL gpu-lost        GPU 1: GPU 1 is lost (Xid 79)" in text
    assert "INFO     heal            whisper: gpu-failed: whisper moved from GPU 1 to GPU 5" in text


def test_once_prints_without_a_terminal_and_shows_a_lost_gpu() -> None:
    s = snap()
    lost = Snapshot(NOW, StackInfo("rag-a100", planned={"whisper": (1,)}), gpus=(A100_1,))
    text = snapshot_text(lost, None, [], width=160)
    assert "1 LOST (GPU is lost (Xid 79))" in row(text, "whisper")
    assert "missing" in row(text, "whisper")  # planned, no container
    assert "\x1b[" not in snapshot_text(s, None, EVENTS)  # no colour codes in a file


def test_json_lines() -> None:
    lines = [json.loads(ln) for ln in json_lines(snap(), stats(), EVENTS)]
    assert [ln["type"] for ln in lines] == ["event", "event", "event", "snapshot"]
    assert lines[0] == {
        "type": "event",
        "time": "2026-11-18T11:06:10.000Z",
        "level": "critical",
        "rule": "gpu-lost",
        "message": "GPU 1 is lost (Xid 79)",
        "service": None,
        "gpu": 1,
        "value": None,
        "threshold": None,
    }
    shot = lines[-1]
    assert shot["stack"] == "rag-a100" and shot["mode"] == "gpu-failover"
    assert shot["failed_gpus"] == [1]
    services = {s["service"]: s for s in shot["services"]}
    assert sorted(services) == ["llm", "ollama", "whisper"]
    assert services["whisper"]["rps"] == 0.2
    assert services["whisper"]["p95_s"] == 0.6
    assert services["whisper"]["gpu_indices"] == [0]
    assert services["llm"]["gpu_indices"] == [2, "3"]
    gpus = {g["index"]: g for g in shot["gpus"]}
    assert gpus[0]["memory_used_mib"] == 70452 and gpus[0]["memory_total_mib"] == 81920
    assert gpus[1]["health"] == "lost"
    assert shot["errors"] == [{"probe": "residency", "message": "ollama: connection refused"}]


def test_json_lines_without_events_or_gpu_source() -> None:
    s = Snapshot(NOW, STACK, gpus=None)
    (line,) = json_lines(s, None, [])
    assert json.loads(line)["gpus"] is None
    assert snapshot_dict(s, None)["services"][0]["rps"] is None


def test_live_view_draws_the_table() -> None:
    out = io.StringIO()
    with LiveView(file=out) as view:
        view.update(snap(), stats(), EVENTS)
    assert "whisper" in out.getvalue()
    assert "86%" in out.getvalue()
