"""Carry out a fallback on a running stack: make before break, and never touch a named volume.

- to CPU: start the CPU variant (fallback/docker-compose.cpu.yml, same project, so the same
  networks and named volumes) beside the GPU services, wait until it is healthy, point the
  gateway at it by reloading nginx (its port never closes), then stop the GPU containers;
- GPUs failed: the re-planned files are written by engine/failover.py, then the gateway
  reloads first (failed replicas leave the rotation), then only the affected containers change;
- restore from CPU: the GPU services start and become healthy beside the CPU ones, the gateway
  reloads onto them, its old workers drain, and only then are the CPU containers removed.

What to do and when (the lock, the mode, which files) is engine/failover.py's business.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from composegen.engine import compose_v2
from composegen.engine import docker as eng
from composegen.engine import up as engine_up
from composegen.engine.compose import Project, Service, load_project
from composegen.errors import BadInputError, ComposegenError

GPU_CONF_BACKUP = "nginx/nginx.gpu.conf"


@dataclass(frozen=True)
class Step:
    what: str
    detail: str


def _gateway(client: Any, project: str) -> Any:
    found = client.containers.list(
        filters={"label": [f"{eng.LABEL_PROJECT}={project}", "io.composegen.service=gateway"]}
    )
    return found[0] if found else None


def reload_nginx(client: Any, project: str, directory: Path, new_conf: str) -> None:
    """Swap nginx/nginx.conf and reload the running gateway; put the old file back if nginx
    refuses the new one, so the gateway keeps serving."""
    from composegen.files import write_atomic

    conf = directory / "nginx" / "nginx.conf"
    old = conf.read_text(encoding="utf-8")
    write_atomic(conf, new_conf)
    gw = _gateway(client, project)
    if gw is None:
        return
    path = "/etc/nginx/composegen/nginx.conf"
    for cmd in (["nginx", "-t", "-q", "-c", path], ["nginx", "-s", "reload", "-c", path]):
        code = eng.exec_with_timeout(gw, cmd, 15)
        if code != 0:
            write_atomic(conf, old)
            raise ComposegenError(
                f"gateway: `{' '.join(cmd)}` failed (exit {code}); the old "
                "configuration was put back"
            )
    wait_old_workers(gw)


# nginx retitles each worker of the old configuration "nginx: worker process is shutting down";
# until they are gone they may still pass a request from a kept-alive client connection to an
# old upstream, so nothing behind the old configuration may stop before then.
_OLD_WORKERS = r"""n=0
for f in /proc/[0-9]*/cmdline; do
  [ "$f" = "/proc/$$/cmdline" ] && continue
  case "$(tr '\0' ' ' < "$f" 2>/dev/null)" in nginx:*'shutting down'*) n=$((n+1));; esac
done
[ "$n" = 0 ]"""


def wait_old_workers(gw: Any, timeout_s: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    time.sleep(0.1)  # the master starts the new workers before it retires the old ones
    while time.monotonic() < deadline:
        if eng.exec_with_timeout(gw, ["sh", "-c", _OLD_WORKERS], 5) == 0:
            return
        time.sleep(0.1)


def size_to_host(project: Project) -> Project:
    """CPU services without limits get a share of this host's cores and available memory."""
    from composegen.detect.host import _read, meminfo_mib

    cores = os.cpu_count() or 1
    _, avail = meminfo_mib(_read("/proc/meminfo"))
    n = max(1, len(project.services))
    cpus = max(0.5, cores / n)
    mem = f"{max(256, int((avail or 4096) * 0.8 / n))}M"
    services = tuple(
        replace(s, nano_cpus=s.nano_cpus or int(cpus * 1e9), mem_limit=s.mem_limit or mem)
        for s in project.services
    )
    return replace(project, services=services)


def cpu_project(directory: Path, name: str) -> Project:
    path = directory / "fallback" / "docker-compose.cpu.yml"
    if not path.exists():
        raise BadInputError(f"{path}: missing", "render the stack again with composegen render")
    return size_to_host(load_project(path, name, env_dir=directory))


