"""TEST-ONLY plumbing shared by composegen's stand-in servers (model_stub.py, ollama_stub.py).

These stubs replace the real vLLM / TEI / speaches / Open WebUI / Ollama images in end-to-end
tests on machines with no GPU and no registry. They never run in production stacks.

Every JSON answer carries "served_by" (the container's hostname), "port" (the port served) and
"gpus" ($NVIDIA_VISIBLE_DEVICES, null when unset) so tests can tell replicas apart; every answer
also carries the headers X-Served-By and X-Stub-Port.

Switches (environment):
  STUB_STARTUP_DELAY_S  seconds before the server is ready (default 0); until then every
                        request is answered 503 with {"status": "loading", ...}
  STUB_FAIL=1           never ready: every request is answered 503 with {"status": "failing"}
  STUB_EXIT_AFTER_S     exit with status 1 after that many seconds (a crash)
  STUB_CHUNK_DELAY_S    pause between streamed chunks (default 0.05)
  STUB_STOP_DELAY_S     on SIGTERM, keep serving this long before exiting (default 0), as a
                        real GPU server takes seconds to drain and free its GPU memory
SIGTERM/SIGINT end the process with status 0. One line per request goes to stdout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STARTED = time.monotonic()
HOSTNAME = socket.gethostname()
GPUS = os.environ.get("NVIDIA_VISIBLE_DEVICES")


def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


STARTUP_DELAY_S = env_float("STUB_STARTUP_DELAY_S", 0.0)
FAIL = os.environ.get("STUB_FAIL", "") == "1"
EXIT_AFTER_S = env_float("STUB_EXIT_AFTER_S", 0.0)
CHUNK_DELAY_S = env_float("STUB_CHUNK_DELAY_S", 0.05)
STOP_DELAY_S = env_float("STUB_STOP_DELAY_S", 0.0)


def state() -> str:
    """The readiness: ok, loading (start-up delay not over) or failing (STUB_FAIL=1)."""
    if FAIL:
        return "failing"
    return "ok" if time.monotonic() - STARTED >= STARTUP_DELAY_S else "loading"


def log(msg: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    sys.stdout.write(f"{stamp} {msg}\n")
    sys.stdout.flush()


class StubHandler(BaseHTTPRequestHandler):
    """Base handler: body reading, JSON/text/streamed answers, the not-ready gate, logging."""

    protocol_version = "HTTP/1.1"
    server_version = "composegen-stub/1"

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def common(self) -> dict[str, Any]:
        return {"served_by": HOSTNAME, "port": self.port, "gpus": GPUS}

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def read_json(self) -> tuple[bytes, dict[str, Any]]:
        """The raw body and, when it is a JSON object, the object ({} otherwise)."""
        raw = self.read_body()
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {}
        return raw, doc if isinstance(doc, dict) else {}

    def _head(self, status: int, ctype: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("X-Served-By", HOSTNAME)
        self.send_header("X-Stub-Port", str(self.port))
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def send_bytes(self, body: bytes, ctype: str, status: int = 200) -> None:
        self._head(status, ctype, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, doc: Any, status: int = 200) -> None:
        if isinstance(doc, dict):
            doc = {**doc, **self.common()}
        self.send_bytes(json.dumps(doc).encode() + b"\n", "application/json", status)

    def send_text(self, text: str, status: int = 200) -> None:
        self.send_bytes(text.encode(), "text/plain; charset=utf-8", status)

    def send_stream(self, chunks: Iterable[str], ctype: str) -> None:
        """Chunked transfer, one chunk per item, with a short pause between items."""
        self._head(200, ctype, None)
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(CHUNK_DELAY_S)
            data = chunk.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def gate(self) -> bool:
        """Answer 503 and return True while the server is not ready (start-up or STUB_FAIL)."""
        current = state()
        if current == "ok":
            return False
        if self.command == "POST":
            self.read_body()
        self.send_json({"status": current, "error": f"stub is {current}"}, 503)
        return True

    def echo(self, raw: bytes, doc: dict[str, Any]) -> None:
        path, _, query = self.path.partition("?")
        self.send_json(
            {
                "echo": True,
                "method": self.command,
                "path": path,
                "query": query,
                "body_bytes": len(raw),
                "json": doc or None,
                "headers": dict(self.headers.items()),
            }
        )

    def log_message(self, format: str, *args: Any) -> None:
        log(f"{self.address_string()} {format % args}")


def _exit_later(seconds: float) -> None:
    def crash() -> None:
        log(f"STUB_EXIT_AFTER_S={seconds:g} reached: exiting with status 1")
        os._exit(1)

    timer = threading.Timer(seconds, crash)
    timer.daemon = True
    timer.start()


def serve(handler: type[StubHandler], host: str, port: int, name: str) -> None:
    """Serve forever on host:port; SIGTERM/SIGINT exit 0 at once."""

    def stop(signum: int, _frame: Any) -> None:
        log(f"{name}: {signal.Signals(signum).name} received, exiting")
        if STOP_DELAY_S > 0 and signum == signal.SIGTERM:
            threading.Timer(STOP_DELAY_S, lambda: os._exit(0)).start()
            return
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if EXIT_AFTER_S > 0:
        _exit_later(EXIT_AFTER_S)
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    log(
        f"{name}: TEST-ONLY stub listening on {host}:{port} as {HOSTNAME} gpus={GPUS} "
        f"delay={STARTUP_DELAY_S:g}s fail={FAIL} exit_after={EXIT_AFTER_S:g}s"
    )
    server.serve_forever()
