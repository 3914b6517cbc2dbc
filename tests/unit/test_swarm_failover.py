"""engine/swarm_failover.py: fallback on a swarm stack, with the engine faked at engine.swarm's
two contract functions (stack_deploy, wait_converged), which record what they are asked. The
re-plan, the files, render.json and the mode are the real ones; tests/e2e/test_swarm_fallback.py
runs the same on the multi-node test bed.

Figures come from the fleet fixtures: node1 is tests/fixtures/fleet/gpu-a-4x80-sxm.json (4x
A100-SXM4-80GB), node2 gpu-b-2x64.json (2x A100-SXM-64GB); ollama-replicas with 2 fixed
replicas places ollama-0 and ollama-1 on node1's GPUs 0 and 1 (the planner's order), leaving
node1's GPUs 2 and 3 and node2 free."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from composegen import app
from composegen.engine import failover
from composegen.engine import swarm as engine_swarm
from composegen.engine import swarm_failover as sw
from composegen.engine.state import read_mode, write_mode
from composegen.errors import BadInputError, ComposegenError
from composegen.files import HandEditedError
from composegen.profiles import Overrides
from tests.unit.test_cli_detect import call

FLEET_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "fleet"
A = json.loads((FLEET_DIR / "gpu-a-4x80-sxm.json").read_text())
B = json.loads((FLEET_DIR / "gpu-b-2x64.json").read_text())
A_UUIDS = [g["uuid"] for g in A["gpus"]]
B_UUIDS = [g["uuid"] for g in B["gpus"]]
REPLICAS_2 = ("services.ollama.gpu.replicas=2",)


def fleet_file(tmp: Path, a: str = "gpu-a-4x80-sxm.json", b: str = "gpu-b-2x64.json") -> str:
    path = tmp / "fleet.yaml"
    path.write_text(
        "nodes:\n"
        f"  - {{name: node1, hostname: cgsw-node1, inventory: {FLEET_DIR / a}}}\n"
        f"  - {{name: node2, hostname: cgsw-node2, inventory: {FLEET_DIR / b}}}\n"
    )
    return str(path)


def rendered(
    tmp: Path,
    profile: str = "ollama-replicas",
    sets: tuple[str, ...] = REPLICAS_2,
    images: tuple[str, ...] = (),
    **fleet: str,
) -> Path:
    """As `render --fleet F --target swarm -o DIR` writes it."""
    out = tmp / "stack"
    built = app.build_swarm(
        profile, fleet_file(tmp, **fleet), overrides=Overrides(sets, (), images)
    )
    app.write(out, built.files, force=False, dry_run=False)
    assert built.inputs is not None
    app.save_inputs(out, built.inputs)
    return out


class Engine:
    """engine.swarm's stack_deploy and wait_converged, recording each call; `fail` makes one
    raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail: dict[str, Exception] = {}
        self.stack_at_deploy: str | None = None
        self.stacks_at_wait: list[str] = []
        self.deployed_checks: list[str] = []

    def stack_deploy(self, directory: Path, project: str, say: Any, **_: Any) -> None:
        self.calls.append(("deploy", directory, project))
        self.stack_at_deploy = (directory / "docker-stack.yml").read_text()
        if "deploy" in self.fail:
            raise self.fail["deploy"]

    def wait_converged(
        self, client: Any, directory: Path, project: str, *, timeout_s: float, report: Any
    ) -> None:
        self.calls.append(("wait", client, directory, project, timeout_s))
        self.stacks_at_wait.append((directory / "docker-stack.yml").read_text())
        if "wait" in self.fail:
            raise self.fail["wait"]

    def reset(self) -> None:
        self.calls.clear()
        self.stacks_at_wait.clear()

    def require_deployed(self, client: Any, project: str, directory: Path) -> None:
        self.deployed_checks.append(project)
        if "deployed" in self.fail:
            raise self.fail["deployed"]


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Engine:
    fake = Engine()
    monkeypatch.setattr(engine_swarm, "stack_deploy", fake.stack_deploy)
    monkeypatch.setattr(engine_swarm, "wait_converged", fake.wait_converged)
    monkeypatch.setattr(engine_swarm, "require_deployed", fake.require_deployed, raising=False)
    return fake


class Said(list[str]):
    def __call__(self, text: str) -> None:
        self.append(text)


def io(said: Said | None = None) -> failover.Io:
    return failover.Io(said if said is not None else Said(), connect=lambda: "the-client")


def stack_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((out / "docker-stack.yml").read_text())["services"]
    return data


