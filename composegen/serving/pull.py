"""`composegen models pull`: fill every model store of a stack, GPU and CPU variants alike.

The backends sit on an internal network and cannot download, so each store is filled by a
one-shot fetch container on the egress network `<project>_fetch` (created here, removed after):

- Ollama: the service's own image runs `ollama serve` with the store's volume and
  OLLAMA_MODELS, its port published on 127.0.0.1; composegen (httpx, on the host) reads
  `/api/tags`, then streams `/api/pull` for each missing model and `/api/copy` for each
  missing alias. A store that a running service of the stack serves is checked with `ollama
  list` in that container first, so a store that is complete starts no fetch container.
- Hugging Face: the profile's `hf-fetch` image runs fetch_script.SCRIPT with `python3 -c`,
  HF_HUB_OFFLINE=0, HF_TOKEN and HF_ENDPOINT from .env (the token is never printed), and prints
  JSON progress lines.

Stores are filled in parallel; a failure names the model, the services and the cause, and
leaves the stack's own containers alone. All docker calls go through the client passed in.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from composegen.engine import docker as eng
from composegen.errors import ComposegenError
from composegen.serving.models import ModelPlan, Store, ollama_name

OLLAMA_PORT = 11434
READY_TIMEOUT_S = 120.0
Event = Callable[[dict[str, Any]], None]


class PullError(ComposegenError):
    """A model could not be fetched (exit 1)."""


@dataclass(frozen=True)
class Failure:
    model: str
    services: tuple[str, ...]
    kind: str  # unknown_model | gated | disk_full | network | no_image | other
    message: str

    def line(self) -> str:
        return f"model {self.model} (service {', '.join(self.services)}): {self.message}"


@dataclass
class PullResult:
    fetched: list[tuple[str, str, int]] = field(default_factory=list)  # (store, model, bytes)
    present: list[tuple[str, str]] = field(default_factory=list)  # (store, model)
    failures: list[Failure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class OllamaApi(Protocol):
    def ready(self, timeout_s: float) -> bool: ...
    def tags(self) -> set[str]: ...
    def pull(self, model: str) -> Iterator[dict[str, Any]]: ...
    def copy(self, source: str, destination: str) -> None: ...


class HttpOllama:
    """The Ollama API of a fetch container, through its port on 127.0.0.1."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    def ready(self, timeout_s: float) -> bool:
        import httpx

        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                if httpx.get(self.base + "/", timeout=2.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    def tags(self) -> set[str]:
        import httpx

        r = httpx.get(self.base + "/api/tags", timeout=30.0)
        r.raise_for_status()
        return {ollama_name(str(m.get("name", ""))) for m in r.json().get("models", [])}

    def pull(self, model: str) -> Iterator[dict[str, Any]]:
        import httpx

        body = {"model": model, "stream": True}
        timeout = httpx.Timeout(30.0, read=600.0)
        with httpx.stream("POST", self.base + "/api/pull", json=body, timeout=timeout) as r:
            if r.status_code != 200:
                r.read()
                try:
                    err = str(r.json().get("error") or r.text)
                except ValueError:
                    err = r.text
                yield {"error": err.strip() or f"HTTP {r.status_code}"}
                return
            for line in r.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def copy(self, source: str, destination: str) -> None:
        import httpx

        r = httpx.post(
            self.base + "/api/copy",
            json={"source": source, "destination": destination},
            timeout=60.0,
        )
        if r.status_code != 200:
            raise PullError(f"ollama cp {source} {destination}: HTTP {r.status_code}: {r.text}")


def ollama_failure(text: str) -> str:
    """The cause behind an Ollama pull error."""
    low = text.lower()
    if "no space left" in low:
        return "disk_full"
    if "file does not exist" in low or "not found" in low or "manifest unknown" in low:
        return "unknown_model"
    if "dial tcp" in low or "timeout" in low or "connection" in low or "lookup" in low:
        return "network"
    return "other"


_EXPLAIN = {
    "unknown_model": "unknown model ({})",
    "gated": "{}",
    "disk_full": "disk full ({})",
    "network": "network: {}",
    "not_found": "unknown model ({})",
}


def _explain(kind: str, text: str) -> str:
    return _EXPLAIN.get(kind, "{}").format(text)


# --- progress ----------------------------------------------------------------------------------


class ModelProgress:
    """Per model: bytes, rate and ETA. Rich progress bars on a terminal, a plain line per
    step (and every 10%) in a log, JSON events with --json (as engine/progress.py does)."""

    def __init__(self, as_json: bool, tty: bool | None = None, out: Callable[[str], None] = print):
        import sys

        self.as_json = as_json
        self.tty = (sys.stdout.isatty() if tty is None else tty) and not as_json
        self.out = out
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.started: dict[str, tuple[float, int]] = {}
        self.shown: dict[str, int] = {}
        self.bars: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ModelProgress:
        if self.tty:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bars is not None:
            self.bars.__exit__(*exc)

    def __call__(self, ev: dict[str, Any]) -> None:
        with self.lock:
            self._event(ev)

    def _event(self, ev: dict[str, Any]) -> None:
        t = time.monotonic()
        ev = {**ev, "t": round(t - self.t0, 3)}
        key = f"{ev.get('store')} {ev.get('model')}"
        if ev.get("event") == "progress":
            total, done = int(ev.get("total") or 0), int(ev.get("completed") or 0)
            t0, c0 = self.started.setdefault(key, (t, done))
            rate = (done - c0) / (t - t0) if t > t0 and done > c0 else 0.0
            eta = (total - done) / rate if rate > 0 and total >= done else None
            ev.update(rate=round(rate), eta_s=round(eta, 1) if eta is not None else None)
            if self.as_json:
                step = int(done * 10 / total) if total else 0
                if step > self.shown.get(key, -1):  # (layers add to the total as they come)
                    self.shown[key] = step
                    self.out(json.dumps(ev))
            elif self.bars is not None:
                if key not in self.tasks:
                    self.tasks[key] = self.bars.add_task(str(ev.get("model")), total=total or None)
                self.bars.update(self.tasks[key], total=total or None, completed=done)
            else:
                step = int(done * 10 / total) if total else 0
                if step > self.shown.get(key, -1):  # (layers add to the total as they come)
                    self.shown[key] = step
                    pct = f"{done * 100 // total}%" if total else ""
                    eta_s = f", ETA {eta:.0f}s" if eta is not None else ""
                    self.out(
                        f"[{ev['t']:7.2f}s] {ev.get('model')} ({ev.get('services')}): {pct} "
                        f"{done / 1e6:.1f}/{total / 1e6:.1f} MB, {rate / 1e6:.1f} MB/s{eta_s}"
                    )
            return
        if self.as_json:
            self.out(json.dumps(ev))
            return
        text = f"{ev.get('model') or ev.get('store')}: {ev.get('status', ev.get('event'))}"
        if ev.get("detail"):
            text += f" ({ev['detail']})"
        if self.bars is not None:
            self.bars.console.print(text)
        else:
            self.out(f"[{ev['t']:7.2f}s] {text}")


# --- the pull ----------------------------------------------------------------------------------


def fetch_network(project: str) -> str:
    return f"{project}_fetch"


def _labels(project: str, service: str) -> dict[str, str]:
    return {
        eng.LABEL_PROJECT: project,
        # a one-off container of the project, as `docker-compose run` labels them (no service
        # of the file, so nothing that looks for the stack's own containers takes it for one)
        eng.LABEL_SERVICE: f"{service}-fetch",
        eng.LABEL_ONEOFF: "True",
        "io.composegen.fetch": service,
    }


def _running_service(client: Any, project: str, store: Store) -> Any:
    """A running container of the stack that serves exactly this store (its model-store
    label is the store's path), or None."""
    for name in store.services:
        try:
            found = client.containers.list(
                filters={"label": [f"{eng.LABEL_PROJECT}={project}", f"{eng.LABEL_SERVICE}={name}"]}
            )
        except Exception:  # the presence check is an optimisation: fall back to a fetch container
            return None
        for c in found:
            labels = c.labels or {}
            if c.status == "running" and labels.get("io.composegen.model-store") == store.path:
                return c
    return None


def _ollama_list(container: Any) -> set[str] | None:
    code, text = eng.exec_output(container, ["ollama", "list"], 30.0)
    if code != 0:
        return None
    names = set()
    for line in text.splitlines()[1:]:
        if line.strip():
            names.add(ollama_name(line.split()[0]))
    return names


def _missing(store: Store, have: set[str]) -> tuple[list[str], list[tuple[str, str]]]:
    models = [w.name for w in store.models if ollama_name(w.name) not in have]
    aliases = [(r, p) for r, p in store.aliases if ollama_name(p) not in have]
    return models, aliases


class _Run:
    def __init__(
        self,
        client: Any,
        project: str,
        env: Mapping[str, str],
        emit: Event,
        result: PullResult,
        api_factory: Callable[[str], OllamaApi],
        timeout_s: float,
        pull_images: bool = True,
    ) -> None:
        self.pull_images = pull_images
        self.client = client
        self.project = project
        self.env = env
        self.emit = emit
        self.result = result
        self.api_factory = api_factory
        self.timeout_s = timeout_s
        self.lock = threading.Lock()

    def fail(self, store: Store, model: str, kind: str, message: str) -> None:
        f = Failure(model, store.services_of(model), kind, message)
        with self.lock:
            self.result.failures.append(f)
        self.emit(
            {
                "event": "error",
                "store": store.where,
                "model": model,
                "services": ",".join(store.services_of(model)),
                "kind": kind,
                "detail": message,
            }
        )

    def note(self, store: Store, model: str, status: str, **more: Any) -> None:
        ev = {"event": "model", "store": store.where, "model": model, "status": status}
        ev["services"] = ",".join(store.services)
        self.emit({**ev, **more})

    def container_name(self, store: Store) -> str:
        safe = "".join(c if c.isalnum() else "-" for c in store.where).strip("-")
        return f"{self.project}-fetch-{safe}"[:120]

    # Ollama

    def ollama(self, store: Store) -> None:
        running = _running_service(self.client, self.project, store)
        if running is not None:
            have = _ollama_list(running)
            if have is not None and _missing(store, have) == ([], []):
                for w in store.models:
                    self.present(store, w.name)
                return
        c = eng.run_oneoff(
            self.client,
            image=store.image,
            name=self.container_name(store),
            labels=_labels(self.project, store.services[0]),
            environment={
                "OLLAMA_HOST": f"0.0.0.0:{OLLAMA_PORT}",
                "OLLAMA_MODELS": store.path,
                "OLLAMA_NOPRUNE": "1",
            },
            volumes={f"{self.project}_{store.volume}": store.mount},
            network=fetch_network(self.project),
            pull=self.pull_images,
            command=["serve"],
            publish=OLLAMA_PORT,
        )
        try:
            port = None
            end = time.monotonic() + 30
            while port is None and time.monotonic() < end:
                port = eng.published_port(c, OLLAMA_PORT)
                if port is None:
                    time.sleep(0.2)
            if port is None:
                raise PullError(f"fetch container for {store.where}: no published port")
            api = self.api_factory(f"http://127.0.0.1:{port}")
            if not api.ready(READY_TIMEOUT_S):
                raise PullError(
                    f"fetch container for {store.where} ({store.image}): the Ollama server did "
                    f"not answer within {READY_TIMEOUT_S:.0f}s"
                )
            models, aliases = _missing(store, api.tags())
            for w in store.models:
                if w.name not in models:
                    self.present(store, w.name)
            for name in models:
                if not self.ollama_pull(store, api, name):
                    return
            for real, public in aliases:
                api.copy(real, public)
                self.note(store, public, "alias", detail=f"ollama cp {real} {public}")
        finally:
            eng.remove_quietly(c)

    def present(self, store: Store, model: str) -> None:
        with self.lock:
            self.result.present.append((store.where, model))
        self.note(store, model, "present")

    def ollama_pull(self, store: Store, api: OllamaApi, name: str) -> bool:
        self.note(store, name, "pulling")
        layers: dict[str, tuple[int, int]] = {}
        last = ""
        for step in api.pull(name):
            if "error" in step:
                text = str(step["error"])
                kind = ollama_failure(text)
                self.fail(store, name, kind, _explain(kind, text))
                return False
            last = str(step.get("status", ""))
            if step.get("digest") and step.get("total"):
                layers[str(step["digest"])] = (int(step.get("completed") or 0), int(step["total"]))
                total = sum(t for _, t in layers.values())
                done = sum(c for c, _ in layers.values())
                self.emit(
                    {
                        "event": "progress",
                        "store": store.where,
                        "model": name,
                        "services": ",".join(store.services),
                        "completed": done,
                        "total": total,
                    }
                )
        if last != "success":
            self.fail(store, name, "network", f"the pull ended before it succeeded ({last!r})")
            return False
        size = sum(t for _, t in layers.values())
        with self.lock:
            self.result.fetched.append((store.where, name, size))
        self.note(store, name, "pulled", bytes=size)
        return True

    # Hugging Face

    def huggingface(self, store: Store) -> None:
        from composegen.serving.fetch_script import SCRIPT

        if not store.image:
            for w in store.models:
                self.fail(
                    store,
                    str(w),
                    "no_image",
                    "no fetch image: add images.hf-fetch (an image with python3 and "
                    "huggingface_hub) to the profile and re-render, or --image hf-fetch=IMAGE",
                )
            return
        spec = {
            "cache_dir": store.path,
            "models": [{"name": w.name, "revision": w.revision} for w in store.models],
        }
        env = {"HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
        for var in ("HF_TOKEN", "HF_ENDPOINT"):
            value = os.environ.get(var) or self.env.get(var)
            if value:
                env[var] = value
        c = eng.run_oneoff(
            self.client,
            image=store.image,
            name=self.container_name(store),
            labels=_labels(self.project, store.services[0]),
            environment=env,
            volumes={f"{self.project}_{store.volume}": store.mount},
            network=fetch_network(self.project),
            pull=self.pull_images,
            entrypoint=["python3"],
            command=["-c", SCRIPT, json.dumps(spec)],
        )
        try:
            seen_error = False
            done: set[str] = set()
            for line in eng.stdout_lines(c):
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(ev, dict):
                    continue
                model = str(ev.get("model", ""))
                if ev.get("event") == "file":
                    self.emit(
                        {
                            "event": "progress",
                            "store": store.where,
                            "model": model,
                            "file": ev.get("file"),
                            "services": ",".join(store.services),
                            "completed": int(ev.get("completed") or 0),
                            "total": int(ev.get("total") or 0),
                        }
                    )
                elif ev.get("event") == "done":
                    done.add(model)
                    fetched = int(ev.get("fetched_bytes") or 0)
                    if fetched:
                        with self.lock:
                            self.result.fetched.append((store.where, model, fetched))
                        self.note(
                            store, model, "fetched", bytes=fetched, revision=ev.get("revision")
                        )
                    else:
                        self.present(store, model)
                elif ev.get("event") == "error":
                    seen_error = True
                    kind = str(ev.get("kind") or "other")
                    self.fail(store, model, kind, _explain(kind, str(ev.get("message", ""))))
            code = eng.wait_exit(c, self.timeout_s)
            if code != 0 and not seen_error:
                left = [str(w) for w in store.models if w.name not in done]
                self.fail(
                    store,
                    left[0] if left else store.where,
                    "other",
                    f"the fetch container ({store.image}) exited with {code} "
                    "(an image without python3 and huggingface_hub?)",
                )
        finally:
            eng.remove_quietly(c)


def pull(
    client: Any,
    project: str,
    plan: ModelPlan,
    *,
    env: Mapping[str, str] | None = None,
    emit: Event | None = None,
    api_factory: Callable[[str], OllamaApi] = HttpOllama,
    timeout_s: float = 3600.0,
    pull_images: bool = True,
) -> PullResult:
    """Fill every store of the plan; returns what was fetched, what was there, and every
    failure (the caller decides the exit code). The fetch containers and the fetch network
    are removed whatever happens."""
    out: Event = emit or (lambda e: None)
    result = PullResult(skipped=[f"{s.service}: {s.why}" for s in plan.skipped])
    if not plan.stores:
        return result
    run = _Run(client, project, env or {}, out, result, api_factory, timeout_s, pull_images)
    network = fetch_network(project)
    # one this run did not create (an operator's, with a mirror on it) is left as it was
    labels = {eng.LABEL_PROJECT: project, "io.composegen.fetch": "true"}
    created = eng.ensure_network(client, network, labels)
    try:

        def one(store: Store) -> None:
            if store.source == "ollama":
                run.ollama(store)
            else:
                run.huggingface(store)

        failures = eng.run_parallel(one, plan.stores, lambda s: s.where)
        for where, exc in list(failures):
            if isinstance(exc, eng.ImageMissingError):  # the store's fetch image: named
                failures.remove((where, exc))
                store = next(s for s in plan.stores if s.where == where)
                for w in store.models:
                    run.fail(store, str(w), "image", exc.message)
    finally:
        # after Ctrl-C the workers may still hold their containers: remove every fetch
        # container of the project (a later run resumes what they had fetched)
        _remove_fetch_containers(client, project)
        if created:
            eng.remove_network(client, network)
    for where, exc in failures:
        store = next(s for s in plan.stores if s.where == where)
        text = eng.first_line(exc)
        run.fail(store, ", ".join(str(w) for w in store.models), "other", text)
    return result


def _remove_fetch_containers(client: Any, project: str) -> None:
    try:
        found = client.containers.list(
            all=True, filters={"label": [f"{eng.LABEL_PROJECT}={project}", "io.composegen.fetch"]}
        )
    except Exception:  # the engine went away: nothing more can be cleaned now
        return
    for c in found:
        eng.remove_quietly(c)


def raise_failures(result: PullResult) -> None:
    if result.failures:
        first = result.failures[0]
        more = f" (and {len(result.failures) - 1} more)" if len(result.failures) > 1 else ""
        hint = {
            "gated": "set HF_TOKEN in the stack's .env to a token with access, then run it again",
            "unknown_model": "check the model's name in the profile and re-render",
            "not_found": "check the repository and revision in the profile and re-render",
            "disk_full": "free space where the Docker volumes live, then run it again (it resumes)",
            "network": "check the host's network (or HF_ENDPOINT), then run it again (it resumes)",
            "image": "docker pull the image (or build it), or render with --image KEY=IMAGE to "
            "use another image",
        }.get(first.kind, "run `composegen models pull` again once it is fixed (it resumes)")
        raise PullError(first.line() + more, hint)


def stack_plan(directory: Path, gpu_project: Any) -> ModelPlan:
    """The stores of a rendered stack: its compose file and, when there, the CPU variant's."""
    from composegen.engine.compose import load_project
    from composegen.serving.models import members_of_project, stack_models

    cpu_file = directory / "fallback" / "docker-compose.cpu.yml"
    gpu = members_of_project(gpu_project, "gpu")
    cpu = []
    if cpu_file.is_file():
        cpu = members_of_project(load_project(cpu_file, gpu_project.name, env_dir=directory), "cpu")
    return stack_models(gpu, cpu)


def prepare_volumes(client: Any, directory: Path, gpu_project: Any) -> None:
    """The stack's named volumes (with Compose's labels), so a fetch container mounts the
    same volume `up` will: those of the compose file and of the CPU variant's."""
    from composegen.engine.compose import load_project
    from composegen.engine.up import ensure_resources

    ensure_resources(client, gpu_project)
    cpu_file = directory / "fallback" / "docker-compose.cpu.yml"
    if cpu_file.is_file():
        ensure_resources(client, load_project(cpu_file, gpu_project.name, env_dir=directory))


def pull_stack(
    client: Any, project: Any, emit: Event | None = None, pull_images: bool = True
) -> tuple[ModelPlan, PullResult]:
    """`composegen models pull` on a loaded compose file: its stores and the CPU variant's,
    the volumes made first, HF_TOKEN / HF_ENDPOINT from the stack's .env."""
    from composegen.engine.compose import read_dotenv

    plan = stack_plan(project.directory, project)
    if plan.stores:
        prepare_volumes(client, project.directory, project)
    env = read_dotenv(project.directory / ".env")
    return plan, pull(client, project.name, plan, env=env, emit=emit, pull_images=pull_images)
