"""The lockout's store protocol, on its in-memory implementation (a Redis one must pass
the same rules: see b2bua/lockout_store.py)."""

from __future__ import annotations

from b2bua.lockout_store import LockoutStore, MemoryLockoutStore


def check_protocol(store: LockoutStore) -> None:
    """The rules of the protocol, reusable by any implementation given a fake `now`."""
    assert store.get("c", 0.0) == 0 and store.ttl("c", 0.0) is None
    assert [store.incr("c", 60, t) for t in (0.0, 10.0, 59.0)] == [1, 2, 3]
    assert store.ttl("c", 30.0) == 30.0  # later counts do not extend the window
    assert store.get("c", 60.0) == 0  # expired
    assert store.incr("c", 60, 61.0) == 1  # a new window
    store.put("lock", 1, 100, 0.0)
    assert store.get("lock", 99.0) == 1 and store.ttl("lock", 50.0) == 50.0
    store.put("lock", 2, 10, 50.0)  # put replaces value and life
    assert store.get("lock", 59.0) == 2 and store.get("lock", 60.0) == 0
    store.delete("c", 62.0)
    store.delete("never", 62.0)
    assert store.get("c", 62.0) == 0
    store.put("lock", 1, 100, 62.0)
    assert store.read_through("lock", 63.0) == 1 and store.read_through("absent", 63.0) == 0


def test_memory_store_keeps_the_protocol() -> None:
    check_protocol(MemoryLockoutStore())


def test_memory_store_is_bounded_and_forgets_the_oldest_first() -> None:
    store = MemoryLockoutStore(max_keys=100)
    for i in range(10_000):
        store.incr(f"f:ip:{i}", 3600, float(i))
    assert len(store) == 100
    assert store.get("f:ip:9999", 10_000.0) == 1 and store.get("f:ip:0", 10_000.0) == 0
