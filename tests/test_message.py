"""The SIP message layer driven with real-world bytes (tests/fixtures/sip/*.sip).

Reads like a trace: bytes in, a message (or the status to answer) out. Properties
(style §6): any bytes raise nothing but SipParseError; build → parse → build is stable.
"""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from b2bua.message import (
    MAX_HEADERS,
    MAX_MESSAGE_SIZE,
    Headers,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    make_response,
    parse_message,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sip"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.sip"))


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.sip").read_bytes()


def replace(name: str, old: str, new: str) -> bytes:
    data = fixture(name)
    assert old.encode() in data, old
    return data.replace(old.encode(), new.encode(), 1)


def fields(message) -> list[tuple[str, str]]:
    """Header fields other than Content-Length, which serialisation writes itself."""
    return [(n, v) for n, v in message.headers.items() if n != "Content-Length"]


def rejected(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as err:
        parse_message(data)
    return err.value


# --- every fixture ---------------------------------------------------------------------------


def test_there_are_fixtures_of_every_kind():
    assert len(NAMES) >= 12
    kinds = {fixture(n).split(b" ", 1)[0] for n in NAMES}
    assert {b"INVITE", b"REGISTER", b"OPTIONS", b"BYE", b"SIP/2.0"} <= kinds


@pytest.mark.parametrize("name", NAMES)
def test_fixture_parses_and_round_trips(name):
    message = parse_message(fixture(name))
    assert message.call_id and message.cseq[0] >= 1 and message.branch.startswith("z9hG4bK")
    wire = message.to_bytes()
    again = parse_message(wire)
    assert again.to_bytes() == wire
    assert fields(again) == fields(message) and again.body == message.body


@pytest.mark.parametrize("name", NAMES)
def test_serialisation_writes_canonical_names_and_one_content_length(name):
    wire = parse_message(fixture(name)).to_bytes()
    head, _, body = wire.partition(b"\r\n\r\n")
    names = [line.split(b":", 1)[0] for line in head.split(b"\r\n")[1:]]
    assert names.count(b"Content-Length") == 1 and f"Content-Length: {len(body)}".encode() in head
    # RFC 3261 §7.3.3: compact forms are read, full forms written.
    assert not [n for n in names if len(n) == 1]
    assert all(n[:1].isupper() for n in names)


# --- what real peers send ---------------------------------------------------------------------


def test_carrier_compact_forms_folded_lines_and_multiple_vias():
    m = parse_message(fixture("carrier_invite_compact_folded"))
    assert isinstance(m, Request) and m.method == "INVITE"
    # Two Via header lines, the first holding two comma-separated values (RFC 3261 §7.3.1).
    assert [(v.transport, v.host, v.port) for v in m.via] == [
        ("UDP", "198.51.100.7", 5060), ("UDP", "10.20.30.40", 5060), ("TCP", "2001:db8::7", 5060)]
    assert m.branch == "z9hG4bK-524287-1---1c3f8b2e0c5a1b1e"
    assert m.from_tag == "as7d3e" and m.to_tag is None and m.from_.display == "Caller, Name"
    assert m.call_id == "2f4e6a1b7c3d@198.51.100.7"
    assert m.headers.get("Subject") == "Incoming call from the carrier"  # folded, LWS is one SP
    assert m.headers.get("Supported") == "replaces, timer"  # k:
    assert m.headers.get("Session-Expires") == "1800;refresher=uac"  # x:
    assert m.headers.get("Content-Type") == "application/sdp"  # c:
    assert len(m.headers.get_all("Allow")) == 11  # comma list continued on a folded line
    assert m.headers.get_all("P-Asserted-Identity") == [
        '"Caller, Name" <sip:+447700900123@198.51.100.7;user=phone>', "<tel:+447700900123>"]
    assert m.headers.get_all("Record-Route") == ["<sip:198.51.100.7;lr;ftag=as7d3e>", "<sip:10.20.30.40;lr>"]
    assert m.body.startswith(b"v=0\r\n") and len(m.body) == int(fixture("carrier_invite_compact_folded").split(b"l: ")[1].split(b"\r\n")[0])


def test_linphone_ipv6_invite():
    m = parse_message(fixture("linphone_invite_ipv6"))
    assert m.uri == "sip:201@[2001:db8::1]:5060"
    assert m.via[0].host == "2001:db8::20" and m.via[0].has_rport
    assert m.to.uri.host == "2001:db8::1" and m.from_tag == "JtxVe~bSK"
    contact = m.headers.get_all("Contact")
    assert len(contact) == 1 and "+sip.instance" in contact[0]  # the quoted <urn:...> is not split


def test_authorization_is_never_split_on_commas():
    m = parse_message(fixture("yealink_register_auth"))
    auth = m.headers.get_all("Authorization")
    assert len(auth) == 1 and auth[0].startswith("Digest username=") and "nc=00000001" in auth[0]
    assert m.headers.get_all("Allow-Events") == ["talk", "hold", "conference", "refer", "check-sync"]


def test_response_fields():
    m = parse_message(fixture("carrier_200_ok"))
    assert isinstance(m, Response) and (m.status, m.reason) == (200, "OK")
    assert m.cseq == (1, "INVITE") and m.to_tag == "gK0a8b1c2d" and m.from_tag == "b2b-1"
    assert m.via[0].received == "203.0.113.1" and m.via[0].rport == 5060
    ringing = parse_message(fixture("proxy_180_ringing"))
    assert ringing.status == 180 and [v.port for v in ringing.via] == [5060, 5080]


def test_any_method_token_and_compact_event():
    m = parse_message(fixture("custom_method_publish"))
    assert m.method == "PUBLISH" and m.cseq == (1, "PUBLISH") and m.headers.get("Event") == "presence"
    m = parse_message(replace("asterisk_options", "OPTIONS", "X-FOO.BAR_1").replace(b"53716 OPTIONS", b"53716 X-FOO.BAR_1"))
    assert m.method == "X-FOO.BAR_1"


def test_lf_only_line_endings_and_no_content_length_take_the_rest_of_the_datagram():
    data = fixture("lenient_lf_message_no_length")
    assert b"\r\n" not in data.split(b"\n\n")[0] and b"Content-Length" not in data
    m = parse_message(data)
    assert m.method == "MESSAGE" and m.body.startswith(b"Hello, Bob")


def test_leading_crlf_before_the_start_line_is_ignored():
    # RFC 3261 §7.5: implementations should ignore CRLFs preceding the start line.
    assert parse_message(b"\r\n\r\n" + fixture("asterisk_bye")).method == "BYE"


def test_header_names_are_case_insensitive():
    m = parse_message(replace("asterisk_bye", "Call-ID:", "cALL-iD:"))
    assert m.call_id == "1_3186024718@10.0.0.31" and b"Call-ID: 1_3186" in m.to_bytes()


# --- bodies (RFC 3261 §18.3, §20.14) ----------------------------------------------------------


def test_udp_body_longer_than_content_length_is_truncated():
    m = parse_message(fixture("sipp_uac_invite") + b"trailing garbage")
    assert m.body == parse_message(fixture("sipp_uac_invite")).body and b"garbage" not in m.body


def test_body_shorter_than_content_length_is_400():
    err = rejected(fixture("sipp_uac_invite")[:-10])
    assert err.status == 400 and "Content-Length" in err.reason


@pytest.mark.parametrize("value", ["abc", "-1", "²", "1 2"])
def test_bad_content_length_is_400(value):
    err = rejected(replace("asterisk_bye", "Max-Forwards: 70", f"Content-Length: {value}"))
    assert err.status == 400 and "Content-Length" in err.reason


def test_body_without_content_length_is_written_with_one():
    m = Request("MESSAGE", "sip:bob@pbx.example", Headers([("Call-ID", "x")]), b"hi")
    assert m.to_bytes().endswith(b"Content-Length: 2\r\n\r\nhi")
    m.headers.add("Content-Length", "999")  # a stale value is never written
    assert m.to_bytes().count(b"Content-Length") == 1 and b"999" not in m.to_bytes()


# --- what we refuse, with the status to answer (style §4) ----------------------------------


@pytest.mark.parametrize("header", ["To", "From", "CSeq", "Call-ID", "Via"])
def test_missing_mandatory_header_is_400_naming_it(header):
    # RFC 3261 §8.1.1: every request carries these.
    data = b"\r\n".join(
        line for line in fixture("asterisk_bye").split(b"\r\n") if not line.lower().startswith(header.lower().encode() + b":"))
    err = rejected(data)
    assert (err.status, err.reason) == (400, f"Missing Header: {header}")


def test_missing_max_forwards_is_tolerated():
    data = b"\r\n".join(line for line in fixture("asterisk_bye").split(b"\r\n") if not line.startswith(b"Max-Forwards"))
    assert parse_message(data).headers.get("Max-Forwards") is None


def test_cseq_method_must_match_the_request_method():
    err = rejected(replace("asterisk_bye", "CSeq: 14921 BYE", "CSeq: 14921 INVITE"))
    assert err.status == 400 and "CSeq" in err.reason


@pytest.mark.parametrize(
    "old, new",
    [("BYE sip:bob@10.0.0.31:5062 SIP/2.0", "BYE sip:bob@10.0.0.31:5062 SIP/3.0"),
     ("BYE sip:bob@10.0.0.31:5062 SIP/2.0", "BYE sip:bob@10.0.0.31:5062 SIP/1.0")],
)
def test_bad_sip_version_is_505(old, new):
    assert rejected(replace("asterisk_bye", old, new)).status == 505


def test_bad_response_version_is_505():
    assert rejected(replace("proxy_180_ringing", "SIP/2.0 180", "SIP/3.0 180")).status == 505


def test_oversize_is_513():
    data = replace("asterisk_bye", "Max-Forwards: 70", "X-Pad: " + "a" * MAX_MESSAGE_SIZE)
    assert rejected(data).status == 513


def test_header_flood_is_400():
    data = replace("asterisk_bye", "Max-Forwards: 70\r\n", "X-Junk: 1\r\n" * (MAX_HEADERS + 1))
    err = rejected(data)
    assert err.status == 400 and "Too Many Headers" in err.reason


def test_unsupported_uri_scheme_is_416():
    assert rejected(replace("asterisk_bye", "BYE sip:", "BYE http:")).status == 416


@pytest.mark.parametrize(
    "old, new, word",
    [("CSeq: 14921 BYE", "CSeq: ² BYE", "CSeq"),
     ("Max-Forwards: 70", "Max-Forwards: ²", "Max-Forwards"),
     ("Max-Forwards: 70", "Max-Forwards: 256", "Max-Forwards"),
     ("Via: SIP/2.0/UDP 192.168.1.10:5060", "Via: SIP/2.0/UDP 192.168.1.10:²", "Via"),
     ("From: <sip:441632960000@192.168.1.10>", "From: <sip:441632960000@192.168.1.10", "From"),
     ("User-Agent: Asterisk", "User Agent Asterisk", "Bad Header")],
)
def test_bad_header_values_are_400_naming_the_header(old, new, word):
    err = rejected(replace("asterisk_bye", old, new))
    assert err.status == 400 and word in err.reason


@pytest.mark.parametrize("data", [b"", b"\r\n\r\n", b"INVITE\r\n\r\n", b"SIP/2.0 abc OK\r\n\r\n", b"SIP/2.0 999 X\r\n\r\n"])
def test_garbage_start_lines_are_400(data):
    assert rejected(data).status == 400


# --- Headers ---------------------------------------------------------------------------------


def test_headers_multimap():
    h = Headers([("v", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("call-id", "c1"), ("X-Thing", "1")])
    assert "Via" in h and "VIA" in h and "v" in h and "Route" not in h and 5 not in h
    assert h.get("i") == "c1" and h.get("Call-ID") == "c1" and h.get("Route") is None
    h.prepend("Via", "SIP/2.0/UDP b;branch=z9hG4bK2")
    h.add("x-thing", "2")
    assert h.get("Via").endswith("z9hG4bK2") and h.get_all("X-Thing") == ["1", "2"]
    h.set("X-Thing", "3")
    assert h.get_all("X-Thing") == ["3"]
    copy = h.copy()
    copy.remove("via")
    assert "Via" not in copy and len(h.get_all("Via")) == 2
    assert [n for n, _ in h.items()] == ["Via", "Via", "Call-ID", "X-Thing"]


def test_get_all_splits_list_headers_only():
    h = Headers([("Contact", '"Smith, John" <sip:j@a.example>;q=0.5, <sip:j@b.example>'),
                 ("WWW-Authenticate", 'Digest realm="a", nonce="b"'),
                 ("Supported", "timer,, replaces")])
    assert h.get_all("Contact") == ['"Smith, John" <sip:j@a.example>;q=0.5', "<sip:j@b.example>"]
    assert h.get_all("WWW-Authenticate") == ['Digest realm="a", nonce="b"']
    assert h.get_all("Supported") == ["timer", "replaces"]


# --- make_response (RFC 3261 §8.2.6.2) ------------------------------------------------------


def test_make_response_copies_the_dialog_and_transaction_headers():
    request = parse_message(fixture("carrier_invite_compact_folded"))
    response = make_response(request, 180, to_tag="b2b-xyz", headers=[("Contact", "<sip:b2bua@203.0.113.1>")])
    assert (response.status, response.reason) == (180, "Ringing")
    assert response.headers.get_all("Via") == request.headers.get_all("Via")  # all, in order
    assert response.headers.get("From") == request.headers.get("From")
    assert response.call_id == request.call_id and response.cseq == (102, "INVITE")
    assert response.to_tag == "b2b-xyz" and response.headers.get("Contact") == "<sip:b2bua@203.0.113.1>"
    assert "Record-Route" not in response.headers and "Allow" not in response.headers
    again = parse_message(response.to_bytes())
    assert again.to_tag == "b2b-xyz" and [v.branch for v in again.via] == [v.branch for v in request.via]


def test_make_response_keeps_an_existing_to_tag_and_100_has_none():
    request = parse_message(fixture("yealink_invite_hold"))  # a re-INVITE: To already tagged
    assert make_response(request, 200, to_tag="other").to_tag == "b2b-7f3a9c"
    fresh = parse_message(fixture("sipp_uac_invite"))
    trying = make_response(fresh, 100, to_tag="t")
    assert trying.to_tag is None and trying.reason == "Trying"  # §8.2.6.1: 100 has no tag


def test_make_response_copies_timestamp_into_100():
    request = parse_message(fixture("cisco_gateway_invite"))
    assert make_response(request, 100).headers.get("Timestamp") == "1714990502"  # §8.2.6.1
    assert make_response(request, 486, "Busy Here").reason == "Busy Here"


# --- StreamFramer (RFC 3261 §18.3, RFC 5626 §3.5.1) -----------------------------------------


def test_framer_cuts_pipelined_messages_fed_byte_by_byte():
    stream = fixture("baresip_invite") + b"\r\n\r\n" + fixture("carrier_invite_compact_folded") + fixture("asterisk_bye")
    framer = StreamFramer()
    out = []
    for i in range(len(stream)):
        out += framer.feed(stream[i : i + 1])
    assert out == [fixture("baresip_invite"), fixture("carrier_invite_compact_folded"), fixture("asterisk_bye")]
    assert framer.buffered == 0 and framer.pings == 1
    assert [parse_message(m).method for m in out] == ["INVITE", "INVITE", "BYE"]


def test_framer_swallows_keepalives():
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [] and framer.feed(b"\r\n\r\n") == []
    assert framer.pings == 2 and framer.buffered == 0


def test_framer_waits_for_the_whole_body():
    data = fixture("sipp_uac_invite")
    framer = StreamFramer()
    assert framer.feed(data[:-1]) == [] and framer.buffered == len(data) - 1
    assert framer.feed(data[-1:]) == [data]


def test_framer_accepts_lf_only_heads():
    data = b"OPTIONS sip:a@b SIP/2.0\nl: 3\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\n\nabcOPTIONS"
    framer = StreamFramer()
    assert framer.feed(data) == [data[:-7]]
    assert framer.buffered == 7


def test_framer_bounds_its_buffer():
    framer = StreamFramer()
    with pytest.raises(SipParseError) as err:
        framer.feed(b"INVITE sip:x SIP/2.0\r\n" + b"X-Junk: y\r\n" * (MAX_MESSAGE_SIZE // 10))
    assert err.value.status == 513
    with pytest.raises(SipParseError) as err:
        StreamFramer().feed(b"INVITE sip:x SIP/2.0\r\nContent-Length: 999999\r\n\r\n")
    assert err.value.status == 513
    with pytest.raises(SipParseError) as err:
        StreamFramer().feed(b"INVITE sip:x SIP/2.0\r\nContent-Length: x\r\n\r\n")
    assert err.value.status == 400


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_raise_only_sip_parse_error(data):
    try:
        parse_message(data)
    except SipParseError as err:
        assert err.status in (400, 413, 416, 420, 505, 513) and err.reason


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NAMES), st.integers(0, 1500), st.binary(max_size=12))
def test_mutated_fixtures_raise_only_sip_parse_error(name, at, junk):
    data = fixture(name)
    data = data[:at] + junk + data[at + len(junk) :]
    try:
        m = parse_message(data)
    except SipParseError:
        return
    # Whatever parses is usable: the fields the B2BUA reads do not raise.
    m.call_id, m.cseq, m.via, m.branch, m.from_tag, m.to_tag
    assert parse_message(m.to_bytes()).to_bytes() == m.to_bytes()


_token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1, max_size=16)
_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30)


