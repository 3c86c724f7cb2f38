"""RFC 4475 (SIP torture tests) and RFC 5118 (IPv6) messages, with the reaction each gets.

Lines are joined with CRLF. VALID messages must parse; INVALID ones raise SipParseError
with the status given (400 or 505), or, marked TOLERATED, are accepted as the RFC allows a
lenient element to. Bodies are the RFC's 150-byte SDP.
"""

SDP150 = (
    "v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    "m=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n"
)


def msg(*lines: str, body: str = "") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


VALID = {
    # §3.1.1.1 A short tortuous INVITE: folding, odd case, LWS everywhere, compact forms.
    "wsinv": msg(
        "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
        "TO :",
        " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
        'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>',
        "  ;",
        "  tag = 98asjd8",
        "MaX-fOrWaRdS: 0068",
        "Call-ID: wsinv.ndaksdj@192.0.2.1",
        f"Content-Length   : {len(SDP150)}",
        "cseq: 0009",
        "  INVITE",
        "Via  : SIP  /   2.0",
        " /UDP",
        "    192.0.2.2;branch=390skdjuw",
        "s :",
        "NewFangledHeader:   newfangled value",
        " continued newfangled value",
        "UnknownHeaderWithUnusualValue: ;;,,;;,;",
        "Content-Type: application/sdp",
        "Route:",
        " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
        "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
        "  branch  =   z9hG4bK9ikj8  ,",
        " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
        " z9hG4bK30239",
        'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =',
        "      newvalue ;",
        "  secondparam ; q = 0.33",
        body=SDP150,
    ),
    # §3.1.1.3 Valid use of the % escaping mechanism.
    "esc01": msg(
        "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
        "To: sip:%75se%72@example.com",
        "From: <sip:I%20have%20spaces@example.net>;tag=938",
        "Max-Forwards: 87",
        "i: esc01.239409asdfakjkn23onasd0-3234",
        "CSeq: 234234 INVITE",
        "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
        "C: application/sdp",
        "Contact:",
        "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
        f"Content-Length: {len(SDP150)}",
        body=SDP150,
    ),
    # §3.1.1.4 Escaped nulls in URIs.
    "escnull": msg(
        "REGISTER sip:example.com SIP/2.0",
        "To: sip:null-%00-null@example.com",
        "From: sip:null-%00-null@example.com;tag=839923423",
        "Max-Forwards: 70",
        "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
        "CSeq: 14398234 REGISTER",
        "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
        "Contact: <sip:%00@host5.example.com>",
        "Contact: <sip:%00%00@host5.example.com>",
        "L:0",
    ),
    # §3.1.1.5 Use of % when it is not an escape (method and header name with %).
    "esc02": msg(
        "RE%47IST%45R sip:registrar.example.com SIP/2.0",
        'To: "%Z%45" <sip:resource@example.com>',
        'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23',
        "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
        "Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234",
        "CSeq: 29344 RE%47IST%45R",
        "Max-Forwards: 70",
        "Contact: <sip:alias1@host1.example.com>",
        "C%6Fntact: <sip:alias2@host2.example.com>",
        "Contact: <sip:alias3@host3.example.com>",
        "l: 0",
    ),
    # §3.1.1.6 No LWS between display name and <.
    "lwsdisp": msg(
        "OPTIONS sip:user@example.com SIP/2.0",
        "To: sip:user@example.com",
        "From: caller<sip:caller@example.com>;tag=323",
        "Max-Forwards: 70",
        "Call-ID: lwsdisp.1234abcd@funky.example.com",
        "CSeq: 60 OPTIONS",
        "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw",
        "l: 0",
    ),
    # §3.1.1.7 Long values in header fields, 34 Vias in every spelling.
    "longreq": msg(
        "INVITE sip:user@example.com SIP/2.0",
        'To: "I have a user name of ' + "extreme" * 10 + ' proportion"<sip:user@example.com:6000;'
        "unknownparam1=very" + "long" * 20 + "value;longparam" + "name" * 25 + "=shortvalue;very"
        + "long" * 25 + "ParameterNameWithNoValue>",
        "F: sip:" + "amazinglylongcallername" * 5 + "@example.net;tag=" + "1298" * 20 + "424;unknownheaderparam"
        + "name" * 20 + "=unknowheaderparam" + "value" * 15 + ";unknownValuelessparam" + "paramname" * 10,
        "Call-ID: longreq.one" + "really" * 20 + "longcallid",
        "CSeq: 3882340 INVITE",
        "Unknown-" + "Long" * 20 + "-Name: unknown-" + "long" * 20 + "-value; unknown-" + "long" * 20
        + "-parameter-name = unknown-" + "long" * 20 + "-parameter-value",
        *[f"{name}: SIP/2.0/TCP sip{n}.example.com" for n, name in zip(
            range(33, 0, -1),
            ["Via", "v", "V", "Via", "ViA", "VIa", "VIA", "via", "viA", "vIa", "vIA", "V ", "v ", "V  ", "v  ",
             "Via ", "Via  "] + ["Via"] * 16)],
        "Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=very" + "long" * 50 + "branchvalue",
        "Max-Forwards: 70",
        "Contact: <sip:" + "amazinglylongcallername" * 5 + "@host5.example.net>",
        "Content-Type: application/sdp",
        f"l: {len(SDP150)}",
        body=SDP150,
    ),
    # §3.1.1.8 Extra trailing octets in a UDP datagram: ignored beyond Content-Length.
    "dblreq": msg(
        "REGISTER sip:example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:j.user@example.com;tag=43251j3j324",
        "Max-Forwards: 8",
        "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412",
        "Contact: sip:j.user@host.example.com",
        "CSeq: 8 REGISTER",
        "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492",
        "Content-Length: 0",
        body="INVITE sip:joe@example.com SIP/2.0\r\nt: sip:joe@example.com\r\n",
    ),
    # §3.1.1.10 Many transports in Via.
    "transports": msg(
        "OPTIONS sip:user@example.com SIP/2.0",
        "To: sip:user@example.com",
        "From: <sip:caller@example.com>;tag=323",
        "Max-Forwards: 70",
        "Call-ID:  transports.kijh4akdnaqjkwendsasfdj",
        "Accept: application/sdp",
        "CSeq: 60 OPTIONS",
        "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
        "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
        "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
        "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
        "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
        "l: 0",
    ),
    # §3.1.1.12 Unusual reason phrase (UTF-8) in a response.
    "unreason": msg(
        "SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое",
        "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
        "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
        "CSeq: 35 INVITE",
        "From: sip:user@example.com;tag=11141343",
        "To: sip:user@example.edu;tag=2229",
        f"Content-Length: {len(SDP150)}",
        "Content-Type: application/sdp",
        "Contact: <sip:user@host198.example.com>",
        body=SDP150,
    ),
    # §3.1.1.13 Empty reason phrase.
    "noreason": msg(
        "SIP/2.0 100 ",
        "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
        "Call-ID: noreason.asndj203insdf99223ndf",
        "CSeq: 35 INVITE",
        "From: <sip:user@example.com>;tag=39ansfi3",
        "To: <sip:user@example.edu>;tag=902jndnke3",
        "Content-Length: 0",
        "Contact: <sip:user@host105.example.com>",
    ),
    # RFC 5118 §4.1 A REGISTER with IPv6 references.
    "ipv6-good": msg(
        "REGISTER sip:[2001:db8::10] SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        "Max-Forwards: 70",
        "Contact: \"Caller\" <sip:caller@[2001:db8::1]>",
        "CSeq: 98176 REGISTER",
        "Content-Length: 0",
    ),
    # RFC 5118 §4.3 Port with an IPv6 reference.
    "port-unambiguous": msg(
        "REGISTER sip:[2001:db8::10]:5070 SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        "Contact: \"Caller\" <sip:caller@[2001:db8::1]>",
        "Max-Forwards: 70",
        "CSeq: 98176 REGISTER",
        "Content-Length: 0",
    ),
    # RFC 5118 §4.5 Via received and rport with IPv6.
    "ipv6-via": msg(
        "BYE sip:[2001:db8::10] SIP/2.0",
        "To: sip:user@example.com;tag=bd76ya",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        "Max-Forwards: 70",
        "CSeq: 321 BYE",
        "Content-Length: 0",
    ),
}

