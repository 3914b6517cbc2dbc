"""A fake NVML at the pynvml boundary, driven by named scenarios (gpustat's scenario_* habit).

It mimics the pynvml functions composegen.detect.nvml calls, with pynvml's own NVMLError
classes and error codes, so the code under test cannot tell the difference.

For watch (many reads of one session): the event API (nvmlEventSetCreate,
nvmlDeviceRegisterEvents, nvmlEventSetWait, nvmlEventSetFree, nvmlDeviceGetIndex). A scenario
may refuse Xid events (`events_supported=False`, NOT_SUPPORTED as some drivers and Windows
answer), and may carry `steps`: what changes between reads; a test calls `fake.advance()` to
apply the next step. `fake.xid(index, code)` delivers an Xid to the event sets the GPU is
registered in (as the driver does); `fake.lose(index)` makes a GPU fall off the bus (every
query then answers GPU_IS_LOST) with its Xid 79.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

MIB = 1024 * 1024


@dataclass
class FakeMig:
    profile: str
    memory_mib: int
    uuid: str
    gi: int
    ci: int = 0


@dataclass
class FakeGpu:
    name: str
    memory_mib: int
    uuid: str
    bus: str
    cc: tuple[int, int] = (8, 0)
    used_mib: int = 0
    temp: int = 35
    util: int = 0
    power_mw: int = 60_000
    limit_mw: int = 400_000
    minor: int = 0
    mig: list[FakeMig] | None = None  # None: MIG not supported; []: supported, disabled
    nvlink_to: list[str] = field(default_factory=list)  # bus ids
    lost: bool = False  # every query answers NVML_ERROR_GPU_IS_LOST
    lost_after_name: bool = False  # handle and name work, memory info says lost
    reset_required: bool = False  # every query answers NVML_ERROR_RESET_REQUIRED
    ecc_uncorrected: int | None = None  # None: ECC not supported (GeForce)
    # compute processes as NVML lists them: (host pid, used bytes; None = NOT_AVAILABLE)
    processes: list[tuple[int, int | None]] = field(default_factory=list)


@dataclass
class Scenario:
    gpus: list[FakeGpu]
    driver: str = "550.54.15"
    cuda: int = 12040
    nvml: str = "12.550.54.15"
    init_error: int | None = None  # an NVML_ERROR_* code nvmlInit raises
    init_hang_s: float = 0.0
    events_supported: bool = True  # False: nvmlDeviceRegisterEvents answers NOT_SUPPORTED
    steps: list[Callable[[FakeNvml], None]] = field(default_factory=list)  # see advance()


def _err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class FakeNvml:
    NVMLError = pynvml.NVMLError

    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.init_calls = 0
        self.shutdown_calls = 0
        self._release = threading.Event()
        for name in dir(pynvml):
            if name.startswith("NVML_") or name.startswith("nvmlEventType"):
                setattr(self, name, getattr(pynvml, name))
        self.event_sets: list[list[SimpleNamespace]] = []
        self.registered: dict[int, set[int]] = {}  # id(event set) -> GPU indices
        self.freed = 0
        self.step = 0

    # -- what a test does between reads
    def advance(self) -> None:
        """Apply the scenario's next step (what changed since the last read)."""
        self.s.steps[self.step](self)
        self.step += 1

    def xid(self, index: int, code: int) -> None:
        """The driver reports Xid `code` on GPU `index`: to each event set it is registered in."""
        for es in self.event_sets:
            if index in self.registered.get(id(es), set()):
                es.append(
                    SimpleNamespace(
                        device=("gpu", index),
                        eventType=pynvml.nvmlEventTypeXidCriticalError,
                        eventData=code,
                        gpuInstanceId=0xFFFFFFFF,
                        computeInstanceId=0xFFFFFFFF,
                    )
                )

    def lose(self, index: int) -> None:
        """GPU `index` falls off the bus: Xid 79, then every query answers GPU_IS_LOST."""
        self.xid(index, 79)
        self.s.gpus[index].lost = True

    # -- events
    def nvmlEventSetCreate(self) -> list[SimpleNamespace]:
        es: list[SimpleNamespace] = []
        self.event_sets.append(es)
        return es

    def nvmlDeviceRegisterEvents(self, h: tuple[Any, ...], types: int, es: Any) -> None:
        self._gpu(h)
        if not self.s.events_supported:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        assert types & pynvml.nvmlEventTypeXidCriticalError
        self.registered.setdefault(id(es), set()).add(h[1])

    def nvmlEventSetWait(self, es: list[SimpleNamespace], timeoutms: int) -> SimpleNamespace:
        assert timeoutms == 0, "watch never blocks on the event set"
        if not es:
            raise _err(pynvml.NVML_ERROR_TIMEOUT)
        return es.pop(0)

    def nvmlEventSetFree(self, es: Any) -> None:
        self.freed += 1
        if es in self.event_sets:
            self.event_sets.remove(es)

    def nvmlDeviceGetIndex(self, h: tuple[Any, ...]) -> int:
        self._gpu(h)  # a GPU off the bus cannot say who it is: GPU_IS_LOST
        return int(h[1])

    # -- system
    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.s.init_hang_s:
            self._release.wait(self.s.init_hang_s)
        if self.s.init_error is not None:
            raise _err(self.s.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.s.driver

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self.s.cuda

    def nvmlSystemGetNVMLVersion(self) -> str:
        return self.s.nvml

    def nvmlDeviceGetCount(self) -> int:
        return len(self.s.gpus)

    # -- devices: a handle is ("gpu", i) or ("mig", i, j)
    def _gpu(self, h: tuple[Any, ...]) -> FakeGpu:
        g = self.s.gpus[h[1]]
        if g.lost:
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
        if g.reset_required:
            raise _err(pynvml.NVML_ERROR_RESET_REQUIRED)
        return g

    def nvmlDeviceGetHandleByIndex(self, i: int) -> tuple[Any, ...]:
        if i >= len(self.s.gpus):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self.s.gpus[i].lost:
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
        return ("gpu", i)

    def nvmlDeviceGetName(self, h: tuple[Any, ...]) -> str:
        g = self._gpu(h)
        if h[0] == "mig":
            assert g.mig is not None
            return f"{g.name} MIG {g.mig[h[2]].profile}"
        return g.name

    def nvmlDeviceGetUUID(self, h: tuple[Any, ...]) -> str:
        g = self._gpu(h)
        if h[0] == "mig":
            assert g.mig is not None
            return g.mig[h[2]].uuid
        return g.uuid

    def nvmlDeviceGetMemoryInfo(self, h: tuple[Any, ...]) -> SimpleNamespace:
        g = self._gpu(h)
        if g.lost_after_name:
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
        if h[0] == "mig":
            assert g.mig is not None
            total = g.mig[h[2]].memory_mib * MIB
            return SimpleNamespace(total=total, used=0, free=total)
        return SimpleNamespace(
            total=g.memory_mib * MIB, used=g.used_mib * MIB, free=(g.memory_mib - g.used_mib) * MIB
        )

    def nvmlDeviceGetPciInfo(self, h: tuple[Any, ...]) -> SimpleNamespace:
        return SimpleNamespace(busId=self._gpu(h).bus.encode())

    def nvmlDeviceGetCudaComputeCapability(self, h: tuple[Any, ...]) -> tuple[int, int]:
        return self._gpu(h).cc

    def nvmlDeviceGetMinorNumber(self, h: tuple[Any, ...]) -> int:
        return self._gpu(h).minor

    def nvmlDeviceGetMigMode(self, h: tuple[Any, ...]) -> list[int]:
        g = self._gpu(h)
        if g.mig is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        on = 1 if g.mig else 0
        return [on, on]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: tuple[Any, ...]) -> int:
        g = self._gpu(h)
        if g.mig is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: tuple[Any, ...], j: int) -> tuple[Any, ...]:
        g = self._gpu(h)
        if g.mig is None or j >= len(g.mig):
            raise _err(pynvml.NVML_ERROR_NOT_FOUND)
        return ("mig", h[1], j)

    def nvmlDeviceGetGpuInstanceId(self, h: tuple[Any, ...]) -> int:
        g = self._gpu(h)
        assert g.mig is not None
        return g.mig[h[2]].gi

    def nvmlDeviceGetComputeInstanceId(self, h: tuple[Any, ...]) -> int:
        g = self._gpu(h)
        assert g.mig is not None
        return g.mig[h[2]].ci

    def nvmlDeviceGetTemperature(self, h: tuple[Any, ...], sensor: int) -> int:
        return self._gpu(h).temp

    def nvmlDeviceGetUtilizationRates(self, h: tuple[Any, ...]) -> SimpleNamespace:
        g = self._gpu(h)
        if g.mig:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)  # as real MIG-enabled GPUs answer
        return SimpleNamespace(gpu=g.util, memory=0)

    def nvmlDeviceGetPowerUsage(self, h: tuple[Any, ...]) -> int:
        return self._gpu(h).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: tuple[Any, ...]) -> int:
        return self._gpu(h).limit_mw

    def nvmlDeviceGetTotalEccErrors(self, h: tuple[Any, ...], kind: int, counter: int) -> int:
        g = self._gpu(h)
        assert kind == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        assert counter == pynvml.NVML_VOLATILE_ECC
        if g.ecc_uncorrected is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return g.ecc_uncorrected

    def nvmlDeviceGetComputeRunningProcesses(self, h: tuple[Any, ...]) -> list[SimpleNamespace]:
        g = self._gpu(h)
        # pynvml's own objects: pid, usedGpuMemory (None for NVML_VALUE_NOT_AVAILABLE),
        # gpuInstanceId / computeInstanceId (0xFFFFFFFF outside MIG)
        return [
            SimpleNamespace(
                pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF
            )
            for pid, used in g.processes
        ]

    def nvmlDeviceGetNvLinkState(self, h: tuple[Any, ...], link: int) -> int:
        g = self._gpu(h)
        if not g.nvlink_to:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if link >= len(g.nvlink_to):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return 1

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: tuple[Any, ...], link: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self._gpu(h).nvlink_to[link].encode())


