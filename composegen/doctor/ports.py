"""Doctor check of the stack's published ports: each is free on its bind address, or held by
the stack's own running containers (then `up` keeps or replaces them)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence

from composegen.doctor import Check, fail, ok
from composegen.engine.compose import Project

# (host address, host port, protocol) -> None when it can be bound, else why not
Probe = Callable[[str, int, str], "str | None"]


def bind_probe(host_ip: str, port: int, protocol: str = "tcp") -> str | None:
    """Try to bind the port as the engine's proxy would; None when free, else the OS's reason."""
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as s:
        # a port left in TIME_WAIT by a stopped container is free for the engine too
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host_ip, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def published(project: Project) -> list[tuple[str, str, int, str]]:
    """(service, host address, host port, protocol) of every fixed published port."""
    return [
        (svc.name, p.host_ip or "0.0.0.0", p.host_port, p.protocol)
        for svc in project.services
        for p in svc.ports
        if p.host_port is not None
    ]


def port_checks(
    ports: Sequence[tuple[str, str, int, str]],
    own: Iterable[tuple[str, int]],
    probe: Probe = bind_probe,
) -> list[Check]:
    """One failed check per port taken by something else; one ok check otherwise. `own`:
    (address, port) the stack's own running containers publish."""
    own_ports = {port for _, port in own}
    out: list[Check] = []
    free: list[str] = []
    for svc, ip, port, proto in ports:
        where = f"{ip}:{port}/{proto}"
        why = probe(ip, port, proto)
        if why is None:
            free.append(where)
        elif port in own_ports:
            free.append(f"{where} (this stack's)")
        else:
            out.append(
                fail(
                    "ports",
                    f"{svc}: {where} is taken ({why})",
                    f"stop what holds it (`sudo ss -lntup 'sport = :{port}'` names it), or "
                    "render the stack with another port",
                )
            )
    if not out:
        detail = f"{len(free)} published port(s) free: {', '.join(free)}" if free else "none"
        out.append(ok("ports", detail if free else "the stack publishes no fixed port"))
    return out
