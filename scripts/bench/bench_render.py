#!/usr/bin/env python3
"""Render benchmarks (issue 3), each against its baseline in the same run.

    .venv/bin/python scripts/bench/bench_render.py [--runs N]

1. Render latency: `composegen render --profile rag-a100 --reference -o DIR` against
   `docker-compose -f DIR/docker-compose.yml config -q` (Compose v1 reading the same file).
   Target: render <= 0.5x of it.
2. Planner scale: synthetic inventories of 8, 64 and 512 GPUs (24 GB each) with ollama-pool:
   plan + render time and peak Python memory (tracemalloc). Target: 512 GPUs under 1 s, growth
   no worse than n log n (the ratio column: time per (n log2 n) relative to n=8).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from composegen import profiles  # noqa: E402
from composegen.inventory import Gpu, Inventory  # noqa: E402
from composegen.plan import make_plan  # noqa: E402
from composegen.render import render  # noqa: E402


def wall(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, check=False)
        out.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-500:]}")
    return out


def latency(runs: int) -> None:
    exe = str(Path(sys.executable).parent / "composegen")
    dc = shutil.which("docker-compose")
    if dc is None:
        print("render latency: docker-compose is not installed (apt-get install docker-compose)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        render_cmd = [exe, "render", "--profile", "rag-a100", "--reference", "-o", tmp]
        wall(render_cmd, 1)
        # force a real render each time: a fresh directory per run
        times = []
        for i in range(runs):
            d = Path(tmp) / f"r{i}"
            t0 = time.perf_counter()
            subprocess.run([*render_cmd[:-1], str(d)], capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        config = wall([dc, "-f", f"{tmp}/docker-compose.yml", "config", "-q"], runs)
    r, c = statistics.median(times), statistics.median(config)
    print(f"{'render rag-a100 --reference (fresh dir)':44} {r * 1000:8.1f} ms")
    print(f"{'docker-compose config -q (same file)':44} {c * 1000:8.1f} ms")
    print(
        f"ratio render / compose config: {r / c:.2f}  (target <= 0.50: "
        f"{'met' if r / c <= 0.5 else 'MISSED'})"
    )


def synthetic(n: int) -> Inventory:
    return Inventory(
        source=f"synthetic-{n}",
        gpus=tuple(
            Gpu(
                index=i,
                name="NVIDIA GeForce RTX 3090",
                uuid=f"GPU-{i:08x}-0000-4000-8000-000000000000",
                memory_total_mib=24576,
            )
            for i in range(n)
        ),
    )


def scale(runs: int) -> None:
    prof = profiles.load("ollama-pool")
    rows = []
    for n in (8, 64, 512):
        inv = synthetic(n)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            files = render(prof, make_plan(inv, prof))
            times.append(time.perf_counter() - t0)
        tracemalloc.start()
        render(prof, make_plan(inv, prof))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        size = sum(len(f.text) for f in files)
        rows.append((n, statistics.median(times), peak, size))
    base = rows[0][1] / (8 * math.log2(8))
    print(
        f"{'GPUs':>6} {'instances':>9} {'plan+render ms':>15} {'peak MiB':>9} {'output KiB':>10}"
        f" {'t/(n log n) vs n=8':>19}"
    )
    for n, t, peak, size in rows:
        print(
            f"{n:6} {n * 3:9} {t * 1000:15.1f} {peak / 2**20:9.1f} {size / 1024:10.0f}"
            f" {t / (n * math.log2(n)) / base:19.2f}"
        )
    t512 = rows[-1][1]
    print(f"512 GPUs: {t512:.3f} s (target < 1 s: {'met' if t512 < 1 else 'MISSED'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')} on {platform.node()} ({platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}), median of {args.runs}"
    )
    latency(args.runs)
    scale(args.runs)


if __name__ == "__main__":
    main()
