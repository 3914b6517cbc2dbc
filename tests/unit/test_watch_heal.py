"""watch/heal.py: one Decision carried out on a fake engine (tests/fake_docker.py) under the real
orchestration (engine/failover.py, engine/switch.py, the real compose loader and `up`). Only the
final HTTP probe of the gateway is stubbed, as in test_failover.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from composegen import app
from composegen.engine import docker as eng
from composegen.engine import failover
from composegen.engine import up as engine_up
from composegen.engine.compose import Project, load_project
from composegen.engine.state import project_lock, read_mode
from composegen.watch.heal import Healer, is_busy
from composegen.watch.types import Decision
from tests.fake_docker import FakeDocker
from tests.stack_checks import inventory_file

NOW = 1_764_400_000.0


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    client = FakeDocker()
    monkeypatch.setattr("composegen.engine.docker.connect", lambda timeout_s=30.0: client)
    monkeypatch.setattr(engine_up, "probe_gateway", lambda project, deadline: None)
    return client


def rendered(tmp: Path, profile: str = "rag-a100", scenario: str = "a100_8x80") -> Path:
    out = tmp / "stack"
    built = app.build(profile, inventory=inventory_file(tmp, scenario))
    app.write(out, built.files, force=False, dry_run=False)
    assert built.inputs is not None
    app.save_inputs(out, built.inputs)
    return out


def project_of(out: Path) -> Project:
    return load_project(out / "docker-compose.yml", None)


def healer(client: FakeDocker, project: Project, said: list[str], inv: str | None = None) -> Healer:
    return Healer(project, failover.Io(said.append, connect=lambda: client), inventory=inv)


def reload_confs(client: FakeDocker, out: Path) -> list[tuple[int, str]]:
    """nginx.conf as the gateway sees it at each reload: (journal position, text)."""
    seen: list[tuple[int, str]] = []

    def hook(container: Any, cmd: list[str]) -> None:
        if cmd[:3] == ["nginx", "-s", "reload"]:
            text = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
            seen.append((len(client.journal) - 1, text))

    client.on_exec = hook
    return seen


# --- recreate: make before break -----------------------------------------------------------------


def test_recreate_starts_the_new_container_before_the_old_one_goes(
    fake: FakeDocker, tmp_path: Path
) -> None:
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    old = fake.services(main.name)["whisper"]
    conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    confs = reload_confs(fake, out)
    mark = len(fake.journal)
    said: list[str] = []
    ok, events = healer(fake, main, said).apply(
        Decision("recreate", "nvidia-smi -L failed 3 times", service="whisper"), NOW
    )
    assert ok, events
    journal = fake.journal[mark:]

    def at(*entry: Any) -> int:
        for n, e in enumerate(journal):
            if e[: len(entry)] == entry:
                return n + mark
        raise AssertionError(f"{entry} not in {journal}")

    new_start = at("start", "whisper")
    old_stop = at("stop", "whisper")
    assert new_start < confs[0][0] < old_stop < at("remove", "whisper") < confs[-1][0]
    # the first reload sends whisper's route to the new container by its own name ...
    renamed = [c for c in fake.calls if c.startswith("rename ")]
    assert len(renamed) == 1
    _, temp_name, final = renamed[0].split()
    assert final == old.name and temp_name.startswith(f"{old.name}-new-")
    assert f"server {temp_name}:" in confs[0][1] and "server whisper:" not in confs[0][1]
    # ... and the last one is nginx.conf as rendered
    assert confs[-1][1] == conf
    assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == conf
    now = fake.services(main.name)["whisper"]
    assert now.id != old.id and now.name == old.name and now.status == "running"
    assert [e.rule for e in events] == ["heal"]
    assert events[0].level == "info" and events[0].value == "recreate"
    assert events[0].service == "whisper" and "make before break" in events[0].message
    assert "nvidia-smi -L failed 3 times" in events[0].message


def test_recreate_whose_new_container_fails_beside_the_old_one_stops_the_old_one_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the same GPU the old process may hold the memory the new one needs: the new one
    that does not become ready beside it is removed, then the old one stops first."""
    fake = FakeDocker("gpu-memory-held")
    monkeypatch.setattr(engine_up, "probe_gateway", lambda project, deadline: None)
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    old = fake.services(main.name)["whisper"]
    conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    mark = len(fake.journal)
    said: list[str] = []
    ok, events = healer(fake, main, said).apply(
        Decision("recreate", "lost GPU access", service="whisper"), NOW
    )
    assert ok, events
    journal = fake.journal[mark:]
    assert journal.count(("start", "whisper")) == 2
    assert journal.count(("remove", "whisper")) == 2  # the failed new one, then the old one
    assert any("did not become ready beside the old one" in line for line in said)
    assert "stopped first" in events[0].message
    whisper = [c for c in fake.containers_by_id.values() if c.service == "whisper"]
    assert len(whisper) == 1 and whisper[0].id != old.id and whisper[0].status == "running"
    assert whisper[0].name == old.name
    assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == conf


