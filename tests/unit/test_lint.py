"""`composegen lint`: every rule on a small hand-written file (exact lines), every rendered stack
clean, real third-party compose files with the findings they really have, and the CLI."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from composegen import app
from composegen.errors import BadInputError
from composegen.lint import RULES, SHARED_LABEL, Finding, lint
from composegen.plan import Plan
from tests.stack_checks import PROFILES, inventory_file
from tests.unit.test_cli_detect import call, run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lint"
HUMAN = re.compile(
    r"^(?P<file>[^:]+):(?P<line>\d+): (?P<rule>CG\d{3}) (?P<level>error|warning): .+ \(fix: .+\)$"
)


def found(text: str) -> list[tuple[int, str, str, str | None]]:
    return [(f.line, f.rule, f.level, f.service) for f in lint(textwrap.dedent(text), "t.yml")]


def test_rule_table_is_complete() -> None:
    assert sorted(RULES) == [f"CG{n:03d}" for n in range(1, 13)]
    assert {RULES[r][0] for r in ("CG008", "CG009", "CG010", "CG012")} == {"warning"}


# --- one small bad file per rule ---

CG001 = """\
    services:
      llm:
        image: vllm/vllm-openai:v0.8.5
        restart: unless-stopped
        healthcheck:
          test: ["CMD", "curl", "-f", "http://localhost:8000/health"]
        deploy:
          resources:
            reservations:
              devices:
                - driver: nvidia
                  count: 2
                  device_ids: ["2", "3"]
                  capabilities: [gpu]
    """


def test_cg001_count_with_device_ids() -> None:
    assert found(CG001) == [(12, "CG001", "error", "llm")]


GPU = '    restart: unless-stopped\n    healthcheck: {test: ["CMD", "ollama", "list"]}\n'


def _svc(name: str, devices: str, extra: str = "", image: str = "ollama/ollama:0.12.6") -> str:
    """A GPU service with a healthcheck and a restart policy (so only the rule under test fires)."""
    return (
        f"  {name}:\n    image: {image}\n{GPU}{extra}"
        "    deploy:\n      resources:\n        reservations:\n          devices:\n"
        f"            - {{driver: nvidia, {devices}, capabilities: [gpu]}}\n"
    )


def test_cg002_same_gpu_on_two_services() -> None:
    text = "services:\n" + _svc("a", "device_ids: ['1']") + _svc("b", "device_ids: ['0', '1']")
    # a: lines 2-10, b: lines 11-19; b's device request is on line 19
    assert found(text) == [(19, "CG002", "error", "b")]
    uuids = "services:\n" + _svc("a", "device_ids: [GPU-aaa]") + _svc("b", "device_ids: [GPU-aaa]")
    assert found(uuids) == [(19, "CG002", "error", "b")]
    assert (
        found("services:\n" + _svc("a", "device_ids: ['0']") + _svc("b", "device_ids: ['1']")) == []
    )


def test_cg002_declared_sharing_and_profiles() -> None:
    label_map = f'    labels:\n      {SHARED_LABEL}: "true"\n'
    label_list = f'    labels: ["{SHARED_LABEL}=true"]\n'
    both = (
        "services:\n"
        + _svc("a", "device_ids: ['0']", label_map)
        + _svc("b", "device_ids: ['0']", label_list)
    )
    assert found(both) == []
    one = "services:\n" + _svc("a", "device_ids: ['0']", label_map) + _svc("b", "device_ids: ['0']")
    assert [r[1] for r in found(one)] == ["CG002"]
    apart = (
        "services:\n"
        + _svc("a", "device_ids: ['0']", "    profiles: [x]\n")
        + _svc("b", "device_ids: ['0']", "    profiles: [y]\n")
    )
    assert found(apart) == []  # never started together by default
    overlap = (
        "services:\n"
        + _svc("a", "device_ids: ['0']", "    profiles: [x]\n")
        + _svc("b", "device_ids: ['0']", "    profiles: [x, y]\n")
    )
    assert [r[1] for r in found(overlap)] == ["CG002"]


CG003 = """\
    services:
      ollama:
        image: ollama/ollama:0.12.6
        restart: unless-stopped
        healthcheck: {test: ["CMD", "ollama", "list"]}
        deploy:
          resources:
            reservations:
              devices:
                - driver: nvidia
                  count: 1
                  capabilities: [gpu]
      whisper:
        image: ghcr.io/speaches-ai/speaches:latest-cuda
        restart: unless-stopped
        healthcheck: {test: ["CMD", "curl", "-f", "http://localhost:8000/health"]}
        deploy:
          resources:
            reservations:
              devices:
                - driver: nvidia
                  count: all
                  capabilities: [gpu]
    """


def test_cg003_count_in_several_services() -> None:
    assert found(CG003) == [(11, "CG003", "error", "ollama"), (22, "CG003", "error", "whisper")]
    # count 1 is GPU 0: it collides with a service pinned to '0', not with one pinned to '3'
    pinned_0 = "services:\n" + _svc("a", "count: 1") + _svc("b", "device_ids: ['0']")
    assert found(pinned_0) == [(10, "CG003", "error", "a")]
    assert found("services:\n" + _svc("a", "count: 1") + _svc("b", "device_ids: ['3']")) == []
    assert found("services:\n" + _svc("a", "count: all")) == []  # alone it is fine
    # no count and no device_ids means all GPUs (Compose's default)
    default = "services:\n" + _svc("a", "options: {}") + _svc("b", "count: 1")
    assert [r[1] for r in found(default)] == ["CG003", "CG003"]


CG004 = """\
    services:
      llm:
        image: vllm/vllm-openai:v0.8.5
        restart: unless-stopped
        healthcheck: {test: ["CMD", "curl", "-f", "http://localhost:8000/health"]}
        environment:
          - HF_HOME=/models
          - CUDA_VISIBLE_DEVICES=2,3
        deploy:
          resources:
            reservations:
              devices:
                - driver: nvidia
                  device_ids: ["2", "3"]
                  capabilities: [gpu]
      ocr:
        image: vllm/vllm-openai:v0.8.5
        restart: unless-stopped
        healthcheck: {test: ["CMD", "curl", "-f", "http://localhost:8000/health"]}
        environment:
          CUDA_VISIBLE_DEVICES: "1"
        deploy:
          resources:
            reservations:
              devices:
                - driver: nvidia
                  device_ids: ["1"]
                  capabilities: [gpu]
    """


def test_cg004_cuda_visible_devices_with_host_indices() -> None:
    assert found(CG004) == [(8, "CG004", "error", "llm"), (21, "CG004", "error", "ocr")]
    inside = CG004.replace("CUDA_VISIBLE_DEVICES=2,3", "CUDA_VISIBLE_DEVICES=0,1").replace(
        'CUDA_VISIBLE_DEVICES: "1"', 'CUDA_VISIBLE_DEVICES: "0"'
    )
    assert found(inside) == []  # in-container indices are (redundant but) right


CG005 = """\
    services:
      ollama:
        image: ollama/ollama:0.12.6
        ports:
          - "11434:11434"
          - "0.0.0.0:11435:11434"
          - "127.0.0.1:11436:11434"
          - "[::]:11437:11434"
          - "[::1]:11438:11434"
          - "${OLLAMA_PORT:-11439}:11434"
          - "${OLLAMA_BIND:-127.0.0.1}:11440:11434"
          - target: 11434
            published: "11441"
          - target: 11434
            published: "11442"
            host_ip: 127.0.0.1
      vllm:
        image: vllm/vllm-openai:v0.8.5
        ports: ["8000", "8001:8000/tcp"]
      webui:
        image: ghcr.io/open-webui/open-webui:main
        ports: ["3000:8080"]
      old-webui:
        image: ghcr.io/ollama-webui/ollama-webui:main
        ports: ["8080:8080"]
    """


def test_cg005_published_on_every_interface() -> None:
    assert found(CG005) == [
        (5, "CG005", "error", "ollama"),
        (6, "CG005", "error", "ollama"),
        (8, "CG005", "error", "ollama"),
        (10, "CG005", "error", "ollama"),
        (12, "CG005", "error", "ollama"),
        (19, "CG005", "error", "vllm"),
        (19, "CG005", "error", "vllm"),
    ]


CG006 = """\
    services:
      agent:
        image: portainer/agent:2.21.0
        volumes:
          - /var/run/docker.sock:/var/run/docker.sock:ro
          - type: bind
            source: /run/docker.sock
            target: /var/run/docker.sock
          - data:/data
    """


def test_cg006_docker_socket() -> None:
    assert found(CG006) == [(5, "CG006", "error", "agent"), (6, "CG006", "error", "agent")]


CG007_9 = """\
    services:
      sglang:
        image: lmsysorg/sglang:v0.4.6
        privileged: true
        network_mode: host
        ipc: host
      quiet:
        image: busybox
        privileged: false
        network_mode: bridge
        ipc: private
    """


def test_cg007_cg008_cg009_host_access() -> None:
    assert found(CG007_9) == [
        (4, "CG007", "error", "sglang"),
        (5, "CG008", "warning", "sglang"),
        (6, "CG009", "warning", "sglang"),
    ]


CG010 = """\
    services:
      plain:
        image: ollama/ollama:0.12.6
        restart: always
        deploy:
          resources:
            reservations:
              devices:
                - capabilities: [gpu]
      disabled:
        image: ollama/ollama:0.12.6
        restart: always
        healthcheck:
          disable: true
        runtime: nvidia
      none:
        image: ollama/ollama:0.12.6
        restart: always
        healthcheck:
          test: ["NONE"]
        gpus: all
      cpu:
        image: ollama/ollama:0.12.6
        restart: always
    """


def test_cg010_gpu_service_without_healthcheck() -> None:
    # `gpus: all` and a capabilities-only request both mean every GPU: CG003 as well
    assert found(CG010) == [
        (2, "CG010", "warning", "plain"),
        (9, "CG003", "error", "plain"),
        (10, "CG010", "warning", "disabled"),
        (16, "CG010", "warning", "none"),
        (21, "CG003", "error", "none"),
    ]


CG011 = """\
    services:
      ollama:
        image: docker.io/ollama/ollama:0.12.6
        environment:
          OLLAMA_GPU_LAYERS: "35"
          OLLAMA_MAX_VRAM_USAGE: "0.8"
          OLLAMA_PHI3_GPU: "1"
          OLLAMA_MAX_VRAM: "6000000000"
          OLLAMA_USE_GPU: "true"
          OLLAMA_KEEP_ALIVE: 10m
          OLLAMA_CONTEXT_LENGTH: "8192"
      rocm:
        image: ollama/ollama:rocm
        environment: ["OLLAMA_NUM_GPU=99", "OLLAMA_FLASH_ATTENTION=1"]
      webui:
        image: ghcr.io/open-webui/open-webui:main
        environment: ["OLLAMA_BASE_URL=http://ollama:11434"]
    """


def test_cg011_ollama_variables() -> None:
    assert found(CG011) == [
        (5, "CG011", "error", "ollama"),
        (6, "CG011", "error", "ollama"),
        (7, "CG011", "error", "ollama"),
        (8, "CG011", "error", "ollama"),
        (9, "CG011", "warning", "ollama"),
        (14, "CG011", "warning", "rocm"),
    ]
    messages = {f.message for f in lint(textwrap.dedent(CG011))}
    assert any("num_gpu" in m for m in messages)


CG012 = """\
    services:
      a:
        image: ollama/ollama:0.12.6
        healthcheck: {test: ["CMD", "ollama", "list"]}
        deploy:
          resources:
            reservations:
              devices: [{driver: nvidia, device_ids: ["0"], capabilities: [gpu]}]
      b:
        image: ollama/ollama:0.12.6
        healthcheck: {test: ["CMD", "ollama", "list"]}
        deploy:
          restart_policy: {condition: on-failure}
          resources:
            reservations:
              devices: [{driver: nvidia, device_ids: ["1"], capabilities: [gpu]}]
    """


def test_cg012_gpu_service_without_restart() -> None:
    assert found(CG012) == [(2, "CG012", "warning", "a")]


ALL = """\
    x-gpu: &gpu
      deploy:
        resources:
          reservations:
            devices:
              - driver: nvidia
                count: 1
                device_ids: ["0"]
                capabilities: [gpu]
    services:
      leonardo:
        <<: *gpu
        image: ollama/ollama:latest
        ports: ["11434:11434"]
        environment:
          - OLLAMA_GPU_LAYERS=35
          - CUDA_VISIBLE_DEVICES=1
      jarvis:
        <<: *gpu
        image: ollama/ollama:latest
        privileged: true
        network_mode: host
        ipc: host
        volumes: ["/var/run/docker.sock:/var/run/docker.sock"]
      whisper:
        image: onerahmet/openai-whisper-asr-webservice:latest-gpu
        deploy:
          resources:
            reservations:
              devices: [{driver: nvidia, count: 1, capabilities: [gpu]}]
      embed:
        image: ghcr.io/huggingface/text-embeddings-inference:1.7
        deploy:
          resources:
            reservations:
              devices: [{driver: nvidia, count: 1, capabilities: [gpu]}]
    """


def test_all_problems_at_once() -> None:
    got = found(ALL)
    assert got == [
        (7, "CG001", "error", "jarvis"),  # the anchor's count line, once per service using it
        (7, "CG001", "error", "leonardo"),
        (8, "CG002", "error", "jarvis"),
        (11, "CG010", "warning", "leonardo"),
        (11, "CG012", "warning", "leonardo"),
        (14, "CG005", "error", "leonardo"),
        (16, "CG011", "error", "leonardo"),
        (17, "CG004", "error", "leonardo"),
        (18, "CG010", "warning", "jarvis"),
        (18, "CG012", "warning", "jarvis"),
        (21, "CG007", "error", "jarvis"),
        (22, "CG008", "warning", "jarvis"),
        (23, "CG009", "warning", "jarvis"),
        (24, "CG006", "error", "jarvis"),
        (25, "CG010", "warning", "whisper"),
        (25, "CG012", "warning", "whisper"),
        (30, "CG003", "error", "whisper"),
        (31, "CG010", "warning", "embed"),
        (31, "CG012", "warning", "embed"),
        (36, "CG003", "error", "embed"),
    ]
    assert {rule for _, rule, _, _ in got} == set(RULES)


def test_findings_carry_why_and_fix() -> None:
    for f in lint(textwrap.dedent(ALL), "all.yml"):
        m = HUMAN.match(f.human())
        assert m, f.human()
        assert (m["file"], int(m["line"]), m["rule"], m["level"]) == (
            "all.yml",
            f.line,
            f.rule,
            f.level,
        )
        assert f.message and f.fix and "{" not in f.message + f.fix


# --- bad input ---


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("services:\n  a: [\n", "t.yml:3: not valid YAML"),
        ("services: {a: 1}\n---\nservices: {}\n", "not valid YAML"),
        ("- a\n- b\n", "not a compose file"),
        ("", "not a compose file"),
        ("version: '3'\nvolumes: {}\n", "not a compose file"),
        ("services: [a, b]\n", "not a compose file"),
        ("services:\n  a: just-a-string\n", "t.yml:2: services.a is not a mapping"),
    ],
)
def test_bad_input(text: str, expect: str) -> None:
    with pytest.raises(BadInputError) as exc:
        lint(text, "t.yml")
    assert expect in exc.value.one_line()
    assert "\n" not in exc.value.one_line()


def test_empty_services_is_clean() -> None:
    assert lint("services:\n", "t.yml") == []


def test_recursive_aliases_and_odd_merges() -> None:
    assert lint("services:\n  a: &x\n    <<: *x\n") == []
    odd = (
        "services:\n  a: &x\n    <<: [*x, 1, {image: ollama/ollama}]\n    ports: ['11434:11434']\n"
    )
    assert [(f.line, f.rule) for f in lint(odd)] == [(4, "CG005")]


KEYS = st.sampled_from(
    [
        *("image", "ports", "environment", "labels", "deploy", "resources", "reservations"),
        *("devices", "count", "device_ids", "capabilities", "driver", "gpus", "runtime"),
        *("healthcheck", "test", "disable", "restart", "volumes", "source", "profiles"),
        *("privileged", "ipc", "network_mode", "host_ip", "published", "target"),
        *("CUDA_VISIBLE_DEVICES", "OLLAMA_X"),
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 4),
    st.sampled_from(
        [
            *("all", "nvidia", "gpu", "ollama/ollama", "vllm/vllm-openai", "11434:11434"),
            *("0", "1,2", "${A:-1}", "${A}", "[::]:1:2", "host", "true", "NONE", "a=b"),
            "/run/docker.sock:/s",
        ]
    ),
)
TREES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from("abc"), st.dictionaries(KEYS, TREES, max_size=6)))
def test_any_compose_shaped_yaml_gives_findings_or_bad_input(services: dict[str, Any]) -> None:
    text = yaml.safe_dump({"services": services})
    try:
        findings = lint(text)
    except BadInputError:
        return
    assert all(1 <= f.line <= text.count("\n") + 1 and f.rule in RULES for f in findings)


# --- every file composegen renders lints clean ---


def _sharing(plan: Plan) -> set[str]:
    return {
        i.name
        for i in plan.instances
        for o in plan.instances
        if o is not i and set(i.gpus) & set(o.gpus)
    }


def _declare_sharing(text: str, names: set[str]) -> str:
    """Until render.py labels instances that share a GPU by declaration, add the label here."""
    data = yaml.safe_load(text)
    for name in names:
        data["services"][name].setdefault("labels", {}).setdefault(SHARED_LABEL, "true")
    return str(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("inventory", ["reference", "single_8gb", "consumer_pair"])
@pytest.mark.parametrize("profile", PROFILES)
def test_rendered_stacks_lint_clean(profile: str, inventory: str, tmp_path: Path) -> None:
    if inventory == "reference":
        built = app.build(profile, reference=True)
    else:
        built = app.build(profile, inventory=inventory_file(tmp_path, inventory))
    files = {f.path: f.text for f in built.files}
    sharing = _sharing(built.plan)
    main = lint(files["docker-compose.yml"], "docker-compose.yml")
    # the only finding allowed is CG002 between instances the plan shares by declaration
    assert [f for f in main if not (f.rule == "CG002" and f.service in sharing)] == []
    assert lint(_declare_sharing(files["docker-compose.yml"], sharing)) == []
    assert lint(files["fallback/docker-compose.cpu.yml"], "fallback/docker-compose.cpu.yml") == []


def test_declared_sharing_exists_in_the_matrix() -> None:
    """The CG002 allowance above is exercised: rma-shared and ollama-pool share a GPU."""
    assert _sharing(app.build("rma-shared", reference=True).plan) == {"ollama", "doc-processor"}
    assert _sharing(app.build("ollama-pool", reference=True).plan) == {
        "ollama-2",
        "ollama-3",
        "ollama-4",
    }


# --- real third-party compose files ---

# file -> [(line, rule, level, service)]; the lines count the 4-line source header
REAL: dict[str, list[tuple[int, str, str, str]]] = {
    # n8n's starter kit: every Ollama variant publishes 11434 on all interfaces (from the
    # x-ollama anchor, line 36); the GPU variant has no healthcheck
    "n8n-io__self-hosted-ai-starter-kit__docker-compose.yml": [
        (36, "CG005", "error", "ollama-cpu"),
        (36, "CG005", "error", "ollama-gpu"),
        (36, "CG005", "error", "ollama-gpu-amd"),
        (117, "CG010", "warning", "ollama-gpu"),
    ],
    "valiantlynx__ollama-docker__docker-compose-ollama-gpu.yaml": [
        (23, "CG010", "warning", "ollama"),
        (32, "CG005", "error", "ollama"),
    ],
    # device_ids ['0'] in four services, but in four different profiles: no CG002
    "AbdBarho__stable-diffusion-webui-docker__docker-compose.yml": [
        (30, "CG010", "warning", "auto"),
        (30, "CG012", "warning", "auto"),
        (45, "CG010", "warning", "invoke"),
        (45, "CG012", "warning", "invoke"),
        (55, "CG010", "warning", "sygil"),
        (55, "CG012", "warning", "sygil"),
        (64, "CG010", "warning", "sygil-sl"),
        (64, "CG012", "warning", "sygil-sl"),
    ],
    "oobabooga__text-generation-webui__docker-nvidia-docker-compose.yml": [
        (7, "CG010", "warning", "text-generation-webui"),
    ],
    "sgl-project__sglang__docker-compose.yaml": [
        (14, "CG008", "warning", "sglang"),
        (15, "CG007", "error", "sglang"),
        (30, "CG009", "warning", "sglang"),
    ],
    "sachinsshetty__warehouse__backend-vllm-vllm-compose.yml": [
        (6, "CG010", "warning", "vllm"),
        (6, "CG012", "warning", "vllm"),
        (11, "CG005", "error", "vllm"),
    ],
}


def test_every_fixture_is_checked_and_names_its_source() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir()) == sorted(REAL)
    for name in REAL:
        head = (FIXTURES / name).read_text(encoding="utf-8").splitlines()[:4]
        assert head[0].startswith("# Third-party compose file")
        assert re.match(r"# Repository: https://github\.com/[\w.-]+/[\w.-]+$", head[1])
        assert re.match(r"# Path: \S+ at commit [0-9a-f]{40}$", head[2])
        assert head[3].startswith("# URL: https://github.com/")


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_compose_files(name: str) -> None:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    findings = lint(text, name)
    assert [(f.line, f.rule, f.level, f.service) for f in findings] == REAL[name]
    lines = text.splitlines()
    for f in findings:  # the line really is the offending key or value
        where = lines[f.line - 1]
        if f.rule in ("CG010", "CG012"):
            assert where.strip().startswith(f"{f.service}:"), where
        expected = {"CG005": ":", "CG007": "privileged", "CG008": "network_mode", "CG009": "ipc"}
        assert expected.get(f.rule, "") in where


# --- the command ---


def _write(tmp_path: Path, text: str, name: str = "docker-compose.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_cli_clean_file_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = app.build("rag-a100", reference=True)
    path = _write(tmp_path, next(f.text for f in built.files if f.path == "docker-compose.yml"))
    code, out, err = call(["lint", "-f", str(path)], capsys)
    assert (code, err) == (0, "")
    assert out == f"{path}: no problems found\n"


def test_cli_default_file_and_errors_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, CG003)
    monkeypatch.chdir(tmp_path)
    code, out, err = call(["lint"], capsys)
    lines = out.splitlines()
    assert code == 1 and err == ""
    matches = [HUMAN.match(line) for line in lines[:-1]]
    assert all(matches)
    assert [m["line"] for m in matches if m] == ["11", "22"]
    assert lines[0].startswith("docker-compose.yml:11: CG003 error: service 'ollama' reserves")
    assert lines[-1] == "docker-compose.yml: 2 error(s), 0 warning(s)"


def test_cli_warnings_only_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, CG012)
    code, out, _ = call(["lint", "--file", str(path)], capsys)
    assert code == 0
    assert out.splitlines()[-1].endswith(": 0 error(s), 1 warning(s)")


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, CG007_9, "stack.yml")
    code, out, _ = call(["lint", "-f", str(path), "--json"], capsys)
    assert code == 1
    data = json.loads(out)
    assert [list(d) for d in data] == [
        ["file", "line", "rule", "level", "service", "message", "fix"]
    ] * 3
    assert [(d["file"], d["line"], d["rule"], d["level"], d["service"]) for d in data] == [
        (str(path), 4, "CG007", "error", "sglang"),
        (str(path), 5, "CG008", "warning", "sglang"),
        (str(path), 6, "CG009", "warning", "sglang"),
    ]
    assert all(isinstance(d["message"], str) and isinstance(d["fix"], str) for d in data)
    code, out, _ = call(["lint", "-f", str(_write(tmp_path, "services: {}\n")), "--json"], capsys)
    assert (code, json.loads(out)) == (0, [])


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (None, "no such file"),
        ("services:\n  a: [\n", "not valid YAML"),
        ("- just\n- a list\n", "not a compose file"),
        (b"\xff\xfe\x00binary", "not a text file"),
    ],
)
def test_cli_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes | None, expect: str
) -> None:
    path = tmp_path / "compose.yml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    code, out, err = call(["lint", "-f", str(path)], capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"composegen: error: {path}") and expect in err


def test_cli_directory_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = call(["lint", "-f", str(tmp_path)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_subprocess_no_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, "services:\n  a: {image: x\n")
    proc = run_cli("lint", "-f", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = run_cli("lint", "--help")
    assert proc.returncode == 0 and "CG012" in proc.stdout


def test_finding_to_dict_round_trips() -> None:
    f = lint(textwrap.dedent(CG001))[0]
    assert Finding(**f.to_dict()) == f
