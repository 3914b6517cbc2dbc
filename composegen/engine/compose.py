"""Read a compose file from disk the way Compose does, into plain values `up` can apply.

Hand edits are honoured because this reads the file, not the plan. `.env` beside the file is
interpolated like Compose: `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`,
`$VAR`, and `$$` for a literal `$`; the process environment wins over `.env`. A key this loader
does not support is an error naming the key and the service: it is never silently ignored.

Compose profiles: a service with `profiles: [...]` is part of the project only when one of its
profiles is active (COMPOSE_PROFILES from the environment or .env, comma-separated, `*` for
all; or the `profiles` argument), as Compose does; the others are left out (named in
`Project.inactive`, so `up` does not take their containers for orphans), with the networks and
volumes only they use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composegen.errors import BadInputError

# keys passed to the engine as they are (no parsing of their own)
_EXTRA_KEYS = (
    "working_dir",
    "user",
    "read_only",
    "tmpfs",
    "cap_add",
    "cap_drop",
    "hostname",
    "init",
    "stop_signal",
)
SUPPORTED_SERVICE_KEYS = frozenset(
    {
        "image",
        "command",
        "entrypoint",
        "environment",
        "ports",
        "volumes",
        "networks",
        "healthcheck",
        "restart",
        "shm_size",
        "ulimits",
        "labels",
        "deploy",
        "security_opt",
        "depends_on",
        "stop_grace_period",
    }
    | set(_EXTRA_KEYS)
    | {"pids_limit", "profiles", "extra_hosts"}
)
SUPPORTED_TOP_KEYS = frozenset({"services", "networks", "volumes", "name", "version"})
MAX_COMPOSE_BYTES = 8 * 1024 * 1024
PROFILES_ENV = "COMPOSE_PROFILES"
_PROFILE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


class ComposeFileError(BadInputError):
    pass


@dataclass(frozen=True)
class Port:
    host_ip: str
    host_port: int | None
    container_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class Mount:
    source: str  # a volume name (unprefixed) or an absolute host path
    target: str
    read_only: bool
    bind: bool


@dataclass(frozen=True)
class Gpu:
    driver: str
    device_ids: tuple[str, ...] | None
    count: int | None  # -1: all
    capabilities: tuple[str, ...]
    options: tuple[tuple[str, str], ...] = ()  # driver-specific options, as the engine takes


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_s: float = 30.0
    timeout_s: float = 30.0
    retries: int = 3
    start_period_s: float = 0.0
    start_interval_s: float | None = None  # Engine API 1.44+: refused by up on older engines


@dataclass(frozen=True)
class Service:
    name: str
    image: str
    command: tuple[str, ...] | None
    entrypoint: tuple[str, ...] | None
    environment: Mapping[str, str]
    ports: tuple[Port, ...]
    mounts: tuple[Mount, ...]
    networks: tuple[str, ...]
    healthcheck: Healthcheck | None
    restart: str
    labels: Mapping[str, str]
    depends_on: Mapping[str, str]  # service -> condition
    gpus: tuple[Gpu, ...]
    shm_size: str | None = None
    mem_limit: str | None = None
    nano_cpus: int | None = None
    security_opt: tuple[str, ...] = ()
    ulimits: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    stop_grace_s: float = 10.0
    restart_policy: tuple[str, int] = ("", 0)  # the engine's Name ("" = none), MaximumRetryCount
    pids_limit: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # working_dir, user, read_only...
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # network -> names
    raw: Mapping[str, Any] = field(default_factory=dict)

    def config_hash(self) -> str:
        """What Compose calls the config hash: a change to the service recreates it. depends_on
        is left out: it orders start-up and changes nothing in the container (the gateway must
        not be recreated, its port closed, because a backend it waits for was removed)."""
        raw = {k: v for k, v in self.raw.items() if k != "depends_on"}
        text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Network:
    name: str
    internal: bool = False
    driver: str = "bridge"
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Volume:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Project:
    name: str
    directory: Path
    file: Path
    services: tuple[Service, ...]
    networks: tuple[Network, ...]
    volumes: tuple[Volume, ...]
    # services of the file left out because none of their profiles is active
    inactive: tuple[str, ...] = ()

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)


# --- .env and interpolation -----------------------------------------------------------------------


# The .env grammar of Compose v2 (compose-go's dotenv), read like a shell: `export ` prefix;
# 'single' quoted values are literal (only \' is an escape, no expansion); "double" quoted
# values take backslash escapes (\n, \t, \", \\, \$ for a literal $) and expansion; both may
# span lines; a comment after a quoted value, or after whitespace in an unquoted one;
# `$VAR`, `${VAR}` and `${VAR:-default}` expanded in unquoted and double-quoted values, from
# earlier lines, then from the process environment. Measured against Compose v2 2.40.3
# (tests/unit/test_compose_loader.py test_dotenv_matches_compose_v2_config).
_DOTENV_KEY = re.compile(r"'([^']+)'|([^=#\s]+)")
_DOTENV_VALUE = {
    "'": (re.compile(r"'((?:\\'|[^'])*)'"), re.compile(r"\\'")),
    '"': (re.compile(r'"((?:\\.|[^"\\])*)"', re.S), re.compile(r"\\[\\'\"abfnrtv$]")),
}
_DOTENV_VAR = re.compile(
    r"\$\{(?P<name>[^}:]*)(?::-(?P<default>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
_LITERAL_DOLLAR = "\x00"  # a \\$ of a double-quoted value, kept out of the expansion


def _dotenv_unescape(pattern: re.Pattern[str], value: str) -> str:
    import codecs

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return _LITERAL_DOLLAR
        return codecs.decode(m.group(0), "unicode-escape")

    return pattern.sub(one, value)


_DE_SPACE = re.compile(r"\s*")
_DE_BLANK = re.compile(r"[^\S\r\n]*")
_DE_REST = re.compile(r"[^\r\n]*")
_DE_EXPORT = re.compile(r"export[^\S\r\n]+")
_DE_END = re.compile(r"(?:[^\S\r\n]*#[^\r\n]*)?[^\S\r\n]*(?:\r\n|\n|\r|$)")


def _match(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """End of the pattern's match at pos (the patterns used here match the empty string)."""
    m = pattern.match(text, pos)
    return m.end() if m else pos


