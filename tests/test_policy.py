"""The contract's recording walk, by example and by property."""

from hypothesis import given, strategies as st

from b2bua.policy import Record, starts_recorded, walk

Y, N, D = Record.YES, Record.NO, Record.DONT_CARE


def test_default_is_not_recorded():
    assert walk([]) is False
    assert walk([D, D, D]) is False


def test_yes_then_dont_care_inherits():
    assert walk([Y, D, D]) is True


def test_later_no_overrides_earlier_yes():
    assert walk([Y, N]) is False
    assert walk([Y, N, Y]) is True


def test_number_no_ring_group_yes_user_dont_care_records():
    assert walk([N, Y, D]) is True


def test_organisation_switch_gates_everything():
    assert starts_recorded([Y, Y, Y], call_recording=False) is False
    assert starts_recorded([Y], call_recording=True) is True


def test_parse_accepts_spellings():
    assert Record.parse("don't care") is D
    assert Record.parse("Dont_Care") is D
    assert Record.parse("YES") is Y


@given(st.lists(st.sampled_from([Y, N, D])))
def test_walk_is_last_decisive_setting(chain):
    decisive = [s for s in chain if s is not D]
    assert walk(chain) is (bool(decisive) and decisive[-1] is Y)
