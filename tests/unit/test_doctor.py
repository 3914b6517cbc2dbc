"""`composegen doctor`: every check against fake engines (tests/fake_docker.py) and fake NVML
(tests/fake_nvml.py), and `up` running the fast checks first."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from composegen.cli import main
from composegen.doctor import Check, failed, failure
from composegen.doctor import engine as doc_engine
from composegen.doctor import run as doc_run
from composegen.doctor.gpu import cuda_check
from composegen.engine import docker as eng
from composegen.engine.compose import Project, load_project
from composegen.inventory import DockerEngine
from tests.fake_docker import NO_NVIDIA_DRIVER, FakeDocker
from tests.fake_nvml import FakeNvml
from tests.stack_checks import inventory_file
from tests.unit.test_cli_detect import call

Install = Callable[[str], FakeNvml]
UUIDS = [f"GPU-00a10064-0000-4000-8000-00000000000{i}" for i in range(4)]
OLLAMA = "ollama/ollama:0.12.6"
NGINX = "nginx:1.28.0"
GIB = 1024**3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stack(tmp_path: Path) -> Project:
    """ollama-replicas rendered for 4×A100-64GB: four replicas, one per GPU UUID."""
    inv = inventory_file(tmp_path, "a100_4x64")
    port = free_port()
    main(
        [
            "render",
            "--profile",
            "ollama-replicas",
            "-o",
            str(tmp_path / "s"),
            "--inventory",
            inv,
            "--set",
            f"gateway.port={port}",
        ]
    )
    return load_project(tmp_path / "s" / "docker-compose.yml", "proj")


def seams(client: FakeDocker, tmp_path: Path, hook: bool = True, **kw: Any) -> doc_run.Seams:
    dev = tmp_path / "dev"
    dev.mkdir(exist_ok=True)
    return doc_run.Seams(
        connect=lambda: client,
        find_hook=lambda: hook,
        dev_root=dev,
        token="t1",
        **kw,
    )


def by_name(checks: list[Check], name: str) -> list[Check]:
    return [c for c in checks if c.name == name]


def one(checks: list[Check], name: str) -> Check:
    found = by_name(checks, name)
    assert len(found) == 1, checks
    return found[0]


# --- engine ----------------------------------------------------------------------------------


def test_unreachable_engine_fails_and_skips_what_needs_it(stack: Project, tmp_path: Path) -> None:
    fake = FakeDocker("no-engine")
    checks = doc_run.doctor(stack, seams=seams(fake, tmp_path), inventory=None)
    engine = one(checks, "engine")
    assert engine.status == "fail"
    assert "lost the Docker engine" in engine.detail
    assert "systemctl start docker" in (engine.fix or "")
    assert not by_name(checks, "gpu-request") and not by_name(checks, "cgroup")
    assert not by_name(checks, "nvidia-runtime")
    assert failed(checks)


def test_engine_version_and_api_are_reported() -> None:
    ok = doc_engine.engine_check(DockerEngine(reachable=True, version="24.0.7", api_version="1.43"))
    assert (ok.status, ok.detail) == ("ok", "Docker 24.0.7, API 1.43")
    old = doc_engine.engine_check(
        DockerEngine(reachable=True, version="18.09.9", api_version="1.39")
    )
    assert old.status == "fail" and "API 1.40" in old.detail


def test_disk_space_against_images_and_models() -> None:
    present = [("composegen-test/ollama-stub:1", 125_829_120)]
    low = doc_engine.disk_check("/var/lib/docker", 1_610_612_736, present, [NGINX], 10240)
    assert low.status == "fail"
    assert "only 1.5 GiB free on /var/lib/docker" in low.detail
    assert "1 to pull: nginx:1.28.0" in low.detail and "docker system prune" in (low.fix or "")
    short = doc_engine.disk_check("/var/lib/docker", 8_589_934_592, present, [], 10240)
    assert short.status == "warn" and "models about 10.0 GiB" in short.detail
    fine = doc_engine.disk_check("/var/lib/docker", 82_463_372_083, present, [], 10240)
    assert fine.status == "ok" and "76.8 GiB free" in fine.detail
    unknown = doc_engine.disk_check("/var/lib/docker", None, present, [], 10240)
    assert unknown.status == "warn" and "cannot read" in unknown.detail


# --- NVIDIA runtime ------------------------------------------------------------------------------


def test_missing_hook_fails_with_the_toolkit_fix(stack: Project, tmp_path: Path) -> None:
    checks = doc_run.doctor(stack, fast=True, seams=seams(FakeDocker(), tmp_path, hook=False))
    rt = one(checks, "nvidia-runtime")
    assert rt.status == "fail"
    assert "nvidia-container-runtime-hook" in rt.detail
    assert "could not select device driver" in rt.detail
    assert "nvidia-ctk runtime configure --runtime=docker" in (rt.fix or "")


def test_hook_or_nvidia_runtime_is_enough(stack: Project, tmp_path: Path) -> None:
    hook = doc_run.doctor(stack, fast=True, seams=seams(FakeDocker(), tmp_path, hook=True))
    assert one(hook, "nvidia-runtime").detail == "GPU requests via nvidia-container-runtime-hook"
    runtime = doc_run.doctor(
        stack, fast=True, seams=seams(FakeDocker("nvidia-runtime"), tmp_path, hook=False)
    )
    assert one(runtime, "nvidia-runtime").status == "ok"
    assert "nvidia runtime" in one(runtime, "nvidia-runtime").detail


# --- systemd cgroup driver and /dev/char --------------------------------------------------------


def make_dev(root: Path, links: dict[str, str]) -> None:
    root.mkdir(exist_ok=True)
    for node in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (root / node).write_text("")
    (root / "nvidia-caps").mkdir()
    (root / "char").mkdir()
    for name, target in links.items():
        os.symlink(f"../{target}", root / "char" / name)


def test_systemd_without_dev_char_symlinks_warns(stack: Project, tmp_path: Path) -> None:
    make_dev(tmp_path / "dev", {"195:0": "nvidia0"})
    checks = doc_run.doctor(stack, fast=True, seams=seams(FakeDocker("systemd-cgroup"), tmp_path))
    cg = one(checks, "cgroup")
    assert cg.status == "warn"
    assert "nvidia-uvm, nvidia1, nvidiactl" in cg.detail
    assert "systemctl daemon-reload" in cg.detail and "nvidia-container-toolkit#48" in cg.detail
    assert cg.fix == "sudo nvidia-ctk system create-dev-char-symlinks --create-all"
    assert not failed([cg])  # a warning does not fail doctor


def test_systemd_with_the_symlinks_is_ok(stack: Project, tmp_path: Path) -> None:
    make_dev(
        tmp_path / "dev",
        {"195:0": "nvidia0", "195:1": "nvidia1", "195:255": "nvidiactl", "508:0": "nvidia-uvm"},
    )
    checks = doc_run.doctor(stack, fast=True, seams=seams(FakeDocker("systemd-cgroup"), tmp_path))
    assert one(checks, "cgroup").status == "ok"


def test_cgroupfs_driver_is_ok_without_symlinks(stack: Project, tmp_path: Path) -> None:
    make_dev(tmp_path / "dev", {})
    checks = doc_run.doctor(stack, fast=True, seams=seams(FakeDocker(), tmp_path))
    assert one(checks, "cgroup").status == "ok"
    assert "cgroupfs" in one(checks, "cgroup").detail


# --- ports ------------------------------------------------------------------------------------


@pytest.fixture
def taken(stack: Project) -> Iterator[int]:
    """The stack's gateway port, held by a plain listening socket."""
    port = next(p.host_port for s in stack.services for p in s.ports if p.host_port)
    assert port is not None
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        yield port