def snapshot(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def stack(out: Path) -> sw.SwarmStack:
    found = sw.stack_at(str(out), None)
    assert found is not None
    return found


def first_order(engine: Engine, service: str) -> str:
    """The service's update order in the stack file the first deploy of a fallback applied."""
    order: str = yaml.safe_load(engine.stacks_at_wait[0])["services"][service]["deploy"][
        "update_config"
    ]["order"]
    return order


def without_order(block: dict[str, Any]) -> dict[str, Any]:
    deploy = {k: v for k, v in block["deploy"].items() if k != "update_config"}
    return {**block, "deploy": deploy}


# --- render inputs ----------------------------------------------------------------------------


def test_render_swarm_records_the_fleet_and_a_rebuild_gives_the_same_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "st"
    args = ["render", "-P", "ollama-replicas", "--fleet", fleet_file(tmp_path), "-o", str(out)]
    code, _, err = call([*args, "--set", REPLICAS_2[0]], capsys)
    assert code == 0, err
    data = json.loads((out / ".composegen" / "render.json").read_text())
    assert data["target"] == "swarm"
    nodes = data["fleet"]["nodes"]
    assert [(n["name"], n["hostname"]) for n in nodes] == [
        ("node1", "cgsw-node1"),
        ("node2", "cgsw-node2"),
    ]
    assert [g["uuid"] for g in nodes[0]["inventory"]["gpus"]] == A_UUIDS
    assert [g["uuid"] for g in nodes[1]["inventory"]["gpus"]] == B_UUIDS
    inputs = app.load_inputs(out)
    assert inputs.target == "swarm" and inputs.fleet is not None
    for f in app.rebuild(inputs).files:
        assert (out / f.path).read_text() == f.text, f.path
    # the fleet file is no longer needed
    (tmp_path / "fleet.yaml").unlink()
    assert app.rebuild(app.load_inputs(out)).files


def test_a_render_json_without_target_stays_one_host(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    path = out / ".composegen" / "render.json"
    data = json.loads(path.read_text())
    for key in ("target", "fleet", "start_first"):
        del data[key]
    data["inventory"] = A  # what a one-host render records
    path.write_text(json.dumps(data))
    inputs = app.load_inputs(out)
    assert inputs.fleet is None and inputs.target == "compose"
    assert "docker-compose.yml" in {f.path for f in app.rebuild(inputs).files}


def test_swarm_api_key_is_read_back_from_auth_conf(tmp_path: Path) -> None:
    key = "k3y.with+plus-and.dots_0123456789"
    out = rendered(tmp_path, sets=(*REPLICAS_2, f"gateway.api_key={key}"))
    assert key not in (out / ".composegen" / "render.json").read_text()
    inputs = app.load_inputs(out)
    assert inputs.api_key == key
    auth = next(f for f in app.rebuild(inputs).files if f.path == "nginx/auth.conf")
    assert auth.text == (out / "nginx" / "auth.conf").read_text()


# --- --gpu-failed -----------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [A_UUIDS[0], "node1:0", " node1 : 0 "])
def test_gpu_failed_updates_only_the_affected_service_start_first(
    tmp_path: Path, engine: Engine, ids: str
) -> None:
    out = rendered(tmp_path)
    before = stack_of(out)
    assert before["ollama-0"]["environment"]["NVIDIA_VISIBLE_DEVICES"] == A_UUIDS[0]
    assert before["ollama-0"]["deploy"]["update_config"]["order"] == "stop-first"
    said = Said()
    outcome = failover.run(stack(out), failover.Request("gpu-failed", ids), io(said))
    after = stack_of(out)
    assert outcome.changed
    # ollama-0 moves to node1's GPU 2 (its first free GPU), make before break
    assert after["ollama-0"]["environment"]["NVIDIA_VISIBLE_DEVICES"] == A_UUIDS[2]
    # deployed start-first, then (converged) deployed again stop-first: a later update of the
    # service (an image bump) must not start a second task on its pinned GPU beside the old
    moving = yaml.safe_load(engine.stacks_at_wait[0])["services"]
    assert moving["ollama-0"]["deploy"]["update_config"]["order"] == "start-first"
    assert after["ollama-0"]["deploy"]["update_config"]["order"] == "stop-first"
    assert without_order(moving["ollama-0"]) == without_order(after["ollama-0"])
    assert after["ollama-0"]["deploy"]["placement"] == before["ollama-0"]["deploy"]["placement"]
    # nothing else changes at all: Swarm leaves their tasks alone
    assert after["ollama-1"] == before["ollama-1"]
    assert after["gateway"] == before["gateway"]
    assert sw.changed_services(
        [app.OutFile("docker-stack.yml", yaml.safe_dump({"services": before}))],
        [app.OutFile("docker-stack.yml", yaml.safe_dump({"services": after}))],
    ) == ["ollama-0"]
    applied = [
        ("deploy", out.resolve(), "ollama-replicas"),
        ("wait", "the-client", out.resolve(), "ollama-replicas", sw.WAIT_S),
    ]
    assert engine.calls == applied * 2
    assert engine.deployed_checks == ["ollama-replicas"]
    # the stack file was written before the deploy read it
    assert engine.stack_at_deploy == (out / "docker-stack.yml").read_text()
    move = f"ollama-0: node1 GPU 0 ({A_UUIDS[0]}) -> node1 GPU 2 ({A_UUIDS[2]}) (start-first)"
    assert said == [f"moving {move}", f"moved {move}"]
    record = json.loads((out / ".composegen" / "render.json").read_text())
    assert record["failed"] == [[0]] and record["start_first"] == []
    state = read_mode(out.resolve(), "ollama-replicas")
    assert state["mode"] == "gpu-failover" and state["applied"] is True
    # render.json reproduces the files on disk, so the next step compares with the truth
    for f in app.rebuild(app.load_inputs(out)).files:
        assert (out / f.path).read_text() == f.text, f.path


def test_a_move_to_another_node_says_its_volumes_stay_behind(
    tmp_path: Path, engine: Engine
) -> None:
    # 2 + 2 GPUs: node1's other GPU holds ollama-1, so ollama-0 goes to node2's GPU 0
    out = rendered(tmp_path, a="gpu-a-2x64.json")
    a_uuids = [g["uuid"] for g in json.loads((FLEET_DIR / "gpu-a-2x64.json").read_text())["gpus"]]
    said = Said()
    failover.run(stack(out), failover.Request("gpu-failed", a_uuids[0]), io(said))
    after = stack_of(out)
    assert after["ollama-0"]["environment"]["NVIDIA_VISIBLE_DEVICES"] == B_UUIDS[0]
    assert after["ollama-0"]["deploy"]["placement"]["constraints"] == [
        "node.hostname == cgsw-node2"
    ]
    assert first_order(engine, "ollama-0") == "start-first"
    text = " ".join(said)
    assert "ollama-0 moves from node node1 to node node2" in text
    assert "ollama-replicas_models" in text and "ollama-replicas_ollama-cache-0" in text


def test_dry_run_changes_nothing(tmp_path: Path, engine: Engine) -> None:
    out = rendered(tmp_path)
    files = snapshot(out)
    said = Said()
    outcome = failover.run(
        stack(out), failover.Request("gpu-failed", A_UUIDS[0], dry_run=True), io(said)
    )
    assert not outcome.changed and engine.calls == []
    assert snapshot(out) == files
    assert said == [
        f"would move ollama-0: node1 GPU 0 ({A_UUIDS[0]}) -> node1 GPU 2 ({A_UUIDS[2]}) "
        "(start-first)",
        "would write docker-stack.yml, STACK.md, then deploy ollama-replicas",
    ]
    for action in ("cpu", "restore"):
        failover.run(stack(out), failover.Request(action, dry_run=True), io())
    assert snapshot(out) == files and engine.calls == []


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ("GPU-00000000-1111-2222-3333-444444444444", "no GPU with UUID"),
        ("node3:0", "no GPU 0 on node 'node3'"),
        ("node2:2", "no GPU 2 on node 'node2'"),
        ("node1:6", "no GPU 6 on node 'node1'"),
        ("0", "'0' is ambiguous on a fleet of 2 nodes: name the GPU as NODE:INDEX"),
    ],
)
def test_unknown_gpu_id_is_refused_and_changes_nothing(
    tmp_path: Path, engine: Engine, ids: str, message: str
) -> None:
    out = rendered(tmp_path)
    files = snapshot(out)
    with pytest.raises(BadInputError, match=message):
        failover.run(stack(out), failover.Request("gpu-failed", ids), io())
    assert snapshot(out) == files and engine.calls == []


