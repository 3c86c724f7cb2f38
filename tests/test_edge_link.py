"""Behind the edge: the worker believes X-B2BUA-Source only from the edge's own socket.

The B2BUA core, transaction layer and registrar are the real ones (tests/test_b2bua.py's
harness); between the transaction layer and the core sits the worker's EdgeLink, as in
b2bua/server.py. Each test feeds bytes from a source and reads what went where.
"""

from __future__ import annotations

import secrets
from types import SimpleNamespace

import pytest

from b2bua.cluster.edge_link import DEST_HEADER, SENT_HEADER, SOURCE_HEADER, EdgeLink, parse_source
from b2bua.cluster.worker import STALE_INVITE_S, WorkerRole
from b2bua.config import load_file
from b2bua.message import Request, parse_message
from b2bua.peer import Peer
from tests.test_b2bua import ALICE_DESK, CONFIG, OFFER, STRANGER, TRUNK, Harness, answer_sdp, digest, respond

EDGE = Peer("udp", "192.0.2.50", 5060)
#: Same host as the edge, another port: on one host every process shares 127.0.0.1-like
#: addresses, so the port is part of the edge's identity.
EDGE_HOST_OTHER_PORT = Peer("udp", "192.0.2.50", 5080)
EDGE_OVER_TCP = Peer("tcp", "192.0.2.50", 5060)


class EdgeHarness(Harness):
    """The harness with the worker's edge link between the transaction layer and the core."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.link = EdgeLink(EDGE.host, EDGE.port)
        self.raw: list[tuple[bytes, Peer]] = []

    def send(self, text: str, peer: Peer) -> None:
        message = parse_message(text.replace("\n", "\r\n").replace("\r\r\n", "\r\n").encode())
        for event in self.txn.receive(message, peer, self.now):
            self.core.handle(self.link.translate(event), self.now)
        self._drain()

    def _drain(self) -> None:
        for data, peer in self.txn.outgoing():
            data, peer = self.link.outbound(data, peer)
            self.raw.append((data, peer))
            self.sent.append((parse_message(data), peer))

    def register_via_edge(self, user: str, password: str, phone: Peer, contact: str) -> None:
        call_id = secrets.token_hex(4)
        base = (
            f"REGISTER sip:pbx.test SIP/2.0\n"
            f"Via: SIP/2.0/UDP {EDGE.host}:{EDGE.port};branch=z9hG4bKedge{call_id}\n"
            f"Via: SIP/2.0/UDP {phone.host}:{phone.port};branch=z9hG4bK{call_id};rport={phone.port};received={phone.host}\n"
            f"From: <sip:{user}@pbx.test>;tag=r{call_id}\nTo: <sip:{user}@pbx.test>\n"
            f"Call-ID: {call_id}\nContact: <{contact}>\nExpires: 600\nMax-Forwards: 69\n"
            f"{SOURCE_HEADER}: {phone.transport} {phone.host} {phone.port}\n"
        )
        self.send(base + "CSeq: 1 REGISTER\nContent-Length: 0\n\n", EDGE)
        challenge = self.one(EDGE, 401)
        auth = digest(challenge.headers.get("WWW-Authenticate"), user, password, "REGISTER", "sip:pbx.test", "Authorization")
        second = base.replace("branch=z9hG4bK", "branch=z9hG4bKx") + f"CSeq: 2 REGISTER\n{auth}\nContent-Length: 0\n\n"
        self.send(second, EDGE)
        self.one(EDGE, 200)


def via_edge(text: str, source: str) -> str:
    """`text` as the edge passes it on: its Via on top, the source header at the end."""
    head, _, rest = text.partition("\n")
    body_start = rest.index("\n\n")
    return (f"{head}\nVia: SIP/2.0/UDP {EDGE.host}:{EDGE.port};branch=z9hG4bKedge{secrets.token_hex(3)}\n"
            f"{rest[:body_start]}\n{SOURCE_HEADER}: {source}{rest[body_start:]}")


def trunk_invite_claiming(source: str, sender: Peer) -> str:
    """An INVITE from `sender` that writes the edge's header itself, naming the trunk."""
    return (
        f"INVITE sip:+441632960000@192.0.2.1:5060 SIP/2.0\n"
        f"Via: SIP/2.0/UDP {sender.host}:{sender.port};branch=z9hG4bK{secrets.token_hex(4)}\n"
        f'From: "Caller" <sip:447700900123@198.51.100.7>;tag=tr1\nTo: <sip:441632960000@192.0.2.1>\n'
        f"Call-ID: spoof-{secrets.token_hex(3)}\nCSeq: 10 INVITE\nContact: <sip:447700900123@198.51.100.7:5060>\n"
        f"{SOURCE_HEADER}: {source}\n"
        f"Max-Forwards: 70\nContent-Type: application/sdp\nContent-Length: {len(OFFER)}\n\n{OFFER}"
    )


