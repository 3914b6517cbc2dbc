"""Rolling request statistics: the window, req/s, errors, nearest-rank p50/p95, bounded memory."""

from __future__ import annotations

from composegen.watch.stats import Stats, is_error, percentile, upstream_failed
from composegen.watch.types import RequestSignal

NOW = 1_795_000_000.0


def req(
    t: float, latency: float, status: int = 200, upstream: str | None = "200", **kw: str
) -> RequestSignal:
    return RequestSignal(
        NOW + t, kw.get("route", "llm"), "172.20.0.6:8000", status, upstream, latency,
        kw.get("service"),
    )  # fmt: skip


def test_percentiles_nearest_rank() -> None:
    # 20 latencies 0.01 .. 0.20: p50 is the 10th, p95 the 19th
    stats = Stats(window_s=60)
    stats.add([req(-i, (i + 1) / 100) for i in range(20)])
    s = stats.service("llm", NOW)
    assert (s.requests, s.p50_s, s.p95_s) == (20, 0.10, 0.19)
    assert percentile([0.5], 0.95) == 0.5


def test_rate_over_a_full_window() -> None:
    stats = Stats(window_s=60)
    stats.add([req(-100, 0.1)])  # watched for 100 s: the window is full
    stats.add([req(-59 + i, 0.1) for i in range(30)])
    s = stats.service("llm", NOW)
    assert s.requests == 30  # the one 100 s ago is out of the window
    assert s.rps == 0.5


def test_rate_before_the_window_filled() -> None:
    stats = Stats(window_s=60)
    stats.add([req(-10 + i, 0.1) for i in range(10)])  # 10 requests in the first 10 s
    assert stats.service("llm", NOW).rps == 1.0


def test_errors_count_5xx_and_failed_upstreams() -> None:
    stats = Stats()
    stats.add(
        [
            req(-5, 0.2, 200, "200"),
            req(-4, 0.3, 200, "502, 200"),  # the client got its answer, an upstream failed
            req(-3, 60.0, 504, "504"),
            req(-2, 0.0, 502, None),  # no upstream reached at all
            req(-1, 0.1, 404, "404"),
            req(-1, 0.1, 499, "-"),  # the client went away
        ]
    )
    assert stats.service("llm", NOW).errors == 3
    assert upstream_failed("504 : 200")
    assert not upstream_failed("-")
    assert not is_error(req(0, 0.1, 429, "429"))


def test_requests_go_to_their_service() -> None:
    stats = Stats(routes={"llm": "llm-cpu"})
    stats.add(
        [
            req(-1, 0.1, route="ollama", service="ollama-1"),
            req(-1, 0.2, route="ollama", service="ollama-0"),
            req(-1, 0.3),  # no service from the probe: the route's
            req(-1, 0.4, route="ocr"),  # unknown route: the route itself
        ]
    )
    assert sorted(stats.services()) == ["llm-cpu", "ocr", "ollama-0", "ollama-1"]
    assert stats.service("llm-cpu", NOW).p50_s == 0.3
    assert stats.service("nothing", NOW).p95_s is None
    assert stats.service("nothing", NOW).rps == 0.0


def test_memory_is_bounded() -> None:
    stats = Stats(window_s=3600, max_per_service=100, max_services=3)
    stats.add([req(-1, i / 1000) for i in range(1000)])
    assert stats.service("llm", NOW).requests == 100  # the newest 100
    assert stats.service("llm", NOW).p50_s == 0.949
    stats.add([req(-1, 0.1, route=f"r{i}") for i in range(10)])
    assert stats.services() == ["r7", "r8", "r9"]


def test_old_requests_leave_the_window() -> None:
    stats = Stats(window_s=60)
    stats.add([req(0, 0.1)])
    assert stats.service("llm", NOW + 30).requests == 1
    assert stats.service("llm", NOW + 61).requests == 0
