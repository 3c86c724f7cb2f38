"""What a synchronous call to a local Redis costs the event loop (figures, not a test).

The registrar and the call logic are synchronous and share the loop with media, so any Redis
round trip made on that path stalls RTP for its duration. This prints the cost of the calls
the shared state makes, against a private redis-server it starts: a PING, the nonce-count
script (the one synchronous call on the digest path), and a pipelined write for comparison.

    .venv/bin/python bench/redis_rtt.py [--n 20000] [--lockout]

With --lockout, also what the lockout's calls cost on its in-memory store, and on the Redis
store (counters in Redis, lock/known flags read from the local copy pub/sub keeps).
With --writes, what one registration write costs the process: the SQLite store's synchronous
commit, and the Redis store's queued write (the call, then the writer task's CPU on the same
loop, measured as process CPU time over a batch).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import redis

from b2bua import redis_server
from b2bua.lockout import Lockout
from b2bua.peer import Peer
from b2bua.redis_lockout import RedisLockoutStore
from b2bua.shared_state import subscriber_client, sync_client


def measure(label: str, fn, n: int) -> None:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))] / 1000  # noqa: E731
    print(f"{label:<36} n={n:<6} median={statistics.median(samples) / 1000:7.1f} us  "
          f"p99={q(0.99):7.1f} us  p99.9={q(0.999):7.1f} us  max={samples[-1] / 1000:8.1f} us")


def lockout_calls(label: str, lockout: Lockout, n: int) -> None:
    phone, stranger = Peer("udp", "192.0.2.10", 5062), Peer("udp", "203.0.113.9", 5070)
    lockout.record_success(phone, "alice", 0.0)
    measure(f"{label} refused(known phone)", lambda: lockout.refused(phone, "alice", 1.0), n)
    measure(f"{label} refused(stranger)", lambda: lockout.refused(stranger, "bob", 1.0), n)
    measure(f"{label} record_failure", lambda: lockout.record_failure(stranger, "bob", 1.0), n)
    measure(f"{label} record_success", lambda: lockout.record_success(phone, "alice", 1.0), n)


async def lockout_bench(url: str, n: int) -> None:
    never = {"max_failures": 10**9, "per_hour": 10**9, "per_day": 10**9, "user_per_hour": 10**9}
    lockout_calls("memory", Lockout(log=lambda _: None, **never), n)
    store = RedisLockoutStore(sync_client(url), subscriber=subscriber_client(url))
    await store.start()
    lockout_calls("redis", Lockout(store=store, log=lambda _: None, **never), n)
    await store.aclose()


async def writes_bench(url: str, n: int, directory: str) -> None:
    from b2bua.bindings_store import Binding, SqliteBindingsStore
    from b2bua.redis_bindings import RedisBindingsStore
    from b2bua.shared_state import async_clients

    def binding(i: int) -> Binding:
        return Binding(f"user{i % 500}", f"sip:user{i % 500}@10.0.0.{i % 250}:5060", Peer("udp", "192.0.2.1", 5060 + i % 1000),
                       1.8e9 + i, f"call{i}", i)

    sqlite = SqliteBindingsStore(f"{directory}/bench.sqlite3")
    i = iter(range(10**9))
    measure("sqlite replace_user (sync commit)", lambda: (lambda k: sqlite.replace_user(f"user{k % 500}", [binding(k)]))(next(i)), n)
    sqlite.close()
    store = RedisBindingsStore(*async_clients(url))
    await store.start()
    i = iter(range(10**9))
    measure("redis replace_user (the call alone)", lambda: (lambda k: store.replace_user(f"user{k % 500}", [binding(k)]))(next(i)), n)
    await store.settle()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for k in range(n):
        store.replace_user(f"user{k % 500}", [binding(10**6 + k)])
        if k % 100 == 99:
            await store.settle()
    await store.settle()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(f"{'redis replace_user + its async write':<36} n={n:<6} process CPU {cpu / n * 1e6:7.1f} us/write "
          f"(writer and pub/sub echo included), wall {wall / n * 1e6:7.1f} us/write")
    await store.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--lockout", action="store_true", help="also the lockout's calls, memory vs Redis store")
    ap.add_argument("--writes", action="store_true", help="also a registration write, SQLite vs Redis store")
    args = ap.parse_args()
    with redis_server.start() as server:
        if args.writes:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                asyncio.run(writes_bench(server.url, args.n // 4, tmp))
        if args.lockout:
            asyncio.run(lockout_bench(server.url, args.n // 4))
        client = redis.Redis(host=server.host, port=server.port, socket_timeout=0.05, socket_connect_timeout=0.05)
        script = client.register_script(
            "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') "
            "if tonumber(ARGV[1]) <= cur then return 0 end "
            "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1"
        )
        client.ping()
        measure("PING", client.ping, args.n)
        i = iter(range(10**9))
        measure("nonce-count script (EVALSHA)", lambda: script(keys=[f"b2bua:nc:{next(i) % 1000}"], args=[next(i), 300000]), args.n)
        measure("HSET+PUBLISH pipeline", lambda: client.pipeline(transaction=False).hset("b2bua:reg:u", "f", "v" * 200).publish("c", "v" * 200).execute(), args.n)
        client.close()


if __name__ == "__main__":
    main()
