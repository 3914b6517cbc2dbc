"""`composegen verify` on a real engine, with the Ollama and nvidia-smi stand-ins.

ollama-replicas on 4 GPUs and rma-shared come up, their models are loaded in every Ollama
server, and `verify --json` is ok. Then the stand-ins are told the truth changed, the way a
real server shows it: a replica whose model runs on the CPU (`/run/stub-gpu-fraction` 0: its
`/api/ps` says size_vram 0) or partly on the CPU (0.5), and a container whose `nvidia-smi -L`
fails as after `systemctl daemon-reload` (`/run/stub-nvml-lost`). Each makes verify exit 1 and
name the service. This engine has no NVML, so placement is reported as skipped, never passed.
"""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.test_up import Stack, cli, containers, up

LOAD = """
import json, os, sys, urllib.request
port = os.environ["OLLAMA_HOST"].rsplit(":", 1)[1]
for model in sys.argv[1:]:
    body = json.dumps({"model": model, "keep_alive": "24h"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/generate", data=body)
    with urllib.request.urlopen(req, timeout=30) as r:
        print(model, r.status, r.read().decode()[:200])
"""


def _load(st: Stack, client: Any) -> None:
    """Load each Ollama instance's models in its own server (an empty generate, as `up` does):
    a request through the gateway reaches one replica only."""
    from composegen.profile_checks import public_name

    for name, c in containers(client, st.project).items():
        if c.labels.get("io.composegen.service") == "gateway":
            continue
        svc = st.built.profile.service(c.labels["io.composegen.service"])
        if svc.kind != "ollama":
            continue
        inst = next(i for i in st.built.plan.instances if i.name == name)
        models = [public_name(svc, m) or m.name for m in inst.models]
        res = c.exec_run(["python3", "-c", LOAD, *models])
        assert res.exit_code == 0, res.output.decode()


def _verify(st: Stack) -> tuple[int, dict[str, Any], str]:
    done = cli("verify", "-C", str(st.directory), "-p", st.project, "--json", timeout=240)
    assert done.stdout.startswith("{"), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def _service(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["services"] if s["name"] == name)


def _checks(report: dict[str, Any], name: str, check: str) -> list[dict[str, Any]]:
    return [c for c in _service(report, name)["checks"] if c["check"] == check]


def _start(stack_factory: Any, docker_client: Any, profile: str) -> Stack:
    # the stand-in answers generate for models it has preinstalled (no hub on this engine)
    preinstalled = {
        "ollama-replicas": "mixtral:8x7b",
        "rma-shared": "llama3.2,llava:13b,nomic-embed-text",
    }
    sets = (f"services.ollama.env.STUB_MODELS={preinstalled[profile]}",)
    st: Stack = stack_factory(profile, *sets)
    done, _ = up(st)
    assert done.returncode == 0, done.stdout + done.stderr
    _load(st, docker_client)
    return st


def test_replicas_on_four_gpus_serve_and_verify_is_ok(
    docker_client: Any, stack_factory: Any
) -> None:
    st = _start(stack_factory, docker_client, "ollama-replicas")
    code, report, err = _verify(st)
    assert code == 0, json.dumps(report, indent=1) + err
    assert report["ok"] is True
    replicas = [f"ollama-{i}" for i in range(4)]
    assert {s["name"] for s in report["services"]} == {"gateway", *replicas}
    (gw,) = _checks(report, "gateway", "gateway")
    assert gw["ok"] is True and "POST /api/generate" in gw["detail"]
    uuids = [i.device_ids[0] for i in st.built.plan.instances]
    for name, uuid in zip(replicas, uuids, strict=True):
        assert _service(report, name)["models"] == [
            {"name": "mixtral:8x7b", "loaded": True, "gpu_fraction": 1.0}
        ]
        (access,) = _checks(report, name, "gpu-access")
        assert access["ok"] is True and access["detail"] == f"{name} sees exactly {uuid}"
        (placement,) = _checks(report, name, "placement")
        assert placement["ok"] is None and placement["status"] == "skipped"
    # status shows the same residency
    done = cli("status", "-C", str(st.directory), "-p", st.project, "--json")
    rows = {r["service"]: r for r in json.loads(done.stdout)["services"]}
    assert rows["ollama-2"]["models"] == [
        {"name": "mixtral:8x7b", "loaded": True, "gpu_fraction": 1.0}
    ]
    assert rows["gateway"]["models"] is None

    # a replica whose server runs its model on the CPU, then one partly on the CPU
    c = containers(docker_client, st.project)["ollama-2"]
    for fraction, where in (("0", "100% CPU"), ("0.5", "50%/50% CPU/GPU")):
        res = c.exec_run(["sh", "-c", f"echo {fraction} > /run/stub-gpu-fraction"])
        assert res.exit_code == 0
        code, report, _ = _verify(st)
        assert code == 1
        assert report["ok"] is False
        assert [s["name"] for s in report["services"] if not s["ok"]] == ["ollama-2"]
        (res_check,) = _checks(report, "ollama-2", "residency")
        assert res_check["ok"] is False
        assert res_check["detail"].startswith(f"ollama-2: not on its GPU: mixtral:8x7b {where}")
        assert f"gpu_fraction {float(fraction):g}" in res_check["detail"]
        assert _service(report, "ollama-2")["models"][0]["gpu_fraction"] == float(fraction)
        # the human table names the service and the fraction too
        text = cli("verify", "-C", str(st.directory), "-p", st.project)
        assert text.returncode == 1
        assert "ollama-2" in text.stdout and f"gpu_fraction {float(fraction):g}" in text.stdout


def test_rma_shared_serves_then_a_lost_gpu_fails(docker_client: Any, stack_factory: Any) -> None:
    st = _start(stack_factory, docker_client, "rma-shared")
    code, report, err = _verify(st)
    assert code == 0, json.dumps(report, indent=1) + err
    routes = [c["detail"] for c in _checks(report, "gateway", "gateway")]
    assert len(routes) == 2 and all(c["ok"] for c in _checks(report, "gateway", "gateway"))
    models = {m["name"]: m for m in _service(report, "ollama")["models"]}
    assert all(m["loaded"] and m["gpu_fraction"] == 1.0 for m in models.values()), models

    c = containers(docker_client, st.project)["ollama"]
    assert c.exec_run(["touch", "/run/stub-nvml-lost"]).exit_code == 0
    code, report, _ = _verify(st)
    assert code == 1
    (access,) = _checks(report, "ollama", "gpu-access")
    assert access["ok"] is False
    assert access["detail"].startswith("ollama: lost GPU access")
    assert f"docker rm -f {c.name}" in access["detail"]
    text = cli("verify", "-C", str(st.directory), "-p", st.project)
    assert text.returncode == 1 and "lost GPU access" in text.stdout


def test_up_fails_when_a_loaded_model_is_only_half_on_its_gpu(
    docker_client: Any, stack_factory: Any
) -> None:
    """`up` loads each Ollama model and then checks residency: a server that puts half of the
    model on the CPU (as with a context too large for the VRAM) fails `up`, naming it."""
    st: Stack = stack_factory(
        "rma-shared",
        "services.ollama.env.STUB_MODELS=llama3.2,llava:13b,nomic-embed-text",
        "services.ollama.env.STUB_GPU_FRACTION=0.5",
    )
    done, _ = up(st)
    assert done.returncode == 1, done.stdout + done.stderr
    err = done.stderr
    assert "models not where the plan put them: ollama: not on its GPU:" in err
    assert "gpu_fraction 0.5" in err
    assert "composegen verify -C" in err
    assert "Traceback" not in err
