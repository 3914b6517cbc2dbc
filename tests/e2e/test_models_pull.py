"""Issue 11 items 1-3 on a real engine, with the stand-ins: the Ollama stub's on-disk store and
pull log, the fake Hugging Face hub and the hf-fetch image (huggingface_hub inside).

- ollama-replicas on 4 GPUs and rma-shared: `up` pulls each model once per store (counted in
  the stub's pull log on the store volume), every replica's /api/tags lists the profile's
  models, a second `up` fetches nothing.
- rag-a100: the HF fetch container downloads through the fake hub into hf-cache, a second run
  downloads nothing (the hub's byte counter), a gated repository without a token is one line
  naming the model.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import TEST_LABELS
from tests.e2e.test_up import Stack, cli, containers, image_overrides, up

HF_HUB = "composegen-test/hf-hub:1"
HF_FETCH = "composegen-test/hf-fetch:1"


def _image(docker_client: Any, tags: dict[str, str], key: str, default: str) -> str:
    image = tags.get(key, default)
    try:
        docker_client.images.get(image)
    except Exception:
        pytest.fail(f"the stand-in image {image} is missing: run scripts/images.sh")
    return image


def _read(docker_client: Any, tags: dict[str, str], volume: str, path: str) -> str:
    """A file of a volume ('' when missing), copied out of a container that is never started
    (reading a started container's output can race with its log)."""
    import io
    import tarfile

    from docker.errors import NotFound

    c = docker_client.containers.create(
        tags["debian"],
        ["true"],
        volumes={volume: {"bind": "/v", "mode": "ro"}},
        labels=dict(TEST_LABELS),
    )
    try:
        stream, _ = c.get_archive(f"/v/{path}")
    except NotFound:
        return ""
    finally:
        c.remove(force=True)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        f = tar.extractfile(member) if member is not None else None
        return f.read().decode() if f is not None else ""


def _pulls(docker_client: Any, tags: dict[str, str], volume: str, sub: str = "") -> list[str]:
    """The stub's pull log of a store: one `... pulled NAME:TAG fetched=N ...` line a pull."""
    text = _read(docker_client, tags, volume, f"{sub}/stub-pulls.log".lstrip("/"))
    return [
        line.split(" pulled ", 1)[1].split()[0] for line in text.splitlines() if " pulled " in line
    ]


def _tags(container: Any) -> set[str]:
    res = container.exec_run(["ollama", "list"])
    assert res.exit_code == 0, res.output
    return {line.split()[0] for line in res.output.decode().splitlines()[1:] if line.strip()}


def _no_fetch_leftovers(docker_client: Any, st: Stack) -> None:
    left = docker_client.containers.list(
        all=True,
        filters={"label": [f"com.docker.compose.project={st.project}", "io.composegen.fetch"]},
    )
    assert left == []
    assert docker_client.networks.list(names=[f"{st.project}_fetch"]) == []


def test_replicas_up_pulls_once_per_store_and_a_second_up_fetches_nothing(
    docker_client: Any, stack_factory: Any, tags: dict[str, str]
) -> None:
    st = stack_factory("ollama-replicas")
    done, events = up(st)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    volume = f"{st.project}_models"
    # the shared store: Mixtral once for 4 replicas; the CPU variant's store: its 7B once
    # (a store's log is also written one directory up: the volume's root log has both)
    assert sorted(_pulls(docker_client, tags, volume)) == [
        "mistral:7b-instruct-q4_0",
        "mixtral:8x7b",
    ]
    assert _pulls(docker_client, tags, volume, "composegen-cpu") == ["mistral:7b-instruct-q4_0"]
    final = events[-1]
    assert final["event"] == "done"
    assert sorted(r["model"] for r in final["models"]["loaded"]) == ["mixtral:8x7b"] * 4
    got = containers(docker_client, st.project)
    for i in range(4):
        c = got[f"ollama-{i}"]
        assert "mixtral:8x7b" in _tags(c)
        ps = c.exec_run(["ollama", "ps"]).output.decode()
        assert "mixtral:8x7b" in ps  # loaded by up, with the stack's keep-alive (24h)
    # through the gateway as well
    r = httpx.get(f"http://127.0.0.1:{st.port}/api/tags", timeout=10)
    assert r.status_code == 200 and "mixtral:8x7b" in {m["name"] for m in r.json()["models"]}
    _no_fetch_leftovers(docker_client, st)

    again, events = up(st)
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert sorted(_pulls(docker_client, tags, volume)) == [
        "mistral:7b-instruct-q4_0",
        "mixtral:8x7b",
    ]
    assert events[-1]["models"]["fetched"] == []
    # nothing fetched, and the shared store was checked in a running replica (no fetch container)
    assert not [e for e in events if e.get("event") == "model" and e.get("status") == "pulling"]
    _no_fetch_leftovers(docker_client, st)


def test_rma_shared_models_pull_fills_gpu_and_cpu_stores_then_nothing(
    docker_client: Any, stack_factory: Any, tags: dict[str, str]
) -> None:
    st = stack_factory("rma-shared")
    first = cli("models", "pull", "-C", str(st.directory), "-p", st.project, "--json", timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    done = json.loads(first.stdout.strip().splitlines()[-1])
    assert done["ok"] is True and done["failures"] == []
    volume = f"{st.project}_ollama"
    data = yaml.safe_load((st.directory / "docker-compose.yml").read_text())
    hub_labels = data["services"]["ollama"]["labels"]
    # one 8 GB card: the plan runs the profile's second alternative, in a store of its own
    assert hub_labels["io.composegen.models"] == "llama3.2:1b,llava:7b,nomic-embed-text"
    sub = hub_labels["io.composegen.model-store"].removeprefix("/root/.ollama/")
    assert sub == "models/composegen-alt2"
    # the stub lists llama3.2 as preinstalled in every server it runs: that one is "present"
    expect = ["llama3.2:1b", "llava:7b", "nomic-embed-text:latest"]
    assert sorted(_pulls(docker_client, tags, volume, sub)) == expect
    cpu_pulls = _pulls(docker_client, tags, volume, "models/composegen-cpu")
    assert sorted(cpu_pulls) == ["llama3.2:1b", "nomic-embed-text:latest"]
    second = cli("models", "pull", "-C", str(st.directory), "-p", st.project, "--json", timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads(second.stdout.strip().splitlines()[-1])["fetched"] == []
    assert sorted(_pulls(docker_client, tags, volume, sub)) == expect
    _no_fetch_leftovers(docker_client, st)

    ran, events = up(st)
    assert ran.returncode == 0, f"{ran.stdout}\n{ran.stderr}"
    assert events[-1]["models"]["fetched"] == []
    have = _tags(containers(docker_client, st.project)["ollama"])
    assert {"llama3.2:1b", "llava:7b", "nomic-embed-text:latest"} <= have


def test_unknown_ollama_model_names_model_service_and_cause(
    docker_client: Any, stack_factory: Any, tags: dict[str, str]
) -> None:
    st = stack_factory("ollama-replicas")
    compose = st.directory / "docker-compose.yml"
    compose.write_text(compose.read_text().replace("mixtral:8x7b", "unknown-model:1"))
    done = cli("models", "pull", "-C", str(st.directory), "-p", st.project, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("composegen: error: model unknown-model:1 (service ollama-0, ")
    assert "unknown model (pull model manifest: file does not exist)" in lines[-1]
    # the CPU store was filled all the same, and nothing is left behind
    volume = f"{st.project}_models"
    assert _pulls(docker_client, tags, volume, "composegen-cpu") == ["mistral:7b-instruct-q4_0"]
    assert containers(docker_client, st.project) == {}
    _no_fetch_leftovers(docker_client, st)


# --- Hugging Face through the fake hub -------------------------------------------------------

RAG_REPOS = (
    "ivrit-ai/whisper-large-v3-ct2",
    "Systran/faster-whisper-small",
    "sentence-transformers/all-MiniLM-L6-v2",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-0.5B-Instruct",
    "rednote-hilab/dots.ocr",
)


@pytest.fixture
def hub(docker_client: Any, tags: dict[str, str]) -> Any:
    """Start the fake hub on a network of the test's choosing, as `hf-hub:8080`."""
    image = _image(docker_client, tags, "hf-hub", HF_HUB)
    made: list[Any] = []
    nets: list[str] = []

    def start(network: str, gated: str = "", rate_mbps: float = 0.0) -> Any:
        # the fetch network made beforehand: `models pull` uses it and leaves it (not its own)
        docker_client.networks.create(network, driver="bridge", labels=dict(TEST_LABELS))
        nets.append(network)
        c = docker_client.containers.run(
            image,
            environment={
                "PORT": "8080",
                "STUB_HF_REPOS": ",".join(r for r in RAG_REPOS if r != gated),
                "STUB_HF_GATED_REPOS": gated,
                **({"STUB_HF_RATE_MBPS": str(rate_mbps)} if rate_mbps else {}),
            },
            labels=dict(TEST_LABELS),
            detach=True,
        )
        made.append(c)
        docker_client.networks.get(network).connect(c, aliases=["hf-hub"])
        for _ in range(100):  # bounded: 10 s
            res = c.exec_run(["python3", "-c", _STATS])
            if res.exit_code == 0:
                return c
            time.sleep(0.1)
        pytest.fail(f"the fake hub did not answer: {c.logs().decode()[-500:]}")

    yield start
    for c in made:
        c.remove(force=True)
    for net in nets:
        docker_client.networks.get(net).remove()


_STATS = (
    "import urllib.request;"
    "print(urllib.request.urlopen('http://127.0.0.1:8080/_stub/stats').read().decode())"
)


def _served(hub_container: Any) -> int:
    res = hub_container.exec_run(["python3", "-c", _STATS])
    assert res.exit_code == 0, res.output
    return int(json.loads(res.output)["bytes_served"])


def _rag(st: Stack, docker_client: Any, tags: dict[str, str]) -> None:
    """Re-render with the hf-fetch stand-in, and HF_ENDPOINT pointing at the fake hub."""
    fetch = _image(docker_client, tags, "hf-fetch", HF_FETCH)
    args = ["render", "-P", "rag-a100", "-o", str(st.directory), "--reference"]
    args += [a for i in image_overrides("rag-a100", tags) for a in ("--image", i)]
    args += ["--image", f"hf-fetch={fetch}", "--set", f"gateway.port={st.port}"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    env = st.directory / ".env"
    env.write_text(env.read_text() + "HF_ENDPOINT=http://hf-hub:8080\n")


def test_rag_a100_fetches_through_the_fake_hub_once(
    docker_client: Any, stack_factory: Any, tags: dict[str, str], hub: Any
) -> None:
    st = stack_factory("rag-a100")
    _rag(st, docker_client, tags)
    h = hub(f"{st.project}_fetch")
    first = cli("models", "pull", "-C", str(st.directory), "-p", st.project, "--json", timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    done = json.loads(first.stdout.strip().splitlines()[-1])
    fetched = {f["model"] for f in done["fetched"]}
    assert fetched == set(RAG_REPOS)
    # each repo: its config.json (it names the repo, so its size varies) and 2,000,003 B of
    # weights; every byte the hub served is one the fetch reports, once
    assert all(2000003 < f["bytes"] < 2000003 + 1000 for f in done["fetched"]), done["fetched"]
    served = _served(h)
    assert served == sum(f["bytes"] for f in done["fetched"])
    # in the volume, where each server reads it (TEI: the root; the others: hub/)
    volume = f"{st.project}_hf-cache"
    tei = "models--sentence-transformers--all-MiniLM-L6-v2/refs/main"
    assert _read(docker_client, tags, volume, tei)
    assert _read(docker_client, tags, volume, "hub/models--Qwen--Qwen2.5-7B-Instruct/refs/main")

    second = cli("models", "pull", "-C", str(st.directory), "-p", st.project, "--json", timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads(second.stdout.strip().splitlines()[-1])["fetched"] == []
    assert _served(h) == served  # not one more byte
    left = docker_client.containers.list(
        all=True,
        filters={"label": [f"com.docker.compose.project={st.project}", "io.composegen.fetch"]},
    )
    assert left == []


def test_gated_repo_without_token_is_one_line_naming_the_model(
    docker_client: Any, stack_factory: Any, tags: dict[str, str], hub: Any
) -> None:
    st = stack_factory("rag-a100")
    _rag(st, docker_client, tags)
    hub(f"{st.project}_fetch", gated="rednote-hilab/dots.ocr")
    done = cli("models", "pull", "-C", str(st.directory), "-p", st.project, timeout=300)
    assert done.returncode == 1
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("composegen:")]
    assert lines == [lines[-1]] and lines[-1].startswith(
        "composegen: error: model rednote-hilab/dots.ocr (service "
    )
    # the one service that runs it, not every service of the shared cache
    assert "dots.ocr (service ocr): gated repository and no token: set HF_TOKEN" in lines[-1]
    assert containers(docker_client, st.project) == {}


def test_an_interrupted_pull_resumes_where_it_stopped(
    docker_client: Any, stack_factory: Any, tags: dict[str, str], hub: Any
) -> None:
    """Ctrl-C during a slow download: the fetch containers are removed, and the next run
    fetches only what was not complete: the files finished before the interrupt are not sent
    again. (huggingface_hub 2.4 names its partial blob per process, so a file cut in the middle
    starts over; Ollama's partial layers are continued, by the server itself.)"""
    import signal
    import subprocess
    import sys

    from tests.e2e.test_up import ROOT

    st = stack_factory("rag-a100")
    _rag(st, docker_client, tags)
    h = hub(f"{st.project}_fetch", rate_mbps=1.0)
    args = ["models", "pull", "-C", str(st.directory), "-p", st.project, "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "composegen", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(300):  # bounded: 30 s, until both stores' first weights went out
            if _served(h) > 4100000:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    left = docker_client.containers.list(
        all=True,
        filters={"label": [f"com.docker.compose.project={st.project}", "io.composegen.fetch"]},
    )
    assert left == []  # (the fetch network is the test's own here, and stays)
    first = _served(h)
    done = cli(*args, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    final = json.loads(done.stdout.strip().splitlines()[-1])
    present = {p["model"] for p in final["present"]}
    fetched = {f["model"] for f in final["fetched"]}
    assert present and fetched and present | fetched == set(RAG_REPOS), final
    # the second run sent exactly what it fetched: nothing of the models already complete
    assert _served(h) - first == sum(f["bytes"] for f in final["fetched"])


def test_disk_full_is_named(
    docker_client: Any, stack_factory: Any, tags: dict[str, str], hub: Any
) -> None:
    """The cache volume is a 1 MiB tmpfs: the 2 MB weights do not fit."""
    st = stack_factory("rag-a100")
    _rag(st, docker_client, tags)
    hub(f"{st.project}_fetch")
    docker_client.volumes.create(
        f"{st.project}_hf-cache",
        driver="local",
        driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=1m"},
        labels={"com.docker.compose.project": st.project, "com.docker.compose.volume": "hf-cache"},
    )
    done = cli("models", "pull", "-C", str(st.directory), "-p", st.project, timeout=300)
    assert done.returncode == 1
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("composegen:")]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("composegen: error: model ")
    assert "disk full (no space left on the device that holds the cache volume)" in lines[0]
