"""The stack's containers: state, health, restart count, OOM kill, exit code, GPUs.

Cheap by design (watch must idle below 2 % of one core on a 24-container stack): each read makes
one list call, and inspects only the containers the list or the engine's event stream says
changed (new, a state or health change, an event: start, die, oom, restart, health_status). The
event stream is followed by a background thread that only marks containers dirty; while it is
down, a change of the list's Status text ("Up 3 seconds" after a restart) triggers the inspect.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from composegen.engine import docker as eng
from composegen.errors import ComposegenError
from composegen.watch.probes import guarded
from composegen.watch.types import ContainerSignal, ProbeError, Signal

_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")


def row_key(row: dict[str, Any], exact: bool) -> tuple[str, ...]:
    """What of a list entry decides a re-inspect: state and health (exact: the whole Status
    text, for when no event stream says what happened)."""
    status = str(row.get("Status") or "")
    if exact:
        return (str(row.get("State") or ""), status)
    health = _HEALTH.search(status)
    return (str(row.get("State") or ""), health.group(1) if health else "")


def signal_of(attrs: dict[str, Any], service: str) -> ContainerSignal:
    state = attrs.get("State") or {}
    status = str(state.get("Status") or "unknown")
    health = (state.get("Health") or {}).get("Status")
    if health == "none":
        health = None
    exit_code = state.get("ExitCode")
    return ContainerSignal(
        service=service,
        container_id=str(attrs.get("Id") or ""),
        state=status,
        health=str(health) if health else None,
        restart_count=int(attrs.get("RestartCount") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        exit_code=(
            int(exit_code)
            if exit_code is not None and status not in ("running", "created")
            else None
        ),
        gpus=eng.visible_gpus(attrs),
    )


class ContainersProbe:
    name = "containers"

    def __init__(self, client: Any, project: str, follow_events: bool = True) -> None:
        self.client = client
        self.project = project
        self.follow_events = follow_events
        self.cache: dict[str, tuple[tuple[str, ...], ContainerSignal]] = {}
        self.inspects = 0  # how many inspect calls this probe made (for tests and benchmarks)
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    # --- the event stream (background) ----------------------------------------------------------

    @property
    def following(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start_events(self) -> None:
        try:
            self._stream = eng.container_events(self.client, self.project)
        except ComposegenError:
            self._stream = None
            return
        self._thread = threading.Thread(
            target=self._follow, args=(self._stream,), name="watch-container-events", daemon=True
        )
        self._thread.start()

    def _follow(self, stream: Any) -> None:
        for event in eng.iter_stream(stream):
            if self._stop.is_set():
                break
            action = str(event.get("Action") or event.get("status") or "")
            if action.startswith("exec_"):
                continue  # a healthcheck run (an engine that ignored the filter)
            cid = (event.get("Actor") or {}).get("ID") or event.get("id")
            if cid:
                with self._lock:
                    self._dirty.add(str(cid))

    # --- read -----------------------------------------------------------------------------------

    @guarded
    def read(self, now: float) -> Sequence[Signal]:
        restarted = False
        if self.follow_events and not self.following and not self._stop.is_set():
            # (re)attach before listing: an event after the list is then never missed
            self._start_events()
            restarted = True
        try:
            rows = eng.list_rows(self.client, self.project)
        except ComposegenError as exc:
            return [ProbeError(self.name, exc.message)]
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        exact = not self.following
        if restarted:
            dirty |= set(self.cache)  # events before the stream started were not seen
        out: list[Signal] = []
        seen: set[str] = set()
        for row in rows:
            labels = row.get("Labels") or {}
            if str(labels.get(eng.LABEL_ONEOFF, "False")) == "True":
                continue
            cid = str(row.get("Id") or "")
            seen.add(cid)
            key = row_key(row, exact)
            cached = self.cache.get(cid)
            if cached is not None and cached[0] == key and cid not in dirty:
                out.append(cached[1])
                continue
            try:
                attrs = eng.inspect_container(self.client, cid)
            except ComposegenError as exc:
                out.append(ProbeError(self.name, exc.message))
                continue
            self.inspects += 1
            if attrs is None:  # removed between the list and the inspect
                self.cache.pop(cid, None)
                continue
            service = str(labels.get(eng.LABEL_SERVICE) or row.get("Names", ["?"])[0])
            sig = signal_of(attrs, service)
            self.cache[cid] = (key, sig)
            out.append(sig)
        for gone in set(self.cache) - seen:
            del self.cache[gone]
        return out

    def close(self) -> None:
        self._stop.set()
        if self._stream is not None:
            eng.close_stream(self._stream)
        if self._thread is not None:
            self._thread.join(2.0)
