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


# ---------------------------------------------------------------------------
# The same messages as files (tests/fixtures/torture/, typed out from RFC 4475 and
# RFC 5118, with expected.toml saying what each gets), and a running server fed all of them.

import asyncio  # noqa: E402
import pathlib  # noqa: E402
import socket  # noqa: E402
import tomllib  # noqa: E402

TORTURE = pathlib.Path(__file__).parent / "fixtures" / "torture"
EXPECTED = tomllib.loads((TORTURE / "expected.toml").read_text(encoding="utf-8"))


def torture(name: str) -> bytes:
    return (TORTURE / f"{name}.sip").read_bytes()


def test_every_torture_file_has_an_expectation_and_all_rfc_sections_are_there():
    files = {p.stem for p in TORTURE.glob("*.sip")}
    assert files == set(EXPECTED)
    rfc4475 = {v["rfc"].split()[2] for v in EXPECTED.values() if v["rfc"].startswith("RFC 4475")}
    assert rfc4475 == {f"§3.1.1.{i}" for i in range(1, 14)} | {f"§3.1.2.{i}" for i in range(1, 20)}
    assert len([v for v in EXPECTED.values() if v["rfc"].startswith("RFC 5118")]) == 12


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e["expect"] == "valid"))
def test_valid_torture_file_parses_and_round_trips(name):
    """A valid message parses; what we write back parses to the same fields."""
    m = parse_message(torture(name))
    assert m.call_id and m.via and m.cseq
    again = parse_message(m.to_bytes())
    assert (again.call_id, again.cseq, again.body) == (m.call_id, m.cseq, m.body)
    assert [str(v) for v in again.via] == [str(v) for v in m.via]


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e["expect"] == "invalid"))
def test_invalid_torture_file_gets_its_status(name):
    """An invalid message gets SipParseError with the RFC's status and a reason naming the fault."""
    with pytest.raises(SipParseError) as err:
        parse_message(torture(name))
    assert err.value.status == EXPECTED[name]["status"], err.value.reason
    assert err.value.reason and err.value.reason != "Bad Request"


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e["expect"] == "tolerated"))
def test_tolerated_torture_file_is_accepted_leniently(name):
    """Where the RFC lets a lenient parser accept, we accept and read the message sensibly."""
    m = parse_message(torture(name))
    assert isinstance(m, Request) and m.call_id
    assert parse_uri(m.uri).host  # the Request-URI still names a host


