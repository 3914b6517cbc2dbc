#!/usr/bin/python3
"""TEST-ONLY stand-in for `nvidia-smi` inside the ollama and model stub images.

It answers from what the container was given, as the real tool answers from the devices the
NVIDIA hook mounted: NVIDIA_VISIBLE_DEVICES of the container's main process (/proc/1/environ,
where the engine puts it; `docker exec` does not pass it on), else of its own environment.
  nvidia-smi -L          one line per id: "GPU <n>: NVIDIA Stub GPU (UUID: <uuid>)", exit 0;
                         <uuid> is the id verbatim when it starts with "GPU-", else
                         "GPU-stub-<id>" ("all" counts as the one id "0")
  nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used --format=csv[,noheader][,nounits]
                         the same devices (memory.total from STUB_GPU_MEMORY_MIB, default 24564)
  nvidia-smi             a short summary of the same devices
No device visible (unset, empty, "void", "none"): "No devices were found", exit 6.
With STUB_NVML_LOST=1 (own or main process environment) or the file /run/stub-nvml-lost
present: "Failed to initialize NVML: Unknown Error", exit 255, what a container shows after it
lost its GPU (nvidia-container-toolkit#48).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LOST_FILE = Path("/run/stub-nvml-lost")
NAME = "NVIDIA Stub GPU"


def main_env() -> dict[str, str]:
    try:
        raw = Path("/proc/1/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def lookup(name: str, env: dict[str, str]) -> str | None:
    return env[name] if name in env else os.environ.get(name)


def uuids(value: str | None) -> list[str]:
    value = (value or "").strip()
    if value in ("", "void", "none"):
        return []
    ids = ["0"] if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    return [i if i.startswith("GPU-") else f"GPU-stub-{i}" for i in ids]


def query(spec: str, fmt: str, devices: list[str]) -> list[str]:
    fields = [f.strip() for f in spec.split(",") if f.strip()]
    nounits = "nounits" in fmt
    total = os.environ.get("STUB_GPU_MEMORY_MIB", "24564")
    values = {
        "index": lambda i, u: str(i),
        "uuid": lambda i, u: u,
        "gpu_uuid": lambda i, u: u,
        "name": lambda i, u: NAME,
        "memory.total": lambda i, u: total if nounits else f"{total} MiB",
        "memory.used": lambda i, u: "0" if nounits else "0 MiB",
        "memory.free": lambda i, u: total if nounits else f"{total} MiB",
    }
    out = [] if "noheader" in fmt else [", ".join(fields)]
    for i, u in enumerate(devices):
        out.append(", ".join(values.get(f, lambda i, u: "[N/A]")(i, u) for f in fields))
    return out


def main(argv: list[str]) -> int:
    env = main_env()
    if lookup("STUB_NVML_LOST", env) == "1" or LOST_FILE.exists():
        print("Failed to initialize NVML: Unknown Error")
        return 255
    devices = uuids(lookup("NVIDIA_VISIBLE_DEVICES", env))
    if not devices:
        print("No devices were found")
        return 6
    opts = dict(a.split("=", 1) if "=" in a else (a, "") for a in argv)
    if "-L" in opts or "--list-gpus" in opts:
        for i, u in enumerate(devices):
            print(f"GPU {i}: {NAME} (UUID: {u})")
    elif "--query-gpu" in opts:
        print("\n".join(query(opts["--query-gpu"], opts.get("--format", "csv"), devices)))
    else:
        print("NVIDIA-SMI 550.00 (TEST-ONLY stub)   Driver Version: 550.00   CUDA Version: 12.4")
        for i, u in enumerate(devices):
            print(
                f"| {i}  {NAME}  {u}  0MiB / {os.environ.get('STUB_GPU_MEMORY_MIB', '24564')}MiB |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
