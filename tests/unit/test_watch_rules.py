"""watch's rules driven with hand-built sequences of snapshots: the events each sequence
produces and the one decision per interval, including none in hold-down and none beyond the
rate limit. The stack is rag-a100's plan on 8x A100-SXM4-80GB (81920 MiB each): whisper on GPU
0, embeddings on 1, the LLM on 2-3, OCR on 4, GPUs 5-7 spare."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import pytest

from composegen.watch.rules import Rules
from composegen.watch.settings import Thresholds
from composegen.watch.types import (
    ContainerSignal,
    Decision,
    Event,
    GpuAccessSignal,
    GpuSignal,
    ProbeError,
    ResidencySignal,
    Snapshot,
    StackInfo,
)

A100 = "NVIDIA A100-SXM4-80GB"
TOTAL = 81920  # MiB, what an A100-SXM4-80GB reports
UUIDS = {
    i: f"GPU-5c4f5e8a-3b1d-4f0e-9a6c-{i:012x}" for i in range(8)
}  # one per GPU, as render.json records them
PLANNED = {"whisper": (0,), "embeddings": (1,), "llm": (2, 3), "ocr": (4,)}
STACK = StackInfo(
    name="rag-a100",
    mode="gpu",
    planned=PLANNED,
    uuids=UUIDS,
    original_gpus=(0, 1, 2, 3, 4),
)
T0 = 1_764_403_200.0  # 2025-11-29 08:00 UTC
STEP = 5.0  # the default --interval


def gpu(index: int, **kw: object) -> GpuSignal:
    base: dict[str, object] = {
        "index": index,
        "uuid": UUIDS[index],
        "name": A100,
        "temperature_c": 41,
        "memory_used_mib": 4,
        "memory_total_mib": TOTAL,
        "utilization_pct": 0,
        "power_w": 61.5,
    }
    base.update(kw)
    return GpuSignal(**base)  # type: ignore[arg-type]


def gpus(**changed: dict[str, object]) -> tuple[GpuSignal, ...]:
    """All eight GPUs well, GPU N changed by g<N>={...}."""
    return tuple(gpu(i, **changed.get(f"g{i}", {})) for i in range(8))


def container(service: str, cid: str = "", **kw: object) -> ContainerSignal:
    base: dict[str, object] = {
        "service": service,
        "container_id": cid or f"{service}-c1",
        "state": "running",
        "health": "healthy",
        "restart_count": 0,
        "oom_killed": False,
        "exit_code": 0,
    }
    base.update(kw)
    return ContainerSignal(**base)  # type: ignore[arg-type]


def snap(t: float, stack: StackInfo = STACK, **kw: object) -> Snapshot:
    kw.setdefault("gpus", gpus())
    return Snapshot(time=t, stack=stack, **kw)  # type: ignore[arg-type]


def rules(**kw: float) -> Rules:
    return Rules(Thresholds(**kw))  # type: ignore[arg-type]


def rule_events(events: Iterable[Event], rule: str) -> list[Event]:
    return [e for e in events if e.rule == rule]


def run(r: Rules, snaps: Sequence[Snapshot]) -> list[tuple[list[Event], list[Decision]]]:
    return [r.evaluate(s) for s in snaps]


# --- temperature and memory ------------------------------------------------------------------


def test_temperature_rising_through_83_alerts_once_then_resolves() -> None:
    temps = [79, 81, 84, 86, 85, 84, 82, 80, 78]
    r = rules()
    out = run(
        r, [snap(T0 + i * STEP, gpus=gpus(g0={"temperature_c": c})) for i, c in enumerate(temps)]
    )
    per_read = [[(e.level, e.value) for e in rule_events(ev, "temperature")] for ev, _ in out]
    assert per_read == [[], [], [("warn", 84)], [], [], [], [], [("info", 80)], []]
    alert = rule_events(out[2][0], "temperature")[0]
    assert alert.gpu == 0 and alert.service == "whisper" and alert.threshold == 83
    assert all(d == [] for _, d in out)  # an alert, never an action


def test_temperature_flapping_at_the_limit_alerts_once() -> None:
    temps = [84, 82, 84, 82, 84, 82]  # never two reads in a row below the limit
    r = rules()
    out = run(
        r, [snap(T0 + i * STEP, gpus=gpus(g3={"temperature_c": c})) for i, c in enumerate(temps)]
    )
    events = [e for ev, _ in out for e in rule_events(ev, "temperature")]
    assert [(e.level, e.gpu) for e in events] == [("warn", 3)]


def test_temperature_at_exactly_the_limit_alerts() -> None:
    ((ev, _),) = run(rules(), [snap(T0, gpus=gpus(g1={"temperature_c": 83}))])
    assert [(e.level, e.gpu, e.value) for e in rule_events(ev, "temperature")] == [("warn", 1, 83)]


def test_memory_at_84_86_and_96_percent() -> None:
    # 68813 / 81920 = 84.0 %, 70451 = 86.0 %, 78643 = 96.0 %
    used = [68813, 70451, 78643]
    r = rules()
    out = run(
        r, [snap(T0 + i * STEP, gpus=gpus(g2={"memory_used_mib": u})) for i, u in enumerate(used)]
    )
    per_read = [
        [(e.level, e.gpu, e.value, e.threshold) for e in rule_events(ev, "memory")] for ev, _ in out
    ]
    assert per_read == [[], [("warn", 2, 86.0, 85.0)], [("critical", 2, 96.0, 95.0)]]
    assert "70451 / 81920 MiB" in rule_events(out[1][0], "memory")[0].message
    assert all(d == [] for _, d in out)


def test_memory_at_exactly_85_percent_warns() -> None:
    ((ev, _),) = run(rules(), [snap(T0, gpus=gpus(g0={"memory_used_mib": 69632}))])  # 85.0 %
    assert [(e.level, e.value) for e in rule_events(ev, "memory")] == [("warn", 85.0)]


def test_memory_alerts_per_gpu_and_once_while_it_stands() -> None:
    high = gpus(g0={"memory_used_mib": 70451}, g1={"memory_used_mib": 78643})
    r = rules()
    out = run(r, [snap(T0 + i * STEP, gpus=high) for i in range(4)])
    assert [(e.level, e.gpu) for e in rule_events(out[0][0], "memory")] == [
        ("warn", 0),
        ("critical", 1),
    ]
    assert all(rule_events(ev, "memory") == [] for ev, _ in out[1:])


def test_memory_critical_falls_back_to_warn_then_resolves_after_two_reads() -> None:
    used = [78643, 70451, 70451, 4, 4]  # 96 %, 86 %, 86 %, idle, idle
    r = rules()
    out = run(
        r, [snap(T0 + i * STEP, gpus=gpus(g4={"memory_used_mib": u})) for i, u in enumerate(used)]
    )
    levels = [[e.level for e in rule_events(ev, "memory")] for ev, _ in out]
    assert levels == [["critical"], [], ["warn"], [], ["info"]]


def test_rma_profile_warns_at_90_not_86() -> None:
    r = rules(memory_warn_pct=90.0)  # profiles/rma-shared.yaml: alert above 90 % (003)
    used = [70451, 74547]  # 86.0 %, 91.0 %
    out = run(
        r, [snap(T0 + i * STEP, gpus=gpus(g0={"memory_used_mib": u})) for i, u in enumerate(used)]
    )
    assert [[e.value for e in rule_events(ev, "memory")] for ev, _ in out] == [[], [91.0]]


# --- failing GPUs ----------------------------------------------------------------------------


def test_xid_79_on_a_planned_gpu_fails_over_that_gpu_only() -> None:
    r = rules()
    (ev0, d0), (ev1, d1) = run(r, [snap(T0), snap(T0 + STEP, gpus=gpus(g0={"xids": (79,)}))])
    assert ev0 == [] and d0 == []
    xid = rule_events(ev1, "xid")
    assert [(e.level, e.gpu, e.value, e.service) for e in xid] == [("critical", 0, 79, "whisper")]
    assert d1 == [Decision("gpu-failed", d1[0].reason, gpus=(0,))]


@pytest.mark.parametrize("xid", [48, 94, 95])
def test_ecc_xids_fail_the_gpu(xid: int) -> None:
    ((ev, d),) = run(rules(), [snap(T0, gpus=gpus(g1={"xids": (xid,)}))])
    assert [e.level for e in rule_events(ev, "xid")] == ["critical"]
    assert [(x.action, x.gpus) for x in d] == [("gpu-failed", (1,))]


def test_xid_on_a_spare_gpu_is_an_event_not_an_action() -> None:
    ((ev, d),) = run(rules(), [snap(T0, gpus=gpus(g6={"xids": (79,)}))])
    assert [(e.level, e.gpu, e.service) for e in rule_events(ev, "xid")] == [("critical", 6, None)]
    assert d == []


def test_a_non_fatal_xid_warns_without_action() -> None:
    ((ev, d),) = run(
        rules(), [snap(T0, gpus=gpus(g2={"xids": (13,)}))]
    )  # graphics engine exception
    assert [(e.level, e.value) for e in rule_events(ev, "xid")] == [("warn", 13)]
    assert d == []


def test_a_lost_gpu_alerts_once_and_is_decided_each_interval_until_handled() -> None:
    lost = gpus(g0={"health": "lost", "reason": "NVML_ERROR_GPU_IS_LOST", "temperature_c": None})
    r = rules()
    out = run(r, [snap(T0 + i * STEP, gpus=lost) for i in range(3)])
    assert [len(rule_events(ev, "gpu-lost")) for ev, _ in out] == [1, 0, 0]
    assert all([x.gpus for x in d] == [(0,)] for _, d in out)
    # once the plan records GPU 0 as failed over, nothing more to do
    moved = replace(STACK, mode="gpu-failover", planned={**PLANNED, "whisper": (5,)}, failed=(0,))
    ((_, d),) = run(r, [snap(T0 + 3 * STEP, stack=moved, gpus=lost)])
    assert d == []


def test_a_gpu_missing_from_the_list_is_failed_over_by_uuid() -> None:
    # GPU 0 fell off the bus: NVML renumbers the other seven 0..6; their UUIDs still match
    renumbered = tuple(replace(gpu(i), index=i - 1) for i in range(1, 8))
    r = rules()
    ((ev, d),) = run(r, [snap(T0, gpus=renumbered)])
    assert [(e.level, e.gpu) for e in rule_events(ev, "gpu-missing")] == [("critical", 0)]
    assert [(x.action, x.gpus) for x in d] == [("gpu-failed", (0,))]


def test_ecc_count_rising_fails_the_gpu() -> None:
    r = rules()
    out = run(
        r,
        [
            snap(T0, gpus=gpus(g4={"ecc_uncorrectable": 0})),
            snap(T0 + STEP, gpus=gpus(g4={"ecc_uncorrectable": 0})),
            snap(T0 + 2 * STEP, gpus=gpus(g4={"ecc_uncorrectable": 2})),
        ],
    )
    assert [len(rule_events(ev, "ecc")) for ev, _ in out] == [0, 0, 1]
    assert [[(x.action, x.gpus) for x in d] for _, d in out] == [[], [], [("gpu-failed", (4,))]]


def test_all_gpus_lost_falls_back_to_cpu() -> None:
    lost = {f"g{i}": {"health": "lost"} for i in range(8)}
    ((ev, d),) = run(rules(), [snap(T0, gpus=gpus(**lost))])
    assert [x.action for x in d] == ["cpu"]
    assert any(e.message == "no usable GPU left" for e in ev)


def test_no_gpu_at_all_falls_back_to_cpu() -> None:
    ((_, d),) = run(rules(), [snap(T0, gpus=())])
    assert [x.action for x in d] == ["cpu"]


def test_a_stack_planned_without_gpus_has_none_to_lose() -> None:
    cpu_only = StackInfo(name="rma-shared", planned={"ollama": ()})
    out = run(
        rules(), [snap(T0, stack=cpu_only, gpus=()), snap(T0 + STEP, stack=cpu_only, gpus=())]
    )
    assert all(ev == [] and d == [] for ev, d in out)


def test_a_failed_gpu_probe_warns_and_never_acts() -> None:
    err = ProbeError("gpus", "NVML: nvmlInit timed out after 5s")
    r = rules()
    out = run(
        r,
        [
            snap(T0, gpus=None, errors=(err,)),
            snap(T0 + STEP, gpus=None, errors=(err,)),
            snap(T0 + 2 * STEP),
        ],
    )
    probe = [[(e.level, e.value) for e in rule_events(ev, "probe")] for ev, _ in out]
    assert probe == [[("warn", "gpus")], [], [("info", "gpus")]]
    assert all(d == [] for _, d in out)


def test_lost_gpus_in_cpu_fallback_mode_decide_nothing() -> None:
    on_cpu = replace(STACK, mode="cpu-fallback")
    lost = {f"g{i}": {"health": "lost"} for i in range(8)}
    ((_, d),) = run(rules(), [snap(T0, stack=on_cpu, gpus=gpus(**lost))])
    assert d == []


# --- services --------------------------------------------------------------------------------


def health_seq(states: Sequence[str]) -> list[Snapshot]:
    return [
        snap(T0 + i * STEP, containers=(container("ocr", health=h),)) for i, h in enumerate(states)
    ]


def test_flapping_health_never_alerts() -> None:
    r = rules()
    out = run(r, health_seq(["unhealthy", "healthy"] * 5 + ["unhealthy", "unhealthy", "healthy"]))
    assert all(ev == [] and d == [] for ev, d in out)


def test_three_bad_checks_in_a_row_alert_and_two_good_clear() -> None:
    r = rules()
    out = run(
        r, health_seq(["healthy", "unhealthy", "unhealthy", "unhealthy", "healthy", "healthy"])
    )
    health = [[e.level for e in rule_events(ev, "health")] for ev, _ in out]
    assert health == [[], [], [], ["warn"], [], ["info"]]
    actions = [[(x.action, x.service) for x in d] for _, d in out]
    assert actions == [[], [], [], [("recreate", "ocr")], [("recreate", "ocr")], []]


def test_starting_does_not_count_either_way() -> None:
    r = rules()
    out = run(r, health_seq(["unhealthy", "unhealthy", "starting", "unhealthy"]))
    assert [[e.level for e in rule_events(ev, "health")] for ev, _ in out] == [[], [], [], ["warn"]]


def test_a_stopped_container_is_not_judged_unhealthy_nor_recreated() -> None:
    """Docker sets a stopped container's health to "unhealthy": that is no health check."""
    stopped = container("ocr", state="exited", health="unhealthy", exit_code=0)
    out = run(rules(), [snap(T0 + i * STEP, containers=(stopped,)) for i in range(5)])
    assert all(rule_events(ev, "health") == [] and d == [] for ev, d in out)


