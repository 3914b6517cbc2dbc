"""watch/loop.py: the Watcher with stand-in probes (scripted signals), stand-in rules (scripted
decisions), a recording healer and recording sinks, on a stack rendered into tmp_path. The real
parts (probes, rules, outputs) are tested in their own files; this one tests how the loop ties
them: what reaches whom, in which order, and what happens when the engine goes away."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from composegen import app
from composegen.engine import failover
from composegen.engine.docker import NoEngineError
from composegen.engine.state import write_mode
from composegen.watch import loop
from composegen.watch.loop import EVENT_LOG, Parts, Watcher, WatchOptions, stack_info
from composegen.watch.types import (
    ContainerSignal,
    Decision,
    Event,
    GpuAccessSignal,
    GpuSignal,
    ProbeError,
    Signal,
    Snapshot,
)
from tests.stack_checks import inventory_file

NOW = 1_764_400_000.0
PROJECT = "cg-unit-watch"


def rendered(tmp: Path, profile: str = "rag-a100", scenario: str = "a100_8x80") -> Path:
    out = tmp / "stack"
    built = app.build(profile, inventory=inventory_file(tmp, scenario))
    app.write(out, built.files, force=False, dry_run=False)
    assert built.inputs is not None
    app.save_inputs(out, built.inputs)
    return out


class ScriptedProbe:
    """Returns the next scripted list of signals at each read; `raises` makes read raise."""

    def __init__(self, name: str, script: list[list[Signal]], raises: bool = False) -> None:
        self.name = name
        self.script = script
        self.raises = raises
        self.reads = 0
        self.closed = False

    def read(self, now: float) -> Sequence[Signal]:
        self.reads += 1
        if self.raises:
            raise RuntimeError("probe bug")
        return self.script[min(self.reads, len(self.script)) - 1] if self.script else []

    def close(self) -> None:
        self.closed = True


class ScriptedRules:
    def __init__(self, script: list[tuple[list[Event], list[Decision]]]) -> None:
        self.script = script
        self.seen: list[Snapshot] = []
        self.recorded: list[tuple[Decision, bool, float]] = []

    def evaluate(self, snap: Snapshot) -> tuple[list[Event], list[Decision]]:
        self.seen.append(snap)
        n = min(len(self.seen), len(self.script)) - 1
        return self.script[n] if self.script else ([], [])

    def record(self, decision: Decision, ok: bool, now: float) -> None:
        self.recorded.append((decision, ok, now))


class RecordingHealer:
    def __init__(self, ok: bool = True, busy: bool = False) -> None:
        self.ok, self.busy = ok, busy
        self.applied: list[Decision] = []

    def apply(self, decision: Decision, now: float) -> tuple[bool, list[Event]]:
        self.applied.append(decision)
        if self.busy:
            return False, [Event(now, "info", "heal", "busy", value="busy")]
        return self.ok, [
            Event(now, "info", "heal", f"did {decision.action}", value=decision.action)
        ]


class RecordingSink:
    def __init__(self) -> None:
        self.got: list[tuple[Snapshot, list[Event]]] = []
        self.closed = False

    def handle(self, snap: Snapshot, events: Sequence[Event]) -> None:
        self.got.append((snap, list(events)))

    def close(self) -> None:
        self.closed = True


GPU0 = GpuSignal(0, "GPU-0", "NVIDIA A100-SXM4-80GB", memory_total_mib=81920, memory_used_mib=70)
WHISPER = ContainerSignal("whisper", "c1", "running", "healthy", 0, False, None)
HOT = Event(NOW, "warn", "temperature", "GPU 0 at 84 C", gpu=0, value=84, threshold=83)


def watcher(
    out: Path,
    probes: list[ScriptedProbe],
    rules: ScriptedRules,
    healer: RecordingHealer | None = None,
    heal: bool = False,
    connect: Any = lambda: object(),
    said: list[str] | None = None,
    **opts: Any,
) -> tuple[Watcher, RecordingSink]:
    sink = RecordingSink()
    parts = Parts(
        probes=lambda client: [p for p in probes if client is not None or p.name == "gpus"],
        rules=rules,
        healer=healer,
        sinks=[sink],
        connect=connect,
    )
    options = WatchOptions(interval_s=1.0, heal=heal, **opts)
    io = failover.Io((said if said is not None else []).append)
    return Watcher(out, PROJECT, options, io, parts), sink


def test_a_step_reads_every_probe_judges_and_hands_on_the_snapshot(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    gpus = ScriptedProbe("gpus", [[GPU0]])
    containers = ScriptedProbe("containers", [[WHISPER]])
    rules = ScriptedRules([([HOT], [])])
    w, sink = watcher(out, [gpus, containers], rules)
    snap, events = w.step(NOW)
    assert snap.gpus == (GPU0,) and snap.containers == (WHISPER,)
    assert snap.stack.name == PROJECT and snap.stack.planned["whisper"] == (0,)
    assert rules.seen == [snap]
    assert events == [HOT]
    assert sink.got == [(snap, [HOT])]


def test_probes_are_read_in_parallel(tmp_path: Path) -> None:
    """Two probes that each wait for the other: read one after the other, both would fail."""
    out = rendered(tmp_path)
    meet = threading.Barrier(2, timeout=10)

    class Waiting(ScriptedProbe):
        def read(self, now: float) -> Sequence[Signal]:
            meet.wait()
            return super().read(now)

    a, b = Waiting("gpus", [[GPU0]]), Waiting("containers", [[WHISPER]])
    w, _ = watcher(out, [a, b], ScriptedRules([]))
    snap, _ = w.step(NOW)
    assert snap.errors == ()
    assert snap.gpus == (GPU0,) and snap.containers == (WHISPER,)


def test_a_probe_that_raises_is_a_probe_error_not_a_crash(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    w, _ = watcher(out, [ScriptedProbe("residency", [], raises=True)], ScriptedRules([]))
    snap, _ = w.step(NOW)
    assert snap.errors == (ProbeError("residency", "RuntimeError: probe bug"),)


def test_without_heal_a_standing_decision_is_said_once_and_nothing_runs(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    decision = Decision("gpu-failed", "GPU 0 lost", gpus=(0,))
    rules = ScriptedRules([([], [decision])])
    healer = RecordingHealer()
    w, _ = watcher(out, [], rules, healer=healer, heal=False)
    said = [w.step(NOW + i)[1] for i in range(3)]
    assert [len(e) for e in said] == [1, 0, 0]
    first = said[0][0]
    assert first.rule == "heal" and first.level == "info" and first.gpu == 0
    assert first.message.startswith("would fail over GPU 0") and "run with --heal" in first.message
    assert healer.applied == [] and rules.recorded == []


def test_with_heal_the_decision_is_applied_and_recorded(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    decision = Decision("recreate", "nvidia-smi -L failed", service="whisper")
    other = Decision("restore", "later")
    rules = ScriptedRules([([HOT], [decision, other])])
    healer = RecordingHealer(ok=False)
    w, sink = watcher(out, [], rules, healer=healer, heal=True)
    _, events = w.step(NOW)
    assert healer.applied == [decision]  # one action at a time
    assert rules.recorded == [(decision, False, NOW)]
    assert [e.rule for e in events] == ["temperature", "heal"]
    assert sink.got[0][1] == events


def test_a_busy_heal_is_not_recorded_as_a_failed_one(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    rules = ScriptedRules([([], [Decision("cpu", "no GPU left")])])
    w, _ = watcher(out, [], rules, healer=RecordingHealer(busy=True), heal=True)
    w.step(NOW)
    assert rules.recorded == []


def test_engine_down_is_an_event_and_a_retry(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    up = {"now": False}

    def connect() -> object:
        if not up["now"]:
            raise NoEngineError("no Docker engine: connection refused")
        return object()

    gpus = ScriptedProbe("gpus", [[GPU0]])
    containers = ScriptedProbe("containers", [[WHISPER]])
    w, _ = watcher(out, [gpus, containers], ScriptedRules([]), connect=connect)
    snap1, _ = w.step(NOW)
    snap2, _ = w.step(NOW + 1)
    up["now"] = True
    snap3, _ = w.step(NOW + 2)
    # the rules see the engine's absence as the containers probe's failure, each interval
    down = ProbeError("containers", "no Docker engine: connection refused")
    assert snap1.errors == (down,) and snap2.errors == (down,)
    assert snap1.gpus == (GPU0,) and snap1.containers == ()  # the engine-free probe still reads
    assert snap3.containers == (WHISPER,) and snap3.errors == ()
    assert snap3.gpus == (GPU0,)


def test_the_probe_pool_grows_when_the_engine_comes_back(tmp_path: Path) -> None:
    """Engine down at the first interval: one probe, one worker. With the engine back, the
    two probes that wait for each other need a worker each."""
    out = rendered(tmp_path)
    up = {"now": False}

    def connect() -> object:
        if not up["now"]:
            raise NoEngineError("no Docker engine: connection refused")
        return object()

    meet = threading.Barrier(2, timeout=2)

    class Waiting(ScriptedProbe):
        def read(self, now: float) -> Sequence[Signal]:
            if up["now"]:
                meet.wait()
            return super().read(now)

    a, b = Waiting("gpus", [[GPU0], [GPU0]]), Waiting("containers", [[WHISPER]])
    w, _ = watcher(out, [a, b], ScriptedRules([]), connect=connect)
    w.step(NOW)
    up["now"] = True
    snap, _ = w.step(NOW + 1)
    assert snap.errors == ()
    assert snap.gpus == (GPU0,) and snap.containers == (WHISPER,)
    w.close()


def test_a_probe_still_reading_is_not_read_again_beside_itself(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    release = threading.Event()
    running: list[int] = []
    most = {"n": 0}
    lock = threading.Lock()

    class Hung(ScriptedProbe):
        def read(self, now: float) -> Sequence[Signal]:
            with lock:
                running.append(1)
                most["n"] = max(most["n"], len(running))
            try:
                release.wait(10)
                return super().read(now)
            finally:
                with lock:
                    running.pop()

    hung = Hung("containers", [[WHISPER]] * 3)
    w, _ = watcher(out, [hung], ScriptedRules([]))
    w.read_timeout_s = 0.1
    snap1, _ = w.step(NOW)
    assert [e.probe for e in snap1.errors] == ["containers"]  # timed out
    snap2, _ = w.step(NOW + 1)
    assert snap2.errors == (
        ProbeError("containers", "still reading (the last read has not returned)"),
    )
    assert snap2.containers == ()  # its signals are missing this interval
    release.set()
    w.read_timeout_s = 10
    for _ in range(100):  # the first read returns
        if not running:
            break
        threading.Event().wait(0.02)
    snap3, _ = w.step(NOW + 2)
    assert snap3.errors == () and snap3.containers == (WHISPER,)
    assert most["n"] == 1  # never two reads at once
    w.close()


def test_watch_p_name_is_normalised_as_every_command_does(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    w, _ = watcher(out, [], ScriptedRules([]))
    assert loop.project_name(out, "CG.Unit-Watch") == "cgunit-watch"
    w2 = Watcher(out, "CG.Unit-Watch", WatchOptions(), failover.Io(print), w.parts)
    assert w2.project == "cgunit-watch" and w2.stack.project == "cgunit-watch"


def test_stack_info_follows_render_json_and_the_mode(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    info = stack_info(out, PROJECT)
    inv = app.load_inputs(out).inventory
    assert info.mode == "gpu" and info.failed == ()
    assert info.planned["whisper"] == (0,) and info.planned["llm"] == (2, 3)
    assert info.original_gpus == (0, 1, 2, 3, 4)
    assert info.uuids[5] == inv.gpus[5].uuid
    assert info.routes["whisper"] == "whisper"
    # after `fallback --gpu-failed 0`
    inputs = app.load_inputs(out)
    app.save_inputs(out, replace(inputs, failed=((0,),)))
    write_mode(out, PROJECT, "gpu-failover", "GPUs 0 failed")
    moved = stack_info(out, PROJECT)
    assert moved.mode == "gpu-failover" and moved.failed == (0,)
    assert moved.planned["whisper"] == (5,)
    assert moved.original_gpus == (0, 1, 2, 3, 4)


def test_stack_info_is_rebuilt_only_when_its_files_change(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    w, _ = watcher(out, [], ScriptedRules([]))
    for i in range(3):
        w.step(NOW + i)
    assert w.stack.rebuilds == 1
    write_mode(out, PROJECT, "cpu-fallback", "composegen fallback --cpu")
    snap, _ = w.step(NOW + 3)
    assert w.stack.rebuilds == 2 and snap.stack.mode == "cpu-fallback"


class FakeClock:
    """monotonic() and a stop event whose wait() advances the clock instead of sleeping."""

    def __init__(self) -> None:
        self.t = 100.0
        self.waits: list[float] = []
        self.stop = threading.Event()
        self.limit = 4

    def monotonic(self) -> float:
        return self.t

    def wait(self, delay: float) -> bool:
        self.waits.append(round(delay, 6))
        self.t += delay
        if len(self.waits) >= self.limit:
            self.stop.set()
        return self.stop.is_set()


def test_run_keeps_a_steady_cadence_and_closes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = rendered(tmp_path)
    clock = FakeClock()
    monkeypatch.setattr(loop.time, "monotonic", clock.monotonic)
    work = iter([0.25, 0.5, 1.75, 0.1, 0.1])

    class Slow(ScriptedProbe):
        def read(self, now: float) -> Sequence[Signal]:
            clock.t += next(work)  # the work this step takes
            return super().read(now)

    probe = Slow("gpus", [[GPU0]])
    w, sink = watcher(out, [probe], ScriptedRules([]))

    class Stop:
        def is_set(self) -> bool:
            return clock.stop.is_set()

        def wait(self, delay: float) -> bool:
            return clock.wait(delay)

    w.run(Stop())  # type: ignore[arg-type]
    # interval 1 s: the rest of it after each step; a step longer than the interval starts
    # the next one at once, and the cadence restarts from there (no burst to catch up)
    assert clock.waits == [0.75, 0.5, 0.0, 0.9]
    assert probe.reads == 4
    assert probe.closed and sink.closed


def test_run_once_is_one_step(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    probe = ScriptedProbe("gpus", [[GPU0]])
    w, sink = watcher(out, [probe], ScriptedRules([]), once=True)
    w.run(threading.Event())
    assert probe.reads == 1 and len(sink.got) == 1 and sink.closed and probe.closed


# --- the command line: bad input is one line, exit 2, nothing started ---------------------------


def test_watch_outside_a_rendered_stack_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.unit.test_cli_detect import call

    code, out, err = call(["watch", "-C", str(tmp_path), "--once"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"composegen: error: {tmp_path}: no .composegen/render.json")


def test_watch_print_needs_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.test_cli_detect import call

    code, _, err = call(["watch", "-C", str(rendered(tmp_path)), "--print"], capsys)
    assert code == 2 and err == (
        "composegen: error: --print goes with --install "
        "(run `composegen watch --install --print`)\n"
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--interval", "soon"], "--interval"),
        (["--restore-after", "5 parsecs"], "--restore-after"),
        (["--metrics", "127.0.0.1:99999"], "--metrics"),
        (["--inventory", "/nonexistent/inv.json"], "--inventory /nonexistent/inv.json"),
        (["--set", "watch.memory_warn_pct=lots"], "watch.memory_warn_pct"),
    ],
)
def test_watch_bad_option_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], names: str
) -> None:
    from tests.unit.test_cli_detect import call

    out = rendered(tmp_path)
    before = sorted(p.name for p in (out / ".composegen").iterdir())
    code, stdout, err = call(["watch", "-C", str(out), "-p", PROJECT, "--once", *args], capsys)
    assert code == 2, (stdout, err)
    assert err.count("\n") == 1 and err.startswith("composegen: error: ") and names in err
    assert sorted(p.name for p in (out / ".composegen").iterdir()) == before


def test_thresholds_take_the_sets_and_restore_after(tmp_path: Path) -> None:
    from composegen.watch.parts import thresholds

    out = rendered(tmp_path)
    th = thresholds(out, WatchOptions(restore_after_s=3.0, sets=("watch.heal_max=2",)))
    assert th.restore_after_s == 3.0 and th.heal_max == 2
    assert th.memory_warn_pct == 85.0  # the seed's default stays


def test_once_prints_every_event_once_then_the_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from composegen.watch.parts import StatsSink, TerminalSink

    out = rendered(tmp_path)
    snap = Snapshot.of(NOW, stack_info(out, PROJECT), [GPU0, WHISPER])
    events = [
        Event(NOW, "warn", "memory", f"GPU {i} memory at 8{i} %", gpu=i, value=80 + i)
        for i in range(7)
    ]
    sink = TerminalSink(WatchOptions(once=True), StatsSink())
    sink.handle(snap, events)
    printed = capsys.readouterr().out
    for e in events:
        assert printed.count(e.message) == 1, (e.message, printed)
    assert printed.index("GPU 1 memory") < printed.index("whisper") < printed.index("GPU 6 memory")


def test_install_print_shows_the_unit_running_this_watch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.test_cli_detect import call

    out = rendered(tmp_path)
    (tmp_path / "inv.json").write_text(Path(inventory_file(tmp_path, "a100_8x80")).read_text())
    monkeypatch.chdir(tmp_path)
    bindir = Path(sys.executable).parent  # (where the composegen command is installed)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    args = ["watch", "-C", str(out), "-p", PROJECT, "--install", "--print", "--heal"]
    args += ["--interval", "2s", "--inventory", "inv.json", "--set", "watch.heal_max=2"]
    code, printed, err = call(args, capsys)
    assert code == 0, err
    line = next(x for x in printed.splitlines() if x.startswith("ExecStart="))
    words = line.split()
    assert words[1:7] == ["watch", "-C", str(out.resolve()), "-p", PROJECT, "--interval"]
    assert words.count("watch") == 1
    assert "--install" not in words and "--print" not in words
    assert words[words.index("--inventory") + 1] == str(tmp_path.resolve() / "inv.json")
    assert "--heal" in words and "watch.heal_max=2" in words


# --- pacing: the probes that exec into every container --------------------------------------------


def access(n: int, bad: int | None = None) -> list[Signal]:
    return [
        GpuAccessSignal(f"ollama-{i}", f"c{i}", i != bad, "" if i != bad else "Failed to init")
        for i in range(n)
    ]


def test_exec_probes_on_a_large_stack_are_paced_and_the_rules_see_only_real_reads(
    tmp_path: Path,
) -> None:
    """23 containers at 5 s: 23 execs x 7 ms within 0.5 % of a core is a read every 7th
    interval (23 * 0.007 / 0.025 = 6.44, rounded up). Between reads the rules get no
    gpu-access signal (a check must not count three times), the outputs the last ones."""
    out = rendered(tmp_path)
    probe = ScriptedProbe("gpu-access", [access(23)])
    rules = ScriptedRules([])
    w, sink = watcher(out, [probe], rules)
    w.options = replace(w.options, interval_s=5.0)
    for i in range(9):
        w.step(NOW + 5 * i)
    assert probe.reads == 2  # intervals 1 and 8
    judged = [len(s.gpu_access) for s in rules.seen]
    assert judged == [23, 0, 0, 0, 0, 0, 0, 23, 0]
    assert [len(s.gpu_access) for s, _ in sink.got] == [23] * 9


def test_a_paced_probe_that_saw_a_failure_is_read_again_at_the_next_interval(
    tmp_path: Path,
) -> None:
    out = rendered(tmp_path)
    probe = ScriptedProbe("gpu-access", [access(23, bad=4)] * 3 + [access(23)])
    rules = ScriptedRules([])
    w, _ = watcher(out, [probe], rules)
    w.options = replace(w.options, interval_s=5.0)
    for i in range(5):
        w.step(NOW + 5 * i)
    assert probe.reads == 4  # three failing reads in a row, then a good one: paced again
    assert [len(s.gpu_access) for s in rules.seen] == [23, 23, 23, 23, 0]


def test_a_small_stack_is_checked_every_interval(tmp_path: Path) -> None:
    """rag-a100's 4 GPU containers at 5 s: 4 * 0.007 / 0.025 = 1.12, a read every 2nd
    interval; at a 30 s interval, every one."""
    out = rendered(tmp_path)
    probe = ScriptedProbe("gpu-access", [access(4)])
    w, _ = watcher(out, [probe], ScriptedRules([]))
    w.options = replace(w.options, interval_s=30.0)
    for i in range(3):
        w.step(NOW + 30 * i)
    assert probe.reads == 3


def test_residency_is_paced_by_the_containers_it_execs_into_not_by_what_it_found(
    tmp_path: Path,
) -> None:
    """No model loaded anywhere (no residency signal), but 23 running containers to ask: after
    the containers probe's first read, a read every 7th interval at 5 s."""
    out = rendered(tmp_path)
    running = [
        ContainerSignal(f"ollama-{i}", f"c{i}", "running", "healthy", 0, False, None)
        for i in range(23)
    ]
    residency = ScriptedProbe("residency", [[]])
    w, _ = watcher(out, [ScriptedProbe("containers", [running]), residency], ScriptedRules([]))
    w.options = replace(w.options, interval_s=5.0)
    for i in range(9):
        w.step(NOW + 5 * i)
    assert residency.reads == 3  # intervals 1 and 2 (nothing known yet at 1), then 9