#: name -> (status, why)
INVALID = {
    # §3.1.2.2 Content-Length larger than the message (UDP).
    "clerr": (400, msg(
        "INVITE sip:user@example.com SIP/2.0",
        "Max-Forwards: 80",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=93942939o2",
        "Contact: <sip:caller@hungry.example.net>",
        "Call-ID: clerr.0ha0isndaksdjweiafasdk3",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523",
        "Content-Type: application/sdp",
        "Content-Length: 9999",
        body=SDP150,
    )),
    # §3.1.2.3 Negative Content-Length.
    "ncl": (400, msg(
        "INVITE sip:user@example.com SIP/2.0",
        "Max-Forwards: 254",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=32394234",
        "Call-ID: ncl.0ha0isndaksdj2193423r542w35",
        "CSeq: 0 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw",
        "Contact: <sip:caller@example53.example.net>",
        "Content-Type: application/sdp",
        "Content-Length: -999",
        body=SDP150,
    )),
    # §3.1.2.4 Scalar fields with overlarge values.
    "scalar02": (400, msg(
        "REGISTER sip:example.com SIP/2.0",
        "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3",
        "To: <sip:user@example.com>",
        "From: <sip:user@example.com>;tag=239232jh3",
        "CSeq: 36893488147419103232 REGISTER",
        "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32",
        "Max-Forwards: 300",
        "Expires: 1" + "0" * 30,
        "Contact: <sip:user@host129.example.com>;expires=280297596632815",
        "Content-Length: 0",
    )),
    # §3.1.2.6 Unterminated quoted string in a display name.
    "quotbal": (400, msg(
        "INVITE sip:user@example.com SIP/2.0",
        "To: \"Mr. J. User <sip:j.user@example.com>",
        "From: sip:caller@example.net;tag=93334",
        "Max-Forwards: 10",
        "Call-ID: quotbal.aksdj",
        "Contact: <sip:caller@host59.example.net>",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234",
        "Content-Length: 0",
    )),
    # §3.1.2.7 <> enclosing the Request-URI.
    "ltgtruri": (400, msg(
        "INVITE <sip:user@example.com> SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=39291",
        "Max-Forwards: 23",
        "Call-ID: ltgtruri.1@192.0.2.5",
        "CSeq: 1 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.5",
        "Contact: <sip:caller@host5.example.net>",
        "Content-Length: 0",
    )),
    # §3.1.2.8 Malformed SIP Request-URI (embedded LWS).
    "lwsruri": (400, msg(
        "INVITE sip:user@example.com; lr SIP/2.0",
        "To: sip:user@example.com;tag=3xfe-9921883-z9f",
        "From: sip:caller@example.net;tag=231413434",
        "Max-Forwards: 5",
        "Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423",
        "CSeq: 2130706432 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395",
        "Contact: <sip:caller@host1.example.net>",
        "Content-Length: 0",
    )),
    # §3.1.2.9 Multiple SP separating Request-Line elements.
    "lwsstart": (400, msg(
        "INVITE  sip:user@example.com  SIP/2.0",
        "Max-Forwards: 8",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=8814",
        "Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com",
        "CSeq: 1893884 INVITE",
        "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923",
        "Contact: <sip:caller@host1.example.net>",
        "Content-Length: 0",
    )),
    # §3.1.2.11 Escaped headers in a SIP Request-URI.
    "escruri": (400, msg(
        "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=341518",
        "Max-Forwards: 7",
        "Contact: <sip:caller@host39923.example.net>",
        "Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5",
        "CSeq: 149209342 INVITE",
        "Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw",
        "Content-Length: 0",
    )),
    # §3.1.2.15 Non-token characters in a display name.
    "baddn": (400, msg(
        "OPTIONS sip:t.watson@example.org SIP/2.0",
        "Via: SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw",
        "Max-Forwards: 70",
        "From: Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
        "To: Watson, Thomas <sip:t.watson@example.org>",
        "Call-ID: baddn.31415@c.example.com",
        "Accept: application/sdp",
        "CSeq: 3923239 OPTIONS",
        "l: 0",
    )),
    # §3.1.2.16 Unknown protocol version.
    "badvers": (505, msg(
        "OPTIONS sip:t.watson@example.org SIP/7.0",
        "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw",
        "Max-Forwards:     70",
        "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
        "To:      T. Watson <sip:t.watson@example.org>",
        "Call-ID: badvers.31417@c.example.com",
        "CSeq:    1 OPTIONS",
        "l: 0",
    )),
    # §3.1.2.17 Start line and CSeq method mismatch.
    "mismatch01": (400, msg(
        "OPTIONS sip:user@example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=34525",
        "Max-Forwards: 6",
        "Call-ID: mismatch01.dj0234sxdfl3",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
        "l: 0",
    )),
    # §3.1.2.18 Unknown method with CSeq method mismatch.
    "mismatch02": (400, msg(
        "NEWMETHOD sip:user@example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:caller@example.net;tag=34525",
        "Max-Forwards: 6",
        "Call-ID: mismatch02.dj0234sxdfl3",
        "CSeq: 8 INVITE",
        "Contact: <sip:caller@host.example.net>",
        "Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw",
        "Content-Type: application/sdp",
        "l: 0",
    )),
    # §3.1.2.19 Overlarge response code.
    "bigcode": (400, msg(
        "SIP/2.0 4294967301 better not break the receiver",
        "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
        "Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i",
        "CSeq: 353494 INVITE",
        "From: <sip:user@example.com>;tag=39ansfi3",
        "To: <sip:user@example.edu>;tag=902jndnke3",
        "Content-Length: 0",
        "Contact: <sip:user@host105.example.com>",
    )),
    # RFC 5118 §4.2 IPv6 reference without brackets in the Request-URI.
    "ipv6-bad": (400, msg(
        "REGISTER sip:2001:db8::10 SIP/2.0",
        "To: sip:user@example.com",
        "From: sip:user@example.com;tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
        "Call-ID: SSG9559905523997077@hlau_4100",
        "Max-Forwards: 70",
        "Contact: \"Caller\" <sip:caller@[2001:db8::1]>",
        "CSeq: 98176 REGISTER",
        "Content-Length: 0",
    )),
}
