"""The engine layer's failure paths (`up`, `down`, `status`, the parallel stop of fallback),
against the fake Docker client of tests/fake_docker.py: no engine needed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from composegen.engine import docker as eng
from composegen.engine import switch
from composegen.engine import up as engine_up
from composegen.engine.compose import Project, load_project
from composegen.engine.state import write_mode
from composegen.errors import EXIT_RUNTIME
from tests.fake_docker import NO_SUCH_HOST, FakeDocker
from tests.unit.test_cli_detect import call

STACK = """
services:
  llm:
    image: {image}
    restart: unless-stopped
    healthcheck:
      test: ["CMD", "true"]
      interval: 5s
      start_period: {start_period}
    labels: {{io.composegen.service: llm, io.composegen.mode: gpu}}
    deploy:
      resources:
        reservations:
          devices: [{{driver: nvidia, device_ids: ["GPU-5b1e8c4a"], capabilities: [gpu]}}]
  gateway:
    image: img:1
    labels: {{io.composegen.service: gateway, io.composegen.mode: gateway}}
    depends_on: {{llm: {{condition: service_healthy}}}}
"""


def stack(tmp: Path, image: str = "img:1", start_period: str = "0s") -> Project:
    (tmp / "docker-compose.yml").write_text(STACK.format(image=image, start_period=start_period))
    return load_project(tmp / "docker-compose.yml", "proj")


def labels(project: Project, service: str, config_hash: str = "old") -> dict[str, str]:
    return {
        eng.LABEL_PROJECT: project.name,
        eng.LABEL_SERVICE: service,
        eng.LABEL_HASH: config_hash,
        eng.LABEL_WORKDIR: str(project.directory),
        **project.service(service).labels,
    }


def running_stack(client: FakeDocker, project: Project, changed: str = "llm") -> dict[str, Any]:
    """The stack as a previous `up` left it; `changed` has another config hash than the file."""
    return {
        s.name: client.add_container(
            f"proj-{s.name}-1",
            labels(project, s.name, "old" if s.name == changed else s.config_hash()),
        )
        for s in project.services
    }


# --- item 12: the image first, the old container removed only once the new one exists -------


def test_failed_pull_leaves_the_old_container_serving(tmp_path: Path) -> None:
    client = FakeDocker("image-missing", images={"img:1"})
    project = stack(tmp_path, image="registry.example.invalid/llm:2")
    old = running_stack(client, project)
    seen: list[tuple[str, str, str]] = []
    with pytest.raises(eng.ImageMissingError) as err:
        engine_up.up(
            client, project, wait_timeout_s=5, report=lambda s, st, d: seen.append((s, st, d))
        )
    # the engine's whole message, not cut mid-word, in the error and in the progress table
    assert NO_SUCH_HOST in err.value.message
    failed = [d for s, st, d in seen if (s, st) == ("llm", "failed")]
    assert len(failed) == 1 and failed[0].endswith(NO_SUCH_HOST), failed
    assert "service llm: image registry.example.invalid/llm:2" in err.value.message
    assert old["llm"].status == "running"
    assert not [c for c in client.calls if c.startswith(("stop", "remove"))], client.calls


def test_refused_create_leaves_the_old_container_serving(tmp_path: Path) -> None:
    client = FakeDocker("create-fails")
    project = stack(tmp_path)
    old = running_stack(client, project)
    with pytest.raises(eng.EngineError, match="refused: OCI runtime create failed") as err:
        engine_up.up(client, project, wait_timeout_s=5)
    assert err.value.exit_code == EXIT_RUNTIME
    assert old["llm"].status == "running"
    assert client.containers.get("proj-llm-1") is old["llm"]
    assert not [c for c in client.calls if c.startswith(("stop", "remove"))], client.calls


def test_recreate_creates_the_new_container_before_it_removes_the_old(tmp_path: Path) -> None:
    client = FakeDocker()
    project = stack(tmp_path)
    running_stack(client, project)
    result = engine_up.up(client, project, wait_timeout_s=5)
    assert result.actions == {"llm": "recreate", "gateway": "keep"}
    steps = [c for c in client.calls if "llm" in c]
    assert steps[0].startswith("create proj-llm-1-new-")
    assert steps[1:3] == ["stop proj-llm-1", "remove proj-llm-1"]
    assert steps[3].startswith("rename proj-llm-1-new-") and steps[3].endswith(" proj-llm-1")
    assert steps[4] == "start proj-llm-1"
    assert client.containers.get("proj-llm-1").status == "running"


def test_missing_image_is_pulled_with_progress_per_layer(tmp_path: Path) -> None:
    client = FakeDocker(images={"img:1"})
    project = stack(tmp_path, image="img:2")
    events: list[tuple[str, dict[str, Any]]] = []
    engine_up.up(client, project, wait_timeout_s=5, on_pull=lambda s, e: events.append((s, e)))
    assert "pull img:2" in client.calls
    layers = [(s, e["id"], e["status"]) for s, e in events if e.get("id") == "a1b2c3d4e5f6"]
    assert layers == [
        ("llm", "a1b2c3d4e5f6", "Pulling fs layer"),
        ("llm", "a1b2c3d4e5f6", "Downloading"),
        ("llm", "a1b2c3d4e5f6", "Pull complete"),
    ]


def test_pull_progress_lines_and_json_events(capsys: pytest.CaptureFixture[str]) -> None:
    from composegen.engine.progress import Progress

    layer = "a1b2c3d4e5f6"

    def down(n: int) -> dict[str, Any]:
        return {
            "status": "Downloading",
            "id": layer,
            "progressDetail": {"current": n, "total": 31_457_280},
        }

    ev = [
        {"status": "Pulling fs layer", "id": layer},
        down(1),
        down(2),
        down(9_437_184),
        {"status": "Pull complete", "id": layer},
    ]
    with Progress(["llm"], False, "t") as prog:
        for e in ev:
            prog.pull("llm", e)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("s] ", 1)[1] for line in lines] == [
        "llm: pull a1b2c3d4e5f6: Pulling fs layer",
        "llm: pull a1b2c3d4e5f6: Downloading",
        "llm: pull a1b2c3d4e5f6: Pull complete",
    ]
    import json

    with Progress(["llm"], True, "t") as prog:
        for e in ev:
            prog.pull("llm", e)
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # a status change, or a tenth of the layer more: the 1-byte step is not an event
    assert [(g["status"], g["current"]) for g in got] == [
        ("Pulling fs layer", 0),
        ("Downloading", 1),
        ("Downloading", 9_437_184),
        ("Pull complete", 0),
    ]
    assert all(g["event"] == "pull" and g["layer"] == "a1b2c3d4e5f6" for g in got)


def test_engine_gone_is_one_runtime_error(tmp_path: Path) -> None:
    client = FakeDocker()
    project = stack(tmp_path)
    client.online = False
    with pytest.raises(eng.NoEngineError, match="lost the Docker engine") as err:
        engine_up.up(client, project, wait_timeout_s=5)
    assert err.value.exit_code == EXIT_RUNTIME


# --- item 13: every parallel worker's error reaches the summary -----------------------------


def test_run_parallel_collects_every_error_in_order() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        with lock:
            seen.append(i)
        if i % 2:
            raise RuntimeError(f"worker {i} failed")

    failures = eng.run_parallel(work, range(6), lambda i: f"w{i}")
    assert sorted(seen) == list(range(6))
    assert [(n, str(e)) for n, e in failures] == [
        ("w1", "worker 1 failed"),
        ("w3", "worker 3 failed"),
        ("w5", "worker 5 failed"),
    ]


def test_down_reports_the_container_it_could_not_remove(tmp_path: Path) -> None:
    client = FakeDocker("stop-fails")
    project = stack(tmp_path)
    running_stack(client, project)
    bad = client.add_container("proj-bad-1", {eng.LABEL_PROJECT: "proj", eng.LABEL_SERVICE: "bad"})
    client.networks.create("proj_default", labels={eng.LABEL_PROJECT: "proj"})
    seen: list[tuple[str, str, str]] = []
    with pytest.raises(eng.ParallelError) as err:
        engine_up.down(client, "proj", report=lambda s, st, d: seen.append((s, st, d)))
    assert err.value.exit_code == EXIT_RUNTIME
    assert "down proj: 1 of 4 failed: bad: service bad: the engine refused" in err.value.message
    assert "device or resource busy" in err.value.message
    assert ("bad", "failed") in [(s, st) for s, st, _ in seen]
    # everything else is gone all the same
    assert client.containers.list(all=True) == [bad]
    assert "remove network proj_default" in client.calls


def test_fallback_parallel_stop_reports_a_failed_stop() -> None:
    client = FakeDocker("stop-fails")
    good = client.add_container(
        "proj-good-1", {eng.LABEL_PROJECT: "proj", eng.LABEL_SERVICE: "good"}
    )
    client.add_container("proj-bad-1", {eng.LABEL_PROJECT: "proj", eng.LABEL_SERVICE: "bad"})
    with pytest.raises(eng.ParallelError, match=r"1 of 2 failed: bad: .*permission denied"):
        switch.stop_parallel(client, "proj", ["good", "bad"])
    assert good.status == "exited"


# --- item 10.9: a restart within the start period is waited out; the current state reported -


def test_restart_within_the_start_period_is_waited_out(tmp_path: Path) -> None:
    client = FakeDocker("restart-loop")
    project = stack(tmp_path, start_period="60s")
    seen: list[tuple[str, str, str]] = []
    result = engine_up.up(
        client, project, wait_timeout_s=30, report=lambda s, st, d: seen.append((s, st, d))
    )
    assert result.actions["llm"] == "create"
    assert ("llm", "healthy") in [(s, st) for s, st, _ in seen]
    assert client.containers.get("proj-llm-1").attrs["RestartCount"] == 1


def test_restart_after_the_start_period_reports_the_current_container(tmp_path: Path) -> None:
    client = FakeDocker("restart-loop")
    project = stack(tmp_path, start_period="0s")
    with pytest.raises(engine_up.UpFailed) as err:
        engine_up.up(client, project, wait_timeout_s=30)
    current = client.containers.get("proj-llm-1")
    assert err.value.message == "service llm keeps restarting (last exit code 1)"
    assert f"(container {current.id[:12]}, " in err.value.details
    assert "run 1: fatal: cannot bind" in err.value.details


def test_exited_container_ends_the_wait_even_within_its_start_period(tmp_path: Path) -> None:
    client = FakeDocker("killed")
    project = stack(tmp_path, start_period="600s")
    with pytest.raises(engine_up.UpFailed) as err:
        engine_up.up(client, project, wait_timeout_s=600)
    assert err.value.message == "service llm exited (exit code 137)"


# --- item 18: the keys the loader accepts reach the engine ----------------------------------

APPLIED = """
services:
  llm:
    image: img:1
    restart: always
    volumes: [models:/models, "models:/cache:ro"]
    deploy:
      restart_policy: {condition: on-failure, max_attempts: 3}
      resources:
        limits: {pids: 256}
        reservations:
          devices:
            - driver: nvidia
              device_ids: ["GPU-5b1e8c4a"]
              capabilities: [gpu]
              options: {virtualization: "false"}
