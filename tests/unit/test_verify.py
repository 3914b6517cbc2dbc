"""`composegen verify`: the decisions of each check, without an engine, a GPU or a network.

- NVML compute processes -> containers: the fake NVML's serving scenarios (tests/fake_nvml.py)
  and /proc/PID/cgroup files of every format written under tmp_path (the /proc root is a
  parameter);
- the whole verify over a rendered ollama-replicas stack: a small fake Docker client (its
  containers answer `docker exec` like the Ollama image and nvidia-smi do) and httpx's
  MockTransport as the gateway.
"""

from __future__ import annotations

import hashlib
import io
import json
import wave
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from composegen import cli
from composegen.detect import nvml
from composegen.engine.compose import Project, load_project
from composegen.serving import verify as v
from tests.fake_nvml import SERVING_PIDS, FakeNvml
from tests.stack_checks import inventory_file

Install = Callable[[str], FakeNvml]

# container ids as the engine makes them: 64 hex digits
IDS = {
    name: hashlib.sha256(f"container {name}".encode()).hexdigest()
    for name in ("ollama-0", "ollama-1", "ollama-2", "ollama-3", "gateway", "other")
}
# the UUIDs of tests/fake_nvml.py's a100_4x64 GPUs, written out
UUID = {
    0: "GPU-00a10064-0000-4000-8000-000000000000",
    1: "GPU-00a10064-0000-4000-8000-000000000001",
    2: "GPU-00a10064-0000-4000-8000-000000000002",
    3: "GPU-00a10064-0000-4000-8000-000000000003",
}


# --- /proc/PID/cgroup -------------------------------------------------------------------------

CID = "4bd9c1a0f5e7a2c3d8b6e1f0a9c8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0"
OUTER = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"

CGROUPS = {
    # cgroup v1, cgroupfs driver (Docker's default before cgroup v2)
    "v1-cgroupfs": (
        "12:pids:/docker/{id}\n11:hugetlb:/docker/{id}\n10:net_prio,net_cls:/docker/{id}\n"
        "9:memory:/docker/{id}\n8:devices:/docker/{id}\n7:cpu,cpuacct:/docker/{id}\n"
        "1:name=systemd:/docker/{id}\n0::/system.slice/containerd.service\n"
    ),
    # cgroup v1, systemd driver
    "v1-systemd": (
        "11:devices:/system.slice/docker-{id}.scope\n"
        "4:memory:/system.slice/docker-{id}.scope\n"
        "1:name=systemd:/system.slice/docker-{id}.scope\n"
    ),
    # cgroup v2 (one line), systemd driver: Debian 11+, Ubuntu 21.10+, Fedora 31+
    "v2-systemd": "0::/system.slice/docker-{id}.scope\n",
    # cgroup v2, cgroupfs driver
    "v2-cgroupfs": "0::/docker/{id}\n",
    # rootless Docker under systemd
    "v2-rootless": (
        "0::/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{id}.scope\n"
    ),
    # Kubernetes with containerd, systemd driver
    "kubepods-systemd": (
        "0::/kubepods.slice/kubepods-burstable.slice/"
        "kubepods-burstable-pod4f0a6b3c_9d1e_4c2b_8a7f_3e5d6c7b8a9f.slice/"
        "cri-containerd-{id}.scope\n"
    ),
    # Kubernetes, cgroupfs driver (v1)
    "kubepods-cgroupfs": (
        "11:memory:/kubepods/besteffort/pod4f0a6b3c-9d1e-4c2b-8a7f-3e5d6c7b8a9f/{id}\n"
    ),
    # CRI-O
    "crio": "0::/kubepods.slice/kubepods-pod1.slice/crio-{id}.scope\n",
}


@pytest.mark.parametrize("form", sorted(CGROUPS))
def test_cgroup_file_names_the_container(tmp_path: Path, form: str) -> None:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text(CGROUPS[form].format(id=CID))
    assert v.container_of_pid(4242, tmp_path) == CID


def test_nested_engine_names_the_inner_container(tmp_path: Path) -> None:
    # Docker in Docker: the inner engine's container sits below the outer one's
    text = f"0::/docker/{OUTER}/docker/{CID}\n"
    assert v.container_id_from_cgroup(text) == CID


