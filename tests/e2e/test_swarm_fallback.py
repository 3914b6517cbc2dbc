"""`composegen fallback` on a swarm stack, on the multi-node test bed (tests/e2e/swarm_bed.py).

Node 1 advertises the four GPUs of tests/fixtures/fleet/gpu-a-4x80-sxm.json, node 2 the two of
gpu-b-2x64.json; the fleet file names those inventories. ollama-replicas with two fixed replicas
(`--set services.ollama.gpu.replicas=2`: fixed replicas move on failover, per-GPU ones are
dropped) runs ollama-0 and ollama-1 on node 1's GPUs 0 and 1, leaving 2 and 3 free there.

Checked from the manager, task by task: `--gpu-failed <GPU 0's UUID>` replaces ollama-0's task
by one pinned to GPU 2 that Swarm reports running (= healthy) before the old container stops,
and leaves the other tasks alone (same task IDs); `--cpu` does the same for both replicas onto
their CPU form on the same node; `--restore` returns them to GPUs 0 and 1. The stack is
deployed with `composegen deploy`, and each fallback waits as deploy does (engine.swarm). The
gateway (nginx-resolve image) is never restarted and ends up serving from the replicas' new
tasks. The bed is torn down after the module, whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.images import ensure_images
from tests.e2e.swarm_bed import Node, leftovers, swarm_script, swarm_up

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "tests" / "fixtures" / "fleet"
A = json.loads((FLEET / "gpu-a-4x80-sxm.json").read_text())
B = json.loads((FLEET / "gpu-b-2x64.json").read_text())
A_UUIDS = [g["uuid"] for g in A["gpus"]]
B_UUIDS = [g["uuid"] for g in B["gpus"]]
PROJECT = "cgfb"
SERVICES = ("gateway", "ollama-0", "ollama-1")


@dataclass
class Bed:
    nodes: dict[int, Node]
    directory: Path
    gateway_task: str = ""  # the gateway's task after the deploy

    @property
    def mgr(self) -> Node:
        return self.nodes[1]

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.mgr.sock}"}


def cli(bed: Bed | None, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "composegen", *args],
        cwd=ROOT, env=bed.env() if bed else None, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def render(tmp: Path, tags: dict[str, str], nodes: dict[int, Node]) -> Path:
    """The fleet file (the bed's hostnames, each node's engine its socket: deploy and the
    fallback's wait read the GPUs from the task containers there), then `render`."""
    fleet = tmp / "fleet.yaml"
    fleet.write_text(
        "nodes:\n"
        f"  - {{name: node1, hostname: {nodes[1].host}, engine: 'unix://{nodes[1].sock}', "
        f"inventory: {FLEET / 'gpu-a-4x80-sxm.json'}}}\n"
        f"  - {{name: node2, hostname: {nodes[2].host}, engine: 'unix://{nodes[2].sock}', "
        f"inventory: {FLEET / 'gpu-b-2x64.json'}}}\n"
    )
    out = tmp / "stack"
    done = cli(
        None, "render", "-P", "ollama-replicas", "--fleet", str(fleet), "-o", str(out),
        "--image", f"ollama={tags['ollama']}", "--image", f"nginx={tags['nginx-resolve']}",
        "--image", f"prometheus={tags['model']}", "--image", f"grafana={tags['model']}",
        "--set", "services.ollama.gpu.replicas=2",
        # Swarm reports a task running once healthy: check health every second, not every 30
        "--set", "services.ollama.health.interval=1s",
        "--set", "gateway.api_key=e2e-swarm-fallback-key-0123456789",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[Bed]:
    tags = ensure_images()
    prefix = ""
    try:
        nodes = swarm_up(2, {1: A_UUIDS, 2: B_UUIDS})
        prefix = nodes[1].prefix
        directory = render(tmp_path_factory.mktemp("swarm-fallback"), tags, nodes)
        bed = Bed(nodes, directory)
        deploy = cli(bed, "deploy", "-C", str(directory), "-p", PROJECT, "--timeout", "3m")
        assert deploy.returncode == 0, deploy.stderr + deploy.stdout
        bed.gateway_task = running(bed, "gateway")["ID"]
        yield bed
    finally:
        down = swarm_script("down")
        assert down.returncode == 0, down.stderr
        if prefix:
            assert leftovers(prefix) == []


# --- reading the Swarm ------------------------------------------------------------------------


def when(stamp: str) -> datetime:
    """A Docker timestamp (nanoseconds, Z) as a datetime (microseconds)."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def service_tasks(bed: Bed, service: str) -> list[dict[str, Any]]:
    """Every task of the service Swarm still lists, newest first."""
    ids = bed.mgr.docker("service", "ps", "-q", f"{PROJECT}_{service}").split()
    found = json.loads(bed.mgr.docker("inspect", *ids)) if ids else []
    return sorted(found, key=lambda t: t["CreatedAt"], reverse=True)


def running(bed: Bed, service: str) -> dict[str, Any]:
    now = [
        t
        for t in service_tasks(bed, service)
        if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
    ]
    assert len(now) == 1, f"{service}: {[(t['ID'], t['Status']['State']) for t in now]}"
    return now[0]


def container(bed: Bed, task: dict[str, Any]) -> dict[str, Any]:
    """The task's container, inspected on the node that runs it (node 1 here)."""
    node = json.loads(bed.mgr.docker("node", "inspect", task["NodeID"]))[0]
    host = node["Description"]["Hostname"]
    on = next(n for n in bed.nodes.values() if n.host == host)
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    data: dict[str, Any] = json.loads(on.docker("inspect", cid))[0]
    data["_host"] = host
    return data


def env_of(info: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in info["Config"]["Env"])


def reserved(task: dict[str, Any]) -> list[Any]:
    res = task["Spec"].get("Resources", {}).get("Reservations", {})
    return list(res.get("GenericResources") or [])


def replaced_make_before_break(bed: Bed, service: str, old_id: str) -> dict[str, Any]:
    """The service's new task, after checking the old one (old_id) stopped only after the new
    one ran and was healthy; Swarm's own record: task states and container times."""
    new = running(bed, service)
    assert new["ID"] != old_id
    old = next(t for t in service_tasks(bed, service) if t["ID"] == old_id)
    assert old["DesiredState"] == "shutdown"
    # the old container ended (on its node's engine): wait until Docker has its FinishedAt
    end = time.monotonic() + 60
    old_c = container(bed, old)
    while old_c["State"]["Running"] and time.monotonic() < end:
        time.sleep(0.3)
        old_c = container(bed, old)
    assert not old_c["State"]["Running"], f"{service}: old task {old_id} still runs"
    new_c = container(bed, new)
    became_running = when(new["Status"]["Timestamp"])
    stopped = when(old_c["State"]["FinishedAt"])
    # Swarm reported the new task running (= healthy) before it stopped the old one
    assert became_running < stopped, (became_running, stopped)
    assert new_c["State"]["Health"]["Status"] == "healthy", new_c["State"]["Health"]
    # Docker keeps only the last 5 health results: the earliest retained success is the
    # first one only while the log has not rotated
    log = new_c["State"]["Health"]["Log"]
    if len(log) < 5:
        first_healthy = min(when(h["End"]) for h in log if h["ExitCode"] == 0)
        assert first_healthy <= became_running, (first_healthy, became_running)
    return new


def settled_stop_first(bed: Bed, service: str, task_id: str) -> None:
    """After the fallback converged it deployed the stack again with the service stop-first
    (a later update must not start a second task on its pinned GPU): Swarm's spec says so,
    and that apply started no task (the newest is still the start-first update's)."""
    spec = json.loads(bed.mgr.docker("service", "inspect", f"{PROJECT}_{service}"))[0]["Spec"]
    assert spec["UpdateConfig"]["Order"] == "stop-first", spec["UpdateConfig"]
    assert service_tasks(bed, service)[0]["ID"] == task_id
    assert running(bed, service)["ID"] == task_id


def status(bed: Bed) -> tuple[str, bool]:
    """(the mode, every task as planned) as `composegen status` says them."""
    done = cli(bed, "status", "-C", str(bed.directory), "-p", PROJECT, "--json")
    data = json.loads(done.stdout)
    assert done.returncode == (0 if data["ok"] else 1), done.stderr
    return data["mode"]["mode"], data["ok"]


# --- the tests --------------------------------------------------------------------------------


def test_deployed_as_planned(bed: Bed) -> None:
    for name, uuid in (("ollama-0", A_UUIDS[0]), ("ollama-1", A_UUIDS[1])):
        info = container(bed, running(bed, name))
        assert info["_host"] == "cgsw-node1"
        assert env_of(info)["NVIDIA_VISIBLE_DEVICES"] == uuid


def test_gpu_failed_moves_only_the_affected_service_make_before_break(bed: Bed) -> None:
    before = {name: running(bed, name)["ID"] for name in SERVICES}
    done = cli(bed, "fallback", "-C", str(bed.directory), "-p", PROJECT, "--gpu-failed", A_UUIDS[0])
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"ollama-0: node1 GPU 0 ({A_UUIDS[0]}) -> node1 GPU 2 ({A_UUIDS[2]}) (start-first)" in (
        done.stdout
    )
    assert done.stdout.index("moving ollama-0") < done.stdout.index("moved ollama-0")
    new = replaced_make_before_break(bed, "ollama-0", before["ollama-0"])
    settled_stop_first(bed, "ollama-0", new["ID"])
    info = container(bed, new)
    assert info["_host"] == "cgsw-node1"
    assert env_of(info)["NVIDIA_VISIBLE_DEVICES"] == A_UUIDS[2]
    assert new["Spec"]["ContainerSpec"]["Env"]  # the new spec, with its reservation
    assert len(reserved(new)) == 1
    # untouched: the same tasks as before
    assert running(bed, "ollama-1")["ID"] == before["ollama-1"]
    assert running(bed, "gateway")["ID"] == before["gateway"]
    assert status(bed) == ("gpu-failover", True)


def test_cpu_moves_both_replicas_to_cpu_on_their_node(bed: Bed) -> None:
    before = {name: running(bed, name)["ID"] for name in SERVICES}
    # no -p: the name `deploy -p` recorded (not the profile's, which would be a second stack)
    done = cli(bed, "fallback", "-C", str(bed.directory), "--cpu")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "ollama-replicas_" not in bed.mgr.docker("service", "ls", "--format", "{{.Name}}")
    for name in ("ollama-0", "ollama-1"):
        new = replaced_make_before_break(bed, name, before[name])
        info = container(bed, new)
        assert info["_host"] == "cgsw-node1"  # same node: its volumes (the models) are there
        env = env_of(info)
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
        assert env["OLLAMA_MODELS"] == "/models/composegen-cpu"  # the CPU variant's store
        assert reserved(new) == []
        mounts = {m["Name"] for m in info["Mounts"] if m["Type"] == "volume"}
        assert f"{PROJECT}_models" in mounts
    assert running(bed, "gateway")["ID"] == before["gateway"]
    assert status(bed) == ("cpu-fallback", True)


def test_restore_returns_to_the_planned_gpus(bed: Bed) -> None:
    before = {name: running(bed, name)["ID"] for name in SERVICES}
    done = cli(bed, "fallback", "-C", str(bed.directory), "-p", PROJECT, "--restore")
    assert done.returncode == 0, done.stderr + done.stdout
    for name, uuid in (("ollama-0", A_UUIDS[0]), ("ollama-1", A_UUIDS[1])):
        new = replaced_make_before_break(bed, name, before[name])
        settled_stop_first(bed, name, new["ID"])
        assert env_of(container(bed, new))["NVIDIA_VISIBLE_DEVICES"] == uuid
        assert len(reserved(new)) == 1
    assert running(bed, "gateway")["ID"] == before["gateway"]
    assert status(bed) == ("gpu", True)


def task_addresses(bed: Bed, task: dict[str, Any]) -> set[str]:
    """The task's addresses on the stack's overlay networks."""
    return {
        a.split("/")[0]
        for net in task.get("NetworksAttachments") or []
        for a in net.get("Addresses") or []
    }


def gateway_log(node: Node, cid: str) -> str:
    done = subprocess.run(
        ["docker", "logs", "--tail", "30", cid], capture_output=True, text=True, timeout=30,
        env={**os.environ, "DOCKER_HOST": f"unix://{node.sock}"},
    )  # fmt: skip
    return done.stdout + done.stderr


def test_gateway_reaches_the_moved_replicas_without_a_restart(bed: Bed) -> None:
    gw_task = running(bed, "gateway")
    gw = container(bed, gw_task)
    assert gw_task["ID"] == bed.gateway_task  # the same gateway task since the deploy
    node = next(n for n in bed.nodes.values() if n.host == gw["_host"])
    replicas = {name: task_addresses(bed, running(bed, name)) for name in ("ollama-0", "ollama-1")}
    key = "Authorization: Bearer e2e-swarm-fallback-key-0123456789"

    def get() -> str:
        return node.docker(
            "exec", gw["Id"], "curl", "-s", "-H", key, "http://127.0.0.1:8080/",
        )  # fmt: skip

    # nginx keeps a name's addresses for `valid=` (2 s) after a lookup (and keeps them when a
    # lookup times out): until then it may still try a moved replica's old, stopped task
    # (a 502 once every address it holds is stale). Wait for 8 answers in a row.
    start = time.monotonic()
    ok = 0
    while ok < 8 and time.monotonic() < start + 60:
        out = get()
        ok = ok + 1 if out == "Ollama is running" else 0
        if not ok:
            time.sleep(0.5)
    assert ok == 8, (out, gateway_log(node, gw["Id"]), replicas)
    print(f"gateway: 8 answers in a row {time.monotonic() - start:.1f} s after --restore")
    logs = node.docker("logs", "--tail", "8", gw["Id"])  # the last 8 requests
    served = [json.loads(line)["upstream_addr"].rsplit(":", 1)[0] for line in logs.splitlines()]
    # nginx re-resolved the names: every request went to a replica's current task
    assert set(served) <= replicas["ollama-0"] | replicas["ollama-1"], (served, replicas)
    assert any(a in replicas["ollama-0"] for a in served) and any(
        a in replicas["ollama-1"] for a in served
    ), (served, replicas)
