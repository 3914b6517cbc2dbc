"""Issue 11 items 1-3: the models of a stack (render's labels, serving/models.py), `composegen
models pull` (serving/pull.py) against a fake engine and a fake Ollama API, and `up`'s loading
step. The fake engine of this file records what the fetch containers were started with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker.errors import ImageNotFound, NotFound

from composegen.engine import docker as eng
from composegen.engine import up as engine_up
from composegen.engine.compose import load_project
from composegen.serving import pull as serving_pull
from composegen.serving.models import Member, plan_models
from tests.unit.test_cli_detect import call

ROOT = Path(__file__).resolve().parents[2]

# --- a fake engine: just what models pull and the load step use --------------------------------


class Container:
    def __init__(self, engine: Engine, name: str, kw: dict[str, Any]) -> None:
        self.engine = engine
        self.name = name
        self.id = f"id-{name}"
        self.kw = kw
        self.labels = dict(kw.get("labels") or {})
        self.status = "running"
        self.removed = False
        self.lines: list[str] = []
        self.exit_code = 0
        self.execs: list[list[str]] = []
        self.exec_answer: Any = None
        port = 40000 + len(engine.started)
        self.attrs = {"NetworkSettings": {"Ports": {"11434/tcp": [{"HostPort": str(port)}]}}}

    def reload(self) -> None:
        pass

    def logs(self, **kw: Any) -> Any:
        assert kw.get("stream") and kw.get("follow") and kw.get("stderr") is False
        return iter([(line + "\n").encode() for line in self.lines])

    def wait(self, timeout: float | None = None) -> dict[str, int]:
        return {"StatusCode": self.exit_code}

    def remove(self, force: bool = False) -> None:
        self.removed = True
        self.engine.containers_.pop(self.name, None)

    def exec_run(self, cmd: list[str], **_: Any) -> Any:
        self.execs.append(cmd)
        code, out = self.exec_answer(cmd) if self.exec_answer else (0, b"")

        class R:
            exit_code = code
            output = out

        return R()


class Named:
    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.removed: list[str] = []

    def get(self, name: str) -> Any:
        if name not in self.items:
            raise NotFound(name)
        coll = self

        class Item:
            def remove(self) -> None:
                coll.removed.append(name)
                coll.items.pop(name, None)

        return Item()

    def create(self, name: str, **kw: Any) -> None:
        self.items[name] = kw

    def list(self, **_: Any) -> list[Any]:
        return []


class Containers:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, name: str) -> Container:
        if name not in self.engine.containers_:
            raise NotFound(name)
        return self.engine.containers_[name]

    def run(self, image: str, **kw: Any) -> Container:
        assert kw["detach"] is True
        c = Container(self.engine, kw["name"], {"image": image, **kw})
        if self.engine.prepare:
            self.engine.prepare(c)
        self.engine.started.append(c)
        self.engine.containers_[c.name] = c
        return c

    def list(self, filters: dict[str, Any] | None = None, **_: Any) -> list[Container]:
        want = set((filters or {}).get("label") or [])
        return [
            c
            for c in self.engine.containers_.values()
            if want <= {f"{k}={v}" for k, v in c.labels.items()} | set(c.labels)
        ]


class Images:
    def __init__(self, have: set[str]) -> None:
        self.have = have

    def get(self, image: str) -> object:
        if image not in self.have:
            raise ImageNotFound(image)
        return object()


class Engine:
    def __init__(self, images: set[str]) -> None:
        self.containers_: dict[str, Container] = {}
        self.started: list[Container] = []
        self.containers = Containers(self)
        self.networks = Named()
        self.volumes = Named()
        self.images = Images(images)
        self.prepare: Any = None

    def service(self, project: str, name: str, store: str) -> Container:
        c = Container(self, f"{project}-{name}-1", {})
        c.labels = {
            eng.LABEL_PROJECT: project,
            eng.LABEL_SERVICE: name,
            "io.composegen.model-store": store,
        }
        self.containers_[c.name] = c
        return c


class FakeOllama:
    """The Ollama API of the fetch containers, by base URL: one store each."""

    def __init__(self, stores: dict[str, set[str]], unknown: tuple[str, ...] = ()) -> None:
        self.stores = stores  # host port -> models present
        self.unknown = unknown
        self.pulls: list[tuple[str, str]] = []
        self.copies: list[tuple[str, str, str]] = []

    def __call__(self, base: str) -> Any:
        port = base.rsplit(":", 1)[1]
        have = self.stores.setdefault(port, set())
        api = self

        class Api:
            def ready(self, timeout_s: float) -> bool:
                return True

            def tags(self) -> set[str]:
                return set(have)

            def pull(self, model: str) -> Any:
                api.pulls.append((port, model))
                yield {"status": "pulling manifest"}
                if model in api.unknown:
                    yield {"error": "pull model manifest: file does not exist"}
                    return
                for done in (0, 1048576, 2097152):
                    yield {
                        "status": "pulling 8eeb52df",
                        "digest": "sha256:8eeb52df",
                        "total": 2097152,
                        "completed": done,
                    }
                yield {"status": "success"}
                have.add(model if ":" in model else f"{model}:latest")

            def copy(self, source: str, destination: str) -> None:
                api.copies.append((port, source, destination))
                have.add(destination)

        return Api()


# --- stacks ------------------------------------------------------------------------------------

REPLICAS = "ollama-replicas"


def render(tmp_path: Path, capsys: pytest.CaptureFixture[str], profile: str, *args: str) -> Path:
    out = tmp_path / profile
    code, _, err = call(["render", "-P", profile, "--reference", "-o", str(out), *args], capsys)
    assert code == 0, err
    return out


def project_of(directory: Path) -> Any:
    return load_project(directory / "docker-compose.yml", "proj")


def labels(directory: Path, file: str = "docker-compose.yml") -> dict[str, dict[str, str]]:
    data = yaml.safe_load((directory / file).read_text())
    return {name: svc.get("labels", {}) for name, svc in data["services"].items()}


# --- item 1: render records the models -----------------------------------------------------------


def test_render_labels_each_services_store_in_both_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = render(tmp_path, capsys, REPLICAS)
    gpu = labels(d)
    for i in range(4):  # 4x A100-SXM-64GB: every replica runs Mixtral from the shared store
        assert gpu[f"ollama-{i}"]["io.composegen.models"] == "mixtral:8x7b"
        assert gpu[f"ollama-{i}"]["io.composegen.model-source"] == "ollama"
        assert gpu[f"ollama-{i}"]["io.composegen.model-store"] == "/models"
    assert "io.composegen.model-source" not in gpu["gateway"]
    cpu = labels(d, "fallback/docker-compose.cpu.yml")["ollama-0-cpu"]
    assert cpu["io.composegen.models"] == "mistral:7b-instruct-q4_0"
    assert cpu["io.composegen.model-store"] == "/models/composegen-cpu"
    assert cpu["io.composegen.model-aliases"] == "mistral:7b-instruct-q4_0=mixtral:8x7b"


def test_rag_a100_labels_hf_caches_and_the_fetch_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = render(tmp_path, capsys, "rag-a100", "--image", "hf-fetch=example.org/fetch:2")
    gpu = labels(d)
    assert gpu["embeddings"]["io.composegen.model-store"] == "/data"  # TEI's hub cache
    assert gpu["llm"]["io.composegen.model-store"] == "/root/.cache/huggingface/hub"
    assert gpu["whisper"]["io.composegen.model-store"] == "/home/ubuntu/.cache/huggingface/hub"
    assert gpu["llm"]["io.composegen.fetch-image"] == "example.org/fetch:2"
    stack = (d / "STACK.md").read_text()
    # one store for whisper, llm and ocr (hf-cache/hub), one for TEI (the volume's root)
    assert "| `hf-cache:/hub` | Hugging Face | ivrit-ai/whisper-large-v3-ct2, " in stack
    assert "Qwen/Qwen2.5-0.5B-Instruct" in stack.split("| `hf-cache:/hub` |")[1].split("\n")[0]
    assert "| `hf-cache:/` | Hugging Face | sentence-transformers/all-MiniLM-L6-v2 |" in stack


def test_revision_from_the_profile_reaches_the_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = tmp_path / "v.yaml"
    rev = "a09a35458c702b33eeacc393d103063234e8bc28"
    llm = {
        "name": "Qwen/Qwen2.5-7B-Instruct",
        "vram_mib": 122880,
        "context_length": 32768,
        "architecture": "Qwen2ForCausalLM",
        "servers": ["vllm"],
        "revision": rev,
    }
    values.write_text(yaml.safe_dump({"services": {"llm": {"models": [llm]}}}))
    d = render(tmp_path, capsys, "rag-a100", "--values", str(values))
    assert labels(d)["llm"]["io.composegen.model-revisions"] == f"Qwen/Qwen2.5-7B-Instruct@{rev}"
    store = next(
        s for s in serving_pull.stack_plan(d, project_of(d)).stores if s.where == "hf-cache:/hub"
    )
    assert [str(w) for w in store.models if w.revision] == [f"Qwen/Qwen2.5-7B-Instruct@{rev}"]


def test_a_bad_revision_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = str(_values(tmp_path, "main; rm -rf /"))
    code, _, err = call(
        ["render", "-P", "rag-a100", "--reference", "-o", str(tmp_path / "x"), "--values", bad],
        capsys,
    )
    assert code == 2 and err.startswith("composegen: error:") and "revision" in err
    assert not (tmp_path / "x").exists()


def _values(tmp_path: Path, rev: str) -> Path:
    p = tmp_path / "bad.yaml"
    m = {"name": "sentence-transformers/all-MiniLM-L6-v2", "vram_mib": 20480, "revision": rev}
    p.write_text(yaml.safe_dump({"services": {"embeddings": {"models": [m]}}}))
    return p


def test_stores_shared_by_replicas_are_listed_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = render(tmp_path, capsys, REPLICAS)
    plan = serving_pull.stack_plan(d, project_of(d))
    assert [(s.where, [str(w) for w in s.models], s.modes) for s in plan.stores] == [
        ("models:/", ["mixtral:8x7b"], ("gpu",)),
        ("models:/composegen-cpu", ["mistral:7b-instruct-q4_0"], ("cpu",)),
    ]
    assert plan.stores[0].services == ("ollama-0", "ollama-1", "ollama-2", "ollama-3")
    assert plan.stores[0].keep_alive == "24h"


def test_a_store_not_on_a_named_volume_is_skipped_with_the_reason() -> None:
    m = Member(
        "app",
        "gpu",
        "img",
        {
            "io.composegen.models": "x",
            "io.composegen.model-source": "ollama",
            "io.composegen.model-store": "/root/.ollama/models",
        },
        (("data", "/data"),),
    )
    plan = plan_models([m])
    assert plan.stores == ()
    assert plan.skipped[0].service == "app" and "not on a named volume" in plan.skipped[0].why


# --- item 2: models pull -----------------------------------------------------------------------


OLLAMA_IMAGE = "ollama/ollama:0.12.6"


def test_pull_fills_each_store_once_then_fetches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = render(tmp_path, capsys, REPLICAS)
    project = project_of(d)
    engine = Engine({OLLAMA_IMAGE})
    api = FakeOllama({})
    events: list[dict[str, Any]] = []
    plan = serving_pull.stack_plan(d, project)
    result = serving_pull.pull(engine, "proj", plan, emit=events.append, api_factory=api)
    assert result.failures == []
    # one pull per store, though four replicas read the first
    assert sorted(m for _, m in api.pulls) == ["mistral:7b-instruct-q4_0", "mixtral:8x7b"]
    assert [(c[1], c[2]) for c in api.copies] == [("mistral:7b-instruct-q4_0", "mixtral:8x7b")]
    assert len(engine.started) == 2 and all(c.removed for c in engine.started)
    for c in engine.started:
        assert c.kw["image"] == OLLAMA_IMAGE and c.kw["network"] == "proj_fetch"
        assert c.kw["ports"] == {"11434/tcp": ("127.0.0.1", None)}
        assert c.kw["volumes"] == {"proj_models": {"bind": "/models", "mode": "rw"}}
        assert c.labels["com.docker.compose.oneoff"] == "True"
        assert c.labels["com.docker.compose.project"] == "proj"
    envs = sorted(c.kw["environment"]["OLLAMA_MODELS"] for c in engine.started)
    assert envs == ["/models", "/models/composegen-cpu"]
    assert engine.networks.removed == ["proj_fetch"] and engine.networks.items == {}
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["completed"] == progress[-1]["total"] == 2097152
    # second run: the same stores (the fake API keeps them by port) hold everything
    engine2 = Engine({OLLAMA_IMAGE})
    api.pulls.clear()
    again = serving_pull.pull(engine2, "proj", plan, api_factory=api)
    assert api.pulls == [] and again.fetched == [] and len(again.present) == 2


def test_a_store_a_running_service_serves_is_checked_without_a_fetch_container(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = render(tmp_path, capsys, REPLICAS)
    engine = Engine({OLLAMA_IMAGE})
    running = engine.service("proj", "ollama-2", "/models")
    table = "NAME            ID              SIZE      MODIFIED\nmixtral:8x7b    a3b6bef0f836    26 GB     2 days ago\n"  # noqa: E501
    running.exec_answer = lambda cmd: (0, table.encode())
    api = FakeOllama({})
    plan = serving_pull.stack_plan(d, project_of(d))
    result = serving_pull.pull(engine, "proj", plan, api_factory=api)
    assert running.execs == [["ollama", "list"]]
    # only the CPU store needed a fetch container
    assert [c.kw["environment"]["OLLAMA_MODELS"] for c in engine.started] == [
        "/models/composegen-cpu"
    ]
    assert ("models:/", "mixtral:8x7b") in result.present


def test_unknown_model_names_model_service_and_cause_and_the_rest_is_filled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = render(tmp_path, capsys, REPLICAS)
    engine = Engine({OLLAMA_IMAGE})
    api = FakeOllama({}, unknown=("mixtral:8x7b",))
    plan = serving_pull.stack_plan(d, project_of(d))
    result = serving_pull.pull(engine, "proj", plan, api_factory=api)
    assert [f.kind for f in result.failures] == ["unknown_model"]
    assert [m for _, m, _ in result.fetched] == ["mistral:7b-instruct-q4_0"]
    assert all(c.removed for c in engine.started) and engine.networks.items == {}
    with pytest.raises(serving_pull.PullError) as exc:
        serving_pull.raise_failures(result)
    assert exc.value.message == (
        "model mixtral:8x7b (service ollama-0, ollama-1, ollama-2, ollama-3): unknown model "
        "(pull model manifest: file does not exist)"
    )


def _hf_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = render(tmp_path, capsys, "rag-a100", "--image", "hf-fetch=cg/hf-fetch:1")
    (d / ".env").write_text(
        (d / ".env").read_text() + "HF_TOKEN=hf_secret_0123456789\nHF_ENDPOINT=http://hub:8080\n"
    )
    return d


def test_hf_fetch_container_runs_the_script_with_token_and_endpoint_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    d = _hf_stack(tmp_path, capsys)
    engine = Engine({"cg/hf-fetch:1"})

    def prepare(c: Container) -> None:
        spec = json.loads(c.kw["command"][2])
        for m in spec["models"]:
            name = m["name"]
            if name == "Qwen/Qwen2.5-7B-Instruct":
                c.lines.append(
                    json.dumps(
                        {"event": "file", "model": name, "file": "a", "total": 10, "completed": 4}
                    )
                )
                c.lines.append(
                    json.dumps(
                        {"event": "done", "model": name, "revision": "a" * 40, "fetched_bytes": 10}
                    )
                )
            else:
                c.lines.append(
                    json.dumps(
                        {"event": "done", "model": name, "revision": "b" * 40, "fetched_bytes": 0}
                    )
                )

    engine.prepare = prepare
    monkeypatch.setattr(eng, "connect", lambda *a, **k: engine)
    code, out, err = call(["models", "pull", "-C", str(d), "-p", "proj", "--json"], capsys)
    assert code == 0, err
    assert "hf_secret" not in out + err
    assert len(engine.started) == 2  # hf-cache:/hub and hf-cache:/ (TEI)
    for c in engine.started:
        assert c.kw["entrypoint"] == ["python3"] and c.kw["command"][0] == "-c"
        env = c.kw["environment"]
        assert env["HF_TOKEN"] == "hf_secret_0123456789"
        assert env["HF_ENDPOINT"] == "http://hub:8080" and env["HF_HUB_OFFLINE"] == "0"
        assert "hf_secret" not in " ".join(c.kw["command"])
        assert c.removed
    done = json.loads(out.strip().splitlines()[-1])
    assert done["ok"] is True
    assert done["fetched"] == [
        {"store": "hf-cache:/hub", "model": "Qwen/Qwen2.5-7B-Instruct", "bytes": 10}
    ]
    assert len(done["present"]) == 5  # 4 more in hf-cache:/hub, 1 in hf-cache:/


def test_gated_repo_without_token_is_one_line_naming_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = render(tmp_path, capsys, "rag-a100", "--image", "hf-fetch=cg/hf-fetch:1")
    engine = Engine({"cg/hf-fetch:1"})

    def prepare(c: Container) -> None:
        spec = json.loads(c.kw["command"][2])
        name = spec["models"][0]["name"]
        msg = (
            "gated repository and no token: set HF_TOKEN in the stack's .env (a token with access)"
        )
        c.lines = [json.dumps({"event": "error", "model": name, "kind": "gated", "message": msg})]
        c.exit_code = 1

    engine.prepare = prepare
    monkeypatch.setattr(eng, "connect", lambda *a, **k: engine)
    code, _, err = call(["models", "pull", "-C", str(d), "-p", "proj"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("composegen: error: model ")
    assert "gated repository and no token" in lines[0] and "HF_TOKEN" in lines[0]
    # the first model of each store: whisper's (hf-cache:/hub), the embeddings' (hf-cache:/)
    assert "model ivrit-ai/whisper-large-v3-ct2 (service whisper): " in lines[0] or (
        "model sentence-transformers/all-MiniLM-L6-v2 (service embeddings): " in lines[0]
    )
    assert all(c.removed for c in engine.started) and "proj_fetch" not in engine.networks.items
    assert engine.networks.removed == ["proj_fetch"]


def test_no_fetch_image_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = render(tmp_path, capsys, "rag-a100")
    data = yaml.safe_load((d / "docker-compose.yml").read_text())
    for svc in data["services"].values():
        svc.get("labels", {}).pop("io.composegen.fetch-image", None)
    (d / "docker-compose.yml").write_text(yaml.safe_dump(data))
    (d / "fallback" / "docker-compose.cpu.yml").unlink()
    plan = serving_pull.stack_plan(d, project_of(d))
    result = serving_pull.pull(Engine(set()), "proj", plan)
    assert {f.kind for f in result.failures} == {"no_image"}
    assert "images.hf-fetch" in result.failures[0].message


def test_fetch_script_is_valid_python_and_prints_the_contract() -> None:
    from composegen.serving.fetch_script import SCRIPT

    compile(SCRIPT, "<fetch>", "exec")
    for key in ('event="file"', 'event="done"', 'event="error"', "fetched_bytes"):
        assert key in SCRIPT
    # the token reaches the script through its environment only (one read, never printed)
    assert SCRIPT.count('os.environ.get("HF_TOKEN")') == 1


# --- item 3: up loads each Ollama model once ---------------------------------------------------


def test_load_posts_generate_with_the_stacks_keep_alive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = render(tmp_path, capsys, REPLICAS)
    project = project_of(d)
    engine = Engine(set())
    made = []
    for i in range(4):
        c = engine.service("proj", f"ollama-{i}", "/models")
        c.exec_answer = lambda cmd: (0, b'HTTP/1.0 200 OK\r\n\r\n{"done": true}')
        made.append(c)
    seen: list[tuple[str, str, str]] = []
    loaded = engine_up.load_ollama_models(engine, project, lambda *a: seen.append(a), 30)
    assert sorted(loaded) == [(f"ollama-{i}", "mixtral:8x7b") for i in range(4)]
    for i, c in enumerate(made):
        (cmd,) = c.execs
        assert cmd[:2] == ["bash", "-c"]
        assert json.loads(cmd[4]) == {"model": "mixtral:8x7b", "stream": False, "keep_alive": "24h"}
        assert cmd[5] == str(39001 + i)  # OLLAMA_HOST=0.0.0.0:3900N


def test_a_model_that_does_not_load_fails_up_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = render(tmp_path, capsys, REPLICAS)
    engine = Engine(set())
    for i in range(4):
        c = engine.service("proj", f"ollama-{i}", "/models")
        c.exec_answer = lambda cmd: (
            0,
            b"HTTP/1.0 404 Not Found\r\n\r\n" + b'{"error": "model \'mixtral:8x7b\' not found"}',
        )
    with pytest.raises(engine_up.UpFailed) as exc:
        engine_up.load_ollama_models(engine, project_of(d), lambda *a: None, 30)
    assert exc.value.message.startswith("service ollama-")
    assert "model mixtral:8x7b did not load: model 'mixtral:8x7b' not found" in exc.value.message


def test_up_no_models_touches_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = render(tmp_path, capsys, REPLICAS)
    engine = Engine({OLLAMA_IMAGE})
    monkeypatch.setattr(eng, "connect", lambda *a, **k: engine)
    calls: list[str] = []
    monkeypatch.setattr(engine_up, "fill_model_stores", lambda *a: calls.append("fill"))

    def fake_up(*a: Any, **k: Any) -> Any:
        calls.append("up")
        return engine_up.UpResult({}, 0, {}, None, 0.1)

    monkeypatch.setattr(engine_up, "up", fake_up)
    monkeypatch.setattr(engine_up, "load_ollama_models", lambda *a: calls.append("load") or [])
    # --no-doctor: the hook of the host running the tests is not the point here
    code, _, err = call(["up", "-C", str(d), "-p", "proj", "--no-models", "--no-doctor"], capsys)
    assert code == 0, err
    assert calls == ["up"]
    calls.clear()
    code, _, err = call(["up", "-C", str(d), "-p", "proj", "--no-doctor"], capsys)
    assert code == 0, err
    assert calls == ["fill", "up", "load"]


def test_a_missing_fetch_image_with_pull_never_names_the_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = render(tmp_path, capsys, REPLICAS)
    plan = serving_pull.stack_plan(d, project_of(d))
    result = serving_pull.pull(Engine(set()), "proj", plan, pull_images=False)
    assert {f.kind for f in result.failures} == {"image"}
    with pytest.raises(serving_pull.PullError) as exc:
        serving_pull.raise_failures(result)
    assert "image ollama/ollama:0.12.6 is not on this engine (--pull never)" in exc.value.message
    assert exc.value.hint is not None and "docker pull" in exc.value.hint


@pytest.mark.parametrize("as_json", [False, True])
def test_progress_shows_bytes_rate_and_eta(as_json: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from composegen.serving import pull as mod

    clock = iter([0.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    monkeypatch.setattr(mod.time, "monotonic", lambda: next(clock))
    lines: list[str] = []
    prog = serving_pull.ModelProgress(as_json, tty=False, out=lines.append)
    base = {"event": "progress", "store": "models:/", "model": "mixtral:8x7b", "services": "o"}
    for done in (0, 1048576, 2097152):
        prog({**base, "completed": done, "total": 4194304})
    if as_json:
        last = json.loads(lines[-1])
        assert (last["completed"], last["total"], last["rate"]) == (2097152, 4194304, 1048576)
        assert last["eta_s"] == 2.0
    else:
        assert lines[-1].endswith("mixtral:8x7b (o): 50% 2.1/4.2 MB, 1.0 MB/s, ETA 2s"), lines


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("pull model manifest: file does not exist", "unknown_model"),
        ("write /models/blobs/sha256-8eeb52df-partial: no space left on device", "disk_full"),
        (
            'pull model manifest: Get "https://registry.ollama.ai/v2/library/x/manifests/y": '
            "dial tcp: lookup registry.ollama.ai: no such host",
            "network",
        ),
        ("digest mismatch, file must be downloaded again", "other"),
    ],
)
def test_ollama_pull_errors_are_told_apart(text: str, kind: str) -> None:
    assert serving_pull.ollama_failure(text) == kind
