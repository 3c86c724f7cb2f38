"""Registrations shared by a cluster's workers through Redis, so any worker can ring any phone.

The registrar is synchronous and sans-IO and shares the event loop with media, so this store
never makes it wait on the network:

- reads come from a local copy (`MemoryBindings`), kept current by Redis pub/sub: every
  change is applied by a script that publishes what it changed, and every worker (the
  writer too) applies the messages in the order Redis ran the scripts, so all copies
  converge on Redis's state;
- writes update the local copy at once and are queued for a writer task (redis.asyncio)
  on the same loop. bench/redis_rtt.py shows why: a synchronous call to a local Redis has
  a ~40-70 us median but a p99.9 of several ms on a busy host, stalls that media on the
  same loop would feel; an async write costs the loop only the encoding.

Layout: one hash per user, `<prefix>reg:<user>`, field = the Contact URI as registered,
value = the binding as JSON. A change is per contact, not per user: two workers updating
different contacts of one user (two phones refreshing through different workers) do not
undo each other. A delete names the expiry it saw and is skipped when Redis holds a newer
one (another worker refreshed the contact meanwhile); an explicit de-registration deletes
whatever is there.

When Redis goes away (restart, crash, network): reads carry on from the local copy, writes
queue (bounded by `MAX_PENDING`). On reconnect each worker replays its queue, then
re-asserts every binding it holds that Redis lacks or holds an older expiry of, then
reloads the whole state. So a restarted Redis, even one that lost its data, is refilled by
the workers' copies within a reconnect (`RECONNECT_DELAY`); what is lost is only what no
surviving worker holds (see `docs/cluster-state.md`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from b2bua.bindings_store import Binding, MemoryBindings
from b2bua.peer import Peer

log = logging.getLogger("b2bua.shared_state")

#: Writes kept while Redis is unreachable. Each is one REGISTER's change (a few hundred
#: bytes); 100,000 covers an hour-long outage of a large site's refreshes. Past it the
#: oldest are dropped (logged with a count): those phones' next refresh restores them.
MAX_PENDING = 100_000
#: Seconds between reconnect attempts while Redis is away.
RECONNECT_DELAY = 0.5
#: Seconds a write to Redis may take before the connection is deemed lost. Writes are off
#: the loop's critical path, so this bounds only how long a dead Redis takes to notice.
WRITE_TIMEOUT = 2.0
#: An idle writer PINGs this often, so a Redis that vanished is noticed without traffic.
HEARTBEAT = 2.0
#: The expiry a de-registration's delete names: larger than any real one, so it always wins.
_ALWAYS = repr(1e300)

# KEYS[1] hash of the user. ARGV: channel, user, mode ("set" | "merge"), sets, dels.
# sets: [[uri, binding json, expires_at]]; "merge" writes one only where Redis has none or an
# older expiry (re-asserting a worker's copy after Redis restarted). dels: [[uri, expires_at]],
# deleted only where Redis's expiry is not later; the expiry is a string (repr of the float)
# because cjson re-encodes numbers to 14 digits, and the message must carry it exactly. Publishes what it changed, in its order.
_APPLY = """
local function expiry(text)  -- a value that is not ours reads as expired long ago
  local ok, v = pcall(cjson.decode, text)
  if ok and type(v) == 'table' and type(v['expires_at']) == 'number' then return v['expires_at'] end
  return -1
