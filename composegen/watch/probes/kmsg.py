"""Xid events from the kernel log, for GPUs whose NVML cannot deliver them as events.

The NVIDIA driver logs each Xid as `NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen off
the bus.` /dev/kmsg hands out one record per read(2) (`prio,seq,usec,flags;message`); it is
opened non-blocking and positioned at its current end, so only Xids after the start count.
"""

from __future__ import annotations

import errno
import os
import re

KMSG = "/dev/kmsg"
MAX_RECORDS_PER_READ = 4096

_XID = re.compile(
    r"NVRM: Xid \(PCI:(?P<bus>[0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{1,2}:[0-9A-Fa-f]{1,2})"
    r"(?:\.[0-9A-Fa-f])?\):\s*(?P<xid>\d+)"
)


def bus_key(bus_id: str) -> tuple[int, int, int] | None:
    """(domain, bus, device) of a PCI id in either spelling: the kernel's `0000:3b:00` or
    NVML's `00000000:3B:00.0`."""
    parts = bus_id.strip().split(":")
    if len(parts) != 3:
        return None
    try:
        return int(parts[0], 16), int(parts[1], 16), int(parts[2].split(".", 1)[0], 16)
    except ValueError:
        return None


def parse_xid(line: str) -> tuple[tuple[int, int, int], int] | None:
    """(PCI key, Xid) of one kernel log line; None for any other line."""
    m = _XID.search(line)
    if m is None:
        return None
    key = bus_key(m.group("bus"))
    return None if key is None else (key, int(m.group("xid")))


class KmsgXids:
    """Reads the Xid lines the kernel logged since the last read. Raises OSError at open when
    the log cannot be read (dmesg_restrict without CAP_SYSLOG, no /dev/kmsg in a container)."""

    def __init__(self, path: str = KMSG) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)
        self._partial = b""

    def read(self) -> list[tuple[tuple[int, int, int], int]]:
        out = []
        for line in self._lines():
            hit = parse_xid(line)
            if hit is not None:
                out.append(hit)
        return out

    def _lines(self) -> list[str]:
        lines: list[str] = []
        for _ in range(MAX_RECORDS_PER_READ):
            try:
                chunk = os.read(self.fd, 8192)
            except BlockingIOError:
                break  # nothing more for now
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # records were overwritten before we read them: go on
                raise
            if not chunk:
                break  # a regular file at its end
            data = self._partial + chunk
            *whole, self._partial = data.split(b"\n")
            lines += [w.decode("utf-8", "replace") for w in whole]
        return lines

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
