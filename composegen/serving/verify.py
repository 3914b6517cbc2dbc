"""`composegen verify`: the stack serves, checked from the outside in.

1. gateway    each route answers one real, tiny request through the published gateway
2. residency  each Ollama model in /api/ps is on its GPU (size_vram == size), partly, or on CPU
3. gpu-access `nvidia-smi -L` inside each GPU container lists exactly its planned GPUs
4. placement  NVML's compute processes, mapped to containers through /proc/PID/cgroup: each
              GPU service holds memory on its planned GPUs and on no other

Every check returns a value (passed, failed, or skipped with the reason); the CLI only prints.
The Docker client, NVML and HTTP are passed in, so each decision is tested without them.
"""

from __future__ import annotations

import io
import json
import re
import threading
import wave
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from composegen.detect.nvml import GpuProcesses
from composegen.engine.compose import Project
from composegen.profiles import Profile, Service

Status = Literal["passed", "failed", "skipped"]
LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
NVML_LOST = "Failed to initialize NVML: Unknown Error"


@dataclass(frozen=True)
class Check:
    check: str  # gateway | running | residency | gpu-access | placement
    status: Status
    detail: str

    @property
    def ok(self) -> bool | None:
        """True passed, False failed, None skipped (neither: the reason is in the detail)."""
        return None if self.status == "skipped" else self.status == "passed"


@dataclass(frozen=True)
class ModelState:
    name: str
    loaded: bool
    gpu_fraction: float | None = None  # size_vram / size of a loaded model
    size: int | None = None
    size_vram: int | None = None
    expires_at: str | None = None  # /api/ps `expires_at`: when Ollama unloads it (watch)

    @property
    def where(self) -> str:
        """As `ollama ps` words it: 100% GPU, 100% CPU, or the split."""
        if not self.loaded or self.gpu_fraction is None:
            return "not loaded"
        gpu = round(self.gpu_fraction * 100)
        if gpu >= 100:
            return "100% GPU"
        if gpu <= 0:
            return "100% CPU"
        return f"{100 - gpu}%/{gpu}% CPU/GPU"


@dataclass(frozen=True)
class ServiceReport:
    name: str
    checks: tuple[Check, ...] = ()
    models: tuple[ModelState, ...] = ()

    @property
    def ok(self) -> bool:
        return all(c.status != "failed" for c in self.checks)


@dataclass(frozen=True)
class Report:
    project: str
    services: tuple[ServiceReport, ...] = ()

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.services)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "project": self.project,
            "services": [
                {
                    "name": s.name,
                    "ok": s.ok,
                    "checks": [
                        {"check": c.check, "ok": c.ok, "status": c.status, "detail": c.detail}
                        for c in s.checks
                    ],
                    "models": [
                        {"name": m.name, "loaded": m.loaded, "gpu_fraction": m.gpu_fraction}
                        for m in s.models
                    ],
                }
                for s in self.services
            ],
        }


# --- /proc/PID/cgroup -> container ------------------------------------------------------------

# The 64-hex id as the runtimes name their cgroups: cgroup v1 and v2 with the cgroupfs driver
# `/docker/<id>`, the systemd driver `/system.slice/docker-<id>.scope` (rootless:
# `.../user@1000.service/user.slice/docker-<id>.scope`), Kubernetes
# `/kubepods/burstable/pod<uid>/<id>` and `kubepods-...-pod<uid>.slice/cri-containerd-<id>.scope`
# or `crio-<id>.scope`, Podman `libpod-<id>.scope`. Docker in Docker nests them: the last wins.
_CGROUP_ID = re.compile(
    r"(?:^|/)(?:docker-|cri-containerd-|crio-|libpod-)?([0-9a-f]{64})(?:\.scope)?(?=/|$)"
)


