#!/usr/bin/python3
"""TEST-ONLY fake Hugging Face Hub: the endpoints the real `huggingface_hub` client uses for
`snapshot_download` / `hf_hub_download` through HF_ENDPOINT=http://<this host>:<port>.

Image: composegen-test/hf-hub:1; `hf-hub [--port N]` (default $PORT, else 8080, on 0.0.0.0).
Checked against huggingface_hub 2.4.0 (the version tests pin; older clients use the same
routes and headers):
  GET  /api/models/{repo}[/revision/{rev}]   repo info: id, sha, siblings, gated, private
  GET  /api/models/{repo}/tree/{rev}[/{path}] the file list (type, oid, size, path, lfs)
  HEAD /{repo}/resolve/{rev}/{file}           X-Repo-Commit, ETag (sha256 of the content for
                                              the large file, the git blob sha1 otherwise),
                                              Content-Length, Accept-Ranges
  GET  /{repo}/resolve/{rev}/{file}           the bytes; "Range: bytes=N-[M]" gives 206 with
                                              Content-Range (what the client resumes with)
No Xet headers (X-Xet-Hash, xet-auth links) and no xetHash in tree entries are ever sent, so
the client takes its plain HTTP download path even with hf_xet installed.

Repositories (every byte deterministic):
  composegen-test/tiny-model    public: config.json and model.safetensors (2,000,003 bytes)
  composegen-test/large-model   public: config.json and model.safetensors (12,000,007 bytes,
                                over the client's 10 MiB read size: the one to test resuming)
  composegen-test/gated-model   gated: its info and tree are public (as on the Hub), its files
                                answer 401 with X-Error-Code: GatedRepo (the client raises
                                GatedRepoError) unless "Authorization: Bearer $STUB_HF_TOKEN"
                                (default "hf_stub_token")
  STUB_HF_REPOS, STUB_HF_GATED_REPOS   comma lists of more repo ids served the same way (for
                                tests that keep a profile's real model names)
  anything else                 404 with X-Error-Code: RepoNotFound (RepositoryNotFoundError);
                                a missing file 404 EntryNotFound; a revision other than "main"
                                or the repo's commit sha 404 RevisionNotFound
Revision: "main" resolves to the repo's commit sha (sha1 of its id, 40 hex digits).

Counters: GET /_stub/stats gives {"bytes_served": N (body bytes of resolve GETs), "files":
{"repo/file": N}, "requests": [{"method", "path", "status", "range", "bytes"}, ...] (the last
500)}; POST /_stub/reset zeroes them.
Switches: STUB_HF_RATE_MBPS slows file bodies (MB/s); STUB_HF_CUT_AFTER_BYTES closes the
connection after that many body bytes on the first GET of each file that starts at byte 0 (a
dropped connection: the client retries with a Range request). Plus stubkit.py's switches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import threading
import time
from typing import Any
from urllib.parse import unquote

from stubkit import StubHandler, env_float, serve

TOKEN = os.environ.get("STUB_HF_TOKEN", "hf_stub_token")
RATE = env_float("STUB_HF_RATE_MBPS", 0.0) * 1_000_000
CUT_AFTER = int(env_float("STUB_HF_CUT_AFTER_BYTES", 0.0))
CHUNK = 64 * 1024
TINY = "composegen-test/tiny-model"
GATED = "composegen-test/gated-model"
LARGE = "composegen-test/large-model"
WEIGHTS_SIZE = 2_000_003
# huggingface_hub reads a body in 10 MiB pieces and keeps only whole ones when a connection
# drops: resuming with Range needs a file over 10 MiB (10,485,760 bytes)
LARGE_SIZE = 12_000_007


def env_repos(name: str) -> list[str]:
    return [r.strip() for r in os.environ.get(name, "").split(",") if r.strip()]


PUBLIC = [TINY, LARGE, *env_repos("STUB_HF_REPOS")]
GATED_REPOS = [GATED, *env_repos("STUB_HF_GATED_REPOS")]

STATS: dict[str, Any] = {"bytes_served": 0, "files": {}, "requests": []}
STATS_LOCK = threading.Lock()
CUT_DONE: set[str] = set()


def commit_of(repo: str) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


def files_of(repo: str) -> dict[str, bytes]:
    config = {
        "architectures": ["StubForCausalLM"],
        "model_type": "stub",
        "hidden_size": 64,
        "_name_or_path": repo,
        "note": "TEST-ONLY fake hub content",
    }
    size = LARGE_SIZE if repo == LARGE else WEIGHTS_SIZE
    weights = hashlib.shake_256(f"weights:{repo}".encode()).digest(size)
    return {
        "config.json": json.dumps(config, indent=2).encode() + b"\n",
        "model.safetensors": weights,
    }


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(name: str) -> bool:
    return name.endswith(".safetensors")


def etag_of(name: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if is_lfs(name) else git_oid(data)


def tree_entry(name: str, data: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": git_oid(data), "size": len(data), "path": name}
    if is_lfs(name):
        lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        entry["lfs"] = lfs
    return entry


class HubHandler(StubHandler):
    server_version = "hf-hub-stub"

    # ---- plumbing -----------------------------------------------------------------------

    def record(self, status: int, sent: int = 0, rng: str | None = None) -> None:
        with STATS_LOCK:
            reqs = STATS["requests"]
            path = self.path.split("?", 1)[0]
            reqs.append(
                {
                    "method": self.command,
                    "path": path,
                    "status": status,
                    "range": rng,
                    "bytes": sent,
                }
            )
            del reqs[:-500]

    def answer(
        self, status: int, body: bytes, headers: dict[str, str], ctype: str = "application/json"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.record(status)

    def doc(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self.answer(status, json.dumps(doc).encode(), headers or {})

    def error(
        self, status: int, code: str, message: str, extra: dict[str, str] | None = None
    ) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
        self.doc(status, {"error": message}, headers)

    def authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {TOKEN}"

    def repo_error(self, repo: str, rev: str) -> bool:
        """Answer the error for an unknown repo or revision; True when one was sent."""
        if repo not in PUBLIC and repo not in GATED_REPOS:
            self.error(404, "RepoNotFound", "Repository not found")
            return True
        if rev not in ("main", commit_of(repo)):
            extra = {"X-Repo-Commit": commit_of(repo)}
            self.error(404, "RevisionNotFound", "Invalid rev id: " + rev, extra)
            return True
        return False

    # ---- routes ---------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.gate():
            return
        path = unquote(self.path.split("?", 1)[0])
        if path in ("/", "/health"):
            self.doc(200, {"status": "ok", "hub": "composegen-test fake Hugging Face hub"})
        elif path == "/_stub/stats":
            with STATS_LOCK:
                body = json.dumps(STATS).encode()
            self.answer(200, body, {})
        elif path.startswith("/api/models/"):
            self.api_models(path[len("/api/models/") :])
        elif "/resolve/" in path:
            repo, _, rest = path.lstrip("/").partition("/resolve/")
            rev, _, name = rest.partition("/")
            self.resolve(repo, rev, name)
        else:
            self.error(404, "EntryNotFound", f"no route for {path}")

    def do_POST(self) -> None:
        self.read_body()
        if self.path.split("?", 1)[0] == "/_stub/reset":
            with STATS_LOCK:
                STATS.update(bytes_served=0, files={}, requests=[])
                CUT_DONE.clear()
            self.doc(200, {"reset": True})
        else:
            self.error(404, "EntryNotFound", "this fake hub only serves downloads")

    def api_models(self, rest: str) -> None:
        rev = "main"
        sub = ""
        if "/revision/" in rest:
            repo, _, rev = rest.partition("/revision/")
        elif "/tree/" in rest:
            repo, _, tail = rest.partition("/tree/")
            rev, _, sub = tail.partition("/")
            sub = sub or "."
        else:
            repo = rest.rstrip("/")
        if self.repo_error(repo, rev):
            return
        files = files_of(repo)
        if sub:
            entries = [tree_entry(n, d) for n, d in files.items() if sub == "." or n == sub]
            self.doc(200, entries)
            return
        info = {
            "_id": commit_of(repo)[:24],
            "id": repo,
            "modelId": repo,
            "author": repo.split("/", 1)[0],
            "sha": commit_of(repo),
            "lastModified": "2026-01-02T03:04:05.000Z",
            "private": False,
            "disabled": False,
            "gated": "manual" if repo in GATED_REPOS else False,
            "downloads": 0,
            "likes": 0,
            "tags": ["test-only"],
            "library_name": "transformers",
            "siblings": [{"rfilename": n} for n in files],
        }
        self.doc(200, info)

    def resolve(self, repo: str, rev: str, name: str) -> None:
        if self.repo_error(repo, rev):
            return
        commit = commit_of(repo)
        if repo in GATED_REPOS and not self.authorized():
            message = (
                f"Access to model {repo} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            self.error(401, "GatedRepo", message, {"X-Repo-Commit": commit})
            return
        files = files_of(repo)
        if name not in files:
            self.error(404, "EntryNotFound", f"{name} does not exist", {"X-Repo-Commit": commit})
            return
        data = files[name]
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{etag_of(name, data)}"',
            "Accept-Ranges": "bytes",
        }
        start, end = 0, len(data) - 1
        rng = self.headers.get("Range")
        status = 200
        if rng:
            spec = rng.strip().removeprefix("bytes=")
            first, _, last = spec.partition("-")
            try:
                start = int(first)
                end = min(int(last), len(data) - 1) if last else len(data) - 1
            except ValueError:
                start = -1
            if start < 0 or start > end:
                headers["Content-Range"] = f"bytes */{len(data)}"
                self.error(416, "RangeNotSatisfiable", "bad range", headers)
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            self.record(status, 0, rng)
            return
        key = f"{repo}/{name}"
        cut = 0
        with STATS_LOCK:
            if CUT_AFTER > 0 and start == 0 and key not in CUT_DONE:
                CUT_DONE.add(key)
                cut = CUT_AFTER
        sent = 0
        began = time.monotonic()
        try:
            while sent < len(body):
                size = min(CHUNK, len(body) - sent, (cut - sent) if cut else CHUNK)
                self.wfile.write(body[sent : sent + size])
                sent += size
                if cut and sent >= cut:
                    self.wfile.flush()
                    self.close_connection = True
                    break
                if RATE > 0:
                    ahead = sent / RATE - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        finally:
            with STATS_LOCK:
                STATS["bytes_served"] += sent
                STATS["files"][key] = STATS["files"].get(key, 0) + sent
            self.record(status, sent, rng)
        if self.close_connection:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body end short


def port_from(args: list[str]) -> int:
    if "--port" in args[:-1]:
        return int(args[args.index("--port") + 1])
    return int(os.environ.get("PORT") or 8080)


if __name__ == "__main__":
    serve(HubHandler, "0.0.0.0", port_from(sys.argv[1:]), "hf-hub-stub")
