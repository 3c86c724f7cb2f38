"""The collector policy (b2bua.gc_policy) and what it rests on: calls leave no cyclic garbage.

GcPolicy keeps the collector's full pass (60-170 ms with 1,750 calls) away from live calls by
freezing what survives; that is only safe while an ended call's objects are freed by
reference counting. These tests run calls through the real SIP core and the real media core
and recorder, and look at what the collector would have to find afterwards.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from pathlib import Path

import pytest

from b2bua.gc_policy import GcPolicy
from rtp.sidecar import read_sidecar, write_sidecar
from tests.test_b2bua import BOB, TRUNK, Harness, answered_call
from tests.conftest import make_call
from tests.test_media_core import phone

LOG = logging.getLogger("test.gc")


class Cycle:
    """Cyclic garbage once dropped: only the collector can free it."""

    def __init__(self) -> None:
        self.me = self


def cyclic_garbage(run) -> list[str]:  # noqa: ANN001 - a callable
    """The types of what `run()` left that only the collector could free."""
    gc.collect()
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run()
        gc.collect()
        found = sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()
    return found


def test_a_sidecar_written_leaves_no_cycle(tmp_path: Path) -> None:
    """json.dump(indent=...) took the pure-Python encoder, whose closures form a cycle on
    every call; the sidecar is now encoded with the C one."""
    data = {"call_id": "c1", "segments": [[0.0, 1.5]], "events": [{"t": 1.0, "event": "paused", "by": "alice"}],
            "from": "sip:é@example"}
    assert cyclic_garbage(lambda: write_sidecar(tmp_path / "c1.json", data)) == []
    assert read_sidecar(tmp_path / "c1.json") == data
    text = (tmp_path / "c1.json").read_text(encoding="utf-8")
    assert text.startswith('{\n  "call_id": "c1",\n') and text.endswith("}\n") and "é" in text


def test_a_call_through_the_sip_core_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    """Register, call, answer, hang up, and let every transaction timer run out."""

    def call() -> None:
        h = Harness(tmp_path)
        bob, ok = answered_call(h)
        h.send(
            f"BYE sip:b2bua@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKbye1\n"
            f"From: \"Caller\" <sip:447700900123@198.51.100.7>;tag=tr1\nTo: {ok.headers.get('To')}\n"
            f"Call-ID: trunk-call-1\nCSeq: 11 BYE\nContent-Length: 0\n\n",
            TRUNK,
        )
        assert h.take(TRUNK, 200)
        h.advance(64)  # Timer J and friends: the transactions are gone
        assert not h.core.calls
        del h, bob, ok

    assert BOB  # the harness's phone
    assert cyclic_garbage(call) == []


async def test_a_recorded_call_through_the_media_core_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    from rtp.engine import MediaEngine
    from tests.test_media_core import free_range

    from rtp.call import MediaEndpoint

    a, b = phone(), phone()

    async def call() -> None:
        core = MediaEngine("127.0.0.1", free_range(4), tmp_path)
        session = core.open_session(make_call("gc1"))
        session.set_media(0, MediaEndpoint(a.getsockname(), "127.0.0.1"))
        session.set_media(1, MediaEndpoint(b.getsockname(), "127.0.0.1"))
        session.answered()
        await asyncio.sleep(0.05)
        session.close()
        await core.close()

    gc.collect()
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await call()
        gc.collect()
        ours = sorted({type(o).__qualname__ for o in gc.garbage
                       if type(o).__module__.split(".")[0] in ("rtp", "b2bua", "json", "numpy")})
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()
        a.close()
        b.close()
    assert ours == []
    assert list(tmp_path.rglob("gc1.wav")) and list(tmp_path.rglob("gc1.json"))


# -- the policy ---------------------------------------------------------------------------


@pytest.fixture
def calls() -> list[int]:
    return [0]


async def test_start_freezes_what_startup_built_and_stop_hands_the_collector_back(calls: list[int]) -> None:
    policy = GcPolicy(asyncio.get_running_loop(), lambda: calls[0], LOG, freeze_every=60)
    try:
        policy.start()
        assert gc.get_freeze_count() > 0
    finally:
        policy.stop()
    assert gc.get_freeze_count() == 0


async def test_survivors_are_frozen_each_period_and_fresh_garbage_is_freed_first(calls: list[int]) -> None:
    policy = busy_policy(calls)
    try:
        policy.start()
        kept = [[i] for i in range(500)]  # survivors (lists are always tracked): frozen at the next period
        dropped = Cycle()
        gone = weakref.ref(dropped)
        del dropped  # garbage before the period: the young collection frees it, it is not frozen
        before = gc.get_freeze_count()
        await asyncio.sleep(0.1)
        assert gc.get_freeze_count() >= before + len(kept)
        assert gone() is None
        assert policy.full_passes == 0
    finally:
        policy.stop()


def busy_policy(calls: list[int], **settings: float) -> GcPolicy:
    """A policy on this loop with 1,000 calls up (too many for a full pass) and a 10 ms period."""
    calls[0] = 1000
    return GcPolicy(asyncio.get_running_loop(), lambda: calls[0], LOG, **{"freeze_every": 0.01, **settings})


async def frozen_then_dropped() -> weakref.ref:
    """A cycle that lives long enough to be frozen, then becomes garbage; its weak reference."""
    leak = Cycle()
    gone = weakref.ref(leak)
    await asyncio.sleep(0.05)  # frozen while alive (the tests' period is 10 ms)
    del leak  # now cyclic garbage in the frozen generation
    await asyncio.sleep(0.05)
    return gone


async def test_a_frozen_cycle_is_collected_by_a_full_pass_only_when_calls_are_few(calls: list[int],
                                                                                 caplog: pytest.LogCaptureFixture) -> None:
    policy = busy_policy(calls, full_max_calls=50, full_every=0.0)
    try:
        policy.start()
        gone = await frozen_then_dropped()
        assert gone() is not None and policy.full_passes == 0  # 1,000 calls up: no full pass
        calls[0] = 3
        with caplog.at_level(logging.INFO, logger="test.gc"):
            await asyncio.sleep(0.05)
        assert gone() is None and policy.full_passes >= 1
        assert "gc event=full-pass calls=3" in caplog.text
    finally:
        policy.stop()


async def test_too_many_frozen_objects_force_a_full_pass_with_a_warning(calls: list[int],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    policy = busy_policy(calls, full_every=0.0, full_forced_frozen=1)
    try:
        with caplog.at_level(logging.INFO, logger="test.gc"):
            policy.start()
            gone = await frozen_then_dropped()
        assert gone() is None
        assert "forced=too-many-frozen" in caplog.text
        assert any(r.levelno == logging.WARNING for r in caplog.records)
    finally:
        policy.stop()


async def test_the_frozen_are_not_counted_every_period(calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """gc.get_freeze_count walks every frozen object (~30 ms at 2,000 calls, found as a
    35 ms stall a second under bench/load.py): it is taken at most every full_every."""
    counted = []
    real = gc.get_freeze_count
    monkeypatch.setattr(gc, "get_freeze_count", lambda: counted.append(1) or real())
    policy = busy_policy(calls, full_every=600)
    try:
        policy.start()
        await asyncio.sleep(0.1)
        assert counted == []
    finally:
        policy.stop()
