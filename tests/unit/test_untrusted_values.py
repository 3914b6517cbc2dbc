"""Values from profiles, --values and --set on their way into rendered files (issue 9, items 4,
5, 7, 9 and 19): what the shell, Compose and the validation cache make of them."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from composegen import app, profiles, render
from composegen.profiles import Overrides, ProfileError
from composegen.resources import profiles_dir
from tests.stack_checks import DOCKER_COMPOSE, need_docker_compose
from tests.unit.test_cli_detect import run_cli

# --- health.path into `bash -c` -------------------------------------------------------------


class OneRequest:
    """A TCP server on 127.0.0.1 that answers one HTTP request with 200 and keeps its first
    line."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]
        self.line = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.line = data.split(b"\r\n", 1)[0]
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=10)


def _probe(path: str, port: int) -> list[str]:
    built = app.build(
        "rag-a100",
        reference=True,
        overrides=Overrides(sets=(f"services.whisper.health.path={path}",)),
    )
    assert built.profile.service("whisper").health.path == path
    inst = next(i for i in built.plan.instances if i.service == "whisper")
    return render.health_test(built.profile.service("whisper"), replace(inst, port=port))


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_health_path_runs_no_command(tmp_path: Path) -> None:
    """Every character here is a URL path character, so the path is accepted; before the fix
    the healthcheck pasted it into a single-quoted printf format, where the quote ended the
    string and `touch` ran. It must send the path as it is and run nothing."""
    pwned = tmp_path / "pwned"
    path = f"/x';touch'{pwned}"
    server = OneRequest()
    try:
        test = _probe(path, server.port)
        assert test[:3] == ["CMD", "bash", "-c"], test
        # Compose turns `$$` into `$` before the container runs the test
        done = subprocess.run(
            ["bash", "-c", test[3].replace("$$", "$")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        server.close()
    assert not pwned.exists(), f"the healthcheck ran a command: {test[3]}"
    assert done.returncode == 0, done.stderr
    assert server.line == f"GET {path} HTTP/1.0".encode(), server.line


def test_health_path_with_percent_and_dollar_is_sent_verbatim(tmp_path: Path) -> None:
    path = "/v1/health%20check/$ready;a=b"
    server = OneRequest()
    try:
        test = _probe(path, server.port)
        done = subprocess.run(
            ["bash", "-c", test[3].replace("$$", "$")],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert server.line == f"GET {path} HTTP/1.0".encode()


def test_schema_restricts_health_path() -> None:
    doc = yaml.safe_load((profiles_dir() / "rag-a100.yaml").read_text(encoding="utf-8"))
    profiles._validate_schema(doc, "rag-a100.yaml")  # the shipped one passes
    for bad in ('/h" x', "/h x", "health", "/a{b}", "/%zz", "/a\\b"):
        doc["services"]["whisper"]["health"]["path"] = bad
        with pytest.raises(ProfileError, match=r"services\.whisper\.health\.path"):
            profiles._validate_schema(doc, "rag-a100.yaml")


# --- the validation cache ---------------------------------------------------------------------


def test_validation_cache_is_keyed_on_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`seed: "2024-01-01"` is valid; `seed: 2024-01-01` is a YAML date, which the schema
    refuses. Both printed alike to the old cache key, so the second skipped the schema."""
    monkeypatch.setenv("COMPOSEGEN_CACHE_DIR", str(tmp_path / "cache"))
    text = (profiles_dir() / "ollama-pool.yaml").read_text(encoding="utf-8")
    pd = tmp_path / "pd"
    pd.mkdir()
    target = pd / "ollama-pool.yaml"
    assert "\nseed:" in text
    lines = [ln for ln in text.splitlines() if not ln.startswith("seed:")]
    target.write_text("\n".join([*lines, 'seed: "2024-01-01"', ""]), encoding="utf-8")
    assert profiles.load("ollama-pool", [str(pd)]).seed == "2024-01-01"
    assert any((tmp_path / "cache" / "valid-profile").iterdir())  # it was cached
    target.write_text("\n".join([*lines, "seed: 2024-01-01", ""]), encoding="utf-8")
    with pytest.raises(ProfileError, match=r"seed: must be a string"):
        profiles.load("ollama-pool", [str(pd)])


def test_validation_cache_still_hits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOSEGEN_CACHE_DIR", str(tmp_path / "cache"))
    profiles.load("ollama-pool", overrides=Overrides(sets=("planner.headroom=0.2",)))
    entries = list((tmp_path / "cache" / "valid-profile").iterdir())
    assert len(entries) == 1
    profiles.load("ollama-pool", overrides=Overrides(sets=("planner.headroom=0.2",)))
    assert list((tmp_path / "cache" / "valid-profile").iterdir()) == entries
    profiles.load("ollama-pool", overrides=Overrides(sets=("planner.headroom=0.3",)))
    assert len(list((tmp_path / "cache" / "valid-profile").iterdir())) == 2


# --- tunables through .env and ${VAR:-default} ------------------------------------------------

ODD = "a:b/c,d=e@f%g+h ~!?*()[]^&;<>|-_."


def _compose_env(directory: Path, service: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE")}
    done = subprocess.run(
        [DOCKER_COMPOSE, "config"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(done.stdout)
    environment = data["services"][service]["environment"]
    assert isinstance(environment, dict), environment
    return {str(k): str(v) for k, v in environment.items()}


def test_tunable_with_punctuation_survives_compose(tmp_path: Path) -> None:
    """Every character a tunable may hold comes out of `docker-compose config` unchanged, both
    from .env and, with .env gone, from the ${VAR:-default} in the compose file."""
    need_docker_compose()
    values = tmp_path / "v.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "tunables": {"ODD_VALUE": ODD},
                "services": {"ollama": {"env": {"ODD_VALUE": "${ODD_VALUE}"}}},
            }
        ),
        encoding="utf-8",
    )
    out = tmp_path / "stack"
    proc = run_cli(
        "render", "--profile", "ollama-pool", "--reference", "-o", str(out), "--values", str(values)
    )
    assert proc.returncode == 0, proc.stderr
    assert f"ODD_VALUE='{ODD}'\n" in (out / ".env").read_text(encoding="utf-8")  # quoted for v2
    names = yaml.safe_load((out / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    service = next(n for n in names if n != "gateway")
    assert _compose_env(out, service)["ODD_VALUE"] == ODD
    (out / ".env").unlink()
    assert _compose_env(out, service)["ODD_VALUE"] == ODD


def test_newline_in_a_tunable_adds_no_line_to_env(tmp_path: Path) -> None:
    out = tmp_path / "stack"
    proc = run_cli(
        "render",
        "--profile",
        "ollama-pool",
        "--reference",
        "-o",
        str(out),
        "--set",
        'tunables.OLLAMA_KEEP_ALIVE="10m\\nCOMPOSE_PROJECT_NAME=other"',
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "control character" in proc.stderr, proc.stderr
    assert not out.exists()


# --- --bind and URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "url"),
    [
        ("::1", "http://[::1]:8080/healthz"),
        ("fd00::1:2", "http://[fd00::1:2]:8080/healthz"),
        ("0.0.0.0", "http://127.0.0.1:8080/healthz"),
        ("::", "http://127.0.0.1:8080/healthz"),
        ("127.0.0.1", "http://127.0.0.1:8080/healthz"),
        ("192.168.10.5", "http://192.168.10.5:8080/healthz"),
    ],
)
def test_healthcheck_script_url_for_bind(tmp_path: Path, bind: str, url: str) -> None:
    out = tmp_path / "stack"
    proc = run_cli(
        "render", "--profile", "ollama-pool", "--reference", "-o", str(out), "--bind", bind
    )
    assert proc.returncode == 0, proc.stderr
    script = (out / "scripts" / "healthcheck.sh").read_text(encoding="utf-8")
    assert f'GATEWAY="{url}"\n' in script, script
    stack_md = (out / "STACK.md").read_text(encoding="utf-8")
    shown = f"[{bind}]:8080" if ":" in bind else f"{bind}:8080"
    assert f"Only the gateway publishes a port: `{shown}`." in stack_md
    assert stat.S_IMODE((out / "scripts" / "healthcheck.sh").stat().st_mode) == 0o755


def test_inventory_source_cannot_write_into_the_compose_file(tmp_path: Path) -> None:
    """The compose file's header names the inventory's `source`, which a saved inventory file
    sets: a newline there ended the comment and wrote YAML (here a second `services:`).
    Loading such a file is refused (test_bad_input: inv-source-newline); render escapes the
    header as a second line of defence, for an inventory that did not come from a file."""
    from composegen.errors import BadInputError
    from composegen.plan import make_plan
    from tests.stack_checks import scenario_inventory

    evil = "x\nservices:\n  evil: {image: busybox, privileged: true}\n#"
    doc = json.loads(scenario_inventory("single_8gb").to_json())
    doc["source"] = evil
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(BadInputError, match=r"source: .* holds the control character"):
        app.build("zenglow-personas", inventory=str(inv))
    prof = profiles.load("zenglow-personas")
    plan = make_plan(replace(scenario_inventory("single_8gb"), source=evil), prof)
    files = render.render(prof, plan, render.RenderOptions())
    text = {f.path: f.text for f in files}["docker-compose.yml"]
    header, body = text.split("\n", 1)
    assert header.startswith("# Rendered by composegen") and "\\nservices:" in header
    assert "evil" not in body
    assert text.count("\nservices:\n") == 1


@pytest.mark.parametrize(
    ("var", "value"),
    [
        # the forms Ollama's envconfig takes: integer seconds (negative: forever) or a Go
        # duration (time.ParseDuration)
        ("OLLAMA_KEEP_ALIVE", "-1"),
        ("OLLAMA_KEEP_ALIVE", "0"),
        ("OLLAMA_KEEP_ALIVE", "3600"),
        ("OLLAMA_KEEP_ALIVE", "1h30m"),
        ("OLLAMA_KEEP_ALIVE", "1.5h"),
        ("OLLAMA_KEEP_ALIVE", "-1m"),
        ("OLLAMA_LOAD_TIMEOUT", "5m0s"),
        ("OLLAMA_NUM_PARALLEL", "0"),
        ("OLLAMA_MAX_LOADED_MODELS", "3"),
        ("OLLAMA_FLASH_ATTENTION", "true"),
        ("OLLAMA_FLASH_ATTENTION", "1"),
        ("OLLAMA_SCHED_SPREAD", "F"),
        ("HF_HUB_OFFLINE", "ON"),
        ("VLLM_GPU_MEMORY_UTILIZATION", "1"),
    ],
)
def test_tunable_formats_ollama_accepts_are_accepted(var: str, value: str) -> None:
    prof = profiles.load("ollama-pool", overrides=Overrides(sets=(f"tunables.{var}='{value}'",)))
    assert prof.tunables[var] == value


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("OLLAMA_KEEP_ALIVE", "5 m"),
        ("OLLAMA_KEEP_ALIVE", "forever"),
        ("OLLAMA_KEEP_ALIVE", "1d"),
        ("OLLAMA_LOAD_TIMEOUT", "m5"),
        ("OLLAMA_NUM_PARALLEL", "+1"),
        ("OLLAMA_FLASH_ATTENTION", "yes"),  # Ollama reads an unparsable boolean as true
        ("VLLM_GPU_MEMORY_UTILIZATION", "0"),
        ("VLLM_MAX_NUM_SEQS", "0"),
    ],
)
def test_tunable_formats_ollama_refuses_are_refused(var: str, value: str) -> None:
    from composegen.errors import BadInputError

    with pytest.raises(BadInputError, match=rf"--set .*tunables\.{var}: '{re.escape(value)}'"):
        profiles.load("ollama-pool", overrides=Overrides(sets=(f"tunables.{var}='{value}'",)))
