"""The message layer on real-world messages, and its two properties.

Properties (style §6): build → parse → build is stable, and any bytes raise nothing but
SipParseError (which carries the status to answer with).
"""

import pytest
from hypothesis import given, settings, strategies as st

from b2bua.headers import parse_name_addr, parse_uri, parse_via
from b2bua.message import Headers, Request, Response, SipParseError, StreamFramer, make_response, parse_message
from tests.samples.sip_messages import ALL, CARRIER_INVITE, COMPACT_FOLDED_INVITE, IPV6_OPTIONS, SDP


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_sample_parses_and_round_trips(name):
    message = parse_message(ALL[name].encode())
    again = parse_message(message.to_bytes())
    assert again.to_bytes() == message.to_bytes()


def test_compact_forms_and_folded_lines():
    m = parse_message(COMPACT_FOLDED_INVITE.encode())
    assert isinstance(m, Request) and m.method == "INVITE"
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert m.headers.get("Subject") == "I know you're there, pick up the phone and talk to me!"
    assert m.headers.get("content-type") == "application/sdp"
    assert m.body == SDP.encode()
    assert m.from_tag == "1928301774" and m.to_tag is None
    assert "Via: SIP/2.0/UDP pc33.atlanta.example.com" in m.to_bytes().decode()


def test_multiple_vias_and_list_headers():
    m = parse_message(CARRIER_INVITE.encode())
    assert [v.host for v in m.via] == ["198.51.100.7", "10.20.30.40"]
    assert m.branch == "z9hG4bK-524287-1---1c3f8b2e0c5a1b1e"
    assert m.headers.get_all("Supported") == ["replaces", "timer"]
    assert len(m.headers.get_all("Allow")) == 11
    assert parse_uri(m.uri).user == "+441632960000"
    assert parse_name_addr(m.headers.get("From")).display == "Caller Name"


def test_ipv6_hosts():
    m = parse_message(IPV6_OPTIONS.encode())
    assert m.via[0].host == "2001:db8::9:1" and m.via[0].port == 5060
    assert parse_uri(m.uri).host == "2001:db8::10" and parse_uri(m.uri).port == 5070
    assert str(parse_uri(m.uri)) == "sip:[2001:db8::10]:5070"


def test_comma_inside_quotes_is_not_a_list_separator():
    h = Headers([("Contact", '"Smith, John" <sip:j@a.example>;q=0.5, <sip:j@b.example>')])
    assert h.get_all("Contact") == ['"Smith, John" <sip:j@a.example>;q=0.5', "<sip:j@b.example>"]


@pytest.mark.parametrize(
    "mutate, status, words",
    [
        (lambda t: t.replace("CSeq: 314159 INVITE", "CSeq: 314159 BYE"), 400, "CSeq"),
        (lambda t: t.replace("i: a84b4c76e66710@pc33.atlanta.example.com\r\n", ""), 400, "Call-ID"),
        (lambda t: t.replace("SIP/2.0\r\n", "SIP/7.0\r\n", 1), 505, "Version"),
        (lambda t: t.replace("CSeq: 314159", "CSeq: abc"), 400, "CSeq"),
        (lambda t: t.replace("v: SIP/2.0/UDP pc33", "v: garbage"), 400, "Via"),
        (lambda t: t.replace("INVITE sip:bob", "INVITE http://bob", 1), 416, "Scheme"),
        (lambda t: t.replace(f"l: {len(SDP)}", f"l: {len(SDP) + 50}"), 400, "Content-Length"),
        (lambda t: t.replace("Max-Forwards: 70", "Max-Forwards: many"), 400, "Max-Forwards"),
        (lambda t: t + "x" * 70000, 513, "Too Large"),
    ],
)
def test_malformed_requests_get_status_and_reason(mutate, status, words):
    with pytest.raises(SipParseError) as err:
        parse_message(mutate(COMPACT_FOLDED_INVITE).encode())
    assert err.value.status == status and words in err.value.reason


def test_header_flood_is_refused():
    flood = COMPACT_FOLDED_INVITE.replace("Max-Forwards: 70\r\n", "X-Junk: 1\r\n" * 1000)
    with pytest.raises(SipParseError) as err:
        parse_message(flood.encode())
    assert err.value.status == 400 and "Too Many Headers" in err.value.reason


def test_body_longer_than_content_length_is_cut_on_udp():
    m = parse_message((CARRIER_INVITE + "trailing junk").encode())
    assert m.body == SDP.encode()


def test_make_response_copies_the_rfc_headers_and_adds_the_tag():
    request = parse_message(CARRIER_INVITE.encode())
    response = make_response(request, 180, to_tag="abc")
    assert isinstance(response, Response) and response.reason == "Ringing"
    assert response.headers.get_all("Via") == request.headers.get_all("Via")
    assert response.to_tag == "abc" and response.call_id == request.call_id
    assert "Record-Route" not in response.headers


def test_stream_framer_cuts_by_content_length():
    framer = StreamFramer()
    data = (CARRIER_INVITE + "\r\n\r\n" + IPV6_OPTIONS).encode()
    out = framer.feed(data[:100]) + framer.feed(data[100:])
    assert [parse_message(m).method for m in out] == ["INVITE", "OPTIONS"]
    assert framer.buffered == 0


def test_stream_framer_bounds_a_message_that_never_ends():
    framer = StreamFramer(max_size=1000)
    with pytest.raises(SipParseError) as err:
        framer.feed(b"INVITE sip:x SIP/2.0\r\n" + b"X: y\r\n" * 300)
    assert err.value.status == 513


tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=12)


@given(method=st.sampled_from(["INVITE", "BYE", "OPTIONS", "REGISTER", "FOO"]), user=tokens, host=tokens,
       tag=tokens, branch=tokens, number=st.integers(0, 2**31 - 1), body=st.binary(max_size=200),
       extra=st.lists(st.tuples(st.sampled_from(["Subject", "X-Custom", "Supported", "Allow"]), tokens), max_size=5))
def test_build_parse_build_is_stable(method, user, host, tag, branch, number, body, extra):
    headers = Headers([
        ("Via", f"SIP/2.0/UDP {host}:5060;branch=z9hG4bK{branch}"),
        ("From", f"<sip:{user}@{host}>;tag={tag}"),
        ("To", f"<sip:{user}@{host}>"),
        ("Call-ID", f"{branch}@{host}"),
        ("CSeq", f"{number} {method}"),
        *extra,
    ])
    request = Request(method, f"sip:{user}@{host}", headers, body)
    first = request.to_bytes()
    parsed = parse_message(first)
    assert parsed.to_bytes() == first
    assert parsed.body == body and parsed.cseq == (number, method)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_our_parse_error(data):
    try:
        parse_message(data)
    except SipParseError:
        pass


@settings(max_examples=300)
@given(st.data())
def test_mutated_real_messages_raise_only_our_parse_error(data):
    base = bytearray(data.draw(st.sampled_from(sorted(ALL.values()))).encode())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    try:
        message = parse_message(bytes(base))
        message.to_bytes()
        _ = (message.call_id, message.from_tag, message.to_tag)
    except SipParseError:
        pass


def test_via_with_spaces_around_slashes_parses():
    via = parse_via("SIP / 2.0 / UDP host.example:5060 ; branch=z9hG4bKx")
    assert via.transport == "UDP" and via.port == 5060 and via.branch == "z9hG4bKx"
