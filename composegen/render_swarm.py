"""Pure: a Plan over a fleet + its Profile -> the files of a Docker Swarm stack, as text.

The stack file (`docker-stack.yml`, for `docker stack deploy`) is the compose target's
service blocks (render.py) turned into Swarm's form:

- each service is placed on its planned node (`deploy.placement.constraints`: the node's
  hostname, or its labels);
- GPUs are reserved as Swarm generic resources (kind NVIDIA-GPU), one per GPU the service is
  the first to hold on its node, so Swarm never puts more GPU services on a node than it has
  GPUs; the exact GPU is pinned by `NVIDIA_VISIBLE_DEVICES=<uuid>`, which the NVIDIA runtime
  (the node's default runtime) reads. Swarm has no device requests: `deploy.resources
  .reservations.devices` is Compose-only;
- what Swarm ignores or refuses (restart, depends_on, security_opt, shm_size) becomes its Swarm
  form (deploy.restart_policy, a tmpfs /dev/shm) or is left out;
- overlay networks (backend internal), named volumes (local: one per node a task runs on);
- the gateway (on the first node) reaches every replica by its Swarm service name: one Swarm
  service per replica, so nginx's `server NAME:PORT` lines are the compose target's. With
  nginx 1.27.3+ (`resolve`) every service answers by its task's address (`endpoint_mode:
  dnsrr`); an older gateway image resolves once, so the names are virtual IPs (`vip`).

The node files (`swarm/`) come from composegen.swarm_nodes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from composegen import __version__
from composegen import render as compose
from composegen.errors import BadInputError
from composegen.files import OutFile
from composegen.inventory import Inventory
from composegen.plan import Instance, Plan
from composegen.profiles import Profile

STACK_FILE = "docker-stack.yml"
GPU_KIND = "NVIDIA-GPU"
STACK_VERSION = "3.8"  # the Docker CLI's stack loader validates against its 3.x schemas
NGINX_CONF = "nginx/nginx.conf"
AUTH_CONF = "nginx/auth.conf"
AUTH_DIR = "/run/secrets"  # where Swarm mounts the gateway's API key map (a secret)
RESOLVE_SINCE = (1, 27, 3)  # nginx open source takes `server ... resolve` from 1.27.3

_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_GPU_UUID = re.compile(r"GPU-[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")
_SIZE = re.compile(r"(\d+)\s*([bkmg]?)b?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class SwarmNode(Protocol):
    """What the swarm target reads of a fleet node (composegen.fleet.Node)."""

    @property
    def name(self) -> str: ...
    @property
    def hostname(self) -> str | None: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def inventory(self) -> Inventory: ...


@dataclass(frozen=True)
class SwarmOptions:
    # nginx `resolve` on the upstream servers; None: when the gateway image's tag says 1.27.3+
    resolve: bool | None = None
    # A fallback's re-render (engine/swarm_failover.py): GPU services updated `start-first`
    # (make before break, where the node's GPU count allows it), and with nginx `resolve` the
    # gateway's routes kept as this plan has them: a name whose service the re-plan removed
    # then resolves to nothing, and the gateway is not restarted. Without `resolve` nginx
    # would fail on that name at its next start: its routes follow the plan, and it restarts.
    start_first: frozenset[str] = frozenset()
    gateway_plan: Plan | None = None


def _where(node: SwarmNode) -> str:
    return f"fleet node {node.name!r}"


def placement(node: SwarmNode) -> list[str]:
    """The node's placement constraints: its hostname (its name when the fleet gives neither
    a hostname nor labels), else every label; each value checked before it goes into YAML."""
    if node.hostname or not node.labels:
        host = node.hostname or node.name
        if not _HOSTNAME.fullmatch(host):
            raise BadInputError(
                f"{_where(node)}: hostname {host!r} is not a host name",
                "use the name `docker node ls` shows for the node",
            )
        return [f"node.hostname == {host}"]
    out = []
    for key, value in sorted(node.labels.items()):
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise BadInputError(
                f"{_where(node)}: label {key}={value!r}: keys and values may hold only "
                "A-Z a-z 0-9 . _ -",
                "set the label with `docker node update --label-add KEY=VALUE NODE`",
            )
        out.append(f"node.labels.{key} == {value}")
    return out


def shm_bytes(text: str, where: str) -> int:
    """A shm_size ("32g", "512m", "1gb") in bytes, for the tmpfs /dev/shm Swarm mounts."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise BadInputError(f"{where}: shm_size {text!r} is not a size", "e.g. 16g or 512m")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def nginx_takes_resolve(image: str) -> bool:
    """Whether an nginx image's tag names a version with `server ... resolve` (1.27.3+)."""
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", tag)
    return m is not None and tuple(int(x) for x in m.groups()) >= RESOLVE_SINCE


