"""Pure: the `monitor` Compose profile and the files under monitoring/ (render side).

Prometheus scrapes `composegen watch --metrics` on the host; Grafana shows the stack's
dashboard over the metric names of watch/metrics.py. Both services carry
`profiles: [monitor]`, so neither Compose nor composegen's loader starts them unless the profile
is active (`docker compose --profile monitor up -d`, or COMPOSE_PROFILES=monitor). They publish
on 127.0.0.1 only, mount their configuration read-only and never the Docker socket, and the
files hold no secret.
"""

from __future__ import annotations

import json
from typing import Any

from composegen.files import OutFile
from composegen.profiles import Profile

PROFILE = "monitor"
NETWORK = "monitor"
DIR = "monitoring"
# pinned defaults, used when the profile's images map has no prometheus / grafana key
DEFAULT_IMAGES = {
    "prometheus": "prom/prometheus:v3.5.0",  # the 3.5 long-term-support release
    "grafana": "grafana/grafana:12.2.0",
}
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
WATCH_PORT = 9464  # `composegen watch --metrics` default port
# the host as the Prometheus container reaches it (extra_hosts: host-gateway, Docker 20.10+)
HOST_ALIAS = "host.docker.internal"
DATASOURCE_UID = "composegen-prometheus"
DASHBOARD_UID = "composegen-watch"
PROM_CONF_DIR = "/etc/prometheus/composegen"
DASHBOARDS_DIR = "/etc/composegen/dashboards"

PROMETHEUS_YML = f"{DIR}/prometheus/prometheus.yml"
DATASOURCE_YML = f"{DIR}/grafana/provisioning/datasources/composegen.yml"
PROVIDER_YML = f"{DIR}/grafana/provisioning/dashboards/composegen.yml"
DASHBOARD_JSON = f"{DIR}/grafana/dashboards/composegen-watch.json"


def image(prof: Profile, key: str) -> str:
    return prof.images.get(key) or DEFAULT_IMAGES[key]


def _common(prof: Profile, name: str) -> dict[str, Any]:
    return {
        # not io.composegen.service: that label names a service of the profile
        "labels": {
            "io.composegen.profile": prof.name,
            "io.composegen.monitor": name,
            "io.composegen.mode": PROFILE,
        },
        "networks": [NETWORK],
        "restart": "unless-stopped",
        "security_opt": ["no-new-privileges:true"],
        "stop_grace_period": "30s",
    }


def _health(url: str) -> dict[str, Any]:
    # both images are busybox / Alpine based: wget is there, curl is not in the Prometheus one
    return {
        "test": ["CMD", "wget", "-q", "-O", "/dev/null", url],
        "interval": "30s",
        "timeout": "5s",
        "retries": 3,
        "start_period": "20s",
    }


def _limits(memory_mib: int, cpus: str) -> dict[str, Any]:
    return {"resources": {"limits": {"cpus": cpus, "memory": f"{memory_mib}M"}}}


def services(prof: Profile) -> dict[str, Any]:
    """The `prometheus` and `grafana` services of the monitor profile."""
    prom = {
        "image": image(prof, "prometheus"),
        "profiles": [PROFILE],
        "command": [
            f"--config.file={PROM_CONF_DIR}/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            "--storage.tsdb.retention.time=15d",
            f"--web.listen-address=:{PROMETHEUS_PORT}",
        ],
        "ports": [f"127.0.0.1:{PROMETHEUS_PORT}:{PROMETHEUS_PORT}"],
        # the directory, not the file: a re-render replaces the file by rename
        "volumes": [f"./{DIR}/prometheus:{PROM_CONF_DIR}:ro", "prometheus-data:/prometheus"],
        "extra_hosts": [f"{HOST_ALIAS}:host-gateway"],
        "healthcheck": _health(f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready"),
        **_common(prof, "prometheus"),
        "deploy": _limits(1024, "1"),
    }
    graf = {
        "image": image(prof, "grafana"),
        "profiles": [PROFILE],
        "environment": {
            "GF_SERVER_HTTP_PORT": str(GRAFANA_PORT),
            # the dashboard is readable without a login on 127.0.0.1; the admin account keeps
            # Grafana's own first-login password change
            "GF_AUTH_ANONYMOUS_ENABLED": "true",
            "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
            "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
            "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": f"{DASHBOARDS_DIR}/composegen-watch.json",
        },
        "ports": [f"127.0.0.1:{GRAFANA_PORT}:{GRAFANA_PORT}"],
        "volumes": [
            f"./{DIR}/grafana/provisioning/datasources:/etc/grafana/provisioning/datasources:ro",
            f"./{DIR}/grafana/provisioning/dashboards:/etc/grafana/provisioning/dashboards:ro",
            f"./{DIR}/grafana/dashboards:{DASHBOARDS_DIR}:ro",
            "grafana-data:/var/lib/grafana",
        ],
        "depends_on": {"prometheus": {"condition": "service_started"}},
        "healthcheck": _health(f"http://127.0.0.1:{GRAFANA_PORT}/api/health"),
        **_common(prof, "grafana"),
        "deploy": _limits(512, "1"),
    }
    return {"prometheus": prom, "grafana": graf}


def volumes(prof: Profile) -> dict[str, Any]:
    return {
        n: {"labels": {"io.composegen.profile": prof.name}}
        for n in ("grafana-data", "prometheus-data")
    }


def add_to_compose(prof: Profile, compose: dict[str, Any]) -> dict[str, Any]:
    """The main compose data with the monitor profile added (its own network and volumes)."""
    out = dict(compose)
    out["services"] = {**compose["services"], **services(prof)}
    out["networks"] = {**compose.get("networks", {}), NETWORK: {}}
    out["volumes"] = {**compose.get("volumes", {}), **volumes(prof)}
    return out


# --- monitoring/ ------------------------------------------------------------------------------


def prometheus_config(prof: Profile) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "scrape_configs": [
            {
                "job_name": "composegen-watch",
                # `composegen watch --metrics ADDR:9464` on the host, on an address the
                # container reaches (host.docker.internal = the docker0 bridge address)
                "static_configs": [{"targets": [f"{HOST_ALIAS}:{WATCH_PORT}"]}],
            },
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{PROMETHEUS_PORT}"]}],
            },
        ],
    }


