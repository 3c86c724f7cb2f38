"""The recordings index in Redis, for a cluster: every worker's recordings found from any.

Used when `[cluster] redis` is set. Keys (prefix `b2bua:rec:`):

- `doc:<call_id>`: a hash with the sidecar text (`s`), its path relative to recordings_dir
  (`p`), the start as POSIX seconds (`t`), `user` (`u`) and `direction` (`d`);
- `by:all`, `by:num:<digits>`, `by:user:<name>`, `by:dir:<direction>`: sorted sets of call
  ids scored by start time, so a page newest first is a ZREVRANGEBYSCORE on the most
  selective set, the other filters checked on the page's hashes;
- `built:<hostname>`: set once this host's sidecars are in the index (absent: its workers
  rebuild at start).

Each add or remove is one MULTI/EXEC pipeline, so readers never see half a recording.

Why the synchronous client on the event loop: one pipeline to a Redis on the local network
is a round trip of tens of microseconds (bench/redis_rtt.py on the shared-state branch:
~40-70 us median), less than a thread hand-off would cost; the client has a short timeout
and no retries, so a Redis outage costs an API request a 503, never a stalled loop.

A recording's files stay on the host that recorded it: a worker on another host finds it
in the index but answers 404 for its WAV unless recordings_dir is shared storage.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from typing import Any

from b2bua.recordings_service.index import Entry, Page, Query, RecordingsIndex, describe, encode_cursor

PREFIX = "b2bua:rec:"
TIMEOUT = 0.5  # seconds: socket and connect timeout of the client
CHUNK = 200  # call ids read per step while filtering a page


def client(url: str, timeout: float = TIMEOUT) -> Any:
    """A redis-py client with a short timeout and no retries (redis-py's default retries
    sleep, which on the event loop would stall the media)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0))


