"""SDP through an anchoring B2BUA (RFC 8866, RFC 3264), on the bodies real phones send.

The SDP bodies come from tests/fixtures/sip/*.sip, so parser and SDP tests read the
same bytes. Properties: parse/to_bytes round-trips; any bytes raise only SdpError; what
`anchor` writes points every stream at us but negotiates the same codec as the input.
"""

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from b2bua.call import MediaEndpoint
from b2bua.message import parse_message
from b2bua.sdp import Media, SdpError, SessionDescription, anchor, audio_endpoint, offer

FIXTURES = Path(__file__).parent / "fixtures" / "sip"
WITH_SDP = sorted(
    p.stem for p in FIXTURES.glob("*.sip") if parse_message(p.read_bytes()).headers.get("Content-Type") == "application/sdp"
)
ICE = ("candidate", "ice-ufrag", "ice-pwd", "ice-options", "end-of-candidates")


def body(name: str) -> bytes:
    return parse_message((FIXTURES / f"{name}.sip").read_bytes()).body


def sdp(name: str) -> SessionDescription:
    return SessionDescription.parse(body(name))


def edited(name: str, old: str, new: str) -> SessionDescription:
    data = body(name)
    assert old.encode() in data, old
    return SessionDescription.parse(data.replace(old.encode(), new.encode()))


def attribute_names(lines):
    return [v.split(":", 1)[0] for t, v in lines if t == "a"]


# --- the model -------------------------------------------------------------------------------


def test_fixtures_with_sdp_exist():
    assert {"baresip_invite", "linphone_invite_ipv6", "yealink_invite_hold", "cisco_gateway_invite",
            "carrier_invite_compact_folded", "sipp_uac_invite"} <= set(WITH_SDP)


@pytest.mark.parametrize("name", WITH_SDP)
def test_parse_to_bytes_is_byte_exact_on_real_bodies(name):
    assert sdp(name).to_bytes() == body(name)


def test_media_sections_keep_their_lines_in_order():
    description = sdp("linphone_invite_ipv6")
    assert [m.kind for m in description.media] == ["audio", "video"]
    audio = description.media[0]
    assert audio.port == 7078 and audio.proto == "RTP/AVP" and audio.formats[:4] == ["96", "97", "98", "0"]
    assert attribute_names(audio.lines)[:3] == ["rtpmap", "fmtp", "rtpmap"]
    assert audio.connection() == "IN IP6 2001:db8::20"
    assert [t for t, _ in description.session] == ["v", "o", "s", "c", "t", "a", "a", "a", "a"]


def test_port_count_survives():
    description = edited("sipp_uac_invite", "m=audio 6000 ", "m=audio 6000/2 ")
    assert description.media[0].port == 6000 and description.media[0].port_count == 2
    assert b"m=audio 6000/2 RTP/AVP 0" in description.to_bytes()


@pytest.mark.parametrize(
    "data",
    [b"", b"o=- 1 1 IN IP4 1.2.3.4\r\n", b"v=0\r\nm=audio x RTP/AVP 0\r\n", b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
     b"v=0\r\nm=audio\r\n", b"v=0\r\nbogus\r\n", b"v=0\r\n\xff\xfe\r\n", b"v=0\r\nm=audio \xc2\xb2 RTP/AVP 0\r\n",
     b"v=0\r\n" + b"a=x\r\n" * 1001],
)
def test_bad_bodies_raise_sdp_error(data):
    with pytest.raises(SdpError):
        SessionDescription.parse(data)


# --- anchor: what the B2BUA sends to the other leg ---------------------------------------------


def test_anchor_rewrites_addresses_origin_and_port_and_drops_ice():
    original = sdp("linphone_invite_ipv6")
    before = original.to_bytes()
    out = anchor(original, "203.0.113.1", 20000, session_id=77, version=3)
    assert original.to_bytes() == before  # the input is left alone
    text = out.to_bytes().decode()
    assert dict(out.session)["o"] == "b2bua 77 3 IN IP4 203.0.113.1"
    assert "2001:db8::20" not in text  # no address of the far side leaks through
    assert [v for t, v in out.session if t == "c"] == ["IN IP4 203.0.113.1"]
    audio, video = out.media
    assert audio.port == 20000 and audio.connection() == "IN IP4 203.0.113.1"
    assert "a=rtcp:20001\r\n" in text  # RFC 3605: RTCP on port + 1
    for name in ICE:
        assert f"a={name}" not in text
    # Everything that is not transport passes through, in order: the parties negotiate.
    assert [v for t, v in audio.lines if t == "a" and v.startswith(("rtpmap", "fmtp", "rtcp-fb"))] == [
        v for t, v in original.media[0].lines if t == "a" and v.startswith(("rtpmap", "fmtp", "rtcp-fb"))]
    assert audio.formats == original.media[0].formats
    assert "a=record:off" in text and "a=rtcp-xr:" in text
    # The second stream is declined (RFC 3264 §6) with our address.
    assert video.kind == "video" and video.port == 0 and video.connection() == "IN IP4 203.0.113.1"
    assert "rtcp" not in attribute_names(video.lines)


