"""Helpers for the rendered-stack tests (tests/unit/test_render.py).

- inventories from the named fake-NVML scenarios (tests/fake_nvml.py), as objects or saved files;
- a cache of rendered stacks, so each (profile, inventory, options) is rendered once a session;
- a small nginx configuration parser (directives, quoted strings, nested blocks);
- the external checkers (`docker-compose config -q`, `nginx -t` in a private mount namespace)
  and the rule for a missing checker: skip with the reason, or fail when
  COMPOSEGEN_REQUIRE_TOOLS=1 (scripts/test.sh sets it in CI).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from composegen import app, profiles
from composegen.files import OutFile
from composegen.inventory import Inventory
from tests.fake_nvml import SCENARIOS, FakeNvml

PROFILES = ("rag-a100", "rma-shared", "zenglow-personas", "ollama-replicas", "ollama-pool")
REFERENCE = "reference"
INVENTORIES = (REFERENCE, "single_8gb", "consumer_pair", "a100_4x64", "a100_8x80")
MATRIX = tuple((p, i) for p in PROFILES for i in INVENTORIES)
# an inventory whose Docker engine speaks API 1.44 (Docker 25): the stack gets healthcheck
# start_interval (render.engine_takes_start_interval); SCENARIO@api1.44 works for any scenario
NEW_ENGINE = "consumer_pair@api1.44"

COMPOSE = "docker-compose.yml"
CPU_COMPOSE = "fallback/docker-compose.cpu.yml"
NGINX = "nginx/nginx.conf"
CPU_NGINX = "fallback/nginx.cpu.conf"
AUTH = "nginx/auth.conf"
ENV = ".env"

# Variables the seed documents use that Ollama does not know (tests/fixtures/seeds/README.md).
FAKE_OLLAMA_VARS = (
    "OLLAMA_GPU_LAYERS",
    "OLLAMA_MAX_VRAM_USAGE",
    "OLLAMA_PHI3_GPU",
    "OLLAMA_MAX_VRAM",
)

REQUIRE_TOOLS_ENV = "COMPOSEGEN_REQUIRE_TOOLS"
DOCKER_COMPOSE = "/usr/bin/docker-compose"  # Compose v1, Debian's package
UPSTREAM_HOST = re.compile(r"server\s+([\w.-]+):\d+")


# --- inventories from fake-NVML scenarios ---------------------------------------------------------


def scenario_inventory(name: str) -> Inventory:
    """Read the inventory of a named fake-NVML scenario through composegen's NVML reader;
    NAME@apiX.Y: with a reachable Docker engine of that API version (Docker 25.0.3 for 1.44)."""
    from dataclasses import replace

    from composegen.detect import nvml
    from composegen.inventory import DockerEngine, Host

    name, _, api = name.partition("@api")
    if api:
        inv = scenario_inventory(name)
        engine = DockerEngine(reachable=True, version="25.0.3", api_version=api)
        return replace(inv, host=replace(inv.host or Host(), docker=engine))

    fake = FakeNvml(SCENARIOS[name]())
    saved_import, saved_state = nvml._import_pynvml, nvml._nvml
    nvml._import_pynvml = lambda: fake
    nvml._nvml = None
    try:
        return nvml.read_inventory()
    finally:
        nvml.shutdown()
        nvml._import_pynvml = saved_import
        nvml._nvml = saved_state


def inventory_file(tmp_path: Path, name: str) -> str:
    """The scenario's inventory saved as JSON (what `composegen detect --save` writes)."""
    path = tmp_path / f"inventory-{name}.json"
    if not path.exists():
        path.write_text(scenario_inventory(name).to_json(), encoding="utf-8")
    return str(path)


# --- rendered stacks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    profile: str
    inventory: str  # "reference" or a fake-NVML scenario name
    pin_by: str | None = None
    bind: str = "127.0.0.1"
    sets: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        extra = [f"pin_by={self.pin_by}"] if self.pin_by else []
        extra += [f"bind={self.bind}"] if self.bind != "127.0.0.1" else []
        extra += [f"--set {s}" for s in self.sets]
        return f"{self.profile} on {self.inventory}" + (f" ({', '.join(extra)})" if extra else "")

    @property
    def dirname(self) -> str:
        raw = "-".join([self.profile, self.inventory, self.pin_by or "auto", self.bind, *self.sets])
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)[:120]