def test_port_taken_by_another_process_fails(stack: Project, tmp_path: Path, taken: int) -> None:
    checks = doc_run.doctor(stack, fast=True, seams=seams(FakeDocker(), tmp_path))
    port = one(checks, "ports")
    assert port.status == "fail"
    assert f"gateway: 127.0.0.1:{taken}/tcp is taken (Address already in use)" in port.detail
    assert f"sport = :{taken}" in (port.fix or "")


def test_port_held_by_the_stacks_own_container_is_ok(
    stack: Project, tmp_path: Path, taken: int
) -> None:
    fake = FakeDocker()
    c = fake.add(stack.name, "gateway")
    c.attrs["HostConfig"]["PortBindings"] = {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(taken)}]
    }
    checks = doc_run.doctor(stack, fast=True, seams=seams(fake, tmp_path))
    assert one(checks, "ports").status == "ok"
    assert f"127.0.0.1:{taken}/tcp (this stack's)" in one(checks, "ports").detail


def test_port_held_while_the_stacks_gateway_restarts_is_ok(
    stack: Project, tmp_path: Path, taken: int
) -> None:
    # a failed `up` leaves the gateway restarting: the list shows it without ports, while its
    # proxy holds the port between two starts (the drill "container killed while up waits")
    fake = FakeDocker()
    fake.add(stack.name, "gateway", status="restarting")
    checks = doc_run.doctor(stack, fast=True, seams=seams(fake, tmp_path))
    assert one(checks, "ports").status == "ok"
    assert f"127.0.0.1:{taken}/tcp (this stack's)" in one(checks, "ports").detail