def container_id_from_cgroup(text: str) -> str | None:
    """The container id in the text of a /proc/PID/cgroup file; None for a host process.

    Lines read `hierarchy-id:controllers:path` (v1: one per controller; v2: `0::path`)."""
    for line in text.splitlines():
        path = line.split(":", 2)[2] if line.count(":") >= 2 else ""
        found = _CGROUP_ID.findall(path)
        if found:
            return str(found[-1])
    return None


def container_of_pid(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The container a host PID runs in, read from `<proc_root>/PID/cgroup` (None: a host
    process, or one that is gone or not ours to read)."""
    try:
        text = (proc_root / str(pid) / "cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return container_id_from_cgroup(text)


def gpu_memory_by_container(
    gpus: Sequence[GpuProcesses], proc_root: Path = Path("/proc")
) -> dict[str, dict[int, int | None]]:
    """container id -> {GPU index: MiB its processes hold there (None: NVML cannot say)}."""
    out: dict[str, dict[int, int | None]] = {}
    for g in gpus:
        for pid, used in g.processes:
            cid = container_of_pid(pid, proc_root)
            if cid is None:
                continue
            held = out.setdefault(cid, {})
            if g.index in held:
                before = held[g.index]
                held[g.index] = None if before is None or used is None else before + used
            else:
                held[g.index] = used
    return out


def _gpu_name(gpus: Sequence[GpuProcesses], index: int) -> str:
    uuid = next((g.uuid for g in gpus if g.index == index and g.uuid), None)
    return f"GPU {index} ({uuid})" if uuid else f"GPU {index}"


def _gpu_list(gpus: Sequence[GpuProcesses], indices: Iterable[int]) -> str:
    return ", ".join(_gpu_name(gpus, i) for i in sorted(indices))


def placement_check(
    service: str,
    planned: Sequence[str],
    gpus: Sequence[GpuProcesses],
    held: Mapping[int, int | None],
    idle_reason: str | None = None,
) -> Check:
    """Decide placement for one container: `planned` its device ids (UUIDs or indices), `held`
    the GPUs its processes hold memory on. `idle_reason`: why it may hold none yet (an Ollama
    server with no model loaded has no runner process)."""
    want: set[int] = set()
    for dev in planned:
        match = [g.index for g in gpus if g.uuid == dev or (dev.isdigit() and g.index == int(dev))]
        if not match:
            return Check(
                "placement",
                "failed",
                f"{service}: its planned GPU {dev} is not on this host (NVML lists "
                f"{_gpu_list(gpus, (g.index for g in gpus)) or 'no GPU'})",
            )
        want.update(match)
    got = set(held)
    if not got and idle_reason:
        return Check("placement", "skipped", f"{service}: {idle_reason}")
    missing, extra = want - got, got - want
    if not missing and not extra:
        mem = [held[i] for i in sorted(got)]
        amount = (
            f"{sum(m for m in mem if m is not None)} MiB"
            if all(m is not None for m in mem)
            else "memory"
        )
        return Check(
            "placement",
            "passed",
            f"{service} holds {amount} on {_gpu_list(gpus, want)}, as planned",
        )
    if missing and extra:
        detail = (
            f"{service} runs on {_gpu_list(gpus, extra)}, not on its planned "
            f"{_gpu_list(gpus, missing)}"
        )
    elif missing:
        detail = (
            f"{service}: no process of it holds memory on its planned {_gpu_list(gpus, missing)}"
        )
        if not got:
            detail += " (nor on any other GPU: it does not use a GPU)"
    else:
        detail = (
            f"{service} holds memory on {_gpu_list(gpus, extra)} too, beyond its planned "
            f"{_gpu_list(gpus, want)}"
        )
    return Check("placement", "failed", detail)


# --- nvidia-smi -L inside the container -------------------------------------------------------

_SMI_GPU = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[^)\s]+)\)\s*$")
_SMI_MIG = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)\s]+)\)\s*$")


def parse_smi_list(text: str) -> tuple[list[str], list[str]]:
    """(GPU UUIDs, MIG UUIDs) of `nvidia-smi -L` output."""
    gpus, migs = [], []
    for line in text.splitlines():
        if m := _SMI_GPU.match(line):
            gpus.append(m.group(2))
        elif m := _SMI_MIG.match(line):
            migs.append(m.group(1))
    return gpus, migs


def gpu_access_check(
    service: str, container: str, planned: Sequence[str], count: int | None, code: int, out: str
) -> Check:
    """`nvidia-smi -L`'s exit code and output against the planned device ids (or, pinned by
    index or count, the planned number of GPUs)."""
    text = out.strip()
    if NVML_LOST in text:
        return Check(
            "gpu-access",
            "failed",
            f"{service}: lost GPU access: nvidia-smi -L says '{NVML_LOST}' (the container lost "
            "its GPU, e.g. after `systemctl daemon-reload`: nvidia-container-toolkit#48); "
            f"recreate it, a restart is not enough: `docker rm -f {container}`, then "
            "`composegen up`",
        )
    if code in (126, 127) or "executable file not found" in text:
        return Check("gpu-access", "skipped", f"{service}: no nvidia-smi in the container")
    first = text.splitlines()[0] if text else "no output"
    if code != 0:
        return Check(
            "gpu-access", "failed", f"{service}: nvidia-smi -L failed (exit {code}): {first}"
        )
    gpus, migs = parse_smi_list(text)
    seen = gpus + migs
    if planned and all(d.startswith(("GPU-", "MIG-")) for d in planned):
        want = {d for d in planned}
        # a MIG slice lists its parent GPU too: compare the kinds the plan names
        got = set(migs) if all(d.startswith("MIG-") for d in planned) else set(seen)
        if got == want:
            return Check(
                "gpu-access", "passed", f"{service} sees exactly {', '.join(sorted(want))}"
            )
        return Check(
            "gpu-access",
            "failed",
            f"{service} sees {', '.join(sorted(got)) or 'no GPU'}, planned "
            f"{', '.join(sorted(want))}",
        )
    n = len(planned) if planned else (count or 0)
    if n <= 0:  # `all` GPUs: any number is what was asked
        return Check("gpu-access", "passed", f"{service} sees {len(gpus)} GPU(s)")
    if len(gpus) == n:
        return Check("gpu-access", "passed", f"{service} sees {n} GPU(s), as planned")
    return Check("gpu-access", "failed", f"{service} sees {len(gpus)} GPU(s), planned {n}")


# --- Ollama residency (/api/ps) ---------------------------------------------------------------


def _full(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def parse_ps(doc: Any) -> list[ModelState]:
    """The loaded models of an /api/ps answer, with the share of each on the GPU."""
    out = []
    for m in (doc or {}).get("models") or [] if isinstance(doc, dict) else []:
        if not isinstance(m, dict):
            continue
        name = str(m.get("name") or m.get("model") or "?")
        size, vram = m.get("size"), m.get("size_vram")
        frac = None
        if isinstance(size, int) and isinstance(vram, int):
            frac = 1.0 if size <= 0 or vram >= size else round(max(vram, 0) / size, 4)
        expires = m.get("expires_at")
        out.append(
            ModelState(
                name,
                True,
                frac,
                size if isinstance(size, int) else None,
                vram if isinstance(vram, int) else None,
                str(expires) if isinstance(expires, str) else None,
            )
        )
    return out


def model_states(
    loaded: Sequence[ModelState], expected: Sequence[Sequence[str]]
) -> list[ModelState]:
    """Each expected model (its names: the real one and the public one it answers to) as loaded
    or not, then any other loaded model."""
    by_name = {_full(m.name): m for m in loaded}
    out: list[ModelState] = []
    used: set[str] = set()
    for names in expected:
        hit = next((by_name[_full(n)] for n in names if _full(n) in by_name), None)
        if hit is None:
            out.append(ModelState(names[0], False))
        else:
            used.add(_full(hit.name))
            out.append(ModelState(names[0], True, hit.gpu_fraction, hit.size, hit.size_vram))
    out += [m for m in loaded if _full(m.name) not in used]
    return out


def residency_check(
    service: str, models: Sequence[ModelState], on_gpu: bool, allow_partial: bool
) -> Check:
    loaded = [m for m in models if m.loaded]
    if not loaded:
        return Check(
            "residency",
            "skipped",
            f"{service}: no model loaded (Ollama loads one on its first request)",
        )
    if not on_gpu:
        return Check(
            "residency",
            "passed",
            f"{service} runs on CPU by plan: " + ", ".join(m.name for m in loaded),
        )
    bad = []
    partial = []
    for m in loaded:
        frac = m.gpu_fraction if m.gpu_fraction is not None else 0.0
        if frac >= 1.0:
            continue
        size = f"size_vram {m.size_vram} of {m.size} bytes"
        text = f"{m.name} {m.where} (gpu_fraction {frac:g}, {size})"
        if allow_partial and frac > 0:
            partial.append(text)
        else:
            bad.append(text)
    if bad:
        return Check(
            "residency",
            "failed",
            f"{service}: not on its GPU: {'; '.join(bad)}"
            + (
                ""
                if allow_partial
                else " (a context too large for the VRAM, or a container without its GPU; "
                "set gpu.allow_partial_offload in the profile to accept a partial offload)"
            ),
        )
    if partial:
        return Check(
            "residency",
            "passed",
            f"{service}: partly on CPU, allowed by gpu.allow_partial_offload: {'; '.join(partial)}",
        )
    return Check(
        "residency",
        "passed",
        f"{service}: " + ", ".join(f"{m.name} 100% GPU" for m in loaded),
    )


# --- docker exec, bounded ---------------------------------------------------------------------


def exec_output(container: Any, cmd: list[str], timeout_s: float) -> tuple[int, str] | None:
    """(exit code, output) of a command run in the container; None when it took too long."""
    got: list[tuple[int, str]] = []

    def run() -> None:
        try:
            res = container.exec_run(cmd, stdout=True, stderr=True, demux=False)
            raw = res.output or b""
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            got.append((int(res.exit_code if res.exit_code is not None else 1), text))
        except Exception as exc:  # the container went away, or the engine refused the exec
            got.append((126, f"{type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return got[0] if got else None


# The real ollama image has bash and no curl or wget: an HTTP/1.0 GET over bash's /dev/tcp
# (HTTP/1.0: the server answers without chunking and closes, so `cat` ends).
_HTTP_GET = (
    'exec 3<>"/dev/tcp/127.0.0.1/$1" && '
    "printf 'GET %s HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' \"$2\" >&3 && cat <&3"
)


def _env_of(container: Any) -> dict[str, str]:
    env = ((container.attrs or {}).get("Config") or {}).get("Env") or []
    return dict(e.split("=", 1) for e in env if "=" in e)


def ollama_port(container: Any) -> int:
    value = _env_of(container).get("OLLAMA_HOST", "").split("://", 1)[-1].split("/", 1)[0]
    port = value.rpartition(":")[2]
    return int(port) if port.isdigit() else 11434


def is_ollama(container: Any) -> bool:
    """An Ollama server, judged from the container alone (for `status` without a profile):
    OLLAMA_HOST in its environment or `ollama` in its healthcheck."""
    attrs = container.attrs or {}
    test = ((attrs.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    return "OLLAMA_HOST" in _env_of(container) or "ollama" in [str(t) for t in test]


def read_ps(container: Any, timeout_s: float = 10.0) -> list[ModelState]:
    """/api/ps of the Ollama server in the container, through `docker exec` (backends sit on an
    internal network the host does not reach). Raises RuntimeError saying why it failed."""
    port = ollama_port(container)
    res = exec_output(container, ["bash", "-c", _HTTP_GET, "get", str(port), "/api/ps"], timeout_s)
    if res is None:
        raise RuntimeError(f"GET /api/ps on port {port} took over {timeout_s:g} s")
    code, out = res
    head, sep, body = out.partition("\r\n\r\n")
    status = head.split("\r\n", 1)[0].split()
    if code != 0 or not sep or len(status) < 2 or status[1] != "200":
        first = (out.strip().splitlines() or ["no answer"])[0][:160]
        raise RuntimeError(f"GET /api/ps on port {port} failed (exit {code}): {first}")
    try:
        return parse_ps(json.loads(body))
    except ValueError:
        raise RuntimeError(f"GET /api/ps on port {port}: not JSON: {body[:120]!r}") from None


# --- the gateway ------------------------------------------------------------------------------


def silence_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """One second of 16-bit mono silence: something to transcribe that costs nothing."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return buf.getvalue()


