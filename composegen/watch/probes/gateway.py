"""Requests through the gateway, from nginx's JSON access log on the gateway container's stdout.

nginx.conf renders `log_format composegen_json escape=json` (time, route = $proxy_host, the
upstream group; upstream_addr, status, upstream_status, request_time, request_uri,
request_method) to /dev/stdout. A background thread follows the gateway container's log stream
(docker logs --follow --timestamps, since the probe started), parses each JSON line (nginx's own
messages are not JSON and are skipped) into a bounded buffer; read() drains it and names the
service behind each upstream address from the stack containers' IPs. When the stream ends (the
gateway was recreated or stopped) the thread attaches again, to the new container from the
probe's start, or to the same one from the last line it read. Cost while idle: one blocked
thread; a list call only when an upstream address is not known yet.
"""

from __future__ import annotations

import calendar
import json
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from composegen.engine import docker as eng
from composegen.errors import ComposegenError
from composegen.watch.probes import guarded
from composegen.watch.types import ProbeError, RequestSignal, Signal

MAX_BUFFERED = 10_000
IPS_MAX_AGE_S = 10.0  # under traffic, the address -> service map is read again this often
RETRY_S = 1.0  # before attaching again after a stream ended (a recreated gateway)
IDLE_RETRY_S = 5.0  # between two looks for a gateway while none runs
GATEWAY = "gateway"


def _last(value: Any) -> str | None:
    """The last try of an nginx list: "a, b" after a retry, "a : b" across upstream groups."""
    text = str(value or "").strip()
    if not text or text == "-":
        return None
    last = text.replace(" : ", ", ").split(",")[-1].strip()
    return None if not last or last == "-" else last


def _float(value: Any) -> float | None:
    try:
        return float(str(value).split(",")[-1].strip())
    except ValueError:
        return None


def parse_line(line: str) -> RequestSignal | None:
    """One access-log line (JSON, composegen_json) -> a request; None for anything else."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    when, took = _float(doc.get("time")), _float(doc.get("request_time"))
    try:
        status = int(str(doc.get("status")))
    except ValueError:
        return None
    if when is None or took is None:
        return None
    return RequestSignal(
        time=when,
        route=str(doc.get("route") or ""),
        upstream=_last(doc.get("upstream_addr")),
        status=status,
        upstream_status=_last(doc.get("upstream_status")),
        request_time_s=took,
    )


def docker_time(stamp: str) -> tuple[int, int] | None:
    """(seconds, nanoseconds) of the engine's RFC 3339 timestamp (2026-11-29T09:30:01.12345Z)."""
    base, _, frac = stamp.rstrip("Z").partition(".")
    try:
        secs = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    digits = "".join(ch for ch in frac if ch.isdigit())[:9]
    return secs, int(digits.ljust(9, "0")) if digits else 0


def _ip(upstream: str | None) -> str | None:
    if not upstream or upstream.startswith("unix:"):
        return None
    if upstream.startswith("["):  # [fd00::2]:11434
        return upstream[1:].split("]", 1)[0] or None
    host = upstream.rsplit(":", 1)[0] if upstream.count(":") == 1 else upstream
    return host.strip("[]") or None


class GatewayLogProbe:
    name = "gateway"

    def __init__(self, client: Any, project: str, max_buffered: int = MAX_BUFFERED) -> None:
        self.client = client
        self.project = project
        self.start = time.time()
        self.buffer: deque[RequestSignal] = deque(maxlen=max_buffered)
        self.dropped = 0  # requests the full buffer pushed out before a read drained them
        self.attached: str | None = None  # the gateway container followed now
        self.attaches = 0
        self.ips: dict[str, str] = {}  # container IP -> service
        self._ips_at = 0.0  # when `ips` was read (monotonic)
        self._last_ts: dict[str, tuple[int, int]] = {}  # container id -> last line's time
        self._error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    # --- the follower thread --------------------------------------------------------------------

    def _gateway_id(self) -> str | None:
        for row in eng.list_rows(self.client, self.project, running_only=True):
            labels = row.get("Labels") or {}
            if labels.get(eng.LABEL_SERVICE) == GATEWAY:
                return str(row.get("Id"))
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            pause = IDLE_RETRY_S
            try:
                cid = self._gateway_id()
                if cid is None:
                    self._set_error("no running gateway container")
                else:
                    self._set_error(None)
                    self._follow(cid)
                    pause = RETRY_S
            except ComposegenError as exc:
                self._set_error(exc.message)
            self._stop.wait(pause)

    def _set_error(self, message: str | None) -> None:
        with self._lock:
            self._error = message

    def _follow(self, cid: str) -> None:
        last = self._last_ts.get(cid)
        since = self.start if last is None else last[0] + last[1] / 1e9
        stream = eng.log_stream(self.client, cid, max(since, 1.0))
        self._stream = stream
        self.attached = cid
        self.attaches += 1
        if self._stop.is_set():  # closed while attaching
            eng.close_stream(stream)
            return
        pending = b""
        for chunk in eng.iter_stream(stream):
            pending += chunk if isinstance(chunk, bytes) else str(chunk).encode()
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._take(cid, raw.decode("utf-8", "replace"))
        self.attached = None

    def _take(self, cid: str, line: str) -> None:
        stamp, _, rest = line.partition(" ")
        when = docker_time(stamp)
        if when is not None:
            last = self._last_ts.get(cid)
            if last is not None and when <= last:
                return  # seen before the stream was attached again
            self._last_ts[cid] = when
        else:
            rest = line  # no timestamp: the line whole
        req = parse_line(rest)
        if req is None:
            return
        with self._lock:
            if len(self.buffer) == self.buffer.maxlen:
                self.dropped += 1
            self.buffer.append(req)

    # --- read -----------------------------------------------------------------------------------

    def _refresh_ips(self) -> None:
        ips: dict[str, str] = {}
        for row in eng.list_rows(self.client, self.project, running_only=True):
            service = str((row.get("Labels") or {}).get(eng.LABEL_SERVICE) or "")
            nets = ((row.get("NetworkSettings") or {}).get("Networks") or {}).values()
            for net in nets:
                ip = (net or {}).get("IPAddress")
                if ip and service:
                    ips[str(ip)] = service
        self.ips = ips
        self._ips_at = time.monotonic()

    @guarded
    def read(self, now: float) -> Sequence[Signal]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="watch-gateway-log", daemon=True)
            self._thread.start()
        with self._lock:
            got = list(self.buffer)
            self.buffer.clear()
            error = self._error
        out: list[Signal] = []
        unknown = {ip for r in got if (ip := _ip(r.upstream)) and ip not in self.ips}
        stale = got and time.monotonic() - self._ips_at > IPS_MAX_AGE_S
        if unknown or stale:  # a new address, or a recreated container may have taken an old one
            try:
                self._refresh_ips()
            except ComposegenError as exc:
                out.append(ProbeError(self.name, exc.message))
        for r in got:
            ip = _ip(r.upstream)
            service = self.ips.get(ip) if ip else None
            out.append(r if service is None else _with_service(r, service))
        if error is not None:
            out.append(ProbeError(self.name, error))
        return out

    def close(self) -> None:
        self._stop.set()
        if self._stream is not None:
            eng.close_stream(self._stream)
        if self._thread is not None:
            self._thread.join(3.0)


def _with_service(r: RequestSignal, service: str) -> RequestSignal:
    from dataclasses import replace

    return replace(r, service=service)