def test_recreate_with_the_engine_gone_is_a_failed_heal_not_a_crash(
    fake: FakeDocker, tmp_path: Path
) -> None:
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    fake.online = False
    ok, events = healer(fake, main, []).apply(Decision("recreate", "x", service="whisper"), NOW)
    assert not ok and not is_busy(events)
    assert events[0].level == "critical" and "lost the Docker engine" in events[0].message


def test_recreate_whose_old_container_refuses_to_stop_leaves_the_rendered_routes(
    fake: FakeDocker, tmp_path: Path
) -> None:
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    confs = reload_confs(fake, out)
    fake.fail("stop", "whisper")
    ok, events = healer(fake, main, []).apply(Decision("recreate", "x", service="whisper"), NOW)
    assert not ok and events[0].level == "critical"
    assert "permission denied" in events[0].message
    assert "server whisper:" not in confs[0][1]  # it was pinned to the new container ...
    assert confs[-1][1] == conf  # ... and put back
    assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == conf


def test_recreate_with_the_lock_held_is_busy_and_changes_nothing(
    fake: FakeDocker, tmp_path: Path
) -> None:
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    mark = len(fake.journal)
    said: list[str] = []
    with project_lock(out, main.name, "fallback --cpu"):
        ok, events = healer(fake, main, said).apply(
            Decision("recreate", "restart loop", service="whisper"), NOW
        )
    assert not ok
    assert is_busy(events)
    assert events[0].level == "info" and "busy" in events[0].message
    assert "fallback --cpu" in events[0].message  # who holds it
    assert fake.journal[mark:] == []


def test_recreate_of_an_unknown_service_is_a_failed_heal(fake: FakeDocker, tmp_path: Path) -> None:
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    ok, events = healer(fake, main, []).apply(Decision("recreate", "x", service="nope"), NOW)
    assert not ok and not is_busy(events)
    assert events[0].level == "critical" and "no such service" in events[0].message


# --- the failover actions: the same functions `composegen fallback` calls ------------------------


class Calls:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def fn(self, name: str, result: failover.Outcome | BaseException) -> Any:
        def call(project: Project, *args: Any, **kw: Any) -> failover.Outcome:
            self.seen.append((name, {"project": project.name, "args": args, **kw}))
            if isinstance(result, BaseException):
                raise result
            return result

        return call


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    c = Calls()
    monkeypatch.setattr(
        failover, "gpus_failed", c.fn("gpus_failed", failover.Outcome("gpu-failed", True))
    )
    monkeypatch.setattr(failover, "to_cpu", c.fn("to_cpu", failover.Outcome("cpu", True)))
    monkeypatch.setattr(failover, "restore", c.fn("restore", failover.Outcome("restore", True)))
    return c


@pytest.mark.parametrize(
    ("decision", "called", "args", "kw"),
    [
        (Decision("gpu-failed", "Xid 79", gpus=(0,)), "gpus_failed", ("0",), {}),
        (Decision("gpu-failed", "lost", gpus=(0, 3)), "gpus_failed", ("0,3",), {}),
        (Decision("cpu", "no healthy GPU left"), "to_cpu", (), {}),
        (Decision("restore", "healthy for 300s"), "restore", (), {"inventory": "INV"}),
    ],
)
def test_each_decision_calls_the_fallback_function(
    calls: Calls,
    tmp_path: Path,
    decision: Decision,
    called: str,
    args: tuple[str, ...],
    kw: dict[str, Any],
) -> None:
    out = rendered(tmp_path)
    main = project_of(out)
    inv = str(tmp_path / "inv.json")
    ok, events = healer(FakeDocker(), main, [], inv=inv).apply(decision, NOW)
    assert ok
    assert [name for name, _ in calls.seen] == [called]
    seen = calls.seen[0][1]
    assert seen["project"] == main.name
    assert tuple(a for a in seen["args"] if not isinstance(a, failover.Io)) == args
    assert {k: seen[k] for k in kw} == {k: inv if v == "INV" else v for k, v in kw.items()}
    assert events[0].rule == "heal" and events[0].value == decision.action
    assert decision.reason in events[0].message