def test_hand_edited_stack_file_is_refused_then_forced_with_a_backup(
    tmp_path: Path, engine: Engine
) -> None:
    out = rendered(tmp_path)
    edited = (out / "docker-stack.yml").read_text() + "# my note\n"
    (out / "docker-stack.yml").write_text(edited)
    files = snapshot(out)
    with pytest.raises(HandEditedError, match=r"docker-stack\.yml was edited by hand"):
        failover.run(stack(out), failover.Request("gpu-failed", A_UUIDS[0]), io())
    assert snapshot(out) == files and engine.calls == []
    failover.run(stack(out), failover.Request("gpu-failed", A_UUIDS[0], force=True), io())
    assert (out / "docker-stack.yml.bak").read_text() == edited
    assert [c[0] for c in engine.calls] == ["deploy", "wait", "deploy", "wait"]


def test_gpu_failed_on_cpu_is_refused(tmp_path: Path, engine: Engine) -> None:
    out = rendered(tmp_path)
    write_mode(out.resolve(), "ollama-replicas", "cpu-fallback", "test")
    files = snapshot(out)
    with pytest.raises(BadInputError, match="runs on CPU"):
        failover.run(stack(out), failover.Request("gpu-failed", A_UUIDS[0]), io())
    assert snapshot(out) == files and engine.calls == []