class RedisIndex(RecordingsIndex):
    def __init__(self, url: str, *, redis_client: Any = None, prefix: str = PREFIX) -> None:
        self.r = redis_client if redis_client is not None else client(url)
        self.p = prefix
        # Per host: each host's first worker indexes the recordings on its own disk.
        self.marker = f"{prefix}built:{socket.gethostname()}"
        self.created = not self.r.exists(self.marker)

    # -- keys

    def _doc(self, call_id: str) -> str:
        return f"{self.p}doc:{call_id}"

    def _sets(self, numbers: Iterable[str], user: str | None, direction: str | None) -> list[str]:
        keys = [self.p + "by:all"] + [f"{self.p}by:num:{n}" for n in numbers]
        if user:
            keys.append(f"{self.p}by:user:{user}")
        if direction:
            keys.append(f"{self.p}by:dir:{direction}")
        return keys

    # -- the interface

    def built(self) -> None:
        self.r.set(self.marker, 1)
        self.created = False

    def add(self, sidecar: dict[str, Any], json_path: str) -> None:
        row = describe(sidecar)
        old = self.r.hget(self._doc(row.call_id), "k")
        pipe = self.r.pipeline(transaction=True)
        if old:  # replaced: leave none of its old sets behind
            for key in json.loads(old):
                pipe.zrem(key, row.call_id)
        keys = self._sets(row.numbers, row.user, row.direction)
        pipe.hset(self._doc(row.call_id), mapping={
            "s": json.dumps(sidecar, ensure_ascii=False), "p": json_path, "t": repr(row.started_ts),
            "u": row.user or "", "d": row.direction or "", "k": json.dumps(keys),
        })
        for key in keys:
            pipe.zadd(key, {row.call_id: row.started_ts})
        pipe.execute()

    def get(self, call_id: str) -> Entry | None:
        s, p, t = self.r.hmget(self._doc(call_id), "s", "p", "t")
        if s is None:
            return None
        return Entry(call_id, p.decode(), float(t), s.decode())

    def remove(self, call_id: str) -> Entry | None:
        entry = self.get(call_id)
        if entry is None:
            return None
        keys = self.r.hget(self._doc(call_id), "k")
        pipe = self.r.pipeline(transaction=True)
        for key in json.loads(keys or "[]"):
            pipe.zrem(key, call_id)
        pipe.delete(self._doc(call_id))
        pipe.execute()
        return entry

    def count(self) -> int:
        return int(self.r.zcard(self.p + "by:all"))

    def has(self, call_ids: Iterable[str]) -> set[str]:
        ids = list(call_ids)
        if not ids:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for call_id in ids:
            pipe.exists(self._doc(call_id))
        return {call_id for call_id, there in zip(ids, pipe.execute()) if there}

    def started_before(self, ts: float, limit: int = 1000) -> list[Entry]:
        ids = self.r.zrangebyscore(self.p + "by:all", "-inf", f"({ts!r}", start=0, num=limit)
        return [e for e in (self.get(i.decode()) for i in ids) if e is not None]

    def search(self, query: Query) -> Page:
        if query.number:
            primary = f"{self.p}by:num:{query.number}"
        elif query.user:
            primary = f"{self.p}by:user:{query.user}"
        elif query.direction:
            primary = f"{self.p}by:dir:{query.direction}"
        else:
            primary = self.p + "by:all"
        high: str = "+inf" if query.end is None else f"({query.end!r}"
        low = "-inf" if query.start is None else repr(query.start)
        after = query.after
        if after is not None:
            high = repr(after[0]) if query.end is None or after[0] < query.end else high
        # Filters the primary set does not already apply are checked on the hashes' small
        # fields first; the sidecar texts are read only for the page itself.
        check_user = query.user if query.user and not primary.startswith(f"{self.p}by:user:") else None
        check_dir = query.direction if query.direction and not primary.startswith(f"{self.p}by:dir:") else None
        filtered = bool(check_user or check_dir)
        found: list[Entry] = []
        # Each step reads on from the last member examined by its score, not by its rank: a
        # recording added (newer, so ranked first) while a page is read would shift ranks and
        # show a member twice. `skip` steps over the members of the boundary score already seen,
        # so a run of recordings started at one instant longer than a step still moves on.
        skip = 0
        while len(found) <= query.limit:
            want = query.limit + 1 - len(found)
            chunk = self.r.zrevrangebyscore(primary, high, low, start=skip, num=CHUNK if filtered else want + 1,
                                            withscores=True)
            if not chunk:
                break
            candidates = []
            for member, score in chunk:
                call_id = member.decode()
                # The cursor: strictly after (score, call_id) in (score desc, call_id desc) order.
                if after is not None and (score > after[0] or (score == after[0] and call_id >= after[1])):
                    continue
                candidates.append(call_id)
            last_score, last_id = chunk[-1][1], chunk[-1][0].decode()
            same = sum(1 for _, score in chunk if score == last_score)
            skip = skip + same if high == repr(last_score) else same
            high = repr(last_score)
            if after is None or (last_score, last_id) < after:  # later in the page's order
                after = (last_score, last_id)
            if filtered and candidates:
                pipe = self.r.pipeline(transaction=False)
                for call_id in candidates:
                    pipe.hmget(self._doc(call_id), "u", "d")
                candidates = [call_id for call_id, (u, d) in zip(candidates, pipe.execute())
                              if (not check_user or (u or b"").decode() == check_user)
                              and (not check_dir or (d or b"").decode() == check_dir)]
            candidates = candidates[:want]
            if not candidates:
                continue
            pipe = self.r.pipeline(transaction=False)
            for call_id in candidates:
                pipe.hmget(self._doc(call_id), "s", "p", "t")
            for call_id, (s, p, t) in zip(candidates, pipe.execute()):
                if s is not None:  # else removed meanwhile
                    found.append(Entry(call_id, p.decode(), float(t), s.decode()))
        more = len(found) > query.limit
        found = found[: query.limit]
        return Page(found, encode_cursor(found[-1].started_ts, found[-1].call_id) if more and found else None)

    def close(self) -> None:
        self.r.close()