def _nodes_by_name(plan: Plan, nodes: Sequence[SwarmNode]) -> dict[str, SwarmNode]:
    if not nodes:
        raise BadInputError("the swarm target needs a fleet", "render --fleet fleet.yaml")
    by_name = {n.name: n for n in nodes}
    for inst in plan.instances:
        if inst.node is None:
            raise BadInputError(
                f"{inst.name}: the plan gives it no node; the swarm target places every "
                "service on a fleet node",
                "plan over a fleet: render --fleet fleet.yaml --target swarm",
            )
        if inst.node not in by_name:
            raise BadInputError(
                f"{inst.name}: planned on node {inst.node!r}, which the fleet does not list",
                f"fleet nodes: {', '.join(by_name)}",
            )
        for uuid in inst.device_ids if inst.device == "gpu" else ():
            if not _GPU_UUID.fullmatch(uuid):
                raise BadInputError(
                    f"{inst.name}: GPU {uuid!r} is not a GPU UUID; on a swarm every GPU is "
                    "pinned by UUID (indices repeat across nodes)",
                    f"save node {inst.node}'s inventory with `composegen detect --save` there",
                )
    return by_name


def gpu_reservations(plan: Plan) -> dict[str, int]:
    """GPUs each instance reserves from Swarm: those it is the first (in plan order) to hold
    on its node. Instances that share a GPU reserve it once, so Swarm's count per node is the
    number of distinct GPUs the plan uses there."""
    seen: set[tuple[str | None, str]] = set()
    out: dict[str, int] = {}
    for inst in plan.instances:
        if inst.device != "gpu":
            continue
        new = [u for u in inst.device_ids if (inst.node, u) not in seen]
        seen.update((inst.node, u) for u in new)
        out[inst.name] = len(new)
    return out


def _restart_policy() -> dict[str, Any]:
    # `any`: as the compose target's unless-stopped; each restart is a new container, which
    # also brings back a GPU that a container lost (NVML "Unknown Error")
    return {"condition": "any", "delay": "5s", "window": "60s"}


