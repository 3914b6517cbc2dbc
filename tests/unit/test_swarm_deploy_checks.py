"""What deploy / status / undeploy of a swarm stack must not take for "as planned" or "gone",
and the input they must refuse (composegen.engine.swarm, swarm_undeploy, cli_swarm), against
the fake Docker client's Swarm (tests/fake_docker.py) and a stand-in `docker` CLI on PATH.

The stack is rendered for real from tests/fixtures/fleet (test_swarm_deploy.render).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from composegen.engine import swarm as sw
from composegen.engine import swarm_undeploy
from composegen.engine.docker import EngineError, NoEngineError, connect_at
from composegen.errors import BadInputError
from composegen.swarm_stack import load_stack
from tests.fake_docker import FakeDocker, FakeSwarm
from tests.unit.test_swarm_deploy import GPU, PROJECT, B, Bed, fake_cli, render, run_cli, wait

ROLLED_BACK = "rollback completed"  # Swarm's UpdateStatus.Message after failure_action rollback
PAUSED = "update paused due to failure or early termination of task 9uaaj3yd0vd5kt3k0cdkdgcbz"


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    return render(tmp_path)


def row_of(status: sw.StackStatus, service: str) -> Any:
    return next(r for r in status.rows if r.service == service)


# --- 1. a task of the previous spec is not converged ------------------------------------------


def test_a_task_of_the_previous_spec_with_the_planned_gpu_is_not_as_planned(stack: Path) -> None:
    bed = Bed(stack)
    bed.run_all()
    assert wait(bed, stack).ok
    # `docker stack deploy` of a new image: the spec changed, the task still runs the old one
    # on the same GPU, and UpdateStatus still says the last update completed
    bed.swarm.update_service(f"{PROJECT}_ollama-1", image="ollama/ollama:0.6.8", state="completed")
    status = sw.stack_status(bed.client, load_stack(stack))
    row = row_of(status, "ollama-1")
    assert (row.state, row.gpus, row.current, row.ok) == (
        "running",
        (GPU["ollama-1"],),
        False,
        False,
    )
    assert status.problems() == [
        "ollama-1 (planned on gpu-a) on gpu-a: running: a task of the service's previous spec "
        "(Swarm has not updated it yet): GPU " + GPU["ollama-1"] + " (task spec)"
    ]
    # Swarm replaces it: converged once the new task runs
    old = next(
        t for t in bed.swarm.tasks if t["ServiceID"] == bed.swarm.service_id(f"{PROJECT}_ollama-1")
    )

    def swarm_does(swarm: FakeSwarm) -> None:
        if swarm.polls == 3:
            swarm.set_state(old, "shutdown")
            swarm.add_task(f"{PROJECT}_ollama-1", bed.node["gpu-a"], "running")

    bed.swarm.on_poll = swarm_does
    assert row_of(wait(bed, stack), "ollama-1").current
    assert bed.swarm.polls >= 3


# --- 2. a task shutting down is not running ---------------------------------------------------


def test_a_running_task_swarm_is_shutting_down_does_not_count(stack: Path) -> None:
    bed = Bed(stack)
    bed.run_all(but=("ollama-0",))
    bed.swarm.add_task(f"{PROJECT}_ollama-0", bed.node["gpu-a"], "running", desired="shutdown")
    status = sw.stack_status(bed.client, load_stack(stack))
    row = row_of(status, "ollama-0")
    assert (row.state, row.ok) == ("stopping", False)
    assert status.problems() == [
        "ollama-0 (planned on gpu-a) on gpu-a: stopping: Swarm means to shutdown its last task"
    ]
    with pytest.raises(EngineError, match=r"not running as planned after 0\.1s: ollama-0"):
        wait(bed, stack, timeout=0.1)


# --- 3. a rolled back or paused update fails --------------------------------------------------


@pytest.mark.parametrize(
    ("state", "message"),
    [("rollback_completed", ROLLED_BACK), ("paused", PAUSED)],
    ids=["rolled-back", "paused"],
)
def test_a_rolled_back_or_paused_update_fails_with_swarms_message(
    stack: Path, state: str, message: str
) -> None:
    bed = Bed(stack)
    bed.run_all()  # the tasks run the (rolled back) spec, as planned otherwise
    bed.swarm.update_service(f"{PROJECT}_ollama-3", state=state, message=message)
    with pytest.raises(EngineError) as err:
        wait(bed, stack, timeout=30)
    assert err.value.message == (
        f"{PROJECT}: Swarm did not apply the update: ollama-3: update {state}: {message}"
    )
    assert bed.swarm.polls == 2  # at once (the status, then the message), not at the timeout


def test_an_update_in_progress_is_waited_for(stack: Path) -> None:
    bed = Bed(stack)
    bed.run_all()
    bed.swarm.update_service(f"{PROJECT}_gateway", state="updating")

    def swarm_does(swarm: FakeSwarm) -> None:
        if swarm.polls == 4:
            swarm.update_service(f"{PROJECT}_gateway", state="completed")

    bed.swarm.on_poll = swarm_does
    assert wait(bed, stack).ok
    assert bed.swarm.polls == 4
    assert row_of(sw.stack_status(bed.client, load_stack(stack)), "gateway").update == "completed"


# --- 4. the CLI talks to the SDK's engine -----------------------------------------------------

ENV_SCRIPT = 'env | grep -E \'^(DOCKER_|LD_)\' | sort > "$(dirname "$0")/../cli-env"\n'


def test_the_cli_gets_the_sdks_engine_and_nothing_engine_related_from_dotenv(
    stack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{fake_cli(tmp_path, ENV_SCRIPT)}:/usr/bin:/bin")
    for key in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "LD_PRELOAD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DOCKER_CONTEXT", "prod-cluster")  # the shell's: the CLI would follow it
    (stack / ".env").write_text(
        "DOCKER_HOST=tcp://10.20.0.7:2375\nDOCKER_CONTEXT=other\nLD_PRELOAD=/tmp/x.so\n"
        "docker_tls_verify=1\nOLLAMA_KEEP_ALIVE=36h\n"
    )
    sw.stack_deploy(stack, PROJECT, lambda line: None)
    assert (tmp_path / "cli-env").read_text().split() == ["DOCKER_HOST=unix:///var/run/docker.sock"]
    assert (tmp_path / "env").read_text().split()[0] == "keep=36h"  # other keys still pass
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/docker.sock")  # what connect() uses
    sw.stack_rm(stack, PROJECT, lambda line: None)
    assert (tmp_path / "cli-env").read_text().split() == [
        "DOCKER_HOST=unix:///run/user/1000/docker.sock"
    ]


# --- 6. engine addresses ----------------------------------------------------------------------

BAD_ENGINES = ("tcp://a:b", "tcp://[::1", "ssh://a@b:1:2", "tcp://gpu-a:0", "tcp://gpu_a:2376")


@pytest.mark.parametrize("bad", BAD_ENGINES)
def test_a_bad_engine_address_is_refused_by_the_fleet_check(tmp_path: Path, bad: str) -> None:
    with pytest.raises(BadInputError) as err:
        render(tmp_path, {"gpu-b": bad})
    assert err.value.message.endswith(f"nodes[1].engine: {bad!r} is not an engine address")


def test_good_engine_addresses_pass_the_fleet_check(tmp_path: Path) -> None:
    good = ("tcp://[fd00::7]:2376", "ssh://admin@gpu-b:2222", "ssh://gpu-b", "tcp://10.0.0.2:2376")
    for k, address in enumerate(good):
        stack = render(tmp_path / str(k), {"gpu-b": address})
        assert load_stack(stack).nodes["gpu-b"].engine == address


@pytest.mark.parametrize("bad", BAD_ENGINES[:3])
def test_connect_at_turns_an_unparsable_address_into_an_engine_error(bad: str) -> None:
    with pytest.raises(NoEngineError, match=re.escape(f"no Docker engine at {bad}: ")):
        connect_at(bad, timeout_s=1)


def test_nodes_json_engine_is_checked_again_when_read(stack: Path) -> None:
    path = stack / "swarm" / "nodes.json"
    data = json.loads(path.read_text())
    data["nodes"][1]["engine"] = "ssh://a@b:1:2"  # a hand edit after render
    path.write_text(json.dumps(data))
    with pytest.raises(BadInputError) as err:
        load_stack(stack)
    assert err.value.message == f"{path}: nodes[1].engine: 'ssh://a@b:1:2' is not an engine address"


# --- 7. GPUs the node's engine cannot verify; the resources Swarm assigned --------------------


def test_a_node_engine_that_cannot_be_reached_fails_the_row(tmp_path: Path) -> None:
    stack = render(tmp_path, {"gpu-b": "tcp://gpu-b:2376"})
    bed = Bed(stack)
    bed.run_all(but=("ollama-2", "ollama-3"))
    for name in ("ollama-2", "ollama-3"):
        bed.swarm.add_task(f"{PROJECT}_{name}", bed.node["gpu-b"], "running", container="c0ffee")

    def unreachable(url: str) -> Any:
        raise NoEngineError(f"no Docker engine at {url}: connection refused")

    with pytest.raises(EngineError) as err:
        wait(bed, stack, timeout=30, node_client=unreachable)
    assert (
        "ollama-2 on gpu-b: GPUs not verified on the node's engine tcp://gpu-b:2376: no Docker "
        "engine at tcp://gpu-b:2376: connection refused"
    ) in err.value.message


def test_a_node_engine_that_does_not_know_the_task_container_fails_the_row(
    tmp_path: Path,
) -> None:
    stack = render(tmp_path, {"gpu-b": "unix:///run/gpu-b.sock"})
    bed = Bed(stack)
    bed.run_all(but=("ollama-3",))
    bed.swarm.add_task(f"{PROJECT}_ollama-3", bed.node["gpu-b"], "running", container="c0ffee")
    status = sw.stack_status(bed.client, load_stack(stack), node_client=lambda url: FakeDocker())
    row = row_of(status, "ollama-3")
    assert not row.ok and row.gpus_from == "task spec"
    assert row.mismatch[0].startswith(
        "GPUs not verified on the node's engine unix:///run/gpu-b.sock: "
    )


def test_a_task_swarm_assigned_no_gpu_resource_is_not_as_planned(stack: Path) -> None:
    bed = Bed(stack)
    bed.run_all(but=("ollama-2",))
    bed.swarm.add_task(f"{PROJECT}_ollama-2", bed.node["gpu-b"], "running", assigned=[])
    with pytest.raises(EngineError) as err:
        wait(bed, stack, timeout=30)
    assert err.value.message == (
        f"{PROJECT}: not as planned: ollama-2 on gpu-b: Swarm assigned it 0 NVIDIA-GPU "
        "resource(s), planned 1"
    )
    bed.swarm.tasks.pop()
    bed.swarm.add_task(f"{PROJECT}_ollama-2", bed.node["gpu-b"], "running", assigned=B)
    assert (
        "assigned it 2 NVIDIA-GPU resource(s), planned 1"
        in sw.stack_status(bed.client, load_stack(stack)).problems()[0]
    )


# --- 8. / 9. bad input: exit 2, one line --------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "where"),
    [
        ([1], "not a {nodes: [...]} object"),
        ({"nodes": [1]}, "nodes[0]: not an object"),
        ({"nodes": [{"hostname": "gpu-a"}]}, "nodes[0].name: not a non-empty string"),
        ({"nodes": [{"name": "gpu-a", "gpus": "GPU-1"}]}, "nodes[0].gpus: not a list of GPU UUIDs"),
    ],
    ids=["list", "node-not-object", "no-name", "gpus-not-list"],
)
def test_a_malformed_nodes_json_is_bad_input(
    stack: Path,
    nodes: Any,
    where: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = stack / "swarm" / "nodes.json"
    path.write_text(json.dumps(nodes))
    bed = Bed(stack)
    code, out, err = run_cli(monkeypatch, capsys, bed.client, "status", "-C", str(stack))
    assert code == 2 and out == ""
    assert err.startswith(f"composegen: error: {path}: {where}") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "name", ["../../x", "-x", "a b", "x" * 64], ids=["up", "dash", "space", "long"]
)
def test_a_bad_stack_name_is_refused_before_anything_runs(
    stack: Path,
    tmp_path: Path,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", str(fake_cli(tmp_path, "")))
    client = FakeDocker()
    client.swarm.init()
    for command in ("deploy", "undeploy"):
        code, out, err = run_cli(monkeypatch, capsys, client, command, "-C", str(stack), "-p", name)
        assert code == 2 and out == "", err
        assert err.startswith(f"composegen: error: -p: {name!r} is not a stack name"), err
    assert not (tmp_path / "argv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "fleet.yaml", "stack"]
    with pytest.raises(BadInputError):
        sw.stack_deploy(stack, name, print)


def test_undeploy_never_takes_the_directory_name_for_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = render(tmp_path)
    prod = tmp_path / "prod"
    stack.rename(prod)
    text = (prod / "docker-stack.yml").read_text()
    (prod / "docker-stack.yml").write_text(text.split("\n", 1)[1])  # no header line
    (prod / "swarm" / "nodes.json").unlink()
    monkeypatch.setenv("PATH", str(fake_cli(tmp_path, "")))
    bed = Bed(prod)
    code, _, err = run_cli(monkeypatch, capsys, bed.client, "undeploy", "-C", str(prod))
    assert code == 2 and "no stack name recorded" in err and "-p NAME" in err
    assert not (tmp_path / "argv").exists()
    # the profile's name, recorded in swarm/nodes.json, is enough
    (prod / "swarm").mkdir(exist_ok=True)
    (prod / "swarm" / "nodes.json").write_text(json.dumps({"profile": PROJECT, "nodes": []}))
    assert load_stack(prod, name_from_dir=False).project == PROJECT


# --- 13. timeouts and engines lost midway -------------------------------------------------------


def test_deploy_timeout_covers_the_cli_itself(
    stack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = fake_cli(tmp_path, "exec sleep 30\n")
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    bed = Bed(stack)
    t0 = time.monotonic()
    with pytest.raises(EngineError, match=r"`docker stack deploy` ran over 1s"):
        sw.deploy(bed.client, stack, PROJECT, timeout_s=1, wait=True, report=bed.report)
    assert time.monotonic() - t0 < 20  # not the CLI's own 300 s


def test_undeploy_reports_a_node_engine_lost_midway_and_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = render(tmp_path, {"gpu-b": "unix:///run/gpu-b.sock"})
    bed = Bed(stack)
    node_b = FakeDocker()
    monkeypatch.setenv("PATH", str(fake_cli(tmp_path, "")))

    def swarm_does(swarm: FakeSwarm) -> None:
        if (tmp_path / "argv").exists():
            swarm.services.clear()
            node_b.online = False  # gpu-b's engine goes away while Swarm removes the stack

    bed.swarm.on_poll = swarm_does
    removed = swarm_undeploy.undeploy(
        bed.client, stack, PROJECT, timeout_s=5, report=bed.report, poll_s=0,
        node_client=lambda url: node_b,
    )  # fmt: skip
    assert removed.services == 5
    assert len(removed.unreachable) == 1 and removed.unreachable[0].startswith("gpu-b: ")
    warnings = [d for _, st, d in bed.events if st == "warning"]
    assert warnings == [f"cannot check the task containers on {removed.unreachable[0]}"]
    assert bed.events[-1][1] == "removed"


# --- 5. ssh:// node engines, through the ssh command (docker[ssh]) -----------------------------


class _Engine(http.server.BaseHTTPRequestHandler):
    """A node's engine API, just what reading a task container needs."""

    protocol_version = "HTTP/1.1"
    env: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if self.path.endswith("/_ping"):
            body, kind = b"OK", "text/plain"
        elif self.path.endswith("/version"):
            body, kind = json.dumps({"ApiVersion": "1.41", "Version": "20.10.24"}).encode(), ""
        elif "/containers/c0ffee/json" in self.path:
            body = json.dumps({"Id": "c0ffee", "Config": {"Env": self.env}}).encode()
            kind = ""
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind or "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