# --- named scenarios ------------------------------------------------------------------------------


def _uuid(n: int, tag: str = "a100") -> str:
    return f"GPU-{tag:0>8}-0000-4000-8000-{n:012d}"[:40]


def _hgx(count: int, name: str, mem: int, tag: str, limit_mw: int) -> list[FakeGpu]:
    buses = [f"00000000:{0x07 + 0x10 * i:02X}:00.0" for i in range(count)]
    return [
        FakeGpu(
            name=name,
            memory_mib=mem,
            uuid=_uuid(i, tag),
            bus=buses[i],
            limit_mw=limit_mw,
            minor=i,
            mig=[],
            nvlink_to=[b for b in buses if b != buses[i]],
        )
        for i in range(count)
    ]


def a100_8x80() -> Scenario:
    return Scenario(gpus=_hgx(8, "NVIDIA A100-SXM4-80GB", 81920, "a10080", 400_000))


def a100_4x64() -> Scenario:
    return Scenario(gpus=_hgx(4, "NVIDIA A100-SXM-64GB", 65536, "a10064", 440_000))


def consumer_pair() -> Scenario:
    return Scenario(
        gpus=[
            FakeGpu(
                "NVIDIA GeForce RTX 3060 Ti",
                8192,
                _uuid(0, "3060ti"),
                "00000000:01:00.0",
                cc=(8, 6),
                limit_mw=200_000,
                minor=0,
            ),
            FakeGpu(
                "NVIDIA GeForce GTX 1660 SUPER",
                6144,
                _uuid(1, "1660s"),
                "00000000:02:00.0",
                cc=(7, 5),
                limit_mw=125_000,
                minor=1,
            ),
        ]
    )


