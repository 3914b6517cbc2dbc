"""The host around the GPUs: CPU, RAM, OS, and whether its Docker engine can run GPU containers.

The Docker SDK is imported here only inside `probe_docker`, so commands that do not need the
engine never pay for the import.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
from pathlib import Path
from typing import Any

from composegen.inventory import DockerEngine, Host

HOOK = "nvidia-container-runtime-hook"
DEFAULT_CDI_DIRS = ("/etc/cdi", "/var/run/cdi")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model(cpuinfo: str) -> str | None:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or None


def meminfo_mib(meminfo: str) -> tuple[int | None, int | None]:
    total = avail = None
    for line in meminfo.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if not parts or not parts[0].isdigit():
            continue
        kib = int(parts[0])
        if key == "MemTotal":
            total = kib // 1024
        elif key == "MemAvailable":
            avail = kib // 1024
    return total, avail


def os_name(os_release: str) -> str:
    for line in os_release.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return f"{platform.system()} {platform.release()}"


def _dockerd_paths() -> list[str]:
    """PATH of the running dockerd, which is where the engine looks for the NVIDIA hook."""
    paths: list[str] = []
    proc = Path("/proc")
    try:
        entries = list(proc.iterdir())
    except OSError:
        return paths
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "dockerd":
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"PATH="):
                paths.extend(item[5:].decode("utf-8", "replace").split(os.pathsep))
    return paths


def find_hook() -> bool:
    if shutil.which(HOOK):
        return True
    return any(os.access(os.path.join(d, HOOK), os.X_OK) for d in _dockerd_paths() if d)


def nvidia_cdi_specs(dirs: tuple[str, ...]) -> tuple[str, ...]:
    found: list[str] = []
    for d in dirs:
        try:
            candidates = sorted(Path(d).iterdir())
        except OSError:
            continue
        for f in candidates:
            if f.suffix in (".yaml", ".yml", ".json") and "nvidia.com/" in _read(str(f)):
                found.append(str(f))
    return tuple(found)


def engine_from_info(version: dict[str, Any], info: dict[str, Any], hook: bool) -> DockerEngine:
    """Pure: what the engine's /version and /info answers say about GPU requests."""
    runtimes = tuple(sorted((info.get("Runtimes") or {}).keys()))
    cdi_dirs = tuple(info.get("CDISpecDirs") or ())
    cdi = nvidia_cdi_specs(cdi_dirs) if cdi_dirs else ()
    nvidia_runtime = "nvidia" in runtimes
    return DockerEngine(
        reachable=True,
        version=version.get("Version"),
        api_version=version.get("ApiVersion"),
        runtimes=runtimes,
        nvidia_runtime=nvidia_runtime,
        nvidia_hook=hook,
        cdi_specs=cdi,
        # The engine's "nvidia" device driver exists only when the hook is on dockerd's PATH;
        # the nvidia runtime ships the hook; CDI needs specs and the engine's CDI support.
        gpu_requests=hook or nvidia_runtime or bool(cdi),
    )


def probe_docker(timeout_s: float = 3.0) -> DockerEngine:
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:  # pragma: no cover - a declared dependency
        return DockerEngine(error=f"the Docker SDK for Python is missing: {exc}")
    try:
        client = docker.from_env(timeout=timeout_s)
        try:
            version = client.version()
            info = client.info()
        finally:
            client.close()
    except DockerException as exc:
        return DockerEngine(error=_engine_error(exc), nvidia_hook=find_hook())
    except OSError as exc:
        return DockerEngine(error=f"cannot reach the Docker engine: {exc}", nvidia_hook=find_hook())
    return engine_from_info(version, info, find_hook())


def _os_causes(exc: BaseException) -> list[BaseException]:
    """The OS-level errors behind a docker-py exception (its cause chain and wrapped args)."""
    out: list[BaseException] = []
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        cur = todo.pop()
        if id(cur) in seen or len(seen) > 32:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError):
            out.append(cur)
        todo.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))
        for nxt in (cur.__cause__, cur.__context__):
            if nxt is not None:
                todo.append(nxt)
    return out


def _engine_error(exc: BaseException) -> str:
    for cause in _os_causes(exc):
        if isinstance(cause, FileNotFoundError):
            return "no Docker engine is running (its socket does not exist)"
        if isinstance(cause, PermissionError):
            return "no permission to use the Docker socket (add yourself to the docker group)"
        if isinstance(cause, ConnectionRefusedError):
            return "the Docker engine refused the connection (is dockerd running?)"
        if isinstance(cause, TimeoutError):
            return "the Docker engine did not answer in time"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"cannot reach the Docker engine: {first[:200]}"


def probe_host(docker_timeout_s: float = 3.0, with_docker: bool = True) -> Host:
    total, avail = meminfo_mib(_read("/proc/meminfo"))
    return Host(
        hostname=socket.gethostname(),
        os=os_name(_read("/etc/os-release")),
        cpu_model=cpu_model(_read("/proc/cpuinfo")),
        cpu_cores=os.cpu_count(),
        ram_total_mib=total,
        ram_available_mib=avail,
        docker=probe_docker(docker_timeout_s) if with_docker else None,
    )
