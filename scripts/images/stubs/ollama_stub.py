#!/usr/bin/python3
"""TEST-ONLY stand-in for the ollama/ollama image: both the server and the `ollama` CLI.

Image: composegen-test/ollama-stub:1, installed as /usr/bin/ollama with ENTRYPOINT
["/usr/bin/ollama"] and CMD ["serve"] like the real image.
  ollama serve         serve on $OLLAMA_HOST (default 0.0.0.0:11434; "0.0.0.0:39001",
                       "http://host:port" and ":port" forms accepted)
  ollama list | ls     the real table (NAME ID SIZE MODIFIED), exit 0; when the server does
                       not answer or is not ready: "Error: could not connect to ollama app, is
                       it running?" and exit 1 (the real image's healthcheck is `ollama list`)
  ollama ps            NAME ID SIZE PROCESSOR UNTIL, PROCESSOR from size_vram like the real one
  ollama pull NAME     streams the server's progress (one line per step), "success", exit 0;
                       "Error: <cause>" and exit 1 on an error line
  ollama -v

The model store is on disk, laid out like the real one, so a volume holding it is shared by
containers and survives restarts:
  $OLLAMA_MODELS (default /root/.ollama/models)/manifests/<host>/<namespace>/<model>/<tag>
  $OLLAMA_MODELS/blobs/sha256-<hex>   (a layer being fetched: sha256-<hex>-partial)
Every model's bytes are deterministic (from its name) and small (1-4 MB plus a small template
layer), so a pull is fast and its digests verifiable. STUB_MODELS (a comma list, default
"llama3.2"; empty for none) are "preinstalled": listed and loadable without being in the store
(they are not written to it, and pulling one does fetch it into the store).

Server:
  GET /                "Ollama is running"
  GET /api/version
  GET /api/tags        the preinstalled models, then the store's, read from disk per request
  POST /api/pull       {"model"|"name": M, "stream": true}: NDJSON like Ollama: "pulling
                       manifest", per layer {"status": "pulling <hex12>", "digest", "total",
                       "completed"} (several per layer), "verifying sha256 digest", "writing
                       manifest", "success". A partial layer left by an interrupted pull is
                       continued, not restarted (the first progress line of that layer shows
                       what was already there); a layer already in the store is not fetched
                       again. An unknown name (one containing "unknown", or listed in
                       STUB_UNKNOWN_MODELS) gives {"error": "pull model manifest: file does not
                       exist"} (HTTP 200 in the stream after "pulling manifest"; 500 with
                       "stream": false). STUB_PULL_RATE_MBPS (MB/s) slows the fetch so progress
                       and interruptions can be seen. Each pull that ends in "success" appends
                       one line to the pull log:
                         <UTC time> pulled <name:tag> fetched=<bytes fetched now> total=<bytes>
                         by=<hostname>
                       in $OLLAMA_MODELS/stub-pulls.log (on the store volume whatever its mount
                       point) and, the same line, in $OLLAMA_MODELS/../stub-pulls.log.
                       Concurrent pulls of one layer (two containers on one volume) wait for
                       each other (flock), and the second finds the layer complete.
  POST /api/generate, /api/chat
                       with no prompt/messages: loads the model (keep_alive as Ollama: a
                       duration like "5m", seconds, negative = forever, 0 = unload; default
                       $OLLAMA_KEEP_ALIVE or 5m); 404 {"error": "model 'M' not found"} when it
                       is neither in the store nor preinstalled. With a prompt: 3 NDJSON lines,
                       the last "done": true (one object with "stream": false), and the model
                       is loaded. A model not in the store still answers (older tests rely on
                       it) but is not loaded, unless STUB_REQUIRE_MODELS=1, which gives the 404.
  GET /api/ps          loaded, unexpired models: name, model, size, size_vram, digest,
                       expires_at, details. size_vram == size when the server process sees a
                       non-empty NVIDIA_VISIBLE_DEVICES (not "void"/"none"), 0 when it is empty
                       or absent (the model runs on the CPU), int(size * STUB_GPU_FRACTION) when
                       that is set (0..1, partial offload; only with a GPU visible; 0: the
                       server lost its GPU and runs on the CPU). The file /run/stub-gpu-fraction,
                       when present, overrides STUB_GPU_FRACTION at once (a test can `docker
                       exec ... sh -c 'echo 0 > /run/stub-gpu-fraction'` in a running stack).
  A pull that cannot write (a full disk, a read-only store) ends with {"error": "write <path>:
  no space left on device"} (the cause as Ollama words it) and leaves no manifest.
  POST /api/embed, /api/embeddings   small deterministic vectors
  anything else: a 200 JSON echo. Switches of every stub: see stubkit.py.
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import hashlib
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stubkit import GPUS, HOSTNAME, StubHandler, env_float, serve

VERSION = "0.12.6-stub"
CONNECT_ERROR = "Error: could not connect to ollama app, is it running?"
STARTED_AT = time.time()
WORDS = ["Hello", " from", " stub"]
DEFAULT_HOST = "registry.ollama.ai"
UNKNOWN_ERROR = "pull model manifest: file does not exist"
CHUNK = 128 * 1024  # bytes written between two progress lines
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
FOREVER = "2318-11-29T00:00:00Z"


def full_name(name: str) -> str:
    """llama3.2 -> llama3.2:latest (a tag after the last path part is kept)."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def env_list(name: str, default: str = "") -> list[str]:
    return [full_name(m) for m in os.environ.get(name, default).split(",") if m.strip()]