volumes:
  models: {}
"""


def test_restart_policy_pids_device_options_and_both_mounts_reach_the_engine(
    tmp_path: Path,
) -> None:
    (tmp_path / "docker-compose.yml").write_text(APPLIED)
    project = load_project(tmp_path / "docker-compose.yml", "proj")
    client = FakeDocker()
    engine_up.up(client, project, wait=False)
    host = client.api.created[0]["host_config"]
    # deploy.restart_policy wins over restart:, as in Compose
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host["PidsLimit"] == 256
    assert host["DeviceRequests"][0]["Options"] == {"virtualization": "false"}
    assert host["Binds"] == ["proj_models:/models:rw", "proj_models:/cache:ro"]


def test_start_interval_on_an_engine_before_1_44_is_said_once_and_started(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(
        STACK.format(image="img:1", start_period="60s").replace(
            "      interval: 5s\n", "      interval: 5s\n      start_interval: 1s\n"
        )
    )
    project = load_project(tmp_path / "docker-compose.yml", "proj")
    client = FakeDocker()  # API 1.41, as the engine of this machine
    seen: list[tuple[str, str, str]] = []
    engine_up.up(client, project, wait=False, report=lambda s, st, d: seen.append((s, st, d)))
    notes = [d for s, st, d in seen if st == "note"]
    assert len(notes) == 1, seen
    assert "API 1.41, older than 1.44" in notes[0]
    assert "ignores healthcheck start_interval (services llm)" in notes[0]
    assert len(client.api.created) == 2  # started all the same
    newer = FakeDocker(api_version="1.44")
    seen.clear()
    engine_up.up(newer, project, wait=False, report=lambda s, st, d: seen.append((s, st, d)))
    assert [st for s, st, d in seen if st == "note"] == []
    assert newer.api.created[0]["healthcheck"]["StartInterval"] == 1_000_000_000


# --- item 20: up in cpu-fallback mode ---------------------------------------------------------


def test_up_in_cpu_fallback_is_refused_and_points_at_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = stack(tmp_path)
    write_mode(tmp_path, "proj", "cpu-fallback", "composegen fallback --cpu")
    with pytest.raises(engine_up.InFallbackError):
        engine_up.refuse_in_fallback(tmp_path, "proj")
    client = FakeDocker()
    monkeypatch.setattr(eng, "connect", lambda *a, **k: client)
    # --no-doctor: the hook and ports of the host running the tests are not the point here
    code, _, err = call(
        ["up", "-C", str(tmp_path), "-p", "proj", "--no-wait", "--no-doctor"], capsys
    )
    assert code == 1
    assert "runs in cpu-fallback mode" in err and "composegen fallback --restore" in err
    assert client.calls == []
    write_mode(tmp_path, "proj", "gpu", "composegen fallback --restore")
    engine_up.refuse_in_fallback(tmp_path, "proj")  # no error
    del project


# --- item 19 and issue 10 item 10: down / status without a usable file; status tells truth -


def test_down_and_status_by_name_when_the_file_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = stack(tmp_path)
    client = FakeDocker()
    running_stack(client, project, changed="")
    (tmp_path / "docker-compose.yml").write_text("services: [broken\n")
    monkeypatch.setattr(eng, "connect", lambda *a, **k: client)
    code, out, err = call(["status", "-C", str(tmp_path), "-p", "proj"], capsys)
    assert code == 0, err
    assert "invalid YAML" in err and "labels" in err
    assert "llm" in out and "gateway" in out
    code, out, err = call(["down", "-C", str(tmp_path), "-p", "proj"], capsys)
    assert code == 0, err
    assert "proj: removed 2 container(s)" in out
    assert client.containers.list(all=True) == []


def test_status_shows_readiness_fallback_stops_and_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    project = stack(tmp_path)
    client = FakeDocker()
    cs = running_stack(client, project, changed="")
    # Docker's first scheduled check has not run yet; the container's own check passes now
    cs["llm"].attrs["State"]["Health"] = {"Status": "starting"}
    cs["llm"].attrs["Config"]["Healthcheck"] = {"Test": ["CMD", "true"], "Timeout": 5 * 10**9}
    report = engine_up.status(client, "proj", project)
    by = {r.service: r for r in report.rows}
    assert (by["llm"].health, by["llm"].ready) == ("starting", "yes")
    assert ["true"] in client.execs
    assert report.serving
    cs["llm"].attrs["Config"]["Healthcheck"]["Test"] = ["CMD", "false"]
    assert engine_up.status(client, "proj", project).problems == [
        "llm is not ready (health starting)"
    ]
    cs["llm"].attrs["Config"]["Healthcheck"]["Test"] = ["CMD", "true"]
    # cpu-fallback: the GPU service stopped on purpose is no problem
    cs["llm"].set_state("exited", 137)
    cs["llm"].attrs["State"]["Health"] = {"Status": "unhealthy"}  # Docker's last verdict stays
    report = engine_up.status(client, "proj", project, in_fallback=True)
    llm = {r.service: r for r in report.rows}["llm"]
    assert (llm.state, llm.health, llm.ready) == (engine_up.STOPPED_FOR_FALLBACK, "-", "-")
    assert report.serving
    # outside fallback the same stop is a problem; a restarting gateway is one too
    cs["gateway"].set_state("restarting", 1)
    report = engine_up.status(client, "proj", project)
    assert report.problems == ["gateway gateway is restarting", "llm is exited"]
    monkeypatch.setattr(eng, "connect", lambda *a, **k: client)
    code, out, err = call(["status", "-C", str(tmp_path), "-p", "proj", "--json"], capsys)
    assert code == 1
    data = json.loads(out)
    assert data["serving"] is False and "gateway gateway is restarting" in data["problems"]
    code, out, err = call(["status", "-C", str(tmp_path), "-p", "proj"], capsys)
    assert code == 1 and "proj is not serving: gateway gateway is restarting" in err
