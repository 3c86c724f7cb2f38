"""The registration store interface, run against both stores: SQLite (one process) and
Redis (a cluster; a real redis-server started by the fixture). Then what only a shared
store must do: workers see each other's phones, per-contact changes do not undo each
other, and a Redis restart loses no registration."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from b2bua import redis_server
from b2bua.bindings_store import Binding, BindingsStore, SqliteBindingsStore
from b2bua.peer import Peer
from b2bua.redis_bindings import RedisBindingsStore, decode, encode
from b2bua.shared_state import async_clients
from tests.redis_fixture import eventually, redis, redis_module  # noqa: F401 - fixtures
from tests.test_registrar import ALICE_PHONE, T0, authorised, make_registrar

EDGE = Peer("udp", "198.51.100.7", 5060)


def binding(uri: str = "sip:alice@10.0.0.2:5062", user: str = "alice", expires_at: float = T0 + 3600,
            peer: Peer = ALICE_PHONE, cseq: int = 2) -> Binding:
    return Binding(user, uri, peer, expires_at, "reg-1@192.0.2.10", cseq)


Opener = Callable[[], Awaitable[BindingsStore]]


def redis_store(url: str) -> RedisBindingsStore:
    return RedisBindingsStore(*async_clients(url))


async def close(store: BindingsStore) -> None:
    await store.settle()
    if isinstance(store, RedisBindingsStore):
        await store.aclose()
    else:
        store.close()


@pytest.fixture(params=["sqlite", "redis"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a store on the same backing state each time (a restart, or another worker)."""
    opened: list[BindingsStore] = []

    async def open_store() -> BindingsStore:
        if request.param == "sqlite":
            store: BindingsStore = SqliteBindingsStore(tmp_path / "registrations.sqlite3")
        else:
            store = redis_store(request.getfixturevalue("redis").url)
        await store.start()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await close(store)


# -- the interface, both stores ------------------------------------------------------------


async def test_replace_user_is_read_back_in_order_and_survives_reopening(opener: Opener) -> None:
    store = await opener()
    assert isinstance(store, BindingsStore)
    a, b = binding("sip:alice@h1;transport=tcp"), binding("sip:alice@h2", peer=EDGE, expires_at=T0 + 60)
    store.replace_user("alice", [a, b])
    store.replace_user("bob", [binding("sip:bob@h3", user="bob")])
    assert store.bindings("alice") == [a, b]
    assert sorted(x.uri for x in store.all()) == ["sip:alice@h1;transport=tcp", "sip:alice@h2", "sip:bob@h3"]
    await close(store)

    again = await opener()
    assert set(again.bindings("alice")) == {a, b}  # every field, the peer's transport included
    assert [x.user for x in again.bindings("bob")] == ["bob"]
    assert again.bindings("carol") == []


async def test_replace_user_drops_contacts_left_out_and_empty_removes_the_user(opener: Opener) -> None:
    store = await opener()
    a, b = binding("sip:alice@h1"), binding("sip:alice@h2")
    store.replace_user("alice", [a, b])
    refreshed = binding("sip:alice@h2", expires_at=T0 + 7200, cseq=3)
    store.replace_user("alice", [refreshed])
    assert store.bindings("alice") == [refreshed]
    store.replace_user("bob", [binding("sip:bob@h3", user="bob")])
    store.replace_user("bob", [])
    assert store.bindings("bob") == []
    await close(store)
    again = await opener()
    assert again.bindings("alice") == [refreshed] and again.bindings("bob") == []


async def test_remove_deletes_only_the_version_it_names(opener: Opener) -> None:
    """The registrar removes what it saw expire; a newer refresh of that contact stays."""
    store = await opener()
    old = binding("sip:alice@h1", expires_at=T0 + 60)
    other = binding("sip:alice@h2", expires_at=T0 + 60)
    store.replace_user("alice", [old, other])
    newer = binding("sip:alice@h1", expires_at=T0 + 3600, cseq=9)
    store.replace_user("alice", [newer, other])
    store.remove([old, other])  # `old` is no longer stored: nothing happens to `newer`
    assert store.bindings("alice") == [newer]
    await close(store)
    again = await opener()
    assert again.bindings("alice") == [newer]


