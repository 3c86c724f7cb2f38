"""Lockout counters in Redis: the store protocol of lockout_store.py on a real redis-server,
and guesses spread over two workers sharing it counting together."""

from __future__ import annotations

import asyncio
import time

from b2bua.lockout import Lockout
from b2bua.lockout_store import MemoryLockoutStore
from b2bua.peer import Peer
from b2bua.redis_lockout import RedisLockoutStore
from b2bua.shared_state import sync_client
from b2bua.shared_state import subscriber_client
from tests.redis_fixture import eventually, redis, redis_module  # noqa: F401 - fixtures

GUESSER = Peer("udp", "203.0.113.66", 5070)
ALICE_PHONE = Peer("udp", "192.0.2.10", 5062)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def store(url: str, clock: Clock | None = None) -> RedisLockoutStore:
    return RedisLockoutStore(sync_client(url), MemoryLockoutStore(), **({"clock": clock} if clock else {}))


def test_the_protocol_rules_hold_on_redis(redis) -> None:  # noqa: F811
    """lockout_store's rules, with Redis's own clock (it ignores `now`): short real TTLs."""
    s = store(redis.url)
    assert s.get("c", 0.0) == 0 and s.ttl("c", 0.0) is None
    assert [s.incr("c", 0.4, 0.0) for _ in range(3)] == [1, 2, 3]
    first = s.ttl("c", 0.0)
    assert first is not None and 0.0 < first <= 0.4
    time.sleep(0.05)
    s.incr("c", 60, 0.0)  # later counts do not extend the window (nor take the new ttl)
    later = s.ttl("c", 0.0)
    assert later is not None and later < first
    time.sleep(0.45)
    assert s.get("c", 0.0) == 0  # expired: the window is over
    assert s.incr("c", 60, 0.0) == 1 and s.ttl("c", 0.0) > 59  # a new window
    s.put("lock", 1, 100, 0.0)
    assert s.get("lock", 0.0) == 1 and 99 < s.ttl("lock", 0.0) <= 100
    s.put("lock", 2, 10, 0.0)  # put replaces value and life
    assert s.get("lock", 0.0) == 2 and s.ttl("lock", 0.0) <= 10
    s.delete("c", 0.0)
    s.delete("never", 0.0)
    assert s.get("c", 0.0) == 0
    assert sync_client(redis.url, 2.0).exists("b2bua:lo:lock")  # under the cluster's prefix


def test_counts_from_two_workers_add_up(redis) -> None:  # noqa: F811
    one, two = store(redis.url), store(redis.url)
    counts = [(one if i % 2 else two).incr("f60:ip:203.0.113.66", 60, float(i)) for i in range(6)]
    assert counts == [1, 2, 3, 4, 5, 6]


def test_guesses_spread_over_two_workers_lock_the_guesser_out_of_both(redis) -> None:  # noqa: F811
    lines: list[str] = []
    workers = [Lockout(store=store(redis.url), log=lines.append) for _ in range(2)]
    tripped = [workers[i % 2].record_failure(GUESSER, "alice", float(i)) for i in range(5)]
    assert tripped == [False, False, False, False, True]  # 5 guesses in all, not 5 per worker
    assert all(w.refused(GUESSER, "alice", 10.0) for w in workers)
    assert all(w.refused(GUESSER, "bob", 10.0) for w in workers)  # the source, whatever user it names
    assert not any(w.refused(ALICE_PHONE, "alice", 10.0) for w in workers)  # alice herself is not
    assert len([line for line in lines if line.startswith("security: lockout ip=203.0.113.66 ")]) == 1


def test_a_known_phone_learnt_by_one_worker_is_known_to_the_other(redis) -> None:  # noqa: F811
    one, two = (Lockout(store=store(redis.url), log=lambda _: None) for _ in range(2))
    one.record_success(ALICE_PHONE, "alice", 0.0)
    assert two.is_known(ALICE_PHONE, "alice", 1.0)


