"""`detect` against a real Docker engine: reachable, its version, and whether GPU requests work,
checked by actually starting a container with an NVIDIA device request."""

from __future__ import annotations

from typing import Any

from composegen.detect.host import probe_docker
from tests.e2e.conftest import TEST_LABELS


def test_engine_reported_and_gpu_request_claim_is_true(
    docker_client: Any, busybox_image: str
) -> None:
    import docker

    engine = probe_docker()
    assert engine.reachable
    assert engine.version == docker_client.version()["Version"]
    assert engine.api_version == docker_client.version()["ApiVersion"]
    assert "runc" in engine.runtimes

    request = docker.types.DeviceRequest(
        driver="nvidia", device_ids=["1", "3"], capabilities=[["gpu"]]
    )
    try:
        out = docker_client.containers.run(
            busybox_image,
            ["env"],
            device_requests=[request],
            labels=dict(TEST_LABELS),
            remove=True,
        )
        works = True
    except docker.errors.APIError as exc:
        works = False
        assert "could not select device driver" in str(exc)
        out = b""
    # detect's claim must match what the engine really does with a GPU request
    assert engine.gpu_requests == works
    if works:
        assert b"NVIDIA_VISIBLE_DEVICES=1,3" in out.splitlines()