PREINSTALLED = env_list("STUB_MODELS", "llama3.2")
UNKNOWN = set(env_list("STUB_UNKNOWN_MODELS"))
REQUIRE_MODELS = os.environ.get("STUB_REQUIRE_MODELS", "") == "1"
PULL_RATE = env_float("STUB_PULL_RATE_MBPS", 0.0) * 1_000_000  # bytes per second, 0: no limit
FRACTION_FILE = Path("/run/stub-gpu-fraction")  # overrides STUB_GPU_FRACTION while present
LOADED: dict[str, float] = {}  # model -> expiry (time.time()), inf for ever
LOCK = threading.Lock()


def models_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or "/root/.ollama/models")


def gpu_visible() -> bool:
    """What a real server sees: GPUs only when its own process has NVIDIA_VISIBLE_DEVICES."""
    value = (GPUS or "").strip()
    return value not in ("", "void", "none")


def gpu_fraction() -> float:
    if not gpu_visible():
        return 0.0
    raw = os.environ.get("STUB_GPU_FRACTION", "").strip()
    with contextlib.suppress(OSError):
        raw = FRACTION_FILE.read_text().strip() or raw
    if not raw:
        return 1.0
    try:
        return min(1.0, max(0.0, float(raw)))
    except ValueError:
        return 1.0


def host_port(value: str | None) -> tuple[str, int]:
    """Parse OLLAMA_HOST: [scheme://]host[:port][/path]; port 11434 by default."""
    value = (value or "0.0.0.0:11434").strip()
    value = value.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        host, port = value, "11434"
    return host.strip("[]") or "0.0.0.0", int(port)


# ---- the model store ------------------------------------------------------------------------


def is_unknown(name: str) -> bool:
    return "unknown" in name.lower() or name in UNKNOWN


def manifest_path(name: str) -> Path:
    """Where the real server keeps a model's manifest: manifests/<host>/<ns>/<model>/<tag>."""
    repo, tag = name.rsplit(":", 1)
    parts = repo.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_HOST, "library", *parts]
    elif len(parts) == 2:
        parts = [DEFAULT_HOST, *parts]
    return models_dir().joinpath("manifests", *parts, tag)


def name_of(manifest: Path) -> str:
    rel = manifest.relative_to(models_dir() / "manifests").parts
    host, ns, model, tag = rel[0], rel[1], "/".join(rel[2:-1]), rel[-1]
    if host == DEFAULT_HOST:
        return f"{model}:{tag}" if ns == "library" else f"{ns}/{model}:{tag}"
    return f"{host}/{ns}/{model}:{tag}"


