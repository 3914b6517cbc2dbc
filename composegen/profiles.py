"""Profiles: YAML files validated against a JSON Schema shipped in the package.

A profile names a stack's services, their images, models and VRAM needs, ports, health checks,
gateway routes and CPU fallbacks, and the reference hardware it is planned against when there
is no GPU. Overrides (`--set`, `--values`, `--image`) are applied to the raw data before it is
validated, so a bad override is reported like a bad profile: file, path, what is wrong.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from composegen.errors import BadInputError
from composegen.inventory import Gpu, Inventory
from composegen.resources import profiles_dir

SCHEMA_ID = "composegen/profile/v1"
MAX_YAML_BYTES = 8 * 1024 * 1024
ENV_PATH = "COMPOSEGEN_PROFILES_PATH"

Kind = Literal["ollama", "vllm", "http"]
OnShort = Literal["refuse", "cpu", "drop"]


class ProfileError(BadInputError):
    pass


@dataclass(frozen=True)
class Model:
    name: str
    vram_mib: int
    # What the profile knows of the model (checked against the command at load, see
    # profile_checks.check_model_facts); None / () / False: not recorded.
    public_name: str | None = None  # the name clients use, when this model stands in for another
    context_length: int | None = None  # positions the model supports (max_position_embeddings)
    trust_remote_code: bool = False  # its code is in the repository: vLLM needs the flag
    architecture: str | None = None  # e.g. Qwen2ForCausalLM, BertModel
    servers: tuple[str, ...] = ()  # which servers can serve it: vllm, tei, ollama, speaches
    revision: str | None = None  # a Hugging Face branch, tag or commit; None: the default branch


@dataclass(frozen=True)
class Health:
    path: str | None = None
    interval: str = "30s"
    timeout: str = "5s"
    retries: int = 3
    start_period: str = "30s"
    healthy_after: int = 1


@dataclass(frozen=True)
class CpuVariant:
    image: str
    models: tuple[Model, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    cpus: float | None = None
    memory_mib: int | None = None


@dataclass(frozen=True)
class GpuNeed:
    count: int = 1
    vram_mib: int | None = None  # per GPU; None: the models' sum spread over `count`
    nvlink: bool = False
    prefer: Literal["first", "largest"] = "first"
    share: bool = False
    share_when_short: bool = False
    replicas: int | Literal["per-gpu", "tiers"] = 1
    on_short: OnShort = "refuse"
    # `verify` accepts an Ollama model partly on the CPU (size_vram < size) on this service
    allow_partial_offload: bool = False


@dataclass(frozen=True)
class Service:
    name: str
    kind: Kind
    image: str  # a key of Profile.images
    port: int
    description: str = ""
    enabled: bool = True
    group: str = ""
    role: str = "app"
    port_per_instance: bool = False
    models: tuple[Model, ...] = ()
    gpu: GpuNeed | None = None
    alternatives: tuple[tuple[Model, ...], ...] = ()
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    shm_size: str | None = None
    volumes: tuple[str, ...] = ()
    health: Health = Health()
    route: str | None = None
    depends_on: tuple[str, ...] = ()
    max_concurrency: int | None = None
    memory_mib: int | None = None
    cpus: float | None = None
    cpu: CpuVariant | None = None
    server: str = ""  # vllm, tei, ollama, speaches, other; "" = from kind

    @property
    def server_kind(self) -> str:
        """The server this service runs: `server:` if set, else vllm/ollama from its kind."""
        return self.server or {"vllm": "vllm", "ollama": "ollama"}.get(self.kind, "other")

    def vram_per_gpu(self, models: tuple[Model, ...] | None = None) -> int:
        need = self.gpu or GpuNeed()
        if need.vram_mib is not None and models is None:
            return need.vram_mib
        total = sum(m.vram_mib for m in (self.models if models is None else models))
        return -(-total // need.count)


@dataclass(frozen=True)
class RefGpu:
    name: str
    memory_mib: int
    count: int = 1
    compute_capability: str | None = None


@dataclass(frozen=True)
class Reference:
    name: str
    gpus: tuple[RefGpu, ...]
    driver_version: str | None = None
    cuda_version: str | None = None
    nvlink: Literal["all", "none"] = "none"


@dataclass(frozen=True)
class Gateway:
    image: str = "nginx"
    port: int = 8080
    api_key: str | None = None
    max_fails: int = 3
    fail_timeout_s: int = 30
    read_timeout_s: int = 600


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    reference: Reference
    images: Mapping[str, str]
    services: tuple[Service, ...]
    seed: str = ""
    headroom: float = 0.10
    spare_gpus: int = 0
    spares: str | None = None  # over a fleet: per-node or fleet; None: as the fleet file says
    instance_tiers: tuple[tuple[int, int], ...] = ((24576, 3), (16384, 2), (0, 1))
    gateway: Gateway = Gateway()
    tunables: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()
    path: str = ""
    # `watch:` as written (schema-checked, durations still "10m" text); composegen.watch.settings
    # .thresholds_for turns it into Thresholds
    watch: Mapping[str, Any] = field(default_factory=dict)

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def enabled_services(self) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.enabled)

    def reference_inventory(self) -> Inventory:
        gpus: list[Gpu] = []
        for ref in self.reference.gpus:
            for _ in range(ref.count):
                gpus.append(
                    Gpu(
                        index=len(gpus),
                        name=ref.name,
                        memory_total_mib=ref.memory_mib,
                        memory_used_mib=0,
                        memory_free_mib=ref.memory_mib,
                        compute_capability=ref.compute_capability,
                    )
                )
        if self.reference.nvlink == "all" and len(gpus) > 1:
            from dataclasses import replace

            every = [g.index for g in gpus]
            gpus = [replace(g, nvlink_peers=tuple(i for i in every if i != g.index)) for g in gpus]
        return Inventory(
            source=f"reference:{self.name}",
            gpus=tuple(gpus),
            driver_version=self.reference.driver_version,
            cuda_version=self.reference.cuda_version,
        )


# --- loading ----------------------------------------------------------------------------------


def _schema_text() -> str:
    return (Path(__file__).with_name("schemas") / "profile.schema.json").read_text(encoding="utf-8")


def _schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_schema_text())
    return data


def _where(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _say(error: Any) -> str:
    """jsonschema's error in the words a user needs."""
    v = error.validator
    if v == "minimum":
        return f"must be >= {error.validator_value}"
    if v == "maximum":
        return f"must be <= {error.validator_value}"
    if v == "exclusiveMinimum":
        return f"must be > {error.validator_value}"
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"must be {'an' if str(want)[0] in 'aeiou' else 'a'} {want}, not {error.instance!r}"
    if v == "required":
        return error.message.replace("is a required property", "is required")  # type: ignore[no-any-return]
    if v == "additionalProperties":
        known = error.schema.get("properties", {})
        extra = sorted(set(error.instance) - set(known))
        if not extra:
            return "unknown key"
        import difflib

        close = difflib.get_close_matches(extra[0], list(known), n=1)
        return f"unknown key {extra[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if v == "enum":
        return (
            f"must be one of {', '.join(map(str, error.validator_value))}, not {error.instance!r}"
        )
    if v == "const":
        return f"must be {error.validator_value!r}"
    if v == "pattern":
        said = str(error.schema.get("description", ""))
        if said.startswith("a duration"):  # watch's durations: say what one looks like
            return f"{error.instance!r} is not {said.split(';')[0]}"
        return f"{error.instance!r} does not match {error.validator_value}"
    if v in ("minItems", "minProperties"):
        return "must not be empty"
    if v == "oneOf":
        return f"{error.instance!r} is not valid here"
    return str(error.message)


