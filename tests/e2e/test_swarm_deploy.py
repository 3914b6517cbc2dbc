"""`composegen deploy / status / undeploy` of rendered profiles on the real multi-node Swarm
(scripts/swarm.sh, tests/e2e/swarm_bed.py): ollama-replicas over 2 + 2 GPUs and rag-a100 over
two 4-GPU nodes, side by side on one two-node bed.

Each bed node is one machine of each fleet (tests/fixtures/fleet/): node 1 advertises the GPU
UUIDs of gpu-a-2x64 and gpu-a-4x80-pcie, node 2 those of gpu-b-2x64 and gpu-b-4x80-pcie. The
fleet files are written here, with the bed's hostnames and the nodes' own sockets as engines.
What runs where is read independently, on each node's own engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.swarm_bed import Node, leftovers, node_of, swarm_script, swarm_up, tasks
from tests.e2e.test_up import image_overrides

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "tests" / "fixtures" / "fleet"
HOSTS = {"gpu-a": "cgsw-node1", "gpu-b": "cgsw-node2"}


def inventory_uuids(name: str) -> list[str]:
    data = json.loads((FLEET / f"{name}.json").read_text())
    return [g["uuid"] for g in sorted(data["gpus"], key=lambda g: g["index"])]


A2, B2 = inventory_uuids("gpu-a-2x64"), inventory_uuids("gpu-b-2x64")
A4, B4 = inventory_uuids("gpu-a-4x80-pcie"), inventory_uuids("gpu-b-4x80-pcie")
# the plans (`composegen plan --fleet`): each service's node and GPUs, by inventory
OLLAMA = {
    "ollama-0": ("cgsw-node1", [A2[0]]),
    "ollama-1": ("cgsw-node1", [A2[1]]),
    "ollama-2": ("cgsw-node2", [B2[0]]),
    "ollama-3": ("cgsw-node2", [B2[1]]),
    "gateway": ("cgsw-node1", []),
}
RAG = {
    "whisper": ("cgsw-node1", [A4[0]]),
    "embeddings": ("cgsw-node1", [A4[1]]),
    "llm": ("cgsw-node1", [A4[2], A4[3]]),  # the tensor-parallel group, on one node
    "ocr": ("cgsw-node2", [B4[0]]),
    "gateway": ("cgsw-node1", []),
}
PORTS = {"ollama-replicas": 38411, "rag-a100": 38427}  # published on node 1's own address


@dataclass
class Deployed:
    name: str
    directory: Path
    expect: dict[str, tuple[str, list[str]]]


def composegen(*args: str, mgr: Node, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{mgr.sock}"}
    return subprocess.run(
        [sys.executable, "-m", "composegen", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def render(
    name: str, inventories: tuple[str, str], nodes: dict[int, Node], tags: dict[str, str], tmp: Path
) -> Path:
    lines = ["nodes:"]
    for i, (fleet_name, inv) in enumerate(zip(HOSTS, inventories, strict=True), start=1):
        lines.append(
            f"  - {{name: {fleet_name}, hostname: {HOSTS[fleet_name]}, "
            f"inventory: {FLEET / inv}, engine: 'unix://{nodes[i].sock}'}}"
        )
    fleet = tmp / f"{name}-fleet.yaml"
    fleet.write_text("\n".join(lines) + "\n")
    out = tmp / name
    args = ["render", "-P", name, "--fleet", str(fleet), "--target", "swarm", "-o", str(out)]
    for image in image_overrides(name, tags):
        key, _, tag = image.partition("=")
        args += ["--image", f"{key}={tags['nginx-resolve'] if tag == tags['nginx'] else tag}"]
    args += ["--set", f"gateway.port={PORTS[name]}"]
    done = composegen(*args, mgr=nodes[1])
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def bed(tags: dict[str, str]) -> Iterator[dict[int, Node]]:
    """Two nodes, each advertising its machine's GPUs of both fleets; always torn down, and
    the teardown checked (swarm.sh down succeeded, nothing of the bed left)."""
    nodes: dict[int, Node] = {}
    try:
        nodes = swarm_up(2, gpus={1: A2 + A4, 2: B2 + B4})
        yield nodes
    finally:
        down = swarm_script("down")
        assert down.returncode == 0, down.stderr[-2000:]
        if nodes:
            assert leftovers(nodes[1].prefix) == []


@pytest.fixture(scope="module")
def deployed(
    bed: dict[int, Node], tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> list[Deployed]:
    """Both stacks rendered and deployed at once (two `composegen deploy`, each waiting)."""
    tmp = tmp_path_factory.mktemp("swarm-deploy")
    ollama = render("ollama-replicas", ("gpu-a-2x64.json", "gpu-b-2x64.json"), bed, tags, tmp)
    rag = render("rag-a100", ("gpu-a-4x80-pcie.json", "gpu-b-4x80-pcie.json"), bed, tags, tmp)
    stacks = [Deployed("ollama-replicas", ollama, OLLAMA), Deployed("rag-a100", rag, RAG)]
    env = {**os.environ, "DOCKER_HOST": f"unix://{bed[1].sock}"}
    deploy = [sys.executable, "-m", "composegen", "deploy", "--timeout", "200s", "--json", "-C"]
    pipe = subprocess.PIPE
    procs = []
    for s in stacks:
        cmd = [*deploy, str(s.directory)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=pipe, stderr=pipe))
    try:
        for s, proc in zip(stacks, procs, strict=True):
            out, err = proc.communicate(timeout=260)
            assert proc.returncode == 0, f"deploy {s.name}: {err}\n{out[-3000:]}"
            events = [json.loads(line) for line in out.splitlines()]
            assert events[-1]["event"] == "done" and events[-1]["ok"] is True, events[-1]
    finally:  # a deploy that ran over (or a failed assertion) leaves no process behind
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return stacks


def gpus_on_node(nodes: dict[int, Node], task: dict[str, Any]) -> list[str]:
    """NVIDIA_VISIBLE_DEVICES of the task's container, read on its own node's engine."""
    node = node_of(nodes, task["node"])
    env = json.loads(node.docker("inspect", "--format", "{{json .Config.Env}}", task["container"]))
    found = [e.split("=", 1)[1] for e in env if e.startswith("NVIDIA_VISIBLE_DEVICES=")]
    assert len(found) == 1, env
    return [] if found[0] == "void" else found[0].split(",")


def test_every_task_runs_on_its_planned_node_with_its_planned_gpus(
    bed: dict[int, Node], deployed: list[Deployed]
) -> None:
    for stack in deployed:
        for service, (host, uuids) in stack.expect.items():
            (task,) = tasks(bed[1], f"{stack.name}_{service}")
            assert task["state"] == "running", (stack.name, service, task)
            assert task["node"] == host, (stack.name, service, task)
            assert gpus_on_node(bed, task) == uuids, (stack.name, service)
        status = composegen("status", "-C", str(stack.directory), "--json", mgr=bed[1])
        assert status.returncode == 0, status.stdout + status.stderr
        rows = {r["service"]: r for r in json.loads(status.stdout)["services"]}
        assert {s: (r["node"], r["gpus"], r["gpus_from"]) for s, r in rows.items()} == {
            s: (host, uuids, "container") for s, (host, uuids) in stack.expect.items()
        }


def test_gateway_reaches_the_replicas_on_both_nodes(
    bed: dict[int, Node], deployed: list[Deployed]
) -> None:
    (gw,) = tasks(bed[1], "ollama-replicas_gateway")
    containers = {
        task["container"][:12]: service
        for service in ("ollama-0", "ollama-1", "ollama-2", "ollama-3")
        for task in tasks(bed[1], f"ollama-replicas_{service}")
    }
    served: dict[str, str] = {}
    # nginx re-resolves the replicas' names (`resolve`); a name looked up before its task was
    # healthy (Swarm's DNS lists healthy tasks only) answers again some seconds later
    end = time.monotonic() + 90
    while time.monotonic() < end and len(served) < 4:
        # from inside the gateway's container, through nginx, over the overlay network
        res = subprocess.run(
            ["docker", "exec", gw["container"], "curl", "-sf", "-m", "3",
             f"http://127.0.0.1:{PORTS['ollama-replicas']}/api/tags"],
            env={**os.environ, "DOCKER_HOST": f"unix://{bed[1].sock}"},
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        if res.returncode == 0:
            answer = json.loads(res.stdout)
            served[containers[answer["served_by"]]] = answer["gpus"]
        else:
            time.sleep(0.5)
    assert served == {s: OLLAMA[s][1][0] for s in ("ollama-0", "ollama-1", "ollama-2", "ollama-3")}


def test_drained_node_leaves_its_pinned_services_pending_and_status_says_so(
    bed: dict[int, Node], deployed: list[Deployed]
) -> None:
    mgr = bed[1]
    before = {
        (s.name, svc): tasks(mgr, f"{s.name}_{svc}")[0]["container"]
        for s in deployed
        for svc, (host, _) in s.expect.items()
        if host == "cgsw-node1"
    }
    pinned = {("ollama-replicas", "ollama-2"), ("ollama-replicas", "ollama-3"), ("rag-a100", "ocr")}
    mgr.docker("node", "update", "--availability", "drain", "cgsw-node2")
    try:
        end, rows = time.monotonic() + 60, {}
        while time.monotonic() < end:
            rows = {}
            for s in deployed:
                done = composegen("status", "-C", str(s.directory), "--json", mgr=mgr)
                assert done.returncode in (0, 1), done.stderr
                rows |= {(s.name, r["service"]): r for r in json.loads(done.stdout)["services"]}
            if all(rows[k]["state"] == "pending" for k in pinned):
                break
            time.sleep(1)
        for key in pinned:  # nothing moved to node 1: the plan pins them to node 2
            assert rows[key]["state"] == "pending" and rows[key]["node"] is None, rows[key]
            assert "no suitable node" in rows[key]["detail"], rows[key]
        for key, row in rows.items():
            if key not in pinned:
                assert row["ok"] and row["node"] == "cgsw-node1", row
        # the services on node 1 were left alone: the same containers
        assert {k: tasks(mgr, f"{k[0]}_{k[1]}")[0]["container"] for k in before} == before
        text = composegen("status", "-C", str(deployed[0].directory), mgr=mgr)
        assert text.returncode == 1
        assert "ollama-2 (planned on gpu-b (cgsw-node2)): pending: no suitable node" in text.stderr
        assert "cgsw-node1" in text.stdout and "pending" in text.stdout
    finally:
        mgr.docker("node", "update", "--availability", "active", "cgsw-node2")
    # node 2 back: Swarm schedules its pinned services there again
    end, placed = time.monotonic() + 60, {}
    while time.monotonic() < end:
        placed = {k: tasks(mgr, f"{k[0]}_{k[1]}") for k in pinned}
        if all(len(t) == 1 and t[0]["node"] == "cgsw-node2" for t in placed.values()):
            break
        time.sleep(1)
    assert all([t["node"] for t in placed[k]] == ["cgsw-node2"] for k in pinned), placed


def test_undeploy_leaves_no_services_nor_networks_and_keeps_volumes(
    bed: dict[int, Node], deployed: list[Deployed]
) -> None:
    mgr = bed[1]
    for s in deployed:
        done = composegen("undeploy", "-C", str(s.directory), mgr=mgr)
        assert done.returncode == 0, done.stderr
        assert "named volumes kept" in done.stdout
        ns = f"label=com.docker.stack.namespace={s.name}"
        assert mgr.docker("service", "ls", "-q", "--filter", ns) == ""
        assert mgr.docker("network", "ls", "-q", "--filter", ns) == ""
        # undeploy waited for the task containers on both nodes' engines (swarm/nodes.json)
        for node in bed.values():
            assert node.docker("ps", "-aq", "--filter", ns) == "", node.host
    volumes = mgr.docker("volume", "ls", "--format", "{{.Name}}").split()
    assert "ollama-replicas_models" in volumes
    again = composegen("status", "-C", str(deployed[0].directory), "--json", mgr=mgr)
    assert again.returncode == 1
    assert {r["state"] for r in json.loads(again.stdout)["services"]} == {"missing"}
