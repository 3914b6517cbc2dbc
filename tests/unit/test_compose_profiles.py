"""Compose profiles in composegen's own loader: a service whose profiles are all inactive is not
part of the project (so `up` neither starts it nor removes its running container as an orphan),
nor are the networks and volumes only it uses; extra_hosts for the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from composegen.engine.compose import ComposeFileError, load_project
from composegen.engine.up import Existing, converge

FILE = """
services:
  app:
    image: local/app:1
    networks: [backend]
    volumes: ["models:/models"]
  prometheus:
    image: prom/prometheus:v3.5.0
    profiles: [monitor]
    networks: [monitor]
    volumes: ["prometheus-data:/prometheus", "models:/models:ro"]
    extra_hosts: ["host.docker.internal:host-gateway"]
  grafana:
    image: grafana/grafana:12.2.0
    profiles: [monitor, dashboards]
    networks: [monitor]
    depends_on: [prometheus]
    weird_key_only_compose_knows: 1
networks:
  backend: {internal: true}
  monitor: {}
volumes:
  models: {}
  prometheus-data: {}
"""


def write(tmp: Path, text: str = FILE, env: str | None = None) -> Path:
    (tmp / "docker-compose.yml").write_text(text, encoding="utf-8")
    if env is not None:
        (tmp / ".env").write_text(env, encoding="utf-8")
    return tmp / "docker-compose.yml"


@pytest.fixture(autouse=True)
def _no_profiles_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)


def names(p: object) -> list[str]:
    return [s.name for s in p.services]  # type: ignore[attr-defined]


def test_inactive_services_and_what_only_they_use_are_left_out(tmp_path: Path) -> None:
    p = load_project(write(tmp_path), "s")
    assert names(p) == ["app"]
    assert p.inactive == ("grafana", "prometheus")
    assert [n.name for n in p.networks] == ["backend"]
    assert [v.name for v in p.volumes] == ["models"]  # still used by app


def test_one_active_profile_of_several_is_enough(tmp_path: Path) -> None:
    f = write(tmp_path, FILE.replace("    weird_key_only_compose_knows: 1\n", ""))
    with pytest.raises(ComposeFileError, match="prometheus is in profile monitor, which is not"):
        load_project(f, "s", profiles=["dashboards"])  # grafana on, its dependency off
    p = load_project(f, "s", profiles=["dashboards", "monitor"])
    assert names(p) == ["app", "prometheus", "grafana"]


def test_the_profile_from_the_environment_and_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = FILE.replace("    weird_key_only_compose_knows: 1\n", "")
    f = write(tmp_path, text, env="COMPOSE_PROFILES=monitor\n")
    p = load_project(f, "s")
    assert names(p) == ["app", "prometheus", "grafana"]
    assert p.inactive == ()
    assert [n.name for n in p.networks] == ["backend", "monitor"]
    assert p.service("prometheus").extra["extra_hosts"] == ["host.docker.internal:host-gateway"]
    monkeypatch.setenv("COMPOSE_PROFILES", " , ")  # the process environment wins over .env
    assert names(load_project(f, "s")) == ["app"]
    monkeypatch.setenv("COMPOSE_PROFILES", "*")
    assert len(load_project(f, "s").services) == 3
    assert names(load_project(f, "s", profiles=())) == ["app"]  # the argument wins over both


def test_keys_of_an_inactive_service_are_not_checked(tmp_path: Path) -> None:
    f = write(tmp_path)
    assert names(load_project(f, "s")) == ["app"]
    with pytest.raises(ComposeFileError, match="weird_key_only_compose_knows"):
        load_project(f, "s", profiles=["monitor"])


def test_a_default_service_that_needs_an_inactive_one_is_named(tmp_path: Path) -> None:
    app_line = "    networks: [backend]\n"
    text = FILE.replace(app_line, app_line + "    depends_on: [prometheus]\n", 1)
    with pytest.raises(ComposeFileError) as err:
        load_project(write(tmp_path, text), "s")
    assert "services.app.depends_on: prometheus is in profile monitor, which is not active" in (
        err.value.one_line()
    )
    assert "COMPOSE_PROFILES=monitor" in err.value.one_line()


@pytest.mark.parametrize(
    ("profiles", "message"),
    [
        ("monitor", "expected a list of profile names"),
        ("[monitor, 3]", "expected a list of profile names"),
        ("['-x']", "'-x' is not a profile name"),
        ("['a b']", "'a b' is not a profile name"),
    ],
)
def test_bad_profiles_are_refused(tmp_path: Path, profiles: str, message: str) -> None:
    text = f"services:\n  a:\n    image: i:1\n    profiles: {profiles}\n"
    with pytest.raises(ComposeFileError, match=message):
        load_project(write(tmp_path, text), "s")


def test_a_bad_profile_argument_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeFileError, match="'mon itor' is not a profile name"):
        load_project(write(tmp_path), "s", profiles=["mon itor"])


def test_up_keeps_a_running_container_of_an_inactive_profile(tmp_path: Path) -> None:
    """Started by `docker compose --profile monitor up`: not an orphan for `composegen up`."""
    p = load_project(write(tmp_path), "s")
    existing = [
        Existing("c1", "app", p.service("app").config_hash(), "running"),
        Existing("c2", "prometheus", "h", "running"),
        Existing("c3", "removed-from-the-file", "h", "running"),
    ]
    conv = converge(p, existing)
    assert conv.actions == {"app": "keep"}
    assert conv.remove == ("c3",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('["db:10.0.0.5", "gw:host-gateway"]', ["db:10.0.0.5", "gw:host-gateway"]),
        ('["db=10.0.0.5"]', ["db:10.0.0.5"]),
        ("{db: 10.0.0.5, v6: '::1'}", ["db:10.0.0.5", "v6:::1"]),
        ('["v6=[2001:db8::1]"]', ["v6:2001:db8::1"]),
    ],
)
def test_extra_hosts(tmp_path: Path, value: str, expected: list[str]) -> None:
    text = f"services:\n  a:\n    image: i:1\n    extra_hosts: {value}\n"
    assert load_project(write(tmp_path, text), "s").service("a").extra["extra_hosts"] == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["db:not-an-ip"]', "'not-an-ip' is not an IP address or host-gateway"),
        ('["bad name:10.0.0.5"]', "'bad name' is not a host name"),
        ("db:10.0.0.5", "expected a list of NAME:ADDRESS or a mapping"),
    ],
)
def test_bad_extra_hosts(tmp_path: Path, value: str, message: str) -> None:
    text = f"services:\n  a:\n    image: i:1\n    extra_hosts: {value}\n"
    with pytest.raises(ComposeFileError, match=message):
        load_project(write(tmp_path, text), "s")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("volumes: 5", "volumes"),
        ("depends_on: 5", "depends_on"),
        ("networks: 5", "networks"),
    ],
)
def test_a_malformed_service_beside_a_profile_is_one_error(
    tmp_path: Path, block: str, message: str
) -> None:
    """Found by tests/unit/test_fuzz.py: the profile split must not trip over a bad value
    before the loader names it."""
    text = (
        "services:\n"
        f"  a:\n    image: i:1\n    {block}\n"
        "  m:\n    image: i:1\n    profiles: [monitor]\n    volumes: ['data:/d']\n"
        "volumes:\n  data: {}\n"
    )
    with pytest.raises(ComposeFileError, match=message):
        load_project(write(tmp_path, text), "s")
