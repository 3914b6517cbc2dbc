"""watch's event outputs: the JSON-lines log (rotation, whole lines), the webhook (a real HTTP
receiver on 127.0.0.1: delivery, retries, timeout, a full queue, bad URLs) and the one-line
terminal form."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from composegen.errors import BadInputError, ComposegenError
from composegen.watch.events import EventLog, Notifier, check_url, event_line, payload, redact_url
from composegen.watch.types import Event

T0 = 1_795_000_000.25  # 2026-11-18T11:06:40.250Z


def ev(n: int, level: str = "warn", rule: str = "memory", **kw: Any) -> Event:
    base: dict[str, Any] = {
        "time": T0 + n,
        "level": level,
        "rule": rule,
        "message": f"GPU 1 memory at 86% of 81920 MiB (#{n})",
        "service": "llm",
        "gpu": 1,
        "value": 86.0,
        "threshold": 85.0,
    }
    base.update(kw)
    return Event(**base)


# --- the log ------------------------------------------------------------------------------------


def lines_of(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path}: ends in half a line"
    return [json.loads(line) for line in text.splitlines()]


def test_log_writes_json_lines(tmp_path: Path) -> None:
    path = tmp_path / ".composegen" / "watch-events.jsonl"  # the directory is made
    log = EventLog(path)
    log.write([ev(0), ev(1, level="critical", rule="temperature", value=84.0, threshold=83.0)])
    log.write([])
    rows = lines_of(path)
    assert rows[0] == {
        "time": "2026-11-18T11:06:40.250Z",
        "level": "warn",
        "rule": "memory",
        "message": "GPU 1 memory at 86% of 81920 MiB (#0)",
        "service": "llm",
        "gpu": 1,
        "value": 86.0,
        "threshold": 85.0,
    }
    assert rows[1]["rule"] == "temperature" and rows[1]["threshold"] == 83.0
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_log_rotates_by_size_and_keeps_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    one_line = len(json.dumps(ev(0).to_dict(), sort_keys=True, ensure_ascii=False)) + 1
    log = EventLog(path, max_bytes=3 * one_line, backups=2)
    for n in range(10):  # three lines fit a file: 10 lines = 4 files, the oldest dropped
        log.write([ev(n)])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    seen = {
        name: [r["message"].rsplit("#", 1)[1].rstrip(")") for r in lines_of(tmp_path / name)]
        for name in files
    }
    assert seen == {
        "events.jsonl.2": ["3", "4", "5"],
        "events.jsonl.1": ["6", "7", "8"],
        "events.jsonl": ["9"],
    }


def test_log_never_splits_a_batch(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=100, backups=1)
    log.write([ev(0)])
    log.write([ev(1), ev(2), ev(3)])  # larger than max_bytes: goes whole into a fresh file
    assert [r["message"][-3:-1] for r in lines_of(path)] == ["#1", "#2", "#3"]
    assert len(lines_of(tmp_path / "events.jsonl.1")) == 1


def test_log_with_no_backups_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=10, backups=0)
    log.write([ev(0)])
    log.write([ev(1)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl"]
    assert len(lines_of(path)) == 1


def test_log_keeps_a_message_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    EventLog(path).write([ev(0, message="nvidia-smi said:\nFailed to initialize NVML")])
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1
    assert lines_of(path)[0]["message"] == "nvidia-smi said:\nFailed to initialize NVML"


def test_log_where_no_file_can_be_is_one_error(tmp_path: Path) -> None:
    blocker = tmp_path / "stack"
    blocker.write_text("a file where the stack directory should be\n", encoding="utf-8")
    with pytest.raises(ComposegenError, match="cannot write the event log") as err:
        EventLog(blocker / ".composegen" / "events.jsonl").write([ev(0)])
    assert "\n" not in err.value.one_line()


# --- the terminal line --------------------------------------------------------------------------


def test_event_line() -> None:
    assert event_line(ev(0)) == (
        "2026-11-18T11:06:40Z WARN     memory          llm GPU 1: "
        "GPU 1 memory at 86% of 81920 MiB (#0)"
    )
    line = event_line(ev(0, service=None, gpu=None, rule="probe", message="a\nb\x1b[31m"))
    assert line.endswith("probe           -: a\\nb\\x1b[31m")
    assert "\n" not in line and "\x1b" not in line


# --- the webhook --------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers with the next status of `script` (then 200),
    records each body; `hold` blocks the answer until released."""

    port: int = 0
    script: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    hold: threading.Event | None = None
    got: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/T000/B000/s3cretT0ken"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec.bodies.append(json.loads(body))
            rec.headers.append(dict(self.headers))
            rec.got.set()
            if rec.hold is not None:
                rec.hold.wait(30)
            status = rec.script.pop(0) if rec.script else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        if rec.hold is not None:
            rec.hold.set()
        server.shutdown()
        server.server_close()