@pytest.mark.parametrize(
    "text",
    [
        "0::/user.slice/user-1000.slice/session-3.scope\n",  # a login shell
        "0::/init.scope\n",
        "0::/system.slice/docker.service\n",  # dockerd itself
        "12:pids:/\n1:name=systemd:/init.scope\n0::/\n",
        "0::/docker/4bd9c1a0f5e7\n",  # a short id is not a container id
        "",
    ],
)
def test_host_processes_belong_to_no_container(text: str) -> None:
    assert v.container_id_from_cgroup(text) is None


def test_a_process_that_is_gone_belongs_to_no_container(tmp_path: Path) -> None:
    assert v.container_of_pid(99999, tmp_path) is None


def _proc(tmp_path: Path, forms: dict[str, str]) -> Path:
    """A /proc with each replica's runner PID in its container (each in its own format)."""
    root = tmp_path / "proc"
    for name, form in forms.items():
        d = root / str(SERVING_PIDS[name])
        d.mkdir(parents=True)
        (d / "cgroup").write_text(CGROUPS[form].format(id=IDS[name]))
    return root


FORMS = {
    "ollama-0": "v1-cgroupfs",
    "ollama-1": "v2-systemd",
    "ollama-2": "v2-cgroupfs",
    "ollama-3": "v1-systemd",
}


# --- NVML processes -> containers -------------------------------------------------------------


def test_nvml_processes_of_each_gpu(nvml_scenario: Install) -> None:
    nvml_scenario("replicas_serving")
    gpus = nvml.compute_processes(2.0)
    assert [(g.index, g.uuid) for g in gpus] == [(i, UUID[i]) for i in range(4)]
    assert gpus[0].processes == ((41873, 28193),)
    assert gpus[3].processes == ((42011, 28193),)
    assert all(g.error is None for g in gpus)


def test_nvml_memory_not_available_and_lost_gpu(nvml_scenario: Install) -> None:
    nvml_scenario("replicas_spread")
    gpus = nvml.compute_processes(2.0)
    assert gpus[3].processes == ((42011, 28193), (41902, None))
    nvml.shutdown()
    nvml_scenario("lost_gpu")
    lost = nvml.compute_processes(2.0)
    assert lost[2].processes == () and lost[2].error is not None
    assert "GPU_IS_LOST" in lost[2].error
    assert lost[0].error is None and lost[0].uuid == UUID[0]


def test_nvml_unavailable_is_raised(nvml_scenario: Install) -> None:
    nvml_scenario("no_library")
    with pytest.raises(nvml.NvmlUnavailable):
        nvml.compute_processes(2.0)


def test_each_replica_holds_memory_on_its_own_gpu(nvml_scenario: Install, tmp_path: Path) -> None:
    nvml_scenario("replicas_serving")
    held = v.gpu_memory_by_container(nvml.compute_processes(2.0), _proc(tmp_path, FORMS))
    assert held == {
        IDS["ollama-0"]: {0: 28193},
        IDS["ollama-1"]: {1: 28193},
        IDS["ollama-2"]: {2: 28193},
        IDS["ollama-3"]: {3: 28193},
    }


def test_misplaced_replica_names_the_service_and_both_gpus(
    nvml_scenario: Install, tmp_path: Path
) -> None:
    nvml_scenario("replicas_misplaced")
    gpus = nvml.compute_processes(2.0)
    held = v.gpu_memory_by_container(gpus, _proc(tmp_path, FORMS))
    assert held[IDS["ollama-2"]] == {0: 28193}
    bad = v.placement_check("ollama-2", [UUID[2]], gpus, held[IDS["ollama-2"]])
    assert bad.status == "failed"
    assert bad.detail == (
        f"ollama-2 runs on GPU 0 ({UUID[0]}), not on its planned GPU 2 ({UUID[2]})"
    )
    good = v.placement_check("ollama-0", [UUID[0]], gpus, held[IDS["ollama-0"]])
    assert good.status == "passed"
    assert good.detail == f"ollama-0 holds 28193 MiB on GPU 0 ({UUID[0]}), as planned"


def test_a_process_on_a_gpu_beyond_the_plan_fails(nvml_scenario: Install, tmp_path: Path) -> None:
    nvml_scenario("replicas_spread")
    gpus = nvml.compute_processes(2.0)
    held = v.gpu_memory_by_container(gpus, _proc(tmp_path, FORMS))
    assert held[IDS["ollama-1"]] == {1: 28193, 3: None}
    bad = v.placement_check("ollama-1", [UUID[1]], gpus, held[IDS["ollama-1"]])
    assert bad.status == "failed"
    assert f"GPU 3 ({UUID[3]}) too" in bad.detail and "ollama-1" in bad.detail


