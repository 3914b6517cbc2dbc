"""Probes: each a small class whose `read(now)` returns signals (see watch/types.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from composegen.errors import ComposegenError
from composegen.watch.types import ProbeError, Signal

R = TypeVar("R", bound=Callable[..., Sequence[Signal]])


def guarded(read: R) -> R:
    """A probe's read that never raises: a failure (a composegen error, or anything else the
    engine or a library throws) is this interval's ProbeError, named after the probe."""

    @functools.wraps(read)
    def wrapper(self: Any, now: float) -> Sequence[Signal]:
        try:
            return read(self, now)
        except ComposegenError as exc:
            return [ProbeError(self.name, exc.message)]
        except Exception as exc:  # the watcher goes on; the next interval reads again
            return [ProbeError(self.name, f"{type(exc).__name__}: {exc}")]

    return wrapper  # type: ignore[return-value]