def _expand(value: str, env: Mapping[str, str | None]) -> str:
    def one(m: re.Match[str]) -> str:  # a variable that is set, even to "", hides the default
        if m.group("bare"):
            return env.get(m.group("bare")) or ""
        return env.get(m.group("name"), m.group("default") or "") or ""

    return _DOTENV_VAR.sub(one, value).replace(_LITERAL_DOLLAR, "$")


def parse_dotenv(text: str, where: str, environ: Mapping[str, str]) -> dict[str, str]:
    """KEY=VALUE pairs of a .env text, as Compose reads them. A line it cannot read is an
    error naming the line (Compose skips it with a warning: the variable would be unset)."""
    raw: list[tuple[str, str | None, bool]] = []  # (key, value, expand it)
    pos, n = 0, len(text)
    while pos < n:
        pos = _match(_DE_SPACE, text, pos)
        if pos >= n:
            break
        line = text.count("\n", 0, pos) + 1
        if text[pos] == "#":
            pos = _match(_DE_REST, text, pos)
            continue
        pos = _match(_DE_EXPORT, text, pos)
        km = _DOTENV_KEY.match(text, pos)
        if km is None:
            raise ComposeFileError(f"{where}:{line}: expected KEY=VALUE")
        key = km.group(1) or km.group(2)
        pos = _match(_DE_BLANK, text, km.end())
        value: str | None = None
        literal = False
        if text.startswith("=", pos):
            pos = _match(_DE_BLANK, text, pos + 1)
            quote = text[pos : pos + 1]
            if quote in _DOTENV_VALUE:
                pattern, escapes = _DOTENV_VALUE[quote]
                vm = pattern.match(text, pos)
                if vm is None:
                    raise ComposeFileError(f"{where}:{line}: {key}: the {quote} is not closed")
                value, pos = _dotenv_unescape(escapes, vm.group(1)), vm.end()
                literal = quote == "'"
            else:
                end = _match(_DE_REST, text, pos)
                value, pos = re.sub(r"\s+#.*", "", text[pos:end]).rstrip(), end
        cm = _DE_END.match(text, pos)
        if cm is None and value is None:
            raise ComposeFileError(f"{where}:{line}: expected KEY=VALUE, got {key!r} and more")
        if cm is None:
            raise ComposeFileError(
                f"{where}:{line}: {key}: unexpected text after the value",
                "quote the whole value, or put a space before a # comment",
            )
        pos = cm.end()
        raw.append((key, value, not literal))
    out: dict[str, str | None] = {}
    for key, value, expand in raw:  # each value sees the lines before it, then the environment
        if value is None or not expand:
            out[key] = value
        else:
            out[key] = _expand(value, {**environ, **out})
    return {k: v for k, v in out.items() if v is not None}


