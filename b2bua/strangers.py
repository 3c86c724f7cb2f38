"""Strangers: answered at most once, never retransmitted, rate-limited per source (sans-IO).

A stranger is a source that is neither a trunk nor the address of a registered phone:
scanners, guessers, and whoever a spoofed UDP packet claims to be. Answering one as
RFC 3261 §17.2 answers a peer (100 Trying, then the final response retransmitted by
Timers G/J until an ACK that never comes) made the server a reflector: one 168-byte INVITE
drew 100 Trying and eleven 403s over 32 s, 16x the bytes (issue 16), and every
OPTIONS/REGISTER flood held a transaction (~3.9 KB) per request for 32 s.

So the transaction layer asks this policy before it answers a stranger:

- no 100 Trying (the core answers a stranger at once, so nothing needs stopping);
- the final response goes out once and the transaction is forgotten at once: nothing
  is held and nothing is retransmitted (a phone whose 401 was lost retransmits its
  REGISTER, and that retransmission is a new request);
- a request already answered (same Call-ID, CSeq, branch) within `remember` seconds is
  not answered again, so each request a stranger sends is answered at most once;
- answers per source IP are a token bucket (`rate` a second, bursts of `burst`), so a
  spoofed flood reflects at most `rate` answers a second to its victim;
- `answer=False` answers strangers not at all (`[security] answer_strangers = false`):
  a scanner learns nothing, at the price of a misconfigured phone seeing only timeouts.

What is not answered is counted into the per-source summary (`hostile_summary.py`).
Memory is bounded: `max_sources` buckets and `max_remembered` answered requests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from b2bua.hostile_summary import HostileSummary
from b2bua.peer import Peer

if TYPE_CHECKING:
    from b2bua.config import Config

#: Answers a second to one source IP. An office of phones behind one NAT re-registering
#: after a power cut needs one 401 each; 10 a second with bursts of 50 serves 50 phones
#: at once and caps a spoofed flood at 10 answers a second per victim.
DEFAULT_RATE = 10.0
#: Bursts, as a multiple of the rate.
BURST_FACTOR = 5.0
#: Seconds an answered request is remembered (RFC 3261 Timer B/F: 64*T1 = 32 s, the
#: longest a UAC retransmits one request).
REMEMBER = 32.0
#: Sources with a token bucket at once; the least recently seen are dropped first.
MAX_SOURCES = 10_000
#: Answered requests remembered at once, the oldest forgotten first (~250 bytes each).
MAX_REMEMBERED = 4096


class StrangerPolicy:
    """`trusted(peer, now)` says who is no stranger; `admit()` rations the answers."""

    def __init__(
        self,
        trusted: Callable[[Peer, float], bool],
        *,
        answer: bool = True,
        rate: float = DEFAULT_RATE,
        burst: float | None = None,
        summary: HostileSummary | None = None,
        remember: float = REMEMBER,
        max_sources: int = MAX_SOURCES,
        max_remembered: int = MAX_REMEMBERED,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._trusted = trusted
        self.answer = answer
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate * BURST_FACTOR)
        self.summary = summary if summary is not None else HostileSummary()
        self.remember = remember
        self._max_sources = max_sources
        self._max_remembered = max_remembered
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # host -> (tokens, at)
        self._answered: OrderedDict[Hashable, float] = OrderedDict()  # request key -> forget at

    def trusted(self, peer: Peer, now: float) -> bool:
        """A trunk or a registered phone's address: answered as RFC 3261 says."""
        return self._trusted(peer, now)

    def admit(self, peer: Peer, key: Hashable | None, now: float) -> bool:
        """May this stranger's request (identified by `key`, None: no identity) be answered?

        True at most once per key, and only while the source's bucket has a token.
        """
        self._forget_answered(now)
        if not self.answer:
            self.summary.count(peer.host, "unanswered", now)
            return False
        if key is not None and key in self._answered:
            self.summary.count(peer.host, "repeat", now)
            return False
        tokens, at = self._buckets.pop(peer.host, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        admitted = tokens >= 1.0
        self._buckets[peer.host] = (tokens - 1.0 if admitted else tokens, now)
        while len(self._buckets) > self._max_sources:
            self._buckets.popitem(last=False)
        if not admitted:
            self.summary.count(peer.host, "rate-limited", now)
            return False
        if key is not None:
            self._answered[key] = now + self.remember
            while len(self._answered) > self._max_remembered:
                self._answered.popitem(last=False)
        self.summary.count(peer.host, "answered", now)
        return True

    def held(self) -> int:
        """Entries this policy holds (buckets + remembered requests), for the memory bench."""
        return len(self._buckets) + len(self._answered)

    def _forget_answered(self, now: float) -> None:
        while self._answered:
            key, until = next(iter(self._answered.items()))
            if until > now:
                break
            del self._answered[key]


def policy_for(
    config: Config,
    registrar: Any,
    summary: HostileSummary | None = None,
    also_trusted: Callable[[Peer], bool] | None = None,
) -> StrangerPolicy:
    """The server's policy: trunks (by `[[trunks]] sources`) and the addresses of registered
    phones are trusted; `[security] answer_strangers` and `stranger_answers_per_second` ration
    the rest. `also_trusted`: a cluster worker's edge, whose socket address every request
    through it shares (the edge rations strangers at the public address)."""
    extra = also_trusted or (lambda _peer: False)
    return StrangerPolicy(
        lambda peer, _now: (registrar.registered_from(peer.host) or extra(peer)
                            or config.trunk_for(peer.host, peer.port) is not None),
        answer=config.security.answer_strangers,
        rate=config.security.stranger_answers_per_second,
        summary=summary,
    )
