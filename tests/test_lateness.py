"""The media clock's lateness histogram: percentiles by bucket edge, exact merge, log round trip."""

from rtp.lateness import EDGES_MS, Lateness


def test_percentiles_max_and_the_log_line_round_trip() -> None:
    h = Lateness()
    for _ in range(98):
        h.add(0.0003)  # 0.3 ms: the 0.5 ms bucket
    h.add(0.004)  # 4 ms
    h.add(0.025)  # 25 ms: a stall
    h.add(-0.001)  # early counts as on time
    assert h.total == 101
    assert h.percentile(50) == 0.5
    assert h.percentile(99) == 4.0
    assert h.percentile(100) == 30.0
    assert h.max_ms == 25.0
    back = Lateness.parse("media event=lateness what=read " + h.line())
    assert back.counts == h.counts and back.max_ms == h.max_ms


def test_windows_merge_exactly() -> None:
    a, b = Lateness(), Lateness()
    a.add(0.001)
    b.add(0.9)  # past the last edge
    a.merge(b)
    assert a.total == 2 and a.counts[-1] == 1 and a.percentile(100) == float("inf") and a.max_ms == 900.0
    assert len(a.counts) == len(EDGES_MS) + 1
