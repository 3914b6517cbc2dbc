"""Checks of untrusted profile values, run on each source (the profile file, every --values
file, every --set and --image) before they are merged, so an error names where the bad value
came from.

What is checked here ends up in files that other programs read: `.env` (one variable a line: a
newline would add a variable, e.g. COMPOSE_PROJECT_NAME), `${VAR:-default}` in the compose file,
`bash -c` healthchecks, nginx.conf and the shell commands of STACK.md.

- no control character in any string (key or value); a `description` may span lines;
- tunables are plain text that Compose carries unchanged through `.env` and `${VAR:-default}`
  (no `$`, braces, quotes, backslash or `#`), and the variables whose format is known
  (OLLAMA_KEEP_ALIVE is a duration, OLLAMA_NUM_PARALLEL an integer, ...) have that format;
- `health.path` is made of URL path characters;
- what a profile records of its models (context length, trust_remote_code, the servers that
  can run the architecture) agrees with the commands that serve them, and every model a
  service runs answers to one public name (check_model_facts, on the loaded profile).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from composegen.errors import BadInputError

if TYPE_CHECKING:
    from composegen.profiles import Model, Profile, Service

# C0 controls, DEL, C1 controls, and the Unicode line/paragraph separators: every character
# str.splitlines() or YAML would treat as a line break, and the terminal escapes.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # \t and \n allowed
_FREE_TEXT_KEYS = frozenset({"description"})

# Characters a tunable may not hold: `$` and braces break `${VAR:-default}` (Compose v1 keeps a
# default's `$$` as two dollars, v2 makes it one; nothing escapes `}`), quotes, backslash and `#`
# are read differently by the .env parsers of Compose v1 and v2.
_TUNABLE_BAD = re.compile(r"[$`{}\"'\\#]")

# RFC 3986 path characters (unreserved, sub-delims, ':', '@', '/') and %XX escapes.
HEALTH_PATH = re.compile(r"/(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})*")

_GO_DURATION = re.compile(r"[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+")
_INT = re.compile(r"-?[0-9]+")
_UINT = re.compile(r"[0-9]+")
_GO_BOOL = frozenset(
    {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}
)
_HF_FLAG = frozenset({"0", "1", "true", "false", "yes", "no", "on", "off"})


def _duration(v: str) -> bool:
    # Ollama: an integer is seconds (negative: forever), else a Go duration (5m, 1h30m, -1s)
    return bool(_INT.fullmatch(v) or _GO_DURATION.fullmatch(v))


def _fraction(v: str) -> bool:
    try:
        f = float(v)
    except ValueError:
        return False
    return 0 < f <= 1


def _positive(v: str) -> bool:
    return bool(_UINT.fullmatch(v)) and int(v) > 0


# variable -> (test, what it must be, an example)
KNOWN: dict[str, tuple[Any, str, str]] = {
    "OLLAMA_KEEP_ALIVE": (_duration, "a duration", "5m, 24h, or -1 to keep models loaded"),
    "OLLAMA_LOAD_TIMEOUT": (_duration, "a duration", "5m"),
    "OLLAMA_MAX_LOADED_MODELS": (_UINT.fullmatch, "an integer >= 0", "1 (0: automatic)"),
    "OLLAMA_NUM_PARALLEL": (_UINT.fullmatch, "an integer >= 0", "1"),
    "OLLAMA_MAX_QUEUE": (_UINT.fullmatch, "an integer >= 0", "512"),
    "OLLAMA_CONTEXT_LENGTH": (_UINT.fullmatch, "an integer >= 0", "4096"),
    "OLLAMA_GPU_OVERHEAD": (_UINT.fullmatch, "a number of bytes", "536870912"),
    "OLLAMA_FLASH_ATTENTION": (_GO_BOOL.__contains__, "a boolean", "1 or 0, true or false"),
    "OLLAMA_SCHED_SPREAD": (_GO_BOOL.__contains__, "a boolean", "1 or 0, true or false"),
    "OLLAMA_NOPRUNE": (_GO_BOOL.__contains__, "a boolean", "1 or 0, true or false"),
    "OLLAMA_NOHISTORY": (_GO_BOOL.__contains__, "a boolean", "1 or 0, true or false"),
    "OLLAMA_MULTIUSER_CACHE": (_GO_BOOL.__contains__, "a boolean", "1 or 0, true or false"),
    "HF_HUB_OFFLINE": (lambda v: v.lower() in _HF_FLAG, "a boolean", "1 or 0"),
    "TRANSFORMERS_OFFLINE": (lambda v: v.lower() in _HF_FLAG, "a boolean", "1 or 0"),
    "VLLM_GPU_MEMORY_UTILIZATION": (_fraction, "a fraction in (0, 1]", "0.90"),
    "VLLM_MAX_MODEL_LEN": (_positive, "an integer > 0", "4096"),
    "VLLM_MAX_NUM_SEQS": (_positive, "an integer > 0", "256"),
}


def _where(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _scalar(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _no_controls(node: Any, where: str, path: tuple[Any, ...]) -> None:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if isinstance(k, str) and _CONTROL.search(k):
                raise BadInputError(
                    f"{where}: {_where(path)}: key {k!r} holds a control character",
                    "keys are plain names",
                )
            _no_controls(v, where, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _no_controls(v, where, (*path, i))
    elif isinstance(node, str):
        free = bool(path) and path[-1] in _FREE_TEXT_KEYS
        m = (_TEXT_CONTROL if free else _CONTROL).search(node)
        if m:
            raise BadInputError(
                f"{where}: {_where(path)}: {node[:60]!r} holds the control character {m.group()!r}",
                "remove it: values end up in .env, shell commands and nginx.conf",
            )


def _check_var(name: str, raw: Any, where: str, path: tuple[Any, ...]) -> None:
    if isinstance(raw, (dict, list)) or raw is None:
        return  # the schema reports the type
    value = _scalar(raw)
    if "${" in value:
        return  # a reference to a tunable, checked there
    known = KNOWN.get(name)
    if known is not None:
        test, what, example = known
        if not test(value):
            raise BadInputError(
                f"{where}: {_where(path)}: {value!r} is not {what}", f"e.g. {example}"
            )


def _check_tunable(name: str, raw: Any, where: str, path: tuple[Any, ...]) -> None:
    if isinstance(raw, (dict, list)) or raw is None:
        return
    value = _scalar(raw)
    bad = _TUNABLE_BAD.search(value)
    if bad:
        raise BadInputError(
            f"{where}: {_where(path)}: {value!r} holds {bad.group()!r}, which .env and "
            f"${{{name}:-default}} cannot carry unchanged",
            "use letters, digits, spaces and . , : ; / + = @ % - _ ~ ! ? * ( ) [ ] ^ &",
        )
    if value != value.strip():
        raise BadInputError(
            f"{where}: {_where(path)}: {value!r} starts or ends with a space, which .env drops",
            "remove the spaces",
        )
    _check_var(name, raw, where, path)


def _dict(node: Any, key: str) -> dict[str, Any]:
    value = node.get(key) if isinstance(node, dict) else None
    return value if isinstance(value, dict) else {}


def check_source(data: Any, where: str) -> None:
    """Every check of this module on one source of profile data (a whole profile, a --values
    file, or the one-value mapping of a --set); parts of the wrong type are left to the schema."""
    _no_controls(data, where, ())
    if not isinstance(data, dict):
        return
    for name, value in _dict(data, "tunables").items():
        if isinstance(name, str):
            _check_tunable(name, value, where, ("tunables", name))
    for sname, svc in _dict(data, "services").items():
        if not isinstance(svc, dict):
            continue
        for name, value in _dict(svc, "env").items():
            if isinstance(name, str):
                _check_var(name, value, where, ("services", sname, "env", name))
        for name, value in _dict(_dict(svc, "cpu"), "env").items():
            if isinstance(name, str):
                _check_var(name, value, where, ("services", sname, "cpu", "env", name))
        path = _dict(svc, "health").get("path")
        if isinstance(path, str) and not HEALTH_PATH.fullmatch(path):
            raise BadInputError(
                f"{where}: services.{sname}.health.path: {path!r} is not a URL path",
                "start with / and use only URL path characters (letters, digits, "
                "- . _ ~ / : @ ! $ & ' ( ) * + , ; = and %XX escapes)",
            )


def set_layer(parts: list[str], value: Any) -> dict[str, Any]:
    """The mapping a `--set a.b.c=VALUE` merges in: {"a": {"b": {"c": VALUE}}}."""
    out: Any = value
    for part in reversed(parts):
        out = {part: out}
    assert isinstance(out, dict)
    return out


# --- models -----------------------------------------------------------------------------------


def _repo(name: str) -> str:
    """`llama3.2:1b` -> `llama3.2`: an Ollama model's name without its tag."""
    return name.split(":", 1)[0]


