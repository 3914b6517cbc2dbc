"""watch's probes on a real engine: ollama-replicas (four Ollama stand-ins, one per GPU, behind
the nginx gateway) rendered with the local stand-in images and started with `composegen up`.

- containers: every container running and healthy, with its planned GPU;
- gateway: requests sent through the published gateway come back as RequestSignals with the
  upstream group as route and, for each one, the replica that served it (the stand-in answers
  with its hostname: the test maps it to the container itself, not through the probe);
- gpu-access: `touch /run/stub-nvml-lost` in one replica makes its `nvidia-smi -L` fail, and
  only that replica reads ok False;
- residency: the Ollama stand-in's /api/ps, loaded in full, then half (`/run/stub-gpu-fraction`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from composegen.engine.docker import connect
from composegen.watch.probes.containers import ContainersProbe
from composegen.watch.probes.gateway import GatewayLogProbe
from composegen.watch.probes.gpu_access import GpuAccessProbe
from composegen.watch.probes.residency import ResidencyProbe
from composegen.watch.types import (
    ContainerSignal,
    GpuAccessSignal,
    ProbeError,
    RequestSignal,
    ResidencySignal,
)
from tests.e2e.test_up import Stack, containers
from tests.e2e.test_verify import _start

REPLICAS = [f"ollama-{i}" for i in range(4)]


def until(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.1)


def of(kind: type[Any], signals: Any) -> list[Any]:
    return [s for s in signals if isinstance(s, kind)]


def test_probes_on_ollama_replicas(docker_client: Any, stack_factory: Any) -> None:
    st: Stack = _start(stack_factory, docker_client, "ollama-replicas")
    client = connect()
    found = containers(docker_client, st.project)
    by_host = {c.attrs["Config"]["Hostname"]: svc for svc, c in found.items()}
    plan = {i.name: i for i in st.built.plan.instances}

    # --- containers ---------------------------------------------------------------------------
    probe = ContainersProbe(client, st.project)
    try:
        got: dict[str, ContainerSignal] = {}

        def healthy() -> bool:
            # up waits for its own readiness; Docker's health turns healthy at the next check
            # (the event stream tells the probe, which inspects only then)
            got.update({s.service: s for s in of(ContainerSignal, probe.read(time.time()))})
            return all(s.health == "healthy" for s in got.values())

        until(healthy, 120, "every container healthy")
        assert set(got) == {*REPLICAS, "gateway"}
        inspects = probe.inspects
        probe.read(time.time())
        assert probe.inspects == inspects  # nothing changed: nothing inspected
        for name in REPLICAS:
            assert (got[name].state, got[name].health) == ("running", "healthy"), got[name]
            assert got[name].gpus == plan[name].device_ids
            assert got[name].restart_count == 0 and got[name].oom_killed is False
        assert got["gateway"].gpus == ()
    finally:
        probe.close()
    assert not probe.following  # close() ends the blocked read of the event stream

    # --- the gateway's access log -------------------------------------------------------------
    group = next(g for g, insts in st.built.plan.groups.items() if insts[0].service == "ollama")
    route = st.built.profile.service("ollama").route
    assert route is not None
    gateway = GatewayLogProbe(client, st.project)
    try:
        gateway.read(time.time())
        until(lambda: gateway.attached is not None, 30, "attach to the gateway's log stream")
        served = []
        body = {"model": "mixtral:8x7b", "prompt": "hi", "stream": False}
        with httpx.Client(timeout=30) as http:
            for _ in range(12):
                r = http.post(f"http://127.0.0.1:{st.port}{route}api/generate", json=body)
                assert r.status_code == 200, r.text
                served.append(by_host[r.json()["served_by"]])
        requests: list[RequestSignal] = []

        def arrived() -> bool:
            got = gateway.read(time.time())
            assert not of(ProbeError, got), got
            requests.extend(of(RequestSignal, got))
            return len(requests) >= len(served)

        until(arrived, 30, "12 requests in the gateway's log")
        assert len(requests) == len(served)
        assert {r.route for r in requests} == {group}
        assert [r.service for r in requests] == served
        assert {r.status for r in requests} == {200} and {r.upstream_status for r in requests} == {
            "200"
        }
        ips = {
            svc: {n["IPAddress"] for n in c.attrs["NetworkSettings"]["Networks"].values()}
            for svc, c in found.items()
        }
        for r, svc in zip(requests, served, strict=True):
            assert r.upstream is not None and r.upstream.rsplit(":", 1)[0] in ips[svc], r
        assert all(0 <= r.request_time_s < 30 for r in requests)

        # the gateway restarts: its log stream ends, the probe attaches again and reads on
        # from its last line (none of the 12 again)
        attaches = gateway.attaches
        found["gateway"].restart(timeout=5)
        until(lambda: gateway.attaches > attaches, 60, "attach again after the restart")
        url = f"http://127.0.0.1:{st.port}{route}api/generate"

        def answered() -> bool:
            try:
                return httpx.post(url, json=body, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        until(answered, 60, "the gateway answering after its restart")
        after: list[RequestSignal] = []

        def one_more() -> bool:
            after.extend(of(RequestSignal, gateway.read(time.time())))
            return len(after) >= 1

        until(one_more, 30, "the request after the restart in the log")
        # (a replayed old line would come before the new one: the stream is in order)
        assert all(r.time > requests[-1].time for r in after), after
        assert len(after) >= 1 and all(r.route == group for r in after)
    finally:
        gateway.close()
    assert gateway._thread is not None and not gateway._thread.is_alive()

    # --- GPU access inside each replica -------------------------------------------------------
    access = GpuAccessProbe(client, st.project)
    got_access = {s.service: s for s in of(GpuAccessSignal, access.read(time.time()))}
    assert set(got_access) == set(REPLICAS)
    assert all(s.ok is True for s in got_access.values()), got_access
    assert found["ollama-2"].exec_run(["touch", "/run/stub-nvml-lost"]).exit_code == 0
    got_access = {s.service: s for s in of(GpuAccessSignal, access.read(time.time()))}
    assert got_access["ollama-2"].ok is False
    assert got_access["ollama-2"].detail == "Failed to initialize NVML: Unknown Error"
    assert [n for n, s in sorted(got_access.items()) if s.ok is not True] == ["ollama-2"]

    # --- residency ----------------------------------------------------------------------------
    residency = ResidencyProbe(client, st.project)
    res = of(ResidencySignal, residency.read(time.time()))
    assert sorted((s.service, s.model, s.gpu_fraction) for s in res) == [
        (n, "mixtral:8x7b", 1.0) for n in REPLICAS
    ]
    assert all(s.expires_at for s in res)
    assert (
        found["ollama-1"].exec_run(["sh", "-c", "echo 0.5 > /run/stub-gpu-fraction"]).exit_code == 0
    )
    res = {s.service: s for s in of(ResidencySignal, residency.read(time.time()))}
    assert [res[n].gpu_fraction for n in REPLICAS] == [1.0, 0.5, 1.0, 1.0]


def test_containers_probe_sees_oom_kills_and_restarts(
    docker_client: Any, busybox_image: str
) -> None:
    """Real kernel OOM kill and a real restart policy, seen through the event stream."""
    from tests.e2e.test_up import _cleanup

    project = f"cg-e2e-watch-oom-{int(time.time())}"
    labels = {"com.docker.compose.project": project}
    _cleanup(docker_client, project)
    try:
        hog = docker_client.containers.run(
            busybox_image,
            ["sh", "-c", "sleep 2; x=$(cat /dev/urandom)"],  # grows until the kernel kills it
            name=f"{project}-hog-1",
            labels={**labels, "com.docker.compose.service": "hog"},
            mem_limit="16m",
            memswap_limit="16m",
            detach=True,
        )
        flaky = docker_client.containers.run(
            busybox_image,
            ["sh", "-c", "sleep 1; exit 3"],
            name=f"{project}-flaky-1",
            labels={**labels, "com.docker.compose.service": "flaky"},
            restart_policy={"Name": "on-failure", "MaximumRetryCount": 2},
            detach=True,
        )
        probe = ContainersProbe(connect(), project)
        got: dict[str, ContainerSignal] = {}
        try:

            def settled() -> bool:
                got.update({s.service: s for s in of(ContainerSignal, probe.read(time.time()))})
                return (
                    len(got) == 2
                    and got["hog"].state == "exited"
                    and got["flaky"].state == "exited"
                    and got["flaky"].restart_count == 2
                )

            until(settled, 90, "the hog OOM-killed and flaky out of retries")
            assert probe.following  # the changes came through the event stream
        finally:
            probe.close()
        assert got["hog"].oom_killed is True and got["hog"].exit_code == 137, got["hog"]
        assert got["hog"].container_id == hog.id
        assert got["flaky"].oom_killed is False and got["flaky"].exit_code == 3, got["flaky"]
        assert got["flaky"].container_id == flaky.id
    finally:
        _cleanup(docker_client, project)
