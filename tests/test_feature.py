"""The *1 machine, driven with a fake clock."""

from __future__ import annotations

from rtp.feature import FeatureMachine, Forward, Release, State, Toggle


def feed(machine: FeatureMachine, *steps: tuple[str, float]) -> list[object]:
    actions: list[object] = []
    for digit, now in steps:
        actions += machine.digit(digit, now)
    return actions


def test_star_one_toggles_and_swallows_both() -> None:
    machine = FeatureMachine(timeout=2.0)
    assert machine.digit("*", 0.0) == []
    assert machine.state is State.STAR_HELD
    assert machine.digit("1", 0.5) == [Toggle()]
    assert machine.state is State.IDLE


def test_star_then_one_too_late_passes_both() -> None:
    machine = FeatureMachine(timeout=2.0)
    assert machine.digit("*", 0.0) == []
    assert machine.digit("1", 2.5) == [Release("*"), Forward("1")]


def test_timeout_releases_the_star_late() -> None:
    machine = FeatureMachine(timeout=2.0)
    machine.digit("*", 10.0)
    assert machine.next_deadline() == 12.0
    assert machine.poll(11.9) == []
    assert machine.poll(12.0) == [Release("*")]
    assert machine.poll(13.0) == []
    assert machine.next_deadline() is None


def test_one_alone_passes() -> None:
    assert FeatureMachine().digit("1", 0.0) == [Forward("1")]


def test_star_then_other_digit_passes_both_in_order() -> None:
    machine = FeatureMachine()
    assert feed(machine, ("*", 0.0), ("2", 0.3)) == [Release("*"), Forward("2")]


def test_star_star_one() -> None:
    machine = FeatureMachine()
    assert feed(machine, ("*", 0.0), ("*", 0.3), ("1", 0.6)) == [Release("*"), Toggle()]


def test_three_toggles() -> None:
    machine = FeatureMachine()
    steps = [(d, i * 0.2) for i, d in enumerate("*1*1*1")]
    assert feed(machine, *steps) == [Toggle(), Toggle(), Toggle()]


def test_disabled_machine_passes_everything() -> None:
    # The external party, or an organisation without Call Recording.
    machine = FeatureMachine(enabled=False)
    assert feed(machine, ("*", 0.0), ("1", 0.1)) == [Forward("*"), Forward("1")]


def test_hash_and_letters_pass() -> None:
    machine = FeatureMachine()
    assert feed(machine, ("#", 0.0), ("A", 0.1)) == [Forward("#"), Forward("A")]