@pytest.fixture
def h(tmp_path):
    harness = EdgeHarness(tmp_path)
    harness.register_via_edge("alice", "alice-pw", ALICE_DESK, "sip:alice@10.0.0.5:5062")
    return harness


def test_a_phone_registered_through_the_edge_is_bound_at_its_real_source(h):
    [binding] = h.registrar.contacts("alice", h.now)
    assert binding.peer == ALICE_DESK  # not the edge: requests to alice name this address


def test_a_trunk_call_through_the_edge_is_a_trunk_call_and_rings_the_phone_through_the_edge(h):
    invite = trunk_invite_claiming("udp 198.51.100.7 5060", EDGE).replace(
        "Via: SIP/2.0/UDP 192.0.2.50:5060", "Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKedge1\nVia: SIP/2.0/UDP 198.51.100.7:5060", 1)
    h.send(invite, EDGE)
    assert not h.take(EDGE, 403)
    out = h.one(EDGE, "INVITE")  # to alice, but through the edge, which holds her NAT binding
    assert out.uri == "sip:alice@10.0.0.5:5062"
    assert out.headers.get(DEST_HEADER) == "sip:203.0.113.10:5062;transport=udp"
    assert out.headers.get(SOURCE_HEADER) is None
    call = h.media.sessions[0].call
    assert call.direction == "inbound"
    h.send(respond(out, 200, "OK", "a1", "sip:alice@10.0.0.5:5062", answer_sdp("203.0.113.10", 7000)), EDGE)
    ok = h.one(EDGE, 200)  # the trunk's 200 goes back the way the INVITE came: the edge's Via
    assert ok.headers.get_all("Via")[0].startswith("SIP/2.0/UDP 192.0.2.50:5060")


@pytest.mark.parametrize("sender", [STRANGER, EDGE_HOST_OTHER_PORT, EDGE_OVER_TCP],
                         ids=["stranger", "edge-host-other-port", "edge-address-over-tcp"])
def test_a_spoofed_source_header_from_anywhere_but_the_edge_socket_is_ignored(h, sender):
    h.send(trunk_invite_claiming("udp 198.51.100.7 5060", sender), sender)
    assert h.one(sender, 403), "judged by its own address: a stranger"
    assert not h.take(None, "INVITE"), "never forwarded to the phone"
    assert not h.media.sessions


def test_a_stranger_passed_on_by_the_edge_is_still_a_stranger(h):
    h.send(via_edge(trunk_invite_claiming("udp 198.51.100.7 5060", STRANGER), "udp 192.0.2.99 5060"), EDGE)
    assert h.one(EDGE, 403)
    assert not h.media.sessions


def test_the_edge_own_header_is_the_last_one(h):
    """The edge deletes a sender's copies; were one to slip through, the edge's (last) wins."""
    invite = via_edge(trunk_invite_claiming("udp 198.51.100.7 5060", STRANGER), "udp 192.0.2.99 5060")
    h.send(invite, EDGE)
    assert h.one(EDGE, 403)


@pytest.mark.parametrize("value", ["", "udp 198.51.100.7", "udp 198.51.100.7 99999", "smtp 198.51.100.7 5060",
                                   "udp not-an-ip 5060", "udp 198.51.100.7 5060 extra"])
