"""Parsers for saved nvidia-smi output: `-q -x` XML, `--query-gpu` CSV, `-q` text, and
nvidia_gpu_exporter capture files. Pure functions: text in, `Inventory` out; every problem is an
`InventoryFileError` naming the file (`where`) with a one-line reason.

GPU index is NVML order: the position of the GPU in XML and `-q` output, the `index` column in CSV.
"""

from __future__ import annotations

import csv
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from composegen.errors import InventoryFileError
from composegen.inventory import Gpu, Health, Inventory, MigDevice, MigMode, duplicate_warnings

DEFAULT_QUERY_FIELDS: tuple[str, ...] = (
    "index", "uuid", "name", "memory.total", "memory.used", "memory.free", "pci.bus_id",
    "driver_version", "compute_cap", "temperature.gpu", "utilization.gpu", "power.draw",
    "power.limit",
)  # fmt: skip
QUERY_COMMAND = f"nvidia-smi --query-gpu={','.join(DEFAULT_QUERY_FIELDS)} --format=csv"
TELEGRAF_2018_FIELDS: tuple[str, ...] = (
    "fan.speed", "memory.total", "memory.used", "memory.free", "pstate", "temperature.gpu",
    "name", "uuid", "compute_mode", "utilization.gpu", "utilization.memory", "index",
)  # fmt: skip
TELEGRAF_2019_FIELDS: tuple[str, ...] = (
    *TELEGRAF_2018_FIELDS, "power.draw", "pcie.link.gen.current", "pcie.link.width.current",
    "encoder.stats.sessionCount", "encoder.stats.averageFps", "encoder.stats.averageLatency",
    "clocks.current.graphics", "clocks.current.sm", "clocks.current.memory",
    "clocks.current.video",
)  # fmt: skip
_HEADERLESS: dict[int, tuple[str, tuple[str, ...]]] = {
    len(DEFAULT_QUERY_FIELDS): ("composegen's default", DEFAULT_QUERY_FIELDS),
    len(TELEGRAF_2018_FIELDS): ("telegraf 2018", TELEGRAF_2018_FIELDS),
    len(TELEGRAF_2019_FIELDS): ("telegraf 2019", TELEGRAF_2019_FIELDS),
}
# canonical key -> CSV column names to try, best first (names lower-cased, units stripped)
_CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "index": ("index",),
    "name": ("name", "gpu_name"),
    "uuid": ("uuid", "gpu_uuid"),
    "memory.total": ("memory.total",),
    "memory.used": ("memory.used",),
    "memory.free": ("memory.free",),
    "pci.bus_id": ("pci.bus_id", "gpu_bus_id"),
    "driver_version": ("driver_version",),
    "compute_cap": ("compute_cap",),
    "temperature.gpu": ("temperature.gpu",),
    "utilization.gpu": ("utilization.gpu",),
    "power.draw": ("power.draw", "power.draw.average", "power.draw.instant"),
    "power.limit": ("power.limit", "enforced.power.limit"),
    "mig.mode.current": ("mig.mode.current",),
    "minor_number": ("minor_number",),
}
_CSV_REQUIRED = ("index", "name", "uuid", "memory.total")
_ABSENT = {
    "", "n/a", "na", "not supported", "unknown error", "gpu is lost", "insufficient permissions",
    "requested functionality has been deprecated", "not available", "unknown",
}  # fmt: skip
_NUMBER = re.compile(r"([-+]?\d+(?:\.\d+)?)\s*([A-Za-z%/]*)")
_SCALE = {"kib": 1 / 1024, "gib": 1024.0, "tib": 1024.0**2}
_HEADER_CELL = re.compile(r"[A-Za-z_][\w.]*(\s*\[[^\]]*\])?")
_HANDLE_ERR = re.compile(
    r"^.*Unable to determine the device handle for GPU ?([0-9A-Fa-f]+:[0-9A-Fa-f]{2}:[0-9A-Fa-f.]+)"
    r":\s*(.*)$",
    re.M,
)
_DOCTYPE = re.compile(r"<!DOCTYPE[^>\[]*(\[.*?\]\s*)?>", re.S)
_BAR = "#" * 80
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ANY_HINT = (
    "give `nvidia-smi -q -x` XML, `nvidia-smi -q` text, a CSV from "
    f"`{QUERY_COMMAND}`, or a file saved by `composegen detect --save FILE`"
)


