"""`watch --metrics`: the Prometheus exposition, through prometheus_client.

The only module that imports prometheus_client, and only when a Metrics is made (so `composegen
--help` never loads it). Each Metrics has a registry of its own (never the library's global one),
so two watchers, or two tests, never share series. A GPU or a service that disappears from the
snapshot has its series removed, not left behind with its last values.
"""

from __future__ import annotations

import errno
import ipaddress
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from composegen.errors import BadInputError, ComposegenError
from composegen.watch.types import Event, Snapshot

if TYPE_CHECKING:
    from composegen.watch.stats import Stats

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464
MODES = ("gpu", "gpu-failover", "cpu-fallback")
ACTIONS = ("recreate", "gpu-failed", "cpu", "restore")
MIB = 1024 * 1024
# request latency buckets (seconds): a cached embedding answers in milliseconds, a cold LLM load
# takes minutes
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def parse_addr(text: str, where: str = "--metrics") -> tuple[str, int]:
    """ "127.0.0.1:9464", "[::1]:9464", ":9464" or "9464" (loopback), "localhost:0" (any free
    port) -> (host, port). Only IP literals and localhost: a name would resolve to anything."""
    raw = text.strip()
    hint = "write HOST:PORT with an IP address, e.g. 127.0.0.1:9464 (port 0: any free port)"
    if not raw or any(c.isspace() for c in raw):
        raise BadInputError(f"{where} {text!r}: not an address", hint)
    if raw.startswith("["):
        host, sep, port_text = raw[1:].partition("]:")
        if not sep:
            raise BadInputError(f"{where} {text!r}: an IPv6 address needs a port: [::1]:9464")
    elif raw.count(":") > 1:
        raise BadInputError(f"{where} {text!r}: put an IPv6 address in brackets: [::1]:9464")
    elif ":" in raw:
        host, _, port_text = raw.partition(":")
    else:
        host, port_text = "", raw
    host = host or DEFAULT_HOST
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise BadInputError(f"{where} {text!r}: port {port_text!r} is not 0-65535", hint)
    if host != "localhost":
        try:
            host = ipaddress.ip_address(host).compressed
        except ValueError:
            raise BadInputError(f"{where} {text!r}: {host!r} is not an IP address", hint) from None
    return host, int(port_text)