def plan_cpu(main: Project, cpu: Project) -> list[Step]:
    gpu_services = [s.name for s in main.services if s.gpus]
    kept = {s.name.removesuffix("-cpu") for s in cpu.services}
    on_cpu = {s.name for s in main.services}
    steps = [Step("start on CPU", s.name) for s in cpu.services if s.name not in on_cpu]
    steps.append(Step("reload gateway", "routes -> CPU services (fallback/nginx.cpu.conf)"))
    steps += [Step("stop GPU service", s) for s in gpu_services]
    steps += [
        Step("no CPU variant: stopped, routes answer 503", s) for s in gpu_services if s not in kept
    ]
    return steps


def stop_parallel(client: Any, project: str, services: list[str], grace_s: int = 30) -> None:
    """Stop the services' containers in parallel; every failed stop is raised together."""

    def stop(c: Any) -> None:
        with eng.mapped_errors(f"service {c.labels.get(eng.LABEL_SERVICE, c.name)}"):
            c.stop(timeout=grace_s)

    with eng.mapped_errors(f"project {project}"):
        todo = [
            c
            for c in client.containers.list(filters={"label": f"{eng.LABEL_PROJECT}={project}"})
            if c.labels.get(eng.LABEL_SERVICE) in services
        ]
    failures = eng.run_parallel(stop, todo, lambda c: str(c.labels.get(eng.LABEL_SERVICE, c.name)))
    eng.raise_failures(f"stopping the GPU services of {project}", failures, len(todo))


