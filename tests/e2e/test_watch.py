"""`composegen watch` on a real engine with the stand-in images (rag-a100, 8 A100 81920 MiB).

A steady request loop through the gateway (tests/e2e/test_fallback.Loop) runs during every
heal and must see no failed request. The GPU signals come from an --inventory file that the
test edits (`health: lost`), as `composegen detect --save` writes it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from composegen.engine import failover
from composegen.engine.compose import load_project
from composegen.inventory import Inventory
from composegen.watch.heal import Healer
from composegen.watch.types import Decision
from tests.conftest import ROOT
from tests.e2e.test_fallback import Loop
from tests.e2e.test_up import Stack, containers, env_of, free_port, up


def recorded_gpus(st: Stack) -> list[dict[str, Any]]:
    data = json.loads((st.directory / ".composegen" / "render.json").read_text())
    return list(data["inventory"]["gpus"])


def whisper_url(st: Stack) -> str:
    return f"http://127.0.0.1:{st.port}/whisper/v1/models"


def served_gpus(st: Stack) -> str:
    return str(httpx.get(whisper_url(st), timeout=10).json()["gpus"])


def test_heal_recreates_a_container_that_lost_its_gpu_and_moves_off_a_lost_gpu(
    docker_client: Any, stack_factory: Any
) -> None:
    """The Healer alone (no probes, no rules): recreate whisper after its nvidia-smi broke,
    then fail GPU 0 over to the spare, each under load through whisper's route."""
    st = stack_factory("rag-a100")
    done, _ = up(st)
    assert done.returncode == 0, done.stderr
    project = load_project(st.directory / "docker-compose.yml", st.project)
    said: list[str] = []
    healer = Healer(project, failover.Io(said.append), inventory=None)
    gpus = recorded_gpus(st)

    before = containers(docker_client, st.project)
    old = before["whisper"]
    assert old.exec_run(["touch", "/run/stub-nvml-lost"]).exit_code == 0
    assert old.exec_run(["nvidia-smi", "-L"]).exit_code != 0
    with Loop(whisper_url(st), None) as loop:
        ok, events = healer.apply(Decision("recreate", "lost GPU access", service="whisper"), 0)
    assert ok, [e.message for e in events]
    assert loop.failed == [], loop.failed[:5]
    assert loop.ok > 10
    now = containers(docker_client, st.project)
    assert now["whisper"].id != old.id and now["whisper"].name == old.name
    assert now["whisper"].exec_run(["nvidia-smi", "-L"]).exit_code == 0
    assert {s: c.id for s, c in now.items() if s != "whisper"} == {
        s: c.id for s, c in before.items() if s != "whisper"
    }
    assert served_gpus(st) == gpus[0]["uuid"]

    with Loop(whisper_url(st), None) as loop:
        ok, events = healer.apply(Decision("gpu-failed", "GPU 0 lost", gpus=(0,)), 0)
    assert ok, [e.message for e in events]
    assert loop.failed == [], loop.failed[:5]
    moved = containers(docker_client, st.project)
    assert env_of(moved["whisper"])["NVIDIA_VISIBLE_DEVICES"] == gpus[5]["uuid"]
    assert served_gpus(st) == gpus[5]["uuid"]


# --- `composegen watch` as a process: probes, rules, heal, metrics, webhook together --------------


class Receiver:
    """A local webhook receiver (thread): every POST body, parsed as JSON."""

    def __init__(self) -> None:
        import http.server

        got = self.got = []  # type: list[Any]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for body in list(self.got):
            items = body.get("events", [body]) if isinstance(body, dict) else body
            out.extend(e for e in items if isinstance(e, dict))
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Watch:
    """`python -m composegen watch ... --json` in the background; its JSON lines kept."""

    def __init__(self, st: Stack, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "composegen",
                "watch",
                "-C",
                str(st.directory),
                "-p",
                st.project,
                "--json",
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"text": line})

    def events(self, rule: str | None = None) -> list[dict[str, Any]]:
        out = [x for x in list(self.lines) if "rule" in x and "level" in x]
        return [e for e in out if rule is None or e["rule"] == rule]

    def wait_for(self, what: str, ok: Any, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while not ok():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"watch exited ({self.proc.returncode}) while waiting for "
                    f"{what}: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {what} within {timeout_s} s; events: {self.events()[-8:]}"
                )
            time.sleep(0.1)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.proc.returncode, err


def write_inventory(st: Stack, path: Path, lost: tuple[int, ...] = ()) -> None:
    """The stack's recorded inventory as `detect --save` writes it, these GPUs `health: lost`."""
    data = json.loads(
        Inventory.from_dict(
            json.loads((st.directory / ".composegen" / "render.json").read_text())["inventory"]
        ).to_json()
    )
    for g in data["gpus"]:
        if g["index"] in lost:
            g["health"], g["health_reason"] = "lost", "GPU is lost"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def metric_families(port: int) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], family: str, **labels: str) -> float | None:
    fam = families.get(family)
    for s in fam.samples if fam else ():
        if s.name in (family, f"{family}_total") and all(
            s.labels.get(k) == v for k, v in labels.items()
        ):
            return float(s.value)
    return None


def render_json(st: Stack) -> dict[str, Any]:
    return dict(json.loads((st.directory / ".composegen" / "render.json").read_text()))


