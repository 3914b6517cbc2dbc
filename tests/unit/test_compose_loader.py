"""The compose-file loader and the convergence plan of `up`, without an engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from composegen.engine.compose import (
    ComposeFileError,
    duration_s,
    interpolate,
    levels,
    load_project,
    read_dotenv,
)
from composegen.engine.up import Existing, converge
from tests.unit.test_cli_detect import run_cli


def write(tmp: Path, compose: str, env: str | None = None) -> Path:
    (tmp / "docker-compose.yml").write_text(compose)
    if env is not None:
        (tmp / ".env").write_text(env)
    return tmp / "docker-compose.yml"


def test_interpolation_like_compose(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("${A}", env, "x") == "1"
    assert interpolate("$A-$$A", env, "x") == "1-$A"
    assert interpolate("${B:-def}", env, "x") == "def"
    assert interpolate("${EMPTY:-def}", env, "x") == "def"
    assert interpolate("${EMPTY-def}", env, "x") == ""
    assert interpolate("${B-def}", env, "x") == "def"
    assert interpolate("${B:-${A}}", env, "x") == "1"
    assert interpolate("${B}", env, "x") == ""
    with pytest.raises(ComposeFileError, match="required variable B is missing: set it"):
        interpolate("${B:?set it}", env, "x")


def test_dotenv_and_process_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(
        tmp_path,
        """
services:
  a:
    image: img:1
    environment:
      X: ${X:-none}
      Y: ${Y}
      LITERAL: $$HOME
""",
        env="# comment\nX=from-dotenv\nexport Y='quoted value'\nCOMPOSE_PROJECT_NAME=MyProj\n",
    )
    monkeypatch.delenv("X", raising=False)
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    p = load_project(f)
    assert p.name == "myproj"
    assert dict(p.service("a").environment) == {
        "X": "from-dotenv",
        "Y": "quoted value",
        "LITERAL": "$HOME",
    }
    monkeypatch.setenv("X", "from-shell")
    assert load_project(f).service("a").environment["X"] == "from-shell"
    assert read_dotenv(tmp_path / "missing") == {}


def test_services_parse_into_engine_values(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
services:
  gw:
    image: nginx:1
    ports: ["127.0.0.1:8080:80", "9000"]
    volumes: ["./conf:/etc/nginx/conf.d:ro", "data:/data"]
    depends_on:
      llm: {condition: service_healthy}
    networks: [edge, backend]
  llm:
    image: vllm:1
    command: --model x --port 8000
    healthcheck:
      test: ["CMD", "true"]
      interval: 1m30s
      timeout: 500ms
    deploy:
      resources:
        limits: {memory: 2G, cpus: "1.5"}
        reservations:
          devices:
            - {driver: nvidia, device_ids: ["GPU-1", "GPU-2"], capabilities: [gpu]}
    networks: [backend]
    shm_size: 8g
networks:
  edge: {}
  backend: {internal: true}
volumes:
  data: {}
""",
    )
    p = load_project(f, "proj")
    gw, llm = p.service("gw"), p.service("llm")
    assert gw.ports[0].host_ip == "127.0.0.1" and gw.ports[0].host_port == 8080
    assert gw.ports[1].host_port is None and gw.ports[1].container_port == 9000
    assert gw.mounts[0].bind and gw.mounts[0].source == str((tmp_path / "conf").resolve())
    assert gw.mounts[0].read_only and not gw.mounts[1].bind
    assert llm.command == ("--model", "x", "--port", "8000")
    assert llm.healthcheck is not None and llm.healthcheck.interval_s == 90
    assert llm.healthcheck.timeout_s == 0.5
    assert llm.gpus[0].device_ids == ("GPU-1", "GPU-2")
    assert llm.mem_limit == "2G" and llm.nano_cpus == 1_500_000_000
    assert [n.name for n in p.networks if n.internal] == ["backend"]
    assert [[s.name for s in lvl] for lvl in levels(p)] == [["llm"], ["gw"]]


