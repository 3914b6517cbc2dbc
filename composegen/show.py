"""Human-readable views (rich). Imported only by commands that print tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from composegen.inventory import Gpu, Inventory
from composegen.plan import Plan
from composegen.profiles import Profile


def _mib(v: int | None) -> str:
    if v is None:
        return "?"
    return f"{v / 1024:.1f} GiB" if v >= 1024 else f"{v} MiB"


def _opt(v: object, unit: str = "") -> str:
    return "-" if v is None else f"{v}{unit}"


def _health(g: Gpu) -> Text:
    if g.health == "ok":
        return Text("ok", style="green")
    return Text(f"{g.health}: {g.health_reason or ''}".strip(), style="bold red")


def _mem(g: Gpu) -> str:
    used = "?" if g.memory_used_mib is None else str(g.memory_used_mib)
    total = "?" if g.memory_total_mib is None else str(g.memory_total_mib)
    return f"{used} / {total} MiB"


def _power(g: Gpu) -> str:
    if g.power_draw_w is None and g.power_limit_w is None:
        return "-"
    draw = "?" if g.power_draw_w is None else f"{g.power_draw_w:.0f}"
    limit = "?" if g.power_limit_w is None else f"{g.power_limit_w:.0f}"
    return f"{draw} / {limit} W"


def print_inventory(inv: Inventory, console: Console) -> None:
    head = [f"source: {inv.source}"]
    if inv.driver_version:
        head.append(f"driver {inv.driver_version}")
    if inv.cuda_version:
        head.append(f"CUDA {inv.cuda_version}")
    if inv.nvml_version:
        head.append(f"NVML {inv.nvml_version}")
    console.print("  ".join(head), highlight=False)

    if inv.gpus:
        table = Table(title=None, show_lines=False, pad_edge=False)
        for col, justify in (
            ("GPU", "right"),
            ("Name", "left"),
            ("Memory used / total", "right"),
            ("CC", "right"),
            ("Bus", "left"),
            ("Temp", "right"),
            ("Util", "right"),
            ("Power", "right"),
            ("MIG", "left"),
            ("Health", "left"),
        ):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for g in inv.gpus:
            table.add_row(
                str(g.index),
                g.name,
                _mem(g),
                _opt(g.compute_capability),
                _opt(g.pci_bus_id),
                _opt(g.temperature_c, "°C"),
                _opt(g.utilization_gpu_pct, "%"),
                _power(g),
                _opt(g.mig_mode),
                _health(g),
            )
        console.print(table)
        for g in inv.gpus:
            if g.uuid:
                peers = (
                    f"  NVLink to {', '.join(map(str, g.nvlink_peers))}" if g.nvlink_peers else ""
                )
                console.print(f"  GPU {g.index}: {g.uuid}{peers}", highlight=False)
            for m in g.mig_devices:
                console.print(
                    f"    MIG {m.index}: {m.profile or '?'} {_mib(m.memory_total_mib)} "
                    f"{m.uuid or ''}".rstrip(),
                    highlight=False,
                )
    else:
        console.print(
            Text(f"no NVIDIA GPU found: {inv.no_gpu_reason or 'no devices'}", style="bold yellow")
        )
    for w in inv.warnings:
        console.print(Text(f"warning: {w}", style="yellow"))
    print_host(inv, console)


def print_host(inv: Inventory, console: Console) -> None:
    h = inv.host
    if h is None:
        console.print("host: not recorded in this inventory", highlight=False)
        return
    console.print(
        f"host: {h.hostname or '?'} ({h.os or '?'})  CPU: {h.cpu_model or '?'}, "
        f"{_opt(h.cpu_cores)} cores  RAM: {_mib(h.ram_total_mib)} "
        f"({_mib(h.ram_available_mib)} available)",
        highlight=False,
    )
    d = h.docker
    if d is None:
        console.print("docker: not probed", highlight=False)
    elif not d.reachable:
        console.print(Text(f"docker: not reachable: {d.error}", style="yellow"))
    else:
        gpu = (
            Text(f"GPU requests: yes (via {d.gpu_requests_via})", style="green")
            if d.gpu_requests
            else Text(
                "GPU requests: no (no nvidia-container-runtime-hook, nvidia runtime or CDI spec; "
                "install the NVIDIA Container Toolkit)",
                style="yellow",
            )
        )
        line = Text(
            f"docker: engine {d.version} (API {d.api_version}), runtimes: "
            f"{', '.join(d.runtimes) or '-'}; "
        )
        line.append_text(gpu)
        console.print(line)


def profile_dict(prof: Profile) -> dict[str, Any]:
    return {
        "schema": "composegen/profile-view/v1",
        "name": prof.name,
        "description": prof.description,
        "seed": prof.seed,
        "path": prof.path,
        "images": dict(prof.images),
        "reference": {
            "name": prof.reference.name,
            "gpus": [
                {"name": g.name, "memory_mib": g.memory_mib, "count": g.count}
                for g in prof.reference.gpus
            ],
            "nvlink": prof.reference.nvlink,
        },
        "planner": {
            "headroom": prof.headroom,
            "spare_gpus": prof.spare_gpus,
            "instance_tiers": [{"min_mib": a, "instances": b} for a, b in prof.instance_tiers],
        },
        "gateway": {
            "port": prof.gateway.port,
            "image": prof.gateway.image,
            "api_key": "set" if prof.gateway.api_key else None,
        },
        "tunables": dict(prof.tunables),
        "services": [
            {
                "name": s.name,
                "kind": s.kind,
                "enabled": s.enabled,
                "image": s.image,
                "group": s.group,
                "port": s.port,
                "route": s.route,
                "models": [{"name": m.name, "vram_mib": m.vram_mib} for m in s.models],
                "gpu": None
                if s.gpu is None
                else {
                    "count": s.gpu.count,
                    "vram_mib_per_gpu": s.vram_per_gpu(),
                    "replicas": s.gpu.replicas,
                    "on_short": s.gpu.on_short,
                },
                "cpu_fallback": None
                if s.cpu is None
                else {
                    "image": s.cpu.image,
                    "models": [m.name for m in s.cpu.models],
                },
            }
            for s in prof.services
        ],
    }


def print_profile(prof: Profile, console: Console) -> None:
    console.print(f"[bold]{prof.name}[/]  ({prof.path})")
    console.print(prof.description, highlight=False)
    if prof.seed:
        console.print(f"reproduces: {prof.seed}", highlight=False)
    ref = ", ".join(f"{g.count}x {g.name} {g.memory_mib} MiB" for g in prof.reference.gpus)
    console.print(f"reference hardware: {prof.reference.name} ({ref})", highlight=False)
    table = Table()
    for col in ("service", "kind", "GPUs", "VRAM/GPU MiB", "models", "route", "CPU fallback"):
        table.add_column(col)
    for s in prof.services:
        gpus = (
            "-"
            if s.gpu is None
            else (str(s.gpu.replicas) if isinstance(s.gpu.replicas, str) else str(s.gpu.count))
        )
        table.add_row(
            s.name + ("" if s.enabled else " (off)"),
            s.kind,
            gpus,
            "-" if s.gpu is None else str(s.vram_per_gpu()),
            ", ".join(m.name for m in s.models),
            s.route or "-",
            "-" if s.cpu is None else prof.images[s.cpu.image],
        )
    console.print(table)
    console.print("images (override with --image KEY=IMAGE):", highlight=False)
    for key, image in prof.images.items():
        console.print(f"  {key} = {image}", highlight=False)


def print_plan(plan: Plan, note: str, console: Console) -> None:
    console.print(f"[bold]{plan.profile}[/] on {note}; pinned by {plan.pin_by}", highlight=False)
    table = Table()
    if plan.nodes:  # a fleet plan: each GPU by its node and its own index there
        table.add_column("NODE")
    for col, justify in (
        ("GPU", "right"),
        ("name", "left"),
        ("used / usable MiB", "right"),
        ("free MiB", "right"),
        ("services", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for g in plan.gpus:
        what = (
            ", ".join(g.instances)
            if g.instances
            else ("[cyan]spare[/]" if g.spare else ("free" if g.usable else f"[red]{g.why_not}[/]"))
        )
        row = [str(g.index), g.name, f"{g.used_mib} / {g.usable_mib}", str(g.free_mib), what]
        if plan.nodes:
            row = [g.node or "", str(g.node_index), *row[1:]]
        table.add_row(*row)
    console.print(table)
    cpu = [i.name + (f" ({i.node})" if i.node else "") for i in plan.instances if i.device == "cpu"]
    if cpu:
        console.print(f"on CPU: {', '.join(cpu)}", highlight=False)
    spares = [str(g.index) for g in plan.gpus if g.spare]
    if plan.nodes:
        spares = [f"{g.node} GPU {g.node_index}" for g in plan.gpus if g.spare]
        console.print(
            f"gateway on {plan.gateway_node}; spares kept {plan.spares_scope}", highlight=False
        )
    console.print(f"spare GPUs: {', '.join(spares) or 'none'}", highlight=False)
    for name, why in plan.dropped:
        console.print(Text(f"dropped {name}: {why}", style="yellow"))
    for n in plan.notes:
        console.print(f"note: {n}", highlight=False)
