"""The gateway's API key on a real engine: the key the error message recommends
(`openssl rand -hex 32`, 64 characters) must start the gateway and authenticate requests.

Before the fix a key over ~40 characters overflowed nginx's map hash bucket: the gateway
crash-looped with "could not build map_hash, you should increase map_hash_bucket_size: 64".
The e2e security drill used a 32-character key and never saw it."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import pytest

from tests.e2e.test_up import up


def _openssl_key() -> str:
    try:
        done = subprocess.run(
            ["openssl", "rand", "-hex", "32"], capture_output=True, text=True, timeout=30
        )
    except OSError:
        pytest.skip("openssl is not installed")
    return done.stdout.strip()


def test_a_64_character_key_starts_the_gateway_and_authenticates(stack_factory: Any) -> None:
    key = _openssl_key()
    assert len(key) == 64, key
    st = stack_factory("zenglow-personas", f"gateway.api_key={key}")
    done, _ = up(st)
    assert done.returncode == 0, done.stderr
    url = f"http://127.0.0.1:{st.port}/leonardo/api/generate"
    body = {"model": "mistral", "prompt": "hi", "stream": False}

    def status(headers: dict[str, str]) -> int:
        return httpx.post(url, json=body, timeout=10, headers=headers).status_code

    assert status({}) == 401
    assert status({"Authorization": f"Bearer {key[:-1]}"}) == 401  # a prefix is not the key
    assert status({"Authorization": f"Bearer {key}x"}) == 401
    # nginx matches plain map strings ignoring case: the key must not
    assert status({"Authorization": f"Bearer {key.upper()}"}) == 401
    assert status({"Authorization": f"bearer {key}"}) == 401
    assert status({"Authorization": f"Bearer {key}"}) == 200
