"""Probes: each a small class whose `read(now)` returns signals (see watch/types.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from composegen.engine import docker as eng
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


class RunningContainers:
    """The stack's running containers that `keep` selects, as (service, container object):
    one list call per read, an inspect only for a container not seen before (cached by id,
    forgotten when it is gone)."""

    def __init__(self, client: Any, project: str, keep: Callable[[Any], bool]) -> None:
        self.client, self.project, self.keep = client, project, keep
        self.cache: dict[str, Any] = {}  # id -> container object (its inspect)

    def select(self) -> list[tuple[str, Any]]:
        rows = eng.list_rows(self.client, self.project, running_only=True)
        out, ids = [], set()
        for row in rows:
            cid = str(row.get("Id") or "")
            ids.add(cid)
            if cid not in self.cache:
                self.cache[cid] = eng.get_container(self.client, cid)
            c = self.cache[cid]
            if c is not None and self.keep(c):
                service = str((row.get("Labels") or {}).get(eng.LABEL_SERVICE) or c.name)
                out.append((service, c))
        for gone in set(self.cache) - ids:
            del self.cache[gone]
        return out
