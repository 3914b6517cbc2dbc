"""rag-a100 on a real engine (with the model-server stand-ins): the LLM keeps its public model
name after `fallback --cpu`, and a `fallback --gpu-failed` re-render, which re-plans from
render.json (no key there), keeps the gateway's API key (issue 10 item 7, issue 9 item 8)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx

from tests.e2e.test_up import cli, containers, up

KEY = "7d2a9f0c4e6b8a1d3f5c7e9b0a2c4e6f8a1b3d5f7c9e0a2b4d6f8a0c2e4b6d8f"  # 64 characters
PUBLIC = "Qwen/Qwen2.5-7B-Instruct"


def _models(port: int, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/llm/v1/models", headers=headers, timeout=10)


def _fallback(st: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("fallback", "-C", str(st.directory), "-p", st.project, *args, timeout=400)


def test_public_model_name_and_key_survive_fallbacks(
    docker_client: Any, stack_factory: Any
) -> None:
    st = stack_factory("rag-a100", f"gateway.api_key={KEY}")
    assert KEY not in (st.directory / ".composegen" / "render.json").read_text()
    done, _ = up(st)
    assert done.returncode == 0, done.stderr
    auth = {"Authorization": f"Bearer {KEY}"}
    assert _models(st.port, {}).status_code == 401
    r = _models(st.port, auth)
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["id"] == PUBLIC

    # the LLM's first GPU fails: re-planned from render.json, the key read back from .env
    moved = _fallback(st, "--gpu-failed", "2")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert KEY not in (st.directory / ".composegen" / "render.json").read_text()
    assert _models(st.port, {}).status_code == 401
    r = _models(st.port, auth)
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["id"] == PUBLIC

    # to CPU: a smaller model answers, under the same name
    cpu = _fallback(st, "--cpu")
    assert cpu.returncode == 0, cpu.stdout + cpu.stderr
    r = _models(st.port, auth)
    assert r.status_code == 200, r.text
    # The stand-in reports whichever of --model/--served-model-name comes first in its
    # arguments (vLLM: --served-model-name wins), so ask the engine what the CPU container runs.
    cmd = containers(docker_client, st.project)["llm-cpu"].attrs["Config"]["Cmd"]
    assert cmd[cmd.index("--model") + 1] == "Qwen/Qwen2.5-0.5B-Instruct", cmd
    i = cmd.index("--served-model-name")
    assert cmd[i + 1 : i + 3] == [PUBLIC, "Qwen/Qwen2.5-0.5B-Instruct"], cmd
    status = json.loads(cli("status", "-C", str(st.directory), "-p", st.project, "--json").stdout)
    assert status["mode"]["mode"] == "cpu-fallback"
