"""SDP anchoring: the offers and answers we send each leg, with our media address.

Every SDP body we send goes through here. Each leg is negotiated on its own (the codec
choice itself is b2bua/codecs.py's): an offer passed on to the other leg lists what we
take (`offer_towards`); our answer to an offerer picks from its offer (`answer_towards`)
and tells media which codec that leg now uses (`offerer_endpoint`); a party that sent
no offer gets ours (`own_offer`, RFC 3261 §13.2.1 late offer). Each leg keeps its own
o= session id and version (RFC 3264 §8: the version goes up with every new description
on that leg), and every address in what we send is ours.
"""

from __future__ import annotations

from dataclasses import replace

from b2bua import sdp as sdpmod
from b2bua.call_state import Leg
from b2bua.codecs import KNOWN, CodecPolicy
from b2bua.message import Request, Response
from b2bua.sdp import Format, SessionDescription
from rtp.call import MediaEndpoint


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
    """What media needs of a party's own description (see `sdp.audio_endpoint`): for an
    answer, the codec it chose; for an offer, its first until our answer says otherwise."""
    return sdpmod.audio_endpoint(description, signalling_host, tuple(KNOWN))


def offerer_endpoint(offer: SessionDescription, signalling_host: str, pick: Format) -> MediaEndpoint:
    """An offerer's media once we answered it with `pick`: its address, our choice."""
    return replace(endpoint(offer, signalling_host), payload_type=pick.payload_type, codec=pick.name)


def offer_towards(offer: SessionDescription, media_ip: str, port: int, leg: Leg, policy: CodecPolicy) -> bytes:
    """The far party's offer, passed on to `leg` with our address and our codecs."""
    return _anchored(sdpmod.with_formats(offer, policy.offer_for_other_leg(offer)), media_ip, port, leg)


def answer_towards(offer: SessionDescription, answer: SessionDescription, media_ip: str, port: int, leg: Leg,
                   policy: CodecPolicy, chosen: str | None) -> tuple[bytes, Format] | None:
    """Our answer to `leg`'s `offer`, from the other leg's `answer` (its direction, ptime
    and so on) and the codec it `chosen`; with the codec `leg` will use. None when the
    offer has none of our codecs (the caller answers 488)."""
    picked = policy.answer_for_offerer(offer, chosen)
    if picked is None:
        return None
    return _anchored(sdpmod.with_formats(answer, picked), media_ip, port, leg), picked[0]


def own_offer(media_ip: str, port: int, leg: Leg, policy: CodecPolicy, first: str | None = None) -> bytes:
    """Our own offer towards `leg` (the party sent none): every codec we take, `first` first."""
    leg.sdp_version += 1
    plain = sdpmod.offer(media_ip, port, session_id=leg.sdp_session, version=leg.sdp_version)
    return sdpmod.with_formats(plain, policy.own_offer(first)).to_bytes()


def _anchored(description: SessionDescription, media_ip: str, port: int, leg: Leg) -> bytes:
    """`description` towards `leg`: our address and `port`, our o= for that leg."""
    leg.sdp_version += 1
    return sdpmod.anchor(description, media_ip, port, session_id=leg.sdp_session, version=leg.sdp_version).to_bytes()