def public_name(svc: Service, model: Model) -> str | None:
    """The name clients use for `model` when `svc` runs it: its `public_name`, else its own name
    when it is one of the service's models, else the service's only model, else the one model
    of the same name without the tag (llama3.2:1b answers as llama3.2). None: cannot tell."""
    if model.public_name:
        return model.public_name
    names = [m.name for m in svc.models]
    if model.name in names or not names:
        return model.name
    if len(names) == 1:
        return names[0]
    same = [n for n in names if _repo(n) == _repo(model.name)]
    return same[0] if len(same) == 1 else None


def _variants(svc: Service) -> list[tuple[str, Sequence[str], tuple[Model, ...]]]:
    """(where, command, models) of each way the service can run: its models, each alternative,
    and its CPU variant."""
    out: list[tuple[str, Sequence[str], tuple[Model, ...]]] = [
        (f"services.{svc.name}", svc.command, svc.models)
    ]
    for i, alt in enumerate(svc.alternatives):
        out.append((f"services.{svc.name}.alternatives[{i}]", svc.command, alt))
    if svc.cpu is not None:
        command = svc.cpu.command if svc.cpu.command is not None else svc.command
        out.append((f"services.{svc.name}.cpu", command, svc.cpu.models or svc.models))
    return out


_REF = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def _option(command: Sequence[str], name: str, tunables: Mapping[str, str]) -> str | None:
    """The value of `--name V` or `--name=V` in a command, tunables replaced by their values."""
    value = None
    for i, tok in enumerate(command):
        if tok == name and i + 1 < len(command):
            value = command[i + 1]
        elif tok.startswith(name + "="):
            value = tok.split("=", 1)[1]
    if value is None:
        return None
    return _REF.sub(lambda m: tunables.get(m.group(1), m.group(0)), value)


