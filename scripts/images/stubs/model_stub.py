#!/usr/bin/python3
"""TEST-ONLY stand-in for vLLM, text-embeddings-inference, speaches and Open WebUI.

Image: composegen-test/model-stub:1 (ENTRYPOINT is this program). It accepts the real images'
invocations and ignores the arguments it does not know:
  vLLM   --model X --port 8003 --tensor-parallel-size 2 ...
  TEI    --model-id X --port 8001 ...
  speaches       $UVICORN_PORT (model from $WHISPER__MODEL)
  Open WebUI     $PORT
Port: --port N, else $PORT, else $UVICORN_PORT, else 8000; it binds 0.0.0.0.

Endpoints: GET /health ({"status": "ok"} when ready), GET /, GET /v1/models,
POST /v1/chat/completions and /v1/completions ("stream": true gives 3 SSE chunks and
[DONE]), POST /v1/embeddings, POST /embed, and any other GET/POST: a 200 JSON echo.
Switches (STUB_STARTUP_DELAY_S, STUB_FAIL, STUB_EXIT_AFTER_S): see stubkit.py. Until ready,
every request (/health included) is answered 503.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from typing import Any

from stubkit import StubHandler, serve

WORDS = ["stub", "reply", "ok"]


def arg_value(args: list[str], *names: str) -> str | None:
    """The value of the first of `names` given as `--name value` or `--name=value`."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


ARGS = sys.argv[1:]
MODEL = (
    arg_value(ARGS, "--served-model-name", "--model", "--model-id")
    or os.environ.get("WHISPER__MODEL")
    or "stub-model"
)


def pick_port(args: list[str]) -> int:
    for value in (
        arg_value(args, "--port"),
        os.environ.get("PORT"),
        os.environ.get("UVICORN_PORT"),
    ):
        if value and value.isdigit():
            return int(value)
    return 8000


def vector(text: str, dims: int = 8) -> list[float]:
    """A small deterministic vector for a text, values in [0, 1]."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255, 4) for b in digest[:dims]]


def as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value if value is not None else "")]


class ModelHandler(StubHandler):
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.gate():
            return
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self.send_json({"status": "ok"})
        elif path == "/":
            self.send_json({"status": "ok", "stub": "model-stub", "model": MODEL})
        elif path == "/v1/models":
            model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "composegen-stub"}
            self.send_json({"object": "list", "data": [model]})
        else:
            self.echo(b"", {})

    def do_POST(self) -> None:
        if self.gate():
            return
        raw, doc = self.read_json()
        path = self.path.split("?", 1)[0]
        model = str(doc.get("model") or MODEL)
        if path == "/v1/chat/completions":
            self.completion(doc, model, chat=True)
        elif path == "/v1/completions":
            self.completion(doc, model, chat=False)
        elif path == "/v1/embeddings":
            inputs = as_list(doc.get("input"))
            data = [
                {"object": "embedding", "index": i, "embedding": vector(text)}
                for i, text in enumerate(inputs)
            ]
            usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
            self.send_json({"object": "list", "data": data, "model": model, "usage": usage})
        elif path == "/embed":
            # TEI answers a bare array; this stub wraps it so it can carry served_by & co.
            inputs = as_list(doc.get("inputs"))
            self.send_json({"embeddings": [vector(text) for text in inputs], "model": model})
        else:
            self.echo(raw, doc)

    def completion(self, doc: dict[str, Any], model: str, chat: bool) -> None:
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:12]}"
        kind = "chat.completion" if chat else "text_completion"
        base = {"id": ident, "created": int(time.time()), "model": model}
        text = " ".join(WORDS)
        if doc.get("stream"):
            chunks = []
            for i, word in enumerate(WORDS):
                last = i == len(WORDS) - 1
                piece = word if i == 0 else " " + word
                choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if last else None}
                if chat:
                    choice["delta"] = {"role": "assistant", "content": piece}
                else:
                    choice["text"] = piece
                chunk = {**base, "object": f"{kind}.chunk", "choices": [choice], **self.common()}
                chunks.append(f"data: {json.dumps(chunk)}\n\n")
            chunks.append("data: [DONE]\n\n")
            self.send_stream(chunks, "text/event-stream")
            return
        choice = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        usage = {"prompt_tokens": 1, "completion_tokens": len(WORDS), "total_tokens": 4}
        self.send_json({**base, "object": kind, "choices": [choice], "usage": usage})


if __name__ == "__main__":
    serve(ModelHandler, "0.0.0.0", pick_port(ARGS), f"model-stub[{MODEL}]")