def single_8gb() -> Scenario:
    return Scenario(
        gpus=[
            FakeGpu(
                "NVIDIA GeForce RTX 3070",
                8192,
                _uuid(0, "3070"),
                "00000000:01:00.0",
                cc=(8, 6),
                limit_mw=220_000,
            )
        ]
    )


def a5000_busy() -> Scenario:
    """Two RTX A5000 (24564 MiB each) that other processes already use: the memory.used of
    tests/fixtures/nvidia-smi/xml/telegraf__dual_a5000-v13.xml (22437 and 17253 MiB)."""
    return Scenario(
        gpus=[
            FakeGpu(
                "NVIDIA RTX A5000",
                24564,
                _uuid(i, "a5000"),
                f"00000000:{0x17 + i:02X}:00.0",
                cc=(8, 6),
                used_mib=used,
                limit_mw=230_000,
                minor=i,
            )
            for i, used in enumerate((22437, 17253))
        ]
    )


def lost_gpu() -> Scenario:
    s = a100_4x64()
    s.gpus[2].lost = True
    s.gpus[3].lost_after_name = True
    return s


def ecc_errors() -> Scenario:
    s = a100_8x80()
    for g in s.gpus:
        g.ecc_uncorrected = 0
    s.gpus[6].ecc_uncorrected = 2
    return s


def mig_enabled() -> Scenario:
    s = a100_8x80()
    s.gpus = s.gpus[:2]
    for g in s.gpus:
        g.nvlink_to = [x.bus for x in s.gpus if x is not g]
    s.gpus[0].mig = [
        FakeMig("3g.40gb", 40192, "MIG-11111111-0000-4000-8000-000000000000", gi=2),
        FakeMig("2g.20gb", 19968, "MIG-22222222-0000-4000-8000-000000000000", gi=3),
    ]
    return s


def no_driver() -> Scenario:
    return Scenario(gpus=[], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)


