"""Pure fallback policy: which GPUs count as failed, from what the user or NVML says.

The re-planning itself is the planner's failover mode (plan.PlanOptions.previous): what still
fits keeps its GPUs, what lost its GPU moves to a spare first, replicas on a lost GPU are
dropped, and only what fits nowhere goes to CPU.
"""

from __future__ import annotations

from composegen.errors import BadInputError
from composegen.inventory import Inventory


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


def _unique_uuids(inv: Inventory) -> bool:
    uuids = [g.uuid for g in inv.gpus]
    return bool(uuids) and all(uuids) and len(set(uuids)) == len(uuids)


def failed_from_live(recorded: Inventory, live: Inventory) -> tuple[int, ...]:
    """GPUs of the recorded inventory that are unhealthy or gone from the live one (matched by
    UUID when both have unique UUIDs, since indices can shift when a GPU disappears)."""
    failed = []
    if _unique_uuids(recorded) and _unique_uuids(live):
        now = {g.uuid: g for g in live.gpus}
        for g in recorded.gpus:
            cur = now.get(g.uuid)
            if cur is None or not cur.healthy:
                failed.append(g.index)
    else:
        now_idx = {g.index: g for g in live.gpus}
        for g in recorded.gpus:
            cur = now_idx.get(g.index)
            if cur is None or not cur.healthy:
                failed.append(g.index)
    return tuple(failed)
