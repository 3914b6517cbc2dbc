"""The `monitor` Compose profile and monitoring/ (issue 12 item 4): Prometheus scraping `watch
--metrics` on the host, Grafana with a dashboard over watch's metric names; both off by default,
published on 127.0.0.1 only, read-only configuration, no secret, and left out by composegen's
own loader unless the profile is active."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from composegen.engine.compose import ComposeFileError, load_project
from composegen.watch.metrics import DEFAULT_PORT, Metrics
from composegen.watch.types import (
    ContainerSignal,
    Event,
    GpuSignal,
    RequestSignal,
    ResidencySignal,
    Snapshot,
    StackInfo,
)
from tests.stack_checks import (
    COMPOSE,
    DOCKER_COMPOSE,
    PROFILES,
    REFERENCE,
    StackCache,
    need_docker_compose,
    schema_errors,
    services,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec" / "compose-spec__compose-spec.json"
PROM = "monitoring/prometheus/prometheus.yml"
DATASOURCE = "monitoring/grafana/provisioning/datasources/composegen.yml"
PROVIDER = "monitoring/grafana/provisioning/dashboards/composegen.yml"
DASHBOARD = "monitoring/grafana/dashboards/composegen-watch.json"
MONITORING = (PROM, DATASOURCE, PROVIDER, DASHBOARD)
API_KEY = "7c4e1a9b3f5d2e8a0b6c4d2e1f3a5b7c"
# the series the contract names (watch-contract.md), as exposed (counters end in _total)
CONTRACT = (
    "composegen_gpu_temperature_celsius",
    "composegen_gpu_memory_used_bytes",
    "composegen_gpu_memory_total_bytes",
    "composegen_gpu_utilization_ratio",
    "composegen_gpu_power_watts",
    "composegen_gpu_xid_events_total",
    "composegen_service_up",
    "composegen_service_healthy",
    "composegen_service_restarts",
    "composegen_gateway_requests_total",
    "composegen_gateway_errors_total",
    "composegen_gateway_request_duration_seconds_bucket",
    "composegen_model_gpu_fraction",
    "composegen_stack_mode",
    "composegen_heal_actions_total",
)

each_profile = pytest.mark.parametrize("profile", PROFILES)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> StackCache:
    return StackCache(tmp_path_factory.mktemp("monitoring"))


def monitor(stacks: StackCache, profile: str, **kw: Any) -> dict[str, dict[str, Any]]:
    return services(stacks.get(profile, REFERENCE, **kw).compose, "monitor")


@each_profile
def test_the_monitor_profile_is_off_by_default(stacks: StackCache, profile: str) -> None:
    data = stacks.get(profile, REFERENCE).compose
    mon = services(data, "monitor")
    assert sorted(mon) == ["grafana", "prometheus"]
    for name, block in mon.items():
        assert block["profiles"] == ["monitor"], name
    # nothing else is in a profile: the stack itself starts as before
    assert not [n for n, b in data["services"].items() if b.get("profiles") and n not in mon]
    assert mon["grafana"]["depends_on"] == {"prometheus": {"condition": "service_started"}}


@each_profile
@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_monitor_services_are_hardened(stacks: StackCache, profile: str, bind: str) -> None:
    stack = stacks.get(profile, REFERENCE, bind=bind)
    data = stack.compose
    assert data["networks"]["monitor"] == {}  # not internal: Prometheus must reach the host
    assert data["networks"]["backend"] == {"internal": True}
    expected_ports = {"prometheus": ["127.0.0.1:9090:9090"], "grafana": ["127.0.0.1:3000:3000"]}
    for name, block in services(data, "monitor").items():
        where = f"{stack.key.label}: {name}"
        # loopback only, whatever --bind the gateway got
        assert block["ports"] == expected_ports[name], where
        # on its own network: never on backend, where the model servers have no auth
        assert block["networks"] == ["monitor"], where
        assert block["security_opt"] == ["no-new-privileges:true"], where
        assert block["restart"] == "unless-stopped", where
        assert block["healthcheck"]["test"][0] == "CMD", where
        assert not block.get("privileged") and "network_mode" not in block, where
        assert block["deploy"]["resources"]["limits"]["memory"], where
        # not a service of the profile: code that maps io.composegen.service to one must not
        # meet it
        assert "io.composegen.service" not in block["labels"], where
        assert block["labels"]["io.composegen.monitor"] == name, where
        for vol in block["volumes"]:
            assert "docker.sock" not in vol, where
            source = vol.split(":", 1)[0]
            if source.startswith("./"):
                assert vol.endswith(":ro"), f"{where}: config mounted writable: {vol}"
            else:
                assert source in data["volumes"], f"{where}: {source} not declared"


@each_profile
def test_images_default_to_pinned_tags_and_follow_the_profile(
    stacks: StackCache, profile: str
) -> None:
    mon = monitor(stacks, profile)
    prof = stacks.get(profile, REFERENCE).profile
    assert mon["prometheus"]["image"] == prof.images["prometheus"] == "prom/prometheus:v3.5.0"
    assert mon["grafana"]["image"] == prof.images["grafana"] == "grafana/grafana:12.2.0"


def test_an_image_override_reaches_the_service(tmp_path: Path) -> None:
    from composegen import app, profiles

    built = app.build(
        "ollama-pool",
        reference=True,
        overrides=profiles.Overrides(images=("grafana=registry.local/grafana:12.2.0-ubuntu",)),
    )
    data = yaml.safe_load(next(f.text for f in built.files if f.path == COMPOSE))
    assert data["services"]["grafana"]["image"] == "registry.local/grafana:12.2.0-ubuntu"
    assert data["services"]["prometheus"]["image"] == "prom/prometheus:v3.5.0"


def test_defaults_when_the_profile_has_no_keys() -> None:
    import dataclasses

    from composegen import monitoring, profiles

    prof = profiles.load("zenglow-personas")
    bare = dataclasses.replace(
        prof, images={k: v for k, v in prof.images.items() if k not in ("prometheus", "grafana")}
    )
    mon = monitoring.services(bare)
    assert mon["prometheus"]["image"] == "prom/prometheus:v3.5.0"
    assert mon["grafana"]["image"] == "grafana/grafana:12.2.0"


# --- monitoring/ --------------------------------------------------------------------------------


@each_profile
def test_prometheus_scrapes_watch_on_the_host(stacks: StackCache, profile: str) -> None:
    stack = stacks.get(profile, REFERENCE)
    conf = stack.yaml(PROM)
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    (target,) = jobs["composegen-watch"]["static_configs"][0]["targets"]
    host, port = target.rsplit(":", 1)
    assert int(port) == DEFAULT_PORT  # watch --metrics' default port
    prom = services(stack.compose, "monitor")["prometheus"]
    assert f"{host}:host-gateway" in prom["extra_hosts"]
    # the config file Prometheus is told to read is the one rendered, through its mount
    (flag,) = [a for a in prom["command"] if a.startswith("--config.file=")]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    conf_dir, _, conf_name = flag.removeprefix("--config.file=").rpartition("/")
    assert f"{mounted[conf_dir].removeprefix('./')}/{conf_name}" == PROM
    assert conf["global"]["scrape_interval"] == "15s"


@each_profile
def test_grafana_provisioning_points_at_prometheus_and_the_dashboard(
    stacks: StackCache, profile: str
) -> None:
    stack = stacks.get(profile, REFERENCE)
    mon = services(stack.compose, "monitor")
    (ds,) = stack.yaml(DATASOURCE)["datasources"]
    port = mon["prometheus"]["command"][-1].rsplit(":", 1)[1]
    assert ds["url"] == f"http://prometheus:{port}" and ds["type"] == "prometheus"
    (provider,) = stack.yaml(PROVIDER)["providers"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in mon["grafana"]["volumes"]}
    assert mounts[provider["options"]["path"]] == "./" + DASHBOARD.rsplit("/", 1)[0]
    assert mounts["/etc/grafana/provisioning/datasources"] == "./" + DATASOURCE.rsplit("/", 1)[0]
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./" + PROVIDER.rsplit("/", 1)[0]
    board = json.loads(stack.text(DASHBOARD))
    uids = {t["datasource"]["uid"] for p in board["panels"] for t in p["targets"]}
    assert uids == {ds["uid"]}


def _full_exposition() -> set[str]:
    """The sample names watch really exposes, from a Metrics fed one of everything."""
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics("rag-a100")
    stack = StackInfo("rag-a100", planned={"llm": (0,)}, routes={"llm": "llm"})
    m.observe(
        Snapshot(
            1_795_000_000.0,
            stack,
            containers=(ContainerSignal("llm", "c", "running", "healthy", 1, False, None),),
            gpus=(
                GpuSignal(
                    0,
                    "GPU-5b1a0b7e-2f0c-4a47-9f0e-8c0d1b2a3c4d",
                    "NVIDIA A100-SXM4-80GB",
                    temperature_c=61,
                    memory_used_mib=40960,
                    memory_total_mib=81920,
                    utilization_pct=55,
                    power_w=250.5,
                    xids=(79,),
                ),
            ),
            residency=(ResidencySignal("ollama", "llama3.2:3b", 1.0),),
            requests=(RequestSignal(1_794_999_999.0, "llm", "172.20.0.6:8000", 200, "200", 0.4),),
        )
    )
    m.record_events([Event(1.0, "info", "heal", "recreate llm", "llm", value="recreate")])
    return {s.name for f in text_string_to_metric_families(m.text()) for s in f.samples}


def test_the_dashboard_queries_only_series_watch_exposes(stacks: StackCache) -> None:
    board = json.loads(stacks.get("rag-a100", REFERENCE).text(DASHBOARD))
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bcomposegen_[a-z_]+", e)}
    exposed = _full_exposition()
    assert used <= exposed, f"the dashboard queries series watch never exposes: {used - exposed}"
    assert set(CONTRACT) <= exposed
    # every series of the contract is on the dashboard
    assert set(CONTRACT) <= used, f"not on the dashboard: {set(CONTRACT) - used}"
    for e in exprs:
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
        assert 'stack="$stack"' in e, f"{e}: not filtered by the stack variable"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["uid"] == "composegen-watch"
    (var,) = board["templating"]["list"]
    assert var["name"] == "stack" and var["current"]["value"] == "rag-a100"


def test_thresholds_on_the_dashboard_are_the_seeds(stacks: StackCache) -> None:
    board = json.loads(stacks.get("rag-a100", REFERENCE).text(DASHBOARD))
    steps = {
        p["title"]: [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]
        for p in board["panels"]
    }
    assert steps["GPU memory used"] == [85, 95]  # RAG 8xA100 alert at 85 %, critical at 95 %
    assert steps["GPU temperature"] == [83]  # RAG 8xA100 limit 83 C


@each_profile
def test_no_secret_in_monitoring(stacks: StackCache, profile: str) -> None:
    stack = stacks.get(profile, REFERENCE, sets=(f"gateway.api_key={API_KEY}",))
    for path in MONITORING:
        assert API_KEY not in stack.text(path), path
        assert stack.files[path].mode == 0o644, path
    assert API_KEY not in json.dumps(services(stack.compose, "monitor"))
    assert "GF_SECURITY_ADMIN_PASSWORD" not in stack.text(COMPOSE)


def test_written_stack_has_what_the_mounts_name(stacks: StackCache) -> None:
    stack = stacks.get("rma-shared", REFERENCE)
    out = stacks.written(stack)
    for block in services(stack.compose, "monitor").values():
        for vol in block["volumes"]:
            source = vol.split(":", 1)[0]
            if source.startswith("./"):
                assert (out / source).is_dir(), f"{source} missing in the written stack"
    for path in MONITORING:
        assert stat.S_IMODE((out / path).stat().st_mode) == 0o644


# --- Compose and composegen read it -------------------------------------------------------------


def test_schema_checks_profiles(stacks: StackCache) -> None:
    data = json.loads(json.dumps(stacks.get("rag-a100", REFERENCE).compose))
    assert schema_errors(str(COMPOSE_SCHEMA), data) == []
    data["services"]["grafana"]["profiles"] = "monitor"  # a string, not a list
    assert any("profiles" in e for e in schema_errors(str(COMPOSE_SCHEMA), data))


@pytest.mark.parametrize("active", ["", "monitor"])
def test_docker_compose_accepts_the_profile(stacks: StackCache, active: str) -> None:
    need_docker_compose()
    out = stacks.written(stacks.get("zenglow-personas", REFERENCE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env["COMPOSE_PROFILES"] = active
    done = subprocess.run(
        [DOCKER_COMPOSE, "config"], cwd=out, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = yaml.safe_load(done.stdout)
    assert seen["services"]["prometheus"]["extra_hosts"] == ["host.docker.internal:host-gateway"]
    assert seen["services"]["grafana"]["profiles"] == ["monitor"]


def test_composegen_loader_leaves_the_profile_out(stacks: StackCache) -> None:
    stack = stacks.get("rag-a100", REFERENCE)
    out = stacks.written(stack)
    project = load_project(out / COMPOSE, profiles=())
    names = {s.name for s in project.services}
    assert names == set(services(stack.compose))
    assert "prometheus" not in names and "grafana" not in names
    assert project.inactive == ("grafana", "prometheus")
    assert "monitor" not in {n.name for n in project.networks}
    assert not {"grafana-data", "prometheus-data"} & {v.name for v in project.volumes}
    on = load_project(out / COMPOSE, profiles=("monitor",))
    assert {s.name for s in on.services} == names | {"prometheus", "grafana"}
    assert on.service("prometheus").extra["extra_hosts"] == ["host.docker.internal:host-gateway"]
    assert on.service("grafana").ports[0].host_ip == "127.0.0.1"


def test_composegen_loader_reads_compose_profiles(
    stacks: StackCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = stacks.written(stacks.get("ollama-pool", REFERENCE))
    monkeypatch.setenv("COMPOSE_PROFILES", "monitor")
    assert "grafana" in {s.name for s in load_project(out / COMPOSE).services}
    monkeypatch.setenv("COMPOSE_PROFILES", "other")
    assert "grafana" not in {s.name for s in load_project(out / COMPOSE).services}
    monkeypatch.setenv("COMPOSE_PROFILES", "monitor;rm -rf")
    with pytest.raises(ComposeFileError, match="COMPOSE_PROFILES: 'monitor;rm -rf' is not a"):
        load_project(out / COMPOSE)