def test_a_failed_deploy_leaves_the_new_plan_recorded_and_a_rerun_applies_it(
    tmp_path: Path, engine: Engine
) -> None:
    out = rendered(tmp_path)
    engine.fail["deploy"] = ComposegenError("docker stack deploy ollama-replicas: exit 1: nope")
    with pytest.raises(ComposegenError, match=r"written but not applied: .*nope") as err:
        failover.run(stack(out), failover.Request("gpu-failed", A_UUIDS[0]), io())
    assert err.value.hint is not None and "composegen deploy -C" in err.value.hint
    assert stack_of(out)["ollama-0"]["environment"]["NVIDIA_VISIBLE_DEVICES"] == A_UUIDS[2]
    assert json.loads((out / ".composegen" / "render.json").read_text())["failed"] == [[0]]
    assert read_mode(out.resolve(), "ollama-replicas")["applied"] is False
    del engine.fail["deploy"]
    engine.reset()
    files = snapshot(out)
    said = Said()
    # the same ids again: no second failed step, the recorded one applied (start-first first)
    assert failover.run(stack(out), failover.Request("gpu-failed", "node1:0"), io(said)).changed
    assert [c[0] for c in engine.calls] == ["deploy", "wait", "deploy", "wait"]
    assert engine.stacks_at_wait[0] == files["docker-stack.yml"].decode()
    assert first_order(engine, "ollama-0") == "start-first"
    assert stack_of(out)["ollama-0"]["deploy"]["update_config"]["order"] == "stop-first"
    record = json.loads((out / ".composegen" / "render.json").read_text())
    assert record["failed"] == [[0]] and record["start_first"] == []
    state = read_mode(out.resolve(), "ollama-replicas")
    assert state["mode"] == "gpu-failover" and state["applied"] is True
    assert said[0].startswith("moving ollama-replicas: applying the recorded gpu-failover step")
    # applied now: the same ids once more change nothing
    engine.reset()
    said.clear()
    again = failover.run(stack(out), failover.Request("gpu-failed", A_UUIDS[0]), io(said))
    assert not again.changed
    assert engine.calls == [] and said == ["ollama-replicas: GPUs 0 are already failed over"]


