"""Webhooks: one signed POST per finalised recording to each `[[webhooks]] url`.

Delivery is at least once. Every POST is first written to a durable outbox (SQLite beside
the recordings, `<recordings_dir>-webhooks.sqlite3`), and is deleted from it only when the
receiver answers 2xx; until then it is retried with exponential backoff (1 s doubling to
at most an hour, with jitter), across restarts of the B2BUA. So a receiver may see the same
recording twice (same `call_id`), never none.

Memory stays bounded whatever the receivers do: pending deliveries live in the outbox file,
not in memory; the sender reads a few due rows at a time, sends at most `CONCURRENCY` at
once, and a receiver that fails is left alone (all its rows) until its backoff ends, so a
dead receiver costs one attempt per backoff period, not one per recording.

The body is the finalised sidecar plus `wav_url`, serialised once at enqueue; its
signature is `X-B2BUA-Signature: sha256=<hex HMAC-SHA256 of the raw body>` with the
webhook's secret, computed at send time (so a rotated secret signs what is still queued).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from b2bua.config import Webhook

log = logging.getLogger("b2bua.webhooks")

FIRST_RETRY = 1.0  # seconds after the first failure
MAX_RETRY = 3600.0  # the backoff stops doubling here
REQUEST_TIMEOUT = 10.0  # a receiver that does not answer within this counts as a failure
CONCURRENCY = 4  # POSTs in flight at once, over all receivers
BATCH = 16  # due rows read from the outbox per pass

SIGNATURE_HEADER = "X-B2BUA-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff(attempts: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the `attempts`-th failure: 1, 2, 4, ... capped, +-20% jitter
    so that many queued deliveries to one receiver do not come back in lockstep."""
    base = min(MAX_RETRY, FIRST_RETRY * 2 ** max(0, attempts - 1))
    return base * (0.8 + 0.4 * rand())


def body_for(sidecar: dict[str, Any], wav_url: str | None) -> bytes:
    return json.dumps({**sidecar, "wav_url": wav_url}, ensure_ascii=False, separators=(",", ":")).encode()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    call_id TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_at);
"""


class Outbox:
    """The durable queue (SQLite in WAL mode: a commit survives a crash of the process)."""

    def __init__(self, path: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.clock = clock

    def put(self, url: str, call_id: str, body: bytes) -> None:
        now = self.clock()
        self.db.execute("INSERT INTO outbox (url, call_id, body, next_at, created) VALUES (?, ?, ?, ?, ?)",
                        (url, call_id, body, now, now))

    def due(self, now: float, limit: int, skip_urls: Iterable[str] = ()) -> list[tuple[int, str, str, bytes, int]]:
        skip = list(skip_urls)
        marks = ",".join("?" * len(skip))
        sql = ("SELECT id, url, call_id, body, attempts FROM outbox WHERE next_at <= ?"
               + (f" AND url NOT IN ({marks})" if skip else "") + " ORDER BY next_at, id LIMIT ?")
        return list(self.db.execute(sql, [now, *skip, limit]))

    def next_due(self, skip_urls: Iterable[str] = ()) -> float | None:
        skip = list(skip_urls)
        marks = ",".join("?" * len(skip))
        sql = "SELECT min(next_at) FROM outbox" + (f" WHERE url NOT IN ({marks})" if skip else "")
        return self.db.execute(sql, skip).fetchone()[0]

    def delivered(self, row_id: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def failed(self, row_id: int, attempts: int, next_at: float, error: str) -> None:
        self.db.execute("UPDATE outbox SET attempts = ?, next_at = ?, last_error = ? WHERE id = ?",
                        (attempts, next_at, error[:200], row_id))

    def depth(self) -> int:
        return self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def drop_unknown(self, urls: Iterable[str]) -> int:
        """Deliveries to a URL no longer configured: dropped (their receiver is gone)."""
        keep = list(urls)
        marks = ",".join("?" * len(keep))
        sql = "DELETE FROM outbox" + (f" WHERE url NOT IN ({marks})" if keep else "")
        return self.db.execute(sql, keep).rowcount

    def close(self) -> None:
        self.db.close()


class WebhookSender:
    """Drains the outbox on the event loop with aiohttp's client."""

    def __init__(self, webhooks: Iterable[Webhook], outbox: Outbox, wav_url: Callable[[str], str | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.webhooks = {w.url: w for w in webhooks}
        self.outbox = outbox
        self.wav_url = wav_url
        self.clock = clock
        self.delivered_total = 0
        self.failed_total = 0
        self._blocked: dict[str, tuple[float, int]] = {}  # url -> (until, consecutive failures)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: Any = None

    def enqueue(self, sidecar: dict[str, Any]) -> None:
        """A recording is finalised: one outbox row per receiver (on the loop; a WAL commit)."""
        if not self.webhooks:
            return
        call_id = str(sidecar.get("call_id"))
        body = body_for(sidecar, self.wav_url(call_id))
        for url in self.webhooks:
            self.outbox.put(url, call_id, body)
        self._wake.set()

    def start(self) -> None:
        dropped = self.outbox.drop_unknown(self.webhooks)
        if dropped:
            log.warning("webhook event=dropped count=%d reason=url-no-longer-configured", dropped)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _skip(self, now: float) -> list[str]:
        """Receivers inside their backoff (their failure count is kept until a 2xx)."""
        return [url for url, (until, _) in self._blocked.items() if until > now]

    async def _run(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        limit = asyncio.Semaphore(CONCURRENCY)
        while True:
            now = self.clock()
            skip = self._skip(now)
            rows = self.outbox.due(now, BATCH, skip)
            if rows:
                await asyncio.gather(*(self._deliver(limit, *row) for row in rows))
                continue
            self._wake.clear()
            wait = 60.0
            nxt = self.outbox.next_due(skip)
            if nxt is not None:
                wait = min(wait, max(0.05, nxt - now))
            if skip:
                wait = min(wait, max(0.05, min(self._blocked[u][0] for u in skip) - now))
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def _deliver(self, limit: asyncio.Semaphore, row_id: int, url: str, call_id: str, body: bytes,
                       attempts: int) -> None:
        hook = self.webhooks.get(url)
        if hook is None:
            self.outbox.delivered(row_id)
            return
        async with limit:
            if url in self._blocked and self._blocked[url][0] > self.clock():
                return  # a row ahead of this one found the receiver failing: wait for its backoff
            error = None
            try:
                # No redirects: a 3xx is not the receiver's 2xx (and a POST is never re-aimed).
                async with self._session.post(url, data=body, allow_redirects=False, headers={
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: sign(hook.secret, body),
                    "User-Agent": "b2bua-webhooks",
                }) as response:
                    await response.read()
                    if not 200 <= response.status < 300:
                        error = f"HTTP {response.status}"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, timeout, DNS: the receiver is unavailable
                error = f"{type(exc).__name__}: {exc}"[:200]
        now = self.clock()
        if error is None:
            self.outbox.delivered(row_id)
            self.delivered_total += 1
            if self._blocked.pop(url, None) is not None:
                log.info("webhook event=receiver-back url=%s", url)
            log.info("call=%s event=webhook-delivered url=%s attempts=%d", call_id, url, attempts + 1)
            return
        self.failed_total += 1
        attempts += 1
        delay = backoff(attempts)
        self.outbox.failed(row_id, attempts, now + delay, error)
        _, fails = self._blocked.get(url, (0.0, 0))
        if fails == 0:  # one line when a receiver starts failing, not one per retry
            log.warning("webhook event=receiver-failing url=%s error=%r (retrying with backoff)", url, error)
        self._blocked[url] = (now + backoff(fails + 1), fails + 1)
