"""Retention: `[recordings] retention_days = N` deletes recordings older than N days.

Run at start and then once a day; one log line per run with the count and the bytes freed.
0 keeps everything (the seed: "call recordings are not deleted from the system").

What is old is decided by the call's start date, the folder a recording lives in
(`YYYY/MM/DD`, UTC): a day's folder goes as a whole once that whole day is more than N days
ago, so no sidecar needs reading and a recording in the index but missing on disk (or the
reverse) is still handled. The index rows of those days are removed with them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("b2bua.retention")

DAY = 86400.0


@dataclass(frozen=True)
class RetentionRun:
    files: int  # recordings deleted (WAVs; a sidecar alone counts as one too)
    bytes: int


def _day_folders(recordings_dir: Path) -> list[tuple[date, Path]]:
    found = []
    for year in recordings_dir.glob("[0-9][0-9][0-9][0-9]"):
        for month in year.glob("[0-9][0-9]"):
            for day in month.glob("[0-9][0-9]"):
                try:
                    found.append((date(int(year.name), int(month.name), int(day.name)), day))
                except ValueError:
                    continue
    return sorted(found)


def apply_retention(recordings_dir: Path, days: int, index: Any = None, now: datetime | None = None) -> RetentionRun:
    """Delete the day folders entirely older than `days` days; 0 deletes nothing."""
    if days <= 0:
        return RetentionRun(0, 0)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    cutoff = today - timedelta(days=days)  # folders of days before this go
    recordings = freed = 0
    for day, folder in _day_folders(recordings_dir):
        if day >= cutoff:
            break
        stems: set[str] = set()
        for path in folder.iterdir():
            if not path.is_file() or path.suffix not in (".wav", ".json", ".tmp"):
                continue
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError as exc:
                log.warning("retention event=delete-failed path=%s reason=%r", path, str(exc))
                continue
            freed += size
            stems.add(path.name.split(".", 1)[0])
        recordings += len(stems)
        if index is not None:
            for stem in stems:
                index.remove(stem)
        for empty in (folder, folder.parent, folder.parent.parent):
            try:
                empty.rmdir()  # only when empty: anything else someone put there stays
            except OSError:
                break
    if index is not None:  # rows whose files were already gone
        cutoff_ts = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC).timestamp()
        for entry in index.started_before(cutoff_ts):
            index.remove(entry.call_id)
    return RetentionRun(recordings, freed)


async def run_daily(recordings_dir: Path, days: int, index: Any = None) -> None:
    """At start, then every 24 h, until cancelled."""
    while True:
        try:
            run = apply_retention(recordings_dir, days, index)
            log.info("retention event=run retention_days=%d deleted=%d bytes=%d", days, run.files, run.bytes)
        except Exception:  # a retention bug must not stop the server
            log.exception("retention event=failed")
        await asyncio.sleep(DAY)
