"""SIP transactions (RFC 3261 §17, with the RFC 6026 "Accepted" state), sans-IO.

The layer never touches a socket or a clock, as aioquic's `QuicConnection` and h11's
`Connection` do not: the caller feeds it messages with `receive(msg, peer, now)`, asks
`next_deadline()` and calls `handle_timers(now)` when it passes, and drains
`outgoing()` for `(bytes, Peer)` pairs to write. Everything the layer tells its user (the
TU) is an event from `b2bua/events.py`. Timers T1/T2/T4 are parameters, so tests run the
32-second timers in microseconds on a fake clock.

The four machines of RFC 3261 §17 figures 5-8 (as amended by RFC 6026 §8.4 and §8.7) are
tables from (state, input) to (next state, action), one per machine, with states named as
the RFC names them. An input a table does not list is absorbed, as the figures absorb
what they do not draw (a 1xx in Completed, an INVITE retransmission in Confirmed); a TU
call a table does not list (a second final response) raises `TransactionError`.

What the layer does beyond RFC 3261 §17, for the TU's convenience:
- a 100 Trying goes out as soon as an INVITE arrives (§17.2.1 allows waiting 200 ms;
  answering at once stops the caller's Timer A retransmissions soonest);
- CANCEL is answered here (§9.2) and a CANCEL we send is built here (§9.1);
- a 2xx we send to an INVITE is retransmitted until its ACK arrives (§13.3.1.4, a UAS
  core duty), since only the layer has the clock;
- the top Via of every received request gets received/rport (§18.2.1, RFC 3581 §4) and
  responses go where §18.2.2 and RFC 3581 §4 say;
- with a `StrangerPolicy` (b2bua/strangers.py), requests from strangers (not a trunk,
  not a registered phone) get no 100 Trying and their final response once, rationed,
  with the transaction forgotten at once: not retransmitted, nothing held (issue 16).
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from b2bua.events import (
    AckReceived,
    AckTimedOut,
    CancelReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
)
from b2bua.headers import Via, parse_name_addr, parse_via
from b2bua.message import Headers, Request, Response, make_response, parse_message
from b2bua.peer import Peer

if TYPE_CHECKING:
    from b2bua.strangers import StrangerPolicy

#: RFC 3261 §17.1.1.1: T1, the round-trip estimate; 500 ms is the RFC default.
DEFAULT_T1 = 0.5
#: RFC 3261 §17.1.2.2: T2, the cap on non-INVITE and response retransmit intervals.
DEFAULT_T2 = 4.0
#: RFC 3261 §17.1.2.2: T4, how long a message may linger in the network.
DEFAULT_T4 = 5.0
#: RFC 3261 §17.1.1.2: Timer D waits for final-response retransmissions over UDP; "at
#: least 32 seconds" regardless of T1 (it covers the server's Timer G/H life).
TIMER_D_UDP = 32.0
#: Transactions held at once before a finished non-INVITE server transaction is forgotten as
#: soon as it is answered (issue 16). Completed ones are held 64*T1 = 32 s only to answer
#: retransmitted requests (§17.2.2), ~3.9 KB each: a flood at 4,000/s from a trusted
#: address would otherwise hold 500 MB. 20,000 is ~80 MB, far above a real load's need.
MAX_HELD_TRANSACTIONS = 20_000
#: RFC 3261 §8.1.1.6: Max-Forwards for requests the layer builds (ACK, CANCEL).
MAX_FORWARDS = 70
#: RFC 3261 §8.1.1.7: branches created by RFC 3261 elements start with this cookie; a
#: branch without it came from an RFC 2543 element and §17.2.3's fallback matching applies.
MAGIC_COOKIE = "z9hG4bK"
#: The port a Via without one means (RFC 3261 §18.2.2, §19.1.2 for sip: over UDP/TCP).
DEFAULT_SIP_PORT = 5060


class TransactionError(Exception):
    """The TU asked for something its transaction cannot do (a bug in the caller).

    Like h11's LocalProtocolError: raised for our own mistakes (a second final response,
    an unknown transaction id), never for anything a peer sends.
    """


class Kind(Enum):
    """Which of the four RFC 3261 §17 machines a transaction runs."""

    INVITE_CLIENT = "invite-client"  # §17.1.1
    NON_INVITE_CLIENT = "non-invite-client"  # §17.1.2
    INVITE_SERVER = "invite-server"  # §17.2.1
    NON_INVITE_SERVER = "non-invite-server"  # §17.2.2


class State(Enum):
    """Transaction states, named as RFC 3261 §17 and RFC 6026 §8 name them."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(Enum):
    """What can happen to a transaction: a message from the wire, a TU call, a timer."""

    # responses received (client machines)
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "300-699"
    # requests received (server machines)
    REQUEST = "request retransmission"
    ACK = "ACK"
    # responses the TU sends (server machines)
    SEND_PROVISIONAL = "1xx from TU"
    SEND_SUCCESS = "2xx from TU"
    SEND_FAILURE = "300-699 from TU"
    # timers, named as in RFC 3261 Table 4 and RFC 6026 §8.4/§8.7
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"
    #: RFC 3261 §13.3.1.4: the UAS core's 2xx retransmission (unnamed in the RFC).
    TIMER_2XX = "2xx retransmit"
    #: RFC 3261 §9.1: a CANCELled INVITE with no final response after 64*T1 is given up.
    TIMER_CANCEL = "CANCEL wait"


