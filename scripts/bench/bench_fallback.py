#!/usr/bin/env python3
"""Time to recovery (issue 5): `composegen fallback --cpu` against the seed's way (stop each GPU
service with `docker stop`, then start its CPU version with `docker run`, one after another,
then reload the gateway), and against the floor, on the same stack in the same run.

    bash scripts/engine.sh start && bash scripts/images.sh
    .venv/bin/python scripts/bench/bench_fallback.py [--runs N]

The stack is rag-a100 with the local stand-ins (render --image), every service ready 1 s after
it starts and, like a real GPU server draining and freeing its memory, taking STOP_S seconds
to stop after SIGTERM. Recovery: from the command's start until every route of the gateway
answers 200 from a CPU container. A bounded request loop runs through the gateway meanwhile
and counts failed requests. The floor is the CPU services' own start and readiness: from the
start to the latest (container start + 1 s). Targets: <= 0.25x the script, <= 1.5x the
floor, 0 failed requests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_up import DELAY_S, render, sh

ROUTES = ("/whisper/", "/embeddings/", "/llm/")
STOP_S = 3
CPU = ("whisper-cpu", "embeddings-cpu", "llm-cpu")


def port_of(directory: Path) -> int:
    text = (directory / "docker-compose.yml").read_text()
    return int(text.split("127.0.0.1:", 1)[1].split(":", 1)[0])


class Loop(threading.Thread):
    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.ok, self.failed, self.halt = base, 0, 0, threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=20) as c:
            for n in range(20000):
                if self.halt.is_set():
                    return
                try:
                    r = c.get(f"{self.base}{ROUTES[n % len(ROUTES)]}v1/models")
                    self.ok += r.status_code == 200
                    self.failed += r.status_code != 200
                except httpx.HTTPError:
                    self.failed += 1
                time.sleep(0.02)


def recovered(base: str, project: str, client: object) -> bool:
    hosts = {
        c.attrs["Config"]["Hostname"]
        for c in client.containers.list(  # type: ignore[attr-defined]
            filters={"label": f"com.docker.compose.project={project}"}
        )
        if c.name.endswith("-cpu") or "-cpu-" in c.name
    }
    try:
        for route in ROUTES:
            r = httpx.get(f"{base}{route}v1/models", timeout=5)
            if r.status_code != 200 or r.json().get("served_by") not in hosts:
                return False
    except httpx.HTTPError:
        return False
    return True


def ready_floor(project: str, t0: float, names: tuple[str, ...]) -> float:
    latest = 0.0
    for name in names:
        data = json.loads(sh("docker", "inspect", name).stdout)[0]
        stamp = data["State"]["StartedAt"][:26].rstrip("Z")
        start = dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.timezone.utc).timestamp()
        latest = max(latest, start + DELAY_S)
    return latest - t0


def start_stack(d: Path, exe: str, project: str) -> None:
    sh(exe, "down", "-C", str(d), "-p", project, "--volumes")
    sh("docker", "rm", "-f", *[f"{project}-{n}" for n in CPU])
    (d / ".composegen").mkdir(exist_ok=True)
    for f in (d / ".composegen").glob(f"{project}.state.json"):
        f.unlink()
    (d / "nginx" / "nginx.gpu.conf").unlink(missing_ok=True)
    (d / "nginx" / "nginx.conf").write_text((d.parent / "pristine-nginx.conf").read_text())
    done = sh(exe, "up", "-C", str(d), "-p", project, "--pull", "never")
    if done.returncode != 0:
        sys.exit(f"up failed: {done.stderr}")


def via_composegen(d: Path, exe: str) -> tuple[float, float, int]:
    project = "bench-fb"
    start_stack(d, exe, project)
    base = f"http://127.0.0.1:{port_of(d)}"
    loop = Loop(base)
    loop.start()
    t0 = time.time()
    proc = subprocess.Popen(
        [exe, "fallback", "--cpu", "-C", str(d), "-p", project],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not recovered(base, project, CLIENT):  # recovery, not the end of the command (which
        time.sleep(0.05)  # then stops the GPU containers: after recovery, by design)
    took = time.time() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"fallback failed: {out}{err}")
    loop.halt.set()
    loop.join()
    floor = ready_floor(project, t0, tuple(f"{project}-{n}-1" for n in CPU))
    sh(exe, "down", "-C", str(d), "-p", project, "--volumes")
    return took, floor, loop.failed


def via_script(d: Path, exe: str) -> tuple[float, int]:
    """What seed 002's emergency script does, made to work: stop, run, one after another."""
    project = "bench-sc"
    start_stack(d, exe, project)
    base = f"http://127.0.0.1:{port_of(d)}"
    cpu = json.loads(
        json.dumps(
            __import__("yaml").safe_load((d / "fallback" / "docker-compose.cpu.yml").read_text())
        )
    )
    loop = Loop(base)
    loop.start()
    t0 = time.time()
    for name in CPU:
        svc = cpu["services"][name]
        gpu = name.removesuffix("-cpu")
        sh("docker", "stop", f"{project}-{gpu}-1")
        env = []
        for k, v in (svc.get("environment") or {}).items():
            env += ["-e", f"{k}={str(v).split(':-', 1)[-1].rstrip('}') if '${' in str(v) else v}"]
        hc = svc["healthcheck"]["test"]
        sh(
            "docker",
            "run",
            "-d",
            "--name",
            f"{project}-{name}",
            "--label",
            f"com.docker.compose.project={project}",
            "--network",
            f"{project}_backend",
            "--network-alias",
            name,
            "--health-cmd",
            hc[3] if hc[0] == "CMD" and hc[1] == "bash" else " ".join(hc[1:]),
            "--health-interval",
            "1s",
            *env,
            svc["image"],
            *(svc.get("command") or []),
        )
    # the containers above answer to NAME (--network-alias), as the CPU conf calls them
    (d / "nginx" / "nginx.conf").write_text((d / "fallback" / "nginx.cpu.conf").read_text())
    sh("docker", "exec", f"{project}-gateway-1", "nginx", "-s", "reload")
    while not recovered(base, project, CLIENT):
        if time.time() - t0 > 300:
            sys.exit("script: not recovered after 300 s")
        time.sleep(0.05)
    took = time.time() - t0
    loop.halt.set()
    loop.join()
    sh("docker", "rm", "-f", *[f"{project}-{n}" for n in CPU])
    sh(exe, "down", "-C", str(d), "-p", project, "--volumes")
    return took, loop.failed


