"""engine/failover.py without an engine: a fake Docker client (tests/fake_docker.py) under the
real orchestration, the real compose loader and the real `up` convergence. Only the final HTTP
probe of the gateway is stubbed (nothing listens on the rendered port here); the e2e tests
(tests/e2e/test_fallback.py) run the same paths on a real engine with a request loop.

Also the emergency script with a stand-in `docker` on PATH, and `--auto` / `--restore`
against fake NVML scenarios."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from composegen import app, profiles
from composegen import failover_policy as policy
from composegen.engine import failover, switch
from composegen.engine import up as engine_up
from composegen.engine.compose import Project, load_project
from composegen.engine.state import read_mode, write_mode
from composegen.errors import BadInputError, ComposegenError
from composegen.inventory import Inventory
from tests.fake_docker import FakeDocker
from tests.fake_nvml import SCENARIOS, FakeNvml, Scenario
from tests.stack_checks import inventory_file
from tests.unit.test_cli_detect import call

Install = Callable[[str], FakeNvml]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    client = FakeDocker()
    monkeypatch.setattr("composegen.engine.docker.connect", lambda timeout_s=30.0: client)
    monkeypatch.setattr(engine_up, "probe_gateway", lambda project, deadline: None)
    return client


def rendered(tmp: Path, profile: str, scenario: str) -> Path:
    out = tmp / "stack"
    built = app.build(profile, inventory=inventory_file(tmp, scenario))
    app.write(out, built.files, force=False, dry_run=False)
    assert built.inputs is not None
    app.save_inputs(out, built.inputs)
    return out


def project_of(out: Path) -> Project:
    return load_project(out / "docker-compose.yml", None)


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)


def io_for(client: FakeDocker, said: Said) -> failover.Io:
    return failover.Io(said, connect=lambda: client)


def reload_confs(client: FakeDocker, out: Path) -> list[tuple[int, str]]:
    """Record nginx.conf as the gateway sees it at each reload: (journal position, text)."""
    seen: list[tuple[int, str]] = []

    def hook(container: Any, cmd: list[str]) -> None:
        if cmd[:3] == ["nginx", "-s", "reload"]:
            text = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
            seen.append((len(client.journal) - 1, text))

    client.on_exec = hook
    return seen


# --- the move to CPU and back: make before break -----------------------------------------------


def test_restore_from_cpu_is_make_before_break(fake: FakeDocker, tmp_path: Path) -> None:
    out = rendered(tmp_path, "zenglow-personas", "consumer_pair")
    main = project_of(out)
    engine_up.up(fake, main)
    gpu_conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    said = Said()
    failover.to_cpu(main, io_for(fake, said))
    assert read_mode(out, main.name)["mode"] == "cpu-fallback"
    assert fake.services(main.name)["leonardo"].status == "exited"
    assert (out / switch.GPU_CONF_BACKUP).read_text(encoding="utf-8") == gpu_conf

    confs = reload_confs(fake, out)
    mark = len(fake.journal)
    failover.restore(main, io_for(fake, said), inventory=inventory_file(tmp_path, "consumer_pair"))
    journal = fake.journal[mark:]

    def at(*entry: Any) -> int:
        for n, e in enumerate(journal):
            if e[: len(entry)] == entry:
                return n + mark
        raise AssertionError(f"{entry} not in {journal}")

    started = max(at("start", "leonardo"), at("start", "jarvis"))
    removed = min(at("remove", "leonardo-cpu"), at("remove", "jarvis-cpu"))
    first, last = confs[0], confs[-1]
    # the routes swap only once the GPU services run, and before any CPU container goes
    assert started < first[0] < at("stop", "leonardo-cpu") <= removed
    # ... naming the GPU containers, since the CPU ones also answer to `leonardo`, `jarvis`
    gpu_names = {s: c.name for s, c in fake.services(main.name).items()}
    assert f"server {gpu_names['leonardo']}:11434" in first[1]
    assert f"server {gpu_names['jarvis']}:11434" in first[1]
    assert "server leonardo:" not in first[1] and "leonardo-cpu" not in first[1]
    # ... and once they are gone, the configuration exactly as rendered
    assert last[0] > removed and last[1] == gpu_conf
    assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == gpu_conf
    assert not (out / switch.GPU_CONF_BACKUP).exists()
    assert set(fake.services(main.name)) == {"gateway", "leonardo", "jarvis"}
    assert read_mode(out, main.name)["mode"] == "gpu"
    assert said.lines[-1].endswith("back on its GPU plan")


def test_cpu_fallback_whose_gpu_stop_fails_is_recorded_and_reported(
    fake: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = rendered(tmp_path, "zenglow-personas", "consumer_pair")
    main = project_of(out)
    engine_up.up(fake, main)
    gpu_conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    cpu_conf = (out / "fallback" / "nginx.cpu.conf").read_text(encoding="utf-8")
    fake.fail("stop", "leonardo")
    code, _, err = call(["fallback", "-C", str(out), "--cpu"], capsys)
    # the gateway routes to the CPU variants, and the mode says so
    assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == cpu_conf
    assert (out / switch.GPU_CONF_BACKUP).read_text(encoding="utf-8") == gpu_conf
    assert read_mode(out, main.name)["mode"] == "cpu-fallback"
    # the failed stop is reported, by name with the engine's reason, and the exit code is 1
    assert code == 1 and "Traceback" not in err, err
    assert "1 GPU service(s) did not stop: leonardo:" in err
    assert "permission denied" in err and "recorded as cpu-fallback" in err
    assert fake.services(main.name)["jarvis"].status == "exited"
    assert fake.services(main.name)["leonardo"].status == "running"
    # a second --cpu does not switch again, and --restore sees the truth and returns
    said = Said()
    assert failover.to_cpu(main, io_for(fake, said)).action == "none"
    fake.failing.clear()
    failover.restore(main, io_for(fake, said), inventory=inventory_file(tmp_path, "consumer_pair"))
    assert said.lines[-1].endswith("back on its GPU plan")
    assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == gpu_conf
    assert set(fake.services(main.name)) == {"gateway", "leonardo", "jarvis"}
    assert read_mode(out, main.name)["mode"] == "gpu"


def test_pin_upstreams_changes_only_upstream_servers() -> None:
    conf = (
        "upstream jarvis {\n        server jarvis:11434 max_fails=3;\n    }\n"
        "    server {\n        listen 8080;\n        proxy_pass http://jarvis/;\n"
    )
    got = switch.pin_upstreams(conf, {"jarvis": "p-jarvis-1"})
    assert "server p-jarvis-1:11434 max_fails=3;" in got
    assert "proxy_pass http://jarvis/;" in got and "    server {\n" in got


def test_gateway_refusing_the_cpu_routes_leaves_the_gpu_services_running(
    fake: FakeDocker, tmp_path: Path
) -> None:
    out = rendered(tmp_path, "zenglow-personas", "consumer_pair")
    main = project_of(out)
    engine_up.up(fake, main)
    gpu_conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    fake.exec_codes[("nginx", "-t", "-q", "-c", "/etc/nginx/composegen/nginx.conf")] = 1
    with pytest.raises(ComposegenError, match="the old configuration was put back"):
        failover.to_cpu(main, io_for(fake, Said()))
    assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == gpu_conf
    assert fake.services(main.name)["leonardo"].status == "running"
    assert fake.index("stop", "leonardo") == -1
    assert read_mode(out, main.name)["mode"] == "gpu"


def test_restore_keeps_the_cpu_services_when_the_gateway_refuses(
    fake: FakeDocker, tmp_path: Path
) -> None:
    out = rendered(tmp_path, "zenglow-personas", "consumer_pair")
    main = project_of(out)
    engine_up.up(fake, main)
    failover.to_cpu(main, io_for(fake, Said()))
    cpu_conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    fake.exec_codes[("nginx", "-t", "-q", "-c", "/etc/nginx/composegen/nginx.conf")] = 1
    with pytest.raises(ComposegenError, match="the old configuration was put back"):
        failover.restore(
            main, io_for(fake, Said()), inventory=inventory_file(tmp_path, "consumer_pair")
        )
    running = fake.services(main.name, all=False)
    assert {"leonardo-cpu", "jarvis-cpu", "gateway"} <= set(running)
    assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == cpu_conf
    assert (out / switch.GPU_CONF_BACKUP).exists()  # a second --restore still has it
    assert read_mode(out, main.name)["mode"] == "cpu-fallback"


def test_restore_whose_gpu_service_stays_unhealthy_keeps_serving_on_cpu(
    fake: FakeDocker, tmp_path: Path
) -> None:
    out = rendered(tmp_path, "zenglow-personas", "consumer_pair")
    main = project_of(out)
    engine_up.up(fake, main)
    gpu_conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    failover.to_cpu(main, io_for(fake, Said()))
    cpu_conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    confs = reload_confs(fake, out)
    fake.unhealthy.add("leonardo")
    with pytest.raises(ComposegenError, match="leonardo is unhealthy"):
        failover.restore(
            main, io_for(fake, Said()), inventory=inventory_file(tmp_path, "consumer_pair")
        )
    assert confs == []  # the gateway was never pointed at the GPU services
    assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == cpu_conf
    assert (out / switch.GPU_CONF_BACKUP).read_text(encoding="utf-8") == gpu_conf
    running = fake.services(main.name, all=False)
    assert {"leonardo-cpu", "jarvis-cpu", "gateway"} <= set(running)
    assert read_mode(out, main.name)["mode"] == "cpu-fallback"
    # once it is healthy, the same command finishes the way back
    fake.unhealthy.clear()
    failover.restore(
        main, io_for(fake, Said()), inventory=inventory_file(tmp_path, "consumer_pair")
    )
    assert confs[-1][1] == gpu_conf
    assert set(fake.services(main.name)) == {"gateway", "leonardo", "jarvis"}


def test_failover_then_cpu_then_restore_returns_to_the_original_plan(
    fake: FakeDocker, tmp_path: Path
) -> None:
    out = rendered(tmp_path, "ollama-replicas", "a100_4x64")
    original = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    engine_up.up(fake, project_of(out))
    failover.gpus_failed(project_of(out), "2", io_for(fake, Said()))
    assert "ollama-2" not in fake.services(project_of(out).name)
    failover.to_cpu(project_of(out), io_for(fake, Said()))
    confs = reload_confs(fake, out)
    failover.restore(
        project_of(out), io_for(fake, Said()), inventory=inventory_file(tmp_path, "a100_4x64")
    )
    main = project_of(out)
    assert set(fake.services(main.name)) == {s.name for s in main.services}
    assert "ollama-2" in fake.services(main.name)
    assert not any(n.endswith("-cpu") for n in fake.services(main.name))
    assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == original
    assert confs[-1][1] == original
    assert app.load_inputs(out).failed == ()
    assert read_mode(out, main.name)["mode"] == "gpu"


def test_second_switch_never_saves_the_cpu_routes_as_the_gpu_ones(
    fake: FakeDocker, tmp_path: Path
) -> None:
    out = rendered(tmp_path, "zenglow-personas", "consumer_pair")
    main = project_of(out)
    engine_up.up(fake, main)
    gpu_conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    switch.to_cpu(fake, main, lambda s, st, d: None)
    switch.to_cpu(fake, main, lambda s, st, d: None)  # e.g. after the emergency script
    assert (out / switch.GPU_CONF_BACKUP).read_text(encoding="utf-8") == gpu_conf


# --- item 15: fallback after a hand edit of .env ----------------------------------------------


def test_gpu_failed_keeps_a_hand_edited_env(
    fake: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = rendered(tmp_path, "ollama-replicas", "a100_4x64")
    engine_up.up(fake, project_of(out))
    env = out / ".env"
    edited = env.read_text(encoding="utf-8").replace(
        "OLLAMA_KEEP_ALIVE=24h", "OLLAMA_KEEP_ALIVE=90m"
    )
    env.write_text(edited, encoding="utf-8")
    code, text, err = call(["fallback", "-C", str(out), "--gpu-failed", "2"], capsys)
    assert code == 0, err
    assert "moved ollama-2: removed" in text
    assert env.read_text(encoding="utf-8") == edited  # the user's tunables stay
    assert not (out / ".env.bak").exists()
    assert "ollama-2" not in (out / "docker-compose.yml").read_text(encoding="utf-8")
    assert "ollama-2" not in fake.services(project_of(out).name)
    # the kept containers read the edited value (the compose file interpolates .env)
    assert project_of(out).service("ollama-0").environment["OLLAMA_KEEP_ALIVE"] == "90m"
    # and the way back keeps it too
    code, text, err = call(
        [
            "fallback",
            "-C",
            str(out),
            "--restore",
            "--inventory",
            inventory_file(tmp_path, "a100_4x64"),
        ],
        capsys,
    )
    assert code == 0, err
    assert env.read_text(encoding="utf-8") == edited
    assert "ollama-2" in fake.services(project_of(out).name)


def test_gpu_failed_over_a_hand_edited_compose_file_needs_force(
    fake: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = rendered(tmp_path, "ollama-replicas", "a100_4x64")
    engine_up.up(fake, project_of(out))
    compose = out / "docker-compose.yml"
    edited = compose.read_text(encoding="utf-8") + "# tuned by hand\n"
    compose.write_text(edited, encoding="utf-8")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = call(["fallback", "-C", str(out), "--gpu-failed", "2"], capsys)
    assert code == 2 and "docker-compose.yml was edited by hand" in err
    assert "--force" in err and "Traceback" not in err
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert fake.index("remove") == -1

    code, _, err = call(["fallback", "-C", str(out), "--gpu-failed", "2", "--force"], capsys)
    assert code == 0, err
    assert (out / "docker-compose.yml.bak").read_text(encoding="utf-8") == edited
    assert "ollama-2" not in fake.services(project_of(out).name)


def test_changed_files_is_what_the_replan_changes(tmp_path: Path) -> None:
    out = rendered(tmp_path, "ollama-replicas", "a100_4x64")
    inputs = app.load_inputs(out)
    before = app.rebuild(inputs).files
    after = app.rebuild(replace(inputs, failed=((2,),))).files
    paths = {f.path for f in failover.changed_files(before, after)}
    assert "docker-compose.yml" in paths and "nginx/nginx.conf" in paths
    assert ".env" not in paths


# --- item 17: --auto matches each GPU by UUID where it has one -------------------------------


def _install(monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> None:
    from composegen.detect import nvml

    fake = FakeNvml(scenario)
    monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
    monkeypatch.setattr(nvml, "_nvml", None)


def gone_and_lost() -> Scenario:
    """4x A100-64GB after GPU 1 fell off the bus (gone from the list: the others renumber) and
    the last one is lost (NVML cannot even say its UUID)."""
    s = SCENARIOS["a100_4x64"]()
    s.gpus = [s.gpus[0], s.gpus[2], s.gpus[3]]
    s.gpus[2].lost = True
    return s


def test_auto_matches_by_uuid_where_a_gpu_has_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from composegen.detect import nvml

    out = rendered(tmp_path, "ollama-replicas", "a100_4x64")
    _install(monkeypatch, gone_and_lost())
    try:
        code, text, err = call(["fallback", "-C", str(out), "--auto", "--dry-run"], capsys)
    finally:
        nvml.shutdown()
    assert code == 0, err
    # GPU 1 is gone and GPU 3 lost; GPU 2 (now listed as index 1) is healthy
    assert "GPUs reported failed: 1, 3" in text
    assert "would move ollama-1: removed" in text and "would move ollama-3: removed" in text
    assert "ollama-2: removed" not in text


def test_failed_from_live_mixed_uuids() -> None:
    """GPU 1 gone (the others renumbered), GPU 3 lost without a UUID: failed are 1 and 3."""
    recorded = Inventory(
        source="t",
        gpus=tuple(
            replace(g, uuid=f"GPU-{g.index}")
            for g in profiles.load("ollama-replicas").reference_inventory().gpus
        ),
    )
    renumbered = tuple(
        replace(g, index=n) for n, g in enumerate(g for g in recorded.gpus if g.index != 1)
    )
    lost = replace(renumbered[2], uuid=None, health="lost", health_reason="t")
    live = replace(recorded, gpus=(*renumbered[:2], lost))
    assert policy.failed_from_live(recorded, live) == (1, 3)
    # a recorded GPU without a UUID is matched by index, but never to another recorded GPU
    no_uuid = replace(recorded, gpus=(replace(recorded.gpus[0], uuid=None), *recorded.gpus[1:]))
    shifted = replace(live, gpus=(replace(renumbered[1], index=0), *live.gpus[1:]))
    assert 0 in policy.failed_from_live(no_uuid, shifted)


# --- item 13: --restore of a stack rendered for reference hardware -----------------------------


def test_restore_without_nvml_takes_the_recorded_inventory(
    nvml_scenario: Install, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "stack"
    built = app.build("zenglow-personas", reference=True)
    app.write(out, built.files, force=False, dry_run=False)
    assert built.inputs is not None
    app.save_inputs(out, built.inputs)
    write_mode(out, "zenglow-personas", "cpu-fallback", "test")
    nvml_scenario("no_driver")
    code, text, err = call(["fallback", "-C", str(out), "--restore", "--dry-run"], capsys)
    assert code == 0, err
    assert "taking the stack's recorded inventory" in text
    assert "would restore zenglow-personas to its GPU plan" in text
    code, text, err = call(
        [
            "fallback",
            "-C",
            str(out),
            "--restore",
            "--dry-run",
            "--inventory",
            str(out / ".composegen" / "render.json"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "would restore" in text and "expected 'composegen/inventory/v1'" not in err


def test_auto_without_nvml_still_means_cpu_not_the_recorded_inventory(
    nvml_scenario: Install, tmp_path: Path
) -> None:
    out = rendered(tmp_path, "zenglow-personas", "consumer_pair")
    nvml_scenario("no_driver")
    said = Said()
    got = failover.auto(project_of(out), failover.Io(said), dry_run=True)
    assert got.action == "cpu" and any("moving to CPU" in line for line in said.lines)


def test_bad_gpu_ids_are_bad_input_before_any_engine(tmp_path: Path) -> None:
    out = rendered(tmp_path, "ollama-replicas", "a100_4x64")

    def no_engine() -> Any:
        raise AssertionError("connected to the engine for bad input")

    with pytest.raises(BadInputError, match="GPU 9 is not in"):
        failover.gpus_failed(project_of(out), "9", failover.Io(Said(), connect=no_engine))


# --- item 16: the emergency script records the mode, is idempotent, prints the way back ------

FAKE_DOCKER_SH = """#!/bin/sh
# a stand-in docker CLI: every call logged; containers are healthy
echo "docker $* (COMPOSE_IGNORE_ORPHANS=${COMPOSE_IGNORE_ORPHANS:-})" >> "$FAKE_LOG"
case "$1" in
    compose) exit 0 ;;
    ps) echo 0123456789ab ;;
    inspect) echo healthy ;;
