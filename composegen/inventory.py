"""The inventory: plain values describing one host's GPUs, CPU, RAM and Docker engine.

Every detection source (NVML, nvidia-smi XML/CSV/text, a saved file) produces an `Inventory`;
everything downstream (profiles, planner, render) only ever sees this value. Its JSON form is
versioned (`composegen/inventory/v1`) and round-trips exactly: `from_json(to_json(inv)) == inv`
and `to_json(from_json(text)) == text` for any text that `to_json` wrote.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, TypeVar, get_args

from composegen.errors import BadInputError

SCHEMA = "composegen/inventory/v1"

Health = Literal["ok", "lost", "error"]
HEALTH_VALUES: tuple[str, ...] = get_args(Health)
MigMode = Literal["enabled", "disabled"]


@dataclass(frozen=True)
class MigDevice:
    """One MIG slice. Its memory is the slice's, never to be taken for the whole GPU's."""

    index: int
    uuid: str | None = None
    profile: str | None = None  # e.g. "3g.40gb"
    memory_total_mib: int | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str | None = None
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    memory_free_mib: int | None = None
    compute_capability: str | None = None  # "8.0"
    pci_bus_id: str | None = None  # "00000000:01:00.0"
    minor_number: int | None = None
    mig_mode: MigMode | None = None  # None: the GPU does not support MIG (or it is unknown)
    mig_devices: tuple[MigDevice, ...] = ()
    temperature_c: int | None = None
    utilization_gpu_pct: int | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    nvlink_peers: tuple[int, ...] = ()  # indices of GPUs joined to this one by NVLink
    health: Health = "ok"
    health_reason: str | None = None

    @property
    def healthy(self) -> bool:
        return self.health == "ok"


@dataclass(frozen=True)
class DockerEngine:
    reachable: bool = False
    version: str | None = None
    api_version: str | None = None
    error: str | None = None  # why it is not reachable
    runtimes: tuple[str, ...] = ()
    nvidia_runtime: bool = False  # an engine runtime named "nvidia" is registered
    nvidia_hook: bool = False  # nvidia-container-runtime-hook found on PATH
    cdi_specs: tuple[str, ...] = ()  # CDI spec files naming nvidia.com devices
    gpu_requests: bool = False  # whether `--gpus`/device_requests can work on this engine

    @property
    def gpu_requests_via(self) -> str:
        ways = []
        if self.nvidia_hook:
            ways.append("nvidia-container-runtime-hook")
        if self.nvidia_runtime:
            ways.append("nvidia runtime")
        if self.cdi_specs:
            ways.append("CDI")
        return ", ".join(ways) if ways else "none"


@dataclass(frozen=True)
class Host:
    hostname: str | None = None
    os: str | None = None
    cpu_model: str | None = None
    cpu_cores: int | None = None
    ram_total_mib: int | None = None
    ram_available_mib: int | None = None
    docker: DockerEngine | None = None


@dataclass(frozen=True)
class Inventory:
    source: str  # nvml | nvidia-smi | file:inventory-json | file:nvidia-smi-xml | ...
    gpus: tuple[Gpu, ...] = ()
    driver_version: str | None = None
    cuda_version: str | None = None
    nvml_version: str | None = None
    host: Host | None = None
    no_gpu_reason: str | None = None  # set when gpus is empty: why
    warnings: tuple[str, ...] = ()
    schema: str = field(default=SCHEMA)

    @property
    def healthy_gpus(self) -> tuple[Gpu, ...]:
        return tuple(g for g in self.gpus if g.healthy)

    def gpu(self, index: int) -> Gpu:
        for g in self.gpus:
            if g.index == index:
                return g
        raise KeyError(index)

    def with_host(self, host: Host | None) -> Inventory:
        return replace(self, host=host)

    # --- JSON -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = _to_plain(self)
        return {"schema": plain.pop("schema"), **plain}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "inventory") -> Inventory:
        if not isinstance(data, dict):
            raise BadInputError(f"{where}: expected a JSON object, got {_kind(data)}")
        schema = data.get("schema")
        if schema != SCHEMA:
            raise BadInputError(
                f"{where}: schema is {schema!r}, expected {SCHEMA!r}",
                "save it again with `composegen detect --save FILE`",
            )
        return _from_plain(cls, data, where)

    @classmethod
    def from_json(cls, text: str, where: str = "inventory") -> Inventory:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(
                f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from None
        except RecursionError:
            raise BadInputError(f"{where}: not an inventory (JSON nested too deeply)") from None
        except ValueError as exc:  # e.g. an integer with more digits than Python converts
            raise BadInputError(f"{where}: not valid JSON ({exc})") from None
        return cls.from_dict(data, where)


def duplicate_warnings(gpus: tuple[Gpu, ...]) -> tuple[str, ...]:
    """Warnings for what makes pinning ambiguous: repeated indices or UUIDs (masked files)."""
    out: list[str] = []
    seen_idx: dict[int, int] = {}
    seen_uuid: dict[str, int] = {}
    for g in gpus:
        seen_idx[g.index] = seen_idx.get(g.index, 0) + 1
        if g.uuid:
            seen_uuid[g.uuid] = seen_uuid.get(g.uuid, 0) + 1
    for idx, n in seen_idx.items():
        if n > 1:
            out.append(f"GPU index {idx} appears {n} times: the file was edited or merged")
    for uuid, n in seen_uuid.items():
        if n > 1:
            out.append(f"UUID {uuid} appears on {n} GPUs (masked?): pin by index, not by UUID")
    return tuple(out)


# --- plain-data conversion, strict on the way in ------------------------------------------------

T = TypeVar("T")

_NESTED: dict[tuple[str, str], type] = {
    ("Inventory", "gpus"): Gpu,
    ("Inventory", "host"): Host,
    ("Gpu", "mig_devices"): MigDevice,
    ("Host", "docker"): DockerEngine,
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _to_plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


# Counts, sizes and indices: a negative value is nonsense, never a reading.
_NON_NEGATIVE = frozenset(
    {
        "index",
        "memory_total_mib",
        "memory_used_mib",
        "memory_free_mib",
        "minor_number",
        "utilization_gpu_pct",
        "power_draw_w",
        "power_limit_w",
        "nvlink_peers",
        "gpu_instance_id",
        "compute_instance_id",
        "cpu_cores",
        "ram_total_mib",
        "ram_available_mib",
    }
)


# A saved inventory's strings reach rendered files (the compose header names the source, device
# ids are UUIDs, STACK.md names the GPUs): no control character in them (a newline would add
# lines). Free text (why a GPU or the engine is unusable, warnings) may hold tabs and newlines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_FREE_TEXT = frozenset({"health_reason", "no_gpu_reason", "warnings", "error"})


def _check_scalar(name: str, annotation: str, value: Any, where: str) -> Any:
    checked = _check_type(name, annotation, value, where)
    if isinstance(checked, str):
        m = (_TEXT_CONTROL if name in _FREE_TEXT else _CONTROL).search(checked)
        if m:
            raise BadInputError(
                f"{where}: {checked[:60]!r} holds the control character {m.group()!r}",
                "save the inventory again with `composegen detect --save FILE`, or remove it",
            )
    if isinstance(checked, float) and not math.isfinite(checked):
        raise BadInputError(f"{where}: expected a finite number, got {value!r}")
    if name in _NON_NEGATIVE and isinstance(checked, (int, float)) and checked < 0:
        raise BadInputError(f"{where}: must not be negative, got {value!r}")
    return checked


def _check_type(name: str, annotation: str, value: Any, where: str) -> Any:
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise BadInputError(f"{where}: must not be null")
    base = annotation.replace(" | None", "").strip()
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise BadInputError(f"{where}: expected true or false, got {_kind(value)}")
    if base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise BadInputError(f"{where}: expected an integer, got {_kind(value)}")
    if base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise BadInputError(f"{where}: expected a number, got {_kind(value)}")
    if base == "str":
        if isinstance(value, str):
            return value
        raise BadInputError(f"{where}: expected a string, got {_kind(value)}")
    if base == "Health":
        if value in HEALTH_VALUES:
            return value
        raise BadInputError(f"{where}: expected one of {', '.join(HEALTH_VALUES)}, got {value!r}")
    if base == "MigMode":
        if value in ("enabled", "disabled"):
            return value
        raise BadInputError(f"{where}: expected enabled, disabled or null, got {value!r}")
    if base.startswith("tuple["):
        inner = base[len("tuple[") : -len(", ...]")]
        if not isinstance(value, list):
            raise BadInputError(f"{where}: expected a list, got {_kind(value)}")
        return tuple(_check_scalar(name, inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    raise AssertionError(f"unhandled annotation {annotation} for {name}")  # pragma: no cover


def _from_plain(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise BadInputError(f"{where}: expected an object, got {_kind(data)}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise BadInputError(f"{where}: unknown key {unknown[0]!r}")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        sub = f"{where}.{name}"
        if name not in data:
            from dataclasses import MISSING

            if f.default is MISSING and f.default_factory is MISSING:
                raise BadInputError(f"{sub}: missing")
            continue
        value = data[name]
        nested = _NESTED.get((cls.__name__, name))
        annotation = str(f.type)
        if nested is not None:
            if annotation.startswith("tuple["):
                if not isinstance(value, list):
                    raise BadInputError(f"{sub}: expected a list, got {_kind(value)}")
                kwargs[name] = tuple(
                    _from_plain(nested, v, f"{sub}[{i}]") for i, v in enumerate(value)
                )
            elif value is None:
                kwargs[name] = None
            else:
                kwargs[name] = _from_plain(nested, value, sub)
        else:
            kwargs[name] = _check_scalar(name, annotation, value, sub)
    return cls(**kwargs)
