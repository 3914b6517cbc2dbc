"""The local TEST-ONLY images (scripts/images.sh) for end-to-end tests: stand-ins for the real
model servers, Ollama, nginx and the Hugging Face hub, plus the real huggingface_hub client
(hf-fetch), built from a debootstrapped Debian base with no registry.

    from tests.e2e.images import ensure_images
    tags = ensure_images()
    # {"debian": ..., "model": ..., "ollama": ..., "nginx": ..., "hf-hub": ..., "hf-fetch": ...,
    #  "nginx-resolve": "composegen-test/nginx:<the nginx version inside>"}

"nginx" (Debian bookworm's nginx 1.22) is the one-host tests' gateway; "nginx-resolve" (Debian
forky's, >= 1.27.3) is the Swarm gateway's, whose upstreams re-resolve with `server NAME resolve`.

Call it from a fixture that already depends on `docker_client` so a missing engine skips (or
fails in CI) by conftest.py's rule before any build is tried.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "images.sh"
# the order `images.sh --list` prints them in
KEYS = ("debian", "model", "ollama", "nginx", "hf-hub", "hf-fetch", "nginx-resolve")


@functools.lru_cache(maxsize=1)
def ensure_images() -> dict[str, str]:
    """Build (or confirm up to date) the test images once per process; their tags by role."""
    build = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if build.returncode != 0:
        pytest.fail(
            f"scripts/images.sh failed (exit {build.returncode}):\n{build.stdout}\n{build.stderr}",
            pytrace=False,
        )
    listed = subprocess.run(
        ["bash", str(SCRIPT), "--list"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    assert len(listed) == len(KEYS), f"images.sh --list printed {listed}"
    return dict(zip(KEYS, listed, strict=True))
