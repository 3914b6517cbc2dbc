"""A corpus of bad input, each case run the way a user runs it, with the same four promises.

Every case: the exit code (2 bad input, 1 runtime failure); stderr is exactly one line that
starts `composegen: error:` and names the file and the field (or the option); no traceback;
nothing on stdout; and every file in the working directory - an already rendered stack
included - is byte-for-byte (and mode-for-mode) what it was before the command ran.

Cases run in-process through `composegen.cli.main` (fast); those marked `sub` run as a real
`python -m composegen` subprocess (`run_cli`) to cover the actual entry point. `up`/`status`/
`down` run with DOCKER_HOST pointing at a socket that does not exist, so a compose file that
loaded by mistake would fail on "no Docker engine" instead of the expected file error.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from composegen import app
from composegen.cli import main
from composegen.resources import profiles_dir
from tests.conftest import fixture_path
from tests.stack_checks import scenario_inventory
from tests.unit.test_cli_detect import run_cli

PROFILE = "ollama-replicas"
UNSET_VAR = "COMPOSEGEN_TEST_NEVER_SET"
XML_FIXTURE = ("nvidia-smi", "xml", "telegraf__tesla-t4.xml")

Setup = Callable[[Path, "Env"], None]


@dataclass(frozen=True)
class Env:
    """What the setups build from: a rendered stack and the inventory it was rendered for."""

    stack: Path
    inventory: str  # inventory JSON text (a100_4x64)


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    code: int
    expect: tuple[str, ...]  # substrings of the one stderr line
    setup: tuple[Setup, ...] = ()
    sub: bool = False  # run as a subprocess
    xfail: str | None = None
    marks: tuple[Any, ...] = field(default=())


# --- setups ---------------------------------------------------------------------------------------


def _path(doc: Any, dotted: str) -> tuple[Any, Any]:
    """(container, key) of a dotted path; numeric parts index lists."""
    parts = dotted.split(".")
    cur = doc
    for part in parts[:-1]:
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    last: Any = int(parts[-1]) if isinstance(cur, list) else parts[-1]
    return cur, last


def setp(dotted: str, value: Any) -> Callable[[Any], Any]:
    def edit(doc: Any) -> Any:
        cur, key = _path(doc, dotted)
        cur[key] = value
        return doc

    return edit


def delp(dotted: str) -> Callable[[Any], Any]:
    def edit(doc: Any) -> Any:
        cur, key = _path(doc, dotted)
        del cur[key]
        return doc

    return edit


def both(*edits: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def edit(doc: Any) -> Any:
        for e in edits:
            doc = e(doc)
        return doc

    return edit


def write(rel: str, data: bytes | str) -> Setup:
    def setup(work: Path, env: Env) -> None:
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def mkdir(rel: str) -> Setup:
    def setup(work: Path, env: Env) -> None:
        (work / rel).mkdir(parents=True, exist_ok=True)

    return setup


def stack(rel: str = "stack") -> Setup:
    def setup(work: Path, env: Env) -> None:
        shutil.copytree(env.stack, work / rel, symlinks=True)

    return setup


def profile(edit: Callable[[Any], Any]) -> Setup:
    """pd/ollama-replicas.yaml: the shipped profile with `edit` applied."""

    def setup(work: Path, env: Env) -> None:
        doc = yaml.safe_load((profiles_dir() / f"{PROFILE}.yaml").read_text(encoding="utf-8"))
        text = yaml.safe_dump(edit(copy.deepcopy(doc)), sort_keys=False)
        write(f"pd/{PROFILE}.yaml", text)(work, env)

    return setup


def inventory(edit: Callable[[Any], Any] | None = None, rel: str = "inv.json") -> Setup:
    """A valid saved inventory (4x A100-64GB) with `edit` applied to its JSON."""

    def setup(work: Path, env: Env) -> None:
        if edit is None:
            write(rel, env.inventory)(work, env)
            return
        text = json.dumps(edit(json.loads(env.inventory)), indent=2)
        write(rel, text)(work, env)

    return setup


def compose(edit: Callable[[Any], Any] | None = None, text: str | None = None) -> Setup:
    """cs/: a copy of the rendered stack whose docker-compose.yml was edited by hand."""

    def setup(work: Path, env: Env) -> None:
        stack("cs")(work, env)
        path = work / "cs" / "docker-compose.yml"
        if text is not None:
            path.write_text(text, encoding="utf-8")
        elif edit is not None:
            doc = edit(yaml.safe_load(path.read_text(encoding="utf-8")))
            path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")

    return setup


def xml_fixture(rel: str, keep: int | None = None) -> Setup:
    def setup(work: Path, env: Env) -> None:
        data = fixture_path(*XML_FIXTURE).read_bytes()
        write(rel, data if keep is None else data[:keep])(work, env)

    return setup


def edit_file(rel: str, old: str, new: str) -> Setup:
    def setup(work: Path, env: Env) -> None:
        path = work / rel
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{rel} lacks {old!r}"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    return setup


def remove(rel: str) -> Setup:
    def setup(work: Path, env: Env) -> None:
        (work / rel).unlink()

    return setup


OLLAMA0 = "services.ollama-0"
DEVICE0 = f"{OLLAMA0}.deploy.resources.reservations.devices.0"

# --- the corpus -----------------------------------------------------------------------------------

PLAN_PD = ("plan", "--profile", PROFILE, "--profiles-dir", "pd", "--reference")
RENDER_PD = ("render", "--profile", PROFILE, "--profiles-dir", "pd", "--reference", "-o", "stack")
RENDER_REF = ("render", "--profile", PROFILE, "--reference", "-o", "stack")
SHIPPED = f"profiles/{PROFILE}.yaml"
PD_FILE = f"pd/{PROFILE}.yaml"
UP_CS = ("up", "-C", "cs", "--no-wait")
CS_FILE = "cs/docker-compose.yml"


def _profile_cases() -> list[Case]:
    def c(
        id: str,
        edit: Callable[[Any], Any],
        *expect: str,
        args: tuple[str, ...] = RENDER_PD,
        **kw: Any,
    ) -> Case:
        return Case(id, args, 2, (PD_FILE, *expect), (stack(), profile(edit)), **kw)

    svc = "services.ollama"
    return [
        c(
            "profile-port-not-int",
            setp(f"{svc}.port", "eleven"),
            f"{svc}.port",
            "'eleven'",
            sub=True,
        ),
        c("profile-gpu-count-not-int", setp(f"{svc}.gpu.count", "two"), f"{svc}.gpu.count"),
        c("profile-headroom-not-number", setp("planner.headroom", "x"), "planner.headroom"),
        c("profile-headroom-too-big", setp("planner.headroom", 5), "planner.headroom", "0.9"),
        c("profile-replicas-float", setp(f"{svc}.gpu.replicas", 2.0), f"{svc}.gpu.replicas"),
        c("profile-unknown-key-top", setp("bogus", 1), "(top level)", "unknown key 'bogus'"),
        c("profile-unknown-key-service", setp(f"{svc}.bogus", 1), svc, "'bogus'"),
        c("profile-unknown-key-gpu", setp(f"{svc}.gpu.bogus", 1), f"{svc}.gpu", "'bogus'"),
        c("profile-unknown-key-health", setp(f"{svc}.health.bogus", 1), f"{svc}.health"),
        c("profile-unknown-key-cpu", setp(f"{svc}.cpu.bogus", 1), f"{svc}.cpu", "'bogus'"),
        c(
            "profile-unknown-key-reference-gpu",
            setp("reference.gpus.0.bogus", 1),
            "reference.gpus[0]",
            "'bogus'",
            args=PLAN_PD,
        ),
        c("profile-missing-reference", delp("reference"), "'reference' is required"),
        c("profile-missing-images", delp("images"), "'images' is required", args=PLAN_PD),
        c("profile-missing-services", delp("services"), "'services' is required"),
        c("profile-missing-kind", delp(f"{svc}.kind"), svc, "'kind' is required"),
        c("profile-missing-image", delp(f"{svc}.image"), svc, "'image' is required"),
        c("profile-missing-port", delp(f"{svc}.port"), svc, "'port' is required", args=PLAN_PD),
        c(
            "profile-impossible-vram",
            both(  # gpu.vram_mib sizes the preferred models; the alternatives must go too
                setp(f"{svc}.gpu", {"vram_mib": 999999, "on_short": "refuse"}),
                setp(f"{svc}.alternatives", [[{"name": "huge", "vram_mib": 999999}]]),
            ),
            "ollama",
            "999999 MiB",
            sub=True,
        ),
        c(
            "profile-duplicate-route",
            both(
                setp("services.second", {"kind": "http", "image": "nginx", "port": 80}),
                setp("services.second.route", "/"),
            ),
            "services.second.route",
            "already the route of services.ollama",
        ),
        c("profile-unknown-image-key", setp(f"{svc}.image", "nope"), f"{svc}.image", "'nope'"),
        c("profile-unknown-cpu-image", setp(f"{svc}.cpu.image", "nope"), f"{svc}.cpu.image"),
        c("profile-unknown-gateway-image", setp("gateway.image", "nope"), "gateway.image"),
        c("profile-bad-image-ref", setp("images.ollama", "Not An Image!"), "images.ollama"),
        c(
            "profile-depends-on-unknown",
            setp(f"{svc}.depends_on", ["ghost"]),
            f"{svc}.depends_on",
            "'ghost'",
        ),
        c("profile-depends-on-itself", setp(f"{svc}.depends_on", ["ollama"]), "itself"),
        c(
            "profile-undeclared-volume",
            setp(f"{svc}.volumes", ["ghost:/data"]),
            f"{svc}.volumes[0]",
            "'ghost'",
        ),
        c("profile-gateway-port-range", setp("gateway.port", 70000), "gateway.port", "65535"),
        c("profile-is-a-list", lambda d: [d], "must be a YAML mapping", args=PLAN_PD),
        c("profile-non-string-key", setp(f"{svc}.gpu", {1: 2}), f"{svc}.gpu", "key 1"),
        c(
            "profile-name-mismatch",
            setp("name", "other-name"),
            "name",
            "'other-name'",
            "'ollama-replicas'",
        ),
        Case(
            "profile-empty-file",
            PLAN_PD,
            2,
            (PD_FILE, "must be a YAML mapping"),
            (write(f"pd/{PROFILE}.yaml", ""),),
        ),
        Case(
            "profile-invalid-yaml",
            RENDER_PD,
            2,
            (PD_FILE, "invalid YAML", "line 3"),
            (stack(), write(f"pd/{PROFILE}.yaml", "schema: x\nservices:\n\ta: 1\nname: y\n")),
        ),
        Case(
            "profile-not-utf8",
            PLAN_PD,
            2,
            (PD_FILE, "not UTF-8"),
            (write(f"pd/{PROFILE}.yaml", b"name: \xff\xfe\n"),),
        ),
        Case(
            "profile-by-path-invalid-yaml",
            ("plan", "--profile", "mine/broken.yaml", "--reference"),
            2,
            ("mine/broken.yaml", "invalid YAML"),
            (write("mine/broken.yaml", "a: b: c\n"),),
        ),
        Case(
            "profile-by-path-missing",
            ("render", "--profile", "mine/absent.yaml", "--reference", "-o", "stack"),
            2,
            ("mine/absent.yaml", "no such file"),
            (stack(),),
        ),
        Case(
            "profiles-dir-missing",
            ("plan", "--profile", PROFILE, "--profiles-dir", "nodir", "--reference"),
            2,
            ("nodir", "does not exist"),
        ),
        Case(
            "profile-unknown-name",
            ("render", "--profile", "no-such-profile", "--reference", "-o", "stack"),
            2,
            ("unknown profile 'no-such-profile'", "ollama-replicas"),
            (stack(),),
            sub=True,
        ),
    ]


def _override_cases() -> list[Case]:
    def c(id: str, opts: tuple[str, ...], *expect: str, **kw: Any) -> Case:
        setup = kw.pop("setup", ())
        return Case(id, (*RENDER_REF, *opts), 2, expect, (stack(), *setup), **kw)

    return [
        c("set-no-equals", ("--set", "planner.headroom"), "--set", "expected KEY=VALUE"),
        c("set-empty-key", ("--set", "=0.2"), "--set '=0.2'", "expected KEY=VALUE"),
        c("set-empty-part", ("--set", "planner..headroom=1"), "empty part", "'planner..headroom'"),
        c("set-through-scalar", ("--set", "name.x=1"), "--set 'name.x=1'", "name is a str"),
        c(
            "set-through-list",
            ("--set", "reference.gpus.x=1"),
            "reference.gpus is a list",
            sub=True,
        ),
        c("set-newline-in-key", ("--set", "name.x\ny=1"), "--set 'name.x\\ny=1'", "name is a str"),
        c(
            "values-path-with-newline",
            ("--values", "no\nsuch.yaml"),
            "no",
            "such.yaml",
            "no such file",
        ),
        c("set-breaks-schema", ("--set", "services.ollama.port=eleven"), "services.ollama.port"),
        c("set-breaks-enum", ("--set", "services.ollama.gpu.on_short=maybe"), "on_short", "maybe"),
        c("set-float-count", ("--set", "services.ollama.gpu.count=2.0"), "gpu.count", "2.0"),
        c("set-list-value", ("--set", "services.ollama.models=[1]"), "single value"),
        c("set-unknown-key", ("--set", "services.ollama.bogus=1"), SHIPPED, "'bogus'"),
        c("image-no-equals", ("--image", "ollama"), "--image 'ollama'", "KEY=IMAGE"),
        c("image-empty-image", ("--image", "ollama="), "--image 'ollama='", "KEY=IMAGE"),
        c("image-unknown-key", ("--image", "vllm=x/y:1"), "no image key 'vllm'", "ollama"),
        c("image-bad-reference", ("--image", "ollama=Bad Image"), "images.ollama", "Bad Image"),
        c("values-missing", ("--values", "nope.yaml"), "nope.yaml", "no such file"),
        c(
            "values-not-mapping",
            ("--values", "v.yaml"),
            "v.yaml",
            "must hold a mapping",
            setup=(write("v.yaml", "- a\n- b\n"),),
        ),
        c(
            "values-invalid-yaml",
            ("--values", "v.yaml"),
            "v.yaml",
            "invalid YAML",
            setup=(write("v.yaml", "planner: {headroom: 0.2\n"),),
            sub=True,
        ),
        c("values-endless-device", ("--values", "/dev/zero"), "/dev/zero", "larger than"),
        c(
            "values-nested-too-deeply",
            ("--values", "v.yaml"),
            "v.yaml",
            "nested too deeply",
            setup=(write("v.yaml", "a: " + "[" * 20000),),
        ),
        c("values-directory", ("--values", "vdir"), "vdir", "directory", setup=(mkdir("vdir"),)),
        c(
            "values-breaks-schema",
            ("--values", "v.yaml"),
            "planner.headroom",
            setup=(write("v.yaml", "planner: {headroom: lots}\n"),),
        ),
        c("bind-not-an-address", ("--bind", "localhost:80"), "--bind", "not an IP address"),
    ]


def _inventory_cases() -> list[Case]:
    def c(id: str, args: tuple[str, ...], setup: Iterable[Setup], *expect: str, **kw: Any) -> Case:
        return Case(id, args, kw.pop("code", 2), expect, (stack(), *setup), **kw)

    detect = ("detect", "--from", "inv.json")
    plan = ("plan", "--profile", PROFILE, "--inventory", "inv.json")
    render = ("render", "--profile", PROFILE, "--inventory", "inv.json", "-o", "stack")
    profiles = ("profiles", "--inventory", "inv.json")
    g0 = "gpus.0"
    return [
        c(
            "inv-truncated",
            detect,
            [write("inv.json", '{"schema": "composegen/inv')],
            "inv.json",
            "not valid JSON",
            sub=True,
        ),
        c("inv-wrong-schema", plan, [inventory(setp("schema", "v0"))], "inv.json", "'v0'"),
        c("inv-missing-source", detect, [inventory(delp("source"))], "inv.json", "source: missing"),
        c(
            "inv-wrong-type",
            render,
            [inventory(setp(f"{g0}.memory_total_mib", "lots"))],
            "inv.json",
            "gpus[0].memory_total_mib",
            "expected an integer",
        ),
        c(
            "inv-index-bool",
            plan,
            [inventory(setp(f"{g0}.index", True))],
            "inv.json",
            "gpus[0].index",
        ),
        c(
            "inv-gpus-not-list",
            profiles,
            [inventory(setp("gpus", {"0": {}}))],
            "inv.json",
            "gpus: expected a list",
        ),
        c("inv-gpu-not-object", detect, [inventory(setp("gpus", [1]))], "inv.json", "gpus[0]"),
        c(
            "inv-negative-memory",
            render,
            [inventory(setp(f"{g0}.memory_total_mib", -65536))],
            "inv.json",
            "gpus[0].memory_total_mib",
            "negative",
        ),
        c(
            "inv-negative-index",
            plan,
            [inventory(setp(f"{g0}.index", -1))],
            "inv.json",
            "gpus[0].index",
            "negative",
        ),
        c(
            "inv-negative-mig-memory",
            detect,
            [inventory(setp(f"{g0}.mig_devices", [{"index": 0, "memory_total_mib": -1}]))],
            "inv.json",
            "gpus[0].mig_devices[0].memory_total_mib",
        ),
        c(
            "inv-nan-power",
            detect,
            [inventory(setp(f"{g0}.power_draw_w", float("nan")))],
            "inv.json",
            "gpus[0].power_draw_w",
            "finite",
        ),
        c("inv-unknown-key", plan, [inventory(setp(f"{g0}.vram", 1))], "inv.json", "'vram'"),
        c(
            "inv-bad-health",
            detect,
            [inventory(setp(f"{g0}.health", "sick"))],
            "inv.json",
            "gpus[0].health",
            "'sick'",
        ),
        c(
            "inv-top-level-list",
            detect,
            [write("inv.json", "[1, 2, 3]\n")],
            "inv.json",
            "not an nvidia-smi output",
        ),
        c(
            "inv-deeply-nested",
            plan,
            [write("inv.json", '{"a": ' + "[" * 50000)],
            "inv.json",
            "nested too deeply",
        ),
        c(
            "inv-huge-integer",
            detect,
            [write("inv.json", '{"schema": "composegen/inventory/v1", "n": ' + "9" * 5000 + "}")],
            "inv.json",
            "not valid JSON",
        ),
        c(
            "inv-binary",
            render,
            [write("inv.json", b"\x7fELF\x02\x01\x01\x00\x00\x00")],
            "inv.json",
            "binary",
            sub=True,
        ),
        c(
            "inv-latin1",
            detect,
            [write("inv.json", b"index,name\n0,Caf\xe9\n")],
            "inv.json",
            "not UTF-8",
        ),
        c("inv-empty", plan, [write("inv.json", "")], "inv.json", "is empty"),
        c("inv-whitespace-only", detect, [write("inv.json", " \n\t\n")], "inv.json", "is empty"),
        c("inv-directory", detect, [mkdir("inv.json")], "inv.json", "is a directory"),
        c("inv-missing", profiles, [], "inv.json", "no such file"),
        c("inv-endless-device", (*detect[:2], "/dev/zero"), [], "/dev/zero", "too large"),
        c("inv-random-device", (*plan[:4], "/dev/urandom"), [], "/dev/urandom", "too large"),
        c(
            "inv-csv-missing-column",
            detect,
            [write("inv.json", "index, name, uuid\n0, A100, GPU-1\n")],
            "inv.json",
            "lacks required column 'memory.total'",
        ),
        c(
            "inv-csv-negative-memory",
            plan,
            [write("inv.json", "index, name, uuid, memory.total [MiB]\n0, A100, GPU-1, -5 MiB\n")],
            "inv.json",
            "row 2",
            "memory.total",
            "negative",
        ),
        c(
            "inv-csv-huge-number",
            detect,
            [
                write(
                    "inv.json",
                    "index, name, uuid, memory.total [MiB]\n0, A, GPU-1, " + "9" * 400 + "\n",
                )
            ],
            "inv.json",
            "row 2",
            "memory.total",
            "not a number",
        ),
        c(
            "inv-xml-truncated",
            render,
            [xml_fixture("inv.json", keep=1500)],
            "inv.json",
            "truncated XML",
        ),
        c(
            "inv-xml-wrong-root",
            detect,
            [write("inv.json", "<?xml version='1.0'?><log/>\n")],
            "inv.json",
            "root element is <log>",
        ),
        c(
            "inv-not-nvidia",
            plan,
            [write("inv.json", "hello world\n")],
            "inv.json",
            "not an nvidia-smi output",
        ),
        c(
            "inventory-and-reference",
            (*plan, "--reference"),
            [inventory()],
            "--inventory and --reference exclude each other",
        ),
        # control characters in a saved inventory's strings would reach rendered files
        c(
            "inv-source-newline",
            render,
            [inventory(setp("source", "nvml\nservices: {evil: {image: busybox}}"))],
            "inv.json",
            "source",
            "control character '\\n'",
        ),
        c(
            "inv-source-line-separator",
            detect,
            [inventory(setp("source", "nvml\u2028x"))],
            "inv.json",
            "source",
            "control character '\\u2028'",
        ),
        c(
            "inv-gpu-name-escape",
            plan,
            [inventory(setp(f"{g0}.name", "NVIDIA A100-SXM4-64GB\x1b[2J"))],
            "inv.json",
            "gpus[0].name",
            "control character '\\x1b'",
        ),
        c(
            "inv-gpu-uuid-newline",
            render,
            [inventory(setp(f"{g0}.uuid", "GPU-5b1e8c4a\n    privileged: true"))],
            "inv.json",
            "gpus[0].uuid",
            "control character '\\n'",
        ),
        c(
            "inv-mig-uuid-cr",
            profiles,
            [inventory(setp(f"{g0}.mig_devices", [{"index": 0, "uuid": "MIG-1\rMIG-2"}]))],
            "inv.json",
            "gpus[0].mig_devices[0].uuid",
            "control character '\\r'",
        ),
        c(
            "inv-health-reason-escape",
            detect,
            [inventory(setp(f"{g0}.health_reason", "lost\x1b]0;title\x07"))],
            "inv.json",
            "gpus[0].health_reason",
            "control character '\\x1b'",
        ),
    ]


def _gpu_id_cases() -> list[Case]:
    fb = ("fallback", "-C", "stack", "--dry-run")
    return [
        Case(
            "gpu-failed-index-unknown",
            (*fb, "--gpu-failed", "99"),
            2,
            ("--gpu-failed", "GPU 99", "0, 1, 2, 3"),
            (stack(),),
            sub=True,
        ),
        Case(
            "gpu-failed-uuid-unknown",
            (*fb, "--gpu-failed", "GPU-nope"),
            2,
            ("--gpu-failed", "'GPU-nope'"),
            (stack(),),
        ),
        Case(
            "gpu-failed-empty-id",
            (*fb, "--gpu-failed", "0,,1"),
            2,
            ("--gpu-failed '0,,1'", "empty GPU id"),
            (stack(),),
        ),
        Case(
            "gpu-failed-negative",
            (*fb, "--gpu-failed", "-1"),
            2,
            ("--gpu-failed", "'-1'"),
            (stack(),),
        ),
        Case(
            "fallback-two-modes",
            (*fb, "--cpu", "--gpu-failed", "0"),
            2,
            ("exactly one of",),
            (stack(),),
        ),
        Case(
            "fallback-not-rendered",
            (*fb, "--gpu-failed", "0"),
            2,
            ("stack/.composegen/render.json", "not rendered by composegen"),
            (stack(), remove("stack/.composegen/render.json")),
        ),
        Case(
            "fallback-render-json-broken",
            (*fb, "--gpu-failed", "0"),
            2,
            ("stack/.composegen/render.json", "unreadable"),
            (stack(), write("stack/.composegen/render.json", "{\n")),
        ),
        Case(
            "fallback-render-json-negative-memory",
            (*fb, "--gpu-failed", "0"),
            2,
            ("stack/.composegen/render.json", "memory_total_mib", "negative"),
            (
                stack(),
                edit_file(
                    "stack/.composegen/render.json",
                    '"memory_total_mib": 65536',
                    '"memory_total_mib": -65536',
                ),
            ),
        ),
        Case(
            "fallback-render-json-deep",
            (*fb, "--gpu-failed", "0"),
            2,
            ("stack/.composegen/render.json",),
            (stack(), write("stack/.composegen/render.json", '{"a": ' + "[" * 50000)),
        ),
        Case(
            "fallback-render-json-set-not-text",
            (*fb, "--gpu-failed", "0"),
            2,
            ("stack/.composegen/render.json", "sets"),
            (stack(), edit_file("stack/.composegen/render.json", '"sets": []', '"sets": [1]')),
        ),
        Case(
            "pin-by-uuid-on-reference",
            ("plan", "--profile", PROFILE, "--reference", "--pin-by", "uuid"),
            2,
            ("--pin-by uuid", "unique UUID"),
        ),
        Case(
            "pin-by-uuid-on-reference-render",
            (*RENDER_REF, "--pin-by", "uuid"),
            2,
            ("--pin-by uuid", "unique UUID"),
            (stack(),),
        ),
    ]


def _output_cases() -> list[Case]:
    render_to = ("render", "--profile", PROFILE, "--reference", "-o")
    return [
        Case(
            "output-under-a-file",
            (*render_to, "somefile/sub"),
            2,
            ("somefile/sub", "not a directory"),
            (write("somefile", "x\n"),),
            sub=True,
        ),
        Case(
            "output-under-proc-file",
            (*render_to, "/proc/version/x"),
            2,
            ("/proc/version/x", "not a directory"),
        ),
        Case(
            "save-under-a-file",
            ("detect", "--from", "inv.json", "--save", "somefile/x.json"),
            2,
            ("somefile/x.json", "somefile is not a directory"),
            (inventory(), write("somefile", "x\n")),
        ),
        Case(
            "save-under-proc-file",
            ("detect", "--from", "inv.json", "--save", "/proc/version/x"),
            2,
            ("/proc/version/x", "not a directory"),
            (inventory(),),
        ),
        Case(
            "save-disk-full",
            ("detect", "--from", "inv.json", "--save", "/dev/full"),
            1,
            ("/dev/full", "No space left"),
            (inventory(),),
        ),
        Case(
            "save-disk-full-json",
            ("detect", "--from", "inv.json", "--json", "--save", "/dev/full"),
            1,
            ("/dev/full", "No space left"),
            (inventory(),),
        ),
        Case(
            "render-over-hand-edit",
            ("render", "--profile", PROFILE, "--inventory", "inv.json", "-o", "stack"),
            2,
            ("stack/docker-compose.yml", "edited by hand", "--force"),
            (
                stack(),
                inventory(),
                edit_file("stack/docker-compose.yml", "restart: unless-stopped", "restart: always"),
            ),
        ),
        Case(
            "render-broken-manifest",
            ("render", "--profile", PROFILE, "--inventory", "inv.json", "-o", "stack"),
            2,
            ("stack/.composegen/manifest.json", "not a composegen manifest"),
            (stack(), inventory(), write("stack/.composegen/manifest.json", "[]\n")),
        ),
        Case(
            "render-output-is-a-file",
            (*render_to, "somefile"),
            2,
            ("somefile", "directory"),
            (write("somefile", "x\n"),),
        ),
        Case(
            "save-to-a-directory",
            ("detect", "--from", "inv.json", "--save", "sdir"),
            2,
            ("sdir", "directory"),
            (inventory(), mkdir("sdir")),
        ),
    ]


def _compose_cases() -> list[Case]:
    def c(id: str, edit: Callable[[Any], Any], *expect: str, **kw: Any) -> Case:
        args = kw.pop("args", UP_CS)
        return Case(id, args, 2, (CS_FILE, *expect), (compose(edit),), **kw)

    def t(id: str, text: str, *expect: str, **kw: Any) -> Case:
        return Case(id, UP_CS, 2, (CS_FILE, *expect), (compose(text=text),), **kw)

    env_x = f"{OLLAMA0}.environment.X"
    return [
        t("compose-invalid-yaml", "services:\n  a: [\n", "invalid YAML", sub=True),
        t("compose-control-char", 'services:\n  a:\n    image: "\x01"\n', "invalid YAML"),
        t("compose-nested-too-deeply", "services: " + "[" * 20000, "invalid YAML"),
        c("compose-no-services", delp("services"), "no services"),
        c("compose-services-list", setp("services", ["a"]), "no services"),
        c("compose-privileged", setp(f"{OLLAMA0}.privileged", True), f"{OLLAMA0}.privileged"),
        c("compose-build", setp(f"{OLLAMA0}.build", "."), f"{OLLAMA0}.build", sub=True),
        c(
            "compose-network-mode",
            setp(f"{OLLAMA0}.network_mode", "host"),
            f"{OLLAMA0}.network_mode",
        ),
        c("compose-top-level-configs", setp("configs", {}), "top-level key 'configs'"),
        c(
            "compose-count-and-device-ids",
            setp(f"{DEVICE0}.count", 1),
            "devices[0]",
            "count and device_ids",
        ),
        c(
            "compose-device-count-text",
            both(delp(f"{DEVICE0}.device_ids"), setp(f"{DEVICE0}.count", "two")),
            "devices[0].count",
            "'two'",
        ),
        c(
            "compose-device-not-mapping",
            setp(f"{OLLAMA0}.deploy.resources.reservations.devices", ["nvidia"]),
            "devices[0]",
            "expected a mapping",
        ),
        c(
            "compose-depends-on-cycle",
            setp(f"{OLLAMA0}.depends_on", ["gateway"]),
            "cycle",
            "gateway",
            "ollama-0",
        ),
        c(
            "compose-depends-on-unknown",
            setp(f"{OLLAMA0}.depends_on", ["ghost"]),
            f"{OLLAMA0}.depends_on",
            "'ghost'",
        ),
        c(
            "compose-depends-on-string",
            setp(f"{OLLAMA0}.depends_on", "gateway"),
            f"{OLLAMA0}.depends_on",
        ),
        c(
            "compose-undeclared-volume",
            setp(f"{OLLAMA0}.volumes", ["ghost:/data"]),
            f"{OLLAMA0}.volumes",
            "'ghost'",
        ),
        c("compose-bad-interpolation", setp(env_x, "${X"), env_x, "invalid interpolation"),
        c(
            "compose-required-variable",
            setp(env_x, f"${{{UNSET_VAR}:?must be set}}"),
            env_x,
            UNSET_VAR,
            "must be set",
        ),
        c(
            "compose-bad-duration",
            setp(f"{OLLAMA0}.healthcheck.interval", "30 seconds"),
            f"{OLLAMA0}.healthcheck.interval",
            "'30 seconds'",
        ),
        c(
            "compose-healthcheck-list",
            setp(f"{OLLAMA0}.healthcheck", ["CMD", "true"]),
            f"{OLLAMA0}.healthcheck",
        ),
        c(
            "compose-retries-text",
            setp(f"{OLLAMA0}.healthcheck.retries", "many"),
            f"{OLLAMA0}.healthcheck.retries",
        ),
        c(
            "compose-port-range",
            setp("services.gateway.ports", ["8000-8010:8000"]),
            "services.gateway.ports[0]",
            "8000-8010:8000",
        ),
        c(
            "compose-ulimit-text",
            setp(f"{OLLAMA0}.ulimits", {"nofile": "lots"}),
            f"{OLLAMA0}.ulimits.nofile",
        ),
        c(
            "compose-ulimit-no-hard",
            setp(f"{OLLAMA0}.ulimits", {"nofile": {"soft": 1}}),
            f"{OLLAMA0}.ulimits.nofile",
            "hard",
        ),
        c(
            "compose-cpus-text",
            setp(f"{OLLAMA0}.deploy.resources.limits", {"cpus": "half"}),
            f"{OLLAMA0}.deploy.resources.limits.cpus",
        ),
        c("compose-networks-string", setp(f"{OLLAMA0}.networks", "backend"), f"{OLLAMA0}.networks"),
        c(
            "compose-network-undeclared",
            setp(f"{OLLAMA0}.networks", ["ghost"]),
            f"{OLLAMA0}.networks",
            "'ghost'",
        ),
        c("compose-top-networks-list", setp("networks", ["backend"]), "networks"),
        c(
            "compose-security-opt-string",
            setp(f"{OLLAMA0}.security_opt", "no-new-privileges"),
            f"{OLLAMA0}.security_opt",
        ),
        t(
            "compose-newline-in-key",
            'services:\n  "a\\nb": {image: x, privileged: true}\n',
            "services.a\\nb.privileged",
        ),
        t("compose-non-string-service", "services:\n  1: {image: x}\n", "services", "key 1"),
        c(
            "compose-status-privileged",
            setp(f"{OLLAMA0}.privileged", True),
            f"{OLLAMA0}.privileged",
            args=("status", "-C", "cs"),
        ),
        c(
            "compose-down-cycle",
            setp(f"{OLLAMA0}.depends_on", ["gateway"]),
            "cycle",
            args=("down", "-C", "cs"),
        ),
        Case(
            "compose-bad-dotenv",
            UP_CS,
            2,
            ("cs/.env", "expected KEY=VALUE"),
            (compose(), write("cs/.env", "COMPOSE_PROJECT_NAME=x\nnot a line\n")),
        ),
        Case(
            "compose-missing-file",
            UP_CS,
            2,
            ("cs/docker-compose.yml", "no such file"),
            (compose(), remove("cs/docker-compose.yml")),
        ),
        Case(
            "compose-endless-device",
            ("up", "-f", "/dev/zero"),
            2,
            ("/dev/zero", "larger than"),
            (compose(),),
        ),
        Case(
            "compose-C-and-f",
            ("up", "-C", "cs", "-f", "cs/docker-compose.yml"),
            2,
            ("-C and -f",),
            (compose(),),
        ),
    ]


RENDER_RAG = ("render", "--profile", "rag-a100", "--reference", "-o", "stack")


def _untrusted_value_cases() -> list[Case]:
    """Values that would reach .env, ${VAR:-default}, a `bash -c` healthcheck or nginx.conf
    (issue 9, items 4, 5 and 7): each refused when loaded, naming its source and path."""

    def c(id: str, opts: tuple[str, ...], *expect: str, **kw: Any) -> Case:
        setup = kw.pop("setup", ())
        args = kw.pop("args", RENDER_REF)
        return Case(id, (*args, *opts), 2, expect, (stack(), *setup), **kw)

    def p(id: str, edit: Callable[[Any], Any], *expect: str, **kw: Any) -> Case:
        return Case(id, RENDER_PD, 2, (PD_FILE, *expect), (stack(), profile(edit)), **kw)

    inject = "24h\\nCOMPOSE_PROJECT_NAME=other"  # YAML escape: a real newline once parsed
    tun = "tunables.OLLAMA_KEEP_ALIVE"
    return [
        p(
            "tunable-newline-in-profile",
            setp(tun, "24h\nCOMPOSE_PROJECT_NAME=other"),
            tun,
            "control character '\\n'",
            sub=True,
        ),
        c(
            "tunable-newline-in-set",
            ("--set", f'{tun}="{inject}"'),
            "--set",
            tun,
            "control character",
        ),
        c(
            "tunable-newline-in-values",
            ("--values", "v.yaml"),
            "v.yaml",
            "tunables.OLLAMA_NUM_PARALLEL",
            "control character",
            setup=(
                write("v.yaml", 'tunables: {OLLAMA_NUM_PARALLEL: "1\\nCOMPOSE_PROJECT_NAME=x"}\n'),
            ),
        ),
        c("tunable-carriage-return", ("--set", f'{tun}="24h\\r"'), "--set", "control character"),
        c("tunable-escape-char", ("--set", f'{tun}="\\e[31m"'), "--set", "control character"),
        c(
            "tunable-line-separator",
            ("--set", f'{tun}="24h\\u2028X=1"'),
            "--set",
            "control character",
        ),
        c("tunable-duration-bad", ("--set", f"{tun}=5 minutes"), tun, "not a duration", "24h"),
        c("tunable-duration-unit", ("--set", f"{tun}=5y"), "--set", tun, "not a duration"),
        c(
            "tunable-integer-word",
            ("--set", "tunables.OLLAMA_MAX_LOADED_MODELS=two"),
            "tunables.OLLAMA_MAX_LOADED_MODELS",
            "not an integer >= 0",
        ),
        c(
            "tunable-integer-negative",
            ("--set", "tunables.OLLAMA_NUM_PARALLEL=-1"),
            "tunables.OLLAMA_NUM_PARALLEL",
            "'-1' is not an integer >= 0",
        ),
        c(
            "tunable-integer-float",
            ("--set", "tunables.OLLAMA_NUM_PARALLEL=1.5"),
            "tunables.OLLAMA_NUM_PARALLEL",
            "'1.5'",
        ),
        p(
            "env-boolean-bad",
            setp("services.ollama.env.OLLAMA_NOPRUNE", "maybe"),
            "services.ollama.env.OLLAMA_NOPRUNE",
            "not a boolean",
        ),
        c(
            "tunable-fraction-bad",
            ("--set", "tunables.VLLM_GPU_MEMORY_UTILIZATION=1.5"),
            "tunables.VLLM_GPU_MEMORY_UTILIZATION",
            "fraction",
            args=RENDER_RAG,
        ),
        c("tunable-dollar", ("--set", f"{tun}=5m$HOME"), tun, "'$'"),
        c("tunable-closing-brace", ("--set", "tunables.X=a}b"), "tunables.X", "'}'"),
        c("tunable-hash", ("--set", "tunables.X=a#b"), "tunables.X", "'#'"),
        c("tunable-trailing-space", ("--set", "tunables.X='a '"), "tunables.X", "space"),
        c(
            "image-newline",
            ("--image", "ollama=local/ollama:1\n"),
            "--image",
            "images.ollama",
            "control character",
        ),
        p(
            "route-trailing-newline",
            setp("services.ollama.route", "/\n"),
            "services.ollama.route",
            "control character",
        ),
        p(
            "description-escape",
            setp("description", "fine\x1b[2Jcleared"),
            "description",
            "control character",
        ),
        c(
            "health-path-quote-and-space",
            ("--set", 'services.whisper.health.path=/h" x'),
            "--set",
            "services.whisper.health.path",
            "not a URL path",
            args=RENDER_RAG,
        ),
        c(
            "health-path-newline",
            ("--values", "v.yaml"),
            "v.yaml",
            "services.whisper.health.path",
            setup=(write("v.yaml", 'services: {whisper: {health: {path: "/h\\nx"}}}\n'),),
            args=RENDER_RAG,
        ),
        c(
            "health-path-no-slash",
            ("--set", "services.whisper.health.path=health"),
            "services.whisper.health.path",
            "not a URL path",
            args=RENDER_RAG,
        ),
    ]


CASES = (
    _profile_cases()
    + _untrusted_value_cases()
    + _override_cases()
    + _inventory_cases()
    + _gpu_id_cases()
    + _output_cases()
    + _compose_cases()
)


def _params() -> list[Any]:
    out = []
    for case in CASES:
        marks = list(case.marks)
        if case.xfail:
            marks.append(pytest.mark.xfail(reason=case.xfail, strict=True))
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


# --- running a case -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """`render --profile ollama-replicas --inventory <a100_4x64>` once, as the template stack."""
    base = tmp_path_factory.mktemp("bad-input-template")
    inv_text = scenario_inventory("a100_4x64").to_json()
    inv_path = base / "inventory-a100_4x64.json"
    inv_path.write_text(inv_text, encoding="utf-8")
    out = base / "stack"
    built = app.build(PROFILE, inventory=str(inv_path))
    app.write(out, built.files, force=False, dry_run=False)
    assert built.inputs is not None
    app.save_inputs(out, built.inputs)
    return Env(stack=out, inventory=inv_text)


Snapshot = dict[str, tuple[str, int, bytes]]


def snapshot(root: Path) -> Snapshot:
    """Every path under root -> (kind, permission bits, content or link target)."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p).encode())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def _call(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _dev_full_ok() -> bool:
    try:
        return stat.S_ISCHR(os.stat("/dev/full").st_mode)
    except OSError:
        return False


