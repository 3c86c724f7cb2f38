"""The call's lifecycle tables and the index that forgets a call's keys with it."""

from __future__ import annotations

import pytest

from b2bua.call_state import (
    CALL_TRANSITIONS,
    LEG_TRANSITIONS,
    CallEvent,
    CallIndex,
    CallPhase,
    CallState,
    Leg,
    LegEvent,
    LegState,
    LifecycleError,
    RelayedRequest,
)
from b2bua.dialog import Dialog
from b2bua.peer import Peer
from tests.conftest import make_call

PEER = Peer("udp", "192.0.2.7", 5060)


def call_state(call_id: str = "c1") -> CallState:
    seam = make_call(call_id)
    return CallState(id=call_id, a=Leg(PEER, 0, txn=f"{call_id}-a"), direction="inbound",
                     started=seam.started, started_at=0.0, seam=seam)


def test_a_call_answered_acked_and_hung_up_walks_the_table():
    call = call_state()
    assert call.phase is CallPhase.INVITED and call.unanswered
    for event, phase in [(CallEvent.FORKED, CallPhase.RINGING), (CallEvent.PROVISIONAL, CallPhase.EARLY),
                         (CallEvent.PROVISIONAL, CallPhase.EARLY), (CallEvent.ANSWERED, CallPhase.ANSWERED),
                         (CallEvent.ACKED, CallPhase.CONFIRMED), (CallEvent.HUNG_UP, CallPhase.ENDED)]:
        assert call.move(event) is phase
    assert call.ended and not call.unanswered


@pytest.mark.parametrize("phase", list(CallPhase))
def test_every_move_the_call_table_does_not_list_raises(phase):
    for event in CallEvent:
        call = call_state()
        call.phase = phase
        if (phase, event) in CALL_TRANSITIONS:
            assert call.move(event) is CALL_TRANSITIONS[(phase, event)]
        else:
            with pytest.raises(LifecycleError):
                call.move(event)
            assert call.phase is phase  # a refused move changes nothing


def test_an_ended_call_accepts_nothing_and_an_answered_one_cannot_fail():
    assert not any(p is CallPhase.ENDED for p, _ in CALL_TRANSITIONS)
    assert (CallPhase.ANSWERED, CallEvent.FAILED) not in CALL_TRANSITIONS  # after 2xx only BYE ends it


@pytest.mark.parametrize("state", list(LegState))
def test_every_move_the_leg_table_does_not_list_raises(state):
    for event in LegEvent:
        leg = Leg(PEER, 1, state=state)
        if (state, event) in LEG_TRANSITIONS:
            assert leg.move(event) is LEG_TRANSITIONS[(state, event)]
        else:
            with pytest.raises(LifecycleError):
                leg.move(event)


def test_a_2xx_crossing_our_cancel_makes_the_leg_late_and_over():
    leg = Leg(PEER, 1)
    leg.move(LegEvent.PROVISIONAL)
    leg.move(LegEvent.CANCELLED)
    assert leg.move(LegEvent.ANSWERED) is LegState.LATE and leg.over


def _dialog(call_id: str, tag: str) -> Dialog:
    return Dialog(call_id, tag, "r", 1, None, "sip:a@x", "sip:b@y", "sip:b@y")


def test_forget_drops_exactly_the_calls_keys():
    index = CallIndex()
    one, two = call_state("one"), call_state("two")
    for call in (one, two):
        index.add_call(call)
        index.add_invite(call, call.a)
        call.a.dialog = _dialog(call.id, "t-" + call.id)
        index.add_dialog(call, call.a)
        index.add_relay(f"{call.id}-relay", RelayedRequest(call, "srv", None, call.a))  # type: ignore[arg-type]
    index.forget(one, now=10.0, late_window=64.0)
    assert set(index.calls) == {"two"}
    assert set(index.invites) == {"two-a"} and set(index.relays) == {"two-relay"}
    assert list(index.dialogs) == [("two", "t-two")]
    index.forget(two, now=10.0, late_window=64.0)
    assert len(index) == 0


def test_a_cancelled_branch_outlives_its_call_until_its_final_response_or_the_window():
    index = CallIndex()
    call = call_state()
    index.add_call(call)
    branch = Leg(PEER, 1, txn="branch-1")
    branch.move(LegEvent.CANCELLED)
    index.add_invite(call, branch)
    answered = Leg(PEER, 1, txn="branch-2", state=LegState.FAILED, final_status=486)
    index.add_invite(call, answered)
    index.forget(call, now=100.0, late_window=64.0)
    assert set(index.invites) == {"branch-1"} and index.late == {"branch-1": 164.0}
    assert index.expired_late(163.9) == [] and index.expired_late(164.0) == ["branch-1"]
    index.forget_late("branch-1")
    assert len(index) == 0
