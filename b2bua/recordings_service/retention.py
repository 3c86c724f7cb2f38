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


def delete_old_days(recordings_dir: Path, days: int, now: datetime | None = None) -> tuple[RetentionRun, set[str], date]:
    """Delete the day folders entirely older than `days` days (files only: for a thread).
    Returns what was freed, the call ids whose files went, and the first day kept."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    cutoff = today - timedelta(days=days)  # folders of days before this go
    freed = 0
    gone: set[str] = set()
    if days <= 0:
        return RetentionRun(0, 0), gone, cutoff
    for day, folder in _day_folders(recordings_dir):
        if day >= cutoff:
            break
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
            gone.add(path.name.split(".", 1)[0])
        for empty in (folder, folder.parent, folder.parent.parent):
            try:
                empty.rmdir()  # only when empty: anything else someone put there stays
            except OSError:
                break
    return RetentionRun(len(gone), freed), gone, cutoff


def forget(index: Any, gone: set[str], cutoff: date) -> None:
    """The index rows of deleted recordings, and of any started before `cutoff` whose files
    were already gone."""
    for call_id in gone:
        index.remove(call_id)
    cutoff_ts = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC).timestamp()
    while batch := index.started_before(cutoff_ts):
        for entry in batch:
            index.remove(entry.call_id)


def apply_retention(recordings_dir: Path, days: int, index: Any = None, now: datetime | None = None) -> RetentionRun:
    """Delete recordings older than `days` days and forget them; 0 deletes nothing."""
    run, gone, cutoff = delete_old_days(recordings_dir, days, now)
    if index is not None and days > 0:
        forget(index, gone, cutoff)
    return run


async def run_daily(recordings_dir: Path, days: int, index: Any = None) -> None:
    """At start, then every 24 h, until cancelled. The files are deleted on a thread (the
    loop carries the media); the index rows are removed on the loop, which owns the index."""
    while True:
        try:
            run, gone, cutoff = await asyncio.to_thread(delete_old_days, recordings_dir, days)
            if index is not None:
                forget(index, gone, cutoff)
            log.info("retention event=run retention_days=%d deleted=%d bytes=%d", days, run.files, run.bytes)
        except Exception:  # a retention bug must not stop the server
            log.exception("retention event=failed")
        await asyncio.sleep(DAY)
