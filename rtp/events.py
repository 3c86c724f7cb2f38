"""RFC 4733 telephone-event payloads: detect each digit once, and build packet trains.

A phone sends one key press as many packets (RFC 4733 §2.5.1): a first packet with the
marker bit, continuation packets every ptime with a growing duration, and the end packet
(E bit) sent three times (§2.5.1.4). Audio may keep flowing on the same SSRC meanwhile.
All packets of one event carry the same RTP timestamp, the event's start (§2.3.1), so the
timestamp is the event's identity: a timestamp not seen before is a new key press, even
when its first packet was lost, and two presses of the same key are two timestamps.

The one exception is a long press that overflows the 16-bit duration field: the sender
then starts a new "segment" with a new timestamp but no marker bit (§2.5.1.5); that is
the same key press and is reported as such.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

EVENT_PAYLOAD_SIZE = 4  # RFC 4733 §2.3: event, E/R/volume, 16-bit duration
END_PACKET_COPIES = 3  # RFC 4733 §2.5.1.4: the final packet is sent three times
RECENT_EVENTS = 8  # timestamps remembered: covers late duplicates of the last few presses
DEFAULT_VOLUME = 10  # RFC 4733 §2.3.4: -10 dBm0, a typical phone's level
SYNTH_DURATION = 800  # samples (100 ms at 8 kHz): a regenerated digit's length, over the 40 ms minimum of ITU-T Q.24

# RFC 4733 §3.2 table 3: DTMF events 0-15, then 16 flash.
EVENT_CODES = "0123456789*#ABCD"
DIGIT_TO_CODE = {digit: code for code, digit in enumerate(EVENT_CODES)}

_PAYLOAD = struct.Struct("!BBH")


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One decoded telephone-event payload (RFC 4733 §2.3)."""

    code: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        """The DTMF character for codes 0-15, None for other events (flash, tones)."""
        return EVENT_CODES[self.code] if self.code < 16 else None


def parse_event(payload: bytes) -> TelephoneEvent | None:
    """Decode a telephone-event payload; None when it is too short (a counted drop).

    RFC 4733 §2.3 allows several events in one payload (redundancy, §2.5.1.4); the first
    one is the current event, which is all a detector needs.
    """
    if len(payload) < EVENT_PAYLOAD_SIZE:
        return None
    code, flags, duration = _PAYLOAD.unpack_from(payload)
    return TelephoneEvent(code, bool(flags & 0x80), flags & 0x3F, duration)


def event_payload(code: int, end: bool, duration: int, volume: int = DEFAULT_VOLUME) -> bytes:
    """The 4-byte payload for one event packet (RFC 4733 §2.3)."""
    return _PAYLOAD.pack(code, (0x80 if end else 0) | (volume & 0x3F), duration & 0xFFFF)


def digit_train(digit: str, packet_samples: int = 160, duration: int = SYNTH_DURATION) -> list[tuple[bool, bytes]]:
    """The (marker, payload) list for a regenerated key press (RFC 4733 §2.5.1).

    A first packet with the marker bit, continuation packets with growing durations,
    then the end packet three times (§2.5.1.4). All share one RTP timestamp, which the
    caller chooses.
    """
    code = DIGIT_TO_CODE[digit]
    train: list[tuple[bool, bytes]] = []
    elapsed = packet_samples
    first = True
    while elapsed < duration:
        train.append((first, event_payload(code, False, elapsed)))
        first = False
        elapsed += packet_samples
    train.extend((first and i == 0, event_payload(code, True, duration)) for i in range(END_PACKET_COPIES))
    return train


@dataclass(frozen=True, slots=True)
class KeyPress:
    """A new key press seen on a stream: reported once, on its first surviving packet."""

    digit: str | None  # None for non-DTMF events (flash, tones)
    timestamp: int  # the event's RTP timestamp: its identity


class EventDetector:
    """Reports each key press once, however its packets arrive (RFC 4733 §2.5.1).

    Feed every telephone-event packet of one stream; `feed` returns a KeyPress for the
    first packet of a new event and None for every other packet of it (continuations,
    the three end packets, duplicates, reordered stragglers). `key_of(timestamp)` maps
    any packet to the event it belongs to, so the relay can forward or swallow all of an
    event's packets alike.
    """

    __slots__ = ("_recent", "_last_code", "_last_ended", "_last_key")

    def __init__(self) -> None:
        # event timestamp -> key timestamp (the key press it belongs to; differs for §2.5.1.5 segments)
        self._recent: OrderedDict[int, int] = OrderedDict()
        self._last_code = -1
        self._last_ended = True
        self._last_key = -1

    def feed(self, timestamp: int, marker: bool, payload: bytes) -> KeyPress | None:
        """One event packet in; the KeyPress when it starts a new press, else None."""
        recent = self._recent
        key = recent.get(timestamp)
        if key is not None:
            if key == self._last_key and len(payload) >= 2 and payload[1] & 0x80:
                self._last_ended = True
            return None
        event = parse_event(payload)
        if event is None:
            return None
        segment = not marker and event.code == self._last_code and not self._last_ended
        key = self._last_key if segment else timestamp
        recent[timestamp] = key
        if len(recent) > RECENT_EVENTS:
            recent.popitem(last=False)
        self._last_code = event.code
        self._last_ended = event.end
        self._last_key = key
        if segment:
            return None
        return KeyPress(event.digit, timestamp)

    def key_of(self, timestamp: int) -> int | None:
        """The key press (its first timestamp) a packet with this timestamp belongs to."""
        return self._recent.get(timestamp)
