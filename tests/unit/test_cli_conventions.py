"""Compose-style conventions: `logs`, `exec`, -f FILE / -p NAME / COMPOSE_PROJECT_NAME, one
meaning per short option (-p the project, -P the profile), and the profile chosen by the tool
when `render` / `plan` get none."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

from composegen.cli import cli
from composegen.engine import attach
from composegen.engine import docker as eng
from tests.conftest import fixture_path
from tests.fake_docker import LABEL_PROJECT, LABEL_SERVICE, FakeDocker
from tests.fake_nvml import FakeNvml
from tests.unit.test_cli_detect import call

Install = Callable[[str], FakeNvml]
T0 = 1764403200.0  # 2025-11-29T08:00:00Z
RTX_4080_SUPER_CSV = (
    "nvidia-smi",
    "csv",
    "nvidia_gpu_exporter__linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05__idle.query-gpu.csv",
)


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    client = FakeDocker()
    monkeypatch.setattr(eng, "connect", lambda *a, **k: client)
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    a = client.add("proj", "alpha")
    b = client.add("proj", "beta")
    # the engine drops trailing zeros of the nanoseconds: .5 and .51999998 (T0 + 0.52 as a
    # float) would sort the wrong way as text
    a.log_line("a1", T0 + 0.5)
    b.log_line("b1", T0 + 0.52)
    a.log_line("a2", T0 + 1.0)
    run = client.add_container(
        "proj_alpha_run_1",
        {LABEL_PROJECT: "proj", LABEL_SERVICE: "alpha", eng.LABEL_ONEOFF: "True"},
    )
    run.log_line("one-off", T0 + 0.7)  # `compose run` containers are not the service's
    client.add("other", "alpha").log_line("other project", T0 + 0.6)
    return client


# --- logs ---------------------------------------------------------------------------------


def test_logs_interleave_by_time_with_compose_prefixes(
    engine: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = call(["logs", "-C", str(tmp_path), "-p", "proj"], capsys)
    assert code == 0, err
    assert out.splitlines() == ["alpha-1  | a1", "beta-1   | b1", "alpha-1  | a2"]


def test_logs_of_a_service_with_tail_and_timestamps(
    engine: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = call(
        ["logs", "-C", str(tmp_path), "-p", "proj", "-n", "1", "-t", "alpha"], capsys
    )
    assert code == 0, err
    assert out.splitlines() == ["alpha-1  | 2025-11-29T08:00:01.0Z a2"]


def test_logs_follow_prints_new_lines_until_the_streams_end(engine: FakeDocker) -> None:
    got: list[str] = []
    done = threading.Event()

    def follow() -> None:
        attach.logs(engine, "proj", ["alpha"], attach.LogOptions(follow=True, tail=0), got.append)
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    alpha = next(c for c in engine.containers_by_id.values() if c.name == "proj_alpha_1")
    deadline = threading.Event()
    for _ in range(200):  # the follower attaches asynchronously: log until it shows a line
        alpha.log_line("later")
        if got or deadline.wait(0.05):
            break
    engine.end_streams()  # the engine ends the streams (the container stopped)
    assert done.wait(10)
    assert got and set(got) == {"alpha-1  | later"}


def test_logs_without_containers_or_with_an_unknown_service(
    engine: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = call(["logs", "-C", str(tmp_path), "-p", "nothing"], capsys)
    assert code == 1
    assert err.splitlines() == [
        "composegen: error: project nothing has no containers (start it with `composegen up` "
        "(or pass -p NAME / -f FILE of the right project))"
    ]
    code, _, err = call(["logs", "-C", str(tmp_path), "-p", "proj", "gamma"], capsys)
    assert code == 2
    assert err.splitlines() == [
        "composegen: error: no such service in project proj: gamma (its services: alpha, beta)"
    ]


# --- exec ---------------------------------------------------------------------------------


def test_exec_passes_the_exit_code_through(
    engine: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine.exec_codes[("sh", "-c", "exit 7")] = 7
    code, _, err = call(
        ["exec", "-C", str(tmp_path), "-p", "proj", "alpha", "sh", "-c", "exit 7"], capsys
    )
    assert code == 7, err
    spec = next(iter(engine.exec_specs.values()))
    assert spec["tty"] is False and spec["stdin"] is False  # a test's stdin is no terminal


def test_exec_options_and_the_commands_own_options(
    engine: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine.exec_stderr[("env", "-u", "X")] = b"warned\n"
    args = ["exec", "-C", str(tmp_path), "-p", "proj", "-e", "A=b c", "-w", "/srv", "-u", "1000"]
    code, _, err = call([*args, "beta", "env", "-u", "X"], capsys)
    assert code == 0, err
    spec = next(iter(engine.exec_specs.values()))
    assert spec["cmd"] == ["env", "-u", "X"]  # -u after the service is the command's
    assert spec["container"].service == "beta"
    assert (spec["environment"], spec["workdir"], spec["user"]) == (["A=b c"], "/srv", "1000")
    assert err == "warned\n"


def test_exec_sends_stdin_and_returns_output(engine: FakeDocker) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"piped in\n")
    os.close(write_end)
    chunks: list[tuple[int, bytes]] = []
    try:
        code = attach.exec_in(
            engine,
            "proj",
            "alpha",
            eng.ExecRequest(["cat"]),
            read_end,
            lambda stream, data: chunks.append((stream, data)),
        )
    finally:
        os.close(read_end)
    assert code == 0
    assert chunks == [(1, b"piped in\n")]


def test_exec_in_a_stopped_container_or_a_bad_env(
    engine: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine.add("proj", "gamma", status="exited")
    code, _, err = call(["exec", "-C", str(tmp_path), "-p", "proj", "gamma", "true"], capsys)
    assert code == 1
    assert "container gamma-1 of project proj is not running" in err
    code, _, err = call(
        ["exec", "-C", str(tmp_path), "-p", "proj", "-e", "NOEQUALS", "alpha", "true"], capsys
    )
    assert code == 2
    assert err.splitlines() == [
        "composegen: error: -e 'NOEQUALS': expected KEY=VALUE (e.g. -e OLLAMA_DEBUG=1)"
    ]
    assert engine.exec_specs == {}


# --- the project: -f FILE, -p NAME, COMPOSE_PROJECT_NAME -----------------------------------

COMPOSE = "services:\n  alpha:\n    image: composegen-test/busybox:1\n"


def test_compose_project_name_is_honoured_and_p_wins(
    engine: FakeDocker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "other")
    code, out, err = call(["logs", "-C", str(tmp_path)], capsys)
    assert code == 0, err
    assert out.splitlines() == ["alpha-1  | other project"]
    code, out, err = call(
        ["logs", "--file", str(tmp_path / "docker-compose.yml"), "-p", "proj", "beta"], capsys
    )
    assert code == 0, err
    assert out.splitlines() == ["beta-1  | b1"]
    # no compose file at all: COMPOSE_PROJECT_NAME alone names the project, as -p does
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "proj")
    code, out, err = call(["logs", "--file", str(tmp_path / "gone.yml"), "beta"], capsys)
    assert code == 0, err
    assert out.splitlines() == ["beta-1  | b1"]


def test_compose_project_name_names_the_project_of_status_without_a_file(
    engine: FakeDocker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "proj")
    code, out, err = call(["status", "-C", str(tmp_path), "--json"], capsys)
    # no compose file: the project is read from its containers' labels, as with -p NAME
    assert json.loads(out)["project"] == "proj"
    assert {s["service"] for s in json.loads(out)["services"]} == {"alpha", "beta"}
    assert code in (0, 1), err  # serving or not: the fake runs no healthchecks


def _short_options() -> dict[str, dict[str, str]]:
    """{short option: {command: parameter}} over every command."""
    found: dict[str, dict[str, str]] = {}

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")
            for p in command.params:
                for opt in p.opts if isinstance(p, click.Option) else ():
                    if len(opt) == 2:
                        found.setdefault(opt, {})[prefix + name] = str(p.name)

    walk(cli, "")
    return found


def test_p_is_the_project_and_P_the_profile_everywhere() -> None:
    shorts = _short_options()
    project = {c for c, p in shorts["-p"].items() if p == "project_name"}
    assert project >= {
        "up",
        "down",
        "status",
        "ps",
        "logs",
        "exec",
        "fallback",
        "verify",
        "models pull",
    }
    # render and plan have no project: their -p exists only to say so
    assert {c: p for c, p in shorts["-p"].items() if c not in project} == {
        "render": "project_flag",
        "plan": "project_flag",
    }
    assert shorts["-P"] == {"render": "profile_name", "plan": "profile_name"}
    assert set(shorts["-C"].values()) == {"directory"}


@pytest.mark.parametrize("command", ["render", "plan"])
def test_p_for_a_profile_says_what_p_is(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "stack"
    extra = ["-o", str(out)] if command == "render" else []
    code, _, err = call([command, "-p", "rag-a100", "--reference", *extra], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"composegen: error: -p is the project name (as in Compose), and `{command}` has no "
        f"project (the profile is -P/--profile: composegen {command} -P rag-a100)"
    ]
    assert not out.exists()


def test_capital_p_is_the_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(["plan", "-P", "rag-a100", "--reference", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["profile"] == "rag-a100"
    assert "chosen" not in err


# --- the profile chosen by the tool --------------------------------------------------------


def test_render_without_a_profile_chooses_and_says_why(
    nvml_scenario: Install, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nvml_scenario("consumer_pair")  # RTX 3060 Ti 8192 MiB + GTX 1660 SUPER 6144 MiB
    out = tmp_path / "stack"
    code, text, err = call(["render", "-o", str(out)], capsys)
    assert code == 0, err
    chosen = [ln for ln in err.splitlines() if "chosen" in ln]
    assert len(chosen) == 1
    assert chosen[0].startswith(
        "composegen: profile zenglow-personas chosen for this host: fits yes (2 service(s) on 2 "
        "GPU(s)); closest reference: 2 GPU(s) as the reference, VRAM/GPU 8192+6144 MiB vs "
        "8192+6144, 2 of 2 GPU models"
    )
    assert text.startswith("zenglow-personas for this host")
    assert json.loads((out / ".composegen" / "render.json").read_text())["profile"] == (
        "zenglow-personas"
    )


def test_plan_with_profile_auto_on_an_inventory_file(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(fixture_path(*RTX_4080_SUPER_CSV))  # one 16 GB card: 16376 MiB
    code, out, err = call(["plan", "--profile", "auto", "--inventory", path, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["profile"] == "rma-shared"  # stdout stays JSON: the why is on stderr
    assert f"composegen: profile rma-shared chosen for inventory file {path}: fits yes" in err


def test_no_gpu_asks_for_a_profile_and_writes_nothing(
    nvml_scenario: Install, no_nvidia_smi: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nvml_scenario("no_devices")
    out = tmp_path / "stack"
    code, _, err = call(["render", "-o", str(out)], capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "composegen: error: no profile chosen: this host"
    )
    assert lines[0].endswith(
        "(pass --profile NAME (one of: ollama-pool, ollama-replicas, rag-a100, rma-shared, "
        "zenglow-personas); with no GPU it is planned on that profile's reference hardware)"
    )
    assert not out.exists()


def test_detect_and_profiles_show_the_same_ranking(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(fixture_path("nvidia-smi", "xml", "telegraf__dual_a5000-v13.xml"))
    code, out, err = call(["profiles", "--inventory", path, "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    code, text, err = call(["detect", "--from", path], capsys)
    assert code == 0, err
    listed = [
        ln.strip().split(":")[0] for ln in text.split("best first:")[1].splitlines() if ln.strip()
    ]
    assert listed == [r["name"] for r in rows if r["fits"] != "no"]
    assert rows[0]["name"] == "ollama-pool" and rows[0]["fits"] == "yes"
    assert rows[0]["closeness"] == (
        "2 GPU(s) vs 3 in the reference, VRAM/GPU 2x24564 MiB vs 24576+12282+8192, 0 of 3 GPU "
        "models, NVLink none as the reference"
    )


def test_logs_without_prefix(
    engine: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = call(["logs", "-C", str(tmp_path), "-p", "proj", "--no-log-prefix"], capsys)
    assert code == 0, err
    assert out.splitlines() == ["a1", "b1", "a2"]


class EndlessLog:
    """A log stream far longer than anyone reads whole: counts what was pulled from it."""

    def __init__(self, name: str, total: int = 100_000) -> None:
        self.name, self.total, self.pulled, self.closed = name, total, 0, False

    def __iter__(self) -> Iterator[bytes]:
        for n in range(self.total):
            self.pulled += 1
            yield f"2025-11-29T08:00:{n // 1000:02d}.{n % 1000:03d}Z {self.name}{n}\n".encode()

    def close(self) -> None:
        self.closed = True


def test_logs_stream_lazily_instead_of_reading_every_log_first(
    engine: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without -f the logs are merged line by line as they are read: the first line is out
    after a few chunks of each stream, not after every log is in memory; all streams closed."""
    streams: list[EndlessLog] = []

    def logs_stream(client: object, cid: str, follow: bool, tail: int | None) -> EndlessLog:
        streams.append(EndlessLog(f"s{len(streams)}-"))
        return streams[-1]

    monkeypatch.setattr(eng, "logs_stream", logs_stream)
    pulled_at_first: list[int] = []

    def out(line: str) -> None:
        if not pulled_at_first:
            pulled_at_first.append(sum(s.pulled for s in streams))
        if line.endswith("s0-10"):
            raise KeyboardInterrupt  # the reader stops early (Ctrl-C, a closed pipe)

    with pytest.raises(KeyboardInterrupt):
        attach.logs(engine, "proj", [], attach.LogOptions(), out)
    assert len(streams) == 2
    assert pulled_at_first[0] <= 4
    assert all(s.closed and s.pulled < 100 for s in streams)


def test_project_name_order_of_a_compose_file(
    engine: FakeDocker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """-p, else COMPOSE_PROJECT_NAME, else the file's name:, else the directory (Compose's)."""
    (tmp_path / "docker-compose.yml").write_text("name: fromfile\n" + COMPOSE)
    _, out, err = call(["status", "-C", str(tmp_path), "--json"], capsys)
    assert json.loads(out)["project"] == "fromfile", err
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "proj")
    _, out, err = call(["status", "-C", str(tmp_path), "--json"], capsys)
    assert json.loads(out)["project"] == "proj", err
    _, out, err = call(["status", "-C", str(tmp_path), "-p", "other", "--json"], capsys)
    assert json.loads(out)["project"] == "other", err
