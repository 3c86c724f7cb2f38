"""Registrar bindings: the store interface, its in-memory copy, and the SQLite store.

Phones re-register only every hour or so; without persistence a restarted B2BUA could not
reach any phone until then. The registrar (`registrar.py`) is a pure state machine that
reads and writes bindings through `BindingsStore`; two stores implement it:

- `SqliteBindingsStore` (here): one process, `b2bua run`; a SQLite file behind an
  in-memory copy. Needs nothing but Python.
- `RedisBindingsStore` (`redis_bindings.py`): `b2bua cluster`, shared by every worker so any
  worker can ring any phone.

Both serve every read from memory: the registrar runs on the event loop beside media, and
a read on the call path (which contacts does alice have?) must never wait on a disk or a
network. Only writes leave the process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from b2bua.peer import Peer


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered contact of one user (RFC 3261 §10.3).

    `uri` is the Contact URI exactly as the phone sent it (its string, never re-serialised),
    because the phone matches requests against what it registered. `peer` is where the
    REGISTER came from: behind NAT the Contact address is private, so requests to the phone
    go to this source address and transport instead (in a cluster, the address the edge
    reports as the phone's, through which the edge holds its NAT binding or TCP connection).
    `call_id`/`cseq` order refreshes (§10.3 step 7); `expires_at` is UTC seconds since the
    epoch, so a stored binding means the same after a reboot (a monotonic reading would not)
    and on every host of a cluster.
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


@runtime_checkable
class BindingsStore(Protocol):
    """What the registrar needs of a store. Reads are served from memory, never block.

    Writes are whole-user replacements, matching the registrar's rule that a REGISTER's
    updates are committed all or nothing (RFC 3261 §10.3 step 7); a store shared between
    processes may turn them into per-contact changes so two workers updating different
    contacts of one user do not undo each other.
    """

    def bindings(self, user: str) -> list[Binding]:
        """The user's stored bindings, expired or not, oldest registration first (a shared
        store reloaded from Redis approximates that as soonest expiry first)."""
        ...

    def all(self) -> Iterator[Binding]:
        """Every stored binding, expired or not (the registrar expires them with its `now`)."""
        ...

    def replace_user(self, user: str, bindings: Iterable[Binding]) -> None:
        """Make the stored bindings of `user` exactly `bindings`."""
        ...

    def remove(self, bindings: Iterable[Binding]) -> None:
        """Delete these bindings (expired ones), unless the store holds a newer one for the
        same contact (another process refreshed it meanwhile)."""
        ...

    def from_host(self, host: str) -> bool:
        """True when some stored binding came from this source IP (O(1): asked per request)."""
        ...

    async def start(self) -> None:
        """Connect and load (a store shared over the network); call before serving."""
        ...

    async def settle(self) -> None:
        """Return when every write made so far is stored (and, shared, seen by the others)."""
        ...

    def close(self) -> None:
        """Release the store; what was written stays stored."""
        ...


class MemoryBindings:
    """The in-memory copy both stores serve reads from: user -> bindings in order."""

    def __init__(self) -> None:
        self._by_user: dict[str, list[Binding]] = {}
        self._hosts: dict[str, int] = {}  # source IP -> bindings from it

    def bindings(self, user: str) -> list[Binding]:
        return list(self._by_user.get(user, ()))

    def from_host(self, host: str) -> bool:
        return host in self._hosts

    def _count_hosts(self, bindings: Iterable[Binding], delta: int) -> None:
        for b in bindings:
            n = self._hosts.get(b.peer.host, 0) + delta
            if n > 0:
                self._hosts[b.peer.host] = n
            else:
                self._hosts.pop(b.peer.host, None)

    def all(self) -> Iterator[Binding]:
        for bindings in list(self._by_user.values()):
            yield from bindings

    def _set(self, user: str, bindings: list[Binding]) -> None:
        """Every change of the copy goes through here (so the host index stays right)."""
        self._count_hosts(self._by_user.get(user, ()), -1)
        self._count_hosts(bindings, +1)
        if bindings:
            self._by_user[user] = bindings
        else:
            self._by_user.pop(user, None)

    def _replace_all(self, by_user: dict[str, list[Binding]]) -> None:
        self._by_user = {u: bs for u, bs in by_user.items() if bs}
        self._hosts = {}
        for bs in self._by_user.values():
            self._count_hosts(bs, +1)

    def _discard(self, gone: Iterable[Binding]) -> list[Binding]:
        """Drop these bindings where the copy still holds exactly them; returns those dropped."""
        dropped = []
        for b in gone:
            current = self._by_user.get(b.user)
            if current and b in current:
                self._set(b.user, [x for x in current if x != b])
                dropped.append(b)
        return dropped

    async def start(self) -> None:
        return None

    async def settle(self) -> None:
        return None


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


class SqliteBindingsStore(MemoryBindings):
    """Bindings in memory, mirrored to a SQLite file; `db_path=None` keeps nothing on disk.

    One process only: the file is written synchronously (a REGISTER is rare next to RTP,
    and a local SQLite commit is a fraction of a millisecond).
    """

    def __init__(self, db_path: str | Path | None) -> None:
        super().__init__()
        self._db: sqlite3.Connection | None = None
        if db_path is not None:
            self._db = sqlite3.connect(str(db_path))
            # Write-ahead log, synced at checkpoints rather than at every commit: a commit
            # with a full sync cost ~1.6 ms median, p99 16 ms on this VM (bench/redis_rtt.py
            # --writes), on the loop that carries media. A process crash loses nothing; a
            # power cut may lose the last registrations, which the phones' refreshes restore.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                self._db.execute(_SCHEMA)
            state: dict[str, list[Binding]] = {}
            for b in self._load():
                state.setdefault(b.user, []).append(b)
            self._replace_all(state)

    def _load(self) -> list[Binding]:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT user, uri, transport, host, port, expires_at, call_id, cseq FROM bindings ORDER BY rowid"
        ).fetchall()
        return [
            Binding(user, uri, Peer(transport, host, int(port)), float(expires_at), call_id, int(cseq))
            for user, uri, transport, host, port, expires_at, call_id, cseq in rows
        ]

    def replace_user(self, user: str, bindings: Iterable[Binding]) -> None:
        bindings = list(bindings)
        self._set(user, bindings)
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
        dropped = self._discard(bindings)
        if self._db is None or not dropped:
            return
        with self._db:
            self._db.executemany(
                "DELETE FROM bindings WHERE user = ? AND uri = ? AND expires_at <= ?",
                [(b.user, b.uri, b.expires_at) for b in dropped],
            )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

