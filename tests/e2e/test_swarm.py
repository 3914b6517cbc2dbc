"""A real multi-node Docker Swarm on this one machine (scripts/swarm.sh, tests/e2e/swarm_bed.py):
two dockerds, each in its own network namespace, advertising two fake GPUs each as generic
resources `NVIDIA-GPU`. The main engine is only read (its test images are copied to the nodes).
Needs root, iproute2, util-linux and the test images; in CI (COMPOSEGEN_REQUIRE_ENGINE=1) a
missing prerequisite fails, elsewhere the tests skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.swarm_bed import (
    BUSYBOX,
    NODE_CAPTURES,
    WORK,
    Node,
    anchor_network,
    fixture_uuids,
    gpu_env,
    leftovers,
    swarm_script,
    swarm_up,
    tasks,
    wait_tasks,
)

NETWORK = "cgsw-backend"
MODEL = "composegen-test/model-stub:1"
NGINX = "composegen-test/nginx:1"


@pytest.fixture(scope="session")
def swarm(tags: dict[str, str]) -> Iterator[dict[int, Node]]:
    """`scripts/swarm.sh up 2`, an overlay network held on both nodes; always `down` after."""
    try:
        nodes = swarm_up(2)
        anchor_network(nodes[1], NETWORK, 2)
        yield nodes
    finally:
        swarm_script("down")


def gpu_service(mgr: Node, name: str, *extra: str) -> None:
    mgr.docker(
        "service", "create", "-d", "--name", name, "--network", NETWORK,
        "--endpoint-mode", "dnsrr", "--stop-grace-period", "1s",
        "--generic-resource", "NVIDIA-GPU=1", *extra,
        BUSYBOX, "sleep", "3600",
    )  # fmt: skip


@pytest.fixture
def services(swarm: dict[int, Node]) -> Iterator[list[str]]:
    """Names of services a test made; removed after it, and their containers gone."""
    made: list[str] = []
    yield made
    if not made:
        return
    swarm[1].docker("service", "rm", *made, check=False)
    for node in swarm.values():  # their GPUs free again before the next test
        end = time.monotonic() + 30
        while time.monotonic() < end and any(
            node.docker("ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={s}")
            for s in made
        ):
            time.sleep(0.3)


def test_fixture_gpus_are_what_each_node_advertises(swarm: dict[int, Node]) -> None:
    for i, capture in NODE_CAPTURES.items():
        want = fixture_uuids(capture)
        assert len(want) == 2, capture
        node = json.loads(swarm[1].docker("node", "inspect", swarm[i].host))[0]
        named = {
            g["NamedResourceSpec"]["Value"]
            for g in node["Description"]["Resources"]["GenericResources"]
            if g["NamedResourceSpec"]["Kind"] == "NVIDIA-GPU"
        }
        assert named == want


def test_gpu_service_runs_on_its_planned_node_with_that_nodes_gpu(
    swarm: dict[int, Node], services: list[str]
) -> None:
    mgr = swarm[1]
    services.append("gpu-pinned")
    gpu_service(mgr, "gpu-pinned", "--constraint", "node.labels.composegen.node==node2")
    (task,) = wait_tasks(mgr, "gpu-pinned", 1)
    assert task["node"] == "cgsw-node2"
    assert gpu_env(swarm, task) in fixture_uuids(NODE_CAPTURES[2])


def test_two_gpu_services_never_get_the_same_gpu(
    swarm: dict[int, Node], services: list[str]
) -> None:
    mgr = swarm[1]
    node1 = ["--constraint", "node.hostname==cgsw-node1"]
    services += ["gpu-one", "gpu-two", "gpu-three"]
    gpu_service(mgr, "gpu-one", *node1)
    gpu_service(mgr, "gpu-two", *node1)
    got = [gpu_env(swarm, wait_tasks(mgr, s, 1)[0]) for s in ("gpu-one", "gpu-two")]
    assert sorted(got) == sorted(fixture_uuids(NODE_CAPTURES[1]))
    # a third on a node with both GPUs taken waits: Swarm does not double-book
    gpu_service(mgr, "gpu-three", *node1)
    end = time.monotonic() + 20
    pending: list[str] = []
    while time.monotonic() < end and not pending:
        pending = mgr.docker(
            "service", "ps", "--no-trunc", "--format", "{{.CurrentState}} {{.Error}}", "gpu-three"
        ).splitlines()
        pending = [p for p in pending if "insufficient resources" in p]
        time.sleep(0.5)
    assert pending, mgr.docker("service", "ps", "--no-trunc", "gpu-three")
    assert not [t for t in tasks(mgr, "gpu-three") if t["state"] == "running"]


STACK = """\
version: "3.8"
services:
  model-a:
    image: {model}
    hostname: "{{{{.Node.Hostname}}}}-model-a"
    networks: [backend]
    stop_grace_period: 1s
    deploy:
      endpoint_mode: dnsrr
      placement: {{constraints: ["node.labels.composegen.node==node1"]}}
      resources:
        reservations:
          generic_resources:
            - discrete_resource_spec: {{kind: NVIDIA-GPU, value: 1}}
      restart_policy: {{condition: any, delay: 1s}}
  model-b:
    image: {model}
    hostname: "{{{{.Node.Hostname}}}}-model-b"
    networks: [backend]
    stop_grace_period: 1s
    deploy:
      endpoint_mode: dnsrr
      placement: {{constraints: ["node.labels.composegen.node==node2"]}}
      resources:
        reservations:
          generic_resources:
            - discrete_resource_spec: {{kind: NVIDIA-GPU, value: 1}}
      restart_policy: {{condition: any, delay: 1s}}
  gateway:
    image: {nginx}
    networks: [backend]
    stop_grace_period: 1s
    configs:
      - source: gateway_conf
        target: /etc/nginx/conf.d/gateway.conf
    deploy:
      endpoint_mode: dnsrr
      placement: {{constraints: ["node.hostname==cgsw-node1"]}}
      restart_policy: {{condition: any, delay: 1s}}