def test_no_process_at_all_fails_unless_idle(nvml_scenario: Install) -> None:
    nvml_scenario("replicas_serving")
    gpus = nvml.compute_processes(2.0)
    none = v.placement_check("embeddings", ["1"], gpus, {})  # pinned by index
    assert none.status == "failed"
    assert none.detail.startswith(
        f"embeddings: no process of it holds memory on its planned GPU 1 ({UUID[1]})"
    )
    idle = v.placement_check("ollama-1", [UUID[1]], gpus, {}, "no model loaded")
    assert idle.status == "skipped" and idle.ok is None
    unknown = v.placement_check("ollama-9", ["GPU-ffffffff-0000-4000-8000-000000000009"], gpus, {})
    assert unknown.status == "failed" and "not on this host" in unknown.detail


# --- nvidia-smi -L, /api/ps --------------------------------------------------------------------

SMI_2 = f"GPU 0: NVIDIA A100-SXM-64GB (UUID: {UUID[2]})\n"


def test_nvidia_smi_lists_exactly_the_planned_gpus() -> None:
    ok = v.gpu_access_check("ollama-2", "p-ollama-2-1", [UUID[2]], 0, 0, SMI_2)
    assert ok.status == "passed"
    wrong = v.gpu_access_check("ollama-2", "p-ollama-2-1", [UUID[1]], 0, 0, SMI_2)
    assert wrong.status == "failed" and UUID[2] in wrong.detail and UUID[1] in wrong.detail
    by_index = v.gpu_access_check("llm", "p-llm-1", ["2", "3"], 0, 0, SMI_2)
    assert by_index.status == "failed" and "sees 1 GPU(s), planned 2" in by_index.detail
    mig = (
        f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {UUID[0]})\n"
        "  MIG 3g.40gb     Device  0: (UUID: MIG-11111111-0000-4000-8000-000000000000)\n"
    )
    assert v.parse_smi_list(mig) == ([UUID[0]], ["MIG-11111111-0000-4000-8000-000000000000"])
    pinned_mig = ["MIG-11111111-0000-4000-8000-000000000000"]
    assert v.gpu_access_check("ocr", "p-ocr-1", pinned_mig, 0, 0, mig).status == "passed"


def test_lost_nvml_inside_the_container_says_lost_gpu_access() -> None:
    out = "Failed to initialize NVML: Unknown Error\n"
    lost = v.gpu_access_check("ollama-1", "p-ollama-1-1", [UUID[1]], 0, 255, out)
    assert lost.status == "failed"
    assert "lost GPU access" in lost.detail and "docker rm -f p-ollama-1-1" in lost.detail
    none = v.gpu_access_check("ollama-1", "p", [UUID[1]], 0, 6, "No devices were found\n")
    assert none.status == "failed" and "No devices were found" in none.detail
    missing = v.gpu_access_check(
        "x",
        "p",
        [UUID[1]],
        0,
        126,
        'OCI runtime exec failed: exec: "nvidia-smi": executable file not found in $PATH: unknown',
    )
    assert missing.status == "skipped"


# sizes as ollama 0.12 reports them for mistral:7b-instruct-q4_0 (4.1 GB weights, 2k ctx)
MISTRAL = 5153439744


def _ps(*models: tuple[str, int, int]) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": n,
                "model": n,
                "size": size,
                "size_vram": vram,
                "digest": "f974a74358d62a017b37c6f424fcdf2744ca02926c4f952513ddf474b2fa5091",
                "expires_at": "2026-11-30T05:12:44.118416537Z",
            }
            for n, size, vram in models
        ]
    }


