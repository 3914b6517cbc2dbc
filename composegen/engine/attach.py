"""`composegen logs` and `composegen exec`, as Compose v2 has them.

Containers are found by Compose's labels (com.docker.compose.project / service /
container-number, one-off containers left out), so both work on a stack that Compose v2 or v1
started as well as on one `composegen up` started. Callable without Click: output goes to the
functions passed in.
"""

from __future__ import annotations

import contextlib
import heapq
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from composegen.engine import docker as eng
from composegen.errors import BadInputError, ComposegenError


@dataclass(frozen=True)
class Box:
    """One container of the project."""

    id: str
    service: str
    number: int
    running: bool

    @property
    def label(self) -> str:
        """As Compose v2 names it in its log prefix: SERVICE-N."""
        return f"{self.service}-{self.number}"


def containers(
    client: Any, project: str, services: Sequence[str] = (), running_only: bool = False
) -> list[Box]:
    """The project's containers of `services` (none: all), by service and number."""
    found = []
    for row in eng.list_rows(client, project, running_only=running_only):
        labels = row.get("Labels") or {}
        if labels.get(eng.LABEL_ONEOFF, "False") == "True" or eng.LABEL_SERVICE not in labels:
            continue
        try:
            number = int(labels.get(eng.LABEL_NUMBER, "1"))
        except ValueError:
            number = 1
        found.append(
            Box(str(row["Id"]), labels[eng.LABEL_SERVICE], number, row.get("State") == "running")
        )
    if not found:
        raise ComposegenError(
            f"project {project} has no containers",
            "start it with `composegen up` (or pass -p NAME / -f FILE of the right project)",
        )
    have = sorted({b.service for b in found})
    unknown = [s for s in services if s not in have]
    if unknown:
        raise BadInputError(
            f"no such service in project {project}: {', '.join(unknown)}",
            f"its services: {', '.join(have)}",
        )
    chosen = [b for b in found if not services or b.service in services]
    return sorted(chosen, key=lambda b: (b.service, b.number))


def split_stamp(line: str) -> tuple[str, str]:
    """(the engine's RFC 3339 timestamp, the text) of a line logged with timestamps."""
    stamp, _, text = line.partition(" ")
    return stamp, text


def stamp_key(stamp: str) -> str:
    """A timestamp that sorts as time does: the engine drops trailing zeros of the
    nanoseconds (…:47.1Z, …:47.12Z), so pad them back to nine digits."""
    head, dot, frac = stamp.rstrip("Z").partition(".")
    return f"{head}.{(frac if dot else '').ljust(9, '0')}"


def lines_of(chunks: Iterable[Any]) -> Iterator[str]:
    """Whole lines out of a stream of byte chunks (the last one even without a newline)."""
    buf = b""
    for chunk in eng.iter_stream(chunks):
        buf += chunk if isinstance(chunk, bytes) else str(chunk).encode()
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.rstrip(b"\r").decode("utf-8", "replace")
    if buf:
        yield buf.decode("utf-8", "replace")


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    tail: int | None = None  # the last N lines of each container; None: all
    timestamps: bool = False
    prefix: bool = True  # SERVICE-N  | before each line


def logs(
    client: Any,
    project: str,
    services: Sequence[str],
    opts: LogOptions,
    out: Callable[[str], None],
) -> int:
    """Print the logs of the project's containers, each line prefixed `SERVICE-N  | ` as
    Compose does: what is there now interleaved by time; with follow, then each new line as it
    comes, until every container has stopped or Ctrl-C. Returns the number of lines."""
    boxes = containers(client, project, services)
    width = max(len(b.label) for b in boxes)

    def show(box: Box, line: str) -> None:
        stamp, text = split_stamp(line)
        head = f"{box.label:<{width}}  | " if opts.prefix else ""
        out(head + (f"{stamp} {text}" if opts.timestamps else text))

    if not opts.follow:
        # lazy: each container's log is read as the merge needs its next line, never whole
        # into memory (a log can be gigabytes); every stream is closed however the loop ends
        per_box = [_keyed(client, box, i, opts) for i, box in enumerate(boxes)]
        count = 0
        with contextlib.ExitStack() as streams:
            for lines in per_box:
                streams.callback(lines.close)
            for _, i, line in heapq.merge(*per_box):
                show(boxes[i], line)
                count += 1
        return count
    return _follow(client, boxes, opts, show)


def _keyed(
    client: Any, box: Box, i: int, opts: LogOptions
) -> Generator[tuple[str, int, str], None, None]:
    """(time key, box index, line) of each line of the box's log, read as they are asked for;
    the stream is opened at the first and closed at the end or at close()."""
    stream = eng.logs_stream(client, box.id, follow=False, tail=opts.tail)
    try:
        for line in lines_of(stream):
            yield stamp_key(split_stamp(line)[0]), i, line
    finally:
        eng.close_stream(stream)


_END = object()


def _follow(
    client: Any, boxes: list[Box], opts: LogOptions, show: Callable[[Box, str], None]
) -> int:
    """One reader per container, one printer: lines as they come; ends when every stream has
    ended (its container stopped), or on Ctrl-C (then it closes the streams and returns)."""
    items: queue.Queue[tuple[Box, Any]] = queue.Queue()
    streams = [eng.logs_stream(client, b.id, follow=True, tail=opts.tail) for b in boxes]

    def read(box: Box, stream: Any) -> None:
        try:
            for line in lines_of(stream):
                items.put((box, line))
        finally:
            items.put((box, _END))

    for box, stream in zip(boxes, streams, strict=True):
        threading.Thread(target=read, args=(box, stream), daemon=True).start()
    count, open_streams = 0, len(boxes)
    try:
        while open_streams:
            try:  # with a timeout: a wait without one does not see Ctrl-C
                box, line = items.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is _END:
                open_streams -= 1
                continue
            show(box, line)
            count += 1
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a follow, as in Compose
    finally:
        for stream in streams:
            eng.close_stream(stream)
    return count


def exec_in(
    client: Any,
    project: str,
    service: str,
    req: eng.ExecRequest,
    stdin_fd: int | None,
    write: Callable[[int, bytes], None],
    index: int = 1,
    size: tuple[int, int] | None = None,
) -> int:
    """Run a command in the running container SERVICE-index of the project: its exit code."""
    boxes = [b for b in containers(client, project, [service]) if b.number == index]
    if not boxes:
        raise BadInputError(
            f"service {service} of project {project} has no container number {index}",
            "pass --index N of one of its containers (`composegen status` lists them)",
        )
    box = boxes[0]
    if not box.running:
        raise ComposegenError(
            f"container {box.label} of project {project} is not running",
            "start it with `composegen up`",
        )
    return eng.exec_attached(client, box.id, req, stdin_fd, write, size)


def stdin_fd(stream: Any) -> int | None:
    """The file descriptor of stdin; None when there is none to pass on (closed, or a
    test's stand-in)."""
    try:
        return int(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return None


@contextlib.contextmanager
def raw_terminal(fd: int | None) -> Iterator[tuple[int, int] | None]:
    """The terminal on fd in raw mode while a TTY exec runs (keys go to the container), then
    as it was; yields its size (rows, columns). fd None: no terminal, nothing changed."""
    if fd is None:
        yield None
        return
    import shutil
    import termios
    import tty

    cols, rows = shutil.get_terminal_size()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield rows, cols
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
