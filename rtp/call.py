"""The seam between signalling (`b2bua/`) and media (`rtp/`); `b2bua.call` re-exports it.

Signalling knows who is on a call, what each side negotiated in SDP and whether the
recording starts on; media knows nothing of SIP. These plain objects are all that
crosses from one to the other, so either side can be tested without the other.

Channels follow the contract: channel 1 is the external party (the trunk side; on a
call between two users, the caller), channel 2 is the user (on an internal call, the
callee). `Call.parties[0]` is channel 1, `Call.parties[1]` channel 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Direction = Literal["inbound", "outbound", "internal"]
Role = Literal["external", "user"]


@dataclass(frozen=True, slots=True)
class MediaEndpoint:
    """One party's negotiated audio stream, as its own SDP described it.

    `remote` is None while no SDP is known or while the party is on hold with a
    0.0.0.0 connection address (RFC 3264 §8.4): nothing is sent to it then.
    `signalling_ip` is where the party's SIP came from: besides the SDP address, it is
    the only source from which media may be latched (symmetric RTP behind NAT).
    """

    remote: tuple[str, int] | None
    signalling_ip: str
    payload_type: int = 0  # the audio payload type both sides use: 0 PCMU or 8 PCMA
    codec: str = "PCMU"
    dtmf_payload_type: int | None = 101  # RFC 4733 telephone-event PT, None when not offered
    ptime: int = 20
    direction: str = "sendrecv"  # SDP direction attribute: sendrecv, sendonly, recvonly, inactive


@dataclass(slots=True)
class Party:
    """One side of the call: who it is and where its media goes."""

    role: Role  # "user" parties (registered phones) may toggle recording with *1
    name: str  # user name for users, trunk name for the external party
    media: MediaEndpoint | None = None


@dataclass(slots=True)
class Call:
    """An answered (or answering) call as media sees it."""

    call_id: str  # the B2BUA's own identifier: recordings are named by it
    direction: Direction
    from_uri: str
    to_uri: str
    ddi: str | None  # the number dialled, on inbound calls
    user: str | None  # the user on the call (callee on internal calls)
    started: datetime  # when the call arrived (UTC): dates the recording path
    route: tuple[str, ...] = ()  # e.g. ("number:441632960000", "ring_group:sales", "user:alice")
    record_at_answer: bool = False  # the policy walk's result for this route
    recording_enabled: bool = True  # the organisation's Call Recording switch
    parties: tuple[Party, Party] = field(
        default_factory=lambda: (Party("external", "trunk"), Party("user", "user"))
    )
