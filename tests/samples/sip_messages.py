"""Real-world-shaped SIP messages: what phones, proxies and carriers put on the wire.

Shared by the parser tests and bench/sip_parser.py, so the benchmark measures the
messages the tests prove we read correctly.
"""

BARESIP_REGISTER = (
    "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:58454;branch=z9hG4bKff632a18440702f7;rport\r\n"
    "Contact: <sip:alice-0x5587702e5db0@127.0.0.1:58454>;expires=3600\r\n"
    "Max-Forwards: 70\r\nTo: <sip:alice@127.0.0.1:5060>\r\nFrom: <sip:alice@127.0.0.1:5060>;tag=b6d92988195f19b9\r\n"
    "Call-ID: d7d33ec85cc9df65\r\nCSeq: 27445 REGISTER\r\nUser-Agent: baresip v1.0.0 (x86_64/linux)\r\n"
    "Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,REFER\r\nContent-Length: 0\r\n\r\n"
)

SDP = (
    "v=0\r\no=- 3925651234 3925651234 IN IP4 198.51.100.7\r\ns=SIP Call\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
    "m=audio 16000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)

CARRIER_INVITE = (
    "INVITE sip:+441632960000@203.0.113.1:5060;user=phone SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-524287-1---1c3f8b2e0c5a1b1e;rport\r\n"
    "Via: SIP/2.0/UDP 10.20.30.40:5060;branch=z9hG4bK5a7e2d;received=10.20.30.40\r\n"
    "Record-Route: <sip:198.51.100.7;lr;ftag=as7d3e>\r\n"
    "Max-Forwards: 69\r\n"
    "From: \"Caller Name\" <sip:+447700900123@198.51.100.7;user=phone>;tag=as7d3e\r\n"
    "To: <sip:+441632960000@203.0.113.1;user=phone>\r\n"
    "Contact: <sip:+447700900123@198.51.100.7:5060>\r\n"
    "Call-ID: 2f4e6a1b7c3d@198.51.100.7\r\nCSeq: 102 INVITE\r\n"
    "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO, PUBLISH, MESSAGE\r\n"
    "Supported: replaces, timer\r\nSession-Expires: 1800;refresher=uac\r\nMin-SE: 90\r\n"
    "P-Asserted-Identity: <sip:+447700900123@198.51.100.7;user=phone>\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
)

COMPACT_FOLDED_INVITE = (
    "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    "v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    "Max-Forwards: 70\r\n"
    "t: Bob <sip:bob@biloxi.example.com>\r\n"
    "f: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    "i: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    "CSeq: 314159 INVITE\r\n"
    "m: <sip:alice@pc33.atlanta.example.com>\r\n"
    "Subject: I know you're there,\r\n  pick up the phone\r\n   and talk to me!\r\n"
    "c: application/sdp\r\n"
    f"l: {len(SDP)}\r\n\r\n{SDP}"
)

IPV6_OPTIONS = (
    "OPTIONS sip:[2001:db8::10]:5070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP [2001:db8::9:1]:5060;branch=z9hG4bKas3-111;rport\r\n"
    "Max-Forwards: 70\r\nTo: <sip:[2001:db8::10]:5070>\r\nFrom: <sip:user@[2001:db8::9:1]>;tag=81x2\r\n"
    "Call-ID: SSG9559905523997077@hlau_4100\r\nCSeq: 1 OPTIONS\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n"
)

YEALINK_200 = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bK4f2a9c1e0b7d6a5c;rport=5060;received=203.0.113.1\r\n"
    "From: \"Caller Name\" <sip:447700900123@203.0.113.1:5060>;tag=9f8e7d6c5b4a\r\n"
    "To: <sip:alice@pbx.example>;tag=1875389012\r\n"
    "Call-ID: 20261125T064707Z-785fee60-0@203.0.113.1\r\nCSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@192.168.1.50:5062>\r\n"
    "Supported: replaces, 100rel, timer\r\nUser-Agent: Yealink SIP-T46S 66.86.0.15\r\n"
    "Allow: INVITE, INFO, PRACK, ACK, BYE, CANCEL, OPTIONS, NOTIFY, REGISTER, SUBSCRIBE, REFER, PUBLISH, UPDATE, MESSAGE\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
)

BYE = (
    "BYE sip:b2bua@203.0.113.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/TCP 192.168.1.50:5062;branch=z9hG4bK1234abcd;rport\r\n"
    "From: <sip:alice@pbx.example>;tag=1875389012\r\nTo: \"Caller Name\" <sip:447700900123@203.0.113.1:5060>;tag=9f8e7d6c5b4a\r\n"
    "Call-ID: 20261125T064707Z-785fee60-0@203.0.113.1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)

ALL = {
    "baresip-register": BARESIP_REGISTER,
    "carrier-invite": CARRIER_INVITE,
    "compact-folded-invite": COMPACT_FOLDED_INVITE,
    "ipv6-options": IPV6_OPTIONS,
    "yealink-200": YEALINK_200,
    "bye-tcp": BYE,
}
