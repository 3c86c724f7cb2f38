"""Call admission (rtp.admission): the learned ceiling on concurrent calls, from samples.

What each situation gets: a core past UTIL_HIGH or late refuses calls above ~95% of what it
carries; calls ending while it is overloaded pull the ceiling down with them; headroom with
the ceiling binding grows it; `max_calls` is a hard limit whatever the core could carry.
"""

from __future__ import annotations

import math

import pytest

from hypothesis import given
from hypothesis import strategies as st

from rtp.admission import DECREASE, FRESH, LAG_HIGH, MAX_INCREASE, UTIL_HIGH, UTIL_LOW, Admission


def run(admission: Admission, samples: list[tuple[float, int]], *, lag: float = 0.0, start: float = 0.0,
        sip: float = 0.0) -> float:
    """Feed (CPU share, calls) one second apart, `sip` of each second's share spent on SIP;
    returns the clock after the last one."""
    now, cpu, sig = start, 0.0, 0.0
    admission.restart(now, cpu, sig)
    for share, calls in samples:
        now += 1.0
        cpu += share
        sig += min(sip, share)
        admission.sample(now, cpu, lag, calls, sig)
    return now


def test_a_core_with_headroom_admits_every_call() -> None:
    admission = Admission()
    run(admission, [(0.3, 100)] * 5)
    assert admission.ceiling == math.inf
    assert admission.admit(10_000)


def test_cpu_past_the_high_mark_sets_the_ceiling_just_under_the_calls_carried() -> None:
    admission = Admission()
    run(admission, [(0.5, 400), (UTIL_HIGH + 0.05, 700)])
    assert admission.ceiling == DECREASE * 700
    assert admission.admit(600)
    assert not admission.admit(665)  # 503 from here


def test_a_late_tick_alone_is_overload() -> None:
    admission = Admission()
    run(admission, [(0.4, 300)], lag=LAG_HIGH * 2)
    assert admission.ceiling == DECREASE * 300
    # and refuses at once, before any sample, whatever the ceiling
    assert not Admission().admit(1, lag=LAG_HIGH * 2)


def test_a_long_overload_does_not_ratchet_the_ceiling_down_while_calls_hold() -> None:
    """Refusing calls cannot relieve load until calls end; the ceiling must not keep shrinking
    meanwhile (0.95^60 would refuse nearly everything once the minute is over)."""
    admission = Admission()
    run(admission, [(0.95, 700)] * 60)
    assert admission.ceiling == DECREASE * 700


def test_calls_ending_under_overload_pull_the_ceiling_down_with_them() -> None:
    admission = Admission()
    run(admission, [(0.95, 700), (0.95, 650), (0.92, 600), (0.8, 560)])
    assert admission.ceiling == DECREASE * 600  # the last overloaded count


def test_headroom_with_the_ceiling_binding_grows_it_and_without_binding_does_not() -> None:
    admission = Admission()
    run(admission, [(0.95, 500)])
    assert admission.ceiling == 475
    now = run(admission, [(0.5, 100)] * 10, start=1.0)  # few calls: the ceiling is not what limits
    assert admission.ceiling == 475
    for _ in range(3):  # calls fill the ceiling each second, with CPU to spare
        now = run(admission, [(UTIL_LOW - 0.1, int(admission.ceiling))], start=now)
    assert admission.ceiling > 475 * 1.05


def test_between_the_marks_the_ceiling_holds() -> None:
    admission = Admission()
    run(admission, [(0.95, 500)])
    run(admission, [((UTIL_LOW + UTIL_HIGH) / 2, 475)] * 10, start=1.0)
    assert admission.ceiling == 475


def test_max_calls_is_a_hard_limit() -> None:
    admission = Admission(max_calls=3)
    assert admission.admit(2)
    assert not admission.admit(3)


def test_max_calls_replaces_the_learned_ceiling() -> None:
    """The operator measured the capacity: an overload refuses while it lasts, but no
    learned ceiling under max_calls keeps calls out after it."""
    admission = Admission(max_calls=1000)
    now = run(admission, [(0.97, 600)])
    assert admission.ceiling == math.inf
    assert not admission.admit(600, now=now)  # overloaded this second
    assert admission.admit(999, now=now + FRESH + 0.1)  # the overload is over
    assert not admission.admit(1000, now=now + FRESH + 0.1)


def test_an_overload_from_signalling_refuses_while_it_lasts_and_leaves_no_ceiling() -> None:
    """A registration storm with a few calls up: the core is full of SIP, not of calls.
    New calls wait (503) during it; afterwards they are admitted as before it."""
    admission = Admission()
    now = run(admission, [(0.99, 10)] * 5, sip=0.9)
    assert admission.ceiling == math.inf
    assert admission.last is not None and admission.last.overloaded
    assert not admission.admit(10, now=now)
    assert admission.admit(10, now=now + FRESH + 0.1)  # an old sample refuses nothing
    now = run(admission, [(0.3, 10)], start=now)
    assert admission.admit(5000, now=now)


def test_an_overload_from_the_calls_lowers_the_ceiling_even_with_sip_going_on() -> None:
    admission = Admission()
    run(admission, [(0.99, 800)], sip=0.3)  # calls' share 0.69: theirs
    assert admission.ceiling == DECREASE * 800


def test_headroom_grows_the_ceiling_by_what_it_shows_capped_per_second() -> None:
    admission = Admission()
    run(admission, [(0.95, 100)])
    assert admission.ceiling == 95
    now = run(admission, [(0.3, 95)], start=1.0)  # 95 calls at 30%: ~285 would fit at 90%
    assert admission.ceiling == pytest.approx(95 * (1 + MAX_INCREASE))
    for _ in range(20):
        now = run(admission, [(0.3 * admission.ceiling / 95, int(admission.ceiling))], start=now)
    # growth stops once the share passes UTIL_LOW (~253 calls), never past what fits at UTIL_HIGH (285)
    assert 250 <= admission.ceiling <= 285


def test_the_first_sample_after_a_restart_only_starts_the_interval() -> None:
    admission = Admission()
    assert admission.due(0.0)
    assert admission.sample(0.0, 5.0, 0.0, 10) is None  # no interval yet: nothing concluded
    sample = admission.sample(2.0, 6.0, 0.0, 10)
    assert sample is not None and sample.utilisation == 0.5


@given(st.lists(st.tuples(st.floats(0.0, 1.5), st.integers(0, 5000)), max_size=80), st.integers(0, 6000))
def test_the_ceiling_stays_at_least_one_call_and_admits_exactly_below_it(samples: list[tuple[float, int]], calls: int) -> None:
    admission = Admission()
    run(admission, samples)
    assert admission.ceiling >= 1.0
    assert admission.admit(calls) == (calls < admission.ceiling)