# --- values -------------------------------------------------------------------------------------


def _clean(raw: str | None) -> str | None:
    """The value as printed, or None for N/A, [Not Supported], [Unknown Error] and friends."""
    if raw is None:
        return None
    value = raw.strip()
    return None if value.strip("[]").strip().lower() in _ABSENT else value


def _fault(raw: str | None) -> Health | None:
    text = (raw or "").lower()
    if "gpu is lost" in text:
        return "lost"
    return "error" if "unknown error" in text else None


def _number(raw: str | None) -> float | None:
    """'81559 MiB' -> 81559.0, '98.31 W' -> 98.31, N/A-like -> None; anything else: ValueError."""
    value = _clean(raw)
    if value is None:
        return None
    match = _NUMBER.fullmatch(value)
    if match is None:
        raise ValueError(value)
    number = float(match[1]) * _SCALE.get(match[2].lower(), 1.0)
    if not math.isfinite(number):  # hundreds of digits: float() gives inf, int() would raise
        raise ValueError(value)
    return number


def _pick(values: Iterable[str | None]) -> str | None:
    """The first real value; failing that the first one present (so faults stay visible)."""
    present = [v.strip() for v in values if v is not None]
    return next((v for v in present if _clean(v) is not None), present[0] if present else None)


def _int(raw: str | None, where: str, what: str) -> int | None:
    try:
        number = _number(raw)
    except ValueError:
        raise InventoryFileError(where, f"{what} is {raw!r}, not a number") from None
    if number is not None and number < 0:
        raise InventoryFileError(where, f"{what} is {raw!r}, a negative number")
    return None if number is None else int(number)


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def _gpu(
    raw: Mapping[str, str | None],
    where: str,
    ctx: str,
    position: int,
    mig: tuple[MigDevice, ...] = (),
) -> tuple[Gpu, list[str]]:
    """Build one Gpu from raw strings keyed like the CSV columns; telemetry that reads as
    garbage is dropped with a warning, identity and memory that read as garbage are errors."""
    warnings: list[str] = []
    tele: dict[str, float | None] = {}
    for key in ("temperature.gpu", "utilization.gpu", "power.draw", "power.limit"):
        try:
            tele[key] = _number(raw.get(key))
            if key != "temperature.gpu" and (tele[key] or 0) < 0:
                raise ValueError(raw.get(key))
        except ValueError:
            tele[key] = None
            warnings.append(f"{ctx}: ignored unreadable {key} {raw.get(key)!r}")
    health: Health = "ok"
    reason = None
    for key in ("name", "memory.total"):
        fault = _fault(raw.get(key))
        if fault is not None:
            health, reason = fault, f"nvidia-smi reported {key} as {raw.get(key)!r}"
            break
    n = {
        key: _int(raw.get(key), where, f"{ctx}: {key}")
        for key in ("index", "memory.total", "memory.used", "memory.free", "minor_number")
    }
    mode = (_clean(raw.get("mig.mode.current")) or "").lower()
    mig_mode: MigMode | None = "enabled" if mode == "enabled" else None
    if mode == "disabled":
        mig_mode = "disabled"
    temp, util = tele["temperature.gpu"], tele["utilization.gpu"]
    gpu = Gpu(
        index=_default(n["index"], position),
        name=_clean(raw.get("name")) or "unknown",
        uuid=_clean(raw.get("uuid")),
        memory_total_mib=n["memory.total"],
        memory_used_mib=n["memory.used"],
        memory_free_mib=n["memory.free"],
        compute_capability=_clean(raw.get("compute_cap")),
        pci_bus_id=_clean(raw.get("pci.bus_id")),
        minor_number=n["minor_number"],
        mig_mode=mig_mode,
        mig_devices=mig,
        temperature_c=None if temp is None else round(temp),
        utilization_gpu_pct=None if util is None else round(util),
        power_draw_w=tele["power.draw"],
        power_limit_w=tele["power.limit"],
        health=health,
        health_reason=reason,
    )
    return gpu, warnings