end
local key, merge = KEYS[1], ARGV[3] == 'merge'
local sets, dels = cjson.decode(ARGV[4]), cjson.decode(ARGV[5])
local done_sets, done_dels = {}, {}
for _, s in ipairs(sets) do
  local cur = redis.call('HGET', key, s[1])
  if not (merge and cur and expiry(cur) >= s[3]) and cur ~= s[2] then
    redis.call('HSET', key, s[1], s[2])
    done_sets[#done_sets + 1] = s[2]
  end
end
for _, d in ipairs(dels) do
  local cur = redis.call('HGET', key, d[1])
  if cur and expiry(cur) <= tonumber(d[2]) then
    redis.call('HDEL', key, d[1])
    done_dels[#done_dels + 1] = d
  end
end
if #done_sets + #done_dels > 0 then
  redis.call('PUBLISH', ARGV[1], cjson.encode({u = ARGV[2], set = done_sets, del = done_dels}))
end
return #done_sets + #done_dels
"""

_FIELDS = tuple(f.name for f in dataclasses.fields(Binding))


def encode(b: Binding) -> str:
    """A binding as JSON, every field the registrar stores (so fields added to `Binding`
    later, such as the edge's Path, travel without changing this store)."""
    d: dict[str, Any] = {}
    for name in _FIELDS:
        v = getattr(b, name)
        if isinstance(v, Peer):
            v = [v.transport, v.host, v.port]
        elif isinstance(v, tuple):
            v = list(v)
        d[name] = v
    return json.dumps(d, separators=(",", ":"), sort_keys=True)


def decode(text: str | bytes) -> Binding:
    d = json.loads(text)
    kwargs: dict[str, Any] = {}
    for name in _FIELDS:
        if name not in d:
            continue  # a field added later: its default applies
        v = d[name]
        if name == "peer":
            v = Peer(str(v[0]), str(v[1]), int(v[2]))
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[name] = v
    return Binding(**kwargs)


class RedisBindingsStore(MemoryBindings):
    """The cluster's registrations: a local copy for reads, Redis for sharing and keeping.

    `client` and `subscriber` are `redis.asyncio.Redis` clients (the subscriber without a
    socket timeout: it waits for messages). Call `await start()` before serving, on the
    loop that will run the registrar.
    """

    def __init__(self, client: Any, subscriber: Any, prefix: str = "b2bua:") -> None:
        super().__init__()
        self._client = client
        self._subscriber = subscriber
        self._prefix = prefix
        self._channel = prefix + "reg"
        self._pending: deque[tuple[str, str, list[list[Any]], list[list[Any]]]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._ready = asyncio.Event()
        self._script: Any = None
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0
        self.connected = False
        self.outages = 0  # times the link to Redis was lost (for tests and logs)
        #: Called (synchronously, on the loop) each time Redis answers again after an outage:
        #: the other shared stores re-assert what a Redis that lost its data must get back.
        self.on_reconnect: list[Callable[[], None]] = []

    # -- the interface ----------------------------------------------------------------

    def replace_user(self, user: str, bindings: Iterable[Binding]) -> None:
        new = list(bindings)
        old = {b.uri: b for b in self.bindings(user)}
        self._set(user, new)
        new_uris = {b.uri for b in new}
        sets = [[b.uri, encode(b), b.expires_at] for b in new if old.get(b.uri) != b]
        dels = [[uri, _ALWAYS] for uri in old if uri not in new_uris]
        if sets or dels:
            self._queue(user, "set", sets, dels)

    def remove(self, bindings: Iterable[Binding]) -> None:
        by_user: dict[str, list[list[Any]]] = {}
        for b in self._discard(bindings):
            by_user.setdefault(b.user, []).append([b.uri, repr(b.expires_at)])
        for user, dels in by_user.items():
            self._queue(user, "set", [], dels)

    async def start(self) -> None:
        """Connect, subscribe and load; returns once the local copy holds Redis's state
        (raises if Redis cannot be reached at all: a worker must not start blind)."""
        self._script = self._client.register_script(_APPLY)
        await self._client.ping()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-bindings")
        ready = asyncio.ensure_future(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()  # raises what stopped it

    async def settle(self) -> None:
        """Until every queued write is in Redis (waits through an outage)."""
        while self._pending or not self._idle.is_set():
            self._wake.set()
            await asyncio.sleep(0.005)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._pending:
            log.warning("registrations event=close-unwritten pending=%d", len(self._pending))

    async def aclose(self) -> None:
        """Write what is queued (if Redis answers within WRITE_TIMEOUT), then close."""
        if self._pending and self.connected:
            try:
                await asyncio.wait_for(self.settle(), WRITE_TIMEOUT)
            except asyncio.TimeoutError:
                pass
        task = self._task
        self.close()
        if task is not None:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                pass
        for c in (self._client, self._subscriber):
            await c.aclose()

    # -- writing ----------------------------------------------------------------------

    def _queue(self, user: str, mode: str, sets: list[list[Any]], dels: list[list[Any]]) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.warning("registrations event=dropped-unwritten count=%d (Redis away; phones' refreshes restore them)",
                            self._dropped)
        self._pending.append((user, mode, sets, dels))
        self._wake.set()

    async def _write(self, user: str, mode: str, sets: list[list[Any]], dels: list[list[Any]]) -> None:
        await asyncio.wait_for(
            self._script(
                keys=[self._prefix + "reg:" + user],
                args=[self._channel, user, mode, json.dumps(sets), json.dumps(dels)],
            ),
            WRITE_TIMEOUT,
        )

    async def _write_first(self) -> None:
        """Write the oldest queued change; it leaves the queue only once Redis has it (a
        lost connection retries it). One Redis refuses outright (out of memory, say) is
        dropped with a log line rather than retried for ever."""
        from redis.exceptions import ResponseError

        try:
            await self._write(*self._pending[0])
        except ResponseError as exc:
            user = self._pending[0][0]
            log.warning("registrations event=write-refused user=%s reason=%r", user, str(exc))
        self._pending.popleft()

    async def _writer(self) -> None:
        while True:
            while self._pending:
                self._idle.clear()
                await self._write_first()
            self._idle.set()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), HEARTBEAT)
            except asyncio.TimeoutError:
                await asyncio.wait_for(self._client.ping(), WRITE_TIMEOUT)

    # -- reading others' changes ---------------------------------------------------------

    def _apply(self, message: dict[str, Any]) -> None:
        user = str(message["u"])
        current = {b.uri: b for b in self.bindings(user)}
        for d in message.get("del") or ():
            b = current.get(d[0])
            if b is not None and b.expires_at <= float(d[1]):
                del current[d[0]]
        for text in message.get("set") or ():
            b = decode(text)
            current[b.uri] = b
        self._set(user, list(current.values()))

    async def _load(self) -> None:
        state: dict[str, list[Binding]] = {}
        async for key in self._client.scan_iter(match=self._prefix + "reg:*", count=1000):
            values = await self._client.hvals(key)
            for text in values:
                try:
                    b = decode(text)
                except (ValueError, KeyError, TypeError, IndexError):
                    log.warning("registrations event=bad-entry key=%s", key)
                    continue
                state.setdefault(b.user, []).append(b)
        # A Redis hash keeps no order once its values are long: soonest expiry first
        # stands in for "oldest registration first".
        self._replace_all({u: sorted(bs, key=lambda b: (b.expires_at, b.uri)) for u, bs in state.items()})

    async def _reseed(self) -> None:
        """After an outage: put back what this worker holds and Redis lacks (Redis may have
        restarted without its data). Newer entries in Redis win."""
        by_user: dict[str, list[list[Any]]] = {}
        for b in self.all():
            by_user.setdefault(b.user, []).append([b.uri, encode(b), b.expires_at])
        for user, sets in by_user.items():
            await self._write(user, "merge", sets, [])

    async def _reader(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=HEARTBEAT)
            if message is None or message.get("type") != "message":
                continue
            try:
                self._apply(json.loads(message["data"]))
            except (ValueError, KeyError, TypeError, IndexError):
                log.warning("registrations event=bad-message channel=%s", self._channel)

    async def _run(self) -> None:
        first = True
        while True:
            pubsub = self._subscriber.pubsub()
            tasks: list[asyncio.Task[None]] = []
            try:
                # Subscribe before loading: a change made during the load arrives as a
                # message after it, and messages applied in order converge on Redis's state.
                await pubsub.subscribe(self._channel)
                if not first:
                    while self._pending:  # replay what was written while Redis was away
                        await self._write_first()
                    await self._reseed()
                await self._load()
                self.connected = True
                if not first:
                    log.info("registrations event=redis-back bindings=%d", sum(1 for _ in self.all()))
                    for callback in self.on_reconnect:
                        try:
                            callback()
                        except Exception:  # noqa: BLE001 - one store's trouble must not stop this one
                            log.exception("registrations event=reconnect-callback-failed")
                first = False
                self._ready.set()
                tasks = [asyncio.ensure_future(self._reader(pubsub)), asyncio.ensure_future(self._writer())]
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    t.result()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - redis-py raises several kinds on a lost link
                if first:
                    raise
                if self.connected:
                    self.outages += 1
                    log.warning("registrations event=redis-lost reason=%r pending=%d (serving from the local copy)",
                                str(exc) or type(exc).__name__, len(self._pending))
                self.connected = False
                self._idle.set()
            finally:
                for t in tasks:
                    t.cancel()
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - the link is already gone
                    pass
            await asyncio.sleep(RECONNECT_DELAY)