configs:
  gateway_conf:
    file: ./gateway.conf
networks:
  backend:
    external: true
    name: {network}
"""

GATEWAY_CONF = """\
server {
    listen 8080;
    resolver 127.0.0.11 valid=2s ipv6=off;
    location /a/ { set $up tasks.cgt_model-a; proxy_pass http://$up:8000; }
    location /b/ { set $up tasks.cgt_model-b; proxy_pass http://$up:8000; }
}
"""


def test_stack_deploy_gateway_reaches_replicas_on_both_nodes(
    swarm: dict[int, Node], tmp_path: Path
) -> None:
    mgr = swarm[1]
    (tmp_path / "stack.yml").write_text(STACK.format(model=MODEL, nginx=NGINX, network=NETWORK))
    (tmp_path / "gateway.conf").write_text(GATEWAY_CONF)
    try:
        mgr.docker("stack", "deploy", "-c", str(tmp_path / "stack.yml"), "cgt", timeout=120)
        a = wait_tasks(mgr, "cgt_model-a", 1)[0]
        b = wait_tasks(mgr, "cgt_model-b", 1)[0]
        gw = wait_tasks(mgr, "cgt_gateway", 1)[0]
        assert (a["node"], b["node"], gw["node"]) == ("cgsw-node1", "cgsw-node2", "cgsw-node1")
        assert gpu_env(swarm, a) in fixture_uuids(NODE_CAPTURES[1])
        assert gpu_env(swarm, b) in fixture_uuids(NODE_CAPTURES[2])
        served = {}
        for path in ("a", "b"):
            end, answer = time.monotonic() + 30, ""
            while time.monotonic() < end:
                # traffic stays inside the gateway's container, over the overlay network
                res = subprocess.run(
                    ["docker", "exec", gw["container"], "curl", "-sf", "-m", "3",
                     f"http://127.0.0.1:8080/{path}/probe"],
                    env={**os.environ, "DOCKER_HOST": f"unix://{mgr.sock}"},
                    capture_output=True, text=True, timeout=20,
                )  # fmt: skip
                answer = res.stdout
                if res.returncode == 0:
                    break
                time.sleep(0.5)
            served[path] = json.loads(answer)["served_by"]
        assert served == {"a": "cgsw-node1-model-a", "b": "cgsw-node2-model-b"}
    finally:
        mgr.docker("stack", "rm", "cgt", check=False)
        for node in swarm.values():
            end = time.monotonic() + 30
            while time.monotonic() < end and node.docker(
                "ps", "-aq", "--filter", "label=com.docker.stack.namespace=cgt"
            ):
                time.sleep(0.3)


def test_drain_moves_what_may_move_and_keeps_what_is_pinned(
    swarm: dict[int, Node], services: list[str]
) -> None:
    mgr = swarm[1]
    services += ["free-gpu", "pinned-gpu"]
    # two replicas spread one per node; the pinned one holds a GPU of node 2 only
    gpu_service(mgr, "free-gpu", "--replicas", "2")
    gpu_service(mgr, "pinned-gpu", "--constraint", "node.hostname==cgsw-node2")
    before = wait_tasks(mgr, "free-gpu", 2)
    assert sorted(t["node"] for t in before) == ["cgsw-node1", "cgsw-node2"]
    assert wait_tasks(mgr, "pinned-gpu", 1)[0]["node"] == "cgsw-node2"
    mgr.docker("node", "update", "--availability", "drain", "cgsw-node2")
    try:
        after = wait_tasks(mgr, "free-gpu", 2)
        assert [t["node"] for t in after] == ["cgsw-node1", "cgsw-node1"]
        # each on its own GPU of node 1: both of them, no GPU of the drained node
        assert sorted(gpu_env(swarm, t) for t in after) == sorted(fixture_uuids(NODE_CAPTURES[1]))
        end, pinned = time.monotonic() + 30, tasks(mgr, "pinned-gpu")
        while time.monotonic() < end and not (pinned and pinned[0]["state"] == "pending"):
            time.sleep(0.5)
            pinned = tasks(mgr, "pinned-gpu")
        assert len(pinned) == 1 and pinned[0]["state"] == "pending", pinned
        assert pinned[0]["node"] == "", pinned
    finally:
        mgr.docker("node", "update", "--availability", "active", "cgsw-node2")


def test_bad_arguments_are_refused_before_the_running_bed_is_touched(
    swarm: dict[int, Node],
) -> None:
    bad_uuid = swarm_script("up", "2", gpus={2: ["GPU-1"]})
    assert bad_uuid.returncode == 2
    assert "node 2: 'GPU-1' is not a GPU UUID" in bad_uuid.stderr
    four = swarm_script("up", "4")
    assert four.returncode == 2 and "usage" in four.stderr
    # `up` tears an earlier bed down first: these must not have got that far
    assert len(swarm[1].docker("node", "ls", "-q").split()) == 2


def test_down_leaves_nothing_behind_even_after_a_crash(swarm: dict[int, Node]) -> None:
    """Last in the file: node 2's dockerd dies (SIGKILL, as in a crash: its containerd and task
    containers stay), then `down` must still remove everything; a second `down` is a no-op."""
    prefix = swarm[1].prefix
    before = leftovers(prefix)
    assert any(x.startswith("netns") for x in before), before
    assert any(x.startswith("process") for x in before), before
    anchor = swarm[2].docker(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name=anchor-{NETWORK}"
    )
    task_pid, task_id = (
        swarm[2].docker("inspect", "--format", "{{.State.Pid}} {{.Id}}", anchor.split()[0]).split()
    )
    assert Path(f"/proc/{task_pid}").exists()
    pid = int((WORK / "n2" / "dockerd.pid").read_text())
    os.kill(pid, 9)
    end = time.monotonic() + 10
    while time.monotonic() < end and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    first = swarm_script("down")
    assert first.returncode == 0, first.stderr
    assert leftovers(prefix) == []
    assert not Path(f"/proc/{task_pid}").exists(), "the crashed node's task container lives on"
    assert not list(Path("/sys/fs/cgroup").glob(f"*/docker/{task_id}")), "its cgroups are left"
    again = swarm_script("down")
    assert again.returncode == 0, again.stderr
    assert leftovers(prefix) == []
