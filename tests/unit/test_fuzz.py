"""Property-based fuzzing of everything that reads user input.

One property for every reader: it either succeeds or raises a ComposegenError whose message is
one line - never a KeyError, TypeError, RecursionError, ... that the CLI would turn into an
"internal error". Inputs are random mutations of real, valid inputs (the shipped profiles, a
saved inventory, the nvidia-smi fixtures under tests/fixtures, a rendered compose file), so the
fuzzer spends its time just past the edge of what is valid, where the bugs are.

Bounded for CI: a few hundred examples per test, no example database, under ~40 s in all.
COMPOSEGEN_FUZZ_EXAMPLES=5000 runs a deeper search locally.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composegen import app, profiles
from composegen.detect.sources import load_inventory
from composegen.engine.compose import load_project
from composegen.errors import ComposegenError
from composegen.profiles import Overrides, apply_overrides, parse_assignment
from composegen.resources import profiles_dir
from tests.conftest import fixture_path
from tests.stack_checks import scenario_inventory

_EXAMPLES = os.environ.get("COMPOSEGEN_FUZZ_EXAMPLES")


def _fuzz(examples: int) -> settings:
    return settings(
        max_examples=int(_EXAMPLES) if _EXAMPLES else examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


FUZZ = _fuzz(250)  # cheap readers
FUZZ_HEAVY = _fuzz(150)  # a whole profile or compose file through YAML each example
SHIPPED = ("rag-a100", "rma-shared", "zenglow-personas", "ollama-replicas", "ollama-pool")


# --- the property ---------------------------------------------------------------------------------


def succeeds_or_says_why(call: Callable[[], Any]) -> Any:
    """Run `call`; a ComposegenError is fine when its message is one non-empty line."""
    try:
        return call()
    except ComposegenError as exc:
        line = exc.one_line()
        assert line.strip(), f"{type(exc).__name__} with an empty message"
        assert "\n" not in line and "\r" not in line, f"multi-line message: {line!r}"
        return None


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _no_cache() -> Iterator[None]:
    """The profile validation cache would skip the schema check for data seen before."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPOSEGEN_CACHE_DIR", "off")
        mp.delenv("COMPOSEGEN_PROFILES_PATH", raising=False)
        yield


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return {
        name: yaml.safe_load((profiles_dir() / f"{name}.yaml").read_text(encoding="utf-8"))
        for name in SHIPPED
    }


@pytest.fixture(scope="module")
def inventory_json() -> str:
    return scenario_inventory("a100_8x80").to_json()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """docker-compose.yml and .env of rag-a100 and ollama-replicas on their reference hardware."""
    out: dict[str, str] = {}
    for name in ("rag-a100", "ollama-replicas"):
        files = {f.path: f.text for f in app.build(name, reference=True, pin_by="index").files}
        out[f"{name}/docker-compose.yml"] = files["docker-compose.yml"]
        out[f"{name}/.env"] = files[".env"]
    return out


def _fixture_files() -> list[Path]:
    root = fixture_path("nvidia-smi")
    return sorted(
        p for sub in ("xml", "csv", "captures") for p in (root / sub).iterdir() if p.is_file()
    )


