#!/usr/bin/env python3
"""CLI start-up benchmark (issue 2): `composegen --help` and `composegen detect --from FIXTURE
--json` against the interpreter's own start (`python -c pass`), measured in the same run.

    .venv/bin/python scripts/bench/bench_cli.py [--runs N]

Prints the median and best wall time of each, and each one's ratio to the floor. Target:
`--help` within 4x the floor (so docker, jinja2, httpx, jsonschema, rich and pynvml stay lazy).
Not part of the test pass/fail.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests/fixtures/nvidia-smi/xml/telegraf__dual_a5000-v13.xml"


def timed(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        out.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-400:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    py = sys.executable
    exe = str(Path(py).parent / "composegen")
    if not os.path.exists(exe):
        sys.exit(f"{exe} not found: install composegen into this interpreter's environment")
    cases = {
        "python -c pass (floor)": [py, "-c", "pass"],
        "composegen --help": [exe, "--help"],
        "composegen detect --from XML --json": [exe, "detect", "--from", str(FIXTURE), "--json"],
    }
    for cmd in cases.values():  # warm the page cache once
        timed(cmd, 2)
    results = {name: timed(cmd, args.runs) for name, cmd in cases.items()}
    floor = statistics.median(results["python -c pass (floor)"])
    print(
        f"# {time.strftime('%Y-%m-%d')} on {platform.node()} ({platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}), {args.runs} runs each"
    )
    print(f"{'case':40} {'median ms':>10} {'best ms':>8} {'x floor':>8}")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:40} {med * 1000:10.1f} {min(times) * 1000:8.1f} {med / floor:8.2f}")
    ratio = statistics.median(results["composegen --help"]) / floor
    print(f"target --help <= 4.00x floor: {'met' if ratio <= 4 else 'MISSED'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
