"""Compose v2 compatibility of the moves and heals (engine/switch.py, watch/heal.py): their new
containers carry the labels `up` writes (engine/up.create_service), and a move compares Compose
v2's hashes as `up` does, so a container `docker compose up` created is not recreated."""

from __future__ import annotations

from pathlib import Path

import pytest

from composegen.engine import compose_v2, switch
from composegen.engine import docker as eng
from composegen.engine import up as engine_up
from composegen.watch.types import Decision
from tests.fake_docker import FakeDocker
from tests.unit.test_watch_heal import NOW, healer, project_of, rendered


def v2_hashes(monkeypatch: pytest.MonkeyPatch, hashes: dict[str, str]) -> None:
    monkeypatch.setattr(compose_v2, "service_hashes", lambda project, *a, **kw: dict(hashes))


@pytest.mark.parametrize("engine", ["", "gpu-memory-held"])
def test_recreated_container_has_the_labels_up_writes(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make before break ("") and the old one stopped first (its GPU memory held): either way
    the new container has Compose v2's hash, composegen's own and the image ID, as after `up`."""
    fake = FakeDocker(engine) if engine else FakeDocker()
    monkeypatch.setattr(engine_up, "probe_gateway", lambda project, deadline: None)
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    v2_hashes(monkeypatch, {"whisper": "v2-whisper"})
    ok, events = healer(fake, main, []).apply(Decision("recreate", "x", service="whisper"), NOW)
    assert ok, events
    new = fake.services(main.name)["whisper"]
    svc = next(s for s in main.services if s.name == "whisper")
    assert new.labels[eng.LABEL_HASH] == "v2-whisper"
    assert new.labels[compose_v2.LABEL_OWN_HASH] == svc.config_hash()
    assert new.labels[compose_v2.LABEL_IMAGE].startswith("sha256:")


def test_move_ahead_keeps_a_container_compose_v2_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDocker()
    monkeypatch.setattr(engine_up, "probe_gateway", lambda project, deadline: None)
    out = rendered(tmp_path)
    main = project_of(out)
    engine_up.up(fake, main)
    # as `docker compose up` left it: v2's hash, none of composegen's own
    old = fake.services(main.name)["embeddings"]
    del old.labels[compose_v2.LABEL_OWN_HASH]
    old.labels[eng.LABEL_HASH] = "v2-embeddings"
    v2_hashes(monkeypatch, {"embeddings": "v2-embeddings"})
    monkeypatch.setattr(switch, "can_overlap", lambda svc, old: True)
    assert switch.move_ahead(fake, main, lambda s, st, d: None) == []
    assert fake.services(main.name)["embeddings"].id == old.id