def layers_of(name: str) -> list[tuple[str, bytes]]:
    """The model's layers (media type, bytes): deterministic from the name, 1-4 MB in all."""
    seed = hashlib.sha256(name.encode()).digest()
    size = 1_000_000 + int.from_bytes(seed[:4], "big") % 3_000_000
    weights = hashlib.shake_256(b"weights:" + name.encode()).digest(size)
    template = f"{{{{ .System }}}} {{{{ .Prompt }}}} ({name}, TEST-ONLY stub)\n".encode()
    return [(MEDIA_MODEL, weights), (MEDIA_TEMPLATE, template)]


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_of(name: str) -> bytes:
    doc = {"model_format": "gguf", "model_family": "stub", "model_type": "1B", "name": name}
    return json.dumps(doc, sort_keys=True).encode()


def manifest_of(name: str) -> bytes:
    config = config_of(name)
    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": digest(config), "size": len(config)},
        "layers": [
            {"mediaType": media, "digest": digest(data), "size": len(data)}
            for media, data in layers_of(name)
        ],
    }
    return json.dumps(doc, indent=2).encode()


def blob_path(dig: str) -> Path:
    return models_dir() / "blobs" / dig.replace(":", "-")


def model_size(name: str) -> int:
    return sum(len(data) for _, data in layers_of(name)) + len(config_of(name))


def stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def model_info(name: str, manifest: Path | None = None) -> dict[str, Any]:
    if manifest is not None:
        raw = manifest.read_bytes()
        doc = json.loads(raw)
        size = doc["config"]["size"] + sum(layer["size"] for layer in doc["layers"])
        modified = manifest.stat().st_mtime
    else:
        raw, size, modified = manifest_of(name), model_size(name), STARTED_AT
    details = {"format": "gguf", "family": "stub", "parameter_size": "1B"}
    return {
        "name": name,
        "model": name,
        "modified_at": stamp(modified),
        "size": size,
        "digest": hashlib.sha256(raw).hexdigest(),
        "details": {**details, "quantization_level": "Q4_0"},
    }


def stored() -> dict[str, Path]:
    """The models in the store on disk: name -> manifest path."""
    root = models_dir() / "manifests"
    found: dict[str, Path] = {}
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).parts
            if path.is_file() and len(rel) >= 4 and not path.name.startswith("."):
                found[name_of(path)] = path
    return found


def available() -> dict[str, Path | None]:
    """Every model this server can run: the preinstalled, then the store's (sorted)."""
    out: dict[str, Path | None] = {m: None for m in PREINSTALLED}
    out.update(stored())
    return out


def pull_log(line: str) -> None:
    root = models_dir()
    for path in (root / "stub-pulls.log", root.parent / "stub-pulls.log"):
        with contextlib.suppress(OSError), path.open("a") as f:
            f.write(line + "\n")


def fetch_layer(dig: str, data: bytes, sent: list[int]) -> Iterator[dict[str, Any]]:
    """Write one layer into blobs/, continuing a partial file; yields progress objects."""
    final = blob_path(dig)
    partial = final.with_name(final.name + "-partial")
    final.parent.mkdir(parents=True, exist_ok=True)
    base = {"status": f"pulling {dig.split(':', 1)[1][:12]}", "digest": dig, "total": len(data)}
    locks = models_dir() / ".stub-locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / final.name, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pull of this layer (any container) waits
        if final.is_file() and final.stat().st_size == len(data):
            yield {**base, "completed": len(data)}
            return
        done = partial.stat().st_size if partial.is_file() else 0
        if done and (done > len(data) or data[:done] != partial.read_bytes()):
            done = 0  # not a prefix of this layer: start over
        yield {**base, "completed": done}
        started = time.monotonic()
        with partial.open("r+b" if done else "wb", buffering=0) as out:
            out.seek(done)
            out.truncate()
            fetched = 0
            while done < len(data):
                try:
                    wrote = out.write(data[done : done + CHUNK]) or 0
                except OSError as exc:  # name the file, as Ollama's "write <path>: ..." does
                    raise OSError(exc.errno, exc.strerror, str(partial)) from exc
                done += wrote
                fetched += wrote
                sent[0] += wrote
                if PULL_RATE > 0:
                    ahead = fetched / PULL_RATE - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                yield {**base, "completed": done}
        os.replace(partial, final)


