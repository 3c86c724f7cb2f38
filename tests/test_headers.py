"""Header values: URIs, name-addr, Via, CSeq (RFC 3261 §19.1, §20, §25.1).

Each test is a value as phones and carriers write it and what the B2BUA must read out
of it; the properties at the end state that str() and parse agree.
"""

import pytest
from hypothesis import given, strategies as st

from b2bua.headers import NameAddr, SipUri, Via, parse_cseq, parse_name_addr, parse_uri, parse_via, split_quoted


# --- SIP URIs (RFC 3261 §19.1.1) -------------------------------------------------------


def test_uri_with_user_port_params_and_headers():
    uri = parse_uri("sip:alice:secret@atlanta.example.com:5061;transport=TCP;lr?subject=project%20x")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == ("sip", "alice", "secret", "atlanta.example.com", 5061)
    assert uri.params == {"transport": "TCP", "lr": None}
    assert uri.headers == "subject=project%20x"
    assert str(uri) == "sip:alice:secret@atlanta.example.com:5061;transport=TCP;lr?subject=project%20x"


def test_uri_scheme_and_param_names_are_case_insensitive():
    # RFC 3261 §19.1.4: scheme and parameter names compare case-insensitively.
    uri = parse_uri("SIP:bob@biloxi.example;Transport=udp")
    assert uri.scheme == "sip" and uri.params == {"transport": "udp"}


@pytest.mark.parametrize(
    "text, host, port",
    [
        ("sip:201@[2001:db8::1]:5060", "2001:db8::1", 5060),
        ("sip:[2001:db8::10]", "2001:db8::10", None),
        ("sips:bob@[::ffff:192.0.2.1]:5061;transport=tls", "::ffff:192.0.2.1", 5061),
        ("sip:192.0.2.4", "192.0.2.4", None),
    ],
)
def test_ipv6_and_ipv4_hosts(text, host, port):
    uri = parse_uri(text)
    assert (uri.host, uri.port) == (host, port)
    assert str(uri) == text


def test_user_part_may_hold_semicolons_and_plus():
    # RFC 4475 §3.1.1.13 style: user parameters sit before the @, not URI parameters.
    uri = parse_uri("sip:+441632960000;npdi@203.0.113.1;user=phone")
    assert uri.user == "+441632960000;npdi" and uri.params == {"user": "phone"}


def test_tel_uri_keeps_its_text():
    uri = parse_uri("tel:+447700900123;phone-context=example.com")
    assert uri.scheme == "tel" and str(uri) == "tel:+447700900123;phone-context=example.com"


@pytest.mark.parametrize(
    "text",
    ["", "alice@example.com", "sip:", "sip:@host", "sip:host:99999", "sip:host:0", "sip:2001:db8::1",
     "sip:[2001:db8::1", "sip:host:port", "sip:bad host", "sip:h:²"],
)
def test_bad_uris_raise_value_error(text):
    with pytest.raises(ValueError):
        parse_uri(text)


# --- name-addr (RFC 3261 §20.10, §20.20, §25.1) -----------------------------------------


def test_quoted_display_with_comma_and_angle_brackets():
    na = parse_name_addr('"Smith, <John>" <sip:j@a.example>;tag=abc;x-ext')
    assert na.display == "Smith, <John>" and na.uri.user == "j" and na.tag == "abc"
    assert na.params == {"tag": "abc", "x-ext": None}


def test_unquoted_display_tokens():
    na = parse_name_addr("Alice Smith <sip:alice@atlanta.example>;tag=1")
    assert na.display == "Alice Smith" and na.tag == "1"


def test_addr_spec_parameters_belong_to_the_header():
    # RFC 3261 §20.10: without <>, ;tag is a header parameter, not a URI parameter.
    na = parse_name_addr("sip:201@[2001:db8::1];tag=xyz")
    assert na.display is None and na.tag == "xyz" and na.uri.params == {}


def test_uri_params_inside_brackets_stay_on_the_uri():
    na = parse_name_addr("<sip:+447700900123@198.51.100.7;user=phone>;tag=as7d3e")
    assert na.uri.params == {"user": "phone"} and na.params == {"tag": "as7d3e"}