@dataclass(frozen=True)
class Probe:
    """One tiny request through the gateway."""

    method: str
    path: str  # below the route
    what: str  # in words, for the report
    json: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None
    expect: Callable[[Any], bool] | None = field(default=None, compare=False)


def probe_for(svc: Service) -> Probe:
    model = svc.models[0].name if svc.models else ""
    if svc.models and svc.models[0].public_name:
        model = svc.models[0].public_name
    server = svc.server_kind
    if server == "ollama":
        return Probe(
            "POST",
            "api/generate",
            f"generate 1 token with {model}",
            json={"model": model, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}},
            expect=lambda d: isinstance(d, dict) and "response" in d,
        )
    if server == "vllm" and svc.role == "ocr":
        return Probe("GET", "v1/models", "list the OCR models")
    if server == "vllm":
        return Probe(
            "POST",
            "v1/completions",
            f"complete 1 token with {model}",
            json={"model": model, "prompt": "Hi", "max_tokens": 1},
            expect=lambda d: isinstance(d, dict) and bool(d.get("choices")),
        )
    if server == "tei":
        return Probe(
            "POST",
            "embed",
            "embed one sentence",
            json={"inputs": "composegen verify embeds this sentence."},
            # TEI answers a list of vectors; a dict with them under "embeddings" (Ollama's
            # and some proxies' shape) or "data" (OpenAI's) is an answer too
            expect=lambda d: (
                bool(d if isinstance(d, list) else (d.get("embeddings") or d.get("data")))
                if isinstance(d, (list, dict))
                else False
            ),
        )
    if server == "speaches":
        return Probe(
            "POST",
            "v1/audio/transcriptions",
            "transcribe 1 s of silence",
            files={"file": ("silence.wav", silence_wav(), "audio/wav")},
            data={"model": model},
        )
    return Probe("GET", (svc.health.path or "/").lstrip("/"), "its health route")