def check_model_facts(prof: Profile) -> None:
    """A wrong pairing of model and server fails here, at plan and render, not at 3 a.m.:
    a model on a server its architecture does not run on, a vLLM --max-model-len beyond the
    model's context length, a model that needs --trust-remote-code without it, and a model
    that stands in for another without a public name to answer to."""
    for svc in prof.services:
        server = svc.server_kind
        for where, command, models in _variants(svc):
            for i, m in enumerate(models):
                at = f"{prof.path}: {where}.models[{i}] ({m.name})"
                if public_name(svc, m) is None:
                    raise BadInputError(
                        f"{at}: cannot tell which of the service's models "
                        f"({', '.join(x.name for x in svc.models)}) it stands in for",
                        "set its public_name to the name clients use",
                    )
                if m.servers and server not in m.servers:
                    arch = f" ({m.architecture})" if m.architecture else ""
                    raise BadInputError(
                        f"{at}: the model{arch} is served by {' or '.join(m.servers)}, but the "
                        f"service runs {server}",
                        "pick a model that server runs, or set the service's server/kind",
                    )
            if server != "vllm" or not models:
                continue
            served = models[0]  # vLLM serves one model: the one {model} names
            at = f"{prof.path}: {where}.command"
            raw = _option(command, "--max-model-len", prof.tunables)
            if raw is not None and served.context_length is not None:
                try:
                    length = int(raw)
                except ValueError:
                    raise BadInputError(
                        f"{at}: --max-model-len {raw!r} is not an integer"
                    ) from None
                if length > served.context_length:
                    raise BadInputError(
                        f"{at}: --max-model-len {length} is more than the "
                        f"{served.context_length} positions of {served.name}; vLLM refuses it",
                        f"use at most {served.context_length}, or a model with a longer context",
                    )
            if served.trust_remote_code and "--trust-remote-code" not in command:
                raise BadInputError(
                    f"{at}: {served.name} needs --trust-remote-code (its code is in the "
                    "repository) and the command lacks it",
                    "add --trust-remote-code, or pick a model vLLM supports natively",
                )
