"""Each leg negotiates its own codec (b2bua/codecs.py, sdp.with_formats), from SDP bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from b2bua.codecs import CodecPolicy
from b2bua.sdp import Format, SessionDescription, formats, with_formats

PCMA_TRUNK = (
    b"v=0\r\no=carrier 7 7 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
    b"m=audio 16000 RTP/AVP 8 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\n"
    b"a=fmtp:96 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
)
PCMU_PHONE_ANSWER = (
    b"v=0\r\no=phone 5 5 IN IP4 203.0.113.20\r\ns=-\r\nc=IN IP4 203.0.113.20\r\nt=0 0\r\n"
    b"m=audio 7000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\na=sendrecv\r\n"
)
G729_ONLY = PCMA_TRUNK.replace(b"RTP/AVP 8 96", b"RTP/AVP 18").replace(b"a=rtpmap:8 PCMA/8000", b"a=rtpmap:18 G729/8000")


def sdp(data: bytes) -> SessionDescription:
    return SessionDescription.parse(data)


def names(fs: list[Format]) -> list[tuple[int, str]]:
    return [(f.payload_type, f.name) for f in fs]


def test_formats_read_rtpmap_static_types_and_fmtp():
    audio = sdp(PCMA_TRUNK).first_audio()
    assert formats(audio) == [Format(8, "PCMA", 8000), Format(96, "TELEPHONE-EVENT", 8000, "0-15")]
    bare = sdp(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0 8 13\r\n").first_audio()
    assert names(formats(bare)) == [(0, "PCMU"), (8, "PCMA"), (13, "")]  # CN: offered, not understood


def test_a_pcma_only_offer_is_passed_on_with_both_laws_and_its_telephone_event():
    offered = CodecPolicy().offer_for_other_leg(sdp(PCMA_TRUNK))
    # its own law first (no transcoding if the phone has it), then the other, then events
    assert names(offered) == [(8, "PCMA"), (0, "PCMU"), (96, "TELEPHONE-EVENT")]
    assert offered[-1].fmtp == "0-15"


def test_an_offer_without_telephone_event_gets_ours():
    plain = PCMA_TRUNK.replace(b" 96\r\n", b"\r\n").replace(b"a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\n", b"")
    offered = CodecPolicy().offer_for_other_leg(sdp(plain))
    assert names(offered) == [(8, "PCMA"), (0, "PCMU"), (101, "TELEPHONE-EVENT")] and offered[-1].fmtp == "0-16"


def test_our_answer_picks_from_the_offer_only():
    policy = CodecPolicy()
    # the other leg chose PCMU, the offerer has only PCMA: PCMA, transcoded
    assert names(policy.answer_for_offerer(sdp(PCMA_TRUNK), "PCMU")) == [(8, "PCMA"), (96, "TELEPHONE-EVENT")]
    both = sdp(PCMA_TRUNK.replace(b"RTP/AVP 8 96", b"RTP/AVP 0 8 96"))
    # both offered: the other leg's choice, so nothing is transcoded
    assert names(policy.answer_for_offerer(both, "PCMA"))[0] == (8, "PCMA")
    assert names(policy.answer_for_offerer(both, "PCMU"))[0] == (0, "PCMU")
    assert policy.answer_for_offerer(sdp(G729_ONLY), "PCMU") is None


def test_g711_under_a_dynamic_payload_type_is_not_taken():
    # Answered, such a call was silent both ways (the relay knows G.711 as 0 and 8): another
    # law the offer has is picked instead, and an offer with nothing else gets 488.
    policy = CodecPolicy()
    dynamic = sdp(PCMA_TRUNK.replace(b"RTP/AVP 8 96", b"RTP/AVP 97 96").replace(b"a=rtpmap:8 PCMA", b"a=rtpmap:97 PCMA"))
    assert not policy.usable(dynamic) and policy.answer_for_offerer(dynamic, "PCMA") is None
    both = sdp(PCMA_TRUNK.replace(b"RTP/AVP 8 96", b"RTP/AVP 97 8 96").replace(
        b"a=rtpmap:8 PCMA/8000", b"a=rtpmap:97 PCMA/8000\r\na=rtpmap:8 PCMA/8000"))
    assert names(policy.answer_for_offerer(both, "PCMA")) == [(8, "PCMA"), (96, "TELEPHONE-EVENT")]


def test_usable_needs_one_of_our_codecs():
    policy = CodecPolicy()
    assert policy.usable(sdp(PCMA_TRUNK)) and not policy.usable(sdp(G729_ONLY)) and not policy.usable(None)
    assert not CodecPolicy(("PCMU",)).usable(sdp(PCMA_TRUNK))


def test_the_codec_list_is_configurable_and_checked():
    assert names(CodecPolicy(("PCMA",)).own_offer()) == [(8, "PCMA"), (101, "TELEPHONE-EVENT")]
    assert names(CodecPolicy().own_offer(first="PCMA"))[:2] == [(8, "PCMA"), (0, "PCMU")]
    with pytest.raises(ValueError, match="G722"):
        CodecPolicy(("G722", "PCMU"))
    with pytest.raises(ValueError):
        CodecPolicy(())


def test_with_formats_rewrites_m_rtpmap_and_fmtp_and_keeps_every_other_line():
    rewritten = with_formats(sdp(PCMU_PHONE_ANSWER), [Format(8, "PCMA", 8000), Format(96, "TELEPHONE-EVENT", 8000, "0-15")])
    text = rewritten.to_bytes().decode()
    assert "m=audio 7000 RTP/AVP 8 96\r\n" in text
    assert "a=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\na=sendrecv\r\n" in text
    assert "rtpmap:0" not in text and "rtpmap:101" not in text and "fmtp:101" not in text
    assert SessionDescription.parse(rewritten.to_bytes()) == rewritten
    # a stream turned off (port 0) is left alone
    off = sdp(PCMU_PHONE_ANSWER.replace(b"m=audio 7000", b"m=audio 0"))
    assert with_formats(off, [Format(8, "PCMA", 8000)]) is off


_LAWS = st.sampled_from([(0, "PCMU"), (8, "PCMA"), (18, "G729"), (9, "G722"), (3, "GSM"), (96, "PCMU"), (97, "PCMA")])


@settings(max_examples=200, deadline=None)
@given(offered=st.lists(_LAWS, min_size=1, max_size=5, unique=True), event=st.booleans(),
       chosen=st.sampled_from(["PCMU", "PCMA", None]))
def test_any_offer_is_answered_from_itself_or_refused_only_without_our_codecs(offered, event, chosen):
    """RFC 3264 §6.1 for any offer: our answer's formats are the offer's own; a codec of ours
    is picked whenever the offer has one (so 488 only without), the other leg's when offered."""
    pts = [str(pt) for pt, _ in offered] + (["101"] if event else [])
    maps = "".join(f"a=rtpmap:{pt} {name}/8000\r\n" for pt, name in offered)
    maps += "a=rtpmap:101 telephone-event/8000\r\n" if event else ""
    offer = sdp(f"v=0\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP {' '.join(pts)}\r\n{maps}".encode())
    policy = CodecPolicy()
    answer = policy.answer_for_offerer(offer, chosen)
    ours = [name for pt, name in offered if (pt, name) in ((0, "PCMU"), (8, "PCMA"))]  # static types only
    if not ours:
        assert answer is None and not policy.usable(offer)
        return
    assert answer is not None and policy.usable(offer)
    offered_formats = set(formats(offer.first_audio()))
    assert set(answer) <= offered_formats
    assert answer[0].name == (chosen if chosen in ours else ours[0])
    assert [f.name for f in answer[1:]] == (["TELEPHONE-EVENT"] if event else [])
    # and what we pass on to the other leg always has both laws, once each
    passed = [f.name for f in policy.offer_for_other_leg(offer)]
    assert sorted(passed) == sorted(["PCMU", "PCMA", "TELEPHONE-EVENT"])
