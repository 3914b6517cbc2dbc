"""`composegen watch`'s option checks (watch/command.py): bad input before anything starts."""

from __future__ import annotations

import pytest

from composegen.errors import BadInputError
from composegen.watch.command import check_options, notify_url
from composegen.watch.loop import WatchOptions


def test_restore_after_zero_is_refused_as_parse_duration_does() -> None:
    with pytest.raises(BadInputError, match="--restore-after: must be more than 0"):
        check_options(WatchOptions(restore_after_s=0))
    check_options(WatchOptions(restore_after_s=0.5))


@pytest.mark.parametrize("url", ["ftp://hooks.example/x", "https://", "not a url"])
def test_a_bad_notify_url_is_refused_before_anything_starts(url: str) -> None:
    """Checked up front, so `watch --install --notify ftp://...` never enables a unit that exits
    2 on every start."""
    with pytest.raises(BadInputError, match="--notify"):
        check_options(WatchOptions(notify=url))
    check_options(WatchOptions(notify="https://hooks.example/T0/B0/secret"))


def test_the_notify_url_comes_from_the_environment_the_unit_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COMPOSEGEN_WATCH_NOTIFY", raising=False)
    assert notify_url(WatchOptions()) is None
    monkeypatch.setenv("COMPOSEGEN_WATCH_NOTIFY", "https://hooks.example/secret")
    assert notify_url(WatchOptions()) == "https://hooks.example/secret"
    assert notify_url(WatchOptions(notify="https://other.example/")) == "https://other.example/"
    monkeypatch.setenv("COMPOSEGEN_WATCH_NOTIFY", "ftp://hooks.example/secret")
    with pytest.raises(BadInputError, match="COMPOSEGEN_WATCH_NOTIFY"):
        check_options(WatchOptions())