esac
exit 0
"""


def run_script(out: Path, bindir: Path, log: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "FAKE_LOG": str(log),
        "FALLBACK_WAIT_S": "5",
    }
    return subprocess.run(
        ["sh", str(out / "scripts" / "emergency-fallback.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_emergency_script_records_the_mode_and_runs_twice(tmp_path: Path) -> None:
    out = rendered(tmp_path, "zenglow-personas", "consumer_pair")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(FAKE_DOCKER_SH)
    os.chmod(bindir / "docker", 0o755)
    log = tmp_path / "docker.log"
    gpu_conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    cpu_conf = (out / "fallback" / "nginx.cpu.conf").read_text(encoding="utf-8")

    for _ in range(2):
        done = run_script(out, bindir, log)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == cpu_conf
        assert (out / switch.GPU_CONF_BACKUP).read_text(encoding="utf-8") == gpu_conf
        mode = read_mode(out, "zenglow-personas")
        assert mode["mode"] == "cpu-fallback" and mode["why"] == "scripts/emergency-fallback.sh"
        state = json.loads((out / ".composegen" / "zenglow-personas.state.json").read_text())
        assert state.keys() == {"mode", "since", "why"}
        time.strptime(state["since"], "%Y-%m-%dT%H:%M:%S%z")  # write_mode's format
    # the way back it prints is composegen's make-before-break restore, nothing else
    assert f'composegen fallback --restore -C "{out}" -p zenglow-personas' in done.stdout
    for wrong in ("--remove-orphans", "composegen up", "cp nginx"):
        assert wrong not in done.stdout + done.stderr
    calls = log.read_text()
    assert (
        "compose -p zenglow-personas --env-file .env -f fallback/docker-compose.cpu.yml up -d"
        in calls
    )
    assert "--remove-orphans" not in calls
    # ... and Compose is told not to suggest it (the gateway and GPU services look orphaned)
    assert "up -d (COMPOSE_IGNORE_ORPHANS=true)" in calls
    # and `fallback --restore` sees the mode the script recorded (dry run: no engine here)
    said = Said()
    failover.restore(
        project_of(out),
        failover.Io(said),
        inventory=inventory_file(tmp_path, "consumer_pair"),
        dry_run=True,
    )
    assert said.lines == ["would restore zenglow-personas to its GPU plan (2 service(s))"]


def test_emergency_script_refuses_while_composegen_holds_the_lock(
    tmp_path: Path,
) -> None:
    from composegen.engine.state import project_lock

    out = rendered(tmp_path, "zenglow-personas", "consumer_pair")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(FAKE_DOCKER_SH)
    os.chmod(bindir / "docker", 0o755)
    gpu_conf = (out / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    with project_lock(out, "zenglow-personas", "fallback --restore"):
        done = run_script(out, bindir, tmp_path / "docker.log")
    assert done.returncode == 1 and "is busy" in done.stderr
    assert (out / "nginx" / "nginx.conf").read_text(encoding="utf-8") == gpu_conf
    assert read_mode(out, "zenglow-personas")["mode"] == "gpu"
