"""Where watch's events go besides the view: a JSON-lines log in the stack (rotated by size)
and a webhook (`--notify URL`), plus the one-line form printed on a terminal.

The webhook is posted from a thread of its own through a bounded queue, so a slow or dead
receiver never holds up the watcher: when the queue is full the oldest batch is dropped and
counted. Each POST has a timeout and is retried with backoff on a connection error, a timeout,
429 or a 5xx. The URL may carry a secret (a Slack webhook's path, a token in the query): only
its scheme, host and port are ever printed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from composegen.errors import BadInputError, ComposegenError
from composegen.watch.types import Event

EVENT_LOG = ".composegen/watch-events.jsonl"
LOG = logging.getLogger("composegen.watch")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _clean(text: str) -> str:
    """One line: control characters (a newline from a container's message) shown escaped."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def event_target(e: Event) -> str:
    parts = []
    if e.service:
        parts.append(e.service)
    if e.gpu is not None:
        parts.append(f"GPU {e.gpu}")
    return " ".join(parts) or "-"


def event_line(e: Event) -> str:
    """time, level, rule, service/GPU, message: one line, whatever the message holds."""
    return _clean(
        f"{_clock(e.time)} {e.level.upper():<8} {e.rule:<15} {event_target(e)}: {e.message}"
    )


# --- the JSON-lines log -------------------------------------------------------------------------


class EventLog:
    """Appends events as JSON lines; rotates PATH -> PATH.1 -> ... -> PATH.N by size.

    A batch is written with one write() on a file opened O_APPEND, and a rotation happens
    before a batch, never inside it, so a reader never sees half a line."""

    def __init__(self, path: Path, max_bytes: int = 5 * 2**20, backups: int = 3) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be positive and backups at least 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups

    def _rotate(self) -> None:
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            return
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def write(self, events: Sequence[Event]) -> None:
        if not events:
            return
        data = "".join(
            json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for e in events
        ).encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                size = self.path.stat().st_size
                if size and size + len(data) > self.max_bytes:
                    self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except OSError as exc:
            raise ComposegenError(
                f"{self.path}: cannot write the event log: {exc.strerror or exc}"
            ) from None


# --- the webhook --------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """scheme://host[:port]/... : what may be printed of a webhook URL (no user, password,
    path or query: a Slack webhook's path is its secret)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<the --notify URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}/..."


def check_url(url: str, where: str = "--notify") -> str:
    bad = any(c.isspace() or not c.isprintable() for c in url)
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if bad or parts is None or not port_ok:
        raise BadInputError(f"{where}: {redact_url(url)} is not a valid URL")
    if parts.scheme not in ("http", "https"):
        raise BadInputError(
            f"{where}: {redact_url(url)}: only http:// and https:// webhooks are supported"
        )
    if not parts.hostname:
        raise BadInputError(f"{where}: {redact_url(url)}: the URL has no host")
    return url


def payload(events: Sequence[Event], stack: str | None = None) -> dict[str, Any]:
    """The webhook body: the events, plus `text` (the events as lines: what a Slack incoming
    webhook shows) and the fields of an Alertmanager webhook notification (version 4), so a
    receiver written for Alertmanager takes it too."""
    worst = "critical" if any(e.level == "critical" for e in events) else "warn"
    firing = any(e.level != "info" for e in events)
    alerts = []
    for e in events:
        labels = {"alertname": f"composegen-{e.rule}", "rule": e.rule, "severity": e.level}
        if stack:
            labels["stack"] = stack
        if e.service:
            labels["service"] = e.service
        if e.gpu is not None:
            labels["gpu"] = str(e.gpu)
        stamp = e.to_dict()["time"]
        alerts.append(
            {
                "status": "resolved" if e.level == "info" else "firing",
                "labels": labels,
                "annotations": {"summary": _clean(e.message)},
                "startsAt": stamp,
                "endsAt": stamp if e.level == "info" else "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": "",
            }
        )
    common = {"stack": stack} if stack else {}
    return {
        "source": "composegen watch",
        "stack": stack,
        "events": [e.to_dict() for e in events],
        "text": "\n".join(event_line(e) for e in events),
        # Alertmanager webhook_config format
        "version": "4",
        "groupKey": f"composegen:{stack or ''}",
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "composegen",
        "groupLabels": common,
        "commonLabels": {**common, "severity": worst} if firing else common,
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": alerts,
    }


class Notifier:
    """POSTs batches of events to a webhook from a background thread."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 5.0,
        retries: int = 3,
        *,
        stack: str | None = None,
        backoff_s: float = 1.0,
        max_queue: int = 100,
        max_batch: int = 100,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.url = check_url(url)
        self.shown = redact_url(url)
        self.timeout_s = timeout_s
        self.retries = retries
        self.stack = stack
        self.backoff_s = backoff_s
        self.max_batch = max_batch
        self.warn = warn or LOG.warning
        self.delivered = 0  # POSTs answered 2xx
        self.failed = 0  # batches given up on
        self.dropped = 0  # batches dropped because the queue was full
        self.attempts = 0
        self._queue: deque[list[Event]] = deque()
        self._max_queue = max_queue
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="composegen-notify", daemon=True)
        self._thread.start()

    def send(self, events: Sequence[Event]) -> None:
        if not events:
            return
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self._max_queue:
                lost = self._queue.popleft()
                self.dropped += 1
                self.warn(
                    f"webhook {self.shown}: queue full, dropped the oldest {len(lost)} event(s) "
                    f"({self.dropped} batch(es) dropped so far)"
                )
            self._queue.append(list(events))
            self._cond.notify_all()

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout_s`), then stop the thread."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(max(deadline - time.monotonic(), 0))
        with self._cond:
            left = sum(len(b) for b in self._queue)
            self._queue.clear()
        if left:
            self.warn(f"webhook {self.shown}: {left} event(s) not delivered before exit")

    def _next(self) -> list[Event] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            batch: list[Event] = []
            while self._queue and len(batch) + len(self._queue[0]) <= self.max_batch:
                batch += self._queue.popleft()
            if not batch:  # one batch larger than max_batch goes whole
                batch = self._queue.popleft()
            return batch

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            while (batch := self._next()) is not None:
                self._deliver(client, batch)

    def _deliver(self, client: Any, batch: list[Event]) -> None:
        import httpx

        body = payload(batch, self.stack)
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                # backoff: 1x, 2x, 4x ... (closing shortens nothing: close() has its timeout)
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.attempts += 1
            try:
                resp = client.post(self.url, json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self.timeout_s:g}s"
                continue
            except httpx.HTTPError as exc:
                problem = type(exc).__name__  # the message may quote the URL
                continue
            if 200 <= resp.status_code < 300:
                self.delivered += 1
                return
            problem = f"HTTP {resp.status_code}"
            if resp.status_code != 429 and resp.status_code < 500:
                break  # the receiver refuses this body: sending it again will not help
        self.failed += 1
        self.warn(f"webhook {self.shown}: {len(batch)} event(s) not delivered ({problem})")
