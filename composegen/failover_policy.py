"""Pure fallback policy: which GPUs count as failed, from what the user or NVML says.

The re-planning itself is the planner's failover mode (plan.PlanOptions.previous): what still
fits keeps its GPUs, what lost its GPU moves to a spare first, replicas on a lost GPU are
dropped, and only what fits nowhere goes to CPU.
"""

from __future__ import annotations

from composegen.errors import BadInputError
from composegen.inventory import Gpu, Inventory


def parse_gpu_ids(text: str, inv: Inventory) -> tuple[int, ...]:
    """`0,3` or `GPU-uuid,...` -> host indices of the recorded inventory."""
    by_uuid = {g.uuid: g.index for g in inv.gpus if g.uuid}
    known = {g.index for g in inv.gpus}
    out: list[int] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise BadInputError(f"--gpu-failed {text!r}: empty GPU id", "e.g. --gpu-failed 0,3")
        if item.isdigit():
            idx = int(item)
            if idx not in known:
                raise BadInputError(
                    f"--gpu-failed: GPU {idx} is not in the stack's inventory "
                    f"(it has GPUs {', '.join(map(str, sorted(known))) or 'none'})"
                )
            out.append(idx)
        elif item in by_uuid:
            out.append(by_uuid[item])
        else:
            raise BadInputError(f"--gpu-failed: no GPU with UUID {item!r} in the stack's inventory")
    return tuple(sorted(set(out)))


def _duplicated(inv: Inventory) -> set[str]:
    seen: set[str] = set()
    dup: set[str] = set()
    for g in inv.gpus:
        if g.uuid:
            (dup if g.uuid in seen else seen).add(g.uuid)
    return dup


def failed_from_live(recorded: Inventory, live: Inventory) -> tuple[int, ...]:
    """GPUs of the recorded inventory that are unhealthy or gone from the live one.

    Each GPU is matched by its UUID where it has a unique one on both sides, since indices
    shift when a GPU disappears; a GPU whose UUID the live inventory lacks is gone (or is the
    lost one that cannot say its UUID): failed either way. Only a GPU without a usable UUID
    (none recorded, or masked duplicates) is matched by index, and never to a live GPU whose
    UUID belongs to another recorded GPU. One GPU without a UUID no longer switches every
    other GPU to index matching.
    """
    rec_dup, live_dup = _duplicated(recorded), _duplicated(live)
    by_uuid = {g.uuid: g for g in live.gpus if g.uuid and g.uuid not in live_dup}
    by_index: dict[int, Gpu] = {}
    for g in live.gpus:
        by_index.setdefault(g.index, g)
    recorded_uuids = {g.uuid for g in recorded.gpus if g.uuid}
    failed = []
    for g in recorded.gpus:
        cur: Gpu | None
        if g.uuid and g.uuid not in rec_dup and g.uuid not in live_dup:
            cur = by_uuid.get(g.uuid)
        else:
            cur = by_index.get(g.index)
            if cur is not None and cur.uuid and cur.uuid != g.uuid and cur.uuid in recorded_uuids:
                cur = None  # that index now holds another recorded GPU: this one is gone
        if cur is None or not cur.healthy:
            failed.append(g.index)
    return tuple(failed)
