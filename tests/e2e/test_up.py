"""`composegen up / down / status` on a real engine, for each of the five profiles.

Each profile is rendered on a fake inventory with its images swapped for the local stand-ins
through `render --image`, then started with `composegen up`. Checked: every service healthy;
NVIDIA_VISIBLE_DEVICES inside every GPU container equals the plan; a request through the
gateway reaches every replica of every upstream; a second `up` changes nothing; `down` keeps
named volumes. Everything is created under test project names and removed by their labels.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from composegen import app
from composegen.profiles import Overrides
from tests.compose_cli import compose_v1
from tests.conftest import ROOT
from tests.stack_checks import inventory_file

# per test run: several checkouts may run these tests on one engine at once, and a fixed project
# name would let one run's clean-up remove the other's containers
RUN = f"{os.getpid() % 100000}"

CASES = {
    "rag-a100": "a100_8x80",
    "ollama-replicas": "a100_4x64",
    "zenglow-personas": "consumer_pair",
    "rma-shared": "single_8gb",
    "ollama-pool": "reference",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "composegen", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Stack:
    profile: str
    project: str
    directory: Path
    port: int
    built: app.Rendered


def image_overrides(name: str, tags: dict[str, str]) -> tuple[str, ...]:
    from composegen import profiles

    prof = profiles.load(name)
    out = []
    for key, image in prof.images.items():
        if image.startswith("ollama/"):
            out.append(f"{key}={tags['ollama']}")
        elif image.startswith("nginx"):
            out.append(f"{key}={tags['nginx']}")
        else:
            out.append(f"{key}={tags['model']}")
    return tuple(out)


def render_stack(name: str, tmp: Path, tags: dict[str, str], *sets: str) -> Stack:
    scenario = CASES[name]
    port = free_port()
    images = image_overrides(name, tags)
    inv = None if scenario == "reference" else inventory_file(tmp, scenario)
    all_sets = (f"gateway.port={port}", *sets)
    args = ["render", "-P", name, "-o", str(tmp / name)]
    args += ["--reference"] if inv is None else ["--inventory", inv]
    for i in images:
        args += ["--image", i]
    for s in all_sets:
        args += ["--set", s]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    built = app.build(
        name,
        inventory=inv,
        reference=inv is None,
        overrides=Overrides(sets=all_sets, images=images),
    )
    return Stack(name, f"cg-e2e-{name}-{RUN}", tmp / name, port, built)


def containers(client: Any, project: str) -> dict[str, Any]:
    """The project's containers by service. Listed first, then inspected one by one: one that
    goes away in between (up is still working) is simply not there yet."""
    from docker.errors import NotFound

    out = {}
    for row in client.api.containers(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    ):
        try:
            c = client.containers.get(row["Id"])
        except NotFound:
            continue
        out[c.labels["com.docker.compose.service"]] = c
    return out


def _cleanup(client: Any, project: str) -> None:
    from docker.errors import APIError

    label = {"label": f"com.docker.compose.project={project}"}
    for kind in ("containers", "networks", "volumes"):
        coll = getattr(client, kind)
        items = (
            coll.list(all=True, filters=label) if kind == "containers" else coll.list(filters=label)
        )
        for item in items:
            try:
                item.remove(force=True) if kind != "networks" else item.remove()
            except APIError as exc:  # already gone, or being removed
                if exc.status_code not in (403, 404, 409):  # gone, busy, or still in use
                    raise


def up(st: Stack, *extra: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    if st.profile == "rag-a100" and "--no-models" not in extra:
        # no fake hub runs for these tests, so the Hugging Face fetch `up` does first would
        # fail; tests/e2e/test_models_pull.py runs it against one
        extra = ("--no-models", *extra)
    done = cli(
        "up", "-C", str(st.directory), "-p", st.project, "--json", "--wait-timeout", "240", *extra
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done, events


def env_of(container: Any) -> dict[str, str]:
    """The environment of the container's main process: the engine adds NVIDIA_VISIBLE_DEVICES
    to the runtime spec at start, so it is in /proc/1/environ, not in Config.Env."""
    res = container.exec_run(["cat", "/proc/1/environ"])
    assert res.exit_code == 0, res.output
    return dict(e.split("=", 1) for e in res.output.decode().split("\0") if "=" in e)


def probe_path(st: Stack, group: str) -> tuple[str, dict[str, Any] | None]:
    svc = st.built.profile.service(st.built.plan.groups[group][0].service)
    if svc.kind == "ollama":
        return "api/generate", {"model": svc.models[0].name, "prompt": "hi", "stream": False}
    return "v1/models", None


@pytest.mark.parametrize("name", list(CASES))
def test_up_all_healthy_gpus_routes_idempotent_down(
    docker_client: Any, stack_factory: Any, name: str
) -> None:
    st = stack_factory(name)
    done, events = up(st)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    final = events[-1]
    assert final["event"] == "done"
    plan = st.built.plan
    expected = {i.name for i in plan.instances} | {"gateway"}
    assert set(final["actions"]) == expected
    assert set(final["actions"].values()) == {"create"}

    # every service running and passing its own healthcheck
    found = containers(docker_client, st.project)
    assert set(found) == expected
    for svc, c in found.items():
        c.reload()
        assert c.status == "running", svc
        check = c.attrs["Config"]["Healthcheck"]["Test"]
        code = c.exec_run(check[1:] if check[0] == "CMD" else ["sh", "-c", check[1]]).exit_code
        assert code == 0, f"{svc}: its healthcheck {check} fails"

    # the GPUs each container was given are exactly the plan's
    for inst in plan.instances:
        env = env_of(found[inst.name])
        if inst.device == "gpu":
            assert env.get("NVIDIA_VISIBLE_DEVICES") == ",".join(inst.device_ids), inst.name
            assert final["gpus"][inst.name] == list(inst.device_ids)
        else:
            assert "NVIDIA_VISIBLE_DEVICES" not in env, inst.name

    # through the gateway, every replica of every upstream answers
    base = f"http://127.0.0.1:{st.port}"
    assert httpx.get(f"{base}/healthz", timeout=5).json()["status"] == "ok"
    for group, insts in plan.groups.items():
        route = st.built.profile.service(insts[0].service).route
        if route is None:
            continue
        path, body = probe_path(st, group)
        want = {found[i.name].attrs["Config"]["Hostname"] for i in insts}
        seen: set[str] = set()
        for _ in range(6 * len(insts) + 4):
            r = (
                httpx.post(f"{base}{route}{path}", json=body, timeout=10)
                if body is not None
                else httpx.get(f"{base}{route}{path}", timeout=10)
            )
            assert r.status_code == 200, f"{group}: {r.status_code} {r.text[:200]}"
            seen.add(r.json()["served_by"])
            if seen == want:
                break
        assert seen == want, f"{group}: replicas reached {seen}, expected {want}"

    # a second up changes nothing
    ids = {s: c.id for s, c in found.items()}
    again, events2 = up(st)
    assert again.returncode == 0, again.stderr
    assert set(events2[-1]["actions"].values()) == {"keep"}
    assert {s: c.id for s, c in containers(docker_client, st.project).items()} == ids

    # docker-compose (v1, Debian's, by its path: the venv's docker-compose is Compose v2 and
    # tests/e2e/test_compose_v2.py checks it) sees the stack through the labels
    v1 = compose_v1()
    ps = subprocess.run(
        [str(v1), "-p", st.project, "ps", "--services"],
        cwd=st.directory,
        capture_output=True,
        text=True,
        check=False,
    )
    if v1 is not None and ps.returncode == 0:
        # v1 lists every service of the file, those of the inactive `monitor` profile too
        assert set(ps.stdout.split()) == expected | {"prometheus", "grafana"}

    # status
    stat = cli("status", "-C", str(st.directory), "-p", st.project, "--json")
    assert stat.returncode == 0, stat.stderr
    assert {r["service"] for r in json.loads(stat.stdout)["services"]} == expected

    # down keeps the named volumes
    vols = {
        v.name
        for v in docker_client.volumes.list(
            filters={"label": f"com.docker.compose.project={st.project}"}
        )
    }
    assert vols, "the stack declared named volumes"
    gone = cli("down", "-C", str(st.directory), "-p", st.project)
    assert gone.returncode == 0, gone.stderr
    assert containers(docker_client, st.project) == {}
    assert {
        v.name
        for v in docker_client.volumes.list(
            filters={"label": f"com.docker.compose.project={st.project}"}
        )
    } == vols


def test_changed_service_is_recreated_and_removed_one_removed(
    docker_client: Any, stack_factory: Any
) -> None:
    st = stack_factory("zenglow-personas")
    done, _ = up(st)
    assert done.returncode == 0, done.stderr
    before = {s: c.id for s, c in containers(docker_client, st.project).items()}
    compose = st.directory / "docker-compose.yml"
    text = compose.read_text()
    # a hand edit: jarvis gets another keep-alive; leonardo is untouched
    compose.write_text(
        text.replace("OLLAMA_KEEP_ALIVE: ${OLLAMA_KEEP_ALIVE:-30m}", "OLLAMA_KEEP_ALIVE: 45m", 1)
    )
    again, events = up(st)
    assert again.returncode == 0, again.stderr
    actions = events[-1]["actions"]
    changed = [s for s, a in actions.items() if a == "recreate"]
    assert len(changed) == 1
    after = {s: c.id for s, c in containers(docker_client, st.project).items()}
    assert after[changed[0]] != before[changed[0]]
    assert all(after[s] == before[s] for s in after if s != changed[0])
    assert "45m" in env_of(containers(docker_client, st.project)[changed[0]])["OLLAMA_KEEP_ALIVE"]


def test_unsupported_key_is_named(stack_factory: Any) -> None:
    st = stack_factory("zenglow-personas")
    compose = st.directory / "docker-compose.yml"
    compose.write_text(
        compose.read_text().replace(
            "    restart: unless-stopped\n",
            "    restart: unless-stopped\n    privileged: true\n",
            1,
        )
    )
    done, _ = up(st)
    assert done.returncode == 2
    assert "privileged: this compose key is not supported" in done.stderr
    assert "Traceback" not in done.stderr


def test_unhealthy_service_ends_wait_with_health_log(
    docker_client: Any, stack_factory: Any
) -> None:
    st = stack_factory("rag-a100")
    compose = st.directory / "docker-compose.yml"
    compose.write_text(
        compose.read_text().replace(
            "      UVICORN_PORT: '8004'\n", "      UVICORN_PORT: '8004'\n      STUB_FAIL: '1'\n", 1
        )
    )
    done, events = up(st, "--wait-timeout", "20")
    assert done.returncode == 1
    failed = [e for e in events if e.get("event") == "failed"]
    assert failed and "service whisper" in failed[0]["error"]
    assert "last 30 log lines of whisper" in failed[0]["details"]


def test_exited_service_ends_wait_at_once(docker_client: Any, stack_factory: Any) -> None:
    st = stack_factory("zenglow-personas")
    compose = st.directory / "docker-compose.yml"
    text = compose.read_text()
    compose.write_text(
        text.replace(
            "      OLLAMA_MODELS: /models\n",
            "      OLLAMA_MODELS: /models\n      STUB_EXIT_AFTER_S: '1'\n"
            "      STUB_STARTUP_DELAY_S: '30'\n",
            1,
        )
    )
    done, events = up(st, "--wait-timeout", "200")
    assert done.returncode == 1
    failed = [e for e in events if e.get("event") == "failed"]
    # the state now: exited, or being restarted by its policy, with the exit code of the crash
    assert failed and "exit code 1" in failed[0]["error"]
    assert "exited" in failed[0]["error"] or "keeps restarting" in failed[0]["error"]
    # it did not sit out the deadline
    assert events[-1]["t"] < 60 if "t" in events[-1] else True


def test_missing_image_names_it(stack_factory: Any) -> None:
    st = stack_factory("zenglow-personas")
    compose = st.directory / "docker-compose.yml"
    compose.write_text(
        compose.read_text().replace(
            "image: composegen-test/ollama-stub:1", "image: composegen-test/not-built:9", 1
        )
    )
    done, _ = up(st, "--pull", "never")
    assert done.returncode == 1
    assert "composegen-test/not-built:9" in done.stderr
    assert "docker pull" in done.stderr or "--image" in done.stderr


def test_two_ups_at_once_do_not_interleave(stack_factory: Any) -> None:
    from composegen.engine.state import project_lock

    st = stack_factory("zenglow-personas")
    with project_lock(st.directory, st.project, "up"):
        done, _ = up(st)
    assert done.returncode == 1
    assert f"project {st.project} is busy: composegen up (pid" in done.stderr


def test_sigint_during_up_then_up_converges(docker_client: Any, stack_factory: Any) -> None:
    import signal
    import time

    st = stack_factory("zenglow-personas")
    compose = st.directory / "docker-compose.yml"
    compose.write_text(
        compose.read_text().replace(
            "      OLLAMA_MODELS: /models\n",
            "      OLLAMA_MODELS: /models\n      STUB_STARTUP_DELAY_S: '4'\n",
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "composegen", "up", "-C", str(st.directory), "-p", st.project],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not containers(docker_client, st.project):
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # never leave an up running behind a failed assertion
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    done, _ = up(st)
    assert done.returncode == 0, done.stderr
    assert all(c.status == "running" for c in containers(docker_client, st.project).values())


def test_engine_that_cannot_honour_the_gpu_request(stack_factory: Any) -> None:
    st = stack_factory("zenglow-personas")
    compose = st.directory / "docker-compose.yml"
    # the engine answers a driver it has no plugin for exactly as an engine without the NVIDIA
    # toolkit answers "nvidia": could not select device driver
    compose.write_text(compose.read_text().replace("driver: nvidia", "driver: nvidia-absent"))
    done, _ = up(st)
    assert done.returncode == 1
    assert "cannot honour NVIDIA GPU requests" in done.stderr
    assert "composegen fallback --cpu" in done.stderr


# --- the engine layer's failure paths on a real engine (issue 9 items 12, 20; issue 10 items 9,
# 10, 14) ------------------------------------------------------------------------------------

FLAKY = """
services:
  flaky:
    image: {image}
    # the first run fails, the restart policy's second run serves (the root fs survives it)
    command: ["sh", "-c", "if [ -e /ran ]; then exec sleep 600; fi; : > /ran; exit 1"]
    restart: always
    healthcheck:
      test: ["CMD", "sh", "-c", "[ -e /ran ]"]
      interval: 30s
      start_period: {start_period}
