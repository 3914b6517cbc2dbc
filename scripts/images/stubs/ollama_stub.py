#!/usr/bin/python3
"""TEST-ONLY stand-in for the ollama/ollama image: both the server and the `ollama` CLI.

Image: composegen-test/ollama-stub:1, installed as /usr/bin/ollama with ENTRYPOINT
["/usr/bin/ollama"] and CMD ["serve"] like the real image.
  ollama serve         serve on $OLLAMA_HOST (default 0.0.0.0:11434; "0.0.0.0:39001",
                       "http://host:port" and ":port" forms accepted)
  ollama list | ls     the real table (NAME ID SIZE MODIFIED), exit 0; when the server does
                       not answer or is not ready: "Error: could not connect to ollama app, is
                       it running?" and exit 1 (the real image's healthcheck is `ollama list`)
  ollama ps | pull NAME | -v
Server: GET / ("Ollama is running"), GET /api/version, /api/tags (models from $STUB_MODELS,
a comma list, plus pulled ones), /api/ps (models used since start), POST /api/generate and
/api/chat (3 NDJSON lines, the last "done": true, unless "stream": false), /api/pull,
/api/embed, /api/embeddings; anything else: a 200 JSON echo. Switches: see stubkit.py.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from stubkit import StubHandler, serve

VERSION = "0.12.6-stub"
CONNECT_ERROR = "Error: could not connect to ollama app, is it running?"
STARTED_AT = time.time()
WORDS = ["Hello", " from", " stub"]


def full_name(name: str) -> str:
    name = name.strip()
    return name if ":" in name else f"{name}:latest"


MODELS = [full_name(m) for m in os.environ.get("STUB_MODELS", "llama3.2").split(",") if m.strip()]
LOADED: dict[str, float] = {}  # model -> time.time() it was last used


def host_port(value: str | None) -> tuple[str, int]:
    """Parse OLLAMA_HOST: [scheme://]host[:port][/path]; port 11434 by default."""
    value = (value or "0.0.0.0:11434").strip()
    value = value.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        host, port = value, "11434"
    return host.strip("[]") or "0.0.0.0", int(port)


def model_info(name: str) -> dict[str, Any]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    size = 1_000_000_000 + int(digest[:8], 16) % 4_000_000_000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(STARTED_AT))
    details = {"format": "gguf", "family": "stub", "parameter_size": "1B"}
    return {
        "name": name,
        "model": name,
        "modified_at": stamp,
        "size": size,
        "digest": digest,
        "details": {**details, "quantization_level": "Q4_0"},
    }


