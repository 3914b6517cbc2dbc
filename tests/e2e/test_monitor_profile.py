"""The `monitor` Compose profile on the engine: `composegen up` leaves a profile's service alone
unless COMPOSE_PROFILES names it, keeps its running container afterwards, and a container of
the profile (on its own bridge network, with extra_hosts host-gateway, as the rendered
Prometheus) scrapes `watch --metrics` served on the host's docker0 address."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from composegen.watch.metrics import Metrics
from composegen.watch.types import GpuSignal, Snapshot, StackInfo
from tests.e2e.conftest import SESSION
from tests.e2e.test_up import RUN, _cleanup, cli, containers

pytestmark = pytest.mark.engine

COMPOSE = """
services:
  app:
    image: {image}
    command: ["sleep", "600"]
    networks: [backend]
    labels: {{io.composegen.test: "{session}"}}
  scraper:
    image: {image}
    profiles: [monitor]
    command: ["sleep", "600"]
    networks: [monitor]
    extra_hosts: ["host.docker.internal:host-gateway"]
    labels: {{io.composegen.test: "{session}"}}
networks:
  backend: {{internal: true}}
  monitor: {{}}
"""


def test_monitor_profile_on_the_engine(
    docker_client: Any, busybox_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = f"cg-e2e-monitor-{RUN}"
    _cleanup(docker_client, project)
    (tmp_path / "docker-compose.yml").write_text(
        COMPOSE.format(image=busybox_image, session=SESSION)
    )
    bridge = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    metrics = Metrics(project)
    metrics.observe(
        Snapshot(
            time.time(),
            StackInfo(project),
            gpus=(GpuSignal(0, "GPU-5b1a0b7e-2f0c-4a47-9f0e-8c0d1b2a3c4d", "NVIDIA A100-SXM4-80GB",
                            temperature_c=61, memory_used_mib=40960, memory_total_mib=81920),),
        )
    )  # fmt: skip
    server = metrics.serve(f"{bridge}:0")
    try:
        monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
        done = cli("up", "-C", str(tmp_path), "-p", project, "--wait-timeout", "60")
        assert done.returncode == 0, done.stderr
        assert set(containers(docker_client, project)) == {"app"}
        assert not docker_client.networks.list(names=[f"{project}_monitor"])

        monkeypatch.setenv("COMPOSE_PROFILES", "monitor")
        done = cli("up", "-C", str(tmp_path), "-p", project, "--wait-timeout", "60")
        assert done.returncode == 0, done.stderr
        found = containers(docker_client, project)
        assert set(found) == {"app", "scraper"}
        scraper = found["scraper"]
        assert scraper.attrs["HostConfig"]["ExtraHosts"] == ["host.docker.internal:host-gateway"]
        # host-gateway is the docker0 address, in the container's /etc/hosts (read here, not
        # resolved: the test image's static busybox cannot use glibc's resolver)
        hosts = scraper.exec_run(["cat", "/etc/hosts"]).output.decode()
        alias = [ln.split()[0] for ln in hosts.splitlines() if "host.docker.internal" in ln]
        assert alias == [bridge], hosts
        # a scrape as Prometheus makes it (busybox's static wget crashes here: nc and HTTP/1.0)
        get = "printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n'"
        out = scraper.exec_run(["sh", "-c", f"{get} | busybox nc -w 10 {alias[0]} {server.port}"])
        assert out.exit_code == 0, out.output.decode(errors="replace")
        text = out.output.decode()
        assert text.startswith("HTTP/1.0 200"), text[:200]
        assert 'composegen_gpu_temperature_celsius{gpu_index="0",gpu_uuid=' in text
        assert f'stack="{project}"' in text

        # without the profile again: its running container is part of the file, not an orphan
        monkeypatch.delenv("COMPOSE_PROFILES")
        done = cli("up", "-C", str(tmp_path), "-p", project, "--wait-timeout", "60")
        assert done.returncode == 0, done.stderr
        again = containers(docker_client, project)
        assert again["scraper"].id == scraper.id
    finally:
        server.close()
        _cleanup(docker_client, project)