def test_an_unhealthy_service_that_stops_is_no_longer_recreated() -> None:
    r = rules()
    out = run(r, health_seq(["unhealthy"] * 3))
    assert [(x.action, x.service) for x in out[-1][1]] == [("recreate", "ocr")]
    stopped = container("ocr", state="exited", health="unhealthy", exit_code=0)
    ((_, d),) = run(r, [snap(T0 + 3 * STEP, containers=(stopped,))])
    assert d == []


def test_cpu_fallback_never_recreates_the_gpu_services_it_stopped() -> None:
    on_cpu = replace(STACK, mode="cpu-fallback")
    stopped = tuple(
        container(s, state="exited", health="unhealthy", exit_code=137, oom_killed=s == "llm")
        for s in PLANNED
    )
    cpu = container("whisper-cpu", health="unhealthy")
    r = rules()
    out = run(
        r,
        [
            snap(T0 + i * STEP, stack=on_cpu, containers=(*stopped, cpu))  # GPUs well: in hold-down
            for i in range(4)
        ],
    )
    # the CPU variant is still healed; the GPU services stay down, even the OOM-killed one
    assert [[(x.action, x.service) for x in d] for _, d in out] == [
        [],
        [],
        [("recreate", "whisper-cpu")],
        [("recreate", "whisper-cpu")],
    ]
    assert len(rule_events(out[0][0], "oom")) == 1  # still said


