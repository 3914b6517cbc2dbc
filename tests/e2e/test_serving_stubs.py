"""The TEST-ONLY stand-ins that `models pull` and `verify` are tested against (issue 11, item 5)
tell the truth about themselves, on a real engine:

- the Ollama stub keeps pulled models on disk (a volume shared by containers), resumes an
  interrupted pull, refuses unknown models, and reports size_vram from the GPUs its own process
  was given;
- `nvidia-smi` in the stub images lists exactly the devices the container was given, and can
  report the NVML loss a container shows after it lost its GPU;
- the real huggingface_hub client (the hf-fetch image) downloads from the fake hub through
  HF_ENDPOINT into a volume, fetches nothing the second time, resumes a dropped download with
  a Range request, and gets GatedRepoError for the gated repository without its token.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import TEST_LABELS
from tests.e2e.test_images import container, host_port, http, wait_for

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "scripts" / "images" / "stubs"
# real UUIDs from tests/fixtures/nvidia-smi/ (an A100 pair)
UUID_A = "GPU-09cb2925-9d01-5ca4-810b-6cdebe86b71a"
UUID_B = "GPU-e511a7b2-f9d5-ba47-9b98-853732ca6c1b"
ENGINE = pytest.mark.engine
HF_TOKEN = "hf_composegen_test_7d41"  # the fake hub's token here (STUB_HF_TOKEN)
TINY = "composegen-test/tiny-model"
LARGE = "composegen-test/large-model"
GATED = "composegen-test/gated-model"
CUT_AFTER = 11_000_000  # > the tiny repo's files, < the large repo's weights (12,000,007)
MIB10 = 10 * 1024 * 1024  # huggingface_hub keeps whole 10 MiB pieces of a dropped body


@pytest.fixture(scope="module")
def images(docker_client: Any) -> dict[str, str]:
    from tests.e2e.images import ensure_images

    return ensure_images()


@pytest.fixture
def volume(docker_client: Any) -> Iterator[Any]:
    """Make labelled volumes; each is removed after the test (its containers are gone by then)."""
    made: list[Any] = []

    def make() -> str:
        vol = docker_client.volumes.create(labels=dict(TEST_LABELS))
        made.append(vol)
        return str(vol.name)

    yield make
    for vol in made:
        for c in docker_client.containers.list(all=True, filters={"volume": vol.name}):
            c.remove(force=True)
        vol.remove(force=True)


def gpu_request(*ids: str) -> Any:
    import docker

    return docker.types.DeviceRequest(driver="nvidia", device_ids=list(ids), capabilities=[["gpu"]])


def run_with_gpus(client: Any, image: str, ids: list[str], **kwargs: Any) -> Any:
    """container(...) with a GPU device request; skips where the engine has no nvidia driver
    (outside CI: scripts/engine.sh installs the hook stand-in)."""
    import docker

    try:
        return container(client, image, device_requests=[gpu_request(*ids)], **kwargs)
    except docker.errors.APIError as exc:  # raised when the container is created
        if "could not select device driver" not in str(exc):
            raise
        if os.environ.get("COMPOSEGEN_REQUIRE_ENGINE") == "1":
            pytest.fail("the engine has no nvidia device driver (scripts/engine.sh starts one)")
        pytest.skip("this engine has no nvidia device driver (start it with scripts/engine.sh)")


def ollama(client: Any, image: str, env: dict[str, str], **kwargs: Any) -> Any:
    """An Ollama stub publishing 11434 on 127.0.0.1 (no preinstalled model unless asked)."""
    return container(
        client,
        image,
        environment={"STUB_MODELS": "", **env},
        ports={"11434/tcp": ("127.0.0.1", None)},
        **kwargs,
    )


def ready(c: Any) -> int:
    port = host_port(c, "11434/tcp")
    wait_for(lambda: http(port, "/")[0] == 200, timeout=15, step=0.2)
    return port


def pull(port: int, model: str, stream: bool = True) -> tuple[int, list[dict[str, Any]]]:
    status, text = http(port, "/api/pull", {"model": model, "stream": stream})
    return status, [json.loads(line) for line in text.splitlines() if line.strip()]


def names(port: int) -> list[str]:
    return [m["name"] for m in json.loads(http(port, "/api/tags")[1])["models"]]


# a store where no pull ever succeeded: no manifest, no line in the pull log
NOTHING = "test ! -e /root/.ollama/models/manifests -a ! -e /root/.ollama/stub-pulls.log"


def sh(c: Any, script: str) -> tuple[int, str]:
    res = c.exec_run(["sh", "-c", script])
    return res.exit_code, res.output.decode()


def pull_log(c: Any, path: str) -> list[str]:
    code, out = sh(c, f"cat {path}")
    assert code == 0, out
    return out.splitlines()


# ---- the Ollama stub: store, pull, resume, unknown names ----------------------------------------


@ENGINE
def test_pull_fills_a_shared_volume_that_another_container_reads(
    docker_client: Any, images: dict[str, str], volume: Any
) -> None:
    """The ollama-replicas layout: the store volume at OLLAMA_MODELS=/models, filled by one
    container and read (read-only) by another that never pulled."""
    store = volume()
    env = {"OLLAMA_MODELS": "/models"}
    with ollama(docker_client, images["ollama"], env, volumes={store: {"bind": "/models"}}) as a:
        port_a = ready(a)
        assert names(port_a) == []
        status, steps = pull(port_a, "mistral:7b-instruct-q4_0")
        assert status == 200
        assert steps[0]["status"] == "pulling manifest"
        assert [s["status"] for s in steps[-3:]] == [
            "verifying sha256 digest",
            "writing manifest",
            "success",
        ]
        layers = [s for s in steps if "digest" in s]
        digests = sorted({s["digest"] for s in layers})
        assert len(digests) == 3  # weights, template, config
        for s in layers:
            assert s["status"] == "pulling " + s["digest"].removeprefix("sha256:")[:12]
            assert 0 <= s["completed"] <= s["total"]
        weights = max(layers, key=lambda s: s["total"])
        assert 1_000_000 <= weights["total"] <= 4_000_000
        progress = [s["completed"] for s in layers if s["digest"] == weights["digest"]]
        assert progress[0] == 0 and progress[-1] == weights["total"] and len(progress) > 3
        assert progress == sorted(progress)

        with ollama(
            docker_client, images["ollama"], env, volumes={store: {"bind": "/models", "mode": "ro"}}
        ) as b:
            port_b = ready(b)
            assert names(port_b) == ["mistral:7b-instruct-q4_0"]
            listing = b.exec_run(["ollama", "list"]).output.decode().splitlines()
            assert [line.split()[0] for line in listing[1:]] == ["mistral:7b-instruct-q4_0"]
            # the bytes on the volume are the layers the progress named
            for dig in digests:
                code, out = sh(b, f"sha256sum /models/blobs/{dig.replace(':', '-')}")
                assert code == 0 and out.split()[0] == dig.removeprefix("sha256:"), out
            log = pull_log(b, "/models/stub-pulls.log")
            assert len(log) == 1, log
            assert " pulled mistral:7b-instruct-q4_0 " in log[0]
            assert f"by={a.id[:12]}" in log[0]
            fetched = int(log[0].split(" fetched=")[1].split()[0])
            total = int(log[0].split(" total=")[1].split()[0])
            assert fetched == total == sum(s["total"] for s in layers if s["completed"] == 0)
            # the second container loads it (no prompt); a model it does not have is a 404
            loaded = http(port_b, "/api/generate", {"model": "mistral:7b-instruct-q4_0"})
            assert loaded[0] == 200 and json.loads(loaded[1])["done_reason"] == "load"
            missing = http(port_b, "/api/generate", {"model": "phi3"})
            assert missing[0] == 404
            assert json.loads(missing[1])["error"] == "model 'phi3:latest' not found"

        # a second pull of a model already in the store fetches nothing
        again = pull(port_a, "mistral:7b-instruct-q4_0")[1]
        assert again[-1]["status"] == "success"
        assert {s["completed"] for s in again if "digest" in s} == {
            s["total"] for s in again if "digest" in s
        }
        log = pull_log(a, "/models/stub-pulls.log")
        assert len(log) == 2 and " fetched=0 " in log[1], log


@ENGINE
def test_an_interrupted_pull_resumes_where_it_stopped(
    docker_client: Any, images: dict[str, str], volume: Any
) -> None:
    """A pull killed half-way (the container dies) leaves a partial layer on the volume; the
    next container's pull continues it and fetches only the rest. The default layout:
    /root/.ollama holds the store (models/) and the pull log."""
    store = volume()
    mount = {store: {"bind": "/root/.ollama"}}
    model = "llama3.2:1b"
    slow = {"STUB_PULL_RATE_MBPS": "0.4"}
    with ollama(docker_client, images["ollama"], slow, volumes=mount) as a:
        port = ready(a)
        body = json.dumps({"model": model, "stream": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/pull", data=body)
        seen: list[dict[str, Any]] = []
        with urllib.request.urlopen(req, timeout=20) as resp:
            for line in resp:  # ends once enough of the weights layer is on disk
                seen.append(json.loads(line))
                if seen[-1].get("completed", 0) >= 400_000 or len(seen) > 200:
                    break
            a.kill()
    weights = seen[-1]
    assert 400_000 <= weights["completed"] < weights["total"], seen
    blob = "/root/.ollama/models/blobs/" + weights["digest"].replace(":", "-")

    with ollama(docker_client, images["ollama"], {}, volumes=mount) as b:
        port = ready(b)
        code, out = sh(b, f"stat -c %s {blob}-partial; test ! -e {blob}")
        assert code == 0, out
        partial = int(out.split()[0])
        assert partial >= weights["completed"]
        assert names(port) == []  # a partial pull is not a model
        assert sh(b, "test -e /root/.ollama/stub-pulls.log")[0] == 1

        status, steps = pull(port, model)
        assert status == 200 and steps[-1]["status"] == "success", steps[-3:]
        layer = [s for s in steps if s.get("digest") == weights["digest"]]
        assert layer[0]["completed"] == partial  # continued, not restarted
        assert layer[-1]["completed"] == weights["total"]
        code, out = sh(b, f"sha256sum {blob}")
        assert out.split()[0] == weights["digest"].removeprefix("sha256:"), out
        log = pull_log(b, "/root/.ollama/stub-pulls.log")
        assert len(log) == 1, log
        fetched = int(log[0].split(" fetched=")[1].split()[0])
        total = int(log[0].split(" total=")[1].split()[0])
        assert fetched == total - partial
        assert names(port) == [model]


@ENGINE
def test_unknown_models_fail_like_ollama(docker_client: Any, images: dict[str, str]) -> None:
    env = {"STUB_UNKNOWN_MODELS": "llava:13b"}
    with ollama(docker_client, images["ollama"], env) as c:
        port = ready(c)
        for model in ("unknown-model", "llava:13b"):
            status, steps = pull(port, model)
            assert status == 200
            assert steps == [
                {**steps[0], "status": "pulling manifest"},
                {**steps[1], "error": "pull model manifest: file does not exist"},
            ]
        status, steps = pull(port, "unknown-model", stream=False)
        assert status == 500 and steps[0]["error"] == "pull model manifest: file does not exist"
        cli = c.exec_run(["ollama", "pull", "llava:13b"])
        assert cli.exit_code == 1
        assert b"Error: pull model manifest: file does not exist" in cli.output
        assert names(port) == []
        code, out = sh(c, NOTHING)
        assert code == 0, out  # nothing written, nothing logged
        # the CLI streams a real pull like `ollama pull`, and the model is then listed
        ok = c.exec_run(["ollama", "pull", "nomic-embed-text"])
        assert ok.exit_code == 0, ok.output
        lines = ok.output.decode().splitlines()
        assert lines[0] == "pulling manifest" and lines[-1] == "success"
        assert any("100%" in line for line in lines)
        assert names(port) == ["nomic-embed-text:latest"]


@ENGINE
def test_a_full_disk_fails_the_pull_and_names_the_cause(
    docker_client: Any, images: dict[str, str]
) -> None:
    """A 1 MiB store (tmpfs) cannot take a model of 1-4 MB: the error is Ollama's wording."""
    vol = docker_client.volumes.create(
        driver="local",
        driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=1m"},
        labels=dict(TEST_LABELS),
    )
    try:
        mount = {vol.name: {"bind": "/root/.ollama"}}
        with ollama(docker_client, images["ollama"], {}, volumes=mount) as c:
            port = ready(c)
            status, steps = pull(port, "llava:7b")
            assert status == 200
            error = steps[-1]["error"]
            assert error.startswith("write /root/.ollama/models/blobs/sha256-"), steps[-2:]
            assert error.endswith("-partial: no space left on device"), error
            assert "success" not in [s.get("status") for s in steps]
            assert names(port) == []
            assert sh(c, NOTHING)[0] == 0  # no manifest, no pull logged
    finally:
        vol.remove(force=True)


