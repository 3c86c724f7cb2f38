"""What the B2BUA keeps about a call: its legs, its lifecycle as a table, and the index
that finds a call from a message.

The lifecycle is written as h11's `_state.py` and our `transaction.py` write theirs: a
dict from (state, event) to the next state, and a `LifecycleError` for anything the
table does not list (a bug in the caller, never something a peer sent: the callers
look at the state before they move it). Two machines:

- a **call** (`CallPhase`): INVITED (the caller's INVITE is in, nothing sent on) ->
  RINGING (branches forked) -> EARLY (the caller was told 18x) -> ANSWERED (our 2xx is
  out, its ACK is not in: RFC 3261 §13.3.1.4) -> CONFIRMED -> ENDED;
- a **leg** (`LegState`): the caller's leg and each forked branch, from CALLING to
  ANSWERED, FAILED (a final non-2xx), CANCELLED (we sent CANCEL, its final response is
  not in), LATE (a 2xx crossed our CANCEL: ACKed and hung up, RFC 3261 §9.1, §15) or
  ENDED (BYE sent or received).

Everything found by a key (our dialogs, our INVITE transactions, relayed requests) is
registered in `CallIndex` under the call, so ending a call forgets exactly its keys,
with no scan of every call's entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from rtp.call import Call
from b2bua.config import Number, User
from b2bua.dialog import Dialog
from b2bua.message import Request
from b2bua.peer import Peer
from b2bua.sdp import SessionDescription


class LifecycleError(Exception):
    """A move the lifecycle table does not list: a bug in the B2BUA, like h11's
    LocalProtocolError. Peers cannot cause it: the callers check the state first."""


class CallPhase(Enum):
    INVITED = "invited"  # the caller's INVITE is routed, no branch sent yet
    RINGING = "ringing"  # branches forked, nothing sent back to the caller but 100
    EARLY = "early"  # the caller got a 18x (ringing or early media, RFC 3960)
    ANSWERED = "answered"  # our 2xx is out; the caller's ACK is not in (RFC 3261 §13.3.1.4)
    CONFIRMED = "confirmed"  # the caller ACKed: the call is up
    ENDED = "ended"


class CallEvent(Enum):
    FORKED = "forked"
    PROVISIONAL = "provisional sent"
    ANSWERED = "answered"
    ACKED = "acked"
    FAILED = "failed"  # ended before answer: a final non-2xx to the caller
    HUNG_UP = "hung up"  # ended after answer: BYE either way, no ACK, shutdown


P, CE = CallPhase, CallEvent
CALL_TRANSITIONS: dict[tuple[CallPhase, CallEvent], CallPhase] = {
    (P.INVITED, CE.FORKED): P.RINGING,
    (P.INVITED, CE.FAILED): P.ENDED,
    (P.RINGING, CE.PROVISIONAL): P.EARLY,
    (P.RINGING, CE.ANSWERED): P.ANSWERED,
    (P.RINGING, CE.FAILED): P.ENDED,
    (P.EARLY, CE.PROVISIONAL): P.EARLY,
    (P.EARLY, CE.ANSWERED): P.ANSWERED,
    (P.EARLY, CE.FAILED): P.ENDED,
    (P.ANSWERED, CE.ACKED): P.CONFIRMED,
    (P.ANSWERED, CE.HUNG_UP): P.ENDED,
    (P.CONFIRMED, CE.ACKED): P.CONFIRMED,  # a retransmitted ACK
    (P.CONFIRMED, CE.HUNG_UP): P.ENDED,
}
#: Phases in which the caller may still get a final non-2xx (RFC 3261 §13.3.1).
UNANSWERED = frozenset({P.INVITED, P.RINGING, P.EARLY})
#: Phases in which both legs have a dialog and media flows.
UP = frozenset({P.ANSWERED, P.CONFIRMED})


class LegState(Enum):
    CALLING = "calling"  # INVITE out (a branch) or in (the caller), no final response
    EARLY = "early"  # a branch sent a provisional
    ANSWERED = "answered"  # a 2xx on this leg: its dialog is confirmed
    FAILED = "failed"  # a final non-2xx (or a timeout) ended the branch
    CANCELLED = "cancelled"  # we sent CANCEL; its final response is still due
    LATE = "late"  # a 2xx crossed our CANCEL: ACKed, then BYE (RFC 3261 §9.1, §15)
    ENDED = "ended"  # BYE sent or received


class LegEvent(Enum):
    PROVISIONAL = "provisional"
    ANSWERED = "2xx"
    REJECTED = "final non-2xx"
    CANCELLED = "cancel sent"
    HUNG_UP = "bye"


L, LE = LegState, LegEvent
LEG_TRANSITIONS: dict[tuple[LegState, LegEvent], LegState] = {
    (L.CALLING, LE.PROVISIONAL): L.EARLY,
    (L.CALLING, LE.ANSWERED): L.ANSWERED,
    (L.CALLING, LE.REJECTED): L.FAILED,
    (L.CALLING, LE.CANCELLED): L.CANCELLED,
    (L.EARLY, LE.PROVISIONAL): L.EARLY,
    (L.EARLY, LE.ANSWERED): L.ANSWERED,
    (L.EARLY, LE.REJECTED): L.FAILED,
    (L.EARLY, LE.CANCELLED): L.CANCELLED,
    (L.CANCELLED, LE.PROVISIONAL): L.CANCELLED,
    (L.CANCELLED, LE.REJECTED): L.FAILED,  # the 487 to our CANCEL (RFC 3261 §9.1)
    (L.CANCELLED, LE.ANSWERED): L.LATE,
    (L.ANSWERED, LE.HUNG_UP): L.ENDED,
}
#: Leg states with nothing more to come from the far end for the INVITE.
LEG_OVER = frozenset({L.FAILED, L.CANCELLED, L.LATE, L.ENDED})


@dataclass(slots=True)
class Leg:
    """One side of a call from our point of view."""

    peer: Peer
    channel: int  # recording channel of the party on this leg
    request: Request | None = None  # the initial INVITE (received on A, sent on B)
    txn: Any = None  # the INVITE's transaction id
    dialog: Dialog | None = None
    local_tag: str = ""
    user: User | None = None  # the registered user on this leg, if any
    sdp_session: int = 0  # our o= session id towards this leg (RFC 4566 §5.2)
    sdp_version: int = 0
    state: LegState = LegState.CALLING
    final_status: int | None = None  # the INVITE's final status, 2xx included
    #: ACKs we sent for 2xx to INVITEs on this leg, by CSeq: resent when the 2xx is
    #: retransmitted (RFC 3261 §13.2.2.4); forgotten with the leg.
    acks: dict[int, tuple[Request, Peer]] = field(default_factory=dict)

    def move(self, event: LegEvent) -> LegState:
        new = LEG_TRANSITIONS.get((self.state, event))
        if new is None:
            raise LifecycleError(f"leg {self.state.value}: no transition on {event.value}")
        self.state = new
        return new

    @property
    def over(self) -> bool:
        """Nothing more will come of this leg's INVITE that could carry the call."""
        return self.state in LEG_OVER

    @property
    def who(self) -> str:
        """The party's name for logs: the user, or "trunk"."""
        return self.user.name if self.user else "trunk"