def mode(st: Stack) -> str:
    path = st.directory / ".composegen" / f"{st.project}.state.json"
    return str(json.loads(path.read_text())["mode"]) if path.exists() else "gpu"


def test_watch_heals_rag_a100_lost_gpu_restore_lost_access_all_lost(
    docker_client: Any, stack_factory: Any, tmp_path: Path
) -> None:
    st = stack_factory("rag-a100")
    done, _ = up(st)
    assert done.returncode == 0, done.stderr
    gpus = recorded_gpus(st)
    inv = tmp_path / "inventory.json"
    write_inventory(st, inv)
    hook = Receiver()
    port = free_port()
    watch = Watch(
        st, "--heal", "--inventory", str(inv), "--interval", "1s", "--restore-after", "3s",
        "--metrics", f"127.0.0.1:{port}", "--notify", hook.url,
    )  # fmt: skip
    try:
        watch.wait_for("/metrics", lambda: _answers(port))
        heals = lambda action: [e for e in watch.events("heal") if e.get("value") == action]  # noqa: E731

        # 1. GPU 0 lost in the file: whisper moves to the spare GPU 5, no failed request
        with Loop(whisper_url(st), None) as loop:
            mark = len(watch.lines)
            write_inventory(st, inv, lost=(0,))
            watch.wait_for("the gpu-failed heal", lambda: heals("gpu-failed"))
            watch.wait_for("whisper on GPU 5", lambda: served_gpus(st) == gpus[5]["uuid"])
        assert loop.failed == [], loop.failed[:5]
        # within 2 intervals: at most one snapshot (the read already under way when the file
        # changed) came before the one that acted (its events come before its snapshot line)
        acted = next(n for n, x in enumerate(watch.lines) if x.get("value") == "gpu-failed")
        between = [x for x in watch.lines[mark:acted] if x.get("type") == "snapshot"]
        assert len(between) <= 1, between
        assert heals("gpu-failed")[0]["level"] == "info", heals("gpu-failed")
        assert render_json(st)["failed"] == [[0]] and mode(st) == "gpu-failover"

        # 2. GPU 0 healthy again: restored after the hold-down, not before
        with Loop(whisper_url(st), None) as loop:
            healthy_at = time.time()
            write_inventory(st, inv)
            watch.wait_for("the restore heal", lambda: heals("restore"), timeout_s=120)
            watch.wait_for("whisper on GPU 0", lambda: served_gpus(st) == gpus[0]["uuid"])
        assert loop.failed == [], loop.failed[:5]
        assert _event_time(heals("restore")[0]) >= healthy_at + 3.0
        assert render_json(st)["failed"] == [] and mode(st) == "gpu"

        # 3. lost GPU access inside whisper's container: recreated, once
        old = containers(docker_client, st.project)["whisper"]
        assert old.exec_run(["touch", "/run/stub-nvml-lost"]).exit_code == 0
        watch.wait_for("the recreate heal", lambda: heals("recreate"))
        new = containers(docker_client, st.project)["whisper"]
        assert new.id != old.id
        assert new.exec_run(["nvidia-smi", "-L"]).exit_code == 0
        settled = len(watch.lines)
        watch.wait_for("3 more intervals", lambda: len(watch.lines) >= settled + 3)
        assert len(heals("recreate")) == 1
        assert containers(docker_client, st.project)["whisper"].id == new.id
        fams = metric_families(port)
        for action in ("recreate", "gpu-failed", "restore"):
            assert sample(fams, "composegen_heal_actions", action=action, result="ok") == 1
            assert sample(fams, "composegen_heal_actions", action=action, result="failed") == 0
        for family in (
            "composegen_gpu_temperature_celsius", "composegen_gpu_memory_total_bytes",
            "composegen_service_up", "composegen_service_healthy", "composegen_service_restarts",
            "composegen_gateway_requests", "composegen_gateway_request_duration_seconds",
            "composegen_stack_mode",
        ):  # fmt: skip
            assert family in fams, f"{family} not in /metrics: {sorted(fams)}"
        assert sample(fams, "composegen_service_up", stack=st.project, service="whisper") == 1
        assert sample(fams, "composegen_stack_mode", stack=st.project, mode="gpu") == 1
        total = sample(fams, "composegen_gpu_memory_total_bytes", gpu_index="0")
        assert total == 81920 * 2**20

        # 4. every GPU lost: the stack moves to CPU, make before break
        with Loop(whisper_url(st), None) as loop:
            write_inventory(st, inv, lost=tuple(g["index"] for g in gpus))
            watch.wait_for("the cpu heal", lambda: heals("cpu"), timeout_s=120)
        assert loop.failed == [], loop.failed[:5]
        assert mode(st) == "cpu-fallback"
        now = containers(docker_client, st.project)
        served = httpx.get(whisper_url(st), timeout=10).json()["served_by"]
        assert served == now["whisper-cpu"].attrs["Config"]["Hostname"]

        # the webhook got the heal events
        got = [e for e in hook.events() if e.get("rule") == "heal"]
        assert {e.get("value") for e in got} >= {"gpu-failed", "restore", "recreate", "cpu"}
    finally:
        code, err = watch.stop()
        hook.close()
    assert code == 0, err


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _event_time(e: dict[str, Any]) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(str(e["time"]).replace("Z", "+00:00")).timestamp()