def to_cpu(client: Any, main: Project, report: engine_up.Report) -> list[str]:
    directory = main.directory
    cpu = cpu_project(directory, main.name)
    if cpu.services:
        engine_up.up(client, cpu, report=report, remove_orphans=False, pull="missing")
    gpu_conf = (directory / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    cpu_conf = (directory / "fallback" / "nginx.cpu.conf").read_text(encoding="utf-8")
    if gpu_conf != cpu_conf:
        # never save the CPU routes as the GPU ones (a second switch, or one after the
        # emergency script): the backup is what `fallback --restore` puts back
        from composegen.files import write_atomic

        write_atomic(directory / GPU_CONF_BACKUP, gpu_conf)
    reload_nginx(client, main.name, directory, cpu_conf)
    report("gateway", "reloaded", "routes now go to the CPU services")
    gpu_services = [s.name for s in main.services if s.gpus]
    for s in gpu_services:
        report(s, "stopping", "GPU service")
    stop_parallel(client, main.name, gpu_services)
    for s in gpu_services:
        report(s, "stopped", "")
    return gpu_services


def saved_gpu_conf(directory: Path) -> str | None:
    """The GPU gateway configuration the CPU one replaced (`fallback --cpu` or the emergency
    script saved it), None when there is none."""
    try:
        return (directory / GPU_CONF_BACKUP).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


_UPSTREAM_SERVER = re.compile(r"^(\s*server\s+)([A-Za-z0-9_.-]+)(:\d+)", re.MULTILINE)


def pin_upstreams(conf: str, hosts: dict[str, str]) -> str:
    """Pure: the configuration with the upstream servers named in `hosts` replaced by the
    names given (only `server HOST:PORT` lines of upstream blocks change)."""

    def sub(m: re.Match[str]) -> str:
        return m.group(1) + hosts.get(m.group(2), m.group(2)) + m.group(3)

    return _UPSTREAM_SERVER.sub(sub, conf)


def _running(client: Any, project: str) -> dict[str, Any]:
    with eng.mapped_errors(f"project {project}"):
        found = client.containers.list(filters={"label": f"{eng.LABEL_PROJECT}={project}"})
    return {c.labels.get(eng.LABEL_SERVICE, ""): c for c in found}


def remove_services(
    client: Any, project: str, services: set[str], report: engine_up.Report
) -> list[str]:
    """Stop (in parallel, bounded grace) and remove the containers of these services."""
    stop_parallel(client, project, sorted(services))
    removed = []
    with eng.mapped_errors(f"project {project}"):
        for c in client.containers.list(
            all=True, filters={"label": f"{eng.LABEL_PROJECT}={project}"}
        ):
            name = c.labels.get(eng.LABEL_SERVICE, c.name)
            if name in services:
                c.remove(force=True)
                removed.append(name)
                report(name, "removed", "CPU service")
    return removed


def restore_from_cpu(
    client: Any, main: Project, report: engine_up.Report, gpu_conf: str
) -> list[str]:
    """Back from the CPU variant to the GPU services, make before break:

    1. the GPU services start and become healthy (verified GPUs, as in `up`) while the gateway
       keeps serving the CPU routes (nginx/nginx.conf on disk is still the CPU one);
    2. the gateway reloads onto the GPU routes and its old workers drain. A CPU variant also
       answers to its GPU service's name, so the routes name the GPU containers themselves
       until the CPU ones are gone: nginx resolves names when it loads, and a name that also
       leads to a CPU container would keep sending every other request to it after removal;
    3. the CPU containers are stopped and removed;
    4. the gateway reloads once more onto `gpu_conf` exactly as rendered (or hand edited).

    Returns the CPU services removed.
    """
    directory = main.directory
    main_names = {s.name for s in main.services}
    engine_up.up(client, main, report=report, remove_orphans=False, reload_on_removal=False)
    running = _running(client, main.name)
    # the CPU variants: NAME-cpu of a main service (whichever CPU file or tool started them)
    cpu_names = {n for n in running if n.endswith("-cpu") and n[:-4] in main_names}
    cpu_names |= {s.name for s in cpu_project(directory, main.name).services} - main_names
    hosts = {n: running[n].name for n in sorted(main_names) if n in running}
    pinned = pin_upstreams(gpu_conf, hosts)
    reload_nginx(client, main.name, directory, pinned)
    report("gateway", "reloaded", "routes back on the GPU services")
    removed = remove_services(client, main.name, cpu_names, report)
    if pinned != gpu_conf:
        reload_nginx(client, main.name, directory, gpu_conf)
    backup = directory / GPU_CONF_BACKUP
    if backup.exists():
        backup.unlink()
    return removed


def can_overlap(svc: Service, old: Any) -> bool:
    """Whether a new container of `svc` may run beside the old one: it publishes no host port
    (two cannot bind one) and, for a GPU service, claims none of the old container's GPUs (a
    model server sized to its GPU's memory would not load beside the old one)."""
    if any(p.host_port is not None for p in svc.ports):
        return False
    held = set(eng.visible_gpus(old.attrs))
    wanted = {i for g in svc.gpus for i in (g.device_ids or ())}
    if any(g.device_ids is None for g in svc.gpus):  # count / all: which GPUs is unknown
        return not svc.gpus
    return not (held & wanted)


def replace_behind_gateway(
    client: Any,
    project: Project,
    svc: Service,
    old: Any,
    report: engine_up.Report,
    wait_timeout_s: float = 600.0,
    stack_dir: Path | None = None,
    v2_hashes: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
) -> Any:
    """Make before break for one service the gateway routes to (`stack_dir`: the stack's
    directory, where nginx/ is, when `project` is the CPU variant's file in fallback/):

    1. its new container is created under a temporary name (it answers to the service's name
       on the network too) and started, and must become ready while the old one serves;
    2. the gateway reloads with that service's upstream servers pinned to the new container's
       own name (a name that also led to the old container would keep sending it requests),
       and its old workers drain;
    3. the old container stops and is removed, the new one takes the service's name;
    4. the gateway reloads once more onto nginx.conf as it was.

    A new container that does not become ready is removed and the old one keeps serving (the
    error is raised), and so is one still starting when `cancel` is set (the caller is stopping:
    SIGTERM of `watch --heal`). The new container is created as `up` creates it
    (engine/up.create_service: composegen's hash, Compose v2's hash from `v2_hashes` and the
    image ID as labels), so that neither `up` nor `docker compose up` recreates it again.
    Returns the new container."""
    import secrets
    import time

    final = eng.container_name(project, svc)
    temp = f"{final}-new-{secrets.token_hex(3)}"
    report(svc.name, "recreating", "new container first, the old one keeps serving")
    with eng.mapped_errors(f"service {svc.name}"):
        created = engine_up.create_service(client, project, svc, v2_hashes or {}, name=temp)
        new = client.containers.get(created.id)
    try:
        with eng.mapped_errors(f"service {svc.name}"):
            new.start()
        deadline = time.monotonic() + wait_timeout_s
        engine_up.wait_ready(
            svc,
            new,
            deadline,
            cancel if cancel is not None else threading.Event(),
            report,
            cancelled="stopping",
        )
    except BaseException:
        eng.remove_quietly(new)
        raise
    report(svc.name, "healthy", f"new container {new.id[:12]}")
    directory = stack_dir or project.directory
    conf_path = directory / "nginx" / "nginx.conf"
    conf = conf_path.read_text(encoding="utf-8") if conf_path.exists() else ""
    # every name it answers to (a CPU variant also answers to its GPU service's name)
    names = {svc.name, *(a for names in svc.aliases.values() for a in names)}
    pinned = pin_upstreams(conf, dict.fromkeys(names, temp))
    if pinned != conf:
        reload_nginx(client, project.name, directory, pinned)
        report("gateway", "reloaded", f"{svc.name} -> its new container")
    try:
        with eng.mapped_errors(f"service {svc.name}"):
            old.stop(timeout=int(svc.stop_grace_s))
            old.remove(force=True)
            client.api.rename(created.id, final)
    except BaseException:
        if pinned != conf:  # never leave the pinned routes behind: both answer to the name
            with suppress(Exception):
                reload_nginx(client, project.name, directory, conf)
        raise
    report(svc.name, "replaced", f"old container {old.id[:12]} removed")
    if pinned != conf:
        reload_nginx(client, project.name, directory, conf)
    return client.containers.get(created.id)


def apply_rerender(
    client: Any,
    directory: Path,
    name: str | None,
    report: engine_up.Report,
    conf_changed: bool = True,
) -> engine_up.UpResult:
    """The re-planned stack is on disk: let the gateway drop what is gone (when the re-plan
    changed nginx.conf), move the services whose new container can run beside the old one (a
    spare GPU, no host port) make before break, then converge the rest."""
    project = load_project(directory / "docker-compose.yml", name)
    if conf_changed:
        new_conf = (directory / "nginx" / "nginx.conf").read_text(encoding="utf-8")
        reload_nginx(client, project.name, directory, new_conf)
    move_ahead(client, project, report)
    # the gateway already serves the new configuration: reload again only if a backend got a
    # new container (and address), not merely because the failed one is removed
    return engine_up.up(client, project, report=report, reload_on_removal=False)


def move_ahead(client: Any, project: Project, report: engine_up.Report) -> list[str]:
    """The services `up` would recreate whose new container can run beside the old one (a
    GPU of its own, no host port), replaced make before break now, against the routes the
    gateway serves (nginx/nginx.conf on disk). Returns their names."""
    # the hashes Compose v2 wrote: a container `docker compose up` created is not recreated
    v2_hashes = compose_v2.service_hashes(project)
    conv = engine_up.converge(project, engine_up.list_existing(client, project.name), v2_hashes)
    moved = []
    for svc in project.services:
        if conv.actions.get(svc.name) != "recreate" or svc.name not in conv.existing:
            continue
        with eng.mapped_errors(f"service {svc.name}"):
            old = client.containers.get(conv.existing[svc.name])
        if old.status == "running" and can_overlap(svc, old):
            engine_up.ensure_image(client, svc, "missing")
            replace_behind_gateway(client, project, svc, old, report, v2_hashes=v2_hashes)
            moved.append(svc.name)
    return moved