@pytest.mark.parametrize("case", _params())
def test_bad_input(
    case: Case,
    env: Env,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uses_dev_full = "/dev/full" in case.args
    if uses_dev_full:
        if not _dev_full_ok():
            pytest.skip("/dev/full is not a character device here")
        # Tests run as root in CI: a writer that renamed a temp file over /dev/full would
        # replace the device node itself. Refuse that here, so a regression fails the case
        # instead of breaking the machine (these cases run in-process for this reason).
        real_replace = os.replace

        def guarded(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
            if os.fspath(dst).startswith("/dev/"):
                raise AssertionError(f"would replace the device node {dst}")
            real_replace(src, dst, *a, **kw)

        monkeypatch.setattr(os, "replace", guarded)
        assert not case.sub
    work = tmp_path / "work"
    work.mkdir()
    for setup in case.setup:
        setup(work, env)
    before = snapshot(work)

    monkeypatch.chdir(work)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine-here.sock")
    monkeypatch.setenv("COMPOSEGEN_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("COMPOSEGEN_DEBUG", "COMPOSEGEN_PROFILES_PATH", "COMPOSE_PROJECT_NAME", UNSET_VAR):
        monkeypatch.delenv(var, raising=False)

    if case.sub:
        proc = run_cli(*case.args, cwd=work)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        code, out, err = _call(list(case.args), capsys)

    shown = f"composegen {' '.join(case.args)}\nexit {code}\nstderr: {err!r}\nstdout: {out[:500]!r}"
    assert "Traceback" not in err + out, shown
    assert err.startswith("composegen: error: "), shown
    assert err.endswith("\n") and err.count("\n") == 1, shown
    assert code == case.code, shown
    for want in case.expect:
        assert want in err, f"{want!r} not in the error line\n{shown}"
    assert out == "", f"stdout should be empty\n{shown}"
    after = snapshot(work)
    assert sorted(after) == sorted(before), f"files appeared or vanished\n{shown}"
    changed = [p for p in before if before[p] != after[p]]
    assert not changed, f"changed: {changed}\n{shown}"
    if uses_dev_full:
        assert _dev_full_ok(), "/dev/full is no longer a character device"


def test_corpus_is_big_and_names_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 60
    assert sum(1 for c in CASES if c.sub) >= 8