class Action(Enum):
    """What a transition does besides changing state."""

    NOTHING = "nothing"  # the transition itself is the point (or the input is absorbed)
    PASS_UP = "pass response to TU"
    PASS_PROVISIONAL = "pass 1xx to TU, send a deferred CANCEL"  # RFC 3261 §9.1
    ACK_AND_PASS_UP = "send ACK, pass response to TU"  # §17.1.1.3
    RESEND_ACK = "resend ACK"  # §17.1.1.2: final retransmission in Completed
    RETRANSMIT_REQUEST = "retransmit request, rearm timer"  # Timers A, E
    TIME_OUT = "inform TU of timeout"  # Timers B, F, H
    SEND_RESPONSE = "send the TU's response"
    RESEND_RESPONSE = "resend last response"  # a retransmitted request arrived
    RETRANSMIT_RESPONSE = "resend last response, rearm timer"  # Timers G, 2xx
    PASS_ACK = "pass ACK to TU, stop 2xx retransmissions"  # RFC 6026 §8.7
    ACK_TIME_OUT = "inform TU if the 2xx was never ACKed"  # Timer L, §13.3.1.4


S, In, Do = State, Input, Action  # short names keep the tables readable as the RFC figures
Table = dict[tuple[State, Input], tuple[State, Action]]

#: RFC 3261 §17.1.1.2 figure 5, with RFC 6026 §8.4 (2xx -> Accepted, Timer M).
INVITE_CLIENT: Table = {
    (S.CALLING, In.TIMER_A): (S.CALLING, Do.RETRANSMIT_REQUEST),
    (S.CALLING, In.TIMER_B): (S.TERMINATED, Do.TIME_OUT),
    (S.CALLING, In.PROVISIONAL): (S.PROCEEDING, Do.PASS_PROVISIONAL),
    (S.CALLING, In.SUCCESS): (S.ACCEPTED, Do.PASS_UP),
    (S.CALLING, In.FAILURE): (S.COMPLETED, Do.ACK_AND_PASS_UP),
    (S.PROCEEDING, In.PROVISIONAL): (S.PROCEEDING, Do.PASS_PROVISIONAL),
    (S.PROCEEDING, In.SUCCESS): (S.ACCEPTED, Do.PASS_UP),
    (S.PROCEEDING, In.FAILURE): (S.COMPLETED, Do.ACK_AND_PASS_UP),
    (S.PROCEEDING, In.TIMER_CANCEL): (S.TERMINATED, Do.TIME_OUT),
    (S.COMPLETED, In.FAILURE): (S.COMPLETED, Do.RESEND_ACK),
    (S.COMPLETED, In.TIMER_D): (S.TERMINATED, Do.NOTHING),
    (S.ACCEPTED, In.SUCCESS): (S.ACCEPTED, Do.PASS_UP),
    (S.ACCEPTED, In.TIMER_M): (S.TERMINATED, Do.NOTHING),
}

#: RFC 3261 §17.1.2.2 figure 6.
NON_INVITE_CLIENT: Table = {
    (S.TRYING, In.TIMER_E): (S.TRYING, Do.RETRANSMIT_REQUEST),
    (S.TRYING, In.TIMER_F): (S.TERMINATED, Do.TIME_OUT),
    (S.TRYING, In.PROVISIONAL): (S.PROCEEDING, Do.PASS_UP),
    (S.TRYING, In.SUCCESS): (S.COMPLETED, Do.PASS_UP),
    (S.TRYING, In.FAILURE): (S.COMPLETED, Do.PASS_UP),
    (S.PROCEEDING, In.TIMER_E): (S.PROCEEDING, Do.RETRANSMIT_REQUEST),
    (S.PROCEEDING, In.TIMER_F): (S.TERMINATED, Do.TIME_OUT),
    (S.PROCEEDING, In.PROVISIONAL): (S.PROCEEDING, Do.PASS_UP),
    (S.PROCEEDING, In.SUCCESS): (S.COMPLETED, Do.PASS_UP),
    (S.PROCEEDING, In.FAILURE): (S.COMPLETED, Do.PASS_UP),
    (S.COMPLETED, In.TIMER_K): (S.TERMINATED, Do.NOTHING),
}