def notifier(rec: Receiver, warnings: list[str], **kw: Any) -> Notifier:
    kw.setdefault("backoff_s", 0.01)
    return Notifier(rec.url, stack="rag-a100", warn=warnings.append, **kw)


def test_webhook_delivers_the_events(receiver: Receiver) -> None:
    warnings: list[str] = []
    n = notifier(receiver, warnings)
    n.send([ev(0), ev(1, level="critical", rule="xid", message="Xid 79 on GPU 1", value=79)])
    n.close()
    assert n.delivered == 1 and warnings == []
    (body,) = receiver.bodies
    assert receiver.headers[0]["Content-Type"] == "application/json"
    assert [e["rule"] for e in body["events"]] == ["memory", "xid"]
    assert body["events"][1]["value"] == 79 and body["events"][1]["gpu"] == 1
    # Slack's incoming webhook shows `text`
    assert body["text"].splitlines() == [
        event_line(ev(0)),
        event_line(ev(1, level="critical", rule="xid", message="Xid 79 on GPU 1", value=79)),
    ]
    # an Alertmanager webhook receiver reads version 4, status and alerts[]
    assert body["version"] == "4" and body["status"] == "firing"
    assert body["commonLabels"] == {"stack": "rag-a100", "severity": "critical"}
    alert = body["alerts"][1]
    assert alert["status"] == "firing"
    assert alert["labels"] == {
        "alertname": "composegen-xid",
        "rule": "xid",
        "severity": "critical",
        "stack": "rag-a100",
        "service": "llm",
        "gpu": "1",
    }
    assert alert["annotations"] == {"summary": "Xid 79 on GPU 1"}
    assert alert["startsAt"] == "2026-11-18T11:06:41.250Z"


def test_resolved_events_are_resolved_alerts() -> None:
    body = payload([ev(0, level="info", message="GPU 1 memory back under 85%")], "s")
    assert body["status"] == "resolved"
    assert body["alerts"][0]["status"] == "resolved"
    assert body["alerts"][0]["endsAt"] == "2026-11-18T11:06:40.250Z"


def test_webhook_retries_after_a_500(receiver: Receiver) -> None:
    receiver.script = [500, 503]
    warnings: list[str] = []
    n = notifier(receiver, warnings, retries=3)
    n.send([ev(0)])
    n.close()
    assert n.delivered == 1 and n.failed == 0 and warnings == []
    assert len(receiver.bodies) == 3
    assert receiver.bodies[0] == receiver.bodies[2]  # the same body sent again


def test_webhook_gives_up_after_its_retries(receiver: Receiver) -> None:
    receiver.script = [500, 500, 500, 500]
    warnings: list[str] = []
    n = notifier(receiver, warnings, retries=2)
    n.send([ev(0)])
    n.close()
    assert (n.delivered, n.failed, len(receiver.bodies)) == (0, 1, 3)
    assert warnings == [
        f"webhook http://127.0.0.1:{receiver.port}/...: 1 event(s) not delivered (HTTP 500)"
    ]