def gateway_checks(
    prof: Profile,
    base_url: str | None,
    api_key: str | None,
    transport: Any = None,
    timeout_s: float = 120.0,
) -> list[Check]:
    """One tiny request per route of the profile's enabled services, through the gateway."""
    import httpx

    routes: dict[str, Service] = {}
    for svc in prof.enabled_services:
        if svc.route and svc.route not in routes:
            routes[svc.route] = svc
    if not routes:
        return []
    if base_url is None:
        return [
            Check("gateway", "failed", f"route {r} ({s.group}): the gateway publishes no port")
            for r, s in routes.items()
        ]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out = []
    with httpx.Client(transport=transport, timeout=timeout_s, headers=headers) as http:
        for route, svc in routes.items():
            p = probe_for(svc)
            url = base_url.rstrip("/") + route + p.path
            where = f"route {route} ({svc.group}): {p.method} {route}{p.path}"
            try:
                r = http.request(p.method, url, json=p.json, files=p.files, data=p.data)
            except httpx.HTTPError as exc:
                out.append(Check("gateway", "failed", f"{where}: {type(exc).__name__}: {exc}"))
                continue
            if r.status_code != 200:
                body = r.text.strip().replace("\n", " ")[:160]
                out.append(Check("gateway", "failed", f"{where}: HTTP {r.status_code} {body}"))
                continue
            if p.expect is not None:
                try:
                    good = p.expect(r.json())
                except ValueError:
                    good = False
                if not good:
                    body = r.text.strip().replace("\n", " ")[:160]
                    out.append(
                        Check("gateway", "failed", f"{where}: HTTP 200 but not an answer: {body}")
                    )
                    continue
            out.append(Check("gateway", "passed", f"{where}: {p.what}: HTTP 200"))
    return out


