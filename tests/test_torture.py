"""RFC 4475 / RFC 5118 torture messages: the valid ones parse, the invalid ones are refused.

What each bad message gets is its SipParseError status: the server answers a request
with it (400/505, the reason naming the fault) and drops a bad response.
"""

import pytest

from b2bua.headers import parse_name_addr, parse_uri
from b2bua.message import Request, Response, SipParseError, parse_message
from tests.samples.torture import INVALID, SDP150, VALID


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_torture_message_parses(name):
    message = parse_message(VALID[name])
    assert message.call_id
    message.to_bytes()


def test_wsinv_reads_through_folding_and_odd_spacing():
    m = parse_message(VALID["wsinv"])
    assert isinstance(m, Request) and m.method == "INVITE"
    assert m.cseq == (9, "INVITE")
    assert m.headers.get("Max-Forwards") == "0068"
    assert m.to_tag == "1918181833n" and m.from_tag == "98asjd8"
    assert [v.host for v in m.via] == ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    assert m.via[1].branch == "z9hG4bK9ikj8" and m.via[2].branch == "z9hG4bK30239"
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.body == SDP150.encode()
    assert parse_name_addr(m.headers.get("Contact")).display == 'Quoted string ""'


def test_escaped_uris_keep_their_escapes():
    m = parse_message(VALID["esc01"])
    assert parse_uri(m.uri).user == "sips%3Auser%40example.com"


def test_percent_method_is_an_unknown_method_not_register():
    m = parse_message(VALID["esc02"])
    assert m.method == "RE%47IST%45R"
    assert len(m.headers.get_all("Contact")) == 2  # C%6Fntact is another header


def test_longreq_keeps_all_34_vias():
    m = parse_message(VALID["longreq"])
    assert len(m.via) == 34 and m.via[-1].received == "192.0.2.5"


def test_trailing_octets_after_content_length_are_ignored():
    m = parse_message(VALID["dblreq"])
    assert m.method == "REGISTER" and m.body == b""


def test_utf8_and_empty_reason_phrases():
    assert isinstance(parse_message(VALID["unreason"]), Response)
    assert parse_message(VALID["noreason"]).reason == ""


def test_ipv6_references():
    assert parse_uri(parse_message(VALID["port-unambiguous"]).uri).port == 5070
    via = parse_message(VALID["ipv6-via"]).via[0]
    assert via.host == "2001:db8::9:1" and via.received == "[2001:db8::9:255]"


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_torture_message_is_refused_with_its_status(name):
    status, data = INVALID[name]
    with pytest.raises(SipParseError) as err:
        parse_message(data)
    assert err.value.status == status, err.value.reason
    assert err.value.reason  # says what is wrong
