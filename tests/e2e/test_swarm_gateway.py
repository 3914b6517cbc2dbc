"""The swarm target's gateway on a real two-node Swarm (scripts/swarm.sh, tests/e2e/swarm_bed.py).

A real profile (ollama-pool) is rendered with `render --fleet F --target swarm` for the bed's
nodes (their nvidia-smi captures as inventories) with the local test images: the Ollama stand-in
and the nginx-resolve image (Debian forky's nginx, >= 1.27.3), so the stack has `endpoint_mode:
dnsrr` services and nginx upstreams with `server NAME resolve`. It is deployed with `docker stack
deploy`, first with every backend at 0 replicas, then as rendered. The gateway must start and be
healthy with no backend task, reach the backends once they run and a replaced task at its new
address, all without a reload, and spread requests over replicas on both nodes.

Requests go through the gateway from inside its own container (curl to 127.0.0.1:8080), the port
it publishes on node 1's network namespace. Figures (convergence time, rejected tasks of Docker
20.10, moby#44378) are printed: run with -s to see them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.e2e.swarm_bed import (
    NODE_CAPTURES,
    Node,
    leftovers,
    swarm_script,
    swarm_up,
    tasks,
    wait_tasks,
)

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
STACK = "cgswgw"
PROFILE = "ollama-pool"
T = TypeVar("T")


@dataclass
class Deployment:
    mgr: Node
    nodes: dict[int, Node]
    out: Path  # the rendered stack
    backends: list[str]  # Swarm service names of the Ollama replicas
    valid_s: int  # nginx's resolver valid= in the rendered nginx.conf
    gateway: str = ""  # the gateway's container id on node 1
    workers: list[str] = field(default_factory=list)  # its nginx worker pids at first sight
    full: bool = False  # deployed as rendered (every backend at its replicas)
    figures: dict[str, Any] = field(default_factory=dict)


def wait_for(check: Callable[[], T | None], what: str, timeout: float, step: float = 0.5) -> T:
    """Poll `check` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {value!r})")
        time.sleep(step)
        value = check()
    return value