def test_residency_on_gpu_partly_and_on_cpu() -> None:
    name = "mistral:7b-instruct-q4_0"
    full = v.parse_ps(_ps((name, MISTRAL, MISTRAL)))
    assert full[0].gpu_fraction == 1.0 and full[0].where == "100% GPU"
    assert v.residency_check("ollama-0", full, True, False).status == "passed"
    part = v.parse_ps(_ps((name, MISTRAL, 2164445184)))
    assert part[0].gpu_fraction == 0.42 and part[0].where == "58%/42% CPU/GPU"
    bad = v.residency_check("ollama-1", part, True, False)
    assert bad.status == "failed"
    assert bad.detail.startswith("ollama-1: not on its GPU: mistral:7b-instruct-q4_0 58%/42%")
    assert "gpu_fraction 0.42" in bad.detail
    assert v.residency_check("ollama-1", part, True, True).status == "passed"
    cpu = v.parse_ps(_ps((name, MISTRAL, 0)))
    assert cpu[0].where == "100% CPU"
    # a partial-offload allowance does not cover a model with nothing on the GPU
    assert v.residency_check("ollama-1", cpu, True, True).status == "failed"
    # a CPU service is meant to run there
    assert v.residency_check("ollama-cpu", cpu, False, False).status == "passed"
    assert v.residency_check("ollama-0", [], True, False).status == "skipped"


def test_expected_models_match_their_public_alias() -> None:
    loaded = v.parse_ps(_ps(("llama3.2:latest", 2019393189, 2019393189)))
    states = v.model_states(loaded, [["llama3.2:1b", "llama3.2"], ["nomic-embed-text"]])
    assert [(m.name, m.loaded, m.gpu_fraction) for m in states] == [
        ("llama3.2:1b", True, 1.0),
        ("nomic-embed-text", False, None),
    ]


def test_silence_is_one_second_of_wav() -> None:
    with wave.open(io.BytesIO(v.silence_wav())) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.getnframes() == 16000
        assert set(w.readframes(16000)) == {0}


def test_each_server_gets_its_tiny_request() -> None:
    from composegen import profiles

    rag = profiles.load("rag-a100")
    llm = v.probe_for(rag.service("llm"))
    assert (llm.method, llm.path) == ("POST", "v1/completions")
    assert llm.json == {"model": "Qwen/Qwen2.5-7B-Instruct", "prompt": "Hi", "max_tokens": 1}
    assert (v.probe_for(rag.service("ocr")).method, v.probe_for(rag.service("ocr")).path) == (
        "GET",
        "v1/models",
    )
    tei = v.probe_for(rag.service("embeddings"))
    assert tei.path == "embed" and isinstance(tei.json, dict) and tei.json["inputs"]
    assert tei.expect is not None
    assert tei.expect([[0.0123, -0.0456, 0.0789]])  # TEI's answer: one vector per input
    assert not tei.expect([]) and not tei.expect({"error": "Input validation error"})
    assert not tei.expect({"embeddings": []}) and not tei.expect("ok")
    whisper = v.probe_for(rag.service("whisper"))
    assert whisper.path == "v1/audio/transcriptions" and whisper.files is not None
    assert whisper.data == {"model": "ivrit-ai/whisper-large-v3-ct2"}
    hub = v.probe_for(profiles.load("rma-shared").service("ollama"))
    assert hub.path == "api/generate"
    assert hub.json == {
        "model": "llama3.2",
        "prompt": "Hi",
        "stream": False,
        "options": {"num_predict": 1},
    }
    webui = v.probe_for(profiles.load("rma-shared").service("doc-processor"))
    assert (webui.method, webui.path) == ("GET", "health")


# --- verify over a rendered stack, with a fake engine -----------------------------------------


class FakeContainer:
    def __init__(
        self,
        name: str,
        cid: str,
        labels: dict[str, str],
        attrs: dict[str, Any],
        answer: Callable[[list[str]], tuple[int, bytes]],
    ) -> None:
        self.name, self.id, self.labels, self.attrs, self.answer = name, cid, labels, attrs, answer
        self.execs: list[list[str]] = []

    def exec_run(self, cmd: list[str], **_: Any) -> SimpleNamespace:
        self.execs.append(cmd)
        code, out = self.answer(cmd)
        return SimpleNamespace(exit_code=code, output=out)


class FakeClient:
    def __init__(self, containers: list[FakeContainer]) -> None:
        self.items = containers
        self.containers = self

    def list(self, all: bool = False, filters: dict[str, str] | None = None) -> list[Any]:
        assert filters is not None and filters["label"].startswith("com.docker.compose.project=")
        project = filters["label"].split("=", 1)[1]
        return [
            c
            for c in self.items
            if c.labels["com.docker.compose.project"] == project
            and (all or c.attrs["State"]["Status"] == "running")
        ]


def _render(tmp_path: Path, *sets: str, profile: str = "ollama-replicas") -> Project:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "stack"
    args = ["render", "-P", profile, "--inventory", inventory_file(tmp_path, "a100_4x64")]
    for s in ("gateway.port=18473", *sets):
        args += ["--set", s]
    cli.main([*args, "-o", str(out)])
    return load_project(out / "docker-compose.yml", "verify-test")