# ---- residency: /api/ps follows the GPUs the server process was given ---------------------------


def loaded_model(port: int, model: str) -> dict[str, Any]:
    status, text = http(port, "/api/generate", {"model": model, "keep_alive": "10m"})
    assert status == 200, text
    ps = json.loads(http(port, "/api/ps")[1])["models"]
    assert [m["name"] for m in ps] == [model]
    assert set(ps[0]) >= {"name", "model", "size", "size_vram", "digest", "expires_at"}
    return dict(ps[0])


@ENGINE
@pytest.mark.parametrize(
    ("gpus", "env", "processor"),
    [
        (["1"], {}, "100% GPU"),
        (None, {}, "100% CPU"),
        (None, {"NVIDIA_VISIBLE_DEVICES": "void"}, "100% CPU"),
        ([UUID_A], {"STUB_GPU_FRACTION": "0.5"}, "50%/50% CPU/GPU"),
    ],
    ids=["gpu", "no-gpu", "void", "half-offload"],
)
def test_ps_reports_vram_from_the_gpus_the_server_was_given(
    docker_client: Any,
    images: dict[str, str],
    gpus: list[str] | None,
    env: dict[str, str],
    processor: str,
) -> None:
    env = {**env, "STUB_MODELS": "llama3.2"}
    ports = {"11434/tcp": ("127.0.0.1", None)}
    if gpus is None:
        made = container(docker_client, images["ollama"], environment=env, ports=ports)
    else:
        made = run_with_gpus(docker_client, images["ollama"], gpus, environment=env, ports=ports)
    with made as c:
        port = ready(c)
        served = json.loads(http(port, "/api/version")[1])["gpus"]
        assert served == (",".join(gpus) if gpus else env.get("NVIDIA_VISIBLE_DEVICES"))
        m = loaded_model(port, "llama3.2:latest")
        assert m["size"] > 1_000_000
        expected = {
            "100% GPU": m["size"],
            "100% CPU": 0,
            "50%/50% CPU/GPU": m["size"] // 2,
        }[processor]
        assert m["size_vram"] == expected
        table = c.exec_run(["ollama", "ps"]).output.decode().splitlines()
        assert table[1].startswith("llama3.2:latest") and processor in table[1], table
        if processor == "100% GPU":  # told at run time that it lost its GPU, then 1/4 offload
            assert sh(c, "echo 0 > /run/stub-gpu-fraction")[0] == 0
            now = json.loads(http(port, "/api/ps")[1])["models"][0]
            assert (now["size"], now["size_vram"]) == (m["size"], 0)
            assert sh(c, "echo 0.25 > /run/stub-gpu-fraction")[0] == 0
            now = json.loads(http(port, "/api/ps")[1])["models"][0]
            assert now["size_vram"] == m["size"] // 4
            assert "75%/25% CPU/GPU" in c.exec_run(["ollama", "ps"]).output.decode()
        # keep_alive 0 unloads
        assert http(port, "/api/generate", {"model": "llama3.2", "keep_alive": 0})[0] == 200
        assert json.loads(http(port, "/api/ps")[1])["models"] == []