#: RFC 3261 §17.2.1 figure 7, with RFC 6026 §8.7 (2xx -> Accepted, Timer L). The
#: Accepted-state 2xx retransmission is RFC 3261 §13.3.1.4's, done here for the TU.
INVITE_SERVER: Table = {
    (S.PROCEEDING, In.REQUEST): (S.PROCEEDING, Do.RESEND_RESPONSE),
    (S.PROCEEDING, In.SEND_PROVISIONAL): (S.PROCEEDING, Do.SEND_RESPONSE),
    (S.PROCEEDING, In.SEND_SUCCESS): (S.ACCEPTED, Do.SEND_RESPONSE),
    (S.PROCEEDING, In.SEND_FAILURE): (S.COMPLETED, Do.SEND_RESPONSE),
    (S.COMPLETED, In.REQUEST): (S.COMPLETED, Do.RESEND_RESPONSE),
    (S.COMPLETED, In.TIMER_G): (S.COMPLETED, Do.RETRANSMIT_RESPONSE),
    (S.COMPLETED, In.TIMER_H): (S.TERMINATED, Do.TIME_OUT),
    (S.COMPLETED, In.ACK): (S.CONFIRMED, Do.NOTHING),
    (S.CONFIRMED, In.TIMER_I): (S.TERMINATED, Do.NOTHING),
    (S.ACCEPTED, In.REQUEST): (S.ACCEPTED, Do.NOTHING),  # RFC 6026 §8.7: absorbed
    (S.ACCEPTED, In.ACK): (S.ACCEPTED, Do.PASS_ACK),
    (S.ACCEPTED, In.SEND_SUCCESS): (S.ACCEPTED, Do.SEND_RESPONSE),
    (S.ACCEPTED, In.TIMER_2XX): (S.ACCEPTED, Do.RETRANSMIT_RESPONSE),
    (S.ACCEPTED, In.TIMER_L): (S.TERMINATED, Do.ACK_TIME_OUT),
}

#: RFC 3261 §17.2.2 figure 8.
NON_INVITE_SERVER: Table = {
    (S.TRYING, In.REQUEST): (S.TRYING, Do.NOTHING),  # absorbed: nothing to resend yet
    (S.TRYING, In.SEND_PROVISIONAL): (S.PROCEEDING, Do.SEND_RESPONSE),
    (S.TRYING, In.SEND_SUCCESS): (S.COMPLETED, Do.SEND_RESPONSE),
    (S.TRYING, In.SEND_FAILURE): (S.COMPLETED, Do.SEND_RESPONSE),
    (S.PROCEEDING, In.REQUEST): (S.PROCEEDING, Do.RESEND_RESPONSE),
    (S.PROCEEDING, In.SEND_PROVISIONAL): (S.PROCEEDING, Do.SEND_RESPONSE),
    (S.PROCEEDING, In.SEND_SUCCESS): (S.COMPLETED, Do.SEND_RESPONSE),
    (S.PROCEEDING, In.SEND_FAILURE): (S.COMPLETED, Do.SEND_RESPONSE),
    (S.COMPLETED, In.REQUEST): (S.COMPLETED, Do.RESEND_RESPONSE),
    (S.COMPLETED, In.TIMER_J): (S.TERMINATED, Do.NOTHING),
}

MACHINES: dict[Kind, Table] = {
    Kind.INVITE_CLIENT: INVITE_CLIENT,
    Kind.NON_INVITE_CLIENT: NON_INVITE_CLIENT,
    Kind.INVITE_SERVER: INVITE_SERVER,
    Kind.NON_INVITE_SERVER: NON_INVITE_SERVER,
}

#: Where each machine starts (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).
INITIAL_STATE: dict[Kind, State] = {
    Kind.INVITE_CLIENT: S.CALLING,
    Kind.NON_INVITE_CLIENT: S.TRYING,
    Kind.INVITE_SERVER: S.PROCEEDING,
    Kind.NON_INVITE_SERVER: S.TRYING,
}

#: Timers started on entering a state. A timer still running when the state changes is
#: kept only if the new state has a transition for it (Timers E and F run on from Trying
#: into Proceeding, §17.1.2.2); every other timer dies with the state that started it.
ENTRY_TIMERS: dict[tuple[Kind, State], tuple[Input, ...]] = {
    (Kind.INVITE_CLIENT, S.CALLING): (In.TIMER_A, In.TIMER_B),
    (Kind.INVITE_CLIENT, S.COMPLETED): (In.TIMER_D,),
    (Kind.INVITE_CLIENT, S.ACCEPTED): (In.TIMER_M,),
    (Kind.NON_INVITE_CLIENT, S.TRYING): (In.TIMER_E, In.TIMER_F),
    (Kind.NON_INVITE_CLIENT, S.COMPLETED): (In.TIMER_K,),
    (Kind.INVITE_SERVER, S.COMPLETED): (In.TIMER_G, In.TIMER_H),
    (Kind.INVITE_SERVER, S.CONFIRMED): (In.TIMER_I,),
    (Kind.INVITE_SERVER, S.ACCEPTED): (In.TIMER_2XX, In.TIMER_L),
    (Kind.NON_INVITE_SERVER, S.COMPLETED): (In.TIMER_J,),
}

_RESPONSE_INPUTS = {1: In.PROVISIONAL, 2: In.SUCCESS}
_SEND_INPUTS = {1: In.SEND_PROVISIONAL, 2: In.SEND_SUCCESS}


