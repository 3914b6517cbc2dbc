"""The script a Hugging Face fetch container runs: `python3 -c SCRIPT SPEC_JSON`.

It runs inside the profile's `hf-fetch` image (any image with python3 and huggingface_hub),
never on the host. SPEC_JSON: {"cache_dir": DIR, "models": [{"name": REPO, "revision": REV or
null}, ...]}. HF_TOKEN and HF_ENDPOINT come from the container's environment. It prints one
JSON object per line on stdout:

  {"event": "file", "model": R, "file": F, "total": N, "completed": N}
  {"event": "done", "model": R, "revision": SHA, "fetched_bytes": N}   (0: all was cached)
  {"event": "error", "model": R, "kind": "gated|not_found|disk_full|network|other",
   "message": "..."}  (the other models are still fetched; the script then exits 1)

A file already in the cache is not fetched again, so an interrupted run resumes file by file
(huggingface_hub 2.x names a partial blob per process: a file cut in the middle starts over).
Progress inside a file comes from a thread that watches the size of the `.incomplete` blob.
"""

from __future__ import annotations

SCRIPT = r"""
import errno, json, os, sys, threading, time

spec = json.loads(sys.argv[1])
cache = spec["cache_dir"]


def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def kind_of(exc):
    names = [c.__name__ for c in type(exc).__mro__]
    if "GatedRepoError" in names:
        return "gated"
    if {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError"} & set(names):
        return "not_found"
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return "disk_full"
        seen = seen.__cause__ or seen.__context__
    mod = type(exc).__module__.split(".")[0]
    if mod in ("httpx", "requests", "urllib3", "httpcore") or isinstance(exc, ConnectionError):
        return "network"
    if "LocalEntryNotFoundError" in names or "OfflineModeIsEnabled" in names:
        return "network"
    return "other"


def message(kind, exc, repo):
    if kind == "gated":
        if os.environ.get("HF_TOKEN"):
            return ("gated repository: the token in HF_TOKEN has no access to it"
                    " (request access on its page)")
        return ("gated repository and no token: set HF_TOKEN in the stack's .env"
                " (a token with access)")
    if kind == "not_found":
        hub = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return "no such repository, revision or file on " + hub
    if kind == "disk_full":
        return "no space left on the device that holds the cache volume"
    text = str(exc).strip().splitlines()
    return type(exc).__name__ + (": " + text[0] if text else "")


class Watch(threading.Thread):
    # reports the size of the blob being downloaded (huggingface_hub writes BLOB.incomplete)
    def __init__(self, repo, fname, total, blobs):
        super().__init__(daemon=True)
        self.repo, self.fname, self.total, self.blobs = repo, fname, total, blobs
        self.stop = threading.Event()

    def run(self):
        last = -1
        while not self.stop.wait(0.5):
            size = 0
            try:
                for n in os.listdir(self.blobs):
                    if n.endswith(".incomplete"):
                        size = max(size, os.path.getsize(os.path.join(self.blobs, n)))
            except OSError:
                continue
            if size != last:
                last = size
                emit(event="file", model=self.repo, file=self.fname, total=self.total,
                     completed=size)


def fetch(repo, revision):
    import huggingface_hub as hf

    api = hf.HfApi()
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:
        if kind_of(exc) != "network":
            raise
        # no hub reachable: enough when the snapshot is complete in the cache already
        path = hf.snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True)
        emit(event="done", model=repo, revision=os.path.basename(path), fetched_bytes=0)
        return
    sha = info.sha
    fetched = 0
    blobs = os.path.join(cache, "models--" + repo.replace("/", "--"), "blobs")
    for s in info.siblings or []:
        fname, total = s.rfilename, int(getattr(s, "size", None) or 0)
        have = hf.try_to_load_from_cache(repo, fname, cache_dir=cache, revision=sha)
        if isinstance(have, str) and os.path.exists(have):
            continue
        if not total:  # a hub that leaves sizes out of the file list: ask for the file's
            url = hf.hf_hub_url(repo, fname, revision=sha)
            total = int(hf.get_hf_file_metadata(url).size or 0)
        emit(event="file", model=repo, file=fname, total=total, completed=0)
        watch = Watch(repo, fname, total, blobs)
        watch.start()
        try:
            path = hf.hf_hub_download(repo, fname, revision=sha, cache_dir=cache)
        finally:
            watch.stop.set()
        total = os.path.getsize(path)
        fetched += total
        emit(event="file", model=repo, file=fname, total=total, completed=total)
    # the refs/<revision> file: the servers resolve `main` (or the tag) offline through it
    hf.snapshot_download(repo, revision=revision, cache_dir=cache)
    emit(event="done", model=repo, revision=sha, fetched_bytes=fetched)


os.makedirs(cache, exist_ok=True)
failed = False
for m in spec["models"]:
    repo = m["name"]
    try:
        fetch(repo, m.get("revision"))
    except Exception as exc:  # reported; the other models of the store are still fetched
        kind = kind_of(exc)
        emit(event="error", model=repo, kind=kind, message=message(kind, exc, repo))
        failed = True
sys.exit(1 if failed else 0)
"""