def test_a_rerun_of_cpu_after_a_failed_wait_applies_it_again(
    tmp_path: Path, engine: Engine
) -> None:
    out = rendered(tmp_path)
    engine.fail["wait"] = ComposegenError("ollama-replicas: ollama-0 pending on cgsw-node1")
    with pytest.raises(ComposegenError, match="pending"):
        failover.run(stack(out), failover.Request("cpu"), io())
    state = read_mode(out.resolve(), "ollama-replicas")
    assert state["mode"] == "cpu-fallback" and state["applied"] is False
    del engine.fail["wait"]
    engine.reset()
    said = Said()
    assert failover.run(stack(out), failover.Request("cpu"), io(said)).changed
    assert [c[0] for c in engine.calls] == ["deploy", "wait"]  # CPU: no GPU start-first to undo
    assert stack_of(out)["ollama-0"]["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert read_mode(out.resolve(), "ollama-replicas")["applied"] is True
    assert said[-1] == "ollama-replicas: applied"


def test_a_rerun_of_restore_after_a_failed_deploy_applies_it_again(
    tmp_path: Path, engine: Engine
) -> None:
    out = rendered(tmp_path)
    first = stack_of(out)
    failover.run(stack(out), failover.Request("gpu-failed", "node1:0"), io())
    engine.fail["deploy"] = ComposegenError("docker stack deploy ollama-replicas: exit 1: nope")
    with pytest.raises(ComposegenError, match="nope"):
        failover.run(stack(out), failover.Request("restore"), io())
    del engine.fail["deploy"]
    engine.reset()
    said = Said()
    assert failover.run(stack(out), failover.Request("restore"), io(said)).changed
    assert [c[0] for c in engine.calls] == ["deploy", "wait", "deploy", "wait"]
    assert stack_of(out) == first
    state = read_mode(out.resolve(), "ollama-replicas")
    assert state["mode"] == "gpu" and state["applied"] is True


def test_wait_converged_failure_is_the_commands_failure(tmp_path: Path, engine: Engine) -> None:
    out = rendered(tmp_path)
    engine.fail["wait"] = ComposegenError("ollama-replicas: ollama-0 pending on cgsw-node1")
    with pytest.raises(ComposegenError, match="ollama-0 pending on cgsw-node1"):
        failover.run(stack(out), failover.Request("gpu-failed", A_UUIDS[0]), io())


# --- the update order -------------------------------------------------------------------------


def test_start_first_only_where_the_node_has_room_for_old_and_new_reservations(
    tmp_path: Path,
) -> None:
    out = rendered(tmp_path)
    inputs = app.load_inputs(out)
    assert inputs.fleet is not None
    assert sw.advertised_per_node(inputs.fleet) == {"node1": 4, "node2": 2}
    before = app.rebuild(inputs).plan
    after = app.rebuild(replace(inputs, failed=((0,),))).plan
    # node1 advertises 4 (the failed GPU too): ollama-1 and the old ollama-0 task hold 2
    assert sw.update_orders(before, after, ["ollama-0"], {"node1": 4, "node2": 2}) == {
        "ollama-0": "start-first"
    }
    # a node advertising only 2 would have no room until the old task stops
    assert sw.update_orders(before, after, ["ollama-0"], {"node1": 2, "node2": 2}) == {
        "ollama-0": "stop-first"
    }


def test_two_moves_share_the_room_left(tmp_path: Path, engine: Engine) -> None:
    out = rendered(tmp_path)
    inputs = app.load_inputs(out)
    before = app.rebuild(inputs).plan
    after = app.rebuild(replace(inputs, failed=((0, 1),))).plan
    assert [i.device_ids for i in after.instances] == [(A_UUIDS[2],), (A_UUIDS[3],)]
    both = ["ollama-0", "ollama-1"]
    # 4 advertised, 2 held by the old tasks: room for both new ones
    assert sw.update_orders(before, after, both, {"node1": 4, "node2": 2}) == {
        "ollama-0": "start-first",
        "ollama-1": "start-first",
    }
    # 3: the first gets the one left, the second waits for its old task to stop
    assert sw.update_orders(before, after, both, {"node1": 3, "node2": 2}) == {
        "ollama-0": "start-first",
        "ollama-1": "stop-first",
    }
    said = Said()
    failover.run(stack(out), failover.Request("gpu-failed", "node1:0,node1:1"), io(said))
    deployed = yaml.safe_load(engine.stacks_at_wait[0])["services"]
    orders = {n: b["deploy"]["update_config"]["order"] for n, b in deployed.items()}
    assert orders == {"gateway": "stop-first", "ollama-0": "start-first", "ollama-1": "start-first"}


def test_a_stop_first_update_is_recorded_and_said(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = rendered(tmp_path)
    monkeypatch.setattr(sw, "advertised_per_node", lambda fleet: {"node1": 2, "node2": 2})
    said = Said()
    failover.run(stack(out), failover.Request("gpu-failed", "node1:0"), io(said))
    assert first_order(engine, "ollama-0") == "stop-first"
    assert [c[0] for c in engine.calls] == ["deploy", "wait"]  # nothing start-first to undo
    assert said[0].endswith("(stop-first)")
    assert json.loads((out / ".composegen" / "render.json").read_text())["start_first"] == []


# --- --cpu and --restore ----------------------------------------------------------------------


def test_cpu_moves_every_gpu_service_to_its_cpu_form_in_place(
    tmp_path: Path, engine: Engine
) -> None:
    out = rendered(tmp_path)
    before = stack_of(out)
    outcome = failover.run(stack(out), failover.Request("cpu"), io())
    after = stack_of(out)
    assert outcome.changed and [c[0] for c in engine.calls] == ["deploy", "wait"]
    # the one-host CPU variant of the same profile and fleet node: its environment and image
    one_host = tmp_path / "one-host"
    built = app.build(
        "ollama-replicas",
        inventory=str(FLEET_DIR / "gpu-a-4x80-sxm.json"),
        overrides=Overrides(REPLICAS_2),
    )
    app.write(one_host, built.files, force=False, dry_run=False)
    cpu = yaml.safe_load((one_host / "fallback" / "docker-compose.cpu.yml").read_text())
    for name in ("ollama-0", "ollama-1"):
        variant = cpu["services"][f"{name}-cpu"]
        block = after[name]
        assert block["environment"] == {**variant["environment"], "NVIDIA_VISIBLE_DEVICES": "void"}
        assert block["image"] == variant["image"]
        assert "resources" not in block["deploy"]  # no NVIDIA-GPU reservation
        assert block["deploy"]["update_config"]["order"] == "start-first"
        # same node, same volumes (the models stay), same port: the gateway needs no change
        assert block["deploy"]["placement"] == before[name]["deploy"]["placement"]
        assert block["volumes"] == before[name]["volumes"]
        assert block["labels"]["io.composegen.mode"] == "cpu"
    assert after["gateway"] == before["gateway"]
    assert read_mode(out.resolve(), "ollama-replicas")["mode"] == "cpu-fallback"
    engine.reset()
    said = Said()
    again = failover.run(stack(out), failover.Request("cpu"), io(said))
    assert not again.changed and engine.calls == []
    assert said == ["ollama-replicas is already in cpu-fallback mode"]


def test_restore_from_cpu_after_a_failover_returns_to_the_first_plan(
    tmp_path: Path, engine: Engine
) -> None:
    out = rendered(tmp_path)
    first = stack_of(out)
    failover.run(stack(out), failover.Request("gpu-failed", "node1:0"), io())
    failover.run(stack(out), failover.Request("cpu"), io())
    engine.reset()
    said = Said()
    outcome = failover.run(stack(out), failover.Request("restore"), io(said))
    restored = stack_of(out)
    assert outcome.changed and [c[0] for c in engine.calls] == ["deploy", "wait"] * 2
    # every service as first rendered, each GPU service updated start-first back from CPU,
    # then stop-first again
    assert restored == first
    assert first_order(engine, "ollama-0") == "start-first"
    assert first_order(engine, "ollama-1") == "start-first"
    assert f"moved ollama-0: CPU on node1 -> node1 GPU 0 ({A_UUIDS[0]}) (start-first)" in said
    record = json.loads((out / ".composegen" / "render.json").read_text())
    assert record["failed"] == []
    assert read_mode(out.resolve(), "ollama-replicas")["mode"] == "gpu"
    engine.reset()
    said.clear()
    assert not failover.run(stack(out), failover.Request("restore"), io(said)).changed
    assert said == ["ollama-replicas already runs its GPU plan"] and engine.calls == []


def test_restore_from_a_gpu_failover_moves_back_start_first(tmp_path: Path, engine: Engine) -> None:
    out = rendered(tmp_path)
    first = stack_of(out)
    failover.run(stack(out), failover.Request("gpu-failed", A_UUIDS[0]), io())
    engine.reset()
    said = Said()
    failover.run(stack(out), failover.Request("restore"), io(said))
    restored = stack_of(out)
    assert restored["ollama-0"] == first["ollama-0"]  # stop-first again once converged
    assert yaml.safe_load(engine.stacks_at_wait[0])["services"]["ollama-0"] == {
        **first["ollama-0"],
        "deploy": {
            **first["ollama-0"]["deploy"],
            "update_config": {"order": "start-first", "failure_action": "rollback"},
        },
    }
    assert restored["ollama-1"] == first["ollama-1"]  # never touched
    assert (
        f"moved ollama-0: node1 GPU 2 ({A_UUIDS[2]}) -> node1 GPU 0 ({A_UUIDS[0]}) (start-first)"
        in said
    )


def test_auto_and_restore_from_an_inventory_are_refused(tmp_path: Path, engine: Engine) -> None:
    out = rendered(tmp_path)
    with pytest.raises(BadInputError, match="--auto reads this host's GPUs"):
        failover.run(stack(out), failover.Request("auto"), io())
    with pytest.raises(BadInputError, match="--inventory: a swarm stack's GPUs"):
        failover.run(stack(out), failover.Request("restore", inventory="inv.json"), io())
    assert engine.calls == []


# --- the gateway when a replica is dropped ----------------------------------------------------


def test_a_dropped_replica_leaves_the_stack_and_a_resolving_gateway_unchanged(
    tmp_path: Path, engine: Engine
) -> None:
    # per-GPU replicas on a lost GPU are dropped, not moved (the planner's failover rule)
    out = rendered(tmp_path, sets=())
    conf = (out / "nginx" / "nginx.conf").read_text()
    before = stack_of(out)
    assert "resolve" in conf and "ollama-0:39001" in conf
    said = Said()
    failover.run(stack(out), failover.Request("gpu-failed", "node1:0"), io(said))
    after = stack_of(out)
    assert "ollama-0" not in after  # `stack deploy --prune` removes the service
    assert after["gateway"] == before["gateway"]
    assert (out / "nginx" / "nginx.conf").read_text() == conf
    assert said[0] == f"moving ollama-0: node1 GPU 0 ({A_UUIDS[0]}) -> removed"


def test_without_resolve_the_gateway_routes_follow_the_plan(tmp_path: Path, engine: Engine) -> None:
    out = rendered(tmp_path, sets=(), images=("nginx=composegen-test/nginx:1",))
    assert "ollama-0:39001" in (out / "nginx" / "nginx.conf").read_text()
    said = Said()
    failover.run(stack(out), failover.Request("gpu-failed", "node1:0"), io(said))
    assert "ollama-0:39001" not in (out / "nginx" / "nginx.conf").read_text()
    assert "moved gateway: its configuration changes: restarted (stop-first)" in said


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_fallback_on_a_swarm_dir(
    tmp_path: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    out = rendered(tmp_path)
    files = snapshot(out)
    args = ["fallback", "-C", str(out), "--dry-run", "--gpu-failed"]
    code, text, err = call([*args, A_UUIDS[0]], capsys)
    assert code == 0, err
    assert text.splitlines()[0] == (
        f"would move ollama-0: node1 GPU 0 ({A_UUIDS[0]}) -> node1 GPU 2 ({A_UUIDS[2]}) "
        "(start-first)"
    )
    code, text, err = call([*args, "node9:0"], capsys)
    assert code == 2 and text == ""
    assert err.startswith("composegen: error: --gpu-failed: no GPU 0 on node 'node9'")
    assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err
    assert snapshot(out) == files and engine.calls == []
    code, _, err = call(["fallback", "-C", str(out), "--auto"], capsys)
    assert code == 2 and "--auto reads this host's GPUs" in err


def test_failures_add_up_and_each_step_changes_only_what_moves(
    tmp_path: Path, engine: Engine
) -> None:
    out = rendered(tmp_path)
    failover.run(stack(out), failover.Request("gpu-failed", "node1:0"), io())
    second = stack_of(out)
    said = Said()
    # the GPU ollama-0 moved to fails as well: it moves on to node1's GPU 3
    failover.run(stack(out), failover.Request("gpu-failed", A_UUIDS[2]), io(said))
    third = stack_of(out)
    assert third["ollama-0"]["environment"]["NVIDIA_VISIBLE_DEVICES"] == A_UUIDS[3]
    assert third["ollama-1"] == second["ollama-1"] and third["gateway"] == second["gateway"]
    move = f"ollama-0: node1 GPU 2 ({A_UUIDS[2]}) -> node1 GPU 3 ({A_UUIDS[3]}) (start-first)"
    assert said == [f"moving {move}", f"moved {move}"]
    record = json.loads((out / ".composegen" / "render.json").read_text())
    assert record["failed"] == [[0], [2]]
    for f in app.rebuild(app.load_inputs(out)).files:
        assert (out / f.path).read_text() == f.text, f.path


# --- the real wait on the fake Docker client's Swarm ------------------------------------------

NO_ROOM = "no suitable node (insufficient resources on 1 node)"


class FakeSwarmBed:
    """The fake manager (tests/fake_docker.py FakeSwarm) running the rendered stack: node1 and
    node2 with the fixtures' GPUs, one running task per service. `deployed` applies the stack
    file as Swarm would take it: each service's spec (its environment) becomes the file's; the
    tasks are what the test scripts."""

    def __init__(self, out: Path) -> None:
        from tests.fake_docker import FakeDocker

        self.out = out
        self.client = FakeDocker()
        self.swarm = self.client.swarm
        self.swarm.init()
        self.node = {
            "node1": self.swarm.add_node("cgsw-node1", gpus=A_UUIDS, role="manager"),
            "node2": self.swarm.add_node("cgsw-node2", gpus=B_UUIDS),
        }
        self.task: dict[str, dict[str, Any]] = {}
        for name, block in stack_of(out).items():
            self.swarm.add_service("ollama-replicas", name, self._env(block), self._gpus(block))
            self.task[name] = self.swarm.add_task(
                f"ollama-replicas_{name}", self.node["node1"], "running"
            )
        self.events: list[tuple[str, str, str]] = []
        self.deploys = 0

    @staticmethod
    def _env(block: dict[str, Any]) -> dict[str, str]:
        return {k: str(v) for k, v in (block.get("environment") or {}).items()}

    @staticmethod
    def _gpus(block: dict[str, Any]) -> int:
        wanted = block["deploy"].get("resources", {}).get("reservations", {})
        specs = [g["discrete_resource_spec"] for g in wanted.get("generic_resources", [])]
        return sum(int(g["value"]) for g in specs if g["kind"] == "NVIDIA-GPU")

    def deployed(self, directory: Path, project: str, say: Any) -> None:
        self.deploys += 1
        for name, block in stack_of(directory).items():
            sid = self.swarm.service_id(f"{project}_{name}")
            template = self.swarm.services[sid]["Spec"]["TaskTemplate"]
            template["ContainerSpec"]["Env"] = [f"{k}={v}" for k, v in self._env(block).items()]
            gpus = self._gpus(block)
            kind = {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": gpus}}
            template.pop("Resources", None)
            if gpus:
                template["Resources"] = {"Reservations": {"GenericResources": [kind]}}

    def io(self) -> failover.Io:
        @contextlib.contextmanager
        def progress(names: list[str], title: str) -> Iterator[Any]:
            yield lambda s, st, d: self.events.append((s, st, d))

        return failover.Io(Said(), progress, connect=lambda: self.client)


@pytest.fixture
def fake_swarm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSwarmBed:
    bed = FakeSwarmBed(rendered(tmp_path))
    monkeypatch.setattr(engine_swarm, "stack_deploy", bed.deployed)
    monkeypatch.setattr(sw, "WAIT_S", 5.0)  # the wait polls once a second
    return bed


def test_the_wait_ends_when_the_new_task_runs_on_its_new_gpu(fake_swarm: FakeSwarmBed) -> None:
    bed = fake_swarm
    old = bed.task["ollama-0"]
    script = iter(range(100))

    def swarm_does(swarm: Any) -> None:
        # start-first: the new task starts beside the old one, then Swarm stops the old one
        if not bed.deploys:  # the fallback's check that the stack is deployed
            return
        step = next(script)
        if step == 0:
            bed.task["new"] = swarm.add_task(
                "ollama-replicas_ollama-0", bed.node["node1"], "starting"
            )
        elif step == 1:
            swarm.set_state(bed.task["new"], "running")
            swarm.set_state(old, "shutdown")

    bed.swarm.on_poll = swarm_does
    out = failover.run(stack(bed.out), failover.Request("gpu-failed", "node1:0"), bed.io())
    assert out.changed
    # the second apply (stop-first again) waits as well: the same task, running
    assert bed.deploys == 2
    assert [(st, d) for s, st, d in bed.events if s == "ollama-0"] == [
        ("starting", ""),
        ("running", f"GPU {A_UUIDS[2]} (task spec)"),
        ("running", f"GPU {A_UUIDS[2]} (task spec)"),
    ]
    assert ("ollama-1", "running", f"GPU {A_UUIDS[1]} (task spec)") in bed.events


def test_a_new_task_pending_for_room_fails_naming_it(
    fake_swarm: FakeSwarmBed, monkeypatch: pytest.MonkeyPatch
) -> None:
    bed = fake_swarm
    monkeypatch.setattr(sw, "WAIT_S", 0.3)

    def swarm_does(swarm: Any) -> None:
        if "new" not in bed.task:  # the new task finds no room; the old one keeps running
            bed.task["new"] = swarm.add_task(
                "ollama-replicas_ollama-0", None, "pending", err=NO_ROOM
            )

    bed.swarm.on_poll = swarm_does
    with pytest.raises(ComposegenError) as err:
        failover.run(stack(bed.out), failover.Request("gpu-failed", "node1:0"), bed.io())
    assert err.value.message.startswith("ollama-replicas: not running as planned after 0.3s: ")
    assert f"ollama-0 (planned on node1 (cgsw-node1)): pending: {NO_ROOM}" in err.value.message
    # the step is recorded: the files say where ollama-0 belongs, a rerun applies them again
    assert stack_of(bed.out)["ollama-0"]["environment"]["NVIDIA_VISIBLE_DEVICES"] == A_UUIDS[2]
    assert read_mode(bed.out.resolve(), "ollama-replicas")["mode"] == "gpu-failover"


# --- the stack's name and whether it is deployed ----------------------------------------------


def test_deploy_records_its_stack_name_and_a_fallback_without_p_uses_it(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = rendered(tmp_path)
    monkeypatch.setattr(engine_swarm, "require_manager", lambda client: None)
    engine_swarm.deploy(
        "the-client", out, "cgfb", timeout_s=5.0, wait=False, report=lambda *a: None
    )
    assert (out / ".composegen" / "deployed-stack").read_text() == "cgfb\n"
    assert stack(out).name == "cgfb"  # not the profile's name from the stack file's header
    assert sw.stack_at(str(out), "other").name == "other"  # type: ignore[union-attr]
    engine.reset()
    failover.run(stack(out), failover.Request("gpu-failed", "node1:0"), io())
    assert engine.deployed_checks == ["cgfb"]
    assert [c[2] for c in engine.calls if c[0] == "deploy"] == ["cgfb", "cgfb"]


def test_a_fallback_on_a_stack_swarm_does_not_list_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from composegen.engine import docker as eng
    from tests.fake_docker import FakeDocker

    out = rendered(tmp_path)
    client = FakeDocker()
    client.swarm.init()
    client.swarm.add_service("other-stack", "ollama-0")
    deploys: list[str] = []
    monkeypatch.setattr(engine_swarm, "stack_deploy", lambda d, p, say: deploys.append(p))
    monkeypatch.setattr(eng, "connect", lambda *a, **k: client)
    files = snapshot(out)
    code, text, err = call(["fallback", "-C", str(out), "--gpu-failed", "node1:0"], capsys)
    assert code == 2 and text == "" and deploys == []
    assert err.strip().splitlines() == [
        "composegen: error: stack ollama-replicas is not deployed (Swarm lists no service "
        "labelled com.docker.stack.namespace=ollama-replicas): composegen deploy -C "
        f"{out.resolve()} first"
    ]
    assert snapshot(out) == files


# --- room, output order, concurrency ----------------------------------------------------------


def test_the_room_counts_only_the_gpus_advertised_with_a_uuid(tmp_path: Path) -> None:
    out = rendered(tmp_path)
    inputs = app.load_inputs(out)
    assert inputs.fleet is not None
    node1 = inputs.fleet.nodes[0]
    gpus = tuple(
        replace(g, uuid="") if g.index == 3 else g for g in node1.inventory.gpus
    )  # a GPU whose UUID nvidia-smi did not give: daemon.json cannot advertise it
    nodes = (replace(node1, inventory=replace(node1.inventory, gpus=gpus)), inputs.fleet.nodes[1])
    assert sw.advertised_per_node(replace(inputs.fleet, nodes=nodes)) == {"node1": 3, "node2": 2}


def test_without_an_engine_nothing_is_said_to_move(tmp_path: Path, engine: Engine) -> None:
    from composegen.engine.docker import EngineError

    out = rendered(tmp_path)
    files = snapshot(out)

    def no_engine() -> Any:
        raise EngineError("no Docker engine at unix:///var/run/docker.sock")

    said = Said()
    with pytest.raises(EngineError, match="no Docker engine"):
        failover.run(
            stack(out),
            failover.Request("gpu-failed", "node1:0"),
            failover.Io(said, connect=no_engine),
        )
    assert said == [] and snapshot(out) == files and engine.calls == []


def test_a_step_recorded_while_this_one_waited_for_the_lock_is_kept(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = rendered(tmp_path)
    failover.run(stack(out), failover.Request("gpu-failed", "node1:0"), io())
    real_lock = sw.project_lock
    others = iter([("gpu-failed", "node1:2")])

    @contextlib.contextmanager
    def lock_after_another(directory: Path, project: str, what: str) -> Iterator[None]:
        # another fallback takes the lock and finishes first
        for action, ids in others:
            failover.run(stack(out), failover.Request(action, ids), io())
        with real_lock(directory, project, what):
            yield

    monkeypatch.setattr(sw, "project_lock", lock_after_another)
    failover.run(stack(out), failover.Request("gpu-failed", "node1:1"), io())
    record = json.loads((out / ".composegen" / "render.json").read_text())
    assert record["failed"] == [[0], [2], [1]]
    for f in app.rebuild(app.load_inputs(out)).files:
        assert (out / f.path).read_text() == f.text, f.path
