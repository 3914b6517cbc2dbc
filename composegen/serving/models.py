"""Pure: what each model store of a rendered stack must hold.

`render` labels every service that reads models (docker-compose.yml and the CPU variant's
fallback/docker-compose.cpu.yml alike):

  io.composegen.models           the models it runs (comma list)
  io.composegen.model-source     ollama | huggingface
  io.composegen.model-store      the store's directory inside the container (OLLAMA_MODELS, or
                                 the Hugging Face hub cache)
  io.composegen.model-aliases    REAL=PUBLIC,... `ollama cp` aliases a stand-in store needs
  io.composegen.model-revisions  REPO@REVISION,... (Hugging Face)
  io.composegen.fetch-image      the image of the Hugging Face fetch container (profile key
                                 hf-fetch)

From those labels and the service's mounts this module computes one `Store` per (source,
volume, directory inside the volume): a store that replicas share, or that the GPU service
and its CPU variant share, is listed (and so fetched) once, with the union of their models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

L = "io.composegen."
SOURCES = ("ollama", "huggingface")


@dataclass(frozen=True)
class Member:
    """One service of a compose file, as far as its models are concerned."""

    name: str
    mode: str  # gpu | cpu (the file it is in)
    image: str
    labels: Mapping[str, str]
    mounts: tuple[tuple[str, str], ...]  # (named volume, target); bind mounts are left out
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Want:
    name: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.revision}" if self.revision else self.name


@dataclass(frozen=True)
class Store:
    source: str  # ollama | huggingface
    volume: str  # the compose volume (without the project prefix)
    subpath: str  # the store's directory inside the volume ("" = its root)
    mount: str  # where the first service mounts the volume
    path: str  # the store's directory inside that service's container
    image: str  # Ollama: the service's image; Hugging Face: the fetch image ("" = none)
    models: tuple[Want, ...]
    aliases: tuple[tuple[str, str], ...] = ()  # (real, public): `ollama cp real public`
    services: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    keep_alive: str | None = None  # Ollama: the services' OLLAMA_KEEP_ALIVE
    users: tuple[tuple[str, tuple[str, ...]], ...] = ()  # model -> the services that run it

    def services_of(self, model: str) -> tuple[str, ...]:
        """The services that run `model` (all the store's when it is none of them)."""
        return dict(self.users).get(model) or self.services

    @property
    def where(self) -> str:
        return f"{self.volume}:/{self.subpath}" if self.subpath else f"{self.volume}:/"


@dataclass(frozen=True)
class Skipped:
    service: str
    why: str


@dataclass(frozen=True)
class ModelPlan:
    stores: tuple[Store, ...]
    skipped: tuple[Skipped, ...] = ()

    def of_service(self, name: str) -> list[Store]:
        return [s for s in self.stores if name in s.services]


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def ollama_name(name: str) -> str:
    """Ollama's full name of a model: `llama3.2` is `llama3.2:latest`."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _locate(path: str, mounts: Iterable[tuple[str, str]]) -> tuple[str, str, str] | None:
    """(volume, directory inside it, mount target) of a path in the container: the deepest
    mount that holds it."""
    best: tuple[str, str, str] | None = None
    norm = "/" + path.strip("/")
    for volume, target in mounts:
        t = "/" + target.strip("/")
        inside = norm == t or norm.startswith(t.rstrip("/") + "/")
        if inside and (best is None or len(t) > len(best[2])):
            best = (volume, norm[len(t) :].strip("/"), t)
    return best


def plan_models(members: Iterable[Member]) -> ModelPlan:
    stores: dict[tuple[str, str, str], dict[str, Any]] = {}
    skipped: list[Skipped] = []
    for m in members:
        source = m.labels.get(L + "model-source", "")
        if source not in SOURCES:
            continue
        names = _split(m.labels.get(L + "models", ""))
        if not names:
            continue
        path = m.labels.get(L + "model-store", "")
        where = _locate(path, m.mounts) if path else None
        if where is None:
            skipped.append(
                Skipped(m.name, f"its model store {path or '(none)'} is not on a named volume")
            )
            continue
        volume, sub, target = where
        revisions = dict(r.split("@", 1) for r in _split(m.labels.get(L + "model-revisions", "")))
        key = (source, volume, sub)
        image = m.image if source == "ollama" else m.labels.get(L + "fetch-image", "")
        s = stores.setdefault(
            key,
            {
                "mount": target,
                "path": "/" + path.strip("/"),
                "image": image,
                "models": [],
                "aliases": [],
                "services": [],
                "modes": [],
                "keep_alive": None,
                "users": {},
            },
        )
        s["image"] = s["image"] or image
        for n in names:
            want = Want(n, revisions.get(n))
            if want not in s["models"]:
                s["models"].append(want)
            users = s["users"].setdefault(n, [])
            if m.name not in users:
                users.append(m.name)
        for pair in _split(m.labels.get(L + "model-aliases", "")):
            real, _, public = pair.partition("=")
            if public and (real, public) not in s["aliases"]:
                s["aliases"].append((real, public))
        if m.name not in s["services"]:
            s["services"].append(m.name)
        if m.mode not in s["modes"]:
            s["modes"].append(m.mode)
        if source == "ollama" and s["keep_alive"] is None:
            s["keep_alive"] = m.environment.get("OLLAMA_KEEP_ALIVE") or None
    out = [
        Store(
            source=src,
            volume=vol,
            subpath=sub,
            mount=s["mount"],
            path=s["path"],
            image=s["image"],
            models=tuple(s["models"]),
            aliases=tuple(s["aliases"]),
            services=tuple(s["services"]),
            modes=tuple(s["modes"]),
            keep_alive=s["keep_alive"],
            users=tuple((k, tuple(v)) for k, v in s["users"].items()),
        )
        for (src, vol, sub), s in stores.items()
    ]
    return ModelPlan(tuple(out), tuple(skipped))


def members_of_project(project: Any, mode: str) -> list[Member]:
    """The services of a loaded compose file (composegen.engine.compose.Project)."""
    return [
        Member(
            name=svc.name,
            mode=mode,
            image=svc.image,
            labels=dict(svc.labels),
            mounts=tuple((mt.source, mt.target) for mt in svc.mounts if not mt.bind),
            environment=dict(svc.environment),
        )
        for svc in project.services
    ]


def members_of_compose(data: Mapping[str, Any], mode: str) -> list[Member]:
    """The services of compose data as `render` builds it (before Compose reads `$$`)."""
    out = []
    for name, block in (data.get("services") or {}).items():
        mounts = []
        for v in block.get("volumes") or []:
            parts = str(v).split(":")
            if len(parts) >= 2 and not parts[0].startswith((".", "/", "~")):
                mounts.append((parts[0], parts[1]))
        labels = {k: str(v).replace("$$", "$") for k, v in (block.get("labels") or {}).items()}
        env = {k: str(v) for k, v in (block.get("environment") or {}).items()}
        out.append(Member(name, mode, str(block.get("image", "")), labels, tuple(mounts), env))
    return out


def stack_models(gpu: Iterable[Member], cpu: Iterable[Member] = ()) -> ModelPlan:
    """The stores of the GPU file and of the CPU variant's file together: `fallback --cpu`
    must find its models on disk, as the backends cannot download."""
    return plan_models([*gpu, *cpu])
