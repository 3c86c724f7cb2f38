"""SDP anchoring: the offers and answers we send each leg, with our media address.

Every SDP body we send goes through here: the far side's description re-addressed to
the port facing the leg (`anchored`), or an offer of our own when the caller sent none
(`own_offer`, RFC 3261 §13.2.1 late offer). Each leg keeps its own o= session id and
version (RFC 3264 §8: the version goes up with every new description on that leg).
"""

from __future__ import annotations

from b2bua import sdp as sdpmod
from rtp.call import MediaEndpoint
from b2bua.call_state import Leg
from b2bua.message import Request, Response
from b2bua.sdp import SessionDescription


def parse_sdp(message: Request | Response | None) -> SessionDescription | None:
    """The message's SDP body, or None when it has none or one we cannot read."""
    if message is None or not message.body:
        return None
    ctype = (message.headers.get("Content-Type") or "application/sdp").split(";")[0].strip().lower()
    if ctype != "application/sdp":
        return None
    try:
        return SessionDescription.parse(message.body)
    except Exception:  # noqa: BLE001 - any unreadable body is "no usable SDP"
        return None


def endpoint(description: SessionDescription, signalling_host: str) -> MediaEndpoint:
    """What media needs of a party's description (see `sdp.audio_endpoint`)."""
    return sdpmod.audio_endpoint(description, signalling_host)


def anchored(description: SessionDescription, media_ip: str, port: int, leg: Leg) -> bytes:
    """Our copy of the other side's SDP towards `leg`: our address and `port`."""
    leg.sdp_version += 1
    return sdpmod.anchor(description, media_ip, port, session_id=leg.sdp_session, version=leg.sdp_version).to_bytes()


def own_offer(media_ip: str, port: int, leg: Leg, payload_types: tuple[int, ...] = (sdpmod.PCMU, sdpmod.PCMA),
              dtmf: int | None = 101) -> bytes:
    """Our own offer towards `leg` (the caller sent none)."""
    leg.sdp_version += 1
    return sdpmod.offer(media_ip, port, session_id=leg.sdp_session, version=leg.sdp_version,
                        payload_types=payload_types, dtmf_payload_type=dtmf).to_bytes()