def test_a_malformed_source_header_is_never_half_trusted(value):
    assert parse_source(value) is None
    link = EdgeLink(EDGE.host, EDGE.port)
    request = parse_message((f"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKm\r\n"
                             f"From: <sip:a@b>;tag=1\r\nTo: <sip:x>\r\nCall-ID: m\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                             f"{SOURCE_HEADER}: {value}\r\nContent-Length: 0\r\n\r\n").encode())
    assert link.real_source(request, EDGE) == EDGE


def test_source_header_parses_ipv6_and_tcp():
    assert parse_source("TCP [2001:db8::1] 5070") == Peer("tcp", "2001:db8::1", 5070)
    assert parse_source("udp 2001:db8::1 5070") == Peer("udp", "2001:db8::1", 5070)


def test_only_requests_to_others_go_through_the_edge():
    link = EdgeLink(EDGE.host, EDGE.port)
    response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.99:5060\r\n\r\n"
    assert link.outbound(response, STRANGER) == (response, STRANGER)
    request = b"BYE sip:x@198.51.100.7 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1\r\n\r\n"
    assert link.outbound(request, EDGE) == (request, EDGE)
    data, peer = link.outbound(request, Peer("tcp", "2001:db8::7", 5070))
    assert peer == EDGE
    assert data.startswith(b"BYE sip:x@198.51.100.7 SIP/2.0\r\nX-B2BUA-Dst: sip:[2001:db8::7]:5070;transport=tcp\r\nVia:")


def test_wrong_passwords_through_the_edge_lock_out_the_guesser_not_the_edge(h):
    guesser = Peer("udp", "203.0.113.66", 40000)
    for attempt in range(4):
        call_id = f"guess{attempt}"
        base = (f"REGISTER sip:pbx.test SIP/2.0\nVia: SIP/2.0/UDP 203.0.113.66:40000;branch=z9hG4bKg{attempt}\n"
                f"From: <sip:bob@pbx.test>;tag=g{attempt}\nTo: <sip:bob@pbx.test>\nCall-ID: {call_id}\n"
                f"Contact: <sip:bob@203.0.113.66:40000>\nMax-Forwards: 70\n")
        h.send(via_edge(base + "CSeq: 1 REGISTER\nContent-Length: 0\n\n", "udp 203.0.113.66 40000"), EDGE)
        challenge = h.take(EDGE, 401)
        if not challenge:
            break
        auth = digest(challenge[0].headers.get("WWW-Authenticate"), "bob", "wrong", "REGISTER", "sip:pbx.test", "Authorization")
        h.send(via_edge(base + f"CSeq: 2 REGISTER\n{auth}\nContent-Length: 0\n\n", "udp 203.0.113.66 40000"), EDGE)
    assert h.lockout.refused(guesser, None, h.now)
    assert not h.lockout.refused(EDGE, None, h.now), "the edge's address is not what got locked"
    h.take()
    h.register_via_edge("carol", "carol-pw", Peer("udp", "203.0.113.30", 5060), "sip:carol@203.0.113.30")  # others still register


# -- draining ----------------------------------------------------------------------


def test_a_draining_worker_answers_probes_and_new_invites_503_but_not_calls_in_progress(tmp_path):
    (tmp_path / "flows.toml").write_text(CONFIG + '\n[cluster]\nworkers = 2\nworker_ports = "5100-5101"\n'
                                                  'edge_address = "192.0.2.50:5060"\n')
    config = load_file(tmp_path / "flows.toml")
    h = EdgeHarness(tmp_path)
    role = WorkerRole(config, 0)
    role._server = SimpleNamespace(transactions=h.txn, core=h.core)
    role.draining = True
    options = ("OPTIONS sip:192.0.2.1:5100 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKp1\n"
               "From: <sip:edge@192.0.2.50>;tag=1\nTo: <sip:192.0.2.1:5100>\nCall-ID: p1\nCSeq: 1 OPTIONS\n"
               "Content-Length: 0\n\n")
    bye = ("BYE sip:w@192.0.2.1:5100 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKb1\n"
           "From: <sip:t@198.51.100.7>;tag=x\nTo: <sip:w@192.0.2.1>;tag=y\nCall-ID: gone\nCSeq: 2 BYE\n"
           "Content-Length: 0\n\n")
    invite = via_edge(trunk_invite_claiming("udp 198.51.100.7 5060", TRUNK), "udp 198.51.100.7 5060")
    passed = []
    for text in (options, invite, bye):
        message = parse_message(text.replace("\n", "\r\n").encode())
        for event in h.txn.receive(message, EDGE, h.now):
            event = role.inbound(event, h.now)
            if event is not None:
                passed.append(event)
                h.core.handle(event, h.now)
        h._drain()
    answers = h.take(EDGE, 503)
    assert sorted(m.cseq[1] for m in answers) == ["INVITE", "OPTIONS"]
    assert all(m.headers.get("Retry-After") for m in answers)
    assert [e.request.method for e in passed] == ["BYE"], "in-dialog requests still reach the calls"
    assert passed[0].peer == EDGE  # no source header: the edge's own word
    assert isinstance(passed[0].request, Request)


# -- an INVITE the edge has already given to another worker ---------------------------

WALL = 1_796_600_000.0  # the wall clock the tests pretend it is


def stamped(text: str, sent: float) -> str:
    """`text` with the edge's send stamp, as branch_route[STAMP] appends it."""
    head, _, body = text.partition("\n\n")
    return f"{head}\n{SENT_HEADER}: {sent:.6f}\n\n{body}"


def role_for(tmp_path, h: EdgeHarness) -> WorkerRole:
    (tmp_path / "flows.toml").write_text(CONFIG + '\n[cluster]\nworkers = 2\nworker_ports = "5100-5101"\n'
                                                  'edge_address = "192.0.2.50:5060"\n')
    role = WorkerRole(load_file(tmp_path / "flows.toml"), 0)
    role._server = SimpleNamespace(transactions=h.txn, core=h.core)
    return role


def feed(h: EdgeHarness, role: WorkerRole, text: str, peer: Peer, wall: float) -> list:
    passed = []
    for event in h.txn.receive(parse_message(text.replace("\n", "\r\n").encode()), peer, h.now):
        event = role.inbound(event, h.now, wall)
        if event is not None:
            passed.append(event)
            h.core.handle(event, h.now)
    h._drain()
    return passed


def trunk_invite_via_edge() -> str:
    return trunk_invite_claiming("udp 198.51.100.7 5060", EDGE).replace(
        "Via: SIP/2.0/UDP 192.0.2.50:5060", f"Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKedge{secrets.token_hex(3)}\n"
        "Via: SIP/2.0/UDP 198.51.100.7:5060", 1)


def test_an_invite_read_after_the_edge_moved_on_is_refused_and_rings_no_one(tmp_path, h):
    """The edge tried the next worker 1.5 s after sending this one its copy; a worker that
    gets to it later must not ring the phone as well (the phone would ring twice and the
    call be answered in two places). Its 503 is dropped by an edge that has moved on and
    sends the call on from one that has not."""
    role = role_for(tmp_path, h)
    late = feed(h, role, stamped(trunk_invite_via_edge(), WALL - (STALE_INVITE_S + 0.2)), EDGE, WALL)
    assert late == []
    refused = h.one(EDGE, 503)
    assert refused.headers.get("Retry-After")
    assert not h.take(EDGE, "INVITE"), "the phone is not rung"
    assert not h.media.sessions
    assert role.stale_invites == 1


def test_an_invite_in_time_is_a_call_and_a_stamp_from_anyone_but_the_edge_means_nothing(tmp_path, h):
    role = role_for(tmp_path, h)
    fresh = feed(h, role, stamped(trunk_invite_via_edge(), WALL - 0.05), EDGE, WALL)
    assert [e.request.method for e in fresh] == ["INVITE"]
    assert h.one(EDGE, "INVITE").uri == "sip:alice@10.0.0.5:5062", "the phone is rung"
    # A stranger's old stamp neither refuses nor admits it: the call is judged as before (403).
    stale_stranger = stamped(trunk_invite_claiming("udp 198.51.100.7 5060", STRANGER), WALL - 60)
    assert [e.request.method for e in feed(h, role, stale_stranger, STRANGER, WALL)] == ["INVITE"]
    assert h.one(STRANGER, 403)
    assert role.stale_invites == 0


@pytest.mark.parametrize("value", ["", "soon", "nan", "inf", "1e999"])
def test_a_stamp_that_is_not_a_time_is_no_stamp(value):
    link = EdgeLink(EDGE.host, EDGE.port)
    request = parse_message(stamped(trunk_invite_via_edge(), 0).replace(
        f"{SENT_HEADER}: 0.000000", f"{SENT_HEADER}: {value}").replace("\n", "\r\n").encode())
    assert link.age(request, EDGE, WALL) is None


def test_the_edge_stamps_each_copy_it_sends_a_worker_and_drops_senders_stamps(tmp_path):
    from b2bua.cluster import edge_config

    (tmp_path / "flows.toml").write_text(CONFIG + '\n[cluster]\nworkers = 2\nworker_ports = "5100-5101"\n')
    text = edge_config.render(load_file(tmp_path / "flows.toml"), tmp_path / "list")
    outside = text[text.index("route[FROM_OUTSIDE]"):text.index("route[TO_WORKER]")]
    assert f'remove_hf("{SENT_HEADER}")' in outside
    to_worker = text[text.index("route[TO_WORKER]"):]
    assert 't_on_branch("STAMP")' in to_worker  # per branch: the retry at the next worker has its own
    assert f'append_hf("{SENT_HEADER}: $TV(Sn)\\r\\n");' in text[text.index("branch_route[STAMP]"):]
    # In-dialog requests to the worker that holds the call get RFC 3261's timers, not failover's.
    in_dialog = outside[outside.index("if (has_totag())"):outside.index("if (is_method(\"ACK\"))")]
    assert in_dialog.index(f"t_set_fr({edge_config.FAR_INVITE_MS}, {edge_config.FAR_ANSWER_MS})") < in_dialog.index("t_relay()")