class MetricsServer:
    """The library's HTTP server on its own thread; `.port` is the port it really listens on."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host: str = httpd.server_address[0]
        self.port: int = int(httpd.server_address[1])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@dataclass
class _Family:
    """One metric and the label sets it showed last time (to remove the ones that went)."""

    metric: Any
    seen: set[tuple[str, ...]]


class Metrics:
    def __init__(self, stack: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.stack = stack
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        gpu = ["stack", "gpu_uuid", "gpu_index"]
        svc = ["stack", "service"]
        route = ["stack", "service", "route"]

        def gauge(name: str, doc: str, labels: list[str]) -> _Family:
            return _Family(Gauge(name, doc, labels, registry=r), set())

        def counter(name: str, doc: str, labels: list[str]) -> _Family:
            return _Family(Counter(name, doc, labels, registry=r), set())

        self.gpu_temp = gauge("composegen_gpu_temperature_celsius", "GPU temperature", gpu)
        self.gpu_used = gauge("composegen_gpu_memory_used_bytes", "GPU memory in use", gpu)
        self.gpu_total = gauge("composegen_gpu_memory_total_bytes", "GPU memory in all", gpu)
        self.gpu_util = gauge(
            "composegen_gpu_utilization_ratio", "GPU utilisation (0-1) over the last sample", gpu
        )
        self.gpu_power = gauge("composegen_gpu_power_watts", "GPU power draw", gpu)
        self.gpu_healthy = gauge(
            "composegen_gpu_healthy", "1 while the GPU reports healthy, 0 when lost/error", gpu
        )
        self.gpu_xid = counter(
            "composegen_gpu_xid_events", "Xid events seen on the GPU since watch started", gpu
        )
        self.svc_up = gauge("composegen_service_up", "1 while a container runs", svc)
        self.svc_healthy = gauge(
            "composegen_service_healthy", "1 while healthy (or running without a check)", svc
        )
        self.svc_restarts = gauge(
            "composegen_service_restarts", "the engine's restart count of the containers", svc
        )
        self.requests = counter(
            "composegen_gateway_requests", "requests through the gateway", route
        )
        self.errors = counter(
            "composegen_gateway_errors", "5xx answers and failed upstream tries", route
        )
        self.latency = _Family(
            Histogram(
                "composegen_gateway_request_duration_seconds",
                "gateway request time (nginx $request_time)",
                route,
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            set(),
        )
        self.model_gpu = gauge(
            "composegen_model_gpu_fraction",
            "share of the loaded model in GPU memory (Ollama /api/ps size_vram/size)",
            ["stack", "service", "model"],
        )
        self.mode = Gauge(
            "composegen_stack_mode", "1 for the stack's current mode", ["stack", "mode"], registry=r
        )
        self.heal = Counter(
            "composegen_heal_actions",
            "heal actions taken, by action and result (ok / failed)",
            ["stack", "action", "result"],
            registry=r,
        )
        self.events = Counter(
            "composegen_events",
            "events reported, by rule and level",
            ["stack", "rule", "level"],
            registry=r,
        )
        for action in ACTIONS:  # present from the start, so rate() sees the first one
            for result in ("ok", "failed"):
                self.heal.labels(stack, action, result)
        self._mode = "gpu"
        self.set_mode("gpu")

    # --- updates ------------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        if self._mode not in MODES and self._mode != mode:
            self.mode.remove(self.stack, self._mode)  # an odd mode that is no longer current
        for m in {*MODES, mode}:
            self.mode.labels(self.stack, m).set(1 if m == mode else 0)
        self._mode = mode

    @staticmethod
    def _sweep(fam: _Family, now: set[tuple[str, ...]]) -> None:
        for gone in fam.seen - now:
            fam.metric.remove(*gone)
        fam.seen = now

    def observe(self, snap: Snapshot, stats: Stats | None = None) -> None:
        """This interval's readings. `stats` is not needed for the counters (they count the
        snapshot's requests); it is accepted so the loop can pass what the view gets."""
        self.set_mode(snap.stack.mode)
        if snap.gpus is not None:  # None: no GPU source answered; keep the last readings
            self._observe_gpus(snap)
        self._observe_services(snap)

    def _observe_gpus(self, snap: Snapshot) -> None:
        seen: set[tuple[str, ...]] = set()
        assert snap.gpus is not None
        values: dict[int, set[tuple[str, ...]]] = {}
        for g in snap.gpus:
            key = (self.stack, g.uuid or snap.stack.uuids.get(g.index) or "", str(g.index))
            seen.add(key)
            readings = (
                (self.gpu_temp, g.temperature_c),
                (self.gpu_used, None if g.memory_used_mib is None else g.memory_used_mib * MIB),
                (self.gpu_total, None if g.memory_total_mib is None else g.memory_total_mib * MIB),
                (self.gpu_util, None if g.utilization_pct is None else g.utilization_pct / 100),
                (self.gpu_power, g.power_w),
                (self.gpu_healthy, 1 if g.health == "ok" else 0),
            )
            for fam, value in readings:
                if value is not None:
                    fam.metric.labels(*key).set(value)
                    values.setdefault(id(fam), set()).add(key)
            xid = self.gpu_xid.metric.labels(*key)
            if g.xids:
                xid.inc(len(g.xids))
        gauges = (self.gpu_temp, self.gpu_used, self.gpu_total, self.gpu_util, self.gpu_power)
        for fam in (*gauges, self.gpu_healthy):
            self._sweep(fam, values.get(id(fam), set()))
        self._sweep(self.gpu_xid, seen)

    def _observe_services(self, snap: Snapshot) -> None:
        from composegen.watch.stats import is_error, service_of

        by_service: dict[str, list[Any]] = {}
        for c in snap.containers:
            by_service.setdefault(c.service, []).append(c)
        keys: set[tuple[str, ...]] = set()
        for name, cs in by_service.items():
            key = (self.stack, name)
            keys.add(key)
            running = any(c.state == "running" for c in cs)
            healthy = any(c.state == "running" and c.health in (None, "healthy") for c in cs)
            self.svc_up.metric.labels(*key).set(1 if running else 0)
            self.svc_healthy.metric.labels(*key).set(1 if healthy else 0)
            self.svc_restarts.metric.labels(*key).set(sum(c.restart_count for c in cs))
        for fam in (self.svc_up, self.svc_healthy, self.svc_restarts):
            self._sweep(fam, keys)

        models: set[tuple[str, ...]] = set()
        for res in snap.residency:
            mkey = (self.stack, res.service, res.model)
            models.add(mkey)
            self.model_gpu.metric.labels(*mkey).set(res.gpu_fraction)
        self._sweep(self.model_gpu, models)

        # gateway series live while their service is part of the stack (or answers requests)
        live = set(by_service) | set(snap.stack.planned) | set(snap.stack.routes.values())
        routes: set[tuple[str, ...]] = set()
        for r in snap.requests:
            rkey = (self.stack, service_of(r, snap.stack.routes), r.route)
            live.add(rkey[1])
            routes.add(rkey)
            self.requests.metric.labels(*rkey).inc()
            errors = self.errors.metric.labels(*rkey)
            if is_error(r):
                errors.inc()
            self.latency.metric.labels(*rkey).observe(max(r.request_time_s, 0.0))
        for fam in (self.requests, self.errors, self.latency):
            fam.seen |= routes
            self._sweep(fam, {k for k in fam.seen if k[1] in live})

    def record_events(self, events: Sequence[Event]) -> None:
        for e in events:
            self.events.labels(self.stack, e.rule, e.level).inc()
            action = heal_action(e)
            if action is not None:
                result = "failed" if e.level == "critical" else "ok"
                self.heal.labels(self.stack, action, result).inc()

    # --- output -------------------------------------------------------------------------------

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode("utf-8")

    def serve(self, addr: str) -> MetricsServer:
        from prometheus_client import start_http_server

        host, port = parse_addr(addr)
        try:
            httpd, thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ComposegenError(
                    f"--metrics {addr}: port {port} is already in use on {host}",
                    "choose another port, or 0 for any free one",
                ) from None
            raise BadInputError(
                f"--metrics {addr}: cannot listen on {host}:{port}: {exc.strerror or exc}",
                "use an address of this host, e.g. 127.0.0.1:9464",
            ) from None
        return MetricsServer(httpd, thread)


def heal_action(e: Event) -> str | None:
    """The action of a heal event: its `value` (what heal.py sets: the action, or "busy" when
    the stack's lock was held and nothing was done: not counted); without a value, the first
    word of its message when that names an action. None for every other event."""
    if e.rule != "heal":
        return None
    if e.value is not None:
        return e.value if e.value in ACTIONS else None
    first = e.message.split(" ", 1)[0].rstrip(":")
    return first if first in ACTIONS else None