def no_library() -> Scenario:
    return Scenario(gpus=[], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


def no_devices() -> Scenario:
    return Scenario(gpus=[])


def init_hangs() -> Scenario:
    return Scenario(gpus=[], init_hang_s=30.0)


# Host PIDs of the serving scenarios below; tests write /proc/PID/cgroup files for them.
SERVING_PIDS = {"ollama-0": 41873, "ollama-1": 41902, "ollama-2": 41958, "ollama-3": 42011}


def _serving(s: Scenario, used_mib: dict[int, list[tuple[str, int]]]) -> Scenario:
    for index, rows in used_mib.items():
        s.gpus[index].processes = [(SERVING_PIDS[name], mib * MIB) for name, mib in rows]
        s.gpus[index].used_mib = sum(mib for _, mib in rows) + 512
    return s


def replicas_serving() -> Scenario:
    """ollama-replicas on 4x A100-64GB, each replica's runner on its own GPU: Mixtral 8x7B
    Q4_0 as ollama loads it (26.4 GB of weights + KV cache: 28193 MiB)."""
    return _serving(a100_4x64(), {i: [(f"ollama-{i}", 28193)] for i in range(4)})


def replicas_misplaced() -> Scenario:
    """Replica ollama-2 (planned on GPU 2) runs on GPU 0 beside ollama-0, and GPU 2 is idle: what
    a container sees when CUDA_VISIBLE_DEVICES with host indices overrides its pinning."""
    return _serving(
        a100_4x64(),
        {
            0: [("ollama-0", 28193), ("ollama-2", 28193)],
            1: [("ollama-1", 28193)],
            3: [("ollama-3", 28193)],
        },
    )


def replicas_spread() -> Scenario:
    """Replica ollama-1 holds memory on its GPU 1 and also on GPU 3 (OLLAMA_SCHED_SPREAD with a
    container that sees every GPU); NVML cannot say how much on GPU 3 (WDDM-like None)."""
    s = replicas_serving()
    s.gpus[3].processes.append((SERVING_PIDS["ollama-1"], None))
    return s


def a5000_readings() -> Scenario:
    """The two RTX A5000 of tests/fixtures/nvidia-smi/xml/telegraf__dual_a5000-v13.xml as watch
    reads them: memory used 22437 / 17253 of 24564 MiB, 13 and 15 C, 6.52 and 13.59 W."""
    s = a5000_busy()
    for g, temp, mw in zip(s.gpus, (13, 15), (6520, 13590), strict=True):
        g.temp, g.power_mw, g.ecc_uncorrected = temp, mw, 0
    s.gpus[0].util = 37
    return s


def xid_79_mid_run() -> Scenario:
    """Four A100-64GB, Xid events supported; step 1: nothing; step 2: GPU 2 falls off the bus
    (Xid 79, then GPU_IS_LOST on every query)."""
    s = a100_4x64()
    s.steps = [lambda f: None, lambda f: f.lose(2)]
    return s


def ecc_rising() -> Scenario:
    """Eight A100-80GB with ECC; step 1: GPU 5 reports Xid 48 and 1 uncorrectable error;
    step 2: Xid 94 and 3 errors."""
    s = a100_8x80()
    for g in s.gpus:
        g.ecc_uncorrected = 0

    def first(f: FakeNvml) -> None:
        f.s.gpus[5].ecc_uncorrected = 1
        f.xid(5, 48)

    def second(f: FakeNvml) -> None:
        f.s.gpus[5].ecc_uncorrected = 3
        f.xid(5, 94)

    s.steps = [first, second]
    return s


def xid_no_events() -> Scenario:
    """Four A100-64GB whose NVML refuses Xid event registration (NOT_SUPPORTED): Xids must come
    from the kernel log."""
    s = a100_4x64()
    s.events_supported = False
    return s


SCENARIOS = {
    "a100_8x80": a100_8x80,
    "a100_4x64": a100_4x64,
    "consumer_pair": consumer_pair,
    "single_8gb": single_8gb,
    "a5000_busy": a5000_busy,
    "lost_gpu": lost_gpu,
    "mig_enabled": mig_enabled,
    "ecc_errors": ecc_errors,
    "no_driver": no_driver,
    "no_library": no_library,
    "no_devices": no_devices,
    "init_hangs": init_hangs,
    "replicas_serving": replicas_serving,
    "replicas_misplaced": replicas_misplaced,
    "replicas_spread": replicas_spread,
    "a5000_readings": a5000_readings,
    "xid_79_mid_run": xid_79_mid_run,
    "ecc_rising": ecc_rising,
    "xid_no_events": xid_no_events,
}


def old_driver() -> Scenario:
    """a100_4x64 on the R535 driver: CUDA 12.2 at most (doctor's driver-against-CUDA check)."""
    s = a100_4x64()
    s.driver, s.cuda, s.nvml = "535.183.01", 12020, "12.535.183.01"
    return s


SCENARIOS["old_driver"] = old_driver