"""


def _flaky(tmp_path: Path, image: str, start_period: str) -> Path:
    d = tmp_path / f"flaky-{start_period}"
    d.mkdir()
    (d / "docker-compose.yml").write_text(FLAKY.format(image=image, start_period=start_period))
    return d


def test_restart_within_the_start_period_is_waited_out_on_the_engine(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    project = f"cg-e2e-flaky-{RUN}"
    _cleanup(docker_client, project)
    try:
        d = _flaky(tmp_path, busybox_image, "60s")
        done = cli("up", "-C", str(d), "-p", project, "--wait-timeout", "60")
        assert done.returncode == 0, done.stderr
        flaky = containers(docker_client, project)["flaky"]
        flaky.reload()
        assert flaky.attrs["RestartCount"] >= 1 and flaky.status == "running"
        # status agrees with up: running, ready, exit 0
        st = cli("status", "-C", str(d), "-p", project, "--json")
        assert st.returncode == 0, st.stdout + st.stderr
        row = json.loads(st.stdout)["services"][0]
        assert (row["state"], row["ready"]) == ("running", "yes")
    finally:
        _cleanup(docker_client, project)


def test_restart_outside_the_start_period_reports_the_current_container(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    project = f"cg-e2e-flaky0-{RUN}"
    _cleanup(docker_client, project)
    try:
        d = _flaky(tmp_path, busybox_image, "0s")
        done = cli("up", "-C", str(d), "-p", project, "--wait-timeout", "60", "--json")
        assert done.returncode == 1
        failed = [json.loads(x) for x in done.stdout.splitlines() if '"failed"' in x]
        event = next(e for e in failed if e.get("event") == "failed")
        assert "service flaky" in event["error"]
        cid = containers(docker_client, project)["flaky"].id[:12]
        assert f"(container {cid}, " in event["details"]
    finally:
        _cleanup(docker_client, project)


def test_pull_failure_keeps_the_old_container_and_shows_the_whole_error(
    docker_client: Any, stack_factory: Any
) -> None:
    st = stack_factory("zenglow-personas")
    done, _ = up(st)
    assert done.returncode == 0, done.stderr
    before = {s: c.id for s, c in containers(docker_client, st.project).items()}
    compose = st.directory / "docker-compose.yml"
    compose.write_text(
        compose.read_text().replace(
            "image: composegen-test/ollama-stub:1", "image: registry.example.invalid/ollama:9", 1
        )
    )
    again = cli("up", "-C", str(st.directory), "-p", st.project, "--wait-timeout", "60")
    assert again.returncode == 1
    # the engine's own words, to their end
    assert "registry.example.invalid" in again.stderr and "no such host" in again.stderr
    after = containers(docker_client, st.project)
    assert {s: c.id for s, c in after.items()} == before
    assert all(c.status == "running" for c in after.values())


def test_up_in_cpu_fallback_is_refused_and_changes_nothing(
    docker_client: Any, stack_factory: Any
) -> None:
    st = stack_factory("rma-shared")
    done, _ = up(st)
    assert done.returncode == 0, done.stderr
    fb = cli("fallback", "-C", str(st.directory), "-p", st.project, "--cpu", timeout=400)
    assert fb.returncode == 0, fb.stderr
    before = {s: (c.id, c.status) for s, c in containers(docker_client, st.project).items()}
    again, _ = up(st)
    assert again.returncode == 1
    assert "cpu-fallback" in again.stderr and "composegen fallback --restore" in again.stderr
    assert {s: (c.id, c.status) for s, c in containers(docker_client, st.project).items()} == before
    status = cli("status", "-C", str(st.directory), "-p", st.project, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    states = {r["service"]: r["state"] for r in json.loads(status.stdout)["services"]}
    assert "stopped (fallback)" in states.values(), states


def test_down_by_name_after_the_file_is_gone(docker_client: Any, stack_factory: Any) -> None:
    st = stack_factory("zenglow-personas")
    done, _ = up(st)
    assert done.returncode == 0, done.stderr
    (st.directory / "docker-compose.yml").unlink()
    status = cli("status", "-C", str(st.directory), "-p", st.project)
    assert status.returncode == 0, status.stderr
    down = cli("down", "-C", str(st.directory), "-p", st.project)
    assert down.returncode == 0, down.stderr
    assert "no such file" in down.stderr and "labels" in down.stderr
    assert containers(docker_client, st.project) == {}