def restarts_seq(counts: Sequence[int], step: float = 30.0) -> list[Snapshot]:
    return [
        snap(T0 + i * step, containers=(container("embeddings", restart_count=n),))
        for i, n in enumerate(counts)
    ]


def test_restart_loop_alerts_and_recreates() -> None:
    r = rules()
    out = run(r, restarts_seq([7, 8, 9, 10, 10]))  # first read: a baseline, not restarts
    levels = [[e.level for e in rule_events(ev, "restart-loop")] for ev, _ in out]
    assert levels == [[], ["warn"], ["warn"], ["warn", "critical"], []]
    assert [[x.action for x in d] for _, d in out] == [[], [], [], ["recreate"], ["recreate"]]
    loop = rule_events(out[3][0], "restart-loop")[1]
    assert (loop.service, loop.value, loop.threshold) == ("embeddings", 3, 3)


def test_restarts_spread_wider_than_the_window_are_no_loop() -> None:
    r = rules()
    out = run(r, restarts_seq([0, 1, 2, 3], step=301.0))  # 3 restarts over 903 s > 600 s
    assert all(
        [e.level for e in rule_events(ev, "restart-loop")] in (["warn"], []) for ev, _ in out
    )
    assert all(d == [] for _, d in out)


def test_restart_loop_resolves_when_the_window_passes() -> None:
    r = rules()
    out = run(
        r,
        [
            *restarts_seq([0, 3, 3]),
            snap(T0 + 60 + 600, containers=(container("embeddings", restart_count=3),)),
        ],
    )
    assert [e.level for e in rule_events(out[-1][0], "restart-loop")] == ["info"]
    assert out[-1][1] == []


