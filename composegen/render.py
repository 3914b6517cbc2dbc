"""Pure: Plan + Profile -> the files of a stack, as text.

The compose files are built as data and dumped with PyYAML (quoting stays right: "on", "0",
"$$"); nginx.conf, .env, STACK.md and the scripts come from the Jinja2 templates in templates/.
The same inputs always give byte-identical files.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from composegen import __version__
from composegen.errors import BadInputError
from composegen.files import OutFile
from composegen.plan import NOMINAL_SHARE_PCT, Instance, Plan
from composegen.profile_checks import HEALTH_PATH, public_name
from composegen.profiles import Model, Profile, Service

_REF = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
API_KEY_VAR = "COMPOSEGEN_API_KEY"
NGINX_DIR = "/etc/nginx/composegen"


# healthcheck start_interval: Docker checks this often during start_period, so its own health
# turns "healthy" about when composegen has proven the service ready, not one interval later
START_INTERVAL = "1s"
START_INTERVAL_API = (1, 44)  # Engine API 1.44 (Docker 25); Compose v2 refuses it before that


@dataclass(frozen=True)
class RenderOptions:
    bind: str = "127.0.0.1"
    # render healthcheck start_interval: only for an engine known to take it. Compose v2 refuses
    # the whole file on an older engine ("can't set healthcheck.start_interval as feature
    # require Docker Engine v25 or later") and Compose v1 refuses the key everywhere, so a stack
    # for an unknown or older engine leaves it out.
    start_interval: bool = False


def engine_takes_start_interval(inventory: Any) -> bool:
    """Whether the inventory's Docker engine (detect's) speaks API 1.44 or later."""
    host = getattr(inventory, "host", None)
    docker = getattr(host, "docker", None)
    version = str(getattr(docker, "api_version", None) or "")
    try:
        have = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return len(have) == 2 and have >= START_INTERVAL_API


def with_start_interval(compose: dict[str, Any], opts: RenderOptions) -> dict[str, Any]:
    """Every healthcheck of the file with start_interval, where opts ask for it and the check
    has a start_period for it to apply to (Compose v2 refuses start_interval without one)."""
    if not opts.start_interval:
        return compose
    for block in (compose.get("services") or {}).values():
        check = block.get("healthcheck")
        if check and str(check.get("start_period", "0s")) not in ("0", "0s"):
            check["start_interval"] = START_INTERVAL
    return compose


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` for a comment line: control characters (a newline would end the comment and
    let an inventory file write YAML into docker-compose.yml) shown as escapes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def gateway_url(bind: str, port: int, path: str = "") -> str:
    """The URL that reaches a gateway published on `bind` from this host: an unspecified
    address (0.0.0.0, ::) is reached on 127.0.0.1, an IPv6 address is bracketed."""
    import ipaddress

    host = bind
    try:
        addr = ipaddress.ip_address(bind)
    except ValueError:
        addr = None
    if addr is not None and addr.is_unspecified:
        host = "127.0.0.1"
    elif addr is not None and addr.version == 6:
        host = f"[{addr.compressed}]"
    return f"http://{host}:{port}{path}"


# --- values -----------------------------------------------------------------------------------


def _interpolate(value: str, prof: Profile, where: str) -> str:
    """`${VAR}` naming a tunable -> `${VAR:-default}`; every other `$` is escaped as `$$`."""
    out = []
    pos = 0
    for m in _REF.finditer(value):
        out.append(value[pos : m.start()].replace("$", "$$"))
        name = m.group(1)
        if name not in prof.tunables:
            raise BadInputError(
                f"{prof.path}: {where}: ${{{name}}} is not declared under tunables:",
                f"add it to tunables with a default, or write $${{{name}}} for a literal",
            )
        default = prof.tunables[name]
        if any(c in default for c in "${}"):  # refused when the profile loads; never render it
            raise BadInputError(
                f"{prof.path}: tunables.{name}: {default!r} cannot be a ${{{name}:-default}}"
            )
        out.append(f"${{{name}:-{default}}}")
        pos = m.end()
    out.append(value[pos:].replace("$", "$$"))
    return "".join(out)


def _fill(token: str, inst: Instance) -> str:
    model = inst.models[0].name if inst.models else ""
    return (
        token.replace("{model}", model)
        .replace("{port}", str(inst.port))
        .replace("{tp}", str(inst.tensor_parallel))
    )


def health_test(svc: Service, inst: Instance) -> list[str]:
    """A check that works inside the real image: the Ollama image has no curl or wget."""
    if svc.kind == "ollama":
        return ["CMD", "ollama", "list"]
    path = svc.health.path or "/health"
    if not HEALTH_PATH.fullmatch(path):  # the profile check refuses it first; never into shell
        raise BadInputError(f"services.{svc.name}.health.path: {path!r} is not a URL path")
    # the path is an argument of printf, quoted for the shell (never part of the format), and
    # Compose reads `$` in the test as interpolation: `$$` is one literal dollar
    probe = (
        f"exec 3<>/dev/tcp/127.0.0.1/{inst.port} && "
        "printf 'GET %s HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' "
        f"{shlex.quote(path)} >&3 && "
        "head -n 1 <&3 | grep -q ' 200 '"
    )
    return ["CMD", "bash", "-c", probe.replace("$", "$$")]


# --- public model names -----------------------------------------------------------------------

OLLAMA_DEFAULT_STORE = "/root/.ollama/models"


def _served_name_args(svc: Service, inst: Instance, command: tuple[str, ...]) -> list[str]:
    """vLLM (and TEI when the model stands in for another) answer to the service's public
    model name on GPU and CPU alike: `--served-model-name PUBLIC [REAL]` (vLLM accepts several
    names and reports the first)."""
    if not inst.models or any(t.startswith("--served-model-name") for t in command):
        return []
    real = inst.models[0].name
    public = public_name(svc, inst.models[0]) or real
    server = svc.server_kind
    if server == "vllm":
        return ["--served-model-name", public] + ([real] if real != public else [])
    if server == "tei" and public != real:
        return ["--served-model-name", public]
    return []


def _needs_aliases(svc: Service, inst: Instance) -> bool:
    return any((public_name(svc, m) or m.name) != m.name for m in inst.models)


def alias_store(svc: Service, inst: Instance) -> str | None:
    """Where an Ollama instance that runs stand-in models (its CPU variant, or a smaller
    alternative on a small GPU) keeps them with `ollama cp` aliases to the public names.

    A store of its own, inside the service's store and so inside the same volume: an alias in
    the shared store would replace the real model that the other instances run. None when
    the instance runs the service's own models."""
    if svc.kind != "ollama" or not _needs_aliases(svc, inst):
        return None
    env = dict(svc.env)
    if inst.device == "cpu":
        if svc.cpu is not None:
            env.update(svc.cpu.env)
        name = "composegen-cpu"
    else:
        alts = list(svc.alternatives)
        name = f"composegen-alt{alts.index(inst.models) + 1}" if inst.models in alts else ""
        name = name or "composegen-alt"
    base = env.get("OLLAMA_MODELS") or OLLAMA_DEFAULT_STORE
    return f"{base.rstrip('/')}/{name}"


