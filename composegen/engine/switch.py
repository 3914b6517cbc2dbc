"""Carry out a fallback on a running stack: make before break, and never touch a named volume.

- to CPU: start the CPU variant (fallback/docker-compose.cpu.yml, same project, so the same
  networks and named volumes) beside the GPU services, wait until it is healthy, point the
  gateway at it by reloading nginx (its port never closes), then stop the GPU containers;
- GPUs failed: re-plan without them (app.rebuild), write the files, reload the gateway first
  (failed replicas leave the rotation), then converge: only the affected containers change;
- restore: the reverse of either, with each container's GPUs verified as in `up`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from composegen.engine import docker as eng
from composegen.engine import up as engine_up
from composegen.engine.compose import Project, load_project
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
    backup = directory / GPU_CONF_BACKUP
    from composegen.engine.state import read_mode

    if read_mode(directory, main.name).get("mode") == "gpu" or not backup.exists():
        from composegen.files import write_atomic

        write_atomic(backup, gpu_conf)
    reload_nginx(
        client,
        main.name,
        directory,
        (directory / "fallback" / "nginx.cpu.conf").read_text(encoding="utf-8"),
    )
    report("gateway", "reloaded", "routes now go to the CPU services")
    gpu_services = [s.name for s in main.services if s.gpus]
    for s in gpu_services:
        report(s, "stopping", "GPU service")
    stop_parallel(client, main.name, gpu_services)
    for s in gpu_services:
        report(s, "stopped", "")
    return gpu_services


def put_back_gpu_conf(directory: Path) -> None:
    """On disk only: the GPU gateway configuration the CPU one replaced (the gateway keeps
    serving the CPU routes until it is reloaded)."""
    from composegen.files import write_atomic

    backup = directory / GPU_CONF_BACKUP
    if backup.exists():
        write_atomic(directory / "nginx" / "nginx.conf", backup.read_text(encoding="utf-8"))
        backup.unlink()


def restore_from_cpu(client: Any, main: Project, report: engine_up.Report) -> None:
    directory = main.directory
    put_back_gpu_conf(directory)
    result = engine_up.up(client, main, report=report, remove_orphans=False)
    conf = (directory / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    reload_nginx(client, main.name, directory, conf)
    report("gateway", "reloaded", "routes back on the GPU services")
    main_names = {s.name for s in main.services}
    cpu_names = {s.name for s in cpu_project(directory, main.name).services} - main_names
    with eng.mapped_errors(f"project {main.name}"):
        for c in client.containers.list(
            all=True, filters={"label": f"{eng.LABEL_PROJECT}={main.name}"}
        ):
            if c.labels.get(eng.LABEL_SERVICE) in cpu_names:
                c.stop(timeout=30)
                c.remove(force=True)
                report(c.labels.get(eng.LABEL_SERVICE, c.name), "removed", "CPU service")
    del result


def apply_rerender(
    client: Any, directory: Path, name: str | None, files: list[Any], report: engine_up.Report
) -> engine_up.UpResult:
    """Write the re-planned stack, let the gateway drop what is gone, then converge."""
    from composegen.files import write_tree

    write_tree(directory, files)
    project = load_project(directory / "docker-compose.yml", name)
    new_conf = (directory / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    reload_nginx(client, project.name, directory, new_conf)
    # the gateway already serves the new configuration: reload again only if a backend got a
    # new container (and address), not merely because the failed one is removed
    return engine_up.up(client, project, report=report, reload_on_removal=False)