def test_oom_kill_alerts_once_and_recreates_a_stopped_container() -> None:
    oom = container("llm", state="exited", oom_killed=True, exit_code=137)
    r = rules()
    out = run(r, [snap(T0 + i * STEP, containers=(oom,)) for i in range(2)])
    assert [[(e.level, e.value) for e in rule_events(ev, "oom")] for ev, _ in out] == [
        [("critical", 137)],
        [],
    ]
    assert out[0][1] == [Decision("recreate", out[0][1][0].reason, service="llm")]


def test_oom_kill_while_the_engine_restarts_it_is_an_event_only() -> None:
    oom = container("llm", state="restarting", oom_killed=True, exit_code=137)
    ((ev, d),) = run(rules(), [snap(T0, containers=(oom,))])
    assert len(rule_events(ev, "oom")) == 1 and d == []


def test_model_off_its_gpu_alerts_then_resolves() -> None:
    fractions = [1.0, 0.62, 0.62, 1.0, 1.0]
    r = rules()
    out = run(
        r,
        [
            snap(T0 + i * STEP, residency=(ResidencySignal("ollama", "llama3.2:3b", f),))
            for i, f in enumerate(fractions)
        ],
    )
    per_read = [[(e.level, e.value) for e in rule_events(ev, "model-off-gpu")] for ev, _ in out]
    assert per_read == [[], [("warn", 0.62)], [], [], [("info", 1.0)]]
    assert all(d == [] for _, d in out)