async def test_the_registrar_runs_on_either_store(opener: Opener) -> None:
    store = await opener()
    reg, _ = make_registrar(None)
    reg.close()
    from b2bua.registrar import Registrar

    reg = Registrar(reg.users, reg.realm, None, reg.authenticator, reg.lockout, store=store)
    assert authorised(reg, contacts=["<sip:alice@h1>", "<sip:alice@h2>;expires=60"]).status == 200
    assert [b.uri for b in reg.contacts("alice", T0 + 1)] == ["sip:alice@h1", "sip:alice@h2"]
    assert reg.user_at("192.0.2.10", now=T0) == "alice"
    assert [b.uri for b in reg.expire(T0 + 61)] == ["sip:alice@h2"]
    assert reg.next_expiry() == T0 + 3600
    await close(store)
    again = await opener()
    assert [b.uri for b in again.bindings("alice")] == ["sip:alice@h1"]


# -- what only the shared store does ---------------------------------------------------------


def test_a_binding_travels_with_every_field() -> None:
    b = binding("sip:alice@10.0.0.2:5062;ob", peer=Peer("tcp", "2001:db8::7", 40000))
    assert decode(encode(b)) == b


async def test_any_worker_sees_a_phone_registered_through_another(redis) -> None:  # noqa: F811
    one, two = redis_store(redis.url), redis_store(redis.url)
    await one.start()
    await two.start()
    try:
        reg_one, _ = make_registrar(None)
        from b2bua.registrar import Registrar

        worker1 = Registrar(reg_one.users, reg_one.realm, None, reg_one.authenticator, reg_one.lockout, store=one)
        worker2 = Registrar(reg_one.users, reg_one.realm, None, reg_one.authenticator, reg_one.lockout, store=two)
        assert authorised(worker1, contacts=["<sip:alice@10.0.0.2:5062>"]).status == 200
        await eventually(lambda: worker2.contacts("alice", T0 + 1))
        (seen,) = worker2.contacts("alice", T0 + 1)
        assert seen.peer == ALICE_PHONE and seen.uri == "sip:alice@10.0.0.2:5062"  # how to reach it
        assert worker2.registered_from("192.0.2.10")  # no stranger to worker 2 either (strangers.py)
        assert worker2.user_at("192.0.2.10", now=T0 + 1) == "alice"
        # An unregistration through worker 2 reaches worker 1.
        assert authorised(worker2, contacts=["*"], expires=0, cseq=7, now=T0 + 2).status == 200
        await eventually(lambda: not worker1.contacts("alice", T0 + 3))
        assert not worker1.registered_from("192.0.2.10")
    finally:
        await one.aclose()
        await two.aclose()


async def test_two_workers_refreshing_different_contacts_of_one_user_keep_both(redis) -> None:  # noqa: F811
    """Each worker writes its whole view of the user, but the store writes per contact: the
    phone one worker added is not erased by the other's write made before it saw it."""
    one, two = redis_store(redis.url), redis_store(redis.url)
    await one.start()
    await two.start()
    try:
        desk, mobile = binding("sip:alice@desk"), binding("sip:alice@mobile", peer=EDGE)
        one.replace_user("alice", [desk])
        two.replace_user("alice", [mobile])  # before worker 2 heard of the desk phone
        for store in (one, two):
            await store.settle()
        for store in (one, two):
            await eventually(lambda s=store: sorted(b.uri for b in s.bindings("alice")) == ["sip:alice@desk", "sip:alice@mobile"])
        third = redis_store(redis.url)
        await third.start()
        assert sorted(b.uri for b in third.bindings("alice")) == ["sip:alice@desk", "sip:alice@mobile"]
        await third.aclose()
    finally:
        await one.aclose()
        await two.aclose()


