"""Where the shipped profiles/ and templates/ are: inside the installed package, or the checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def _data_dir(package: str, checkout_name: str) -> Path:
    try:
        found = resources.files(package)
    except ModuleNotFoundError:
        found = None
    if found is not None:
        path = Path(str(found))
        if path.is_dir():
            return path
    return _CHECKOUT / checkout_name


def profiles_dir() -> Path:
    return _data_dir("composegen._profiles", "profiles")


def templates_dir() -> Path:
    return _data_dir("composegen._templates", "templates")