def test_file_wsinv_unfolds_compact_and_oddly_spaced_headers():
    m = parse_message(torture("wsinv"))
    assert m.method == "INVITE" and m.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert m.cseq == (9, "INVITE") and m.headers.get("Max-Forwards") == "0068"
    assert str(m.to.uri) == "sip:vivekg@chair-dnrc.example.com" and m.to_tag == "1918181833n"
    assert m.from_.display == 'J Rosenberg \\"' and m.from_tag == "98asjd8"  # quoted-pairs undone
    assert [(v.transport, v.host, v.branch) for v in m.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.headers.get("Subject") == ""  # "s :" is the compact Subject, empty
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert m.headers.get("Route") == "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"
    contact = parse_name_addr(m.headers.get("m"))
    assert contact.display == 'Quoted string ""' and contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert len(m.body) == 150 and m.body.startswith(b"v=0\r\no=mhandley")


def test_file_intmeth_takes_every_token_character_and_a_question_mark_in_the_user_part():
    m = parse_message(torture("intmeth"))
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.method == method and m.cseq == (139122385, method)
    uri = parse_uri(m.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*" and uri.headers is None
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)" and uri.host == "example.com"
    assert m.via[0].transport == "TCP" and m.via[0].branch == "z9hG4bK-.!%66*_+`'~"
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"  # quoted-pairs of control characters
    assert m.from_.display == "token1~` token2'+_ token3*%!.-" and m.from_tag == "_token~1'+`*%!-."
    assert m.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.headers.get("Max-Forwards") == "255"
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_file_esc01_keeps_escapes_and_reads_compact_forms():
    m = parse_message(torture("esc01"))
    assert parse_uri(m.uri).user == "sips%3Auser%40example.com" and parse_uri(m.uri).host == "example.net"
    assert m.to.uri.user == "%75se%72" and m.from_.uri.user == "I%20have%20spaces"
    assert m.call_id == "esc01.239409asdfakjkn23onasd0-3234"  # "i:" is Call-ID
    assert m.headers.get("Content-Type") == "application/sdp"  # "C:" is Content-Type
    contact = parse_name_addr(m.headers.get("Contact"))  # folded onto its second line
    assert contact.uri.user == "cal%6Cer" and contact.uri.params["n%61me"] == "v%61lue%25%34%31"


def test_file_escnull_and_esc02_keep_percent_octets_literal():
    m = parse_message(torture("escnull"))
    assert m.to.uri.user == "null-%00-null"
    assert [parse_name_addr(c).uri.user for c in m.headers.get_all("Contact")] == ["%00", "%00%00"]
    m = parse_message(torture("esc02"))
    assert m.method == "RE%47IST%45R" and m.cseq == (29344, "RE%47IST%45R")  # not REGISTER
    assert m.to.display == "%Z%45" and m.via[0].branch == "z9hG4bK209%fzsnel234"
    assert len(m.headers.get_all("Contact")) == 2 and m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_file_lwsdisp_semiuri_transports():
    assert parse_message(torture("lwsdisp")).from_.display == "caller"
    m = parse_message(torture("semiuri"))
    assert parse_uri(m.uri).user == "user;par=u%40example.net" and parse_uri(m.uri).host == "example.com"
    assert m.headers.get_all("Accept") == ["application/sdp", "application/pkcs7-mime", "multipart/mixed",
                                           "multipart/signed", "message/sip", "message/sipfrag"]
    m = parse_message(torture("transports"))
    assert [v.transport for v in m.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_file_longreq_reads_34_vias_in_every_spelling_and_long_values():
    m = parse_message(torture("longreq"))
    assert len(m.via) == 34 and [v.host for v in m.via[:3]] == ["sip33.example.com", "sip32.example.com", "sip31.example.com"]
    assert m.via[-1].received == "192.0.2.5" and m.via[-1].branch == "very" + "long" * 50 + "branchvalue"
    assert m.to.display == "I have a user name of " + "extreme" * 10 + " proportion" and m.to.uri.port == 6000
    assert m.from_tag == "12" + "982" * 50 + "424"
    assert m.call_id == "longreq.one" + "really" * 20 + "longcallid"
    assert m.headers.get("Unknown-" + "Long" * 20 + "-Name").startswith("unknown-" + "long" * 20 + "-value;")
    assert len(m.body) == 150


def test_file_dblreq_ignores_the_second_request_in_the_datagram():
    m = parse_message(torture("dblreq"))
    assert m.method == "REGISTER" and m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412" and m.body == b""


def test_file_mpart01_keeps_the_binary_body_intact():
    data = torture("mpart01")
    m = parse_message(data)
    assert m.method == "MESSAGE" and len(m.body) == int(m.headers.get("Content-Length"))
    assert m.body == data[data.index(b"\r\n\r\n") + 4:] and b"\x00" in m.body
    assert m.headers.get("Content-Type") == "multipart/mixed;boundary=7a9cbec02ceef655"


def test_file_unreason_and_noreason():
    m = parse_message(torture("unreason"))
    assert m.status == 200 and m.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    m = parse_message(torture("noreason"))
    assert m.status == 100 and m.reason == ""


def test_file_rfc5118_ipv6_references():
    assert parse_uri(parse_message(torture("ipv6-good")).uri).host == "2001:db8::10"
    ambiguous = parse_uri(parse_message(torture("port-ambiguous")).uri)
    assert (ambiguous.host, ambiguous.port) == ("2001:db8::10:5070", None)  # inside [], no port
    unambiguous = parse_uri(parse_message(torture("port-unambiguous")).uri)
    assert (unambiguous.host, unambiguous.port) == ("2001:db8::10", 5070)
    assert parse_message(torture("via-received-param-with-delim")).via[0].received == "[2001:db8::9:255]"
    nodelim = parse_message(torture("via-received-param-no-delim")).via[0]
    assert nodelim.received == "2001:db8::9:255" and nodelim.branch == "z9hG4bKas3"
    assert [(v.host, v.port, v.received) for v in parse_message(torture("mult-ip-in-header")).via] == [
        ("2001:db8::9:1", 6050, None), ("192.0.2.1", None, None), ("2001:db8::9:255", None, "192.0.2.200")]
    mapped = parse_message(torture("ipv4-mapped-ipv6"))
    assert [(v.host, v.port) for v in mapped.via] == [("::ffff:192.0.2.10", 19823), ("::ffff:192.0.2.2", None)]
    assert b"c=IN IP6 2001:db8::20" in parse_message(torture("ipv6-in-sdp")).body
    assert parse_uri(parse_message(torture("ipv6-correct-abnf-2-colons")).uri).host == "2001:db8::192.0.2.1"


def test_file_regbadct_contact_with_headers_outside_angle_brackets_is_400():
    with pytest.raises(SipParseError) as err:
        parse_message(torture("regbadct"))
    assert (err.value.status, err.value.reason) == (400, "Bad Header: Contact")


# -- a running server, in process: every torture message over UDP, then OPTIONS still gets 200


def _server_config(tmp_path):
    from b2bua.config import load_file
    from tests.e2e.peers import Ports

    ports = Ports.allocate(rtp_count=8)
    path = tmp_path / "flows.toml"
    path.write_text(f'''
[server]
listen = "{ports.listen}"
rtp_ports = "{ports.rtp_ports}"
recordings_dir = "recordings"
[organisation]
name = "Torture"
[[trunks]]
name = "carrier"
sources = ["127.0.0.2"]
uri = "sip:127.0.0.2:5080"
[[numbers]]
ddi = "441632960000"
to = "user:alice"
[[users]]
name = "alice"
extension = "201"
password = "alice-secret"
''')
    return load_file(path)


async def _exchange(sock: socket.socket, data: bytes, addr, wait: float) -> list[bytes]:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, data, addr)
    replies = []
    while True:
        try:
            reply, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), wait)
        except asyncio.TimeoutError:
            return replies
        replies.append(reply)
        wait = 0.05