def model_names(prof: Profile, plan: Plan, cplan: Plan) -> list[dict[str, Any]]:
    """Per service: each public model name and the real model behind it on GPU and on CPU."""
    out = []
    for svc in prof.enabled_services:
        if not svc.models:
            continue
        rows: dict[str, dict[str, list[str]]] = {}
        for m in svc.models:
            rows.setdefault(m.name, {"gpu": [], "cpu": []})
        for mode, p in (("gpu", plan), ("cpu", cplan)):
            for inst in p.of_service(svc.name):
                if (inst.device == "cpu") != (mode == "cpu"):
                    continue
                for m in inst.models:
                    public = public_name(svc, m) or m.name
                    reals = rows.setdefault(public, {"gpu": [], "cpu": []})[mode]
                    if m.name not in reals:
                        reals.append(m.name)
        out.append(
            {
                "service": svc.name,
                "server": svc.server_kind,
                "has_cpu": svc.cpu is not None,
                "rows": [{"public": k, "gpu": v["gpu"], "cpu": v["cpu"]} for k, v in rows.items()],
            }
        )
    return out


def fill_commands(prof: Profile, plan: Plan, cplan: Plan) -> list[dict[str, Any]]:
    """The shell commands of STACK.md that fill the model volumes; every name in them comes
    from the profile, so every one is quoted."""
    q = shlex.quote
    out = []
    for svc in prof.enabled_services:
        if not svc.models or not svc.volumes:
            continue
        vol, mount = svc.volumes[0].split(":")[:2]
        volume = f"{prof.name}_{vol.replace('{instance}', '0')}"
        insts = [i for i in plan.of_service(svc.name) if i.device == "gpu"]
        insts += [i for i in cplan.of_service(svc.name) if i.device == "cpu"]
        # the models the plan chose (a smaller alternative on a small GPU), not the profile's
        # first choice
        gpu_models = list(
            dict.fromkeys(m.name for i in insts if i.device == "gpu" for m in i.models)
        ) or [m.name for m in svc.models]
        stores: dict[str, tuple[str, list[Model]]] = {}  # alias store -> (image, models)
        plain: list[str] = []  # what the service's own store holds
        for inst in insts:
            store = alias_store(svc, inst)
            if store is None:
                plain += [m.name for m in inst.models if m.name not in plain]
                continue
            image_key = svc.cpu.image if inst.device == "cpu" and svc.cpu else svc.image
            held = stores.setdefault(store, (prof.images[image_key], []))[1]
            held += [m for m in inst.models if m not in held]
        lines = []
        if svc.kind == "ollama":
            image = prof.images[svc.image]
            own = dict(svc.env).get("OLLAMA_MODELS")
            script = "ollama serve & sleep 5; " + "; ".join(f"ollama pull {q(n)}" for n in plain)
            env = f"-e OLLAMA_MODELS={q(own)} " if own else ""
            if plain:
                lines.append(
                    f"docker run --rm -v {q(volume)}:{q(mount)} {env}--entrypoint sh {q(image)} "
                    f"-c {q(script)}"
                )
            for store, (store_image, models) in stores.items():
                steps = [f"ollama pull {q(m.name)}" for m in models]
                steps += [
                    f"ollama cp {q(m.name)} {q(public_name(svc, m) or m.name)}"
                    for m in models
                    if (public_name(svc, m) or m.name) != m.name
                ]
                script = "ollama serve & sleep 5; " + "; ".join(steps)
                lines.append(
                    f"docker run --rm -v {q(volume)}:{q(mount)} -e OLLAMA_MODELS={q(store)} "
                    f"--entrypoint sh {q(store_image)} -c {q(script)}"
                )
        elif svc.server_kind in ("vllm", "tei", "speaches"):  # Hugging Face repositories
            names = plain + [m.name for _, ms in stores.values() for m in ms]
            lines += [f"huggingface-cli download {q(n)}" for n in dict.fromkeys(names)]
        out.append(
            {
                "service": svc.name,
                "kind": svc.kind,
                "models": gpu_models,
                "volume": volume,
                "mount": mount,
                "aliased": bool(stores),
                "lines": lines,
            }
        )
    return out


