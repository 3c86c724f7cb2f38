"""RFC 3261 §12 dialogs: built from real messages, each rule in its own test."""

from __future__ import annotations

import pytest

from b2bua.dialog import CONFIRMED, EARLY, Dialog, copy_record_route, dialog_forming
from b2bua.message import Request, Response, make_response, parse_message

VIA = "SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKdlg0001;rport"

# A call reaching us (we are the UAS) through two record-routing proxies.
INVITE_IN = (
    b"INVITE sip:b2bua@198.51.100.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bKp2\r\n"
    b"Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKa1\r\n"
    b"Record-Route: <sip:p2.example.com;lr>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b"Max-Forwards: 68\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

# A call we place (we are the UAC) and its 200 through the same two proxies.
INVITE_OUT = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKout1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: <sip:b2bua@198.51.100.1>;tag=ours-1\r\n"
    b"Call-ID: leg-b-7@198.51.100.1\r\n"
    b"CSeq: 10 INVITE\r\n"
    b"Contact: <sip:b2bua@198.51.100.1:5060>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
OK_OUT = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKout1;rport=5060\r\n"
    b"Record-Route: <sip:p2.example.com;lr>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=bob-9\r\n"
    b"From: <sip:b2bua@198.51.100.1>;tag=ours-1\r\n"
    b"Call-ID: leg-b-7@198.51.100.1\r\n"
    b"CSeq: 10 INVITE\r\n"
    b"Contact: <sip:bob@198.51.100.20:5062>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def msg(data: bytes) -> Request | Response:
    return parse_message(data)


def uas() -> Dialog:
    return Dialog.from_uas(msg(INVITE_IN), "b2b-tag", "<sip:b2bua@198.51.100.1:5060>")


def uac() -> Dialog:
    return Dialog.from_uac(msg(INVITE_OUT), msg(OK_OUT))


def in_dialog(method: str, cseq: int, contact: bytes = b"") -> Request:
    """A request the caller sends inside the UAS dialog."""
    return msg(
        f"{method} sip:b2bua@198.51.100.1:5060 SIP/2.0\r\n".encode()
        + b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKin" + str(cseq).encode() + b"\r\n"
        + b"To: Bob <sip:bob@biloxi.example.com>;tag=b2b-tag\r\n"
        + b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
        + b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
        + f"CSeq: {cseq} {method}\r\n".encode()
        + contact
        + b"Content-Length: 0\r\n"
        + b"\r\n"
    )


# ---------------------------------------------------------------- state (§12.1)


def test_uas_dialog_state_from_the_request():
    d = uas()
    assert d.id == ("a84b4c76e66710@pc33.atlanta.example.com", "b2b-tag", "1928301774")
    assert d.remote_seq == 314159
    assert d.local_seq is None  # §12.1.1: empty
    assert d.local_uri == "sip:bob@biloxi.example.com"
    assert d.remote_uri == "sip:alice@atlanta.example.com"
    assert d.remote_target == "sip:alice@192.0.2.10:5060"
    # §12.1.1: the UAS keeps the Record-Route order
    assert d.route_set == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert d.secure is False
    assert d.state == CONFIRMED


def test_uac_dialog_state_from_the_2xx():
    d = uac()
    assert d.id == ("leg-b-7@198.51.100.1", "ours-1", "bob-9")
    assert d.local_seq == 10
    assert d.remote_seq is None  # §12.1.2: empty
    assert d.remote_target == "sip:bob@198.51.100.20:5062"
    # §12.1.2: the UAC reverses the Record-Route order
    assert d.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert d.state == CONFIRMED


def test_uac_dialog_from_tagged_provisional_is_early():
    ringing = OK_OUT.replace(b"200 OK", b"180 Ringing")
    d = Dialog.from_uac(msg(INVITE_OUT), msg(ringing))
    assert d.state == EARLY
    d.target_refresh(msg(OK_OUT))
    assert d.state == CONFIRMED


def test_secure_flag_for_sips_over_tls():
    sips = INVITE_IN.replace(b"INVITE sip:b2bua", b"INVITE sips:b2bua").replace(
        b"SIP/2.0/UDP p2.example.com", b"SIP/2.0/TLS p2.example.com"
    )
    assert Dialog.from_uas(msg(sips), "t", None).secure is True


# ---------------------------------------------------------------- requests (§12.2.1.1)


def test_loose_routing_request_goes_to_remote_target_with_route_set():
    d = uac()
    bye = d.create_request("BYE", VIA)
    assert bye.method == "BYE"
    assert bye.uri == "sip:bob@198.51.100.20:5062"
    assert bye.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert bye.from_tag == "ours-1" and bye.to_tag == "bob-9"
    assert bye.call_id == "leg-b-7@198.51.100.1"
    assert bye.cseq == (11, "BYE")
    assert bye.headers.get_all("Via") == [VIA]
    assert bye.headers.get("Max-Forwards") == "70"


def test_each_request_bumps_local_cseq():
    d = uac()
    assert d.create_request("INFO", VIA).cseq == (11, "INFO")
    assert d.create_request("BYE", VIA).cseq == (12, "BYE")
    assert d.local_seq == 12


def test_uas_first_request_starts_its_own_cseq():
    d = uas()
    bye = d.create_request("BYE", VIA)
    assert bye.cseq[1] == "BYE" and 0 < bye.cseq[0] < 2**31
    # the UAS's From is the request's To, with our tag; its To is the caller, with theirs
    assert bye.from_tag == "b2b-tag" and bye.to_tag == "1928301774"
    assert "sip:bob@biloxi.example.com" in bye.headers.get("From")
    assert "sip:alice@atlanta.example.com" in bye.headers.get("To")
    assert bye.uri == "sip:alice@192.0.2.10:5060"
    assert bye.headers.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]