def test_engine_refusing_gpu_requests_during_a_heal_moves_to_cpu(
    calls: Calls, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    refused = eng.GpuUnsupportedError(
        "service whisper: this Docker engine cannot honour NVIDIA GPU requests (could not select "
        'device driver "nvidia" with capabilities: [[gpu]])'
    )
    monkeypatch.setattr(failover, "gpus_failed", calls.fn("gpus_failed", refused))
    main = project_of(rendered(tmp_path))
    ok, events = healer(FakeDocker(), main, []).apply(
        Decision("gpu-failed", "Xid 79", gpus=(0,)), NOW
    )
    assert ok
    assert [name for name, _ in calls.seen] == ["gpus_failed", "to_cpu"]
    assert [(e.level, e.value) for e in events] == [("critical", "gpu-failed"), ("info", "cpu")]
    assert "refuses GPU requests" in events[1].message


def test_busy_failover_is_not_a_failed_heal(
    calls: Calls, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from composegen.engine.state import LockedError

    busy = LockedError("project x is busy: composegen up (pid 4242)")
    monkeypatch.setattr(failover, "restore", calls.fn("restore", busy))
    main = project_of(rendered(tmp_path))
    ok, events = healer(FakeDocker(), main, []).apply(Decision("restore", "healthy"), NOW)
    assert not ok and is_busy(events)
    assert "pid 4242" in events[0].message


def test_gpu_failed_heal_on_the_fake_engine_moves_whisper_make_before_break(
    fake: FakeDocker, tmp_path: Path
) -> None:
    """The real gpus_failed: whisper moves from GPU 0 to the spare GPU 5, its new container
    ready before the old one stops (engine/switch.apply_rerender)."""
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    old = fake.services(main.name)["whisper"]
    confs = reload_confs(fake, out)
    mark = len(fake.journal)
    ok, events = healer(fake, main, []).apply(Decision("gpu-failed", "GPU 0 lost", gpus=(0,)), NOW)
    assert ok, events
    assert "whisper: GPU 0 -> GPU 5" in events[0].message
    journal = fake.journal[mark:]
    starts = [n for n, e in enumerate(journal) if e == ("start", "whisper")]
    stops = [n for n, e in enumerate(journal) if e == ("stop", "whisper")]
    assert starts and stops and starts[0] < stops[0]
    # the re-plan left nginx.conf as it was: the first reload is the one onto the new whisper
    assert len(confs) == 2 and "server whisper:" not in confs[0][1]
    assert confs[0][0] > starts[0] + mark
    new = fake.services(main.name)["whisper"]
    assert new.id != old.id
    inv = app.load_inputs(out).inventory
    assert new.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == [inv.gpus[5].uuid]
    assert read_mode(out, main.name)["mode"] == "gpu-failover"


def test_restore_heal_after_a_gpu_failover_moves_back_make_before_break(
    fake: FakeDocker, tmp_path: Path
) -> None:
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    heal = healer(fake, main, [], inv=inventory_file(tmp_path, "a100_8x80"))
    ok, _ = heal.apply(Decision("gpu-failed", "GPU 0 lost", gpus=(0,)), NOW)
    assert ok
    on_spare = fake.services(main.name)["whisper"]
    confs = reload_confs(fake, out)
    mark = len(fake.journal)
    ok, events = heal.apply(Decision("restore", "GPUs healthy for 300s"), NOW)
    assert ok, events
    journal = fake.journal[mark:]
    start = journal.index(("start", "whisper")) + mark
    stop = journal.index(("stop", "whisper")) + mark
    # the new container (GPU 0) runs and the gateway sends whisper's route to it before the
    # one on the spare stops; at the end the gateway serves the rendered configuration
    assert start < confs[0][0] < stop
    assert "server whisper:" not in confs[0][1]
    assert confs[-1][1] == conf
    back = fake.services(main.name)["whisper"]
    inv = app.load_inputs(out).inventory
    assert back.id != on_spare.id
    assert back.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == [inv.gpus[0].uuid]
    assert read_mode(out, main.name)["mode"] == "gpu" and app.load_inputs(out).failed == ()


def test_recreate_of_a_cpu_variant_pins_the_gpu_name_it_answers_to(
    fake: FakeDocker, tmp_path: Path
) -> None:
    """In cpu-fallback the gateway routes to `whisper-cpu`: its replacement takes that route
    (by its own name) before the old one goes, and the CPU routes come back as they were."""
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    failover.to_cpu(main, failover.Io(lambda line: None, connect=lambda: fake))
    cpu_conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    assert "server whisper-cpu:" in cpu_conf
    old = fake.services(main.name)["whisper-cpu"]
    confs = reload_confs(fake, out)
    ok, events = healer(fake, main, []).apply(
        Decision("recreate", "restart loop", service="whisper-cpu"), NOW
    )
    assert ok, events
    new = fake.services(main.name)["whisper-cpu"]
    assert new.id != old.id and new.name == old.name
    assert "server whisper-cpu:" not in confs[0][1]
    assert f"server {old.name}-new-" in confs[0][1]
    assert confs[-1][1] == cpu_conf


def test_recreate_with_the_old_one_stopped_first_reloads_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nginx resolves upstream names when it loads: the new container (a new address) gets
    the route only after a reload that follows its start."""
    fake = FakeDocker("gpu-memory-held")
    monkeypatch.setattr(engine_up, "probe_gateway", lambda project, deadline: None)
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    confs = reload_confs(fake, out)
    mark = len(fake.journal)
    said: list[str] = []
    ok, events = healer(fake, main, said).apply(Decision("recreate", "x", service="whisper"), NOW)
    assert ok, events
    assert "stopped first" in events[0].message
    journal = fake.journal[mark:]
    second_start = [n for n, e in enumerate(journal) if e == ("start", "whisper")][1] + mark
    assert confs and confs[-1][0] > second_start


@pytest.mark.parametrize("engine", ["", "gpu-memory-held"])
def test_recreate_waits_on_the_watchers_stop_event(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM sets the watcher's stop event: every wait of a recreate (make before break, and
    the old one stopped first) ends on it, never on an event nothing sets."""
    import threading

    fake = FakeDocker(engine) if engine else FakeDocker()
    monkeypatch.setattr(engine_up, "probe_gateway", lambda project, deadline: None)
    main = project_of(rendered(tmp_path))
    engine_up.up(fake, main)
    stop = threading.Event()
    seen: list[bool] = []
    real = engine_up.wait_ready

    def spy(svc: Any, container: Any, deadline: float, cancel: Any, *a: Any, **kw: Any) -> None:
        seen.append(cancel is stop)
        real(svc, container, deadline, cancel, *a, **kw)

    monkeypatch.setattr(engine_up, "wait_ready", spy)
    heal = Healer(
        main, failover.Io(lambda line: None, connect=lambda: fake), inventory=None, cancel=stop
    )
    ok, events = heal.apply(Decision("recreate", "x", service="whisper"), NOW)
    assert ok, events
    assert seen and all(seen)


def test_recreate_cancelled_beside_the_old_one_leaves_the_old_one_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping while the new container starts beside the old one (on the same GPU): the new
    one is removed, and the old one is not stopped to try again the other way."""
    import threading

    fake = FakeDocker("gpu-memory-held")
    monkeypatch.setattr(engine_up, "probe_gateway", lambda project, deadline: None)
    main = project_of(rendered(tmp_path))
    engine_up.up(fake, main)
    old = fake.services(main.name)["whisper"]
    stop = threading.Event()
    stop.set()
    mark = len(fake.journal)
    heal = Healer(
        main, failover.Io(lambda line: None, connect=lambda: fake), inventory=None, cancel=stop
    )
    ok, events = heal.apply(Decision("recreate", "x", service="whisper"), NOW)
    assert not ok and "watch is stopping" not in events[0].message
    assert "stopped waiting (stopping)" in events[0].message
    assert ("stop", "whisper") not in fake.journal[mark:]
    assert fake.services(main.name)["whisper"].id == old.id and old.status == "running"


def test_move_to_cpu_after_a_refused_gpu_request_is_recorded_as_a_cpu_move(
    calls: Calls, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CPU rate limit and breaker count the automatic move to CPU; the decision whose GPU
    request the engine refused is a failed heal, not a done one."""
    refused = eng.GpuUnsupportedError("service whisper: this Docker engine cannot honour GPUs")
    monkeypatch.setattr(failover, "gpus_failed", calls.fn("gpus_failed", refused))
    main = project_of(rendered(tmp_path))
    fake = FakeDocker()
    recorded: list[tuple[str, bool]] = []
    heal = Healer(
        main,
        failover.Io(lambda line: None, connect=lambda: fake),
        inventory=None,
        record=lambda d, ok, now: recorded.append((d.action, ok)),
    )
    ok, events = heal.apply(Decision("gpu-failed", "Xid 79", gpus=(0,)), NOW)
    assert not ok
    assert recorded == [("cpu", True)]
    assert [(e.level, e.value) for e in events] == [("critical", "gpu-failed"), ("info", "cpu")]