SSH_STUB = """#!{python}
# `ssh [-l USER] [-p PORT] -- HOST docker system dial-stdio`, as docker-py runs it: records its
# arguments, then bridges stdin/stdout to the node engine's socket (what dial-stdio does)
import os, socket, sys, threading
with open({argv!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
s = socket.socket(socket.AF_UNIX)
s.connect({sock!r})
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        s.sendall(data)
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    os.write(1, data)
"""


def test_an_ssh_engine_is_read_through_the_ssh_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "gpu-b.sock"
    server = socketserver.ThreadingUnixStreamServer(str(sock), _Engine)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Engine.env = [f"NVIDIA_VISIBLE_DEVICES={B[1]}", "PATH=/bin"]
    bindir = tmp_path / "sshbin"
    bindir.mkdir()
    stub = bindir / "ssh"
    argv = tmp_path / "ssh-argv"
    stub.write_text(SSH_STUB.format(python=sys.executable, argv=str(argv), sock=str(sock)))
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    try:
        stack = render(tmp_path / "s", {"gpu-b": "ssh://admin@gpu-b:2222"})
        bed = Bed(stack)
        bed.run_all(but=("ollama-3",))
        bed.swarm.add_task(f"{PROJECT}_ollama-3", bed.node["gpu-b"], "running", container="c0ffee")
        # no node_client: the real connect_at, over the stub ssh
        row = row_of(sw.stack_status(bed.client, load_stack(stack)), "ollama-3")
        assert (row.gpus, row.gpus_from, row.mismatch) == ((B[1],), "container", [])
        assert argv.read_text().splitlines()[0] == (
            "-l admin -p 2222 -- gpu-b docker system dial-stdio"
        )
    finally:
        server.shutdown()
        server.server_close()