# Salts the validation cache key: bump it when _validate_schema changes what it accepts.
_VALIDATOR_VERSION = b"strict-integers"


def _check_keys(node: Any, where: str) -> None:
    """YAML allows keys that are numbers, null or booleans; a profile's keys are all strings."""
    from composegen.files import non_string_key

    found = non_string_key(node)
    if found is not None:
        path, k = found
        raise ProfileError(f"{where}: {_where(path)}: key {k!r} must be a string")


def validate(data: Any, where: str, sources: Sequence[bytes] | None = None) -> None:
    """Schema and reference checks. `sources` are the bytes `data` was made from (the profile
    file, each --values file, each --set and --image): with them the schema check is skipped
    when the same bytes passed it before. The key is bytes, not the parsed data: a YAML date
    and the same text quoted parse to values that print alike but differ."""
    from composegen import cache

    _check_keys(data, where)
    digest = (
        cache.key(_schema_text().encode(), _VALIDATOR_VERSION, *sources)
        if sources is not None
        else None
    )
    if digest is None or not cache.seen("valid-profile", digest):
        _validate_schema(data, where)
        if digest is not None:
            cache.remember("valid-profile", digest)
    _check_references(data, where)


def _validate_schema(data: Any, where: str, schema: dict[str, Any] | None = None) -> None:
    import jsonschema

    # JSON Schema counts 2.0 as an integer; the planner needs real ints (range(), indices).
    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    strict_validator = jsonschema.validators.extend(base, type_checker=strict)  # type: ignore[no-untyped-call]
    validator = strict_validator(schema or _schema())
    errors = sorted(
        validator.iter_errors(data), key=lambda e: (len(e.path), list(map(str, e.path)))
    )
    if errors:
        best = jsonschema.exceptions.best_match(errors) or errors[0]
        raise ProfileError(f"{where}: {_where(best.absolute_path)}: {_say(best)}")