@pytest.mark.parametrize(
    ("compose", "message"),
    [
        (
            "services:\n  a:\n    image: i\n    privileged: true\n",
            "services.a.privileged: this compose key is not supported",
        ),
        (
            "services:\n  a:\n    image: i\n    network_mode: host\n",
            "services.a.network_mode: this compose key is not supported",
        ),
        ("services:\n  a:\n    build: .\n", "services.a.build: this compose key is not supported"),
        ("services:\n  a:\n    image: i\n    depends_on: [b]\n", "depends on unknown service 'b'"),
        ("services:\n  a:\n    image: i\n    volumes: ['v:/d']\n", "volume 'v' is not declared"),
        (
            "services:\n  a:\n    image: i\n    deploy:\n      resources:\n        reservations:\n"
            "          devices: [{driver: nvidia, count: 1, device_ids: ['0'],\n"
            "                     capabilities: [gpu]}]\n",
            "count and device_ids exclude each other",
        ),
        (
            "services:\n  a:\n    image: i\n    healthcheck: {test: [CMD, x], interval: soon}\n",
            "expected a duration",
        ),
        (
            "services:\n  a:\n    image: i\n    depends_on: [b]\n  b:\n    image: i\n"
            "    depends_on: [a]\n",
            "cycle",
        ),
        ("services: [\n", "invalid YAML at line"),
        (
            "services:\n  a:\n    image: i\n    environment: {X: '${X'}\n",
            "invalid interpolation format",
        ),
        (
            "configs: {}\nservices:\n  a:\n    image: i\n",
            "top-level key 'configs' is not supported",
        ),
    ],
)
def test_unsupported_or_broken_files(tmp_path: Path, compose: str, message: str) -> None:
    with pytest.raises(ComposeFileError, match=message):
        load_project(write(tmp_path, compose), "p")


def test_durations() -> None:
    assert duration_s("1h2m3s", "x") == 3723
    assert duration_s(5, "x") == 5
    with pytest.raises(ComposeFileError):
        duration_s("5 minutes", "x")


def test_convergence_plan(tmp_path: Path) -> None:
    p = load_project(
        write(
            tmp_path,
            """
services:
  keep: {image: i:1}
  change: {image: i:2}
  stopped: {image: i:3}
  new: {image: i:4}
""",
        ),
        "p",
    )
    existing = [
        Existing("c1", "keep", p.service("keep").config_hash(), "running"),
        Existing("c2", "change", "old-hash", "running"),
        Existing("c3", "stopped", p.service("stopped").config_hash(), "exited"),
        Existing("c4", "gone", "h", "running"),
        Existing("c5", "keep", "dup", "running"),
    ]
    conv = converge(p, existing)
    assert conv.actions == {
        "keep": "keep",
        "change": "recreate",
        "stopped": "start",
        "new": "create",
    }
    assert sorted(conv.remove) == ["c4", "c5"]
    assert conv.existing["change"] == "c2"


def test_up_without_engine_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "services:\n  a: {image: i:1}\n")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    proc = run_cli("up", "-C", str(tmp_path))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Docker engine" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_up_missing_file_is_bad_input(tmp_path: Path) -> None:
    proc = run_cli("up", "-C", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert "docker-compose.yml: no such file" in proc.stderr


# --- .env as Compose reads it (issue 9 item 18) -------------------------------------------------

DOTENV = """# comment
export EXPORTED=yes
PLAIN=plain value # a comment
HASH_NO_SPACE=a#b
SQ='single ${PLAIN} \\n # not a comment' # trailing
DQ="double ${PLAIN} \\t tab" # trailing
NESTED=${PLAIN}-x
DEFAULTED=${UNSET_H3_VAR:-fallback}
FROM_PROC=${PROC_H3_VAR}
DOLLAR=$PLAIN
EMPTY=
SPACED =  around
MULTI="line1
line2"
ESC="a \\"quoted\\" word"
"""
DOTENV_KEYS = [
    "EXPORTED",
    "PLAIN",
    "HASH_NO_SPACE",
    "SQ",
    "DQ",
    "NESTED",
    "DEFAULTED",
    "FROM_PROC",
    "DOLLAR",
    "EMPTY",
    "SPACED",
    "MULTI",
    "ESC",
]


def test_dotenv_matches_compose_v2_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same .env and compose file through composegen's loader and through Compose's own
    `config`: every variable comes out the same."""
    import os
    import subprocess

    from tests.compose_cli import need_compose_v2

    v2 = str(need_compose_v2())
    env_lines = "\n".join(f"      {k}: ${{{k}}}" for k in DOTENV_KEYS)
    f = write(
        tmp_path, f"services:\n  a:\n    image: img:1\n    environment:\n{env_lines}\n", DOTENV
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    for k in (*DOTENV_KEYS, "UNSET_H3_VAR"):
        clean.pop(k, None)
        monkeypatch.delenv(k, raising=False)
    clean["PROC_H3_VAR"] = "from the process"
    monkeypatch.setenv("PROC_H3_VAR", "from the process")
    done = subprocess.run(
        [v2, "config", "--format", "json"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)["services"]["a"]["environment"]
    theirs = {k: str(v).replace("$$", "$") for k, v in theirs.items()}  # config escapes $
    ours = dict(load_project(f).service("a").environment)
    assert ours == theirs
    # what the comparison covers, in Compose's words
    assert ours["SQ"] == "single ${PLAIN} \\n # not a comment"  # literal, as in a shell
    assert ours["DQ"] == "double plain value \t tab"
    assert ours["MULTI"] == "line1\nline2"
    assert ours["FROM_PROC"] == "from the process"
    assert ours["DOLLAR"] == "plain value"  # $VAR expands too (Compose v1 left it)


ROUND_TRIP = {
    "DOLLAR_VAL": "pa$$word ${HOME} $USER",
    "QUOTES": """it's "quoted" """,
    "HASH": "a # not a comment",
    "SPACES": "  padded  ",
    "BACKSLASH_END": "ends\\",
    "BOTH": "x'y\\'z $a",
    "PLAIN": "llama3.2:3b",
}