def pull_steps(name: str) -> Iterator[dict[str, Any]]:
    """The progress objects of one pull, as Ollama streams them; an "error" object ends it."""
    try:
        yield from _pull_steps(name)
    except OSError as exc:  # a full disk, a read-only store: the cause, as Ollama words it
        cause = (exc.strerror or str(exc)).lower()
        yield {"error": f"write {exc.filename}: {cause}" if exc.filename else cause}


def _pull_steps(name: str) -> Iterator[dict[str, Any]]:
    yield {"status": "pulling manifest"}
    if is_unknown(name):
        yield {"error": UNKNOWN_ERROR}
        return
    sent = [0]
    blobs = [data for _, data in layers_of(name)] + [config_of(name)]
    for data in blobs:
        yield from fetch_layer(digest(data), data, sent)
    yield {"status": "verifying sha256 digest"}
    for dig in map(digest, blobs):
        if digest(blob_path(dig).read_bytes()) != dig:
            yield {"error": f"digest mismatch, file must be downloaded again: {dig}"}
            return
    yield {"status": "writing manifest"}
    target = manifest_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(manifest_of(name))
    os.replace(tmp, target)
    total = model_size(name)
    pull_log(f"{stamp(time.time())} pulled {name} fetched={sent[0]} total={total} by={HOSTNAME}")
    yield {"status": "success"}


def keep_alive_s(value: Any) -> float:
    """Ollama's keep_alive: a number of seconds or a Go duration; negative: for ever."""
    if value is None or value == "":
        value = os.environ.get("OLLAMA_KEEP_ALIVE") or "5m"
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
            parts = re.findall(r"(-?[\d.]+)(ms|h|m|s)", text)
            seconds = sum(float(n) * units[u] for n, u in parts) if parts else 300.0
    return float("inf") if seconds < 0 else seconds


def vector(text: str, dims: int = 8) -> list[float]:
    """A small deterministic vector for a text, values in [0, 1]."""
    return [round(b / 255, 4) for b in hashlib.sha256(text.encode()).digest()[:dims]]


