"""deploy / undeploy / status of a swarm stack (composegen.engine.swarm) against the fake
Docker client's Swarm (tests/fake_docker.py) and a stand-in `docker` CLI on PATH.

The stack is rendered for real from tests/fixtures/fleet's ollama-2x2 inventories; what each
service should hold is read here from those inventories, not from the code under test.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from composegen import app
from composegen.engine import swarm as sw
from composegen.engine import swarm_undeploy
from composegen.engine.docker import EngineError
from composegen.errors import BadInputError
from composegen.files import write_tree
from composegen.swarm_stack import is_swarm_dir, load_stack
from tests.fake_docker import FakeDocker, FakeSwarm

FLEET = Path(__file__).resolve().parents[1] / "fixtures" / "fleet"
PROJECT = "ollama-replicas"
REJECTED = "assigned node no longer meets constraints"
NO_ROOM = "no suitable node (insufficient resources on 2 nodes)"


def uuids(inventory: str) -> list[str]:
    data = json.loads((FLEET / inventory).read_text())
    return [g["uuid"] for g in sorted(data["gpus"], key=lambda g: g["index"])]


A, B = uuids("gpu-a-2x64.json"), uuids("gpu-b-2x64.json")
# the plan: replicas 0, 1 on gpu-a's GPUs 0, 1; replicas 2, 3 on gpu-b's; the gateway on gpu-a
WHERE = {"gateway": "gpu-a", "ollama-0": "gpu-a", "ollama-1": "gpu-a"}
WHERE |= {"ollama-2": "gpu-b", "ollama-3": "gpu-b"}
GPU = {"ollama-0": A[0], "ollama-1": A[1], "ollama-2": B[0], "ollama-3": B[1]}


def render(tmp: Path, engines: dict[str, str] | None = None) -> Path:
    lines = ["nodes:"]
    for name, inv in (("gpu-a", "gpu-a-2x64.json"), ("gpu-b", "gpu-b-2x64.json")):
        line = f"  - {{name: {name}, hostname: {name}, inventory: {FLEET / inv}"
        if engines and name in engines:
            line += f", engine: '{engines[name]}'"
        lines.append(line + "}")
    tmp.mkdir(parents=True, exist_ok=True)
    fleet = tmp / "fleet.yaml"
    fleet.write_text("\n".join(lines) + "\n")
    built = app.build_swarm(PROJECT, str(fleet))
    out = tmp / "stack"
    write_tree(out, built.files)
    return out


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    return render(tmp_path)


class Bed:
    """The fake manager with nodes gpu-a, gpu-b and the stack's services, no task yet."""

    def __init__(self, directory: Path) -> None:
        self.client = FakeDocker()
        self.swarm: FakeSwarm = self.client.swarm
        self.swarm.init()
        self.node = {
            "gpu-a": self.swarm.add_node("gpu-a", gpus=A, role="manager"),
            "gpu-b": self.swarm.add_node("gpu-b", gpus=B),
        }
        data = yaml.safe_load((directory / "docker-stack.yml").read_text())
        for name, block in data["services"].items():
            env = {k: str(v) for k, v in (block.get("environment") or {}).items()}
            reserved = block["deploy"].get("resources", {}).get("reservations", {})
            gpus = [g["discrete_resource_spec"] for g in reserved.get("generic_resources", [])]
            self.swarm.add_service(PROJECT, name, env, sum(g["value"] for g in gpus))
        self.events: list[tuple[str, str, str]] = []

    def run_all(self, but: tuple[str, ...] = ()) -> None:
        for name, node in WHERE.items():
            if name not in but:
                self.swarm.add_task(f"{PROJECT}_{name}", self.node[node], "running")

    def report(self, service: str, state: str, detail: str) -> None:
        self.events.append((service, state, detail))


def wait(bed: Bed, directory: Path, timeout: float = 2.0, **kw: Any) -> sw.StackStatus:
    return sw.wait_converged(
        bed.client, directory, PROJECT, timeout_s=timeout, report=bed.report, poll_s=0.01, **kw
    )


# --- the stack directory ----------------------------------------------------------------------


