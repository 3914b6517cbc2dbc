"""`composegen doctor`: what makes GPU stacks fail on their first day, checked before `up`.

Each check is a function returning a `Check` value (ok, warn or fail, a one-line detail and,
unless ok, a one-line fix). The checks are pure where they can be; what they read (the engine,
NVML, /dev, sockets) is gathered by doctor/run.py and passed in, so each is tested without it.

  engine.py   the engine: reachable, version and API, disk space; the NVIDIA runtime; the
              systemd cgroup driver without the /dev/char symlinks
  ports.py    the stack's published ports are free (or held by the stack itself)
  gpu.py      a GPU request per planned GPU (throwaway containers), driver against CUDA,
              inventory drift against render.json
  run.py      gathers the facts and runs the checks (`up` runs the fast ones)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from composegen.errors import ComposegenError

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str  # engine | disk | nvidia-runtime | gpu-request | cgroup | ports | cuda | drift
    status: Status
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def failed(checks: Sequence[Check]) -> bool:
    """Whether any check failed (warnings do not fail)."""
    return any(c.status == "fail" for c in checks)


def to_dict(checks: Sequence[Check]) -> dict[str, Any]:
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warn", "fail")}
    return {
        "ok": not failed(checks),
        "counts": counts,
        "checks": [c.to_dict() for c in checks],
    }


class DoctorFailed(ComposegenError):
    """`up` stops before starting anything: a fast doctor check failed."""


def failure(checks: Sequence[Check]) -> DoctorFailed | None:
    """The error `up` stops with when a check failed (each failure's detail, the first fix)."""
    bad = [c for c in checks if c.status == "fail"]
    if not bad:
        return None
    parts = "; ".join(f"{c.name}: {c.detail}" for c in bad)
    fixes = " / ".join(dict.fromkeys(c.fix for c in bad if c.fix))
    return DoctorFailed(
        f"doctor: {len(bad)} check(s) failed: {parts}",
        f"{fixes}; or skip the checks with --no-doctor" if fixes else "see `composegen doctor`",
    )
