"""RFC 4733 detector fed the packet patterns real phones send."""

from __future__ import annotations

from rtp.events import EventDetector, KeyPress, digit_train, event_payload, parse_event


def press(code: int, ts: int, continuation: int = 9, ends: int = 3) -> list[tuple[int, bool, bytes]]:
    """(timestamp, marker, payload) for one key press the way phones send it (§2.5.1)."""
    packets = [(ts, True, event_payload(code, False, 160))]
    packets += [(ts, False, event_payload(code, False, 160 * (i + 2))) for i in range(continuation)]
    packets += [(ts, False, event_payload(code, True, 160 * (continuation + 2)))] * ends
    return packets


def feed_all(detector: EventDetector, packets: list[tuple[int, bool, bytes]]) -> list[KeyPress]:
    return [p for p in (detector.feed(ts, marker, payload) for ts, marker, payload in packets) if p is not None]


def test_one_press_is_one_digit() -> None:
    presses = feed_all(EventDetector(), press(5, 1000))
    assert presses == [KeyPress("5", 1000)]


def test_star_and_hash() -> None:
    presses = feed_all(EventDetector(), press(10, 1000) + press(11, 5000))
    assert [p.digit for p in presses] == ["*", "#"]


def test_duplicated_end_packets_and_late_stragglers() -> None:
    packets = press(1, 1000) + [(1000, False, event_payload(1, True, 1760))] * 4
    packets.insert(3, packets[1])  # a duplicated continuation out of order
    assert feed_all(EventDetector(), packets) == [KeyPress("1", 1000)]


def test_lost_start_packet_still_reports_once() -> None:
    packets = press(7, 1000)[1:]
    assert feed_all(EventDetector(), packets) == [KeyPress("7", 1000)]
    only_ends = press(8, 9000)[-3:]
    assert feed_all(EventDetector(), only_ends) == [KeyPress("8", 9000)]


def test_two_presses_of_the_same_digit() -> None:
    detector = EventDetector()
    packets = press(1, 1000) + press(1, 3000)
    assert feed_all(detector, packets) == [KeyPress("1", 1000), KeyPress("1", 3000)]


def test_same_digit_again_with_its_start_packet_lost() -> None:
    detector = EventDetector()
    packets = press(1, 1000) + press(1, 3000)[1:]  # the first press ended, so this is a new one
    assert len(feed_all(detector, packets)) == 2


def test_long_press_segments_are_one_press() -> None:
    # §2.5.1.5: duration overflow starts a new timestamp without the marker bit.
    detector = EventDetector()
    first = [(1000, True, event_payload(3, False, 160)), (1000, False, event_payload(3, False, 0xFFFF))]
    second = [(1000 + 0xFFFF, False, event_payload(3, False, 160)), (1000 + 0xFFFF, False, event_payload(3, True, 800))]
    assert feed_all(detector, first + second) == [KeyPress("3", 1000)]
    assert detector.key_of(1000 + 0xFFFF) == 1000


def test_audio_interleaved_does_not_matter() -> None:
    # The detector only sees event packets; the relay routes audio elsewhere. Interleaving
    # in time changes nothing: feed two presses with gaps as a phone would.
    detector = EventDetector()
    out = []
    for ts, marker, payload in press(2, 1000) + press(9, 4000):
        out.append(detector.feed(ts, marker, payload))
    assert [p.digit for p in out if p] == ["2", "9"]


def test_short_payload_is_ignored() -> None:
    assert EventDetector().feed(1000, True, b"\x01\x0a") is None
    assert parse_event(b"\x01") is None


def test_flash_is_a_press_without_digit() -> None:
    assert feed_all(EventDetector(), press(16, 1000)) == [KeyPress(None, 1000)]


def test_digit_train_shape() -> None:
    train = digit_train("*")
    assert train[0][0] is True and all(not marker for marker, _ in train[1:])
    events = [parse_event(payload) for _, payload in train]
    assert all(e is not None and e.code == 10 for e in events)
    assert [e.end for e in events[-3:]] == [True, True, True]  # type: ignore[union-attr]
    assert not any(e.end for e in events[:-3])  # type: ignore[union-attr]
    detector = EventDetector()
    assert feed_all(detector, [(42, m, p) for m, p in train]) == [KeyPress("*", 42)]