@dataclass(slots=True)
class CallState:
    """Everything we keep about one call."""

    id: str
    a: Leg
    direction: str
    started: datetime
    started_at: float
    seam: Call
    a_offer: SessionDescription | None = None  # the caller's SDP, parsed once; None: late offer
    media: Any = None
    branches: list[Leg] = field(default_factory=list)
    winner: Leg | None = None
    number: Number | None = None
    caller: User | None = None
    ring_deadline: float | None = None
    answered_at: float | None = None
    phase: CallPhase = CallPhase.INVITED

    def move(self, event: CallEvent) -> CallPhase:
        new = CALL_TRANSITIONS.get((self.phase, event))
        if new is None:
            raise LifecycleError(f"call {self.id} {self.phase.value}: no transition on {event.value}")
        self.phase = new
        return new

    @property
    def ended(self) -> bool:
        return self.phase is CallPhase.ENDED

    @property
    def unanswered(self) -> bool:
        return self.phase in UNANSWERED

    def other(self, leg: Leg) -> Leg | None:
        return self.winner if leg is self.a else self.a


@dataclass(slots=True)
class RelayedRequest:
    """An in-dialog request (re-INVITE, UPDATE) we passed to the other leg: answered on
    `server_txn` when `client` transaction's response comes back."""

    call: CallState
    server_txn: Any
    request: Request
    from_leg: Leg
    offer: SessionDescription | None = None  # the request's SDP, parsed once


@dataclass
class CallIndex:
    """Every key that finds a call, registered under the call that owns it.

    `forget(call)` removes the call's keys and nothing else; a cancelled branch whose
    final response is still due can be kept past its call (`keep_late`), so a 2xx that
    crosses our CANCEL still finds its leg.
    """

    calls: dict[str, CallState] = field(default_factory=dict)
    dialogs: dict[tuple[str, str], tuple[CallState, Leg]] = field(default_factory=dict)  # (Call-ID, our tag)
    invites: dict[Any, tuple[CallState, Leg]] = field(default_factory=dict)  # INVITE transaction id
    relays: dict[Any, RelayedRequest] = field(default_factory=dict)  # client transaction id
    late: dict[Any, float] = field(default_factory=dict)  # late branch txn -> forget-by time
    _keys: dict[str, list[tuple[dict, Any]]] = field(default_factory=dict)

    def add_call(self, call: CallState) -> None:
        self.calls[call.id] = call
        self._keys[call.id] = []

    def _add(self, call: CallState, table: dict, key: Any, value: Any) -> None:
        table[key] = value
        self._keys[call.id].append((table, key))

    def add_dialog(self, call: CallState, leg: Leg) -> None:
        assert leg.dialog is not None
        self._add(call, self.dialogs, (leg.dialog.call_id, leg.dialog.local_tag), (call, leg))

    def add_invite(self, call: CallState, leg: Leg) -> None:
        self._add(call, self.invites, leg.txn, (call, leg))

    def add_relay(self, client_txn: Any, relay: RelayedRequest) -> None:
        self._add(relay.call, self.relays, client_txn, relay)

    def forget(self, call: CallState, now: float, late_window: float) -> None:
        """Drop every key of `call`, but keep cancelled branches whose final response
        is still due for `late_window` seconds (`forget_late` ends them)."""
        self.calls.pop(call.id, None)
        for table, key in self._keys.pop(call.id, []):
            if table is self.invites:
                found = table.get(key)
                if found is not None and found[1].state is LegState.CANCELLED and found[1].final_status is None:
                    self.late[key] = now + late_window
                    continue
            table.pop(key, None)

    def forget_late(self, txn: Any) -> None:
        self.late.pop(txn, None)
        self.invites.pop(txn, None)

    def expired_late(self, now: float) -> list[Any]:
        return [txn for txn, until in self.late.items() if now >= until]

    def __len__(self) -> int:
        """Keys held, all tables together: 0 once every call and late branch is gone."""
        return len(self.calls) + len(self.dialogs) + len(self.invites) + len(self.relays) + len(self.late)