@dataclass(slots=True)
class _Transaction:
    """One transaction's mutable state; owned by a `TransactionLayer`, never shared."""

    id: str
    kind: Kind
    request: Request | None  # None: a completed non-INVITE server transaction's (see _enter)
    peer: Peer  # client: where the request goes; server: where it came from
    state: State
    reply_to: Peer | None = None  # server: where responses go (RFC 3261 §18.2.2)
    top_via: str = ""  # the top Via as sent (client) or as received before rport (server)
    # Server: the last response as sent, and its To (for its tag): bytes are all a
    # retransmission needs, held for 64*T1 at a fraction of a parsed Response's memory.
    sent: bytes | None = None
    sent_to: str | None = None
    timers: dict[Input, float] = field(default_factory=dict)
    interval: float = 0.0  # the running retransmission interval (Timers A, E, G, 2xx)
    ack: Request | None = None  # client INVITE: our ACK for its non-2xx (§17.1.1.3)
    cancel_pending: bool = False  # client INVITE: TU cancelled before any 1xx (§9.1)
    cancel_sent: bool = False
    acked: bool = False  # server INVITE in Accepted: the 2xx's ACK arrived
    internal: bool = False  # a CANCEL the layer made: its events stay in the layer
    keys: list[tuple[dict[Any, str], Any]] = field(default_factory=list)  # (map, key) to undo

    @property
    def reliable(self) -> bool:
        return self.peer.reliable