CLIENT: object = None


def main() -> None:
    global CLIENT
    import docker

    CLIENT = docker.from_env()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "composegen")
    if sh("docker", "version").returncode != 0:
        sys.exit("no Docker engine: run scripts/engine.sh start first")
    print(
        f"# {time.strftime('%Y-%m-%d')} on {platform.node()} ({platform.machine()}, "
        f"{os.cpu_count()} cores), rag-a100 stand-ins ready {DELAY_S:g} s after start, "
        f"median of {args.runs}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "stack"
        render(
            d,
            exe,
            tuple(
                f"services.{n}.env.STUB_STOP_DELAY_S={STOP_S}"
                for n in ("whisper", "embeddings", "llm", "ocr")
            ),
        )
        (d.parent / "pristine-nginx.conf").write_text((d / "nginx" / "nginx.conf").read_text())
        cg = [via_composegen(d, exe) for _ in range(args.runs)]
        sc = [via_script(d, exe) for _ in range(args.runs)]
    t = statistics.median(c[0] for c in cg)
    floor = statistics.median(c[1] for c in cg)
    s = statistics.median(x[0] for x in sc)
    print(f"{'floor (CPU services started + ready)':42} {floor:7.2f} s")
    print(
        f"{'composegen fallback --cpu':42} {t:7.2f} s  {t / floor:5.2f}x floor (<= 1.5: "
        f"{'met' if t / floor <= 1.5 else 'MISSED'}), {t / s:5.2f}x the script (<= 0.25: "
        f"{'met' if t / s <= 0.25 else 'MISSED'}), failed requests {sum(c[2] for c in cg)}"
    )
    print(
        f"{'seed script: docker stop + docker run each':42} {s:7.2f} s  failed requests "
        f"{sum(x[1] for x in sc)}"
    )


if __name__ == "__main__":
    main()
