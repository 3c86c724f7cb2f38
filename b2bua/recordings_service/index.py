"""The recordings index: who called whom, when, and where the files are.

Kept as recordings are finalised (one row per sidecar) and rebuilt from the sidecars when
the index is missing, so listing and searching never walk `recordings/YYYY/MM/DD/`.

`RecordingsIndex` is the interface the HTTP API, webhooks and retention use; `SqliteIndex`
is the single-process store (`b2bua run`). A cluster backs the same interface with the
shared store, so every worker's recordings are found from any worker.

Why SQLite in WAL mode with synchronous=NORMAL: a commit is a write to the WAL without an
fsync, so indexing a finalised recording on the event loop costs tens of microseconds, and
a crash of the process loses nothing (a power cut may lose the last commits; the start-up
reconciliation of recent days puts them back from the sidecars).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("b2bua.recordings")

#: How many recordings one page may hold at most (`limit=`), and when not given.
MAX_LIMIT = 500
DEFAULT_LIMIT = 50

#: The sidecars of a recording: <recordings_dir>/YYYY/MM/DD/<call_id>.json
SIDECAR_GLOB = "[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]/*.json"

#: A call id as the B2BUA makes them, and nothing that could name another file.
CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

DIRECTIONS = ("inbound", "outbound", "internal")


class QueryError(ValueError):
    """A search parameter that cannot be understood; the API answers 400 with its text."""


@dataclass(frozen=True)
class Query:
    """One search: a half-open UTC time range [start, end), optional filters, a page."""

    start: float | None = None  # POSIX seconds, inclusive
    end: float | None = None  # exclusive
    number: str | None = None  # digits, matched against the DDI and the from/to user parts
    user: str | None = None
    direction: str | None = None
    limit: int = DEFAULT_LIMIT
    after: tuple[float, str] | None = None  # the cursor: (started_ts, call_id) of the last row seen


@dataclass(frozen=True)
class Entry:
    call_id: str
    json_path: str  # relative to recordings_dir, "YYYY/MM/DD/<call_id>.json"
    started_ts: float
    sidecar: str  # the sidecar's JSON text, as written

    @property
    def wav_path(self) -> str:
        return self.json_path[: -len(".json")] + ".wav"

    def data(self) -> dict[str, Any]:
        return json.loads(self.sidecar)


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    next: str | None  # an opaque cursor for the next page, None on the last one


# -- parsing what people type ---------------------------------------------------------


def parse_time(text: str, *, end_of_day: bool = False) -> float:
    """ISO 8601 date or date-time, UTC unless it says otherwise. A bare date used as the
    end of a range means the end of that day: `to=2026-12-01` includes the 1st."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if end_of_day:
                moment += timedelta(days=1)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError:
        raise QueryError(f"not an ISO 8601 date or date-time: {text[:40]!r}") from None
    return moment.timestamp()


def normalise_number(text: str) -> str:
    """What a number search compares: the digits (and * #), without a leading +."""
    return "".join(c for c in text if c.isdigit() or c in "*#")


def uri_user(uri: str | None) -> str | None:
    """The user part of "sip:+4416...@host;params" (or of a tel: URI)."""
    if not uri:
        return None
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    user = rest.split("@", 1)[0] if "@" in rest else (rest if uri.startswith("tel:") else None)
    return user.split(";", 1)[0] if user else None


