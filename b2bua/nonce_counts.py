"""Digest nonce-counts shared by a cluster's workers, so a challenge from one worker is
answered to another and a captured answer cannot be replayed to a third (RFC 7616 §3.4).

Nonces themselves need no shared state: they are stateless HMACs (`auth.py`), and the
workers share the HMAC secret through Redis (`shared_secret`). What must be shared is the
highest nonce-count seen per nonce, and that check cannot be deferred: the answer to the
request depends on it. So it is one synchronous script call, made only after the password
has been found right (guesses and floods never reach it), bounded by a short timeout:
bench/redis_rtt.py measured ~70 us median for this script on a local Redis, with
millisecond tails on a busy host; that is paid once per successful authentication, not per
packet.

If Redis does not answer, the authenticator falls back to its own table (replays to the
same worker are still refused) and Redis is not tried again for `RETRY_AFTER` seconds, so a
dead Redis costs the loop one timeout per interval, not one per request. When Redis answers
again, nonces issued before that moment are answered stale (the mark `nc-since` moves
forward, `after_outage`): counts recorded only locally during the outage cannot vouch for
them cluster-wide, so phones fetch a fresh nonce (one extra round trip each) rather than
leave a replay window. The same mark, absent after a Redis that lost its data, gives the
same answer then. What remains: during an outage, and until every worker has reconnected
(`redis_bindings.RECONNECT_DELAY`), an answer accepted by one worker alone could be replayed
once to another; digest over an unencrypted transport is exposed to worse than that.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, Literal

log = logging.getLogger("b2bua.shared_state")

Verdict = Literal["ok", "replay", "stale"]

#: Longest wait for Redis on the digest path. The median is ~70 us; past this Redis is
#: taken to be away and the local table answers.
CALL_TIMEOUT = 0.05
#: Seconds Redis is left alone after it failed to answer.
RETRY_AFTER = 1.0

# KEYS[1]: the nonce's count, KEYS[2]: the mark before which nonces are not vouched for.
# ARGV: nc, issued (UTC seconds, repr), now (UTC seconds, repr), ttl (ms), reset ("1": an
# outage just ended, move the mark to now).
_ADVANCE = """
local since = tonumber(redis.call('GET', KEYS[2]) or '-1')
if since < 0 or ARGV[5] == '1' then
  local now = tonumber(ARGV[3])
  if now > since then since = now; redis.call('SET', KEYS[2], ARGV[3]) end
end
if tonumber(ARGV[2]) <= since then return 'stale' end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= cur then return 'replay' end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
return 'ok'
"""


# KEYS[1]: the mark; ARGV[1]: now. The mark only moves forward.
_MARK = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class RedisNonceCounts:
    """The nonce-count table in Redis. `client` is a synchronous `redis.Redis` built with
    a short socket timeout and no retries (see `shared_state.sync_client`)."""

    def __init__(
        self,
        client: Any,
        prefix: str = "b2bua:",
        *,
        secret: bytes | None = None,
        since: float | None = None,
        clock: Any = time.monotonic,
        utc: Any = time.time,
    ) -> None:
        """`since` (UTC seconds, normally now): where the shared table's memory begins if
        no worker has marked it yet; without it, the first check marks it (and that first
        nonce is answered stale)."""
        self._client = client
        self._prefix = prefix
        if since is not None:
            client.set(prefix + "nc-since", repr(since), nx=True)
        self._secret = secret  # re-asserted after an outage (a Redis that lost its data)
        self._script = client.register_script(_ADVANCE)
        self._clock = clock  # only for the retry interval, never stored
        self._utc = utc  # the nonces' clock, to move the mark after an outage
        self._mark = client.register_script(_MARK)
        self._down_until: float | None = None  # Redis away: local table until this
        self._reset = False  # an outage ended: move the mark on the next call

    def after_outage(self) -> None:
        """Redis answers again (seen by the registrations' link, within RECONNECT_DELAY):
        put the shared secret back if it was lost, and move the mark to now, so no nonce
        counted by a worker alone during the outage can be replayed to another."""
        self._down_until = None
        try:
            if self._secret is not None:
                reassert_secret(self._client, self._secret, self._prefix)
            self._mark(keys=[self._prefix + "nc-since"], args=[repr(self._utc())])
            self._reset = False
        except Exception as exc:  # noqa: BLE001 - the next check moves the mark instead
            self._reset = True
            log.warning("nonces event=reassert-failed reason=%r", str(exc) or type(exc).__name__)

    @property
    def available(self) -> bool:
        return self._down_until is None or self._clock() >= self._down_until

    def advance(self, nonce: str, nc: int, issued: float, now: float, ttl: float) -> Verdict | None:
        """Record `nc` for `nonce` if it is the highest yet: "ok"; "replay" if not; "stale"
        if the shared table cannot vouch for a nonce this old. None: Redis did not answer
        (the caller uses its own table)."""
        if not self.available:
            return None
        try:
            verdict = self._script(
                keys=[self._prefix + "nc:" + nonce, self._prefix + "nc-since"],
                args=[nc, repr(issued), repr(now), max(1, int(ttl * 1000)), "1" if self._reset else "0"],
            )
        except Exception as exc:  # noqa: BLE001 - redis-py's ConnectionError, TimeoutError, ...
            if self._down_until is None:
                log.warning("nonces event=redis-lost reason=%r (each worker checks replays alone until it is back)",
                            str(exc) or type(exc).__name__)
            self._down_until = self._clock() + RETRY_AFTER
            self._reset = True
            return None
        if self._down_until is not None:
            log.info("nonces event=redis-back")
            self._down_until = None
        self._reset = False
        text = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
        return text if text in ("ok", "replay", "stale") else None  # type: ignore[return-value]


def shared_secret(client: Any, prefix: str = "b2bua:") -> bytes:
    """The digest nonce HMAC secret every worker uses: the first worker to ask makes it.

    Kept in Redis (persisted with it); a worker holds it for its life, so a Redis that
    lost its data gets the same secret back from the next worker to start (SET NX of the
    value it already holds is what `reassert_secret` does).
    """
    key = prefix + "digest-secret"
    client.set(key, secrets.token_hex(32), nx=True)
    value = client.get(key)
    if value is None:
        raise RuntimeError("Redis did not keep the digest secret")
    return bytes.fromhex(value.decode() if isinstance(value, bytes) else value)


def reassert_secret(client: Any, secret: bytes, prefix: str = "b2bua:") -> None:
    """Put our secret back if Redis lost it (restart without data); never overwrites."""
    client.set(prefix + "digest-secret", secret.hex(), nx=True)