def datasource_config() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": DATASOURCE_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": f"http://prometheus:{PROMETHEUS_PORT}",
                "isDefault": True,
                "editable": False,
            }
        ],
    }


def provider_config() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "composegen",
                "folder": "composegen",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "options": {"path": DASHBOARDS_DIR},
            }
        ],
    }


S = '{stack="$stack"}'
# (title, unit, [(PromQL, legend)], panel type, thresholds)
PANELS: list[tuple[str, str, list[tuple[str, str]], str, list[float]]] = [
    ("Stack mode", "none", [(f"composegen_stack_mode{S} == 1", "{{mode}}")], "stat", []),
    (
        "Heal actions (1h)",
        "none",
        [(f"increase(composegen_heal_actions_total{S}[1h])", "{{action}} {{result}}")],
        "stat",
        [],
    ),
    (
        "GPU memory used",
        "percent",
        [
            (
                f"100 * composegen_gpu_memory_used_bytes{S} / composegen_gpu_memory_total_bytes{S}",
                "GPU {{gpu_index}}",
            )
        ],
        "timeseries",
        [85, 95],
    ),
    (
        "GPU temperature",
        "celsius",
        [(f"composegen_gpu_temperature_celsius{S}", "GPU {{gpu_index}}")],
        "timeseries",
        [83],
    ),
    (
        "GPU utilisation",
        "percentunit",
        [(f"composegen_gpu_utilization_ratio{S}", "GPU {{gpu_index}}")],
        "timeseries",
        [],
    ),
    (
        "GPU power",
        "watt",
        [(f"composegen_gpu_power_watts{S}", "GPU {{gpu_index}}")],
        "timeseries",
        [],
    ),
    (
        "Xid events (5m)",
        "none",
        [(f"increase(composegen_gpu_xid_events_total{S}[5m])", "GPU {{gpu_index}}")],
        "timeseries",
        [1],
    ),
    (
        "Services up / healthy",
        "none",
        [
            (f"composegen_service_up{S}", "{{service}} up"),
            (f"composegen_service_healthy{S}", "{{service}} healthy"),
        ],
        "timeseries",
        [],
    ),
    (
        "Restarts",
        "none",
        [(f"composegen_service_restarts{S}", "{{service}}")],
        "timeseries",
        [],
    ),
    (
        "Requests / s",
        "reqps",
        [
            (
                f"sum by (service) (rate(composegen_gateway_requests_total{S}[1m]))",
                "{{service}}",
            )
        ],
        "timeseries",
        [],
    ),
    (
        "Errors / s (5xx, failed upstreams)",
        "reqps",
        [(f"sum by (service) (rate(composegen_gateway_errors_total{S}[1m]))", "{{service}}")],
        "timeseries",
        [],
    ),
    (
        "Latency p50 / p95",
        "s",
        [
            (
                f"histogram_quantile({q}, sum by (service, le) "
                f"(rate(composegen_gateway_request_duration_seconds_bucket{S}[5m])))",
                f"{{{{service}}}} p{int(q * 100)}",
            )
            for q in (0.5, 0.95)
        ],
        "timeseries",
        [],
    ),
    (
        "Model share in GPU memory",
        "percentunit",
        [(f"composegen_model_gpu_fraction{S}", "{{service}} {{model}}")],
        "timeseries",
        [],
    ),
]


def _panel(
    i: int,
    title: str,
    unit: str,
    targets: list[tuple[str, str]],
    kind: str,
    thresholds: list[float],
) -> dict[str, Any]:
    ds = {"type": "prometheus", "uid": DATASOURCE_UID}
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    for value, color in zip(thresholds, ("orange", "red"), strict=False):
        steps.append({"color": color, "value": value})
    width = 12
    return {
        "id": i + 1,
        "type": kind,
        "title": title,
        "datasource": ds,
        "gridPos": {
            "h": 4 if kind == "stat" else 8,
            "w": width,
            "x": (i % 2) * width,
            "y": (i // 2) * 8,
        },
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + n), "datasource": ds, "expr": expr, "legendFormat": legend}
            for n, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(prof: Profile) -> dict[str, Any]:
    return {
        "uid": DASHBOARD_UID,
        "title": "composegen watch",
        "tags": ["composegen"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "stack",
                    "label": "stack",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
                    "query": {"query": "label_values(composegen_stack_mode, stack)", "refId": "S"},
                    "definition": "label_values(composegen_stack_mode, stack)",
                    "current": {"text": prof.name, "value": prof.name},
                    "refresh": 2,
                }
            ]
        },
        "panels": [_panel(i, *p) for i, p in enumerate(PANELS)],
    }


def files(prof: Profile, header: str) -> list[OutFile]:
    from composegen.render import dump_yaml

    return [
        OutFile(PROMETHEUS_YML, dump_yaml(prometheus_config(prof), header)),
        OutFile(DATASOURCE_YML, dump_yaml(datasource_config(), header)),
        OutFile(PROVIDER_YML, dump_yaml(provider_config(), header)),
        OutFile(DASHBOARD_JSON, json.dumps(dashboard(prof), indent=2) + "\n"),
    ]