HF_SERVERS = ("vllm", "tei", "speaches")
FETCH_IMAGE_KEY = "hf-fetch"


def model_store(svc: Service, inst: Instance) -> tuple[str, str] | None:
    """(source, path inside the container) of the store the instance reads its models from:
    ("ollama", its OLLAMA_MODELS) or ("huggingface", its hub cache directory). None: the
    service fetches nothing (an app whose models are in its image or in-process)."""
    if not inst.models:
        return None
    env = dict(svc.env)
    if inst.device == "cpu" and svc.cpu is not None:
        env.update(svc.cpu.env)
    if svc.kind == "ollama":
        return "ollama", alias_store(svc, inst) or env.get("OLLAMA_MODELS") or OLLAMA_DEFAULT_STORE
    if svc.server_kind not in HF_SERVERS:
        return None
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return "huggingface", env[var]
    if env.get("HF_HOME"):
        return "huggingface", env["HF_HOME"].rstrip("/") + "/hub"
    if svc.server_kind == "tei":  # the TEI image sets HUGGINGFACE_HUB_CACHE=/data
        return "huggingface", "/data"
    mounts = [v.split(":")[1] for v in svc.volumes]
    home = next((m for m in mounts if m.rstrip("/").endswith("/huggingface")), None)
    # vLLM and speaches read $HF_HOME/hub, HF_HOME defaulting to ~/.cache/huggingface
    return "huggingface", (home or "/root/.cache/huggingface").rstrip("/") + "/hub"