def lost_inventory(tmp_path: Path, lost: tuple[int, ...]) -> str:
    data = json.loads(Path(inventory_file(tmp_path, "a100_8x80")).read_text())
    for g in data["gpus"]:
        if g["index"] in lost:
            g["health"], g["health_reason"] = "lost", "GPU is lost"
    path = tmp_path / f"inv-lost-{len(lost)}.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(("lost", "code"), [((), 0), ((0,), 1)])
def test_once_exits_1_when_a_critical_condition_holds(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    lost: tuple[int, ...],
    code: int,
) -> None:
    """No engine here: the GPUs alone, from the file. GPU 0 lost is critical (exit 1); all
    healthy is not (the engine's absence is a warning)."""
    from tests.unit.test_cli_detect import call

    def no_engine(timeout_s: float = 30.0) -> object:
        raise NoEngineError("no Docker engine: connection refused")

    monkeypatch.setattr("composegen.engine.docker.connect", no_engine)
    out = rendered(tmp_path)
    inv = lost_inventory(tmp_path, lost)
    got, printed, err = call(
        ["watch", "-C", str(out), "-p", PROJECT, "--once", "--json", "--inventory", inv], capsys
    )
    assert got == code, (printed, err)
    lines = [json.loads(x) for x in printed.splitlines()]
    assert lines[-1]["type"] == "snapshot"
    rules = {x["rule"] for x in lines if x.get("type") == "event"}
    assert ("gpu-lost" in rules) == bool(lost)
    assert "probe" in rules  # the engine's absence, said
    assert (out / EVENT_LOG).is_file()


