#!/usr/bin/env python3
"""Serving benchmark (issue 11): `composegen up` to serving (models fetched into the shared
store once, every replica healthy, each model loaded) on ollama-replicas (4 GPUs), against the
way seed 000's guide does it: `docker-compose up -d`, wait until Docker reports every service
healthy (Compose v1 has no --wait), then `docker exec REPLICA ollama pull MODEL` per replica.
Both in one run, each from empty volumes.

    bash scripts/engine.sh start && bash scripts/images.sh
    .venv/bin/python scripts/bench/bench_serving.py [--runs N]

The images are the local stand-ins (the Ollama stub: /api/pull writes a few MB into the store,
so the figures measure the orchestration, not a network). The baseline's file is the same one
with the store mounted read-write (the guide pulls inside each replica; the rendered file
mounts the shared store read-only, where that pull could not write), and it ends with the
models on disk but not loaded: the first request would still wait for a load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "ollama-replicas"
MODEL = "mixtral:8x7b"
REPLICAS = 4
TIMEOUT_S = 300


def sh(*cmd: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)


def tags() -> dict[str, str]:
    out = sh("bash", str(ROOT / "scripts/images.sh"), "--list").stdout.split()
    return {
        "ollama": next(t for t in out if "ollama" in t),
        "nginx": next(t for t in out if "nginx" in t),
    }


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def render(directory: Path, exe: str) -> None:
    t = tags()
    done = sh(
        exe, "-m", "composegen", "render", "-P", PROFILE, "--reference", "-o", str(directory),
        "--image", f"ollama={t['ollama']}", "--image", f"nginx={t['nginx']}",
        "--set", f"gateway.port={free_port()}",
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"render failed: {done.stderr}")


def clean(project: str) -> None:
    label = f"label=com.docker.compose.project={project}"
    ids = sh("docker", "ps", "-aq", "--filter", label).stdout.split()
    if ids:
        sh("docker", "rm", "-f", *ids)
    for kind in ("network", "volume"):
        names = sh("docker", kind, "ls", "-q", "--filter", label).stdout.split()
        if names:
            sh("docker", kind, "rm", *names)


def composegen_up(directory: Path, project: str, exe: str) -> float:
    t0 = time.monotonic()
    done = sh(exe, "-m", "composegen", "up", "-C", str(directory), "-p", project, "--json")
    took = time.monotonic() - t0
    if done.returncode != 0:
        sys.exit(f"composegen up failed: {done.stdout[-2000:]}\n{done.stderr}")
    final = json.loads(done.stdout.strip().splitlines()[-1])
    loaded = final["models"]["loaded"]
    assert len(loaded) == REPLICAS, loaded
    return took


def baseline(directory: Path, project: str) -> float:
    base = directory / "docker-compose.baseline.yml"
    base.write_text(
        (directory / "docker-compose.yml")
        .read_text()
        .replace("models:/models:ro", "models:/models")
    )
    t0 = time.monotonic()
    done = sh("docker-compose", "-f", str(base), "-p", project, "up", "-d")
    if done.returncode != 0:
        sys.exit(f"docker-compose up failed: {done.stderr}")
    names = [f"{project}_ollama-{i}_1" for i in range(REPLICAS)] + [f"{project}_gateway_1"]
    end = time.monotonic() + TIMEOUT_S
    while time.monotonic() < end:
        fmt = "{{.State.Health.Status}}"
        states = sh("docker", "inspect", "-f", fmt, *names).stdout.split()
        if states == ["healthy"] * len(names):
            break
        time.sleep(0.2)
    else:
        sys.exit(f"the baseline stack did not become healthy: {states}")
    for i in range(REPLICAS):
        pulled = sh("docker", "exec", f"{project}_ollama-{i}_1", "ollama", "pull", MODEL)
        if pulled.returncode != 0:
            sys.exit(f"ollama pull in replica {i} failed: {pulled.stdout}{pulled.stderr}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    exe = sys.executable
    ours: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cg-bench-serving-") as tmp:
        directory = Path(tmp) / "stack"
        render(directory, exe)
        for run in range(args.runs):
            a, b = f"cgbs{run}a", f"cgbs{run}b"
            clean(a)
            clean(b)
            try:
                ours.append(composegen_up(directory, a, exe))
            finally:
                clean(a)
            try:
                theirs.append(baseline(directory, b))
            finally:
                clean(b)
    today = dt.date.today().isoformat()
    where = f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})"
    print(
        f"# {today} on {where}, median of {args.runs}, {PROFILE} on {REPLICAS} GPUs, empty volumes"
    )
    m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
    print(f"composegen up (fetched once, healthy, {REPLICAS} loads)   {m_ours:7.2f} s")
    print(f"docker-compose up -d + health + {REPLICAS}x ollama pull      {m_theirs:7.2f} s")
    print(f"ratio composegen / baseline: {m_ours / m_theirs:.2f}")


if __name__ == "__main__":
    main()