def encode_cursor(started_ts: float, call_id: str) -> str:
    raw = json.dumps([started_ts, call_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        ts, call_id = json.loads(raw)
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not isinstance(call_id, str):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise QueryError("malformed cursor; pass back the `next` value of a previous page unchanged") from None
    return float(ts), call_id


# -- what a sidecar says ---------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """The indexed fields of one sidecar."""

    call_id: str
    started_ts: float
    ended: str | None
    direction: str | None
    user: str | None
    numbers: tuple[str, ...]
    duration: float | None


def describe(sidecar: dict[str, Any]) -> Row:
    """Raises ValueError for a sidecar that cannot be indexed (no call id, no start)."""
    call_id = sidecar.get("call_id")
    started = sidecar.get("started")
    if not isinstance(call_id, str) or not CALL_ID.match(call_id) or not isinstance(started, str):
        raise ValueError("sidecar without a usable call_id or started")
    started_ts = parse_time(started)
    ended = sidecar.get("ended") if isinstance(sidecar.get("ended"), str) else None
    duration = None
    if ended:
        duration = max(0.0, parse_time(ended) - started_ts)
    numbers = {normalise_number(n) for n in (sidecar.get("ddi"), uri_user(sidecar.get("from")),
                                             uri_user(sidecar.get("to"))) if isinstance(n, str)}
    numbers.discard("")
    user = sidecar.get("user") if isinstance(sidecar.get("user"), str) else None
    direction = sidecar.get("direction") if isinstance(sidecar.get("direction"), str) else None
    return Row(call_id, started_ts, ended, direction, user, tuple(sorted(numbers)), duration)


def sidecar_relpath(recordings_dir: Path, json_path: Path) -> str:
    return json_path.resolve().relative_to(recordings_dir.resolve()).as_posix()


def iter_sidecars(recordings_dir: Path, days: Iterable[date] | None = None) -> Iterator[Path]:
    """Every sidecar under recordings_dir (or under the given days' folders only)."""
    if days is None:
        yield from sorted(recordings_dir.glob(SIDECAR_GLOB))
        return
    for day in days:
        folder = recordings_dir / f"{day.year:04d}" / f"{day.month:02d}" / f"{day.day:02d}"
        if folder.is_dir():
            yield from sorted(folder.glob("*.json"))


# -- the interface ---------------------------------------------------------------------


class RecordingsIndex(ABC):
    """What the API, webhooks and retention need from an index, whatever stores it."""

    @abstractmethod
    def add(self, sidecar: dict[str, Any], json_path: str) -> None:
        """Insert or replace the recording `sidecar` whose file is `json_path` (relative)."""

    @abstractmethod
    def get(self, call_id: str) -> Entry | None: ...

    @abstractmethod
    def remove(self, call_id: str) -> Entry | None: ...

    @abstractmethod
    def search(self, query: Query) -> Page: ...

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def started_before(self, ts: float, limit: int = 1000) -> list[Entry]:
        """The oldest recordings started before `ts` (retention)."""

    @abstractmethod
    def has(self, call_ids: Iterable[str]) -> set[str]:
        """Which of these call ids are indexed (start-up reconciliation)."""

    def close(self) -> None:
        """Release the store."""

    def built(self) -> None:
        """The index has been filled from the sidecars (a store that outlives the process
        remembers it, so the next start does not rebuild)."""

    # -- shared by every store

    def add_file(self, recordings_dir: Path, json_path: Path) -> dict[str, Any] | None:
        """Index one sidecar file; the sidecar, or None (logged) when it cannot be read."""
        from rtp.sidecar import read_sidecar

        try:
            data = read_sidecar(json_path)
            self.add(data, sidecar_relpath(recordings_dir, json_path))
        except (OSError, ValueError) as exc:
            log.warning("recordings event=index-skipped path=%s reason=%r", json_path, str(exc))
            return None
        return data

    def rebuild(self, recordings_dir: Path, days: Iterable[date] | None = None) -> list[dict[str, Any]]:
        """Index the sidecars on disk that are not indexed yet; returns those added."""
        added = []
        batch: list[Path] = []

        def flush() -> None:
            known = self.has(p.stem for p in batch)
            for path in batch:
                if path.stem not in known:
                    data = self.add_file(recordings_dir, path)
                    if data is not None:
                        added.append(data)
            batch.clear()

        for path in iter_sidecars(recordings_dir, days):
            batch.append(path)
            if len(batch) >= 500:
                flush()
        flush()
        return added


# -- SQLite ----------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    call_id TEXT PRIMARY KEY,
    started_ts REAL NOT NULL,
    ended TEXT,
    direction TEXT,
    user TEXT,
    duration REAL,
    json_path TEXT NOT NULL,
    sidecar TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_started ON recordings (started_ts, call_id);
CREATE INDEX IF NOT EXISTS recordings_user ON recordings (user, started_ts, call_id);
CREATE INDEX IF NOT EXISTS recordings_direction ON recordings (direction, started_ts, call_id);
CREATE TABLE IF NOT EXISTS recording_numbers (
    number TEXT NOT NULL,
    started_ts REAL NOT NULL,
    call_id TEXT NOT NULL,
    PRIMARY KEY (number, started_ts, call_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recording_numbers_call ON recording_numbers (call_id);
"""


class SqliteIndex(RecordingsIndex):
    """One process's index in one SQLite file (`<recordings_dir>-index.sqlite3`, beside the tree)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.created = str(path) == ":memory:" or not self.path.exists()
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def add(self, sidecar: dict[str, Any], json_path: str) -> None:
        row = describe(sidecar)
        text = json.dumps(sidecar, ensure_ascii=False)
        db = self.db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM recording_numbers WHERE call_id = ?", (row.call_id,))
            db.execute(
                "INSERT OR REPLACE INTO recordings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (row.call_id, row.started_ts, row.ended, row.direction, row.user, row.duration, json_path, text),
            )
            db.executemany("INSERT OR IGNORE INTO recording_numbers VALUES (?, ?, ?)",
                           [(n, row.started_ts, row.call_id) for n in row.numbers])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def get(self, call_id: str) -> Entry | None:
        row = self.db.execute("SELECT call_id, json_path, started_ts, sidecar FROM recordings WHERE call_id = ?",
                              (call_id,)).fetchone()
        return Entry(*row) if row else None

    def remove(self, call_id: str) -> Entry | None:
        entry = self.get(call_id)
        if entry is None:
            return None
        db = self.db
        db.execute("BEGIN")
        db.execute("DELETE FROM recordings WHERE call_id = ?", (call_id,))
        db.execute("DELETE FROM recording_numbers WHERE call_id = ?", (call_id,))
        db.execute("COMMIT")
        return entry

    def search(self, query: Query) -> Page:
        where: list[str] = []
        args: list[Any] = []
        if query.number:
            source, ts = "recording_numbers n JOIN recordings r ON r.call_id = n.call_id", "n.started_ts"
            key = "n.call_id"
            where.append("n.number = ?")
            args.append(query.number)
        else:
            source, ts, key = "recordings r", "r.started_ts", "r.call_id"
        if query.start is not None:
            where.append(f"{ts} >= ?")
            args.append(query.start)
        if query.end is not None:
            where.append(f"{ts} < ?")
            args.append(query.end)
        if query.user:
            where.append("r.user = ?")
            args.append(query.user)
        if query.direction:
            where.append("r.direction = ?")
            args.append(query.direction)
        if query.after is not None:
            where.append(f"({ts}, {key}) < (?, ?)")
            args.extend(query.after)
        sql = (f"SELECT r.call_id, r.json_path, r.started_ts, r.sidecar FROM {source}"
               + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY {ts} DESC, {key} DESC LIMIT ?")
        args.append(query.limit + 1)
        rows = [Entry(*r) for r in self.db.execute(sql, args)]
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        cursor = encode_cursor(rows[-1].started_ts, rows[-1].call_id) if more and rows else None
        return Page(rows, cursor)

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM recordings").fetchone()[0]

    def started_before(self, ts: float, limit: int = 1000) -> list[Entry]:
        rows = self.db.execute(
            "SELECT call_id, json_path, started_ts, sidecar FROM recordings WHERE started_ts < ? "
            "ORDER BY started_ts, call_id LIMIT ?", (ts, limit))
        return [Entry(*r) for r in rows]

    def has(self, call_ids: Iterable[str]) -> set[str]:
        ids = list(call_ids)
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.db.execute(f"SELECT call_id FROM recordings WHERE call_id IN ({marks})", chunk))
        return found

    def close(self) -> None:
        self.db.close()
