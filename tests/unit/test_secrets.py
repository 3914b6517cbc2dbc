"""Secrets in a rendered stack (issue 9, item 8): the gateway's API key lives only in files of
mode 0600 (.env, nginx/auth.conf and their .bak copies); .composegen/render.json records that a
key is set, not the key, and a fallback re-render gets the key back from .env."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from composegen import app
from composegen.errors import BadInputError
from composegen.files import write_tree
from tests.unit.test_cli_detect import run_cli

KEY = "9c1f4e7a2b8d3f60a5e1c7b9d2f4a6e8c0b3d5f7a9e1c3b5d7f9a1c3e5b7d9f1"  # openssl rand -hex 32


def _holders(root: Path, secret: str) -> dict[str, int]:
    """Every file under root whose bytes hold `secret` -> its permission bits."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if secret.encode() in p.read_bytes():
                out[str(p.relative_to(root))] = stat.S_IMODE(p.stat().st_mode)
    return out


def _render(out: Path, *extra: str) -> None:
    proc = run_cli(
        "render",
        "--profile",
        "rag-a100",
        "--reference",
        "-o",
        str(out),
        "--set",
        f"gateway.api_key={KEY}",
        *extra,
    )
    assert proc.returncode == 0, proc.stderr


def test_every_file_holding_the_key_is_0600(tmp_path: Path) -> None:
    out = tmp_path / "stack"
    _render(out)
    holders = _holders(out, KEY)
    assert set(holders) == {".env", "nginx/auth.conf"}, holders
    assert all(mode == 0o600 for mode in holders.values()), holders
    recorded = json.loads((out / ".composegen" / "render.json").read_text(encoding="utf-8"))
    assert recorded["api_key"] == "set"
    assert not any("api_key" in s for s in recorded["sets"]), recorded["sets"]
    # a hand edit of .env then --force: the .bak copy holds the key too, and is 0600
    env = out / ".env"
    env.write_text(env.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    os.chmod(env, 0o600)
    _render(out, "--force")
    holders = _holders(out, KEY)
    assert set(holders) == {".env", ".env.bak", "nginx/auth.conf"}, holders
    assert all(mode == 0o600 for mode in holders.values()), holders


def test_fallback_rerender_keeps_the_key(tmp_path: Path) -> None:
    """fallback --gpu-failed and --restore re-plan from render.json: the key comes from .env."""
    out = tmp_path / "stack"
    _render(out)
    inputs = app.load_inputs(out)
    assert inputs.api_key == KEY
    assert KEY not in repr(inputs)
    failed = replace(inputs, failed=((2,),))  # the LLM's first GPU is lost
    rebuilt = app.rebuild(failed)
    files = {f.path: f for f in rebuilt.files}
    assert KEY in files["nginx/auth.conf"].text
    assert files["nginx/auth.conf"].mode == 0o600
    assert "include /etc/nginx/composegen/auth.conf;" in files["nginx/nginx.conf"].text
    assert f"COMPOSEGEN_API_KEY={KEY}\n" in files[".env"].text
    write_tree(out, rebuilt.files)
    app.save_inputs(out, failed)
    holders = _holders(out, KEY)
    assert set(holders) == {".env", "nginx/auth.conf"}, holders
    assert all(mode == 0o600 for mode in holders.values()), holders
    again = app.load_inputs(out)
    assert again.failed == ((2,),) and again.api_key == KEY


def test_key_changed_by_hand_in_env_is_the_one_rerendered(tmp_path: Path) -> None:
    out = tmp_path / "stack"
    _render(out)
    other = "b" * 40
    env = out / ".env"
    env.write_text(env.read_text(encoding="utf-8").replace(KEY, other), encoding="utf-8")
    files = {f.path: f for f in app.rebuild(app.load_inputs(out)).files}
    assert other in files["nginx/auth.conf"].text and KEY not in files["nginx/auth.conf"].text


def test_key_missing_from_env_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "stack"
    _render(out)
    env = out / ".env"
    lines = env.read_text(encoding="utf-8").splitlines(keepends=True)
    env.write_text("".join(ln for ln in lines if "COMPOSEGEN_API_KEY" not in ln), encoding="utf-8")
    with pytest.raises(BadInputError, match=r"render\.json.*no COMPOSEGEN_API_KEY"):
        app.load_inputs(out)


def test_old_render_json_with_the_key_in_its_sets_still_restores(tmp_path: Path) -> None:
    """A render.json written before this fix holds the key in `sets`: it is still read, and
    the next save drops it."""
    out = tmp_path / "stack"
    _render(out)
    path = out / ".composegen" / "render.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["sets"] = [f"gateway.api_key={KEY}"]
    del data["api_key"]
    path.write_text(json.dumps(data), encoding="utf-8")
    inputs = app.load_inputs(out)
    assert inputs.api_key == KEY and inputs.overrides.sets == ()
    app.save_inputs(out, inputs)
    assert KEY not in path.read_text(encoding="utf-8")


def test_no_key_no_api_key_record(tmp_path: Path) -> None:
    out = tmp_path / "stack"
    proc = run_cli("render", "--profile", "rag-a100", "--reference", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads((out / ".composegen" / "render.json").read_text(encoding="utf-8"))
    assert recorded["api_key"] is None
    inputs = app.load_inputs(out)
    assert inputs.api_key is None
    assert "nginx/auth.conf" not in {f.path for f in app.rebuild(inputs).files}


def test_key_of_digits_and_a_broken_key_in_env(tmp_path: Path) -> None:
    """A key YAML would read as a number stays a string; a key broken by hand in .env is a
    one-line error that does not print it."""
    out = tmp_path / "stack"
    _render(out)
    env = out / ".env"
    text = env.read_text(encoding="utf-8")
    digits = "0123456701234567"  # octal digits: YAML 1.1 reads 0123... as a number
    env.write_text(text.replace(KEY, digits), encoding="utf-8")
    files = {f.path: f for f in app.rebuild(app.load_inputs(out)).files}
    assert digits in files["nginx/auth.conf"].text
    broken = "short\x1bkey"
    env.write_text(text.replace(KEY, broken), encoding="utf-8")
    with pytest.raises(BadInputError) as err:
        app.rebuild(app.load_inputs(out))
    assert "COMPOSEGEN_API_KEY is not a valid API key" in err.value.one_line()
    assert broken not in err.value.one_line()
