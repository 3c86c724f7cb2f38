"""Registrar bindings, and the SQLite file that lets them survive a restart.

Phones re-register only every hour or so; without persistence a restarted B2BUA could not
reach any phone until then. This is the one module of the registrar that does I/O, kept
small so `registrar.py` stays a pure state machine.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from b2bua.peer import Peer


@dataclass(frozen=True)
class Binding:
    """One registered contact of one user (RFC 3261 §10.3).

    `uri` is the Contact URI exactly as the phone sent it (its string, never re-serialised),
    because the phone matches requests against what it registered. `peer` is where the
    REGISTER came from: behind NAT the Contact address is private, so requests to the phone
    go to this source address and transport instead. `call_id`/`cseq` order refreshes
    (§10.3 step 7); `expires_at` is UTC seconds since the epoch, so a stored binding means
the same after a reboot (a monotonic reading would not).
    """

    user: str
    uri: str
    peer: Peer
    expires_at: float
    call_id: str
    cseq: int

    def expires_in(self, now: float) -> int:
        """Whole seconds left at UTC `now`, for a 200's Contact expires (never negative)."""
        return max(0, int(self.expires_at - now + 0.5))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (
    user       TEXT    NOT NULL,
    uri        TEXT    NOT NULL,
    transport  TEXT    NOT NULL,
    host       TEXT    NOT NULL,
    port       INTEGER NOT NULL,
    expires_at REAL    NOT NULL,
    call_id    TEXT    NOT NULL,
    cseq       INTEGER NOT NULL,
    PRIMARY KEY (user, uri)
)
"""


class BindingsStore:
    """Bindings in a SQLite file; `db_path=None` keeps nothing (in-memory registrar only).

    Writes are whole-user replacements in one transaction, matching the registrar's rule
    that a REGISTER's updates are committed all or nothing (RFC 3261 §10.3 step 7).
    """

    def __init__(self, db_path: str | Path | None) -> None:
        self._db: sqlite3.Connection | None = None
        if db_path is not None:
            self._db = sqlite3.connect(str(db_path))
            with self._db:
                self._db.execute(_SCHEMA)

    def load(self) -> list[Binding]:
        """Every stored binding, expired or not: the registrar expires them with its `now`."""
        if self._db is None:
            return []
        rows = self._db.execute(
            "SELECT user, uri, transport, host, port, expires_at, call_id, cseq FROM bindings"
        ).fetchall()
        return [
            Binding(user, uri, Peer(transport, host, int(port)), float(expires_at), call_id, int(cseq))
            for user, uri, transport, host, port, expires_at, call_id, cseq in rows
        ]

    def replace_user(self, user: str, bindings: Iterable[Binding]) -> None:
        """Make the stored bindings of `user` exactly `bindings`, atomically."""
        if self._db is None:
            return
        with self._db:
            self._db.execute("DELETE FROM bindings WHERE user = ?", (user,))
            self._db.executemany(
                "INSERT INTO bindings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (b.user, b.uri, b.peer.transport, b.peer.host, b.peer.port, b.expires_at, b.call_id, b.cseq)
                    for b in bindings
                ],
            )

    def remove(self, bindings: Iterable[Binding]) -> None:
        """Delete these bindings (expired ones), in one transaction."""
        if self._db is None:
            return
        with self._db:
            self._db.executemany(
                "DELETE FROM bindings WHERE user = ? AND uri = ?", [(b.user, b.uri) for b in bindings]
            )

    def close(self) -> None:
        """Close the file; the store keeps nothing after this."""
        if self._db is not None:
            self._db.close()
            self._db = None