# --- the whole stack --------------------------------------------------------------------------


def load_profile(directory: Path) -> tuple[Profile, str | None]:
    """The stack's profile as it was rendered (.composegen/render.json) and its API key."""
    from composegen import profiles
    from composegen.app import load_inputs

    inputs = load_inputs(directory)
    return (
        profiles.load(inputs.profile, inputs.profiles_dirs, inputs.overrides),
        inputs.api_key,
    )


def _gateway_url(project: Project) -> str | None:
    from composegen.render import gateway_url

    for svc in project.services:
        if svc.labels.get("io.composegen.service") != "gateway":
            continue
        for p in svc.ports:
            if p.host_port is not None:
                return gateway_url(p.host_ip or "0.0.0.0", p.host_port)
    return None


def _planned(project: Project, name: str, attrs: Mapping[str, Any]) -> tuple[tuple[str, ...], int]:
    """(device ids, count) the plan gives a container: its compose file's service, else (a
    CPU-variant container, not in that file) the container's own device requests."""
    svc = next((s for s in project.services if s.name == name), None)
    if svc is not None:
        ids = tuple(i for g in svc.gpus for i in (g.device_ids or ()))
        return ids, sum(g.count or 0 for g in svc.gpus if g.device_ids is None)
    reqs = (attrs.get("HostConfig") or {}).get("DeviceRequests") or []
    ids = tuple(str(i) for r in reqs for i in (r.get("DeviceIDs") or []))
    return ids, sum(int(r.get("Count") or 0) for r in reqs if not r.get("DeviceIDs"))