def read_dotenv(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    from composegen.files import TooLargeError, read_bounded

    try:
        text = read_bounded(path, MAX_COMPOSE_BYTES).decode("utf-8-sig")
    except FileNotFoundError:
        return {}
    except TooLargeError:
        raise ComposeFileError(f"{path}: larger than {MAX_COMPOSE_BYTES} bytes") from None
    except UnicodeDecodeError:
        raise ComposeFileError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ComposeFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    return parse_dotenv(text, str(path), os.environ if environ is None else environ)


def interpolate(value: str, env: Mapping[str, str], where: str) -> str:
    """Compose's variable substitution, nested defaults included (`${A:-${B}}`)."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        nxt = value[i + 1] if i + 1 < n else ""
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            depth, j = 1, i + 2
            while j < n and depth:
                if value[j] == "{":
                    depth += 1
                elif value[j] == "}":
                    depth -= 1
                j += 1
            if depth:
                raise ComposeFileError(f"{where}: invalid interpolation format in {value!r}")
            out.append(_braced(value[i + 2 : j - 1], env, where, value))
            i = j
        else:
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", value[i + 1 :])
            if m is None:
                out.append("$")
                i += 1
                continue
            out.append(str(env.get(m.group(0), "")))
            i += 1 + m.end()
    return "".join(out)


def _braced(expr: str, env: Mapping[str, str], where: str, whole: str) -> str:
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])(.*))?\Z", expr, re.S)
    if m is None:
        raise ComposeFileError(f"{where}: invalid interpolation format in {whole!r}")
    name, op, arg = m.group(1), m.group(2), m.group(3) or ""
    current = env.get(name)
    if op in (":-", "-"):
        unset = current is None or (op == ":-" and current == "")
        return interpolate(arg, env, where) if unset else str(current)
    if op in (":?", "?"):
        unset = current is None or (op == ":?" and current == "")
        if unset:
            raise ComposeFileError(f"{where}: required variable {name} is missing: {arg}")
    return "" if current is None else str(current)


def _interp_tree(node: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, where)
    if isinstance(node, dict):
        return {
            k: _interp_tree(v, env, f"{where}.{k}" if where else str(k)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interp_tree(v, env, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


# --- parsing helpers ----------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")


def duration_s(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        raise ComposeFileError(f"{where}: expected a duration like 30s, got {value!r}")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(value):
        if m.start() != pos:
            break
        total += (
            float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[m.group(2)]
        )
        pos = m.end()
    if pos != len(value):
        raise ComposeFileError(f"{where}: expected a duration like 30s or 1m30s, got {value!r}")
    return total


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ComposeFileError(f"{where}: {exc}") from None
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return tuple(str(v) for v in value)
    raise ComposeFileError(f"{where}: expected a string or a list of strings")


def _mapping(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(v, (dict, list)):
                raise ComposeFileError(f"{where}.{k}: expected a single value")
            out[str(k)] = (
                "" if v is None else ("true" if v is True else "false" if v is False else str(v))
            )
        return out
    if isinstance(value, list):
        out = {}
        for item in value:
            k, _, v = str(item).partition("=")
            out[k] = v
        return out
    raise ComposeFileError(f"{where}: expected a mapping or a list of KEY=VALUE")


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _extra_hosts(value: Any, where: str) -> list[str]:
    """extra_hosts as the engine takes them: ["NAME:ADDRESS", ...]. Compose writes a list of
    NAME:ADDRESS (or NAME=ADDRESS) or a mapping; ADDRESS is an IP or `host-gateway`."""
    import ipaddress

    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        for item in value:
            sep = "=" if "=" in item else ":"
            name, _, addr = item.partition(sep)
            pairs.append((name, addr))
    else:
        raise ComposeFileError(f"{where}: expected a list of NAME:ADDRESS or a mapping")
    out = []
    for name, addr in pairs:
        if not _HOST_NAME.fullmatch(name):
            raise ComposeFileError(f"{where}: {name!r} is not a host name")
        if addr != "host-gateway":
            try:
                addr = ipaddress.ip_address(addr.strip("[]")).compressed
            except ValueError:
                raise ComposeFileError(
                    f"{where}.{name}: {addr!r} is not an IP address or host-gateway"
                ) from None
        out.append(f"{name}:{addr}")
    return out


def _dict(value: Any, where: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ComposeFileError(f"{where}: expected a mapping")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ComposeFileError(f"{where}: expected a list")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ComposeFileError(f"{where}: expected a number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ComposeFileError(f"{where}: expected a number, got {value!r}") from None


def _check_keys(node: Any, where: str) -> None:
    """Every key in a compose file is a string (YAML also allows numbers, booleans, null)."""
    from composegen.files import non_string_key

    found = non_string_key(node)
    if found is not None:
        path, k = found
        at = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")
        raise ComposeFileError(f"{at or '(top level)'}: key {k!r} must be a string")


def _port(value: Any, where: str) -> Port:
    if isinstance(value, int):
        return Port("", None, value)
    if isinstance(value, dict):
        try:
            return Port(
                str(value.get("host_ip", "")),
                int(value["published"]) if value.get("published") else None,
                int(value["target"]),
                str(value.get("protocol", "tcp")),
            )
        except (KeyError, ValueError, TypeError, OverflowError):
            raise ComposeFileError(f"{where}: needs target (and published) ports") from None
    text = str(value)
    proto = "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
    parts = text.rsplit(":", 2) if not text.startswith("[") else re.split(r"(?<=\]):", text)
    try:
        if len(parts) == 1:
            return Port("", None, int(parts[0]), proto)
        if len(parts) == 2:
            return Port("", int(parts[0]) if parts[0] else None, int(parts[1]), proto)
        return Port(parts[0].strip("[]"), int(parts[1]) if parts[1] else None, int(parts[2]), proto)
    except ValueError:
        raise ComposeFileError(
            f"{where}: cannot read port {value!r} (ranges are not supported)"
        ) from None


def _mount(value: Any, directory: Path, where: str) -> Mount:
    if isinstance(value, dict):
        kind = value.get("type", "volume")
        if kind not in ("volume", "bind"):
            raise ComposeFileError(f"{where}: mount type {kind!r} is not supported")
        source, target = str(value.get("source", "")), str(value.get("target", ""))
        ro = bool(value.get("read_only", False))
    else:
        parts = str(value).split(":")
        if len(parts) == 1:
            raise ComposeFileError(f"{where}: anonymous volumes are not supported ({value!r})")
        source, target = parts[0], parts[1]
        opts = parts[2].split(",") if len(parts) > 2 else []
        ro = "ro" in opts
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    if not target.startswith("/"):
        raise ComposeFileError(f"{where}: target {target!r} must be an absolute path")
    if kind == "bind":
        path = Path(os.path.expanduser(source))
        source = str(path if path.is_absolute() else (directory / path).resolve())
    return Mount(source, target, ro, kind == "bind")


_RESTART = {"no": "", "always": "always", "unless-stopped": "unless-stopped"}
# deploy.restart_policy.condition -> the engine's restart policy (what Compose 1.29 applies)
_CONDITION = {"none": "", "on-failure": "on-failure", "any": "always"}


def _restart(value: Any, where: str) -> tuple[str, int]:
    """`restart:` as the engine's (Name, MaximumRetryCount); Name "" is no policy."""
    text = str(value)
    if text in _RESTART:
        return _RESTART[text], 0
    m = re.fullmatch(r"on-failure(?::(\d+))?", text)
    if m is None:
        raise ComposeFileError(
            f"{where}: expected no, always, unless-stopped or on-failure[:N], got {value!r}"
        )
    return "on-failure", int(m.group(1) or 0)


@dataclass(frozen=True)
class _Deploy:
    gpus: tuple[Gpu, ...] = ()
    mem: str | None = None
    cpus: int | None = None
    pids: int | None = None
    restart: tuple[str, int] | None = None


def _mounts(value: Any, directory: Path, where: str) -> tuple[Mount, ...]:
    """Every mount, in order: one source may be mounted at several targets; two mounts on one
    target are an error, as in Compose ("Duplicate mount points")."""
    mounts: list[Mount] = []
    for i, v in enumerate(_list(value, where)):
        m = _mount(v, directory, f"{where}[{i}]")
        for j, other in enumerate(mounts):
            if other.target == m.target:
                raise ComposeFileError(
                    f"{where}[{i}]: duplicate mount point {m.target} (also {where}[{j}])"
                )
        mounts.append(m)
    return tuple(mounts)


def _deploy(deploy: Any, where: str) -> _Deploy:
    if deploy is None:
        return _Deploy()
    if not isinstance(deploy, dict):
        raise ComposeFileError(f"{where}: expected a mapping")
    for key in deploy:
        if key not in ("resources", "restart_policy"):
            raise ComposeFileError(f"{where}.{key}: not supported by composegen up")
    restart = None
    if "restart_policy" in deploy:
        at = f"{where}.restart_policy"
        policy = _dict(deploy["restart_policy"], at)
        for key in policy:
            if key not in ("condition", "max_attempts"):
                raise ComposeFileError(
                    f"{at}.{key}: not supported by composegen up (the engine restarts a "
                    "container with its own back-off; only condition and max_attempts apply)"
                )
        condition = policy.get("condition", "any")
        if condition not in _CONDITION:
            raise ComposeFileError(
                f"{at}.condition: expected none, on-failure or any, got {condition!r}"
            )
        attempts = _int(policy.get("max_attempts", 0), f"{at}.max_attempts")
        if attempts and condition != "on-failure":
            raise ComposeFileError(
                f"{at}.max_attempts: the engine counts attempts only with condition: on-failure"
            )
        restart = (_CONDITION[condition], attempts)
    res = _dict(deploy.get("resources"), f"{where}.resources")
    for key in res:
        if key not in ("limits", "reservations"):
            raise ComposeFileError(f"{where}.resources.{key}: not supported by composegen up")
    limits = _dict(res.get("limits"), f"{where}.resources.limits")
    for key in limits:
        if key not in ("memory", "cpus", "pids"):
            raise ComposeFileError(f"{where}.resources.limits.{key}: not supported")
    mem = str(limits["memory"]) if "memory" in limits else None
    pids = _int(limits["pids"], f"{where}.resources.limits.pids") if "pids" in limits else None
    cpus = None
    if "cpus" in limits:
        try:
            cpus = int(float(limits["cpus"]) * 1e9)
        except (TypeError, ValueError, OverflowError):
            raise ComposeFileError(
                f"{where}.resources.limits.cpus: expected a number, got {limits['cpus']!r}"
            ) from None
    gpus = []
    reservations = _dict(res.get("reservations"), f"{where}.resources.reservations")
    for key in reservations:
        if key != "devices":
            raise ComposeFileError(f"{where}.resources.reservations.{key}: not supported")
    devices = _list(reservations.get("devices"), f"{where}.resources.reservations.devices")
    for i, dev in enumerate(devices):
        at = f"{where}.resources.reservations.devices[{i}]"
        if not isinstance(dev, dict):
            raise ComposeFileError(f"{at}: expected a mapping")
        for key in dev:
            if key not in ("driver", "count", "device_ids", "capabilities", "options"):
                raise ComposeFileError(f"{at}.{key}: not supported by composegen up")
        if "count" in dev and "device_ids" in dev:
            raise ComposeFileError(f"{at}: count and device_ids exclude each other")
        count = dev.get("count")
        if not (count in (None, "all") or (isinstance(count, int) and not isinstance(count, bool))):
            raise ComposeFileError(f"{at}.count: expected a number or 'all', got {count!r}")
        for key in ("device_ids", "capabilities"):
            if key in dev and not isinstance(dev[key], list):
                raise ComposeFileError(f"{at}.{key}: expected a list")
        gpus.append(
            Gpu(
                driver=str(dev.get("driver", "nvidia")),
                device_ids=tuple(str(d) for d in dev["device_ids"])
                if "device_ids" in dev
                else None,
                count=-1 if count == "all" else (int(count) if count is not None else None),
                capabilities=tuple(str(c) for c in dev.get("capabilities", ["gpu"])),
                options=tuple(sorted(_mapping(dev.get("options"), f"{at}.options").items())),
            )
        )
    return _Deploy(tuple(gpus), mem, cpus, pids, restart)


_HEALTHCHECK_KEYS = frozenset(
    {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
)


def _healthcheck(value: Any, where: str) -> Healthcheck | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ComposeFileError(f"{where}: expected a mapping")
    for key in value:
        if key not in _HEALTHCHECK_KEYS:
            raise ComposeFileError(f"{where}.{key}: not supported by composegen up")
    if value.get("disable"):
        return None
    test = value.get("test")
    if test is None:
        return None
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if not isinstance(test, list) or not test:
        raise ComposeFileError(f"{where}.test: expected a list")
    if test[0] == "NONE":
        return None
    if test[0] not in ("CMD", "CMD-SHELL"):
        raise ComposeFileError(f"{where}.test: must start with CMD, CMD-SHELL or NONE")
    return Healthcheck(
        test=tuple(str(t) for t in test),
        interval_s=duration_s(value.get("interval", "30s"), f"{where}.interval"),
        timeout_s=duration_s(value.get("timeout", "30s"), f"{where}.timeout"),
        retries=_int(value.get("retries", 3), f"{where}.retries"),
        start_period_s=duration_s(value.get("start_period", "0s"), f"{where}.start_period"),
        start_interval_s=duration_s(value["start_interval"], f"{where}.start_interval")
        if "start_interval" in value
        else None,
    )


def _depends(value: Any, names: set[str], where: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(d, str) for d in value):
        deps = {d: "service_started" for d in value}
    elif isinstance(value, dict) and all(isinstance(v, dict) or v is None for v in value.values()):
        deps = {d: str((v or {}).get("condition", "service_started")) for d, v in value.items()}
    else:
        raise ComposeFileError(f"{where}: expected a list of services or a mapping")
    for dep, cond in deps.items():
        if dep not in names:
            raise ComposeFileError(f"{where}: depends on unknown service {dep!r}")
        if cond not in ("service_started", "service_healthy", "service_completed_successfully"):
            raise ComposeFileError(f"{where}.{dep}.condition: unknown condition {cond!r}")
    return deps


def _service(
    name: str, raw: dict[str, Any], directory: Path, names: set[str], nets: set[str]
) -> Service:
    where = f"services.{name}"
    if not isinstance(raw, dict):
        raise ComposeFileError(f"{where}: expected a mapping")
    unknown = sorted(k for k in raw if k not in SUPPORTED_SERVICE_KEYS and not k.startswith("x-"))
    if unknown:
        raise ComposeFileError(
            f"{where}.{unknown[0]}: this compose key is not supported by composegen up",
            "remove it, or start this file with docker compose",
        )
    if "image" not in raw:
        raise ComposeFileError(f"{where}: no image (building is not supported by composegen up)")
    dep = _deploy(raw.get("deploy"), f"{where}.deploy")
    restart = _restart(raw.get("restart", "no"), f"{where}.restart")
    if dep.restart is not None:  # as in Compose, deploy.restart_policy wins over restart:
        restart = dep.restart
    pids = _int(raw["pids_limit"], f"{where}.pids_limit") if "pids_limit" in raw else None
    if dep.pids is not None:
        if pids is not None and pids != dep.pids:
            raise ComposeFileError(
                f"{where}.deploy.resources.limits.pids: {dep.pids} contradicts pids_limit: {pids}"
            )
        pids = dep.pids
    networks_raw = raw.get("networks") or ["default"]
    if not isinstance(networks_raw, (list, dict)) or not all(
        isinstance(n, str) for n in networks_raw
    ):
        raise ComposeFileError(f"{where}.networks: expected a list of networks or a mapping")
    networks = tuple(networks_raw if isinstance(networks_raw, list) else networks_raw.keys())
    aliases: dict[str, tuple[str, ...]] = {}
    if isinstance(networks_raw, dict):
        for net, spec in networks_raw.items():
            spec = _dict(spec, f"{where}.networks.{net}")
            for key in spec:
                if key != "aliases":
                    raise ComposeFileError(f"{where}.networks.{net}.{key}: not supported")
            aliases[net] = tuple(
                str(a) for a in _list(spec.get("aliases"), f"{where}.networks.{net}.aliases")
            )
    for n in networks:
        if n not in nets:
            raise ComposeFileError(f"{where}.networks: network {n!r} is not declared")
    ulimits: dict[str, tuple[int, int]] = {}
    for key, val in _dict(raw.get("ulimits"), f"{where}.ulimits").items():
        at = f"{where}.ulimits.{key}"
        if isinstance(val, dict):
            if not {"soft", "hard"} <= set(val):
                raise ComposeFileError(f"{at}: needs soft and hard")
            ulimits[key] = (_int(val["soft"], f"{at}.soft"), _int(val["hard"], f"{at}.hard"))
        else:
            ulimits[key] = (_int(val, at), _int(val, at))
    extra: dict[str, Any] = {k: raw[k] for k in _EXTRA_KEYS if k in raw}
    if "extra_hosts" in raw:
        extra["extra_hosts"] = _extra_hosts(raw["extra_hosts"], f"{where}.extra_hosts")
    return Service(
        name=name,
        image=str(raw["image"]),
        command=_strings(raw["command"], f"{where}.command") if "command" in raw else None,
        entrypoint=_strings(raw["entrypoint"], f"{where}.entrypoint")
        if "entrypoint" in raw
        else None,
        environment=_mapping(raw.get("environment"), f"{where}.environment"),
        ports=tuple(
            _port(p, f"{where}.ports[{i}]")
            for i, p in enumerate(_list(raw.get("ports"), f"{where}.ports"))
        ),
        mounts=_mounts(raw.get("volumes"), directory, f"{where}.volumes"),
        networks=networks,
        healthcheck=_healthcheck(raw.get("healthcheck"), f"{where}.healthcheck"),
        restart=str(raw.get("restart", "no")),
        restart_policy=restart,
        pids_limit=pids,
        labels=_mapping(raw.get("labels"), f"{where}.labels"),
        depends_on=_depends(raw.get("depends_on"), names, f"{where}.depends_on"),
        gpus=dep.gpus,
        shm_size=str(raw["shm_size"]) if "shm_size" in raw else None,
        mem_limit=dep.mem,
        nano_cpus=dep.cpus,
        security_opt=tuple(str(s) for s in _list(raw.get("security_opt"), f"{where}.security_opt")),
        ulimits=ulimits,
        stop_grace_s=duration_s(raw.get("stop_grace_period", "10s"), f"{where}.stop_grace_period"),
        extra=extra,
        aliases=aliases,
        raw=raw,
    )


def project_name(
    explicit: str | None, env: Mapping[str, str], data: Mapping[str, Any], directory: Path
) -> str:
    name = explicit or env.get("COMPOSE_PROJECT_NAME") or data.get("name") or directory.name
    norm = re.sub(r"[^a-z0-9_-]", "", str(name).lower())
    if not norm or not norm[0].isalnum():
        raise ComposeFileError(f"project name {name!r} is not usable", "pass -p NAME")
    return norm


def active_profiles(
    env: Mapping[str, str], profiles: Sequence[str] | None = None
) -> frozenset[str]:
    """The profiles in force: `profiles` when given, else COMPOSE_PROFILES (comma-separated)."""
    names = list(profiles) if profiles is not None else env.get(PROFILES_ENV, "").split(",")
    out = set()
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name != "*" and not _PROFILE_NAME.fullmatch(name):
            where = "a profile" if profiles is not None else PROFILES_ENV
            raise ComposeFileError(
                f"{where}: {name!r} is not a profile name",
                "profile names are letters, digits, _ . - (e.g. COMPOSE_PROFILES=monitor)",
            )
        out.add(name)
    return frozenset(out)


def service_profiles(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ComposeFileError(f"{where}: expected a list of profile names")
    for p in raw:
        if not _PROFILE_NAME.fullmatch(p):
            raise ComposeFileError(f"{where}: {p!r} is not a profile name")
    return tuple(raw)


def load_project(
    file: Path,
    name: str | None = None,
    env_dir: Path | None = None,
    profiles: Sequence[str] | None = None,
) -> Project:
    """The project of a compose file. `profiles`: the active Compose profiles (None: from
    COMPOSE_PROFILES in the environment or .env)."""
    import yaml

    if file.is_dir():
        file = file / "docker-compose.yml"
    directory = file.parent.resolve()
    from composegen.files import TooLargeError, read_bounded

    try:
        text = read_bounded(file, MAX_COMPOSE_BYTES).decode("utf-8")  # a device has no end
    except TooLargeError:
        raise ComposeFileError(f"{file}: larger than {MAX_COMPOSE_BYTES} bytes") from None
    except FileNotFoundError:
        raise ComposeFileError(
            f"{file}: no such file", "render one with `composegen render`, or pass -f FILE"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ComposeFileError(f"{file}: cannot read it: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ComposeFileError(f"{file}: invalid YAML{at}: {problem}") from None
    except RecursionError:
        raise ComposeFileError(f"{file}: invalid YAML: nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ComposeFileError(f"{file}: no services: mapping")
    for key in data:
        if key not in SUPPORTED_TOP_KEYS and not str(key).startswith("x-"):
            raise ComposeFileError(
                f"{file}: top-level key {key!r} is not supported by composegen up"
            )
    env = {**read_dotenv((env_dir or directory) / ".env"), **os.environ}
    with _in_file(file):
        _check_keys(data, "")
        data = _interp_tree(data, env, "")
    pname = project_name(name, env, data, directory)
    with _in_file(file):
        return _project(file, directory, pname, data, active_profiles(env, profiles))


@contextlib.contextmanager
def _in_file(file: Path) -> Iterator[None]:
    """An error found inside the file names the file first: FILE: services.a.key: problem."""
    try:
        yield
    except ComposeFileError as exc:
        message = exc.message if exc.message.startswith(f"{file}:") else f"{file}: {exc.message}"
        # Paths are built from the file's own keys, which may hold a newline: keep one line.
        printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        raise ComposeFileError(printable, exc.hint) from None


def _split_profiles(
    services: dict[str, Any], active: frozenset[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the services in force, the ones whose profiles are all inactive)."""
    on: dict[str, Any] = {}
    off: dict[str, Any] = {}
    for name, raw in services.items():
        where = f"services.{name}.profiles"
        own = service_profiles(raw.get("profiles") if isinstance(raw, dict) else None, where)
        if not own or "*" in active or active & set(own):
            on[name] = raw
        else:
            off[name] = raw
    for name, raw in on.items():
        deps = raw.get("depends_on") if isinstance(raw, dict) else None
        for dep in deps if isinstance(deps, (list, dict)) else ():
            if isinstance(dep, str) and dep in off:
                profs = ", ".join(service_profiles(off[dep].get("profiles"), dep))
                raise ComposeFileError(
                    f"services.{name}.depends_on: {dep} is in profile {profs}, which is not active",
                    f"set {PROFILES_ENV}={profs.split(', ')[0]}, or remove the dependency",
                )
    return on, off


def _uses(raw: Any, key: str) -> set[str]:
    """The networks (key "networks") or named volumes (key "volumes") a raw service uses."""
    if not isinstance(raw, dict):
        return set()
    value = raw.get(key)
    if key == "networks":
        if isinstance(value, (list, dict)):
            return {str(n) for n in value}
        return {"default"}
    out = set()
    for v in value if isinstance(value, list) else ():  # a malformed value: _service says so
        src = v.get("source") if isinstance(v, dict) else str(v).split(":", 1)[0]
        if src:
            out.add(str(src))
    return out


def _project(
    file: Path,
    directory: Path,
    pname: str,
    data: dict[str, Any],
    active: frozenset[str] = frozenset(),
) -> Project:
    on, off = _split_profiles(data["services"], active)
    if off:
        # what only the inactive services use is left out too (Compose creates neither)
        nets_on = set().union(*(_uses(r, "networks") for r in on.values()))
        vols_on = set().union(*(_uses(r, "volumes") for r in on.values()))
        nets_off = set().union(*(_uses(r, "networks") for r in off.values())) - nets_on
        vols_off = set().union(*(_uses(r, "volumes") for r in off.values())) - vols_on
        data = dict(data, services=on)
        if isinstance(data.get("networks"), dict):
            data["networks"] = {k: v for k, v in data["networks"].items() if k not in nets_off}
        if isinstance(data.get("volumes"), dict):
            data["volumes"] = {k: v for k, v in data["volumes"].items() if k not in vols_off}
    nets_raw = _dict(data.get("networks"), "networks")
    networks = [Network("default")] if "default" not in nets_raw else []
    for nname, spec in nets_raw.items():
        spec = _dict(spec, f"networks.{nname}")
        for key in spec:
            if key not in ("internal", "driver", "labels"):
                raise ComposeFileError(f"{file}: networks.{nname}.{key}: not supported")
        networks.append(
            Network(
                nname,
                bool(spec.get("internal", False)),
                str(spec.get("driver", "bridge")),
                _mapping(spec.get("labels"), f"networks.{nname}.labels"),
            )
        )
    vols_raw = _dict(data.get("volumes"), "volumes")
    volumes = []
    for vname, spec in vols_raw.items():
        spec = _dict(spec, f"volumes.{vname}")
        for key in spec:
            if key != "labels":
                raise ComposeFileError(f"{file}: volumes.{vname}.{key}: not supported")
        volumes.append(Volume(vname, _mapping(spec.get("labels"), f"volumes.{vname}.labels")))
    names = set(data["services"])
    netnames = {n.name for n in networks}
    services = tuple(
        _service(n, s, directory, names, netnames) for n, s in data["services"].items()
    )
    declared = {v.name for v in volumes}
    used_default = any("default" in s.networks for s in services)
    for s in services:
        for m in s.mounts:
            if not m.bind and m.source not in declared:
                raise ComposeFileError(
                    f"services.{s.name}.volumes: volume {m.source!r} is not "
                    "declared under top-level volumes:"
                )
    if not used_default:
        networks = [n for n in networks if n.name != "default" or "default" in nets_raw]
    _check_cycles(services)
    return Project(
        pname, directory, file, services, tuple(networks), tuple(volumes), tuple(sorted(off))
    )


def _check_cycles(services: tuple[Service, ...]) -> None:
    deps = {s.name: set(s.depends_on) for s in services}
    seen: set[str] = set()
    while deps:
        ready = [n for n, d in deps.items() if d <= seen]
        if not ready:
            raise ComposeFileError(f"depends_on has a cycle among: {', '.join(sorted(deps))}")
        for n in ready:
            seen.add(n)
            del deps[n]


def levels(project: Project) -> list[list[Service]]:
    """Start order: each level depends only on earlier ones; a level starts in parallel."""
    done: set[str] = set()
    left = list(project.services)
    out: list[list[Service]] = []
    while left:
        level = [s for s in left if set(s.depends_on) <= done]
        out.append(level)
        done |= {s.name for s in level}
        left = [s for s in left if s.name not in done]
    return out
