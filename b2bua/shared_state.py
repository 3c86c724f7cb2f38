"""The state a process keeps about phones and guessers, local or shared: `open_stores(config)`.

One process (`b2bua run`, no `[cluster] redis`): registrations in the SQLite file, digest
nonces and lockout counters in memory. Nothing else is needed, nothing is imported.

A cluster (`[cluster] redis = "redis://host:port/db"`): every worker opens the same Redis,
so any worker can ring any phone (`redis_bindings.py`), a challenge from one worker is
answered to another (`nonce_counts.py`), and guesses spread over workers count together
(`redis_lockout.py`). Client: redis-py (`redis`), the maintained client Redis itself
publishes, with asyncio support (the registrations' writer and pub/sub reader run on the
worker's loop) and Lua scripting (each change is one atomic script).

Usage (a worker):

    stores = open_stores(config)
    await stores.start()                  # connects and loads; raises if Redis is unreachable
    authenticator = DigestAuthenticator(realm, stores.digest_secret, shared=stores.nonces, utc_at=...)
    lockout = Lockout(..., store=stores.lockout)       # None: the lockout's in-memory store
    registrar = Registrar(..., store=stores.bindings)
    ...
    await stores.aclose()

Starting a private redis-server when `[cluster] redis` names this host and nothing answers
is the supervisor's job (once, before the workers): `redis_server.ensure_local(url, dir)`
with `redis_data_dir(config)`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from b2bua.bindings_store import BindingsStore, SqliteBindingsStore

#: Key prefix of everything the B2BUA keeps in Redis (one Redis may serve other things).
PREFIX = "b2bua:"
#: Socket timeout of the synchronous client used on the authentication path (nonce counts,
#: lockout counters). bench/redis_rtt.py: median ~40-70 us on a local Redis.
SYNC_TIMEOUT = 0.05
#: Timeout of the connection made at start (loading, the shared secret): not on any hot path.
START_TIMEOUT = 3.0


def cluster_redis_url(config: Any) -> str | None:
    """`[cluster] redis` of a loaded config, or None (the `[cluster]` section is parsed by
    config.py; a config without it, or without `redis`, means one process)."""
    cluster = getattr(config, "cluster", None)
    url = getattr(cluster, "redis", None) if cluster is not None else None
    return str(url) if url else None


def redis_data_dir(config: Any) -> Path:
    """Where a private redis-server started by `b2bua cluster` keeps its append-only file:
    beside the registrations database, so the same deployment directory holds both."""
    server = config.server
    db = getattr(server, "registrations_db", None)
    base = Path(db).parent if db else Path(server.recordings_dir).parent
    return base / "redis"


def sync_client(url: str, timeout: float = SYNC_TIMEOUT) -> Any:
    """A synchronous redis-py client for calls made on the event loop: a short timeout and
    NO retries. (redis-py's default is 10 retries with exponential backoff and time.sleep,
    which would freeze the loop, media included, for seconds when Redis is down.)"""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def async_clients(url: str) -> tuple[Any, Any]:
    """(writer, subscriber) redis.asyncio clients. No retries: the store's own loop
    reconnects and re-syncs."""
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from b2bua.redis_bindings import WRITE_TIMEOUT

    writer = aredis.Redis.from_url(
        url, socket_timeout=WRITE_TIMEOUT, socket_connect_timeout=WRITE_TIMEOUT, retry=Retry(NoBackoff(), 0)
    )
    return writer, subscriber_client(url)


def subscriber_client(url: str) -> Any:
    """A redis.asyncio client for pub/sub: it waits for messages, so no socket timeout (the
    stores' heartbeats notice a Redis that vanished)."""
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from b2bua.redis_bindings import WRITE_TIMEOUT

    return aredis.Redis.from_url(
        url, socket_timeout=None, socket_connect_timeout=WRITE_TIMEOUT, socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
    )


@dataclass
class Stores:
    """What one process shares (or not): pass its parts to the registrar, authenticator
    and lockout. `digest_secret` is shared by the cluster; one process makes its own."""

    bindings: BindingsStore
    digest_secret: bytes
    nonces: Any = None  # auth.SharedNonceCounts, or None: the authenticator's own table
    lockout: Any = None  # lockout_store.LockoutStore, or None: the lockout's in-memory store
    redis_url: str | None = None
    _sync: Any = field(default=None, repr=False)

    @property
    def shared(self) -> bool:
        return self.redis_url is not None

    def describe(self) -> str:
        """One log line's fields: where the state lives (a password in the URL is hidden)."""
        if self.redis_url is None:
            return "shared-state=none"
        parts = urlsplit(self.redis_url)
        shown = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()
        return f"shared-state=redis url={shown} bindings={sum(1 for _ in self.bindings.all())}"

    async def start(self) -> None:
        """Connect and load before serving (a no-op for SQLite, which loaded on open)."""
        await self.bindings.start()
        if self.lockout is not None and hasattr(self.lockout, "start"):
            await self.lockout.start()

    async def aclose(self) -> None:
        """Write what is pending, then close everything."""
        aclose = getattr(self.bindings, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            await self.bindings.settle()
            self.bindings.close()
        if self.lockout is not None and hasattr(self.lockout, "aclose"):
            await self.lockout.aclose()
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    def close(self) -> None:
        self.bindings.close()
        if self._sync is not None:
            self._sync.close()
            self._sync = None


def open_stores(config: Any, *, redis_url: str | None = None) -> Stores:
    """The stores `config` asks for: Redis when `[cluster] redis` is set (or `redis_url` is
    given), else SQLite and memory. Opening Redis reads (or makes) the shared digest secret
    with a synchronous call, so it raises if Redis does not answer within START_TIMEOUT."""
    url = redis_url or cluster_redis_url(config)
    if url is None:
        return Stores(SqliteBindingsStore(config.server.registrations_db), secrets.token_bytes(32))
    return open_redis_stores(url)


def open_redis_stores(url: str, prefix: str = PREFIX) -> Stores:
    """The cluster's stores on the Redis at `url` (see `open_stores`)."""
    from b2bua.lockout_store import MemoryLockoutStore
    from b2bua.nonce_counts import RedisNonceCounts, shared_secret
    from b2bua.redis_bindings import RedisBindingsStore
    from b2bua.redis_lockout import RedisLockoutStore

    starter = sync_client(url, START_TIMEOUT)
    try:
        secret = shared_secret(starter, prefix)
    finally:
        starter.close()
    client = sync_client(url)
    writer, subscriber = async_clients(url)
    bindings = RedisBindingsStore(writer, subscriber, prefix)
    nonces = RedisNonceCounts(client, prefix, secret=secret, since=time.time())  # nonce times are UTC
    bindings.on_reconnect.append(nonces.after_outage)
    lockout = RedisLockoutStore(client, MemoryLockoutStore(), prefix + "lo:", subscriber=subscriber_client(url))
    return Stores(bindings, secret, nonces, lockout, url, client)
