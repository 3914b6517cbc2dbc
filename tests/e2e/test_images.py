"""The local TEST-ONLY images (scripts/images.sh) behave like the real images they stand in for:
the same invocations, ports, healthchecks and GPU environment, on a real engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from composegen.render_swarm import nginx_takes_resolve
from tests.e2e.conftest import TEST_LABELS
from tests.e2e.images import ensure_images

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@pytest.fixture(scope="session")
def test_images(docker_client: Any) -> dict[str, str]:
    return ensure_images()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The rag-a100 reference stack as the renderer writes it (healthchecks, commands)."""
    out = tmp_path_factory.mktemp("rag-a100")
    cmd = [sys.executable, "-m", "composegen", "render", "--profile", "rag-a100", "--reference"]
    subprocess.run([*cmd, "-o", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=60)
    doc: dict[str, Any] = yaml.safe_load((out / "docker-compose.yml").read_text())
    return doc


@contextmanager
def container(client: Any, image: str, **kwargs: Any) -> Iterator[Any]:
    """A detached, labelled container, removed afterwards whatever happens."""
    labels = {**kwargs.pop("labels", {}), **TEST_LABELS}
    c = client.containers.run(image, detach=True, labels=labels, **kwargs)
    try:
        yield c
    finally:
        c.remove(force=True)


def wait_for(check: Callable[[], T | None], timeout: float = 10.0, step: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s (last value {value!r})")
        time.sleep(step)


def host_port(c: Any, port: str) -> int:
    def published() -> int | None:
        c.reload()
        bindings = c.ports.get(port)
        return int(bindings[0]["HostPort"]) if bindings else None

    return wait_for(published, timeout=5)


def http(port: int, path: str, body: Any = None) -> tuple[int, str]:
    """One request to 127.0.0.1:port; (status, body text), (0, error) when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def statuses_until_ok(port: int, path: str, timeout: float = 10.0) -> list[int]:
    seen: list[int] = []

    def ok() -> bool:
        seen.append(http(port, path)[0])
        return seen[-1] == 200

    wait_for(ok, timeout=timeout)
    return seen


# ---- model stub (vLLM / TEI / speaches / Open WebUI) --------------------------------------------


def test_model_stub_starts_late_then_serves(
    docker_client: Any, test_images: dict[str, str]
) -> None:
    with container(
        docker_client,
        test_images["model"],
        command=["--model", "x", "--port", "8003", "--tensor-parallel-size", "2", "--unknown"],
        environment={"STUB_STARTUP_DELAY_S": "1"},
        ports={"8003/tcp": ("127.0.0.1", None)},
    ) as c:
        port = host_port(c, "8003/tcp")
        seen = statuses_until_ok(port, "/health")
        assert 503 in seen and seen[-1] == 200, seen
        status, text = http(port, "/health")
        health = json.loads(text)
        assert health["status"] == "ok"
        assert health["served_by"] == c.id[:12] and health["port"] == 8003
        status, text = http(port, "/v1/chat/completions", {"model": "x", "messages": []})
        answer = json.loads(text)
        assert status == 200 and answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["role"] == "assistant"
        status, text = http(port, "/v1/embeddings", {"input": ["a", "b"]})
        assert status == 200 and len(json.loads(text)["data"]) == 2
        assert json.loads(http(port, "/v1/models")[1])["data"][0]["id"] == "x"
        assert json.loads(http(port, "/anything/else")[1])["echo"] is True
        started = time.monotonic()
        c.stop(timeout=10)
        c.reload()
        assert time.monotonic() - started < 3
        assert c.attrs["State"]["ExitCode"] == 0
        assert b'"POST /v1/chat/completions HTTP/1.1" 200' in c.logs()


def test_model_stub_passes_the_rendered_healthcheck(
    docker_client: Any, test_images: dict[str, str], rendered: dict[str, Any]
) -> None:
    llm = rendered["services"]["llm"]
    probe = llm["healthcheck"]["test"]
    assert probe[0] == "CMD" and probe[1] == "bash", probe
    with container(
        docker_client,
        test_images["model"],
        command=llm["command"],  # the real vLLM invocation, ${VAR:-x} left uninterpolated
        environment={"STUB_STARTUP_DELAY_S": "1"},
    ) as c:
        first = c.exec_run(probe[1:])
        assert first.exit_code != 0  # not ready yet
        wait_for(lambda: c.exec_run(probe[1:]).exit_code == 0, timeout=10, step=0.2)


@pytest.mark.parametrize(
    ("service", "environment"),
    [("whisper", {"UVICORN_PORT": "8004"}), ("open-webui", {"PORT": "8101"})],
)
def test_model_stub_takes_its_port_from_the_environment(
    docker_client: Any, test_images: dict[str, str], service: str, environment: dict[str, str]
) -> None:
    port = next(iter(environment.values()))
    with container(
        docker_client,
        test_images["model"],
        environment=environment,
        ports={f"{port}/tcp": ("127.0.0.1", None)},
    ) as c:
        host = host_port(c, f"{port}/tcp")
        statuses_until_ok(host, "/health")
        assert json.loads(http(host, "/")[1])["port"] == int(port), service


def test_model_stub_fail_switch_keeps_health_at_503(
    docker_client: Any, test_images: dict[str, str]
) -> None:
    with container(
        docker_client,
        test_images["model"],
        command=["--model", "x", "--port", "8003"],
        environment={"STUB_FAIL": "1"},
        ports={"8003/tcp": ("127.0.0.1", None)},
    ) as c:
        port = host_port(c, "8003/tcp")
        codes = []
        for _ in range(10):
            codes.append(http(port, "/health")[0])
            time.sleep(0.1)
        assert set(codes) - {0} == {503}, codes
        assert json.loads(http(port, "/health")[1])["status"] == "failing"


def test_model_stub_exit_switch_crashes(docker_client: Any, test_images: dict[str, str]) -> None:
    with container(
        docker_client, test_images["model"], environment={"STUB_EXIT_AFTER_S": "1"}
    ) as c:
        result = c.wait(timeout=10)
        assert result["StatusCode"] == 1


def test_model_stub_reports_the_gpus_it_was_given(
    docker_client: Any, test_images: dict[str, str]
) -> None:
    import docker

    request = docker.types.DeviceRequest(driver="nvidia", device_ids=["1"], capabilities=[["gpu"]])
    try:
        with container(
            docker_client,
            test_images["model"],
            command=["--port", "8003"],
            device_requests=[request],
            ports={"8003/tcp": ("127.0.0.1", None)},
        ) as c:
            port = host_port(c, "8003/tcp")
            statuses_until_ok(port, "/health")
            assert json.loads(http(port, "/health")[1])["gpus"] == "1"
            answer = json.loads(http(port, "/v1/completions", {"prompt": "hi"})[1])
            assert answer["gpus"] == "1" and answer["object"] == "text_completion"
    except docker.errors.APIError as exc:
        if "could not select device driver" not in str(exc):
            raise
        pytest.skip("this engine has no nvidia device driver (start it with scripts/engine.sh)")


# ---- ollama stub --------------------------------------------------------------------------------


def test_ollama_stub_serves_and_ollama_list_works(
    docker_client: Any, test_images: dict[str, str]
) -> None:
    with container(
        docker_client,
        test_images["ollama"],
        environment={
            "OLLAMA_HOST": "0.0.0.0:39001",
            "STUB_MODELS": "mistral:7b-instruct-q4_K_M,phi3",
            "STUB_STARTUP_DELAY_S": "1",
        },
        ports={"39001/tcp": ("127.0.0.1", None)},
    ) as c:
        assert c.attrs["Config"]["Entrypoint"] == ["/usr/bin/ollama"]
        assert c.attrs["Config"]["Cmd"] == ["serve"]
        early = c.exec_run(["ollama", "list"])
        assert early.exit_code == 1
        assert b"could not connect to ollama app" in early.output
        wait_for(lambda: c.exec_run(["ollama", "list"]).exit_code == 0, timeout=10, step=0.2)
        listing = c.exec_run(["ollama", "list"]).output.decode().splitlines()
        assert listing[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
        assert [line.split()[0] for line in listing[1:]] == [
            "mistral:7b-instruct-q4_K_M",
            "phi3:latest",
        ]

        port = host_port(c, "39001/tcp")
        assert http(port, "/") == (200, "Ollama is running")
        version = json.loads(http(port, "/api/version")[1])
        assert version["version"].startswith("0.12.6") and version["port"] == 39001
        lines = http(port, "/api/generate", {"model": "phi3", "prompt": "hi"})[1].splitlines()
        parts = [json.loads(line) for line in lines]
        assert len(parts) == 3 and [p["done"] for p in parts] == [False, False, True]
        assert all(p["served_by"] == c.id[:12] for p in parts)
        single = json.loads(
            http(
                port,
                "/api/chat",
                {"model": "phi3", "messages": [{"role": "user", "content": "x"}], "stream": False},
            )[1]
        )
        assert single["done"] is True and single["message"]["role"] == "assistant"
        loaded = json.loads(http(port, "/api/ps")[1])["models"]
        assert [m["name"] for m in loaded] == ["phi3:latest"]
        assert http(port, "/api/pull", {"model": "llama3.2", "stream": False})[0] == 200


# ---- nginx --------------------------------------------------------------------------------------

TINY_NGINX = """
worker_processes 1;
error_log /dev/stderr warn;
events { worker_connections 64; }
http {
    access_log /dev/stdout;
    server {
        listen 8080;
        location = /healthz { return 200 '{"status": "ok"}\\n'; }
    }
}
"""


def test_nginx_runs_the_gateway_command(
    docker_client: Any, test_images: dict[str, str], tmp_path: Path
) -> None:
    conf = tmp_path / "nginx"
    conf.mkdir()
    (conf / "nginx.conf").write_text(TINY_NGINX)
    with container(
        docker_client,
        test_images["nginx"],
        command=["nginx", "-g", "daemon off;", "-c", "/etc/nginx/composegen/nginx.conf"],
        volumes={str(conf): {"bind": "/etc/nginx/composegen", "mode": "ro"}},
        ports={"8080/tcp": ("127.0.0.1", None)},
        security_opt=["no-new-privileges:true"],
    ) as c:
        port = host_port(c, "8080/tcp")
        statuses_until_ok(port, "/healthz")
        probe = ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
        wait_for(lambda: c.exec_run(probe).exit_code == 0, timeout=5)
        reload = c.exec_run(["nginx", "-s", "reload"])
        assert reload.exit_code == 0, reload.output
        time.sleep(0.3)
        assert c.exec_run(probe).exit_code == 0
        assert http(port, "/healthz")[0] == 200
        assert b"GET /healthz" in c.logs(stdout=True, stderr=False)


def test_nginx_default_command_serves_like_the_official_image(
    docker_client: Any, test_images: dict[str, str]
) -> None:
    with container(docker_client, test_images["nginx"]) as c:
        assert c.attrs["Config"]["Cmd"] == ["nginx", "-g", "daemon off;"]
        wait_for(lambda: c.exec_run(["curl", "-fsS", "http://127.0.0.1/"]).exit_code == 0)


def test_gateway_proxies_to_a_stub_replica(
    docker_client: Any, test_images: dict[str, str], tmp_path: Path
) -> None:
    """nginx on a user network reaches a stub by its alias; streamed chunks pass through."""
    conf = tmp_path / "nginx"
    conf.mkdir()
    (conf / "nginx.conf").write_text(
        TINY_NGINX.replace(
            "server {",
            "resolver 127.0.0.11 valid=10s ipv6=off;\n"
            "    upstream llm { server llm:8003; keepalive 4; }\n    server {",
        ).replace(
            "location = /healthz",
            'proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off;\n'
            "        location /llm/ { proxy_pass http://llm/; }\n        location = /healthz",
        )
    )
    net = docker_client.networks.create(f"cgtest-images-{time.time_ns()}", labels=dict(TEST_LABELS))
    try:
        with container(
            docker_client,
            test_images["model"],
            command=["--model", "m", "--port", "8003"],
            network=net.name,
        ) as backend:
            net.disconnect(backend)
            net.connect(backend, aliases=["llm"])
            with container(
                docker_client,
                test_images["nginx"],
                command=["nginx", "-g", "daemon off;", "-c", "/etc/nginx/composegen/nginx.conf"],
                volumes={str(conf): {"bind": "/etc/nginx/composegen", "mode": "ro"}},
                ports={"8080/tcp": ("127.0.0.1", None)},
                network=net.name,
            ) as gw:
                port = host_port(gw, "8080/tcp")
                statuses_until_ok(port, "/llm/health")
                status, text = http(port, "/llm/v1/chat/completions", {"stream": True})
                events = [line for line in text.splitlines() if line.startswith("data: ")]
                assert status == 200 and events[-1] == "data: [DONE]" and len(events) == 4
                assert json.loads(events[0][6:])["served_by"] == backend.id[:12]
    finally:
        net.remove()


# ---- nginx-resolve: the Swarm gateway's nginx (>= 1.27.3) ----------------------------------------

RESOLVE_SINCE = (1, 27, 3)  # upstream nginx's CHANGES: `server ... resolve` in open source

# An upstream whose server name does not resolve when nginx starts (a Swarm service with no
# running task: dnsrr gives no address); nginx >= 1.27.3 starts anyway and looks it up again.
RESOLVE_NGINX = """
worker_processes 1;
error_log /dev/stderr warn;
events { worker_connections 64; }
http {
    access_log /dev/stdout;
    resolver 127.0.0.11 valid=1s ipv6=off;
    upstream llm { zone llm 64k; server llm:8003 resolve; keepalive 4; }
    server {
        listen 8080;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /llm/ { proxy_pass http://llm/; }
        location = /healthz { return 200 '{"status": "ok"}\\n'; }
    }
}
"""


def nginx_version(c: Any) -> tuple[int, int, int]:
    out = c.exec_run(["nginx", "-v"]).output.decode()  # "nginx version: nginx/1.30.6"
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert found, out
    major, minor, patch = (int(x) for x in found.groups())
    return major, minor, patch


def worker_pids(c: Any) -> list[str]:
    """The pids of nginx's worker processes in the container (a reload replaces them)."""
    script = (  # not this shell, whose own command line holds the words
        'for p in /proc/[0-9]*; do [ "${p#/proc/}" != $$ ] && '
        'grep -qs "worker process" $p/cmdline && echo ${p#/proc/}; done; true'
    )
    pids = c.exec_run(["sh", "-c", script]).output.decode().split()
    assert pids, "no nginx worker process"
    return sorted(pids)


def test_nginx_resolve_is_new_enough_and_tagged_with_its_version(
    docker_client: Any, test_images: dict[str, str]
) -> None:
    tag = test_images["nginx-resolve"]
    with container(docker_client, tag, command=["sleep", "60"]) as c:
        version = nginx_version(c)
    assert version >= RESOLVE_SINCE, version
    assert tag == "composegen-test/nginx:{}.{}.{}".format(*version)
    assert nginx_takes_resolve(tag)  # so the swarm target renders dnsrr + `resolve` for it
    with container(docker_client, test_images["nginx"], command=["sleep", "60"]) as old:
        assert nginx_version(old) < RESOLVE_SINCE  # the one-host tests' nginx:1 stays bookworm's


def test_nginx_resolve_runs_like_nginx_1(docker_client: Any, test_images: dict[str, str]) -> None:
    new, old = (
        docker_client.images.get(test_images[k]).attrs["Config"] for k in ("nginx-resolve", "nginx")
    )
    for key in ("Cmd", "Entrypoint", "StopSignal", "ExposedPorts", "WorkingDir"):
        assert new.get(key) == old.get(key), key
    with container(docker_client, test_images["nginx-resolve"]) as c:
        wait_for(lambda: c.exec_run(["curl", "-fsS", "http://127.0.0.1/"]).exit_code == 0)
        logs = c.exec_run(["readlink", "/var/log/nginx/access.log", "/var/log/nginx/error.log"])
        assert logs.output.decode().split() == ["/dev/stdout", "/dev/stderr"]
        assert b"GET / HTTP/1.1" in c.logs(stdout=True, stderr=False)
        assert c.exec_run(["python3", "-V"]).exit_code != 0  # no python in this one


def test_nginx_resolve_accepts_an_upstream_name_that_does_not_resolve_yet(
    docker_client: Any, test_images: dict[str, str], tmp_path: Path
) -> None:
    conf = tmp_path / "nginx"
    conf.mkdir()
    (conf / "nginx.conf").write_text(RESOLVE_NGINX)
    check = ["nginx", "-t", "-c", "/etc/nginx/composegen/nginx.conf"]
    volumes = {str(conf): {"bind": "/etc/nginx/composegen", "mode": "ro"}}
    new = docker_client.containers.run(
        test_images["nginx-resolve"], check, volumes=volumes, labels=dict(TEST_LABELS),
        detach=True,
    )  # fmt: skip
    old = docker_client.containers.run(
        test_images["nginx"], check, volumes=volumes, labels=dict(TEST_LABELS), detach=True
    )
    try:
        assert new.wait(timeout=30)["StatusCode"] == 0, new.logs()
        assert b"test is successful" in new.logs()
        # bookworm's 1.22 knows no `resolve`: the same file is refused (the test tells them apart)
        assert old.wait(timeout=30)["StatusCode"] == 1
        assert b'invalid parameter "resolve"' in old.logs()
    finally:
        new.remove(force=True)
        old.remove(force=True)


def test_nginx_resolve_gateway_reaches_a_backend_started_after_it_without_a_reload(
    docker_client: Any, test_images: dict[str, str], tmp_path: Path
) -> None:
    conf = tmp_path / "nginx"
    conf.mkdir()
    (conf / "nginx.conf").write_text(RESOLVE_NGINX)
    net = docker_client.networks.create(f"cgtest-images-{time.time_ns()}", labels=dict(TEST_LABELS))
    try:
        with container(
            docker_client,
            test_images["nginx-resolve"],
            command=["nginx", "-g", "daemon off;", "-c", "/etc/nginx/composegen/nginx.conf"],
            volumes={str(conf): {"bind": "/etc/nginx/composegen", "mode": "ro"}},
            ports={"8080/tcp": ("127.0.0.1", None)},
            network=net.name,
        ) as gw:
            port = host_port(gw, "8080/tcp")
            statuses_until_ok(port, "/healthz")
            assert http(port, "/llm/health")[0] == 502  # up, with no address for llm yet
            workers = worker_pids(gw)
            with container(
                docker_client,
                test_images["model"],
                command=["--model", "m", "--port", "8003"],
                network=net.name,
            ) as backend:
                net.disconnect(backend)
                net.connect(backend, aliases=["llm"])
                statuses_until_ok(port, "/llm/health", timeout=15)
                served = json.loads(http(port, "/llm/health")[1])["served_by"]
                assert served == backend.id[:12]
                assert worker_pids(gw) == workers  # no reload (it starts new workers)
            gw.reload()
            assert gw.attrs["State"]["Running"] and gw.attrs["RestartCount"] == 0
    finally:
        net.remove()


def test_images_sh_refuses_an_nginx_older_than_it_needs(
    docker_client: Any, test_images: dict[str, str]
) -> None:
    version = test_images["nginx-resolve"].rsplit(":", 1)[1]
    env = {**os.environ, "COMPOSEGEN_NGINX_RESOLVE_MIN": "99.0.0"}
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "images.sh")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert f"nginx is {version}, older than the 99.0.0" in res.stderr
    assert "nginx-resolve" not in res.stdout and f":{version}: up to date" not in res.stdout


def test_images_sh_list_needs_the_nginx_resolve_image_built(
    docker_client: Any, test_images: dict[str, str]
) -> None:
    script = str(ROOT / "scripts" / "images.sh")
    listed = subprocess.run(
        ["bash", script, "--list"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert listed[-1] == test_images["nginx-resolve"] and listed[3] == "composegen-test/nginx:1"
    # another suite's image is not built here: no version, so no tag to print
    env = {**os.environ, "COMPOSEGEN_NGINX_RESOLVE_SUITE": "sid"}
    res = subprocess.run(
        ["bash", script, "--list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1 and res.stdout == ""
    assert "the nginx-resolve image is not built" in res.stderr