NvmlReader = Callable[[], list[GpuProcesses]]


def _read_nvml(timeout_s: float) -> list[GpuProcesses]:
    from composegen.detect import nvml

    return nvml.compute_processes(timeout_s)


def verify(
    client: Any,
    project: Project,
    directory: Path,
    *,
    nvml_reader: NvmlReader | None = None,
    proc_root: Path = Path("/proc"),
    transport: Any = None,
    timeout_s: float = 120.0,
    nvml_timeout_s: float = 5.0,
) -> Report:
    from composegen.detect.nvml import NvmlUnavailable

    prof, api_key = load_profile(directory)
    from composegen.engine import docker as eng

    with eng.mapped_errors(f"project {project.name}"):
        found = client.containers.list(
            all=True, filters={"label": f"{LABEL_PROJECT}={project.name}"}
        )
    if not found:
        return Report(
            project.name,
            (
                ServiceReport(
                    "stack",
                    (
                        Check(
                            "running",
                            "failed",
                            f"project {project.name} has no containers: run `composegen up`",
                        ),
                    ),
                ),
            ),
        )
    gateway = [c for c in found if (c.labels or {}).get("io.composegen.service") == "gateway"]
    reports: list[ServiceReport] = []
    if gateway:
        g = gateway[0]
        running = ((g.attrs or {}).get("State") or {}).get("Status") == "running"
        if running:
            checks = gateway_checks(prof, _gateway_url(project), api_key, transport, timeout_s)
        else:
            checks = [Check("running", "failed", f"the gateway {g.name} is not running")]
        reports.append(
            ServiceReport(str((g.labels or {}).get(LABEL_SERVICE, "gateway")), tuple(checks))
        )
    elif _gateway_url(project) is not None:
        gone = Check("running", "failed", "the gateway has no container: run `composegen up`")
        reports.append(ServiceReport("gateway", (gone,)))

    nvml_gpus: list[GpuProcesses] | None = None
    nvml_why = ""
    held_by: dict[str, dict[int, int | None]] = {}
    backends = [c for c in found if c not in gateway]
    if any(_planned(project, _svc_label(c), c.attrs or {}) != ((), 0) for c in backends):
        try:
            nvml_gpus = (nvml_reader or (lambda: _read_nvml(nvml_timeout_s)))()
            held_by = gpu_memory_by_container(nvml_gpus, proc_root)
        except NvmlUnavailable as exc:
            nvml_why = exc.reason

    from composegen.engine.state import read_mode

    in_fallback = read_mode(directory, project.name).get("mode") == "cpu-fallback"

    def one(c: Any) -> ServiceReport:
        labels = c.labels or {}
        name = _svc_label(c)
        attrs = c.attrs or {}
        if (attrs.get("State") or {}).get("Status") != "running":
            state = (attrs.get("State") or {}).get("Status")
            if in_fallback and labels.get("io.composegen.mode") == "gpu":
                why = f"{name} is {state}: stopped by `fallback --cpu`, its CPU variant serves"
                return ServiceReport(name, (Check("running", "skipped", why),))
            return ServiceReport(name, (Check("running", "failed", f"{name} is {state}"),))
        try:
            svc: Service | None = prof.service(str(labels.get("io.composegen.service", "")))
        except KeyError:
            svc = None
        planned, count = _planned(project, name, attrs)
        on_gpu = bool(planned) or count != 0
        where = f"GPU {', '.join(planned) or f'count {count}'}" if on_gpu else "CPU"
        checks: list[Check] = [Check("running", "passed", f"{name} is running ({where})")]
        models: list[ModelState] = []
        idle = None
        if svc is not None and svc.server_kind == "ollama":
            check, models = ollama_residency(c, svc, name, on_gpu)
            checks.append(check)
            if not any(m.loaded for m in models):
                idle = "no model loaded, so no runner process on a GPU yet"
        if on_gpu:
            res = exec_output(c, ["nvidia-smi", "-L"], 20.0)
            if res is None:
                checks.append(Check("gpu-access", "failed", f"{name}: nvidia-smi -L hung"))
            else:
                checks.append(gpu_access_check(name, str(c.name), planned, count, *res))
            if nvml_gpus is None:
                checks.append(
                    Check("placement", "skipped", f"{name}: NVML not available here: {nvml_why}")
                )
            elif not planned:
                checks.append(
                    Check("placement", "skipped", f"{name}: pinned by count, not by device")
                )
            else:
                held = held_by.get(str(c.id), {})
                checks.append(placement_check(name, planned, nvml_gpus, held, idle))
        return ServiceReport(name, tuple(checks), tuple(models))

    results: dict[str, ServiceReport] = {}
    lock = threading.Lock()

    def work(c: Any) -> None:
        r = one(c)
        with lock:
            results[str(c.id)] = r

    failed = dict(eng.run_parallel(work, backends, label=lambda c: str(c.id)))
    for c in sorted(backends, key=_svc_label):
        err = failed.get(str(c.id))
        why = f"its checks failed: {eng.first_line(err)}" if err else "its checks failed"
        reports.append(
            results.get(str(c.id), ServiceReport(_svc_label(c), (Check("running", "failed", why),)))
        )
    return Report(project.name, tuple(reports))