def _http(body: dict[str, Any]) -> bytes:
    text = json.dumps(body)
    return (
        "HTTP/1.0 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Date: Sun, 29 Nov 2026 05:12:44 GMT\r\nContent-Length: {len(text)}\r\n\r\n{text}"
    ).encode()


class Engine:
    """The stack's containers as `up` makes them; what each answers is set per test."""

    def __init__(self, project: Project) -> None:
        self.ps: dict[str, dict[str, Any]] = {}
        self.smi: dict[str, tuple[int, str]] = {}
        self.state: dict[str, str] = {}
        self.containers: list[FakeContainer] = []
        for svc in project.services:
            labels = {
                **svc.labels,
                "com.docker.compose.project": project.name,
                "com.docker.compose.service": svc.name,
            }
            reqs = [
                {"Driver": "nvidia", "Count": 0, "DeviceIDs": list(g.device_ids or ())}
                for g in svc.gpus
            ]
            env = [f"{k}={val}" for k, val in svc.environment.items()]
            test = list(svc.healthcheck.test) if svc.healthcheck else []
            attrs: dict[str, Any] = {
                "State": {"Status": "running"},
                "Config": {"Env": env, "Healthcheck": {"Test": test}},
                "HostConfig": {"DeviceRequests": reqs or None},
            }
            self.containers.append(
                FakeContainer(
                    f"{project.name}-{svc.name}-1",
                    IDS[svc.name],
                    labels,
                    attrs,
                    self._answer(svc.name, svc.environment.get("OLLAMA_HOST", "")),
                )
            )

    def _answer(self, name: str, host: str) -> Callable[[list[str]], tuple[int, bytes]]:
        def answer(cmd: list[str]) -> tuple[int, bytes]:
            if cmd == ["nvidia-smi", "-L"]:
                code, out = self.smi[name]
                return code, out.encode()
            assert cmd[:2] == ["bash", "-c"] and cmd[-1] == "/api/ps"
            assert host.endswith(":" + cmd[-2])  # the port the server listens on
            return 0, _http(self.ps.get(name, {"models": []}))

        return answer

    def client(self) -> FakeClient:
        for c in self.containers:
            c.attrs["State"]["Status"] = self.state.get(
                c.labels["com.docker.compose.service"], "running"
            )
        return FakeClient(self.containers)


def _replicas(tmp_path: Path, *sets: str) -> tuple[Project, Engine]:
    project = _render(tmp_path, *sets)
    eng = Engine(project)
    for i in range(4):
        name = f"ollama-{i}"
        eng.smi[name] = (0, f"GPU 0: NVIDIA A100-SXM-64GB (UUID: {UUID[i]})\n")
        eng.ps[name] = _ps(("mixtral:8x7b", 28193 * 1024 * 1024, 28193 * 1024 * 1024))
    return project, eng


def _gateway(seen: list[httpx.Request], status: int = 200) -> httpx.MockTransport:
    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(
            status, json={"model": "mixtral:8x7b", "response": "Hello", "done": True}
        )

    return httpx.MockTransport(handle)


def _run(project: Project, eng: Engine, transport: Any, **kw: Any) -> v.Report:
    return v.verify(
        eng.client(), project, project.directory, transport=transport, timeout_s=5, **kw
    )


def _check(report: v.Report, service: str, check: str) -> v.Check:
    svc = next(s for s in report.services if s.name == service)
    return next(c for c in svc.checks if c.check == check)


def test_a_serving_stack_passes_with_placement_proven(
    tmp_path: Path, nvml_scenario: Install
) -> None:
    project, eng = _replicas(tmp_path)
    nvml_scenario("replicas_serving")
    seen: list[httpx.Request] = []
    report = _run(project, eng, _gateway(seen), proc_root=_proc(tmp_path, FORMS))
    assert report.ok, report.to_dict()
    # one request through the gateway, on 127.0.0.1 and the published port: one token
    assert [str(r.url) for r in seen] == ["http://127.0.0.1:18473/api/generate"]
    assert json.loads(seen[0].content) == {
        "model": "mixtral:8x7b",
        "prompt": "Hi",
        "stream": False,
        "options": {"num_predict": 1},
    }
    assert "authorization" not in seen[0].headers
    for i in range(4):
        name = f"ollama-{i}"
        assert _check(report, name, "placement").detail == (
            f"{name} holds 28193 MiB on GPU {i} ({UUID[i]}), as planned"
        )
        assert _check(report, name, "gpu-access").status == "passed"
        assert _check(report, name, "residency").status == "passed"
    data = report.to_dict()
    assert data["ok"] is True
    assert data["services"][1]["models"] == [
        {"name": "mixtral:8x7b", "loaded": True, "gpu_fraction": 1.0}
    ]
    assert set(data["services"][1]) == {"name", "ok", "checks", "models"}
    assert set(data["services"][1]["checks"][0]) >= {"check", "ok", "detail"}


