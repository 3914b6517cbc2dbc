"""Real-engine fixtures. In CI (COMPOSEGEN_REQUIRE_ENGINE=1) a missing engine fails the tests;
elsewhere they skip and say why. Everything a test creates carries TEST_LABEL and is removed by
that label afterwards."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TEST_LABEL = "io.composegen.test"
# The label's value names this test session, so that its clean-up removes only what it made:
# two sessions on one engine (a developer's run beside CI) never remove each other's containers.
SESSION = uuid.uuid4().hex[:12]
TEST_LABELS = {TEST_LABEL: SESSION}
BUSYBOX_IMAGE = "composegen-test/busybox:1"


def _need(what: str, reason: str, how: str) -> None:
    """Fail in CI (COMPOSEGEN_REQUIRE_ENGINE=1), skip elsewhere; name what is really missing."""
    if os.environ.get("COMPOSEGEN_REQUIRE_ENGINE") == "1":
        pytest.fail(f"{what} is required here but {reason}")
    pytest.skip(f"{what}: {reason} ({how})")


def _need_engine(reason: str) -> None:
    _need("a Docker engine", reason, "start one with `scripts/engine.sh start`")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker
    from docker.errors import DockerException, NotFound

    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except DockerException as exc:
        _need_engine(f"it does not answer ({str(exc).splitlines()[0][:120]})")
    yield client
    for c in client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={SESSION}"}):
        with contextlib.suppress(NotFound):
            c.remove(force=True)
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> str:
    return ensure_busybox_image(docker_client)


def ensure_busybox_image(client: Any, busybox: Path = Path("/bin/busybox")) -> str:
    """A FROM-scratch image holding Debian's static busybox: no registry needed."""
    try:
        client.images.get(BUSYBOX_IMAGE)
        return BUSYBOX_IMAGE
    except Exception:
        pass
    if not busybox.exists():
        _need(
            "the busybox test image",
            f"{busybox} is missing, so it cannot be built (the engine itself answers)",
            "install Debian's busybox-static, or run `scripts/engine.sh start`, which does",
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(busybox), arcname="bin/busybox")
        for tool in ("sh", "env", "sleep", "cat"):
            info = tarfile.TarInfo(f"bin/{tool}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
    client.api.import_image_from_data(
        buf.getvalue(), repository=BUSYBOX_IMAGE.split(":")[0], tag=BUSYBOX_IMAGE.split(":")[1]
    )
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def tags(docker_client: Any) -> dict[str, str]:
    from tests.e2e.images import ensure_images

    return ensure_images()


@pytest.fixture
def stack_factory(docker_client: Any, tags: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Render a profile with the local stand-in images, under a test project; removed after."""
    from tests.e2e.test_up import _cleanup, render_stack

    made: list[str] = []

    def make(name: str, *sets: str) -> Any:
        st = render_stack(name, tmp_path, tags, *sets)
        _cleanup(docker_client, st.project)
        made.append(st.project)
        return st

    yield make
    for project in made:
        _cleanup(docker_client, project)
