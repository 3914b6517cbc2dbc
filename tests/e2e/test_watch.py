"""`composegen watch` on a real engine with the stand-in images (rag-a100, 8 A100 81920 MiB).

A steady request loop through the gateway (tests/e2e/test_fallback.Loop) runs during every
heal and must see no failed request. The GPU signals come from an --inventory file that the
test edits (`health: lost`), as `composegen detect --save` writes it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from composegen.engine import failover
from composegen.engine.compose import load_project
from composegen.watch.heal import Healer
from composegen.watch.types import Decision
from tests.e2e.test_fallback import Loop
from tests.e2e.test_up import Stack, containers, env_of, up


def recorded_gpus(st: Stack) -> list[dict[str, Any]]:
    data = json.loads((st.directory / ".composegen" / "render.json").read_text())
    return list(data["inventory"]["gpus"])


def whisper_url(st: Stack) -> str:
    return f"http://127.0.0.1:{st.port}/whisper/v1/models"


def served_gpus(st: Stack) -> str:
    return str(httpx.get(whisper_url(st), timeout=10).json()["gpus"])


def test_heal_recreates_a_container_that_lost_its_gpu_and_moves_off_a_lost_gpu(
    docker_client: Any, stack_factory: Any
) -> None:
    """The Healer alone (no probes, no rules): recreate whisper after its nvidia-smi broke,
    then fail GPU 0 over to the spare, each under load through whisper's route."""
    st = stack_factory("rag-a100")
    done, _ = up(st)
    assert done.returncode == 0, done.stderr
    project = load_project(st.directory / "docker-compose.yml", st.project)
    said: list[str] = []
    healer = Healer(project, failover.Io(said.append), inventory=None)
    gpus = recorded_gpus(st)

    before = containers(docker_client, st.project)
    old = before["whisper"]
    assert old.exec_run(["touch", "/run/stub-nvml-lost"]).exit_code == 0
    assert old.exec_run(["nvidia-smi", "-L"]).exit_code != 0
    with Loop(whisper_url(st), None) as loop:
        ok, events = healer.apply(Decision("recreate", "lost GPU access", service="whisper"), 0)
    assert ok, [e.message for e in events]
    assert loop.failed == [], loop.failed[:5]
    assert loop.ok > 10
    now = containers(docker_client, st.project)
    assert now["whisper"].id != old.id and now["whisper"].name == old.name
    assert now["whisper"].exec_run(["nvidia-smi", "-L"]).exit_code == 0
    assert {s: c.id for s, c in now.items() if s != "whisper"} == {
        s: c.id for s, c in before.items() if s != "whisper"
    }
    assert served_gpus(st) == gpus[0]["uuid"]

    with Loop(whisper_url(st), None) as loop:
        ok, events = healer.apply(Decision("gpu-failed", "GPU 0 lost", gpus=(0,)), 0)
    assert ok, [e.message for e in events]
    assert loop.failed == [], loop.failed[:5]
    moved = containers(docker_client, st.project)
    assert env_of(moved["whisper"])["NVIDIA_VISIBLE_DEVICES"] == gpus[5]["uuid"]
    assert served_gpus(st) == gpus[5]["uuid"]