class TransactionLayer:
    """All client and server transactions of one SIP element, fed messages and `now`.

    `t1`, `t2`, `t4` are RFC 3261 Table 4's timer values (tests shrink or keep them; the
    fake clock makes either cheap). Transaction ids are opaque strings.
    """

    def __init__(
        self,
        t1: float = DEFAULT_T1,
        t2: float = DEFAULT_T2,
        t4: float = DEFAULT_T4,
        *,
        strangers: StrangerPolicy | None = None,
        max_held: int = MAX_HELD_TRANSACTIONS,
    ) -> None:
        self.t1 = t1
        self.max_held = max_held
        #: Who is a stranger and how often one is answered; None: everyone is a peer.
        self.strangers = strangers
        self.t2 = t2
        self.t4 = t4
        self._txns: dict[str, _Transaction] = {}
        self._client: dict[tuple[str, str], str] = {}  # (branch, method) -> id, §17.1.3
        self._server: dict[tuple[object, ...], str] = {}  # §17.2.3 keys -> id
        self._accepted: dict[tuple[str, int], str] = {}  # (Call-ID, CSeq) -> INVITE server id
        self._timers: list[tuple[float, int, str, Input]] = []  # heap; stale entries skipped
        self._seq = itertools.count(1)
        self._out: list[tuple[bytes, Peer]] = []

    # ------------------------------------------------------------------ public API

    def receive(self, msg: Request | Response | bytes, peer: Peer, now: float) -> list[Event]:
        """Feed one message from `peer`; returns the events for the TU.

        Bytes are parsed here for convenience (raising `SipParseError`, which carries the
        status to answer); the server passes already-parsed messages.
        """
        if isinstance(msg, (bytes, bytearray)):
            msg = parse_message(bytes(msg))
        if isinstance(msg, Response):
            return self._receive_response(msg, now)
        return self._receive_request(msg, peer, now)

    def send_request(self, request: Request, peer: Peer, now: float) -> str:
        """Start a client transaction for `request` (not ACK) to `peer`; returns its id.

        The request must carry its top Via; a missing branch gets a fresh one (RFC 3261
        §8.1.1.7). ACK for a 2xx is no transaction (§17.1.1.3): use `send_stateless`.
        """
        if request.method == "ACK":
            raise TransactionError("ACK creates no client transaction; use send_stateless")
        return self._start_client(request, peer, now).id

    def send_response(self, txn_id: str, response: Response, now: float) -> None:
        """Send the TU's response on server transaction `txn_id` (RFC 3261 §17.2).

        The layer keeps it for retransmitted requests and, for a 2xx to an INVITE,
        retransmits it until the ACK arrives (§13.3.1.4).
        """
        txn = self._txns.get(txn_id)
        if txn is None or txn.kind not in (Kind.INVITE_SERVER, Kind.NON_INVITE_SERVER):
            raise TransactionError(f"no server transaction {txn_id!r} (terminated or never existed)")
        inp = _SEND_INPUTS.get(response.status // 100, In.SEND_FAILURE)
        if (txn.state, inp) not in MACHINES[txn.kind]:
            raise TransactionError(f"{txn.kind.value} {txn_id} in {txn.state.value} cannot send {response.status}")
        if inp is not In.SEND_PROVISIONAL and self._is_stranger(txn, now):
            self._answer_stranger(txn, response, now)
            return
        self._step(txn, inp, response, now)
        if txn.kind is Kind.NON_INVITE_SERVER and txn.state is S.COMPLETED and len(self._txns) > self.max_held:
            self._forget(txn)  # answered; a retransmitted request is then a new one

    def cancel(self, txn_id: str, now: float) -> None:
        """Cancel the INVITE client transaction `txn_id` (RFC 3261 §9.1).

        The CANCEL goes out once a provisional response has arrived (at once if one
        already has); if a final response comes first it is never sent. The layer owns
        the CANCEL's own transaction: its responses and time-out are not reported. If the
        INVITE then gets no final response in 64*T1, `TransactionTimedOut` reports it.
        Unknown or finished transactions are ignored: cancelling races the answer.
        """
        txn = self._txns.get(txn_id)
        if txn is None or txn.kind is not Kind.INVITE_CLIENT or txn.cancel_sent:
            return
        if txn.state is S.CALLING:
            txn.cancel_pending = True
        elif txn.state is S.PROCEEDING:
            self._send_cancel(txn, now)

    def send_stateless(self, msg: Request | Response, peer: Peer) -> None:
        """Queue a message outside any transaction: an ACK for a 2xx, a stateless reply."""
        self._out.append((msg.to_bytes(), peer))

    def next_deadline(self) -> float | None:
        """When `handle_timers` next has work, or None when no timer runs."""
        while self._timers:
            deadline, _, txn_id, timer = self._timers[0]
            txn = self._txns.get(txn_id)
            if txn is not None and txn.timers.get(timer) == deadline:
                return deadline
            heapq.heappop(self._timers)  # stale: timer stopped or transaction gone
        return None

    def handle_timers(self, now: float) -> list[Event]:
        """Fire every timer due at `now`; returns the events for the TU.

        A retransmission timer re-arms relative to `now`, so a late call sends one
        retransmission, not a burst.
        """
        events: list[Event] = []
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, _, txn_id, timer = heapq.heappop(self._timers)
            txn = self._txns[txn_id]
            del txn.timers[timer]
            events += self._step(txn, timer, None, now)
        return events

    def outgoing(self) -> list[tuple[bytes, Peer]]:
        """Drain the messages to write, in order."""
        out, self._out = self._out, []
        return out

    def state(self, txn_id: str) -> State:
        """The RFC state of a transaction (Terminated once it is gone); for tests and logs."""
        txn = self._txns.get(txn_id)
        return txn.state if txn is not None else S.TERMINATED

    def __len__(self) -> int:
        """Live transactions (a gauge for logs and tests)."""
        return len(self._txns)

    # ------------------------------------------------------------------ the machines

    def _step(
        self,
        txn: _Transaction,
        inp: Input,
        msg: Request | Response | None,
        now: float,
        peer: Peer | None = None,
    ) -> list[Event]:
        """Apply one input through the machine's table; absorb what the table omits.

        `peer` is where a received request came from (an ACK's sender is reported).
        """
        entry = MACHINES[txn.kind].get((txn.state, inp))
        if entry is None:
            return []
        next_state, action = entry
        events = self._act(action, txn, inp, msg, now, peer or txn.peer)
        if next_state is not txn.state:
            self._enter(txn, next_state, now)
        return [] if txn.internal else events

    def _enter(self, txn: _Transaction, state: State, now: float) -> None:
        """Change state: drop timers the new state has no use for, start its own."""
        table = MACHINES[txn.kind]
        txn.state = state
        for timer in [t for t in txn.timers if (state, t) not in table]:
            del txn.timers[timer]
        if state is S.TERMINATED:
            self._forget(txn)
            return
        if txn.kind is Kind.INVITE_SERVER and state is S.ACCEPTED:
            key = (txn.request.call_id, txn.request.cseq[0])
            self._accepted[key] = txn.id
            txn.keys.append((self._accepted, key))
        elif txn.kind is Kind.NON_INVITE_SERVER and state is S.COMPLETED and not _rfc2543(txn):
            # Completed only answers retransmissions (§17.2.2), matched by the key and
            # answered from `sent`: the request (a REGISTER with its credentials, ~3 KB
            # parsed) is not kept 64*T1 (issue 17: memory). RFC 2543 matching needs its To.
            txn.request = None
        immediate = []
        for timer in ENTRY_TIMERS.get((txn.kind, state), ()):
            delay = self._duration(timer, txn.reliable)
            if delay is None:
                continue
            if timer in (In.TIMER_A, In.TIMER_E, In.TIMER_G, In.TIMER_2XX):
                txn.interval = delay
            if delay == 0:
                immediate.append(timer)  # Timers D/I/J/K over TCP: nothing to wait for
            else:
                self._arm(txn, timer, now + delay)
        for timer in immediate:
            if txn.state is state:
                self._step(txn, timer, None, now)

    def _duration(self, timer: Input, reliable: bool) -> float | None:
        """RFC 3261 Table 4 (and RFC 6026 §8.4, §8.7); None: not run on this transport."""
        t1, t4 = self.t1, self.t4
        if timer in (In.TIMER_A, In.TIMER_E, In.TIMER_G):
            return None if reliable else t1  # §17.1.1.2 etc.: no retransmission over TCP
        if timer is In.TIMER_2XX:
            # §13.3.1.4: retransmitted even over a reliable transport, since the 2xx is
            # end-to-end and a later hop may be UDP.
            return t1
        if timer is In.TIMER_D:
            return 0.0 if reliable else max(TIMER_D_UDP, 64 * t1)
        if timer in (In.TIMER_I, In.TIMER_K):
            return 0.0 if reliable else t4
        if timer is In.TIMER_J:
            return 0.0 if reliable else 64 * t1
        return 64 * t1  # B, F, H, L, M and the §9.1 CANCEL wait

    def _arm(self, txn: _Transaction, timer: Input, deadline: float) -> None:
        txn.timers[timer] = deadline
        heapq.heappush(self._timers, (deadline, next(self._seq), txn.id, timer))

    def _act(
        self,
        action: Action,
        txn: _Transaction,
        inp: Input,
        msg: Request | Response | None,
        now: float,
        peer: Peer,
    ) -> list[Event]:
        """Carry out a table action; returns the events it produces."""
        if action is Do.NOTHING:
            return []
        if action is Do.PASS_UP:
            assert isinstance(msg, Response)
            txn.cancel_pending = False  # §9.1: a final response first means no CANCEL
            return [ResponseReceived(txn.id, msg)]
        if action is Do.PASS_PROVISIONAL:
            assert isinstance(msg, Response)
            events: list[Event] = [ResponseReceived(txn.id, msg)]
            if txn.cancel_pending:
                self._send_cancel(txn, now)
            return events
        if action is Do.ACK_AND_PASS_UP:
            assert isinstance(msg, Response)
            txn.cancel_pending = False
            txn.ack = self._build_ack(txn, msg)
            self._out.append((txn.ack.to_bytes(), txn.peer))
            return [ResponseReceived(txn.id, msg)]
        if action is Do.RESEND_ACK:
            if txn.ack is not None:
                self._out.append((txn.ack.to_bytes(), txn.peer))
            return []
        if action is Do.RETRANSMIT_REQUEST:
            self._out.append((txn.request.to_bytes(), txn.peer))
            if inp is In.TIMER_A:
                txn.interval *= 2  # §17.1.1.2: Timer A doubles with no cap
            elif txn.state is S.PROCEEDING:
                txn.interval = self.t2  # §17.1.2.2: Timer E is T2 once in Proceeding
            else:
                txn.interval = min(2 * txn.interval, self.t2)
            self._arm(txn, inp, now + txn.interval)
            return []
        if action is Do.TIME_OUT:
            return [TransactionTimedOut(txn.id, txn.request)]
        if action is Do.SEND_RESPONSE:
            assert isinstance(msg, Response)
            txn.sent = msg.to_bytes()
            txn.sent_to = msg.headers.get("To")
            self._send_last_response(txn)
            return []
        if action is Do.RESEND_RESPONSE:
            self._send_last_response(txn)
            return []
        if action is Do.RETRANSMIT_RESPONSE:
            self._send_last_response(txn)
            txn.interval = min(2 * txn.interval, self.t2)  # §17.2.1 Timer G, §13.3.1.4
            self._arm(txn, inp, now + txn.interval)
            return []
        if action is Do.PASS_ACK:
            assert isinstance(msg, Request)
            txn.acked = True
            txn.timers.pop(In.TIMER_2XX, None)
            return [AckReceived(msg, peer)]
        if action is Do.ACK_TIME_OUT:
            return [] if txn.acked else [AckTimedOut(txn.id, txn.request)]
        raise AssertionError(action)  # pragma: no cover - every Action is handled above

    def _send_last_response(self, txn: _Transaction) -> None:
        if txn.sent is not None and txn.reply_to is not None:
            self._out.append((txn.sent, txn.reply_to))

    def _forget(self, txn: _Transaction) -> None:
        """Terminated: drop the transaction and every map entry that leads to it."""
        self._txns.pop(txn.id, None)
        txn.timers.clear()
        for table, key in txn.keys:
            if table.get(key) == txn.id:
                del table[key]

    # ------------------------------------------------------------------ client side

    def _start_client(self, request: Request, peer: Peer, now: float, *, internal: bool = False) -> _Transaction:
        vias = request.headers.get_all("Via")
        if not vias:
            raise TransactionError("a request needs its top Via before it is sent (RFC 3261 §8.1.1.7)")
        via = parse_via(vias[0])
        if not via.branch:
            vias[0] = f"{vias[0]};branch={_new_branch()}"
            _replace_vias(request.headers, vias)
            via = parse_via(vias[0])
        key = (via.branch, request.method)
        if key in self._client:
            raise TransactionError(f"branch {via.branch} is already in use for {request.method}")
        kind = Kind.INVITE_CLIENT if request.method == "INVITE" else Kind.NON_INVITE_CLIENT
        txn = _Transaction(
            id=f"{kind.value}-{next(self._seq)}",
            kind=kind,
            request=request,
            peer=peer,
            state=INITIAL_STATE[kind],
            top_via=vias[0],
            internal=internal,
        )
        self._txns[txn.id] = txn
        self._client[key] = txn.id
        txn.keys.append((self._client, key))
        self._out.append((request.to_bytes(), peer))
        self._enter(txn, txn.state, now)
        return txn

    def _receive_response(self, response: Response, now: float) -> list[Event]:
        """RFC 3261 §17.1.3: a response matches by top-Via branch and CSeq method."""
        try:
            branch = response.branch
            method = response.cseq[1]
        except Exception:  # noqa: BLE001 - a response we cannot match is a stray
            branch, method = None, None
        txn_id = self._client.get((branch, method)) if branch else None
        txn = self._txns.get(txn_id) if txn_id is not None else None
        if txn is None:
            return [ResponseReceived(None, response)]  # RFC 6026 §8.4: a stray 2xx goes up
        if not 100 <= response.status <= 699:
            return []
        inp = _RESPONSE_INPUTS.get(response.status // 100, In.FAILURE)
        return self._step(txn, inp, response, now)

    def _build_ack(self, txn: _Transaction, response: Response) -> Request:
        """RFC 3261 §17.1.1.3: the ACK for a non-2xx final response, built by the transaction.

        Same Request-URI, Call-ID, From and CSeq number as the INVITE, the response's To
        (with its tag), one Via equal to the INVITE's top Via (same branch), and the
        INVITE's Route header fields.
        """
        invite = txn.request
        headers = Headers()
        headers.add("Via", txn.top_via)
        for route in invite.headers.get_all("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", str(MAX_FORWARDS))
        headers.add("From", invite.headers.get("From") or "")
        headers.add("To", response.headers.get("To") or "")
        headers.add("Call-ID", invite.call_id)
        headers.add("CSeq", f"{invite.cseq[0]} ACK")
        return Request("ACK", invite.uri, headers)

    def _build_cancel(self, txn: _Transaction) -> Request:
        """RFC 3261 §9.1: Request-URI, Call-ID, From, To and CSeq number of the INVITE,
        method CANCEL, one Via identical to the INVITE's top Via, and its Route set."""
        invite = txn.request
        headers = Headers()
        headers.add("Via", txn.top_via)
        for route in invite.headers.get_all("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", str(MAX_FORWARDS))
        headers.add("From", invite.headers.get("From") or "")
        headers.add("To", invite.headers.get("To") or "")
        headers.add("Call-ID", invite.call_id)
        headers.add("CSeq", f"{invite.cseq[0]} CANCEL")
        return Request("CANCEL", invite.uri, headers)

    def _send_cancel(self, txn: _Transaction, now: float) -> None:
        txn.cancel_pending = False
        txn.cancel_sent = True
        self._start_client(self._build_cancel(txn), txn.peer, now, internal=True)
        self._arm(txn, In.TIMER_CANCEL, now + 64 * self.t1)  # §9.1: then the INVITE is given up

    # ------------------------------------------------------------------ server side

    def _receive_request(self, request: Request, peer: Peer, now: float) -> list[Event]:
        vias = request.headers.get_all("Via")
        if not vias:
            return []  # unanswerable: RFC 3261 §18.2.2 needs a Via to send a response to
        try:
            via = parse_via(vias[0])
        except Exception:  # noqa: BLE001 - the parser should have rejected it; drop
            return []
        original_top = vias[0]
        stamped = _stamp_via(via, peer)
        if stamped is not None:
            vias[0] = stamped
            _replace_vias(request.headers, vias)
            via = parse_via(stamped)
        method = request.method
        key = _server_key(request, via, original_top, "INVITE" if method in ("ACK", "CANCEL") else method)
        if method == "ACK":
            return self._receive_ack(request, peer, key, now)
        own_key = key if method != "CANCEL" else _server_key(request, via, original_top, "CANCEL")
        txn = self._match_server(own_key, request)
        if txn is not None:
            return self._step(txn, In.REQUEST, request, now)  # a retransmission
        if method == "CANCEL":
            return self._receive_cancel(request, peer, via, original_top, own_key, key, now)
        txn = self._start_server(request, peer, via, original_top, own_key, now)
        events: list[Event] = [RequestReceived(txn.id, request, peer)]
        if method == "INVITE" and not self._is_stranger(txn, now):
            # §17.2.1: 100 Trying now, not after 200 ms: it stops Timer A soonest. A
            # stranger gets none: its final answer goes at once (b2bua/strangers.py).
            self._step(txn, In.SEND_PROVISIONAL, make_response(request, 100, "Trying"), now)
        return events

    def _match_server(self, key: tuple[object, ...], request: Request) -> _Transaction | None:
        """RFC 3261 §17.2.3; for RFC 2543 requests the To tag must match too."""
        txn_id = self._server.get(key)
        txn = self._txns.get(txn_id) if txn_id is not None else None
        if txn is None:
            return None
        if key[0] == "2543":
            if request.method == "ACK":
                if txn.sent is None or (request.to_tag or None) != (_tag_of(txn.sent_to) or None):
                    return None
            elif request.method != "CANCEL" and (request.to_tag or None) != (txn.request.to_tag or None):
                return None
        return txn

    def _start_server(
        self, request: Request, peer: Peer, via: Via, original_top: str, key: tuple[object, ...], now: float
    ) -> _Transaction:
        kind = Kind.INVITE_SERVER if request.method == "INVITE" else Kind.NON_INVITE_SERVER
        txn = _Transaction(
            id=f"{kind.value}-{next(self._seq)}",
            kind=kind,
            request=request,
            peer=peer,
            state=INITIAL_STATE[kind],
            reply_to=_response_destination(via, peer),
            top_via=original_top,
        )
        self._txns[txn.id] = txn
        self._server[key] = txn.id
        txn.keys.append((self._server, key))
        self._enter(txn, txn.state, now)
        return txn

    def _receive_ack(self, request: Request, peer: Peer, key: tuple[object, ...], now: float) -> list[Event]:
        """An ACK matches its INVITE's server transaction (§17.2.3) when it acknowledges a
        non-2xx; an ACK for a 2xx has its own branch and is the dialog's (§13.3.1.4), so it
        is matched to the 2xx being retransmitted by Call-ID and CSeq number."""
        txn = self._match_server(key, request)
        if txn is None:
            try:
                dialog_key = (request.call_id, request.cseq[0])
            except Exception:  # noqa: BLE001 - malformed CSeq: nothing to match
                return [AckReceived(request, peer)]
            txn_id = self._accepted.get(dialog_key)
            txn = self._txns.get(txn_id) if txn_id is not None else None
            if txn is None:
                return [AckReceived(request, peer)]
        return self._step(txn, In.ACK, request, now, peer)

    def _receive_cancel(
        self,
        request: Request,
        peer: Peer,
        via: Via,
        original_top: str,
        own_key: tuple[object, ...],
        invite_key: tuple[object, ...],
        now: float,
    ) -> list[Event]:
        """RFC 3261 §9.2: a CANCEL is its own non-INVITE transaction, answered here.

        200 and CancelReceived when the INVITE it matches is still in Proceeding; 481
        otherwise (no such INVITE, or it already has a final response).
        """
        cancel_txn = self._start_server(request, peer, via, original_top, own_key, now)
        invite = self._match_server(invite_key, request)
        if invite is not None and invite.kind is Kind.INVITE_SERVER and invite.state is S.PROCEEDING:
            tag = _tag_of(invite.sent_to)
            self._step(cancel_txn, In.SEND_SUCCESS, make_response(request, 200, "OK", to_tag=tag or None), now)
            return [CancelReceived(invite.id, request)]
        reply = make_response(request, 481, "Call/Transaction Does Not Exist")
        if self._is_stranger(cancel_txn, now):
            self._answer_stranger(cancel_txn, reply, now)
        else:
            self._step(cancel_txn, In.SEND_FAILURE, reply, now)
        return []

    # ------------------------------------------------------------------ strangers

    def _is_stranger(self, txn: _Transaction, now: float) -> bool:
        return self.strangers is not None and not self.strangers.trusted(txn.peer, now)

    def _answer_stranger(self, txn: _Transaction, response: Response, now: float) -> None:
        """Send `response` once if the policy admits it, and forget the transaction: a
        retransmitted request is a new one, answered (or not) on its own."""
        assert self.strangers is not None
        request = txn.request
        # A retransmission repeats all of these; scanners reusing a branch for other numbers do not.
        key = (request.call_id, request.headers.get("CSeq"), txn.top_via, request.uri)
        if self.strangers.admit(txn.peer, key, now) and txn.reply_to is not None:
            self._out.append((response.to_bytes(), txn.reply_to))
        txn.state = S.TERMINATED
        self._forget(txn)


# ---------------------------------------------------------------------- helpers


def _tag_of(to: str | None) -> str | None:
    """The tag of a To header value (None: no header, no tag, or unparsable)."""
    if to is None:
        return None
    try:
        return parse_name_addr(to).tag
    except ValueError:
        return None


def _rfc2543(txn: _Transaction) -> bool:
    """Was the transaction matched by RFC 2543's key (its request's To is then needed)?"""
    return any(isinstance(key, tuple) and key and key[0] == "2543" for _, key in txn.keys)


def _new_branch() -> str:
    """A fresh RFC 3261 §8.1.1.7 branch (unique in space and time, with the cookie)."""
    return MAGIC_COOKIE + secrets.token_hex(8)


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _server_key(request: Request, via: Via, original_top: str, method: str) -> tuple[object, ...]:
    """The §17.2.3 matching key: branch + sent-by + method when the branch has the magic
    cookie; otherwise RFC 2543's Request-URI, From tag, Call-ID, CSeq and top Via (the
    To tag is checked separately, since an ACK's differs from its INVITE's)."""
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE):
        return ("3261", branch, _unbracket(via.host).lower(), via.port, method)
    try:
        number = request.cseq[0]
    except Exception:  # noqa: BLE001
        number = None
    return ("2543", str(request.uri), request.from_tag, request.call_id, number, method, original_top.strip())


def _stamp_via(via: Via, peer: Peer) -> str | None:
    """RFC 3261 §18.2.1 and RFC 3581 §4: record where the request really came from.

    `received` when the sent-by host is not the source address (always when rport was
    asked for, RFC 3581 §4), and rport's value set to the source port. Returns the new top
    Via text, or None when nothing changes.
    """
    params = dict(via.params)
    wants_rport = "rport" in params
    if _unbracket(via.host).lower() != peer.host.lower() or wants_rport:
        params["received"] = peer.host
    if wants_rport:
        params["rport"] = str(peer.port)
    if params == dict(via.params):
        return None
    return str(replace(via, params=params))


def _response_destination(via: Via, peer: Peer) -> Peer:
    """RFC 3261 §18.2.2 with RFC 3581 §4: where responses to this request go.

    Over TCP, back to the same peer (the transport reuses the connection). Over UDP, to
    `received` (or sent-by) at the source port when rport was asked for, else at the
    sent-by port.
    """
    if peer.reliable:
        return peer
    params = via.params
    host = params.get("received") or _unbracket(via.host)
    rport = params.get("rport")
    if rport:
        port = int(rport)
    else:
        port = via.port or DEFAULT_SIP_PORT
    return Peer(peer.transport, host, port)


def _replace_vias(headers: Headers, vias: Sequence[str]) -> None:
    """Rewrite the Via header fields keeping their order, at the top of the message."""
    headers.remove("Via")
    for value in reversed(vias):
        headers.prepend("Via", value)