def test_webhook_does_not_retry_a_refusal(receiver: Receiver) -> None:
    receiver.script = [400]
    warnings: list[str] = []
    n = notifier(receiver, warnings, retries=3)
    n.send([ev(0)])
    n.close()
    assert (n.delivered, n.failed, len(receiver.bodies)) == (0, 1, 1)
    assert "HTTP 400" in warnings[0]


def test_webhook_timeout_and_a_slow_receiver_never_blocks_send(receiver: Receiver) -> None:
    receiver.hold = threading.Event()
    warnings: list[str] = []
    n = notifier(receiver, warnings, timeout_s=0.2, retries=0)
    n.send([ev(0)])  # returns at once although the receiver holds every answer
    assert receiver.got.wait(10)
    assert not receiver.hold.is_set()
    n.close()
    receiver.hold.set()
    assert (n.delivered, n.failed) == (0, 1)
    assert warnings == [
        f"webhook http://127.0.0.1:{receiver.port}/...: 1 event(s) not delivered "
        "(no answer within 0.2s)"
    ]
    assert "s3cret" not in " ".join(warnings)


def test_a_full_queue_drops_the_oldest(receiver: Receiver) -> None:
    receiver.hold = threading.Event()
    warnings: list[str] = []
    n = notifier(receiver, warnings, max_queue=2)
    n.send([ev(0)])
    assert receiver.got.wait(10)  # batch 0 is in flight, held by the receiver
    for k in (1, 2, 3):
        n.send([ev(k)])  # the queue holds 2: batch 1 is dropped for batch 3
    assert n.dropped == 1
    assert warnings == [
        f"webhook http://127.0.0.1:{receiver.port}/...: queue full, dropped the oldest 1 "
        "event(s) (1 batch(es) dropped so far)"
    ]
    receiver.hold.set()
    n.close()
    sent = [e["message"][-3:-1] for b in receiver.bodies for e in b["events"]]
    assert sent == ["#0", "#2", "#3"]


def test_close_reports_what_it_could_not_deliver(receiver: Receiver) -> None:
    receiver.hold = threading.Event()
    warnings: list[str] = []
    n = notifier(receiver, warnings, timeout_s=30)
    n.send([ev(0)])
    assert receiver.got.wait(10)
    n.send([ev(1), ev(2)])
    n.close(timeout_s=0.1)
    receiver.hold.set()
    assert (
        f"webhook http://127.0.0.1:{receiver.port}/...: 2 event(s) not delivered before exit"
        in warnings
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://user:s3cret@example.com/hook", "only http:// and https://"),
        ("file:///etc/passwd", "only http:// and https://"),
        ("hooks.slack.com/services/T0/B0/s3cret", "only http:// and https://"),
        ("https:///s3cret", "has no host"),
        ("http://example.com:99999/s3cret", "not a valid URL"),
        ("https://example.com/s3cret hook", "not a valid URL"),
        ("https://example.com/s3cret\nX-Evil: 1", "not a valid URL"),
    ],
)
def test_bad_urls_are_refused_without_showing_secrets(url: str, why: str) -> None:
    with pytest.raises(BadInputError, match=why) as err:
        Notifier(url)
    assert "s3cret" not in err.value.one_line()
    assert "\n" not in err.value.one_line()


def test_good_urls() -> None:
    for url in (
        "https://hooks.slack.com/services/T000/B000/XXXX",
        "https://ntfy.sh/composegen-alerts",
        "http://127.0.0.1:9093/api/v2/alerts",
        "http://[::1]:8080/hook",
        "https://user:pass@example.com/hook",
    ):
        assert check_url(url) == url


def test_redact_url() -> None:
    assert redact_url("https://user:s3cret@hooks.slack.com/services/T0/B0/X?token=1") == (
        "https://hooks.slack.com/..."
    )
    assert redact_url("http://[::1]:8080/hook") == "http://[::1]:8080/..."