def vector(text: str, dims: int = 8) -> list[float]:
    """A small deterministic vector for a text, values in [0, 1]."""
    return [round(b / 255, 4) for b in hashlib.sha256(text.encode()).digest()[:dims]]


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class OllamaHandler(StubHandler):
    server_version = "ollama-stub"

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.gate():
            return
        path = self.path.split("?", 1)[0]
        if path == "/":
            self.send_text("Ollama is running")
        elif path == "/api/version":
            self.send_json({"version": VERSION})
        elif path == "/api/tags":
            self.send_json({"models": [model_info(m) for m in MODELS]})
        elif path == "/api/ps":
            expires = now_iso()
            models = [
                {**model_info(m), "expires_at": expires, "size_vram": model_info(m)["size"]}
                for m in sorted(LOADED)
            ]
            self.send_json({"models": models})
        else:
            self.echo(b"", {})

    def do_POST(self) -> None:
        if self.gate():
            return
        raw, doc = self.read_json()
        path = self.path.split("?", 1)[0]
        model = full_name(str(doc.get("model") or doc.get("name") or MODELS[0]))
        stream = doc.get("stream", True) is not False
        if path in ("/api/generate", "/api/chat"):
            self.generate(doc, model, stream, chat=path == "/api/chat")
        elif path == "/api/pull":
            if model not in MODELS:
                MODELS.append(model)
            steps = [{"status": "pulling manifest"}, {"status": "success"}]
            if stream:
                self.send_stream(self.ndjson(steps), "application/x-ndjson")
            else:
                self.send_json(steps[-1])
        elif path in ("/api/embed", "/api/embeddings"):
            inputs = doc.get("input", doc.get("prompt", ""))
            texts = inputs if isinstance(inputs, list) else [inputs]
            vectors = [vector(str(t)) for t in texts]
            if path == "/api/embed":
                self.send_json({"model": model, "embeddings": vectors})
            else:
                self.send_json({"embedding": vectors[0]})
        else:
            self.echo(raw, doc)

    def ndjson(self, docs: list[dict[str, Any]]) -> list[str]:
        return [json.dumps({**d, **self.common()}) + "\n" for d in docs]

    def generate(self, doc: dict[str, Any], model: str, stream: bool, chat: bool) -> None:
        base = {"model": model, "created_at": now_iso()}
        if doc.get("keep_alive") in (0, "0", "0s"):
            LOADED.pop(model, None)
        else:
            LOADED[model] = time.time()
        prompt = doc.get("messages") if chat else doc.get("prompt")
        if not prompt:  # an empty request only loads (or unloads) the model
            reason = "unload" if model not in LOADED else "load"
            key = "message" if chat else "response"
            empty: Any = {"role": "assistant", "content": ""} if chat else ""
            self.send_json({**base, key: empty, "done": True, "done_reason": reason})
            return

        def part(text: str, done: bool) -> dict[str, Any]:
            body: Any = {"role": "assistant", "content": text} if chat else text
            out = {**base, ("message" if chat else "response"): body, "done": done}
            if done:
                out.update(done_reason="stop", total_duration=1_000_000, eval_count=len(WORDS))
            return out

        if stream:
            parts = [part(w, i == len(WORDS) - 1) for i, w in enumerate(WORDS)]
            self.send_stream(self.ndjson(parts), "application/x-ndjson")
        else:
            self.send_json(part("".join(WORDS), True))


# ---- the CLI ---------------------------------------------------------------------------------


def api(path: str, body: dict[str, Any] | None = None) -> Any:
    host, port = host_port(os.environ.get("OLLAMA_HOST"))
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            text = resp.read().decode()
    except (OSError, urllib.error.URLError):  # refused, timeout, 503 while not ready
        print(CONNECT_ERROR, file=sys.stderr)
        sys.exit(1)
    return json.loads(text.strip().splitlines()[-1]) if text.strip() else {}


def human_size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def ago(stamp: str) -> str:
    then = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    secs = max(0, int(time.time() - then))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= size:
            n = secs // size
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a minute ago"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) + 4 for i in range(len(rows[0]))]
    return "\n".join(
        "".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def cli(argv: list[str]) -> int:
    cmd = argv[0] if argv else "help"
    if cmd == "serve":
        host, port = host_port(os.environ.get("OLLAMA_HOST"))
        serve(OllamaHandler, host, port, "ollama-stub")
    elif cmd in ("list", "ls"):
        rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
        for m in api("/api/tags").get("models", []):
            rows.append([m["name"], m["digest"][:12], human_size(m["size"]), ago(m["modified_at"])])
        print(table(rows))
    elif cmd == "ps":
        rows = [["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]]
        for m in api("/api/ps").get("models", []):
            rows.append([m["name"], m["digest"][:12], human_size(m["size"]), "100% GPU", "stub"])
        print(table(rows))
    elif cmd == "pull" and len(argv) > 1:
        print(api("/api/pull", {"model": argv[1], "stream": False}).get("status", ""))
    elif cmd in ("-v", "--version", "version"):
        print(f"ollama version is {VERSION}")
    else:
        print("Usage: ollama serve | list | ps | pull MODEL | -v   (TEST-ONLY stub)")
        return 0 if cmd in ("help", "-h", "--help") else 1
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
