"""Rolling request statistics per service, from the gateway's RequestSignals.

A window (60 s by default) of (time, latency, error) per service: requests per second, errors,
p50 / p95 latency. Memory is bounded twice: each service keeps at most `max_per_service`
requests (the oldest go first), and at most `max_services` keys are tracked (the one seen least
recently goes first), so a flood of requests or of odd route names cannot grow it without end.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from composegen.watch.types import RequestSignal


@dataclass(frozen=True)
class ServiceStats:
    service: str
    requests: int  # in the window
    rps: float
    errors: int  # 5xx answers and failed upstream tries, in the window
    p50_s: float | None  # None: no request in the window
    p95_s: float | None


def upstream_failed(upstream_status: str | None) -> bool:
    """nginx's $upstream_status lists every upstream tried ("502, 200", "504 : 200"): a 5xx
    anywhere in it is an upstream that failed, even when a retry then answered."""
    if not upstream_status:
        return False
    for part in upstream_status.replace(":", ",").split(","):
        part = part.strip()
        if part.isdigit() and int(part) >= 500:
            return True
    return False


def is_error(r: RequestSignal) -> bool:
    """A 5xx answer to the client, or an upstream that failed on the way."""
    return r.status >= 500 or upstream_failed(r.upstream_status)


def service_of(r: RequestSignal, routes: Mapping[str, str] | None = None) -> str:
    """The service a request went to: the probe's answer, else the route's service, else the
    route itself."""
    return r.service or (routes or {}).get(r.route) or r.route


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class Stats:
    def __init__(
        self,
        window_s: float = 60.0,
        *,
        routes: Mapping[str, str] | None = None,
        max_per_service: int = 20_000,
        max_services: int = 500,
    ) -> None:
        self.window_s = window_s
        self.routes = dict(routes or {})
        self.max_per_service = max_per_service
        self.max_services = max_services
        # service -> (time, latency, error), in arrival order
        self._rows: OrderedDict[str, deque[tuple[float, float, bool]]] = OrderedDict()
        self._first: float | None = None

    def add(self, requests: Sequence[RequestSignal]) -> None:
        for r in requests:
            name = service_of(r, self.routes)
            rows = self._rows.get(name)
            if rows is None:
                rows = self._rows[name] = deque(maxlen=self.max_per_service)
                while len(self._rows) > self.max_services:
                    self._rows.popitem(last=False)
            else:
                self._rows.move_to_end(name)
            rows.append((r.time, r.request_time_s, is_error(r)))
            if self._first is None or r.time < self._first:
                self._first = r.time

    def services(self) -> list[str]:
        return list(self._rows)

    def _prune(self, now: float) -> None:
        start = now - self.window_s
        for name in list(self._rows):
            rows = self._rows[name]
            while rows and rows[0][0] < start:
                rows.popleft()

    def service(self, name: str, now: float) -> ServiceStats:
        self._prune(now)
        start = now - self.window_s
        rows = [row for row in self._rows.get(name, ()) if start <= row[0] <= now]
        if not rows:
            return ServiceStats(name, 0, 0.0, 0, None, None)
        lat = sorted(row[1] for row in rows)
        # before a full window has passed, the rate is over the time watched so far
        span = self.window_s
        if self._first is not None and now - self._first < self.window_s:
            span = max(now - self._first, 1.0)
        return ServiceStats(
            service=name,
            requests=len(rows),
            rps=len(rows) / span,
            errors=sum(1 for row in rows if row[2]),
            p50_s=percentile(lat, 0.50),
            p95_s=percentile(lat, 0.95),
        )
