"""Living next to Compose v2 (composegen/engine/compose_v2.py and its use in up): which binary is
asked for v2's config hash, what converge accepts as up to date, which labels composegen
writes so that v2 leaves its containers alone, and the once-only note about start_interval."""

from __future__ import annotations

import os
from pathlib import Path

from composegen.engine import compose_v2
from composegen.engine import docker as eng
from composegen.engine import up as engine_up
from composegen.engine.compose import load_project
from composegen.engine.up import Existing, converge
from tests.fake_docker import FakeDocker
from tests.unit.test_engine_up import stack

V2_HASH = "5e95c324084cacd056db4d3d7e13f830264a98463c14e421cc394bc445275b4a"  # from v2 2.40.3


def test_converge_keeps_a_container_v2_created_for_the_same_config(tmp_path: Path) -> None:
    p = stack(tmp_path)
    v2_made = [
        Existing("c1", "llm", V2_HASH, "running"),  # v2's label, no composegen label
        Existing("c2", "gateway", "a" * 64, "running"),  # v2 made it for another config
    ]
    conv = converge(p, v2_made, {"llm": V2_HASH, "gateway": "b" * 64})
    assert conv.actions == {"llm": "keep", "gateway": "recreate"}
    # without v2's hashes (no v2 binary on the host), v2's containers are recreated once
    assert converge(p, v2_made).actions == {"llm": "recreate", "gateway": "recreate"}


def test_converge_keeps_composegen_containers_by_their_own_label(tmp_path: Path) -> None:
    p = stack(tmp_path)
    own = p.service("llm").config_hash()
    existing = [
        Existing("c1", "llm", V2_HASH, "running", own),  # this composegen, v2's hash known then
        Existing("c2", "gateway", p.service("gateway").config_hash(), "running"),  # older one
    ]
    assert converge(p, existing, {}).actions == {"llm": "keep", "gateway": "keep"}
    changed = [Existing("c1", "llm", V2_HASH, "running", "0" * 64), existing[1]]
    assert converge(p, changed, {"llm": "1" * 64}).actions["llm"] == "recreate"


def test_created_containers_carry_both_hashes_and_the_image_id(tmp_path: Path) -> None:
    p = stack(tmp_path)
    client = FakeDocker(images={"img:1"})
    engine_up.create_service(client, p, p.service("llm"), {"llm": V2_HASH})
    engine_up.create_service(client, p, p.service("gateway"), {})
    llm, gateway = (c["labels"] for c in client.api.created)
    assert llm[eng.LABEL_HASH] == V2_HASH
    assert llm[compose_v2.LABEL_OWN_HASH] == p.service("llm").config_hash()
    assert llm[compose_v2.LABEL_IMAGE] == client.images.get("img:1").id
    # no v2 hash: composegen's own in both labels
    own = p.service("gateway").config_hash()
    assert gateway[eng.LABEL_HASH] == gateway[compose_v2.LABEL_OWN_HASH] == own


def test_find_binary_env_first_empty_disables(tmp_path: Path) -> None:
    plugin = tmp_path / ".docker" / "cli-plugins" / "docker-compose"
    plugin.parent.mkdir(parents=True)
    plugin.write_text("#!/bin/sh\n")
    env = {"HOME": str(tmp_path)}
    assert compose_v2.find_binary(env) is None  # not executable
    os.chmod(plugin, 0o755)
    assert compose_v2.find_binary(env) == str(plugin)
    assert compose_v2.find_binary({**env, compose_v2.COMPOSE_V2_ENV: "/opt/v2"}) == "/opt/v2"
    assert compose_v2.find_binary({**env, compose_v2.COMPOSE_V2_ENV: ""}) is None


def test_service_hashes_reads_v2_output_and_survives_a_broken_binary(tmp_path: Path) -> None:
    p = stack(tmp_path)
    fake = tmp_path / "v2"
    fake.write_text(f"#!/bin/sh\necho 'llm {V2_HASH}'\necho 'other {'c' * 64}'\necho junk\n")
    os.chmod(fake, 0o755)
    assert compose_v2.service_hashes(p, str(fake)) == {"llm": V2_HASH}
    fake.write_text("#!/bin/sh\necho refused >&2\nexit 1\n")
    assert compose_v2.service_hashes(p, str(fake)) == {}
    assert compose_v2.service_hashes(p, str(tmp_path / "missing")) == {}


def test_start_interval_note(tmp_path: Path) -> None:
    p = stack(tmp_path)  # llm has a healthcheck without start_interval
    note = compose_v2.start_interval_note("1.41", p)
    assert note is not None and "has no healthcheck start_interval" in note
    assert compose_v2.start_interval_note("1.44", p) is None
    assert compose_v2.start_interval_note("1.47", p) is None
    (tmp_path / "bare.yml").write_text("services:\n  a:\n    image: img:1\n")
    assert compose_v2.start_interval_note("1.41", load_project(tmp_path / "bare.yml", "b")) is None