def test_anchor_with_ipv6_media_address():
    out = anchor(sdp("sipp_uac_invite"), "2001:db8::1", 20002, session_id=1, version=1)
    assert dict(out.session)["c"] == "IN IP6 2001:db8::1" and dict(out.session)["o"].endswith("IN IP6 2001:db8::1")


def test_anchor_adds_a_connection_when_the_input_had_only_media_level_ones():
    description = SessionDescription.parse(
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n")
    out = anchor(description, "203.0.113.1", 20000, session_id=5, version=1)
    assert out.media[0].connection() == "IN IP4 203.0.113.1"
    assert audio_endpoint(out, "x").remote == ("203.0.113.1", 20000)


def test_anchor_inserts_origin_when_missing_and_keeps_disabled_streams_off():
    description = SessionDescription.parse(b"v=0\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\na=rtcp:4001\r\n")
    out = anchor(description, "203.0.113.1", 20000, session_id=5, version=2)
    assert out.session[1] == ("o", "b2bua 5 2 IN IP4 203.0.113.1")
    assert out.media[0].port == 0 and "rtcp" not in attribute_names(out.media[0].lines)


def test_anchor_keeps_direction_so_hold_passes_through():
    out = anchor(sdp("yealink_invite_hold"), "203.0.113.1", 20000, session_id=1, version=2)
    assert audio_endpoint(out, "x").direction == "sendonly"


@pytest.mark.parametrize("direction, relayed", [("", "sendonly"), ("a=sendrecv\r\n", "sendonly"),
                                                ("a=sendonly\r\n", "sendonly"), ("a=recvonly\r\n", "inactive"),
                                                ("a=inactive\r\n", "inactive")])
def test_anchor_turns_rfc2543_hold_into_a_direction(direction, relayed):
    """c= 0.0.0.0 (RFC 3264 §8.4) is replaced by our address, so the hold must survive as a
    direction: otherwise the other party, never told, keeps sending (and being recorded)."""
    held = SessionDescription.parse(
        f"v=0\r\no=- 1 2 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
        f"m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{direction}".encode())
    out = anchor(held, "203.0.113.1", 20000, session_id=5, version=3)
    endpoint = audio_endpoint(out, "x")
    assert endpoint.remote == ("203.0.113.1", 20000) and endpoint.direction == relayed
    assert [v for t, v in out.media[0].lines if t == "a" and v in ("sendrecv", "sendonly", "recvonly", "inactive")] == [relayed]
    resumed = anchor(edited_text(held, "c=IN IP4 0.0.0.0", "c=IN IP4 192.0.2.9"), "203.0.113.1", 20000,
                     session_id=5, version=4)
    assert audio_endpoint(resumed, "x").direction == (direction.strip()[2:] or "sendrecv")


def edited_text(description: SessionDescription, old: str, new: str) -> SessionDescription:
    return SessionDescription.parse(description.to_bytes().replace(old.encode(), new.encode()))


# --- audio_endpoint: what media needs to know --------------------------------------------------


def test_yealink_prefers_pcma_and_is_on_hold():
    assert audio_endpoint(sdp("yealink_invite_hold"), "10.0.0.31") == MediaEndpoint(
        ("10.0.0.31", 11796), "10.0.0.31", 8, "PCMA", 101, 20, "sendonly")


def test_linphone_first_g711_in_m_line_order_and_8k_telephone_event():
    endpoint = audio_endpoint(sdp("linphone_invite_ipv6"), "2001:db8::20")
    assert endpoint.remote == ("2001:db8::20", 7078)
    assert (endpoint.payload_type, endpoint.codec) == (0, "PCMU")  # opus, SILK, speex skipped
    assert endpoint.dtmf_payload_type == 100  # of 101 /48000, 99 /16000, 100 /8000
    assert (endpoint.ptime, endpoint.direction) == (20, "sendrecv")


def test_cisco_media_level_connection_and_codec_order():
    endpoint = audio_endpoint(sdp("cisco_gateway_invite"), "172.16.10.5")
    assert endpoint.remote == ("172.16.10.5", 17334) and endpoint.codec == "PCMA" and endpoint.payload_type == 8


def test_sipp_without_telephone_event():
    endpoint = audio_endpoint(sdp("sipp_uac_invite"), "127.0.0.1")
    assert endpoint.dtmf_payload_type is None and endpoint.codec == "PCMU" and endpoint.remote == ("127.0.0.1", 6000)


def test_telephone_event_not_in_the_m_line_is_not_offered():
    description = edited("sipp_uac_invite", "a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000")
    assert audio_endpoint(description, "x").dtmf_payload_type is None


def test_dynamic_payload_type_for_g711():
    description = edited("sipp_uac_invite", "RTP/AVP 0\r\na=rtpmap:0 PCMU/8000", "RTP/AVP 96 0\r\na=rtpmap:96 pcma/8000")
    assert (audio_endpoint(description, "x").payload_type, audio_endpoint(description, "x").codec) == (96, "PCMA")


@pytest.mark.parametrize(
    "old, new",
    [("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0"),  # RFC 3264 §8.4: old-style hold
     ("m=audio 6000", "m=audio 0")],  # stream disabled
)
def test_hold_or_disabled_stream_has_no_remote(old, new):
    assert audio_endpoint(edited("sipp_uac_invite", old, new), "127.0.0.1").remote is None


def test_inactive_keeps_the_address():
    description = edited("sipp_uac_invite", "a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU/8000\r\na=inactive")
    endpoint = audio_endpoint(description, "127.0.0.1")
    assert endpoint.remote == ("127.0.0.1", 6000) and endpoint.direction == "inactive"


def test_media_direction_overrides_session_direction():
    session_only = edited("sipp_uac_invite", "t=0 0", "t=0 0\r\na=recvonly")
    assert audio_endpoint(session_only, "x").direction == "recvonly"
    both = edited("sipp_uac_invite", "t=0 0\r\n", "t=0 0\r\na=recvonly\r\n").to_bytes() + b"a=sendrecv\r\n"
    assert audio_endpoint(SessionDescription.parse(both), "x").direction == "sendrecv"


@pytest.mark.parametrize("value, ptime", [("30", 30), ("20.0", 20), ("1", 10), ("1000", 120), ("abc", 20), ("inf", 20)])
def test_ptime(value, ptime):
    description = edited("sipp_uac_invite", "a=rtpmap:0 PCMU/8000", f"a=rtpmap:0 PCMU/8000\r\na=ptime:{value}")
    assert audio_endpoint(description, "x").ptime == ptime


def test_no_audio_stream():
    description = SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=video 5000 RTP/AVP 96\r\n")
    assert audio_endpoint(description, "1.2.3.4").remote is None


def test_our_own_offer_reads_back():
    ours = SessionDescription.parse(offer("203.0.113.1", 20000, session_id=9, version=1).to_bytes())
    assert audio_endpoint(ours, "x") == MediaEndpoint(("203.0.113.1", 20000), "x", 0, "PCMU", 101, 20, "sendrecv")


def test_media_port_is_bounded():
    with pytest.raises(SdpError):
        Media("audio", 70000, "RTP/AVP", ["0"])


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_sdp_error(data):
    try:
        description = SessionDescription.parse(data)
    except SdpError:
        return
    audio_endpoint(description, "x")
    anchor(description, "203.0.113.1", 20000, session_id=1, version=1)


_line_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
_attribute = st.one_of(
    st.sampled_from(["sendrecv", "sendonly", "recvonly", "inactive", "rtpmap:0 PCMU/8000", "rtpmap:8 PCMA/8000",
                     "rtpmap:101 telephone-event/8000", "ptime:30", "candidate:1 1 UDP 1 192.0.2.1 4000 typ host",
                     "ice-ufrag:abc", "rtcp:4001", "rtcp-mux"]),
    _line_value.map(lambda v: f"x-{v}"),
)


@st.composite
def descriptions(draw):
    session = [("v", "0"), ("o", "- 1 1 IN IP4 192.0.2.1"), ("s", "-")]
    if draw(st.booleans()):
        session.append(("c", f"IN IP4 192.0.2.{draw(st.integers(0, 254))}"))
    session.append(("t", "0 0"))
    session += [("a", a) for a in draw(st.lists(_attribute, max_size=3))]
    media = []
    for kind in draw(st.lists(st.sampled_from(["audio", "video", "application"]), min_size=1, max_size=3)):
        formats = draw(st.lists(st.sampled_from(["0", "8", "18", "96", "101"]), min_size=1, max_size=4, unique=True))
        lines = [("c", "IN IP4 192.0.2.7")] if draw(st.booleans()) else []
        lines += [("a", a) for a in draw(st.lists(_attribute, max_size=6))]
        media.append(Media(kind, draw(st.integers(0, 65535)), "RTP/AVP", formats, lines))
    return SessionDescription(session, media)


@settings(max_examples=300, deadline=None)
@given(descriptions())
def test_parse_to_bytes_round_trip(description):
    assert SessionDescription.parse(description.to_bytes()) == description


@settings(max_examples=300, deadline=None)
@given(descriptions(), st.integers(1024, 65534).map(lambda p: p - p % 2))
def test_anchored_description_points_at_us_and_negotiates_the_same(description, port):
    out = SessionDescription.parse(anchor(description, "203.0.113.1", port, session_id=4, version=2).to_bytes())
    theirs, ours = audio_endpoint(description, "x"), audio_endpoint(out, "x")
    assert (ours.payload_type, ours.codec, ours.dtmf_payload_type, ours.ptime, ours.direction) == (
        theirs.payload_type, theirs.codec, theirs.dtmf_payload_type, theirs.ptime, theirs.direction)
    if description.first_audio() is not None and description.first_audio().port != 0:
        assert ours.remote == ("203.0.113.1", port)
    text = out.to_bytes().decode()
    assert "192.0.2." not in text and "a=candidate" not in text and "a=ice-" not in text
    assert all(m.port == 0 for m in out.media if m is not out.first_audio())