def validate_watch(section: Any, where: str) -> None:
    """`section` against the schema's `watch:` part alone (a `--set watch.KEY=VALUE` of
    `composegen watch`): the same types and bounds as in a profile, errors naming `where`."""
    root = _schema()
    _validate_schema({"watch": section}, where, {"$defs": root["$defs"], **_watch_schema(root)})


def _watch_schema(root: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {"watch": root["properties"]["watch"]},
    }


def _check_watch(data: dict[str, Any], where: str) -> None:
    """What the schema cannot say of `watch:`: durations above 0 and at most 30 days, the
    memory warn level below the critical one (with the defaults filled in)."""
    section = data.get("watch")
    if not section:
        return
    from composegen.watch.settings import check_section

    try:
        check_section(section, where)
    except BadInputError as exc:  # a ProfileError, so that a bad --set is named (load)
        raise ProfileError(exc.message, exc.hint) from None


def _check_references(data: dict[str, Any], where: str) -> None:
    images = data["images"]
    services = data["services"]
    gateway_image = (data.get("gateway") or {}).get("image", "nginx")
    if gateway_image not in images:
        raise ProfileError(f"{where}: gateway.image: unknown image key {gateway_image!r}")
    routes: dict[str, str] = {}
    volumes = set((data.get("volumes") or {}).keys())
    for name, svc in services.items():
        for key, value in (
            ("image", svc["image"]),
            ("cpu.image", (svc.get("cpu") or {}).get("image")),
        ):
            if value is not None and value not in images:
                raise ProfileError(
                    f"{where}: services.{name}.{key}: unknown image key {value!r} "
                    f"(images has: {', '.join(sorted(images))})"
                )
        for dep in svc.get("depends_on", []):
            if dep not in services:
                raise ProfileError(f"{where}: services.{name}.depends_on: no service {dep!r}")
            if dep == name:
                raise ProfileError(f"{where}: services.{name}.depends_on: depends on itself")
        route = svc.get("route")
        group = svc.get("group", name)
        if route is not None:
            if route in routes and routes[route] != group:
                raise ProfileError(
                    f"{where}: services.{name}.route: {route} is already the route of "
                    f"services.{routes[route]}"
                )
            routes[route] = group
        for i, vol in enumerate(svc.get("volumes", [])):
            vname = vol.split(":", 1)[0].replace("{instance}", "")
            if vname not in volumes and not vol.split(":", 1)[0].endswith("{instance}"):
                raise ProfileError(
                    f"{where}: services.{name}.volumes[{i}]: volume {vname!r} is not declared "
                    "under volumes:"
                )
        gpu = svc.get("gpu") or {}
        if gpu.get("vram_mib") is None and gpu and not svc.get("models"):
            raise ProfileError(f"{where}: services.{name}.gpu.vram_mib: required without models")
    gw_port = (data.get("gateway") or {}).get("port", 8080)
    if not 1 <= gw_port <= 65535:
        raise ProfileError(f"{where}: gateway.port: must be between 1 and 65535")
    _check_planner_rules(data, where)
    _check_watch(data, where)