def test_dotenv_values_round_trip_through_compose_v2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """render's .env writer (dotenv_value) and composegen's reader agree with Compose v2 on
    values with $, quotes, # and spaces: v2's resolved environment is the value itself."""
    import os
    import subprocess

    from composegen.render import dotenv_value
    from tests.compose_cli import need_compose_v2

    v2 = str(need_compose_v2())
    dotenv = "".join(f"{k}={dotenv_value(v)}\n" for k, v in ROUND_TRIP.items())
    env_lines = "\n".join(f"      {k}: ${{{k}}}" for k in ROUND_TRIP)
    f = write(
        tmp_path, f"services:\n  a:\n    image: img:1\n    environment:\n{env_lines}\n", dotenv
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    for k in ROUND_TRIP:
        clean.pop(k, None)
        monkeypatch.delenv(k, raising=False)
    done = subprocess.run(
        [v2, "config", "--format", "json"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)["services"]["a"]["environment"]
    assert {k: v.replace("$$", "$") for k, v in theirs.items()} == ROUND_TRIP
    assert dict(load_project(f).service("a").environment) == ROUND_TRIP


def test_dotenv_line_compose_cannot_read_is_named(tmp_path: Path) -> None:
    f = write(tmp_path, "services:\n  a: {image: img:1}\n", env='A=1\nB="open\n')
    with pytest.raises(ComposeFileError, match=r"\.env:2: B: the \" is not closed"):
        load_project(f)
    f = write(tmp_path, "services:\n  a: {image: img:1}\n", env="A='x' y\n")
    with pytest.raises(ComposeFileError, match=r"\.env:1: A: unexpected text after the value"):
        load_project(f)


# --- keys the loader applies or refuses by name (issue 9 items 18 and 19) -----------------------


@pytest.mark.parametrize(
    ("service", "message"),
    [
        (
            "    deploy: {restart_policy: {condition: on-failure, delay: 5s}}\n",
            "services.a.deploy.restart_policy.delay: not supported by composegen up",
        ),
        (
            "    deploy: {restart_policy: {condition: sometimes}}\n",
            "services.a.deploy.restart_policy.condition: expected none, on-failure or any",
        ),
        (
            "    deploy: {restart_policy: {condition: any, max_attempts: 3}}\n",
            "max_attempts: the engine counts attempts only with condition: on-failure",
        ),
        ("    restart: sometimes\n", "services.a.restart: expected no, always"),
        (
            "    pids_limit: 100\n    deploy: {resources: {limits: {pids: 200}}}\n",
            "limits.pids: 200 contradicts pids_limit: 100",
        ),
        (
            "    deploy: {resources: {reservations: {devices: [{driver: nvidia, count: 1, "
            "capabilities: [gpu], device_id: [0]}]}}}\n",
            "devices[0].device_id: not supported by composegen up",
        ),
        (
            "    healthcheck: {test: [CMD, 'true'], start_intervall: 1s}\n",
            "services.a.healthcheck.start_intervall: not supported by composegen up",
        ),
        (
            "    volumes: ['data:/models', './models:/models:ro']\n",
            "services.a.volumes[1]: duplicate mount point /models (also services.a.volumes[0])",
        ),
    ],
)
def test_keys_refused_by_name(tmp_path: Path, service: str, message: str) -> None:
    f = write(tmp_path, f"services:\n  a:\n    image: img:1\n{service}volumes:\n  data: {{}}\n")
    with pytest.raises(ComposeFileError) as err:
        load_project(f)
    assert message in str(err.value)


def test_restart_and_pids_are_parsed_for_the_engine(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "services:\n  a: {image: img:1, restart: 'on-failure:5', pids_limit: 64}\n"
        "  b: {image: img:1, deploy: {restart_policy: {condition: none}}, restart: always}\n",
    )
    p = load_project(f)
    assert (p.service("a").restart_policy, p.service("a").pids_limit) == (("on-failure", 5), 64)
    assert p.service("b").restart_policy == ("", 0)  # deploy.restart_policy wins, as in Compose
