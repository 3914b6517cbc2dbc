#!/usr/bin/env python3
"""CPU that watch's probes cost while nothing happens (issue 12: below 2 % of one core at a 5 s
interval on a 24-container stack).

    .venv/bin/python scripts/bench/bench_watch_probes.py [--intervals 12] [--interval 5]
        [--every 6]

Starts ollama-replicas with the stand-in images (4 Ollama replicas on 4 GPUs and the gateway:
5 containers), adds 19 idle busybox containers with a healthcheck under the same Compose
project (24 in all), loads the models, then reads every probe (containers, gpus from an
--inventory file, gpu-access and residency every `--every` reads, gateway) once an interval
and prints this process's CPU time (all threads) over the wall time, in total and per probe.
Removes the stack after. Not part of the test pass/fail.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from composegen.engine.docker import connect  # noqa: E402
from composegen.watch.probes.containers import ContainersProbe  # noqa: E402
from composegen.watch.probes.gateway import GatewayLogProbe  # noqa: E402
from composegen.watch.probes.gpu_access import GpuAccessProbe  # noqa: E402
from composegen.watch.probes.gpus import GpusProbe  # noqa: E402
from composegen.watch.probes.residency import ResidencyProbe  # noqa: E402
from tests.e2e.conftest import ensure_busybox_image  # noqa: E402
from tests.e2e.images import ensure_images  # noqa: E402
from tests.e2e.test_up import _cleanup, render_stack, up  # noqa: E402
from tests.e2e.test_verify import _load  # noqa: E402


def extra_containers(client: Any, project: str, n: int) -> None:
    image = ensure_busybox_image(client)
    for i in range(n):
        client.containers.run(
            image,
            ["sleep", "3600"],
            name=f"{project}-idle-{i}-1",
            labels={
                "com.docker.compose.project": project,
                "com.docker.compose.service": f"idle-{i}",
            },
            healthcheck={"test": ["CMD", "sh", "-c", "exit 0"], "interval": 5_000_000_000},
            detach=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--intervals", type=int, default=12)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--every", type=int, default=6)
    args = ap.parse_args()
    client = connect()
    tags = ensure_images()
    with tempfile.TemporaryDirectory() as tmp:
        st = render_stack(
            "ollama-replicas", Path(tmp), tags, "services.ollama.env.STUB_MODELS=mixtral:8x7b"
        )
        _cleanup(client, st.project)
        try:
            done, _ = up(st)
            if done.returncode != 0:
                sys.exit(done.stdout + done.stderr)
            _load(st, client)
            extra_containers(client, st.project, 19)
            inv = next(Path(tmp).glob("inventory-*.json"))  # what the stack was planned on
            probes: list[Any] = [
                ContainersProbe(client, st.project),
                GpusProbe(str(inv)),
                GpuAccessProbe(client, st.project, every=args.every),
                ResidencyProbe(client, st.project, every=args.every),
                GatewayLogProbe(client, st.project),
            ]
            label = {"label": f"com.docker.compose.project={st.project}"}
            count = len(client.api.containers(filters=label))
            for p in probes:  # the first read inspects and caches everything: not idle
                p.read(time.time())
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # idle = every container up and healthy
                rows = client.api.containers(filters=label)
                if all("(healthy)" in r["Status"] for r in rows):
                    break
                time.sleep(1)
            for p in probes:
                p.read(time.time())
            spent = {p.name: 0.0 for p in probes}
            inspects0 = probes[0].inspects
            cpu0, wall0 = time.process_time(), time.monotonic()
            for _ in range(args.intervals):
                start = time.monotonic()
                for p in probes:
                    c0 = time.thread_time()
                    p.read(time.time())
                    spent[p.name] += time.thread_time() - c0
                time.sleep(max(0.0, args.interval - (time.monotonic() - start)))
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            inspects = probes[0].inspects - inspects0
            for p in probes:
                p.close()
        finally:
            _cleanup(client, st.project)
    print(f"containers: {count}, interval {args.interval:g} s, {args.intervals} intervals")
    print(f"gpu-access and residency every {args.every} reads")
    print(f"containers probe: {inspects} inspects in {args.intervals} reads")
    print(f"CPU {cpu:.3f} s over {wall:.1f} s wall: {100 * cpu / wall:.2f} % of one core")
    for name, s in spent.items():
        print(f"  {name:<11} {1000 * s / args.intervals:7.2f} ms CPU per read (its own thread)")


if __name__ == "__main__":
    main()