NVML_LOST = "Failed to initialize NVML: Unknown Error"


def access_snap(t: float, ok: bool | None, cid: str = "embeddings-c1") -> Snapshot:
    return snap(
        t,
        containers=(container("embeddings", cid),),
        gpu_access=(GpuAccessSignal("embeddings", cid, ok, "" if ok else NVML_LOST),),
    )


def test_gpu_access_failing_three_times_recreates() -> None:
    r = rules()
    oks = [True, False, False, None, False, False]
    out = run(r, [access_snap(T0 + i * STEP, ok) for i, ok in enumerate(oks)])
    actions = [[(x.action, x.service) for x in d] for _, d in out]
    assert actions == [[], [], [], [], [("recreate", "embeddings")], [("recreate", "embeddings")]]
    alert = rule_events(out[4][0], "gpu-access")
    assert [(e.level, e.value) for e in alert] == [("critical", NVML_LOST)]


def test_lost_gpu_access_on_a_failing_gpu_is_left_to_gpu_failed() -> None:
    r = rules()
    s = snap(
        T0,
        gpus=gpus(g0={"health": "lost"}),
        containers=(container("whisper"),),
        gpu_access=(GpuAccessSignal("whisper", "whisper-c1", False, NVML_LOST),),
    )
    out = run(r, [replace(s, time=T0 + i * STEP) for i in range(4)])
    assert all([x.action for x in d] == ["gpu-failed"] for _, d in out)


# --- heal policy: rate limit, breaker, hold-down, priority ------------------------------------


def heal_loop(
    r: Rules, times: Iterable[float], ok: bool
) -> dict[float, tuple[list[Event], list[Decision]]]:
    """GPU access of embeddings fails at every read; each decision is 'healed' with `ok`
    (a successful recreate brings a new container, which fails again)."""
    out = {}
    generation = 1
    for t in times:
        ev, d = r.evaluate(access_snap(t, False, f"embeddings-c{generation}"))
        out[t] = (ev, d)
        for x in d:
            r.record(x, ok, t)
            if ok:
                generation += 1
    return out