def test_port_taken_while_another_service_of_the_stack_exists_still_fails(
    stack: Project, tmp_path: Path, taken: int
) -> None:
    fake = FakeDocker()
    others = [s.name for s in stack.services if s.name != "gateway"]
    fake.add(stack.name, others[0], status="exited")
    checks = doc_run.doctor(stack, fast=True, seams=seams(fake, tmp_path))
    assert one(checks, "ports").status == "fail"


def test_free_ports_are_ok(stack: Project, tmp_path: Path) -> None:
    checks = doc_run.doctor(stack, fast=True, seams=seams(FakeDocker(), tmp_path))
    assert one(checks, "ports").detail.startswith("1 published port(s) free: 127.0.0.1:")


# --- a GPU request per planned GPU --------------------------------------------------------------


def full(stack: Project, tmp_path: Path, fake: FakeDocker, nvml: str = "a100_4x64") -> list[Check]:
    inv = inventory_file(tmp_path, nvml)
    return doc_run.doctor(stack, inventory=inv, seams=seams(fake, tmp_path))


def test_one_throwaway_container_per_planned_gpu_removed_after(
    stack: Project, tmp_path: Path
) -> None:
    fake = FakeDocker()
    made: list[dict[str, Any]] = []
    create = fake.containers.create

    def spy(image: str, **kw: Any) -> Any:
        made.append({"image": image, **kw})
        return create(image, **kw)

    fake.containers.create = spy  # type: ignore[method-assign]
    checks = full(stack, tmp_path, fake)
    req = by_name(checks, "gpu-request")
    assert [c.status for c in req] == ["ok"] * 4
    # the stack's own image, nvidia-smi -L, one device request for exactly that UUID, labelled
    assert sorted(r["device_requests"][0]["DeviceIDs"][0] for r in made) == UUIDS
    for r in made:
        assert r["image"] == OLLAMA
        assert (r["entrypoint"], r["command"]) == (["nvidia-smi"], ["-L"])
        assert r["labels"][doc_run.LABEL_DOCTOR] == "t1"
        assert r["device_requests"][0]["Driver"] == "nvidia"
    for c, uuid in zip(req, UUIDS, strict=True):
        assert c.detail.startswith(f"GPU {uuid} (ollama-") and "nvidia-smi -L lists it" in c.detail
    created = [e for e in fake.calls if e.startswith("create proj-doctor-")]
    removed = [e for e in fake.calls if e.startswith("remove proj-doctor-")]
    assert len(created) == 4 and len(removed) == 4
    assert fake.containers_by_id == {}
    assert not failed(checks)


def test_could_not_select_device_driver_fails_with_the_fix(stack: Project, tmp_path: Path) -> None:
    fake = FakeDocker("no-nvidia-driver")
    req = by_name(full(stack, tmp_path, fake), "gpu-request")
    assert [c.status for c in req] == ["fail"] * 4
    assert NO_NVIDIA_DRIVER in req[0].detail
    assert "install the NVIDIA Container Toolkit and restart dockerd" in (req[0].fix or "")
    assert fake.containers_by_id == {}  # created, refused at start, removed


def test_one_refused_gpu_fails_alone(stack: Project, tmp_path: Path) -> None:
    fake = FakeDocker()
    fake.gpu_refused.add(UUIDS[2])
    req = by_name(full(stack, tmp_path, fake), "gpu-request")
    assert [c.status for c in req] == ["ok", "ok", "fail", "ok"]
    assert f"nvidia-container-cli: device error: {UUIDS[2]}: unknown device" in req[2].detail


def test_failing_throwaway_container_fails(stack: Project, tmp_path: Path) -> None:
    fake = FakeDocker("gpu-probe-fails")
    req = by_name(full(stack, tmp_path, fake), "gpu-request")
    assert [c.status for c in req] == ["fail"] * 4
    assert "Failed to initialize NVML: Unknown Error" in req[0].detail
    assert fake.containers_by_id == {}


def test_image_without_nvidia_smi_runs_true(stack: Project, tmp_path: Path) -> None:
    fake = FakeDocker()
    fake.no_smi_images.add(OLLAMA)
    req = by_name(full(stack, tmp_path, fake), "gpu-request")
    assert [c.status for c in req] == ["ok"] * 4
    assert "no nvidia-smi in it" in req[0].detail
    assert fake.containers_by_id == {}