def now_iso() -> str:
    return stamp(time.time())


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
            models = [model_info(m, p) for m, p in available().items()]
            self.send_json({"models": models})
        elif path == "/api/ps":
            self.send_json({"models": self.running()})
        else:
            self.echo(b"", {})

    def running(self) -> list[dict[str, Any]]:
        now = time.time()
        with LOCK:
            for m in [m for m, until in LOADED.items() if until <= now]:
                del LOADED[m]
            loaded = dict(LOADED)
        have = available()
        fraction = gpu_fraction()
        out = []
        for m in sorted(loaded):
            info = model_info(m, have.get(m))
            until = loaded[m]
            expires = FOREVER if until == float("inf") else stamp(until)
            vram = info["size"] if fraction >= 1.0 else int(info["size"] * fraction)
            out.append({**info, "expires_at": expires, "size_vram": vram})
        return out

    def do_POST(self) -> None:
        if self.gate():
            return
        raw, doc = self.read_json()
        path = self.path.split("?", 1)[0]
        default = PREINSTALLED[0] if PREINSTALLED else "llama3.2:latest"
        model = full_name(str(doc.get("model") or doc.get("name") or default))
        stream = doc.get("stream", True) is not False
        if path in ("/api/generate", "/api/chat"):
            self.generate(doc, model, stream, chat=path == "/api/chat")
        elif path == "/api/pull":
            self.pull(model, stream)
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

    def pull(self, model: str, stream: bool) -> None:
        steps = pull_steps(model)
        if not stream:
            last: dict[str, Any] = {}
            for last in steps:
                if "error" in last:
                    self.send_json(last, 500)
                    return
            self.send_json(last)
            return
        self._head(200, "application/x-ndjson", None)
        try:
            for step in steps:
                data = (json.dumps({**step, **self.common()}) + "\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            # the client went away: the partial layer stays for the next pull to continue
            steps.close()
            self.close_connection = True

    def ndjson(self, docs: list[dict[str, Any]]) -> list[str]:
        return [json.dumps({**d, **self.common()}) + "\n" for d in docs]

    def generate(self, doc: dict[str, Any], model: str, stream: bool, chat: bool) -> None:
        base = {"model": model, "created_at": now_iso()}
        present = model in available()
        prompt = doc.get("messages") if chat else doc.get("prompt")
        if not present and (not prompt or REQUIRE_MODELS):
            self.send_json({"error": f"model '{model}' not found"}, 404)
            return
        keep = keep_alive_s(doc.get("keep_alive"))
        with LOCK:
            if keep == 0:
                LOADED.pop(model, None)
            elif present:
                LOADED[model] = time.time() + keep
        if not prompt:  # an empty request only loads (or unloads) the model
            reason = "unload" if keep == 0 else "load"
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


def base_url() -> str:
    host, port = host_port(os.environ.get("OLLAMA_HOST"))
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def api(path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base_url() + path, data=data)
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            text = resp.read().decode()
    except (OSError, urllib.error.URLError):  # refused, timeout, 503 while not ready
        print(CONNECT_ERROR, file=sys.stderr)
        sys.exit(1)
    return json.loads(text.strip().splitlines()[-1]) if text.strip() else {}


def human_size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def ago(when: str) -> str:
    then = calendar.timegm(time.strptime(when, "%Y-%m-%dT%H:%M:%SZ"))
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


def processor(size: int, vram: int) -> str:
    """The real `ollama ps` PROCESSOR column."""
    if vram <= 0:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    cpu = round((size - vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def pull_cli(name: str) -> int:
    """`ollama pull NAME`: the server's progress as lines, like the real CLI without a TTY."""
    body = json.dumps({"model": name, "stream": True}).encode()
    req = urllib.request.Request(base_url() + "/api/pull", data=body)
    shown: dict[str, int] = {}
    status = ""
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            for line in resp:
                if not line.strip():
                    continue
                step = json.loads(line)
                if "error" in step:
                    print(f"Error: {step['error']}", file=sys.stderr)
                    return 1
                status = str(step.get("status", ""))
                total = int(step.get("total") or 0)
                if total:
                    pct = int(int(step.get("completed") or 0) * 100 / total)
                    if shown.get(status, -1) // 25 == pct // 25 and pct < 100:
                        continue  # one line per quarter, like a redrawn bar
                    shown[status] = pct
                    done = human_size(int(step.get("completed") or 0))
                    print(f"{status}... {pct:3d}% {done}/{human_size(total)}", flush=True)
                elif status:
                    print(status, flush=True)
    except (OSError, urllib.error.URLError):
        print(CONNECT_ERROR, file=sys.stderr)
        return 1
    if status != "success":
        print("Error: the pull ended before it succeeded", file=sys.stderr)
        return 1
    return 0


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
            cpu_gpu = processor(m["size"], m["size_vram"])
            rows.append([m["name"], m["digest"][:12], human_size(m["size"]), cpu_gpu, "stub"])
        print(table(rows))
    elif cmd == "pull" and len(argv) > 1:
        return pull_cli(argv[1])
    elif cmd in ("-v", "--version", "version"):
        print(f"ollama version is {VERSION}")
    else:
        print("Usage: ollama serve | list | ps | pull MODEL | -v   (TEST-ONLY stub)")
        return 0 if cmd in ("help", "-h", "--help") else 1
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
