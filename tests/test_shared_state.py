"""open_stores(config): SQLite and memory for one process, Redis for a cluster; and the
private redis-server helper `b2bua cluster` uses."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from b2bua import redis_server
from b2bua.bindings_store import SqliteBindingsStore
from b2bua.nonce_counts import RedisNonceCounts
from b2bua.redis_bindings import RedisBindingsStore
from b2bua.redis_lockout import RedisLockoutStore
from b2bua.shared_state import cluster_redis_url, open_stores, redis_data_dir
from tests.redis_fixture import redis, redis_module  # noqa: F401 - fixtures


def config(tmp_path: Path, redis_url: str | None = None) -> SimpleNamespace:
    server = SimpleNamespace(registrations_db=tmp_path / "registrations.sqlite3", recordings_dir=tmp_path / "recordings")
    cfg = SimpleNamespace(server=server)
    if redis_url is not None:
        cfg.cluster = SimpleNamespace(redis=redis_url, workers=2)
    return cfg


async def test_without_cluster_redis_one_process_needs_only_sqlite(tmp_path: Path) -> None:
    stores = open_stores(config(tmp_path))
    await stores.start()
    assert isinstance(stores.bindings, SqliteBindingsStore) and not stores.shared
    assert stores.nonces is None and stores.lockout is None and len(stores.digest_secret) == 32
    assert (tmp_path / "registrations.sqlite3").exists()
    await stores.aclose()


async def test_cluster_redis_gives_every_worker_the_same_shared_stores(tmp_path: Path, redis) -> None:  # noqa: F811
    cfg = config(tmp_path, redis.url)
    assert cluster_redis_url(cfg) == redis.url
    one, two = open_stores(cfg), open_stores(cfg)
    for s in (one, two):
        await s.start()
        assert isinstance(s.bindings, RedisBindingsStore)
        assert isinstance(s.nonces, RedisNonceCounts) and isinstance(s.lockout, RedisLockoutStore)
    assert one.digest_secret == two.digest_secret
    assert one.describe() == f"shared-state=redis url={redis.url} bindings=0"
    secret_url = redis.url.replace("redis://", "redis://:hunter2@")
    assert "hunter2" not in type(one)(one.bindings, b"", redis_url=secret_url).describe()
    await one.aclose()
    await two.aclose()


async def test_an_unreachable_cluster_redis_is_a_clear_error(tmp_path: Path) -> None:
    port = redis_server.free_tcp_port()
    with pytest.raises(Exception, match="(?i)connect|refused"):
        open_stores(config(tmp_path, f"redis://127.0.0.1:{port}/0"))


def test_ensure_local_starts_a_private_server_only_when_nothing_answers(tmp_path: Path, redis) -> None:  # noqa: F811
    assert redis_server.ensure_local(redis.url, tmp_path / "unused") is None  # one answers already
    assert redis_server.ensure_local("redis://192.0.2.1:6379/0", tmp_path / "unused") is None  # another host's
    port = redis_server.free_tcp_port()
    started = redis_server.ensure_local(f"redis://localhost:{port}/0", tmp_path / "redis")
    assert started is not None
    try:
        assert started.port == port and redis_server.answers("127.0.0.1", port)
        assert (tmp_path / "redis" / "redis.log").exists()  # its data and log in the directory given
    finally:
        started.stop()
    assert not redis_server.answers("127.0.0.1", port)
    assert (tmp_path / "redis").exists()  # a directory we were given is kept (the data lives there)


def test_the_private_server_keeps_its_data_beside_the_registrations(tmp_path: Path) -> None:
    assert redis_data_dir(config(tmp_path)) == tmp_path / "redis"
