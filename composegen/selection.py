"""Which profile suits a host best: a pure function of each profile's fit and reference hardware.

Profiles are ranked first by fit (yes, then degraded, then no: what `composegen profiles`
shows), then by how close the host is to each profile's reference hardware, in this order:
the number of GPUs, the VRAM per GPU, the GPU models, and NVLink. `detect`, `profiles` and the
automatic choice of `plan` and `render` all use this one order.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from composegen.inventory import Inventory
from composegen.profiles import Reference

FIT_ORDER = {"yes": 0, "degraded": 1, "no": 2}
AUTO = "auto"  # --profile auto: the same as no --profile


@dataclass(frozen=True)
class Closeness:
    """The host against one profile's reference hardware."""

    gpus: tuple[int, ...]  # the host's usable GPUs' memory.total (MiB), largest first
    ref_gpus: tuple[int, ...]  # the reference's, largest first
    models: int  # host GPUs whose model is one of the reference's (each reference GPU once)
    nvlink: bool  # every usable GPU of the host joined to every other by NVLink
    ref_nvlink: bool
    ref_name: str = ""

    @property
    def count_diff(self) -> int:
        return abs(len(self.gpus) - len(self.ref_gpus))

    @property
    def vram_distance(self) -> float:
        """Mean |log2(host / reference)| over the GPUs paired largest to largest: 0 when equal,
        1 when one is twice the other. Rounded to 0.1, so that cards of one size class tie
        (24564 and 24576 MiB are both "24 GB") and the GPU model decides between them."""
        pairs = list(zip(self.gpus, self.ref_gpus, strict=False))
        if not pairs:
            return 99.0
        total = sum(abs(math.log2(max(h, 1) / max(r, 1))) for h, r in pairs)
        return round(total / len(pairs), 1)

    @property
    def nvlink_differs(self) -> bool:
        return self.nvlink != self.ref_nvlink

    def key(self) -> tuple[int, float, int, int]:
        return (self.count_diff, self.vram_distance, -self.models, int(self.nvlink_differs))

    def text(self) -> str:
        """E.g. `2 GPUs as the reference, VRAM/GPU 8192+6144 MiB vs 8192+6144, 2 of 2 GPU
        models, NVLink none as the reference`."""
        n, rn = len(self.gpus), len(self.ref_gpus)
        count = (
            f"{n} GPU(s) as the reference" if n == rn else f"{n} GPU(s) vs {rn} in the reference"
        )
        vram = f"VRAM/GPU {_sizes(self.gpus)} MiB vs {_sizes(self.ref_gpus)}"
        link = _link(self.nvlink)
        nvlink = (
            f"NVLink {link} as the reference"
            if not self.nvlink_differs
            else f"NVLink {link} vs {_link(self.ref_nvlink)}"
        )
        return f"{count}, {vram}, {self.models} of {rn} GPU models, {nvlink}"


def _link(on: bool) -> str:
    return "all" if on else "none"


def _sizes(mibs: tuple[int, ...]) -> str:
    """8x81920, or 8192+6144; `-` for none."""
    if not mibs:
        return "-"
    if len(set(mibs)) == 1 and len(mibs) > 1:
        return f"{len(mibs)}x{mibs[0]}"
    return "+".join(str(m) for m in mibs)


def _all_linked(inv: Inventory) -> bool:
    gpus = inv.healthy_gpus
    if len(gpus) < 2:
        return False
    every = {g.index for g in gpus}
    return all(every - {g.index} <= set(g.nvlink_peers) for g in gpus)


def closeness(ref: Reference, inv: Inventory) -> Closeness:
    host = [g for g in inv.healthy_gpus if g.memory_total_mib]
    ref_gpus = [(r.name, r.memory_mib) for r in ref.gpus for _ in range(r.count)]
    wanted = Counter(name.strip().lower() for name, _ in ref_gpus)
    have = Counter(g.name.strip().lower() for g in host)
    return Closeness(
        gpus=tuple(sorted((g.memory_total_mib or 0 for g in host), reverse=True)),
        ref_gpus=tuple(sorted((m for _, m in ref_gpus), reverse=True)),
        models=sum((wanted & have).values()),
        nvlink=_all_linked(inv),
        ref_nvlink=ref.nvlink == "all" and len(ref_gpus) > 1,
        ref_name=ref.name,
    )


@dataclass(frozen=True)
class Candidate:
    name: str
    fits: str  # yes | degraded | no
    why: str  # the fit's reason, as `profiles` shows it
    closeness: Closeness | None  # None: the profile could not be loaded


def order_key(c: Candidate) -> tuple[int, tuple[int, float, int, int], str]:
    worst = (10**6, 99.0, 0, 1)
    return (FIT_ORDER.get(c.fits, 3), c.closeness.key() if c.closeness else worst, c.name)


def ranked(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first: by fit, then closeness to the reference hardware, then name."""
    return sorted(candidates, key=order_key)


@dataclass(frozen=True)
class Choice:
    name: str
    line: str  # why, in one line


class NothingFits(Exception):
    """No profile fits the hardware at all (each one's reason in `reasons`)."""

    def __init__(self, reasons: str) -> None:
        super().__init__(reasons)
        self.reasons = reasons


def choose(candidates: Sequence[Candidate], hardware: str) -> Choice:
    """The best candidate and why, in one line; NothingFits when no profile fits at all."""
    order = ranked(candidates)
    if not order or order[0].fits == "no":
        raise NothingFits("; ".join(f"{c.name}: {c.why}" for c in order) or "no profiles")
    best = order[0]
    line = f"profile {best.name} chosen for {hardware}: fits {best.fits} ({best.why})"
    if best.closeness is not None:
        line += f"; closest reference: {best.closeness.text()}"
    if len(order) > 1:
        nxt = order[1]
        if nxt.fits != best.fits:
            line += f"; next: {nxt.name} (fits {nxt.fits})"
        elif nxt.closeness is not None:
            line += f"; next: {nxt.name} ({nxt.closeness.text()})"
    return Choice(best.name, line)