@dataclass
class Stack:
    key: Key
    rendered: app.Rendered
    _parsed: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> dict[str, OutFile]:
        return {f.path: f for f in self.rendered.files}

    def text(self, path: str) -> str:
        try:
            return self.files[path].text
        except KeyError:
            raise AssertionError(
                f"{self.key.label}: {path} was not rendered (files: {sorted(self.files)})"
            ) from None

    def yaml(self, path: str) -> Any:
        if path not in self._parsed:
            self._parsed[path] = yaml.safe_load(self.text(path))
        return self._parsed[path]

    @property
    def compose(self) -> dict[str, Any]:
        data: dict[str, Any] = self.yaml(COMPOSE)
        return data

    @property
    def cpu_compose(self) -> dict[str, Any]:
        data: dict[str, Any] = self.yaml(CPU_COMPOSE)
        return data

    @property
    def env(self) -> dict[str, str]:
        return parse_env(self.text(ENV))

    @property
    def profile(self) -> profiles.Profile:
        return self.rendered.profile

    @property
    def inventory(self) -> Inventory:
        return self.rendered.target.inventory

    def gpu_of(self, device_id: str) -> int:
        """The GPU index a rendered device id names (a UUID or an index string)."""
        for g in self.inventory.gpus:
            if device_id in (g.uuid, str(g.index)):
                return g.index
        raise AssertionError(f"{self.key.label}: device id {device_id!r} names no GPU")


def build(key: Key, inventories: Path) -> app.Rendered:
    return app.build(
        key.profile,
        inventory=None
        if key.inventory == REFERENCE
        else inventory_file(inventories, key.inventory),
        reference=key.inventory == REFERENCE,
        pin_by=key.pin_by,  # type: ignore[arg-type]
        bind=key.bind,
        overrides=profiles.Overrides(sets=key.sets),
    )


