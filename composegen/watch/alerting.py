"""The bookkeeping the rules share: hysteresis latches, graded levels, and the event sink with
its standing-condition flags. Pure: the time is the snapshot's."""

from __future__ import annotations

from collections.abc import Hashable

from composegen.watch.types import Event, Level


class Latch:
    """Hysteresis for one condition per key: on after `on_after` bad reads in a row, off after
    `off_after` good reads in a row; a read of None (cannot tell) changes nothing."""

    def __init__(self, on_after: int, off_after: int) -> None:
        self.on_after, self.off_after = on_after, off_after
        self.on: set[Hashable] = set()
        self.run: dict[Hashable, int] = {}  # consecutive reads against the current state

    def read(self, key: Hashable, bad: bool | None) -> bool | None:
        """True when the condition starts, False when it ends, None otherwise."""
        if bad is None:
            return None
        is_on = key in self.on
        if bad == is_on:
            self.run[key] = 0
            return None
        self.run[key] = self.run.get(key, 0) + 1
        if self.run[key] < (self.off_after if is_on else self.on_after):
            return None
        self.run[key] = 0
        if bad:
            self.on.add(key)
        else:
            self.on.discard(key)
        return bad

    def forget(self, key: Hashable) -> None:
        self.on.discard(key)
        self.run.pop(key, None)


class Levels:
    """A graded alert per key (0 = none, 1 = warn, 2 = critical): up at once, down after
    `off_after` lower reads in a row."""

    def __init__(self, off_after: int) -> None:
        self.off_after = off_after
        self.level: dict[Hashable, int] = {}
        self.lower: dict[Hashable, int] = {}

    def read(self, key: Hashable, level: int) -> int | None:
        """The new level when it changes, else None."""
        old = self.level.get(key, 0)
        lower = self.lower.get(key, 0) + 1 if level < old else 0
        if level > old or lower >= self.off_after:
            self.level[key], self.lower[key] = level, 0
            return level
        self.lower[key] = lower
        return None


class Alerts:
    """The events of one evaluate, and the standing conditions that are on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events: list[Event] = []
        self.flags: set[Hashable] = set()

    def start(self, now: float, carried: list[Event]) -> None:
        self.now, self.events = now, list(carried)

    def event(
        self,
        level: Level,
        rule: str,
        message: str,
        *,
        service: str | None = None,
        gpu: int | None = None,
        value: float | str | None = None,
        threshold: float | str | None = None,
    ) -> None:
        self.events.append(Event(self.now, level, rule, message, service, gpu, value, threshold))

    def flag(self, key: Hashable, active: bool) -> bool | None:
        """A standing condition without hysteresis: True when it starts, False when it ends."""
        if active == (key in self.flags):
            return None
        if active:
            self.flags.add(key)
        else:
            self.flags.discard(key)
        return active

    def drop(self, kind: str, keep: set[Hashable]) -> list[Hashable]:
        """Forget the flags (kind, x) whose x is not in `keep`; the x forgotten."""
        gone = [k for k in self.flags if _kind(k) == kind and k[1] not in keep]  # type: ignore[index]
        self.flags.difference_update(gone)
        return [k[1] for k in gone]  # type: ignore[index]


def _kind(key: Hashable) -> object:
    return key[0] if isinstance(key, tuple) and len(key) == 2 else None
