"""watch --metrics: the exposition parsed with Prometheus's own text parser, over text() and over
a live scrape of serve() on 127.0.0.1; stale series removed; addresses checked."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from composegen.errors import BadInputError, ComposegenError
from composegen.watch.metrics import Metrics, parse_addr
from composegen.watch.types import (
    ContainerSignal,
    Event,
    GpuSignal,
    RequestSignal,
    ResidencySignal,
    Snapshot,
    StackInfo,
)
from tests.conftest import ROOT

# readings of real cards: an H100 80GB HBM3 (tests/fixtures/nvidia-smi/csv/nvidia_gpu_exporter
# ...h100-80gb-hbm3...idle.query-gpu.csv: 81559 MiB, 41 C, 69.85 W) and an A100-SXM4-80GB
H100 = GpuSignal(
    index=0,
    uuid="GPU-00000000-0000-0000-0000-000000000000",
    name="NVIDIA H100 80GB HBM3",
    temperature_c=41,
    memory_used_mib=0,
    memory_total_mib=81559,
    utilization_pct=0,
    power_w=69.85,
)
A100 = GpuSignal(
    index=1,
    uuid="GPU-2c8e5f1a-7d3b-4e9c-a1f0-6b5d4c3e2a19",
    name="NVIDIA A100-SXM4-80GB",
    temperature_c=84,
    memory_used_mib=70452,
    memory_total_mib=81920,
    utilization_pct=93,
    power_w=311.4,
    xids=(79, 79),
)
STACK = StackInfo(
    name="rag-a100",
    planned={"whisper": (0,), "llm": (1,)},
    uuids={0: H100.uuid or "", 1: A100.uuid or ""},
    routes={"whisper": "whisper", "llm": "llm"},
)


def _container(
    service: str, state: str = "running", health: str | None = "healthy", restarts: int = 0
) -> ContainerSignal:
    return ContainerSignal(service, f"{service}-id", state, health, restarts, False, None)


def _snap(**kw: object) -> Snapshot:
    base: dict[str, object] = {
        "time": 1_795_000_000.0,
        "stack": STACK,
        "containers": (
            _container("whisper"),
            _container("llm", health="unhealthy", restarts=4),
            _container("ollama", health=None),
        ),
        "gpus": (H100, A100),
        "residency": (ResidencySignal("ollama", "llama3.2:3b", 0.62),),
        "requests": (
            RequestSignal(1_794_999_999.0, "whisper", "172.20.0.5:8000", 200, "200", 0.183),
            RequestSignal(1_794_999_999.2, "llm", "172.20.0.6:8000", 200, "502, 200", 2.75),
            RequestSignal(1_794_999_999.4, "llm", "172.20.0.6:8000", 504, "504", 60.002),
        ),
    }
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def one(samples: Samples, name: str, **labels: str) -> float:
    found = [v for ls, v in samples.get(name, []) if all(ls.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found} in {samples.get(name)}"
    return found[0]


def gpu_labels(g: GpuSignal) -> dict[str, str]:
    return {"stack": "rag-a100", "gpu_uuid": g.uuid or "", "gpu_index": str(g.index)}


def test_every_series_of_the_contract() -> None:
    m = Metrics("rag-a100")
    m.observe(_snap())
    m.record_events(
        [
            Event(
                1.0,
                "info",
                "heal",
                "recreate whisper: lost GPU access",
                "whisper",
                value="recreate",
            ),
            Event(2.0, "critical", "xid", "Xid 79 on GPU 1", gpu=1, value=79),
            # as heal.py reports them: a failed heal, and one not tried (the lock was held)
            Event(
                3.0, "critical", "heal", "recreate whisper failed: ...", "whisper", value="recreate"
            ),
            Event(4.0, "info", "heal", "recreate whisper not done: busy", "whisper", value="busy"),
            Event(5.0, "info", "heal", "restore: GPUs healthy for 5m"),  # no value: the message
        ]
    )
    s = parse(m.text())
    h, a = gpu_labels(H100), gpu_labels(A100)
    assert one(s, "composegen_gpu_temperature_celsius", **h) == 41
    assert one(s, "composegen_gpu_temperature_celsius", **a) == 84
    assert one(s, "composegen_gpu_memory_total_bytes", **h) == 85520809984  # 81559 MiB
    assert one(s, "composegen_gpu_memory_used_bytes", **a) == 73874276352  # 70452 MiB
    assert one(s, "composegen_gpu_memory_total_bytes", **a) == 85899345920  # 81920 MiB
    assert one(s, "composegen_gpu_utilization_ratio", **a) == pytest.approx(0.93)
    assert one(s, "composegen_gpu_power_watts", **h) == pytest.approx(69.85)
    assert one(s, "composegen_gpu_xid_events_total", **a) == 2
    assert one(s, "composegen_gpu_xid_events_total", **h) == 0
    svc = {"stack": "rag-a100"}
    assert one(s, "composegen_service_up", service="llm", **svc) == 1
    assert one(s, "composegen_service_healthy", service="llm", **svc) == 0
    assert one(s, "composegen_service_healthy", service="whisper", **svc) == 1
    assert one(s, "composegen_service_healthy", service="ollama", **svc) == 1  # no check: running
    assert one(s, "composegen_service_restarts", service="llm", **svc) == 4
    assert one(s, "composegen_gateway_requests_total", service="llm", route="llm", **svc) == 2
    # the 504, and the 200 that needed a retry after a 502
    assert one(s, "composegen_gateway_errors_total", service="llm", route="llm", **svc) == 2
    assert one(s, "composegen_gateway_errors_total", service="whisper", route="whisper") == 0
    llm = {"service": "llm", "route": "llm"}
    assert one(s, "composegen_gateway_request_duration_seconds_count", **llm) == 2
    assert one(s, "composegen_gateway_request_duration_seconds_sum", **llm) == pytest.approx(62.752)
    assert one(s, "composegen_gateway_request_duration_seconds_bucket", le="2.5", **llm) == 0
    assert one(s, "composegen_gateway_request_duration_seconds_bucket", le="5.0", **llm) == 1
    assert one(s, "composegen_gateway_request_duration_seconds_bucket", le="60.0", **llm) == 1
    assert one(s, "composegen_gateway_request_duration_seconds_bucket", le="120.0", **llm) == 2
    assert one(s, "composegen_model_gpu_fraction", service="ollama", model="llama3.2:3b") == 0.62
    assert one(s, "composegen_stack_mode", mode="gpu", **svc) == 1
    assert one(s, "composegen_stack_mode", mode="cpu-fallback", **svc) == 0
    assert one(s, "composegen_stack_mode", mode="gpu-failover", **svc) == 0
    heal = "composegen_heal_actions_total"
    assert one(s, heal, action="recreate", result="ok", **svc) == 1
    assert one(s, heal, action="recreate", result="failed", **svc) == 1
    assert one(s, heal, action="gpu-failed", result="ok", **svc) == 0
    assert one(s, heal, action="cpu", result="failed", **svc) == 0
    assert one(s, heal, action="restore", result="ok", **svc) == 1
    assert one(s, "composegen_events_total", rule="xid", level="critical") == 1


def test_counters_accumulate_over_intervals() -> None:
    m = Metrics("rag-a100")
    m.observe(_snap())
    m.observe(_snap(requests=(RequestSignal(1.0, "llm", "172.20.0.6:8000", 200, "200", 0.4),)))
    s = parse(m.text())
    assert one(s, "composegen_gateway_requests_total", service="llm") == 3
    assert one(s, "composegen_gpu_xid_events_total", gpu_index="1") == 4


def test_series_of_what_disappeared_are_removed() -> None:
    m = Metrics("rag-a100")
    m.observe(_snap())
    # GPU 1 falls off the bus (gone from NVML); llm is failed over (its container and plan gone,
    # its route now on llm-cpu); ollama unloaded its model; H100 stops reporting power
    stack = StackInfo(
        name="rag-a100",
        mode="gpu-failover",
        planned={"whisper": (0,)},
        routes={"whisper": "whisper", "llm": "llm-cpu"},
    )
    h100 = GpuSignal(0, H100.uuid, H100.name, temperature_c=43, memory_total_mib=81559)
    m.observe(
        _snap(
            stack=stack,
            gpus=(h100,),
            containers=(_container("whisper"), _container("llm-cpu"), _container("ollama")),
            residency=(),
            requests=(),
        )
    )
    text = m.text()
    s = parse(text)
    assert A100.uuid not in text
    assert 'gpu_index="1"' not in text
    assert one(s, "composegen_gpu_temperature_celsius", gpu_index="0") == 43
    assert "composegen_gpu_power_watts" not in s  # no reading: no stale 69.85
    assert "composegen_gpu_utilization_ratio" not in s
    assert 'service="llm"' not in text
    assert one(s, "composegen_service_up", service="llm-cpu") == 1
    assert "composegen_model_gpu_fraction" not in s
    assert one(s, "composegen_gateway_requests_total", service="whisper") == 1  # still there
    assert one(s, "composegen_stack_mode", mode="gpu-failover") == 1
    assert one(s, "composegen_stack_mode", mode="gpu") == 0


def test_a_failed_gpu_probe_keeps_the_last_readings() -> None:
    m = Metrics("rag-a100")
    m.observe(_snap())
    m.observe(_snap(gpus=None, requests=()))
    s = parse(m.text())
    assert one(s, "composegen_gpu_temperature_celsius", gpu_index="1") == 84


def test_an_unknown_mode_is_shown_then_removed() -> None:
    m = Metrics("s")
    m.set_mode("degraded")
    assert one(parse(m.text()), "composegen_stack_mode", mode="degraded") == 1
    m.set_mode("cpu-fallback")
    s = parse(m.text())
    assert [ls["mode"] for ls, _ in s["composegen_stack_mode"] if ls["mode"] == "degraded"] == []
    assert one(s, "composegen_stack_mode", mode="cpu-fallback") == 1


def test_two_watchers_do_not_share_series() -> None:
    a, b = Metrics("rag-a100"), Metrics("rag-a100")  # the global registry would refuse this
    a.observe(_snap())
    assert "composegen_gpu_temperature_celsius" in parse(a.text())
    assert "composegen_gpu_temperature_celsius" not in parse(b.text())


@pytest.fixture
def served() -> Iterator[tuple[Metrics, int]]:
    m = Metrics("rag-a100")
    server = m.serve("127.0.0.1:0")
    try:
        yield m, server.port
    finally:
        server.close()


def test_a_live_scrape(served: tuple[Metrics, int]) -> None:
    m, port = served
    assert port > 0
    m.observe(_snap())
    resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, trust_env=False)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    s = parse(resp.text)
    assert one(s, "composegen_gpu_temperature_celsius", gpu_index="1") == 84
    assert one(s, "composegen_service_restarts", service="llm") == 4
    # nothing of the library's global registry (process_*, python_gc_*) is mixed in
    assert not [n for n in s if not n.startswith("composegen_")]


def test_close_stops_listening() -> None:
    server = Metrics("s").serve(":0")
    port = server.port
    assert server.host == "127.0.0.1"  # loopback when no host is given
    server.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False)


def test_a_port_in_use_is_a_runtime_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ComposegenError, match="already in use") as err:
            Metrics("s").serve(f"127.0.0.1:{port}")
        assert not isinstance(err.value, BadInputError)


def test_an_address_not_on_this_host_is_refused() -> None:
    with pytest.raises(BadInputError, match=r"cannot listen on 192\.0\.2\.1:9464"):
        Metrics("s").serve("192.0.2.1:9464")  # TEST-NET-1: never assigned to a host


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9464", ("127.0.0.1", 9464)),
        ("9464", ("127.0.0.1", 9464)),
        ("0", ("127.0.0.1", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("localhost:9464", ("localhost", 9464)),
    ],
)
def test_parse_addr(text: str, expected: tuple[str, int]) -> None:
    assert parse_addr(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not an address"),
        ("127.0.0.1:", "is not 0-65535"),
        ("127.0.0.1:65536", "is not 0-65535"),
        ("127.0.0.1:-1", "is not 0-65535"),
        ("127.0.0.1:http", "is not 0-65535"),
        ("::1:9464", "brackets"),
        ("[::1]", "needs a port"),
        ("example.com:9464", "is not an IP address"),
        ("300.1.1.1:9464", "is not an IP address"),
        ("127.0.0.1 :9464", "not an address"),
    ],
)
def test_parse_addr_refuses(text: str, why: str) -> None:
    with pytest.raises(BadInputError, match=why) as err:
        parse_addr(text)
    assert "\n" not in err.value.one_line()


def test_prometheus_client_loads_only_with_a_metrics_object() -> None:
    code = (
        "import sys, json\n"
        "import composegen.watch.metrics, composegen.watch.view, composegen.watch.events\n"
        "from composegen.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "before = 'prometheus_client' in sys.modules\n"
        "composegen.watch.metrics.Metrics('s')\n"
        "print(json.dumps([before, 'prometheus_client' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [False, True]


def test_only_metrics_imports_prometheus_client() -> None:
    importers = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "composegen").rglob("*.py")
        if any(
            line.strip().startswith(("import prometheus_client", "from prometheus_client"))
            for line in p.read_text(encoding="utf-8").splitlines()
        )
    )
    assert importers == ["composegen/watch/metrics.py"]