# ---- nvidia-smi ---------------------------------------------------------------------------------


@ENGINE
@pytest.mark.parametrize("key", ["ollama", "model"])
def test_nvidia_smi_lists_the_devices_the_container_was_given(
    docker_client: Any, images: dict[str, str], key: str
) -> None:
    kwargs: dict[str, Any] = {"entrypoint": ["sleep", "600"]}
    with run_with_gpus(docker_client, images[key], [UUID_A, "3"], **kwargs) as c:
        smi = c.exec_run(["nvidia-smi", "-L"])
        assert smi.exit_code == 0, smi.output
        assert smi.output.decode().splitlines() == [
            f"GPU 0: NVIDIA Stub GPU (UUID: {UUID_A})",
            "GPU 1: NVIDIA Stub GPU (UUID: GPU-stub-3)",
        ]
        query = c.exec_run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"])
        assert query.output.decode().split() == [UUID_A, "GPU-stub-3"]
        # the container loses NVML (a daemon-reload on the host): the real message and exit code
        assert c.exec_run(["touch", "/run/stub-nvml-lost"]).exit_code == 0
        lost = c.exec_run(["nvidia-smi", "-L"])
        assert lost.exit_code == 255
        assert lost.output.decode().strip() == "Failed to initialize NVML: Unknown Error"

    with container(docker_client, images[key], entrypoint=["sleep", "600"]) as c:
        none = c.exec_run(["nvidia-smi", "-L"])
        assert (none.exit_code, none.output.decode().strip()) == (6, "No devices were found")
    env = {"STUB_NVML_LOST": "1"}
    with run_with_gpus(docker_client, images[key], [UUID_B], environment=env, **kwargs) as c:
        lost = c.exec_run(["nvidia-smi", "-L"])
        assert (lost.exit_code, lost.output.decode().strip()) == (
            255,
            "Failed to initialize NVML: Unknown Error",
        )