def test_redis_away_each_worker_counts_alone_and_nothing_raises(redis) -> None:  # noqa: F811
    clock = Clock()
    s = store(redis.url, clock)
    assert s.incr("f60:ip:x", 60, 0.0) == 1
    redis.stop(remove_dir=False)
    try:
        # The fallback counts (from zero: counts made in Redis are not visible meanwhile).
        assert [s.incr("f60:ip:x", 60, 1.0) for _ in range(2)] == [1, 2]
        s.put("lock:ip:x", 1, 600, 1.0)
        assert s.get("lock:ip:x", 2.0) == 1 and s.ttl("lock:ip:x", 2.0) == 600.0  # flags: the store's own clock
    finally:
        redis.restart()
    assert s.incr("f60:ip:x", 60, 3.0) == 3  # Redis not retried within RETRY_AFTER: still local
    clock.t += 5
    assert s.incr("f60:ip:x", 60, 4.0) == 2  # back on Redis, which kept its count (append-only file)


async def test_flags_are_read_from_a_local_copy_kept_by_pub_sub(redis) -> None:  # noqa: F811
    """refused() runs on every request that needs authentication: with the flags replicated
    it makes no Redis call at all, and a lockout made by one worker reaches the other."""
    stores = [RedisLockoutStore(sync_client(redis.url), subscriber=subscriber_client(redis.url)) for _ in range(2)]
    for s in stores:
        await s.start()
    try:
        one, two = (Lockout(store=s, log=lambda _: None) for s in stores)
        for i in range(5):
            one.record_failure(GUESSER, "alice", float(i))
        await eventually(lambda: two.refused(GUESSER, "alice", 10.0))
        one.record_success(ALICE_PHONE, "alice", 11.0)
        await eventually(lambda: two.is_known(ALICE_PHONE, "alice", 12.0))

        def no_redis(*_: object, **__: object) -> None:
            raise AssertionError("a Redis call on the read path")

        stores[1]._client.get = no_redis  # type: ignore[method-assign]
        stores[1]._client.pttl = no_redis  # type: ignore[method-assign]
        assert two.refused(GUESSER, "bob", 13.0) and not two.refused(ALICE_PHONE, "alice", 13.0)

        # A worker started later loads the flags already set.
        late = RedisLockoutStore(sync_client(redis.url), subscriber=subscriber_client(redis.url))
        await late.start()
        assert Lockout(store=late, log=lambda _: None).refused(GUESSER, "carol", 14.0)
        await late.aclose()
    finally:
        for s in stores:
            await s.aclose()


async def test_the_flags_link_comes_back_after_redis_restarts(redis) -> None:  # noqa: F811
    stores = [RedisLockoutStore(sync_client(redis.url), subscriber=subscriber_client(redis.url)) for _ in range(2)]
    for s in stores:
        await s.start()
    try:
        stores[0].put("lock:ip:198.51.100.1", 1, 600, 0.0)
        await eventually(lambda: stores[1].get("lock:ip:198.51.100.1", 0.0) == 1)
        redis.restart()  # SIGTERM and start again on the same data
        await asyncio.sleep(0.6)  # past RETRY_AFTER's worth of the sync client's memory of the outage
        await eventually(lambda: stores[0]._call(lambda: True)[0])
        stores[0].put("lock:ip:198.51.100.2", 1, 600, 0.0)  # published after the restart ...
        await eventually(lambda: stores[1].get("lock:ip:198.51.100.2", 0.0) == 1)  # ... and heard
        assert stores[1].get("lock:ip:198.51.100.1", 0.0) == 1  # kept through the restart
    finally:
        for s in stores:
            await s.aclose()


async def test_read_through_sees_a_flag_before_its_publication_arrives(redis) -> None:  # noqa: F811
    """The wrong-password path asks Redis itself: between one worker's lockout and the
    publication reaching another (no await in between here, so none can have arrived),
    the other's copy says nothing, Redis says locked, and the guess gets 403."""
    stores = [RedisLockoutStore(sync_client(redis.url), subscriber=subscriber_client(redis.url)) for _ in range(2)]
    for s in stores:
        await s.start()
    try:
        one, two = (Lockout(max_failures=5, store=s, log=lambda _: None) for s in stores)
        for i in range(5):
            one.record_failure(GUESSER, "alice", float(i))
        assert stores[1].get("lock:ip:203.0.113.66", 5.0) == 0  # the copy has not heard yet
        assert stores[1].read_through("lock:ip:203.0.113.66", 5.0) == 1
        assert two.record_failure(GUESSER, "alice", 5.0)  # refused: 403, not a fresh 401
        await eventually(lambda: two.refused(GUESSER, "alice", 6.0))
    finally:
        for s in stores:
            await s.aclose()
