"""A small on-disk cache for work whose result depends only on its inputs' bytes.

Used for two things that dominate a render's start-up and never change between renders of the
same profile: the JSON Schema check of a profile (importing jsonschema alone costs ~0.1 s) and
Jinja2's compiled templates. Keys are content hashes, so a stale entry cannot be hit. The
cache lives in $COMPOSEGEN_CACHE_DIR, else $XDG_CACHE_HOME/composegen, else ~/.cache/composegen;
COMPOSEGEN_CACHE_DIR=off disables it, and any error simply means "no cache".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path


def cache_dir() -> Path | None:
    env = os.environ.get("COMPOSEGEN_CACHE_DIR")
    if env == "off":
        return None
    if env:
        base = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "composegen"
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return base if os.access(base, os.W_OK) else None


def key(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def seen(kind: str, digest: str) -> bool:
    base = cache_dir()
    return base is not None and (base / kind / digest).exists()


def remember(kind: str, digest: str) -> None:
    base = cache_dir()
    if base is None:
        return
    with contextlib.suppress(OSError):
        (base / kind).mkdir(exist_ok=True, mode=0o700)
        (base / kind / digest).touch()