def test_a_rendered_swarm_stack_is_read_back_as_planned(stack: Path) -> None:
    assert is_swarm_dir(stack)
    plan = load_stack(stack)
    assert plan.project == PROJECT  # from the header render wrote
    got = {s.name: (s.node, s.uuids, s.reserved) for s in plan.services}
    assert got == {
        "gateway": ("gpu-a", (), 0),
        **{n: (WHERE[n], (GPU[n],), 1) for n in GPU},
    }
    assert plan.service("ollama-2").constraints == ("node.hostname == gpu-b",)
    assert plan.nodes["gpu-b"].gpus == tuple(B) and plan.nodes["gpu-b"].engine is None


def test_a_compose_dir_is_not_a_swarm_dir(stack: Path) -> None:
    (stack / "docker-compose.yml").write_text("services: {}\n")
    assert not is_swarm_dir(stack)


def test_fleet_engine_is_recorded_and_checked(tmp_path: Path) -> None:
    stack = render(tmp_path, {"gpu-b": "ssh://admin@gpu-b"})
    nodes = json.loads((stack / "swarm" / "nodes.json").read_text())["nodes"]
    assert [(n["name"], n["engine"]) for n in nodes] == [
        ("gpu-a", None),
        ("gpu-b", "ssh://admin@gpu-b"),
    ]
    for bad in ("http://gpu-b:2375", "unix://relative.sock", "ssh://admin@gpu-b/x y"):
        with pytest.raises(BadInputError) as err:
            render(tmp_path / bad.replace("/", "_").replace(":", "_"), {"gpu-b": bad})
        assert err.value.message.endswith(f"nodes[1].engine: {bad!r} is not an engine address")


# --- the manager and the CLI ------------------------------------------------------------------


def test_refuses_an_engine_that_is_not_a_manager() -> None:
    client = FakeDocker()
    with pytest.raises(EngineError, match=r"not a Swarm manager \(its Swarm state: inactive\)"):
        sw.require_manager(client)
    client.swarm.init(manager=False)  # a worker
    with pytest.raises(EngineError) as err:
        sw.require_manager(client)
    assert "docker swarm init" in err.value.one_line() and "DOCKER_HOST" in err.value.one_line()
    client.swarm.init()
    sw.require_manager(client)


def fake_cli(tmp: Path, script: str) -> Path:
    """A `docker` stand-in on PATH: records its arguments and $OLLAMA_KEEP_ALIVE."""
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    exe = bindir / "docker"
    exe.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp}/argv\n'
        f'echo "keep=${{OLLAMA_KEEP_ALIVE:-unset}} cwd=$(pwd)" >> {tmp}/env\n' + script
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return bindir


def test_deploy_runs_the_cli_with_dotenv_in_its_environment(
    stack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = fake_cli(tmp_path, 'echo "Creating service ollama-replicas_gateway"\n')
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.delenv("OLLAMA_KEEP_ALIVE", raising=False)
    (stack / ".env").write_text("OLLAMA_KEEP_ALIVE=36h\n")
    said: list[str] = []
    sw.stack_deploy(stack, PROJECT, said.append)
    argv = (tmp_path / "argv").read_text().split()
    assert argv == ["stack", "deploy", "--prune", "-c", "docker-stack.yml", "--", PROJECT]
    assert (tmp_path / "env").read_text().split() == ["keep=36h", f"cwd={stack}"]
    assert said == ["Creating service ollama-replicas_gateway"]
    # the process environment wins over .env, as in Compose
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "5m")
    sw.stack_deploy(stack, PROJECT, said.append)
    assert (tmp_path / "env").read_text().split()[-2] == "keep=5m"


