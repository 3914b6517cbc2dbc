"""Model names (issue 10, items 7 and 8; issue 9, item 6): one public name per model across a
service's GPU and CPU variants, STACK.md saying which real model answers in each mode, its
shell commands quoting every name, and what a profile records of a model checked at load."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from composegen import app, profiles
from tests.unit.test_cli_detect import run_cli

GPU_LLM = "Qwen/Qwen2.5-7B-Instruct"
CPU_LLM = "Qwen/Qwen2.5-0.5B-Instruct"


def _files(name: str, *sets: str, values: str | None = None) -> dict[str, str]:
    built = app.build(
        name,
        reference=True,
        overrides=profiles.Overrides(sets=sets, values_files=(values,) if values else ()),
    )
    return {f.path: f.text for f in built.files}


def _served(command: list[str]) -> list[str]:
    """The names after --served-model-name, up to the next option."""
    i = command.index("--served-model-name")
    out = []
    for tok in command[i + 1 :]:
        if tok.startswith("--"):
            break
        out.append(tok)
    return out


def test_vllm_cpu_variant_answers_to_the_gpu_name() -> None:
    files = _files("rag-a100")
    gpu = yaml.safe_load(files["docker-compose.yml"])["services"]["llm"]["command"]
    cpu = yaml.safe_load(files["fallback/docker-compose.cpu.yml"])["services"]["llm-cpu"]
    assert gpu[gpu.index("--model") + 1] == GPU_LLM
    assert _served(gpu) == [GPU_LLM]
    assert cpu["command"][cpu["command"].index("--model") + 1] == CPU_LLM
    # the public name first (what responses report), the real name too
    assert _served(cpu["command"]) == [GPU_LLM, CPU_LLM]


@pytest.mark.parametrize("name", ["rag-a100", "ollama-pool", "ollama-replicas", "rma-shared"])
def test_every_vllm_instance_serves_its_public_name(name: str) -> None:
    prof = profiles.load(name)
    files = _files(name)
    seen = 0
    for path in ("docker-compose.yml", "fallback/docker-compose.cpu.yml"):
        for sname, block in yaml.safe_load(files[path])["services"].items():
            service = block.get("labels", {}).get("io.composegen.service")
            if service in (None, "gateway") or prof.service(service).kind != "vllm":
                continue
            public = prof.service(service).models[0].name
            assert _served(block["command"])[0] == public, (path, sname, block["command"])
            seen += 1
    assert seen == (3 if name == "rag-a100" else 0)  # llm, ocr, llm-cpu


def test_ollama_cpu_variant_answers_through_an_alias_in_its_own_store() -> None:
    files = _files("zenglow-personas")
    cpu = yaml.safe_load(files["fallback/docker-compose.cpu.yml"])["services"]["leonardo-cpu"]
    store = cpu["environment"]["OLLAMA_MODELS"]
    assert store == "/models/composegen-cpu"
    assert any(v.split(":")[1] == "/models" for v in cpu["volumes"])  # inside the volume
    gpu = yaml.safe_load(files["docker-compose.yml"])["services"]["leonardo"]
    assert gpu["environment"]["OLLAMA_MODELS"] == "/models"  # the GPU store is untouched
    calls = _run_fill(files["STACK.md"], "leonardo", Path("/nonexistent"))
    assert calls[1]["env"] == "OLLAMA_MODELS=/models/composegen-cpu"
    assert calls[1]["ollama"] == [
        ["serve"],
        ["pull", "mistral:7b-instruct-q4_0"],
        ["cp", "mistral:7b-instruct-q4_0", "mistral:7b-instruct-q5_K_M"],
    ]


def test_ollama_gpu_alternative_answers_to_the_public_names(tmp_path: Path) -> None:
    """rma-shared on one 8 GB card runs its second alternative (llama3.2:1b, llava:7b): the
    GPU instance answers to llama3.2 and llava:13b through aliases in a store of its own."""
    from tests.stack_checks import scenario_inventory

    inv = tmp_path / "inv.json"
    inv.write_text(scenario_inventory("single_8gb").to_json(), encoding="utf-8")
    built = app.build("rma-shared", inventory=str(inv))
    ollama = next(i for i in built.plan.instances if i.service == "ollama")
    assert ollama.device == "gpu"
    assert [m.name for m in ollama.models] == ["llama3.2:1b", "llava:7b", "nomic-embed-text"]
    files = {f.path: f.text for f in built.files}
    env = yaml.safe_load(files["docker-compose.yml"])["services"]["ollama"]["environment"]
    assert env["OLLAMA_MODELS"] == "/root/.ollama/models/composegen-alt2"
    calls = _run_fill(files["STACK.md"], "ollama", tmp_path)
    alt = next(c for c in calls if c["env"] == "OLLAMA_MODELS=/root/.ollama/models/composegen-alt2")
    assert ["cp", "llama3.2:1b", "llama3.2"] in alt["ollama"]
    assert ["cp", "llava:7b", "llava:13b"] in alt["ollama"]
    # the models the plan chose are pulled, not the profile's first choice: llava:13b runs
    # nowhere on this card (issue 11 item 1)
    assert not any(c == ["pull", "llava:13b"] for call in calls for c in call["ollama"])
    assert all(call["env"].startswith("OLLAMA_MODELS=/root/.ollama/models/") for call in calls)
    assert "| ollama | `llava:13b` | llava:7b | - (not in the CPU variant) |" in files["STACK.md"]


def test_stack_md_names_the_real_model_in_each_mode() -> None:
    text = _files("rag-a100")["STACK.md"]
    assert f"| llm | `{GPU_LLM}` | {GPU_LLM} | {CPU_LLM} |" in text
    assert "| ocr | `rednote-hilab/dots.ocr` | rednote-hilab/dots.ocr | - (no CPU variant) |" in (
        text
    )
    text = _files("ollama-replicas")["STACK.md"]
    assert "| ollama | `mixtral:8x7b` | mixtral:8x7b | mistral:7b-instruct-q4_0 |" in text


# --- the shell commands of STACK.md, run with stand-ins for docker, ollama, huggingface-cli -----


def _fill_lines(stack_md: str, service: str) -> list[str]:
    lines = stack_md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"- {service} ("))
    out = []
    for ln in lines[start + 1 :]:
        if ln.startswith("- ") or not ln.strip():
            break
        if ln.startswith("  `") and ln.endswith("`"):
            out.append(ln[3:-1])
    return out


STANDINS = r"""
docker() {
    printf '%s\0' "$@" > "$OUT/docker.$N"
}
"""


def _run_fill(stack_md: str, service: str, work: Path) -> list[dict[str, Any]]:
    """Run each command of the service's fill instructions with `docker` replaced by a
    function that records its arguments, then run the `sh -c` script it was given with
    `ollama` and `sleep` recording theirs: what a shell really makes of the quoting."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    work = work if work.is_dir() else Path(_tmp())
    calls = []
    for n, line in enumerate(_fill_lines(stack_md, service)):
        done = subprocess.run(
            ["bash", "-c", STANDINS + line],
            cwd=work,
            env={"OUT": str(work), "N": str(n), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        args = (work / f"docker.{n}").read_text().split("\0")[:-1]
        assert args[:2] == ["run", "--rm"], args
        script = args[args.index("-c") + 1]
        env = args[args.index("-e") + 1] if "-e" in args else None
        record = (
            'ollama() { [ "$1" = serve ] && return 0; printf "%s\\0" "$@" >> "$OUT/ollama"; '
            "printf '\\n' >> \"$OUT/ollama\"; }; sleep() { :; }; "
        )
        (work / "ollama").write_text("")
        done = subprocess.run(
            ["bash", "-c", record + script],
            cwd=work,
            env={"OUT": str(work), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        ollama = [["serve"]] + [
            ln.split("\0")[:-1] for ln in (work / "ollama").read_text().splitlines()
        ]
        calls.append({"args": args, "env": env, "ollama": ollama})
    return calls


def _tmp() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="composegen-fill-")


def test_model_names_are_quoted_in_the_ollama_commands(tmp_path: Path) -> None:
    evil = "evil';touch${IFS}PWNED;'x"
    values = tmp_path / "v.yaml"
    values.write_text(
        yaml.safe_dump({"services": {"jarvis": {"models": [{"name": evil, "vram_mib": 2500}]}}}),
        encoding="utf-8",
    )
    text = _files("zenglow-personas", values=str(values))["STACK.md"]
    work = tmp_path / "work"
    work.mkdir()
    calls = _run_fill(text, "jarvis", work)
    assert not (work / "PWNED").exists(), "a model name ran a command"
    assert calls[0]["ollama"] == [["serve"], ["pull", evil]], calls
    assert calls[0]["args"][-3:-1] == ["ollama/ollama:0.12.6", "-c"], calls[0]["args"]


def test_model_names_are_quoted_in_the_download_commands(tmp_path: Path) -> None:
    evil = "org/model $(touch PWNED) `touch PWNED2` ; touch PWNED3"
    values = tmp_path / "v.yaml"
    values.write_text(
        yaml.safe_dump(
            {"services": {"embeddings": {"models": [{"name": evil, "vram_mib": 20480}]}}}
        ),
        encoding="utf-8",
    )
    text = _files("rag-a100", values=str(values))["STACK.md"]
    lines = _fill_lines(text, "embeddings")
    assert lines, text
    work = tmp_path / "work"
    work.mkdir()
    for line in lines:
        done = subprocess.run(
            ["bash", "-c", 'huggingface-cli() { printf "%s\\0" "$@" > "$OUT/hf"; }; ' + line],
            cwd=work,
            env={"OUT": str(work), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert (work / "hf").read_text().split("\0")[:-1] == ["download", evil]
    assert not any((work / n).exists() for n in ("PWNED", "PWNED2", "PWNED3"))
    assert shlex.split(lines[0]) == ["huggingface-cli", "download", evil]


# --- model facts ------------------------------------------------------------------------------


def test_shipped_vllm_models_record_what_vllm_checks() -> None:
    """Each model a shipped vLLM service can run records its architecture and servers, and a
    context length wherever the command sets --max-model-len."""
    for name in profiles.available():
        prof = profiles.load(name)
        for svc in prof.services:
            if svc.server_kind != "vllm":
                continue
            variants = [(svc.command, svc.models)]
            if svc.cpu is not None:
                variants.append((svc.cpu.command or svc.command, svc.cpu.models or svc.models))
            for command, models in variants:
                m = models[0]
                assert m.servers and "vllm" in m.servers, (name, svc.name, m)
                assert m.architecture, (name, svc.name, m)
                if "--max-model-len" in command:
                    assert m.context_length, (name, svc.name, m)


def test_rag_a100_llm_fits_its_context() -> None:
    prof = profiles.load("rag-a100")
    llm = prof.service("llm")
    assert llm.models[0].name == GPU_LLM
    assert llm.models[0].context_length == 32768
    assert int(prof.tunables["VLLM_MAX_MODEL_LEN"]) <= 32768
    assert llm.cpu is not None and llm.cpu.models[0].name == CPU_LLM


DIALOGPT = {
    "name": "microsoft/DialoGPT-medium",
    "vram_mib": 122880,
    "context_length": 1024,
    "architecture": "GPT2LMHeadModel",
    "servers": ["vllm"],
}


@pytest.mark.parametrize(
    ("doc", "sets", "expect"),
    [
        (  # the pairing rag-a100 shipped with: vLLM refuses --max-model-len 2048
            {"services": {"llm": {"models": [DIALOGPT]}}, "tunables": {"VLLM_MAX_MODEL_LEN": 2048}},
            (),
            "services.llm.command: --max-model-len 2048 is more than the 1024 positions of "
            "microsoft/DialoGPT-medium",
        ),
        (
            {"services": {"ocr": {"command": ["--model", "{model}", "--port", "{port}"]}}},
            (),
            "services.ocr.command: rednote-hilab/dots.ocr needs --trust-remote-code",
        ),
        (
            {},
            ("services.embeddings.server=vllm",),
            "services.embeddings.models[0] (sentence-transformers/all-MiniLM-L6-v2): the model "
            "(BertModel) is served by tei, but the service runs vllm",
        ),
        (
            {
                "services": {
                    "llm": {"cpu": {"command": ["--model", "{model}", "--max-model-len", "65536"]}}
                }
            },
            (),
            "services.llm.cpu.command: --max-model-len 65536 is more than the 32768 positions",
        ),
    ],
    ids=["dialogpt-2048", "no-trust-remote-code", "server-mismatch", "cpu-too-long"],
)
def test_a_wrong_pairing_fails_at_render(
    tmp_path: Path, doc: dict[str, Any], sets: tuple[str, ...], expect: str
) -> None:
    args = ["render", "--profile", "rag-a100", "--reference", "-o", str(tmp_path / "out")]
    if doc:
        values = tmp_path / "v.yaml"
        values.write_text(yaml.safe_dump(doc), encoding="utf-8")
        args += ["--values", str(values)]
    for s in sets:
        args += ["--set", s]
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("composegen: error: profiles/rag-a100.yaml: "), proc.stderr
    assert proc.stderr.count("\n") == 1 and expect in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_stand_in_model_that_matches_no_public_name_is_refused(tmp_path: Path) -> None:
    values = tmp_path / "v.yaml"
    values.write_text(
        yaml.safe_dump(
            {"services": {"ollama": {"cpu": {"models": [{"name": "qwen2.5:0.5b", "vram_mib": 0}]}}}}
        ),
        encoding="utf-8",
    )
    proc = run_cli("plan", "--profile", "rma-shared", "--reference", "--values", str(values))
    assert proc.returncode == 2, proc.stderr
    assert "services.ollama.cpu.models[0] (qwen2.5:0.5b)" in proc.stderr, proc.stderr
    assert "public_name" in proc.stderr
    doc = {
        "services": {
            "ollama": {
                "cpu": {
                    "models": [{"name": "qwen2.5:0.5b", "vram_mib": 0, "public_name": "llama3.2"}]
                }
            }
        }
    }
    values.write_text(yaml.safe_dump(doc), encoding="utf-8")
    built = app.build(
        "rma-shared", reference=True, overrides=profiles.Overrides(values_files=(str(values),))
    )
    text = {f.path: f.text for f in built.files}["STACK.md"]
    assert "| ollama | `llama3.2` | llama3.2 | qwen2.5:0.5b |" in text, text
