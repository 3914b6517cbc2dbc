"""Pure: the text of ANY compose file -> findings (GPU pinning, exposure and Ollama mistakes).

Parsed with PyYAML's compose API (nodes, not data), so every finding carries the line of the
offending key or value; anchors and `<<` merge keys resolve to the line where the text is.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any, Literal

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from composegen.errors import BadInputError

Level = Literal["error", "warning"]
SHARED_LABEL = "io.composegen.gpu-shared"
# id: (level, why, fix); {service} and the other fields are filled in per finding
# fmt: off
RULES: dict[str, tuple[Level, str, str]] = {
    "CG001": ("error", "service '{service}': count and device_ids in one GPU request; Compose "
              "and the Engine reject it ('cannot set both Count and DeviceIDs')",
              "keep device_ids only (GPU UUIDs or indices) and remove count"),
    "CG002": ("error", "GPU {gpus} is pinned to both '{other}' and '{service}', which do not "
              "both declare sharing", "give each service its own GPU, or label both "
              f'{SHARED_LABEL}: "true" when they are meant to share it'),
    "CG003": ("error", "service '{service}' reserves GPUs by count (or all), which always "
              "starts at GPU 0: it gets the same GPU(s) as '{other}'",
              "pin each service with device_ids (GPU UUIDs from nvidia-smi -L, or indices)"),
    "CG004": ("error", "service '{service}': CUDA_VISIBLE_DEVICES={value} names host GPU "
              "indices, but the container's {seen} GPU(s) are renumbered from 0: CUDA does not "
              "find GPU {value}", "remove CUDA_VISIBLE_DEVICES (the device request already "
              "picks the GPUs) or use in-container indices 0..{last}"),
    "CG005": ("error", "service '{service}' ({kind}, no authentication) publishes '{port}' on "
              "every host interface; Docker's published ports bypass ufw/firewalld",
              "bind it to 127.0.0.1 (e.g. '127.0.0.1:{target}:{target}') or publish only an "
              "authenticating gateway in front of it"),
    "CG006": ("error", "service '{service}' mounts the Docker socket ({path}): whatever runs in "
              "it controls the Engine, i.e. is root on the host (CIS 5.32)", "remove the "
              "mount; if the service needs the API, put a socket proxy with an allow-list "
              "in between"),
    "CG007": ("error", "service '{service}': privileged: true gives the container every device "
              "and capability of the host (CIS 5.5)", "remove privileged; GPUs come from the "
              "device reservation, single capabilities from cap_add"),
    "CG008": ("warning", "service '{service}': network_mode: host drops network isolation: "
              "every port it listens on is reachable from outside (CIS 5.10)",
              "use a bridge network and publish only what must be reached, on 127.0.0.1"),
    "CG009": ("warning", "service '{service}': ipc: host shares the host's IPC namespace "
              "(CIS 5.17)", "set shm_size (e.g. shm_size: 16gb) for PyTorch/NCCL shared "
              "memory instead"),
    "CG010": ("warning", "GPU service '{service}' has no healthcheck: nothing tells a loaded "
              "model server from a hung one, and depends_on cannot wait for service_healthy",
              "add a healthcheck that works inside the image (Ollama: ['CMD', 'ollama', "
              "'list']; vLLM, TEI: GET /health)"),
    "CG011": ("error", "service '{service}': {var} {why}",
              "remove it; `ollama serve --help` lists the variables Ollama reads"),
    "CG012": ("warning", "GPU service '{service}' has no restart policy: after a crash, an Xid "
              "error or a reboot it stays down", "add restart: unless-stopped"),
}
# fmt: on
# ollama envconfig/config.go (AsMap and the variables it reads), across releases
OLLAMA_VARS = frozenset(
    f"OLLAMA_{v}"
    for v in (  # noqa: SIM905
        "KEEP_ALIVE MAX_LOADED_MODELS NUM_PARALLEL MAX_QUEUE SCHED_SPREAD FLASH_ATTENTION "
        "KV_CACHE_TYPE GPU_OVERHEAD CONTEXT_LENGTH LOAD_TIMEOUT HOST MODELS ORIGINS NOPRUNE "
        "DEBUG NOHISTORY MULTIUSER_CACHE LLM_LIBRARY NEW_ENGINE INTEL_GPU TMPDIR RUNNERS_DIR "
        "MAX_KEEP_ALIVE HOME"
    ).split()
)
OLLAMA_FAKES = {
    "OLLAMA_GPU_LAYERS": "is not an Ollama setting (layers offloaded are the per-request "
    "option num_gpu); Ollama ignores it",
    "OLLAMA_MAX_VRAM_USAGE": "is not an Ollama setting; Ollama ignores it",
    "OLLAMA_PHI3_GPU": "is not an Ollama setting; Ollama ignores it",
    "OLLAMA_MAX_VRAM": "was removed from Ollama; current releases ignore it",
}
_ALL_IFACES = {"", "0.0.0.0", "::", "[::]"}
_VAR = re.compile(r"\$\{\w+(?::?-([^}]*))?\}")
_MERGE = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    rule: str
    level: Level
    service: str | None
    message: str
    fix: str

    def human(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.rule} {self.level}: {self.message} (fix: {self.fix})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summary(file: str, findings: list[Finding]) -> str:
    errors = sum(f.level == "error" for f in findings)
    if not findings:
        return f"{file}: no problems found"
    return f"{file}: {errors} error(s), {len(findings) - errors} warning(s)"


# --- nodes (merge keys resolved, recursively) ---------------------------------------------------


def _str(node: Node | None) -> str | None:
    return str(node.value) if isinstance(node, ScalarNode) else None


def _map(node: Node | None, _seen: frozenset[int] = frozenset()) -> dict[str, tuple[Node, Node]]:
    out: dict[str, tuple[Node, Node]] = {}
    merged: dict[str, tuple[Node, Node]] = {}
    if id(node) in _seen:  # a mapping that merges itself (recursive alias)
        return out
    for key, value in node.value if isinstance(node, MappingNode) else []:
        if key.tag == _MERGE:
            for src in value.value if isinstance(value, SequenceNode) else [value]:
                for k, pair in _map(src, _seen | {id(node)}).items():
                    merged.setdefault(k, pair)  # earlier sources win (YAML merge spec)
        elif isinstance(key, ScalarNode):
            out[key.value] = (key, value)
    return {**merged, **out}


def _get(node: Node | None, *path: str) -> Node | None:
    for step in path:
        node = _map(node).get(step, (None, None))[1]
    return node


def _seq(node: Node | None) -> list[Node]:
    return list(node.value) if isinstance(node, SequenceNode) else []


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _resolve(text: str) -> str | None:
    """`${VAR:-default}` -> default; any other interpolation is unknown (None)."""
    if "$" not in text:
        return text
    m = _VAR.fullmatch(text)
    return m.group(1) if m and m.group(1) is not None else None


def _pairs(node: Node | None) -> dict[str, tuple[Node, str | None]]:
    """environment / labels, a mapping or a list of KEY=VALUE -> {key: (node, value)}."""
    out = {k: (knode, _str(v)) for k, (knode, v) in _map(node).items()}
    for item in _seq(node):
        key, sep, value = (_str(item) or "").partition("=")
        if key:
            out[key.strip()] = (item, value if sep else None)
    return out


def _split_colons(text: str) -> list[str]:
    """'127.0.0.1:80:80/tcp' -> ['127.0.0.1', '80', '80']; ':' inside ${...} and [...] kept."""
    parts: list[str] = []
    depth, cur = 0, ""
    for ch in re.sub(r"/(tcp|udp|sctp)$", "", text):
        depth += (ch in "{[") - (ch in "}]")
        if ch == ":" and depth == 0:
            parts, cur = [*parts, cur], ""
        else:
            cur += ch
    return [*parts, cur]


# --- what a service asks of the GPUs ------------------------------------------------------------


@dataclass
class _Req:
    node: Node
    count_key: Node | None
    count: int | None  # None: all (or unknown)
    ids: list[tuple[str | None, Node]]  # (resolved id or None when unknown, its node)


def _requests(svc: Node) -> list[_Req]:
    def is_gpu(e: Node) -> bool:
        caps = _seq(_get(e, "capabilities"))
        return _str(_get(e, "driver")) == "nvidia" or any(
            "gpu" in {_str(c), *map(_str, _seq(c))} for c in caps
        )

    devices = _seq(_get(svc, "deploy", "resources", "reservations", "devices"))
    gpus = _get(svc, "gpus")
    reqs = [_req(e) for e in [*filter(is_gpu, devices), *_seq(gpus)]]
    if gpus is not None and _str(gpus) == "all":
        reqs.append(_Req(gpus, gpus, None, []))
    return reqs


def _req(entry: Node) -> _Req:
    items = _map(entry)
    count_key, count_node = items.get("count", (None, None))
    raw = _resolve(_str(count_node) or "")
    ids: list[tuple[str | None, Node]] = []
    for node in _seq(items.get("device_ids", (None, None))[1]):
        text = _resolve(_str(node) or "")
        ids += [(p.strip(), node) for p in text.split(",")] if text else [(None, node)]
    return _Req(entry, count_key, int(raw) if raw and raw.isdigit() else None, ids)


def _overlap(a: _Req, b: _Req) -> list[str]:
    """The GPUs two requests share as far as the file tells ('0' stands for count-based)."""
    if a.ids and b.ids:
        theirs = {i for i, _ in b.ids}
        return [i for i, _ in a.ids if i is not None and i in theirs]
    if a.ids or b.ids:
        pinned, counted = (a, b) if a.ids else (b, a)
        known = [i for i, _ in pinned.ids if i is not None]
        if counted.count is None:
            return known
        return [i for i in known if i.isdigit() and int(i) < counted.count]
    return [] if 0 in (a.count, b.count) else ["0"]


# --- the rules ----------------------------------------------------------------------------------


class _Linter:
    def __init__(self, file: str) -> None:
        self.file = file
        self.findings: list[Finding] = []

    def add(
        self, node: Node, rule: str, service: str, level: Level | None = None, **f: Any
    ) -> None:
        default, why, fix = RULES[rule]
        message, how = why.format(service=service, **f), fix.format(**f)
        self.findings.append(
            Finding(self.file, _line(node), rule, level or default, service, message, how)
        )

    def service(self, name: str, key: Node, svc: Node) -> None:
        repo = (_str(_get(svc, "image")) or "").split("@")[0].rsplit("/", 1)[-1]
        repo = repo.split(":")[0].lower()
        kind = "Ollama" if repo == "ollama" else "vLLM" if repo.startswith("vllm") else None
        reqs = _requests(svc)
        env = _pairs(_get(svc, "environment"))
        for req in reqs:
            if req.count_key is not None and req.ids:
                self.add(req.count_key, "CG001", name)
        self._cuda_visible(name, reqs, env)
        for port in _seq(_get(svc, "ports")) if kind else []:
            self._port(name, kind or "", port)
        for vol in _seq(_get(svc, "volumes")):
            path = (_str(vol) or _str(_get(vol, "source")) or "").split(":")[0]
            if path.rstrip("/").endswith("docker.sock"):
                self.add(vol, "CG006", name, path=path)
        for field, bad, rule in (
            ("privileged", "true", "CG007"),
            ("network_mode", "host", "CG008"),
            ("ipc", "host", "CG009"),
        ):
            knode, vnode = _map(svc).get(field, (None, None))
            if knode is not None and (_str(vnode) or "").lower() == bad:
                self.add(knode, rule, name)
        for var, (node, _) in env.items() if kind == "Ollama" else []:
            if var.startswith("OLLAMA_") and var not in OLLAMA_VARS:
                why = OLLAMA_FAKES.get(var, "is not a variable Ollama reads (envconfig/config.go)")
                level: Level = "error" if var in OLLAMA_FAKES else "warning"
                self.add(node, "CG011", name, level, var=var, why=why)
        if reqs or _str(_get(svc, "runtime")) == "nvidia":
            health = _get(svc, "healthcheck")
            test = _get(health, "test")
            first = _str(test) or _str(next(iter(_seq(test)), None))
            if health is None or _str(_get(health, "disable")) == "true" or first == "NONE":
                self.add(key, "CG010", name)
            if _get(svc, "restart") is None and _get(svc, "deploy", "restart_policy") is None:
                self.add(key, "CG012", name)

    def _cuda_visible(self, name: str, reqs: list[_Req], env: dict[str, Any]) -> None:
        node, value = env.get("CUDA_VISIBLE_DEVICES", (None, None))
        pinned = [r for r in reqs if r.ids] or [r for r in reqs if r.count is not None]
        if node is None or not value or not pinned:
            return
        seen = sum(len(r.ids) for r in pinned) or sum(r.count or 0 for r in pinned)
        wanted = [v.strip() for v in value.split(",")]
        if all(v.isdigit() for v in wanted) and any(int(v) >= seen for v in wanted):
            self.add(node, "CG004", name, value=value, seen=seen, last=max(seen - 1, 0))

    def _port(self, name: str, kind: str, port: Node) -> None:
        if isinstance(port, MappingNode):
            ip = _str(_get(port, "host_ip"))
            target = _str(_get(port, "target")) or "?"
            shown = f"{_str(_get(port, 'published')) or '(random)'}->{target}"
        else:
            shown = _str(port) or ""
            parts = _split_colons(shown)
            if len(parts) == 1 and "$" in shown:
                return  # the whole mapping comes from a variable: unknown
            ip, target = (parts[0] if len(parts) == 3 else None), parts[-1]
        host = "" if ip is None else _resolve(ip)
        if host is not None and host in _ALL_IFACES:
            self.add(port, "CG005", name, kind=kind, port=shown, target=target)

    def sharing(self, services: dict[str, tuple[Node, Node]]) -> None:
        """CG002 / CG003: two services that may run together and claim the same GPU."""
        reqs = {n: _requests(s) for n, (_, s) in services.items()}
        shared = {n for n, (_, s) in services.items() if _label_true(s, SHARED_LABEL)}
        profiles = {
            n: {_str(p) for p in _seq(_get(s, "profiles"))} for n, (_, s) in services.items()
        }
        flagged: set[str] = set()
        for one, two in combinations(services, 2):
            apart = profiles[one] and profiles[two] and not profiles[one] & profiles[two]
            if apart or {one, two} <= shared:
                continue  # never started together by default, or sharing declared by both
            for a in reqs[one]:
                for b in reqs[two]:
                    common = _overlap(a, b)
                    if common and a.ids and b.ids:
                        node = next(n for i, n in b.ids if i in common)
                        self.add(node, "CG002", two, gpus=", ".join(map(repr, common)), other=one)
                        continue
                    for svc, req, other in ((one, a, two), (two, b, one)) if common else ():
                        if not req.ids and svc not in flagged:
                            flagged.add(svc)
                            self.add(req.count_key or req.node, "CG003", svc, other=other)


def _label_true(svc: Node, label: str) -> bool:
    return (_pairs(_get(svc, "labels")).get(label, (None, None))[1] or "").lower() == "true"


def lint(text: str, file: str = "docker-compose.yml") -> list[Finding]:
    """All findings for one compose file, sorted by line. Raises BadInputError when the text is
    not YAML or not a compose file."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInputError(f"{file}{where}: not valid YAML: {problem}") from None
    services = _get(root, "services")
    empty = isinstance(services, ScalarNode) and services.tag == "tag:yaml.org,2002:null"
    if not isinstance(root, MappingNode) or not (isinstance(services, MappingNode) or empty):
        raise BadInputError(
            f"{file}: not a compose file (no top-level services: mapping)",
            "pass a docker-compose.yml with -f FILE",
        )
    linter = _Linter(file)
    entries = _map(services)
    for name, (key, svc) in entries.items():
        if not isinstance(svc, MappingNode):
            raise BadInputError(f"{file}:{_line(key)}: services.{name} is not a mapping")
        linter.service(name, key, svc)
    linter.sharing(entries)
    return sorted(linter.findings, key=lambda f: (f.line, f.rule, f.service or ""))