def test_the_engine_going_away_mid_run_with_the_real_probes_and_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real probes on the fake engine (tests/fake_docker.py), the real rules: the engine
    stops answering between two steps -> a `probe` warning, no crash; back -> resolved."""
    from composegen.engine import up as engine_up
    from composegen.engine.compose import load_project
    from composegen.watch.parts import default_parts
    from tests.fake_docker import FakeDocker

    fake = FakeDocker()
    monkeypatch.setattr("composegen.engine.docker.connect", lambda timeout_s=30.0: fake)
    monkeypatch.setattr(engine_up, "probe_gateway", lambda project, deadline: None)
    out = rendered(tmp_path)
    engine_up.up(fake, load_project(out / "docker-compose.yml", PROJECT))
    inv = inventory_file(tmp_path, "a100_8x80")
    options = WatchOptions(interval_s=1.0, inventory=inv)
    io = failover.Io(lambda line: None)
    parts = default_parts(out, PROJECT, options, io)
    parts.sinks = []
    w = Watcher(out, PROJECT, options, io, parts)
    try:
        snap1, _ = w.step(NOW)
        fake.online = False
        snap2, ev2 = w.step(NOW + 1)
        fake.online = True
        snap3, ev3 = w.step(NOW + 2)
    finally:
        w.close()
    assert {c.service for c in snap1.containers} >= {"whisper", "gateway"}
    assert snap1.gpus is not None and len(snap1.gpus) == 8
    assert any(e.probe == "containers" for e in snap2.errors)
    assert [e.value for e in ev2 if e.rule == "probe" and e.level == "warn"][:1] == ["containers"]
    assert snap2.gpus == snap1.gpus  # the file still reads
    assert not any(e.probe == "containers" for e in snap3.errors)
    assert any(e.rule == "probe" and "answers again" in e.message for e in ev3)


def test_run_hands_its_stop_event_to_the_healer(tmp_path: Path) -> None:
    # a heal waiting for its new container must see the SIGTERM that stops the watcher
    out = rendered(tmp_path)
    healer = RecordingHealer()
    healer.cancel = threading.Event()  # type: ignore[attr-defined]
    w, _ = watcher(out, [ScriptedProbe("gpus", [[GPU0]])], ScriptedRules([]), healer, once=True)
    stop = threading.Event()
    w.run(stop)
    assert healer.cancel is stop  # type: ignore[attr-defined]


def test_the_cli_healer_records_its_own_cpu_moves_with_the_rules(tmp_path: Path) -> None:
    from composegen.watch.parts import default_parts

    out = rendered(tmp_path)
    options = WatchOptions(interval_s=1.0, heal=True)
    parts = default_parts(out, PROJECT, options, failover.Io([].append))
    try:
        assert parts.healer is not None
        assert parts.healer.record == parts.rules.record  # type: ignore[attr-defined]
    finally:
        for sink in parts.sinks:
            sink.close()