# ---- the fake Hugging Face hub and the real client ----------------------------------------------

FETCH = r"""
import hashlib, json, os, sys
from huggingface_hub import snapshot_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
repo = sys.argv[1]
try:
    path = snapshot_download(repo)
except GatedRepoError as exc:
    print(json.dumps({"error": "GatedRepoError", "message": str(exc).splitlines()[0]}))
    sys.exit(3)
except RepositoryNotFoundError as exc:
    print(json.dumps({"error": "RepositoryNotFoundError", "message": str(exc).splitlines()[0]}))
    sys.exit(4)
files = {}
for name in sorted(os.listdir(path)):
    data = open(os.path.join(path, name), "rb").read()
    files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
print(json.dumps({"path": path, "files": files}))
"""


@pytest.fixture(scope="module")
def hub(docker_client: Any, images: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The fake hub on a user-defined network (by its container name), published on 127.0.0.1
    for the test to read its byte counter."""
    net = docker_client.networks.create(
        f"cgtest-hf-{uuid.uuid4().hex[:8]}", driver="bridge", labels=dict(TEST_LABELS)
    )
    name = f"cgtest-hub-{uuid.uuid4().hex[:8]}"
    env = {"STUB_HF_TOKEN": HF_TOKEN, "STUB_HF_CUT_AFTER_BYTES": str(CUT_AFTER)}
    try:
        with container(
            docker_client,
            images["hf-hub"],
            name=name,
            network=net.name,
            environment=env,
            ports={"8080/tcp": ("127.0.0.1", None)},
        ) as c:
            port = host_port(c, "8080/tcp")
            wait_for(lambda: http(port, "/health")[0] == 200, timeout=15, step=0.2)
            yield {"port": port, "network": net.name, "endpoint": f"http://{name}:8080"}
    finally:
        net.remove()


def stats(hub: dict[str, Any]) -> dict[str, Any]:
    status, text = http(hub["port"], "/_stub/stats")
    assert status == 200, text
    return dict(json.loads(text))


def fetch(
    client: Any, image: str, hub: dict[str, Any], cache: str, repo: str, token: str | None = None
) -> tuple[int, dict[str, Any], str]:
    """One run of the real client in the hf-fetch image: (exit code, its JSON line, logs)."""
    env = {"HF_ENDPOINT": hub["endpoint"], "HF_HUB_OFFLINE": "0", "HF_HOME": "/cache"}
    if token:
        env["HF_TOKEN"] = token
    c = client.containers.run(
        image,
        ["python3", "-c", FETCH, repo],
        detach=True,
        environment=env,
        network=hub["network"],
        volumes={cache: {"bind": "/cache"}},
        labels=dict(TEST_LABELS),
    )
    try:
        code = int(c.wait(timeout=120)["StatusCode"])
        out = c.logs(stdout=True, stderr=False).decode()
        err = c.logs(stdout=False, stderr=True).decode()
    finally:
        c.remove(force=True)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return code, (json.loads(lines[-1]) if lines else {}), out + err


@ENGINE
def test_real_client_downloads_the_tiny_repo_once(
    docker_client: Any, images: dict[str, str], hub: dict[str, Any], volume: Any
) -> None:
    cache = volume()
    before = stats(hub)["bytes_served"]
    code, got, logs = fetch(docker_client, images["hf-fetch"], hub, cache, TINY)
    assert code == 0, logs
    assert got["path"].startswith(f"/cache/hub/models--{TINY.replace('/', '--')}/snapshots/")
    sizes = {name: f["size"] for name, f in got["files"].items()}
    assert set(sizes) == {"config.json", "model.safetensors"}
    assert sizes["model.safetensors"] == 2_000_003
    first = stats(hub)
    assert first["bytes_served"] - before == sum(sizes.values())
    # the plain HTTP path: a HEAD then a GET per file, no Range (nothing was cut)
    mine = [r for r in first["requests"] if TINY in r["path"] and "/resolve/" in r["path"]]
    assert sorted(r["method"] for r in mine) == ["GET", "GET", "HEAD", "HEAD"]
    # what the client wrote is what the hub says it served (ETag = sha256 of an LFS file)
    head = urllib.request.Request(
        f"http://127.0.0.1:{hub['port']}/{TINY}/resolve/main/model.safetensors", method="HEAD"
    )
    with urllib.request.urlopen(head, timeout=5) as resp:
        assert resp.headers["ETag"].strip('"') == got["files"]["model.safetensors"]["sha256"]
        assert resp.headers["X-Repo-Commit"] == got["path"].rsplit("/", 1)[1]

    code, again, logs = fetch(docker_client, images["hf-fetch"], hub, cache, TINY)
    assert code == 0, logs
    assert again["files"] == got["files"]
    assert stats(hub)["bytes_served"] == first["bytes_served"]  # the second run fetched 0 bytes


@ENGINE
def test_real_client_resumes_a_dropped_download_with_range(
    docker_client: Any, images: dict[str, str], hub: dict[str, Any], volume: Any
) -> None:
    code, got, logs = fetch(docker_client, images["hf-fetch"], hub, volume(), LARGE)
    assert code == 0, logs
    weights = got["files"]["model.safetensors"]
    assert weights["size"] == 12_000_007
    gets = [
        (r["status"], r["range"], r["bytes"])
        for r in stats(hub)["requests"]
        if r["method"] == "GET" and r["path"].startswith(f"/{LARGE}/resolve/")
        if r["path"].endswith("/model.safetensors")
    ]
    # cut after CUT_AFTER bytes; the client kept its whole 10 MiB and asked for the rest
    assert gets == [(200, None, CUT_AFTER), (206, f"bytes={MIB10}-", 12_000_007 - MIB10)]
    head = urllib.request.Request(
        f"http://127.0.0.1:{hub['port']}/{LARGE}/resolve/main/model.safetensors", method="HEAD"
    )
    with urllib.request.urlopen(head, timeout=5) as resp:
        assert resp.headers["ETag"].strip('"') == weights["sha256"]


@ENGINE
def test_gated_repo_needs_the_token_and_unknown_repos_are_not_found(
    docker_client: Any, images: dict[str, str], hub: dict[str, Any], volume: Any
) -> None:
    cache = volume()
    image = images["hf-fetch"]
    code, got, logs = fetch(docker_client, image, hub, cache, GATED)
    assert code == 3 and got["error"] == "GatedRepoError", logs
    code, got, logs = fetch(docker_client, image, hub, cache, GATED, token="hf_wrong_token")
    assert code == 3 and got["error"] == "GatedRepoError", logs
    code, got, logs = fetch(docker_client, image, hub, cache, GATED, token=HF_TOKEN)
    assert code == 0, logs
    assert got["files"]["model.safetensors"]["size"] == 2_000_003
    code, got, logs = fetch(docker_client, image, hub, cache, "composegen-test/no-such-model")
    assert code == 4 and got["error"] == "RepositoryNotFoundError", logs


# ---- the same fake hub and client without an engine ---------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.filterwarnings("ignore")
def test_fake_hub_serves_the_pinned_client_on_the_host(tmp_path: Path) -> None:
    """No engine needed: the stub script on 127.0.0.1 and the client from the test extra."""
    hf = pytest.importorskip("huggingface_hub")
    from huggingface_hub.errors import GatedRepoError

    port = free_port()
    env = {**os.environ, "STUB_HF_TOKEN": HF_TOKEN, "PYTHONPATH": str(STUBS)}
    server = subprocess.Popen(
        [sys.executable, str(STUBS / "hf_hub_stub.py"), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: http(port, "/health")[0] == 200, timeout=15, step=0.1)
        endpoint = f"http://127.0.0.1:{port}"
        path = hf.snapshot_download(TINY, cache_dir=tmp_path, endpoint=endpoint)
        assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
        data = (Path(path) / "model.safetensors").read_bytes()
        served = json.loads(http(port, "/_stub/stats")[1])["bytes_served"]
        config = (Path(path) / "config.json").stat().st_size
        assert served == len(data) + config and len(data) == 2_000_003
        hf.snapshot_download(TINY, cache_dir=tmp_path, endpoint=endpoint)
        assert json.loads(http(port, "/_stub/stats")[1])["bytes_served"] == served
        assert hashlib.sha256(data).hexdigest() in {
            p.name for p in (tmp_path / f"models--{TINY.replace('/', '--')}" / "blobs").iterdir()
        }
        with pytest.raises(GatedRepoError):
            hf.snapshot_download(GATED, cache_dir=tmp_path, endpoint=endpoint, token=False)
        ok = hf.snapshot_download(GATED, cache_dir=tmp_path, endpoint=endpoint, token=HF_TOKEN)
        assert (Path(ok) / "model.safetensors").stat().st_size == 2_000_003
    finally:
        server.terminate()
        server.wait(timeout=10)


def ollama_on_host(models: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    full = {
        **{k: v for k, v in os.environ.items() if k != "NVIDIA_VISIBLE_DEVICES"},
        "OLLAMA_MODELS": str(models),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "STUB_MODELS": "",
        "PYTHONPATH": str(STUBS),
        **env,
    }
    server = subprocess.Popen(
        [sys.executable, str(STUBS / "ollama_stub.py"), "serve"],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: http(port, "/")[0] == 200, timeout=15, step=0.1)
    return server, port


def test_ollama_stub_store_on_the_host(tmp_path: Path) -> None:
    """No engine needed: two stub servers on one store directory, one pulls, the other sees
    it; residency follows NVIDIA_VISIBLE_DEVICES of each server process."""
    models = tmp_path / "models"
    a, port_a = ollama_on_host(models, {"NVIDIA_VISIBLE_DEVICES": "2"})
    b, port_b = ollama_on_host(models, {})
    try:
        assert names(port_b) == []
        status, steps = pull(port_a, "qwen2.5:0.5b")
        assert status == 200 and steps[-1]["status"] == "success", steps[-2:]
        assert names(port_b) == ["qwen2.5:0.5b"]
        log = (models / "stub-pulls.log").read_text().splitlines()
        assert log == (tmp_path / "stub-pulls.log").read_text().splitlines()
        assert len(log) == 1 and " pulled qwen2.5:0.5b " in log[0]
        assert pull(port_b, "unknown-thing")[1][-1] == {
            **pull(port_b, "unknown-thing")[1][-1],
            "error": "pull model manifest: file does not exist",
        }
        for port in (port_a, port_b):
            assert http(port, "/api/generate", {"model": "qwen2.5:0.5b"})[0] == 200
        on_gpu = json.loads(http(port_a, "/api/ps")[1])["models"][0]
        on_cpu = json.loads(http(port_b, "/api/ps")[1])["models"][0]
        assert on_gpu["size"] == on_cpu["size"] > 1_000_000
        assert (on_gpu["size_vram"], on_cpu["size_vram"]) == (on_gpu["size"], 0)
    finally:
        for server in (a, b):
            server.terminate()
            server.wait(timeout=10)