async def test_expiry_on_one_worker_does_not_remove_a_refresh_made_on_another(redis) -> None:  # noqa: F811
    one, two = redis_store(redis.url), redis_store(redis.url)
    await one.start()
    await two.start()
    try:
        old = binding("sip:alice@desk", expires_at=T0 + 60)
        one.replace_user("alice", [old])
        await one.settle()
        await eventually(lambda: two.bindings("alice") == [old])
        refreshed = binding("sip:alice@desk", expires_at=T0 + 3660, cseq=3)
        two.replace_user("alice", [refreshed])
        one.remove([old])  # worker 1's expiry timer fires before it hears of the refresh
        await one.settle()
        await two.settle()
        for store in (one, two):
            await eventually(lambda s=store: s.bindings("alice") == [refreshed])
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_restart_with_its_data_loses_nothing_and_queued_writes_land(redis) -> None:  # noqa: F811
    """SIGTERM'd Redis (append-only file completed): every binding is there after the
    restart; a REGISTER handled while Redis was down is written when it is back."""
    one, two = redis_store(redis.url), redis_store(redis.url)
    await one.start()
    await two.start()
    try:
        desk = binding("sip:alice@desk")
        one.replace_user("alice", [desk])
        await one.settle()
        await eventually(lambda: two.bindings("alice") == [desk])
        redis.stop(remove_dir=False)
        await eventually(lambda: not one.connected and not two.connected)
        assert two.bindings("alice") == [desk]  # reads carry on from the local copy
        bob = binding("sip:bob@phone", user="bob")
        one.replace_user("bob", [bob])  # queued while Redis is away
        redis.restart()
        await one.settle()
        await eventually(lambda: two.bindings("bob") == [bob] and two.bindings("alice") == [desk])
        assert one.outages == 1 and two.outages == 1
        fresh = redis_store(redis.url)
        await fresh.start()
        assert fresh.bindings("alice") == [desk] and fresh.bindings("bob") == [bob]
        await fresh.aclose()
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_losing_its_data_is_refilled_by_the_workers_and_by_refreshes(redis) -> None:  # noqa: F811
    """A Redis killed and started on an empty directory: the workers running put back what
    they hold; a binding no running worker held (every worker restarted too) comes back at
    the phone's next REGISTER refresh."""
    one = redis_store(redis.url)
    await one.start()
    try:
        desk = binding("sip:alice@desk")
        one.replace_user("alice", [desk])
        await one.settle()
        redis.stop(remove_dir=False, kill=True)
        shutil.rmtree(redis.directory)
        redis.directory.mkdir()
        redis.restart()
        await eventually(lambda: one.outages == 1 and one.connected)
        fresh = redis_store(redis.url)
        await fresh.start()
        assert fresh.bindings("alice") == [desk]  # re-asserted by the running worker
        await fresh.aclose()
    finally:
        await one.aclose()

    # Now nothing holds it: Redis empty and no worker running. The phone's refresh restores it.
    redis.stop(remove_dir=False, kill=True)
    shutil.rmtree(redis.directory)
    redis.directory.mkdir()
    redis.restart()
    store = redis_store(redis.url)
    await store.start()
    try:
        assert store.bindings("alice") == []  # lost until the phone refreshes
        from b2bua.registrar import Registrar

        base, _ = make_registrar(None)
        reg = Registrar(base.users, base.realm, None, base.authenticator, base.lockout, store=store)
        assert authorised(reg, contacts=["<sip:alice@desk>"], now=T0 + 1800, cseq=20).status == 200
        await store.settle()
        other = redis_store(redis.url)
        await other.start()
        assert [b.uri for b in other.bindings("alice")] == ["sip:alice@desk"]
        await other.aclose()
    finally:
        await store.aclose()


async def test_a_worker_does_not_start_blind_when_redis_is_unreachable() -> None:
    port = redis_server.free_tcp_port()
    store = redis_store(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(Exception, match="(?i)connect|refused"):
        await store.start()
    await store.aclose()


async def test_a_foreign_value_in_redis_neither_wedges_the_writer_nor_the_load(redis) -> None:  # noqa: F811
    from b2bua.shared_state import sync_client

    client = sync_client(redis.url, 2.0)
    client.hset("b2bua:reg:alice", "sip:alice@desk", "not json")  # someone else's write
    client.hset("b2bua:reg:alice", "sip:alice@old", "{}")
    store = redis_store(redis.url)
    await store.start()  # the bad entries are skipped (logged), not fatal
    try:
        assert store.bindings("alice") == []
        desk = binding("sip:alice@desk")
        store.replace_user("alice", [desk])  # overwrites the foreign value
        store.remove([binding("sip:alice@old", expires_at=T0)])  # not in the copy: nothing queued
        await store.settle()
        fresh = redis_store(redis.url)
        await fresh.start()
        assert fresh.bindings("alice") == [desk]
        await fresh.aclose()
    finally:
        await store.aclose()