async def test_running_server_answers_every_torture_message_and_keeps_serving(tmp_path, caplog):
    """Each invalid request gets its status (400/505); bad responses get nothing; valid ones get
    whatever the server answers them with (403 from a stranger, 405 for odd methods...); and after
    all 44 files plus garbage, an OPTIONS still gets 200 and no exception was logged."""
    from b2bua.server import Server

    config = _server_config(tmp_path)
    server = Server(config)
    task = asyncio.create_task(server.run())
    addr = (config.server.host, config.server.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        for _ in range(100):
            if getattr(server, "transport", None) is not None and server.stopping is not None:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        for name, expected in sorted(EXPECTED.items()):
            wait = 1.0 if expected["expect"] == "invalid" and not torture(name).startswith(b"SIP/") else 0.1
            replies = await _exchange(sock, torture(name), addr, wait)
            finals = [r for r in replies if not r.startswith(b"SIP/2.0 1")]
            data = torture(name)
            if data.startswith(b"SIP/"):
                assert replies == [], f"{name}: a response is never answered"
            elif expected["expect"] == "invalid":
                assert finals and finals[0].startswith(f"SIP/2.0 {expected['status']} ".encode()), (name, finals)
                assert b"Via:" in finals[0] or b"v:" in finals[0], name
            else:
                # Valid requests are processed; their answers go where their Via says
                # (RFC 3261 §18.2.2: the source IP, the sent-by port), not to this socket.
                assert all(not f.startswith(b"SIP/2.0 400 ") for f in finals), (name, finals)
        for junk in (b"\x00\xff" * 3000, b"INVITE sip:x SIP/2.0\r\n" + b"X: y\r\n" * 5000, b"\r\n\r\n", b"SIP/2.0"):
            await _exchange(sock, junk, addr, 0.1)
        options = (
            f"OPTIONS sip:{addr[0]}:{addr[1]} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sock.getsockname()[1]};branch=z9hG4bKalive9\r\n"
            f"From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:{addr[0]}>\r\nCall-ID: alive-after-torture\r\nCSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        replies = await _exchange(sock, options, addr, 2.0)
        assert replies and replies[0].startswith(b"SIP/2.0 200 "), replies
        assert not task.done()
        assert "internal-error" not in caplog.text and "Traceback" not in caplog.text
    finally:
        sock.close()
        server.stopping.set()
        assert await asyncio.wait_for(task, 5) == 0
