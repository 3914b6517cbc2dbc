"""Pure: the files that prepare each fleet node for the swarm stack, under swarm/.

Per node: `daemon.json` (the keys to merge into /etc/docker/daemon.json: the node's GPUs as
Swarm generic resources, the NVIDIA runtime as the default runtime) and
`nvidia-container-runtime.toml` (the config.toml line about Swarm's resource variable); one
README.md with the exact commands, node by node; nodes.json, what deploy and status read of
the fleet (each node's placement, GPU UUIDs and engine address).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from typing import Any

from composegen.errors import BadInputError
from composegen.files import OutFile
from composegen.profiles import Profile
from composegen.render_swarm import _GPU_UUID, GPU_KIND, STACK_FILE, SwarmNode, placement

NODES_FILE = "swarm/nodes.json"
RUNTIME_CONFIG = "/etc/nvidia-container-runtime/config.toml"
SWARM_RESOURCE = f"DOCKER_RESOURCE_{GPU_KIND}"
_NODE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def node_dir(node: SwarmNode) -> str:
    if not _NODE_NAME.fullmatch(node.name):
        raise BadInputError(
            f"fleet node {node.name!r}: a node name may hold only a-z 0-9 -",
            "rename it in the fleet file",
        )
    return f"swarm/{node.name}"


def advertised(node: SwarmNode) -> list[str]:
    """The node's GPUs as `node-generic-resources` entries: NVIDIA-GPU=<uuid>, index order.
    A GPU without a UUID cannot be named to Swarm and is left out (STACK.md says the plan
    pins by UUID anyway)."""
    return [
        f"{GPU_KIND}={g.uuid}"
        for g in sorted(node.inventory.gpus, key=lambda g: g.index)
        if g.uuid and _GPU_UUID.fullmatch(g.uuid)
    ]


def daemon_json(node: SwarmNode) -> dict[str, Any]:
    return {
        "default-runtime": "nvidia",
        "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
        "node-generic-resources": advertised(node),
    }


def runtime_toml() -> str:
    return (
        f"# A line for {RUNTIME_CONFIG} on this node (top level, before any [section]).\n"
        "#\n"
        "# composegen's swarm stack pins each GPU service to its planned GPU with\n"
        "# NVIDIA_VISIBLE_DEVICES=<uuid>. With the line below active, the NVIDIA runtime takes\n"
        f"# the GPUs Swarm assigned ({SWARM_RESOURCE}) INSTEAD of NVIDIA_VISIBLE_DEVICES\n"
        "# whenever a task has that variable, and Swarm picks any free GPU of the node: the pin\n"
        "# would be lost. Keep it commented while the stack pins GPUs (the default); enable it\n"
        "# only for services that reserve GPUs without a pin.\n"
        f'#swarm-resource = "{SWARM_RESOURCE}"\n'
    )


def readme(prof: Profile, nodes: Sequence[SwarmNode]) -> str:
    q = shlex.quote
    lines = [
        f"# Preparing the fleet's nodes for {prof.name} on Docker Swarm",
        "",
        "Each node needs the NVIDIA driver, Docker and the NVIDIA Container Toolkit "
        "(nvidia-container-runtime). Then, on each node, as root:",
        "",
    ]
    for node in nodes:
        d = node_dir(node)
        gpus = advertised(node)
        lines += [
            f"## {node.name} ({' && '.join(placement(node))}, {len(gpus)} GPUs)",
            "",
            "```sh",
            "# 1. the NVIDIA runtime as the default runtime, and this node's GPUs as Swarm",
            "#    generic resources: merge the fragment into daemon.json (jq keeps other keys)",
            "test -s /etc/docker/daemon.json || echo '{}' > /etc/docker/daemon.json",
            f"jq -s '.[0] * .[1]' /etc/docker/daemon.json {q(d + '/daemon.json')} "
            "> /etc/docker/daemon.json.new",
            "mv /etc/docker/daemon.json.new /etc/docker/daemon.json",
            f"# 2. read {d}/nvidia-container-runtime.toml: keep swarm-resource commented "
            "(the stack pins GPUs by UUID)",
            "systemctl restart docker",
            "# 3. check: the default runtime, and the GPUs this node offers to Swarm",
            "docker info --format '{{.DefaultRuntime}}'   # nvidia",
            "docker node inspect self --format '{{json .Description.Resources.GenericResources}}'",
            "```",
            "",
        ]
        if node.labels and not node.hostname:
            adds = " ".join(f"--label-add {q(f'{k}={v}')}" for k, v in sorted(node.labels.items()))
            lines += [
                "On a manager, give the node its labels (NODE: its name in `docker node ls`):",
                "",
                "```sh",
                f"docker node update {adds} NODE",
                "```",
                "",
            ]
    lines += [
        "## Deploy",
        "",
        "On a manager, in this directory:",
        "",
        "```sh",
        f"docker stack deploy -c {STACK_FILE} {q(prof.name)}",
        f"docker stack ps {q(prof.name)}   # each task on its planned node",
        "```",
        "",
    ]
    return "\n".join(lines)


def nodes_json(prof: Profile, nodes: Sequence[SwarmNode]) -> dict[str, Any]:
    """swarm/nodes.json: per node its placement, GPUs and engine, so that deploy and status
    know the fleet without the fleet file (composegen.swarm_stack reads it)."""
    return {
        "profile": prof.name,
        "nodes": [
            {
                "name": node.name,
                # as placement() places it: the hostname, else the labels, else the name
                "hostname": node.hostname or (None if node.labels else node.name),
                "labels": dict(node.labels),
                "placement": placement(node),
                "engine": getattr(node, "engine", None),
                "gpus": [a.split("=", 1)[1] for a in advertised(node)],
            }
            for node in nodes
        ],
    }


def node_files(prof: Profile, nodes: Sequence[SwarmNode]) -> list[OutFile]:
    files = [OutFile(NODES_FILE, json.dumps(nodes_json(prof, nodes), indent=2) + "\n")]
    for node in nodes:
        d = node_dir(node)
        files.append(OutFile(f"{d}/daemon.json", json.dumps(daemon_json(node), indent=2) + "\n"))
        files.append(OutFile(f"{d}/nvidia-container-runtime.toml", runtime_toml()))
    files.append(OutFile("swarm/README.md", readme(prof, nodes)))
    return files