def test_rate_limit_then_allowed_again_after_the_window() -> None:
    r = rules()  # heal_max 3 per 900 s, unhealthy_after 3
    out = heal_loop(r, [T0 + i * 10.0 for i in range(100)], ok=True)  # 0 .. 990 s
    healed = [t - T0 for t, (_, d) in out.items() if d]
    limited = [t - T0 for t, (ev, _) in out.items() if rule_events(ev, "rate-limit")]
    # three bad reads per container: recreated at 20, 50, 80 s; the 4th would be at 110 s;
    # held back (one event) until the first heal leaves the 900 s window at 920 s
    assert healed == [20.0, 50.0, 80.0, 920.0, 950.0, 980.0]
    assert limited == [110.0]


def test_circuit_breaker_after_five_failed_heals() -> None:
    r = rules()
    out = heal_loop(r, [T0 + i * 10.0 for i in range(200)], ok=False)
    healed = [t - T0 for t, (_, d) in out.items() if d]
    # failed heals leave the condition standing: retried each interval up to the rate limit,
    # then after the window, until five have failed in a row
    assert healed == [20.0, 30.0, 40.0, 920.0, 930.0]
    broke = [
        (t - T0, e.level) for t, (ev, _) in out.items() for e in rule_events(ev, "circuit-breaker")
    ]
    assert broke == [(940.0, "critical")]


def test_a_success_resets_the_breaker_count() -> None:
    r = rules()
    d = Decision("recreate", "lost GPU access", "embeddings")
    for i in range(4):
        r.record(d, False, T0 + i)
    r.record(d, True, T0 + 4)
    for i in range(4):
        r.record(d, False, T0 + 5 + i)
    ev, _ = r.evaluate(snap(T0 + 10))
    assert rule_events(ev, "circuit-breaker") == []


def test_a_rate_limited_service_does_not_hold_back_another() -> None:
    r = rules()
    d = Decision("recreate", "unhealthy", "ocr")
    for i in range(3):
        r.record(d, True, T0 + i)
    bad = (
        container("ocr", health="unhealthy"),
        container("embeddings", health="unhealthy"),
    )
    out = run(r, [snap(T0 + 10 + i * STEP, containers=bad) for i in range(3)])
    assert [[x.service for x in d] for _, d in out] == [[], [], ["embeddings"]]
    assert [e.service for e in rule_events(out[2][0], "rate-limit")] == ["ocr"]


FAILED_OVER = replace(STACK, mode="gpu-failover", planned={**PLANNED, "whisper": (5,)}, failed=(0,))


def test_restore_only_after_the_hold_down() -> None:
    r = rules()  # restore_after_s 300
    out = {t: r.evaluate(snap(T0 + t, stack=FAILED_OVER)) for t in (0, 100, 200, 299)}
    assert all(d == [] for _, d in out.values())
    assert [e.message for e in rule_events(out[0][0], "restore")] == [
        "GPUs 0, 1, 2, 3, 4 well: restore after 300s more of this (hold-down)"
    ]
    _, d = r.evaluate(snap(T0 + 300, stack=FAILED_OVER))
    assert [x.action for x in d] == ["restore"]


def test_a_relapse_in_hold_down_restarts_the_clock() -> None:
    r = rules()
    lost = gpus(g0={"health": "lost"})
    seq = [
        (0, gpus()),
        (100, gpus()),
        (150, lost),
        (200, gpus()),
        (250, gpus()),
        (500, gpus()),
        (550, gpus()),
    ]
    out = {t: r.evaluate(snap(T0 + t, stack=FAILED_OVER, gpus=g)) for t, g in seq}
    restores = [t for t, (_, d) in out.items() if [x.action for x in d] == ["restore"]]
    # well again from 250 s (two good reads after the relapse): restore 300 s later
    assert restores == [550]
    assert [e.value for e in rule_events(out[150][0], "restore")] == [150.0]


def test_restore_from_cpu_fallback_needs_every_original_gpu() -> None:
    on_cpu = replace(STACK, mode="cpu-fallback", failed=(0, 1, 2, 3, 4, 5, 6, 7))
    r = rules()
    gone = gpus(g3={"health": "lost"})
    out = [r.evaluate(snap(T0 + t, stack=on_cpu, gpus=gone)) for t in (0, 400, 800)]
    assert all(d == [] for _, d in out)
    out = [r.evaluate(snap(T0 + t, stack=on_cpu)) for t in (900, 905, 1205)]
    assert [[x.action for x in d] for _, d in out] == [[], [], ["restore"]]