def _check_planner_rules(data: dict[str, Any], where: str) -> None:
    """What the planner needs beyond the schema: a floor tier, a CPU variant for on_short: cpu."""
    tiers = (data.get("planner") or {}).get("instance_tiers") or []
    floors = [t["min_mib"] for t in tiers]
    if tiers and 0 not in floors:
        raise ProfileError(
            f"{where}: planner.instance_tiers: no tier has min_mib: 0, so a GPU smaller than "
            f"{min(floors)} MiB would have no tier",
            "add {min_mib: 0, instances: 1} (the floor every GPU falls into)",
        )
    if len(set(floors)) != len(floors):
        dup = next(f for f in floors if floors.count(f) > 1)
        raise ProfileError(f"{where}: planner.instance_tiers: min_mib {dup} appears twice")
    for name, svc in data["services"].items():
        gpu = svc.get("gpu") or {}
        if gpu.get("on_short") == "cpu" and not svc.get("cpu"):
            raise ProfileError(
                f"{where}: services.{name}.gpu.on_short: 'cpu' needs a CPU variant, and "
                f"services.{name} has no cpu: block",
                f"add services.{name}.cpu: {{image: IMAGE_KEY, models: [...]}}, or set "
                f"services.{name}.gpu.on_short to drop or refuse",
            )


# --- overrides --------------------------------------------------------------------------------