def test_without_nvml_placement_is_skipped_not_passed(
    tmp_path: Path, nvml_scenario: Install
) -> None:
    project, eng = _replicas(tmp_path)
    nvml_scenario("no_library")
    report = _run(project, eng, _gateway([]))
    assert report.ok
    check = _check(report, "ollama-1", "placement")
    assert check.status == "skipped" and check.ok is None
    assert "libnvidia-ml.so.1 not found" in check.detail


def test_a_replica_without_its_gpu_fails_naming_service_and_fraction(
    tmp_path: Path, nvml_scenario: Install
) -> None:
    project, eng = _replicas(tmp_path)
    nvml_scenario("no_library")
    size = 28193 * 1024 * 1024
    eng.ps["ollama-2"] = _ps(("mixtral:8x7b", size, 0))
    report = _run(project, eng, _gateway([]))
    assert not report.ok
    bad = _check(report, "ollama-2", "residency")
    assert bad.status == "failed"
    assert "ollama-2" in bad.detail and "100% CPU" in bad.detail and "gpu_fraction 0" in bad.detail
    models = next(s for s in report.services if s.name == "ollama-2").models
    assert [(m.name, m.loaded, m.gpu_fraction) for m in models] == [("mixtral:8x7b", True, 0.0)]
    assert [s.name for s in report.services if not s.ok] == ["ollama-2"]


def test_partial_offload_passes_only_where_the_profile_allows_it(
    tmp_path: Path, nvml_scenario: Install
) -> None:
    nvml_scenario("no_library")
    size = 28193 * 1024 * 1024
    for allow, ok in ((False, False), (True, True)):
        sets = ("services.ollama.gpu.allow_partial_offload=true",) if allow else ()
        project, eng = _replicas(tmp_path / str(allow), *sets)
        eng.ps["ollama-1"] = _ps(("mixtral:8x7b", size, 17609785344))
        report = _run(project, eng, _gateway([]))
        assert report.ok is ok
        assert "gpu_fraction 0.5957" in _check(report, "ollama-1", "residency").detail


def test_lost_gpu_access_fails(tmp_path: Path, nvml_scenario: Install) -> None:
    project, eng = _replicas(tmp_path)
    nvml_scenario("no_library")
    eng.smi["ollama-3"] = (255, "Failed to initialize NVML: Unknown Error\n")
    report = _run(project, eng, _gateway([]))
    assert not report.ok
    assert "lost GPU access" in _check(report, "ollama-3", "gpu-access").detail


def test_misplaced_replica_fails_the_whole_verify(tmp_path: Path, nvml_scenario: Install) -> None:
    project, eng = _replicas(tmp_path)
    nvml_scenario("replicas_misplaced")
    report = _run(project, eng, _gateway([]), proc_root=_proc(tmp_path, FORMS))
    assert not report.ok
    assert [s.name for s in report.services if not s.ok] == ["ollama-2"]
    assert "not on its planned GPU 2" in _check(report, "ollama-2", "placement").detail


def test_an_idle_replica_is_skipped_not_failed(tmp_path: Path, nvml_scenario: Install) -> None:
    project, eng = _replicas(tmp_path)
    nvml_scenario("replicas_misplaced")  # GPU 2 holds nothing of ollama-2's ...
    eng.ps["ollama-2"] = {"models": []}  # ... because it has no model loaded
    procs = _proc(tmp_path, {k: f for k, f in FORMS.items() if k != "ollama-2"})
    report = _run(project, eng, _gateway([]), proc_root=procs)
    assert _check(report, "ollama-2", "residency").status == "skipped"
    assert _check(report, "ollama-2", "placement").status == "skipped"
    assert report.ok