def _inventory(
    source: str,
    gpus: list[Gpu],
    driver: str | None,
    cuda: str | None,
    warnings: Iterable[str],
    nvml: str | None = None,
) -> Inventory:
    found = tuple(gpus)
    return Inventory(
        source=source,
        gpus=found,
        driver_version=_clean(driver),
        cuda_version=_clean(cuda),
        nvml_version=_clean(nvml),
        warnings=tuple(dict.fromkeys([*warnings, *duplicate_warnings(found)])),
    )


def _attached_warning(attached: str | None, found: int, what: str) -> list[str]:
    try:
        said = _number(attached)
    except ValueError:
        return []
    if said is None or int(said) == found:
        return []
    return [f"{what} says {int(said)} but the file lists {found} GPUs (trimmed?)"]


def _handle_errors(text: str) -> tuple[str, list[str]]:
    """Drop nvidia-smi's 'Unable to determine the device handle' lines, keeping them as warnings."""
    notes = [
        f"nvidia-smi could not open GPU {m[1]}: {m[2].strip()}" for m in _HANDLE_ERR.finditer(text)
    ]
    return (_HANDLE_ERR.sub("", text), notes) if notes else (text, [])


# --- XML and `-q` text: the same tree, two spellings --------------------------------------------

# canonical key -> (XML paths under <gpu>, `-q` paths under "GPU <bus id>"), best first
_TREE_PATHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "name": (("product_name",), ("Product Name",)),
    "uuid": (("uuid",), ("GPU UUID",)),
    "minor_number": (("minor_number",), ("Minor Number",)),
    "pci.bus_id": (("pci/pci_bus_id",), ("PCI/Bus Id",)),
    "memory.total": (("fb_memory_usage/total",), ("FB Memory Usage/Total",)),
    "memory.used": (("fb_memory_usage/used",), ("FB Memory Usage/Used",)),
    "memory.free": (("fb_memory_usage/free",), ("FB Memory Usage/Free",)),
    "mig.mode.current": (("mig_mode/current_mig",), ("MIG Mode/Current",)),
    "temperature.gpu": (("temperature/gpu_temp",), ("Temperature/GPU Current Temp",)),
    "utilization.gpu": (("utilization/gpu_util",), ("Utilization/GPU",)),
    "power.draw": (
        ("power_readings/power_draw", "gpu_power_readings/power_draw",
         "gpu_power_readings/average_power_draw", "gpu_power_readings/instant_power_draw"),
        ("Power Readings/Power Draw", "GPU Power Readings/Power Draw",
         "GPU Power Readings/Average Power Draw", "GPU Power Readings/Instantaneous Power Draw"),
    ),
    "power.limit": (
        ("power_readings/power_limit", "gpu_power_readings/current_power_limit",
         "gpu_power_readings/power_limit"),
        ("Power Readings/Power Limit", "GPU Power Readings/Current Power Limit",
         "GPU Power Readings/Power Limit"),
    ),
}  # fmt: skip
# a MIG slice's index, GPU instance id, compute instance id and own memory total: XML, `-q`
_MIG_PATHS = (
    (("index",), ("gpu_instance_id",), ("compute_instance_id",), ("fb_memory_usage/total",)),
    (("Index",), ("GPU Instance ID",), ("Compute Instance ID",),
     ("Shared FB Memory Usage/Total", "FB Memory Usage/Total")),
)  # fmt: skip
_MIG_WHAT = ("index", "GPU instance id", "compute instance id", "memory total")
_Getter = Callable[[str], "str | None"]