def parse_assignment(text: str, option: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` -> (["a","b","c"], value), VALUE read as a YAML scalar."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise BadInputError(
            f"{option} {text!r}: expected KEY=VALUE", f"e.g. {option} planner.headroom=0.2"
        )
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise BadInputError(f"{option} {text!r}: empty part in key {key!r}")
    raw = raw.strip()
    value: Any = raw
    if raw:
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)) and not raw.startswith(("{", "[")):
            value = raw
    if isinstance(value, (dict, list)):
        raise BadInputError(
            f"{option} {text!r}: VALUE must be a single value, not a mapping or list"
        )
    return parts, value


def apply_set(data: dict[str, Any], parts: list[str], value: Any, option: str) -> None:
    cur: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = cur.get(part) if isinstance(cur, dict) else None
        if nxt is None:
            if not isinstance(cur, dict):
                raise BadInputError(f"{option}: {'.'.join(parts[: i + 1])} is not a mapping")
            nxt = {}
            cur[part] = nxt
        if not isinstance(nxt, dict):
            raise BadInputError(
                f"{option}: {'.'.join(parts[: i + 1])} is a {type(nxt).__name__}, not a mapping"
            )
        cur = nxt
    cur[parts[-1]] = value


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


@dataclass(frozen=True)
class Overrides:
    sets: tuple[str, ...] = ()
    values_files: tuple[str, ...] = ()
    images: tuple[str, ...] = ()


def apply_overrides(
    data: dict[str, Any], ov: Overrides, where: str, sources: list[bytes] | None = None
) -> dict[str, Any]:
    """`data` with the overrides merged in; each override's values are checked first, so an
    error names the --values file or the --set that brought the bad value. The bytes read are
    appended to `sources` (see validate)."""
    from composegen.profile_checks import check_source, set_layer

    out = copy.deepcopy(data)
    for path in ov.values_files:
        extra = _read_yaml(path, sources)
        if not isinstance(extra, dict):
            raise BadInputError(f"{path}: --values file must hold a mapping")
        check_source(extra, path)
        deep_merge(out, extra)
    for text in ov.sets:
        parts, value = parse_assignment(text, "--set")
        apply_set(out, parts, value, f"--set {text!r}")
        check_source(set_layer(parts, value), f"--set {text!r}")
    images = out.get("images")
    for text in ov.images:
        key, sep, image = text.partition("=")
        if not sep or not key or not image:
            raise BadInputError(
                f"--image {text!r}: expected KEY=IMAGE", "e.g. --image ollama=local/ollama:test"
            )
        if not isinstance(images, dict) or key not in images:
            known = ", ".join(sorted(images)) if isinstance(images, dict) else "none"
            raise BadInputError(
                f"--image {text!r}: {where} has no image key {key!r} (keys: {known})"
            )
        check_source({"images": {key: image}}, f"--image {text!r}")
        images[key] = image
    if sources is not None:
        sources.extend(f"--set {t}".encode("utf-8", "surrogateescape") for t in ov.sets)
        sources.extend(f"--image {t}".encode("utf-8", "surrogateescape") for t in ov.images)
    return out


# --- files ------------------------------------------------------------------------------------


def _read_yaml(path: str, sources: list[bytes] | None = None) -> Any:
    """The YAML document in `path`; its bytes are appended to `sources` when given."""
    import yaml

    from composegen.files import TooLargeError, read_bounded

    try:
        raw = read_bounded(path, MAX_YAML_BYTES)  # bounded: a device has no end
        text = raw.decode("utf-8")
    except TooLargeError:
        raise BadInputError(f"{path}: larger than {MAX_YAML_BYTES} bytes") from None
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInputError(f"{path}: is a directory") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if sources is not None:
        sources.append(raw)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise BadInputError(f"{path}: invalid YAML{at}: {problem}") from None
    except RecursionError:
        raise BadInputError(f"{path}: invalid YAML: nested too deeply") from None


def search_dirs(extra: Iterable[str] = ()) -> list[Path]:
    dirs = [Path(d) for d in extra]
    dirs += [Path(p) for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p]
    dirs.append(profiles_dir())
    return dirs


def available(extra_dirs: Iterable[str] = ()) -> dict[str, Path]:
    """Profile name -> file; earlier directories win (user profiles shadow shipped ones)."""
    found: dict[str, Path] = {}
    for d in search_dirs(extra_dirs):
        if not d.is_dir():
            if d != profiles_dir():
                raise BadInputError(f"{d}: profiles directory does not exist")
            continue
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def load(
    name_or_path: str, extra_dirs: Iterable[str] = (), overrides: Overrides | None = None
) -> Profile:
    overrides = overrides or Overrides()
    path: Path | None = None
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        path = Path(name_or_path)
    else:
        known = available(extra_dirs)
        path = known.get(name_or_path)
        if path is None:
            raise BadInputError(
                f"unknown profile {name_or_path!r}",
                f"known profiles: {', '.join(sorted(known)) or 'none'}; see `composegen profiles`",
            )
    from composegen.profile_checks import check_source

    where = _display(path)
    sources: list[bytes] = []
    data = _read_yaml(str(path), sources)
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: a profile must be a YAML mapping")
    check_source(data, where)
    merged = apply_overrides(data, overrides, where, sources)
    try:
        validate(merged, where, sources)
    except ProfileError:
        _blame_override(data, overrides, where)  # raises naming --set/--values when one is it
        raise
    prof = from_data(merged, where)
    if path.stem != prof.name:
        raise ProfileError(f"{where}: name: {prof.name!r} differs from the file name {path.stem!r}")
    from composegen.profile_checks import check_model_facts

    check_model_facts(prof)
    return prof


def _blame_override(data: dict[str, Any], ov: Overrides, where: str) -> None:
    """The profile with overrides is invalid: name the --values file or --set that made it so.

    The file alone is validated first (when it is invalid, the file is to blame and the caller
    re-raises); then the overrides are applied one at a time, in the order the loader applies
    them, and the first one after which the profile no longer validates is named as the source.
    """
    if not (ov.values_files or ov.sets):
        return
    validate(data, where)  # raises: the file itself is invalid
    steps = [
        (Overrides(values_files=ov.values_files[: i + 1]), f"--values {path}")
        for i, path in enumerate(ov.values_files)
    ]
    steps += [
        (Overrides(values_files=ov.values_files, sets=ov.sets[: i + 1]), f"--set {text!r}")
        for i, text in enumerate(ov.sets)
    ]
    for partial, source in steps:
        validate(apply_overrides(data, partial, where), f"{source} (on {where})")


def _display(path: Path) -> str:
    try:
        rel = path.resolve().relative_to(profiles_dir().resolve())
        return f"profiles/{rel}"
    except ValueError:
        return str(path)


def _models(items: Any) -> tuple[Model, ...]:
    return tuple(
        Model(
            name=m["name"],
            vram_mib=int(m["vram_mib"]),
            public_name=m.get("public_name"),
            context_length=m.get("context_length"),
            trust_remote_code=bool(m.get("trust_remote_code", False)),
            architecture=m.get("architecture"),
            servers=tuple(m.get("servers", ())),
            revision=m.get("revision"),
        )
        for m in items or ()
    )


def _env(items: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (items or {}).items():
        out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out


def from_data(data: dict[str, Any], where: str) -> Profile:
    services = []
    for name, s in data["services"].items():
        gpu = s.get("gpu")
        cpu = s.get("cpu")
        health = s.get("health") or {}
        services.append(
            Service(
                name=name,
                kind=s["kind"],
                image=s["image"],
                port=int(s["port"]),
                description=s.get("description", ""),
                enabled=bool(s.get("enabled", True)),
                group=s.get("group", name),
                role=s.get("role", "app"),
                port_per_instance=bool(s.get("port_per_instance", False)),
                models=_models(s.get("models")),
                gpu=GpuNeed(**gpu) if gpu is not None else None,
                alternatives=tuple(_models(a) for a in s.get("alternatives", [])),
                command=tuple(s.get("command", [])),
                env=_env(s.get("env")),
                shm_size=s.get("shm_size"),
                volumes=tuple(s.get("volumes", [])),
                health=Health(**health),
                route=s.get("route"),
                depends_on=tuple(s.get("depends_on", [])),
                max_concurrency=s.get("max_concurrency"),
                memory_mib=s.get("memory_mib"),
                cpus=s.get("cpus"),
                server=s.get("server", ""),
                cpu=CpuVariant(
                    image=cpu["image"],
                    models=_models(cpu.get("models")),
                    env=_env(cpu.get("env")),
                    command=tuple(cpu["command"]) if "command" in cpu else None,
                    cpus=cpu.get("cpus"),
                    memory_mib=cpu.get("memory_mib"),
                )
                if cpu
                else None,
            )
        )
    ref = data["reference"]
    planner = data.get("planner") or {}
    tiers = planner.get("instance_tiers")
    gw = data.get("gateway") or {}
    return Profile(
        name=data["name"],
        description=data["description"],
        seed=data.get("seed", ""),
        reference=Reference(
            name=ref["name"],
            gpus=tuple(RefGpu(**g) for g in ref["gpus"]),
            driver_version=ref.get("driver_version"),
            cuda_version=ref.get("cuda_version"),
            nvlink=ref.get("nvlink", "none"),
        ),
        images=dict(data["images"]),
        services=tuple(services),
        headroom=float(planner.get("headroom", 0.10)),
        spare_gpus=int(planner.get("spare_gpus", 0)),
        spares=planner.get("spares"),
        instance_tiers=tuple(sorted(((t["min_mib"], t["instances"]) for t in tiers), reverse=True))
        if tiers
        else Profile.instance_tiers,
        gateway=Gateway(**gw),
        tunables=_env(data.get("tunables")),
        volumes=tuple((data.get("volumes") or {}).keys()),
        path=where,
        watch=dict(data.get("watch") or {}),
    )