def test_a_successful_restore_needs_a_new_hold_down() -> None:
    r = rules()
    _, d = r.evaluate(snap(T0, stack=FAILED_OVER))
    _, d = r.evaluate(snap(T0 + 300, stack=FAILED_OVER))
    r.record(d[0], True, T0 + 300)
    _, d = r.evaluate(snap(T0 + 305, stack=FAILED_OVER))  # the loop has not re-read the state
    assert d == []


def test_priority_cpu_over_everything() -> None:
    lost = {f"g{i}": {"health": "lost"} for i in range(8)}
    s = snap(T0, gpus=gpus(**lost), containers=(container("ocr", state="exited", oom_killed=True),))
    ((_, d),) = run(rules(), [s])
    assert [x.action for x in d] == ["cpu"]


def test_priority_gpu_failed_then_recreate_then_restore() -> None:
    r = rules()
    oom = (container("ocr", state="exited", oom_killed=True, exit_code=137),)
    # GPU 2 (the LLM) fails while ocr was OOM-killed: one action at a time, gpu-failed first
    ((_, d),) = run(r, [snap(T0, gpus=gpus(g2={"xids": (79,)}), containers=oom)])
    assert [(x.action, x.gpus) for x in d] == [("gpu-failed", (2,))]
    moved = replace(STACK, mode="gpu-failover", planned={**PLANNED, "llm": (5, 6)}, failed=(2,))
    ((_, d),) = run(
        r, [snap(T0 + STEP, stack=moved, gpus=gpus(g2={"health": "lost"}), containers=oom)]
    )
    assert [(x.action, x.service) for x in d] == [("recreate", "ocr")]
    # GPU 2 back, hold-down served, ocr still down: recreate before restore
    r2 = rules()
    run(r2, [snap(T0, stack=moved)])
    ((_, d),) = run(r2, [snap(T0 + 300, stack=moved, containers=oom)])
    assert [x.action for x in d] == ["recreate"]
    ((_, d),) = run(r2, [snap(T0 + 305, stack=moved)])
    assert [x.action for x in d] == ["restore"]


def test_one_decision_per_interval_by_service_name() -> None:
    down = tuple(
        container(s, state="exited", oom_killed=True, exit_code=137) for s in ("ocr", "llm")
    )
    ((_, d),) = run(rules(), [snap(T0, containers=down)])
    assert [(x.action, x.service) for x in d] == [("recreate", "llm")]


def test_a_new_container_starts_its_alerts_over() -> None:
    r = rules()
    bad = [
        snap(T0 + i * STEP, containers=(container("ocr", health="unhealthy"),)) for i in range(3)
    ]
    out = run(r, bad)
    assert out[-1][1] != []
    # recreated by someone else: the new container has to fail three times itself
    new = [
        snap(T0 + (3 + i) * STEP, containers=(container("ocr", "ocr-c2", health="unhealthy"),))
        for i in range(3)
    ]
    out = run(r, new)
    assert [[x.action for x in d] for _, d in out] == [[], [], ["recreate"]]
    assert [(e.level, e.message) for e in rule_events(out[0][0], "health")] == [
        ("info", "ocr has a new container (resolved)")
    ]


def test_a_successful_recreate_resolves_the_alert_and_needs_new_evidence() -> None:
    r = rules()
    out = run(r, [access_snap(T0 + i * STEP, False) for i in range(3)])
    (decision,) = out[-1][1]
    r.record(decision, True, T0 + 2 * STEP)
    out = run(r, [access_snap(T0 + (3 + i) * STEP, False, "embeddings-c2") for i in range(3)])
    assert [(e.level, e.message) for e in rule_events(out[0][0], "gpu-access")] == [
        ("info", "embeddings recreated (resolved)")
    ]
    assert [[x.action for x in d] for _, d in out] == [[], [], ["recreate"]]


def test_a_replaced_container_resolves_its_restart_loop() -> None:
    r = rules()
    run(r, restarts_seq([0, 3]))
    fresh = snap(T0 + 60, containers=(container("embeddings", "embeddings-c2"),))
    ((ev, d),) = run(r, [fresh])
    assert [(e.level, e.service) for e in rule_events(ev, "restart-loop")] == [
        ("info", "embeddings")
    ]
    assert d == []