@st.composite
def requests(draw):
    method = draw(_token)
    headers = Headers([
        ("Via", f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP']))} 192.0.2.{draw(st.integers(1, 254))}:5060;branch=z9hG4bK{draw(st.integers(0, 10**9))}"),
        ("From", f"<sip:{draw(st.from_regex(r'[a-z0-9]{1,8}', fullmatch=True))}@example.com>;tag={draw(st.integers(0, 10**6))}"),
        ("To", "<sip:bob@example.com>"),
        ("Call-ID", draw(_value)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
    ])
    for name, value in draw(st.lists(st.tuples(st.sampled_from(["X-A", "Subject", "User-Agent", "s", "X-Long-Name"]),
                                               _value), max_size=5)):
        headers.add(name, value)
    body = draw(st.binary(max_size=200))
    return Request(method, f"sip:{draw(st.from_regex(r'[a-z0-9+]{1,10}', fullmatch=True))}@example.com", headers, body)


@settings(max_examples=300, deadline=None)
@given(requests())
def test_build_parse_build_is_stable(request):
    wire = request.to_bytes()
    parsed = parse_message(wire)
    assert parsed.to_bytes() == wire
    assert (parsed.method, parsed.uri, parsed.body) == (request.method, request.uri, request.body)
    assert fields(parsed) == fields(request)


@settings(max_examples=200, deadline=None)
@given(requests(), st.integers(100, 699), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20))
def test_response_build_parse_build_is_stable(request, status, reason):
    response = make_response(request, status, reason.strip() or "X", to_tag="t1")
    wire = response.to_bytes()
    parsed = parse_message(wire)
    assert parsed.to_bytes() == wire and parsed.status == status