def model_labels(prof: Profile, svc: Service, inst: Instance) -> dict[str, str]:
    """What `composegen models pull` reads from the compose files: where each service's models
    come from (io.composegen.model-source), the store inside the container that must hold
    them (model-store), the Hugging Face revision (model-revision), the `ollama cp` aliases
    its store needs (model-aliases: REAL=PUBLIC,...), and the fetch image of a Hugging Face
    store (fetch-image: the profile's hf-fetch image)."""
    store = model_store(svc, inst)
    if store is None:
        return {}
    source, path = store
    out = {"io.composegen.model-source": source, "io.composegen.model-store": path}
    if source == "ollama":
        aliases = [
            f"{m.name}={public_name(svc, m) or m.name}"
            for m in inst.models
            if (public_name(svc, m) or m.name) != m.name
        ]
        if aliases and alias_store(svc, inst) is not None:
            out["io.composegen.model-aliases"] = ",".join(aliases)
    else:
        revisions = [f"{m.name}@{m.revision}" for m in inst.models if m.revision]
        if revisions:
            out["io.composegen.model-revisions"] = ",".join(revisions)
        if FETCH_IMAGE_KEY in prof.images:
            out["io.composegen.fetch-image"] = prof.images[FETCH_IMAGE_KEY]
    return {k: v.replace("$", "$$") for k, v in out.items()}  # Compose interpolates labels