def render(out: Path, fleet: Path, nginx: str, ollama: str) -> None:
    cmd = [
        sys.executable, "-m", "composegen", "render", "--profile", PROFILE,
        "--fleet", str(fleet), "--target", "swarm", "-o", str(out),
        "--image", f"nginx={nginx}", "--image", f"ollama={ollama}",
        # the stand-in answers at once: probe it every 2 s rather than the profile's 30 s
        "--set", "services.ollama.health.interval=2s",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def deploy(mgr: Node, stack_file: Path) -> None:
    mgr.docker("stack", "deploy", "-c", str(stack_file), STACK, timeout=120)


def gateway_exec(dep: Deployment, *cmd: str) -> str:
    return dep.mgr.docker("exec", dep.gateway, *cmd, timeout=30)


def through_gateway(dep: Deployment, path: str) -> tuple[int, str]:
    """One request through the gateway: (HTTP status, body); (0, error) when curl fails."""
    res = subprocess.run(
        ["docker", "exec", dep.gateway, "curl", "-sS", "-m", "8", "-w", "\n%{http_code}",
         f"http://127.0.0.1:8080{path}"],
        env={**os.environ, "DOCKER_HOST": f"unix://{dep.mgr.sock}"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if res.returncode != 0:
        return 0, res.stderr
    body, _, status = res.stdout.rpartition("\n")
    return int(status), body


def served_by(dep: Deployment) -> str | None:
    status, body = through_gateway(dep, "/api/version")
    return json.loads(body)["served_by"] if status == 200 else None


def worker_pids(dep: Deployment) -> list[str]:
    """nginx's worker pids in the gateway container (a reload replaces them)."""
    script = (  # not this shell, whose own command line holds the words
        'for p in /proc/[0-9]*; do [ "${p#/proc/}" != $$ ] && '
        'grep -qs "worker process" $p/cmdline && echo ${p#/proc/}; done; true'
    )
    pids = sorted(gateway_exec(dep, "sh", "-c", script).split())
    assert pids, "no nginx worker process in the gateway"
    return pids


def gateway_health(dep: Deployment) -> tuple[str, int]:
    state = json.loads(dep.mgr.docker("inspect", "--format", "{{json .State}}", dep.gateway))
    return state["Health"]["Status"], int(
        dep.mgr.docker("inspect", "--format", "{{.RestartCount}}", dep.gateway)
    )


def all_tasks(mgr: Node, service: str) -> list[str]:
    """State and error of every task the service ever had (Swarm keeps the history)."""
    out = mgr.docker(
        "service", "ps", "--no-trunc", "--format", "{{.CurrentState}}|{{.Error}}", service
    )
    return [line for line in out.splitlines() if line]


def rejected(dep: Deployment) -> list[str]:
    return [t for s in dep.backends for t in all_tasks(dep.mgr, s) if t.startswith("Rejected")]


def assert_gateway_never_replaced_or_reloaded(dep: Deployment) -> None:
    gw_tasks = all_tasks(dep.mgr, f"{STACK}_gateway")
    assert len(gw_tasks) == 1 and gw_tasks[0].startswith("Running"), gw_tasks
    assert gateway_health(dep) == ("healthy", 0)
    assert worker_pids(dep) == dep.workers  # the same nginx workers: no reload since the start


def deploy_full(dep: Deployment) -> None:
    """The stack as rendered (idempotent); the first time, record how it converged."""
    if dep.full:
        return
    started = time.monotonic()
    deploy(dep.mgr, dep.out / "docker-stack.yml")
    for service in dep.backends:
        wait_tasks(dep.mgr, service, 1, deadline_s=90)
    dep.full = True
    dep.figures["converged_s"] = round(time.monotonic() - started, 1)
    dep.figures["rejected_tasks"] = len(rejected(dep))
    print(f"\nswarm gateway: deploy converged in {dep.figures['converged_s']} s with "
          f"{dep.figures['rejected_tasks']} rejected task(s): {rejected(dep)}")  # fmt: skip


def watch_gateway_start(dep: Deployment, deadline_s: float = 60) -> dict[str, Any]:
    """Poll the gateway's task from its creation until Swarm reports it running; record each
    (task state, container health) seen in dep.figures["gateway_start"]. The state is read
    before the health, so "running" with a health short of "healthy" would be Swarm's doing."""
    seen: list[tuple[str, str]] = []
    dep.figures["gateway_start"] = seen
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        now = tasks(dep.mgr, f"{STACK}_gateway")
        if len(now) == 1 and now[0]["container"]:
            health = dep.mgr.docker(
                "inspect", "--format", "{{.State.Health.Status}}", now[0]["container"],
                check=False,
            ).strip()  # fmt: skip
            seen.append((now[0]["state"], health))
            if now[0]["state"] == "running":
                dep.figures["gateway_running_s"] = round(time.monotonic() - started, 1)
                return now[0]
        time.sleep(0.3)
    raise AssertionError(f"the gateway's task is not running within {deadline_s} s: {seen}")


@pytest.fixture(scope="module")
def deployment(
    tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The bed, the rendered stack, deployed with every backend at 0 replicas; always down."""
    work = tmp_path_factory.mktemp("swarm-gateway")
    fleet = work / "fleet.yaml"
    fleet.write_text(
        yaml.safe_dump(
            {
                "nodes": [
                    {"name": f"node{i}", "hostname": f"cgsw-node{i}", "inventory": str(path)}
                    for i, path in sorted(NODE_CAPTURES.items())
                ]
            }
        )
    )
    out = work / "stack"
    render(out, fleet, tags["nginx-resolve"], tags["ollama"])
    doc = yaml.safe_load((out / "docker-stack.yml").read_text())
    conf = (out / "nginx" / "nginx.conf").read_text()
    found = re.search(r"resolver 127\.0\.0\.11 valid=(\d+)s", conf)
    assert found and " resolve " in conf, conf  # the image's tag turned `resolve` on
    backends = sorted(n for n in doc["services"] if n != "gateway")
    # held: the same stack, no backend task at all
    held = out / "held.yml"
    for name in backends:
        doc["services"][name]["deploy"]["replicas"] = 0
    held.write_text(yaml.safe_dump(doc, sort_keys=False))
    nodes: dict[int, Node] = {}
    try:
        nodes = swarm_up(2)
        dep = Deployment(
            nodes[1], nodes, out, [f"{STACK}_{n}" for n in backends], int(found.group(1))
        )
        deploy(dep.mgr, held)
        gw = watch_gateway_start(dep)
        assert gw["node"] == "cgsw-node1"
        dep.gateway = gw["container"]
        dep.workers = worker_pids(dep)
        yield dep
    finally:
        down = swarm_script("down")
        assert down.returncode == 0, down.stderr[-2000:]
        if nodes:
            assert leftovers(nodes[1].prefix) == []


def test_gateway_is_healthy_while_no_backend_task_runs(deployment: Deployment) -> None:
    dep = deployment
    assert not dep.full, "run this module's tests in file order"
    # Swarm held the task at "starting" while its healthcheck had not passed, "running" after
    seen = dep.figures["gateway_start"]
    assert ("starting", "starting") in seen, seen
    assert all(health == "healthy" for state, health in seen if state == "running"), seen
    print(f"\nswarm gateway: running (healthy) {dep.figures['gateway_running_s']} s after deploy")
    assert gateway_health(dep) == ("healthy", 0)
    for service in dep.backends:
        assert tasks(dep.mgr, service) == []
    assert through_gateway(dep, "/healthz")[0] == 200
    assert through_gateway(dep, "/api/version")[0] == 502  # no backend address yet
    assert_gateway_never_replaced_or_reloaded(dep)


def test_gateway_reaches_the_backends_once_they_run_on_both_nodes(
    deployment: Deployment,
) -> None:
    dep = deployment
    deploy_full(dep)
    running = {s: wait_tasks(dep.mgr, s, 1)[0] for s in dep.backends}
    by_container = {t["container"][:12]: t["node"] for t in running.values()}
    assert set(by_container.values()) == {"cgsw-node1", "cgsw-node2"}
    seen: set[str] = set()

    def all_reached() -> bool:
        who = served_by(dep)
        if who:
            seen.add(who)
        return seen == set(by_container)

    # the names resolve again within valid= (plus a failed lookup's resolver timeout, 30 s)
    started = time.monotonic()
    wait_for(all_reached, f"requests reach {sorted(by_container)}", dep.valid_s + 45, step=0.2)
    print(f"\nswarm gateway: every replica reached {time.monotonic() - started:.1f} s after "
          "they all ran")  # fmt: skip
    assert {by_container[c] for c in seen} == {"cgsw-node1", "cgsw-node2"}
    assert_gateway_never_replaced_or_reloaded(dep)


def test_gateway_reaches_a_replaced_task_at_its_new_address(deployment: Deployment) -> None:
    dep = deployment
    deploy_full(dep)
    victim_service = next(s for s in dep.backends if tasks(dep.mgr, s)[0]["node"] == "cgsw-node2")
    (old,) = wait_tasks(dep.mgr, victim_service, 1)
    node2 = dep.nodes[2]
    old_ip = json.loads(
        node2.docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", old["container"])
    )[f"{STACK}_backend"]["IPAddress"]
    node2.docker("kill", old["container"])

    def replaced() -> dict[str, Any] | None:
        now = tasks(dep.mgr, victim_service)
        fresh = [t for t in now if t["container"] and t["container"] != old["container"]]
        return fresh[0] if len(now) == 1 and fresh and fresh[0]["state"] == "running" else None

    new = wait_for(replaced, f"{victim_service}: a new running task", 60)
    new_ip = json.loads(
        node2.docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", new["container"])
    )[f"{STACK}_backend"]["IPAddress"]
    assert new_ip != old_ip, "Swarm gave the new task the old address: nothing to re-resolve"
    running_at = time.monotonic()
    # within nginx's valid= (+5 s: a request to the dead address waits out proxy_connect_timeout)
    wait_for(
        lambda: served_by(dep) == new["container"][:12],
        f"the gateway reaches the new task {new['container'][:12]} at {new_ip}",
        dep.valid_s + 5,
        step=0.2,
    )
    dep.figures["new_task_reached_s"] = round(time.monotonic() - running_at, 1)
    print(f"\nswarm gateway: new task {new_ip} (was {old_ip}) reached "
          f"{dep.figures['new_task_reached_s']} s after Swarm reported it running")  # fmt: skip
    assert_gateway_never_replaced_or_reloaded(dep)
