"""Repairing a dead worker's recordings without touching a live worker's.

The workers of one host share `recordings_dir` (the contract's one tree of
YYYY/MM/DD/<call_id>.wav). A recording whose sidecar says `ended: null` is either being
written right now by a live worker or was left by one that died; the difference is
whether some process still holds the WAV open (the recorder keeps one descriptor per
recording for its life). So a starting worker repairs exactly the unfinalised files that
no process on this host has open: the dead predecessor's, never a neighbour's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("b2bua.cluster")


def open_files(exclude_pid: int | None = None) -> set[str]:
    """Every regular file some process on this host holds open (as /proc shows them)."""
    held: set[str] = set()
    proc = Path("/proc")
    for entry in proc.iterdir():
        if not entry.name.isdigit() or (exclude_pid is not None and int(entry.name) == exclude_pid):
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("/"):
                held.add(target)
    return held


def held_elsewhere() -> Callable[[Path], bool]:
    """A `live` predicate for rtp.recorder.repair: the WAV is open in another process."""
    held = open_files(exclude_pid=os.getpid())
    return lambda wav: str(wav.resolve()) in held


def repair_orphans(directory: Path) -> list[Path]:
    from rtp.recorder import repair

    return repair(directory, live=held_elsewhere())