def ollama_residency(
    c: Any, svc: Service, name: str, on_gpu: bool
) -> tuple[Check, list[ModelState]]:
    """The residency check of one Ollama container: its /api/ps against the models it serves."""
    from composegen.profile_checks import public_name

    labels = c.labels or {}
    real = [m for m in str(labels.get("io.composegen.models", "")).split(",") if m]
    expected = [[n, *_public(svc, n, public_name)] for n in real]
    try:
        models = model_states(read_ps(c), expected)
    except RuntimeError as exc:
        return Check("residency", "failed", f"{name}: {exc}"), []
    allow = bool(svc.gpu and svc.gpu.allow_partial_offload)
    return residency_check(name, models, on_gpu, allow), models


def residency_after_load(client: Any, project: Project, directory: Path) -> list[Check]:
    """`up`'s last step: the residency check of every running Ollama container, right after
    its models were loaded (a model that loaded on the CPU of a GPU service fails `up`)."""
    from composegen.engine import docker as eng
    from composegen.errors import ComposegenError

    if not any(s.labels.get("io.composegen.model-source") == "ollama" for s in project.services):
        return []  # nothing was loaded (a compose file composegen did not render, or no Ollama)
    try:
        prof, _ = load_profile(directory)
    except ComposegenError:
        return []  # no .composegen/render.json beside the file: no profile to judge against
    with eng.mapped_errors(f"project {project.name}"):
        found = client.containers.list(filters={"label": f"{LABEL_PROJECT}={project.name}"})
    out = []
    for c in sorted(found, key=_svc_label):
        try:
            svc = prof.service(str((c.labels or {}).get("io.composegen.service", "")))
        except KeyError:
            continue
        if svc.server_kind != "ollama":
            continue
        name = _svc_label(c)
        planned, count = _planned(project, name, c.attrs or {})
        out.append(ollama_residency(c, svc, name, bool(planned) or count != 0)[0])
    return out


