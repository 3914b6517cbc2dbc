"""The engine tests' skip reasons name what is really missing (a running engine is not
"no Docker engine" just because the busybox test image cannot be built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import ensure_busybox_image


class _NoImages:
    """An engine that answers but has no busybox test image yet."""

    class images:
        @staticmethod
        def get(name: str) -> None:
            raise LookupError(name)


def test_missing_busybox_binary_is_not_called_a_missing_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COMPOSEGEN_REQUIRE_ENGINE", raising=False)
    with pytest.raises(pytest.skip.Exception) as info:
        ensure_busybox_image(_NoImages(), busybox=tmp_path / "busybox")
    reason = str(info.value)
    assert "no Docker engine" not in reason
    assert str(tmp_path / "busybox") in reason
    assert "busybox-static" in reason


def test_missing_busybox_binary_fails_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPOSEGEN_REQUIRE_ENGINE", "1")
    with pytest.raises(pytest.fail.Exception) as info:
        ensure_busybox_image(_NoImages(), busybox=tmp_path / "busybox")
    assert "the busybox test image is required here" in str(info.value)