def test_gateway_failure_and_api_key(tmp_path: Path, nvml_scenario: Install) -> None:
    key = "9c1b7e4f2a6d8053b1e7c4a9f2d6e8b0"
    project, eng = _replicas(tmp_path, f"gateway.api_key={key}")
    nvml_scenario("no_library")
    seen: list[httpx.Request] = []
    report = _run(project, eng, _gateway(seen, 502))
    assert seen[0].headers["authorization"] == f"Bearer {key}"
    bad = _check(report, "gateway", "gateway")
    assert bad.status == "failed" and "route / (ollama)" in bad.detail and "HTTP 502" in bad.detail
    assert not report.ok


def test_a_stopped_replica_fails(tmp_path: Path, nvml_scenario: Install) -> None:
    project, eng = _replicas(tmp_path)
    nvml_scenario("no_library")
    eng.state["ollama-1"] = "exited"
    report = _run(project, eng, _gateway([]))
    assert _check(report, "ollama-1", "running").detail == "ollama-1 is exited"
    assert not report.ok


def test_a_stack_without_its_gateway_container_fails(
    tmp_path: Path, nvml_scenario: Install
) -> None:
    project, eng = _replicas(tmp_path)
    nvml_scenario("no_library")
    eng.containers = [
        c for c in eng.containers if c.labels["com.docker.compose.service"] != "gateway"
    ]
    report = _run(project, eng, _gateway([]))
    assert _check(report, "gateway", "running").detail.startswith("the gateway has no container")
    assert not report.ok


def test_a_gpu_replica_stopped_by_the_cpu_fallback_is_skipped(
    tmp_path: Path, nvml_scenario: Install
) -> None:
    from composegen.engine.state import write_mode

    project, eng = _replicas(tmp_path)
    nvml_scenario("no_library")
    eng.state["ollama-1"] = "exited"
    write_mode(project.directory, project.name, "cpu-fallback", "composegen fallback --cpu")
    report = _run(project, eng, _gateway([]))
    check = _check(report, "ollama-1", "running")
    assert check.status == "skipped" and "fallback --cpu" in check.detail
    assert report.ok


def test_status_models_column(tmp_path: Path) -> None:
    project, eng = _replicas(tmp_path)
    eng.ps["ollama-1"] = {"models": []}
    got = v.models_by_container(eng.client(), project.name, project.directory)
    assert set(got) == {f"verify-test-ollama-{i}-1" for i in range(4)}  # not the gateway
    assert v.models_text(got["verify-test-ollama-0-1"]) == "mixtral:8x7b 100% GPU"
    assert v.models_text(got["verify-test-ollama-1-1"]) == "mixtral:8x7b not loaded"


# --- the command ------------------------------------------------------------------------------


def test_verify_without_a_rendered_stack_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _render(tmp_path)
    (project.directory / ".composegen" / "render.json").unlink()
    from composegen.engine import docker as eng_mod

    monkeypatch.setattr(eng_mod, "connect", lambda *a, **k: Engine(project).client())
    with pytest.raises(SystemExit) as done:
        cli.main(["verify", "-C", str(project.directory), "--json"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("composegen: error: ") and "render.json: not found" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as done:
        cli.main(["verify", "-C", str(tmp_path / "nowhere")])
    assert done.value.code == 2


def test_verify_command_prints_and_exits_by_the_result(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    nvml_scenario: Install,
) -> None:
    import functools

    from composegen.engine import docker as eng_mod

    project, eng = _replicas(tmp_path)
    nvml_scenario("no_library")
    monkeypatch.setattr(eng_mod, "connect", lambda *a, **k: eng.client())
    monkeypatch.setattr(v, "verify", functools.partial(v.verify, transport=_gateway([])))
    args = ["verify", "-C", str(project.directory), "-p", project.name]
    capsys.readouterr()  # what render printed
    cli.main([*args, "--json"])  # returns: exit 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    eng.ps["ollama-2"] = _ps(("mixtral:8x7b", 29562699776, 0))
    with pytest.raises(SystemExit) as done:
        cli.main([*args, "--json"])
    assert done.value.code == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert [s["name"] for s in data["services"] if not s["ok"]] == ["ollama-2"]
    with pytest.raises(SystemExit) as done:
        cli.main(args)
    assert done.value.code == 1
    out = capsys.readouterr().out
    assert "NOT serving" in out and "ollama-2" in out and "gpu_fraction 0" in out