def test_escaped_quotes_round_trip():
    na = parse_name_addr(r'"A \"B\" \\ C" <sip:a@b.example>;tag=1')
    assert na.display == 'A "B" \\ C'
    assert parse_name_addr(str(na)) == na


@pytest.mark.parametrize("text", ['"unclosed <sip:a@b>', "<sip:a@b", "Bell, Alexander <sip:a@b>", ""])
def test_bad_name_addrs_raise_value_error(text):
    with pytest.raises(ValueError):
        parse_name_addr(text)


# --- Via (RFC 3261 §20.42, RFC 3581) -----------------------------------------------------


def test_via_with_rport_received_and_branch():
    via = parse_via("SIP/2.0/UDP 10.0.0.31:5062;branch=z9hG4bK1807186151;received=203.0.113.9;rport=40112")
    assert (via.transport, via.host, via.port) == ("UDP", "10.0.0.31", 5062)
    assert via.branch == "z9hG4bK1807186151" and via.received == "203.0.113.9" and via.rport == 40112


def test_via_empty_rport_and_lws_around_slashes():
    via = parse_via("SIP / 2.0 / tcp  pc33.atlanta.example ;rport; branch=z9hG4bKx")
    assert via.transport == "TCP" and via.host == "pc33.atlanta.example" and via.port is None
    assert via.has_rport and via.rport is None and via.branch == "z9hG4bKx"
    assert via.sent_by == ("pc33.atlanta.example", 5060)


def test_ipv6_via_round_trips():
    text = "SIP/2.0/UDP [2001:db8::20]:5060;branch=z9hG4bK.Nq3sSA4Pb;rport"
    via = parse_via(text)
    assert via.host == "2001:db8::20" and str(via) == text


@pytest.mark.parametrize("text", ["garbage", "SIP/2.0 host", "SIP/2.0/UDP", "SIP/2.0/UDP host:x", "SIP/2.0/UDP 2001:db8::1"])
def test_bad_vias_raise_value_error(text):
    with pytest.raises(ValueError):
        parse_via(text)


# --- CSeq (RFC 3261 §20.16) ----------------------------------------------------------------


def test_cseq():
    assert parse_cseq("4711 INVITE") == (4711, "INVITE")
    assert parse_cseq("  1\tOPTIONS ") == (1, "OPTIONS")


@pytest.mark.parametrize("text", ["", "INVITE", "1", "abc INVITE", "-1 INVITE", "2147483648 INVITE", "1 INVITE x", "² BYE"])
def test_bad_cseq(text):
    # RFC 3261 §8.1.1.5: the sequence number is below 2**31.
    with pytest.raises(ValueError):
        parse_cseq(text)


# --- list splitting (RFC 3261 §7.3.1) ----------------------------------------------------


def test_split_respects_quotes_and_angle_brackets():
    text = '"a,b" <sip:x@y;p=1,2>;q=0.5, <sip:z@w>'
    assert split_quoted(text, ",") == ['"a,b" <sip:x@y;p=1,2>;q=0.5', " <sip:z@w>"]


# --- properties ---------------------------------------------------------------------------

_token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=12).filter(lambda s: s[0].isalnum())
_host = st.one_of(
    st.builds(lambda a, b: f"{a}.{b}", _token, _token),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_params = st.dictionaries(_token, st.one_of(st.none(), _token), max_size=3)
_uris = st.builds(
    SipUri,
    scheme=st.sampled_from(["sip", "sips"]),
    user=st.one_of(st.none(), _token),
    host=_host,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    params=_params,
)


@given(_uris)
def test_uri_str_parse_round_trip(uri):
    assert parse_uri(str(uri)) == uri


@given(_uris, st.one_of(st.none(), st.text(min_size=1, max_size=20).filter(lambda s: s.isprintable())), _params)
def test_name_addr_str_parse_round_trip(uri, display, params):
    na = NameAddr(display, uri, params)
    assert parse_name_addr(str(na)) == na


@given(st.sampled_from(["UDP", "TCP", "TLS"]), _host, st.one_of(st.none(), st.integers(1, 65535)), _params)
def test_via_str_parse_round_trip(transport, host, port, params):
    via = Via(transport, host, port, params)
    assert parse_via(str(via)) == via