def _swarm_block(
    prof: Profile,
    plan: Plan,
    inst: Instance,
    node: SwarmNode,
    reserve: int,
    endpoints: str,
    start_first: bool = False,
) -> dict[str, Any]:
    block = compose._service_block(prof, plan, inst, False, frozenset())
    for key in ("restart", "depends_on", "security_opt"):  # Swarm ignores them
        block.pop(key, None)
    env = dict(block.get("environment") or {})
    if inst.device == "gpu":
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(inst.device_ids)
        env.setdefault("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")
    else:
        # the NVIDIA runtime is every node's default: an image that sets
        # NVIDIA_VISIBLE_DEVICES=all (ollama/ollama does) would get every GPU of the node
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    block["environment"] = env
    block["labels"]["io.composegen.node"] = node.name
    shm = block.pop("shm_size", None)
    if shm:
        where = f"services.{inst.service}"
        tmpfs = {"type": "tmpfs", "target": "/dev/shm", "tmpfs": {"size": shm_bytes(shm, where)}}
        block["volumes"] = [*block.get("volumes", []), tmpfs]
    deploy = dict(block.pop("deploy", {}))
    resources = dict(deploy.get("resources") or {})
    resources.pop("reservations", None)
    if reserve:
        spec = {"kind": GPU_KIND, "value": reserve}
        resources["reservations"] = {"generic_resources": [{"discrete_resource_spec": spec}]}
    swarm: dict[str, Any] = {
        "mode": "replicated",
        "replicas": 1,
        "endpoint_mode": endpoints,
        "placement": {"constraints": placement(node)},
    }
    if resources:
        swarm["resources"] = resources
    swarm["restart_policy"] = _restart_policy()
    # a GPU service cannot start its new task before the old one frees the GPU, unless a
    # fallback moves it to another GPU with room for both reservations (start_first)
    swarm["update_config"] = {
        "order": "stop-first" if inst.device == "gpu" and not start_first else "start-first",
        "failure_action": "rollback",
    }
    swarm["labels"] = {k: v for k, v in block["labels"].items() if k.startswith("io.composegen.")}
    block["deploy"] = swarm
    return block


def _config_name(prof: Profile, what: str, text: str) -> str:
    # Swarm configs and secrets cannot change: a new content gets a new name
    return f"{prof.name}-{what}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


def takes_resolve(prof: Profile, opts: SwarmOptions) -> bool:
    if opts.resolve is not None:
        return opts.resolve
    return nginx_takes_resolve(prof.images[prof.gateway.image])


def endpoint_mode(resolve: bool) -> str:
    """How Swarm answers a service name. With `resolve` nginx looks names up again at run time,
    so `dnsrr` (the task's own address) serves, and no IPVS virtual IP sits between the gateway
    and a replica (long streaming responses, nodes without IPVS). Without it nginx resolves
    once at start, and only a `vip` name resolves while a service has no running task."""
    return "dnsrr" if resolve else "vip"


def gateway_conf(prof: Profile, plan: Plan, opts: SwarmOptions) -> str:
    resolve = takes_resolve(prof, opts)
    return str(
        compose._env()
        .get_template("nginx.conf.j2")
        .render(
            version=__version__,
            profile=prof,
            gw=prof.gateway,
            groups=compose._groups(prof, plan),
            dropped=compose._dropped_routes(prof, plan),
            mode="swarm",
            nginx_dir=AUTH_DIR,
            resolve=resolve,
        )
    )


def stack_data(
    prof: Profile,
    plan: Plan,
    nodes: Sequence[SwarmNode],
    conf: str,
    auth: str | None = None,
    opts: SwarmOptions = SwarmOptions(),
) -> dict[str, Any]:
    by_name = _nodes_by_name(plan, nodes)
    endpoints = endpoint_mode(takes_resolve(prof, opts))
    gw = prof.gateway
    gw_node = nodes[0]
    configs = {
        "gateway-nginx": {"name": _config_name(prof, "nginx", conf), "file": f"./{NGINX_CONF}"}
    }
    gateway: dict[str, Any] = {
        "image": prof.images[gw.image],
        "command": ["nginx", "-g", "daemon off;", "-c", f"{compose.NGINX_DIR}/nginx.conf"],
        # published on the gateway's node only (Swarm publishes on every address of it:
        # it has no host_ip; a firewall or the node's own address keeps it private)
        "ports": [{"target": gw.port, "published": gw.port, "protocol": "tcp", "mode": "host"}],
        "configs": [{"source": "gateway-nginx", "target": f"{compose.NGINX_DIR}/nginx.conf"}],
        "environment": {"NVIDIA_VISIBLE_DEVICES": "void"},
        "healthcheck": compose.gateway_healthcheck(gw.port),
        "labels": {**compose.gateway_labels(prof.name), "io.composegen.node": gw_node.name},
        "networks": ["edge", "backend"],
        "stop_grace_period": "10s",
        "deploy": {
            "mode": "replicated",
            "replicas": 1,
            "endpoint_mode": endpoints,
            "placement": {"constraints": placement(gw_node)},
            "restart_policy": _restart_policy(),
            "update_config": {"order": "stop-first", "failure_action": "rollback"},
        },
    }
    data: dict[str, Any] = {"version": STACK_VERSION, "services": {"gateway": gateway}}
    secrets: dict[str, Any] = {}
    if auth is not None:
        secrets["gateway-auth"] = {
            "name": _config_name(prof, "auth", auth),
            "file": f"./{AUTH_CONF}",
        }
        gateway["secrets"] = [{"source": "gateway-auth", "target": "auth.conf", "mode": 0o400}]
    reserve = gpu_reservations(plan)
    for inst in plan.instances:
        node = by_name[str(inst.node)]
        data["services"][inst.name] = _swarm_block(
            prof, plan, inst, node, reserve.get(inst.name, 0), endpoints,
            inst.name in opts.start_first,
        )  # fmt: skip
    data["networks"] = {
        "backend": {"driver": "overlay", "internal": True},
        "edge": {"driver": "overlay"},
    }
    volumes = compose._volumes(prof, plan)
    if volumes:
        data["volumes"] = {k: {"driver": "local", **v} for k, v in volumes.items()}
    data["configs"] = configs
    if secrets:
        data["secrets"] = secrets
    return data


