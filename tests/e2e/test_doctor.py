"""`composegen doctor` and `up`'s fast checks on this engine (the NVIDIA hook stand-in: GPU
device requests work, no real GPU), on a profile rendered with the local stand-in images."""

from __future__ import annotations

import json
import socket
from typing import Any

from tests.e2e.test_up import cli, containers, up

DOCTOR_LABEL = "io.composegen.doctor"


def doctor(st: Any, *extra: str) -> tuple[int, dict[str, Any]]:
    done = cli("doctor", "-C", str(st.directory), "-p", st.project, "--json", *extra, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_doctor_passes_and_removes_its_gpu_containers(
    docker_client: Any, stack_factory: Any
) -> None:
    st = stack_factory("zenglow-personas")
    code, doc = doctor(st)
    assert code == 0, doc
    by = {c["name"]: c for c in doc["checks"]}
    assert by["engine"]["status"] == "ok" and "API 1.41" in by["engine"]["detail"]
    assert by["nvidia-runtime"]["status"] == "ok"
    assert by["ports"]["status"] == "ok"
    assert by["disk"]["status"] == "ok"
    # one throwaway container per planned GPU, with the stack's own image, through the hook
    # stand-in: its nvidia-smi lists exactly the requested UUID
    planned = [i.device_ids[0] for i in st.built.plan.instances if i.device == "gpu"]
    probes = [c for c in doc["checks"] if c["name"] == "gpu-request"]
    assert len(probes) == len(planned) == 2
    for check, uuid in zip(probes, planned, strict=True):
        assert check["status"] == "ok", check
        assert check["detail"].startswith(f"GPU {uuid} (")
        assert "nvidia-smi -L lists it" in check["detail"]
    left = docker_client.containers.list(all=True, filters={"label": DOCTOR_LABEL})
    assert [c.name for c in left if st.project in c.name] == []
    # the plan's GPUs against the inventory the stack was rendered from
    code, doc = doctor(st, "--inventory", str(st.directory / ".composegen" / "render.json"))
    assert code == 0
    drift = next(c for c in doc["checks"] if c["name"] == "drift")
    assert drift == {
        "name": "drift",
        "status": "ok",
        "detail": "the plan's 2 GPU(s) are present and healthy",
        "fix": None,
    }


def test_taken_port_fails_doctor_and_up_unless_no_doctor(
    docker_client: Any, stack_factory: Any
) -> None:
    st = stack_factory("zenglow-personas")
    with socket.socket() as s:
        s.bind(("127.0.0.1", st.port))
        s.listen()
        code, doc = doctor(st, "--fast")
        assert code == 1
        ports = next(c for c in doc["checks"] if c["name"] == "ports")
        assert ports["status"] == "fail"
        assert f"127.0.0.1:{st.port}/tcp is taken (Address already in use)" in ports["detail"]

        done, _ = up(st)
        assert done.returncode == 1
        assert "composegen: error: doctor: 1 check(s) failed: ports:" in done.stderr
        assert containers(docker_client, st.project) == {}  # nothing started

        # --no-doctor goes on: the engine itself then meets the taken port
        done, _ = up(st, "--no-doctor", "--wait-timeout", "60")
        assert done.returncode == 1
        assert "doctor" not in done.stderr
        assert "address already in use" in done.stdout + done.stderr, done.stderr
        assert containers(docker_client, st.project) != {}
