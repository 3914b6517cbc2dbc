"""The multi-node Swarm test bed (scripts/swarm.sh) for end-to-end tests: bring it up, talk to
its nodes through their own sockets, wait for tasks, read the GPU a task holds, and list what a
torn-down bed must not leave. See notes/README-swarm-tests.md.

    nodes = swarm_up(2)          # {1: Node, 2: Node}; node 1 is the manager
    try: ...
    finally: swarm_script("down")

Docker 20.10 rejects a task holding a named generic resource whenever its node is updated
("assigned node no longer meets constraints", moby/moby#44378, fixed in 23.0), and a task's first
use of an overlay network on a node is such an update: `anchor_network` keeps a network attached
on every node with a global, GPU-less service before GPU services use it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import _need

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "swarm.sh"
WORK = Path(os.environ.get("COMPOSEGEN_WORK", ROOT / ".ci-work")) / "swarm"
XML = ROOT / "tests" / "fixtures" / "nvidia-smi" / "xml"
# the GPUs each node advertises, read here from the captures themselves (not from the script)
NODE_CAPTURES = {
    1: XML / "openpai__nvidia_smi_sample.xml",
    2: XML / "openpai__nvidia_smi_sample_ecc_unsupported.xml",
}
BUSYBOX = "composegen-test/busybox:1"


def fixture_uuids(path: Path) -> set[str]:
    return set(re.findall(r"<uuid>\s*(GPU-[0-9a-f-]{36})\s*</uuid>", path.read_text()))


@dataclass(frozen=True)
class Node:
    index: int
    sock: str
    host: str
    gpus: frozenset[str]
    prefix: str  # of the test bed's netns, veth and containerd namespace names

    def docker(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}"}
        res = subprocess.run(
            ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} on node {self.index}: {res.stderr}")
        return res.stdout


def swarm_script(
    *args: str, gpus: dict[int, list[str]] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """scripts/swarm.sh; `gpus` gives nodes other GPU UUIDs than their fixtures' (by index)."""
    env = {k: v for k, v in os.environ.items() if not re.fullmatch(r"SWARM_NODE\d+_GPUS", k)}
    env.update({f"SWARM_NODE{i}_GPUS": ",".join(uuids) for i, uuids in (gpus or {}).items()})
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def leftovers(prefix: str) -> list[str]:
    """What a torn-down test bed must not leave: namespaces, node dirs, dockerds, mounts."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {ln.split()[0]}" for ln in netns.splitlines() if ln.startswith(prefix)]
    found += [f"dir {p}" for p in WORK.glob("n[0-9]")]
    mounts = Path("/proc/mounts").read_text().split("\n")
    found += [f"mount {m.split()[1]}" for m in mounts if f" {WORK}/" in m]
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    found += [f"process {ln.strip()}" for ln in ps.splitlines() if f"{WORK}/n" in ln]
    return found


def swarm_up(n: int, gpus: dict[int, list[str]] | None = None) -> dict[int, Node]:
    """`scripts/swarm.sh up N`; a missing prerequisite skips (fails in CI), other errors fail.
    `gpus`: UUIDs per node index instead of its fixture's (e.g. a fleet inventory's). Any
    earlier bed of this checkout is torn down first. The caller runs `swarm_script("down")`
    afterwards, whatever happens."""
    if os.geteuid() != 0:
        _need("the Swarm test bed", "it needs root (network namespaces)", "run as root")
    for tool in ("ip", "nsenter", "unshare", "flock", "dockerd", "docker"):
        if shutil.which(tool) is None:
            _need(
                "the Swarm test bed",
                f"{tool} is missing",
                "apt-get install iproute2 util-linux docker.io",
            )
    up = swarm_script("up", str(n), gpus=gpus)
    if up.returncode == 3:
        _need("the Swarm test bed", up.stderr.strip()[-400:], "see scripts/swarm.sh")
    if up.returncode != 0:
        pytest.fail(f"scripts/swarm.sh up {n} failed:\n{up.stderr[-2000:]}", pytrace=False)
    env = dict(ln.split("=", 1) for ln in up.stdout.splitlines() if "=" in ln)
    return {
        i: Node(
            i,
            env[f"SWARM_NODE{i}_SOCK"],
            env[f"SWARM_NODE{i}_HOST"],
            frozenset(env[f"SWARM_NODE{i}_GPUS"].split(",")),
            env["SWARM_PREFIX"],
        )
        for i in range(1, n + 1)
    }


def anchor_network(mgr: Node, network: str, nodes: int, image: str = BUSYBOX) -> None:
    """An attachable overlay network, held on every node by a global GPU-less service."""
    mgr.docker("network", "create", "-d", "overlay", "--attachable", network)
    mgr.docker(
        "service", "create", "-d", "--name", f"anchor-{network}", "--mode", "global",
        "--network", network, "--stop-grace-period", "1s", image, "sleep", "86400",
    )  # fmt: skip
    wait_tasks(mgr, f"anchor-{network}", nodes)


def tasks(mgr: Node, service: str) -> list[dict[str, Any]]:
    """The service's tasks meant to run: node hostname, state, error, container id."""
    ids = mgr.docker("service", "ps", "-q", "--filter", "desired-state=running", service).split()
    if not ids:
        return []
    out = []
    for t in json.loads(mgr.docker("inspect", *ids)):
        node = json.loads(mgr.docker("node", "inspect", t["NodeID"]))[0] if t.get("NodeID") else {}
        out.append(
            {
                "node": node.get("Description", {}).get("Hostname", ""),
                "state": t["Status"]["State"],
                "err": t["Status"].get("Err", ""),
                "container": t["Status"].get("ContainerStatus", {}).get("ContainerID", ""),
            }
        )
    return out


def wait_tasks(mgr: Node, service: str, n: int, deadline_s: float = 60) -> list[dict[str, Any]]:
    """Poll until `n` tasks of the service run; their details."""
    end = time.monotonic() + deadline_s
    seen: list[dict[str, Any]] = []
    while time.monotonic() < end:
        seen = tasks(mgr, service)
        if len(seen) == n and all(t["state"] == "running" for t in seen):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"{service}: not {n} running tasks within {deadline_s} s: {seen}")


def node_of(nodes: dict[int, Node], host: str) -> Node:
    return next(n for n in nodes.values() if n.host == host)


def gpu_env(nodes: dict[int, Node], task: dict[str, Any]) -> str:
    """DOCKER_RESOURCE_NVIDIA-GPU in the task container's environment, read on its own node."""
    node = node_of(nodes, task["node"])
    env = json.loads(node.docker("inspect", "--format", "{{json .Config.Env}}", task["container"]))
    found = [e.split("=", 1)[1] for e in env if e.startswith("DOCKER_RESOURCE_NVIDIA-GPU=")]
    assert len(found) == 1, f"{task}: {env}"
    return found[0]
