"""Where the shipped profiles/ and templates/ are: inside the installed package (the wheel maps
them to composegen/_profiles and composegen/_templates), or at the top of a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def _data_dir(installed: str, checkout_name: str) -> Path:
    inside = _PACKAGE / installed
    if inside.is_dir():
        return inside
    return _CHECKOUT / checkout_name


def profiles_dir() -> Path:
    return _data_dir("_profiles", "profiles")


def templates_dir() -> Path:
    return _data_dir("_templates", "templates")
