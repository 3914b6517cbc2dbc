"""Facade for `detect`: the local GPUs through NVML, then nvidia-smi; or a saved file.

Sources, in order: NVML (nvidia-ml-py); `nvidia-smi -q -x` when the NVML library cannot be
loaded (or hangs); `--from FILE` with a saved inventory JSON or an nvidia-smi output.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from composegen.errors import BadInputError, InventoryFileError
from composegen.inventory import Gpu, Inventory, duplicate_warnings

NVIDIA_SMI_TIMEOUT_S = 15.0
MAX_INVENTORY_BYTES = 32 * 1024 * 1024

_HANDLE_ERR = re.compile(
    r"Unable to determine the device handle for GPU\s*([0-9A-Fa-f:.]+):\s*(.+)"
)


def detect_local(
    nvml_timeout_s: float = 5.0,
    with_host: bool = True,
    with_docker: bool = True,
    docker_timeout_s: float = 3.0,
) -> Inventory:
    from composegen.detect import nvml

    try:
        inv = nvml.read_inventory(nvml_timeout_s)
    except nvml.NvmlUnavailable as exc:
        if exc.kind in ("no-library", "timeout"):
            inv = _from_nvidia_smi(exc.reason)
        else:
            inv = Inventory(source="nvml", no_gpu_reason=exc.reason)
    if with_host:
        from composegen.detect.host import probe_host

        inv = inv.with_host(probe_host(docker_timeout_s, with_docker=with_docker))
    return inv


def _from_nvidia_smi(nvml_reason: str) -> Inventory:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return Inventory(
            source="none", no_gpu_reason=f"{nvml_reason}, and nvidia-smi is not on PATH"
        )
    try:
        proc = subprocess.run(
            [exe, "-q", "-x"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Inventory(
            source="nvidia-smi",
            no_gpu_reason=f"{nvml_reason}; nvidia-smi did not answer within "
            f"{NVIDIA_SMI_TIMEOUT_S:g} s",
        )
    except OSError as exc:
        return Inventory(source="nvidia-smi", no_gpu_reason=f"{nvml_reason}; nvidia-smi: {exc}")
    return from_nvidia_smi_output(proc.stdout, proc.stderr, proc.returncode)


def from_nvidia_smi_output(stdout: str, stderr: str, returncode: int) -> Inventory:
    """Turn one `nvidia-smi -q -x` run into an inventory, GPUs it could not open included."""
    from composegen.detect import nvidia_smi

    lost = [(m.group(1), m.group(2).strip()) for m in _HANDLE_ERR.finditer(stderr + stdout)]
    inv: Inventory
    if "<nvidia_smi_log" in stdout:
        try:
            inv = nvidia_smi.parse_xml(
                stdout[stdout.index("<?xml") :] if "<?xml" in stdout else stdout, "nvidia-smi -q -x"
            )
        except InventoryFileError as exc:
            return Inventory(source="nvidia-smi", no_gpu_reason=f"unreadable output: {exc.problem}")
    else:
        reason = (stderr.strip() or stdout.strip() or f"exit code {returncode}").splitlines()[0]
        if not lost:
            return Inventory(source="nvidia-smi", no_gpu_reason=f"nvidia-smi failed: {reason}")
        inv = Inventory(source="nvidia-smi")
    if lost:
        start = max((g.index for g in inv.gpus), default=-1) + 1
        extra = tuple(
            Gpu(
                index=start + i,
                name="unknown",
                pci_bus_id=bus,
                health="lost" if "lost" in why.lower() else "error",
                health_reason=f"nvidia-smi: {why}",
            )
            for i, (bus, why) in enumerate(lost)
        )
        gpus = inv.gpus + extra
        inv = replace(
            inv,
            gpus=gpus,
            warnings=(
                *inv.warnings,
                "GPUs nvidia-smi could not open are listed last; their index is a guess",
            ),
        )
        inv = replace(inv, warnings=tuple(dict.fromkeys(inv.warnings + duplicate_warnings(gpus))))
    return replace(inv, source="nvidia-smi")


def load_inventory(path: str) -> Inventory:
    """Read `--from` / `--inventory`: inventory JSON or any nvidia-smi output, by content."""
    from composegen.detect import nvidia_smi
    from composegen.files import TooLargeError, read_bounded

    p = Path(path)
    try:
        if p.is_dir():
            raise InventoryFileError(path, "is a directory, not a file")
        size = p.stat().st_size
        if size > MAX_INVENTORY_BYTES:
            raise InventoryFileError(path, f"is {size} bytes, too large for an inventory")
        data = read_bounded(p, MAX_INVENTORY_BYTES)  # a device (/dev/zero) has no size nor end
    except TooLargeError:
        raise InventoryFileError(path, "is too large for an inventory (no end in sight)") from None
    except FileNotFoundError:
        raise InventoryFileError(path, "no such file") from None
    except PermissionError:
        raise InventoryFileError(path, "permission denied") from None
    except OSError as exc:
        raise InventoryFileError(path, f"cannot read it: {exc.strerror or exc}") from None
    if not data.strip():
        raise InventoryFileError(
            path, "is empty", "save one with `composegen detect --save FILE` or `nvidia-smi -q -x`"
        )
    if b"\0" in data[:8192]:
        raise InventoryFileError(path, "is a binary file, not an inventory or nvidia-smi output")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryFileError(
            path, f"is not UTF-8 text (bad byte at offset {exc.start})"
        ) from None
    if text.lstrip().startswith("{"):
        try:
            inv = Inventory.from_json(text, where=path)
        except InventoryFileError:
            raise
        except BadInputError as exc:
            # from_json names the path inside the file after the file: "FILE.gpus[0].index: ..."
            problem = exc.message.removeprefix(f"{path}: ").removeprefix(f"{path}.")
            raise InventoryFileError(path, problem, exc.hint) from None
        return inv
    inv = nvidia_smi.parse_any(text, path)
    return inv