def model_stores(
    compose: Mapping[str, Any], cpu_compose: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """STACK.md's table of what `composegen models pull` fetches into which store, computed
    from the labels of the files being rendered, as the command computes it."""
    from composegen.serving.models import members_of_compose, stack_models

    mp = stack_models(members_of_compose(compose, "gpu"), members_of_compose(cpu_compose, "cpu"))
    return [
        {
            "source": "Hugging Face" if s.source == "huggingface" else "Ollama",
            "where": s.where,
            "path": s.path,
            "models": [str(w) for w in s.models],
            "aliases": [f"{p} -> {r}" for r, p in s.aliases],
            "services": list(s.services),
            "modes": list(s.modes),
        }
        for s in mp.stores
    ]


# --- compose ----------------------------------------------------------------------------------


def _instance_volumes(svc: Service, inst: Instance) -> list[str]:
    return [v.replace("{instance}", str(inst.replica)) for v in svc.volumes]


def _service_block(
    prof: Profile, plan: Plan, inst: Instance, cpu_names: bool, in_file: frozenset[str]
) -> dict[str, Any]:
    svc = prof.service(inst.service)
    where = f"services.{svc.name}"
    on_cpu = inst.device == "cpu"
    variant = svc.cpu if on_cpu else None
    if on_cpu and variant is None:
        raise BadInputError(f"{prof.path}: {where}: placed on CPU but has no cpu: variant")
    image_key = variant.image if variant else svc.image
    env: dict[str, str] = {}
    if svc.kind == "ollama":
        env["OLLAMA_HOST"] = f"0.0.0.0:{inst.port}"
        if inst.max_concurrency and "OLLAMA_NUM_PARALLEL" not in svc.env:
            env["OLLAMA_NUM_PARALLEL"] = str(inst.max_concurrency)
    if len(inst.gpus) > 1:
        # the container sees its GPUs renumbered from 0; keep CUDA's order equal to nvidia-smi's
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    for key, value in svc.env.items():
        env[key] = _interpolate(value, prof, f"{where}.env.{key}")
    if variant:
        for key, value in variant.env.items():
            env[key] = _interpolate(value, prof, f"{where}.cpu.env.{key}")
    command = variant.command if variant and variant.command is not None else svc.command
    block: dict[str, Any] = {"image": prof.images[image_key]}
    if command:
        block["command"] = [
            _interpolate(_fill(tok, inst), prof, f"{where}.command") for tok in command
        ] + _served_name_args(svc, inst, command)
    store = alias_store(svc, inst)
    if store is not None:
        # stand-in models answer to the public names through `ollama cp` aliases in a store
        # of their own; STACK.md says how to fill it
        env["OLLAMA_MODELS"] = store
    if env:
        block["environment"] = env
    deps = [d for d in svc.depends_on]
    if deps:
        names = {
            i.name: {"condition": "service_healthy"}
            for d in deps
            for i in plan.of_service(d)
            if i.name in in_file
        }
        if names:
            block["depends_on"] = dict(sorted(names.items()))
    h = svc.health
    block["healthcheck"] = {
        "test": health_test(svc, inst),
        "interval": h.interval,
        "timeout": h.timeout,
        "retries": h.retries,
        "start_period": h.start_period,
    }
    block["labels"] = {
        "io.composegen.profile": prof.name,
        "io.composegen.service": svc.name,
        "io.composegen.group": inst.group,
        "io.composegen.mode": "cpu" if on_cpu else "gpu",
        "io.composegen.gpus": ",".join(map(str, inst.gpus)),
        "io.composegen.models": ",".join(m.name for m in inst.models),
        "io.composegen.healthy-after": str(h.healthy_after),
    }
    block["labels"].update(model_labels(prof, svc, inst))
    need = svc.gpu
    if (
        not on_cpu
        and need is not None
        and (need.share or need.share_when_short or need.replicas == "tiers")
    ):
        # the profile declares that this service may share its GPU (`composegen lint` reads it)
        block["labels"]["io.composegen.gpu-shared"] = "true"
    if cpu_names and inst.name.endswith("-cpu"):
        # the CPU variant answers to the GPU service's name too, so other services that call
        # it by name (OLLAMA_BASE_URL=http://ollama:11434) keep working after the switch
        block["networks"] = {"backend": {"aliases": [inst.name.removesuffix("-cpu")]}}
    else:
        block["networks"] = ["backend"]
    block["restart"] = "unless-stopped"
    block["security_opt"] = ["no-new-privileges:true"]
    if svc.shm_size and not on_cpu:
        block["shm_size"] = svc.shm_size
    volumes = _instance_volumes(svc, inst)
    if volumes:
        block["volumes"] = volumes
    block["stop_grace_period"] = "30s"
    resources: dict[str, Any] = {}
    memory = (variant.memory_mib if variant else None) or svc.memory_mib
    cpus = (variant.cpus if variant else None) or svc.cpus
    if memory or cpus:
        limits: dict[str, Any] = {}
        if cpus:
            limits["cpus"] = f"{cpus:g}"
        if memory:
            limits["memory"] = f"{memory}M"
        resources["limits"] = limits
    if inst.device == "gpu":
        resources["reservations"] = {
            "devices": [
                {
                    "driver": "nvidia",
                    "device_ids": list(inst.device_ids),
                    "capabilities": ["gpu"],
                }
            ]
        }
    if resources:
        block["deploy"] = {"resources": resources}
    return block


def _volumes(prof: Profile, plan: Plan) -> dict[str, Any]:
    names: set[str] = set()
    for inst in plan.instances:
        for v in _instance_volumes(prof.service(inst.service), inst):
            names.add(v.split(":", 1)[0])
    return {n: {"labels": {"io.composegen.profile": prof.name}} for n in sorted(names)}


def gateway_healthcheck(port: int) -> dict[str, Any]:
    """The gateway's own healthcheck (nginx's /healthz), the same on Compose and on Swarm."""
    return {
        "test": ["CMD", "curl", "-fsS", f"http://127.0.0.1:{port}/healthz"],
        "interval": "10s",
        "timeout": "3s",
        "retries": 3,
        "start_period": "5s",
    }


def gateway_labels(profile: str) -> dict[str, str]:
    return {
        "io.composegen.profile": profile,
        "io.composegen.service": "gateway",
        "io.composegen.mode": "gateway",
    }


def compose_data(
    prof: Profile,
    plan: Plan,
    opts: RenderOptions,
    *,
    with_gateway: bool = True,
    cpu_names: bool = False,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    services: dict[str, Any] = {}
    in_file = frozenset(i.name for i in plan.instances if i.name not in skip)
    if with_gateway:
        gw = prof.gateway
        services["gateway"] = {
            "image": prof.images[gw.image],
            # the directory, not the file: a re-render or a fallback replaces nginx.conf by
            # rename, which a single-file bind mount would never see
            "command": ["nginx", "-g", "daemon off;", "-c", f"{NGINX_DIR}/nginx.conf"],
            "ports": [f"{opts.bind}:{gw.port}:{gw.port}"],
            "volumes": [f"./nginx:{NGINX_DIR}:ro"],
            "depends_on": {
                i.name: {"condition": "service_started"}
                for i in plan.instances
                if i.name in in_file
            },
            "healthcheck": gateway_healthcheck(gw.port),
            "labels": gateway_labels(prof.name),
            "networks": ["edge", "backend"],
            "restart": "unless-stopped",
            "security_opt": ["no-new-privileges:true"],
            "stop_grace_period": "10s",
        }
    for inst in plan.instances:
        if inst.name in in_file:
            services[inst.name] = _service_block(prof, plan, inst, cpu_names, in_file)
    # No top-level `name:` (Compose v1 rejects it): .env sets COMPOSE_PROJECT_NAME instead.
    data: dict[str, Any] = {"services": services}
    networks: dict[str, Any] = {"backend": {"internal": True}}
    if with_gateway:
        networks["edge"] = {}
    data["networks"] = networks
    volumes = _volumes(prof, plan)
    if volumes:
        data["volumes"] = volumes
    return data


def _dumper() -> Any:
    import yaml
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

    base: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

    class Dumper(base):  # type: ignore[misc]
        """SafeDumper output, built faster: our data is plain dicts, lists, str, int and bool,
        so nodes are made directly (no per-object alias bookkeeping: never any &anchors)."""

        def represent(self, data: Any) -> None:
            self.serialize(self._node(data))

        def _node(self, data: Any) -> Any:
            if isinstance(data, str):
                return ScalarNode("tag:yaml.org,2002:str", data)
            if isinstance(data, bool):
                return ScalarNode("tag:yaml.org,2002:bool", "true" if data else "false")
            if isinstance(data, int):
                return ScalarNode("tag:yaml.org,2002:int", str(data))
            if isinstance(data, dict):
                pairs = [(self._node(k), self._node(v)) for k, v in data.items()]
                return MappingNode("tag:yaml.org,2002:map", pairs, flow_style=False)
            if isinstance(data, (list, tuple)):
                items = [self._node(v) for v in data]
                return SequenceNode("tag:yaml.org,2002:seq", items, flow_style=False)
            return self.represent_data(data)

    return Dumper


def dump_yaml(data: Mapping[str, Any], header: str) -> str:
    import yaml

    body = yaml.dump(
        dict(data),
        Dumper=_dumper(),
        sort_keys=False,
        default_flow_style=False,
        width=100,
        allow_unicode=True,
    )
    return header + str(body)


# --- the CPU variant (emergency fallback) -----------------------------------------------------


def cpu_plan(prof: Profile, plan: Plan) -> Plan:
    """Every instance on CPU where its service has a CPU variant; the others are dropped.
    A GPU instance's CPU variant is named NAME-cpu, so both can run side by side during the
    switch (make before break); an instance already on CPU stays as it is."""
    moved: list[Instance] = []
    dropped = list(plan.dropped)
    seen: set[str] = set()
    for inst in plan.instances:
        svc = prof.service(inst.service)
        if inst.device == "cpu":
            moved.append(inst)
            continue
        if svc.cpu is None:
            dropped.append((inst.name, "no CPU variant in the profile"))
            continue
        if inst.device == "gpu" and svc.gpu is not None and isinstance(svc.gpu.replicas, str):
            # replicas exist to use GPUs; on CPU one instance of the group is enough
            if svc.name in seen:
                continue
            seen.add(svc.name)
        moved.append(
            replace(
                inst,
                name=f"{inst.name}-cpu",
                device="cpu",
                gpus=(),
                device_ids=(),
                vram_mib=0,
                models=svc.cpu.models or inst.models,
                shared=False,
                weight=1,
            )
        )
    return replace(plan, instances=tuple(moved), dropped=tuple(dropped), spare_gpus=())


# --- templates --------------------------------------------------------------------------------


_DOTENV_BARE = re.compile(r"[A-Za-z0-9_./:,@%+=~-]*")
_DOTENV_DQ = {"\\": "\\\\", '"': '\\"', "$": "\\$", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def dotenv_value(value: object) -> str:
    """A .env value that Compose v2 (compose-go's dotenv, read like a shell) and composegen's
    reader (engine/compose.py parse_dotenv) both read back as `value`: bare when it is plain,
    else 'single quoted' (literal: no $ expansion, no # comment), or "double quoted" with
    escapes where a single quote or a trailing backslash would end a single-quoted one."""
    text = str(value)
    if _DOTENV_BARE.fullmatch(text):
        return text
    if "'" not in text and not text.endswith("\\") and not any(c in text for c in "\n\r\t"):
        return f"'{text}'"
    return '"' + "".join(_DOTENV_DQ.get(c, c) for c in text) + '"'


@functools.lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2

    from composegen.cache import cache_dir
    from composegen.resources import templates_dir

    base = cache_dir()
    bytecode = None
    if base is not None:
        (base / "jinja").mkdir(exist_ok=True, mode=0o700)
        bytecode = jinja2.FileSystemBytecodeCache(str(base / "jinja"))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        bytecode_cache=bytecode,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["dotenv"] = dotenv_value
    return env


def _groups(prof: Profile, plan: Plan) -> list[dict[str, Any]]:
    out = []
    for group, insts in plan.groups.items():
        svc = prof.service(insts[0].service)
        out.append(
            {
                "name": group,
                "route": svc.route,
                "weighted": any(i.weight != 1 for i in insts),
                "servers": [{"host": i.name, "port": i.port, "weight": i.weight} for i in insts],
            }
        )
    return out


def _dropped_routes(prof: Profile, plan: Plan) -> list[dict[str, str]]:
    live = {i.group for i in plan.instances}
    out: dict[str, dict[str, str]] = {}
    for name, reason in plan.dropped:
        svc = next(
            (
                s
                for s in prof.services
                if s.name == name or re.fullmatch(rf"{re.escape(s.name)}-\d+", name)
            ),
            None,
        )
        if svc is None or svc.route is None or svc.group in live:
            continue
        body = (
            json.dumps({"error": "service unavailable", "service": svc.group, "reason": reason})
            .replace("\\", "\\\\")
            .replace("'", "\\'")
        )
        out[svc.route] = {"route": svc.route, "body": body}
    return [out[k] for k in sorted(out)]


def nginx_conf(prof: Profile, plan: Plan, cpu_names: bool = False) -> str:
    return str(
        _env()
        .get_template("nginx.conf.j2")
        .render(
            version=__version__,
            profile=prof,
            gw=prof.gateway,
            groups=_groups(prof, plan),
            dropped=_dropped_routes(prof, plan),
            mode="cpu-fallback" if cpu_names else "gpu",
            nginx_dir=NGINX_DIR,
        )
    )


def render(prof: Profile, plan: Plan, opts: RenderOptions = RenderOptions()) -> list[OutFile]:
    header = (
        f"# Rendered by composegen {__version__} from profile {prof.name} "
        f"({one_line(plan.inventory_source)}). Edit the profile and re-render, or pass "
        "--force.\n"
    )
    compose = compose_data(prof, plan, opts)
    cplan = cpu_plan(prof, plan)
    already_cpu = frozenset(i.name for i in plan.instances if i.device == "cpu")
    cpu_compose = compose_data(
        prof, cplan, opts, with_gateway=False, cpu_names=True, skip=already_cpu
    )
    env = _env()
    ctx = {
        "version": __version__,
        "profile": prof,
        "plan": plan,
        "cpu_plan": cplan,
        "opts": opts,
        "gw": prof.gateway,
        "api_key_var": API_KEY_VAR,
        "gateway_url": gateway_url(opts.bind, prof.gateway.port, "/healthz"),
        "published": f"[{opts.bind}]" if ":" in opts.bind else opts.bind,
        "groups": _groups(prof, plan),
        "gpu_services": [i.name for i in plan.instances if i.device == "gpu"],
        "cpu_services": [i.name for i in cplan.instances if i.name.endswith("-cpu")],
        "model_names": model_names(prof, plan, cplan),
        "fill": fill_commands(prof, plan, cplan),
        "stores": model_stores(compose, cpu_compose),
        "tiered": [s.name for s in prof.services if s.gpu and s.gpu.replicas == "tiers"],
        "tier_share_pct": NOMINAL_SHARE_PCT,
    }
    from composegen import monitoring

    files = [
        # the `monitor` profile (Prometheus, Grafana) rides in the main file, off by default
        OutFile(
            "docker-compose.yml",
            dump_yaml(with_start_interval(monitoring.add_to_compose(prof, compose), opts), header),
        ),
        OutFile("nginx/nginx.conf", nginx_conf(prof, plan)),
        OutFile(".env", env.get_template("env.j2").render(**ctx), 0o600),
        OutFile(
            "scripts/healthcheck.sh", env.get_template("healthcheck.sh.j2").render(**ctx), 0o755
        ),
        OutFile(
            "scripts/emergency-fallback.sh",
            env.get_template("emergency-fallback.sh.j2").render(**ctx),
            0o755,
        ),
        OutFile(
            "fallback/docker-compose.cpu.yml",
            dump_yaml(with_start_interval(cpu_compose, opts), header),
        ),
        OutFile("fallback/nginx.cpu.conf", nginx_conf(prof, cplan, cpu_names=True)),
        OutFile("STACK.md", env.get_template("STACK.md.j2").render(**ctx)),
    ]
    files += monitoring.files(prof, header)
    if prof.gateway.api_key:
        files.append(OutFile("nginx/auth.conf", auth_conf(prof.gateway.api_key), 0o600))
    return files


API_KEY_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")


def auth_conf(key: str) -> str:
    """The map nginx.conf includes to check `Authorization: Bearer <key>`.

    A regular expression, not a plain map key: nginx matches plain map strings ignoring case
    (so "bearer ABC..." would pass for "Bearer abc..."), and hashes them in buckets of 64 bytes,
    which any key over about 40 characters overflows ("could not build map_hash"). A regex is
    case-sensitive and is not hashed. Of the characters a key may hold, `.` and `+` are regex
    operators: they are escaped."""
    if not API_KEY_RE.fullmatch(key):
        raise BadInputError(
            "gateway.api_key: must be 16-256 characters of A-Z a-z 0-9 . _ ~ + / = -",
            "generate one with: openssl rand -hex 32",
        )
    pattern = key.replace(".", "\\.").replace("+", "\\+")
    return (
        "# The gateway's API key (mode 0600). Requests need: Authorization: Bearer <key>\n"
        "map $http_authorization $composegen_authorized {\n"
        "    default 0;\n"
        f'    "~^Bearer {pattern}$" 1;\n'
        "}\n"
    )