def test_no_route_set_means_no_route_header():
    d = Dialog.from_uas(msg(INVITE_IN.replace(b"Record-Route", b"X-Not-Route")), "t", None)
    bye = d.create_request("BYE", VIA)
    assert bye.uri == "sip:alice@192.0.2.10:5060"
    assert bye.headers.get_all("Route") == []


def test_strict_routing_puts_first_route_in_request_uri():
    strict = OK_OUT.replace(b"<sip:p1.example.com;lr>", b"<sip:p1.example.com>")
    d = Dialog.from_uac(msg(INVITE_OUT), msg(strict))
    bye = d.create_request("BYE", VIA)
    # §12.2.1.1: first route (no lr) becomes the Request-URI; the rest, then the remote
    # target, become the Route header fields.
    assert bye.uri == "sip:p1.example.com"
    assert bye.headers.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:bob@198.51.100.20:5062>"]


# ---------------------------------------------------------------- Record-Route in responses (§12.1.1)


def test_dialog_forming_responses_copy_record_route_in_order_with_parameters():
    invite = msg(INVITE_IN.replace(b"<sip:p1.example.com;lr>", b"<sip:p1.example.com;lr;ftag=x;r2=on>, <sip:p0;lr>"))
    for status in (180, 183, 200):
        assert dialog_forming(invite, status, "ours")
        response = make_response(invite, status, to_tag="ours")
        copy_record_route(invite, response)
        assert response.headers.get_all("Record-Route") == [
            "<sip:p2.example.com;lr>", "<sip:p1.example.com;lr;ftag=x;r2=on>", "<sip:p0;lr>"]
        # a proxy reading our response back finds its own entry untouched
        again = parse_message(response.to_bytes())
        assert again.headers.get_all("Record-Route") == response.headers.get_all("Record-Route")


def test_responses_that_form_no_dialog_carry_no_record_route():
    invite = msg(INVITE_IN)
    assert not dialog_forming(invite, 100, "ours")  # 100 has no To tag (§8.2.6.1)
    assert not dialog_forming(invite, 180, None)  # untagged 1xx: no early dialog
    assert not dialog_forming(invite, 486, "ours")
    assert not dialog_forming(in_dialog("INVITE", 314160), 200, "b2b-tag")  # re-INVITE: the dialog exists