def _svc_label(c: Any) -> str:
    return str((c.labels or {}).get(LABEL_SERVICE) or c.name)


def _public(svc: Service, real: str, public_name: Callable[..., str | None]) -> list[str]:
    model = next(
        (
            m
            for ms in (svc.models, *svc.alternatives, svc.cpu.models if svc.cpu else ())
            for m in ms
            if m.name == real
        ),
        None,
    )
    if model is None:
        return []
    pub = public_name(svc, model)
    return [pub] if pub and pub != real else []


# --- status: the models column ----------------------------------------------------------------


def models_by_container(
    client: Any, project_name: str, directory: Path | None = None
) -> dict[str, list[ModelState] | str]:
    """For `status`: each running Ollama container's models (loaded or not, GPU share), or
    why /api/ps could not be read. Other containers are left out. With the stack's directory
    (its render.json), a model loaded under its public name (an `ollama cp` alias) counts as
    the real model it stands for."""
    from composegen.errors import ComposegenError
    from composegen.profile_checks import public_name

    prof = None
    if directory is not None:
        try:
            prof = load_profile(directory)[0]
        except ComposegenError:
            prof = None  # a stack without render.json: the labels alone
    from composegen.engine import docker as eng

    with eng.mapped_errors(f"project {project_name}"):
        found = client.containers.list(filters={"label": f"{LABEL_PROJECT}={project_name}"})
    out: dict[str, list[ModelState] | str] = {}
    lock = threading.Lock()

    def work(c: Any) -> None:
        if not is_ollama(c):
            return
        labels = c.labels or {}
        real = [m for m in str(labels.get("io.composegen.models", "")).split(",") if m]
        svc = None
        if prof is not None:
            svc = next(
                (s for s in prof.services if s.name == labels.get("io.composegen.service")), None
            )
        expected = [[n, *(_public(svc, n, public_name) if svc else [])] for n in real]
        try:
            value: list[ModelState] | str = model_states(read_ps(c), expected)
        except RuntimeError as exc:
            value = str(exc)
        with lock:
            out[str(c.name)] = value

    eng.run_parallel(work, found)  # a container whose ps cannot be read has no models entry
    return out


def models_text(value: list[ModelState] | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return f"? ({value})"
    return ", ".join(f"{m.name} {m.where}" for m in value) or "none"
