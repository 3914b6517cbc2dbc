"""The swarm target (composegen/render_swarm.py, swarm_nodes.py): a plan over a fleet -> a stack
for `docker stack deploy` and the node files under swarm/.

Fleet plans are built here the way the fleet planner numbers them (node order, then the node's
GPUs; every instance carries its node), from real inventories: two nvidia-smi XML captures
(2x GTX 1070, 2x RTX 2080 Ti) and the fake-NVML A100 scenarios. The stack is checked as data,
against the official Compose schema, by Compose v2's `config -q` and by the Docker CLI's own
stack loader (`docker stack config`, client side: no swarm is touched).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from composegen import profiles
from composegen.detect.sources import load_inventory
from composegen.errors import BadInputError
from composegen.files import OutFile
from composegen.inventory import Inventory
from composegen.plan import Instance, Plan, make_plan
from composegen.render_swarm import STACK_FILE, SwarmOptions, render_swarm
from tests.compose_cli import clean_env, need_compose_v2
from tests.stack_checks import need, parse_nginx, scenario_inventory, schema_errors

ROOT = Path(__file__).resolve().parents[2]
XML = ROOT / "tests" / "fixtures" / "nvidia-smi" / "xml"
COMPOSE_SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec" / "compose-spec__compose-spec.json"

# the UUIDs as the captures print them
GTX_1070 = ("GPU-e511a7b2-f9d5-ba47-9b98-853732ca6c1b", "GPU-28daffaf-8abe-aaf8-c298-4bd13aecb5e6")
RTX_2080TI = (
    "GPU-57567e11-0be2-381b-5132-2ad95c262e58",
    "GPU-ef1d0068-5bfd-f1e4-7e79-ff35d71d44b8",
)
A100_80 = tuple(f"GPU-00a10080-0000-4000-8000-00000000000{i}" for i in range(8))


@dataclass(frozen=True)
class Node:
    """A fleet node as composegen.fleet.Node gives it (the fleet contract)."""

    name: str
    inventory: Inventory
    hostname: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def fleet_plan(prof: profiles.Profile, nodes: list[Node]) -> Plan:
    """Each node planned on its own, merged as the fleet planner numbers a fleet: replicas
    renumbered across nodes, GPU numbers offset by the GPUs of the nodes before."""
    out: list[Instance] = []
    base = 0
    replica: dict[str, int] = {}
    first: Plan | None = None
    for node in nodes:
        plan = make_plan(node.inventory, prof)
        first = first or plan
        for inst in plan.instances:
            svc = prof.service(inst.service)
            if svc.gpu is not None and isinstance(svc.gpu.replicas, str):
                r = replica.get(svc.name, 0)
                replica[svc.name] = r + 1
                port = svc.port + r if svc.port_per_instance else svc.port
                inst = replace(inst, name=f"{svc.name}-{r}", replica=r, port=port)
            elif any(i.name == inst.name for i in out):
                continue  # a fixed service runs once in the fleet: on the first node
            out.append(replace(inst, node=node.name, gpus=tuple(g + base for g in inst.gpus)))
        base += len(node.inventory.gpus)
    assert first is not None
    return replace(first, instances=tuple(out), inventory_source="fleet.yaml")


def files_of(files: list[OutFile]) -> dict[str, str]:
    return {f.path: f.text for f in files}


def stack_of(files: list[OutFile]) -> dict[str, Any]:
    data = yaml.safe_load(files_of(files)[STACK_FILE])
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def pair() -> list[Node]:
    """Two workstations with two cards each: one placed by hostname, one by a label."""
    return [
        Node("gpu-a", load_inventory(str(XML / "openpai__nvidia_smi_sample.xml")), "ws-a"),
        Node(
            "gpu-b",
            load_inventory(str(XML / "openpai__nvidia_smi_sample_ecc_unsupported.xml")),
            labels={"composegen.node": "gpu-b"},
        ),
    ]


@pytest.fixture(scope="module")
def replicas(pair: list[Node]) -> tuple[profiles.Profile, Plan, list[OutFile]]:
    prof = profiles.load("ollama-replicas")
    plan = fleet_plan(prof, pair)
    return prof, plan, render_swarm(prof, plan, pair)


@pytest.fixture(scope="module")
def rag() -> tuple[profiles.Profile, Plan, list[OutFile], list[Node]]:
    nodes = [Node("a100-a", scenario_inventory("a100_8x80"), "dgx-a")]
    prof = profiles.load("rag-a100")
    plan = fleet_plan(prof, nodes)
    return prof, plan, render_swarm(prof, plan, nodes), nodes


# --- placement, GPUs, pins ----------------------------------------------------------------------


def test_each_service_is_constrained_to_its_node(replicas: Any) -> None:
    _, _, files = replicas
    services = stack_of(files)["services"]
    on = {
        name: block["deploy"]["placement"]["constraints"]
        for name, block in services.items()
        if name != "gateway"
    }
    # gpu-a's second 1070 holds memory another process uses: ollama-0 alone on gpu-a
    assert on == {
        "ollama-0": ["node.hostname == ws-a"],
        "ollama-1": ["node.labels.composegen.node == gpu-b"],
        "ollama-2": ["node.labels.composegen.node == gpu-b"],
    }
    # the gateway runs on the fleet's first node
    assert services["gateway"]["deploy"]["placement"]["constraints"] == ["node.hostname == ws-a"]
    assert services["ollama-1"]["labels"]["io.composegen.node"] == "gpu-b"


def test_gpus_are_reserved_as_generic_resources_and_pinned_by_uuid(replicas: Any) -> None:
    _, _, files = replicas
    services = stack_of(files)["services"]
    for name, uuid in (
        ("ollama-0", GTX_1070[0]),
        ("ollama-1", RTX_2080TI[0]),
        ("ollama-2", RTX_2080TI[1]),
    ):
        block = services[name]
        assert block["environment"]["NVIDIA_VISIBLE_DEVICES"] == uuid
        assert block["deploy"]["resources"]["reservations"] == {
            "generic_resources": [{"discrete_resource_spec": {"kind": "NVIDIA-GPU", "value": 1}}]
        }
        assert "CUDA_VISIBLE_DEVICES" not in block["environment"]
    # what Swarm ignores or refuses is not in the file
    for block in services.values():
        assert not {"restart", "depends_on", "security_opt", "shm_size"} & set(block)
        assert block["deploy"]["restart_policy"]["condition"] == "any"


def test_tensor_parallel_reserves_every_gpu_and_shm_becomes_tmpfs(rag: Any) -> None:
    _, _, files, _ = rag
    services = stack_of(files)["services"]
    llm = services["llm"]
    assert llm["environment"]["NVIDIA_VISIBLE_DEVICES"] == f"{A100_80[2]},{A100_80[3]}"
    spec = llm["deploy"]["resources"]["reservations"]["generic_resources"][0]
    assert spec == {"discrete_resource_spec": {"kind": "NVIDIA-GPU", "value": 2}}
    # rag-a100's shm_size: 32g, as Swarm takes it: a tmpfs on /dev/shm of that many bytes
    shm = [v for v in llm["volumes"] if isinstance(v, dict)]
    assert shm == [{"type": "tmpfs", "target": "/dev/shm", "tmpfs": {"size": 34359738368}}]
    # the spares (5-7) are advertised but no service pins them
    pinned = {
        u for b in services.values() for u in b["environment"]["NVIDIA_VISIBLE_DEVICES"].split(",")
    }
    assert pinned == {"void", A100_80[0], A100_80[1], A100_80[2], A100_80[3], A100_80[4]}


def test_gpu_shared_by_instances_is_reserved_once() -> None:
    nodes = [Node("pool", scenario_inventory("a100_4x64"))]
    prof = profiles.load("ollama-pool")
    plan = fleet_plan(prof, nodes)
    services = stack_of(render_swarm(prof, plan, nodes))["services"]
    by_gpu: dict[str, list[int]] = {}
    for name, block in services.items():
        if name == "gateway":
            continue
        reserved = block["deploy"].get("resources", {}).get("reservations")
        n = reserved["generic_resources"][0]["discrete_resource_spec"]["value"] if reserved else 0
        by_gpu.setdefault(block["environment"]["NVIDIA_VISIBLE_DEVICES"], []).append(n)
    # 64 GB cards are in the 24 GB+ tier: 3 instances share each GPU, one of them reserves it
    assert len(by_gpu) == 4
    assert all(sorted(counts) == [0, 0, 1] for counts in by_gpu.values())


def test_services_without_a_gpu_get_none_from_the_default_runtime(rag: Any) -> None:
    prof, plan, _, nodes = rag
    cpu_llm = replace(plan.instance("llm"), device="cpu", gpus=(), device_ids=())
    plan = replace(plan, instances=tuple(cpu_llm if i.name == "llm" else i for i in plan.instances))
    services = stack_of(render_swarm(prof, plan, nodes))["services"]
    assert services["llm"]["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "reservations" not in services["llm"]["deploy"].get("resources", {})
    assert services["gateway"]["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"


# --- gateway and networks -------------------------------------------------------------------------


def test_gateway_reaches_every_replica_on_every_node(replicas: Any) -> None:
    _, _, files = replicas
    conf = parse_nginx(files_of(files)["nginx/nginx.conf"])
    http = conf.one("http")
    assert http.one("resolver").args[0] == "127.0.0.11"
    (upstream,) = http.find("upstream")
    servers = [d.args for d in upstream.find("server")]
    assert [s[0] for s in servers] == ["ollama-0:39001", "ollama-1:39002", "ollama-2:39003"]
    # nginx:1.28.0 re-resolves Swarm's names at run time (needs the shared zone)
    assert all("resolve" in s for s in servers)
    assert upstream.one("zone").args == ["ollama", "64k"]
    stack = stack_of(files)
    gw = stack["services"]["gateway"]
    assert gw["configs"] == [
        {"source": "gateway-nginx", "target": "/etc/nginx/composegen/nginx.conf"}
    ]
    assert stack["configs"]["gateway-nginx"]["file"] == "./nginx/nginx.conf"


def test_gateway_without_resolve_for_an_older_nginx(pair: list[Node]) -> None:
    prof = profiles.load(
        "ollama-replicas", overrides=profiles.Overrides(images=("nginx=nginx:1.26.3",))
    )
    plan = fleet_plan(prof, pair)
    conf = files_of(render_swarm(prof, plan, pair))["nginx/nginx.conf"]
    upstream = parse_nginx(conf).one("http").one("upstream")
    assert not upstream.find("zone")
    assert all("resolve" not in d.args for d in upstream.find("server"))
    forced = files_of(render_swarm(prof, plan, pair, SwarmOptions(resolve=True)))
    assert " resolve " in forced["nginx/nginx.conf"]
    # nginx resolves once: every name must be a service's virtual IP, which lives as long as
    # the service, not the address of a task that may not run yet
    services = stack_of(render_swarm(prof, plan, pair))["services"]
    assert {b["deploy"]["endpoint_mode"] for b in services.values()} == {"vip"}
    assert "virtual IP" in conf


def test_with_resolve_every_service_answers_by_its_tasks_address(pair: list[Node]) -> None:
    prof = profiles.load("ollama-replicas")
    assert prof.images[prof.gateway.image] == "nginx:1.28.0"
    services = stack_of(render_swarm(prof, fleet_plan(prof, pair), pair))["services"]
    assert {"gateway", "ollama-0", "ollama-1"} <= set(services)
    assert {b["deploy"]["endpoint_mode"] for b in services.values()} == {"dnsrr"}
    conf = files_of(render_swarm(prof, fleet_plan(prof, pair), pair))["nginx/nginx.conf"]
    assert parse_nginx(conf).one("http").one("resolver_timeout").args == ["5s"]
    assert parse_nginx(conf).one("http").one("resolver").args == [
        "127.0.0.11",
        "valid=2s",
        "ipv6=off",
    ]


def test_backend_overlay_is_internal(replicas: Any) -> None:
    _, _, files = replicas
    stack = stack_of(files)
    assert stack["networks"] == {
        "backend": {"driver": "overlay", "internal": True},
        "edge": {"driver": "overlay"},
    }
    services = stack["services"]
    assert services["gateway"]["networks"] == ["edge", "backend"]
    assert all(b["networks"] == ["backend"] for n, b in services.items() if n != "gateway")
    assert services["gateway"]["ports"] == [
        {"target": 8080, "published": 8080, "protocol": "tcp", "mode": "host"}
    ]
    # local named volumes, one per node a task uses them on
    assert stack["volumes"]["models"]["driver"] == "local"


def test_api_key_travels_as_a_secret(pair: list[Node]) -> None:
    key = "3f9a0c7e5b1d24680a1b2c3d4e5f6789"
    prof = profiles.load(
        "ollama-replicas", overrides=profiles.Overrides(sets=(f"gateway.api_key={key}",))
    )
    files = render_swarm(prof, fleet_plan(prof, pair), pair)
    by_path = {f.path: f for f in files}
    assert by_path["nginx/auth.conf"].mode == 0o600
    assert key in by_path["nginx/auth.conf"].text
    assert key not in by_path[STACK_FILE].text
    assert "include /run/secrets/auth.conf;" in by_path["nginx/nginx.conf"].text
    stack = stack_of(files)
    assert stack["services"]["gateway"]["secrets"][0]["target"] == "auth.conf"
    assert stack["secrets"]["gateway-auth"]["file"] == "./nginx/auth.conf"


# --- node files ---------------------------------------------------------------------------------


def test_daemon_json_fragments_from_the_inventories(replicas: Any) -> None:
    _, _, files = replicas
    by_path = files_of(files)
    a = json.loads(by_path["swarm/gpu-a/daemon.json"])
    b = json.loads(by_path["swarm/gpu-b/daemon.json"])
    assert a["node-generic-resources"] == [f"NVIDIA-GPU={u}" for u in GTX_1070]
    assert b["node-generic-resources"] == [f"NVIDIA-GPU={u}" for u in RTX_2080TI]
    for d in (a, b):
        assert d["default-runtime"] == "nvidia"
        assert d["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    toml = by_path["swarm/gpu-a/nvidia-container-runtime.toml"]
    assert '#swarm-resource = "DOCKER_RESOURCE_NVIDIA-GPU"' in toml.splitlines()
    readme = by_path["swarm/README.md"]
    assert "jq -s '.[0] * .[1]' /etc/docker/daemon.json swarm/gpu-b/daemon.json" in readme
    assert "docker node update --label-add composegen.node=gpu-b NODE" in readme
    assert "docker stack deploy -c docker-stack.yml ollama-replicas" in readme
    stack_md = by_path["STACK.md"]
    assert "NVIDIA_VISIBLE_DEVICES=<uuid>" in stack_md
    assert RTX_2080TI[1] in stack_md


# --- bad input ----------------------------------------------------------------------------------


def test_refuses_a_plan_without_nodes_or_uuids(replicas: Any, pair: list[Node]) -> None:
    prof, plan, _ = replicas
    one_host = replace(plan, instances=tuple(replace(i, node=None) for i in plan.instances))
    with pytest.raises(BadInputError, match="ollama-0: the plan gives it no node"):
        render_swarm(prof, one_host, pair)
    elsewhere = replace(plan, instances=tuple(replace(i, node="gpu-z") for i in plan.instances))
    with pytest.raises(BadInputError, match="which the fleet does not list"):
        render_swarm(prof, elsewhere, pair)
    by_index = replace(plan, instances=tuple(replace(i, device_ids=("0",)) for i in plan.instances))
    with pytest.raises(BadInputError, match="'0' is not a GPU UUID"):
        render_swarm(prof, by_index, pair)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (Node("gpu-a", Inventory("x"), "ws a\nx: 1"), "is not a host name"),
        (Node("gpu-a", Inventory("x"), labels={"k": "v == w"}), "keys and values may hold only"),
        (Node("GPU A", Inventory("x"), "ws-a"), "a node name may hold only"),
    ],
)
def test_refuses_node_values_that_would_break_the_files(
    replicas: Any, node: Node, message: str
) -> None:
    prof, plan, _ = replicas
    plan = replace(plan, instances=tuple(replace(i, node=node.name) for i in plan.instances))
    with pytest.raises(BadInputError, match=message):
        render_swarm(prof, plan, [node])


# --- the real tools -----------------------------------------------------------------------------


def _written(files: list[OutFile], out: Path) -> Path:
    for f in files:
        (out / f.path).parent.mkdir(parents=True, exist_ok=True)
        (out / f.path).write_text(f.text, encoding="utf-8")
    return out


@pytest.mark.parametrize("which", ["replicas", "rag"])
def test_stack_passes_the_schema_compose_v2_and_the_docker_cli(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    files = request.getfixturevalue(which)[2]
    errors = schema_errors(str(COMPOSE_SCHEMA), stack_of(files))
    assert errors == []
    out = _written(files, tmp_path)
    v2 = subprocess.run(
        [str(need_compose_v2()), "-f", STACK_FILE, "config", "-q"],
        cwd=out,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert v2.returncode == 0, v2.stderr
    docker = shutil.which("docker")
    need(docker is not None, "the Docker CLI is not installed")
    assert docker is not None
    probe = subprocess.run(
        [docker, "stack", "config", "--help"], capture_output=True, text=True, timeout=60
    )
    need(probe.returncode == 0, "this Docker CLI has no `docker stack config` (CLI 20.10+)")
    cli = subprocess.run(
        [docker, "stack", "config", "-c", STACK_FILE],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert "Ignoring unsupported options" not in cli.stderr
    loaded = yaml.safe_load(cli.stdout)
    reservations = [
        b["deploy"].get("resources", {}).get("reservations")
        for n, b in loaded["services"].items()
        if n != "gateway"
    ]
    assert all(r and r["generic_resources"] for r in reservations)


# --- render --fleet F --target swarm ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "swarm"], "--target swarm needs --fleet FILE"),
        (["--target", "compose", "--fleet", "f.yaml"], "--fleet renders a Docker Swarm stack"),
        (["--fleet", "f.yaml", "--inventory", "a.json"], "--fleet and --inventory exclude"),
        (["--fleet", "f.yaml", "--bind", "0.0.0.0"], "publishes the gateway on its node"),
    ],
)
def test_cli_swarm_option_errors_are_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from tests.unit.test_cli_detect import run_cli

    out = tmp_path / "stack"
    proc = run_cli("render", "-P", "ollama-replicas", *args, "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()


def _fleet_file(tmp_path: Path) -> Path:
    """Two nodes, inventories as nvidia-smi XML (what `detect --from` reads), paths relative."""
    for name in (
        "openpai__nvidia_smi_sample.xml",
        "openpai__nvidia_smi_sample_ecc_unsupported.xml",
    ):
        shutil.copyfile(XML / name, tmp_path / name)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "nodes:\n"
        "  - {name: gpu-a, hostname: ws-a, inventory: openpai__nvidia_smi_sample.xml}\n"
        "  - {name: gpu-b, inventory: openpai__nvidia_smi_sample_ecc_unsupported.xml}\n",
        encoding="utf-8",
    )
    return fleet


def test_cli_renders_a_fleet_as_a_swarm_stack(tmp_path: Path) -> None:
    from tests.unit.test_cli_detect import run_cli

    out = tmp_path / "stack"
    proc = run_cli(
        "render",
        "-P",
        "ollama-replicas",
        "--fleet",
        str(_fleet_file(tmp_path)),
        "--target",
        "swarm",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    stack = yaml.safe_load((out / STACK_FILE).read_text(encoding="utf-8"))
    services = stack["services"]
    pins = {
        n: (b["deploy"]["placement"]["constraints"], b["environment"]["NVIDIA_VISIBLE_DEVICES"])
        for n, b in services.items()
        if n != "gateway"
    }
    # gpu-b has no hostname and no labels: placed by its name. The 1070s of gpu-a (memory
    # held by other processes) fit none of the models the 2080 Tis run: gpu-a has the gateway
    assert pins == {
        "ollama-0": (["node.hostname == gpu-b"], RTX_2080TI[0]),
        "ollama-1": (["node.hostname == gpu-b"], RTX_2080TI[1]),
    }
    constraints = services["gateway"]["deploy"]["placement"]["constraints"]
    assert constraints == ["node.hostname == ws-a"]
    assert json.loads((out / "swarm/gpu-b/daemon.json").read_text())["node-generic-resources"] == [
        f"NVIDIA-GPU={u}" for u in RTX_2080TI
    ]
    assert not (out / "docker-compose.yml").exists()


def test_gateway_conf_without_resolve_passes_nginx_t(replicas: Any, tmp_path: Path) -> None:
    """nginx -t (this machine's nginx, 1.22: no `resolve` in open source before 1.27.3) on the
    form an older gateway image gets: the upstream servers of every node."""
    from tests.stack_checks import need_nginx, nginx_test

    need_nginx()
    prof, plan, _ = replicas
    pair_nodes = [Node("gpu-a", Inventory("x"), "ws-a"), Node("gpu-b", Inventory("x"), "ws-b")]
    files = render_swarm(prof, plan, pair_nodes, SwarmOptions(resolve=False))
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "nginx.conf").write_text(files_of(files)["nginx/nginx.conf"], encoding="utf-8")
    done = nginx_test(conf_dir, "nginx.conf", tmp_path / "work")
    assert done.returncode == 0, done.stderr