class StackCache:
    """Each key rendered once (and written once) per session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inventories = root / "inventories"
        self.inventories.mkdir(parents=True, exist_ok=True)
        self._stacks: dict[Key, Stack] = {}
        self._written: dict[Key, Path] = {}

    def get(self, profile: str, inventory: str, **options: Any) -> Stack:
        key = Key(profile, inventory, **options)
        if key not in self._stacks:
            self._stacks[key] = Stack(key, build(key, self.inventories))
        return self._stacks[key]

    def render_again(self, stack: Stack) -> app.Rendered:
        return build(stack.key, self.inventories)

    def written(self, stack: Stack) -> Path:
        """The stack written with app.write into its own directory."""
        if stack.key not in self._written:
            out = self.root / "stacks" / stack.key.dirname
            app.write(out, stack.rendered.files, force=False, dry_run=False)
            self._written[stack.key] = out
        return self._written[stack.key]


# --- compose helpers --------------------------------------------------------------------------


def services(data: dict[str, Any], profile: str | None = None) -> dict[str, dict[str, Any]]:
    """The services Compose starts by default (no `profiles:`), or with `profile` those of that
    Compose profile only (the `monitor` profile's prometheus and grafana)."""
    every: dict[str, dict[str, Any]] = data.get("services") or {}
    if profile is None:
        return {n: b for n, b in every.items() if not b.get("profiles")}
    return {n: b for n, b in every.items() if profile in (b.get("profiles") or ())}


def reserved_devices(block: dict[str, Any]) -> list[dict[str, Any]]:
    """deploy.resources.reservations.devices of one compose service ([] when none)."""
    deploy = block.get("deploy") or {}
    res = (deploy.get("resources") or {}).get("reservations") or {}
    devices: list[dict[str, Any]] = res.get("devices") or []
    return devices


def device_ids(block: dict[str, Any]) -> list[str]:
    return [str(i) for d in reserved_devices(block) for i in d.get("device_ids") or []]


def environment(block: dict[str, Any]) -> dict[str, str]:
    env = block.get("environment") or {}
    if isinstance(env, list):
        return dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {str(k): str(v) for k, v in env.items()}


def parse_env(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env line {n} is not NAME=VALUE: {line!r}"
        assert name not in out, f".env defines {name} twice"
        out[name] = value
    return out


def strings(data: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string scalar (keys too) of parsed YAML, with its path."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield f"{where}.{k} (key)", str(k)
            yield from strings(v, f"{where}.{k}" if where else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from strings(v, f"{where}[{i}]")
    elif isinstance(data, str):
        yield where, data


_DOLLAR = re.compile(r"\$(\$|\{[^}]*\}?|[A-Za-z_][A-Za-z0-9_]*|)")
_REF_FORM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")


def interpolation_problems(data: Any, env: dict[str, str]) -> list[str]:
    """Compose interpolations that are not `${VAR:-default}` with VAR in .env (and equal)."""
    problems = []
    for where, value in strings(data):
        for m in _DOLLAR.finditer(value):
            tok = m.group(1)
            if tok == "$":
                continue  # an escaped, literal $
            ref = _REF_FORM.fullmatch(tok)
            if ref is None:
                problems.append(f"{where}: ${tok} is not of the form ${{VAR:-default}}")
            elif ref.group(1) not in env:
                problems.append(f"{where}: ${tok}: {ref.group(1)} is not defined in .env")
            elif env[ref.group(1)] != ref.group(2):
                problems.append(
                    f"{where}: ${tok}: default {ref.group(2)!r} differs from .env's "
                    f"{env[ref.group(1)]!r}"
                )
    return problems


@functools.cache
def compose_validator(schema_path: str) -> Any:
    """Draft-7 validator of the official Compose schema; its refs resolve within the file."""
    import jsonschema

    schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    # The file's $id ("compose_spec.json") is relative: anchor it at the file itself so every
    # "#/definitions/..." ref resolves inside this document and nothing is fetched.
    schema["$id"] = Path(schema_path).resolve().as_uri()
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(schema_path: str, data: Any) -> list[str]:
    v = compose_validator(schema_path)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in sorted(v.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    ]


# --- nginx configuration parser ---------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def find(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.find(name)
        assert len(found) == 1, f"expected one {name!r} in {self.name} {self.args}: {len(found)}"
        return found[0]

    def walk(self) -> Iterator[Directive]:
        for d in self.block or []:
            yield d
            yield from d.walk()


_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", '"': '"', "'": "'", "\\": "\\"}


def _tokens(text: str) -> Iterator[str | tuple[str]]:
    """Words (str) and punctuation ((';',), ('{',), ('}',)); quotes unescaped as nginx does."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in ";{}":
            yield (c,)
            i += 1
        elif c in "'\"":
            out = []
            i += 1
            while i < n and text[i] != c:
                if text[i] == "\\" and i + 1 < n and text[i + 1] in _ESCAPES:
                    out.append(_ESCAPES[text[i + 1]])
                    i += 2
                else:
                    out.append(text[i])
                    i += 1
            if i >= n:
                raise ValueError("unterminated quoted string in nginx conf")
            i += 1
            yield "".join(out)
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in ";{}":
                i += 1
            yield text[start:i]


def parse_nginx(text: str) -> Directive:
    """The conf as a tree of directives under a root Directive named "main"."""
    root = Directive("main", [], [])
    stack = [root]
    words: list[str] = []
    for tok in _tokens(text):
        if isinstance(tok, str):
            words.append(tok)
            continue
        punct = tok[0]
        if punct == ";":
            if not words:
                raise ValueError("empty directive in nginx conf")
            assert stack[-1].block is not None
            stack[-1].block.append(Directive(words[0], words[1:]))
            words = []
        elif punct == "{":
            if not words:
                raise ValueError("block without a name in nginx conf")
            d = Directive(words[0], words[1:], [])
            assert stack[-1].block is not None
            stack[-1].block.append(d)
            stack.append(d)
            words = []
        else:
            if words or len(stack) == 1:
                raise ValueError("unbalanced '}' or unfinished directive in nginx conf")
            stack.pop()
    if words or len(stack) != 1:
        raise ValueError("nginx conf ends inside a block or a directive")
    return root


def seconds(value: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert m, f"not an nginx time: {value!r}"
    n, unit = int(m.group(1)), m.group(2) or "s"
    return {"ms": n // 1000, "s": n, "m": n * 60, "h": n * 3600}[unit]


# --- external checkers ------------------------------------------------------------------------


def tools_required() -> bool:
    return os.environ.get(REQUIRE_TOOLS_ENV) == "1"


def need(ok: bool, reason: str) -> None:
    """Skip with `reason` when a checker cannot run here; fail when tools are required."""
    if ok:
        return
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_TOOLS_ENV}=1: the checker must run)")
    pytest.skip(f"{reason}; set {REQUIRE_TOOLS_ENV}=1 to make this a failure")


def need_docker_compose() -> None:
    need(
        os.access(DOCKER_COMPOSE, os.X_OK),
        f"{DOCKER_COMPOSE} (Compose v1, Debian's docker-compose) is not installed",
    )


@functools.lru_cache(maxsize=1)
def _namespace_problem() -> str | None:
    if os.geteuid() != 0:
        return "nginx -t needs root (a private mount namespace over /etc/hosts)"
    for tool in ("unshare", "nginx", "mount"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (nginx-light, util-linux)"
    try:
        probe = subprocess.run(
            ["unshare", "-m", "true"], capture_output=True, text=True, timeout=30
        )
    except OSError as exc:
        return f"unshare -m cannot run: {exc}"
    if probe.returncode != 0:
        return f"unshare -m fails here: {probe.stderr.strip()}"
    return None


def need_nginx() -> None:
    problem = _namespace_problem()
    need(problem is None, problem or "")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}


def compose_config(
    directory: Path, path: str, project: str, binary: str = DOCKER_COMPOSE
) -> subprocess.CompletedProcess[str]:
    """`docker-compose ... config -q` on one rendered compose file, as a user would run it;
    `binary`: Compose v1 (the default) or v2 (tests/compose_cli.py compose_v2()). With v2 every
    Compose profile is enabled (`--profile '*'`), so the monitor profile's services are
    checked too (v1 checks every service of the file anyway)."""
    v2 = [] if binary == DOCKER_COMPOSE else ["--profile", "*"]
    if path == COMPOSE:
        cmd, cwd = [binary, *v2, "-f", path, "config", "-q"], directory
    else:
        cmd = [
            binary,
            *v2,
            "--project-directory",
            str(directory),
            "-p",
            project,
            "-f",
            str(directory / path),
            "config",
            "-q",
        ]
        cwd = directory
    return subprocess.run(
        cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=120
    )


_NGINX_SCRIPT = (
    'mount --bind "$1" /etc/hosts && mkdir -p /etc/nginx/composegen && '
    'mount --bind "$2" /etc/nginx/composegen && nginx -t -q -c "/etc/nginx/composegen/$3"'
)


def nginx_test(conf_dir: Path, conf_name: str, work: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on conf_dir/conf_name, mounted at /etc/nginx/composegen (where the gateway
    container mounts it) in a private mount namespace whose /etc/hosts maps every upstream
    host to 127.0.0.1 (nginx refuses upstream names that do not resolve)."""
    text = (conf_dir / conf_name).read_text(encoding="utf-8")
    work.mkdir(parents=True, exist_ok=True)
    hosts = work / "hosts"
    names = sorted(set(UPSTREAM_HOST.findall(text)))
    hosts.write_text(
        "127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {n}\n" for n in names), encoding="utf-8"
    )
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", _NGINX_SCRIPT, "sh", str(hosts), str(conf_dir), conf_name],
        capture_output=True,
        text=True,
        timeout=60,
    )


def cpu_conf_dir(written: Path, work: Path) -> Path:
    """A directory holding fallback/nginx.cpu.conf as nginx.conf (plus auth.conf if any), as the
    emergency fallback installs it."""
    d = work / "cpu-nginx"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(written / CPU_NGINX, d / "nginx.conf")
    if (written / AUTH).exists():
        shutil.copyfile(written / AUTH, d / "auth.conf")
    return d