def test_missing_image_is_a_warning_not_a_pull(stack: Project, tmp_path: Path) -> None:
    fake = FakeDocker()
    fake.missing_images.add(OLLAMA)
    checks = full(stack, tmp_path, fake)
    req = by_name(checks, "gpu-request")
    assert [c.status for c in req] == ["warn"] * 4
    assert not [e for e in fake.calls if e.startswith(("pull", "create"))]
    assert "1 to pull: ollama/ollama:0.12.6" in one(checks, "disk").detail


def test_interrupt_removes_the_throwaway_containers(
    stack: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDocker()

    def interrupted(fn: Any, items: Any, label: Any) -> Any:
        fake.containers.create(OLLAMA, name="proj-doctor-x-t1", labels={doc_run.LABEL_DOCTOR: "t1"})
        raise KeyboardInterrupt

    monkeypatch.setattr(eng, "run_parallel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        full(stack, tmp_path, fake)
    assert fake.containers_by_id == {}
    assert "remove proj-doctor-x-t1" in fake.calls


def test_fast_checks_start_no_container(stack: Project, tmp_path: Path) -> None:
    fake = FakeDocker()
    checks = doc_run.doctor(stack, fast=True, seams=seams(fake, tmp_path))
    assert [c.name for c in checks] == ["engine", "nvidia-runtime", "cgroup", "ports", "drift"]
    assert not [e for e in fake.calls if e.startswith("create")]


# --- driver against CUDA -----------------------------------------------------------------------


def test_image_newer_than_the_driver_fails(stack: Project, tmp_path: Path) -> None:
    fake = FakeDocker()
    fake.image_config[OLLAMA] = {
        "Env": ["NVIDIA_REQUIRE_CUDA=cuda>=12.8 brand=tesla,driver>=470,driver<471"]
    }
    cuda = one(full(stack, tmp_path, fake, nvml="old_driver"), "cuda")
    assert cuda.status == "fail"
    assert "the driver supports CUDA 12.2" in cuda.detail
    assert "ollama/ollama:0.12.6 needs CUDA 12.8 (NVIDIA_REQUIRE_CUDA)" in cuda.detail


def test_image_within_the_driver_is_ok(stack: Project, tmp_path: Path) -> None:
    fake = FakeDocker()
    fake.image_config[OLLAMA] = {"Labels": {"com.nvidia.cuda.version": "12.2.2"}}
    cuda = one(full(stack, tmp_path, fake, nvml="old_driver"), "cuda")
    assert (cuda.status, cuda.detail) == (
        "ok",
        "driver CUDA 12.2 >= ollama/ollama:0.12.6 CUDA 12.2.2",
    )


def test_cuda_version_env_and_unknown_driver() -> None:
    attrs = {"Config": {"Env": ["CUDA_VERSION=12.4.1"]}}
    assert cuda_check({OLLAMA: attrs}, "12.2", None).status == "fail"
    unknown = cuda_check({OLLAMA: attrs}, None, "no NVIDIA driver")
    assert unknown.status == "warn" and "no NVIDIA driver" in unknown.detail
    assert cuda_check({OLLAMA: {"Config": {"Env": []}}}, "12.2", None).status == "ok"


# --- inventory drift --------------------------------------------------------------------------


def test_lost_gpus_fail_the_drift_check(
    stack: Project, tmp_path: Path, nvml_scenario: Install
) -> None:
    nvml_scenario("lost_gpu")
    checks = doc_run.doctor(stack, fast=True, seams=seams(FakeDocker(), tmp_path))
    drift = one(checks, "drift")
    assert drift.status == "fail"
    assert "2 of the plan's 4 GPU(s) lost since render" in drift.detail
    assert f"GPU 2 {UUIDS[2]}: gone" in drift.detail
    assert f"GPU 3 {UUIDS[3]}: gone" in drift.detail or f"GPU 3 {UUIDS[3]}: lost" in drift.detail
    assert "composegen fallback --auto" in (drift.fix or "")


def test_healthy_plan_gpus_pass_the_drift_check(
    stack: Project, tmp_path: Path, nvml_scenario: Install
) -> None:
    nvml_scenario("a100_4x64")
    drift = one(doc_run.doctor(stack, fast=True, seams=seams(FakeDocker(), tmp_path)), "drift")
    assert (drift.status, drift.detail) == ("ok", "the plan's 4 GPU(s) are present and healthy")


def test_drift_from_an_inventory_file_and_without_gpus(
    stack: Project, tmp_path: Path, nvml_scenario: Install
) -> None:
    inv = inventory_file(tmp_path, "lost_gpu")
    checks = doc_run.doctor(stack, fast=True, inventory=inv, seams=seams(FakeDocker(), tmp_path))
    assert one(checks, "drift").status == "fail"
    nvml_scenario("no_driver")
    blind = one(doc_run.doctor(stack, fast=True, seams=seams(FakeDocker(), tmp_path)), "drift")
    assert blind.status == "warn" and "cannot see the GPUs now" in blind.detail


def test_drift_without_render_json_warns(stack: Project, tmp_path: Path) -> None:
    (stack.directory / ".composegen" / "render.json").unlink()
    inv = inventory_file(tmp_path, "a100_4x64")
    checks = doc_run.doctor(stack, fast=True, inventory=inv, seams=seams(FakeDocker(), tmp_path))
    assert one(checks, "drift").status == "warn"
    assert "no .composegen/render.json" in one(checks, "drift").detail


# --- the commands -----------------------------------------------------------------------------


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    fake = FakeDocker()
    monkeypatch.setattr(eng, "connect", lambda timeout_s=30.0: fake)
    monkeypatch.setattr(doc_run.Seams, "__init__", _seams_init(fake))
    return fake


def _seams_init(fake: FakeDocker) -> Any:
    real = doc_run.Seams.__init__

    def init(self: doc_run.Seams, **kw: Any) -> None:
        real(self, **{"connect": lambda: fake, "find_hook": lambda: True, **kw})

    return init


def test_doctor_json_and_exit_codes(
    stack: Project, tmp_path: Path, engine: FakeDocker, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = inventory_file(tmp_path, "a100_4x64")
    code, out, _ = call(
        ["doctor", "-C", str(stack.directory), "--json", "--inventory", inv], capsys
    )
    doc = json.loads(out)
    assert code == 0, out
    assert doc["ok"] is True and doc["counts"]["fail"] == 0
    assert len([c for c in doc["checks"] if c["name"] == "gpu-request"]) == 4
    engine.gpu_refused.add(UUIDS[0])
    code, out, _ = call(
        ["doctor", "-C", str(stack.directory), "--json", "--inventory", inv], capsys
    )
    assert code == 1 and json.loads(out)["counts"]["fail"] == 1
    code, _, err = call(["doctor", "-C", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and err.startswith("composegen: error: ") and "Traceback" not in err


def test_up_refuses_on_a_failed_fast_check_and_no_doctor_goes_on(
    stack: Project,
    tmp_path: Path,
    engine: FakeDocker,
    taken: int,
    capsys: pytest.CaptureFixture[str],
    nvml_scenario: Install,
) -> None:
    nvml_scenario("a100_4x64")
    code, _, err = call(["up", "-C", str(stack.directory), "--no-models", "--no-wait"], capsys)
    assert code == 1
    assert err.startswith("composegen: error: doctor: 1 check(s) failed: ports: gateway: "), err
    assert f"127.0.0.1:{taken}/tcp is taken" in err and "--no-doctor" in err
    assert engine.journal == []  # nothing created
    code, _, err = call(
        ["up", "-C", str(stack.directory), "--no-models", "--no-wait", "--no-doctor"], capsys
    )
    assert "doctor" not in err
    assert engine.index("create", "gateway") >= 0  # up went on to the engine
    code, _, err = call(["up", "-C", str(stack.directory), "--no-doctr"], capsys)
    assert code == 2


def test_failure_names_every_failed_check_and_its_fix() -> None:
    checks = [
        Check("ports", "fail", "gateway: 127.0.0.1:8080/tcp is taken", "free it"),
        Check("cgroup", "warn", "systemd", "links"),
        Check("drift", "fail", "GPU 2 gone", "fallback"),
    ]
    err = failure(checks)
    assert err is not None
    assert err.message == (
        "doctor: 2 check(s) failed: ports: gateway: 127.0.0.1:8080/tcp is taken; drift: GPU 2 gone"
    )
    assert err.hint == "free it / fallback; or skip the checks with --no-doctor"
    assert failure(checks[1:2]) is None


def test_doctor_table_on_a_terminal(
    stack: Project, tmp_path: Path, engine: FakeDocker, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = inventory_file(tmp_path, "lost_gpu")
    code, out, _ = call(["doctor", "-C", str(stack.directory), "--inventory", inv], capsys)
    assert code == 1
    assert "composegen doctor ollama-replicas" in out
    for name in ("engine", "disk", "nvidia-runtime", "gpu-request", "ports", "cuda", "drift"):
        assert name in out
    assert "2 of the plan's 4 GPU(s) lost since render" in out
