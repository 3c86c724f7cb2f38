"""What a synchronous call to a local Redis costs the event loop (figures, not a test).

The registrar and the call logic are synchronous and share the loop with media, so any Redis
round trip made on that path stalls RTP for its duration. This prints the cost of the calls
the shared state makes, against a private redis-server it starts: a PING, the nonce-count
script (the one synchronous call on the digest path), and a pipelined write for comparison.

    .venv/bin/python bench/redis_rtt.py [--n 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis

from b2bua import redis_server


def measure(label: str, fn, n: int) -> None:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))] / 1000  # noqa: E731
    print(f"{label:<34} n={n:<6} median={statistics.median(samples) / 1000:7.1f} us  "
          f"p99={q(0.99):7.1f} us  p99.9={q(0.999):7.1f} us  max={samples[-1] / 1000:8.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    with redis_server.start() as server:
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
