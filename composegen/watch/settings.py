"""watch's thresholds: the seeds' values as defaults, the profile's `watch:` section over them,
then `--set watch.KEY=VALUE` over both. No I/O here.

The profile's section is checked by the profile JSON schema (types and bounds) and by
`check_section` (durations, warn below critical) when the profile loads; a `--set` goes through
the same schema part and the same checks, and an error names the `--set`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from composegen.errors import BadInputError

if TYPE_CHECKING:
    from composegen.profiles import Profile


@dataclass(frozen=True)
class Thresholds:
    """What the rules alert and act on. Defaults = the seeds' values (seed in the comment)."""

    # RAG 8xA100 (002): "Memory Usage Alert: 85%"
    memory_warn_pct: float = 85.0
    # RMA (003) alerts above 90 %; 95 is the issue's critical level, above both seeds' alerts
    memory_critical_pct: float = 95.0
    # RAG 8xA100 (002): "Temperature Limit: 83°C (A100 spec)"
    temperature_c: float = 83.0
    # AIRES (001): UnhealthyThreshold = 3
    unhealthy_after: int = 3
    # AIRES (001): HealthyThreshold = 2
    healthy_after: int = 2
    # RMA (003) "monitor container restarts": this many restarts within restart_window_s is a loop
    restart_loop: int = 3
    restart_window_s: float = 600.0
    # the `verify` residency check (100 % GPU): a model with less of itself in VRAM is off its GPU
    min_gpu_fraction: float = 1.0
    # AIRES (001) "automatic instance restart on failure", bounded: recreations per service
    # within heal_window_s
    heal_max: int = 3
    heal_window_s: float = 900.0
    # AIRES (001): CircuitBreakerThreshold = 5 consecutive failed heals, then healing stops
    circuit_breaker: int = 5
    # the hold-down (--restore-after, default 5 minutes): GPUs healthy this long first
    restore_after_s: float = 300.0


FIELDS: dict[str, type] = {f.name: type(getattr(Thresholds(), f.name)) for f in fields(Thresholds)}
DURATIONS = frozenset(k for k in FIELDS if k.endswith("_s"))
MAX_DURATION_S = 30 * 86400.0

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, where: str, *, allow_zero: bool = False) -> float:
    """`250ms`, `5s`, `5m`, `1h` or a bare number of seconds (`30`, `2.5`) -> seconds.
    Negative, zero (unless allow_zero), junk or more than 30 days: BadInputError naming
    `where`."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise BadInputError(f"{where}: expected a duration, got {text!r}", "e.g. 30s, 5m, 1h")
    raw = str(text).strip()
    if isinstance(text, str):
        m = _DURATION.fullmatch(raw)
        if m is None:
            hint = "not negative" if raw.startswith("-") else "e.g. 250ms, 30s, 5m, 1h"
            raise BadInputError(f"{where}: {raw!r} is not a duration", hint)
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    else:  # a number of seconds, from YAML
        seconds = float(text) if abs(text) < 1e300 else math.inf
        if seconds < 0 or math.isnan(seconds):
            raise BadInputError(f"{where}: {raw!r} is not a duration", "not negative")
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise BadInputError(f"{where}: {raw!r} is longer than 30 days", "use a shorter duration")
    if seconds == 0 and not allow_zero:
        raise BadInputError(f"{where}: {raw!r} is zero", "use a duration above 0, e.g. 5s")
    return seconds


def _from_mapping(
    values: Mapping[str, Any], where: Mapping[str, str], pair: str | None = None
) -> Thresholds:
    """Thresholds from already schema-checked values; `where[key]` names each value's source,
    `pair` the last source of either memory level (blamed when warn is not below critical)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        at = where.get(key, f"watch.{key}")
        if key in DURATIONS:
            out[key] = parse_duration(value, at)
        else:
            out[key] = FIELDS[key](value)
    t = replace(Thresholds(), **out)
    if t.memory_warn_pct >= t.memory_critical_pct:
        blame = pair or where.get("memory_warn_pct") or where.get("memory_critical_pct") or "watch"
        raise BadInputError(
            f"{blame}: the memory warn level ({t.memory_warn_pct:g} %) must be below the "
            f"critical level ({t.memory_critical_pct:g} %)",
            "set watch.memory_warn_pct lower or watch.memory_critical_pct higher",
        )
    return t


def check_section(section: Mapping[str, Any], where: str) -> Thresholds:
    """The profile's `watch:` mapping (schema-checked) as Thresholds; BadInputError naming
    `where` and the key when a duration or the warn/critical pair is wrong."""
    return _from_mapping(section, {k: f"{where}: watch.{k}" for k in section})


def thresholds_for(profile: Profile, sets: Sequence[str] = ()) -> Thresholds:
    """The defaults, the profile's `watch:` section over them, then each `--set watch.KEY=VALUE`
    (render's --set syntax). A bad key or value: BadInputError naming the --set."""
    from composegen.profiles import parse_assignment, validate_watch

    values: dict[str, Any] = dict(profile.watch)
    where = {k: f"{profile.path or profile.name}: watch.{k}" for k in values}
    pair = None
    for text in sets:
        option = f"--set {text!r}"
        parts, value = parse_assignment(text, "--set")
        if len(parts) != 2 or parts[0] != "watch":
            raise BadInputError(
                f"{option}: watch takes only watch.KEY=VALUE",
                f"e.g. --set watch.memory_warn_pct=80; keys: {', '.join(FIELDS)}",
            )
        key = parts[1]
        if key not in FIELDS:
            close = difflib.get_close_matches(key, list(FIELDS), n=1)
            raise BadInputError(
                f"{option}: unknown key {key!r}"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
                f"keys: {', '.join(FIELDS)}",
            )
        validate_watch({key: value}, option)
        values[key] = value
        where[key] = option
        if key in ("memory_warn_pct", "memory_critical_pct"):
            pair = option
    return _from_mapping(values, where, pair)