def node_rows(prof: Profile, plan: Plan, nodes: Sequence[SwarmNode]) -> list[dict[str, Any]]:
    """Per node, for STACK.md: its placement, GPUs, the services on it and the volumes they use."""
    reserve = gpu_reservations(plan)
    rows = []
    for n, node in enumerate(nodes):
        insts = [i for i in plan.instances if i.node == node.name]
        volumes = sorted(
            {
                v.split(":", 1)[0]
                for i in insts
                for v in compose._instance_volumes(prof.service(i.service), i)
            }
        )
        rows.append(
            {
                "name": node.name,
                "placement": " && ".join(placement(node)),
                "gpus": len(node.inventory.gpus),
                "gateway": n == 0,
                "services": [
                    {
                        "name": i.name,
                        "uuids": list(i.device_ids) if i.device == "gpu" else [],
                        "reserved": reserve.get(i.name, 0),
                    }
                    for i in insts
                ],
                "volumes": [f"{prof.name}_{v}" for v in volumes],
            }
        )
    return rows


def render_swarm(
    prof: Profile,
    plan: Plan,
    nodes: Sequence[SwarmNode],
    opts: SwarmOptions = SwarmOptions(),
) -> list[OutFile]:
    from composegen import swarm_nodes

    header = (
        f"# Rendered by composegen {__version__} from profile {prof.name} "
        f"({compose.one_line(plan.inventory_source)}) for Docker Swarm: "
        f"docker stack deploy -c {STACK_FILE} {prof.name}\n"
    )
    resolve = takes_resolve(prof, opts)
    conf = gateway_conf(prof, (opts.gateway_plan if resolve else None) or plan, opts)
    auth = compose.auth_conf(prof.gateway.api_key) if prof.gateway.api_key else None
    data = stack_data(prof, plan, nodes, conf, auth, opts)
    stack_md = (
        compose._env()
        .get_template("STACK.swarm.md.j2")
        .render(
            version=__version__,
            profile=prof,
            plan=plan,
            gw=prof.gateway,
            stack_file=STACK_FILE,
            kind=GPU_KIND,
            nodes=node_rows(prof, plan, nodes),
        )
    )
    files = [
        OutFile(STACK_FILE, compose.dump_yaml(data, header)),
        OutFile(NGINX_CONF, conf),
        OutFile("STACK.md", stack_md),
    ]
    if auth is not None:
        files.append(OutFile(AUTH_CONF, auth, 0o600))
    files += swarm_nodes.node_files(prof, nodes)
    return files