def _tree_gpu(
    get: _Getter,
    slices: list[_Getter],
    spelling: int,
    bus_id: str | None,
    where: str,
    ctx: str,
    position: int,
) -> tuple[Gpu, list[str]]:
    """One GPU of the XML (spelling 0) or `-q` (spelling 1) tree; `get` reads a path under it."""
    raw = {key: _pick(get(p) for p in ps[spelling]) for key, ps in _TREE_PATHS.items()}
    raw["pci.bus_id"] = _clean(raw["pci.bus_id"]) or bus_id
    mig: list[MigDevice] = []
    for k, m in enumerate(slices):
        idx, gi, ci, mem = (
            _int(_pick(m(p) for p in ps), where, f"{ctx}: MIG device #{k} {what}")
            for ps, what in zip(_MIG_PATHS[spelling], _MIG_WHAT, strict=True)
        )
        mig.append(
            MigDevice(
                index=_default(idx, k),
                memory_total_mib=mem,
                gpu_instance_id=gi,
                compute_instance_id=ci,
            )
        )
    return _gpu(raw, where, ctx, position, tuple(mig))


def parse_xml(text: str, where: str) -> Inventory:
    """`nvidia-smi -q -x` output, any DTD version (v9 to v13) or none."""
    start = min(
        (i for i in (text.find("<?xml"), text.find("<nvidia_smi_log")) if i >= 0), default=0
    )
    junk = text[:start].strip()
    warnings = [f"ignored text before the XML: {junk[:80]!r}"] if junk else []
    body = re.sub(r"^<\?xml[^>]*\?>", "", text[start:].lstrip("\ufeff"))  # may not come 2nd
    body = "\n" * text.count("\n", 0, start) + body  # so line numbers stay the file's
    body = _DOCTYPE.sub(lambda m: "\n" * m[0].count("\n"), body, count=1)
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        line, col = exc.position
        if "<nvidia_smi_log" in text and "</nvidia_smi_log>" not in text:
            problem = f"truncated XML (no closing </nvidia_smi_log>) at line {line}, column {col}"
        else:
            problem = f"malformed XML at line {line}, column {col}: {str(exc).split(':')[0]}"
        raise InventoryFileError(where, problem, "save it again with `nvidia-smi -q -x`") from None
    if root.tag != "nvidia_smi_log":
        raise InventoryFileError(where, f"not an nvidia-smi XML log (root element is <{root.tag}>)")
    elements = root.findall("gpu")
    if not elements:
        raise InventoryFileError(where, "XML has no <gpu> element")
    gpus: list[Gpu] = []
    warnings += _attached_warning(root.findtext("attached_gpus"), len(elements), "attached_gpus")
    for pos, el in enumerate(elements):
        slices: list[_Getter] = [m.findtext for m in el.findall("mig_devices/mig_device")]
        ctx = f"<gpu> #{pos} ({el.get('id', 'no id')})"
        gpu, notes = _tree_gpu(el.findtext, slices, 0, el.get("id"), where, ctx, pos)
        gpus.append(gpu)
        warnings += notes
    driver, cuda = root.findtext("driver_version"), root.findtext("cuda_version")
    return _inventory("file:nvidia-smi-xml", gpus, driver, cuda, warnings)


# --- CSV ----------------------------------------------------------------------------------------


def _column(cell: str) -> str:
    return re.sub(r"\s*\[[^\]]*\]$", "", cell.strip()).lower()


def _is_header(cells: list[str]) -> bool:
    return all(_HEADER_CELL.fullmatch(c) for c in cells)