def test_deploy_without_the_cli_or_when_it_fails(
    stack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(EngineError, match=r"the Docker CLI \(docker\) is not on PATH"):
        sw.stack_deploy(stack, PROJECT, print)
    msg = "failed to create service ollama-replicas_gateway: Error response from daemon: "
    msg += "rpc error: code = InvalidArgument desc = port '8080' is already in use"
    bindir = fake_cli(
        tmp_path, f'echo "Creating network ollama-replicas_edge"\necho "{msg}" >&2\nexit 1\n'
    )
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(EngineError) as err:
        sw.stack_deploy(stack, PROJECT, print)
    assert err.value.message == f"docker stack deploy {PROJECT}: {msg}"
    assert "\n" not in err.value.one_line()


# --- waiting ----------------------------------------------------------------------------------


def test_waits_through_a_rejected_task_until_every_task_runs_as_planned(stack: Path) -> None:
    bed = Bed(stack)
    bed.run_all(but=("ollama-2",))
    first = bed.swarm.add_task(f"{PROJECT}_ollama-2", bed.node["gpu-b"], "starting")
    script = iter(range(100))

    def swarm_does(swarm: FakeSwarm) -> None:
        step = next(script)
        if step == 2:  # Docker 20.10 rejects it when its node is updated, then retries
            swarm.set_state(first, "rejected", REJECTED)
            swarm.add_task(f"{PROJECT}_ollama-2", bed.node["gpu-b"], "pending")
        elif step == 5:
            swarm.tasks[-1]["Status"]["State"] = "running"

    bed.swarm.on_poll = swarm_does
    status = wait(bed, stack)
    assert status.ok
    states = [(s, st) for s, st, _ in bed.events if s == "ollama-2"]
    assert states == [("ollama-2", "starting"), ("ollama-2", "pending"), ("ollama-2", "running")]
    pending = next(d for s, st, d in bed.events if (s, st) == ("ollama-2", "pending"))
    assert pending == "pending task scheduling"
    row = next(r for r in status.rows if r.service == "ollama-2")
    assert (row.node, row.gpus, row.gpus_from) == ("gpu-b", (B[0],), "task spec")
    assert row.error == REJECTED  # the last task error Swarm recorded


def test_pending_for_resources_until_the_timeout_names_service_node_and_error(
    stack: Path,
) -> None:
    bed = Bed(stack)
    bed.run_all(but=("ollama-3",))
    bed.swarm.add_task(f"{PROJECT}_ollama-3", None, "pending", err=NO_ROOM)
    with pytest.raises(EngineError) as err:
        wait(bed, stack, timeout=0.2)
    assert err.value.message == (
        f"{PROJECT}: not running as planned after 0.2s: "
        f"ollama-3 (planned on gpu-b): pending: {NO_ROOM}"
    )
    assert ("ollama-3", "pending", NO_ROOM) in bed.events


def test_a_task_on_another_node_fails_at_once(stack: Path) -> None:
    bed = Bed(stack)
    bed.run_all(but=("ollama-2",))
    bed.swarm.add_task(f"{PROJECT}_ollama-2", bed.node["gpu-a"], "running")
    with pytest.raises(EngineError) as err:
        wait(bed, stack, timeout=30)
    assert "ollama-2 on gpu-a: runs on gpu-a, planned on gpu-b" in err.value.message
    # and its GPU is not one gpu-a offers Swarm
    assert f"GPU {B[0]} is not among gpu-a's NVIDIA-GPU resources" in err.value.message
    assert bed.swarm.polls == 1


def test_a_task_holding_another_gpu_read_on_its_nodes_engine(tmp_path: Path) -> None:
    stack = render(tmp_path, {"gpu-b": "unix:///run/gpu-b.sock"})
    bed = Bed(stack)
    node_b = FakeDocker()
    container = node_b.add_container("ollama-replicas_ollama-3.1.x", {})
    container.attrs["Config"]["Env"] = [f"NVIDIA_VISIBLE_DEVICES={B[0]}", "PATH=/bin"]
    other = node_b.add_container("ollama-replicas_ollama-2.1.x", {})
    other.attrs["Config"]["Env"] = [f"NVIDIA_VISIBLE_DEVICES={B[0]}"]
    bed.run_all(but=("ollama-2", "ollama-3"))
    bed.swarm.add_task(f"{PROJECT}_ollama-2", bed.node["gpu-b"], "running", container=other.id)
    bed.swarm.add_task(f"{PROJECT}_ollama-3", bed.node["gpu-b"], "running", container=container.id)
    opened: list[str] = []

    def node_client(url: str) -> Any:
        opened.append(url)
        return node_b

    with pytest.raises(EngineError) as err:
        wait(bed, stack, timeout=30, node_client=node_client)
    assert f"ollama-3 on gpu-b: holds GPU {B[0]}, planned {B[1]}" in err.value.message
    assert opened == ["unix:///run/gpu-b.sock"]
    # the same container with the planned GPU: as planned, read from the container
    container.attrs["Config"]["Env"] = [f"NVIDIA_VISIBLE_DEVICES={B[1]}"]
    status = wait(bed, stack, node_client=node_client)
    row = next(r for r in status.rows if r.service == "ollama-3")
    assert (row.gpus, row.gpus_from, row.ok) == ((B[1],), "container", True)


def test_a_task_of_an_older_spec_is_waited_for_not_failed(stack: Path) -> None:
    bed = Bed(stack)
    bed.run_all(but=("ollama-1",))
    old = bed.swarm.add_task(f"{PROJECT}_ollama-1", bed.node["gpu-a"], "running")
    old["Spec"]["ContainerSpec"]["Env"] = [f"NVIDIA_VISIBLE_DEVICES={A[0]}"]
    with pytest.raises(EngineError, match="not running as planned after"):
        wait(bed, stack, timeout=0.1)


def test_a_service_missing_from_the_swarm(stack: Path) -> None:
    bed = Bed(stack)
    bed.run_all()
    bed.swarm.remove_service(f"{PROJECT}_ollama-0")
    status = sw.stack_status(bed.client, load_stack(stack))
    assert not status.ok
    assert status.problems() == [
        f"ollama-0 (planned on gpu-a): missing: no service {PROJECT}_ollama-0 on the Swarm"
    ]


# --- undeploy ---------------------------------------------------------------------------------


def test_undeploy_waits_until_services_containers_and_networks_are_gone(
    stack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bed = Bed(stack)
    ns = {"com.docker.stack.namespace": PROJECT}
    bed.client.networks.create(f"{PROJECT}_backend", labels=ns)
    bed.client.secrets.create(f"{PROJECT}_gateway-auth", labels=ns)  # holds the API key
    task = bed.client.add_container(f"{PROJECT}_gateway.1.abc", ns)
    monkeypatch.setenv("PATH", str(fake_cli(tmp_path, "")))

    def swarm_does(swarm: FakeSwarm) -> None:
        if not (tmp_path / "argv").exists():
            return  # nothing goes before `docker stack rm`
        if swarm.services:
            swarm.remove_service(next(iter(swarm.services)))
        elif not task.gone:
            task.gone = True
            del bed.client.containers_by_id[task.id]
        elif bed.client.networks.items:
            bed.client.networks.items.clear()
        else:
            bed.client.secrets.items.clear()

    bed.swarm.on_poll = swarm_does
    removed = swarm_undeploy.undeploy(
        bed.client, stack, PROJECT, timeout_s=5, report=bed.report, poll_s=0
    )
    assert (removed.services, removed.containers, removed.networks) == (5, 1, 1)
    assert (removed.configs, removed.secrets) == (0, 1)
    assert (tmp_path / "argv").read_text().split() == ["stack", "rm", "--", PROJECT]
    left = [d for _, st, d in bed.events if st in ("removing", "removed")]
    end = "0 service(s), 0 container(s), 0 network(s), 0 config(s), 0 secret(s) left"
    assert left[-1] == end
    assert "0 service(s), 1 container(s), 1 network(s), 0 config(s), 1 secret(s) left" in left
    assert "0 service(s), 0 container(s), 0 network(s), 0 config(s), 1 secret(s) left" in left
    # a second undeploy finds nothing and runs nothing
    again = swarm_undeploy.undeploy(bed.client, stack, PROJECT, timeout_s=5, report=bed.report)
    assert (again.services, again.containers, again.networks) == (0, 0, 0)
    assert len((tmp_path / "argv").read_text().splitlines()) == 1


def test_undeploy_that_does_not_finish_names_what_is_left(
    stack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bed = Bed(stack)
    monkeypatch.setenv("PATH", str(fake_cli(tmp_path, "")))
    with pytest.raises(EngineError, match=f"still there after 0.1s: {PROJECT}_gateway, "):
        swarm_undeploy.undeploy(
            bed.client, stack, PROJECT, timeout_s=0.1, report=bed.report, poll_s=0.01
        )
    assert os.path.exists(tmp_path / "argv")


# --- the commands -----------------------------------------------------------------------------


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], client: Any, *args: str
) -> tuple[int, str, str]:
    from composegen import cli
    from composegen.engine import docker as eng

    monkeypatch.setattr(eng, "connect", lambda *a, **k: client)
    code = 0
    try:
        cli.main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_status_of_a_swarm_stack_exits_0_as_planned_and_1_otherwise(
    stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bed = Bed(stack)
    bed.run_all(but=("ollama-3",))
    task = bed.swarm.add_task(f"{PROJECT}_ollama-3", bed.node["gpu-b"], "running")
    code, out, _ = run_cli(monkeypatch, capsys, bed.client, "status", "-C", str(stack), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["project"] == PROJECT and data["mode"]["mode"] == "gpu"
    assert {r["service"]: (r["node"], r["gpus"]) for r in data["services"]} == {
        s: (WHERE[s], [GPU[s]] if s in GPU else []) for s in WHERE
    }
    bed.swarm.set_state(task, "shutdown")
    bed.swarm.add_task(f"{PROJECT}_ollama-3", None, "pending", err=NO_ROOM)
    code, out, _ = run_cli(monkeypatch, capsys, bed.client, "status", "-C", str(stack), "--json")
    assert code == 1
    row = next(r for r in json.loads(out)["services"] if r["service"] == "ollama-3")
    assert (row["state"], row["node"], row["detail"], row["ok"]) == (
        "pending",
        None,
        NO_ROOM,
        False,
    )
    code, out, err = run_cli(monkeypatch, capsys, bed.client, "status", "-C", str(stack))
    assert code == 1 and "ollama-3" in out and "pending" in out
    assert err.startswith(
        f"composegen: error: {PROJECT} does not run as planned: ollama-3 (planned on gpu-b): "
        f"pending: {NO_ROOM}"
    )
    assert len(err.splitlines()) == 1


def test_deploy_refuses_a_worker_before_running_the_cli(
    stack: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", str(fake_cli(tmp_path, "")))
    client = FakeDocker()
    client.swarm.init(manager=False)
    code, out, err = run_cli(monkeypatch, capsys, client, "deploy", "-C", str(stack))
    assert code == 1 and out == ""
    assert err == (
        "composegen: error: this engine is not a Swarm manager (its Swarm state: active) "
        "(run `docker swarm init` here, or set DOCKER_HOST to a manager's engine)\n"
    )
    assert not (tmp_path / "argv").exists()
    # a manager: applied; --no-wait returns at once
    client.swarm.init()
    code, out, _ = run_cli(monkeypatch, capsys, client, "deploy", "-C", str(stack), "--no-wait")
    assert code == 0 and out.endswith(f"{PROJECT}: applied 5 service(s); not waited\n")
    assert (tmp_path / "argv").read_text().split()[:2] == ["stack", "deploy"]


def test_undeploy_waits_for_the_task_containers_on_the_nodes_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = render(tmp_path, {"gpu-b": "unix:///run/gpu-b.sock", "gpu-a": "tcp://gpu-a:2376"})
    bed = Bed(stack)
    node_b = FakeDocker()
    ns = {"com.docker.stack.namespace": PROJECT}
    stopping = node_b.add_container(f"{PROJECT}_ollama-3.1.x", ns)
    monkeypatch.setenv("PATH", str(fake_cli(tmp_path, "")))

    def node_client(url: str) -> Any:
        if url.startswith("tcp://"):
            raise EngineError(f"no Docker engine at {url}: connection refused")
        return node_b

    polls = iter(range(100))

    def swarm_does(swarm: FakeSwarm) -> None:
        if not (tmp_path / "argv").exists():
            return  # nothing goes before `docker stack rm`
        swarm.services.clear()  # the manager is done at once; node b's container takes longer
        if next(polls) == 3:
            del node_b.containers_by_id[stopping.id]

    bed.swarm.on_poll = swarm_does
    removed = swarm_undeploy.undeploy(
        bed.client, stack, PROJECT, timeout_s=5, report=bed.report, poll_s=0,
        node_client=node_client,
    )  # fmt: skip
    assert (removed.services, removed.containers) == (5, 1)
    assert removed.unreachable == [
        "gpu-a: no Docker engine at tcp://gpu-a:2376: connection refused"
    ]
    left = [d for _, st, d in bed.events if st in ("removing", "removed")]
    assert left[0] == "0 service(s), 1 container(s), 0 network(s), 0 config(s), 0 secret(s) left"
    assert left[-1] == "0 service(s), 0 container(s), 0 network(s), 0 config(s), 0 secret(s) left"
    assert bed.swarm.polls >= 4


def test_the_newest_task_is_found_whatever_the_engine_trims_of_its_timestamp(stack: Path) -> None:
    bed = Bed(stack)
    bed.run_all(but=("ollama-1",))
    old = bed.swarm.add_task(f"{PROJECT}_ollama-1", bed.node["gpu-a"], "failed", err="exit 1")
    new = bed.swarm.add_task(f"{PROJECT}_ollama-1", bed.node["gpu-a"], "running")
    # as the engine writes them (RFC 3339 with the fraction's trailing zeros trimmed)
    old["CreatedAt"] = old["Status"]["Timestamp"] = "2026-11-29T12:17:06.12345Z"
    new["CreatedAt"] = new["Status"]["Timestamp"] = "2026-11-29T12:17:06.123456789Z"
    old["DesiredState"] = new["DesiredState"] = "running"  # both meant to run for a moment
    row = next(r for r in wait(bed, stack).rows if r.service == "ollama-1")
    assert (row.state, row.gpus) == ("running", (A[1],))


def test_a_crashing_task_is_reported_and_the_timeout_names_its_last_error(stack: Path) -> None:
    bed = Bed(stack)
    bed.run_all(but=("ollama-0",))
    crashed = bed.swarm.add_task(f"{PROJECT}_ollama-0", bed.node["gpu-a"], "running")
    bed.swarm.set_state(crashed, "failed", "task: non-zero exit (137)")
    bed.swarm.add_task(f"{PROJECT}_ollama-0", bed.node["gpu-a"], "starting")
    with pytest.raises(EngineError) as err:
        wait(bed, stack, timeout=0.1)
    assert err.value.message.endswith(
        "ollama-0 (planned on gpu-a) on gpu-a: starting (last task error: task: non-zero exit "
        "(137))"
    )


def test_undeploy_removes_a_stack_of_which_only_configs_and_secrets_remain(
    stack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bed = Bed(stack)
    bed.swarm.services.clear()
    ns = {"com.docker.stack.namespace": PROJECT}
    bed.client.secrets.create(f"{PROJECT}_gateway-auth", labels=ns)
    bed.client.configs.create(f"{PROJECT}_nginx-conf", labels=ns)
    bed.client.configs.create("another_nginx-conf", labels={"com.docker.stack.namespace": "x"})
    monkeypatch.setenv("PATH", str(fake_cli(tmp_path, "")))

    def swarm_does(swarm: FakeSwarm) -> None:
        if (tmp_path / "argv").exists():  # `docker stack rm` removes them
            bed.client.secrets.items.clear()
            bed.client.configs.items.pop(f"{PROJECT}_nginx-conf", None)

    bed.swarm.on_poll = swarm_does
    removed = swarm_undeploy.undeploy(
        bed.client, stack, PROJECT, timeout_s=5, report=bed.report, poll_s=0
    )
    assert (removed.services, removed.configs, removed.secrets) == (0, 1, 1)
    assert (tmp_path / "argv").read_text().split() == ["stack", "rm", "--", PROJECT]
    assert list(bed.client.configs.items) == ["another_nginx-conf"]