# --- strategies -----------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24),
    st.sampled_from(["", "0", "-1", "1.5", "N/A", "${X}", "${X:?}", "$$", "a.b", "/", "all"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
# Names that exist somewhere in the documents, so inserted keys often collide with real ones.
KNOWN_KEYS = [
    "name", "image", "port", "kind", "gpu", "count", "vram_mib", "models", "replicas",
    "on_short", "services", "images", "reference", "gpus", "memory_mib", "planner", "headroom",
    "depends_on", "route", "volumes", "cpu", "env", "health", "gateway", "deploy", "resources",
    "reservations", "devices", "device_ids", "healthcheck", "test", "interval", "networks",
    "ports", "environment", "ulimits", "command", "index", "uuid", "memory_total_mib", "schema",
    "mig_devices", "nvlink_peers", "health", "host", "docker", "privileged", "x-extra",
]  # fmt: skip
KEYS = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.text(max_size=12),
    st.integers(min_value=-3, max_value=3),
    st.none(),
    st.booleans(),
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _swap_type(value: Any) -> Any:
    """The same content in the wrong type: "8080" for 8080, [..] for {..}, ..."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return int(value) if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        return int(value) if value.isdigit() else len(value)
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    return 0


def mutate(data: st.DataObject, doc: Any, string_keys: bool = False) -> Any:
    """1-4 random edits of a JSON-like document: drop, replace, retype, insert; or a new root."""
    doc = copy.deepcopy(doc)
    keys = st.text(max_size=12) | st.sampled_from(KNOWN_KEYS) if string_keys else KEYS
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="edits")):
        paths = _paths(doc)
        op = data.draw(st.sampled_from(["drop", "replace", "retype", "insert", "root"]), label="op")
        if op == "root" or not paths:
            doc = data.draw(VALUES, label="new root")
            continue
        path = data.draw(st.sampled_from(paths), label="path")
        parent, key = _at(doc, path[:-1]), path[-1]
        if op == "drop":
            del parent[key]
        elif op == "replace":
            parent[key] = data.draw(VALUES, label="value")
        elif op == "retype":
            parent[key] = _swap_type(parent[key])
        else:
            target = parent[key]
            if isinstance(target, dict):
                target[data.draw(keys, label="key")] = data.draw(VALUES, label="value")
            elif isinstance(target, list):
                target.append(data.draw(VALUES, label="item"))
            else:
                parent[key] = _swap_type(target)
    return doc


def mutate_bytes(data: st.DataObject, blob: bytes) -> bytes:
    """1-3 byte-level edits: truncate, flip a byte, splice a slice elsewhere, insert bytes."""
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="byte edits")):
        n = len(blob)
        op = data.draw(st.sampled_from(["truncate", "flip", "splice", "insert"]), label="op")
        i = data.draw(st.integers(min_value=0, max_value=n), label="at")
        if op == "truncate":
            blob = blob[:i]
        elif op == "flip" and i < n:
            bit = data.draw(st.integers(min_value=1, max_value=255), label="xor")
            blob = blob[:i] + bytes([blob[i] ^ bit]) + blob[i + 1 :]
        elif op == "splice":
            j = data.draw(st.integers(min_value=i, max_value=min(n, i + 400)), label="to")
            k = data.draw(st.integers(min_value=0, max_value=n), label="into")
            blob = blob[:k] + blob[i:j] + blob[k:]
        else:
            blob = blob[:i] + data.draw(st.binary(max_size=16), label="bytes") + blob[i:]
    return blob


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump_yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)


# --- profiles.load --------------------------------------------------------------------------------


@FUZZ_HEAVY
@given(data=st.data())
def test_profile_load_on_mutated_profiles(
    data: st.DataObject, work: Path, shipped: dict[str, Any]
) -> None:
    name = data.draw(st.sampled_from(SHIPPED), label="profile")
    folder = work / "profiles-structured"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(_dump_yaml(mutate(data, shipped[name])), encoding="utf-8")
    succeeds_or_says_why(lambda: profiles.load(name, [str(folder)]))


@FUZZ
@given(data=st.data())
def test_profile_load_on_damaged_bytes(data: st.DataObject, work: Path) -> None:
    name = data.draw(st.sampled_from(SHIPPED), label="profile")
    folder = work / "profiles-bytes"
    folder.mkdir(exist_ok=True)
    blob = (profiles_dir() / f"{name}.yaml").read_bytes()
    (folder / f"{name}.yaml").write_bytes(mutate_bytes(data, blob))
    succeeds_or_says_why(lambda: profiles.load(name, [str(folder)]))


# --- detect.sources.load_inventory ------------------------------------------------------------


@FUZZ
@given(blob=st.one_of(st.binary(max_size=512), st.text(max_size=512).map(str.encode)))
def test_load_inventory_on_random_input(blob: bytes, work: Path) -> None:
    path = work / "random-inventory"
    path.write_bytes(blob)
    succeeds_or_says_why(lambda: load_inventory(str(path)))


@FUZZ
@given(data=st.data())
def test_load_inventory_on_mutated_json(
    data: st.DataObject, work: Path, inventory_json: str
) -> None:
    doc = mutate(data, json.loads(inventory_json), string_keys=True)
    path = work / "inventory.json"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    succeeds_or_says_why(lambda: load_inventory(str(path)))


@FUZZ
@given(data=st.data())
def test_load_inventory_on_damaged_files(
    data: st.DataObject, work: Path, inventory_json: str
) -> None:
    sources = [*_fixture_files(), None]  # None: the saved inventory JSON
    source = data.draw(st.sampled_from(sources), label="file")
    blob = inventory_json.encode() if source is None else source.read_bytes()
    path = work / "damaged-inventory"
    path.write_bytes(mutate_bytes(data, blob))
    succeeds_or_says_why(lambda: load_inventory(str(path)))


# --- --set / --image / --values -------------------------------------------------------------------

SET_ALPHABET = st.sampled_from(list("abcdefghijklmnopqrstuvwxyz_-.=:[]{}', \"0123456789!&*#|>\n\t"))
REAL_PATHS = [
    "planner.headroom", "planner.spare_gpus", "gateway.port", "gateway.api_key", "name",
    "services", "services.ollama", "services.ollama.port", "services.ollama.gpu",
    "services.ollama.gpu.count", "services.ollama.gpu.replicas", "services.ollama.gpu.on_short",
    "services.ollama.models", "services.ollama.enabled", "services.ollama.cpu.image",
    "services.ollama.health.interval", "services.ollama.env.X", "tunables.OLLAMA_KEEP_ALIVE",
    "reference.gpus", "reference.nvlink", "images.ollama", "volumes.models", "new.key",
]  # fmt: skip
SET_VALUES = st.one_of(
    st.text(SET_ALPHABET, max_size=16),
    st.sampled_from(
        [
            "2.0",
            "-1",
            "1e999",
            ".nan",
            "~",
            "null",
            "true",
            "[1]",
            "{a: 1}",
            "!!binary x",
            "*alias",
            "&anchor x",
            "'",
            "0x10",
            "0o7",
            "1_000",
            "2024-01-01",
            "65536",
        ]
    ),
)
SETS = st.one_of(
    st.text(SET_ALPHABET, max_size=40),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(REAL_PATHS), SET_VALUES),
)
IMAGES = st.one_of(
    st.text(SET_ALPHABET, max_size=30),
    st.builds(
        lambda k, v: f"{k}={v}",
        st.sampled_from(["ollama", "nginx", "vllm", "", "OLLAMA"]),
        st.text(SET_ALPHABET, max_size=20),
    ),
)


@FUZZ
@given(sets=st.lists(SETS, min_size=1, max_size=3), images=st.lists(IMAGES, max_size=2))
def test_set_and_image_overrides(
    sets: list[str], images: list[str], shipped: dict[str, Any]
) -> None:
    for text in sets:
        succeeds_or_says_why(lambda text=text: parse_assignment(text, "--set"))
    ov = Overrides(sets=tuple(sets), images=tuple(images))
    data = shipped["ollama-replicas"]
    succeeds_or_says_why(lambda: apply_overrides(data, ov, "ollama-replicas.yaml"))
    # and all the way through validation, as `render --set ...` does
    succeeds_or_says_why(lambda: profiles.load("ollama-replicas", (), ov))


@FUZZ_HEAVY
@given(data=st.data())
def test_values_files(data: st.DataObject, work: Path, shipped: dict[str, Any]) -> None:
    base = data.draw(
        st.sampled_from([{}, {"planner": {"headroom": 0.2}}, shipped["ollama-replicas"]])
    )
    doc = mutate(data, base) if base else data.draw(VALUES)
    path = work / "values.yaml"
    path.write_text(_dump_yaml(doc), encoding="utf-8")
    ov = Overrides(values_files=(str(path),))
    succeeds_or_says_why(lambda: profiles.load("ollama-replicas", (), ov))


# --- engine.compose.load_project ------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _parsed(text: str) -> Any:
    return yaml.safe_load(text)  # mutate() deep-copies it


def _write_stack(work: Path, rendered: dict[str, str], name: str, compose: bytes) -> Path:
    folder = work / f"compose-{name}"
    folder.mkdir(exist_ok=True)
    (folder / ".env").write_text(rendered[f"{name}/.env"], encoding="utf-8")
    path = folder / "docker-compose.yml"
    path.write_bytes(compose)
    return path


@FUZZ_HEAVY
@given(data=st.data())
def test_load_project_on_mutated_compose(
    data: st.DataObject, work: Path, rendered: dict[str, str]
) -> None:
    name = data.draw(st.sampled_from(["rag-a100", "ollama-replicas"]), label="stack")
    doc = mutate(data, _parsed(rendered[f"{name}/docker-compose.yml"]))
    path = _write_stack(work, rendered, name, _dump_yaml(doc).encode())
    succeeds_or_says_why(lambda: load_project(path, "fuzz"))


@FUZZ
@given(data=st.data())
def test_load_project_on_damaged_bytes(
    data: st.DataObject, work: Path, rendered: dict[str, str]
) -> None:
    name = data.draw(st.sampled_from(["rag-a100", "ollama-replicas"]), label="stack")
    blob = mutate_bytes(data, rendered[f"{name}/docker-compose.yml"].encode())
    path = _write_stack(work, rendered, name, blob)
    succeeds_or_says_why(lambda: load_project(path, None))