def parse_csv(text: str, where: str) -> Inventory:
    """`nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]` output."""
    text, warnings = _handle_errors(text.lstrip("\ufeff"))
    rows: list[tuple[int, list[str]]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(
                    (n, [c.strip() for c in next(csv.reader([line], skipinitialspace=True))])
                )
            except csv.Error as exc:
                raise InventoryFileError(where, f"CSV row {n}: {exc}") from None
    if not rows:
        raise InventoryFileError(where, "CSV has no rows", f"save one with `{QUERY_COMMAND}`")
    first = rows[0][1]
    if _is_header(first):
        names, body, against = [_column(c) for c in first], rows[1:], "the header has"
        for key in _CSV_REQUIRED:
            if not set(_CSV_COLUMNS[key]) & set(names):
                raise InventoryFileError(
                    where, f"CSV header lacks required column {key!r}", f"use `{QUERY_COMMAND}`"
                )
        if not body:
            raise InventoryFileError(where, "CSV has a header but no GPU rows")
    else:
        layout = _HEADERLESS.get(len(first))
        if layout is None:
            raise InventoryFileError(
                where,
                f"headerless CSV has {len(first)} fields per row; composegen reads headerless CSV "
                "only with 13 fields (its DEFAULT_QUERY_FIELDS order) or 12/22 (telegraf's)",
                f"save it with a header: `{QUERY_COMMAND}`",
            )
        label, fields = layout
        names, body, against = [f.lower() for f in fields], rows, "the first row has"
        for n, row in rows:
            uuid = row[fields.index("uuid")] if len(row) == len(fields) else "GPU-"
            if _clean(uuid) is not None and not uuid.startswith("GPU-"):
                raise InventoryFileError(
                    where,
                    f"headerless CSV row {n} does not fit the {len(fields)}-field {label} layout "
                    f"(its uuid column reads {uuid!r})",
                    f"save it with a header: `{QUERY_COMMAND}`",
                )
    gpus: list[Gpu] = []
    driver: str | None = None
    for pos, (n, row) in enumerate(body):
        if len(row) != len(names):
            raise InventoryFileError(
                where, f"CSV row {n} has {len(row)} fields, {against} {len(names)}"
            )
        values: dict[str, str] = {}
        for name, value in zip(names, row, strict=True):
            values.setdefault(name, value)
        raw = {key: _pick(values.get(c) for c in cols) for key, cols in _CSV_COLUMNS.items()}
        gpu, notes = _gpu(raw, where, f"CSV row {n}", pos)
        gpus.append(gpu)
        warnings += notes
        driver = driver or _clean(raw["driver_version"])
    return _inventory("file:nvidia-smi-csv", gpus, driver, None, warnings)


# --- `nvidia-smi -q` text -----------------------------------------------------------------------


@dataclass
class _Node:
    key: str
    value: str | None
    children: list[_Node] = field(default_factory=list)

    def get(self, path: str) -> str | None:
        node = self
        for part in path.lower().split("/"):
            found = next((c for c in node.children if c.key.lower() == part), None)
            if found is None:
                return None
            node = found
        return node.value

    def all(self, key: str) -> list[_Node]:
        return [c for c in self.children if c.key.lower() == key.lower()]


_KV = re.compile(r"([^:]*?)\s+:(?:\s+(.*))?")


def _tree(text: str) -> _Node:
    """The 'Key : value' indentation tree of `nvidia-smi -q` (4 spaces a level)."""
    root = _Node("", None)
    stack: list[tuple[int, _Node]] = [(-1, root)]
    for line in text.expandtabs(4).splitlines():
        content = line.strip()
        if not content or content.startswith(("==", "#")):
            continue
        indent = len(line) - len(line.lstrip(" "))
        match = _KV.fullmatch(content)
        node = _Node(match[1].strip(), (match[2] or "").strip()) if match else _Node(content, None)
        while stack[-1][0] >= indent:
            stack.pop()
        stack[-1][1].children.append(node)
        stack.append((indent, node))
    return root


def parse_query_text(text: str, where: str) -> Inventory:
    """Plain `nvidia-smi -q` output ('==============NVSMI LOG==============')."""
    text, warnings = _handle_errors(text)
    root = _tree(text)
    sections = [c for c in root.children if c.value is None and re.match(r"GPU \S+:", c.key)]
    if not sections:
        if "NVSMI LOG" not in text:
            problem = "not an nvidia-smi -q log (no '==============NVSMI LOG==============' line)"
        else:
            problem = "the nvidia-smi -q log lists no GPU" + "".join(f"; {w}" for w in warnings)
        raise InventoryFileError(where, problem)
    warnings += _attached_warning(root.get("Attached GPUs"), len(sections), "Attached GPUs")
    gpus: list[Gpu] = []
    for pos, node in enumerate(sections):
        slices: list[_Getter] = [m.get for m in node.all("MIG Device")]
        bus_id = node.key.split(" ", 1)[1]
        gpu, notes = _tree_gpu(node.get, slices, 1, bus_id, where, node.key, pos)
        gpus.append(gpu)
        warnings += notes
    driver, cuda = root.get("Driver Version"), root.get("CUDA Version")
    return _inventory("file:nvidia-smi-q", gpus, driver, cuda, warnings)


# --- nvidia_gpu_exporter captures ---------------------------------------------------------------


def _sections(text: str) -> dict[str, str]:
    """'phase :: name' (lower-cased) -> body, for each 80-'#' framed section header."""
    lines = text.splitlines()
    heads: list[tuple[str, int, int]] = []
    i = 0
    while i + 1 < len(lines):
        title = lines[i + 1]
        if lines[i].rstrip() == _BAR and title.startswith("# ") and " :: " in title:
            j = i + 2
            if j < len(lines) and lines[j].startswith("# $"):
                j += 1
            if j < len(lines) and lines[j].rstrip() == _BAR:
                j += 1
            heads.append((title[2:].strip().lower(), i, j))
            i = j
        else:
            i += 1
    out: dict[str, str] = {}
    for k, (title, _, start) in enumerate(heads):
        end = heads[k + 1][1] if k + 1 < len(heads) else len(lines)
        out.setdefault(title, "\n".join(lines[start:end]))
    return out


def _in_section(
    parse: Callable[[str, str], Inventory], body: str, where: str, name: str
) -> Inventory:
    try:
        return parse(body, where)
    except InventoryFileError as exc:
        raise InventoryFileError(where, f"section '{name}': {exc.problem}", exc.hint) from None


def _nvlink_peers(body: str) -> dict[int, set[int]]:
    """`nvidia-smi topo -m`: GPUi row, GPUj column reading NV# -> NVLink between i and j."""
    header: list[str] | None = None
    peers: dict[int, set[int]] = {}
    for line in _ANSI.sub("", body).splitlines():
        cells = [c.strip() for c in re.split(r"\t| {2,}", line)]
        if header is None:
            if any(re.fullmatch(r"GPU\d+", c) for c in cells):
                header = cells
            continue
        row = re.fullmatch(r"GPU(\d+)", cells[0])
        if row is None:
            continue
        for col, cell in zip(header, cells, strict=False):
            other = re.fullmatch(r"GPU(\d+)", col)
            if other and re.fullmatch(r"NV\d+", cell) and other[1] != row[1]:
                peers.setdefault(int(row[1]), set()).add(int(other[1]))
    return peers


def parse_capture(text: str, where: str) -> Inventory:
    """An nvidia_gpu_exporter capture: `-q` for the GPUs, `--version`, `-L` for MIG names and
    UUIDs, `topo -m` for NVLink; the query-gpu CSV section is the cross-check (or fallback)."""
    secs = _sections(text)
    if not secs:
        raise InventoryFileError(
            where, "not an nvidia_gpu_exporter capture (no '# x :: y' sections)"
        )
    q_name = "idle :: query (-q)"
    csv_name = next((k for k in secs if k.startswith("idle :: query-gpu")), None)
    csv_inv = _in_section(parse_csv, secs[csv_name], where, csv_name) if csv_name else None
    if q_name in secs:
        inv = _in_section(parse_query_text, secs[q_name], where, q_name)
    elif csv_inv is not None:
        inv = csv_inv
    else:
        raise InventoryFileError(
            where, "capture has neither an 'idle :: query (-q)' nor an 'idle :: query-gpu' section"
        )
    gpus, warnings = list(inv.gpus), list(inv.warnings)
    if csv_inv is not None and csv_inv is not inv:
        if len(csv_inv.gpus) != len(gpus):
            raise InventoryFileError(
                where,
                f"capture disagrees with itself: its -q section lists {len(gpus)} GPUs, "
                f"its query-gpu CSV {len(csv_inv.gpus)}",
            )
        gpus = [
            g if g.compute_capability else replace(g, compute_capability=c.compute_capability)
            for g, c in zip(gpus, csv_inv.gpus, strict=True)
        ]
    version = {
        m[1].strip().lower(): m[2].strip()
        for m in re.finditer(
            r"^([^:\n]+?)\s*:\s*(.*)$", secs.get("capabilities :: version", ""), re.M
        )
    }
    listed: dict[int, list[MigDevice]] = {}
    current = -1
    for line in secs.get("capabilities :: list (-l)", "").splitlines():
        if m := re.match(r"GPU (\d+): .*\(UUID: ([^)]+)\)", line):
            current = int(m[1])
            listed[current] = []
        elif (
            m := re.match(r"\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: ([^)]+)\)", line)
        ) and current >= 0:
            listed[current].append(MigDevice(index=int(m[2]), uuid=m[3], profile=m[1]))
    if listed and len(listed) != len(gpus):
        warnings.append(f"nvidia-smi -L lists {len(listed)} GPUs but -q lists {len(gpus)}")
    peers = _nvlink_peers(secs.get("capabilities :: topo -m", ""))
    for k, g in enumerate(gpus):
        migs = {d.index: d for d in g.mig_devices}
        for d in listed.get(g.index, []):
            old = migs.get(d.index)
            migs[d.index] = d if old is None else replace(old, uuid=d.uuid, profile=d.profile)
        gpus[k] = replace(
            g,
            mig_devices=tuple(migs[i] for i in sorted(migs)),
            nvlink_peers=tuple(sorted(peers.get(g.index, ()))),
        )
    return _inventory(
        "file:nvidia-smi-capture",
        gpus,
        version.get("driver version") or inv.driver_version,
        version.get("cuda version") or inv.cuda_version,
        warnings,
        nvml=version.get("nvml version"),
    )


# --- by content ---------------------------------------------------------------------------------


def sniff(text: str) -> str | None:
    """What `text` is, from content only: xml, csv, query-text, capture, or None."""
    head = text.lstrip("\ufeff \t\r\n")[:8192]
    if not head or "\x00" in head:
        return None
    if head.startswith("<") or "<nvidia_smi_log" in head:
        return "xml"
    if _BAR in head and re.search(r"^# \S+ :: ", text[:65536], re.M):
        return "capture"
    if "NVSMI LOG" in head:
        return "query-text"
    try:
        cells = [c.strip() for c in next(csv.reader([head.splitlines()[0]], skipinitialspace=True))]
    except (csv.Error, StopIteration):
        return None
    if len(cells) < 2:
        return None
    known = {c for cols in _CSV_COLUMNS.values() for c in cols}
    if _is_header(cells) and any(_column(c) in known for c in cells):
        return "csv"
    numeric = sum(1 for c in cells if _NUMBER.fullmatch(c) or _clean(c) is None)
    if any(c.startswith("GPU-") for c in cells) or 2 * numeric > len(cells):
        return "csv"
    return None


_PARSERS: dict[str, Callable[[str, str], Inventory]] = {
    "xml": parse_xml,
    "csv": parse_csv,
    "query-text": parse_query_text,
    "capture": parse_capture,
}


def parse_any(text: str, where: str) -> Inventory:
    """Sniff `text` and parse it with the matching parser."""
    kind = sniff(text)
    if kind is None:
        if "No devices were found" in text:
            problem = "nvidia-smi found no GPU on that host ('No devices were found')"
        else:
            empty = " (the file is empty)" if not text.strip() else ""
            problem = f"not an nvidia-smi output or composegen inventory{empty}"
        raise InventoryFileError(where, problem, _ANY_HINT)
    return _PARSERS[kind](text, where)
