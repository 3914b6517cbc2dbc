"""The planner, a pure function: (Inventory, Profile, PlanOptions) -> Plan.

It decides which GPU runs which container. Rules, in order:
- only healthy GPUs with known memory and MIG off are used; each offers its memory less the
  headroom (default 10%);
- the profile's spare GPUs (the highest indices) are kept free, as many as the host can spare;
- fixed services are placed in profile order: `prefer: first` takes the lowest free index,
  `prefer: largest` the GPU with the most usable VRAM; a tensor-parallel group stays on GPUs
  joined by NVLink where the topology is known; a GPU is never given to two services unless
  both declare sharing (`share`, or `share_when_short` once no free GPU is left); the
  instances of one `replicas: tiers` service share their GPU by design;
- `replicas: per-gpu` puts one instance on every remaining GPU, `replicas: tiers` a number of
  instances per GPU from its VRAM tier, weighted by capacity;
- what does not fit tries the service's smaller `alternatives`, largest first, then its
  `on_short` rule: run on CPU, drop it, or refuse with the VRAM needed and available and what to
  change. Replicas of one service (`per-gpu`, `tiers`) all run the same alternative, the largest
  that fits some free GPU, so that every replica behind the gateway serves the same models;
- memory that other processes already hold (`memory.used` of the inventory) is taken off what
  a GPU offers, unless `PlanOptions.count_used` is off (`--ignore-used`);
- VRAM tiers compare a GPU with the marketed size they name (`nominal_holds`): nvidia-smi
  reports a little less than the marketed size (16376 MiB for a 16 GB card, up to ~7% less
  where ECC or firmware reserve memory: 15360 for a 16 GB T4, 7606 for an 8 GB P4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from composegen.errors import BadInputError
from composegen.inventory import Gpu, Inventory
from composegen.profiles import GpuNeed, Model, Profile, Service

PinBy = Literal["uuid", "index"]
SLOT_MIB = 3584
# A GPU is of a nominal size ("16 GB" = 16384 MiB) when it reports at least 92% of it. Real
# reports of marketed sizes: 16376 (RTX 4080 SUPER, 16 GB), 24564 (A5000, 24 GB), 15360 (T4,
# 16 GB, ECC), 23028 (A10G, 24 GB), 46068 (L40S, 48 GB), 7606 (Tesla P4, 8 GB): at most 7.2%
# short. The next smaller marketed sizes stay out: 12288 of 16384 is 75%, 20 GB of 24 GB 83%,
# 11264 (11 GB) of 12288 is 91.7%.
NOMINAL_SHARE_PCT = 92
USED_WARN_PCT = 1  # memory used by others above this share of a GPU is a warning, not a note
USED_STEP_MIB = 256  # memory used by others is counted rounded up to this step


def nominal_holds(total_mib: int, nominal_mib: int) -> bool:
    """Whether a GPU reporting `total_mib` is a card of the marketed size `nominal_mib`."""
    return total_mib * 100 >= nominal_mib * NOMINAL_SHARE_PCT


class PlanError(BadInputError):
    """The profile cannot be placed on this hardware and its rules say refuse."""


@dataclass(frozen=True)
class PlanOptions:
    pin_by: PinBy | None = None  # None: UUIDs when every GPU has a unique one, else indices
    # Failover: the plan in force. What still fits keeps its GPUs (and name); only what lost
    # its GPU moves, to a spare first; replicas on a lost GPU are dropped, not moved.
    previous: Plan | None = None
    # Memory other processes hold (the inventory's memory.used) is not free for the stack.
    # Off (--ignore-used): plan as if every GPU were empty.
    count_used: bool = True


@dataclass(frozen=True)
class Instance:
    """One container of the stack."""

    name: str  # compose service name
    service: str  # profile service
    group: str  # gateway upstream
    device: Literal["gpu", "cpu"]
    gpus: tuple[int, ...]
    device_ids: tuple[str, ...]
    vram_mib: int  # per GPU
    models: tuple[Model, ...]
    port: int
    replica: int = 0
    weight: int = 1
    max_concurrency: int | None = None
    shared: bool = False  # shares its GPU with another service
    alternative: int = 0  # 0: the profile's preferred models; k: its k-th `alternatives` entry
    choice: str = ""  # why these models, when they are not the preferred ones
    node: str | None = None  # the fleet node it runs on; None: one host

    @property
    def tensor_parallel(self) -> int:
        return max(1, len(self.gpus))


@dataclass(frozen=True)
class GpuUse:
    index: int
    name: str
    memory_total_mib: int
    usable_mib: int
    used_mib: int
    instances: tuple[str, ...]
    spare: bool
    usable: bool
    why_not: str | None = None
    other_used_mib: int = 0  # held by processes outside this plan, taken off usable_mib

    @property
    def free_mib(self) -> int:
        return self.usable_mib - self.used_mib


@dataclass(frozen=True)
class Plan:
    profile: str
    inventory_source: str
    headroom: float
    pin_by: PinBy
    instances: tuple[Instance, ...]
    gpus: tuple[GpuUse, ...]
    spare_gpus: tuple[int, ...]
    dropped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # the CLI prints them on stderr; --json has them
    count_used: bool = True

    def of_service(self, service: str) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.service == service)

    def instance(self, name: str) -> Instance:
        for i in self.instances:
            if i.name == name:
                return i
        raise KeyError(name)

    @property
    def groups(self) -> dict[str, tuple[Instance, ...]]:
        out: dict[str, list[Instance]] = {}
        for i in self.instances:
            out.setdefault(i.group, []).append(i)
        return {k: tuple(v) for k, v in out.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "composegen/plan/v1",
            "profile": self.profile,
            "inventory_source": self.inventory_source,
            "headroom": self.headroom,
            "pin_by": self.pin_by,
            "services": [
                {
                    "name": i.name,
                    "service": i.service,
                    "group": i.group,
                    "device": i.device,
                    "gpus": list(i.gpus),
                    "device_ids": list(i.device_ids),
                    "tensor_parallel": i.tensor_parallel,
                    "vram_mib_per_gpu": i.vram_mib,
                    "models": [m.name for m in i.models],
                    "port": i.port,
                    "weight": i.weight,
                    "shared_gpu": i.shared,
                    "alternative": i.alternative,
                    "model_choice": i.choice or None,
                }
                for i in self.instances
            ],
            "gpus": [
                {
                    "index": g.index,
                    "name": g.name,
                    "memory_total_mib": g.memory_total_mib,
                    "usable_mib": g.usable_mib,
                    "used_mib": g.used_mib,
                    "free_mib": g.free_mib,
                    "other_used_mib": g.other_used_mib,
                    "services": list(g.instances),
                    "spare": g.spare,
                    "usable": g.usable,
                    "why_not": g.why_not,
                }
                for g in self.gpus
            ],
            "spare_gpus": list(self.spare_gpus),
            "dropped": [{"service": s, "reason": r} for s, r in self.dropped],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "count_used": self.count_used,
        }


# --- the state of one planning run --------------------------------------------------------------


@dataclass
class _Slot:
    gpu: Gpu
    usable: int
    used: int = 0
    holders: list[tuple[str, bool]] = field(default_factory=list)  # (instance, may share)
    spare: bool = False
    other: int = 0  # MiB held by processes outside the plan, already taken off `usable`

    @property
    def free(self) -> int:
        return self.usable - self.used

    @property
    def empty(self) -> bool:
        return not self.holders

    def shareable(self) -> bool:
        return all(may for _, may in self.holders)


class _Run:
    def __init__(self, inv: Inventory, prof: Profile, count_used: bool = True) -> None:
        self.prof = prof
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.slots: dict[int, _Slot] = {}
        self.excluded: dict[int, str] = {}
        first: dict[int, Gpu] = {}
        for g in sorted(inv.gpus, key=lambda g: g.index):
            if g.index in first:
                # a duplicate index (a merged or masked file): the first GPU is planned on and
                # pinned (make_plan pins by the slot's own GPU, never by a second lookup)
                self.notes.append(
                    f"GPU index {g.index} is reported twice ({first[g.index].name} "
                    f"{first[g.index].uuid or 'no UUID'}, {g.name} {g.uuid or 'no UUID'}): "
                    f"only the first is used, and what is placed on it is pinned to it"
                )
                continue
            first[g.index] = g
            why = None
            if not g.healthy:
                why = f"unhealthy ({g.health}: {g.health_reason or 'no reason given'})"
            elif g.memory_total_mib is None:
                why = "memory size unknown"
            elif g.mig_mode == "enabled":
                why = "MIG is enabled (composegen pins whole GPUs)"
            if why:
                self.excluded[g.index] = why
                self.notes.append(f"GPU {g.index} not used: {why}")
                continue
            assert g.memory_total_mib is not None
            usable = int(g.memory_total_mib * (1.0 - prof.headroom))
            other = 0
            if count_used and g.memory_used_mib:
                # in steps of USED_STEP_MIB, so that a few MiB more or less in use (a display
                # server) do not change the plan and STACK.md at every render
                steps = -(-g.memory_used_mib // USED_STEP_MIB)
                other = min(steps * USED_STEP_MIB, usable)
                self.notes.append(
                    f"GPU {g.index}: {other} MiB counted as held by other processes "
                    f"(its memory.used rounded up to {USED_STEP_MIB} MiB; --ignore-used: none)"
                )
                if g.memory_used_mib * 100 > g.memory_total_mib * USED_WARN_PCT:
                    self.warnings.append(
                        f"GPU {g.index}: {g.memory_used_mib} of {g.memory_total_mib} MiB "
                        f"already in use by other processes, counted as used "
                        f"({usable - other} MiB left for the stack); --ignore-used plans as if "
                        f"it were free"
                    )
            self.slots[g.index] = _Slot(gpu=g, usable=usable - other, other=other)
        self.topology_known = any(s.gpu.nvlink_peers for s in self.slots.values())
        self.instances: list[Instance] = []
        self.dropped: list[tuple[str, str]] = []
        self.failover = False  # spares may take what lost its GPU, spares first

    def mark_spares(self, indices: Sequence[int]) -> None:
        for i in indices:
            if i in self.slots:
                self.slots[i].spare = True

    def keep(self, svc: Service, prev: Instance) -> bool:
        """Failover: the instance keeps its GPUs when they are all still there and it fits."""
        if prev.device != "gpu" or not prev.gpus:
            return False
        slots = [self.slots.get(i) for i in prev.gpus]
        need = svc.gpu or GpuNeed()
        may_share = need.share or need.share_when_short or need.replicas == "tiers"
        for slot in slots:
            if slot is None or slot.free < prev.vram_mib:
                return False
            if not slot.empty and not (may_share and slot.shareable()):
                return False
        picked = [s for s in slots if s is not None]
        for s in picked:
            s.spare = False
        self._take(picked, prev.name, prev.vram_mib, may_share)
        self.instances.append(replace(prev, device_ids=()))
        return True

    # -- choosing GPUs

    def _candidates(self, vram: int, exclusive: bool, share: bool) -> list[_Slot]:
        out = []
        for s in self.slots.values():
            if (s.spare and not self.failover) or s.free < vram:
                continue
            if s.empty or (not exclusive and share and s.shareable()):
                out.append(s)
        return out

    def _pick(self, need: GpuNeed, vram: int, share_ok: bool) -> list[_Slot] | None:
        count = need.count
        pools: list[tuple[bool, bool]] = [(True, False)]  # (exclusive, share)
        if need.share:
            pools = [(True, False), (False, True)]
        if share_ok:
            pools.append((False, True))
        for exclusive, share in pools:
            cands = self._candidates(vram, exclusive, share)
            if need.prefer == "largest":
                cands.sort(key=lambda s: (not s.spare, -s.free, s.gpu.index))
            else:
                cands.sort(key=lambda s: (not s.spare, s.gpu.index))
            chosen = self._group(cands, count, need.nvlink)
            if chosen:
                return chosen
        return None

    def _group(self, cands: list[_Slot], count: int, nvlink: bool) -> list[_Slot] | None:
        if len(cands) < count:
            return None
        if count == 1 or not nvlink or not self.topology_known:
            return cands[:count]
        for first in cands:
            group = [first]
            for other in cands:
                if other is first:
                    continue
                if all(other.gpu.index in g.gpu.nvlink_peers for g in group):
                    group.append(other)
                    if len(group) == count:
                        return group
        return None

    def _device_ids(self, slots: Sequence[_Slot]) -> tuple[int, ...]:
        return tuple(sorted(s.gpu.index for s in slots))

    def _take(self, slots: list[_Slot], name: str, vram: int, may_share: bool) -> bool:
        shared = any(not s.empty for s in slots)
        for s in slots:
            s.spare = False
            s.used += vram
            s.holders.append((name, may_share))
        return shared

    # -- placing services

    def reserve_spares(self, gpus_needed: int) -> None:
        want = self.prof.spare_gpus
        if not want:
            return
        can = max(0, len(self.slots) - gpus_needed)
        n = min(want, can)
        if n < want:
            self.notes.append(
                f"spare GPUs reduced from {want} to {n}: the services need {gpus_needed} of the "
                f"{len(self.slots)} usable GPUs"
            )
        for idx in sorted(self.slots)[len(self.slots) - n :]:
            self.slots[idx].spare = True

    def _options(self, svc: Service) -> list[tuple[tuple[Model, ...], int]]:
        """(models, VRAM per GPU) to try, in order: the preferred set, then each alternative."""
        out = [(svc.models, svc.vram_per_gpu())]
        out += [(alt, svc.vram_per_gpu(alt)) for alt in svc.alternatives]
        return out

    def _best_free(self) -> int:
        return max((s.free for s in self.slots.values() if not s.spare or self.failover), default=0)

    def _choice(
        self, name: str, options: list[tuple[tuple[Model, ...], int]], k: int, best: int
    ) -> str:
        """Why alternative k runs, in words, for the plan's notes, STACK.md and --json."""
        tried = "; ".join(
            f"{', '.join(m.name for m in models)} needs {vram} MiB" for models, vram in options[:k]
        )
        models, vram = options[k]
        return (
            f"{name} runs alternative {k} of {len(options) - 1}, "
            f"{', '.join(m.name for m in models)} ({vram} MiB per GPU): {tried}, more than the "
            f"{best} MiB the best free GPU offers ({self.prof.headroom:.0%} headroom)"
        )

    def place_fixed(self, svc: Service, replica: int, name: str) -> None:
        need = svc.gpu or GpuNeed()
        options: list[tuple[tuple[Model, ...], int]] = (
            self._options(svc) if svc.models else [((), svc.vram_per_gpu())]
        )
        best = self._best_free()
        for attempt, (models, vram) in enumerate(options):
            chosen = self._pick(need, vram, share_ok=need.share_when_short)
            if chosen is None:
                continue
            may_share = need.share or need.share_when_short
            shared = self._take(chosen, name, vram, may_share)
            choice = self._choice(name, options, attempt, best) if attempt else ""
            if choice:
                self.notes.append(choice)
            if shared:
                self.notes.append(f"{name} shares GPU {self._device_ids(chosen)} (declared)")
            inst = self._instance(svc, name, replica, chosen, vram, models, shared)
            self.instances.append(replace(inst, alternative=attempt, choice=choice))
            return
        self._short(svc, name, replica, options[-1][1], need.count)

    def _short(self, svc: Service, name: str, replica: int, vram: int, count: int) -> None:
        need = svc.gpu or GpuNeed()
        best = max((s.free for s in self.slots.values() if not s.spare), default=0)
        what = f"needs {vram} MiB of VRAM on each of {count} GPU{'s' if count > 1 else ''}"
        if svc.alternatives:
            what += " with its smallest alternative"
        have = (
            f"the most any free GPU offers is {best} MiB ({self.prof.headroom:.0%} headroom)"
            if self.slots
            else "this host has no usable GPU"
        )
        if need.on_short == "cpu" and svc.cpu is None:
            # the loader refuses this combination; a profile built in code may still have it
            raise PlanError(
                f"{self.prof.path or self.prof.name}: service {name} {what}; {have}, and its "
                f"on_short: cpu has no CPU variant to run (services.{svc.name} has no cpu: block)",
                f"add services.{svc.name}.cpu (image, models) to the profile, or "
                f"--set services.{svc.name}.gpu.on_short=drop",
            )
        if need.on_short == "cpu" and svc.cpu is not None:
            self.notes.append(f"{name} runs on CPU: it {what}; {have}")
            self.instances.append(
                Instance(
                    name=name,
                    service=svc.name,
                    group=svc.group,
                    device="cpu",
                    gpus=(),
                    device_ids=(),
                    vram_mib=0,
                    models=svc.cpu.models or svc.models,
                    port=self._port(svc, replica),
                    replica=replica,
                    max_concurrency=svc.max_concurrency,
                )
            )
            return
        if need.on_short == "drop":
            reason = f"it {what}; {have}"
            self.dropped.append((name, reason))
            self.notes.append(f"{name} dropped: {reason}")
            return
        raise PlanError(
            f"{self.prof.path or self.prof.name}: service {name} {what}; {have}",
            f"use a host with a larger GPU, lower --set planner.headroom, or let it degrade "
            f"with --set services.{svc.name}.gpu.on_short="
            + ("cpu|drop" if svc.cpu is not None else "drop (it has no cpu: variant)"),
        )

    def _port(self, svc: Service, replica: int) -> int:
        return svc.port + replica if svc.port_per_instance else svc.port

    def _instance(
        self,
        svc: Service,
        name: str,
        replica: int,
        slots: Sequence[_Slot],
        vram: int,
        models: tuple[Model, ...],
        shared: bool,
        weight: int = 1,
        max_concurrency: int | None = None,
    ) -> Instance:
        return Instance(
            name=name,
            service=svc.name,
            group=svc.group,
            device="gpu",
            gpus=self._device_ids(slots),
            device_ids=(),
            vram_mib=vram,
            models=models or svc.models,
            port=self._port(svc, replica),
            replica=replica,
            weight=weight,
            max_concurrency=max_concurrency or svc.max_concurrency,
            shared=shared,
        )

    def keep_replicas(self, svc: Service, previous: Sequence[Instance]) -> None:
        """Failover of per-GPU replicas or a pool: survivors stay, the lost GPU's go."""
        kept = 0
        for prev in previous:
            if self.keep(svc, prev):
                kept += 1
            else:
                self.notes.append(f"{prev.name} removed: its GPU {list(prev.gpus)} is gone")
        if not kept:
            self._short(svc, f"{svc.name}-0", 0, self._options(svc)[-1][1], 1)

    def _replica_option(
        self, svc: Service, fits: Callable[[_Slot, int], bool]
    ) -> tuple[int, tuple[Model, ...], int, list[_Slot], str]:
        """The largest option that fits some free GPU, and the GPUs it fits on.

        Every replica of a service runs the same models (the gateway sends any request to any
        replica), so a small GPU does not pull the others down to its model: it stays free
        when the chosen models do not fit it, and a note says so.
        """
        free = [
            s
            for s in sorted(self.slots.values(), key=lambda s: s.gpu.index)
            if s.empty and not s.spare
        ]
        options = self._options(svc)
        for k, (models, vram) in enumerate(options):
            slots = [s for s in free if fits(s, vram)]
            if not slots:
                continue
            choice = ""
            if k:
                best = max(s.free for s in free)
                choice = self._choice(f"{svc.name} (every replica)", options, k, best)
                self.notes.append(choice)
            for s in free:
                if s not in slots:
                    self.notes.append(
                        f"GPU {s.gpu.index} left free: {s.free} MiB is less than the {vram} "
                        f"MiB that {', '.join(m.name for m in models or svc.models)} needs"
                    )
            return k, models, vram, slots, choice
        return 0, (), options[-1][1], [], ""

    def place_per_gpu(self, svc: Service) -> None:
        k, models, vram, slots, choice = self._replica_option(svc, lambda s, v: s.free >= v)
        for replica, slot in enumerate(slots):
            name = f"{svc.name}-{replica}"
            self._take([slot], name, vram, False)
            inst = self._instance(svc, name, replica, [slot], vram, models, False)
            self.instances.append(replace(inst, alternative=k, choice=choice))
        if not slots:
            self._short(svc, f"{svc.name}-0", 0, vram, 1)

    def _tier(self, slot: _Slot) -> int:
        """Instances for this GPU by its VRAM tier, compared with the tier's marketed size."""
        total = slot.gpu.memory_total_mib or 0
        for floor, n in self.prof.instance_tiers:  # largest floor first
            if nominal_holds(total, floor):
                return n
        return self.prof.instance_tiers[-1][1]  # below every floor: the lowest tier

    def place_tiers(self, svc: Service) -> None:
        def count(slot: _Slot, vram: int) -> int:
            tier = self._tier(slot)
            return min(tier, slot.free // vram) if vram else tier

        k, models, vram, slots, choice = self._replica_option(svc, lambda s, v: count(s, v) > 0)
        replica = 0
        for slot in slots:
            n = count(slot, vram)
            per_instance = slot.usable // n
            weight = max(1, per_instance // 1024)  # GiB of VRAM behind each instance
            # one parallel request per ~3.5 GiB behind the instance (KV cache and compute),
            # at most what the profile allows: 8 GB -> 2, 12 GB -> 3 (seed 001's figures)
            concurrency = max(1, min(svc.max_concurrency or 1, per_instance // SLOT_MIB))
            for _ in range(n):
                name = f"{svc.name}-{replica}"
                self._take([slot], name, vram, True)
                inst = self._instance(
                    svc, name, replica, [slot], vram, models, n > 1, weight, concurrency
                )
                self.instances.append(replace(inst, alternative=k, choice=choice))
                replica += 1
        if replica == 0:
            self._short(svc, f"{svc.name}-0", 0, vram, 1)


def _exclusive_need(prof: Profile) -> int:
    n = 0
    for svc in prof.enabled_services:
        if svc.gpu is None or isinstance(svc.gpu.replicas, str):
            continue
        if svc.gpu.share and n:
            continue
        n += svc.gpu.count * svc.gpu.replicas
    return n


def _pin_by(inv: Inventory, requested: PinBy | None, notes: list[str]) -> PinBy:
    uuids = [g.uuid for g in inv.gpus]
    unique = all(uuids) and len(set(uuids)) == len(uuids)
    if requested == "uuid" and not unique:
        raise BadInputError(
            "--pin-by uuid: this inventory has GPUs without a unique UUID",
            "use --pin-by index, or an inventory saved with `composegen detect --save`",
        )
    if requested:
        return requested
    if unique and inv.gpus:
        return "uuid"
    if inv.gpus:
        notes.append(
            "pinned by index: this inventory has no unique GPU UUIDs (reference or masked)"
        )
    return "index"


def make_plan(inv: Inventory, prof: Profile, opts: PlanOptions = PlanOptions()) -> Plan:
    run = _Run(inv, prof, opts.count_used)
    prev = {i.name: i for i in opts.previous.instances} if opts.previous else {}
    if opts.previous is not None:
        run.failover = True
        run.mark_spares(opts.previous.spare_gpus)
    else:
        run.reserve_spares(_exclusive_need(prof))
    pending: list[tuple[Service, int, str]] = []
    for svc in prof.enabled_services:
        if svc.gpu is None:
            run.instances.append(
                Instance(
                    name=svc.name,
                    service=svc.name,
                    group=svc.group,
                    device="cpu",
                    gpus=(),
                    device_ids=(),
                    vram_mib=0,
                    models=svc.models,
                    port=svc.port,
                    max_concurrency=svc.max_concurrency,
                )
            )
        elif svc.gpu.replicas == "per-gpu" or svc.gpu.replicas == "tiers":
            continue
        else:
            for r in range(svc.gpu.replicas):
                name = svc.name if svc.gpu.replicas == 1 else f"{svc.name}-{r}"
                if name in prev and run.keep(svc, prev[name]):
                    continue
                pending.append((svc, r, name))
    for svc, r, name in pending:  # new, or lost its GPU: placed after every survivor
        run.place_fixed(svc, r, name)
    for svc in prof.enabled_services:  # replicas fill what the fixed services left
        if svc.gpu is None or not isinstance(svc.gpu.replicas, str):
            continue
        before = [
            i for i in (opts.previous.instances if opts.previous else ()) if i.service == svc.name
        ]
        if before:
            run.keep_replicas(svc, before)
        elif svc.gpu.replicas == "per-gpu":
            run.place_per_gpu(svc)
        else:
            run.place_tiers(svc)

    notes = run.notes
    pin_by = _pin_by(inv, opts.pin_by, notes)

    def ids(gpus: tuple[int, ...]) -> tuple[str, ...]:
        # pinned to the very GPU the slot was planned on (with duplicate indices, the first)
        if pin_by == "uuid":
            return tuple(str(run.slots[i].gpu.uuid) for i in gpus)
        return tuple(str(i) for i in gpus)

    order = {s.name: n for n, s in enumerate(prof.services)}
    instances = tuple(
        sorted(
            (replace(i, device_ids=ids(i.gpus)) for i in run.instances),
            key=lambda i: (order[i.service], i.replica),
        )
    )
    uses = []
    for g in sorted(inv.gpus, key=lambda g: g.index):
        slot = run.slots.get(g.index)
        if slot is None or slot.gpu is not g:
            uses.append(
                GpuUse(
                    index=g.index,
                    name=g.name,
                    memory_total_mib=g.memory_total_mib or 0,
                    usable_mib=0,
                    used_mib=0,
                    instances=(),
                    spare=False,
                    usable=False,
                    why_not=run.excluded.get(g.index, "duplicate index"),
                )
            )
            continue
        uses.append(
            GpuUse(
                index=g.index,
                name=g.name,
                memory_total_mib=g.memory_total_mib or 0,
                usable_mib=slot.usable,
                used_mib=slot.used,
                instances=tuple(n for n, _ in slot.holders),
                spare=slot.spare,
                usable=True,
                other_used_mib=slot.other,
            )
        )
    return Plan(
        profile=prof.name,
        inventory_source=inv.source,
        headroom=prof.headroom,
        pin_by=pin_by,
        instances=instances,
        gpus=tuple(uses),
        spare_gpus=tuple(u.index for u in uses if u.spare),
        dropped=tuple(run.dropped),
        notes=tuple(notes),
        warnings=tuple(run.warnings),
        count_used=opts.count_used,
    )