def test_target_refresh_request_carries_contact():
    d = uas()
    reinvite = d.create_request("INVITE", VIA, body=b"v=0\r\n", headers=[("Content-Type", "application/sdp")])
    assert reinvite.headers.get("Contact") == "<sip:b2bua@198.51.100.1:5060>"
    assert reinvite.headers.get("Content-Type") == "application/sdp"
    assert reinvite.body == b"v=0\r\n"
    assert d.create_request("BYE", VIA).headers.get("Contact") is None


def test_via_without_branch_gets_a_fresh_one():
    d = uac()
    bye = d.create_request("BYE", "SIP/2.0/UDP 198.51.100.1:5060;rport")
    assert bye.branch.startswith("z9hG4bK") and len(bye.branch) > 7


def test_ack_and_cancel_are_not_ordinary_requests():
    with pytest.raises(ValueError):
        uac().create_request("ACK", VIA)
    with pytest.raises(ValueError):
        uac().create_request("CANCEL", VIA)


# ---------------------------------------------------------------- ACK for 2xx (§13.2.2.4)


def test_ack_for_2xx_has_invite_cseq_and_new_branch():
    d = uac()
    ack = d.ack(10, "SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKack77;rport")
    assert ack.method == "ACK"
    assert ack.cseq == (10, "ACK")
    assert ack.branch == "z9hG4bKack77"  # not the INVITE's z9hG4bKout1
    assert ack.uri == "sip:bob@198.51.100.20:5062"
    assert ack.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert ack.to_tag == "bob-9" and ack.from_tag == "ours-1"
    assert d.local_seq == 10  # ACK does not consume a CSeq


# ---------------------------------------------------------------- receiving (§12.2.2)


def test_lower_cseq_is_rejected_with_500():
    d = uas()
    assert d.receive_request(in_dialog("BYE", 314158)) == 500


def test_higher_cseq_is_accepted_and_remembered():
    d = uas()
    assert d.receive_request(in_dialog("INFO", 314160)) is None
    assert d.remote_seq == 314160
    assert d.receive_request(in_dialog("INFO", 314159)) == 500


def test_empty_remote_seq_takes_the_first_request():
    d = uac()
    assert d.receive_request(in_dialog("BYE", 5)) is None
    assert d.remote_seq == 5


def test_ack_is_not_checked_against_remote_seq():
    d = uas()
    d.receive_request(in_dialog("INFO", 314160))
    assert d.receive_request(in_dialog("ACK", 314159)) is None
    assert d.remote_seq == 314160


def test_reinvite_refreshes_remote_target():
    d = uas()
    reinvite = in_dialog("INVITE", 314160, b"Contact: <sip:alice@192.0.2.99:5070>\r\n")
    assert d.receive_request(reinvite) is None
    assert d.remote_target == "sip:alice@192.0.2.99:5070"
    assert d.create_request("BYE", VIA).uri == "sip:alice@192.0.2.99:5070"


def test_update_refreshes_remote_target_but_info_does_not():
    d = uas()
    d.receive_request(in_dialog("INFO", 314160, b"Contact: <sip:alice@192.0.2.50>\r\n"))
    assert d.remote_target == "sip:alice@192.0.2.10:5060"
    d.receive_request(in_dialog("UPDATE", 314161, b"Contact: <sip:alice@192.0.2.51>\r\n"))
    assert d.remote_target == "sip:alice@192.0.2.51"


def test_2xx_to_our_reinvite_refreshes_remote_target():
    d = uac()
    d.create_request("INVITE", VIA)
    ok = OK_OUT.replace(b"10 INVITE", b"11 INVITE").replace(b"198.51.100.20:5062", b"198.51.100.21:5064")
    assert d.target_refresh(msg(ok)) is True
    assert d.remote_target == "sip:bob@198.51.100.21:5064"


def test_non_2xx_and_non_refresh_responses_leave_target_alone():
    d = uac()
    busy = OK_OUT.replace(b"200 OK", b"491 Request Pending").replace(b"198.51.100.20:5062", b"198.51.100.21")
    assert d.target_refresh(msg(busy)) is False
    bye_ok = OK_OUT.replace(b"10 INVITE", b"11 BYE").replace(b"198.51.100.20:5062", b"198.51.100.21")
    assert d.target_refresh(msg(bye_ok)) is False
    assert d.remote_target == "sip:bob@198.51.100.20:5062"
